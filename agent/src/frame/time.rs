//! A strict, allocation-free RFC 3339 timestamp parser for CRI and docker lines.
//!
//! Runtimes write `2026-11-21T10:45:31.210111144Z` (or with a `+02:00` offset) on every
//! line, so this runs once per record: it works on bytes, does no allocation and uses
//! plain days-from-civil arithmetic instead of a date crate.
//!
//! Accepted: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, `T`/`Z` in either case, any
//! number of fraction digits (digits past the ninth are ignored: nanosecond precision).
//! Seconds may be `60` (a leap second counts as the first second of the next minute).
//! Anything else, and instants outside the `i64` nanosecond range (years 1677..2262),
//! is rejected with `None`.
//!
//! # Performance
//!
//! Consecutive records of one container nearly always share their minute, so framers
//! use [`Rfc3339Cache`]: the date and hour:minute part (validation and the
//! days-from-civil arithmetic) is converted once per minute, not once per record.

/// Nanoseconds since the Unix epoch, or `None` if `s` is not a valid RFC 3339 timestamp.
pub fn parse_rfc3339_ns(s: &[u8]) -> Option<i64> {
    // The shortest valid form is `YYYY-MM-DDTHH:MM:SSZ`.
    if s.len() < 20 {
        return None;
    }
    combine(minute_secs(minute_prefix(s))?, s)
}

/// Length of the `YYYY-MM-DDTHH:MM` prefix: everything that names the minute.
const MINUTE_PREFIX_LEN: usize = 16;

fn minute_prefix(s: &[u8]) -> &[u8; MINUTE_PREFIX_LEN] {
    s[..MINUTE_PREFIX_LEN]
        .try_into()
        .expect("callers check the length")
}

/// [`parse_rfc3339_ns`] for a stream of timestamps that mostly share their minute (one
/// container's log lines): remembers the last `YYYY-MM-DDTHH:MM` prefix it validated
/// and converted, so a record of the same minute only parses seconds, fraction and
/// offset.
///
/// Accepts and rejects exactly what [`parse_rfc3339_ns`] does, with the same values:
/// the prefix's validity and value depend on its 16 bytes alone, and only a byte-equal
/// prefix is a hit.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rfc3339Cache {
    /// The last valid prefix and its seconds since the epoch (offset not applied).
    last: Option<([u8; MINUTE_PREFIX_LEN], i64)>,
}

impl Rfc3339Cache {
    pub fn parse(&mut self, s: &[u8]) -> Option<i64> {
        if s.len() < 20 {
            return None;
        }
        let prefix = minute_prefix(s);
        let minute = match &self.last {
            Some((cached, secs)) if cached == prefix => *secs,
            _ => {
                let secs = minute_secs(prefix)?;
                self.last = Some((*prefix, secs));
                secs
            }
        };
        combine(minute, s)
    }
}

/// Seconds since the epoch (UTC offset not applied) of a valid `YYYY-MM-DDTHH:MM`.
fn minute_secs(s: &[u8; MINUTE_PREFIX_LEN]) -> Option<i64> {
    let year = digits(&s[0..4])?;
    let month = digits(&s[5..7])?;
    let day = digits(&s[8..10])?;
    let hour = digits(&s[11..13])?;
    let minute = digits(&s[14..16])?;
    if s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't') || s[13] != b':' {
        return None;
    }
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60)
}

/// The instant of `s` (at least 20 bytes) given its validated minute prefix: parses
/// and validates `:SS[.fraction](Z|±HH:MM)` from byte 16 on.
#[inline]
fn combine(minute_secs: i64, s: &[u8]) -> Option<i64> {
    let second = digits(&s[17..19])?;
    if s[16] != b':' || second > 60 {
        return None;
    }

    let mut i = 19;
    let mut nanos: i64 = 0;
    if s[i] == b'.' {
        i += 1;
        let frac_start = i;
        // Runtimes write nine digits: the first eight are converted at once.
        if let Some(eight) = s.get(i..i + 8).and_then(eight_digits) {
            nanos = eight;
            i += 8;
        }
        while i < s.len() && s[i].is_ascii_digit() {
            if i - frac_start < 9 {
                nanos = nanos * 10 + i64::from(s[i] - b'0');
            }
            i += 1;
        }
        let n = i - frac_start;
        if n == 0 {
            return None;
        }
        for _ in n..9 {
            nanos *= 10;
        }
    }

    let offset_secs: i64 = match s.get(i)? {
        b'Z' | b'z' if i + 1 == s.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == s.len() && s[i + 3] == b':' => {
            let oh = digits(&s[i + 1..i + 3])?;
            let om = digits(&s[i + 4..i + 6])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };

    let secs = minute_secs + second - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// The value of exactly eight ASCII digits, `None` if any byte is not one; converted
/// as one little-endian word (the first byte is the most significant digit).
#[inline]
fn eight_digits(s: &[u8]) -> Option<i64> {
    const HIGH_NIBBLES: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    let v = u64::from_le_bytes(s.try_into().ok()?);
    // A digit is 0x30..=0x39: high nibble 3, and still 3 after adding 6. The first test
    // bounds every byte by 0x3F, so adding 6 carries into no other byte.
    if v & HIGH_NIBBLES != ZEROS || v.wrapping_add(0x0606_0606_0606_0606) & HIGH_NIBBLES != ZEROS {
        return None;
    }
    let v = v - ZEROS;
    // Neighbouring digits, then pairs, then quads, combined; no lane overflows.
    let v = (v * 10 + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
    let v = (v * 100 + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    let v = (v * 10_000 + (v >> 32)) & 0xFFFF_FFFF;
    Some(v as i64)
}

/// The value of a run of ASCII digits (callers pass 2 or 4 of them).
#[inline]
fn digits(s: &[u8]) -> Option<i64> {
    let mut v = 0i64;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(b - b'0');
    }
    Some(v)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm:
/// shift the year to start in March so the leap day is the last day of the year).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    /// Parses `s` without cache, and with a cache whose last prefix is `s`'s own (a
    /// hit) or another one (a miss): all three must agree.
    fn p(s: &str) -> Option<i64> {
        let uncached = parse_rfc3339_ns(s.as_bytes());
        let mut cold = Rfc3339Cache::default();
        cold.parse(b"2001-02-03T04:05:06Z").unwrap();
        assert_eq!(cold.parse(s.as_bytes()), uncached, "miss: {s:?}");
        let mut warm = Rfc3339Cache::default();
        if s.len() >= 20 {
            // Any valid instant of the same minute primes the cache with this prefix.
            let same_minute = format!("{}:00Z", &s[..MINUTE_PREFIX_LEN]);
            warm.parse(same_minute.as_bytes());
        }
        assert_eq!(warm.parse(s.as_bytes()), uncached, "hit: {s:?}");
        uncached
    }

    #[test]
    fn epoch_and_known_instants() {
        assert_eq!(p("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(p("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        // Values cross-checked with Python's datetime.
        assert_eq!(
            p("2026-11-21T10:45:31.210111144Z"),
            Some(1_795_257_931_210_111_144)
        );
        assert_eq!(p("2000-02-29T00:00:00Z"), Some(951_782_400_000_000_000));
        assert_eq!(p("1969-12-31T23:59:59Z"), Some(-1_000_000_000));
        assert_eq!(p("2262-04-11T23:47:16.854775807Z"), Some(i64::MAX));
    }

    #[test]
    fn offsets_shift_to_utc() {
        let utc = p("2026-11-21T08:45:31.25Z").unwrap();
        assert_eq!(p("2026-11-21T10:45:31.25+02:00"), Some(utc));
        assert_eq!(p("2026-11-21T03:15:31.25-05:30"), Some(utc));
        assert_eq!(p("2026-11-21t08:45:31.25z"), Some(utc));
        assert_eq!(p("2026-11-21T08:45:31.25+00:00"), Some(utc));
    }

    #[test]
    fn fraction_precision() {
        let base = p("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(p("2026-01-01T00:00:00.1Z"), Some(base + 100_000_000));
        assert_eq!(p("2026-01-01T00:00:00.000000001Z"), Some(base + 1));
        assert_eq!(
            p("2026-01-01T00:00:00.123456789Z"),
            Some(base + 123_456_789)
        );
        // Sub-nanosecond digits are ignored, not rounded.
        assert_eq!(
            p("2026-01-01T00:00:00.1234567899Z"),
            Some(base + 123_456_789)
        );
    }

    #[test]
    fn leap_second_and_leap_days() {
        assert_eq!(
            p("2016-12-31T23:59:60Z"),
            p("2017-01-01T00:00:00Z"),
            "a leap second is the first second of the next minute"
        );
        assert!(p("2024-02-29T00:00:00Z").is_some());
        assert!(p("2023-02-29T00:00:00Z").is_none());
        assert!(p("1900-02-29T00:00:00Z").is_none());
        assert!(p("2026-04-31T00:00:00Z").is_none());
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "2026-11-21",
            "2026-11-21T10:45:31",
            "2026-11-21T10:45:31.Z",
            "2026-11-21 10:45:31Z",
            "2026-11-21T10:45:31ZZ",
            "2026-11-21T10:45:31+0200",
            "2026-11-21T10:45:31+02:00x",
            "2026-11-21T10:45:31+24:00",
            "2026-13-21T10:45:31Z",
            "2026-00-21T10:45:31Z",
            "2026-11-00T10:45:31Z",
            "2026-11-21T24:00:00Z",
            "2026-11-21T10:60:00Z",
            "2026-11-21T10:45:61Z",
            "2026/11/21T10:45:31Z",
            "20x6-11-21T10:45:31Z",
            "+026-11-21T10:45:31Z",
            "2026-11-21T10:45:31.12a4Z",
            "9999-12-31T23:59:59Z",
            "1600-01-01T00:00:00Z",
            "\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}",
        ] {
            assert_eq!(p(bad), None, "{bad:?} must be rejected");
        }
        assert_eq!(parse_rfc3339_ns(b"2026-11-21T10:45:31.5\xffZ"), None);
    }

    #[test]
    fn cache_hit_still_validates_the_rest() {
        let mut cache = Rfc3339Cache::default();
        let first = cache.parse(b"2026-11-21T10:45:31.5Z").unwrap();
        assert_eq!(
            cache.parse(b"2026-11-21T10:45:32.5Z"),
            Some(first + 1_000_000_000)
        );
        for bad in [
            &b"2026-11-21T10:45:61Z"[..],
            b"2026-11-21T10:45x31Z",
            b"2026-11-21T10:45:31.Z",
            b"2026-11-21T10:45:31",
            b"2026-11-21T10:45:31+24:00",
            b"2026-11-21T10:45:3\xffZ",
        ] {
            assert_eq!(cache.parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // An invalid prefix is never cached: the same bytes are rejected again.
        assert_eq!(cache.parse(b"2026-02-30T10:45:31Z"), None);
        assert_eq!(cache.parse(b"2026-02-30T10:45:32Z"), None);
        assert_eq!(
            cache.parse(b"2026-11-21T12:45:31.5+02:00"),
            Some(first),
            "same prefix bytes, other offset"
        );
    }

    /// Timestamps close to valid ones: valid parts, some replaced by edge values or
    /// garbage, so both the accept and the reject paths are exercised.
    fn near_timestamp() -> impl Strategy<Value = Vec<u8>> {
        let field = |valid: std::ops::RangeInclusive<u32>, width: usize| {
            prop_oneof![
                8 => valid.prop_map(move |v| format!("{v:0width$}")),
                1 => (0u32..100).prop_map(move |v| format!("{v:0width$}")),
                1 => "[0-9a-z:+ -]{0,3}",
            ]
        };
        let fraction = prop_oneof![Just(String::new()), "\\.[0-9]{0,12}", "\\.[0-9x]{1,3}"];
        let suffix = prop_oneof![
            4 => Just("Z".to_string()),
            1 => Just("z".to_string()),
            2 => (0u32..26, 0u32..62, any::<bool>()).prop_map(|(h, m, neg)| {
                format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' })
            }),
            1 => "[Z+:0-9]{0,7}",
        ];
        (
            field(1600..=2300, 4),
            field(1..=12, 2),
            field(1..=31, 2),
            prop_oneof![Just('T'), Just('t'), Just(' ')],
            field(0..=23, 2),
            field(0..=59, 2),
            field(0..=60, 2),
            fraction,
            suffix,
        )
            .prop_map(|(y, mo, d, t, h, mi, s, frac, suffix)| {
                format!("{y}-{mo}-{d}{t}{h}:{mi}:{s}{frac}{suffix}").into_bytes()
            })
    }

    #[test]
    fn eight_digits_match_the_digit_loop() {
        assert_eq!(eight_digits(b"12345678"), Some(12_345_678));
        assert_eq!(eight_digits(b"00000000"), Some(0));
        assert_eq!(eight_digits(b"99999999"), Some(99_999_999));
        assert_eq!(eight_digits(b"1234567"), None, "seven bytes");
        for bad in [
            b"1234567:",
            b"/2345678",
            b"123 5678",
            b"1234567\xb9",
            b"12345\x0067",
        ] {
            assert_eq!(eight_digits(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn eight_digits_agree_with_digits(bytes in prop::array::uniform8(
            prop_oneof![4 => b'0'..=b'9', 1 => any::<u8>()]
        )) {
            prop_assert_eq!(eight_digits(&bytes), digits(&bytes));
        }

        #[test]
        fn cached_parse_equals_uncached(stamps in prop::collection::vec(near_timestamp(), 1..40)) {
            // One cache over the whole sequence, as a framer uses it; repeating each
            // stamp with another second makes hits frequent.
            let mut cache = Rfc3339Cache::default();
            for stamp in &stamps {
                prop_assert_eq!(cache.parse(stamp), parse_rfc3339_ns(stamp));
                if stamp.len() >= 20 {
                    let mut next = stamp.clone();
                    next[18] = b'0' + (next[18].wrapping_add(1) % 10);
                    prop_assert_eq!(cache.parse(&next), parse_rfc3339_ns(&next));
                }
            }
        }

        #[test]
        fn cached_parse_equals_uncached_on_arbitrary_bytes(
            stamps in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..20)
        ) {
            let mut cache = Rfc3339Cache::default();
            cache.parse(b"2026-11-21T10:45:31Z");
            for stamp in &stamps {
                // Same prefix as the cached one, arbitrary rest.
                let mut hit = b"2026-11-21T10:45".to_vec();
                hit.extend_from_slice(stamp);
                prop_assert_eq!(cache.parse(&hit), parse_rfc3339_ns(&hit));
                prop_assert_eq!(cache.parse(stamp), parse_rfc3339_ns(stamp));
            }
        }
    }

    #[test]
    fn days_from_civil_matches_day_by_day_count() {
        // Walk day by day from 1970 back and forward; every step is exactly one day.
        let mut expected = 0i64;
        for year in 1970..2100 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    assert_eq!(days_from_civil(year, month, day), expected);
                    expected += 1;
                }
            }
        }
        let mut expected = -1i64;
        for year in (1800..1970).rev() {
            for month in (1..=12).rev() {
                for day in (1..=days_in_month(year, month)).rev() {
                    assert_eq!(days_from_civil(year, month, day), expected);
                    expected -= 1;
                }
            }
        }
    }
}

//! Syslog parser: one syslog message (RFC 5424, or the BSD format RFC 3164 describes)
//! into its header fields. The version after the priority decides: `<PRI>1 ` is RFC
//! 5424, anything else is read as RFC 3164.
//!
//! | field | RFC 5424 | RFC 3164 |
//! | --- | --- | --- |
//! | `facility`, `severity` | from PRI, as keywords (`local0`, `err`) | same |
//! | `protocol` | `rfc5424` | `rfc3164` |
//! | `timestamp` | the TIMESTAMP text | `Mmm dd hh:mm:ss` (or an RFC 3339 one) as sent |
//! | `hostname`, `app_name`, `procid`, `msgid` | the header fields | HOSTNAME, TAG, `[pid]` |
//! | `structured_data` | the whole STRUCTURED-DATA text | — |
//! | `sd.<SD-ID>.<PARAM-NAME>` | each parameter, its value unescaped | — |
//! | `message` | MSG (a leading UTF-8 BOM removed) | the content after the tag |
//!
//! A nil value (`-`) gives no field. Values are slices of the body, so bytes that are
//! not UTF-8 stay exactly as sent; only an SD parameter value with escapes (`\"`,
//! `\\`, `\]`) and the `sd.*` keys are copies.
//!
//! # Failure
//!
//! No `<PRI>` (or one above 191), or an RFC 5424 header or structured data that does
//! not follow the grammar, is a parse failure: the caller keeps the body raw and flags
//! it. RFC 3164 is a description of practice rather than a grammar: a message whose
//! timestamp is missing is all `message` (as RFC 3164 §4.3.3 tells a relay to read it);
//! a tag that is not followed by `:` or `[` is taken as part of the message.

use bytes::Bytes;

use super::Text;
use crate::batch::Field;
use crate::frame::Body;

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Parses `body` into fields of line `index`; `false` when it is not syslog (fields
/// pushed before the failure are left for the caller to truncate).
pub(super) fn parse(body: &Text, index: u32, fields: &mut Vec<Field>) -> bool {
    let mut out = Out {
        body,
        index,
        fields,
    };
    let Some((pri, rest)) = priority(body) else {
        return false;
    };
    out.keyword("facility", FACILITIES[usize::from(pri >> 3)]);
    out.keyword("severity", SEVERITIES[usize::from(pri & 7)]);
    let at = body.len() - rest.len();
    if let Some(header) = rest.strip_prefix(b"1 ") {
        out.keyword("protocol", "rfc5424");
        rfc5424(&mut out, at + 2, header.len())
    } else {
        out.keyword("protocol", "rfc3164");
        rfc3164(&mut out, at);
        true
    }
}

/// Where fields go: ranges of `body` become values sliced out of it ([`Text::slice`]).
struct Out<'a> {
    body: &'a Text<'a>,
    index: u32,
    fields: &'a mut Vec<Field>,
}

impl Out<'_> {
    fn keyword(&mut self, key: &'static str, value: &'static str) {
        self.push(
            Bytes::from_static(key.as_bytes()),
            Body::Owned(Bytes::from_static(value.as_bytes())),
        );
    }

    /// `body[start..end]` under `key`, unless empty or the nil value `-`.
    fn span(&mut self, key: &'static str, start: usize, end: usize) {
        let value = &self.body[start..end];
        if value.is_empty() || value == b"-" {
            return;
        }
        let value = self.body.slice(start..end);
        self.push(Bytes::from_static(key.as_bytes()), value);
    }

    fn push(&mut self, key: Bytes, value: Body) {
        self.fields.push(Field {
            line: self.index,
            key,
            value,
        });
    }
}

/// `<PRI>` at the start: the priority value and what follows it.
fn priority(body: &[u8]) -> Option<(u8, &[u8])> {
    let rest = body.strip_prefix(b"<")?;
    let close = rest.iter().take(4).position(|&b| b == b'>')?;
    let digits = &rest[..close];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value: u32 = digits.iter().fold(0, |v, &d| v * 10 + u32::from(d - b'0'));
    (value <= 191).then(|| (value as u8, &rest[close + 1..]))
}

/// The RFC 5424 header from `start` (after `<PRI>1 `); `len` bytes remain. `false`
/// when it breaks the grammar.
fn rfc5424(out: &mut Out<'_>, start: usize, len: usize) -> bool {
    let end = start + len;
    let mut at = start;
    for key in ["timestamp", "hostname", "app_name", "procid", "msgid"] {
        let Some(token_end) = token(out.body, at, end) else {
            return false;
        };
        out.span(key, at, token_end);
        // Each header field is followed by exactly one space.
        if token_end >= end {
            return false;
        }
        at = token_end + 1;
    }
    let Some(sd_end) = structured_data(out, at, end) else {
        return false;
    };
    out.span("structured_data", at, sd_end);
    if sd_end == end {
        return true;
    }
    if out.body[sd_end] != b' ' {
        return false;
    }
    let mut msg = sd_end + 1;
    if out.body[msg..end].starts_with(b"\xEF\xBB\xBF") {
        msg += 3;
    }
    out.span("message", msg, end);
    true
}

/// The end of a non-empty header token (printable ASCII up to the next space).
fn token(body: &[u8], start: usize, end: usize) -> Option<usize> {
    let len = body[start..end]
        .iter()
        .position(|&b| b == b' ')
        .unwrap_or(end - start);
    let token = &body[start..start + len];
    (len > 0 && token.iter().all(|b| (33..=126).contains(b))).then_some(start + len)
}

/// STRUCTURED-DATA from `start`: `-` or one or more `[SD-ID *(SP NAME="value")]`.
/// Pushes each parameter as `sd.<id>.<name>`; returns where it ends.
fn structured_data(out: &mut Out<'_>, start: usize, end: usize) -> Option<usize> {
    let body = out.body;
    match body.get(start) {
        Some(b'-') if start < end => return Some(start + 1),
        Some(b'[') if start < end => {}
        _ => return None,
    }
    let mut at = start;
    while at < end && body[at] == b'[' {
        let id_start = at + 1;
        let id_end = sd_name(body, id_start, end)?;
        at = id_end;
        loop {
            match body.get(at) {
                Some(b']') if at < end => {
                    at += 1;
                    break;
                }
                Some(b' ') if at < end => {
                    let name_start = at + 1;
                    let name_end = sd_name(body, name_start, end)?;
                    if body.get(name_end..name_end + 2) != Some(b"=\"") || name_end + 2 > end {
                        return None;
                    }
                    let (value, after) = sd_value(body, name_end + 2, end)?;
                    let mut key =
                        Vec::with_capacity(4 + (id_end - id_start) + (name_end - name_start));
                    key.extend_from_slice(b"sd.");
                    key.extend_from_slice(&body[id_start..id_end]);
                    key.push(b'.');
                    key.extend_from_slice(&body[name_start..name_end]);
                    out.push(Bytes::from(key), value);
                    at = after;
                }
                _ => return None,
            }
        }
    }
    Some(at)
}

/// An SD-NAME: 1 to 32 printable ASCII characters except `=`, space, `]` and `"`.
fn sd_name(body: &[u8], start: usize, end: usize) -> Option<usize> {
    let len = body[start..end]
        .iter()
        .take(33)
        .position(|&b| matches!(b, b'=' | b' ' | b']' | b'"') || !(33..=126).contains(&b))
        .unwrap_or((end - start).min(33));
    (1..=32).contains(&len).then_some(start + len)
}

/// A PARAM-VALUE from `start` (after the opening quote) to its closing quote:
/// the value (a slice when it has no escapes) and where the parameter ends.
fn sd_value(body: &Text, start: usize, end: usize) -> Option<(Body, usize)> {
    let mut unescaped: Option<Vec<u8>> = None;
    let mut at = start;
    let mut copied_to = start;
    while at < end {
        match body[at] {
            b'"' => {
                let value = match unescaped {
                    None => body.slice(start..at),
                    Some(mut v) => {
                        v.extend_from_slice(&body[copied_to..at]);
                        Body::Owned(Bytes::from(v))
                    }
                };
                return Some((value, at + 1));
            }
            // Only `"`, `\` and `]` are escaped; a backslash before anything else
            // is itself (RFC 5424 §6.3.3).
            b'\\' if at + 1 < end && matches!(body[at + 1], b'"' | b'\\' | b']') => {
                let v = unescaped.get_or_insert_with(Vec::new);
                v.extend_from_slice(&body[copied_to..at]);
                copied_to = at + 1;
                at += 2;
            }
            _ => at += 1,
        }
    }
    None
}

/// The RFC 3164 content from `start` (after `<PRI>`): never fails.
fn rfc3164(out: &mut Out<'_>, start: usize) {
    let body = out.body;
    let end = body.len();
    let Some(ts_end) = bsd_timestamp(&body[start..]).map(|n| start + n) else {
        // No timestamp: a relay takes all of it as the message.
        out.span("message", start, end);
        return;
    };
    out.span("timestamp", start, ts_end);
    let mut at = ts_end;
    while at < end && body[at] == b' ' {
        at += 1;
    }
    // HOSTNAME, unless the first word is already the tag (local senders such as
    // `logger` on /dev/log leave the hostname out).
    let word_end = body[at..end]
        .iter()
        .position(|&b| b == b' ')
        .map_or(end, |n| at + n);
    let word = &body[at..word_end];
    let is_tag = word.ends_with(b":") || word.contains(&b'[');
    if !is_tag && word_end < end {
        out.span("hostname", at, word_end);
        at = word_end + 1;
    }
    let msg = tag(out, at, end).unwrap_or(at);
    out.span("message", msg, end);
}

/// `TAG[PID]: ` or `TAG: ` from `start`: pushes `app_name` (and `procid`), returns
/// where the message begins; `None` when no tag is there.
fn tag(out: &mut Out<'_>, start: usize, end: usize) -> Option<usize> {
    let body = out.body;
    let len = body[start..end]
        .iter()
        .take(49)
        .position(|&b| matches!(b, b'[' | b':' | b' '))?;
    if len == 0 {
        return None;
    }
    let tag_end = start + len;
    let mut at = tag_end;
    let mut procid = None;
    if body[at] == b'[' {
        let close = body[at..end].iter().take(130).position(|&b| b == b']')?;
        procid = Some((at + 1, at + close));
        at += close + 1;
    }
    if body.get(at) == Some(&b':') {
        at += 1;
    } else if procid.is_none() {
        return None;
    }
    if body.get(at) == Some(&b' ') {
        at += 1;
    }
    out.span("app_name", start, tag_end);
    if let Some((s, e)) = procid {
        out.span("procid", s, e);
    }
    Some(at)
}

/// The length of a BSD timestamp at the start of `text` (`Mmm dd hh:mm:ss`, the day
/// space-padded or not), or of an RFC 3339 one some senders put there.
fn bsd_timestamp(text: &[u8]) -> Option<usize> {
    if text.len() >= 15 && MONTHS.iter().any(|m| text.starts_with(&m[..])) && text[3] == b' ' {
        let day_ok = |d: &[u8]| (d[0] == b' ' || d[0].is_ascii_digit()) && d[1].is_ascii_digit();
        let time = &text[7..15];
        let time_ok = time.iter().enumerate().all(|(i, b)| {
            if i == 2 || i == 5 {
                *b == b':'
            } else {
                b.is_ascii_digit()
            }
        });
        if day_ok(&text[4..6]) && text[6] == b' ' && time_ok {
            return Some(15);
        }
        // `Mmm d hh:mm:ss`: a one-digit day without padding.
        if text[4].is_ascii_digit() && text[5] == b' ' {
            let time = &text[6..14];
            let ok = time.iter().enumerate().all(|(i, b)| {
                if i == 2 || i == 5 {
                    *b == b':'
                } else {
                    b.is_ascii_digit()
                }
            });
            return ok.then_some(14);
        }
        return None;
    }
    // `2026-12-06T10:40:00.123+01:00`
    let word = text.split(|&b| b == b' ').next()?;
    let looks_rfc3339 = word.len() >= 19
        && word[..4].iter().all(u8::is_ascii_digit)
        && word[4] == b'-'
        && word[10] == b'T';
    looks_rfc3339.then_some(word.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::NO_CHUNKS;

    fn fields_of(body: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
        let body = Bytes::copy_from_slice(body);
        let mut fields = Vec::new();
        parse(&Text::owned(&body), 7, &mut fields).then(|| {
            fields
                .into_iter()
                .map(|f| {
                    assert_eq!(f.line, 7);
                    (
                        String::from_utf8(f.key.to_vec()).unwrap(),
                        f.value.get(NO_CHUNKS).to_vec(),
                    )
                })
                .collect()
        })
    }

    fn get<'a>(fields: &'a [(String, Vec<u8>)], key: &str) -> Option<&'a [u8]> {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    #[test]
    fn rfc5424_with_structured_data_and_a_bom() {
        let f = fields_of(
            b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 \
              [exampleSDID@32473 iut=\"3\" eventSource=\"App\\\"lication\" x=\"a\\b\\]\"]\
              [other@1 k=\"v\"] \xEF\xBB\xBFAn application event",
        )
        .unwrap();
        assert_eq!(get(&f, "facility"), Some(&b"local4"[..]));
        assert_eq!(get(&f, "severity"), Some(&b"notice"[..]));
        assert_eq!(get(&f, "protocol"), Some(&b"rfc5424"[..]));
        assert_eq!(get(&f, "timestamp"), Some(&b"2003-10-11T22:14:15.003Z"[..]));
        assert_eq!(get(&f, "hostname"), Some(&b"mymachine.example.com"[..]));
        assert_eq!(get(&f, "app_name"), Some(&b"evntslog"[..]));
        assert_eq!(get(&f, "procid"), None, "nil");
        assert_eq!(get(&f, "msgid"), Some(&b"ID47"[..]));
        assert_eq!(get(&f, "sd.exampleSDID@32473.iut"), Some(&b"3"[..]));
        assert_eq!(
            get(&f, "sd.exampleSDID@32473.eventSource"),
            Some(&b"App\"lication"[..])
        );
        assert_eq!(get(&f, "sd.exampleSDID@32473.x"), Some(&b"a\\b]"[..]));
        assert_eq!(get(&f, "sd.other@1.k"), Some(&b"v"[..]));
        assert!(
            get(&f, "structured_data")
                .unwrap()
                .starts_with(b"[exampleSDID")
        );
        assert!(get(&f, "structured_data").unwrap().ends_with(b"k=\"v\"]"));
        assert_eq!(get(&f, "message"), Some(&b"An application event"[..]));
    }

    #[test]
    fn rfc5424_without_message_and_with_non_utf8_bytes_kept() {
        let f = fields_of(b"<0>1 - - - - - -").unwrap();
        assert_eq!(get(&f, "facility"), Some(&b"kern"[..]));
        assert_eq!(get(&f, "severity"), Some(&b"emerg"[..]));
        assert_eq!(get(&f, "message"), None);
        assert_eq!(get(&f, "structured_data"), None);
        let f = fields_of(b"<14>1 - host app 12 - - caf\xe9 \xff\n").unwrap();
        assert_eq!(get(&f, "procid"), Some(&b"12"[..]));
        assert_eq!(get(&f, "message"), Some(&b"caf\xe9 \xff\n"[..]));
    }

    #[test]
    fn rfc3164_with_and_without_hostname_and_pid() {
        let f = fields_of(b"<13>Dec  6 10:40:00 node-1 myapp[4242]: hello there").unwrap();
        assert_eq!(get(&f, "protocol"), Some(&b"rfc3164"[..]));
        assert_eq!(get(&f, "facility"), Some(&b"user"[..]));
        assert_eq!(get(&f, "severity"), Some(&b"notice"[..]));
        assert_eq!(get(&f, "timestamp"), Some(&b"Dec  6 10:40:00"[..]));
        assert_eq!(get(&f, "hostname"), Some(&b"node-1"[..]));
        assert_eq!(get(&f, "app_name"), Some(&b"myapp"[..]));
        assert_eq!(get(&f, "procid"), Some(&b"4242"[..]));
        assert_eq!(get(&f, "message"), Some(&b"hello there"[..]));

        let f = fields_of(b"<86>Dec 16 10:40:00 sshd: accepted").unwrap();
        assert_eq!(get(&f, "facility"), Some(&b"authpriv"[..]));
        assert_eq!(get(&f, "severity"), Some(&b"info"[..]));
        assert_eq!(get(&f, "hostname"), None);
        assert_eq!(get(&f, "app_name"), Some(&b"sshd"[..]));
        assert_eq!(get(&f, "message"), Some(&b"accepted"[..]));

        let f = fields_of(b"<13>2026-12-06T10:40:00.5+01:00 host app: m").unwrap();
        assert_eq!(
            get(&f, "timestamp"),
            Some(&b"2026-12-06T10:40:00.5+01:00"[..])
        );
        assert_eq!(get(&f, "hostname"), Some(&b"host"[..]));
        assert_eq!(get(&f, "message"), Some(&b"m"[..]));
    }

    #[test]
    fn rfc3164_without_timestamp_or_tag_is_all_message() {
        let f = fields_of(b"<13>just some text").unwrap();
        assert_eq!(get(&f, "message"), Some(&b"just some text"[..]));
        assert_eq!(get(&f, "timestamp"), None);
        let f = fields_of(b"<13>Dec  6 10:40:00 host no tag here").unwrap();
        assert_eq!(get(&f, "hostname"), Some(&b"host"[..]));
        assert_eq!(get(&f, "app_name"), None);
        assert_eq!(get(&f, "message"), Some(&b"no tag here"[..]));
    }

    #[test]
    fn malformed_messages_fail_without_panicking() {
        for bad in [
            &b""[..],
            b"no priority",
            b"<",
            b"<>1 x",
            b"<192>1 - - - - - -",
            b"<1a>x",
            b"<13>1 ",
            b"<13>1 - - - - -",
            b"<13>1 - - - - - [unclosed",
            b"<13>1 - - - - - [id k=\"v]",
            b"<13>1 - - - - - [id k=v]",
            b"<13>1 - - - - - -x",
            b"<13>1 -  - - - - -",
        ] {
            assert!(
                fields_of(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        use proptest::prelude::*;
        proptest!(|(tail in proptest::collection::vec(any::<u8>(), 0..80),
                    head in prop::sample::select(vec![
                        &b"<13>1 "[..], b"<13>1 - - - - - [a b=\"", b"<13>Dec  6 10:40:00 ",
                        b"<13>", b"<191>1 t h a p m ",
                    ]))| {
            let mut body = head.to_vec();
            body.extend_from_slice(&tail);
            let _ = fields_of(&body);
        });
    }
}

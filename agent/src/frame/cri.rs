//! CRI log lines: `<RFC3339Nano timestamp> <stdout|stderr> <P|F> <message>`.
//!
//! This is what kubelet's container runtime (containerd, CRI-O) writes under
//! `/var/log/pods`. A message longer than the runtime's buffer (16 KiB) is split into
//! `P` (partial) records closed by one `F` (full) record of the same stream; the
//! reassembly itself is shared with docker in [`super::partial`].
//!
//! Like kubelet, the tag is read up to its first `:` (`F:more` is a forward-compatible
//! full tag). Unlike kubelet, a line whose third field is not a tag (runtimes before
//! tags existed wrote `<ts> <stream> <message>`) is a full record whose message starts
//! at the third field, instead of losing its first word.

use super::Stream;
use super::time::Rfc3339Cache;

/// The envelope of one CRI line; the message is `line[message_start..]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CriHeader {
    pub timestamp_ns: i64,
    pub stream: Stream,
    pub partial: bool,
    pub message_start: usize,
}

/// Room for the CRI envelope on top of `max_line_bytes` when capping physical lines
/// (a nanosecond timestamp with offset, the stream and the tag take 46 bytes).
pub(crate) const CRI_ENVELOPE_SLACK: usize = 128;

/// Length of a UTC timestamp with nanoseconds, `2026-11-21T10:45:31.210111144Z`.
const NANO_UTC_LEN: usize = 30;

/// Parses the envelope; `None` for anything that is not a CRI line. `timestamps` is
/// the source's cache of the last timestamp minute.
pub(crate) fn parse_cri(line: &[u8], timestamps: &mut Rfc3339Cache) -> Option<CriHeader> {
    // What containerd and CRI-O write, tried before searching for the first space: a
    // valid timestamp holds no space, so when these bytes parse, the space after them is
    // the first one, the one the search would have found.
    let nano_utc = match line.get(NANO_UTC_LEN) {
        Some(b' ') => timestamps.parse(&line[..NANO_UTC_LEN]),
        _ => None,
    };
    let (ts_end, timestamp_ns) = match nano_utc {
        Some(ns) => (NANO_UTC_LEN, ns),
        None => {
            let ts_end = memchr::memchr(b' ', line)?;
            (ts_end, timestamps.parse(&line[..ts_end])?)
        }
    };
    let rest = &line[ts_end + 1..];
    let (stream, after_stream) = if rest.starts_with(b"stdout") {
        (Stream::Stdout, 6)
    } else if rest.starts_with(b"stderr") {
        (Stream::Stderr, 6)
    } else {
        return None;
    };
    let tag_start = ts_end + 1 + after_stream + 1;
    match rest.get(after_stream) {
        Some(b' ') => {}
        // `<ts> <stream>` and nothing else: no tag, no message separator.
        _ => return None,
    }
    let field = &line[tag_start..];
    let field_end = match field {
        // The usual one-letter tag: no search through the message for its end.
        [tag, b' ', ..] if *tag != b' ' => 1,
        _ => memchr::memchr(b' ', field).unwrap_or(field.len()),
    };
    let tag = &field[..field_end];
    let kind = match memchr::memchr(b':', tag) {
        Some(colon) => &tag[..colon],
        None => tag,
    };
    let (partial, message_start) = match kind {
        b"P" => (true, (tag_start + field_end + 1).min(line.len())),
        b"F" => (false, (tag_start + field_end + 1).min(line.len())),
        _ => (false, tag_start),
    };
    Some(CriHeader {
        timestamp_ns,
        stream,
        partial,
        message_start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: &str = "2026-11-21T10:45:31.210111144Z";
    const TS_NS: i64 = 1_795_257_931_210_111_144;

    fn parse(line: &str) -> Option<(i64, Stream, bool, &str)> {
        let h = parse_cri(line.as_bytes(), &mut Rfc3339Cache::default())?;
        Some((
            h.timestamp_ns,
            h.stream,
            h.partial,
            &line[h.message_start..],
        ))
    }

    #[test]
    fn full_and_partial_records() {
        assert_eq!(
            parse(&format!("{TS} stdout F hello world")),
            Some((TS_NS, Stream::Stdout, false, "hello world"))
        );
        assert_eq!(
            parse(&format!("{TS} stderr P part ")),
            Some((TS_NS, Stream::Stderr, true, "part "))
        );
        assert_eq!(
            parse(&format!("{TS} stdout F ")),
            Some((TS_NS, Stream::Stdout, false, ""))
        );
        assert_eq!(
            parse(&format!("{TS} stdout F")),
            Some((TS_NS, Stream::Stdout, false, "")),
            "an empty message without the separator is still a record"
        );
        assert_eq!(
            parse(&format!("{TS} stdout F  two leading spaces")),
            Some((TS_NS, Stream::Stdout, false, " two leading spaces"))
        );
        assert_eq!(
            parse("2026-11-21T12:45:31.210111144+02:00 stdout F x"),
            Some((TS_NS, Stream::Stdout, false, "x"))
        );
    }

    #[test]
    fn other_timestamp_lengths_still_parse() {
        // Byte 30 is a space, but the first 30 bytes are not a timestamp.
        assert_eq!(
            parse("2026-11-21T10:45:31Z stdout F  x"),
            Some((1_795_257_931_000_000_000, Stream::Stdout, false, " x"))
        );
        assert_eq!(
            parse("2026-11-21T10:45:31.2101111Z stdout F x"),
            Some((1_795_257_931_210_111_100, Stream::Stdout, false, "x"))
        );
        assert_eq!(
            parse(&format!("{TS}  stdout F x")),
            None,
            "two spaces after a nanosecond timestamp, as before"
        );
        assert_eq!(
            parse(&format!("{TS} stdout  x")),
            Some((TS_NS, Stream::Stdout, false, " x"))
        );
    }

    #[test]
    fn tag_with_forward_compatible_suffix() {
        assert_eq!(
            parse(&format!("{TS} stdout P:x=1 msg")),
            Some((TS_NS, Stream::Stdout, true, "msg"))
        );
        assert_eq!(
            parse(&format!("{TS} stdout F:y msg")),
            Some((TS_NS, Stream::Stdout, false, "msg"))
        );
    }

    #[test]
    fn missing_tag_is_a_full_record() {
        assert_eq!(
            parse(&format!("{TS} stdout hello world")),
            Some((TS_NS, Stream::Stdout, false, "hello world"))
        );
        assert_eq!(
            parse(&format!("{TS} stderr Partial")),
            Some((TS_NS, Stream::Stderr, false, "Partial"))
        );
    }

    #[test]
    fn malformed_lines() {
        for bad in [
            String::new(),
            "garbage".to_string(),
            TS.to_string(),
            format!("{TS} "),
            format!("{TS} stdout"),
            format!("{TS} stdoutF x"),
            format!("{TS} stdin F x"),
            format!("{TS} STDOUT F x"),
            format!("{TS}  stdout F x"),
            "2026-11-21T10:45:31 stdout F x".to_string(),
            "not-a-time stdout F x".to_string(),
        ] {
            assert_eq!(parse(&bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_cri(b"\xff\xfe\0 stdout F x", &mut Rfc3339Cache::default()),
            None
        );
    }

    #[test]
    fn message_bytes_are_untouched() {
        let mut line = format!("{TS} stdout F ").into_bytes();
        line.extend_from_slice(b"\0\xff\xc3(");
        let h = parse_cri(&line, &mut Rfc3339Cache::default()).unwrap();
        assert_eq!(&line[h.message_start..], b"\0\xff\xc3(");
    }
}

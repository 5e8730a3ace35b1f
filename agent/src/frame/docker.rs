//! docker json-file lines: `{"log":"msg\n","stream":"stdout","time":"2026-...Z"}`.
//!
//! The daemon splits a message longer than 16 KiB into several lines; every piece but
//! the last lacks the trailing `\n` in `log`. Reassembly is shared with CRI in
//! [`super::partial`].
//!
//! # Performance
//!
//! Nearly every line the daemon writes starts with `{"log":"` and has exactly one
//! escape in `log`: the final `\n`. For those the message is a `Bytes::slice` of the
//! line (no copy) and serde_json only validates the line and reads `stream` and
//! `time` (skipping over `log` without decoding it). Any other shape goes through a
//! borrowed `Cow<str>` deserialization that allocates only when `log` has escapes
//! before its end (`\"`, `\u003c`, `\t`, ...).
//!
//! A message taken by the fast path is not checked for UTF-8 (invalid bytes are kept
//! as they are, like everywhere else); one with inner escapes must be valid UTF-8 or
//! the line is MALFORMED. The daemon itself never writes invalid UTF-8.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::Stream;
use super::time::parse_rfc3339_ns;

/// Room for the json-file envelope on top of the message when capping physical lines.
/// The daemon writes at most 16 KiB of message per line, but JSON escaping can grow
/// it six-fold (`<` is written `\u003c`), so physical lines are allowed at least
/// [`DOCKER_MIN_PHYSICAL_LINE`] bytes whatever `max_line_bytes` is.
pub(crate) const DOCKER_ENVELOPE_SLACK: usize = 4096;
pub(crate) const DOCKER_MIN_PHYSICAL_LINE: usize = 128 * 1024;

/// What the fast path needs besides `log`, which it slices itself.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "log")]
    _log: IgnoredAny,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
}

#[derive(Deserialize)]
struct DockerJson<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
}

/// One decoded json-file line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DockerRecord {
    pub timestamp_ns: i64,
    pub stream: Stream,
    /// The message is continued by the next line of the same stream.
    pub partial: bool,
    /// The message without its trailing `\n` (and a `\r` before it).
    pub message: Bytes,
}

/// Decodes one json-file line; `None` if it is not one.
pub(crate) fn parse_docker(line: &Bytes) -> Option<DockerRecord> {
    if let Some((range, partial)) = plain_log(line) {
        let env: Envelope<'_> = serde_json::from_slice(line).ok()?;
        return Some(DockerRecord {
            timestamp_ns: parse_rfc3339_ns(env.time.as_bytes())?,
            stream: stream(&env.stream)?,
            partial,
            message: line.slice(range),
        });
    }
    let json: DockerJson<'_> = serde_json::from_slice(line).ok()?;
    let stream = stream(&json.stream)?;
    let timestamp_ns = parse_rfc3339_ns(json.time.as_bytes())?;
    let (partial, text_len) = match json.log.as_bytes() {
        [.., b'\r', b'\n'] => (false, json.log.len() - 2),
        [.., b'\n'] => (false, json.log.len() - 1),
        _ => (true, json.log.len()),
    };
    let message = match json.log {
        Cow::Borrowed(s) => line.slice_ref(&s.as_bytes()[..text_len]),
        Cow::Owned(s) => {
            let mut v = s.into_bytes();
            v.truncate(text_len);
            Bytes::from(v)
        }
    };
    Some(DockerRecord {
        timestamp_ns,
        stream,
        partial,
        message,
    })
}

/// For a line starting `{"log":"` whose `log` has no escape but a final `\n` (or
/// `\r\n`): the byte range of the message in the line and whether it is partial.
fn plain_log(line: &[u8]) -> Option<(std::ops::Range<usize>, bool)> {
    const PREFIX: &[u8] = br#"{"log":""#;
    let value = line.strip_prefix(PREFIX)?;
    let end = memchr::memchr2(b'\\', b'"', value)?;
    let range = PREFIX.len()..PREFIX.len() + end;
    let rest = &value[end..];
    if rest[0] == b'"' {
        Some((range, true))
    } else if rest.starts_with(br#"\n""#) || rest.starts_with(br#"\r\n""#) {
        Some((range, false))
    } else {
        None
    }
}

fn stream(name: &str) -> Option<Stream> {
    match name {
        "stdout" => Some(Stream::Stdout),
        "stderr" => Some(Stream::Stderr),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS_NS: i64 = 1_795_257_931_210_111_144;

    fn parse(s: &str) -> Option<DockerRecord> {
        parse_docker(&Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn complete_message_is_a_slice_of_the_line() {
        let line = Bytes::from_static(
            br#"{"log":"hello world\n","stream":"stdout","time":"2026-11-21T10:45:31.210111144Z"}"#,
        );
        let r = parse_docker(&line).unwrap();
        assert_eq!(
            r,
            DockerRecord {
                timestamp_ns: TS_NS,
                stream: Stream::Stdout,
                partial: false,
                message: Bytes::from_static(b"hello world"),
            }
        );
        let range = line.as_ptr() as usize..line.as_ptr() as usize + line.len();
        assert!(range.contains(&(r.message.as_ptr() as usize)));
    }

    #[test]
    fn partial_and_crlf() {
        let r =
            parse(r#"{"log":"part","stream":"stderr","time":"2026-11-21T10:45:31.210111144Z"}"#)
                .unwrap();
        assert!(r.partial);
        assert_eq!(r.stream, Stream::Stderr);
        assert_eq!(&r.message[..], b"part");
        let r =
            parse(r#"{"log":"dos\r\n","stream":"stdout","time":"2026-11-21T10:45:31.210111144Z"}"#)
                .unwrap();
        assert!(!r.partial);
        assert_eq!(&r.message[..], b"dos");
        let r = parse(r#"{"log":"\n","stream":"stdout","time":"2026-11-21T10:45:31.210111144Z"}"#)
            .unwrap();
        assert!(!r.partial);
        assert!(r.message.is_empty());
    }

    #[test]
    fn invalid_utf8_without_escapes_is_kept_as_bytes() {
        let r = parse_docker(&Bytes::from_static(
            b"{\"log\":\"\xff\0x\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-21T10:45:31Z\"}",
        ));
        assert_eq!(r, None, "a raw NUL is not valid JSON");
        let r = parse_docker(&Bytes::from_static(
            b"{\"log\":\"\xffx\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-21T10:45:31Z\"}",
        ))
        .unwrap();
        assert_eq!(&r.message[..], b"\xffx");
    }

    #[test]
    fn fast_path_and_general_path_agree() {
        let lines = [
            r#"{"log":"plain\n","stream":"stdout","time":"2026-11-21T10:45:31Z"}"#,
            r#"{"log":"plain\r\n","stream":"stderr","time":"2026-11-21T10:45:31Z"}"#,
            r#"{"log":"partial","stream":"stdout","time":"2026-11-21T10:45:31Z"}"#,
            r#"{"log":"","stream":"stdout","time":"2026-11-21T10:45:31Z"}"#,
            r#"{"log":"\n","stream":"stdout","time":"2026-11-21T10:45:31Z"}"#,
            r#"{"log":"x\n", "stream":"stdout","time":"2026-11-21T10:45:31Z"}"#,
        ];
        for text in lines {
            let line = Bytes::copy_from_slice(text.as_bytes());
            let fast = parse_docker(&line).unwrap();
            assert!(plain_log(&line).is_some(), "{text}");
            // The general path, reached by moving `log` out of first position.
            let moved = text.replacen(r#"{"log""#, r#"{"attrs":{},"log""#, 1);
            let general = parse(&moved).unwrap();
            assert_eq!(fast, general, "{text}");
        }
        for not_plain in [
            r#"{"log":"a\tb\n","stream":"stdout","time":"2026-11-21T10:45:31Z"}"#,
            r#"{"log":"a\n\n","stream":"stdout","time":"2026-11-21T10:45:31Z"}"#,
            r#"{"log":"a\nb","stream":"stdout","time":"2026-11-21T10:45:31Z"}"#,
            r#"{"log" :"a\n","stream":"stdout","time":"2026-11-21T10:45:31Z"}"#,
        ] {
            assert!(plain_log(not_plain.as_bytes()).is_none(), "{not_plain}");
        }
        assert_eq!(
            &parse(r#"{"log":"a\n\n","stream":"stdout","time":"2026-11-21T10:45:31Z"}"#)
                .unwrap()
                .message[..],
            b"a\n"
        );
        assert_eq!(
            &parse(r#"{"log":"a\nb","stream":"stdout","time":"2026-11-21T10:45:31Z"}"#)
                .unwrap()
                .message[..],
            b"a\nb"
        );
    }

    #[test]
    fn escapes_are_decoded() {
        let r = parse(
            r#"{"log":"a \"q\" \u003cb\u003e\ttab \u00e9 \\ \u0000\n","stream":"stdout","time":"2026-11-21T10:45:31.210111144Z"}"#,
        )
        .unwrap();
        assert_eq!(&r.message[..], "a \"q\" <b>\ttab é \\ \0".as_bytes());
        assert!(!r.partial);
    }

    #[test]
    fn field_order_and_extra_fields_do_not_matter() {
        let r = parse(
            r#"{"time":"2026-11-21T12:45:31.210111144+02:00","attrs":{"k":"v"},"stream":"stdout","log":"x\n"}"#,
        )
        .unwrap();
        assert_eq!(r.timestamp_ns, TS_NS);
        assert_eq!(&r.message[..], b"x");
    }

    #[test]
    fn malformed_lines() {
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"log":"x\n","stream":"stdout"}"#,
            r#"{"log":"x\n","time":"2026-11-21T10:45:31Z"}"#,
            r#"{"stream":"stdout","time":"2026-11-21T10:45:31Z"}"#,
            r#"{"log":"x\n","stream":"stdin","time":"2026-11-21T10:45:31Z"}"#,
            r#"{"log":"x\n","stream":"stdout","time":"yesterday"}"#,
            r#"{"log":1,"stream":"stdout","time":"2026-11-21T10:45:31Z"}"#,
            r#"{"log":"x\n","stream":"stdout","time":"2026-11-21T10:45:31Z"} trailing"#,
            r#"{"log":"x\n","stream":"stdout","time":"2026-11-21T10:45:31Z""#,
            r#"{"log":"x\n","log":"y\n","stream":"stdout","time":"2026-11-21T10:45:31Z"}"#,
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_docker(&Bytes::from_static(
                b"{\"log\":\"\xff\\tx\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-21T10:45:31Z\"}"
            )),
            None,
            "a message that must be decoded must be valid UTF-8"
        );
    }
}

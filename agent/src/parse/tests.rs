use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use regex::bytes::Regex;

use super::{Parser, Utf8Checked};
use crate::batch::Field;
use crate::config::ParserConfig;
use crate::frame::{Line, LineFlags, NO_CHUNKS, Record, Span, Stream};

fn line(body: &[u8]) -> Record {
    Record {
        offset: 0,
        timestamp_ns: 0,
        stream: Stream::Stdout,
        flags: LineFlags::empty(),
        body: Bytes::copy_from_slice(body).into(),
    }
}

/// A framed line whose body is `len` bytes at `start` of chunk `chunk`.
fn span_line(chunk: u32, start: u32, len: u32) -> Line {
    Line {
        offset: 0,
        timestamp_ns: 0,
        body: Span { chunk, start, len },
        stream: Stream::Stdout,
        flags: LineFlags::empty(),
    }
}

fn all_configs() -> Vec<ParserConfig> {
    vec![
        ParserConfig::None,
        ParserConfig::Json,
        ParserConfig::Regex(Regex::new(r"^(?P<level>\w+) (?P<msg>.*)$").unwrap()),
        ParserConfig::Delimiter {
            delimiter: b',',
            quote: Some(b'"'),
            columns: vec![Arc::from("a"), Arc::from("b"), Arc::from("c")],
        },
        ParserConfig::Delimiter {
            delimiter: b'\t',
            quote: None,
            columns: vec![Arc::from("a"), Arc::from("b")],
        },
        ParserConfig::Nginx,
        ParserConfig::Apache,
    ]
}

fn kinds(parser: &Parser, body: &[u8]) -> (bool, LineFlags, Vec<Field>) {
    let mut l = line(body);
    // Fields of earlier lines must survive a later failure.
    let earlier = Field {
        line: 0,
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"v").into(),
    };
    let mut fields = vec![earlier.clone()];
    let ok = parser.apply(&mut l, 1, &mut fields);
    assert_eq!(fields[0], earlier);
    assert_eq!(
        l.body.get(crate::frame::NO_CHUNKS),
        body,
        "the body is never changed"
    );
    fields.remove(0);
    (ok, l.flags, fields)
}

#[test]
fn kind_labels() {
    let labels: Vec<_> = all_configs()
        .iter()
        .map(|c| Parser::new(c).kind())
        .collect();
    assert_eq!(
        labels,
        [
            "none",
            "json",
            "regex",
            "delimiter",
            "delimiter",
            "nginx",
            "apache"
        ]
    );
}

#[test]
fn good_lines_parse_with_line_index() {
    let cases: [(ParserConfig, &[u8], usize); 5] = [
        (ParserConfig::Json, br#"{"level":"info","msg":"ok"}"#, 2),
        (
            ParserConfig::Regex(Regex::new(r"^(?P<level>\w+) (?P<msg>.*)$").unwrap()),
            b"info all good",
            2,
        ),
        (
            ParserConfig::Delimiter {
                delimiter: b',',
                quote: None,
                columns: vec![Arc::from("a"), Arc::from("b")],
            },
            b"1,2",
            2,
        ),
        (
            ParserConfig::Nginx,
            br#"1.2.3.4 - - [t] "GET / HTTP/1.1" 200 1 "-" "curl/8""#,
            10,
        ),
        (
            ParserConfig::Apache,
            br#"1.2.3.4 - - [t] "GET / HTTP/1.1" 200 1 "-" "curl/8""#,
            11,
        ),
    ];
    for (config, body, count) in cases {
        let parser = Parser::new(&config);
        let (ok, flags, fields) = kinds(&parser, body);
        assert!(ok, "{}", parser.kind());
        assert_eq!(flags, LineFlags::empty());
        assert_eq!(fields.len(), count, "{}", parser.kind());
        assert!(fields.iter().all(|f| f.line == 1));
    }
}

#[test]
fn none_only_validates_utf8() {
    let parser = Parser::new(&ParserConfig::None);
    assert_eq!(
        kinds(&parser, b"anything at all"),
        (true, LineFlags::empty(), vec![])
    );
    assert_eq!(kinds(&parser, b""), (true, LineFlags::empty(), vec![]));
    assert_eq!(
        kinds(&parser, b"bad \xff byte"),
        (true, LineFlags::INVALID_UTF8, vec![])
    );
}

#[test]
fn garbage_fails_without_fields_for_every_parser() {
    for config in all_configs().iter().skip(1) {
        let parser = Parser::new(config);
        for body in [&b""[..], b"\x00\x01\x02", b"{\"unterminated"] {
            let (ok, flags, fields) = kinds(&parser, body);
            // The tab-delimited parser accepts any non-empty line: that is its contract.
            if parser.kind() == "delimiter" && !body.is_empty() {
                continue;
            }
            assert!(!ok, "{} accepted {body:?}", parser.kind());
            assert!(flags.contains(LineFlags::PARSE_FAILED));
            assert!(!flags.contains(LineFlags::INVALID_UTF8));
            assert!(fields.is_empty());
        }
    }
}

#[test]
fn invalid_utf8_is_flagged_and_kept_as_bytes() {
    let json = Parser::new(&ParserConfig::Json);
    let (ok, flags, fields) = kinds(&json, b"{\"msg\":\"\xc3\x28\"}");
    assert!(!ok);
    assert_eq!(flags, LineFlags::INVALID_UTF8 | LineFlags::PARSE_FAILED);
    assert!(fields.is_empty());

    // Byte-oriented parsers still read the line; the flag tells consumers it is not text.
    let nginx = Parser::new(&ParserConfig::Nginx);
    let body = b"1.2.3.4 - - [t] \"GET /\xff HTTP/1.1\" 200 1 \"-\" \"\xfe\"";
    let (ok, flags, fields) = kinds(&nginx, body);
    assert!(ok);
    assert_eq!(flags, LineFlags::INVALID_UTF8);
    assert_eq!(fields[4].value.get(NO_CHUNKS), b"/\xff");
}

#[test]
fn existing_flags_are_kept() {
    let parser = Parser::new(&ParserConfig::Json);
    let mut l = line(b"not json");
    l.flags = LineFlags::TRUNCATED;
    assert!(!parser.apply(&mut l, 0, &mut Vec::new()));
    assert_eq!(l.flags, LineFlags::TRUNCATED | LineFlags::PARSE_FAILED);
}

#[test]
fn ten_megabyte_line() {
    let mut body = b"{\"msg\":\"".to_vec();
    body.resize(10 << 20, b'x');
    body.extend_from_slice(b"\"}");
    let parser = Parser::new(&ParserConfig::Json);
    let (ok, _, fields) = kinds(&parser, &body);
    assert!(ok);
    assert_eq!(fields[0].value.len(), (10 << 20) - 8);
    // Cut mid-string, as a TRUNCATED line is: a failure, not a panic.
    let (ok, flags, _) = kinds(&parser, &body[..5 << 20]);
    assert!(!ok);
    assert!(flags.contains(LineFlags::PARSE_FAILED));
}

#[test]
fn chunk_check_vouches_only_for_whole_characters_of_the_valid_prefix() {
    // "é" is c3 a9, "€" is e2 82 ac; the chunk ends in the middle of a "€".
    let chunk = Bytes::from_static(b"ab\xc3\xa9cd\n\xe2\x82\xacx\n\xe2\x82");
    let checked = Utf8Checked::new(&chunk);
    for (range, vouched) in [
        (0..2, true),    // "ab"
        (0..6, true),    // "abécd"
        (2..4, true),    // "é"
        (3..6, false),   // starts inside "é"
        (0..3, false),   // ends inside "é"
        (7..11, true),   // "€x"
        (7..13, false),  // runs into the cut character
        (12..14, false), // the cut character
        (4..4, true),    // empty, at a boundary
    ] {
        assert_eq!(
            checked.vouches_for(&chunk.slice(range.clone())),
            vouched,
            "{range:?}"
        );
    }
    // Equal bytes elsewhere (a copy) are not vouched for: only slices of the chunk are.
    assert!(!checked.vouches_for(b"ab"));
    assert!(!checked.vouches_for(&Bytes::copy_from_slice(&chunk[..2])));

    // An ASCII chunk vouches for any slice of itself, and still only for slices.
    let ascii = Bytes::from_static(b"plain line\nanother\n");
    let checked = Utf8Checked::new(&ascii);
    assert!(checked.vouches_for(&ascii.slice(0..10)));
    assert!(checked.vouches_for(&ascii.slice(3..18)));
    assert!(!checked.vouches_for(b"plain line"));

    // A chunk that starts inside a character vouches for nothing.
    let cut = Bytes::from_static(b"\xa9abc\n");
    let checked = Utf8Checked::new(&cut);
    assert!(!checked.vouches_for(&cut.slice(1..4)));
}

#[test]
fn apply_with_a_chunk_check_flags_like_apply() {
    let chunk = Bytes::from_static(b"ok line\nbad \xff line\ncaf\xc3\xa9\n");
    let checked = Utf8Checked::new(&chunk);
    for config in all_configs() {
        let parser = Parser::new(&config);
        for range in [0..7, 8..17, 18..23, 18..22] {
            let mut with = span_line(0, range.start as u32, range.len() as u32);
            let mut without = Record {
                body: chunk.slice(range.clone()).into(),
                ..line(b"")
            };
            let chunks = std::slice::from_ref(&chunk);
            let known = checked.vouches_for(with.body.get(chunks));
            let ok_with = parser.apply_with(&mut with, chunks, 0, &mut Vec::new(), known);
            let ok_without = parser.apply(&mut without, 0, &mut Vec::new());
            assert_eq!(
                (ok_with, with.flags),
                (ok_without, without.flags),
                "{range:?}"
            );
        }
    }
}

/// Bytes that look like the formats, so the property tests reach deep into the scanners.
fn near_miss_bytes() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        &b"{"[..],
        b"}",
        b"[",
        b"]",
        b"\"",
        b"\\",
        b"\\\"",
        b":",
        b",",
        b" ",
        b"\t",
        b"-",
        b"200",
        b"12",
        b"GET / HTTP/1.1",
        b"\"a\"",
        b"null",
        b"1.5e3",
        b"\\u00e9",
        b"\\ud800",
        b"\xff",
        b"\xc3",
        b"\x00",
    ]);
    prop::collection::vec(pieces, 0..40).prop_map(|p| p.concat())
}

fn check_never_panics(body: &[u8]) -> Result<(), TestCaseError> {
    for config in all_configs() {
        let parser = Parser::new(&config);
        let mut l = line(body);
        let mut fields = Vec::new();
        let ok = parser.apply(&mut l, 5, &mut fields);
        prop_assert_eq!(ok, !l.flags.contains(LineFlags::PARSE_FAILED));
        prop_assert_eq!(
            std::str::from_utf8(body).is_err(),
            l.flags.contains(LineFlags::INVALID_UTF8)
        );
        if !ok {
            prop_assert!(fields.is_empty());
        }
        prop_assert!(fields.iter().all(|f| f.line == 5));
        prop_assert_eq!(l.body.get(crate::frame::NO_CHUNKS), body);
    }
    Ok(())
}

proptest! {
    #[test]
    fn chunk_check_never_vouches_for_invalid_utf8(
        chunk in near_miss_bytes(),
        cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..20),
    ) {
        let mut chunk = chunk;
        chunk.extend_from_slice("é€😀".as_bytes());
        let chunk = Bytes::from(chunk);
        let checked = Utf8Checked::new(&chunk);
        for (a, b) in cuts {
            let (a, b) = (a.index(chunk.len() + 1), b.index(chunk.len() + 1));
            let slice = chunk.slice(a.min(b)..a.max(b));
            if checked.vouches_for(&slice) {
                prop_assert!(std::str::from_utf8(&slice).is_ok(), "{:?}", slice);
            }
        }
        if std::str::from_utf8(&chunk).is_ok() {
            prop_assert!(checked.vouches_for(&chunk));
        }
    }

    #[test]
    fn apply_never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..300)) {
        check_never_panics(&body)?;
    }

    #[test]
    fn apply_never_panics_on_near_misses(body in near_miss_bytes()) {
        check_never_panics(&body)?;
    }

    #[test]
    fn json_string_members_round_trip(
        members in prop::collection::vec((".{0,8}", ".{0,12}"), 0..6)
    ) {
        let mut body = String::from("{");
        for (i, (k, v)) in members.iter().enumerate() {
            if i > 0 {
                body.push_str(" , ");
            }
            body.push_str(&serde_json::to_string(k).unwrap());
            body.push(':');
            body.push_str(&serde_json::to_string(v).unwrap());
        }
        body.push('}');
        let parser = Parser::new(&ParserConfig::Json);
        let (ok, flags, fields) = kinds(&parser, body.as_bytes());
        prop_assert!(ok);
        prop_assert_eq!(flags, LineFlags::empty());
        let got: Vec<(Vec<u8>, Vec<u8>)> =
            fields.iter().map(|f| (f.key.to_vec(), f.value.get(NO_CHUNKS).to_vec())).collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = members
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn json_nested_values_are_compact_and_equivalent(value in json_value()) {
        let pretty = serde_json::to_string_pretty(&serde_json::json!({ "v": value })).unwrap();
        let parser = Parser::new(&ParserConfig::Json);
        let (ok, _, fields) = kinds(&parser, pretty.as_bytes());
        prop_assert!(ok);
        let text = std::str::from_utf8(fields[0].value.get(NO_CHUNKS)).unwrap();
        if let serde_json::Value::String(s) = &value {
            prop_assert_eq!(text, s.as_str());
        } else {
            let reparsed: serde_json::Value = serde_json::from_str(text).unwrap();
            prop_assert_eq!(&reparsed, &value);
            if value.is_object() || value.is_array() {
                prop_assert_eq!(text, serde_json::to_string(&value).unwrap());
            }
        }
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[ a-z\"\\\\\n]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[ a-z\"]{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every parser, on a body that is a span of a read chunk (chunk 1 of two, not at its
/// start), finds the fields it finds on the same bytes of its own, and its values of
/// text found verbatim are spans of that chunk inside the body: no reference count.
#[test]
fn a_span_body_gets_the_same_fields_as_spans_of_its_chunk() {
    let cases: [(ParserConfig, &[u8]); 6] = [
        (
            ParserConfig::Json,
            br#"{"level":"info","n":12,"msg":"a \"quoted\" word","o":{"k": 1},"unusual key":"x"}"#,
        ),
        (
            ParserConfig::Json,
            br#"{"ts":"2026-12-07T07:00:00Z","level":"warn","seq":7,"latency_ms":1.5,"msg":"m"}"#,
        ),
        (
            ParserConfig::Regex(Regex::new(r"^(?P<level>\w+) (?P<msg>.*)$").unwrap()),
            b"info all good",
        ),
        (
            ParserConfig::Delimiter {
                delimiter: b',',
                quote: Some(b'"'),
                columns: vec![Arc::from("a"), Arc::from("b"), Arc::from("c")],
            },
            br#"1,"two ""2""",3,4"#,
        ),
        (
            ParserConfig::Nginx,
            br#"1.2.3.4 - - [t] "GET / HTTP/1.1" 200 1 "-" "curl/8""#,
        ),
        (
            ParserConfig::Syslog,
            br#"<165>1 2003-10-11T22:14:15.003Z host app 1 ID47 [ex@1 a="x\"y" b="z"] message"#,
        ),
    ];
    for (config, body) in cases {
        let parser = Parser::new(&config);
        let chunk = Bytes::from([&b"earlier line\n"[..], body, b"\nlater"].concat());
        let chunks = [Bytes::from_static(b"another chunk"), chunk];
        let start = 13;
        let mut spanned = span_line(1, start as u32, body.len() as u32);
        let mut span_fields = Vec::new();
        assert!(parser.apply_with(&mut spanned, &chunks, 3, &mut span_fields, false));
        let (ok, flags, owned_fields) = kinds(&parser, body);
        assert!(ok, "{}", parser.kind());
        assert_eq!(spanned.flags, flags);
        let resolved = |fields: &[Field], chunks: &[Bytes]| -> Vec<(Bytes, Vec<u8>)> {
            let pairs = fields
                .iter()
                .map(|f| (f.key.clone(), f.value.get(chunks).to_vec()));
            pairs.collect()
        };
        assert_eq!(
            resolved(&span_fields, &chunks),
            resolved(&owned_fields, NO_CHUNKS),
            "{}",
            parser.kind()
        );
        let mut spans = 0;
        for f in &span_fields {
            assert_eq!(f.line, 3);
            if let crate::frame::Body::Span {
                chunk,
                start: s,
                len,
            } = f.value
            {
                assert_eq!(chunk, 1, "{f:?}");
                let range = s as usize..(s + len) as usize;
                assert!(
                    range.start >= start && range.end <= start + body.len(),
                    "{f:?}"
                );
                spans += 1;
            }
        }
        assert!(spans >= 2, "{}: {span_fields:?}", parser.kind());
        // Only decoded text (escapes, doubled quotes, a nested value with spaces) and
        // a parser's own constants are bytes of their own.
        let owned: Vec<&[u8]> = span_fields
            .iter()
            .filter_map(|f| match &f.value {
                crate::frame::Body::Owned(b) => Some(&b[..]),
                crate::frame::Body::Span { .. } => None,
            })
            .collect();
        let expected: &[&[u8]] = match parser.kind() {
            "json" if body.starts_with(br#"{"level""#) => &[br#"a "quoted" word"#, br#"{"k":1}"#],
            "delimiter" => &[br#"two "2""#],
            "syslog" => &[b"local4", b"notice", b"rfc5424", br#"x"y"#],
            _ => &[],
        };
        assert_eq!(owned, expected, "{}", parser.kind());
    }
}

/// A span body and the same bytes of its own parse alike, whatever the bytes.
fn check_span_and_owned_agree(body: &[u8]) -> Result<(), TestCaseError> {
    let chunks = [Bytes::from([&b"ab"[..], body, b"c"].concat())];
    for config in all_configs().into_iter().chain([ParserConfig::Syslog]) {
        let parser = Parser::new(&config);
        let mut spanned = span_line(0, 2, body.len() as u32);
        let mut span_fields = Vec::new();
        let ok = parser.apply_with(&mut spanned, &chunks, 0, &mut span_fields, false);
        let mut owned = line(body);
        let mut owned_fields = Vec::new();
        prop_assert_eq!(ok, parser.apply(&mut owned, 0, &mut owned_fields));
        prop_assert_eq!(spanned.flags, owned.flags);
        prop_assert_eq!(span_fields.len(), owned_fields.len());
        for (s, o) in span_fields.iter().zip(&owned_fields) {
            prop_assert_eq!(&s.key, &o.key);
            prop_assert_eq!(s.value.get(&chunks), o.value.get(NO_CHUNKS));
            if let crate::frame::Body::Span { start, len, .. } = s.value {
                prop_assert!(start >= 2 && (start + len) as usize <= 2 + body.len());
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn span_and_owned_bodies_parse_alike(body in near_miss_bytes()) {
        check_span_and_owned_agree(&body)?;
    }

    #[test]
    fn span_and_owned_bodies_parse_alike_on_arbitrary_bytes(
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        check_span_and_owned_agree(&body)?;
    }
}

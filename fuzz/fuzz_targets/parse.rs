//! Every parser (`json`, `regex`, `delimiter` with and without CSV quoting, `nginx`,
//! `apache`) on arbitrary line bodies.
//!
//! Input: a selector byte (which parser), then the body. Besides "never panics": a
//! failed parse leaves no field behind and flags the line, every field belongs to the
//! line's index, the UTF-8 flag tells the truth, and vouching for the body's UTF-8
//! (the chunk-level check of the file source) changes nothing. For JSON, the flat
//! fast path gives exactly serde_json's fields wherever it takes a body.

#![no_main]

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use logtap::batch::Field;
use logtap::config::ParserConfig;
use logtap::frame::{Line, LineFlags, Record, Span, Stream};
use logtap::parse::Parser;
use regex::bytes::Regex;

static PARSERS: LazyLock<Vec<Parser>> = LazyLock::new(|| {
    let columns =
        |names: &[&str]| -> Vec<Arc<str>> { names.iter().map(|&n| Arc::from(n)).collect() };
    [
        ParserConfig::Json,
        ParserConfig::Regex(Regex::new(r"^(?P<level>\w+) (?P<msg>.*)$").expect("valid")),
        // Optional groups: captures that did not participate must not become fields.
        ParserConfig::Regex(
            Regex::new(r"^(?P<ts>\S+)(?: \[(?P<thread>[^\]]*)\])? (?P<rest>.*)$").expect("valid"),
        ),
        ParserConfig::Delimiter {
            delimiter: b',',
            quote: Some(b'"'),
            columns: columns(&["a", "b", "c"]),
        },
        ParserConfig::Delimiter {
            delimiter: b'\t',
            quote: None,
            columns: columns(&["a", "b"]),
        },
        // The quote and the delimiter the same byte: a misconfiguration to survive.
        ParserConfig::Delimiter {
            delimiter: b'"',
            quote: Some(b'"'),
            columns: columns(&["a"]),
        },
        ParserConfig::Nginx,
        ParserConfig::Apache,
        ParserConfig::None,
    ]
    .iter()
    .map(Parser::new)
    .collect()
});

const INDEX: u32 = 7;

fn line(body: &[u8]) -> Record {
    Record {
        offset: 0,
        timestamp_ns: 0,
        stream: Stream::None,
        flags: LineFlags::empty(),
        body: Bytes::copy_from_slice(body).into(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let parser = &PARSERS[usize::from(sel) % PARSERS.len()];
    let utf8 = std::str::from_utf8(body).is_ok();
    // A field already in the list (an earlier line's) must survive a failed parse.
    let earlier = Field {
        line: INDEX - 1,
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"v").into(),
    };

    let mut checked = line(body);
    let mut fields = vec![earlier.clone()];
    let parsed = parser.apply(&mut checked, INDEX, &mut fields);
    assert_eq!(fields[0], earlier, "an earlier line's field was changed");
    assert_eq!(checked.flags.contains(LineFlags::INVALID_UTF8), !utf8);
    assert_eq!(checked.flags.contains(LineFlags::PARSE_FAILED), !parsed);
    assert_eq!(
        checked.body.get(logtap::frame::NO_CHUNKS),
        body,
        "the body must never change"
    );
    if !parsed {
        assert_eq!(fields.len(), 1, "a failed parse left fields behind");
    }
    assert!(fields[1..].iter().all(|f| f.line == INDEX));

    if let (Some(flat), serde) = logtap::parse::json::both_paths(&Bytes::copy_from_slice(body)) {
        assert_eq!(Some(flat), serde, "the fast path and serde_json disagree");
    }

    // The same body as a framed line, a span of its chunk, vouched for when valid.
    let chunks = [Bytes::copy_from_slice(body)];
    let mut vouched = Line {
        offset: 0,
        timestamp_ns: 0,
        body: Span {
            chunk: 0,
            start: 0,
            len: body.len() as u32,
        },
        stream: Stream::None,
        flags: LineFlags::empty(),
    };
    let mut vouched_fields = vec![earlier];
    parser.apply_with(&mut vouched, &chunks, INDEX, &mut vouched_fields, utf8);
    assert_eq!(vouched.flags, checked.flags);
    // The same keys and values, the framed line's resolved in its chunk.
    let spanned: Vec<_> = vouched_fields
        .iter()
        .map(|f| (&f.key, f.value.get(&chunks)))
        .collect();
    let owned: Vec<_> = fields
        .iter()
        .map(|f| (&f.key, f.value.get(logtap::frame::NO_CHUNKS)))
        .collect();
    assert_eq!(spanned, owned);
});

//! JSON parser: the body is one JSON object; each top-level member becomes a field.
//!
//! | member value | field value |
//! | --- | --- |
//! | string | the unescaped string |
//! | number, `true`, `false`, `null` | its JSON text, as written (`1.50` stays `1.50`) |
//! | object, array | compact JSON text (whitespace outside strings removed) |
//!
//! Keys are unescaped the same way. Duplicate keys are kept, in order: which one wins
//! is a question for the consumer, and dropping one would lose data. Anything that is
//! not exactly one object (an array, a scalar, malformed text, trailing non-whitespace)
//! is a failure. Nesting depth inside a member is not limited (serde_json skips a
//! member value iteratively, so depth cannot overflow the stack).
//!
//! # Performance
//!
//! Two paths with one result. Most log lines are flat objects whose strings have no
//! escapes: [`scan_flat`] reads exactly those (four kinds of token) and
//! hands back spans; anything else — an escape, a nested value, a control character,
//! a malformed number, trailing text — makes it give up, and serde_json parses the
//! line from the start. The fast path only accepts text whose fields are spans of the
//! body either way, so the two agree by construction; `scan_flat_agrees_with_serde`
//! and the `parse` fuzz target check it on arbitrary and near-miss input.
//!
//! serde_json reads the object with a visitor that borrows from the body: a key or
//! string value without escapes, a number, or an already compact nested value is a
//! slice of the body. Only escaped strings and non-compact nested values allocate. No
//! map is built per line.
//!
//! A `Bytes` slice of the body per value would cost an atomic increment of the read
//! chunk's reference count here and a decrement where the package is dropped (on the
//! sink's thread: the count's cache line moves between cores). Values are therefore
//! spans of the chunk (a [`Body::Span`], see [`Text`]) when the body is one, and keys,
//! which repeat from line to line, are interned as static slices ([`intern`]): making,
//! cloning and dropping either touches no count. Before the
//! first changes, serde_json and the reference counts took about 40% and 33% of the
//! JSON → null scenario's CPU (`docs/benchmarks.md`, "JSON parsing", and "JSON field
//! values as spans").

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::Deserializer as _;
use serde::de::{DeserializeSeed, Error as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{Text, bytes_of, intern, span_of};
use crate::batch::Field;
use crate::frame::Body;

/// Parses `body` (already known to be valid UTF-8) into fields of line `index`.
/// Returns `false` if it is not exactly one JSON object; fields pushed before the
/// failure are left for the caller to truncate.
pub(super) fn parse(body: &Text, index: u32, fields: &mut Vec<Field>) -> bool {
    let start = fields.len();
    let flat = scan_flat(body, |key, value| {
        fields.push(Field {
            line: index,
            key: key_bytes(body, &body[key]),
            value: body.slice(value),
        });
    });
    if flat.is_some() {
        return true;
    }
    fields.truncate(start);
    std::str::from_utf8(body).is_ok_and(|text| parse_serde(body, text, index, fields))
}

/// The fields of `body` by the fast path (`None` where it gives up) and by serde_json
/// alone (`None` where the body is not one object), for tests and the fuzz target
/// that check the two agree. Both `None` when `body` is not UTF-8.
#[doc(hidden)]
pub fn both_paths(body: &Bytes) -> (Option<Vec<Field>>, Option<Vec<Field>>) {
    let Ok(text) = std::str::from_utf8(body) else {
        return (None, None);
    };
    let body = &Text::owned(body);
    let mut flat = Vec::new();
    let flat = scan_flat(body, |key, value| {
        flat.push(Field {
            line: 0,
            key: body.slice_bytes(key),
            value: body.slice(value),
        });
    })
    .map(|()| flat);
    let mut serde = Vec::new();
    let serde = parse_serde(body, text, 0, &mut serde).then_some(serde);
    (flat, serde)
}

/// A key as a static interned slice when it can be (no reference count to touch),
/// else as a slice of the body's chunk (one count; a copy, for a key that is not a
/// view of the body).
fn key_bytes(body: &Text, key: &[u8]) -> Bytes {
    match intern::key(key) {
        Some(key) => Bytes::from_static(key),
        None => bytes_of(body, key),
    }
}

/// Reads `text` as one flat JSON object whose keys and string values have no escapes,
/// calling `member(key, value)` with the ranges of each member's key (between the
/// quotes) and value (a string's content between the quotes; a number's or literal's
/// text), in order. `None` as soon as the text is anything else, valid JSON or not —
/// with members already reported, which the caller discards.
///
/// `text` must be valid UTF-8 (only ASCII bytes are looked at).
fn scan_flat(text: &[u8], mut member: impl FnMut(Range<usize>, Range<usize>)) -> Option<()> {
    // JSON allows control characters only between tokens (tab, line feed, carriage
    // return), never in strings. A line with none at all (almost every log line) needs
    // no check per string: one pass over the line, without early exit, so it compiles
    // to vector compares.
    let controls = text.iter().fold(false, |found, &b| found | (b < 0x20));
    let mut s = Scanner {
        text,
        pos: 0,
        controls,
    };
    s.whitespace();
    s.expect(b'{')?;
    s.whitespace();
    if !s.eat(b'}') {
        loop {
            let key = s.string()?;
            s.whitespace();
            s.expect(b':')?;
            s.whitespace();
            let value = match s.peek()? {
                b'"' => s.string()?,
                b'-' | b'0'..=b'9' => s.number()?,
                b't' => s.literal(b"true")?,
                b'f' => s.literal(b"false")?,
                b'n' => s.literal(b"null")?,
                _ => return None,
            };
            member(key, value);
            s.whitespace();
            if s.eat(b'}') {
                break;
            }
            s.expect(b',')?;
            s.whitespace();
        }
    }
    s.whitespace();
    (s.pos == text.len()).then_some(())
}

struct Scanner<'a> {
    text: &'a [u8],
    pos: usize,
    /// The text has bytes below 0x20 somewhere: strings must be checked for them.
    controls: bool,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let found = self.peek() == Some(b);
        self.pos += usize::from(found);
        found
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// A string with neither escapes nor control characters (serde_json rejects the
    /// latter): the range of its content.
    fn string(&mut self) -> Option<Range<usize>> {
        self.expect(b'"')?;
        let start = self.pos;
        let len = memchr::memchr2(b'"', b'\\', &self.text[start..])?;
        let content = start..start + len;
        let control = self.controls && self.text[content.clone()].iter().any(|&b| b < 0x20);
        self.pos = content.end;
        (!control && self.eat(b'"')).then_some(content)
    }

    /// A number as RFC 8259 writes it: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<Range<usize>> {
        let start = self.pos;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.') {
            self.digits1()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            let _ = self.eat(b'+') || self.eat(b'-');
            self.digits1()?;
        }
        Some(start..self.pos)
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn digits1(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<Range<usize>> {
        let start = self.pos;
        self.text[start..].starts_with(word).then(|| {
            self.pos += word.len();
            start..self.pos
        })
    }
}

/// The general path: serde_json reads `text` (the body as `&str`).
fn parse_serde(body: &Text, text: &str, index: u32, fields: &mut Vec<Field>) -> bool {
    let mut de = serde_json::Deserializer::from_str(text);
    let visitor = ObjectVisitor {
        body,
        index,
        fields,
    };
    de.deserialize_map(visitor).is_ok() && de.end().is_ok()
}

struct ObjectVisitor<'a> {
    body: &'a Text<'a>,
    index: u32,
    fields: &'a mut Vec<Field>,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed { body: self.body })? {
            let raw: &'de RawValue = map.next_value()?;
            let value = value_bytes(self.body, raw.get())
                .ok_or_else(|| A::Error::custom("undecodable string"))?;
            self.fields.push(Field {
                line: self.index,
                key,
                value,
            });
        }
        Ok(())
    }
}

/// Reads a key as a span of the body when it has no escapes (serde_json then hands out
/// a borrowed `&str`), else as an unescaped copy.
struct KeySeed<'a> {
    body: &'a Text<'a>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Bytes;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Bytes, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Bytes, E> {
        Ok(key_bytes(self.body, v.as_bytes()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v.as_bytes()))
    }
}

/// The field value for one member's raw JSON text (already validated by serde_json,
/// without surrounding whitespace). `None` only for a string whose escapes do not
/// decode to Unicode (a lone surrogate such as `"\ud800"`).
fn value_bytes(body: &Text, raw: &str) -> Option<Body> {
    let bytes = raw.as_bytes();
    match bytes.first() {
        Some(b'"') => {
            if memchr::memchr(b'\\', bytes).is_none() {
                // No escapes: the string's content is the text between the quotes.
                Some(span_of(body, &bytes[1..bytes.len() - 1]))
            } else {
                serde_json::from_str::<String>(raw)
                    .ok()
                    .map(|s| Body::Owned(Bytes::from(s)))
            }
        }
        Some(b'{' | b'[') => {
            if is_compact(bytes) {
                Some(span_of(body, bytes))
            } else {
                Some(Body::Owned(Bytes::from(compact(bytes))))
            }
        }
        _ => Some(span_of(body, bytes)),
    }
}

/// Tracks whether a byte of valid JSON text is inside a string, to tell the whitespace
/// that separates tokens (insignificant) from whitespace that is part of a string.
#[derive(Default)]
struct Significance {
    in_string: bool,
    escaped: bool,
}

impl Significance {
    fn is_significant(&mut self, b: u8) -> bool {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            true
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            false
        } else {
            self.in_string = b == b'"';
            true
        }
    }
}

fn is_compact(json: &[u8]) -> bool {
    let mut state = Significance::default();
    json.iter().all(|&b| state.is_significant(b))
}

fn compact(json: &[u8]) -> Vec<u8> {
    let mut state = Significance::default();
    let mut out = Vec::with_capacity(json.len());
    out.extend(json.iter().copied().filter(|&b| state.is_significant(b)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::NO_CHUNKS;

    fn fields_of(body: &'static str) -> Option<Vec<(String, String)>> {
        let body = Bytes::from_static(body.as_bytes());
        let mut fields = Vec::new();
        if !parse(&Text::owned(&body), 7, &mut fields) {
            return None;
        }
        assert!(fields.iter().all(|f| f.line == 7));
        Some(
            fields
                .into_iter()
                .map(|f| {
                    (
                        String::from_utf8(f.key.to_vec()).unwrap(),
                        String::from_utf8(f.value.get(NO_CHUNKS).to_vec()).unwrap(),
                    )
                })
                .collect(),
        )
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn scalar_members_keep_their_text() {
        let got = fields_of(
            r#" {"msg":"hello world","n":1.50,"neg":-3e2,"ok":true,"no":false,"nil":null} "#,
        );
        assert_eq!(
            got.unwrap(),
            pairs(&[
                ("msg", "hello world"),
                ("n", "1.50"),
                ("neg", "-3e2"),
                ("ok", "true"),
                ("no", "false"),
                ("nil", "null"),
            ])
        );
    }

    #[test]
    fn escapes_in_keys_and_values_are_decoded() {
        let got = fields_of(r#"{"a\"b":"line\nnext \u00e9 \ud83d\ude00","tab\tkey":"x\\y"}"#);
        assert_eq!(
            got.unwrap(),
            pairs(&[("a\"b", "line\nnext é 😀"), ("tab\tkey", "x\\y")])
        );
    }

    #[test]
    fn nested_values_become_compact_json() {
        let got =
            fields_of(r#"{"obj": { "k" : [1, 2, {"s": "a b\" c"}] }, "arr":[ ], "c":{"x":1}}"#);
        assert_eq!(
            got.unwrap(),
            pairs(&[
                ("obj", r#"{"k":[1,2,{"s":"a b\" c"}]}"#),
                ("arr", "[]"),
                ("c", r#"{"x":1}"#),
            ])
        );
    }

    #[test]
    fn unescaped_values_are_spans_of_the_body_and_keys_are_interned() {
        // The flat fast path, and serde_json's (a nested value).
        for text in [
            r#"{"key":"value","n":12,"t":true}"#,
            r#"{"key":"value","n":12,"o":{"a":1}}"#,
        ] {
            let body = Bytes::from(text.as_bytes().to_vec());
            let mut fields = Vec::new();
            assert!(parse(&Text::owned(&body), 0, &mut fields));
            let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
            for f in &fields {
                assert!(
                    range.contains(&(f.value.get(NO_CHUNKS).as_ptr() as usize)),
                    "{f:?}"
                );
                let interned = intern::key(&f.key).expect("a short key is interned");
                assert_eq!(f.key.as_ptr(), interned.as_ptr(), "{f:?}");
            }
        }
    }

    /// Lines the flat fast path must read, and lines it must leave to serde_json.
    const FLAT: &[&str] = &[
        "{}",
        " { } ",
        r#"{"ts":"2026-11-21T10:00:01.000000001Z","level":"info","seq":1,"latency_ms":33,"msg":"a b c"}"#,
        "{\"a\" :\t\"x\" ,\r\n\"b\": -0.5e+10 , \"c\":0,\"d\":false,\"e\":null,\"f\":1E3}",
        r#"{"a":"1","a":"2"}"#,
        r#"{"":""}"#,
        "{\"é€😀\":\"\u{7f}ü\"}",
        r#"{"n":123456789012345678901234567890.5e-999}"#,
    ];
    const NOT_FLAT: &[&str] = &[
        r#"{"a":"x\"y"}"#,
        r#"{"a\u0041":1}"#,
        r#"{"o":{}}"#,
        r#"{"a":[1]}"#,
        "{\"a\":\"tab\there\"}",
        r#"{"n":01}"#,
        r#"{"n":1.}"#,
        r#"{"n":.5}"#,
        r#"{"n":-}"#,
        r#"{"n":1e}"#,
        r#"{"n":+1}"#,
        r#"{"t":tru}"#,
        r#"{"t":truex}"#,
        r#"{"a":1,}"#,
        r#"{"a":1"b":2}"#,
        r#"{"a":1} x"#,
        r#"{"a":1}{}"#,
        r#"{a:1}"#,
        r#"["a"]"#,
        r#"{"a":1"#,
        r#"{"a""#,
        "",
        "{\"a\":1}\u{c}",
    ];

    #[test]
    fn scan_flat_agrees_with_serde() {
        for &text in FLAT.iter().chain(NOT_FLAT) {
            let body = Bytes::from_static(text.as_bytes());
            let (flat, serde) = both_paths(&body);
            assert_eq!(flat.is_some(), FLAT.contains(&text), "{text:?}");
            if let Some(flat) = flat {
                assert_eq!(Some(flat), serde, "{text:?}");
            }
        }
    }

    /// Text made of JSON's pieces, most of it near-misses of a flat object.
    fn json_ish() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let pieces = prop::sample::select(vec![
            &b"{"[..],
            b"}",
            b"[",
            b"]",
            b"\"",
            b"\"k\"",
            b"\"k\":",
            b":",
            b",",
            b" ",
            b"\t",
            b"\n",
            b"\x0c",
            b"\\",
            b"\\n",
            b"\\u00e9",
            b"\\ud800",
            b"-",
            b"0",
            b"12",
            b".",
            b"5",
            b"e",
            b"E+",
            b"-3",
            b"true",
            b"fals",
            b"null",
            b"\x01",
            b"\x7f",
            "é".as_bytes(),
            b"x",
        ]);
        prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
    }

    proptest::proptest! {
        #[test]
        fn scan_flat_agrees_with_serde_on_near_misses(text in json_ish()) {
            let body = Bytes::from(text);
            if let (Some(flat), serde) = both_paths(&body) {
                proptest::prop_assert_eq!(Some(flat), serde);
            }
        }

        #[test]
        fn scan_flat_reads_flat_objects(
            members in proptest::collection::vec(("[a-z_é]{0,6}", "[ -!#-\\[\\]-~é]{0,12}", 0..3u8), 0..6)
        ) {
            let mut text = String::from("{");
            for (i, (k, v, kind)) in members.iter().enumerate() {
                if i > 0 {
                    text.push_str(", ");
                }
                let value = match kind {
                    0 => format!("\"{v}\""),
                    1 => format!("{}", v.len() as f64 * -1.5),
                    _ => "null".to_owned(),
                };
                text.push_str(&format!("\"{k}\" : {value}"));
            }
            text.push('}');
            let body = Bytes::from(text);
            let (flat, serde) = both_paths(&body);
            proptest::prop_assert!(flat.is_some(), "{:?}", body);
            proptest::prop_assert_eq!(flat, serde);
        }
    }

    #[test]
    fn duplicate_keys_are_all_kept() {
        let got = fields_of(r#"{"a":"1","a":"2"}"#);
        assert_eq!(got.unwrap(), pairs(&[("a", "1"), ("a", "2")]));
    }

    #[test]
    fn empty_object_parses_to_no_fields() {
        assert_eq!(fields_of("{}").unwrap(), Vec::new());
    }

    #[test]
    fn non_objects_and_malformed_text_fail() {
        for body in [
            "",
            "   ",
            "[1,2]",
            "\"str\"",
            "42",
            "null",
            "{",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":1} x",
            "{\"a\":1}{\"b\":2}",
            "{'a':1}",
            "{\"a\":\"\\ud800\"}",
            "plain text log line",
        ] {
            assert_eq!(fields_of(body), None, "{body:?}");
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        // serde_json skips a member value without recursing, so depth is not limited.
        let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep: &'static str = Box::leak(format!("{{\"a\":{nested}}}").into_boxed_str());
        let got = fields_of(deep).expect("deeply nested member parses");
        assert!(got.len() == 1 && got[0].1 == nested);
        // An unbalanced one is still malformed.
        let broken: &'static str =
            Box::leak(format!("{{\"a\":{}}}", "[".repeat(100_000)).into_boxed_str());
        assert!(fields_of(broken).is_none());
    }

    #[test]
    fn compaction_keeps_whitespace_inside_strings() {
        assert_eq!(compact(br#"[ "a b" , "c\" d" ]"#), br#"["a b","c\" d"]"#);
        assert!(is_compact(br#"["a b"]"#));
        assert!(!is_compact(br#"[1, 2]"#));
    }
}

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
//! serde_json reads the object with a visitor that borrows from the body: a key or
//! string value without escapes, a number, or an already compact nested value is a
//! slice of the body. Only escaped strings and non-compact nested values allocate. No
//! map is built per line.

use std::fmt;

use bytes::Bytes;
use serde::Deserializer as _;
use serde::de::{DeserializeSeed, Error as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::span_of;
use crate::batch::Field;

/// Parses `text` (the body, already validated as UTF-8) into fields of line `index`.
/// Returns `false` if it is not exactly one JSON object; fields pushed before the
/// failure are left for the caller to truncate.
pub(super) fn parse(body: &Bytes, text: &str, index: u32, fields: &mut Vec<Field>) -> bool {
    let mut de = serde_json::Deserializer::from_str(text);
    let visitor = ObjectVisitor {
        body,
        index,
        fields,
    };
    de.deserialize_map(visitor).is_ok() && de.end().is_ok()
}

struct ObjectVisitor<'a> {
    body: &'a Bytes,
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
    body: &'a Bytes,
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
        Ok(span_of(self.body, v.as_bytes()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v.as_bytes()))
    }
}

/// The field value for one member's raw JSON text (already validated by serde_json,
/// without surrounding whitespace). `None` only for a string whose escapes do not
/// decode to Unicode (a lone surrogate such as `"\ud800"`).
fn value_bytes(body: &Bytes, raw: &str) -> Option<Bytes> {
    let bytes = raw.as_bytes();
    match bytes.first() {
        Some(b'"') => {
            if memchr::memchr(b'\\', bytes).is_none() {
                // No escapes: the string's content is the text between the quotes.
                Some(span_of(body, &bytes[1..bytes.len() - 1]))
            } else {
                serde_json::from_str::<String>(raw).ok().map(Bytes::from)
            }
        }
        Some(b'{' | b'[') => {
            if is_compact(bytes) {
                Some(span_of(body, bytes))
            } else {
                Some(Bytes::from(compact(bytes)))
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

    fn fields_of(body: &'static str) -> Option<Vec<(String, String)>> {
        let body = Bytes::from_static(body.as_bytes());
        let text = std::str::from_utf8(&body).unwrap();
        let mut fields = Vec::new();
        if !parse(&body, text, 7, &mut fields) {
            return None;
        }
        assert!(fields.iter().all(|f| f.line == 7));
        Some(
            fields
                .into_iter()
                .map(|f| {
                    (
                        String::from_utf8(f.key.to_vec()).unwrap(),
                        String::from_utf8(f.value.to_vec()).unwrap(),
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
    fn unescaped_values_are_spans_of_the_body() {
        let body = Bytes::from_static(br#"{"key":"value","n":12,"o":{"a":1}}"#);
        let text = std::str::from_utf8(&body).unwrap();
        let mut fields = Vec::new();
        assert!(parse(&body, text, 0, &mut fields));
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        for f in &fields {
            assert!(range.contains(&(f.key.as_ptr() as usize)), "{f:?}");
            assert!(range.contains(&(f.value.as_ptr() as usize)), "{f:?}");
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

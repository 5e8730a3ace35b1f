//! Delimiter parser: splits the body on one delimiter byte into named columns.
//!
//! # Column count mismatch
//!
//! - Fewer values than columns: the trailing columns are absent (no field).
//! - More values than columns: the last column takes the whole rest of the line,
//!   verbatim (delimiters and quotes included), so no text is lost.
//! - An empty value (`a,,c`) is a field with an empty value.
//!
//! Neither is a failure; only an empty body is (and, with quoting, malformed quotes).
//!
//! # Quoting
//!
//! With `quote` set, CSV rules (RFC 4180) apply: a value that *starts* with the quote
//! byte runs to the matching closing quote, may contain the delimiter, and `""` inside
//! it stands for one quote. A quote byte elsewhere in an unquoted value is an ordinary
//! byte. An unterminated quoted value, or text between a closing quote and the next
//! delimiter, is a failure: guessing would silently shift values between columns.
//!
//! # Performance
//!
//! Splitting uses `memchr`; values are slices of the body, except a quoted value with
//! doubled quotes, which is decoded into a copy.

use std::sync::Arc;

use bytes::Bytes;
use memchr::memchr;

use super::Text;
use crate::batch::Field;
use crate::frame::Body;

#[derive(Debug)]
pub struct DelimiterParser {
    delimiter: u8,
    quote: Option<u8>,
    /// Column names; config validation guarantees at least one.
    columns: Vec<Bytes>,
}

/// One value of the line.
enum Value {
    /// `body[start..end]` is the value.
    Span(usize, usize),
    /// A quoted value with doubled quotes, decoded.
    Decoded(Vec<u8>),
}

impl DelimiterParser {
    pub fn new(delimiter: u8, quote: Option<u8>, columns: &[Arc<str>]) -> DelimiterParser {
        DelimiterParser {
            delimiter,
            quote,
            columns: columns
                .iter()
                .map(|c| Bytes::copy_from_slice(c.as_bytes()))
                .collect(),
        }
    }

    pub(super) fn parse(&self, body: &Text, index: u32, fields: &mut Vec<Field>) -> bool {
        if body.is_empty() || self.columns.is_empty() {
            return false;
        }
        let last = self.columns.len() - 1;
        // Start of the next value; `None` once the line is exhausted.
        let mut pos = Some(0usize);
        for (column, key) in self.columns.iter().enumerate() {
            let Some(start) = pos else { break };
            let Some((value, next)) = self.next_value(body, start) else {
                return false;
            };
            let value = match (column == last, next) {
                // More values than columns: keep the rest of the line in the last one.
                (true, Some(_)) => Value::Span(start, body.len()),
                _ => value,
            };
            fields.push(Field {
                line: index,
                key: key.clone(),
                value: match value {
                    Value::Span(s, e) => body.slice(s..e),
                    Value::Decoded(v) => Body::Owned(Bytes::from(v)),
                },
            });
            pos = next;
        }
        true
    }

    /// Reads the value starting at `start`; returns it and where the next value starts
    /// (`None` if this was the last one). `None` on malformed quoting.
    fn next_value(&self, body: &[u8], start: usize) -> Option<(Value, Option<usize>)> {
        let after = |end: usize| -> Option<usize> {
            // `end` is at the delimiter (or at the end of the line).
            (end < body.len()).then_some(end + 1)
        };
        match self.quote {
            Some(q) if body.get(start) == Some(&q) => {
                let (value, end) = quoted(body, start + 1, q)?;
                match body.get(end) {
                    None => Some((value, None)),
                    Some(&b) if b == self.delimiter => Some((value, after(end))),
                    Some(_) => None,
                }
            }
            _ => {
                let end = memchr(self.delimiter, &body[start..]).map_or(body.len(), |i| start + i);
                Some((Value::Span(start, end), after(end)))
            }
        }
    }
}

/// Reads a quoted value whose content starts at `start` (just past the opening quote).
/// Returns the value and the position just past the closing quote; `None` if the quote
/// is never closed.
fn quoted(body: &[u8], start: usize, quote: u8) -> Option<(Value, usize)> {
    let mut decoded: Option<Vec<u8>> = None;
    let mut chunk_start = start;
    loop {
        let at = chunk_start + memchr(quote, &body[chunk_start..])?;
        if body.get(at + 1) == Some(&quote) {
            // A doubled quote: one literal quote, keep scanning.
            decoded
                .get_or_insert_with(|| Vec::with_capacity(body.len() - start))
                .extend_from_slice(&body[chunk_start..=at]);
            chunk_start = at + 2;
            continue;
        }
        let value = match decoded {
            None => Value::Span(start, at),
            Some(mut v) => {
                v.extend_from_slice(&body[chunk_start..at]);
                Value::Decoded(v)
            }
        };
        return Some((value, at + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::NO_CHUNKS;
    use proptest::prelude::*;

    fn parser(delimiter: u8, quote: Option<u8>, columns: &[&str]) -> DelimiterParser {
        let columns: Vec<Arc<str>> = columns.iter().map(|c| Arc::from(*c)).collect();
        DelimiterParser::new(delimiter, quote, &columns)
    }

    fn run(p: &DelimiterParser, body: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
        let body = Bytes::copy_from_slice(body);
        let mut fields = Vec::new();
        if !p.parse(&Text::owned(&body), 1, &mut fields) {
            return None;
        }
        Some(
            fields
                .into_iter()
                .map(|f| {
                    (
                        String::from_utf8(f.key.to_vec()).unwrap(),
                        f.value.get(NO_CHUNKS).to_vec(),
                    )
                })
                .collect(),
        )
    }

    fn expect(p: &[(&str, &str)]) -> Option<Vec<(String, Vec<u8>)>> {
        Some(
            p.iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn splits_into_columns() {
        let p = parser(b'|', None, &["a", "b", "c"]);
        assert_eq!(
            run(&p, b"1|two|3"),
            expect(&[("a", "1"), ("b", "two"), ("c", "3")])
        );
        assert_eq!(run(&p, b"|x|"), expect(&[("a", ""), ("b", "x"), ("c", "")]));
    }

    #[test]
    fn fewer_values_leave_columns_absent() {
        let p = parser(b',', Some(b'"'), &["a", "b", "c"]);
        assert_eq!(run(&p, b"1"), expect(&[("a", "1")]));
        assert_eq!(run(&p, b"1,2"), expect(&[("a", "1"), ("b", "2")]));
    }

    #[test]
    fn extra_values_go_verbatim_to_the_last_column() {
        let p = parser(b',', Some(b'"'), &["a", "b"]);
        assert_eq!(
            run(&p, b"1,2,3,\"4,5\""),
            expect(&[("a", "1"), ("b", "2,3,\"4,5\"")])
        );
        assert_eq!(
            run(&p, b"1,\"x,y\",z"),
            expect(&[("a", "1"), ("b", "\"x,y\",z")])
        );
        let p = parser(b' ', None, &["only"]);
        assert_eq!(run(&p, b"a b c"), expect(&[("only", "a b c")]));
    }

    #[test]
    fn csv_quoting() {
        let p = parser(b',', Some(b'"'), &["a", "b", "c"]);
        assert_eq!(
            run(&p, br#""x,y","say ""hi""","""""#),
            expect(&[("a", "x,y"), ("b", "say \"hi\""), ("c", "\"")])
        );
        // A quote inside an unquoted value is an ordinary byte.
        assert_eq!(
            run(&p, br#"a"b,c,d"#),
            expect(&[("a", "a\"b"), ("b", "c"), ("c", "d")])
        );
        assert_eq!(run(&p, br#""""#), expect(&[("a", "")]));
    }

    #[test]
    fn malformed_quoting_fails() {
        let p = parser(b',', Some(b'"'), &["a", "b"]);
        assert_eq!(run(&p, br#""open"#), None);
        assert_eq!(run(&p, br#"x,"open"#), None);
        assert_eq!(run(&p, br#""a"junk,b"#), None);
        // Without quoting configured the same bytes are plain values.
        let p = parser(b',', None, &["a", "b"]);
        assert_eq!(run(&p, br#""open"#), expect(&[("a", "\"open")]));
    }

    #[test]
    fn empty_line_fails() {
        assert_eq!(run(&parser(b',', None, &["a"]), b""), None);
        assert_eq!(run(&parser(b',', Some(b'"'), &["a"]), b""), None);
    }

    #[test]
    fn unquoted_values_are_spans_of_the_body() {
        let p = parser(b',', Some(b'"'), &["a", "b"]);
        let body = Bytes::from_static(b"plain,\"quoted\"");
        let mut fields = Vec::new();
        assert!(p.parse(&Text::owned(&body), 0, &mut fields));
        let base = body.as_ptr() as usize;
        assert_eq!(fields[0].value.get(NO_CHUNKS).as_ptr() as usize, base);
        assert_eq!(fields[1].value.get(NO_CHUNKS).as_ptr() as usize, base + 7);
    }

    fn csv_encode(values: &[Vec<u8>]) -> Vec<u8> {
        let mut line = Vec::new();
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            line.push(b'"');
            for &b in v {
                if b == b'"' {
                    line.push(b'"');
                }
                line.push(b);
            }
            line.push(b'"');
        }
        line
    }

    proptest! {
        #[test]
        fn quoted_values_round_trip(
            values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 1..6)
        ) {
            let names = ["c0", "c1", "c2", "c3", "c4", "c5"];
            let p = parser(b',', Some(b'"'), &names[..values.len()]);
            let got = run(&p, &csv_encode(&values)).unwrap();
            let want: Vec<_> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (names[i].to_string(), v.clone()))
                .collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn unquoted_values_round_trip(
            values in prop::collection::vec("[a-z \"]{0,8}", 1..6),
            columns in 1usize..8,
        ) {
            let names = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"];
            let p = parser(b',', None, &names[..columns]);
            let line = values.join(",");
            prop_assume!(!line.is_empty());
            let got = run(&p, line.as_bytes()).unwrap();
            // Joined back with the delimiter, the values are the line again.
            let rejoined: Vec<u8> = got
                .iter()
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
                .join(&b","[..]);
            prop_assert_eq!(rejoined, line.as_bytes());
            prop_assert_eq!(got.len(), values.len().min(columns));
        }
    }
}

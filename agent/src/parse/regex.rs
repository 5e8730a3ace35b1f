//! Regex parser: each named capture group that participated in the match becomes a
//! field named after the group. Groups that did not participate (an optional group, the
//! other side of an alternation) produce no field; unnamed groups are ignored. A body
//! the regex does not match is a failure. The regex is `regex::bytes::Regex`, so it also
//! runs on bodies that are not valid UTF-8.
//!
//! # Performance
//!
//! The capture slots are kept in the parser and reused, so a match does not allocate;
//! only when two threads apply the same parser at once does the second one get fresh
//! slots for that call. Field names are built once; values are slices of the body.

use std::sync::Mutex;

use ::regex::bytes::{CaptureLocations, Regex};
use bytes::Bytes;

use super::Text;
use crate::batch::Field;

#[derive(Debug)]
pub struct RegexParser {
    regex: Regex,
    /// `(group index, group name)` of every named group.
    names: Vec<(usize, Bytes)>,
    /// Reused capture slots; see the module's `# Performance`.
    slots: Mutex<CaptureLocations>,
}

impl RegexParser {
    pub fn new(regex: Regex) -> RegexParser {
        let names = regex
            .capture_names()
            .enumerate()
            .filter_map(|(i, name)| Some((i, Bytes::copy_from_slice(name?.as_bytes()))))
            .collect();
        let slots = Mutex::new(regex.capture_locations());
        RegexParser {
            regex,
            names,
            slots,
        }
    }

    pub(super) fn parse(&self, body: &Text, index: u32, fields: &mut Vec<Field>) -> bool {
        let mut fresh;
        let mut guard = self.slots.try_lock().ok();
        let slots = match guard.as_deref_mut() {
            Some(slots) => slots,
            None => {
                fresh = self.regex.capture_locations();
                &mut fresh
            }
        };
        if self.regex.captures_read(slots, body).is_none() {
            return false;
        }
        for (group, name) in &self.names {
            if let Some((start, end)) = slots.get(*group) {
                fields.push(Field {
                    line: index,
                    key: name.clone(),
                    value: body.slice(start..end),
                });
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::NO_CHUNKS;

    fn run(pattern: &str, body: &'static [u8]) -> Option<Vec<(&'static str, Vec<u8>)>> {
        let parser = RegexParser::new(Regex::new(pattern).unwrap());
        let body = Bytes::from_static(body);
        let mut fields = Vec::new();
        if !parser.parse(&Text::owned(&body), 3, &mut fields) {
            return None;
        }
        Some(
            fields
                .into_iter()
                .map(|f| {
                    assert_eq!(f.line, 3);
                    let key: &'static str = match &f.key[..] {
                        b"level" => "level",
                        b"msg" => "msg",
                        b"code" => "code",
                        other => panic!("unexpected key {other:?}"),
                    };
                    (key, f.value.get(NO_CHUNKS).to_vec())
                })
                .collect(),
        )
    }

    #[test]
    fn named_captures_become_fields() {
        let got = run(
            r"^(?P<level>[A-Z]+) (\d+) (?P<msg>.*)$",
            b"WARN 12 disk almost full",
        );
        assert_eq!(
            got.unwrap(),
            vec![
                ("level", b"WARN".to_vec()),
                ("msg", b"disk almost full".to_vec())
            ]
        );
    }

    #[test]
    fn groups_that_did_not_participate_are_absent() {
        let pattern = r"^(?P<level>[A-Z]+)(?: code=(?P<code>\d+))? (?P<msg>.*)$";
        let got = run(pattern, b"INFO started").unwrap();
        assert_eq!(
            got,
            vec![("level", b"INFO".to_vec()), ("msg", b"started".to_vec())]
        );
        let got = run(pattern, b"ERROR code=500 boom").unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1], ("code", b"500".to_vec()));
    }

    #[test]
    fn no_match_fails() {
        assert_eq!(run(r"^(?P<level>[A-Z]+) ", b"lowercase line"), None);
        assert_eq!(run(r"^(?P<level>[A-Z]+) ", b""), None);
    }

    #[test]
    fn matches_bytes_that_are_not_utf8() {
        let got = run(r"(?-u)^(?P<msg>.+)$", b"\xff\xfe raw").unwrap();
        assert_eq!(got, vec![("msg", b"\xff\xfe raw".to_vec())]);
    }

    #[test]
    fn concurrent_use_falls_back_to_fresh_slots() {
        let parser = RegexParser::new(Regex::new(r"(?P<msg>\w+)").unwrap());
        let held = parser.slots.lock().unwrap();
        let body = Bytes::from_static(b"hello");
        let mut fields = Vec::new();
        assert!(parser.parse(&Text::owned(&body), 0, &mut fields));
        assert_eq!(fields[0].value.get(NO_CHUNKS), b"hello");
        drop(held);
    }
}

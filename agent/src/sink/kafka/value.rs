//! The value of a `value: package` message: one JSON object per run of a package's
//! records, in which what the records share is written once.
//!
//! ```text
//! {"source_id":"<16 hex>","path":"…","package_id":7,"origin":"ebpf",
//!  "resource":{"k8s.pod":"web-1",…},"stream":"stdout",
//!  "records":[{"offset":0,"timestamp_ns":1714564800000000001,"body":"…"},
//!             {"offset":181,"timestamp_ns":…,"stream":"stderr","flags":["truncated"],
//!              "body_base64":"…","fields":{"level":"info"}}]}
//! ```
//!
//! Expanded, each element of `records` is exactly the `file` sink's object for that
//! record ([`crate::sink::store::render::write_json_record`]) less its `ts` (the same
//! instant as `timestamp_ns`): the message's members are the record's, a record's
//! `stream` overrides the message's (`null`: no stream), and an absent `flags` or
//! `fields` is empty. Bytes that are not UTF-8 go to `…_base64` members as in the file
//! sink. The test below checks that expansion against the file sink's renderer.
//!
//! # Performance
//!
//! The `file` sink's object for a container log line is about twice the line: the
//! source id, path, package id, resource and an RFC 3339 copy of the time repeat in
//! every record. Here a record costs its offset, time, body and what it has of its
//! own, so there is about half the JSON to render and for librdkafka to compress.

use crate::batch::codec::Record;
use crate::frame::Stream;
use crate::sink::destination::SpooledPackage;
use crate::sink::store::render;
use crate::source::SourceKind;

/// What closes a value.
pub(super) const END: &[u8] = b"]}";

/// Renders the values of one package's runs; [`PackageValue::reset`] for each package.
#[derive(Debug)]
pub(super) struct PackageValue {
    /// `{"source_id":…,"path":…,"package_id":…,` then `"origin":…,` and
    /// `"resource":{…},` when the package has them: the value up to its stream.
    head: Vec<u8>,
    /// The stream of the value being written: its first record's. Only records of
    /// another stream carry theirs.
    stream: Stream,
}

impl Default for PackageValue {
    fn default() -> PackageValue {
        PackageValue {
            head: Vec::new(),
            stream: Stream::None,
        }
    }
}

impl PackageValue {
    /// Renders what the records of `sp` share.
    pub(super) fn reset(&mut self, sp: &SpooledPackage) {
        let head = &mut self.head;
        head.clear();
        head.push(b'{');
        render::write_json_package(head, sp.source.id, Some(&sp.source.path), sp.package_id);
        if sp.source.kind == SourceKind::Capture {
            head.extend_from_slice(b"\"origin\":\"ebpf\",");
        }
        let resource = &sp.package.source_fields;
        if !resource.is_empty() {
            let pairs = resource.iter().map(|(k, v)| (&k[..], &v[..]));
            render::write_field_object(head, "resource", pairs);
            head.push(b',');
        }
    }

    /// Appends `rec` to the value in `out`; `first`: the value begins with it (`out`
    /// holds nothing of it yet). A value is complete once [`END`] is appended.
    pub(super) fn push(&mut self, out: &mut Vec<u8>, rec: &Record, first: bool) {
        if first {
            out.extend_from_slice(&self.head);
            self.stream = rec.stream;
            if rec.stream != Stream::None {
                render::write_stream_member(out, rec.stream);
            }
            out.extend_from_slice(b"\"records\":[");
        } else {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"offset\":");
        render::write_u64(out, rec.offset);
        out.extend_from_slice(b",\"timestamp_ns\":");
        render::write_i64(out, rec.timestamp_ns);
        out.push(b',');
        if rec.stream != self.stream {
            match rec.stream {
                Stream::None => out.extend_from_slice(b"\"stream\":null,"),
                stream => render::write_stream_member(out, stream),
            }
        }
        let mut flags = rec.flags.names().peekable();
        if flags.peek().is_some() {
            render::write_flags_member(out, flags);
        }
        render::write_bytes_member(out, "body", &rec.body);
        if !rec.fields.is_empty() {
            out.push(b',');
            let fields = rec.fields.iter().map(|(k, v)| (&k[..], &v[..]));
            render::write_field_object(out, "fields", fields);
        }
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::*;
    use crate::batch::codec::Package;
    use crate::frame::LineFlags;
    use crate::source::{SourceId, SourceInfo};

    /// A value expanded into the `file` sink's objects, one per record, less `ts`:
    /// what a consumer of `value: package` does (docs/configuration.md).
    fn expand(value: &[u8]) -> Vec<Value> {
        let Value::Object(mut message) = serde_json::from_slice(value).expect("JSON") else {
            panic!("not an object");
        };
        let Some(Value::Array(records)) = message.remove("records") else {
            panic!("no records");
        };
        let stream = message.remove("stream");
        records
            .into_iter()
            .map(|r| {
                let Value::Object(own) = r else {
                    panic!("a record is an object")
                };
                let mut full: Map<String, Value> = message.clone();
                full.insert("flags".into(), Value::Array(Vec::new()));
                full.insert("fields".into(), Value::Object(Map::new()));
                if let Some(s) = &stream {
                    full.insert("stream".into(), s.clone());
                }
                full.extend(own);
                if full.get("stream") == Some(&Value::Null) {
                    full.remove("stream");
                }
                Value::Object(full)
            })
            .collect()
    }

    fn package(
        kind: SourceKind,
        resource: Vec<(Bytes, Bytes)>,
        records: Vec<Record>,
    ) -> SpooledPackage {
        SpooledPackage {
            seq: 1,
            source: Arc::new(SourceInfo {
                id: SourceId(0xab),
                kind,
                path: "/var/log/pods/ns_pod_uid/app/0.log".into(),
                config_name: Arc::from("pods"),
            }),
            package_id: 7,
            package: Package {
                source_fields: resource,
                records,
            },
        }
    }

    /// Renders `sp`'s records as values of `per_value` records each.
    fn values(sp: &SpooledPackage, per_value: usize) -> Vec<Vec<u8>> {
        let mut pv = PackageValue::default();
        pv.reset(sp);
        sp.package
            .records
            .chunks(per_value.max(1))
            .map(|chunk| {
                let mut out = Vec::new();
                for (i, rec) in chunk.iter().enumerate() {
                    pv.push(&mut out, rec, i == 0);
                }
                out.extend_from_slice(END);
                out
            })
            .collect()
    }

    /// What the `file` sink writes for each record of `sp`, less `ts`.
    fn file_sink_objects(sp: &SpooledPackage) -> Vec<Value> {
        sp.package
            .records
            .iter()
            .map(|rec| {
                let mut line = Vec::new();
                sp.write_json(rec, &mut line);
                let mut v: Value = serde_json::from_slice(&line).unwrap();
                v.as_object_mut().unwrap().remove("ts");
                v
            })
            .collect()
    }

    fn bytes(b: &[u8]) -> Bytes {
        Bytes::copy_from_slice(b)
    }

    fn record(offset: u64, stream: Stream, flags: LineFlags, body: &[u8]) -> Record {
        Record {
            offset,
            timestamp_ns: 1_714_564_800_000_000_001 + offset as i64,
            stream,
            flags,
            body: bytes(body),
            fields: Vec::new(),
        }
    }

    #[test]
    fn a_value_holds_the_shared_members_once_and_each_record_s_own() {
        let resource = vec![(bytes(b"k8s.pod"), bytes(b"web-1"))];
        let mut with_fields = record(181, Stream::Stderr, LineFlags::TRUNCATED, b"b\"q");
        with_fields.fields = vec![(bytes(b"level"), bytes(b"info"))];
        let sp = package(
            SourceKind::CriFile,
            resource,
            vec![
                record(0, Stream::Stdout, LineFlags::empty(), b"a"),
                with_fields,
            ],
        );
        let v = values(&sp, 2).remove(0);
        assert_eq!(
            String::from_utf8(v).unwrap(),
            concat!(
                r#"{"source_id":"00000000000000ab","path":"/var/log/pods/ns_pod_uid/app/0.log","#,
                r#""package_id":7,"resource":{"k8s.pod":"web-1"},"stream":"stdout","records":["#,
                r#"{"offset":0,"timestamp_ns":1714564800000000001,"body":"a"},"#,
                r#"{"offset":181,"timestamp_ns":1714564800000000182,"stream":"stderr","#,
                r#""flags":["truncated"],"body":"b\"q","fields":{"level":"info"}}]}"#,
            )
        );
    }

    #[test]
    fn captured_and_plain_file_packages_expand_to_the_file_sink_s_objects() {
        // Captured: `origin` once; a plain file: no stream, then a record with one.
        for (kind, streams) in [
            (
                SourceKind::Capture,
                [Stream::Stdout, Stream::Stdout, Stream::Stderr],
            ),
            (
                SourceKind::File,
                [Stream::None, Stream::Stdout, Stream::None],
            ),
        ] {
            let records = streams
                .iter()
                .enumerate()
                .map(|(i, &s)| record(i as u64 * 10, s, LineFlags::empty(), b"x"))
                .collect();
            let sp = package(kind, Vec::new(), records);
            let v = values(&sp, 3).remove(0);
            assert_eq!(
                expand(&v),
                file_sink_objects(&sp),
                "{}",
                String::from_utf8_lossy(&v)
            );
        }
    }

    fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            "[a-z \"\\\\\\x00-\\x1féü😀]{0,40}".prop_map(String::into_bytes),
        ]
    }

    fn any_record() -> impl Strategy<Value = Record> {
        (
            any::<u64>(),
            any::<i64>(),
            0u8..3,
            any::<u16>(),
            any_bytes(),
            proptest::collection::vec((any_bytes(), any_bytes()), 0..3),
        )
            .prop_map(
                |(offset, timestamp_ns, stream, flags, body, fields)| Record {
                    offset,
                    timestamp_ns,
                    stream: Stream::from_u8(stream),
                    flags: LineFlags(flags),
                    body: body.into(),
                    fields: fields
                        .into_iter()
                        .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
                        .collect(),
                },
            )
    }

    proptest! {
        /// Whatever the records (bytes that are not UTF-8 anywhere, any stream, flags
        /// and fields) and however they are cut into values, the values expanded are
        /// the `file` sink's objects of the same records.
        #[test]
        fn values_expand_to_the_file_sink_s_objects(
            records in proptest::collection::vec(any_record(), 1..8),
            resource in proptest::collection::vec((any_bytes(), any_bytes()), 0..3),
            path in any_bytes(),
            captured in any::<bool>(),
            per_value in 1usize..4,
        ) {
            use std::os::unix::ffi::OsStrExt;
            let kind = if captured { SourceKind::Capture } else { SourceKind::CriFile };
            let resource = resource.into_iter().map(|(k, v)| (Bytes::from(k), Bytes::from(v))).collect();
            let mut sp = package(kind, resource, records);
            let mut source = (*sp.source).clone();
            source.path = std::ffi::OsStr::from_bytes(&path).into();
            sp.source = Arc::new(source);
            let expanded: Vec<Value> = values(&sp, per_value).iter().flat_map(|v| expand(v)).collect();
            prop_assert_eq!(expanded, file_sink_objects(&sp));
        }
    }
}

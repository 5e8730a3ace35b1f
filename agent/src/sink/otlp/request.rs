//! Building the `ExportLogsServiceRequest` of a window: what each field of a logtap
//! record becomes in OTLP (the mapping is documented on the [parent module](super)).
//!
//! # Performance
//!
//! The prost types own their strings, so a record's body and attribute values are
//! copied once into them (there is no way around it with the official types). What is
//! avoided is a `LogRecord` per record: [`RequestBuilder`] fills one `LogRecord` in
//! place (`clear` + `push_str` keep a `String`'s capacity), encodes it at once into the
//! request's buffer, and goes on with the next record, so the record being encoded
//! stays in the cache and a request costs one buffer, not a second copy of the window
//! in prost's types. The reused record never keeps more than [`MAX_KEPT_CAPACITY`]
//! bytes of one value, so one huge line does not pin memory.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use crate::batch::codec::Record;
use crate::enrich;
use crate::frame::{LineFlags, Stream};
use crate::sink::destination::SpooledPackage;
use crate::source::{SourceInfo, SourceKind};

/// A string or byte buffer of the reused record bigger than this is dropped after a
/// request rather than kept.
pub(super) const MAX_KEPT_CAPACITY: usize = 4 * 1024;

/// Source fields whose OTel semantic-convention name differs from logtap's.
const RESOURCE_RENAMES: [(&str, &str); 5] = [
    (enrich::POD, "k8s.pod.name"),
    (enrich::NAMESPACE, "k8s.namespace.name"),
    (enrich::CONTAINER, "k8s.container.name"),
    (enrich::POD_UID, "k8s.pod.uid"),
    (enrich::NODE, "k8s.node.name"),
];

/// Parsed fields that give a record's severity, first match wins.
const LEVEL_FIELDS: [&[u8]; 7] = [
    b"level",
    b"severity",
    b"lvl",
    b"loglevel",
    b"log.level",
    b"log_level",
    b"levelname",
];

/// A run of records of one package of the window: what one request carries is a list
/// of these (the whole window, or a part of it after a `413`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Part {
    /// Index of the package in the window.
    pub package: usize,
    pub records: Range<usize>,
}

/// The parts of the whole window: one per package that has records.
pub(super) fn window_parts(window: &[SpooledPackage]) -> Vec<Part> {
    window
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.package.records.is_empty())
        .map(|(i, p)| Part {
            package: i,
            records: 0..p.package.records.len(),
        })
        .collect()
}

pub(super) fn record_count(parts: &[Part]) -> usize {
    parts.iter().map(|p| p.records.len()).sum()
}

/// Splits `parts` into two halves of (nearly) equal record counts. `parts` must hold
/// at least two records.
pub(super) fn split_parts(parts: &[Part]) -> (Vec<Part>, Vec<Part>) {
    let half = record_count(parts) / 2;
    debug_assert!(half > 0);
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut seen = 0;
    for part in parts {
        let len = part.records.len();
        if seen + len <= half {
            first.push(part.clone());
        } else if seen >= half {
            second.push(part.clone());
        } else {
            let cut = part.records.start + (half - seen);
            first.push(Part {
                package: part.package,
                records: part.records.start..cut,
            });
            second.push(Part {
                package: part.package,
                records: cut..part.records.end,
            });
        }
        seen += len;
    }
    (first, second)
}

/// Drops the first `n` records of `parts` (those already delivered).
pub(super) fn skip_records(parts: Vec<Part>, mut n: usize) -> Vec<Part> {
    let mut out = Vec::with_capacity(parts.len());
    for mut part in parts {
        let len = part.records.len();
        if n >= len {
            n -= len;
            continue;
        }
        part.records.start += n;
        n = 0;
        out.push(part);
    }
    out
}

/// Builds and encodes requests: one record at a time, through one reused `LogRecord`.
///
/// # Invariants
///
/// Between calls, `scratch` holds the last record of the last request (every field is
/// overwritten by [`fill_record`] before it is encoded again), and none of its buffers
/// is larger than [`MAX_KEPT_CAPACITY`]. `encoded[body_start..]` is the last request.
#[derive(Default)]
pub(super) struct RequestBuilder {
    /// The record being encoded (its strings and attribute list keep their capacity).
    scratch: LogRecord,
    /// Per part of the request: the index of its resource group.
    part_groups: Vec<usize>,
    /// Per resource group: the package that opened it.
    groups: Vec<usize>,
    /// The framing of one group (scratch of `encode`).
    header: Vec<u8>,
    encoded: Vec<u8>,
    body_start: usize,
}

/// Bytes of the two length varints of a group's framing at most (lengths below 2^35).
const MAX_LENGTH_VARINTS: usize = 2 * 5;

impl RequestBuilder {
    /// Builds the request carrying `parts` of `window` (observed at `observed_ns`) and
    /// encodes it; [`RequestBuilder::body`] is the result.
    ///
    /// The bytes are exactly what prost's derived `ExportLogsServiceRequest::encode`
    /// writes for the same messages (a test checks it). Every message is encoded by
    /// prost (resource, scope, each record); the three levels above the records
    /// (request → `resource_logs` → `scope_logs` → `log_records`) are framed here with
    /// prost's own encoding functions, so that
    /// - each record is filled, measured and encoded right away, in one `LogRecord`
    ///   that stays in the cache, instead of a `LogRecord` per record of the request
    ///   (~25,000 in a request of the bench's input: the window copied once more);
    /// - each record's length is computed once (prost's derived `encode` computes the
    ///   length of every nested message again at each level above it);
    /// - the first group is not copied after encoding: its records are written after a
    ///   gap as long as its framing can be, and the framing (whose two lengths are known
    ///   only then) is written at the end of the gap; the request starts there. A later
    ///   group (another source in the same window) is moved back over its gap's unused
    ///   bytes once, so the groups stay contiguous.
    pub fn encode(&mut self, window: &[SpooledPackage], parts: &[Part], observed_ns: u64) {
        use prost::encoding::{WireType, encode_key, encode_varint, key_len, message};
        self.group(window, parts);
        self.encoded.clear();
        self.body_start = 0;
        let scope = scope();
        for g in 0..self.groups.len() {
            let first = &window[self.groups[g]];
            let resource = Resource {
                attributes: resource_attributes(&first.source, &first.package.source_fields),
                ..Default::default()
            };
            // ResourceLogs { resource = 1, scope_logs = 2 } and
            // ScopeLogs { scope = 1, log_records = 2 }: one scope, no schema URLs.
            let fixed = key_len(1)
                + message::encoded_len(1, &resource)
                + key_len(2)
                + message::encoded_len(1, &scope);
            let gap_at = self.encoded.len();
            self.encoded.resize(gap_at + fixed + MAX_LENGTH_VARINTS, 0);
            let records_at = self.encoded.len();
            for (part, _) in parts
                .iter()
                .zip(&self.part_groups)
                .filter(|&(_, &pg)| pg == g)
            {
                let spooled = &window[part.package];
                for record in &spooled.package.records[part.records.clone()] {
                    fill_record(&mut self.scratch, record, spooled.package_id, observed_ns);
                    let len = self.scratch.encoded_len();
                    encode_key(2, WireType::LengthDelimited, &mut self.encoded);
                    encode_varint(len as u64, &mut self.encoded);
                    self.scratch.encode_raw(&mut self.encoded);
                }
            }
            let scope_len = message::encoded_len(1, &scope) + (self.encoded.len() - records_at);
            let resource_len = message::encoded_len(1, &resource)
                + key_len(2)
                + prost::encoding::encoded_len_varint(scope_len as u64)
                + scope_len;
            self.header.clear();
            // ExportLogsServiceRequest { resource_logs = 1 }
            encode_key(1, WireType::LengthDelimited, &mut self.header);
            encode_varint(resource_len as u64, &mut self.header);
            message::encode(1, &resource, &mut self.header);
            encode_key(2, WireType::LengthDelimited, &mut self.header);
            encode_varint(scope_len as u64, &mut self.header);
            message::encode(1, &scope, &mut self.header);
            // Lengths below 2^35 take at most 5 varint bytes, which the gap allows for;
            // a window too large for that (a `max_request_size` of tens of GiB) widens
            // the gap instead of writing over the previous group.
            let mut records_at = records_at;
            if let Some(extra) = self.header.len().checked_sub(records_at - gap_at) {
                self.encoded
                    .splice(gap_at..gap_at, std::iter::repeat_n(0, extra));
                records_at += extra;
            }
            let header_at = records_at - self.header.len();
            self.encoded[header_at..records_at].copy_from_slice(&self.header);
            if g == 0 {
                self.body_start = header_at;
            } else if header_at > gap_at {
                // Close the gap's unused start (a few bytes) behind the previous group.
                let end = self.encoded.len();
                self.encoded.copy_within(header_at..end, gap_at);
                self.encoded.truncate(end - (header_at - gap_at));
            }
        }
        trim_for_reuse(&mut self.scratch);
    }

    /// The encoded request of the last [`RequestBuilder::encode`].
    pub fn body(&self) -> &[u8] {
        &self.encoded[self.body_start..]
    }

    /// Groups the parts by resource: packages of one source with the same fields
    /// share a `ResourceLogs`, in the order the window first has them.
    fn group(&mut self, window: &[SpooledPackage], parts: &[Part]) {
        self.groups.clear();
        self.part_groups.clear();
        for part in parts {
            let spooled = &window[part.package];
            let group = self.groups.iter().position(|&first| {
                let other = &window[first];
                other.source.id == spooled.source.id
                    && other.package.source_fields == spooled.package.source_fields
            });
            let group = group.unwrap_or_else(|| {
                self.groups.push(part.package);
                self.groups.len() - 1
            });
            self.part_groups.push(group);
        }
    }
}

/// The request [`RequestBuilder::encode`] encodes, built as prost's messages: the
/// tests' reference.
#[cfg(test)]
pub(super) fn request_of(
    window: &[SpooledPackage],
    parts: &[Part],
    observed_ns: u64,
) -> opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    let mut builder = RequestBuilder::default();
    builder.group(window, parts);
    let mut request = ExportLogsServiceRequest::default();
    for g in 0..builder.groups.len() {
        let first = &window[builder.groups[g]];
        let mut log_records = Vec::new();
        for (part, _) in parts
            .iter()
            .zip(&builder.part_groups)
            .filter(|&(_, &pg)| pg == g)
        {
            let spooled = &window[part.package];
            for record in &spooled.package.records[part.records.clone()] {
                let mut out = LogRecord::default();
                fill_record(&mut out, record, spooled.package_id, observed_ns);
                log_records.push(out);
            }
        }
        request.resource_logs.push(ResourceLogs {
            resource: Some(Resource {
                attributes: resource_attributes(&first.source, &first.package.source_fields),
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records,
                ..Default::default()
            }],
            schema_url: String::new(),
        });
    }
    request
}

/// Drops buffers too large to keep for the next record.
fn trim_for_reuse(record: &mut LogRecord) {
    fn too_big(value: &Option<AnyValue>) -> bool {
        match value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s.capacity() > MAX_KEPT_CAPACITY,
            Some(Value::BytesValue(b)) => b.capacity() > MAX_KEPT_CAPACITY,
            _ => false,
        }
    }
    if too_big(&record.body) {
        record.body = None;
    }
    for attribute in &mut record.attributes {
        if too_big(&attribute.value) {
            attribute.value = None;
        }
        if attribute.key.capacity() > MAX_KEPT_CAPACITY {
            attribute.key = String::new();
        }
    }
    if record.severity_text.capacity() > MAX_KEPT_CAPACITY {
        record.severity_text = String::new();
    }
}

/// The one scope of every resource: `logtap` and the agent's version.
fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "logtap".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// The resource attributes of a source: its fields under their semantic-convention
/// names, then logtap's coordinates. See the parent module for the list.
pub(super) fn resource_attributes(source: &SourceInfo, fields: &[(Bytes, Bytes)]) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(fields.len() + 5);
    for (key, value) in fields {
        let key = String::from_utf8_lossy(key);
        if key == enrich::CONTAINER_IMAGE {
            image_attributes(value, &mut out);
            continue;
        }
        let name = RESOURCE_RENAMES
            .iter()
            .find(|(from, _)| *from == key)
            .map_or(key.clone(), |(_, to)| Cow::Borrowed(*to));
        out.push(KeyValue {
            key: name.into_owned(),
            value: Some(any_bytes(value)),
            ..Default::default()
        });
    }
    if matches!(source.kind, SourceKind::File | SourceKind::CriFile) {
        out.push(string_kv(
            "log.file.path",
            source.path.to_string_lossy().into_owned(),
        ));
    }
    out.push(string_kv("logtap.source_id", source.id.to_string()));
    out.push(string_kv("logtap.source.kind", source.kind.as_str().into()));
    out.push(string_kv(
        "logtap.source.config",
        source.config_name.to_string(),
    ));
    out
}

/// `container.image` (`registry/repo:tag` or `registry/repo@sha256:…`) as the semantic
/// conventions have it: `container.image.name` without tag or digest, the tag in
/// `container.image.tags`, a digest reference in `container.image.repo_digests`.
fn image_attributes(image: &[u8], out: &mut Vec<KeyValue>) {
    let Ok(image) = std::str::from_utf8(image) else {
        out.push(KeyValue {
            key: "container.image.name".into(),
            value: Some(any_bytes(image)),
            ..Default::default()
        });
        return;
    };
    let (reference, digest) = match image.split_once('@') {
        Some((reference, _)) => (reference, true),
        None => (image, false),
    };
    // A ':' after the last '/' starts the tag (one before it is a registry's port).
    let name_start = reference.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match reference[name_start..].rfind(':') {
        Some(i) => (
            &reference[..name_start + i],
            Some(&reference[name_start + i + 1..]),
        ),
        None => (reference, None),
    };
    out.push(string_kv("container.image.name", name.into()));
    if let Some(tag) = tag {
        out.push(KeyValue {
            key: "container.image.tags".into(),
            value: Some(string_array([tag])),
            ..Default::default()
        });
    }
    if digest {
        out.push(KeyValue {
            key: "container.image.repo_digests".into(),
            value: Some(string_array([image])),
            ..Default::default()
        });
    }
}

fn string_kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

fn string_array<'a>(values: impl IntoIterator<Item = &'a str>) -> AnyValue {
    AnyValue {
        value: Some(Value::ArrayValue(ArrayValue {
            values: values
                .into_iter()
                .map(|v| AnyValue {
                    value: Some(Value::StringValue(v.into())),
                })
                .collect(),
        })),
    }
}

/// A string value when `bytes` is UTF-8, else the exact bytes.
fn any_bytes(bytes: &[u8]) -> AnyValue {
    let mut value = None;
    set_bytes(&mut value, bytes);
    value.expect("set")
}

/// Sets `slot` to a string value when `bytes` is UTF-8, else to the exact bytes,
/// reusing the buffer already there.
fn set_bytes(slot: &mut Option<AnyValue>, bytes: &[u8]) {
    let value = &mut slot.get_or_insert_with(AnyValue::default).value;
    match std::str::from_utf8(bytes) {
        Ok(s) => match value {
            Some(Value::StringValue(buf)) => {
                buf.clear();
                buf.push_str(s);
            }
            _ => *value = Some(Value::StringValue(s.to_owned())),
        },
        Err(_) => match value {
            Some(Value::BytesValue(buf)) => {
                buf.clear();
                buf.extend_from_slice(bytes);
            }
            _ => *value = Some(Value::BytesValue(bytes.to_vec())),
        },
    }
}

fn set_str(slot: &mut Option<AnyValue>, s: &str) {
    let value = &mut slot.get_or_insert_with(AnyValue::default).value;
    match value {
        Some(Value::StringValue(buf)) => {
            buf.clear();
            buf.push_str(s);
        }
        _ => *value = Some(Value::StringValue(s.to_owned())),
    }
}

/// Writes attributes into a reused `Vec<KeyValue>`, refilling the entries already
/// there; [`Attrs::finish`] drops what the record no longer has.
struct Attrs<'a> {
    list: &'a mut Vec<KeyValue>,
    len: usize,
}

impl<'a> Attrs<'a> {
    fn new(list: &'a mut Vec<KeyValue>) -> Self {
        Attrs { list, len: 0 }
    }

    fn next(&mut self, key: &str) -> &mut Option<AnyValue> {
        if self.len == self.list.len() {
            self.list.push(KeyValue::default());
        }
        let kv = &mut self.list[self.len];
        self.len += 1;
        kv.key.clear();
        kv.key.push_str(key);
        &mut kv.value
    }

    fn bytes(&mut self, key: &str, value: &[u8]) {
        set_bytes(self.next(key), value);
    }

    fn str(&mut self, key: &str, value: &str) {
        set_str(self.next(key), value);
    }

    fn int(&mut self, key: &str, value: i64) {
        *self.next(key) = Some(AnyValue {
            value: Some(Value::IntValue(value)),
        });
    }

    fn finish(self) {
        self.list.truncate(self.len);
    }
}

/// Refills `out` with `record`. See the parent module for the mapping.
fn fill_record(out: &mut LogRecord, record: &Record, package_id: u64, observed_ns: u64) {
    out.time_unix_nano = u64::try_from(record.timestamp_ns).unwrap_or(0);
    out.observed_time_unix_nano = observed_ns;
    out.flags = 0;
    out.dropped_attributes_count = 0;
    out.trace_id.clear();
    out.span_id.clear();
    out.event_name.clear();
    set_bytes(&mut out.body, &record.body);

    out.severity_text.clear();
    out.severity_number = SeverityNumber::Unspecified as i32;
    let level = LEVEL_FIELDS
        .iter()
        .find_map(|name| record.fields.iter().find(|(k, _)| k[..] == **name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok());
    if let Some(level) = level {
        out.severity_text.push_str(level);
        out.severity_number = severity_number(level) as i32;
    }

    let mut attrs = Attrs::new(&mut out.attributes);
    for (key, value) in &record.fields {
        attrs.bytes(&String::from_utf8_lossy(key), value);
    }
    if record.stream != Stream::None {
        attrs.str("log.iostream", record.stream.as_str());
    }
    // Offsets and package ids are far below 2^63; `as` keeps the bits if not.
    attrs.int("logtap.offset", record.offset as i64);
    attrs.int("logtap.package_id", package_id as i64);
    if record.flags != LineFlags::empty() {
        *attrs.next("logtap.flags") = Some(string_array(record.flags.names()));
    }
    attrs.finish();
}

/// The severity number of a level name (case-insensitive; syslog's names included).
pub(super) fn severity_number(level: &str) -> SeverityNumber {
    let level = level.trim();
    let is = |name: &str| level.eq_ignore_ascii_case(name);
    if is("trace") {
        SeverityNumber::Trace
    } else if is("debug") || is("dbg") {
        SeverityNumber::Debug
    } else if is("info") || is("information") || is("informational") {
        SeverityNumber::Info
    } else if is("notice") {
        SeverityNumber::Info2
    } else if is("warn") || is("warning") {
        SeverityNumber::Warn
    } else if is("error") || is("err") {
        SeverityNumber::Error
    } else if is("fatal") || is("panic") {
        SeverityNumber::Fatal
    } else if is("crit") || is("critical") {
        SeverityNumber::Fatal2
    } else if is("alert") {
        SeverityNumber::Fatal3
    } else if is("emerg") || is("emergency") {
        SeverityNumber::Fatal4
    } else {
        SeverityNumber::Unspecified
    }
}

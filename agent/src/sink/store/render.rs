//! How records look outside the agent: the NDJSON shape shared by the file and stdout
//! sinks and `logtap query --json`, and the grep-like text form of `logtap query`.
//!
//! Bytes are never lossily replaced. JSON carries a body that is not valid UTF-8 as
//! `body_base64` (and such paths / fields likewise); text shows invalid bytes and
//! terminal control characters as `\xNN`.
//!
//! # Performance
//!
//! Everything appends to a caller-owned `Vec<u8>` that the sinks reuse, so rendering a
//! record allocates nothing.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use bytes::Bytes;

use crate::enrich;
use crate::frame::{LineFlags, Stream};
use crate::source::SourceId;

use super::b64;

/// One record with the coordinates output needs.
#[derive(Clone, Copy, Debug)]
pub struct RecordView<'a> {
    pub source_id: SourceId,
    /// `None` when the source is unknown (its table entry lost).
    pub path: Option<&'a Path>,
    pub package_id: u64,
    pub offset: u64,
    pub timestamp_ns: i64,
    pub stream: Stream,
    /// Whether the record was captured from the kernel by the eBPF probes (its source
    /// is a captured stream): `[ebpf]` in the text form, `"origin":"ebpf"` in JSON.
    pub captured: bool,
    pub flags: LineFlags,
    pub body: &'a [u8],
    /// The package's source fields (`Batch::source_fields`): pod, namespace, labels….
    pub source_fields: &'a [(Bytes, Bytes)],
}

/// Appends `ts_ns` as RFC 3339 UTC with nanoseconds (`2024-05-01T12:00:00.000000001Z`).
/// Any `i64` is accepted (years 1677..2262), including times before 1970.
pub fn write_rfc3339(out: &mut Vec<u8>, ts_ns: i64) {
    let secs = ts_ns.div_euclid(1_000_000_000);
    let nanos = ts_ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), as in Howard Hinnant's date algorithms.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Digits by hand rather than through `write!`, whose formatting machinery runs per
    // argument: every record the file and network sinks write has a timestamp.
    let mut buf = *b"0000-00-00T00:00:00.000000000Z";
    put_digits(&mut buf[0..4], year as u64);
    put_digits(&mut buf[5..7], month as u64);
    put_digits(&mut buf[8..10], day as u64);
    put_digits(&mut buf[11..13], (sod / 3600) as u64);
    put_digits(&mut buf[14..16], (sod / 60 % 60) as u64);
    put_digits(&mut buf[17..19], (sod % 60) as u64);
    put_digits(&mut buf[20..29], nanos as u64);
    out.extend_from_slice(&buf);
}

/// Writes the low `slot.len()` decimal digits of `n` into `slot`, zero-padded.
fn put_digits(slot: &mut [u8], mut n: u64) {
    for d in slot.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Appends `n` in decimal.
pub(crate) fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `n` in decimal, with its sign.
pub(crate) fn write_i64(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Whether a JSON string cannot hold byte `b` as it is: `"`, `\\` and the controls.
const fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Index of the first byte of `bytes` that [`needs_escape`].
///
/// # Performance
///
/// Eight bytes at a time (SWAR): log bodies are long runs of plain bytes, and a
/// byte-by-byte search was 7% of the Kafka sink's CPU. In each word, a byte's high bit
/// is set where the byte is below 0x20 or equal to `"` or `\\`; a borrow can also set
/// it in a byte *above* a hit, never below one, so the lowest set bit is the first hit.
/// Bytes of 0x80 and up have their high bit cleared by `& !w`, so UTF-8 sequences
/// never count.
fn find_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGHS: u64 = ONES << 7;
    const QUOTES: u64 = ONES * b'"' as u64;
    const BACKSLASHES: u64 = ONES * b'\\' as u64;
    const CONTROL_END: u64 = ONES * 0x20;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
        let quote = w ^ QUOTES;
        let backslash = w ^ BACKSLASHES;
        // `(x - ONES) & !x` marks zero bytes of x; `(w - n × ONES) & !w` bytes below n.
        let hits = (w.wrapping_sub(CONTROL_END) & !w
            | quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash)
            & HIGHS;
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = chunks.remainder();
    rest.iter().position(|&b| needs_escape(b)).map(|i| at + i)
}

pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    // Runs of plain bytes are copied whole; only the rare byte to escape is looked at.
    while let Some(n) = find_escape(&bytes[start..]) {
        let i = start + n;
        out.extend_from_slice(&bytes[start..i]);
        let b = bytes[i];
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => b"",
        };
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends `"name":"<utf8>"`, or `"name_base64":"<base64>"` when `value` is not UTF-8.
pub(crate) fn write_bytes_member(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(s) => {
            write_json_str(out, name);
            out.push(b':');
            write_json_str(out, s);
        }
        Err(_) => {
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"_base64\":\"");
            b64::encode_into(value, out);
            out.push(b'"');
        }
    }
}

/// Appends one NDJSON line (with its `\n`) for a record:
///
/// ```text
/// {"ts":"…Z","timestamp_ns":…,"source_id":"<16 hex>","path":"…","package_id":…,
///  "offset":…,"stream":"stdout","flags":["truncated"],"body":"…","fields":{"k":"v"},
///  "resource":{"k8s.pod":"web-1","k8s.namespace":"shop",…}}
/// ```
///
/// `origin` (`"ebpf"`) is there only for records captured from the kernel, after
/// `stream`. `stream` is left out for plain files, `path` for unknown sources, `resource` (the
/// source fields: pod, namespace, container, labels…) when the source has none. A
/// body, path or field that is not UTF-8 goes to `body_base64` / `path_base64` /
/// `fields_base64` / `resource_base64` (there both key and value are base64). `context` marks records that `logtap query
/// --context` prints around a hit.
pub fn write_json_record<'f>(
    out: &mut Vec<u8>,
    rec: &RecordView<'_>,
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])> + Clone,
    context: bool,
) {
    write_json_head(out, rec.timestamp_ns);
    write_json_package(out, rec.source_id, rec.path, rec.package_id);
    write_json_own(out, rec, fields);
    write_json_resource(out, rec.source_fields);
    write_json_end(out, context);
}

/// The JSON of the records of one package ([`write_json_record`]'s shape, byte for
/// byte), with what every record of the package shares — source id, path, package
/// id, resource — rendered once by [`PackageJson::reset`] instead of per record: the
/// network sinks render every record of every window.
#[derive(Debug, Default)]
pub struct PackageJson {
    /// `"source_id":…,"path":…,"package_id":…,`
    package: Vec<u8>,
    /// `,"resource":{…}` or nothing.
    resource: Vec<u8>,
}

impl PackageJson {
    /// Renders the shared parts of `package_id` of the source `source_id` at `path`.
    pub fn reset(
        &mut self,
        source_id: SourceId,
        path: Option<&Path>,
        package_id: u64,
        source_fields: &[(Bytes, Bytes)],
    ) {
        self.package.clear();
        write_json_package(&mut self.package, source_id, path, package_id);
        self.resource.clear();
        write_json_resource(&mut self.resource, source_fields);
    }

    /// Appends one record of the package, as [`write_json_record`] would (the shared
    /// parts of `rec` are ignored: they are those given to [`PackageJson::reset`]).
    pub fn write_record<'f>(
        &self,
        out: &mut Vec<u8>,
        rec: &RecordView<'_>,
        fields: impl Iterator<Item = (&'f [u8], &'f [u8])> + Clone,
        context: bool,
    ) {
        write_json_head(out, rec.timestamp_ns);
        out.extend_from_slice(&self.package);
        write_json_own(out, rec, fields);
        out.extend_from_slice(&self.resource);
        write_json_end(out, context);
    }
}

/// `{"ts":"…","timestamp_ns":…,`
fn write_json_head(out: &mut Vec<u8>, timestamp_ns: i64) {
    out.extend_from_slice(b"{\"ts\":\"");
    write_rfc3339(out, timestamp_ns);
    out.extend_from_slice(b"\",\"timestamp_ns\":");
    write_i64(out, timestamp_ns);
    out.push(b',');
}

/// `"source_id":"<16 hex>","path":"…","package_id":…,`
pub(crate) fn write_json_package(
    out: &mut Vec<u8>,
    source_id: SourceId,
    path: Option<&Path>,
    package_id: u64,
) {
    let _ = write!(out, "\"source_id\":\"{:016x}\",", source_id.0);
    if let Some(path) = path {
        write_bytes_member(out, "path", path.as_os_str().as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"package_id\":");
    write_u64(out, package_id);
    out.push(b',');
}

/// `"offset":…,"stream":…,"flags":[…],"body":…,"fields":{…}`
fn write_json_own<'f>(
    out: &mut Vec<u8>,
    rec: &RecordView<'_>,
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])> + Clone,
) {
    out.extend_from_slice(b"\"offset\":");
    write_u64(out, rec.offset);
    out.push(b',');
    if rec.stream != Stream::None {
        write_stream_member(out, rec.stream);
    }
    if rec.captured {
        out.extend_from_slice(b"\"origin\":\"ebpf\",");
    }
    write_flags_member(out, rec.flags.names());
    write_bytes_member(out, "body", rec.body);
    out.push(b',');
    write_field_object(out, "fields", fields);
}

/// `"stream":"stdout",`
pub(crate) fn write_stream_member(out: &mut Vec<u8>, stream: Stream) {
    out.extend_from_slice(b"\"stream\":\"");
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(b"\",");
}

/// `"flags":["truncated",…],`
pub(crate) fn write_flags_member<'a>(out: &mut Vec<u8>, names: impl Iterator<Item = &'a str>) {
    out.extend_from_slice(b"\"flags\":[");
    for (i, name) in names.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(out, name);
    }
    out.extend_from_slice(b"],");
}

/// `,"resource":{…}` when the source has fields.
fn write_json_resource(out: &mut Vec<u8>, source_fields: &[(Bytes, Bytes)]) {
    if !source_fields.is_empty() {
        out.push(b',');
        let source = source_fields.iter().map(|(k, v)| (&k[..], &v[..]));
        write_field_object(out, "resource", source);
    }
}

fn write_json_end(out: &mut Vec<u8>, context: bool) {
    if context {
        out.extend_from_slice(b",\"context\":true");
    }
    out.extend_from_slice(b"}\n");
}

/// Appends `"name":{"k":"v",…}` for the pairs that are UTF-8, then
/// `,"name_base64":{"<b64 k>":"<b64 v>",…}` for those that are not (when any).
pub(crate) fn write_field_object<'f>(
    out: &mut Vec<u8>,
    name: &str,
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])> + Clone,
) {
    let is_text =
        |(k, v): &(&[u8], &[u8])| std::str::from_utf8(k).is_ok() && std::str::from_utf8(v).is_ok();
    write_json_str(out, name);
    out.extend_from_slice(b":{");
    for (i, (k, v)) in fields.clone().filter(is_text).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_bytes_member(out, std::str::from_utf8(k).unwrap_or_default(), v);
    }
    out.push(b'}');
    let mut binary = fields.filter(|f| !is_text(f)).peekable();
    if binary.peek().is_some() {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"_base64\":{");
        for (i, (k, v)) in binary.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            b64::encode_into(k, out);
            out.extend_from_slice(b"\":\"");
            b64::encode_into(v, out);
            out.push(b'"');
        }
        out.push(b'}');
    }
}

/// Appends `bytes` for a terminal: valid UTF-8 as is, except control characters other
/// than `\t` and `\n` (which could drive the terminal); those and invalid bytes as
/// `\xNN`.
pub fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        let mut start = 0;
        for (i, &b) in valid.iter().enumerate() {
            if (b < 0x20 && b != b'\t' && b != b'\n') || b == 0x7f {
                out.extend_from_slice(&valid[start..i]);
                let _ = write!(out, "\\x{b:02x}");
                start = i + 1;
            }
        }
        out.extend_from_slice(&valid[start..]);
        for &b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// Appends the text form of a record: `<ts> <path>:<offset> [stream] [ebpf] body\n`
/// (`[ebpf]` when it was captured from the kernel), with
/// `<namespace>/<pod>/<container> ` before the body when the source fields name a pod
/// (the other source fields are in the JSON form only). Context records use `-`
/// instead of `:` after the path, as `grep -C` does.
pub fn write_text_record(out: &mut Vec<u8>, rec: &RecordView<'_>, context: bool) {
    write_rfc3339(out, rec.timestamp_ns);
    out.push(b' ');
    match rec.path {
        Some(p) => write_escaped(out, p.as_os_str().as_bytes()),
        None => {
            let _ = write!(out, "<source {:016x}>", rec.source_id.0);
        }
    }
    let _ = write!(out, "{}{} ", if context { '-' } else { ':' }, rec.offset);
    if rec.stream != Stream::None {
        let _ = write!(out, "[{}] ", rec.stream.as_str());
    }
    if rec.captured {
        out.extend_from_slice(b"[ebpf] ");
    }
    let source_field = |key: &str| {
        rec.source_fields
            .iter()
            .find(|(k, _)| k[..] == *key.as_bytes())
            .map(|(_, v)| &v[..])
    };
    if let Some(pod) = source_field(enrich::POD) {
        for (i, part) in [
            source_field(enrich::NAMESPACE),
            Some(pod),
            source_field(enrich::CONTAINER),
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                out.push(b'/');
            }
            write_escaped(out, part.unwrap_or(b"?"));
        }
        out.push(b' ');
    }
    write_escaped(out, rec.body);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ts(ns: i64) -> String {
        let mut v = Vec::new();
        write_rfc3339(&mut v, ns);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn integers_are_written_as_display_writes_them() {
        for n in [0, 1, 9, 10, 4_294_967_296, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for n in [i64::MIN, -1_700_000_000_000_000_000, -1, 0, i64::MAX] {
            let mut out = Vec::new();
            write_i64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(ts(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            ts(1_714_564_800_000_000_001),
            "2024-05-01T12:00:00.000000001Z"
        );
        assert_eq!(
            ts(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(ts(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(ts(i64::MIN), "1677-09-21T00:12:43.145224192Z");
        assert_eq!(ts(i64::MAX), "2262-04-11T23:47:16.854775807Z");
        // Agrees with humantime's parser where both apply.
        let parsed = humantime::parse_rfc3339(&ts(1_714_564_800_123_456_789)).unwrap();
        assert_eq!(
            parsed
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
            1_714_564_800_123_456_789
        );
    }

    fn view(body: &[u8]) -> RecordView<'_> {
        RecordView {
            source_id: SourceId(0xab),
            path: Some(Path::new("/var/log/a.log")),
            package_id: 3,
            offset: 42,
            timestamp_ns: 0,
            stream: Stream::Stderr,
            captured: false,
            flags: LineFlags::TRUNCATED | LineFlags::INVALID_UTF8,
            body,
            source_fields: &[],
        }
    }

    /// What `write_json_str` did before the word-at-a-time search: byte by byte.
    fn write_json_str_bytewise(out: &mut Vec<u8>, s: &str) {
        out.push(b'"');
        for &b in s.as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b if b < 0x20 => {
                    let _ = write!(out, "\\u{b:04x}");
                }
                b => out.push(b),
            }
        }
        out.push(b'"');
    }

    /// Bytes around the search's edges: the three kinds to escape, their neighbours
    /// (0x1f/0x20, 0x21/0x23, 0x5b/0x5d), and high bytes, which must never count.
    fn edgy_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            4 => b'a'..=b'z',
            1 => 0u8..0x20,
            1 => Just(0x20u8),
            1 => prop_oneof![Just(b'"'), Just(b'\\'), Just(0x21), Just(0x23), Just(0x5b), Just(0x5d)],
            1 => 0x7fu8..=0xff,
        ]
    }

    proptest! {
        #[test]
        fn escape_search_finds_what_the_byte_loop_finds(
            bytes in proptest::collection::vec(edgy_byte(), 0..70),
        ) {
            let expected = bytes.iter().position(|&b| needs_escape(b));
            prop_assert_eq!(find_escape(&bytes), expected);
        }

        #[test]
        fn json_strings_are_byte_for_byte_the_byte_loop_s(
            s in prop_oneof![
                any::<String>(),
                "[\\x00-\\x1f\"\\\\ a-z\\x7féü€😀]{0,70}",
            ],
        ) {
            let (mut got, mut expected) = (Vec::new(), Vec::new());
            write_json_str(&mut got, &s);
            write_json_str_bytewise(&mut expected, &s);
            prop_assert_eq!(&got, &expected);
            prop_assert_eq!(serde_json::from_slice::<String>(&got).unwrap(), s);
        }
    }

    #[test]
    fn package_json_renders_records_byte_for_byte_as_write_json_record() {
        let resource = [
            (Bytes::from_static(b"k8s.pod"), Bytes::from_static(b"web-1")),
            (Bytes::from_static(b"bin"), Bytes::from_static(b"\xff")),
        ];
        let fields: Vec<(&[u8], &[u8])> = vec![(b"level", b"info"), (b"b", b"\xfe")];
        for (path, source_fields) in [
            (Some(Path::new("/var/log/a \"b\".log")), &resource[..]),
            (None, &[][..]),
        ] {
            let mut pj = PackageJson::default();
            pj.reset(SourceId(0xab), path, 3, source_fields);
            for (body, stream, ts) in [
                (&b"plain"[..], Stream::Stdout, 1_714_564_800_000_000_001),
                (b"tab\tquote\"\x01\xff", Stream::None, -1),
            ] {
                for context in [false, true] {
                    let rec = RecordView {
                        path,
                        source_fields,
                        stream,
                        timestamp_ns: ts,
                        ..view(body)
                    };
                    let mut expected = Vec::new();
                    write_json_record(&mut expected, &rec, fields.iter().copied(), context);
                    let mut got = Vec::new();
                    pj.write_record(&mut got, &rec, fields.iter().copied(), context);
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&expected)
                    );
                    serde_json::from_slice::<serde_json::Value>(&got).unwrap();
                }
            }
        }
    }

    #[test]
    fn json_is_valid_and_keeps_bytes() {
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b"level", b"info"),
            (b"q\"uote", b"a\\b\n\x01"),
            (b"bin", b"\xff\x00"),
        ];
        let mut out = Vec::new();
        write_json_record(
            &mut out,
            &view(b"ok \xc3\x28 bad"),
            fields.iter().copied(),
            true,
        );
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["body_base64"], b64::encode(b"ok \xc3\x28 bad"));
        assert!(v.get("body").is_none());
        assert_eq!(v["source_id"], "00000000000000ab");
        assert_eq!(v["offset"], 42);
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["flags"], serde_json::json!(["truncated", "invalid_utf8"]));
        assert_eq!(v["fields"]["level"], "info");
        assert_eq!(v["fields"]["q\"uote"], "a\\b\n\u{1}");
        assert_eq!(
            v["fields_base64"][b64::encode(b"bin")],
            b64::encode(b"\xff\x00")
        );
        assert_eq!(v["context"], true);

        out.clear();
        write_json_record(
            &mut out,
            &view("héllo \"x\"".as_bytes()),
            std::iter::empty(),
            false,
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["body"], "héllo \"x\"");
        assert!(v.get("context").is_none());
        assert!(v.get("fields_base64").is_none());
    }

    #[test]
    fn text_escapes_invalid_bytes_and_controls() {
        let mut out = Vec::new();
        write_text_record(
            &mut out,
            &view(b"caf\xc3\xa9 \xff\xfe \x1b[31m\ttab\\"),
            false,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000000000Z /var/log/a.log:42 [stderr] café \\xff\\xfe \\x1b[31m\ttab\\\n"
        );
        let mut out = Vec::new();
        let mut rec = view(b"x");
        rec.stream = Stream::None;
        rec.path = None;
        write_text_record(&mut out, &rec, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000000000Z <source 00000000000000ab>-42 x\n"
        );
    }

    #[test]
    fn captured_records_say_so_in_both_forms() {
        let rec = RecordView {
            path: Some(Path::new("cgroup:/logtap-demo/w#stdout")),
            stream: Stream::Stdout,
            captured: true,
            flags: LineFlags::empty(),
            ..view(b"hello")
        };
        let mut out = Vec::new();
        write_text_record(&mut out, &rec, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000000000Z cgroup:/logtap-demo/w#stdout:42 [stdout] [ebpf] hello\n"
        );
        let mut out = Vec::new();
        write_json_record(&mut out, &rec, std::iter::empty(), false);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["origin"], "ebpf");
        // The package form renders the same bytes.
        let mut pj = PackageJson::default();
        pj.reset(rec.source_id, rec.path, rec.package_id, &[]);
        let mut got = Vec::new();
        pj.write_record(&mut got, &rec, std::iter::empty(), false);
        assert_eq!(got, out);
        // Records read from files carry no origin.
        out.clear();
        write_json_record(&mut out, &view(b"x"), std::iter::empty(), false);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("origin").is_none());
    }

    fn pairs(list: &[(&'static str, &'static [u8])]) -> Vec<(Bytes, Bytes)> {
        list.iter()
            .map(|&(k, v)| (Bytes::from_static(k.as_bytes()), Bytes::from_static(v)))
            .collect()
    }

    #[test]
    fn source_fields_are_the_resource_object() {
        let source = pairs(&[
            ("k8s.pod", b"web-1"),
            ("k8s.namespace", b"shop"),
            ("k8s.container", b"app"),
            ("k8s.pod.label.app", b"demo"),
            ("odd", b"\xff"),
        ]);
        let mut rec = view(b"hello");
        rec.source_fields = &source;
        let mut out = Vec::new();
        write_json_record(&mut out, &rec, std::iter::empty(), false);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["resource"]["k8s.pod"], "web-1");
        assert_eq!(v["resource"]["k8s.pod.label.app"], "demo");
        assert_eq!(
            v["resource_base64"][b64::encode(b"odd")],
            b64::encode(b"\xff")
        );
        assert_eq!(v["fields"], serde_json::json!({}));

        // Without source fields, no `resource` member.
        out.clear();
        write_json_record(&mut out, &view(b"x"), std::iter::empty(), false);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("resource").is_none());

        out.clear();
        write_text_record(&mut out, &rec, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000000000Z /var/log/a.log:42 [stderr] shop/web-1/app hello\n"
        );
        // A host source (node only) looks as before.
        let host = pairs(&[("k8s.node", b"node-a")]);
        rec.source_fields = &host;
        let mut out = Vec::new();
        write_text_record(&mut out, &rec, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000000000Z /var/log/a.log:42 [stderr] hello\n"
        );
    }
}

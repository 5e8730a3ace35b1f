//! The fuzz targets' seeds: a few real examples each, in each target's input layout
//! (see the module doc of each `fuzz/fuzz_targets/*.rs`). The lines are those of the
//! agent's tests; the binary formats come from the agent's own encoders, so a format
//! change is one `cargo xtask fuzz seeds` away from seeds that reach past the header.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use logtap::batch::{Batch, Field, codec};
use logtap::checkpoint::Registry;
use logtap::frame::{Line, LineFlags, Stream};
use logtap::sink::store::segment::BlockHeader;
use logtap::source::file::FileIdentity;
use logtap::source::{SourceId, SourceInfo, SourceKind};
use logtap_ebpf_common::{
    DataHeader, KIND_CGROUP_CREATED, KIND_DATA, KIND_EXIT, LifecycleRecord, PATH_CAPACITY,
    StreamKey,
};

const CRI: &str = "\
2026-11-21T10:45:31.210111144Z stdout P hello \n\
2026-11-21T10:45:31.210111145Z stderr F an error\n\
2026-11-21T10:45:31.210111146Z stdout F world\n\
not a cri line\n\
2026-11-21T10:45:32.000000000Z stdout P last, no closing F";

const JAVA: &str = "\
2026-11-21T10:45:31.210111144Z stdout F Exception in thread \"main\" java.lang.IllegalStateException: boom\n\
2026-11-21T10:45:31.210111145Z stdout F \tat com.example.App.run(App.java:42)\n\
2026-11-21T10:45:31.210111146Z stdout F \tat com.example.App.main(App.java:7)\n\
2026-11-21T10:45:31.210111147Z stdout F next record\n";

const DOCKER: &str = concat!(
    r#"{"log":"hello \u00e9 \"quoted\"\n","stream":"stdout","time":"2026-11-21T10:45:31.210111144Z"}"#,
    "\n",
    r#"{"log":"a 16k split ","stream":"stderr","time":"2026-11-21T10:45:31.210111145Z"}"#,
    "\n",
    r#"{"log":"message\n","stream":"stderr","time":"2026-11-21T10:45:31.210111146Z"}"#,
    "\n{broken\n",
);

const NGINX: &str = r#"192.168.1.10 - alice [21/Nov/2026:10:45:31 +0000] "GET /index.html?q=1 HTTP/1.1" 200 612 "-" "curl/8.5.0""#;
const APACHE: &str = r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#;

/// Writes every target's seeds under `dir` (`<target>/<name>`), replacing old ones.
pub fn write(dir: &Path) -> Result<(), String> {
    let mut seeds: Vec<(&str, &str, Vec<u8>)> = Vec::new();
    let mut add = |target, name, bytes| seeds.push((target, name, bytes));

    // frame: selector (format | max index << 2 | multiline << 4 | max_lines - 1 << 5),
    // chunk size - 1, the file.
    add(
        "frame",
        "cri_partials",
        [&[0x01 | 1 << 2, 6][..], CRI.as_bytes()].concat(),
    );
    add(
        "frame",
        "cri_java_multiline",
        [&[0x01 | 2 << 2 | 0x10 | 3 << 5, 31][..], JAVA.as_bytes()].concat(),
    );
    add(
        "frame",
        "docker",
        [&[0x02 | 2 << 2, 40][..], DOCKER.as_bytes()].concat(),
    );
    add(
        "frame",
        "raw_crlf_invalid_utf8",
        [
            &[0x00, 3][..],
            b"a line\r\nbad \xff\xfe utf-8\n\0nul\nno newline",
        ]
        .concat(),
    );

    // parse: selector (the index of the target's parser list), the body.
    add(
        "parse",
        "json",
        [
            &[0][..],
            br#"{"level":"info","msg":"a \"quoted\" word","n":12,"nested":{"a":[1,2.5,null]}}"#,
        ]
        .concat(),
    );
    // A flat object: the JSON parser's fast path (escape-free strings, numbers, literals).
    add(
        "parse",
        "json_flat",
        [
            &[0][..],
            br#"{"ts":"2026-11-21T10:00:01.000000001Z","level":"info","seq":1,"latency_ms":-0.5e3,"ok":true,"msg":"a b c"}"#,
        ]
        .concat(),
    );
    add("parse", "regex", [&[1][..], b"info all good"].concat());
    add(
        "parse",
        "regex_optional_group",
        [&[2][..], b"2026-11-21T10:45:31Z [main] started"].concat(),
    );
    add(
        "parse",
        "csv_quoted",
        [&[3][..], b"a,\"b \"\"quoted\"\", too\",c"].concat(),
    );
    add("parse", "tsv", [&[4][..], b"x\ty"].concat());
    add("parse", "nginx", [&[6][..], NGINX.as_bytes()].concat());
    add("parse", "apache", [&[7][..], APACHE.as_bytes()].concat());

    // store_block: selector (1: compressed), the block.
    let (payload, compressed) = (payload(1), {
        let mut c = Vec::new();
        codec::compress(&payload(2), &mut c);
        c
    });
    add("store_block", "payload", [&[0][..], &payload].concat());
    add(
        "store_block",
        "compressed",
        [&[1][..], &compressed].concat(),
    );

    // store_segment: selector (1: fix checksums), two blocks as the store writes them.
    let segment = [block(1), block(2)].concat();
    add("store_segment", "two_blocks", [&[0][..], &segment].concat());
    add(
        "store_segment",
        "torn_tail",
        [&[0][..], &segment[..segment.len() - 9]].concat(),
    );

    // checkpoint: selector (1: body to wrap in magic and CRC), the file.
    let file = checkpoint_file()?;
    add("checkpoint", "file", [&[0][..], &file].concat());
    add("checkpoint", "body", [&[1][..], &file[8..]].concat());

    // cri_stream: selector, four (gap, u16 length) ranges, the log.
    let ranges = [0, 10, 0, 2, 40, 0, 0, 255, 0, 0, 0, 1];
    add(
        "cri_stream",
        "stdout",
        [&[0b0110_0100][..], &ranges, CRI.as_bytes(), b"\n"].concat(),
    );
    add(
        "cri_stream",
        "stderr",
        [&[0b0010_0011][..], &ranges, JAVA.as_bytes()].concat(),
    );

    // ring_record: items, each a u16 length then the record.
    let mut ring = Vec::new();
    for item in [
        lifecycle(
            KIND_CGROUP_CREATED,
            b"/kubepods/burstable/pod1234/cri-containerd-abcd.scope",
        ),
        data(0, b"hello\n"),
        data(12, b"after a hole\n"),
        data(6, b"in-between"),
        data(6, b"in-between again"),
        lifecycle(KIND_EXIT, b""),
    ] {
        ring.extend_from_slice(&(item.len() as u16).to_le_bytes());
        ring.extend_from_slice(&item);
    }
    add("ring_record", "records", ring);

    // config: selector (0: the config file; 1: a LogCollection spec), the YAML.
    add(
        "config",
        "default",
        [&[0][..], logtap::config::DEFAULT_CONFIG_YAML.as_bytes()].concat(),
    );
    for (name, text) in [
        (
            "java_and_nginx",
            include_str!("../../../deploy/examples/java-and-nginx.yaml"),
        ),
        (
            "node_default",
            include_str!("../../../deploy/examples/node-default.yaml"),
        ),
    ] {
        add("config", name, [&[0][..], text.as_bytes()].concat());
    }
    add(
        "config",
        "collection",
        [&[1][..], COLLECTION_SPEC.as_bytes()].concat(),
    );

    for (target, name, bytes) in seeds {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir)
            .map_err(|e| format!("creating {}: {e}", target_dir.display()))?;
        let path = target_dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    eprintln!("xtask: fuzz seeds written under {}", dir.display());
    Ok(())
}

/// A `LogCollection` spec as `deploy/examples/collections/checkout-json.yaml` has it,
/// with a network sink and processors besides.
const COLLECTION_SPEC: &str = "\
selector:
  namespaces: {include: [shop]}
  pod_name: '^checkout-'
  include_env: {LOG_FORMAT: json}
  exclude_labels: {logtap.dev/ignore: ''}
sources:
  - name: out
    input: {type: container_stdout}
    parser: {type: json}
    processors:
      - {type: mask, field: body, pattern: '[0-9]{16}', replacement: '****'}
      - {type: drop, field: level, pattern: '^debug$'}
sink:
  type: kafka
  brokers: [\"kafka:9092\"]
  topic: \"logs-{k8s.namespace}\"
  message_per: package
";

fn batch(package_id: u64) -> Batch {
    let source = Arc::new(SourceInfo {
        id: SourceId(7),
        kind: SourceKind::CriFile,
        path: "/var/log/pods/ns_pod_uid/app/0.log".into(),
        config_name: Arc::from("default"),
    });
    // Each body a chunk of its own, as a framer gives bodies it copied.
    let mut chunks = Vec::new();
    let mut line = |offset: u64, flags: LineFlags, body: &'static [u8]| Line {
        offset,
        timestamp_ns: 1_763_721_931_210_111_144 + offset as i64,
        stream: Stream::Stdout,
        flags,
        body: logtap::frame::own(&mut chunks, Bytes::from_static(body)),
    };
    let lines = vec![
        line(
            0,
            LineFlags::empty(),
            br#"{"level":"info","msg":"started"}"#,
        ),
        line(
            80,
            LineFlags::REASSEMBLED | LineFlags::TRUNCATED,
            b"a long one",
        ),
        line(120, LineFlags::INVALID_UTF8, b"\xff\xfe"),
    ];
    Batch {
        source,
        package_id,
        chunks,
        lines,
        fields: vec![
            Field {
                line: 0,
                key: Bytes::from_static(b"level"),
                value: Bytes::from_static(b"info").into(),
            },
            Field {
                line: 0,
                key: Bytes::from_static(b"msg"),
                value: Bytes::from_static(b"started").into(),
            },
        ],
        source_fields: Arc::new(vec![
            (
                Bytes::from_static(b"namespace"),
                Bytes::from_static(b"shop"),
            ),
            (
                Bytes::from_static(b"pod"),
                Bytes::from_static(b"checkout-7d9f"),
            ),
        ]),
        end_offset: 140,
    }
}

fn payload(package_id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode_payload(&batch(package_id), &mut out);
    out
}

/// One block as the store writes it (see `Store::encode_block`).
fn block(package_id: u64) -> Vec<u8> {
    let batch = batch(package_id);
    let payload = payload(package_id);
    let mut compressed = Vec::new();
    codec::compress(&payload, &mut compressed);
    let header = BlockHeader {
        compressed_len: compressed.len() as u32,
        uncompressed_len: payload.len() as u32,
        line_count: batch.lines.len() as u32,
        offset_span: 120,
        source_id: batch.source.id.0,
        package_id,
        first_offset: 0,
        end_offset: batch.end_offset,
        min_ts: batch.lines[0].timestamp_ns,
        max_ts: batch.lines[2].timestamp_ns,
        payload_crc: crc32fast::hash(&compressed),
    };
    [&header.encode()[..], &compressed].concat()
}

/// A checkpoint file of two sources, written by the registry itself.
fn checkpoint_file() -> Result<Vec<u8>, String> {
    let dir = std::env::temp_dir().join(format!("logtap-fuzz-seeds-{}", std::process::id()));
    let registry = Registry::open(&dir).map_err(|e| e.to_string())?;
    for (id, inode, path, offset) in [
        (1, 1001, "/var/log/syslog", 4096),
        (2, 1002, "/var/log/pods/ns_pod_uid/app/0.log", 77),
    ] {
        let identity = FileIdentity {
            dev: 2049,
            inode,
            fingerprint_len: 256,
            fingerprint: 0xdead_beef,
        };
        registry.register(SourceId(id), identity, path.into(), offset);
        registry.observed_size(SourceId(id), offset * 2);
    }
    registry.persist().map_err(|e| e.to_string())?;
    let file = std::fs::read(dir.join("checkpoints.rkyv")).map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    file
}

fn data(offset: u64, bytes: &[u8]) -> Vec<u8> {
    let header = DataHeader {
        kind: KIND_DATA,
        stream: 1,
        cgroup_id: 4242,
        offset,
        ktime_ns: 1_000,
        tgid: 99,
        len: bytes.len() as u32,
    };
    [as_bytes(&header), bytes].concat()
}

fn lifecycle(kind: u32, path: &[u8]) -> Vec<u8> {
    let mut record = LifecycleRecord {
        kind,
        stream: 0,
        cgroup_id: 4242,
        ktime_ns: 1_000,
        tgid: 99,
        group_dead: 1,
        key: StreamKey { ino: 0, dev: 0 },
        path_len: path.len() as u32,
        _pad: 0,
        path: [0; PATH_CAPACITY],
    };
    record.path[..path.len()].copy_from_slice(path);
    as_bytes(&record).to_vec()
}

/// The bytes of a `#[repr(C)]` record of the kernel contract, as the ring carries it.
fn as_bytes<T: Copy>(record: &T) -> &[u8] {
    // SAFETY: the contract's records are `#[repr(C)]` integers and byte arrays
    // without padding (checked by the layout tests of `agent-ebpf/common`).
    unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
}

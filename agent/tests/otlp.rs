//! The OTLP destination against real receivers on 127.0.0.1: our own (decodes with the
//! official definitions, answers what the test scripts) and Fluent Bit's
//! `opentelemetry` input (`../shared/peers/fluent-bit`).

mod common;
#[path = "common/otlp.rs"]
mod otlp_receiver;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use logtap::batch::codec::{Package, Record};
use logtap::config::network::{
    BlockCompression, ForwardConfig, OtlpCompression, OtlpConfig, SpoolConfig, WhenFull,
};
use logtap::frame::{LineFlags, Stream};
use logtap::sink::destination::{Delivered, Destination, Rejected, SpooledPackage};
use logtap::sink::otlp::OtlpDestination;
use logtap::source::{SourceId, SourceInfo, SourceKind};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use otlp_receiver::{OtlpReceiver, Reply, body_bytes, int_attr, str_attr, string_value};

const WAIT: Duration = Duration::from_secs(20);

fn config(endpoint: &str) -> OtlpConfig {
    OtlpConfig {
        endpoint: endpoint.into(),
        compression: OtlpCompression::None,
        headers: BTreeMap::new(),
        timeout: Duration::from_secs(5),
        forward: ForwardConfig {
            spool: SpoolConfig {
                path: "/nonexistent/spool".into(),
                max_bytes: 1 << 30,
                segment_bytes: 1 << 26,
                when_full: WhenFull::Block,
                compression: BlockCompression::Lz4,
            },
            dead_letter: None,
            max_window_bytes: 4 << 20,
            max_window_packages: 256,
            drain_timeout: Duration::from_secs(5),
        },
    }
}

fn destination(config: &OtlpConfig) -> OtlpDestination {
    match OtlpDestination::new(config) {
        Ok(d) => d,
        Err(e) => panic!("config refused: {e}"),
    }
}

fn cri_source(id: u64) -> Arc<SourceInfo> {
    Arc::new(SourceInfo {
        id: SourceId(id),
        kind: SourceKind::CriFile,
        path: format!("/var/log/pods/shop_cart-{id}_uid/app/0.log").into(),
        config_name: Arc::from("pods"),
    })
}

fn pod_fields(pod: &str) -> Vec<(Bytes, Bytes)> {
    [
        ("k8s.pod", pod),
        ("k8s.namespace", "shop"),
        ("k8s.container", "app"),
        ("k8s.pod_uid", "uid-1"),
        ("k8s.node", "node-a"),
        ("container.id", "cid-1"),
        ("container.image", "localhost/cart:2"),
        ("k8s.pod.label.app", "cart"),
        ("k8s.pod.annotation.team", "payments"),
    ]
    .iter()
    .map(|(k, v)| (Bytes::from(k.to_string()), Bytes::from(v.to_string())))
    .collect()
}

fn line(offset: u64, body: &[u8]) -> Record {
    Record {
        offset,
        timestamp_ns: 1_760_000_000_000_000_000 + offset as i64,
        stream: Stream::Stdout,
        flags: LineFlags::empty(),
        body: Bytes::copy_from_slice(body),
        fields: Vec::new(),
    }
}

/// A package of `count` lines `"<prefix> <i>"` at offsets 100·i.
fn package(
    seq: u64,
    source: &Arc<SourceInfo>,
    package_id: u64,
    prefix: &str,
    count: usize,
) -> SpooledPackage {
    SpooledPackage {
        seq,
        source: source.clone(),
        package_id,
        package: Package {
            source_fields: pod_fields("cart"),
            records: (0..count)
                .map(|i| line(100 * i as u64, format!("{prefix} {i}").as_bytes()))
                .collect(),
        },
    }
}

fn bodies(window: &[SpooledPackage]) -> Vec<Vec<u8>> {
    window
        .iter()
        .flat_map(|p| p.package.records.iter().map(|r| r.body.to_vec()))
        .collect()
}

fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value,
        ..Default::default()
    }
}

#[test]
fn request_carries_exact_resource_and_record_attributes() {
    let receiver = OtlpReceiver::start();
    let mut config = config(&receiver.endpoint());
    config
        .headers
        .insert("authorization".into(), "Bearer t0ken".into());
    config
        .headers
        .insert("x-scope-orgid".into(), "tenant-a".into());
    let mut d = destination(&config);
    assert_eq!(d.kind(), "otlp");

    let source = cri_source(0x1f);
    let mut json = line(4096, br#"{"level":"error","msg":"boom"}"#);
    json.stream = Stream::Stderr;
    json.flags = LineFlags::PARSE_FAILED;
    json.fields = vec![
        (Bytes::from_static(b"level"), Bytes::from_static(b"error")),
        (Bytes::from_static(b"msg"), Bytes::from_static(b"boom")),
    ];
    let binary = line(5000, b"\xff\xfe raw \x00");
    let window = [SpooledPackage {
        seq: 1,
        source: source.clone(),
        package_id: 77,
        package: Package {
            source_fields: pod_fields("cart-7d9"),
            records: vec![json, binary],
        },
    }];
    assert_eq!(d.send(&window).unwrap(), Delivered::default());

    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/logs");
    assert_eq!(
        request.header("content-type"),
        Some("application/x-protobuf")
    );
    assert_eq!(request.header("content-encoding"), None);
    assert_eq!(request.header("authorization"), Some("Bearer t0ken"));
    assert_eq!(request.header("x-scope-orgid"), Some("tenant-a"));

    let logs = &request.request().resource_logs;
    assert_eq!(logs.len(), 1);
    let resource = &logs[0].resource.as_ref().unwrap().attributes;
    assert_eq!(
        resource,
        &vec![
            kv("k8s.pod.name", string_value("cart-7d9")),
            kv("k8s.namespace.name", string_value("shop")),
            kv("k8s.container.name", string_value("app")),
            kv("k8s.pod.uid", string_value("uid-1")),
            kv("k8s.node.name", string_value("node-a")),
            kv("container.id", string_value("cid-1")),
            kv("container.image.name", string_value("localhost/cart")),
            kv(
                "container.image.tags",
                Some(AnyValue {
                    value: Some(Value::ArrayValue(
                        opentelemetry_proto::tonic::common::v1::ArrayValue {
                            values: vec![string_value("2").unwrap()],
                        }
                    ))
                })
            ),
            kv("k8s.pod.label.app", string_value("cart")),
            kv("k8s.pod.annotation.team", string_value("payments")),
            kv(
                "log.file.path",
                string_value("/var/log/pods/shop_cart-31_uid/app/0.log")
            ),
            kv("logtap.source_id", string_value("000000000000001f")),
            kv("logtap.source.kind", string_value("cri_file")),
            kv("logtap.source.config", string_value("pods")),
        ]
    );
    let scope = &logs[0].scope_logs[0];
    assert_eq!(scope.scope.as_ref().unwrap().name, "logtap");
    let [first, second] = &scope.log_records[..] else {
        panic!("two records: {:?}", scope.log_records)
    };
    assert_eq!(first.time_unix_nano, 1_760_000_000_000_004_096);
    assert!(first.observed_time_unix_nano > first.time_unix_nano);
    assert_eq!(first.severity_text, "error");
    assert_eq!(first.severity_number, 17, "SEVERITY_NUMBER_ERROR");
    assert_eq!(
        first.body,
        string_value(r#"{"level":"error","msg":"boom"}"#)
    );
    assert_eq!(
        first.attributes,
        vec![
            kv("level", string_value("error")),
            kv("msg", string_value("boom")),
            kv("log.iostream", string_value("stderr")),
            kv(
                "logtap.offset",
                Some(AnyValue {
                    value: Some(Value::IntValue(4096))
                })
            ),
            kv(
                "logtap.package_id",
                Some(AnyValue {
                    value: Some(Value::IntValue(77))
                })
            ),
            kv(
                "logtap.flags",
                Some(AnyValue {
                    value: Some(Value::ArrayValue(
                        opentelemetry_proto::tonic::common::v1::ArrayValue {
                            values: vec![string_value("parse_failed").unwrap()],
                        }
                    ))
                })
            ),
        ]
    );
    // Not UTF-8: a bytes value with the exact bytes, never a lossy string.
    assert_eq!(
        second.body,
        Some(AnyValue {
            value: Some(Value::BytesValue(b"\xff\xfe raw \x00".to_vec()))
        })
    );
    assert_eq!(second.severity_number, 0);
    assert_eq!(str_attr(&second.attributes, "log.iostream"), Some("stdout"));
    assert_eq!(int_attr(&second.attributes, "logtap.offset"), Some(5000));
}

#[test]
fn gzip_requests_decode_to_the_same_records() {
    let receiver = OtlpReceiver::start();
    let mut config = config(&receiver.endpoint());
    config.compression = OtlpCompression::Gzip;
    let mut d = destination(&config);
    let source = cri_source(2);
    let window = [
        package(
            1,
            &source,
            1,
            "gzip line with some repetition repetition",
            200,
        ),
        package(2, &source, 2, "second package", 50),
    ];
    assert_eq!(d.send(&window).unwrap(), Delivered::default());
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].header("content-encoding"), Some("gzip"));
    assert_eq!(receiver.accepted_bodies(), bodies(&window));
    // Both packages of the source share one resource.
    assert_eq!(received[0].request().resource_logs.len(), 1);
    let raw_len: usize = bodies(&window).iter().map(Vec::len).sum();
    assert!(
        received[0].body_len < raw_len,
        "{} compressed bytes for {raw_len} bytes of bodies",
        received[0].body_len
    );
}

#[test]
fn empty_window_sends_no_request() {
    let receiver = OtlpReceiver::start();
    let mut d = destination(&config(&receiver.endpoint()));
    let source = cri_source(3);
    let window = [
        package(1, &source, 1, "x", 0),
        package(2, &source, 2, "y", 0),
    ];
    assert_eq!(d.send(&window).unwrap(), Delivered::default());
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        receiver.received().is_empty(),
        "no request for a window without records"
    );
}

#[test]
fn each_answer_maps_to_its_outcome() {
    let receiver = OtlpReceiver::start();
    let mut d = destination(&config(&receiver.endpoint()));
    let source = cri_source(4);
    let window = [
        package(1, &source, 1, "a", 3),
        package(2, &source, 2, "b", 2),
    ];

    receiver.script([
        Reply::retry_after(503, "7"),
        Reply::retry_after(429, "Wed, 21 Oct 2015 07:28:00 GMT"),
        Reply::status(429),
        Reply::status(502),
        Reply::status(504),
        Reply::status(408),
        Reply::status(500),
        Reply::status(401),
        Reply::Drop,
    ]);
    let mut errors = Vec::new();
    for _ in 0..9 {
        let e = d.send(&window).unwrap_err();
        errors.push((e.reason, e.retry_after));
    }
    assert_eq!(
        errors,
        vec![
            ("unavailable", Some(Duration::from_secs(7))),
            ("throttled", Some(Duration::ZERO)),
            ("throttled", None),
            ("unavailable", None),
            ("unavailable", None),
            ("timeout", None),
            ("server_error", None),
            ("unauthorized", None),
            ("disconnected", None),
        ]
    );

    // A partial success counts the refused records and is not retried.
    receiver.script([Reply::Partial {
        rejected: 2,
        message: "2 records too old".into(),
    }]);
    assert_eq!(
        d.send(&window).unwrap(),
        Delivered {
            rejected: vec![],
            rejected_unidentified: 2,
        }
    );

    // A 400 rejects every record of the window for good, in one request.
    receiver.script([Reply::Status {
        code: 400,
        retry_after: None,
        body: "invalid body".into(),
    }]);
    let before = receiver.received().len();
    let delivered = d.send(&window).unwrap();
    assert_eq!(delivered.rejected_unidentified, 0);
    assert_eq!(
        delivered.rejected,
        (0..2)
            .map(|package| Rejected {
                package,
                records: None,
                reason: "bad_request",
                detail: "HTTP 400: invalid body".into(),
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(
        receiver.received().len(),
        before + 1,
        "a 400 is not retried"
    );

    // Then success.
    assert_eq!(d.send(&window).unwrap(), Delivered::default());
    let statuses: Vec<u16> = receiver.received().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![503, 429, 429, 502, 504, 408, 500, 401, 0, 200, 400, 200]
    );
}

#[test]
fn timeout_and_refused_connection_are_retried() {
    let receiver = OtlpReceiver::start();
    let mut config = config(&receiver.endpoint());
    config.timeout = Duration::from_millis(300);
    let mut d = destination(&config);
    let source = cri_source(5);
    let window = [package(1, &source, 1, "slow", 1)];
    receiver.script([Reply::Delay(Duration::from_secs(2))]);
    let e = d.send(&window).unwrap_err();
    assert_eq!(e.reason, "timeout", "{e}");

    let endpoint = receiver.endpoint();
    drop(receiver);
    let mut d = destination(&self::config(&endpoint));
    let e = d.send(&window).unwrap_err();
    assert_eq!(e.reason, "disconnected", "{e}");
}

#[test]
fn too_large_requests_are_split_and_a_single_oversized_record_rejected() {
    let receiver = OtlpReceiver::start();
    receiver.max_records(Some(3));
    let mut d = destination(&config(&receiver.endpoint()));
    let source = cri_source(6);
    let window = [
        package(1, &source, 1, "a", 4),
        package(2, &source, 2, "b", 1),
        package(3, &source, 3, "c", 5),
    ];
    assert_eq!(d.send(&window).unwrap(), Delivered::default());
    // Every record exactly once, in window order.
    assert_eq!(receiver.accepted_bodies(), bodies(&window));
    assert!(receiver.received().iter().any(|r| r.status == 413));

    // One record over the receiver's limit: rejected as too large, the rest delivered.
    let receiver = OtlpReceiver::start();
    receiver.max_body_bytes(Some(4000));
    let mut d = destination(&config(&receiver.endpoint()));
    let mut big = package(1, &source, 1, "small", 4);
    big.package.records[2].body = Bytes::from(vec![b'x'; 10_000]);
    let window = [big];
    let delivered = d.send(&window).unwrap();
    assert_eq!(delivered.rejected_unidentified, 0);
    assert_eq!(delivered.rejected.len(), 1);
    assert_eq!(delivered.rejected[0].package, 0);
    assert_eq!(delivered.rejected[0].records, Some(vec![2]));
    assert_eq!(delivered.rejected[0].reason, "too_large");
    assert_eq!(
        receiver.accepted_bodies(),
        vec![
            b"small 0".to_vec(),
            b"small 1".to_vec(),
            b"small 3".to_vec(),
        ]
    );
}

#[test]
fn a_split_window_resumes_after_a_failure_without_resending() {
    let receiver = OtlpReceiver::start();
    receiver.max_records(Some(2));
    let mut d = destination(&config(&receiver.endpoint()));
    let source = cri_source(7);
    let window = [
        package(1, &source, 1, "a", 4),
        package(2, &source, 2, "b", 4),
    ];
    // 8 records: 413, then halves of 4 (413) → 2 + 2 (ok, partial), then 4 (413) → 2
    // (503: the call fails).
    receiver.script([
        Reply::Ok,
        Reply::Partial {
            rejected: 1,
            message: "one".into(),
        },
        Reply::retry_after(503, "1"),
    ]);
    let e = d.send(&window).unwrap_err();
    assert_eq!(e.reason, "unavailable");
    assert_eq!(receiver.accepted_bodies(), bodies(&window)[..4].to_vec());
    // The same window again: only what was not delivered is sent, and the partial
    // success of the first call is still counted.
    assert_eq!(
        d.send(&window).unwrap(),
        Delivered {
            rejected: vec![],
            rejected_unidentified: 1,
        }
    );
    assert_eq!(receiver.accepted_bodies(), bodies(&window));

    // Another window starts from scratch.
    let other = [package(3, &source, 3, "c", 2)];
    assert_eq!(d.send(&other).unwrap(), Delivered::default());
}

#[test]
fn records_of_many_sources_keep_their_resource() {
    let receiver = OtlpReceiver::start();
    let mut d = destination(&config(&receiver.endpoint()));
    let (a, b) = (cri_source(0xa), cri_source(0xb));
    let window = [
        package(1, &a, 1, "a", 2),
        package(2, &b, 1, "b", 2),
        package(3, &a, 2, "a2", 1),
    ];
    d.send(&window).unwrap();
    let received = receiver.received();
    let records = received[0].records();
    let seen: Vec<(String, String, i64)> = records
        .iter()
        .map(|(resource, record)| {
            (
                str_attr(resource, "logtap.source_id").unwrap().to_owned(),
                String::from_utf8(body_bytes(record)).unwrap(),
                int_attr(&record.attributes, "logtap.package_id").unwrap(),
            )
        })
        .collect();
    let id = |n: u64| format!("{n:016x}");
    assert_eq!(
        seen,
        vec![
            (id(0xa), "a 0".into(), 1),
            (id(0xa), "a 1".into(), 1),
            (id(0xa), "a2 0".into(), 2),
            (id(0xb), "b 0".into(), 1),
            (id(0xb), "b 1".into(), 1),
        ]
    );
}

/// Fluent Bit v5 (`../shared/peers/fluent-bit`, see `common/fluent_bit.rs`), started
/// with its `opentelemetry` input on 127.0.0.1, a `file` output, and an
/// `opentelemetry` output to `relay` (its file output writes record bodies only; what
/// it forwards shows the attributes it understood).
struct FluentBit {
    peer: common::fluent_bit::FluentBit,
    port: u16,
    out: PathBuf,
    _out_dir: tempfile::TempDir,
}

impl FluentBit {
    fn start(relay: &OtlpReceiver) -> FluentBit {
        let out_dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let peer = common::fluent_bit::FluentBit::start(&format!(
            "[INPUT]\n    Name opentelemetry\n    Listen 127.0.0.1\n    Port {port}\n\
             [OUTPUT]\n    Name file\n    Match *\n    Path {}\n    File logs.out\n\
             [OUTPUT]\n    Name opentelemetry\n    Match *\n    Host 127.0.0.1\n    Port {}\n\
             \x20   logs_uri /v1/logs\n    http2 off\n",
            out_dir.path().display(),
            relay.addr().port(),
        ));
        common::wait_for(WAIT, "fluent-bit listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        FluentBit {
            peer,
            port,
            out: out_dir.path().join("logs.out"),
            _out_dir: out_dir,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn log(&self) -> String {
        self.peer.log()
    }
}

#[test]
fn fluent_bit_accepts_our_requests() {
    let relay = OtlpReceiver::start();
    let fb = FluentBit::start(&relay);
    for compression in [OtlpCompression::None, OtlpCompression::Gzip] {
        let mut config = config(&format!("http://127.0.0.1:{}", fb.port));
        config.compression = compression;
        let mut d = destination(&config);
        let source = cri_source(0x42);
        let tag = format!("{compression:?}").to_lowercase();
        let window = [
            package(1, &source, 1, &format!("fluent-{tag} line"), 50),
            package(2, &source, 2, &format!("fluent-{tag} more"), 50),
        ];
        let delivered = d.send(&window);
        let delivered = match delivered {
            Ok(d) => d,
            Err(e) => panic!("fluent-bit refused the request: {e}\n{}", fb.log()),
        };
        assert_eq!(delivered, Delivered::default());
        common::wait_for(WAIT, "fluent-bit's file output to have every line", || {
            let out = fb.output();
            (0..50).all(|i| {
                out.contains(&format!("fluent-{tag} line {i}\""))
                    && out.contains(&format!("fluent-{tag} more {i}\""))
            })
        });
    }
    // What Fluent Bit understood of our requests, as it forwards them: every record
    // with its resource and attributes.
    let received = relay.wait_for(WAIT, "fluent-bit to forward 200 records", |r| {
        r.iter().map(|r| r.record_count()).sum::<usize>() >= 200
    });
    let records: Vec<_> = received.iter().flat_map(|r| r.records()).collect();
    assert_eq!(records.len(), 200, "each record once");
    for (resource, record) in &records {
        assert_eq!(
            str_attr(resource, "k8s.pod.name"),
            Some("cart"),
            "{resource:?}"
        );
        assert_eq!(str_attr(resource, "k8s.namespace.name"), Some("shop"));
        assert_eq!(
            str_attr(resource, "logtap.source_id"),
            Some("0000000000000042")
        );
        assert_eq!(str_attr(&record.attributes, "log.iostream"), Some("stdout"));
        assert!(
            int_attr(&record.attributes, "logtap.offset").is_some(),
            "{record:?}"
        );
    }
}

/// The real agent with an otlp sink, against our receiver answering 503 with
/// `Retry-After`, then 429, then a partial success, then 400 for one request: each is
/// counted by reason in `/metrics`, the 400's records are dead-lettered and never sent
/// again, and everything else arrives.
#[test]
fn agent_ships_through_the_fault_sequence() {
    let receiver = OtlpReceiver::start();
    receiver.script([
        Reply::retry_after(503, "1"),
        Reply::status(429),
        Reply::Partial {
            rejected: 2,
            message: "2 records refused".into(),
        },
    ]);
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let file = logs.join("app.log");
    let dead_letter = dir.path().join("rejected.ndjson");
    let write = |from: u64, to: u64| {
        let text: String = (from..to).map(|i| format!("otlp line seq={i}\n")).collect();
        let mut f = common::open_append(&file);
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    };
    write(0, 100);
    let config = format!(
        "sources:\n  - name: app\n    include: [\"{}/*.log\"]\n    sink: otel\n\
         sinks:\n  otel:\n    type: otlp\n    endpoint: {}\n    timeout: 5s\n\
         \x20   dead_letter: {}\n",
        logs.display(),
        receiver.endpoint(),
        dead_letter.display()
    );
    let agent = common::Agent::start(&dir.path().join("data"), &config);
    let ok = |r: &otlp_receiver::Received| (200..300).contains(&r.status);

    // 503, 429, then the same window accepted with a partial success.
    let received = receiver.wait_for(WAIT, "the partial success", |r| {
        r.iter().any(|r| r.partial_rejected > 0)
    });
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![503, 429, 200],
        "{}",
        agent.log()
    );
    assert!(
        received[1].at.duration_since(received[0].at) >= Duration::from_millis(900),
        "Retry-After: 1 honoured"
    );
    let first: Vec<Vec<u8>> = received[2]
        .records()
        .iter()
        .map(|(_, l)| body_bytes(l))
        .collect();
    assert_eq!(
        received[0]
            .records()
            .iter()
            .map(|(_, l)| body_bytes(l))
            .collect::<Vec<_>>(),
        first,
        "the same window is sent again"
    );

    // The next request is refused with 400.
    receiver.script([Reply::Status {
        code: 400,
        retry_after: None,
        body: "bad payload".into(),
    }]);
    write(100, 200);
    let received = receiver.wait_for(WAIT, "the 400", |r| r.iter().any(|r| r.status == 400));
    let refused = received.iter().find(|r| r.status == 400).unwrap();
    let refused_bodies: Vec<Vec<u8>> = refused
        .records()
        .iter()
        .map(|(_, l)| body_bytes(l))
        .collect();
    assert!(!refused_bodies.is_empty());

    // Then everything else is delivered.
    write(200, 300);
    let all: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("otlp line seq={i}").into_bytes())
        .collect();
    let received = receiver.wait_for(WAIT, "every line delivered or refused", |r| {
        let mut seen: Vec<Vec<u8>> = r
            .iter()
            .filter(|r| ok(r) || r.status == 400)
            .flat_map(|r| {
                r.records()
                    .into_iter()
                    .map(|(_, l)| body_bytes(l))
                    .collect::<Vec<_>>()
            })
            .collect();
        seen.sort();
        seen.dedup();
        seen.len() == all.len()
    });
    // The 400's records were never sent again; the rest arrived exactly once, in order.
    let delivered: Vec<Vec<u8>> = received
        .iter()
        .filter(|r| ok(r))
        .flat_map(|r| {
            r.records()
                .into_iter()
                .map(|(_, l)| body_bytes(l))
                .collect::<Vec<_>>()
        })
        .collect();
    let expected: Vec<Vec<u8>> = all
        .iter()
        .filter(|b| !refused_bodies.contains(b))
        .cloned()
        .collect();
    assert_eq!(delivered, expected);
    assert_eq!(received.iter().filter(|r| r.status == 400).count(), 1);
    // The attributes of a file source.
    let (resource, record) = received[2].records()[0];
    assert_eq!(
        str_attr(resource, "log.file.path"),
        Some(file.to_str().unwrap())
    );
    assert_eq!(str_attr(resource, "logtap.source.kind"), Some("file"));
    assert_eq!(str_attr(resource, "logtap.source.config"), Some("app"));
    assert_eq!(int_attr(&record.attributes, "logtap.offset"), Some(0));
    assert_eq!(
        received[2].header("content-encoding"),
        Some("gzip"),
        "gzip by default"
    );

    // Counted by reason.
    let refused_count = refused_bodies.len() as f64;
    let mut text = String::new();
    common::wait_for(WAIT, "the forwarder's counters", || {
        text = agent.metrics();
        common::metric(
            &text,
            "logtap_forward_acked_records_total",
            &[("sink", "otel")],
        ) + common::metric(
            &text,
            "logtap_forward_rejected_records_total",
            &[("sink", "otel")],
        ) >= 300.0
    });
    let m = |name: &str, labels: &[(&str, &str)]| common::metric(&text, name, labels);
    assert_eq!(
        m(
            "logtap_forward_retries_total",
            &[("sink", "otel"), ("reason", "unavailable")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        m(
            "logtap_forward_retries_total",
            &[("sink", "otel"), ("reason", "throttled")]
        ),
        1.0
    );
    assert_eq!(m("logtap_forward_retries_total", &[("sink", "otel")]), 2.0);
    assert_eq!(
        m(
            "logtap_forward_rejected_records_total",
            &[("sink", "otel"), ("reason", "partial_success")]
        ),
        2.0
    );
    assert_eq!(
        m(
            "logtap_forward_rejected_records_total",
            &[("sink", "otel"), ("reason", "bad_request")]
        ),
        refused_count
    );
    assert_eq!(
        m("logtap_forward_acked_records_total", &[("sink", "otel")]),
        300.0 - 2.0 - refused_count
    );
    assert_eq!(
        m("logtap_dropped_lines_total", &[("reason", "sink_rejected")]),
        2.0 + refused_count
    );
    // The 400's records are in the dead-letter file, with their reason.
    let dead: Vec<common::Value> = std::fs::read_to_string(&dead_letter)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), refused_bodies.len());
    for (d, body) in dead.iter().zip(&refused_bodies) {
        assert_eq!(d["reject_reason"], "bad_request", "{d}");
        assert_eq!(common::body_bytes(d), *body);
    }
}

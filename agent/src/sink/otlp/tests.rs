use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use prost::Message;

use super::request::{Part, RequestBuilder, severity_number, skip_records, split_parts};
use super::*;
use crate::batch::codec::{Package, Record};
use crate::frame::{LineFlags, Stream};
use crate::source::{SourceId, SourceInfo, SourceKind};
use opentelemetry_proto::tonic::logs::v1::SeverityNumber;

fn source(id: u64, kind: SourceKind, path: &str) -> Arc<SourceInfo> {
    Arc::new(SourceInfo {
        id: SourceId(id),
        kind,
        path: path.into(),
        config_name: Arc::from("pods"),
    })
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn record(offset: u64, body: &[u8], fields: &[(&str, &str)]) -> Record {
    Record {
        offset,
        timestamp_ns: 1_700_000_000_000_000_000 + offset as i64,
        stream: Stream::Stdout,
        flags: LineFlags::empty(),
        body: Bytes::copy_from_slice(body),
        fields: fields.iter().map(|(k, v)| (b(k), b(v))).collect(),
    }
}

fn package(
    seq: u64,
    source: &Arc<SourceInfo>,
    package_id: u64,
    source_fields: &[(&str, &str)],
    records: Vec<Record>,
) -> SpooledPackage {
    SpooledPackage {
        seq,
        source: source.clone(),
        package_id,
        package: Package {
            source_fields: source_fields.iter().map(|(k, v)| (b(k), b(v))).collect(),
            records,
        },
    }
}

fn s(v: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(Value::StringValue(v.into())),
    })
}

fn int(v: i64) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(Value::IntValue(v)),
    })
}

fn array(values: &[&str]) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(Value::ArrayValue(
            opentelemetry_proto::tonic::common::v1::ArrayValue {
                values: values.iter().map(|v| s(v).unwrap()).collect(),
            },
        )),
    })
}

fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value,
        ..Default::default()
    }
}

const POD_FIELDS: [(&str, &str); 9] = [
    ("k8s.pod", "cart-7d9"),
    ("k8s.namespace", "shop"),
    ("k8s.container", "app"),
    ("k8s.pod_uid", "0b5e-uid"),
    ("k8s.node", "node-a"),
    ("container.id", "cid-1"),
    ("container.image", "registry.local:5000/shop/cart:2.1"),
    ("k8s.pod.label.app", "cart"),
    ("k8s.pod.annotation.team", "payments"),
];

fn build(window: &[SpooledPackage], parts: &[Part]) -> ExportLogsServiceRequest {
    let mut builder = RequestBuilder::default();
    builder.encode(window, parts, 42);
    let reference = request::request_of(window, parts, 42);
    assert_eq!(
        builder.body(),
        reference.encode_to_vec(),
        "the same bytes as prost's own encoding of the same messages"
    );
    let decoded = ExportLogsServiceRequest::decode(builder.body()).unwrap();
    assert_eq!(decoded, reference, "encoding round-trips");
    decoded
}

#[test]
fn resource_and_record_attributes_are_exact() {
    let cri = source(
        0xab,
        SourceKind::CriFile,
        "/var/log/pods/shop_cart/app/0.log",
    );
    let mut r0 = record(
        100,
        b"{\"level\":\"WARN\",\"msg\":\"slow\"}",
        &[("level", "WARN"), ("msg", "slow")],
    );
    r0.stream = Stream::Stderr;
    r0.flags = LineFlags::TRUNCATED | LineFlags::UNTERMINATED;
    let r1 = record(200, b"plain line", &[]);
    let window = [package(7, &cri, 3, &POD_FIELDS, vec![r0, r1])];
    let request = build(&window, &request::window_parts(&window));

    assert_eq!(request.resource_logs.len(), 1);
    let resource = &request.resource_logs[0];
    assert_eq!(
        resource.resource.as_ref().unwrap().attributes,
        vec![
            kv("k8s.pod.name", s("cart-7d9")),
            kv("k8s.namespace.name", s("shop")),
            kv("k8s.container.name", s("app")),
            kv("k8s.pod.uid", s("0b5e-uid")),
            kv("k8s.node.name", s("node-a")),
            kv("container.id", s("cid-1")),
            kv("container.image.name", s("registry.local:5000/shop/cart")),
            kv("container.image.tags", array(&["2.1"])),
            kv("k8s.pod.label.app", s("cart")),
            kv("k8s.pod.annotation.team", s("payments")),
            kv("log.file.path", s("/var/log/pods/shop_cart/app/0.log")),
            kv("logtap.source_id", s("00000000000000ab")),
            kv("logtap.source.kind", s("cri_file")),
            kv("logtap.source.config", s("pods")),
        ]
    );
    assert_eq!(resource.scope_logs.len(), 1);
    let scope = &resource.scope_logs[0];
    assert_eq!(scope.scope.as_ref().unwrap().name, "logtap");
    let [first, second] = &scope.log_records[..] else {
        panic!("two records: {:?}", scope.log_records)
    };
    assert_eq!(first.time_unix_nano, 1_700_000_000_000_000_100);
    assert_eq!(first.observed_time_unix_nano, 42);
    assert_eq!(first.body, s("{\"level\":\"WARN\",\"msg\":\"slow\"}"));
    assert_eq!(first.severity_text, "WARN");
    assert_eq!(first.severity_number, SeverityNumber::Warn as i32);
    assert_eq!(
        first.attributes,
        vec![
            kv("level", s("WARN")),
            kv("msg", s("slow")),
            kv("log.iostream", s("stderr")),
            kv("logtap.offset", int(100)),
            kv("logtap.package_id", int(3)),
            kv("logtap.flags", array(&["truncated", "unterminated"])),
        ]
    );
    assert_eq!(second.body, s("plain line"));
    assert_eq!(second.severity_text, "");
    assert_eq!(second.severity_number, 0);
    assert_eq!(
        second.attributes,
        vec![
            kv("log.iostream", s("stdout")),
            kv("logtap.offset", int(200)),
            kv("logtap.package_id", int(3)),
        ]
    );
}

#[test]
fn non_utf8_body_and_field_stay_exact_bytes() {
    let file = source(1, SourceKind::File, "/var/log/app.log");
    let mut r = record(0, b"caf\xe9 \xff\x00end", &[]);
    r.stream = Stream::None;
    r.fields = vec![(b("raw"), Bytes::from_static(b"\xfe\xfd"))];
    let window = [package(1, &file, 9, &[], vec![r])];
    let request = build(&window, &request::window_parts(&window));
    let record = &request.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(
        record.body,
        Some(AnyValue {
            value: Some(Value::BytesValue(b"caf\xe9 \xff\x00end".to_vec()))
        })
    );
    assert_eq!(
        record.attributes,
        vec![
            kv(
                "raw",
                Some(AnyValue {
                    value: Some(Value::BytesValue(vec![0xfe, 0xfd]))
                })
            ),
            kv("logtap.offset", int(0)),
            kv("logtap.package_id", int(9)),
        ]
    );
    let resource = &request.resource_logs[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes;
    assert_eq!(
        resource,
        &vec![
            kv("log.file.path", s("/var/log/app.log")),
            kv("logtap.source_id", s("0000000000000001")),
            kv("logtap.source.kind", s("file")),
            kv("logtap.source.config", s("pods")),
        ]
    );
}

#[test]
fn packages_of_a_source_share_a_resource_in_window_order() {
    let a = source(0xa, SourceKind::Capture, "");
    let c = source(0xc, SourceKind::Capture, "");
    let window = [
        package(1, &a, 1, &[("k8s.pod", "a")], vec![record(0, b"a0", &[])]),
        package(2, &c, 1, &[("k8s.pod", "c")], vec![record(0, b"c0", &[])]),
        package(3, &a, 2, &[("k8s.pod", "a")], vec![record(3, b"a1", &[])]),
        // Metadata arrived later: same source, other fields, its own resource.
        package(
            4,
            &a,
            3,
            &[("k8s.pod", "a"), ("container.id", "x")],
            vec![record(6, b"a2", &[])],
        ),
        package(5, &c, 2, &[("k8s.pod", "c")], vec![]),
    ];
    let request = build(&window, &request::window_parts(&window));
    let bodies: Vec<Vec<String>> = request
        .resource_logs
        .iter()
        .map(|r| {
            r.scope_logs[0]
                .log_records
                .iter()
                .map(|l| match &l.body.as_ref().unwrap().value {
                    Some(Value::StringValue(s)) => s.clone(),
                    other => panic!("{other:?}"),
                })
                .collect()
        })
        .collect();
    assert_eq!(bodies, vec![vec!["a0", "a1"], vec!["c0"], vec!["a2"]]);
    // Capture sources have no file path.
    let attrs = &request.resource_logs[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes;
    assert!(attrs.iter().all(|kv| kv.key != "log.file.path"));
    assert!(attrs.contains(&kv("logtap.source.kind", s("capture"))));
}

#[test]
fn reused_records_carry_nothing_over() {
    let file = source(1, SourceKind::CriFile, "/p");
    let mut big = record(0, b"first", &[("level", "error"), ("a", "1"), ("b", "2")]);
    big.flags = LineFlags::MULTILINE;
    let first = [package(1, &file, 1, &[], vec![big])];
    let mut small = record(9, b"\xff", &[]);
    small.stream = Stream::None;
    let second = [package(2, &file, 2, &[], vec![small])];
    let mut builder = RequestBuilder::default();
    builder.encode(&first, &request::window_parts(&first), 1);
    builder.encode(&second, &request::window_parts(&second), 2);
    let decoded = ExportLogsServiceRequest::decode(builder.body()).unwrap();
    let fresh = build(&second, &request::window_parts(&second));
    // Observed times differ (2 vs 42); everything else is what a fresh build gives.
    let mut decoded_record = decoded.resource_logs[0].scope_logs[0].log_records[0].clone();
    decoded_record.observed_time_unix_nano = 42;
    assert_eq!(
        decoded_record,
        fresh.resource_logs[0].scope_logs[0].log_records[0]
    );
    assert_eq!(decoded_record.severity_number, 0);
}

#[test]
fn image_forms() {
    let attrs = |image: &str| {
        let src = source(1, SourceKind::Capture, "");
        request::resource_attributes(&src, &[(b("container.image"), b(image))])
            .into_iter()
            .filter(|kv| kv.key.starts_with("container.image"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        attrs("busybox"),
        vec![kv("container.image.name", s("busybox"))]
    );
    assert_eq!(
        attrs("localhost:5000/cart"),
        vec![kv("container.image.name", s("localhost:5000/cart"))]
    );
    assert_eq!(
        attrs("docker.io/library/nginx:1.27"),
        vec![
            kv("container.image.name", s("docker.io/library/nginx")),
            kv("container.image.tags", array(&["1.27"])),
        ]
    );
    assert_eq!(
        attrs("ghcr.io/x/y@sha256:abcd"),
        vec![
            kv("container.image.name", s("ghcr.io/x/y")),
            kv(
                "container.image.repo_digests",
                array(&["ghcr.io/x/y@sha256:abcd"])
            ),
        ]
    );
    assert_eq!(
        attrs("x/y:2@sha256:ab"),
        vec![
            kv("container.image.name", s("x/y")),
            kv("container.image.tags", array(&["2"])),
            kv("container.image.repo_digests", array(&["x/y:2@sha256:ab"])),
        ]
    );
}

#[test]
fn severity_names() {
    for (name, number) in [
        ("TRACE", SeverityNumber::Trace),
        ("debug", SeverityNumber::Debug),
        ("Info", SeverityNumber::Info),
        ("notice", SeverityNumber::Info2),
        ("warning", SeverityNumber::Warn),
        ("WARN", SeverityNumber::Warn),
        ("err", SeverityNumber::Error),
        ("ERROR", SeverityNumber::Error),
        ("fatal", SeverityNumber::Fatal),
        ("panic", SeverityNumber::Fatal),
        ("crit", SeverityNumber::Fatal2),
        ("alert", SeverityNumber::Fatal3),
        ("emerg", SeverityNumber::Fatal4),
        (" info ", SeverityNumber::Info),
        ("verbose", SeverityNumber::Unspecified),
    ] {
        assert_eq!(severity_number(name), number, "{name}");
    }
}

#[test]
fn severity_field_precedence() {
    let file = source(1, SourceKind::File, "/p");
    let r = record(0, b"x", &[("severity", "debug"), ("level", "error")]);
    let window = [package(1, &file, 1, &[], vec![r])];
    let request = build(&window, &request::window_parts(&window));
    let record = &request.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(record.severity_text, "error", "`level` comes first");
    assert_eq!(record.severity_number, SeverityNumber::Error as i32);
}

#[test]
fn splitting_and_skipping_parts() {
    let parts = vec![
        Part {
            package: 0,
            records: 0..3,
        },
        Part {
            package: 2,
            records: 0..2,
        },
    ];
    let (a, b) = split_parts(&parts);
    assert_eq!(
        a,
        vec![Part {
            package: 0,
            records: 0..2
        }]
    );
    assert_eq!(
        b,
        vec![
            Part {
                package: 0,
                records: 2..3
            },
            Part {
                package: 2,
                records: 0..2
            }
        ]
    );
    let (a, b) = split_parts(&b);
    assert_eq!(
        a,
        vec![Part {
            package: 0,
            records: 2..3
        }]
    );
    assert_eq!(
        b,
        vec![Part {
            package: 2,
            records: 0..2
        }]
    );
    assert_eq!(skip_records(parts.clone(), 0), parts);
    assert_eq!(
        skip_records(parts.clone(), 4),
        vec![Part {
            package: 2,
            records: 1..2
        }]
    );
    assert_eq!(skip_records(parts, 5), vec![]);
}

#[test]
fn endpoint_validation() {
    assert_eq!(
        logs_url("http://127.0.0.1:4318").unwrap(),
        "http://127.0.0.1:4318/v1/logs"
    );
    assert_eq!(
        logs_url("https://otel.example:4318/").unwrap(),
        "https://otel.example:4318/v1/logs"
    );
    assert_eq!(
        logs_url("http://gw/otlp").unwrap(),
        "http://gw/otlp/v1/logs"
    );
    assert_eq!(
        logs_url("http://gw:4318/v1/logs").unwrap(),
        "http://gw:4318/v1/logs"
    );
    for bad in [
        "127.0.0.1:4318",
        "grpc://h:4317",
        "ftp://h",
        "http://",
        "http://h/?a=1",
        "",
    ] {
        let e = logs_url(bad).unwrap_err();
        assert!(e.contains("otlp endpoint"), "{bad}: {e}");
    }
    assert!(
        logs_url("localhost:4318")
            .unwrap_err()
            .contains("must start with http:// or https://")
    );
}

fn config(endpoint: &str) -> OtlpConfig {
    use crate::config::network::{ForwardConfig, SpoolConfig, WhenFull};
    OtlpConfig {
        endpoint: endpoint.into(),
        compression: OtlpCompression::None,
        headers: Default::default(),
        timeout: Duration::from_secs(1),
        forward: ForwardConfig {
            spool: SpoolConfig {
                path: "/nonexistent".into(),
                max_bytes: 1 << 20,
                segment_bytes: 1 << 16,
                when_full: WhenFull::Block,
                compression: crate::config::network::BlockCompression::Lz4,
            },
            dead_letter: None,
            max_window_bytes: 1 << 20,
            max_window_packages: 64,
            drain_timeout: Duration::from_secs(1),
        },
    }
}

#[test]
fn header_validation() {
    let mut c = config("http://127.0.0.1:1");
    c.headers.insert("authorization".into(), "Bearer x".into());
    assert!(OtlpDestination::new(&c).is_ok());
    c.headers.insert("bad header".into(), "x".into());
    assert!(
        OtlpDestination::new(&c)
            .err()
            .unwrap()
            .contains("bad header")
    );
    let mut c = config("http://127.0.0.1:1");
    c.headers.insert("Content-Type".into(), "text/plain".into());
    assert!(
        OtlpDestination::new(&c)
            .err()
            .unwrap()
            .contains("set by logtap")
    );
    let mut c = config("http://127.0.0.1:1");
    c.headers.insert("x-tenant".into(), "a\nb".into());
    assert!(OtlpDestination::new(&c).is_err());
}

#[test]
fn empty_window_sends_nothing() {
    // Port 1 refuses connections: any request would be an error.
    let Ok(mut d) = OtlpDestination::new(&config("http://127.0.0.1:1")) else {
        panic!("valid config")
    };
    let src = source(1, SourceKind::File, "/p");
    let window = [
        package(1, &src, 1, &[], vec![]),
        package(2, &src, 2, &[], vec![]),
    ];
    assert_eq!(d.send(&window).unwrap(), Delivered::default());
    let window = [package(3, &src, 3, &[], vec![record(0, b"x", &[])])];
    let e = d.send(&window).unwrap_err();
    assert_eq!(e.reason, "disconnected", "{e}");
}

#[test]
fn statuses() {
    let accepted = |rejected| Answer::Accepted {
        rejected,
        message: String::new(),
    };
    assert_eq!(classify(200, None, b"", false).unwrap(), accepted(0));
    assert_eq!(
        classify(204, None, b"not protobuf \xff", false).unwrap(),
        accepted(0)
    );
    let partial = ExportLogsServiceResponse {
        partial_success: Some(ExportLogsPartialSuccess {
            rejected_log_records: 3,
            error_message: "too old".into(),
        }),
    }
    .encode_to_vec();
    assert_eq!(
        classify(200, None, &partial, false).unwrap(),
        (Answer::Accepted {
            rejected: 3,
            message: "too old".into()
        })
    );
    assert_eq!(
        classify(
            200,
            None,
            br#"{"partialSuccess":{"rejectedLogRecords":"2","errorMessage":"m"}}"#,
            true
        )
        .unwrap(),
        (Answer::Accepted {
            rejected: 2,
            message: "m".into()
        })
    );
    assert_eq!(classify(200, None, b"{}", true).unwrap(), accepted(0));
    let reason = |status| match classify(status, Some(Duration::from_secs(5)), b"", false) {
        Ok(Answer::Rejected { reason, .. }) => format!("rejected {reason}"),
        Ok(Answer::TooLarge { .. }) => "too large".into(),
        Ok(Answer::Accepted { .. }) => "accepted".into(),
        Err(e) => {
            assert_eq!(e.retry_after, Some(Duration::from_secs(5)));
            format!("error {}", e.reason)
        }
    };
    for (status, expected) in [
        (400, "rejected bad_request"),
        (415, "rejected bad_request"),
        (422, "rejected bad_request"),
        (413, "too large"),
        (401, "error unauthorized"),
        (403, "error unauthorized"),
        (404, "error not_found"),
        (408, "error timeout"),
        (429, "error throttled"),
        (502, "error unavailable"),
        (503, "error unavailable"),
        (504, "error unavailable"),
        (500, "error server_error"),
        (507, "error server_error"),
        (302, "error unexpected_status"),
        (101, "error unexpected_status"),
    ] {
        assert_eq!(reason(status), expected, "HTTP {status}");
    }
}

#[test]
fn error_detail_is_printable_and_bounded() {
    let Ok(Answer::Rejected { detail, .. }) =
        classify(400, None, b"\x08\x03\x12\x07invalid", false)
    else {
        panic!()
    };
    assert_eq!(detail, "HTTP 400: invalid");
    let Ok(Answer::Rejected { detail, .. }) = classify(400, None, &[b'a'; 10_000], false) else {
        panic!()
    };
    assert_eq!(detail.len(), "HTTP 400: ".len() + MAX_DETAIL_BYTES);
    let Ok(Answer::Rejected { detail, .. }) = classify(400, None, b"", false) else {
        panic!()
    };
    assert_eq!(detail, "HTTP 400: (empty answer)");
}

#[test]
fn retry_after_forms() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
    assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    // 1445412480 is Wed, 21 Oct 2015 07:28:00 GMT.
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
        Some(Duration::ZERO),
        "a date in the past: no wait"
    );
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-3", now), None);
}

/// Groups big enough that their framing lengths take several varint bytes, and a
/// resource with many labels: each group's framing is written into the gap before its
/// records and the unused start of the gap closed, so the request is still exactly
/// prost's encoding (checked by `build`). A body larger than what the reused record
/// keeps is encoded whole.
#[test]
fn large_groups_are_framed_exactly() {
    let a = source(0xa, SourceKind::CriFile, "/var/log/pods/a.log");
    let c = source(0xc, SourceKind::Capture, "");
    let labels: Vec<(String, String)> = (0..40)
        .map(|i| (format!("k8s.pod.label.l{i}"), format!("value-{i}")))
        .collect();
    let labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let records = |n: u64, salt: &str| -> Vec<Record> {
        (0..n)
            .map(|i| {
                record(
                    i * 200,
                    format!("{salt} line {i} {}", "x".repeat((i % 150) as usize)).as_bytes(),
                    &[("level", "info")],
                )
            })
            .collect()
    };
    let huge = vec![b'y'; 3 * super::request::MAX_KEPT_CAPACITY];
    let mut with_huge = records(10, "c");
    with_huge.push(record(99_999, &huge, &[]));
    let window = [
        package(1, &a, 1, &labels, records(3000, "a")),
        package(2, &c, 1, &[("k8s.pod", "c")], with_huge),
        package(3, &a, 2, &labels, records(2000, "a2")),
        package(4, &c, 2, &[("k8s.pod", "c2")], records(1, "c2")),
    ];
    let request = build(&window, &request::window_parts(&window));
    let counts: Vec<usize> = request
        .resource_logs
        .iter()
        .map(|r| r.scope_logs[0].log_records.len())
        .collect();
    assert_eq!(counts, vec![5000, 11, 1]);
    // The same builder again, on a part of the window: nothing of the first request
    // is left in the second.
    let mut builder = RequestBuilder::default();
    builder.encode(&window, &request::window_parts(&window), 42);
    let parts = [Part {
        package: 3,
        records: 0..1,
    }];
    builder.encode(&window, &parts, 42);
    assert_eq!(
        builder.body(),
        request::request_of(&window, &parts, 42).encode_to_vec()
    );
}

/// The reused gzip compressor makes one complete gzip member per request, whatever
/// the last request was: empty, compressible, incompressible (stored blocks, the
/// worst case the output buffer is sized for).
#[test]
fn gzip_members_are_complete_and_independent() {
    use std::io::Read;
    let mut gzip = flate2::Compress::new_gzip(flate2::Compression::fast(), 15);
    let mut out = Vec::new();
    let mut noise = Vec::with_capacity(1 << 20);
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    while noise.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    let text = b"a log line that repeats\n".repeat(10_000);
    for input in [&text[..], &noise[..], &[][..], &text[..100]] {
        gzip_into(&mut gzip, input, &mut out).unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, input);
    }
}

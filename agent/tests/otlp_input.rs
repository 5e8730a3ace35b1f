//! The `otlp` input end to end, with the real binary: OTLP/HTTP logs requests in
//! protobuf and JSON from a plain client (answered once durable, partial success for
//! what is refused, 4xx for what is not a logs request), and Fluent Bit's
//! `opentelemetry` output as a real sender.

mod common;

use std::time::Duration;

use common::fluent_bit::FluentBit;
use common::*;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value as Any};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;

/// POSTs `body` to `path`; the status and the answer's body.
fn post(port: u16, path: &str, content_type: &str, body: &[u8]) -> (u16, Vec<u8>) {
    http_request(
        port,
        "POST",
        path,
        Some(content_type),
        body,
        Duration::from_secs(60),
    )
    .expect("an HTTP answer")
}

fn string(s: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(Any::StringValue(s.into())),
    })
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: string(value),
        ..Default::default()
    }
}

fn agent_with_otlp(dir: &std::path::Path, port: u16) -> Agent {
    let config = format!(
        "sources:\n\
         \x20 - {{name: otel, type: otlp, listen: \"tcp://127.0.0.1:{port}\", max_line_size: 64, sink: local}}\n\
         sinks:\n  local: {{type: store}}\n\
         batch: {{timeout: 100ms}}\n"
    );
    let agent = Agent::start(&dir.join("data"), &config);
    agent.wait_ready();
    agent
}

fn otlp_records(store: &std::path::Path, port: u16) -> Vec<Value> {
    let path = format!("tcp://127.0.0.1:{port}");
    store_records(store)
        .into_iter()
        .filter(|r| r["path"] == path.as_str())
        .collect()
}

#[test]
fn protobuf_and_json_requests_are_answered_once_durable_with_partial_success() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = agent_with_otlp(dir.path(), port);
    let store = agent.store_dir();

    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", "shop")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    LogRecord {
                        time_unix_nano: 1_700_000_000_123_456_789,
                        severity_text: "WARN".into(),
                        severity_number: 13,
                        body: string("proto one"),
                        attributes: vec![attribute("user", "ada")],
                        ..Default::default()
                    },
                    LogRecord {
                        body: Some(AnyValue {
                            value: Some(Any::BytesValue(b"\x00\xffraw".to_vec())),
                        }),
                        ..Default::default()
                    },
                    LogRecord {
                        body: string(&"far too long ".repeat(10)),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let (status, body) = post(
        port,
        "/v1/logs",
        "application/x-protobuf",
        &request.encode_to_vec(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer = ExportLogsServiceResponse::decode(&body[..]).unwrap();
    assert_eq!(answer.partial_success.unwrap().rejected_log_records, 1);
    // Answered once durable: in the store already.
    let records = otlp_records(&store, port);
    assert_eq!(records.len(), 2, "{records:#?}");
    let one = records.iter().find(|r| r["body"] == "proto one").unwrap();
    assert_eq!(one["fields"]["resource.service.name"], "shop");
    assert_eq!(one["fields"]["user"], "ada");
    assert_eq!(one["fields"]["severity_text"], "WARN");
    assert_eq!(one["fields"]["severity_number"], "13");
    assert_eq!(one["timestamp_ns"], 1_700_000_000_123_456_789i64);
    let raw = records.iter().find(|r| r["body"] != "proto one").unwrap();
    assert_eq!(body_bytes(raw), b"\x00\xffraw", "a bytes body exactly");

    let json = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},
        "scopeLogs":[{"scope":{"name":"app.lib"},"logRecords":[
          {"timeUnixNano":"1700000000000000000","severityText":"INFO","body":{"stringValue":"json one"},
           "traceId":"5b8efff798038103d269b633813fc60c","attributes":[{"key":"n","value":{"intValue":"7"}}]}]}]}]}"#;
    let (status, body) = post(port, "/v1/logs", "application/json", json.as_bytes());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"{}");
    let records = otlp_records(&store, port);
    let one = records.iter().find(|r| r["body"] == "json one").unwrap();
    assert_eq!(one["fields"]["resource.service.name"], "cart");
    assert_eq!(one["fields"]["scope.name"], "app.lib");
    assert_eq!(one["fields"]["n"], "7");
    assert_eq!(
        one["fields"]["trace_id"],
        "5b8efff798038103d269b633813fc60c"
    );

    assert_eq!(post(port, "/v1/traces", "application/json", b"{}").0, 404);
    assert_eq!(post(port, "/v1/logs", "text/plain", b"{}").0, 415);
    assert_eq!(post(port, "/v1/logs", "application/json", b"{oops").0, 400);
    assert_eq!(
        post(port, "/v1/logs", "application/x-protobuf", b"\xff\xff").0,
        400
    );
    assert_eq!(
        otlp_records(&store, port).len(),
        3,
        "nothing of the refused requests"
    );
    let text = agent.metrics();
    assert_eq!(
        metric(&text, "logtap_input_records_total", &[("input", "otel")]),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            "logtap_input_rejected_total",
            &[("input", "otel"), ("reason", "too_large")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "logtap_input_rejected_total",
            &[("input", "otel"), ("reason", "bad_request")]
        ),
        2.0
    );
    assert!(agent.stop(), "clean exit\n{}", agent.log());
}

#[test]
fn fluent_bit_opentelemetry_output_arrives_once_with_its_attributes() {
    const N: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = agent_with_otlp(dir.path(), port);
    let input = dir.path().join("app.log");
    let lines: Vec<String> = (0..N).map(|i| format!("otel seq={i:06}")).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let fb = FluentBit::start(&format!(
        "[INPUT]\n    Name tail\n    Path {}\n    Read_from_Head On\n    Tag app\n\
         [FILTER]\n    Name record_modifier\n    Match *\n    Record level warn\n\
         [OUTPUT]\n    Name opentelemetry\n    Match *\n    Host 127.0.0.1\n    Port {port}\n\
         \x20   logs_uri /v1/logs\n    logs_body_key $log\n    logs_body_key_attributes true\n",
        input.display()
    ));
    let store = agent.store_dir();
    let mut seen: std::collections::HashMap<String, Vec<Value>> = Default::default();
    let complete = poll_until(Duration::from_secs(60), Duration::from_millis(200), || {
        seen.clear();
        for r in otlp_records(&store, port) {
            if let Some(body) = r["body"].as_str() {
                seen.entry(body.to_string()).or_default().push(r.clone());
            }
        }
        lines.iter().all(|l| seen.contains_key(l))
    });
    assert!(
        complete,
        "{} of {N} lines arrived, e.g. {:?}\nfluent-bit:\n{}\nagent:\n{}",
        seen.len(),
        seen.keys().next(),
        fb.log(),
        agent.log()
    );
    for line in &lines {
        let records = &seen[line];
        assert_eq!(records.len(), 1, "{line} arrived {} times", records.len());
        assert_eq!(records[0]["fields"]["level"], "warn", "{}", records[0]);
    }
    drop(fb);
    assert!(agent.stop(), "clean exit\n{}", agent.log());
}

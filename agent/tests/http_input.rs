//! The `http` input end to end, with the real binary and a plain HTTP/1.1 client:
//! NDJSON posts are answered `200` only once their records are durable (the store
//! has them when the answer comes), garbage is refused whole with `400` and counted,
//! an oversized body gets `413`; and Fluent Bit's `http` output (NDJSON) as a real
//! client.

mod common;

use std::time::Duration;

use common::fluent_bit::FluentBit;
use common::*;

/// `method /ingest` with an NDJSON `body`; the status and the answer's body.
fn request(port: u16, method: &str, body: &[u8]) -> (u16, String) {
    let (status, body) = http_request(
        port,
        method,
        "/ingest",
        Some("application/x-ndjson"),
        body,
        Duration::from_secs(60),
    )
    .expect("an HTTP answer");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn ndjson(from: u64, n: u64) -> String {
    (from..from + n)
        .map(|i| format!("{{\"seq\":{i},\"msg\":\"hello {i}\",\"user\":{{\"id\":{i}}}}}\n"))
        .collect()
}

#[test]
fn ndjson_posts_are_answered_once_durable_and_every_record_arrives_once() {
    const PER_REQUEST: u64 = 100;
    const REQUESTS: u64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "sources:\n\
         \x20 - {{name: api, type: http, listen: \"tcp://127.0.0.1:{port}\", max_body_size: 64KiB, max_line_size: 1KiB, sink: local}}\n\
         sinks:\n  local: {{type: store}}\n\
         batch: {{timeout: 100ms}}\n"
    );
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    agent.wait_ready();
    let store = agent.store_dir();
    let path = format!("tcp://127.0.0.1:{port}");
    let seqs = || -> Vec<u64> {
        store_records(&store)
            .iter()
            .filter(|r| r["path"] == path.as_str())
            .map(|r| r["fields"]["seq"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    for i in 0..REQUESTS {
        let (status, body) = request(
            port,
            "POST",
            ndjson(i * PER_REQUEST, PER_REQUEST).as_bytes(),
        );
        assert_eq!(status, 200, "{body}\n{}", agent.log());
        // Answered once durable: the store has every record of it already.
        let mut got = seqs();
        got.sort_unstable();
        let expected: Vec<u64> = (0..(i + 1) * PER_REQUEST).collect();
        assert_eq!(got, expected, "after request {i}");
    }

    // One line that is not a JSON object: nothing of the request is taken.
    let mut bad = ndjson(1000, 10);
    bad.push_str("not json\n[1,2,3]\n");
    let (status, body) = request(port, "POST", bad.as_bytes());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("2 line(s)"), "{body}");
    // A body over max_body_size, a line over max_line_size, a GET.
    let huge = ndjson(10_000, 2000);
    assert!(huge.len() > 64 << 10);
    assert_eq!(request(port, "POST", huge.as_bytes()).0, 413);
    let long = format!("{{\"seq\":3000,\"pad\":\"{}\"}}\n", "x".repeat(2000));
    assert_eq!(request(port, "POST", long.as_bytes()).0, 413);
    assert_eq!(request(port, "GET", b"").0, 405);
    // An empty body is nothing to take.
    assert_eq!(request(port, "POST", b"").0, 200);
    let (status, _) = request(port, "POST", ndjson(4000, 1).as_bytes());
    assert_eq!(status, 200);

    let records: Vec<Value> = store_records(&store)
        .into_iter()
        .filter(|r| r["path"] == path.as_str())
        .collect();
    assert_eq!(
        records.len() as u64,
        REQUESTS * PER_REQUEST + 1,
        "each once, nothing refused"
    );
    let r = records
        .iter()
        .find(|r| r["fields"]["seq"] == "7")
        .expect("seq 7");
    assert_eq!(
        body_bytes(r),
        br#"{"seq":7,"msg":"hello 7","user":{"id":7}}"#
    );
    assert_eq!(r["fields"]["msg"], "hello 7");
    assert_eq!(r["fields"]["user"], r#"{"id":7}"#);

    let text = agent.metrics();
    let of = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);
    assert_eq!(of("logtap_input_records_total", &[("input", "api")]), 501.0);
    assert_eq!(
        of(
            "logtap_input_rejected_total",
            &[("input", "api"), ("reason", "bad_line")]
        ),
        2.0
    );
    assert_eq!(
        of(
            "logtap_input_rejected_total",
            &[("input", "api"), ("reason", "too_large")]
        ),
        2.0
    );
    assert_eq!(
        of("logtap_input_connections_total", &[("input", "api")]),
        11.0
    );
    let (code, health) = agent.health();
    assert_eq!(code, 200, "{health}");
    assert!(
        health["components"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "net-ingest"),
        "{health}"
    );
    assert!(agent.stop(), "clean exit\n{}", agent.log());
    assert!(
        !agent.log().contains("without an orderly stop"),
        "{}",
        agent.log()
    );
}

#[test]
fn fluent_bit_http_output_ndjson_arrives_once_with_its_fields() {
    const N: u64 = 2000;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "sources:\n\
         \x20 - {{name: fb, type: http, listen: \"tcp://127.0.0.1:{port}\", sink: local}}\n\
         sinks:\n  local: {{type: store}}\n\
         batch: {{timeout: 100ms}}\n"
    );
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    agent.wait_ready();
    let input = dir.path().join("app.log");
    let lines: Vec<String> = (0..N).map(|i| format!("fluent seq={i:06}")).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let fb = FluentBit::start(&format!(
        "[INPUT]\n    Name tail\n    Path {}\n    Read_from_Head On\n    Tag app\n\
         [OUTPUT]\n    Name http\n    Match *\n    Host 127.0.0.1\n    Port {port}\n\
         \x20   URI /ingest\n    Format json_lines\n    Json_Date_Key false\n",
        input.display()
    ));
    let store = agent.store_dir();
    let path = format!("tcp://127.0.0.1:{port}");
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    let complete = poll_until(Duration::from_secs(60), Duration::from_millis(200), || {
        seen.clear();
        for r in store_records(&store)
            .iter()
            .filter(|r| r["path"] == path.as_str())
        {
            if let Some(log) = r["fields"]["log"].as_str() {
                *seen.entry(log.to_string()).or_default() += 1;
            }
        }
        lines.iter().all(|l| seen.contains_key(l))
    });
    assert!(
        complete,
        "{} of {N} lines arrived\nfluent-bit:\n{}\nagent:\n{}",
        seen.len(),
        fb.log(),
        agent.log()
    );
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "arrived more than once: {twice:?}");
    drop(fb);
    assert!(agent.stop(), "clean exit\n{}", agent.log());
}

//! Syslog inputs end to end, with the real binary and real senders: util-linux
//! `logger` (RFC 5424 and RFC 3164, TCP with octet counting and with newline framing,
//! UDP, a Unix datagram socket) and Fluent Bit's `syslog` output
//! (`../shared/peers/fluent-bit`). Every message must be in the store once, with its
//! header fields; what is malformed or too large is kept, flagged and counted.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::fluent_bit::FluentBit;
use common::*;

const WAIT: Duration = Duration::from_secs(60);

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `logger ARGS` with `lines` on its standard input: one message per line.
fn logger(args: &[&str], lines: &[String]) {
    let mut child = Command::new("logger")
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux logger (apt: bsdutils) must be installed");
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "logger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The store's records of the input listening at `path`, by their `message` field.
fn by_message(store: &std::path::Path, path: &str) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for r in store_records(store) {
        if r["path"] != path {
            continue;
        }
        if let Some(m) = r["fields"]["message"].as_str() {
            out.entry(m.to_string()).or_default().push(r);
        }
    }
    out
}

/// Waits until every one of `messages` is a record of `path` (the input's listen
/// address); checks each is there once and returns them by message.
fn wait_once(
    store: &std::path::Path,
    path: &str,
    messages: &[String],
    agent: &Agent,
) -> HashMap<String, Value> {
    let mut found = HashMap::new();
    let ok = poll_until(WAIT, Duration::from_millis(200), || {
        found = by_message(store, path);
        messages.iter().all(|m| found.contains_key(m))
    });
    let missing: Vec<&String> = messages
        .iter()
        .filter(|m| !found.contains_key(*m))
        .collect();
    assert!(
        ok,
        "{} of {} messages missing at {path}, e.g. {:?}\n{}",
        missing.len(),
        messages.len(),
        missing.first(),
        agent.log()
    );
    messages
        .iter()
        .map(|m| {
            let records = &found[m];
            assert_eq!(records.len(), 1, "{m:?} arrived {} times", records.len());
            (m.clone(), records[0].clone())
        })
        .collect()
}

fn field<'a>(record: &'a Value, key: &str) -> &'a str {
    record["fields"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no field {key} in {record}"))
}

fn lines(prefix: &str, n: u64) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} seq={i:06}")).collect()
}

#[test]
fn logger_messages_over_tcp_udp_and_a_unix_socket_arrive_once_with_their_fields() {
    const N: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let (tcp, udp) = (free_port(), free_udp_port());
    let socket = dir.path().join("log.sock");
    let config = format!(
        "sources:\n\
         \x20 - {{name: tcp, type: syslog, listen: \"tcp://127.0.0.1:{tcp}\", max_line_size: 1KiB, sink: local}}\n\
         \x20 - {{name: udp, type: syslog, listen: \"udp://127.0.0.1:{udp}\", sink: local}}\n\
         \x20 - {{name: devlog, type: syslog, listen: \"unix://{}\", sink: local}}\n\
         sinks:\n  local: {{type: store}}\n\
         batch: {{timeout: 100ms}}\n",
        socket.display()
    );
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    agent.wait_ready();
    let store = agent.store_dir();
    let (tcp_s, udp_s) = (tcp.to_string(), udp.to_string());
    let remote = |proto: &'static str, port: &str| -> Vec<String> {
        vec![
            proto.into(),
            "--server".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.into(),
        ]
    };
    let args = |base: Vec<String>, more: &[&str]| -> Vec<String> {
        base.into_iter()
            .chain(more.iter().map(|s| s.to_string()))
            .collect()
    };

    // RFC 5424 over TCP with octet counting, structured data and a message id.
    let tcp5424 = lines("tcp5424", N);
    let a = args(
        remote("--tcp", &tcp_s),
        &[
            "--rfc5424",
            "--octet-count",
            "-t",
            "app5424",
            "--id=4242",
            "-p",
            "local3.warning",
            "--msgid",
            "M42",
            "--sd-id",
            "test@32473",
            "--sd-param",
            "k=\"a \\\"q\\\" b\"",
        ],
    );
    logger(&a.iter().map(String::as_str).collect::<Vec<_>>(), &tcp5424);
    // RFC 3164 over TCP, newline framing.
    let tcp3164 = lines("tcp3164", N);
    let a = args(
        remote("--tcp", &tcp_s),
        &["--rfc3164", "-t", "app3164", "-p", "user.err"],
    );
    logger(&a.iter().map(String::as_str).collect::<Vec<_>>(), &tcp3164);
    // Both RFCs over UDP.
    let udp5424 = lines("udp5424", N);
    let a = args(
        remote("--udp", &udp_s),
        &["--rfc5424", "-t", "u5424", "-p", "daemon.info"],
    );
    logger(&a.iter().map(String::as_str).collect::<Vec<_>>(), &udp5424);
    let udp3164 = lines("udp3164", N);
    let a = args(
        remote("--udp", &udp_s),
        &["--rfc3164", "-t", "u3164", "-p", "mail.notice"],
    );
    logger(&a.iter().map(String::as_str).collect::<Vec<_>>(), &udp3164);
    // The local socket, as programs log to /dev/log.
    let unix = lines("unix", N);
    let path = socket.to_str().unwrap();
    logger(&["-u", path, "-t", "local-app", "-p", "auth.crit"], &unix);
    // Bytes no well-behaved sender writes: no priority, a frame far over max_line_size,
    // a message that is not UTF-8.
    let mut raw = TcpStream::connect(("127.0.0.1", tcp)).unwrap();
    raw.write_all(b"no priority at all\n").unwrap();
    let huge = format!("<13>1 - h big - - - {}", "x".repeat(3000));
    raw.write_all(format!("{} {huge}", huge.len()).as_bytes())
        .unwrap();
    raw.write_all(b"<13>1 - h bin - - - caf\xe9 latin-1\n")
        .unwrap();
    drop(raw);

    let tcp_path = format!("tcp://127.0.0.1:{tcp}");
    let got = wait_once(&store, &tcp_path, &tcp5424, &agent);
    for (m, r) in &got {
        assert!(r["body"].as_str().unwrap().ends_with(m.as_str()), "{r}");
        assert_eq!(field(r, "protocol"), "rfc5424");
        assert_eq!(field(r, "facility"), "local3");
        assert_eq!(field(r, "severity"), "warning");
        assert_eq!(field(r, "app_name"), "app5424");
        assert_eq!(field(r, "procid"), "4242");
        assert_eq!(field(r, "msgid"), "M42");
        assert_eq!(field(r, "sd.test@32473.k"), "a \"q\" b");
        assert!(!field(r, "hostname").is_empty());
        assert!(field(r, "timestamp").starts_with("20"), "{r}");
    }
    let got = wait_once(&store, &tcp_path, &tcp3164, &agent);
    for r in got.values() {
        assert_eq!(field(r, "protocol"), "rfc3164");
        assert_eq!(field(r, "facility"), "user");
        assert_eq!(field(r, "severity"), "err");
        assert_eq!(field(r, "app_name"), "app3164");
        assert!(!field(r, "hostname").is_empty());
    }
    let udp_path = format!("udp://127.0.0.1:{udp}");
    for r in wait_once(&store, &udp_path, &udp5424, &agent).values() {
        assert_eq!(field(r, "protocol"), "rfc5424");
        assert_eq!(field(r, "facility"), "daemon");
        assert_eq!(field(r, "app_name"), "u5424");
    }
    for r in wait_once(&store, &udp_path, &udp3164, &agent).values() {
        assert_eq!(field(r, "protocol"), "rfc3164");
        assert_eq!(field(r, "severity"), "notice");
        assert_eq!(field(r, "app_name"), "u3164");
    }
    let unix_path = format!("unix://{path}");
    for r in wait_once(&store, &unix_path, &unix, &agent).values() {
        assert_eq!(field(r, "facility"), "auth");
        assert_eq!(field(r, "severity"), "crit");
        assert_eq!(field(r, "app_name"), "local-app");
    }

    // The odd ones: kept, flagged, counted.
    let mut odd = Vec::new();
    assert!(poll_until(WAIT, Duration::from_millis(200), || {
        odd =
            store_records(&store)
                .into_iter()
                .filter(|r| r["path"] == tcp_path.as_str() && r["fields"]["message"].is_null())
                .chain(store_records(&store).into_iter().filter(|r| {
                    r["fields"]["app_name"] == "big" || r["fields"]["app_name"] == "bin"
                }))
                .collect();
        odd.len() >= 3
    }));
    let garbage = odd
        .iter()
        .find(|r| r["body"] == "no priority at all")
        .unwrap_or_else(|| panic!("{odd:#?}"));
    assert!(
        flags(garbage).contains(&"parse_failed".to_string()),
        "{garbage}"
    );
    let big = odd
        .iter()
        .find(|r| r["fields"]["app_name"] == "big")
        .unwrap();
    assert!(flags(big).contains(&"truncated".to_string()), "{big}");
    assert_eq!(body_bytes(big).len(), 1024);
    let bin = odd
        .iter()
        .find(|r| r["fields"]["app_name"] == "bin")
        .unwrap();
    assert_eq!(body_bytes(bin), b"<13>1 - h bin - - - caf\xe9 latin-1");
    assert!(flags(bin).contains(&"invalid_utf8".to_string()), "{bin}");

    let text = agent.metrics();
    let tcp_records = 2.0 * N as f64 + 3.0;
    assert_eq!(
        metric(&text, "logtap_input_records_total", &[("input", "tcp")]),
        tcp_records
    );
    assert_eq!(
        metric(&text, "logtap_input_records_total", &[("input", "udp")]),
        2.0 * N as f64
    );
    assert_eq!(
        metric(&text, "logtap_input_records_total", &[("input", "devlog")]),
        N as f64
    );
    assert_eq!(
        metric(
            &text,
            "logtap_input_parse_failures_total",
            &[("input", "tcp")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "logtap_input_rejected_total",
            &[("input", "tcp"), ("reason", "too_large")]
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "logtap_input_connections_total", &[("input", "tcp")]),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            "logtap_input_kernel_drops_total",
            &[("input", "udp")]
        ),
        0.0
    );
    assert!(agent.stop(), "clean exit\n{}", agent.log());
    assert!(!socket.exists(), "the socket file is removed at the stop");
}

/// Fluent Bit tailing `input` into two `syslog` outputs: RFC 5424 over TCP and RFC
/// 3164 over UDP, the header fields taken from keys a filter adds.
fn fluent_bit_syslog(input: &std::path::Path, tcp: u16, udp: u16) -> FluentBit {
    let output = |port: u16, mode: &str, format: &str| {
        format!(
            "[OUTPUT]\n    Name syslog\n    Match *\n    Host 127.0.0.1\n    Port {port}\n\
             \x20   Mode {mode}\n    Syslog_Format {format}\n    Syslog_Message_Key log\n\
             \x20   Syslog_Appname_Key app\n    Syslog_Hostname_Key host\n\
             \x20   Syslog_Severity_Key sev\n    Syslog_Facility_Key fac\n"
        )
    };
    FluentBit::start(&format!(
        "[INPUT]\n    Name tail\n    Path {}\n    Read_from_Head On\n    Tag app\n\
         [FILTER]\n    Name record_modifier\n    Match *\n    Record app fbapp\n\
         \x20   Record host fbhost\n    Record sev 4\n    Record fac 17\n{}{}",
        input.display(),
        output(tcp, "tcp", "rfc5424"),
        output(udp, "udp", "rfc3164"),
    ))
}

#[test]
fn fluent_bit_syslog_output_over_tcp_and_udp_arrives_once_with_its_fields() {
    const N: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let (tcp, udp) = (free_port(), free_udp_port());
    let config = format!(
        "sources:\n\
         \x20 - {{name: fb-tcp, type: syslog, listen: \"tcp://127.0.0.1:{tcp}\", sink: local}}\n\
         \x20 - {{name: fb-udp, type: syslog, listen: \"udp://127.0.0.1:{udp}\", sink: local}}\n\
         sinks:\n  local: {{type: store}}\n\
         batch: {{timeout: 100ms}}\n"
    );
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    agent.wait_ready();
    let input = dir.path().join("app.log");
    let messages = lines("fluent", N);
    std::fs::write(&input, messages.join("\n") + "\n").unwrap();
    let fb = fluent_bit_syslog(&input, tcp, udp);
    let store = agent.store_dir();
    let check = |path: &str, protocol: &str| {
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_once(&store, path, &messages, &agent)
        }))
        .unwrap_or_else(|e| {
            eprintln!("fluent-bit log:\n{}", fb.log());
            std::panic::resume_unwind(e)
        });
        for r in got.values() {
            assert_eq!(field(r, "protocol"), protocol, "{r}");
            assert_eq!(field(r, "app_name"), "fbapp", "{r}");
            assert_eq!(field(r, "hostname"), "fbhost", "{r}");
            assert_eq!(field(r, "severity"), "warning", "{r}");
            assert_eq!(field(r, "facility"), "local1", "{r}");
        }
    };
    check(&format!("tcp://127.0.0.1:{tcp}"), "rfc5424");
    check(&format!("udp://127.0.0.1:{udp}"), "rfc3164");
    drop(fb);
    assert!(agent.stop(), "clean exit\n{}", agent.log());
}

/// UDP has no flow control: datagrams sent while the agent cannot read (stopped with
/// SIGSTOP) overflow the socket's buffer. Every datagram is then either a record or
/// one of the kernel's drops, which the input reports.
#[test]
fn udp_datagrams_are_either_stored_or_counted_as_kernel_drops() {
    const SENT: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let udp = free_udp_port();
    let config = format!(
        "sources:\n\
         \x20 - {{name: burst, type: syslog, listen: \"udp://127.0.0.1:{udp}\", sink: local}}\n\
         sinks:\n  local: {{type: store}}\n\
         batch: {{timeout: 100ms}}\n"
    );
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    agent.wait_ready();
    let pid = agent.pid() as i32;
    // SAFETY: signals to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pad = "p".repeat(1000);
    for i in 0..SENT {
        let m = format!("<14>1 - h burst - - - seq={i:06} {pad}");
        sender.send_to(m.as_bytes(), ("127.0.0.1", udp)).unwrap();
    }
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let (mut records, mut drops) = (0.0, 0.0);
    let settled = poll_until(WAIT, Duration::from_millis(300), || {
        let text = agent.metrics();
        records = metric(&text, "logtap_input_records_total", &[("input", "burst")]);
        drops = metric(
            &text,
            "logtap_input_kernel_drops_total",
            &[("input", "burst")],
        );
        records + drops == SENT as f64
    });
    assert!(settled, "{records} records + {drops} drops != {SENT} sent");
    eprintln!("udp burst: {records} records, {drops} kernel drops of {SENT}");
    assert!(drops > 0.0, "the burst overflowed the socket buffer");
    let path = format!("udp://127.0.0.1:{udp}");
    let mut stored = 0;
    assert!(poll_until(WAIT, Duration::from_millis(200), || {
        stored = store_records(&agent.store_dir())
            .iter()
            .filter(|r| r["path"] == path.as_str())
            .count();
        stored as f64 == records
    }));
    assert!(agent.stop(), "clean exit\n{}", agent.log());
}

/// The boundary is "read from the socket": a SIGTERM right after the sender's writes
/// (the connection perhaps not even accepted yet) still ships every message the
/// kernel had taken.
#[test]
fn a_sigterm_right_after_the_writes_ships_every_message_sent() {
    const N: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let tcp = free_port();
    let config = format!(
        "sources:\n\
         \x20 - {{name: tcp, type: syslog, listen: \"tcp://127.0.0.1:{tcp}\", sink: local}}\n\
         sinks:\n  local: {{type: store}}\n\
         batch: {{timeout: 10s}}\n"
    );
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    agent.wait_ready();
    let mut connections: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(("127.0.0.1", tcp)).unwrap())
        .collect();
    for i in 0..N {
        let m = format!("<13>1 - h app - - - seq={i:06}");
        let c = &mut connections[(i % 4) as usize];
        c.write_all(format!("{} {m}", m.len()).as_bytes()).unwrap();
    }
    // Still open: the agent, not the senders, ends the connections.
    assert!(agent.stop(), "clean exit\n{}", agent.log());
    let path = format!("tcp://127.0.0.1:{tcp}");
    let mut seqs: Vec<String> = store_records(&agent.store_dir())
        .iter()
        .filter(|r| r["path"] == path.as_str())
        .map(|r| r["fields"]["message"].as_str().unwrap().to_string())
        .collect();
    seqs.sort();
    let expected: Vec<String> = (0..N).map(|i| format!("seq={i:06}")).collect();
    assert_eq!(seqs, expected);
    drop(connections);
}

/// A listen address that cannot be bound is the operator's to fix: the agent stops at
/// start, naming the source and the address, instead of running without the input.
#[test]
fn an_address_in_use_stops_the_agent_at_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\nmetrics: {{listen: \"\"}}\n\
             sources:\n  - {{name: busy, type: syslog, listen: \"tcp://127.0.0.1:{port}\"}}\n\
             sinks:\n  local: {{type: store}}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = Command::new(logtap_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("source \"busy\": cannot listen on tcp://127.0.0.1:")
            && stderr.contains("Address already in use"),
        "{stderr}"
    );
    drop(taken);
}

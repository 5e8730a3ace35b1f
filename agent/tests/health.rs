//! `/healthz` and `/readyz` with the real agent: 200 while it collects; 503 naming the
//! component when a sink worker is really wedged (a `file` sink writing into a FIFO
//! whose reader stopped reading: the worker blocks in write(2)), and 200 again once it
//! moves; and still 200 through a destination outage that fills a network sink's
//! spool, which holds the sink worker and the readers back by design.

mod common;
#[path = "common/otlp.rs"]
mod otlp_receiver;

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use otlp_receiver::{OtlpReceiver, Reply};

const WAIT: Duration = Duration::from_secs(60);

fn component<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["components"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no component {name} in {health}"))
}

fn failing(health: &Value) -> Vec<String> {
    health["failing"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[test]
fn a_wedged_sink_worker_fails_liveness_by_name_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (app, piped) = (dir.path().join("app"), dir.path().join("piped"));
    std::fs::create_dir_all(&app).unwrap();
    std::fs::create_dir_all(&piped).unwrap();
    let fifo = dir.path().join("out.fifo");
    mkfifo(&fifo);
    // A reader that never reads: once the pipe's buffer (64 KiB) is full, the sink's
    // write(2) blocks. Non-blocking open, so it does not wait for the agent.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let config = format!(
        "health: {{stall_timeout: 2s}}\n\
         sources:\n  - name: app\n    include: [\"{}/*.log\"]\n    sink: local\n  \
         - name: piped\n    include: [\"{}/*.log\"]\n    sink: fifo\n\
         sinks:\n  local:\n    type: store\n  fifo:\n    type: file\n    path: {}\n",
        app.display(),
        piped.display(),
        fifo.display()
    );
    let mut agent = Agent::start(&dir.path().join("data"), &config);

    // Collecting: every component alive; the idle FIFO sink (nothing to write) too.
    write_lines_at_rate(&app.join("app.log"), 1000, 1_000_000, |_, _| {});
    wait_for(WAIT, "the app lines stored", || {
        store_records(&agent.store_dir()).len() >= 1000
    });
    std::thread::sleep(Duration::from_secs(3)); // longer than stall_timeout
    let (status, health) = agent.health();
    assert_eq!(status, 200, "{health}");
    assert!(failing(&health).is_empty(), "{health}");
    for name in ["source", "sink-local", "sink-fifo", "checkpoint"] {
        component(&health, name);
    }
    assert_eq!(component(&health, "sink-fifo")["state"], "idle", "{health}");
    assert_eq!(
        http_get_status(agent.metrics_port, "/readyz").map(|r| r.0),
        Some(200)
    );

    // 20,000 lines (about 4 MB rendered) for the FIFO: the sink worker blocks in
    // write(2) at its first flush, and stays there.
    const PIPED: u64 = 20_000;
    write_lines_at_rate(&piped.join("p.log"), PIPED, 10_000_000, |_, _| {});
    let mut last = Value::Null;
    wait_for(WAIT, "/healthz 503 naming sink-fifo", || {
        let (status, health) = agent.health();
        last = health;
        status == 503
    });
    let since = component(&last, "sink-fifo")["seconds_since_progress"].as_f64();
    assert!(since >= Some(2.0), "not before stall_timeout: {last}");
    // Only the wedged worker is named.
    assert_eq!(failing(&last), vec!["sink-fifo".to_string()], "{last}");
    assert_eq!(component(&last, "sink-fifo")["state"], "stalled");
    assert_eq!(component(&last, "sink-fifo")["work_waiting"], true);
    let m = agent.metrics();
    assert_eq!(
        metric(&m, "logtap_component_up", &[("component", "sink-fifo")]),
        0.0
    );
    assert_eq!(
        metric(&m, "logtap_component_up", &[("component", "sink-local")]),
        1.0
    );

    // The reader reads again: the worker moves and liveness recovers.
    let drain = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("reading the FIFO: {e}"),
            }
        }
        out
    });
    wait_for(WAIT, "/healthz 200 again", || agent.health().0 == 200);
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
    let out = drain.join().unwrap();
    let lines = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
    assert_eq!(
        lines as u64, PIPED,
        "every piped line went through the FIFO"
    );
}

#[test]
fn a_destination_outage_that_fills_the_spool_is_not_a_stall() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let receiver = OtlpReceiver::start();
    receiver.script((0..10_000).map(|_| Reply::retry_after(503, "1")));
    let config = format!(
        "health: {{stall_timeout: 2s}}\n\
         batch: {{max_size: 16KiB}}\n\
         sources:\n  - name: app\n    include: [\"{}/*.log\"]\n    sink: otel\n\
         sinks:\n  otel:\n    type: otlp\n    endpoint: {}\n    compression: none\n    \
         max_request_size: 64KiB\n    spool: {{max_size: 256KiB, when_full: block}}\n",
        logs.display(),
        receiver.endpoint()
    );
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    const LINES: u64 = 100_000;
    write_lines_at_rate(&logs.join("app.log"), LINES, 10_000_000, |_, _| {});
    wait_for(WAIT, "a full spool and a failed attempt", || {
        let m = agent.metrics();
        metric(&m, "logtap_spool_full_total", &[("sink", "otel")]) >= 1.0
            && metric(&m, "logtap_forward_retries_total", &[("sink", "otel")]) >= 1.0
    });
    // Three stall timeouts with the readers, the sink worker and the forwarder all
    // waiting for the destination: liveness holds, the outage is reported.
    let until = Instant::now() + Duration::from_secs(6);
    let mut last = Value::Null;
    while Instant::now() < until {
        let (status, health) = agent.health();
        assert_eq!(status, 200, "{health}");
        last = health;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        component(&last, "forward-otel")["note"],
        "destination_down",
        "{last}"
    );
    // The readers wait for the sink worker (its queue is full), which waits for the
    // forwarder (the spool is full), which waits for the destination.
    for name in ["source", "sink-otel"] {
        assert_eq!(component(&last, name)["state"], "parked", "{last}");
    }
    let m = agent.metrics();
    assert!(
        metric(&m, "logtap_lines_read_total", &[]) < LINES as f64,
        "reading waits for the destination"
    );

    receiver.clear_script();
    wait_for(WAIT, "every line delivered", || {
        receiver.accepted_bodies().len() as u64 >= LINES
    });
    wait_for(WAIT, "the note cleared", || {
        let (status, health) = agent.health();
        status == 200 && component(&health, "forward-otel").get("note").is_none()
    });
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
}

//! A network sink's spool with the real agent and a real OTLP/HTTP receiver: a full
//! spool blocks reading or drops the oldest packages, as configured, with exact counts;
//! a kill -9 while the destination is down loses nothing from the spool.

mod common;
#[path = "common/otlp.rs"]
mod otlp_receiver;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use otlp_receiver::{OtlpReceiver, Reply};

const LINES: u64 = 200_000;
const WAIT: Duration = Duration::from_secs(60);

fn config(logs: &Path, endpoint: &str, spool: &str) -> String {
    format!(
        "batch: {{max_size: 16KiB}}\n\
         sources:\n  - name: app\n    include: [\"{}/*.log\"]\n    sink: otel\n\
         sinks:\n  otel:\n    type: otlp\n    endpoint: {endpoint}\n    compression: none\n    \
         max_request_size: 64KiB\n    spool: {spool}\n",
        logs.display()
    )
}

/// How often each `seq=` arrived in a 2xx-answered request.
fn delivered(receiver: &OtlpReceiver) -> BTreeMap<u64, u32> {
    let mut counts = BTreeMap::new();
    for body in receiver.accepted_bodies() {
        let seq = seq_of(&body).unwrap_or_else(|| panic!("not a test line: {body:?}"));
        assert_eq!(body, rate_line(seq).as_bytes(), "a whole line");
        *counts.entry(seq).or_insert(0) += 1;
    }
    counts
}

/// An agent shipping [`LINES`] lines, written at once, to a receiver that is down
/// (503, long enough for them to fill a 256 KiB spool) with the sink's `spool`.
struct Outage {
    dir: tempfile::TempDir,
    receiver: OtlpReceiver,
    config: String,
    agent: Agent,
}

impl Outage {
    fn start(spool: &str) -> Outage {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let receiver = OtlpReceiver::start();
        receiver.script((0..10_000).map(|_| Reply::retry_after(503, "1")));
        let config = config(&logs, &receiver.endpoint(), spool);
        let agent = Agent::start(&dir.path().join("data"), &config);
        write_lines_at_rate(&logs.join("app.log"), LINES, 10_000_000, |_, _| {});
        Outage {
            dir,
            receiver,
            config,
            agent,
        }
    }
}

#[test]
fn a_full_spool_blocks_reading_until_the_destination_returns() {
    // `_dir` keeps the logs and the agent's data directory for the whole test.
    let Outage {
        dir: _dir,
        receiver,
        mut agent,
        ..
    } = Outage::start("{max_size: 256KiB, when_full: block}");
    wait_for(WAIT, "a full spool and a failed attempt", || {
        let m = agent.metrics();
        metric(&m, "logtap_spool_full_total", &[("sink", "otel")]) >= 1.0
            && metric(&m, "logtap_forward_retries_total", &[("sink", "otel")]) >= 1.0
    });
    let m = agent.metrics();
    assert!(
        metric(&m, "logtap_lines_read_total", &[]) < LINES as f64,
        "reading waits: {}",
        m.lines()
            .filter(|l| ["spool", "read", "dropped", "sink_"]
                .iter()
                .any(|k| l.contains(k)))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        metric(&m, "logtap_forward_destination_up", &[("sink", "otel")]),
        0.0
    );
    assert!(metric(&m, "logtap_spool_bytes", &[("sink", "otel")]) >= 256.0 * 1024.0);

    receiver.clear_script();
    wait_for(WAIT, "every line delivered", || {
        delivered(&receiver).len() as u64 == LINES
    });
    let m = agent.metrics();
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
    let counts = delivered(&receiver);
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..LINES).collect::<Vec<_>>()
    );
    assert!(
        counts.values().all(|&c| c == 1),
        "no line twice without a restart"
    );
    assert_eq!(metric(&m, "logtap_dropped_lines_total", &[]), 0.0);
    assert_eq!(
        metric(
            &m,
            "logtap_forward_acked_records_total",
            &[("sink", "otel")]
        ),
        LINES as f64
    );
    assert!(
        metric(
            &m,
            "logtap_forward_retries_total",
            &[("sink", "otel"), ("reason", "unavailable")]
        ) >= 1.0
    );
}

#[test]
fn drop_oldest_keeps_reading_and_counts_exactly_what_it_dropped() {
    // `_dir` keeps the logs and the agent's data directory for the whole test.
    let Outage {
        dir: _dir,
        receiver,
        mut agent,
        ..
    } = Outage::start("{max_size: 256KiB, when_full: drop_oldest}");
    // Reading never waits: every line reaches the spool (or is dropped from it).
    wait_for(WAIT, "every line in the spool", || {
        let m = agent.metrics();
        metric(&m, "logtap_sink_lines_total", &[("sink", "otlp")]) >= LINES as f64
    });
    let dropped = metric(
        &agent.metrics(),
        "logtap_dropped_lines_total",
        &[("reason", "spool_full")],
    );
    assert!(dropped > 0.0, "the spool overflowed");

    receiver.clear_script();
    wait_for(WAIT, "the spool forwarded", || {
        metric(
            &agent.metrics(),
            "logtap_spool_oldest_unforwarded_seconds",
            &[("sink", "otel")],
        ) == 0.0
            && delivered(&receiver).len() as u64 + dropped as u64 >= LINES
    });
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
    let counts = delivered(&receiver);
    assert!(
        counts.values().all(|&c| c == 1),
        "no line twice without a restart"
    );
    assert_eq!(
        counts.len() as u64 + dropped as u64,
        LINES,
        "delivered + dropped = written"
    );
    assert!(
        counts.contains_key(&(LINES - 1)),
        "the newest lines survive"
    );
}

#[test]
fn kill9_while_the_destination_is_down_loses_nothing_from_the_spool() {
    let Outage {
        dir,
        receiver,
        config,
        mut agent,
    } = Outage::start("{max_size: 64MiB}");
    wait_for(WAIT, "every line spooled and checkpointed", || {
        let m = agent.metrics();
        metric(&m, "logtap_read_lag_bytes", &[]) == 0.0
            && metric(&m, "logtap_packages_in_flight", &[]) == 0.0
            && metric(&m, "logtap_checkpoint_writes_total", &[]) >= 2.0
    });
    std::thread::sleep(Duration::from_millis(1500)); // one more checkpoint interval
    agent.kill9();
    assert!(
        delivered(&receiver).is_empty(),
        "nothing delivered before the kill"
    );

    receiver.clear_script();
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    wait_for(WAIT, "every line delivered after the restart", || {
        delivered(&receiver).len() as u64 == LINES
    });
    let m = agent.metrics();
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
    let counts = delivered(&receiver);
    let duplicates: u64 = counts.values().map(|&c| u64::from(c) - 1).sum();
    println!("duplicates after the restart: {duplicates}");
    assert_eq!(counts.len() as u64, LINES);
    // The spool held everything: the sources were not read again.
    assert_eq!(
        metric(&m, "logtap_lines_read_total", &[]),
        0.0,
        "nothing re-read from the file"
    );
    assert_eq!(duplicates, 0, "the first run's sends were all refused");
}

//! A network sink's spool with the real agent and a real OTLP/HTTP receiver: a full
//! spool blocks reading or drops the oldest packages, as configured, with exact counts;
//! a kill -9 while the destination is down loses nothing from the spool, nor while
//! packages are handed to the forwarder in memory; an outage moves new packages from
//! memory to the spool and every line arrives once, in order.

mod common;
#[path = "common/otlp.rs"]
mod otlp_receiver;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
         max_request_size: 64KiB\n    timeout: 10m\n    spool: {spool}\n",
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

/// Lines `0..lines` reached the receiver, each exactly once (`why` says why twice
/// would be wrong here).
fn assert_each_line_once(receiver: &OtlpReceiver, lines: u64, why: &str) {
    let counts = delivered(receiver);
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..lines).collect::<Vec<_>>()
    );
    assert!(counts.values().all(|&c| c == 1), "{why}");
}

/// A directory of logs, a receiver, and the config shipping those logs to it with the
/// sink's `spool`; the agent's data directory sits beside the logs.
struct Setup {
    /// Keeps the logs and the agent's data directory for the whole test.
    dir: tempfile::TempDir,
    logs: PathBuf,
    receiver: OtlpReceiver,
    config: String,
}

impl Setup {
    fn new(spool: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let receiver = OtlpReceiver::start();
        let config = config(&logs, &receiver.endpoint(), spool);
        Setup {
            dir,
            logs,
            receiver,
            config,
        }
    }

    /// An agent on this setup's data directory: a restart continues where the last
    /// one's checkpoints and spool left off.
    fn start_agent(&self) -> Agent {
        Agent::start(&self.dir.path().join("data"), &self.config)
    }

    /// After a kill: the receiver answers everything again, a new agent runs on this
    /// setup until `lines` distinct lines were delivered and stops cleanly. Returns its
    /// metrics from before the stop.
    fn restart_until_delivered(&self, lines: u64) -> String {
        self.receiver.clear_script();
        let mut agent = self.start_agent();
        wait_for(WAIT, "every line delivered after the restart", || {
            delivered(&self.receiver).len() as u64 == lines
        });
        let m = agent.metrics();
        assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
        m
    }
}

/// An agent shipping [`LINES`] lines, written at once, to a receiver that is down
/// (503, long enough for them to fill a 256 KiB spool) with the sink's `spool`.
struct Outage {
    setup: Setup,
    agent: Agent,
}

impl Outage {
    fn start(spool: &str) -> Outage {
        let setup = Setup::new(spool);
        setup
            .receiver
            .script((0..10_000).map(|_| Reply::retry_after(503, "1")));
        let agent = setup.start_agent();
        write_lines_at_rate(&setup.logs.join("app.log"), LINES, 10_000_000, |_, _| {});
        Outage { setup, agent }
    }
}

#[test]
fn a_full_spool_blocks_reading_until_the_destination_returns() {
    let Outage { setup, mut agent } = Outage::start("{max_size: 256KiB, when_full: block}");
    let receiver = &setup.receiver;
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
        delivered(receiver).len() as u64 == LINES
    });
    let m = agent.metrics();
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
    assert_each_line_once(receiver, LINES, "no line twice without a restart");
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
    let Outage { setup, mut agent } = Outage::start("{max_size: 256KiB, when_full: drop_oldest}");
    let receiver = &setup.receiver;
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
            && delivered(receiver).len() as u64 + dropped as u64 >= LINES
    });
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
    let counts = delivered(receiver);
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
    let Outage { setup, mut agent } = Outage::start("{max_size: 64MiB}");
    let receiver = &setup.receiver;
    wait_for(WAIT, "every line spooled and checkpointed", || {
        let m = agent.metrics();
        metric(&m, "logtap_read_lag_bytes", &[]) == 0.0
            && metric(&m, "logtap_packages_in_flight", &[]) == 0.0
            && metric(&m, "logtap_checkpoint_writes_total", &[]) >= 2.0
    });
    std::thread::sleep(Duration::from_millis(1500)); // one more checkpoint interval
    agent.kill9();
    assert!(
        delivered(receiver).is_empty(),
        "nothing delivered before the kill"
    );

    let m = setup.restart_until_delivered(LINES);
    let counts = delivered(receiver);
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

fn packages(m: &str, path: &str) -> f64 {
    metric(
        m,
        "logtap_forward_packages_total",
        &[("sink", "otel"), ("path", path)],
    )
}

/// Packages handed over in memory are acknowledged to their source only by the
/// destination: killed while the destination holds the request, the agent reads them
/// again from the file after the restart, and every line arrives.
#[test]
fn kill9_while_packages_are_handed_over_in_memory_loses_nothing() {
    const FEW: u64 = 1_000;
    let setup = Setup::new("{max_size: 64MiB}");
    let receiver = &setup.receiver;
    // Longer than the test: the first request is never answered.
    receiver.script([Reply::Delay(Duration::from_secs(600))]);
    let mut agent = setup.start_agent();
    write_lines_at_rate(&setup.logs.join("app.log"), FEW, 10_000_000, |_, _| {});
    wait_for(WAIT, "every line read and handed over", || {
        let m = agent.metrics();
        metric(&m, "logtap_read_lag_bytes", &[]) == 0.0
            && metric(&m, "logtap_lines_read_total", &[]) == FEW as f64
            && packages(&m, "memory") >= 1.0
            && metric(&m, "logtap_checkpoint_writes_total", &[]) >= 2.0
    });
    std::thread::sleep(Duration::from_millis(1500)); // one more checkpoint interval
    let m = agent.metrics();
    assert_eq!(packages(&m, "spool") + packages(&m, "spilled"), 0.0);
    assert_eq!(metric(&m, "logtap_spool_bytes", &[("sink", "otel")]), 0.0);
    assert!(
        metric(&m, "logtap_packages_in_flight", &[]) >= 1.0,
        "not acknowledged before the destination answers"
    );
    agent.kill9();
    assert!(delivered(receiver).is_empty());

    let m = setup.restart_until_delivered(FEW);
    assert_eq!(
        metric(&m, "logtap_lines_read_total", &[]),
        FEW as f64,
        "the checkpoint had not advanced: everything was read again"
    );
    assert_each_line_once(receiver, FEW, "the first run delivered nothing");
}

/// While the destination keeps up nothing is spooled; an outage moves the packages in
/// memory and every new one to the spool; after the recovery every line arrives once,
/// in order, and packages go in memory again once the spool is sent.
#[test]
fn an_outage_moves_new_packages_to_the_spool_and_every_line_arrives_once_in_order() {
    const PART: u64 = 20_000;
    let setup = Setup::new("{max_size: 64MiB}");
    let receiver = &setup.receiver;
    let mut agent = setup.start_agent();
    let log = setup.logs.join("app.log");
    let lines = |receiver: &OtlpReceiver| delivered(receiver).len() as u64;

    write_lines_at_rate(&log, PART, 100_000, |_, _| {});
    wait_for(WAIT, "the first part delivered", || lines(receiver) == PART);
    let m = agent.metrics();
    assert!(packages(&m, "memory") >= 1.0);
    assert_eq!(packages(&m, "spool") + packages(&m, "spilled"), 0.0);
    assert_eq!(metric(&m, "logtap_spool_bytes", &[("sink", "otel")]), 0.0);

    receiver.script((0..10_000).map(|_| Reply::retry_after(503, "1")));
    // `write_lines_at_rate` numbers from 0: the second part's lines are told apart by
    // their position in the file, so write it with its own numbers.
    append_lines(&log, PART..2 * PART);
    wait_for(WAIT, "the second part spooled", || {
        let m = agent.metrics();
        metric(&m, "logtap_read_lag_bytes", &[]) == 0.0
            && metric(&m, "logtap_packages_in_flight", &[]) == 0.0
            && packages(&m, "spool") >= 1.0
    });
    assert_eq!(lines(receiver), PART, "nothing delivered during the outage");

    receiver.clear_script();
    wait_for(WAIT, "the second part delivered", || {
        lines(receiver) == 2 * PART
    });
    let memory_before = packages(&agent.metrics(), "memory");
    append_lines(&log, 2 * PART..2 * PART + 1_000);
    wait_for(WAIT, "the last lines delivered", || {
        lines(receiver) == 2 * PART + 1_000
    });
    let m = agent.metrics();
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
    assert!(
        packages(&m, "memory") > memory_before,
        "memory again once the spool is sent"
    );
    let seqs: Vec<u64> = receiver
        .accepted_bodies()
        .iter()
        .map(|b| seq_of(b).unwrap())
        .collect();
    assert_eq!(
        seqs,
        (0..2 * PART + 1_000).collect::<Vec<_>>(),
        "once each, in order"
    );
    assert_eq!(metric(&m, "logtap_dropped_lines_total", &[]), 0.0);
    assert_eq!(
        metric(
            &m,
            "logtap_forward_acked_records_total",
            &[("sink", "otel")]
        ),
        (2 * PART + 1_000) as f64
    );
}

/// Appends the test lines numbered `seqs` at once.
fn append_lines(path: &Path, seqs: std::ops::Range<u64>) {
    use std::io::Write;
    let mut text = String::new();
    for seq in seqs {
        text.push_str(&rate_line(seq));
        text.push('\n');
    }
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

//! Rotation under load, with the real binary: rename + create (logrotate `create`),
//! copytruncate, and a CRI partial line cut by a rename rotation.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const RATE: u64 = 50_000;

fn config(logs: &Path, format: &str) -> String {
    // rotate_wait is short so rotated files are also ended (and closed) during the run.
    format!(
        "files: {{rotate_wait: 1s}}\n\
         sources:\n  - name: app\n    include: [\"{}/*.log\"]\n    format: {format}\n    sink: local\n\
         sinks:\n  local: {{type: store}}\n",
        logs.display()
    )
}

/// `logs/*.log` into the store, with the defaults otherwise.
fn store_config(logs: &Path) -> String {
    format!(
        "sources:\n  - name: app\n    include: [\"{}/*.log\"]\n    sink: local\n\
         sinks:\n  local: {{type: store}}\n",
        logs.display()
    )
}

/// While the agent is stopped: `app` becomes `app.1` (a name the glob does not
/// match) and a new `app` gets the lines `seqs`.
fn rotate_while_stopped(app: &Path, seqs: std::ops::Range<u64>) {
    std::fs::rename(app, app.with_extension("log.1")).unwrap();
    append_seqs(app, seqs);
}

/// `app.log` is renamed to `app.log.<n>` every 30,000 lines and the writer reopens
/// `app.log`. The glob matches only `*.log`, so the rotated files are drained through
/// the descriptor the agent already holds, not rediscovered.
#[test]
fn rename_rotation_under_load_loses_nothing() {
    const TOTAL: u64 = 150_000;
    const EVERY: u64 = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut agent = Agent::start(&dir.path().join("data"), &config(&logs, "raw"));
    let store = agent.store_dir();

    let mut rotations = 0;
    let started = Instant::now();
    let written = write_lines_at_rate(&logs.join("app.log"), TOTAL, RATE, |n, path| {
        if n % EVERY == 0 && n < TOTAL {
            rotations += 1;
            std::fs::rename(path, logs.join(format!("app.log.{rotations}"))).unwrap();
        }
    });
    println!(
        "wrote {written} lines with {rotations} rotations in {:?}",
        started.elapsed()
    );
    wait_for_every(
        Duration::from_secs(30),
        Duration::from_millis(300),
        "every line in the store",
        || store_unique(&store) >= written,
    );
    println!("all lines stored after {:?}", started.elapsed());
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());

    let records = store_records(&store);
    let census = SeqCensus::of(&records);
    assert!(
        census.malformed.is_empty(),
        "records that are not whole written lines: {:?}",
        &census.malformed[..census.malformed.len().min(5)]
    );
    let missing = census.missing(written);
    assert!(
        missing.is_empty(),
        "{} seqs missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(
        census.counts.len() as u64,
        written,
        "no seq that was never written"
    );
    assert_eq!(
        census.duplicates(),
        0,
        "a run without crashes ships each line once"
    );
    assert_offsets_increase(&records);
    for r in &records {
        assert_eq!(
            r["path"].as_str(),
            Some(logs.join("app.log").to_str().unwrap()),
            "records keep their discovery path"
        );
    }
    let sources: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r["source_id"].as_str())
        .collect();
    assert_eq!(
        sources.len(),
        rotations + 1,
        "one source per file generation"
    );
}

/// `cp app.log app.log.<k> && truncate -s 0 app.log` from another thread (as logrotate
/// `copytruncate` does, concurrently with the writer) while 50,000 lines/s are
/// appended. Lines written between the copy and the truncate are lost by
/// copytruncate itself; everything in the copies or the final file must be stored.
#[test]
fn copytruncate_under_load_loses_only_the_copy_window() {
    const TOTAL: u64 = 150_000;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let file = logs.join("app.log");
    let mut agent = Agent::start(&dir.path().join("data"), &config(&logs, "raw"));
    let store = agent.store_dir();

    let done = std::sync::atomic::AtomicBool::new(false);
    let (written, copies) = std::thread::scope(|s| {
        let rotator = s.spawn(|| {
            let mut copies: Vec<PathBuf> = Vec::new();
            while copies.len() < 4 && !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(600));
                if !file.exists() {
                    continue;
                }
                let copy = logs.join(format!("app.log.{}", copies.len() + 1));
                std::fs::copy(&file, &copy).unwrap();
                // A copy takes about a millisecond here, less than the writer's
                // bursts; a slower disk (or a compressing copy) leaves a wider window.
                // Widen it, so the window is never empty.
                std::thread::sleep(Duration::from_millis(5));
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&file)
                    .unwrap()
                    .set_len(0)
                    .unwrap();
                copies.push(copy);
            }
            copies
        });
        let written = write_lines_at_rate(&file, TOTAL, RATE, |_, _| {});
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (written, rotator.join().unwrap())
    });
    assert!(
        copies.len() >= 3,
        "only {} copytruncates happened",
        copies.len()
    );

    // What survived on disk: whole lines of the copies and of the final file. A copy
    // may end inside a line the writer was writing; that torn tail is not a line.
    let mut on_disk = BTreeSet::new();
    for path in copies.iter().chain([&file]) {
        let text = std::fs::read(path).unwrap();
        for line in text.split_inclusive(|&b| b == b'\n') {
            let Some(line) = line.strip_suffix(b"\n") else {
                continue;
            };
            if let Some(seq) = seq_of(line)
                && line == rate_line(seq).as_bytes()
            {
                on_disk.insert(seq);
            }
        }
    }
    let window = written - on_disk.len() as u64;
    println!(
        "wrote {written} lines, {} copytruncates, {window} lines lost in the copy→truncate window",
        copies.len()
    );

    wait_for_every(
        Duration::from_secs(30),
        Duration::from_millis(300),
        "every line on disk in the store",
        || store_unique(&store) >= on_disk.len() as u64,
    );
    // The file's last lines may still be on their way.
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());

    let records = store_records(&store);
    let census = SeqCensus::of(&records);
    let stored: BTreeSet<u64> = census.counts.keys().copied().collect();
    let lost: Vec<u64> = on_disk.difference(&stored).copied().collect();
    assert!(
        lost.is_empty(),
        "{} lines on disk but not in the store, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let invented: Vec<u64> = stored.iter().copied().filter(|&s| s >= written).collect();
    assert!(invented.is_empty(), "seqs never written: {invented:?}");
    let rescued = stored.difference(&on_disk).count();
    println!(
        "{rescued} of the {window} window lines were read before the truncate; {} torn records",
        census.malformed.len()
    );
    // A copy that ends inside a line holds a torn tail the agent may ship, flagged.
    for r in &census.malformed {
        assert!(
            flags(r).iter().any(|f| f == "unterminated"),
            "only torn tails may differ from a written line: {r}"
        );
    }
    assert_eq!(
        census.duplicates(),
        0,
        "no line shipped twice without a crash"
    );
    assert_offsets_increase(&records);
}

/// A CRI `P` line at the end of a file renamed away continues with the `F` line in the
/// new file at the same path: one record.
#[test]
fn cri_partial_line_straddles_rename_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let file = logs.join("0.log");
    let mut agent = Agent::start(&dir.path().join("data"), &config(&logs, "cri"));
    let store = agent.store_dir();

    let first = b"2026-11-21T10:00:00.000000001Z stdout P part1\n";
    std::fs::write(&file, first).unwrap();
    wait_for(Duration::from_secs(10), "the P line read", || {
        metric(&agent.metrics(), "logtap_bytes_read_total", &[]) >= first.len() as f64
    });
    std::fs::rename(&file, logs.join("0.log.20261121-1")).unwrap();
    let mut f = std::fs::File::create(&file).unwrap();
    f.write_all(b"2026-11-21T10:00:00.000000002Z stdout F part2\n")
        .unwrap();
    drop(f);

    wait_for(Duration::from_secs(10), "a record in the store", || {
        store_unique(&store) >= 1
    });
    // Past rotate_wait, so the rotated file was ended too: nothing more may appear.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
    let records = store_records(&store);
    let bodies: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&body_bytes(r)).into_owned())
        .collect();
    assert_eq!(bodies, ["part1part2"], "records: {records:?}");
    assert!(
        flags(&records[0]).iter().any(|f| f == "reassembled"),
        "flags: {:?}",
        flags(&records[0])
    );
    assert_eq!(records[0]["path"].as_str(), file.to_str());
}

/// Issue 9: the agent is killed with a backlog, the file is renamed to a name the
/// glob does not match (as the kubelet's `0.log.<timestamp>`) and a new file begins;
/// the restarted agent finds the renamed file by its identity and collects the rest of
/// it, from its checkpoint, before the new file.
#[test]
fn restart_after_a_rotation_while_stopped_collects_the_rotated_backlog() {
    const TOTAL: u64 = 200_000;
    const NEW: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let data = dir.path().join("data");
    let app = logs.join("app.log");
    write_lines_at_rate(&app, TOTAL, 10_000_000, |_, _| {});

    // First run: ships into a blackhole and persists its first acknowledged progress
    // only (a 1 h interval), then dies: the checkpoint is far behind the file's end.
    let first = format!(
        "checkpoint: {{interval: 1h}}\n\
         sources:\n  - name: app\n    include: [\"{}/*.log\"]\n    sink: discard\n\
         sinks:\n  discard: {{type: blackhole}}\n",
        logs.display()
    );
    let mut agent = Agent::start(&data, &first);
    wait_for(
        Duration::from_secs(20),
        "the first progress checkpoint",
        || checkpointed_offset(&data, &app) > 0,
    );
    agent.kill9();

    rotate_while_stopped(&app, TOTAL..TOTAL + NEW);

    // Second run, into the store.
    let second = store_config(&logs);
    let mut agent = Agent::start(&data, &second);
    let store = agent.store_dir();
    wait_for(Duration::from_secs(30), "the new file's lines", || {
        let records = if store.exists() {
            store_records_deduplicated(&store)
        } else {
            Vec::new()
        };
        let census = SeqCensus::of(&records);
        (TOTAL..TOTAL + NEW).all(|s| census.counts.contains_key(&s))
    });
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
    let census = SeqCensus::of(&store_records_deduplicated(&store));
    let first_seq = *census.counts.keys().next().unwrap();
    println!("the restart resumed the rotated file at seq {first_seq}");
    assert!(first_seq > 0, "the first run's checkpoint was used");
    assert!(
        first_seq < TOTAL,
        "the rotated file's backlog was collected (the log says: {})",
        agent
            .log()
            .lines()
            .filter(|l| l.contains("checkpoint"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let missing: Vec<u64> = (first_seq..TOTAL + NEW)
        .filter(|s| !census.counts.contains_key(s))
        .collect();
    assert_eq!(
        missing,
        Vec::<u64>::new(),
        "every line after the checkpoint"
    );
    assert!(
        census.malformed.is_empty(),
        "{:?}",
        census.malformed.first()
    );
}

/// The same as [`restart_after_a_rotation_while_stopped_collects_the_rotated_backlog`]
/// with the first run stopped by SIGTERM (a DaemonSet rolling update) instead of
/// kill -9, both runs into the store: every line of the rotated file and of the new
/// one is stored, exactly once (a clean stop checkpoints exactly what was stored).
#[test]
fn sigterm_after_a_rotation_while_stopped_collects_the_rotated_backlog_exactly_once() {
    // Twice the kill -9 variant's: the first run must not read it all before the stop.
    const TOTAL: u64 = 400_000;
    const NEW: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let data = dir.path().join("data");
    let app = logs.join("app.log");
    write_lines_at_rate(&app, TOTAL, 10_000_000, |_, _| {});
    let config = store_config(&logs);

    let store = stop_soon_after_shipping_starts(&data, &config);
    let first_run = store_records(&store).len() as u64;
    println!("the first run stored {first_run} of {TOTAL} lines");
    assert!(first_run < TOTAL, "a backlog remained at the stop");

    rotate_while_stopped(&app, TOTAL..TOTAL + NEW);

    let mut agent = Agent::start(&data, &config);
    wait_for(Duration::from_secs(60), "the new file's lines", || {
        let census = SeqCensus::of(&store_records(&store));
        (TOTAL..TOTAL + NEW).all(|s| census.counts.contains_key(&s))
    });
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
    let census = SeqCensus::of(&store_records(&store));
    assert_eq!(
        census.missing(TOTAL + NEW),
        Vec::<u64>::new(),
        "every line of the rotated and the new file (the log says: {})",
        agent
            .log()
            .lines()
            .filter(|l| l.contains("checkpoint"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(census.counts.len() as u64, TOTAL + NEW);
    assert_eq!(census.duplicates(), 0, "a clean stop re-ships nothing");
    assert!(
        census.malformed.is_empty(),
        "{:?}",
        census.malformed.first()
    );
}

/// A first run held to 2% of the time, so its files keep a backlog, stopped cleanly
/// (SIGTERM, as a rolling update does) soon after it started shipping; returns its
/// store.
fn stop_soon_after_shipping_starts(data: &Path, config: &str) -> PathBuf {
    let mut agent = Agent::start(data, config);
    let throttle = agent.throttle(2);
    let store = agent.store_dir();
    wait_for(Duration::from_secs(30), "the first lines stored", || {
        store_unique(&store) > 0
    });
    drop(throttle);
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
    store
}

/// The offset the agent's durable checkpoint table holds for the file now at `path`
/// (0 when it holds none).
fn checkpointed_offset(data: &Path, path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    logtap::checkpoint::Registry::open(&data.join("checkpoints"))
        .unwrap()
        .lookup(meta.dev(), meta.ino())
        .map_or(0, |c| c.offset)
}

/// Appends the lines `seqs` to `path`; returns the bytes written.
fn append_seqs(path: &Path, seqs: std::ops::Range<u64>) -> u64 {
    let mut buf = Vec::new();
    for seq in seqs {
        writeln!(buf, "{}", rate_line(seq)).unwrap();
    }
    open_append(path).write_all(&buf).unwrap();
    buf.len() as u64
}

/// Files destroyed while the agent is stopped (a rolling update during log cleanup):
/// a file deleted with a backlog loses exactly its unread bytes, and they are counted
/// to the byte; a file copy-truncated meanwhile loses nothing (it is read on from
/// logrotate's copy). A clean stop checkpoints exactly what was stored, so the counts
/// are exact.
#[test]
fn files_deleted_or_copy_truncated_while_stopped_lose_only_what_is_counted() {
    const EACH: u64 = 200_000;
    const NEW: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let data = dir.path().join("data");
    let (gone, copied) = (logs.join("gone.log"), logs.join("copied.log"));
    let gone_size = append_seqs(&gone, 0..EACH);
    append_seqs(&copied, EACH..2 * EACH);
    let config = store_config(&logs);

    let store = stop_soon_after_shipping_starts(&data, &config);
    let first = SeqCensus::of(&store_records(&store));
    let gone_stored = first.counts.range(0..EACH).count() as u64;
    let copied_stored = first.counts.range(EACH..2 * EACH).count() as u64;
    println!("the first run stored {gone_stored} and {copied_stored} of {EACH} lines");
    assert!(
        gone_stored < EACH && copied_stored < EACH,
        "backlogs remained"
    );
    assert_eq!(first.missing(gone_stored), Vec::<u64>::new(), "a prefix");

    // While stopped: one file deleted, the other copy-truncated and written again.
    std::fs::remove_file(&gone).unwrap();
    std::fs::copy(&copied, logs.join("copied.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&copied)
        .unwrap()
        .set_len(0)
        .unwrap();
    append_seqs(&copied, 2 * EACH..2 * EACH + NEW);

    let mut agent = Agent::start(&data, &config);
    wait_for(
        Duration::from_secs(60),
        "the copy's backlog and the new lines",
        || {
            let census = SeqCensus::of(&store_records(&store));
            (EACH..2 * EACH + NEW).all(|s| census.counts.contains_key(&s))
        },
    );
    let metrics = agent.metrics();
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
    let unread: u64 = (gone_stored..EACH)
        .map(|s| rate_line(s).len() as u64 + 1)
        .sum();
    assert_eq!(
        unread,
        gone_size
            - (0..gone_stored)
                .map(|s| rate_line(s).len() as u64 + 1)
                .sum::<u64>()
    );
    let dropped = |reason| {
        metric(
            &metrics,
            "logtap_dropped_bytes_total",
            &[("reason", reason)],
        ) as u64
    };
    assert_eq!(
        dropped("deleted_while_stopped"),
        unread,
        "the deleted file's backlog; the log says:\n{}",
        agent.log()
    );
    assert_eq!(
        dropped("truncated_while_stopped"),
        0,
        "the copy held the rest"
    );
    assert_eq!(
        dropped("replaced_while_stopped"),
        0,
        "the copy held the rest"
    );
    let census = SeqCensus::of(&store_records(&store));
    let lost: Vec<u64> = census.missing(2 * EACH + NEW);
    assert_eq!(
        lost,
        (gone_stored..EACH).collect::<Vec<_>>(),
        "only the deleted backlog"
    );
    assert_eq!(census.duplicates(), 0, "a clean stop re-ships nothing");
    assert!(
        census.malformed.is_empty(),
        "{:?}",
        census.malformed.first()
    );
}

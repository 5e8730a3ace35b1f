//! The spool and the forwarder against a scripted destination: delivery, outages,
//! restarts, full spools, refusals and damage, each with exact counts.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::batch::Batch;
use crate::config::network::{BlockCompression, ForwardConfig, SpoolConfig, WhenFull};
use crate::frame::{LineFlags, Record, Stream};
use crate::source::{SourceId, SourceInfo, SourceKind};

/// What the scripted destination does and what it received.
#[derive(Default)]
struct Script {
    /// While false every send fails with `unavailable`.
    up: bool,
    /// Package ids refused for good as a whole (`bad_request`).
    refuse: BTreeSet<u64>,
    /// Acknowledged records: (source id, package id, offset).
    delivered: Vec<(u64, u64, u64)>,
    /// Every send attempt's first seq, in order.
    attempts: Vec<u64>,
    /// The next attempt takes this long (then this is cleared).
    slow_once: Option<Duration>,
}

#[derive(Clone)]
struct Scripted(Arc<Mutex<Script>>);

impl Destination for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn send(&mut self, window: &[SpooledPackage]) -> Result<Delivered, SendError> {
        let slow = self.0.lock().unwrap().slow_once.take();
        if let Some(wait) = slow {
            std::thread::sleep(wait);
        }
        let mut s = self.0.lock().unwrap();
        s.attempts.push(window[0].seq);
        if !s.up {
            return Err(SendError {
                reason: "unavailable",
                detail: "scripted outage".into(),
                retry_after: Some(Duration::from_millis(5)),
            });
        }
        let mut delivered = Delivered::default();
        for (i, p) in window.iter().enumerate() {
            if s.refuse.contains(&p.package_id) {
                delivered.rejected.push(Rejected {
                    package: i,
                    records: None,
                    reason: "bad_request",
                    detail: "scripted refusal".into(),
                });
                continue;
            }
            for r in &p.package.records {
                s.delivered.push((p.source.id.0, p.package_id, r.offset));
            }
        }
        Ok(delivered)
    }
}

fn source(id: u64) -> Arc<SourceInfo> {
    Arc::new(SourceInfo {
        id: SourceId(id),
        kind: SourceKind::File,
        path: format!("/var/log/app-{id}.log").into(),
        config_name: Arc::from("test"),
    })
}

/// Package `package_id` of `source`: `lines` records of 100 bytes at offsets
/// `package_id * 1000 + i`.
fn batch(source: &Arc<SourceInfo>, package_id: u64, lines: usize) -> Batch {
    let base = package_id * 1000;
    Batch {
        chunks: Vec::new(),
        source: source.clone(),
        package_id,
        lines: Vec::new(),
        fields: Vec::new(),
        source_fields: Default::default(),
        end_offset: base + lines as u64,
    }
    .with_lines(
        (0..lines)
            .map(|i| Record {
                offset: base + i as u64,
                timestamp_ns: 1_700_000_000_000_000_000,
                stream: Stream::None,
                flags: LineFlags::empty(),
                body: Bytes::from(format!("{package_id:06}-{i:04}-{}", noise(base + i as u64)))
                    .into(),
            })
            .collect(),
    )
}

/// 88 characters lz4 cannot shrink much, so spool sizes are real.
fn noise(seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..11)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:08x}", x as u32)
        })
        .collect()
}

fn config(dir: &std::path::Path, max_bytes: u64, when_full: WhenFull) -> ForwardConfig {
    ForwardConfig {
        spool: SpoolConfig {
            path: dir.join("spool"),
            max_bytes,
            segment_bytes: (max_bytes / 4).max(4096),
            when_full,
            compression: BlockCompression::Lz4,
        },
        dead_letter: Some(dir.join("dead.ndjson")),
        max_window_bytes: 64 * 1024,
        max_window_packages: 8,
        drain_timeout: Duration::from_millis(200),
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn expected(
    source: u64,
    packages: std::ops::RangeInclusive<u64>,
    lines: usize,
) -> Vec<(u64, u64, u64)> {
    packages
        .flat_map(|p| (0..lines as u64).map(move |i| (source, p, p * 1000 + i)))
        .collect()
}

#[test]
fn delivers_every_record_once_and_resumes_from_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Mutex::new(Script {
        up: true,
        ..Script::default()
    }));
    let src = source(7);
    let config = config(dir.path(), 64 << 20, WhenFull::Block);
    {
        let mut sink =
            NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
        for p in 1..=40 {
            sink.write(&batch(&src, p, 10)).unwrap();
            if p % 7 == 0 {
                sink.flush().unwrap();
            }
        }
        sink.flush().unwrap();
        wait_until("delivery", || sink.unforwarded() == 0);
        assert_eq!(sink.stats(), spool::SpoolStats::default());
    }
    assert_eq!(script.lock().unwrap().delivered, expected(7, 1..=40, 10));
    let cursor = spool::read_cursor(&config.spool.path);
    let segment = std::fs::read_dir(config.spool.path.join("segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        cursor.forwarded_below,
        spool::SpoolPos {
            segment: 0,
            position: segment.metadata().unwrap().len()
        },
        "the cursor is at the end of the only segment"
    );

    // A restart finds nothing to forward, then forwards only what is new.
    let sink = NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
    assert_eq!(sink.unforwarded(), 0);
    let mut sink = sink;
    sink.write(&batch(&src, 41, 3)).unwrap();
    sink.flush().unwrap();
    wait_until("delivery after restart", || sink.unforwarded() == 0);
    drop(sink);
    let s = script.lock().unwrap();
    assert_eq!(s.delivered.len(), 403);
    assert_eq!(&s.delivered[400..], &expected(7, 41..=41, 3)[..]);
}

/// `spool.compression: none` writes blocks of the same format, about as large as their
/// payloads; a spool is read back whatever the setting it was written with.
#[test]
fn an_uncompressed_spool_delivers_everything_and_either_setting_reads_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Mutex::new(Script::default()));
    let src = source(3);
    let mut config = config(dir.path(), 64 << 20, WhenFull::Block);
    let segments = config.spool.path.join("segments");
    let spooled = || -> u64 {
        std::fs::read_dir(&segments)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    // The destination is down: what each setting writes stays in the spool.
    let mut lz4_bytes = 0;
    for (compression, packages) in [
        (BlockCompression::Lz4, 1..=10),
        (BlockCompression::None, 11..=20),
    ] {
        config.spool.compression = compression;
        let mut sink =
            NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
        let before = spooled();
        for p in packages {
            sink.write(&batch(&src, p, 50)).unwrap();
        }
        sink.flush().unwrap();
        let written = spooled() - before;
        let bodies = 10 * 50 * batch(&src, 1, 1).lines[0].body.len() as u64;
        match compression {
            BlockCompression::Lz4 => lz4_bytes = written,
            BlockCompression::None => assert!(
                written > bodies && written > lz4_bytes,
                "{written} bytes for {bodies} body bytes (lz4: {lz4_bytes})"
            ),
        }
    }
    // Restarted with lz4 again, the spool forwards the blocks of both settings.
    config.spool.compression = BlockCompression::Lz4;
    script.lock().unwrap().up = true;
    let sink = NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
    wait_until("delivery", || sink.unforwarded() == 0);
    assert_eq!(sink.stats().corrupt_lines, 0);
    drop(sink);
    assert_eq!(script.lock().unwrap().delivered, expected(3, 1..=20, 50));
}

#[test]
fn an_outage_does_not_stop_writing_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Mutex::new(Script::default()));
    let src = source(1);
    let config = config(dir.path(), 64 << 20, WhenFull::Block);
    let mut sink = NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
    for p in 1..=30 {
        // Every write and flush succeeds at once: the spool takes it, not the network.
        sink.write(&batch(&src, p, 20)).unwrap();
        sink.flush().unwrap();
    }
    wait_until("retries", || script.lock().unwrap().attempts.len() >= 3);
    assert_eq!(sink.unforwarded(), 30);
    assert!(script.lock().unwrap().delivered.is_empty());
    script.lock().unwrap().up = true;
    wait_until("delivery", || sink.unforwarded() == 0);
    assert!(sink.stats().retries >= 3, "{:?}", sink.stats());
    drop(sink);
    assert_eq!(script.lock().unwrap().delivered, expected(1, 1..=30, 20));
}

#[test]
fn a_restart_during_an_outage_forwards_the_spool_and_counts_replays() {
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Mutex::new(Script::default()));
    let src = source(2);
    let config = config(dir.path(), 64 << 20, WhenFull::Block);
    {
        let mut sink =
            NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
        for p in 1..=12 {
            sink.write(&batch(&src, p, 5)).unwrap();
        }
        sink.flush().unwrap();
        wait_until("a failed attempt", || {
            !script.lock().unwrap().attempts.is_empty()
        });
        // Dropped while the destination is down: the drain gives up after 200 ms.
    }
    let cursor = spool::read_cursor(&config.spool.path);
    assert_eq!(cursor.forwarded_below, spool::SpoolPos::default());
    assert!(
        cursor.sent_below > cursor.forwarded_below,
        "the first window went out"
    );

    script.lock().unwrap().up = true;
    let sink = NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
    wait_until("delivery", || sink.unforwarded() == 0);
    assert_eq!(sink.stats().replayed_packages, 8);
    drop(sink);
    assert_eq!(script.lock().unwrap().delivered, expected(2, 1..=12, 5));
}

#[test]
fn a_full_spool_blocks_writes_until_the_destination_drains_it() {
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Mutex::new(Script::default()));
    let src = source(3);
    let config = config(dir.path(), 256 * 1024, WhenFull::Block);
    let mut sink = NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
    let mut written = 0u64;
    let full = loop {
        written += 1;
        match sink.write(&batch(&src, written, 50)) {
            Ok(()) => sink.flush().unwrap(),
            Err(e) => break e,
        }
        assert!(written < 10_000, "the spool never filled");
    };
    assert!(
        matches!(full, SinkError::Transient(ref m) if m.contains("full")),
        "{full}"
    );
    let accepted = written - 1;
    script.lock().unwrap().up = true;
    // The same package is retried, as the sink worker does, and now fits.
    wait_until("room", || sink.write(&batch(&src, written, 50)).is_ok());
    sink.flush().unwrap();
    wait_until("delivery", || sink.unforwarded() == 0);
    assert_eq!(sink.stats().dropped_lines, 0);
    drop(sink);
    assert_eq!(
        script.lock().unwrap().delivered,
        expected(3, 1..=accepted + 1, 50)
    );
}

#[test]
fn drop_oldest_deletes_unforwarded_packages_and_counts_them_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Mutex::new(Script::default()));
    let src = source(4);
    let config = config(dir.path(), 256 * 1024, WhenFull::DropOldest);
    let mut sink = NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
    let total = 400u64;
    for p in 1..=total {
        sink.write(&batch(&src, p, 50)).unwrap();
        sink.flush().unwrap();
    }
    let stats = sink.stats();
    assert!(stats.dropped_packages > 0, "{stats:?}");
    assert_eq!(stats.dropped_lines, stats.dropped_packages * 50);
    script.lock().unwrap().up = true;
    wait_until("delivery", || sink.unforwarded() == 0);
    let stats = sink.stats();
    drop(sink);
    let delivered = script.lock().unwrap().delivered.clone();
    // Every package is either delivered whole or counted as dropped, never both.
    let packages: BTreeSet<u64> = delivered.iter().map(|d| d.1).collect();
    assert_eq!(delivered.len() as u64, packages.len() as u64 * 50);
    assert_eq!(packages.len() as u64 + stats.dropped_packages, total);
    assert!(packages.contains(&total), "the newest package survives");
}

#[test]
fn refused_packages_are_counted_and_dead_lettered_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Mutex::new(Script {
        up: true,
        refuse: [3, 5].into(),
        ..Script::default()
    }));
    let src = source(5);
    let config = config(dir.path(), 64 << 20, WhenFull::Block);
    let mut sink = NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
    for p in 1..=6 {
        sink.write(&batch(&src, p, 4)).unwrap();
    }
    sink.flush().unwrap();
    wait_until("delivery", || sink.unforwarded() == 0);
    assert_eq!(sink.stats().rejected_lines, 8);
    drop(sink);
    let s = script.lock().unwrap();
    let delivered: BTreeSet<u64> = s.delivered.iter().map(|d| d.1).collect();
    assert_eq!(delivered, [1, 2, 4, 6].into());
    assert_eq!(s.attempts.len(), 1, "a refusal is never retried");
    let dead = std::fs::read_to_string(dir.path().join("dead.ndjson")).unwrap();
    let lines: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    assert!(lines.iter().all(|l| l["reject_reason"] == "bad_request"));
    assert_eq!(lines[0]["package_id"], 3);
    assert_eq!(lines[4]["package_id"], 5);
    assert_eq!(lines[0]["offset"], 3000);
}

#[test]
fn a_damaged_block_is_skipped_and_counted_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Mutex::new(Script::default()));
    let src = source(6);
    let mut config = config(dir.path(), 64 << 20, WhenFull::Block);
    // One block per segment: the damaged one is sealed (the active segment's torn
    // tail is the store's business).
    config.spool.segment_bytes = 1;
    {
        let mut sink =
            NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
        for p in 1..=3 {
            sink.write(&batch(&src, p, 10)).unwrap();
        }
        sink.flush().unwrap();
    }
    let mut segments: Vec<_> = std::fs::read_dir(config.spool.path.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    assert_eq!(segments.len(), 3);
    let mut bytes = std::fs::read(&segments[1]).unwrap();
    bytes[80 + 5] ^= 0xff;
    std::fs::write(&segments[1], &bytes).unwrap();

    script.lock().unwrap().up = true;
    let sink = NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
    wait_until("delivery", || sink.unforwarded() == 0);
    assert_eq!(sink.stats().corrupt_lines, 10);
    drop(sink);
    let delivered: BTreeSet<u64> = script
        .lock()
        .unwrap()
        .delivered
        .iter()
        .map(|d| d.1)
        .collect();
    assert_eq!(delivered, [1, 3].into());
}

#[test]
fn forwarded_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Mutex::new(Script {
        up: true,
        ..Script::default()
    }));
    let src = source(8);
    let config = config(dir.path(), 1 << 20, WhenFull::Block);
    let mut sink = NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
    for p in 1..=200 {
        sink.write(&batch(&src, p, 50)).unwrap();
        sink.flush().unwrap();
    }
    wait_until("delivery", || sink.unforwarded() == 0);
    sink.idle().unwrap();
    let segments = std::fs::read_dir(config.spool.path.join("segments"))
        .unwrap()
        .count();
    assert_eq!(segments, 1, "only the active segment is left");
    drop(sink);
    assert_eq!(script.lock().unwrap().delivered.len(), 200 * 50);
}

/// The sink worker's part for [`NetworkSink::offer`]: registers each package as sent,
/// offers it, flushes now and then and acknowledges what the spool made durable.
struct Worker {
    registry: crate::checkpoint::SharedRegistry,
    /// How each package was taken, in order.
    accepted: Vec<(u64, super::Accepted)>,
    at_flush: Vec<(SourceId, u64)>,
}

impl Worker {
    fn new(dir: &std::path::Path) -> Worker {
        Worker {
            registry: Arc::new(
                crate::checkpoint::Registry::open(&dir.join("checkpoints")).unwrap(),
            ),
            accepted: Vec::new(),
            at_flush: Vec::new(),
        }
    }

    fn offer(&mut self, sink: &mut NetworkSink, batch: &Batch) {
        self.registry
            .sent(batch.source.id, batch.package_id, batch.end_offset);
        let accepted = sink
            .offer(&Arc::new(batch.clone()), &self.registry)
            .unwrap();
        if accepted == super::Accepted::AtFlush {
            self.at_flush.push((batch.source.id, batch.package_id));
        }
        self.accepted.push((batch.package_id, accepted));
    }

    fn flush(&mut self, sink: &mut NetworkSink) {
        sink.flush().unwrap();
        for (source, package_id) in self.at_flush.drain(..) {
            self.registry.acked(source, package_id);
        }
    }

    /// The packages that went in memory, and those that went to the spool.
    fn paths(&self) -> (Vec<u64>, Vec<u64>) {
        let by = |a| {
            self.accepted
                .iter()
                .filter(|p| p.1 == a)
                .map(|p| p.0)
                .collect()
        };
        (by(super::Accepted::BySink), by(super::Accepted::AtFlush))
    }
}

fn spool_bytes(config: &ForwardConfig) -> u64 {
    std::fs::read_dir(config.spool.path.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// A destination that keeps up takes every package from memory: nothing is written
/// to the spool, and a package's checkpoint advances only once the destination
/// acknowledged it (a crash before re-reads it from its source).
#[test]
fn keeping_up_hands_packages_over_in_memory_acknowledged_by_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Mutex::new(Script::default()));
    let config = config(dir.path(), 64 << 20, WhenFull::Block);
    let mut worker = Worker::new(dir.path());
    let src = crate::checkpoint::registered_test_source(&worker.registry, 21, "/var/log/a");
    let mut sink = NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();

    // Down: the package waits in memory, its checkpoint where it was.
    worker.offer(&mut sink, &batch(&src, 1, 10));
    wait_until("an attempt", || !script.lock().unwrap().attempts.is_empty());
    assert_eq!(worker.registry.acked_offset(src.id), Some(0));
    script.lock().unwrap().up = true;
    wait_until("delivery", || sink.unforwarded() == 0);
    wait_until("the acknowledgement", || {
        worker.registry.acked_offset(src.id) == Some(batch(&src, 1, 10).end_offset)
    });

    for p in 2..=60 {
        worker.offer(&mut sink, &batch(&src, p, 10));
        if p % 7 == 0 {
            worker.flush(&mut sink);
        }
    }
    worker.flush(&mut sink);
    wait_until("delivery", || sink.unforwarded() == 0);
    let end = batch(&src, 60, 10).end_offset;
    wait_until("the acknowledgements", || {
        worker.registry.acked_offset(src.id) == Some(end)
    });
    assert_eq!(worker.paths(), ((1..=60).collect(), vec![]));
    assert_eq!(spool_bytes(&config), 0, "nothing was spooled");
    assert_eq!(worker.registry.in_flight(), 0);
    let stats = sink.stats();
    assert!(stats.retries >= 1, "the outage's attempts");
    assert_eq!(
        stats,
        spool::SpoolStats {
            retries: stats.retries,
            ..Default::default()
        }
    );
    drop(sink);
    assert_eq!(script.lock().unwrap().delivered, expected(21, 1..=60, 10));
}

/// An outage: what was in memory and everything after it goes to the spool, in order,
/// and is acknowledged to the sources once durable there; after the recovery every
/// record arrives once, in order, and memory takes over again once the spool is sent.
#[test]
fn an_outage_spills_to_the_spool_in_order_and_delivers_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Mutex::new(Script::default()));
    let config = config(dir.path(), 64 << 20, WhenFull::Block);
    let mut worker = Worker::new(dir.path());
    let a = crate::checkpoint::registered_test_source(&worker.registry, 31, "/var/log/a");
    let b = crate::checkpoint::registered_test_source(&worker.registry, 32, "/var/log/b");
    let mut sink = NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
    for p in 1..=30 {
        worker.offer(&mut sink, &batch(&a, p, 20));
        worker.offer(&mut sink, &batch(&b, p, 20));
        if p % 5 == 0 {
            worker.flush(&mut sink);
        }
    }
    worker.flush(&mut sink);
    let (memory, spooled) = worker.paths();
    assert!(!memory.is_empty() && !spooled.is_empty(), "{memory:?}");
    // Once a package went to the spool, every later one did (order).
    let first_spooled = worker
        .accepted
        .iter()
        .position(|p| p.1 == super::Accepted::AtFlush)
        .unwrap();
    assert!(
        worker.accepted[first_spooled..]
            .iter()
            .all(|p| p.1 == super::Accepted::AtFlush),
        "{:?}",
        worker.accepted
    );
    // Everything is durable in the spool, the packages taken in memory too: every
    // checkpoint is at its end although the destination has nothing yet.
    for s in [&a, &b] {
        assert_eq!(
            worker.registry.acked_offset(s.id),
            Some(batch(s, 30, 20).end_offset)
        );
    }
    assert!(spool_bytes(&config) > 0);
    wait_until("the window from memory given up", || {
        sink.shared.lock().handoff.in_flight.is_empty()
    });
    assert!(script.lock().unwrap().delivered.is_empty());

    script.lock().unwrap().up = true;
    wait_until("delivery", || sink.unforwarded() == 0);
    // The window from memory that failed is sent again from the spool, counted as
    // possibly duplicated (here it was not: every attempt failed whole).
    let replayed = sink.stats().replayed_packages;
    assert!((1..=8).contains(&replayed), "{replayed}");
    assert_eq!(sink.stats().dropped_lines + sink.stats().rejected_lines, 0);
    // The spool is sent: memory again.
    worker.offer(&mut sink, &batch(&a, 31, 20));
    assert_eq!(worker.accepted.last().unwrap().1, super::Accepted::BySink);
    wait_until("delivery", || sink.unforwarded() == 0);
    drop(sink);
    let delivered = script.lock().unwrap().delivered.clone();
    for (s, last) in [(31, 31), (32, 30)] {
        let of_source: Vec<_> = delivered.iter().copied().filter(|d| d.0 == s).collect();
        assert_eq!(
            of_source,
            expected(s, 1..=last, 20),
            "source {s}: once, in order"
        );
    }
    assert_eq!(delivered.len(), 61 * 20);
}

/// A destination slower than the hand-off's patience but not failing: the writer
/// spills, the window under way is acknowledged after all, and its spooled copies are
/// skipped: every record once, in order, nothing counted as replayed.
#[test]
fn a_slow_window_spilled_and_then_acknowledged_is_not_sent_twice() {
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Mutex::new(Script {
        up: true,
        slow_once: Some(handoff::SPILL_AFTER + Duration::from_millis(500)),
        ..Script::default()
    }));
    let config = config(dir.path(), 64 << 20, WhenFull::Block);
    let mut worker = Worker::new(dir.path());
    let src = crate::checkpoint::registered_test_source(&worker.registry, 41, "/var/log/a");
    let mut sink = NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
    worker.offer(&mut sink, &batch(&src, 1, 10));
    wait_until("the slow attempt", || {
        script.lock().unwrap().slow_once.is_none()
    });
    for p in 2..=12 {
        worker.offer(&mut sink, &batch(&src, p, 10));
    }
    worker.flush(&mut sink);
    let (memory, spooled) = worker.paths();
    assert_eq!(memory, (1..=9).collect::<Vec<_>>(), "one window waits");
    assert_eq!(spooled, (10..=12).collect::<Vec<_>>());
    wait_until("delivery", || sink.unforwarded() == 0);
    let end = batch(&src, 12, 10).end_offset;
    wait_until("the acknowledgements", || {
        worker.registry.acked_offset(src.id) == Some(end)
    });
    assert_eq!(sink.stats().replayed_packages, 0);
    assert!(sink.shared.lock().handoff.delivered_spilled.is_empty());
    drop(sink);
    assert_eq!(script.lock().unwrap().delivered, expected(41, 1..=12, 10));
}

/// Once an attempt from memory failed, the next package goes to the spool at once,
/// with the one waiting in memory: packages do not wait in memory, unacknowledged, for
/// a destination that is down.
#[test]
fn after_a_failed_attempt_new_packages_go_to_the_spool_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Mutex::new(Script::default()));
    let config = config(dir.path(), 64 << 20, WhenFull::Block);
    let mut worker = Worker::new(dir.path());
    let src = crate::checkpoint::registered_test_source(&worker.registry, 51, "/var/log/a");
    let mut sink = NetworkSink::start("t", &config, Box::new(Scripted(script.clone()))).unwrap();
    worker.offer(&mut sink, &batch(&src, 1, 10));
    wait_until("a failed attempt", || {
        !script.lock().unwrap().attempts.is_empty()
    });
    let started = Instant::now();
    worker.offer(&mut sink, &batch(&src, 2, 10));
    assert!(started.elapsed() < handoff::SPILL_AFTER, "no wait for room");
    assert_eq!(worker.paths(), (vec![1], vec![2]));
    worker.flush(&mut sink);
    // Package 1 was spilled with it: both are durable, both checkpointed.
    assert_eq!(
        worker.registry.acked_offset(src.id),
        Some(batch(&src, 2, 10).end_offset)
    );
    script.lock().unwrap().up = true;
    wait_until("delivery", || sink.unforwarded() == 0);
    drop(sink);
    assert_eq!(script.lock().unwrap().delivered, expected(51, 1..=2, 10));
}

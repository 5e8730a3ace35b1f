//! The thread that drives one sink: write packages, flush, then acknowledge.
//!
//! Acknowledgements go to the checkpoint registry only after `Sink::flush` succeeded,
//! so a checkpoint never points past data the sink could still lose. Flushes are
//! grouped (every `flush_interval` or every [`MAX_UNFLUSHED`] packages): one fsync
//! covers many packages.
//!
//! Errors: a transient failure is retried with capped exponential backoff, forever
//! (the bounded queue in front of the worker then applies backpressure to the
//! readers); a package the sink rejects is counted as dropped (reason `sink_rejected`)
//! and acknowledged, so one poison package cannot stall its source. At shutdown a
//! worker stuck retrying gives up: unacknowledged packages are read again next start.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::{Accepted, Sink, SinkError};
use crate::batch::Batch;
use crate::checkpoint::SharedRegistry;
use crate::metrics::catalogue::{
    DROPPED_LINES_TOTAL, SINK_ERRORS_TOTAL, SINK_LINES_TOTAL, SINK_PACKAGES_TOTAL,
};
use crate::metrics::health;
use crate::source::SourceId;

/// Packages written but not yet flushed before a flush is forced.
pub const MAX_UNFLUSHED: usize = 256;

const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct SinkWorker {
    pub sink: Box<dyn Sink>,
    pub queue: Receiver<Batch>,
    pub registry: SharedRegistry,
    pub flush_interval: Duration,
    /// Set at shutdown: stop retrying failures (the data stays unacknowledged).
    pub shutdown: Arc<AtomicBool>,
}

struct Written {
    source: SourceId,
    package_id: u64,
    lines: usize,
    /// False when the sink acknowledges it itself ([`Accepted::BySink`]).
    ack_at_flush: bool,
}

impl SinkWorker {
    /// Starts the worker on a thread of its own, registered in the health registry
    /// as `sink-<name>`: a worker that ends on an error, panics, or holds a package
    /// without progress for `health.stall_timeout` fails `/healthz`.
    pub fn spawn(self, name: &str) -> std::io::Result<JoinHandle<Result<(), SinkError>>> {
        let component = format!("sink-{name}");
        std::thread::Builder::new()
            .name(format!("sink-{name}"))
            .spawn(move || {
                let beat = crate::metrics::health::global().register(component);
                let result = self.run();
                if result.is_ok() {
                    beat.stop();
                }
                result
            })
    }

    /// Runs until the queue is closed and drained, or until the sink reports a
    /// [`SinkError::Fatal`]: then it sets `shutdown` (the agent stops, acknowledging
    /// nothing more; a restart re-reads from the checkpoints) and returns the error.
    pub fn run(mut self) -> Result<(), SinkError> {
        let kind = self.sink.kind();
        let mut written: Vec<Written> = Vec::new();
        let mut next_flush = Instant::now() + self.flush_interval;
        loop {
            // Work waits while a package is queued or written and not yet flushed; a
            // write or flush that keeps failing (or blocks) is then a stall.
            health::waiting(!written.is_empty() || !self.queue.is_empty());
            match self.queue.recv_deadline(next_flush) {
                Ok(batch) => {
                    health::waiting(true);
                    let batch = Arc::new(batch);
                    let accepted = self.write(&batch)?;
                    health::progress();
                    if let Some(accepted) = accepted {
                        written.push(Written {
                            source: batch.source.id,
                            package_id: batch.package_id,
                            lines: batch.lines.len(),
                            ack_at_flush: accepted == Accepted::AtFlush,
                        });
                    } else {
                        // Not written and not acknowledged: read again after a restart.
                        continue;
                    }
                    if written.len() >= MAX_UNFLUSHED {
                        self.flush(&mut written)?;
                        next_flush = Instant::now() + self.flush_interval;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.flush(&mut written)?;
                    health::progress();
                    match self.sink.idle() {
                        Ok(()) => {}
                        Err(SinkError::Fatal(reason)) => return Err(self.fatal(reason)),
                        Err(e) => {
                            tracing::warn!(sink = kind, error = %e, "sink housekeeping failed")
                        }
                    }
                    next_flush = Instant::now() + self.flush_interval;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush(&mut written)?;
                    tracing::debug!(sink = kind, "sink queue closed; worker done");
                    return Ok(());
                }
            }
        }
    }

    /// Writes one package, retrying transient errors. Returns who acknowledges it
    /// (rejected for good and counted: at the next flush), `None` when nobody does.
    fn write(&mut self, batch: &Arc<Batch>) -> Result<Option<Accepted>, SinkError> {
        // A failure is logged and counted inside; shipping anyway keeps at-least-once
        // (only recognising copies after a crash would suffer).
        let _ = self.registry.ensure_durable(batch.source.id);
        let kind = self.sink.kind();
        let mut backoff = BACKOFF_START;
        loop {
            match self.sink.offer(batch, &self.registry) {
                Ok(accepted) => return Ok(Some(accepted)),
                Err(SinkError::Fatal(reason)) => return Err(self.fatal(reason)),
                Err(SinkError::Rejected(reason)) => {
                    metrics::counter!(SINK_ERRORS_TOTAL, "sink" => kind, "kind" => "rejected")
                        .increment(1);
                    metrics::counter!(DROPPED_LINES_TOTAL, "reason" => "sink_rejected")
                        .increment(batch.lines.len() as u64);
                    tracing::error!(sink = kind, source = %batch.source.id, package = batch.package_id,
                        %reason, "sink rejected package; dropped");
                    return Ok(Some(Accepted::AtFlush));
                }
                Err(e) => {
                    metrics::counter!(SINK_ERRORS_TOTAL, "sink" => kind, "kind" => "transient")
                        .increment(1);
                    if self.shutdown.load(Ordering::Relaxed) {
                        tracing::warn!(sink = kind, error = %e, "giving up at shutdown; package will be re-read");
                        return Ok(None);
                    }
                    tracing::warn!(sink = kind, error = %e, retry_in = ?backoff, "sink write failed");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn flush(&mut self, written: &mut Vec<Written>) -> Result<(), SinkError> {
        if written.is_empty() {
            return Ok(());
        }
        let kind = self.sink.kind();
        let mut backoff = BACKOFF_START;
        loop {
            match self.sink.flush() {
                Ok(()) => break,
                Err(SinkError::Fatal(reason)) => {
                    // Never acknowledged: read again after the restart.
                    written.clear();
                    return Err(self.fatal(reason));
                }
                Err(e) => {
                    metrics::counter!(SINK_ERRORS_TOTAL, "sink" => kind, "kind" => "flush")
                        .increment(1);
                    if self.shutdown.load(Ordering::Relaxed) {
                        tracing::warn!(sink = kind, error = %e, "flush failed at shutdown; packages will be re-read");
                        written.clear();
                        return Ok(());
                    }
                    tracing::warn!(sink = kind, error = %e, retry_in = ?backoff, "sink flush failed");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        let lines: usize = written.iter().map(|w| w.lines).sum();
        metrics::counter!(SINK_PACKAGES_TOTAL, "sink" => kind).increment(written.len() as u64);
        metrics::counter!(SINK_LINES_TOTAL, "sink" => kind).increment(lines as u64);
        for w in written.drain(..).filter(|w| w.ack_at_flush) {
            self.registry.acked(w.source, w.package_id);
        }
        Ok(())
    }

    /// Stops the agent after a fatal sink error; returns the error for the caller.
    fn fatal(&mut self, reason: String) -> SinkError {
        let kind = self.sink.kind();
        metrics::counter!(SINK_ERRORS_TOTAL, "sink" => kind, "kind" => "fatal").increment(1);
        tracing::error!(sink = kind, %reason,
            "sink can no longer guarantee durability; stopping so a restart re-reads from the checkpoints");
        self.shutdown.store(true, Ordering::SeqCst);
        SinkError::Fatal(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::registered_test_source;
    use crate::checkpoint::{Registry, SharedRegistry};
    use crate::frame::{LineFlags, Record, Stream};
    use bytes::Bytes;
    use std::sync::Mutex;

    /// A sink that fails its first `fail_writes` writes and `fail_flushes` flushes,
    /// and records what was made durable.
    struct Flaky {
        fail_writes: usize,
        fail_flushes: usize,
        pending: Vec<u64>,
        durable: Arc<Mutex<Vec<u64>>>,
    }

    impl Sink for Flaky {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
            if self.fail_writes > 0 {
                self.fail_writes -= 1;
                return Err(SinkError::Transient("disk full".into()));
            }
            if batch.package_id == 3 {
                return Err(SinkError::Rejected("poison".into()));
            }
            self.pending.push(batch.package_id);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), SinkError> {
            if self.fail_flushes > 0 {
                self.fail_flushes -= 1;
                return Err(SinkError::Transient("fsync".into()));
            }
            self.durable.lock().unwrap().append(&mut self.pending);
            Ok(())
        }
    }

    #[test]
    fn acks_follow_durability_and_survive_transient_errors() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::open(dir.path()).unwrap());
        let info = registered_test_source(&registry, 9, "/x");
        let source = info.id;
        let (tx, rx) = crossbeam_channel::bounded(4);
        let durable = Arc::new(Mutex::new(Vec::new()));
        let worker = SinkWorker {
            sink: Box::new(Flaky {
                fail_writes: 2,
                fail_flushes: 1,
                pending: Vec::new(),
                durable: durable.clone(),
            }),
            queue: rx,
            registry: registry.clone(),
            flush_interval: Duration::from_millis(20),
            shutdown: Arc::new(AtomicBool::new(false)),
        };
        let handle = worker.spawn("test").unwrap();
        for package_id in 1..=4u64 {
            let batch = Batch {
                chunks: Vec::new(),
                source: info.clone(),
                package_id,
                lines: Vec::new(),
                fields: Vec::new(),
                source_fields: Default::default(),
                end_offset: package_id * 10 + 10,
            }
            .with_lines(vec![Record {
                offset: package_id * 10,
                timestamp_ns: 0,
                stream: Stream::None,
                flags: LineFlags::empty(),
                body: Bytes::from_static(b"x").into(),
            }]);
            registry.sent(source, package_id, batch.end_offset);
            tx.send(batch).unwrap();
        }
        drop(tx);
        handle.join().unwrap().unwrap();
        assert_eq!(*durable.lock().unwrap(), vec![1, 2, 4]);
        // Package 3 was rejected: counted as dropped and acknowledged, so the source's
        // checkpoint is not stuck behind it.
        assert_eq!(registry.acked_offset(source), Some(50));
        assert_eq!(registry.in_flight(), 0);
    }

    /// A sink whose fsync failed once: Linux may have dropped the dirty pages and a
    /// second fsync would report success.
    struct LostFsync;

    impl Sink for LostFsync {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn write(&mut self, _batch: &Batch) -> Result<(), SinkError> {
            Ok(())
        }
        fn flush(&mut self) -> Result<(), SinkError> {
            Err(crate::sink::fsync_failed(
                std::io::Error::from_raw_os_error(libc::EIO),
            ))
        }
    }

    #[test]
    fn failed_fsync_stops_the_agent_without_acknowledging() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::open(dir.path()).unwrap());
        let info = registered_test_source(&registry, 3, "/y");
        let source = info.id;
        let (tx, rx) = crossbeam_channel::bounded(4);
        let shutdown = Arc::new(AtomicBool::new(false));
        let worker = SinkWorker {
            sink: Box::new(LostFsync),
            queue: rx,
            registry: registry.clone(),
            flush_interval: Duration::from_millis(20),
            shutdown: shutdown.clone(),
        };
        let handle = worker.spawn("test").unwrap();
        registry.sent(source, 1, 10);
        tx.send(Batch {
            chunks: Vec::new(),
            source: info,
            package_id: 1,
            lines: Vec::new(),
            fields: Vec::new(),
            source_fields: Default::default(),
            end_offset: 10,
        })
        .unwrap();
        let result = handle.join().unwrap();
        assert!(matches!(result, Err(SinkError::Fatal(_))), "{result:?}");
        assert!(shutdown.load(Ordering::SeqCst), "the agent is told to stop");
        assert_eq!(
            registry.acked_offset(source),
            Some(0),
            "nothing acknowledged"
        );
    }

    /// A sink that takes over the acknowledgement of package 2 (as a network sink
    /// handing it over in memory does) and never gives it.
    struct KeepsTwo;

    impl Sink for KeepsTwo {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn write(&mut self, _batch: &Batch) -> Result<(), SinkError> {
            Ok(())
        }
        fn offer(
            &mut self,
            batch: &Arc<Batch>,
            _acks: &SharedRegistry,
        ) -> Result<Accepted, SinkError> {
            Ok(if batch.package_id == 2 {
                Accepted::BySink
            } else {
                Accepted::AtFlush
            })
        }
        fn flush(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
    }

    #[test]
    fn a_package_the_sink_acknowledges_itself_is_not_acknowledged_at_flush() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::open(dir.path()).unwrap());
        let info = registered_test_source(&registry, 4, "/z");
        let (tx, rx) = crossbeam_channel::bounded(4);
        let worker = SinkWorker {
            sink: Box::new(KeepsTwo),
            queue: rx,
            registry: registry.clone(),
            flush_interval: Duration::from_millis(20),
            shutdown: Arc::new(AtomicBool::new(false)),
        };
        let handle = worker.spawn("test").unwrap();
        for package_id in 1..=3u64 {
            registry.sent(info.id, package_id, package_id * 10);
            tx.send(Batch {
                chunks: Vec::new(),
                source: info.clone(),
                package_id,
                lines: Vec::new(),
                fields: Vec::new(),
                source_fields: Default::default(),
                end_offset: package_id * 10,
            })
            .unwrap();
        }
        drop(tx);
        handle.join().unwrap().unwrap();
        // 1 and 3 were flushed; 2 is the sink's to acknowledge, so the checkpoint
        // stops before it.
        assert_eq!(registry.acked_offset(info.id), Some(10));
        assert_eq!(registry.in_flight(), 2);
        registry.acked(info.id, 2);
        assert_eq!(registry.acked_offset(info.id), Some(30));
    }
}

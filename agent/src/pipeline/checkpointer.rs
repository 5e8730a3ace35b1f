//! The checkpoint thread: persists the registry's acknowledged offsets every
//! `checkpoint.interval`, a run's first acknowledged progress at once, and newly
//! opened files within [`NEW_SOURCE_DELAY`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::checkpoint::SharedRegistry;
use crate::metrics::catalogue::{CHECKPOINT_AGE_SECONDS, PACKAGES_IN_FLIGHT};

/// Longest a newly opened file waits for its entry (identity, path) to be persisted,
/// when that is sooner than the interval. Until then a crash followed by a rotation
/// while the agent is down loses the file: the restart has nothing to find it by.
/// Also the shortest spacing of such early writes, so a node where files appear all
/// the time writes its table at most this often.
pub(super) const NEW_SOURCE_DELAY: Duration = Duration::from_millis(100);

/// Starts the thread; it ends once `shutdown` is set (the caller persists last).
pub(super) fn spawn_checkpointer(
    registry: SharedRegistry,
    interval: Duration,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || {
            let beat = crate::metrics::health::global().register("checkpoint");
            beat.waiting(true);
            let mut next = Instant::now() + interval;
            // The first progress of a run is persisted at once, not an interval after
            // start: an agent killed before its first interval would otherwise never
            // advance its checkpoint, and a crash-looping one would re-ship everything
            // since the last checkpoint on every restart instead of at most an interval.
            let mut progress_persisted = false;
            let mut registrations_persisted = 0;
            let mut last_write = Instant::now();
            while !shutdown.load(Ordering::Relaxed) {
                beat.progress();
                std::thread::sleep(Duration::from_millis(50).min(interval));
                let progress = registry.progress();
                let registrations = registry.registrations();
                let first_progress = !progress_persisted && progress > 0;
                let new_sources = registrations != registrations_persisted
                    && last_write.elapsed() >= NEW_SOURCE_DELAY;
                if Instant::now() < next && !first_progress && !new_sources {
                    continue;
                }
                next = Instant::now() + interval;
                last_write = Instant::now();
                // Errors are logged and counted inside; the next interval retries
                // (not the next 100 ms: a failing disk is not hammered).
                registrations_persisted = registrations;
                if registry.persist().is_ok() && progress > 0 {
                    progress_persisted = true;
                }
                metrics::gauge!(PACKAGES_IN_FLIGHT).set(registry.in_flight() as f64);
                if let Some(age) = registry.age() {
                    metrics::gauge!(CHECKPOINT_AGE_SECONDS).set(age);
                }
            }
            beat.stop();
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Registry;
    use crate::source::SourceId;
    use crate::source::file::FileIdentity;

    /// A checkpointer with a 60 s interval over a fresh registry in `dir`.
    fn start(dir: &std::path::Path) -> (SharedRegistry, Arc<AtomicBool>, JoinHandle<()>) {
        let registry: SharedRegistry = Arc::new(Registry::open(dir).unwrap());
        let shutdown = Arc::new(AtomicBool::new(false));
        let checkpointer =
            spawn_checkpointer(registry.clone(), Duration::from_secs(60), shutdown.clone())
                .unwrap();
        (registry, shutdown, checkpointer)
    }

    /// Waits up to 1 s (far less than the interval) until the table on disk in `dir`
    /// satisfies `done`.
    fn until_persisted(dir: &std::path::Path, what: &str, done: impl Fn(&Registry) -> bool) {
        let start = Instant::now();
        while !done(&Registry::open(dir).unwrap()) {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{what} not persisted within 1 s (interval 60 s)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A run shorter than the checkpoint interval must still make its progress
    /// durable, or a crash-looping agent re-ships the same data on every restart.
    #[test]
    fn first_progress_is_persisted_before_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (registry, shutdown, checkpointer) = start(dir.path());
        let identity = FileIdentity {
            dev: 1,
            inode: 2,
            fingerprint_len: 0,
            fingerprint: 0,
        };
        let source = SourceId(7);
        registry.register(source, identity, "/a.log".into(), 0);
        std::thread::sleep(Duration::from_millis(120));
        registry.sent(source, 1, 100);
        registry.acked(source, 1);
        until_persisted(dir.path(), "acknowledged progress", |table| {
            table.lookup(1, 2).map(|c| c.offset) == Some(100)
        });
        shutdown.store(true, Ordering::SeqCst);
        checkpointer.join().unwrap();
    }

    /// A file opened moments before a crash, then rotated away while the agent was
    /// down, can only be found again by the identity its checkpoint entry holds: the
    /// entry must be durable soon after the open, not an interval later.
    #[test]
    fn a_new_source_is_persisted_before_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (registry, shutdown, checkpointer) = start(dir.path());
        std::thread::sleep(Duration::from_millis(120));
        let identity = FileIdentity {
            dev: 1,
            inode: 3,
            fingerprint_len: 4,
            fingerprint: 9,
        };
        registry.register(SourceId(8), identity, "/b.log".into(), 0);
        until_persisted(dir.path(), "a new source's entry", |table| {
            table.lookup(1, 3).is_some()
        });
        shutdown.store(true, Ordering::SeqCst);
        checkpointer.join().unwrap();
    }
}

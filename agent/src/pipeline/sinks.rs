//! The sinks reconciler: one worker thread per configured sink behind a bounded
//! queue, kept across rebuilds while the sink's config is unchanged.
//!
//! A sink gone from the config or changed has its queue closed; its worker drains
//! what is queued and ends once every sender of the queue is gone (a pipeline being
//! rebuilt still holds one until it is dropped). New sinks are opened and started.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::Sender;

use crate::batch::Batch;
use crate::checkpoint::SharedRegistry;
use crate::config::{Config, SinkConfig};
use crate::route::Router;
use crate::sink::SinkError;
use crate::sink::worker::SinkWorker;

/// The body bytes a sink's queue holds before the readers block, in whole packages of
/// `batch.max_size`: 2 packages at the default 1 MiB, 8 of 256 KiB; never fewer than
/// one nor more than [`SINK_QUEUE_MAX_PACKAGES`].
///
/// Each queued package pins the read chunks its records point into, so this bounds
/// memory; it is a byte budget, not a count, because what it also bounds is the data in
/// flight between the source thread and the sink's: the sink's payload copy and lz4
/// read bodies the source thread wrote a queue ago, and a queue longer than the CPU's
/// caches makes both read from memory. Eight 1 MiB packages (the count this replaced)
/// cost the store path 5–8% more CPU per GB than two (`docs/benchmarks.md`, "The sink
/// queue in bytes"); more queue buys no throughput, since a sink slower than its
/// sources keeps any queue full.
const SINK_QUEUE_BYTES: usize = 2 * 1024 * 1024;

/// The most packages a sink's queue holds, however small they are: the count the
/// queue had before it had a byte budget, so small packages see the backpressure
/// they always did (a package also costs its line vector and a wake-up of the sink).
const SINK_QUEUE_MAX_PACKAGES: usize = 8;

/// Packages of `package_bytes` (the `batch.max_size`) that fit [`SINK_QUEUE_BYTES`].
fn sink_queue_packages(package_bytes: usize) -> usize {
    (SINK_QUEUE_BYTES / package_bytes.max(1)).clamp(1, SINK_QUEUE_MAX_PACKAGES)
}

/// Upper bound on how long written packages wait for their flush (and acknowledgement).
const SINK_FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// The sink workers of the effective config.
pub(super) struct Sinks {
    registry: SharedRegistry,
    shutdown: Arc<AtomicBool>,
    queues: BTreeMap<Arc<str>, Sender<Batch>>,
    running: BTreeMap<Arc<str>, RunningSink>,
    failure: Option<anyhow::Error>,
}

struct RunningSink {
    config: SinkConfig,
    worker: JoinHandle<Result<(), SinkError>>,
}

impl Sinks {
    /// No sink yet: [`reconcile`](Self::reconcile) starts them.
    pub fn new(registry: SharedRegistry, shutdown: Arc<AtomicBool>) -> Sinks {
        Sinks {
            registry,
            shutdown,
            queues: BTreeMap::new(),
            running: BTreeMap::new(),
            failure: None,
        }
    }

    /// A router to the queues of `config`'s sources' sinks (all running: see
    /// [`reconcile`](Self::reconcile)).
    pub fn router(&self, config: &Config) -> Router {
        Router::new(&config.sources, &self.queues)
    }

    /// Stops the workers of sinks gone or changed (their queues drain first) and
    /// starts those of new ones.
    pub fn reconcile(&mut self, config: &Config) -> anyhow::Result<()> {
        let stale: Vec<Arc<str>> = self
            .running
            .iter()
            .filter(|(name, r)| config.sinks.get(*name) != Some(&r.config))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.queues.remove(&name);
            if let Some(r) = self.running.remove(&name) {
                self.join(&name, r);
            }
        }
        for (name, sink_config) in &config.sinks {
            if self.running.contains_key(name) {
                continue;
            }
            let sink = crate::sink::open(name, sink_config)
                .with_context(|| format!("opening sink {name:?}"))?;
            let (tx, rx) = crossbeam_channel::bounded(sink_queue_packages(config.batch.max_bytes));
            let worker = SinkWorker {
                sink,
                queue: rx,
                registry: self.registry.clone(),
                flush_interval: SINK_FLUSH_INTERVAL.min(config.checkpoint_interval),
                shutdown: self.shutdown.clone(),
            };
            let worker = worker.spawn(name)?;
            self.running.insert(
                name.clone(),
                RunningSink {
                    config: sink_config.clone(),
                    worker,
                },
            );
            self.queues.insert(name.clone(), tx);
        }
        Ok(())
    }

    fn join(&mut self, name: &str, r: RunningSink) {
        match r.worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.failure = Some(anyhow::anyhow!("sink {name:?}: {e}")),
            Err(_) => self.failure = Some(anyhow::anyhow!("sink {name:?}: worker panicked")),
        }
    }

    /// Closes every queue and waits for the workers to drain; the last failure.
    pub fn close_all(mut self) -> Option<anyhow::Error> {
        self.queues.clear();
        let running = std::mem::take(&mut self.running);
        for (name, r) in running {
            self.join(&name, r);
        }
        self.failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_queue_holds_about_its_byte_budget_in_whole_packages() {
        assert_eq!(sink_queue_packages(1024 * 1024), 2);
        assert_eq!(sink_queue_packages(256 * 1024), 8);
        // Packages larger than the budget: one still fits, or nothing could be sent.
        assert_eq!(sink_queue_packages(16 * 1024 * 1024), 1);
        // Small packages keep the count they always had.
        assert_eq!(sink_queue_packages(16 * 1024), SINK_QUEUE_MAX_PACKAGES);
        assert_eq!(sink_queue_packages(0), SINK_QUEUE_MAX_PACKAGES);
    }
}

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

/// Packages a sink's queue holds before the readers block. Each package pins the read
/// chunks its records point into, so this bounds memory (8 × ~1 MiB packages keeps
/// the agent near 32 MiB RSS at full speed; more queue buys no throughput).
const SINK_QUEUE_PACKAGES: usize = 8;
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
            let (tx, rx) = crossbeam_channel::bounded(SINK_QUEUE_PACKAGES);
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

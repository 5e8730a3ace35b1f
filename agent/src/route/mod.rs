//! Routing: which sink the packages of a source go to.
//!
//! Each `sources[]` entry names one sink; every sink has one bounded queue served by
//! its worker thread. The queue bound is the backpressure: when a sink is slow, `send`
//! blocks the source thread, so files are simply read later and memory stays bounded.

use std::collections::BTreeMap;
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::batch::Batch;
use crate::config::SourceConfig;

pub struct Router {
    /// Indexed like `Config::sources`.
    by_source_config: Vec<Sender<Batch>>,
}

impl Router {
    /// `queues` holds the queue of every sink by name; every source's sink must be in it
    /// (config validation guarantees the name exists).
    pub fn new(sources: &[SourceConfig], queues: &BTreeMap<Arc<str>, Sender<Batch>>) -> Router {
        Router {
            by_source_config: sources.iter().map(|s| queues[&s.sink].clone()).collect(),
        }
    }

    /// Hands a package to its sink; blocks while the sink's queue is full.
    /// Returns false only when the sink worker is gone (shutdown or a crashed worker).
    pub fn send(&self, source_config: usize, batch: Batch) -> bool {
        self.by_source_config[source_config].send(batch).is_ok()
    }
}

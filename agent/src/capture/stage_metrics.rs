//! The metric handles of the stage's hot path: its per-poll and per-tick counters and
//! gauges.
//!
//! # Performance
//!
//! A `metrics::counter!` call looks its key up in the recorder's registry on every call
//! (the key hashed, a lock, an `Arc` cloned and dropped). The stage polls once per
//! wakeup of the probes, tens of thousands of times a second with a small ring, and
//! those lookups were about a tenth of the capture thread. So these metrics are counted
//! through handles, each registered once. The stage's other metrics (a gap, a repair,
//! a stream's end, a seam) are counted once per such event, which is rare beside a poll,
//! and keep their `metrics::counter!` calls.
//!
//! A handle is registered at its first use, not when the stage is built: a metric
//! appears when it is first counted, as it did before (a counter the stage never
//! increments is not exported as 0), and it is registered with the recorder in place
//! on the thread that runs the stage.

use metrics::{Counter, Gauge};

use crate::metrics::catalogue::{
    CAPTURE_BUFFERED_BYTES, CAPTURE_BYTES_TOTAL, CAPTURE_RECORDS_TOTAL, CAPTURE_STREAMS,
    CAPTURE_WATCHED_CONTAINERS,
};

/// A handle registered at its first use, then kept.
pub(super) struct Lazy<T> {
    register: fn() -> T,
    handle: Option<T>,
}

impl<T> Lazy<T> {
    const fn new(register: fn() -> T) -> Lazy<T> {
        Lazy {
            register,
            handle: None,
        }
    }

    pub(super) fn get(&mut self) -> &T {
        let register = self.register;
        self.handle.get_or_insert_with(register)
    }
}

/// The handles, one per metric (none of them has labels).
pub(super) struct StageMetrics {
    pub records: Lazy<Counter>,
    pub bytes: Lazy<Counter>,
    pub buffered: Lazy<Gauge>,
    pub streams: Lazy<Gauge>,
    pub watched: Lazy<Gauge>,
}

impl Default for StageMetrics {
    fn default() -> StageMetrics {
        StageMetrics {
            records: Lazy::new(|| metrics::counter!(CAPTURE_RECORDS_TOTAL)),
            bytes: Lazy::new(|| metrics::counter!(CAPTURE_BYTES_TOTAL)),
            buffered: Lazy::new(|| metrics::gauge!(CAPTURE_BUFFERED_BYTES)),
            streams: Lazy::new(|| metrics::gauge!(CAPTURE_STREAMS)),
            watched: Lazy::new(|| metrics::gauge!(CAPTURE_WATCHED_CONTAINERS)),
        }
    }
}

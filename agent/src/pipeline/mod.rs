//! The pipeline: what happens to a source's bytes between an input and the sinks,
//! and the supervisor that wires the stages of a run.
//!
//! ```text
//! inputs (source::file, capture) ──Input──► Pipeline (processor, fanout):
//!     frame → parse → enrich → batch → route ──► sink queues (sinks) ──► workers
//!     acknowledgements → checkpoint registry ──► checkpoint thread (checkpointer)
//! ```
//!
//! - [`input`]: the [`Input`] interface every input drives: opened, data, gap, ended,
//!   tick. The pipeline owns it; inputs depend on it, not on the pipeline.
//! - `processor`: [`Pipeline`], the per-source processor that implements it.
//! - `fanout`: one file read by several configs, one reader (and id) per config.
//! - `sinks`: the sink workers, reconciled with the effective config.
//! - `services`: what a run starts once and stops once, in order (checkpoints,
//!   Kubernetes, container registry, collections, enrichment, capture).
//! - `supervisor`: [`run`], and the rebuilds when a `LogCollection` changes.
//!
//! Threads: the file source runs on the calling thread and does framing, parsing and
//! batching inline; capture does the same on its own thread with its own
//! [`Pipeline`]; each sink has a worker thread behind a bounded queue; one thread
//! persists checkpoints. Nothing here is async: every stage does blocking I/O or pure
//! CPU work, and the thread split keeps a slow sink from doing anything but slowing
//! the readers down (backpressure).

mod checkpointer;
mod fanout;
pub mod input;
mod processor;
mod services;
mod sinks;
mod supervisor;

#[cfg(test)]
mod tests;

pub use fanout::branch_id;
pub use input::{Content, EndReason, Input, Opening};
pub use processor::{Pipeline, Shipped};
pub use supervisor::{RunOptions, RunSummary, Workload, run};

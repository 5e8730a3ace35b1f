//! Sinks: where packages go, and the acknowledgement that advances checkpoints.
//!
//! A sink is driven by one [`worker`] thread. `write` hands it a package; `flush`
//! makes everything written so far durable (fsync, broker acknowledgement). Only after
//! a successful `flush` does the worker acknowledge the packages to the checkpointer:
//! a checkpoint is never durable ahead of the data it points past. A sink may instead
//! take a package's acknowledgement over ([`Sink::offer`], [`Accepted::BySink`]): a
//! network sink handing a package to its forwarder in memory acknowledges it once the
//! destination did.

pub mod destination;
pub mod file;
pub mod forward;
pub mod handoff;
pub mod kafka;
pub mod null;
pub mod otlp;
pub mod spool;
pub mod stdout;
pub mod store;
#[cfg(test)]
pub(crate) mod test_fs;
pub mod worker;

use std::sync::Arc;

use crate::batch::Batch;
use crate::checkpoint::SharedRegistry;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying (disk full, broker unavailable): the package is kept and retried.
    #[error("transient sink error: {0}")]
    Transient(String),
    /// The package can never be accepted; it is dropped and counted with a reason.
    #[error("sink rejected package: {0}")]
    Rejected(String),
    /// Data written since the last successful flush may be gone and retrying cannot
    /// tell (a failed fsync: Linux may drop the dirty pages and report success on the
    /// next call). The agent stops without acknowledging it; a restart re-reads it.
    #[error("sink lost durability: {0}")]
    Fatal(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Who acknowledges a package [`Sink::offer`] accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// The sink worker, after the next successful `flush` (as for `write`).
    AtFlush,
    /// The sink itself, through the registry it was given, once the package is safe
    /// wherever it went (a network destination's acknowledgement). It may never be:
    /// then the package is read again after a restart.
    BySink,
}

/// A destination for packages. Implementations do blocking I/O: they run on their
/// own thread (see [`worker`]), never inside an async task.
pub trait Sink: Send {
    /// Bounded label value for metrics (`store`, `file`, `stdout`, `null`).
    fn kind(&self) -> &'static str;
    /// Accept one package. It need not be durable until `flush` returns.
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError>;
    /// What the sink worker calls: accept one package, and say who acknowledges it.
    /// By default `write`, acknowledged at the next flush. (Shared, so a sink may keep
    /// the package without copying it.)
    fn offer(&mut self, batch: &Arc<Batch>, _acks: &SharedRegistry) -> Result<Accepted, SinkError> {
        self.write(batch).map(|()| Accepted::AtFlush)
    }
    /// Make every package written so far durable. A failure whose retry could
    /// falsely succeed (fsync) must be reported as [`SinkError::Fatal`].
    fn flush(&mut self) -> Result<(), SinkError>;
    /// Housekeeping when no package came for a flush interval (retention on a quiet
    /// node). Nothing to do by default.
    fn idle(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Maps an fsync failure to [`SinkError::Fatal`]: see there why it is never retried.
pub fn fsync_failed(e: std::io::Error) -> SinkError {
    SinkError::Fatal(format!("fsync: {e}"))
}

/// Opens the sink a config entry describes; `name` is its key under `sinks:`.
pub fn open(name: &str, config: &crate::config::SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    use crate::config::SinkConfig;
    use crate::config::network::BlockCompression;
    Ok(match config {
        SinkConfig::Store {
            path,
            segment_bytes,
            max_bytes,
            max_age,
            min_free,
            compression,
        } => {
            let store = store::Store::open(
                path,
                store::StoreOptions {
                    segment_bytes: *segment_bytes,
                    max_bytes: *max_bytes,
                    max_age: *max_age,
                    min_free: *min_free,
                },
            )
            .map_err(|e| SinkError::Transient(e.to_string()))?;
            Box::new(match compression {
                BlockCompression::Lz4 => store,
                BlockCompression::None => store.without_compression(),
            })
        }
        SinkConfig::File { path } => Box::new(file::FileSink::open(path)?),
        SinkConfig::Stdout => Box::new(stdout::StdoutSink::new()),
        SinkConfig::Null => Box::new(null::NullSink::new()),
        SinkConfig::Kafka(k) => {
            let destination = kafka::KafkaDestination::new(k)
                .map_err(|e| SinkError::Rejected(format!("sink {name:?}: {e}")))?;
            Box::new(forward::NetworkSink::start(
                name,
                &k.forward,
                Box::new(destination),
            )?)
        }
        SinkConfig::Otlp(o) => {
            let destination = otlp::OtlpDestination::new(o)
                .map_err(|e| SinkError::Rejected(format!("sink {name:?}: {e}")))?;
            Box::new(forward::NetworkSink::start(
                name,
                &o.forward,
                Box::new(destination),
            )?)
        }
    })
}

//! What a network sink's destination (Kafka, OTLP) must do, seen from the spool.
//!
//! A network sink is two halves: the [`spool`](super::spool), where the pipeline's
//! packages become durable on the node (and the source checkpoints advance), and a
//! forwarder thread ([`forward`](super::forward)) that reads windows of packages back
//! from the spool and hands them to a [`Destination`]. The destination only speaks its
//! protocol; retries, backoff, the spool cursor, dead letters and metrics are the
//! forwarder's, the same for every destination.
//!
//! # Contract
//!
//! [`Destination::send`] returns only when the destination has *acknowledged* every
//! record of the window (Kafka: a delivery report with no error for each message;
//! OTLP: a 2xx answer) or refused it for good ([`Delivered::rejected`]). Anything else
//! is a [`SendError`]: the forwarder keeps the window and sends it again, so a
//! destination must never report success for a record it is not sure of. Records a
//! destination knows it already delivered in an earlier, failed attempt of the same
//! window may be skipped on the retry (the Kafka destination does): every call with
//! the same window carries the same packages in the same order.

use std::sync::Arc;
use std::time::Duration;

use crate::batch::codec::{Package, Record};
use crate::sink::store::render::{self, PackageJson, RecordView};
use crate::source::{SourceInfo, SourceKind};

/// One package read back from the spool, decoded.
#[derive(Clone, Debug)]
pub struct SpooledPackage {
    /// Spool-wide sequence number of its block (strictly increasing in a window).
    pub seq: u64,
    /// What the source is: id, path, kind, config name. The spool's source table
    /// always knows it for packages written by this agent version.
    pub source: Arc<SourceInfo>,
    pub package_id: u64,
    /// Source fields (pod, namespace, labels…) and the records with their offsets.
    pub package: Package,
}

impl SpooledPackage {
    /// Sum of the record bodies.
    pub fn body_bytes(&self) -> u64 {
        self.package
            .records
            .iter()
            .map(|r| r.body.len() as u64)
            .sum()
    }

    /// `record` (one of this package's) with the coordinates its JSON needs.
    pub fn view<'a>(&'a self, record: &'a Record) -> RecordView<'a> {
        RecordView {
            source_id: self.source.id,
            path: Some(&self.source.path),
            package_id: self.package_id,
            offset: record.offset,
            timestamp_ns: record.timestamp_ns,
            stream: record.stream,
            captured: self.source.kind == SourceKind::Capture,
            flags: record.flags,
            body: &record.body,
            source_fields: &self.package.source_fields,
        }
    }

    /// Appends `record` (one of this package's) as the file sink's NDJSON line, `\n`
    /// included: a dead-letter line.
    pub fn write_json(&self, record: &Record, out: &mut Vec<u8>) {
        let fields = record.fields.iter().map(|(k, v)| (&k[..], &v[..]));
        render::write_json_record(out, &self.view(record), fields, false);
    }

    /// Renders this package's shared JSON parts into `json`, for
    /// [`PackageJson::write_record`] of each of its records (a Kafka message value).
    pub fn reset_json(&self, json: &mut PackageJson) {
        json.reset(
            self.source.id,
            Some(&self.source.path),
            self.package_id,
            &self.package.source_fields,
        );
    }
}

/// Records the destination refused for good: counted by `reason`, written to the
/// dead-letter file when one is configured, never sent again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Index in the window of the package the records belong to, and of the records
    /// in it; `records: None` means the whole package.
    pub package: usize,
    pub records: Option<Vec<usize>>,
    /// Bounded metric label: `too_large`, `bad_request`, `partial_success`,
    /// `invalid_topic`, …
    pub reason: &'static str,
    /// What the destination said, for the log and the dead-letter file.
    pub detail: String,
}

/// The outcome of a successful [`Destination::send`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Records refused for good. Everything else of the window was acknowledged.
    pub rejected: Vec<Rejected>,
    /// Records the destination refused for good without saying which (an OTLP
    /// partial success counts them only); counted under
    /// `reason: "partial_success"`, not dead-lettered.
    pub rejected_unidentified: u64,
}

/// Why a window was not (wholly) acknowledged; the forwarder sends it again.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct SendError {
    /// Bounded metric label: `unavailable`, `throttled`, `timeout`, `disconnected`,
    /// `server_error`, …
    pub reason: &'static str,
    pub detail: String,
    /// The destination asked to wait this long (HTTP `Retry-After`); the forwarder
    /// waits at least this, at most its own cap.
    pub retry_after: Option<Duration>,
}

/// A network destination, driven by one forwarder thread (blocking calls are fine).
pub trait Destination: Send {
    /// Bounded label for metrics and logs: `kafka`, `otlp`.
    fn kind(&self) -> &'static str;

    /// Delivers `window` (one or more packages, in spool order). See the module docs
    /// for what success means. `window` is never empty.
    fn send(&mut self, window: &[SpooledPackage]) -> Result<Delivered, SendError>;

    /// The forwarder has had nothing to send for a while: free what is kept only to
    /// spare the next window an allocation.
    fn idle(&mut self) {}
}

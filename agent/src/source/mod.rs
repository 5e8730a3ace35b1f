//! Sources: where bytes come from, and the identity every line is tagged with.
//!
//! A source is one byte stream with stable offsets: a file generation (a file from its
//! creation until it is truncated), or one container stream captured by eBPF.
//! `(SourceId, offset)` is the coordinate system of the whole agent. A network input
//! ([`net`]) is a stream too: the messages of one listener in one run, end to end.

pub mod claims;
pub mod file;
pub mod net;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Stable identifier of one source. Assigned once when the source is first seen and
/// persisted in the checkpoint, so it survives restarts and renames.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u64);

impl fmt::Debug for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl SourceId {
    /// A fresh id, unique with overwhelming probability: the identity of the file
    /// mixed with the time it was first seen, so a reused inode gets a new id.
    pub fn new_unique(dev: u64, inode: u64) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // RandomState is seeded from the OS per process: two agents never collide.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(dev);
        h.write_u64(inode);
        h.write_u64(nanos);
        SourceId(h.finish())
    }
}

/// `dev` of the checkpoint identity of captured container streams: no block device
/// has it, so they never collide with files (see `capture`).
pub const CAPTURE_DEV: u64 = u64::MAX;

/// Kind of a source; a bounded label value for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// A plain file on the host (`/var/log/*.log`, application logs).
    File,
    /// A container's CRI log file under `/var/log/pods`.
    CriFile,
    /// A container's stdout or stderr stream, captured by the eBPF probes.
    Capture,
    /// The agent's own log events and statistics (`logtap://self`).
    SelfMonitoring,
    /// What one network input (syslog, http, otlp listener) received in one run of
    /// the agent (`source::net`).
    Network,
    /// Kubernetes events, shipped by the Lease holder (`k8s://events`).
    KubernetesEvents,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::File => "file",
            SourceKind::CriFile => "cri_file",
            SourceKind::Capture => "capture",
            SourceKind::SelfMonitoring => "self",
            SourceKind::Network => "network",
            SourceKind::KubernetesEvents => "k8s_events",
        }
    }
}

/// What every package of a source carries about it. Shared (`Arc`) by all batches of
/// the source, so per-line metadata costs nothing.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub id: SourceId,
    pub kind: SourceKind,
    /// Path the source was discovered at (a rotated file keeps its original path here).
    pub path: PathBuf,
    /// Name of the `sources[]` entry of the config that matched it.
    pub config_name: Arc<str>,
}

//! The file source's view of the checkpoint registry.
//!
//! The tracker talks to [`ResumeStore`] instead of [`Registry`] directly so its state
//! machine can be tested against an in-memory map, without the durable store.

use std::collections::HashSet;
use std::path::PathBuf;

use super::FileIdentity;
use crate::checkpoint::{FileCheckpoint, Registry};
use crate::metrics::catalogue::{CHECKPOINTS_DROPPED_TOTAL, DROPPED_BYTES_TOTAL};
use crate::source::SourceId;

/// The calls the file source makes on the checkpoint registry (see
/// [`Registry`] for their meaning).
pub trait ResumeStore: Send + Sync {
    fn lookup(&self, dev: u64, inode: u64) -> Option<FileCheckpoint>;
    fn register(&self, source: SourceId, identity: FileIdentity, path: PathBuf, offset: u64);
    fn update_identity(&self, source: SourceId, identity: FileIdentity);
    /// The checkpointed file's source continues on another file (see
    /// [`Registry::continue_on`]).
    fn continue_on(&self, checkpoint: &FileCheckpoint, to: FileIdentity);
    /// The file of `source` was seen at `size` bytes (what its loss would cost).
    fn observed_size(&self, source: SourceId, size: u64);
    fn mark_closed(&self, source: SourceId);
    fn forget(&self, source: SourceId);
    /// After the first full scan: drop start-up entries whose file was not `found`.
    fn retain_unclaimed(&self, found: &HashSet<(u64, u64)>);
    /// The checkpoints a starting file source may resume (see
    /// [`Registry::resumable`]): loaded at start-up and not claimed yet, or those of
    /// the files a previous file source of this process was reading.
    fn resumable(&self) -> Vec<FileCheckpoint>;
}

impl ResumeStore for Registry {
    fn lookup(&self, dev: u64, inode: u64) -> Option<FileCheckpoint> {
        Registry::lookup(self, dev, inode)
    }
    fn register(&self, source: SourceId, identity: FileIdentity, path: PathBuf, offset: u64) {
        Registry::register(self, source, identity, path, offset)
    }
    fn update_identity(&self, source: SourceId, identity: FileIdentity) {
        Registry::update_identity(self, source, identity)
    }
    fn continue_on(&self, checkpoint: &FileCheckpoint, to: FileIdentity) {
        Registry::continue_on(self, checkpoint, to)
    }
    fn observed_size(&self, source: SourceId, size: u64) {
        Registry::observed_size(self, source, size)
    }
    fn mark_closed(&self, source: SourceId) {
        Registry::mark_closed(self, source)
    }
    fn forget(&self, source: SourceId) {
        Registry::forget(self, source)
    }
    fn retain_unclaimed(&self, found: &HashSet<(u64, u64)>) {
        let (dropped, owed) = Registry::retain_unclaimed(self, found);
        if dropped > 0 {
            metrics::counter!(CHECKPOINTS_DROPPED_TOTAL, "reason" => "file_gone")
                .increment(dropped as u64);
            tracing::warn!(
                dropped,
                "dropped checkpoints of files that are gone (not at their path, not found by identity in its directory)"
            );
        }
        if owed > 0 {
            // At least this much: what the files grew by after the last checkpoint
            // written before the stop is not known.
            metrics::counter!(DROPPED_BYTES_TOTAL, "reason" => "deleted_while_stopped")
                .increment(owed);
            tracing::warn!(
                lost_bytes = owed,
                "files deleted while the agent was stopped had unread bytes"
            );
        }
    }
    fn resumable(&self) -> Vec<FileCheckpoint> {
        Registry::resumable(self)
    }
}

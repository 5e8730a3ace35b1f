//! Checkpoints: per-source acknowledged offsets, durable across crashes.
//!
//! (stub: being implemented — API is the contract other stages code against)

use std::path::PathBuf;
use std::sync::Arc;

use crate::source::SourceId;
use crate::source::file::FileIdentity;

/// What the checkpoint remembers about a file source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileCheckpoint {
    pub source_id: SourceId,
    pub identity: FileIdentity,
    pub path: PathBuf,
    /// Every record starting before this offset has been acknowledged by the sink.
    pub offset: u64,
    /// The source was drained and closed (rotated away); resume only if it grows.
    pub closed: bool,
}

/// Shared between the file source (which registers and forgets files), the pipeline
/// (which records sent packages) and sink workers (which acknowledge them).
pub struct Registry {}

impl Registry {
    /// The checkpoint of the file at `dev`/`inode`, if one was loaded or is live.
    pub fn lookup(&self, dev: u64, inode: u64) -> Option<FileCheckpoint> {
        let _ = (dev, inode);
        unimplemented!()
    }
    /// A file source starts at `offset` (its resume point, or 0 for a new file).
    pub fn register(&self, source: SourceId, identity: FileIdentity, path: PathBuf, offset: u64) {
        let _ = (source, identity, path, offset);
        unimplemented!()
    }
    /// The fingerprint of a live source grew (it covers more leading bytes now).
    pub fn update_identity(&self, source: SourceId, identity: FileIdentity) {
        let _ = (source, identity);
        unimplemented!()
    }
    /// The source was drained and closed but its file still exists.
    pub fn mark_closed(&self, source: SourceId) {
        let _ = source;
        unimplemented!()
    }
    /// The file is gone (or truncated to a new generation): drop its entry.
    pub fn forget(&self, source: SourceId) {
        let _ = source;
        unimplemented!()
    }
}

pub type SharedRegistry = Arc<Registry>;

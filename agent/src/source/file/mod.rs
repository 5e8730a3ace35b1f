//! The file source: discovers files by glob, identifies them across renames and inode
//! reuse, reads them through io_uring (or `pread` where io_uring is unavailable), and
//! follows rotation (rename+create, copytruncate) and deletion, draining every file to
//! EOF before closing it.
//!
//! It owns no framing or batching: it hands byte chunks at exact offsets to a
//! [`SourceEvents`] implementation (the pipeline), which may block to apply
//! backpressure — then files are simply read later.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{SourceId, SourceInfo};

/// How a file is recognised: device + inode, confirmed by a fingerprint of its first
/// bytes, so a reused inode (a new file that got a deleted file's inode) is caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    pub dev: u64,
    pub inode: u64,
    /// How many leading bytes `fingerprint` covers (grows up to [`FINGERPRINT_BYTES`]).
    pub fingerprint_len: u32,
    /// CRC32 of the first `fingerprint_len` bytes.
    pub fingerprint: u32,
}

/// Leading bytes hashed into a [`FileIdentity`] fingerprint.
pub const FINGERPRINT_BYTES: u32 = 256;

/// Why a source ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Rotated away (renamed) and drained to EOF; no writer for `rotate_wait`.
    Rotated,
    /// Deleted and drained to EOF.
    Deleted,
    /// Truncated in place (copytruncate): the source ends here, the file continues as a
    /// new source (new `SourceId`, offsets from 0).
    Truncated,
    /// One-shot mode: the file was read to EOF.
    Eof,
    /// The agent is shutting down.
    Shutdown,
}

/// What the file source tells the pipeline. Calls come from the source thread, in order.
pub trait SourceEvents {
    /// A source starts (or resumes) at `start_offset`. `config` indexes
    /// `Config::sources`. `predecessor` is the source this one replaces at the same
    /// path (rotation), already read to its EOF: CRI/docker partial-line state moves
    /// from it to this one.
    fn opened(
        &mut self,
        info: Arc<SourceInfo>,
        config: usize,
        identity: FileIdentity,
        start_offset: u64,
        predecessor: Option<SourceId>,
    );
    /// Like [`opened`](Self::opened), for a file that several configs read: `configs`
    /// (in config order, never empty) each get every byte of it, with their own
    /// framing, parser and sink. The default serves the first only.
    fn opened_for(
        &mut self,
        info: Arc<SourceInfo>,
        configs: &[usize],
        identity: FileIdentity,
        start_offset: u64,
        predecessor: Option<SourceId>,
    ) {
        self.opened(info, configs[0], identity, start_offset, predecessor);
    }
    /// `chunk` holds the bytes of the source at `offset..offset + chunk.len()`; chunks
    /// of one source are contiguous. May block (backpressure).
    fn data(&mut self, source: SourceId, offset: u64, chunk: Bytes);
    /// The source ended; nothing more arrives for it.
    fn ended(&mut self, source: SourceId, reason: EndReason);
    /// Called at least every 100 ms, for time-based flushes.
    fn tick(&mut self, now: Instant);
}

mod admit;
pub mod container;
mod discover;
mod identity;
mod read;
mod resume;
mod rotate;
mod table;
mod tracker;
mod truncate;
mod watch;

#[cfg(test)]
mod tests;

pub use resume::ResumeStore;
pub use tracker::{FileSource, FileSourceOptions, StopMode};

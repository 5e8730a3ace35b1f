//! The file source: discovers files by glob, identifies them across renames and inode
//! reuse, reads them through io_uring (or `pread` where io_uring is unavailable), and
//! follows rotation (rename+create, copytruncate) and deletion, draining every file to
//! EOF before closing it.
//!
//! It owns no framing or batching: it drives the pipeline's [`Input`] with byte
//! chunks at exact offsets, and the pipeline may block to apply backpressure — then
//! files are simply read later.
//!
//! [`Input`]: crate::pipeline::Input

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

mod admit;
pub mod container;
mod discover;
mod identity;
pub mod open;
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

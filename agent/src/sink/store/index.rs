//! The block index: per segment, the headers of its blocks, held in memory.
//!
//! It is rebuilt on every open by scanning headers (one 80-byte `pread` per block,
//! payloads are skipped), which keeps the on-disk format a single kind of file: there is
//! no separate index file to get out of step with its segment after a crash.
//!
//! # Performance
//!
//! With the default 1 MiB packages a 10 GiB store has ~10k blocks (a few ms to scan,
//! a few hundred KiB of memory). Tiny packages make this proportionally slower; a
//! persisted per-segment index written at seal time is the upgrade path if that
//! ever matters.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::segment::{self, BlockMeta, ScanMode};

/// One segment file and the blocks found in it.
#[derive(Debug, Clone)]
pub struct SegmentIndex {
    pub first_seq: u64,
    pub path: PathBuf,
    pub blocks: Vec<BlockMeta>,
    /// File length in bytes (what retention counts).
    pub len: u64,
}

impl SegmentIndex {
    /// Newest record timestamp in the segment; `None` when it holds no records.
    pub fn max_ts(&self) -> Option<i64> {
        self.blocks
            .iter()
            .filter(|b| b.header.line_count > 0)
            .map(|b| b.header.max_ts)
            .max()
    }
}

/// A segment opened read-only by a reader, with its index.
pub struct OpenSegment {
    pub index: SegmentIndex,
    pub file: File,
}

/// Opens every segment of a store read-only and indexes it, tolerating a writer that
/// is appending (or deleting old segments) at the same time.
///
/// Damage in the middle of a segment is skipped with a warning. A short or damaged
/// tail is expected on the newest segment while the agent writes, so only older
/// segments warn about it.
pub fn open_for_reading(store_dir: &Path) -> io::Result<Vec<OpenSegment>> {
    let listed = segment::list_segments(&store_dir.join("segments"))?;
    let newest = listed.last().map(|(seq, _)| *seq);
    let mut out = Vec::with_capacity(listed.len());
    for (first_seq, path) in listed {
        let file = match File::open(&path) {
            Ok(f) => f,
            // Retention deleted it between listing and opening.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // Once open, the descriptor keeps the data readable even if it is deleted.
        let len = file.metadata()?.len();
        let scan = segment::scan_segment(&file, len, ScanMode::HeadersOnly)?;
        if scan.skipped_regions > 0 {
            tracing::warn!(
                segment = %path.display(),
                regions = scan.skipped_regions,
                "store: skipped damaged block headers"
            );
        }
        if let Some(problem) = scan.tail {
            if Some(first_seq) == newest {
                tracing::debug!(segment = %path.display(), ?problem, "store: incomplete tail of the newest segment (being written)");
            } else {
                tracing::warn!(
                    segment = %path.display(),
                    ?problem,
                    ignored_bytes = len - scan.valid_len,
                    "store: damaged tail of a sealed segment ignored"
                );
            }
        }
        out.push(OpenSegment {
            index: SegmentIndex {
                first_seq,
                path,
                blocks: scan.blocks,
                len,
            },
            file,
        });
    }
    Ok(out)
}

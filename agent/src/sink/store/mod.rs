//! The local store: the embedded default sink, and what `logtap query` reads.
//!
//! ```text
//! <dir>/sources.ndjson               source_id -> path, kind, config name (append-only)
//! <dir>/segments/<first_seq:020>.seg blocks, one per package (see [`segment`])
//! ```
//!
//! Packages are appended as lz4 blocks to the newest ("active") segment; a segment is
//! sealed when the next block would take it past `segment_bytes`. Retention deletes
//! whole sealed segments, oldest first. The block index ([`index`]) lives in memory and
//! is rebuilt from block headers on open.
//!
//! # Durability
//!
//! `write` only appends (page cache); `flush` fsyncs the source table and the active
//! segment, and the segments directory when a segment was created, so the sink worker
//! can group-commit many packages per fsync. A sealed segment is fsynced when it is
//! sealed. After a crash the active segment may end in a torn block: `open` verifies
//! its payload checksums and truncates everything from the first bad block on (none of
//! it was acknowledged, since acknowledgement follows an fsync of the whole prefix).
//!
//! # Duplicates
//!
//! After a crash the pipeline re-sends packages past the last durable checkpoint, so a
//! store holds each record at least once. The store counts re-sent packages
//! (`logtap_store_replayed_packages_total`); queries deduplicate by `(source_id, offset)`.

pub mod b64;
pub mod index;
pub mod query;
pub mod render;
pub mod segment;
pub mod sources;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::batch::{Batch, codec};
use crate::sink::{Sink, SinkError};
use crate::source::SourceId;

use crate::metrics::catalogue::{
    STORE_BYTES, STORE_REPLAYED_PACKAGES_TOTAL, STORE_RETENTION_DELETED_BYTES_TOTAL,
    STORE_SEGMENTS, STORE_TORN_BLOCKS_TOTAL,
};
use index::SegmentIndex;
use segment::{BlockHeader, BlockMeta, HEADER_LEN, ScanMode};
use sources::SourceLog;

/// Sizing and retention of a store (from `config::SinkConfig::Store`).
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// A segment is sealed when the next block would take it past this size.
    pub segment_bytes: u64,
    /// Oldest sealed segments are deleted while the store is larger than this.
    pub max_bytes: u64,
    /// Sealed segments whose newest record is older than this are deleted.
    pub max_age: Option<Duration>,
    /// Oldest sealed segments are deleted while the store's file system has less
    /// free space than this, so a disk filled by others cannot stall collection.
    pub min_free: MinFree,
}

pub use crate::config::MinFree;

/// (available bytes, total bytes) of the file system holding `path`.
pub fn free_space(path: &Path) -> io::Result<(u64, u64)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: statvfs only writes into `st`, which lives across the call; `c` is a
    // NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * unit, st.f_blocks as u64 * unit))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// Two writers would interleave blocks and truncate each other's tails.
    #[error("store {path} is in use by another process")]
    Locked { path: PathBuf },
}

/// Counters since `open`, for tests and `logtap` diagnostics (the same events are
/// also exported as metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub torn_blocks: u64,
    /// Damaged blocks found in the middle of segments and skipped (the rest kept).
    pub damaged_blocks: u64,
    pub replayed_packages: u64,
    pub retention_deleted_segments: u64,
    pub retention_deleted_bytes: u64,
}

/// The embedded store sink. See the module docs.
pub struct Store {
    /// Holds the writer lock for as long as the store is open.
    _lock: File,
    dir: PathBuf,
    segments_dir: PathBuf,
    options: StoreOptions,
    /// Oldest first; the last one is the active segment (when there is any).
    segments: Vec<SegmentIndex>,
    /// Append handle on the last segment of `segments`.
    active: Option<File>,
    total_bytes: u64,
    sources: SourceLog,
    /// Highest end offset stored per source: a package starting below it is a replay.
    stored_end: HashMap<SourceId, u64>,
    payload_buf: Vec<u8>,
    /// The block being written is `block_buf[..block_len]`: header, then the compressed
    /// payload compressed in place behind it. The buffer is never shrunk, so it is
    /// zeroed once, not per block (see `codec::compress_at`).
    block_buf: Vec<u8>,
    block_len: usize,
    active_dirty: bool,
    dir_dirty: bool,
    /// Set when an fsync failed: what it covered may be gone, and a later fsync
    /// could report success regardless, so every later flush fails (fatal).
    durability_lost: Option<String>,
    /// When `idle` last ran retention.
    last_idle_retention: Option<SystemTime>,
    stats: StoreStats,
    /// Whether the `logtap_store_*` gauges are this store's (see `without_gauges`).
    gauges: bool,
    /// Whether payloads are lz4-compressed, or stored as lz4 literals (see
    /// `without_compression`).
    compress: bool,
    /// `stored_end` and the source table are pruned of sources the store no longer
    /// holds once they reach this many entries (see `prune_sources`).
    prune_at: usize,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Takes the exclusive writer lock of a store (`<dir>/lock`, `flock`). Readers do
/// not lock; the kernel drops the lock when the process dies, even by kill -9.
fn lock_store(dir: &Path) -> Result<File, StoreError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.kind() == io::ErrorKind::WouldBlock {
            StoreError::Locked {
                path: dir.to_path_buf(),
            }
        } else {
            StoreError::Io { path, source: err }
        });
    }
    Ok(file)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

impl Store {
    /// Opens (creating) the store in `dir`, repairing a torn tail left by a crash.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let segments_dir = dir.join("segments");
        std::fs::create_dir_all(&segments_dir).map_err(io_err(&segments_dir))?;
        sync_dir(dir).map_err(io_err(dir))?;
        let lock = lock_store(dir)?;
        let sources = SourceLog::open(dir).map_err(io_err(dir))?;
        let listed = segment::list_segments(&segments_dir).map_err(io_err(&segments_dir))?;

        let mut stats = StoreStats::default();
        let mut segments = Vec::with_capacity(listed.len());
        let mut active = None;
        let count = listed.len();
        for (i, (first_seq, path)) in listed.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let file = OpenOptions::new()
                .read(true)
                .append(is_last)
                .open(&path)
                .map_err(io_err(&path))?;
            let len = file.metadata().map_err(io_err(&path))?.len();
            let mode = if is_last {
                ScanMode::VerifyPayloads
            } else {
                ScanMode::HeadersOnly
            };
            let scan = segment::scan_segment(&file, len, mode).map_err(io_err(&path))?;
            let mut kept_len = len;
            let damaged = (scan.skipped_regions + scan.damaged_payloads) as u64;
            if damaged > 0 {
                tracing::warn!(segment = %path.display(), unreadable_headers = scan.skipped_regions,
                    damaged_payloads = scan.damaged_payloads,
                    "store: damaged blocks in the middle of a segment; skipped, the rest kept");
                stats.damaged_blocks += damaged;
                metrics::counter!(STORE_TORN_BLOCKS_TOTAL).increment(damaged);
            }
            if let Some(problem) = scan.tail {
                if is_last {
                    tracing::warn!(segment = %path.display(), ?problem,
                        truncated_bytes = len - scan.valid_len,
                        "store: truncating a torn block at the end of the active segment");
                    file.set_len(scan.valid_len).map_err(io_err(&path))?;
                    file.sync_all().map_err(io_err(&path))?;
                    kept_len = scan.valid_len;
                    stats.torn_blocks += 1;
                    metrics::counter!(STORE_TORN_BLOCKS_TOTAL).increment(1);
                } else {
                    tracing::warn!(segment = %path.display(), ?problem,
                        ignored_bytes = len - scan.valid_len,
                        "store: damaged tail of a sealed segment ignored");
                }
            }
            segments.push(SegmentIndex {
                first_seq,
                path,
                blocks: scan.blocks,
                len: kept_len,
            });
            if is_last {
                active = Some(file);
            }
        }

        let mut stored_end: HashMap<SourceId, u64> = HashMap::new();
        for b in segments.iter().flat_map(|s| &s.blocks) {
            let end = stored_end.entry(SourceId(b.header.source_id)).or_default();
            *end = (*end).max(b.header.end_offset);
        }
        let total_bytes = segments.iter().map(|s| s.len).sum();
        let mut store = Store {
            _lock: lock,
            dir: dir.to_path_buf(),
            segments_dir,
            options,
            segments,
            active,
            total_bytes,
            sources,
            stored_end,
            payload_buf: Vec::new(),
            block_buf: Vec::new(),
            block_len: 0,
            active_dirty: false,
            dir_dirty: false,
            durability_lost: None,
            last_idle_retention: None,
            stats,
            gauges: true,
            compress: true,
            prune_at: PRUNE_SLACK,
        };
        store.enforce_retention(SystemTime::now());
        store.publish_gauges();
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Bytes of all segment files.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The index, oldest segment first.
    pub fn segments(&self) -> &[SegmentIndex] {
        &self.segments
    }

    /// What a source id in the store stands for.
    pub fn source(&self, id: SourceId) -> Option<&std::sync::Arc<crate::source::SourceInfo>> {
        self.sources.get(id)
    }

    /// Stops this store from setting the `logtap_store_*` gauges: a spool is a store
    /// too, and has gauges of its own.
    pub fn without_gauges(mut self) -> Store {
        self.gauges = false;
        self
    }

    /// Writes payloads as lz4 literals instead of compressing them
    /// (`codec::store_at`): `compression: none` of a local store or a network sink's
    /// spool. The blocks are in the same format and read back the same way.
    pub fn without_compression(mut self) -> Store {
        self.compress = false;
        self
    }

    fn publish_gauges(&self) {
        if !self.gauges {
            return;
        }
        metrics::gauge!(STORE_BYTES).set(self.total_bytes as f64);
        metrics::gauge!(STORE_SEGMENTS).set(self.segments.len() as f64);
    }

    /// Encodes `batch` into `block_buf[..block_len]` (header + compressed payload).
    fn encode_block(&mut self, batch: &Batch) -> Result<BlockHeader, SinkError> {
        codec::encode_payload(batch, &mut self.payload_buf);
        let too_big = |what: &str, n: usize| {
            SinkError::Rejected(format!(
                "package {what} of {n} bytes exceeds the 4 GiB block limit"
            ))
        };
        let uncompressed_len = u32::try_from(self.payload_buf.len())
            .map_err(|_| too_big("payload", self.payload_buf.len()))?;
        let compressed = if self.compress {
            codec::compress_at(&self.payload_buf, &mut self.block_buf, HEADER_LEN)
        } else {
            codec::store_at(&self.payload_buf, &mut self.block_buf, HEADER_LEN)
        };
        let compressed_len =
            u32::try_from(compressed).map_err(|_| too_big("compressed", compressed))?;
        let block_len = HEADER_LEN + compressed;
        let line_count = u32::try_from(batch.lines.len())
            .map_err(|_| SinkError::Rejected("package has over 4 billion lines".into()))?;
        // Not the first and last record: CRI records are not in offset order (see
        // `segment`'s docs), and queries need true bounds for dedupe and context.
        let (min_offset, max_offset) = batch.lines.iter().fold((u64::MAX, 0), |(lo, hi), l| {
            (lo.min(l.offset), hi.max(l.offset))
        });
        let (first_offset, offset_span) = if batch.lines.is_empty() {
            (batch.end_offset, 0)
        } else {
            let span = u32::try_from(max_offset - min_offset).unwrap_or(u32::MAX);
            (min_offset, span)
        };
        let (min_ts, max_ts) = batch
            .lines
            .iter()
            .fold(None, |acc: Option<(i64, i64)>, l| {
                Some(acc.map_or((l.timestamp_ns, l.timestamp_ns), |(lo, hi)| {
                    (lo.min(l.timestamp_ns), hi.max(l.timestamp_ns))
                }))
            })
            .unwrap_or((0, 0));
        let header = BlockHeader {
            compressed_len,
            uncompressed_len,
            line_count,
            offset_span,
            source_id: batch.source.id.0,
            package_id: batch.package_id,
            first_offset,
            end_offset: batch.end_offset,
            min_ts,
            max_ts,
            payload_crc: crc32fast::hash(&self.block_buf[HEADER_LEN..block_len]),
        };
        self.block_buf[..HEADER_LEN].copy_from_slice(&header.encode());
        self.block_len = block_len;
        Ok(header)
    }

    /// Seals the active segment (if it holds anything) and starts a new one.
    fn roll(&mut self) -> io::Result<()> {
        let next_seq = match self.segments.last() {
            Some(last) if last.blocks.is_empty() => return Ok(()),
            Some(last) => last.first_seq + last.blocks.len() as u64,
            None => 0,
        };
        // Sealed segments are never fsynced again; flush only covers the active one.
        // So the handle is let go only once the sync succeeded: on failure the segment
        // stays active and dirty, and no later flush can succeed without syncing it.
        if self.active_dirty
            && let Some(old) = &self.active
            && let Err(e) = old.sync_data()
        {
            self.durability_lost = Some(format!("fsync of a sealed segment: {e}"));
            return Err(e);
        }
        self.active_dirty = false;
        self.active = None;
        let path = self.segments_dir.join(segment::segment_file_name(next_seq));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)?;
        self.segments.push(SegmentIndex {
            first_seq: next_seq,
            path,
            blocks: Vec::new(),
            len: 0,
        });
        self.active = Some(file);
        self.dir_dirty = true;
        Ok(())
    }

    fn append_block(&mut self, header: BlockHeader) -> io::Result<()> {
        let block_len = self.block_len as u64;
        let needs_roll = match self.segments.last() {
            None => true,
            Some(s) => s.len > 0 && s.len + block_len > self.options.segment_bytes,
        };
        if needs_roll || self.active.is_none() {
            self.roll()?;
        }
        let (Some(file), Some(seg)) = (self.active.as_mut(), self.segments.last_mut()) else {
            return Err(io::Error::other("store has no active segment"));
        };
        if let Err(e) = file.write_all(&self.block_buf[..self.block_len]) {
            // Cut a partial block away so later blocks do not land after garbage.
            if let Err(e2) = file.set_len(seg.len) {
                tracing::error!(error = %e2, segment = %seg.path.display(),
                    "store: could not remove a partially written block");
            }
            return Err(e);
        }
        seg.blocks.push(BlockMeta {
            position: seg.len,
            header,
        });
        seg.len += block_len;
        self.total_bytes += block_len;
        self.active_dirty = true;
        Ok(())
    }

    /// Deletes sealed segments, oldest first, while the store is over `max_bytes` or
    /// the oldest one's newest record is older than `max_age`.
    /// Seals the active segment when all its records are older than `max_age`.
    fn expire_active(&mut self, now: SystemTime) -> io::Result<()> {
        let Some(max_age) = self.options.max_age else {
            return Ok(());
        };
        let cutoff = now
            .checked_sub(max_age)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let expired = self
            .segments
            .last()
            .and_then(|s| s.max_ts())
            .is_some_and(|ts| ts < cutoff);
        if expired {
            self.roll()?;
        }
        Ok(())
    }

    fn enforce_retention(&mut self, now: SystemTime) {
        let now_ns = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let cutoff = self
            .options
            .max_age
            .map(|age| now_ns.saturating_sub(i64::try_from(age.as_nanos()).unwrap_or(i64::MAX)));
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let too_big = self.total_bytes > self.options.max_bytes;
            // A sealed segment without records holds nothing worth keeping.
            let too_old = cutoff.is_some_and(|c| oldest.max_ts().is_none_or(|ts| ts < c));
            if !too_big && !too_old {
                break;
            }
            if !self.retire_oldest(if too_big { "size" } else { "age" }) {
                break;
            }
        }
    }

    /// Retention's deletion of the oldest sealed segment, counted; false when there
    /// was none to delete or it could not be deleted.
    fn retire_oldest(&mut self, reason: &'static str) -> bool {
        match self.delete_oldest_sealed() {
            Ok(Some(removed)) => {
                self.stats.retention_deleted_segments += 1;
                self.stats.retention_deleted_bytes += removed.len;
                metrics::counter!(STORE_RETENTION_DELETED_BYTES_TOTAL).increment(removed.len);
                tracing::debug!(segment = %removed.path.display(), bytes = removed.len, reason,
                    "store: retention deleted a segment");
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, reason, "store: retention could not delete a segment");
                false
            }
        }
    }
}

impl Store {
    /// After retention: forgets the sources none of the remaining blocks belongs to,
    /// in `stored_end` and in the source table, once there are [`PRUNE_SLACK`] more
    /// of them than held ones. With container churn both would otherwise gain an
    /// entry per container ever seen. A source that writes again is recorded again.
    fn prune_sources(&mut self) {
        if self.stored_end.len().max(self.sources.len()) < self.prune_at {
            return;
        }
        let held: std::collections::HashSet<SourceId> = self
            .segments
            .iter()
            .flat_map(|s| s.blocks.iter().map(|b| SourceId(b.header.source_id)))
            .collect();
        let before = self.sources.len();
        self.stored_end.retain(|id, _| held.contains(id));
        if let Err(e) = self.sources.compact(&self.dir, |id| held.contains(&id)) {
            tracing::warn!(error = %e, "store: could not compact the source table");
        }
        self.prune_at = 2 * held.len() + PRUNE_SLACK;
        tracing::debug!(
            before,
            after = self.sources.len(),
            "store: pruned the source table"
        );
    }

    /// Deletes sealed segments, oldest first, while the file system has less free
    /// space than `min_free`. Never the active segment: when that alone is too big
    /// for the disk, writes fail (retried, the readers wait) until space returns.
    fn keep_min_free(&mut self) {
        if self.options.min_free == MinFree::Off {
            return;
        }
        while self.segments.len() > 1 {
            let (free, total) = match free_space(&self.segments_dir) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "store: cannot read the free space of its disk");
                    return;
                }
            };
            let need = self.options.min_free.threshold(total);
            if free >= need {
                return;
            }
            tracing::info!(
                free,
                need,
                "store: less free space on the disk than min_free; deleting the oldest segment"
            );
            if !self.retire_oldest("min_free") {
                return;
            }
        }
    }

    /// Deletes the oldest segment unless it is the active one (for owners with their
    /// own retention: the spool). Returns what was deleted.
    pub fn delete_oldest_sealed(&mut self) -> io::Result<Option<SegmentIndex>> {
        if self.segments.len() < 2 {
            return Ok(None);
        }
        match std::fs::remove_file(&self.segments[0].path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let removed = self.segments.remove(0);
        self.total_bytes -= removed.len;
        self.dir_dirty = true;
        self.prune_sources();
        self.publish_gauges();
        Ok(Some(removed))
    }
}

impl Sink for Store {
    fn kind(&self) -> &'static str {
        "store"
    }

    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.keep_min_free();
        self.sources.ensure(&batch.source)?;
        let header = self.encode_block(batch)?;
        if let Err(e) = self.append_block(header) {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                // Make room for the retry (the worker sends the package again).
                self.keep_min_free();
            }
            return Err(e.into());
        }

        let end = self.stored_end.entry(batch.source.id).or_insert(0);
        if header.line_count > 0 && header.first_offset < *end {
            self.stats.replayed_packages += 1;
            metrics::counter!(STORE_REPLAYED_PACKAGES_TOTAL).increment(1);
        }
        *end = (*end).max(header.end_offset);

        self.enforce_retention(SystemTime::now());
        self.publish_gauges();
        Ok(())
    }

    /// Age retention on a quiet node: an active segment whose every record is past
    /// `max_age` is sealed, so retention can delete it (checked at most every
    /// [`IDLE_RETENTION_EVERY`]).
    fn idle(&mut self) -> Result<(), SinkError> {
        let now = SystemTime::now();
        if self
            .last_idle_retention
            .is_some_and(|t| now.duration_since(t).unwrap_or_default() < IDLE_RETENTION_EVERY)
        {
            return Ok(());
        }
        self.last_idle_retention = Some(now);
        self.expire_active(now)?;
        self.enforce_retention(now);
        self.keep_min_free();
        self.publish_gauges();
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if let Some(reason) = &self.durability_lost {
            return Err(SinkError::Fatal(reason.clone()));
        }
        let mut synced = self.sources.sync();
        if synced.is_ok()
            && self.active_dirty
            && let Some(f) = &self.active
        {
            synced = f.sync_data();
        }
        if let Err(e) = synced {
            self.durability_lost = Some(format!("fsync: {e}"));
            return Err(super::fsync_failed(e));
        }
        self.active_dirty = false;
        if self.dir_dirty {
            if let Err(e) = sync_dir(&self.segments_dir) {
                self.durability_lost = Some(format!("fsync of the segments directory: {e}"));
                return Err(super::fsync_failed(e));
            }
            self.dir_dirty = false;
        }
        Ok(())
    }
}

/// Sources beyond those the store holds that `stored_end` and the source table may
/// keep before they are pruned: pruning is O(blocks), so not after every deletion.
const PRUNE_SLACK: usize = 1024;

/// How often an idle store re-checks age retention.
const IDLE_RETENTION_EVERY: Duration = Duration::from_secs(10);

#[cfg(test)]
impl Store {
    pub(crate) fn stored_end_len(&self) -> usize {
        self.stored_end.len()
    }

    pub(crate) fn enforce_retention_at(&mut self, now: SystemTime) {
        self.enforce_retention(now);
    }
}

//! The spool: where a network sink's packages become durable on the node, so that
//! reading never waits for the network.
//!
//! ```text
//! <spool dir>/segments/<first_seq:020>.seg   the local store's block format
//! <spool dir>/sources.ndjson                 the local store's source table
//! <spool dir>/cursor                         where forwarding resumes (see below)
//! ```
//!
//! A spool *is* a local [`Store`] (same segments, CRCs, torn-tail repair, source
//! table) with its own retention: the node keeps one durable format, and a network
//! sink is a cursor over it. A block's place in the spool is a [`SpoolPos`]: its
//! segment (the segment file's first sequence number) and its byte position in it.
//! Positions, unlike block counts, do not shift when a damaged block is skipped, so a
//! cursor saved before the damage still means the same block after it.
//!
//! # The two halves
//!
//! - [`Spool`] is the [`Sink`] the pipeline's sink worker drives: `write` appends a
//!   package, `flush` fsyncs, and only then does the worker acknowledge the packages
//!   to the checkpoints (so a source checkpoint advances once its package is durable
//!   *in the spool*). After a successful flush the new blocks are *published* to the
//!   forwarder.
//! - The forwarder ([`super::forward`]) takes windows of published blocks, sends them
//!   to the destination and, on its acknowledgement, moves the cursor.
//!
//! A package reaches the spool only when the forwarder is behind: while it keeps up,
//! the network sink hands packages to it in memory ([`super::handoff`], whose
//! invariants [`State::check`] also checks).
//!
//! # Invariants (of [`State`], checked in the tests)
//!
//! 1. `in_flight` and `pending` hold increasing positions, every one of `in_flight`
//!    below every one of `pending` and all below `published_end`: the forwarder takes
//!    from the front.
//! 2. Every block below [`State::cursor`] was acknowledged, refused for good (counted)
//!    or dropped by `when_full: drop_oldest` (counted); the blocks at or above it that
//!    are still on disk are in `in_flight` or `pending`, or not yet flushed.
//! 3. A segment is deleted only when all its blocks are below the cursor, or by
//!    `drop_oldest`, which first removes its blocks from `pending` and counts them.
//!
//! # The cursor file
//!
//! `{"version":1,"forwarded_below":P,"sent_below":Q}` (positions as
//! `{"segment":S,"position":B}`), replaced atomically (tmp + rename). `forwarded_below` is the cursor, written with an fsync after every
//! acknowledged window: at start, forwarding resumes there. `sent_below` is written
//! (without fsync: it must only survive the process, not the machine) before a window
//! goes out; blocks in `[forwarded_below, sent_below)` at start may already be at the
//! destination, and re-sending them is counted as a replay. Duplicates after a crash
//! are therefore bounded by one window per sink and counted.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::batch::Batch;
use crate::config::network::{BlockCompression, SpoolConfig, WhenFull};
use crate::metrics::catalogue::{
    DROPPED_LINES_TOTAL, SPOOL_BYTES, SPOOL_CURSOR_CORRUPT_TOTAL, SPOOL_DROPPED_PACKAGES_TOTAL,
    SPOOL_FULL_TOTAL,
};
use crate::sink::handoff::Handoff;
use crate::sink::store::segment::BlockHeader;
use crate::sink::store::{Store, StoreOptions};
use crate::sink::{Sink, SinkError};
use crate::source::{SourceId, SourceInfo, SourceKind};

const CURSOR_FILE: &str = "cursor";

/// How long a `write` into a full spool (`when_full: block`) waits for the forwarder
/// to free space before reporting a transient error (the sink worker retries).
const FULL_WAIT: Duration = Duration::from_millis(500);

/// Where a block is: its segment's first sequence number, then its byte position.
/// Ordered as the blocks are written.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct SpoolPos {
    pub segment: u64,
    pub position: u64,
}

/// One durable block the forwarder may send.
#[derive(Clone, Debug)]
pub struct SpooledBlock {
    pub at: SpoolPos,
    /// Increases by one per block in this process (what a destination sees as
    /// `SpooledPackage::seq`); not persisted.
    pub seq: u64,
    /// The segment, open for reading: a segment deleted by `drop_oldest` while the
    /// block is in flight stays readable.
    pub file: Arc<File>,
    pub header: BlockHeader,
    pub source: Arc<SourceInfo>,
}

impl SpooledBlock {
    /// The position just past this block.
    pub fn end(&self) -> SpoolPos {
        SpoolPos {
            segment: self.at.segment,
            position: self.at.position + self.header.block_len(),
        }
    }

    pub fn meta(&self) -> crate::sink::store::segment::BlockMeta {
        crate::sink::store::segment::BlockMeta {
            position: self.at.position,
            header: self.header,
        }
    }
}

/// What the writer and the forwarder share. See the module docs for the invariants.
#[derive(Debug, Default)]
pub struct State {
    /// Blocks taken by the forwarder and not yet acknowledged.
    pub in_flight: VecDeque<SpooledBlock>,
    /// Durable blocks waiting to be taken.
    pub pending: VecDeque<SpooledBlock>,
    /// Just past the last published (durable) block.
    pub published_end: SpoolPos,
    /// Blocks in `[forwarded_below, sent_below)` of the previous run that were sent
    /// before it ended: their next send is a replay.
    pub replay_below: SpoolPos,
    /// Set when the spool closes: the forwarder drains until this deadline, then stops.
    pub stop_at: Option<Instant>,
    /// What this spool lost or repeated since it opened (also exported as metrics).
    pub stats: SpoolStats,
    /// Packages handed to the forwarder in memory, not spooled (see [`super::handoff`]).
    pub handoff: Handoff,
}

/// Counters of one spool since it opened, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records and packages deleted unforwarded by `when_full: drop_oldest`.
    pub dropped_lines: u64,
    pub dropped_packages: u64,
    /// Records of blocks that failed their CRC or did not decode.
    pub corrupt_lines: u64,
    /// Records the destination refused for good.
    pub rejected_lines: u64,
    /// Packages sent again after a restart that may already be at the destination, or
    /// spilled while in flight in memory and delivered from there too.
    pub replayed_packages: u64,
    /// Windows sent again after a failed attempt.
    pub retries: u64,
}

impl State {
    /// Every block below this is done (see invariant 2).
    pub fn cursor(&self) -> SpoolPos {
        self.in_flight
            .front()
            .or(self.pending.front())
            .map_or(self.published_end, |b| b.at)
    }

    /// Checks invariant 1, and the hand-off's ([`super::handoff`]); for tests and debug
    /// assertions.
    pub fn check(&self) -> Result<(), String> {
        self.handoff.check()?;
        if (!self.pending.is_empty() || !self.in_flight.is_empty())
            && (!self.handoff.queued.is_empty()
                || self.handoff.in_flight.iter().any(|h| !h.spilled))
        {
            return Err("packages in memory that are newer than the spool's backlog".into());
        }
        let blocks: Vec<(SpoolPos, u64)> = self
            .in_flight
            .iter()
            .chain(&self.pending)
            .map(|b| (b.at, b.seq))
            .collect();
        if blocks
            .windows(2)
            .any(|w| w[0].0 >= w[1].0 || w[0].1 >= w[1].1)
        {
            return Err(format!("blocks out of order: {blocks:?}"));
        }
        if blocks
            .last()
            .is_some_and(|&(at, _)| at >= self.published_end)
        {
            return Err(format!(
                "a block at or past published_end {:?}: {blocks:?}",
                self.published_end
            ));
        }
        Ok(())
    }
}

/// The state, its lock and the condition both halves wait on.
#[derive(Debug, Default)]
pub struct Shared {
    state: Mutex<State>,
    /// Signalled when blocks are published, acknowledged, or the spool closes.
    changed: Condvar,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn notify(&self) {
        self.changed.notify_all();
    }

    /// Waits for a change or `timeout`.
    pub fn wait<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(guard, timeout)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorFile {
    pub version: u32,
    pub forwarded_below: SpoolPos,
    pub sent_below: SpoolPos,
}

/// Reads `<dir>/cursor`; a missing file is a new spool. A corrupt one is reported and
/// treated as "nothing forwarded" (re-sending is a duplicate, never a loss).
pub fn read_cursor(dir: &Path) -> CursorFile {
    let fresh = CursorFile {
        version: 1,
        forwarded_below: SpoolPos::default(),
        sent_below: SpoolPos::default(),
    };
    let path = dir.join(CURSOR_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<CursorFile>(&bytes) {
            Ok(c) if c.version == 1 => c,
            Ok(c) => {
                tracing::error!(path = %path.display(), version = c.version,
                    "spool: unknown cursor version; forwarding everything in the spool again");
                fresh
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e,
                    "spool: cursor file is corrupt; forwarding everything in the spool again");
                metrics::counter!(SPOOL_CURSOR_CORRUPT_TOTAL).increment(1);
                fresh
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => fresh,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e,
                "spool: cursor file unreadable; forwarding everything in the spool again");
            fresh
        }
    }
}

/// Replaces `<dir>/cursor`; with `durable`, fsyncs the file and the directory.
pub fn write_cursor(dir: &Path, cursor: &CursorFile, durable: bool) -> io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(cursor).map_err(io::Error::other)?)?;
    if durable {
        file.sync_data()?;
    }
    std::fs::rename(&tmp, dir.join(CURSOR_FILE))?;
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The writer half: a [`Sink`] appending to the spool's store.
pub struct Spool {
    store: Store,
    config: SpoolConfig,
    name: Arc<str>,
    shared: Arc<Shared>,
    /// Read handles of the segments, by first sequence number.
    readers: HashMap<u64, Arc<File>>,
    /// Blocks written since the last flush: published once the flush succeeded.
    unflushed: Vec<SpooledBlock>,
    /// The next block's `SpooledBlock::seq`.
    next_seq: u64,
}

impl Spool {
    /// Opens (creating) the spool of sink `name`. Durable blocks at or past the cursor
    /// are pending again: the forwarder resumes with them.
    pub fn open(name: Arc<str>, config: SpoolConfig) -> Result<(Spool, Arc<Shared>), SinkError> {
        let store = Store::open(
            &config.path,
            StoreOptions {
                segment_bytes: config.segment_bytes,
                // The spool deletes by its own rules (cursor, max_size, when_full).
                max_bytes: u64::MAX,
                max_age: None,
                // Deleting unforwarded data for space is `when_full`'s decision;
                // a full disk makes writes fail and the readers wait.
                min_free: crate::sink::store::MinFree::Off,
            },
        )
        .map_err(|e| SinkError::Transient(e.to_string()))?
        .without_gauges();
        // Blocks say nothing about their compression (both kinds decode the same
        // way), so a spool written with either setting is read with the other.
        let store = match config.compression {
            BlockCompression::Lz4 => store,
            BlockCompression::None => store.without_compression(),
        };
        let cursor = read_cursor(&config.path);
        let shared = Arc::new(Shared::default());
        let mut spool = Spool {
            store,
            config,
            name,
            shared: shared.clone(),
            readers: HashMap::new(),
            unflushed: Vec::new(),
            next_seq: 0,
        };
        let mut pending = VecDeque::new();
        let mut end = SpoolPos::default();
        for seg in spool.store.segments().to_vec() {
            let file = spool.reader(seg.first_seq, &seg.path)?;
            end = SpoolPos {
                segment: seg.first_seq,
                position: seg.len,
            };
            for meta in &seg.blocks {
                let at = SpoolPos {
                    segment: seg.first_seq,
                    position: meta.position,
                };
                if at < cursor.forwarded_below {
                    continue;
                }
                let source = spool.source_of(SourceId(meta.header.source_id));
                pending.push_back(SpooledBlock {
                    at,
                    seq: spool.next_seq,
                    file: file.clone(),
                    header: meta.header,
                    source,
                });
                spool.next_seq += 1;
            }
        }
        if cursor.forwarded_below > end {
            // The segments are gone (deleted by hand?) but the cursor is not: new blocks
            // start again below it and must not be taken for forwarded ones.
            tracing::warn!(sink = %spool.name, cursor = ?cursor.forwarded_below, ?end,
                "spool: cursor points past the spool's end; resetting it");
            let reset = CursorFile {
                version: 1,
                forwarded_below: end,
                sent_below: end,
            };
            write_cursor(&spool.config.path, &reset, true)?;
        }
        {
            let mut state = shared.lock();
            state.pending = pending;
            state.published_end = end;
            state.replay_below = cursor.sent_below;
            tracing::info!(sink = %spool.name, pending = state.pending.len(),
                cursor = ?cursor.forwarded_below, "spool opened");
        }
        spool.reclaim();
        spool.publish_gauges();
        Ok((spool, shared))
    }

    fn reader(&mut self, first_seq: u64, path: &Path) -> Result<Arc<File>, SinkError> {
        if let Some(f) = self.readers.get(&first_seq) {
            return Ok(f.clone());
        }
        let file = Arc::new(File::open(path)?);
        self.readers.insert(first_seq, file.clone());
        Ok(file)
    }

    /// The source a block names. A block whose source line was lost (a torn table
    /// after a crash) gets a placeholder, so it is still forwarded.
    fn source_of(&self, id: SourceId) -> Arc<SourceInfo> {
        self.store.source(id).cloned().unwrap_or_else(|| {
            Arc::new(SourceInfo {
                id,
                kind: SourceKind::File,
                path: PathBuf::new(),
                config_name: Arc::from(""),
            })
        })
    }

    /// Deletes sealed segments every block of which is below the cursor.
    fn reclaim(&mut self) {
        let cursor = self.shared.lock().cursor();
        loop {
            let segments = self.store.segments();
            if segments.len() < 2 {
                break;
            }
            // Sealed: the next segment starts after it, and the cursor is past that
            // start only if every block of this one is below it.
            if cursor.segment < segments[1].first_seq {
                break;
            }
            if !self.delete_oldest() {
                break;
            }
        }
    }

    /// Deletes the oldest sealed segment; false when it could not.
    fn delete_oldest(&mut self) -> bool {
        match self.store.delete_oldest_sealed() {
            Ok(Some(removed)) => {
                self.readers.remove(&removed.first_seq);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(sink = %self.name, error = %e, "spool: could not delete a segment");
                false
            }
        }
    }

    /// `when_full: drop_oldest`: deletes the oldest sealed segment although it was
    /// not forwarded, counting what it still owed. Blocks already in flight are sent
    /// anyway (their file stays open). False when there is nothing to drop.
    fn drop_oldest(&mut self) -> bool {
        let Some(oldest) = self.store.segments().first() else {
            return false;
        };
        if self.store.segments().len() < 2 {
            return false;
        }
        let segment = oldest.first_seq;
        let (mut lines, mut packages) = (0u64, 0u64);
        {
            let mut state = self.shared.lock();
            while state
                .pending
                .front()
                .is_some_and(|b| b.at.segment <= segment)
            {
                let b = state.pending.pop_front().expect("front exists");
                lines += u64::from(b.header.line_count);
                packages += 1;
            }
            state.stats.dropped_lines += lines;
            state.stats.dropped_packages += packages;
        }
        if !self.delete_oldest() {
            return false;
        }
        if packages > 0 {
            metrics::counter!(DROPPED_LINES_TOTAL, "reason" => "spool_full").increment(lines);
            metrics::counter!(SPOOL_DROPPED_PACKAGES_TOTAL, "sink" => self.name.to_string())
                .increment(packages);
            tracing::warn!(sink = %self.name, lines, packages,
                "spool full (when_full: drop_oldest): dropped the oldest unforwarded packages");
        }
        true
    }

    /// Makes room for one more package, or says the spool is full.
    fn make_room(&mut self) -> Result<(), SinkError> {
        self.reclaim();
        let deadline = Instant::now() + FULL_WAIT;
        while self.store.total_bytes() >= self.config.max_bytes {
            // What fills the spool must be forwardable: publish the blocks written
            // since the last flush first, or the forwarder could never free space (and
            // `drop_oldest` could not tell what it drops).
            if !self.unflushed.is_empty() {
                self.flush()?;
            }
            match self.config.when_full {
                WhenFull::DropOldest => {
                    if !self.drop_oldest() {
                        break;
                    }
                }
                WhenFull::Block => {
                    let now = Instant::now();
                    if now >= deadline {
                        // Waiting for the destination is not a stall of the sink worker
                        // (the forwarder answers for itself) until the next write.
                        crate::metrics::health::park();
                        metrics::counter!(SPOOL_FULL_TOTAL, "sink" => self.name.to_string())
                            .increment(1);
                        return Err(SinkError::Transient(format!(
                            "spool {} is full ({} of max_size {} bytes): waiting for the destination",
                            self.config.path.display(),
                            self.store.total_bytes(),
                            self.config.max_bytes
                        )));
                    }
                    let state = self.shared.lock();
                    drop(self.shared.wait(state, deadline - now));
                    self.reclaim();
                }
            }
        }
        Ok(())
    }

    fn publish_gauges(&self) {
        metrics::gauge!(SPOOL_BYTES, "sink" => self.name.to_string())
            .set(self.store.total_bytes() as f64);
    }

    /// The next package's place in the sink's sequence, for one handed over in memory
    /// (spooled blocks take theirs in `write`).
    pub fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq - 1
    }

    /// Blocks written and not yet flushed (not yet the forwarder's to see).
    pub fn has_unflushed(&self) -> bool {
        !self.unflushed.is_empty()
    }

    /// Tells the forwarder to drain until `deadline` and stop.
    pub fn close(&self, deadline: Instant) {
        self.shared.lock().stop_at = Some(deadline);
        self.shared.notify();
    }
}

impl Sink for Spool {
    fn kind(&self) -> &'static str {
        "spool"
    }

    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.make_room()?;
        self.store.write(batch)?;
        let (first_seq, path, meta) = {
            let seg =
                self.store.segments().last().ok_or_else(|| {
                    SinkError::Transient("spool has no segment after a write".into())
                })?;
            let meta = *seg.blocks.last().expect("a block was just appended");
            (seg.first_seq, seg.path.clone(), meta)
        };
        let file = self.reader(first_seq, &path)?;
        self.unflushed.push(SpooledBlock {
            at: SpoolPos {
                segment: first_seq,
                position: meta.position,
            },
            seq: self.next_seq,
            file,
            header: meta.header,
            source: batch.source.clone(),
        });
        self.next_seq += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.store.flush()?;
        if !self.unflushed.is_empty() {
            let mut state = self.shared.lock();
            for b in self.unflushed.drain(..) {
                state.published_end = b.end();
                state.pending.push_back(b);
            }
            debug_assert_eq!(state.check(), Ok(()));
            drop(state);
            self.shared.notify();
        }
        self.publish_gauges();
        Ok(())
    }

    fn idle(&mut self) -> Result<(), SinkError> {
        self.reclaim();
        self.publish_gauges();
        Ok(())
    }
}

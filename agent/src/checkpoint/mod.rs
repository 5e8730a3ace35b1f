//! Checkpoints: per-source acknowledged offsets, durable across crashes.
//!
//! The [`Registry`] is shared by the file source (which registers, closes and forgets
//! files), the pipeline (which records each package it sends with [`Registry::sent`])
//! and the sink workers (which acknowledge packages with [`Registry::acked`] only after
//! the sink made them durable). A source's checkpoint offset advances to a package's
//! `end_offset` only when that package *and every earlier package of the source* are
//! acknowledged, so acknowledgements may arrive in any order.
//!
//! [`Registry::persist`] writes the whole table atomically (tmp file, fsync, rename,
//! fsync of the directory) in a versioned `rkyv` archive behind a magic and a CRC.
//! At start-up a complete tmp file is preferred (the crash hit between its fsync and
//! the rename, so it is the newest), then the main file.
//!
//! Duplicates after a crash are bounded: what was acknowledged after the last
//! `persist` is read and shipped again, i.e. at most one checkpoint interval of data.
//! They are shipped again under the same [`SourceId`], so the store recognises them
//! as copies: a new source's id is made durable ([`Registry::ensure_durable`]) before
//! its first package reaches a sink.

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::metrics::catalogue::{
    CHECKPOINT_ENTRIES, CHECKPOINT_ERRORS_TOTAL, CHECKPOINT_WRITE_SECONDS, CHECKPOINT_WRITES_TOTAL,
};
use crate::source::SourceId;
use crate::source::file::FileIdentity;

const MAGIC: &[u8; 4] = b"LTCK";
const FILE_NAME: &str = "checkpoints.rkyv";
const TMP_NAME: &str = "checkpoints.rkyv.tmp";

/// What the checkpoint remembers about a file source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileCheckpoint {
    pub source_id: SourceId,
    pub identity: FileIdentity,
    pub path: PathBuf,
    /// Every record starting before this offset has been acknowledged by the sink.
    pub offset: u64,
    /// The last package acknowledged in order; numbering resumes after it.
    pub last_package_id: u64,
    /// The source was drained and closed (rotated away); resume only if it grows.
    pub closed: bool,
    /// The file's size when the agent last looked (at least `offset`): what a file
    /// deleted or truncated while the agent is stopped took with it is at least
    /// `size - offset`, counted at the next start.
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The on-disk format. Versioned so a newer agent can read an older file.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
enum CheckpointFile {
    V1 {
        entries: Vec<EntryV1>,
    },
    /// V1 plus each file's last seen size.
    V2 {
        entries: Vec<EntryV2>,
    },
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
struct EntryV2 {
    v1: EntryV1,
    size: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
struct EntryV1 {
    source_id: u64,
    dev: u64,
    inode: u64,
    fingerprint_len: u32,
    fingerprint: u32,
    path: Vec<u8>,
    offset: u64,
    last_package_id: u64,
    closed: u32,
}

/// A package sent to a sink and not yet folded into the checkpoint offset.
#[derive(Debug)]
struct InFlight {
    package_id: u64,
    end_offset: u64,
    acked: bool,
}

#[derive(Debug)]
struct Live {
    checkpoint: FileCheckpoint,
    in_flight: VecDeque<InFlight>,
    /// The file is gone: drop the entry once nothing is in flight.
    forgotten: bool,
    /// A new source whose id no `persist` has written yet (see
    /// [`Registry::ensure_durable`]).
    id_unpersisted: bool,
}

/// A second reader of a live source's bytes: another config reading the same file,
/// shipping under its own id. Not persisted: it holds its parent's persisted offset
/// back to its own acknowledged offset instead, so a restart resumes the file where
/// the slowest of its readers stopped (see [`Registry::register_branch`]).
#[derive(Debug)]
struct Branch {
    parent: SourceId,
    in_flight: VecDeque<InFlight>,
    /// Every record of this reader starting before this offset is acknowledged.
    offset: u64,
    last_package_id: u64,
    /// Its reader is gone: drop it once nothing is in flight.
    ended: bool,
}

#[derive(Default)]
struct Inner {
    /// Entries read at start-up that no source has claimed yet, by (dev, inode).
    loaded: HashMap<(u64, u64), FileCheckpoint>,
    live: HashMap<SourceId, Live>,
    branches: HashMap<SourceId, Branch>,
}

/// Shared between the file source, the pipeline and sink workers.
pub struct Registry {
    dir: PathBuf,
    inner: Mutex<Inner>,
    last_persist: Mutex<Option<Instant>>,
    /// Serialises `persist`: concurrent writers would share the tmp file, and an older
    /// snapshot must not overwrite a newer one.
    persisting: Mutex<()>,
    /// Acknowledgements that advanced a checkpoint offset (see [`Registry::progress`]).
    progress: AtomicU64,
    /// New sources registered (see [`Registry::registrations`]).
    registrations: AtomicU64,
}

pub type SharedRegistry = Arc<Registry>;

impl Registry {
    /// Opens (creating `dir` if needed) and loads the checkpoint table.
    pub fn open(dir: &Path) -> Result<Registry, CheckpointError> {
        std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let entries = match load(dir) {
            Ok(entries) => entries,
            // A corrupt table must not stop collection. Starting over re-reads files
            // (duplicates) instead of skipping them (loss); keep the bad file for a post-mortem.
            Err(e @ CheckpointError::Corrupt { .. }) => {
                let aside = dir.join(format!("{FILE_NAME}.corrupt"));
                let _ = std::fs::rename(dir.join(FILE_NAME), &aside);
                metrics::counter!(CHECKPOINT_ERRORS_TOTAL).increment(1);
                tracing::error!(error = %e, moved_to = %aside.display(),
                    "checkpoint table unreadable; files will be read again from their start");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let mut loaded = HashMap::new();
        for entry in entries {
            loaded.insert((entry.identity.dev, entry.identity.inode), entry);
        }
        tracing::info!(dir = %dir.display(), entries = loaded.len(), "checkpoints loaded");
        Ok(Registry {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                loaded,
                live: HashMap::new(),
                branches: HashMap::new(),
            }),
            last_persist: Mutex::new(None),
            persisting: Mutex::new(()),
            progress: AtomicU64::new(0),
            registrations: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent data (every
        // mutation is a single insert/update), so keep going rather than cascade.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The checkpoint of the file at `dev`/`inode`, if one was loaded or is live.
    pub fn lookup(&self, dev: u64, inode: u64) -> Option<FileCheckpoint> {
        let inner = self.lock();
        if let Some(c) = inner.loaded.get(&(dev, inode)) {
            return Some(c.clone());
        }
        inner
            .live
            .values()
            .find(|l| {
                !l.forgotten
                    && l.checkpoint.identity.dev == dev
                    && l.checkpoint.identity.inode == inode
            })
            .map(|l| inner.effective(l))
    }

    /// Another reader (a config besides the primary) of the live source `parent`
    /// starts at the parent's acknowledged offset, shipping as `branch`. Until it ends
    /// ([`Registry::end_branch`]) and its packages are acknowledged, the parent's
    /// checkpoint offset is at most the branch's acknowledged offset: no reader loses
    /// a line to a restart, and the readers that were ahead ship again what they had
    /// shipped past it (duplicates bounded by the sink queues and batch timeouts).
    pub fn register_branch(&self, parent: SourceId, branch: SourceId) {
        let mut inner = self.lock();
        let offset = inner.live.get(&parent).map_or(0, |l| l.checkpoint.offset);
        let b = inner.branches.entry(branch).or_insert_with(|| Branch {
            parent,
            in_flight: VecDeque::new(),
            offset,
            last_package_id: 0,
            ended: false,
        });
        b.parent = parent;
        b.ended = false;
        if b.in_flight.is_empty() {
            b.offset = offset;
        }
    }

    /// Tracks the acknowledgements of `source`, a stream with no file behind it (the
    /// Kubernetes events): an in-memory entry, like a branch whose parent is itself,
    /// never persisted, so [`Registry::acked_offset`] tells its reader what the sinks
    /// made durable and [`Registry::ensure_durable`] writes nothing for it. Its offsets
    /// start at 0; [`Registry::end_branch`] ends it.
    pub fn track_stream(&self, source: SourceId) {
        self.register_branch(source, source);
    }

    /// The reader of `branch` is gone; its entry goes once nothing is in flight.
    pub fn end_branch(&self, branch: SourceId) {
        let mut inner = self.lock();
        if let Some(b) = inner.branches.get_mut(&branch) {
            b.ended = true;
        }
        inner.gc();
    }

    /// A file source starts at `offset` (its resume point, or 0 for a new file).
    /// Claims a loaded entry of the same dev/inode, whatever its fingerprint said:
    /// the caller decided whether it resumes it or replaces it (inode reuse).
    pub fn register(&self, source: SourceId, identity: FileIdentity, path: PathBuf, offset: u64) {
        let mut inner = self.lock();
        let previous = inner.loaded.remove(&(identity.dev, identity.inode));
        let resumed = previous.as_ref().is_some_and(|p| p.source_id == source);
        let last_package_id = match (&previous, inner.live.get(&source)) {
            (_, Some(live)) => live.checkpoint.last_package_id,
            (Some(p), None) if p.source_id == source => p.last_package_id,
            _ => 0,
        };
        // Another live source with this dev/inode is a file that vanished and whose
        // inode was reused: it is gone.
        for live in inner.live.values_mut() {
            let id = &live.checkpoint.identity;
            if live.checkpoint.source_id != source
                && id.dev == identity.dev
                && id.inode == identity.inode
            {
                live.forgotten = true;
            }
        }
        if !resumed && !inner.live.contains_key(&source) {
            self.registrations.fetch_add(1, Ordering::Relaxed);
        }
        let live = inner.live.entry(source).or_insert_with(|| Live {
            checkpoint: FileCheckpoint {
                source_id: source,
                identity,
                path: path.clone(),
                offset,
                last_package_id,
                closed: false,
                size: offset,
            },
            in_flight: VecDeque::new(),
            forgotten: false,
            id_unpersisted: !resumed,
        });
        live.checkpoint.identity = identity;
        live.checkpoint.path = path;
        live.checkpoint.closed = false;
        live.forgotten = false;
        if live.in_flight.is_empty() {
            live.checkpoint.offset = offset;
        }
        inner.gc();
    }

    /// The loaded entry of `checkpoint` continues on another file, `to`: a file
    /// copy-truncated while the agent was stopped is read on from the copy logrotate
    /// made, under the same source (offset and package numbering carry over when it
    /// is registered there).
    pub fn continue_on(&self, checkpoint: &FileCheckpoint, to: FileIdentity) {
        let mut inner = self.lock();
        let from = (checkpoint.identity.dev, checkpoint.identity.inode);
        if inner
            .loaded
            .get(&from)
            .is_some_and(|c| c.source_id == checkpoint.source_id)
            && let Some(mut entry) = inner.loaded.remove(&from)
        {
            entry.identity = to;
            inner.loaded.insert((to.dev, to.inode), entry);
        }
    }

    /// The fingerprint of a live source grew (it covers more leading bytes now).
    pub fn update_identity(&self, source: SourceId, identity: FileIdentity) {
        if let Some(live) = self.lock().live.get_mut(&source) {
            live.checkpoint.identity = identity;
        }
    }

    /// The file of a live source was seen at `size` bytes.
    pub fn observed_size(&self, source: SourceId, size: u64) {
        if let Some(live) = self.lock().live.get_mut(&source) {
            live.checkpoint.size = size;
        }
    }

    /// The source was drained and closed but its file still exists.
    pub fn mark_closed(&self, source: SourceId) {
        if let Some(live) = self.lock().live.get_mut(&source) {
            live.checkpoint.closed = true;
        }
    }

    /// The file is gone (or truncated to a new generation): drop its entry once every
    /// package in flight is acknowledged.
    pub fn forget(&self, source: SourceId) {
        let mut inner = self.lock();
        if let Some(live) = inner.live.get_mut(&source) {
            live.forgotten = true;
        }
        // A closed file from an earlier run is known only as a loaded entry.
        inner.loaded.retain(|_, c| c.source_id != source);
        inner.gc();
    }

    /// Drops entries loaded at start-up whose file the first full scan did not find
    /// (deleted while the agent was down, or no longer matched by any include glob):
    /// without this, checkpoints of vanished files would be carried forever.
    /// Captured streams are not files: capture keeps or drops those itself.
    ///
    /// Returns the entries dropped and the bytes they were known to still hold
    /// unread (`size - offset` of each: lost with their file).
    pub fn retain_unclaimed(&self, found: &HashSet<(u64, u64)>) -> (usize, u64) {
        let mut inner = self.lock();
        let (mut dropped, mut owed) = (0, 0);
        inner.loaded.retain(|key, c| {
            let keep = key.0 == crate::source::CAPTURE_DEV || found.contains(key);
            if !keep {
                dropped += 1;
                owed += c.size.saturating_sub(c.offset);
            }
            keep
        });
        (dropped, owed)
    }

    /// The checkpoints a file source starting now may resume: the entries loaded at
    /// start-up and not claimed yet, and the open (not closed, not forgotten) entries
    /// of live sources — after a config rebuild, those of the files the previous file
    /// source was reading, among them rotated files whose backlog the bounded drain
    /// before the rebuild left unread.
    pub fn resumable(&self) -> Vec<FileCheckpoint> {
        let inner = self.lock();
        let live = inner
            .live
            .values()
            .filter(|l| !l.forgotten && !l.checkpoint.closed)
            .map(|l| inner.effective(l));
        inner.loaded.values().cloned().chain(live).collect()
    }

    /// Entries loaded at start-up (not claimed by a live source yet) with this `dev`.
    pub fn loaded_with_dev(&self, dev: u64) -> Vec<FileCheckpoint> {
        let inner = self.lock();
        inner
            .loaded
            .iter()
            .filter(|(key, _)| key.0 == dev)
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// The package id to use for the next package of `source`.
    pub fn next_package_id(&self, source: SourceId) -> u64 {
        let inner = self.lock();
        if let Some(b) = inner.branches.get(&source) {
            return b
                .in_flight
                .back()
                .map_or(b.last_package_id, |f| f.package_id)
                + 1;
        }
        match inner.live.get(&source) {
            Some(l) => {
                l.in_flight
                    .back()
                    .map(|f| f.package_id)
                    .unwrap_or(l.checkpoint.last_package_id)
                    + 1
            }
            None => 1,
        }
    }

    /// The pipeline handed package `package_id` (ending at `end_offset`) to a sink.
    pub fn sent(&self, source: SourceId, package_id: u64, end_offset: u64) {
        let mut inner = self.lock();
        if let Some(b) = inner.branches.get_mut(&source) {
            b.in_flight.push_back(InFlight {
                package_id,
                end_offset,
                acked: false,
            });
            return;
        }
        if let Some(live) = inner.live.get_mut(&source) {
            live.in_flight.push_back(InFlight {
                package_id,
                end_offset,
                acked: false,
            });
        }
    }

    /// The sink made package `package_id` of `source` durable.
    pub fn acked(&self, source: SourceId, package_id: u64) {
        let mut inner = self.lock();
        if let Some(b) = inner.branches.get_mut(&source) {
            if let Some(f) = b.in_flight.iter_mut().find(|f| f.package_id == package_id) {
                f.acked = true;
            }
            let mut advanced = false;
            while b.in_flight.front().is_some_and(|f| f.acked) {
                let f = b.in_flight.pop_front().expect("front exists");
                b.offset = f.end_offset;
                b.last_package_id = f.package_id;
                advanced = true;
            }
            if advanced {
                self.progress.fetch_add(1, Ordering::Relaxed);
            }
            if b.ended && b.in_flight.is_empty() {
                inner.gc();
            }
            return;
        }
        let Some(live) = inner.live.get_mut(&source) else {
            return;
        };
        if let Some(f) = live
            .in_flight
            .iter_mut()
            .find(|f| f.package_id == package_id)
        {
            f.acked = true;
        }
        let mut advanced = false;
        while live.in_flight.front().is_some_and(|f| f.acked) {
            let f = live.in_flight.pop_front().expect("front exists");
            live.checkpoint.offset = f.end_offset;
            live.checkpoint.last_package_id = f.package_id;
            advanced = true;
        }
        if advanced {
            self.progress.fetch_add(1, Ordering::Relaxed);
        }
        if live.forgotten && live.in_flight.is_empty() {
            inner.gc();
        }
    }

    /// The acknowledged offset of a live source (tests, diagnostics).
    pub fn acked_offset(&self, source: SourceId) -> Option<u64> {
        let inner = self.lock();
        if let Some(b) = inner.branches.get(&source) {
            return Some(b.offset);
        }
        inner.live.get(&source).map(|l| inner.effective(l).offset)
    }

    /// How many acknowledgements advanced a checkpoint offset since the registry was
    /// opened: a persister compares it to tell whether anything new needs persisting.
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// How many new sources were registered since the registry was opened: a
    /// persister compares it to write a new file's identity soon after the open, so
    /// a file renamed away while the agent is down can be found again.
    pub fn registrations(&self) -> u64 {
        self.registrations.load(Ordering::Relaxed)
    }

    /// Packages sent and not yet acknowledged, over all sources.
    pub fn in_flight(&self) -> usize {
        let inner = self.lock();
        inner
            .live
            .values()
            .map(|l| l.in_flight.len())
            .sum::<usize>()
            + inner
                .branches
                .values()
                .map(|b| b.in_flight.len())
                .sum::<usize>()
    }

    /// Every entry that would be persisted now.
    pub fn snapshot(&self) -> Vec<FileCheckpoint> {
        let inner = self.lock();
        inner
            .loaded
            .values()
            .cloned()
            .chain(
                inner
                    .live
                    .values()
                    .filter(|l| !l.forgotten)
                    .map(|l| inner.effective(l)),
            )
            .collect()
    }

    /// Writes the table durably: tmp file, fsync, rename over the old one, fsync dir.
    pub fn persist(&self) -> Result<(), CheckpointError> {
        let _persisting = self.persisting.lock().unwrap_or_else(|e| e.into_inner());
        let entries = self.snapshot();
        let started = Instant::now();
        let result = write_atomically(&self.dir, &entries);
        match &result {
            Ok(()) => {
                let mut inner = self.lock();
                for e in &entries {
                    if let Some(live) = inner.live.get_mut(&e.source_id) {
                        live.id_unpersisted = false;
                    }
                }
                drop(inner);
                *self.last_persist.lock().unwrap_or_else(|e| e.into_inner()) = Some(started);
                metrics::counter!(CHECKPOINT_WRITES_TOTAL).increment(1);
                metrics::gauge!(CHECKPOINT_ENTRIES).set(entries.len() as f64);
                metrics::histogram!(CHECKPOINT_WRITE_SECONDS)
                    .record(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                metrics::counter!(CHECKPOINT_ERRORS_TOTAL).increment(1);
                tracing::error!(error = %e, "checkpoint write failed; offsets stay where they were");
            }
        }
        result
    }

    /// Persists the table if `source` is new and no `persist` has written its id yet.
    /// Called before a package of `source` is handed to a sink: a crash after the sink
    /// stored it must find the source under this id again, so the re-shipped copy
    /// carries the same `(source_id, offset)` and is recognised as one. Costs one
    /// `persist` per wave of new sources (it covers every source registered so far);
    /// tried once per source, so a failing disk is not hammered (the periodic
    /// checkpoint retries).
    pub fn ensure_durable(&self, source: SourceId) -> Result<(), CheckpointError> {
        let mut inner = self.lock();
        // A branch's id is derived from its parent's: durable with it.
        let source = inner.branches.get(&source).map_or(source, |b| b.parent);
        let needed = match inner.live.get_mut(&source) {
            Some(live) if live.id_unpersisted && !live.forgotten => {
                live.id_unpersisted = false;
                true
            }
            _ => false,
        };
        drop(inner);
        if needed { self.persist() } else { Ok(()) }
    }

    /// Seconds since the last successful `persist` (None before the first one).
    pub fn age(&self) -> Option<f64> {
        self.last_persist
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed().as_secs_f64())
    }
}

impl Inner {
    fn gc(&mut self) {
        self.live
            .retain(|_, l| !(l.forgotten && l.in_flight.is_empty()));
        self.branches
            .retain(|_, b| !(b.ended && b.in_flight.is_empty()));
    }

    /// A live entry as it is persisted: its offset held back by its branches'.
    fn effective(&self, live: &Live) -> FileCheckpoint {
        let mut checkpoint = live.checkpoint.clone();
        let id = checkpoint.source_id;
        for b in self.branches.values().filter(|b| b.parent == id) {
            checkpoint.offset = checkpoint.offset.min(b.offset);
        }
        checkpoint
    }
}

fn write_atomically(dir: &Path, entries: &[FileCheckpoint]) -> Result<(), CheckpointError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io { path, source }
    };
    let file = CheckpointFile::V2 {
        entries: entries
            .iter()
            .map(|c| EntryV2 {
                v1: EntryV1 {
                    source_id: c.source_id.0,
                    dev: c.identity.dev,
                    inode: c.identity.inode,
                    fingerprint_len: c.identity.fingerprint_len,
                    fingerprint: c.identity.fingerprint,
                    path: c.path.as_os_str().as_bytes().to_vec(),
                    offset: c.offset,
                    last_package_id: c.last_package_id,
                    closed: c.closed as u32,
                },
                size: c.size.max(c.offset),
            })
            .collect(),
    };
    let body =
        rkyv::to_bytes::<rkyv::rancor::Error>(&file).map_err(|e| CheckpointError::Corrupt {
            path: dir.to_path_buf(),
            reason: format!("serialize: {e}"),
        })?;
    let tmp = dir.join(TMP_NAME);
    let dst = dir.join(FILE_NAME);
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(MAGIC).map_err(io(&tmp))?;
    f.write_all(&crc32fast::hash(&body).to_le_bytes())
        .map_err(io(&tmp))?;
    f.write_all(&body).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// Reads the table: a complete tmp file first (newest), else the main file.
fn load(dir: &Path) -> Result<Vec<FileCheckpoint>, CheckpointError> {
    let tmp = dir.join(TMP_NAME);
    if tmp.exists() {
        match read_file(&tmp) {
            Ok(entries) => {
                tracing::info!("recovered checkpoints from a complete tmp file");
                return Ok(entries);
            }
            Err(e) => tracing::warn!(error = %e, "ignoring incomplete checkpoint tmp file"),
        }
    }
    let main = dir.join(FILE_NAME);
    match std::fs::metadata(&main) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        _ => read_file(&main),
    }
}

fn read_file(path: &Path) -> Result<Vec<FileCheckpoint>, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let body = &bytes[8..];
    if crc32fast::hash(body) != crc {
        return Err(corrupt("CRC mismatch".into()));
    }
    // rkyv needs the archive aligned; a Vec<u8> from fs::read is not guaranteed to be.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    let file = rkyv::from_bytes::<CheckpointFile, rkyv::rancor::Error>(&aligned)
        .map_err(|e| corrupt(format!("archive: {e}")))?;
    // A V1 table knows no sizes: nothing is counted for its files at this start.
    let entries: Vec<(EntryV1, Option<u64>)> = match file {
        CheckpointFile::V1 { entries } => entries.into_iter().map(|e| (e, None)).collect(),
        CheckpointFile::V2 { entries } => {
            entries.into_iter().map(|e| (e.v1, Some(e.size))).collect()
        }
    };
    Ok(entries
        .into_iter()
        .map(|(e, size)| FileCheckpoint {
            source_id: SourceId(e.source_id),
            identity: FileIdentity {
                dev: e.dev,
                inode: e.inode,
                fingerprint_len: e.fingerprint_len,
                fingerprint: e.fingerprint,
            },
            path: PathBuf::from(std::ffi::OsString::from_vec(e.path)),
            size: size.unwrap_or(e.offset).max(e.offset),
            offset: e.offset,
            last_package_id: e.last_package_id,
            closed: e.closed != 0,
        })
        .collect())
}

/// Test fixture: a plain-file source with this id and path, registered in `registry`
/// at offset 0 (the state a source is in once the file source opened it).
#[cfg(test)]
pub(crate) fn registered_test_source(
    registry: &Registry,
    id: u64,
    path: &str,
) -> Arc<crate::source::SourceInfo> {
    let identity = FileIdentity {
        dev: 1,
        inode: id,
        fingerprint_len: 0,
        fingerprint: 0,
    };
    registry.register(SourceId(id), identity, path.into(), 0);
    Arc::new(crate::source::SourceInfo {
        id: SourceId(id),
        kind: crate::source::SourceKind::File,
        path: path.into(),
        config_name: Arc::from("test"),
    })
}

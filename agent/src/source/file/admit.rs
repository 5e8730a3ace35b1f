//! Admission: whether a path's file becomes a source, and how it starts.
//!
//! A path found by discovery, inotify or a rescan is looked at here
//! ([`FileSource::check_path`]): the same file grown, another file there (the old one
//! is detached: see [`super::rotate`]), or a new file. A new file is selected by the
//! configs (container facts, capture claims), waits for its turn when the path's
//! previous file is not drained, and starts resumed from its checkpoint when the
//! checkpoint is for this very file, else as a new source from offset 0. Checkpointed
//! files renamed while the agent was stopped are found by identity first
//! ([`FileSource::recover_moved`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::discover::Selection;
use super::identity;
use super::open::Refused;
use super::table::{Configs, State, Tracked};
use super::tracker::{Closed, FileSource, container_of_logical, error_reason};
use super::{FileIdentity, container};
use crate::checkpoint::FileCheckpoint;
use crate::pipeline::input::{Input, Opening};
use crate::select::{Facts, path_facts};
use crate::source::claims::Claim;
use crate::source::{SourceId, SourceInfo};

/// What capture's claims leave to the file source (see [`FileSource::apply_claims`]).
pub(super) enum Claimed {
    /// Read by these configs.
    Read(Configs),
    /// Capture ships it for every config selecting it.
    Skip,
    /// Capture may still claim it.
    Undecided,
}

impl FileSource {
    pub(super) fn recheck_awaiting_facts(&mut self, events: &mut dyn Input) {
        if self.awaiting_facts.is_empty() {
            return;
        }
        let paths: Vec<PathBuf> = self.awaiting_facts.keys().cloned().collect();
        for path in paths {
            if std::fs::symlink_metadata(&path).is_err() {
                self.awaiting_facts.remove(&path);
                continue;
            }
            self.check_path(&path, events);
        }
    }

    /// The configs reading `path`, or `None` when none does or its container's facts
    /// are awaited (then it is asked again every tick, up to `facts_wait`).
    pub(super) fn select(&mut self, path: &Path) -> Option<Configs> {
        let now = Instant::now();
        let since = self.awaiting_facts.get(path).copied();
        let expired = since.is_some_and(|t| now.duration_since(t) >= self.options.facts_wait);
        let source = self.options.facts.clone();
        let mut decided_on_path = false;
        let mut lookup = || match &source {
            Some(source) => match source.facts(path) {
                Facts::Pending if expired => {
                    decided_on_path = true;
                    path_facts(path).map_or(Facts::NotContainer, Facts::Known)
                }
                facts => facts,
            },
            None => path_facts(path).map_or(Facts::NotContainer, Facts::Known),
        };
        let selection = self.matcher.select(path, &mut lookup);
        match selection {
            Selection::Undecided => {
                self.awaiting_facts.entry(path.to_path_buf()).or_insert(now);
                None
            }
            Selection::Configs(configs) => {
                if since.is_some() {
                    self.awaiting_facts.remove(path);
                    let outcome = if decided_on_path {
                        "path_only"
                    } else {
                        "known"
                    };
                    metrics::counter!("logtap_selector_decisions_total", "outcome" => outcome)
                        .increment(1);
                    if decided_on_path {
                        tracing::warn!(path = %path.display(), wait = ?self.options.facts_wait,
                            "container not known in time: selectors decided on its path alone");
                    }
                }
                (!configs.is_empty()).then(|| configs.into())
            }
        }
    }

    pub(super) fn recheck_undecided(&mut self, events: &mut dyn Input) {
        if self.undecided.is_empty() {
            return;
        }
        // `check_path` puts back what is still undecided; vanished files drop out.
        let paths: Vec<PathBuf> = self.undecided.drain().collect();
        for path in paths {
            self.check_path(&path, events);
        }
    }

    /// Looks at one path again: new file, same file grown, another file now there
    /// (rotation), nothing there (rename or deletion), or a directory.
    pub(super) fn check_path(&mut self, path: &Path, events: &mut dyn Input) {
        let owner = self.table.at_path(path);
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                if let Some(slot) = owner {
                    self.detach(slot);
                }
                if e.kind() != io::ErrorKind::NotFound && self.matcher.config_for(path).is_some() {
                    self.warn_once(path, error_reason(&e), &e);
                }
                return;
            }
        };
        let key = (meta.dev(), meta.ino());
        if let Some(slot) = owner {
            let t = self
                .table
                .get(slot)
                .expect("by_path points at live slots (invariant 3)");
            if (t.identity.dev, t.identity.inode) == key {
                if t.file.is_none() {
                    self.reopen(slot, events);
                } else {
                    self.table.enqueue(slot);
                }
                return;
            }
            // The path names another file (or a directory) now: ours was rotated away.
            self.detach(slot);
        }
        if meta.is_dir() {
            if owner.is_some() || self.matcher.config_for(path).is_some() {
                let e = io::Error::from_raw_os_error(libc::EISDIR);
                self.warn_once(path, "is_directory", &e);
            }
            return;
        }
        if !meta.is_file() {
            // A FIFO, socket or device with a log's name: never opened (see `open`).
            if self.matcher.config_for(path).is_some() {
                let refused = Refused::NotRegular;
                self.warn_once(path, refused.reason(), &refused);
            }
            return;
        }
        if let Some(slot) = self.table.of_inode(key) {
            // Already read under another name (a renamed file, or a second symlink).
            self.table.enqueue(slot);
            return;
        }
        if self.is_waiting(key) {
            // Waits for its turn at the path it was found at (now renamed).
            return;
        }
        let Some(configs) = self.select(path) else {
            return;
        };
        if let Some(c) = self.closed.get(&key)
            && meta.len() <= c.offset
        {
            return;
        }
        let configs = match self.apply_claims(path, &meta, configs) {
            Claimed::Read(configs) => configs,
            Claimed::Skip => return,
            Claimed::Undecided => {
                self.undecided.insert(path.to_path_buf());
                return;
            }
        };
        if self.deferred.contains_key(path) || !self.predecessor_drained(path) {
            self.wait_for_turn(path, key, configs);
            return;
        }
        let predecessor = self.take_predecessor(path);
        self.open(path, configs, predecessor, events);
    }

    /// The configs that read the file at `path` from the file once capture took the
    /// containers it ships: capture ships a container for its own config only, so
    /// every other config selecting the log (a `LogCollection`'s stdout source) reads
    /// it from the file as it would without capture.
    pub(super) fn apply_claims(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
        configs: Configs,
    ) -> Claimed {
        let Some(claims) = &self.options.claims else {
            return Claimed::Read(configs);
        };
        if !configs.iter().any(|&c| claims.applies_to(c)) {
            return Claimed::Read(configs);
        }
        match claims.decide(path, meta.created().ok(), SystemTime::now()) {
            Claim::Ship => Claimed::Read(configs),
            Claim::Skip => {
                let others: Configs = configs
                    .iter()
                    .copied()
                    .filter(|&c| !claims.applies_to(c))
                    .collect();
                if others.is_empty() {
                    Claimed::Skip
                } else {
                    Claimed::Read(others)
                }
            }
            Claim::Undecided => Claimed::Undecided,
        }
    }

    /// Finds checkpointed files that are no longer at their path by identity (dev +
    /// inode + fingerprint) in that path's directory — renamed by a rotation while the
    /// agent was stopped (`0.log.<timestamp>`, `app.log.1`) — and starts them at their
    /// path from their checkpoint. The first scan then finds another file (or none)
    /// there and detaches them, as if the rotation had happened while the agent ran:
    /// they are read to their end, and the new file at the path waits for that.
    ///
    /// Several such files of one path (one still being read at the stop, another
    /// rotated while stopped) are read oldest first (by modification time), each
    /// waiting for the one before it, as files rotated while the agent runs do.
    pub(super) fn recover_moved(&mut self, events: &mut dyn Input) {
        let mut found = Vec::new();
        for cp in self.store.resumable() {
            if let Some((file, configs)) = self.moved_file(&cp) {
                let modified = file.metadata().and_then(|m| m.modified()).ok();
                found.push((modified, cp.path, file, configs));
            }
        }
        found.sort_by_key(|(modified, ..)| *modified);
        for (_, path, file, configs) in found {
            match self.table.at_path(&path) {
                None if !self.deferred.contains_key(&path) => {
                    self.open_at(&path, file, configs, None, events);
                }
                owner => {
                    // An older file of this path was found first: it is not at the
                    // path either, and this one follows it.
                    if let Some(owner) = owner {
                        self.detach(owner);
                    }
                    self.queue_behind(&path, file, configs);
                }
            }
        }
    }

    /// The file of checkpoint `cp`, opened, when it is not at its path any more but
    /// in the same directory under another name, and still owes bytes.
    fn moved_file(&mut self, cp: &FileCheckpoint) -> Option<(File, Configs)> {
        let path = &cp.path;
        let at_path =
            |m: &std::fs::Metadata| (m.dev(), m.ino()) == (cp.identity.dev, cp.identity.inode);
        if cp.closed
            || cp.identity.dev == crate::source::CAPTURE_DEV
            || !path.is_absolute()
            || container::split_proc_root(path).is_some()
            || std::fs::symlink_metadata(path).is_ok_and(|m| at_path(&m))
        {
            return None;
        }
        let found = find_by_identity(path.parent()?, &cp.identity)?;
        let file = match identity::open_regular_nofollow(&found) {
            Ok(f) => f,
            Err(e) => {
                self.warn_once(&found, error_reason(&e), &e);
                return None;
            }
        };
        let owes = file
            .metadata()
            .is_ok_and(|m| at_path(&m) && m.len() > cp.offset);
        if !owes || !matches!(identity::prefix_matches(&file, &cp.identity), Ok(true)) {
            return None;
        }
        let configs = self.select(path)?;
        tracing::info!(path = %path.display(), now_at = %found.display(), offset = cp.offset,
            "a checkpointed file was renamed while the agent was stopped; reading it to its end");
        metrics::counter!("logtap_files_found_by_identity_total").increment(1);
        Some((file, configs))
    }

    /// Opens a newly discovered file: resumed from its checkpoint when the checkpoint
    /// is for this very file, else a new source from offset 0.
    pub(super) fn open(
        &mut self,
        path: &Path,
        configs: Configs,
        predecessor: Option<SourceId>,
        events: &mut dyn Input,
    ) {
        let file = match self.open_file(path) {
            Ok(f) => f,
            Err(e) => {
                self.warn_once(path, error_reason(&e), &e);
                return;
            }
        };
        self.open_at(path, file, configs, predecessor, events);
    }

    /// Starts the source of `file`, found at `path`; returns its slot, or `None` when
    /// it is tracked already, stays closed, or cannot be read.
    pub(super) fn open_at(
        &mut self,
        path: &Path,
        file: File,
        configs: Configs,
        predecessor: Option<SourceId>,
        events: &mut dyn Input,
    ) -> Option<usize> {
        self.open_at_as(path, file, configs, predecessor, State::Attached, events)
    }

    /// Like [`open_at`](Self::open_at), starting the source in `state`: a detached
    /// one takes no path (another file holds it).
    pub(super) fn open_at_as(
        &mut self,
        path: &Path,
        file: File,
        configs: Configs,
        predecessor: Option<SourceId>,
        state: State,
        events: &mut dyn Input,
    ) -> Option<usize> {
        let meta = match file.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(_) => {
                let e = io::Error::from_raw_os_error(libc::EISDIR);
                self.warn_once(path, "is_directory", &e);
                return None;
            }
            Err(e) => {
                self.warn_once(path, error_reason(&e), &e);
                return None;
            }
        };
        let key = (meta.dev(), meta.ino());
        if let Some(slot) = self.table.of_inode(key) {
            self.table.enqueue(slot);
            return None;
        }
        let identity = match identity::identify(&file, &meta) {
            Ok(id) => id,
            Err(e) => {
                self.warn_once(path, error_reason(&e), &e);
                return None;
            }
        };
        let size = meta.len();
        let same_file =
            |expected: &FileIdentity| matches!(identity::prefix_matches(&file, expected), Ok(true));
        let checkpoint = self.store.lookup(key.0, key.1);
        let (source, offset) = if let Some(c) = self.closed.remove(&key) {
            // Closed by us in this run: continue where reading stopped, not at the
            // acknowledged offset, or bytes already handed over would come again.
            if same_file(&c.identity) && c.offset <= size {
                (Some(c.source), c.offset)
            } else {
                metrics::counter!("logtap_file_inode_reuse_total").increment(1);
                self.store.forget(c.source);
                (None, 0)
            }
        } else if let Some(cp) = &checkpoint {
            let same = same_file(&cp.identity);
            if same && cp.offset <= size {
                if cp.closed && cp.offset == size {
                    // Closed in an earlier run and not grown since: leave it closed.
                    self.closed.insert(
                        key,
                        Closed {
                            source: cp.source_id,
                            identity: cp.identity,
                            offset: cp.offset,
                            path: Some(path.to_path_buf()),
                            container: self
                                .matcher
                                .logical_path(path)
                                .as_deref()
                                .and_then(container_of_logical),
                        },
                    );
                    return None;
                }
                (Some(cp.source_id), cp.offset)
            } else {
                let reason = if same {
                    tracing::info!(path = %path.display(), "file shrank below its checkpoint; reading it as a new source");
                    metrics::counter!("logtap_file_truncations_total").increment(1);
                    "truncated_while_stopped"
                } else {
                    tracing::info!(path = %path.display(), "inode reused by a different file; reading it as a new source");
                    metrics::counter!("logtap_file_inode_reuse_total").increment(1);
                    "replaced_while_stopped"
                };
                if !self.resume_from_copy(path, cp, &configs, reason, events) {
                    self.store.forget(cp.source_id);
                }
                (None, 0)
            }
        } else {
            (None, 0)
        };
        let resumed = source.is_some();
        let id = source.unwrap_or_else(|| SourceId::new_unique(key.0, key.1));
        // Register at the acknowledged offset when the registry has one for this
        // source: it must never claim bytes the sink has not acknowledged.
        let register_at = checkpoint
            .filter(|cp| cp.source_id == id)
            .map_or(offset, |cp| cp.offset.min(offset));
        if !resumed {
            metrics::counter!("logtap_files_discovered_total").increment(1);
        }
        Some(self.start(
            path,
            configs,
            file,
            identity,
            id,
            offset,
            register_at,
            size,
            predecessor,
            state,
            events,
        ))
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per way a source starts"
    )]
    pub(super) fn start(
        &mut self,
        path: &Path,
        configs: Configs,
        file: File,
        identity: FileIdentity,
        id: SourceId,
        offset: u64,
        register_at: u64,
        size: u64,
        predecessor: Option<SourceId>,
        state: State,
        events: &mut dyn Input,
    ) -> usize {
        let (config_name, kind) = self.configs[configs[0]].clone();
        let logical = self.matcher.logical_path(path);
        let info = Arc::new(SourceInfo {
            id,
            kind,
            path: logical.clone().unwrap_or_else(|| path.to_path_buf()),
            config_name,
        });
        self.store
            .register(id, identity, info.path.clone(), register_at);
        self.store.observed_size(id, size);
        events.opened(Opening::file(
            info.clone(),
            &configs,
            identity,
            offset,
            predecessor,
        ));
        // A container's file is never followed to a node path: its symlinks resolve
        // against the agent's root from out here (see `container`). A detached file
        // has no path to follow.
        let real_path = std::fs::canonicalize(path)
            .ok()
            .filter(|r| r != path && logical.is_none() && state == State::Attached);
        if let Some(real) = &real_path
            && let Some(dir) = real.parent()
        {
            self.watcher.watch_dir(dir);
        }
        let tracked = Tracked {
            info,
            path: path.to_path_buf(),
            configs,
            file: Some(file),
            identity,
            offset,
            size,
            state,
            last_growth: Instant::now(),
            queued: false,
            chunks_this_round: 0,
            real_path,
        };
        let slot = self.table.insert(tracked);
        self.table.enqueue(slot);
        self.update_open_files_gauge();
        slot
    }
}

/// Entries of a directory looked at when searching a renamed file by identity: a
/// bound on the work one checkpoint can cause in a hostile or huge directory.
const MAX_IDENTITY_SEARCH: usize = 10_000;

/// The regular file (not a symlink) in `dir` with `identity`'s device and inode.
fn find_by_identity(dir: &Path, identity: &FileIdentity) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .take(MAX_IDENTITY_SEARCH)
        .filter_map(Result::ok)
        .find(|e| {
            // `DirEntry::metadata` does not follow symlinks.
            e.metadata()
                .is_ok_and(|m| m.is_file() && (m.dev(), m.ino()) == (identity.dev, identity.inode))
        })
        .map(|e| e.path())
}

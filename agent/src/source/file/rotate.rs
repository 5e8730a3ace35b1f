//! Rotation and deletion: a file that left its path is read to its end through its
//! fd, and the next file at the path starts only after it.
//!
//! A detached file (renamed away or deleted) is the *predecessor* of its path until it
//! ends: a file found there meanwhile is opened at once and *waits* (so it is read
//! even if it is rotated away or deleted before its turn), and starts with the
//! predecessor's `SourceId` once the predecessor was read to its EOF, so a CRI
//! partial line cut by the rotation continues into it. A detached file quiet for
//! `rotate_wait` ends: `Deleted` (forgotten) when its link count is 0, else `Rotated`
//! (remembered as closed, reopened if it grows at a watched path).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::admit::Claimed;
use super::identity;
use super::table::{Configs, InodeKey, State};
use super::tracker::{Closed, FileSource, container_of_logical, current_path, error_reason};
use crate::metrics::catalogue::FILES_FOLLOWED_BY_RENAME_TOTAL;
use crate::pipeline::input::{EndReason, Input};
use crate::source::SourceId;

/// A file found at a path whose previous file is not drained yet. It is opened at
/// once, not remembered by path: a slow reader may see it rotated away (to a name no
/// glob matches) or deleted before its turn, and it must still be read.
pub(super) struct Waiting {
    file: File,
    key: InodeKey,
    configs: Configs,
}

impl FileSource {
    /// Whether the last detached file of `path` (if any) was read to EOF; if not, it
    /// is queued for reading.
    pub(super) fn predecessor_drained(&mut self, path: &Path) -> bool {
        let Some(pred) = self.table.predecessor_at(path) else {
            return true;
        };
        if self.drained(pred) {
            return true;
        }
        self.table.enqueue(pred);
        false
    }

    pub(super) fn take_predecessor(&mut self, path: &Path) -> Option<SourceId> {
        self.table
            .take_predecessor(path)
            .and_then(|slot| self.table.get(slot).map(|t| t.info.id))
    }

    pub(super) fn is_waiting(&self, key: InodeKey) -> bool {
        self.deferred.values().flatten().any(|w| w.key == key)
    }

    /// Holds the file now at `path` open until the files before it there are drained.
    pub(super) fn wait_for_turn(&mut self, path: &Path, key: InodeKey, configs: Configs) {
        if self.is_waiting(key) {
            return;
        }
        let file = match self.open_file(path) {
            Ok(f) => f,
            Err(e) => {
                self.warn_once(path, error_reason(&e), &e);
                return;
            }
        };
        // The path may have changed hands since its `stat`: hold what was opened.
        let key = match file.metadata() {
            Ok(m) if m.is_file() => (m.dev(), m.ino()),
            _ => return,
        };
        if self.table.of_inode(key).is_some() || self.is_waiting(key) {
            return;
        }
        self.deferred
            .entry(path.to_path_buf())
            .or_default()
            .push_back(Waiting { file, key, configs });
    }

    /// The files waiting for their turn at a path (opened, not started yet).
    pub(super) fn waiting_keys(&self) -> impl Iterator<Item = InodeKey> + '_ {
        self.deferred.values().flatten().map(|w| w.key)
    }

    /// Holds `file`, open already, until the files before it at `path` are drained.
    pub(super) fn queue_behind(&mut self, path: &Path, file: File, configs: Configs) {
        let Ok(meta) = file.metadata() else {
            return;
        };
        let key = (meta.dev(), meta.ino());
        self.deferred
            .entry(path.to_path_buf())
            .or_default()
            .push_back(Waiting { file, key, configs });
    }

    /// Starts the waiting files of `path` whose predecessor was drained, oldest first.
    /// One that left the path while it waited is detached at once, and the next waits
    /// for it in turn.
    pub(super) fn start_waiting(&mut self, path: &Path, events: &mut dyn Input) {
        while self.predecessor_drained(path) {
            let Some(queue) = self.deferred.get_mut(path) else {
                return;
            };
            let Some(waiting) = queue.pop_front() else {
                self.deferred.remove(path);
                return;
            };
            if queue.is_empty() {
                self.deferred.remove(path);
            }
            let predecessor = self.take_predecessor(path);
            let Some(slot) = self.open_at(path, waiting.file, waiting.configs, predecessor, events)
            else {
                continue;
            };
            let still_there =
                std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == waiting.key);
            if still_there {
                // Anything left waiting was at this path before it: nothing sane to
                // follow; they start after it is rotated away.
                return;
            }
            self.detach(slot);
        }
    }

    /// A file renamed from `from` to `to` that this source never saw (created and
    /// rotated away between two looks at the directory): when `from` is selected and
    /// `to` is not, it is a rotated file of `from` and is read to its end like one.
    /// It is started at `from` and detached at once, so the file that takes `from`
    /// next follows it; when `from` has a file started already (its events came
    /// first), it is read as a detached file of its own, out of order but not lost.
    pub(super) fn follow_unseen_rename(&mut self, from: &Path, to: &Path, events: &mut dyn Input) {
        let Ok(meta) = std::fs::symlink_metadata(to) else {
            return;
        };
        let key = (meta.dev(), meta.ino());
        if !meta.is_file()
            || self.table.of_inode(key).is_some()
            || self.is_waiting(key)
            || self
                .closed
                .get(&key)
                .is_some_and(|c| meta.len() <= c.offset)
            || self.matcher.config_for(to).is_some()
        {
            return;
        }
        let Some(configs) = self.select(from) else {
            return;
        };
        let configs = match self.apply_claims(from, &meta, configs.clone()) {
            Claimed::Read(configs) => configs,
            Claimed::Skip => return,
            // A copy of what capture may ship too is better than a loss.
            Claimed::Undecided => configs,
        };
        let file = match identity::open_regular_nofollow(to) {
            Ok(f) => f,
            Err(e) => {
                self.warn_once(to, error_reason(&e), &e);
                return;
            }
        };
        metrics::counter!(FILES_FOLLOWED_BY_RENAME_TOTAL).increment(1);
        tracing::debug!(from = %from.display(), to = %to.display(),
            "a file renamed away before it was read; following it");
        if self.table.at_path(from).is_some() {
            // Its successor started already: read it on its own.
            self.open_at_as(from, file, configs, None, State::Detached, events);
        } else if self.deferred.contains_key(from) || !self.predecessor_drained(from) {
            self.queue_behind(from, file, configs);
        } else {
            let predecessor = self.take_predecessor(from);
            if let Some(slot) = self.open_at(from, file, configs, predecessor, events) {
                self.detach(slot);
            }
        }
    }

    /// Read to the size of a fresh `fstat`, with no read pending.
    pub(super) fn drained(&mut self, slot: usize) -> bool {
        let Some(t) = self.table.get_mut(slot) else {
            return true;
        };
        let Some(file) = t.file.as_ref() else {
            return true;
        };
        if let Ok(m) = file.metadata()
            && m.len() != t.size
        {
            t.size = m.len();
            self.store.observed_size(t.info.id, t.size);
        }
        !t.queued && t.offset >= t.size
    }

    pub(super) fn open_deferred(&mut self, events: &mut dyn Input) {
        if self.deferred.is_empty() {
            return;
        }
        let paths: Vec<PathBuf> = self.deferred.keys().cloned().collect();
        for path in paths {
            self.start_waiting(&path, events);
            // The file at the path now, if it is not one of those waiting.
            self.check_path(&path, events);
        }
    }

    /// Its path names another file or nothing now (rotated away or deleted): it is
    /// read to its end through its fd, and the next file at the path follows it.
    pub(super) fn detach(&mut self, slot: usize) {
        if self.table.detach(slot)
            && let Some(t) = self.table.get_mut(slot)
        {
            t.last_growth = Instant::now();
        }
    }

    pub(super) fn end_detached(&mut self, slot: usize, events: &mut dyn Input) {
        let Some(t) = self.table.remove(slot) else {
            return;
        };
        let deleted = match t.file.as_ref().map(File::metadata) {
            Some(Ok(m)) => m.nlink() == 0,
            _ => false,
        };
        if deleted {
            events.ended(t.info.id, EndReason::Deleted);
            self.store.forget(t.info.id);
        } else {
            events.ended(t.info.id, EndReason::Rotated);
            self.store.mark_closed(t.info.id);
            self.closed.insert(
                (t.identity.dev, t.identity.inode),
                Closed {
                    source: t.info.id,
                    identity: t.identity,
                    offset: t.offset,
                    // A container's file from out here: the fd's path may name
                    // nothing (or a node file) once the container's mounts are gone.
                    path: match container_of_logical(&t.info.path) {
                        Some(_) => Some(t.path.clone()),
                        None => t.file.as_ref().and_then(current_path),
                    },
                    container: container_of_logical(&t.info.path),
                },
            );
        }
        self.update_open_files_gauge();
    }

    /// Detached files and paths waiting for them: fstat, read, end when quiet.
    pub(super) fn poll_detached(&mut self, events: &mut dyn Input) {
        let slots: Vec<usize> = self
            .table
            .iter()
            .filter(|(_, t)| t.state == State::Detached)
            .map(|(i, _)| i)
            .collect();
        for slot in slots {
            self.refresh(slot, events, false);
            let Some(t) = self.table.get(slot) else {
                continue;
            };
            if !t.queued
                && t.offset >= t.size
                && t.last_growth.elapsed() >= self.options.rotate_wait
            {
                self.end_detached(slot, events);
            }
        }
        self.open_deferred(events);
    }
}

//! Truncation in place (copytruncate, or a plain truncate).
//!
//! A file that shrank below its read offset, or whose fingerprinted prefix changed,
//! ends its source (`Truncated`); the same fd continues as a new source from offset 0.
//! Before that, the bytes written between the last read and the truncation are read
//! from the copy logrotate made (same directory, same fingerprint, at least the read
//! offset long), when there is one; what no copy holds is counted as lost
//! (`logtap_dropped_bytes_total{reason="truncated_unread"}`).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use bytes::BytesMut;

use super::FileIdentity;
use super::identity;
use super::table::{Configs, State, Tracked};
use super::tracker::{Closed, FileSource, container_of_logical, error_reason};
use crate::checkpoint::FileCheckpoint;
use crate::metrics::catalogue::DROPPED_BYTES_TOTAL;
use crate::pipeline::input::{EndReason, Input};
use crate::source::SourceId;

/// Entries of a directory looked at when searching a truncated file's copy: a bound
/// on the work one truncation can cause in a hostile or huge directory.
const MAX_COPY_SEARCH: usize = 10_000;

impl FileSource {
    /// The file shrank below the read offset (copytruncate), or its leading bytes
    /// changed. Bytes written between our last read and the copy are recovered from
    /// the copy when it can be found; then the source ends and the file continues as
    /// a new source.
    pub(super) fn truncated(&mut self, slot: usize, events: &mut dyn Input) {
        let Some(mut t) = self.table.remove(slot) else {
            return;
        };
        metrics::counter!("logtap_file_truncations_total").increment(1);
        tracing::info!(path = %t.path.display(), offset = t.offset, "file truncated; starting a new source");
        if let Some((copy, copy_path, copy_meta)) = self.find_copy(&t) {
            self.read_copy(&mut t, &copy, copy_meta.len(), events);
            // The copy holds nothing new: don't read it again if a glob matches it.
            self.closed.insert(
                (copy_meta.dev(), copy_meta.ino()),
                Closed {
                    source: t.info.id,
                    identity: t.identity,
                    offset: copy_meta.len(),
                    container: container_of_logical(&t.info.path),
                    path: Some(copy_path),
                },
            );
        }
        // Bytes the file was known to hold past what was read, with no copy to read
        // them from: gone with the truncation. Loss must be visible.
        let lost = t.size.saturating_sub(t.offset);
        if lost > 0 {
            metrics::counter!(DROPPED_BYTES_TOTAL, "reason" => "truncated_unread").increment(lost);
            tracing::warn!(path = %t.path.display(), lost,
                "file truncated before its last bytes were read, and no copy was found");
        }
        events.ended(t.info.id, EndReason::Truncated);
        self.store.forget(t.info.id);
        let Some(file) = t.file.take() else {
            return;
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                self.warn_once(&t.path, error_reason(&e), &e);
                return;
            }
        };
        let identity = match identity::identify(&file, &meta) {
            Ok(id) => id,
            Err(e) => {
                self.warn_once(&t.path, error_reason(&e), &e);
                return;
            }
        };
        let id = SourceId::new_unique(identity.dev, identity.inode);
        // Truncated after being rotated away, it stays detached: it takes no path
        // (another file may own it now) and is read until quiet, like any detached
        // file.
        self.start(
            &t.path,
            t.configs.clone(),
            file,
            identity,
            id,
            0,
            0,
            meta.len(),
            None,
            t.state,
            events,
        );
    }

    /// A file in the same directory with the truncated file's fingerprint and at least
    /// its read offset: the copy logrotate made before truncating.
    ///
    /// A file this tracker follows as a source of its own is never taken for the copy:
    /// its bytes are shipped under its own source already, and a sibling log that only
    /// starts like this one (same header lines) would otherwise lend its bytes to it.
    pub(super) fn find_copy(&self, t: &Tracked) -> Option<(File, PathBuf, std::fs::Metadata)> {
        self.find_copy_of(&t.path, &t.identity, t.offset)
    }

    /// The copy of the file `identity` (found at `path`) holding at least `offset`
    /// bytes: see [`find_copy`](Self::find_copy).
    fn find_copy_of(
        &self,
        path: &Path,
        identity: &FileIdentity,
        offset: u64,
    ) -> Option<(File, PathBuf, std::fs::Metadata)> {
        if identity.fingerprint_len == 0 {
            return None;
        }
        let dir = path.parent()?;
        for entry in std::fs::read_dir(dir)
            .ok()?
            .take(MAX_COPY_SEARCH)
            .filter_map(Result::ok)
        {
            // `DirEntry::metadata` does not follow symlinks.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let key = (meta.dev(), meta.ino());
            if !meta.is_file()
                || meta.len() < offset
                || key == (identity.dev, identity.inode)
                || self.table.of_inode(key).is_some()
            {
                continue;
            }
            let Ok(file) = identity::open_regular_nofollow(&entry.path()) else {
                continue;
            };
            if matches!(identity::prefix_matches(&file, identity), Ok(true)) {
                return Some((file, entry.path(), meta));
            }
        }
        None
    }

    /// At start, the checkpointed file `cp` is at its path but shorter than its
    /// checkpoint, or starts with other bytes: truncated (copytruncate) or replaced
    /// while the agent was stopped. Its source continues from the copy logrotate made,
    /// read from the checkpoint to the copy's end as a detached file; what no copy
    /// holds of the bytes it was known to have is counted as lost. Returns whether
    /// the source continues (else the caller forgets it).
    pub(super) fn resume_from_copy(
        &mut self,
        path: &Path,
        cp: &FileCheckpoint,
        configs: &Configs,
        reason: &'static str,
        events: &mut dyn Input,
    ) -> bool {
        let copy = self.find_copy_of(path, &cp.identity, cp.offset);
        let held = copy.as_ref().map_or(cp.offset, |(_, _, m)| m.len());
        let lost = cp.size.saturating_sub(held);
        if lost > 0 {
            metrics::counter!(DROPPED_BYTES_TOTAL, "reason" => reason).increment(lost);
            tracing::warn!(path = %path.display(), lost, reason,
                "bytes of a file truncated or replaced while the agent was stopped are lost");
        }
        let Some((file, copy_path, meta)) = copy else {
            return false;
        };
        let identity = match identity::identify(&file, &meta) {
            Ok(id) => id,
            Err(e) => {
                self.warn_once(&copy_path, error_reason(&e), &e);
                return false;
            }
        };
        tracing::info!(path = %path.display(), copy = %copy_path.display(), offset = cp.offset,
            "a file was truncated while the agent was stopped; reading on from its copy");
        // The copy may have the inode of a file deleted while the agent was stopped,
        // whose checkpoint is still loaded: that file is gone, with what it owed.
        if let Some(stale) = self.store.lookup(meta.dev(), meta.ino())
            && stale.source_id != cp.source_id
        {
            let owed = stale.size.saturating_sub(stale.offset);
            if owed > 0 {
                metrics::counter!(DROPPED_BYTES_TOTAL, "reason" => "deleted_while_stopped")
                    .increment(owed);
                tracing::warn!(path = %stale.path.display(), lost = owed,
                    "a file deleted while the agent was stopped had unread bytes");
            }
            self.store.forget(stale.source_id);
        }
        self.store.continue_on(cp, identity);
        self.start(
            path,
            configs.clone(),
            file,
            identity,
            cp.source_id,
            cp.offset,
            cp.offset,
            meta.len(),
            None,
            State::Detached,
            events,
        );
        true
    }

    pub(super) fn read_copy(
        &mut self,
        t: &mut Tracked,
        copy: &File,
        end: u64,
        events: &mut dyn Input,
    ) {
        let kind = t.info.kind.as_str();
        while t.offset < end {
            let len = ((end - t.offset) as usize).min(self.options.read_buffer_bytes);
            let mut buf = BytesMut::zeroed(len);
            match copy.read_at(&mut buf, t.offset) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    metrics::counter!("logtap_bytes_read_total", "source_kind" => kind)
                        .increment(n as u64);
                    events.data(t.info.id, t.offset, buf.freeze(), None);
                    t.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading the copy of a truncated file failed");
                    break;
                }
            }
        }
    }
}

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
use std::path::PathBuf;

use bytes::BytesMut;

use super::identity;
use super::table::Tracked;
use super::tracker::{Closed, FileSource, container_of_logical, error_reason};
use crate::pipeline::input::{EndReason, Input};
use crate::source::SourceId;

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
            metrics::counter!("logtap_dropped_bytes_total", "reason" => "truncated_unread")
                .increment(lost);
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
        if t.identity.fingerprint_len == 0 {
            return None;
        }
        let dir = t.path.parent()?;
        for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let key = (meta.dev(), meta.ino());
            if !meta.is_file()
                || meta.len() < t.offset
                || key == (t.identity.dev, t.identity.inode)
                || self.table.of_inode(key).is_some()
            {
                continue;
            }
            let Ok(file) = self.matcher.open(&entry.path()) else {
                continue;
            };
            if matches!(identity::prefix_matches(&file, &t.identity), Ok(true)) {
                return Some((file, entry.path(), meta));
            }
        }
        None
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

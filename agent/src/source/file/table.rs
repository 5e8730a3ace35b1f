//! The tracked files and their indexes, kept in step behind one interface.
//!
//! The tracker decides *what* happens to a file (admitted, detached, drained, ended,
//! truncated); this table is the only code that touches the slots and the indexes
//! over them, so a decision can never update one index and forget another. The
//! invariants are written on [`FileTable`] and checked by
//! [`FileTable::assert_consistent`], which the tests run after every step.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::FileIdentity;
use crate::source::SourceInfo;

/// Device and inode: the part of a [`FileIdentity`] the table is keyed by.
pub(super) type InodeKey = (u64, u64);

/// The configs reading a file, in config order; the first is its primary (whose
/// name its `SourceInfo` carries and whose checkpoint entry it resumes).
pub(super) type Configs = Arc<[usize]>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// The file at its discovery path; read whenever it grows.
    Attached,
    /// Rotated away, deleted, or truncated after that: read through its fd until it
    /// has been quiet for `rotate_wait`, then ended.
    Detached,
}

/// One tracked file (one source). The table owns `path`, `real_path`, `state`,
/// `queued` and the identity's device and inode: the tracker reads them but changes
/// them only through the table, since the indexes are keyed by them.
pub(super) struct Tracked {
    pub(super) info: Arc<SourceInfo>,
    /// Where the file was found and is looked at again: `info.path`, except for a
    /// file inside a container (`/proc/<pid>/root/…` here, its logical path there).
    pub(super) path: PathBuf,
    pub(super) configs: Configs,
    /// `None` when closed under fd pressure; reopened by path when it grows.
    pub(super) file: Option<File>,
    pub(super) identity: FileIdentity,
    /// Next byte to read.
    pub(super) offset: u64,
    /// Size at the last `fstat`.
    pub(super) size: u64,
    pub(super) state: State,
    /// Last time bytes were read or the size grew.
    pub(super) last_growth: Instant,
    /// Queued in the ready FIFO.
    pub(super) queued: bool,
    pub(super) chunks_this_round: u32,
    /// The path inotify reports changes under, when the discovery path is a symlink.
    pub(super) real_path: Option<PathBuf>,
}

impl Tracked {
    pub(super) fn key(&self) -> InodeKey {
        (self.identity.dev, self.identity.inode)
    }
}

/// The tracked files, in slots that indexes point into.
///
/// # Invariants
///
/// 1. `free` lists each empty slot exactly once, and nothing else.
/// 2. `by_inode` maps the key of every live slot to that slot, and holds nothing else:
///    at most one source per device + inode.
/// 3. `by_path[p] = s` exactly when `s` is live, attached and its `path` is `p`: a
///    path has at most one attached file, and an attached file is found by its path.
/// 4. `by_real_path[r] = s` exactly when `s` is live, attached and its `real_path`
///    is `Some(r)`; a detached slot has no `real_path`.
/// 5. `predecessor_at[p] = s` only for a live, detached `s` whose `path` is `p`: the
///    file the next one at `p` follows.
/// 6. `ready` holds live slots, each once, and exactly those whose `queued` is set.
/// 7. `detached` counts the live detached slots.
#[derive(Default)]
pub(super) struct FileTable {
    slots: Vec<Option<Tracked>>,
    free: Vec<usize>,
    by_inode: HashMap<InodeKey, usize>,
    /// The attached file at each discovery path.
    by_path: HashMap<PathBuf, usize>,
    /// Real paths of files discovered through symlinks.
    by_real_path: HashMap<PathBuf, usize>,
    /// The last detached file of a path, until it ends: the next file there follows it.
    predecessor_at: HashMap<PathBuf, usize>,
    /// Files with unread bytes, in the order they get their next read round.
    ready: VecDeque<usize>,
    /// Live slots in [`State::Detached`]: they are polled, having no path to watch.
    detached: usize,
}

impl FileTable {
    pub(super) fn get(&self, slot: usize) -> Option<&Tracked> {
        self.slots.get(slot)?.as_ref()
    }

    /// The slot's file, to read or update its read state. Changing the fields the
    /// table owns (see [`Tracked`]) through it breaks the invariants.
    pub(super) fn get_mut(&mut self, slot: usize) -> Option<&mut Tracked> {
        self.slots.get_mut(slot)?.as_mut()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &Tracked)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i, t)))
    }

    /// Every slot number, live or not (for a pass that may remove slots).
    pub(super) fn slot_numbers(&self) -> std::ops::Range<usize> {
        0..self.slots.len()
    }

    pub(super) fn at_path(&self, path: &Path) -> Option<usize> {
        self.by_path.get(path).copied()
    }

    pub(super) fn at_real_path(&self, path: &Path) -> Option<usize> {
        self.by_real_path.get(path).copied()
    }

    pub(super) fn of_inode(&self, key: InodeKey) -> Option<usize> {
        self.by_inode.get(&key).copied()
    }

    /// The discovery paths that have an attached file.
    pub(super) fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.by_path.keys()
    }

    pub(super) fn inodes(&self) -> impl Iterator<Item = &InodeKey> {
        self.by_inode.keys()
    }

    pub(super) fn predecessor_at(&self, path: &Path) -> Option<usize> {
        self.predecessor_at.get(path).copied()
    }

    /// The last detached file of `path`, which the file starting there now follows.
    pub(super) fn take_predecessor(&mut self, path: &Path) -> Option<usize> {
        self.predecessor_at.remove(path)
    }

    pub(super) fn detached_count(&self) -> usize {
        self.detached
    }

    pub(super) fn ready_is_empty(&self) -> bool {
        self.ready.is_empty()
    }

    /// Stores a new source and indexes it: by inode always; an attached one also by its
    /// path (taking the path from any attached file there) and real path. A detached
    /// one gets no path: another file may own it (a file truncated after it was
    /// rotated away). It is not queued: the caller decides.
    pub(super) fn insert(&mut self, mut tracked: Tracked) -> usize {
        let key = tracked.key();
        tracked.queued = false;
        if tracked.state == State::Detached {
            tracked.real_path = None;
        }
        let (state, path, real) = (
            tracked.state,
            tracked.path.clone(),
            tracked.real_path.clone(),
        );
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(tracked);
                s
            }
            None => {
                self.slots.push(Some(tracked));
                self.slots.len() - 1
            }
        };
        let replaced = self.by_inode.insert(key, slot);
        debug_assert!(replaced.is_none(), "one source per inode");
        match state {
            State::Attached => {
                self.by_path.insert(path, slot);
                if let Some(real) = real {
                    self.by_real_path.insert(real, slot);
                }
            }
            State::Detached => self.detached += 1,
        }
        slot
    }

    /// Takes a source out of the table and out of every index.
    pub(super) fn remove(&mut self, slot: usize) -> Option<Tracked> {
        let t = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        if t.state == State::Detached {
            self.detached -= 1;
        }
        let key = t.key();
        if self.by_inode.get(&key) == Some(&slot) {
            self.by_inode.remove(&key);
        }
        if self.by_path.get(&t.path) == Some(&slot) {
            self.by_path.remove(&t.path);
        }
        if let Some(real) = &t.real_path
            && self.by_real_path.get(real) == Some(&slot)
        {
            self.by_real_path.remove(real);
        }
        if self.predecessor_at.get(&t.path) == Some(&slot) {
            self.predecessor_at.remove(&t.path);
        }
        if t.queued {
            self.ready.retain(|&s| s != slot);
        }
        Some(t)
    }

    /// Its path names another file or nothing now: it gives up its path (and real
    /// path), becomes the predecessor of the next file there, and is queued to be read
    /// to its end. Returns whether it was attached until now.
    pub(super) fn detach(&mut self, slot: usize) -> bool {
        let Some(t) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        if t.state == State::Detached {
            return false;
        }
        t.state = State::Detached;
        self.detached += 1;
        if let Some(real) = t.real_path.take() {
            self.by_real_path.remove(&real);
        }
        let path = t.path.clone();
        if self.by_path.get(&path) == Some(&slot) {
            self.by_path.remove(&path);
        }
        self.predecessor_at.insert(path, slot);
        self.enqueue(slot);
        true
    }

    /// Queues a file for reading, unless it is queued already.
    pub(super) fn enqueue(&mut self, slot: usize) {
        if let Some(t) = self.slots.get_mut(slot).and_then(Option::as_mut)
            && !t.queued
        {
            t.queued = true;
            self.ready.push_back(slot);
        }
    }

    /// Empties the ready FIFO for one read round: its files, oldest first, no longer
    /// queued.
    pub(super) fn take_ready(&mut self) -> Vec<usize> {
        let slots: Vec<usize> = self.ready.drain(..).collect();
        for &slot in &slots {
            if let Some(t) = self.slots[slot].as_mut() {
                t.queued = false;
            }
        }
        slots
    }

    /// Panics, naming the invariant, when one of the invariants on [`FileTable`] does
    /// not hold. O(slots + index entries): run by the tests after every step of the
    /// tracker's loop, not in production.
    #[cfg(test)]
    pub(super) fn assert_consistent(&self) {
        use std::collections::HashSet;
        let live = |s: usize| self.get(s);
        // 1. free slots
        let free: HashSet<usize> = self.free.iter().copied().collect();
        assert_eq!(free.len(), self.free.len(), "1: a slot is free twice");
        for (i, slot) in self.slots.iter().enumerate() {
            assert_eq!(slot.is_none(), free.contains(&i), "1: slot {i} free list");
        }
        // 2. by_inode
        for (s, t) in self.iter() {
            assert_eq!(
                self.by_inode.get(&t.key()),
                Some(&s),
                "2: slot {s} by inode"
            );
        }
        assert_eq!(self.by_inode.len(), self.iter().count(), "2: stale inode");
        // 3. by_path
        for (p, &s) in &self.by_path {
            let t = live(s).unwrap_or_else(|| panic!("3: by_path {p:?} -> empty {s}"));
            assert!(
                t.state == State::Attached && &t.path == p,
                "3: by_path {p:?}"
            );
        }
        for (s, t) in self.iter() {
            if t.state == State::Attached {
                assert_eq!(
                    self.by_path.get(&t.path),
                    Some(&s),
                    "3: attached {s} by path"
                );
            }
        }
        // 4. by_real_path
        for (r, &s) in &self.by_real_path {
            let t = live(s).unwrap_or_else(|| panic!("4: by_real_path {r:?} -> empty {s}"));
            assert_eq!(t.state, State::Attached, "4: by_real_path {r:?} detached");
            assert_eq!(t.real_path.as_ref(), Some(r), "4: by_real_path {r:?}");
        }
        for (s, t) in self.iter() {
            if let Some(r) = &t.real_path {
                assert_eq!(t.state, State::Attached, "4: detached {s} has a real path");
                assert_eq!(self.by_real_path.get(r), Some(&s), "4: real path of {s}");
            }
        }
        // 5. predecessor_at
        for (p, &s) in &self.predecessor_at {
            let t = live(s).unwrap_or_else(|| panic!("5: predecessor_at {p:?} -> empty {s}"));
            assert!(
                t.state == State::Detached && &t.path == p,
                "5: predecessor_at {p:?}"
            );
        }
        // 6. ready
        let ready: HashSet<usize> = self.ready.iter().copied().collect();
        assert_eq!(ready.len(), self.ready.len(), "6: a slot is ready twice");
        for &s in &self.ready {
            assert!(live(s).is_some(), "6: empty slot {s} is ready");
        }
        for (s, t) in self.iter() {
            assert_eq!(t.queued, ready.contains(&s), "6: slot {s} queued flag");
        }
        // 7. detached count
        let detached = self
            .iter()
            .filter(|(_, t)| t.state == State::Detached)
            .count();
        assert_eq!(self.detached, detached, "7: detached count");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{SourceId, SourceKind};

    fn tracked(inode: u64, path: &str, real: Option<&str>) -> Tracked {
        let file = File::open("/dev/null").unwrap();
        Tracked {
            info: Arc::new(SourceInfo {
                id: SourceId(inode),
                kind: SourceKind::File,
                path: PathBuf::from(path),
                config_name: Arc::from("a"),
            }),
            path: PathBuf::from(path),
            configs: Arc::from([0usize]),
            file: Some(file),
            identity: FileIdentity {
                dev: 1,
                inode,
                fingerprint_len: 0,
                fingerprint: 0,
            },
            offset: 0,
            size: 0,
            state: State::Attached,
            last_growth: Instant::now(),
            queued: false,
            chunks_this_round: 0,
            real_path: real.map(PathBuf::from),
        }
    }

    #[test]
    fn insert_indexes_an_attached_file_and_remove_unindexes_it() {
        let mut table = FileTable::default();
        let s = table.insert(tracked(7, "/l/a.log", Some("/r/a.log")));
        table.enqueue(s);
        table.enqueue(s);
        table.assert_consistent();
        assert_eq!(table.at_path(Path::new("/l/a.log")), Some(s));
        assert_eq!(table.at_real_path(Path::new("/r/a.log")), Some(s));
        assert_eq!(table.of_inode((1, 7)), Some(s));
        assert_eq!(table.take_ready(), vec![s], "queued once");
        table.assert_consistent();
        assert!(table.remove(s).is_some());
        table.assert_consistent();
        assert_eq!(table.at_path(Path::new("/l/a.log")), None);
        assert_eq!(table.at_real_path(Path::new("/r/a.log")), None);
        assert_eq!(table.of_inode((1, 7)), None);
        assert!(table.remove(s).is_none(), "removed once");
        // The slot is reused.
        assert_eq!(table.insert(tracked(8, "/l/b.log", None)), s);
        table.assert_consistent();
    }

    #[test]
    fn detach_makes_a_predecessor_and_frees_the_path() {
        let mut table = FileTable::default();
        let old = table.insert(tracked(1, "/l/a.log", Some("/r/a.log")));
        assert!(table.detach(old));
        assert!(!table.detach(old), "detached once");
        table.assert_consistent();
        assert_eq!(table.detached_count(), 1);
        assert_eq!(table.at_path(Path::new("/l/a.log")), None);
        assert_eq!(table.at_real_path(Path::new("/r/a.log")), None);
        assert_eq!(table.predecessor_at(Path::new("/l/a.log")), Some(old));
        assert!(table.get(old).unwrap().queued, "queued to be drained");
        let new = table.insert(tracked(2, "/l/a.log", None));
        assert_eq!(table.take_predecessor(Path::new("/l/a.log")), Some(old));
        table.assert_consistent();
        assert_eq!(table.at_path(Path::new("/l/a.log")), Some(new));
        table.remove(old);
        table.assert_consistent();
        assert_eq!(table.detached_count(), 0);
        assert_eq!(table.take_ready(), Vec::<usize>::new());
    }

    #[test]
    fn removing_a_predecessor_clears_it_and_a_detached_insert_takes_no_path() {
        let mut table = FileTable::default();
        let old = table.insert(tracked(1, "/l/a.log", None));
        table.detach(old);
        let owner = table.insert(tracked(2, "/l/a.log", None));
        // The detached file is truncated: it restarts as a detached source that
        // leaves the path to its current owner.
        let mut restarted = table.remove(old).unwrap();
        assert_eq!(table.predecessor_at(Path::new("/l/a.log")), None);
        restarted.real_path = Some(PathBuf::from("/r/ignored"));
        let again = table.insert(restarted);
        table.assert_consistent();
        assert_eq!(table.at_path(Path::new("/l/a.log")), Some(owner));
        assert_eq!(table.get(again).unwrap().real_path, None);
        assert_eq!(table.detached_count(), 1);
    }

    #[test]
    #[should_panic(expected = "3: by_path")]
    fn a_broken_index_is_caught() {
        let mut table = FileTable::default();
        let s = table.insert(tracked(1, "/l/a.log", None));
        table.slots[s].as_mut().unwrap().state = State::Detached;
        table.detached += 1;
        table.assert_consistent();
    }
}

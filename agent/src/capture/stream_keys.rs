//! Which keys of the kernel's stream map belong to which cgroup, so that forgetting a
//! cgroup looks its own streams up instead of walking the whole map.
//!
//! Why: the map is keyed by pipe (inode and device), and a cgroup's streams were found
//! by walking all of it, two syscalls per entry. When 200 containers ended together
//! that was 200 walks of up to 400 entries: 160 000 syscalls, a third of the capture
//! thread's samples in a `perf` profile at 200 × 100 kB/s, 9% of its CPU at the median
//! without `perf` (`docs/benchmarks.md`, "The per-stream fixed cost"); it grows with
//! the square of the streams ending together.
//!
//! Where the keys come from: a walk of the map, the kernel's binding records (which
//! carry the key), and the streams userspace binds itself. A binding record the ring
//! had no room for is counted by the kernel (`lost_events`) before the cgroup's
//! removal record is written, so a count that moved since the last walk says the index
//! may miss a key: the next lookup walks again.

use std::collections::HashMap;

use logtap_ebpf_common::StreamKey;

/// The kernel's streams by cgroup, as far as known.
///
/// Invariants:
/// - while `complete_at` is `Some(n)`, every key the kernel's map held for a cgroup
///   when the kernel's count of lost lifecycle records was `n` is in `by_cgroup`
///   under that cgroup, except those removed through [`Self::remove`] (keys may be
///   listed that the map no longer holds, or under a cgroup that no longer owns
///   them: a lookup checks each against the map);
/// - `None` (the start) until the first walk: the
///   map may hold streams no record told of (an earlier agent's, bound before the
///   probes were read).
#[derive(Debug, Default)]
pub(crate) struct StreamKeys {
    by_cgroup: HashMap<u64, Vec<StreamKey>>,
    complete_at: Option<u64>,
}

impl StreamKeys {
    /// The kernel bound `key` to `cgroup_id` (its binding record), or userspace did.
    pub fn bound(&mut self, cgroup_id: u64, key: StreamKey) {
        let keys = self.by_cgroup.entry(cgroup_id).or_default();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }

    /// `cgroup_id`'s keys, or `None` when only a walk of the map can tell: never
    /// walked, or lifecycle records were lost since (`lost_events`, the kernel's
    /// count now).
    pub fn of(&self, cgroup_id: u64, lost_events: u64) -> Option<&[StreamKey]> {
        if self.complete_at != Some(lost_events) {
            return None;
        }
        Some(self.by_cgroup.get(&cgroup_id).map_or(&[], Vec::as_slice))
    }

    /// The map as a walk read it (key and cgroup of each entry), with the kernel's
    /// count of lost lifecycle records read before the walk.
    pub fn walked(
        &mut self,
        entries: impl IntoIterator<Item = (StreamKey, u64)>,
        lost_events: u64,
    ) {
        self.by_cgroup.clear();
        for (key, cgroup_id) in entries {
            self.bound(cgroup_id, key);
        }
        self.complete_at = Some(lost_events);
    }

    /// `key` left the map (or is not `cgroup_id`'s any more).
    pub fn remove(&mut self, cgroup_id: u64, key: &StreamKey) {
        if let Some(keys) = self.by_cgroup.get_mut(&cgroup_id) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_cgroup.remove(&cgroup_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64) -> StreamKey {
        StreamKey { ino, dev: 12 }
    }

    #[test]
    fn nothing_is_known_before_the_first_walk() {
        let mut keys = StreamKeys::default();
        keys.bound(1, key(10));
        // Streams bound before the probes were read (or by an earlier agent) may be
        // in the map with no record: only a walk tells.
        assert_eq!(keys.of(1, 0), None);
        keys.walked([(key(10), 1), (key(11), 1), (key(20), 2)], 0);
        assert_eq!(keys.of(1, 0), Some(&[key(10), key(11)][..]));
        assert_eq!(keys.of(3, 0), Some(&[][..]));
    }

    #[test]
    fn records_after_the_walk_add_keys_once() {
        let mut keys = StreamKeys::default();
        keys.walked([(key(10), 1)], 4);
        // A record read after the walk that found its key already.
        keys.bound(1, key(10));
        keys.bound(1, key(11));
        keys.bound(2, key(20));
        assert_eq!(keys.of(1, 4), Some(&[key(10), key(11)][..]));
        assert_eq!(keys.of(2, 4), Some(&[key(20)][..]));
    }

    #[test]
    fn a_lost_record_since_the_walk_asks_for_another() {
        let mut keys = StreamKeys::default();
        keys.walked([(key(10), 1)], 4);
        // The kernel counted a lost lifecycle record: it may have been a binding.
        assert_eq!(keys.of(1, 5), None);
        keys.walked([(key(10), 1), (key(11), 1)], 5);
        assert_eq!(keys.of(1, 5), Some(&[key(10), key(11)][..]));
    }

    #[test]
    fn removed_keys_are_gone_and_a_cgroup_without_keys_is_dropped() {
        let mut keys = StreamKeys::default();
        keys.walked([(key(10), 1), (key(11), 1)], 0);
        keys.remove(1, &key(10));
        assert_eq!(keys.of(1, 0), Some(&[key(11)][..]));
        keys.remove(1, &key(11));
        keys.remove(7, &key(11));
        assert!(keys.by_cgroup.is_empty());
    }
}

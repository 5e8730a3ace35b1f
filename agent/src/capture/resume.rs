//! A stage started on probes an earlier agent left pinned (see `pin`): the kernel's
//! streams taken over where that agent stopped.
//!
//! # Where each stream continues
//!
//! The pinned maps number each stream as before; the checkpoint of its source says
//! what the earlier agent made durable (C). The ring holds what that agent had not
//! read yet, from some offset R on, and the kernel's offset K is where the next write
//! will go. Bytes `[C, R)` were read from the ring by the earlier agent but not made
//! durable (it was killed, or stopped with them waiting behind a hole): the ring
//! no longer has them, so the stream follows its CRI log until `K` (what the ring
//! delivers trims what the log supplied, and the reverse). After a clean stop `C = R`:
//! nothing is read from the log. `[R, K)` arrives from the ring; bytes the ring had no
//! room for while no agent read it are a `ring_full` hole, repaired from the log.
//!
//! A stream bound while its container ran is numbered from that bind; the earlier
//! agent recorded where that is in the stream (its base, found at the seam, see
//! `seam`) in a pinned map, and the stream continues as above with that base. One
//! whose seam was not found before the earlier agent stopped continues on its CRI log
//! (`log_only`), as one with no exact seam does.

use std::collections::HashSet;

use super::*;
use crate::metrics::catalogue::CAPTURE_RESUMED_STREAMS_TOTAL;

/// What pinned probes hold (see [`EventFeed::pinned`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PinnedState {
    /// The watched cgroups.
    pub cgroups: Vec<u64>,
    pub streams: Vec<PinnedStream>,
}

/// A stream bound in pinned probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedStream {
    pub cgroup_id: u64,
    pub stream: Stream,
    /// The kernel's offset: where the stream's next write goes.
    pub offset: u64,
    /// The stream offset of the kernel's offset 0: 0 for a stream bound at its first
    /// exec, the seam's for one bound while it ran; `None`: not known (no seam yet).
    pub base: Option<u64>,
}

impl<F: EventFeed, R: ContainerResolver> CaptureStage<F, R> {
    /// Takes over the streams of pinned probes (see the module docs). Called after
    /// [`Self::new`] (the checkpointed streams are open) and before
    /// [`Self::bind_running`], which then leaves these containers alone.
    pub fn resume_pinned(&mut self) {
        let pinned = self.feed.pinned();
        if pinned.cgroups.is_empty() {
            return;
        }
        let ids: HashSet<u64> = pinned.cgroups.iter().copied().collect();
        let paths = match &self.cgroup_root {
            Some(root) => existing::cgroup_paths(root, &self.options.cgroup_prefix, &ids),
            None => Default::default(),
        };
        for cgroup_id in pinned.cgroups {
            match paths.get(&cgroup_id) {
                Some(path) => {
                    self.sighted.insert(cgroup_id, None);
                    self.cgroups.insert(cgroup_id, path.clone());
                }
                // Gone while no agent ran (or not to be found from here): its
                // checkpointed streams are read from their logs to their end, and
                // a removal record still in the ring finds nothing left to do.
                None => {
                    self.feed.forget(cgroup_id);
                }
            }
        }
        for stream in pinned.streams {
            if let Some(path) = self.cgroups.get(&stream.cgroup_id).cloned() {
                self.take_over(stream, &path);
            }
        }
    }

    fn take_over(&mut self, pinned: PinnedStream, cgroup_path: &[u8]) {
        let key = (pinned.cgroup_id, pinned.stream);
        if self.bound.contains_key(&key) || self.declined.contains(&key) {
            return;
        }
        let container = self.resolver.resolve(cgroup_path);
        if container.as_ref().is_some_and(|c| !c.selected) {
            metrics::counter!(CAPTURE_STREAMS_DECLINED_TOTAL).increment(1);
            self.declined.insert(key);
            return;
        }
        let log = container.as_ref().and_then(|c| c.log_path.clone());
        let resumed = log
            .as_deref()
            .and_then(|log| self.resumed_stream(log, pinned.stream));
        let id = resumed.unwrap_or_else(|| self.open_source(cgroup_path, container, pinned.stream));
        let options = &self.options;
        let entry = self
            .streams
            .entry(id)
            .or_insert_with(|| StreamEntry::new(pinned.stream, None, log.clone(), 0, options));
        entry.cgroup = Some(pinned.cgroup_id);
        let from = entry.assembler.next_offset();
        let to = match pinned.base {
            None => {
                entry.log_only = true;
                entry.follow_until = Some(u64::MAX);
                "log"
            }
            Some(base) => {
                entry.base = base;
                let kernel = pinned.offset + base;
                entry.follow_until = (kernel > from).then_some(kernel);
                "capture"
            }
        };
        self.bound.insert(key, id);
        metrics::counter!(CAPTURE_RESUMED_STREAMS_TOTAL, "to" => to).increment(1);
        tracing::info!(source = %id, from, kernel_offset = pinned.offset, to, "a stream of pinned probes taken over");
    }
}

//! How the stage shares its time between the ring and the CRI logs: a node-wide budget
//! of log reads per tick, given out in turns of one step, round-robin over the
//! streams that want one.
//!
//! Why: a poll reads at most [`POLL_BYTES`](super::probe::POLL_BYTES) of ring, and
//! between polls the stage runs its ticks. With a budget per stream only (8 MiB each),
//! 200 streams repairing at once could read 1.6 GB in one tick while the writers
//! overflowed the ring, which then needed more repairs (measured: `docs/benchmarks.md`,
//! "A cap on one poll's drain"). Now a tick reads at most [`TICK_REPAIR_BYTES`] for all
//! streams together, and the stage drains the ring between two steps whenever it holds
//! [`drain_between_bytes`] or more.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

/// Stream bytes all streams together read back from their CRI logs per tick (a tick
/// is 50 ms: up to 160 MB/s of repairs, more than the stage parses on one core).
pub(crate) const TICK_REPAIR_BYTES: u64 = 8 << 20;

/// Unread ring bytes at which the stage drains the ring between two repair steps: an
/// eighth of the ring, so the writers still have most of it, and the drains are not
/// so small that each stream's chunk is a line or two.
pub(crate) fn drain_between_bytes(ring_bytes: u32) -> usize {
    (ring_bytes as usize / 8).max(1)
}

/// The streams waiting for a turn at the tick's repair budget.
///
/// Invariants:
/// - a stream is in `queue` at most once, and `queued` holds exactly the ids in
///   `queue`;
/// - a turn takes the stream at the front; a stream that wants more after its turn
///   goes to the back ([`RepairTurns::want`]), so within a tick the streams are served
///   round-robin, one step each, before any is served twice;
/// - when the budget ends a tick, the streams that did not get their turn stay at the
///   front in their order: they go first next tick, before every stream served in
///   this one.
#[derive(Debug)]
pub(crate) struct RepairTurns<K> {
    queue: VecDeque<K>,
    queued: HashSet<K>,
}

impl<K> Default for RepairTurns<K> {
    fn default() -> Self {
        RepairTurns {
            queue: VecDeque::new(),
            queued: HashSet::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> RepairTurns<K> {
    /// `id` wants a turn: it joins at the back, unless it is already waiting (it then
    /// keeps its place).
    pub fn want(&mut self, id: K) {
        if self.queued.insert(id) {
            self.queue.push_back(id);
        }
    }

    /// The stream whose turn it is; it leaves the queue (it calls [`Self::want`]
    /// again if it wants another turn).
    pub fn next(&mut self) -> Option<K> {
        let id = self.queue.pop_front()?;
        self.queued.remove(&id);
        Some(id)
    }

    /// Whether `id` waits for a turn it has not had.
    pub fn waiting(&self, id: &K) -> bool {
        self.queued.contains(id)
    }

    /// `id` is gone (its stream ended).
    pub fn remove(&mut self, id: &K) {
        if self.queued.remove(id) {
            self.queue.retain(|k| k != id);
        }
    }

    #[cfg(test)]
    fn order(&self) -> Vec<K> {
        debug_assert_eq!(self.queue.len(), self.queued.len());
        self.queue.iter().copied().collect()
    }
}

/// A tick's repair budget: stream bytes the turns read back from the logs.
#[derive(Debug)]
pub(crate) struct TickBudget {
    left: u64,
}

impl TickBudget {
    pub fn new(bytes: u64) -> TickBudget {
        TickBudget { left: bytes }
    }

    /// Whether another turn may run.
    pub fn left(&self) -> bool {
        self.left > 0
    }

    /// A turn read the step `[from, to)` and moved its stream on by `moved`. Charged:
    /// the part of the step it moved through, not the bytes that waited behind the
    /// hole and were released with it (up to `max_pending`, 4 MiB: charged, they
    /// would use a tick's budget up on a couple of streams and leave the others'
    /// holes to age towards `repair_wait`); nothing for a step that moved nothing
    /// (the log has no more yet: the stream's turns end for this tick).
    pub fn spend(&mut self, from: u64, to: u64, moved: u64) {
        self.left = self.left.saturating_sub(moved.min(to.saturating_sub(from)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One tick: streams in `wants` ask for a turn (in that order), then turns run
    /// while the budget lasts; a turn moves its stream by `step` bytes until it has
    /// `need[id]` no more. Returns the streams served, in order.
    fn tick(
        turns: &mut RepairTurns<u32>,
        wants: &[u32],
        need: &mut [u64],
        step: u64,
        budget: u64,
    ) -> Vec<u32> {
        for &id in wants {
            turns.want(id);
        }
        let mut budget = TickBudget::new(budget);
        let mut served = Vec::new();
        while budget.left()
            && let Some(id) = turns.next()
        {
            let moved = step.min(need[id as usize]);
            need[id as usize] -= moved;
            budget.spend(0, step, moved);
            served.push(id);
            if need[id as usize] > 0 {
                turns.want(id);
            }
        }
        served
    }

    #[test]
    fn a_stream_is_queued_once_and_keeps_its_place() {
        let mut turns = RepairTurns::default();
        turns.want(1);
        turns.want(2);
        turns.want(1);
        assert_eq!(turns.order(), [1, 2]);
        assert!(turns.waiting(&1));
        assert_eq!(turns.next(), Some(1));
        assert!(!turns.waiting(&1));
        turns.want(1);
        assert_eq!(turns.order(), [2, 1]);
        turns.remove(&2);
        assert_eq!(turns.order(), [1]);
        turns.remove(&7);
        assert_eq!(turns.next(), Some(1));
        assert_eq!(turns.next(), None);
    }

    #[test]
    fn a_tick_reads_no_more_than_its_budget_for_all_streams_together() {
        let mut turns = RepairTurns::default();
        // 200 streams, each with 8 MiB to read back, in steps of 256 KiB.
        let mut need = vec![8u64 << 20; 200];
        let all: Vec<u32> = (0..200).collect();
        let before: u64 = need.iter().sum();
        let served = tick(&mut turns, &all, &mut need, 256 << 10, TICK_REPAIR_BYTES);
        let after: u64 = need.iter().sum();
        assert_eq!(before - after, TICK_REPAIR_BYTES);
        assert_eq!(served.len(), 32, "8 MiB in 256 KiB steps");
    }

    #[test]
    fn turns_go_round_robin_and_those_left_out_go_first_next_tick() {
        let mut turns = RepairTurns::default();
        let mut need = vec![100u64; 6];
        // Budget for four steps of 10: streams 0–3 are served, 4 and 5 are not.
        let first = tick(&mut turns, &[0, 1, 2, 3, 4, 5], &mut need, 10, 40);
        assert_eq!(first, [0, 1, 2, 3]);
        assert_eq!(turns.order(), [4, 5, 0, 1, 2, 3]);
        // Next tick every stream asks again: those left out keep the front.
        let second = tick(&mut turns, &[0, 1, 2, 3, 4, 5], &mut need, 10, 40);
        assert_eq!(second, [4, 5, 0, 1]);
        // Over many ticks each stream gets the same share, give or take a step.
        for _ in 0..5 {
            tick(&mut turns, &[0, 1, 2, 3, 4, 5], &mut need, 10, 40);
        }
        let done: Vec<u64> = need.iter().map(|n| 100 - n).collect();
        let (min, max) = (done.iter().min().unwrap(), done.iter().max().unwrap());
        assert!(max - min <= 10, "shares per stream: {done:?}");
    }

    #[test]
    fn a_step_is_charged_what_it_read_not_the_waiting_bytes_it_released() {
        let mut budget = TickBudget::new(1 << 20);
        // A 100-byte hole filled, 4 MiB that waited behind it handed on with it.
        budget.spend(1000, 1100, 100 + (4 << 20));
        assert!(budget.left());
        assert_eq!(budget.left, (1 << 20) - 100);
        // A step the log could not serve yet costs nothing.
        budget.spend(5000, 5000 + (256 << 10), 0);
        assert_eq!(budget.left, (1 << 20) - 100);
        budget.spend(0, 2 << 20, 2 << 20);
        assert!(!budget.left());
    }

    #[test]
    fn a_stream_served_within_a_tick_waits_for_every_other_before_its_next_step() {
        let mut turns = RepairTurns::default();
        let mut need = vec![30u64, 30, 10];
        let served = tick(&mut turns, &[0, 1, 2], &mut need, 10, u64::MAX);
        assert_eq!(served, [0, 1, 2, 0, 1, 0, 1]);
        assert_eq!(turns.order(), Vec::<u32>::new());
    }
}

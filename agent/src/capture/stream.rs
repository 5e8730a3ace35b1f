//! One container stream put back in offset order.
//!
//! The kernel numbers every captured byte with its offset in the container stream
//! (stdout or stderr, counted from the container's first write), so userspace can
//! tell reordering from loss: records of two threads writing the same stream may
//! leave the ring buffer out of order, while a record that never arrives (ring full,
//! a write larger than the per-syscall budget) leaves a hole that stays.
//!
//! [`StreamAssembler`] hands on bytes only contiguously, in offset order: what comes
//! past a hole waits (bounded by `max_pending`) until the hole is filled — by the late
//! record, or by the repair path reading the container's CRI log — or given up.
//! Overlapping and duplicate bytes (a repair racing a late record) are trimmed, so
//! every stream offset is handed on exactly once.
//!
//! It also keeps the last [`KEPT_BYTES`] bytes it handed on, for the repair path to
//! check that the log lines up with the stream just before a hole (see `stage`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// A run of stream bytes at `offset`, contiguous with the previous run handed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run {
    pub offset: u64,
    pub bytes: Bytes,
    /// When the bytes were written (ns since the Unix epoch), as far as known.
    pub time_ns: i64,
}

/// How many of the last bytes handed on a stream keeps (see [`StreamAssembler::kept`]):
/// enough to tell apart two log lines that differ only well before their end (padded
/// or suffixed lines, whose last 64 bytes are often the same).
pub(crate) const KEPT_BYTES: usize = 512;

#[derive(Debug)]
pub(crate) struct StreamAssembler {
    /// The next stream offset to hand on; everything before it was handed on or
    /// given up.
    next: u64,
    /// Bytes past a hole, keyed by offset, with their write time.
    pending: BTreeMap<u64, (Bytes, i64)>,
    pending_bytes: usize,
    max_pending: usize,
    /// Since when a hole at `next` has been waiting (its start may have moved since):
    /// set when bytes first wait past `next`, `None` whenever nothing waits.
    hole_since: Option<Instant>,
    /// When the hole's start last moved (or the hole opened): how long none of its
    /// bytes came. `Some` exactly when `hole_since` is.
    stalled_since: Option<Instant>,
    /// The highest stream offset known to exist (end of the furthest byte seen).
    frontier: u64,
    /// Invariant: the `kept_len` bytes of this ring that end just before `kept_end`
    /// (wrapping) are the stream bytes at `[next - kept_len, next)`, all handed on. A
    /// ring, so that a short run costs a copy of itself, not of the window. A copy,
    /// not a `Bytes`: handed-on bytes are slices of read blocks shared by many
    /// streams, which one kept slice per stream would keep alive. Emptied when a hole
    /// is given up (the bytes before `next` were never handed on).
    kept: [u8; KEPT_BYTES],
    /// Where the next kept byte goes, `< KEPT_BYTES`.
    kept_end: u16,
    kept_len: u16,
}

impl StreamAssembler {
    pub fn new(start: u64, max_pending: usize) -> StreamAssembler {
        StreamAssembler {
            next: start,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            max_pending,
            hole_since: None,
            stalled_since: None,
            frontier: start,
            kept: [0; KEPT_BYTES],
            kept_end: 0,
            kept_len: 0,
        }
    }

    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// End of the furthest byte seen so far (≥ `next_offset`).
    pub fn frontier(&self) -> u64 {
        self.frontier
    }

    /// The missing range before the first waiting bytes, if any: `[next, end)`.
    pub fn hole(&self) -> Option<(u64, u64)> {
        self.pending
            .keys()
            .next()
            .map(|&first| (self.next, first))
            .filter(|(start, end)| start < end)
    }

    /// Up to `max` of the bytes waiting at `offset` (the end of a hole), to check a
    /// repair against.
    pub fn waiting_at(&self, offset: u64, max: usize) -> Option<Bytes> {
        let (&first, (bytes, _)) = self.pending.first_key_value()?;
        (first == offset).then(|| bytes.slice(..bytes.len().min(max)))
    }

    /// The last bytes handed on (up to [`KEPT_BYTES`]), ending at `next_offset`.
    pub fn kept(&self) -> Vec<u8> {
        let (end, len) = (self.kept_end as usize, self.kept_len as usize);
        match end.checked_sub(len) {
            Some(start) => self.kept[start..end].to_vec(),
            None => [&self.kept[KEPT_BYTES - (len - end)..], &self.kept[..end]].concat(),
        }
    }

    /// How long the current hole has been waiting (since it opened, its start moved
    /// or not): what `reorder_grace` is measured against.
    pub fn hole_age(&self, now: Instant) -> Option<Duration> {
        self.hole_since.map(|t| now.saturating_duration_since(t))
    }

    /// How long none of the current hole's bytes came (since it opened or its start
    /// last moved): what `repair_wait` is measured against, so a hole read back in
    /// steps is not given up while each step moves it.
    pub fn hole_stalled(&self, now: Instant) -> Option<Duration> {
        self.stalled_since.map(|t| now.saturating_duration_since(t))
    }

    /// Whether more bytes wait behind the hole than the bound allows: the caller
    /// should repair now, or drop them with [`StreamAssembler::drop_pending`].
    pub fn over_budget(&self) -> bool {
        self.pending_bytes > self.max_pending
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// The caller handed on `bytes` at `next_offset` itself (the in-order fast
    /// path: nothing waits, so nothing can be released).
    pub fn advance_in_order(&mut self, bytes: &[u8]) {
        debug_assert!(self.pending.is_empty());
        (self.hole_since, self.stalled_since) = (None, None);
        // Saturating for the same reason as in `push`.
        self.next = self.next.saturating_add(bytes.len() as u64);
        self.frontier = self.frontier.max(self.next);
        self.keep(bytes);
    }

    /// Accepts the stream bytes at `offset..offset + bytes.len()`; appends to `out`
    /// every run that became contiguous.
    pub fn push(
        &mut self,
        offset: u64,
        bytes: Bytes,
        time_ns: i64,
        now: Instant,
        out: &mut Vec<Run>,
    ) {
        // The kernel numbers the bytes; any past u64::MAX (16 EiB into one stream, so
        // a garbled record) cannot be numbered and are cut off, which keeps every
        // `offset + len` below, and `next`, in range.
        let room = u64::MAX - offset;
        let bytes = match bytes.len() as u64 > room {
            true => bytes.slice(..room as usize),
            false => bytes,
        };
        let end = offset + bytes.len() as u64;
        if bytes.is_empty() || end <= self.next {
            return;
        }
        self.frontier = self.frontier.max(end);
        if offset > self.next {
            self.wait(offset, bytes, time_ns, now);
            return;
        }
        let bytes = bytes.slice((self.next - offset) as usize..);
        self.emit(bytes, time_ns, out);
        self.release(out);
        // `next` moved: a hole left is one that moved (or a new one).
        (self.hole_since, self.stalled_since) = match self.hole() {
            Some(_) => (self.hole_since.or(Some(now)), Some(now)),
            None => (None, None),
        };
    }

    /// Gives up the bytes before `offset` (a hole that cannot be repaired); returns
    /// how many stream bytes were skipped without ever being handed on.
    pub fn skip_to(&mut self, offset: u64, now: Instant, out: &mut Vec<Run>) -> u64 {
        if offset <= self.next {
            return 0;
        }
        let mut skipped = 0;
        // Waiting bytes inside the skipped range were seen: only the rest is lost.
        let mut seen = 0u64;
        for (&o, (b, _)) in self.pending.range(..offset) {
            let end = (o + b.len() as u64).min(offset);
            seen += end.saturating_sub(o.max(self.next));
        }
        skipped += (offset - self.next).saturating_sub(seen);
        // Keep the part of waiting bytes at or after `offset`, drop the rest.
        let before: Vec<u64> = self.pending.range(..offset).map(|(&o, _)| o).collect();
        for o in before {
            let (b, t) = self.pending.remove(&o).expect("key from range");
            self.pending_bytes -= b.len();
            let end = o + b.len() as u64;
            if end > offset {
                let tail = b.slice((offset - o) as usize..);
                self.pending_bytes += tail.len();
                self.pending.insert(offset, (tail, t));
            }
        }
        self.next = offset;
        self.kept_len = 0;
        self.kept_end = 0;
        self.frontier = self.frontier.max(offset);
        self.release(out);
        self.hole_since = self.hole().map(|_| now);
        self.stalled_since = self.hole_since;
        skipped
    }

    /// Drops every waiting byte (the repair path will read them again from the
    /// runtime's log); returns how many were dropped.
    pub fn drop_pending(&mut self) -> usize {
        let dropped = self.pending_bytes;
        self.pending.clear();
        self.pending_bytes = 0;
        // No hole is left: the next one (records arriving past `next` later) is aged
        // from its own start.
        (self.hole_since, self.stalled_since) = (None, None);
        dropped
    }

    fn wait(&mut self, offset: u64, bytes: Bytes, time_ns: i64, now: Instant) {
        if self.hole_since.is_none() {
            (self.hole_since, self.stalled_since) = (Some(now), Some(now));
        }
        match self.pending.get(&offset) {
            Some((existing, _)) if existing.len() >= bytes.len() => {}
            _ => {
                // Captured bytes are slices of blocks shared by many records (`runs`):
                // one waiting here would keep its whole block alive. Waiting bytes own
                // their memory, so `pending_bytes` is what they hold (holes are rare).
                let bytes = Bytes::copy_from_slice(&bytes);
                self.pending_bytes += bytes.len();
                if let Some((old, _)) = self.pending.insert(offset, (bytes, time_ns)) {
                    self.pending_bytes -= old.len();
                }
            }
        }
    }

    fn emit(&mut self, bytes: Bytes, time_ns: i64, out: &mut Vec<Run>) {
        if bytes.is_empty() {
            return;
        }
        let offset = self.next;
        self.next += bytes.len() as u64;
        self.keep(&bytes);
        out.push(Run {
            offset,
            bytes,
            time_ns,
        });
    }

    /// Appends `bytes` (just handed on) to `kept`: at most [`KEPT_BYTES`] copied per
    /// run, whatever its length.
    fn keep(&mut self, bytes: &[u8]) {
        let tail = &bytes[bytes.len() - bytes.len().min(KEPT_BYTES)..];
        let end = self.kept_end as usize;
        let first = tail.len().min(KEPT_BYTES - end);
        self.kept[end..end + first].copy_from_slice(&tail[..first]);
        self.kept[..tail.len() - first].copy_from_slice(&tail[first..]);
        self.kept_end = ((end + tail.len()) % KEPT_BYTES) as u16;
        self.kept_len = (self.kept_len as usize + tail.len()).min(KEPT_BYTES) as u16;
    }

    /// Hands on waiting bytes that became contiguous.
    fn release(&mut self, out: &mut Vec<Run>) {
        while let Some(entry) = self.pending.first_entry() {
            let offset = *entry.key();
            if offset > self.next {
                break;
            }
            let (bytes, time_ns) = entry.remove();
            self.pending_bytes -= bytes.len();
            let end = offset + bytes.len() as u64;
            if end > self.next {
                let tail = bytes.slice((self.next - offset) as usize..);
                self.emit(tail, time_ns, out);
            }
        }
    }
}

/// Pushes one stream's data `records` (offset, bytes) through a fresh assembler at
/// `start`, as the capture stage does, giving up the hole whenever more than
/// `max_pending` bytes wait behind it and, at the end, everything up to the frontier;
/// returns the runs handed on (offset, bytes). `pub` for the fuzz target
/// `fuzz/fuzz_targets/ring_record.rs` only.
#[doc(hidden)]
pub fn reassemble(
    start: u64,
    max_pending: usize,
    records: impl IntoIterator<Item = (u64, Bytes)>,
) -> Vec<(u64, Bytes)> {
    let now = Instant::now();
    let mut assembler = StreamAssembler::new(start, max_pending);
    let mut out = Vec::new();
    for (offset, bytes) in records {
        assembler.push(offset, bytes, 0, now, &mut out);
        if assembler.over_budget()
            && let Some((_, end)) = assembler.hole()
        {
            assembler.skip_to(end, now, &mut out);
        }
    }
    let frontier = assembler.frontier();
    assembler.skip_to(frontier, now, &mut out);
    out.into_iter().map(|r| (r.offset, r.bytes)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect(out: &[Run]) -> Vec<u8> {
        let mut v = Vec::new();
        let mut expect = None;
        for r in out {
            if let Some(e) = expect {
                assert_eq!(r.offset, e, "runs must be contiguous");
            }
            expect = Some(r.offset + r.bytes.len() as u64);
            v.extend_from_slice(&r.bytes);
        }
        v
    }

    #[test]
    fn in_order_bytes_pass_straight_through() {
        let mut a = StreamAssembler::new(0, 1 << 20);
        let mut out = Vec::new();
        let now = Instant::now();
        a.push(0, Bytes::from_static(b"ab"), 1, now, &mut out);
        a.push(2, Bytes::from_static(b"cd\n"), 2, now, &mut out);
        assert_eq!(collect(&out), b"abcd\n");
        assert_eq!(a.next_offset(), 5);
        assert!(a.hole().is_none());
    }

    #[test]
    fn reordered_records_wait_for_the_hole_then_flow() {
        let mut a = StreamAssembler::new(0, 1 << 20);
        let mut out = Vec::new();
        let now = Instant::now();
        a.push(3, Bytes::from_static(b"def"), 0, now, &mut out);
        assert!(out.is_empty());
        assert_eq!(a.hole(), Some((0, 3)));
        assert_eq!(a.hole_age(now), Some(Duration::ZERO));
        a.push(0, Bytes::from_static(b"abc"), 0, now, &mut out);
        assert_eq!(collect(&out), b"abcdef");
        assert!(a.hole().is_none());
        assert_eq!(a.hole_age(now), None);
    }

    #[test]
    fn duplicates_and_overlaps_are_handed_on_once() {
        let mut a = StreamAssembler::new(0, 1 << 20);
        let mut out = Vec::new();
        let now = Instant::now();
        a.push(0, Bytes::from_static(b"abcd"), 0, now, &mut out);
        a.push(2, Bytes::from_static(b"cdef"), 0, now, &mut out);
        a.push(0, Bytes::from_static(b"ab"), 0, now, &mut out);
        a.push(8, Bytes::from_static(b"ij"), 0, now, &mut out);
        a.push(6, Bytes::from_static(b"ghij"), 0, now, &mut out);
        assert_eq!(collect(&out), b"abcdefghij");
    }

    #[test]
    fn skipping_an_unrepairable_hole_counts_only_unseen_bytes() {
        let mut a = StreamAssembler::new(10, 1 << 20);
        let mut out = Vec::new();
        let now = Instant::now();
        a.push(15, Bytes::from_static(b"xyz"), 0, now, &mut out);
        a.push(25, Bytes::from_static(b"tail"), 0, now, &mut out);
        // Holes: [10,15) and [18,25). Skip to 20: lost 5 + 2 bytes, "xyz" was seen
        // but lies before the skip point, so it is dropped too.
        let skipped = a.skip_to(20, now, &mut out);
        assert_eq!(skipped, 7);
        assert!(out.is_empty());
        assert_eq!(a.hole(), Some((20, 25)));
        a.push(20, Bytes::from_static(b"12345"), 0, now, &mut out);
        assert_eq!(collect(&out), b"12345tail");
    }

    #[test]
    fn the_last_bytes_handed_on_are_kept_until_a_hole_is_given_up() {
        let mut a = StreamAssembler::new(0, 1 << 20);
        let mut out = Vec::new();
        let now = Instant::now();
        assert_eq!(a.kept(), b"");
        a.push(0, Bytes::from_static(b"abc"), 0, now, &mut out);
        a.advance_in_order(b"de");
        assert_eq!(a.kept(), b"abcde");
        let long: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        a.advance_in_order(&long);
        assert_eq!(a.kept(), &long[1000 - KEPT_BYTES..]);
        // Released waiting bytes are kept too, after what came before them.
        a.push(1008, Bytes::from_static(b"yz"), 0, now, &mut out);
        a.push(1005, Bytes::from_static(b"vwx"), 0, now, &mut out);
        assert_eq!(a.kept().len(), KEPT_BYTES);
        assert!(a.kept().ends_with(b"vwxyz"));
        assert_eq!(a.next_offset(), 1010);
        a.push(1020, Bytes::from_static(b"after"), 0, now, &mut out);
        a.skip_to(1020, now, &mut out);
        assert_eq!(
            a.kept(),
            b"after",
            "bytes before a given-up hole are not kept"
        );
    }

    /// The kept window is a ring: whatever the runs' lengths (shorter and longer than
    /// the window, wrapping its end), it holds the last bytes handed on, in order.
    #[test]
    fn the_kept_window_is_the_tail_of_everything_handed_on_across_wraps() {
        let mut a = StreamAssembler::new(0, 1 << 20);
        let mut all = Vec::new();
        let mut seed = 7u32;
        for round in 0..400u32 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let len = (seed >> 16) as usize % (KEPT_BYTES + 200) + 1;
            let run: Vec<u8> = (0..len).map(|i| (round as usize * 31 + i) as u8).collect();
            a.advance_in_order(&run);
            all.extend_from_slice(&run);
            let tail = &all[all.len() - all.len().min(KEPT_BYTES)..];
            assert_eq!(a.kept(), tail, "after run {round} of {len} bytes");
        }
    }

    #[test]
    fn pending_bytes_are_bounded_and_can_be_dropped() {
        let mut a = StreamAssembler::new(0, 4);
        let mut out = Vec::new();
        let now = Instant::now();
        a.push(10, Bytes::from_static(b"abc"), 0, now, &mut out);
        assert!(!a.over_budget());
        a.push(13, Bytes::from_static(b"de"), 0, now, &mut out);
        assert!(a.over_budget());
        assert_eq!(a.drop_pending(), 5);
        assert_eq!(a.pending_bytes(), 0);
        assert_eq!(a.frontier(), 15);
        assert!(a.hole().is_none());
    }

    /// Found at 200 writers × 500 kB/s with a smaller `max_buffered`: dropping the
    /// waiting bytes left the hole's start time behind, so the next hole of the
    /// stream (after it caught up, or its log followed for a while) was as old as
    /// the first one at once: past `repair_wait`, given up before its first repair.
    #[test]
    fn a_hole_after_the_waiting_bytes_were_dropped_is_aged_from_its_own_start() {
        let mut a = StreamAssembler::new(0, 1 << 20);
        let mut out = Vec::new();
        let t0 = Instant::now();
        a.push(10, Bytes::from_static(b"late"), 0, t0, &mut out);
        assert_eq!(a.drop_pending(), 4);
        assert_eq!(a.hole_age(t0 + Duration::from_secs(1)), None);
        assert_eq!(a.hole_stalled(t0 + Duration::from_secs(1)), None);
        // Caught up in order (the stage's fast path), then a new hole 20 s later.
        a.advance_in_order(&[b'x'; 14]);
        let t1 = t0 + Duration::from_secs(20);
        a.push(30, Bytes::from_static(b"next"), 0, t1, &mut out);
        assert_eq!(a.hole(), Some((14, 30)));
        assert_eq!(a.hole_age(t1), Some(Duration::ZERO));
        assert_eq!(a.hole_stalled(t1), Some(Duration::ZERO));
        // The same after a drop with no catching up in between: records that arrive
        // past the hole later start its clocks then.
        a.drop_pending();
        let t2 = t1 + Duration::from_secs(20);
        a.push(40, Bytes::from_static(b"more"), 0, t2, &mut out);
        assert_eq!(a.hole_age(t2), Some(Duration::ZERO));
    }

    /// A hole read back from the log in steps moves its start at every step: its
    /// age (for `reorder_grace`) counts from when it opened, but how long it has
    /// stalled (for `repair_wait`) from the last step that moved it.
    #[test]
    fn a_hole_that_moves_has_stalled_only_since_its_last_move() {
        let mut a = StreamAssembler::new(0, 1 << 20);
        let mut out = Vec::new();
        let t0 = Instant::now();
        a.push(100, Bytes::from_static(b"after"), 0, t0, &mut out);
        let t1 = t0 + Duration::from_secs(8);
        a.push(0, Bytes::from(vec![b'a'; 50]), 0, t1, &mut out);
        assert_eq!(a.hole(), Some((50, 100)));
        let t2 = t1 + Duration::from_secs(3);
        assert_eq!(a.hole_age(t2), Some(Duration::from_secs(11)));
        assert_eq!(a.hole_stalled(t2), Some(Duration::from_secs(3)));
        // Bytes past the hole's start move nothing.
        a.push(60, Bytes::from_static(b"mid"), 0, t2, &mut out);
        assert_eq!(
            a.hole_stalled(t2 + Duration::from_secs(1)),
            Some(Duration::from_secs(4))
        );
        // A hole given up and one left behind it: both clocks start again.
        a.skip_to(60, t2, &mut out);
        assert_eq!(a.hole(), Some((63, 100)));
        assert_eq!(a.hole_age(t2), Some(Duration::ZERO));
        assert_eq!(a.hole_stalled(t2), Some(Duration::ZERO));
        a.push(63, Bytes::from(vec![b'b'; 37]), 0, t2, &mut out);
        assert_eq!(a.hole(), None);
        assert_eq!((a.hole_age(t2), a.hole_stalled(t2)), (None, None));
    }

    proptest! {
        /// Any order, any overlap, any duplication of records: the output is the
        /// stream, each byte once, in order.
        #[test]
        fn any_arrival_order_reassembles_the_stream(
            stream in proptest::collection::vec(any::<u8>(), 1..400),
            cuts in proptest::collection::vec((0usize..400, 1usize..60), 1..60),
            seed in any::<u64>(),
        ) {
            let n = stream.len();
            let mut records: Vec<(u64, Bytes)> = cuts
                .iter()
                .map(|&(start, len)| {
                    let start = start % n;
                    let end = (start + len).min(n);
                    (start as u64, Bytes::copy_from_slice(&stream[start..end]))
                })
                .collect();
            // Make sure every byte is covered at least once.
            records.push((0, Bytes::copy_from_slice(&stream)));
            let mut state = seed | 1;
            for i in (1..records.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                records.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut a = StreamAssembler::new(0, usize::MAX);
            let mut out = Vec::new();
            let now = Instant::now();
            for (o, b) in records {
                a.push(o, b, 0, now, &mut out);
            }
            prop_assert_eq!(collect(&out), stream);
            prop_assert!(a.hole().is_none());
            prop_assert_eq!(a.pending_bytes(), 0);
        }
    }

    /// Found by the `ring_record` fuzz target: a record whose kernel-given offset ends
    /// past `u64::MAX` overflowed `offset + len` when it was released (a panic in
    /// debug builds, a wrapped end, so lost or repeated bytes, in release). Bytes that
    /// cannot be numbered are cut off; the rest flows.
    #[test]
    fn records_reaching_past_the_last_offset_are_cut_there() {
        let now = Instant::now();
        let mut a = StreamAssembler::new(u64::MAX - 4, 1024);
        let mut out = Vec::new();
        a.push(u64::MAX - 2, Bytes::from_static(b"cdefg"), 0, now, &mut out);
        a.push(u64::MAX - 4, Bytes::from_static(b"ab"), 0, now, &mut out);
        assert_eq!(collect(&out), b"abcd");
        assert_eq!(a.next_offset(), u64::MAX);
        assert_eq!(a.frontier(), u64::MAX);
        a.push(u64::MAX, Bytes::from_static(b"h"), 0, now, &mut out);
        assert_eq!(collect(&out), b"abcd");
    }
}

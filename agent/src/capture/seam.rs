//! The seam between a container's CRI log and its captured stream, for a container
//! that was running before the agent bound its pipes (see [`super::existing`]).
//!
//! The kernel numbers a stream bound at start-up from 0 at the bind; the CRI log
//! numbers it from the container's first byte. The base that maps one onto the other,
//! B₀, is every byte written before the bind, and nothing on the node counts it: the
//! pipe keeps no byte count, and bytes written before the bind may still sit in the
//! pipe, in the runtime's copy buffers or in its fifo when the bind happens. What is
//! known:
//!
//! - B₀ ≥ `lower`, the log's stream length read right before the bind (all of it was
//!   written before);
//! - B₀ ≤ `lower` + `window`, where `window` bounds what can be in flight between the
//!   writer and the log file at the bind (the pipe's capacity plus the runtime's
//!   buffers; see `existing::seam_window`);
//! - the log holds, at B₀, the first bytes the kernel captured.
//!
//! So once the log has been read to `lower + window + MATCH_BYTES`, every candidate
//! position of the first captured bytes in the window can be checked. Exactly one
//! match is the seam, exact: the bytes before it come from the log, the bytes from it
//! on from the kernel, each once. No match (the log does not hold what was captured:
//! output by syscalls the probes do not trace, or more in flight than the window
//! assumes) and several matches (output repeating itself within the window) leave the
//! stream on its log; both are counted.
//!
//! # Invariants
//!
//! `log` holds the log's stream bytes `[lower, lower + log.len())`, contiguous, and
//! never more than `window + MATCH_BYTES`. `first` holds captured bytes contiguous from
//! kernel offset `first.0`, at most `MATCH_BYTES`.

/// Captured bytes looked for in the log. Longer output repeats itself less often
/// within a window, so fewer seams are ambiguous; the log must be read this far past
/// the window.
pub(crate) const MATCH_BYTES: usize = 4096;

/// What the seam search found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Not yet: the log has not been read far enough, or more captured bytes may
    /// tell apart several candidates.
    Pending,
    /// Stream offset = kernel offset + `base`.
    Exact { base: u64 },
    /// The captured bytes are found at several places of the window.
    Ambiguous,
    /// The captured bytes are nowhere in the window.
    NoMatch,
}

impl Decision {
    /// The value of the `result` label of `logtap_capture_seams_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Decision::Pending => "pending",
            Decision::Exact { .. } => "exact",
            Decision::Ambiguous => "ambiguous",
            Decision::NoMatch => "no_match",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Seam {
    lower: u64,
    window: u64,
    log: Vec<u8>,
    first: Option<(u64, Vec<u8>)>,
}

impl Seam {
    /// `lower`: the log's stream length right before the bind; `window`: the most
    /// bytes that may have been written before the bind without being in the log yet.
    pub(crate) fn new(lower: u64, window: u64) -> Seam {
        Seam {
            lower,
            window,
            log: Vec::new(),
            first: None,
        }
    }

    /// Bytes it holds: the log's window read so far and the first captured bytes.
    pub(crate) fn held_bytes(&self) -> usize {
        self.log.capacity() + self.first.as_ref().map_or(0, |(_, b)| b.capacity())
    }

    /// The stream range of the log still to be read, `[from, to)`; empty when read.
    pub(crate) fn log_wanted(&self) -> (u64, u64) {
        let from = self.lower + self.log.len() as u64;
        (from, self.lower + self.window + MATCH_BYTES as u64)
    }

    /// Whether anything was captured yet: until then the log need not be read (the
    /// seam is after `lower` whenever it comes).
    pub(crate) fn has_captured(&self) -> bool {
        self.first.is_some()
    }

    /// Log bytes at stream offset `offset`; only the part that continues what the
    /// seam holds is kept (the caller reads the log in order).
    pub(crate) fn push_log(&mut self, offset: u64, bytes: &[u8]) {
        let (from, to) = self.log_wanted();
        let end = offset + bytes.len() as u64;
        if offset > from || end <= from {
            return;
        }
        let take = &bytes[(from - offset) as usize..];
        let room = to.saturating_sub(from) as usize;
        self.log.extend_from_slice(&take[..take.len().min(room)]);
    }

    /// Captured bytes at kernel offset `offset`.
    pub(crate) fn push_captured(&mut self, offset: u64, bytes: &[u8]) {
        match &mut self.first {
            None => {
                self.first = Some((offset, bytes[..bytes.len().min(MATCH_BYTES)].to_vec()));
            }
            Some((start, held)) => {
                let held_end = *start + held.len() as u64;
                if offset <= held_end && offset + bytes.len() as u64 > held_end {
                    // Continues the held bytes.
                    let skip = (held_end - offset) as usize;
                    let room = MATCH_BYTES - held.len();
                    held.extend_from_slice(&bytes[skip..(skip + room).min(bytes.len())]);
                } else if offset < *start {
                    // An earlier record, late from another CPU: it starts the run.
                    let end = offset + bytes.len() as u64;
                    let mut run = bytes.to_vec();
                    if end >= *start {
                        run.truncate((*start - offset) as usize);
                        run.extend_from_slice(held);
                    }
                    run.truncate(MATCH_BYTES);
                    *start = offset;
                    *held = run;
                }
            }
        }
    }

    /// Looks for the first captured bytes in the log's window (see the module docs).
    pub(crate) fn decide(&self) -> Decision {
        let Some((k0, first)) = &self.first else {
            return Decision::Pending;
        };
        if first.is_empty() || self.log_wanted().0 < self.log_wanted().1 {
            return Decision::Pending;
        }
        // Every candidate start p ≤ window is checked in full: the log reaches past
        // window + first.len().
        let searched = &self.log[..self.window as usize + first.len()];
        let mut found = memchr::memmem::find_iter(searched, first);
        match (found.next(), found.next()) {
            (None, _) => Decision::NoMatch,
            (Some(p), None) => match (self.lower + p as u64).checked_sub(*k0) {
                Some(base) => Decision::Exact { base },
                None => Decision::NoMatch,
            },
            // More captured bytes may single out one of them.
            (Some(_), Some(_)) if first.len() < MATCH_BYTES => Decision::Pending,
            (Some(_), Some(_)) => Decision::Ambiguous,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbered lines, as a writer that never repeats itself writes them.
    fn numbered(from: u32, to: u32) -> Vec<u8> {
        (from..to)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect()
    }

    /// The log `stream` read in chunks of `chunk` bytes from `lower`, as the stage does.
    fn feed_log(seam: &mut Seam, stream: &[u8], chunk: usize) {
        loop {
            let (from, to) = seam.log_wanted();
            if from >= to || from as usize >= stream.len() {
                return;
            }
            let end = (from as usize + chunk).min(stream.len());
            seam.push_log(from, &stream[from as usize..end]);
        }
    }

    #[test]
    fn the_seam_is_where_the_first_captured_bytes_are_in_the_log() {
        let stream = numbered(0, 60_000);
        let (lower, window) = (10_000u64, 64 * 1024u64);
        // 3000 bytes were in flight at the bind: the kernel's offset 0 is B₀ = 13000.
        let b0 = 13_000u64;
        let mut seam = Seam::new(lower, window);
        seam.push_captured(0, &stream[b0 as usize..b0 as usize + 700]);
        seam.push_captured(700, &stream[b0 as usize + 700..b0 as usize + 9000]);
        assert_eq!(seam.decide(), Decision::Pending, "the log is not read yet");
        feed_log(&mut seam, &stream[..lower as usize + 30_000], 4096);
        assert_eq!(seam.decide(), Decision::Pending, "half the window read");
        feed_log(&mut seam, &stream, 4096);
        assert_eq!(seam.log.len(), window as usize + MATCH_BYTES);
        assert_eq!(seam.decide(), Decision::Exact { base: b0 });
    }

    #[test]
    fn a_late_record_from_another_cpu_still_starts_the_captured_run() {
        let stream = numbered(0, 40_000);
        let b0 = 5_000usize;
        let mut seam = Seam::new(4_000, 32 * 1024);
        seam.push_captured(100, &stream[b0 + 100..b0 + 5000]);
        seam.push_captured(0, &stream[b0..b0 + 100]);
        feed_log(&mut seam, &stream, 1000);
        assert_eq!(seam.decide(), Decision::Exact { base: b0 as u64 });
        // Overlapping and repeated records change nothing.
        seam.push_captured(50, &stream[b0 + 50..b0 + 200]);
        assert_eq!(seam.decide(), Decision::Exact { base: b0 as u64 });
    }

    #[test]
    fn output_repeating_itself_within_the_window_is_ambiguous() {
        // "ok\n" forever: the first captured bytes fit anywhere.
        let stream = b"ok\n".repeat(50_000);
        let mut seam = Seam::new(3_000, 64 * 1024);
        seam.push_captured(0, &stream[3_300..3_300 + 100]);
        feed_log(&mut seam, &stream, 8192);
        assert_eq!(
            seam.decide(),
            Decision::Pending,
            "more captured bytes may still tell"
        );
        seam.push_captured(100, &stream[3_400..3_300 + MATCH_BYTES]);
        assert_eq!(seam.decide(), Decision::Ambiguous);
    }

    #[test]
    fn captured_bytes_the_log_does_not_hold_are_no_match() {
        let stream = numbered(0, 30_000);
        let mut seam = Seam::new(1_000, 16 * 1024);
        seam.push_captured(0, b"written through sendfile, never in the log\n");
        feed_log(&mut seam, &stream, 4096);
        assert_eq!(seam.decide(), Decision::NoMatch);
        // A seam before the kernel's own offset cannot be: bytes before the bind
        // would be missing.
        let mut seam = Seam::new(0, 16 * 1024);
        seam.push_captured(500, &stream[100..600]);
        feed_log(&mut seam, &stream, 4096);
        assert_eq!(seam.decide(), Decision::NoMatch);
    }

    #[test]
    fn a_short_log_stays_pending_and_log_bytes_out_of_order_are_ignored() {
        let stream = numbered(0, 1_000);
        let mut seam = Seam::new(0, 64 * 1024);
        seam.push_captured(0, &stream[10..20]);
        seam.push_log(100, &stream[100..200]);
        assert!(seam.log.is_empty(), "a chunk past what is held is not kept");
        feed_log(&mut seam, &stream, 4096);
        assert_eq!(seam.decide(), Decision::Pending);
    }
}

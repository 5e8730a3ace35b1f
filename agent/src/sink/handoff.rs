//! The in-memory hand-off between a network sink's writer and its forwarder.
//!
//! While the forwarder keeps up, a package goes from the sink worker straight to the
//! forwarder in memory and is never written to the spool: the spool's writes (mostly
//! the kernel allocating page-cache pages for its files) were a third of the Kafka
//! path's CPU. Only when the forwarder falls behind (the hand-off stays full for
//! [`SPILL_AFTER`]: an outage, a slow destination) or has a spool backlog to send do
//! packages go to the spool, as they always did before.
//!
//! # Acknowledgement
//!
//! A package handed over in memory is acknowledged to its source (its checkpoint may
//! advance) only when the destination acknowledged it or refused it for good
//! (counted): a kill -9 meanwhile re-reads it from the source. A spooled one is
//! acknowledged once durable in the spool, as before.
//!
//! # Spilling
//!
//! When the writer gives up waiting for room, or the forwarder's last attempt from
//! memory failed (`behind`), it *spills*: it takes every hand-off
//! package not yet acknowledged — the queued ones, and copies of those the forwarder
//! is sending (marked `spilled`) — and writes them to the spool, oldest first, before
//! the package that did not fit. The forwarder drops a window whose packages were
//! spilled as soon as one attempt fails (the spool has them); their spooled copies
//! are sent again, counted as replays (`logtap_forward_replayed_packages_total`: the
//! failed attempt may have delivered part of them, so duplicates are bounded by one
//! window). If the attempt under way succeeds after all (a slow destination, not a
//! failing one), their spooled copies are skipped (`delivered_spilled`): no duplicate.
//!
//! # Invariants (of [`Handoff`] with the spool's `State`, checked by `State::check`)
//!
//! 1. While the spool has a backlog (`pending` or `in_flight` blocks), `queued` is
//!    empty and every entry of `in_flight` is `spilled`: a package goes in memory only
//!    when the spool has nothing older to send, so the forwarder, which takes from the
//!    hand-off first, sends every source's packages in order.
//! 2. `queued` and `in_flight` hold strictly increasing `seq`s, those of `in_flight`
//!    below those of `queued` (the forwarder takes from the front).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::batch::Batch;
use crate::batch::codec::{Package, Record};
use crate::checkpoint::SharedRegistry;
use crate::sink::destination::SpooledPackage;
use crate::source::SourceId;

/// How long the writer waits for room in a full hand-off before it spills to the
/// spool. Longer than a window's send on a working destination (tens of
/// milliseconds; a second on a loaded node), so a destination that keeps up paces the
/// reading like a local sink does, without a detour through the disk. A failing
/// destination does not cost this wait: its first failure spills (`behind`).
pub const SPILL_AFTER: Duration = Duration::from_secs(2);

/// One package handed over in memory.
#[derive(Debug)]
pub struct Handed {
    /// Its place in the sink's sequence (shared with spooled blocks).
    pub seq: u64,
    pub batch: Arc<Batch>,
    /// The writer also wrote it to the spool (see the module docs).
    pub spilled: bool,
}

/// Packages in memory between the writer and the forwarder. See the module docs.
#[derive(Default)]
pub struct Handoff {
    /// Waiting for the forwarder, oldest first.
    pub queued: VecDeque<Handed>,
    /// Body bytes of `queued`.
    pub queued_bytes: u64,
    /// Taken by the forwarder, not yet acknowledged by the destination.
    pub in_flight: VecDeque<Handed>,
    /// Where the forwarder acknowledges the packages it delivered; set by the first
    /// package handed over.
    pub acks: Option<SharedRegistry>,
    /// The last attempt to send a window from memory failed (the destination is down
    /// or refusing): the writer spills at once instead of waiting for room, and also
    /// when no package comes ([`crate::sink::Sink::idle`]), so packages never wait in
    /// memory, unacknowledged, for the destination's return.
    pub behind: bool,
    /// Spilled packages (source, package id) the destination acknowledged from
    /// memory after all: the forwarder skips their spooled copies. At most a window.
    pub delivered_spilled: Vec<(SourceId, u64)>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seqs = |q: &VecDeque<Handed>| q.iter().map(|h| (h.seq, h.spilled)).collect::<Vec<_>>();
        f.debug_struct("Handoff")
            .field("queued", &seqs(&self.queued))
            .field("in_flight", &seqs(&self.in_flight))
            .finish_non_exhaustive()
    }
}

impl Handoff {
    /// Checks invariant 2 (invariant 1 needs the spool: `State::check`).
    pub fn check(&self) -> Result<(), String> {
        let seqs: Vec<u64> = self
            .in_flight
            .iter()
            .chain(&self.queued)
            .map(|h| h.seq)
            .collect();
        if seqs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("hand-off out of order: {seqs:?}"));
        }
        Ok(())
    }

    /// Whether a package of `bytes` fits: at most one window waits (`max_packages`,
    /// `max_bytes`), besides the one in flight; one package always fits an empty queue.
    pub fn has_room(&self, bytes: u64, max_packages: usize, max_bytes: u64) -> bool {
        self.queued.is_empty()
            || (self.queued.len() < max_packages && self.queued_bytes + bytes <= max_bytes)
    }

    pub fn push(&mut self, seq: u64, batch: Arc<Batch>) {
        self.queued_bytes += batch.body_bytes() as u64;
        self.queued.push_back(Handed {
            seq,
            batch,
            spilled: false,
        });
    }

    /// Moves the whole queue to `in_flight` and returns its packages: the forwarder's
    /// next window (the queue is bounded like a window).
    pub fn take(&mut self) -> Vec<(u64, Arc<Batch>)> {
        let taken: Vec<(u64, Arc<Batch>)> = self
            .queued
            .iter()
            .map(|h| (h.seq, h.batch.clone()))
            .collect();
        self.in_flight.extend(self.queued.drain(..));
        self.queued_bytes = 0;
        taken
    }

    /// The writer spills: every package not yet acknowledged, oldest first. The queued
    /// ones leave the hand-off; those in flight stay, marked `spilled`.
    pub fn spill(&mut self) -> Vec<Arc<Batch>> {
        let mut out = Vec::new();
        for h in self.in_flight.iter_mut().filter(|h| !h.spilled) {
            h.spilled = true;
            out.push(h.batch.clone());
        }
        out.extend(self.queued.drain(..).map(|h| h.batch));
        self.queued_bytes = 0;
        out
    }

    /// The forwarder is done with its window of `n` packages (delivered, given up at
    /// shutdown, or spilled): returns them.
    pub fn finish(&mut self, n: usize) -> Vec<Handed> {
        let n = n.min(self.in_flight.len());
        self.in_flight.drain(..n).collect()
    }
}

/// A handed-over package as the destination sees it: the same records and fields a
/// spooled package decodes to, sharing the batch's bytes (no copy of a body).
pub fn to_spooled(seq: u64, batch: &Batch) -> SpooledPackage {
    let mut fields = batch.fields.iter().peekable();
    let records = batch
        .lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let mut own = Vec::new();
            // Fields are grouped by line in line order (`Batch::fields`); one out of
            // order is skipped, as the spool's encoder does.
            while let Some(f) = fields.next_if(|f| f.line as usize <= i) {
                if f.line as usize == i {
                    own.push((f.key.clone(), batch.value_owned(f)));
                }
            }
            Record {
                offset: line.offset,
                timestamp_ns: line.timestamp_ns,
                stream: line.stream,
                flags: line.flags,
                body: batch.body_owned(line),
                fields: own,
            }
        })
        .collect();
    SpooledPackage {
        seq,
        source: batch.source.clone(),
        package_id: batch.package_id,
        package: Package {
            source_fields: batch.source_fields.as_ref().clone(),
            records,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Field;
    use crate::batch::codec;
    use crate::frame::{LineFlags, Record, Stream};
    use crate::source::{SourceId, SourceInfo, SourceKind};
    use bytes::Bytes;

    fn batch(package_id: u64) -> Batch {
        Batch {
            chunks: Vec::new(),
            source: Arc::new(SourceInfo {
                id: SourceId(5),
                kind: SourceKind::File,
                path: "/var/log/a.log".into(),
                config_name: Arc::from("c"),
            }),
            package_id,
            lines: Vec::new(),
            fields: vec![
                Field {
                    line: 1,
                    key: Bytes::from_static(b"level"),
                    value: Bytes::from_static(b"info").into(),
                },
                Field {
                    line: 1,
                    key: Bytes::from_static(b"msg"),
                    value: Bytes::from_static(b"x").into(),
                },
                Field {
                    line: 3,
                    key: Bytes::from_static(b"level"),
                    value: Bytes::from_static(b"warn").into(),
                },
            ],
            source_fields: Arc::new(vec![(
                Bytes::from_static(b"k8s.pod"),
                Bytes::from_static(b"web-0"),
            )]),
            end_offset: 100 * package_id + 4,
        }
        .with_lines(
            (0..4u64)
                .map(|i| Record {
                    offset: 100 * package_id + i,
                    timestamp_ns: 1_700_000_000_000_000_000 + i as i64,
                    stream: if i % 2 == 0 {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    },
                    flags: LineFlags::empty(),
                    body: Bytes::from(format!("line {i}")).into(),
                })
                .collect(),
        )
    }

    /// The destination must not be able to tell a handed-over package from a spooled
    /// one: both are what the spool's codec decodes.
    #[test]
    fn a_handed_package_is_what_the_spool_would_have_decoded() {
        let b = batch(3);
        let mut payload = Vec::new();
        codec::encode_payload(&b, &mut payload);
        let decoded = codec::decode_package(&Bytes::from(payload)).unwrap();
        let handed = to_spooled(9, &b);
        assert_eq!(handed.package, decoded);
        assert_eq!((handed.seq, handed.package_id), (9, 3));
    }

    #[test]
    fn spilling_takes_every_unacknowledged_package_oldest_first_once() {
        let mut h = Handoff::default();
        for seq in 1..=3 {
            h.push(seq, Arc::new(batch(seq)));
        }
        assert!(!h.has_room(1, 3, u64::MAX), "a window waits already");
        assert!(h.has_room(1, 4, u64::MAX));
        let taken = h.take();
        assert_eq!(taken.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 3]);
        h.push(4, Arc::new(batch(4)));
        h.check().unwrap();
        let spilled: Vec<u64> = h.spill().iter().map(|b| b.package_id).collect();
        assert_eq!(spilled, [1, 2, 3, 4]);
        assert!(h.queued.is_empty() && h.queued_bytes == 0);
        assert!(h.in_flight.iter().all(|e| e.spilled));
        assert!(h.spill().is_empty(), "a package is spilled once");
        let done: Vec<(u64, bool)> = h.finish(3).iter().map(|e| (e.seq, e.spilled)).collect();
        assert_eq!(done, [(1, true), (2, true), (3, true)]);
    }
}

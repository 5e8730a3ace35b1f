//! Ring records gathered into runs: the records of one drain of the ring buffer, each
//! stream's consecutive records (same stream, each starting where the last ended)
//! joined into one chunk.
//!
//! A 100-byte line is one ring record, so the stage behind this would otherwise pay a
//! lookup, an allocation and a message per line. Here a record costs a compare and a
//! copy out of the ring into a shared block; the stage then handles one run per burst
//! of a stream.
//!
//! # Memory
//!
//! Records are copied into blocks of [`BLOCK_BYTES`] (one allocation each), and every
//! run is a slice of its block: a block is freed when the last of its runs, and of the
//! lines framed from them, is dropped.

use bytes::{Bytes, BytesMut};

use crate::frame::Stream;

/// Bytes of one block. A record (at most 4 KiB) always fits in an empty block.
pub(crate) const BLOCK_BYTES: usize = 256 * 1024;

/// Consecutive records of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordRun {
    pub cgroup_id: u64,
    pub stream: Stream,
    /// The kernel's offset of the first byte.
    pub offset: u64,
    pub bytes: Bytes,
    /// Ring records joined into this run.
    pub records: u64,
    /// The kernel time of the first record.
    pub ktime_ns: u64,
}

/// A run whose bytes are at `start..start + len` of the block being filled.
#[derive(Debug)]
struct OpenRun {
    cgroup_id: u64,
    stream: Stream,
    offset: u64,
    start: usize,
    len: usize,
    records: u64,
    ktime_ns: u64,
}

/// Gathers records into runs.
///
/// Invariant: the open runs' ranges tile `block[..]` in order, so only the last one
/// can grow; `done` holds the runs of sealed blocks, in the order their first records
/// came.
#[derive(Debug, Default)]
pub(crate) struct RunGatherer {
    block: BytesMut,
    open: Vec<OpenRun>,
    done: Vec<RecordRun>,
}

impl RunGatherer {
    /// One record: the stream bytes at `offset..offset + bytes.len()`.
    pub fn record(
        &mut self,
        cgroup_id: u64,
        stream: Stream,
        offset: u64,
        bytes: &[u8],
        ktime_ns: u64,
    ) {
        if bytes.is_empty() {
            return;
        }
        if self.block.capacity() - self.block.len() < bytes.len() {
            self.seal();
            self.block.reserve(BLOCK_BYTES.max(bytes.len()));
        }
        let start = self.block.len();
        self.block.extend_from_slice(bytes);
        if let Some(last) = self.open.last_mut()
            && last.cgroup_id == cgroup_id
            && last.stream == stream
            && last.offset.checked_add(last.len as u64) == Some(offset)
        {
            last.len += bytes.len();
            last.records += 1;
            return;
        }
        self.open.push(OpenRun {
            cgroup_id,
            stream,
            offset,
            start,
            len: bytes.len(),
            records: 1,
            ktime_ns,
        });
    }

    /// Every run gathered so far, in the order their first records came; the
    /// gatherer is empty again (its last block's free room is kept for the next
    /// drain).
    pub fn take(&mut self, out: &mut Vec<RecordRun>) {
        self.seal();
        out.append(&mut self.done);
    }

    /// Freezes the filled part of the block and slices the open runs out of it.
    fn seal(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let block = self.block.split().freeze();
        self.done.extend(self.open.drain(..).map(|r| RecordRun {
            cgroup_id: r.cgroup_id,
            stream: r.stream,
            offset: r.offset,
            bytes: block.slice(r.start..r.start + r.len),
            records: r.records,
            ktime_ns: r.ktime_ns,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gather(records: &[(u64, Stream, u64, Vec<u8>)]) -> Vec<RecordRun> {
        let mut g = RunGatherer::default();
        for (i, (cgroup, stream, offset, bytes)) in records.iter().enumerate() {
            g.record(*cgroup, *stream, *offset, bytes, i as u64);
        }
        let mut out = Vec::new();
        g.take(&mut out);
        out
    }

    #[test]
    fn consecutive_records_of_a_stream_become_one_run() {
        let runs = gather(&[
            (1, Stream::Stdout, 0, b"ab\n".to_vec()),
            (1, Stream::Stdout, 3, b"cd\n".to_vec()),
            (1, Stream::Stderr, 0, b"e\n".to_vec()),
            (1, Stream::Stdout, 6, b"f\n".to_vec()),
            // Not where the last ended: a new run (a hole, or another CPU's record).
            (1, Stream::Stdout, 20, b"g\n".to_vec()),
            (2, Stream::Stdout, 22, b"h\n".to_vec()),
        ]);
        let summary: Vec<_> = runs
            .iter()
            .map(|r| {
                (
                    r.cgroup_id,
                    r.stream,
                    r.offset,
                    &r.bytes[..],
                    r.records,
                    r.ktime_ns,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (1, Stream::Stdout, 0, &b"ab\ncd\n"[..], 2, 0),
                (1, Stream::Stderr, 0, &b"e\n"[..], 1, 2),
                (1, Stream::Stdout, 6, &b"f\n"[..], 1, 3),
                (1, Stream::Stdout, 20, &b"g\n"[..], 1, 4),
                (2, Stream::Stdout, 22, &b"h\n"[..], 1, 5),
            ]
        );
    }

    #[test]
    fn a_run_crossing_a_block_boundary_continues_in_the_next_block() {
        let record = vec![b'x'; 4096];
        let n = BLOCK_BYTES / 4096 + 3;
        let records: Vec<_> = (0..n as u64)
            .map(|i| (1, Stream::Stdout, i * 4096, record.clone()))
            .collect();
        let runs = gather(&records);
        assert!(runs.len() >= 2, "one run per block");
        let mut next = 0;
        for run in &runs {
            assert_eq!(run.offset, next, "the runs continue each other");
            assert!(run.bytes.len() >= BLOCK_BYTES || run.offset > 0);
            next += run.bytes.len() as u64;
        }
        assert_eq!(next, n as u64 * 4096);
        assert_eq!(runs.iter().map(|r| r.records).sum::<u64>(), n as u64);
    }

    #[test]
    fn an_offset_at_the_end_of_the_numbering_starts_a_run_of_its_own() {
        let runs = gather(&[
            (1, Stream::Stdout, u64::MAX - 1, b"a".to_vec()),
            (1, Stream::Stdout, u64::MAX, b"b".to_vec()),
            (1, Stream::Stdout, 0, b"c".to_vec()),
        ]);
        assert_eq!(runs.len(), 2);
        assert_eq!(&runs[0].bytes[..], b"ab");
        assert_eq!(runs[1].offset, 0);
    }

    proptest! {
        /// Whatever the records, each run is its records' bytes in the order they
        /// came, joined only where each continues the last, and nothing is lost.
        #[test]
        fn runs_are_the_records_joined(
            records in proptest::collection::vec(
                (1u64..3, prop::bool::ANY, 0u64..64, proptest::collection::vec(any::<u8>(), 0..40)),
                0..60,
            )
        ) {
            let records: Vec<_> = records
                .into_iter()
                .map(|(c, err, o, b)| (c, if err { Stream::Stderr } else { Stream::Stdout }, o, b))
                .collect();
            let runs = gather(&records);
            let mut expected: Vec<(u64, Stream, u64, Vec<u8>)> = Vec::new();
            for (c, s, o, b) in records.iter().filter(|r| !r.3.is_empty()) {
                match expected.last_mut() {
                    Some(last) if last.0 == *c && last.1 == *s && last.2 + last.3.len() as u64 == *o => {
                        last.3.extend_from_slice(b);
                    }
                    _ => expected.push((*c, *s, *o, b.clone())),
                }
            }
            let got: Vec<_> = runs.iter().map(|r| (r.cgroup_id, r.stream, r.offset, r.bytes.to_vec())).collect();
            prop_assert_eq!(got, expected);
        }
    }
}

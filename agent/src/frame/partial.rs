//! Reassembly of messages the runtime split into several lines (CRI `P` records,
//! docker pieces without `\n`), independently per stream: stdout and stderr fragments
//! may interleave.
//!
//! A message in one fragment — nearly all of them — is passed through as the span it
//! already is. Only a multi-fragment message is copied, into a buffer bounded by
//! `max_line_bytes`; fragments past the bound are counted as consumed but dropped,
//! and the record is flagged [`LineFlags::TRUNCATED`].

use std::time::Instant;

use bytes::BytesMut;

use super::{Body, LineFlags, Record, Stream};

/// A message whose closing fragment has not been seen yet.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    /// Offset of the first fragment's line (rebased when carried to another source).
    pub offset: u64,
    pub timestamp_ns: i64,
    pub flags: LineFlags,
    pub body: BytesMut,
    pub fragments: u32,
    /// When its last fragment came (the framer's clock): what the partial timeout
    /// measures.
    pub last_at: Instant,
}

impl Pending {
    fn append(&mut self, fragment: &[u8], max: usize) {
        let room = max.saturating_sub(self.body.len());
        if fragment.len() > room {
            self.body.extend_from_slice(&fragment[..room]);
            self.flags.insert(LineFlags::TRUNCATED);
        } else {
            self.body.extend_from_slice(fragment);
        }
    }

    fn into_record(self, stream: Stream) -> Record {
        let mut flags = self.flags;
        if self.fragments > 1 {
            flags.insert(LineFlags::REASSEMBLED);
        }
        Record {
            offset: self.offset,
            timestamp_ns: self.timestamp_ns,
            stream,
            flags,
            body: Body::Owned(self.body.freeze()),
        }
    }
}

/// One slot per [`Stream`] value.
pub(crate) type Slots<T> = [Option<T>; 3];

pub(crate) struct Reassembler {
    max: usize,
    pending: Slots<Pending>,
    /// The time of the chunk being decoded (set by the framer before each chunk).
    now: Instant,
}

impl Reassembler {
    pub fn new(max_line_bytes: usize) -> Reassembler {
        Reassembler {
            max: max_line_bytes,
            pending: [None, None, None],
            now: Instant::now(),
        }
    }

    /// Dates the fragments of the chunk about to be decoded.
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// Emits, flagged UNTERMINATED, every incomplete message whose last fragment came
    /// at or before `cutoff`: its stream stopped mid-line (a container that exited
    /// after a last line without a newline), and no closing fragment is coming.
    pub fn flush_idle(&mut self, cutoff: Instant, mut emit: impl FnMut(Record)) {
        let mut idle: Vec<(Stream, Pending)> = Vec::new();
        for (i, slot) in self.pending.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|p| p.last_at <= cutoff) {
                let p = slot.take().expect("checked");
                idle.push((Stream::from_u8(i as u8), p));
            }
        }
        idle.sort_by_key(|(_, p)| p.offset);
        for (stream, mut p) in idle {
            p.flags.insert(LineFlags::UNTERMINATED);
            emit(p.into_record(stream));
        }
    }

    /// Feeds one fragment; returns the record it completes, if `last`.
    /// `flags` are those of the fragment's physical line (e.g. TRUNCATED); `bytes` are
    /// `message`'s bytes (a span resolved), what a multi-fragment message copies.
    ///
    /// The common case, a whole message with nothing pending on its stream, is
    /// decided here, inlined into the decoder: as one out-of-line call, `message`
    /// and the record went through memory twice per line (2% of CRI → null's CPU).
    #[expect(
        clippy::too_many_arguments,
        reason = "one fragment's fields, passed apart on the hot path rather than built into a struct per line"
    )]
    #[inline(always)]
    pub fn fragment(
        &mut self,
        stream: Stream,
        offset: u64,
        timestamp_ns: i64,
        flags: LineFlags,
        message: Body,
        bytes: &[u8],
        last: bool,
    ) -> Option<Record> {
        if last && self.pending[stream as usize].is_none() {
            let mut line = Record {
                offset,
                timestamp_ns,
                stream,
                flags,
                body: message,
            };
            if line.body.len() > self.max {
                line.body.truncate(self.max);
                line.flags.insert(LineFlags::TRUNCATED);
            }
            return Some(line);
        }
        self.fragment_of_many(stream, offset, timestamp_ns, flags, bytes, last)
    }

    /// [`fragment`](Self::fragment) for a message of several fragments: the first
    /// opens it, the others are copied onto it, the last completes it.
    #[inline(never)]
    fn fragment_of_many(
        &mut self,
        stream: Stream,
        offset: u64,
        timestamp_ns: i64,
        flags: LineFlags,
        bytes: &[u8],
        last: bool,
    ) -> Option<Record> {
        let slot = &mut self.pending[stream as usize];
        match slot {
            None => {
                debug_assert!(!last, "a whole message is `fragment`'s to return");
                let mut pending = Pending {
                    offset,
                    timestamp_ns,
                    flags,
                    body: BytesMut::with_capacity(bytes.len().min(self.max)),
                    fragments: 1,
                    last_at: self.now,
                };
                pending.append(bytes, self.max);
                *slot = Some(pending);
                None
            }
            Some(pending) => {
                pending.flags.insert(flags);
                pending.fragments += 1;
                pending.last_at = self.now;
                pending.append(bytes, self.max);
                if last {
                    slot.take().map(|p| p.into_record(stream))
                } else {
                    None
                }
            }
        }
    }

    /// Offset of the oldest incomplete message.
    pub fn oldest_offset(&self) -> Option<u64> {
        self.pending.iter().flatten().map(|p| p.offset).min()
    }

    /// Every incomplete message as a record (the source ended), oldest first,
    /// flagged UNTERMINATED: its closing fragment never came.
    pub fn drain(&mut self, mut emit: impl FnMut(Record)) {
        let mut taken: Vec<(Stream, Pending)> = Vec::new();
        for (i, slot) in self.pending.iter_mut().enumerate() {
            if let Some(p) = slot.take() {
                taken.push((Stream::from_u8(i as u8), p));
            }
        }
        taken.sort_by_key(|(_, p)| p.offset);
        for (stream, mut p) in taken {
            p.flags.insert(LineFlags::UNTERMINATED);
            emit(p.into_record(stream));
        }
    }

    pub fn take_all(&mut self) -> Slots<Pending> {
        std::mem::take(&mut self.pending)
    }

    /// Installs carried incomplete messages (from the previous file of the same log),
    /// rebased to `offset`. A carried message precedes whatever is already pending on
    /// its stream, so the two are joined in that order.
    pub fn accept(&mut self, carried: Slots<Pending>, offset: u64) {
        for (slot, carried) in self.pending.iter_mut().zip(carried) {
            let Some(mut carried) = carried else { continue };
            carried.offset = offset;
            if let Some(existing) = slot.take() {
                carried.flags.insert(existing.flags);
                carried.fragments += existing.fragments;
                carried.append(&existing.body, self.max);
            }
            *slot = Some(carried);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// One fragment of bytes of its own.
    fn frag(
        r: &mut Reassembler,
        stream: Stream,
        offset: u64,
        timestamp_ns: i64,
        flags: LineFlags,
        message: Bytes,
        last: bool,
    ) -> Option<Record> {
        let bytes = message.clone();
        r.fragment(
            stream,
            offset,
            timestamp_ns,
            flags,
            message.into(),
            &bytes,
            last,
        )
    }

    fn text(line: &Record) -> &[u8] {
        line.body.get(super::super::NO_CHUNKS)
    }

    #[test]
    fn single_fragment_is_passed_through_uncopied() {
        let mut r = Reassembler::new(64);
        let span = Body::Span {
            chunk: 0,
            start: 3,
            len: 5,
        };
        let line = r
            .fragment(
                Stream::Stdout,
                7,
                1,
                LineFlags::empty(),
                span.clone(),
                b"whole",
                true,
            )
            .unwrap();
        assert_eq!(line.body, span);
        assert_eq!(line.flags, LineFlags::empty());
        assert_eq!((line.offset, line.timestamp_ns), (7, 1));
    }

    #[test]
    fn streams_reassemble_independently() {
        let mut r = Reassembler::new(64);
        let f = LineFlags::empty();
        assert!(frag(&mut r, Stream::Stdout, 0, 10, f, b("out-a "), false).is_none());
        assert!(frag(&mut r, Stream::Stderr, 10, 20, f, b("err-a "), false).is_none());
        assert!(frag(&mut r, Stream::Stdout, 20, 30, f, b("out-b "), false).is_none());
        assert_eq!(r.oldest_offset(), Some(0));
        let err = frag(&mut r, Stream::Stderr, 30, 40, f, b("err-b"), true).unwrap();
        assert_eq!(text(&err), b"err-a err-b");
        assert_eq!(
            (err.offset, err.timestamp_ns, err.stream),
            (10, 20, Stream::Stderr)
        );
        assert_eq!(err.flags, LineFlags::REASSEMBLED);
        let out = frag(&mut r, Stream::Stdout, 40, 50, f, b("out-c"), true).unwrap();
        assert_eq!(text(&out), b"out-a out-b out-c");
        assert_eq!((out.offset, out.timestamp_ns), (0, 10));
        assert_eq!(r.oldest_offset(), None);
    }

    #[test]
    fn reassembled_message_is_bounded() {
        let mut r = Reassembler::new(8);
        let f = LineFlags::empty();
        frag(&mut r, Stream::Stdout, 0, 0, f, b("12345"), false);
        frag(&mut r, Stream::Stdout, 1, 0, f, b("67890"), false);
        frag(&mut r, Stream::Stdout, 2, 0, f, b("abcdefghijk"), false);
        let line = frag(&mut r, Stream::Stdout, 3, 0, f, b("end"), true).unwrap();
        assert_eq!(text(&line), b"12345678");
        assert_eq!(line.flags, LineFlags::TRUNCATED | LineFlags::REASSEMBLED);
        let long = frag(&mut r, Stream::Stdout, 4, 0, f, b("0123456789"), true).unwrap();
        assert_eq!(text(&long), b"01234567");
        assert_eq!(long.flags, LineFlags::TRUNCATED);
    }

    #[test]
    fn drain_flags_unterminated_oldest_first() {
        let mut r = Reassembler::new(64);
        let f = LineFlags::empty();
        frag(&mut r, Stream::Stderr, 5, 0, f, b("e"), false);
        frag(&mut r, Stream::Stdout, 9, 0, f, b("o1"), false);
        frag(&mut r, Stream::Stdout, 12, 0, f, b("o2"), false);
        let mut out = Vec::new();
        r.drain(|l| out.push(l));
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].offset, text(&out[0])), (5, &b"e"[..]));
        assert_eq!(out[0].flags, LineFlags::UNTERMINATED);
        assert_eq!((out[1].offset, text(&out[1])), (9, &b"o1o2"[..]));
        assert_eq!(
            out[1].flags,
            LineFlags::UNTERMINATED | LineFlags::REASSEMBLED
        );
        assert_eq!(r.oldest_offset(), None);
    }

    #[test]
    fn accepted_carry_precedes_existing_fragments() {
        let f = LineFlags::empty();
        let mut old = Reassembler::new(64);
        frag(&mut old, Stream::Stdout, 500, 1, f, b("carried "), false);
        let mut new = Reassembler::new(64);
        frag(&mut new, Stream::Stdout, 0, 2, f, b("early "), false);
        new.accept(old.take_all(), 0);
        assert_eq!(old.oldest_offset(), None);
        let line = frag(&mut new, Stream::Stdout, 10, 3, f, b("end"), true).unwrap();
        assert_eq!(text(&line), b"carried early end");
        assert_eq!((line.offset, line.timestamp_ns), (0, 1));
        assert!(line.flags.contains(LineFlags::REASSEMBLED));
    }
}

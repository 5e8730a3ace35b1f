//! Multiline grouping: a record starts at a line matching `start` and takes every
//! following non-matching line of the same stream (stack traces, pretty-printed
//! dumps). Runs after CRI/docker decoding, per stream.
//!
//! A record is emitted when the next start line of its stream arrives, when it reaches
//! `max_lines`, when its last line is older than `flush_timeout`
//! ([`Multiline::flush_expired`]) or when the source ends. A non-matching line with no open record
//! (before the first start line, or after a record was cut by `max_lines` or the
//! timeout) is a record of its own: the grouping depends only on the open record, so
//! re-reading from [`super::Framer::resume_offset`] groups lines exactly as before.
//!
//! # Memory and copies
//!
//! Lines reach grouping as the framer decoded them: spans of the chunk being pushed or
//! bodies of their own. While the push lasts, a record is the span of its first line,
//! and a following line that lies right behind it in the same chunk, one `\n` between
//! them (a raw file's stack trace), only lengthens that span: no copy, no reference
//! count, whatever the number of lines. A line that does not (a CRI envelope between
//! them, a `\r\n`, another chunk) is copied: the lines are joined (with `\n`) into a
//! buffer bounded by `max_line_bytes`; further lines still belong to the record but
//! their bytes are dropped and the record is flagged TRUNCATED. A span is the same
//! bytes as that joined buffer would be, so which form a record takes is invisible.
//!
//! Invariant: between pushes every open record's body is its own
//! ([`Multiline::detach`] at the end of each push): an open record outlives the chunk
//! pushed, and what reads it later (`flush_*`, `take_all`) has no chunks to resolve a
//! span in.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::partial::Slots;
use super::{Body, LineFlags, Record};
use crate::config::{MultilineConfig, StartPattern};

/// An open record.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    /// The first line. Its body is the record's while no line had to be copied (a
    /// span lengthened over the lines right behind it, see "Memory and copies"), then
    /// empty: `joined` is the record's body from there on.
    pub first: Record,
    /// The joined body, once a line could not lengthen the span.
    joined: Option<BytesMut>,
    lines: usize,
    /// When the last line was added (the `now` of the push that brought it).
    last_at: Instant,
}

impl Group {
    fn append(&mut self, line: &Record, chunks: &[Bytes], max: usize) {
        let first = &mut self.first;
        first.flags.insert(line.flags);
        self.lines += 1;
        if self.joined.is_none() && extend_in_chunk(&mut first.body, &line.body, chunks, max) {
            return;
        }
        let body = line.body.get(chunks);
        let joined = match &mut self.joined {
            Some(joined) => joined,
            None => {
                let mut buf = BytesMut::with_capacity((first.body.len() + 1 + body.len()).min(max));
                buf.extend_from_slice(first.body.get(chunks));
                // The joined buffer is the record's body from here on (`into_record`).
                first.body = Body::Owned(Bytes::new());
                self.joined.insert(buf)
            }
        };
        let room = max.saturating_sub(joined.len());
        if body.len() < room {
            joined.put_u8(b'\n');
            joined.extend_from_slice(body);
        } else {
            first.flags.insert(LineFlags::TRUNCATED);
            // No dangling separator when not one byte of the line fits.
            if room > 1 {
                joined.put_u8(b'\n');
                joined.extend_from_slice(&body[..room - 1]);
            }
        }
    }

    fn into_record(self) -> Record {
        let mut line = self.first;
        if let Some(joined) = self.joined {
            line.body = Body::Owned(joined.freeze());
        }
        if self.lines > 1 {
            line.flags.insert(LineFlags::MULTILINE);
        }
        line
    }
}

/// Lengthens the span `record` over `next` when `next` lies right behind it in the
/// same chunk with one `\n` between them, so that the span reads exactly as the two
/// joined by `\n`, and the result stays within `max`. Returns whether it did.
fn extend_in_chunk(record: &mut Body, next: &Body, chunks: &[Bytes], max: usize) -> bool {
    let (
        Body::Span { chunk, start, len },
        &Body::Span {
            chunk: next_chunk,
            start: next_start,
            len: next_len,
        },
    ) = (&mut *record, next)
    else {
        return false;
    };
    let gap = *start as usize + *len as usize;
    let end = next_start as usize + next_len as usize;
    let contiguous = *chunk == next_chunk
        && next_start as usize == gap + 1
        && chunks
            .get(*chunk as usize)
            .is_some_and(|c| end <= c.len() && c[gap] == b'\n');
    if !contiguous {
        return false;
    }
    // `next` lies behind the record, so its end is past the record's start.
    match u32::try_from(end - *start as usize) {
        Ok(joined_len) if joined_len as usize <= max => {
            *len = joined_len;
            true
        }
        _ => false,
    }
}

pub(crate) struct Multiline {
    config: MultilineConfig,
    max_bytes: usize,
    groups: Slots<Group>,
}

impl Multiline {
    pub fn new(config: MultilineConfig, max_line_bytes: usize) -> Multiline {
        Multiline {
            config,
            max_bytes: max_line_bytes,
            groups: [None, None, None],
        }
    }

    fn start(&self) -> &StartPattern {
        &self.config.start
    }

    /// Feeds one (decoded) line, a span of `chunks` or a body of its own; completed
    /// records go to `out`, spans of `chunks` or bodies of their own. Call
    /// [`detach`](Self::detach) before `chunks` go.
    pub fn push(&mut self, line: Record, chunks: &[Bytes], now: Instant, out: &mut Vec<Record>) {
        let starts = self.start().is_match(line.body.get(chunks));
        let max_lines = self.config.max_lines;
        let slot = &mut self.groups[line.stream as usize];
        if starts {
            if let Some(done) = slot.take() {
                out.push(done.into_record());
            }
            if max_lines <= 1 {
                out.push(line);
            } else {
                *slot = Some(Group {
                    first: line,
                    joined: None,
                    lines: 1,
                    last_at: now,
                });
            }
        } else if let Some(group) = slot {
            group.append(&line, chunks, self.max_bytes);
            group.last_at = now;
            if group.lines >= max_lines {
                out.push(slot.take().expect("just matched").into_record());
            }
        } else {
            out.push(line);
        }
    }

    /// Gives every open record a body of its own (at most one reference count each):
    /// the end of a push, before its `chunks` go (the module's invariant).
    pub fn detach(&mut self, chunks: &[Bytes]) {
        for group in self.groups.iter_mut().flatten() {
            group.first.body.make_owned(chunks);
        }
    }

    fn assert_detached(&self) {
        debug_assert!(
            self.groups
                .iter()
                .flatten()
                .all(|g| matches!(g.first.body, Body::Owned(_))),
            "an open record still a span between pushes"
        );
    }

    /// Emits every record whose last line is at least `flush_timeout` old.
    pub fn flush_expired(&mut self, now: Instant, out: &mut Vec<Record>) {
        let timeout = self.config.flush_timeout;
        self.flush_where(out, |g| now.saturating_duration_since(g.last_at) >= timeout);
    }

    /// Emits every open record (the source ended), oldest first.
    pub fn flush_all(&mut self, out: &mut Vec<Record>) {
        self.flush_where(out, |_| true);
    }

    fn flush_where(&mut self, out: &mut Vec<Record>, due: impl Fn(&Group) -> bool) {
        self.assert_detached();
        let mut ready: [Option<Group>; 3] = [None, None, None];
        for (slot, r) in self.groups.iter_mut().zip(&mut ready) {
            if slot.as_ref().is_some_and(&due) {
                *r = slot.take();
            }
        }
        let mut ready: Vec<Group> = ready.into_iter().flatten().collect();
        ready.sort_by_key(|g| g.first.offset);
        out.extend(ready.into_iter().map(Group::into_record));
    }

    pub fn oldest_offset(&self) -> Option<u64> {
        self.groups.iter().flatten().map(|g| g.first.offset).min()
    }

    pub fn take_all(&mut self) -> Slots<Group> {
        self.assert_detached();
        std::mem::take(&mut self.groups)
    }

    /// Installs carried open records, rebased to `offset`. A carried record whose
    /// stream already has an open record (which began with a start line) is complete:
    /// it is returned to be emitted as is.
    pub fn accept(&mut self, carried: Slots<Group>, offset: u64) -> Vec<Record> {
        let mut complete = Vec::new();
        for (slot, carried) in self.groups.iter_mut().zip(carried) {
            let Some(mut carried) = carried else { continue };
            carried.first.offset = offset;
            if slot.is_some() {
                complete.push(carried.into_record());
            } else {
                *slot = Some(carried);
            }
        }
        complete
    }
}

/// Turns carried groups into records for a framer without multiline grouping.
pub(crate) fn groups_into_lines(groups: Slots<Group>, offset: u64) -> Vec<Record> {
    groups
        .into_iter()
        .flatten()
        .map(|mut g| {
            g.first.offset = offset;
            g.into_record()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::frame::NO_CHUNKS;
    use crate::frame::Stream;

    fn config(start: &str, max_lines: usize) -> MultilineConfig {
        MultilineConfig {
            start: regex::bytes::Regex::new(start).unwrap().into(),
            flush_timeout: Duration::from_secs(1),
            max_lines,
        }
    }

    fn line(offset: u64, stream: Stream, body: &str) -> Record {
        Record {
            offset,
            timestamp_ns: offset as i64 * 10,
            stream,
            flags: LineFlags::empty(),
            body: Bytes::copy_from_slice(body.as_bytes()).into(),
        }
    }

    fn bodies(lines: &[Record]) -> Vec<&str> {
        lines
            .iter()
            .map(|l| std::str::from_utf8(l.body.get(NO_CHUNKS)).unwrap())
            .collect()
    }

    #[test]
    fn groups_until_next_start() {
        let mut m = Multiline::new(config(r"^\d", 100), 1024);
        let now = Instant::now();
        let mut out = Vec::new();
        for (i, text) in ["orphan", "1 start", "  cont", "  cont2", "2 next"]
            .into_iter()
            .enumerate()
        {
            m.push(line(i as u64, Stream::None, text), NO_CHUNKS, now, &mut out);
        }
        assert_eq!(bodies(&out), ["orphan", "1 start\n  cont\n  cont2"]);
        assert_eq!(out[0].flags, LineFlags::empty());
        assert_eq!(out[1].flags, LineFlags::MULTILINE);
        assert_eq!((out[1].offset, out[1].timestamp_ns), (1, 10));
        assert_eq!(m.oldest_offset(), Some(4));
        m.flush_all(&mut out);
        assert_eq!(bodies(&out[2..]), ["2 next"]);
        assert_eq!(out[2].flags, LineFlags::empty());
    }

    #[test]
    fn max_lines_cuts_and_later_lines_stand_alone() {
        let mut m = Multiline::new(config(r"^S", 3), 1024);
        let now = Instant::now();
        let mut out = Vec::new();
        for (i, text) in ["S", "a", "b", "c", "d", "S2"].into_iter().enumerate() {
            m.push(line(i as u64, Stream::None, text), NO_CHUNKS, now, &mut out);
        }
        assert_eq!(bodies(&out), ["S\na\nb", "c", "d"]);
        assert_eq!(m.oldest_offset(), Some(5));
    }

    #[test]
    fn max_lines_one_emits_every_line() {
        let mut m = Multiline::new(config(r"^S", 1), 1024);
        let mut out = Vec::new();
        for (i, text) in ["S", "a", "S"].into_iter().enumerate() {
            m.push(
                line(i as u64, Stream::None, text),
                NO_CHUNKS,
                Instant::now(),
                &mut out,
            );
        }
        assert_eq!(bodies(&out), ["S", "a", "S"]);
        assert_eq!(m.oldest_offset(), None);
    }

    #[test]
    fn streams_group_independently() {
        let mut m = Multiline::new(config(r"^S", 100), 1024);
        let now = Instant::now();
        let mut out = Vec::new();
        m.push(line(0, Stream::Stdout, "S out"), NO_CHUNKS, now, &mut out);
        m.push(line(1, Stream::Stderr, "S err"), NO_CHUNKS, now, &mut out);
        m.push(line(2, Stream::Stdout, " o1"), NO_CHUNKS, now, &mut out);
        m.push(line(3, Stream::Stderr, " e1"), NO_CHUNKS, now, &mut out);
        m.push(line(4, Stream::Stderr, "S err2"), NO_CHUNKS, now, &mut out);
        assert_eq!(bodies(&out), ["S err\n e1"]);
        assert_eq!(out[0].stream, Stream::Stderr);
        m.flush_all(&mut out);
        assert_eq!(bodies(&out[1..]), ["S out\n o1", "S err2"]);
    }

    #[test]
    fn flush_timeout_uses_the_last_line_time() {
        let mut m = Multiline::new(config(r"^S", 100), 1024);
        let t0 = Instant::now();
        let mut out = Vec::new();
        m.push(line(0, Stream::None, "S"), NO_CHUNKS, t0, &mut out);
        m.push(
            line(1, Stream::None, " a"),
            NO_CHUNKS,
            t0 + Duration::from_millis(900),
            &mut out,
        );
        m.flush_expired(t0 + Duration::from_millis(1500), &mut out);
        assert!(out.is_empty(), "last line is only 600ms old");
        m.flush_expired(t0 + Duration::from_millis(1900), &mut out);
        assert_eq!(bodies(&out), ["S\n a"]);
        // A continuation after the flush is a record of its own.
        m.push(
            line(2, Stream::None, " late"),
            NO_CHUNKS,
            t0 + Duration::from_secs(3),
            &mut out,
        );
        assert_eq!(bodies(&out), ["S\n a", " late"]);
    }

    #[test]
    fn joined_record_is_bounded() {
        let mut m = Multiline::new(config(r"^S", 100), 10);
        let now = Instant::now();
        let mut out = Vec::new();
        for (i, text) in ["S1234", "abc", "def", "ghi", "S"].into_iter().enumerate() {
            m.push(line(i as u64, Stream::None, text), NO_CHUNKS, now, &mut out);
        }
        assert_eq!(bodies(&out), ["S1234\nabc"]);
        assert_eq!(out[0].flags, LineFlags::MULTILINE | LineFlags::TRUNCATED);

        let mut m = Multiline::new(config(r"^S", 100), 10);
        for (i, text) in ["S12", "abcdefgh", "S"].into_iter().enumerate() {
            m.push(line(i as u64, Stream::None, text), NO_CHUNKS, now, &mut out);
        }
        assert_eq!(bodies(&out[1..]), ["S12\nabcdef"]);
        assert_eq!(out[1].body.len(), 10);
    }

    #[test]
    fn line_flags_are_merged() {
        let mut m = Multiline::new(config(r"^S", 100), 1024);
        let mut out = Vec::new();
        let mut cont = line(1, Stream::None, " x");
        cont.flags = LineFlags::REASSEMBLED;
        m.push(
            line(0, Stream::None, "S"),
            NO_CHUNKS,
            Instant::now(),
            &mut out,
        );
        m.push(cont, NO_CHUNKS, Instant::now(), &mut out);
        m.flush_all(&mut out);
        assert_eq!(out[0].flags, LineFlags::REASSEMBLED | LineFlags::MULTILINE);
    }

    /// The spans of a raw chunk's lines, as the framer hands them out (`\n` and a `\r`
    /// before it stripped).
    fn spans_of(chunk: &Bytes) -> Vec<Record> {
        let mut lines = Vec::new();
        let mut start = 0;
        for (i, _) in chunk.iter().enumerate().filter(|(_, b)| **b == b'\n') {
            let end = if i > start && chunk[i - 1] == b'\r' {
                i - 1
            } else {
                i
            };
            lines.push(Record {
                offset: start as u64,
                timestamp_ns: 0,
                stream: Stream::None,
                flags: LineFlags::empty(),
                body: Body::Span {
                    chunk: 0,
                    start: start as u32,
                    len: (end - start) as u32,
                },
            });
            start = i + 1;
        }
        lines
    }

    #[test]
    fn lines_right_behind_each_other_in_the_chunk_are_one_span_not_a_copy() {
        let chunk = Bytes::from_static(b"S1\n a\n b\nS2\n c\r\n d\nS3\n e\n");
        let chunks = std::slice::from_ref(&chunk);
        let mut m = Multiline::new(config(r"^S", 100), 1024);
        let now = Instant::now();
        let mut out = Vec::new();
        for line in spans_of(&chunk) {
            m.push(line, chunks, now, &mut out);
        }
        let texts: Vec<&[u8]> = out.iter().map(|l| l.body.get(chunks)).collect();
        assert_eq!(texts, [&b"S1\n a\n b"[..], b"S2\n c\n d"]);
        // Three lines, two `\n` between them in the chunk: one span.
        assert_eq!(
            out[0].body,
            Body::Span {
                chunk: 0,
                start: 0,
                len: 8
            }
        );
        // A `\r\n` in the chunk: the record is not the chunk's bytes, so it is joined.
        assert!(matches!(out[1].body, Body::Owned(_)));
        assert!(out.iter().all(|l| l.flags == LineFlags::MULTILINE));

        // The open record outlives the push: it takes a body of its own.
        m.detach(chunks);
        m.assert_detached();
        drop(out);
        let mut out = Vec::new();
        m.flush_all(&mut out);
        assert_eq!(bodies(&out), ["S3\n e"]);
    }

    #[test]
    fn a_span_stops_growing_at_the_bound_and_the_record_is_cut_as_when_copied() {
        let chunk = Bytes::from_static(b"S1234\nabc\ndef\nghi\nS\n");
        let chunks = std::slice::from_ref(&chunk);
        let now = Instant::now();
        let (mut spans, mut copies) = (Vec::new(), Vec::new());
        let mut m = Multiline::new(config(r"^S", 100), 12);
        for line in spans_of(&chunk) {
            m.push(line, chunks, now, &mut spans);
        }
        let mut m = Multiline::new(config(r"^S", 100), 12);
        for mut line in spans_of(&chunk) {
            line.body.make_owned(chunks);
            m.push(line, NO_CHUNKS, now, &mut copies);
        }
        let texts = |lines: &[Record]| -> Vec<(Vec<u8>, LineFlags)> {
            lines
                .iter()
                .map(|l| (l.body.get(chunks).to_vec(), l.flags))
                .collect()
        };
        assert_eq!(texts(&spans), texts(&copies));
        assert_eq!(spans[0].body.get(chunks), b"S1234\nabc\nde");
        assert_eq!(spans[0].flags, LineFlags::MULTILINE | LineFlags::TRUNCATED);
    }

    #[test]
    fn carried_groups() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut old = Multiline::new(config(r"^S", 100), 1024);
        old.push(line(700, Stream::Stdout, "S old"), NO_CHUNKS, now, &mut out);
        old.push(line(710, Stream::Stderr, "S err"), NO_CHUNKS, now, &mut out);
        let mut new = Multiline::new(config(r"^S", 100), 1024);
        new.push(
            line(2, Stream::Stderr, "S new err"),
            NO_CHUNKS,
            now,
            &mut out,
        );
        let complete = new.accept(old.take_all(), 0);
        assert_eq!(bodies(&complete), ["S err"]);
        assert_eq!(complete[0].offset, 0);
        new.push(line(5, Stream::Stdout, " cont"), NO_CHUNKS, now, &mut out);
        new.flush_all(&mut out);
        assert_eq!(bodies(&out), ["S old\n cont", "S new err"]);
        assert_eq!(out[0].offset, 0);

        let mut old = Multiline::new(config(r"^S", 100), 1024);
        old.push(line(700, Stream::Stdout, "S old"), NO_CHUNKS, now, &mut out);
        old.push(line(701, Stream::Stdout, " c"), NO_CHUNKS, now, &mut out);
        let lines = groups_into_lines(old.take_all(), 3);
        assert_eq!(bodies(&lines), ["S old\n c"]);
        assert_eq!(lines[0].offset, 3);
    }
}

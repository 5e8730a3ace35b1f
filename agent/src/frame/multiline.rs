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
//! # Memory
//!
//! Records reach grouping with bodies of their own (the framer makes a span owned
//! first: a group outlives the chunk that was pushed), so spans here never need their
//! chunk. A one-line record is held as the slice it is. Lines are joined (with `\n`) into a
//! buffer bounded by `max_line_bytes`; further lines still belong to the record but
//! their bytes are dropped and the record is flagged TRUNCATED.

use std::time::Instant;

use bytes::{BufMut, BytesMut};
use regex::bytes::Regex;

use super::partial::Slots;
use super::{Body, Line, LineFlags, NO_CHUNKS};
use crate::config::MultilineConfig;

/// An open record.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    /// The first line; its body is replaced by the joined body when emitted.
    pub first: Line,
    /// The joined body once a second line arrived.
    joined: Option<BytesMut>,
    lines: usize,
    /// When the last line was added (the `now` of the push that brought it).
    last_at: Instant,
}

impl Group {
    fn append(&mut self, line: &Line, max: usize) {
        let first = &mut self.first;
        let body = line.body.get(NO_CHUNKS);
        let joined = self.joined.get_or_insert_with(|| {
            let mut buf = BytesMut::with_capacity((first.body.len() + 1 + body.len()).min(max));
            buf.extend_from_slice(first.body.get(NO_CHUNKS));
            buf
        });
        first.flags.insert(line.flags);
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
        self.lines += 1;
    }

    fn into_line(self) -> Line {
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

    fn start(&self) -> &Regex {
        &self.config.start
    }

    /// Feeds one (decoded) line, its body owned; completed records go to `out`.
    pub fn push(&mut self, line: Line, now: Instant, out: &mut Vec<Line>) {
        debug_assert!(
            matches!(line.body, Body::Owned(_)),
            "a span reached grouping"
        );
        let starts = self.start().is_match(line.body.get(NO_CHUNKS));
        let max_lines = self.config.max_lines;
        let slot = &mut self.groups[line.stream as usize];
        if starts {
            if let Some(done) = slot.take() {
                out.push(done.into_line());
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
            group.append(&line, self.max_bytes);
            group.last_at = now;
            if group.lines >= max_lines {
                out.push(slot.take().expect("just matched").into_line());
            }
        } else {
            out.push(line);
        }
    }

    /// Emits every record whose last line is at least `flush_timeout` old.
    pub fn flush_expired(&mut self, now: Instant, out: &mut Vec<Line>) {
        let timeout = self.config.flush_timeout;
        self.flush_where(out, |g| now.saturating_duration_since(g.last_at) >= timeout);
    }

    /// Emits every open record (the source ended), oldest first.
    pub fn flush_all(&mut self, out: &mut Vec<Line>) {
        self.flush_where(out, |_| true);
    }

    fn flush_where(&mut self, out: &mut Vec<Line>, due: impl Fn(&Group) -> bool) {
        let mut ready: [Option<Group>; 3] = [None, None, None];
        for (slot, r) in self.groups.iter_mut().zip(&mut ready) {
            if slot.as_ref().is_some_and(&due) {
                *r = slot.take();
            }
        }
        let mut ready: Vec<Group> = ready.into_iter().flatten().collect();
        ready.sort_by_key(|g| g.first.offset);
        out.extend(ready.into_iter().map(Group::into_line));
    }

    pub fn oldest_offset(&self) -> Option<u64> {
        self.groups.iter().flatten().map(|g| g.first.offset).min()
    }

    pub fn take_all(&mut self) -> Slots<Group> {
        std::mem::take(&mut self.groups)
    }

    /// Installs carried open records, rebased to `offset`. A carried record whose
    /// stream already has an open record (which began with a start line) is complete:
    /// it is returned to be emitted as is.
    pub fn accept(&mut self, carried: Slots<Group>, offset: u64) -> Vec<Line> {
        let mut complete = Vec::new();
        for (slot, carried) in self.groups.iter_mut().zip(carried) {
            let Some(mut carried) = carried else { continue };
            carried.first.offset = offset;
            if slot.is_some() {
                complete.push(carried.into_line());
            } else {
                *slot = Some(carried);
            }
        }
        complete
    }
}

/// Turns carried groups into records for a framer without multiline grouping.
pub(crate) fn groups_into_lines(groups: Slots<Group>, offset: u64) -> Vec<Line> {
    groups
        .into_iter()
        .flatten()
        .map(|mut g| {
            g.first.offset = offset;
            g.into_line()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::frame::Stream;

    fn config(start: &str, max_lines: usize) -> MultilineConfig {
        MultilineConfig {
            start: Regex::new(start).unwrap(),
            flush_timeout: Duration::from_secs(1),
            max_lines,
        }
    }

    fn line(offset: u64, stream: Stream, body: &str) -> Line {
        Line {
            offset,
            timestamp_ns: offset as i64 * 10,
            stream,
            flags: LineFlags::empty(),
            body: Bytes::copy_from_slice(body.as_bytes()).into(),
        }
    }

    fn bodies(lines: &[Line]) -> Vec<&str> {
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
            m.push(line(i as u64, Stream::None, text), now, &mut out);
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
            m.push(line(i as u64, Stream::None, text), now, &mut out);
        }
        assert_eq!(bodies(&out), ["S\na\nb", "c", "d"]);
        assert_eq!(m.oldest_offset(), Some(5));
    }

    #[test]
    fn max_lines_one_emits_every_line() {
        let mut m = Multiline::new(config(r"^S", 1), 1024);
        let mut out = Vec::new();
        for (i, text) in ["S", "a", "S"].into_iter().enumerate() {
            m.push(line(i as u64, Stream::None, text), Instant::now(), &mut out);
        }
        assert_eq!(bodies(&out), ["S", "a", "S"]);
        assert_eq!(m.oldest_offset(), None);
    }

    #[test]
    fn streams_group_independently() {
        let mut m = Multiline::new(config(r"^S", 100), 1024);
        let now = Instant::now();
        let mut out = Vec::new();
        m.push(line(0, Stream::Stdout, "S out"), now, &mut out);
        m.push(line(1, Stream::Stderr, "S err"), now, &mut out);
        m.push(line(2, Stream::Stdout, " o1"), now, &mut out);
        m.push(line(3, Stream::Stderr, " e1"), now, &mut out);
        m.push(line(4, Stream::Stderr, "S err2"), now, &mut out);
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
        m.push(line(0, Stream::None, "S"), t0, &mut out);
        m.push(
            line(1, Stream::None, " a"),
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
            m.push(line(i as u64, Stream::None, text), now, &mut out);
        }
        assert_eq!(bodies(&out), ["S1234\nabc"]);
        assert_eq!(out[0].flags, LineFlags::MULTILINE | LineFlags::TRUNCATED);

        let mut m = Multiline::new(config(r"^S", 100), 10);
        for (i, text) in ["S12", "abcdefgh", "S"].into_iter().enumerate() {
            m.push(line(i as u64, Stream::None, text), now, &mut out);
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
        m.push(line(0, Stream::None, "S"), Instant::now(), &mut out);
        m.push(cont, Instant::now(), &mut out);
        m.flush_all(&mut out);
        assert_eq!(out[0].flags, LineFlags::REASSEMBLED | LineFlags::MULTILINE);
    }

    #[test]
    fn carried_groups() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut old = Multiline::new(config(r"^S", 100), 1024);
        old.push(line(700, Stream::Stdout, "S old"), now, &mut out);
        old.push(line(710, Stream::Stderr, "S err"), now, &mut out);
        let mut new = Multiline::new(config(r"^S", 100), 1024);
        new.push(line(2, Stream::Stderr, "S new err"), now, &mut out);
        let complete = new.accept(old.take_all(), 0);
        assert_eq!(bodies(&complete), ["S err"]);
        assert_eq!(complete[0].offset, 0);
        new.push(line(5, Stream::Stdout, " cont"), now, &mut out);
        new.flush_all(&mut out);
        assert_eq!(bodies(&out), ["S old\n cont", "S new err"]);
        assert_eq!(out[0].offset, 0);

        let mut old = Multiline::new(config(r"^S", 100), 1024);
        old.push(line(700, Stream::Stdout, "S old"), now, &mut out);
        old.push(line(701, Stream::Stdout, " c"), now, &mut out);
        let lines = groups_into_lines(old.take_all(), 3);
        assert_eq!(bodies(&lines), ["S old\n c"]);
        assert_eq!(lines[0].offset, 3);
    }
}

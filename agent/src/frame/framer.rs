//! The per-source framer: chunks in, records out, and the offset a restart resumes at.
//!
//! Stages, per physical line: split ([`LineSplitter`]) → decode CRI/docker and
//! reassemble split messages ([`Reassembler`], per stream) → group multiline records
//! ([`Multiline`], per stream) → `out`. A CRI/docker line that does not decode is
//! emitted as is, flagged MALFORMED, bypassing reassembly and grouping so it disturbs
//! neither.
//!
//! # Resume offset
//!
//! [`Framer::resume_offset`] is the start of the oldest record not emitted yet (an
//! unterminated line, an incomplete CRI/docker message, an open multiline record), or
//! the end of the data. Re-framing from there with a fresh framer yields the records
//! not emitted yet. Records are emitted when complete, so when streams interleave
//! (stdout partial open while stderr lines complete) records come out of offset order
//! and a restart may re-emit a record already emitted after the resume offset, or a
//! tail fragment of one (at-least-once: duplicates, never loss). Checkpoints must use
//! `resume_offset`, not the offset of the last record.
//!
//! # Performance
//!
//! The format and whether multiline is configured are dispatched once per chunk; the
//! per-line loop of each combination is monomorphized. No clock reads, no allocation
//! and no reference count per line: single-fragment records are spans of the chunk.
//!
//! # Spans
//!
//! Lines appended by [`Framer::push`] are spans of the chunk pushed (chunk index 0 of
//! the [`Out`]) or of bodies of their own (the chunks after it); every other call
//! appends only bodies of their own (what the framer keeps past a push — an
//! unterminated line, partials, multiline groups, the backlog — is owned). Within the
//! framer a record is a [`Record`], its body a [`Body`]; it becomes a 32-byte
//! [`Line`](super::Line) as it leaves ([`Out::emit`]).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::cri::{CRI_ENVELOPE_SLACK, parse_cri};
use super::docker::{DOCKER_ENVELOPE_SLACK, DOCKER_MIN_PHYSICAL_LINE, parse_docker};
use super::lines::{LineSplitter, PhysicalLine};
use super::multiline::{Group, Multiline, groups_into_lines};
use super::partial::{Pending, Reassembler, Slots};
use super::time::Rfc3339Cache;
use super::{Body, LineFlags, NO_CHUNKS, Out, Record, Stream};
use crate::config::{Format, MultilineConfig};

pub struct Framer {
    format: Format,
    max_line_bytes: usize,
    splitter: LineSplitter,
    reassembler: Reassembler,
    multiline: Option<Multiline>,
    timestamps: Rfc3339Cache,
    /// Records completed by `accept_carry` (which has no `out`), emitted by the next
    /// call that has one.
    backlog: Vec<Record>,
    /// Reused: records a call completed outside the direct path (multiline groups,
    /// partials flushed by time, the backlog), on their way to `out`.
    grouped: Vec<Record>,
    /// Of the latest push: used for what `finish` emits.
    last_read_time_ns: i64,
    last_now: Instant,
    /// See [`Framer::with_partial_timeout`]; `None`: a partial waits for its end.
    partial_timeout: Option<Duration>,
}

/// State handed from a rotated file's framer to its successor's, so a message split
/// across the rotation stays one record.
#[derive(Debug)]
pub struct Carry {
    partials: Slots<Pending>,
    groups: Slots<Group>,
    first_offset: u64,
}

impl Carry {
    /// Offset, in the predecessor source, of the oldest byte carried. The successor
    /// emits the carried record under its own coordinates (its offset is where the
    /// successor framer started), so until then these bytes are held only in memory.
    pub fn first_offset(&self) -> u64 {
        self.first_offset
    }
}

impl Framer {
    /// `start_offset`: source offset of the first byte that will be pushed.
    pub fn new(
        format: Format,
        max_line_bytes: usize,
        multiline: Option<MultilineConfig>,
        start_offset: u64,
    ) -> Framer {
        let max_line_bytes = max_line_bytes.max(1);
        let physical_cap = match format {
            Format::Raw | Format::Message => max_line_bytes,
            Format::Cri => max_line_bytes.saturating_add(CRI_ENVELOPE_SLACK),
            Format::Docker => max_line_bytes
                .max(DOCKER_MIN_PHYSICAL_LINE)
                .saturating_add(DOCKER_ENVELOPE_SLACK),
        };
        Framer {
            format,
            max_line_bytes,
            splitter: LineSplitter::new(physical_cap, start_offset),
            reassembler: Reassembler::new(max_line_bytes),
            multiline: multiline.map(|m| Multiline::new(m, max_line_bytes)),
            timestamps: Rfc3339Cache::default(),
            backlog: Vec::new(),
            grouped: Vec::new(),
            last_read_time_ns: 0,
            last_now: Instant::now(),
            partial_timeout: None,
        }
    }

    /// Ships an incomplete CRI/docker message, flagged UNTERMINATED, once no fragment
    /// of it came for `timeout` (see [`flush_expired`](Self::flush_expired)).
    pub fn with_partial_timeout(mut self, timeout: Duration) -> Framer {
        self.partial_timeout = Some(timeout);
        self
    }

    /// Feeds the next chunk (contiguous with the previous one). Complete records are
    /// appended to `out`, spans of `chunk` at index 0 (see the module's "Spans").
    /// `read_time_ns` (ns since the Unix epoch) is the timestamp of raw and malformed
    /// lines; `now` dates lines for the multiline timeout.
    pub fn push(&mut self, chunk: &Bytes, read_time_ns: i64, now: Instant, out: &mut Out) {
        out.begin(chunk);
        for record in self.backlog.drain(..) {
            out.emit(record);
        }
        self.last_read_time_ns = read_time_ns;
        self.last_now = now;
        self.reassembler.set_now(now);
        // A guess (lines of ~128 bytes) bounded so one huge chunk cannot reserve much.
        out.lines.reserve((chunk.len() / 128 + 1).min(8192));
        let Framer {
            format,
            max_line_bytes,
            splitter,
            reassembler,
            multiline,
            timestamps,
            grouped,
            ..
        } = self;
        let chunks = std::slice::from_ref(chunk);
        let mut decode = Decode {
            format: *format,
            max: *max_line_bytes,
            read_time_ns,
            timestamps,
            chunks,
        };
        match multiline {
            None => decode.chunk(splitter, reassembler, &mut Direct(out), chunk),
            Some(ml) => {
                let mut emit = Grouped {
                    ml,
                    now,
                    out: grouped,
                    chunks,
                };
                decode.chunk(splitter, reassembler, &mut emit, chunk);
                ml.detach(chunks);
                emit_all(grouped, out);
            }
        }
    }

    /// Emits multiline records whose last line is older than the flush timeout.
    /// Incomplete CRI/docker messages stay (see [`flush_idle`](Self::flush_idle)).
    pub fn flush_expired(&mut self, now: Instant, out: &mut Out) {
        out.begin(&Bytes::new());
        self.flush_expired_records(now);
        emit_all(&mut self.grouped, out);
    }

    /// [`flush_expired`](Self::flush_expired) into `self.grouped`.
    fn flush_expired_records(&mut self, now: Instant) {
        self.grouped.append(&mut self.backlog);
        if let Some(ml) = &mut self.multiline {
            ml.flush_expired(now, &mut self.grouped);
        }
    }

    /// What time alone completes, on the periodic tick: incomplete messages idle for
    /// the partial timeout (flagged UNTERMINATED), then
    /// [`flush_expired`](Self::flush_expired).
    pub fn flush_idle(&mut self, now: Instant, out: &mut Out) {
        out.begin(&Bytes::new());
        let grouped = &mut self.grouped;
        grouped.append(&mut self.backlog);
        if let Some(cutoff) = self.partial_timeout.and_then(|t| now.checked_sub(t)) {
            match &mut self.multiline {
                None => self.reassembler.flush_idle(cutoff, |l| grouped.push(l)),
                Some(ml) => {
                    let chunks = NO_CHUNKS;
                    let mut emit = Grouped {
                        ml,
                        now,
                        out: grouped,
                        chunks,
                    };
                    self.reassembler.flush_idle(cutoff, |l| emit.record(l));
                }
            }
        }
        self.flush_expired_records(now);
        emit_all(&mut self.grouped, out);
    }

    /// The source ended: emits every pending record. An unterminated last line and a
    /// message whose closing fragment never came are flagged UNTERMINATED.
    pub fn finish(&mut self, out: &mut Out) {
        out.begin(&Bytes::new());
        for record in self.backlog.drain(..) {
            out.emit(record);
        }
        let Framer {
            format,
            max_line_bytes,
            splitter,
            reassembler,
            multiline,
            last_read_time_ns,
            last_now,
            timestamps,
            grouped,
            ..
        } = self;
        // The unterminated line is owned: no chunk to resolve spans in.
        let chunks = NO_CHUNKS;
        let mut decode = Decode {
            format: *format,
            max: *max_line_bytes,
            read_time_ns: *last_read_time_ns,
            timestamps,
            chunks,
        };
        let tail = splitter.take_unterminated();
        match multiline {
            None => decode.finish(tail, reassembler, &mut Direct(out)),
            Some(ml) => {
                let now = *last_now;
                let mut emit = Grouped {
                    ml,
                    now,
                    out: grouped,
                    chunks,
                };
                decode.finish(tail, reassembler, &mut emit);
                ml.flush_all(grouped);
                emit_all(grouped, out);
            }
        }
    }

    /// Bytes held for an unterminated line (memory-bound tests).
    #[cfg(test)]
    pub(crate) fn buffered_line_bytes(&self) -> usize {
        self.splitter.buffered()
    }

    /// The offset a restart must re-read from: the first source byte not part of an
    /// emitted record (the start of the oldest pending record, or the end of the data).
    pub fn resume_offset(&self) -> u64 {
        let mut offset = self.splitter.pending_start();
        if let Some(o) = self.reassembler.oldest_offset() {
            offset = offset.min(o);
        }
        if let Some(o) = self.multiline.as_ref().and_then(Multiline::oldest_offset) {
            offset = offset.min(o);
        }
        if let Some(o) = self.backlog.iter().map(|l| l.offset).min() {
            offset = offset.min(o);
        }
        offset
    }

    /// For rotation: takes the incomplete CRI/docker messages and open multiline
    /// records out of this framer, for the successor file's framer to continue. Call
    /// after the last push of this file; a following [`finish`](Self::finish) still
    /// emits its unterminated last line, if any. The taken records no longer hold
    /// back [`resume_offset`](Self::resume_offset).
    pub fn take_carry(&mut self) -> Option<Carry> {
        let partials = self.reassembler.take_all();
        let groups = match &mut self.multiline {
            Some(ml) => ml.take_all(),
            None => Default::default(),
        };
        let first_offset = partials
            .iter()
            .flatten()
            .map(|p| p.offset)
            .chain(groups.iter().flatten().map(|g| g.first.offset))
            .min()?;
        Some(Carry {
            partials,
            groups,
            first_offset,
        })
    }

    /// Continues the predecessor's incomplete records; call before the first push.
    /// Carried records take this framer's current position as their offset: that is
    /// where their bytes in this source begin.
    pub fn accept_carry(&mut self, carry: Carry) {
        let at = self.splitter.pending_start();
        self.reassembler.accept(carry.partials, at);
        if matches!(self.format, Format::Raw | Format::Message) {
            // Nothing would ever complete them here.
            let backlog = &mut self.backlog;
            self.reassembler.drain(|line| backlog.push(line));
        }
        match &mut self.multiline {
            Some(ml) => self.backlog.extend(ml.accept(carry.groups, at)),
            None => self.backlog.extend(groups_into_lines(carry.groups, at)),
        }
    }
}

/// Where decoded records go: straight out, or through multiline grouping.
trait Emit {
    fn record(&mut self, line: Record);
    /// MALFORMED lines bypass grouping.
    fn malformed(&mut self, line: Record);
}

struct Direct<'a, 'b>(&'a mut Out<'b>);

impl Emit for Direct<'_, '_> {
    #[inline(always)]
    fn record(&mut self, line: Record) {
        self.0.emit(line);
    }
    #[inline]
    fn malformed(&mut self, line: Record) {
        self.0.emit(line);
    }
}

/// Emits (and empties) `records`.
fn emit_all(records: &mut Vec<Record>, out: &mut Out) {
    for record in records.drain(..) {
        out.emit(record);
    }
}

struct Grouped<'a> {
    ml: &'a mut Multiline,
    now: Instant,
    out: &'a mut Vec<Record>,
    /// What the records' spans index (grouping keeps records past the push).
    chunks: &'a [Bytes],
}

impl Emit for Grouped<'_> {
    #[inline]
    fn record(&mut self, line: Record) {
        self.ml.push(line, self.chunks, self.now, self.out);
    }
    #[inline]
    fn malformed(&mut self, line: Record) {
        self.out.push(line);
    }
}

struct Decode<'a> {
    format: Format,
    max: usize,
    read_time_ns: i64,
    timestamps: &'a mut Rfc3339Cache,
    /// What the physical lines' spans index: the chunk pushed, or none.
    chunks: &'a [Bytes],
}

impl Decode<'_> {
    #[inline]
    fn chunk<E: Emit>(
        &mut self,
        splitter: &mut LineSplitter,
        reasm: &mut Reassembler,
        emit: &mut E,
        chunk: &Bytes,
    ) {
        let none = LineFlags::empty();
        match self.format {
            Format::Raw => splitter.split(chunk, |pl| self.raw(pl, none, emit)),
            Format::Cri => splitter.split(chunk, |pl| self.cri(pl, none, reasm, emit)),
            Format::Docker => splitter.split(chunk, |pl| self.docker(pl, none, reasm, emit)),
            Format::Message => {
                let pl = splitter.whole(chunk);
                self.raw(pl, none, emit)
            }
        }
    }

    fn finish<E: Emit>(
        &mut self,
        tail: Option<PhysicalLine>,
        reasm: &mut Reassembler,
        emit: &mut E,
    ) {
        if let Some(pl) = tail {
            let unterminated = LineFlags::UNTERMINATED;
            match self.format {
                // A message is whole when pushed: never a tail.
                Format::Raw | Format::Message => self.raw(pl, unterminated, emit),
                Format::Cri => self.cri(pl, unterminated, reasm, emit),
                Format::Docker => self.docker(pl, unterminated, reasm, emit),
            }
        }
        reasm.drain(|line| emit.record(line));
    }

    #[inline(always)]
    fn raw<E: Emit>(&self, pl: PhysicalLine, extra: LineFlags, emit: &mut E) {
        emit.record(Record {
            offset: pl.offset,
            timestamp_ns: self.read_time_ns,
            stream: Stream::None,
            flags: physical_flags(&pl) | extra,
            body: pl.body,
        });
    }

    #[inline]
    fn cri<E: Emit>(
        &mut self,
        pl: PhysicalLine,
        extra: LineFlags,
        reasm: &mut Reassembler,
        emit: &mut E,
    ) {
        let bytes = pl.body.get(self.chunks);
        match parse_cri(bytes, self.timestamps) {
            Some(h) => {
                let flags = physical_flags(&pl) | extra;
                let text = &bytes[h.message_start.min(bytes.len())..];
                // A span's clone copies three numbers; only a line that straddled
                // chunks (owned) takes a reference count here.
                let mut message = pl.body.clone();
                message.advance(h.message_start);
                if let Some(line) = reasm.fragment(
                    h.stream,
                    pl.offset,
                    h.timestamp_ns,
                    flags,
                    message,
                    text,
                    !h.partial,
                ) {
                    emit.record(line);
                }
            }
            None => emit.malformed(self.malformed(pl, extra)),
        }
    }

    #[inline]
    fn docker<E: Emit>(
        &self,
        pl: PhysicalLine,
        extra: LineFlags,
        reasm: &mut Reassembler,
        emit: &mut E,
    ) {
        // Docker's JSON lines are decoded into bytes of their own (escapes), from a
        // `Bytes` of the line (one reference count per line: not a hot path).
        let line = pl.body.to_bytes(self.chunks);
        match parse_docker(&line) {
            Some(d) => {
                let flags = physical_flags(&pl) | extra;
                let text = d.message.clone();
                if let Some(line) = reasm.fragment(
                    d.stream,
                    pl.offset,
                    d.timestamp_ns,
                    flags,
                    Body::Owned(d.message),
                    &text,
                    !d.partial,
                ) {
                    emit.record(line);
                }
            }
            None => emit.malformed(self.malformed(pl, extra)),
        }
    }

    /// The whole physical line, kept raw (bounded by `max_line_bytes`).
    fn malformed(&self, mut pl: PhysicalLine, extra: LineFlags) -> Record {
        let mut flags = physical_flags(&pl) | extra | LineFlags::MALFORMED;
        if pl.body.len() > self.max {
            pl.body.truncate(self.max);
            flags.insert(LineFlags::TRUNCATED);
        }
        Record {
            offset: pl.offset,
            timestamp_ns: self.read_time_ns,
            stream: Stream::None,
            flags,
            body: pl.body,
        }
    }
}

#[inline(always)]
fn physical_flags(pl: &PhysicalLine) -> LineFlags {
    if pl.truncated {
        LineFlags::TRUNCATED
    } else {
        LineFlags::empty()
    }
}

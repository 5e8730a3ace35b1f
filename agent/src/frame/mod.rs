//! Framing: turning chunks of bytes into lines.
//!
//! Lines are spans ([`Span`]: offsets, no reference count) into the chunks the reader
//! produced: splitting never allocates and never touches a chunk's reference count per
//! line. A body that is not one slice of one chunk becomes a chunk of its own beside
//! them ([`Out`]), so a [`Line`] is always 32 bytes with nothing to drop. Stages here,
//! wired per source by [`Framer`]: line
//! splitting with `memchr` (`lines`), CRI and docker json-file decoding (`cri`,
//! `docker`, timestamps in `time`) with partial-line reassembly (`partial`), and
//! multiline grouping (`multiline`).

pub(crate) mod cri;
mod docker;
mod framer;
mod lines;
mod multiline;
mod partial;
pub(crate) mod time;

pub use framer::{Carry, Framer};
pub use time::parse_rfc3339_ns;

use bytes::{Buf, Bytes};

/// Which stream of a container a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Stream {
    /// Not a container stream (plain file).
    None = 0,
    Stdout = 1,
    Stderr = 2,
}

impl Stream {
    pub fn from_u8(v: u8) -> Stream {
        match v {
            1 => Stream::Stdout,
            2 => Stream::Stderr,
            _ => Stream::None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::None => "",
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Per-line flags. A `u16` bit set rather than bools: they are persisted as is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LineFlags(pub u16);

impl LineFlags {
    /// The line was longer than `max_line_bytes`; the body holds its first bytes.
    pub const TRUNCATED: LineFlags = LineFlags(1);
    /// The configured parser failed; the body is kept raw.
    pub const PARSE_FAILED: LineFlags = LineFlags(1 << 1);
    /// The line had no terminator when its source ended (closed, rotated, deleted).
    pub const UNTERMINATED: LineFlags = LineFlags(1 << 2);
    /// The body is not valid UTF-8; it is kept as bytes, never lossily replaced.
    pub const INVALID_UTF8: LineFlags = LineFlags(1 << 3);
    /// A CRI/docker line that did not decode; the body is the whole raw line.
    pub const MALFORMED: LineFlags = LineFlags(1 << 4);
    /// Several physical lines grouped into one record by the multiline stage.
    pub const MULTILINE: LineFlags = LineFlags(1 << 5);
    /// Reassembled from CRI `P` records or docker partial messages.
    pub const REASSEMBLED: LineFlags = LineFlags(1 << 6);

    pub const fn empty() -> Self {
        LineFlags(0)
    }
    pub const fn contains(self, other: LineFlags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn insert(&mut self, other: LineFlags) {
        self.0 |= other.0;
    }
    /// Names of the set flags, for output formats.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        const NAMES: [(LineFlags, &str); 7] = [
            (LineFlags::TRUNCATED, "truncated"),
            (LineFlags::PARSE_FAILED, "parse_failed"),
            (LineFlags::UNTERMINATED, "unterminated"),
            (LineFlags::INVALID_UTF8, "invalid_utf8"),
            (LineFlags::MALFORMED, "malformed"),
            (LineFlags::MULTILINE, "multiline"),
            (LineFlags::REASSEMBLED, "reassembled"),
        ];
        NAMES
            .into_iter()
            .filter(move |(f, _)| self.contains(*f))
            .map(|(_, n)| n)
    }
}

impl std::ops::BitOr for LineFlags {
    type Output = LineFlags;
    fn bitor(self, rhs: LineFlags) -> LineFlags {
        LineFlags(self.0 | rhs.0)
    }
}

/// The bytes of a record while it is framed ([`Record`]), and of a parsed field's
/// value: a span of a chunk, or bytes of its own.
///
/// A span names its chunk by index, so it holds no reference count: a package holds
/// each chunk its records use once ([`crate::batch::Batch::chunks`]), and a record
/// costs no atomic operation when it is framed, packaged or dropped (a quarter of the
/// CPU of plain lines → null when each record was a `Bytes`, see
/// `docs/benchmarks.md`). Which chunks the index counts in depends on where it is:
/// in the framer it is `0`, the chunk pushed; out of it, an index into the [`Out`]'s
/// chunks; in a package, into its `chunks`. Inside the framer, bodies that are not one
/// slice of one chunk are [`Body::Owned`]: straddling lines, reassembled partials,
/// multiline groups, docker messages, and records a framer keeps past the push that
/// read them; each becomes a chunk of its own when its record leaves ([`Out::emit`]).
///
/// A parsed field's value ([`crate::batch::Field`]) is a span of the chunk its line's
/// body is a span of, resolved in the same chunks, or bytes of its own (decoded text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// `len` bytes at `start` of chunk `chunk`. Invariant: `start + len` is within
    /// that chunk.
    Span {
        chunk: u32,
        start: u32,
        len: u32,
    },
    Owned(Bytes),
}

/// The chunks of bodies known to be [`Body::Owned`] (no span to resolve).
pub const NO_CHUNKS: &[Bytes] = &[];

impl Body {
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            Body::Span { len, .. } => *len as usize,
            Body::Owned(b) => b.len(),
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A span's chunk in `chunks` and its range there; `None` for a span outside
    /// them (which the invariants of `Framer::push` and `Batch` rule out).
    #[inline]
    pub(crate) fn span_in(
        chunks: &[Bytes],
        chunk: u32,
        start: u32,
        len: u32,
    ) -> Option<(&Bytes, std::ops::Range<usize>)> {
        let range = start as usize..start as usize + len as usize;
        let found = chunks.get(chunk as usize).filter(|c| range.end <= c.len());
        debug_assert!(found.is_some(), "span outside its chunk");
        found.map(|c| (c, range))
    }

    /// The bytes, a span resolved in `chunks`. A span outside them reads as empty.
    #[inline]
    pub fn get<'a>(&'a self, chunks: &'a [Bytes]) -> &'a [u8] {
        match *self {
            Body::Span { chunk, start, len } => Span { chunk, start, len }.get(chunks),
            Body::Owned(ref b) => b,
        }
    }

    /// The bytes as a `Bytes` of their own: a span is sliced out of its chunk (one
    /// reference count), for a destination that needs ownership.
    pub fn to_bytes(&self, chunks: &[Bytes]) -> Bytes {
        match *self {
            Body::Span { chunk, start, len } => Span { chunk, start, len }.to_bytes(chunks),
            Body::Owned(ref b) => b.clone(),
        }
    }

    /// Turns a span into bytes of its own (see [`to_bytes`](Self::to_bytes)) and
    /// returns them, for a stage that rewrites or keeps the body.
    pub fn make_owned(&mut self, chunks: &[Bytes]) -> &mut Bytes {
        if let Body::Span { .. } = self {
            *self = Body::Owned(self.to_bytes(chunks));
        }
        match self {
            Body::Owned(b) => b,
            Body::Span { .. } => unreachable!("made owned just above"),
        }
    }

    /// Keeps the first `n` bytes.
    #[inline]
    pub fn truncate(&mut self, n: usize) {
        match self {
            Body::Span { len, .. } => *len = (*len).min(n.min(u32::MAX as usize) as u32),
            Body::Owned(b) => b.truncate(n),
        }
    }

    /// Drops the first `n` bytes (at most all of them).
    #[inline]
    pub fn advance(&mut self, n: usize) {
        match self {
            Body::Span { start, len, .. } => {
                let n = n.min(*len as usize) as u32;
                *start += n;
                *len -= n;
            }
            Body::Owned(b) => b.advance(n.min(b.len())),
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body::Owned(b)
    }
}

/// A record while it is framed: its body a span of the chunk pushed or bytes of its own
/// (what the framer keeps past a push, reassembles or groups). What the framer emits
/// is a [`Line`], into an [`Out`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ns: i64,
    pub stream: Stream,
    pub flags: LineFlags,
    pub body: Body,
}

/// `len` bytes at `start` of chunk `chunk` of a list of chunks: a [`Line`]'s body.
/// An empty span names no chunk ([`Span::EMPTY`]). Which list depends on where the
/// line is: out of the framer, its [`Out::chunks`]; in a package, its
/// [`crate::batch::Batch::chunks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub chunk: u32,
    pub start: u32,
    pub len: u32,
}

impl Span {
    /// No bytes, in no chunk: an empty body needs no chunk to be held.
    pub const EMPTY: Span = Span {
        chunk: u32::MAX,
        start: 0,
        len: 0,
    };

    #[inline]
    pub fn len(self) -> usize {
        self.len as usize
    }

    #[inline]
    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// The bytes, resolved in `chunks`; a span outside them (which the invariants of
    /// [`Out`] and of a package rule out) reads as empty.
    #[inline]
    pub fn get(self, chunks: &[Bytes]) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        Body::span_in(chunks, self.chunk, self.start, self.len).map_or(&[][..], |(c, r)| &c[r])
    }

    /// The bytes as a `Bytes` of their own (a slice of their chunk: one reference
    /// count), for a destination that needs ownership.
    pub fn to_bytes(self, chunks: &[Bytes]) -> Bytes {
        if self.len == 0 {
            return Bytes::new();
        }
        Body::span_in(chunks, self.chunk, self.start, self.len)
            .map(|(c, range)| c.slice(range))
            .unwrap_or_default()
    }
}

/// One log record: a span of its source plus what framing learned about it.
///
/// 32 bytes and no destructor: the body is a [`Span`] of a list of chunks held beside
/// the lines (a package's thousands of lines are written once by the input's thread,
/// read once by a sink's, and dropping them visits none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line {
    /// Byte offset in the source of the first byte of this record (for CRI: of the
    /// first CRI line that contributed to it).
    pub offset: u64,
    /// Nanoseconds since the Unix epoch: the runtime's timestamp (CRI, docker) or,
    /// for plain files, the time the chunk was read.
    pub timestamp_ns: i64,
    /// The message, without terminator and without the CRI/docker envelope.
    pub body: Span,
    pub stream: Stream,
    pub flags: LineFlags,
}

const _: () = assert!(std::mem::size_of::<Line>() == 32);
const _: () = assert!(!std::mem::needs_drop::<Line>());

/// Where a [`Framer`] call puts the lines it completes: appended to `lines`, their
/// spans of `chunks`.
///
/// Each call begins `chunks` anew: index 0 is the chunk pushed (an empty one for calls
/// without a chunk), then each body of its own, one chunk each, in the order their
/// lines came. So the lines a call appended must be taken (with their chunks) before
/// the next call: [`crate::batch::BatchBuilder`] does, line by line or all at once.
pub struct Out<'a> {
    pub lines: &'a mut Vec<Line>,
    pub chunks: &'a mut Vec<Bytes>,
}

impl Out<'_> {
    /// Begins a framer call whose spans are of `chunk`.
    pub(crate) fn begin(&mut self, chunk: &Bytes) {
        self.chunks.clear();
        self.chunks.push(chunk.clone());
    }

    /// Appends `record` as a line: a span of the chunk pushed stays one, a body of its
    /// own becomes a chunk of its own.
    #[inline(always)]
    pub(crate) fn emit(&mut self, record: Record) {
        let Record {
            offset,
            timestamp_ns,
            stream,
            flags,
            body,
        } = record;
        let body = match body {
            Body::Span { chunk, start, len } => Span { chunk, start, len },
            Body::Owned(bytes) => self.own(bytes),
        };
        self.lines.push(Line {
            offset,
            timestamp_ns,
            body,
            stream,
            flags,
        });
    }

    /// `bytes` as a chunk of their own.
    #[inline(never)]
    pub(crate) fn own(&mut self, bytes: Bytes) -> Span {
        own(self.chunks, bytes)
    }
}

/// `bytes` as a chunk of their own, added to `chunks`: how a stage that rewrites a
/// line's body gives it its new one.
pub fn own(chunks: &mut Vec<Bytes>, bytes: Bytes) -> Span {
    if bytes.is_empty() {
        return Span::EMPTY;
    }
    let len = bytes.len().min(u32::MAX as usize) as u32;
    chunks.push(bytes);
    Span {
        chunk: (chunks.len() - 1) as u32,
        start: 0,
        len,
    }
}

/// Lines and the chunks their spans index, owned: what a [`Framer`] call gives, for
/// the stage that takes the lines one by one (parsing) and for tests.
#[derive(Debug, Default)]
pub struct Framed {
    pub lines: Vec<Line>,
    pub chunks: Vec<Bytes>,
}

impl Framed {
    pub fn out(&mut self) -> Out<'_> {
        Out {
            lines: &mut self.lines,
            chunks: &mut self.chunks,
        }
    }

    /// Drops the lines and the chunks.
    pub fn clear(&mut self) {
        self.lines.clear();
        self.chunks.clear();
    }
}

#[cfg(test)]
mod tests;

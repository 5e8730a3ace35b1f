//! Framing: turning chunks of bytes into lines.
//!
//! Lines are spans ([`Body::Span`]: offsets, no reference count) into the chunks the
//! reader produced: splitting never allocates and never touches a chunk's reference
//! count per line. Stages here, wired per source by [`Framer`]: line
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

/// The bytes of a record: a span of a read chunk, or bytes of its own.
///
/// A span names its chunk by index, so it holds no reference count: a package holds
/// each chunk its records use once ([`crate::batch::Batch::chunks`]), and a record
/// costs no atomic operation when it is framed, packaged or dropped (a quarter of the
/// CPU of plain lines → null when each record was a `Bytes`, see
/// `docs/benchmarks.md`). Which chunks the index counts in depends on where the record
/// is: out of [`Framer::push`] it is `0`, the chunk pushed; in a package, an index into
/// its `chunks`. Bodies that are not one slice of one chunk are [`Body::Owned`]:
/// straddling lines, reassembled partials, multiline groups, docker messages,
/// processors' rewrites, and records a framer keeps past the push that read them.
///
/// A parsed field's value is a `Body` too ([`crate::batch::Field`]): a span of the
/// chunk its record's body was a span of, resolved in the same chunks.
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
            Body::Span { chunk, start, len } => {
                Body::span_in(chunks, chunk, start, len).map_or(&[][..], |(c, range)| &c[range])
            }
            Body::Owned(ref b) => b,
        }
    }

    /// The bytes as a `Bytes` of their own: a span is sliced out of its chunk (one
    /// reference count), for a destination that needs ownership.
    pub fn to_bytes(&self, chunks: &[Bytes]) -> Bytes {
        match *self {
            Body::Span { chunk, start, len } => Body::span_in(chunks, chunk, start, len)
                .map(|(c, range)| c.slice(range))
                .unwrap_or_default(),
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

/// One log record: a span of its source plus what framing learned about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Byte offset in the source of the first byte of this record (for CRI: of the
    /// first CRI line that contributed to it).
    pub offset: u64,
    /// Nanoseconds since the Unix epoch: the runtime's timestamp (CRI, docker) or,
    /// for plain files, the time the chunk was read.
    pub timestamp_ns: i64,
    pub stream: Stream,
    pub flags: LineFlags,
    /// The message, without terminator and without the CRI/docker envelope.
    pub body: Body,
}

#[cfg(test)]
mod tests;

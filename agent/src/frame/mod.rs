//! Framing: turning chunks of bytes into lines.
//!
//! Lines are spans (`bytes::Bytes`) into the chunks the reader produced: splitting
//! never allocates per line. Stages here, wired per source by [`Framer`]: line
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

use bytes::Bytes;

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
    pub body: Bytes,
}

#[cfg(test)]
mod tests;

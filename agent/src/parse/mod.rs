//! Parsing: turning a line's body into `key = value` fields.
//!
//! One [`Parser`] per source, built from its [`ParserConfig`]. [`Parser::apply`] reads a
//! line's body and appends its fields to the batch's column-like field list; the body
//! itself is never changed, so a record always keeps the exact bytes it was read as.
//!
//! | parser | fields |
//! | --- | --- |
//! | `json` | top-level members of a JSON object ([`json`]) |
//! | `regex` | named captures that participated in the match ([`regex`]) |
//! | `delimiter` | configured column names, CSV quoting optional ([`delimiter`]) |
//! | `nginx` / `apache` | the combined access log fields ([`access_log`]) |
//! | `syslog` | RFC 5424 / RFC 3164 header fields and message ([`syslog`]) |
//!
//! # Failure
//!
//! A line the parser cannot read gets [`LineFlags::PARSE_FAILED`], contributes no field,
//! and keeps its raw body: it is shipped like any other line, never dropped. Whatever the
//! parser, the body's UTF-8 validity is checked and [`LineFlags::INVALID_UTF8`] set when
//! it is not valid; invalid bytes are never replaced. Counting failures per parser kind
//! is the caller's job ([`Parser::kind`] is the bounded label value).
//!
//! # Performance
//!
//! The UTF-8 check of every body is the one cost every source pays. A caller that has
//! the read chunk the lines were sliced from can check the chunk once
//! ([`Utf8Checked`]) and pass [`Parser::apply_with`] the verdict for lines that are
//! slices of it; everything else (copied, reassembled or truncated mid-character
//! lines) is still checked on its own, so the flag is the same either way.
//!
//! Field keys are `Bytes` built once per parser (or `from_static`), so cloning one is a
//! reference count at most; JSON keys, read from each body, are interned as static
//! slices ([`intern`]) for the same reason. Values are slices of the body whenever the
//! text appears in it verbatim ([`Text::slice`]): for a body that is a span of a read
//! chunk, a span of the same chunk, which costs no reference count (for a body of its
//! own, a slice of it: one). A copy is made only when the value must be decoded (a JSON
//! string with escapes, a CSV field with doubled quotes, a nested JSON value that was
//! not compact).

pub mod access_log;
pub mod delimiter;
mod intern;
pub mod json;
pub mod regex;
pub mod syslog;

use std::ops::{Deref, Range};

use bytes::Bytes;

use crate::batch::Field;
use crate::config::ParserConfig;
use crate::frame::{Body, Line, LineFlags, Record, Span};

/// The parse stage of one source.
#[derive(Debug)]
pub struct Parser {
    kind: Kind,
}

// Pipelines may share one parser between worker threads.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Parser>();
};

#[derive(Debug)]
enum Kind {
    None,
    Json,
    Regex(regex::RegexParser),
    Delimiter(delimiter::DelimiterParser),
    Access(access_log::Preset),
    Syslog,
}

impl Parser {
    pub fn new(config: &ParserConfig) -> Parser {
        let kind = match config {
            ParserConfig::None => Kind::None,
            ParserConfig::Json => Kind::Json,
            ParserConfig::Regex(re) => Kind::Regex(regex::RegexParser::new(re.clone())),
            ParserConfig::Delimiter {
                delimiter,
                quote,
                columns,
            } => Kind::Delimiter(delimiter::DelimiterParser::new(*delimiter, *quote, columns)),
            ParserConfig::Nginx => Kind::Access(access_log::Preset::Nginx),
            ParserConfig::Apache => Kind::Access(access_log::Preset::Apache),
            ParserConfig::Syslog => Kind::Syslog,
        };
        Parser { kind }
    }

    /// Parses `record.body`; pushes its fields (with `Field.line = index`) onto
    /// `fields`.
    ///
    /// Always validates the body's UTF-8: invalid UTF-8 sets [`LineFlags::INVALID_UTF8`]
    /// and the body stays bytes (parsers other than JSON still run on the bytes). On a
    /// parse failure sets [`LineFlags::PARSE_FAILED`], pushes no field, leaves the body
    /// raw and returns `false`. [`ParserConfig::None`] only validates UTF-8. The body
    /// is owned (a test's record); see [`apply_with`](Self::apply_with) for lines.
    pub fn apply(&self, record: &mut Record, index: u32, fields: &mut Vec<Field>) -> bool {
        let body = &Text::of(&record.body, crate::frame::NO_CHUNKS);
        self.parse(body, &mut record.flags, index, fields, false)
    }

    /// [`apply`](Self::apply) for a framed line, whose body is a span of `chunks`, and
    /// so are the span values of the fields pushed (see [`Text`]): no reference count
    /// per record. The body is already known to be valid UTF-8 when `known_utf8` (from
    /// [`Utf8Checked::vouches_for`]); `false` means "not known", and it is checked here.
    pub fn apply_with(
        &self,
        line: &mut Line,
        chunks: &[Bytes],
        index: u32,
        fields: &mut Vec<Field>,
        known_utf8: bool,
    ) -> bool {
        if let Kind::None = self.kind {
            let valid_utf8 = known_utf8 || std::str::from_utf8(line.body.get(chunks)).is_ok();
            if !valid_utf8 {
                line.flags.insert(LineFlags::INVALID_UTF8);
            }
            return true;
        }
        let body = &Text::of_span(line.body, chunks);
        self.parse(body, &mut line.flags, index, fields, known_utf8)
    }

    fn parse(
        &self,
        body: &Text,
        flags: &mut LineFlags,
        index: u32,
        fields: &mut Vec<Field>,
        known_utf8: bool,
    ) -> bool {
        let start = fields.len();
        let valid_utf8 = known_utf8 || std::str::from_utf8(body).is_ok();
        let parsed = match &self.kind {
            Kind::None => true,
            // JSON text is UTF-8 by definition (RFC 8259 §8.1): invalid bytes cannot parse.
            Kind::Json => valid_utf8 && json::parse(body, index, fields),
            Kind::Regex(parser) => parser.parse(body, index, fields),
            Kind::Delimiter(parser) => parser.parse(body, index, fields),
            Kind::Access(preset) => preset.parse(body, index, fields),
            Kind::Syslog => syslog::parse(body, index, fields),
        };
        if !valid_utf8 {
            flags.insert(LineFlags::INVALID_UTF8);
        }
        if !parsed {
            // A parser may have pushed some fields before finding the line malformed.
            fields.truncate(start);
            flags.insert(LineFlags::PARSE_FAILED);
        }
        parsed
    }

    /// Whether this is no parser at all (`parser: none`): records keep their body
    /// and get no fields; only their UTF-8 validity is checked.
    pub fn is_none(&self) -> bool {
        matches!(self.kind, Kind::None)
    }

    /// Bounded label value for metrics: "none", "json", "regex", "delimiter", "nginx",
    /// "apache", "syslog".
    pub fn kind(&self) -> &'static str {
        match &self.kind {
            Kind::None => "none",
            Kind::Json => "json",
            Kind::Regex(_) => "regex",
            Kind::Delimiter(_) => "delimiter",
            Kind::Access(access_log::Preset::Nginx) => "nginx",
            Kind::Access(access_log::Preset::Apache) => "apache",
            Kind::Syslog => "syslog",
        }
    }
}

/// A read chunk whose UTF-8 validity was checked once, vouching for the lines that
/// are slices of it.
#[derive(Debug)]
pub struct Utf8Checked {
    /// Held so its address range cannot be reused by another allocation while lines
    /// are compared against it.
    chunk: Bytes,
    /// Length of the chunk's longest valid UTF-8 prefix (a chunk may start or end in
    /// the middle of a character).
    valid_len: usize,
    /// The whole chunk is ASCII (the common case): every position is a boundary.
    ascii: bool,
}

impl Utf8Checked {
    pub fn new(chunk: &Bytes) -> Utf8Checked {
        let ascii = chunk.is_ascii();
        let valid_len = match ascii {
            true => chunk.len(),
            false => match std::str::from_utf8(chunk) {
                Ok(_) => chunk.len(),
                Err(e) => e.valid_up_to(),
            },
        };
        Utf8Checked {
            chunk: chunk.clone(),
            valid_len,
            ascii,
        }
    }

    /// Whether `body` is known to be valid UTF-8: it lies inside the chunk's valid
    /// prefix and starts and ends on character boundaries (a slice of valid UTF-8 cut
    /// there is valid UTF-8). `false` means "unknown", not "invalid".
    pub fn vouches_for(&self, body: &[u8]) -> bool {
        let base = self.chunk.as_ptr() as usize;
        let Some(start) = (body.as_ptr() as usize).checked_sub(base) else {
            return false;
        };
        let Some(end) = start.checked_add(body.len()) else {
            return false;
        };
        end <= self.valid_len && (self.ascii || (self.is_boundary(start) && self.is_boundary(end)))
    }

    /// For `i <= valid_len`: no character of the valid prefix straddles `i`.
    fn is_boundary(&self, i: usize) -> bool {
        // UTF-8 continuation bytes are 0b10xx_xxxx, i.e. -64..0 as i8.
        i == self.valid_len || (self.chunk[i] as i8) >= -0x40
    }
}

/// The body a parser reads (its bytes, by `Deref`) and makes field values of.
///
/// A value that is a range of the body is made by [`slice`](Self::slice): for a body
/// that is a span of a read chunk, a [`Body::Span`] of the same chunk, resolved in the
/// same chunks as the body (the package holds the chunk once, a field costs no
/// reference count); for a body of its own, a slice of it (one reference count).
#[derive(Debug)]
pub struct Text<'a> {
    bytes: &'a [u8],
    whence: Whence<'a>,
}

/// Where a [`Text`]'s bytes are.
#[derive(Debug)]
enum Whence<'a> {
    /// `bytes` is `chunk[start..]`, and `chunk` is number `index` of the chunks the
    /// body's span is resolved in.
    Span {
        chunk: &'a Bytes,
        index: u32,
        start: u32,
    },
    /// `bytes` is all of these.
    Owned(&'a Bytes),
}

impl<'a> Text<'a> {
    /// `body`, a span resolved in `chunks` (read as empty if outside them, which the
    /// invariants of `Framer::push` and `Batch` rule out).
    pub fn of(body: &'a Body, chunks: &'a [Bytes]) -> Text<'a> {
        match *body {
            Body::Span { chunk, start, len } => Text::of_span(Span { chunk, start, len }, chunks),
            Body::Owned(ref bytes) => Text::owned(bytes),
        }
    }

    /// A line's body, a span of `chunks` (its own chunk, for a body of its own).
    pub fn of_span(span: Span, chunks: &'a [Bytes]) -> Text<'a> {
        static EMPTY: Bytes = Bytes::new();
        if span == Span::EMPTY {
            return Text::owned(&EMPTY);
        }
        match Body::span_in(chunks, span.chunk, span.start, span.len) {
            Some((bytes, range)) => Text {
                bytes: &bytes[range],
                whence: Whence::Span {
                    chunk: bytes,
                    index: span.chunk,
                    start: span.start,
                },
            },
            _ => Text::owned(&EMPTY),
        }
    }

    /// A body of its own.
    pub fn owned(bytes: &'a Bytes) -> Text<'a> {
        Text {
            bytes,
            whence: Whence::Owned(bytes),
        }
    }

    /// The field value of `range` of the body (clamped to it).
    #[inline]
    pub fn slice(&self, range: Range<usize>) -> Body {
        let range = self.clamp(range);
        match self.whence {
            // The body's span has a `u32` start and length, so these fit.
            Whence::Span { index, start, .. } => Body::Span {
                chunk: index,
                start: start + range.start as u32,
                len: range.len() as u32,
            },
            Whence::Owned(bytes) => Body::Owned(bytes.slice(range)),
        }
    }

    /// `range` of the body (clamped to it) as a `Bytes` of its own: a slice of its
    /// chunk or of the body (one reference count), for a field key.
    pub fn slice_bytes(&self, range: Range<usize>) -> Bytes {
        let range = self.clamp(range);
        match self.whence {
            Whence::Span { chunk, start, .. } => {
                let start = start as usize;
                chunk.slice(start + range.start..start + range.end)
            }
            Whence::Owned(bytes) => bytes.slice(range),
        }
    }

    /// `range` cut to the body's bytes (an empty range at its end when past them).
    #[inline]
    fn clamp(&self, range: Range<usize>) -> Range<usize> {
        let end = range.end.min(self.bytes.len());
        range.start.min(end)..end
    }

    /// Where `part` lies in the body, if it is a view of it.
    fn range_of(&self, part: &[u8]) -> Option<Range<usize>> {
        let offset = (part.as_ptr() as usize).checked_sub(self.bytes.as_ptr() as usize)?;
        (offset + part.len() <= self.bytes.len()).then(|| offset..offset + part.len())
    }
}

impl Deref for Text<'_> {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

/// `part` as a value sliced out of `body` when it lies inside it (no copy), else a copy.
///
/// Parsers that get `&str`/`&[u8]` views from a library (serde_json) use this to turn
/// them back into spans; the copy fallback only guards against a library handing back
/// text that is not a view of the input, which would otherwise be a span of the wrong
/// bytes.
fn span_of(body: &Text, part: &[u8]) -> Body {
    match body.range_of(part) {
        Some(range) => body.slice(range),
        None => Body::Owned(Bytes::copy_from_slice(part)),
    }
}

/// [`span_of`] as a `Bytes` of its own (a field key).
fn bytes_of(body: &Text, part: &[u8]) -> Bytes {
    match body.range_of(part) {
        Some(range) => body.slice_bytes(range),
        None => Bytes::copy_from_slice(part),
    }
}

#[cfg(test)]
mod tests;

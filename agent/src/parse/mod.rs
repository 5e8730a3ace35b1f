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
//! Field keys are `Bytes` built once per parser (or `from_static`), so cloning one is a
//! reference count at most. Values are slices of the body whenever the text appears in
//! it verbatim; a copy is made only when the value must be decoded (a JSON string with
//! escapes, a CSV field with doubled quotes, a nested JSON value that was not compact).

pub mod access_log;
pub mod delimiter;
pub mod json;
pub mod regex;

use bytes::Bytes;

use crate::batch::Field;
use crate::config::ParserConfig;
use crate::frame::{Line, LineFlags};

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
        };
        Parser { kind }
    }

    /// Parses `line.body`; pushes its fields (with `Field.line = index`) onto `fields`.
    ///
    /// Always validates the body's UTF-8: invalid UTF-8 sets [`LineFlags::INVALID_UTF8`]
    /// and the body stays bytes (parsers other than JSON still run on the bytes). On a
    /// parse failure sets [`LineFlags::PARSE_FAILED`], pushes no field, leaves the body
    /// raw and returns `false`. [`ParserConfig::None`] only validates UTF-8.
    pub fn apply(&self, line: &mut Line, index: u32, fields: &mut Vec<Field>) -> bool {
        let body = &line.body;
        let text = std::str::from_utf8(body).ok();
        let start = fields.len();
        let parsed = match &self.kind {
            Kind::None => true,
            // JSON text is UTF-8 by definition (RFC 8259 §8.1): invalid bytes cannot parse.
            Kind::Json => text.is_some_and(|text| json::parse(body, text, index, fields)),
            Kind::Regex(parser) => parser.parse(body, index, fields),
            Kind::Delimiter(parser) => parser.parse(body, index, fields),
            Kind::Access(preset) => preset.parse(body, index, fields),
        };
        if text.is_none() {
            line.flags.insert(LineFlags::INVALID_UTF8);
        }
        if !parsed {
            // A parser may have pushed some fields before finding the line malformed.
            fields.truncate(start);
            line.flags.insert(LineFlags::PARSE_FAILED);
        }
        parsed
    }

    /// Bounded label value for metrics: "none", "json", "regex", "delimiter", "nginx",
    /// "apache".
    pub fn kind(&self) -> &'static str {
        match &self.kind {
            Kind::None => "none",
            Kind::Json => "json",
            Kind::Regex(_) => "regex",
            Kind::Delimiter(_) => "delimiter",
            Kind::Access(access_log::Preset::Nginx) => "nginx",
            Kind::Access(access_log::Preset::Apache) => "apache",
        }
    }
}

/// `part` as a slice of `body` when it lies inside it (no copy), else a copy.
///
/// Parsers that get `&str`/`&[u8]` views from a library (serde_json) use this to turn
/// them back into spans; the copy fallback only guards against a library handing back
/// text that is not a view of the input, which would otherwise be a panic in
/// `Bytes::slice_ref`.
fn span_of(body: &Bytes, part: &[u8]) -> Bytes {
    let base = body.as_ptr() as usize;
    let start = part.as_ptr() as usize;
    match start.checked_sub(base) {
        Some(offset) if offset + part.len() <= body.len() => {
            body.slice(offset..offset + part.len())
        }
        _ => Bytes::copy_from_slice(part),
    }
}

#[cfg(test)]
mod tests;

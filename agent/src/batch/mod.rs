//! Batches ("packages"): the unit of shipping, acknowledging and checkpointing.
//!
//! A package holds consecutive records of exactly one source, numbered by a
//! per-source `package_id` that increases by one per package. Lines are spans into
//! shared read chunks and parsed fields are spans too, so building a package does no
//! per-line heap allocation. [`codec`] turns a package into its lz4-compressed wire
//! form (used by the local store and every network sink) and back.

pub mod codec;

use std::sync::Arc;

use bytes::Bytes;

use crate::frame::Line;
use crate::source::SourceInfo;

/// A parsed field of one line: `key = value`, both spans (the key is usually a
/// `Bytes::from_static` name or a slice of the line itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Index of the line in [`Batch::lines`] this field belongs to.
    pub line: u32,
    pub key: Bytes,
    pub value: Bytes,
}

/// One package: consecutive records of one source.
#[derive(Clone, Debug)]
pub struct Batch {
    pub source: Arc<SourceInfo>,
    pub package_id: u64,
    /// Records in source order (offsets strictly increasing).
    pub lines: Vec<Line>,
    /// Parsed fields, grouped by line in line order (column-like, not per-line maps).
    pub fields: Vec<Field>,
    /// Where reading must resume once this package and all earlier ones of the same
    /// source are acknowledged: the offset just past the last record in it.
    pub end_offset: u64,
}

impl Batch {
    /// Sum of body bytes; what size-based flushing and metrics count.
    pub fn body_bytes(&self) -> usize {
        self.lines.iter().map(|l| l.body.len()).sum()
    }

    /// The fields of line `index` (fields are grouped by line, so this is a range).
    pub fn fields_of(&self, index: usize) -> &[Field] {
        let index = index as u32;
        let start = self.fields.partition_point(|f| f.line < index);
        let end = self.fields.partition_point(|f| f.line <= index);
        &self.fields[start..end]
    }
}

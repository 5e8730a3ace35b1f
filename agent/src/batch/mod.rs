//! Batches ("packages"): the unit of shipping, acknowledging and checkpointing.
//!
//! A package holds consecutive records of exactly one source, numbered by a
//! per-source `package_id` that increases by one per package. Lines are spans into
//! shared read chunks and parsed fields are spans too, so building a package does no
//! per-line heap allocation. [`codec`] turns a package into its lz4-compressed wire
//! form (used by the local store and every network sink) and back.

pub mod codec;

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::enrich::SourceFields;
use crate::frame::{Body, Line, LineFlags, Span, Stream};
use crate::source::SourceInfo;

/// A parsed field of one line: `key = value`.
///
/// The key is a `Bytes` that costs no reference count in the common case (a parser's
/// `from_static` name or an interned JSON key). The value is a [`Body`], read with
/// [`Batch::value`]: where a parser found the text verbatim in a body that is a span,
/// a span of the same chunk, so a record's fields, like its body, cost no reference
/// count to make, package or drop (`docs/benchmarks.md`, "JSON field values as
/// spans"); else bytes of its own (decoded text, a processor's rewrite, a body of its
/// own's slice).
///
/// Invariant: a span value indexes the same chunks as the bodies beside it and lies
/// inside its chunk. Out of [`Parser::apply_with`](crate::parse::Parser::apply_with)
/// (and through `transform`) those are the `chunks` it was given; once
/// [`BatchBuilder::push`] took the field's line, they are the package's
/// [`Batch::chunks`] (checked by [`Batch::check_spans`] in tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Index of the line in [`Batch::lines`] this field belongs to.
    pub line: u32,
    pub key: Bytes,
    pub value: Body,
}

/// One package: consecutive records of one source.
///
/// Invariants (checked by [`Batch::check_spans`] in tests): every line's [`Span`] but
/// [`Span::EMPTY`], and every [`Body::Span`] of `fields`' values, lies inside
/// `chunks[its chunk]`, and every chunk is used by one (a package keeps alive only the
/// chunks its records are in). Fields are grouped by line in line order, each of a
/// line the package has.
#[derive(Clone, Debug)]
pub struct Batch {
    pub source: Arc<SourceInfo>,
    pub package_id: u64,
    /// What the records' and fields' spans index: the read chunks, each once, and the
    /// bodies that are bytes of their own, one chunk each.
    pub chunks: Vec<Bytes>,
    /// Records in the order they completed: source order, except that a record
    /// reassembled from CRI/docker partials (or grouped by multiline) of one stream
    /// comes where it completed, after records of the other stream that completed
    /// meanwhile. Every record of a later package starts at or after this package's
    /// `end_offset`.
    pub lines: Vec<Line>,
    /// Parsed fields, grouped by line in line order (column-like, not per-line maps).
    pub fields: Vec<Field>,
    /// Fields of every line of the package: what the source is (pod, namespace,
    /// container, labels…, see [`crate::enrich`]). Shared by the packages of a source
    /// until its metadata changes; empty when nothing is known or enrichment is off.
    pub source_fields: Arc<SourceFields>,
    /// Where reading must resume once this package and all earlier ones of the same
    /// source are acknowledged: the offset just past the last record in it.
    pub end_offset: u64,
}

/// The line vectors of dropped packages, for the next packages to fill.
///
/// A package's vector of thousands of lines (32 bytes each) is larger than malloc's
/// mmap threshold, and it is freed on the sink's thread: a fresh one per package cost
/// a page fault and a page clear per 4 KiB, about 2% of the CPU of the store path. At
/// most [`SPARE_LINE_VECTORS`] empty vectors wait here, each no larger than a package
/// that existed, so what is kept is bounded by what was in flight anyway.
static SPARE_LINES: Mutex<Vec<Vec<Line>>> = Mutex::new(Vec::new());
/// Most line vectors [`SPARE_LINES`] keeps.
const SPARE_LINE_VECTORS: usize = 4;
/// The lines a source's first package is sized for (it grows as needed; the next
/// ones are sized by the last).
const FIRST_PACKAGE_LINES: usize = 256;
/// Vectors smaller than this are not worth keeping: malloc serves them from its heap.
const SPARE_MIN_LINES: usize = 1024;
/// Most fields a package's vector is sized for ahead (4.5 MiB); a package with more
/// grows its vector as it fills.
const MAX_RESERVED_FIELDS: usize = 64 * 1024;

/// An empty vector of at least `capacity` lines, a recycled one when there is one.
fn line_vector(capacity: usize) -> Vec<Line> {
    let spare = SPARE_LINES.lock().ok().and_then(|mut spare| spare.pop());
    let mut lines = spare.unwrap_or_default();
    lines.reserve(capacity);
    lines
}

/// Whether `a` and `b` are the same bytes: a live chunk's range is not another's.
#[inline]
fn same_chunk(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

/// Moves the chunks a framer's lines use into a package's `chunks`: the read chunk
/// (index 0 of the framer's) once however many spans of it come — lines come chunk
/// after chunk, so an earlier read chunk never comes again — and each body of its own
/// (every later index) as a chunk of its own, taken out of the framer's list.
struct ChunkMover<'a> {
    chunks: &'a mut Vec<Bytes>,
    /// The index in `chunks` of the read chunk added last.
    read: &'a mut Option<u32>,
}

impl ChunkMover<'_> {
    /// The index in the package of chunk `index` of `from` (the framer's list): the
    /// read chunk, added if it is not the current one; a body of its own, moved.
    /// `moved` remembers bodies already moved for this line (a field may be a span of
    /// its line's body).
    #[inline]
    fn index(&mut self, index: u32, from: &mut [Bytes], moved: &mut Vec<(u32, u32)>) -> u32 {
        if index == 0 {
            let Some(read) = from.first() else {
                debug_assert!(false, "a span of no chunk");
                return u32::MAX;
            };
            return self.read_chunk(read);
        }
        if let Some(&(_, to)) = moved.iter().find(|(i, _)| *i == index) {
            return to;
        }
        let Some(bytes) = from.get_mut(index as usize) else {
            debug_assert!(false, "a span of no chunk");
            return u32::MAX;
        };
        let to = self.take(bytes);
        moved.push((index, to));
        to
    }

    /// The index in the package of a body of its own, taken out of the framer's list.
    #[inline]
    fn take(&mut self, bytes: &mut Bytes) -> u32 {
        self.chunks.push(std::mem::take(bytes));
        (self.chunks.len() - 1) as u32
    }

    /// The index of read chunk `chunk`, added if it is not the current one.
    #[inline]
    fn read_chunk(&mut self, chunk: &Bytes) -> u32 {
        if let Some(i) = *self.read
            && self
                .chunks
                .get(i as usize)
                .is_some_and(|c| same_chunk(c, chunk))
        {
            return i;
        }
        self.chunks.push(chunk.clone());
        let i = (self.chunks.len() - 1) as u32;
        *self.read = Some(i);
        i
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let mut lines = std::mem::take(&mut self.lines);
        if lines.capacity() < SPARE_MIN_LINES {
            return;
        }
        // Lines own nothing (the chunks do): clearing them visits none.
        lines.clear();
        if let Ok(mut spare) = SPARE_LINES.lock()
            && spare.len() < SPARE_LINE_VECTORS
        {
            spare.push(lines);
        }
    }
}

impl Batch {
    /// Sum of body bytes; what size-based flushing and metrics count.
    pub fn body_bytes(&self) -> usize {
        self.lines.iter().map(|l| l.body.len()).sum()
    }

    /// The body of `line`, one of this package's records.
    #[inline]
    pub fn body(&self, line: &Line) -> &[u8] {
        line.body.get(&self.chunks)
    }

    /// The body of `line` as a `Bytes` of its own (a slice of its chunk: one reference
    /// count), for a destination that needs ownership.
    pub fn body_owned(&self, line: &Line) -> Bytes {
        line.body.to_bytes(&self.chunks)
    }

    /// The lines and chunks of a package holding `records`, their bodies each a
    /// chunk of its own (for tests that build packages).
    #[cfg(test)]
    pub fn pack(records: Vec<crate::frame::Record>) -> (Vec<Bytes>, Vec<Line>) {
        let mut chunks = Vec::new();
        let lines = records
            .into_iter()
            .map(|r| Line {
                offset: r.offset,
                timestamp_ns: r.timestamp_ns,
                stream: r.stream,
                flags: r.flags,
                body: crate::frame::own(&mut chunks, r.body.to_bytes(crate::frame::NO_CHUNKS)),
            })
            .collect();
        (chunks, lines)
    }

    /// This package holding `records` instead (see [`pack`](Self::pack)).
    #[cfg(test)]
    pub fn with_lines(mut self, records: Vec<crate::frame::Record>) -> Batch {
        (self.chunks, self.lines) = Batch::pack(records);
        self
    }

    /// Replaces the body of line `index` with bytes of their own (for tests).
    #[cfg(test)]
    pub fn set_body(&mut self, index: usize, body: Bytes) {
        self.lines[index].body = crate::frame::own(&mut self.chunks, body);
    }

    /// The value of `field`, one of this package's fields.
    #[inline]
    pub fn value<'a>(&'a self, field: &'a Field) -> &'a [u8] {
        field.value.get(&self.chunks)
    }

    /// The value of `field` as a `Bytes` of its own (a span is sliced out of its
    /// chunk: one reference count), for a destination that needs ownership.
    pub fn value_owned(&self, field: &Field) -> Bytes {
        field.value.to_bytes(&self.chunks)
    }

    /// Panics unless the invariants written on [`Batch`] hold.
    #[cfg(test)]
    pub fn check_spans(&self) {
        let mut used = vec![false; self.chunks.len()];
        let mut check = |body: &Body, what: &dyn std::fmt::Debug| {
            if let Body::Span { chunk, start, len } = *body {
                let c = &self.chunks[chunk as usize];
                assert!(
                    start as usize + len as usize <= c.len(),
                    "{what:?} past its chunk"
                );
                used[chunk as usize] = true;
            }
        };
        for line in self.lines.iter().filter(|l| l.body != Span::EMPTY) {
            let Span { chunk, start, len } = line.body;
            check(&Body::Span { chunk, start, len }, line);
        }
        for field in &self.fields {
            check(&field.value, field);
        }
        assert!(used.iter().all(|&u| u), "a chunk no span uses");
        assert!(
            self.fields.is_sorted_by_key(|f| f.line),
            "fields not grouped by line in line order"
        );
        assert!(
            self.fields
                .last()
                .is_none_or(|f| (f.line as usize) < self.lines.len()),
            "a field of no line"
        );
    }

    /// The fields of line `index` (fields are grouped by line, so this is a range).
    pub fn fields_of(&self, index: usize) -> &[Field] {
        let index = index as u32;
        let start = self.fields.partition_point(|f| f.line < index);
        let end = self.fields.partition_point(|f| f.line <= index);
        &self.fields[start..end]
    }
}

/// Accumulates the records of one source into packages.
///
/// The pipeline pushes every record a chunk produced, then asks [`BatchBuilder::seal_if`]
/// whether a limit was reached. Sealing only between chunks keeps `end_offset` exact:
/// after a whole chunk was framed, the framer's resume offset is precisely where a
/// restart must begin, whatever order CRI partials completed in.
pub struct BatchBuilder {
    source: Arc<SourceInfo>,
    next_package_id: u64,
    lines: Vec<Line>,
    /// The chunks `lines`' spans index (see [`Batch`]'s invariants): a read chunk is
    /// added when the first span of it is, so consecutive records of one chunk share
    /// it; a body of its own when its line is.
    chunks: Vec<Bytes>,
    /// The index in `chunks` of the read chunk added last (see [`ChunkMover`]).
    read_chunk: Option<u32>,
    /// Reused by `push`: the bodies of their own moved for the line being pushed.
    moved: Vec<(u32, u32)>,
    fields: Vec<Field>,
    body_bytes: usize,
    opened_at: Option<std::time::Instant>,
    source_fields: Arc<SourceFields>,
    limits: crate::config::BatchConfig,
    /// Lines of the last sealed package. Packages are sealed between chunks, so they
    /// overshoot `max_lines` by up to a chunk's lines; sizing the next one from the
    /// last saves regrowing (copying) a vector of thousands of lines per package.
    last_len: usize,
    /// Fields of the last sealed package, sizing the next one's for the same reason
    /// (a JSON package of 8192 lines has some 40,000 fields of 72 bytes).
    last_fields: usize,
}

impl BatchBuilder {
    pub fn new(
        source: Arc<SourceInfo>,
        first_package_id: u64,
        limits: crate::config::BatchConfig,
    ) -> Self {
        BatchBuilder {
            source,
            next_package_id: first_package_id,
            lines: Vec::new(),
            chunks: Vec::new(),
            read_chunk: None,
            moved: Vec::new(),
            fields: Vec::new(),
            body_bytes: 0,
            opened_at: None,
            source_fields: Arc::default(),
            limits,
            last_len: 0,
            last_fields: 0,
        }
    }

    pub fn source(&self) -> &Arc<SourceInfo> {
        &self.source
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The source fields the packages sealed from now on carry.
    pub fn set_source_fields(&mut self, fields: Arc<SourceFields>) {
        self.source_fields = fields;
    }

    /// Index the next pushed line will have (what parsers tag their fields with).
    pub fn next_index(&self) -> u32 {
        self.lines.len() as u32
    }

    /// Where parsers append the fields of the line about to be pushed. Their span
    /// values are of the chunk [`push`](Self::push) is then given with the line.
    pub fn fields_mut(&mut self) -> &mut Vec<Field> {
        &mut self.fields
    }

    /// Adds a record; its body's span, and those of its fields' values, already
    /// appended with [`fields_mut`](Self::fields_mut), are of `chunks` (a framer's
    /// [`Out::chunks`](crate::frame::Out)): the chunks they use move into the package.
    pub fn push(&mut self, mut line: Line, chunks: &mut [Bytes], now: std::time::Instant) {
        if self.opened_at.is_none() {
            self.opened_at = Some(now);
            self.reserve_typical();
        }
        self.body_bytes += line.body.len();
        let line_index = self.lines.len() as u32;
        let mut mover = ChunkMover {
            chunks: &mut self.chunks,
            read: &mut self.read_chunk,
        };
        self.moved.clear();
        if line.body != Span::EMPTY {
            line.body.chunk = mover.index(line.body.chunk, chunks, &mut self.moved);
        }
        // The line's fields are the last ones (fields are grouped by line).
        for field in self.fields.iter_mut().rev() {
            if field.line != line_index {
                break;
            }
            if let Body::Span { chunk: index, .. } = &mut field.value {
                *index = mover.index(*index, chunks, &mut self.moved);
            }
        }
        self.lines.push(line);
    }

    /// The lines a new package is sized for: this source's last package and an
    /// eighth, so pushes don't regrow the vector; [`FIRST_PACKAGE_LINES`] for a
    /// source's first. Not `max_lines`: a node's hundreds of slow sources (captured
    /// container streams) would each hold a vector of 8192 lines (256 KiB) per open
    /// package, 50 MiB for 200, where their packages hold a few hundred lines.
    fn typical_lines(&self) -> usize {
        let typical = match self.last_len {
            0 => FIRST_PACKAGE_LINES,
            n => n + n / 8,
        };
        typical.min(16 * 1024)
    }

    /// The fields a new package is sized for: the last package's and an eighth, at
    /// most [`MAX_RESERVED_FIELDS`]; none after a package without fields.
    fn typical_fields(&self) -> usize {
        let n = self.last_fields;
        (n + n / 8).min(MAX_RESERVED_FIELDS)
    }

    /// Sizes the vectors of a package about to open for the typical package, so pushes
    /// don't regrow them (regrowing the fields' copied them: 3–10% of the samples of
    /// a JSON → null profile).
    fn reserve_typical(&mut self) {
        let typical = self.typical_lines();
        if self.lines.capacity() == 0 {
            self.lines = line_vector(typical);
        } else {
            self.lines.reserve(typical);
        }
        self.fields.reserve(self.typical_fields());
    }

    /// The package's records, for a stage that appends records to it directly (the
    /// framer, when nothing parses or filters them: no copy through a scratch
    /// vector). Call [`appended`](Self::appended) with the length it had before, then.
    pub fn lines_to_append(&mut self) -> &mut Vec<Line> {
        if self.opened_at.is_none() {
            self.reserve_typical();
        }
        &mut self.lines
    }

    /// Accounts for the records appended since the package held `start` of them (see
    /// [`lines_to_append`](Self::lines_to_append)), their spans of `chunks` (the
    /// framer's), as [`push`](Self::push) does for one, and hands each record's
    /// body, stream and flags to `each` in the same pass: a second walk over a
    /// chunk's thousands of records cost a few percent of plain → null.
    #[inline]
    pub fn appended(
        &mut self,
        start: usize,
        chunks: &mut [Bytes],
        now: std::time::Instant,
        mut each: impl FnMut(&[u8], &mut Stream, &mut LineFlags),
    ) {
        if self.lines.len() > start && self.opened_at.is_none() {
            self.opened_at = Some(now);
        }
        let Some((read, owned)) = chunks.split_first_mut() else {
            return;
        };
        let mut index = None;
        let mut bytes = 0;
        for line in &mut self.lines[start..] {
            let Line {
                body,
                stream,
                flags,
                ..
            } = line;
            let text: &[u8] = match body.chunk {
                0 => {
                    let start = body.start as usize;
                    let text = read.get(start..start + body.len()).unwrap_or_default();
                    body.chunk = *index.get_or_insert_with(|| {
                        ChunkMover {
                            chunks: &mut self.chunks,
                            read: &mut self.read_chunk,
                        }
                        .read_chunk(read)
                    });
                    text
                }
                _ if body.len == 0 => {
                    *body = Span::EMPTY;
                    &[]
                }
                // A body of its own: moved as its line's chunk (each is one line's).
                own => match owned.get_mut(own as usize - 1) {
                    Some(bytes) => {
                        let mut mover = ChunkMover {
                            chunks: &mut self.chunks,
                            read: &mut self.read_chunk,
                        };
                        body.chunk = mover.take(bytes);
                        self.chunks.last().map_or(&[][..], |b| &b[..])
                    }
                    None => {
                        debug_assert!(false, "a span of no chunk");
                        *body = Span::EMPTY;
                        &[]
                    }
                },
            };
            bytes += text.len();
            each(text, stream, flags);
        }
        self.body_bytes += bytes;
    }

    /// The memory the open package holds: its records' bytes (slices of read chunks,
    /// which they keep alive), the record vector it reserved and its fields. What a
    /// node-wide bound on open packages counts (see `pipeline::processor::OpenBound`).
    pub fn held_bytes(&self) -> usize {
        self.body_bytes
            + self.lines.capacity() * std::mem::size_of::<Line>()
            + self.fields.capacity() * std::mem::size_of::<Field>()
    }

    /// When the open package took its first record; `None` when it has none.
    pub fn opened_at(&self) -> Option<std::time::Instant> {
        self.opened_at
    }

    /// Whether a size limit is reached or the oldest record waited `timeout`.
    pub fn is_due(&self, now: std::time::Instant) -> bool {
        !self.lines.is_empty()
            && (self.is_full()
                || self
                    .opened_at
                    .is_some_and(|t| now.duration_since(t) >= self.limits.timeout))
    }

    /// Whether a size limit (bytes or records) is reached: a package that must not
    /// wait any longer, whatever else would hold it.
    pub fn is_full(&self) -> bool {
        self.body_bytes >= self.limits.max_bytes || self.lines.len() >= self.limits.max_lines
    }

    /// Seals the current records into a package ending at `end_offset` (None if empty).
    pub fn seal(&mut self, end_offset: u64) -> Option<Batch> {
        if self.lines.is_empty() {
            return None;
        }
        let batch = Batch {
            source: self.source.clone(),
            package_id: self.next_package_id,
            lines: std::mem::take(&mut self.lines),
            chunks: std::mem::take(&mut self.chunks),
            fields: std::mem::take(&mut self.fields),
            source_fields: self.source_fields.clone(),
            end_offset,
        };
        self.read_chunk = None;
        self.next_package_id += 1;
        self.last_len = batch.lines.len();
        self.last_fields = batch.fields.len();
        self.body_bytes = 0;
        self.opened_at = None;
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{LineFlags, Stream};
    use crate::source::{SourceId, SourceKind};
    use std::time::{Duration, Instant};

    fn builder(max_lines: usize) -> BatchBuilder {
        let info = Arc::new(SourceInfo {
            id: SourceId(1),
            kind: SourceKind::File,
            path: "/x".into(),
            config_name: Arc::from("t"),
        });
        let limits = crate::config::BatchConfig {
            max_bytes: 1 << 20,
            max_lines,
            timeout: Duration::from_millis(50),
        };
        BatchBuilder::new(info, 5, limits)
    }

    /// A line whose body is chunk 1 of [`hello`]'s: a body of its own.
    fn line(offset: u64) -> Line {
        Line {
            offset,
            timestamp_ns: 0,
            stream: Stream::None,
            flags: LineFlags::empty(),
            body: Span {
                chunk: 1,
                start: 0,
                len: 5,
            },
        }
    }

    /// A framer's chunks for one [`line`]: an empty read chunk and the body.
    fn hello() -> [Bytes; 2] {
        [Bytes::new(), Bytes::from_static(b"hello")]
    }

    #[test]
    fn packages_are_numbered_and_sealed_by_count_and_age() {
        let mut b = builder(2);
        let t0 = Instant::now();
        assert!(b.seal(0).is_none());
        b.push(line(0), &mut hello(), t0);
        assert!(!b.is_due(t0));
        assert!(b.is_due(t0 + Duration::from_millis(60)));
        b.push(line(6), &mut hello(), t0);
        assert!(b.is_due(t0));
        let p = b.seal(12).unwrap();
        assert_eq!((p.package_id, p.end_offset, p.lines.len()), (5, 12, 2));
        assert_eq!(p.body_bytes(), 10);
        b.push(line(12), &mut hello(), t0);
        assert_eq!(b.seal(18).unwrap().package_id, 6);
    }

    #[test]
    fn packages_overshooting_max_lines_size_the_next_one() {
        let mut b = builder(100);
        let now = Instant::now();
        // Sealing happens between chunks, so a package may hold more than max_lines.
        for i in 0..130 {
            b.push(line(i * 6), &mut hello(), now);
        }
        assert_eq!(b.seal(130 * 6).unwrap().lines.len(), 130);
        b.push(line(130 * 6), &mut hello(), now);
        let reserved = b.lines.capacity();
        assert!(reserved >= 130, "{reserved}");
        for i in 1..130 {
            b.push(line((130 + i) * 6), &mut hello(), now);
        }
        assert_eq!(b.lines.capacity(), reserved, "no regrowth");
    }

    #[test]
    fn a_package_s_fields_are_sized_by_the_last_package_s() {
        let mut b = builder(100);
        let now = Instant::now();
        let package = |b: &mut BatchBuilder, lines: u64| {
            for i in 0..lines {
                for _ in 0..3 {
                    let line = b.next_index();
                    b.fields_mut().push(Field {
                        line,
                        key: Bytes::from_static(b"k"),
                        value: Bytes::from_static(b"v").into(),
                    });
                }
                b.push(line(i * 6), &mut hello(), now);
            }
        };
        package(&mut b, 130);
        assert_eq!(b.seal(130 * 6).unwrap().fields.len(), 390);
        assert_eq!(b.typical_fields(), 390 + 390 / 8);
        package(&mut b, 1);
        let reserved = b.fields.capacity();
        assert!(reserved >= 390, "{reserved}");
        package(&mut b, 129);
        assert_eq!(b.fields.capacity(), reserved, "no regrowth");
        // A package without fields reserves none for the next.
        drop(b.seal(0));
        b.push(line(0), &mut hello(), now);
        drop(b.seal(6));
        assert_eq!(b.typical_fields(), 0);
    }

    #[test]
    fn a_package_is_sized_by_the_last_not_by_max_lines() {
        // Hundreds of slow sources each hold an open package: a few lines each must
        // not reserve max_lines (8192 × 32 bytes) apiece. (What is reserved, not the
        // capacity: a recycled spare vector may be larger.)
        let mut b = builder(8192);
        let now = Instant::now();
        assert_eq!(b.typical_lines(), FIRST_PACKAGE_LINES);
        for i in 0..40 {
            b.push(line(i * 6), &mut hello(), now);
        }
        drop(b.seal(40 * 6));
        assert_eq!(
            b.typical_lines(),
            45,
            "the last package's 40 lines and an eighth"
        );
    }

    #[test]
    fn dropped_packages_release_their_records_and_keep_few_vectors() {
        /// A chunk's owner; its clone of `alive` says whether the chunk still exists.
        struct Chunk(#[expect(dead_code, reason = "held for its reference count")] Arc<()>);
        impl AsRef<[u8]> for Chunk {
            fn as_ref(&self) -> &[u8] {
                b"hello"
            }
        }
        let alive = Arc::new(());
        let now = Instant::now();
        for _ in 0..2 * SPARE_LINE_VECTORS {
            let mut b = builder(4 * SPARE_MIN_LINES);
            let chunk = Bytes::from_owner(Chunk(Arc::clone(&alive)));
            for i in 0..2 * SPARE_MIN_LINES as u64 {
                let mut l = line(i * 6);
                l.body.chunk = 0;
                b.push(l, &mut [chunk.clone()], now);
            }
            drop(chunk);
            drop(b.seal(u64::MAX));
            // The vector may be kept, the chunk its records referenced is not.
            assert_eq!(Arc::strong_count(&alive), 1);
        }
        let spare = SPARE_LINES.lock().unwrap();
        assert!(spare.len() <= SPARE_LINE_VECTORS);
        assert!(spare.iter().all(Vec::is_empty));
    }

    #[test]
    fn a_package_holds_each_chunk_its_spans_use_once() {
        let mut b = builder(100);
        let now = Instant::now();
        let chunks = [
            Bytes::from_static(b"one\ntwo\n"),
            Bytes::from_static(b"three\n"),
        ];
        let span = |start, len| {
            let mut l = line(0);
            l.body = Span {
                chunk: 0,
                start,
                len,
            };
            l
        };
        let hello = Bytes::from_static(b"hello");
        // A framer's chunks: the read chunk, then a body of its own.
        let mut framed = [chunks[0].clone(), hello.clone()];
        b.push(span(0, 3), &mut framed, now);
        b.push(line(1), &mut framed, now);
        b.push(span(4, 3), &mut framed, now);
        // A chunk none of whose records is a span (a straddling line's) is not held.
        b.push(
            line(2),
            &mut [Bytes::from_static(b"unused"), hello.clone()],
            now,
        );
        // Appended by a framer: a span of the chunk and a body of its own.
        let start = b.lines_to_append().len();
        b.lines_to_append().extend([span(0, 5), line(3)]);
        let mut framed = [chunks[1].clone(), hello.clone()];
        b.appended(start, &mut framed, now, |_, _, _| {});
        let p = b.seal(100).unwrap();
        p.check_spans();
        // The read chunks once each, each body of its own a chunk, in the order their
        // lines came.
        let expected = [&chunks[0], &hello, &hello, &chunks[1], &hello];
        assert_eq!(p.chunks.iter().collect::<Vec<_>>(), expected);
        let bodies: Vec<&[u8]> = p.lines.iter().map(|l| p.body(l)).collect();
        assert_eq!(
            bodies,
            [&b"one"[..], b"hello", b"two", b"hello", b"three", b"hello"]
        );
        assert_eq!(p.body_owned(&p.lines[4]), "three");
        assert_eq!(p.body_bytes(), 3 + 5 + 3 + 5 + 5 + 5);
    }

    /// Field values that are spans of the pushed chunk come out as spans of the
    /// package's copy of it, whatever the body is; [`Batch::value`] reads them.
    #[test]
    fn field_spans_are_of_the_package_s_chunks() {
        let mut b = builder(100);
        let now = Instant::now();
        let chunks = [
            Bytes::from_static(b"{\"a\":\"x\"}\n"),
            Bytes::from_static(b"{\"a\":\"yz\"}\n"),
            Bytes::from_static(b"only a field"),
        ];
        let span = |start, len| Body::Span {
            chunk: 0,
            start,
            len,
        };
        let field = |line, value| Field {
            line,
            key: Bytes::from_static(b"a"),
            value,
        };
        for (i, chunk) in chunks[..2].iter().enumerate() {
            let index = b.next_index();
            b.fields_mut().push(field(index, span(6, 1 + i as u32)));
            b.fields_mut()
                .push(field(index, Bytes::from_static(b"own").into()));
            let mut l = line(0);
            l.body = Span {
                chunk: 0,
                start: 0,
                len: 9 + i as u32,
            };
            b.push(l, &mut [chunk.clone()], now);
        }
        // A body of its own (a processor's rewrite) whose field is still a span.
        let index = b.next_index();
        b.fields_mut().push(field(index, span(5, 7)));
        b.push(
            line(0),
            &mut [chunks[2].clone(), Bytes::from_static(b"hello")],
            now,
        );
        let p = b.seal(100).unwrap();
        p.check_spans();
        // The body's chunk comes before its fields' read chunk: a line's body moves
        // first.
        let hello = Bytes::from_static(b"hello");
        let expected = [&chunks[0], &chunks[1], &hello, &chunks[2]];
        assert_eq!(p.chunks.iter().collect::<Vec<_>>(), expected);
        let values: Vec<&[u8]> = p.fields.iter().map(|f| p.value(f)).collect();
        assert_eq!(values, [&b"x"[..], b"own", b"yz", b"own", b"a field"]);
        let chunk_of = |f: &Field| match f.value {
            Body::Span { chunk, .. } => Some(chunk),
            Body::Owned(_) => None,
        };
        let indexes: Vec<_> = p.fields.iter().map(chunk_of).collect();
        assert_eq!(indexes, [Some(0), None, Some(1), None, Some(3)]);
        assert_eq!(p.value_owned(&p.fields[2]), "yz");
    }

    #[test]
    #[should_panic(expected = "past its chunk")]
    fn check_spans_catches_a_field_span_past_its_chunk() {
        let mut b = builder(100);
        let chunk = Bytes::from_static(b"short");
        b.fields_mut().push(Field {
            line: 0,
            key: Bytes::from_static(b"k"),
            value: Body::Span {
                chunk: 0,
                start: 2,
                len: 4,
            },
        });
        b.push(
            line(0),
            &mut [chunk, Bytes::from_static(b"hello")],
            Instant::now(),
        );
        b.seal(5).unwrap().check_spans();
    }

    #[test]
    fn fields_of_returns_each_lines_fields() {
        let mut b = builder(10);
        let now = Instant::now();
        for i in 0..3u32 {
            let idx = b.next_index();
            assert_eq!(idx, i);
            if i != 1 {
                b.fields_mut().push(Field {
                    line: idx,
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from(format!("v{i}")).into(),
                });
            }
            b.push(line(i as u64 * 6), &mut hello(), now);
        }
        let p = b.seal(18).unwrap();
        assert_eq!(p.value(&p.fields_of(0)[0]), b"v0");
        assert!(p.fields_of(1).is_empty());
        assert_eq!(p.value(&p.fields_of(2)[0]), b"v2");
    }
}

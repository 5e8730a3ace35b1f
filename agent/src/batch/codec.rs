//! The wire and storage form of a package: a compact payload, lz4-compressed.
//!
//! # Payload format (version 3, columnar)
//!
//! ```text
//! payload := version:u8 (=3)
//!            source_field_count:varint
//!            (key_len:varint key value_len:varint value) × source_field_count
//!                                                  `Batch::source_fields`: fields of
//!                                                  every line, stored once
//!            line_count:varint
//!            offset_delta:varint     × line_count  first line: absolute offset; then the
//!                                                  difference to the previous line's
//!                                                  offset (wrapping u64)
//!            timestamp_delta:zigzag  × line_count  difference to the previous line's
//!                                                  timestamp (first line: to 0),
//!                                                  wrapping i64, zigzag-encoded
//!            stream:u8               × line_count  `Stream as u8` (0, 1 or 2)
//!            flags:varint            × line_count  `LineFlags.0` (at most u16::MAX)
//!            body_len:varint         × line_count
//!            field_count:varint      × line_count
//!            body                    × line_count  concatenated, in line order
//!            (key_len:varint key value_len:varint value) × Σ field_count, in line order
//! varint  := unsigned LEB128, at most 10 bytes
//! ```
//!
//! Version 2 (still read, no longer written) is version 3 without the source fields:
//! `version:u8 (=2) line_count:varint …` as above.
//!
//! Offsets of a package increase, so deltas are small; they wrap rather than fail so
//! that any sequence of lines round-trips. Nothing may follow the last field.
//!
//! Each column holds values of one kind next to each other (streams and flags are
//! nearly constant, lengths and deltas small), and the bodies form one run of text
//! uninterrupted by metadata: lz4 finds longer matches in both, so this layout
//! compresses faster and slightly smaller than interleaving everything per line.
//!
//! Version 1 (still read, no longer written) had the same fields per line:
//! `version:u8 (=1) line_count:varint (offset_delta timestamp_delta stream flags
//! body_len body field_count (key_len key value_len value)*)*`.
//!
//! # Compressed block
//!
//! `uncompressed_len:u32 (little endian) lz4_block`, as lz4_flex's
//! `compress_prepend_size` writes it.
//!
//! # Errors
//!
//! Decoding trusts nothing: truncated or corrupt input is a [`CodecError`], never a
//! panic, and claimed lengths are checked against the bytes actually present before
//! anything is allocated for them.
//!
//! # Performance
//!
//! [`encode_payload`] reserves the worst-case size once and then only appends: no
//! allocation per line. [`compress`] reuses a per-thread lz4 hash table (lz4_flex's
//! plain `compress_into` allocates one per call); [`compress_at`] also lets a caller
//! keep one output buffer whose bytes are never zeroed again. [`decode_payload`]
//! returns bodies, keys and values as slices of the payload `Bytes`.

use std::cell::RefCell;

use bytes::Bytes;
use lz4_flex::block::{CompressTable, compress_into_with_table, get_maximum_output_size};

use super::{Batch, Field};
use crate::frame::{LineFlags, Stream};

/// The payload version this module writes.
pub const PAYLOAD_VERSION: u8 = 3;
/// Columns without source fields; still decoded.
const PAYLOAD_VERSION_2: u8 = 2;
/// The interleaved layout of the first stores; still decoded.
const PAYLOAD_VERSION_1: u8 = 1;

/// Longest LEB128 encoding of a u64.
const MAX_VARINT_LEN: usize = 10;

/// lz4 cannot expand data by more than this factor (a match encodes at most 255 bytes
/// per length byte); a block claiming more is corrupt, and the check keeps a forged size
/// from making decompression allocate gigabytes.
const MAX_LZ4_RATIO: usize = 255;

/// One decoded line with its fields, owning (slices of) the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ns: i64,
    pub stream: Stream,
    pub flags: LineFlags,
    pub body: Bytes,
    pub fields: Vec<(Bytes, Bytes)>,
}

/// A decoded package: its source fields and its records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Package {
    /// Fields of every record (`Batch::source_fields`); empty before version 3.
    pub source_fields: Vec<(Bytes, Bytes)>,
    pub records: Vec<Record>,
}

#[derive(thiserror::Error, Debug)]
pub enum CodecError {
    #[error("payload is empty")]
    Empty,
    #[error("unsupported payload version {0} (this build reads 1 to {PAYLOAD_VERSION})")]
    UnsupportedVersion(u8),
    #[error("payload truncated while reading {0}")]
    Truncated(&'static str),
    #[error("varint longer than 10 bytes or over u64::MAX while reading {0}")]
    VarintOverflow(&'static str),
    #[error("invalid stream byte {0}")]
    InvalidStream(u8),
    #[error("line flags {0:#x} do not fit in 16 bits")]
    InvalidFlags(u64),
    #[error("{0} bytes after the last line")]
    TrailingBytes(usize),
    #[error("compressed block is shorter than its 4-byte size prefix")]
    MissingSize,
    #[error("compressed block of {compressed} bytes claims {claimed} uncompressed bytes")]
    ImplausibleSize { claimed: usize, compressed: usize },
    #[error("lz4 block is corrupt: {0}")]
    Decompress(#[from] lz4_flex::block::DecompressError),
    #[error("lz4 block decompressed to {actual} bytes, its prefix says {claimed}")]
    SizeMismatch { claimed: usize, actual: usize },
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// Encodes lines and fields into `out` (the uncompressed payload; `out` is cleared
/// first). Fields must be grouped by line in line order, as [`Batch::fields`] says; a
/// field whose `line` is out of order or out of range is not encoded.
pub fn encode_payload(batch: &Batch, out: &mut Vec<u8>) {
    out.clear();
    // Worst case per line: offset, timestamp, body length and field count varints, the
    // stream byte and a 3-byte flags varint; per field: two length varints.
    let per_line = 4 * MAX_VARINT_LEN + 1 + 3;
    let field_bytes: usize = batch
        .fields
        .iter()
        .map(|f| f.key.len() + f.value.len() + 2 * MAX_VARINT_LEN)
        .sum::<usize>()
        + batch
            .source_fields
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2 * MAX_VARINT_LEN)
            .sum::<usize>();
    out.reserve(
        1 + 2 * MAX_VARINT_LEN + batch.body_bytes() + batch.lines.len() * per_line + field_bytes,
    );

    let lines = &batch.lines;
    out.push(PAYLOAD_VERSION);
    put_varint(out, batch.source_fields.len() as u64);
    for (key, value) in batch.source_fields.iter() {
        put_varint(out, key.len() as u64);
        out.extend_from_slice(key);
        put_varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
    put_varint(out, lines.len() as u64);
    let mut previous_offset = 0u64;
    for line in lines {
        put_varint(out, line.offset.wrapping_sub(previous_offset));
        previous_offset = line.offset;
    }
    let mut previous_timestamp = 0i64;
    for line in lines {
        put_varint(
            out,
            zigzag(line.timestamp_ns.wrapping_sub(previous_timestamp)),
        );
        previous_timestamp = line.timestamp_ns;
    }
    out.extend(lines.iter().map(|l| l.stream as u8));
    for line in lines {
        put_varint(out, u64::from(line.flags.0));
    }
    for line in lines {
        put_varint(out, line.body.len() as u64);
    }
    let mut fields = FieldsByLine::new(&batch.fields);
    for index in 0..lines.len() {
        put_varint(out, fields.next_line(index).len() as u64);
    }
    for line in lines {
        out.extend_from_slice(batch.body(line));
    }
    let mut fields = FieldsByLine::new(&batch.fields);
    for index in 0..lines.len() {
        for field in fields.next_line(index) {
            put_varint(out, field.key.len() as u64);
            out.extend_from_slice(&field.key);
            let value = batch.value(field);
            put_varint(out, value.len() as u64);
            out.extend_from_slice(value);
        }
    }
}

/// Walks fields grouped by line: the fields of each line index in turn, skipping any
/// that are out of line order.
struct FieldsByLine<'a> {
    rest: &'a [Field],
}

impl<'a> FieldsByLine<'a> {
    fn new(fields: &'a [Field]) -> Self {
        FieldsByLine { rest: fields }
    }

    /// The fields of line `index`; call with increasing indexes.
    fn next_line(&mut self, index: usize) -> &'a [Field] {
        let index = index as u32;
        debug_assert!(
            self.rest.first().is_none_or(|f| f.line >= index),
            "fields out of line order"
        );
        let skip = self.rest.iter().take_while(|f| f.line < index).count();
        let rest = &self.rest[skip..];
        let count = rest.iter().take_while(|f| f.line == index).count();
        self.rest = &rest[count..];
        &rest[..count]
    }
}

thread_local! {
    static COMPRESS_TABLE: RefCell<CompressTable> = RefCell::new(CompressTable::default());
}

/// lz4 block compression of a payload, its uncompressed size prepended (u32 little
/// endian). `out` is cleared first; when it already has the capacity, nothing is
/// allocated.
///
/// Payloads are bounded by `batch.max_size` (far below 4 GiB); a larger one would not
/// fit the size prefix and is a bug in the caller.
pub fn compress(payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let written = compress_at(payload, out, 0);
    out.truncate(written);
}

/// [`compress`] into `out[at..]`: returns the length of the block written there.
/// `out` is only grown (new bytes zeroed), never shrunk, so a caller that keeps one
/// buffer for every block pays for zeroing it once, not per block; bytes past the
/// block are left over from earlier use.
pub fn compress_at(payload: &[u8], out: &mut Vec<u8>, at: usize) -> usize {
    assert!(
        u32::try_from(payload.len()).is_ok(),
        "payload of {} bytes exceeds the 4 GiB block limit",
        payload.len()
    );
    let needed = at + 4 + get_maximum_output_size(payload.len());
    if out.len() < needed {
        out.resize(needed, 0);
    }
    let block = &mut out[at..needed];
    block[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let written = COMPRESS_TABLE.with(|table| {
        let mut table = table.borrow_mut();
        compress_into_with_table(payload, &mut block[4..], &mut table)
    });
    // The output was sized with lz4_flex's own worst-case bound, so it cannot overflow.
    4 + written.expect("lz4 output buffer sized by get_maximum_output_size")
}

/// [`compress_at`]'s block without compressing: the payload as one lz4 sequence of
/// literals (a token, the literal length in 255-steps, the bytes), which [`decompress`]
/// — and any lz4 block decoder — reads back unchanged. A network sink's spool uses it
/// (`spool.compression: none`): lz4's match search is the costliest step of writing
/// a block, and the forwarder undoes it at once. On disk it is the payload plus one
/// byte per 255 (0.4%) and 5 bytes.
pub fn store_at(payload: &[u8], out: &mut Vec<u8>, at: usize) -> usize {
    assert!(
        u32::try_from(payload.len()).is_ok(),
        "payload of {} bytes exceeds the 4 GiB block limit",
        payload.len()
    );
    let n = payload.len();
    // A literal length of 15 or more is 15 in the token, then bytes of 255 while the
    // rest is at least 255, then the rest (0..=254).
    let extra = if n >= 15 { (n - 15) / 255 + 1 } else { 0 };
    let len = 4 + 1 + extra + n;
    if out.len() < at + len {
        out.resize(at + len, 0);
    }
    let block = &mut out[at..at + len];
    block[..4].copy_from_slice(&(n as u32).to_le_bytes());
    block[4] = (n.min(15) as u8) << 4;
    if n >= 15 {
        let rest = n - 15;
        block[5..4 + extra].fill(255);
        block[4 + extra] = (rest % 255) as u8;
    }
    block[5 + extra..].copy_from_slice(payload);
    len
}

/// The most a block of `compressed_len` bytes written by [`compress`] can decompress
/// to: what a size claimed in a header must not exceed before it sizes an allocation.
pub fn max_decompressed_len(compressed_len: usize) -> usize {
    compressed_len
        .saturating_sub(4)
        .saturating_mul(MAX_LZ4_RATIO)
}

/// Decompresses a block written by [`compress`] into `out` (cleared first).
pub fn decompress(compressed: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.clear();
    let (size, block) = compressed
        .split_first_chunk::<4>()
        .ok_or(CodecError::MissingSize)?;
    let claimed = u32::from_le_bytes(*size) as usize;
    if claimed > max_decompressed_len(compressed.len()) {
        return Err(CodecError::ImplausibleSize {
            claimed,
            compressed: compressed.len(),
        });
    }
    out.resize(claimed, 0);
    let actual = lz4_flex::block::decompress_into(block, out).inspect_err(|_| out.clear())?;
    if actual != claimed {
        out.clear();
        return Err(CodecError::SizeMismatch { claimed, actual });
    }
    Ok(())
}

/// Decodes a payload (version 1 to 3) into its records, dropping the source fields
/// (see [`decode_package`]); bodies, keys and values are slices of `payload`.
pub fn decode_payload(payload: &Bytes) -> Result<Vec<Record>, CodecError> {
    decode_package(payload).map(|p| p.records)
}

/// Decodes a payload (version 1 to 3) into its source fields and records; bodies, keys
/// and values are slices of `payload`.
pub fn decode_package(payload: &Bytes) -> Result<Package, CodecError> {
    let mut reader = Reader { payload, pos: 0 };
    let version = reader.byte("version").map_err(|_| CodecError::Empty)?;
    let package = match version {
        PAYLOAD_VERSION => {
            let count = reader.varint("source field count")?;
            // Each field takes at least 2 bytes.
            let mut source_fields = Vec::with_capacity(bounded(count, reader.remaining() / 2));
            for _ in 0..count {
                let key = reader.bytes("source field key")?;
                let value = reader.bytes("source field value")?;
                source_fields.push((key, value));
            }
            Package {
                source_fields,
                records: decode_columns(&mut reader)?,
            }
        }
        PAYLOAD_VERSION_2 => Package {
            source_fields: Vec::new(),
            records: decode_columns(&mut reader)?,
        },
        PAYLOAD_VERSION_1 => Package {
            source_fields: Vec::new(),
            records: decode_interleaved(&mut reader)?,
        },
        other => return Err(CodecError::UnsupportedVersion(other)),
    };
    match reader.remaining() {
        0 => Ok(package),
        n => Err(CodecError::TrailingBytes(n)),
    }
}

fn stream_of(byte: u8) -> Result<Stream, CodecError> {
    match byte {
        0 => Ok(Stream::None),
        1 => Ok(Stream::Stdout),
        2 => Ok(Stream::Stderr),
        other => Err(CodecError::InvalidStream(other)),
    }
}

fn flags_of(flags: u64) -> Result<LineFlags, CodecError> {
    Ok(LineFlags(
        u16::try_from(flags).map_err(|_| CodecError::InvalidFlags(flags))?,
    ))
}

/// Versions 2 and 3: one column after the other (see the module docs).
fn decode_columns(reader: &mut Reader<'_>) -> Result<Vec<Record>, CodecError> {
    let count = reader.varint("line count")?;
    // Each line takes at least 6 column bytes: never reserve more than the input holds.
    let capacity = bounded(count, reader.remaining() / 6);
    let mut records = Vec::with_capacity(capacity);
    let mut offset = 0u64;
    for _ in 0..count {
        offset = offset.wrapping_add(reader.varint("offset")?);
        records.push(Record {
            offset,
            timestamp_ns: 0,
            stream: Stream::None,
            flags: LineFlags::empty(),
            body: Bytes::new(),
            fields: Vec::new(),
        });
    }
    let mut timestamp_ns = 0i64;
    for r in &mut records {
        timestamp_ns = timestamp_ns.wrapping_add(unzigzag(reader.varint("timestamp")?));
        r.timestamp_ns = timestamp_ns;
    }
    for r in &mut records {
        r.stream = stream_of(reader.byte("stream")?)?;
    }
    for r in &mut records {
        r.flags = flags_of(reader.varint("flags")?)?;
    }
    let mut body_lens = Vec::with_capacity(records.len());
    for _ in 0..records.len() {
        body_lens.push(reader.varint("body length")?);
    }
    let mut field_counts = Vec::with_capacity(records.len());
    for _ in 0..records.len() {
        field_counts.push(reader.varint("field count")?);
    }
    for (r, &len) in records.iter_mut().zip(&body_lens) {
        r.body = reader.slice(len, "body")?;
    }
    for (r, &n) in records.iter_mut().zip(&field_counts) {
        // Each field takes at least 2 bytes.
        r.fields = Vec::with_capacity(bounded(n, reader.remaining() / 2));
        for _ in 0..n {
            let key = reader.bytes("field key")?;
            let value = reader.bytes("field value")?;
            r.fields.push((key, value));
        }
    }
    Ok(records)
}

/// Version 1: every field of a line, line after line.
fn decode_interleaved(reader: &mut Reader<'_>) -> Result<Vec<Record>, CodecError> {
    let count = reader.varint("line count")?;
    // Each line takes at least 6 bytes: never reserve more than the input can hold.
    let mut records = Vec::with_capacity(bounded(count, reader.remaining() / 6));
    let mut offset = 0u64;
    let mut timestamp_ns = 0i64;
    for _ in 0..count {
        offset = offset.wrapping_add(reader.varint("offset")?);
        timestamp_ns = timestamp_ns.wrapping_add(unzigzag(reader.varint("timestamp")?));
        let stream = stream_of(reader.byte("stream")?)?;
        let flags = flags_of(reader.varint("flags")?)?;
        let body = reader.bytes("body")?;
        let field_count = reader.varint("field count")?;
        let mut fields = Vec::with_capacity(bounded(field_count, reader.remaining() / 2));
        for _ in 0..field_count {
            let key = reader.bytes("field key")?;
            let value = reader.bytes("field value")?;
            fields.push((key, value));
        }
        records.push(Record {
            offset,
            timestamp_ns,
            stream,
            flags,
            body,
            fields,
        });
    }
    Ok(records)
}

fn bounded(claimed: u64, limit: usize) -> usize {
    usize::try_from(claimed).map_or(limit, |c| c.min(limit))
}

struct Reader<'a> {
    payload: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.payload.len() - self.pos
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, CodecError> {
        let b = *self
            .payload
            .get(self.pos)
            .ok_or(CodecError::Truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(what)?;
            // The tenth byte carries only the top bit of a u64.
            if shift == 63 && b > 1 {
                return Err(CodecError::VarintOverflow(what));
            }
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(CodecError::VarintOverflow(what))
    }

    /// A length-prefixed byte string, as a slice of the payload.
    fn bytes(&mut self, what: &'static str) -> Result<Bytes, CodecError> {
        let len = self.varint(what)?;
        self.slice(len, what)
    }

    /// The next `len` bytes, as a slice of the payload.
    fn slice(&mut self, len: u64, what: &'static str) -> Result<Bytes, CodecError> {
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.remaining())
            .ok_or(CodecError::Truncated(what))?;
        let slice = self.payload.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(slice)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::batch::Field;
    use crate::frame;
    use crate::source::{SourceId, SourceInfo, SourceKind};

    fn batch(lines: Vec<frame::Record>, fields: Vec<Field>) -> Batch {
        let (chunks, lines) = Batch::pack(lines);
        Batch {
            source: Arc::new(SourceInfo {
                id: SourceId(1),
                kind: SourceKind::File,
                path: PathBuf::from("/var/log/test.log"),
                config_name: Arc::from("test"),
            }),
            package_id: 0,
            end_offset: lines
                .last()
                .map_or(0, |l| l.offset + l.body.len() as u64 + 1),
            lines,
            chunks,
            fields,
            source_fields: Arc::default(),
        }
    }

    fn with_source_fields(mut b: Batch, pairs: &[(&'static str, &'static str)]) -> Batch {
        b.source_fields = Arc::new(
            pairs
                .iter()
                .map(|&(k, v)| {
                    (
                        Bytes::from_static(k.as_bytes()),
                        Bytes::from_static(v.as_bytes()),
                    )
                })
                .collect(),
        );
        b
    }

    /// A version 2 payload of `batch`: version 3 without its (empty) source fields.
    fn encode_payload_v2(batch: &Batch, out: &mut Vec<u8>) {
        assert!(batch.source_fields.is_empty());
        encode_payload(batch, out);
        assert_eq!(out[..2], [PAYLOAD_VERSION, 0]);
        out.splice(..2, [PAYLOAD_VERSION_2]);
    }

    fn line(offset: u64, timestamp_ns: i64, body: &'static [u8]) -> frame::Record {
        frame::Record {
            offset,
            timestamp_ns,
            stream: Stream::Stdout,
            flags: LineFlags::empty(),
            body: Bytes::from_static(body).into(),
        }
    }

    fn field(line: u32, key: &'static [u8], value: &'static [u8]) -> Field {
        Field {
            line,
            key: Bytes::from_static(key),
            value: Bytes::from_static(value).into(),
        }
    }

    /// What decoding `batch` must give back.
    fn expected(batch: &Batch) -> Vec<Record> {
        (0..batch.lines.len())
            .map(|i| {
                let l = &batch.lines[i];
                Record {
                    offset: l.offset,
                    timestamp_ns: l.timestamp_ns,
                    stream: l.stream,
                    flags: l.flags,
                    body: batch.body_owned(l),
                    fields: batch
                        .fields_of(i)
                        .iter()
                        .map(|f| (f.key.clone(), batch.value_owned(f)))
                        .collect(),
                }
            })
            .collect()
    }

    /// The version 1 encoder, as the first stores wrote it: decoding must keep
    /// reading those.
    fn encode_payload_v1(batch: &Batch, out: &mut Vec<u8>) {
        out.clear();
        out.push(PAYLOAD_VERSION_1);
        put_varint(out, batch.lines.len() as u64);
        let mut previous_offset = 0u64;
        let mut previous_timestamp = 0i64;
        let mut fields = FieldsByLine::new(&batch.fields);
        for (index, line) in batch.lines.iter().enumerate() {
            put_varint(out, line.offset.wrapping_sub(previous_offset));
            put_varint(
                out,
                zigzag(line.timestamp_ns.wrapping_sub(previous_timestamp)),
            );
            previous_offset = line.offset;
            previous_timestamp = line.timestamp_ns;
            out.push(line.stream as u8);
            put_varint(out, u64::from(line.flags.0));
            put_varint(out, line.body.len() as u64);
            out.extend_from_slice(batch.body(line));
            let line_fields = fields.next_line(index);
            put_varint(out, line_fields.len() as u64);
            for field in line_fields {
                put_varint(out, field.key.len() as u64);
                out.extend_from_slice(&field.key);
                let value = batch.value(field);
                put_varint(out, value.len() as u64);
                out.extend_from_slice(value);
            }
        }
    }

    fn round_trip(batch: &Batch) -> Vec<Record> {
        let mut payload = Vec::new();
        encode_payload(batch, &mut payload);
        let mut compressed = Vec::new();
        compress(&payload, &mut compressed);
        let mut decompressed = Vec::new();
        decompress(&compressed, &mut decompressed).unwrap();
        assert_eq!(decompressed, payload);
        decode_payload(&Bytes::from(decompressed)).unwrap()
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert!(out.len() <= MAX_VARINT_LEN);
            let bytes = Bytes::from(out);
            let mut reader = Reader {
                payload: &bytes,
                pos: 0,
            };
            assert_eq!(reader.varint("test").unwrap(), v);
            assert_eq!(reader.remaining(), 0);
        }
        for v in [0, 1, -1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
    }

    #[test]
    fn stored_blocks_decompress_to_their_payload() {
        // Literal lengths at the edges of lz4's length encoding (15 in the token, then
        // 255-steps).
        for len in [0, 1, 14, 15, 16, 269, 270, 271, 524, 525, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            for at in [0, 3] {
                let mut out = vec![0xaa; at];
                let n = store_at(&payload, &mut out, at);
                let extra = if len >= 15 { (len - 15) / 255 + 1 } else { 0 };
                assert_eq!(n, 4 + 1 + extra + len, "len {len}");
                let mut back = Vec::new();
                decompress(&out[at..at + n], &mut back).unwrap();
                assert_eq!(back, payload, "len {len}");
            }
        }
    }

    #[test]
    fn empty_batch() {
        let b = batch(vec![], vec![]);
        let mut payload = Vec::new();
        encode_payload(&b, &mut payload);
        assert_eq!(payload, [PAYLOAD_VERSION, 0, 0]);
        assert!(round_trip(&b).is_empty());
    }

    #[test]
    fn lines_and_fields_round_trip() {
        let mut third = line(5000, 1_700_000_000_000_000_000, b"\xff not utf8");
        third.stream = Stream::Stderr;
        third.flags = LineFlags::INVALID_UTF8 | LineFlags::PARSE_FAILED;
        let b = batch(
            vec![
                line(100, 1_700_000_000_000_000_500, b"{\"a\":1,\"b\":\"x\"}"),
                line(117, 1_700_000_000_000_000_400, b""),
                third,
            ],
            vec![
                field(0, b"a", b"1"),
                field(0, b"b", b"x"),
                field(2, b"", b""),
            ],
        );
        assert_eq!(round_trip(&b), expected(&b));
    }

    #[test]
    fn source_fields_round_trip_once_per_package() {
        let mut b = with_source_fields(
            batch(
                vec![line(0, 0, b"one"), line(4, 1, b"two")],
                vec![field(1, b"level", b"info")],
            ),
            &[
                ("k8s.pod", "web-1"),
                ("k8s.pod.label.app", "demo"),
                ("", ""),
            ],
        );
        Arc::make_mut(&mut b.source_fields)
            .push((Bytes::from_static(b"bin"), Bytes::from_static(b"\xff\x00")));
        let mut payload = Vec::new();
        encode_payload(&b, &mut payload);
        assert_eq!(
            memchr::memmem::find_iter(&payload, b"web-1").count(),
            1,
            "stored once, not per line"
        );
        let package = decode_package(&Bytes::from(payload.clone())).unwrap();
        assert_eq!(package.source_fields, *b.source_fields);
        assert_eq!(package.records, expected(&b));
        // Readers of records only (older callers) still get the records.
        assert_eq!(
            decode_payload(&Bytes::from(payload.clone())).unwrap(),
            expected(&b)
        );
        for cut in 1..payload.len() {
            let truncated = Bytes::copy_from_slice(&payload[..cut]);
            assert!(decode_package(&truncated).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn version_2_payloads_still_decode_without_source_fields() {
        let b = batch(
            vec![line(10, 5, b"hello "), line(20, 6, b"world")],
            vec![field(0, b"k", b"v")],
        );
        let mut payload = Vec::new();
        encode_payload_v2(&b, &mut payload);
        // The exact bytes version 2 wrote.
        assert_eq!(
            payload,
            b"\x02\x02\x0a\x0a\x0a\x02\x01\x01\x00\x00\x06\x05\x01\x00hello world\x01k\x01v"
        );
        let package = decode_package(&Bytes::from(payload)).unwrap();
        assert!(package.source_fields.is_empty());
        assert_eq!(package.records, expected(&b));
    }

    #[test]
    fn decoded_bodies_are_slices_of_the_payload() {
        let b = with_source_fields(
            batch(
                vec![line(0, 0, b"first body"), line(11, 1, b"second")],
                vec![field(1, b"key", b"value")],
            ),
            &[("k8s.pod", "web-1")],
        );
        let mut payload = Vec::new();
        encode_payload(&b, &mut payload);
        let payload = Bytes::from(payload);
        let range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
        let package = decode_package(&payload).unwrap();
        for (k, v) in &package.source_fields {
            assert!(range.contains(&(k.as_ptr() as usize)));
            assert!(range.contains(&(v.as_ptr() as usize)));
        }
        for r in package.records {
            assert!(range.contains(&(r.body.as_ptr() as usize)));
            for (k, v) in &r.fields {
                assert!(range.contains(&(k.as_ptr() as usize)));
                assert!(range.contains(&(v.as_ptr() as usize)));
            }
        }
    }

    #[test]
    fn encode_reserves_once_and_reuses_the_buffer() {
        let lines: Vec<frame::Record> = (0..1000)
            .map(|i| line(i * 101, i as i64, &[b'x'; 100]))
            .collect();
        let b = batch(lines, vec![]);
        let mut payload = Vec::new();
        encode_payload(&b, &mut payload);
        let capacity = payload.capacity();
        let first = payload.clone();
        encode_payload(&b, &mut payload);
        assert_eq!(payload, first);
        assert_eq!(payload.capacity(), capacity);
    }

    #[test]
    fn corrupt_payloads_are_errors() {
        let b = with_source_fields(
            batch(
                vec![line(10, 5, b"hello"), line(20, 6, b"world")],
                vec![field(1, b"k", b"v")],
            ),
            &[("s", "t")],
        );
        let mut payload = Vec::new();
        encode_payload(&b, &mut payload);

        assert!(matches!(
            decode_payload(&Bytes::new()),
            Err(CodecError::Empty)
        ));
        let mut bad = payload.clone();
        bad[0] = 9;
        assert!(matches!(
            decode_payload(&Bytes::from(bad)),
            Err(CodecError::UnsupportedVersion(9))
        ));
        for cut in 1..payload.len() {
            let truncated = Bytes::copy_from_slice(&payload[..cut]);
            assert!(decode_payload(&truncated).is_err(), "cut at {cut}");
        }
        let mut trailing = payload.clone();
        trailing.push(0);
        assert!(matches!(
            decode_payload(&Bytes::from(trailing)),
            Err(CodecError::TrailingBytes(1))
        ));
        // Stream byte of the first line: version, the source field (count, 1s, 1t), line
        // count, two offsets, two timestamps.
        let mut bad_stream = payload.clone();
        bad_stream[11] = 3;
        assert!(matches!(
            decode_payload(&Bytes::from(bad_stream)),
            Err(CodecError::InvalidStream(3))
        ));
        let overlong = Bytes::from_static(&[
            1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        ]);
        assert!(matches!(
            decode_payload(&overlong),
            Err(CodecError::VarintOverflow(_))
        ));
        // A huge claimed line count must not be reserved up front.
        let huge = Bytes::from_static(&[
            1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]);
        assert!(matches!(
            decode_payload(&huge),
            Err(CodecError::Truncated(_))
        ));
    }

    #[test]
    fn version_1_payloads_still_decode() {
        let b = batch(
            vec![line(10, 5, b"hello"), line(20, 6, b"world")],
            vec![field(1, b"k", b"v")],
        );
        let mut payload = Vec::new();
        encode_payload_v1(&b, &mut payload);
        // The exact bytes the first stores wrote.
        assert_eq!(
            payload,
            b"\x01\x02\x0a\x0a\x01\x00\x05hello\x00\x0a\x02\x01\x00\x05world\x01\x01k\x01v"
        );
        assert_eq!(
            decode_payload(&Bytes::from(payload.clone())).unwrap(),
            expected(&b)
        );
        for cut in 1..payload.len() {
            let truncated = Bytes::copy_from_slice(&payload[..cut]);
            assert!(decode_payload(&truncated).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn columns_keep_bodies_contiguous() {
        let b = batch(
            vec![line(10, 5, b"hello "), line(20, 6, b"world")],
            vec![field(0, b"k", b"v")],
        );
        let mut payload = Vec::new();
        encode_payload(&b, &mut payload);
        assert_eq!(
            payload,
            b"\x03\x00\x02\x0a\x0a\x0a\x02\x01\x01\x00\x00\x06\x05\x01\x00hello world\x01k\x01v"
        );
    }

    #[test]
    fn compress_at_reuses_one_buffer_without_shrinking_it() {
        let large: Vec<u8> = b"0123456789 some log text ".repeat(4000);
        let small = b"short".to_vec();
        let mut buf = Vec::new();
        for payload in [&large, &small, &large] {
            let n = compress_at(payload, &mut buf, 80);
            let len = buf.len();
            let mut out = Vec::new();
            decompress(&buf[80..80 + n], &mut out).unwrap();
            assert_eq!(&out, payload);
            assert!(len >= 80 + n);
        }
        let grown = buf.len();
        compress_at(&small, &mut buf, 80);
        assert_eq!(buf.len(), grown, "never shrunk, so never zeroed again");
    }

    #[test]
    fn corrupt_compressed_blocks_are_errors() {
        let mut out = Vec::new();
        assert!(matches!(
            decompress(b"", &mut out),
            Err(CodecError::MissingSize)
        ));
        assert!(matches!(
            decompress(b"\x01\x00", &mut out),
            Err(CodecError::MissingSize)
        ));
        // A forged size must be rejected before it is allocated.
        assert!(matches!(
            decompress(b"\xff\xff\xff\xff\x00", &mut out),
            Err(CodecError::ImplausibleSize { .. })
        ));

        let payload: Vec<u8> = b"a line of text that repeats, ".repeat(50);
        let mut compressed = Vec::new();
        compress(&payload, &mut compressed);
        for cut in 0..compressed.len() {
            assert!(
                decompress(&compressed[..cut], &mut out).is_err(),
                "cut at {cut}"
            );
        }
        // A wrong size prefix, either way.
        let mut bigger = compressed.clone();
        bigger[..4].copy_from_slice(&(payload.len() as u32 + 1).to_le_bytes());
        assert!(decompress(&bigger, &mut out).is_err());
        let mut smaller = compressed.clone();
        smaller[..4].copy_from_slice(&(payload.len() as u32 - 1).to_le_bytes());
        assert!(decompress(&smaller, &mut out).is_err());
        decompress(&compressed, &mut out).unwrap();
        assert_eq!(out, payload);
    }

    #[test]
    fn large_payload_upgrades_the_compress_table() {
        let small = b"small payload ".repeat(10);
        let large: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for payload in [&small, &large, &small] {
            let mut compressed = Vec::new();
            compress(payload, &mut compressed);
            let mut out = Vec::new();
            decompress(&compressed, &mut out).unwrap();
            assert_eq!(&out, payload);
        }
    }

    /// A line and the `(key, value)` pairs of its fields.
    type LineWithFields = (frame::Record, Vec<(Vec<u8>, Vec<u8>)>);

    fn arbitrary_line() -> impl Strategy<Value = LineWithFields> {
        (
            any::<u64>(),
            any::<i64>(),
            0u8..3,
            any::<u16>(),
            prop::collection::vec(any::<u8>(), 0..200),
            prop::collection::vec(
                (
                    prop::collection::vec(any::<u8>(), 0..10),
                    prop::collection::vec(any::<u8>(), 0..30),
                ),
                0..4,
            ),
        )
            .prop_map(|(offset, timestamp_ns, stream, flags, body, fields)| {
                let line = frame::Record {
                    offset,
                    timestamp_ns,
                    stream: Stream::from_u8(stream),
                    flags: LineFlags(flags),
                    body: Bytes::from(body).into(),
                };
                (line, fields)
            })
    }

    proptest! {
        #[test]
        fn arbitrary_batches_round_trip(
            lines in prop::collection::vec(arbitrary_line(), 0..20),
            source_fields in prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 0..10), prop::collection::vec(any::<u8>(), 0..30)),
                0..4,
            ),
        ) {
            let mut fields = Vec::new();
            let mut batch_lines = Vec::new();
            for (i, (line, line_fields)) in lines.into_iter().enumerate() {
                batch_lines.push(line);
                for (key, value) in line_fields {
                    fields.push(Field { line: i as u32, key: Bytes::from(key), value: Bytes::from(value).into() });
                }
            }
            let b = batch(batch_lines, fields);
            let mut v1 = Vec::new();
            encode_payload_v1(&b, &mut v1);
            prop_assert_eq!(decode_payload(&Bytes::from(v1)).unwrap(), expected(&b));
            let mut v2 = Vec::new();
            encode_payload_v2(&b, &mut v2);
            prop_assert_eq!(decode_payload(&Bytes::from(v2)).unwrap(), expected(&b));

            let mut b = b;
            b.source_fields = Arc::new(
                source_fields.into_iter().map(|(k, v)| (Bytes::from(k), Bytes::from(v))).collect(),
            );
            prop_assert_eq!(round_trip(&b), expected(&b));
            let mut v3 = Vec::new();
            encode_payload(&b, &mut v3);
            let package = decode_package(&Bytes::from(v3)).unwrap();
            prop_assert_eq!(&package.source_fields, &*b.source_fields);
        }

        #[test]
        fn truncated_payloads_are_errors(lines in prop::collection::vec(arbitrary_line(), 1..6), cut in any::<prop::sample::Index>()) {
            let mut fields = Vec::new();
            let mut batch_lines = Vec::new();
            for (i, (line, line_fields)) in lines.into_iter().enumerate() {
                batch_lines.push(line);
                for (key, value) in line_fields {
                    fields.push(Field { line: i as u32, key: Bytes::from(key), value: Bytes::from(value).into() });
                }
            }
            let b = batch(batch_lines, fields);
            let mut payload = Vec::new();
            encode_payload(&b, &mut payload);
            let cut = cut.index(payload.len());
            prop_assert!(decode_payload(&Bytes::copy_from_slice(&payload[..cut])).is_err());
        }

        #[test]
        fn random_payloads_never_panic(
            mut bytes in prop::collection::vec(any::<u8>(), 0..200),
            version in prop::sample::select(vec![PAYLOAD_VERSION_1, PAYLOAD_VERSION_2, PAYLOAD_VERSION]),
        ) {
            if let Some(first) = bytes.first_mut() {
                *first = version;
            }
            let _ = decode_payload(&Bytes::from(bytes));
        }

        #[test]
        fn random_blocks_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut out = Vec::new();
            if decompress(&bytes, &mut out).is_ok() {
                prop_assert_eq!(out.len() as u32, u32::from_le_bytes(bytes[..4].try_into().unwrap()));
            }
        }

        #[test]
        fn mutated_blocks_never_panic(
            payload in prop::collection::vec(any::<u8>(), 0..300),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut compressed = Vec::new();
            compress(&payload, &mut compressed);
            for (at, byte) in flips {
                let i = at.index(compressed.len());
                compressed[i] = byte;
            }
            let mut out = Vec::new();
            if decompress(&compressed, &mut out).is_ok() {
                let _ = decode_payload(&Bytes::from(out));
            }
        }
    }
}

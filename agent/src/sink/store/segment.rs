//! The on-disk block format and segment scanning.
//!
//! A segment file (`segments/<first_seq:020>.seg`, where `first_seq` is the store-wide
//! sequence number of its first block) is a plain concatenation of blocks, one block per
//! package:
//!
//! ```text
//! offset size field
//!      0    4 magic  b"LTBK"
//!      4    2 format version (1)
//!      6    2 header length (80)
//!      8    4 compressed payload length
//!     12    4 uncompressed payload length
//!     16    4 line count
//!     20    4 offset span: highest record offset − lowest (u32::MAX: unknown, maybe more)
//!     24    8 source_id
//!     32    8 package_id
//!     40    8 lowest record offset (end offset when empty)
//!     48    8 end offset (Batch::end_offset)
//!     56    8 min timestamp (ns)
//!     64    8 max timestamp (ns)
//!     72    4 CRC32 of the compressed payload
//!     76    4 CRC32 of bytes 0..76 (so it covers the payload CRC too)
//!     80    . compressed payload (codec::compress of codec::encode_payload)
//! ```
//!
//! Records of a CRI package are not always in offset order (see `Batch::lines`): a
//! record reassembled from `P` fragments comes after records that started later, and
//! records may start at or past the package's end offset (a partial was pending when
//! it was sealed). So the header bounds record offsets by their lowest and highest
//! ([`BlockHeader::max_offset_bound`]), not by the first record and the end offset.
//! Blocks written before the span existed have 0 there and a first, not lowest, offset.
//!
//! All integers are little-endian. The header has its own CRC so that an index can be
//! rebuilt from headers alone (seeking over payloads) and so that a scan that meets a
//! damaged header can resynchronise on the next valid one instead of giving up on the
//! rest of the segment.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::batch::codec::{self, Package};

pub const MAGIC: [u8; 4] = *b"LTBK";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 80;
const SEGMENT_SUFFIX: &str = ".seg";

/// What a block header says about its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub compressed_len: u32,
    pub uncompressed_len: u32,
    pub line_count: u32,
    /// Highest record offset minus `first_offset`, `u32::MAX` when it does not fit.
    pub offset_span: u32,
    pub source_id: u64,
    pub package_id: u64,
    /// The lowest record offset (`end_offset` when the block holds no record).
    pub first_offset: u64,
    pub end_offset: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub payload_crc: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported format version {0}")]
    Version(u16),
    #[error("header checksum mismatch")]
    Checksum,
}

impl BlockHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[6..8].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        h[8..12].copy_from_slice(&self.compressed_len.to_le_bytes());
        h[12..16].copy_from_slice(&self.uncompressed_len.to_le_bytes());
        h[16..20].copy_from_slice(&self.line_count.to_le_bytes());
        h[20..24].copy_from_slice(&self.offset_span.to_le_bytes());
        h[24..32].copy_from_slice(&self.source_id.to_le_bytes());
        h[32..40].copy_from_slice(&self.package_id.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_offset.to_le_bytes());
        h[48..56].copy_from_slice(&self.end_offset.to_le_bytes());
        h[56..64].copy_from_slice(&self.min_ts.to_le_bytes());
        h[64..72].copy_from_slice(&self.max_ts.to_le_bytes());
        h[72..76].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..76]);
        h[76..80].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(h: &[u8; HEADER_LEN]) -> Result<BlockHeader, HeaderError> {
        if h[0..4] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if crc32fast::hash(&h[..76]) != le_u32(h, 76) {
            return Err(HeaderError::Checksum);
        }
        let version = u16::from_le_bytes([h[4], h[5]]);
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        Ok(BlockHeader {
            compressed_len: le_u32(h, 8),
            uncompressed_len: le_u32(h, 12),
            line_count: le_u32(h, 16),
            offset_span: le_u32(h, 20),
            source_id: le_u64(h, 24),
            package_id: le_u64(h, 32),
            first_offset: le_u64(h, 40),
            end_offset: le_u64(h, 48),
            min_ts: le_u64(h, 56) as i64,
            max_ts: le_u64(h, 64) as i64,
            payload_crc: le_u32(h, 72),
        })
    }

    /// No record of the block starts after this offset. Covers blocks written before
    /// `offset_span` existed (0 there), whose records all started below `end_offset`.
    pub fn max_offset_bound(&self) -> u64 {
        if self.offset_span == u32::MAX {
            return u64::MAX;
        }
        (self
            .first_offset
            .saturating_add(u64::from(self.offset_span)))
        .max(self.end_offset.saturating_sub(1))
    }

    /// Bytes the whole block occupies in the segment.
    pub fn block_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.compressed_len)
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// One block as the index knows it: where it is and what its header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockMeta {
    /// Byte position of the block header in its segment file.
    pub position: u64,
    pub header: BlockHeader,
}

pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// Segment files of `segments_dir`, sorted by first sequence number. Other files are
/// ignored; a missing directory is an empty store.
pub fn list_segments(segments_dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(segments_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) else {
            continue;
        };
        if stem.len() != 20 {
            continue;
        }
        if let Ok(seq) = stem.parse::<u64>() {
            out.push((seq, entry.path()));
        }
    }
    out.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(out)
}

/// How thoroughly [`scan_segment`] checks blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanMode {
    /// Headers and payload CRCs; stop at the first bad or short block. For the segment
    /// the writer is about to append to, where everything after the first bad block
    /// was never made durable (flush fsyncs whole prefixes).
    VerifyPayloads,
    /// Headers only (seeking over payloads); a damaged header is skipped by searching
    /// for the next valid one. For sealed segments and for readers.
    HeadersOnly,
}

/// Why a scan stopped before the end of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailProblem {
    /// Fewer bytes than a header or than the block its header announces.
    Short,
    Header(HeaderError),
    PayloadChecksum,
}

#[derive(Debug, Default)]
pub struct ScanOutcome {
    pub blocks: Vec<BlockMeta>,
    /// End of the last good block before the first problem at the tail (the length
    /// the file can be truncated to).
    pub valid_len: u64,
    /// Set when the scan did not end exactly at the end of the file.
    pub tail: Option<TailProblem>,
    /// Damaged regions skipped in the middle: unreadable headers (both modes).
    pub skipped_regions: usize,
    /// Blocks with a valid header and a payload failing its CRC, followed by intact
    /// blocks (VerifyPayloads mode): kept in `blocks`, so positions and counts do not
    /// shift, and reported when read.
    pub damaged_payloads: usize,
}

/// Reads the block headers of one segment file of `len` bytes.
pub fn scan_segment(file: &File, len: u64, mode: ScanMode) -> io::Result<ScanOutcome> {
    let mut out = ScanOutcome::default();
    let mut pos = 0u64;
    let mut header = [0u8; HEADER_LEN];
    let mut payload = Vec::new();
    while pos < len {
        if len - pos < HEADER_LEN as u64 {
            out.tail = Some(TailProblem::Short);
            break;
        }
        file.read_exact_at(&mut header, pos)?;
        let verify = mode == ScanMode::VerifyPayloads;
        let parsed = match BlockHeader::decode(&header) {
            Ok(h) if pos + h.block_len() <= len => h,
            Ok(_) => {
                out.tail = Some(TailProblem::Short);
                break;
            }
            Err(e) => {
                // Damage in the middle, not a torn tail, if an intact block follows.
                if let Some(next) = resync(file, pos + 1, len, verify, &mut payload)? {
                    out.skipped_regions += 1;
                    pos = next;
                    continue;
                }
                out.tail = Some(TailProblem::Header(e));
                break;
            }
        };
        if verify && !payload_intact(file, pos, &parsed, &mut payload)? {
            let next = pos + parsed.block_len();
            if resync(file, next, len, true, &mut payload)?.is_none() {
                out.tail = Some(TailProblem::PayloadChecksum);
                break;
            }
            // An intact block follows right after: a bit flip, not a torn write.
            out.damaged_payloads += 1;
        }
        out.blocks.push(BlockMeta {
            position: pos,
            header: parsed,
        });
        pos += parsed.block_len();
        out.valid_len = pos;
    }
    Ok(out)
}

/// Whether the payload of the block at `pos` matches its CRC.
fn payload_intact(
    file: &File,
    pos: u64,
    header: &BlockHeader,
    scratch: &mut Vec<u8>,
) -> io::Result<bool> {
    scratch.resize(header.compressed_len as usize, 0);
    file.read_exact_at(scratch, pos + HEADER_LEN as u64)?;
    Ok(crc32fast::hash(scratch) == header.payload_crc)
}

/// Position of the next valid, complete block at or after `from`, if any; with
/// `verify_payload`, one whose payload matches its CRC too (what tells damage in the
/// middle of the active segment from a torn tail, which holds no intact block).
fn resync(
    file: &File,
    from: u64,
    len: u64,
    verify_payload: bool,
    scratch: &mut Vec<u8>,
) -> io::Result<Option<u64>> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut header = [0u8; HEADER_LEN];
    let mut start = from;
    while start + (HEADER_LEN as u64) <= len {
        let n = ((len - start) as usize).min(CHUNK);
        file.read_exact_at(&mut buf[..n], start)?;
        for hit in memchr::memmem::find_iter(&buf[..n], &MAGIC) {
            let at = start + hit as u64;
            if at + HEADER_LEN as u64 > len {
                return Ok(None);
            }
            file.read_exact_at(&mut header, at)?;
            if let Ok(h) = BlockHeader::decode(&header)
                && at + h.block_len() <= len
                && (!verify_payload || payload_intact(file, at, &h, scratch)?)
            {
                return Ok(Some(at));
            }
        }
        if n < CHUNK {
            break;
        }
        // Overlap by the magic's length minus one so a magic split across chunks is found.
        start += (CHUNK - (MAGIC.len() - 1)) as u64;
    }
    Ok(None)
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("reading block: {0}")]
    Io(#[from] io::Error),
    #[error("payload checksum mismatch")]
    Checksum,
    #[error("payload: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("payload decompressed to {actual} bytes, header says {expected}")]
    Length { expected: u32, actual: usize },
    #[error("header claims a {claimed}-byte payload from {compressed} compressed bytes")]
    Implausible { claimed: u32, compressed: u32 },
}

/// Reads, checks and decodes one block. `compressed` is a scratch buffer reused
/// between calls.
pub fn read_block(
    file: &File,
    meta: &BlockMeta,
    compressed: &mut Vec<u8>,
) -> Result<Package, BlockError> {
    let mut payload = Vec::new();
    read_payload(file, meta, compressed, &mut payload)?;
    Ok(codec::decode_package(&Bytes::from(payload))?)
}

/// Reads and checks one block and decompresses its payload into `payload` (cleared
/// first; a caller that reuses it spares an allocation per block). `compressed` is a
/// scratch buffer reused between calls.
pub fn read_payload(
    file: &File,
    meta: &BlockMeta,
    compressed: &mut Vec<u8>,
    payload: &mut Vec<u8>,
) -> Result<(), BlockError> {
    let h = &meta.header;
    payload.clear();
    // The header's CRC vouches for its bits, not their sense: a size lz4 cannot reach
    // from this many compressed bytes must not size an allocation.
    if h.uncompressed_len as usize > codec::max_decompressed_len(h.compressed_len as usize) {
        return Err(BlockError::Implausible {
            claimed: h.uncompressed_len,
            compressed: h.compressed_len,
        });
    }
    compressed.resize(h.compressed_len as usize, 0);
    file.read_exact_at(compressed, meta.position + HEADER_LEN as u64)?;
    if crc32fast::hash(compressed) != h.payload_crc {
        return Err(BlockError::Checksum);
    }
    payload.reserve(h.uncompressed_len as usize);
    codec::decompress(compressed, payload)?;
    if payload.len() != h.uncompressed_len as usize {
        return Err(BlockError::Length {
            expected: h.uncompressed_len,
            actual: payload.len(),
        });
    }
    Ok(())
}

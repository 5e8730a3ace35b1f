//! The store's lz4 against the alternatives: `cargo xtask bench lz4`.
//!
//! The payloads are the store's own: `logtap run --oneshot` writes a generated input
//! (the templated CRI input and the low-redundancy words) into a local store, and the
//! harness reads every block back and decompresses it (`codec::decompress`). Then, on
//! one thread of the harness, each compressor compresses every payload, best of N
//! passes, timed by the thread's own CPU clock:
//! - `lz4_flex`, exactly as the store calls it (`codec::compress`, its per-thread
//!   hash table),
//! - the C liblz4 (1.10, through the `lz4` crate): `LZ4_compress_fast` with
//!   acceleration 1 (its default), 2, 4 and 8,
//! - larger blocks: four consecutive payloads compressed as one (what a 4 MiB
//!   `batch.max_size` would give, near enough), with both,
//! - smaller blocks: each payload as consecutive pieces just under 64 KiB (lz4's
//!   16-bit mode), with both,
//! - each payload's bodies alone, without the metadata columns, with `lz4_flex`: what
//!   the columns cost lz4.
//!
//! It also reports what the payloads are made of (bytes per input byte, and per record
//! by column of the payload format), decoded with `codec::decode_package`.
//!
//! Each compressed block is decompressed once with the store's own reader
//! (`codec::decompress`, `lz4_flex`), untimed, and must give the payload back: the C
//! library writes the same lz4 block format, and this checks it on every block.
//!
//! Reported per compressor and input: CPU seconds per GB of payload and per GB of the
//! input it came from, MB/s of payload per core, and the compression ratio (payload ÷
//! compressed bytes).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use logtap::batch::codec;
use logtap::sink::store::segment::{BlockHeader, HEADER_LEN};

use crate::{Input, generate, machine, run_measured, write_results};

const BEGIN_MARKER: &str = "<!-- bench-lz4:begin -->";
const END_MARKER: &str = "<!-- bench-lz4:end -->";

#[derive(clap::Args, Debug)]
pub struct Lz4Args {
    /// Size of each generated input, in MiB.
    #[arg(long, default_value_t = 256)]
    size_mb: u64,
    /// Passes over the payloads per compressor; the best (least CPU) is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The logtap binary (default: target/release/logtap next to this harness).
    #[arg(long)]
    logtap: Option<PathBuf>,
    /// Where the inputs and stores go (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the results into this file (between `<!-- bench-lz4:begin -->` and
    /// `<!-- bench-lz4:end -->`).
    #[arg(long)]
    markdown: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compressor {
    /// `lz4_flex` through `codec::compress`: what the store runs.
    Flex,
    /// The C liblz4's `LZ4_compress_fast` with this acceleration.
    C(i32),
    /// `lz4_flex` over consecutive pieces of [`PIECE`] bytes, each its own block:
    /// under 64 KiB lz4 keeps 16-bit positions (`lz4_flex`'s small table, the C
    /// library's `byU16` table of twice the entries).
    FlexPieces,
    /// The C liblz4, acceleration 1, over the same pieces.
    CPieces,
}

/// The piece size of [`Compressor::FlexPieces`]: the largest input lz4 compresses
/// with 16-bit positions.
const PIECE: usize = u16::MAX as usize - 1;

impl Compressor {
    fn name(self) -> String {
        match self {
            Compressor::Flex => "`lz4_flex` (the store's)".into(),
            Compressor::C(1) => "C liblz4, acceleration 1 (default)".into(),
            Compressor::C(a) => format!("C liblz4, acceleration {a}"),
            Compressor::FlexPieces => "`lz4_flex`, 64 KiB pieces".into(),
            Compressor::CPieces => "C liblz4, 64 KiB pieces".into(),
        }
    }

    /// Compresses `payload` into `out`: one block, or for the piece compressors one
    /// size-prefixed block per piece, one after the other.
    fn compress_all(
        self,
        payload: &[u8],
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        table: &mut lz4_flex::block::CompressTable,
    ) -> anyhow::Result<()> {
        let whole = match self {
            Compressor::FlexPieces => Compressor::Flex,
            Compressor::CPieces => Compressor::C(1),
            single => return single.compress(payload, out),
        };
        out.clear();
        for piece in payload.chunks(PIECE) {
            if whole == Compressor::Flex {
                let bound = 4 + lz4_flex::block::get_maximum_output_size(piece.len());
                scratch.resize(bound, 0);
                scratch[..4].copy_from_slice(&(piece.len() as u32).to_le_bytes());
                let n = lz4_flex::block::compress_into_with_table(piece, &mut scratch[4..], table)?;
                scratch.truncate(4 + n);
            } else {
                whole.compress(piece, scratch)?;
            }
            // Each piece's length ahead of it (4 bytes per 64 KiB, counted in the
            // compressed size), so that the check can find the pieces again.
            out.extend_from_slice(&(scratch.len() as u32).to_le_bytes());
            out.extend_from_slice(scratch);
        }
        Ok(())
    }

    /// Compresses `payload` into `out` (size-prefixed lz4 block, as the store writes).
    fn compress(self, payload: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        match self {
            Compressor::Flex => codec::compress(payload, out),
            Compressor::C(accel) => {
                let bound = 4 + lz4::block::compress_bound(payload.len())?;
                if out.len() < bound {
                    out.resize(bound, 0);
                }
                let n = lz4::block::compress_to_buffer(
                    payload,
                    Some(lz4::block::CompressionMode::FAST(accel)),
                    true,
                    out,
                )?;
                out.truncate(n);
            }
            Compressor::FlexPieces | Compressor::CPieces => {
                bail!("{} compresses through compress_all", self.name())
            }
        }
        Ok(())
    }
}

/// Decompresses what [`Compressor::compress_all`] wrote, with the store's reader
/// (`codec::decompress`): one size-prefixed block, or for the piece compressors each
/// piece's block behind its length.
fn decompress_all(
    compressor: Compressor,
    mut blocks: &[u8],
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    if !matches!(compressor, Compressor::FlexPieces | Compressor::CPieces) {
        return Ok(codec::decompress(blocks, out)?);
    }
    out.clear();
    let mut piece = Vec::new();
    while let Some((len, rest)) = blocks.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let block = rest.get(..len).context("truncated piece")?;
        codec::decompress(block, &mut piece)?;
        out.extend_from_slice(&piece);
        blocks = &rest[len..];
    }
    if !blocks.is_empty() {
        bail!("{} bytes after the last piece", blocks.len());
    }
    Ok(())
}

/// One compressor over one set of payloads.
struct Measured {
    input: &'static str,
    blocks: &'static str,
    compressor: Compressor,
    input_bytes: u64,
    payload_bytes: u64,
    compressed_bytes: u64,
    cpu: Duration,
}

pub fn run(args: &Lz4Args) -> anyhow::Result<()> {
    let logtap = crate::logtap_binary(args.logtap.as_deref())?;
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let compressors = [
        Compressor::Flex,
        Compressor::C(1),
        Compressor::C(2),
        Compressor::C(4),
        Compressor::C(8),
    ];
    let mut results = Vec::new();
    let mut shapes = Vec::new();
    for (input, label) in [
        (Input::CriTemplated, "CRI (templated)"),
        (Input::CriWords, "CRI, low-redundancy words"),
    ] {
        let path = dir.join(format!("{input:?}.log").to_lowercase());
        if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) < args.size_mb << 20 {
            eprintln!("generating {} ({} MiB)", path.display(), args.size_mb);
            generate(input, &path, args.size_mb << 20)?;
        }
        let input_bytes = std::fs::metadata(&path)?.len();
        let payloads = store_payloads(&logtap, &dir, &path)?;
        let merged: Vec<Vec<u8>> = payloads.chunks(4).map(|c| c.concat()).collect();
        let mean = payloads.iter().map(Vec::len).sum::<usize>() / payloads.len().max(1);
        eprintln!(
            "{label}: {} payloads of {} KiB on average",
            payloads.len(),
            mean >> 10
        );
        let (bodies, mut shape) = composition(&payloads)?;
        shape.input_bytes = input_bytes;
        eprintln!("{label}: {}", shape.text(input_bytes));
        shapes.push((label, shape));
        let pieces = [Compressor::FlexPieces, Compressor::CPieces];
        for (blocks, set, which) in [
            ("store's packages", &payloads, &compressors[..]),
            ("4 packages per block", &merged, &compressors[..2]),
            ("store's packages", &payloads, &pieces[..]),
            (BODIES_ONLY, &bodies, &compressors[..1]),
        ] {
            for &compressor in which {
                let m = measure(compressor, set, args.runs)?;
                let row = Measured {
                    input: label,
                    blocks,
                    compressor,
                    input_bytes,
                    payload_bytes: m.0,
                    compressed_bytes: m.1,
                    cpu: m.2,
                };
                eprintln!("{}", text(&row));
                results.push(row);
            }
        }
    }
    let mut table = markdown(&results, args.size_mb, args.runs);
    table.push('\n');
    for (label, shape) in &shapes {
        let _ = writeln!(table, "- {label}: {}", shape.text(shape.input_bytes));
    }
    println!("{table}");
    if let Some(path) = &args.markdown {
        let results = format!(
            "{}\n{table}",
            machine(&format!(
                "cargo xtask bench lz4 --size-mb {} --runs {} --markdown docs/benchmarks.md",
                args.size_mb, args.runs
            ))
        );
        write_results(path, &results, BEGIN_MARKER, END_MARKER)?;
    }
    Ok(())
}

/// Writes `input` into a fresh local store with `logtap run --oneshot` and returns
/// every block's payload, decompressed.
fn store_payloads(logtap: &Path, dir: &Path, input: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let data = dir.join("lz4-agent-data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let config = data.join("bench.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\nmetrics: {{listen: \"\"}}\nsources:\n  - name: bench\n    include: [\"{}\"]\n    format: cri\n    sink: out\nsinks:\n  out:\n    type: store\n    max_size: 100GiB\n    min_free: \"0\"\n",
            data.display(),
            input.display(),
        ),
    )?;
    run_measured(
        Command::new(logtap)
            .args(["run", "--oneshot", "--config"])
            .arg(&config)
            .env("LOGTAP_LOG", "warn")
            .stdout(Stdio::null()),
    )?;
    let segments = data.join("store/segments");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&segments)
        .with_context(|| format!("reading {}", segments.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let mut payloads = Vec::new();
    for file in files {
        payloads.extend(
            segment_payloads(&std::fs::read(&file)?)
                .with_context(|| format!("reading {}", file.display()))?,
        );
    }
    std::fs::remove_dir_all(&data)?;
    if payloads.is_empty() {
        bail!("the store of {} holds no block", input.display());
    }
    Ok(payloads)
}

/// The decompressed payloads of a segment file's blocks, in order.
fn segment_payloads(segment: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < segment.len() {
        let header: &[u8; HEADER_LEN] = segment
            .get(at..at + HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .with_context(|| format!("truncated block header at {at}"))?;
        let header = BlockHeader::decode(header)
            .map_err(|e| anyhow::anyhow!("block header at {at}: {e}"))?;
        let start = at + HEADER_LEN;
        let block = segment
            .get(start..start + header.compressed_len as usize)
            .with_context(|| format!("truncated block at {at}"))?;
        let mut payload = Vec::new();
        codec::decompress(block, &mut payload)?;
        out.push(payload);
        at = start + header.compressed_len as usize;
    }
    Ok(out)
}

/// The "blocks" of the bodies-only rows.
const BODIES_ONLY: &str = "bodies only (each package's bodies, no columns)";

/// What the payloads handed to lz4 are made of, per column of the payload format
/// (`codec`'s module docs).
#[derive(Debug, Default)]
struct Shape {
    input_bytes: u64,
    records: u64,
    payload: u64,
    bodies: u64,
    offsets: u64,
    timestamps: u64,
    body_lens: u64,
    /// Stream bytes, flags and field counts: one byte each per record here.
    constant: u64,
    /// Everything else: versions, counts, source fields, fields.
    rest: u64,
}

fn varint_len(v: u64) -> u64 {
    u64::from((64 - (v | 1).leading_zeros()).div_ceil(7))
}

impl Shape {
    fn text(&self, input_bytes: u64) -> String {
        let per = |n: u64| n as f64 / self.records.max(1) as f64;
        format!(
            "{} records; payload {:.3} of the input ({:.1} bytes a record): bodies {:.1}, offset deltas {:.2}, timestamp deltas {:.2}, body lengths {:.2}, streams + flags + field counts {:.2}, the rest {:.2}",
            self.records,
            self.payload as f64 / input_bytes.max(1) as f64,
            per(self.payload),
            per(self.bodies),
            per(self.offsets),
            per(self.timestamps),
            per(self.body_lens),
            per(self.constant),
            per(self.rest),
        )
    }
}

/// Decodes every payload: its shape, and each payload's bodies alone (concatenated).
fn composition(payloads: &[Vec<u8>]) -> anyhow::Result<(Vec<Vec<u8>>, Shape)> {
    let mut shape = Shape::default();
    let mut bodies = Vec::with_capacity(payloads.len());
    for p in payloads {
        let package = codec::decode_package(&bytes::Bytes::copy_from_slice(p))?;
        let mut own = Vec::with_capacity(p.len());
        let (mut offset, mut timestamp) = (0u64, 0i64);
        let mut columns = 0;
        for r in &package.records {
            own.extend_from_slice(&r.body);
            let delta = r.timestamp_ns.wrapping_sub(timestamp);
            let zigzag = ((delta << 1) ^ (delta >> 63)) as u64;
            let o = varint_len(r.offset.wrapping_sub(offset));
            let t = varint_len(zigzag);
            let l = varint_len(r.body.len() as u64);
            let c = 1 + varint_len(u64::from(r.flags.0)) + varint_len(r.fields.len() as u64);
            shape.offsets += o;
            shape.timestamps += t;
            shape.body_lens += l;
            shape.constant += c;
            columns += o + t + l + c;
            (offset, timestamp) = (r.offset, r.timestamp_ns);
        }
        shape.records += package.records.len() as u64;
        shape.payload += p.len() as u64;
        shape.bodies += own.len() as u64;
        shape.rest += p.len() as u64 - own.len() as u64 - columns;
        bodies.push(own);
    }
    Ok((bodies, shape))
}

/// Compresses every payload `runs` times; returns payload bytes, compressed bytes and
/// the least CPU time of a pass. Every block is checked to decompress, with the store's
/// reader, to its payload.
fn measure(
    compressor: Compressor,
    payloads: &[Vec<u8>],
    runs: usize,
) -> anyhow::Result<(u64, u64, Duration)> {
    let mut out = Vec::new();
    let mut back = Vec::new();
    let mut scratch = Vec::new();
    let mut table = lz4_flex::block::CompressTable::default();
    let mut compressed = 0u64;
    for p in payloads {
        compressor.compress_all(p, &mut out, &mut scratch, &mut table)?;
        decompress_all(compressor, &out, &mut back)
            .with_context(|| format!("{} wrote a block lz4_flex cannot read", compressor.name()))?;
        if back != *p {
            bail!("{}: a block did not round-trip", compressor.name());
        }
        compressed += out.len() as u64;
    }
    let mut best = Duration::MAX;
    for _ in 0..runs.max(1) {
        let start = thread_cpu();
        for p in payloads {
            compressor.compress_all(p, &mut out, &mut scratch, &mut table)?;
            std::hint::black_box(&out);
        }
        best = best.min(thread_cpu().saturating_sub(start));
    }
    let total = payloads.iter().map(|p| p.len() as u64).sum();
    Ok((total, compressed, best))
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: timespec is plain old data; zeroed is a valid value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Measured {
    fn per_gb_payload(&self) -> f64 {
        self.cpu.as_secs_f64() / (self.payload_bytes as f64 / 1e9)
    }
    fn per_gb_input(&self) -> f64 {
        self.cpu.as_secs_f64() / (self.input_bytes as f64 / 1e9)
    }
    fn ratio(&self) -> f64 {
        self.payload_bytes as f64 / self.compressed_bytes.max(1) as f64
    }
}

fn text(m: &Measured) -> String {
    format!(
        "{}, {}, {}: {:.3} CPU s per GB of payload, {:.3} per GB of input, {:.0} MB/s, ratio {:.2}",
        m.input,
        m.blocks,
        m.compressor.name(),
        m.per_gb_payload(),
        m.per_gb_input(),
        crate::mb_per_s(m.payload_bytes, m.cpu),
        m.ratio()
    )
}

fn markdown(results: &[Measured], size_mb: u64, runs: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| input ({size_mb} MiB) | blocks | compressor (best of {runs}) | CPU s per GB of payload | CPU s per GB of input | payload MB/s per core | payload ÷ compressed | CPU ÷ `lz4_flex`, same blocks |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|");
    for m in results {
        let flex = results
            .iter()
            .find(|f| {
                f.input == m.input && f.blocks == m.blocks && f.compressor == Compressor::Flex
            })
            .map(|f| f.cpu.as_secs_f64());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {:.3} | {:.0} | {:.2} | {} |",
            m.input,
            m.blocks,
            m.compressor.name(),
            m.per_gb_payload(),
            m.per_gb_input(),
            crate::mb_per_s(m.payload_bytes, m.cpu),
            m.ratio(),
            flex.map_or("—".into(), |f| format!("{:.2}", m.cpu.as_secs_f64() / f)),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C library's blocks, with the size prefix, are read by the store's reader
    /// (`lz4_flex`) at every acceleration: the store format would stay readable.
    #[test]
    fn c_liblz4_blocks_are_read_by_the_stores_decoder() {
        let mut payload = Vec::new();
        for i in 0..20_000u32 {
            payload.extend_from_slice(format!("line {i} of some log text {}\n", i % 7).as_bytes());
        }
        let (mut scratch, mut table) = (Vec::new(), lz4_flex::block::CompressTable::default());
        for c in [
            Compressor::Flex,
            Compressor::C(1),
            Compressor::C(8),
            Compressor::FlexPieces,
            Compressor::CPieces,
        ] {
            let mut out = Vec::new();
            c.compress_all(&payload, &mut out, &mut scratch, &mut table)
                .unwrap();
            assert!(out.len() < payload.len() / 2, "{c:?}");
            let mut back = Vec::new();
            decompress_all(c, &out, &mut back).unwrap();
            assert_eq!(back, payload, "{c:?}");
        }
        // The payload is over 64 KiB: the piece compressors wrote several blocks.
        assert!(payload.len() > 2 * PIECE);
    }

    #[test]
    fn varint_lengths_match_leb128() {
        for (v, len) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(v), len, "{v}");
        }
    }

    #[test]
    fn a_damaged_segment_is_an_error() {
        assert!(segment_payloads(b"LTBK too short").is_err());
        assert!(segment_payloads(&[0u8; 200]).is_err());
        assert!(segment_payloads(&[]).unwrap().is_empty());
    }
}

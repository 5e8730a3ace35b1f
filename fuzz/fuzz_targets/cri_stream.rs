//! The capture repair path: a container stream read back by offset from its CRI log
//! files (`logtap::capture::read_cri_stream`: a `CriStreamReader` driven as the stage
//! drives it), across a rotated family of files.
//!
//! Input: a selector byte (the stream; where the data is cut into an older rotated
//! file, a newer rotated file and the live `0.log`), four requested ranges (a gap
//! byte and a 16-bit length each, moving forward as the repair path's requests do),
//! then the log bytes. Besides "never panics": each request hands out runs inside its
//! range, in order, without gaps, exactly as far as it says it reached.

#![no_main]

use libfuzzer_sys::fuzz_target;
use logtap::capture::read_cri_stream;
use logtap::frame::Stream;

const HEADER: usize = 1 + 4 * 3;

#[path = "common/scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let Some((header, log)) = data.split_first_chunk::<HEADER>() else {
        return;
    };
    let sel = header[0];
    let stream = if sel & 1 == 0 {
        Stream::Stdout
    } else {
        Stream::Stderr
    };
    // Cut points, in eighths of the data: the family is written oldest first.
    let cut1 = log.len() * usize::from((sel >> 1) & 7) / 8;
    let cut2 = cut1 + (log.len() - cut1) * usize::from(sel >> 5) / 8;
    let dir = scratch::dir("cri");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("fuzz scratch directory");
    let live = dir.join("0.log");
    let family = [
        (dir.join("0.log.20261121-104531"), &log[..cut1]),
        (dir.join("0.log.20261121-104532"), &log[cut1..cut2]),
        (live.clone(), &log[cut2..]),
    ];
    for (path, bytes) in family {
        std::fs::write(path, bytes).expect("write scratch log");
    }

    let mut ranges = Vec::with_capacity(4);
    let mut at = 0u64;
    for r in header[1..].chunks_exact(3) {
        let from = at + u64::from(r[0]);
        let to = from + u64::from(u16::from_le_bytes([r[1], r[2]]));
        ranges.push((from, to));
        at = to;
    }
    let reads = read_cri_stream(&live, stream, &ranges).expect("reading the scratch logs");
    for ((from, to), read) in ranges.into_iter().zip(reads) {
        assert!(
            read.reached <= to,
            "reached {} past the request's end {to}",
            read.reached
        );
        let mut next = from;
        for (offset, bytes) in &read.runs {
            assert_eq!(
                *offset, next,
                "a run out of order or after a gap in [{from}, {to})"
            );
            assert!(!bytes.is_empty(), "an empty run");
            next = offset + bytes.len() as u64;
            assert!(next <= to, "a run past the request's end {to}");
        }
        assert_eq!(
            next,
            read.reached.max(from),
            "handed out up to {next}, said {}",
            read.reached
        );
    }
});

//! The store's segment scanner ([`scan_segment`], both modes) and block reader
//! ([`read_block`]) on arbitrary segment files.
//!
//! Input: a selector byte, then the segment's bytes. Selector bit 0 set: before the
//! scan, each block header found (at the start, then at each `LTBK` after a block)
//! gets the format version, a compressed length that fits the file, and correct
//! payload and header CRCs (the layout documented in `sink/store/segment.rs`), so the
//! fuzzer reaches the payload decoder instead of stopping at a checksum. Besides
//! "never panics": the blocks a scan reports are in order, disjoint, inside the file,
//! and the length a torn tail would be cut to keeps every one of them.

#![no_main]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use logtap::sink::store::segment::{HEADER_LEN, MAGIC, ScanMode, read_block, scan_segment};

/// One in-memory file per process, rewritten for every input.
static FILE: Mutex<Option<File>> = Mutex::new(None);

fn memfd() -> File {
    // SAFETY: plain syscall with a NUL-terminated name; the fd is owned right away.
    let fd = unsafe { libc::memfd_create(c"logtap-fuzz-segment".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd nobody else owns.
    unsafe { File::from_raw_fd(fd) }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Makes every block header along the chain of blocks valid (see the module doc).
fn fix_checksums(seg: &mut [u8]) {
    let mut pos = 0;
    while pos + HEADER_LEN <= seg.len() {
        if seg[pos..pos + 4] != MAGIC {
            match seg[pos + 1..].windows(4).position(|w| w == MAGIC) {
                Some(i) => pos += 1 + i,
                None => return,
            }
            continue;
        }
        let room = seg.len() - pos - HEADER_LEN;
        let compressed_len = (le_u32(seg, pos + 8) as usize).min(room);
        let h = &mut seg[pos..];
        h[4..6].copy_from_slice(&1u16.to_le_bytes());
        h[6..8].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        h[8..12].copy_from_slice(&(compressed_len as u32).to_le_bytes());
        let payload_crc = crc32fast::hash(&h[HEADER_LEN..HEADER_LEN + compressed_len]);
        h[72..76].copy_from_slice(&payload_crc.to_le_bytes());
        let header_crc = crc32fast::hash(&h[..76]);
        h[76..80].copy_from_slice(&header_crc.to_le_bytes());
        pos += HEADER_LEN + compressed_len;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut segment = rest.to_vec();
    if sel & 1 == 1 {
        fix_checksums(&mut segment);
    }
    let mut slot = FILE.lock().expect("one fuzzing thread");
    let file = slot.get_or_insert_with(memfd);
    file.set_len(0).expect("truncate memfd");
    file.write_all_at(&segment, 0).expect("write memfd");
    let len = segment.len() as u64;

    let mut compressed = Vec::new();
    for mode in [ScanMode::VerifyPayloads, ScanMode::HeadersOnly] {
        let scan = scan_segment(file, len, mode).expect("reading a memfd");
        let mut end = 0;
        for block in &scan.blocks {
            assert!(
                block.position >= end,
                "{mode:?}: blocks overlap or are out of order"
            );
            end = block.position + block.header.block_len();
            assert!(end <= len, "{mode:?}: a block past the end of the file");
            // Damaged payloads are reported when read; decoding must never panic.
            let _ = read_block(file, block, &mut compressed);
        }
        assert!(
            scan.valid_len <= len,
            "{mode:?}: valid length past the end of the file"
        );
        assert!(
            scan.valid_len >= end,
            "{mode:?}: cutting the tail would cut a block"
        );
        assert_eq!(
            scan.tail.is_none(),
            scan.valid_len == len,
            "{mode:?}: {scan:?}"
        );
    }
});

//! The checkpoint loader ([`Registry::open`]) on arbitrary checkpoint files.
//!
//! Input: a selector byte, then the file. Bit 0 set: the rest is the archive body and
//! the target wraps it in the file's envelope (magic `LTCK`, CRC32 of the body, as
//! `checkpoint/mod.rs` writes it), so the fuzzer reaches the rkyv archive instead of
//! stopping at the CRC; clear: the bytes are the whole file. Bit 1: written as the tmp
//! file a crash left (tried first), else as the main file. Besides "never panics" (a
//! corrupt table starts over, it must never stop the agent): every loaded entry has
//! `size >= offset` and is found by its identity, and what loaded persists and loads
//! back the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use logtap::checkpoint::{FileCheckpoint, Registry};
#[path = "common/scratch.rs"]
mod scratch;

fn sorted(mut entries: Vec<FileCheckpoint>) -> Vec<FileCheckpoint> {
    entries.sort_by_key(|e| (e.identity.dev, e.identity.inode));
    entries
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let dir = scratch::dir("checkpoint");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("fuzz scratch directory");
    let file = match sel & 1 {
        0 => rest.to_vec(),
        _ => {
            let mut file = b"LTCK".to_vec();
            file.extend_from_slice(&crc32fast::hash(rest).to_le_bytes());
            file.extend_from_slice(rest);
            file
        }
    };
    let name = match sel & 2 {
        0 => "checkpoints.rkyv",
        _ => "checkpoints.rkyv.tmp",
    };
    std::fs::write(dir.join(name), &file).expect("write scratch checkpoint");

    let registry = Registry::open(dir).expect("a corrupt table is set aside, not an error");
    let loaded = sorted(registry.snapshot());
    for e in &loaded {
        assert!(
            e.size >= e.offset,
            "size {} below offset {}",
            e.size,
            e.offset
        );
        assert_eq!(
            registry.lookup(e.identity.dev, e.identity.inode).as_ref(),
            Some(e)
        );
    }
    if loaded.is_empty() {
        return;
    }
    registry
        .persist()
        .expect("persist to the scratch directory");
    drop(registry);
    let again = Registry::open(dir).expect("reopen");
    assert_eq!(
        sorted(again.snapshot()),
        loaded,
        "a loaded table did not persist as loaded"
    );
});

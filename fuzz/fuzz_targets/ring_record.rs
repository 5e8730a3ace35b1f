//! The ring record decoder (`logtap::capture::probe::parse`, what `Probes::poll`
//! applies to every ring buffer item) and the reassembly of the data records it
//! yields into ordered streams (`logtap::capture::reassemble_stream`).
//!
//! Input: a sequence of ring items, each a 16-bit length then its bytes (the
//! records of `agent-ebpf/common`: a `u32` kind, then a `DataHeader` and payload or a
//! `LifecycleRecord`). Besides "never panics": a decoded record's slices lie inside
//! its item as long as their header says; the data records' offsets, whatever they
//! claim, come out of reassembly contiguous, each stream byte handed on once and at
//! its own offset. (Reassembly gets bytes made from their offsets, so a byte handed
//! on at the wrong offset shows.)

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use logtap::capture::probe::parse;
use logtap::capture::{ProbeEvent, reassemble_stream};
use logtap_ebpf_common::{DataHeader, PATH_CAPACITY};

const START: u64 = 0;
const MAX_PENDING: usize = 4096;

fn byte_at(offset: u64) -> u8 {
    (offset % 251) as u8
}

fn inside(item: &[u8], part: &[u8]) -> bool {
    let range = item.as_ptr_range();
    part.is_empty() || (range.start <= part.as_ptr() && part.as_ptr_range().end <= range.end)
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut records = Vec::new();
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_le_bytes(*len)).min(tail.len());
        let (item, tail) = tail.split_at(len);
        rest = tail;
        match parse(item) {
            Some(ProbeEvent::Data { offset, bytes, .. }) => {
                let at = std::mem::offset_of!(DataHeader, len);
                let declared = u32::from_le_bytes(item[at..at + 4].try_into().expect("4 bytes"));
                assert_eq!(
                    bytes.len(),
                    declared as usize,
                    "payload length not the header's"
                );
                assert!(inside(item, bytes), "payload outside its record");
                let regenerated: Vec<u8> = (0..bytes.len() as u64)
                    .map_while(|i| offset.checked_add(i).map(byte_at))
                    .collect();
                records.push((offset, Bytes::from(regenerated)));
            }
            Some(
                ProbeEvent::CgroupCreated { path, .. }
                | ProbeEvent::CgroupRemoved { path, .. }
                | ProbeEvent::Exec { filename: path, .. },
            ) => {
                assert!(path.len() <= PATH_CAPACITY && inside(item, path));
            }
            Some(ProbeEvent::StreamBound { .. } | ProbeEvent::Exit { .. }) | None => {}
        }
    }
    let mut next = START;
    for (offset, bytes) in reassemble_stream(START, MAX_PENDING, records) {
        assert!(
            offset >= next,
            "run at {offset} repeats bytes before {next}"
        );
        for (i, &b) in bytes.iter().enumerate() {
            assert_eq!(
                b,
                byte_at(offset + i as u64),
                "byte at {} moved",
                offset + i as u64
            );
        }
        next = offset + bytes.len() as u64;
    }
});

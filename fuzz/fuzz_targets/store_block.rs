//! The store's block decoder: lz4 decompression ([`codec::decompress`]) and payload
//! decoding ([`codec::decode_package`], every payload version), as the store, the
//! spools and the forwarders read what they wrote.
//!
//! Input: a selector byte, then a block. Bit 0 set: a compressed block (a 4-byte size,
//! then lz4), decompressed then decoded; clear: a payload, decoded as is. Besides
//! "never panics": a payload that decodes still decodes the same after a compression
//! round trip, and every decoded body, key and value is a slice of the payload.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use logtap::batch::codec;

fn decode_checked(payload: &Bytes) {
    let Ok(package) = codec::decode_package(payload) else {
        return;
    };
    let mut compressed = Vec::new();
    codec::compress(payload, &mut compressed);
    let mut back = Vec::new();
    codec::decompress(&compressed, &mut back).expect("our own compression decompresses");
    assert_eq!(back, payload.as_ref(), "lz4 round trip changed the payload");
    let again = codec::decode_package(&Bytes::from(back)).expect("decoded once, decodes again");
    assert_eq!(again, package, "the same payload decoded differently");
    let in_payload = |b: &Bytes| b.is_empty() || payload.as_ptr_range().contains(&b.as_ptr());
    for (k, v) in &package.source_fields {
        assert!(
            in_payload(k) && in_payload(v),
            "a source field outside the payload"
        );
    }
    for r in &package.records {
        assert!(in_payload(&r.body), "a body outside the payload");
        for (k, v) in &r.fields {
            assert!(
                in_payload(k) && in_payload(v),
                "a field outside the payload"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        decode_checked(&Bytes::copy_from_slice(rest));
        return;
    }
    let mut payload = Vec::new();
    if codec::decompress(rest, &mut payload).is_ok() {
        decode_checked(&Bytes::from(payload));
    }
});

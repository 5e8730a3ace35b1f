//! CRI, docker and raw line decoding with partial reassembly and multiline grouping
//! ([`Framer`]), fed the way a file source feeds it: in chunks, then finished, or
//! carried over to a rotated file's successor.
//!
//! Input: a selector byte (format, `max_line_bytes`, multiline and its `max_lines`), a
//! chunk-size byte, then the file's bytes. Besides "never panics" it checks what the
//! framer promises: chunking changes nothing, the resume offset stays inside the data,
//! no record outgrows its bound, and no more records come out than physical lines went in.

#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use logtap::config::{Format, MultilineConfig};
use logtap::frame::{Body, Framed, Framer, LineFlags, Record};
use regex::bytes::Regex;

const BASE: u64 = 1_000;
const READ_NS: i64 = 1_700_000_000_000_000_000;
/// Above any envelope slack the framer allows a MALFORMED physical line (docker's
/// 128 KiB minimum physical line plus its slack).
const MALFORMED_BOUND: usize = 256 * 1024;

struct Setup {
    format: Format,
    max: usize,
    multiline: Option<MultilineConfig>,
}

impl Setup {
    fn new(sel: u8) -> Setup {
        let format = [Format::Raw, Format::Cri, Format::Docker, Format::Cri][usize::from(sel & 3)];
        let max = [8, 64, 1024, 16 * 1024][usize::from((sel >> 2) & 3)];
        let multiline = (sel & 0x10 != 0).then(|| MultilineConfig {
            // A Java-style start: a line not beginning with blank space.
            start: Regex::new(r"^\S").expect("valid").into(),
            flush_timeout: Duration::from_secs(5),
            max_lines: usize::from(sel >> 5) + 1,
        });
        Setup {
            format,
            max,
            multiline,
        }
    }

    fn framer(&self, start: u64) -> Framer {
        Framer::new(self.format, self.max, self.multiline.clone(), start)
    }

    /// Frames `chunks` and finishes; returns the records and the resume offset seen
    /// after the last push.
    fn run<'a>(&self, chunks: impl Iterator<Item = &'a [u8]>, len: usize) -> (Vec<Record>, u64) {
        let mut f = self.framer(BASE);
        let mut out = Vec::new();
        let now = Instant::now();
        for c in chunks {
            let chunk = Bytes::copy_from_slice(c);
            // Spans of different chunkings differ; their bytes must not.
            collect(&mut out, |o| f.push(&chunk, READ_NS, now, o));
            let resume = f.resume_offset();
            assert!(
                (BASE..=BASE + len as u64).contains(&resume),
                "resume offset {resume} outside the data [{BASE}, {}]",
                BASE + len as u64
            );
        }
        let resume = f.resume_offset();
        collect(&mut out, |o| f.finish(o));
        (out, resume)
    }

    /// `cuts`: places the input was cut other than at a newline (each may split a
    /// physical line in two).
    fn check_bounds(&self, lines: &[Record], input: &[u8], cuts: usize) {
        let physical = input.split(|&b| b == b'\n').count() + cuts;
        assert!(
            lines.len() <= physical,
            "{} records from {physical} lines",
            lines.len()
        );
        for l in lines {
            let bound = match l.flags.contains(LineFlags::MALFORMED) {
                true => MALFORMED_BOUND,
                false => self.max,
            };
            assert!(
                l.body.len() <= bound,
                "a {}-byte body over max {}",
                l.body.len(),
                self.max
            );
        }
    }
}

/// Runs one framer call into `out`, its lines made records of their own bodies.
fn collect(out: &mut Vec<Record>, call: impl FnOnce(&mut logtap::frame::Out)) {
    let mut framed = Framed::default();
    call(&mut framed.out());
    out.extend(framed.lines.iter().map(|l| Record {
        offset: l.offset,
        timestamp_ns: l.timestamp_ns,
        stream: l.stream,
        flags: l.flags,
        body: Body::Owned(l.body.to_bytes(&framed.chunks)),
    }));
}

fuzz_target!(|data: &[u8]| {
    let Some((&[sel, chunk], input)) = data.split_first_chunk::<2>() else {
        return;
    };
    let setup = Setup::new(sel);
    let (whole, whole_resume) = setup.run(std::iter::once(input), input.len());
    setup.check_bounds(&whole, input, 0);
    let (chunked, chunked_resume) = setup.run(input.chunks(usize::from(chunk) + 1), input.len());
    assert_eq!(whole, chunked, "chunking changed the records");
    assert_eq!(
        whole_resume, chunked_resume,
        "chunking changed the resume offset"
    );

    // A rotation in the middle: the first half's open records carried to the successor,
    // with time passing so partial and multiline timeouts fire.
    let (first, second) = input.split_at(input.len() / 2);
    let now = Instant::now();
    let mut out = Vec::new();
    let mut old = setup
        .framer(BASE)
        .with_partial_timeout(Duration::from_secs(1));
    collect(&mut out, |o| {
        old.push(&Bytes::copy_from_slice(first), READ_NS, now, o)
    });
    let carry = old.take_carry();
    collect(&mut out, |o| old.finish(o));
    let mut new = setup.framer(0).with_partial_timeout(Duration::from_secs(1));
    if let Some(carry) = carry {
        new.accept_carry(carry);
    }
    for (i, c) in second.chunks(usize::from(chunk) + 1).enumerate() {
        let later = now + Duration::from_secs(i as u64);
        collect(&mut out, |o| {
            new.push(&Bytes::copy_from_slice(c), READ_NS, later, o)
        });
        collect(&mut out, |o| new.flush_idle(later, o));
    }
    collect(&mut out, |o| new.finish(o));
    setup.check_bounds(&out, input, 1);
});

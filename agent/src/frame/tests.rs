//! Tests of the whole framer: formats, reassembly, multiline, resume offsets, carry,
//! and property tests over random chunkings.

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use regex::bytes::Regex;

use super::*;
use crate::config::{Format, MultilineConfig};

const READ_NS: i64 = 42;
const TS: &str = "2026-11-21T10:45:31.210111144Z";
const TS_NS: i64 = 1_795_257_931_210_111_144;

fn ml(start: &str, max_lines: usize) -> Option<MultilineConfig> {
    Some(MultilineConfig {
        start: Regex::new(start).unwrap().into(),
        flush_timeout: Duration::from_secs(1),
        max_lines,
    })
}

/// [`Framer::push`], the lines made records of their own bodies to compare them with
/// expected bytes.
fn push(f: &mut Framer, chunk: Bytes, read_time_ns: i64, now: Instant, out: &mut Vec<Record>) {
    let mut framed = Framed::default();
    f.push(&chunk, read_time_ns, now, &mut framed.out());
    out.extend(records(framed));
}

/// [`Framer::finish`] into `out`, as [`push`] does.
fn finish(f: &mut Framer, out: &mut Vec<Record>) {
    let mut framed = Framed::default();
    f.finish(&mut framed.out());
    out.extend(records(framed));
}

/// [`Framer::flush_expired`] into `out`, as [`push`] does.
fn flush_expired(f: &mut Framer, now: Instant, out: &mut Vec<Record>) {
    let mut framed = Framed::default();
    f.flush_expired(now, &mut framed.out());
    out.extend(records(framed));
}

/// [`Framer::flush_idle`] into `out`, as [`push`] does.
fn flush_idle(f: &mut Framer, now: Instant, out: &mut Vec<Record>) {
    let mut framed = Framed::default();
    f.flush_idle(now, &mut framed.out());
    out.extend(records(framed));
}

/// The lines of `framed` as records whose bodies are bytes of their own.
fn records(framed: Framed) -> Vec<Record> {
    framed
        .lines
        .iter()
        .map(|l| Record {
            offset: l.offset,
            timestamp_ns: l.timestamp_ns,
            stream: l.stream,
            flags: l.flags,
            body: Body::Owned(l.body.to_bytes(&framed.chunks)),
        })
        .collect()
}

/// Pushes `chunks` then finishes; returns (records before finish, all records).
fn frame(
    format: Format,
    max: usize,
    multiline: Option<MultilineConfig>,
    start: u64,
    chunks: &[&[u8]],
) -> (Vec<Record>, Vec<Record>) {
    let mut f = Framer::new(format, max, multiline, start);
    let mut out = Vec::new();
    let now = Instant::now();
    for c in chunks {
        push(&mut f, Bytes::copy_from_slice(c), READ_NS, now, &mut out);
    }
    let pushed = out.clone();
    finish(&mut f, &mut out);
    (pushed, out)
}

fn bodies(lines: &[Record]) -> Vec<&[u8]> {
    lines.iter().map(|l| l.body.get(NO_CHUNKS)).collect()
}

fn rec(offset: u64, ts: i64, stream: Stream, flags: LineFlags, body: &[u8]) -> Record {
    Record {
        offset,
        timestamp_ns: ts,
        stream,
        flags,
        body: Bytes::copy_from_slice(body).into(),
    }
}

fn cri(stream: &str, tag: &str, msg: &str) -> String {
    format!("{TS} {stream} {tag} {msg}\n")
}

fn docker(stream: &str, log: &str) -> String {
    format!(
        r#"{{"log":{},"stream":"{stream}","time":"{TS}"}}"#,
        serde_json::to_string(log).unwrap()
    ) + "\n"
}

const NONE: LineFlags = LineFlags(0);

// ---------------------------------------------------------------- raw

#[test]
fn raw_lines_offsets_and_timestamps() {
    let (pushed, all) = frame(
        Format::Raw,
        64,
        None,
        100,
        &[b"one\r\ntwo\n\nthr", b"ee\nfour"],
    );
    assert_eq!(
        pushed,
        vec![
            rec(100, READ_NS, Stream::None, NONE, b"one"),
            rec(105, READ_NS, Stream::None, NONE, b"two"),
            rec(109, READ_NS, Stream::None, NONE, b""),
            rec(110, READ_NS, Stream::None, NONE, b"three"),
        ]
    );
    assert_eq!(
        all[4..],
        [rec(
            116,
            READ_NS,
            Stream::None,
            LineFlags::UNTERMINATED,
            b"four"
        )]
    );
}

#[test]
fn raw_lines_are_spans_of_the_chunk() {
    let chunk = Bytes::from(b"alpha\nbeta\ngamma\n".to_vec());
    let mut f = Framer::new(Format::Raw, 64, None, 0);
    let mut out = Framed::default();
    f.push(&chunk, READ_NS, Instant::now(), &mut out.out());
    let spans: Vec<Span> = out.lines.iter().map(|l| l.body).collect();
    assert_eq!(spans, [span(0, 5), span(6, 4), span(11, 5)]);
}

fn span(start: u32, len: u32) -> Span {
    Span {
        chunk: 0,
        start,
        len,
    }
}

#[test]
fn resume_offset_tracks_the_unterminated_line() {
    let mut f = Framer::new(Format::Raw, 64, None, 1000);
    let mut out = Vec::new();
    let now = Instant::now();
    assert_eq!(f.resume_offset(), 1000);
    push(
        &mut f,
        Bytes::from_static(b"ab\ncd"),
        READ_NS,
        now,
        &mut out,
    );
    assert_eq!(f.resume_offset(), 1003);
    push(&mut f, Bytes::from_static(b"ef"), READ_NS, now, &mut out);
    assert_eq!(f.resume_offset(), 1003);
    push(&mut f, Bytes::from_static(b"\n"), READ_NS, now, &mut out);
    assert_eq!(f.resume_offset(), 1008);
    assert_eq!(bodies(&out), [&b"ab"[..], b"cdef"]);
    push(&mut f, Bytes::from_static(b"tail"), READ_NS, now, &mut out);
    finish(&mut f, &mut out);
    assert_eq!(f.resume_offset(), 1012);
}

#[test]
fn ten_megabyte_line_is_truncated_in_bounded_memory() {
    let max = 1 << 20;
    let mut f = Framer::new(Format::Raw, max, None, 0);
    let mut out = Vec::new();
    let now = Instant::now();
    push(
        &mut f,
        Bytes::from_static(b"before\n"),
        READ_NS,
        now,
        &mut out,
    );
    let piece = Bytes::from(vec![b'x'; 256 * 1024]);
    for _ in 0..40 {
        push(&mut f, piece.clone(), READ_NS, now, &mut out);
        assert!(f.buffered_line_bytes() <= max + 1);
    }
    assert_eq!(f.resume_offset(), 7);
    push(
        &mut f,
        Bytes::from_static(b"y\r\nafter\n"),
        READ_NS,
        now,
        &mut out,
    );
    assert_eq!(out.len(), 3);
    assert_eq!(out[1].offset, 7);
    assert_eq!(out[1].body.len(), max);
    assert_eq!(out[1].flags, LineFlags::TRUNCATED);
    assert_eq!(
        out[2],
        rec(
            7 + 40 * 256 * 1024 + 3,
            READ_NS,
            Stream::None,
            NONE,
            b"after"
        )
    );
    // A long line inside one chunk is a slice; nothing is buffered.
    let mut big = vec![b'z'; 3 * max];
    big.push(b'\n');
    out.clear();
    push(&mut f, Bytes::from(big), READ_NS, now, &mut out);
    assert_eq!(
        (out[0].body.len(), out[0].flags),
        (max, LineFlags::TRUNCATED)
    );
    assert_eq!(f.buffered_line_bytes(), 0);
}

#[test]
fn invalid_utf8_and_nul_pass_through() {
    let input: &[u8] = b"\xff\xfe\0bin\n\xc3(\n";
    let (_, raw) = frame(Format::Raw, 64, None, 0, &[input]);
    assert_eq!(bodies(&raw), [&b"\xff\xfe\0bin"[..], b"\xc3("]);
    assert!(raw.iter().all(|l| l.flags == NONE));

    let mut line = format!("{TS} stdout F ").into_bytes();
    line.extend_from_slice(b"\0\xff\xfe\n");
    let (_, c) = frame(Format::Cri, 64, None, 0, &[&line]);
    assert_eq!(c, vec![rec(0, TS_NS, Stream::Stdout, NONE, b"\0\xff\xfe")]);
}

// ---------------------------------------------------------------- CRI

#[test]
fn cri_full_record_is_a_span() {
    let chunk = Bytes::from(cri("stdout", "F", "hello").into_bytes());
    let mut f = Framer::new(Format::Cri, 64, None, 0);
    let mut out = Framed::default();
    f.push(&chunk, READ_NS, Instant::now(), &mut out.out());
    let expected = Line {
        offset: 0,
        timestamp_ns: TS_NS,
        body: span(TS.len() as u32 + 10, 5),
        stream: Stream::Stdout,
        flags: NONE,
    };
    assert_eq!(out.lines, vec![expected]);
}

#[test]
fn cri_partials_reassemble_per_stream() {
    let lines = [
        cri("stdout", "P", "out-1 "),
        cri("stderr", "P", "err-1 "),
        "garbage line\n".to_string(),
        cri("stdout", "P", "out-2 "),
        cri("stderr", "F", "err-2"),
        cri("stdout", "F", "out-3"),
    ];
    let input = lines.concat();
    let offsets: Vec<u64> = lines
        .iter()
        .scan(0u64, |o, l| {
            let here = *o;
            *o += l.len() as u64;
            Some(here)
        })
        .collect();
    let mut f = Framer::new(Format::Cri, 64, None, 0);
    let mut out = Vec::new();
    let now = Instant::now();
    // One byte at a time: every line straddles chunks.
    for (i, b) in input.bytes().enumerate() {
        push(&mut f, Bytes::copy_from_slice(&[b]), READ_NS, now, &mut out);
        if i + 1 == (offsets[4] as usize) {
            assert_eq!(f.resume_offset(), offsets[0], "stdout P still open");
        }
    }
    assert_eq!(
        out,
        vec![
            rec(
                offsets[2],
                READ_NS,
                Stream::None,
                LineFlags::MALFORMED,
                b"garbage line"
            ),
            rec(
                offsets[1],
                TS_NS,
                Stream::Stderr,
                LineFlags::REASSEMBLED,
                b"err-1 err-2"
            ),
            rec(
                offsets[0],
                TS_NS,
                Stream::Stdout,
                LineFlags::REASSEMBLED,
                b"out-1 out-2 out-3"
            ),
        ]
    );
    assert_eq!(f.resume_offset(), input.len() as u64);
}

#[test]
fn cri_timestamp_of_first_fragment_and_offsets() {
    let input = "2026-11-21T10:45:31Z stdout P a\n2026-11-21T10:45:32Z stdout F b\n\
                 2026-11-21T12:45:33+02:00 stderr F c\n";
    let (_, out) = frame(Format::Cri, 64, None, 10, &[input.as_bytes()]);
    let t0 = parse_rfc3339_ns(b"2026-11-21T10:45:31Z").unwrap();
    assert_eq!(
        out,
        vec![
            rec(10, t0, Stream::Stdout, LineFlags::REASSEMBLED, b"ab"),
            rec(74, t0 + 2_000_000_000, Stream::Stderr, NONE, b"c"),
        ]
    );
}

#[test]
fn cri_malformed_lines_are_kept_raw() {
    let input = [
        cri("stdout", "P", "open "),
        "2026-13-01T00:00:00Z stdout F bad month\n".into(),
        format!("{TS} stdin F unknown stream\n"),
        format!("{TS} stdout\n"),
        "\u{0}\u{1}binary\n".into(),
        "\n".into(),
        cri("stdout", "F", "close"),
    ]
    .concat();
    let (_, out) = frame(Format::Cri, 64, None, 0, &[input.as_bytes()]);
    assert_eq!(out.len(), 6);
    for l in &out[..5] {
        assert_eq!(l.flags, LineFlags::MALFORMED);
        assert_eq!((l.stream, l.timestamp_ns), (Stream::None, READ_NS));
    }
    assert_eq!(
        out[0].body.get(NO_CHUNKS),
        b"2026-13-01T00:00:00Z stdout F bad month"
    );
    assert_eq!(out[3].body.get(NO_CHUNKS), b"\0\x01binary");
    assert_eq!(out[4].body.get(NO_CHUNKS), b"");
    assert_eq!(
        out[5],
        rec(
            0,
            TS_NS,
            Stream::Stdout,
            LineFlags::REASSEMBLED,
            b"open close"
        )
    );
}

#[test]
fn cri_reassembled_message_truncated_at_max() {
    let big = "x".repeat(100);
    let input = [
        cri("stdout", "P", &big),
        cri("stdout", "P", &big),
        cri("stdout", "F", "end"),
    ]
    .concat();
    let (_, out) = frame(Format::Cri, 150, None, 0, &[input.as_bytes()]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].body.len(), 150);
    assert_eq!(out[0].flags, LineFlags::TRUNCATED | LineFlags::REASSEMBLED);

    // A physical line far over the limit: its envelope still decodes.
    let huge = "y".repeat(10_000);
    let input = [cri("stderr", "F", &huge), cri("stderr", "F", "next")].concat();
    let (_, out) = frame(Format::Cri, 100, None, 0, &[input.as_bytes()]);
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].stream, out[0].flags),
        (Stream::Stderr, LineFlags::TRUNCATED)
    );
    assert_eq!(out[0].body.get(NO_CHUNKS), &huge.as_bytes()[..100]);
    assert_eq!(out[1].body.get(NO_CHUNKS), b"next");
}

#[test]
fn cri_finish_emits_open_partials_unterminated() {
    let input =
        [cri("stdout", "P", "a"), cri("stderr", "F", "e")].concat() + &format!("{TS} stdout P b");
    let (pushed, all) = frame(Format::Cri, 64, None, 0, &[input.as_bytes()]);
    assert_eq!(bodies(&pushed), [&b"e"[..]]);
    assert_eq!(
        all[1],
        rec(
            0,
            TS_NS,
            Stream::Stdout,
            LineFlags::REASSEMBLED | LineFlags::UNTERMINATED,
            b"ab"
        )
    );
}

// ---------------------------------------------------------------- docker

#[test]
fn docker_records_partials_and_escapes() {
    let lines = [
        docker("stdout", "part one "),
        docker("stderr", "err \"quoted\" <tag>\n"),
        docker("stdout", "part two\n"),
        "{not json\n".to_string(),
        docker("stdout", "tab\there é\r\n"),
    ];
    let input = lines.concat();
    let (_, out) = frame(Format::Docker, 64, None, 0, &[input.as_bytes()]);
    let second = lines[0].len() as u64;
    let fourth = second + (lines[1].len() + lines[2].len()) as u64;
    let fifth = fourth + lines[3].len() as u64;
    assert_eq!(
        out,
        vec![
            rec(second, TS_NS, Stream::Stderr, NONE, b"err \"quoted\" <tag>"),
            rec(
                0,
                TS_NS,
                Stream::Stdout,
                LineFlags::REASSEMBLED,
                b"part one part two"
            ),
            rec(
                fourth,
                READ_NS,
                Stream::None,
                LineFlags::MALFORMED,
                b"{not json"
            ),
            rec(fifth, TS_NS, Stream::Stdout, NONE, "tab\there é".as_bytes()),
        ]
    );
}

#[test]
fn docker_message_without_escapes_is_a_slice() {
    let chunk = Bytes::from(docker("stdout", "plain\n").into_bytes());
    let mut f = Framer::new(Format::Docker, 64, None, 0);
    let mut out = Vec::new();
    push(&mut f, chunk.clone(), READ_NS, Instant::now(), &mut out);
    let range = chunk.as_ptr() as usize..chunk.as_ptr() as usize + chunk.len();
    let Body::Owned(body) = &out[0].body else {
        panic!("docker messages are owned")
    };
    assert!(range.contains(&(body.as_ptr() as usize)));
}

#[test]
fn docker_16k_split_message() {
    let piece = "z".repeat(16 * 1024);
    let input = [
        docker("stdout", &piece),
        docker("stdout", &piece),
        docker("stdout", "!\n"),
    ]
    .concat();
    let (_, out) = frame(Format::Docker, 1 << 20, None, 0, &[input.as_bytes()]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].body.len(), 32 * 1024 + 1);
    assert_eq!(out[0].flags, LineFlags::REASSEMBLED);
    // With a small limit the message is cut, the line still decodes.
    let (_, out) = frame(Format::Docker, 100, None, 0, &[input.as_bytes()]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].body.len(), 100);
    assert_eq!(out[0].flags, LineFlags::REASSEMBLED | LineFlags::TRUNCATED);
}

// ---------------------------------------------------------------- multiline

const JAVA: &[u8] = b"2026-11-21 10:45:31 ERROR x failed\n\
\tat a.b(C.java:1)\n\
\tat c.d(E.java:2)\n\
Caused by: java.io.IOException: boom\n\
\t... 3 more\n\
2026-11-21 10:45:32 INFO next\n";

#[test]
fn java_stack_trace_is_two_records() {
    let start = r"^\d{4}-\d{2}-\d{2} ";
    let (pushed, all) = frame(Format::Raw, 1 << 20, ml(start, 500), 0, &[JAVA]);
    assert_eq!(pushed.len(), 1);
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[0].body.get(NO_CHUNKS),
        &JAVA[..JAVA.len() - "2026-11-21 10:45:32 INFO next\n".len() - 1]
    );
    assert_eq!(all[0].flags, LineFlags::MULTILINE);
    assert_eq!(all[0].offset, 0);
    assert_eq!(all[1].body.get(NO_CHUNKS), b"2026-11-21 10:45:32 INFO next");
    assert_eq!(all[1].flags, NONE);
    for size in 1..JAVA.len() {
        let chunks: Vec<&[u8]> = JAVA.chunks(size).collect();
        let (_, split) = frame(Format::Raw, 1 << 20, ml(start, 500), 0, &chunks);
        assert_eq!(split, all, "chunk size {size}");
    }
}

#[test]
fn multiline_resume_offset_is_the_open_record() {
    let mut f = Framer::new(Format::Raw, 1024, ml(r"^\d", 100), 0);
    let mut out = Vec::new();
    let now = Instant::now();
    push(
        &mut f,
        Bytes::from_static(b"pre\n1 a\n b\n c\n2 x"),
        READ_NS,
        now,
        &mut out,
    );
    assert_eq!(bodies(&out), [&b"pre"[..]]);
    assert_eq!(f.resume_offset(), 4);
    push(&mut f, Bytes::from_static(b"\n"), READ_NS, now, &mut out);
    assert_eq!(bodies(&out), [&b"pre"[..], b"1 a\n b\n c"]);
    assert_eq!(f.resume_offset(), 14);
}

#[test]
fn multiline_flush_timeout_through_framer() {
    let mut f = Framer::new(Format::Raw, 1024, ml(r"^S", 100), 0);
    let mut out = Vec::new();
    let t0 = Instant::now();
    push(
        &mut f,
        Bytes::from_static(b"S start\n more\n"),
        READ_NS,
        t0,
        &mut out,
    );
    flush_expired(&mut f, t0 + Duration::from_millis(999), &mut out);
    assert!(out.is_empty());
    assert_eq!(f.resume_offset(), 0);
    flush_expired(&mut f, t0 + Duration::from_secs(1), &mut out);
    assert_eq!(bodies(&out), [&b"S start\n more"[..]]);
    assert_eq!(f.resume_offset(), 14);
}

#[test]
fn multiline_over_cri_groups_per_stream() {
    let input = [
        cri("stdout", "F", "S out"),
        cri("stderr", "F", "S err"),
        cri("stdout", "P", " out-"),
        "junk\n".to_string(),
        cri("stderr", "F", " err-cont"),
        cri("stdout", "F", "cont"),
        cri("stdout", "F", "S next"),
    ]
    .concat();
    let (pushed, all) = frame(Format::Cri, 1024, ml("^S", 100), 0, &[input.as_bytes()]);
    assert_eq!(bodies(&pushed), [&b"junk"[..], b"S out\n out-cont"]);
    assert_eq!(
        pushed[1].flags,
        LineFlags::MULTILINE | LineFlags::REASSEMBLED
    );
    assert_eq!(bodies(&all[2..]), [&b"S err\n err-cont"[..], b"S next"]);
    assert_eq!(all[2].stream, Stream::Stderr);
}

#[test]
fn multiline_record_is_bounded_by_max_line_bytes() {
    let mut input = b"S start\n".to_vec();
    for _ in 0..1000 {
        input.extend_from_slice(b" continuation line\n");
    }
    let (_, out) = frame(Format::Raw, 64, ml("^S", 10_000), 0, &[&input]);
    assert_eq!(out.len(), 1);
    assert!(out[0].body.len() <= 64);
    assert_eq!(out[0].flags, LineFlags::MULTILINE | LineFlags::TRUNCATED);
}

// ---------------------------------------------------------------- carry

#[test]
fn cri_partial_continues_in_the_rotated_successor() {
    let now = Instant::now();
    let mut out = Vec::new();
    let mut old = Framer::new(Format::Cri, 1024, None, 0);
    let old_input = [
        cri("stdout", "F", "done"),
        cri("stdout", "P", "first half, "),
    ]
    .concat();
    push(
        &mut old,
        Bytes::from(old_input.clone().into_bytes()),
        READ_NS,
        now,
        &mut out,
    );
    assert_eq!(old.resume_offset(), cri("stdout", "F", "done").len() as u64);
    let carry = old.take_carry().expect("a partial is open");
    assert_eq!(
        carry.first_offset(),
        cri("stdout", "F", "done").len() as u64
    );
    assert_eq!(old.resume_offset(), old_input.len() as u64);
    finish(&mut old, &mut out);
    assert_eq!(bodies(&out), [&b"done"[..]]);
    assert!(old.take_carry().is_none());

    let mut new = Framer::new(Format::Cri, 1024, None, 0);
    new.accept_carry(carry);
    assert_eq!(new.resume_offset(), 0);
    push(
        &mut new,
        Bytes::from(cri("stdout", "F", "second half").into_bytes()),
        READ_NS,
        now,
        &mut out,
    );
    assert_eq!(
        out[1],
        rec(
            0,
            TS_NS,
            Stream::Stdout,
            LineFlags::REASSEMBLED,
            b"first half, second half"
        )
    );
}

#[test]
fn multiline_record_continues_in_the_rotated_successor() {
    let now = Instant::now();
    let mut out = Vec::new();
    let mut old = Framer::new(Format::Raw, 1024, ml("^S", 100), 0);
    push(
        &mut old,
        Bytes::from_static(b"S trace\n at x\n"),
        READ_NS,
        now,
        &mut out,
    );
    let carry = old.take_carry().unwrap();
    finish(&mut old, &mut out);
    assert!(out.is_empty());

    let mut new = Framer::new(Format::Raw, 1024, ml("^S", 100), 7);
    new.accept_carry(carry);
    assert_eq!(new.resume_offset(), 7);
    push(
        &mut new,
        Bytes::from_static(b" at y\nS next\n"),
        READ_NS,
        now,
        &mut out,
    );
    assert_eq!(bodies(&out), [&b"S trace\n at x\n at y"[..]]);
    assert_eq!(out[0].offset, 7);
    assert_eq!(new.resume_offset(), 13);
}

#[test]
fn carry_into_a_framer_without_multiline_is_emitted() {
    let now = Instant::now();
    let mut out = Vec::new();
    let mut old = Framer::new(Format::Raw, 1024, ml("^S", 100), 0);
    push(
        &mut old,
        Bytes::from_static(b"S trace\n at x\n"),
        READ_NS,
        now,
        &mut out,
    );
    let carry = old.take_carry().unwrap();
    let mut new = Framer::new(Format::Raw, 1024, None, 50);
    new.accept_carry(carry);
    assert_eq!(new.resume_offset(), 50);
    push(
        &mut new,
        Bytes::from_static(b"plain\n"),
        READ_NS,
        now,
        &mut out,
    );
    assert_eq!(bodies(&out), [&b"S trace\n at x"[..], b"plain"]);
    assert_eq!(new.resume_offset(), 56);
}

// ---------------------------------------------------------------- properties

/// Cuts `input` at `cuts` (sorted, deduplicated, in range).
fn chunked<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut chunks = Vec::new();
    let mut prev = 0;
    for c in cuts.into_iter().chain([input.len()]) {
        chunks.push(&input[prev..c]);
        prev = c;
    }
    chunks
}

/// Checks (a) chunking does not change the output and (c) after every push,
/// re-framing from `resume_offset` with a fresh framer yields the rest of the
/// records. `exact`: no duplicates and no orphan fragments allowed (no interleaving
/// of streams); otherwise records already emitted may repeat and tail fragments of
/// emitted messages may appear, but no record may be lost or altered.
fn check_chunking_and_resume(
    format: Format,
    max: usize,
    multiline: Option<MultilineConfig>,
    input: &[u8],
    cuts: &[usize],
    exact: bool,
) -> Result<(), TestCaseError> {
    const BASE: u64 = 1_000;
    let (one_pushed, full) = frame(format, max, multiline.clone(), BASE, &[input]);
    let chunks = chunked(input, cuts);
    let (pushed, all) = frame(format, max, multiline.clone(), BASE, &chunks);
    prop_assert_eq!(&pushed, &one_pushed);
    prop_assert_eq!(&all, &full);

    let mut f = Framer::new(format, max, multiline.clone(), BASE);
    let mut emitted = Vec::new();
    let now = Instant::now();
    for c in chunks {
        push(
            &mut f,
            Bytes::copy_from_slice(c),
            READ_NS,
            now,
            &mut emitted,
        );
        let resume = f.resume_offset();
        prop_assert!(resume >= BASE && resume <= BASE + input.len() as u64);
        let (_, rest) = frame(
            format,
            max,
            multiline.clone(),
            resume,
            &[&input[(resume - BASE) as usize..]],
        );
        let combined: Vec<Record> = if exact {
            emitted.iter().chain(&rest).cloned().collect()
        } else {
            let seen: std::collections::HashSet<u64> = emitted.iter().map(|l| l.offset).collect();
            let known: std::collections::HashSet<u64> = full.iter().map(|l| l.offset).collect();
            emitted
                .iter()
                .cloned()
                .chain(
                    rest.into_iter()
                        .filter(|l| !seen.contains(&l.offset) && known.contains(&l.offset)),
                )
                .collect()
        };
        prop_assert_eq!(&combined, &full, "resume at {}", resume);
    }
    Ok(())
}

/// Raw lines from a small alphabet with CR, NUL and invalid UTF-8.
fn raw_input() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            6 => Just(b'a'),
            2 => Just(b'S'),
            1 => Just(b' '),
            3 => Just(b'\n'),
            1 => Just(b'\r'),
            1 => Just(0u8),
            1 => Just(0xffu8),
        ],
        0..300,
    )
}

/// The raw framing model: split at `\n`, strip one `\r`, cut at `max`.
fn raw_model(input: &[u8], max: usize, base: u64) -> Vec<Record> {
    let mut out = Vec::new();
    let mut offset = base;
    for piece in input.split_inclusive(|&b| b == b'\n') {
        let mut flags = NONE;
        let mut body = piece;
        if let Some(b) = body.strip_suffix(b"\n") {
            body = b.strip_suffix(b"\r").unwrap_or(b);
        } else {
            flags.insert(LineFlags::UNTERMINATED);
        }
        if body.len() > max {
            body = &body[..max];
            flags.insert(LineFlags::TRUNCATED);
        }
        out.push(rec(offset, READ_NS, Stream::None, flags, body));
        offset += piece.len() as u64;
    }
    out
}

#[derive(Clone, Debug)]
enum Entry {
    Record {
        stderr: bool,
        partial: bool,
        msg: String,
    },
    Junk(Vec<u8>),
}

fn entries(streams: bool, junk: bool) -> impl Strategy<Value = Vec<Entry>> {
    let msg = r#"[ aS"\\<é\t]{0,12}"#;
    let record =
        (any::<bool>(), any::<bool>(), msg).prop_map(move |(e, partial, msg)| Entry::Record {
            stderr: streams && e,
            partial,
            msg,
        });
    let junk_entry = proptest::collection::vec(
        prop_oneof![Just(b'{'), Just(b'x'), Just(b' '), Just(0u8), Just(0xffu8)],
        0..10,
    )
    .prop_map(Entry::Junk);
    let weight = if junk { 1 } else { 0 };
    proptest::collection::vec(prop_oneof![6 => record, weight => junk_entry], 0..30)
}

fn cri_input(entries: &[Entry], unterminated_tail: bool) -> Vec<u8> {
    let mut v = Vec::new();
    for e in entries {
        match e {
            Entry::Record {
                stderr,
                partial,
                msg,
            } => v.extend_from_slice(
                format!(
                    "{TS} {} {} {msg}\n",
                    if *stderr { "stderr" } else { "stdout" },
                    if *partial { "P" } else { "F" }
                )
                .as_bytes(),
            ),
            Entry::Junk(j) => {
                v.extend_from_slice(j);
                v.push(b'\n');
            }
        }
    }
    if unterminated_tail && v.last() == Some(&b'\n') {
        v.pop();
    }
    v
}

fn docker_input(entries: &[Entry]) -> Vec<u8> {
    let mut v = Vec::new();
    for e in entries {
        match e {
            Entry::Record {
                stderr,
                partial,
                msg,
            } => {
                let log = if *partial {
                    msg.clone()
                } else {
                    format!("{msg}\n")
                };
                v.extend_from_slice(
                    docker(if *stderr { "stderr" } else { "stdout" }, &log).as_bytes(),
                );
            }
            Entry::Junk(j) => {
                v.extend_from_slice(j);
                v.push(b'\n');
            }
        }
    }
    v
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(any::<usize>(), 0..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn raw_matches_model_and_resumes(input in raw_input(), cuts in cuts(), max in 1usize..24) {
        let (_, all) = frame(Format::Raw, max, None, 1000, &chunked(&input, &cuts));
        prop_assert_eq!(&all, &raw_model(&input, max, 1000));
        check_chunking_and_resume(Format::Raw, max, None, &input, &cuts, true)?;
    }

    #[test]
    fn raw_multiline_resumes(
        input in raw_input(), cuts in cuts(), max in 1usize..40, max_lines in 1usize..5,
    ) {
        check_chunking_and_resume(Format::Raw, max, ml("^S", max_lines), &input, &cuts, true)?;
    }

    #[test]
    fn cri_single_stream_resumes_exactly(
        e in entries(false, false), tail in any::<bool>(), cuts in cuts(), max in 1usize..24,
    ) {
        let input = cri_input(&e, tail);
        check_chunking_and_resume(Format::Cri, max, None, &input, &cuts, true)?;
        check_chunking_and_resume(Format::Cri, max, ml("^S", 3), &input, &cuts, true)?;
    }

    #[test]
    fn cri_interleaved_resumes_without_loss(
        e in entries(true, true), tail in any::<bool>(), cuts in cuts(), max in 1usize..24,
    ) {
        let input = cri_input(&e, tail);
        check_chunking_and_resume(Format::Cri, max, None, &input, &cuts, false)?;
    }

    #[test]
    fn cri_multiline_chunking_is_invisible(
        e in entries(true, true), cuts in cuts(), max in 1usize..24,
    ) {
        let input = cri_input(&e, false);
        let (_, one) = frame(Format::Cri, max, ml("^S", 3), 0, &[&input]);
        let (_, split) = frame(Format::Cri, max, ml("^S", 3), 0, &chunked(&input, &cuts));
        prop_assert_eq!(split, one);
    }

    #[test]
    fn docker_resumes(e in entries(true, true), cuts in cuts(), max in 1usize..24) {
        let input = docker_input(&e);
        check_chunking_and_resume(Format::Docker, max, None, &input, &cuts, false)?;
    }

    #[test]
    fn docker_single_stream_resumes_exactly(
        e in entries(false, false), cuts in cuts(), max in 1usize..24,
    ) {
        let input = docker_input(&e);
        check_chunking_and_resume(Format::Docker, max, None, &input, &cuts, true)?;
        check_chunking_and_resume(Format::Docker, max, ml("^S", 3), &input, &cuts, true)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        input in proptest::collection::vec(any::<u8>(), 0..400),
        cuts in cuts(),
        format in prop_oneof![Just(Format::Raw), Just(Format::Cri), Just(Format::Docker)],
    ) {
        let (_, out) = frame(format, 16, ml("^a", 2), 0, &chunked(&input, &cuts));
        let lines = input.split(|&b| b == b'\n').count();
        prop_assert!(out.len() <= lines);
    }
}

/// Issue 9: a container that printed a last line without a newline and exited leaves
/// a CRI `P` record that no `F` will ever close. Once no fragment came for the
/// partial timeout it is shipped, flagged unterminated, and the resume offset moves
/// past it; a late `F` is then a record of its own.
#[test]
fn a_partial_with_no_closing_fragment_is_flushed_after_the_timeout() {
    let mut f =
        Framer::new(Format::Cri, 1024, None, 0).with_partial_timeout(Duration::from_secs(2));
    let mut out = Vec::new();
    let t0 = Instant::now();
    let first = cri("stdout", "F", "before");
    let partial = cri("stdout", "P", "last words");
    let input = format!("{first}{partial}");
    push(&mut f, Bytes::from(input.clone()), READ_NS, t0, &mut out);
    assert_eq!(bodies(&out), vec![&b"before"[..]]);
    assert_eq!(f.resume_offset(), first.len() as u64);

    flush_idle(&mut f, t0 + Duration::from_millis(1900), &mut out);
    assert_eq!(out.len(), 1, "not yet");
    flush_idle(&mut f, t0 + Duration::from_millis(2100), &mut out);
    assert_eq!(bodies(&out), vec![&b"before"[..], &b"last words"[..]]);
    assert!(out[1].flags.contains(LineFlags::UNTERMINATED));
    assert_eq!(out[1].offset, first.len() as u64);
    assert_eq!(
        f.resume_offset(),
        input.len() as u64,
        "the partial is shipped"
    );

    let late = cri("stdout", "F", " after all");
    push(
        &mut f,
        Bytes::from(late),
        READ_NS,
        t0 + Duration::from_secs(3),
        &mut out,
    );
    assert_eq!(bodies(&out)[2], &b" after all"[..]);
}

/// Without a timeout (the default of a bare framer) a partial waits for its `F`.
#[test]
fn a_partial_waits_for_its_closing_fragment_within_the_timeout() {
    let mut f =
        Framer::new(Format::Cri, 1024, None, 0).with_partial_timeout(Duration::from_secs(2));
    let mut out = Vec::new();
    let t0 = Instant::now();
    push(
        &mut f,
        Bytes::from(cri("stdout", "P", "a ")),
        READ_NS,
        t0,
        &mut out,
    );
    push(
        &mut f,
        Bytes::from(cri("stdout", "P", "b ")),
        READ_NS,
        t0 + Duration::from_millis(1500),
        &mut out,
    );
    // 3 s after the first fragment, 1.5 s after the last: not idle long enough.
    flush_idle(&mut f, t0 + Duration::from_millis(3000), &mut out);
    assert!(out.is_empty());
    push(
        &mut f,
        Bytes::from(cri("stdout", "F", "c")),
        READ_NS,
        t0 + Duration::from_millis(3100),
        &mut out,
    );
    assert_eq!(bodies(&out), vec![&b"a b c"[..]]);
    assert!(!out[0].flags.contains(LineFlags::UNTERMINATED));
}

#[test]
fn a_message_is_one_record_whatever_it_holds_and_is_cut_at_the_cap() {
    let (pushed, all) = frame(
        Format::Message,
        8,
        None,
        100,
        &[b"two\nlines\r", b"", b"0123456789", b"\xff\xfe"],
    );
    assert_eq!(pushed.len(), all.len(), "nothing pending at the end");
    assert_eq!(
        bodies(&all),
        [&b"two\nline"[..], b"", b"01234567", b"\xff\xfe"]
    );
    let offsets: Vec<u64> = all.iter().map(|l| l.offset).collect();
    assert_eq!(offsets, [100, 110, 110, 120]);
    let truncated: Vec<bool> = all
        .iter()
        .map(|l| l.flags.contains(LineFlags::TRUNCATED))
        .collect();
    assert_eq!(truncated, [true, false, true, false]);
    let mut f = Framer::new(Format::Message, 8, None, 0);
    push(
        &mut f,
        Bytes::from_static(b"abc"),
        READ_NS,
        Instant::now(),
        &mut Vec::new(),
    );
    assert_eq!(
        f.resume_offset(),
        3,
        "a shipped message is behind the resume offset"
    );
}

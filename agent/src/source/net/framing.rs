//! Syslog over a byte stream (TCP): where one message ends. RFC 6587 knows two
//! framings and a receiver tells them apart by the frame's first byte (§3.4): a digit
//! starts octet counting (`MSG-LEN SP SYSLOG-MSG`), anything else (a syslog message
//! starts with `<`) is a message ended by `\n` (non-transparent framing). Each frame is
//! looked at on its own, so a sender may even mix them.
//!
//! A frame that starts with a digit but has no valid length (`12x`, a length of more
//! than 9 digits) is read as a newline-framed message: it reaches the parser, which
//! keeps it raw and counts it. Nothing a sender writes makes the framer fail or hold
//! more than `max + 1` bytes of one message plus one read.
//!
//! # Invariants
//!
//! - `buf` holds only bytes not yet handed out or skipped;
//! - while `skip > 0` (the rest of a cut octet-counted frame) or `discard_line` (the
//!   rest of a cut newline-framed message), the bytes read next are thrown away up to
//!   that frame's end, and `buf` is empty;
//! - every message handed out is at most `max + 1` bytes: one more than the pipeline
//!   keeps, so it sees the cut and flags the record truncated.

use bytes::{Buf, Bytes, BytesMut};

/// What the framer handed out, besides messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameStats {
    /// Messages cut to `max` bytes (the rest thrown away).
    pub too_large: u64,
}

/// Frames one connection's bytes.
#[derive(Debug)]
pub struct StreamFramer {
    max: usize,
    buf: BytesMut,
    skip: u64,
    discard_line: bool,
    pub stats: FrameStats,
}

/// A length header is at most 9 digits (999 999 999 bytes) and its space.
const MAX_HEADER: usize = 10;

impl StreamFramer {
    /// Messages of at most `max` bytes are whole; longer ones are cut.
    pub fn new(max: usize) -> StreamFramer {
        StreamFramer {
            max: max.max(1),
            buf: BytesMut::with_capacity(64 * 1024),
            skip: 0,
            discard_line: false,
            stats: FrameStats::default(),
        }
    }

    /// Bytes waiting for the rest of their frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next bytes of the stream; every message they complete goes to `emit`.
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(Bytes)) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            if self.discard_line {
                match memchr::memchr(b'\n', data) {
                    Some(nl) => {
                        self.discard_line = false;
                        data = &data[nl + 1..];
                    }
                    None => return,
                }
                continue;
            }
            // Take no more than one message can need, so `buf` stays bounded.
            let room = (self.max + 1 + MAX_HEADER)
                .saturating_sub(self.buf.len())
                .max(1);
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.drain(emit);
        }
    }

    /// The stream ended: what is left is a last message without its end. Returns
    /// whether it was an incomplete octet-counted frame.
    pub fn finish(&mut self, emit: &mut impl FnMut(Bytes)) -> bool {
        if self.buf.is_empty() {
            return false;
        }
        let incomplete = matches!(self.octet_header(), Header::Frame { .. });
        let rest = self.buf.split().freeze();
        emit(trim_newline(rest));
        incomplete
    }

    /// Hands out every complete frame in `buf`.
    fn drain(&mut self, emit: &mut impl FnMut(Bytes)) {
        while !self.buf.is_empty() && self.skip == 0 && !self.discard_line {
            match self.octet_header() {
                Header::Frame { header, len } => {
                    if len <= self.max {
                        if self.buf.len() < header + len {
                            return;
                        }
                        self.buf.advance(header);
                        emit(self.buf.split_to(len).freeze());
                    } else {
                        if self.buf.len() < header + self.max + 1 {
                            return;
                        }
                        self.buf.advance(header);
                        emit(self.buf.split_to(self.max + 1).freeze());
                        self.stats.too_large += 1;
                        // What of the frame is already buffered goes now, the rest as
                        // it comes.
                        let rest = (len - self.max - 1) as u64;
                        let here = rest.min(self.buf.len() as u64) as usize;
                        self.buf.advance(here);
                        self.skip = rest - here as u64;
                    }
                }
                Header::NeedMore => return,
                Header::NotOctetCounted => {
                    let Some(nl) = memchr::memchr(b'\n', &self.buf) else {
                        if self.buf.len() > self.max {
                            emit(self.buf.split_to(self.max + 1).freeze());
                            self.stats.too_large += 1;
                            self.buf.clear();
                            self.discard_line = true;
                        }
                        return;
                    };
                    let cr = nl > 0 && self.buf[nl - 1] == b'\r';
                    if nl - usize::from(cr) > self.max {
                        emit(self.buf.split_to(self.max + 1).freeze());
                        self.stats.too_large += 1;
                        self.buf.advance(nl - self.max);
                        continue;
                    }
                    let line = self.buf.split_to(nl + 1).freeze();
                    let line = trim_newline(line);
                    // Empty lines between frames are padding, not messages.
                    if !line.is_empty() {
                        emit(line);
                    }
                }
            }
        }
    }

    fn octet_header(&self) -> Header {
        let b = &self.buf[..];
        if !b[0].is_ascii_digit() || b[0] == b'0' {
            return Header::NotOctetCounted;
        }
        let digits = b
            .iter()
            .take(MAX_HEADER)
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == b.len() && digits < MAX_HEADER {
            return Header::NeedMore;
        }
        if digits >= MAX_HEADER || b[digits] != b' ' {
            return Header::NotOctetCounted;
        }
        let len = b[..digits]
            .iter()
            .fold(0usize, |v, &d| v * 10 + usize::from(d - b'0'));
        Header::Frame {
            header: digits + 1,
            len,
        }
    }
}

enum Header {
    Frame { header: usize, len: usize },
    NeedMore,
    NotOctetCounted,
}

/// A newline-framed message without its `\n` (or `\r\n`).
fn trim_newline(mut line: Bytes) -> Bytes {
    if line.last() == Some(&b'\n') {
        line.truncate(line.len() - 1);
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
    }
    line
}

/// A datagram's message: one trailing `\n` (which some senders add) removed.
pub fn datagram(message: Bytes) -> Bytes {
    trim_newline(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(max: usize, pieces: &[&[u8]]) -> (Vec<Vec<u8>>, StreamFramer) {
        let mut f = StreamFramer::new(max);
        let mut out = Vec::new();
        for p in pieces {
            f.push(p, &mut |m| out.push(m.to_vec()));
        }
        f.finish(&mut |m| out.push(m.to_vec()));
        (out, f)
    }

    #[test]
    fn octet_counting_and_newlines_are_told_apart_per_frame() {
        let stream: &[u8] = b"11 <13>1 a\nb c\n<13>two\r\n\n6 <1>xyz10 <2>1 - - -";
        let (out, f) = frames(100, &[stream]);
        assert_eq!(
            out,
            [&b"<13>1 a\nb c"[..], b"<13>two", b"<1>xyz", b"<2>1 - - -"]
        );
        assert_eq!(f.stats, FrameStats::default());
    }

    #[test]
    fn every_split_of_the_stream_frames_the_same() {
        let stream: &[u8] = b"11 <13>1 a\nb c\n<13>two\r\n6 <1>xyz12x garbage\n3 abc";
        let (whole, _) = frames(100, &[stream]);
        for cut in 0..stream.len() {
            let (split, _) = frames(100, &[&stream[..cut], &stream[cut..]]);
            assert_eq!(split, whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frames(100, &bytes).0, whole);
        assert_eq!(whole[3], b"12x garbage", "a bad length header is a message");
    }

    #[test]
    fn huge_frames_are_cut_in_bounded_memory_and_counted() {
        let mut f = StreamFramer::new(8);
        let mut out = Vec::new();
        f.push(b"1000000 ", &mut |m| out.push(m));
        for _ in 0..1000 {
            f.push(&[b'x'; 1000], &mut |m| out.push(m));
            assert!(f.buffered() <= 8 + 1 + MAX_HEADER);
        }
        f.push(b"5 <1>ok", &mut |m| out.push(m));
        for _ in 0..100 {
            f.push(&[b'y'; 1000], &mut |m| out.push(m));
            assert!(f.buffered() <= 8 + 1 + MAX_HEADER);
        }
        f.push(b"\n<2>fine\n", &mut |m| out.push(m));
        let out: Vec<&[u8]> = out.iter().map(|m| &m[..]).collect();
        assert_eq!(out, [&b"xxxxxxxxx"[..], b"<1>ok", b"yyyyyyyyy", b"<2>fine"]);
        assert_eq!(f.stats.too_large, 2);
    }

    #[test]
    fn a_stream_ending_inside_a_frame_hands_out_the_rest() {
        let mut f = StreamFramer::new(100);
        let mut out = Vec::new();
        f.push(b"20 <13>1 short", &mut |m| out.push(m));
        assert!(out.is_empty());
        assert!(f.finish(&mut |m| out.push(m)));
        assert_eq!(out, [Bytes::from_static(b"20 <13>1 short")]);
        let mut f = StreamFramer::new(100);
        f.push(b"<13>no newline", &mut |m| out.push(m));
        assert!(!f.finish(&mut |m| out.push(m)));
        assert_eq!(out[1], Bytes::from_static(b"<13>no newline"));
    }

    #[test]
    fn arbitrary_streams_never_panic_and_stay_bounded() {
        use proptest::prelude::*;
        proptest!(|(pieces in proptest::collection::vec(
            proptest::collection::vec(prop::sample::select(b"0123456789 <>\nx".to_vec()), 0..40), 0..12))| {
            let mut f = StreamFramer::new(16);
            let mut total = 0usize;
            for p in &pieces {
                f.push(p, &mut |m| { assert!(m.len() <= 17); total += 1; });
                prop_assert!(f.buffered() <= 16 + 1 + MAX_HEADER);
            }
            f.finish(&mut |_| total += 1);
        });
    }
}

//! Physical line splitting: `\n`-terminated spans of contiguous chunks.
//!
//! A line wholly inside a chunk is a [`Body::Span`] of it (offsets: no copy, no
//! reference count). Only a line straddling chunks is copied, once, into the
//! carry-over buffer. `\n` and a `\r`
//! just before it are stripped.
//!
//! # Memory
//!
//! The carry-over buffer never holds more than `cap + 1` bytes (the `+ 1` leaves room
//! for a `\r` that may turn out to precede the `\n`): the rest of an over-long line is
//! skipped as it arrives and the line is reported with `truncated` set once its `\n`
//! is seen. A 10 MB line costs `cap` bytes, not 10 MB.
//!
//! # Performance
//!
//! The hot loop is `memchr_iter` plus, per line, one `\r` test, one length test and a
//! slice; the per-line callback is a generic closure so each format gets its own
//! monomorphized loop with no dispatch inside.

use bytes::{Bytes, BytesMut};

use super::Body;

/// One physical line of the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PhysicalLine {
    /// Source offset of the line's first byte.
    pub offset: u64,
    /// The line without terminator, at most `cap` bytes: a span of the chunk being
    /// split (chunk index 0), or owned.
    pub body: Body,
    /// The line was longer than `cap`; `body` holds its first `cap` bytes.
    pub truncated: bool,
}

pub(crate) struct LineSplitter {
    cap: usize,
    /// Source offset the next pushed chunk starts at (= end of data so far).
    next_offset: u64,
    /// Source offset of the first byte of the line not yet terminated; equals
    /// `next_offset` when the data so far ends with `\n`.
    line_start: u64,
    /// The first `cap + 1` bytes of that unterminated line.
    partial: BytesMut,
    /// Bytes of the unterminated line were dropped past `cap + 1`.
    overflow: bool,
}

impl LineSplitter {
    pub fn new(cap: usize, start_offset: u64) -> LineSplitter {
        LineSplitter {
            cap,
            next_offset: start_offset,
            line_start: start_offset,
            partial: BytesMut::new(),
            overflow: false,
        }
    }

    /// Offset of the first byte not part of a complete line handed out so far.
    #[inline]
    pub fn pending_start(&self) -> u64 {
        self.line_start
    }

    /// Bytes held for the unterminated line (for memory-bound tests).
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Splits `chunk` (contiguous with the previous one) and hands every line it
    /// completes to `emit`, in order: spans of `chunk` where they lie inside it.
    #[inline]
    pub fn split(&mut self, chunk: &Bytes, mut emit: impl FnMut(PhysicalLine)) {
        let base = self.next_offset;
        self.next_offset += chunk.len() as u64;
        let bytes: &[u8] = chunk;
        let mut line_begin = 0usize;
        // Spans count in u32: a chunk past 4 GiB (none is read that large) gives
        // lines of their own.
        let spans = chunk.len() <= u32::MAX as usize;

        if self.line_start < base {
            // A line began in an earlier chunk: finish it first.
            match memchr::memchr(b'\n', bytes) {
                None => {
                    self.buffer(bytes);
                    return;
                }
                Some(nl) => {
                    self.buffer(&bytes[..nl]);
                    emit(self.take_joined());
                    line_begin = nl + 1;
                }
            }
        }

        let rest = &bytes[line_begin..];
        let whole = Whole {
            chunk,
            base,
            cap: self.cap,
            spans,
        };
        line_begin = match newline_avx2() {
            Some(avx2) => whole.lines(avx2.iter(rest), line_begin, &mut emit),
            None => whole.lines(memchr::memchr_iter(b'\n', rest), line_begin, &mut emit),
        };

        self.line_start = base + line_begin as u64;
        if line_begin < bytes.len() {
            self.buffer(&bytes[line_begin..]);
        }
    }

    /// `chunk` as one line whatever it holds (an already framed message), its first
    /// `cap` bytes kept, as a span of it. Call only with no unterminated line pending
    /// (a splitter used for messages alone never has one).
    pub fn whole(&mut self, chunk: &Bytes) -> PhysicalLine {
        debug_assert_eq!(
            self.line_start, self.next_offset,
            "whole() after a partial line"
        );
        let offset = self.next_offset;
        self.next_offset += chunk.len() as u64;
        self.line_start = self.next_offset;
        let truncated = chunk.len() > self.cap;
        let len = chunk.len().min(self.cap);
        let body = match u32::try_from(len) {
            Ok(len) => Body::Span {
                chunk: 0,
                start: 0,
                len,
            },
            Err(_) => Body::Owned(chunk.slice(..len)),
        };
        PhysicalLine {
            offset,
            body,
            truncated,
        }
    }

    /// The unterminated last line, if any (the source ended). Its bytes are kept as
    /// they are: a trailing `\r` is content when no `\n` follows.
    pub fn take_unterminated(&mut self) -> Option<PhysicalLine> {
        if self.line_start == self.next_offset {
            return None;
        }
        let mut body = self.partial.split().freeze();
        let truncated = std::mem::take(&mut self.overflow) || body.len() > self.cap;
        body.truncate(self.cap);
        let line = PhysicalLine {
            offset: self.line_start,
            body: Body::Owned(body),
            truncated,
        };
        self.line_start = self.next_offset;
        Some(line)
    }

    /// Appends to the carry-over buffer, dropping what exceeds `cap + 1` bytes.
    fn buffer(&mut self, bytes: &[u8]) {
        let room = (self.cap + 1).saturating_sub(self.partial.len());
        if bytes.len() > room {
            self.partial.extend_from_slice(&bytes[..room]);
            self.overflow = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    /// The straddling line, now that its `\n` was found (the `\n` itself is not in
    /// the buffer).
    fn take_joined(&mut self) -> PhysicalLine {
        let mut body = self.partial.split().freeze();
        let overflow = std::mem::take(&mut self.overflow);
        // With overflow the line is longer than cap whatever its last byte is.
        if !overflow && body.last() == Some(&b'\r') {
            body.truncate(body.len() - 1);
        }
        let truncated = overflow || body.len() > self.cap;
        body.truncate(self.cap);
        PhysicalLine {
            offset: self.line_start,
            body: Body::Owned(body),
            truncated,
        }
    }
}

/// What a chunk's complete lines are cut from.
struct Whole<'a> {
    chunk: &'a Bytes,
    /// Source offset of the chunk's first byte.
    base: u64,
    cap: usize,
    /// Lines may be spans of the chunk (it is under 4 GiB).
    spans: bool,
}

impl Whole<'_> {
    /// Emits the line ending at each `\n` of `newlines` (positions relative to
    /// `line_begin`, where the first line starts); returns where the line after the
    /// last one starts. Generic over the searcher, so each gets its own loop.
    #[inline(always)]
    fn lines(
        &self,
        newlines: impl Iterator<Item = usize>,
        mut line_begin: usize,
        emit: &mut impl FnMut(PhysicalLine),
    ) -> usize {
        let bytes: &[u8] = self.chunk;
        let scan_from = line_begin;
        for rel in newlines {
            let nl = scan_from + rel;
            let mut end = nl;
            if end > line_begin && bytes[end - 1] == b'\r' {
                end -= 1;
            }
            let truncated = end - line_begin > self.cap;
            if truncated {
                end = line_begin + self.cap;
            }
            let body = if self.spans {
                Body::Span {
                    chunk: 0,
                    start: line_begin as u32,
                    len: (end - line_begin) as u32,
                }
            } else {
                Body::Owned(self.chunk.slice(line_begin..end))
            };
            emit(PhysicalLine {
                offset: self.base + line_begin as u64,
                body,
                truncated,
            });
            line_begin = nl + 1;
        }
        line_begin
    }
}

/// memchr's AVX2 searcher for `\n`, where the CPU has AVX2: taken once per chunk, where
/// `memchr_iter` resolves its CPU dispatch again for every line, a call more per line
/// than the search itself (log lines are short).
#[cfg(target_arch = "x86_64")]
fn newline_avx2() -> Option<&'static memchr::arch::x86_64::avx2::memchr::One> {
    use memchr::arch::x86_64::avx2::memchr::One;
    static AVX2: std::sync::OnceLock<Option<One>> = std::sync::OnceLock::new();
    AVX2.get_or_init(|| One::new(b'\n')).as_ref()
}

/// No AVX2 outside x86_64: `memchr_iter` picks the searcher there.
#[cfg(not(target_arch = "x86_64"))]
fn newline_avx2() -> Option<&'static memchr::arch::all::memchr::One> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(cap: usize, chunks: &[&[u8]]) -> (Vec<PhysicalLine>, LineSplitter) {
        let mut s = LineSplitter::new(cap, 1000);
        let mut out = Vec::new();
        for c in chunks {
            let chunk = Bytes::copy_from_slice(c);
            s.split(&chunk, |l| out.push(owned(l, &chunk)));
        }
        (out, s)
    }

    /// `l` with its span resolved in `chunk`, to compare with expected bytes.
    fn owned(mut l: PhysicalLine, chunk: &Bytes) -> PhysicalLine {
        l.body.make_owned(std::slice::from_ref(chunk));
        l
    }

    fn line(offset: u64, body: &[u8], truncated: bool) -> PhysicalLine {
        PhysicalLine {
            offset,
            body: Body::Owned(Bytes::copy_from_slice(body)),
            truncated,
        }
    }

    #[test]
    fn splits_lines_with_offsets_and_strips_crlf() {
        let (out, s) = split_all(64, &[b"a\r\nbb\n\ncc\r\r\nd"]);
        assert_eq!(
            out,
            vec![
                line(1000, b"a", false),
                line(1003, b"bb", false),
                line(1006, b"", false),
                line(1007, b"cc\r", false),
            ]
        );
        assert_eq!(s.pending_start(), 1012);
        assert_eq!(s.buffered(), 1);
    }

    #[test]
    fn lone_cr_is_content() {
        let (out, _) = split_all(64, &[b"\r\n\r\r\na\rb\n"]);
        assert_eq!(
            out,
            vec![
                line(1000, b"", false),
                line(1002, b"\r", false),
                line(1005, b"a\rb", false)
            ]
        );
    }

    #[test]
    fn lines_inside_a_chunk_are_spans_of_it() {
        let chunk = Bytes::from_static(b"first\nsecond\n");
        let mut s = LineSplitter::new(64, 0);
        let mut out = Vec::new();
        s.split(&chunk, |l| out.push(l.body));
        let span = |start, len| Body::Span {
            chunk: 0,
            start,
            len,
        };
        assert_eq!(out, [span(0, 5), span(6, 6)]);
    }

    #[test]
    fn straddling_lines_are_joined_including_split_crlf() {
        let (out, s) = split_all(64, &[b"ab", b"c", b"d\r", b"\nef", b"\r\n", b"g"]);
        assert_eq!(
            out,
            vec![line(1000, b"abcd", false), line(1006, b"ef", false)]
        );
        assert_eq!(s.pending_start(), 1010);
    }

    #[test]
    fn truncates_long_lines_in_chunk_and_across_chunks_alike() {
        let input = b"0123456789\n01234567\r\n012345678\r\n0123456789\r\nxy\n";
        let (whole, _) = split_all(8, &[input]);
        assert_eq!(
            whole,
            vec![
                line(1000, b"01234567", true),
                line(1011, b"01234567", false),
                line(1021, b"01234567", true),
                line(1032, b"01234567", true),
                line(1044, b"xy", false),
            ]
        );
        for size in 1..input.len() {
            let chunks: Vec<&[u8]> = input.chunks(size).collect();
            let (split, s) = split_all(8, &chunks);
            assert_eq!(split, whole, "chunk size {size}");
            assert!(s.buffered() <= 9);
        }
    }

    #[test]
    fn ten_megabyte_line_holds_at_most_cap_bytes() {
        let cap = 1024;
        let mut s = LineSplitter::new(cap, 0);
        let mut out = Vec::new();
        let piece = Bytes::from(vec![b'x'; 64 * 1024]);
        for _ in 0..160 {
            s.split(&piece, |l| out.push(owned(l, &piece)));
            assert!(s.buffered() <= cap + 1);
            assert!(s.partial.capacity() <= 4 * cap, "{}", s.partial.capacity());
        }
        assert!(out.is_empty());
        assert_eq!(s.pending_start(), 0);
        let tail = Bytes::from_static(b"tail\nnext\n");
        s.split(&tail, |l| out.push(owned(l, &tail)));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].body.len(), cap);
        assert!(out[0].truncated);
        assert_eq!(out[1], line(160 * 64 * 1024 + 5, b"next", false));
    }

    #[test]
    fn unterminated_tail() {
        let (_, mut s) = split_all(4, &[b"ok\nabc\r"]);
        assert_eq!(s.take_unterminated(), Some(line(1003, b"abc\r", false)));
        assert_eq!(s.take_unterminated(), None);
        assert_eq!(s.pending_start(), 1007);

        let (_, mut s) = split_all(4, &[b"abcdefg"]);
        assert_eq!(s.take_unterminated(), Some(line(1000, b"abcd", true)));

        let (_, mut s) = split_all(4, &[b"x\n"]);
        assert_eq!(s.take_unterminated(), None);
    }

    /// The AVX2 searcher (where the CPU has it) and `memchr_iter` cut the same lines,
    /// at every length around the searcher's 32- and 64-byte steps.
    #[test]
    fn both_newline_searchers_cut_the_same_lines() {
        let mut text = Vec::new();
        for i in 0..400usize {
            text.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, i % 97));
            text.extend_from_slice(if i % 3 == 0 { b"\r\n" } else { b"\n" });
        }
        let chunk = Bytes::from(text);
        let whole = Whole {
            chunk: &chunk,
            base: 7,
            cap: 64,
            spans: true,
        };
        for from in [0, 1, 31, 32, 33, 63, 64, 65] {
            let rest = &chunk[from..];
            let mut generic = Vec::new();
            let end = whole.lines(memchr::memchr_iter(b'\n', rest), from, &mut |l| {
                generic.push(l)
            });
            assert_eq!(generic.len(), rest.iter().filter(|&&b| b == b'\n').count());
            if let Some(avx2) = newline_avx2() {
                let mut fast = Vec::new();
                let fast_end = whole.lines(avx2.iter(rest), from, &mut |l| fast.push(l));
                assert_eq!((fast, fast_end), (generic, end), "from {from}");
            }
        }
    }

    #[test]
    fn binary_and_nul_bytes_pass_through() {
        let (out, _) = split_all(64, &[b"\0\xff\xfe\n\x80abc\0\n"]);
        assert_eq!(
            out,
            vec![
                line(1000, b"\0\xff\xfe", false),
                line(1004, b"\x80abc\0", false)
            ]
        );
    }
}

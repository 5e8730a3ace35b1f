//! The repair path: a container stream read back out of its CRI log files, addressed
//! by stream offset.
//!
//! The runtime writes every byte of a container's stdout/stderr into its CRI log as
//! `<timestamp> <stream> <P|F> <content>` lines: a `P` line carries content only, an
//! `F` line content plus the newline that ended it. So a stream offset counts content
//! bytes plus one newline per `F` line, per stream from the log's first line: the
//! same numbering the kernel gives captured bytes, which is what makes a hole in the
//! captured stream repairable byte for byte.
//!
//! A [`CriStreamReader`] follows one stream through the family of files of one
//! container run (`0.log`, and `0.log.<timestamp>` after the kubelet rotated it),
//! oldest first, holding the file it reads open so a rotation under it loses nothing.
//! It only moves forward: repairs of one stream are requested in offset order.
//!
//! # The kept position
//!
//! Between reads the reader keeps where it stopped: the stream offset at a byte
//! position of the file it holds open (see [`OpenLog`]), so the next read, whether a
//! repair, the end of the stream or the follow after a spill, starts there and not at
//! the run's first byte. The position is checked before it is used: the file must
//! still be at least that long and hold, right before it, the bytes the reader read
//! there. A file truncated or rewritten under the reader (`copytruncate`, a file put
//! in place of the live one) fails the check, and the reader starts again at the
//! run's first file, stream offset 0, which is exact as long as the run's files hold
//! the stream from its first byte (a `copytruncate` copy does). A file rotated away
//! (renamed) keeps its position: the reader holds it open and moves on to the next
//! file of the family when it reaches its end.
//!
//! Stdout and stderr share the log: a reader counts the other stream's offset too as
//! it parses past that stream's lines, so a reader of either stream can start where
//! it stands ([`CriStreamReader::fork`]), with its kept position.
//!
//! # Memory
//!
//! A reader holds no read buffer of its own: every read borrows the one
//! [`ReadBlock`] of the stage, which reads one log at a time on its thread, so a node
//! with hundreds of followed logs pays one block, not one per stream. What a read
//! hands out is copied out of the block: the content of consecutive lines joined into
//! one run per block (a line is not an allocation of its own), split where the lines'
//! timestamps are more than [`JOIN_WITHIN_NS`] apart.
//!
//! # Performance
//!
//! Only holes are read, so the reader costs nothing while capture is complete. A
//! stream's first read (a repair, or the end read of a stream short of the kernel's
//! final offset) parses the log from the run's start unless a reader of the log
//! already stands before where it starts (the other stream's, or the start-up read of
//! a running container: see `stage`), from which it is forked; every later read starts
//! at the kept position, so a stream's log is parsed about once over its life, however
//! many holes it has. Between two holes
//! the reader still parses every line (the captured ones too) to count their
//! offsets. A read asks the file for about twice the stream bytes it still needs
//! (at most a block), so a repair step that ends inside a block does not read the
//! rest of the block twice.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::stream::Run;
use crate::frame::Stream;
use crate::frame::cri::parse_cri;
use crate::frame::time::Rfc3339Cache;

pub(crate) const READ_BLOCK: usize = 256 * 1024;
/// Lines are joined into one run while their timestamps are within this of the run's
/// first (its time is the first line's): the precision of the ring path's runs, which
/// carry the time of a poll's first record.
const JOIN_WITHIN_NS: u64 = 50_000_000;
/// The least a read asks of the file (see [`file_bytes_for`]).
const MIN_READ: usize = 16 * 1024;

/// File bytes to read for `stream_bytes` more of the stream: twice as many (the CRI
/// envelope of a 100-byte line is about 40 bytes) and a few lines more, at most a
/// block. Too few costs one more read; too many is read again by the next request.
fn file_bytes_for(stream_bytes: u64) -> usize {
    (stream_bytes.saturating_mul(2) as usize)
        .saturating_add(MIN_READ)
        .min(READ_BLOCK)
}

/// A CRI line is at most the runtime's buffer (16 KiB) plus its envelope; anything
/// far longer is not a runtime-written line and is skipped rather than buffered.
const MAX_CRI_LINE: usize = 1 << 20;

/// Bytes right before a kept position that must read the same when the position is
/// used again (see [`OpenLog::behind`]).
const BEHIND_BYTES: usize = 64;

/// The file a reader holds, and its kept position.
///
/// Invariant: the reader's `stream_offset` is the stream offset of the byte at `pos`
/// of this file (and its `other_offset` the other stream's), `pos` is at a line's start (0, or right after a newline the reader
/// parsed), and `behind[..behind_len]` are the file's bytes right before `pos` as the
/// reader read them (fewer than [`BEHIND_BYTES`] only near the file's start). A
/// position whose file no longer holds them is stale and never used (see
/// [`CriStreamReader::position_holds`]).
#[derive(Debug)]
struct OpenLog {
    file: File,
    inode: u64,
    /// File offset of the first byte not yet parsed into a line.
    pos: u64,
    behind: [u8; BEHIND_BYTES],
    behind_len: usize,
    /// Inodes of the family's files ordered before this one when it was opened: when
    /// this file is gone from the directory (rotated, then compressed or removed), the
    /// file after it is the first one not among them.
    older: Vec<u64>,
    /// Its first [`BEHIND_BYTES`] bytes, when it had that many when opened.
    head: Option<[u8; BEHIND_BYTES]>,
}

impl OpenLog {
    /// `bytes` were parsed past: the file's bytes at `[pos, pos + bytes.len())`.
    fn pass(&mut self, bytes: &[u8]) {
        self.pos += bytes.len() as u64;
        let n = bytes.len().min(BEHIND_BYTES);
        let keep = (self.behind_len).min(BEHIND_BYTES - n);
        self.behind
            .copy_within(self.behind_len - keep..self.behind_len, 0);
        self.behind[keep..keep + n].copy_from_slice(&bytes[bytes.len() - n..]);
        self.behind_len = keep + n;
    }
}

#[derive(Debug)]
pub(crate) struct CriStreamReader {
    log_path: PathBuf,
    stream: Stream,
    current: Option<OpenLog>,
    /// Stream offset at `current.pos`.
    stream_offset: u64,
    /// The other stream's offset at `current.pos` (stderr's for a stdout reader): its
    /// lines are parsed past anyway, and counting them lets a reader of that stream
    /// start here ([`Self::fork`]).
    other_offset: u64,
    timestamps: Rfc3339Cache,
    /// Lines skipped because they were no CRI line (or absurdly long).
    malformed: u64,
    /// The content ranges of the lines being joined into one run (kept for its
    /// allocation): `(start, end)` in the block.
    spans: Vec<(usize, usize)>,
    /// File bytes read so far (what a read costs: a read from the kept position reads
    /// only what follows it).
    bytes_read: u64,
    /// Times the kept position did not hold and the reader started again at the run's
    /// first file.
    restarts: u64,
    restarts_this_read: u32,
}

/// The read buffer [`CriStreamReader`]s borrow for a read; one per stage.
///
/// Invariant: empty until the first read, then exactly [`READ_BLOCK`] long for good
/// (resizing it per read zeroed 256 KiB on every look at a followed log: 200 streams
/// followed at 20 looks a second were a gigabyte a second of memset). Nothing outside
/// a read refers to its bytes.
#[derive(Debug, Default)]
pub(crate) struct ReadBlock {
    buf: Vec<u8>,
    /// File bytes read into it so far, by every reader.
    bytes_read: u64,
}

impl ReadBlock {
    fn get(&mut self) -> &mut [u8] {
        if self.buf.len() != READ_BLOCK {
            self.buf = vec![0; READ_BLOCK];
        }
        &mut self.buf
    }

    /// Bytes it holds (0 before the first read).
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.buf.capacity()
    }

    /// File bytes read into it so far.
    #[cfg(test)]
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }
}

/// How far a read got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reached {
    /// Every stream byte before this offset (and at or after `from`) was handed out.
    pub offset: u64,
    /// The reader is at the end of the live log file: more needs the runtime to write.
    pub at_live_end: bool,
}

impl CriStreamReader {
    /// `log_path`: the container run's live CRI log (`…/<container>/<restart>.log`).
    pub fn new(log_path: PathBuf, stream: Stream) -> CriStreamReader {
        CriStreamReader {
            log_path,
            stream,
            current: None,
            stream_offset: 0,
            other_offset: 0,
            timestamps: Rfc3339Cache::default(),
            malformed: 0,
            spans: Vec::new(),
            bytes_read: 0,
            restarts: 0,
            restarts_this_read: 0,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Lines skipped as not CRI so far.
    pub fn malformed_lines(&self) -> u64 {
        self.malformed
    }

    /// File bytes read so far.
    #[cfg(test)]
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Times the kept position was stale (see the module docs) so far.
    #[cfg(test)]
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// The offset of `stream` where this reader stands: a [`Self::fork`] for it
    /// starts there.
    pub fn offset_of(&self, stream: Stream) -> u64 {
        match stream == self.stream {
            true => self.stream_offset,
            false => self.other_offset,
        }
    }

    /// A reader of `stream` (this one's, or the other of stdout and stderr) of the
    /// same log, standing where this one stands: at [`Self::offset_of`] `stream`, in
    /// the file it holds, with its kept position (checked before use, like any).
    /// Its first read does not parse the log from the run's start. Counts (lines
    /// skipped, bytes read) start at 0.
    pub fn fork(&self, stream: Stream) -> io::Result<CriStreamReader> {
        let mut fork = CriStreamReader::new(self.log_path.clone(), stream);
        fork.stream_offset = self.offset_of(stream);
        fork.other_offset = self.offset_of(other_stream(stream));
        if let Some(log) = &self.current {
            fork.current = Some(OpenLog {
                file: log.file.try_clone()?,
                inode: log.inode,
                pos: log.pos,
                behind: log.behind,
                behind_len: log.behind_len,
                older: log.older.clone(),
                head: log.head,
            });
        }
        Ok(fork)
    }

    /// Appends to `out` the stream bytes in `[from, to)` the logs hold now, in order.
    /// Bytes before the reader's position cannot be read again (requests move
    /// forward); `Reached::offset` tells how far the logs went. `block` is only used
    /// during the call.
    pub fn read(
        &mut self,
        block: &mut ReadBlock,
        from: u64,
        to: u64,
        out: &mut Vec<Run>,
    ) -> io::Result<Reached> {
        self.restarts_this_read = 0;
        if !self.position_holds()? {
            self.restart();
        }
        let mut from = from;
        let mut whole_block = false;
        let mut at_live_end = false;
        let mut done = self.stream_offset >= to;
        while !done {
            // What this read handed out already is not handed out again after a
            // restart.
            from = from.max(self.stream_offset);
            if self.current.is_none() && !self.open_next()? {
                at_live_end = true;
                break;
            }
            let log = self.current.as_mut().expect("opened above");
            // No more of the file than the rest of the range needs: a repair step
            // ends inside a block, and the rest of that block would be read again
            // by the next one.
            let want = match whole_block {
                true => READ_BLOCK,
                false => file_bytes_for(to.saturating_sub(self.stream_offset)),
            };
            let n = log.file.read_at(&mut block.get()[..want], log.pos)?;
            self.bytes_read += n as u64;
            block.bytes_read += n as u64;
            if n == 0 {
                if self.is_live()? {
                    at_live_end = true;
                    break;
                }
                // Rotated away and read to its end: the next file of the family.
                if !self.open_next()? {
                    at_live_end = true;
                    break;
                }
                continue;
            }
            let (consumed, reached_to) = self.parse_lines(&block.get()[..n], from, to, out);
            done = reached_to;
            let log = self.current.as_mut().expect("still open");
            log.pass(&block.get()[..consumed]);
            if consumed > 0 || done {
                continue;
            }
            if n < want {
                // An unterminated last line: the runtime is mid-write.
                if self.is_live()? {
                    at_live_end = true;
                    break;
                }
                // A rotated file ending without a newline cannot be numbered: move on.
                self.malformed += 1;
                if !self.open_next()? {
                    at_live_end = true;
                    break;
                }
                continue;
            }
            if want < READ_BLOCK {
                // A line longer than the read: read it whole.
                whole_block = true;
                continue;
            }
            // A whole block without a newline: not a runtime line; skip past it.
            self.malformed += 1;
            log.pass(&block.get()[..n]);
        }
        Ok(Reached {
            offset: if done { to } else { self.stream_offset },
            at_live_end,
        })
    }

    /// Parses the complete lines in `buf`; returns the bytes consumed (whole lines
    /// only, stopping before a line that reaches past `to`) and whether everything
    /// before `to` was handed out.
    fn parse_lines(&mut self, buf: &[u8], from: u64, to: u64, out: &mut Vec<Run>) -> (usize, bool) {
        let mut consumed = 0;
        let mut done = false;
        // The run being joined: its stream offset and time; its content is `spans`.
        let mut joining: Option<(u64, i64)> = None;
        self.spans.clear();
        for end in memchr::memchr_iter(b'\n', buf) {
            if self.stream_offset >= to {
                done = true;
                break;
            }
            let line = &buf[consumed..end];
            if line.len() > MAX_CRI_LINE {
                self.malformed += 1;
                consumed = end + 1;
                continue;
            }
            let Some(header) = parse_cri(line, &mut self.timestamps) else {
                self.malformed += 1;
                consumed = end + 1;
                continue;
            };
            // P: the content only; F: the content and the newline that ended it,
            // which the file holds right after it.
            let content_start = consumed + header.message_start.min(line.len());
            let content_end = if header.partial { end } else { end + 1 };
            if header.stream != self.stream {
                if header.stream == other_stream(self.stream) {
                    self.other_offset += (content_end - content_start) as u64;
                }
                consumed = end + 1;
                continue;
            }
            let start = self.stream_offset;
            let end_offset = start + (content_end - content_start) as u64;
            let lo = from.max(start);
            let hi = to.min(end_offset);
            if lo < hi {
                // Lines of one stream follow each other in offsets: a run only ends
                // on time (or at the block's end).
                if joining.is_some_and(|(_, t)| header.timestamp_ns.abs_diff(t) > JOIN_WITHIN_NS) {
                    self.emit_joined(buf, joining.take(), out);
                }
                joining.get_or_insert((lo, header.timestamp_ns));
                self.spans.push((
                    content_start + (lo - start) as usize,
                    content_start + (hi - start) as usize,
                ));
            }
            if end_offset > to {
                // Partly wanted: stay at this line, the rest is read next time.
                done = true;
                break;
            }
            self.stream_offset = end_offset;
            consumed = end + 1;
        }
        self.emit_joined(buf, joining, out);
        (consumed, done || self.stream_offset >= to)
    }

    /// Copies the joined lines' content (`spans` of `buf`) into one run.
    fn emit_joined(&mut self, buf: &[u8], run: Option<(u64, i64)>, out: &mut Vec<Run>) {
        let Some((offset, time_ns)) = run else {
            return;
        };
        let len = self.spans.iter().map(|(a, b)| b - a).sum();
        let mut bytes = Vec::with_capacity(len);
        for &(a, b) in &self.spans {
            bytes.extend_from_slice(&buf[a..b]);
        }
        self.spans.clear();
        out.push(Run {
            offset,
            bytes: Bytes::from(bytes),
            time_ns,
        });
    }

    /// The kept position no longer holds: start again at the run's first file, whose
    /// first byte is the stream's.
    fn restart(&mut self) {
        tracing::warn!(
            path = %self.log_path.display(),
            offset = self.stream_offset,
            "a CRI log was truncated or replaced under its reader: read again from the run's first file"
        );
        self.restarts += 1;
        self.restarts_this_read += 1;
        self.current = None;
        self.stream_offset = 0;
        self.other_offset = 0;
    }

    /// Whether the kept position still holds (see [`OpenLog`]): the open file is at
    /// least `pos` long and holds, right before `pos`, the bytes the reader read there.
    /// One `fstat` and one read of [`BEHIND_BYTES`] per read of the log.
    fn position_holds(&self) -> io::Result<bool> {
        let Some(log) = &self.current else {
            return Ok(true);
        };
        holds_at(&log.file, log.pos, &log.behind[..log.behind_len])
    }

    /// Whether the open file is the one at the live path.
    fn is_live(&self) -> io::Result<bool> {
        let Some(log) = &self.current else {
            return Ok(false);
        };
        match std::fs::metadata(&self.log_path) {
            Ok(m) => Ok(m.ino() == log.inode),
            // No live file (the container's log was removed): nothing follows.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Opens the file of the family after the current one (the oldest at first);
    /// `false` when there is none.
    fn open_next(&mut self) -> io::Result<bool> {
        let family = self.family()?;
        let next = match &self.current {
            None => family.first(),
            Some(cur) => match family.iter().position(|(_, ino)| *ino == cur.inode) {
                Some(i) => family.get(i + 1),
                // Ours is gone from the directory (rotated, then compressed or
                // removed): the first file that was not before it when it was opened.
                None => family
                    .iter()
                    .find(|(_, ino)| !cur.older.contains(ino) && *ino != cur.inode),
            },
        };
        let Some((name, inode)) = next.cloned() else {
            return Ok(false);
        };
        if self.current.as_ref().is_some_and(|c| c.inode == inode) {
            return Ok(false);
        }
        let dir = self.log_path.parent().unwrap_or(Path::new("/"));
        let file = File::open(dir.join(&name))?;
        // The name may have been rotated onto another file since the listing: the
        // position is the open file's.
        let inode = file.metadata()?.ino();
        let mut head = [0u8; BEHIND_BYTES];
        let head_len = file.read_at(&mut head, 0)?;
        // A file that follows ours holds later lines; one that holds what ours held,
        // at its start and right before our position, is ours again, copied and put
        // in place of it: the position is not in the files that follow, and the run
        // is read again from its first file (once per read: no loop between files).
        if let Some(cur) = &self.current
            && self.restarts_this_read == 0
            && head_len == BEHIND_BYTES
            && cur.head == Some(head)
            && holds_at(&file, cur.pos, &cur.behind[..cur.behind_len])?
        {
            self.restart();
            return self.open_next();
        }
        let older = family
            .iter()
            .take_while(|(_, ino)| *ino != inode)
            .map(|(_, ino)| *ino)
            .collect();
        self.current = Some(OpenLog {
            file,
            inode,
            pos: 0,
            behind: [0; BEHIND_BYTES],
            behind_len: 0,
            older,
            head: (head_len == BEHIND_BYTES).then_some(head),
        });
        Ok(true)
    }

    fn live_name(&self) -> OsString {
        self.log_path.file_name().unwrap_or_default().to_os_string()
    }

    /// The run's files, oldest first: `N.log.<timestamp>` (rotated, uncompressed) by
    /// name, then the live `N.log`.
    fn family(&self) -> io::Result<Vec<(OsString, u64)>> {
        let live = self.live_name();
        let dir = self.log_path.parent().unwrap_or(Path::new("/"));
        let mut files = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if family_order(&name, &live).is_none() {
                continue;
            }
            if let Ok(meta) = entry.metadata()
                && meta.is_file()
            {
                files.push((name, meta.ino()));
            }
        }
        files.sort_by_key(|f| family_order(&f.0, &live));
        Ok(files)
    }
}

/// The other stream of a container's log: stderr for stdout, and the reverse.
fn other_stream(stream: Stream) -> Stream {
    match stream {
        Stream::Stderr => Stream::Stdout,
        _ => Stream::Stderr,
    }
}

/// Whether `file` is at least `pos` long and holds `behind` right before `pos`.
fn holds_at(file: &File, pos: u64, behind: &[u8]) -> io::Result<bool> {
    if file.metadata()?.len() < pos {
        return Ok(false);
    }
    let mut now = [0u8; BEHIND_BYTES];
    let now = &mut now[..behind.len()];
    match file.read_exact_at(now, pos - behind.len() as u64) {
        Ok(()) => Ok(now == behind),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sort key of a file in the family of `live` (`0.log`): rotated `0.log.<suffix>`
/// files by suffix, the live file last; `None` for files outside the family
/// (compressed or temporary rotations cannot be read back byte for byte).
fn family_order(name: &OsString, live: &OsString) -> Option<(u8, Vec<u8>)> {
    let name = name.as_bytes();
    let live = live.as_bytes();
    if name == live {
        return Some((1, Vec::new()));
    }
    let suffix = name.strip_prefix(live)?.strip_prefix(b".")?;
    if suffix.is_empty() || suffix.ends_with(b".gz") || suffix.ends_with(b".tmp") {
        return None;
    }
    Some((0, suffix.to_vec()))
}

/// What one [`read_ranges`] request got: the runs (offset, bytes) and how far it reached.
#[doc(hidden)]
#[derive(Debug)]
pub struct ReadBack {
    pub runs: Vec<(u64, Bytes)>,
    pub reached: u64,
    pub at_live_end: bool,
}

/// Reads `ranges` of `stream` in turn with one [`CriStreamReader`] of the run whose
/// live log is `log_path`, as the repair path does. `pub` for the fuzz target
/// `fuzz/fuzz_targets/cri_stream.rs` only.
#[doc(hidden)]
pub fn read_ranges(
    log_path: &Path,
    stream: Stream,
    ranges: &[(u64, u64)],
) -> io::Result<Vec<ReadBack>> {
    let mut reader = CriStreamReader::new(log_path.to_path_buf(), stream);
    let mut block = ReadBlock::default();
    let mut out = Vec::with_capacity(ranges.len());
    for &(from, to) in ranges {
        let mut runs = Vec::new();
        let reached = reader.read(&mut block, from, to, &mut runs)?;
        out.push(ReadBack {
            runs: runs.into_iter().map(|r| (r.offset, r.bytes)).collect(),
            reached: reached.offset,
            at_live_end: reached.at_live_end,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TS: &str = "2026-11-21T10:45:31.210111144Z";

    fn cri(stream: &str, tag: &str, content: &str) -> String {
        format!("{TS} {stream} {tag} {content}\n")
    }

    fn text(runs: &[Run]) -> String {
        let mut s = String::new();
        for r in runs {
            s.push_str(std::str::from_utf8(&r.bytes).unwrap());
        }
        s
    }

    fn write(path: &Path, lines: &[String]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for l in lines {
            f.write_all(l.as_bytes()).unwrap();
        }
    }

    #[test]
    fn stream_offsets_count_content_and_one_newline_per_full_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        write(
            &log,
            &[
                cri("stdout", "F", "one"),
                cri("stderr", "F", "err"),
                cri("stdout", "P", "tw"),
                cri("stdout", "F", "o"),
                cri("stdout", "F", ""),
            ],
        );
        let mut r = CriStreamReader::new(log.clone(), Stream::Stdout);
        let mut out = Vec::new();
        let reached = r
            .read(&mut ReadBlock::default(), 0, u64::MAX, &mut out)
            .unwrap();
        assert_eq!(text(&out), "one\ntwo\n\n");
        assert_eq!(
            reached,
            Reached {
                offset: 9,
                at_live_end: true
            }
        );
        let mut err = CriStreamReader::new(log, Stream::Stderr);
        let mut out = Vec::new();
        err.read(&mut ReadBlock::default(), 0, u64::MAX, &mut out)
            .unwrap();
        assert_eq!(text(&out), "err\n");
    }

    #[test]
    fn a_range_is_cut_exactly_and_the_rest_read_later() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        write(
            &log,
            &[cri("stdout", "F", "abcdef"), cri("stdout", "F", "ghij")],
        );
        let mut r = CriStreamReader::new(log, Stream::Stdout);
        let mut out = Vec::new();
        let reached = r.read(&mut ReadBlock::default(), 2, 5, &mut out).unwrap();
        assert_eq!(text(&out), "cde");
        assert_eq!(out[0].offset, 2);
        assert_eq!(reached.offset, 5);
        out.clear();
        r.read(&mut ReadBlock::default(), 5, 9, &mut out).unwrap();
        assert_eq!(text(&out), "f\ngh");
        assert_eq!(out[0].offset, 5);
    }

    #[test]
    fn follows_the_family_across_a_rotation_and_waits_at_the_live_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        write(&log, &[cri("stdout", "F", "first")]);
        let mut r = CriStreamReader::new(log.clone(), Stream::Stdout);
        let mut out = Vec::new();
        assert_eq!(
            r.read(&mut ReadBlock::default(), 0, 3, &mut out)
                .unwrap()
                .offset,
            3
        );
        // The kubelet rotates: rename, and the runtime reopens a new live file.
        std::fs::rename(&log, dir.path().join("0.log.20261121-104531")).unwrap();
        write(
            &dir.path().join("0.log.20261121-104531"),
            &[cri("stdout", "P", "sec")],
        );
        write(
            &log,
            &[cri("stdout", "F", "ond"), cri("stdout", "F", "third")],
        );
        // Compressed and temporary rotations are not part of the readable family.
        write(
            &dir.path().join("0.log.20261120-000000.gz"),
            &[cri("stdout", "F", "zzz")],
        );
        let reached = r
            .read(&mut ReadBlock::default(), 3, u64::MAX, &mut out)
            .unwrap();
        assert_eq!(text(&out), "first\nsecond\nthird\n");
        assert!(reached.at_live_end);
        assert_eq!(reached.offset, 19);
        // More comes later.
        write(&log, &[cri("stdout", "F", "4")]);
        out.clear();
        r.read(&mut ReadBlock::default(), 19, u64::MAX, &mut out)
            .unwrap();
        assert_eq!(text(&out), "4\n");
    }

    #[test]
    fn an_unterminated_last_line_is_not_read_until_complete() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        std::fs::write(&log, format!("{TS} stdout F whole\n{TS} stdout F hal")).unwrap();
        let mut r = CriStreamReader::new(log.clone(), Stream::Stdout);
        let mut out = Vec::new();
        let reached = r
            .read(&mut ReadBlock::default(), 0, u64::MAX, &mut out)
            .unwrap();
        assert_eq!(text(&out), "whole\n");
        assert_eq!(reached.offset, 6);
        write(&log, &["f\n".to_string()]);
        out.clear();
        r.read(&mut ReadBlock::default(), 6, u64::MAX, &mut out)
            .unwrap();
        assert_eq!(text(&out), "half\n");
    }

    #[test]
    fn garbage_lines_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let mut bytes = b"\xff\xfe not cri\n".to_vec();
        bytes.extend_from_slice(cri("stdout", "F", "ok").as_bytes());
        std::fs::write(&log, bytes).unwrap();
        let mut r = CriStreamReader::new(log, Stream::Stdout);
        let mut out = Vec::new();
        r.read(&mut ReadBlock::default(), 0, u64::MAX, &mut out)
            .unwrap();
        assert_eq!(text(&out), "ok\n");
        assert_eq!(r.malformed_lines(), 1);
    }

    #[test]
    fn consecutive_lines_are_one_run_split_where_their_times_part() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let later = "2026-11-21T10:45:32.210111144Z";
        let mut lines: Vec<String> = (0..100)
            .map(|i| cri("stdout", "F", &format!("l{i}")))
            .collect();
        lines.insert(50, cri("stderr", "F", "between"));
        // A second later: past the joining window, a run of its own.
        lines.push(format!("{later} stdout F last\n"));
        write(&log, &lines);
        let mut r = CriStreamReader::new(log, Stream::Stdout);
        let mut out = Vec::new();
        r.read(&mut ReadBlock::default(), 3, u64::MAX, &mut out)
            .unwrap();
        let expected: String = (0..100).map(|i| format!("l{i}\n")).collect::<String>() + "last\n";
        assert_eq!(text(&out), &expected[3..]);
        assert_eq!(out.len(), 2, "one run per time window, not one per line");
        assert_eq!(out[0].offset, 3);
        assert_eq!(out[1].offset, out[0].offset + out[0].bytes.len() as u64);
        assert_ne!(out[0].time_ns, out[1].time_ns);
    }

    #[test]
    fn readers_share_one_block_and_hold_none_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let logs: Vec<PathBuf> = (0..3)
            .map(|i| {
                let log = dir.path().join(format!("c{i}/0.log"));
                std::fs::create_dir_all(log.parent().unwrap()).unwrap();
                let lines: Vec<String> = (0..2000)
                    .map(|n| cri("stdout", "F", &format!("c{i} line {n:0>100}")))
                    .collect();
                write(&log, &lines);
                log
            })
            .collect();
        let mut readers: Vec<_> = logs
            .iter()
            .map(|l| CriStreamReader::new(l.clone(), Stream::Stdout))
            .collect();
        let mut block = ReadBlock::default();
        assert_eq!(block.held(), 0);
        let mut texts = vec![String::new(); 3];
        // Interleaved in small steps, as the stage repairs many streams per tick.
        for step in 0..60u64 {
            for (r, t) in readers.iter_mut().zip(&mut texts) {
                let mut out = Vec::new();
                r.read(&mut block, step * 5000, (step + 1) * 5000, &mut out)
                    .unwrap();
                t.push_str(&text(&out));
                assert_eq!(block.held(), READ_BLOCK, "one block, never grown");
            }
        }
        for (i, t) in texts.iter().enumerate() {
            let expected: String = (0..2000)
                .map(|n| format!("c{i} line {n:0>100}\n"))
                .collect();
            assert_eq!(*t, expected);
        }
    }

    /// `n` numbered stdout lines of about 100 bytes, from `first`.
    fn numbered(first: usize, n: usize) -> Vec<String> {
        (first..first + n)
            .map(|i| cri("stdout", "F", &format!("line {i:0>90}")))
            .collect()
    }

    /// The stream bytes of the lines `numbered(first, n)` carries.
    fn numbered_text(first: usize, n: usize) -> String {
        (first..first + n)
            .map(|i| format!("line {i:0>90}\n"))
            .collect()
    }

    /// `read` file bytes are `wanted`, give or take the partial line at the end of
    /// each block, which the next block reads again.
    fn assert_reads_only(read: u64, wanted: u64) {
        let slack = 200 * (wanted / READ_BLOCK as u64 + 3);
        assert!(
            (wanted..=wanted + slack).contains(&read),
            "read {read} file bytes for {wanted} after the kept position"
        );
    }

    #[test]
    fn a_read_after_a_long_log_reads_only_from_the_kept_position() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let lines = numbered(0, 20_000);
        write(&log, &lines);
        let line_len = numbered_text(0, 1).len() as u64;
        let mut r = CriStreamReader::new(log.clone(), Stream::Stdout);
        let mut block = ReadBlock::default();
        let mut out = Vec::new();
        // A repair late in the log: parsed from the run's start, once.
        let at = 19_000 * line_len;
        r.read(&mut block, at, at + line_len, &mut out).unwrap();
        assert_eq!(text(&out), numbered_text(19_000, 1));
        let kept_at: u64 = lines[..19_001].iter().map(|l| l.len() as u64).sum();
        assert!(r.bytes_read() >= kept_at);
        // The log grows; the next read (a later hole, the stream's end) reads what
        // follows the kept position and nothing before it.
        write(&log, &numbered(20_000, 1000));
        let file_len = std::fs::metadata(&log).unwrap().len();
        let before = r.bytes_read();
        out.clear();
        let from = 20_500 * line_len;
        let reached = r.read(&mut block, from, u64::MAX, &mut out).unwrap();
        assert_eq!(text(&out), numbered_text(20_500, 500));
        assert_eq!(reached.offset, 21_000 * line_len);
        assert_reads_only(r.bytes_read() - before, file_len - kept_at);
        assert_eq!(r.restarts(), 0);
    }

    #[test]
    fn a_rotation_between_reads_keeps_the_position_in_the_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        write(&log, &numbered(0, 3000));
        let line_len = numbered_text(0, 1).len() as u64;
        let mut r = CriStreamReader::new(log.clone(), Stream::Stdout);
        let mut block = ReadBlock::default();
        let mut out = Vec::new();
        r.read(&mut block, 0, 1000 * line_len, &mut out).unwrap();
        // More lines, then the kubelet rotates (rename; the runtime opens a new
        // live file), and the rotated file is even compressed away: the reader holds
        // it open and reads it to its end, then the files that came after it.
        write(&log, &numbered(3000, 500));
        let rotated = dir.path().join("0.log.20261121-104531");
        std::fs::rename(&log, &rotated).unwrap();
        write(&log, &numbered(3500, 500));
        let second = dir.path().join("0.log.20261121-104532");
        std::fs::rename(&log, &second).unwrap();
        write(&log, &numbered(4000, 500));
        std::fs::remove_file(&rotated).unwrap();
        let read_before = r.bytes_read();
        out.clear();
        let reached = r
            .read(&mut block, 1000 * line_len, u64::MAX, &mut out)
            .unwrap();
        assert_eq!(text(&out), numbered_text(1000, 3500));
        assert_eq!(reached.offset, 4500 * line_len);
        assert!(reached.at_live_end);
        let after_kept: u64 = numbered(1000, 3500).iter().map(|l| l.len() as u64).sum();
        assert_reads_only(r.bytes_read() - read_before, after_kept);
        assert_eq!(r.restarts(), 0);
    }

    #[test]
    fn a_truncated_log_is_not_read_at_its_stale_position_but_from_the_run_s_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        write(&log, &numbered(0, 2000));
        let line_len = numbered_text(0, 1).len() as u64;
        let mut r = CriStreamReader::new(log.clone(), Stream::Stdout);
        let mut block = ReadBlock::default();
        let mut out = Vec::new();
        r.read(&mut block, 0, 1500 * line_len, &mut out).unwrap();
        // `copytruncate`: the log copied aside, the live file truncated in place and
        // written on (past the kept position: the file is long enough, but the bytes
        // before the position are others now).
        std::fs::copy(&log, dir.path().join("0.log.1")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        write(&log, &numbered(2000, 2000));
        out.clear();
        let reached = r
            .read(&mut block, 1500 * line_len, u64::MAX, &mut out)
            .unwrap();
        assert_eq!(r.restarts(), 1);
        assert_eq!(
            text(&out),
            numbered_text(1500, 2500),
            "exact: no line lost or doubled"
        );
        assert_eq!(reached.offset, 4000 * line_len);
    }

    #[test]
    fn a_log_replaced_by_another_file_is_read_again_from_the_run_s_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        write(&log, &numbered(0, 100));
        let line_len = numbered_text(0, 1).len() as u64;
        let mut r = CriStreamReader::new(log.clone(), Stream::Stdout);
        let mut block = ReadBlock::default();
        let mut out = Vec::new();
        r.read(&mut block, 0, 60 * line_len, &mut out).unwrap();
        // The live log put in place by another file (written aside and renamed over
        // it) holding the same run and more: the held file is gone from the
        // directory with nothing after it but the new live file.
        let aside = dir.path().join("new.tmp");
        write(&aside, &numbered(0, 150));
        std::fs::rename(&aside, &log).unwrap();
        out.clear();
        let reached = r
            .read(&mut block, 60 * line_len, u64::MAX, &mut out)
            .unwrap();
        assert_eq!(text(&out), numbered_text(60, 90));
        assert_eq!(reached.offset, 150 * line_len);
        // And a file truncated below the kept position.
        std::fs::write(&log, numbered(0, 10).concat()).unwrap();
        out.clear();
        let reached = r
            .read(&mut block, 150 * line_len, u64::MAX, &mut out)
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(
            reached.offset,
            10 * line_len,
            "numbered from the run's start again"
        );
        assert!(r.restarts() >= 1);
    }

    /// `n` lines of about 100 bytes, every fourth on stderr: `(lines, stdout text,
    /// stderr text)`.
    fn interleaved(n: usize) -> (Vec<String>, Vec<String>, Vec<String>) {
        let (mut lines, mut out, mut err) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let (stream, text) = match i % 4 {
                3 => ("stderr", &mut err),
                _ => ("stdout", &mut out),
            };
            let content = format!("{stream} {i:0>90}");
            lines.push(cri(stream, "F", &content));
            text.push(content + "\n");
        }
        (lines, out, err)
    }

    #[test]
    fn a_fork_for_the_other_stream_starts_at_the_position_its_sibling_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let (lines, out, err) = interleaved(20_000);
        write(&log, &lines);
        let file_len = std::fs::metadata(&log).unwrap().len();
        let mut block = ReadBlock::default();
        // Stdout read (a repair late in the log) up to its line 14 000, which is
        // the file's line 18 666 (about 93% of it): its reader stays at that line.
        let at: u64 = out[..14_000].iter().map(|l| l.len() as u64).sum();
        let mut stdout = CriStreamReader::new(log.clone(), Stream::Stdout);
        stdout
            .read(&mut block, at, at + 1, &mut Vec::new())
            .unwrap();
        let kept_at: u64 = lines[..18_666].iter().map(|l| l.len() as u64).sum();
        // Stderr, never read: its first read starts where stdout's reader stands
        // (after its 4666 lines before the file's line 18 666).
        let mut stderr = stdout.fork(Stream::Stderr).unwrap();
        let from: u64 = err[..4700].iter().map(|l| l.len() as u64).sum();
        let before = block.bytes_read();
        let mut got = Vec::new();
        let reached = stderr.read(&mut block, from, u64::MAX, &mut got).unwrap();
        assert_eq!(text(&got), err[4700..].concat(), "exact, at its offsets");
        assert_eq!(got[0].offset, from);
        let stderr_len: u64 = err.iter().map(|l| l.len() as u64).sum();
        assert_eq!(reached.offset, stderr_len);
        assert_reads_only(block.bytes_read() - before, file_len - kept_at);
        // A fork of the same stream goes on like the reader it was forked from.
        let mut again = stdout.fork(Stream::Stdout).unwrap();
        let mut got = Vec::new();
        again.read(&mut block, at, u64::MAX, &mut got).unwrap();
        assert_eq!(text(&got), out[14_000..].concat());
        assert_eq!(again.malformed_lines(), 0);
    }

    #[test]
    fn a_missing_log_reads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = CriStreamReader::new(dir.path().join("gone/0.log"), Stream::Stdout);
        let mut out = Vec::new();
        let reached = r.read(&mut ReadBlock::default(), 0, 10, &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(
            reached,
            Reached {
                offset: 0,
                at_live_end: true
            }
        );
    }
}

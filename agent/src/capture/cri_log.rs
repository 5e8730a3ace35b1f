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
//! Only holes are read, so the reader costs nothing while capture is complete; a
//! first repair late in a container's life scans the log from its start once
//! (memchr speed), after which the reader stays at the repaired position.

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
/// A CRI line is at most the runtime's buffer (16 KiB) plus its envelope; anything
/// far longer is not a runtime-written line and is skipped rather than buffered.
const MAX_CRI_LINE: usize = 1 << 20;

#[derive(Debug)]
struct OpenLog {
    file: File,
    inode: u64,
    name: OsString,
    /// File offset of the first byte not yet parsed into a line.
    pos: u64,
}

#[derive(Debug)]
pub(crate) struct CriStreamReader {
    log_path: PathBuf,
    stream: Stream,
    current: Option<OpenLog>,
    /// Stream offset at `current.pos`.
    stream_offset: u64,
    timestamps: Rfc3339Cache,
    /// Lines skipped because they were no CRI line (or absurdly long).
    malformed: u64,
    /// The content ranges of the lines being joined into one run (kept for its
    /// allocation): `(start, end)` in the block.
    spans: Vec<(usize, usize)>,
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
            timestamps: Rfc3339Cache::default(),
            malformed: 0,
            spans: Vec::new(),
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Lines skipped as not CRI so far.
    pub fn malformed_lines(&self) -> u64 {
        self.malformed
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
        let mut at_live_end = false;
        let mut done = self.stream_offset >= to;
        while !done {
            if self.current.is_none() && !self.open_next()? {
                at_live_end = true;
                break;
            }
            let log = self.current.as_mut().expect("opened above");
            let buf = block.get();
            let n = log.file.read_at(buf, log.pos)?;
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
            log.pos += consumed as u64;
            if consumed > 0 || done {
                continue;
            }
            if n < READ_BLOCK {
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
            // A whole block without a newline: not a runtime line; skip past it.
            self.malformed += 1;
            log.pos += n as u64;
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
            if header.stream != self.stream {
                consumed = end + 1;
                continue;
            }
            // P: the content only; F: the content and the newline that ended it,
            // which the file holds right after it.
            let content_start = consumed + header.message_start.min(line.len());
            let content_end = if header.partial { end } else { end + 1 };
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
                // Ours is gone from the directory: the first one named after it.
                None => family.iter().find(|(name, _)| {
                    family_order(name, &self.live_name())
                        > family_order(&cur.name, &self.live_name())
                }),
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
        self.current = Some(OpenLog {
            file,
            inode,
            name,
            pos: 0,
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

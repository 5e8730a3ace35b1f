//! The file sink: every record as one NDJSON object appended to a file.
//!
//! The object shape is [`crate::sink::store::render::write_json_record`], the same as `logtap query
//! --json`. `flush` writes the buffer out and fsyncs, so an acknowledged package is on
//! disk (a FIFO, pipe or terminal is flushed without fsync, which they do not support).
//!
//! # Whole lines
//!
//! The file only ever receives bytes of whole rendered lines, in order: a write cut
//! short (disk full) keeps the unwritten rest buffered and writes it first next time,
//! so a failed and retried package never lands after half a line. A torn last line
//! left by a crash (never acknowledged: `flush` completes lines before fsyncing) is cut
//! away when the file is opened, so the next line does not join it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::batch::Batch;
use crate::sink::store::render::{PackageJson, RecordView};
use crate::sink::{Sink, SinkError};
use crate::source::SourceKind;

/// Rendered bytes held before `write` starts writing them out.
const BUFFER_BYTES: usize = 256 * 1024;

pub struct FileSink {
    path: PathBuf,
    file: File,
    /// Rendered whole lines not yet written to `file`.
    pending: Vec<u8>,
    /// Only a regular file can be fsynced: `fdatasync` fails with EINVAL on a FIFO,
    /// pipe or terminal (`/dev/stdout`), where a written byte is as durable as it gets.
    sync: bool,
    /// Rendering scratch, reused for every record.
    line: Vec<u8>,
}

impl FileSink {
    /// Opens `path` for appending, creating it (not its directory).
    pub fn open(path: &Path) -> std::io::Result<FileSink> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let sync = file.metadata()?.file_type().is_file();
        if sync {
            // A separate read handle: opening a FIFO for reading too would not wait
            // for its reader (and what we write could be lost).
            cut_torn_tail(&mut File::open(path)?, &file, path)?;
        }
        Ok(FileSink {
            path: path.to_path_buf(),
            file,
            pending: Vec::with_capacity(BUFFER_BYTES),
            sync,
            line: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `pending` out. On error the written part is dropped from it and the rest
    /// kept, so the next attempt continues exactly where the file stopped.
    fn drain(&mut self) -> std::io::Result<()> {
        let mut written = 0;
        let result = loop {
            if written == self.pending.len() {
                break Ok(());
            }
            match self.file.write(&self.pending[written..]) {
                Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.pending.drain(..written);
        result
    }
}

/// Truncates `file` after its last newline: bytes past it are a line a crash cut short.
fn cut_torn_tail(reader: &mut File, file: &File, path: &Path) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Scan back in blocks: records can be megabytes long.
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        reader.seek(SeekFrom::Start(start))?;
        reader.read_exact(chunk)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            let keep = start + i as u64 + 1;
            if keep < len {
                tracing::warn!(path = %path.display(), bytes = len - keep,
                    "file sink: cutting a torn last line left by a crash");
                file.set_len(keep)?;
            }
            return Ok(());
        }
        end = start;
    }
    tracing::warn!(path = %path.display(), bytes = len,
        "file sink: cutting a torn last line left by a crash");
    file.set_len(0)
}

/// Renders every record of `batch` as NDJSON, calling `sink` once per record.
pub(crate) fn render_batch(
    batch: &Batch,
    line: &mut Vec<u8>,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    // The parts every line of the batch shares, rendered once.
    let mut json = PackageJson::default();
    json.reset(
        batch.source.id,
        Some(&batch.source.path),
        batch.package_id,
        &batch.source_fields,
    );
    for (i, l) in batch.lines.iter().enumerate() {
        line.clear();
        let view = RecordView {
            source_id: batch.source.id,
            path: Some(&batch.source.path),
            package_id: batch.package_id,
            offset: l.offset,
            timestamp_ns: l.timestamp_ns,
            stream: l.stream,
            captured: batch.source.kind == SourceKind::Capture,
            flags: l.flags,
            body: batch.body(l),
            source_fields: &batch.source_fields,
        };
        let fields = batch
            .fields_of(i)
            .iter()
            .map(|f| (&f.key[..], batch.value(f)));
        json.write_record(line, &view, fields, false);
        sink(line)?;
    }
    Ok(())
}

impl Sink for FileSink {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        // Fails before taking the package, so a retry does not render it twice.
        if self.pending.len() >= BUFFER_BYTES {
            self.drain()?;
        }
        let pending = &mut self.pending;
        render_batch(batch, &mut self.line, |l| {
            pending.extend_from_slice(l);
            Ok(())
        })?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.drain()?;
        if self.sync {
            self.file.sync_data().map_err(super::fsync_failed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::batch::Field;
    use crate::frame::{LineFlags, Record, Stream};
    use crate::source::{SourceId, SourceInfo, SourceKind};

    pub(crate) fn sample_batch() -> Batch {
        let source = Arc::new(SourceInfo {
            id: SourceId(7),
            kind: SourceKind::CriFile,
            path: "/var/log/pods/ns_pod_uid/app/0.log".into(),
            config_name: Arc::from("pods"),
        });
        let lines = vec![
            Record {
                offset: 0,
                timestamp_ns: 1_000,
                stream: Stream::Stdout,
                flags: LineFlags::empty(),
                body: Bytes::from_static(b"hello \"world\"").into(),
            },
            Record {
                offset: 20,
                timestamp_ns: 2_000,
                stream: Stream::Stderr,
                flags: LineFlags::INVALID_UTF8,
                body: Bytes::from_static(b"bad \xff byte").into(),
            },
        ];
        let fields = vec![Field {
            line: 1,
            key: Bytes::from_static(b"level"),
            value: Bytes::from_static(b"error").into(),
        }];
        let source_fields = Arc::new(vec![
            (Bytes::from_static(b"k8s.pod"), Bytes::from_static(b"pod")),
            (
                Bytes::from_static(b"k8s.namespace"),
                Bytes::from_static(b"ns"),
            ),
        ]);
        let (chunks, lines) = Batch::pack(lines);
        Batch {
            chunks,
            source,
            package_id: 3,
            lines,
            fields,
            source_fields,
            end_offset: 40,
        }
    }

    #[test]
    fn appends_ndjson_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        for _ in 0..2 {
            let mut sink = FileSink::open(&path).unwrap();
            sink.write(&sample_batch()).unwrap();
            sink.flush().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let objects: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(objects.len(), 4);
        assert_eq!(objects[0]["body"], "hello \"world\"");
        assert_eq!(objects[0]["stream"], "stdout");
        assert_eq!(objects[0]["source_id"], "0000000000000007");
        assert_eq!(objects[0]["path"], "/var/log/pods/ns_pod_uid/app/0.log");
        assert_eq!(objects[0]["fields"], serde_json::json!({}));
        assert_eq!(objects[1]["offset"], 20);
        assert_eq!(objects[1]["package_id"], 3);
        assert_eq!(objects[1]["flags"], serde_json::json!(["invalid_utf8"]));
        assert_eq!(
            crate::sink::store::b64::decode(objects[1]["body_base64"].as_str().unwrap()).unwrap(),
            b"bad \xff byte"
        );
        assert_eq!(objects[1]["fields"]["level"], "error");
        for object in &objects {
            assert_eq!(
                object["resource"],
                serde_json::json!({"k8s.pod": "pod", "k8s.namespace": "ns"})
            );
        }
        assert_eq!(objects[2], objects[0]);
    }

    #[test]
    fn flushes_into_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.fifo");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path in our temporary directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let reader = std::thread::spawn({
            let path = path.clone();
            move || std::fs::read_to_string(path).unwrap()
        });
        let mut sink = FileSink::open(&path).unwrap();
        sink.write(&sample_batch()).unwrap();
        sink.flush().expect("a FIFO is flushed without fsync");
        drop(sink);
        assert_eq!(reader.join().unwrap().lines().count(), 2);
    }
}

#[cfg(test)]
mod disk_full_tests {
    use super::*;
    use crate::frame::{LineFlags, Stream};

    /// A record larger than the write buffer, hitting a full disk: retried the way
    /// the sink worker does (write until accepted, then flush until durable), it
    /// must not leave a torn NDJSON line in the file.
    #[test]
    fn disk_full_on_a_large_record_leaves_whole_lines() {
        let Some(fs) = crate::sink::test_fs::SmallFs::mount("1m") else {
            return;
        };
        let path = fs.path().join("out.ndjson");
        let mut sink = FileSink::open(&path).unwrap();
        sink.write(&tests::sample_batch()).unwrap();
        sink.flush().unwrap();

        let mut big = tests::sample_batch();
        big.lines.truncate(1);
        big.fields.clear();
        big.lines[0].offset = 40;
        big.lines[0].timestamp_ns = 3_000;
        big.lines[0].stream = Stream::Stdout;
        big.lines[0].flags = LineFlags::empty();
        big.set_body(0, bytes::Bytes::from(vec![b'a'; 600 * 1024]));
        let filler = fs.fill_leaving(64 * 1024);
        let mut filler = Some(filler);
        let mut make_room = || {
            if let Some(f) = filler.take() {
                std::fs::remove_file(f).unwrap();
            }
        };
        let mut failures = 0;
        while sink.write(&big).is_err() {
            failures += 1;
            make_room();
        }
        while sink.flush().is_err() {
            failures += 1;
            make_room();
        }
        assert!(failures > 0, "the disk was full");
        sink.write(&tests::sample_batch()).unwrap();
        sink.flush().unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let mut big_seen = 0;
        for (i, line) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("line {i} is not JSON ({e}): {:.80}", line));
            big_seen += (v["offset"] == 40) as usize;
        }
        assert!(big_seen >= 1);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn torn_last_line_from_a_crash_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let mut sink = FileSink::open(&path).unwrap();
        sink.write(&tests::sample_batch()).unwrap();
        sink.flush().unwrap();
        drop(sink);
        // Killed while writing out a record longer than the scan block.
        let mut torn = b"{\"ts\":\"1970".to_vec();
        torn.resize(200 * 1024, b'x');
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&torn)
            .unwrap();
        let mut sink = FileSink::open(&path).unwrap();
        sink.write(&tests::sample_batch()).unwrap();
        sink.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4);
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }
}

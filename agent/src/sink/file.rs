//! The file sink: every record as one NDJSON object appended to a file.
//!
//! The object shape is [`render::write_json_record`], the same as `logtap query
//! --json`. `flush` flushes the buffer and fsyncs, so an acknowledged package is on disk
//! (a FIFO, pipe or terminal is flushed without fsync, which they do not support).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::batch::Batch;
use crate::sink::store::render::{self, RecordView};
use crate::sink::{Sink, SinkError};

const BUFFER_BYTES: usize = 256 * 1024;

pub struct FileSink {
    path: PathBuf,
    writer: BufWriter<File>,
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
        Ok(FileSink {
            path: path.to_path_buf(),
            sync,
            writer: BufWriter::with_capacity(BUFFER_BYTES, file),
            line: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Renders every record of `batch` as NDJSON, calling `sink` once per record.
pub(crate) fn render_batch(
    batch: &Batch,
    line: &mut Vec<u8>,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    for (i, l) in batch.lines.iter().enumerate() {
        line.clear();
        let view = RecordView {
            source_id: batch.source.id,
            path: Some(&batch.source.path),
            package_id: batch.package_id,
            offset: l.offset,
            timestamp_ns: l.timestamp_ns,
            stream: l.stream,
            flags: l.flags,
            body: &l.body,
        };
        let fields = batch
            .fields_of(i)
            .iter()
            .map(|f| (&f.key[..], &f.value[..]));
        render::write_json_record(line, &view, fields, false);
        sink(line)?;
    }
    Ok(())
}

impl Sink for FileSink {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let writer = &mut self.writer;
        render_batch(batch, &mut self.line, |l| writer.write_all(l))?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.writer.flush()?;
        if self.sync {
            self.writer.get_ref().sync_data()?;
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
    use crate::frame::{Line, LineFlags, Stream};
    use crate::source::{SourceId, SourceInfo, SourceKind};

    pub(crate) fn sample_batch() -> Batch {
        let source = Arc::new(SourceInfo {
            id: SourceId(7),
            kind: SourceKind::CriFile,
            path: "/var/log/pods/ns_pod_uid/app/0.log".into(),
            config_name: Arc::from("pods"),
        });
        let lines = vec![
            Line {
                offset: 0,
                timestamp_ns: 1_000,
                stream: Stream::Stdout,
                flags: LineFlags::empty(),
                body: Bytes::from_static(b"hello \"world\""),
            },
            Line {
                offset: 20,
                timestamp_ns: 2_000,
                stream: Stream::Stderr,
                flags: LineFlags::INVALID_UTF8,
                body: Bytes::from_static(b"bad \xff byte"),
            },
        ];
        let fields = vec![Field {
            line: 1,
            key: Bytes::from_static(b"level"),
            value: Bytes::from_static(b"error"),
        }];
        Batch {
            source,
            package_id: 3,
            lines,
            fields,
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

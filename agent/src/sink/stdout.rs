//! The stdout sink: every record as one NDJSON object on standard output, in the
//! shape of [`crate::sink::store::render::write_json_record`].

use std::io::Write;

use crate::batch::Batch;
use crate::sink::file::render_batch;
use crate::sink::{Sink, SinkError};

/// Output is rendered per package into one buffer and written under one lock of
/// stdout, so packages never interleave with other output mid-line.
pub struct StdoutSink {
    stdout: std::io::Stdout,
    /// The rendered package, reused.
    buf: Vec<u8>,
    line: Vec<u8>,
}

impl StdoutSink {
    pub fn new() -> StdoutSink {
        StdoutSink {
            stdout: std::io::stdout(),
            buf: Vec::new(),
            line: Vec::new(),
        }
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        StdoutSink::new()
    }
}

impl Sink for StdoutSink {
    fn kind(&self) -> &'static str {
        "stdout"
    }

    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.buf.clear();
        let buf = &mut self.buf;
        render_batch(batch, &mut self.line, |l| {
            buf.extend_from_slice(l);
            Ok(())
        })?;
        self.stdout.lock().write_all(&self.buf)?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.stdout.lock().flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_flushes() {
        // Output goes to the test harness's captured stdout; the shape is tested by the
        // file sink, which renders the same way.
        let mut sink = StdoutSink::new();
        sink.write(&crate::sink::file::tests::sample_batch())
            .unwrap();
        sink.flush().unwrap();
        assert_eq!(sink.kind(), "stdout");
        assert!(sink.buf.ends_with(b"\n"));
        assert_eq!(sink.buf.iter().filter(|&&b| b == b'\n').count(), 2);
    }
}

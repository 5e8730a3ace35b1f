//! The null sink: accepts and acknowledges every package without touching it (for
//! benchmarks and dry runs): no rendering, no compression, no copy.

use crate::batch::Batch;
use crate::sink::{Sink, SinkError};

#[derive(Debug, Default)]
pub struct NullSink {
    packages: u64,
}

impl NullSink {
    pub fn new() -> NullSink {
        NullSink::default()
    }

    /// Packages accepted so far.
    pub fn packages(&self) -> u64 {
        self.packages
    }
}

impl Sink for NullSink {
    fn kind(&self) -> &'static str {
        "null"
    }

    fn write(&mut self, _batch: &Batch) -> Result<(), SinkError> {
        self.packages += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_everything() {
        let mut sink = NullSink::new();
        let batch = crate::sink::file::tests::sample_batch();
        for _ in 0..3 {
            sink.write(&batch).unwrap();
        }
        sink.flush().unwrap();
        assert_eq!(sink.packages(), 3);
    }
}

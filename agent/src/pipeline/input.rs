//! The one interface every input drives the pipeline through: a source opens, its
//! bytes arrive at exact offsets, a hole is declared, the source ends; and the clock
//! ticks.
//!
//! Four inputs call it today: the file source (`source::file`, on the source
//! thread), the capture stage (`capture`, on its own thread with its own pipeline),
//! self-monitoring (`selfmon`, likewise) and the network inputs (`source::net`,
//! likewise). They only know this module; what happens to the bytes (framing, parsing, packages,
//! sinks) is the pipeline's business ([`super::Pipeline`] implements [`Input`]).
//!
//! # Protocol
//!
//! Calls for one source come from one thread, in order: [`Input::opened`], then
//! [`Input::data`] chunks that are contiguous in the source's offsets (a
//! [`Input::gap`] moves the next expected offset forward), then one
//! [`Input::ended`]. Sources interleave freely. [`Input::tick`] comes at least every
//! 100 ms, whatever there is to read.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::discovery::PodLogRef;
use crate::frame::Stream;
use crate::source::file::FileIdentity;
use crate::source::{SourceId, SourceInfo};

/// What an input tells the pipeline.
pub trait Input {
    /// A source starts (or resumes) at `opening.start_offset`.
    fn opened(&mut self, opening: Opening);
    /// `chunk` holds the bytes of `source` at `offset..offset + chunk.len()`.
    /// `written_ns` is when they were written (ns since the Unix epoch) when the input
    /// knows it (captured streams); otherwise the pipeline dates them on arrival. May
    /// block (backpressure): the input then simply reads later.
    fn data(&mut self, source: SourceId, offset: u64, chunk: Bytes, written_ns: Option<i64>);
    /// The bytes of `source` before `offset` are lost for good (the input counted
    /// them): what is buffered becomes records as it is, and framing restarts at
    /// `offset`, so no line is glued across the hole.
    fn gap(&mut self, source: SourceId, offset: u64);
    /// The source ended; nothing more arrives for it.
    fn ended(&mut self, source: SourceId, reason: EndReason);
    /// Time passes: time-based flushes (multiline, partial lines, package age).
    fn tick(&mut self, now: Instant);
    /// Holds at most about `bytes` in all sources' open packages together, shipping
    /// the oldest early beyond it: for an input of many sources at once (capture's
    /// hundreds of container streams), where each package's own limits times the
    /// sources is more than the agent's memory. Called once, before the first source
    /// opens; an implementation that holds nothing ignores it.
    fn bound_open_packages(&mut self, _bytes: usize) {}
}

/// A source that starts: what it is, who reads it, and where.
#[derive(Debug, Clone)]
pub struct Opening {
    pub info: Arc<SourceInfo>,
    /// The `Config::sources` entries that read it, in config order, never empty. The
    /// first (the primary) ships under `info.id`; every other one under
    /// [`super::branch_id`], each with its own framing, parser and sink.
    pub configs: Vec<usize>,
    pub start_offset: u64,
    /// The source this one replaces at the same path (rotation), already read to its
    /// end: CRI/docker partial-line state moves from it to this one.
    pub predecessor: Option<SourceId>,
    pub content: Content,
}

/// What a source's bytes are.
#[derive(Debug, Clone)]
pub enum Content {
    /// A file, decoded as each reading config's `format` says (raw, CRI, docker). A
    /// file's container, if any, is known from its path; `identity` is the file's
    /// device, inode and fingerprint when it was opened.
    File { identity: FileIdentity },
    /// One output stream of a container as the container wrote it (no CRI
    /// envelope): framed as raw lines, each tagged with `stream`. Its name is not a
    /// log path, so its container (log reference, container id) comes with it.
    Stream {
        stream: Stream,
        container: Option<(PodLogRef, Option<String>)>,
    },
    /// Messages a network input framed itself: each [`Input::data`] chunk is one
    /// record, whatever bytes it holds ([`crate::config::Format::Message`]).
    Messages,
}

impl Opening {
    /// A file read by `configs` (see [`Opening::configs`]).
    pub fn file(
        info: Arc<SourceInfo>,
        configs: &[usize],
        identity: FileIdentity,
        start_offset: u64,
        predecessor: Option<SourceId>,
    ) -> Opening {
        Opening {
            info,
            configs: configs.to_vec(),
            start_offset,
            predecessor,
            content: Content::File { identity },
        }
    }

    /// A captured container stream read by `config`.
    pub fn stream(
        info: Arc<SourceInfo>,
        config: usize,
        start_offset: u64,
        stream: Stream,
        container: Option<(PodLogRef, Option<String>)>,
    ) -> Opening {
        Opening {
            info,
            configs: vec![config],
            start_offset,
            predecessor: None,
            content: Content::Stream { stream, container },
        }
    }
}

/// Why a source ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// A file rotated away (renamed) and drained to its end; no writer for
    /// `rotate_wait`.
    Rotated,
    /// A file deleted and drained to its end.
    Deleted,
    /// A file truncated in place (copytruncate): the source ends here, the file
    /// continues as a new source (new `SourceId`, offsets from 0).
    Truncated,
    /// One-shot mode: the file was read to its end.
    Eof,
    /// A captured stream whose container run is over, handed on to its end (its
    /// CRI log compared, holes repaired or given up).
    Exited,
    /// The agent is shutting down (or rebuilding): what is buffered stays unshipped
    /// unless complete, and is read again from the checkpoint.
    Shutdown,
}

//! logtap: a node-level log collector.
//!
//! The modules follow the data flow of `docs/architecture.md`, one module per stage:
//!
//! ```text
//! source (files: discover, identify, read via io_uring or pread)
//!   -> frame (split lines with memchr, CRI/docker decode, partial reassembly, multiline)
//!   -> parse (json / regex / delimiter / nginx / apache)
//!   -> route (which sink a source's lines go to)
//!   -> batch (packages of (source_id, package_id), lz4 on the wire)
//!   -> sink (local store | file | stdout | null) -> ack
//!   -> checkpoint (durable, advanced only on ack)
//! metrics observes every stage; config describes all of them; pipeline wires them.
//! ```
//!
//! Every line carries `(source_id, offset)`; every package carries `(source_id,
//! package_id)`. Checkpoints, deduplication and context queries all use those coordinates.

pub mod batch;
pub mod capture;
pub mod checkpoint;
pub mod collections;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod enrich;
pub mod frame;
pub mod metrics;
pub mod parse;
pub mod pipeline;
pub mod route;
pub mod select;
pub mod sink;
pub mod source;

//! logtap: a node-level log collector.
//!
//! The modules follow the data flow of `docs/architecture.md`, one module per stage:
//!
//! ```text
//! inputs, each driving pipeline::Input (opened, data, gap, ended, tick):
//!   source   files: discover, identify, read via io_uring or pread, follow rotation;
//!            source::net: syslog (tcp/udp/unix), http (NDJSON) and otlp listeners
//!   capture  container stdout/stderr from the eBPF probes, holes repaired from CRI logs
//!   selfmon  the agent's own log events and statistics (source `logtap://self`)
//!   events   Kubernetes events, by the one agent holding a Lease (source `k8s://events`)
//!     (helped by discovery: container registry over CRI, pod cache over the API;
//!      and select: which containers a selector takes)
//! pipeline, per source on the input's thread:
//!   -> frame   split lines with memchr, CRI/docker decode, partial reassembly, multiline
//!   -> parse   json / regex / delimiter / nginx / apache
//!   -> transform  the source's processors: keep/drop, mask, extract, fields
//!   -> enrich  pod, namespace, container, image, labels: per source, not per line
//!   -> batch   packages of (source_id, package_id), lz4 on the wire
//!   -> route   onto the sink's bounded queue (the backpressure)
//!   -> sink    a worker per sink: store | file | stdout | null, or a network sink's
//!              spool, forwarded to kafka | otlp -> ack
//!   -> checkpoint  offsets advance over acknowledged packages, persisted atomically
//! collections: LogCollection objects merged into the effective config (live rebuilds).
//! config describes all of them (schema -> raw | crd -> validate); metrics observes
//! them (one catalogue of names); pipeline wires them (supervisor, services, sinks);
//! privileges keeps the agent's files private and drops what it need not keep; memory
//! hands the allocator's free pages back to the system while capture runs.
//! top reads a running agent's metrics back as a live view (`logtap top`).
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
pub mod events;
pub mod frame;
pub mod memory;
pub mod metrics;
pub mod parse;
pub mod pipeline;
pub mod privileges;
pub mod progress;
pub mod route;
pub mod select;
pub mod selfmon;
pub mod sink;
pub mod source;
pub mod top;
pub mod transform;

//! Capture: container stdout/stderr taken from the kernel by the eBPF probes, put back
//! into ordered streams, repaired from the runtime's CRI log where the kernel could not
//! deliver, and fed into the pipeline like any other source. See `docs/capture.md`.
//!
//! - [`probe`]: the kernel side's userspace half. The probes (`agent-ebpf/probes`, built
//!   by `cargo xtask build-ebpf` and embedded by `build.rs`) copy exactly the bytes the
//!   kernel accepted on each watched container's stdout/stderr pipe, each record tagged
//!   with its byte offset in that stream, so that userspace sees every gap.
//!   [`Probes::load`] loads and attaches them, [`Probes::watch_existing`] watches
//!   cgroups that existed before the agent, [`Probes::poll`] reads the ring buffer
//!   ([`ProbeEvent`]).
//! - `ring`: the ring buffer read in bulk, the consumer position published once per
//!   drain rather than once per record.
//! - `tracefs`, `btf`: the load-time facts the probes need from the running kernel
//!   (tracepoint field offsets; struct member offsets).
//! - `runs`: the records of one drain of the ring, each stream's consecutive records
//!   joined into one chunk.
//! - `stream`: a container stream put back in offset order, holes found.
//! - `stream_keys`: the kernel's stream map's keys by cgroup, so that a cgroup's
//!   streams are looked up when it is forgotten, not found by walking the map.
//! - `cri_log`: the repair path, a stream read back from its CRI log by offset.
//! - `existing`: containers running when the agent starts, found in `/proc`.
//! - `seam`: where a running container's CRI log ends and its capture begins.
//! - `kernel58` (tests): the compat hooks' programs checked against what Linux 5.8's
//!   verifier accepts.
//! - `pin`: the probes kept in bpffs across agent restarts (layout stamp, the pin
//!   directory's contents); `resume` (in `stage`): their streams taken over.
//! - `stage`: probe events into the pipeline, holes repaired, streams ended;
//!   `stage_metrics` (in `stage`): the handles of its per-poll and per-tick metrics.
//! - `schedule`: the stage's repair steps taken in turns, round-robin, under a
//!   node-wide budget per tick, with the ring drained between them.
//! - claims ([`Claims`], in `source::claims`): which CRI logs capture ships, so the
//!   file source leaves them alone.
//! - `spawn`: the probes loaded and the stage started on its thread, or a logged
//!   fallback to the CRI files when they cannot load.
//!
//! # Metrics
//!
//! From the kernel's per-CPU counters, copied on [`Probes::poll`] at most every 100 ms:
//! `logtap_capture_probe_load_seconds`, `logtap_capture_hook_mode`,
//! `logtap_capture_pin_starts_total`, `logtap_capture_pin_wait_seconds` (set at load),
//! `logtap_capture_kernel_records_total`,
//! `logtap_capture_kernel_bytes_total`, `logtap_capture_ring_dropped_records_total` and
//! `logtap_capture_ring_dropped_bytes_total` (by `reason`: `ring_full`, `too_large`,
//! `fault`, `concurrent`), `logtap_capture_lost_events_total`. From the stage: records, bytes, gaps,
//! repaired, unrepairable and spilled bytes, spills over the node-wide budget
//! (`logtap_capture_budget_spills_total`, `logtap_capture_buffered_bytes`), seams
//! (`logtap_capture_seams_total`), streams taken over from pins
//! (`logtap_capture_resumed_streams_total`), streams
//! and watched containers
//! (`docs/operations.md`).

mod btf;
mod cri_log;
mod existing;
#[cfg(test)]
mod kernel58;
mod pin;
pub mod probe;
mod ring;
mod runs;
mod schedule;
mod seam;
mod spawn;
mod stage;
mod stream;
mod stream_keys;
mod tracefs;

pub use crate::source::claims::{Claim, Claims};
#[doc(hidden)]
pub use cri_log::{ReadBack, read_ranges as read_cri_stream};
pub use pin::unpin;
pub use probe::{
    DropReason, HookMode, KernelStats, PinWait, Pinning, ProbeError, ProbeEvent, ProbeOptions,
    Probes,
};
pub use spawn::{CaptureResolver, CaptureThread};
pub use stage::{CaptureStage, CapturedContainer, ContainerResolver, EventFeed};
#[doc(hidden)]
pub use stream::reassemble as reassemble_stream;

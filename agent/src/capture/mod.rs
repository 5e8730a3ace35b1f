//! eBPF capture of container stdout/stderr, and container lifecycle, from the kernel.
//!
//! The kernel side (`agent-ebpf/probes`, built by `cargo xtask build-ebpf` and embedded
//! by `build.rs`) copies exactly the bytes the kernel accepted on each watched
//! container's stdout/stderr pipe, each record tagged with its byte offset in that
//! stream, so that userspace sees every gap. See `docs/capture.md`.
//!
//! - [`probe`]: loading and attaching the probes ([`Probes::load`]), watching cgroups that
//!   existed before the agent ([`Probes::watch_existing`]), and reading the ring buffer
//!   ([`Probes::poll`] → [`ProbeEvent`]).
//! - `tracefs`, `btf`: the load-time facts the probes need from the running kernel
//!   (tracepoint field offsets; struct member offsets).
//!
//! # Metrics
//!
//! `logtap_capture_probe_load_seconds`, `logtap_capture_kernel_records_total`,
//! `logtap_capture_kernel_bytes_total`, `logtap_capture_ring_dropped_records_total` and
//! `logtap_capture_ring_dropped_bytes_total` (by `reason`: `ring_full`, `too_large`,
//! `fault`), `logtap_capture_lost_events_total`: the kernel's per-CPU counters, copied
//! on [`Probes::poll`] at most every 100 ms.

mod btf;
pub mod probe;
mod tracefs;

pub use probe::{DropReason, KernelStats, ProbeError, ProbeEvent, ProbeOptions, Probes};

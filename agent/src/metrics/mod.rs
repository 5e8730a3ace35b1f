//! Metrics: the metrics listener (`/metrics`, and the `/healthz` / `/readyz` probes of
//! [`health`]) and the catalogue of what logtap reports.
//!
//! Stages record through the `metrics` facade macros; this module installs the
//! Prometheus recorder and describes every metric once, so `/metrics` carries help
//! text. Names follow one rule: `logtap_` prefix, counters end in `_total`, label
//! values come from small fixed sets (source kind, parser, sink kind, reason) — never a
//! path or an id, which would make series unbounded.

pub mod health;
mod http;

use std::net::SocketAddr;

pub use http::BearerToken;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::PrometheusBuilder;

/// Installs the Prometheus recorder and serves `/metrics`, `/healthz` and `/readyz`
/// (of [`health::global`]) on `listen`, on a thread of its own: scraping and probes
/// stay independent of the pipeline's threads. With `token`, `/metrics` requires it
/// (`Authorization: Bearer`); the probes stay open.
pub fn install(listen: SocketAddr, token: Option<BearerToken>) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| anyhow::anyhow!("metrics endpoint on {listen}: {e}"))?;
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
    describe();
    let guarded = token.is_some();
    let endpoint = http::Endpoint {
        prometheus,
        health: health::global().clone(),
        token,
    };
    http::serve(listener, endpoint)
        .map_err(|e| anyhow::anyhow!("metrics endpoint on {listen}: {e}"))?;
    tracing::info!(
        %listen,
        metrics_bearer_token = guarded,
        "serving /metrics, /healthz and /readyz"
    );
    Ok(())
}

/// Sets the component gauges from a health report (at every scrape, so they are
/// current without a thread of their own).
fn publish_health(report: &health::Report) {
    for c in &report.components {
        metrics::gauge!("logtap_component_up", "component" => c.name.clone()).set(if c.failing() {
            0.0
        } else {
            1.0
        });
        metrics::gauge!("logtap_component_seconds_since_progress", "component" => c.name.clone())
            .set(c.seconds_since_progress);
    }
}

/// Help text of every metric, in one place.
pub fn describe() {
    describe_gauge!(
        "logtap_component_up",
        Unit::Count,
        "1 while a pipeline thread (by component: source, sink-<name>, forward-<name>, capture, checkpoint, discovery-cri, discovery-cri-poll, discovery-kube) is alive and not stalled, 0 when it died or made no progress for health.stall_timeout with work waiting (what fails /healthz)"
    );
    describe_gauge!(
        "logtap_component_seconds_since_progress",
        Unit::Seconds,
        "Seconds since a pipeline thread last made progress, by component (grows while it is idle too)"
    );
    describe_counter!(
        "logtap_lines_read_total",
        Unit::Count,
        "Records framed from sources, by source_kind"
    );
    describe_counter!(
        "logtap_bytes_read_total",
        Unit::Bytes,
        "Bytes read from sources, by source_kind"
    );
    describe_counter!(
        "logtap_parse_failures_total",
        Unit::Count,
        "Records the configured parser could not parse (kept raw, flagged), by parser"
    );
    describe_counter!(
        "logtap_lines_truncated_total",
        Unit::Count,
        "Records longer than max_line_size, shipped truncated and flagged"
    );
    describe_counter!(
        "logtap_lines_malformed_total",
        Unit::Count,
        "CRI/docker lines that did not decode (shipped raw, flagged), by source_kind"
    );
    describe_counter!(
        "logtap_lines_invalid_utf8_total",
        Unit::Count,
        "Records that are not valid UTF-8 (kept as bytes, flagged)"
    );
    describe_counter!(
        "logtap_dropped_lines_total",
        Unit::Count,
        "Records dropped, by reason"
    );
    describe_counter!(
        "logtap_dropped_bytes_total",
        Unit::Bytes,
        "Source bytes lost before they could be read, by reason (truncated_unread)"
    );
    describe_gauge!(
        "logtap_open_files",
        Unit::Count,
        "Files held open by the file source"
    );
    describe_gauge!(
        "logtap_read_lag_bytes",
        Unit::Bytes,
        "Bytes behind EOF, summed over open files"
    );
    describe_gauge!(
        "logtap_read_backend",
        "1 for the read backend in use (io_uring or pread), by backend"
    );
    describe_gauge!(
        "logtap_checkpoint_age_seconds",
        Unit::Seconds,
        "Seconds since acknowledged offsets were last made durable"
    );
    describe_counter!(
        "logtap_checkpoint_writes_total",
        Unit::Count,
        "Checkpoint table writes"
    );
    describe_counter!(
        "logtap_checkpoint_errors_total",
        Unit::Count,
        "Checkpoint write or load failures"
    );
    describe_histogram!(
        "logtap_checkpoint_write_seconds",
        Unit::Seconds,
        "Duration of a checkpoint write (with fsync)"
    );
    describe_counter!(
        "logtap_sink_packages_total",
        Unit::Count,
        "Packages acknowledged by a sink, by sink"
    );
    describe_counter!(
        "logtap_sink_lines_total",
        Unit::Count,
        "Records acknowledged by a sink, by sink"
    );
    describe_counter!(
        "logtap_sink_errors_total",
        Unit::Count,
        "Sink write or flush failures, by sink and kind (transient, rejected)"
    );
    describe_counter!(
        "logtap_files_discovered_total",
        Unit::Count,
        "Files matched by an include glob and opened"
    );
    describe_counter!(
        "logtap_file_open_errors_total",
        Unit::Count,
        "Files that could not be opened or read, by reason"
    );
    describe_counter!(
        "logtap_file_truncations_total",
        Unit::Count,
        "Files truncated in place (copytruncate); each continues as a new source"
    );
    describe_counter!(
        "logtap_file_inode_reuse_total",
        Unit::Count,
        "Files whose inode matched a checkpoint but whose first bytes did not (read from the start)"
    );
    describe_counter!(
        "logtap_inotify_watch_failures_total",
        Unit::Count,
        "Directories that could not be watched (limit reached); covered by polling"
    );
    describe_gauge!(
        "logtap_checkpoint_entries",
        Unit::Count,
        "Sources in the checkpoint table"
    );
    describe_gauge!(
        "logtap_store_bytes",
        Unit::Bytes,
        "Bytes in the local store's segments"
    );
    describe_gauge!(
        "logtap_store_segments",
        Unit::Count,
        "Segments in the local store"
    );
    describe_counter!(
        "logtap_store_retention_deleted_bytes_total",
        Unit::Bytes,
        "Bytes deleted from the local store by retention (size or age)"
    );
    describe_counter!(
        "logtap_store_torn_blocks_total",
        Unit::Count,
        "Torn or corrupt blocks found (and cut off or skipped) in the local store"
    );
    describe_counter!(
        "logtap_store_replayed_packages_total",
        Unit::Count,
        "Packages the local store received again after a restart (at-least-once duplicates)"
    );
    describe_gauge!(
        "logtap_packages_in_flight",
        Unit::Count,
        "Packages sent to sinks and not yet acknowledged"
    );
    describe_counter!(
        "logtap_kube_watch_errors_total",
        Unit::Count,
        "Failed Kubernetes API list/watch requests and broken watch streams, by resource"
    );
    describe_gauge!(
        "logtap_capture_probe_load_seconds",
        Unit::Seconds,
        "Time to load, verify and attach the eBPF capture probes"
    );
    describe_counter!(
        "logtap_capture_kernel_records_total",
        Unit::Count,
        "Data records the eBPF probes sent (container stdout/stderr, at most 4 KiB each)"
    );
    describe_counter!(
        "logtap_capture_kernel_bytes_total",
        Unit::Bytes,
        "Container stdout/stderr bytes the eBPF probes sent"
    );
    describe_counter!(
        "logtap_capture_ring_dropped_records_total",
        Unit::Count,
        "eBPF data records not sent, by reason (ring_full, too_large, fault); their bytes are stream gaps"
    );
    describe_counter!(
        "logtap_capture_ring_dropped_bytes_total",
        Unit::Bytes,
        "Container stream bytes the eBPF probes could not send, by reason (ring_full, too_large, fault)"
    );
    describe_gauge!(
        "logtap_capture_up",
        Unit::Count,
        "1 while eBPF capture runs, 0 when the probes could not load (container logs then come from their CRI files)"
    );
    describe_counter!(
        "logtap_capture_records_total",
        Unit::Count,
        "Captured records the capture stage received for bound container streams"
    );
    describe_counter!(
        "logtap_capture_bytes_total",
        Unit::Bytes,
        "Captured stream bytes the capture stage received"
    );
    describe_counter!(
        "logtap_capture_unbound_records_total",
        Unit::Count,
        "Captured records of a stream the stage did not know (its binding event was lost)"
    );
    describe_counter!(
        "logtap_capture_gaps_total",
        Unit::Count,
        "Holes in captured streams that outlived capture.reorder_grace (then repaired from the CRI log or given up)"
    );
    describe_counter!(
        "logtap_capture_repaired_bytes_total",
        Unit::Bytes,
        "Stream bytes read back from CRI logs into captured streams (holes, spills, the end of a stream, a restart)"
    );
    describe_counter!(
        "logtap_capture_unrepairable_bytes_total",
        Unit::Bytes,
        "Stream bytes lost for good: holes the CRI log did not fill within capture.repair_wait"
    );
    describe_counter!(
        "logtap_capture_spilled_bytes_total",
        Unit::Bytes,
        "Captured bytes dropped from a stream's reorder buffer (over capture.max_pending) and read from the CRI log instead"
    );
    describe_counter!(
        "logtap_capture_repair_mismatches_total",
        Unit::Count,
        "Holes not repaired because the CRI log did not line up with the captured stream (output by untraced syscalls)"
    );
    describe_counter!(
        "logtap_capture_cri_malformed_lines_total",
        Unit::Count,
        "Lines of CRI logs skipped by the repair reader because they were not CRI lines"
    );
    describe_gauge!(
        "logtap_capture_streams",
        Unit::Count,
        "Captured container streams (stdout and stderr count apart) being shipped"
    );
    describe_gauge!(
        "logtap_capture_watched_containers",
        Unit::Count,
        "cgroups below capture.cgroup_prefix the stage knows of"
    );
    describe_counter!(
        "logtap_capture_lost_events_total",
        Unit::Count,
        "eBPF lifecycle records (stream bound, cgroup created/removed, exec, exit) lost to a full ring"
    );
    describe_counter!(
        "logtap_capture_exits_inferred_total",
        Unit::Count,
        "captured cgroups found gone without their removal record (lost to a full ring): their streams were ended"
    );
    describe_gauge!(
        "logtap_kube_pods_cached",
        Unit::Count,
        "Pods of this node in the metadata cache, deleted ones in their grace period included"
    );
    describe_gauge!(
        "logtap_kube_api_up",
        Unit::Count,
        "1 while the pod and namespace watches of the Kubernetes API are healthy, else 0"
    );
    describe_counter!(
        "logtap_enrich_metadata_missing_total",
        Unit::Count,
        "Container sources whose first package shipped without container metadata (log path fields only), by reason (pod_unknown, container_unknown, api_unavailable, cri_unavailable)"
    );
    describe_gauge!(
        "logtap_enrich_held_packages",
        Unit::Count,
        "Container sources whose package is held waiting for their metadata from the API or the runtime (bounded by kubernetes.metadata_wait)"
    );
    describe_gauge!(
        "logtap_cri_up",
        Unit::Count,
        "1 while the container runtime's CRI socket answers, else 0 (metadata then comes from /var/log/pods paths)"
    );
    describe_counter!(
        "logtap_cri_requests_total",
        Unit::Count,
        "CRI calls to the container runtime, by result (ok, not_found, unreachable, error)"
    );
    describe_gauge!(
        "logtap_registry_containers",
        Unit::Count,
        "Containers in the container registry (from CRI, or from the pod log directory scan while CRI is down)"
    );
    describe_gauge!(
        "logtap_collections",
        Unit::Count,
        "LogCollection objects by state (ready: applied, invalid: rejected with a status naming the field)"
    );
    describe_counter!(
        "logtap_collection_applies_total",
        Unit::Count,
        "In-process rebuilds applying changed LogCollection objects, by result (applied, applied_unacked)"
    );
    describe_gauge!(
        "logtap_collections_api_up",
        Unit::Count,
        "1 while the LogCollection watch of the Kubernetes API is healthy, else 0 (the last known objects stay applied)"
    );
    describe_counter!(
        "logtap_collection_status_writes_total",
        Unit::Count,
        "LogCollection status PATCHes, by result (ok, error)"
    );
    describe_counter!(
        "logtap_selector_decisions_total",
        Unit::Count,
        "Container logs held back for their container's facts, by outcome (known, path_only: decided on the log path after collections.facts_wait)"
    );
}

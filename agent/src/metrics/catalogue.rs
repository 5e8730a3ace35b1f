//! The catalogue of every metric logtap reports: its name (a constant, which every
//! emitter uses instead of a string of its own), kind, unit and help text.
//! [`describe`](super::describe) registers them all with the recorder, so `/metrics`
//! carries help text; a test checks that every metric emitted in `src/` is here.
//!
//! Names follow one rule: `logtap_` prefix, counters end in `_total`, label values come
//! from small fixed sets (source kind, parser, sink, reason) — never a path or an id,
//! which would make series unbounded. docs/operations.md is the operators' reference.

use metrics::Unit;

/// What kind of series a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One entry of the catalogue.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// The name of the constant holding `name` (for the catalogue's own test).
    pub constant: &'static str,
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub help: &'static str,
}

/// Declares each name's constant and its [`CATALOGUE`] entry together, so neither can
/// be added without the other.
macro_rules! catalogue {
    ($($constant:ident = $name:literal, $kind:ident, $unit:expr, $help:literal;)*) => {
        $(pub const $constant: &str = $name;)*
        /// Every metric logtap reports.
        pub const CATALOGUE: &[Metric] = &[$(Metric {
            constant: stringify!($constant),
            name: $name,
            kind: Kind::$kind,
            unit: $unit,
            help: $help,
        }),*];
    };
}

catalogue! {
    COMPONENT_UP = "logtap_component_up", Gauge, Some(Unit::Count),
        "1 while a pipeline thread (by component: source, sink-<name>, forward-<name>, capture, checkpoint, discovery-cri, discovery-cri-poll, discovery-kube, net-ingest) is alive and not stalled, 0 when it died or made no progress for health.stall_timeout with work waiting (what fails /healthz)";
    COMPONENT_SECONDS_SINCE_PROGRESS = "logtap_component_seconds_since_progress", Gauge, Some(Unit::Seconds),
        "Seconds since a pipeline thread last made progress, by component (grows while it is idle too)";
    LINES_READ_TOTAL = "logtap_lines_read_total", Counter, Some(Unit::Count),
        "Records framed from sources, by source_kind";
    BYTES_READ_TOTAL = "logtap_bytes_read_total", Counter, Some(Unit::Bytes),
        "Bytes read from sources, by source_kind";
    PARSE_FAILURES_TOTAL = "logtap_parse_failures_total", Counter, Some(Unit::Count),
        "Records the configured parser could not parse (kept raw, flagged), by parser";
    LINES_TRUNCATED_TOTAL = "logtap_lines_truncated_total", Counter, Some(Unit::Count),
        "Records longer than max_line_size, shipped truncated and flagged";
    LINES_MALFORMED_TOTAL = "logtap_lines_malformed_total", Counter, Some(Unit::Count),
        "CRI/docker lines that did not decode (shipped raw, flagged), by source_kind";
    LINES_INVALID_UTF8_TOTAL = "logtap_lines_invalid_utf8_total", Counter, Some(Unit::Count),
        "Records that are not valid UTF-8 (kept as bytes, flagged)";
    DROPPED_LINES_TOTAL = "logtap_dropped_lines_total", Counter, Some(Unit::Count),
        "Records dropped, by reason";
    CONFIG_LINES_TOTAL = "logtap_config_lines_total", Counter, Some(Unit::Count),
        "Records read, by source config (what self-monitoring's statistics report per config)";
    SELF_EVENTS_DROPPED_TOTAL = "logtap_self_events_dropped_total", Counter, Some(Unit::Count),
        "The agent's own log events not shipped by self-monitoring: its queue was full";
    INPUT_RECORDS_TOTAL = "logtap_input_records_total", Counter, Some(Unit::Count),
        "Messages a network input received, by input (its source name)";
    INPUT_BYTES_TOTAL = "logtap_input_bytes_total", Counter, Some(Unit::Bytes),
        "Bytes of the messages a network input received (framing excluded), by input";
    INPUT_PARSE_FAILURES_TOTAL = "logtap_input_parse_failures_total", Counter, Some(Unit::Count),
        "Messages of a network input its protocol's parser could not read (shipped raw, flagged), by input";
    INPUT_REJECTED_TOTAL = "logtap_input_rejected_total", Counter, Some(Unit::Count),
        "What a network input refused or cut, by input and reason: connection_limit (a connection closed at once), too_large (a message cut to max_line_size), incomplete (a connection closed inside an octet-counted frame: the part is shipped)";
    INPUT_CONNECTIONS_TOTAL = "logtap_input_connections_total", Counter, Some(Unit::Count),
        "Stream connections a network input accepted, by input";
    INPUT_CONNECTIONS = "logtap_input_connections", Gauge, Some(Unit::Count),
        "Stream connections a network input has open, by input";
    INPUT_KERNEL_DROPS_TOTAL = "logtap_input_kernel_drops_total", Counter, Some(Unit::Count),
        "Datagrams the kernel dropped for a UDP input's socket (its receive buffer was full), by input, from /proc/net/udp";
    EVENTS_SHIPPED_TOTAL = "logtap_events_shipped_total", Counter, Some(Unit::Count),
        "Kubernetes events shipped as records while this agent led (a handover may repeat a few)";
    EVENTS_LEADER = "logtap_events_leader", Gauge, None,
        "1 while this agent holds the Kubernetes events Lease and ships the events, else 0";
    EVENTS_LEASE_TRANSITIONS_TOTAL = "logtap_events_lease_transitions_total", Counter, Some(Unit::Count),
        "Times this agent became the Kubernetes events leader and started shipping";
    LINES_FILTERED_TOTAL = "logtap_lines_filtered_total", Counter, Some(Unit::Count),
        "Records a keep or drop processor filtered out, by config (intended, not a loss)";
    LINES_MASKED_TOTAL = "logtap_lines_masked_total", Counter, Some(Unit::Count),
        "Records in which a mask processor replaced something, by config";
    DROPPED_BYTES_TOTAL = "logtap_dropped_bytes_total", Counter, Some(Unit::Bytes),
        "Source bytes lost before they could be read, by reason (truncated_unread; deleted_while_stopped, truncated_while_stopped, replaced_while_stopped: at least this much)";
    OPEN_FILES = "logtap_open_files", Gauge, Some(Unit::Count),
        "Files held open by the file source";
    READ_LAG_BYTES = "logtap_read_lag_bytes", Gauge, Some(Unit::Bytes),
        "Bytes behind EOF, summed over open files";
    READ_BACKEND = "logtap_read_backend", Gauge, None,
        "1 for the read backend in use (io_uring or pread), by backend";
    CHECKPOINT_AGE_SECONDS = "logtap_checkpoint_age_seconds", Gauge, Some(Unit::Seconds),
        "Seconds since acknowledged offsets were last made durable";
    CHECKPOINT_WRITES_TOTAL = "logtap_checkpoint_writes_total", Counter, Some(Unit::Count),
        "Checkpoint table writes";
    CHECKPOINT_ERRORS_TOTAL = "logtap_checkpoint_errors_total", Counter, Some(Unit::Count),
        "Checkpoint write or load failures";
    CHECKPOINT_WRITE_SECONDS = "logtap_checkpoint_write_seconds", Histogram, Some(Unit::Seconds),
        "Duration of a checkpoint write (with fsync)";
    SINK_PACKAGES_TOTAL = "logtap_sink_packages_total", Counter, Some(Unit::Count),
        "Packages acknowledged by a sink, by sink";
    SINK_LINES_TOTAL = "logtap_sink_lines_total", Counter, Some(Unit::Count),
        "Records acknowledged by a sink, by sink";
    SINK_ERRORS_TOTAL = "logtap_sink_errors_total", Counter, Some(Unit::Count),
        "Sink write or flush failures, by sink and kind (transient, rejected)";
    FILES_DISCOVERED_TOTAL = "logtap_files_discovered_total", Counter, Some(Unit::Count),
        "Files matched by an include glob and opened";
    FILE_OPEN_ERRORS_TOTAL = "logtap_file_open_errors_total", Counter, Some(Unit::Count),
        "Files that could not be opened or read, by reason";
    FILES_REFUSED_TOTAL = "logtap_files_refused_total", Counter, Some(Unit::Count),
        "Files matched by a glob and refused on purpose, once per path, by reason (symlink: leads outside the source's directories; not_regular: FIFO, socket or device)";
    FILE_TRUNCATIONS_TOTAL = "logtap_file_truncations_total", Counter, Some(Unit::Count),
        "Files truncated in place (copytruncate); each continues as a new source";
    FILE_INODE_REUSE_TOTAL = "logtap_file_inode_reuse_total", Counter, Some(Unit::Count),
        "Files whose inode matched a checkpoint but whose first bytes did not (read from the start)";
    INOTIFY_WATCH_FAILURES_TOTAL = "logtap_inotify_watch_failures_total", Counter, Some(Unit::Count),
        "Directories that could not be watched (limit reached); covered by polling";
    CHECKPOINT_ENTRIES = "logtap_checkpoint_entries", Gauge, Some(Unit::Count),
        "Sources in the checkpoint table";
    STORE_BYTES = "logtap_store_bytes", Gauge, Some(Unit::Bytes),
        "Bytes in the local store's segments";
    STORE_SEGMENTS = "logtap_store_segments", Gauge, Some(Unit::Count),
        "Segments in the local store";
    STORE_RETENTION_DELETED_BYTES_TOTAL = "logtap_store_retention_deleted_bytes_total", Counter, Some(Unit::Bytes),
        "Bytes deleted from the local store by retention (size or age)";
    STORE_TORN_BLOCKS_TOTAL = "logtap_store_torn_blocks_total", Counter, Some(Unit::Count),
        "Torn or corrupt blocks found (and cut off or skipped) in the local store";
    STORE_REPLAYED_PACKAGES_TOTAL = "logtap_store_replayed_packages_total", Counter, Some(Unit::Count),
        "Packages the local store received again after a restart (at-least-once duplicates)";
    PACKAGES_IN_FLIGHT = "logtap_packages_in_flight", Gauge, Some(Unit::Count),
        "Packages sent to sinks and not yet acknowledged";
    OPEN_PACKAGE_BYTES = "logtap_open_package_bytes", Gauge, Some(Unit::Bytes),
        "Memory the open packages of capture's streams hold together (their records' bytes and vectors), bounded node-wide";
    PACKAGES_SHIPPED_EARLY_TOTAL = "logtap_packages_shipped_early_total", Counter, Some(Unit::Count),
        "Packages of captured streams shipped before their size or batch.timeout because all open packages together held more than their node-wide bound";
    KUBE_WATCH_ERRORS_TOTAL = "logtap_kube_watch_errors_total", Counter, Some(Unit::Count),
        "Failed Kubernetes API list/watch requests and broken watch streams, by resource";
    CAPTURE_PROBE_LOAD_SECONDS = "logtap_capture_probe_load_seconds", Gauge, Some(Unit::Seconds),
        "Time to load, verify and attach the eBPF capture probes";
    CAPTURE_KERNEL_RECORDS_TOTAL = "logtap_capture_kernel_records_total", Counter, Some(Unit::Count),
        "Data records the eBPF probes sent (container stdout/stderr, at most 4 KiB each)";
    CAPTURE_KERNEL_BYTES_TOTAL = "logtap_capture_kernel_bytes_total", Counter, Some(Unit::Bytes),
        "Container stdout/stderr bytes the eBPF probes sent";
    CAPTURE_RING_DROPPED_RECORDS_TOTAL = "logtap_capture_ring_dropped_records_total", Counter, Some(Unit::Count),
        "eBPF data records not sent, by reason (ring_full, too_large, fault, concurrent); their bytes are stream gaps";
    CAPTURE_RING_DROPPED_BYTES_TOTAL = "logtap_capture_ring_dropped_bytes_total", Counter, Some(Unit::Bytes),
        "Container stream bytes the eBPF probes could not send, by reason (ring_full, too_large, fault, concurrent)";
    CAPTURE_HOOK_MODE = "logtap_capture_hook_mode", Gauge, Some(Unit::Count),
        "1 for the kernel hooks capture's write path runs on (mode: fentry = BPF trampolines; tracepoint = the raw syscall exit tracepoint, which slows every syscall on the node; compat = the same tracepoint with the program for kernels 5.8-5.14), 0 for the others";
    CAPTURE_UP = "logtap_capture_up", Gauge, Some(Unit::Count),
        "1 while eBPF capture runs, 0 when the probes could not load (container logs then come from their CRI files)";
    CAPTURE_RECORDS_TOTAL = "logtap_capture_records_total", Counter, Some(Unit::Count),
        "Captured records the capture stage received for bound container streams";
    CAPTURE_BYTES_TOTAL = "logtap_capture_bytes_total", Counter, Some(Unit::Bytes),
        "Captured stream bytes the capture stage received";
    CAPTURE_STREAMS_DECLINED_TOTAL = "logtap_capture_streams_declined_total", Counter, Some(Unit::Count),
        "Container streams capture left to their CRI logs because capture's source config does not select the container (another config may)";
    CAPTURE_UNBOUND_RECORDS_TOTAL = "logtap_capture_unbound_records_total", Counter, Some(Unit::Count),
        "Captured records of a stream the stage did not know (its binding event was lost)";
    CAPTURE_GAPS_TOTAL = "logtap_capture_gaps_total", Counter, Some(Unit::Count),
        "Holes in captured streams that outlived capture.reorder_grace (then repaired from the CRI log or given up)";
    CAPTURE_REPAIRED_BYTES_TOTAL = "logtap_capture_repaired_bytes_total", Counter, Some(Unit::Bytes),
        "Stream bytes read back from CRI logs into captured streams (holes, spills, the end of a stream, a restart)";
    CAPTURE_UNREPAIRABLE_BYTES_TOTAL = "logtap_capture_unrepairable_bytes_total", Counter, Some(Unit::Bytes),
        "Stream bytes lost for good: holes the CRI log did not fill within capture.repair_wait";
    CAPTURE_SPILLED_BYTES_TOTAL = "logtap_capture_spilled_bytes_total", Counter, Some(Unit::Bytes),
        "Captured bytes dropped from a stream's reorder buffer (over capture.max_pending, or capture.max_buffered for all streams) and read from the CRI log instead";
    CAPTURE_BUDGET_SPILLS_TOTAL = "logtap_capture_budget_spills_total", Counter, Some(Unit::Count),
        "Streams whose waiting bytes were dropped (and read from the CRI log instead) because all streams together held more than capture.max_buffered";
    CAPTURE_BUFFERED_BYTES = "logtap_capture_buffered_bytes", Gauge, Some(Unit::Bytes),
        "Captured bytes the capture stage holds waiting behind holes, over all streams (bounded by capture.max_buffered)";
    CAPTURE_REPAIR_MISMATCHES_TOTAL = "logtap_capture_repair_mismatches_total", Counter, Some(Unit::Count),
        "Holes not repaired because the CRI log did not line up with the captured stream before or after them (output by untraced syscalls, or writes numbered in another order than the pipe's)";
    CAPTURE_CRI_MALFORMED_LINES_TOTAL = "logtap_capture_cri_malformed_lines_total", Counter, Some(Unit::Count),
        "Lines of CRI logs skipped by the repair reader because they were not CRI lines";
    CAPTURE_STREAMS = "logtap_capture_streams", Gauge, Some(Unit::Count),
        "Captured container streams (stdout and stderr count apart) being shipped";
    CAPTURE_WATCHED_CONTAINERS = "logtap_capture_watched_containers", Gauge, Some(Unit::Count),
        "cgroups below capture.cgroup_prefix the stage knows of";
    CAPTURE_LOST_EVENTS_TOTAL = "logtap_capture_lost_events_total", Counter, Some(Unit::Count),
        "eBPF lifecycle records (stream bound, cgroup created/removed, exec, exit) lost to a full ring";
    CAPTURE_EXITS_INFERRED_TOTAL = "logtap_capture_exits_inferred_total", Counter, Some(Unit::Count),
        "captured cgroups found gone without their removal record (lost to a full ring): their streams were ended";
    CAPTURE_STREAM_ENDS_TOTAL = "logtap_capture_stream_ends_total", Counter, Some(Unit::Count),
        "Captured streams ended with their container, by how their end was known (how: kernel_offset, without reading the CRI log; log_read, the log read to its end)";
    CAPTURE_SEAMS_TOTAL = "logtap_capture_seams_total", Counter, Some(Unit::Count),
        "Streams of containers running before the agent started, by how capture took over from their CRI log (result: exact, ambiguous, no_match, unfinished)";
    CAPTURE_PIN_STARTS_TOTAL = "logtap_capture_pin_starts_total", Counter, Some(Unit::Count),
        "Loads of the probes by what they found in the pin directory (result: reused, created, layout_changed, incomplete, removed, locked, failed)";
    CAPTURE_PIN_WAIT_SECONDS = "logtap_capture_pin_wait_seconds", Gauge, Some(Unit::Seconds),
        "Time the probes' load waited at start for another agent to release the pin directory";
    CAPTURE_RESUMED_STREAMS_TOTAL = "logtap_capture_resumed_streams_total", Counter, Some(Unit::Count),
        "Streams taken over from the probes' pinned maps at start, by where they continue (to: capture, log)";
    KUBE_PODS_CACHED = "logtap_kube_pods_cached", Gauge, Some(Unit::Count),
        "Pods of this node in the metadata cache, deleted ones in their grace period included";
    KUBE_API_UP = "logtap_kube_api_up", Gauge, Some(Unit::Count),
        "1 while the pod and namespace watches of the Kubernetes API are healthy, else 0";
    ENRICH_METADATA_MISSING_TOTAL = "logtap_enrich_metadata_missing_total", Counter, Some(Unit::Count),
        "Container sources whose first package shipped without container metadata (log path fields only), by reason (pod_unknown, container_unknown, api_unavailable, cri_unavailable)";
    ENRICH_HELD_PACKAGES = "logtap_enrich_held_packages", Gauge, Some(Unit::Count),
        "Container sources whose package is held waiting for their metadata from the API or the runtime (bounded by kubernetes.metadata_wait)";
    CRI_UP = "logtap_cri_up", Gauge, Some(Unit::Count),
        "1 while the container runtime's CRI socket answers, else 0 (metadata then comes from /var/log/pods paths)";
    CRI_REQUESTS_TOTAL = "logtap_cri_requests_total", Counter, Some(Unit::Count),
        "CRI calls to the container runtime, by result (ok, not_found, unreachable, error)";
    REGISTRY_CONTAINERS = "logtap_registry_containers", Gauge, Some(Unit::Count),
        "Containers in the container registry (from CRI, or from the pod log directory scan while CRI is down)";
    COLLECTIONS = "logtap_collections", Gauge, Some(Unit::Count),
        "LogCollection objects by state (ready: applied, invalid: rejected with a status naming the field)";
    COLLECTION_APPLIES_TOTAL = "logtap_collection_applies_total", Counter, Some(Unit::Count),
        "In-process rebuilds applying changed LogCollection objects or a changed set of environment declarations, by result (applied, applied_unacked)";
    COLLECTIONS_API_UP = "logtap_collections_api_up", Gauge, Some(Unit::Count),
        "1 while the LogCollection watch of the Kubernetes API is healthy, else 0 (the last known objects stay applied)";
    COLLECTION_STATUS_WRITES_TOTAL = "logtap_collection_status_writes_total", Counter, Some(Unit::Count),
        "LogCollection status PATCHes, by result (ok, error)";
    ENV_CONFIGS = "logtap_env_configs", Gauge, Some(Unit::Count),
        "Distinct collections the node's containers declare by environment (logtap_logs_<name>), each read by one source";
    ENV_CONFIG_ERRORS_TOTAL = "logtap_env_config_errors_total", Counter, Some(Unit::Count),
        "logtap_logs_* variables not collected, once per container and value, by reason (invalid_name, invalid_input, invalid_path, invalid_format, invalid_tags, sink_not_allowed, no_default_sink, unknown_option, option_without_collection, too_many); the log names the container and the variable";
    SELECTOR_DECISIONS_TOTAL = "logtap_selector_decisions_total", Counter, Some(Unit::Count),
        "Container logs held back for their container's facts, by outcome (known, path_only: decided on the log path after collections.facts_wait)";
    CHECKPOINTS_DROPPED_TOTAL = "logtap_checkpoints_dropped_total", Counter, Some(Unit::Count),
        "Checkpoints dropped at start, by reason (file_gone: a checkpointed file found neither at its path nor by identity in its directory)";
    CONTAINER_FILE_CONTAINERS = "logtap_container_file_containers", Gauge, Some(Unit::Count),
        "Running containers whose files container_paths sources read";
    FILES_FOUND_BY_IDENTITY_TOTAL = "logtap_files_found_by_identity_total", Counter, Some(Unit::Count),
        "Checkpointed files rotated while the agent was stopped, found again by identity in their directory and resumed";
    FILES_FOLLOWED_BY_RENAME_TOTAL = "logtap_files_followed_by_rename_total", Counter, Some(Unit::Count),
        "Files renamed away from a collected path before they were opened, followed to their new name by the rename event and read";
    FORWARD_RECORDS_TOTAL = "logtap_forward_records_total", Counter, Some(Unit::Count),
        "Records sent to a network sink's destination, retries included, by sink";
    FORWARD_BYTES_TOTAL = "logtap_forward_bytes_total", Counter, Some(Unit::Bytes),
        "Body bytes sent to a network sink's destination, retries included, by sink";
    FORWARD_ACKED_RECORDS_TOTAL = "logtap_forward_acked_records_total", Counter, Some(Unit::Count),
        "Records the destination acknowledged, by sink";
    FORWARD_REJECTED_RECORDS_TOTAL = "logtap_forward_rejected_records_total", Counter, Some(Unit::Count),
        "Records the destination refused for good (never retried; dead-lettered when configured), by sink and reason";
    FORWARD_DEAD_LETTER_ERRORS_TOTAL = "logtap_forward_dead_letter_errors_total", Counter, Some(Unit::Count),
        "Refused records that could not be written to the dead-letter file (still counted as rejected), by sink";
    FORWARD_REPLAYED_PACKAGES_TOTAL = "logtap_forward_replayed_packages_total", Counter, Some(Unit::Count),
        "Packages sent again that may already be at the destination (after a restart, or spilled to the spool while the destination was taking them from memory), by sink";
    FORWARD_PACKAGES_TOTAL = "logtap_forward_packages_total", Counter, Some(Unit::Count),
        "Packages a network sink took, by sink and path (memory: handed to the forwarder without touching the spool; spool: written to the spool; spilled: taken in memory, then also written to the spool when the forwarder fell behind)";
    FORWARD_REQUEST_SECONDS = "logtap_forward_request_seconds", Histogram, Some(Unit::Seconds),
        "Duration of one window's send, until every record was acknowledged, by sink";
    FORWARD_RETRIES_TOTAL = "logtap_forward_retries_total", Counter, Some(Unit::Count),
        "Windows sent again after a failed attempt, by sink and reason";
    FORWARD_DESTINATION_UP = "logtap_forward_destination_up", Gauge, Some(Unit::Count),
        "1 while the last attempt to reach a network sink's destination succeeded, 0 while it fails, by sink";
    SPOOL_BYTES = "logtap_spool_bytes", Gauge, Some(Unit::Bytes),
        "Bytes of a network sink's spool segments, by sink";
    SPOOL_FULL_TOTAL = "logtap_spool_full_total", Counter, Some(Unit::Count),
        "Waits of a sink worker on a full spool (when_full: block): reading is held back, by sink";
    SPOOL_DROPPED_PACKAGES_TOTAL = "logtap_spool_dropped_packages_total", Counter, Some(Unit::Count),
        "Packages deleted unforwarded by when_full: drop_oldest, by sink (their records in logtap_dropped_lines_total{reason=\"spool_full\"})";
    SPOOL_CURSOR_ERRORS_TOTAL = "logtap_spool_cursor_errors_total", Counter, Some(Unit::Count),
        "Spool cursor writes that failed (a re-send later, not a loss), by sink";
    SPOOL_CURSOR_CORRUPT_TOTAL = "logtap_spool_cursor_corrupt_total", Counter, Some(Unit::Count),
        "Spool cursors unreadable at start (the whole spool is sent again)";
    SPOOL_OLDEST_UNFORWARDED_SECONDS = "logtap_spool_oldest_unforwarded_seconds", Gauge, Some(Unit::Seconds),
        "Age of the oldest spooled record the destination has not acknowledged (0 when the spool is forwarded), by sink";
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;

    #[test]
    fn names_are_unique_and_follow_the_naming_rule() {
        let mut seen = std::collections::HashSet::new();
        for m in CATALOGUE {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(
                m.name.starts_with("logtap_"),
                "{}: no logtap_ prefix",
                m.name
            );
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                m.name
            );
            assert!(!m.help.is_empty(), "{}: no help text", m.name);
        }
    }

    /// Every `counter!`/`gauge!`/`histogram!` in `src/` names its metric by a
    /// catalogue constant (or, where a string is left, one the catalogue lists), with
    /// the kind the catalogue says: an emitted metric without help text fails here.
    #[test]
    fn every_emitted_metric_is_described() {
        let by_constant: HashMap<&str, &Metric> =
            CATALOGUE.iter().map(|m| (m.constant, m)).collect();
        let by_name: HashMap<&str, &Metric> = CATALOGUE.iter().map(|m| (m.name, m)).collect();
        let call = regex::Regex::new(
            r#"\b(counter|gauge|histogram)!\(\s*(?:"([^"]*)"|(?:[A-Za-z_][A-Za-z0-9_]*::)*([A-Z][A-Z0-9_]*))"#,
        )
        .unwrap();
        let mut files = Vec::new();
        collect_rs(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut emitted = 0;
        let mut problems = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for c in call.captures_iter(&text) {
                emitted += 1;
                let entry = match (c.get(2), c.get(3)) {
                    (Some(name), _) => by_name.get(name.as_str()),
                    (_, Some(constant)) => by_constant.get(constant.as_str()),
                    _ => None,
                };
                let kind = match &c[1] {
                    "counter" => Kind::Counter,
                    "gauge" => Kind::Gauge,
                    _ => Kind::Histogram,
                };
                match entry {
                    None => problems.push(format!(
                        "{}: {} not in the catalogue",
                        file.display(),
                        &c[0]
                    )),
                    Some(m) if m.kind != kind => {
                        problems.push(format!("{}: {} is a {:?}", file.display(), &c[0], m.kind))
                    }
                    Some(_) => {}
                }
            }
        }
        assert!(
            emitted > 50,
            "found only {emitted} emitting calls: is the pattern stale?"
        );
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                collect_rs(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
}

//! The config file as serde reads it (the first of the two parsing steps; the types it
//! shares with the `LogCollection` CRD are in [`super::schema`]). Every struct denies
//! unknown fields, so a typo is an error naming the field, its path and its line
//! (yaml_serde reports both).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::{
    RawFormat, RawMultiline, RawParser, RawProcessor, RawSink, Selector, default_true,
};

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `node` (the DaemonSet: the whole node) or `sidecar` (a container in one pod,
    /// reading a shared volume; see docs/configuration.md, "Sidecar mode").
    #[serde(default)]
    pub mode: RawMode,
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub checkpoint: RawCheckpoint,
    /// What `/healthz` (the liveness probe) calls a stall.
    #[serde(default)]
    pub health: RawHealth,
    #[serde(default)]
    pub files: RawFiles,
    #[serde(default)]
    pub batch: RawBatch,
    #[serde(default)]
    pub cri: RawCri,
    #[serde(default)]
    pub sources: Vec<RawSource>,
    #[serde(default)]
    pub sinks: BTreeMap<String, RawSink>,
    /// eBPF capture of container stdout/stderr (see docs/capture.md).
    #[serde(default)]
    pub capture: RawCapture,
    #[serde(default)]
    pub kubernetes: RawKubernetes,
    /// `LogCollection` objects and selector sources (see docs/configuration.md).
    #[serde(default)]
    pub collections: RawCollections,
    /// The agent's own warnings, errors and statistics as records of the reserved
    /// source `logtap://self`.
    #[serde(default)]
    pub self_monitoring: RawSelfMonitoring,
    /// Collections declared by containers' environment (`logtap_logs_<name>=...`).
    #[serde(default)]
    pub env_configs: RawEnvConfigs,
    /// Kubernetes events shipped by one agent per cluster (absent: off).
    #[serde(default)]
    pub kubernetes_events: Option<super::events::RawKubernetesEvents>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSelfMonitoring {
    #[serde(default)]
    pub enabled: bool,
    /// The sink its records go to.
    #[serde(default = "default_sink_name")]
    pub sink: String,
    /// The least severe of the agent's own log events shipped: error | warn | info.
    #[serde(default = "default_self_level")]
    pub level: String,
    /// How often a statistics record is shipped.
    #[serde(default = "default_self_interval")]
    pub interval: String,
}

impl Default for RawSelfMonitoring {
    fn default() -> Self {
        RawSelfMonitoring {
            enabled: false,
            sink: default_sink_name(),
            level: default_self_level(),
            interval: default_self_interval(),
        }
    }
}

fn default_self_level() -> String {
    "warn".into()
}

fn default_self_interval() -> String {
    "60s".into()
}

/// What a `sources[]` entry reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawSourceType {
    #[default]
    File,
    Syslog,
    Http,
    Otlp,
}

/// Where the agent runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawMode {
    #[default]
    Node,
    Sidecar,
}

/// Collections containers declare in their environment (see docs/configuration.md,
/// "Collections declared by container environment").
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEnvConfigs {
    /// Collect what containers declare with `logtap_logs_<name>` variables (needs the
    /// `cri` section: the environment comes from the runtime).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The sink of a collection that names none; default: the sink of `sources[0]`,
    /// else the only sink.
    #[serde(default)]
    pub default_sink: Option<String>,
    /// Further sinks a container may name with `logtap_logs_<name>_sink` (the default
    /// sink always may): the environment is the container's, so it chooses only among
    /// what the admin allows.
    #[serde(default)]
    pub sinks: Vec<String>,
}

impl Default for RawEnvConfigs {
    fn default() -> Self {
        RawEnvConfigs {
            enabled: true,
            default_sink: None,
            sinks: Vec::new(),
        }
    }
}

/// Container selection: where CRI logs live, and `LogCollection` objects.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCollections {
    /// Watch `LogCollection` objects and collect what they select. Default: on when
    /// the `kubernetes` section is enabled.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The kubelet's pod log directory (`<ns>_<pod>_<uid>/<container>/<n>.log` below
    /// it): what selector sources and `container_stdout` inputs read.
    #[serde(default = "default_pod_logs")]
    pub pod_logs: String,
    /// How long a new container log waits for its container's facts (runtime or pod
    /// metadata) before selectors decide on what its path tells.
    #[serde(default = "default_facts_wait")]
    pub facts_wait: String,
    /// The namespace whose `LogCollection` objects are trusted with the whole node:
    /// objects elsewhere select only their own namespace's containers, read no node
    /// files and write no file by path.
    #[serde(default = "default_admin_namespace")]
    pub admin_namespace: String,
}

impl Default for RawCollections {
    fn default() -> Self {
        RawCollections {
            enabled: None,
            pod_logs: default_pod_logs(),
            facts_wait: default_facts_wait(),
            admin_namespace: default_admin_namespace(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCapture {
    /// Capture container stdout/stderr with the eBPF probes.
    #[serde(default)]
    pub enabled: bool,
    /// The `sources[]` entry (format `cri`) whose containers capture takes over: its
    /// parser, multiline and sink apply to captured streams, and its CRI log files
    /// become the repair path instead of being shipped a second time.
    #[serde(default = "default_capture_source")]
    pub source: String,
    /// cgroup v2 path prefix under which new cgroups are containers to capture.
    #[serde(default = "default_cgroup_prefix")]
    pub cgroup_prefix: String,
    /// Kernel ring buffer size (a power of two).
    #[serde(default = "default_ring_size")]
    pub ring_size: String,
    /// 4 KiB records one write may fill; more is repaired from the CRI log.
    #[serde(default = "default_records_per_write")]
    pub max_records_per_write: u32,
    /// Kernel hooks of the write path: `auto` (BPF trampolines, the syscall
    /// tracepoints where the kernel has none, their 5.8 program where it is older than
    /// 5.15), `tracepoint` (always the tracepoints) or `compat` (always the 5.8 program).
    #[serde(default)]
    pub hooks: super::CaptureHooks,
    /// How long bytes may arrive out of order before a hole is repaired.
    #[serde(default = "default_reorder_grace")]
    pub reorder_grace: String,
    /// How long a hole waits for the CRI log to hold its bytes before it is given up.
    #[serde(default = "default_repair_wait")]
    pub repair_wait: String,
    /// How long the file source holds back a new CRI log file that capture may claim.
    #[serde(default = "default_claim_wait")]
    pub claim_wait: String,
    /// Bytes per stream that may wait behind a hole before they are dropped and read
    /// from the CRI log instead.
    #[serde(default = "default_max_pending")]
    pub max_pending: String,
    /// Keep the probes' maps and links pinned in bpffs (`pin_dir`) when the agent
    /// stops, so a restarted agent continues capture where this one stopped. `false`
    /// removes pins an earlier run left there.
    #[serde(default)]
    pub pin: bool,
    /// Where the pins are: a directory on a bpffs mount.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: String,
    /// How long a starting agent waits for another agent that holds `pin_dir` (its
    /// predecessor, still stopping) before it captures unpinned beside it.
    #[serde(default = "default_pin_wait")]
    pub pin_wait: String,
    /// Bytes all streams together may hold waiting behind holes; beyond it the streams
    /// holding the most drop theirs and read them from the CRI log instead (4 MiB).
    #[serde(default = "default_max_buffered")]
    pub max_buffered: String,
}

impl Default for RawCapture {
    fn default() -> Self {
        RawCapture {
            enabled: false,
            source: default_capture_source(),
            cgroup_prefix: default_cgroup_prefix(),
            ring_size: default_ring_size(),
            max_records_per_write: default_records_per_write(),
            hooks: super::CaptureHooks::Auto,
            reorder_grace: default_reorder_grace(),
            repair_wait: default_repair_wait(),
            claim_wait: default_claim_wait(),
            max_pending: default_max_pending(),
            pin: false,
            pin_dir: default_pin_dir(),
            pin_wait: default_pin_wait(),
            max_buffered: default_max_buffered(),
        }
    }
}

/// Pod metadata from the Kubernetes API.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetes {
    /// Default: on when running in a cluster (`KUBERNETES_SERVICE_HOST` is set) or
    /// when `api_url` is given.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// An API server reached without credentials (`kubectl proxy`, tests); default: a
    /// kubeconfig if there is one, else the in-cluster service account.
    #[serde(default)]
    pub api_url: Option<String>,
    /// This node's name; default: `NODE_NAME` from the environment, else the hostname.
    #[serde(default)]
    pub node_name: Option<String>,
    /// How long a new container's first package waits for its pod's metadata.
    #[serde(default = "default_metadata_wait")]
    pub metadata_wait: String,
    /// Pod annotations copied onto every line (`k8s.pod.annotation.<key>`).
    #[serde(default)]
    pub annotations: Vec<String>,
}

impl Default for RawKubernetes {
    fn default() -> Self {
        RawKubernetes {
            enabled: None,
            api_url: None,
            node_name: None,
            metadata_wait: default_metadata_wait(),
            annotations: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// `host:port` of the Prometheus endpoint; empty disables it.
    #[serde(default = "default_metrics_listen")]
    pub listen: Option<String>,
    /// A file holding a token `/metrics` then requires as `Authorization: Bearer
    /// <token>` (read at start; `/healthz` and `/readyz` stay open for the probes).
    #[serde(default)]
    pub bearer_token_file: Option<String>,
    /// Serve HTTPS (and with `client_ca_file`, ask for client certificates, which
    /// `/metrics` then requires).
    #[serde(default)]
    pub tls: Option<RawMetricsTls>,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: default_metrics_listen(),
            bearer_token_file: None,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMetricsTls {
    /// PEM certificate chain of the listener.
    pub cert_file: String,
    /// PEM private key of that certificate.
    pub key_file: String,
    /// PEM CA certificates a client certificate must be signed by (mTLS for `/metrics`).
    #[serde(default)]
    pub client_ca_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCheckpoint {
    #[serde(default = "default_checkpoint_interval")]
    pub interval: String,
}

impl Default for RawCheckpoint {
    fn default() -> Self {
        RawCheckpoint {
            interval: default_checkpoint_interval(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// A pipeline thread with work waiting and no progress for this long fails
    /// `/healthz`.
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout: String,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            stall_timeout: default_stall_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    #[serde(default = "default_rescan_interval")]
    pub rescan_interval: String,
    #[serde(default = "default_rotate_wait")]
    pub rotate_wait: String,
    /// A CRI/docker message whose closing fragment did not come for this long is
    /// shipped, flagged unterminated (its container stopped mid-line).
    #[serde(default = "default_partial_timeout")]
    pub partial_timeout: String,
    #[serde(default = "default_true")]
    pub io_uring: bool,
}

impl Default for RawFiles {
    fn default() -> Self {
        RawFiles {
            rescan_interval: default_rescan_interval(),
            rotate_wait: default_rotate_wait(),
            partial_timeout: default_partial_timeout(),
            io_uring: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    #[serde(default = "default_batch_max_size")]
    pub max_size: String,
    #[serde(default = "default_batch_max_lines")]
    pub max_lines: usize,
    #[serde(default = "default_batch_timeout")]
    pub timeout: String,
}

impl Default for RawBatch {
    fn default() -> Self {
        RawBatch {
            max_size: default_batch_max_size(),
            max_lines: default_batch_max_lines(),
            timeout: default_batch_timeout(),
        }
    }
}

/// The container runtime's CRI socket (container ids, env, labels, cgroups).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCri {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_cri_endpoint")]
    pub endpoint: String,
    #[serde(default = "default_cri_timeout")]
    pub timeout: String,
    #[serde(default = "default_cri_rescan_interval")]
    pub rescan_interval: String,
}

impl Default for RawCri {
    fn default() -> Self {
        RawCri {
            enabled: true,
            endpoint: default_cri_endpoint(),
            timeout: default_cri_timeout(),
            rescan_interval: default_cri_rescan_interval(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub name: String,
    /// `file` (the default: `include` globs, `selector`, `container_paths`) or a
    /// network input: `syslog`, `http` (NDJSON POST), `otlp` (OTLP/HTTP logs).
    #[serde(default, rename = "type")]
    pub kind: RawSourceType,
    /// Where a network input listens: `tcp://127.0.0.1:5514`, `udp://0.0.0.0:514`,
    /// `unix:///run/logtap/log` (a datagram socket, as `/dev/log` is).
    #[serde(default)]
    pub listen: Option<String>,
    /// Stream connections a network input keeps open at once (default 256).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// The largest request body an `http` or `otlp` input takes (default 10MiB; larger: 413).
    #[serde(default)]
    pub max_body_size: Option<String>,
    /// Absolute globs; required unless `selector` is set (then it defaults to every
    /// CRI log under `collections.pod_logs`).
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Default: `cri` with a `selector`, else `raw`.
    #[serde(default)]
    pub format: Option<RawFormat>,
    /// Only containers this selects (the `LogCollection` selector): the source reads
    /// CRI log files only, and each container's facts decide.
    #[serde(default)]
    pub selector: Option<Selector>,
    /// Files inside each selected container (absolute globs in the container's file
    /// system, e.g. `/var/log/app/*.log`), read through `/proc/<pid>/root` while the
    /// container runs. Replaces `include`; without a `selector`, every container.
    #[serde(default)]
    pub container_paths: Vec<String>,
    /// Read a symlink whose target lies outside the directories the globs can
    /// match, if the target is below one of `allowed_roots` (default: refused).
    #[serde(default)]
    pub follow_symlinks: bool,
    /// Absolute directories symlinks may lead into with `follow_symlinks`.
    #[serde(default)]
    pub allowed_roots: Vec<String>,
    #[serde(default = "default_max_line_size")]
    pub max_line_size: String,
    #[serde(default)]
    pub multiline: Option<RawMultiline>,
    #[serde(default)]
    pub parser: Option<RawParser>,
    /// Record processors, in order, after the parser.
    #[serde(default)]
    pub processors: Vec<RawProcessor>,
    #[serde(default = "default_sink_name")]
    pub sink: String,
}

fn default_admin_namespace() -> String {
    "logtap-system".into()
}
fn default_capture_source() -> String {
    "pods".into()
}
fn default_cgroup_prefix() -> String {
    "/kubepods".into()
}
fn default_ring_size() -> String {
    "16MiB".into()
}
fn default_records_per_write() -> u32 {
    16
}
fn default_reorder_grace() -> String {
    "200ms".into()
}
fn default_repair_wait() -> String {
    "10s".into()
}
fn default_pin_dir() -> String {
    "/sys/fs/bpf/logtap".to_owned()
}

/// More than the DaemonSet's `terminationGracePeriodSeconds` (30 s, after which the
/// kubelet kills a predecessor that is still draining) and a readiness period (10 s:
/// a `maxSurge` rollout stops the old agent once the new one is ready).
fn default_pin_wait() -> String {
    "45s".into()
}

fn default_claim_wait() -> String {
    "5s".into()
}
fn default_max_pending() -> String {
    "4MiB".into()
}
/// Out of the agent's 64 MiB with 200 streams of 0.5 MB/s (see
/// `stage::OPEN_PACKAGE_BYTES`): 16 MiB before 2026-12-07, full in every run there
/// while the ring overflowed; 4 MiB since holes are aged from their last move
/// (`docs/benchmarks.md`, "Scale").
fn default_max_buffered() -> String {
    "4MiB".into()
}
fn default_data_dir() -> String {
    "/var/lib/logtap".into()
}
fn default_metrics_listen() -> Option<String> {
    Some("127.0.0.1:9464".into())
}
fn default_stall_timeout() -> String {
    humantime::format_duration(crate::metrics::health::DEFAULT_STALL_TIMEOUT).to_string()
}
fn default_checkpoint_interval() -> String {
    "1s".into()
}
fn default_rescan_interval() -> String {
    "10s".into()
}
fn default_partial_timeout() -> String {
    "5s".into()
}
fn default_rotate_wait() -> String {
    "5s".into()
}
fn default_cri_endpoint() -> String {
    crate::discovery::cri::DEFAULT_ENDPOINT.into()
}
fn default_cri_timeout() -> String {
    "2s".into()
}
fn default_cri_rescan_interval() -> String {
    "30s".into()
}
fn default_batch_max_size() -> String {
    "1MiB".into()
}
fn default_batch_max_lines() -> usize {
    8192
}
fn default_batch_timeout() -> String {
    "200ms".into()
}
fn default_max_line_size() -> String {
    "1MiB".into()
}
fn default_sink_name() -> String {
    "local".into()
}
fn default_pod_logs() -> String {
    "/var/log/pods".into()
}
fn default_facts_wait() -> String {
    "5s".into()
}
fn default_metadata_wait() -> String {
    "2s".into()
}

//! The config file as serde reads it. Every struct denies unknown fields, so a typo
//! is an error naming the field, its path and its line (serde_yaml reports both).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
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
}

impl Default for RawCapture {
    fn default() -> Self {
        RawCapture {
            enabled: false,
            source: default_capture_source(),
            cgroup_prefix: default_cgroup_prefix(),
            ring_size: default_ring_size(),
            max_records_per_write: default_records_per_write(),
            reorder_grace: default_reorder_grace(),
            repair_wait: default_repair_wait(),
            claim_wait: default_claim_wait(),
            max_pending: default_max_pending(),
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
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: default_metrics_listen(),
            bearer_token_file: None,
        }
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawFormat {
    #[default]
    Raw,
    Cri,
    Docker,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub name: String,
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
    pub selector: Option<super::crd::Selector>,
    /// Files inside each selected container (absolute globs in the container's file
    /// system, e.g. `/var/log/app/*.log`), read through `/proc/<pid>/root` while the
    /// container runs. Replaces `include`; without a `selector`, every container.
    #[serde(default)]
    pub container_paths: Vec<String>,
    #[serde(default = "default_max_line_size")]
    pub max_line_size: String,
    #[serde(default)]
    pub multiline: Option<RawMultiline>,
    #[serde(default)]
    pub parser: Option<RawParser>,
    #[serde(default = "default_sink_name")]
    pub sink: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMultiline {
    pub start: String,
    #[serde(default = "default_multiline_timeout")]
    pub flush_timeout: String,
    #[serde(default = "default_multiline_max_lines")]
    pub max_lines: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
#[schemars(transform = merge_tagged_variants)]
pub enum RawParser {
    Json {},
    Regex {
        pattern: String,
    },
    Delimiter {
        #[serde(default = "default_delimiter")]
        delimiter: String,
        #[serde(default)]
        quote: Option<String>,
        columns: Vec<String>,
    },
    Nginx {},
    Apache {},
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
#[schemars(transform = merge_tagged_variants)]
pub enum RawSink {
    Store {
        // Defaults to `<data_dir>/store`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(schema_with = "sink_path_schema")]
        path: Option<String>,
        #[serde(default = "default_segment_size")]
        segment_size: String,
        #[serde(default = "default_store_max_size")]
        max_size: String,
        #[serde(default)]
        max_age: Option<String>,
        /// Free space kept on the store's disk: oldest segments go first (`10%`, `2GiB`, `0` off).
        #[serde(default = "default_min_free")]
        min_free: String,
    },
    File {
        #[schemars(schema_with = "sink_path_schema")]
        path: String,
    },
    Stdout {},
    /// Discards packages after acknowledging them (benchmarks, dry runs).
    Blackhole {},
    /// Kafka (librdkafka), behind a durable spool on the node.
    Kafka(Box<RawKafka>),
    /// OTLP/HTTP logs (`<endpoint>/v1/logs`), behind a durable spool on the node.
    Otlp(Box<RawOtlp>),
}

/// `type: kafka` (see docs/configuration.md).
///
/// Its last four fields (`spool` … `drain_timeout`) repeat in [`RawOtlp`] on purpose:
/// serde cannot combine `flatten` with `deny_unknown_fields`, and a typo in a sink's
/// settings must be an error naming the field. The validator reads both
/// through one `ForwardFields`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The topic: a name, or a template over source fields (`logs-{k8s.namespace}`).
    pub topic: String,
    /// The source field whose value keys messages (default: the source id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// kafka: none | lz4 | zstd | gzip | snappy (default lz4); otlp: none | gzip (default gzip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// `all` (default) or `1`.
    #[serde(default = "default_acks")]
    pub acks: String,
    /// The idempotent producer (default on): no duplicates from the client's own retries.
    #[serde(default = "default_true")]
    pub idempotent: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawKafkaTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<RawKafkaSasl>,
    /// librdkafka client properties passed through as they are.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// How long the client tries to deliver a message before the window is retried.
    #[serde(default = "default_message_timeout")]
    pub message_timeout: String,
    #[serde(default)]
    pub spool: RawSpool,
    /// Records the destination refuses for good are appended here (NDJSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    /// Body bytes of one request / produce round at most (default 4MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_size: Option<String>,
    /// How long a stopping agent keeps forwarding its spool (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKafkaTls {
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKafkaSasl {
    /// PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512.
    pub mechanism: String,
    pub username: String,
    /// A file holding the password (a mounted Secret).
    pub password_file: String,
}

/// `type: otlp` (see docs/configuration.md).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    /// `http://host:4318`: logs are posted to `<endpoint>/v1/logs`.
    pub endpoint: String,
    /// kafka: none | lz4 | zstd | gzip | snappy (default lz4); otlp: none | gzip (default gzip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Bound on one request.
    #[serde(default = "default_otlp_timeout")]
    pub timeout: String,
    #[serde(default)]
    pub spool: RawSpool,
    /// Records the destination refuses for good are appended here (NDJSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    /// Body bytes of one request / produce round at most (default 4MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_size: Option<String>,
    /// How long a stopping agent keeps forwarding its spool (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
}

/// The durable spool of a network sink.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSpool {
    /// Default `<data_dir>/spool/<sink name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Bytes the spool may hold (default 1GiB).
    #[serde(default = "default_spool_max_size")]
    pub max_size: String,
    /// block (default: reading waits) | drop_oldest (counted).
    #[serde(default = "default_when_full")]
    pub when_full: String,
}

impl Default for RawSpool {
    fn default() -> Self {
        RawSpool {
            path: None,
            max_size: default_spool_max_size(),
            when_full: default_when_full(),
        }
    }
}

fn default_acks() -> String {
    "all".into()
}
fn default_true() -> bool {
    true
}
fn default_message_timeout() -> String {
    "30s".into()
}
fn default_otlp_timeout() -> String {
    "10s".into()
}
fn default_spool_max_size() -> String {
    "1GiB".into()
}
fn default_when_full() -> String {
    "block".into()
}

/// Rewrites the `oneOf` schema of an internally tagged enum (`{type: store, ...}`) into
/// one object: a Kubernetes structural schema allows no per-variant properties, and
/// kube's rewriter refuses variants whose `type` tags differ. The merged object lists
/// every variant's fields and the tag's values as an enum; which fields each kind takes
/// and requires is left to serde (unknown fields for the kind are still rejected when
/// the agent reads the object).
pub(crate) fn merge_tagged_variants(schema: &mut schemars::Schema) {
    use serde_json::{Map, Value};
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    let Some(Value::Array(variants)) = obj.remove("oneOf") else {
        return;
    };
    let mut tags = Vec::new();
    let mut properties = Map::new();
    let mut kinds = Vec::new();
    for variant in variants {
        let Value::Object(mut variant) = variant else {
            continue;
        };
        let Some(Value::Object(props)) = variant.remove("properties") else {
            continue;
        };
        for (name, prop) in props {
            if name == "type" {
                let tag = prop.get("const").cloned().or_else(|| {
                    prop.get("enum")
                        .and_then(|e| e.as_array())
                        .and_then(|e| e.first().cloned())
                });
                if let Some(tag) = tag {
                    if let (Some(t), Some(Value::String(d))) =
                        (tag.as_str(), variant.get("description"))
                    {
                        let d = d.split_whitespace().collect::<Vec<_>>().join(" ");
                        kinds.push(format!("`{t}`: {}", d.trim_end_matches('.')));
                    }
                    tags.push(tag);
                }
            } else {
                properties.entry(name).or_insert(prop);
            }
        }
    }
    let mut tag_schema = Map::new();
    tag_schema.insert("type".into(), "string".into());
    tag_schema.insert("enum".into(), Value::Array(tags));
    if !kinds.is_empty() {
        tag_schema.insert(
            "description".into(),
            format!("{}.", kinds.join(". ")).into(),
        );
    }
    properties.insert("type".into(), Value::Object(tag_schema));
    obj.insert("type".into(), "object".into());
    obj.insert("properties".into(), Value::Object(properties));
    obj.insert("required".into(), Value::Array(vec!["type".into()]));
}

/// One schema for the `path` of every sink kind: a Kubernetes structural schema merges
/// the variants of a tagged enum into one object, whose properties must agree. Serde
/// still tells the kinds apart (required for `file`, defaulted for `store`).
fn sink_path_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "description": "store: its directory (default <data_dir>/store); file: the file (required)"
    })
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
fn default_claim_wait() -> String {
    "5s".into()
}
fn default_max_pending() -> String {
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
fn default_multiline_timeout() -> String {
    "1s".into()
}
fn default_multiline_max_lines() -> usize {
    500
}
fn default_delimiter() -> String {
    ",".into()
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
fn default_segment_size() -> String {
    "64MiB".into()
}
fn default_min_free() -> String {
    "10%".into()
}
fn default_store_max_size() -> String {
    "10GiB".into()
}

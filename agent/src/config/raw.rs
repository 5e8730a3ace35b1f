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
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// `host:port` of the Prometheus endpoint; empty disables it.
    #[serde(default = "default_metrics_listen")]
    pub listen: Option<String>,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: default_metrics_listen(),
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
pub struct RawFiles {
    #[serde(default = "default_rescan_interval")]
    pub rescan_interval: String,
    #[serde(default = "default_rotate_wait")]
    pub rotate_wait: String,
    #[serde(default = "default_true")]
    pub io_uring: bool,
}

impl Default for RawFiles {
    fn default() -> Self {
        RawFiles {
            rescan_interval: default_rescan_interval(),
            rotate_wait: default_rotate_wait(),
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
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub format: RawFormat,
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
    },
    File {
        #[schemars(schema_with = "sink_path_schema")]
        path: String,
    },
    Stdout {},
    /// Discards packages after acknowledging them (benchmarks, dry runs).
    Blackhole {},
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

fn default_data_dir() -> String {
    "/var/lib/logtap".into()
}
fn default_metrics_listen() -> Option<String> {
    Some("127.0.0.1:9464".into())
}
fn default_checkpoint_interval() -> String {
    "1s".into()
}
fn default_rescan_interval() -> String {
    "10s".into()
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
fn default_true() -> bool {
    true
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
fn default_segment_size() -> String {
    "64MiB".into()
}
fn default_store_max_size() -> String {
    "10GiB".into()
}

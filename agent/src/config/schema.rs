//! The serde types the config file and the `LogCollection` CRD share: framing
//! (`format`, `multiline`), parsers, sinks, and the container selector. A block means
//! the same thing in `logtap.yaml` ([`super::raw`]) and in a `LogCollection`
//! ([`super::crd`]), because it is the same type.
//!
//! A leaf: it depends on no other config module. Every struct denies unknown fields,
//! so a typo is an error naming the field and its path.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

/// One step of a source's `processors`, applied in order to every record after its
/// parser and before it is packaged (see `crate::transform`). `field` names a parsed
/// field; without it a step works on the record's body.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[schemars(transform = merge_tagged_variants)]
pub enum RawProcessor {
    /// Keeps only the records whose body (or `field`) matches `regex` or `equals`.
    Keep {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        regex: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        equals: Option<String>,
    },
    /// Drops the records whose body (or `field`) matches `regex` or `equals`.
    Drop {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        regex: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        equals: Option<String>,
    },
    /// Replaces every match of `regex` with `replacement` (default `****`; `$1`,
    /// `$name` refer to its groups) in the body and every field value, or only in
    /// `field`.
    Mask {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
        regex: String,
        // No serde default: in the CRD it would be a schema default, which the API
        // server would add to every kind of step (and `keep` has no `replacement`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replacement: Option<String>,
    },
    /// Adds these fields to every record.
    AddFields { fields: BTreeMap<String, String> },
    /// Renames fields: `{old: new, ...}`.
    RenameFields { fields: BTreeMap<String, String> },
    /// Removes the fields of these names.
    RemoveFields { names: Vec<String> },
    /// Adds the named captures of `regex` in the body (or `field`) as fields.
    Extract {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
        regex: String,
    },
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
        /// store: lz4 (default) | none; kafka: none | lz4 | zstd | gzip | snappy (default lz4); otlp: none | gzip (default gzip).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compression: Option<String>,
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
    /// store: lz4 (default) | none; kafka: none | lz4 | zstd | gzip | snappy (default lz4); otlp: none | gzip (default gzip).
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
    /// `record` (default): one message per record; `package`: one message per run of
    /// a package's records, their JSON lines as the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_per: Option<String>,
    /// With `message_per: package`: `lines` (default), the records' JSON lines; or
    /// `package`, one object with the shared fields once and a `records` array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
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
    /// store: lz4 (default) | none; kafka: none | lz4 | zstd | gzip | snappy (default lz4); otlp: none | gzip (default gzip).
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
    /// lz4 (default) | none: packages as they are, ~3× the disk, less CPU.
    #[serde(default = "default_spool_compression")]
    pub compression: String,
}

impl Default for RawSpool {
    fn default() -> Self {
        RawSpool {
            path: None,
            max_size: default_spool_max_size(),
            when_full: default_when_full(),
            compression: default_spool_compression(),
        }
    }
}

fn default_acks() -> String {
    "all".into()
}

pub(super) fn default_true() -> bool {
    true
}

fn default_message_timeout() -> String {
    "30s".into()
}

fn default_otlp_timeout() -> String {
    "10s".into()
}

fn default_spool_compression() -> String {
    "lz4".into()
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
/// the agent reads the object), and so are the defaults: the merged fields have none.
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
                // A default in the merged object would be applied by the API server to
                // every kind (a store sink would get a Kafka `acks`, which serde then
                // rejects as unknown); serde applies each kind's defaults itself.
                let mut prop = prop;
                if let Value::Object(p) = &mut prop {
                    p.remove("default");
                }
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

fn default_min_free() -> String {
    "10%".into()
}

fn default_store_max_size() -> String {
    "10GiB".into()
}

/// Selects containers. Every part that is set must hold (AND); an exclusion wins over
/// any inclusion.
///
/// Values of `include_*`/`exclude_*` maps and of `namespaces` lists are matched whole:
/// an empty value matches any value (the key only has to be present), a value written
/// `^…$` is a regex, anything else is compared exactly.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub namespaces: NamespaceSelector,
    /// Regex searched in the pod name (anchor it with `^…$` for a whole-name match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Regex searched in the container name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// Every entry must match a pod label or a container (runtime) label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub include_labels: BTreeMap<String, String>,
    /// A container is excluded when any entry matches a pod or container label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exclude_labels: BTreeMap<String, String>,
    /// Every entry must match an environment variable of the container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub include_env: BTreeMap<String, String>,
    /// A container is excluded when any entry matches one of its environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exclude_env: BTreeMap<String, String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSelector {
    /// The namespace must match one entry; empty means every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// A namespace matching any entry is excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

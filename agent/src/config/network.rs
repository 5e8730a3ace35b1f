//! Validated settings of the network sinks (`type: kafka`, `type: otlp`) and of the
//! spool every network sink writes to first. The YAML side is in [`super::raw`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// What a full spool does to new packages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// New packages wait (the sink's queue fills and the readers stop, as with a
    /// slow local sink); what the kubelet deletes unread meanwhile is counted there.
    Block,
    /// The oldest unforwarded packages are deleted to make room, counted as
    /// `logtap_dropped_lines_total{reason="spool_full"}`.
    DropOldest,
}

/// How a local store or a spool writes its packages' blocks (`compression`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BlockCompression {
    /// lz4: about a third of the payload's bytes on disk.
    #[default]
    Lz4,
    /// The payload as it is (lz4 literals, the same block format): no compression
    /// and no decompression on the way out, about three times the bytes on disk.
    None,
}

/// The on-disk spool of one network sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Directory of the spool; default `<data_dir>/spool/<sink name>`.
    pub path: PathBuf,
    /// Bytes of spool segments kept at most (forwarded or not).
    pub max_bytes: u64,
    /// A spool segment is sealed (and can be deleted once forwarded) at this size.
    pub segment_bytes: u64,
    pub when_full: WhenFull,
    pub compression: BlockCompression,
}

/// Settings every network sink has besides its protocol's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardConfig {
    pub spool: SpoolConfig,
    /// Records the destination refused for good are appended here as NDJSON (the
    /// `file` sink's shape plus `reject_reason`); `None`: counted only.
    pub dead_letter: Option<PathBuf>,
    /// A window (one destination request / one Kafka produce round) holds at most
    /// this many body bytes...
    pub max_window_bytes: u64,
    /// ...and at most this many packages.
    pub max_window_packages: usize,
    /// How long a closing sink keeps forwarding its spool before it stops (the rest
    /// is forwarded after the restart).
    pub drain_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaCompression {
    None,
    Lz4,
    Zstd,
    Gzip,
    Snappy,
}

impl KafkaCompression {
    /// The librdkafka `compression.codec` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaCompression::None => "none",
            KafkaCompression::Lz4 => "lz4",
            KafkaCompression::Zstd => "zstd",
            KafkaCompression::Gzip => "gzip",
            KafkaCompression::Snappy => "snappy",
        }
    }
}

/// What one Kafka message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessagePer {
    /// One record: the value is its JSON (the default, what consumers expect).
    Record,
    /// A run of consecutive records of one package: the value is their JSON lines
    /// (NDJSON), at most `message.max.bytes` less a margin; a record too large for
    /// that is a message of its own. Several times cheaper per record, because the
    /// client's per-message cost is paid once per run (docs/benchmarks.md).
    Package,
}

/// The value of a `message_per: package` message (`value:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaValue {
    /// The run's records as JSON lines, each the `file` sink's object (the default).
    Lines,
    /// One JSON object: what the run's records share (source id, path, package id,
    /// resource, stream) once, then `records`, each with only its own members. About
    /// half the bytes of `Lines` for container logs, so half the JSON to render and
    /// for the client to compress (docs/configuration.md has the schema).
    Package,
}

/// One part of a topic template: `logs-{k8s.namespace}` is
/// `[Literal("logs-"), Field("k8s.namespace")]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// A source field (`k8s.namespace`, `k8s.pod.label.app`, …) or one of the
    /// source's own: `source.kind`, `source.config`.
    Field(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub username: String,
    /// Read from a file (a mounted Secret), never written into the config itself.
    pub password_file: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    pub brokers: Vec<String>,
    /// The topic, possibly templated over source fields. A field a source lacks
    /// renders as `unknown`.
    pub topic: Vec<TemplatePart>,
    /// The source field whose value keys messages; `None`: the source id (one source
    /// stays in one partition, in order).
    pub key: Option<String>,
    pub compression: KafkaCompression,
    /// `acks`: `all` (default), `1` or `0` is refused (no acknowledgement to wait for).
    pub acks: String,
    pub idempotent: bool,
    pub tls: Option<KafkaTls>,
    pub sasl: Option<KafkaSasl>,
    /// librdkafka properties passed through as they are (they win over the above).
    pub properties: BTreeMap<String, String>,
    /// How long librdkafka tries to deliver a message before reporting it failed
    /// (`message.timeout.ms`); the forwarder then sends the window again.
    pub message_timeout: Duration,
    /// One message per record or per run of a package's records.
    pub message_per: MessagePer,
    /// What a `message_per: package` message's value looks like; always `Lines` with
    /// `message_per: record` (the validator refuses `Package` there).
    pub value: KafkaValue,
    pub forward: ForwardConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpCompression {
    None,
    Gzip,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    /// `http://host:4318`; logs are posted to `<endpoint>/v1/logs`.
    pub endpoint: String,
    pub compression: OtlpCompression,
    /// Extra request headers (e.g. `authorization`).
    pub headers: BTreeMap<String, String>,
    /// Bound on one request, connect to answer.
    pub timeout: Duration,
    pub forward: ForwardConfig,
}

/// `<endpoint>/v1/logs` of a validated `http://` or `https://` endpoint. An endpoint
/// that already ends in `/v1/logs` (the `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` form) is
/// used as it is. The error names the endpoint and what is wrong with it (the config's validation and the destination use it alike).
pub fn logs_url(endpoint: &str) -> Result<String, String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("otlp endpoint {endpoint:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "otlp endpoint {endpoint:?} must start with http:// or https://"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("otlp endpoint {endpoint:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!(
            "otlp endpoint {endpoint:?} has a query; give the base URL (logtap adds /v1/logs)"
        ));
    }
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/logs") {
        Ok(base.to_owned())
    } else {
        Ok(format!("{base}/v1/logs"))
    }
}

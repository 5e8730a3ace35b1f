//! The config file as serde reads it. Every struct denies unknown fields, so a typo
//! is an error naming the field, its path and its line (serde_yaml reports both).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    pub sources: Vec<RawSource>,
    #[serde(default)]
    pub sinks: BTreeMap<String, RawSink>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RawFormat {
    #[default]
    Raw,
    Cri,
    Docker,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMultiline {
    pub start: String,
    #[serde(default = "default_multiline_timeout")]
    pub flush_timeout: String,
    #[serde(default = "default_multiline_max_lines")]
    pub max_lines: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum RawSink {
    Store {
        /// Defaults to `<data_dir>/store`.
        #[serde(default)]
        path: Option<String>,
        #[serde(default = "default_segment_size")]
        segment_size: String,
        #[serde(default = "default_store_max_size")]
        max_size: String,
        #[serde(default)]
        max_age: Option<String>,
    },
    File {
        path: String,
    },
    Stdout {},
    /// Discards packages after acknowledging them (benchmarks, dry runs).
    Blackhole {},
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

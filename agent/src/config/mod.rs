//! Configuration: one YAML file whose schema is the future `LogCollection` CRD spec.
//!
//! Parsed in two steps, as ripgrep does with its flags: [`raw`] is what serde reads
//! (unknown fields rejected, so a typo names the field and its line; the types it
//! shares with the `LogCollection` CRD of [`crd`] are in [`schema`]), then
//! [`Config::from_raw`] (`validate`) turns it into the typed values of this module
//! (compiled globs and regexes, sizes, durations) with errors that name the field
//! path.

pub mod crd;
mod inputs;
pub use events::KubernetesEventsConfig;
mod events;
pub mod network;
pub mod raw;
pub mod schema;
mod sidecar;
mod start_pattern;
mod validate;

pub use start_pattern::StartPattern;
pub(crate) use validate::Validator;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::bytes::Regex;

use crate::select::CompiledSelector;

/// The embedded default: this node's pod logs and host logs into the local store.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("default.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: field `{field}`: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
}

/// How the bytes of a source are framed into records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One record per `\n`-terminated line (`\r\n` is stripped too).
    Raw,
    /// CRI log format: `<RFC3339Nano> <stdout|stderr> <P|F> <message>`.
    Cri,
    /// docker json-file: `{"log":"...","stream":"stdout","time":"..."}`.
    Docker,
    /// Every chunk is one record, whatever bytes it holds (a message a network input
    /// already framed: a syslog frame may contain `\n`). Not a config file value.
    Message,
}

/// Which kernel hooks capture's write path uses (`capture.hooks`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CaptureHooks {
    /// BPF trampolines (`fexit` on `vfs_write`/`vfs_writev`), which cost a task nothing
    /// unless it writes; the raw syscall exit tracepoint where the kernel has none; the
    /// compat program on that tracepoint where the kernel is older than 5.15.
    #[default]
    Auto,
    /// The raw syscall exit tracepoint, even where trampolines work: it puts every task of the
    /// node on the slow syscall path. For kernels whose trampolines misbehave, and to
    /// test the fallback.
    Tracepoint,
    /// The raw syscall exit tracepoint with the program for kernels 5.8–5.14 (no atomic
    /// fetch-add, no `bpf_task_pt_regs`), which `auto` takes where the others do not
    /// load: a write racing another write to its stream is repaired from the CRI log.
    /// Forced, to test it on a newer kernel.
    Compat,
}

#[derive(Clone, Debug)]
pub struct MultilineConfig {
    /// A line matching this starts a new record; other lines continue the current one.
    pub start: StartPattern,
    /// A record with no new line for this long is emitted as is.
    pub flush_timeout: Duration,
    /// A record is emitted when it reaches this many lines (bounds memory).
    pub max_lines: usize,
}

#[derive(Clone, Debug)]
pub enum ParserConfig {
    /// Keep the body as is.
    None,
    /// The body is a JSON object; its top-level members become fields.
    Json,
    /// Named captures of the regex become fields.
    Regex(Regex),
    /// Split on `delimiter` (CSV quoting rules when `quote` is set) into `columns`.
    Delimiter {
        delimiter: u8,
        quote: Option<u8>,
        columns: Vec<Arc<str>>,
    },
    /// nginx `combined` access log.
    Nginx,
    /// Apache combined access log.
    Apache,
    /// A syslog message, RFC 5424 or RFC 3164 (the parser of `type: syslog` inputs).
    Syslog,
}

/// What a filter step compares a record's body or field with.
#[derive(Clone, Debug)]
pub enum ValueTest {
    Regex(Regex),
    Equals(bytes::Bytes),
}

/// A validated step of a source's `processors` (see [`crate::transform`]). `field`
/// names a parsed field; `None` is the record's body.
#[derive(Clone, Debug)]
pub enum ProcessorConfig {
    /// `keep` (only matching records stay) or `drop` (matching records go).
    Filter {
        keep: bool,
        field: Option<Arc<str>>,
        test: ValueTest,
    },
    /// Every match replaced (the body and every field value when `field` is `None`).
    Mask {
        field: Option<Arc<str>>,
        regex: Regex,
        replacement: Arc<str>,
    },
    AddFields(Vec<(Arc<str>, Arc<str>)>),
    /// `(old, new)` key pairs.
    RenameFields(Vec<(Arc<str>, Arc<str>)>),
    RemoveFields(Vec<Arc<str>>),
    /// Named captures become fields.
    Extract {
        field: Option<Arc<str>>,
        regex: Regex,
    },
}

#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub name: Arc<str>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub format: Format,
    pub max_line_bytes: usize,
    pub multiline: Option<MultilineConfig>,
    pub parser: ParserConfig,
    /// Name of the entry of `sinks` this source's packages go to.
    pub sink: Arc<str>,
    /// Only the CRI logs of containers this selects (see `crate::select`).
    pub selector: Option<Arc<CompiledSelector>>,
    /// Only lines of this stream (a `container_stdout` input with `stream` set).
    pub stream: Option<crate::frame::Stream>,
    /// Globs of files inside the selected containers (see
    /// [`crate::source::file::container`]); when set, `include` is empty and
    /// `selector` says which containers (every container when `None`).
    pub container_paths: Vec<String>,
    /// Directories outside the globs' own that a symlink found by the globs may lead
    /// into (`follow_symlinks` + `allowed_roots`); empty: links stay inside the
    /// globs' directories (see [`crate::source::file::open`]).
    pub allowed_roots: Vec<PathBuf>,
    /// Applied in order to every record after its parser (see [`crate::transform`]).
    pub processors: Vec<ProcessorConfig>,
    /// Fields every record of this source carries besides its container's (a
    /// collection declared by environment: its name and `_tags`).
    pub fields: Vec<(bytes::Bytes, bytes::Bytes)>,
    /// A network input (`type: syslog`) instead of files: `include` is then empty and
    /// the file source never matches it (see [`crate::source::net`]).
    pub input: Option<NetInputConfig>,
}

/// A network input: what it speaks, and where it listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetInputConfig {
    pub protocol: NetProtocol,
    pub listen: Listen,
    /// Stream connections open at once at most; more are closed at once (counted).
    pub max_connections: usize,
    /// `http`, `otlp`: the largest request body taken.
    pub max_body_bytes: usize,
}

/// The protocol of a network input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetProtocol {
    /// RFC 5424 / RFC 3164 messages; TCP framed by octet counting or newlines
    /// (RFC 6587), one message per UDP or Unix datagram.
    Syslog,
    /// NDJSON over HTTP POST: each line one record (a JSON object, its members the
    /// fields), answered once every record of the request is durable.
    Http,
    /// OTLP/HTTP logs (`POST /v1/logs`, protobuf or JSON): each log record one record,
    /// its body exact, its attributes fields; answered once durable.
    Otlp,
}

/// Where a network input listens (`listen:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `tcp://host:port`
    Tcp(std::net::SocketAddr),
    /// `udp://host:port`
    Udp(std::net::SocketAddr),
    /// `unix:///path`: a datagram socket, as `/dev/log` is.
    Unix(PathBuf),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "tcp://{a}"),
            Listen::Udp(a) => write!(f, "udp://{a}"),
            Listen::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

impl SourceConfig {
    /// A source reading `include` (absolute globs) with the defaults of the config
    /// file: raw format, 1 MiB lines, no multiline, no parser, no selector.
    pub fn new(name: &str, include: Vec<String>, sink: &str) -> SourceConfig {
        SourceConfig {
            name: Arc::from(name),
            include,
            exclude: Vec::new(),
            format: Format::Raw,
            max_line_bytes: 1 << 20,
            multiline: None,
            parser: ParserConfig::None,
            sink: Arc::from(sink),
            selector: None,
            stream: None,
            container_paths: Vec::new(),
            allowed_roots: Vec::new(),
            processors: Vec::new(),
            fields: Vec::new(),
            input: None,
        }
    }

    /// A source without files whose records the agent makes itself as JSON lines
    /// (self-monitoring, Kubernetes events): every member becomes a field.
    pub fn json_lines(name: &str, sink: &str) -> SourceConfig {
        SourceConfig {
            parser: ParserConfig::Json,
            ..SourceConfig::new(name, Vec::new(), sink)
        }
    }
}

/// Collections declared by containers' environment (the `env_configs:` section; see
/// [`crate::collections::env`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvConfigsConfig {
    pub enabled: bool,
    /// Where a declared collection that names no sink goes; `None`: the config has
    /// no sink to default to, so such a declaration is an error.
    pub default_sink: Option<Arc<str>>,
    /// The sinks a declaration may name (the default sink included).
    pub allowed_sinks: Vec<Arc<str>>,
}

/// Selector sources and `LogCollection` objects (the `collections:` section).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionsConfig {
    /// Watch `LogCollection` objects (needs the `kubernetes` section enabled).
    pub enabled: bool,
    /// The kubelet's pod log directory.
    pub pod_logs: PathBuf,
    /// Bound on waiting for a new container log's facts before selectors decide.
    pub facts_wait: Duration,
    /// `LogCollection` objects of this namespace may select any container, read node
    /// files and write files by path; those of other namespaces may not.
    pub admin_namespace: String,
}

impl CollectionsConfig {
    /// The glob of every CRI log file below `pod_logs`.
    pub fn pod_log_glob(&self) -> String {
        format!("{}/*/*/*.log", self.pod_logs.display())
    }
}

/// Free space the store keeps on its file system (`min_free` in the config).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MinFree {
    Off,
    Bytes(u64),
    /// Percent of the file system's size.
    Percent(f64),
}

impl MinFree {
    /// Bytes to keep free on a file system of `total` bytes.
    pub fn threshold(self, total: u64) -> u64 {
        match self {
            MinFree::Off => 0,
            MinFree::Bytes(b) => b,
            MinFree::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum SinkConfig {
    /// The embedded local store.
    Store {
        path: PathBuf,
        segment_bytes: u64,
        max_bytes: u64,
        max_age: Option<Duration>,
        min_free: MinFree,
        /// The store's blocks as a spool's are (`compression`, default lz4).
        compression: network::BlockCompression,
    },
    /// Newline-delimited JSON appended to a file.
    File { path: PathBuf },
    /// Newline-delimited JSON on standard output.
    Stdout,
    /// Discards packages after acknowledging them (benchmarks, dry runs).
    Null,
    /// Kafka, behind a durable spool.
    Kafka(Box<network::KafkaConfig>),
    /// OTLP/HTTP logs, behind a durable spool.
    Otlp(Box<network::OtlpConfig>),
}

impl SinkConfig {
    /// The file or directory this sink owns alone, and the field that names it: two
    /// stores (or spools) on one directory cannot both take its writer lock, and two
    /// file sinks on one file would interleave lines.
    pub fn exclusive_path(&self) -> Option<(&Path, &'static str)> {
        match self {
            SinkConfig::Store { path, .. } | SinkConfig::File { path } => Some((path, "path")),
            SinkConfig::Kafka(k) => Some((&k.forward.spool.path, "spool.path")),
            SinkConfig::Otlp(o) => Some((&o.forward.spool.path, "spool.path")),
            SinkConfig::Stdout | SinkConfig::Null => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Store { .. } => "store",
            SinkConfig::File { .. } => "file",
            SinkConfig::Stdout => "stdout",
            SinkConfig::Null => "blackhole",
            SinkConfig::Kafka(_) => "kafka",
            SinkConfig::Otlp(_) => "otlp",
        }
    }
}

#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// A package is sealed at this many body bytes...
    pub max_bytes: usize,
    /// ...or this many records...
    pub max_lines: usize,
    /// ...or when its oldest record has waited this long.
    pub timeout: Duration,
}

/// Pod metadata from the Kubernetes API (the `kubernetes:` section).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// Watch the API and attach pod metadata (and the node name) to every line.
    pub enabled: bool,
    /// `None`: inferred as kube does (a kubeconfig if there is one, else the
    /// in-cluster service account).
    pub api_url: Option<String>,
    pub node_name: String,
    /// Bound on holding a new container source's first package for its pod metadata.
    pub metadata_wait: Duration,
    /// Annotation keys copied onto lines.
    pub annotations: Vec<String>,
}

/// The longest `kubernetes.metadata_wait` accepted: a held source pins a package of
/// memory, and its lines' latency grows by the wait.
const MAX_METADATA_WAIT: Duration = Duration::from_secs(60);

/// Where the container runtime is asked about containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CriConfig {
    /// `false`: container metadata comes from the pod log directory's paths only.
    pub enabled: bool,
    /// `unix:///run/containerd/containerd.sock` (or a bare absolute socket path).
    pub endpoint: String,
    /// Bound of every CRI call.
    pub timeout: Duration,
    /// Full container list from CRI: the safety net under the event-driven refreshes.
    pub rescan_interval: Duration,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Checkpoints live here, and the default store below it.
    pub data_dir: PathBuf,
    /// Prometheus `/metrics` listen address; `None` disables the endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// The token `/metrics` requires (`metrics.bearer_token_file`, read at validation).
    pub metrics_bearer_token: Option<crate::metrics::BearerToken>,
    /// HTTPS for the metrics listener (`metrics.tls`, loaded at validation).
    pub metrics_tls: Option<crate::metrics::MetricsTls>,
    /// How often acknowledged offsets are made durable (bounds duplicates after a crash).
    pub checkpoint_interval: Duration,
    /// A pipeline thread with work waiting and no progress for this long fails
    /// `/healthz` (see [`crate::metrics::health`]).
    pub stall_timeout: Duration,
    /// Periodic full rescan of the include globs: the safety net under inotify.
    pub rescan_interval: Duration,
    /// How long a rotated or deleted file stays open after its last byte was read.
    pub rotate_wait: Duration,
    /// An incomplete CRI/docker message is shipped (unterminated) after this long
    /// without its next fragment.
    pub partial_timeout: Duration,
    /// Read through io_uring when the kernel allows it (else plain `pread`).
    pub io_uring: bool,
    pub batch: BatchConfig,
    pub cri: CriConfig,
    pub sources: Vec<SourceConfig>,
    pub sinks: BTreeMap<Arc<str>, SinkConfig>,
    /// eBPF capture of container streams; `None` when disabled.
    pub capture: Option<CaptureConfig>,
    pub kubernetes: KubernetesConfig,
    pub collections: CollectionsConfig,
    pub env_configs: EnvConfigsConfig,
    /// The agent's own logs and statistics as records; `None` when disabled.
    pub self_monitoring: Option<SelfMonitoringConfig>,
    /// Kubernetes events, shipped while this agent holds the Lease; `None`: off.
    pub kubernetes_events: Option<KubernetesEventsConfig>,
}

/// The `self_monitoring` section (see `crate::selfmon`).
#[derive(Clone, Debug)]
pub struct SelfMonitoringConfig {
    pub sink: Arc<str>,
    /// The least severe level shipped.
    pub level: tracing::Level,
    pub interval: Duration,
}

#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Index in `sources` of the CRI source whose containers capture takes over.
    pub source: usize,
    /// That source's name (the `config_name` of the streams capture ships).
    pub source_name: Arc<str>,
    pub cgroup_prefix: String,
    pub ring_bytes: u32,
    pub max_records_per_write: u32,
    pub hooks: CaptureHooks,
    pub reorder_grace: Duration,
    pub repair_wait: Duration,
    pub claim_wait: Duration,
    pub max_pending: usize,
    /// The bpffs directory where the probes stay pinned across restarts; `None`:
    /// `pin: false` (pins an earlier run left in `pin_dir` are removed).
    pub pin_dir: Option<PathBuf>,
    /// `pin_dir` as configured, whether or not pinning is on.
    pub configured_pin_dir: PathBuf,
    /// How long a starting agent waits for another one holding `pin_dir` to stop.
    pub pin_wait: Duration,
    /// Bytes every stream together may hold waiting behind holes: beyond it, the
    /// streams holding the most spill theirs (dropped, read from the CRI log).
    pub max_buffered: usize,
}

impl Config {
    /// This config with `source` as its only source: the config of an input's own
    /// pipeline (its config 0 is `source`), routed to the same sinks.
    pub fn with_only_source(&self, source: SourceConfig) -> Config {
        Config {
            sources: vec![source],
            ..self.clone()
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: file.clone(),
            source,
        })?;
        Config::parse(&text, &file)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Config {
        Config::parse(DEFAULT_CONFIG_YAML, "<embedded default>")
            .expect("the embedded default config is valid (tested)")
    }

    /// Parses and validates YAML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        Config::from_raw(Config::parse_raw(text, file)?, file)
    }

    /// First step only: YAML into the raw schema, so callers can override fields (such
    /// as `data_dir` from the command line) before validation derives paths from them.
    pub fn parse_raw(text: &str, file: &str) -> Result<raw::RawConfig, ConfigError> {
        yaml_serde::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_string(),
            message: e.to_string(),
        })
    }
}

/// Parses a topic template: literal text with `{field}` placeholders.
pub fn parse_template(text: &str) -> Result<Vec<network::TemplatePart>, String> {
    use network::TemplatePart;
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TemplatePart::Literal(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("{text:?}: `{{` without a closing `}}`"))?;
        let name = after[..close].trim();
        if name.is_empty() || name.contains('{') {
            return Err(format!("{text:?}: empty or nested field name"));
        }
        parts.push(TemplatePart::Field(name.to_string()));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("{text:?}: `}}` without an opening `{{`"));
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest.to_string()));
    }
    if parts.is_empty() {
        return Err("the topic is empty".into());
    }
    Ok(parts)
}

/// This machine's hostname, if it has one.
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    std::str::from_utf8(&buf[..len])
        .ok()
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}

/// Parses `1024`, `64KiB`, `1MiB`, `10GB` (powers of 1024 for `Ki`/`Mi`/`Gi` and of
/// 1000 for `K`/`M`/`G`), `B` optional.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?}: expected a size such as 512KiB or 10MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1000,
        "Ki" | "KiB" => 1 << 10,
        "M" | "MB" => 1000 * 1000,
        "Mi" | "MiB" => 1 << 20,
        "G" | "GB" => 1000 * 1000 * 1000,
        "Gi" | "GiB" => 1 << 30,
        "T" | "TB" => 1000 * 1000 * 1000 * 1000,
        "Ti" | "TiB" => 1 << 40,
        u => {
            return Err(format!(
                "{text:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?}: too large"))
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Raw => "raw",
            Format::Cri => "cri",
            Format::Docker => "docker",
            Format::Message => "message",
        })
    }
}

#[cfg(test)]
mod tests;

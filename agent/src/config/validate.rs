//! The second parsing step: the raw config ([`super::raw`]) validated into typed
//! values ([`Config`]: compiled globs and regexes, sizes, durations, sinks with their
//! paths), with errors that name the field path. [`Validator`] holds the checks the
//! config file and the `LogCollection` spec ([`super::crd`]) share, so both accept
//! exactly the same values and name a failing field the same way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::bytes::Regex;

use super::schema::Selector;
use super::*;
use crate::select::{CompiledSelector, ValueMatcher};

/// The longest duration a config may give: beyond any sensible timeout, interval or
/// retention, and far below what `Instant + Duration` can represent: 100 years of
/// 365.25 days, as `humantime` counts `100y`.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

impl Config {
    /// Second step: validation. Defaults that depend on where the agent runs (the
    /// `kubernetes` section's) are read from the process environment.
    pub fn from_raw(raw: raw::RawConfig, file: &str) -> Result<Config, ConfigError> {
        Config::from_raw_in(raw, file, &|name| std::env::var(name).ok())
    }

    /// [`Config::from_raw`] with `env` in place of the process environment.
    pub fn from_raw_in(
        mut raw: raw::RawConfig,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let v = Validator::new(file);
        let pod_fields = super::sidecar::apply(&v, &mut raw, env)?;
        let data_dir = PathBuf::from(&raw.data_dir);
        let metrics_listen = match raw.metrics.listen.as_deref() {
            None | Some("") => None,
            Some(addr) => Some(
                addr.parse::<SocketAddr>()
                    .map_err(|e| v.invalid("metrics.listen", format!("{addr:?}: {e}")))?,
            ),
        };
        let metrics_bearer_token = match raw.metrics.bearer_token_file.as_deref() {
            None => None,
            Some(path) => Some(
                crate::metrics::BearerToken::from_file(Path::new(path))
                    .map_err(|e| v.invalid("metrics.bearer_token_file", e))?,
            ),
        };
        let metrics_tls = match &raw.metrics.tls {
            None => None,
            Some(t) => Some(
                crate::metrics::MetricsTls::load(
                    Path::new(&t.cert_file),
                    Path::new(&t.key_file),
                    t.client_ca_file.as_deref().map(Path::new),
                )
                .map_err(|(field, e)| v.invalid(&format!("metrics.tls.{}", field.name()), e))?,
            ),
        };

        let sinks = v.sinks(&raw.sinks, &data_dir)?;
        let kubernetes = v.kubernetes(&raw.kubernetes, env)?;
        let collections = v.collections(&raw.collections, &kubernetes)?;
        let mut sources = v.sources(&raw.sources, &sinks, &collections)?;
        if let Some(fields) = pod_fields {
            for s in &mut sources {
                s.fields = fields.clone();
            }
        }

        let batch = BatchConfig {
            max_bytes: v.size("batch.max_size", &raw.batch.max_size)? as usize,
            max_lines: raw.batch.max_lines,
            timeout: v.duration("batch.timeout", &raw.batch.timeout)?,
        };
        if batch.max_lines == 0 {
            return Err(v.invalid("batch.max_lines", "must be at least 1".into()));
        }

        let capture = v.capture(&raw.capture, &sources)?;
        let cri = v.cri(&raw.cri)?;
        let self_monitoring = v.self_monitoring(&raw.self_monitoring, &sinks)?;
        let env_configs = v.env_configs(&raw.env_configs, &sources, &sinks)?;
        let kubernetes_events =
            v.kubernetes_events(raw.kubernetes_events.as_ref(), &kubernetes, &sinks, env)?;

        Ok(Config {
            capture,
            data_dir,
            metrics_listen,
            metrics_bearer_token,
            metrics_tls,
            checkpoint_interval: v.interval("checkpoint.interval", &raw.checkpoint.interval)?,
            stall_timeout: v.interval("health.stall_timeout", &raw.health.stall_timeout)?,
            rescan_interval: v.interval("files.rescan_interval", &raw.files.rescan_interval)?,
            rotate_wait: v.duration("files.rotate_wait", &raw.files.rotate_wait)?,
            partial_timeout: v.interval("files.partial_timeout", &raw.files.partial_timeout)?,
            io_uring: raw.files.io_uring,
            batch,
            cri,
            sources,
            sinks,
            kubernetes,
            collections,
            self_monitoring,
            env_configs,
            kubernetes_events,
        })
    }
}

impl Validator {
    /// The `sinks` section: each sink checked, and no two writing the same path.
    fn sinks(
        &self,
        raw: &BTreeMap<String, schema::RawSink>,
        data_dir: &Path,
    ) -> Result<BTreeMap<Arc<str>, SinkConfig>, ConfigError> {
        let v = self;
        let mut sinks = BTreeMap::new();
        for (name, s) in raw {
            let prefix = format!("sinks.{name}");
            let sink = v.sink(&prefix, s, data_dir)?;
            // Two stores on one directory cannot both take its writer lock, and two file
            // sinks on one file would interleave lines: say so now, not at start-up.
            if let Some((path, field)) = sink.exclusive_path() {
                let same = |p: &Path| p.components().eq(path.components());
                if let Some((other, _)) = sinks.iter().find(|(_, s): &(&Arc<str>, &SinkConfig)| {
                    s.exclusive_path().is_some_and(|(p, _)| same(p))
                }) {
                    return Err(v.invalid(
                        &format!("{prefix}.{field}"),
                        format!("{} is also the path of sink {other:?}", path.display()),
                    ));
                }
            }
            sinks.insert(Arc::<str>::from(name.as_str()), sink);
        }

        Ok(sinks)
    }

    /// The `sources` section, against the sinks and collections already validated.
    fn sources(
        &self,
        raw: &[raw::RawSource],
        sinks: &BTreeMap<Arc<str>, SinkConfig>,
        collections: &CollectionsConfig,
    ) -> Result<Vec<SourceConfig>, ConfigError> {
        let v = self;
        let mut sources = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, s) in raw.iter().enumerate() {
            let prefix = format!("sources[{i}]");
            let field = |f: &str| format!("{prefix}.{f}");
            if !names.insert(s.name.clone()) {
                return Err(v.invalid(
                    &field("name"),
                    format!("duplicate source name {:?}", s.name),
                ));
            }
            if s.kind != raw::RawSourceType::File {
                v.sink_exists(&field("sink"), &s.sink, sinks)?;
                sources.push(v.net_source(&prefix, s)?);
                continue;
            }
            let selector = match &s.selector {
                Some(sel) => Some(Arc::new(sel.compile_at(v, &field("selector"))?)),
                None => None,
            };
            let container_files = !s.container_paths.is_empty();
            let include = match (&selector, s.include.is_empty()) {
                _ if container_files => Vec::new(),
                (Some(_), true) => vec![collections.pod_log_glob()],
                _ => s.include.clone(),
            };
            if container_files {
                v.container_paths(&prefix, &s.container_paths, &s.include, &s.exclude)?;
            } else {
                v.include_exclude(&prefix, &include, &s.exclude)?;
            }
            let format = match (s.format, &selector) {
                (Some(f), _) if container_files => f.into(),
                (None, _) if container_files => Format::Raw,
                (Some(schema::RawFormat::Raw), Some(_)) => {
                    return Err(v.invalid(
                        &field("format"),
                        "a source with a selector reads container logs: cri or docker".into(),
                    ));
                }
                (Some(f), _) => f.into(),
                (None, Some(_)) => Format::Cri,
                (None, None) => Format::Raw,
            };
            let allowed_roots = v.symlinks(&prefix, s, container_files)?;
            let max_line_bytes = v.max_line_size(&prefix, &s.max_line_size)?;
            let multiline = v.multiline(&prefix, s.multiline.as_ref())?;
            let parser = v.parser(&prefix, s.parser.as_ref())?;
            let processors = v.processors(&prefix, &s.processors)?;
            let sink: Arc<str> = Arc::from(s.sink.as_str());
            v.sink_exists(&field("sink"), &s.sink, sinks)?;
            sources.push(SourceConfig {
                name: Arc::from(s.name.as_str()),
                include,
                exclude: s.exclude.clone(),
                format,
                max_line_bytes,
                multiline,
                parser,
                sink,
                selector,
                stream: None,
                container_paths: s.container_paths.clone(),
                allowed_roots,
                processors,
                fields: Vec::new(),
                input: None,
            });
        }
        v.distinct_listeners(&sources)?;
        Ok(sources)
    }

    fn sink_exists(
        &self,
        field: &str,
        sink: &str,
        sinks: &BTreeMap<Arc<str>, SinkConfig>,
    ) -> Result<(), ConfigError> {
        if sinks.contains_key(sink) {
            return Ok(());
        }
        Err(self.invalid(
            field,
            format!(
                "no sink named {sink:?} (defined: {})",
                sinks
                    .keys()
                    .map(|k| k.as_ref())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

impl From<schema::RawFormat> for Format {
    fn from(f: schema::RawFormat) -> Format {
        match f {
            schema::RawFormat::Raw => Format::Raw,
            schema::RawFormat::Cri => Format::Cri,
            schema::RawFormat::Docker => Format::Docker,
        }
    }
}

/// Most steps a source's `processors` may have: each runs on every record.
const MAX_PROCESSORS: usize = 32;

/// The checks shared by the config file and the `LogCollection` spec ([`crd`]), so both
/// accept exactly the same values and name the failing field the same way. `prefix` is
/// the path of the enclosing object (`sources[0]`, `spec.sources[0]`).
pub(crate) struct Validator {
    file: String,
}

impl Validator {
    pub(crate) fn new(file: &str) -> Validator {
        Validator {
            file: file.to_string(),
        }
    }

    pub(crate) fn invalid(&self, field: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            field: field.to_string(),
            message,
        }
    }

    /// A duration of at most [`MAX_DURATION`]: deadlines are `Instant::now() + d`,
    /// which panics beyond what an `Instant` can hold (about 292 billion years, which
    /// `humantime` happily parses).
    pub(crate) fn duration(&self, field: &str, text: &str) -> Result<Duration, ConfigError> {
        let d = humantime::parse_duration(text)
            .map_err(|e| self.invalid(field, format!("{text:?}: {e}")))?;
        if d > MAX_DURATION {
            return Err(self.invalid(field, format!("{text:?}: at most 100 years")));
        }
        Ok(d)
    }

    /// An interval of 0 turns a periodic loop into a busy one (fsync storms, endless
    /// rescans); where 0 means "at once" (rotate_wait, batch.timeout) [`Self::duration`]
    /// allows it.
    pub(crate) fn interval(&self, field: &str, text: &str) -> Result<Duration, ConfigError> {
        let d = self.duration(field, text)?;
        if d.is_zero() {
            return Err(self.invalid(field, format!("{text:?}: must be greater than zero")));
        }
        Ok(d)
    }

    fn capture(
        &self,
        raw: &raw::RawCapture,
        sources: &[SourceConfig],
    ) -> Result<Option<CaptureConfig>, ConfigError> {
        if !raw.enabled {
            return Ok(None);
        }
        let source = sources
            .iter()
            .position(|s| *s.name == *raw.source)
            .ok_or_else(|| {
                self.invalid(
                    "capture.source",
                    format!("no source named {:?}", raw.source),
                )
            })?;
        if sources[source].format != Format::Cri {
            return Err(self.invalid(
                "capture.source",
                format!(
                    "source {:?} must have format cri: its CRI logs are the repair path",
                    raw.source
                ),
            ));
        }
        if !raw.cgroup_prefix.starts_with('/') {
            return Err(self.invalid(
                "capture.cgroup_prefix",
                format!(
                    "{:?}: must start with '/' (a path below the cgroup v2 root)",
                    raw.cgroup_prefix
                ),
            ));
        }
        let ring = self.size("capture.ring_size", &raw.ring_size)?;
        if !ring.is_power_of_two() || !(4096..=1 << 30).contains(&ring) {
            return Err(self.invalid(
                "capture.ring_size",
                format!(
                    "{:?}: must be a power of two from 4KiB to 1GiB",
                    raw.ring_size
                ),
            ));
        }
        if !(1..=16).contains(&raw.max_records_per_write) {
            return Err(self.invalid(
                "capture.max_records_per_write",
                format!("{}: must be from 1 to 16", raw.max_records_per_write),
            ));
        }
        let pin_dir = std::path::PathBuf::from(&raw.pin_dir);
        if !pin_dir.is_absolute()
            || pin_dir.parent().is_none()
            || pin_dir
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(self.invalid(
                "capture.pin_dir",
                format!(
                    "{:?}: must be an absolute directory below a bpffs mount (e.g. /sys/fs/bpf/logtap), without `..`",
                    raw.pin_dir
                ),
            ));
        }
        Ok(Some(CaptureConfig {
            source,
            source_name: sources[source].name.clone(),
            cgroup_prefix: raw.cgroup_prefix.clone(),
            ring_bytes: ring as u32,
            max_records_per_write: raw.max_records_per_write,
            hooks: raw.hooks,
            reorder_grace: self.duration("capture.reorder_grace", &raw.reorder_grace)?,
            repair_wait: self.interval("capture.repair_wait", &raw.repair_wait)?,
            claim_wait: self.duration("capture.claim_wait", &raw.claim_wait)?,
            max_pending: self.size("capture.max_pending", &raw.max_pending)? as usize,
            pin_dir: raw.pin.then(|| pin_dir.clone()),
            configured_pin_dir: pin_dir,
            pin_wait: self.duration("capture.pin_wait", &raw.pin_wait)?,
            max_buffered: self.size("capture.max_buffered", &raw.max_buffered)? as usize,
        }))
    }

    /// `10%` of the file system, or a size (`1GiB`); `0` turns it off.
    pub(crate) fn min_free(&self, field: &str, text: &str) -> Result<MinFree, ConfigError> {
        if let Some(p) = text.trim().strip_suffix('%') {
            return match p.trim().parse::<f64>() {
                Ok(p) if (0.0..=90.0).contains(&p) => Ok(if p == 0.0 {
                    MinFree::Off
                } else {
                    MinFree::Percent(p)
                }),
                _ => Err(self.invalid(
                    field,
                    format!("{text:?}: expected a percentage from 0% to 90%"),
                )),
            };
        }
        Ok(match self.size(field, text)? {
            0 => MinFree::Off,
            b => MinFree::Bytes(b),
        })
    }

    pub(crate) fn size(&self, field: &str, text: &str) -> Result<u64, ConfigError> {
        parse_size(text).map_err(|e| self.invalid(field, e))
    }

    pub(crate) fn regex(&self, field: &str, pattern: &str) -> Result<Regex, ConfigError> {
        Regex::new(pattern).map_err(|e| self.invalid(field, e.to_string()))
    }

    /// Globs compile; include globs are absolute (at least one is required).
    pub(crate) fn include_exclude(
        &self,
        prefix: &str,
        include: &[String],
        exclude: &[String],
    ) -> Result<(), ConfigError> {
        if include.is_empty() {
            return Err(self.invalid(
                &format!("{prefix}.include"),
                "at least one glob is required".into(),
            ));
        }
        for (j, g) in include.iter().enumerate() {
            let field = format!("{prefix}.include[{j}]");
            self.absolute_glob(&field, g)?;
        }
        for (j, g) in exclude.iter().enumerate() {
            globset::Glob::new(g)
                .map_err(|e| self.invalid(&format!("{prefix}.exclude[{j}]"), e.to_string()))?;
        }
        Ok(())
    }

    /// librdkafka's `message.timeout.ms` is an `i32` of milliseconds: a longer one
    /// would fail only when the sink starts.
    fn kafka_message_timeout(&self, field: &str, text: &str) -> Result<Duration, ConfigError> {
        let d = self.duration(field, text)?;
        if d.as_millis() > i32::MAX as u128 {
            return Err(self.invalid(
                field,
                format!("{text:?}: at most 24d 20h 31m 23s (librdkafka's bound)"),
            ));
        }
        Ok(d)
    }

    /// `follow_symlinks` and `allowed_roots` go together, for host files only; the
    /// roots are absolute, without `..`. Returns the roots links may lead into.
    pub(crate) fn symlinks(
        &self,
        prefix: &str,
        s: &raw::RawSource,
        container_files: bool,
    ) -> Result<Vec<std::path::PathBuf>, ConfigError> {
        let field = format!("{prefix}.allowed_roots");
        match (s.follow_symlinks, s.allowed_roots.is_empty()) {
            (false, true) => return Ok(Vec::new()),
            (false, false) => {
                return Err(self.invalid(&field, "needs follow_symlinks: true".into()));
            }
            (true, true) => {
                return Err(self.invalid(
                    &field,
                    "follow_symlinks needs the directories links may lead into".into(),
                ));
            }
            (true, false) if container_files => {
                return Err(self.invalid(
                    &format!("{prefix}.follow_symlinks"),
                    "links inside a container always resolve inside it; only host files follow symlinks".into(),
                ));
            }
            (true, false) => {}
        }
        let mut roots = Vec::new();
        for (j, r) in s.allowed_roots.iter().enumerate() {
            if !r.starts_with('/') || r.split('/').any(|c| c == "..") {
                return Err(self.invalid(
                    &format!("{field}[{j}]"),
                    format!("{r:?}: an absolute directory without `..`"),
                ));
            }
            roots.push(std::path::PathBuf::from(r));
        }
        Ok(roots)
    }

    /// `container_paths`: absolute globs inside the container, no `..` (a glob must
    /// not climb out of the container's root), and not combined with `include`.
    pub(crate) fn container_paths(
        &self,
        prefix: &str,
        paths: &[String],
        include: &[String],
        exclude: &[String],
    ) -> Result<(), ConfigError> {
        if !include.is_empty() {
            return Err(self.invalid(
                &format!("{prefix}.include"),
                "a source reads either host files (include) or container files (container_paths)"
                    .into(),
            ));
        }
        for (j, g) in paths.iter().enumerate() {
            self.container_glob(&format!("{prefix}.container_paths[{j}]"), g)?;
        }
        for (j, g) in exclude.iter().enumerate() {
            globset::Glob::new(g)
                .map_err(|e| self.invalid(&format!("{prefix}.exclude[{j}]"), e.to_string()))?;
        }
        Ok(())
    }

    /// An absolute glob of files inside a container, without `..` components.
    pub(crate) fn container_glob(&self, field: &str, glob: &str) -> Result<(), ConfigError> {
        self.absolute_glob(field, glob)?;
        if glob.split('/').any(|c| c == "..") {
            return Err(self.invalid(
                field,
                format!("{glob:?}: `..` is not allowed in a path inside a container"),
            ));
        }
        Ok(())
    }

    pub(crate) fn absolute_glob(&self, field: &str, glob: &str) -> Result<(), ConfigError> {
        globset::Glob::new(glob).map_err(|e| self.invalid(field, e.to_string()))?;
        if !glob.starts_with('/') {
            return Err(self.invalid(
                field,
                format!("{glob:?}: include globs must be absolute paths"),
            ));
        }
        Ok(())
    }

    pub(crate) fn max_line_size(&self, prefix: &str, text: &str) -> Result<usize, ConfigError> {
        let field = format!("{prefix}.max_line_size");
        let bytes = self.size(&field, text)?;
        if !(64..=1 << 30).contains(&bytes) {
            return Err(self.invalid(&field, "must be between 64B and 1GiB".into()));
        }
        Ok(bytes as usize)
    }

    pub(crate) fn multiline(
        &self,
        prefix: &str,
        m: Option<&schema::RawMultiline>,
    ) -> Result<Option<MultilineConfig>, ConfigError> {
        let Some(m) = m else { return Ok(None) };
        let field = |f: &str| format!("{prefix}.multiline.{f}");
        let start = self.regex(&field("start"), &m.start)?;
        let flush_timeout = self.duration(&field("flush_timeout"), &m.flush_timeout)?;
        if m.max_lines == 0 {
            return Err(self.invalid(&field("max_lines"), "must be at least 1".into()));
        }
        Ok(Some(MultilineConfig {
            start: start.into(),
            flush_timeout,
            max_lines: m.max_lines,
        }))
    }

    pub(crate) fn parser(
        &self,
        prefix: &str,
        p: Option<&schema::RawParser>,
    ) -> Result<ParserConfig, ConfigError> {
        let field = |f: &str| format!("{prefix}.parser.{f}");
        Ok(match p {
            None => ParserConfig::None,
            Some(schema::RawParser::Json {}) => ParserConfig::Json,
            Some(schema::RawParser::Nginx {}) => ParserConfig::Nginx,
            Some(schema::RawParser::Apache {}) => ParserConfig::Apache,
            Some(schema::RawParser::Regex { pattern }) => {
                let re = self.regex(&field("pattern"), pattern)?;
                if re.capture_names().flatten().next().is_none() {
                    return Err(self.invalid(
                        &field("pattern"),
                        "needs at least one named capture `(?P<name>...)`".into(),
                    ));
                }
                ParserConfig::Regex(re)
            }
            Some(schema::RawParser::Delimiter {
                delimiter,
                quote,
                columns,
            }) => {
                let single_byte = |f: &str, s: &str| -> Result<u8, ConfigError> {
                    match s.as_bytes() {
                        [b] => Ok(*b),
                        _ => {
                            Err(self.invalid(&field(f), format!("{s:?} must be exactly one byte")))
                        }
                    }
                };
                if columns.is_empty() {
                    return Err(self.invalid(
                        &field("columns"),
                        "at least one column name is required".into(),
                    ));
                }
                ParserConfig::Delimiter {
                    delimiter: single_byte("delimiter", delimiter)?,
                    quote: match quote {
                        Some(q) => Some(single_byte("quote", q)?),
                        None => None,
                    },
                    columns: columns.iter().map(|c| Arc::from(c.as_str())).collect(),
                }
            }
        })
    }

    fn self_monitoring(
        &self,
        raw: &raw::RawSelfMonitoring,
        sinks: &BTreeMap<Arc<str>, SinkConfig>,
    ) -> Result<Option<SelfMonitoringConfig>, ConfigError> {
        if !raw.enabled {
            return Ok(None);
        }
        let sink: Arc<str> = Arc::from(raw.sink.as_str());
        if !sinks.contains_key(&sink) {
            return Err(self.invalid(
                "self_monitoring.sink",
                format!("no sink named {:?}", raw.sink),
            ));
        }
        let level = match raw.level.as_str() {
            "error" => tracing::Level::ERROR,
            "warn" => tracing::Level::WARN,
            "info" => tracing::Level::INFO,
            other => {
                return Err(self.invalid(
                    "self_monitoring.level",
                    format!("{other:?}: expected error, warn or info"),
                ));
            }
        };
        let interval = self.interval("self_monitoring.interval", &raw.interval)?;
        Ok(Some(SelfMonitoringConfig {
            sink,
            level,
            interval,
        }))
    }

    /// A source's `processors`: regexes compile, filters test exactly one way, names
    /// are not empty.
    pub(crate) fn processors(
        &self,
        prefix: &str,
        raw: &[schema::RawProcessor],
    ) -> Result<Vec<ProcessorConfig>, ConfigError> {
        use schema::RawProcessor as P;
        if raw.len() > MAX_PROCESSORS {
            return Err(self.invalid(
                &format!("{prefix}.processors"),
                format!("at most {MAX_PROCESSORS} steps"),
            ));
        }
        let mut steps = Vec::with_capacity(raw.len());
        for (i, p) in raw.iter().enumerate() {
            let field = |f: &str| format!("{prefix}.processors[{i}].{f}");
            let name = |f: &str, n: &str| -> Result<Arc<str>, ConfigError> {
                match n.is_empty() {
                    true => Err(self.invalid(&field(f), "must not be empty".into())),
                    false => Ok(Arc::from(n)),
                }
            };
            let target = |f: &Option<String>| f.as_deref().map(|n| name("field", n)).transpose();
            let bytes_regex = |f: &str, pattern: &str| self.regex(&field(f), pattern);
            let names = |f: &str, map: &BTreeMap<String, String>| {
                if map.is_empty() {
                    return Err(self.invalid(&field(f), "at least one field is required".into()));
                }
                map.iter()
                    .map(|(k, v)| Ok((name(f, k)?, Arc::from(v.as_str()))))
                    .collect::<Result<Vec<_>, ConfigError>>()
            };
            steps.push(match p {
                P::Keep {
                    field: f,
                    regex,
                    equals,
                }
                | P::Drop {
                    field: f,
                    regex,
                    equals,
                } => {
                    let test = match (regex, equals) {
                        (Some(r), None) => ValueTest::Regex(bytes_regex("regex", r)?),
                        (None, Some(e)) => ValueTest::Equals(bytes::Bytes::from(e.clone())),
                        _ => {
                            return Err(self.invalid(
                                &field("regex"),
                                "set exactly one of `regex` and `equals`".into(),
                            ));
                        }
                    };
                    ProcessorConfig::Filter {
                        keep: matches!(p, P::Keep { .. }),
                        field: target(f)?,
                        test,
                    }
                }
                P::Mask {
                    field: f,
                    regex,
                    replacement,
                } => ProcessorConfig::Mask {
                    field: target(f)?,
                    regex: bytes_regex("regex", regex)?,
                    replacement: Arc::from(replacement.as_deref().unwrap_or("****")),
                },
                P::AddFields { fields } => ProcessorConfig::AddFields(names("fields", fields)?),
                P::RenameFields { fields } => {
                    let pairs = names("fields", fields)?;
                    if let Some((_, to)) = pairs.iter().find(|(_, to)| to.is_empty()) {
                        return Err(self.invalid(
                            &field("fields"),
                            format!("new name {to:?} must not be empty"),
                        ));
                    }
                    ProcessorConfig::RenameFields(pairs)
                }
                P::RemoveFields { names: list } => {
                    if list.is_empty() {
                        return Err(
                            self.invalid(&field("names"), "at least one name is required".into())
                        );
                    }
                    ProcessorConfig::RemoveFields(
                        list.iter()
                            .map(|n| name("names", n))
                            .collect::<Result<_, _>>()?,
                    )
                }
                P::Extract { field: f, regex } => {
                    let re = bytes_regex("regex", regex)?;
                    if re.capture_names().flatten().next().is_none() {
                        return Err(self.invalid(
                            &field("regex"),
                            "needs at least one named capture `(?P<name>...)`".into(),
                        ));
                    }
                    ProcessorConfig::Extract {
                        field: target(f)?,
                        regex: re,
                    }
                }
            });
        }
        Ok(steps)
    }

    pub(crate) fn kubernetes(
        &self,
        k: &raw::RawKubernetes,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<KubernetesConfig, ConfigError> {
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        if let Some(url) = &k.api_url {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                return Err(self.invalid(
                    "kubernetes.api_url",
                    format!("{url:?}: expected http(s)://HOST[:PORT]"),
                ));
            }
        }
        let in_cluster = non_empty(env("KUBERNETES_SERVICE_HOST")).is_some();
        let enabled = k.enabled.unwrap_or(in_cluster || k.api_url.is_some());
        let node_name = match &k.node_name {
            Some(name) if name.trim().is_empty() => {
                return Err(self.invalid("kubernetes.node_name", "must not be empty".into()));
            }
            Some(name) => name.clone(),
            None => non_empty(env("NODE_NAME"))
                .or_else(hostname)
                .unwrap_or_default(),
        };
        if enabled && node_name.is_empty() {
            return Err(self.invalid(
                "kubernetes.node_name",
                "not set, and neither NODE_NAME nor the hostname names this node".into(),
            ));
        }
        let metadata_wait = self.duration("kubernetes.metadata_wait", &k.metadata_wait)?;
        if metadata_wait > MAX_METADATA_WAIT {
            return Err(self.invalid(
                "kubernetes.metadata_wait",
                format!(
                    "{:?}: at most {}",
                    k.metadata_wait,
                    humantime::format_duration(MAX_METADATA_WAIT)
                ),
            ));
        }
        for (i, key) in k.annotations.iter().enumerate() {
            if key.is_empty() {
                return Err(self.invalid(
                    &format!("kubernetes.annotations[{i}]"),
                    "must not be empty".into(),
                ));
            }
        }
        Ok(KubernetesConfig {
            enabled,
            api_url: k.api_url.clone(),
            node_name,
            metadata_wait,
            annotations: k.annotations.clone(),
        })
    }

    pub(crate) fn cri(&self, c: &raw::RawCri) -> Result<CriConfig, ConfigError> {
        crate::discovery::cri::socket_path(&c.endpoint)
            .map_err(|e| self.invalid("cri.endpoint", e.to_string()))?;
        let timeout = self.interval("cri.timeout", &c.timeout)?;
        Ok(CriConfig {
            enabled: c.enabled,
            endpoint: c.endpoint.clone(),
            timeout,
            rescan_interval: self.interval("cri.rescan_interval", &c.rescan_interval)?,
        })
    }

    /// The `env_configs` section: every sink it names exists.
    fn env_configs(
        &self,
        e: &raw::RawEnvConfigs,
        sources: &[SourceConfig],
        sinks: &BTreeMap<Arc<str>, SinkConfig>,
    ) -> Result<EnvConfigsConfig, ConfigError> {
        let known = |field: &str, name: &str| -> Result<Arc<str>, ConfigError> {
            sinks
                .get_key_value(name)
                .map(|(k, _)| k.clone())
                .ok_or_else(|| self.invalid(field, format!("no sink named {name:?}")))
        };
        let default_sink = match &e.default_sink {
            Some(name) => Some(known("env_configs.default_sink", name)?),
            None => sources.first().map(|s| s.sink.clone()).or_else(|| {
                let mut only = sinks.keys();
                only.next().filter(|_| only.next().is_none()).cloned()
            }),
        };
        let mut allowed_sinks: Vec<Arc<str>> = default_sink.iter().cloned().collect();
        for (i, name) in e.sinks.iter().enumerate() {
            let sink = known(&format!("env_configs.sinks[{i}]"), name)?;
            if !allowed_sinks.contains(&sink) {
                allowed_sinks.push(sink);
            }
        }
        Ok(EnvConfigsConfig {
            enabled: e.enabled,
            default_sink,
            allowed_sinks,
        })
    }

    pub(crate) fn collections(
        &self,
        c: &raw::RawCollections,
        kubernetes: &KubernetesConfig,
    ) -> Result<CollectionsConfig, ConfigError> {
        if !c.pod_logs.starts_with('/') {
            return Err(self.invalid(
                "collections.pod_logs",
                format!("{:?}: must be an absolute path", c.pod_logs),
            ));
        }
        let enabled = c.enabled.unwrap_or(kubernetes.enabled);
        if enabled && !kubernetes.enabled {
            return Err(self.invalid(
                "collections.enabled",
                "LogCollection objects come from the API: enable the kubernetes section".into(),
            ));
        }
        Ok(CollectionsConfig {
            enabled,
            pod_logs: PathBuf::from(c.pod_logs.trim_end_matches('/')),
            facts_wait: self.duration("collections.facts_wait", &c.facts_wait)?,
            admin_namespace: c.admin_namespace.clone(),
        })
    }

    /// A store's or spool's `compression`: `lz4` or `none`.
    fn block_compression(
        &self,
        field: &str,
        value: &str,
    ) -> Result<network::BlockCompression, ConfigError> {
        match value {
            "lz4" => Ok(network::BlockCompression::Lz4),
            "none" => Ok(network::BlockCompression::None),
            other => Err(self.invalid(field, format!("{other:?}: expected lz4 or none"))),
        }
    }

    /// `data_dir` places a store that names no path.
    pub(crate) fn sink(
        &self,
        prefix: &str,
        s: &schema::RawSink,
        data_dir: &Path,
    ) -> Result<SinkConfig, ConfigError> {
        let field = |f: &str| format!("{prefix}.{f}");
        Ok(match s {
            schema::RawSink::Store {
                path,
                segment_size,
                max_size,
                max_age,
                min_free,
                compression,
            } => SinkConfig::Store {
                min_free: self.min_free(&field("min_free"), min_free)?,
                compression: self.block_compression(
                    &field("compression"),
                    compression.as_deref().unwrap_or("lz4"),
                )?,
                path: path
                    .as_ref()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| data_dir.join("store")),
                segment_bytes: self.size(&field("segment_size"), segment_size)?,
                max_bytes: self.size(&field("max_size"), max_size)?,
                max_age: match max_age {
                    Some(a) => Some(self.duration(&field("max_age"), a)?),
                    None => None,
                },
            },
            schema::RawSink::File { path } => SinkConfig::File {
                path: PathBuf::from(path),
            },
            schema::RawSink::Stdout {} => SinkConfig::Stdout,
            schema::RawSink::Blackhole {} => SinkConfig::Null,
            schema::RawSink::Kafka(k) => {
                SinkConfig::Kafka(Box::new(self.kafka(prefix, k, data_dir)?))
            }
            schema::RawSink::Otlp(o) => SinkConfig::Otlp(Box::new(self.otlp(prefix, o, data_dir)?)),
        })
    }

    fn forward(
        &self,
        prefix: &str,
        raw: ForwardFields<'_>,
        data_dir: &Path,
    ) -> Result<network::ForwardConfig, ConfigError> {
        use network::WhenFull;
        let field = |f: &str| format!("{prefix}.{f}");
        // `sinks.<name>` → the spool directory `<data_dir>/spool/<name>`.
        let name = prefix.rsplit_once("sinks.").map_or(prefix, |(_, n)| n);
        let name = if name == "spec.sink" {
            "collection"
        } else {
            name
        };
        let max_bytes = self.size(&field("spool.max_size"), &raw.spool.max_size)?;
        // A spool is deleted a segment at a time: four segments keep the bound tight.
        let segment_bytes = (max_bytes / 4).clamp(64 * 1024, 64 * 1024 * 1024);
        if max_bytes < 4 * 64 * 1024 {
            return Err(self.invalid(
                &field("spool.max_size"),
                format!("{}: at least 256KiB", raw.spool.max_size),
            ));
        }
        let when_full = match raw.spool.when_full.as_str() {
            "block" => WhenFull::Block,
            "drop_oldest" => WhenFull::DropOldest,
            other => {
                return Err(self.invalid(
                    &field("spool.when_full"),
                    format!("{other:?}: expected block or drop_oldest"),
                ));
            }
        };
        let compression =
            self.block_compression(&field("spool.compression"), &raw.spool.compression)?;
        let max_window_bytes = match raw.max_request_size {
            Some(t) => self.size(&field("max_request_size"), t)?,
            None => 4 * 1024 * 1024,
        };
        Ok(network::ForwardConfig {
            spool: network::SpoolConfig {
                path: raw
                    .spool
                    .path
                    .as_ref()
                    .map_or_else(|| data_dir.join("spool").join(name), PathBuf::from),
                max_bytes,
                segment_bytes,
                when_full,
                compression,
            },
            dead_letter: raw.dead_letter.map(PathBuf::from),
            max_window_bytes: max_window_bytes.max(1),
            max_window_packages: 256,
            drain_timeout: match raw.drain_timeout {
                Some(t) => self.duration(&field("drain_timeout"), t)?,
                None => Duration::from_secs(5),
            },
        })
    }

    fn kafka(
        &self,
        prefix: &str,
        k: &schema::RawKafka,
        data_dir: &Path,
    ) -> Result<network::KafkaConfig, ConfigError> {
        use network::{KafkaCompression, KafkaSasl, KafkaTls, KafkaValue, MessagePer};
        let field = |f: &str| format!("{prefix}.{f}");
        if k.brokers.is_empty() {
            return Err(self.invalid(&field("brokers"), "at least one host:port".into()));
        }
        for (i, b) in k.brokers.iter().enumerate() {
            if b.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(self.invalid(
                    &format!("{prefix}.brokers[{i}]"),
                    format!("{b:?}: expected host:port"),
                ));
            }
        }
        let topic = parse_template(&k.topic).map_err(|e| self.invalid(&field("topic"), e))?;
        let compression = match k.compression.as_deref().unwrap_or("lz4") {
            "none" => KafkaCompression::None,
            "lz4" => KafkaCompression::Lz4,
            "zstd" => KafkaCompression::Zstd,
            "gzip" => KafkaCompression::Gzip,
            "snappy" => KafkaCompression::Snappy,
            other => {
                return Err(self.invalid(
                    &field("compression"),
                    format!("{other:?}: expected none, lz4, zstd, gzip or snappy"),
                ));
            }
        };
        let acks = match k.acks.as_str() {
            "all" | "-1" => "all".to_string(),
            "1" => "1".to_string(),
            other => {
                return Err(self.invalid(
                    &field("acks"),
                    format!(
                        "{other:?}: expected all or 1 (0 would leave no acknowledgement to advance the spool on)"
                    ),
                ));
            }
        };
        if k.idempotent && acks != "all" {
            return Err(self.invalid(
                &field("acks"),
                "the idempotent producer needs acks: all (or set idempotent: false)".into(),
            ));
        }
        let message_per = match k.message_per.as_deref().unwrap_or("record") {
            "record" => MessagePer::Record,
            "package" => MessagePer::Package,
            other => {
                return Err(self.invalid(
                    &field("message_per"),
                    format!("{other:?}: expected record or package"),
                ));
            }
        };
        let value = match k.value.as_deref().unwrap_or("lines") {
            "lines" => KafkaValue::Lines,
            "package" if message_per == MessagePer::Package => KafkaValue::Package,
            "package" => {
                return Err(self.invalid(
                    &field("value"),
                    "package needs message_per: package (a message per record is that record's JSON)"
                        .into(),
                ));
            }
            other => {
                return Err(self.invalid(
                    &field("value"),
                    format!("{other:?}: expected lines or package"),
                ));
            }
        };
        let sasl = match &k.sasl {
            Some(s) => {
                if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&s.mechanism.as_str()) {
                    return Err(self.invalid(
                        &field("sasl.mechanism"),
                        format!(
                            "{:?}: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                            s.mechanism
                        ),
                    ));
                }
                Some(KafkaSasl {
                    mechanism: s.mechanism.clone(),
                    username: s.username.clone(),
                    password_file: PathBuf::from(&s.password_file),
                })
            }
            None => None,
        };
        Ok(network::KafkaConfig {
            brokers: k.brokers.clone(),
            topic,
            key: k.key.clone(),
            compression,
            acks,
            idempotent: k.idempotent,
            tls: k.tls.as_ref().map(|t| KafkaTls {
                ca_file: t.ca_file.as_ref().map(PathBuf::from),
                cert_file: t.cert_file.as_ref().map(PathBuf::from),
                key_file: t.key_file.as_ref().map(PathBuf::from),
            }),
            sasl,
            properties: k.properties.clone(),
            message_timeout: self
                .kafka_message_timeout(&field("message_timeout"), &k.message_timeout)?,
            message_per,
            value,
            forward: self.forward(
                prefix,
                ForwardFields {
                    spool: &k.spool,
                    dead_letter: k.dead_letter.as_deref(),
                    max_request_size: k.max_request_size.as_deref(),
                    drain_timeout: k.drain_timeout.as_deref(),
                },
                data_dir,
            )?,
        })
    }

    fn otlp(
        &self,
        prefix: &str,
        o: &schema::RawOtlp,
        data_dir: &Path,
    ) -> Result<network::OtlpConfig, ConfigError> {
        use network::OtlpCompression;
        let field = |f: &str| format!("{prefix}.{f}");
        // The destination derives its URL the same way: what passes here is what it
        // will post to.
        network::logs_url(&o.endpoint).map_err(|e| self.invalid(&field("endpoint"), e))?;
        let endpoint = o.endpoint.trim_end_matches('/');
        let compression = match o.compression.as_deref().unwrap_or("gzip") {
            "none" => OtlpCompression::None,
            "gzip" => OtlpCompression::Gzip,
            other => {
                return Err(self.invalid(
                    &field("compression"),
                    format!("{other:?}: expected none or gzip"),
                ));
            }
        };
        Ok(network::OtlpConfig {
            endpoint: endpoint.to_string(),
            compression,
            headers: o.headers.clone(),
            timeout: self.duration(&field("timeout"), &o.timeout)?,
            forward: self.forward(
                prefix,
                ForwardFields {
                    spool: &o.spool,
                    dead_letter: o.dead_letter.as_deref(),
                    max_request_size: o.max_request_size.as_deref(),
                    drain_timeout: o.drain_timeout.as_deref(),
                },
                data_dir,
            )?,
        })
    }
}

/// The fields `type: kafka` and `type: otlp` share.
struct ForwardFields<'a> {
    spool: &'a schema::RawSpool,
    dead_letter: Option<&'a str>,
    max_request_size: Option<&'a str>,
    drain_timeout: Option<&'a str>,
}

impl Selector {
    /// Compiles the regexes; errors name the field (`spec.selector.pod_name`).
    pub fn compile(&self) -> Result<CompiledSelector, ConfigError> {
        self.compile_at(&Validator::new("LogCollection"), "spec.selector")
    }

    /// Compiles with errors naming fields below `p` (`sources[0].selector` in the
    /// config file, `spec.selector` in a `LogCollection`).
    pub(crate) fn compile_at(
        &self,
        v: &Validator,
        p: &str,
    ) -> Result<CompiledSelector, ConfigError> {
        let list = |name: &str, values: &[String]| -> Result<Vec<ValueMatcher>, ConfigError> {
            values
                .iter()
                .enumerate()
                .map(|(i, t)| value_matcher(v, &format!("{p}.{name}[{i}]"), t))
                .collect()
        };
        let map = |name: &str,
                   entries: &BTreeMap<String, String>|
         -> Result<Vec<(String, ValueMatcher)>, ConfigError> {
            entries
                .iter()
                .map(|(k, t)| {
                    if k.is_empty() {
                        return Err(v.invalid(&format!("{p}.{name}"), "empty key".into()));
                    }
                    if k.trim_end_matches('*').contains('*') || k.ends_with("**") {
                        return Err(v.invalid(
                            &format!("{p}.{name}.{k}"),
                            "`*` may only end a key (a prefix: `logtap_logs_*`)".into(),
                        ));
                    }
                    Ok((k.clone(), value_matcher(v, &format!("{p}.{name}.{k}"), t)?))
                })
                .collect()
        };
        let regex = |name: &str, r: &Option<String>| -> Result<Option<regex::Regex>, ConfigError> {
            r.as_deref()
                .map(|r| {
                    regex::Regex::new(r)
                        .map_err(|e| v.invalid(&format!("{p}.{name}"), e.to_string()))
                })
                .transpose()
        };
        Ok(CompiledSelector {
            namespaces_include: list("namespaces.include", &self.namespaces.include)?,
            namespaces_exclude: list("namespaces.exclude", &self.namespaces.exclude)?,
            pod_name: regex("pod_name", &self.pod_name)?,
            container_name: regex("container_name", &self.container_name)?,
            include_labels: map("include_labels", &self.include_labels)?,
            exclude_labels: map("exclude_labels", &self.exclude_labels)?,
            include_env: map("include_env", &self.include_env)?,
            exclude_env: map("exclude_env", &self.exclude_env)?,
        })
    }
}

/// A selector value (see [`Selector`]) checked and compiled.
fn value_matcher(v: &Validator, field: &str, text: &str) -> Result<ValueMatcher, ConfigError> {
    Ok(if text.is_empty() {
        ValueMatcher::Any
    } else if text.len() >= 2 && text.starts_with('^') && text.ends_with('$') {
        ValueMatcher::Regex(regex::Regex::new(text).map_err(|e| v.invalid(field, e.to_string()))?)
    } else {
        ValueMatcher::Exact(text.to_string())
    })
}

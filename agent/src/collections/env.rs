//! Collections declared by containers' environment, as Logtail's `aliyun_logs_*`:
//! a container started with `logtap_logs_<name>=stdout` (or `=/var/log/app/*.log`,
//! files inside it), plus optional `logtap_logs_<name>_format`, `_tags` and `_sink`,
//! is collected with no config file edit and no `LogCollection`.
//!
//! - [`declarations`] reads one container's environment into [`Declaration`]s and
//!   [`EnvError`]s (pure: the unit tests' subject).
//! - A declaration becomes a source config ([`Declaration::source`]) of the same form
//!   a `LogCollection` source becomes in `merge`: a `selector` and either the CRI log
//!   glob (`stdout`) or `container_paths` (a file glob). Its selector matches the
//!   declaring variables *exactly* (`include_env` with each value, `exclude_env` with
//!   each option the declaration does not set), so every container declaring the
//!   same collection the same way is read by one source, and no other container is.
//!   Routing, fan-out, checkpoints and rebuilds are the file source's and pipeline's,
//!   unchanged.
//! - [`EnvConfigs`] keeps the set of distinct declarations of the containers the
//!   container registry knows. [`EnvConfigs::generation`] moves when that set
//!   changes (not when one more replica declares what others already do): the
//!   supervisor then rebuilds as for a changed `LogCollection`.
//!
//! # Hostile values
//!
//! The environment is the container's: its values are checked as a tenant's
//! `LogCollection` would be and more narrowly. A file glob is absolute, has no `..`,
//! and is only ever opened below the container's own root (`openat2(RESOLVE_IN_ROOT)`,
//! see `source::file::container`); a sink must be one the file config allows
//! (`env_configs.sinks`, the default sink always); tag keys are short identifiers
//! stored under `tag.` so they cannot pose as a container field. An invalid variable
//! is logged (naming the container and the variable) and counted in
//! `logtap_env_config_errors_total{reason}` once per container and value, and only
//! that collection of that container is skipped.
//!
//! # Invariants
//!
//! The source name of a declaration is `env/<name>/<12 hex digits>`, a fixed hash of
//! its variables: the same declaration has the same name in every generation and
//! after a restart, so its branch ids and checkpoints stay put.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::config::{
    Config, ConfigError, EnvConfigsConfig, Format, ParserConfig, SourceConfig, Validator,
};
use crate::discovery::{ContainerInfo, ContainerRegistry};
use crate::metrics::catalogue::{ENV_CONFIG_ERRORS_TOTAL, ENV_CONFIGS};
use crate::select::{CompiledSelector, ValueMatcher};

/// Every declaring variable starts with this.
pub const PREFIX: &str = "logtap_logs_";
/// The options a collection may set, as `logtap_logs_<name>_<option>`.
const OPTIONS: [&str; 3] = ["format", "tags", "sink"];
/// Bounds on what one container may declare (the values are the container's).
const MAX_COLLECTIONS: usize = 16;
const MAX_NAME: usize = 63;
const MAX_PATH: usize = 1024;
const MAX_TAGS: usize = 16;
const MAX_TAG_KEY: usize = 63;
const MAX_TAG_VALUE: usize = 255;

/// What a declaration reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EnvInput {
    /// The container's stdout and stderr (its CRI log).
    Stdout,
    /// Files inside the container matching this absolute glob.
    Files(String),
}

/// `logtap_logs_<name>_format`: how records are framed and parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EnvFormat {
    /// Lines kept as they are (the default).
    Raw,
    Json,
    Nginx,
    Apache,
    /// A file written in the CRI log format (files only).
    Cri,
    /// A file written in docker's json-file format (files only).
    Docker,
}

impl EnvFormat {
    const NAMES: &str = "raw, json, nginx, apache, cri (files), docker (files)";

    fn parse(text: &str) -> Option<EnvFormat> {
        Some(match text {
            "raw" => EnvFormat::Raw,
            "json" => EnvFormat::Json,
            "nginx" => EnvFormat::Nginx,
            "apache" => EnvFormat::Apache,
            "cri" => EnvFormat::Cri,
            "docker" => EnvFormat::Docker,
            _ => return None,
        })
    }

    fn parser(self) -> ParserConfig {
        match self {
            EnvFormat::Json => ParserConfig::Json,
            EnvFormat::Nginx => ParserConfig::Nginx,
            EnvFormat::Apache => ParserConfig::Apache,
            EnvFormat::Raw | EnvFormat::Cri | EnvFormat::Docker => ParserConfig::None,
        }
    }
}

/// One collection one container declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declaration {
    pub name: String,
    pub input: EnvInput,
    pub format: EnvFormat,
    /// In the order written.
    pub tags: Vec<(String, String)>,
    /// The sink named by `_sink`, else the default sink.
    pub sink: Arc<str>,
    /// The declaring variables as written (name → value): what its selector matches.
    pub vars: BTreeMap<String, String>,
}

/// One variable that does not declare what it means to, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvError {
    pub variable: String,
    /// A bounded metric label value.
    pub reason: &'static str,
    pub message: String,
}

impl Declaration {
    /// `env/<name>/<hash of the variables>` (see the module's invariants).
    pub fn source_name(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (k, v) in &self.vars {
            for b in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("env/{}/{:012x}", self.name, h >> 16)
    }

    /// The selector of exactly the containers declaring this collection this way.
    fn selector(&self) -> CompiledSelector {
        let base = format!("{PREFIX}{}", self.name);
        CompiledSelector {
            include_env: self
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), ValueMatcher::Exact(v.clone())))
                .collect(),
            exclude_env: OPTIONS
                .iter()
                .map(|o| format!("{base}_{o}"))
                .filter(|k| !self.vars.contains_key(k))
                .map(|k| (k, ValueMatcher::Any))
                .collect(),
            ..CompiledSelector::default()
        }
    }

    /// The source config this declaration becomes: what a `LogCollection` source of
    /// the same input becomes in `merge`, with the collection's name and tags as
    /// fields of every record.
    pub fn source(&self, config: &Config) -> SourceConfig {
        let mut source = SourceConfig {
            parser: self.format.parser(),
            selector: Some(Arc::new(self.selector())),
            ..SourceConfig::new(&self.source_name(), Vec::new(), &self.sink)
        };
        match &self.input {
            EnvInput::Stdout => {
                // `cri` and `docker` were rejected for stdout: the runtime frames it.
                source.include = vec![config.collections.pod_log_glob()];
                source.format = Format::Cri;
            }
            EnvInput::Files(glob) => {
                source.container_paths = vec![glob.clone()];
                source.format = match self.format {
                    EnvFormat::Cri => Format::Cri,
                    EnvFormat::Docker => Format::Docker,
                    _ => Format::Raw,
                };
            }
        }
        let field = |k: String, v: &str| (Bytes::from(k), Bytes::copy_from_slice(v.as_bytes()));
        source
            .fields
            .push(field("logtap.collection".into(), &self.name));
        for (k, v) in &self.tags {
            source.fields.push(field(format!("tag.{k}"), v));
        }
        source
    }
}

/// The collections `env` declares, and the variables that are wrong; `settings` say
/// which sinks a declaration may name and where one naming none goes.
pub fn declarations(
    env: &BTreeMap<String, String>,
    settings: &EnvConfigsConfig,
) -> (Vec<Declaration>, Vec<EnvError>) {
    let mut errors = Vec::new();
    let error = |variable: &str, reason: &'static str, message: String| EnvError {
        variable: variable.to_owned(),
        reason,
        message,
    };
    // name → (base value, options): options grouped before anything is decided.
    let mut named: BTreeMap<&str, (Option<&str>, BTreeMap<&str, &str>)> = BTreeMap::new();
    for (key, value) in env.range(PREFIX.to_owned()..) {
        let Some(rest) = key.strip_prefix(PREFIX) else {
            break;
        };
        let (name, option) = match rest.split_once('_') {
            Some((name, option)) => (name, Some(option)),
            None => (rest, None),
        };
        if !valid_name(name) {
            errors.push(error(
                key,
                "invalid_name",
                format!(
                    "collection name {name:?}: 1 to {MAX_NAME} lowercase letters, digits and `-`"
                ),
            ));
            continue;
        }
        let entry = named.entry(name).or_default();
        match option {
            None => entry.0 = Some(value),
            Some(o) if OPTIONS.contains(&o) => {
                entry.1.insert(o, value);
            }
            Some(o) => errors.push(error(
                key,
                "unknown_option",
                format!(
                    "unknown option {o:?} (expected one of {})",
                    OPTIONS.join(", ")
                ),
            )),
        }
    }
    let mut out = Vec::new();
    for (name, (base, options)) in named {
        let base_var = format!("{PREFIX}{name}");
        let Some(base) = base else {
            for o in options.keys() {
                errors.push(error(
                    &format!("{base_var}_{o}"),
                    "option_without_collection",
                    format!("{base_var} is not set"),
                ));
            }
            continue;
        };
        if out.len() >= MAX_COLLECTIONS {
            errors.push(error(
                &base_var,
                "too_many",
                format!("at most {MAX_COLLECTIONS} collections per container"),
            ));
            continue;
        }
        match declaration(name, &base_var, base, &options, settings) {
            Ok(d) => out.push(d),
            Err((variable, reason, message)) => errors.push(error(&variable, reason, message)),
        }
    }
    (out, errors)
}

type Invalid = (String, &'static str, String);

/// One collection from its base value and options; the first wrong variable.
fn declaration(
    name: &str,
    base_var: &str,
    base: &str,
    options: &BTreeMap<&str, &str>,
    settings: &EnvConfigsConfig,
) -> Result<Declaration, Invalid> {
    let var = |o: &str| format!("{base_var}_{o}");
    let input = input(base_var, base)?;
    let format = match options.get("format") {
        None => EnvFormat::Raw,
        Some(text) => format(&input, text).map_err(|m| (var("format"), "invalid_format", m))?,
    };
    let tags = match options.get("tags") {
        None => Vec::new(),
        Some(text) => parse_tags(text).map_err(|m| (var("tags"), "invalid_tags", m))?,
    };
    let sink = match options.get("sink") {
        None => settings.default_sink.clone().ok_or_else(|| {
            (
                base_var.to_owned(),
                "no_default_sink",
                "names no sink and the agent has no default sink (env_configs.default_sink)"
                    .to_owned(),
            )
        })?,
        Some(s) => allowed_sink(settings, s).map_err(|m| (var("sink"), "sink_not_allowed", m))?,
    };
    let mut vars = BTreeMap::new();
    vars.insert(base_var.to_owned(), base.to_owned());
    for (o, v) in options {
        vars.insert(var(o), v.to_string());
    }
    Ok(Declaration {
        name: name.to_owned(),
        input,
        format,
        tags,
        sink,
        vars,
    })
}

/// `stdout`, or an absolute glob inside the container checked as the config file's
/// `container_paths` are (a glob, no `..`).
fn input(base_var: &str, base: &str) -> Result<EnvInput, Invalid> {
    if base == "stdout" {
        return Ok(EnvInput::Stdout);
    }
    if !base.starts_with('/') {
        return Err((
            base_var.into(),
            "invalid_input",
            format!("{base:?}: expected `stdout` or an absolute path (glob) inside the container"),
        ));
    }
    if base.len() > MAX_PATH {
        return Err((
            base_var.into(),
            "invalid_path",
            format!("longer than {MAX_PATH} bytes"),
        ));
    }
    Validator::new("environment")
        .container_glob(base_var, base)
        .map_err(|e| {
            let message = match e {
                ConfigError::Invalid { message, .. } => message,
                other => other.to_string(),
            };
            (base_var.to_owned(), "invalid_path", message)
        })?;
    Ok(EnvInput::Files(base.to_owned()))
}

fn format(input: &EnvInput, text: &str) -> Result<EnvFormat, String> {
    match EnvFormat::parse(text) {
        Some(EnvFormat::Cri | EnvFormat::Docker) if *input == EnvInput::Stdout => Err(format!(
            "{text:?}: stdout is framed by the runtime; its lines are parsed as raw, json, nginx or apache"
        )),
        Some(f) => Ok(f),
        None => Err(format!("{text:?}: expected one of {}", EnvFormat::NAMES)),
    }
}

/// The sink `name` if the file config lets containers name it.
fn allowed_sink(settings: &EnvConfigsConfig, name: &str) -> Result<Arc<str>, String> {
    settings
        .allowed_sinks
        .iter()
        .find(|a| a.as_ref() == name)
        .cloned()
        .ok_or_else(|| {
            let allowed: Vec<&str> = settings.allowed_sinks.iter().map(|a| a.as_ref()).collect();
            format!(
                "{name:?} is not a sink this agent lets containers name (env_configs.sinks: {})",
                allowed.join(", ")
            )
        })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `k=v,k2=v2`: keys are identifiers (letters, digits, `_`, `-`, `.`), values any
/// printable text without `,`; both bounded.
fn parse_tags(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut tags: Vec<(String, String)> = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!("{pair:?}: expected key=value"));
        };
        let (k, v) = (k.trim(), v.trim());
        let key_ok = !k.is_empty()
            && k.len() <= MAX_TAG_KEY
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !key_ok {
            return Err(format!(
                "{k:?}: a tag key is 1 to {MAX_TAG_KEY} letters, digits, `_`, `-` or `.`"
            ));
        }
        if v.len() > MAX_TAG_VALUE || v.chars().any(char::is_control) {
            return Err(format!(
                "value of {k:?}: at most {MAX_TAG_VALUE} bytes, no control characters"
            ));
        }
        if tags.iter().any(|(have, _)| have == k) {
            return Err(format!("{k:?} appears twice"));
        }
        tags.push((k.to_owned(), v.to_owned()));
    }
    if tags.len() > MAX_TAGS {
        return Err(format!("at most {MAX_TAGS} tags"));
    }
    Ok(tags)
}

/// `<namespace>/<pod>/<container>` of a container, for messages.
fn container_name(c: &ContainerInfo) -> String {
    match &c.pod {
        Some(p) => format!("{}/{}/{}", p.namespace, p.pod, p.container),
        None => c.name.clone(),
    }
}

#[derive(Default)]
struct State {
    /// Source name → declaration, of every container the registry knows.
    declared: BTreeMap<String, Declaration>,
    /// `(container id, variable, value)` already reported, so a bad variable is
    /// logged and counted once, not at every look; pruned to known containers.
    reported: HashSet<(String, String, String)>,
}

/// The collections the node's containers declare, kept current from the container
/// registry.
pub struct EnvConfigs {
    settings: EnvConfigsConfig,
    registry: ContainerRegistry,
    state: Mutex<State>,
    generation: AtomicU64,
    /// One more than the registry generation the declarations were last taken at (0:
    /// never): the source thread asks at every loop, and mostly nothing changed.
    seen: AtomicU64,
}

impl EnvConfigs {
    pub fn new(settings: EnvConfigsConfig, registry: ContainerRegistry) -> EnvConfigs {
        let configs = EnvConfigs {
            settings,
            registry,
            state: Mutex::new(State::default()),
            generation: AtomicU64::new(0),
            seen: AtomicU64::new(0),
        };
        metrics::gauge!(ENV_CONFIGS).set(0.0);
        configs.refresh();
        configs
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves whenever the set of declarations changes. Cheap unless the registry
    /// changed since the last call (two atomic loads).
    pub fn generation(&self) -> u64 {
        self.refresh();
        self.generation.load(Ordering::Acquire)
    }

    /// Takes the declarations again if the registry changed.
    fn refresh(&self) {
        let now = self.registry.generation().wrapping_add(1);
        if self.seen.load(Ordering::Acquire) == now {
            return;
        }
        let mut state = self.lock();
        // Under the lock: a concurrent caller that took this generation already
        // leaves nothing to do.
        if self.seen.swap(now, Ordering::AcqRel) == now {
            return;
        }
        let containers = self.registry.containers();
        let mut declared = BTreeMap::new();
        let mut reported = HashSet::new();
        for c in containers.iter().filter(|c| c.pod.is_some()) {
            let (found, errors) = declarations(&c.env, &self.settings);
            for d in found {
                declared.insert(d.source_name(), d);
            }
            for e in errors {
                let key = (c.id.clone(), e.variable.clone(), value_of(c, &e.variable));
                if !state.reported.contains(&key) {
                    tracing::warn!(
                        container = %container_name(c),
                        container_id = %c.id,
                        variable = %e.variable,
                        reason = e.reason,
                        error = %e.message,
                        "collection declared by environment not collected"
                    );
                    metrics::counter!(ENV_CONFIG_ERRORS_TOTAL, "reason" => e.reason).increment(1);
                }
                reported.insert(key);
            }
        }
        state.reported = reported;
        if declared != state.declared {
            tracing::info!(
                collections = declared.len(),
                "collections declared by container environment changed"
            );
            metrics::gauge!(ENV_CONFIGS).set(declared.len() as f64);
            state.declared = declared;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Appends a source for every declaration to `config` (after the file's and the
    /// `LogCollection`s' sources, so their indexes never move). A declaration whose
    /// source name a config already uses is left out (cannot happen but by a hash
    /// collision, which is logged).
    pub fn merge_into(&self, config: &mut Config) {
        let state = self.lock();
        for (name, d) in &state.declared {
            if config.sources.iter().any(|s| s.name.as_ref() == name) {
                tracing::error!(source = %name, "a source of this name exists already");
                continue;
            }
            let source = d.source(config);
            config.sources.push(source);
        }
    }
}

fn value_of(c: &ContainerInfo, variable: &str) -> String {
    c.env.get(variable).cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests;

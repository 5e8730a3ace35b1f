//! The `LogCollection` custom resource (`logtap.dev/v1alpha1`): which containers a
//! collection selects, what it reads from them, how it frames and parses it, and the
//! sink it ships to.
//!
//! The spec reuses the config file's raw types ([`super::raw`]) for parsers, multiline
//! and sinks, and [`super::Validator`] for their checks, so a source block means the
//! same thing in a `LogCollection` and in `logtap.yaml`, and fails with the same
//! message. What the file config does not have yet is the container side: the
//! [`Selector`] and the container-oriented [`SourceInput`] kinds.
//!
//! Parsing follows the file config's two steps: [`LogCollectionSpec::from_json`]
//! (unknown fields rejected with their path), then [`LogCollectionSpec::validate`]
//! (compiled regexes and globs, errors naming `spec.…` fields). `deploy/crd.yaml` is
//! generated from these types by `cargo xtask gen-crd` ([`crd_yaml`]).
//!
//! # Status
//!
//! These are the types, the validation and the container matching that
//! [`crate::collections`] applies to the objects it watches.

use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::sync::Arc;

use kube::{CustomResource, CustomResourceExt};
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::raw::{RawFormat, RawMultiline, RawParser, RawSink};
use super::{ConfigError, Format, MultilineConfig, ParserConfig, SinkConfig, Validator};

/// What a `LogCollection` collects and where it ships it.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "logtap.dev",
    version = "v1alpha1",
    kind = "LogCollection",
    namespaced,
    status = "LogCollectionStatus",
    shortname = "lc",
    category = "logtap",
    doc = "A set of containers (selector), what to read from them (sources) and where to ship it (sink).",
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Matched","type":"integer","description":"containers matched on all nodes","jsonPath":".status.matched_containers"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields)]
pub struct LogCollectionSpec {
    /// Which containers this collection applies to; empty selects every container.
    #[serde(default)]
    pub selector: Selector,
    /// What to read from each selected container (or from the node).
    pub sources: Vec<CollectionSource>,
    /// Where every source of this collection ships its packages.
    pub sink: RawSink,
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

/// One source of a collection: the config file's source block with `input` in place of
/// `include`/`exclude`, and without `sink` (the collection has one).
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionSource {
    /// Unique within the collection; reported with every record.
    pub name: String,
    pub input: SourceInput,
    /// Framing; defaults to `cri` for `container_stdout` and `raw` for files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<RawFormat>,
    #[serde(default = "default_max_line_size")]
    pub max_line_size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiline: Option<RawMultiline>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parser: Option<RawParser>,
}

fn default_max_line_size() -> String {
    "1MiB".into()
}

/// Where a source's bytes come from. Designed so the config file's sources can carry
/// the same `input` later (today they name host files with `include`/`exclude`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[schemars(transform = super::raw::merge_tagged_variants)]
pub enum SourceInput {
    /// The container's stdout/stderr, as the runtime logs it (CRI log files).
    ContainerStdout {
        #[serde(default)]
        stream: StreamSelection,
    },
    /// Files inside the container, by their path in the container's file system
    /// (an absolute glob, e.g. `/var/log/app/*.log`), read through the node's view of
    /// the container's root.
    ContainerFile { path: String },
    /// Files on the node (absolute globs), independent of any container.
    HostFile {
        include: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        exclude: Vec<String>,
    },
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StreamSelection {
    #[default]
    All,
    Stdout,
    Stderr,
}

/// What the agents report about a collection.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogCollectionStatus {
    /// Containers the selector matches.
    #[serde(default)]
    pub matched_containers: u32,
    /// Validation and collection errors, each naming the field or the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<CollectionCondition>,
}

/// A condition in the shape of `metav1.Condition` (kept local because k8s-openapi's
/// types carry no JSON schema without an extra feature).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionCondition {
    /// `Valid` (the spec passed validation) or `Collecting`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// RFC 3339 time of the last change of `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

impl LogCollectionStatus {
    /// The status of a spec that failed validation: the error names the field.
    pub fn invalid(generation: Option<i64>, error: &ConfigError, now: &str) -> Self {
        LogCollectionStatus {
            matched_containers: 0,
            errors: vec![error.to_string()],
            observed_generation: generation,
            conditions: vec![CollectionCondition {
                type_: "Valid".into(),
                status: "False".into(),
                reason: "InvalidSpec".into(),
                message: error.to_string(),
                last_transition_time: Some(now.into()),
            }],
        }
    }
}

/// The CRD as YAML, exactly as `deploy/crd.yaml` holds it.
pub fn crd_yaml() -> String {
    let body = serde_yaml::to_string(&LogCollection::crd()).expect("a CRD serializes to YAML");
    format!(
        "# Generated by `cargo xtask gen-crd` from agent/src/config/crd.rs: do not edit.\n{body}"
    )
}

/// What the facts of one container are matched against. Built by discovery from the
/// pod (namespace, names, labels) and the runtime (container labels, environment).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerFacts {
    pub namespace: String,
    pub pod_name: String,
    pub container_name: String,
    pub pod_labels: BTreeMap<String, String>,
    pub container_labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
}

/// A validated spec: everything compiled, ready to match containers and build sources.
#[derive(Clone, Debug)]
pub struct ValidatedCollection {
    pub selector: CompiledSelector,
    pub sources: Vec<CollectionSourceConfig>,
    pub sink: SinkConfig,
}

#[derive(Clone, Debug)]
pub struct CollectionSourceConfig {
    pub name: Arc<str>,
    pub input: SourceInput,
    pub format: Format,
    pub max_line_bytes: usize,
    pub multiline: Option<MultilineConfig>,
    pub parser: ParserConfig,
}

/// A selector value: `""` any, `^…$` regex, else exact (see [`Selector`]).
#[derive(Clone, Debug)]
pub enum ValueMatcher {
    Any,
    Exact(String),
    Regex(Regex),
}

impl ValueMatcher {
    fn parse(v: &Validator, field: &str, text: &str) -> Result<Self, ConfigError> {
        Ok(if text.is_empty() {
            ValueMatcher::Any
        } else if text.len() >= 2 && text.starts_with('^') && text.ends_with('$') {
            ValueMatcher::Regex(Regex::new(text).map_err(|e| v.invalid(field, e.to_string()))?)
        } else {
            ValueMatcher::Exact(text.to_string())
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatcher::Any => true,
            ValueMatcher::Exact(e) => e == value,
            ValueMatcher::Regex(r) => r.is_match(value),
        }
    }
}

/// [`Selector`] with its regexes compiled.
#[derive(Clone, Debug, Default)]
pub struct CompiledSelector {
    pub namespaces_include: Vec<ValueMatcher>,
    pub namespaces_exclude: Vec<ValueMatcher>,
    pub pod_name: Option<Regex>,
    pub container_name: Option<Regex>,
    pub include_labels: Vec<(String, ValueMatcher)>,
    pub exclude_labels: Vec<(String, ValueMatcher)>,
    pub include_env: Vec<(String, ValueMatcher)>,
    pub exclude_env: Vec<(String, ValueMatcher)>,
}

impl CompiledSelector {
    /// Whether the collection applies to this container. Exclusions are checked first
    /// and win: a container matching any `exclude_*` entry or an excluded namespace is
    /// never selected, whatever it includes.
    pub fn matches(&self, c: &ContainerFacts) -> bool {
        let label = |key: &str, m: &ValueMatcher| {
            c.pod_labels.get(key).is_some_and(|v| m.matches(v))
                || c.container_labels.get(key).is_some_and(|v| m.matches(v))
        };
        let env = |key: &str, m: &ValueMatcher| c.env.get(key).is_some_and(|v| m.matches(v));

        let excluded = self
            .namespaces_exclude
            .iter()
            .any(|m| m.matches(&c.namespace))
            || self.exclude_labels.iter().any(|(k, m)| label(k, m))
            || self.exclude_env.iter().any(|(k, m)| env(k, m));
        if excluded {
            return false;
        }
        (self.namespaces_include.is_empty()
            || self
                .namespaces_include
                .iter()
                .any(|m| m.matches(&c.namespace)))
            && self
                .pod_name
                .as_ref()
                .is_none_or(|r| r.is_match(&c.pod_name))
            && self
                .container_name
                .as_ref()
                .is_none_or(|r| r.is_match(&c.container_name))
            && self.include_labels.iter().all(|(k, m)| label(k, m))
            && self.include_env.iter().all(|(k, m)| env(k, m))
    }
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
                .map(|(i, t)| ValueMatcher::parse(v, &format!("{p}.{name}[{i}]"), t))
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
                    Ok((
                        k.clone(),
                        ValueMatcher::parse(v, &format!("{p}.{name}.{k}"), t)?,
                    ))
                })
                .collect()
        };
        let regex = |name: &str, r: &Option<String>| -> Result<Option<Regex>, ConfigError> {
            r.as_deref()
                .map(|r| {
                    Regex::new(r).map_err(|e| v.invalid(&format!("{p}.{name}"), e.to_string()))
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

impl LogCollectionSpec {
    /// First step: a spec as the API server returns it (JSON). Unknown fields and wrong
    /// types are errors naming their path (serde_json alone names only a line and
    /// column), e.g. `spec.sources[0].input.pth: unknown field `pth``.
    pub fn from_json(spec: &serde_json::Value, object: &str) -> Result<Self, ConfigError> {
        serde_path_to_error::deserialize(spec).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::Syntax {
                file: object.to_string(),
                message: if path == "." {
                    format!("spec: {inner}")
                } else {
                    format!("spec.{path}: {inner}")
                },
            }
        })
    }

    /// Second step: compiles and checks every value with the config file's rules.
    ///
    /// Sink paths are confined to `data_dir` (the agent's hostPath): a collection is
    /// written by namespace users, and the agent runs privileged on the node, so a
    /// `file` sink at an arbitrary path would let them append to any host file.
    pub fn validate(&self, data_dir: &Path) -> Result<ValidatedCollection, ConfigError> {
        self.validate_as("LogCollection", data_dir)
    }

    pub(crate) fn validate_as(
        &self,
        object: &str,
        data_dir: &Path,
    ) -> Result<ValidatedCollection, ConfigError> {
        let v = Validator::new(object);
        let selector = self.selector.compile_at(&v, "spec.selector")?;
        if self.sources.is_empty() {
            return Err(v.invalid("spec.sources", "at least one source is required".into()));
        }
        let mut names = std::collections::HashSet::new();
        let mut sources = Vec::with_capacity(self.sources.len());
        for (i, s) in self.sources.iter().enumerate() {
            let prefix = format!("spec.sources[{i}]");
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                return Err(v.invalid(
                    &format!("{prefix}.name"),
                    format!("empty or duplicate source name {:?}", s.name),
                ));
            }
            let format = match (&s.input, s.format) {
                (SourceInput::ContainerStdout { .. }, Some(RawFormat::Raw)) => {
                    return Err(v.invalid(
                        &format!("{prefix}.format"),
                        "container_stdout is framed by the runtime: cri or docker".into(),
                    ));
                }
                (SourceInput::ContainerStdout { .. }, None) => Format::Cri,
                (_, None) => Format::Raw,
                (_, Some(f)) => f.into(),
            };
            match &s.input {
                SourceInput::ContainerStdout { .. } => {}
                SourceInput::ContainerFile { path } => {
                    v.container_glob(&format!("{prefix}.input.path"), path)?;
                }
                SourceInput::HostFile { include, exclude } => {
                    v.include_exclude(&format!("{prefix}.input"), include, exclude)?;
                }
            }
            sources.push(CollectionSourceConfig {
                name: Arc::from(s.name.as_str()),
                input: s.input.clone(),
                format,
                max_line_bytes: v.max_line_size(&prefix, &s.max_line_size)?,
                multiline: v.multiline(&prefix, s.multiline.as_ref())?,
                parser: v.parser(&prefix, s.parser.as_ref())?,
            });
        }
        let sink = v.sink("spec.sink", &self.sink, data_dir)?;
        if let SinkConfig::Store { path, .. } | SinkConfig::File { path } = &sink
            && !is_confined(path, data_dir)
        {
            return Err(v.invalid(
                "spec.sink.path",
                format!(
                    "{}: must be inside the agent's data_dir {}",
                    path.display(),
                    data_dir.display()
                ),
            ));
        }
        Ok(ValidatedCollection {
            selector,
            sources,
            sink,
        })
    }
}

/// `path` is `dir` or below it, without `..` to climb out (checked lexically: the
/// agent creates these paths itself, so no symlink is expected in them).
fn is_confined(path: &Path, dir: &Path) -> bool {
    path.is_absolute()
        && !path.components().any(|c| c == Component::ParentDir)
        && path.starts_with(dir)
}

impl LogCollection {
    /// Validates the object's spec; errors name the object (`LogCollection ns/name`).
    pub fn validate(&self, data_dir: &Path) -> Result<ValidatedCollection, ConfigError> {
        let object = format!(
            "LogCollection {}/{}",
            self.metadata.namespace.as_deref().unwrap_or(""),
            self.metadata.name.as_deref().unwrap_or("")
        );
        self.spec.validate_as(&object, data_dir)
    }
}

#[cfg(test)]
mod tests;

//! The `LogCollection` custom resource (`logtap.dev/v1alpha1`): which containers a
//! collection selects, what it reads from them, how it frames and parses it, and the
//! sink it ships to.
//!
//! The spec shares the config file's serde types ([`super::schema`]) for parsers,
//! multiline, sinks and the selector, and the config's validator for their checks, so a source block means the
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
//! These are the types and the validation that [`crate::collections`] applies to
//! the objects it watches; the container matching is [`crate::select`]'s.

use std::path::{Component, Path};
use std::sync::Arc;

use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::schema::{NamespaceSelector, Selector};
use super::schema::{RawFormat, RawMultiline, RawParser, RawProcessor, RawSink};
use super::{
    ConfigError, Format, MultilineConfig, ParserConfig, ProcessorConfig, SinkConfig, Validator,
};
use crate::select::CompiledSelector;

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
    /// Record processors, in order, after the parser (as in the config file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processors: Vec<RawProcessor>,
}

fn default_max_line_size() -> String {
    "1MiB".into()
}

/// Where a source's bytes come from. Designed so the config file's sources can carry
/// the same `input` later (today they name host files with `include`/`exclude`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[schemars(transform = super::schema::merge_tagged_variants)]
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
    let body = yaml_serde::to_string(&LogCollection::crd()).expect("a CRD serializes to YAML");
    format!(
        "# Generated by `cargo xtask gen-crd` from agent/src/config/crd.rs: do not edit.\n{body}"
    )
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
    pub processors: Vec<ProcessorConfig>,
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
                processors: v.processors(&prefix, &s.processors)?,
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

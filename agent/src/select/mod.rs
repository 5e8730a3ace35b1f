//! Container selection: which containers a selector (a source's `selector`, a
//! `LogCollection`'s) selects, and the facts of a container it is matched against.
//!
//! - [`CompiledSelector::matches`]: a validated selector (see `config::validate`)
//!   against one container's [`ContainerFacts`]; exclusions win.
//! - `facts`: where those facts come from for a CRI log path (the runtime, the pod
//!   cache, the path itself), and [`Facts::Pending`] while nobody knows yet.

use std::collections::BTreeMap;

use regex::Regex;

mod facts;

pub use facts::{
    ContainerFactsSource, Facts, NodeFacts, RuntimeContainer, RuntimeFacts, path_facts,
};

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

/// A selector value: `""` any, `^…$` regex, else exact (see [`Selector`]).
#[derive(Clone, Debug)]
pub enum ValueMatcher {
    Any,
    Exact(String),
    Regex(Regex),
}

impl ValueMatcher {
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
            lookup(&c.pod_labels, key, m) || lookup(&c.container_labels, key, m)
        };
        let env = |key: &str, m: &ValueMatcher| lookup(&c.env, key, m);

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

/// Whether `map` has `key` with a value `m` matches; a key ending in `*` stands for
/// every key with that prefix (`logtap_logs_*`: whatever collections a container
/// declares in its environment). Neither label keys nor environment names can
/// contain `*`, so the form is unambiguous. Matched per container, not per line.
fn lookup(map: &BTreeMap<String, String>, key: &str, m: &ValueMatcher) -> bool {
    match key.strip_suffix('*') {
        Some(prefix) => map
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .any(|(_, v)| m.matches(v)),
        None => map.get(key).is_some_and(|v| m.matches(v)),
    }
}

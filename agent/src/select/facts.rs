//! Container facts for selectors: what a source's `selector` (and a `LogCollection`'s)
//! is matched against, for the container behind a CRI log path.
//!
//! Two places know a container: the runtime (the CRI container registry: environment,
//! container labels, pod labels as the sandbox carries them) and the Kubernetes API
//! (the [`PodCache`]: pod labels). [`NodeFacts`] asks the runtime first and takes pod
//! labels from the API when it has them. A container neither knows yet is
//! [`Facts::Pending`]: the file source holds its file back and asks again every tick,
//! up to `collections.facts_wait`, then decides on what the path tells
//! ([`path_facts`]) and counts it (`logtap_selector_decisions_total{outcome="path_only"}`).
//!
//! # Performance
//!
//! Asked once per new file (and per tick while a file is held back), never per line.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::ContainerFacts;
use crate::discovery::{PodCache, PodLogRef};

/// What is known about the container of a file, for selectors.
#[derive(Clone, Debug)]
pub enum Facts {
    /// The container's facts, from the runtime and/or the pod metadata.
    Known(ContainerFacts),
    /// Not known yet (the runtime or the API has not reported the container).
    Pending,
    /// The path is not a CRI log: no selector selects it.
    NotContainer,
}

/// Answers [`Facts`] for a CRI log path. Implemented by [`NodeFacts`]; tests use maps.
pub trait ContainerFactsSource: Send + Sync {
    fn facts(&self, path: &Path) -> Facts;
}

impl std::fmt::Debug for dyn ContainerFactsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContainerFactsSource")
    }
}

/// What the container runtime reports about the container writing a CRI log file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeContainer {
    /// Pod labels (the sandbox's).
    pub pod_labels: BTreeMap<String, String>,
    /// The container's own labels.
    pub container_labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
}

/// The runtime side: the CRI container registry, by log path.
pub trait RuntimeFacts: Send + Sync {
    /// `None` when the runtime does not know (yet) who writes `path`.
    fn by_log_path(&self, path: &Path) -> Option<RuntimeContainer>;
}

/// The facts of a CRI log path as its path tells them (namespace, pod and container
/// names, no labels or environment).
pub fn path_facts(path: &Path) -> Option<ContainerFacts> {
    let log = PodLogRef::from_path(path)?;
    Some(names_of(&log))
}

fn names_of(log: &PodLogRef) -> ContainerFacts {
    ContainerFacts {
        namespace: log.namespace.clone(),
        pod_name: log.pod.clone(),
        container_name: log.container.clone(),
        ..ContainerFacts::default()
    }
}

/// The node's sources of container facts. With a runtime, a container is known once
/// the runtime reports it (environment and container labels only come from there);
/// without one, once its pod is in the cache; with neither, its path is all there is.
#[derive(Clone, Default)]
pub struct NodeFacts {
    pub runtime: Option<Arc<dyn RuntimeFacts>>,
    pub pods: Option<PodCache>,
}

impl ContainerFactsSource for NodeFacts {
    fn facts(&self, path: &Path) -> Facts {
        let Some(log) = PodLogRef::from_path(path) else {
            return Facts::NotContainer;
        };
        let mut facts = names_of(&log);
        let runtime = self.runtime.as_ref().and_then(|r| r.by_log_path(path));
        let pod = self.pods.as_ref().and_then(|c| c.get(&log.pod_uid));
        let known = match (&self.runtime, &self.pods) {
            (Some(_), _) => runtime.is_some(),
            (None, Some(_)) => pod.is_some(),
            (None, None) => true,
        };
        if !known {
            return Facts::Pending;
        }
        if let Some(r) = runtime {
            facts.pod_labels = r.pod_labels;
            facts.container_labels = r.container_labels;
            facts.env = r.env;
        }
        // The API's pod labels are the truth (the sandbox's are a copy made at start).
        if let Some(pod) = pod {
            facts.pod_labels = pod.labels.clone();
        }
        Facts::Known(facts)
    }
}

/// The runtime's view: what CRI reported for the container writing `path`. CRI keeps
/// no user labels on Kubernetes containers (the kubelet sets only its own), so pod
/// labels are what label selectors see.
///
/// A file the runtime has not reported yet is pending (the registry asks CRI about it
/// meanwhile), not a container without environment: deciding on an empty
/// environment would route a new container's lines by its `exclude_env` wrongly for
/// good. Only while CRI is down (or not configured) does the path decide at once:
/// waiting could not learn more.
impl RuntimeFacts for crate::discovery::ContainerRegistry {
    fn by_log_path(&self, path: &Path) -> Option<RuntimeContainer> {
        let c = match self.known_by_log_path(path) {
            Some(c) => c,
            None if self.has_cri() && self.cri_up() => return None,
            None => crate::discovery::ContainerRegistry::by_log_path(self, path)?,
        };
        Some(RuntimeContainer {
            pod_labels: c.labels,
            container_labels: BTreeMap::new(),
            env: c.env,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

    fn path() -> PathBuf {
        PathBuf::from(format!("/var/log/pods/shop_cart_{UID}/app/0.log"))
    }

    struct Runtime(Option<RuntimeContainer>);
    impl RuntimeFacts for Runtime {
        fn by_log_path(&self, _: &Path) -> Option<RuntimeContainer> {
            self.0.clone()
        }
    }

    fn pod_cache_with_cart() -> PodCache {
        let cache = PodCache::new(Vec::new(), Duration::from_secs(60));
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "shop", "name": "cart", "uid": UID,
                         "labels": {"app": "cart"}},
            "spec": {"containers": [{"name": "app", "image": "i"}]},
        }))
        .unwrap();
        cache.apply_pod(&pod);
        cache
    }

    #[test]
    fn host_files_are_not_containers() {
        let facts = NodeFacts::default();
        assert!(matches!(
            facts.facts(Path::new("/var/log/syslog")),
            Facts::NotContainer
        ));
    }

    #[test]
    fn without_runtime_or_api_the_path_is_all_there_is() {
        let Facts::Known(f) = NodeFacts::default().facts(&path()) else {
            panic!("known from the path")
        };
        assert_eq!(
            (
                f.namespace.as_str(),
                f.pod_name.as_str(),
                f.container_name.as_str()
            ),
            ("shop", "cart", "app")
        );
        assert!(f.env.is_empty() && f.pod_labels.is_empty());
    }

    #[test]
    fn pod_cache_gives_labels_and_an_unknown_pod_is_pending() {
        let facts = NodeFacts {
            runtime: None,
            pods: Some(PodCache::new(Vec::new(), Duration::from_secs(60))),
        };
        assert!(matches!(facts.facts(&path()), Facts::Pending));
        let facts = NodeFacts {
            runtime: None,
            pods: Some(pod_cache_with_cart()),
        };
        let Facts::Known(f) = facts.facts(&path()) else {
            panic!("the pod is cached")
        };
        assert_eq!(f.pod_labels.get("app").map(String::as_str), Some("cart"));
    }

    #[test]
    fn with_a_runtime_the_container_waits_for_it_and_gets_its_env() {
        let pending = NodeFacts {
            runtime: Some(Arc::new(Runtime(None))),
            pods: Some(pod_cache_with_cart()),
        };
        assert!(
            matches!(pending.facts(&path()), Facts::Pending),
            "env only comes from the runtime: a cached pod is not enough"
        );
        let known = NodeFacts {
            runtime: Some(Arc::new(Runtime(Some(RuntimeContainer {
                pod_labels: [("app".into(), "stale".into())].into(),
                container_labels: [("c".into(), "1".into())].into(),
                env: [("LOG_FORMAT".into(), "json".into())].into(),
            })))),
            pods: Some(pod_cache_with_cart()),
        };
        let Facts::Known(f) = known.facts(&path()) else {
            panic!("the runtime knows it")
        };
        assert_eq!(f.env.get("LOG_FORMAT").map(String::as_str), Some("json"));
        assert_eq!(f.container_labels.get("c").map(String::as_str), Some("1"));
        assert_eq!(f.pod_labels.get("app").map(String::as_str), Some("cart"));
    }
}

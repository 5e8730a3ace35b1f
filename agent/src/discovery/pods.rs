//! The node's pod metadata, as last seen from the Kubernetes API.
//!
//! [`PodCache`] is written by the [`PodWatcher`](super::watcher::PodWatcher) and read by
//! the pipeline's threads. Readers never wait on the API: [`PodCache::get`] answers
//! from memory at once, and [`PodCache::wait_for`] waits at most the bound it is given
//! (for a container whose first lines arrive before its pod's watch event).
//!
//! A deleted pod stays readable for a grace period, because its containers' last lines
//! are often read after the API reported the deletion.
//!
//! # Performance
//!
//! Lookups take a read lock and clone an `Arc`; they happen once per source (a log
//! file), not per line. Writers are the watcher's events: a few per pod lifecycle.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::metrics::catalogue::{KUBE_API_UP, KUBE_PODS_CACHED};
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod};

/// The annotation a mirror pod carries with the kubelet's config hash of its static
/// pod: the "UID" in the static pod's log directory name.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// What logtap knows about one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// Only the annotations the configuration asked for.
    pub annotations: BTreeMap<String, String>,
    pub node_name: Option<String>,
    /// Init, regular and ephemeral containers, in that order.
    pub containers: Vec<ContainerMeta>,
    /// The labels of the pod's namespace, as known when this value was built (the cache
    /// rebuilds its pods when a namespace's labels change).
    pub namespace_labels: Arc<BTreeMap<String, String>>,
    /// The static pod's config hash, when this is a mirror pod.
    pub mirror_of: Option<String>,
}

/// One container of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerMeta {
    pub name: String,
    /// The image as the pod spec names it.
    pub image: String,
    /// The running (or last) container's id without the `<runtime>://` prefix; `None`
    /// until the container was created.
    pub container_id: Option<String>,
    pub restart_count: u32,
    /// The id of the previous run (the one with `restart_count - 1`), when it ended.
    pub last_container_id: Option<String>,
}

impl ContainerMeta {
    /// The id of the container run that wrote `<restart>.log`, when known: the current
    /// run or the previous one (the only two the API still reports).
    pub fn id_for_restart(&self, restart: u32) -> Option<&str> {
        if restart == self.restart_count {
            self.container_id.as_deref()
        } else if restart.checked_add(1) == Some(self.restart_count) {
            self.last_container_id.as_deref()
        } else {
            None
        }
    }
}

impl PodMeta {
    /// Builds the metadata of a pod as the API returned it; `None` without a UID.
    pub fn from_pod(
        pod: &Pod,
        annotation_keys: &[String],
        namespace_labels: Arc<BTreeMap<String, String>>,
    ) -> Option<PodMeta> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().filter(|u| !u.is_empty())?;
        let all_annotations = meta.annotations.as_ref();
        let annotations = annotation_keys
            .iter()
            .filter_map(|k| Some((k.clone(), all_annotations?.get(k)?.clone())))
            .collect();
        let mirror_of = all_annotations
            .and_then(|a| a.get(MIRROR_ANNOTATION))
            .cloned();

        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let statuses: Vec<&ContainerStatus> = status
            .into_iter()
            .flat_map(|s| {
                [
                    &s.init_container_statuses,
                    &s.container_statuses,
                    &s.ephemeral_container_statuses,
                ]
            })
            .flat_map(|list| list.iter().flatten())
            .collect();
        let status_of = |name: &str| statuses.iter().find(|s| s.name == name).copied();

        let mut containers = Vec::new();
        if let Some(spec) = spec {
            let specs = spec
                .init_containers
                .iter()
                .flatten()
                .chain(spec.containers.iter())
                .map(|c: &Container| (&c.name, c.image.as_deref()));
            let ephemeral = spec
                .ephemeral_containers
                .iter()
                .flatten()
                .map(|c| (&c.name, c.image.as_deref()));
            for (name, image) in specs.chain(ephemeral) {
                let status = status_of(name);
                containers.push(ContainerMeta {
                    name: name.clone(),
                    image: image
                        .map(str::to_owned)
                        .or_else(|| status.map(|s| s.image.clone()))
                        .unwrap_or_default(),
                    container_id: status.and_then(|s| bare_id(s.container_id.as_deref())),
                    restart_count: status.map_or(0, |s| s.restart_count.max(0) as u32),
                    last_container_id: status
                        .and_then(|s| s.last_state.as_ref()?.terminated.as_ref())
                        .and_then(|t| bare_id(t.container_id.as_deref())),
                });
            }
        }

        Some(PodMeta {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid,
            labels: meta.labels.clone().unwrap_or_default(),
            annotations,
            node_name: spec.and_then(|s| s.node_name.clone()),
            containers,
            namespace_labels,
            mirror_of,
        })
    }

    pub fn container(&self, name: &str) -> Option<&ContainerMeta> {
        self.containers.iter().find(|c| c.name == name)
    }
}

/// `containerd://abc…` → `abc…` (the runtime is not part of the id).
fn bare_id(id: Option<&str>) -> Option<String> {
    let id = id?;
    let bare = id.split_once("://").map_or(id, |(_, rest)| rest);
    (!bare.is_empty()).then(|| bare.to_owned())
}

struct Entry {
    meta: Arc<PodMeta>,
    /// When the API reported the pod gone; it is forgotten `deleted_grace` later.
    deleted_at: Option<Instant>,
}

#[derive(Default)]
struct State {
    /// By UID.
    pods: HashMap<String, Entry>,
    /// Static pod config hash → mirror pod UID.
    mirrors: HashMap<String, String>,
    namespaces: HashMap<String, Arc<BTreeMap<String, String>>>,
}

struct Shared {
    state: RwLock<State>,
    /// Bumped (and waiters woken) whenever a pod is added or changed.
    generation: Mutex<u64>,
    changed: Condvar,
    /// The same count as `generation`, readable without a lock: what per-source
    /// refreshes compare to learn, with one load, that nothing changed.
    generation_seen: AtomicU64,
    pods_up: AtomicBool,
    namespaces_up: AtomicBool,
    annotation_keys: Vec<String>,
    deleted_grace: Duration,
}

/// Shared pod metadata of this node; cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct PodCache {
    shared: Arc<Shared>,
}

impl PodCache {
    /// An empty cache keeping the annotations named in `annotation_keys` and deleted
    /// pods for `deleted_grace`.
    pub fn new(annotation_keys: Vec<String>, deleted_grace: Duration) -> PodCache {
        PodCache {
            shared: Arc::new(Shared {
                state: RwLock::new(State::default()),
                generation: Mutex::new(0),
                changed: Condvar::new(),
                generation_seen: AtomicU64::new(0),
                pods_up: AtomicBool::new(false),
                namespaces_up: AtomicBool::new(false),
                annotation_keys,
                deleted_grace,
            }),
        }
    }

    /// The pod with this UID (or, for a static pod, this config hash), if known.
    pub fn get(&self, uid: &str) -> Option<Arc<PodMeta>> {
        let state = self.read();
        let entry = state.pods.get(uid).or_else(|| {
            let mirror_uid = state.mirrors.get(uid)?;
            state.pods.get(mirror_uid)
        })?;
        Some(entry.meta.clone())
    }

    /// Like [`get`](Self::get), but waits up to `max` for the pod to appear.
    ///
    /// For the first lines of a new container, which are usually read before the
    /// pod's watch event arrives. Returns at once when the pod is known.
    pub fn wait_for(&self, uid: &str, max: Duration) -> Option<Arc<PodMeta>> {
        let deadline = Instant::now() + max;
        let mut generation = self.lock_generation();
        loop {
            // Checked under the generation lock: an insert between this check and the
            // wait below bumps the generation only after we wait, so it is not missed.
            if let Some(meta) = self.get(uid) {
                return Some(meta);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            generation = self
                .shared
                .changed
                .wait_timeout(generation, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// A count bumped whenever a pod is added or changed (including by its namespace's
    /// labels). Equal values mean [`get`](Self::get) would answer as before, so a
    /// reader can refresh what it derived from the cache only when this moved.
    pub fn generation(&self) -> u64 {
        self.shared.generation_seen.load(Ordering::Acquire)
    }

    /// Whether both watches (pods and namespaces) are currently healthy. `false` until
    /// their first successful list, and during an outage.
    pub fn api_up(&self) -> bool {
        self.shared.pods_up.load(Ordering::Relaxed)
            && self.shared.namespaces_up.load(Ordering::Relaxed)
    }

    /// Number of pods held, including deleted ones within their grace period.
    pub fn len(&self) -> usize {
        self.read().pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn deleted_grace(&self) -> Duration {
        self.shared.deleted_grace
    }

    pub(crate) fn set_up(&self, resource: Resource, up: bool) {
        let flag = match resource {
            Resource::Pods => &self.shared.pods_up,
            Resource::Namespaces => &self.shared.namespaces_up,
            Resource::LogCollections | Resource::Events => return,
        };
        flag.store(up, Ordering::Relaxed);
        metrics::gauge!(KUBE_API_UP).set(if self.api_up() { 1.0 } else { 0.0 });
    }

    /// Adds or replaces a pod (an `Apply`/`InitApply` event).
    pub(crate) fn apply_pod(&self, pod: &Pod) {
        let mut state = self.write();
        let ns_labels = pod
            .metadata
            .namespace
            .as_ref()
            .and_then(|ns| state.namespaces.get(ns).cloned())
            .unwrap_or_default();
        let Some(meta) = PodMeta::from_pod(pod, &self.shared.annotation_keys, ns_labels) else {
            return;
        };
        if let Some(hash) = &meta.mirror_of {
            state.mirrors.insert(hash.clone(), meta.uid.clone());
        }
        state.pods.insert(
            meta.uid.clone(),
            Entry {
                meta: Arc::new(meta),
                deleted_at: None,
            },
        );
        self.changed(state);
    }

    /// Marks a pod deleted; it stays readable for the grace period.
    pub(crate) fn delete_pod(&self, uid: &str, now: Instant) {
        let mut state = self.write();
        if let Some(entry) = state.pods.get_mut(uid) {
            entry.deleted_at.get_or_insert(now);
        }
    }

    /// After a full re-list: pods the list did not return were deleted while the
    /// watch was down.
    pub(crate) fn retain_listed_pods(&self, listed: &HashSet<String>, now: Instant) {
        let mut state = self.write();
        for (uid, entry) in state.pods.iter_mut() {
            if !listed.contains(uid) {
                entry.deleted_at.get_or_insert(now);
            }
        }
    }

    /// Forgets pods deleted more than the grace period before `now`.
    pub(crate) fn purge_deleted(&self, now: Instant) {
        let grace = self.shared.deleted_grace;
        let mut state = self.write();
        let before = state.pods.len();
        state
            .pods
            .retain(|_, e| e.deleted_at.is_none_or(|at| now.duration_since(at) < grace));
        if state.pods.len() != before {
            let State { pods, mirrors, .. } = &mut *state;
            mirrors.retain(|_, uid| pods.contains_key(uid));
            metrics::gauge!(KUBE_PODS_CACHED).set(pods.len() as f64);
        }
    }

    /// Sets a namespace's labels and rebuilds the pods of that namespace if they
    /// changed.
    pub(crate) fn apply_namespace(&self, name: &str, labels: BTreeMap<String, String>) {
        let mut state = self.write();
        if state.namespaces.get(name).is_some_and(|l| **l == labels) {
            return;
        }
        let labels = Arc::new(labels);
        state.namespaces.insert(name.to_owned(), labels.clone());
        let mut touched = false;
        for entry in state.pods.values_mut() {
            if entry.meta.namespace == name {
                let mut meta = PodMeta::clone(&entry.meta);
                meta.namespace_labels = labels.clone();
                entry.meta = Arc::new(meta);
                touched = true;
            }
        }
        if touched {
            self.changed(state);
        }
    }

    pub(crate) fn delete_namespace(&self, name: &str) {
        self.write().namespaces.remove(name);
    }

    /// After a full namespace re-list: forgets namespaces it did not return (pods
    /// keep the labels they were built with).
    pub(crate) fn retain_listed_namespaces(&self, listed: &HashSet<String>) {
        self.write()
            .namespaces
            .retain(|name, _| listed.contains(name));
    }

    fn changed(&self, state: std::sync::RwLockWriteGuard<'_, State>) {
        metrics::gauge!(KUBE_PODS_CACHED).set(state.pods.len() as f64);
        drop(state);
        let mut generation = self.lock_generation();
        *generation += 1;
        self.shared
            .generation_seen
            .store(*generation, Ordering::Release);
        drop(generation);
        self.shared.changed.notify_all();
    }

    fn lock_generation(&self) -> std::sync::MutexGuard<'_, u64> {
        self.shared
            .generation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    // A panic while holding the lock leaves the maps consistent (every write is a
    // whole insert/remove), so a poisoned lock is still safe to use.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.shared.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.shared.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The API resources logtap watches; the `resource` label of its metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Pods,
    Namespaces,
    /// `LogCollection` objects (see `collections`); not part of the cache's health.
    LogCollections,
    /// `events.k8s.io/v1` Events (see `events`); not part of the cache's health.
    Events,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Namespaces => "namespaces",
            Resource::LogCollections => "logcollections",
            Resource::Events => "events",
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, EphemeralContainer, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    const UID: &str = "00000000-0000-0000-0000-000000000001";
    const HASH: &str = "3f4a9b8c7d6e5f4a3b2c1d0e9f8a7b6c";

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn status(name: &str, image: &str, id: Option<&str>, restarts: i32) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            image: image.into(),
            container_id: id.map(str::to_owned),
            restart_count: restarts,
            ..ContainerStatus::default()
        }
    }

    fn pod(uid: &str, namespace: &str, annotations: &[(&str, &str)]) -> Pod {
        let container = |name: &str, image: Option<&str>| Container {
            name: name.into(),
            image: image.map(str::to_owned),
            ..Container::default()
        };
        let mut app = status("app", "docker.io/shop/app:2", Some("cri-o://abc"), 2);
        app.last_state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                container_id: Some("cri-o://prev".into()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        });
        Pod {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some("web".into()),
                uid: Some(uid.into()),
                annotations: Some(map(annotations)),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-a".into()),
                init_containers: Some(vec![container("migrate", Some("shop/migrate:1"))]),
                containers: vec![
                    container("app", Some("shop/app:2")),
                    container("proxy", None),
                ],
                ephemeral_containers: Some(vec![EphemeralContainer {
                    name: "debug".into(),
                    image: Some("busybox".into()),
                    ..EphemeralContainer::default()
                }]),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                init_container_statuses: Some(vec![status(
                    "migrate",
                    "shop/migrate:1",
                    Some("containerd://mig"),
                    0,
                )]),
                container_statuses: Some(vec![app, status("proxy", "envoy:1.30", Some(""), 0)]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn pod_meta_from_the_api_object() {
        let ns_labels = Arc::new(map(&[("env", "prod")]));
        let pod = pod(UID, "shop", &[("team", "a"), ("other", "b")]);
        let meta = PodMeta::from_pod(&pod, &["team".into(), "absent".into()], ns_labels).unwrap();
        assert_eq!(meta.annotations, map(&[("team", "a")]));
        assert_eq!(
            meta.namespace_labels.get("env").map(String::as_str),
            Some("prod")
        );
        let summary: Vec<_> = meta
            .containers
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.image.as_str(),
                    c.container_id.as_deref(),
                    c.restart_count,
                    c.last_container_id.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("migrate", "shop/migrate:1", Some("mig"), 0, None),
                ("app", "shop/app:2", Some("abc"), 2, Some("prev")),
                // No image in the spec: the status names it. An empty id is no id.
                ("proxy", "envoy:1.30", None, 0, None),
                // Not started yet: no status at all.
                ("debug", "busybox", None, 0, None),
            ]
        );
        assert_eq!(meta.mirror_of, None);
    }

    #[test]
    fn a_pod_without_uid_is_ignored() {
        let mut pod = pod(UID, "shop", &[]);
        pod.metadata.uid = None;
        assert!(PodMeta::from_pod(&pod, &[], Arc::default()).is_none());
        let cache = PodCache::new(Vec::new(), Duration::from_secs(1));
        cache.apply_pod(&pod);
        assert!(cache.is_empty());
    }

    #[test]
    fn static_pods_are_found_by_their_config_hash() {
        let cache = PodCache::new(Vec::new(), Duration::from_secs(1));
        cache.apply_pod(&pod(UID, "kube-system", &[(MIRROR_ANNOTATION, HASH)]));
        assert_eq!(cache.get(HASH).unwrap().uid, UID);
        assert_eq!(cache.get(UID).unwrap().mirror_of.as_deref(), Some(HASH));

        let now = Instant::now();
        cache.delete_pod(UID, now);
        cache.purge_deleted(now + Duration::from_secs(2));
        assert!(cache.get(HASH).is_none() && cache.get(UID).is_none());
    }

    #[test]
    fn deleted_and_unlisted_pods_last_their_grace_period() {
        let grace = Duration::from_secs(60);
        let cache = PodCache::new(Vec::new(), grace);
        let other = "00000000-0000-0000-0000-000000000002";
        cache.apply_pod(&pod(UID, "shop", &[]));
        cache.apply_pod(&pod(other, "shop", &[]));
        let t0 = Instant::now();
        cache.retain_listed_pods(&HashSet::from([other.to_owned()]), t0);
        cache.purge_deleted(t0 + grace / 2);
        assert!(cache.get(UID).is_some(), "within the grace period");
        cache.purge_deleted(t0 + grace);
        assert!(cache.get(UID).is_none());
        assert!(cache.get(other).is_some());

        // Deleted, then applied again (a re-list raced the deletion): alive again.
        cache.delete_pod(other, t0);
        cache.apply_pod(&pod(other, "shop", &[]));
        cache.purge_deleted(t0 + grace * 2);
        assert!(cache.get(other).is_some());
    }

    #[test]
    fn namespace_labels_reach_pods_whichever_comes_first() {
        let cache = PodCache::new(Vec::new(), Duration::from_secs(1));
        let env = |cache: &PodCache| cache.get(UID)?.namespace_labels.get("env").cloned();
        cache.apply_pod(&pod(UID, "shop", &[]));
        assert_eq!(env(&cache), None);
        cache.apply_namespace("shop", map(&[("env", "prod")]));
        assert_eq!(env(&cache).as_deref(), Some("prod"));
        cache.apply_namespace("other", map(&[("env", "dev")]));
        assert_eq!(env(&cache).as_deref(), Some("prod"));
        // A pod (re)applied after its namespace takes the current labels.
        cache.apply_namespace("shop", map(&[("env", "staging")]));
        cache.apply_pod(&pod(UID, "shop", &[]));
        assert_eq!(env(&cache).as_deref(), Some("staging"));
    }

    #[test]
    fn api_up_needs_both_watches() {
        let cache = PodCache::new(Vec::new(), Duration::from_secs(1));
        assert!(!cache.api_up());
        cache.set_up(Resource::Pods, true);
        assert!(!cache.api_up());
        cache.set_up(Resource::Namespaces, true);
        assert!(cache.api_up());
        cache.set_up(Resource::Pods, false);
        assert!(!cache.api_up());
    }
}

//! The per-source side of enrichment: which fields a source's packages carry now, and
//! whether its first package waits a little for its container's metadata.
//!
//! A container's first lines are usually read before its metadata is known: before
//! the pod's watch event arrives (API), before the runtime was asked about the new
//! log file (CRI). A [`SourceEnrichment`] then *holds* the source's package — it
//! keeps filling, but is not shipped — until the pod is in the cache or the runtime
//! reported the container, or `metadata_wait` has passed since the source opened,
//! whichever comes first. The reader thread never waits: the pipeline asks
//! [`SourceEnrichment::poll`] whenever it would ship (new data, ticks), and a package
//! that reaches its size limit ships at once ([`SourceEnrichment::release`]), so a
//! held source pins at most one package of memory. After the deadline the package
//! ships with what the log path says, counted in
//! `logtap_enrich_metadata_missing_total`; once the metadata shows up, later packages
//! carry every field.
//!
//! # Performance
//!
//! Fields are built once per source and again only when the pod cache or the
//! container registry changed: `poll` is two atomic loads when nothing did. They
//! travel as one `Arc` per package.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{CONTAINER_ID, SourceFields, container_fields_from, host_fields};
use crate::discovery::{ContainerInfo, ContainerRegistry, PodCache, PodLogRef, PodMeta};
use crate::metrics::catalogue::ENRICH_METADATA_MISSING_TOTAL;

/// Names the lines of this node's sources: the pod cache (API) and the container
/// registry (CRI) — either or both —, the node name, and how long a new container's
/// first package may wait for its metadata.
pub struct Enricher {
    cache: Option<PodCache>,
    runtime: Option<ContainerRegistry>,
    /// Pod annotations copied from the runtime's report (the cache filters its own).
    annotation_keys: Vec<String>,
    node: String,
    host: Arc<SourceFields>,
    metadata_wait: Duration,
}

/// The fields of a container source at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldsState {
    /// Its pod or container is known (API or runtime): every field known.
    Ready(Arc<SourceFields>),
    /// Neither knows it (yet): what the log path and the given container id say.
    Pending(Arc<SourceFields>),
}

impl FieldsState {
    pub fn fields(&self) -> &Arc<SourceFields> {
        match self {
            FieldsState::Ready(f) | FieldsState::Pending(f) => f,
        }
    }
}

impl Enricher {
    /// Enrichment from the Kubernetes API's pod cache.
    pub fn new(cache: PodCache, node_name: impl Into<String>, metadata_wait: Duration) -> Enricher {
        Enricher::from_sources(Some(cache), None, Vec::new(), node_name, metadata_wait)
    }

    /// Enrichment from the pod cache (API), the container registry (CRI), or both;
    /// `annotation_keys` are the pod annotations copied from the runtime's report.
    pub fn from_sources(
        cache: Option<PodCache>,
        runtime: Option<ContainerRegistry>,
        annotation_keys: Vec<String>,
        node_name: impl Into<String>,
        metadata_wait: Duration,
    ) -> Enricher {
        let node = node_name.into();
        Enricher {
            host: Arc::new(host_fields(&node)),
            cache,
            runtime,
            annotation_keys,
            node,
            metadata_wait,
        }
    }

    /// The pod cache, when the API is a source.
    pub fn cache(&self) -> Option<&PodCache> {
        self.cache.as_ref()
    }

    /// The container registry, when the runtime is a source.
    pub fn runtime(&self) -> Option<&ContainerRegistry> {
        self.runtime.as_ref()
    }

    pub fn node_name(&self) -> &str {
        &self.node
    }

    pub fn metadata_wait(&self) -> Duration {
        self.metadata_wait
    }

    /// The fields of a host source (not a container's): the node.
    pub fn host(&self) -> Arc<SourceFields> {
        self.host.clone()
    }

    /// The fields of a container's lines now. `container_id` is the id of the run that
    /// writes the stream when the caller knows it (capture streams): it wins over the
    /// id the pod's status names for `log.restart`.
    pub fn fields_for_container(&self, log: &PodLogRef, container_id: Option<&str>) -> FieldsState {
        let pod = self.pod_of(log);
        let runtime = self.runtime_of(container_id, None);
        let fields = Arc::new(self.build(log, runtime.as_ref(), pod.as_deref(), container_id));
        if pod.is_some() || runtime.is_some() {
            FieldsState::Ready(fields)
        } else {
            FieldsState::Pending(fields)
        }
    }

    /// Tracks the fields of a file source: a container's when `path` is a CRI log
    /// path (`…/<namespace>_<pod>_<uid>/<container>/<n>.log`), else the host's.
    pub fn track_path(&self, path: &Path, now: Instant) -> SourceEnrichment {
        match PodLogRef::from_path(path) {
            Some(log) => self.track(log, None, Some(path.to_path_buf()), now),
            None => SourceEnrichment {
                target: Target::Host,
                fields: self.host(),
                pod: None,
                runtime: None,
                seen_generation: (0, 0),
                hold_until: None,
            },
        }
    }

    /// Tracks the fields of a container stream opened at `now` (its packages are held
    /// until `now + metadata_wait` while its metadata is unknown).
    pub fn track_container(
        &self,
        log: PodLogRef,
        container_id: Option<String>,
        now: Instant,
    ) -> SourceEnrichment {
        self.track(log, container_id, None, now)
    }

    fn track(
        &self,
        log: PodLogRef,
        container_id: Option<String>,
        path: Option<PathBuf>,
        now: Instant,
    ) -> SourceEnrichment {
        // Read before the lookups: a change in between is seen by the next refresh.
        let seen_generation = self.generation();
        let pod = self.pod_of(&log);
        let runtime = self.runtime_of(container_id.as_deref(), path.as_deref());
        let fields = Arc::new(self.build(
            &log,
            runtime.as_ref(),
            pod.as_deref(),
            container_id.as_deref(),
        ));
        SourceEnrichment {
            hold_until: (pod.is_none() && runtime.is_none()).then(|| now + self.metadata_wait),
            target: Target::Container {
                log,
                container_id,
                path,
            },
            fields,
            pod,
            runtime,
            seen_generation,
        }
    }

    /// Both sources' change counters.
    fn generation(&self) -> (u64, u64) {
        (
            self.cache.as_ref().map_or(0, PodCache::generation),
            self.runtime
                .as_ref()
                .map_or(0, ContainerRegistry::generation),
        )
    }

    fn pod_of(&self, log: &PodLogRef) -> Option<Arc<PodMeta>> {
        self.cache.as_ref()?.get(&log.pod_uid)
    }

    /// What the runtime reported about the stream's container: by id when the
    /// caller knows it, else by log path (which queues a CRI lookup when unknown).
    fn runtime_of(&self, container_id: Option<&str>, path: Option<&Path>) -> Option<ContainerInfo> {
        let runtime = self.runtime.as_ref()?;
        match (container_id, path) {
            (Some(id), _) => runtime.get(id),
            (None, Some(path)) => runtime.known_by_log_path(path),
            (None, None) => None,
        }
    }

    fn build(
        &self,
        log: &PodLogRef,
        runtime: Option<&ContainerInfo>,
        pod: Option<&PodMeta>,
        container_id: Option<&str>,
    ) -> SourceFields {
        let mut fields =
            container_fields_from(log, runtime, pod, &self.node, &self.annotation_keys);
        if let Some(id) = container_id {
            let value = Bytes::copy_from_slice(id.as_bytes());
            match fields
                .iter_mut()
                .find(|(k, _)| k[..] == *CONTAINER_ID.as_bytes())
            {
                Some((_, v)) => *v = value,
                None => {
                    // Where `container_fields_from` puts it: after the five path fields.
                    let at = fields.len().min(5);
                    fields.insert(at, (Bytes::from_static(CONTAINER_ID.as_bytes()), value));
                }
            }
        }
        fields
    }

    /// Why a hold ended without metadata: which of its sources an operator must look
    /// at (one that answered but did not know the container, or one that is away).
    fn missing_reason(&self) -> &'static str {
        if self.cache.as_ref().is_some_and(PodCache::api_up) {
            "pod_unknown"
        } else if self.runtime.as_ref().is_some_and(ContainerRegistry::cri_up) {
            "container_unknown"
        } else if self.cache.is_some() {
            "api_unavailable"
        } else {
            "cri_unavailable"
        }
    }
}

enum Target {
    Host,
    Container {
        log: PodLogRef,
        container_id: Option<String>,
        /// The CRI log file, for the runtime lookup (`None`: a captured stream).
        path: Option<PathBuf>,
    },
}

/// The runtime facts the fields are made of; a new pid or state changes no field.
fn same_fields(a: &ContainerInfo, b: &ContainerInfo) -> bool {
    a.id == b.id && a.image == b.image && a.labels == b.labels && a.annotations == b.annotations
}

/// The fields one source's packages carry, kept current. See the module docs.
pub struct SourceEnrichment {
    target: Target,
    fields: Arc<SourceFields>,
    /// The pod metadata `fields` was built from; `None`: not from the API.
    pod: Option<Arc<PodMeta>>,
    /// The runtime's report `fields` was built from; `None`: not from CRI.
    runtime: Option<ContainerInfo>,
    /// The cache's and the registry's generations when `fields` was last brought up
    /// to date.
    seen_generation: (u64, u64),
    /// While the metadata is unknown and the source is new: until when its package
    /// waits.
    hold_until: Option<Instant>,
}

impl SourceEnrichment {
    /// What the next package of the source carries.
    pub fn fields(&self) -> &Arc<SourceFields> {
        &self.fields
    }

    /// Whether the fields include the pod's metadata from the API.
    pub fn has_pod_metadata(&self) -> bool {
        self.pod.is_some()
    }

    /// Whether the fields include the runtime's report of the container.
    pub fn has_runtime_metadata(&self) -> bool {
        self.runtime.is_some()
    }

    /// Whether the source's package is being held for its metadata.
    pub fn is_holding(&self) -> bool {
        self.hold_until.is_some()
    }

    fn known(&self) -> bool {
        self.pod.is_some() || self.runtime.is_some()
    }

    /// Brings the fields up to date if the cache or the registry changed, and says
    /// whether the source's package must still be held at `now` (metadata unknown,
    /// deadline not passed). A hold whose deadline passed ends here, counted as
    /// missing metadata.
    pub fn poll(&mut self, enricher: &Enricher, now: Instant) -> bool {
        self.refresh(enricher);
        match self.hold_until {
            None => false,
            Some(_) if self.known() => {
                self.hold_until = None;
                false
            }
            Some(until) if now < until => true,
            Some(_) => {
                self.give_up(enricher);
                false
            }
        }
    }

    /// Ends a hold early — the package is full, the source ended, the agent stops —
    /// after a last look at the sources: the next package ships with what is known.
    pub fn release(&mut self, enricher: &Enricher) {
        self.refresh(enricher);
        if self.hold_until.is_some() {
            if self.known() {
                self.hold_until = None;
            } else {
                self.give_up(enricher);
            }
        }
    }

    fn give_up(&mut self, enricher: &Enricher) {
        self.hold_until = None;
        let reason = enricher.missing_reason();
        metrics::counter!(ENRICH_METADATA_MISSING_TOTAL, "reason" => reason).increment(1);
        if let Target::Container { log, .. } = &self.target {
            tracing::debug!(
                namespace = %log.namespace, pod = %log.pod, container = %log.container,
                reason, "shipping without container metadata (fields from the log path)"
            );
        }
    }

    fn refresh(&mut self, enricher: &Enricher) {
        let Target::Container {
            log,
            container_id,
            path,
        } = &self.target
        else {
            return;
        };
        let generation = enricher.generation();
        if generation == self.seen_generation {
            return;
        }
        self.seen_generation = generation;
        // What disappeared (a pod purged after its grace period, a container the
        // runtime removed) keeps the fields it gave: they are still true of the lines
        // its containers wrote.
        let mut changed = false;
        if let Some(pod) = enricher.pod_of(log)
            && self.pod.as_ref().is_none_or(|old| !Arc::ptr_eq(old, &pod))
        {
            self.pod = Some(pod);
            changed = true;
        }
        if let Some(info) = enricher.runtime_of(container_id.as_deref(), path.as_deref())
            && self
                .runtime
                .as_ref()
                .is_none_or(|old| !same_fields(old, &info))
        {
            self.runtime = Some(info);
            changed = true;
        }
        if changed {
            self.fields = Arc::new(enricher.build(
                log,
                self.runtime.as_ref(),
                self.pod.as_deref(),
                container_id.as_deref(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    const WAIT: Duration = Duration::from_secs(2);

    fn cache() -> PodCache {
        PodCache::new(vec!["team".into()], Duration::from_secs(60))
    }

    fn pod(labels: &[(&str, &str)]) -> Pod {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Pod {
            metadata: ObjectMeta {
                namespace: Some("shop".into()),
                name: Some("cart".into()),
                uid: Some(UID.into()),
                labels: Some(map(labels)),
                annotations: Some(map(&[("team", "payments")])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("shop/cart:2".into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "app".into(),
                    image: "shop/cart:2".into(),
                    container_id: Some("containerd://c0".into()),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn path() -> String {
        format!("/var/log/pods/shop_cart_{UID}/app/0.log")
    }

    fn get<'a>(fields: &'a SourceFields, key: &str) -> Option<&'a str> {
        fields
            .iter()
            .find(|(k, _)| k[..] == *key.as_bytes())
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn host_files_carry_the_node_and_are_never_held() {
        let enricher = Enricher::new(cache(), "node-a", WAIT);
        let mut e = enricher.track_path(Path::new("/var/log/syslog"), Instant::now());
        assert!(!e.is_holding());
        assert!(!e.poll(&enricher, Instant::now()));
        assert_eq!(get(e.fields(), "k8s.node"), Some("node-a"));
        assert_eq!(e.fields().len(), 1);
    }

    #[test]
    fn known_pod_ships_at_once_with_every_field() {
        let enricher = Enricher::new(cache(), "node-a", WAIT);
        enricher
            .cache()
            .unwrap()
            .apply_pod(&pod(&[("app", "cart")]));
        let t0 = Instant::now();
        let mut e = enricher.track_path(Path::new(&path()), t0);
        assert!(!e.poll(&enricher, t0));
        assert!(e.has_pod_metadata());
        let f = e.fields();
        assert_eq!(get(f, "k8s.pod"), Some("cart"));
        assert_eq!(get(f, "container.id"), Some("c0"));
        assert_eq!(get(f, "container.image"), Some("shop/cart:2"));
        assert_eq!(get(f, "k8s.pod.label.app"), Some("cart"));
        assert_eq!(get(f, "k8s.pod.annotation.team"), Some("payments"));
    }

    #[test]
    fn unknown_pod_is_held_until_its_metadata_arrives() {
        let enricher = Enricher::new(cache(), "node-a", WAIT);
        let t0 = Instant::now();
        let mut e = enricher.track_path(Path::new(&path()), t0);
        assert!(e.poll(&enricher, t0 + WAIT / 4), "held before the deadline");
        assert_eq!(get(e.fields(), "k8s.pod"), Some("cart"));
        assert_eq!(get(e.fields(), "container.image"), None);

        enricher
            .cache()
            .unwrap()
            .apply_pod(&pod(&[("app", "cart")]));
        assert!(
            !e.poll(&enricher, t0 + WAIT / 2),
            "released by the metadata"
        );
        assert_eq!(get(e.fields(), "container.image"), Some("shop/cart:2"));
        assert!(!e.is_holding());
    }

    #[test]
    fn unknown_pod_ships_with_path_fields_after_the_deadline_and_upgrades_later() {
        let enricher = Enricher::new(cache(), "node-a", WAIT);
        let t0 = Instant::now();
        let mut e = enricher.track_path(Path::new(&path()), t0);
        assert!(e.poll(&enricher, t0 + WAIT - Duration::from_millis(1)));
        assert!(!e.poll(&enricher, t0 + WAIT), "the deadline ends the hold");
        assert!(!e.has_pod_metadata());
        let path_only = e.fields().clone();
        assert_eq!(get(&path_only, "k8s.pod_uid"), Some(UID));
        assert_eq!(get(&path_only, "k8s.container"), Some("app"));

        // Nothing changed: the same fields (no rebuild).
        assert!(!e.poll(&enricher, t0 + WAIT * 2));
        assert!(Arc::ptr_eq(&path_only, e.fields()));

        enricher
            .cache()
            .unwrap()
            .apply_pod(&pod(&[("app", "cart")]));
        assert!(!e.poll(&enricher, t0 + WAIT * 3));
        assert_eq!(get(e.fields(), "k8s.pod.label.app"), Some("cart"));

        // A label change reaches later packages; an unrelated change rebuilds nothing.
        enricher
            .cache()
            .unwrap()
            .apply_pod(&pod(&[("app", "basket")]));
        e.poll(&enricher, t0 + WAIT * 3);
        assert_eq!(get(e.fields(), "k8s.pod.label.app"), Some("basket"));
        let current = e.fields().clone();
        enricher
            .cache()
            .unwrap()
            .apply_namespace("other", BTreeMap::new());
        let mut other = pod(&[]);
        other.metadata.uid = Some("00000000-0000-0000-0000-000000000009".into());
        enricher.cache().unwrap().apply_pod(&other);
        e.poll(&enricher, t0 + WAIT * 3);
        assert!(Arc::ptr_eq(&current, e.fields()));
    }

    #[test]
    fn release_ends_a_hold_early_with_what_is_known() {
        let enricher = Enricher::new(cache(), "node-a", WAIT);
        let t0 = Instant::now();
        let mut e = enricher.track_path(Path::new(&path()), t0);
        assert!(e.is_holding());
        e.release(&enricher);
        assert!(!e.is_holding());
        assert!(!e.poll(&enricher, t0), "not held again");
        assert_eq!(get(e.fields(), "k8s.namespace"), Some("shop"));
    }

    #[test]
    fn a_given_container_id_wins_and_is_there_without_metadata() {
        let enricher = Enricher::new(cache(), "node-a", WAIT);
        let log = PodLogRef::from_path(Path::new(&path())).unwrap();
        let pending = enricher.fields_for_container(&log, Some("cap1"));
        assert!(matches!(pending, FieldsState::Pending(_)));
        assert_eq!(get(pending.fields(), "container.id"), Some("cap1"));
        assert_eq!(get(pending.fields(), "k8s.node"), Some("node-a"));

        enricher.cache().unwrap().apply_pod(&pod(&[]));
        let ready = enricher.fields_for_container(&log, Some("cap1"));
        assert!(matches!(ready, FieldsState::Ready(_)));
        let ids: Vec<_> = ready
            .fields()
            .iter()
            .filter(|(k, _)| k[..] == *b"container.id")
            .collect();
        assert_eq!(ids.len(), 1);
        assert_eq!(get(ready.fields(), "container.id"), Some("cap1"));
        assert_eq!(
            get(
                enricher.fields_for_container(&log, None).fields(),
                "container.id"
            ),
            Some("c0")
        );

        let mut tracked = enricher.track_container(log, Some("cap1".into()), Instant::now());
        assert!(!tracked.poll(&enricher, Instant::now()));
        assert_eq!(get(tracked.fields(), "container.id"), Some("cap1"));
    }

    /// A registry whose runtime is configured but away (so unknown files are
    /// queued, never answered), with what the tests record as CRI reports.
    fn registry(dir: &Path) -> ContainerRegistry {
        let endpoint = format!("unix://{}/no-runtime.sock", dir.display());
        let cri =
            crate::discovery::CriClient::connect(&endpoint, Duration::from_millis(200)).unwrap();
        ContainerRegistry::new(Some(cri), dir.to_path_buf())
    }

    fn reported(id: &str) -> ContainerInfo {
        let path = PathBuf::from(path());
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        ContainerInfo {
            id: id.into(),
            name: "app".into(),
            sandbox_id: "s1".into(),
            pod: PodLogRef::from_path(&path),
            image: "localhost/cart:2".into(),
            image_ref: "sha256:00".into(),
            labels: map(&[("app", "cart-sandbox")]),
            annotations: map(&[("team", "payments"), ("other", "x")]),
            env: map(&[("MODE", "json")]),
            log_path: Some(path),
            pid: Some(42),
            cgroup_path: None,
            state: crate::discovery::ContainerState::Running,
            restart_count: 0,
        }
    }

    fn runtime_enricher(registry: &ContainerRegistry) -> Enricher {
        Enricher::from_sources(
            None,
            Some(registry.clone()),
            vec!["team".into()],
            "node-a",
            WAIT,
        )
    }

    #[test]
    fn the_runtime_alone_gives_every_field_of_a_known_container() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path());
        registry.record(reported("cid-1"));
        let enricher = runtime_enricher(&registry);
        let t0 = Instant::now();
        let mut e = enricher.track_path(Path::new(&path()), t0);
        assert!(!e.is_holding(), "known at open: nothing to wait for");
        assert!(!e.poll(&enricher, t0));
        assert!(e.has_runtime_metadata() && !e.has_pod_metadata());
        let f = e.fields();
        assert_eq!(get(f, "k8s.pod"), Some("cart"));
        assert_eq!(get(f, "k8s.namespace"), Some("shop"));
        assert_eq!(get(f, "k8s.container"), Some("app"));
        assert_eq!(get(f, "k8s.pod_uid"), Some(UID));
        assert_eq!(get(f, "k8s.node"), Some("node-a"));
        assert_eq!(get(f, "container.id"), Some("cid-1"));
        assert_eq!(get(f, "container.image"), Some("localhost/cart:2"));
        assert_eq!(get(f, "k8s.pod.label.app"), Some("cart-sandbox"));
        assert_eq!(get(f, "k8s.pod.annotation.team"), Some("payments"));
        assert_eq!(get(f, "k8s.pod.annotation.other"), None, "not a chosen key");
        assert!(
            f.iter()
                .all(|(k, _)| !k.starts_with(b"k8s.namespace.label.")),
            "namespace labels only come from the API"
        );

        // Host files get the node from a runtime-only enricher too.
        let host = enricher.track_path(Path::new("/var/log/syslog"), t0);
        assert_eq!(host.fields().len(), 1);
        assert_eq!(get(host.fields(), "k8s.node"), Some("node-a"));
    }

    #[test]
    fn a_container_the_runtime_has_not_reported_is_held_until_it_does() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path());
        let enricher = runtime_enricher(&registry);
        let t0 = Instant::now();
        let mut e = enricher.track_path(Path::new(&path()), t0);
        assert!(e.poll(&enricher, t0 + WAIT / 4), "held");
        assert_eq!(get(e.fields(), "container.id"), None);
        assert_eq!(
            registry.queued(),
            vec![PathBuf::from(path())],
            "the registry asks CRI about the file, not the reader"
        );

        registry.record(reported("cid-1"));
        assert!(!e.poll(&enricher, t0 + WAIT / 2), "released by the report");
        assert_eq!(get(e.fields(), "container.id"), Some("cid-1"));
        assert_eq!(get(e.fields(), "k8s.pod.label.app"), Some("cart-sandbox"));

        // A new pid or state is no new field: the same fields, not rebuilt.
        let current = e.fields().clone();
        let mut restarted = reported("cid-1");
        restarted.pid = Some(43);
        registry.record(restarted);
        e.poll(&enricher, t0 + WAIT / 2);
        assert!(Arc::ptr_eq(&current, e.fields()));
    }

    #[test]
    fn an_unknown_container_ships_with_path_fields_after_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path());
        let enricher = runtime_enricher(&registry);
        let t0 = Instant::now();
        let mut e = enricher.track_path(Path::new(&path()), t0);
        assert!(e.poll(&enricher, t0 + WAIT - Duration::from_millis(1)));
        assert!(!e.poll(&enricher, t0 + WAIT), "bounded");
        assert_eq!(enricher.missing_reason(), "cri_unavailable");
        assert_eq!(get(e.fields(), "k8s.pod_uid"), Some(UID));
        assert_eq!(get(e.fields(), "container.image"), None);
        // Reported later: later packages carry it.
        registry.record(reported("cid-1"));
        assert!(!e.poll(&enricher, t0 + WAIT * 2));
        assert_eq!(get(e.fields(), "container.image"), Some("localhost/cart:2"));
    }

    #[test]
    fn the_api_wins_where_both_know_and_the_runtime_names_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path());
        registry.record(reported("cid-run"));
        let cache = cache();
        let enricher = Enricher::from_sources(
            Some(cache.clone()),
            Some(registry.clone()),
            vec!["team".into()],
            "node-a",
            WAIT,
        );
        let t0 = Instant::now();
        let mut e = enricher.track_path(Path::new(&path()), t0);
        assert!(!e.is_holding(), "the runtime knows it: no wait for the API");
        assert_eq!(get(e.fields(), "k8s.pod.label.app"), Some("cart-sandbox"));

        cache.apply_namespace("shop", [("env".to_string(), "prod".to_string())].into());
        cache.apply_pod(&pod(&[("app", "cart")]));
        assert!(!e.poll(&enricher, t0));
        assert!(e.has_pod_metadata() && e.has_runtime_metadata());
        let f = e.fields();
        assert_eq!(
            get(f, "k8s.pod.label.app"),
            Some("cart"),
            "the API's labels"
        );
        assert_eq!(
            get(f, "container.image"),
            Some("shop/cart:2"),
            "the spec's image"
        );
        assert_eq!(get(f, "container.id"), Some("cid-run"), "the runtime's run");
        assert_eq!(get(f, "k8s.namespace.label.env"), Some("prod"));
        assert_eq!(get(f, "k8s.pod.annotation.team"), Some("payments"));
        let labels = f
            .iter()
            .filter(|(k, _)| k.starts_with(b"k8s.pod.label."))
            .count();
        assert_eq!(labels, 1, "one source of labels, not both: {f:?}");
    }
}

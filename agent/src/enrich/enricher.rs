//! The per-source side of enrichment: which fields a source's packages carry now, and
//! whether its first package waits a little for its pod's metadata.
//!
//! A container's first lines are usually read before the pod's watch event arrives. A
//! [`SourceEnrichment`] then *holds* the source's package — it keeps filling, but is
//! not shipped — until the pod is in the cache or `metadata_wait` has passed since the
//! source opened, whichever comes first. The reader thread never waits: the pipeline
//! asks [`SourceEnrichment::poll`] whenever it would ship (new data, ticks), and a
//! package that reaches its size limit ships at once ([`SourceEnrichment::release`]),
//! so a held source pins at most one package of memory. After the deadline the
//! package ships with what the log path says, counted in
//! `logtap_enrich_metadata_missing_total`; once the pod shows up, later packages carry
//! every field.
//!
//! # Performance
//!
//! Fields are built once per source and again only when the cache changed: `poll` is
//! one atomic load when nothing did. They travel as one `Arc` per package.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{CONTAINER_ID, SourceFields, container_fields, host_fields};
use crate::discovery::{PodCache, PodLogRef, PodMeta};

/// Names the lines of this node's sources: the pod cache, the node name, and how long
/// a new container's first package may wait for its pod.
pub struct Enricher {
    cache: PodCache,
    node: String,
    host: Arc<SourceFields>,
    metadata_wait: Duration,
}

/// The fields of a container source at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldsState {
    /// Its pod is in the cache: every field.
    Ready(Arc<SourceFields>),
    /// Its pod is not (yet) known: what the log path and the given container id say.
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
    pub fn new(cache: PodCache, node_name: impl Into<String>, metadata_wait: Duration) -> Enricher {
        let node = node_name.into();
        Enricher {
            host: Arc::new(host_fields(&node)),
            cache,
            node,
            metadata_wait,
        }
    }

    pub fn cache(&self) -> &PodCache {
        &self.cache
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
    /// writes the stream when the caller knows it (capture streams, the CRI runtime):
    /// it wins over the id the pod's status names for `log.restart`.
    pub fn fields_for_container(&self, log: &PodLogRef, container_id: Option<&str>) -> FieldsState {
        match self.cache.get(&log.pod_uid) {
            Some(pod) => FieldsState::Ready(Arc::new(self.build(log, Some(&pod), container_id))),
            None => FieldsState::Pending(Arc::new(self.build(log, None, container_id))),
        }
    }

    /// Tracks the fields of a file source: a container's when `path` is a CRI log
    /// path (`…/<namespace>_<pod>_<uid>/<container>/<n>.log`), else the host's.
    pub fn track_path(&self, path: &Path, now: Instant) -> SourceEnrichment {
        match PodLogRef::from_path(path) {
            Some(log) => self.track_container(log, None, now),
            None => SourceEnrichment {
                target: Target::Host,
                fields: self.host(),
                pod: None,
                seen_generation: 0,
                hold_until: None,
            },
        }
    }

    /// Tracks the fields of a container stream opened at `now` (its packages are held
    /// until `now + metadata_wait` while the pod is unknown).
    pub fn track_container(
        &self,
        log: PodLogRef,
        container_id: Option<String>,
        now: Instant,
    ) -> SourceEnrichment {
        // Read before the lookup: a change in between is seen by the next refresh.
        let seen_generation = self.cache.generation();
        let pod = self.cache.get(&log.pod_uid);
        let fields = Arc::new(self.build(&log, pod.as_deref(), container_id.as_deref()));
        SourceEnrichment {
            hold_until: pod.is_none().then(|| now + self.metadata_wait),
            target: Target::Container { log, container_id },
            fields,
            pod,
            seen_generation,
        }
    }

    fn build(
        &self,
        log: &PodLogRef,
        pod: Option<&PodMeta>,
        container_id: Option<&str>,
    ) -> SourceFields {
        let mut fields = container_fields(log, pod, &self.node);
        if let Some(id) = container_id {
            let value = Bytes::copy_from_slice(id.as_bytes());
            match fields
                .iter_mut()
                .find(|(k, _)| k[..] == *CONTAINER_ID.as_bytes())
            {
                Some((_, v)) => *v = value,
                None => {
                    // Where `container_fields` puts it: after the five path fields.
                    let at = fields.len().min(5);
                    fields.insert(at, (Bytes::from_static(CONTAINER_ID.as_bytes()), value));
                }
            }
        }
        fields
    }
}

enum Target {
    Host,
    Container {
        log: PodLogRef,
        container_id: Option<String>,
    },
}

/// The fields one source's packages carry, kept current. See the module docs.
pub struct SourceEnrichment {
    target: Target,
    fields: Arc<SourceFields>,
    /// The pod metadata `fields` was built from; `None`: from the path only.
    pod: Option<Arc<PodMeta>>,
    /// [`PodCache::generation`] when `fields` was last brought up to date.
    seen_generation: u64,
    /// While the pod is unknown and the source is new: until when its package waits.
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

    /// Whether the source's package is being held for its pod's metadata.
    pub fn is_holding(&self) -> bool {
        self.hold_until.is_some()
    }

    /// Brings the fields up to date if the cache changed, and says whether the
    /// source's package must still be held at `now` (pod unknown, deadline not
    /// passed). A hold whose deadline passed ends here, counted as missing metadata.
    pub fn poll(&mut self, enricher: &Enricher, now: Instant) -> bool {
        self.refresh(enricher);
        match self.hold_until {
            None => false,
            Some(_) if self.pod.is_some() => {
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
    /// after a last look at the cache: the next package ships with what is known.
    pub fn release(&mut self, enricher: &Enricher) {
        self.refresh(enricher);
        if self.hold_until.is_some() {
            if self.pod.is_some() {
                self.hold_until = None;
            } else {
                self.give_up(enricher);
            }
        }
    }

    fn give_up(&mut self, enricher: &Enricher) {
        self.hold_until = None;
        // Which of the two an operator must look at: the API, or a pod it never knew.
        let reason = if enricher.cache.api_up() {
            "pod_unknown"
        } else {
            "api_unavailable"
        };
        metrics::counter!("logtap_enrich_metadata_missing_total", "reason" => reason).increment(1);
        if let Target::Container { log, .. } = &self.target {
            tracing::debug!(
                namespace = %log.namespace, pod = %log.pod, container = %log.container,
                reason, "shipping without pod metadata (fields from the log path)"
            );
        }
    }

    fn refresh(&mut self, enricher: &Enricher) {
        let Target::Container { log, container_id } = &self.target else {
            return;
        };
        let generation = enricher.cache.generation();
        if generation == self.seen_generation {
            return;
        }
        self.seen_generation = generation;
        let pod = enricher.cache.get(&log.pod_uid);
        let unchanged = match (&pod, &self.pod) {
            (Some(new), Some(old)) => Arc::ptr_eq(new, old),
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return;
        }
        // A pod that disappeared (purged after its grace period) keeps the fields it
        // had: they are still true of the lines its containers wrote.
        if pod.is_some() {
            self.fields = Arc::new(enricher.build(log, pod.as_deref(), container_id.as_deref()));
            self.pod = pod;
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
        enricher.cache().apply_pod(&pod(&[("app", "cart")]));
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

        enricher.cache().apply_pod(&pod(&[("app", "cart")]));
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

        enricher.cache().apply_pod(&pod(&[("app", "cart")]));
        assert!(!e.poll(&enricher, t0 + WAIT * 3));
        assert_eq!(get(e.fields(), "k8s.pod.label.app"), Some("cart"));

        // A label change reaches later packages; an unrelated change rebuilds nothing.
        enricher.cache().apply_pod(&pod(&[("app", "basket")]));
        e.poll(&enricher, t0 + WAIT * 3);
        assert_eq!(get(e.fields(), "k8s.pod.label.app"), Some("basket"));
        let current = e.fields().clone();
        enricher.cache().apply_namespace("other", BTreeMap::new());
        let mut other = pod(&[]);
        other.metadata.uid = Some("00000000-0000-0000-0000-000000000009".into());
        enricher.cache().apply_pod(&other);
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

        enricher.cache().apply_pod(&pod(&[]));
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
}

//! Enrich: the Kubernetes fields every line of a source carries.
//!
//! The fields depend on the source (a container's log file), not on the line, so they
//! are computed once per source — when it opens, and again if its pod's metadata
//! arrives later — and attached per package, which keeps batching free of per-line
//! work.
//!
//! Three places know a container, and the fields take from each what it knows best:
//! - the log path ([`PodLogRef`]): namespace, pod, pod UID, container; always there;
//! - the container runtime (CRI, the [`ContainerRegistry`](crate::discovery::ContainerRegistry)):
//!   the id of the very run that writes the file, the image, the pod's labels and
//!   annotations as the sandbox carries them;
//! - the Kubernetes API (the [`PodCache`](crate::discovery::PodCache)): the pod's
//!   current labels and annotations, the spec's image, the namespace's labels. Where
//!   both know a value, the API's wins (the sandbox's labels are a copy made when the
//!   pod started); the runtime's container id wins (it names this file's run, the
//!   API only the current and previous ones).
//!
//! Either of the two is enough to enrich; an unreachable API server or runtime socket
//! degrades lines to what the other one and the path say instead of holding them.
//!
//! [`Enricher`] and [`SourceEnrichment`] apply this per source: the pipeline tracks
//! one `SourceEnrichment` per source and attaches its current fields to each package
//! ([`Batch::source_fields`](crate::batch::Batch::source_fields)). [`Kubernetes`]
//! runs the pod watcher that keeps the cache current.

mod enricher;
mod kubernetes;

pub use enricher::{Enricher, FieldsState, SourceEnrichment};
pub use kubernetes::Kubernetes;

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::discovery::{ContainerInfo, PodLogRef, PodMeta};

pub const POD: &str = "k8s.pod";
pub const NAMESPACE: &str = "k8s.namespace";
pub const CONTAINER: &str = "k8s.container";
pub const POD_UID: &str = "k8s.pod_uid";
pub const NODE: &str = "k8s.node";
pub const CONTAINER_ID: &str = "container.id";
pub const CONTAINER_IMAGE: &str = "container.image";
pub const POD_LABEL_PREFIX: &str = "k8s.pod.label.";
pub const POD_ANNOTATION_PREFIX: &str = "k8s.pod.annotation.";
pub const NAMESPACE_LABEL_PREFIX: &str = "k8s.namespace.label.";

/// `(key, value)` pairs attached to every line of one source, in a stable order.
pub type SourceFields = Vec<(Bytes, Bytes)>;

/// The fields of a container log source: from its path, plus the pod's metadata when
/// known.
///
/// The pod UID comes from the API when known: for a static pod the path holds the
/// kubelet's config hash, while the API knows the mirror pod by its own UID. The
/// container id is only set when the metadata names the run that wrote this file
/// (the current or the previous restart), never a guess.
pub fn container_fields(log: &PodLogRef, pod: Option<&PodMeta>, node: &str) -> SourceFields {
    container_fields_from(log, None, pod, node, &[])
}

/// The fields of a container log source from everything known about it: the path,
/// the runtime's report of the container (`runtime`), the pod's metadata from the API
/// (`pod`). `annotation_keys` chooses which of the runtime's pod annotations are
/// copied (the API's are chosen by the [`PodCache`](crate::discovery::PodCache)).
pub fn container_fields_from(
    log: &PodLogRef,
    runtime: Option<&ContainerInfo>,
    pod: Option<&PodMeta>,
    node: &str,
    annotation_keys: &[String],
) -> SourceFields {
    let mut fields = SourceFields::with_capacity(
        7 + pod.map_or(0, |p| {
            p.labels.len() + p.annotations.len() + p.namespace_labels.len()
        }) + runtime.map_or(0, |r| r.labels.len() + annotation_keys.len()),
    );
    let mut push = |key: &'static str, value: &str| {
        fields.push((Bytes::from_static(key.as_bytes()), copy(value)));
    };
    push(POD, &log.pod);
    push(NAMESPACE, &log.namespace);
    push(CONTAINER, &log.container);
    push(POD_UID, pod.map_or(&log.pod_uid, |p| &p.uid));
    push(NODE, node);
    let api_container = pod.and_then(|p| p.container(&log.container));
    let id = runtime
        .map(|r| r.id.as_str())
        .filter(|id| !id.is_empty())
        .or_else(|| api_container.and_then(|c| c.id_for_restart(log.restart)));
    if let Some(id) = id {
        push(CONTAINER_ID, id);
    }
    let image = api_container
        .map(|c| c.image.as_str())
        .filter(|i| !i.is_empty())
        .or_else(|| runtime.map(|r| r.image.as_str()).filter(|i| !i.is_empty()));
    if let Some(image) = image {
        push(CONTAINER_IMAGE, image);
    }
    let (labels, annotations): (Vec<_>, Vec<_>) = match (pod, runtime) {
        (Some(pod), _) => (
            pod.labels.iter().collect(),
            pod.annotations.iter().collect(),
        ),
        (None, Some(r)) => (
            r.labels.iter().collect(),
            r.annotations
                .iter()
                .filter(|(k, _)| annotation_keys.contains(k))
                .collect(),
        ),
        (None, None) => return fields,
    };
    let empty = BTreeMap::new();
    let namespace_labels = pod.map_or(&empty, |p| &*p.namespace_labels);
    let prefixed = [
        (POD_LABEL_PREFIX, labels),
        (POD_ANNOTATION_PREFIX, annotations),
        (NAMESPACE_LABEL_PREFIX, namespace_labels.iter().collect()),
    ];
    for (prefix, pairs) in prefixed {
        for (k, v) in pairs {
            let key = [prefix.as_bytes(), k.as_bytes()].concat();
            fields.push((Bytes::from(key), copy(v)));
        }
    }
    fields
}

/// The fields of a host log file (not a container's): the node.
pub fn host_fields(node: &str) -> SourceFields {
    vec![(Bytes::from_static(NODE.as_bytes()), copy(node))]
}

fn copy(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::discovery::ContainerMeta;

    fn log_ref(restart: u32) -> PodLogRef {
        PodLogRef {
            namespace: "shop".into(),
            pod: "cart-7f9c".into(),
            pod_uid: "3f4a9b8c7d6e5f4a3b2c1d0e9f8a7b6c".into(),
            container: "app".into(),
            restart,
        }
    }

    fn meta() -> PodMeta {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        PodMeta {
            namespace: "shop".into(),
            name: "cart-7f9c".into(),
            uid: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
            labels: map(&[("app", "cart"), ("tier", "web")]),
            annotations: map(&[("team", "payments")]),
            node_name: Some("node-a".into()),
            containers: vec![
                ContainerMeta {
                    name: "init".into(),
                    image: "busybox:1".into(),
                    container_id: Some("i1".into()),
                    restart_count: 0,
                    last_container_id: None,
                },
                ContainerMeta {
                    name: "app".into(),
                    image: "shop/cart:2.1".into(),
                    container_id: Some("c3".into()),
                    restart_count: 3,
                    last_container_id: Some("c2".into()),
                },
            ],
            namespace_labels: Arc::new(map(&[("env", "prod")])),
            mirror_of: Some("3f4a9b8c7d6e5f4a3b2c1d0e9f8a7b6c".into()),
        }
    }

    fn as_strings(fields: &SourceFields) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn path_only_when_the_pod_is_unknown() {
        let fields = container_fields(&log_ref(0), None, "node-a");
        assert_eq!(
            as_strings(&fields),
            pairs(&[
                ("k8s.pod", "cart-7f9c"),
                ("k8s.namespace", "shop"),
                ("k8s.container", "app"),
                ("k8s.pod_uid", "3f4a9b8c7d6e5f4a3b2c1d0e9f8a7b6c"),
                ("k8s.node", "node-a"),
            ])
        );
    }

    #[test]
    fn everything_when_the_pod_is_known() {
        let meta = meta();
        let fields = container_fields(&log_ref(3), Some(&meta), "node-a");
        assert_eq!(
            as_strings(&fields),
            pairs(&[
                ("k8s.pod", "cart-7f9c"),
                ("k8s.namespace", "shop"),
                ("k8s.container", "app"),
                ("k8s.pod_uid", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"),
                ("k8s.node", "node-a"),
                ("container.id", "c3"),
                ("container.image", "shop/cart:2.1"),
                ("k8s.pod.label.app", "cart"),
                ("k8s.pod.label.tier", "web"),
                ("k8s.pod.annotation.team", "payments"),
                ("k8s.namespace.label.env", "prod"),
            ])
        );
    }

    #[test]
    fn container_id_of_the_run_that_wrote_the_file() {
        let meta = meta();
        let id = |restart| {
            let fields = container_fields(&log_ref(restart), Some(&meta), "node-a");
            as_strings(&fields)
                .into_iter()
                .find(|(k, _)| k == CONTAINER_ID)
                .map(|(_, v)| v)
        };
        assert_eq!(id(3).as_deref(), Some("c3"));
        assert_eq!(id(2).as_deref(), Some("c2"));
        // Older runs: the API no longer says which container wrote them.
        assert_eq!(id(1), None);
        assert_eq!(id(4), None);
    }

    #[test]
    fn container_missing_from_the_pod_keeps_the_path_fields_and_labels() {
        let mut log = log_ref(0);
        log.container = "debugger".into();
        let meta = meta();
        let fields = as_strings(&container_fields(&log, Some(&meta), "node-a"));
        assert!(fields.contains(&("k8s.container".into(), "debugger".into())));
        assert!(fields.contains(&("k8s.pod.label.app".into(), "cart".into())));
        assert!(
            !fields
                .iter()
                .any(|(k, _)| k == CONTAINER_IMAGE || k == CONTAINER_ID)
        );
    }

    #[test]
    fn host_logs_get_the_node() {
        assert_eq!(
            as_strings(&host_fields("node-a")),
            pairs(&[("k8s.node", "node-a")])
        );
    }
}

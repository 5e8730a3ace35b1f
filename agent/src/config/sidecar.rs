//! `mode: sidecar`: logtap as a container in an application's pod, reading files the
//! application writes into a shared `emptyDir`. Unprivileged, no host mount, no
//! container runtime, no Kubernetes API: the pod's identity comes from the downward
//! API through the environment, and is put on every record.
//!
//! [`apply`] runs before the rest of validation: it rejects what needs the node
//! (capture, selectors, files inside other containers, the API) and switches off
//! what would otherwise turn itself on in a pod (the Kubernetes watcher defaults to
//! on wherever `KUBERNETES_SERVICE_HOST` is set; the CRI client and environment
//! declarations to on everywhere).

use bytes::Bytes;

use super::raw::{RawConfig, RawMode};
use super::{ConfigError, Validator};

/// The downward-API variables read, and the record field each becomes. The first
/// two are required: a record must say whose it is.
const IDENTITY: [(&str, &str, bool); 5] = [
    ("POD_NAMESPACE", "k8s.namespace", true),
    ("POD_NAME", "k8s.pod", true),
    ("POD_UID", "k8s.pod_uid", false),
    ("NODE_NAME", "k8s.node", false),
    // The application container's name is no downward-API field: the manifest sets it.
    ("APP_CONTAINER_NAME", "k8s.container", false),
];

/// In sidecar mode, checks and adjusts `raw` and returns the pod's fields for every
/// source; `None` in node mode.
pub(super) fn apply(
    v: &Validator,
    raw: &mut RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Vec<(Bytes, Bytes)>>, ConfigError> {
    if raw.mode != RawMode::Sidecar {
        return Ok(None);
    }
    let needs_node = |field: &str, what: &str| {
        v.invalid(
            field,
            format!("mode: sidecar has no {what}; run the node agent (DaemonSet) for it"),
        )
    };
    if raw.capture.enabled {
        return Err(needs_node("capture.enabled", "eBPF capture"));
    }
    if raw.kubernetes.enabled == Some(true) || raw.kubernetes.api_url.is_some() {
        return Err(needs_node(
            "kubernetes",
            "Kubernetes API (the pod's identity comes from the downward API)",
        ));
    }
    if raw.collections.enabled == Some(true) {
        return Err(needs_node("collections.enabled", "LogCollection watcher"));
    }
    for (i, s) in raw.sources.iter().enumerate() {
        if s.selector.is_some() {
            return Err(needs_node(
                &format!("sources[{i}].selector"),
                "container runtime to select containers with",
            ));
        }
        if !s.container_paths.is_empty() {
            return Err(needs_node(
                &format!("sources[{i}].container_paths"),
                "view into other containers (read the shared volume's path instead)",
            ));
        }
    }
    raw.kubernetes.enabled = Some(false);
    raw.collections.enabled = Some(false);
    raw.cri.enabled = false;
    raw.env_configs.enabled = false;

    let mut fields = Vec::new();
    for (variable, field, required) in IDENTITY {
        match env(variable).filter(|s| !s.trim().is_empty()) {
            Some(value) => fields.push((Bytes::from_static(field.as_bytes()), Bytes::from(value))),
            None if required => {
                return Err(v.invalid(
                    "mode",
                    format!(
                        "sidecar: {variable} is not set (give the container \
                         POD_NAMESPACE and POD_NAME from the downward API, fieldRef \
                         metadata.namespace and metadata.name)"
                    ),
                ));
            }
            None => {}
        }
    }
    Ok(Some(fields))
}

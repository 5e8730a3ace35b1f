//! The `kubernetes_events` section: Kubernetes events (`events.k8s.io/v1`) shipped by
//! one agent per cluster, chosen by a `coordination.k8s.io/v1` Lease (see
//! `crate::events`). Absent means off.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validate::Validator;
use super::{ConfigError, KubernetesConfig, SinkConfig};

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetesEvents {
    /// The sink the events go to.
    #[serde(default = "default_sink")]
    pub sink: String,
    #[serde(default)]
    pub lease: RawLease,
    /// This agent's name in the Lease; default: `POD_NAME`, else the node name.
    #[serde(default)]
    pub identity: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLease {
    #[serde(default = "default_lease_namespace")]
    pub namespace: String,
    #[serde(default = "default_lease_name")]
    pub name: String,
    /// How long a leader that stopped renewing keeps the Lease (renewed every third).
    #[serde(default = "default_lease_duration")]
    pub duration: String,
}

impl Default for RawLease {
    fn default() -> Self {
        RawLease {
            namespace: default_lease_namespace(),
            name: default_lease_name(),
            duration: default_lease_duration(),
        }
    }
}

fn default_sink() -> String {
    "local".into()
}
fn default_lease_namespace() -> String {
    "logtap-system".into()
}
fn default_lease_name() -> String {
    "logtap-events".into()
}
fn default_lease_duration() -> String {
    "15s".into()
}

/// The validated `kubernetes_events` section.
#[derive(Clone, Debug)]
pub struct KubernetesEventsConfig {
    pub sink: Arc<str>,
    pub lease_namespace: String,
    pub lease_name: String,
    /// Whole seconds (the Lease's `leaseDurationSeconds`), at least 3.
    pub lease_duration: Duration,
    pub identity: String,
    /// The API server's URL; `None` infers it (see `KubernetesConfig::api_url`).
    pub api_url: Option<String>,
}

/// The shortest lease: renewals every third of it must fit round trips to the API.
const MIN_LEASE: Duration = Duration::from_secs(3);

impl Validator {
    pub(crate) fn kubernetes_events(
        &self,
        raw: Option<&RawKubernetesEvents>,
        kubernetes: &KubernetesConfig,
        sinks: &BTreeMap<Arc<str>, SinkConfig>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<KubernetesEventsConfig>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        if !kubernetes.enabled {
            return Err(self.invalid(
                "kubernetes_events",
                "needs the Kubernetes API: set kubernetes.enabled (or kubernetes.api_url)".into(),
            ));
        }
        if !sinks.contains_key(raw.sink.as_str()) {
            return Err(self.invalid(
                "kubernetes_events.sink",
                format!("no sink named {:?}", raw.sink),
            ));
        }
        for (field, value) in [
            ("kubernetes_events.lease.namespace", &raw.lease.namespace),
            ("kubernetes_events.lease.name", &raw.lease.name),
        ] {
            // A DNS-1123 name: anything else could not be a path segment of the API.
            let valid = !value.is_empty()
                && value.len() <= 253
                && value.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !valid {
                return Err(
                    self.invalid(field, format!("{value:?}: expected a lowercase DNS name"))
                );
            }
        }
        let duration = self.duration("kubernetes_events.lease.duration", &raw.lease.duration)?;
        if duration < MIN_LEASE || duration.subsec_nanos() != 0 || duration.as_secs() > 3600 {
            return Err(self.invalid(
                "kubernetes_events.lease.duration",
                format!("{:?}: whole seconds from 3s to 1h", raw.lease.duration),
            ));
        }
        let identity = match &raw.identity {
            Some(i) if i.trim().is_empty() => {
                return Err(self.invalid("kubernetes_events.identity", "must not be empty".into()));
            }
            Some(i) => i.clone(),
            None => env("POD_NAME")
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| kubernetes.node_name.clone()),
        };
        Ok(Some(KubernetesEventsConfig {
            sink: Arc::from(raw.sink.as_str()),
            lease_namespace: raw.lease.namespace.clone(),
            lease_name: raw.lease.name.clone(),
            lease_duration: duration,
            identity,
            api_url: kubernetes.api_url.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::raw::RawConfig;

    const SINKS: &str = "sinks:\n  local: {type: stdout}\n";

    fn parse(yaml: &str, pod_name: Option<&str>) -> Result<Config, String> {
        let raw: RawConfig = yaml_serde::from_str(yaml).map_err(|e| e.to_string())?;
        let pod_name = pod_name.map(str::to_owned);
        Config::from_raw_in(raw, "t.yaml", &|name| match name {
            "POD_NAME" => pod_name.clone(),
            _ => None,
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn absent_is_off_and_present_needs_the_api() {
        assert!(parse(SINKS, None).unwrap().kubernetes_events.is_none());
        let err = parse(&format!("{SINKS}kubernetes_events: {{}}\n"), None).unwrap_err();
        assert!(
            err.contains("kubernetes_events") && err.contains("kubernetes.enabled"),
            "{err}"
        );
        let api = "kubernetes: {api_url: \"http://127.0.0.1:1\", node_name: n1}\n";
        let c = parse(
            &format!("{SINKS}{api}kubernetes_events: {{}}\n"),
            Some("logtap-x"),
        )
        .unwrap()
        .kubernetes_events
        .unwrap();
        assert_eq!(c.identity, "logtap-x");
        assert_eq!(c.lease_namespace, "logtap-system");
        assert_eq!(c.lease_name, "logtap-events");
        assert_eq!(c.lease_duration.as_secs(), 15);
        let c = parse(&format!("{SINKS}{api}kubernetes_events: {{}}\n"), None).unwrap();
        assert_eq!(c.kubernetes_events.unwrap().identity, "n1", "the node name");
    }

    #[test]
    fn mistakes_name_the_field() {
        let api = "kubernetes: {api_url: \"http://127.0.0.1:1\", node_name: n1}\n";
        for (section, field) in [
            ("{lease: {duraton: 3s}}", "duraton"),
            ("{sink: nowhere}", "kubernetes_events.sink"),
            (
                "{lease: {duration: 1s}}",
                "kubernetes_events.lease.duration",
            ),
            (
                "{lease: {duration: 2500ms}}",
                "kubernetes_events.lease.duration",
            ),
            ("{lease: {name: Bad_Name}}", "kubernetes_events.lease.name"),
            ("{identity: \" \"}", "kubernetes_events.identity"),
        ] {
            let err =
                parse(&format!("{SINKS}{api}kubernetes_events: {section}\n"), None).unwrap_err();
            assert!(err.contains(field), "{section}: {err}");
        }
    }
}

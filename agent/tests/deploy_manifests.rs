//! Offline validation of `deploy/`: every manifest parses as its Kubernetes type with no
//! field the type does not know (a typo would be silently dropped by the API server's
//! pruning or by kubectl's client), the objects refer to each other consistently, the
//! node config in the ConfigMap is a valid logtap config, the CRD is the one the Rust
//! type generates, and the dashboard queries only metrics the agent exports.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResourceExt;
use logtap::config::Config;
use logtap::config::crd::{LogCollection, crd_yaml};
use serde::de::DeserializeOwned;

#[path = "../../xtask/src/oci.rs"]
#[allow(dead_code, reason = "only the image's name is used here")]
mod oci;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The YAML documents of a file, as JSON values (comments and empty documents dropped).
fn documents(name: &str) -> Vec<serde_json::Value> {
    let text = read(name);
    yaml_serde::Deserializer::from_str(&text)
        .map(|doc| {
            let v: yaml_serde::Value =
                serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Parses `doc` as `T` and checks that nothing was lost on the way: k8s-openapi's
/// types ignore unknown fields, so a misspelt or misplaced field would vanish here.
fn typed<T: DeserializeOwned + serde::Serialize>(name: &str, doc: &serde_json::Value) -> T {
    let t: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    let mut lost = Vec::new();
    differences(doc, &back, String::new(), &mut lost);
    assert!(
        lost.is_empty(),
        "{name}: fields the Kubernetes type does not know (or of the wrong type): {lost:?}"
    );
    t
}

/// JSON paths where `got` differs from `want`.
fn differences(
    want: &serde_json::Value,
    got: &serde_json::Value,
    at: String,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) => differences(wv, gv, format!("{at}.{k}"), out),
                    None => out.push(format!("{at}.{k}")),
                }
            }
            out.extend(
                g.keys()
                    .filter(|k| !w.contains_key(*k))
                    .map(|k| format!("{at}.{k} (added)")),
            );
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                differences(wv, gv, format!("{at}[{i}]"), out);
            }
        }
        _ if want != got => out.push(at),
        _ => {}
    }
}

fn kind(doc: &serde_json::Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

struct Manifests {
    namespace: Namespace,
    service_account: ServiceAccount,
    cluster_role: ClusterRole,
    binding: ClusterRoleBinding,
    lease_role: Role,
    lease_binding: RoleBinding,
    config_map: ConfigMap,
    service: Service,
    daemon_set: DaemonSet,
}

fn manifests() -> Manifests {
    let one = |name: &str| {
        let mut docs = documents(name);
        assert_eq!(docs.len(), 1, "{name}: one object per file");
        docs.remove(0)
    };
    let rbac = documents("rbac.yaml");
    let find = |k: &str| {
        let found: Vec<_> = rbac.iter().filter(|d| kind(d) == k).collect();
        assert_eq!(found.len(), 1, "rbac.yaml: one {k}");
        found[0].clone()
    };
    assert_eq!(
        rbac.len(),
        5,
        "rbac.yaml: ServiceAccount, ClusterRole, ClusterRoleBinding, Role, RoleBinding"
    );
    Manifests {
        namespace: typed("namespace.yaml", &one("namespace.yaml")),
        service_account: typed("rbac.yaml", &find("ServiceAccount")),
        cluster_role: typed("rbac.yaml", &find("ClusterRole")),
        binding: typed("rbac.yaml", &find("ClusterRoleBinding")),
        lease_role: typed("rbac.yaml", &find("Role")),
        lease_binding: typed("rbac.yaml", &find("RoleBinding")),
        config_map: typed("configmap.yaml", &one("configmap.yaml")),
        service: typed("service.yaml", &one("service.yaml")),
        daemon_set: typed("daemonset.yaml", &one("daemonset.yaml")),
    }
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().expect("metadata.name")
}

#[test]
fn crd_yaml_is_the_generated_one() {
    assert!(
        read("crd.yaml") == crd_yaml(),
        "deploy/crd.yaml is stale: run `cargo xtask gen-crd`"
    );
    let docs = documents("crd.yaml");
    let crd: CustomResourceDefinition = typed("crd.yaml", &docs[0]);
    assert_eq!(crd, LogCollection::crd());
    assert_eq!(crd.spec.group, "logtap.dev");
    assert_eq!(crd.spec.names.plural, "logcollections");
}

#[test]
fn namespaced_objects_live_in_the_namespace() {
    let m = manifests();
    let ns = name_of(&m.namespace.metadata);
    for (what, meta) in [
        ("ServiceAccount", &m.service_account.metadata),
        ("ConfigMap", &m.config_map.metadata),
        ("Service", &m.service.metadata),
        ("DaemonSet", &m.daemon_set.metadata),
    ] {
        assert_eq!(meta.namespace.as_deref(), Some(ns), "{what}");
    }
}

#[test]
fn rbac_binds_the_agent_to_what_it_needs() {
    let m = manifests();
    assert_eq!(m.binding.role_ref.kind, "ClusterRole");
    assert_eq!(m.binding.role_ref.name, name_of(&m.cluster_role.metadata));
    let subjects = m.binding.subjects.as_deref().unwrap_or_default();
    assert!(subjects.iter().any(|s| s.kind == "ServiceAccount"
        && s.name == name_of(&m.service_account.metadata)
        && s.namespace == m.service_account.metadata.namespace));

    let rules = m.cluster_role.rules.as_deref().unwrap_or_default();
    let allows = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            let has = |list: &Option<Vec<String>>, x: &str| {
                list.as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|v| v == x || v == "*")
            };
            has(&r.api_groups, group)
                && has(&r.resources, resource)
                && r.verbs.iter().any(|v| v == verb || v == "*")
        })
    };
    let crd = LogCollection::crd();
    let group = crd.spec.group.as_str();
    let plural = crd.spec.names.plural.as_str();
    for verb in ["get", "list", "watch"] {
        assert!(allows("", "pods", verb), "pods {verb}");
        assert!(allows("", "namespaces", verb), "namespaces {verb}");
        assert!(allows(group, plural, verb), "{plural} {verb}");
    }
    for verb in ["update", "patch"] {
        assert!(
            allows(group, &format!("{plural}/status"), verb),
            "status {verb}"
        );
    }
    // Least privilege: the agent never writes specs or pods.
    for verb in ["create", "update", "patch", "delete"] {
        assert!(!allows(group, plural, verb), "{plural} {verb}");
        assert!(!allows("", "pods", verb), "pods {verb}");
    }
}

/// The ConfigMap ships the cluster's events: the agent may list and watch them, and
/// keep its Lease — in the Lease's namespace only, by name where the API allows.
#[test]
fn the_events_and_their_lease_are_granted_as_the_config_names_them() {
    let m = manifests();
    let text = m.config_map.data.as_ref().unwrap()["logtap.yaml"].as_str();
    let config = Config::parse(text, "configmap.yaml").unwrap_or_else(|e| panic!("{e}"));
    let events = config
        .kubernetes_events
        .as_ref()
        .expect("the DaemonSet ships events");
    let env = &m.daemon_set.spec.template.spec.as_ref().unwrap().containers[0].env;
    assert!(
        env.iter().flatten().any(|e| e.name == "POD_NAME"
            && e.value_from
                .as_ref()
                .and_then(|f| f.field_ref.as_ref())
                .is_some_and(|f| f.field_path == "metadata.name")),
        "POD_NAME names the agent in the Lease"
    );

    let grants = |rules: &[k8s_openapi::api::rbac::v1::PolicyRule],
                  group: &str,
                  resource: &str,
                  name: Option<&str>,
                  verb: &str| {
        rules.iter().any(|r| {
            let has = |list: &Option<Vec<String>>, x: &str| {
                list.as_deref().unwrap_or_default().iter().any(|v| v == x)
            };
            let names_ok = match (&r.resource_names, name) {
                (None, _) => true,
                (Some(names), Some(n)) => names.iter().any(|v| v == n),
                (Some(_), None) => false,
            };
            has(&r.api_groups, group)
                && has(&r.resources, resource)
                && names_ok
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    let cluster = m.cluster_role.rules.as_deref().unwrap_or_default();
    for verb in ["list", "watch"] {
        assert!(
            grants(cluster, "events.k8s.io", "events", None, verb),
            "events {verb}"
        );
    }
    assert!(
        !grants(cluster, "coordination.k8s.io", "leases", None, "update"),
        "no cluster-wide leases"
    );

    assert_eq!(
        m.lease_role.metadata.namespace.as_deref(),
        Some(events.lease_namespace.as_str()),
        "the Role is in the Lease's namespace"
    );
    let role = m.lease_role.rules.as_deref().unwrap_or_default();
    assert!(grants(
        role,
        "coordination.k8s.io",
        "leases",
        None,
        "create"
    ));
    for verb in ["get", "update"] {
        assert!(
            grants(
                role,
                "coordination.k8s.io",
                "leases",
                Some(&events.lease_name),
                verb
            ),
            "lease {verb}"
        );
        assert!(
            !grants(
                role,
                "coordination.k8s.io",
                "leases",
                Some("someone-elses-lease"),
                verb
            ),
            "only its own lease: {verb}"
        );
    }
    assert_eq!(m.lease_binding.role_ref.kind, "Role");
    assert_eq!(
        m.lease_binding.role_ref.name,
        name_of(&m.lease_role.metadata)
    );
    assert_eq!(
        m.lease_binding.metadata.namespace,
        m.lease_role.metadata.namespace
    );
    let subjects = m.lease_binding.subjects.as_deref().unwrap_or_default();
    assert!(subjects.iter().any(|s| s.kind == "ServiceAccount"
        && s.name == name_of(&m.service_account.metadata)
        && s.namespace == m.service_account.metadata.namespace));
}

/// `cargo xtask image` tags `<repository>:<crate version>`: the DaemonSet runs that
/// (a release bumps both; `daemonset_cri.rs` runs the image under this name).
#[test]
fn daemonset_names_the_image_xtask_builds() {
    let m = manifests();
    let pod = m.daemon_set.spec.template.spec.unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some(format!("{}:{}", oci::AGENT_REPOSITORY, env!("CARGO_PKG_VERSION")).as_str())
    );
}

#[test]
fn daemonset_is_consistent_with_its_config_and_rbac() {
    let m = manifests();
    let ds = &m.daemon_set;
    let spec = &ds.spec;
    let pod_meta = spec.template.metadata.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();

    // The selector selects the template; the Service selects the pods.
    let pod_labels = pod_meta.labels.clone().unwrap_or_default();
    for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(pod_labels.get(k), Some(v), "selector label {k}");
    }
    let svc = m.service.spec.as_ref().unwrap();
    for (k, v) in svc.selector.as_ref().unwrap() {
        assert_eq!(pod_labels.get(k), Some(v), "Service selector label {k}");
    }

    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(name_of(&m.service_account.metadata))
    );
    assert_eq!(pod.host_pid, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint"
    );
    let update = spec.update_strategy.as_ref().unwrap();
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        update.rolling_update.as_ref().unwrap().max_unavailable,
        Some(IntOrString::String("10%".into()))
    );

    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert_eq!(
        c.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    let env: BTreeMap<_, _> = c
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    let node_name = env["NODE_NAME"].value_from.as_ref().unwrap();
    assert_eq!(
        node_name.field_ref.as_ref().unwrap().field_path,
        "spec.nodeName"
    );
    let resources = c.resources.as_ref().unwrap();
    assert!(
        resources
            .requests
            .as_ref()
            .is_some_and(|r| r.contains_key("memory"))
    );
    assert!(
        resources
            .limits
            .as_ref()
            .is_some_and(|r| r.contains_key("memory"))
    );

    // Every mount names a volume, mount paths are unique.
    let volumes: BTreeMap<_, _> = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    let mut paths = BTreeSet::new();
    for vm in mounts {
        assert!(
            volumes.contains_key(vm.name.as_str()),
            "mount {} has no volume",
            vm.name
        );
        assert!(
            paths.insert(vm.mount_path.as_str()),
            "{} mounted twice",
            vm.mount_path
        );
    }
    let host_path_of = |mount_path: &str| {
        let vm = mounts.iter().find(|m| m.mount_path == mount_path)?;
        Some(volumes[vm.name.as_str()].host_path.as_ref()?.path.clone())
    };
    // What the issue asks the agent to see of the node.
    assert_eq!(host_path_of("/var/log").as_deref(), Some("/var/log"));
    assert!(
        host_path_of("/sys/kernel/tracing").is_some()
            || host_path_of("/sys/kernel/debug").is_some()
    );
    assert!(
        mounts
            .iter()
            .any(|m| m.mount_path.ends_with("containerd.sock"))
    );
    // Only the host paths the agent uses (docs/security.md): not the host root (files
    // inside containers go through /proc/<pid>/root), and of bpffs only logtap's own
    // pin directory. Each is read-only but the data directory, the pin directory and
    // the CRI socket, and none propagates mounts back to the host.
    let used = [
        "/var/log",
        "/var/lib/logtap",
        "/sys/kernel/tracing",
        "/sys/kernel/debug",
        "/run/containerd/containerd.sock",
        "/sys/fs/bpf/logtap",
    ];
    for vm in mounts {
        let Some(host) = volumes[vm.name.as_str()].host_path.as_ref() else {
            continue;
        };
        assert!(
            used.contains(&host.path.as_str()),
            "hostPath {} is not used",
            host.path
        );
        let writable = [
            "/var/lib/logtap",
            "/run/containerd/containerd.sock",
            "/sys/fs/bpf/logtap",
        ];
        assert_eq!(
            vm.read_only,
            (!writable.contains(&host.path.as_str())).then_some(true),
            "{} read-only",
            host.path
        );
        assert_ne!(
            vm.mount_propagation.as_deref(),
            Some("Bidirectional"),
            "{}",
            vm.mount_path
        );
    }
    let security = c.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));

    // `--config PATH` is a key of the mounted ConfigMap, and it is a valid config.
    let args = c.args.as_deref().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    let at = args.iter().position(|a| a == "--config").expect("--config");
    let config_path = Path::new(&args[at + 1]);
    let mount = mounts
        .iter()
        .find(|m| config_path.starts_with(&m.mount_path))
        .expect("the config file is on a mount");
    let cm_ref = volumes[mount.name.as_str()]
        .config_map
        .as_ref()
        .expect("the config mount is a ConfigMap");
    assert_eq!(cm_ref.name, name_of(&m.config_map.metadata));
    let key = config_path
        .strip_prefix(&mount.mount_path)
        .unwrap()
        .to_str()
        .unwrap();
    let data = m.config_map.data.as_ref().unwrap();
    let text = data
        .get(key)
        .unwrap_or_else(|| panic!("ConfigMap has no key {key:?}"));
    let config = Config::parse(text, "configmap.yaml").unwrap_or_else(|e| panic!("{e}"));

    // data_dir (checkpoints, store) is on a writable hostPath, so it survives restarts.
    let data_mount = mounts
        .iter()
        .find(|m| config.data_dir.starts_with(&m.mount_path))
        .expect("data_dir is mounted");
    assert!(volumes[data_mount.name.as_str()].host_path.is_some());
    assert_ne!(data_mount.read_only, Some(true));
    // The probes' pins are on the host's bpffs, where they outlive the pod.
    let capture = config.capture.as_ref().expect("capture is configured");
    let pin_dir = capture.pin_dir.as_deref().expect("capture.pin is on");
    let pin_mount = mounts
        .iter()
        .find(|m| pin_dir.starts_with(&m.mount_path))
        .expect("capture.pin_dir is mounted");
    assert_eq!(
        volumes[pin_mount.name.as_str()]
            .host_path
            .as_ref()
            .map(|h| h.path.as_str()),
        Some("/sys/fs/bpf/logtap"),
        "the pin directory is logtap's own on the node's bpffs"
    );
    // The next pod waits for its predecessor's pins longer than the kubelet lets that
    // one drain after SIGTERM (docs/capture.md, "Two agents at once").
    let grace = pod
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    assert!(
        capture.pin_wait > std::time::Duration::from_secs(grace.unsigned_abs()),
        "capture.pin_wait {:?} does not outlast terminationGracePeriodSeconds {grace}",
        capture.pin_wait
    );
    // Every include glob's fixed prefix is on a mount.
    for s in &config.sources {
        for glob in &s.include {
            let fixed: PathBuf = Path::new(glob)
                .components()
                .take_while(|c| {
                    !c.as_os_str()
                        .to_string_lossy()
                        .contains(['*', '?', '[', '{'])
                })
                .collect();
            assert!(
                mounts.iter().any(|m| fixed.starts_with(&m.mount_path)),
                "{glob} is not under any mount"
            );
        }
    }

    // The probes, the scrape annotation and the Service hit the metrics listener, which
    // must listen beyond loopback for the kubelet and Prometheus to reach it.
    let listen: SocketAddr = config.metrics_listen.expect("metrics enabled");
    assert!(
        listen.ip().is_unspecified(),
        "metrics.listen {listen} is not reachable from outside the pod"
    );
    let ports = c.ports.as_deref().unwrap_or_default();
    let resolve = |p: &IntOrString| match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            ports
                .iter()
                .find(|cp| cp.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no container port named {name}"))
                .container_port
        }
    };
    // Liveness is the pipeline's health (a dead or stalled thread), not the listener's:
    // `/metrics` answers 200 from its own thread however wedged the pipeline is.
    for (what, probe, path) in [
        ("liveness", &c.liveness_probe, "/healthz"),
        ("readiness", &c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what} probe"));
        assert_eq!(
            resolve(&get.port),
            i32::from(listen.port()),
            "{what} probe port"
        );
        assert_eq!(get.path.as_deref(), Some(path), "{what} probe path");
    }
    let annotations = pod_meta.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get("prometheus.io/port"),
        Some(&listen.port().to_string())
    );
    for sp in svc.ports.as_deref().unwrap_or_default() {
        assert_eq!(
            resolve(sp.target_port.as_ref().unwrap()),
            i32::from(listen.port())
        );
    }
}

#[test]
fn servicemonitor_scrapes_the_service() {
    let m = manifests();
    let docs = documents("with-servicemonitor/servicemonitor.yaml");
    assert_eq!(docs.len(), 1);
    let sm = &docs[0];
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["kind"], "ServiceMonitor");
    assert!(sm["metadata"]["name"].is_string());
    assert_eq!(
        sm["metadata"]["namespace"].as_str(),
        m.service.metadata.namespace.as_deref()
    );
    let service_labels = m.service.metadata.labels.clone().unwrap_or_default();
    let match_labels = sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    assert!(!match_labels.is_empty());
    for (k, v) in match_labels {
        assert_eq!(
            service_labels.get(k).map(String::as_str),
            v.as_str(),
            "label {k}"
        );
    }
    let port_names: Vec<_> = m
        .service
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.name.clone())
        .collect();
    let endpoints = sm["spec"]["endpoints"].as_array().expect("endpoints");
    assert!(!endpoints.is_empty());
    for e in endpoints {
        let port = e["port"].as_str().expect("endpoint port name");
        assert!(
            port_names.iter().any(|p| p == port),
            "no Service port {port}"
        );
    }
}

/// The NetworkPolicy overlay admits ingress to the agent pods on the metrics port only.
#[test]
fn networkpolicy_admits_only_the_metrics_port() {
    let m = manifests();
    let docs = documents("with-networkpolicy/networkpolicy.yaml");
    assert_eq!(docs.len(), 1);
    let np: NetworkPolicy = typed("with-networkpolicy/networkpolicy.yaml", &docs[0]);
    assert_eq!(np.metadata.namespace, m.daemon_set.metadata.namespace);
    let spec = np.spec.as_ref().unwrap();
    let template = &m.daemon_set.spec.template;
    let pod_labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
    let selects = spec
        .pod_selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap();
    assert!(!selects.is_empty());
    for (k, v) in selects {
        assert_eq!(pod_labels.get(k), Some(v), "podSelector label {k}");
    }
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_string()][..])
    );
    let container = &template.spec.as_ref().unwrap().containers[0];
    let metrics_port = container
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .unwrap();
    let rules = spec.ingress.as_deref().unwrap_or_default();
    assert!(!rules.is_empty());
    for rule in rules {
        assert!(
            rule.from.as_ref().is_some_and(|f| !f.is_empty()),
            "a rule names its peers"
        );
        let ports = rule.ports.as_deref().unwrap_or_default();
        assert!(!ports.is_empty(), "a rule without ports admits every port");
        for p in ports {
            let admits = match p.port.as_ref().unwrap() {
                IntOrString::Int(n) => *n == metrics_port.container_port,
                IntOrString::String(name) => metrics_port.name.as_ref() == Some(name),
            };
            assert!(admits, "{p:?}");
        }
    }
    let k = kustomization("with-networkpolicy/");
    let listed = strings(&k["resources"]);
    assert!(listed.contains("..") && listed.contains("networkpolicy.yaml"));
}

/// Metric names described in the agent's catalogue (`metrics::catalogue`, which
/// `metrics::describe` registers).
fn metric_catalogue() -> BTreeSet<String> {
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics/catalogue.rs"),
    )
    .unwrap();
    let re = regex::Regex::new(r#"(?m)^\s*[A-Z][A-Z0-9_]* = "(logtap_[a-z0-9_]+)","#).unwrap();
    re.captures_iter(&source)
        .map(|c| c[1].to_string())
        .collect()
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let catalogue = metric_catalogue();
    assert!(catalogue.len() > 20, "catalogue parsed: {catalogue:?}");
    let dash: serde_json::Value = serde_json::from_str(&read("grafana-dashboard.json")).unwrap();
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let panels = dash["panels"].as_array().expect("panels");
    let mut queried = BTreeSet::new();
    let metric = regex::Regex::new(r"logtap_[a-z0-9_]+").unwrap();
    for p in panels {
        let targets = p["targets"].as_array().expect("every panel has targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            for m in metric.find_iter(expr) {
                let name = m.as_str();
                // Histograms are exported as summaries (`_sum`, `_count`) or buckets.
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| catalogue.contains(*b)))
                    .unwrap_or(name);
                assert!(
                    catalogue.contains(base),
                    "dashboard queries unknown metric {name}"
                );
                queried.insert(base.to_string());
            }
        }
    }
    for wanted in [
        "logtap_lines_read_total",
        "logtap_bytes_read_total",
        "logtap_read_lag_bytes",
        "logtap_checkpoint_age_seconds",
        "logtap_sink_errors_total",
        "logtap_dropped_lines_total",
        "logtap_open_files",
        "logtap_store_bytes",
    ] {
        assert!(queried.contains(wanted), "dashboard lacks {wanted}");
    }
}

fn kustomization(dir: &str) -> serde_json::Value {
    let docs = documents(&format!("{dir}kustomization.yaml"));
    assert_eq!(docs[0]["kind"], "Kustomization");
    docs[0].clone()
}

fn strings(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn kustomization_lists_every_manifest() {
    let k = kustomization("");
    let listed = strings(&k["resources"]);
    let on_disk: BTreeSet<String> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, on_disk, "deploy/kustomization.yaml resources");
    let generated: BTreeSet<String> = k["configMapGenerator"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| strings(&g["files"]))
        .collect();
    assert!(generated.contains("grafana-dashboard.json"));
    for f in &generated {
        assert!(deploy_dir().join(f).is_file(), "{f}");
    }

    let k = kustomization("with-servicemonitor/");
    let listed = strings(&k["resources"]);
    assert!(listed.contains(".."), "the overlay builds on the base");
    for r in listed.iter().filter(|r| *r != "..") {
        assert!(
            deploy_dir().join("with-servicemonitor").join(r).is_file(),
            "{r}"
        );
    }
    assert!(listed.contains("servicemonitor.yaml"));
}

/// `examples/sidecar.yaml`: an unprivileged container in the application's pod (no
/// host namespace, no hostPath, no capability, no API token), sharing an emptyDir
/// with the application, whose ConfigMap is a valid `mode: sidecar` config once the
/// downward API has filled in the pod's identity.
#[test]
fn sidecar_example_is_unprivileged_and_reads_the_shared_volume() {
    use k8s_openapi::api::apps::v1::Deployment;

    let name = "examples/sidecar.yaml";
    let docs = documents(name);
    assert_eq!(docs.len(), 2, "{name}: a ConfigMap and a Deployment");
    let cm: ConfigMap = typed(name, &docs[0]);
    let deployment: Deployment = typed(name, &docs[1]);
    let pod = deployment.spec.template.spec.as_ref().unwrap();
    assert_ne!(pod.host_pid, Some(true));
    assert_ne!(pod.host_network, Some(true));
    assert_eq!(pod.automount_service_account_token, Some(false));
    let pod_security = pod.security_context.as_ref().unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert!(pod_security.run_as_user.is_some_and(|u| u != 0));
    let volumes: BTreeMap<_, _> = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|v| (v.name.as_str(), v))
        .collect();
    for (n, v) in &volumes {
        assert!(
            v.empty_dir.is_some() || v.config_map.is_some(),
            "volume {n}: only emptyDir and ConfigMap volumes (no host path)"
        );
    }

    let sidecar = pod
        .containers
        .iter()
        .find(|c| c.name == "logtap")
        .expect("a logtap container");
    let security = sidecar.security_context.as_ref().unwrap();
    assert_ne!(security.privileged, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );

    // The identity: downward-API fields resolved as the kubelet would.
    let resolved = |path: &str| match path {
        "metadata.name" => "cart-7d4-x2k",
        "metadata.namespace" => "shop",
        "metadata.uid" => "5b1f-uid",
        "spec.nodeName" => "node-a",
        other => panic!("{name}: unexpected fieldRef {other}"),
    };
    let env: BTreeMap<String, String> = sidecar
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    resolved(&from.field_ref.as_ref().unwrap().field_path).to_string()
                }
                _ => String::new(),
            };
            (e.name.clone(), value)
        })
        .collect();
    let args = sidecar.args.as_deref().unwrap_or_default();
    let at = args.iter().position(|a| a == "--config").expect("--config");
    let config_path = Path::new(&args[at + 1]);
    let mounts = sidecar.volume_mounts.as_deref().unwrap_or_default();
    let mount = mounts
        .iter()
        .find(|m| config_path.starts_with(&m.mount_path))
        .expect("the config file is on a mount");
    assert_eq!(
        volumes[mount.name.as_str()]
            .config_map
            .as_ref()
            .map(|c| c.name.as_str()),
        Some(name_of(&cm.metadata))
    );
    let key = config_path.strip_prefix(&mount.mount_path).unwrap();
    let text = &cm.data.as_ref().unwrap()[key.to_str().unwrap()];
    let raw = Config::parse_raw(text, name).unwrap_or_else(|e| panic!("{e}"));
    let config =
        Config::from_raw_in(raw, name, &|k| env.get(k).cloned()).unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.cri.enabled && !config.kubernetes.enabled && config.capture.is_none());
    let fields: BTreeMap<String, String> = config.sources[0]
        .fields
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    assert_eq!(fields["k8s.pod"], "cart-7d4-x2k");
    assert_eq!(fields["k8s.namespace"], "shop");
    assert_eq!(fields["k8s.container"], "app");

    // data_dir is the sidecar's own writable emptyDir; every include glob is on the
    // volume the application writes.
    let data = mounts
        .iter()
        .find(|m| config.data_dir.starts_with(&m.mount_path))
        .expect("data_dir is mounted");
    assert!(volumes[data.name.as_str()].empty_dir.is_some());
    assert_ne!(data.read_only, Some(true));
    let app = pod.containers.iter().find(|c| c.name == "app").unwrap();
    for glob in config.sources.iter().flat_map(|s| &s.include) {
        let shared = mounts
            .iter()
            .find(|m| glob.starts_with(&format!("{}/", m.mount_path)))
            .unwrap_or_else(|| panic!("{glob} is not under a mount"));
        assert!(
            app.volume_mounts
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|m| m.name == shared.name),
            "{glob}: volume {} is not shared with the application",
            shared.name
        );
    }
}

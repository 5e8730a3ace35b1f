//! `deploy/` run for real: the agent's image, assembled as `cargo xtask image` assembles
//! it (`xtask/src/oci.rs`, here from the test build of the binary), imported into a
//! real containerd and run through the CRI the way the kubelet runs
//! `deploy/daemonset.yaml`, with the ConfigMap's `logtap.yaml` as its config; then app
//! pods whose lines must reach the store through eBPF capture, with their Kubernetes
//! metadata, while the probe and metrics endpoints answer.
//!
//! The container is derived from the manifests (this file is a small kubelet), never
//! restated: image, args, env (`fieldRef`s resolved), volumes and mounts, privileged,
//! hostPID, read-only root, resources, probes, grace period. Where this machine is not
//! a cluster node, the differences are explicit and few ([`TestNode`]):
//! - hostPaths the agent writes (`/var/lib/logtap`; `/sys/fs/bpf/logtap`, capture's
//!   pins, on a bpffs of the test's own that takes them away at the end) or that
//!   belong to this test (`/run/containerd/containerd.sock`: the harness's
//!   containerd) are mapped to the test's own; every other hostPath is the machine's
//!   own and must be read-only;
//! - no CNI: pods have the node's network, shared with other tests, so the config's
//!   `metrics.listen` (`0.0.0.0:9464`) becomes a free port on 127.0.0.1;
//! - the harness nests pods under its own cgroup, so `capture.cgroup_prefix` is that
//!   `kubepods`;
//! - the API server is the fake one (`fake_api.rs`, plain HTTP): the kubelet's
//!   `KUBERNETES_SERVICE_*` variables point at it, and a kubeconfig naming it replaces
//!   the service-account token volume (whose CA and token a plain HTTP fake has no use
//!   for).
//!
//! Needs root, containerd/runc/busybox-static, `strip` and the eBPF object; fails
//! without them unless `LOGTAP_SKIP_CRI_TESTS=1` or `LOGTAP_SKIP_EBPF_TESTS=1` is set.
//! `LOGTAP_IMAGE_ARCHIVE=target/image/logtap-<version>.oci.tar` runs the image `cargo
//! xtask image` made instead (the release build) of one from the test build.

mod common;
#[path = "../src/discovery/watcher/fake_api.rs"]
#[allow(dead_code, reason = "the fake serves the watcher's unit tests too")]
mod fake_api;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cri::{
    ContainerHandle, ContainerSpec, CriHarness, PodSpec, oci, pod_cgroup_prefix, read_cri_log,
};
use common::{free_port, http_get_status, metric, query_json};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec as K8sPodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use logtap::discovery::cri::cri_api as api;
use serde_json::Value;

const NODE: &str = "node-daemonset";

/// One object of a `deploy/` file, typed.
fn manifest<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let value: yaml_serde::Value =
        yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_json::from_value(serde_json::to_value(value).unwrap())
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Where this machine differs from a cluster node (see the module docs).
struct TestNode {
    dir: tempfile::TempDir,
    /// A bpffs mounted for this test: the node's `/sys/fs/bpf/logtap`.
    bpf_pins: PathBuf,
    containerd_socket: PathBuf,
    metrics_port: u16,
    api_url: String,
    cgroup_prefix: String,
}

impl TestNode {
    /// The node path a hostPath volume stands for here.
    fn host_path(&self, path: &str, read_only: bool) -> PathBuf {
        match path {
            "/var/lib/logtap" => self.data_dir(),
            "/sys/fs/bpf/logtap" => self.bpf_pins.clone(),
            "/run/containerd/containerd.sock" => self.containerd_socket.clone(),
            _ => {
                assert!(
                    read_only,
                    "hostPath {path} is mounted read-write: map it to a test directory here"
                );
                PathBuf::from(path)
            }
        }
    }

    /// Mounts a bpffs for the node's `/sys/fs/bpf/logtap` below `dir`.
    fn mount_bpf_pins(dir: &Path) -> PathBuf {
        let path = dir.join("sys-fs-bpf-logtap");
        std::fs::create_dir_all(&path).unwrap();
        common::bpffs::mount_bpffs(&path);
        path
    }

    /// The agent's data directory (hostPath `/var/lib/logtap`).
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("var-lib-logtap")
    }

    /// The ConfigMap's `logtap.yaml` with this node's differences.
    fn node_config(&self, yaml: &str) -> String {
        let mut config: yaml_serde::Value = yaml_serde::from_str(yaml).expect("logtap.yaml");
        let listen = &mut config["metrics"]["listen"];
        assert!(
            listen.as_str().is_some_and(|l| l.starts_with("0.0.0.0:")),
            "metrics.listen {listen:?}: the test replaces an address on every interface"
        );
        *listen = format!("127.0.0.1:{}", self.metrics_port).into();
        config["capture"]["cgroup_prefix"] = self.cgroup_prefix.clone().into();
        yaml_serde::to_string(&config).unwrap()
    }

    /// What the kubelet's service links and the service-account volume give a pod.
    fn api_env_and_mount(&self) -> (Vec<(String, String)>, api::Mount) {
        let port = self.api_url.rsplit(':').next().unwrap().to_owned();
        let dir = self.dir.path().join("api");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
                 clusters: [{{name: test, cluster: {{server: \"{}\"}}}}]\n\
                 users: [{{name: test, user: {{}}}}]\n\
                 contexts: [{{name: test, context: {{cluster: test, user: test}}}}]\n",
                self.api_url
            ),
        )
        .unwrap();
        let env = vec![
            ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), port),
            (
                "KUBECONFIG".into(),
                "/var/run/secrets/logtap-test/kubeconfig".into(),
            ),
        ];
        let mount = api::Mount {
            container_path: "/var/run/secrets/logtap-test".into(),
            host_path: dir.display().to_string(),
            readonly: true,
            ..Default::default()
        };
        (env, mount)
    }
}

impl Drop for TestNode {
    /// The pins go with their bpffs: the probes the agent left attached are detached.
    fn drop(&mut self) {
        common::bpffs::unmount_bpffs(&self.bpf_pins);
    }
}

/// The kubelet's part: the pod's volumes as node paths (a ConfigMap written out as
/// one file per key, hostPaths checked against their `type`).
fn volumes(pod: &K8sPodSpec, config_map: &ConfigMap, node: &TestNode) -> HashMap<String, PathBuf> {
    let container = &pod.containers[0];
    let read_only = |name: &str| {
        container
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.name == name)
            .all(|m| m.read_only == Some(true))
    };
    let mut paths = HashMap::new();
    for volume in pod.volumes.iter().flatten() {
        let path = if let Some(cm) = &volume.config_map {
            assert_eq!(cm.name, config_map.metadata.name.clone().unwrap());
            let dir = node.dir.path().join(format!("configmap-{}", volume.name));
            std::fs::create_dir_all(&dir).unwrap();
            for (key, text) in config_map.data.iter().flatten() {
                let text = if key == "logtap.yaml" {
                    node.node_config(text)
                } else {
                    text.clone()
                };
                std::fs::write(dir.join(key), text).unwrap();
            }
            dir
        } else if let Some(host) = &volume.host_path {
            let path = node.host_path(&host.path, read_only(&volume.name));
            match host.type_.as_deref() {
                Some("DirectoryOrCreate") => std::fs::create_dir_all(&path).unwrap(),
                Some("Directory") => assert!(path.is_dir(), "{}", path.display()),
                Some("Socket") => assert!(
                    std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_socket()),
                    "{}",
                    path.display()
                ),
                None | Some("") => assert!(path.exists(), "{}", path.display()),
                Some(other) => panic!("hostPath type {other}: teach this test"),
            }
            path
        } else {
            panic!("volume {}: only configMap and hostPath here", volume.name);
        };
        paths.insert(volume.name.clone(), path);
    }
    paths
}

/// `100m` → 100, `2` → 2000.
fn millicores(quantity: &str) -> i64 {
    match quantity.strip_suffix('m') {
        Some(milli) => milli.parse().unwrap(),
        None => (quantity.parse::<f64>().unwrap() * 1000.0) as i64,
    }
}

/// `512Mi` → 536870912.
fn bytes(quantity: &str) -> i64 {
    let (number, unit) = quantity.split_at(quantity.find(|c: char| c.is_alphabetic()).unwrap());
    let scale = match unit {
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("quantity unit {other}: teach this test"),
    };
    number.parse::<i64>().unwrap() * scale
}

/// The CRI container the kubelet makes of `container`.
fn container_config(
    container: &Container,
    pod_name: &str,
    host_pid: bool,
    node: &TestNode,
    volumes: &HashMap<String, PathBuf>,
) -> api::ContainerConfig {
    let mut envs: Vec<(String, String)> = container
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = match (&e.value, &e.value_from) {
                (Some(v), None) => v.clone(),
                (None, Some(from)) => {
                    let field = &from.field_ref.as_ref().expect("fieldRef").field_path;
                    match field.as_str() {
                        "spec.nodeName" => NODE.to_owned(),
                        "metadata.name" => pod_name.to_owned(),
                        _ => panic!("fieldRef {field}: teach this test"),
                    }
                }
                _ => panic!("env {}: value or valueFrom", e.name),
            };
            (e.name.clone(), value)
        })
        .collect();
    let (api_env, api_mount) = node.api_env_and_mount();
    envs.extend(api_env);
    let mut mounts: Vec<api::Mount> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| api::Mount {
            container_path: m.mount_path.clone(),
            host_path: volumes[&m.name].display().to_string(),
            readonly: m.read_only == Some(true),
            ..Default::default()
        })
        .collect();
    mounts.push(api_mount);
    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    let resources = container.resources.as_ref().expect("resources");
    let quantity = |map: &Option<BTreeMap<String, _>>, key: &str| -> String {
        let q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity =
            &map.as_ref().unwrap()[key];
        q.0.clone()
    };
    let cpu_limit = millicores(&quantity(&resources.limits, "cpu"));
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: container.name.clone(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: container.image.clone().expect("image"),
            ..Default::default()
        }),
        command: container.command.clone().unwrap_or_default(),
        args: container.args.clone().unwrap_or_default(),
        envs: envs
            .into_iter()
            .map(|(key, value)| api::KeyValue { key, value })
            .collect(),
        mounts,
        linux: Some(api::LinuxContainerConfig {
            resources: Some(api::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: cpu_limit * 100,
                cpu_shares: millicores(&quantity(&resources.requests, "cpu")) * 1024 / 1000,
                memory_limit_in_bytes: bytes(&quantity(&resources.limits, "memory")),
                ..Default::default()
            }),
            security_context: Some(api::LinuxContainerSecurityContext {
                privileged: security.privileged == Some(true),
                readonly_rootfs: security.read_only_root_filesystem == Some(true),
                namespace_options: Some(namespaces(host_pid)),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// The node's network (no CNI here), the host's PID namespace when `host_pid`.
fn namespaces(host_pid: bool) -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Node as i32,
        pid: if host_pid {
            api::NamespaceMode::Node
        } else {
            api::NamespaceMode::Container
        } as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The agent's pod on this node, running.
struct AgentPod {
    pod: common::cri::PodHandle,
    container: ContainerHandle,
    grace: Duration,
    liveness: Probe,
    readiness: Probe,
    metrics_path: String,
    /// The container's ports by name (`ports[].name` → `containerPort`).
    ports: HashMap<String, i32>,
    /// The port of the ConfigMap's `metrics.listen`, which this node moves.
    config_metrics_port: i32,
    /// The pod's name, as its `metadata.name` fieldRef gives it (`POD_NAME`).
    name: String,
}

fn run_daemonset_pod(harness: &'static CriHarness, node: &TestNode) -> AgentPod {
    let ds: DaemonSet = manifest("daemonset.yaml");
    let config_map: ConfigMap = manifest("configmap.yaml");
    let template = ds.spec.template.clone();
    let pod_spec = template.spec.expect("pod spec");
    let annotations = template.metadata.unwrap_or_default().annotations;
    assert_eq!(pod_spec.containers.len(), 1, "one container: the agent");
    let container = &pod_spec.containers[0];

    // The image `cargo xtask image` makes, under the name the DaemonSet gives.
    let image = container.image.clone().unwrap();
    assert_eq!(
        image,
        format!("{}:{}", oci::AGENT_REPOSITORY, env!("CARGO_PKG_VERSION")),
        "deploy/daemonset.yaml must name the image `cargo xtask image` tags"
    );
    let started = Instant::now();
    let archive = image_archive(node);
    let built = started.elapsed();
    harness.import_image(&archive, &image);
    eprintln!(
        "image {image} from {}: ready in {built:?}, imported in {:?}",
        archive.display(),
        started.elapsed() - built
    );

    let host_pid = pod_spec.host_pid == Some(true);
    let privileged = container
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        == Some(true);
    let pod_name = format!("{}-{}", ds.metadata.name.clone().unwrap(), NODE);
    let mut spec = PodSpec::new(&pod_name);
    spec.namespace = ds.metadata.namespace.clone().unwrap();
    let pod = harness.run_pod_with(spec, |sandbox| {
        let linux = sandbox.linux.as_mut().unwrap();
        let security = linux.security_context.as_mut().unwrap();
        // The kubelet makes the sandbox privileged when a container is.
        security.privileged = privileged;
        security.namespace_options = Some(namespaces(host_pid));
    });
    let volumes = volumes(&pod_spec, &config_map, node);
    let container_handle = pod.create_container_from(container_config(
        container, &pod_name, host_pid, node, &volumes,
    ));
    container_handle.start();
    AgentPod {
        pod,
        container: container_handle,
        grace: Duration::from_secs(pod_spec.termination_grace_period_seconds.unwrap_or(30) as u64),
        liveness: container.liveness_probe.clone().expect("livenessProbe"),
        readiness: container.readiness_probe.clone().expect("readinessProbe"),
        metrics_path: annotations
            .unwrap_or_default()
            .get("prometheus.io/path")
            .cloned()
            .expect("prometheus.io/path"),
        ports: container
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, p.container_port)))
            .collect(),
        config_metrics_port: {
            let config: yaml_serde::Value =
                yaml_serde::from_str(&config_map.data.as_ref().unwrap()["logtap.yaml"]).unwrap();
            let listen = config["metrics"]["listen"].as_str().unwrap().to_owned();
            listen.rsplit(':').next().unwrap().parse().unwrap()
        },
        name: pod_name,
    }
}

/// The archive of the agent's image: `LOGTAP_IMAGE_ARCHIVE` when set (what `cargo
/// xtask image` made: the release image), else built here from the test build of the
/// binary by the same code (a release build would add minutes to CI).
fn image_archive(node: &TestNode) -> PathBuf {
    if let Some(archive) = std::env::var_os("LOGTAP_IMAGE_ARCHIVE") {
        return PathBuf::from(archive);
    }
    let (archive, written) = oci::agent_image(
        Path::new(env!("CARGO_BIN_EXE_logtap")),
        node.dir.path(),
        env!("CARGO_PKG_VERSION"),
    )
    .expect("the agent's image");
    eprintln!(
        "image {} ({:.0} MB) from the test build",
        written.manifest_digest,
        written.size as f64 / 1e6
    );
    archive
}

impl AgentPod {
    /// GET of an HTTP probe as the kubelet does it. Its port (by name or number) must
    /// be the one the config listens on, which is `node.metrics_port` here.
    fn probe(&self, probe: &Probe, node: &TestNode) -> Option<(u16, String)> {
        let get = probe.http_get.as_ref().expect("httpGet probe");
        let port = match &get.port {
            IntOrString::Int(port) => *port,
            IntOrString::String(name) => *self
                .ports
                .get(name)
                .unwrap_or_else(|| panic!("probe port {name:?} names no container port")),
        };
        assert_eq!(
            port, self.config_metrics_port,
            "the probe's port is not the config's metrics.listen"
        );
        http_get_status(node.metrics_port, get.path.as_deref().unwrap_or("/"))
    }

    /// The agent's own log (its container's CRI log).
    fn log(&self) -> String {
        read_cri_log(self.container.log_path())
            .into_iter()
            .map(|(_, _, message)| message + "\n")
            .collect()
    }
}

/// Pod `default/<name>` on this node as the API serves it, with a label only the API
/// knows (the sandbox has none).
fn api_pod(name: &str, uid: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "default", "name": name, "uid": uid,
                     "labels": {"known-from": "api"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": common::cri::BUSYBOX_IMAGE}]},
    }))
    .unwrap()
}

/// The bodies of the records at `path` in offset order (each offset once).
fn bodies(records: &[Value], path: &str) -> Vec<String> {
    let mut by_offset = BTreeMap::new();
    for r in records.iter().filter(|r| r["path"] == path) {
        let body = r["body"].as_str().unwrap_or_default().to_owned();
        assert!(
            by_offset
                .insert(r["offset"].as_u64().unwrap(), body)
                .is_none(),
            "{path}: an offset shipped twice"
        );
    }
    by_offset.into_values().collect()
}

#[test]
fn the_daemonset_from_deploy_runs_the_image_and_captures_app_pods() {
    if std::env::var("LOGTAP_SKIP_EBPF_TESTS").as_deref() == Ok("1") {
        eprintln!("note: LOGTAP_SKIP_EBPF_TESTS=1: the DaemonSet test is skipped");
        return;
    }
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let api = fake_api::FakeApi::start_new();
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode {
        bpf_pins: TestNode::mount_bpf_pins(dir.path()),
        dir,
        containerd_socket: PathBuf::from(harness.endpoint().strip_prefix("unix://").unwrap()),
        metrics_port: free_port(),
        api_url: api.url(),
        cgroup_prefix: pod_cgroup_prefix(),
    };
    let agent = run_daemonset_pod(harness, &node);
    let ready = wait_until(Duration::from_secs(60), || {
        matches!(agent.probe(&agent.readiness, &node), Some((200, _)))
    });
    assert!(
        ready,
        "readiness probe never passed; agent log:\n{}",
        agent.log()
    );
    let scrape = || {
        http_get_status(node.metrics_port, &agent.metrics_path)
            .filter(|(status, _)| *status == 200)
            .map(|(_, text)| text)
            .unwrap_or_default()
    };
    let capturing = wait_until(Duration::from_secs(30), || {
        metric(&scrape(), "logtap_capture_up", &[]) == 1.0
    });
    assert!(capturing, "capture not up; agent log:\n{}", agent.log());
    // The ConfigMap ships the cluster's events: the one agent takes the Lease under
    // its pod name (POD_NAME from the manifest's fieldRef).
    let leading = wait_until(Duration::from_secs(30), || {
        metric(&scrape(), "logtap_events_leader", &[]) == 1.0
    });
    assert!(
        leading,
        "not the events leader; agent log:\n{}",
        agent.log()
    );
    let lease = api
        .lease("logtap-system", "logtap-events")
        .expect("the agent created the events Lease");
    assert_eq!(lease["spec"]["holderIdentity"], agent.name.as_str());

    // An app pod the API knows, writing to both streams.
    let spec = PodSpec::new("ds-app");
    api.put_pod(api_pod(&spec.name, &spec.uid));
    let app_pod = harness.run_pod(spec);
    let app = app_pod.start_container(ContainerSpec::shell(
        "app",
        "i=1; while [ $i -le 300 ]; do echo \"app out $i\"; echo \"app err $i\" >&2; i=$((i+1)); done; sleep 1",
    ));
    app.wait_exit(Duration::from_secs(30));
    let log = app.log_path().display().to_string();
    let want =
        |stream: &str| -> Vec<String> { (1..=300).map(|i| format!("app {stream} {i}")).collect() };
    let store = node.data_dir().join("store");
    let mut records = Vec::new();
    let arrived = wait_until(Duration::from_secs(30), || {
        records = if store.exists() {
            query_json(&store, &["--raw"])
        } else {
            Vec::new()
        };
        bodies(&records, &format!("{log}#stdout")) == want("out")
            && bodies(&records, &format!("{log}#stderr")) == want("err")
    });
    assert!(
        arrived,
        "the app's lines did not all arrive through capture: {} of 300 stdout, {} of 300 stderr\nagent log:\n{}",
        bodies(&records, &format!("{log}#stdout")).len(),
        bodies(&records, &format!("{log}#stderr")).len(),
        agent.log()
    );
    // Captured (paths `<log>#<stream>`), so not read again from the CRI log.
    assert!(
        records.iter().all(|r| r["path"] != log.as_str()),
        "the file source shipped lines capture had claimed"
    );
    let record = records
        .iter()
        .find(|r| r["path"] == format!("{log}#stdout").as_str())
        .unwrap();
    let resource = |key: &str| record["resource"][key].as_str().map(str::to_owned);
    assert_eq!(resource("k8s.node").as_deref(), Some(NODE), "{record}");
    assert_eq!(resource("k8s.pod").as_deref(), Some("ds-app"), "{record}");
    assert_eq!(
        resource("k8s.pod.label.known-from").as_deref(),
        Some("api"),
        "pod metadata from the API server: {record}"
    );
    assert!(api.pod_lists() > 0, "the agent never listed pods");

    let metrics = scrape();
    assert!(metric(&metrics, "logtap_capture_records_total", &[]) > 0.0);
    // The probes are pinned in the node's /sys/fs/bpf/logtap, through the mount.
    assert_eq!(
        metric(
            &metrics,
            "logtap_capture_pin_starts_total",
            &[("result", "created")]
        ),
        1.0,
        "agent log:\n{}",
        agent.log()
    );
    // (A bpffs root also holds the kernel's `maps.debug` and `progs.debug` files.)
    let pinned: Vec<_> = std::fs::read_dir(&node.bpf_pins)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(pinned.len(), 1, "one layout pinned: {pinned:?}");
    let (status, body) = agent
        .probe(&agent.liveness, &node)
        .expect("liveness answers");
    assert_eq!(status, 200, "liveness probe: {body}");
    serde_json::from_str::<Value>(&body).expect("/healthz answers JSON");

    // The kubelet's stop: SIGTERM, then SIGKILL after the grace period. The agent
    // ships, checkpoints and says so well within it.
    let stopping = Instant::now();
    harness
        .client()
        .stop_container(agent.container.id(), agent.grace)
        .expect("StopContainer");
    let stopped = stopping.elapsed();
    assert!(stopped < agent.grace, "stop took {stopped:?}");
    let stopped_cleanly = wait_until(Duration::from_secs(5), || {
        agent.log().contains("logtap stopped")
    });
    assert!(
        stopped_cleanly,
        "no clean stop in the log:\n{}",
        agent.log()
    );
    drop(app_pod);
    agent.pod.remove();
}

fn wait_until(timeout: Duration, done: impl FnMut() -> bool) -> bool {
    common::poll_until(timeout, Duration::from_millis(200), done)
}

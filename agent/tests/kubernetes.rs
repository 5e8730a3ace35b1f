//! Pod metadata on every line, end to end: the real agent, its `kubernetes.api_url`
//! pointed at a fake API server speaking real list + watch JSON, CRI logs laid out as
//! under `/var/log/pods/<ns>_<pod>_<uid>/<container>/0.log`, read back through
//! `logtap query`.

mod common;
#[path = "../src/discovery/watcher/fake_api.rs"]
#[allow(dead_code, reason = "the fake serves the watcher's unit tests too")]
mod fake_api;

use std::io::Write;
use std::time::Duration;

use common::node::{Node, pod};
use common::*;
use fake_api::FakeApi;
use k8s_openapi::api::core::v1::{Namespace, Pod};

const NODE: &str = "node-a";
const UID_WEB: &str = "00000000-0000-0000-0000-0000000000a1";
const UID_LATE: &str = "00000000-0000-0000-0000-0000000000b2";
/// `kubernetes.metadata_wait` of these runs.
const WAIT: Duration = Duration::from_millis(1500);

/// [`pod`] as the API serves it: with annotations, and the container's status (its
/// runtime id and resolved image).
fn api_pod(name: &str, uid: &str, app: &str) -> Pod {
    let mut pod = pod(NODE, name, uid, app);
    pod.metadata.annotations = Some(
        [("team", "payments"), ("not-copied", "x")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
    );
    pod.status = Some(
        serde_json::from_value(serde_json::json!({
            "containerStatuses": [{
                "name": "app", "image": format!("docker.io/shop/{app}:1"),
                "imageID": "", "ready": true, "restartCount": 0,
                "containerID": format!("containerd://id-{name}"),
            }],
        }))
        .unwrap(),
    );
    pod
}

fn namespace() -> Namespace {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "shop", "labels": {"env": "prod"}},
    }))
    .unwrap()
}

/// The Kubernetes tests' host file and config on a [`Node`].
impl Node {
    fn write_host(&self, lines: u32) {
        let mut file = open_append(&self.host_dir().join("syslog.log"));
        for i in 0..lines {
            writeln!(file, "host line {i}").unwrap();
        }
    }

    fn config(&self, api_url: &str) -> String {
        format!(
            "sources:\n  - name: pods\n    include: [\"{pods}/**/*.log\"]\n    format: cri\n    sink: local\n\
             \x20 - name: host\n    include: [\"{host}/*.log\"]\n    sink: local\n\
             sinks:\n  local: {{type: store}}\n\
             kubernetes:\n  api_url: {api_url}\n  node_name: {NODE}\n  metadata_wait: {wait}ms\n  annotations: [team]\n",
            pods = self.pods_dir().display(),
            host = self.host_dir().display(),
            wait = WAIT.as_millis(),
        )
    }
}

fn resource<'a>(record: &'a Value, key: &str) -> Option<&'a str> {
    record["resource"][key].as_str()
}

/// The fields every container line carries whether or not the API knew its pod.
fn assert_path_fields(record: &Value, pod: &str, uid: &str) {
    assert_eq!(resource(record, "k8s.pod"), Some(pod), "{record}");
    assert_eq!(resource(record, "k8s.namespace"), Some("shop"), "{record}");
    assert_eq!(resource(record, "k8s.container"), Some("app"), "{record}");
    assert_eq!(resource(record, "k8s.pod_uid"), Some(uid), "{record}");
    assert_eq!(resource(record, "k8s.node"), Some(NODE), "{record}");
}

fn assert_api_fields(record: &Value, pod: &str, app: &str) {
    assert_eq!(
        resource(record, "container.id"),
        Some(format!("id-{pod}").as_str()),
        "{record}"
    );
    assert_eq!(
        resource(record, "container.image"),
        Some(format!("shop/{app}:1").as_str()),
        "{record}"
    );
    assert_eq!(resource(record, "k8s.pod.label.app"), Some(app), "{record}");
    assert_eq!(
        resource(record, "k8s.pod.annotation.team"),
        Some("payments"),
        "{record}"
    );
    assert_eq!(
        resource(record, "k8s.pod.annotation.not-copied"),
        None,
        "{record}"
    );
    assert_eq!(
        resource(record, "k8s.namespace.label.env"),
        Some("prod"),
        "{record}"
    );
}

#[test]
fn lines_carry_their_pod_metadata_and_late_pods_catch_up() {
    let api = FakeApi::start_new();
    api.put_namespace(namespace());
    api.put_pod(api_pod("web-1", UID_WEB, "demo"));
    let node = Node::new();
    node.write_pod("web-1", UID_WEB, 0..5, "web");
    node.write_host(3);

    let mut agent = Agent::start(&node.data_dir(), &node.config(&api.url()));
    let store = agent.store_dir();
    wait_for(Duration::from_secs(20), "web-1's and host lines", || {
        records_of(&store, "web ").len() == 5 && records_of(&store, "host line").len() == 3
    });
    for r in records_of(&store, "web ") {
        assert_path_fields(&r, "web-1", UID_WEB);
        assert_api_fields(&r, "web-1", "demo");
    }
    for r in records_of(&store, "host line") {
        assert_eq!(r["resource"], serde_json::json!({"k8s.node": NODE}), "{r}");
    }
    let by_label = query_json(&store, &["--field", "k8s.pod.label.app=demo"]);
    assert_eq!(by_label.len(), 5);
    assert_eq!(query_json(&store, &["--field", "k8s.pod=web-1"]).len(), 5);
    assert_eq!(query_json(&store, &["--field", "k8s.node=node-a"]).len(), 8);

    // A pod whose lines come before the API knows it: held, then shipped after the
    // bound with what the path says.
    let written = std::time::Instant::now();
    node.write_pod("late", UID_LATE, 0..3, "late");
    wait_for(Duration::from_secs(20), "late's first lines", || {
        records_of(&store, "late ").len() == 3
    });
    assert!(
        written.elapsed() >= WAIT - Duration::from_millis(200),
        "shipped after {:?}, before the {WAIT:?} bound",
        written.elapsed()
    );
    for r in records_of(&store, "late ") {
        assert_path_fields(&r, "late", UID_LATE);
        assert_eq!(resource(&r, "container.image"), None, "{r}");
        assert_eq!(resource(&r, "k8s.pod.label.app"), None, "{r}");
    }
    let metrics = agent.metrics();
    assert_eq!(
        metric(
            &metrics,
            "logtap_enrich_metadata_missing_total",
            &[("reason", "pod_unknown")]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "logtap_kube_api_up", &[]), 1.0);

    // Once the API reports it, later lines carry everything.
    api.put_pod(api_pod("late", UID_LATE, "batch"));
    wait_for(Duration::from_secs(10), "the late pod in the cache", || {
        metric(&agent.metrics(), "logtap_kube_pods_cached", &[]) == 2.0
    });
    node.write_pod("late", UID_LATE, 3..6, "late");
    wait_for(Duration::from_secs(20), "late's later lines", || {
        records_of(&store, "late ").len() == 6
    });
    let late = records_of(&store, "late ");
    for r in late.iter().filter(|r| r["body"].as_str() >= Some("late 3")) {
        assert_path_fields(r, "late", UID_LATE);
        assert_api_fields(r, "late", "batch");
    }
    assert_eq!(
        query_json(&store, &["--field", "k8s.pod.label.app=batch"]).len(),
        3
    );
    assert!(agent.stop(), "clean exit\n{}", agent.log());
}

#[test]
fn unreachable_api_degrades_to_path_fields_and_ingestion_continues() {
    let node = Node::new();
    node.write_pod("web-1", UID_WEB, 0..4, "web");
    node.write_host(2);
    // Nothing listens there.
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut agent = Agent::start(&node.data_dir(), &node.config(&url));
    let store = agent.store_dir();
    wait_for(Duration::from_secs(20), "lines despite the API", || {
        records_of(&store, "web ").len() == 4 && records_of(&store, "host line").len() == 2
    });
    for r in records_of(&store, "web ") {
        assert_path_fields(&r, "web-1", UID_WEB);
        assert_eq!(resource(&r, "container.image"), None, "{r}");
    }
    for r in records_of(&store, "host line") {
        assert_eq!(resource(&r, "k8s.node"), Some(NODE), "{r}");
    }
    let metrics = agent.metrics();
    assert_eq!(
        metric(&metrics, "logtap_kube_api_up", &[]),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "logtap_enrich_metadata_missing_total",
            &[("reason", "api_unavailable")]
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "logtap_kube_watch_errors_total", &[]) >= 1.0,
        "{metrics}"
    );
    assert!(
        agent.log().contains("Kubernetes API unavailable"),
        "{}",
        agent.log()
    );
    assert!(agent.stop(), "clean exit\n{}", agent.log());
}

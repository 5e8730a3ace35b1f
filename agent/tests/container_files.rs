//! Files inside containers (`container_paths`), end to end: the real agent, a real
//! containerd + runc (see `common/cri.rs`; needs root and `containerd runc
//! busybox-static`, or `LOGTAP_SKIP_CRI_TESTS=1` to skip), pod metadata from a fake
//! API server, records read back through `logtap query`.

mod common;
#[path = "../src/discovery/watcher/fake_api.rs"]
#[allow(dead_code, reason = "the fake serves the watcher's unit tests too")]
mod fake_api;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cri::{ContainerSpec, CriHarness, PodHandle, PodSpec};
use common::*;
use fake_api::FakeApi;
use k8s_openapi::api::core::v1::Pod;

const NODE: &str = "node-cf";
const LINES: usize = 500;

/// Writes `LINES` lines into `/tmp/app/app.log` inside its own file system (not
/// stdout), then lingers a moment.
fn writer(prefix: &str) -> ContainerSpec {
    ContainerSpec::shell(
        "app",
        &format!(
            "mkdir -p /tmp/app; i=0; while [ $i -lt {LINES} ]; do echo \"{prefix} $i\" >> /tmp/app/app.log; i=$((i+1)); done; echo done; sleep 3"
        ),
    )
}

fn api_pod(pod: &PodHandle) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "namespace": pod.spec.namespace, "name": pod.spec.name, "uid": pod.spec.uid,
            "labels": {"app": pod.spec.name},
        },
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "localhost/busybox:1"}]},
    }))
    .unwrap()
}

/// Every line `<prefix> 0..LINES` once, from the logical path of the container's
/// file, with the container's fields.
fn assert_all_lines_once(store: &Path, prefix: &str, pod: &PodHandle, id: &str) {
    let records = records_of(store, &format!("{prefix} "));
    let mut seen: Vec<usize> = records
        .iter()
        .map(|r| {
            r["body"].as_str().unwrap()[prefix.len() + 1..]
                .parse()
                .unwrap()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..LINES).collect::<Vec<_>>(), "{prefix}: once each");
    let path = format!("container://team-cf/{}/app/tmp/app/app.log", pod.spec.name);
    for r in &records {
        assert_eq!(r["path"], path.as_str(), "{r}");
        let field = |k: &str| r["resource"][k].as_str().map(str::to_owned);
        assert_eq!(field("k8s.pod").as_deref(), Some(pod.spec.name.as_str()));
        assert_eq!(field("k8s.namespace").as_deref(), Some("team-cf"));
        assert_eq!(field("k8s.container").as_deref(), Some("app"));
        assert_eq!(field("k8s.pod_uid").as_deref(), Some(pod.spec.uid.as_str()));
        assert_eq!(field("container.id").as_deref(), Some(id), "{r}");
        assert_eq!(
            field("k8s.pod.label.app").as_deref(),
            Some(pod.spec.name.as_str())
        );
    }
}

#[test]
fn files_inside_selected_containers_are_collected_with_their_fields() {
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let started = Instant::now();
    let api = FakeApi::start_new();
    let pod_spec = |name: &str| {
        let mut spec = PodSpec::new(name);
        spec.namespace = "team-cf".into();
        spec
    };
    let first = harness.run_pod(pod_spec("cf-first"));
    let second = harness.run_pod(pod_spec("cf-second"));
    let other = harness.run_pod(pod_spec("cf-other"));
    for pod in [&first, &second, &other] {
        api.put_pod(api_pod(pod));
    }

    let data = tempfile::tempdir().unwrap();
    let config = format!(
        "sources:\n  - name: app-files\n    selector: {{namespaces: {{include: [team-cf]}}, pod_name: '^cf-(first|second)$'}}\n    container_paths: [\"/tmp/app/*.log\"]\n    sink: local\n\
         sinks:\n  local: {{type: store}}\n\
         cri: {{endpoint: \"{endpoint}\", rescan_interval: 60s}}\n\
         collections: {{enabled: false, pod_logs: /var/log/pods}}\n\
         kubernetes:\n  api_url: {api}\n  node_name: {NODE}\n  metadata_wait: 3s\n",
        endpoint = harness.endpoint(),
        api = api.url(),
    );
    let mut agent = Agent::start(&data.path().join("data"), &config);
    let store = agent.store_dir();

    // Started after the agent: found by the poll of the runtime, not a rescan (60 s).
    let first_c = first.start_container(writer("first"));
    let not_selected = other.start_container(writer("other"));
    wait_for(
        Duration::from_secs(15),
        "the first container's lines",
        || records_of(&store, "first ").len() >= LINES,
    );
    assert_all_lines_once(&store, "first", &first, first_c.id());

    // A second selected container, while the agent runs.
    let second_c = second.start_container(writer("second"));
    wait_for(
        Duration::from_secs(15),
        "the second container's lines",
        || records_of(&store, "second ").len() >= LINES,
    );
    assert_all_lines_once(&store, "second", &second, second_c.id());

    not_selected.wait_exit(Duration::from_secs(10));
    assert!(
        records_of(&store, "other ").is_empty(),
        "a container the selector does not select is not read"
    );
    assert!(agent.stop(), "the agent stops cleanly");
    assert_eq!(records_of(&store, "first ").len(), LINES, "no duplicates");
    eprintln!("container files e2e took {:?}", started.elapsed());
}

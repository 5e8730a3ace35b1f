//! Kubernetes integration end to end against a real container runtime: containerd +
//! runc driven through the CRI API as the kubelet drives it (`common/cri.rs`), the
//! real agent with `cri.endpoint` at that containerd, reading the real
//! `/var/log/pods/<ns>_<pod>_<uid>/<container>/0.log` files containerd writes, and
//! the stores read back through `logtap query`.
//!
//! Each test reads only its own pods' log directories (pods have unique UIDs), so the
//! tests run side by side. No Kubernetes API here: the metadata comes from CRI.
//!
//! Needs root and `containerd runc busybox-static`, or `LOGTAP_SKIP_CRI_TESTS=1` to
//! skip.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cri::{ContainerSpec, CriHarness, PodHandle, PodSpec};
use common::*;

const NODE: &str = "node-cri";

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The glob of every CRI log file of `pods` (rotated ones are followed by identity).
fn globs(pods: &[&PodHandle]) -> String {
    pods.iter()
        .map(|p| format!("\"{}/*/*.log\"", p.log_dir().display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The agent's settings shared by these tests: CRI at `endpoint`, quick file
/// discovery, a node name and the annotation copied onto lines.
fn settings(endpoint: &str, metadata_wait: &str) -> String {
    format!(
        "cri: {{endpoint: \"{endpoint}\", rescan_interval: 30s}}\n\
         files: {{rescan_interval: 1s}}\n\
         batch: {{timeout: 100ms}}\n\
         kubernetes: {{enabled: false, node_name: {NODE}, metadata_wait: {metadata_wait}, annotations: [team]}}\n"
    )
}

fn resource<'a>(record: &'a Value, key: &str) -> Option<&'a str> {
    record["resource"][key].as_str()
}

fn body(record: &Value) -> String {
    String::from_utf8_lossy(&body_bytes(record)).into_owned()
}

/// Every record of `store` (duplicates included), or none before it exists.
fn records(store: &Path) -> Vec<Value> {
    if !store.exists() {
        return Vec::new();
    }
    store_records(store)
}

/// Every record of a file sink.
fn file_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("the file sink writes JSON lines"))
        .collect()
}

/// A shell script printing `<tag> <i>` for i in 0..n, then staying alive (a pod the
/// test removes).
fn print_lines(tag: &str, n: u32) -> String {
    format!("i=0; while [ $i -lt {n} ]; do echo \"{tag} $i\"; i=$((i+1)); done; exec sleep 3600")
}

/// Lines the container `tag` printed, by body, in `records`.
fn bodies_of(records: &[Value], tag: &str) -> Vec<String> {
    let prefix = format!("{tag} ");
    records
        .iter()
        .map(body)
        .filter(|b| b.starts_with(&prefix))
        .collect()
}

#[test]
fn lines_carry_the_runtime_s_metadata() {
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("node.log"), "host line 0\nhost line 1\n").unwrap();

    let mut spec = PodSpec::new("meta");
    spec.namespace = "shop".into();
    spec.labels = map(&[("app", "meta"), ("tier", "web")]);
    spec.annotations = map(&[("team", "obs"), ("not-copied", "x")]);
    let uid = spec.uid.clone();
    let pod = harness.run_pod(spec);
    // The agent starts before the container: its log file is new to the agent and
    // to the agent's registry (learnt by the on-demand CRI lookup, not the rescan).
    let mut agent = Agent::start(
        &dir.path().join("data"),
        &format!(
            "{}sources:\n  - name: pods\n    include: [{}]\n    format: cri\n    sink: local\n\
             \x20 - name: host\n    include: [\"{}/*.log\"]\n    sink: local\n\
             sinks:\n  local: {{type: store}}\n",
            settings(harness.endpoint(), "5s"),
            globs(&[&pod]),
            host.display()
        ),
    );
    let store = agent.store_dir();
    wait_for(Duration::from_secs(10), "the host lines", || {
        records(&store)
            .iter()
            .filter(|r| body(r).starts_with("host line"))
            .count()
            == 2
    });
    let mut container = ContainerSpec::shell("app", &print_lines("meta", 20));
    container.env = map(&[("LOG_FORMAT", "json")]);
    let started = Instant::now();
    let handle = pod.start_container(container);

    wait_for(Duration::from_secs(15), "the container's 20 lines", || {
        bodies_of(&records(&store), "meta").len() == 20
    });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shipped after {:?}: held for the whole metadata_wait instead of until CRI answered",
        started.elapsed()
    );
    let all = records(&store);
    for r in all.iter().filter(|r| body(r).starts_with("meta ")) {
        assert_eq!(resource(r, "k8s.pod"), Some("meta"), "{r}");
        assert_eq!(resource(r, "k8s.namespace"), Some("shop"), "{r}");
        assert_eq!(resource(r, "k8s.container"), Some("app"), "{r}");
        assert_eq!(resource(r, "k8s.pod_uid"), Some(uid.as_str()), "{r}");
        assert_eq!(resource(r, "k8s.node"), Some(NODE), "{r}");
        assert_eq!(resource(r, "container.id"), Some(handle.id()), "{r}");
        assert_eq!(
            resource(r, "container.image"),
            Some(common::cri::BUSYBOX_IMAGE),
            "{r}"
        );
        assert_eq!(resource(r, "k8s.pod.label.app"), Some("meta"), "{r}");
        assert_eq!(resource(r, "k8s.pod.label.tier"), Some("web"), "{r}");
        assert_eq!(resource(r, "k8s.pod.annotation.team"), Some("obs"), "{r}");
        assert_eq!(resource(r, "k8s.pod.annotation.not-copied"), None, "{r}");
        assert!(
            r["resource"]
                .as_object()
                .unwrap()
                .keys()
                .all(|k| !k.starts_with("k8s.pod.label.io.kubernetes")),
            "the kubelet's own labels are no pod labels: {r}"
        );
    }
    for r in all.iter().filter(|r| body(r).starts_with("host line")) {
        assert_eq!(r["resource"], serde_json::json!({"k8s.node": NODE}), "{r}");
    }
    // The fields are queryable as any other.
    assert_eq!(
        query_json(
            &store,
            &["--field", &format!("container.id={}", handle.id())]
        )
        .len(),
        20
    );
    let metrics = agent.metrics();
    assert_eq!(metric(&metrics, "logtap_cri_up", &[]), 1.0, "{metrics}");
    assert_eq!(
        metric(&metrics, "logtap_enrich_metadata_missing_total", &[]),
        0.0,
        "{metrics}"
    );
    assert!(agent.stop(), "clean exit\n{}", agent.log());
}

#[test]
fn selectors_route_each_container_by_env_and_labels() {
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file_sink = data.join("pay.ndjson");
    let mut pay = PodSpec::new("route-pay");
    pay.labels = map(&[("team", "pay")]);
    let mut audit = PodSpec::new("route-audit");
    audit.labels = map(&[("audit", "off")]);
    let plain = PodSpec::new("route-plain");
    let (pay, audit, plain) = (
        harness.run_pod(pay),
        harness.run_pod(audit),
        harness.run_pod(plain),
    );
    // `json`: containers logging JSON, unless their pod opted out of auditing.
    // `pay`: the pay team's containers, unless they run in debug mode.
    let mut agent = Agent::start(
        &data,
        &format!(
            "{settings}sources:\n\
             \x20 - name: json\n    include: [{globs}]\n    sink: store\n    selector:\n      include_env: {{LOG_FORMAT: json}}\n      exclude_labels: {{audit: \"off\"}}\n\
             \x20 - name: pay\n    include: [{globs}]\n    sink: file\n    selector:\n      include_labels: {{team: pay}}\n      exclude_env: {{DEBUG: \"^1|true$\"}}\n\
             sinks:\n  store: {{type: store}}\n  file: {{type: file, path: \"{file}\"}}\n",
            settings = settings(harness.endpoint(), "5s"),
            globs = globs(&[&pay, &audit, &plain]),
            file = file_sink.display(),
        ),
    );
    let store = agent.store_dir();
    // Started after the agent: each container's facts come from CRI while its file
    // is already being looked at.
    let container = |pod: &PodHandle, name: &str, env: &[(&str, &str)]| {
        let mut spec = ContainerSpec::shell(name, &print_lines(name, 10));
        spec.env = map(env);
        pod.start_container(spec)
    };
    let _c = [
        container(&pay, "both", &[("LOG_FORMAT", "json")]),
        container(&pay, "debug", &[("LOG_FORMAT", "text"), ("DEBUG", "1")]),
        container(&pay, "payonly", &[]),
        container(&audit, "audited", &[("LOG_FORMAT", "json")]),
        container(&plain, "jsononly", &[("LOG_FORMAT", "json")]),
    ];
    let expect_store = ["both", "jsononly"];
    let expect_file = ["both", "payonly"];
    wait_for(Duration::from_secs(20), "every routed line", || {
        let s = records(&store);
        let f = file_records(&file_sink);
        expect_store.iter().all(|t| bodies_of(&s, t).len() == 10)
            && expect_file.iter().all(|t| bodies_of(&f, t).len() == 10)
    });
    // The selectors decided on the facts; give a wrong decision time to show.
    std::thread::sleep(Duration::from_millis(1500));
    let tags = |records: &[Value]| -> BTreeMap<String, usize> {
        let mut tags = BTreeMap::new();
        for r in records {
            let b = body(r);
            let tag = b.split(' ').next().unwrap_or_default().to_owned();
            *tags.entry(tag).or_default() += 1;
        }
        tags
    };
    let in_store = tags(&records(&store));
    let in_file = tags(&file_records(&file_sink));
    let expected = |names: &[&str]| -> BTreeMap<String, usize> {
        names.iter().map(|n| (n.to_string(), 10)).collect()
    };
    assert_eq!(in_store, expected(&expect_store), "json → store");
    assert_eq!(in_file, expected(&expect_file), "pay → file");
    // Each sink has every line once, with its container's fields.
    for r in file_records(&file_sink) {
        assert_eq!(resource(&r, "k8s.pod"), Some("route-pay"), "{r}");
        assert_eq!(resource(&r, "k8s.pod.label.team"), Some("pay"), "{r}");
    }
    let metrics = agent.metrics();
    assert_eq!(
        metric(
            &metrics,
            "logtap_selector_decisions_total",
            &[("outcome", "path_only")]
        ),
        0.0,
        "every decision on the runtime's facts\n{metrics}"
    );
    assert!(agent.stop(), "clean exit\n{}", agent.log());
}

#[test]
fn kubelet_rotation_with_reopen_loses_and_repeats_nothing() {
    let Some(harness) = CriHarness::start() else {
        return;
    };
    const TOTAL: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let pod = harness.run_pod(PodSpec::new("rotate"));
    let mut agent = Agent::start(
        &dir.path().join("data"),
        &format!(
            "{}sources:\n  - name: pods\n    include: [{}]\n    format: cri\n    sink: local\n\
             sinks:\n  local: {{type: store}}\n",
            settings(harness.endpoint(), "2s"),
            globs(&[&pod])
        ),
    );
    let store = agent.store_dir();
    // About 1000 lines a second, for three seconds.
    let script = format!(
        "i=0; while [ $i -lt {TOTAL} ]; do echo \"rot seq=$i\"; i=$((i+1)); \
         [ $((i % 10)) -eq 0 ] && usleep 10000; done; exec sleep 3600"
    );
    let handle = pod.start_container(ContainerSpec::shell("writer", &script));
    let live = handle.log_path().to_path_buf();
    let lines_in = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let mut rotated: Vec<PathBuf> = Vec::new();
    for round in 0..2 {
        wait_for(Duration::from_secs(10), "the writer's lines", || {
            lines_in(&live) >= 600
        });
        // What the kubelet's rotation does: rename, then ask the runtime to reopen.
        let to = live.with_file_name(format!("0.log.2026010{round}-000000"));
        std::fs::rename(&live, &to).unwrap();
        handle.reopen_log();
        rotated.push(to);
    }
    let seqs = || -> BTreeMap<u64, u32> {
        let mut counts = BTreeMap::new();
        for r in records(&store) {
            if let Some(seq) = seq_of(&body_bytes(&r)) {
                *counts.entry(seq).or_insert(0) += 1;
            }
        }
        counts
    };
    wait_for_every(
        Duration::from_secs(20),
        Duration::from_millis(300),
        "every line",
        || seqs().len() as u64 == TOTAL,
    );
    let in_files: usize = rotated.iter().chain([&live]).map(|p| lines_in(p)).sum();
    assert_eq!(in_files as u64, TOTAL, "containerd wrote each line once");
    assert!(
        lines_in(&rotated[1]) > 0,
        "the second rotation came mid-write"
    );
    let counts = seqs();
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        repeated.is_empty(),
        "lines shipped more than once: {repeated:?}"
    );
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..TOTAL).collect::<Vec<_>>()
    );
    // Every file's lines carry the container's fields, rotated ones too.
    let ids: BTreeSet<Option<String>> = records(&store)
        .iter()
        .map(|r| resource(r, "container.id").map(str::to_owned))
        .collect();
    assert_eq!(ids, BTreeSet::from([Some(handle.id().to_owned())]));
    assert!(agent.stop(), "clean exit\n{}", agent.log());
}

#[test]
fn a_removed_pod_s_last_lines_arrive() {
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pod = harness.run_pod(PodSpec::new("leaving"));
    let mut agent = Agent::start(
        &dir.path().join("data"),
        &format!(
            "{}sources:\n  - name: pods\n    include: [{}]\n    format: cri\n    sink: local\n\
             sinks:\n  local: {{type: store}}\n",
            settings(harness.endpoint(), "2s"),
            globs(&[&pod])
        ),
    );
    let store = agent.store_dir();
    let log_dir = pod.log_dir().to_path_buf();
    let handle = pod.start_container(ContainerSpec::shell(
        "app",
        "echo 'last start'; sleep 1; i=0; while [ $i -lt 200 ]; do echo \"last $i\"; i=$((i+1)); done",
    ));
    let id = handle.id().to_owned();
    wait_for(Duration::from_secs(10), "the first line", || {
        !bodies_of(&records(&store), "last").is_empty()
    });
    handle.wait_exit(Duration::from_secs(10));
    // Removed at once, log directory included, as the kubelet does after a delete.
    pod.remove();
    assert!(!log_dir.exists(), "the pod's log directory is gone");
    wait_for(Duration::from_secs(10), "the last lines", || {
        bodies_of(&records(&store), "last").len() == 201
    });
    let all = records(&store);
    let last = bodies_of(&all, "last");
    let expected: Vec<String> = std::iter::once("last start".to_owned())
        .chain((0..200).map(|i| format!("last {i}")))
        .collect();
    assert_eq!(last, expected, "each line once, in order");
    for r in &all {
        assert_eq!(resource(r, "container.id"), Some(id.as_str()), "{r}");
        assert_eq!(resource(r, "k8s.pod"), Some("leaving"), "{r}");
    }
    assert!(agent.stop(), "clean exit\n{}", agent.log());
}

#[test]
fn unreachable_runtime_socket_degrades_to_path_fields() {
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pod = harness.run_pod(PodSpec::new("nocri"));
    let uid = pod.spec.uid.clone();
    let missing = format!("unix://{}/missing.sock", dir.path().display());
    let mut agent = Agent::start(
        &dir.path().join("data"),
        &format!(
            "{}sources:\n  - name: pods\n    include: [{}]\n    format: cri\n    sink: local\n\
             sinks:\n  local: {{type: store}}\n",
            settings(&missing, "1s"),
            globs(&[&pod])
        ),
    );
    let store = agent.store_dir();
    let _handle = pod.start_container(ContainerSpec::shell("app", &print_lines("nocri", 5)));
    wait_for(
        Duration::from_secs(15),
        "the lines despite the runtime",
        || bodies_of(&records(&store), "nocri").len() == 5,
    );
    for r in records(&store) {
        assert_eq!(resource(&r, "k8s.pod"), Some("nocri"), "{r}");
        assert_eq!(resource(&r, "k8s.namespace"), Some("default"), "{r}");
        assert_eq!(resource(&r, "k8s.container"), Some("app"), "{r}");
        assert_eq!(resource(&r, "k8s.pod_uid"), Some(uid.as_str()), "{r}");
        assert_eq!(resource(&r, "k8s.node"), Some(NODE), "{r}");
        assert_eq!(resource(&r, "container.id"), None, "{r}");
    }
    let metrics = agent.metrics();
    assert_eq!(metric(&metrics, "logtap_cri_up", &[]), 0.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "logtap_enrich_metadata_missing_total",
            &[("reason", "cri_unavailable")]
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        agent.log().contains("container runtime unreachable"),
        "{}",
        agent.log()
    );
    assert!(agent.stop(), "clean exit\n{}", agent.log());
}

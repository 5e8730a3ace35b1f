//! Collections declared by container environment (`logtap_logs_<name>=...`), end to
//! end: the real agent with only a catch-all source and no `LogCollection`, a real
//! containerd + runc (see `common/cri.rs`; needs root and `containerd runc
//! busybox-static`, or `LOGTAP_SKIP_CRI_TESTS=1` to skip) whose containers declare
//! what they want collected, records read back through `logtap query`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cri::{ContainerSpec, CriHarness, PodHandle, PodSpec};
use common::*;

const NAMESPACE: &str = "team-env";
const LINES: usize = 300;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(harness: &'static CriHarness, name: &str) -> PodHandle {
    let mut spec = PodSpec::new(name);
    spec.namespace = NAMESPACE.into();
    harness.run_pod(spec)
}

/// A shell loop printing `<line i>` for i in 0..LINES to `target` (a redirection),
/// then staying alive: the pod is removed by the test.
fn print(line: &str, target: &str) -> String {
    format!(
        "mkdir -p /tmp/app; i=0; while [ $i -lt {LINES} ]; do echo \"{line}\" {target}; i=$((i+1)); done; exec sleep 3600"
    )
}

/// The numbers `parse` finds in the records, each expected once in 0..LINES.
fn assert_once(records: &[Value], what: &str, parse: impl Fn(&Value) -> usize) {
    let mut seen: Vec<usize> = records.iter().map(parse).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..LINES).collect::<Vec<_>>(), "{what}: once each");
}

fn resource<'a>(record: &'a Value, key: &str) -> Option<&'a str> {
    record["resource"][key].as_str()
}

fn every_record(store: &Path) -> Vec<Value> {
    if !store.exists() {
        return Vec::new();
    }
    store_records(store)
}

#[test]
fn containers_declaring_collections_in_their_environment_are_collected_tagged_and_routed() {
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let started = Instant::now();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    // Two sinks; containers may name only `local` (the default). `private` is the
    // admin's own: a container naming it is refused. A catch-all source of this
    // test's namespace leaves out the containers that declare their own collections,
    // so each line is stored once.
    let config = format!(
        "sources:\n  - name: pods\n    include: [\"/var/log/pods/{NAMESPACE}_*/*/*.log\"]\n    \
         selector: {{exclude_env: {{'logtap_logs_*': ''}}}}\n    sink: local\n\
         sinks:\n  local: {{type: store}}\n  private: {{type: store, path: \"{private}\"}}\n\
         env_configs: {{default_sink: local}}\n\
         cri: {{endpoint: \"{endpoint}\", rescan_interval: 60s}}\n\
         files: {{rescan_interval: 1s}}\n\
         batch: {{timeout: 100ms}}\n\
         collections: {{enabled: false}}\n\
         kubernetes: {{enabled: false, node_name: node-env}}\n",
        private = data_dir.join("private").display(),
        endpoint = harness.endpoint(),
    );
    let mut agent = Agent::start(&data_dir, &config);
    agent.wait_ready();
    let store = agent.store_dir();

    // Started after the agent: found by the poll of the runtime, not a rescan (60 s).
    let out_pod = pod(harness, "env-out");
    let mut app = ContainerSpec::shell("app", &print("out $i", ""));
    app.env = env(&[
        ("logtap_logs_app", "stdout"),
        ("logtap_logs_app_tags", "team=shop,tier=web"),
    ]);
    out_pod.start_container(app);
    // Declares nothing: read by the catch-all.
    out_pod.start_container(ContainerSpec::shell("plain", &print("plain $i", "")));

    let file_pod = pod(harness, "env-file");
    let mut files = ContainerSpec::shell(
        "app",
        &print(
            "{\\\"seq\\\":$i,\\\"kind\\\":\\\"file\\\"}",
            ">> /tmp/app/app.log",
        ),
    );
    files.env = env(&[
        ("logtap_logs_files", "/tmp/app/*.log"),
        ("logtap_logs_files_format", "json"),
        // Invalid, each skipped alone: a glob climbing out of the container, and a
        // sink the admin did not open to containers.
        ("logtap_logs_evil", "/tmp/../../etc/*"),
        ("logtap_logs_leak", "stdout"),
        ("logtap_logs_leak_sink", "private"),
    ]);
    file_pod.start_container(files);

    let outs = || records_of(&store, "out ");
    let file_lines = || records_of(&store, "{\"seq\":");
    let plain = || records_of(&store, "plain ");
    wait_for(Duration::from_secs(30), "every line", || {
        outs().len() >= LINES && file_lines().len() >= LINES && plain().len() >= LINES
    });

    assert_once(&outs(), "stdout", |r| {
        r["body"].as_str().unwrap()["out ".len()..].parse().unwrap()
    });
    for r in outs() {
        assert_eq!(resource(&r, "logtap.collection"), Some("app"), "{r}");
        assert_eq!(resource(&r, "tag.team"), Some("shop"), "{r}");
        assert_eq!(resource(&r, "tag.tier"), Some("web"), "{r}");
        assert_eq!(resource(&r, "k8s.namespace"), Some(NAMESPACE), "{r}");
        assert_eq!(resource(&r, "k8s.pod"), Some("env-out"), "{r}");
        assert_eq!(resource(&r, "k8s.container"), Some("app"), "{r}");
    }
    assert_once(&file_lines(), "file", |r| {
        r["fields"]["seq"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("parsed as JSON: {r}"))
    });
    for r in file_lines() {
        assert_eq!(
            r["path"],
            "container://team-env/env-file/app/tmp/app/app.log"
        );
        assert_eq!(resource(&r, "logtap.collection"), Some("files"), "{r}");
        assert_eq!(resource(&r, "k8s.pod"), Some("env-file"), "{r}");
        assert_eq!(r["fields"]["kind"], "file", "{r}");
    }

    let metrics = agent.metrics();
    for reason in ["invalid_path", "sink_not_allowed"] {
        assert_eq!(
            metric(
                &metrics,
                "logtap_env_config_errors_total",
                &[("reason", reason)]
            ),
            1.0,
            "{reason}: counted once, however often the container is looked at"
        );
    }
    assert_eq!(metric(&metrics, "logtap_env_configs", &[]), 2.0);
    let log = agent.log();
    for variable in ["logtap_logs_evil", "logtap_logs_leak_sink"] {
        assert!(
            log.lines().any(|l| l.contains(variable)
                && l.contains("team-env/env-file/app")
                && l.contains("not collected")),
            "the warning names the container and {variable}:\n{log}"
        );
    }
    assert_once(&plain(), "catch-all", |r| {
        r["body"].as_str().unwrap()["plain ".len()..]
            .parse()
            .unwrap()
    });
    assert!(
        plain()
            .iter()
            .all(|r| resource(r, "logtap.collection").is_none()),
        "a container declaring nothing is no collection's"
    );
    assert!(
        every_record(&data_dir.join("private")).is_empty(),
        "a container cannot route to a sink it was not allowed"
    );

    assert!(agent.stop(), "the agent stops cleanly");
    assert_eq!(outs().len(), LINES, "no duplicates, the catch-all included");
    assert_eq!(file_lines().len(), LINES, "no duplicates");
    assert_eq!(plain().len(), LINES, "no duplicates");

    // A restart finds the same declarations under the same source names: their
    // checkpoints hold (nothing read again), and a new replica declaring the same
    // collection joins it.
    let mut agent = Agent::start(&data_dir, &config);
    agent.wait_ready();
    let mut replica = ContainerSpec::shell("app", &print("later $i", ""));
    replica.env = env(&[
        ("logtap_logs_app", "stdout"),
        ("logtap_logs_app_tags", "team=shop,tier=web"),
    ]);
    let replica_pod = pod(harness, "env-out-2");
    replica_pod.start_container(replica);
    let later = || records_of(&store, "later ");
    wait_for(Duration::from_secs(30), "the replica's lines", || {
        later().len() >= LINES
    });
    assert!(agent.stop(), "the agent stops cleanly");
    assert_once(&later(), "replica", |r| {
        r["body"].as_str().unwrap()["later ".len()..]
            .parse()
            .unwrap()
    });
    assert!(
        later()
            .iter()
            .all(|r| resource(r, "tag.team") == Some("shop")),
        "the replica's lines are tagged as its collection"
    );
    assert_eq!(outs().len(), LINES, "nothing read again after the restart");
    assert_eq!(
        file_lines().len(),
        LINES,
        "nothing read again after the restart"
    );
    eprintln!("env configs e2e took {:?}", started.elapsed());
}

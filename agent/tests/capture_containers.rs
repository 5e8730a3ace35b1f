//! eBPF capture end to end, on real containers: containerd + runc through the CRI API
//! (`common::cri`), the real agent binary with capture enabled, the real kernel.
//!
//! Every container's captured stdout and stderr, as the store holds them, must equal
//! what the container wrote — checked against the script's known output and against
//! the CRI log containerd wrote for it — with every line shipped once, by capture (the
//! file source leaves claimed CRI logs alone). A deliberately tiny ring buffer must
//! overflow, and the holes must be repaired from the CRI log byte for byte.
//!
//! Needs root, containerd/runc/busybox-static and the eBPF object; fails without them
//! unless `LOGTAP_SKIP_CRI_TESTS=1` or `LOGTAP_SKIP_EBPF_TESTS=1` is set.

mod common;
#[path = "../src/discovery/watcher/fake_api.rs"]
#[allow(dead_code, reason = "the fake serves the watcher's unit tests too")]
mod fake_api;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use common::bpffs::PinFs;
use common::cri::{
    ContainerHandle, ContainerSpec, CriHarness, PodSpec, pod_cgroup_prefix, read_cri_log,
};
use common::{Agent, metric, query_json, store_records, wait_for};
use serde_json::Value;

/// Two agents capturing at once would see each other's containers (same prefix):
/// the tests run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn skip_ebpf() -> bool {
    if std::env::var("LOGTAP_SKIP_EBPF_TESTS").as_deref() == Ok("1") {
        eprintln!("note: LOGTAP_SKIP_EBPF_TESTS=1: eBPF capture test skipped");
        return true;
    }
    false
}

fn agent_config(pod_glob: &str, endpoint: &str, ring: &str) -> String {
    format!(
        "checkpoint: {{interval: 200ms}}\n\
         cri: {{endpoint: \"{endpoint}\"}}\n\
         sources:\n  - name: pods\n    include: [\"{pod_glob}\"]\n    format: cri\n    sink: local\n\
         sinks:\n  local: {{type: store}}\n\
         capture:\n  enabled: true\n  source: pods\n  cgroup_prefix: \"{}\"\n  ring_size: {ring}\n",
        pod_cgroup_prefix()
    )
}

/// Waits (up to 30 s) until `shipped` holds every number from 1 to `total`, at least
/// once each.
fn wait_for_each(total: u32, what: &str, shipped: impl Fn() -> Vec<u32>) {
    wait_for(Duration::from_secs(30), what, || {
        let seen: HashSet<u32> = shipped().into_iter().collect();
        (1..=total).all(|i| seen.contains(&i))
    });
}

fn start_agent(dir: &Path, config: &str) -> Agent {
    let agent = Agent::start(dir, config);
    assert_capturing(&agent, config);
    agent
}

/// Waits until `agent` captures, then checks what it captures with.
fn assert_capturing(agent: &Agent, config: &str) {
    wait_for(Duration::from_secs(30), "probes loaded", || {
        metric(&agent.metrics(), "logtap_capture_up", &[]) == 1.0
    });
    // Capture runs on what the agent keeps once the probes are loaded: read/search
    // and ptrace only (see `logtap::privileges`, tests/security.rs).
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let caps = logtap::privileges::parse_status(&status).unwrap();
    assert_eq!(
        (caps.effective, caps.permitted, caps.no_new_privs),
        ((1 << 2) | (1 << 19), (1 << 2) | (1 << 19), true),
        "{status}"
    );
    // The write path runs on exactly one kind of hooks, and says which.
    let metrics = agent.metrics();
    let mode = |m| metric(&metrics, "logtap_capture_hook_mode", &[("mode", m)]);
    assert_eq!(
        mode("fentry") + mode("tracepoint") + mode("compat"),
        1.0,
        "{metrics}"
    );
    for forced in ["tracepoint", "compat"] {
        if config.contains(&format!("hooks: {forced}\n")) {
            assert_eq!(mode(forced), 1.0, "{metrics}");
        }
    }
}

/// The stream text of a container as the runtime logged it: CRI content, plus one
/// newline per `F` line.
fn cri_stream(log: &Path, stream: &str) -> String {
    let mut text = String::new();
    for (s, tag, message) in read_cri_log(log) {
        if s == stream {
            text.push_str(&message);
            if tag == "F" {
                text.push('\n');
            }
        }
    }
    text
}

/// The stream text as shipped: the records of `<log>#<stream>` in offset order, each
/// line with its newline. Checks that each offset was shipped once.
fn shipped_stream(records: &[Value], log: &Path, stream: &str) -> String {
    let path = format!("{}#{stream}", log.display());
    let mut lines: BTreeMap<u64, String> = BTreeMap::new();
    for r in records.iter().filter(|r| r["path"] == path.as_str()) {
        let offset = r["offset"].as_u64().unwrap();
        assert_eq!(r["stream"], stream, "{path}: record tagged with its stream");
        let body = r["body"].as_str().expect("utf-8 body").to_string();
        assert!(
            lines.insert(offset, body).is_none(),
            "{path}: offset {offset} shipped twice"
        );
    }
    let mut text = String::new();
    for body in lines.values() {
        text.push_str(body);
        text.push('\n');
    }
    text
}

/// containerd copies from the container's pipe on its own time: its log completes a
/// moment after the container exits (capture is usually ahead of it).
fn wait_for_cri(log: &Path, stream: &str, expected: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = cri_stream(log, stream);
        if got == expected {
            return;
        }
        if std::time::Instant::now() > deadline {
            let at = got
                .bytes()
                .zip(expected.bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(expected.len()));
            let around = |t: &str| {
                t.get(at.saturating_sub(40)..(at + 40).min(t.len()))
                    .unwrap_or("")
                    .to_string()
            };
            panic!(
                "{}#{stream}: containerd logged {} bytes, the script wrote {}; first difference at {at}: logged {:?}, written {:?}",
                log.display(),
                got.len(),
                expected.len(),
                around(&got),
                around(expected)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn numbered(prefix: &str, range: std::ops::RangeInclusive<u32>) -> String {
    range.map(|i| format!("{prefix}{i}\n")).collect()
}

/// Waits until the store holds `expected` for the stream (the container's whole
/// output), then returns every record.
fn wait_for_stream(agent: &Agent, log: &Path, stream: &str, expected: &str) -> Vec<Value> {
    let store = agent.store_dir();
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if store.exists() {
            records = query_json(&store, &[]);
            if shipped_stream(&records, log, stream) == expected {
                return records;
            }
        }
        if std::time::Instant::now() > deadline {
            let got = shipped_stream(&records, log, stream);
            panic!(
                "{}#{stream}: {} of {} bytes shipped; first difference at byte {:?}\nagent log:\n{}",
                log.display(),
                got.len(),
                expected.len(),
                got.bytes().zip(expected.bytes()).position(|(a, b)| a != b),
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run(pod: &common::cri::PodHandle, name: &str, script: &str) -> ContainerHandle {
    pod.start_container(ContainerSpec::shell(name, script))
}

/// A container printing "tick 1" to "tick 3000" on stdout, one a millisecond: long
/// enough for an agent to be stopped, killed or replaced in the middle.
fn run_ticker(pod: &common::cri::PodHandle) -> ContainerHandle {
    run(
        pod,
        "ticker",
        "i=1; while [ $i -le 3000 ]; do echo \"tick $i\"; i=$((i+1)); usleep 1000; done; sleep 1",
    )
}

#[test]
fn containers_are_captured_exactly_once_by_capture() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if skip_ebpf() {
        return;
    }
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(
        dir.path(),
        &agent_config(
            "/var/log/pods/default_capt-*/**/*.log",
            harness.endpoint(),
            "16MiB",
        ),
    );

    // Several containers at once: interleaved streams, 64 KiB writes, a pipeline
    // inside the container, and one that lives a moment and prints three lines.
    let pod = harness.run_pod(PodSpec::new("capt-main"));
    let interleaved = run(
        &pod,
        "interleaved",
        "i=1; while [ $i -le 3000 ]; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i+1)); done",
    );
    let big = run(
        &pod,
        "big-writes",
        "seq 1 40000 > /tmp/f; dd if=/tmp/f bs=65536 2>/dev/null",
    );
    let piped = run(&pod, "piped", "seq 1 1000 | head -n 500 | cat");
    let short_pod = harness.run_pod(PodSpec::new("capt-short"));
    let short = short_pod.start_container(ContainerSpec::shell("brief", "echo a; echo b; echo c"));

    let out = numbered("out ", 1..=3000);
    let err = numbered("err ", 1..=3000);
    let seq40k = numbered("", 1..=40000);
    let seq500 = numbered("", 1..=500);
    let cases: [(&ContainerHandle, &str, &str); 5] = [
        (&interleaved, "stdout", &out),
        (&interleaved, "stderr", &err),
        (&big, "stdout", &seq40k),
        (&piped, "stdout", &seq500),
        (&short, "stdout", "a\nb\nc\n"),
    ];
    for (container, stream, expected) in cases {
        container.wait_exit(Duration::from_secs(30));
        let log = container.log_path();
        wait_for_stream(&agent, log, stream, expected);
        if std::ptr::eq(container, &big) {
            // containerd 1.6 loses the tail of a burst written right before the
            // container exits (its log stops short; seen on every run here): capture,
            // which copies at the write itself, has all of it. What containerd did log
            // agrees with it.
            std::thread::sleep(Duration::from_secs(1));
            let logged = cri_stream(log, stream);
            assert!(
                expected.starts_with(&logged),
                "{}: containerd logged bytes the script did not write",
                log.display()
            );
        } else {
            wait_for_cri(log, stream, expected);
        }
    }

    // Each line once: no copy in the store at all, and none read from the CRI files.
    let store = agent.store_dir();
    let raw = store_records(&store);
    let deduplicated = query_json(&store, &[]);
    assert_eq!(raw.len(), deduplicated.len(), "a record was shipped twice");
    let logs: HashSet<String> = [&interleaved, &big, &piped, &short]
        .iter()
        .map(|c| c.log_path().display().to_string())
        .collect();
    let from_files = raw
        .iter()
        .filter(|r| logs.contains(r["path"].as_str().unwrap_or_default()))
        .count();
    assert_eq!(
        from_files, 0,
        "the file source shipped lines capture had claimed"
    );
    let metrics = agent.metrics();
    assert!(metric(&metrics, "logtap_capture_records_total", &[]) > 0.0);
    assert_eq!(
        metric(&metrics, "logtap_capture_unrepairable_bytes_total", &[]),
        0.0
    );
    // A container that ended with every byte captured ends its streams at the kernel's
    // final offset, without reading its CRI log (big-writes' log even stops short).
    wait_for(
        Duration::from_secs(30),
        "streams ended at the kernel's final offset",
        || {
            let ends = |how| {
                metric(
                    &agent.metrics(),
                    "logtap_capture_stream_ends_total",
                    &[("how", how)],
                )
            };
            ends("kernel_offset") >= 1.0
        },
    );
}

#[test]
fn a_tiny_ring_overflows_and_the_holes_are_repaired_from_the_cri_log() {
    tiny_ring_holes_are_repaired("ring", "");
}

/// The same on the write path for kernels 5.8–5.14, forced: its records sit at the
/// same offsets, so the stage repairs its holes alike.
#[test]
fn on_the_compat_hooks_a_tiny_ring_s_holes_are_repaired_from_the_cri_log() {
    tiny_ring_holes_are_repaired("compat", "  hooks: compat\n");
}

/// A container flooding a 16 KiB ring (`extra`: more of the capture section): every
/// line arrives once, the holes repaired from its CRI log.
fn tiny_ring_holes_are_repaired(pod: &str, extra: &str) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if skip_ebpf() {
        return;
    }
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(
        dir.path(),
        &(agent_config(
            &format!("/var/log/pods/default_{pod}-*/**/*.log"),
            harness.endpoint(),
            "16KiB",
        ) + extra),
    );
    let pod = harness.run_pod(PodSpec::new(&format!("{pod}-flood")));
    // Bursts far larger than 16 KiB, in one-line writes and in stdio-buffered blocks.
    // The pause before exiting lets containerd log the whole output (it loses the
    // tail of a burst when the container exits at once; see the test above): the log
    // is the repair source here, so it must be complete.
    let flood = run(
        &pod,
        "flood",
        "i=1; while [ $i -le 2000 ]; do echo \"line $i of the flood\"; i=$((i+1)); done; seq 1 100000; sleep 1",
    );
    flood.wait_exit(Duration::from_secs(60));
    let log = flood.log_path();
    let mut expected = numbered("line ", 1..=2000)
        .lines()
        .map(|l| format!("{l} of the flood\n"))
        .collect::<String>();
    expected.push_str(&numbered("", 1..=100000));
    wait_for_cri(log, "stdout", &expected);
    let records = wait_for_stream(&agent, log, "stdout", &expected);
    assert!(
        records
            .iter()
            .all(|r| r["path"] != log.display().to_string().as_str()),
        "the file source shipped lines capture had claimed"
    );
    let metrics = agent.metrics();
    let dropped = metric(
        &metrics,
        "logtap_capture_ring_dropped_bytes_total",
        &[("reason", "ring_full")],
    );
    let repaired = metric(&metrics, "logtap_capture_repaired_bytes_total", &[]);
    eprintln!(
        "16 KiB ring: {dropped} bytes dropped in the kernel (ring full), {repaired} bytes repaired from the CRI log, {} bytes shipped",
        expected.len()
    );
    assert!(
        dropped > 0.0,
        "a 16 KiB ring did not overflow: the test proves nothing\n{metrics}"
    );
    assert!(
        repaired >= dropped,
        "every dropped byte must come back from the CRI log\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, "logtap_capture_unrepairable_bytes_total", &[]),
        0.0
    );
}

/// The agent killed (-9) while a container writes, and started again: what the
/// container wrote meanwhile comes from its CRI log at the stream's checkpoint, so the
/// stream is complete; only what was shipped after the last checkpoint comes twice.
#[test]
fn an_agent_killed_mid_stream_resumes_from_the_cri_log_and_loses_nothing() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if skip_ebpf() {
        return;
    }
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // On the forced fallback, which a restart must not change.
    let config = agent_config(
        "/var/log/pods/default_restart-*/**/*.log",
        harness.endpoint(),
        "16MiB",
    ) + "  hooks: tracepoint\n";
    let mut agent = start_agent(dir.path(), &config);
    let pod = harness.run_pod(PodSpec::new("restart-ticker"));
    let ticker = run_ticker(&pod);
    let log = ticker.log_path().to_path_buf();
    let shipped = |agent: &Agent| -> Vec<u32> {
        let store = agent.store_dir();
        if !store.exists() {
            return Vec::new();
        }
        let path = format!("{}#stdout", log.display());
        query_json(&store, &["--raw"])
            .iter()
            .filter(|r| r["path"] == path.as_str())
            .filter_map(|r| r["body"].as_str()?.strip_prefix("tick ")?.parse().ok())
            .collect()
    };
    wait_for(Duration::from_secs(20), "some ticks captured", || {
        shipped(&agent).len() > 300
    });
    agent.kill9();
    std::thread::sleep(Duration::from_millis(700));
    let agent = Agent::start(dir.path(), &config);
    ticker.wait_exit(Duration::from_secs(30));
    wait_for_each(3000, "every tick in the store", || shipped(&agent));
    let all = shipped(&agent);
    let duplicates = all.len() - 3000;
    eprintln!("restart: 3000 ticks, {duplicates} shipped twice");
    assert!(
        duplicates < 1500,
        "{duplicates} duplicates: more than the checkpoint interval explains"
    );
    let metrics = agent.metrics();
    assert!(
        metric(&metrics, "logtap_capture_repaired_bytes_total", &[]) > 0.0,
        "the restarted agent read the stream from the CRI log\n{metrics}"
    );
}

/// A `LogCollection` selecting a captured container gets its lines too, in its own
/// store, as it would from the CRI log: capture ships the container for the file
/// config's capture source only, and the file source still reads the claimed log for
/// the collection. (The claim check once looked at the first matching config only, so
/// the collection got nothing.)
#[test]
fn a_collection_selecting_a_captured_container_gets_its_lines() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if skip_ebpf() {
        return;
    }
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lc_store = dir.path().join("lc");
    let api = fake_api::FakeApi::start_new();
    api.put_collection(
        "default",
        "web",
        serde_json::json!({
            "selector": {"pod_name": "^lc-web$"},
            "sources": [{"name": "out", "input": {"type": "container_stdout"}}],
            "sink": {"type": "store", "path": lc_store},
        }),
    );
    let config = format!(
        "{}kubernetes: {{api_url: \"{}\", node_name: node-capture, metadata_wait: 1s}}\n\
         collections: {{facts_wait: 2s, admin_namespace: default}}\n",
        agent_config(
            "/var/log/pods/default_lc-*/**/*.log",
            harness.endpoint(),
            "16MiB"
        ),
        api.url()
    );
    let agent = start_agent(dir.path(), &config);
    let pod = harness.run_pod(PodSpec::new("lc-web"));
    let web = run(
        &pod,
        "web",
        "i=1; while [ $i -le 500 ]; do echo \"web $i\"; i=$((i+1)); done; sleep 1",
    );
    web.wait_exit(Duration::from_secs(30));
    let log = web.log_path();
    let expected = numbered("web ", 1..=500);
    wait_for_cri(log, "stdout", &expected);
    // Capture ships it into the file config's store, once.
    wait_for_stream(&agent, log, "stdout", &expected);
    // The collection gets every line, once, read from the CRI log.
    let collected = || -> Vec<String> {
        if !lc_store.exists() {
            return Vec::new();
        }
        store_records(&lc_store)
            .iter()
            .filter(|r| r["path"] == log.display().to_string().as_str())
            .filter_map(|r| r["body"].as_str().map(str::to_owned))
            .collect()
    };
    let want: Vec<String> = expected.lines().map(str::to_owned).collect();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        got = collected();
        if got.len() >= want.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        got == want,
        "the collection's store holds {} of {} lines, first {:?}\nagent log:\n{}",
        got.len(),
        want.len(),
        got.first(),
        agent.log()
    );
}

/// A container the capture source's selector leaves out (here: it declares its own
/// collection in its environment, which the DaemonSet's catch-all excludes) is not
/// captured: the collection that selects it reads its CRI log, and each of its lines
/// is stored once, by that collection. A container the selector takes is captured.
#[test]
fn a_container_its_source_does_not_select_is_left_to_the_collections_that_do() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if skip_ebpf() {
        return;
    }
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "checkpoint: {{interval: 200ms}}\n\
         cri: {{endpoint: \"{endpoint}\"}}\n\
         sources:\n  - name: pods\n    include: [\"/var/log/pods/default_sel-*/**/*.log\"]\n    format: cri\n    \
         selector: {{exclude_env: {{'logtap_logs_*': ''}}}}\n    sink: local\n\
         sinks:\n  local: {{type: store}}\n\
         env_configs: {{default_sink: local}}\n\
         capture:\n  enabled: true\n  source: pods\n  cgroup_prefix: \"{prefix}\"\n  ring_size: 16MiB\n",
        endpoint = harness.endpoint(),
        prefix = pod_cgroup_prefix(),
    );
    let agent = start_agent(dir.path(), &config);
    let pod = harness.run_pod(PodSpec::new("sel-app"));
    let script = |word: &str| {
        format!("i=1; while [ $i -le 500 ]; do echo \"{word} $i\"; i=$((i+1)); done; sleep 1")
    };
    let mut declaring = ContainerSpec::shell("declares", &script("env"));
    declaring.env = [("logtap_logs_app".to_string(), "stdout".to_string())].into();
    let declaring = pod.start_container(declaring);
    let plain = run(&pod, "plain", &script("plain"));
    declaring.wait_exit(Duration::from_secs(30));
    plain.wait_exit(Duration::from_secs(30));

    // The plain container: captured, once.
    let expected = numbered("plain ", 1..=500);
    wait_for_cri(plain.log_path(), "stdout", &expected);
    wait_for_stream(&agent, plain.log_path(), "stdout", &expected);

    // The declaring one: its collection's, from the CRI log, once; never capture's.
    let env_log = declaring.log_path().display().to_string();
    wait_for_cri(declaring.log_path(), "stdout", &numbered("env ", 1..=500));
    let env_records = || -> Vec<Value> {
        query_json(&agent.store_dir(), &[])
            .into_iter()
            .filter(|r| r["body"].as_str().is_some_and(|b| b.starts_with("env ")))
            .collect()
    };
    wait_for(
        Duration::from_secs(30),
        "the collection's 500 lines",
        || env_records().len() >= 500,
    );
    std::thread::sleep(Duration::from_secs(1));
    let records = env_records();
    let mut numbers: Vec<u32> = records
        .iter()
        .map(|r| r["body"].as_str().unwrap()["env ".len()..].parse().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=500).collect::<Vec<_>>(),
        "each line once; paths: {:?}\nagent log:\n{}",
        records
            .iter()
            .map(|r| r["path"].as_str().unwrap_or_default().to_owned())
            .collect::<std::collections::BTreeSet<_>>(),
        agent.log()
    );
    for r in &records {
        assert_eq!(r["path"], env_log.as_str(), "read from the CRI log: {r}");
        assert_eq!(r["resource"]["logtap.collection"], "app", "{r}");
    }
    assert!(
        metric(
            &agent.metrics(),
            "logtap_capture_streams_declined_total",
            &[]
        ) >= 1.0,
        "the declined stream is counted"
    );
}

/// A container already writing when the agent starts: the agent binds its pipes at
/// start (from `/proc`), its CRI log supplies what it wrote before, capture what it
/// wrote after the seam, and every line arrives once.
#[test]
fn a_container_running_before_the_agent_is_captured_from_its_bind_on() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if skip_ebpf() {
        return;
    }
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pod = harness.run_pod(PodSpec::new("early-writer"));
    // Bursts of 100 lines with a pause between: about a megabyte a second, long
    // enough that the agent binds it mid-run and captures most of it.
    let lines = 150_000;
    let writer = run(
        &pod,
        "writer",
        &format!(
            "i=1; while [ $i -le {lines} ]; do j=0; while [ $j -lt 100 ]; do echo \"early $i\"; \
             i=$((i+1)); j=$((j+1)); done; usleep 5000; done; sleep 1"
        ),
    );
    let log = writer.log_path().to_path_buf();
    wait_for(
        Duration::from_secs(20),
        "the writer's first lines logged",
        || cri_stream(&log, "stdout").len() > 20_000,
    );
    let agent = start_agent(
        dir.path(),
        &agent_config(
            "/var/log/pods/default_early-*/**/*.log",
            harness.endpoint(),
            "16MiB",
        ),
    );
    wait_for(
        Duration::from_secs(30),
        "the seam between log and capture",
        || {
            metric(
                &agent.metrics(),
                "logtap_capture_seams_total",
                &[("result", "exact")],
            ) >= 1.0
        },
    );
    writer.wait_exit(Duration::from_secs(90));
    let expected: String = (1..=lines).map(|i| format!("early {i}\n")).collect();
    wait_for_cri(&log, "stdout", &expected);
    let records = wait_for_stream(&agent, &log, "stdout", &expected);
    let raw = store_records(&agent.store_dir());
    assert_eq!(raw.len(), records.len(), "a record was shipped twice");
    assert!(
        raw.iter()
            .all(|r| r["path"] != log.display().to_string().as_str()),
        "the file source shipped lines of a container capture had bound"
    );
    // The log supplied what was written before the bind and the seam's window; the
    // rest came from the kernel.
    let metrics = agent.metrics();
    let from_log = metric(&metrics, "logtap_capture_repaired_bytes_total", &[]);
    let total = expected.len() as f64;
    eprintln!(
        "pre-existing writer: {total} bytes, {from_log} from the CRI log, {} captured",
        total - from_log
    );
    assert!(
        from_log < total / 2.0,
        "most of the stream should come from capture\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, "logtap_capture_unrepairable_bytes_total", &[]),
        0.0
    );
}

fn pinned_config(pod_glob: &str, endpoint: &str, ring: &str, pins: &PinFs, pin: bool) -> String {
    agent_config(pod_glob, endpoint, ring)
        + &format!(
            "  hooks: tracepoint\n  pin: {pin}\n  pin_dir: \"{}\"\n",
            pins.pin_dir().display()
        )
}

/// The numbers of the `tick N` lines shipped for `log`'s stdout, with repeats.
fn shipped_ticks(agent: &Agent, log: &Path) -> Vec<u32> {
    let store = agent.store_dir();
    if !store.exists() {
        return Vec::new();
    }
    let path = format!("{}#stdout", log.display());
    query_json(&store, &["--raw"])
        .iter()
        .filter(|r| r["path"] == path.as_str())
        .filter_map(|r| r["body"].as_str()?.strip_prefix("tick ")?.parse().ok())
        .collect()
}

/// The agent stopped (SIGTERM, as a rolling update does) while a container writes,
/// with its probes pinned: they go on capturing into the pinned ring, and the next
/// agent takes them over. Every line arrives exactly once, and not one byte after
/// the restart is read from the CRI log.
#[test]
fn a_restarted_agent_takes_over_its_pinned_probes_and_reads_nothing_from_the_log() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if skip_ebpf() {
        return;
    }
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let pins = PinFs::mount();
    let dir = tempfile::tempdir().unwrap();
    let config = pinned_config(
        "/var/log/pods/default_pinned-*/**/*.log",
        harness.endpoint(),
        "16MiB",
        &pins,
        true,
    );
    let mut agent = start_agent(dir.path(), &config);
    let starts = |agent: &Agent, result| {
        metric(
            &agent.metrics(),
            "logtap_capture_pin_starts_total",
            &[("result", result)],
        )
    };
    assert_eq!(starts(&agent, "created"), 1.0);
    let load_seconds =
        |agent: &Agent| metric(&agent.metrics(), "logtap_capture_probe_load_seconds", &[]);
    let fresh_load = load_seconds(&agent);
    let pod = harness.run_pod(PodSpec::new("pinned-ticker"));
    let ticker = run_ticker(&pod);
    let log = ticker.log_path().to_path_buf();
    wait_for(Duration::from_secs(20), "some ticks captured", || {
        shipped_ticks(&agent, &log).len() > 300
    });
    assert!(agent.stop(), "a clean stop\n{}", agent.log());
    let before = shipped_ticks(&agent, &log).len();
    // Written while no agent runs: they wait in the pinned ring.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(pins.layouts().len(), 1, "the probes stay pinned");

    let agent = start_agent(dir.path(), &config);
    assert_eq!(starts(&agent, "reused"), 1.0, "{}", agent.log());
    let metrics = assert_every_tick_once_on_taken_over_probes(&agent, &log, &ticker);
    eprintln!(
        "pinned restart: {before} ticks before the stop, 3000 in all; probes loaded in {fresh_load:.3} s, taken over in {:.3} s",
        load_seconds(&agent)
    );
    // Nor did it bind anything again at a seam.
    for result in ["exact", "ambiguous", "no_match", "unfinished"] {
        assert_eq!(
            metric(
                &metrics,
                "logtap_capture_seams_total",
                &[("result", result)]
            ),
            0.0
        );
    }
    assert!(metric(&metrics, "logtap_capture_bytes_total", &[]) > 0.0);
}

/// After a take-over of pinned probes: every one of the ticker's 3000 lines shipped
/// exactly once, both streams resumed on capture, not one byte read back from the CRI
/// log, and no line of the captured container shipped by the file source. Returns the
/// agent's metrics.
fn assert_every_tick_once_on_taken_over_probes(
    agent: &Agent,
    log: &Path,
    ticker: &ContainerHandle,
) -> String {
    ticker.wait_exit(Duration::from_secs(30));
    wait_for_each(3000, "every tick in the store", || {
        shipped_ticks(agent, log)
    });
    let mut all = shipped_ticks(agent, log);
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=3000).collect::<Vec<_>>(),
        "each tick exactly once"
    );
    let metrics = agent.metrics();
    assert_eq!(
        metric(
            &metrics,
            "logtap_capture_resumed_streams_total",
            &[("to", "capture")]
        ),
        2.0,
        "stdout and stderr taken over\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, "logtap_capture_repaired_bytes_total", &[]),
        0.0,
        "nothing read from the CRI log\n{metrics}"
    );
    assert!(
        store_records(&agent.store_dir())
            .iter()
            .all(|r| r["path"] != log.display().to_string().as_str()),
        "the file source shipped lines of the captured container"
    );
    metrics
}

/// `logtap unpin` (uninstalling): refused while an agent holds the pins, then removes
/// what the stopped agent left attached, and the probes go with their pins (the ring
/// map they write is freed once nothing holds it). Needs no containers.
#[test]
fn unpin_detaches_the_probes_a_stopped_agent_left_pinned() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if skip_ebpf() {
        return;
    }
    let pins = PinFs::mount();
    let dir = tempfile::tempdir().unwrap();
    let no_runtime = dir.path().join("no-containerd.sock");
    let config = pinned_config(
        "/var/log/pods/default_unpin-*/**/*.log",
        &format!("unix://{}", no_runtime.display()),
        "1MiB",
        &pins,
        true,
    );
    let mut agent = start_agent(dir.path(), &config);
    let pin_dir = pins.pin_dir().display().to_string();
    let unpin = || {
        let out = std::process::Command::new(common::logtap_bin())
            .args(["unpin", "--pin-dir", &pin_dir])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = unpin();
    assert!(!ok, "unpinned under a running agent: {text}");
    assert!(text.contains("an agent still holds the pins"), "{text}");
    assert_eq!(pins.layouts().len(), 1, "the agent's pins left alone");

    assert!(agent.stop(), "a clean stop\n{}", agent.log());
    let layout = pins.pin_dir().join(&pins.layouts()[0]);
    let ring = aya::maps::MapInfo::from_pin(layout.join(logtap_ebpf_common::RING_MAP))
        .expect("the stopped agent's ring stays pinned")
        .id();
    let (ok, text) = unpin();
    assert!(ok, "{text}");
    assert!(text.contains("removed 1 pinned probe layout(s)"), "{text}");
    assert!(pins.layouts().is_empty());
    // The kernel frees a map once its last holder is gone, after an RCU grace period.
    wait_for(Duration::from_secs(10), "the ring map freed", || {
        aya::maps::MapInfo::from_id(ring).is_err()
    });
    let (ok, text) = unpin();
    assert!(ok && text.contains("nothing pinned"), "{text}");
}

/// A second agent started while the first still holds the pinned probes (a rollout
/// with `maxSurge`, a restart racing its predecessor's shutdown) waits for it, ready
/// and shipping nothing, then takes the probes over once the first stopped: every
/// line once, not one byte read from the CRI log, the first's checkpoints continued.
/// One that finds them held past its `pin_wait` captures unpinned beside them,
/// counted; one stopped while it waits goes without having loaded anything.
#[test]
fn a_second_agent_waits_for_the_first_to_stop_and_takes_its_pins_over() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if skip_ebpf() {
        return;
    }
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let pins = PinFs::mount();
    let dir = tempfile::tempdir().unwrap();
    let glob = "/var/log/pods/default_pinwait-*/**/*.log";
    let pinned = |wait: &str| {
        pinned_config(glob, harness.endpoint(), "16MiB", &pins, true)
            + &format!("  pin_wait: {wait}\n")
    };
    let mut first = start_agent(dir.path(), &pinned("30s"));
    let pod = harness.run_pod(PodSpec::new("pinwait-ticker"));
    let ticker = run_ticker(&pod);
    let log = ticker.log_path().to_path_buf();
    wait_for(Duration::from_secs(20), "some ticks captured", || {
        shipped_ticks(&first, &log).len() > 300
    });
    let starts = |metrics: &str, result| {
        metric(
            metrics,
            "logtap_capture_pin_starts_total",
            &[("result", result)],
        )
    };
    let waited = |metrics: &str| metric(metrics, "logtap_capture_pin_wait_seconds", &[]);

    // Held past its wait: this one captures unpinned, into a store of its own.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut impatient = start_agent(elsewhere.path(), &pinned("1s"));
    let metrics = impatient.metrics();
    assert_eq!(starts(&metrics, "locked"), 1.0, "{metrics}");
    assert!(waited(&metrics) >= 1.0, "{metrics}");
    assert!(
        impatient.log().contains("capture runs unpinned beside it"),
        "{}",
        impatient.log()
    );
    assert!(impatient.stop());
    assert_eq!(pins.layouts().len(), 1, "the first agent's pins left alone");
    // Stopped while it waits: it goes without having loaded or taken anything.
    let aside = tempfile::tempdir().unwrap();
    let mut stopped = Agent::start(aside.path(), &pinned("30s"));
    wait_for(Duration::from_secs(20), "the stopped agent waiting", || {
        stopped
            .log()
            .contains("another agent holds the pinned probes: waiting")
    });
    assert!(
        stopped.stop(),
        "a clean stop while waiting\n{}",
        stopped.log()
    );
    assert!(
        stopped
            .log()
            .contains("stopped while waiting for another agent's pinned probes"),
        "{}",
        stopped.log()
    );
    assert!(!stopped.log().contains("eBPF capture probes attached"));

    // On the first one's data directory, as a DaemonSet's next pod is.
    let second = Agent::start(dir.path(), &pinned("30s"));
    wait_for(Duration::from_secs(20), "the second agent waiting", || {
        second
            .log()
            .contains("another agent holds the pinned probes: waiting")
    });
    // Ready, so that a rollout stops the first; shipping nothing meanwhile.
    second.wait_ready();
    std::thread::sleep(Duration::from_millis(500));
    let metrics = second.metrics();
    for idle in [
        "logtap_capture_up",
        "logtap_capture_bytes_total",
        "logtap_lines_read_total",
    ] {
        assert_eq!(metric(&metrics, idle, &[]), 0.0, "{idle}\n{metrics}");
    }
    assert!(first.stop(), "a clean stop\n{}", first.log());

    assert_capturing(&second, &pinned("30s"));
    let metrics = second.metrics();
    assert_eq!(starts(&metrics, "reused"), 1.0, "{metrics}");
    assert!(waited(&metrics) > 0.5, "{metrics}");
    assert_every_tick_once_on_taken_over_probes(&second, &log, &ticker);
}

/// Pins of another layout (here: another ring size) are not used: the agent removes
/// them, loads and pins its own, and binds the running container again from its CRI
/// log and the seam; every line still arrives once. `pin: false` then removes the
/// pins.
#[test]
fn pins_of_another_layout_are_replaced_and_pin_false_removes_them() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if skip_ebpf() {
        return;
    }
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let pins = PinFs::mount();
    let dir = tempfile::tempdir().unwrap();
    let glob = "/var/log/pods/default_relayout-*/**/*.log";
    let mut agent = start_agent(
        dir.path(),
        &pinned_config(glob, harness.endpoint(), "16MiB", &pins, true),
    );
    let pod = harness.run_pod(PodSpec::new("relayout-ticker"));
    let ticker = run_ticker(&pod);
    let log = ticker.log_path().to_path_buf();
    wait_for(Duration::from_secs(20), "some ticks captured", || {
        shipped_ticks(&agent, &log).len() > 300
    });
    assert!(agent.stop());
    let old = pins.layouts();
    assert_eq!(old.len(), 1);

    let mut agent = start_agent(
        dir.path(),
        &pinned_config(glob, harness.endpoint(), "8MiB", &pins, true),
    );
    let metrics = agent.metrics();
    let starts = |metrics: &str, result| {
        metric(
            metrics,
            "logtap_capture_pin_starts_total",
            &[("result", result)],
        )
    };
    assert_eq!(starts(&metrics, "layout_changed"), 1.0, "{metrics}");
    assert_eq!(starts(&metrics, "created"), 1.0, "{metrics}");
    assert_eq!(starts(&metrics, "reused"), 0.0, "{metrics}");
    let new = pins.layouts();
    assert_eq!(new.len(), 1);
    assert_ne!(new, old, "the old layout's pins are gone");
    ticker.wait_exit(Duration::from_secs(30));
    wait_for_each(3000, "every tick in the store", || {
        shipped_ticks(&agent, &log)
    });
    let metrics = agent.metrics();
    assert!(
        metric(&metrics, "logtap_capture_repaired_bytes_total", &[]) > 0.0,
        "the fallback read the stream from its CRI log\n{metrics}"
    );
    assert!(agent.stop());

    let agent = start_agent(
        dir.path(),
        &pinned_config(glob, harness.endpoint(), "8MiB", &pins, false),
    );
    assert_eq!(starts(&agent.metrics(), "removed"), 1.0);
    assert!(pins.layouts().is_empty(), "pin: false removes the pins");
}

/// The agent killed (-9) with its probes pinned and a ring far too small for what
/// the container writes while no agent runs: the next agent takes the probes over;
/// what the killed agent had read but not made durable, and what the full ring could
/// not hold (counted as `ring_full`), come from the CRI log. Every line arrives (at
/// least once: what was shipped after the last checkpoint comes again).
#[test]
fn an_agent_killed_with_pinned_probes_repairs_what_the_ring_lost_from_the_log() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if skip_ebpf() {
        return;
    }
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let pins = PinFs::mount();
    let dir = tempfile::tempdir().unwrap();
    let config = pinned_config(
        "/var/log/pods/default_pinkill-*/**/*.log",
        harness.endpoint(),
        "8KiB",
        &pins,
        true,
    );
    let mut agent = start_agent(dir.path(), &config);
    let pod = harness.run_pod(PodSpec::new("pinkill-ticker"));
    let ticker = run_ticker(&pod);
    let log = ticker.log_path().to_path_buf();
    wait_for(Duration::from_secs(20), "some ticks captured", || {
        shipped_ticks(&agent, &log).len() > 300
    });
    let dropped = |metrics: &str| {
        metric(
            metrics,
            "logtap_capture_ring_dropped_bytes_total",
            &[("reason", "ring_full")],
        )
    };
    let dropped_before = dropped(&agent.metrics());
    agent.kill9();
    // About a thousand lines: ten times what the ring holds.
    std::thread::sleep(Duration::from_millis(1500));

    let agent = start_agent(dir.path(), &config);
    let metrics = agent.metrics();
    assert_eq!(
        metric(
            &metrics,
            "logtap_capture_pin_starts_total",
            &[("result", "reused")]
        ),
        1.0,
        "{metrics}"
    );
    ticker.wait_exit(Duration::from_secs(30));
    wait_for_each(3000, "every tick in the store", || {
        shipped_ticks(&agent, &log)
    });
    let metrics = agent.metrics();
    let duplicates = shipped_ticks(&agent, &log).len() - 3000;
    eprintln!(
        "pinned kill: {duplicates} ticks shipped twice, {} bytes dropped by the full ring while no agent read it",
        dropped(&metrics) - dropped_before
    );
    assert!(
        dropped(&metrics) > dropped_before,
        "the ring overflowed while no agent read it (the pinned counters go on)\n{metrics}"
    );
    assert!(
        metric(&metrics, "logtap_capture_repaired_bytes_total", &[]) > 0.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "logtap_capture_unrepairable_bytes_total", &[]),
        0.0,
        "{metrics}"
    );
    assert!(
        duplicates < 1500,
        "{duplicates} duplicates: more than the checkpoint interval explains"
    );
}

/// A container bound while it ran (at the seam with its CRI log) keeps its place
/// across a pinned restart: the agent recorded its seam in the pinned maps, so the
/// next one continues its capture at once, without looking for the seam again and
/// without reading its log.
#[test]
fn a_stream_bound_at_its_seam_continues_across_a_pinned_restart() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if skip_ebpf() {
        return;
    }
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let pins = PinFs::mount();
    let dir = tempfile::tempdir().unwrap();
    let pod = harness.run_pod(PodSpec::new("pinseam-writer"));
    // Fast bursts (the seam is found within a second or two), then a slow tail that
    // outlasts the restart.
    let (fast, slow) = (30_000, 3_000);
    let writer = run(
        &pod,
        "writer",
        &format!(
            "i=1; while [ $i -le {fast} ]; do j=0; while [ $j -lt 100 ]; do echo \"early $i\"; \
             i=$((i+1)); j=$((j+1)); done; usleep 5000; done; \
             while [ $i -le {} ]; do echo \"early $i\"; i=$((i+1)); usleep 1000; done; sleep 1",
            fast + slow
        ),
    );
    let log = writer.log_path().to_path_buf();
    wait_for(
        Duration::from_secs(20),
        "the writer's first lines logged",
        || cri_stream(&log, "stdout").len() > 20_000,
    );
    let config = pinned_config(
        "/var/log/pods/default_pinseam-*/**/*.log",
        harness.endpoint(),
        "16MiB",
        &pins,
        true,
    );
    let mut agent = start_agent(dir.path(), &config);
    let exact = |agent: &Agent| {
        metric(
            &agent.metrics(),
            "logtap_capture_seams_total",
            &[("result", "exact")],
        )
    };
    wait_for(Duration::from_secs(30), "the seam", || exact(&agent) >= 1.0);
    let numbers = |agent: &Agent| -> Vec<u32> {
        let path = format!("{}#stdout", log.display());
        query_json(&agent.store_dir(), &["--raw"])
            .iter()
            .filter(|r| r["path"] == path.as_str())
            .filter_map(|r| r["body"].as_str()?.strip_prefix("early ")?.parse().ok())
            .collect()
    };
    wait_for(Duration::from_secs(30), "the slow tail captured", || {
        numbers(&agent).iter().any(|&n| n > fast + 200)
    });
    assert!(agent.stop());
    std::thread::sleep(Duration::from_millis(700));

    let agent = start_agent(dir.path(), &config);
    writer.wait_exit(Duration::from_secs(60));
    let total = fast + slow;
    wait_for_each(total, "every line in the store", || numbers(&agent));
    let mut all = numbers(&agent);
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=total).collect::<Vec<_>>(),
        "each line exactly once"
    );
    let metrics = agent.metrics();
    assert_eq!(
        metric(
            &metrics,
            "logtap_capture_resumed_streams_total",
            &[("to", "capture")]
        ),
        1.0,
        "stdout continues on capture (stderr, never written, had no seam)\n{metrics}"
    );
    assert_eq!(exact(&agent), 0.0, "no seam looked for again");
    assert_eq!(
        metric(&metrics, "logtap_capture_repaired_bytes_total", &[]),
        0.0,
        "{metrics}"
    );
}

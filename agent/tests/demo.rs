//! `logtap run --oneshot --demo`, the README's first command, end to end: the real
//! binary, the real kernel. Where eBPF works, the demo's workload runs in a cgroup of
//! its own and its stdout and stderr reach the store through capture alone, tagged as
//! captured (`"origin":"ebpf"`, `[ebpf]`), beside the node's files; the run ends by
//! itself and leaves no process or cgroup behind. Where eBPF cannot work (not root),
//! one line says why and the files are collected all the same.
//!
//! Needs root and the eBPF object; fails without them unless `LOGTAP_SKIP_EBPF_TESTS=1`
//! (or, for the test as `nobody`, `LOGTAP_TEST_ALLOW_NONROOT=1`) is set.

mod common;

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{is_root, logtap_bin, query_json};
use logtap::demo::{CGROUP_PREFIX, WORKLOAD_SOURCE, WORKLOAD_STDOUT_LINES};
use serde_json::Value;

const NOBODY: u32 = 65534;

fn skip_ebpf() -> bool {
    if std::env::var("LOGTAP_SKIP_EBPF_TESTS").as_deref() == Ok("1") {
        eprintln!("note: LOGTAP_SKIP_EBPF_TESTS=1: the demo's eBPF test skipped");
        return true;
    }
    false
}

/// A node file (standing in for `/var/log/*.log`) and a config reading it into the
/// store, so the test does not read the machine's own logs.
fn node_config(dir: &Path) -> std::path::PathBuf {
    let logs = dir.join("node-logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(
        logs.join("syslog.log"),
        "node: disk check ok\nnode: timed out once\n",
    )
    .unwrap();
    let config = dir.join("logtap.yaml");
    std::fs::write(
        &config,
        format!(
            "cri: {{enabled: false}}\n\
             sources:\n  - name: host\n    include: [\"{}/*.log\"]\n    sink: local\n\
             sinks:\n  local: {{type: store}}\n",
            logs.display()
        ),
    )
    .unwrap();
    config
}

/// `logtap run --oneshot --demo` on `config` into `data`, as `uid`; it must end by
/// itself, successfully, within a minute.
fn run_demo(config: &Path, data: &Path, uid: u32) -> Output {
    let started = Instant::now();
    let out = Command::new(logtap_bin())
        .args([
            "run",
            "--oneshot",
            "--demo",
            "--metrics-listen",
            "off",
            "--config",
        ])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo run failed:\n{log}");
    assert!(started.elapsed() < Duration::from_secs(60), "{log}");
    out
}

/// Processes whose cgroup (v2) lies below the demo's prefix.
fn processes_below_demo_prefix() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        if text
            .lines()
            .filter_map(|l| l.strip_prefix("0::"))
            .any(|p| p.starts_with(&format!("{CGROUP_PREFIX}/")))
        {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

#[test]
fn the_demo_captures_its_workload_from_the_kernel_beside_the_files() {
    if skip_ebpf() || !is_root("the_demo_captures_its_workload_from_the_kernel_beside_the_files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (config, data) = (node_config(dir.path()), dir.path().join("data"));
    let out = run_demo(&config, &data, 0);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("demo: the workload ran"), "{log}");
    let store = data.join("store");

    // Every line the workload wrote, once, from the kernel, in its own stream.
    let captured: Vec<Value> = query_json(&store, &["demo workload"]);
    let of = |stream: &str| -> Vec<&Value> {
        captured.iter().filter(|r| r["stream"] == stream).collect()
    };
    let stdout = of("stdout");
    let bodies: Vec<&str> = stdout.iter().map(|r| r["body"].as_str().unwrap()).collect();
    let expected: Vec<String> = (1..=WORKLOAD_STDOUT_LINES)
        .map(|i| match i % 7 {
            0 => format!(
                r#"{{"level":"error","msg":"demo workload: inventory lookup timed out","n":{i}}}"#
            ),
            _ => format!(r#"{{"level":"info","msg":"demo workload: request served","n":{i}}}"#),
        })
        .collect();
    assert_eq!(bodies, expected, "{log}");
    assert_eq!(of("stderr").len(), 1, "{captured:#?}");
    assert_eq!(captured.len(), WORKLOAD_STDOUT_LINES as usize + 1);
    for r in &captured {
        assert_eq!(r["origin"], "ebpf", "{r}");
        let path = r["path"].as_str().unwrap();
        assert!(
            path.starts_with(&format!("cgroup:{CGROUP_PREFIX}/workload-")),
            "{r}"
        );
    }
    // `--source` selects captured streams by their `cgroup:` path like files by theirs
    // (a path glob: `*` stops at `/`).
    let by_source = query_json(
        &store,
        &[
            "--source",
            &format!("cgroup:{CGROUP_PREFIX}/**"),
            "demo workload",
        ],
    );
    assert_eq!(by_source.len(), captured.len());
    assert!(query_json(&store, &["--source", "/**/*.log", "demo workload"]).is_empty());
    // The workload's source config parsed them (JSON).
    assert_eq!(stdout[6]["fields"]["level"], "error");

    // The node's file and the demo's sample logs came in the same run, not as captured.
    let files = query_json(&store, &["timed out"]);
    let node = files
        .iter()
        .find(|r| r["body"] == "node: timed out once")
        .expect("the node's file line");
    assert!(node.get("origin").is_none(), "{node}");
    assert!(
        files
            .iter()
            .any(|r| r["path"].as_str().unwrap().ends_with("payments.log"))
    );

    // `logtap query`'s text form shows which lines came from the kernel.
    let text = Command::new(logtap_bin())
        .args(["query", "--limit", "0", "--store"])
        .arg(&store)
        .arg("timed out")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    let tagged = text
        .lines()
        .filter(|l| l.contains(" [stdout] [ebpf] "))
        .count();
    assert_eq!(tagged, 3, "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("node: timed out once") && !l.contains("[ebpf]")),
        "{text}"
    );
    let sources = std::fs::read_to_string(store.join("sources.ndjson")).unwrap();
    assert!(
        sources.contains(&format!("\"config_name\":\"{WORKLOAD_SOURCE}\"")),
        "{sources}"
    );

    // Nothing left behind: no process in the demo's cgroups, no workload cgroup.
    assert_eq!(processes_below_demo_prefix(), Vec::<String>::new());
    let root = logtap::capture::Probes::cgroup2_root().unwrap();
    let demo = root.join(CGROUP_PREFIX.trim_start_matches('/'));
    let left: Vec<_> = std::fs::read_dir(&demo)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}

/// As `nobody` the probes cannot load: the run says so in one line and collects the
/// node's file and the sample logs as always (no workload is started).
#[test]
fn the_demo_without_root_says_why_and_collects_files() {
    if !is_root("the_demo_without_root_says_why_and_collects_files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (config, data) = (node_config(dir.path()), dir.path().join("data"));
    std::fs::create_dir_all(&data).unwrap();
    for path in [dir.path(), &data] {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: chown(2) on a NUL-terminated path.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), NOBODY, NOBODY) }, 0);
    }
    let out = run_demo(&config, &data, NOBODY);
    let log = String::from_utf8_lossy(&out.stderr);
    let why: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("demo: no eBPF capture"))
        .collect();
    assert_eq!(why.len(), 1, "{log}");
    assert!(why[0].contains("not root"), "{log}");
    assert!(!log.contains("demo: the workload ran"), "{log}");
    let store = data.join("store");
    assert!(query_json(&store, &["demo workload"]).is_empty());
    assert_eq!(query_json(&store, &["node: disk check ok"]).len(), 1);
    assert!(!query_json(&store, &["payment declined"]).is_empty());
}

//! The agent restarted again and again while a real container writes and the
//! kubelet's rotation runs: containerd + runc through the CRI API (`common/cri.rs`),
//! the container's `0.log` renamed to `0.log.<n>` every second followed by
//! `ReopenContainerLog`, rotated files deleted two rotations later — exactly what the
//! kubelet's container log manager does — and the agent stopped five times, by
//! `kill -9` and SIGTERM in turn, each time for a moment in which the rotation goes on.
//!
//! Every line the container wrote must be in the store.
//!
//! Needs root and `containerd runc busybox-static`, or `LOGTAP_SKIP_CRI_TESTS=1` to
//! skip.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cri::{ContainerHandle, ContainerSpec, CriHarness, PodSpec};
use common::*;

/// Lines the container writes: 100 every 10 ms, about 10,000 a second.
const LINES: u64 = 150_000;
const RESTARTS: usize = 5;
/// How many rotated files the kubelet keeps (its `containerLogMaxFiles` is 5 with the
/// live one; two keeps the test's deletes close behind the rotation).
const KEEP_ROTATED: usize = 2;

/// Renames `0.log` to `0.log.<n>` and reopens it every `every`, deleting rotated files
/// beyond [`KEEP_ROTATED`], until `stop` is set or the container exited. Returns the
/// rotations done.
fn kubelet_rotation(
    container: Arc<ContainerHandle>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let log = container.log_path().to_path_buf();
        let mut rotated: Vec<PathBuf> = Vec::new();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(every);
            if !log.exists() {
                continue;
            }
            n += 1;
            let to = log.with_file_name(format!("0.log.{n}"));
            std::fs::rename(&log, &to).unwrap();
            rotated.push(to);
            if container.try_reopen_log().is_err() {
                // The container exited: its log is complete, as the kubelet leaves it.
                break;
            }
            while rotated.len() > KEEP_ROTATED {
                let _ = std::fs::remove_file(rotated.remove(0));
            }
        }
        n
    })
}

/// How often each `seq=` of the container's lines is in `store`.
fn seqs(store: &Path) -> BTreeMap<u64, u32> {
    let mut counts = BTreeMap::new();
    for r in store_records(store) {
        if let Some(seq) = seq_of(&body_bytes(&r)) {
            *counts.entry(seq).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn restarts_by_kill9_and_sigterm_during_kubelet_rotation_lose_no_line() {
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pod = harness.run_pod(PodSpec::new("restarts"));
    let config = format!(
        "cri: {{endpoint: \"{}\"}}\n\
         files: {{rescan_interval: 1s, rotate_wait: 2s}}\n\
         checkpoint: {{interval: 500ms}}\n\
         kubernetes: {{enabled: false, node_name: node-restarts}}\n\
         sources:\n  - name: pods\n    include: [\"{}/*/*.log\"]\n    format: cri\n    sink: local\n\
         sinks:\n  local: {{type: store}}\n",
        harness.endpoint(),
        pod.log_dir().display()
    );
    let mut agent = Some(Agent::start(&data, &config));
    let store = data.join("store");

    let script = format!(
        "i=0; while [ $i -lt {LINES} ]; do \
           j=0; while [ $j -lt 100 ]; do echo \"pod line seq=$i\"; i=$((i+1)); j=$((j+1)); done; \
           usleep 10000; \
         done"
    );
    let container = Arc::new(pod.start_container(ContainerSpec::shell("writer", &script)));
    let stop_rotation = Arc::new(AtomicBool::new(false));
    let rotation = kubelet_rotation(
        container.clone(),
        Duration::from_secs(1),
        stop_rotation.clone(),
    );

    let started = Instant::now();
    for restart in 0..RESTARTS {
        std::thread::sleep(Duration::from_millis(1500));
        let mut a = agent.take().unwrap();
        if restart % 2 == 0 {
            a.kill9();
        } else {
            a.wait_ready();
            assert!(a.stop(), "clean exit on SIGTERM:\n{}", a.log());
        }
        // Down for a moment, while the container writes and the rotation goes on.
        std::thread::sleep(Duration::from_millis(700));
        agent = Some(Agent::start(&data, &config));
    }
    let exited = container.wait_exit(Duration::from_secs(120));
    stop_rotation.store(true, Ordering::Relaxed);
    let rotations = rotation.join().unwrap();
    println!(
        "container exited ({:?}) after {:?} and {rotations} rotations",
        exited.state,
        started.elapsed()
    );

    // Every line, or what is missing after a minute.
    let mut stored = BTreeMap::new();
    poll_until(Duration::from_secs(60), Duration::from_millis(500), || {
        stored = seqs(&store);
        stored.len() as u64 >= LINES
    });
    let agent_log = agent.as_ref().map(Agent::log).unwrap_or_default();
    assert!(
        agent.as_mut().unwrap().stop(),
        "clean exit on SIGTERM:\n{agent_log}"
    );
    let missing: Vec<u64> = (0..LINES).filter(|s| !stored.contains_key(s)).collect();
    let copies: u64 = stored.values().map(|&c| u64::from(c) - 1).sum();
    println!(
        "{} of {LINES} lines stored, {copies} copies beyond the first",
        stored.len()
    );
    assert!(
        missing.is_empty(),
        "{} lines missing, first {:?}; agent log:\n{agent_log}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(rotations >= 5, "the rotation ran ({rotations} rotations)");
    pod.remove();
}

//! The CRI client and the container registry against a real containerd + runc: pods
//! and containers made through the CRI API as the kubelet makes them (see
//! `common/cri.rs`; needs root and `containerd runc busybox-static`, or
//! `LOGTAP_SKIP_CRI_TESTS=1` to skip).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cri::{ContainerSpec, CriHarness, PodSpec, read_cri_log};
use common::wait_for;
use logtap::discovery::{ContainerRegistry, ContainerState, CriClient};
use metrics_exporter_prometheus::PrometheusBuilder;

const PODS_DIR: &str = "/var/log/pods";

fn registry(harness: &CriHarness) -> ContainerRegistry {
    let cri = CriClient::connect(harness.endpoint(), Duration::from_secs(2)).unwrap();
    ContainerRegistry::with_removal_grace(Some(cri), PathBuf::from(PODS_DIR), Duration::ZERO)
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The messages of the CRI log file's stdout `F` records.
fn stdout_lines(path: &Path) -> Vec<String> {
    read_cri_log(path)
        .into_iter()
        .filter(|(stream, tag, _)| stream == "stdout" && tag == "F")
        .map(|(_, _, message)| message)
        .collect()
}

/// The container's cgroup v2 path, as `/proc/<pid>/cgroup` says it (`0::<path>`).
fn cgroup_v2_path(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in {text}"))
        .to_owned()
}

#[test]
fn registry_reports_a_real_container_and_follows_its_life() {
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let started = Instant::now();
    let mut spec = PodSpec::new("demo");
    spec.namespace = "team-a".into();
    spec.labels = map(&[("app", "demo")]);
    spec.annotations = map(&[("example.com/owner", "obs")]);
    let uid = spec.uid.clone();
    let pod = harness.run_pod(spec);
    let mut container = ContainerSpec::shell(
        "writer",
        "echo 'err line' >&2; i=0; while :; do i=$((i+1)); echo \"line $i\"; sleep 0.05; done",
    );
    container.env = map(&[("FOO", "bar")]);
    container.labels = map(&[("team", "obs")]);
    let handle = pod.start_container(container);
    let id = handle.id().to_owned();

    // A new container: the registry has never listed it; its cgroup leads to it.
    let registry = registry(harness);
    assert!(registry.is_empty());
    let pid = handle.pid().expect("a running container has a pid");
    let cgroup = cgroup_v2_path(pid);
    assert!(cgroup.ends_with(&format!("/pod{uid}/{id}")), "{cgroup}");
    let info = registry
        .by_cgroup_path(cgroup.as_bytes())
        .expect("refreshed from CRI");
    assert!(registry.cri_up());
    assert_eq!(registry.get(&id).as_ref(), Some(&info));

    assert_eq!(info.id, id);
    assert_eq!(info.name, "writer");
    assert_eq!(info.sandbox_id, pod.sandbox_id);
    let pod_ref = info.pod.clone().expect("pod from the kubelet's labels");
    assert_eq!(
        (
            pod_ref.namespace.as_str(),
            pod_ref.pod.as_str(),
            pod_ref.pod_uid.as_str()
        ),
        ("team-a", "demo", uid.as_str())
    );
    assert_eq!((pod_ref.container.as_str(), pod_ref.restart), ("writer", 0));
    assert_eq!(info.image, "localhost/busybox:1");
    assert!(info.image_ref.starts_with("sha256:"), "{}", info.image_ref);
    assert_eq!(info.labels, map(&[("app", "demo")]));
    assert_eq!(info.annotations, map(&[("example.com/owner", "obs")]));
    assert_eq!(info.env, map(&[("FOO", "bar")]));
    assert_eq!(info.pid, Some(pid));
    let cgroup_path = info.cgroup_path.clone().expect("cgroupsPath");
    assert!(cgroup.ends_with(&cgroup_path), "{cgroup} vs {cgroup_path}");
    assert_eq!(info.state, ContainerState::Running);
    assert_eq!(info.restart_count, 0);
    let log_path = info.log_path.clone().unwrap();
    assert_eq!(log_path, handle.log_path());
    assert_eq!(
        log_path,
        Path::new(PODS_DIR).join(format!("team-a_demo_{uid}/writer/0.log"))
    );

    // The log file containerd writes, in the CRI format.
    wait_for(Duration::from_secs(10), "three stdout lines", || {
        stdout_lines(&log_path).len() >= 3
    });
    let records = read_cri_log(&log_path);
    assert!(
        records.contains(&("stderr".into(), "F".into(), "err line".into())),
        "{records:?}"
    );
    assert_eq!(stdout_lines(&log_path)[..3], ["line 1", "line 2", "line 3"]);
    assert_eq!(registry.by_log_path(&log_path).as_ref(), Some(&info));

    // A full rescan lists it too (with the pause sandbox not being a container).
    assert!(registry.rescan().unwrap() >= 1);
    assert_eq!(registry.get(&id).map(|i| i.name), Some("writer".into()));

    // The kubelet's rotation: rename, then ReopenContainerLog. No line lost or doubled
    // across the two files.
    let rotated = log_path.with_file_name("0.log.1");
    std::fs::rename(&log_path, &rotated).unwrap();
    handle.reopen_log();
    assert_eq!(
        registry.by_log_path(&rotated).map(|i| i.id),
        Some(id.clone())
    );
    wait_for(
        Duration::from_secs(10),
        "lines in the reopened 0.log",
        || stdout_lines(&log_path).len() >= 2,
    );
    handle.stop();
    let exited = handle.wait_exit(Duration::from_secs(10));
    assert_eq!(exited.state, ContainerState::Exited);
    let mut all = stdout_lines(&rotated);
    let before = all.len();
    all.extend(stdout_lines(&log_path));
    let expected: Vec<String> = (1..=all.len()).map(|i| format!("line {i}")).collect();
    assert_eq!(all, expected, "{before} lines before the reopen");

    // The registry learns of the exit; the pid is gone.
    let info = registry.refresh(&id).unwrap();
    assert_eq!(info.state, ContainerState::Exited);
    assert_eq!(info.pid, None);

    // Removed from the runtime: gone from the registry at the next rescan.
    pod.remove();
    assert!(!log_path.exists());
    registry.rescan().unwrap();
    assert_eq!(registry.get(&id), None);
    assert_eq!(registry.by_cgroup_path(cgroup.as_bytes()), None);
    eprintln!("container life test took {:?}", started.elapsed());
}

#[test]
fn short_lived_container_is_seen_exited_with_its_output() {
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let pod = harness.run_pod(PodSpec::new("batch"));
    let handle = pod.start_container(ContainerSpec::shell("job", "echo done; exit 3"));
    let exited = handle.wait_exit(Duration::from_secs(10));
    assert_eq!(exited.state, ContainerState::Exited);
    assert_eq!(exited.pid, None);
    wait_for(Duration::from_secs(5), "the job's line", || {
        stdout_lines(handle.log_path()) == ["done"]
    });
    let registry = registry(harness);
    registry.rescan().unwrap();
    let info = registry
        .get(handle.id())
        .expect("exited containers stay listed");
    assert_eq!(info.state, ContainerState::Exited);
    assert_eq!(info.name, "job");
}

#[test]
fn unreachable_socket_degrades_to_the_pod_log_scan() {
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let pod = harness.run_pod(PodSpec::new("degraded"));
    let handle = pod.start_container(ContainerSpec::shell("app", "echo up; sleep 600"));
    wait_for(Duration::from_secs(5), "the first line", || {
        !stdout_lines(handle.log_path()).is_empty()
    });
    let pid = handle.pid().unwrap();
    let cgroup = cgroup_v2_path(pid);

    let dir = tempfile::tempdir().unwrap();
    let wrong = format!("unix://{}/containerd.sock", dir.path().display());
    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let cri = CriClient::connect(&wrong, Duration::from_secs(2)).unwrap();
        let registry = ContainerRegistry::new(Some(cri), PathBuf::from(PODS_DIR));
        let started = Instant::now();
        let err = registry.rescan().unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!registry.cri_up());

        let info = registry
            .by_log_path(handle.log_path())
            .expect("from the scan");
        assert!(registry.containers().contains(&info));
        assert_eq!(info.name, "app");
        assert_eq!(info.id, "", "no id without the runtime");
        assert!(info.env.is_empty() && info.labels.is_empty());
        let pod_ref = info.pod.unwrap();
        assert_eq!(
            (pod_ref.pod.as_str(), pod_ref.pod_uid.as_str()),
            ("degraded", pod.spec.uid.as_str())
        );
        // The cgroup names the pod, and the pod has one container: that one, with
        // the id from the cgroup.
        let info = registry.by_cgroup_path(cgroup.as_bytes()).unwrap();
        assert_eq!((info.id.as_str(), info.name.as_str()), (handle.id(), "app"));
    });
    let text = metrics.render();
    assert!(text.contains("logtap_cri_up 0"), "{text}");
    assert!(
        text.contains(r#"logtap_cri_requests_total{result="unreachable"}"#),
        "{text}"
    );
    handle.stop();
}

#[test]
fn registry_recovers_when_the_runtime_comes_back() {
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let pod = harness.run_pod(PodSpec::new("recovery"));
    let handle = pod.start_container(ContainerSpec::shell("app", "sleep 600"));

    // The client's socket path exists only once "the runtime is up": a symlink to the
    // harness's socket, created after the first failures.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("containerd.sock");
    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let cri = CriClient::connect(
            &format!("unix://{}", link.display()),
            Duration::from_secs(2),
        )
        .unwrap();
        let registry = ContainerRegistry::new(Some(cri), PathBuf::from(PODS_DIR));
        assert!(registry.rescan().unwrap_err().is_unreachable());
        assert_eq!(registry.refresh(handle.id()), None);
        assert!(!registry.cri_up());

        let socket = harness.endpoint().strip_prefix("unix://").unwrap();
        std::os::unix::fs::symlink(socket, &link).unwrap();
        assert!(registry.rescan().unwrap() >= 1);
        assert!(registry.cri_up());
        let info = registry.get(handle.id()).expect("listed once CRI answers");
        assert_eq!(info.name, "app");
        assert_eq!(info.state, ContainerState::Running);
    });
    let text = metrics.render();
    assert!(text.contains("logtap_cri_up 1"), "{text}");
    assert!(
        text.contains(r#"logtap_cri_requests_total{result="ok"}"#),
        "{text}"
    );
    handle.stop();
}

#[test]
fn container_seen_while_created_is_asked_again_once_started() {
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let pod = harness.run_pod(PodSpec::new("starting"));
    let handle = pod.create_container(ContainerSpec::shell("app", "sleep 600"));
    let registry = registry(harness);
    let created = registry.refresh(handle.id()).expect("known once created");
    assert_eq!(created.state, ContainerState::Created);
    assert_eq!(created.pid, None);
    let cgroup_path = created
        .cgroup_path
        .clone()
        .expect("the spec is already made");
    assert!(cgroup_path.ends_with(handle.id()), "{cgroup_path}");

    handle.start();
    // The lookup an eBPF event makes: the cgroup now exists, the entry says Created.
    let cgroup = cgroup_v2_path(handle.pid().unwrap());
    let running = registry.by_cgroup_path(cgroup.as_bytes()).unwrap();
    assert_eq!(running.state, ContainerState::Running);
    assert_eq!(running.pid, handle.pid());
    assert_eq!(registry.get(handle.id()), Some(running));
    handle.stop();
}

use std::path::Path;

use metrics_exporter_prometheus::PrometheusBuilder;

use super::*;

const UID_A: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const UID_B: &str = "1f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const CID: &str = "0c81db820f10c32fd485f11eb03f27d8f75c064d87f3c2518b22f43c102faf86";

/// A pod log directory: pod A with one container (two restarts), pod B with two.
fn pods_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (pod, container, files) in [
        (
            format!("default_web_{UID_A}"),
            "nginx",
            &["0.log", "1.log", "0.log.20240101-000000"][..],
        ),
        (format!("prod_api_{UID_B}"), "app", &["0.log"][..]),
        (format!("prod_api_{UID_B}"), "sidecar", &["0.log"][..]),
        ("not-a-pod-dir".to_string(), "x", &["0.log"][..]),
    ] {
        let d = dir.path().join(pod).join(container);
        std::fs::create_dir_all(&d).unwrap();
        for f in files {
            std::fs::write(d.join(f), "").unwrap();
        }
    }
    dir
}

fn unreachable_cri(dir: &Path) -> CriClient {
    let endpoint = format!("unix://{}/no-runtime.sock", dir.display());
    CriClient::connect(&endpoint, Duration::from_millis(500)).unwrap()
}

#[test]
fn unreachable_runtime_degrades_to_the_pod_log_directory() {
    let pods = pods_dir();
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let registry =
            ContainerRegistry::new(Some(unreachable_cri(pods.path())), pods.path().into());
        let err = registry.rescan().unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        assert!(!registry.cri_up());
        // 0.log and 1.log of nginx, app, sidecar; not the rotated file, not the stray dir.
        assert_eq!(registry.len(), 4);

        let log = pods.path().join(format!("default_web_{UID_A}/nginx/1.log"));
        let info = registry.by_log_path(&log).unwrap();
        assert_eq!(info.name, "nginx");
        assert_eq!(info.restart_count, 1);
        assert_eq!(info.state, ContainerState::Unknown);
        let pod = info.pod.unwrap();
        assert_eq!(
            (
                pod.namespace.as_str(),
                pod.pod.as_str(),
                pod.pod_uid.as_str()
            ),
            ("default", "web", UID_A)
        );

        // A cgroup of the single-container pod names its container (latest run).
        let cgroup = format!("/kubepods/besteffort/pod{UID_A}/{CID}");
        let info = registry.by_cgroup_path(cgroup.as_bytes()).unwrap();
        assert_eq!(
            (info.id.as_str(), info.name.as_str(), info.restart_count),
            (CID, "nginx", 1)
        );
        // Same with the systemd driver's names.
        let cgroup = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{CID}.scope",
            UID_A.replace('-', "_")
        );
        assert_eq!(
            registry.by_cgroup_path(cgroup.as_bytes()).map(|i| i.name),
            Some("nginx".into())
        );
        // Two containers in pod B: which one is unknown without the runtime.
        let cgroup = format!("/kubepods/besteffort/pod{UID_B}/{CID}");
        assert_eq!(registry.by_cgroup_path(cgroup.as_bytes()), None);
        assert_eq!(registry.get(CID), None);
    });
    let text = handle.render();
    assert!(text.contains("logtap_cri_up 0"), "{text}");
    assert!(text.contains("logtap_registry_containers 4"), "{text}");
    assert!(
        text.contains(r#"logtap_cri_requests_total{result="unreachable"}"#),
        "{text}"
    );
}

#[test]
fn refreshes_while_down_are_rate_limited() {
    let pods = pods_dir();
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let registry =
            ContainerRegistry::new(Some(unreachable_cri(pods.path())), pods.path().into());
        let _ = registry.rescan();
        let started = Instant::now();
        for _ in 0..100 {
            assert_eq!(registry.refresh(CID), None);
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    });
    let text = handle.render();
    // The rescan's ListContainers; the refreshes within RETRY_WHILE_DOWN of it asked nothing.
    assert!(
        text.contains(r#"logtap_cri_requests_total{result="unreachable"} 1"#),
        "{text}"
    );
}

#[test]
fn disabled_cri_reads_the_pod_log_directory() {
    let pods = pods_dir();
    let registry = ContainerRegistry::new(None, pods.path().into());
    assert!(registry.is_empty());
    assert_eq!(registry.rescan().unwrap(), 4);
    assert_eq!(registry.refresh(CID), None);
    let mut names: Vec<String> = registry.containers().into_iter().map(|c| c.name).collect();
    names.sort();
    assert_eq!(names, ["app", "nginx", "nginx", "sidecar"]);
}

#[test]
fn log_path_alone_names_the_pod() {
    let registry = ContainerRegistry::new(None, "/nonexistent".into());
    let path = PathBuf::from(format!(
        "/var/log/pods/kube-system_dns_{UID_A}/coredns/2.log"
    ));
    let info = registry.by_log_path(&path).unwrap();
    assert_eq!(info.name, "coredns");
    assert_eq!(info.restart_count, 2);
    assert_eq!(info.log_path, Some(path));
    assert_eq!(registry.by_log_path(Path::new("/var/log/syslog")), None);
    assert_eq!(
        registry.by_cgroup_path(b"/user.slice/session-1.scope"),
        None
    );
}

#[test]
fn pod_uid_in_cgroup_paths() {
    assert_eq!(
        pod_uid_from_cgroup_path(format!("/a/kubepods/burstable/pod{UID_A}/{CID}").as_bytes()),
        Some(UID_A.to_string())
    );
    assert_eq!(
        pod_uid_from_cgroup_path(
            format!(
                "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{CID}.scope\n",
                UID_A.replace('-', "_")
            )
            .as_bytes()
        ),
        Some(UID_A.to_string())
    );
    assert_eq!(pod_uid_from_cgroup_path(CID.as_bytes()), None);
    assert_eq!(
        pod_uid_from_cgroup_path(format!("/system.slice/{CID}").as_bytes()),
        None
    );
    assert_eq!(pod_uid_from_cgroup_path(b"/kubepods/pod/x"), None);
}

#[test]
fn rescanner_stops_on_shutdown() {
    let pods = pods_dir();
    let registry = ContainerRegistry::new(None, pods.path().into());
    let shutdown = Arc::new(AtomicBool::new(false));
    let thread = registry
        .spawn_rescanner(Duration::from_secs(3600), shutdown.clone())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while registry.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(registry.len(), 4, "the first rescan runs at once");
    shutdown.store(true, Ordering::Relaxed);
    let stopping = Instant::now();
    thread.join().unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(1));
}

#[test]
fn rotated_file_names_map_to_the_live_one() {
    assert_eq!(
        unrotated(Path::new("/p/ns_pod_uid/c/0.log.20240101-120000.gz")),
        Some(PathBuf::from("/p/ns_pod_uid/c/0.log"))
    );
    assert_eq!(
        unrotated(Path::new("/p/ns_pod_uid/c/3.log.1")),
        Some(PathBuf::from("/p/ns_pod_uid/c/3.log"))
    );
    assert_eq!(unrotated(Path::new("/p/ns_pod_uid/c/0.log")), None);
    assert_eq!(unrotated(Path::new("/")), None);
}

fn reported(id: &str, log_path: &Path) -> ContainerInfo {
    let pod = PodLogRef::from_path(log_path).unwrap();
    ContainerInfo {
        id: id.into(),
        image: "shop/cart:2".into(),
        state: ContainerState::Running,
        ..info_from_log_path(log_path, pod)
    }
}

#[test]
fn known_by_log_path_answers_only_what_the_runtime_reported_and_queues_the_rest() {
    let pods = pods_dir();
    let registry = ContainerRegistry::new(Some(unreachable_cri(pods.path())), pods.path().into());
    let live = pods.path().join(format!("default_web_{UID_A}/nginx/1.log"));
    assert!(
        registry.by_log_path(&live).is_some(),
        "the path alone names it"
    );
    assert_eq!(registry.known_by_log_path(&live), None, "CRI did not");
    assert_eq!(registry.queued(), vec![live.clone()], "asked of CRI");
    registry.known_by_log_path(&live);
    assert_eq!(registry.queued().len(), 1, "asked once, not per poll");

    let before = registry.generation();
    registry.record(reported(CID, &live));
    assert!(registry.generation() > before);
    assert_eq!(registry.known_by_log_path(&live).unwrap().id, CID);
    let rotated = live.with_file_name("1.log.20240101-000000");
    assert_eq!(registry.known_by_log_path(&rotated).unwrap().id, CID);
    // The same directory under another mount: the kubelet's names still match.
    let mounted = Path::new("/host/var/log/pods")
        .join(format!("default_web_{UID_A}"))
        .join("nginx/1.log");
    assert_eq!(registry.known_by_log_path(&mounted).unwrap().id, CID);
    // Another restart is another run.
    let older = live.with_file_name("0.log");
    assert_eq!(registry.known_by_log_path(&older), None);

    let unchanged = registry.generation();
    registry.record(reported(CID, &live));
    assert_eq!(
        registry.generation(),
        unchanged,
        "the same report changes nothing"
    );
}

#[test]
fn without_a_runtime_nothing_is_queued() {
    let pods = pods_dir();
    let registry = ContainerRegistry::new(None, pods.path().into());
    registry.rescan().unwrap();
    let live = pods.path().join(format!("default_web_{UID_A}/nginx/1.log"));
    assert_eq!(registry.known_by_log_path(&live), None);
    assert!(registry.queued().is_empty());
}

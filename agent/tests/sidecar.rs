//! `mode: sidecar` end to end: one pod under a real containerd + runc (see
//! `common/cri.rs`; needs root and `containerd runc busybox-static`, or
//! `LOGTAP_SKIP_CRI_TESTS=1` to skip) with two containers sharing an `emptyDir` (a
//! node directory mounted into both, as the kubelet makes it): the application
//! writing a log file, and the logtap binary itself running as an unprivileged user
//! with no CRI socket, no host path but its volumes, and the pod's identity in its
//! environment as the downward API gives it.
//!
//! The busybox test image has no C library: the node's `/usr/lib` and `/usr/lib64`
//! are mounted read-only (as `/lib`, `/lib64`) for the dynamically linked binary (a real image carries
//! them; the agent's access is what `deploy/examples/sidecar.yaml` gives it).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cri::{ContainerSpec, CriHarness, Mount, PodSpec};
use common::*;

/// The sidecar's user: nobody, as a `runAsUser` would make it.
const UID: i64 = 65534;
const LINES: usize = 400;

fn mount(host: &Path, container: &str, readonly: bool) -> Mount {
    Mount {
        host: host.to_path_buf(),
        container: container.into(),
        readonly,
    }
}

/// A directory the sidecar's user owns (an emptyDir with `fsGroup`).
fn volume(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(UID as u32), Some(UID as u32)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `Uid:` (real, effective, ...) and `CapEff:` of a process, from its status file.
fn uid_and_caps(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    (field("Uid:"), field("CapEff:"))
}

#[test]
fn a_sidecar_reads_the_shared_volume_unprivileged_with_the_pods_identity() {
    let Some(harness) = CriHarness::start() else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("app-logs");
    let data = dir.path().join("logtap-data");
    let etc = dir.path().join("etc");
    // The application writes as root here; the sidecar only reads what it shares.
    std::fs::create_dir_all(&shared).unwrap();
    volume(&data);
    std::fs::create_dir_all(&etc).unwrap();
    let port = free_port();
    std::fs::write(
        etc.join("logtap.yaml"),
        format!(
            "mode: sidecar\n\
             data_dir: /var/lib/logtap\n\
             metrics: {{listen: \"127.0.0.1:{port}\"}}\n\
             files: {{rescan_interval: 1s}}\n\
             batch: {{timeout: 100ms}}\n\
             sources:\n  - name: app\n    include: [\"/var/log/app/*.log\"]\n    sink: local\n\
             sinks:\n  local: {{type: store}}\n"
        ),
    )
    .unwrap();

    let mut spec = PodSpec::new("cart-sidecar");
    spec.namespace = "shop".into();
    let pod = harness.run_pod(spec);

    let mut agent = ContainerSpec {
        name: "logtap".into(),
        command: vec![
            "/logtap".into(),
            "run".into(),
            "--config".into(),
            "/etc/logtap/logtap.yaml".into(),
        ],
        mounts: vec![
            mount(&logtap_bin(), "/logtap", true),
            mount(Path::new("/usr/lib"), "/lib", true),
            mount(Path::new("/usr/lib64"), "/lib64", true),
            mount(&shared, "/var/log/app", true),
            mount(&data, "/var/lib/logtap", false),
            mount(&etc, "/etc/logtap", true),
        ],
        run_as_user: Some(UID),
        ..Default::default()
    };
    // What the downward API puts there (metadata.name, .namespace, .uid, spec.nodeName).
    for (k, v) in [
        ("POD_NAME", pod.spec.name.as_str()),
        ("POD_NAMESPACE", "shop"),
        ("POD_UID", pod.spec.uid.as_str()),
        ("NODE_NAME", "node-sc"),
        ("APP_CONTAINER_NAME", "app"),
        ("LOGTAP_LOG", "info"),
    ] {
        agent.env.insert(k.into(), v.into());
    }
    let agent = pod.start_container(agent);
    let agent_log = || std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    let ready = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        matches!(http_get_status(port, "/readyz"), Some((200, _)))
    });
    assert!(
        ready,
        "the sidecar never got ready; its log:\n{}",
        agent_log()
    );

    let pid = agent.pid().expect("the sidecar runs");
    let (uid, caps) = uid_and_caps(pid);
    assert_eq!(uid, format!("{UID} {UID} {UID} {UID}"), "runs as nobody");
    assert_eq!(caps, "0000000000000000", "with no capability");

    let mut app = ContainerSpec::shell(
        "app",
        &format!(
            "i=0; while [ $i -lt {LINES} ]; do echo \"cart $i\" >> /var/log/app/app.log; i=$((i+1)); done; exec sleep 3600"
        ),
    );
    app.mounts = vec![mount(&shared, "/var/log/app", false)];
    pod.start_container(app);

    let store = data.join("store");
    let lines = || records_of(&store, "cart ");
    let arrived = poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
        lines().len() >= LINES
    });
    assert!(
        arrived,
        "{} of {LINES} lines arrived; the sidecar's log:\n{}",
        lines().len(),
        agent_log()
    );
    let records = lines();
    let mut seen: Vec<usize> = records
        .iter()
        .map(|r| {
            r["body"].as_str().unwrap()["cart ".len()..]
                .parse()
                .unwrap()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..LINES).collect::<Vec<_>>(), "every line once");
    for r in &records {
        assert_eq!(r["path"], "/var/log/app/app.log");
        let field = |k: &str| r["resource"][k].as_str().map(str::to_owned);
        assert_eq!(field("k8s.pod").as_deref(), Some(pod.spec.name.as_str()));
        assert_eq!(field("k8s.namespace").as_deref(), Some("shop"));
        assert_eq!(field("k8s.pod_uid").as_deref(), Some(pod.spec.uid.as_str()));
        assert_eq!(field("k8s.node").as_deref(), Some("node-sc"));
        assert_eq!(field("k8s.container").as_deref(), Some("app"));
    }
    let log = agent_log();
    assert!(
        !log.contains("CRI") && !log.contains("Kubernetes API"),
        "a sidecar asks neither the runtime nor the API:\n{log}"
    );
    pod.remove();
    eprintln!("sidecar e2e took {:?}", started.elapsed());
}

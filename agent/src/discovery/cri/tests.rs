use super::*;

/// `ContainerStatus(verbose).info["info"]` of a running busybox container, captured
/// from containerd 1.6.20 (Debian 12) by the CRI test harness.
const CONTAINERD_VERBOSE_INFO: &str = include_str!("containerd-1.6-verbose-info.json");
const CID: &str = "0c81db820f10c32fd485f11eb03f27d8f75c064d87f3c2518b22f43c102faf86";

#[test]
fn verbose_info_of_containerd() {
    let info = VerboseInfo::parse(CONTAINERD_VERBOSE_INFO);
    assert_eq!(info.pid, Some(30741));
    assert_eq!(
        info.sandbox_id.as_deref(),
        Some("b0e9989ac51efb936ecc5a0cba96152715bd3aa41cea55daa42cf5d201035697")
    );
    // Only what the pod spec set: not the image's PATH nor the runtime's HOSTNAME.
    assert_eq!(
        info.env,
        BTreeMap::from([("FOO".to_string(), "bar".to_string())])
    );
    assert_eq!(
        info.cgroup_path.as_deref(),
        Some(
            "kubepods/besteffort/pod000077b2-0000-4156-8abc-156abcbe5ace/\
             0c81db820f10c32fd485f11eb03f27d8f75c064d87f3c2518b22f43c102faf86"
        )
    );
    assert_eq!(
        container_id_from_cgroup_path(info.cgroup_path.unwrap().as_bytes()),
        Some(CID)
    );
}

#[test]
fn verbose_info_without_cri_config_takes_the_oci_env() {
    // CRI-O's shape: no `config`, the environment only in the OCI spec.
    let json = r#"{"pid": 42, "sandboxID": "s1", "runtimeSpec": {"process": {"env":
        ["PATH=/bin", "A=1=2", "NOEQUALS"]}, "linux": {"cgroupsPath":
        "kubepods-besteffort-podx.slice:crio:abc"}}}"#;
    let info = VerboseInfo::parse(json);
    assert_eq!(info.pid, Some(42));
    assert_eq!(info.env.get("A").map(String::as_str), Some("1=2"));
    assert_eq!(info.env.get("PATH").map(String::as_str), Some("/bin"));
    assert_eq!(info.env.len(), 2);
    assert_eq!(
        info.cgroup_path.as_deref(),
        Some("kubepods-besteffort-podx.slice:crio:abc")
    );
}

#[test]
fn verbose_info_tolerates_odd_shapes() {
    for json in [
        "",
        "not json",
        "[]",
        "{}",
        r#"{"pid": -1}"#,
        r#"{"pid": 0, "sandboxID": ""}"#,
        r#"{"pid": 99999999999}"#,
        r#"{"runtimeSpec": {"linux": {"cgroupsPath": ""}}}"#,
    ] {
        let info = VerboseInfo::parse(json);
        assert_eq!(info.pid, None, "{json}");
        assert_eq!(info.sandbox_id, None, "{json}");
        assert_eq!(info.cgroup_path, None, "{json}");
        assert!(info.env.is_empty(), "{json}");
    }
    // A field of the wrong type is not a reason to lose the others.
    let info = VerboseInfo::parse(r#"{"pid": "12"}"#);
    assert_eq!(info, VerboseInfo::default());
}

#[test]
fn cgroup_path_to_container_id() {
    let cases: &[(&str, Option<&str>)] = &[
        // cgroupfs driver, as /proc/<pid>/cgroup shows it and as the OCI spec says it.
        (
            &format!("/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/{CID}"),
            Some(CID),
        ),
        (
            &format!("/process_api/x/kubepods/burstable/podabc/{CID}\n"),
            Some(CID),
        ),
        (CID, Some(CID)),
        // systemd driver.
        (
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-{CID}.scope"
            ),
            Some(CID),
        ),
        (&format!("/system.slice/docker-{CID}.scope"), Some(CID)),
        (&format!("/kubepods.slice/crio-{CID}.scope/"), Some(CID)),
        (
            &format!("kubepods-besteffort-podx.slice:cri-containerd:{CID}"),
            Some(CID),
        ),
        // Not containers.
        (
            "/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
            None,
        ),
        ("/kubepods.slice/kubepods-burstable.slice", None),
        (&format!("/kubepods.slice/crio-conmon-{CID}.scope"), None),
        (&format!("/x/{}", &CID[..63]), None),
        (&format!("/x/{CID}0"), None),
        (&format!("/x/{}g", &CID[..63]), None),
        ("/", None),
        ("", None),
    ];
    for (path, want) in cases {
        assert_eq!(
            container_id_from_cgroup_path(path.as_bytes()),
            *want,
            "{path}"
        );
    }
    assert_eq!(container_id_from_cgroup_path(b"/x/\xff\xfe"), None);
}

#[test]
fn endpoints() {
    assert_eq!(
        socket_path(DEFAULT_ENDPOINT).unwrap(),
        PathBuf::from("/run/containerd/containerd.sock")
    );
    assert_eq!(
        socket_path("/run/crio/crio.sock").unwrap(),
        PathBuf::from("/run/crio/crio.sock")
    );
    for bad in [
        "tcp://1.2.3.4:5",
        "unix://relative.sock",
        "",
        "containerd.sock",
    ] {
        assert!(
            matches!(
                CriClient::connect(bad, Duration::from_secs(1)),
                Err(CriError::Endpoint(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn missing_socket_is_an_unreachable_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}/none.sock", dir.path().display());
    let client = CriClient::connect(&endpoint, Duration::from_secs(1)).unwrap();
    let started = std::time::Instant::now();
    let err = client.list_containers().unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert!(client.container(CID).unwrap_err().is_unreachable());
}

#[test]
fn silent_socket_times_out() {
    // A listener that accepts and never answers: a hung runtime.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hung.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let client = CriClient::connect(
        &format!("unix://{}", path.display()),
        Duration::from_millis(200),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = client.version().unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn container_info_from_statuses() {
    let status = proto::ContainerStatus {
        id: CID.into(),
        metadata: Some(proto::ContainerMetadata {
            name: "app".into(),
            attempt: 3,
        }),
        state: proto::ContainerState::ContainerExited as i32,
        image: Some(proto::ImageSpec {
            image: "nginx:1".into(),
            ..Default::default()
        }),
        image_ref: "sha256:ab".into(),
        labels: HashMap::from([
            (LABEL_POD_NAME.into(), "web-0".into()),
            (LABEL_POD_NAMESPACE.into(), "prod".into()),
            (LABEL_POD_UID.into(), "uid-1".into()),
        ]),
        log_path: "/var/log/pods/prod_web-0_uid-1/app/3.log".into(),
        ..Default::default()
    };
    let sandbox = proto::PodSandboxStatus {
        labels: HashMap::from([
            ("app".into(), "web".into()),
            ("io.kubernetes.pod.name".into(), "web-0".into()),
        ]),
        annotations: HashMap::from([("a".into(), "1".into())]),
        ..Default::default()
    };
    let verbose = VerboseInfo {
        pid: Some(7),
        ..VerboseInfo::default()
    };
    let info = container_info(status.clone(), "sb".into(), Some(sandbox), verbose);
    assert_eq!(info.name, "app");
    assert_eq!(info.state, ContainerState::Exited);
    assert_eq!(info.pid, None, "an exited container has no pid");
    assert_eq!(info.restart_count, 3);
    let pod = info.pod.unwrap();
    assert_eq!(
        (
            pod.namespace.as_str(),
            pod.pod.as_str(),
            pod.pod_uid.as_str()
        ),
        ("prod", "web-0", "uid-1")
    );
    assert_eq!((pod.container.as_str(), pod.restart), ("app", 3));
    assert_eq!(
        info.labels,
        BTreeMap::from([("app".to_string(), "web".to_string())])
    );
    assert_eq!(info.annotations.get("a").map(String::as_str), Some("1"));

    // No kubelet labels: the sandbox metadata names the pod; no sandbox, no pod.
    let bare = proto::ContainerStatus {
        labels: HashMap::new(),
        log_path: "relative/0.log".into(),
        ..status
    };
    let with_meta = proto::PodSandboxStatus {
        metadata: Some(proto::PodSandboxMetadata {
            name: "p".into(),
            uid: "u".into(),
            namespace: "n".into(),
            attempt: 0,
        }),
        ..Default::default()
    };
    let info = container_info(
        bare.clone(),
        "sb".into(),
        Some(with_meta),
        VerboseInfo::default(),
    );
    assert_eq!(info.pod.map(|p| p.pod), Some("p".to_string()));
    assert_eq!(info.log_path, None);
    assert_eq!(
        container_info(bare, String::new(), None, VerboseInfo::default()).pod,
        None
    );
}

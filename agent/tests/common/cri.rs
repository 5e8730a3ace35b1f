//! A real container runtime for tests: containerd + runc, driven through the CRI API
//! the way the kubelet drives it, so container logs land in real
//! `/var/log/pods/<ns>_<pod>_<uid>/<container>/0.log` files written by containerd.
//!
//! [`CriHarness::start`] starts one containerd per test binary, with everything
//! (socket, root, state, images) under a temporary directory, and two images built
//! locally without a registry: `localhost/busybox:1` (Debian's busybox-static with
//! its applet links) and `localhost/pause:1` (`tests/fixtures/pause.c`). Pods use the
//! node's network (there is no CNI) and a relative cgroup parent, so their cgroups
//! nest under the test's own (`.../kubepods/besteffort/pod<uid>/<container id>`).
//!
//! Cleanup: a pod removes itself on drop; at process exit the harness removes the
//! pods left, stops containerd, unmounts what it left mounted and removes the pod
//! cgroups and log directories it made (containerd leaves pod-level cgroups to the
//! kubelet).
//!
//! Needs root, `containerd`, `ctr`, `runc`, `/bin/busybox` (busybox-static) and a C
//! compiler with a static libc. Without them the tests fail, unless
//! `LOGTAP_SKIP_CRI_TESTS=1` is set: then [`CriHarness::start`] returns `None` and the
//! test returns early.
//! `LOGTAP_KEEP_CRI_WORK=1` keeps the work directory (containerd's log, config,
//! images) after the run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use logtap::discovery::cri::cri_api as api;

/// The OCI archive writer of `cargo xtask image`, shared so that the tests' images
/// (and the agent's image of `daemonset_cri.rs`) are built by the same code.
#[path = "../../../xtask/src/oci.rs"]
#[allow(dead_code, reason = "each test binary uses a different part")]
pub mod oci;
use logtap::discovery::{ContainerInfo, ContainerState, CriClient};

pub const SKIP_VAR: &str = "LOGTAP_SKIP_CRI_TESTS";
pub const BUSYBOX_IMAGE: &str = "localhost/busybox:1";
pub const PAUSE_IMAGE: &str = "localhost/pause:1";
pub const PODS_DIR: &str = "/var/log/pods";
/// Per-call bound of the harness's own CRI calls (sandbox start takes ~200 ms).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

pub struct CriHarness {
    work: PathBuf,
    endpoint: String,
    client: CriClient,
    containerd: Mutex<Option<Child>>,
    /// Pods not yet removed: sandbox id and uid.
    pods: Mutex<Vec<(String, String)>>,
    /// Every pod uid this harness made (for the cgroup and log directory sweep).
    uids: Mutex<Vec<(String, PathBuf)>>,
}

static HARNESS: OnceLock<Option<CriHarness>> = OnceLock::new();

impl CriHarness {
    /// The harness of this test binary, started on first use; `None` when the
    /// machine cannot run it and `LOGTAP_SKIP_CRI_TESTS=1` says to skip.
    pub fn start() -> Option<&'static CriHarness> {
        HARNESS
            .get_or_init(|| {
                if let Err(missing) = prerequisites() {
                    if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
                        eprintln!("note: skipping the CRI tests ({SKIP_VAR}=1): {missing}");
                        return None;
                    }
                    panic!(
                        "the CRI tests need {missing}; install containerd runc busybox-static \
                         and run as root, or set {SKIP_VAR}=1 to skip them"
                    );
                }
                let harness = CriHarness::boot();
                // SAFETY: `cleanup_at_exit` is an `extern "C" fn()` that does not unwind.
                unsafe { libc::atexit(cleanup_at_exit) };
                Some(harness)
            })
            .as_ref()
    }

    fn boot() -> CriHarness {
        let started = Instant::now();
        let work = tempfile::Builder::new()
            .prefix("logtap-cri-")
            .tempdir_in("/tmp")
            .expect("work dir")
            .keep();
        let socket = work.join("containerd.sock");
        let endpoint = format!("unix://{}", socket.display());
        let images = work.join("images");
        std::fs::create_dir_all(&images).unwrap();
        let busybox = build_busybox_image(&images);
        let pause = build_pause_image(&images);

        std::fs::write(work.join("config.toml"), containerd_config(&work, &socket)).unwrap();
        let log = std::fs::File::create(work.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(work.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let client = CriClient::connect(&endpoint, CALL_TIMEOUT).expect("CRI client");
        let harness = CriHarness {
            work: work.clone(),
            endpoint,
            client,
            containerd: Mutex::new(Some(child)),
            pods: Mutex::new(Vec::new()),
            uids: Mutex::new(Vec::new()),
        };
        // A failed start must not leave containerd running: no atexit hook exists yet.
        let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            harness.load_images(&socket, &[&pause, &busybox])
        }));
        if let Err(panic) = ready {
            harness.shutdown();
            std::panic::resume_unwind(panic);
        }
        eprintln!(
            "CRI harness: containerd up with images in {:?} ({})",
            started.elapsed(),
            harness.work.display()
        );
        harness
    }

    /// Waits for CRI to answer, imports the image archives and waits until CRI sees
    /// them.
    fn load_images(&self, socket: &Path, tars: &[&PathBuf]) {
        self.wait_until("containerd answers CRI Version", || {
            self.client.version().is_ok()
        });
        for tar in tars {
            import_archive(socket, tar);
        }
        // CRI learns of imported images from containerd's events, a moment later.
        for image in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
            self.wait_until(&format!("CRI sees {image}"), || {
                self.client.image_present(image).unwrap_or(false)
            });
        }
    }

    /// Imports the OCI archive of image `name` (`ctr images import`, as an
    /// administrator would on a node) and waits until CRI sees it.
    pub fn import_image(&self, archive: &Path, name: &str) {
        import_archive(&self.work.join("containerd.sock"), archive);
        self.wait_until(&format!("CRI sees {name}"), || {
            self.client.image_present(name).unwrap_or(false)
        });
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.work.join("containerd.log")).unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!("timed out waiting until {what}; containerd log tail:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `unix:///tmp/logtap-cri-…/containerd.sock`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The harness's own client (lifecycle calls).
    pub fn client(&self) -> &CriClient {
        &self.client
    }

    /// Runs a pod sandbox as the kubelet would (its labels and annotations, the
    /// kubelet's `io.kubernetes.pod.*` labels, its log directory).
    pub fn run_pod(&'static self, spec: PodSpec) -> PodHandle {
        self.run_pod_with(spec, |_| {})
    }

    /// [`run_pod`](Self::run_pod), with `adjust` changing the sandbox config before
    /// it runs (a privileged pod, the host's PID namespace, ...).
    pub fn run_pod_with(
        &'static self,
        spec: PodSpec,
        adjust: impl FnOnce(&mut api::PodSandboxConfig),
    ) -> PodHandle {
        let log_dir =
            PathBuf::from(PODS_DIR).join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid));
        std::fs::create_dir_all(&log_dir).unwrap();
        self.uids
            .lock()
            .unwrap()
            .push((spec.uid.clone(), log_dir.clone()));
        let mut labels: std::collections::HashMap<String, String> =
            spec.labels.clone().into_iter().collect();
        labels.extend(kube_pod_labels(&spec));
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            log_directory: log_dir.display().to_string(),
            labels,
            annotations: spec.annotations.clone().into_iter().collect(),
            linux: Some(api::LinuxPodSandboxConfig {
                // Relative: nested under the test's own cgroup, not the machine's root.
                cgroup_parent: format!("kubepods/besteffort/pod{}", spec.uid),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(node_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut config = config;
        adjust(&mut config);
        let sandbox_id = self
            .client
            .run_pod_sandbox(config.clone())
            .unwrap_or_else(|e| panic!("RunPodSandbox {}: {e}", spec.name));
        self.pods
            .lock()
            .unwrap()
            .push((sandbox_id.clone(), spec.uid.clone()));
        PodHandle {
            harness: self,
            spec,
            sandbox_id,
            config,
            log_dir,
            removed: false,
        }
    }

    fn remove_pod(&self, sandbox_id: &str) {
        if let Err(e) = self.client.stop_pod_sandbox(sandbox_id) {
            eprintln!("StopPodSandbox {sandbox_id}: {e}");
        }
        if let Err(e) = self.client.remove_pod_sandbox(sandbox_id) {
            eprintln!("RemovePodSandbox {sandbox_id}: {e}");
        }
        self.pods.lock().unwrap().retain(|(id, _)| id != sandbox_id);
    }

    fn shutdown(&self) {
        let pods: Vec<String> = self
            .pods
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        for id in pods {
            self.remove_pod(&id);
        }
        if let Some(mut child) = self.containerd.lock().unwrap().take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        unmount_under(&self.work);
        for (uid, log_dir) in self.uids.lock().unwrap().iter() {
            remove_pod_cgroups(uid);
            let _ = std::fs::remove_dir_all(log_dir);
        }
        if std::env::var("LOGTAP_KEEP_CRI_WORK").as_deref() != Ok("1") {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

extern "C" fn cleanup_at_exit() {
    // Never unwind across the C boundary.
    let _ = std::panic::catch_unwind(|| {
        if let Some(Some(harness)) = HARNESS.get() {
            harness.shutdown();
        }
    });
}

/// What the pod is; `PodSpec::new` gives a unique UID in namespace `default`.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl PodSpec {
    pub fn new(name: &str) -> PodSpec {
        PodSpec {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            uid: unique_uid(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }
}

/// A container to start: busybox running `command`.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Bind mounts, as the kubelet makes them for volumes (an `emptyDir` is a node
    /// directory mounted into each container that names it).
    pub mounts: Vec<Mount>,
    /// `securityContext.runAsUser`; `None`: the image's user (root).
    pub run_as_user: Option<i64>,
}

/// One bind mount of a node path into a container.
#[derive(Clone, Debug)]
pub struct Mount {
    pub host: PathBuf,
    pub container: String,
    pub readonly: bool,
}

impl ContainerSpec {
    /// `/bin/sh -c script`.
    pub fn shell(name: &str, script: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.to_owned(),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }
    }
}

pub struct PodHandle {
    harness: &'static CriHarness,
    pub spec: PodSpec,
    pub sandbox_id: String,
    config: api::PodSandboxConfig,
    log_dir: PathBuf,
    removed: bool,
}

impl PodHandle {
    /// `/var/log/pods/<ns>_<pod>_<uid>`.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Creates and starts a container (restart attempt 0) in this pod.
    pub fn start_container(&self, spec: ContainerSpec) -> ContainerHandle {
        let handle = self.create_container(spec);
        handle.start();
        handle
    }

    /// Creates a container (restart attempt 0) without starting it.
    pub fn create_container(&self, spec: ContainerSpec) -> ContainerHandle {
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: BUSYBOX_IMAGE.into(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            envs: spec
                .env
                .iter()
                .map(|(key, value)| api::KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            labels: spec.labels.clone().into_iter().collect(),
            mounts: spec
                .mounts
                .iter()
                .map(|m| api::Mount {
                    container_path: m.container.clone(),
                    host_path: m.host.display().to_string(),
                    readonly: m.readonly,
                    ..Default::default()
                })
                .collect(),
            linux: Some(api::LinuxContainerConfig {
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(node_network()),
                    run_as_user: spec.run_as_user.map(|value| api::Int64Value { value }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_container_from(config)
    }

    /// Creates a container from a CRI config the test made itself (its image, mounts,
    /// security context: what the kubelet would derive from a pod spec). The kubelet's
    /// labels and the log path (`<name>/0.log`) are added as for the others.
    pub fn create_container_from(&self, mut config: api::ContainerConfig) -> ContainerHandle {
        let name = config.metadata.as_ref().expect("metadata").name.clone();
        config.labels.extend(kube_pod_labels(&self.spec));
        config
            .labels
            .insert("io.kubernetes.container.name".into(), name.clone());
        config.log_path = format!("{name}/0.log");
        let id = self
            .harness
            .client
            .create_container(&self.sandbox_id, config, self.config.clone())
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"));
        ContainerHandle {
            harness: self.harness,
            id,
            log_path: self.log_dir.join(&name).join("0.log"),
        }
    }

    /// Stops and removes the pod (and its containers) and its log directory.
    pub fn remove(mut self) {
        self.remove_now();
    }

    fn remove_now(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        self.harness.remove_pod(&self.sandbox_id);
        remove_pod_cgroups(&self.spec.uid);
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }
}

impl Drop for PodHandle {
    fn drop(&mut self) {
        self.remove_now();
    }
}

pub struct ContainerHandle {
    harness: &'static CriHarness,
    id: String,
    log_path: PathBuf,
}

impl ContainerHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `/var/log/pods/<ns>_<pod>_<uid>/<name>/0.log`.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// StartContainer, for a container made with [`PodHandle::create_container`].
    pub fn start(&self) {
        self.harness
            .client
            .start_container(&self.id)
            .unwrap_or_else(|e| panic!("StartContainer {}: {e}", self.id));
    }

    /// What the runtime says about the container now.
    pub fn info(&self) -> ContainerInfo {
        self.harness
            .client
            .container(&self.id)
            .expect("ContainerStatus")
            .expect("container known to the runtime")
    }

    /// The init process's pid (host namespace), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.info().pid
    }

    /// Waits for the container to exit; panics after `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> ContainerInfo {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.info();
            if info.state == ContainerState::Exited {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "container {} still {:?} after {timeout:?}",
                self.id,
                info.state
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// ReopenContainerLog: after the test renamed `0.log`, as the kubelet's rotation
    /// does, containerd writes on to a new `0.log`.
    pub fn reopen_log(&self) {
        self.try_reopen_log().expect("ReopenContainerLog");
    }

    /// ReopenContainerLog, which fails once the container stopped (the kubelet then
    /// stops rotating its log).
    pub fn try_reopen_log(&self) -> Result<(), String> {
        self.harness
            .client
            .reopen_container_log(&self.id)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Stops the container at once (SIGKILL: a shell as PID 1 ignores SIGTERM).
    pub fn stop(&self) {
        self.harness
            .client
            .stop_container(&self.id, Duration::ZERO)
            .expect("StopContainer");
    }
}

fn import_archive(socket: &Path, archive: &Path) {
    let out = Command::new("ctr")
        .args([
            "-a",
            socket.to_str().unwrap(),
            "-n",
            "k8s.io",
            "images",
            "import",
        ])
        .arg(archive)
        .output()
        .expect("run ctr");
    assert!(
        out.status.success(),
        "ctr images import {}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lines of a CRI log file as `(stream, tag, message)`, timestamps checked.
pub fn read_cri_log(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let time = parts.next().unwrap_or_default();
            assert!(
                time.len() > 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
                "not a CRI timestamp in {line:?}"
            );
            let stream = parts.next().unwrap_or_default().to_owned();
            let tag = parts.next().unwrap_or_default().to_owned();
            let message = parts.next().unwrap_or_default().to_owned();
            (stream, tag, message)
        })
        .collect()
}

fn kube_pod_labels(spec: &PodSpec) -> [(String, String); 3] {
    [
        ("io.kubernetes.pod.name".into(), spec.name.clone()),
        ("io.kubernetes.pod.namespace".into(), spec.namespace.clone()),
        ("io.kubernetes.pod.uid".into(), spec.uid.clone()),
    ]
}

/// Host network (no CNI here), a pid namespace per container, a pod-wide IPC one.
fn node_network() -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Node as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A UUID-shaped uid no other test (or test run) uses.
pub fn unique_uid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        std::process::id(),
        n & 0xffff,
        (nanos >> 36) & 0xfff,
        (nanos >> 24) & 0xfff,
        nanos & 0xffff_ffff_ffff
    )
}

fn prerequisites() -> Result<(), String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("root".into());
    }
    for bin in ["containerd", "containerd-shim-runc-v2", "ctr", "runc", "cc"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
            .unwrap_or(false);
        if !found {
            return Err(format!("`{bin}` on PATH"));
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        return Err("/bin/busybox (busybox-static)".into());
    }
    Ok(())
}

fn containerd_config(work: &Path, socket: &Path) -> String {
    let w = work.display();
    let s = socket.display();
    format!(
        r#"version = 2
root = "{w}/root"
state = "{w}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{s}"
[ttrpc]
  address = "{s}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{w}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # no CAP_SYS_RESOURCE here: runc would fail on the sandbox's oom_score_adj
  restrict_oom_score_adj = true
  disable_apparmor = true
  max_container_log_line_size = 16384
  # several harnesses (test binaries) may run at once: no fixed port
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{w}/cni/bin"
    conf_dir = "{w}/cni/conf"
"#
    )
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn build_busybox_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs-busybox");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
    oci_archive(dir, BUSYBOX_IMAGE, &rootfs, &["/bin/sh"])
}

fn build_pause_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs-pause");
    for d in ["proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pause.c");
    run(Command::new("cc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(rootfs.join("pause"))
        .arg(source));
    oci_archive(dir, PAUSE_IMAGE, &rootfs, &["/pause"])
}

/// A one-layer image of `rootfs` as an OCI archive in `dir`, for `ctr images import`.
fn oci_archive(dir: &Path, name: &str, rootfs: &Path, cmd: &[&str]) -> PathBuf {
    let short = name.rsplit('/').next().unwrap().replace(':', "-");
    let archive = dir.join(format!("{short}.tar"));
    let config = oci::ImageConfig {
        entrypoint: &[],
        cmd,
        env: &[],
        labels: &[],
    };
    oci::write_archive(&archive, name, rootfs, &config)
        .unwrap_or_else(|e| panic!("image {name}: {e}"));
    archive
}

/// Lazily unmounts everything mounted under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let Ok(c) = std::ffi::CString::new(point) else {
            continue;
        };
        // SAFETY: umount2(2) with a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The cgroup v2 path below which the harness's pods get their cgroups (the capture
/// prefix of tests that capture them): `<this process's cgroup>/kubepods`.
pub fn pod_cgroup_prefix() -> String {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line in /proc/self/cgroup");
    format!("{}/kubepods", own.trim_end_matches('/'))
}

/// Removes `kubepods/besteffort/pod<uid>` (and the parents, when empty) under this
/// process's cgroup in every hierarchy: the kubelet's job, which containerd leaves.
fn remove_pod_cgroups(uid: &str) {
    let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") else {
        return;
    };
    let unified = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/unified")
    };
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let base = if controllers.is_empty() {
            unified.clone()
        } else {
            let name = controllers.strip_prefix("name=").unwrap_or(controllers);
            let full = Path::new("/sys/fs/cgroup").join(name);
            if full.is_dir() {
                full
            } else {
                Path::new("/sys/fs/cgroup").join(name.split(',').next().unwrap_or(name))
            }
        };
        let kubepods = base.join(path.trim_start_matches('/')).join("kubepods");
        let pod = kubepods.join("besteffort").join(format!("pod{uid}"));
        if pod.is_dir() {
            // Children first: container cgroups runc failed to remove, then the pod.
            if let Ok(entries) = std::fs::read_dir(&pod) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&pod);
        }
        // Fails (and is meant to) while another pod still lives there.
        let _ = std::fs::remove_dir(kubepods.join("besteffort"));
        let _ = std::fs::remove_dir(&kubepods);
    }
}

//! A blocking client of the container runtime's CRI v1 API (containerd, CRI-O), over
//! its unix socket.
//!
//! The agent is thread-based, so the client carries its own current-thread tokio
//! runtime and every call is a `block_on` bounded by the configured timeout. The gRPC
//! channel connects lazily and reconnects by itself: a runtime that is down when the
//! agent starts, or restarts later, is an error of the calls made meanwhile, never of
//! [`CriClient::connect`].
//!
//! [`CriClient::list_containers`] and [`CriClient::container`] build a
//! [`ContainerInfo`] from `ContainerStatus` (verbose, for the pid, the environment and
//! the cgroup) and `PodSandboxStatus` (for the pod's labels and annotations). The
//! lifecycle calls (`run_pod_sandbox`, `create_container`, ...) are what the kubelet
//! does; the agent never calls them, the test harness does.
//!
//! # Threads
//!
//! Calls may come from several threads at once: the first to enter `block_on` drives
//! the runtime's I/O, the others hook into it (tokio's documented behaviour for a
//! current-thread runtime). No lock is held across a call. Being blocking, the client
//! must not be called from inside an async task (tokio refuses a nested `block_on`).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as proto;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde::Deserialize;
use tonic::transport::{Channel, Endpoint, Uri};

use super::PodLogRef;

use crate::metrics::catalogue::CRI_REQUESTS_TOTAL;
/// The CRI v1 messages, for callers that drive the lifecycle calls.
pub use k8s_cri::v1 as cri_api;

/// containerd's socket on a Kubernetes node.
pub const DEFAULT_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// The kubelet's labels naming a container's pod; they are no user labels.
const KUBE_LABEL_PREFIX: &str = "io.kubernetes.";
const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// Verbose status answers carry the OCI spec; allow more than tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("CRI endpoint {0:?}: expected unix:///absolute/path.sock or an absolute path")]
    Endpoint(String),
    #[error("CRI client runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("CRI {call}: no answer within {timeout:?}")]
    Timeout {
        call: &'static str,
        timeout: Duration,
    },
    #[error("CRI {call}: {code:?}: {message}")]
    Status {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
}

impl CriError {
    /// Whether the runtime could not be reached at all (socket missing, refused,
    /// hung), as opposed to an answer that was an error.
    pub fn is_unreachable(&self) -> bool {
        match self {
            CriError::Timeout { .. } => true,
            CriError::Status { code, .. } => {
                // Not `Unknown`: containerd answers most of its own failures with it.
                matches!(
                    code,
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                )
            }
            CriError::Endpoint(_) | CriError::Runtime(_) => false,
        }
    }

    fn is_not_found(&self) -> bool {
        matches!(
            self,
            CriError::Status {
                code: tonic::Code::NotFound,
                ..
            }
        )
    }
}

/// A container as the runtime reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerInfo {
    /// The full container id (64 hex digits for containerd and CRI-O).
    pub id: String,
    /// The container's name in its pod (`metadata.name`).
    pub name: String,
    /// The pod sandbox the container runs in; empty when not known (log-path scan).
    pub sandbox_id: String,
    /// Namespace, pod name, pod UID, container name and restart count; `None` for a
    /// container no kubelet made (no pod labels, no sandbox metadata).
    pub pod: Option<PodLogRef>,
    /// The image as the pod spec named it.
    pub image: String,
    /// The image the runtime resolved it to (a digest reference).
    pub image_ref: String,
    /// The pod's labels (the kubelet's `io.kubernetes.*` ones removed).
    pub labels: BTreeMap<String, String>,
    /// The pod's annotations.
    pub annotations: BTreeMap<String, String>,
    /// The environment the container was created with (not the image's defaults).
    pub env: BTreeMap<String, String>,
    /// The CRI log file, absolute.
    pub log_path: Option<PathBuf>,
    /// The container's init process in the host's pid namespace, while it runs.
    pub pid: Option<u32>,
    /// The OCI spec's `linux.cgroupsPath`: `/kubepods/.../<id>` with the cgroupfs
    /// driver, `<slice>:cri-containerd:<id>` with systemd.
    pub cgroup_path: Option<String>,
    pub state: ContainerState,
    /// The restart count the kubelet gave this run (`metadata.attempt`).
    pub restart_count: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

impl ContainerState {
    fn from_cri(state: i32) -> ContainerState {
        match proto::ContainerState::try_from(state) {
            Ok(proto::ContainerState::ContainerCreated) => ContainerState::Created,
            Ok(proto::ContainerState::ContainerRunning) => ContainerState::Running,
            Ok(proto::ContainerState::ContainerExited) => ContainerState::Exited,
            Ok(proto::ContainerState::ContainerUnknown) | Err(_) => ContainerState::Unknown,
        }
    }
}

/// A blocking CRI runtime-service client.
pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    service: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    endpoint: String,
    timeout: Duration,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient")
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CriClient {
    /// A client of the runtime at `endpoint` (`unix:///run/containerd/containerd.sock`
    /// or a bare absolute path), each call bounded by `timeout`.
    ///
    /// Connects lazily: fails only on a malformed endpoint, not on a runtime that is
    /// down (calls fail until it is up).
    pub fn connect(endpoint: &str, timeout: Duration) -> Result<CriClient, CriError> {
        let socket = socket_path(endpoint)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CriError::Runtime)?;
        // The URI is required by tonic but never dialed: the connector below opens the
        // unix socket whatever it says.
        // Each call is bounded by `call`'s own timeout, which reports it as one.
        let channel = Endpoint::from_static("http://cri.invalid").connect_timeout(timeout);
        let channel = {
            // The lazy channel spawns its worker onto the current runtime.
            let _enter = runtime.enter();
            channel.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
        };
        let images = ImageServiceClient::new(channel.clone());
        let service = RuntimeServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(CriClient {
            runtime,
            service,
            images,
            endpoint: endpoint.to_owned(),
            timeout,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Runs one runtime-service call with the timeout, counting its result.
    fn call<T, F>(
        &self,
        call: &'static str,
        request: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, CriError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.run(call, request(self.service.clone()))
    }

    fn run<T>(
        &self,
        call: &'static str,
        future: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CriError> {
        let result = match self
            .runtime
            .block_on(async { tokio::time::timeout(self.timeout, future).await })
        {
            Err(_) => Err(CriError::Timeout {
                call,
                timeout: self.timeout,
            }),
            Ok(Err(status)) => Err(CriError::Status {
                call,
                code: status.code(),
                message: status.message().to_owned(),
            }),
            Ok(Ok(response)) => Ok(response.into_inner()),
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(CriError::Status {
                code: tonic::Code::NotFound,
                ..
            }) => "not_found",
            Err(e) if e.is_unreachable() => "unreachable",
            Err(_) => "error",
        };
        metrics::counter!(CRI_REQUESTS_TOTAL, "result" => label).increment(1);
        result
    }

    /// The runtime's name and version (`containerd 1.6.20`), a cheap health probe.
    pub fn version(&self) -> Result<String, CriError> {
        let v = self.call("Version", |mut s| async move {
            s.version(proto::VersionRequest {
                version: "v1".into(),
            })
            .await
        })?;
        Ok(format!("{} {}", v.runtime_name, v.runtime_version))
    }

    /// Every container the runtime knows (running or not), with its pod's metadata.
    ///
    /// One `ContainerStatus` per container and one `PodSandboxStatus` per pod. A
    /// container removed between the list and its status is left out.
    pub fn list_containers(&self) -> Result<Vec<ContainerInfo>, CriError> {
        self.list_filtered(None)
    }

    /// The containers (every restart the runtime still has) of one container of one
    /// pod, selected by the kubelet's labels: what a new CRI log file needs, without
    /// a status call per container of the node.
    pub fn containers_of(
        &self,
        pod_uid: &str,
        container: &str,
    ) -> Result<Vec<ContainerInfo>, CriError> {
        let filter = proto::ContainerFilter {
            label_selector: [
                (LABEL_POD_UID.to_owned(), pod_uid.to_owned()),
                (LABEL_CONTAINER_NAME.to_owned(), container.to_owned()),
            ]
            .into(),
            ..Default::default()
        };
        self.list_filtered(Some(filter))
    }

    fn list_filtered(
        &self,
        filter: Option<proto::ContainerFilter>,
    ) -> Result<Vec<ContainerInfo>, CriError> {
        let list = self.call("ListContainers", |mut s| async move {
            s.list_containers(proto::ListContainersRequest { filter })
                .await
        })?;
        let mut sandboxes = HashMap::new();
        let mut out = Vec::with_capacity(list.containers.len());
        for c in list.containers {
            match self.status_of(&c.id, Some(&c.pod_sandbox_id), &mut sandboxes) {
                Ok(Some(info)) => out.push(info),
                Ok(None) => {}
                Err(e) if e.is_unreachable() => return Err(e),
                Err(e) => tracing::debug!(id = %c.id, error = %e, "container status"),
            }
        }
        Ok(out)
    }

    /// Every container's id and state, from one `ListContainers` call (no status
    /// calls): cheap enough to notice new and stopped containers every second.
    pub fn list_container_states(&self) -> Result<Vec<(String, ContainerState)>, CriError> {
        let list = self.call("ListContainers", |mut s| async move {
            s.list_containers(proto::ListContainersRequest { filter: None })
                .await
        })?;
        Ok(list
            .containers
            .into_iter()
            .map(|c| (c.id, ContainerState::from_cri(c.state)))
            .collect())
    }

    /// One container by its full id; `None` when the runtime does not know it.
    pub fn container(&self, id: &str) -> Result<Option<ContainerInfo>, CriError> {
        self.status_of(id, None, &mut HashMap::new())
    }

    fn status_of(
        &self,
        id: &str,
        sandbox_id: Option<&str>,
        sandboxes: &mut HashMap<String, Option<proto::PodSandboxStatus>>,
    ) -> Result<Option<ContainerInfo>, CriError> {
        let request = proto::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        };
        let response = match self.call("ContainerStatus", |mut s| async move {
            s.container_status(request).await
        }) {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(status) = response.status else {
            return Ok(None);
        };
        let verbose = response
            .info
            .get("info")
            .map(|json| VerboseInfo::parse(json))
            .unwrap_or_default();
        let sandbox_id = sandbox_id
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .or_else(|| verbose.sandbox_id.clone())
            .unwrap_or_default();
        let sandbox = if sandbox_id.is_empty() {
            None
        } else if let Some(cached) = sandboxes.get(&sandbox_id) {
            cached.clone()
        } else {
            let fetched = self.sandbox_status(&sandbox_id)?;
            sandboxes.insert(sandbox_id.clone(), fetched.clone());
            fetched
        };
        Ok(Some(container_info(status, sandbox_id, sandbox, verbose)))
    }

    fn sandbox_status(&self, id: &str) -> Result<Option<proto::PodSandboxStatus>, CriError> {
        let request = proto::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: false,
        };
        match self.call("PodSandboxStatus", |mut s| async move {
            s.pod_sandbox_status(request).await
        }) {
            Ok(r) => Ok(r.status),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The raw verbose `ContainerStatus` answer (for diagnostics and tests).
    pub fn container_status_verbose(
        &self,
        id: &str,
    ) -> Result<proto::ContainerStatusResponse, CriError> {
        let request = proto::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        };
        self.call("ContainerStatus", |mut s| async move {
            s.container_status(request).await
        })
    }

    // Lifecycle calls: what the kubelet does. The agent never calls these.

    /// Whether the runtime has `image` (a reference such as `localhost/pause:1`).
    pub fn image_present(&self, image: &str) -> Result<bool, CriError> {
        let request = proto::ImageStatusRequest {
            image: Some(proto::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            verbose: false,
        };
        let mut images = self.images.clone();
        let r = self.run(
            "ImageStatus",
            async move { images.image_status(request).await },
        )?;
        Ok(r.image.is_some())
    }

    /// Starts a pod sandbox; returns its id.
    pub fn run_pod_sandbox(&self, config: proto::PodSandboxConfig) -> Result<String, CriError> {
        let request = proto::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let r = self.call("RunPodSandbox", |mut s| async move {
            s.run_pod_sandbox(request).await
        })?;
        Ok(r.pod_sandbox_id)
    }

    /// Creates a container in a sandbox; returns its id.
    pub fn create_container(
        &self,
        sandbox_id: &str,
        config: proto::ContainerConfig,
        sandbox_config: proto::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let request = proto::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        let r = self.call("CreateContainer", |mut s| async move {
            s.create_container(request).await
        })?;
        Ok(r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), CriError> {
        let request = proto::StartContainerRequest {
            container_id: id.to_owned(),
        };
        self.call("StartContainer", |mut s| async move {
            s.start_container(request).await
        })
        .map(drop)
    }

    /// Stops a container: its stop signal, then SIGKILL after `grace` (0: at once).
    /// Bounded by the client's timeout plus `grace`.
    pub fn stop_container(&self, id: &str, grace: Duration) -> Result<(), CriError> {
        let request = proto::StopContainerRequest {
            container_id: id.to_owned(),
            timeout: grace.as_secs() as i64,
        };
        let budget = self.timeout + grace;
        let call = async move {
            let mut service = self.service.clone();
            tokio::time::timeout(budget, service.stop_container(request)).await
        };
        match self.runtime.block_on(call) {
            Err(_) => Err(CriError::Timeout {
                call: "StopContainer",
                timeout: budget,
            }),
            Ok(Err(status)) => Err(CriError::Status {
                call: "StopContainer",
                code: status.code(),
                message: status.message().to_owned(),
            }),
            Ok(Ok(_)) => Ok(()),
        }
    }

    pub fn remove_container(&self, id: &str) -> Result<(), CriError> {
        let request = proto::RemoveContainerRequest {
            container_id: id.to_owned(),
        };
        self.call("RemoveContainer", |mut s| async move {
            s.remove_container(request).await
        })
        .map(drop)
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let request = proto::StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.call("StopPodSandbox", |mut s| async move {
            s.stop_pod_sandbox(request).await
        })
        .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let request = proto::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.call("RemovePodSandbox", |mut s| async move {
            s.remove_pod_sandbox(request).await
        })
        .map(drop)
    }

    /// Makes the runtime reopen the container's log file, as the kubelet does after
    /// renaming it (`0.log` → `0.log.<timestamp>`).
    pub fn reopen_container_log(&self, id: &str) -> Result<(), CriError> {
        let request = proto::ReopenContainerLogRequest {
            container_id: id.to_owned(),
        };
        self.call("ReopenContainerLog", |mut s| async move {
            s.reopen_container_log(request).await
        })
        .map(drop)
    }
}

/// `unix:///x.sock` or `/x.sock` → `/x.sock`.
pub(crate) fn socket_path(endpoint: &str) -> Result<PathBuf, CriError> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') {
        return Err(CriError::Endpoint(endpoint.to_owned()));
    }
    Ok(PathBuf::from(path))
}

/// What the verbose `ContainerStatus` answer adds: its `info["info"]` is a JSON
/// document whose shape is the runtime's own (containerd: `pid`, `sandboxID`,
/// `config` — the CRI `ContainerConfig` —, `runtimeSpec` — the OCI spec).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct VerboseInfo {
    pub pid: Option<u32>,
    pub sandbox_id: Option<String>,
    pub env: BTreeMap<String, String>,
    pub cgroup_path: Option<String>,
}

impl VerboseInfo {
    /// Lenient: a field that is missing or of another shape is left empty, never an
    /// error (runtimes differ and change).
    pub(crate) fn parse(json: &str) -> VerboseInfo {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Info {
            pid: Option<i64>,
            #[serde(rename = "sandboxID")]
            sandbox_id: Option<String>,
            config: Option<Config>,
            #[serde(rename = "runtimeSpec")]
            runtime_spec: Option<Spec>,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Config {
            envs: Option<Vec<KeyValue>>,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct KeyValue {
            key: String,
            value: String,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Spec {
            process: Option<Process>,
            linux: Option<Linux>,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Process {
            env: Vec<String>,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Linux {
            #[serde(rename = "cgroupsPath")]
            cgroups_path: Option<String>,
        }

        let info: Info = match serde_json::from_str(json) {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "unreadable verbose container info");
                return VerboseInfo::default();
            }
        };
        // The CRI config holds only what the pod spec set; the OCI spec (CRI-O has no
        // `config`) adds the image's defaults such as PATH.
        let env = match info.config.and_then(|c| c.envs) {
            Some(envs) => envs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            None => info
                .runtime_spec
                .as_ref()
                .and_then(|s| s.process.as_ref())
                .map(|p| {
                    p.env
                        .iter()
                        .filter_map(|e| e.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        VerboseInfo {
            pid: info
                .pid
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0),
            sandbox_id: info.sandbox_id.filter(|s| !s.is_empty()),
            env,
            cgroup_path: info
                .runtime_spec
                .and_then(|s| s.linux?.cgroups_path)
                .filter(|p| !p.is_empty()),
        }
    }
}

fn container_info(
    status: proto::ContainerStatus,
    sandbox_id: String,
    sandbox: Option<proto::PodSandboxStatus>,
    verbose: VerboseInfo,
) -> ContainerInfo {
    let (name, attempt) = status
        .metadata
        .map(|m| (m.name, m.attempt))
        .unwrap_or_default();
    let sandbox_meta = sandbox.as_ref().and_then(|s| s.metadata.as_ref());
    // The kubelet labels every container with its pod; the sandbox's metadata says
    // the same for runtimes (or callers) that do not.
    let label = |key: &str, from_meta: fn(&proto::PodSandboxMetadata) -> &String| {
        status
            .labels
            .get(key)
            .filter(|v| !v.is_empty())
            .or_else(|| sandbox_meta.map(from_meta).filter(|v| !v.is_empty()))
            .cloned()
    };
    let pod = match (
        label(LABEL_POD_NAMESPACE, |m| &m.namespace),
        label(LABEL_POD_NAME, |m| &m.name),
        label(LABEL_POD_UID, |m| &m.uid),
    ) {
        (Some(namespace), Some(pod), Some(pod_uid)) => Some(PodLogRef {
            namespace,
            pod,
            pod_uid,
            container: name.clone(),
            restart: attempt,
        }),
        _ => None,
    };
    let (labels, annotations) = match sandbox {
        Some(s) => (
            s.labels
                .into_iter()
                .filter(|(k, _)| !k.starts_with(KUBE_LABEL_PREFIX))
                .collect(),
            s.annotations.into_iter().collect(),
        ),
        None => Default::default(),
    };
    let state = ContainerState::from_cri(status.state);
    ContainerInfo {
        id: status.id,
        name,
        sandbox_id,
        pod,
        image: status.image.map(|i| i.image).unwrap_or_default(),
        image_ref: status.image_ref,
        labels,
        annotations,
        env: verbose.env,
        log_path: Some(PathBuf::from(status.log_path)).filter(|p| p.is_absolute()),
        // containerd keeps reporting the last pid of an exited container.
        pid: verbose
            .pid
            .filter(|_| state == ContainerState::Running || state == ContainerState::Created),
        cgroup_path: verbose.cgroup_path,
        state,
        restart_count: attempt,
    }
}

/// The container id a cgroup path names, from its last component: `<id>` (cgroupfs
/// driver), `cri-containerd-<id>.scope`, `crio-<id>.scope` or `docker-<id>.scope`
/// (systemd driver), or the OCI spec's systemd form `<slice>:cri-containerd:<id>`.
///
/// Only a 64-hex-digit id is an id: pod and QoS cgroups (`pod<uid>`, `besteffort`,
/// `kubepods-burstable.slice`) and CRI-O's `crio-conmon-<id>.scope` give `None`.
pub fn container_id_from_cgroup_path(path: &[u8]) -> Option<&str> {
    let path = path.strip_suffix(b"\n").unwrap_or(path);
    let path = path.strip_suffix(b"/").unwrap_or(path);
    let leaf = match memchr::memrchr(b'/', path) {
        Some(i) => &path[i + 1..],
        None => path,
    };
    let leaf = std::str::from_utf8(leaf).ok()?;
    let id = match leaf.rsplit_once(':') {
        // `<slice>:<prefix>:<id>`.
        Some((_, id)) => id,
        None => {
            let bare = leaf.strip_suffix(".scope").unwrap_or(leaf);
            ["cri-containerd-", "crio-", "docker-"]
                .iter()
                .find_map(|prefix| bare.strip_prefix(prefix))
                .unwrap_or(bare)
        }
    };
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests;

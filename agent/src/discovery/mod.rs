//! Discovery: what the node runs, so every line can say where it came from.
//!
//! - [`pod_path`]: the pod and container a CRI log file belongs to, from its path.
//! - [`pods`]: the [`PodCache`] of this node's pod metadata (labels, images, container
//!   ids, namespace labels), read by the pipeline without ever waiting on the API.
//! - [`watcher`]: the [`PodWatcher`] keeping that cache current from the Kubernetes
//!   API (list + watch of this node's pods and of namespaces).
//! - [`cri`]: a blocking client of the container runtime's CRI API ([`CriClient`]).
//! - [`registry`]: the [`ContainerRegistry`] of this node's containers by id, cgroup
//!   and log path, fed from CRI (or the pod log directory while CRI is down).

pub mod cri;
pub mod pod_path;
pub mod pods;
pub mod registry;
pub mod watcher;

pub use cri::{ContainerInfo, ContainerState, CriClient, CriError, container_id_from_cgroup_path};
pub use pod_path::PodLogRef;
pub use pods::{ContainerMeta, PodCache, PodMeta, Resource};
pub use registry::ContainerRegistry;
pub use watcher::{PodWatcher, WatcherConfig};

//! Discovery: what the node runs, so every line can say where it came from.
//!
//! - [`pod_path`]: the pod and container a CRI log file belongs to, from its path.
//! - [`pods`]: the [`PodCache`] of this node's pod metadata (labels, images, container
//!   ids, namespace labels), read by the pipeline without ever waiting on the API.
//! - [`watcher`]: the [`PodWatcher`] keeping that cache current from the Kubernetes
//!   API (list + watch of this node's pods and of namespaces).

pub mod pod_path;
pub mod pods;
pub mod watcher;

pub use pod_path::PodLogRef;
pub use pods::{ContainerMeta, PodCache, PodMeta, Resource};
pub use watcher::{PodWatcher, WatcherConfig};

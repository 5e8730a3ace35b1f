//! The running Kubernetes side of enrichment: the pod watcher feeding the cache the
//! [`Enricher`](super::Enricher) reads.

use std::time::{Duration, Instant};

use crate::config::KubernetesConfig;
use crate::discovery::{PodCache, PodWatcher, WatcherConfig};
use crate::metrics::catalogue::KUBE_API_UP;

/// How long a deleted pod's metadata stays readable: its containers' last lines are
/// often read after the API reported the deletion.
const DELETED_POD_GRACE: Duration = Duration::from_secs(300);

/// The pod watcher and the cache it feeds; stopping (or dropping) it ends the watch.
pub struct Kubernetes {
    watcher: Option<PodWatcher>,
    cache: PodCache,
}

impl Kubernetes {
    /// Starts watching this node's pods. Never fails: without a usable client (no
    /// service account, a malformed URL) the error is logged, `logtap_kube_api_up`
    /// stays 0, and lines carry what their log paths say.
    pub fn start(config: &KubernetesConfig) -> Kubernetes {
        let cache = PodCache::new(config.annotations.clone(), DELETED_POD_GRACE);
        metrics::gauge!(KUBE_API_UP).set(0.0);
        let watcher_config = WatcherConfig::new(config.node_name.clone(), config.api_url.clone());
        let watcher = match PodWatcher::spawn(watcher_config, cache.clone()) {
            Ok(watcher) => {
                tracing::info!(
                    node = %config.node_name,
                    api = config.api_url.as_deref().unwrap_or("inferred (kubeconfig or in-cluster)"),
                    "watching this node's pods for metadata"
                );
                Some(watcher)
            }
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "no Kubernetes client: lines get only the fields their log paths tell"
                );
                None
            }
        };
        Kubernetes { watcher, cache }
    }

    /// This node's pods as last seen from the API.
    pub fn cache(&self) -> &PodCache {
        &self.cache
    }

    /// Waits up to `max` for the first answer of the API (for one-shot runs, which
    /// read every file at once and cannot hold packages for long). Returns whether
    /// the API answered.
    pub fn wait_until_up(&self, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        while !self.cache.api_up() {
            if self.watcher.is_none() || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Ends the watch and waits for its thread.
    pub fn stop(self) {
        if let Some(watcher) = self.watcher {
            watcher.stop();
        }
    }
}

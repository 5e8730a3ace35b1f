//! Feeds the [`PodCache`] from the Kubernetes API: a list + watch of this node's pods
//! (field selector `spec.nodeName`) and of all namespaces (for their labels).
//!
//! The pipeline runs on plain threads, so the watcher brings its own current-thread
//! tokio runtime on a dedicated thread. Nothing else waits on it: the cache is read
//! from memory, and an unreachable API server only means the cache stops changing.
//!
//! # Failures
//!
//! A `410 Gone` (the server compacted history past our resource version) re-lists at
//! once; a watch the server ended resumes from the last resource version; every other
//! error waits an exponential, jittered backoff before the next attempt. Each error
//! counts in `logtap_kube_watch_errors_total{resource}`. An outage (a request that
//! fails, other than with `410`) sets `logtap_kube_api_up` to 0 and logs one warning;
//! the next successful list or established watch sets it back to 1 and logs that the
//! API is back. The cache keeps what it knew meanwhile.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::pin::pin;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher::Event;
use kube::{Api, Client, Resource as KubeResource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::pods::{PodCache, Resource};
use crate::metrics::catalogue::KUBE_WATCH_ERRORS_TOTAL;

/// How to reach the API server and what to watch.
#[derive(Clone, Debug)]
pub struct WatcherConfig {
    /// This node's name: only pods scheduled here are watched.
    pub node_name: String,
    /// The API server's URL (plain `http://` for tests); `None` infers the
    /// configuration (kubeconfig, else the in-cluster service account).
    pub api_url: Option<String>,
    /// First retry delay after an error; doubles (with jitter) up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl WatcherConfig {
    /// kube's default backoff (800 ms doubling to 30 s) for `node_name`.
    pub fn new(node_name: impl Into<String>, api_url: Option<String>) -> WatcherConfig {
        WatcherConfig {
            node_name: node_name.into(),
            api_url,
            initial_backoff: Duration::from_millis(800),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The running watcher; stopping (or dropping) it ends its thread.
pub struct PodWatcher {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl PodWatcher {
    /// Starts watching on a new thread, feeding `cache`.
    ///
    /// Fails only when no client can be configured (a malformed URL, no kubeconfig
    /// and not in a cluster); an API server that does not answer is not an error here
    /// but an outage the watcher rides out.
    pub fn spawn(config: WatcherConfig, cache: PodCache) -> anyhow::Result<PodWatcher> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime for the Kubernetes watcher")?;
        let client = runtime.block_on(client(&config))?;
        let (shutdown, shutdown_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("logtap-kube".into())
            .spawn(move || {
                // Never "waiting": its watches may wait on the API as long as they like
                // (an API outage is not the agent's stall); only a panic fails health.
                let beat = crate::metrics::health::global().register("discovery-kube");
                runtime.block_on(run(config, client, cache, shutdown_rx));
                beat.stop();
            })
            .context("spawning the Kubernetes watcher thread")?;
        Ok(PodWatcher {
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Stops the watches and waits for the thread to end.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the Kubernetes watcher thread panicked");
        }
    }
}

impl Drop for PodWatcher {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

pub(crate) async fn client(config: &WatcherConfig) -> anyhow::Result<Client> {
    let kube_config = match &config.api_url {
        Some(url) => kube::Config::new(
            url.parse()
                .with_context(|| format!("Kubernetes API URL {url:?}"))?,
        ),
        None => kube::Config::infer()
            .await
            .context("Kubernetes client configuration (kubeconfig or in-cluster)")?,
    };
    Client::try_from(kube_config).context("Kubernetes client")
}

async fn run(
    config: WatcherConfig,
    client: Client,
    cache: PodCache,
    shutdown: oneshot::Receiver<()>,
) {
    let backoff = || Backoff::new(config.initial_backoff, config.max_backoff);

    let pods = {
        let cache = cache.clone();
        let mut listed: Option<HashSet<String>> = None;
        list_watch(
            Api::<Pod>::all(client.clone()),
            Some(format!("spec.nodeName={}", config.node_name)),
            backoff(),
            Resource::Pods,
            {
                let cache = cache.clone();
                move |up| cache.set_up(Resource::Pods, up)
            },
            move |event| match event {
                Event::Init => listed = Some(HashSet::new()),
                Event::InitApply(pod) => {
                    if let (Some(listed), Some(uid)) = (listed.as_mut(), pod.uid()) {
                        listed.insert(uid);
                    }
                    cache.apply_pod(&pod);
                }
                Event::InitDone => {
                    if let Some(listed) = listed.take() {
                        cache.retain_listed_pods(&listed, Instant::now());
                    }
                }
                Event::Apply(pod) => cache.apply_pod(&pod),
                Event::Delete(pod) => {
                    if let Some(uid) = pod.uid() {
                        cache.delete_pod(&uid, Instant::now());
                    }
                }
            },
        )
    };

    let namespaces = {
        let cache = cache.clone();
        let mut listed: Option<HashSet<String>> = None;
        list_watch(
            Api::<Namespace>::all(client),
            None,
            backoff(),
            Resource::Namespaces,
            {
                let cache = cache.clone();
                move |up| cache.set_up(Resource::Namespaces, up)
            },
            move |event| match event {
                Event::Init => listed = Some(HashSet::new()),
                Event::InitApply(ns) => {
                    if let Some(listed) = listed.as_mut() {
                        listed.insert(ns.name_any());
                    }
                    cache.apply_namespace(&ns.name_any(), labels(&ns));
                }
                Event::InitDone => {
                    if let Some(listed) = listed.take() {
                        cache.retain_listed_namespaces(&listed);
                    }
                }
                Event::Apply(ns) => cache.apply_namespace(&ns.name_any(), labels(&ns)),
                Event::Delete(ns) => cache.delete_namespace(&ns.name_any()),
            },
        )
    };

    let purge = async {
        // Often enough that a pod outlives its grace period by at most half of it.
        let every =
            (cache.deleted_grace() / 2).clamp(Duration::from_millis(10), Duration::from_secs(10));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            cache.purge_deleted(Instant::now());
        }
    };

    tokio::select! {
        _ = shutdown => {}
        _ = async { tokio::join!(pods, namespaces, purge) } => {}
    }
}

fn labels(ns: &Namespace) -> BTreeMap<String, String> {
    ns.metadata.labels.clone().unwrap_or_default()
}

/// Runs list + watch of one resource for ever, handing events to `on_event` in the
/// shape of kube's [`watcher`](kube::runtime::watcher()) (`Init`, `InitApply`…,
/// `InitDone`, then `Apply`/`Delete`), and keeping the health state.
///
/// Written by hand rather than with kube's watcher because health needs to know when
/// a watch was *established*: a healthy watch of an idle resource delivers no event
/// for minutes, and only the answer to the watch request says the API is back.
pub(crate) async fn list_watch<K>(
    api: Api<K>,
    field_selector: Option<String>,
    mut backoff: Backoff,
    resource: Resource,
    set_up: impl Fn(bool),
    mut on_event: impl FnMut(Event<K>),
) where
    K: KubeResource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut list_params = ListParams::default().limit(500);
    let mut watch_params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
    if let Some(selector) = &field_selector {
        list_params = list_params.fields(selector);
        watch_params = watch_params.fields(selector);
    }
    let mut health = Health::Unknown;
    'relist: loop {
        // List (in pages), then watch from the list's resource version.
        on_event(Event::Init);
        let mut page = list_params.clone();
        let mut resource_version = loop {
            match api.list(&page).await {
                Ok(list) => {
                    health.answered(resource, &set_up);
                    for object in list.items {
                        on_event(Event::InitApply(object));
                    }
                    match list.metadata.continue_.filter(|c| !c.is_empty()) {
                        Some(token) => page = list_params.clone().continue_token(&token),
                        None => break list.metadata.resource_version.unwrap_or_default(),
                    }
                }
                Err(error) => {
                    health.failed(resource, &set_up, &error, false);
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue 'relist;
                }
            }
        };
        on_event(Event::InitDone);

        loop {
            let stream = match api.watch(&watch_params, &resource_version).await {
                Ok(stream) => stream,
                Err(error) => {
                    let gone = matches!(&error, kube::Error::Api(s) if s.code == 410);
                    health.failed(resource, &set_up, &error, gone);
                    if gone {
                        continue 'relist;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            health.answered(resource, &set_up);
            backoff.reset();
            let mut stream = pin!(stream);
            loop {
                // The server ends a watch after its timeout; silence well past it means
                // a connection that died without a FIN.
                let next = tokio::time::timeout(WATCH_IDLE_LIMIT, stream.next()).await;
                let event = match next {
                    Ok(Some(Ok(event))) => event,
                    // Ended by the server: resume from where we are.
                    Ok(None) => break,
                    Err(_elapsed) => {
                        tracing::debug!(
                            resource = resource.as_str(),
                            "watch idle too long, reconnecting"
                        );
                        break;
                    }
                    // A broken stream is not yet an outage (proxies cut long
                    // connections); the next watch request tells.
                    Ok(Some(Err(error))) => {
                        health.broken(resource, &error);
                        tokio::time::sleep(backoff.next_delay()).await;
                        break;
                    }
                };
                match event {
                    WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                        resource_version = object.resource_version().unwrap_or(resource_version);
                        on_event(Event::Apply(object));
                    }
                    WatchEvent::Deleted(object) => {
                        resource_version = object.resource_version().unwrap_or(resource_version);
                        on_event(Event::Delete(object));
                    }
                    WatchEvent::Bookmark(bookmark) => {
                        resource_version = bookmark.metadata.resource_version;
                    }
                    WatchEvent::Error(status) => {
                        let gone = status.code == 410;
                        health.failed(resource, &set_up, &status, gone);
                        if gone {
                            continue 'relist;
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                        break;
                    }
                }
            }
        }
    }
}

/// `timeoutSeconds` of a watch request, as kube's watcher uses.
const WATCH_TIMEOUT_SECS: u32 = 290;
const WATCH_IDLE_LIMIT: Duration = Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 10);

/// Exponential backoff with jitter: each delay is drawn from the upper half of a
/// window that doubles up to `max`, so thousands of agents that lost the API server
/// at the same moment do not all come back at the same moment.
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    window: Duration,
    rng: std::hash::RandomState,
    draws: u64,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            window: initial,
            rng: std::hash::RandomState::new(),
            draws: 0,
        }
    }

    fn reset(&mut self) {
        self.window = self.initial;
    }

    fn next_delay(&mut self) -> Duration {
        use std::hash::BuildHasher;
        self.draws += 1;
        let fraction = (self.rng.hash_one(self.draws) % 1024) as f64 / 1024.0;
        let delay = self.window.mul_f64(0.5 + fraction / 2.0);
        self.window = (self.window * 2).min(self.max);
        delay
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Health {
    Unknown,
    Up,
    Down,
}

impl Health {
    fn answered(&mut self, resource: Resource, set_up: &dyn Fn(bool)) {
        if *self == Health::Up {
            return;
        }
        if *self == Health::Down {
            tracing::info!(
                resource = resource.as_str(),
                "Kubernetes API reachable again"
            );
        }
        *self = Health::Up;
        set_up(true);
    }

    /// An error of a request: an outage, unless it is `410 Gone` (history compacted
    /// past our resource version), after which the caller re-lists at once.
    fn failed(
        &mut self,
        resource: Resource,
        set_up: &dyn Fn(bool),
        error: &dyn std::fmt::Display,
        gone: bool,
    ) {
        metrics::counter!(KUBE_WATCH_ERRORS_TOTAL, "resource" => resource.as_str()).increment(1);
        if gone {
            tracing::debug!(resource = resource.as_str(), %error, "watch expired, re-listing");
            return;
        }
        if *self == Health::Down {
            tracing::debug!(resource = resource.as_str(), %error, "Kubernetes API still unavailable");
            return;
        }
        tracing::warn!(
            resource = resource.as_str(),
            %error,
            "Kubernetes API unavailable: pod metadata may be stale or missing until it is back; \
             retrying with backoff"
        );
        *self = Health::Down;
        set_up(false);
    }

    /// A watch stream that broke after it was established.
    fn broken(&self, resource: Resource, error: &dyn std::fmt::Display) {
        metrics::counter!(KUBE_WATCH_ERRORS_TOTAL, "resource" => resource.as_str()).increment(1);
        tracing::debug!(resource = resource.as_str(), %error, "watch stream broke, re-watching");
    }
}

#[cfg(test)]
#[allow(
    dead_code,
    reason = "the fake serves the end-to-end tests' LogCollection objects too"
)]
pub(crate) mod fake_api;
#[cfg(test)]
mod tests;

//! Kubernetes events (`events.k8s.io/v1`) as records of the stream source
//! `k8s://events`, shipped by one agent per cluster: the holder of a
//! `coordination.k8s.io/v1` Lease (see [`lease`]).
//!
//! Three threads: the **lease** thread renews or acquires the Lease every third of its
//! duration; while this agent leads, a **watch** thread lists every namespace's Events
//! and watches from the list's resource version (re-listing on `410 Gone`, through
//! `discovery::watcher::list_watch`), rendering each into one JSON line ([`render`]);
//! the **shipping** thread drives a pipeline of its own (one source config, parsed as
//! JSON, routed to `kubernetes_events.sink`), like `selfmon`'s.
//!
//! # Handover and the resume point
//!
//! The source's acknowledgements are tracked in memory
//! ([`Registry::track`](crate::checkpoint::Registry::track)); the
//! shipping thread keeps each event's end offset and last-seen time
//! ([`ResumeTracker`]) and publishes the newest time `P` such that every shipped event
//! older than `P` is durable in the sink. Each renewal writes `P` into the Lease's
//! `logtap.dev/events-resume` annotation. A new leader lists and skips the events last
//! seen before the annotation's point, shipping the rest. So:
//!
//! - nothing a sink had not made durable is skipped (`P` never passes an
//!   unacknowledged event);
//! - what repeats is bounded: the events last seen at or after the point of the last
//!   renewal — those shipped within one renew interval (a third of the lease) plus
//!   the sink's latency before the old leader went away.
//!
//! # What is not guaranteed
//!
//! - An event that reaches the API with a last-seen time already older than the
//!   current point (a reporter lagging by more than a renew interval plus the sink
//!   latency) and that the old leader had not seen is skipped by the next leader.
//! - Events that happen and expire (the API keeps them an hour by default) while no
//!   agent leads are not seen.
//! - A leader steps down once it could not renew for five sixths of the lease
//!   duration, before another agent can take over; agents' clocks must agree to
//!   within a sixth of it, or two may ship at once for a while (duplicates, no loss).

pub mod lease;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use crossbeam_channel::{Receiver, SendTimeoutError, Sender};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher::Event;
use kube::{Api, Client};

use crate::checkpoint::SharedRegistry;
use crate::config::{Config, KubernetesEventsConfig, SourceConfig};
use crate::discovery::Resource;
use crate::discovery::watcher::{Backoff, WatcherConfig, client, list_watch};
use crate::frame::Stream;
use crate::metrics::catalogue::{
    EVENTS_LEADER, EVENTS_LEASE_TRANSITIONS_TOTAL, EVENTS_SHIPPED_TOTAL,
};
use crate::pipeline::{EndReason, Input, Opening, Pipeline};
use crate::source::{SourceId, SourceInfo, SourceKind};
use lease::{LeaseClient, Outcome};

/// The path and config name of the events' records.
pub const EVENTS_SOURCE: &str = "k8s://events";

/// Rendered events waiting for the shipping thread at most (the watch waits beyond).
const QUEUE_EVENTS: usize = 10_000;

/// One rendered event: its JSON line and its last-seen time.
type Rendered = (Bytes, Option<Timestamp>);

/// The config the events pipeline is built from: `config` with only the events source.
pub fn pipeline_config(config: &Config, events: &KubernetesEventsConfig) -> Config {
    config.with_only_source(SourceConfig::json_lines(EVENTS_SOURCE, &events.sink))
}

/// The newest event time every older shipped event is durable before (see the
/// module's docs). Invariant: `pending` holds, in shipping order, the end offset and
/// time of every shipped event not yet acknowledged; `acked_max` is the newest time
/// of an acknowledged one.
#[derive(Debug, Default)]
pub struct ResumeTracker {
    pending: VecDeque<(u64, Option<Timestamp>)>,
    acked_max: Option<Timestamp>,
}

impl ResumeTracker {
    /// An event whose bytes end at `end_offset` was handed to the pipeline.
    pub fn shipped(&mut self, end_offset: u64, time: Option<Timestamp>) {
        self.pending.push_back((end_offset, time));
    }

    /// Every byte before `offset` is acknowledged.
    pub fn acked(&mut self, offset: u64) {
        while let Some(&(end, time)) = self.pending.front() {
            if end > offset {
                break;
            }
            self.pending.pop_front();
            self.acked_max = self.acked_max.max(time);
        }
    }

    /// The point to resume from: at most the newest acknowledged time, and never past
    /// an unacknowledged event; `None` before anything with a time is acknowledged.
    pub fn point(&self) -> Option<Timestamp> {
        let acked = self.acked_max?;
        let oldest_pending = self.pending.iter().filter_map(|(_, t)| *t).min();
        Some(oldest_pending.map_or(acked, |p| p.min(acked)))
    }
}

/// When an event was last seen: its series' last observation, else its time, else
/// the deprecated last timestamp, else its creation.
pub fn last_seen(event: &KubeEvent) -> Option<Timestamp> {
    event
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or(event.event_time.as_ref().map(|t| t.0))
        .or(event.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or(event.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// One event as a JSON line: its note as `message`, `reason`, `type`, the object it
/// is about as `regarding.kind|namespace|name|uid`, `reporting_controller`,
/// `series.count`, its last-seen `time`, `uid`, `namespace` and `name`. Absent parts
/// are absent members.
pub fn render(event: &KubeEvent) -> Rendered {
    let mut map = serde_json::Map::new();
    let mut put = |key: &str, value: Option<&str>| {
        if let Some(v) = value {
            map.insert(key.into(), v.into());
        }
    };
    put("message", event.note.as_deref());
    put("reason", event.reason.as_deref());
    put("type", event.type_.as_deref());
    put("action", event.action.as_deref());
    if let Some(r) = &event.regarding {
        put("regarding.kind", r.kind.as_deref());
        put("regarding.namespace", r.namespace.as_deref());
        put("regarding.name", r.name.as_deref());
        put("regarding.uid", r.uid.as_deref());
    }
    put(
        "reporting_controller",
        event.reporting_controller.as_deref(),
    );
    put("uid", event.metadata.uid.as_deref());
    put("namespace", event.metadata.namespace.as_deref());
    put("name", event.metadata.name.as_deref());
    let time = last_seen(event);
    if let Some(t) = time {
        map.insert("time".into(), t.to_string().into());
    }
    if let Some(s) = &event.series {
        map.insert("series.count".into(), s.count.into());
    }
    let mut line = serde_json::to_vec(&map).unwrap_or_default();
    line.push(b'\n');
    (Bytes::from(line), time)
}

/// The running events input; [`EventShipper::stop`] ends it.
pub struct EventShipper {
    stop: Arc<AtomicBool>,
    lease_thread: Option<JoinHandle<()>>,
    ship_thread: Option<JoinHandle<()>>,
}

impl EventShipper {
    /// Starts the lease and shipping threads; `pipeline` is built from
    /// [`pipeline_config`]. Fails only when no Kubernetes client can be configured.
    pub fn start(
        config: &KubernetesEventsConfig,
        pipeline: Pipeline,
        registry: SharedRegistry,
    ) -> anyhow::Result<EventShipper> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime for Kubernetes events")?;
        let watcher = WatcherConfig::new("", config.api_url.clone());
        let client = runtime.block_on(client(&watcher))?;
        let stop = Arc::new(AtomicBool::new(false));
        let point = Arc::new(Mutex::new(None));
        let (sender, received) = crossbeam_channel::bounded(QUEUE_EVENTS);
        let ship_thread = {
            let (stop, point) = (stop.clone(), point.clone());
            std::thread::Builder::new()
                .name("logtap-events-ship".into())
                .spawn(move || ship(pipeline, registry, received, &point, &stop))?
        };
        let leader = Leader {
            config: config.clone(),
            client,
            sender,
            point,
            stop: stop.clone(),
            watcher,
        };
        let lease_thread = std::thread::Builder::new()
            .name("logtap-events-lease".into())
            .spawn(move || runtime.block_on(leader.run()))?;
        Ok(EventShipper {
            stop,
            lease_thread: Some(lease_thread),
            ship_thread: Some(ship_thread),
        })
    }

    /// Stops watching, releases the Lease when this agent holds it, ships what is
    /// queued, ends the source and seals its packages (before the sinks stop).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in [self.lease_thread.take(), self.ship_thread.take()]
            .into_iter()
            .flatten()
        {
            if thread.join().is_err() {
                tracing::error!("a Kubernetes events thread panicked");
            }
        }
    }
}

/// The shipping thread: rendered events into `pipeline`, and the resume point out.
fn ship(
    mut pipeline: Pipeline,
    registry: SharedRegistry,
    events: Receiver<Rendered>,
    point: &Mutex<Option<Timestamp>>,
    stop: &AtomicBool,
) {
    let info = Arc::new(SourceInfo {
        id: SourceId::new_unique(0, u64::from(std::process::id())),
        kind: SourceKind::KubernetesEvents,
        path: EVENTS_SOURCE.into(),
        config_name: Arc::from(EVENTS_SOURCE),
    });
    let id = info.id;
    registry.track(id);
    pipeline.opened(Opening::stream(info, 0, 0, Stream::Stdout, None));
    let mut offset = 0u64;
    let mut tracker = ResumeTracker::default();
    let mut take =
        |pipeline: &mut Pipeline, tracker: &mut ResumeTracker, (line, time): Rendered| {
            let len = line.len() as u64;
            pipeline.data(id, offset, line, None);
            offset += len;
            tracker.shipped(offset, time);
            metrics::counter!(EVENTS_SHIPPED_TOTAL).increment(1);
        };
    while !stop.load(Ordering::Relaxed) {
        if let Ok(event) = events.recv_timeout(Duration::from_millis(100)) {
            take(&mut pipeline, &mut tracker, event);
            while let Ok(event) = events.try_recv() {
                take(&mut pipeline, &mut tracker, event);
            }
        }
        pipeline.tick(Instant::now());
        if let Some(acked) = registry.acked_offset(id) {
            tracker.acked(acked);
        }
        *point.lock().unwrap_or_else(|e| e.into_inner()) = tracker.point();
    }
    while let Ok(event) = events.try_recv() {
        take(&mut pipeline, &mut tracker, event);
    }
    pipeline.ended(id, EndReason::Shutdown);
    pipeline.seal_all();
    registry.end_branch(id);
}

/// The lease thread's state.
struct Leader {
    config: KubernetesEventsConfig,
    client: Client,
    sender: Sender<Rendered>,
    /// The shipping thread's resume point, written into the Lease at each renewal.
    point: Arc<Mutex<Option<Timestamp>>>,
    stop: Arc<AtomicBool>,
    watcher: WatcherConfig,
}

impl Leader {
    /// Acquires or renews every third of the lease duration, starting the watch when
    /// this agent becomes leader and stopping it when it is not (or may no longer be).
    async fn run(self) {
        let duration = self.config.lease_duration;
        let every = duration / 3;
        let lease = LeaseClient {
            api: Api::namespaced(self.client.clone(), &self.config.lease_namespace),
            name: self.config.lease_name.clone(),
            identity: self.config.identity.clone(),
            duration_seconds: i32::try_from(duration.as_secs()).unwrap_or(i32::MAX),
        };
        metrics::gauge!(EVENTS_LEADER).set(0.0);
        let mut watch: Option<WatchThread> = None;
        let mut renewed = Instant::now();
        let mut failing = false;
        while !self.stop.load(Ordering::Relaxed) {
            let point = *self.point.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded, so a hanging API cannot keep a leader past its step-down.
            let attempt = tokio::time::timeout(every / 2, lease.attempt(point)).await;
            match attempt {
                Ok(Ok(Outcome::Leading { acquired, resume })) => {
                    renewed = Instant::now();
                    failing = false;
                    if watch.is_none() {
                        tracing::info!(identity = %self.config.identity, acquired, resume = ?resume, "leading: shipping Kubernetes events");
                        metrics::counter!(EVENTS_LEASE_TRANSITIONS_TOTAL).increment(1);
                        metrics::gauge!(EVENTS_LEADER).set(1.0);
                        watch = self.start_watch(resume);
                    }
                }
                Ok(Ok(Outcome::StandBy)) => {
                    failing = false;
                    if let Some(w) = watch.take() {
                        tracing::warn!("another agent holds the events Lease: standing by");
                        w.stop();
                        metrics::gauge!(EVENTS_LEADER).set(0.0);
                    }
                }
                failed => {
                    if !failing {
                        let error = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".into(),
                        };
                        tracing::warn!(error, "cannot reach the events Lease");
                        failing = true;
                    }
                    // The next attempt ends at most 1.5 intervals from now: step down
                    // while the Lease surely still holds.
                    if watch.is_some() && renewed.elapsed() + every * 3 / 2 >= duration {
                        tracing::warn!("events Lease not renewed in time: stepping down");
                        if let Some(w) = watch.take() {
                            w.stop();
                        }
                        metrics::gauge!(EVENTS_LEADER).set(0.0);
                    }
                }
            }
            let until = Instant::now() + every;
            while Instant::now() < until && !self.stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if let Some(w) = watch {
            w.stop();
            metrics::gauge!(EVENTS_LEADER).set(0.0);
            // The next leader need not wait for the Lease to expire. Events still
            // queued for the sink are past the point written: they may repeat, never
            // be skipped.
            let point = *self.point.lock().unwrap_or_else(|e| e.into_inner());
            match tokio::time::timeout(every / 2, lease.release(point)).await {
                Ok(Ok(true)) => tracing::info!("released the events Lease"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot release the events Lease: it expires")
                }
                Err(_) => tracing::warn!("releasing the events Lease timed out: it expires"),
            }
        }
        metrics::gauge!(EVENTS_LEADER).set(0.0);
    }

    fn start_watch(&self, resume: Option<Timestamp>) -> Option<WatchThread> {
        let leading = Arc::new(AtomicBool::new(true));
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let api: Api<KubeEvent> = Api::all(self.client.clone());
        let backoff = Backoff::new(self.watcher.initial_backoff, self.watcher.max_backoff);
        let sender = self.sender.clone();
        let flag = leading.clone();
        let spawned = std::thread::Builder::new()
            .name("logtap-events-watch".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "tokio runtime for the events watch");
                        return;
                    }
                };
                let mut filter = EventFilter::new(resume);
                let watch = list_watch(
                    api,
                    None,
                    backoff,
                    Resource::Events,
                    |_| {},
                    |event| {
                        if let Some(rendered) = filter.apply(event) {
                            send(&sender, rendered, &flag);
                        }
                    },
                );
                runtime.block_on(async {
                    tokio::select! {
                        _ = watch => {}
                        _ = cancelled => {}
                    }
                });
            });
        match spawned {
            Ok(thread) => Some(WatchThread {
                leading,
                cancel,
                thread,
            }),
            Err(e) => {
                tracing::error!(error = %e, "starting the events watch");
                None
            }
        }
    }
}

/// Hands `rendered` to the shipping thread, waiting while its queue is full, unless
/// this agent stopped leading meanwhile (the next leader ships it).
fn send(sender: &Sender<Rendered>, mut rendered: Rendered, leading: &AtomicBool) {
    while leading.load(Ordering::Relaxed) {
        match sender.send_timeout(rendered, Duration::from_millis(100)) {
            Ok(()) | Err(SendTimeoutError::Disconnected(_)) => return,
            Err(SendTimeoutError::Timeout(r)) => rendered = r,
        }
    }
}

/// The watch of one leadership term.
struct WatchThread {
    leading: Arc<AtomicBool>,
    cancel: tokio::sync::oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl WatchThread {
    fn stop(self) {
        self.leading.store(false, Ordering::Relaxed);
        let _ = self.cancel.send(());
        if self.thread.join().is_err() {
            tracing::error!("the events watch thread panicked");
        }
    }
}

/// Which listed and watched events are shipped. Invariant: `seen` maps the uid of
/// every event of the last list (and watched since) to the resource version shipped
/// or skipped, so a re-list (after `410 Gone`) ships only what changed.
pub struct EventFilter {
    resume: Option<Timestamp>,
    seen: HashMap<String, String>,
    listing: Option<HashMap<String, String>>,
}

impl EventFilter {
    pub fn new(resume: Option<Timestamp>) -> EventFilter {
        EventFilter {
            resume,
            seen: HashMap::new(),
            listing: None,
        }
    }

    /// The records `event` ships (none or one).
    pub fn apply(&mut self, event: Event<KubeEvent>) -> Option<Rendered> {
        match event {
            Event::Init => {
                self.listing = Some(HashMap::new());
                None
            }
            Event::InitApply(e) => {
                let key = (e.metadata.uid.clone(), e.metadata.resource_version.clone());
                let repeat = matches!(&key, (Some(uid), rv) if self.seen.get(uid) == rv.as_ref());
                if let (Some(listing), (Some(uid), Some(rv))) = (self.listing.as_mut(), key) {
                    listing.insert(uid, rv);
                }
                let before_resume = self
                    .resume
                    .is_some_and(|r| last_seen(&e).is_some_and(|t| t < r));
                (!repeat && !before_resume).then(|| render(&e))
            }
            Event::InitDone => {
                if let Some(listing) = self.listing.take() {
                    self.seen = listing;
                }
                None
            }
            Event::Apply(e) => {
                if let (Some(uid), Some(rv)) = (&e.metadata.uid, &e.metadata.resource_version) {
                    self.seen.insert(uid.clone(), rv.clone());
                }
                Some(render(&e))
            }
            Event::Delete(e) => {
                if let Some(uid) = &e.metadata.uid {
                    self.seen.remove(uid);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;

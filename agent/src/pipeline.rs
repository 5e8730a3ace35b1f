//! Wiring of the stages: source thread → frame → parse → batch → route → sink workers
//! → acknowledgements → checkpoint thread.
//!
//! Threads: the file source runs on the calling thread and does framing, parsing and
//! batching inline ([`Pipeline`] is its [`SourceEvents`]); each sink has a worker
//! thread behind a bounded queue; one thread persists checkpoints. Nothing here is
//! async: every stage does blocking I/O or pure CPU work, and the thread split keeps
//! a slow sink from doing anything but slowing the readers down (backpressure).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;

use crate::batch::BatchBuilder;
use crate::capture::CaptureThread;
use crate::checkpoint::{Registry, SharedRegistry};
use crate::config::{Config, Format};
use crate::discovery::PodLogRef;
use crate::discovery::{ContainerRegistry, CriClient};
use crate::enrich::{Enricher, Kubernetes, SourceEnrichment};
use crate::frame::{Framer, Line, LineFlags, Stream};
use crate::parse::{Parser, Utf8Checked};
use crate::route::Router;
use crate::route::select::{ContainerFactsSource, NodeFacts, RuntimeFacts};
use crate::sink::worker::SinkWorker;
use crate::source::file::container::{self, ContainerList, ContainerView, RegistryContainers};
use crate::source::file::{
    EndReason, FileIdentity, FileSource, FileSourceOptions, SourceEvents, StopMode,
};
use crate::source::{SourceId, SourceInfo};

/// Packages a sink's queue holds before the readers block. Each package pins the read
/// chunks its records point into, so this bounds memory (8 × ~1 MiB packages keeps
/// the agent near 32 MiB RSS at full speed; more queue buys no throughput).
const SINK_QUEUE_PACKAGES: usize = 8;
/// Upper bound on how long written packages wait for their flush (and acknowledgement).
const SINK_FLUSH_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Read every matched file to EOF once, ship everything, checkpoint, and return.
    pub oneshot: bool,
}

/// What a run did, for the CLI's closing line and for tests.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    pub lines: u64,
    pub bytes: u64,
    pub packages: u64,
    pub read_backend: &'static str,
}

/// Runs the agent until `shutdown` is set (or, in one-shot mode, until every file was
/// read and everything read was acknowledged and checkpointed).
///
/// With `LogCollection` objects (see [`crate::collections`]), a changed object
/// applies in-process: the file source and the pipeline stop (reading out what is
/// ready, shipping every complete record), every package in flight is acknowledged
/// and the checkpoints are persisted, then both are rebuilt from the new effective
/// config and resume from the checkpoints. The registry, the checkpointer, the sink
/// workers of unchanged sinks, the Kubernetes watchers and the metrics endpoint live
/// on across rebuilds.
pub fn run(
    config: Config,
    options: RunOptions,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<RunSummary> {
    let registry: SharedRegistry = Arc::new(
        Registry::open(&config.data_dir.join("checkpoints")).context("opening checkpoints")?,
    );
    let health = crate::metrics::health::global();
    health.set_stall_timeout(config.stall_timeout);
    let checkpointer = spawn_checkpointer(
        registry.clone(),
        config.checkpoint_interval,
        shutdown.clone(),
    )?;
    let kubernetes = start_kubernetes(&config, &options);
    let containers = start_container_registry(&config, &options, &shutdown);
    let mut capture: Option<CaptureThread> = None;
    let mut capture_tried = false;
    let collections = (config.collections.enabled && !options.oneshot).then(|| {
        let c = crate::collections::Collections::start(&config);
        c.wait_listed(Duration::from_secs(2));
        c
    });
    let facts: Arc<dyn ContainerFactsSource> = Arc::new(NodeFacts {
        runtime: containers
            .as_ref()
            .map(|(r, _)| Arc::new(r.clone()) as Arc<dyn RuntimeFacts>),
        pods: kubernetes.as_ref().map(|k| k.cache().clone()),
    });
    let container_list = containers.as_ref().map(|(r, _)| {
        Arc::new(RegistryContainers {
            registry: r.clone(),
            pods: kubernetes.as_ref().map(|k| k.cache().clone()),
        }) as Arc<dyn ContainerList>
    });
    let container_files_wanted = Arc::new(AtomicBool::new(false));
    let container_poller = match (&containers, options.oneshot) {
        (Some((r, _)), false) => {
            start_container_poller(r.clone(), container_files_wanted.clone(), shutdown.clone())
        }
        _ => None,
    };
    let enricher = enricher_of(&config, kubernetes.as_ref(), containers.as_ref());
    let mut sinks = Sinks::default();
    let mut summary = RunSummary::default();
    let mut effective = match &collections {
        Some(c) => c.effective(&config),
        None => config.clone(),
    };
    // This thread reads the files; its loop ticks the pipeline every `TICK` whatever
    // there is to read, so it always has work in the health registry's sense.
    let source_beat = health.register("source");
    source_beat.waiting(true);
    let result = loop {
        let seen = collections.as_ref().map(|c| c.generation());
        if let Err(e) = sinks.reconcile(&effective, &registry, &shutdown) {
            break Err(e);
        }
        // Capture runs across config changes: the containers it ships are those of the
        // file config's capture source, whose index `effective` keeps. Its pipeline is
        // built from the file config alone, so its router holds the queues of the file
        // config's sinks only: those are never stopped by a rebuild (a collection cannot
        // replace one), while a collection's sink is, and its worker ends only once
        // every sender of its queue is gone. A collection that selects a captured
        // container reads its CRI log through the file source (`Claims`).
        if !capture_tried
            && !options.oneshot
            && let Some(capture_config) = &config.capture
        {
            capture_tried = true;
            let mut pipeline = Pipeline::new(
                &config,
                Router::new(&config.sources, &sinks.queues),
                registry.clone(),
            );
            if let Some(e) = &enricher {
                pipeline.set_enricher(e.clone());
            }
            let resolver = match &containers {
                Some((r, _)) => r.clone(),
                None => ContainerRegistry::new(None, config.collections.pod_logs.clone()),
            };
            capture = CaptureThread::start(
                capture_config,
                pipeline,
                registry.clone(),
                resolver,
                shutdown.clone(),
            );
        }
        container_files_wanted.store(
            effective
                .sources
                .iter()
                .any(|s| !s.container_paths.is_empty()),
            Ordering::Relaxed,
        );
        let mut source = match FileSource::new(
            &effective.sources,
            FileSourceOptions {
                rescan_interval: effective.rescan_interval,
                rotate_wait: effective.rotate_wait,
                io_uring: effective.io_uring,
                read_buffer_bytes: 256 * 1024,
                oneshot: options.oneshot,
                claims: capture.as_ref().map(|c| c.claims.clone()),
                facts: Some(facts.clone()),
                containers: container_list.clone(),
                facts_wait: effective.collections.facts_wait,
            },
            registry.clone(),
        ) {
            Ok(s) => s,
            Err(e) => break Err(e),
        };
        let mut pipeline = Pipeline::new(
            &effective,
            Router::new(&effective.sources, &sinks.queues),
            registry.clone(),
        );
        if let Some(e) = &enricher {
            pipeline.set_enricher(e.clone());
        }
        if let Some(c) = &collections {
            pipeline.set_match_board(c.board());
        }
        if let Some(list) = &container_list {
            pipeline.set_containers(list.clone());
        }
        let stop = || {
            if shutdown.load(Ordering::Relaxed) {
                Some(StopMode::Shutdown)
            } else if collections.as_ref().map(|c| c.generation()) != seen {
                Some(StopMode::Drain)
            } else {
                None
            }
        };
        health.set_ready();
        let result = source.run_until(&mut pipeline, &stop);
        summary.lines += pipeline.lines;
        summary.bytes += pipeline.bytes;
        summary.packages += pipeline.packages;
        summary.read_backend = source.backend();
        let Some(c) = collections.as_ref().filter(|_| result.is_ok()) else {
            // Seal what is pending (without inventing line ends: an incomplete last
            // line stays unacknowledged and is read again next start).
            pipeline.seal_all();
            break result;
        };
        if shutdown.load(Ordering::Relaxed) {
            pipeline.seal_all();
            break result;
        }
        pipeline.quiesce();
        drop(pipeline);
        drop(source);
        let outcome = if wait_for_acks(&registry, &shutdown, APPLY_ACK_WAIT) {
            "applied"
        } else {
            tracing::warn!("packages still unacknowledged at a config change; they are read again");
            "applied_unacked"
        };
        if let Err(e) = registry.persist() {
            tracing::error!(error = %e, "checkpoint before a config change failed");
        }
        effective = c.effective(&config);
        metrics::counter!("logtap_collection_applies_total", "result" => outcome).increment(1);
        tracing::info!(
            sources = effective.sources.len(),
            sinks = effective.sinks.len(),
            "collections applied"
        );
    };
    source_beat.stop();
    // The capture stage holds sink queues too: it seals its packages before the
    // sinks close.
    shutdown.store(true, Ordering::SeqCst);
    if let Some(c) = capture {
        c.join();
    }
    if let Some((_, Some(rescanner))) = containers {
        let _ = rescanner.join();
    }
    if let Some(poller) = container_poller {
        let _ = poller.join();
    }
    if let Some(c) = collections {
        c.stop();
    }
    if let Some(kubernetes) = kubernetes {
        kubernetes.stop();
    }
    let sink_failure = sinks.close_all();
    shutdown.store(true, Ordering::SeqCst);
    let _ = checkpointer.join();
    // Only acknowledged offsets are in the registry, so this is safe after a sink
    // failure too: what the sink could not make durable is read again next start.
    registry.persist().context("final checkpoint")?;
    result?;
    if let Some(e) = sink_failure {
        return Err(e);
    }
    Ok(summary)
}

/// How long a config change waits for the packages in flight to be acknowledged
/// before rebuilding anyway (they are then read again: duplicates, not loss).
const APPLY_ACK_WAIT: Duration = Duration::from_secs(10);

fn wait_for_acks(registry: &Registry, shutdown: &AtomicBool, max: Duration) -> bool {
    let deadline = Instant::now() + max;
    while registry.in_flight() > 0 {
        if Instant::now() >= deadline || shutdown.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The sink workers of the effective config, kept across rebuilds while their
/// config is unchanged.
#[derive(Default)]
struct Sinks {
    queues: BTreeMap<Arc<str>, crossbeam_channel::Sender<crate::batch::Batch>>,
    running: BTreeMap<Arc<str>, RunningSink>,
    failure: Option<anyhow::Error>,
}

struct RunningSink {
    config: crate::config::SinkConfig,
    worker: std::thread::JoinHandle<Result<(), crate::sink::SinkError>>,
}

impl Sinks {
    /// Stops the workers of sinks gone or changed (their queues drain first) and
    /// starts those of new ones.
    fn reconcile(
        &mut self,
        config: &Config,
        registry: &SharedRegistry,
        shutdown: &Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        let stale: Vec<Arc<str>> = self
            .running
            .iter()
            .filter(|(name, r)| config.sinks.get(*name) != Some(&r.config))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.queues.remove(&name);
            if let Some(r) = self.running.remove(&name) {
                self.join(&name, r);
            }
        }
        for (name, sink_config) in &config.sinks {
            if self.running.contains_key(name) {
                continue;
            }
            let sink = crate::sink::open(name, sink_config)
                .with_context(|| format!("opening sink {name:?}"))?;
            let (tx, rx) = crossbeam_channel::bounded(SINK_QUEUE_PACKAGES);
            let worker = SinkWorker {
                sink,
                queue: rx,
                registry: registry.clone(),
                flush_interval: SINK_FLUSH_INTERVAL.min(config.checkpoint_interval),
                shutdown: shutdown.clone(),
            };
            let worker = worker.spawn(name)?;
            self.running.insert(
                name.clone(),
                RunningSink {
                    config: sink_config.clone(),
                    worker,
                },
            );
            self.queues.insert(name.clone(), tx);
        }
        Ok(())
    }

    fn join(&mut self, name: &str, r: RunningSink) {
        match r.worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.failure = Some(anyhow::anyhow!("sink {name:?}: {e}")),
            Err(_) => self.failure = Some(anyhow::anyhow!("sink {name:?}: worker panicked")),
        }
    }

    /// Closes every queue and waits for the workers to drain; the last failure.
    fn close_all(mut self) -> Option<anyhow::Error> {
        self.queues.clear();
        let running = std::mem::take(&mut self.running);
        for (name, r) in running {
            self.join(&name, r);
        }
        self.failure
    }
}

/// The container registry (CRI, with the pod log directory as fallback) and its
/// rescanner, when the `cri` section enables it.
fn start_container_registry(
    config: &Config,
    options: &RunOptions,
    shutdown: &Arc<AtomicBool>,
) -> Option<(ContainerRegistry, Option<std::thread::JoinHandle<()>>)> {
    if !config.cri.enabled {
        return None;
    }
    let client = match CriClient::connect(&config.cri.endpoint, config.cri.timeout) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(endpoint = %config.cri.endpoint, error = %e, "CRI runtime unusable: container facts come from the pod log directory");
            None
        }
    };
    let registry = ContainerRegistry::new(client, config.collections.pod_logs.clone());
    // Failures degrade to the directory scan inside; they are logged and counted there.
    let _ = registry.rescan();
    let rescanner = if options.oneshot {
        None
    } else {
        registry
            .spawn_rescanner(config.cri.rescan_interval, shutdown.clone())
            .map_err(|e| tracing::error!(error = %e, "starting the CRI rescanner"))
            .ok()
    };
    Some((registry, rescanner))
}

/// How often the runtime is asked for new and stopped containers while some source
/// reads files inside containers.
const CONTAINER_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Keeps the registry's running containers current within
/// [`CONTAINER_POLL_INTERVAL`] while `wanted` (some source has `container_paths`):
/// the full rescan is too slow to catch a container's files while it runs.
fn start_container_poller(
    registry: ContainerRegistry,
    wanted: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("logtap-cri-poll".into())
        .spawn(move || {
            let beat = crate::metrics::health::global().register("discovery-cri-poll");
            beat.waiting(true);
            let mut next = Instant::now();
            while !shutdown.load(Ordering::Relaxed) {
                beat.progress();
                if Instant::now() >= next {
                    next = Instant::now() + CONTAINER_POLL_INTERVAL;
                    if wanted.load(Ordering::Relaxed) {
                        // Failures are counted and logged by the registry.
                        let _ = registry.refresh_changed();
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            beat.stop();
        })
        .map_err(|e| tracing::error!(error = %e, "starting the container poller"))
        .ok()
}

/// The enricher of a run: from the API's pod cache and/or the container registry,
/// whichever is enabled (`None` when neither is: lines carry no source fields).
fn enricher_of(
    config: &Config,
    kubernetes: Option<&Kubernetes>,
    containers: Option<&(ContainerRegistry, Option<std::thread::JoinHandle<()>>)>,
) -> Option<Arc<Enricher>> {
    if kubernetes.is_none() && containers.is_none() {
        return None;
    }
    Some(Arc::new(Enricher::from_sources(
        kubernetes.map(|k| k.cache().clone()),
        containers.map(|(r, _)| r.clone()),
        config.kubernetes.annotations.clone(),
        config.kubernetes.node_name.clone(),
        config.kubernetes.metadata_wait,
    )))
}

/// Starts the pod watcher when the `kubernetes` section enables it.
fn start_kubernetes(config: &Config, options: &RunOptions) -> Option<Kubernetes> {
    if !config.kubernetes.enabled {
        return None;
    }
    let kubernetes = Kubernetes::start(&config.kubernetes);
    // A one-shot run reads and ends every file at once, before a held package could
    // see its pod: it waits for the first answer of the API instead (bounded too).
    if options.oneshot && !kubernetes.wait_until_up(config.kubernetes.metadata_wait) {
        tracing::warn!("Kubernetes API not answering: one-shot run ships path fields only");
    }
    Some(kubernetes)
}

fn spawn_checkpointer(
    registry: SharedRegistry,
    interval: Duration,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || {
            let beat = crate::metrics::health::global().register("checkpoint");
            beat.waiting(true);
            let mut next = Instant::now() + interval;
            // The first progress of a run is persisted at once, not an interval after
            // start: an agent killed before its first interval would otherwise never
            // advance its checkpoint, and a crash-looping one would re-ship everything
            // since the last checkpoint on every restart instead of at most an interval.
            let mut progress_persisted = false;
            while !shutdown.load(Ordering::Relaxed) {
                beat.progress();
                std::thread::sleep(Duration::from_millis(50).min(interval));
                let progress = registry.progress();
                let first_progress = !progress_persisted && progress > 0;
                if Instant::now() < next && !first_progress {
                    continue;
                }
                next = Instant::now() + interval;
                // Errors are logged and counted inside; the next interval retries.
                if registry.persist().is_ok() && progress > 0 {
                    progress_persisted = true;
                }
                metrics::gauge!("logtap_packages_in_flight").set(registry.in_flight() as f64);
                if let Some(age) = registry.age() {
                    metrics::gauge!("logtap_checkpoint_age_seconds").set(age);
                }
            }
            beat.stop();
        })
}

/// Per-source state of the processing stages.
struct Slot {
    config: usize,
    framer: Framer,
    builder: BatchBuilder,
    /// For a captured container stream: the stream its raw-framed lines belong to.
    stream: Option<Stream>,
    /// The source's fields (pod metadata) when enrichment is on.
    enrichment: Option<SourceEnrichment>,
    /// The container of a file read inside it (`container_paths`), as it opened.
    container: Option<PodLogRef>,
}

/// Frame → parse → batch → route, run on the source thread.
pub struct Pipeline {
    config: Arc<Config>,
    parsers: Vec<Parser>,
    router: Router,
    registry: SharedRegistry,
    slots: HashMap<SourceId, Slot>,
    /// The further readers of a file several configs read: the file's source id →
    /// the ids its other configs ship under (see [`branch_id`]).
    branches: HashMap<SourceId, Vec<SourceId>>,
    /// Reused between chunks: framed records on their way into a package.
    scratch: Vec<Line>,
    /// The UTF-8 check of the chunk whose records are in `scratch`, if it was done.
    chunk_utf8: Option<Utf8Checked>,
    /// Reused by `tick`: the sources to visit.
    tick_ids: Vec<SourceId>,
    /// Total time spent blocked handing packages to full sink queues (see `unstalled`).
    stalled: Duration,
    /// Names sources by their pod and container (the `kubernetes` and `cri`
    /// sections); `None`: no source fields.
    enricher: Option<Arc<Enricher>>,
    /// Which containers each config reads, for `LogCollection` statuses.
    board: Option<Arc<crate::collections::MatchBoard>>,
    /// The node's containers, naming those whose files are read inside them.
    containers: Option<Arc<dyn ContainerList>>,
    lines: u64,
    bytes: u64,
    packages: u64,
}

impl Pipeline {
    pub fn new(config: &Config, router: Router, registry: SharedRegistry) -> Pipeline {
        Pipeline {
            parsers: config
                .sources
                .iter()
                .map(|s| Parser::new(&s.parser))
                .collect(),
            config: Arc::new(config.clone()),
            router,
            registry,
            slots: HashMap::new(),
            branches: HashMap::new(),
            scratch: Vec::new(),
            chunk_utf8: None,
            tick_ids: Vec::new(),
            stalled: Duration::ZERO,
            enricher: None,
            board: None,
            containers: None,
            lines: 0,
            bytes: 0,
            packages: 0,
        }
    }

    /// Parses the records in `scratch` into the slot's package and ships it if due.
    fn absorb(&mut self, source: SourceId, now: Instant) {
        let Some(slot) = self.slots.get_mut(&source) else {
            self.scratch.clear();
            return;
        };
        let parser = &self.parsers[slot.config];
        let only_stream = self.config.sources[slot.config].stream;
        let kind = slot.builder.source().kind.as_str();
        let (mut truncated, mut malformed, mut invalid_utf8, mut parse_failed) =
            (0u64, 0u64, 0u64, 0u64);
        let n = self.scratch.len() as u64;
        for mut line in self.scratch.drain(..) {
            if let Some(stream) = slot.stream {
                line.stream = stream;
            }
            if only_stream.is_some_and(|s| s != line.stream) {
                continue;
            }
            let index = slot.builder.next_index();
            let known_utf8 = self
                .chunk_utf8
                .as_ref()
                .is_some_and(|c| c.vouches_for(&line.body));
            parser.apply_with(&mut line, index, slot.builder.fields_mut(), known_utf8);
            if line.flags != LineFlags::empty() {
                let f = line.flags;
                truncated += f.contains(LineFlags::TRUNCATED) as u64;
                malformed += f.contains(LineFlags::MALFORMED) as u64;
                invalid_utf8 += f.contains(LineFlags::INVALID_UTF8) as u64;
                parse_failed += f.contains(LineFlags::PARSE_FAILED) as u64;
            }
            slot.builder.push(line, now);
        }
        self.lines += n;
        if n > 0 {
            metrics::counter!("logtap_lines_read_total", "source_kind" => kind).increment(n);
        }
        if truncated > 0 {
            metrics::counter!("logtap_lines_truncated_total", "source_kind" => kind)
                .increment(truncated);
        }
        if malformed > 0 {
            metrics::counter!("logtap_lines_malformed_total", "source_kind" => kind)
                .increment(malformed);
        }
        if invalid_utf8 > 0 {
            metrics::counter!("logtap_lines_invalid_utf8_total", "source_kind" => kind)
                .increment(invalid_utf8);
        }
        if parse_failed > 0 {
            metrics::counter!("logtap_parse_failures_total", "parser" => parser.kind())
                .increment(parse_failed);
        }
        if slot.builder.is_due(now) && !held_for_metadata(slot, self.enricher.as_deref(), now) {
            self.ship(source);
        }
    }

    /// Seals the slot's package at the framer's resume offset and hands it to its sink.
    fn ship(&mut self, source: SourceId) {
        let Some(slot) = self.slots.get_mut(&source) else {
            return;
        };
        attach_source_fields(slot, self.enricher.as_deref());
        let end_offset = slot.framer.resume_offset();
        let Some(batch) = slot.builder.seal(end_offset) else {
            return;
        };
        self.registry.sent(source, batch.package_id, end_offset);
        self.packages += 1;
        let sending = Instant::now();
        // A full queue is the sink's stall to report, if any, not this thread's.
        let sent = crate::metrics::health::parked(|| self.router.send(slot.config, batch));
        self.stalled += sending.elapsed();
        if !sent {
            // Only at shutdown; the package stays unacknowledged and is re-read next start.
            tracing::warn!(%source, "sink queue closed; package not shipped");
        }
    }

    /// A captured container stream starts at `start_offset`. Its bytes are the
    /// stream itself (no CRI envelope), so they are framed as raw lines and tagged with
    /// `stream`; the parser, multiline and sink of `config` apply.
    pub fn opened_stream(
        &mut self,
        info: Arc<SourceInfo>,
        config: usize,
        start_offset: u64,
        stream: Stream,
        container: Option<(PodLogRef, Option<String>)>,
    ) {
        let source_config = &self.config.sources[config];
        let framer = Framer::new(
            Format::Raw,
            source_config.max_line_bytes,
            source_config.multiline.clone(),
            start_offset,
        )
        .with_partial_timeout(self.config.partial_timeout);
        let mut builder = BatchBuilder::new(
            info.clone(),
            self.registry.next_package_id(info.id),
            self.config.batch.clone(),
        );
        // The stream's name is not a log path: its container comes from the caller.
        let enrichment = match (&self.enricher, container) {
            (Some(enricher), Some((log, container_id))) => {
                let e = enricher.track_container(log, container_id, Instant::now());
                builder.set_source_fields(e.fields().clone());
                Some(e)
            }
            _ => None,
        };
        tracing::debug!(source = %info.id, path = %info.path.display(), start_offset, "stream opened");
        self.slots.insert(
            info.id,
            Slot {
                config,
                framer,
                builder,
                stream: Some(stream),
                enrichment,
                container: None,
            },
        );
    }

    /// Name of the `sources[]` entry `config`.
    pub fn source_config_name(&self, config: usize) -> Arc<str> {
        self.config.sources[config].name.clone()
    }

    /// Like [`SourceEvents::data`], with the time the bytes were written (ns since the
    /// Unix epoch) as the timestamp of the lines they complete.
    pub fn data_at(&mut self, source: SourceId, chunk: Bytes, written_ns: i64) {
        if let Some(branches) = self.branches.get(&source) {
            // Each reader frames the same bytes its own way; the clone is a refcount.
            for branch in branches.clone() {
                self.data_slot(branch, chunk.clone(), written_ns);
            }
        }
        self.data_slot(source, chunk, written_ns);
    }

    fn data_slot(&mut self, source: SourceId, chunk: Bytes, written_ns: i64) {
        let Some(slot) = self.slots.get_mut(&source) else {
            return;
        };
        self.bytes += chunk.len() as u64;
        let now = Instant::now();
        let framer_now = unstalled(now, self.stalled);
        // One UTF-8 check for the chunk instead of one per line (see `parse`).
        if self.parsers[slot.config].uses_known_utf8() {
            self.chunk_utf8 = Some(Utf8Checked::new(&chunk));
        }
        slot.framer
            .push(chunk, written_ns, framer_now, &mut self.scratch);
        self.absorb(source, now);
        self.chunk_utf8 = None;
    }

    /// The bytes of `source` before `offset` are lost for good (counted by the
    /// caller): what is buffered becomes records as it is, and framing restarts at
    /// `offset`, so no line is glued across the hole.
    pub fn skip_to(&mut self, source: SourceId, offset: u64) {
        let Some(slot) = self.slots.get_mut(&source) else {
            return;
        };
        slot.framer.finish(&mut self.scratch);
        self.absorb(source, Instant::now());
        let Some(slot) = self.slots.get_mut(&source) else {
            return;
        };
        let source_config = &self.config.sources[slot.config];
        slot.framer = Framer::new(
            Format::Raw,
            source_config.max_line_bytes,
            source_config.multiline.clone(),
            offset,
        )
        .with_partial_timeout(self.config.partial_timeout);
    }

    /// Reports the containers each config reads to `board` from now on.
    pub fn set_match_board(&mut self, board: Arc<crate::collections::MatchBoard>) {
        self.board = Some(board);
    }

    /// Enriches every source opened from now on with `enricher`'s fields.
    pub fn set_enricher(&mut self, enricher: Arc<Enricher>) {
        self.enricher = Some(enricher);
    }

    /// The enrichment of a source opening now, its current fields set on `builder`.
    fn start_enrichment(
        &self,
        info: &SourceInfo,
        builder: &mut BatchBuilder,
    ) -> Option<SourceEnrichment> {
        let enrichment = self
            .enricher
            .as_ref()?
            .track_path(&info.path, Instant::now());
        builder.set_source_fields(enrichment.fields().clone());
        Some(enrichment)
    }

    /// Names the container of every file read inside a container from now on.
    pub fn set_containers(&mut self, containers: Arc<dyn ContainerList>) {
        self.containers = Some(containers);
    }

    /// The container whose file `path` (a logical `container://…` path) is.
    fn container_file_owner(&self, path: &Path) -> Option<ContainerView> {
        container::parse_logical(path)?;
        container::container_of(&self.containers.as_ref()?.containers(), path)
    }

    /// The enrichment of a file inside container `c`: the container's fields, as
    /// its CRI log would carry them.
    fn start_container_file_enrichment(
        &self,
        c: &ContainerView,
        builder: &mut BatchBuilder,
    ) -> Option<SourceEnrichment> {
        let id = (!c.id.is_empty()).then(|| c.id.clone());
        let enrichment = self
            .enricher
            .as_ref()?
            .track_container(c.pod.clone(), id, Instant::now());
        builder.set_source_fields(enrichment.fields().clone());
        Some(enrichment)
    }

    /// Publishes how many sources hold a package for their pod's metadata.
    fn publish_held(&self) {
        if self.enricher.is_some() {
            let held = self
                .slots
                .values()
                .filter(|s| !s.builder.is_empty())
                .filter(|s| s.enrichment.as_ref().is_some_and(|e| e.is_holding()))
                .count();
            metrics::gauge!("logtap_enrich_held_packages").set(held as f64);
        }
    }

    /// Before a rebuild (live apply): emits every complete record still held, open
    /// multiline records included, and ships every package. An unterminated last
    /// line stays unshipped (it is read again after the rebuild). Afterwards every
    /// reader of a file stands at the same resume offset, so resuming the file from
    /// its checkpoint neither skips nor repeats lines for any of its configs.
    pub fn quiesce(&mut self) {
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let ids: Vec<SourceId> = self.slots.keys().copied().collect();
        for id in ids {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.framer.flush_expired(far, &mut self.scratch);
            }
            self.absorb(id, Instant::now());
        }
        self.seal_all();
    }

    /// Ships every pending package (shutdown).
    pub fn seal_all(&mut self) {
        let ids: Vec<SourceId> = self.slots.keys().copied().collect();
        for id in ids {
            self.ship(id);
        }
    }
}

impl SourceEvents for Pipeline {
    fn opened(
        &mut self,
        info: Arc<SourceInfo>,
        config: usize,
        identity: FileIdentity,
        start_offset: u64,
        predecessor: Option<SourceId>,
    ) {
        self.opened_for(info, &[config], identity, start_offset, predecessor);
    }

    fn opened_for(
        &mut self,
        info: Arc<SourceInfo>,
        configs: &[usize],
        _identity: FileIdentity,
        start_offset: u64,
        predecessor: Option<SourceId>,
    ) {
        let mut branches = Vec::with_capacity(configs.len().saturating_sub(1));
        for (i, &config) in configs.iter().enumerate() {
            let name = &self.config.sources[config].name;
            // The primary ships under the file's id; each other config under an id
            // derived from it and its name, stable across restarts and rebuilds.
            let (info, predecessor) = if i == 0 {
                (info.clone(), predecessor)
            } else {
                let id = branch_id(info.id, name);
                self.registry.register_branch(info.id, id);
                branches.push(id);
                let branch = SourceInfo {
                    id,
                    config_name: name.clone(),
                    ..SourceInfo::clone(&info)
                };
                (Arc::new(branch), predecessor.map(|p| branch_id(p, name)))
            };
            self.open_slot(info, config, start_offset, predecessor);
        }
        if branches.is_empty() {
            self.branches.remove(&info.id);
        } else {
            self.branches.insert(info.id, branches);
        }
    }

    fn data(&mut self, source: SourceId, _offset: u64, chunk: Bytes) {
        self.data_at(source, chunk, wall_clock_ns());
    }

    fn ended(&mut self, source: SourceId, reason: EndReason) {
        for branch in self.branches.remove(&source).unwrap_or_default() {
            self.end_slot(branch, reason);
            self.registry.end_branch(branch);
        }
        self.end_slot(source, reason);
    }

    fn tick(&mut self, now: Instant) {
        // The file source's and the capture stage's loops both tick their pipeline.
        crate::metrics::health::progress();
        self.tick_slots(now);
    }
}

impl Pipeline {
    /// Starts the processing state of one reader of a file.
    fn open_slot(
        &mut self,
        info: Arc<SourceInfo>,
        config: usize,
        start_offset: u64,
        predecessor: Option<SourceId>,
    ) {
        let source_config = &self.config.sources[config];
        let mut framer = Framer::new(
            source_config.format,
            source_config.max_line_bytes,
            source_config.multiline.clone(),
            start_offset,
        )
        .with_partial_timeout(self.config.partial_timeout);
        // A CRI partial line cut by rotation continues in the successor file.
        if let Some(carry) = predecessor
            .and_then(|p| self.slots.get_mut(&p))
            .and_then(|old| old.framer.take_carry())
        {
            framer.accept_carry(carry);
        }
        let mut builder = BatchBuilder::new(
            info.clone(),
            self.registry.next_package_id(info.id),
            self.config.batch.clone(),
        );
        let container = self.container_file_owner(&info.path);
        let enrichment = match &container {
            Some(c) => self.start_container_file_enrichment(c, &mut builder),
            None => self.start_enrichment(&info, &mut builder),
        };
        if let Some(board) = &self.board {
            match &container {
                Some(c) => board.update_container(&source_config.name, &c.pod, 1),
                None => board.update(&source_config.name, &info.path, 1),
            }
        }
        tracing::debug!(source = %info.id, path = %info.path.display(), start_offset, config = %source_config.name, "source opened");
        self.slots.insert(
            info.id,
            Slot {
                config,
                framer,
                builder,
                stream: None,
                enrichment,
                container: container.map(|c| c.pod),
            },
        );
    }

    fn end_slot(&mut self, source: SourceId, reason: EndReason) {
        let now = Instant::now();
        if let Some(slot) = self.slots.get_mut(&source) {
            if let Some(board) = &self.board {
                let name = &self.config.sources[slot.config].name;
                match &slot.container {
                    Some(log) => board.update_container(name, log, -1),
                    None => board.update(name, &slot.builder.source().path, -1),
                }
            }
            if reason != EndReason::Shutdown {
                // The file is done: its unterminated last line is a record now.
                slot.framer.finish(&mut self.scratch);
            }
            self.absorb(source, now);
            self.ship(source);
        }
        self.slots.remove(&source);
    }

    fn tick_slots(&mut self, now: Instant) {
        // Each source separately: `scratch` must only ever hold one source's records.
        let mut ids = std::mem::take(&mut self.tick_ids);
        ids.extend(self.slots.keys().copied());
        let framer_now = unstalled(now, self.stalled);
        for &id in &ids {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.framer.flush_idle(framer_now, &mut self.scratch);
            }
            // Ships the package if its timeout passed, even when nothing new came.
            self.absorb(id, now);
        }
        ids.clear();
        self.tick_ids = ids;
        self.publish_held();
    }
}

/// The id config `name` ships a file's lines under when it is not the file's primary
/// config: a fixed hash (FNV-1a, not the per-process `RandomState`) of the file's id
/// and the config name, so a restart or a rebuild ships under the same id again.
pub fn branch_id(file: SourceId, name: &str) -> SourceId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in file
        .0
        .to_le_bytes()
        .iter()
        .chain(b"\0")
        .chain(name.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    SourceId(h)
}

/// Whether the slot's due package waits for its pod's metadata (see
/// [`SourceEnrichment`]); a full package never waits.
fn held_for_metadata(slot: &mut Slot, enricher: Option<&Enricher>, now: Instant) -> bool {
    match (slot.enrichment.as_mut(), enricher) {
        (Some(enrichment), Some(enricher)) if enrichment.is_holding() => {
            !slot.builder.is_full() && enrichment.poll(enricher, now)
        }
        _ => false,
    }
}

/// Brings the fields of the package about to be sealed up to date, ending any hold:
/// it ships now, with what is known.
fn attach_source_fields(slot: &mut Slot, enricher: Option<&Enricher>) {
    if slot.builder.is_empty() {
        return;
    }
    if let (Some(enrichment), Some(enricher)) = (slot.enrichment.as_mut(), enricher) {
        enrichment.release(enricher);
        slot.builder.set_source_fields(enrichment.fields().clone());
    }
}

/// The framers' clock: real time minus the time the source thread spent blocked on
/// full sink queues. A multiline record's `flush_timeout` means "no new line came",
/// and while the thread is blocked no line *can* come, however many wait in the file:
/// counting that time would cut stack traces in two exactly when a sink is slow.
fn unstalled(now: Instant, stalled: Duration) -> Instant {
    now.checked_sub(stalled).unwrap_or(now)
}

pub(crate) fn wall_clock_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::file::FileIdentity;

    /// A run shorter than the checkpoint interval must still make its progress
    /// durable, or a crash-looping agent re-ships the same data on every restart.
    #[test]
    fn first_progress_is_persisted_before_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let registry: SharedRegistry = Arc::new(Registry::open(dir.path()).unwrap());
        let shutdown = Arc::new(AtomicBool::new(false));
        let checkpointer =
            spawn_checkpointer(registry.clone(), Duration::from_secs(60), shutdown.clone())
                .unwrap();
        let identity = FileIdentity {
            dev: 1,
            inode: 2,
            fingerprint_len: 0,
            fingerprint: 0,
        };
        let source = SourceId(7);
        registry.register(source, identity, "/a.log".into(), 0);
        std::thread::sleep(Duration::from_millis(120));
        registry.sent(source, 1, 100);
        registry.acked(source, 1);
        let start = Instant::now();
        while Registry::open(dir.path())
            .unwrap()
            .lookup(1, 2)
            .map(|c| c.offset)
            != Some(100)
        {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "acknowledged progress not persisted within 1 s (interval 60 s)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        shutdown.store(true, Ordering::SeqCst);
        checkpointer.join().unwrap();
    }

    /// A slow sink must not cut a multiline record in two: the time the source thread
    /// spends blocked on a full queue is not "time without a new line".
    #[test]
    fn multiline_record_survives_a_stall_longer_than_its_flush_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(
            "sources:\n  - name: app\n    include: [\"/x/*.log\"]\n    multiline: {start: '^S', flush_timeout: 100ms}\n    sink: out\n\
             batch: {max_lines: 1}\nsinks:\n  out: {type: blackhole}\n",
            "test",
        )
        .unwrap();
        let registry: SharedRegistry = Arc::new(Registry::open(dir.path()).unwrap());
        // A rendezvous queue whose consumer first stalls for 300 ms: the first
        // package's send blocks three flush timeouts long.
        let (tx, rx) = crossbeam_channel::bounded::<crate::batch::Batch>(0);
        let consumer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            rx.iter()
                .flat_map(|b| b.lines.into_iter().map(|l| l.body))
                .collect::<Vec<_>>()
        });
        let queues = BTreeMap::from([(Arc::<str>::from("out"), tx)]);
        let mut pipeline = Pipeline::new(
            &config,
            Router::new(&config.sources, &queues),
            registry.clone(),
        );
        drop(queues);
        let info = crate::checkpoint::registered_test_source(&registry, 1, "/x/a.log");
        let source = info.id;
        let identity = registry.lookup(1, 1).expect("registered").identity;
        pipeline.opened(info, 0, identity, 0, None);
        let first = Bytes::from_static(b"S one\nS two\n  two-a\n");
        let first_len = first.len() as u64;
        pipeline.data(source, 0, first); // ships "S one": blocks ~300 ms
        pipeline.tick(Instant::now());
        pipeline.data(source, first_len, Bytes::from_static(b"  two-b\nS three\n"));
        pipeline.ended(source, EndReason::Eof);
        drop(pipeline);
        let bodies = consumer.join().unwrap();
        assert_eq!(
            bodies,
            vec![
                Bytes::from_static(b"S one"),
                Bytes::from_static(b"S two\n  two-a\n  two-b"),
                Bytes::from_static(b"S three"),
            ]
        );
    }

    /// A new container's package waits (without blocking the reader) until its pod is
    /// known, then ships with every field; a host file's ships at once with the node.
    #[test]
    fn container_package_waits_for_its_pod_and_host_package_does_not() {
        use crate::discovery::PodCache;
        use k8s_openapi::api::core::v1::Pod;

        const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(
            "sources:\n  - name: all\n    include: [\"/x/**\"]\n    sink: out\n\
             batch: {timeout: 0s}\nsinks:\n  out: {type: blackhole}\n",
            "test",
        )
        .unwrap();
        let registry: SharedRegistry = Arc::new(Registry::open(dir.path()).unwrap());
        let (tx, rx) = crossbeam_channel::bounded::<crate::batch::Batch>(16);
        let queues = BTreeMap::from([(Arc::<str>::from("out"), tx)]);
        let mut pipeline = Pipeline::new(
            &config,
            Router::new(&config.sources, &queues),
            registry.clone(),
        );
        drop(queues);
        let cache = PodCache::new(Vec::new(), Duration::from_secs(60));
        pipeline.set_enricher(Arc::new(Enricher::new(
            cache.clone(),
            "node-a",
            Duration::from_secs(30),
        )));

        let pod_path = format!("/var/log/pods/shop_cart_{UID}/app/0.log");
        let container = crate::checkpoint::registered_test_source(&registry, 1, &pod_path);
        let host = crate::checkpoint::registered_test_source(&registry, 2, "/x/syslog");
        for info in [container.clone(), host.clone()] {
            let identity = registry.lookup(1, info.id.0).expect("registered").identity;
            pipeline.opened(info, 0, identity, 0, None);
        }
        pipeline.data(container.id, 0, Bytes::from_static(b"one\n"));
        pipeline.data(host.id, 0, Bytes::from_static(b"boot\n"));
        pipeline.tick(Instant::now());
        let host_batch = rx.try_recv().expect("the host package ships at once");
        assert_eq!(host_batch.source.id, host.id);
        assert_eq!(
            *host_batch.source_fields,
            vec![(
                Bytes::from_static(b"k8s.node"),
                Bytes::from_static(b"node-a")
            )]
        );
        assert!(rx.try_recv().is_err(), "the container's package is held");

        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "shop", "name": "cart", "uid": UID,
                         "labels": {"app": "cart"}},
            "spec": {"containers": [{"name": "app", "image": "shop/cart:2"}]},
        }))
        .unwrap();
        cache.apply_pod(&pod);
        pipeline.tick(Instant::now());
        let batch = rx.try_recv().expect("shipped once the pod is known");
        assert_eq!(batch.source.id, container.id);
        assert_eq!(batch.lines.len(), 1);
        let get = |key: &str| {
            batch
                .source_fields
                .iter()
                .find(|(k, _)| k[..] == *key.as_bytes())
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("container.image").as_deref(), Some(&b"shop/cart:2"[..]));
        assert_eq!(get("k8s.pod.label.app").as_deref(), Some(&b"cart"[..]));
    }

    /// One file, two configs with different framing and sinks: each sink gets every
    /// record exactly once under its own source id, and the file's checkpoint only
    /// moves past what both sinks acknowledged.
    #[test]
    fn a_file_read_by_two_configs_ships_to_both_and_checkpoints_the_slower() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(
            "sources:\n  - name: plain\n    include: [\"/x/*.log\"]\n    sink: a\n  \
             - name: grouped\n    include: [\"/x/*.log\"]\n    multiline: {start: '^S'}\n    sink: b\n\
             batch: {timeout: 0s}\nsinks:\n  a: {type: blackhole}\n  b: {type: blackhole}\n",
            "test",
        )
        .unwrap();
        let registry: SharedRegistry = Arc::new(Registry::open(dir.path()).unwrap());
        let (tx_a, rx_a) = crossbeam_channel::bounded::<crate::batch::Batch>(16);
        let (tx_b, rx_b) = crossbeam_channel::bounded::<crate::batch::Batch>(16);
        let queues = BTreeMap::from([(Arc::<str>::from("a"), tx_a), (Arc::<str>::from("b"), tx_b)]);
        let mut pipeline = Pipeline::new(
            &config,
            Router::new(&config.sources, &queues),
            registry.clone(),
        );
        drop(queues);
        let info = crate::checkpoint::registered_test_source(&registry, 1, "/x/a.log");
        let file = info.id;
        let identity = registry.lookup(1, 1).expect("registered").identity;
        pipeline.opened_for(info, &[0, 1], identity, 0, None);
        let data = b"S one\n  more\nS two\n";
        pipeline.data(file, 0, Bytes::from_static(data));
        pipeline.tick(Instant::now());
        let drain = |rx: &crossbeam_channel::Receiver<crate::batch::Batch>| {
            rx.try_iter().collect::<Vec<_>>()
        };
        let a = drain(&rx_a);
        let b = drain(&rx_b);
        let bodies = |batches: &[crate::batch::Batch]| {
            batches
                .iter()
                .flat_map(|b| b.lines.iter().map(|l| l.body.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(bodies(&a), [&b"S one"[..], b"  more", b"S two"]);
        assert_eq!(bodies(&b), [&b"S one\n  more"[..]], "S two is still open");
        assert_eq!(
            a[0].source.id, file,
            "the primary ships under the file's id"
        );
        let branch = branch_id(file, "grouped");
        assert_eq!(b[0].source.id, branch);
        assert_eq!(&*b[0].source.config_name, "grouped");
        for batch in &a {
            registry.acked(batch.source.id, batch.package_id);
        }
        assert_eq!(
            registry.lookup(1, 1).unwrap().offset,
            0,
            "a restart now re-reads for the branch, which acknowledged nothing"
        );
        for batch in &b {
            registry.acked(batch.source.id, batch.package_id);
        }
        assert_eq!(
            registry.lookup(1, 1).unwrap().offset,
            13,
            "both past `S one`"
        );
        // A rebuild quiesces: the open record ships, and both readers stand at the end.
        pipeline.quiesce();
        let b2 = drain(&rx_b);
        assert_eq!(bodies(&b2), [&b"S two"[..]]);
        for batch in &b2 {
            registry.acked(batch.source.id, batch.package_id);
        }
        assert_eq!(registry.lookup(1, 1).unwrap().offset, data.len() as u64);
        pipeline.ended(file, EndReason::Shutdown);
        assert_eq!(registry.in_flight(), 0);
    }
}

//! The services a run starts once and stops once, in order: the checkpoint registry
//! and its thread, the Kubernetes watchers, the container registry and its pollers,
//! the `LogCollection` watcher, the enricher, eBPF capture, self-monitoring and the
//! network inputs.
//!
//! They outlive every rebuild of the file source and its pipeline; [`Services`]
//! also builds those ([`Services::pipeline`], [`Services::file_source`]), so every
//! pipeline of a run is wired the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::checkpointer::spawn_checkpointer;
use super::processor::Pipeline;
use super::sinks::Sinks;
use crate::capture::CaptureThread;
use crate::checkpoint::{Registry, SharedRegistry};
use crate::collections::Collections;
use crate::collections::env::EnvConfigs;
use crate::config::Config;
use crate::discovery::{ContainerRegistry, CriClient};
use crate::enrich::{Enricher, Kubernetes};
use crate::select::{ContainerFactsSource, NodeFacts, RuntimeFacts};
use crate::selfmon::SelfMonitor;
use crate::source::file::container::{ContainerList, RegistryContainers};
use crate::source::file::{FileSource, FileSourceOptions};
use crate::source::net::{BoundInputs, NetInputs};

/// How often the runtime is asked for new and stopped containers while some source
/// reads files inside containers.
const CONTAINER_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Everything of a run that is not rebuilt when the config changes.
pub(super) struct Services {
    pub registry: SharedRegistry,
    pub shutdown: Arc<AtomicBool>,
    oneshot: bool,
    /// Whether capture starts even though the run is one-shot (see `RunOptions::workload`).
    capture_in_oneshot: bool,
    checkpointer: JoinHandle<()>,
    kubernetes: Option<Kubernetes>,
    /// The container registry (CRI, with the pod log directory as fallback).
    containers: Option<ContainerRegistry>,
    rescanner: Option<JoinHandle<()>>,
    container_poller: Option<JoinHandle<()>>,
    /// Whether some source reads files inside containers (the poller runs then).
    container_files_wanted: Arc<AtomicBool>,
    pub collections: Option<Collections>,
    /// Collections declared by containers' environment (`env_configs`).
    env_configs: Option<EnvConfigs>,
    enricher: Option<Arc<Enricher>>,
    facts: Arc<dyn ContainerFactsSource>,
    container_list: Option<Arc<dyn ContainerList>>,
    capture: Option<CaptureThread>,
    /// The probes loaded before the services started, until capture starts.
    probes: Option<crate::capture::Probes>,
    self_monitor: Option<SelfMonitor>,
    /// The network inputs' sockets, bound at the start (a port below 1024 needs a
    /// capability the run drops), until [`Services::start_net_inputs`].
    net_bound: Option<BoundInputs>,
    net_inputs: Option<NetInputs>,
    events: Option<crate::events::EventShipper>,
}

impl Services {
    /// Starts every service `config` enables (capture comes later: it needs the
    /// sinks, see [`start_capture`](Self::start_capture)). A `oneshot` run starts no
    /// watcher or poller: it reads what is there and returns.
    pub fn start(
        config: &Config,
        oneshot: bool,
        shutdown: &Arc<AtomicBool>,
    ) -> anyhow::Result<Services> {
        let net_bound = match oneshot {
            true => None,
            false => BoundInputs::bind(config)?,
        };
        let registry: SharedRegistry = Arc::new(
            Registry::open(&config.data_dir.join("checkpoints")).context("opening checkpoints")?,
        );
        crate::metrics::health::global().set_stall_timeout(config.stall_timeout);
        let checkpointer = spawn_checkpointer(
            registry.clone(),
            config.checkpoint_interval,
            shutdown.clone(),
        )?;
        let kubernetes = start_kubernetes(config, oneshot);
        let (containers, rescanner) = start_container_registry(config, oneshot, shutdown);
        let collections = (config.collections.enabled && !oneshot).then(|| {
            let c = Collections::start(config);
            c.wait_listed(Duration::from_secs(2));
            c
        });
        let env_configs = containers
            .as_ref()
            .filter(|r| config.env_configs.enabled && r.has_cri())
            .map(|r| EnvConfigs::new(config.env_configs.clone(), r.clone()));
        let pods = kubernetes.as_ref().map(|k| k.cache().clone());
        let facts: Arc<dyn ContainerFactsSource> = Arc::new(NodeFacts {
            runtime: containers
                .as_ref()
                .map(|r| Arc::new(r.clone()) as Arc<dyn RuntimeFacts>),
            pods: pods.clone(),
        });
        let container_list = containers.as_ref().map(|r| {
            Arc::new(RegistryContainers {
                registry: r.clone(),
                pods: pods.clone(),
            }) as Arc<dyn ContainerList>
        });
        let container_files_wanted = Arc::new(AtomicBool::new(false));
        let container_poller = match (&containers, oneshot) {
            (Some(r), false) => {
                start_container_poller(r.clone(), container_files_wanted.clone(), shutdown.clone())
            }
            _ => None,
        };
        let enricher = enricher_of(config, kubernetes.as_ref(), containers.as_ref());
        Ok(Services {
            registry,
            shutdown: shutdown.clone(),
            oneshot,
            capture_in_oneshot: false,
            checkpointer,
            kubernetes,
            containers,
            rescanner,
            container_poller,
            container_files_wanted,
            collections,
            env_configs,
            enricher,
            facts,
            container_list,
            capture: None,
            probes: None,
            self_monitor: None,
            net_bound,
            net_inputs: None,
            events: None,
        })
    }

    /// Lets a one-shot run start capture (see `RunOptions::workload`).
    pub fn capture_in_oneshot(&mut self) {
        self.capture_in_oneshot = true;
    }

    /// Whether capture runs in this run when `config` enables it.
    fn capture_wanted(&self) -> bool {
        !self.oneshot || self.capture_in_oneshot
    }

    /// Whether the capture stage was started and runs.
    pub fn capture_running(&self) -> bool {
        self.capture.is_some()
    }

    /// Keeps the eBPF probes ([`CaptureThread::load`]) until capture starts, with the
    /// sinks ([`Self::start_capture`]; the capabilities loading needs are dropped
    /// between); whether there are any.
    pub fn set_probes(&mut self, probes: Option<crate::capture::Probes>) -> bool {
        self.probes = probes;
        self.probes.is_some()
    }

    /// Starts eBPF capture when `config` (the config file, not an effective config)
    /// enables it and the run is not one-shot.
    ///
    /// Capture runs across config changes: the containers it ships are those of the
    /// file config's capture source, whose index every effective config keeps. Its
    /// pipeline is built from the file config alone, so its router holds the queues of
    /// the file config's sinks only: those are never stopped by a rebuild (a
    /// collection cannot replace one), while a collection's sink is, and its worker
    /// ends only once every sender of its queue is gone. A collection that selects a
    /// captured container reads its CRI log through the file source (`Claims`).
    pub fn start_capture(&mut self, config: &Config, sinks: &Sinks) {
        let Some(capture_config) = config.capture.as_ref().filter(|_| self.capture_wanted()) else {
            return;
        };
        let Some(probes) = self.probes.take() else {
            return;
        };
        let pipeline = self.pipeline(config, sinks);
        let containers = match &self.containers {
            Some(r) => r.clone(),
            None => ContainerRegistry::new(None, config.collections.pod_logs.clone()),
        };
        let resolver = crate::capture::CaptureResolver {
            containers,
            selector: config
                .sources
                .get(capture_config.source)
                .and_then(|s| s.selector.clone()),
            facts: self.facts.clone(),
        };
        self.capture = CaptureThread::start(
            capture_config,
            probes,
            pipeline,
            self.registry.clone(),
            resolver,
            self.shutdown.clone(),
        );
    }

    /// Starts self-monitoring when `config` (the config file) enables it: its own
    /// pipeline, routed to a sink of the file config (never stopped by a rebuild),
    /// with statistics for the file config's sources.
    pub fn start_self_monitoring(&mut self, config: &Config, sinks: &Sinks) {
        let Some(selfmon) = &config.self_monitoring else {
            return;
        };
        let pipeline = self.pipeline(&crate::selfmon::pipeline_config(config, selfmon), sinks);
        let configs = config.sources.iter().map(|s| s.name.clone()).collect();
        match SelfMonitor::start(selfmon, pipeline, configs) {
            Ok(monitor) => self.self_monitor = Some(monitor),
            Err(e) => tracing::error!(error = %e, "cannot start self-monitoring"),
        }
    }

    /// Starts reading the network inputs bound at the start: their own pipeline,
    /// built from `config` (the config file, whose source indexes every effective
    /// config keeps) and routed to its sinks, which no rebuild stops.
    pub fn start_net_inputs(&mut self, config: &Config, sinks: &Sinks) -> anyhow::Result<()> {
        let Some(bound) = self.net_bound.take() else {
            return Ok(());
        };
        let pipeline = self.pipeline(config, sinks);
        self.net_inputs = Some(
            bound
                .start(pipeline, self.registry.clone())
                .context("starting the network inputs")?,
        );
        Ok(())
    }

    /// Starts shipping Kubernetes events (while this agent holds the Lease) when
    /// `config` (the config file) enables it and the run is not one-shot: its own
    /// pipeline, routed to a sink of the file config.
    pub fn start_events(&mut self, config: &Config, sinks: &Sinks) {
        let Some(events) = config.kubernetes_events.as_ref().filter(|_| !self.oneshot) else {
            return;
        };
        let pipeline = self.pipeline(&crate::events::pipeline_config(config, events), sinks);
        match crate::events::EventShipper::start(events, pipeline, self.registry.clone()) {
            Ok(shipper) => self.events = Some(shipper),
            Err(e) => tracing::error!(error = %e, "cannot start shipping Kubernetes events"),
        }
    }

    /// The config in effect: the file's, with every valid `LogCollection` and every
    /// collection containers declare by environment merged in, in that order.
    pub fn effective(&self, config: &Config) -> Config {
        let mut effective = match &self.collections {
            Some(c) => c.effective(config),
            None => config.clone(),
        };
        if let Some(e) = &self.env_configs {
            e.merge_into(&mut effective);
        }
        effective
    }

    /// Moves whenever the effective config would change (a `LogCollection`, or the
    /// set of collections declared by environment); `None` when neither is followed,
    /// so the effective config of the run's start stays. A one-shot run merges the
    /// declarations found at its start and follows nothing: it ends when it read
    /// everything, never to rebuild.
    pub fn config_generation(&self) -> Option<u64> {
        if self.oneshot {
            return None;
        }
        let collections = self.collections.as_ref().map(|c| c.generation());
        let env = self.env_configs.as_ref().map(|e| e.generation());
        match (collections, env) {
            (None, None) => None,
            // Both only grow: their sum moves whenever either does.
            (c, e) => Some(c.unwrap_or(0).wrapping_add(e.unwrap_or(0))),
        }
    }

    /// A pipeline for `config`, routed to `sinks` and wired to the services.
    pub fn pipeline(&self, config: &Config, sinks: &Sinks) -> Pipeline {
        let mut pipeline = Pipeline::new(config, sinks.router(config), self.registry.clone());
        if let Some(e) = &self.enricher {
            pipeline.set_enricher(e.clone());
        }
        if let Some(c) = &self.collections {
            pipeline.set_match_board(c.board());
        }
        if let Some(list) = &self.container_list {
            pipeline.set_containers(list.clone());
        }
        pipeline
    }

    /// A file source for `config`'s sources; the container poller runs while some
    /// of them read files inside containers.
    pub fn file_source(&self, config: &Config) -> anyhow::Result<FileSource> {
        // Collections declared by environment need new containers' env within the
        // poll interval too, not at the next full rescan.
        let wanted = self.env_configs.is_some()
            || config.sources.iter().any(|s| !s.container_paths.is_empty());
        self.container_files_wanted.store(wanted, Ordering::Relaxed);
        FileSource::new(
            &config.sources,
            FileSourceOptions {
                rescan_interval: config.rescan_interval,
                rotate_wait: config.rotate_wait,
                io_uring: config.io_uring,
                read_buffer_bytes: 256 * 1024,
                oneshot: self.oneshot,
                claims: self.capture.as_ref().map(|c| c.claims.clone()),
                facts: Some(self.facts.clone()),
                containers: self.container_list.clone(),
                facts_wait: config.collections.facts_wait,
            },
            self.registry.clone(),
        )
    }

    /// Stops everything, in order: the network inputs, capture and self-monitoring (they seal their
    /// packages while the sinks still take them), the container pollers, the collection and Kubernetes
    /// watchers, the sinks (their queues drained), the checkpoint thread; then
    /// persists the checkpoints a last time. Returns `result` (the run's), unless the
    /// final checkpoint failed; a sink's failure when the run itself succeeded.
    pub fn stop(self, sinks: Sinks, result: anyhow::Result<()>) -> anyhow::Result<()> {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(inputs) = self.net_inputs {
            inputs.stop();
        }
        if let Some(c) = self.capture {
            c.join();
        }
        if let Some(monitor) = self.self_monitor {
            monitor.stop();
        }
        if let Some(events) = self.events {
            events.stop();
        }
        if let Some(rescanner) = self.rescanner {
            let _ = rescanner.join();
        }
        if let Some(poller) = self.container_poller {
            let _ = poller.join();
        }
        if let Some(c) = self.collections {
            c.stop();
        }
        if let Some(kubernetes) = self.kubernetes {
            kubernetes.stop();
        }
        let sink_failure = sinks.close_all();
        let _ = self.checkpointer.join();
        // Only acknowledged offsets are in the registry, so this is safe after a sink
        // failure too: what the sink could not make durable is read again next start.
        self.registry.persist().context("final checkpoint")?;
        result?;
        sink_failure.map_or(Ok(()), Err)
    }
}

/// The container registry (CRI, with the pod log directory as fallback) and its
/// rescanner, when the `cri` section enables it.
fn start_container_registry(
    config: &Config,
    oneshot: bool,
    shutdown: &Arc<AtomicBool>,
) -> (Option<ContainerRegistry>, Option<JoinHandle<()>>) {
    if !config.cri.enabled {
        return (None, None);
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
    let rescanner = if oneshot {
        None
    } else {
        registry
            .spawn_rescanner(config.cri.rescan_interval, shutdown.clone())
            .map_err(|e| tracing::error!(error = %e, "starting the CRI rescanner"))
            .ok()
    };
    (Some(registry), rescanner)
}

/// Keeps the registry's running containers current within
/// [`CONTAINER_POLL_INTERVAL`] while `wanted` (some source has `container_paths`):
/// the full rescan is too slow to catch a container's files while it runs.
fn start_container_poller(
    registry: ContainerRegistry,
    wanted: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
) -> Option<JoinHandle<()>> {
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
    containers: Option<&ContainerRegistry>,
) -> Option<Arc<Enricher>> {
    if kubernetes.is_none() && containers.is_none() {
        return None;
    }
    Some(Arc::new(Enricher::from_sources(
        kubernetes.map(|k| k.cache().clone()),
        containers.cloned(),
        config.kubernetes.annotations.clone(),
        config.kubernetes.node_name.clone(),
        config.kubernetes.metadata_wait,
    )))
}

/// Starts the pod watcher when the `kubernetes` section enables it.
fn start_kubernetes(config: &Config, oneshot: bool) -> Option<Kubernetes> {
    if !config.kubernetes.enabled {
        return None;
    }
    let kubernetes = Kubernetes::start(&config.kubernetes);
    // A one-shot run reads and ends every file at once, before a held package could
    // see its pod: it waits for the first answer of the API instead (bounded too).
    if oneshot && !kubernetes.wait_until_up(config.kubernetes.metadata_wait) {
        tracing::warn!("Kubernetes API not answering: one-shot run ships path fields only");
    }
    Some(kubernetes)
}

//! Starting capture in the agent: the probes loaded, the stage on its own thread.
//!
//! Capture is an accelerator over the CRI logs, never a single point of failure: when
//! the probes cannot load (no BTF, no privileges, an object built without eBPF), the
//! agent says so in its log and in `logtap_capture_up`, and the file source reads every
//! container's CRI log as it would without capture.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Duration;

use super::probe::{PinWait, Pinning, ProbeError, ProbeEvent, ProbeOptions, Probes};
use super::stage::{PinnedState, PinnedStream};
use super::{CaptureStage, CapturedContainer, Claims, ContainerResolver, EventFeed};
use crate::checkpoint::SharedRegistry;
use crate::config::CaptureConfig;
use crate::discovery::{ContainerRegistry, ContainerState};
use crate::frame::Stream;
use crate::metrics::catalogue::CAPTURE_UP;
use crate::pipeline::Input;
use crate::select::{CompiledSelector, ContainerFactsSource, Facts};
use logtap_ebpf_common::{ORIGIN_FIRST_EXEC, ORIGIN_RUNNING};

impl EventFeed for Probes {
    fn poll(
        &mut self,
        timeout: Duration,
        on_event: &mut dyn FnMut(ProbeEvent<'_>),
    ) -> std::io::Result<usize> {
        Probes::poll(self, timeout, on_event)
    }

    fn backlog(&self) -> usize {
        Probes::backlog(self)
    }

    fn forget(&mut self, cgroup_id: u64) -> Vec<(Stream, u64)> {
        match Probes::forget(self, cgroup_id) {
            // A stream bound while its container ran is numbered from its bind, not
            // from its first byte: its end is not known in stream offsets here.
            Ok(states) => states
                .into_iter()
                .filter(|s| s.origin == ORIGIN_FIRST_EXEC)
                .filter_map(|s| match s.stream {
                    1 => Some((Stream::Stdout, s.offset)),
                    2 => Some((Stream::Stderr, s.offset)),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                // The streams' ends are then read from their CRI logs.
                tracing::warn!(cgroup_id, error = %e, "forgetting a removed cgroup in the kernel");
                Vec::new()
            }
        }
    }

    fn decline(&mut self, cgroup_id: u64, stream: Stream) {
        if let Err(e) = Probes::forget_stream(self, cgroup_id, stream) {
            // Only a cost: its records are still dropped in userspace.
            tracing::warn!(cgroup_id, ?stream, error = %e, "forgetting a declined stream in the kernel");
        }
    }

    fn watch_existing(&mut self, cgroup_id: u64, pid: u32) -> std::io::Result<()> {
        Probes::watch_existing(self, cgroup_id, pid).map_err(std::io::Error::other)
    }

    fn set_base(&mut self, cgroup_id: u64, stream: Stream, base: u64) {
        if let Err(e) = Probes::set_base(self, cgroup_id, stream, base) {
            // Only an agent taking these probes over needs it; it then leaves the
            // stream on its CRI log.
            tracing::warn!(cgroup_id, error = %e, "recording a stream's seam in the kernel's maps");
        }
    }

    fn pinned(&mut self) -> PinnedState {
        if !self.reused() {
            return PinnedState::default();
        }
        let read = self.watched_cgroups().and_then(|cgroups| {
            let streams = self.pinned_streams()?;
            Ok((cgroups, streams))
        });
        let (cgroups, streams) = match read {
            Ok(read) => read,
            Err(e) => {
                // Nothing taken over: running containers are bound again below, from
                // their logs; the seam places their kernel numbering (which stays the
                // earlier agent's) or leaves them on their logs.
                tracing::warn!(error = %e, "reading the pinned probes' streams: none taken over");
                return PinnedState::default();
            }
        };
        let streams = streams
            .into_iter()
            .filter_map(|(_, state, base)| {
                Some(PinnedStream {
                    cgroup_id: state.cgroup_id,
                    stream: match state.stream {
                        1 => Stream::Stdout,
                        2 => Stream::Stderr,
                        _ => return None,
                    },
                    offset: state.offset,
                    base: match state.origin {
                        ORIGIN_RUNNING => base,
                        _ => Some(0),
                    },
                })
            })
            .collect();
        PinnedState { cgroups, streams }
    }
}

/// Containers as the runtime (CRI) knows them, and whether capture's source config
/// selects them.
pub struct CaptureResolver {
    pub containers: ContainerRegistry,
    /// The `selector` of capture's source config.
    pub selector: Option<Arc<CompiledSelector>>,
    /// What the selector is matched against (the file source's own facts).
    pub facts: Arc<dyn ContainerFactsSource>,
}

impl CaptureResolver {
    /// Whether the selector takes the container writing `log`. Facts not known yet
    /// (the runtime had not reported it when the resolver asked) count as taken:
    /// capture was what the container got before selectors mattered to it, and a
    /// stream left out cannot be taken back later.
    fn selects(&self, log: &Path) -> bool {
        let Some(selector) = &self.selector else {
            return true;
        };
        match self.facts.facts(log) {
            Facts::Known(facts) => selector.matches(&facts),
            Facts::Pending | Facts::NotContainer => true,
        }
    }
}

impl ContainerResolver for CaptureResolver {
    fn resolve(&mut self, cgroup_path: &[u8]) -> Option<CapturedContainer> {
        let c = self.containers.by_cgroup_path(cgroup_path)?;
        let selected = c.log_path.as_deref().is_none_or(|log| self.selects(log));
        Some(CapturedContainer {
            id: c.id,
            log_path: c.log_path,
            selected,
        })
    }

    fn is_running(&mut self, log_path: &Path) -> Option<bool> {
        self.containers
            .by_log_path(log_path)
            .map(|c| c.state == ContainerState::Running || c.state == ContainerState::Created)
    }
}

/// The capture thread and the claims its streams make.
pub struct CaptureThread {
    pub claims: Arc<Claims>,
    thread: JoinHandle<()>,
}

impl CaptureThread {
    /// Loads the probes; `None` (logged, `logtap_capture_up` 0) when they cannot load.
    /// Done before the agent drops its capabilities (see [`crate::privileges`]): the
    /// running stage needs none of those loading does.
    ///
    /// With pins another agent holds, this waits up to `pin_wait` for it to stop
    /// (`shutdown` ends the wait: `None`). Meanwhile `/readyz` answers 200: a rollout
    /// with `maxSurge` stops the old agent only once the new one is ready.
    pub fn load(options: &CaptureConfig, shutdown: &Arc<AtomicBool>) -> Option<Probes> {
        match Probes::load(&ProbeOptions {
            hooks: options.hooks,
            ring_bytes: options.ring_bytes,
            cgroup_prefix: options.cgroup_prefix.clone(),
            max_records_per_write: options.max_records_per_write,
            pinning: match &options.pin_dir {
                Some(dir) => Pinning::Keep(dir.clone()),
                None => Pinning::Remove(options.configured_pin_dir.clone()),
            },
            pin_wait: PinWait {
                limit: options.pin_wait,
                stop: Some(shutdown.clone()),
                on_wait: Some(|| crate::metrics::health::global().set_ready()),
            },
        }) {
            Ok(p) => Some(p),
            Err(ProbeError::Stopped) => {
                tracing::info!("stopped while waiting for another agent's pinned probes");
                None
            }
            Err(e) => {
                metrics::gauge!(CAPTURE_UP).set(0.0);
                tracing::error!(error = %e, "eBPF capture unavailable: container logs are read from their CRI log files");
                None
            }
        }
    }

    /// Starts the stage on `probes` (see [`Self::load`]). `pipeline` is the stage's
    /// own; the stage ends its streams (and the pipeline ships their packages) when
    /// `shutdown` is set.
    pub fn start(
        options: &CaptureConfig,
        probes: Probes,
        pipeline: impl Input + Send + 'static,
        registry: SharedRegistry,
        containers: CaptureResolver,
        shutdown: Arc<AtomicBool>,
    ) -> Option<CaptureThread> {
        metrics::gauge!(CAPTURE_UP).set(1.0);
        tracing::info!(prefix = %options.cgroup_prefix, "eBPF capture running");
        let claims = Arc::new(Claims::new(options.source, options.claim_wait));
        let mut stage = CaptureStage::new(
            options.clone(),
            probes,
            containers,
            pipeline,
            registry,
            claims.clone(),
        );
        match Probes::cgroup2_root() {
            Ok(root) => stage.set_cgroup_root(Some(root)),
            // Removal records still end streams; only a lost one goes unnoticed.
            Err(e) => {
                tracing::warn!(error = %e, "no cgroup v2 mount: a container whose removal record is lost is not noticed, and containers running now are read from their CRI logs")
            }
        }
        // Before the file source starts (the caller starts it after this returns):
        // the logs of the containers taken over or bound here are claimed before it
        // looks.
        stage.resume_pinned();
        stage.bind_running(Path::new("/proc"));
        let thread = std::thread::Builder::new()
            .name("logtap-capture".into())
            .spawn(move || {
                // Its pipeline's tick records progress; a failed ring read leaves it dead.
                let beat = crate::metrics::health::global().register("capture");
                beat.waiting(true);
                match stage.run(&shutdown) {
                    Ok(()) => beat.stop(),
                    Err(e) => {
                        metrics::gauge!(CAPTURE_UP).set(0.0);
                        tracing::error!(error = %e, "eBPF capture stopped: reading its ring buffer failed");
                    }
                }
            })
            .map_err(|e| tracing::error!(error = %e, "starting the capture thread"))
            .ok()?;
        Some(CaptureThread { claims, thread })
    }

    /// Waits for the stage to hand on and seal what it has (after `shutdown` was set).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

//! The supervisor: a run from start to stop, and the rebuilds between.
//!
//! [`run`] starts the services and the sinks once, then reads *generations*: a file
//! source and its pipeline built from the effective config, read until shutdown or
//! until a `LogCollection` (or the set of collections containers declare in their
//! environment) changes. Between two generations the packages in flight
//! are acknowledged and the checkpoints persisted, so the next generation resumes
//! exactly where this one stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::services::Services;
use super::sinks::Sinks;
use crate::checkpoint::Registry;
use crate::config::Config;
use crate::metrics::catalogue::COLLECTION_APPLIES_TOTAL;
use crate::source::file::StopMode;

/// How long a config change waits for the packages in flight to be acknowledged
/// before rebuilding anyway (they are then read again: duplicates, not loss).
const APPLY_ACK_WAIT: Duration = Duration::from_secs(10);

/// Work a run does beside capture (`logtap run --demo`'s workload, whose output
/// capture takes from the kernel); called with whether capture is running.
pub type Workload = Box<dyn FnOnce(bool) + Send>;

#[derive(Default)]
pub struct RunOptions {
    /// Read every matched file to EOF once, ship everything, checkpoint, and return.
    pub oneshot: bool,
    /// Called once capture has started (or failed to), before the files are read.
    /// With it a one-shot run starts capture too: without, it starts none, since it
    /// would claim the CRI logs of the running containers and end their streams at
    /// its stop, leaving their lines to the next run.
    pub workload: Option<Workload>,
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
/// workers of unchanged sinks, capture, the Kubernetes watchers and the metrics
/// endpoint live on across rebuilds.
pub fn run(
    config: Config,
    options: RunOptions,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<RunSummary> {
    if let Some(selfmon) = &config.self_monitoring {
        crate::selfmon::capture_from_now(selfmon);
    }
    // The probes first, before the checkpoints are read: pinned probes another agent
    // still holds (its rollout or restart racing this start) are waited for, so this
    // agent continues from the checkpoints that one writes as it stops, and ships
    // nothing while both run (docs/capture.md, "Two agents at once").
    let capture_wanted = !options.oneshot || options.workload.is_some();
    let mut probes = config
        .capture
        .as_ref()
        .filter(|_| capture_wanted)
        .and_then(|capture| crate::capture::CaptureThread::load(capture, &shutdown));
    // Held to the end of the run, after the sinks closed and the last checkpoints
    // were written, not only while the probes are in use: the next agent starts once
    // it is released.
    let _pin_lock = probes
        .as_mut()
        .and_then(crate::capture::Probes::take_pin_lock);
    let mut services = Services::start(&config, options.oneshot, &shutdown)?;
    if options.workload.is_some() {
        services.capture_in_oneshot();
    }
    let capture_loaded = services.set_probes(probes);
    // Before the sinks: librdkafka's threads block every signal, so they cannot be
    // asked to drop later (see `privileges`).
    let keep = crate::privileges::steady_state_capabilities(capture_loaded);
    match crate::privileges::drop_capabilities(keep) {
        Ok(caps) => tracing::info!(
            effective = format_args!("{:#x}", caps.effective),
            "capabilities dropped to what the steady state needs; no new privileges"
        ),
        Err(e) => tracing::error!(error = %e, "dropping capabilities"),
    }
    let mut sinks = Sinks::new(services.registry.clone(), shutdown.clone());
    let mut summary = RunSummary::default();
    // This thread reads the files; its loop ticks the pipeline every `TICK` whatever
    // there is to read, so it always has work in the health registry's sense.
    let source_beat = crate::metrics::health::global().register("source");
    source_beat.waiting(true);
    let result = read_generations(
        &config,
        &mut services,
        &mut sinks,
        &mut summary,
        options.workload,
    );
    source_beat.stop();
    services.stop(sinks, result).map(|()| summary)
}

/// Starts the sinks and capture (and runs `workload`), then reads generation after
/// generation until one ends for good (shutdown, one-shot end, or an error).
fn read_generations(
    config: &Config,
    services: &mut Services,
    sinks: &mut Sinks,
    summary: &mut RunSummary,
    workload: Option<super::Workload>,
) -> anyhow::Result<()> {
    // The generation is read before the config it stamps: a change in between
    // makes one rebuild too many, never one too few.
    let mut seen = services.config_generation();
    let mut effective = services.effective(config);
    sinks.reconcile(&effective)?;
    services.start_capture(config, sinks);
    if let Some(workload) = workload {
        workload(services.capture_running());
    }
    services.start_self_monitoring(config, sinks);
    services.start_net_inputs(config, sinks)?;
    services.start_events(config, sinks);
    while read_generation(&effective, seen, services, sinks, summary)? {
        seen = services.config_generation();
        effective = apply(config, services);
        sinks.reconcile(&effective)?;
    }
    Ok(())
}

/// Reads one generation from `effective` (made at config generation `seen`); whether
/// a changed `LogCollection` or environment declaration asks for the next one (the
/// pipeline then quiesced: every complete record shipped).
fn read_generation(
    effective: &Config,
    seen: Option<u64>,
    services: &Services,
    sinks: &Sinks,
    summary: &mut RunSummary,
) -> anyhow::Result<bool> {
    let shutdown = &services.shutdown;
    let mut source = services.file_source(effective)?;
    let mut pipeline = services.pipeline(effective, sinks);
    let stop = || {
        if shutdown.load(Ordering::Relaxed) {
            Some(StopMode::Shutdown)
        } else if services.config_generation() != seen {
            Some(StopMode::Drain)
        } else {
            None
        }
    };
    crate::metrics::health::global().set_ready();
    let result = source.run_until(&mut pipeline, &stop);
    let shipped = pipeline.shipped();
    summary.lines += shipped.lines;
    summary.bytes += shipped.bytes;
    summary.packages += shipped.packages;
    summary.read_backend = source.backend();
    if result.is_err() || seen.is_none() || shutdown.load(Ordering::Relaxed) {
        // Seal what is pending (without inventing line ends: an incomplete last
        // line stays unacknowledged and is read again next start).
        pipeline.seal_all();
        return result.map(|()| false);
    }
    pipeline.quiesce();
    Ok(true)
}

/// Between two generations: waits for the packages in flight, persists the
/// checkpoints, and returns the new effective config.
fn apply(config: &Config, services: &Services) -> Config {
    let registry = &services.registry;
    let outcome = if wait_for_acks(registry, &services.shutdown, APPLY_ACK_WAIT) {
        "applied"
    } else {
        tracing::warn!("packages still unacknowledged at a config change; they are read again");
        "applied_unacked"
    };
    if let Err(e) = registry.persist() {
        tracing::error!(error = %e, "checkpoint before a config change failed");
    }
    let effective = services.effective(config);
    metrics::counter!(COLLECTION_APPLIES_TOTAL, "result" => outcome).increment(1);
    tracing::info!(
        sources = effective.sources.len(),
        sinks = effective.sinks.len(),
        "collections applied"
    );
    effective
}

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

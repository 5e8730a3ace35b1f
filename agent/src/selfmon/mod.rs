//! Self-monitoring: the agent's own warnings, errors and statistics as records of the
//! reserved source `logtap://self`, shipped like any other source's.
//!
//! - **Log events**: [`layer`] is a `tracing` layer installed with the agent's log
//!   output; from the start of a run ([`capture_from_now`]), every event at or above
//!   `self_monitoring.level` becomes one JSON record (`kind: "log"`, `level`, `target`,
//!   `message` and the event's fields), queued until [`SelfMonitor::start`] ships it.
//! - **Statistics**: every `self_monitoring.interval`, one record per source config
//!   (`kind: "stats"`, `config`, `lines`, `filtered`, `masked`) and one for the agent
//!   (`kind: "stats"`, `config: "*"`, and every series of [`AGENT_SERIES`] flattened to
//!   `<metric>.<label value>...`), read from the agent's own metrics.
//!
//! The records are JSON lines on a stream source of kind `self`, framed raw and
//! parsed as JSON, so every member is a field: `logtap query --source 'logtap://self'
//! --field kind=log` finds the agent's warnings. They go through a pipeline of their
//! own (one source config, routed to `self_monitoring.sink`), on a thread of their own.
//!
//! # What is not guaranteed
//!
//! A log event has no file to be read again from: events are queued in memory (at
//! most [`QUEUE_EVENTS`]) and lost with the process when it dies before they were
//! shipped; events that find the queue full are counted
//! (`logtap_self_events_dropped_total`), never waited for — a log call must not block
//! on the pipeline it may be reporting about.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

use crate::config::{Config, SelfMonitoringConfig, SourceConfig};
use crate::frame::Stream;
use crate::metrics::catalogue::SELF_EVENTS_DROPPED_TOTAL;
use crate::pipeline::{EndReason, Input, Opening, Pipeline};
use crate::source::{SourceId, SourceInfo, SourceKind};

/// The reserved path and config name of the agent's own records.
pub const SELF_SOURCE: &str = "logtap://self";

/// Log events queued for the self-monitoring thread at most.
pub const QUEUE_EVENTS: usize = 10_000;

/// The agent-wide series a statistics record carries.
pub const AGENT_SERIES: &[&str] = &[
    "logtap_lines_read_total",
    "logtap_bytes_read_total",
    "logtap_parse_failures_total",
    "logtap_lines_truncated_total",
    "logtap_dropped_bytes_total",
    "logtap_dropped_lines_total",
    "logtap_sink_errors_total",
    "logtap_read_lag_bytes",
    "logtap_open_files",
    "logtap_checkpoint_age_seconds",
    "logtap_self_events_dropped_total",
];

/// Where [`layer`] sends events, and the least severe level it sends; set while a
/// [`SelfMonitor`] runs.
struct Tap {
    events: Sender<Bytes>,
    level: tracing::Level,
}

fn tap() -> &'static Mutex<Option<Tap>> {
    static TAP: OnceLock<Mutex<Option<Tap>>> = OnceLock::new();
    TAP.get_or_init(|| Mutex::new(None))
}

/// The receiving end of the tap set by [`capture_from_now`], until a
/// [`SelfMonitor`] takes it.
fn pending() -> &'static Mutex<Option<Receiver<Bytes>>> {
    static PENDING: OnceLock<Mutex<Option<Receiver<Bytes>>>> = OnceLock::new();
    PENDING.get_or_init(|| Mutex::new(None))
}

/// Starts queueing the agent's log events at `config.level` now, for the
/// [`SelfMonitor`] started later (once the sinks run): what goes wrong while the
/// agent starts (a runtime it cannot reach, a store it cannot open) is what its
/// operators most need to see. At most [`QUEUE_EVENTS`] wait; more are counted.
pub fn capture_from_now(config: &SelfMonitoringConfig) {
    let (events, received) = crossbeam_channel::bounded(QUEUE_EVENTS);
    *pending().lock().unwrap_or_else(|e| e.into_inner()) = Some(received);
    *tap().lock().unwrap_or_else(|e| e.into_inner()) = Some(Tap {
        events,
        level: config.level,
    });
    TAPPED.store(true, Ordering::Relaxed);
}

/// Whether a tap is set: one relaxed load per log event while self-monitoring is off.
static TAPPED: AtomicBool = AtomicBool::new(false);

/// The `tracing` layer that feeds log events to a running [`SelfMonitor`].
pub fn layer() -> SelfLogLayer {
    SelfLogLayer
}

pub struct SelfLogLayer;

impl<S: tracing::Subscriber> Layer<S> for SelfLogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if !TAPPED.load(Ordering::Relaxed) {
            return;
        }
        let meta = event.metadata();
        let guard = tap().lock().unwrap_or_else(|e| e.into_inner());
        let Some(tap) = guard.as_ref() else {
            return;
        };
        // Levels compare by verbosity: ERROR < WARN < INFO.
        if *meta.level() > tap.level {
            return;
        }
        let mut record = serde_json::Map::new();
        record.insert("kind".into(), "log".into());
        record.insert("level".into(), meta.level().as_str().into());
        record.insert("target".into(), meta.target().into());
        event.record(&mut JsonFields(&mut record));
        let mut line = serde_json::to_vec(&record).unwrap_or_default();
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = tap.events.try_send(Bytes::from(line)) {
            metrics::counter!(SELF_EVENTS_DROPPED_TOTAL).increment(1);
        }
    }
}

/// Collects an event's fields as JSON members.
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// The self-monitoring thread.
pub struct SelfMonitor {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// The config the self-monitoring pipeline is built from: `config` with only the
/// self source (so the pipeline's config 0 is it, routed to its sink).
pub fn pipeline_config(config: &Config, selfmon: &SelfMonitoringConfig) -> Config {
    config.with_only_source(SourceConfig::json_lines(SELF_SOURCE, &selfmon.sink))
}

impl SelfMonitor {
    /// Starts shipping log events and statistics through `pipeline` (built from
    /// [`pipeline_config`]); `configs` are the names of the source configs the
    /// statistics cover.
    pub fn start(
        config: &SelfMonitoringConfig,
        pipeline: Pipeline,
        configs: Vec<Arc<str>>,
    ) -> std::io::Result<SelfMonitor> {
        let taken = pending().lock().unwrap_or_else(|e| e.into_inner()).take();
        let received = match taken {
            Some(received) => received,
            None => {
                capture_from_now(config);
                let taken = pending().lock().unwrap_or_else(|e| e.into_inner()).take();
                taken.expect("capture_from_now left a receiver")
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, interval) = (stop.clone(), config.interval);
            std::thread::Builder::new()
                .name("self-monitoring".into())
                .spawn(move || run(pipeline, received, interval, configs, &stop))?
        };
        Ok(SelfMonitor {
            thread: Some(thread),
            stop,
        })
    }

    /// Ships what is queued, ends the source and seals its packages (before the
    /// sinks stop).
    pub fn stop(mut self) {
        TAPPED.store(false, Ordering::Relaxed);
        tap().lock().unwrap_or_else(|e| e.into_inner()).take();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    mut pipeline: Pipeline,
    events: Receiver<Bytes>,
    interval: Duration,
    configs: Vec<Arc<str>>,
    stop: &AtomicBool,
) {
    let info = Arc::new(SourceInfo {
        id: SourceId::new_unique(0, u64::from(std::process::id())),
        kind: SourceKind::SelfMonitoring,
        path: SELF_SOURCE.into(),
        config_name: Arc::from(SELF_SOURCE),
    });
    let id = info.id;
    pipeline.opened(Opening::stream(info, 0, 0, Stream::Stdout, None));
    let mut offset = 0u64;
    let mut ship = |pipeline: &mut Pipeline, line: Bytes| {
        let len = line.len() as u64;
        pipeline.data(id, offset, line, None);
        offset += len;
    };
    let mut next_stats = Instant::now() + interval;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(line) = events.recv_timeout(Duration::from_millis(100)) {
            ship(&mut pipeline, line);
            while let Ok(line) = events.try_recv() {
                ship(&mut pipeline, line);
            }
        }
        let now = Instant::now();
        if now >= next_stats {
            next_stats = now + interval;
            for line in statistics(&configs, crate::metrics::render().as_deref()) {
                ship(&mut pipeline, line);
            }
        }
        pipeline.tick(now);
    }
    while let Ok(line) = events.try_recv() {
        ship(&mut pipeline, line);
    }
    pipeline.ended(id, EndReason::Shutdown);
    pipeline.seal_all();
}

/// The statistics records of one interval from the metrics text `exposition` (the
/// Prometheus text format the agent serves): one per config, one for the agent.
/// Without metrics (the endpoint is off) only the agent's record, saying so.
pub fn statistics(configs: &[Arc<str>], exposition: Option<&str>) -> Vec<Bytes> {
    let record = |map: serde_json::Map<String, serde_json::Value>| {
        let mut line = serde_json::to_vec(&map).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    };
    let Some(text) = exposition else {
        let mut agent = serde_json::Map::new();
        agent.insert("kind".into(), "stats".into());
        agent.insert("config".into(), "*".into());
        agent.insert("metrics".into(), "off".into());
        return vec![record(agent)];
    };
    let series: Vec<Series> = text.lines().filter_map(parse_series).collect();
    let mut out = Vec::new();
    for config in configs {
        let of = |name: &str| {
            series
                .iter()
                .filter(|(n, labels, _)| {
                    *n == name && labels.iter().any(|(_, v)| *v == config.as_ref())
                })
                .map(|(_, _, v)| v)
                .sum::<f64>()
        };
        let mut map = serde_json::Map::new();
        map.insert("kind".into(), "stats".into());
        map.insert("config".into(), config.as_ref().into());
        map.insert("lines".into(), number(of("logtap_config_lines_total")));
        map.insert("filtered".into(), number(of("logtap_lines_filtered_total")));
        map.insert("masked".into(), number(of("logtap_lines_masked_total")));
        out.push(record(map));
    }
    let mut agent = serde_json::Map::new();
    agent.insert("kind".into(), "stats".into());
    agent.insert("config".into(), "*".into());
    for (name, labels, value) in &series {
        if !AGENT_SERIES.contains(name) {
            continue;
        }
        let mut key = name.trim_start_matches("logtap_").to_string();
        for (_, label) in labels {
            let _ = write!(key, ".{label}");
        }
        agent.insert(key, number(*value));
    }
    out.push(record(agent));
    out
}

/// A whole number as an integer, anything else as a float.
fn number(v: f64) -> serde_json::Value {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        (v as i64).into()
    } else {
        serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into)
    }
}

/// One series of an exposition: name, `(label, value)` pairs in order, value.
pub(crate) type Series<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// `name{a="x",b="y"} value` → (name, [(a, x), (b, y)], value); `None` for comments,
/// histograms' parts and anything else. Label values are taken as they are written
/// (logtap's come from small fixed sets without quotes, commas or escapes).
pub(crate) fn parse_series(line: &str) -> Option<Series<'_>> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let labels = labels
        .split(',')
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k, v.trim_matches('"'))))
        .collect();
    Some((name, labels, value))
}

#[cfg(test)]
mod tests;

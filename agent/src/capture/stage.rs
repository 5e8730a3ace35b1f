//! The capture stage: probe events in, ordered container streams into the pipeline.
//!
//! Runs on its own thread and drives its own pipeline through the pipeline's
//! [`Input`] (framers and package builders of the captured streams), sharing the
//! sink queues and the checkpoint registry with the file source's pipeline.
//!
//! # Streams
//!
//! A container run is captured from its first write: the kernel binds its stdout and
//! stderr at the first exec in its cgroup and numbers their bytes from 0 (the stream
//! offset), the same numbering its CRI log gives them. Each stream is one source
//! (`<log path>#stdout`); its checkpoint is a stream offset.
//!
//! # Gaps
//!
//! A hole in the offsets that outlives `reorder_grace`, or more bytes waiting behind
//! a hole than `max_pending`, is repaired from the CRI log ([`CriStreamReader`]). A
//! hole the log does not fill within `repair_wait` is given up and counted. The log
//! reads of all streams are taken in turns of one step under a node-wide budget per
//! tick, with the ring drained between them (see `schedule`). Bytes
//! waiting behind holes are bounded per stream (`max_pending`) and for all streams
//! together (`max_buffered`, see `keep_budget`). When the container's cgroup goes
//! away, a stream that handed on every byte up to the kernel's final offset for it
//! ends without reading its log (see `StreamEntry::kernel_end`); the others are read
//! from the log up to that offset, or, when it is unknown, until the log stops
//! growing, which catches holes at the very end of a stream.
//!
//! # Containers running before the agent
//!
//! Their pipes are bound at start-up ([`CaptureStage::bind_running`], from `/proc`), so
//! the kernel numbers their streams from 0 at the bind. Their CRI logs ship what came
//! before (read from the start, or from an earlier run's checkpoint), and capture takes
//! over at the seam: where the first captured bytes are in the log (see `seam`). Until
//! the seam is found, captured records wait; a seam that cannot be made exact leaves
//! the stream on its log.
//!
//! # Restart
//!
//! With pinned probes (`capture.pin`) the kernel's streams outlive the agent: the next
//! one takes them over where this one stopped ([`CaptureStage::resume_pinned`], see
//! `resume`). Without, a stream checkpointed by an earlier run continues from its CRI
//! log, at its checkpointed stream offset: bytes written while the agent was down are
//! read, none twice. When its container still runs, it is bound again at start-up and
//! capture takes over at the seam.

use std::collections::HashMap;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::Claims;
use super::cri_log::{CriStreamReader, ReadBlock};
use super::existing;
use super::probe::ProbeEvent;
use super::runs::{RecordRun, RunGatherer};
use super::schedule::{RepairTurns, TICK_REPAIR_BYTES, TickBudget, drain_between_bytes};
use super::seam::{Decision, Seam};
use super::stream::{KEPT_BYTES, Run, StreamAssembler};
use crate::checkpoint::SharedRegistry;
use crate::config::CaptureConfig;
use crate::discovery::PodLogRef;
use crate::frame::Stream;
use crate::metrics::catalogue::{
    CAPTURE_BUDGET_SPILLS_TOTAL, CAPTURE_CRI_MALFORMED_LINES_TOTAL, CAPTURE_EXITS_INFERRED_TOTAL,
    CAPTURE_GAPS_TOTAL, CAPTURE_REPAIR_MISMATCHES_TOTAL, CAPTURE_REPAIRED_BYTES_TOTAL,
    CAPTURE_SEAMS_TOTAL, CAPTURE_SPILLED_BYTES_TOTAL, CAPTURE_STREAM_ENDS_TOTAL,
    CAPTURE_STREAMS_DECLINED_TOTAL, CAPTURE_UNBOUND_RECORDS_TOTAL,
    CAPTURE_UNREPAIRABLE_BYTES_TOTAL,
};
use crate::pipeline::input::{EndReason, Input, Opening};
use crate::source::file::FileIdentity;
use crate::source::{CAPTURE_DEV, SourceId, SourceInfo, SourceKind};

/// How often streams are checked for holes, endings and log growth.
const TICK: Duration = Duration::from_millis(50);
/// A stream whose container is gone ends once its log stopped growing this long.
const END_SETTLE: Duration = Duration::from_millis(300);
/// A staged chunk is handed on at this size even within one batch of events.
const STAGE_BYTES: usize = 256 * 1024;
/// Runs at least this large are handed on as they came rather than joined to the
/// staged bytes (one copy less; framing a chunk of this size costs no more per line).
const JOIN_BELOW: usize = 16 * 1024;
/// Stream bytes read back from a CRI log at once (one turn, see `schedule`): each
/// step is handed on to the
/// pipeline (which ships it or blocks on a full sink queue) before the next is read, so
/// the repair path holds at most one step besides the shared read block, whatever the
/// hole's size. Only the step that reaches the hole's end can be checked against the
/// captured bytes after it.
const REPAIR_STEP_BYTES: u64 = 256 << 10;
/// What the open packages of all captured streams may hold together (records' bytes
/// and vectors; see `Input::bound_open_packages`): each stream's package is bounded
/// by `batch.max_bytes` and `batch.timeout`, which at 200 streams of 0.5 MB/s is
/// 20 MB of records and the 256 KiB run blocks they are slices of, kept alive. Out
/// of the agent's 64 MiB: the ring (16 MiB by default, resident from the start: it
/// is part of the budget), 4 MiB `max_buffered`, one 4 MiB poll, the binary's pages
/// (about 10 MiB), the sink queues and what the allocator holds between two trims
/// (up to about as much again as the heap's live bytes: `docs/benchmarks.md`,
/// "Scale") leave about this much. 8 MiB until 2026-12-07: full in every run at
/// 200 × 0.5 MB/s, and 64–66 MiB of RSS there with `max_buffered` at 4 MiB.
pub const OPEN_PACKAGE_BYTES: usize = 4 << 20;
/// How often ended streams are checked for their CRI log's removal.
const PRUNE_INTERVAL: Duration = Duration::from_secs(30);
/// Captured bytes after a hole compared with the CRI log before the hole is repaired
/// (those before it: the stream's kept bytes, [`KEPT_BYTES`]).
const REPAIR_CHECK_BYTES: usize = KEPT_BYTES;
/// How often at most the prefix's cgroups are walked for cgroups whose creation
/// record was lost (see `find_lost_cgroups`).
const LOOKUP_INTERVAL: Duration = Duration::from_millis(200);
/// How often the directories of watched cgroups are looked at (see `sweep_cgroups`).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How long a cgroup's directory must have been gone before its removal record is
/// taken as lost: a record still behind others in the ring has had that long to come.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// Where probe events come from: the loaded probes, or a script in tests.
pub trait EventFeed: Send {
    /// Waits up to `timeout`, then hands the available events to `on_event` (a
    /// bounded amount: the rest waits for the next poll).
    fn poll(
        &mut self,
        timeout: Duration,
        on_event: &mut dyn FnMut(ProbeEvent<'_>),
    ) -> io::Result<usize>;
    /// Bytes of events that wait to be polled (the ring's unread part): the stage
    /// polls between its repair steps when they are many (see `schedule`).
    fn backlog(&self) -> usize;
    /// The cgroup is gone and handled: the kernel may forget it and its streams.
    /// Returns each forgotten stream's final offset, when it is exact and numbered from
    /// the stream's first byte (bound at the container's first exec): the bytes the
    /// kernel accepted into the pipe since the bind, read before the stream is
    /// removed. A stream left out has no known end (see `StreamEntry::kernel_end`).
    fn forget(&mut self, cgroup_id: u64) -> Vec<(Stream, u64)>;
    /// Capture's source does not select this stream: the kernel may stop copying it
    /// (its cgroup stays watched, so its removal still comes).
    fn decline(&mut self, cgroup_id: u64, stream: Stream);
    /// Watch a cgroup that existed before the probes, and bind the pipes at fd 1 and
    /// 2 of its process `pid`, numbered from 0 now.
    fn watch_existing(&mut self, cgroup_id: u64, pid: u32) -> io::Result<()>;
    /// The streams and cgroups of probes taken over from an earlier agent's pins;
    /// empty for probes loaded afresh.
    fn pinned(&mut self) -> PinnedState {
        PinnedState::default()
    }
    /// The seam of a stream bound while its container ran was found: `base` is the
    /// stream offset of the kernel's offset 0 (kept for an agent that takes the
    /// probes over).
    fn set_base(&mut self, _cgroup_id: u64, _stream: Stream, _base: u64) {}
}

/// What capture needs to know about the container behind a cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedContainer {
    pub id: String,
    /// The run's live CRI log (`/var/log/pods/<ns>_<pod>_<uid>/<container>/<n>.log`):
    /// the repair path.
    pub log_path: Option<PathBuf>,
    /// Whether capture's source config selects the container (its `selector`; true
    /// without one). One it leaves out is not captured: the configs that select it
    /// read its CRI log, so its lines are shipped once, by them.
    pub selected: bool,
}

/// Container lookups (the container registry, or a table in tests).
pub trait ContainerResolver: Send {
    /// The container whose cgroup is at `cgroup_path` (below the cgroup v2 root).
    fn resolve(&mut self, cgroup_path: &[u8]) -> Option<CapturedContainer>;
    /// Whether the run writing `log_path` still runs; `None` when unknown.
    fn is_running(&mut self, log_path: &Path) -> Option<bool>;
}

struct StreamEntry {
    stream: Stream,
    cgroup: Option<u64>,
    assembler: StreamAssembler,
    log_path: Option<PathBuf>,
    reader: Option<CriStreamReader>,
    /// Read from the log, not used yet (the reader cannot go back).
    read_ahead: Vec<Run>,
    /// Bytes that arrived in order, not handed on yet: one chunk per burst.
    staged: Staged,
    /// The stream offset of `staged`'s first byte.
    staged_offset: u64,
    staged_time_ns: i64,
    /// Read the CRI log up to its end on every tick: set for streams resumed from a
    /// checkpoint (forever) and for streams that dropped waiting bytes (until
    /// `next_offset` passes the value).
    follow_until: Option<u64>,
    /// When the container's cgroup went away.
    removed_at: Option<Instant>,
    /// The log's reach and when it last changed, to tell when it stopped growing.
    log_reach: (u64, Instant),
    hole_counted: Option<u64>,
    /// Malformed CRI lines already counted in the metric.
    malformed_counted: u64,
    /// Bound while it ran (at start-up): the seam between its log and capture is
    /// being looked for, and captured records wait. `None` once decided.
    seam: Option<Box<PendingSeam>>,
    /// The stream offset of the kernel's offset 0: B₀ for a stream bound while it
    /// ran, else 0.
    base: u64,
    /// No exact seam: the log is the stream, and captured records are ignored.
    log_only: bool,
    /// The kernel's final offset of the stream, read from its map when the cgroup's
    /// removal was handled (`EventFeed::forget`); `None` while it runs, or when unknown.
    ///
    /// Exact for every writer in the container: the kernel removes a cgroup only once
    /// no task is left in it, so each of their writes had returned, and the probe adds
    /// a write's length to the offset when it returns, before it reserves the write's
    /// records. Those records are thus ahead of the removal record in the ring (it is
    /// reserved later, and the reader stops at a record still being written), and the
    /// stage handles a poll's removals after its data: when `kernel_end` is set, every
    /// record of the stream that the ring kept has been pushed. So a stream whose
    /// `next_offset` reached it, with no hole and nothing pending, has every byte, and
    /// ends without reading its CRI log; any shortfall (ring-full drops at the end,
    /// records larger than `max_records_per_write`) is a trailing hole, read from the
    /// log as before. Not for streams whose numbering came from elsewhere (seam,
    /// resumed, following their log): there it stays `None`.
    kernel_end: Option<u64>,
    /// The CRI log was read after the container's removal, for the stream's tail.
    tail_read: bool,
    /// The end of the hole this tick repairs (its `reorder_grace` passed, or too much
    /// waits behind it), set when the tick looks at the stream: a later hole gets
    /// its own grace.
    due_hole_end: Option<u64>,
}

/// A stream bound while it ran, before its seam is known.
struct PendingSeam {
    seam: Seam,
    /// Reads the log from where it ended at the bind (`Seam::log_wanted`).
    reader: CriStreamReader,
    /// Captured records by kernel offset, at most `max_pending` bytes (the oldest go
    /// first: the log has them, and holes are repaired from it).
    held: std::collections::VecDeque<(u64, Bytes, i64)>,
    held_bytes: usize,
}

pub struct CaptureStage<F: EventFeed, R: ContainerResolver> {
    options: CaptureConfig,
    feed: F,
    resolver: R,
    /// The stage's own pipeline.
    pipeline: Box<dyn Input + Send>,
    registry: SharedRegistry,
    claims: Arc<Claims>,
    /// Paths of the cgroups seen created, by id.
    cgroups: HashMap<u64, Vec<u8>>,
    bound: HashMap<(u64, Stream), SourceId>,
    /// Streams of containers capture's source does not select: their records are
    /// ignored (the CRI log is theirs) until the cgroup goes away. Disjoint from
    /// `bound`.
    declined: std::collections::HashSet<(u64, Stream)>,
    streams: HashMap<SourceId, StreamEntry>,
    /// The stream of the last run handled and its source: a cache of `bound`
    /// (runs of one stream tend to follow each other). Cleared whenever an entry
    /// leaves `bound`.
    last_bound: Option<((u64, Stream), SourceId)>,
    /// Ring records of the current poll, gathered into runs.
    gatherer: RunGatherer,
    /// The runs of the current poll (kept for its allocation).
    polled: Vec<RecordRun>,
    /// Records and bytes of bound streams since the metrics were last updated.
    counts: RecordCounts,
    /// The handles of the metrics counted per poll and per tick.
    metrics: StageMetrics,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, to date records by their kernel time.
    realtime_offset_ns: i64,
    runs: Vec<Run>,
    /// The read buffer of every CRI log read (repairs, seams, start-up): one at a time,
    /// on this thread.
    read_block: ReadBlock,
    /// The streams waiting for a repair step, served round-robin under a node-wide
    /// budget per tick (see `schedule`). Holds only ids of `streams`.
    turns: RepairTurns<SourceId>,
    last_tick: Instant,
    /// Streams shipped to their end whose CRI log still exists: their claims and
    /// closed checkpoints stay until the kubelet removes the log.
    ended: Vec<(SourceId, PathBuf)>,
    last_prune: Instant,
    /// The cgroup v2 mount, where a cgroup whose removal record was lost is seen to be
    /// gone; `None`: not looked at.
    cgroup_root: Option<PathBuf>,
    /// Cgroups whose directory was seen under `cgroup_root` (the cgroup's id as its
    /// inode), with the time it was first found missing. Only a cgroup seen there can
    /// be taken as gone: in another cgroup namespace the paths do not resolve at all.
    sighted: HashMap<u64, Option<Instant>>,
    last_sweep: Instant,
    /// Cgroups whose records came while their creation record never did (lost to a
    /// full ring): looked for below the prefix by `find_lost_cgroups`.
    unknown_cgroups: std::collections::HashSet<u64>,
    last_lookup: Option<Instant>,
}

impl<F: EventFeed, R: ContainerResolver> CaptureStage<F, R> {
    pub fn new(
        options: CaptureConfig,
        feed: F,
        resolver: R,
        pipeline: impl Input + Send + 'static,
        registry: SharedRegistry,
        claims: Arc<Claims>,
    ) -> CaptureStage<F, R> {
        let mut pipeline = pipeline;
        pipeline.bound_open_packages(OPEN_PACKAGE_BYTES);
        let mut stage = CaptureStage {
            options,
            feed,
            resolver,
            pipeline: Box::new(pipeline),
            registry,
            claims,
            cgroups: HashMap::new(),
            bound: HashMap::new(),
            declined: std::collections::HashSet::new(),
            streams: HashMap::new(),
            last_bound: None,
            gatherer: RunGatherer::default(),
            polled: Vec::new(),
            counts: RecordCounts::default(),
            metrics: StageMetrics::default(),
            realtime_offset_ns: realtime_offset_ns(),
            runs: Vec::new(),
            read_block: ReadBlock::default(),
            turns: RepairTurns::default(),
            last_tick: Instant::now(),
            ended: Vec::new(),
            last_prune: Instant::now(),
            cgroup_root: None,
            sighted: HashMap::new(),
            last_sweep: Instant::now(),
            unknown_cgroups: Default::default(),
            last_lookup: None,
        };
        stage.resume_checkpointed();
        stage
    }

    /// Looks for removed cgroups under `root` (the cgroup v2 mount), for those whose
    /// removal record was lost (see `sweep_cgroups`).
    pub fn set_cgroup_root(&mut self, root: Option<PathBuf>) {
        self.cgroup_root = root;
    }

    /// Runs until `shutdown` is set; then hands on what it has and ends every stream
    /// as [`EndReason::Shutdown`], so the pipeline ships every complete record (the
    /// rest is read again from the CRI log after a restart).
    pub fn run(mut self, shutdown: &AtomicBool) -> io::Result<()> {
        while !shutdown.load(Ordering::Relaxed) {
            self.poll_once(TICK)?;
        }
        let ids: Vec<SourceId> = self.streams.keys().copied().collect();
        for id in ids {
            self.hand_on_staged(id);
            self.pipeline.ended(id, EndReason::Shutdown);
        }
        Ok(())
    }

    /// One round: events for up to `timeout`, then the periodic checks when due.
    pub fn poll_once(&mut self, timeout: Duration) -> io::Result<()> {
        let now = self.poll_events(timeout)?;
        if now.duration_since(self.last_tick) >= TICK {
            self.last_tick = now;
            self.tick(now)?;
        }
        Ok(())
    }

    /// One poll of the feed (at most [`POLL_BYTES`](super::probe::POLL_BYTES) of
    /// ring), its events handled and its data handed on; returns when it was polled.
    fn poll_events(&mut self, timeout: Duration) -> io::Result<Instant> {
        // Events borrow the ring buffer: copy them out, data gathered into runs (see
        // `runs`: a record costs a compare and a copy), then handle them.
        let mut events: Vec<OwnedEvent> = Vec::new();
        let gatherer = &mut self.gatherer;
        self.feed.poll(timeout, &mut |event| match event {
            ProbeEvent::Data {
                cgroup_id,
                stream,
                offset,
                bytes,
                ktime_ns,
                ..
            } => gatherer.record(cgroup_id, stream, offset, bytes, ktime_ns),
            other => events.extend(OwnedEvent::from(other)),
        })?;
        let mut runs = std::mem::take(&mut self.polled);
        self.gatherer.take(&mut runs);
        let now = Instant::now();
        // Lifecycle events and data keep their relative order only per kind; a stream
        // is bound before its first byte is written, and removed after its last, so
        // bindings go first and removals last.
        for e in events
            .iter()
            .filter(|e| !matches!(e, OwnedEvent::Removed { .. }))
        {
            self.lifecycle(e);
        }
        for run in runs.drain(..) {
            self.data(run, now);
        }
        self.polled = runs;
        self.counts.flush(&mut self.metrics);
        self.keep_budget();
        for e in events
            .iter()
            .filter(|e| matches!(e, OwnedEvent::Removed { .. }))
        {
            self.lifecycle(e);
        }
        let ids: Vec<SourceId> = self.streams.keys().copied().collect();
        for id in ids {
            self.hand_on_staged(id);
        }
        Ok(now)
    }

    /// The periodic part: each stream looked at, the repair steps it wants taken in
    /// turns under the tick's budget (the ring drained between them when it fills),
    /// then what follows from them (spills, holes given up, streams ended).
    fn tick(&mut self, now: Instant) -> io::Result<()> {
        self.find_lost_cgroups(now);
        let ids: Vec<SourceId> = self.streams.keys().copied().collect();
        for &id in &ids {
            self.check_stream(id, now);
        }
        self.take_repair_turns(now)?;
        for id in ids {
            self.after_repairs(id, now);
        }
        self.pipeline.tick(now);
        if now.duration_since(self.last_prune) >= PRUNE_INTERVAL {
            self.last_prune = now;
            self.prune_ended();
        }
        if now.duration_since(self.last_sweep) >= SWEEP_INTERVAL {
            self.last_sweep = now;
            self.sweep_cgroups(now);
        }
        let m = &mut self.metrics;
        m.streams.get().set(self.streams.len() as f64);
        m.watched.get().set(self.cgroups.len() as f64);
        Ok(())
    }

    /// Repair steps, one per turn, round-robin over the streams that want one, until
    /// they want no more or the tick's budget ([`TICK_REPAIR_BYTES`] of stream moved
    /// on, all streams together) is spent; the streams left waiting go first next
    /// tick. Between two steps the ring is drained when it holds an eighth of its
    /// size or more, so repairs never leave it to overflow.
    fn take_repair_turns(&mut self, now: Instant) -> io::Result<()> {
        let mut budget = TickBudget::new(TICK_REPAIR_BYTES);
        let drain_at = drain_between_bytes(self.options.ring_bytes);
        while budget.left()
            && let Some(id) = self.turns.next()
        {
            let Some(entry) = self.streams.get_mut(&id) else {
                continue;
            };
            let Some(step) = entry.next_repair() else {
                continue;
            };
            entry.tail_read |= step.tail;
            let before = entry.assembler.next_offset();
            self.repair(id, step.from, step.to, now);
            let Some(entry) = self.streams.get(&id) else {
                continue;
            };
            let moved = entry.assembler.next_offset().saturating_sub(before);
            budget.spend(step.from, step.to, moved);
            // A step that moved the stream no further (the log has no more yet, or a
            // check waits for it) ends its turns for this tick.
            if moved > 0 {
                self.turns.want(id);
            }
            if self.feed.backlog() >= drain_at {
                self.poll_events(Duration::ZERO)?;
            }
        }
        Ok(())
    }

    fn lifecycle(&mut self, event: &OwnedEvent) {
        match event {
            OwnedEvent::Created { cgroup_id, path } => {
                if let Some(root) = &self.cgroup_root
                    && cgroup_present(root, path, *cgroup_id)
                {
                    self.sighted.insert(*cgroup_id, None);
                }
                self.cgroups.insert(*cgroup_id, path.clone());
            }
            OwnedEvent::Bound { cgroup_id, stream } => self.bind(*cgroup_id, *stream),
            OwnedEvent::Removed { cgroup_id } => {
                let now = Instant::now();
                // Read before anything else: the final offsets are the kernel's until
                // the streams leave its map.
                let finals = self.feed.forget(*cgroup_id);
                for stream in [Stream::Stdout, Stream::Stderr] {
                    self.declined.remove(&(*cgroup_id, stream));
                    self.last_bound = None;
                    if let Some(id) = self.bound.remove(&(*cgroup_id, stream))
                        && let Some(entry) = self.streams.get_mut(&id)
                    {
                        entry.removed_at = Some(now);
                        entry.log_reach.1 = now;
                        let numbered_by_kernel = entry.base == 0
                            && entry.seam.is_none()
                            && !entry.log_only
                            && entry.follow_until.is_none();
                        entry.kernel_end = finals
                            .iter()
                            .find(|(s, _)| *s == stream)
                            .map(|&(_, end)| end)
                            .filter(|_| numbered_by_kernel);
                    }
                }
                self.cgroups.remove(cgroup_id);
                self.sighted.remove(cgroup_id);
            }
        }
    }

    /// A container whose removal record was lost (a full ring buffer) would never
    /// end: its tail holes would stay unrepaired, its stream and its kernel map
    /// entries would stay forever. Its cgroup's directory is gone though (the runtime
    /// removes it when the container exits): a cgroup seen under the cgroup v2 mount
    /// and now missing (or another cgroup at its path) for [`EXIT_GRACE`] is ended as
    /// its removal record would have ended it, and counted.
    fn sweep_cgroups(&mut self, now: Instant) {
        let Some(root) = &self.cgroup_root else {
            return;
        };
        let mut gone = Vec::new();
        for (&id, path) in &self.cgroups {
            let present = cgroup_present(root, path, id);
            match self.sighted.get_mut(&id) {
                Some(missing) if present => *missing = None,
                None if present => {
                    self.sighted.insert(id, None);
                }
                Some(Some(since)) if now.duration_since(*since) >= EXIT_GRACE => gone.push(id),
                Some(missing @ None) => *missing = Some(now),
                // Never seen: its path does not resolve from here; nothing to infer.
                _ => {}
            }
        }
        for cgroup_id in gone {
            metrics::counter!(CAPTURE_EXITS_INFERRED_TOTAL).increment(1);
            tracing::info!(
                cgroup_id,
                "a captured cgroup is gone but its removal record never came (ring buffer full?): its streams end"
            );
            self.lifecycle(&OwnedEvent::Removed { cgroup_id });
        }
    }

    /// Cgroups whose records came without their creation record (a full ring lost
    /// it, and often the binding records too): the kernel copies only the writes of
    /// cgroups it watches, which are below the prefix, so each is looked for there by
    /// its directory's inode (its id), and once found is known as if its creation
    /// record had come. Its streams are then bound by their next records, from
    /// offset 0: the records dropped before (counted in
    /// `logtap_capture_unbound_records_total`) are a hole, read back from the CRI
    /// log. Before, such a container was never captured (its log was left to the file
    /// source after `claim_wait`). One walk of the prefix's directories for all
    /// cgroups waiting, at most once per [`LOOKUP_INTERVAL`]; one not found (gone
    /// already, or outside the agent's cgroup namespace) is looked for again only
    /// when more of its records come.
    fn find_lost_cgroups(&mut self, now: Instant) {
        if self.unknown_cgroups.is_empty()
            || self
                .last_lookup
                .is_some_and(|t| now.duration_since(t) < LOOKUP_INTERVAL)
        {
            return;
        }
        let ids = std::mem::take(&mut self.unknown_cgroups);
        self.last_lookup = Some(now);
        self.look_up_cgroups(&ids);
    }

    /// Looks for the cgroups `ids` below the prefix by their ids; those found are
    /// known from now on (see `find_lost_cgroups`).
    fn look_up_cgroups(&mut self, ids: &std::collections::HashSet<u64>) {
        let Some(root) = &self.cgroup_root else {
            return;
        };
        let found = existing::cgroup_paths(root, &self.options.cgroup_prefix, ids);
        for (cgroup_id, path) in found {
            tracing::info!(
                cgroup_id,
                cgroup = %String::from_utf8_lossy(&path),
                "a captured cgroup's creation record never came (ring buffer full?): found by its id"
            );
            self.sighted.insert(cgroup_id, None);
            self.cgroups.insert(cgroup_id, path);
        }
    }

    /// The kernel bound a stream of a new container: it becomes a source.
    fn bind(&mut self, cgroup_id: u64, stream: Stream) {
        if self.bound.contains_key(&(cgroup_id, stream)) {
            return;
        }
        if self.declined.contains(&(cgroup_id, stream)) {
            return;
        }
        if !self.cgroups.contains_key(&cgroup_id) {
            // Its creation record was lost to a full ring, its binding record was not:
            // looked for now, or the stream would be bound to no container and no CRI
            // log (its holes unrepairable; seen at 200 writers × 500 kB/s).
            self.look_up_cgroups(&std::collections::HashSet::from([cgroup_id]));
        }
        let cgroup_path = self.cgroups.get(&cgroup_id).cloned().unwrap_or_default();
        let container = self.resolver.resolve(&cgroup_path);
        if container.as_ref().is_some_and(|c| !c.selected) {
            tracing::debug!(
                cgroup = %String::from_utf8_lossy(&cgroup_path),
                ?stream,
                "capture's source does not select this container: left to its CRI log"
            );
            metrics::counter!(CAPTURE_STREAMS_DECLINED_TOTAL).increment(1);
            self.declined.insert((cgroup_id, stream));
            self.feed.decline(cgroup_id, stream);
            return;
        }
        let log_path = container.as_ref().and_then(|c| c.log_path.clone());
        if log_path.is_none() {
            tracing::warn!(
                cgroup = %String::from_utf8_lossy(&cgroup_path),
                "captured container has no known CRI log: its holes cannot be repaired"
            );
        }
        let id = self.open_source(&cgroup_path, container, stream);
        self.bound.insert((cgroup_id, stream), id);
        self.streams.insert(
            id,
            StreamEntry::new(stream, Some(cgroup_id), log_path, 0, &self.options),
        );
    }

    /// A new source for `stream` of `container`, from stream offset 0; its CRI log
    /// claimed.
    fn open_source(
        &mut self,
        cgroup_path: &[u8],
        container: Option<CapturedContainer>,
        stream: Stream,
    ) -> SourceId {
        let log_path = container.as_ref().and_then(|c| c.log_path.clone());
        let path = stream_path(log_path.as_deref(), cgroup_path, stream);
        let identity = stream_identity(&path);
        let id = SourceId::new_unique(CAPTURE_DEV, identity.inode);
        self.registry.register(id, identity, path.clone(), 0);
        if let Some(log) = &log_path {
            self.claims.claim(log);
        }
        tracing::debug!(source = %id, path = %path.display(), "capturing stream");
        let info = Arc::new(SourceInfo {
            id,
            kind: SourceKind::Capture,
            path,
            config_name: self.options.source_name.clone(),
        });
        let pod = log_path
            .as_deref()
            .and_then(PodLogRef::from_path)
            .map(|log| (log, container.as_ref().map(|c| c.id.clone())));
        self.pipeline
            .opened(Opening::stream(info, self.options.source, 0, stream, pod));
        id
    }

    /// Binds the containers that were running before the agent started (found in
    /// `proc`, see `existing`): their CRI logs ship what they wrote until the seam,
    /// capture what follows (see the module docs). A container whose log the file
    /// source has read in an earlier run stays with the file source (its checkpoint
    /// is a file offset, not a stream offset).
    ///
    /// Called before the file source starts: the logs are claimed before it looks.
    pub fn bind_running(&mut self, proc: &Path) {
        let Some(root) = self.cgroup_root.clone() else {
            return;
        };
        for found in existing::running_containers(proc, &root, &self.options.cgroup_prefix) {
            if self.cgroups.contains_key(&found.cgroup_id) {
                continue;
            }
            let Some(container) = self.resolver.resolve(&found.cgroup_path) else {
                continue;
            };
            if !container.selected {
                continue;
            }
            let Some(log) = container.log_path.clone() else {
                continue;
            };
            if self.read_by_file_source(&log) {
                tracing::info!(log = %log.display(), "a running container's log is read by the file source since an earlier run: not captured");
                continue;
            }
            let streams = [Stream::Stdout, Stream::Stderr];
            let resumed_at = streams.map(|s| {
                let id = self.resumed_stream(&log, s)?;
                Some(self.streams.get(&id)?.assembler.next_offset())
            });
            let read = match read_running_log(&mut self.read_block, &log, resumed_at) {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(log = %log.display(), error = %e, "reading a running container's CRI log: not captured");
                    continue;
                }
            };
            if let Err(e) = self.feed.watch_existing(found.cgroup_id, found.pid) {
                tracing::warn!(pid = found.pid, error = %e, "binding a running container's pipes: not captured");
                continue;
            }
            if cgroup_present(&root, &found.cgroup_path, found.cgroup_id) {
                self.sighted.insert(found.cgroup_id, None);
            }
            self.cgroups
                .insert(found.cgroup_id, found.cgroup_path.clone());
            let StartupRead {
                lower,
                seam_readers,
                followers,
            } = read;
            let each = streams.into_iter().zip(seam_readers).zip(followers);
            for (((stream, reader), follower), lower) in each.zip(lower) {
                let fd = proc.join(format!("{}/fd/{}", found.pid, stream_fd(stream)));
                let window = existing::seam_window(&fd);
                let id = self.resumed_stream(&log, stream).unwrap_or_else(|| {
                    self.open_source(&found.cgroup_path, Some(container.clone()), stream)
                });
                let entry = self.streams.entry(id).or_insert_with(|| {
                    StreamEntry::new(stream, None, Some(log.clone()), 0, &self.options)
                });
                entry.cgroup = Some(found.cgroup_id);
                entry.follow_until = Some(u64::MAX);
                if entry.reader.is_none() {
                    entry.reader = follower;
                }
                entry.seam = Some(Box::new(PendingSeam {
                    seam: Seam::new(lower, window),
                    reader,
                    held: Default::default(),
                    held_bytes: 0,
                }));
                self.bound.insert((found.cgroup_id, stream), id);
                tracing::info!(source = %id, log_offset = lower, window, "a running container's stream bound: its log ships it until capture's seam is found");
            }
        }
    }

    /// The stream of `log` resumed from an earlier run's checkpoint, if any.
    fn resumed_stream(&self, log: &Path, stream: Stream) -> Option<SourceId> {
        self.streams.iter().find_map(|(id, e)| {
            (e.cgroup.is_none() && e.stream == stream && e.log_path.as_deref() == Some(log))
                .then_some(*id)
        })
    }

    /// Whether the file source checkpointed a file of `log`'s run (the live log or a
    /// rotation of it).
    fn read_by_file_source(&self, log: &Path) -> bool {
        let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else {
            return false;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        entries.flatten().any(|e| {
            e.file_name().as_bytes().starts_with(name.as_bytes())
                && e.metadata().is_ok_and(|m| {
                    use std::os::unix::fs::MetadataExt;
                    self.registry.lookup(m.dev(), m.ino()).is_some()
                })
        })
    }

    /// A run of records of one stream (see `runs`).
    fn data(&mut self, run: RecordRun, now: Instant) {
        let RecordRun {
            cgroup_id,
            stream,
            offset,
            bytes,
            records,
            ktime_ns,
        } = run;
        let id = match self.last_bound {
            Some((key, id)) if key == (cgroup_id, stream) => id,
            _ => {
                let Some(id) = self.bound_source(cgroup_id, stream, records) else {
                    return;
                };
                self.last_bound = Some(((cgroup_id, stream), id));
                id
            }
        };
        let len = bytes.len() as u64;
        self.counts.records += records;
        self.counts.bytes += len;
        let written_ns = ktime_ns as i64 + self.realtime_offset_ns;
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        if entry.log_only {
            return;
        }
        if let Some(pending) = &mut entry.seam {
            pending.hold(offset, bytes, written_ns, self.options.max_pending);
            return;
        }
        let offset = offset + entry.base;
        let a = &mut entry.assembler;
        if offset == a.next_offset() && a.pending_bytes() == 0 {
            // The common case: in order. Small runs (streams whose records interleave
            // in the ring) are staged, so a burst is one chunk; a large run is a chunk
            // of its own, not copied again.
            if bytes.len() >= JOIN_BELOW && !entry.staged.is_empty() {
                self.hand_on_staged(id);
            }
            let entry = self.streams.get_mut(&id).expect("present above");
            let a = &mut entry.assembler;
            if entry.staged.is_empty() {
                entry.staged_offset = offset;
                entry.staged_time_ns = written_ns;
            }
            a.advance_in_order(&bytes);
            entry.staged.push(bytes);
            if entry.staged.len() >= STAGE_BYTES {
                self.hand_on_staged(id);
            }
            return;
        }
        self.hand_on_staged(id);
        let entry = self.streams.get_mut(&id).expect("present above");
        entry
            .assembler
            .push(offset, bytes, written_ns, now, &mut self.runs);
        self.hand_on_runs(id);
    }

    /// Keeps the bytes all streams hold waiting within `max_buffered` (each stream's
    /// own bound, `max_pending`, times a node's hundreds of streams is far more than
    /// the agent's memory): beyond it, the streams holding the most behind holes
    /// spill theirs, then the streams waiting for their seam drop their oldest held
    /// records; their CRI logs supply both (counted as spilled, then as repaired;
    /// nothing is lost). Checked after every poll, so the bound is exceeded at most by
    /// what one poll of the ring brings (at most [`POLL_BYTES`](super::probe::POLL_BYTES)
    /// of ring), and by what cannot be dropped (the seams' log windows, bytes read
    /// ahead from a log).
    fn keep_budget(&mut self) {
        let mut total: usize = self.streams.values().map(StreamEntry::buffered).sum();
        if total > self.options.max_buffered {
            let mut largest: Vec<(usize, SourceId)> = self
                .streams
                .iter()
                .map(|(id, e)| (e.assembler.pending_bytes(), *id))
                .filter(|&(n, _)| n > 0)
                .collect();
            largest.sort_unstable_by(|a, b| b.cmp(a));
            for (_, id) in largest {
                if total <= self.options.max_buffered {
                    break;
                }
                if let Some(entry) = self.streams.get_mut(&id) {
                    total -= entry.spill();
                    metrics::counter!(CAPTURE_BUDGET_SPILLS_TOTAL).increment(1);
                }
            }
        }
        if total > self.options.max_buffered {
            let mut held: Vec<(usize, SourceId)> = self
                .streams
                .iter()
                .filter_map(|(id, e)| Some((e.seam.as_ref()?.held_bytes, *id)))
                .filter(|&(n, _)| n > 0)
                .collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            for (_, id) in held {
                if total <= self.options.max_buffered {
                    break;
                }
                if let Some(pending) = self.streams.get_mut(&id).and_then(|e| e.seam.as_mut()) {
                    let dropped = pending.shed(total - self.options.max_buffered);
                    total -= dropped;
                    metrics::counter!(CAPTURE_SPILLED_BYTES_TOTAL).increment(dropped as u64);
                    metrics::counter!(CAPTURE_BUDGET_SPILLS_TOTAL).increment(1);
                }
            }
        }
        self.metrics.buffered.get().set(total as f64);
    }

    /// The source of a stream's records; `None` when they are not shipped (declined,
    /// or unbound: counted).
    fn bound_source(&mut self, cgroup_id: u64, stream: Stream, records: u64) -> Option<SourceId> {
        if !self.bound.contains_key(&(cgroup_id, stream)) {
            // Only a record of a stream not bound asks about declined ones: the bound
            // streams' records (nearly all) pay one lookup, as before.
            if self.declined.contains(&(cgroup_id, stream)) {
                return None;
            }
            if self.cgroups.contains_key(&cgroup_id) {
                // The kernel bound it (it sends its bytes) but the binding record was
                // lost to a full ring: bound here, from offset 0; holes are repaired
                // from the log.
                self.bind(cgroup_id, stream);
            } else if self.cgroup_root.is_some() {
                // Its creation record was lost too: looked for at the next tick.
                self.unknown_cgroups.insert(cgroup_id);
            }
        }
        let id = self.bound.get(&(cgroup_id, stream)).copied();
        if id.is_none() {
            metrics::counter!(CAPTURE_UNBOUND_RECORDS_TOTAL).increment(records);
        }
        id
    }

    fn hand_on_staged(&mut self, id: SourceId) {
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        let Some(chunk) = entry.staged.take() else {
            return;
        };
        let (offset, time) = (entry.staged_offset, entry.staged_time_ns);
        self.pipeline.data(id, offset, chunk, Some(time));
    }

    fn hand_on_runs(&mut self, id: SourceId) {
        for run in self.runs.drain(..) {
            self.pipeline
                .data(id, run.offset, run.bytes, Some(run.time_ns));
        }
    }

    /// The periodic look at a stream, before the tick's repairs: its seam, its hole
    /// counted once past `reorder_grace`, and whether it wants a repair step.
    fn check_stream(&mut self, id: SourceId, now: Instant) {
        self.look_for_seam(id, now);
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        entry.due_hole_end = None;
        if let Some((start, end)) = entry.assembler.hole() {
            let age = entry.assembler.hole_age(now).unwrap_or_default();
            if entry.hole_counted != Some(start) && age >= self.options.reorder_grace {
                entry.hole_counted = Some(start);
                metrics::counter!(CAPTURE_GAPS_TOTAL).increment(1);
            }
            if age >= self.options.reorder_grace || entry.assembler.over_budget() {
                entry.due_hole_end = Some(end);
            }
        }
        if entry.next_repair().is_some() {
            self.turns.want(id);
        }
    }

    /// Spills, holes given up, endings: what follows from the tick's repairs. A
    /// stream still waiting for its turn is not judged yet (nothing is spilled, given
    /// up or ended before the log was read for it): it goes first next tick.
    fn after_repairs(&mut self, id: SourceId, now: Instant) {
        let waiting = self.turns.waiting(&id);
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        if !waiting && entry.assembler.over_budget() {
            // Too much waits behind a hole the log does not fill yet: let the log be
            // the stream until it caught up with what the kernel sent.
            entry.spill();
        }
        if !waiting
            && let Some((_, end)) = entry.assembler.hole()
            && entry.assembler.hole_stalled(now).unwrap_or_default() >= self.options.repair_wait
        {
            self.give_up(id, end, now);
        }
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        if entry.at_kernel_end() {
            // Every byte the kernel accepted was handed on: the log has nothing more.
            let how = if entry.tail_read {
                "log_read"
            } else {
                "kernel_offset"
            };
            self.end(id, how);
            return;
        }
        if let Some(until) = entry.follow_until
            && until != u64::MAX
            && entry.assembler.next_offset() >= until
        {
            entry.follow_until = None;
        }
        if !waiting && self.ended(id, now) {
            self.end(id, "log_read");
        }
    }

    /// A stream bound while it ran: reads its log's window, and once the seam is
    /// known, hands the captured records on from it (see `seam`).
    fn look_for_seam(&mut self, id: SourceId, now: Instant) {
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        let Some(pending) = &mut entry.seam else {
            return;
        };
        let (from, to) = pending.seam.log_wanted();
        // A stream the container does not write to (often stderr) would otherwise have
        // its log parsed once more every tick, for nothing.
        if from < to && pending.seam.has_captured() {
            let mut runs = Vec::new();
            if let Err(e) = pending
                .reader
                .read(&mut self.read_block, from, to, &mut runs)
            {
                tracing::warn!(source = %id, error = %e, "reading the CRI log to find capture's seam");
            }
            for run in &runs {
                pending.seam.push_log(run.offset, &run.bytes);
            }
        }
        let decision = pending.seam.decide();
        if decision == Decision::Pending {
            return;
        }
        metrics::counter!(CAPTURE_SEAMS_TOTAL, "result" => decision.label()).increment(1);
        let pending = entry.seam.take().expect("looked at above");
        let Decision::Exact { base } = decision else {
            tracing::warn!(source = %id, result = decision.label(), "no exact seam between a running container's log and its capture: the stream stays on its CRI log");
            entry.log_only = true;
            return;
        };
        tracing::info!(source = %id, base, shipped = entry.assembler.next_offset(), "capture takes over a running container's stream at its seam");
        entry.base = base;
        if let Some(cgroup_id) = entry.cgroup {
            self.feed.set_base(cgroup_id, entry.stream, base);
        }
        // The log has shipped the stream up to here; capture ships the rest, its holes
        // repaired from the log as any other stream's.
        entry.follow_until = None;
        self.hand_on_staged(id);
        let entry = self.streams.get_mut(&id).expect("present above");
        for (offset, bytes, time_ns) in pending.held {
            entry
                .assembler
                .push(offset + base, bytes, time_ns, now, &mut self.runs);
        }
        self.hand_on_runs(id);
    }

    /// Reads `[from, to)` of the stream from its CRI log into the assembler.
    fn repair(&mut self, id: SourceId, from: u64, to: u64, now: Instant) {
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        let Some(log_path) = entry.log_path.clone() else {
            return;
        };
        // The log must be numbered like the kernel numbers the stream: it is not when
        // the container also wrote by a path the probes do not see (splice, sendfile,
        // io_uring…). The captured bytes right after the hole must then read the same
        // in the log, or the repair would put wrong bytes in.
        let check = entry.assembler.waiting_at(to, REPAIR_CHECK_BYTES);
        let read_to = check.as_ref().map_or(to, |c| to + c.len() as u64);
        // Writes numbered in another order than the pipe's (see `docs/capture.md`,
        // Ordering) leave another write's bytes at the hole's range in the log while
        // those after it still line up: the bytes handed on right before the hole
        // must read the same in the log too.
        let kept = if from == entry.assembler.next_offset() {
            entry.assembler.kept()
        } else {
            Vec::new()
        };
        // The reader only moves forward: what it read but could not be used yet waits
        // in `read_ahead`.
        let mut runs = std::mem::take(&mut entry.read_ahead);
        let check_from = from - kept.len() as u64;
        let read_from = runs
            .last()
            .map_or(check_from, |r| r.offset + r.bytes.len() as u64)
            .max(check_from);
        // Its first read: from where the other stream's reader of the log stands when
        // that is not past the bytes this read checks (readers only move forward),
        // else from the run's first byte.
        let forked = match entry.reader {
            None => self.sibling_reader(id, check_from),
            Some(_) => None,
        };
        let entry = self.streams.get_mut(&id).expect("present above");
        if forked.is_some() {
            entry.reader = forked;
        }
        let reader = entry
            .reader
            .get_or_insert_with(|| CriStreamReader::new(log_path, entry.stream));
        match reader.read(&mut self.read_block, read_from, read_to, &mut runs) {
            Ok(reached) => {
                if reached.offset != entry.log_reach.0 {
                    entry.log_reach = (reached.offset, now);
                }
            }
            Err(e) => {
                tracing::warn!(source = %id, path = %reader.log_path().display(), error = %e, "reading the CRI log to repair a capture hole");
                entry.read_ahead = runs;
                return;
            }
        }
        let malformed = reader.malformed_lines();
        if malformed > entry.malformed_counted {
            metrics::counter!(CAPTURE_CRI_MALFORMED_LINES_TOTAL)
                .increment(malformed - entry.malformed_counted);
            entry.malformed_counted = malformed;
        }
        let reach = runs.last().map_or(0, |r| r.offset + r.bytes.len() as u64);
        if reach <= from {
            // The log has nothing of the hole yet: keep what it has before it for the
            // check, next tick (no more: a late record may have moved the hole on).
            runs.retain(|r| r.offset + r.bytes.len() as u64 > check_from);
            entry.read_ahead = runs;
            return;
        }
        if !kept.ends_with(&log_before(&runs, from, kept.len())) {
            let end = match entry.assembler.hole() {
                Some((start, end)) if start == from => end,
                _ => to.min(reach),
            };
            tracing::warn!(source = %id, offset = from, "the CRI log's bytes before a capture hole are not those handed on (writes numbered in another order than the pipe's?): hole not repaired");
            metrics::counter!(CAPTURE_REPAIR_MISMATCHES_TOTAL).increment(1);
            self.give_up(id, end, now);
            return;
        }
        if let Some(check) = check {
            let mut logged = Vec::with_capacity(check.len());
            for run in &runs {
                let end = run.offset + run.bytes.len() as u64;
                if end > to {
                    let skip = to.saturating_sub(run.offset) as usize;
                    logged.extend_from_slice(&run.bytes[skip..]);
                }
            }
            if logged.len() < check.len() {
                // The log has not caught up with the hole's end yet: next tick.
                entry.read_ahead = runs;
                return;
            }
            if logged[..check.len()] != check[..] {
                tracing::warn!(source = %id, offset = to, "the CRI log does not line up with the captured stream (output by a path the probes do not trace?): hole not repaired");
                metrics::counter!(CAPTURE_REPAIR_MISMATCHES_TOTAL).increment(1);
                self.give_up(id, to, now);
                return;
            }
        }
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        let mut repaired = 0u64;
        for run in runs {
            let before = entry.assembler.next_offset();
            let run_end = run.offset + run.bytes.len() as u64;
            entry
                .assembler
                .push(run.offset, run.bytes, run.time_ns, now, &mut self.runs);
            let after = entry.assembler.next_offset();
            repaired += run_end.min(after).saturating_sub(run.offset.max(before));
        }
        if repaired > 0 {
            metrics::counter!(CAPTURE_REPAIRED_BYTES_TOTAL).increment(repaired);
        }
        self.hand_on_runs(id);
    }

    /// A reader of stream `id`'s log forked from the other stream's reader of the same
    /// log (stdout's for stderr, and the reverse), if that one stands at or before
    /// `at_most` of this stream: a stream whose log was never read then starts its
    /// first read there, not at the run's first byte.
    fn sibling_reader(&self, id: SourceId, at_most: u64) -> Option<CriStreamReader> {
        let entry = self.streams.get(&id)?;
        let log = entry.log_path.as_deref()?;
        let sibling = self
            .streams
            .values()
            .filter(|e| e.stream != entry.stream && e.log_path.as_deref() == Some(log))
            .find_map(|e| e.reader.as_ref())
            .filter(|r| r.offset_of(entry.stream) <= at_most)?;
        sibling
            .fork(entry.stream)
            .inspect_err(|e| tracing::debug!(source = %id, error = %e, "forking a CRI log reader: read from the run's start"))
            .ok()
    }

    /// The bytes before `offset` cannot be had: count them and move on.
    fn give_up(&mut self, id: SourceId, offset: u64, now: Instant) {
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        let lost = entry.assembler.skip_to(offset, now, &mut self.runs);
        tracing::warn!(source = %id, lost_bytes = lost, offset, "capture hole not in the CRI log: given up");
        metrics::counter!(CAPTURE_UNREPAIRABLE_BYTES_TOTAL).increment(lost);
        self.pipeline.gap(id, offset);
        self.hand_on_runs(id);
    }

    /// Whether a stream whose container is gone has everything: the log holds no
    /// more than was handed on, and stopped growing.
    fn ended(&mut self, id: SourceId, now: Instant) -> bool {
        let Some(entry) = self.streams.get(&id) else {
            return false;
        };
        let gone = match entry.removed_at {
            Some(t) => now.duration_since(t) >= self.options.repair_wait,
            None => {
                if entry.cgroup.is_some() {
                    return false;
                }
                // Resumed from a checkpoint: ends when its run is known to be over
                // (or its log is gone) and the log is read to its end.
                let Some(log) = entry.log_path.clone() else {
                    return true;
                };
                if !log.exists() {
                    true
                } else if self.resolver.is_running(&log) == Some(false) {
                    let entry = &self.streams[&id];
                    return entry.assembler.hole().is_none()
                        && now.duration_since(entry.log_reach.1) >= END_SETTLE;
                } else {
                    false
                }
            }
        };
        let entry = &self.streams[&id];
        gone || (entry.removed_at.is_some()
            && entry.assembler.hole().is_none()
            && entry.assembler.pending_bytes() == 0
            && now.duration_since(entry.log_reach.1) >= END_SETTLE
            && (entry.log_path.is_none() || entry.log_reach.0 >= entry.assembler.next_offset()))
    }

    /// Ends a stream; `how` is the `how` label of `logtap_capture_stream_ends_total`.
    fn end(&mut self, id: SourceId, how: &'static str) {
        let now = Instant::now();
        if let Some(entry) = self.streams.get(&id)
            && let Some((_, end)) = entry.assembler.hole()
        {
            self.give_up(id, end, now);
        }
        // Bytes the kernel accepted that neither the ring nor the log supplied in
        // time: known lost, so counted (after what came before them).
        self.hand_on_staged(id);
        if let Some(entry) = self.streams.get(&id)
            && let Some(end) = entry.kernel_end
            && end > entry.assembler.next_offset()
        {
            self.give_up(id, end, now);
        }
        self.hand_on_staged(id);
        self.turns.remove(&id);
        let Some(entry) = self.streams.remove(&id) else {
            return;
        };
        if entry.seam.is_some() {
            // Its log shipped all of it.
            metrics::counter!(CAPTURE_SEAMS_TOTAL, "result" => "unfinished").increment(1);
        }
        self.pipeline.ended(id, EndReason::Exited);
        metrics::counter!(CAPTURE_STREAM_ENDS_TOTAL, "how" => how).increment(1);
        // The entry stays (closed), so the next start knows this run's log was
        // shipped by capture and keeps the file source away from it.
        self.registry.mark_closed(id);
        if let Some(log) = entry.log_path {
            self.ended.push((id, log));
        }
        tracing::debug!(source = %id, offset = entry.assembler.next_offset(), "stream ended");
    }

    /// Forgets ended streams whose CRI log is gone (the pod was removed): without
    /// this, a node running many short-lived containers would grow its checkpoint
    /// table and claims without bound.
    fn prune_ended(&mut self) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ended)
            .into_iter()
            .partition(|(_, log)| !log.exists());
        self.ended = kept;
        for (id, log) in gone {
            self.registry.forget(id);
            // Both streams of a run share the log: release once neither remains.
            if !self.ended.iter().any(|(_, l)| *l == log)
                && !self
                    .streams
                    .values()
                    .any(|e| e.log_path.as_deref() == Some(&log))
            {
                self.claims.release(&log);
            }
        }
    }

    /// Streams checkpointed by an earlier run: claim their logs and, for runs not
    /// finished, follow their CRI logs from the checkpointed offset.
    fn resume_checkpointed(&mut self) {
        for checkpoint in self.registry.loaded_with_dev(CAPTURE_DEV) {
            let Some((log_path, stream)) = parse_stream_path(&checkpoint.path) else {
                continue;
            };
            if !log_path.exists() {
                self.registry.forget(checkpoint.source_id);
                continue;
            }
            self.claims.claim(&log_path);
            if checkpoint.closed {
                // Shipped to its end by an earlier run; the entry stays loaded until
                // the log goes.
                self.ended.push((checkpoint.source_id, log_path));
                continue;
            }
            let id = checkpoint.source_id;
            self.registry.register(
                id,
                checkpoint.identity,
                checkpoint.path.clone(),
                checkpoint.offset,
            );
            let info = Arc::new(SourceInfo {
                id,
                kind: SourceKind::Capture,
                path: checkpoint.path.clone(),
                config_name: self.options.source_name.clone(),
            });
            let pod = PodLogRef::from_path(&log_path).map(|log| (log, None));
            self.pipeline.opened(Opening::stream(
                info,
                self.options.source,
                checkpoint.offset,
                stream,
                pod,
            ));
            let mut entry = StreamEntry::new(
                stream,
                None,
                Some(log_path),
                checkpoint.offset,
                &self.options,
            );
            entry.follow_until = Some(u64::MAX);
            tracing::info!(source = %id, offset = checkpoint.offset, "resuming a captured stream from its CRI log");
            self.streams.insert(id, entry);
        }
    }
}

/// What the start-up read of a running container's log gives (see
/// [`read_running_log`]), by stream (stdout, stderr).
struct StartupRead {
    /// Where each stream ends in the log: its seam is at or after it.
    lower: [u64; 2],
    /// Readers standing at `lower`, for the seams.
    seam_readers: [CriStreamReader; 2],
    /// For a stream resumed from a checkpoint: a reader standing at or before it.
    followers: [Option<CriStreamReader>; 2],
}

/// Reads a running container's CRI log to its end once for both streams: stdout's
/// reader counts stderr's offsets as it parses past its lines. Read twice, the second
/// read only what came during the first (which reads the whole log), so the bind
/// follows the last at once. A stream resumed from a checkpoint (`resumed_at`) follows
/// its log from a copy of the reader taken as it passed the checkpoint, rather than
/// parsing the log up to it once more (stderr's only when stdout's checkpoint is not
/// past it in the log: the reader cannot go back).
fn read_running_log(
    block: &mut ReadBlock,
    log: &Path,
    resumed_at: [Option<u64>; 2],
) -> io::Result<StartupRead> {
    let mut reader = CriStreamReader::new(log.to_path_buf(), Stream::Stdout);
    let mut followers = [None, None];
    if let Some(at) = resumed_at[0] {
        reader.read(block, u64::MAX, at, &mut Vec::new())?;
        followers[0] = Some(reader.fork(Stream::Stdout)?);
    }
    if let Some(at) = resumed_at[1]
        && reader.offset_of(Stream::Stderr) <= at
    {
        let mut stderr = reader.fork(Stream::Stderr)?;
        stderr.read(block, u64::MAX, at, &mut Vec::new())?;
        followers[1] = Some(stderr);
    }
    for _ in 0..2 {
        reader.read(block, u64::MAX, u64::MAX, &mut Vec::new())?;
    }
    let lower = [Stream::Stdout, Stream::Stderr].map(|s| reader.offset_of(s));
    let stderr = reader.fork(Stream::Stderr)?;
    Ok(StartupRead {
        lower,
        seam_readers: [reader, stderr],
        followers,
    })
}

/// One repair step of a stream: `[from, to)` read back from its CRI log.
struct RepairStep {
    from: u64,
    to: u64,
    /// The stream's end, read after its container's removal.
    tail: bool,
}

impl StreamEntry {
    /// The step this stream's next turn reads, at most [`REPAIR_STEP_BYTES`]: first
    /// the hole due this tick (`due_hole_end`), then, for a stream following its log
    /// or whose container is gone, from where it stands on (up to the kernel's final
    /// offset, past which the log has nothing capture numbered).
    fn next_repair(&self) -> Option<RepairStep> {
        let a = &self.assembler;
        if let Some(due_end) = self.due_hole_end
            && let Some((from, end)) = a.hole().filter(|&(s, _)| s < due_end)
        {
            let to = end.min(from.saturating_add(REPAIR_STEP_BYTES));
            return Some(RepairStep {
                from,
                to,
                tail: false,
            });
        }
        let from = a.next_offset();
        let removed = self.removed_at.is_some();
        let following = self.follow_until.is_some_and(|until| from < until);
        let end = self.kernel_end.unwrap_or(u64::MAX);
        ((following || removed) && from < end).then(|| RepairStep {
            from,
            to: from.saturating_add(REPAIR_STEP_BYTES).min(end),
            tail: removed,
        })
    }

    /// Whether the container is gone and everything up to the kernel's final offset
    /// was handed on (see `kernel_end`).
    fn at_kernel_end(&self) -> bool {
        self.removed_at.is_some()
            && self.kernel_end == Some(self.assembler.next_offset())
            && self.assembler.hole().is_none()
            && self.assembler.pending_bytes() == 0
    }

    /// Bytes this stream holds besides what it hands on at once: waiting behind a
    /// hole, waiting for the seam (held records and the log's window), read from the
    /// log ahead of use.
    fn buffered(&self) -> usize {
        self.assembler.pending_bytes()
            + self
                .seam
                .as_ref()
                .map_or(0, |s| s.held_bytes + s.seam.held_bytes())
            + self.read_ahead.iter().map(|r| r.bytes.len()).sum::<usize>()
    }

    /// Drops the bytes waiting behind the hole and follows the CRI log until it has
    /// caught up with what the kernel sent; returns the bytes dropped.
    fn spill(&mut self) -> usize {
        let dropped = self.assembler.drop_pending();
        self.follow_until = Some(self.assembler.frontier());
        metrics::counter!(CAPTURE_SPILLED_BYTES_TOTAL).increment(dropped as u64);
        dropped
    }

    fn new(
        stream: Stream,
        cgroup: Option<u64>,
        log_path: Option<PathBuf>,
        start: u64,
        options: &CaptureConfig,
    ) -> StreamEntry {
        StreamEntry {
            stream,
            cgroup,
            assembler: StreamAssembler::new(start, options.max_pending),
            log_path,
            reader: None,
            read_ahead: Vec::new(),
            staged: Staged::default(),
            staged_offset: start,
            staged_time_ns: 0,
            follow_until: None,
            removed_at: None,
            log_reach: (0, Instant::now()),
            hole_counted: None,
            malformed_counted: 0,
            seam: None,
            base: 0,
            log_only: false,
            kernel_end: None,
            tail_read: false,
            due_hole_end: None,
        }
    }
}

/// In-order bytes of a stream waiting to be handed on as one chunk. A single run is
/// kept as it came (no copy); only a second run in the same burst copies them into
/// one buffer.
#[derive(Default)]
enum Staged {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Staged {
    fn is_empty(&self) -> bool {
        matches!(self, Staged::Empty)
    }

    fn len(&self) -> usize {
        match self {
            Staged::Empty => 0,
            Staged::One(b) => b.len(),
            Staged::Many(b) => b.len(),
        }
    }

    fn push(&mut self, bytes: Bytes) {
        match self {
            Staged::Empty => *self = Staged::One(bytes),
            Staged::One(first) => {
                let mut many = BytesMut::with_capacity((first.len() + bytes.len()).max(4096));
                many.extend_from_slice(first);
                many.extend_from_slice(&bytes);
                *self = Staged::Many(many);
            }
            Staged::Many(many) => many.extend_from_slice(&bytes),
        }
    }

    fn take(&mut self) -> Option<Bytes> {
        match std::mem::take(self) {
            Staged::Empty => None,
            Staged::One(b) => Some(b),
            Staged::Many(b) => Some(b.freeze()),
        }
    }
}

/// Records and bytes of bound streams, added to the metrics once per poll rather
/// than once per record.
#[derive(Default)]
struct RecordCounts {
    records: u64,
    bytes: u64,
}

impl RecordCounts {
    fn flush(&mut self, metrics: &mut StageMetrics) {
        if self.records > 0 {
            metrics.records.get().increment(self.records);
            metrics.bytes.get().increment(self.bytes);
        }
        *self = RecordCounts::default();
    }
}

impl PendingSeam {
    /// A captured record waits for the seam; the seam search sees it too. Held
    /// records own their bytes (a slice would keep its whole shared block alive).
    fn hold(&mut self, offset: u64, bytes: Bytes, time_ns: i64, max_bytes: usize) {
        self.seam.push_captured(offset, &bytes);
        self.held_bytes += bytes.len();
        self.held
            .push_back((offset, Bytes::copy_from_slice(&bytes), time_ns));
        if self.held_bytes > max_bytes {
            self.shed(self.held_bytes - max_bytes);
        }
    }

    /// Drops at least `bytes` of the held records, oldest first (the log has them,
    /// and the hole they leave is repaired from it once the seam is known); returns
    /// how many were dropped.
    fn shed(&mut self, bytes: usize) -> usize {
        let mut dropped = 0;
        while dropped < bytes {
            let Some((_, record, _)) = self.held.pop_front() else {
                break;
            };
            dropped += record.len();
        }
        self.held_bytes -= dropped;
        dropped
    }
}

/// A probe event that outlives the ring buffer borrow.
enum OwnedEvent {
    Created { cgroup_id: u64, path: Vec<u8> },
    Bound { cgroup_id: u64, stream: Stream },
    Removed { cgroup_id: u64 },
}

impl OwnedEvent {
    /// `None` for events the stage does not act on.
    fn from(event: ProbeEvent<'_>) -> Option<OwnedEvent> {
        match event {
            ProbeEvent::CgroupCreated { cgroup_id, path } => Some(OwnedEvent::Created {
                cgroup_id,
                path: path.to_vec(),
            }),
            ProbeEvent::StreamBound {
                cgroup_id, stream, ..
            } => Some(OwnedEvent::Bound { cgroup_id, stream }),
            ProbeEvent::CgroupRemoved { cgroup_id, .. } => Some(OwnedEvent::Removed { cgroup_id }),
            ProbeEvent::Exec {
                cgroup_id, tgid, ..
            } => {
                tracing::trace!(cgroup_id, tgid, "exec in a captured container");
                None
            }
            ProbeEvent::Exit {
                cgroup_id, tgid, ..
            } => {
                tracing::trace!(cgroup_id, tgid, "exit in a captured container");
                None
            }
            // Data is copied out where it is polled.
            ProbeEvent::Data { .. } => None,
        }
    }
}

/// Whether the directory of cgroup `id` is at `path` (below the cgroup v2 mount
/// `root`): a cgroup's id is the inode of its directory.
fn cgroup_present(root: &Path, path: &[u8], id: u64) -> bool {
    let relative = path.strip_prefix(b"/").unwrap_or(path);
    let dir = root.join(std::ffi::OsStr::from_bytes(relative));
    std::fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && std::os::unix::fs::MetadataExt::ino(&m) == id)
}

/// `<log path>#stdout`, or `cgroup:<path>#stdout` when the log is unknown.
fn stream_path(log_path: Option<&Path>, cgroup_path: &[u8], stream: Stream) -> PathBuf {
    let mut bytes = match log_path {
        Some(p) => p.as_os_str().as_bytes().to_vec(),
        None => [b"cgroup:".as_slice(), cgroup_path].concat(),
    };
    bytes.push(b'#');
    bytes.extend_from_slice(stream_name(stream).as_bytes());
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes))
}

fn parse_stream_path(path: &Path) -> Option<(PathBuf, Stream)> {
    let bytes = path.as_os_str().as_bytes();
    let hash = bytes.iter().rposition(|&b| b == b'#')?;
    let stream = match &bytes[hash + 1..] {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let log = &bytes[..hash];
    if log.starts_with(b"cgroup:") {
        return None;
    }
    Some((PathBuf::from(std::ffi::OsStr::from_bytes(log)), stream))
}

/// The descriptor a container writes `stream` to.
fn stream_fd(stream: Stream) -> u32 {
    match stream {
        Stream::Stderr => 2,
        _ => 1,
    }
}

fn stream_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stderr => "stderr",
        _ => "stdout",
    }
}

/// The checkpoint identity of a captured stream: stable for its path, distinct from
/// every file's.
fn stream_identity(path: &Path) -> FileIdentity {
    let bytes = path.as_os_str().as_bytes();
    let half = bytes.len() / 2;
    let inode =
        (u64::from(crc32fast::hash(bytes)) << 32) | u64::from(crc32fast::hash(&bytes[half..]));
    FileIdentity {
        dev: CAPTURE_DEV,
        inode,
        fingerprint_len: 0,
        fingerprint: 0,
    }
}

/// The log's bytes in `runs` that end at `from`, contiguously, from at most `max`
/// before it: what the reader could still give of them (it may be past
/// `from - max`: the bytes before it were then handed on from the log itself).
fn log_before(runs: &[Run], from: u64, max: usize) -> Vec<u8> {
    let start = from - max as u64;
    let mut got = Vec::with_capacity(max);
    let mut at = None;
    for run in runs {
        let lo = run.offset.max(start);
        let hi = (run.offset + run.bytes.len() as u64).min(from);
        if lo >= hi {
            continue;
        }
        if at != Some(lo) {
            // Not contiguous: only what follows the gap can end at `from`.
            got.clear();
        }
        got.extend_from_slice(&run.bytes[(lo - run.offset) as usize..(hi - run.offset) as usize]);
        at = Some(hi);
    }
    if at != Some(from) {
        got.clear();
    }
    got
}

#[cfg(test)]
#[path = "stage_tests.rs"]
mod tests;

#[path = "resume.rs"]
mod resume;

#[path = "stage_metrics.rs"]
mod stage_metrics;
pub use resume::{PinnedState, PinnedStream};
use stage_metrics::StageMetrics;

fn realtime_offset_ns() -> i64 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    };
    let mono = read(libc::CLOCK_MONOTONIC);
    let real = read(libc::CLOCK_REALTIME);
    real - mono
}

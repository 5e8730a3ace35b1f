//! The forwarder: the thread that moves a network sink's packages to its destination.
//!
//! While it keeps up, packages come to it in memory ([`super::handoff`]: never
//! written to the spool, acknowledged to their sources once the destination has
//! them, a window at a time). Behind, it takes a window of durable blocks from the
//! spool (at most `max_window_packages` packages and `max_window_bytes` body bytes),
//! decodes them, hands them to the [`Destination`] and, once the destination
//! acknowledged or refused every record, moves the spool cursor past them (fsynced) —
//! only then may the spool delete them. A window that fails is sent again, the same
//! window, after a capped exponential backoff (at least what the destination asked for
//! with `Retry-After`), for as long as it takes — except a window from memory, which
//! the writer spills to the spool meanwhile: an outage fills the spool, not memory,
//! and reading goes on.
//!
//! Records refused for good are counted by reason
//! (`logtap_forward_rejected_records_total`, and `logtap_dropped_lines_total{reason=
//! "sink_rejected"}`) and appended to the dead-letter file when one is configured.
//!
//! # Shutdown
//!
//! When the sink closes (agent stop, config change) the forwarder keeps draining the
//! spool until it is empty or `drain_timeout` passed, then stops: what remains is in
//! the spool and forwarded after the restart.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use self::buffers::PayloadBuffers;
use super::destination::{Delivered, Destination, Rejected, SendError, SpooledPackage};
use super::handoff::{self, SPILL_AFTER};
use super::spool::{self, CursorFile, Shared, Spool, SpooledBlock};
use super::store::segment::{self, BlockError};
use super::{Accepted, Sink, SinkError};
use crate::batch::Batch;
use crate::batch::codec::{self, Package};
use crate::checkpoint::SharedRegistry;
use crate::config::network::ForwardConfig;
use crate::metrics::catalogue::{
    DROPPED_LINES_TOTAL, FORWARD_ACKED_RECORDS_TOTAL, FORWARD_BYTES_TOTAL,
    FORWARD_DEAD_LETTER_ERRORS_TOTAL, FORWARD_DESTINATION_UP, FORWARD_PACKAGES_TOTAL,
    FORWARD_RECORDS_TOTAL, FORWARD_REJECTED_RECORDS_TOTAL, FORWARD_REPLAYED_PACKAGES_TOTAL,
    FORWARD_REQUEST_SECONDS, FORWARD_RETRIES_TOTAL, SPOOL_CURSOR_ERRORS_TOTAL,
    SPOOL_OLDEST_UNFORWARDED_SECONDS,
};
use crate::metrics::health;
use crate::source::SourceId;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A `Retry-After` longer than this is capped (a misbehaving peer cannot park us).
const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);
/// How often an idle forwarder wakes to refresh its age gauge.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// A forwarder with nothing to send for this long frees the buffers it keeps for
/// the next window (a sink that keeps up with its input is idle between most windows
/// and keeps them).
const IDLE_RELEASE: Duration = Duration::from_secs(2);

/// A network sink: the spool the pipeline writes into, and the forwarder thread that
/// empties it. Dropping it closes the spool and joins the forwarder.
pub struct NetworkSink {
    name: Arc<str>,
    spool: Spool,
    shared: Arc<Shared>,
    drain_timeout: Duration,
    kind: &'static str,
    forwarder: Option<JoinHandle<()>>,
    /// What the hand-off holds at most: a window (see [`handoff::Handoff::has_room`]).
    max_window_bytes: u64,
    max_window_packages: usize,
    /// Hand-off packages taken back to be written to the spool, oldest first (kept
    /// here until written, so a failed write loses none of them).
    spilling: VecDeque<Arc<Batch>>,
    /// Spilled packages written to the spool: acknowledged at its next flush.
    spilled_unflushed: Vec<(SourceId, u64)>,
    acks: Option<SharedRegistry>,
    /// `logtap_forward_packages_total` by path: memory, spool, spilled.
    taken: [metrics::Counter; 3],
}

impl NetworkSink {
    /// Opens the spool of sink `name` and starts forwarding it to `destination`.
    pub fn start(
        name: &str,
        config: &ForwardConfig,
        destination: Box<dyn Destination>,
    ) -> Result<NetworkSink, SinkError> {
        let name: Arc<str> = Arc::from(name);
        let (spool, shared) = Spool::open(name.clone(), config.spool.clone())?;
        let kind = destination.kind();
        let dead_letter = match &config.dead_letter {
            Some(path) => Some(DeadLetter::open(path)?),
            None => None,
        };
        let forwarder = Forwarder {
            name: name.clone(),
            dir: config.spool.path.clone(),
            shared: shared.clone(),
            destination,
            dead_letter,
            max_window_bytes: config.max_window_bytes,
            max_window_packages: config.max_window_packages.max(1),
            scratch: Vec::new(),
            // A window's payloads are about `max_window_bytes` (its last package may
            // go past): twice that covers a window without letting a rare huge
            // package pin its buffer.
            payloads: PayloadBuffers::new(
                usize::try_from(config.max_window_bytes.saturating_mul(2)).unwrap_or(usize::MAX),
            ),
        };
        let taken = ["memory", "spool", "spilled"].map(|path| {
            metrics::counter!(FORWARD_PACKAGES_TOTAL, "sink" => name.to_string(), "path" => path)
        });
        let component = format!("forward-{name}");
        let handle = std::thread::Builder::new()
            .name(format!("forward-{name}"))
            .spawn(move || {
                let beat = health::global().register(component);
                forwarder.run();
                beat.stop();
            })?;
        Ok(NetworkSink {
            name,
            spool,
            shared,
            drain_timeout: config.drain_timeout,
            kind,
            forwarder: Some(handle),
            max_window_bytes: config.max_window_bytes,
            max_window_packages: config.max_window_packages.max(1),
            spilling: VecDeque::new(),
            spilled_unflushed: Vec::new(),
            acks: None,
            taken,
        })
    }
}

impl NetworkSink {
    /// The spool's counters so far.
    pub fn stats(&self) -> spool::SpoolStats {
        self.shared.lock().stats
    }

    /// Packages not yet acknowledged by the destination: blocks durable in the spool,
    /// and packages handed over in memory.
    pub fn unforwarded(&self) -> usize {
        let state = self.shared.lock();
        state.pending.len()
            + state.in_flight.len()
            + state.handoff.queued.len()
            + state.handoff.in_flight.len()
    }

    /// Hands `batch` to the forwarder in memory if the spool has no backlog and the
    /// hand-off has room within [`SPILL_AFTER`]. When it does not, takes the hand-off's
    /// unacknowledged packages into `spilling` and returns false.
    fn hand_over(&mut self, batch: &Arc<Batch>, acks: &SharedRegistry) -> bool {
        if !self.spilling.is_empty() || self.spool.has_unflushed() {
            return false;
        }
        let bytes = batch.body_bytes() as u64;
        let deadline = Instant::now() + SPILL_AFTER;
        let mut state = self.shared.lock();
        loop {
            // Something older in the spool, a drain under way, or a destination that
            // fails: the spool.
            if !state.pending.is_empty()
                || !state.in_flight.is_empty()
                || state.stop_at.is_some()
                || state.handoff.behind
            {
                break;
            }
            if state
                .handoff
                .has_room(bytes, self.max_window_packages, self.max_window_bytes)
            {
                let seq = self.spool.take_seq();
                state.handoff.acks.get_or_insert_with(|| acks.clone());
                state.handoff.push(seq, batch.clone());
                debug_assert_eq!(state.check(), Ok(()));
                drop(state);
                self.shared.notify();
                self.taken[0].increment(1);
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self.shared.wait(state, deadline - now);
        }
        let spilled = state.handoff.spill();
        drop(state);
        self.take_back(spilled, "forwarder behind");
        false
    }

    /// Queues the packages taken back from the hand-off (`why`: the forwarder is
    /// behind, or the destination fails) to be written to the spool by [`Self::spill`].
    fn take_back(&mut self, spilled: Vec<Arc<Batch>>, why: &'static str) {
        if spilled.is_empty() {
            return;
        }
        self.taken[2].increment(spilled.len() as u64);
        tracing::info!(sink = %self.name, packages = spilled.len(),
            "{why}: spilling the packages handed over in memory to the spool");
        self.spilling.extend(spilled);
    }

    /// Writes the packages taken back from the hand-off to the spool, oldest first.
    fn spill(&mut self) -> Result<(), SinkError> {
        while let Some(batch) = self.spilling.front() {
            match self.spool.write(batch) {
                Ok(()) => self
                    .spilled_unflushed
                    .push((batch.source.id, batch.package_id)),
                // As the sink worker does with a package refused for good.
                Err(SinkError::Rejected(reason)) => {
                    metrics::counter!(DROPPED_LINES_TOTAL, "reason" => "sink_rejected")
                        .increment(batch.lines.len() as u64);
                    tracing::error!(sink = self.kind, source = %batch.source.id,
                        package = batch.package_id, %reason, "spool rejected package; dropped");
                    if let Some(acks) = &self.acks {
                        acks.acked(batch.source.id, batch.package_id);
                    }
                }
                Err(e) => return Err(e),
            }
            self.spilling.pop_front();
        }
        Ok(())
    }
}

impl Sink for NetworkSink {
    fn kind(&self) -> &'static str {
        self.kind
    }
    /// Always the spool; the sink worker calls [`Sink::offer`], which may hand the
    /// package over in memory instead.
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.spool.write(batch)
    }
    fn offer(&mut self, batch: &Arc<Batch>, acks: &SharedRegistry) -> Result<Accepted, SinkError> {
        self.acks.get_or_insert_with(|| acks.clone());
        if self.hand_over(batch, acks) {
            return Ok(Accepted::BySink);
        }
        self.spill()?;
        self.spool.write(batch)?;
        self.taken[1].increment(1);
        Ok(Accepted::AtFlush)
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        self.spool.flush()?;
        if let Some(acks) = &self.acks {
            for (source, package_id) in self.spilled_unflushed.drain(..) {
                acks.acked(source, package_id);
            }
        }
        Ok(())
    }
    fn idle(&mut self) -> Result<(), SinkError> {
        // No package came to spill the hand-off of a failing destination: do it now.
        let spilled = {
            let mut state = self.shared.lock();
            if state.handoff.behind {
                state.handoff.spill()
            } else {
                Vec::new()
            }
        };
        self.take_back(spilled, "destination failing");
        if !self.spilling.is_empty() {
            self.spill()?;
            self.flush()?;
        }
        self.spool.idle()
    }
}

impl Drop for NetworkSink {
    fn drop(&mut self) {
        self.spool.close(Instant::now() + self.drain_timeout);
        if let Some(h) = self.forwarder.take()
            && h.join().is_err()
        {
            tracing::error!(sink = self.kind, "forwarder thread panicked");
        }
    }
}

/// Records refused for good, as NDJSON (the file sink's shape plus `reject_reason`).
struct DeadLetter {
    path: PathBuf,
    file: File,
    line: Vec<u8>,
}

impl DeadLetter {
    fn open(path: &Path) -> Result<DeadLetter, SinkError> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(DeadLetter {
            path: path.to_path_buf(),
            file,
            line: Vec::new(),
        })
    }

    fn write(
        &mut self,
        package: &SpooledPackage,
        records: &[usize],
        reason: &str,
    ) -> std::io::Result<()> {
        let mut out = Vec::new();
        for &i in records {
            let Some(r) = package.package.records.get(i) else {
                continue;
            };
            self.line.clear();
            package.write_json(r, &mut self.line);
            // `…}\n` → `…,"reject_reason":"<reason>"}\n`; reasons are plain labels.
            self.line.truncate(self.line.len() - 2);
            out.extend_from_slice(&self.line);
            out.extend_from_slice(b",\"reject_reason\":\"");
            out.extend(
                reason
                    .bytes()
                    .filter(|b| b.is_ascii_alphanumeric() || *b == b'_'),
            );
            out.extend_from_slice(b"\"}\n");
        }
        self.file.write_all(&out)?;
        self.file.sync_data()
    }
}

struct Forwarder {
    name: Arc<str>,
    dir: PathBuf,
    shared: Arc<Shared>,
    destination: Box<dyn Destination>,
    dead_letter: Option<DeadLetter>,
    max_window_bytes: u64,
    max_window_packages: usize,
    /// Compressed-block scratch for reading, reused.
    scratch: Vec<u8>,
    /// Decompressed payloads, reused window after window.
    payloads: PayloadBuffers,
}

/// Why the forwarder stops sending a window.
enum Stop {
    /// The spool closed and the drain deadline passed.
    Closing,
    /// A window from memory failed and the writer spilled it: the spool sends it.
    Spilled,
}

/// A window the forwarder took.
enum Taken {
    Spool(Vec<SpooledBlock>),
    /// From the hand-off: (seq, package), oldest first.
    Memory(Vec<(u64, Arc<Batch>)>),
}

impl Forwarder {
    fn run(mut self) {
        loop {
            let more = match self.take_window() {
                None => false,
                Some(Taken::Spool(blocks)) => self.forward_spooled(blocks),
                Some(Taken::Memory(packages)) => self.forward_handed(packages),
            };
            if !more {
                break;
            }
        }
        tracing::debug!(sink = %self.name, "forwarder stopped");
    }

    /// Sends a window of spooled blocks; false when the forwarder must stop.
    fn forward_spooled(&mut self, blocks: Vec<SpooledBlock>) -> bool {
        let window = self.decode(&blocks);
        let outcome = if window.is_empty() {
            Ok(Delivered::default())
        } else {
            self.mark_sent(&blocks);
            self.send_until_acknowledged(&window, false)
        };
        match outcome {
            Ok(delivered) => {
                self.account(&window, &delivered);
                self.acknowledge(&blocks);
                drop(window);
                self.payloads.reclaim();
                true
            }
            Err(_) => {
                // Put the window back: it stays in the spool for the next start.
                let mut state = self.shared.lock();
                for b in blocks.into_iter().rev() {
                    state.in_flight.pop_back();
                    state.pending.push_front(b);
                }
                false
            }
        }
    }

    /// Sends a window handed over in memory and, once the destination has it,
    /// acknowledges its packages to their sources; false when the forwarder must stop
    /// (what it did not deliver is read again after the restart).
    fn forward_handed(&mut self, packages: Vec<(u64, Arc<Batch>)>) -> bool {
        let window: Vec<SpooledPackage> = packages
            .iter()
            .map(|(seq, batch)| handoff::to_spooled(*seq, batch))
            .collect();
        drop(packages);
        let outcome = self.send_until_acknowledged(&window, true);
        if let Ok(delivered) = &outcome {
            self.account(&window, delivered);
        }
        let (done, acks) = {
            let mut state = self.shared.lock();
            let done = state.handoff.finish(window.len());
            let spilled = done.iter().filter(|h| h.spilled);
            match outcome {
                // Delivered: their spooled copies are skipped.
                Ok(_) => state
                    .handoff
                    .delivered_spilled
                    .extend(spilled.map(|h| (h.batch.source.id, h.batch.package_id))),
                // Their spooled copies go out again, and the failed attempt may have
                // delivered part of them.
                Err(Stop::Spilled) => {
                    let replayed = spilled.count() as u64;
                    state.stats.replayed_packages += replayed;
                    metrics::counter!(FORWARD_REPLAYED_PACKAGES_TOTAL, "sink" => self.name.to_string())
                        .increment(replayed);
                }
                Err(Stop::Closing) => {}
            }
            (done, state.handoff.acks.clone())
        };
        self.shared.notify();
        match outcome {
            Ok(_) => {
                if let Some(acks) = acks {
                    for h in &done {
                        acks.acked(h.batch.source.id, h.batch.package_id);
                    }
                }
                true
            }
            Err(Stop::Spilled) => true,
            Err(Stop::Closing) => false,
        }
    }

    /// Waits for packages and takes a window of them: the hand-off's first (it holds
    /// packages only while the spool has no backlog), else spooled blocks, moved to
    /// `in_flight`. `None`: stop.
    fn take_window(&mut self) -> Option<Taken> {
        let mut state = self.shared.lock();
        let idle_since = Instant::now();
        loop {
            self.publish_age(state.in_flight.front().or(state.pending.front()));
            let work = !state.pending.is_empty() || !state.handoff.queued.is_empty();
            health::waiting(work);
            health::progress();
            if work {
                break;
            }
            if state.stop_at.is_some() {
                return None;
            }
            if idle_since.elapsed() >= IDLE_RELEASE {
                self.payloads.release();
                self.destination.idle();
            }
            state = self.shared.wait(state, IDLE_WAKE);
        }
        if state.stop_at.is_some_and(|t| Instant::now() >= t) {
            return None;
        }
        if !state.handoff.queued.is_empty() {
            let taken = state.handoff.take();
            drop(state);
            // A writer may be waiting for room.
            self.shared.notify();
            return Some(Taken::Memory(taken));
        }
        let mut window = Vec::new();
        let mut bytes = 0u64;
        while let Some(b) = state.pending.front() {
            // Uncompressed payload size: close enough to body bytes for a bound.
            let size = u64::from(b.header.uncompressed_len);
            if !window.is_empty()
                && (window.len() >= self.max_window_packages
                    || bytes + size > self.max_window_bytes)
            {
                break;
            }
            bytes += size;
            let b = state.pending.pop_front().expect("front exists");
            state.in_flight.push_back(b.clone());
            window.push(b);
        }
        Some(Taken::Spool(window))
    }

    /// Reads and decodes the blocks. A block that fails its CRC or does not decode is
    /// damage on the node's disk: counted (`spool_corrupt`) and skipped.
    /// Spooled copies of packages the destination acknowledged from memory are
    /// skipped (see [`super::handoff`]).
    fn decode(&mut self, blocks: &[SpooledBlock]) -> Vec<SpooledPackage> {
        let mut out = Vec::with_capacity(blocks.len());
        let mut skip = std::mem::take(&mut self.shared.lock().handoff.delivered_spilled);
        for b in blocks {
            let id = (SourceId(b.header.source_id), b.header.package_id);
            if let Some(i) = skip.iter().position(|s| *s == id) {
                skip.swap_remove(i);
                continue;
            }
            match self.read_package(b) {
                Ok(package) => out.push(SpooledPackage {
                    seq: b.seq,
                    source: b.source.clone(),
                    package_id: b.header.package_id,
                    package,
                }),
                Err(e) => {
                    self.shared.lock().stats.corrupt_lines += u64::from(b.header.line_count);
                    metrics::counter!(DROPPED_LINES_TOTAL, "reason" => "spool_corrupt")
                        .increment(u64::from(b.header.line_count));
                    tracing::error!(sink = %self.name, seq = b.seq, error = %e,
                        lines = b.header.line_count, "spool: damaged block skipped");
                }
            }
        }
        if !skip.is_empty() {
            // Copies not reached yet (not published or beyond this window).
            let mut state = self.shared.lock();
            skip.append(&mut state.handoff.delivered_spilled);
            state.handoff.delivered_spilled = skip;
        }
        out
    }

    /// Reads and decodes one block into a reused payload buffer.
    fn read_package(&mut self, b: &SpooledBlock) -> Result<Package, BlockError> {
        let mut payload = self.payloads.take(b.header.uncompressed_len as usize);
        segment::read_payload(&b.file, &b.meta(), &mut self.scratch, &mut payload)?;
        Ok(codec::decode_package(&self.payloads.lend(payload))?)
    }

    /// Records (without fsync) that the window is about to go out, and counts a
    /// window re-sent after a restart as a replay.
    fn mark_sent(&mut self, blocks: &[SpooledBlock]) {
        let (first, end) = (blocks[0].at, blocks[blocks.len() - 1].end());
        let replay_below = self.shared.lock().replay_below;
        if first < replay_below {
            let replayed = blocks.iter().filter(|b| b.at < replay_below).count();
            self.shared.lock().stats.replayed_packages += replayed as u64;
            metrics::counter!(FORWARD_REPLAYED_PACKAGES_TOTAL, "sink" => self.name.to_string())
                .increment(replayed as u64);
        }
        let cursor = CursorFile {
            version: 1,
            forwarded_below: first,
            sent_below: end.max(replay_below),
        };
        if let Err(e) = spool::write_cursor(&self.dir, &cursor, false) {
            tracing::warn!(sink = %self.name, error = %e, "spool: could not record a send");
        }
    }

    /// Sends `window` until the destination took it. `handed`: it came from memory,
    /// and is given up once the writer spilled it (the spool then sends it).
    fn send_until_acknowledged(
        &mut self,
        window: &[SpooledPackage],
        handed: bool,
    ) -> Result<Delivered, Stop> {
        let sink = self.name.to_string();
        let records: u64 = window.iter().map(|p| p.package.records.len() as u64).sum();
        let bytes: u64 = window.iter().map(SpooledPackage::body_bytes).sum();
        let mut backoff = BACKOFF_START;
        loop {
            metrics::counter!(FORWARD_RECORDS_TOTAL, "sink" => sink.clone()).increment(records);
            metrics::counter!(FORWARD_BYTES_TOTAL, "sink" => sink.clone()).increment(bytes);
            let started = Instant::now();
            // However long the destination takes is its outage, not a stall of ours.
            let result = health::parked(|| self.destination.send(window));
            metrics::histogram!(FORWARD_REQUEST_SECONDS, "sink" => sink.clone())
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(delivered) => {
                    self.shared.lock().handoff.behind = false;
                    health::note(None);
                    metrics::gauge!(FORWARD_DESTINATION_UP, "sink" => sink.clone()).set(1.0);
                    return Ok(delivered);
                }
                Err(e) => {
                    if handed {
                        self.shared.lock().handoff.behind = true;
                    }
                    health::note(Some("destination_down"));
                    metrics::gauge!(FORWARD_DESTINATION_UP, "sink" => sink.clone()).set(0.0);
                    self.shared.lock().stats.retries += 1;
                    metrics::counter!(FORWARD_RETRIES_TOTAL, "sink" => sink.clone(), "reason" => e.reason)
                        .increment(1);
                    if handed
                        && (self.shared.lock().handoff.in_flight.front()).is_some_and(|h| h.spilled)
                    {
                        tracing::warn!(sink = %self.name, destination = self.destination.kind(),
                            error = %e, "forwarding failed; the window was spilled, the spool sends it");
                        return Err(Stop::Spilled);
                    }
                    let wait = retry_wait(&e, backoff);
                    tracing::warn!(sink = %self.name, destination = self.destination.kind(),
                        error = %e, retry_in = ?wait, "forwarding failed; the window is kept and sent again");
                    health::parked(|| self.sleep_unless_closing(wait))?;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Sleeps `wait`, returning early with `Closing` once the drain deadline passed.
    fn sleep_unless_closing(&self, wait: Duration) -> Result<(), Stop> {
        let until = Instant::now() + wait;
        let mut state = self.shared.lock();
        loop {
            let now = Instant::now();
            if state.stop_at.is_some_and(|t| now >= t) {
                return Err(Stop::Closing);
            }
            if now >= until {
                return Ok(());
            }
            let limit = state.stop_at.map_or(until, |t| t.min(until));
            state = self
                .shared
                .wait(state, limit.saturating_duration_since(now));
        }
    }

    /// Counts what was delivered and refused, and writes refused records to the dead
    /// letter file.
    fn account(&mut self, window: &[SpooledPackage], delivered: &Delivered) {
        let sink = self.name.to_string();
        let mut rejected_total = delivered.rejected_unidentified;
        if delivered.rejected_unidentified > 0 {
            metrics::counter!(FORWARD_REJECTED_RECORDS_TOTAL, "sink" => sink.clone(), "reason" => "partial_success")
                .increment(delivered.rejected_unidentified);
            tracing::error!(sink = %self.name, records = delivered.rejected_unidentified,
                "destination refused records (partial success); dropped");
        }
        for r in &delivered.rejected {
            let Some(package) = window.get(r.package) else {
                continue;
            };
            let all: Vec<usize>;
            let records: &[usize] = match &r.records {
                Some(list) => list,
                None => {
                    all = (0..package.package.records.len()).collect();
                    &all
                }
            };
            rejected_total += records.len() as u64;
            metrics::counter!(FORWARD_REJECTED_RECORDS_TOTAL, "sink" => sink.clone(), "reason" => r.reason)
                .increment(records.len() as u64);
            tracing::error!(sink = %self.name, source = %package.source.id, package = package.package_id,
                records = records.len(), reason = r.reason, detail = %r.detail,
                dead_letter = self.dead_letter.as_ref().map(|d| d.path.display().to_string()),
                "destination refused records for good");
            self.dead_letter_write(package, records, r);
        }
        if rejected_total > 0 {
            self.shared.lock().stats.rejected_lines += rejected_total;
            metrics::counter!(DROPPED_LINES_TOTAL, "reason" => "sink_rejected")
                .increment(rejected_total);
        }
        let records: u64 = window.iter().map(|p| p.package.records.len() as u64).sum();
        metrics::counter!(FORWARD_ACKED_RECORDS_TOTAL, "sink" => sink)
            .increment(records.saturating_sub(rejected_total));
    }

    fn dead_letter_write(&mut self, package: &SpooledPackage, records: &[usize], r: &Rejected) {
        let Some(dl) = &mut self.dead_letter else {
            return;
        };
        if let Err(e) = dl.write(package, records, r.reason) {
            metrics::counter!(FORWARD_DEAD_LETTER_ERRORS_TOTAL, "sink" => self.name.to_string())
                .increment(1);
            tracing::error!(sink = %self.name, path = %dl.path.display(), error = %e,
                "could not write refused records to the dead-letter file");
        }
    }

    /// Moves the cursor past the window, durably, and wakes a writer waiting for room.
    fn acknowledge(&mut self, blocks: &[SpooledBlock]) {
        let cursor = {
            let mut state = self.shared.lock();
            for _ in blocks {
                state.in_flight.pop_front();
            }
            debug_assert_eq!(state.check(), Ok(()));
            CursorFile {
                version: 1,
                forwarded_below: state.cursor(),
                sent_below: state.cursor().max(state.replay_below),
            }
        };
        if let Err(e) = spool::write_cursor(&self.dir, &cursor, true) {
            // Not fatal: the cursor only moves back, so the worst case is a re-send.
            metrics::counter!(SPOOL_CURSOR_ERRORS_TOTAL, "sink" => self.name.to_string())
                .increment(1);
            tracing::warn!(sink = %self.name, error = %e, "spool: could not persist the cursor");
        }
        self.shared.notify();
    }

    fn publish_age(&self, oldest: Option<&SpooledBlock>) {
        let age = oldest.map_or(0.0, |b| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64);
            (now.saturating_sub(b.header.min_ts)).max(0) as f64 / 1e9
        });
        metrics::gauge!(SPOOL_OLDEST_UNFORWARDED_SECONDS, "sink" => self.name.to_string()).set(age);
    }
}

/// How long to wait before sending a failed window again: the backoff, or what the
/// destination asked for if that is longer (capped).
fn retry_wait(e: &SendError, backoff: Duration) -> Duration {
    match e.retry_after {
        Some(after) => after.min(RETRY_AFTER_MAX).max(backoff.min(BACKOFF_START)),
        None => backoff,
    }
}

mod buffers;
#[cfg(test)]
mod tests;

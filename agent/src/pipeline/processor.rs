//! The per-source processor: frame → parse → batch → route, for every reader of
//! every open source, on the thread of the input that drives it.
//!
//! [`Pipeline`] implements [`Input`]: each opened source gets a slot (framer,
//! package builder, enrichment) per config that reads it ([`super::fanout`]); chunks
//! become records, records become packages, and a due package is handed to its
//! sink's queue — which blocks when the sink is slow (the backpressure).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::fanout::{Fanout, Reader};
use super::input::{Content, EndReason, Input, Opening};
use crate::batch::BatchBuilder;
use crate::checkpoint::SharedRegistry;
use crate::config::{Config, Format};
use crate::discovery::PodLogRef;
use crate::enrich::{Enricher, SourceEnrichment, SourceFields};
use crate::frame::{Framed, Framer, LineFlags, Out, Stream};
use crate::metrics::catalogue::{
    CONFIG_LINES_TOTAL, ENRICH_HELD_PACKAGES, INPUT_PARSE_FAILURES_TOTAL, LINES_FILTERED_TOTAL,
    LINES_INVALID_UTF8_TOTAL, LINES_MALFORMED_TOTAL, LINES_MASKED_TOTAL, LINES_READ_TOTAL,
    LINES_TRUNCATED_TOTAL, OPEN_PACKAGE_BYTES, PACKAGES_SHIPPED_EARLY_TOTAL, PARSE_FAILURES_TOTAL,
};
use crate::parse::{Parser, Utf8Checked};
use crate::route::Router;
use crate::source::file::container::{self, ContainerList, ContainerView};
use crate::source::{SourceId, SourceInfo};
use crate::transform::Transform;

/// Per-reader state of the processing stages.
struct Slot {
    config: usize,
    /// How its bytes are framed (a captured stream's are raw lines).
    format: Format,
    framer: Framer,
    builder: BatchBuilder,
    /// For a captured container stream: the stream its raw-framed lines belong to.
    stream: Option<Stream>,
    /// The source's fields (pod metadata) when enrichment is on.
    enrichment: Option<SourceEnrichment>,
    /// The container of a file read inside it (`container_paths`), as it opened.
    container: Option<PodLogRef>,
    /// Whether it is counted on the match board (files are; captured streams not).
    on_board: bool,
    /// Its line counters, registered at its first counted chunk.
    counters: Option<LineCounters>,
}

/// The counters every chunk adds to, by the slot's labels: handles kept by the slot,
/// since a `metrics::counter!` with labels is a registry lookup (the key hashed, a
/// lock), once per chunk: a captured stream with a small ring hands on tens of
/// thousands of chunks a second.
struct LineCounters {
    /// `LINES_READ_TOTAL{source_kind}`.
    read: metrics::Counter,
    /// `CONFIG_LINES_TOTAL{config}`.
    config: metrics::Counter,
}

/// A bound on the memory all sources' open packages hold together
/// ([`Input::bound_open_packages`]; capture's pipeline has one, the others none).
///
/// Invariant, whenever no [`Input`] call (or `quiesce`, `seal_all`) is under way:
/// `held` is the sum of [`BatchBuilder::held_bytes`] over every slot, and `held <=
/// max` unless what is over it cannot be shipped (a reserved vector with no record
/// yet). `held` is kept by adding each call's change to the slots of the source it
/// is about (`data`, `gap`, `ended`: no walk over hundreds of slots per chunk), and
/// counted again from every slot at each tick
/// (`pipeline::tests::open_packages_are_bounded_together_oldest_shipped_first`).
#[derive(Clone, Copy, Debug)]
struct OpenBound {
    max: usize,
    held: usize,
}

impl OpenBound {
    /// Where shipping early stops: a quarter below the bound, so the walk and sort
    /// over every slot happen once per quarter of the bound's bytes, not per chunk.
    fn low_water(&self) -> usize {
        self.max - self.max / 4
    }
}

/// Counters of what a pipeline shipped, for the run's summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct Shipped {
    pub lines: u64,
    pub bytes: u64,
    pub packages: u64,
}

/// Frame → parse → batch → route, run on the input's thread.
pub struct Pipeline {
    config: Arc<Config>,
    parsers: Vec<Parser>,
    /// Each config's `processors`, by config index like `parsers`.
    transforms: Vec<Transform>,
    router: Router,
    registry: SharedRegistry,
    slots: HashMap<SourceId, Slot>,
    /// The further readers of files several configs read.
    fanout: Fanout,
    /// Reused between chunks: framed records on their way into a package, and the
    /// chunks their spans index (those of lines the framer appends to a package
    /// directly too), until the package takes them (see [`Out`]).
    scratch: Framed,
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
    shipped: Shipped,
    /// Fields the input decoded itself for the one record of the next
    /// [`Pipeline::message_with_fields`] (an OTLP log record's attributes).
    provided: Vec<(Bytes, Bytes)>,
    /// What all open packages hold together, and its bound; `None`: not bounded.
    open_bound: Option<OpenBound>,
    /// The gauge of `open_bound.held`, set every tick: registered at its first use, so
    /// a tick does not look its key up in the recorder's registry.
    open_bytes_gauge: Option<metrics::Gauge>,
}

impl Pipeline {
    pub fn new(config: &Config, router: Router, registry: SharedRegistry) -> Pipeline {
        Pipeline {
            parsers: config
                .sources
                .iter()
                .map(|s| Parser::new(&s.parser))
                .collect(),
            transforms: config
                .sources
                .iter()
                .map(|s| Transform::new(&s.processors))
                .collect(),
            config: Arc::new(config.clone()),
            router,
            registry,
            slots: HashMap::new(),
            fanout: Fanout::default(),
            scratch: Framed::default(),
            chunk_utf8: None,
            tick_ids: Vec::new(),
            stalled: Duration::ZERO,
            enricher: None,
            board: None,
            containers: None,
            shipped: Shipped::default(),
            provided: Vec::new(),
            open_bound: None,
            open_bytes_gauge: None,
        }
    }

    /// Reports the containers each config reads to `board` from now on.
    pub fn set_match_board(&mut self, board: Arc<crate::collections::MatchBoard>) {
        self.board = Some(board);
    }

    /// Enriches every source opened from now on with `enricher`'s fields.
    pub fn set_enricher(&mut self, enricher: Arc<Enricher>) {
        self.enricher = Some(enricher);
    }

    /// Names the container of every file read inside a container from now on.
    pub fn set_containers(&mut self, containers: Arc<dyn ContainerList>) {
        self.containers = Some(containers);
    }

    /// One record of a source opened with [`Content::Messages`] (`body`, exactly one
    /// record with that format), carrying `fields` besides what its parser finds: an
    /// input that decoded the record's fields itself (OTLP attributes) hands them over
    /// this way. They come before the processors, like a parser's. `written_ns` is
    /// the record's own time, when it has one.
    pub fn message_with_fields(
        &mut self,
        source: SourceId,
        offset: u64,
        body: Bytes,
        fields: Vec<(Bytes, Bytes)>,
        written_ns: Option<i64>,
    ) {
        debug_assert!(
            self.slots
                .get(&source)
                .is_none_or(|s| s.format == Format::Message),
            "fields go with one record: a message source's"
        );
        self.provided = fields;
        self.data(source, offset, body, written_ns);
        self.provided.clear();
    }

    /// What this pipeline read and shipped so far.
    pub fn shipped(&self) -> Shipped {
        self.shipped
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
                slot.framer.flush_expired(far, &mut self.scratch.out());
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
        self.recount_open();
    }

    /// What the open packages hold together by the bound's count, after checking
    /// that count against every slot (the bound's invariant); `None` without a bound.
    #[cfg(test)]
    pub(super) fn checked_open_bytes(&self) -> Option<usize> {
        let bound = self.open_bound?;
        let held = self.held_in_all();
        assert_eq!(bound.held, held, "the running count is the slots' sum");
        Some(held)
    }

    /// What the open packages of `source` and of its further readers hold, when a
    /// bound counts it (0 otherwise: nothing to pay for without one).
    fn held_by(&self, source: SourceId) -> usize {
        if self.open_bound.is_none() {
            return 0;
        }
        self.held_in(source)
            + self
                .fanout
                .branches(source)
                .iter()
                .map(|&b| self.held_in(b))
                .sum::<usize>()
    }

    /// What the open package of `source` holds (0 without a slot).
    fn held_in(&self, source: SourceId) -> usize {
        self.slots
            .get(&source)
            .map_or(0, |s| s.builder.held_bytes())
    }

    /// What every open package holds, counted from the slots.
    fn held_in_all(&self) -> usize {
        self.slots.values().map(|s| s.builder.held_bytes()).sum()
    }

    /// Adds what a call about `source` changed in its packages (`before`: what they
    /// held when it began) and, over the bound, ships the oldest open packages.
    fn settle_open(&mut self, source: SourceId, before: usize) {
        let after = self.held_by(source);
        let Some(bound) = &mut self.open_bound else {
            return;
        };
        bound.held = (bound.held + after).saturating_sub(before);
        if bound.held > bound.max {
            self.ship_oldest();
        }
    }

    /// Counts what every open package holds again (each tick, and after calls that
    /// touch every slot); over the bound, ships the oldest.
    fn recount_open(&mut self) {
        let held = self.held_in_all();
        let Some(bound) = &mut self.open_bound else {
            return;
        };
        bound.held = held;
        if bound.held > bound.max {
            self.ship_oldest();
        }
    }

    /// Ships open packages, oldest first, until what they hold together is a quarter
    /// below the bound. Oldest, not largest: a package's records are slices of read
    /// chunks that other streams' packages share (capture's runs interleave streams),
    /// and a chunk is freed when the last package holding a slice of it ships, so what
    /// stays allocated is what arrived since the oldest open package opened. Shipping
    /// early only makes a package smaller than its limits would: it is sealed between
    /// chunks like any other, at its framer's resume offset, and waits for its pod's
    /// metadata no longer (as a full package does not).
    fn ship_oldest(&mut self) {
        let Some(bound) = self.open_bound else {
            return;
        };
        let mut open: Vec<(Instant, SourceId)> = self
            .slots
            .iter()
            .filter_map(|(id, s)| Some((s.builder.opened_at()?, *id)))
            .collect();
        open.sort_unstable();
        let mut held = bound.held;
        let mut shipped = 0u64;
        for (_, id) in open {
            if held <= bound.low_water() {
                break;
            }
            let before = self.held_in(id);
            self.ship(id);
            let after = self.held_in(id);
            held = (held + after).saturating_sub(before);
            shipped += 1;
        }
        if let Some(bound) = &mut self.open_bound {
            bound.held = held;
        }
        metrics::counter!(PACKAGES_SHIPPED_EARLY_TOTAL).increment(shipped);
    }

    /// Parses the records in `scratch` into the slot's package and ships it if due.
    fn absorb(&mut self, source: SourceId, now: Instant) {
        let Some(slot) = self.slots.get_mut(&source) else {
            self.scratch.clear();
            return;
        };
        let parser = &self.parsers[slot.config];
        let transform = &self.transforms[slot.config];
        let only_stream = self.config.sources[slot.config].stream;
        let mut counts = Counts {
            records: self.scratch.lines.len() as u64,
            ..Counts::default()
        };
        let Framed { lines, chunks } = &mut self.scratch;
        for mut line in lines.drain(..) {
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
                .is_some_and(|c| c.vouches_for(line.body.get(chunks)));
            let first_field = slot.builder.fields_mut().len();
            parser.apply_with(
                &mut line,
                chunks,
                index,
                slot.builder.fields_mut(),
                known_utf8,
            );
            for (key, value) in self.provided.drain(..) {
                let line = index;
                slot.builder.fields_mut().push(crate::batch::Field {
                    line,
                    key,
                    value: value.into(),
                });
            }
            counts.flags(line.flags);
            if !transform.is_empty() {
                let fields = slot.builder.fields_mut();
                let outcome = transform.apply(&mut line, chunks, index, fields, first_field);
                counts.masked += outcome.masked as u64;
                if outcome.dropped {
                    counts.filtered += 1;
                    continue;
                }
            }
            slot.builder.push(line, chunks, now);
        }
        // Chunks of filtered lines, and the read chunk's reference, go now.
        chunks.clear();
        self.account(source, counts, now);
    }

    /// Counts what a chunk's records were in the metrics, and ships the slot's package
    /// if it is due.
    fn account(&mut self, source: SourceId, counts: Counts, now: Instant) {
        let Some(slot) = self.slots.get_mut(&source) else {
            return;
        };
        let parser = &self.parsers[slot.config];
        let kind = slot.builder.source().kind.as_str();
        let Counts {
            records: n,
            truncated,
            malformed,
            invalid_utf8,
            parse_failed,
            filtered,
            masked,
        } = counts;
        self.shipped.lines += n;
        // The config's name as the label: a reference count, no copy.
        let config = &self.config.sources[slot.config].name;
        if n > 0 {
            let counters = slot.counters.get_or_insert_with(|| LineCounters {
                read: metrics::counter!(LINES_READ_TOTAL, "source_kind" => kind),
                config: metrics::counter!(CONFIG_LINES_TOTAL, "config" => config.clone()),
            });
            counters.read.increment(n);
            counters.config.increment(n);
        }
        if truncated > 0 {
            metrics::counter!(LINES_TRUNCATED_TOTAL, "source_kind" => kind).increment(truncated);
        }
        if malformed > 0 {
            metrics::counter!(LINES_MALFORMED_TOTAL, "source_kind" => kind).increment(malformed);
        }
        if invalid_utf8 > 0 {
            metrics::counter!(LINES_INVALID_UTF8_TOTAL, "source_kind" => kind)
                .increment(invalid_utf8);
        }
        if parse_failed > 0 {
            metrics::counter!(PARSE_FAILURES_TOTAL, "parser" => parser.kind())
                .increment(parse_failed);
            if self.config.sources[slot.config].input.is_some() {
                metrics::counter!(INPUT_PARSE_FAILURES_TOTAL, "input" => config.clone())
                    .increment(parse_failed);
            }
        }
        if filtered > 0 {
            metrics::counter!(LINES_FILTERED_TOTAL, "config" => config.clone()).increment(filtered);
        }
        if masked > 0 {
            metrics::counter!(LINES_MASKED_TOTAL, "config" => config.clone()).increment(masked);
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
        attach_source_fields(
            slot,
            self.enricher.as_deref(),
            &self.config.sources[slot.config].fields,
        );
        let end_offset = slot.framer.resume_offset();
        let Some(batch) = slot.builder.seal(end_offset) else {
            return;
        };
        self.registry.sent(source, batch.package_id, end_offset);
        self.shipped.packages += 1;
        let sending = Instant::now();
        // A full queue is the sink's stall to report, if any, not this thread's.
        let sent = crate::metrics::health::parked(|| self.router.send(slot.config, batch));
        self.stalled += sending.elapsed();
        if !sent {
            // Only at shutdown; the package stays unacknowledged and is re-read next start.
            tracing::warn!(%source, "sink queue closed; package not shipped");
        }
    }

    /// A framer for `format` and config `config`'s line settings, at `offset`.
    fn framer(&self, format: Format, config: usize, offset: u64) -> Framer {
        let source_config = &self.config.sources[config];
        Framer::new(
            format,
            source_config.max_line_bytes,
            source_config.multiline.clone(),
            offset,
        )
        .with_partial_timeout(self.config.partial_timeout)
    }

    /// Starts the processing state of one reader of a source.
    fn open_slot(&mut self, reader: Reader, start_offset: u64, content: &Content) {
        let Reader {
            info,
            config,
            predecessor,
        } = reader;
        let (format, stream) = match content {
            Content::File { .. } => (self.config.sources[config].format, None),
            Content::Stream { stream, .. } => (Format::Raw, Some(*stream)),
            Content::Messages => (Format::Message, None),
        };
        let mut framer = self.framer(format, config, start_offset);
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
        let (enrichment, container, on_board) = match content {
            Content::File { .. } => self.start_file(&info, config),
            Content::Stream { container, .. } => {
                // The stream's name is not a log path: its container comes with it.
                let enrichment = match (&self.enricher, container) {
                    (Some(enricher), Some((log, id))) => {
                        Some(enricher.track_container(log.clone(), id.clone(), Instant::now()))
                    }
                    _ => None,
                };
                (enrichment, None, false)
            }
            // A network input names no container.
            Content::Messages => (None, None, false),
        };
        let extra = &self.config.sources[config].fields;
        match &enrichment {
            Some(e) => builder.set_source_fields(with_fields(e.fields(), extra)),
            None if !extra.is_empty() => builder.set_source_fields(Arc::new(extra.clone())),
            None => {}
        }
        let name = &self.config.sources[config].name;
        tracing::debug!(source = %info.id, path = %info.path.display(), start_offset, config = %name, "source opened");
        self.slots.insert(
            info.id,
            Slot {
                config,
                format,
                framer,
                builder,
                stream,
                enrichment,
                container,
                on_board,
                counters: None,
            },
        );
    }

    /// The enrichment of a file opening now (from its container if it is read inside
    /// one, else from its path), its container, and its count on the match board.
    fn start_file(
        &self,
        info: &SourceInfo,
        config: usize,
    ) -> (Option<SourceEnrichment>, Option<PodLogRef>, bool) {
        let container = self.container_file_owner(&info.path);
        let now = Instant::now();
        let enrichment = self.enricher.as_ref().map(|enricher| match &container {
            // A file inside a container carries the container's fields, as its CRI
            // log would.
            Some(c) => {
                let id = (!c.id.is_empty()).then(|| c.id.clone());
                enricher.track_container(c.pod.clone(), id, now)
            }
            None => enricher.track_path(&info.path, now),
        });
        let name = &self.config.sources[config].name;
        if let Some(board) = &self.board {
            match &container {
                Some(c) => board.update_container(name, &c.pod, 1),
                None => board.update(name, &info.path, 1),
            }
        }
        (enrichment, container.map(|c| c.pod), self.board.is_some())
    }

    /// The container whose file `path` (a logical `container://…` path) is.
    fn container_file_owner(&self, path: &Path) -> Option<ContainerView> {
        container::parse_logical(path)?;
        container::container_of(&self.containers.as_ref()?.containers(), path)
    }

    fn data_slot(&mut self, source: SourceId, chunk: Bytes, written_ns: i64) {
        let Some(slot) = self.slots.get_mut(&source) else {
            return;
        };
        self.shipped.bytes += chunk.len() as u64;
        let now = Instant::now();
        let framer_now = unstalled(now, self.stalled);
        let parser = &self.parsers[slot.config];
        // One UTF-8 check for the chunk instead of one per line: every parser, JSON's
        // too, takes a line the chunk's check vouches for as valid (see `parse`).
        self.chunk_utf8 = Some(Utf8Checked::new(&chunk));
        // Records that nothing parses, filters or transforms go from the framer
        // straight into the package: no copy through `scratch`, no per-record call.
        let direct = parser.is_none()
            && self.transforms[slot.config].is_empty()
            && self.config.sources[slot.config].stream.is_none()
            && self.provided.is_empty();
        if direct {
            let lines = slot.builder.lines_to_append();
            let start = lines.len();
            let chunks = &mut self.scratch.chunks;
            slot.framer
                .push(&chunk, written_ns, framer_now, &mut Out { lines, chunks });
            let mut counts = Counts::default();
            let utf8 = self.chunk_utf8.as_ref();
            let tag = slot.stream;
            slot.builder
                .appended(start, chunks, now, |body, stream, flags| {
                    unparsed(body, stream, flags, tag, utf8, &mut counts)
                });
            // What the package did not take (the read chunk's reference) goes now.
            chunks.clear();
            self.chunk_utf8 = None;
            self.account(source, counts, now);
        } else {
            slot.framer
                .push(&chunk, written_ns, framer_now, &mut self.scratch.out());
            self.absorb(source, now);
            self.chunk_utf8 = None;
        }
    }

    fn gap_slot(&mut self, source: SourceId, offset: u64) {
        let Some(slot) = self.slots.get_mut(&source) else {
            return;
        };
        slot.framer.finish(&mut self.scratch.out());
        self.absorb(source, Instant::now());
        let Some(slot) = self.slots.get(&source) else {
            return;
        };
        let framer = self.framer(slot.format, slot.config, offset);
        if let Some(slot) = self.slots.get_mut(&source) {
            slot.framer = framer;
        }
    }

    fn end_slot(&mut self, source: SourceId, reason: EndReason) {
        let now = Instant::now();
        if let Some(slot) = self.slots.get_mut(&source) {
            if let Some(board) = self.board.as_ref().filter(|_| slot.on_board) {
                let name = &self.config.sources[slot.config].name;
                match &slot.container {
                    Some(log) => board.update_container(name, log, -1),
                    None => board.update(name, &slot.builder.source().path, -1),
                }
            }
            if reason != EndReason::Shutdown {
                // The source is done: its unterminated last line is a record now.
                slot.framer.finish(&mut self.scratch.out());
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
                slot.framer.flush_idle(framer_now, &mut self.scratch.out());
            }
            // Ships the package if its timeout passed, even when nothing new came.
            self.absorb(id, now);
        }
        ids.clear();
        self.tick_ids = ids;
        self.publish_held();
        self.recount_open();
        if let Some(bound) = self.open_bound {
            self.open_bytes_gauge
                .get_or_insert_with(|| metrics::gauge!(OPEN_PACKAGE_BYTES))
                .set(bound.held as f64);
        }
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
            metrics::gauge!(ENRICH_HELD_PACKAGES).set(held as f64);
        }
    }
}

impl Input for Pipeline {
    fn opened(&mut self, opening: Opening) {
        let Opening {
            info,
            configs,
            start_offset,
            predecessor,
            content,
        } = opening;
        let config = self.config.clone();
        let readers = self.fanout.open(
            &info,
            &configs,
            predecessor,
            |c| config.sources[c].name.clone(),
            &self.registry,
        );
        for reader in readers {
            self.open_slot(reader, start_offset, &content);
        }
    }

    fn data(&mut self, source: SourceId, _offset: u64, chunk: Bytes, written_ns: Option<i64>) {
        let written_ns = written_ns.unwrap_or_else(wall_clock_ns);
        let before = self.held_by(source);
        // Each reader frames the same bytes its own way; the clone is a refcount.
        for branch in self.fanout.branches(source).to_vec() {
            self.data_slot(branch, chunk.clone(), written_ns);
        }
        self.data_slot(source, chunk, written_ns);
        self.settle_open(source, before);
    }

    fn gap(&mut self, source: SourceId, offset: u64) {
        let before = self.held_by(source);
        for branch in self.fanout.branches(source).to_vec() {
            self.gap_slot(branch, offset);
        }
        self.gap_slot(source, offset);
        self.settle_open(source, before);
    }

    fn ended(&mut self, source: SourceId, reason: EndReason) {
        let before = self.held_by(source);
        for branch in self.fanout.end(source) {
            self.end_slot(branch, reason);
            self.registry.end_branch(branch);
        }
        self.end_slot(source, reason);
        // Its slots are gone: what they held leaves the sum.
        self.settle_open(source, before);
    }

    fn tick(&mut self, now: Instant) {
        // The file source's and the capture stage's loops both tick their pipeline.
        crate::metrics::health::progress();
        self.tick_slots(now);
    }

    fn bound_open_packages(&mut self, bytes: usize) {
        self.open_bound = Some(OpenBound {
            max: bytes,
            held: 0,
        });
        self.recount_open();
    }
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
fn attach_source_fields(slot: &mut Slot, enricher: Option<&Enricher>, extra: &SourceFields) {
    if slot.builder.is_empty() {
        return;
    }
    if let (Some(enrichment), Some(enricher)) = (slot.enrichment.as_mut(), enricher) {
        enrichment.release(enricher);
        slot.builder
            .set_source_fields(with_fields(enrichment.fields(), extra));
    }
}

/// The container's fields followed by the config's own (`SourceConfig::fields`). The
/// config's keys are prefixed (`tag.`, `logtap.`) by whoever made them, so they never
/// shadow a container field. One small copy per package, only for configs that have
/// fields of their own.
fn with_fields(base: &Arc<SourceFields>, extra: &SourceFields) -> Arc<SourceFields> {
    if extra.is_empty() {
        return base.clone();
    }
    let mut all = SourceFields::with_capacity(base.len() + extra.len());
    all.extend(base.iter().cloned());
    all.extend(extra.iter().cloned());
    Arc::new(all)
}

/// What a chunk's records were, for the metrics.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    /// Records framed (before filtering).
    records: u64,
    truncated: u64,
    malformed: u64,
    invalid_utf8: u64,
    parse_failed: u64,
    /// Dropped by a processor.
    filtered: u64,
    masked: u64,
}

impl Counts {
    #[inline]
    fn flags(&mut self, f: LineFlags) {
        if f != LineFlags::empty() {
            self.truncated += f.contains(LineFlags::TRUNCATED) as u64;
            self.malformed += f.contains(LineFlags::MALFORMED) as u64;
            self.invalid_utf8 += f.contains(LineFlags::INVALID_UTF8) as u64;
            self.parse_failed += f.contains(LineFlags::PARSE_FAILED) as u64;
        }
    }
}

/// The `parser: none` stage over a record the framer appended to a package: a captured
/// stream's tag, and the UTF-8 flag exactly as [`Parser::apply_with`] sets it for no
/// parser (`utf8` vouches for slices of the checked chunk, the rest is checked here).
#[inline(always)]
fn unparsed(
    body: &[u8],
    stream: &mut Stream,
    flags: &mut LineFlags,
    tag: Option<Stream>,
    utf8: Option<&Utf8Checked>,
    counts: &mut Counts,
) {
    counts.records += 1;
    if let Some(tag) = tag {
        *stream = tag;
    }
    let known = utf8.is_some_and(|c| c.vouches_for(body));
    if !known && std::str::from_utf8(body).is_err() {
        flags.insert(LineFlags::INVALID_UTF8);
    }
    counts.flags(*flags);
}

/// The framers' clock: real time minus the time the source thread spent blocked on
/// full sink queues. A multiline record's `flush_timeout` means "no new line came",
/// and while the thread is blocked no line *can* come, however many wait in the file:
/// counting that time would cut stack traces in two exactly when a sink is slow.
fn unstalled(now: Instant, stalled: Duration) -> Instant {
    now.checked_sub(stalled).unwrap_or(now)
}

fn wall_clock_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

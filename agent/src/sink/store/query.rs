//! `logtap query`: search a local store, also while the agent is writing to it.
//!
//! The reader opens segment files read-only and indexes them from block headers
//! ([`index::open_for_reading`]); a block being written at the tail is simply not seen
//! yet, and a segment deleted by retention after it was opened stays readable through
//! its descriptor. Blocks whose source or time range cannot match are skipped from the
//! index without being read.
//!
//! Hits are printed in store order (the order packages were acknowledged, which is
//! source order within a source), oldest first; `--tail` keeps the last `--limit`.
//! `--follow` prints the last `--limit` hits, then the matches of every block stored
//! afterwards as it appears (the store is indexed again every 250 ms; a block still
//! being written is read on the next look), deduplicated the same way.
//! `-i` folds ASCII case only.
//!
//! # Performance
//!
//! A query without `--tail` stops at its limit; `--tail` and `--stats` read every
//! block that the index cannot rule out (by source glob and time range), so narrow them
//! with `--since`/`--source` on large stores.
//!
//! # Duplicates
//!
//! A package re-sent after a crash is stored twice. Unless `--raw`, a record is shown
//! once per `(source_id, offset)`: blocks are scanned in store order and each source
//! keeps the offset ranges `[lowest, end)` of the blocks already read; a record inside
//! one of them is a copy (every record of a later package starts at or after a
//! package's end offset, so the range holds only records read already). A CRI package
//! can also hold records starting at or past its end offset (completed while a `P`
//! partial that started earlier was pending): those are kept as single offsets. That
//! costs a few intervals per source, not a set of every record seen.
//!
//! # Context
//!
//! `--context N` shows the N records before and after a hit from the same source, in
//! offset order, across package boundaries and ignoring copies. It reads only the
//! blocks of that source whose offset ranges are nearest the hit, from the index, and
//! caches decoded blocks because neighbouring hits share them.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;

use crate::batch::codec::Record;
use crate::source::{SourceId, SourceInfo, SourceKind};

use super::index::{self, OpenSegment};
use super::render::{self, RecordView};
use super::segment::{self, BlockMeta};
use super::sources;

/// Arguments of `logtap query`.
#[derive(clap::Args, Debug, Clone)]
pub struct QueryArgs {
    /// Store directory.
    #[arg(long, default_value = "/var/lib/logtap/store")]
    pub store: PathBuf,
    /// Words that must all occur in the body (substring match).
    pub keywords: Vec<String>,
    /// Match keywords ignoring ASCII case.
    #[arg(short = 'i', long)]
    pub ignore_case: bool,
    /// `key=value`: a parsed field or a source field (`k8s.pod`, `k8s.pod.label.app`, …)
    /// must equal the value exactly (repeatable, all must match).
    #[arg(long = "field", value_name = "KEY=VALUE", value_parser = parse_field)]
    pub fields: Vec<FieldMatch>,
    /// Glob on the source path (repeatable, any may match), e.g. `/var/log/pods/default_*/**`.
    #[arg(long = "source", value_name = "GLOB")]
    pub sources: Vec<String>,
    /// Only records at or after this time: RFC 3339 (`2024-05-01T12:00:00Z`) or an age (`15m`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<TimeBound>,
    /// Only records at or before this time (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<TimeBound>,
    /// Show N records of the same source before and after each hit.
    #[arg(short = 'C', long, value_name = "N", default_value_t = 0)]
    pub context: usize,
    /// At most this many hits (0: no limit).
    #[arg(short = 'n', long, default_value_t = 100)]
    pub limit: usize,
    /// Show the last --limit hits instead of the first.
    #[arg(long)]
    pub tail: bool,
    /// Newline-delimited JSON output.
    #[arg(long)]
    pub json: bool,
    /// Print totals (blocks, records, unique, duplicates, per source) instead of hits.
    #[arg(long)]
    pub stats: bool,
    /// Do not deduplicate records stored more than once.
    #[arg(long)]
    pub raw: bool,
    /// After the last --limit hits, keep printing matching records as the agent
    /// stores them (like `tail -f`), until interrupted or the output is closed.
    #[arg(short = 'f', long, conflicts_with_all = ["context", "stats"])]
    pub follow: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldMatch {
    pub key: String,
    pub value: String,
}

fn parse_field(s: &str) -> Result<FieldMatch, String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    Ok(FieldMatch {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

/// A point in time, nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeBound(pub i64);

fn parse_time(s: &str) -> Result<TimeBound, String> {
    let to_ns = |t: SystemTime| -> i64 {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
        }
    };
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(TimeBound(to_ns(t)));
    }
    match humantime::parse_duration(s) {
        Ok(age) => Ok(TimeBound(
            to_ns(SystemTime::now())
                .saturating_sub(i64::try_from(age.as_nanos()).unwrap_or(i64::MAX)),
        )),
        Err(_) => Err(format!(
            "{s:?} is neither an RFC 3339 time (2024-05-01T12:00:00Z) nor an age (15m, 2h)"
        )),
    }
}

/// Runs a query against the store named in `args`, writing results to `out`.
pub fn run_query(args: &QueryArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut engine = Engine::open(args)?;
    let result = if args.stats {
        engine.stats(out)
    } else if args.follow {
        engine.search(out).and_then(|()| engine.follow(out))
    } else {
        engine.search(out)
    };
    match result {
        // `logtap query ... | head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing query output"),
    }
}

/// What `logtap query` says to a user who may not read the store: it is private to
/// the agent's user on purpose (see `crate::privileges`).
pub fn permission_denied(store: &std::path::Path) -> String {
    // SAFETY: geteuid(2) has no preconditions.
    let uid = unsafe { libc::geteuid() };
    format!(
        "permission denied reading the store at {} (you are uid {uid}): the store holds \
         every line the agent collected, so it is readable only by the user the agent \
         runs as (directories 0700, files 0600). Run `logtap query` as that user: \
         `sudo logtap query ...` on the node, or `kubectl exec` into the agent's pod",
        store.display()
    )
}

/// Offset ranges `[start, end)` of one source already read, merged and sorted.
#[derive(Default)]
struct Covered(Vec<(u64, u64)>);

impl Covered {
    fn contains(&self, offset: u64) -> bool {
        let i = self.0.partition_point(|&(start, _)| start <= offset);
        i > 0 && offset < self.0[i - 1].1
    }

    /// Marks the records of a block ending at `end_offset` as read (see the module
    /// docs: the lowest record offset, not the first, starts the range).
    fn insert_block(&mut self, records: &[Record], end_offset: u64) {
        let Some(lowest) = records.iter().map(|r| r.offset).min() else {
            return;
        };
        self.insert(lowest, end_offset);
        for r in records.iter().filter(|r| r.offset >= end_offset) {
            self.insert(r.offset, r.offset + 1);
        }
    }

    fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // Ranges touching or overlapping [start, end) merge into one.
        let lo = self.0.partition_point(|&(_, e)| e < start);
        let hi = self.0.partition_point(|&(s, _)| s <= end);
        if lo == hi {
            self.0.insert(lo, (start, end));
        } else {
            let merged = (start.min(self.0[lo].0), end.max(self.0[hi - 1].1));
            self.0.splice(lo..hi, [merged]);
        }
    }
}

/// A block by position in the reader's index: (segment, block within it).
type BlockRef = (usize, usize);

/// The source fields of one package, shared by its records.
type SourceFields = Rc<Vec<(Bytes, Bytes)>>;

/// A decoded block.
struct Block {
    source_fields: SourceFields,
    records: Vec<Record>,
}

struct Hit {
    source_id: SourceId,
    package_id: u64,
    source_fields: SourceFields,
    record: Record,
}

/// A record shown as context: its package id, its package's source fields, itself.
type Neighbour = (u64, SourceFields, Record);

/// Filters compiled from the arguments.
struct Filter {
    keywords: Vec<memchr::memmem::Finder<'static>>,
    ignore_case: bool,
    fields: Vec<FieldMatch>,
    since: i64,
    until: i64,
    sources: Option<globset::GlobSet>,
}

impl Filter {
    fn new(args: &QueryArgs) -> anyhow::Result<Filter> {
        let keywords = args
            .keywords
            .iter()
            .map(|k| {
                let k = if args.ignore_case {
                    k.to_ascii_lowercase()
                } else {
                    k.clone()
                };
                memchr::memmem::Finder::new(k.as_bytes()).into_owned()
            })
            .collect();
        let sources = if args.sources.is_empty() {
            None
        } else {
            let mut set = globset::GlobSetBuilder::new();
            for g in &args.sources {
                set.add(
                    globset::GlobBuilder::new(g)
                        .literal_separator(true)
                        .build()
                        .with_context(|| format!("--source {g:?}"))?,
                );
            }
            Some(set.build()?)
        };
        Ok(Filter {
            keywords,
            ignore_case: args.ignore_case,
            fields: args.fields.clone(),
            since: args.since.map_or(i64::MIN, |t| t.0),
            until: args.until.map_or(i64::MAX, |t| t.0),
            sources,
        })
    }

    fn block_may_match(
        &self,
        meta: &BlockMeta,
        sources: &HashMap<SourceId, Arc<SourceInfo>>,
    ) -> bool {
        let h = &meta.header;
        if h.line_count == 0 || h.max_ts < self.since || h.min_ts > self.until {
            return false;
        }
        match &self.sources {
            None => true,
            Some(set) => sources
                .get(&SourceId(h.source_id))
                .is_some_and(|s| set.is_match(&s.path)),
        }
    }

    /// `lowered` is scratch space for case-insensitive matching. A `--field` matches
    /// the record's parsed fields or its package's source fields.
    fn matches(&self, r: &Record, source_fields: &[(Bytes, Bytes)], lowered: &mut Vec<u8>) -> bool {
        if r.timestamp_ns < self.since || r.timestamp_ns > self.until {
            return false;
        }
        let body: &[u8] = if self.ignore_case && !self.keywords.is_empty() {
            lowered.clear();
            lowered.extend(r.body.iter().map(u8::to_ascii_lowercase));
            lowered
        } else {
            &r.body
        };
        if !self.keywords.iter().all(|k| k.find(body).is_some()) {
            return false;
        }
        self.fields.iter().all(|want| {
            let is_wanted = |(k, v): &(Bytes, Bytes)| {
                k[..] == *want.key.as_bytes() && v[..] == *want.value.as_bytes()
            };
            r.fields.iter().any(is_wanted) || source_fields.iter().any(is_wanted)
        })
    }
}

fn owned_record(r: &Record) -> Record {
    // Hits outlive their block; copying them keeps whole decompressed blocks from
    // being pinned in memory by a few records each.
    Record {
        body: Bytes::copy_from_slice(&r.body),
        fields: r
            .fields
            .iter()
            .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
            .collect(),
        ..*r
    }
}

fn owned_source_fields(fields: &[(Bytes, Bytes)]) -> SourceFields {
    // As `owned_record`: a hit must not pin its whole decompressed block.
    Rc::new(
        fields
            .iter()
            .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
            .collect(),
    )
}

const BLOCK_CACHE_ENTRIES: usize = 32;

struct Engine<'a> {
    args: &'a QueryArgs,
    filter: Filter,
    segments: Vec<OpenSegment>,
    sources: HashMap<SourceId, Arc<SourceInfo>>,
    compressed: Vec<u8>,
    cache: HashMap<BlockRef, Rc<Block>>,
    /// Blocks that failed to read (warned about once).
    bad_blocks: HashSet<BlockRef>,
    /// Per source, its non-empty blocks: built on first use by `--context`.
    source_blocks: HashMap<SourceId, Vec<BlockRef>>,
    /// Per source, the offsets shown already (what deduplication skips).
    covered: HashMap<SourceId, Covered>,
}

/// How often `--follow` looks for new blocks.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(250);

impl<'a> Engine<'a> {
    fn open(args: &'a QueryArgs) -> anyhow::Result<Engine<'a>> {
        let filter = Filter::new(args)?;
        let store = args.store.as_path();
        let denied = |e: &io::Error| e.kind() == io::ErrorKind::PermissionDenied;
        match std::fs::metadata(store) {
            Ok(m) if m.is_dir() => {}
            Err(e) if denied(&e) => anyhow::bail!(permission_denied(store)),
            _ => anyhow::bail!("no store at {}", store.display()),
        }
        // Sources first: the writer records a source before its first block, so every
        // block indexed afterwards has its source in the table.
        let sources = match sources::load(store) {
            Err(e) if denied(&e) => anyhow::bail!(permission_denied(store)),
            other => {
                other
                    .with_context(|| format!("reading the source table of {}", store.display()))?
                    .sources
            }
        };
        let segments = match index::open_for_reading(store) {
            Err(e) if denied(&e) => anyhow::bail!(permission_denied(store)),
            other => other.with_context(|| format!("indexing {}", store.display()))?,
        };
        Ok(Engine {
            args,
            filter,
            segments,
            sources,
            compressed: Vec::new(),
            cache: HashMap::new(),
            bad_blocks: HashSet::new(),
            source_blocks: HashMap::new(),
            covered: HashMap::new(),
        })
    }

    /// Indexes the store again: segments written or deleted since, new sources.
    fn reopen(&mut self) -> io::Result<()> {
        // Sources first, as in `open`.
        self.sources = sources::load(&self.args.store)?.sources;
        self.segments = index::open_for_reading(&self.args.store)?;
        // Block references are positions in `segments`: they changed.
        self.cache.clear();
        self.bad_blocks.clear();
        self.source_blocks.clear();
        Ok(())
    }

    /// For each segment (by its first sequence number), how many of its blocks were
    /// looked at; the newest block, if it was still being written, was not.
    fn blocks_looked_at(&self) -> HashMap<u64, usize> {
        let newest = self.segments.len().checked_sub(1);
        self.segments
            .iter()
            .enumerate()
            .map(|(si, seg)| {
                let n = seg.index.blocks.len();
                let unread = Some(si) == newest && n > 0 && self.bad_blocks.contains(&(si, n - 1));
                (seg.index.first_seq, n - usize::from(unread))
            })
            .collect()
    }

    /// `--follow`: every `FOLLOW_POLL`, indexes the store again and prints the
    /// matches of the blocks stored since it last looked, in store order; returns
    /// only on an output error (a closed pipe ends the query cleanly).
    fn follow(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let mut looked = self.blocks_looked_at();
        let mut lowered = Vec::new();
        let mut buf = Vec::new();
        loop {
            out.flush()?;
            std::thread::sleep(FOLLOW_POLL);
            self.reopen()?;
            let mut covered = std::mem::take(&mut self.covered);
            for si in 0..self.segments.len() {
                let (seq, total) = (
                    self.segments[si].index.first_seq,
                    self.segments[si].index.blocks.len(),
                );
                let newest = si + 1 == self.segments.len();
                let mut next = looked.get(&seq).copied().unwrap_or(0);
                while next < total {
                    let b = (si, next);
                    let h = self.meta(b).header;
                    if self.filter.block_may_match(self.meta(b), &self.sources) {
                        let Some(block) = self.load(b) else {
                            if newest && next + 1 == total {
                                break; // still being written: again next time
                            }
                            next += 1;
                            continue;
                        };
                        let source_id = SourceId(h.source_id);
                        let seen = covered.entry(source_id).or_default();
                        for r in &block.records {
                            if (!self.args.raw && seen.contains(r.offset))
                                || !self.filter.matches(r, &block.source_fields, &mut lowered)
                            {
                                continue;
                            }
                            buf.clear();
                            self.render(
                                &mut buf,
                                source_id,
                                h.package_id,
                                &block.source_fields,
                                r,
                                false,
                            );
                            out.write_all(&buf)?;
                        }
                        seen.insert_block(&block.records, h.end_offset);
                    }
                    next += 1;
                }
                looked.insert(seq, next);
            }
            self.covered = covered;
            let live: HashSet<u64> = self.segments.iter().map(|s| s.index.first_seq).collect();
            looked.retain(|seq, _| live.contains(seq));
        }
    }

    fn meta(&self, b: BlockRef) -> &BlockMeta {
        &self.segments[b.0].index.blocks[b.1]
    }

    /// A decoded block, or `None` (with one warning) if it is damaged.
    fn load(&mut self, b: BlockRef) -> Option<Rc<Block>> {
        if let Some(r) = self.cache.get(&b) {
            return Some(r.clone());
        }
        if self.bad_blocks.contains(&b) {
            return None;
        }
        let seg = &self.segments[b.0];
        let meta = seg.index.blocks[b.1];
        match segment::read_block(&seg.file, &meta, &mut self.compressed) {
            Ok(package) => {
                if self.cache.len() >= BLOCK_CACHE_ENTRIES {
                    self.cache.clear();
                }
                let block = Rc::new(Block {
                    source_fields: Rc::new(package.source_fields),
                    records: package.records,
                });
                self.cache.insert(b, block.clone());
                Some(block)
            }
            Err(e) => {
                let being_written =
                    b.0 + 1 == self.segments.len() && b.1 + 1 == seg.index.blocks.len();
                if being_written {
                    // The writer may still be copying the newest block into the page cache.
                    tracing::debug!(segment = %seg.index.path.display(), position = meta.position,
                        error = %e, "store: newest block not readable yet");
                } else {
                    tracing::warn!(segment = %seg.index.path.display(), position = meta.position,
                        error = %e, "store: skipping a damaged block");
                }
                self.bad_blocks.insert(b);
                None
            }
        }
    }

    /// Blocks that can hold matches, in store order.
    fn candidates(&self) -> Vec<BlockRef> {
        let mut out = Vec::new();
        for (si, seg) in self.segments.iter().enumerate() {
            for (bi, meta) in seg.index.blocks.iter().enumerate() {
                if self.filter.block_may_match(meta, &self.sources) {
                    out.push((si, bi));
                }
            }
        }
        out
    }

    fn path_of(&self, id: SourceId) -> Option<&std::path::Path> {
        self.sources.get(&id).map(|s| s.path.as_path())
    }

    fn search(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let limit = if self.args.limit == 0 {
            usize::MAX
        } else {
            self.args.limit
        };
        // Following shows the newest hits first, as `tail -f` does.
        let tail = self.args.tail || self.args.follow;
        let mut hits: VecDeque<Hit> = VecDeque::new();
        let mut covered = std::mem::take(&mut self.covered);
        let mut lowered = Vec::new();
        let candidates = self.candidates();
        let mut progress = crate::progress::Progress::stderr("blocks", candidates.len() as u64);
        let mut detail = String::new();
        'blocks: for (scanned, b) in candidates.into_iter().enumerate() {
            if scanned % 64 == 0 {
                detail.clear();
                let _ =
                    std::fmt::Write::write_fmt(&mut detail, format_args!("{} hits", hits.len()));
                progress.update(scanned as u64, &detail, std::time::Instant::now());
            }
            let Some(block) = self.load(b) else {
                continue;
            };
            let h = self.meta(b).header;
            let source_id = SourceId(h.source_id);
            let seen = covered.entry(source_id).or_default();
            let mut hit_fields: Option<SourceFields> = None;
            for r in block.records.iter() {
                if !self.args.raw && seen.contains(r.offset) {
                    continue;
                }
                if !self.filter.matches(r, &block.source_fields, &mut lowered) {
                    continue;
                }
                let source_fields = hit_fields
                    .get_or_insert_with(|| owned_source_fields(&block.source_fields))
                    .clone();
                hits.push_back(Hit {
                    source_id,
                    package_id: h.package_id,
                    source_fields,
                    record: owned_record(r),
                });
                if hits.len() > limit {
                    hits.pop_front();
                }
                if !tail && hits.len() >= limit {
                    break 'blocks;
                }
            }
            seen.insert_block(&block.records, h.end_offset);
        }
        progress.finish();
        self.covered = covered;
        if self.args.context == 0 {
            let mut buf = Vec::new();
            for hit in &hits {
                buf.clear();
                self.render(
                    &mut buf,
                    hit.source_id,
                    hit.package_id,
                    &hit.source_fields,
                    &hit.record,
                    false,
                );
                out.write_all(&buf)?;
            }
            return out.flush();
        }
        self.print_with_context(hits, out)
    }

    fn render(
        &self,
        buf: &mut Vec<u8>,
        source_id: SourceId,
        package_id: u64,
        source_fields: &[(Bytes, Bytes)],
        r: &Record,
        context: bool,
    ) {
        let view = RecordView {
            source_id,
            path: self.path_of(source_id),
            package_id,
            offset: r.offset,
            timestamp_ns: r.timestamp_ns,
            stream: r.stream,
            captured: self
                .sources
                .get(&source_id)
                .is_some_and(|s| s.kind == SourceKind::Capture),
            flags: r.flags,
            body: &r.body,
            source_fields,
        };
        if self.args.json {
            let fields = r.fields.iter().map(|(k, v)| (&k[..], &v[..]));
            render::write_json_record(buf, &view, fields, context);
        } else {
            render::write_text_record(buf, &view, context);
        }
    }

    fn blocks_of(&mut self, source_id: SourceId) -> Vec<BlockRef> {
        if let Some(list) = self.source_blocks.get(&source_id) {
            return list.clone();
        }
        let mut list = Vec::new();
        for (si, seg) in self.segments.iter().enumerate() {
            for (bi, meta) in seg.index.blocks.iter().enumerate() {
                if meta.header.source_id == source_id.0 && meta.header.line_count > 0 {
                    list.push((si, bi));
                }
            }
        }
        self.source_blocks.insert(source_id, list.clone());
        list
    }

    /// Up to `n` records of `source_id` just before `offset`, ascending, each offset
    /// once, with the package id of the block it was read from.
    fn records_before(&mut self, source_id: SourceId, offset: u64, n: usize) -> Vec<Neighbour> {
        let mut blocks: Vec<BlockRef> = self
            .blocks_of(source_id)
            .into_iter()
            .filter(|&b| self.meta(b).header.first_offset < offset)
            .collect();
        // Nearest first: once the n nearest records are known, no block whose records
        // all start below the farthest of them can contribute.
        blocks.sort_by_key(|&b| std::cmp::Reverse(self.meta(b).header.max_offset_bound()));
        let mut found: BTreeMap<u64, Neighbour> = BTreeMap::new();
        for b in blocks {
            let h = self.meta(b).header;
            if found.len() >= n
                && found
                    .keys()
                    .next()
                    .is_some_and(|&lo| h.max_offset_bound() < lo)
            {
                break;
            }
            let Some(block) = self.load(b) else {
                continue;
            };
            for r in block.records.iter().filter(|r| r.offset < offset) {
                found
                    .entry(r.offset)
                    .or_insert_with(|| (h.package_id, block.source_fields.clone(), r.clone()));
            }
            while found.len() > n {
                found.pop_first();
            }
        }
        found.into_values().collect()
    }

    /// Up to `n` records of `source_id` just after `offset`, ascending.
    fn records_after(&mut self, source_id: SourceId, offset: u64, n: usize) -> Vec<Neighbour> {
        let mut blocks: Vec<BlockRef> = self
            .blocks_of(source_id)
            .into_iter()
            .filter(|&b| self.meta(b).header.max_offset_bound() > offset)
            .collect();
        blocks.sort_by_key(|&b| self.meta(b).header.first_offset);
        let mut found: BTreeMap<u64, Neighbour> = BTreeMap::new();
        for b in blocks {
            let h = self.meta(b).header;
            if found.len() >= n
                && found
                    .keys()
                    .next_back()
                    .is_some_and(|&hi| h.first_offset >= hi)
            {
                break;
            }
            let Some(block) = self.load(b) else {
                continue;
            };
            for r in block.records.iter().filter(|r| r.offset > offset) {
                found
                    .entry(r.offset)
                    .or_insert_with(|| (h.package_id, block.source_fields.clone(), r.clone()));
            }
            while found.len() > n {
                found.pop_last();
            }
        }
        found.into_values().collect()
    }

    /// grep -C style: each hit with its neighbours; groups that overlap or touch are
    /// merged, others separated by `--` (text only: NDJSON stays one object a line).
    fn print_with_context(&mut self, hits: VecDeque<Hit>, out: &mut dyn Write) -> io::Result<()> {
        let n = self.args.context;
        let hit_keys: HashSet<(SourceId, u64)> = hits
            .iter()
            .map(|h| (h.source_id, h.record.offset))
            .collect();
        // The run printed last: its source and the first and last offsets printed; every
        // record of that source between them has been printed.
        let mut run: Option<(SourceId, u64, u64)> = None;
        let mut buf = Vec::new();
        for hit in hits {
            buf.clear();
            let s = hit.source_id;
            let o = hit.record.offset;
            if let Some((rs, first, last)) = run
                && rs == s
                && (first..=last).contains(&o)
            {
                // Already printed (as context of an earlier hit, marked as a hit): only
                // the part of its after-context past the run is new.
                let mut after = self.records_after(s, o, n);
                after.retain(|(_, _, r)| r.offset > last);
                self.print_group(&mut buf, s, &[], &hit, &after, &hit_keys, true);
                if let Some((_, _, r)) = after.last() {
                    run = Some((s, first, r.offset));
                }
                out.write_all(&buf)?;
                continue;
            }
            // One extra record before tells whether this group touches the last run.
            let mut before = self.records_before(s, o, n + 1);
            let after = self.records_after(s, o, n);
            let touches = match run {
                Some((rs, first, last)) if rs == s => before
                    .iter()
                    .any(|(_, _, r)| (first..=last).contains(&r.offset)),
                _ => false,
            };
            let first = if touches {
                let (_, first, last) = run.unwrap_or((s, 0, 0));
                before.retain(|(_, _, r)| r.offset > last);
                first
            } else {
                if before.len() > n {
                    before.remove(0);
                }
                if run.is_some() && !self.args.json {
                    buf.extend_from_slice(b"--\n");
                }
                before.first().map_or(o, |(_, _, r)| r.offset)
            };
            self.print_group(&mut buf, s, &before, &hit, &after, &hit_keys, false);
            let last = after.last().map_or(o, |(_, _, r)| r.offset);
            run = Some((s, first, last));
            out.write_all(&buf)?;
        }
        out.flush()
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one group of output; a struct would only rename them"
    )]
    fn print_group(
        &self,
        buf: &mut Vec<u8>,
        s: SourceId,
        before: &[Neighbour],
        hit: &Hit,
        after: &[Neighbour],
        hit_keys: &HashSet<(SourceId, u64)>,
        hit_already_printed: bool,
    ) {
        let emit = |buf: &mut Vec<u8>, package_id: u64, fields: &[(Bytes, Bytes)], r: &Record| {
            let is_hit = hit_keys.contains(&(s, r.offset));
            self.render(buf, s, package_id, fields, r, !is_hit);
        };
        for (p, f, r) in before {
            emit(buf, *p, f, r);
        }
        if !hit_already_printed {
            emit(buf, hit.package_id, &hit.source_fields, &hit.record);
        }
        for (p, f, r) in after {
            emit(buf, *p, f, r);
        }
    }

    fn stats(&mut self, out: &mut dyn Write) -> io::Result<()> {
        #[derive(Default)]
        struct PerSource {
            unique: u64,
            duplicates: u64,
        }
        let mut blocks = 0u64;
        let mut records = 0u64;
        let mut unique = 0u64;
        let mut per_source: BTreeMap<SourceId, PerSource> = BTreeMap::new();
        let mut covered: HashMap<SourceId, Covered> = HashMap::new();
        let mut lowered = Vec::new();
        let candidates = self.candidates();
        for &b in &candidates {
            let Some(block) = self.load(b) else { continue };
            blocks += 1;
            let h = self.meta(b).header;
            let source_id = SourceId(h.source_id);
            let seen = covered.entry(source_id).or_default();
            let counts = per_source.entry(source_id).or_default();
            for r in block.records.iter() {
                if !self.filter.matches(r, &block.source_fields, &mut lowered) {
                    continue;
                }
                records += 1;
                if seen.contains(r.offset) {
                    counts.duplicates += 1;
                } else {
                    unique += 1;
                    counts.unique += 1;
                }
            }
            seen.insert_block(&block.records, h.end_offset);
        }
        let damaged = self.bad_blocks.len() as u64;
        let mut buf = Vec::new();
        if self.args.json {
            let sources: Vec<serde_json::Value> = per_source
                .iter()
                .map(|(id, c)| {
                    serde_json::json!({
                        "source_id": format!("{:016x}", id.0),
                        "path": self.path_of(*id).and_then(|p| p.to_str()),
                        "path_base64": self.path_of(*id)
                            .filter(|p| p.to_str().is_none())
                            .map(|p| super::b64::encode(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))),
                        "records": c.unique,
                        "duplicates": c.duplicates,
                    })
                })
                .collect();
            let v = serde_json::json!({
                "segments": self.segments.len(),
                "blocks": blocks,
                "damaged_blocks": damaged,
                "records": records,
                "unique": unique,
                "duplicates": records - unique,
                "sources": sources,
            });
            buf.extend_from_slice(v.to_string().as_bytes());
            buf.push(b'\n');
        } else {
            let _ = writeln!(buf, "segments:       {}", self.segments.len());
            let _ = writeln!(buf, "blocks:         {blocks}");
            let _ = writeln!(buf, "damaged blocks: {damaged}");
            let _ = writeln!(buf, "records:        {records}");
            let _ = writeln!(buf, "unique:         {unique}");
            let _ = writeln!(buf, "duplicates:     {}", records - unique);
            let _ = writeln!(buf, "per source (unique, duplicates, path):");
            for (id, c) in &per_source {
                let _ = write!(buf, "  {:>10} {:>10} ", c.unique, c.duplicates);
                match self.path_of(*id) {
                    Some(p) => render::write_escaped(
                        &mut buf,
                        std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()),
                    ),
                    None => {
                        let _ = write!(buf, "<source {:016x}>", id.0);
                    }
                }
                buf.push(b'\n');
            }
        }
        out.write_all(&buf)?;
        out.flush()
    }
}

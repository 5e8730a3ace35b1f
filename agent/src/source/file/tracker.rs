//! The tracker: the file source's state machine and its loop.
//!
//! It owns the set of tracked files and decides, from `stat`/`fstat` (inotify events
//! and rescans only say *where* to look), when a file is new, resumed, grown,
//! rotated away, deleted or truncated. Discovery ([`super::discover`]), identity
//! ([`super::identity`]), reads ([`super::read`]) and change notification
//! ([`super::watch`]) live in their own modules; this one only sequences them.
//!
//! # Lifecycle of a tracked file
//!
//! - *attached*: it is the file at its discovery path; read whenever it grows.
//! - *detached*: its path now names another file or nothing (rename rotation or
//!   deletion). It is still read through its open fd until EOF, and ended once it has
//!   not grown for `rotate_wait`: `Deleted` (and forgotten) if its link count is 0,
//!   else `Rotated` (and marked closed). A new file at the path is started only after
//!   the detached one was read to its EOF, with it as `predecessor`; until then it is
//!   held open (*waiting*), so it is read even if it is rotated away or deleted
//!   before its turn.
//! - *truncated* (copytruncate): the source ends and the same fd continues as a new
//!   source from offset 0.
//!
//! # Performance
//!
//! Files with unread bytes wait in a FIFO; each round gives every waiting file at most
//! [`CHUNKS_PER_ROUND`] reads, issued as one batch per step (one io_uring submission
//! for up to 64 files), so a busy file cannot starve the others. Idle files cost
//! nothing between inotify events; a rescan costs one `stat`/`fstat` per file.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;

use crate::capture::{Claim, Claims};

use super::container::{self, ContainerList};
use super::discover::{Found, Matcher, Selection};
use super::identity;
use super::read::{ReadCompletion, ReadRequest, Reader};
use super::resume::ResumeStore;
use super::table::{Configs, FileTable, InodeKey, State, Tracked};
use super::watch::{Change, Watcher};
use super::{EndReason, FileIdentity, SourceEvents};
use crate::config::{Format, SourceConfig};
use crate::route::select::{ContainerFactsSource, Facts, path_facts};
use crate::source::{SourceId, SourceInfo, SourceKind};

/// Reads a waiting file gets per round before the next file's turn.
const CHUNKS_PER_ROUND: u32 = 4;
/// Longest wait for inotify: `tick` must come at least every 100 ms.
const TICK: Duration = Duration::from_millis(100);
/// How often files without inotify coverage are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often rotated-away and deleted files are `fstat`ed while they drain.
const DETACHED_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// A file without new data for this long may have its fd closed under fd pressure.
const IDLE_FOR_CLOSE: Duration = Duration::from_secs(30);
/// Bound on the paths remembered for once-per-path warnings.
const MAX_WARNED_PATHS: usize = 10_000;
/// How often the running containers of `container_paths` sources are resolved again.
const CONTAINER_REFRESH: Duration = Duration::from_millis(500);

/// How [`FileSource::run_until`] stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// At once: unread bytes are read after the restart, from the checkpoints.
    Shutdown,
    /// After reading what is ready (a rebuild follows in the same process).
    Drain,
}

/// Bound on [`StopMode::Drain`]: a rebuild must not wait for a large backlog.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct FileSourceOptions {
    /// Full rescan of the globs and `stat` of every tracked file.
    pub rescan_interval: Duration,
    /// A rotated or deleted file is ended after this long without growth.
    pub rotate_wait: Duration,
    /// Try io_uring first (else `pread`).
    pub io_uring: bool,
    /// Largest single read (and chunk handed to the pipeline).
    pub read_buffer_bytes: usize,
    /// Read every matched file to EOF once, then end every source with `Eof`.
    pub oneshot: bool,
    /// CRI logs of containers that capture ships are not read (see [`Claims`]).
    pub claims: Option<Arc<Claims>>,
    /// Container facts for sources with a selector; `None`: decided on the path alone.
    pub facts: Option<Arc<dyn ContainerFactsSource>>,
    /// The node's containers, for `container_paths` sources; `None`: those read
    /// nothing.
    pub containers: Option<Arc<dyn ContainerList>>,
    /// How long a file whose container is not known yet is held back before the
    /// selectors decide on what its path tells.
    pub facts_wait: Duration,
}

impl Default for FileSourceOptions {
    fn default() -> Self {
        FileSourceOptions {
            rescan_interval: Duration::from_secs(10),
            rotate_wait: Duration::from_secs(5),
            io_uring: true,
            read_buffer_bytes: 256 * 1024,
            oneshot: false,
            claims: None,
            facts: None,
            containers: None,
            facts_wait: Duration::from_secs(5),
        }
    }
}

/// A file found at a path whose previous file is not drained yet. It is opened at
/// once, not remembered by path: a slow reader may see it rotated away (to a name no
/// glob matches) or deleted before its turn, and it must still be read.
struct Waiting {
    file: File,
    key: InodeKey,
    configs: Configs,
}

/// A source that was drained and ended while its file still existed.
struct Closed {
    source: SourceId,
    identity: FileIdentity,
    /// Where the bytes stopped: reopened from here if the file grows.
    offset: u64,
    /// Where the file was when it was closed, to notice when it is gone.
    path: Option<PathBuf>,
    /// For a file inside a container: the container's logical root. The entry is
    /// kept while such a container is known (its restart finds the file again at
    /// another `/proc/<pid>/root`), not only while `path` shows the file.
    container: Option<String>,
}

/// The logical root (`container://ns/pod/name`) of a container file's logical path.
fn container_of_logical(path: &Path) -> Option<String> {
    let (namespace, pod, name, _) = container::parse_logical(path)?;
    Some(format!("{}{namespace}/{pod}/{name}", container::SCHEME))
}

/// Reads every file matched by the `sources[]` configs; see the module docs of
/// [`super`] for what it guarantees.
pub struct FileSource {
    configs: Vec<(Arc<str>, SourceKind)>,
    matcher: Matcher,
    options: FileSourceOptions,
    store: Arc<dyn ResumeStore>,
    reader: Reader,
    watcher: Watcher,
    /// The tracked files and their indexes (by inode, path, real path, predecessor,
    /// read queue).
    table: FileTable,
    /// Files that appeared at a path while its previous file was still being drained,
    /// oldest first; each starts once the one before it was read to EOF.
    deferred: HashMap<PathBuf, VecDeque<Waiting>>,
    closed: HashMap<InodeKey, Closed>,
    last_detached_poll: Instant,
    warned: HashSet<PathBuf>,
    last_rescan: Instant,
    last_poll: Instant,
    last_tick: Instant,
    requests: Vec<ReadRequest>,
    completions: Vec<ReadCompletion>,
    /// Files that capture may still claim: asked again every tick.
    undecided: HashSet<PathBuf>,
    /// Files held back until their container's facts are known, since when.
    awaiting_facts: HashMap<PathBuf, Instant>,
    /// Last resolution of the containers of `container_paths` sources.
    last_container_refresh: Option<Instant>,
}

fn source_kind(format: Format) -> SourceKind {
    match format {
        Format::Cri | Format::Docker => SourceKind::CriFile,
        Format::Raw => SourceKind::File,
    }
}

/// Bounded `reason` label of `logtap_file_open_errors_total`.
pub(crate) fn error_reason(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP) => "vanished",
        Some(libc::EACCES) | Some(libc::EPERM) => "permission_denied",
        Some(libc::EISDIR) => "is_directory",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "too_many_open_files",
        Some(libc::EIO) => "io_error",
        _ => "other",
    }
}

/// Raises the soft fd limit to the hard one: every active file keeps its fd open.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::debug!(from = old, to = lim.rlim_max, "raised RLIMIT_NOFILE");
            }
        }
    }
}

/// Where an open file is now (it may have been renamed since it was opened).
fn current_path(file: &File) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    if link.to_string_lossy().ends_with(" (deleted)") {
        None
    } else {
        Some(link)
    }
}

impl FileSource {
    pub fn new(
        sources: &[SourceConfig],
        options: FileSourceOptions,
        registry: Arc<crate::checkpoint::Registry>,
    ) -> anyhow::Result<FileSource> {
        FileSource::with_store(sources, options, registry)
    }

    /// Like [`FileSource::new`], against any [`ResumeStore`].
    pub fn with_store(
        sources: &[SourceConfig],
        options: FileSourceOptions,
        store: Arc<dyn ResumeStore>,
    ) -> anyhow::Result<FileSource> {
        anyhow::ensure!(
            options.read_buffer_bytes > 0 && options.read_buffer_bytes <= u32::MAX as usize,
            "read_buffer_bytes must be between 1 and 4GiB"
        );
        let now = Instant::now();
        Ok(FileSource {
            configs: sources
                .iter()
                .map(|s| (s.name.clone(), source_kind(s.format)))
                .collect(),
            matcher: Matcher::new(sources)?,
            reader: Reader::new(options.io_uring),
            options,
            store,
            watcher: Watcher::new(),
            table: FileTable::default(),
            deferred: HashMap::new(),
            closed: HashMap::new(),
            last_detached_poll: now,
            warned: HashSet::new(),
            last_rescan: now,
            last_poll: now,
            last_tick: now,
            requests: Vec::new(),
            completions: Vec::new(),
            undecided: HashSet::new(),
            awaiting_facts: HashMap::new(),
            last_container_refresh: None,
        })
    }

    /// "io_uring" or "pread".
    pub fn backend(&self) -> &'static str {
        self.reader.name()
    }

    pub fn run(
        &mut self,
        events: &mut dyn SourceEvents,
        shutdown: &AtomicBool,
    ) -> anyhow::Result<()> {
        self.run_until(events, &|| {
            shutdown
                .load(Ordering::Relaxed)
                .then_some(StopMode::Shutdown)
        })
    }

    /// Like [`run`](Self::run), until `stop` says how to stop. [`StopMode::Drain`]
    /// first reads every file with unread bytes to its current end (bounded by
    /// [`DRAIN_LIMIT`]): a file rotated away that a rebuilt source would not find
    /// again under its new name is read out now.
    pub fn run_until(
        &mut self,
        events: &mut dyn SourceEvents,
        stop: &dyn Fn() -> Option<StopMode>,
    ) -> anyhow::Result<()> {
        raise_nofile_limit();
        // Before the first scan: checkpoints of files it does not find are dropped, but
        // a checkpointed file renamed while the agent was stopped is found first.
        self.refresh_containers(events);
        self.recover_moved(events);
        self.rescan(events);
        let found: HashSet<InodeKey> = self
            .table
            .inodes()
            .chain(self.closed.keys())
            .copied()
            .collect();
        self.store.retain_unclaimed(&found);
        let mut changes = Vec::new();
        loop {
            if let Some(mode) = stop() {
                if mode == StopMode::Drain {
                    let deadline = Instant::now() + DRAIN_LIMIT;
                    self.poll_detached(events);
                    while !self.table.ready_is_empty() && Instant::now() < deadline {
                        self.read_round(events);
                    }
                }
                self.end_all(events, EndReason::Shutdown);
                return Ok(());
            }
            self.maybe_tick(events);
            let now = Instant::now();
            if !self.options.oneshot {
                if now.duration_since(self.last_rescan) >= self.options.rescan_interval {
                    self.rescan(events);
                }
                if now.duration_since(self.last_poll) >= POLL_INTERVAL {
                    self.last_poll = now;
                    self.poll(events);
                }
                self.open_deferred(events);
            }
            let waiting = self.table.detached_count() > 0 || !self.deferred.is_empty();
            if waiting && self.last_detached_poll.elapsed() >= DETACHED_POLL_INTERVAL {
                self.last_detached_poll = Instant::now();
                self.poll_detached(events);
            }
            if !self.table.ready_is_empty() {
                self.read_round(events);
                self.watcher.wait(Duration::ZERO, &mut changes);
            } else if self.options.oneshot {
                self.end_all(events, EndReason::Eof);
                return Ok(());
            } else {
                let until_rescan = self
                    .options
                    .rescan_interval
                    .saturating_sub(self.last_rescan.elapsed());
                let mut wait = TICK.min(until_rescan);
                if waiting {
                    wait = wait.min(DETACHED_POLL_INTERVAL);
                }
                self.watcher.wait(wait, &mut changes);
            }
            for change in changes.drain(..) {
                self.apply(change, events);
            }
            // Every step of the loop must leave the table consistent; the in-process
            // tests (unit and model-based) run this after each one.
            #[cfg(test)]
            self.table.assert_consistent();
        }
    }

    fn maybe_tick(&mut self, events: &mut dyn SourceEvents) {
        let now = Instant::now();
        if now.duration_since(self.last_tick) >= TICK {
            self.last_tick = now;
            events.tick(now);
            self.update_lag_gauge();
            self.recheck_undecided(events);
            self.recheck_awaiting_facts(events);
            if !self.options.oneshot
                && self
                    .last_container_refresh
                    .is_none_or(|t| now.duration_since(t) >= CONTAINER_REFRESH)
            {
                self.refresh_containers(events);
            }
        }
    }

    /// Resolves the running containers of `container_paths` sources again: walks
    /// those that are new, and looks again at the files of those that are gone
    /// (their process ended: the files are detached and read to their end through
    /// their fds).
    fn refresh_containers(&mut self, events: &mut dyn SourceEvents) {
        self.last_container_refresh = Some(Instant::now());
        if !self.matcher.has_container_configs() {
            return;
        }
        let list = match &self.options.containers {
            Some(c) => c.containers(),
            None => Vec::new(),
        };
        let roots = self.matcher.resolve_containers(&list);
        let changed = self
            .matcher
            .set_containers(roots, container::known_roots(&list));
        metrics::gauge!("logtap_container_file_containers")
            .set(self.matcher.container_count() as f64);
        for root in &changed.removed {
            self.watcher.unwatch_under(root);
            let paths: Vec<PathBuf> = self
                .table
                .paths()
                .filter(|p| p.starts_with(root))
                .cloned()
                .collect();
            for path in paths {
                self.check_path(&path, events);
            }
        }
        for pid in changed.added {
            let (mut found, mut dirs) = (Vec::new(), Vec::new());
            self.matcher.scan_container(pid, &mut found, &mut dirs);
            for d in &dirs {
                self.watcher.watch_dir(d);
            }
            for Found { path, .. } in found {
                self.check_path(&path, events);
            }
        }
    }

    fn recheck_awaiting_facts(&mut self, events: &mut dyn SourceEvents) {
        if self.awaiting_facts.is_empty() {
            return;
        }
        let paths: Vec<PathBuf> = self.awaiting_facts.keys().cloned().collect();
        for path in paths {
            if std::fs::symlink_metadata(&path).is_err() {
                self.awaiting_facts.remove(&path);
                continue;
            }
            self.check_path(&path, events);
        }
    }

    /// The configs reading `path`, or `None` when none does or its container's facts
    /// are awaited (then it is asked again every tick, up to `facts_wait`).
    fn select(&mut self, path: &Path) -> Option<Configs> {
        let now = Instant::now();
        let since = self.awaiting_facts.get(path).copied();
        let expired = since.is_some_and(|t| now.duration_since(t) >= self.options.facts_wait);
        let source = self.options.facts.clone();
        let mut decided_on_path = false;
        let mut lookup = || match &source {
            Some(source) => match source.facts(path) {
                Facts::Pending if expired => {
                    decided_on_path = true;
                    path_facts(path).map_or(Facts::NotContainer, Facts::Known)
                }
                facts => facts,
            },
            None => path_facts(path).map_or(Facts::NotContainer, Facts::Known),
        };
        let selection = self.matcher.select(path, &mut lookup);
        match selection {
            Selection::Undecided => {
                self.awaiting_facts.entry(path.to_path_buf()).or_insert(now);
                None
            }
            Selection::Configs(configs) => {
                if since.is_some() {
                    self.awaiting_facts.remove(path);
                    let outcome = if decided_on_path {
                        "path_only"
                    } else {
                        "known"
                    };
                    metrics::counter!("logtap_selector_decisions_total", "outcome" => outcome)
                        .increment(1);
                    if decided_on_path {
                        tracing::warn!(path = %path.display(), wait = ?self.options.facts_wait,
                            "container not known in time: selectors decided on its path alone");
                    }
                }
                (!configs.is_empty()).then(|| configs.into())
            }
        }
    }

    fn recheck_undecided(&mut self, events: &mut dyn SourceEvents) {
        if self.undecided.is_empty() {
            return;
        }
        // `check_path` puts back what is still undecided; vanished files drop out.
        let paths: Vec<PathBuf> = self.undecided.drain().collect();
        for path in paths {
            self.check_path(&path, events);
        }
    }

    fn apply(&mut self, change: Change, events: &mut dyn SourceEvents) {
        match change {
            Change::Modified(path) => {
                let slot = self
                    .table
                    .at_path(&path)
                    .or_else(|| self.table.at_real_path(&path));
                match slot {
                    Some(slot) if self.table.get(slot).is_some_and(|t| t.file.is_some()) => {
                        self.table.enqueue(slot)
                    }
                    _ => self.check_path(&path, events),
                }
            }
            Change::Renamed(path) => {
                self.check_path(&path, events);
                // A rename of a tracked file's real path (behind a symlink).
                if let Some(slot) = self.table.at_real_path(&path) {
                    self.table.enqueue(slot);
                }
            }
            Change::DirCreated(dir) => {
                let (mut found, mut dirs) = (Vec::new(), Vec::new());
                self.matcher.scan_dir(&dir, &mut found, &mut dirs);
                for d in &dirs {
                    self.watcher.watch_dir(d);
                }
                for Found { path, .. } in found {
                    self.check_path(&path, events);
                }
            }
            Change::Overflow => {
                tracing::warn!("inotify queue overflowed; rescanning");
                self.rescan(events);
            }
        }
    }

    fn warn_once(&mut self, path: &Path, reason: &'static str, e: &dyn std::fmt::Display) {
        metrics::counter!("logtap_file_open_errors_total", "reason" => reason).increment(1);
        if self.warned.len() >= MAX_WARNED_PATHS {
            self.warned.clear();
        }
        if self.warned.insert(path.to_path_buf()) {
            tracing::warn!(path = %path.display(), reason, error = %e, "cannot read file");
        }
    }

    /// Full discovery plus a `stat` pass over everything tracked.
    fn rescan(&mut self, events: &mut dyn SourceEvents) {
        self.last_rescan = Instant::now();
        let (mut found, mut dirs) = (Vec::new(), Vec::new());
        self.matcher.scan(&mut found, &mut dirs);
        for d in &dirs {
            self.watcher.watch_dir(d);
        }
        let mut paths: HashSet<PathBuf> = found.into_iter().map(|f| f.path).collect();
        paths.extend(self.table.paths().cloned());
        paths.extend(self.deferred.keys().cloned());
        for path in paths {
            self.check_path(&path, events);
        }
        // Safety net under inotify: fstat every open file, and catch a copytruncate
        // that was followed by enough writes to hide the shrink from `fstat`.
        let slots: Vec<usize> = self.table.iter().map(|(i, _)| i).collect();
        for slot in slots {
            self.refresh(slot, events, true);
        }
        let matcher = &self.matcher;
        self.closed.retain(|_, c| {
            let present = c.path.as_ref().is_some_and(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| (m.dev(), m.ino()) == (c.identity.dev, c.identity.inode))
            }) || c
                .container
                .as_deref()
                .is_some_and(|r| matcher.container_known(r));
            if !present && c.path.is_some() {
                self.store.forget(c.source);
            }
            present || c.path.is_none()
        });
        self.update_lag_gauge();
        self.update_open_files_gauge();
    }

    /// Bytes known to be behind (last `fstat` size minus read offset). Updated every
    /// tick, not only at rescans: a lag that was read away must not linger on
    /// `/metrics` for a whole `rescan_interval`. One pass over the tracked files.
    fn update_lag_gauge(&self) {
        let lag: u64 = self
            .table
            .iter()
            .map(|(_, t)| t.size.saturating_sub(t.offset))
            .sum();
        metrics::gauge!("logtap_read_lag_bytes").set(lag as f64);
    }

    fn update_open_files_gauge(&self) {
        let open = self.table.iter().filter(|(_, t)| t.file.is_some()).count();
        metrics::gauge!("logtap_open_files").set(open as f64);
    }

    /// Files inotify does not cover: everything when watches failed, plus files whose
    /// fd was closed under fd pressure.
    fn poll(&mut self, events: &mut dyn SourceEvents) {
        let degraded = self.watcher.degraded();
        let slots: Vec<(usize, bool, PathBuf)> = self
            .table
            .iter()
            .filter(|(_, t)| t.state == State::Attached && (degraded || t.file.is_none()))
            .map(|(i, t)| (i, t.file.is_none(), t.path.clone()))
            .collect();
        for (slot, fd_closed, path) in slots {
            if fd_closed {
                self.check_path(&path, events);
            } else {
                self.refresh(slot, events, false);
            }
        }
        if degraded {
            self.rescan_new_files(events);
        }
    }

    /// Without inotify, new files are only found by walking: do it on every poll when
    /// degraded, but only for paths not tracked yet.
    fn rescan_new_files(&mut self, events: &mut dyn SourceEvents) {
        let (mut found, mut dirs) = (Vec::new(), Vec::new());
        self.matcher.scan(&mut found, &mut dirs);
        for f in found {
            if self.table.at_path(&f.path).is_none() {
                self.check_path(&f.path, events);
            }
        }
    }

    /// Detached files and paths waiting for them: fstat, read, end when quiet.
    fn poll_detached(&mut self, events: &mut dyn SourceEvents) {
        let slots: Vec<usize> = self
            .table
            .iter()
            .filter(|(_, t)| t.state == State::Detached)
            .map(|(i, _)| i)
            .collect();
        for slot in slots {
            self.refresh(slot, events, false);
            let Some(t) = self.table.get(slot) else {
                continue;
            };
            if !t.queued
                && t.offset >= t.size
                && t.last_growth.elapsed() >= self.options.rotate_wait
            {
                self.end_detached(slot, events);
            }
        }
        self.open_deferred(events);
    }

    /// `fstat`s a tracked file: queues it if it grew, handles a shrink (copytruncate),
    /// grows its fingerprint. With `verify_prefix`, also re-reads the fingerprinted
    /// prefix to catch a truncation hidden by regrowth.
    fn refresh(&mut self, slot: usize, events: &mut dyn SourceEvents, verify_prefix: bool) {
        let Some(size) = self.fresh_size(slot, events, verify_prefix) else {
            return;
        };
        if let Some(t) = self.table.get_mut(slot)
            && size > t.offset
        {
            self.table.enqueue(slot);
        }
    }

    /// `fstat`s a tracked file and records its size, or ends its source when it was
    /// truncated (shrank below the read offset, or its fingerprinted prefix changed).
    /// Never touches the read queue: a truncation replaces the file's slot with a new
    /// source, and the caller must not treat that slot as the one it knew.
    fn fresh_size(
        &mut self,
        slot: usize,
        events: &mut dyn SourceEvents,
        verify_prefix: bool,
    ) -> Option<u64> {
        let t = self.table.get_mut(slot)?;
        let file = t.file.as_ref()?;
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                let path = t.path.clone();
                self.warn_once(&path, error_reason(&e), &e);
                return None;
            }
        };
        let size = meta.len();
        if size > t.size {
            t.last_growth = Instant::now();
        }
        let mut truncated = size < t.offset;
        if !truncated && t.identity.fingerprint_len < super::FINGERPRINT_BYTES {
            // Keeps the fingerprint growing with small files (and catches a rewrite
            // of their first bytes).
            match identity::grow(file, size, &t.identity) {
                Ok(Some(grown)) if grown != t.identity => {
                    t.identity = grown;
                    self.store.update_identity(t.info.id, grown);
                }
                Ok(Some(_)) => {}
                Ok(None) => truncated = true,
                Err(e) => tracing::debug!(error = %e, "fingerprint read failed"),
            }
        } else if !truncated && verify_prefix && t.offset > 0 {
            truncated = matches!(identity::prefix_matches(file, &t.identity), Ok(false));
        }
        if truncated {
            // `t.size` keeps the last size seen before the shrink: what was lost.
            self.truncated(slot, events);
            return None;
        }
        t.size = size;
        Some(size)
    }

    /// Looks at one path again: new file, same file grown, another file now there
    /// (rotation), nothing there (rename or deletion), or a directory.
    fn check_path(&mut self, path: &Path, events: &mut dyn SourceEvents) {
        let owner = self.table.at_path(path);
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                if let Some(slot) = owner {
                    self.detach(slot);
                }
                if e.kind() != io::ErrorKind::NotFound && self.matcher.config_for(path).is_some() {
                    self.warn_once(path, error_reason(&e), &e);
                }
                return;
            }
        };
        let key = (meta.dev(), meta.ino());
        if let Some(slot) = owner {
            let t = self
                .table
                .get(slot)
                .expect("by_path points at live slots (invariant 3)");
            if (t.identity.dev, t.identity.inode) == key {
                if t.file.is_none() {
                    self.reopen(slot, events);
                } else {
                    self.table.enqueue(slot);
                }
                return;
            }
            // The path names another file (or a directory) now: ours was rotated away.
            self.detach(slot);
        }
        if meta.is_dir() {
            if owner.is_some() || self.matcher.config_for(path).is_some() {
                let e = io::Error::from_raw_os_error(libc::EISDIR);
                self.warn_once(path, "is_directory", &e);
            }
            return;
        }
        if !meta.is_file() {
            return;
        }
        if let Some(slot) = self.table.of_inode(key) {
            // Already read under another name (a renamed file, or a second symlink).
            self.table.enqueue(slot);
            return;
        }
        if self.is_waiting(key) {
            // Waits for its turn at the path it was found at (now renamed).
            return;
        }
        let Some(mut configs) = self.select(path) else {
            return;
        };
        if let Some(c) = self.closed.get(&key)
            && meta.len() <= c.offset
        {
            return;
        }
        if let Some(claims) = &self.options.claims
            && configs.iter().any(|&c| claims.applies_to(c))
        {
            match claims.decide(path, meta.created().ok(), SystemTime::now()) {
                Claim::Ship => {}
                Claim::Skip => {
                    // Capture ships the container for its own config only: every other
                    // config selecting the log (a `LogCollection`'s stdout source) reads
                    // it from the file as it would without capture.
                    let others: Configs = configs
                        .iter()
                        .copied()
                        .filter(|&c| !claims.applies_to(c))
                        .collect();
                    if others.is_empty() {
                        return;
                    }
                    configs = others;
                }
                Claim::Undecided => {
                    self.undecided.insert(path.to_path_buf());
                    return;
                }
            }
        }
        if self.deferred.contains_key(path) || !self.predecessor_drained(path) {
            self.wait_for_turn(path, key, configs);
            return;
        }
        let predecessor = self.take_predecessor(path);
        self.open(path, configs, predecessor, events);
    }

    /// Whether the last detached file of `path` (if any) was read to EOF; if not, it
    /// is queued for reading.
    fn predecessor_drained(&mut self, path: &Path) -> bool {
        let Some(pred) = self.table.predecessor_at(path) else {
            return true;
        };
        if self.drained(pred) {
            return true;
        }
        self.table.enqueue(pred);
        false
    }

    fn take_predecessor(&mut self, path: &Path) -> Option<SourceId> {
        self.table
            .take_predecessor(path)
            .and_then(|slot| self.table.get(slot).map(|t| t.info.id))
    }

    fn is_waiting(&self, key: InodeKey) -> bool {
        self.deferred.values().flatten().any(|w| w.key == key)
    }

    /// Holds the file now at `path` open until the files before it there are drained.
    fn wait_for_turn(&mut self, path: &Path, key: InodeKey, configs: Configs) {
        if self.is_waiting(key) {
            return;
        }
        let file = match self.open_file(path) {
            Ok(f) => f,
            Err(e) => {
                self.warn_once(path, error_reason(&e), &e);
                return;
            }
        };
        // The path may have changed hands since its `stat`: hold what was opened.
        let key = match file.metadata() {
            Ok(m) if m.is_file() => (m.dev(), m.ino()),
            _ => return,
        };
        if self.table.of_inode(key).is_some() || self.is_waiting(key) {
            return;
        }
        self.deferred
            .entry(path.to_path_buf())
            .or_default()
            .push_back(Waiting { file, key, configs });
    }

    /// Starts the waiting files of `path` whose predecessor was drained, oldest first.
    /// One that left the path while it waited is detached at once, and the next waits
    /// for it in turn.
    fn start_waiting(&mut self, path: &Path, events: &mut dyn SourceEvents) {
        while self.predecessor_drained(path) {
            let Some(queue) = self.deferred.get_mut(path) else {
                return;
            };
            let Some(waiting) = queue.pop_front() else {
                self.deferred.remove(path);
                return;
            };
            if queue.is_empty() {
                self.deferred.remove(path);
            }
            let predecessor = self.take_predecessor(path);
            let Some(slot) = self.open_at(path, waiting.file, waiting.configs, predecessor, events)
            else {
                continue;
            };
            let still_there =
                std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == waiting.key);
            if still_there {
                // Anything left waiting was at this path before it: nothing sane to
                // follow; they start after it is rotated away.
                return;
            }
            self.detach(slot);
        }
    }

    /// Read to the size of a fresh `fstat`, with no read pending.
    fn drained(&mut self, slot: usize) -> bool {
        let Some(t) = self.table.get_mut(slot) else {
            return true;
        };
        let Some(file) = t.file.as_ref() else {
            return true;
        };
        if let Ok(m) = file.metadata() {
            t.size = m.len();
        }
        !t.queued && t.offset >= t.size
    }

    fn open_deferred(&mut self, events: &mut dyn SourceEvents) {
        if self.deferred.is_empty() {
            return;
        }
        let paths: Vec<PathBuf> = self.deferred.keys().cloned().collect();
        for path in paths {
            self.start_waiting(&path, events);
            // The file at the path now, if it is not one of those waiting.
            self.check_path(&path, events);
        }
    }

    /// Its path names another file or nothing now (rotated away or deleted): it is
    /// read to its end through its fd, and the next file at the path follows it.
    fn detach(&mut self, slot: usize) {
        if self.table.detach(slot)
            && let Some(t) = self.table.get_mut(slot)
        {
            t.last_growth = Instant::now();
        }
    }

    fn end_detached(&mut self, slot: usize, events: &mut dyn SourceEvents) {
        let Some(t) = self.table.remove(slot) else {
            return;
        };
        let deleted = match t.file.as_ref().map(File::metadata) {
            Some(Ok(m)) => m.nlink() == 0,
            _ => false,
        };
        if deleted {
            events.ended(t.info.id, EndReason::Deleted);
            self.store.forget(t.info.id);
        } else {
            events.ended(t.info.id, EndReason::Rotated);
            self.store.mark_closed(t.info.id);
            self.closed.insert(
                (t.identity.dev, t.identity.inode),
                Closed {
                    source: t.info.id,
                    identity: t.identity,
                    offset: t.offset,
                    // A container's file from out here: the fd's path may name
                    // nothing (or a node file) once the container's mounts are gone.
                    path: match container_of_logical(&t.info.path) {
                        Some(_) => Some(t.path.clone()),
                        None => t.file.as_ref().and_then(current_path),
                    },
                    container: container_of_logical(&t.info.path),
                },
            );
        }
        self.update_open_files_gauge();
    }

    fn end_all(&mut self, events: &mut dyn SourceEvents, reason: EndReason) {
        for slot in self.table.slot_numbers() {
            if let Some(t) = self.table.remove(slot) {
                events.ended(t.info.id, reason);
            }
        }
        self.update_open_files_gauge();
    }

    /// Opens `path`, closing idle files once if the process ran out of fds.
    fn open_file(&mut self, path: &Path) -> io::Result<File> {
        match self.matcher.open(path) {
            Err(e) if error_reason(&e) == "too_many_open_files" && self.close_idle() > 0 => {
                self.matcher.open(path)
            }
            other => other,
        }
    }

    /// Closes the fds of the idlest eighth of the attached, caught-up files.
    fn close_idle(&mut self) -> usize {
        let mut idle: Vec<(Instant, usize)> = self
            .table
            .iter()
            .filter(|(_, t)| {
                t.state == State::Attached
                    && t.file.is_some()
                    && !t.queued
                    && t.offset >= t.size
                    && t.last_growth.elapsed() >= IDLE_FOR_CLOSE
            })
            .map(|(i, t)| (t.last_growth, i))
            .collect();
        idle.sort_unstable();
        let n = (idle.len() / 8).max(idle.len().min(1));
        for &(_, slot) in &idle[..n] {
            if let Some(t) = self.table.get_mut(slot) {
                t.file = None;
            }
        }
        if n > 0 {
            tracing::info!(closed = n, "out of file descriptors: closed idle files");
        }
        n
    }

    /// Reopens a file whose fd was closed under fd pressure, if it is still the same.
    fn reopen(&mut self, slot: usize, events: &mut dyn SourceEvents) {
        let path = match self.table.get(slot) {
            Some(t) => t.path.clone(),
            None => return,
        };
        let file = match self.open_file(&path) {
            Ok(f) => f,
            Err(e) => {
                self.warn_once(&path, error_reason(&e), &e);
                return;
            }
        };
        let Some(t) = self.table.get_mut(slot) else {
            return;
        };
        match file.metadata() {
            Ok(m) if (m.dev(), m.ino()) == (t.identity.dev, t.identity.inode) => {
                t.file = Some(file);
                self.refresh(slot, events, true);
            }
            _ => {}
        }
    }

    /// Finds checkpointed files that are no longer at their path by identity (dev +
    /// inode + fingerprint) in that path's directory — renamed by a rotation while the
    /// agent was stopped (`0.log.<timestamp>`, `app.log.1`) — and starts them at their
    /// path from their checkpoint. The first scan then finds another file (or none)
    /// there and detaches them, as if the rotation had happened while the agent ran:
    /// they are read to their end, and the new file at the path waits for that.
    fn recover_moved(&mut self, events: &mut dyn SourceEvents) {
        for cp in self.store.loaded() {
            let path = &cp.path;
            let at_path =
                |m: &std::fs::Metadata| (m.dev(), m.ino()) == (cp.identity.dev, cp.identity.inode);
            if cp.closed
                || cp.identity.dev == crate::source::CAPTURE_DEV
                || !path.is_absolute()
                || container::split_proc_root(path).is_some()
                || std::fs::symlink_metadata(path).is_ok_and(|m| at_path(&m))
            {
                continue;
            }
            let Some(found) = path
                .parent()
                .and_then(|dir| find_by_identity(dir, &cp.identity))
            else {
                continue;
            };
            let file = match identity::open_regular_nofollow(&found) {
                Ok(f) => f,
                Err(e) => {
                    self.warn_once(&found, error_reason(&e), &e);
                    continue;
                }
            };
            let owes = file
                .metadata()
                .is_ok_and(|m| at_path(&m) && m.len() > cp.offset);
            if !owes || !matches!(identity::prefix_matches(&file, &cp.identity), Ok(true)) {
                continue;
            }
            let Some(configs) = self.select(path) else {
                continue;
            };
            tracing::info!(path = %path.display(), now_at = %found.display(), offset = cp.offset,
                "a checkpointed file was renamed while the agent was stopped; reading it to its end");
            metrics::counter!("logtap_files_found_by_identity_total").increment(1);
            self.open_at(path, file, configs, None, events);
        }
    }

    /// Opens a newly discovered file: resumed from its checkpoint when the checkpoint
    /// is for this very file, else a new source from offset 0.
    fn open(
        &mut self,
        path: &Path,
        configs: Configs,
        predecessor: Option<SourceId>,
        events: &mut dyn SourceEvents,
    ) {
        let file = match self.open_file(path) {
            Ok(f) => f,
            Err(e) => {
                self.warn_once(path, error_reason(&e), &e);
                return;
            }
        };
        self.open_at(path, file, configs, predecessor, events);
    }

    /// Starts the source of `file`, found at `path`; returns its slot, or `None` when
    /// it is tracked already, stays closed, or cannot be read.
    fn open_at(
        &mut self,
        path: &Path,
        file: File,
        configs: Configs,
        predecessor: Option<SourceId>,
        events: &mut dyn SourceEvents,
    ) -> Option<usize> {
        let meta = match file.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(_) => {
                let e = io::Error::from_raw_os_error(libc::EISDIR);
                self.warn_once(path, "is_directory", &e);
                return None;
            }
            Err(e) => {
                self.warn_once(path, error_reason(&e), &e);
                return None;
            }
        };
        let key = (meta.dev(), meta.ino());
        if let Some(slot) = self.table.of_inode(key) {
            self.table.enqueue(slot);
            return None;
        }
        let identity = match identity::identify(&file, &meta) {
            Ok(id) => id,
            Err(e) => {
                self.warn_once(path, error_reason(&e), &e);
                return None;
            }
        };
        let size = meta.len();
        let same_file =
            |expected: &FileIdentity| matches!(identity::prefix_matches(&file, expected), Ok(true));
        let checkpoint = self.store.lookup(key.0, key.1);
        let (source, offset) = if let Some(c) = self.closed.remove(&key) {
            // Closed by us in this run: continue where reading stopped, not at the
            // acknowledged offset, or bytes already handed over would come again.
            if same_file(&c.identity) && c.offset <= size {
                (Some(c.source), c.offset)
            } else {
                metrics::counter!("logtap_file_inode_reuse_total").increment(1);
                self.store.forget(c.source);
                (None, 0)
            }
        } else if let Some(cp) = &checkpoint {
            let same = same_file(&cp.identity);
            if same && cp.offset <= size {
                if cp.closed && cp.offset == size {
                    // Closed in an earlier run and not grown since: leave it closed.
                    self.closed.insert(
                        key,
                        Closed {
                            source: cp.source_id,
                            identity: cp.identity,
                            offset: cp.offset,
                            path: Some(path.to_path_buf()),
                            container: self
                                .matcher
                                .logical_path(path)
                                .as_deref()
                                .and_then(container_of_logical),
                        },
                    );
                    return None;
                }
                (Some(cp.source_id), cp.offset)
            } else {
                if same {
                    tracing::info!(path = %path.display(), "file shrank below its checkpoint; reading it as a new source");
                    metrics::counter!("logtap_file_truncations_total").increment(1);
                } else {
                    tracing::info!(path = %path.display(), "inode reused by a different file; reading it as a new source");
                    metrics::counter!("logtap_file_inode_reuse_total").increment(1);
                }
                self.store.forget(cp.source_id);
                (None, 0)
            }
        } else {
            (None, 0)
        };
        let resumed = source.is_some();
        let id = source.unwrap_or_else(|| SourceId::new_unique(key.0, key.1));
        // Register at the acknowledged offset when the registry has one for this
        // source: it must never claim bytes the sink has not acknowledged.
        let register_at = checkpoint
            .filter(|cp| cp.source_id == id)
            .map_or(offset, |cp| cp.offset.min(offset));
        if !resumed {
            metrics::counter!("logtap_files_discovered_total").increment(1);
        }
        Some(self.start(
            path,
            configs,
            file,
            identity,
            id,
            offset,
            register_at,
            size,
            predecessor,
            State::Attached,
            events,
        ))
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per way a source starts"
    )]
    fn start(
        &mut self,
        path: &Path,
        configs: Configs,
        file: File,
        identity: FileIdentity,
        id: SourceId,
        offset: u64,
        register_at: u64,
        size: u64,
        predecessor: Option<SourceId>,
        state: State,
        events: &mut dyn SourceEvents,
    ) -> usize {
        let (config_name, kind) = self.configs[configs[0]].clone();
        let logical = self.matcher.logical_path(path);
        let info = Arc::new(SourceInfo {
            id,
            kind,
            path: logical.clone().unwrap_or_else(|| path.to_path_buf()),
            config_name,
        });
        self.store
            .register(id, identity, info.path.clone(), register_at);
        events.opened_for(info.clone(), &configs, identity, offset, predecessor);
        // A container's file is never followed to a node path: its symlinks resolve
        // against the agent's root from out here (see `container`). A detached file
        // has no path to follow.
        let real_path = std::fs::canonicalize(path)
            .ok()
            .filter(|r| r != path && logical.is_none() && state == State::Attached);
        if let Some(real) = &real_path
            && let Some(dir) = real.parent()
        {
            self.watcher.watch_dir(dir);
        }
        let tracked = Tracked {
            info,
            path: path.to_path_buf(),
            configs,
            file: Some(file),
            identity,
            offset,
            size,
            state,
            last_growth: Instant::now(),
            queued: false,
            chunks_this_round: 0,
            real_path,
        };
        let slot = self.table.insert(tracked);
        self.table.enqueue(slot);
        self.update_open_files_gauge();
        slot
    }

    /// The file shrank below the read offset (copytruncate), or its leading bytes
    /// changed. Bytes written between our last read and the copy are recovered from
    /// the copy when it can be found; then the source ends and the file continues as
    /// a new source.
    fn truncated(&mut self, slot: usize, events: &mut dyn SourceEvents) {
        let Some(mut t) = self.table.remove(slot) else {
            return;
        };
        metrics::counter!("logtap_file_truncations_total").increment(1);
        tracing::info!(path = %t.path.display(), offset = t.offset, "file truncated; starting a new source");
        if let Some((copy, copy_path, copy_meta)) = self.find_copy(&t) {
            self.read_copy(&mut t, &copy, copy_meta.len(), events);
            // The copy holds nothing new: don't read it again if a glob matches it.
            self.closed.insert(
                (copy_meta.dev(), copy_meta.ino()),
                Closed {
                    source: t.info.id,
                    identity: t.identity,
                    offset: copy_meta.len(),
                    container: container_of_logical(&t.info.path),
                    path: Some(copy_path),
                },
            );
        }
        // Bytes the file was known to hold past what was read, with no copy to read
        // them from: gone with the truncation. Loss must be visible.
        let lost = t.size.saturating_sub(t.offset);
        if lost > 0 {
            metrics::counter!("logtap_dropped_bytes_total", "reason" => "truncated_unread")
                .increment(lost);
            tracing::warn!(path = %t.path.display(), lost,
                "file truncated before its last bytes were read, and no copy was found");
        }
        events.ended(t.info.id, EndReason::Truncated);
        self.store.forget(t.info.id);
        let Some(file) = t.file.take() else {
            return;
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                self.warn_once(&t.path, error_reason(&e), &e);
                return;
            }
        };
        let identity = match identity::identify(&file, &meta) {
            Ok(id) => id,
            Err(e) => {
                self.warn_once(&t.path, error_reason(&e), &e);
                return;
            }
        };
        let id = SourceId::new_unique(identity.dev, identity.inode);
        // Truncated after being rotated away, it stays detached: it takes no path
        // (another file may own it now) and is read until quiet, like any detached
        // file.
        self.start(
            &t.path,
            t.configs.clone(),
            file,
            identity,
            id,
            0,
            0,
            meta.len(),
            None,
            t.state,
            events,
        );
    }

    /// A file in the same directory with the truncated file's fingerprint and at least
    /// its read offset: the copy logrotate made before truncating.
    ///
    /// A file this tracker follows as a source of its own is never taken for the copy:
    /// its bytes are shipped under its own source already, and a sibling log that only
    /// starts like this one (same header lines) would otherwise lend its bytes to it.
    fn find_copy(&self, t: &Tracked) -> Option<(File, PathBuf, std::fs::Metadata)> {
        if t.identity.fingerprint_len == 0 {
            return None;
        }
        let dir = t.path.parent()?;
        for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let key = (meta.dev(), meta.ino());
            if !meta.is_file()
                || meta.len() < t.offset
                || key == (t.identity.dev, t.identity.inode)
                || self.table.of_inode(key).is_some()
            {
                continue;
            }
            let Ok(file) = self.matcher.open(&entry.path()) else {
                continue;
            };
            if matches!(identity::prefix_matches(&file, &t.identity), Ok(true)) {
                return Some((file, entry.path(), meta));
            }
        }
        None
    }

    fn read_copy(&mut self, t: &mut Tracked, copy: &File, end: u64, events: &mut dyn SourceEvents) {
        let kind = t.info.kind.as_str();
        while t.offset < end {
            let len = ((end - t.offset) as usize).min(self.options.read_buffer_bytes);
            let mut buf = BytesMut::zeroed(len);
            match copy.read_at(&mut buf, t.offset) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    metrics::counter!("logtap_bytes_read_total", "source_kind" => kind)
                        .increment(n as u64);
                    events.data(t.info.id, t.offset, buf.freeze());
                    t.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading the copy of a truncated file failed");
                    break;
                }
            }
        }
    }

    /// One round: every queued file gets up to [`CHUNKS_PER_ROUND`] reads, one read
    /// per file per batch.
    fn read_round(&mut self, events: &mut dyn SourceEvents) {
        let mut active = self.table.take_ready();
        for &slot in &active {
            if let Some(t) = self.table.get_mut(slot) {
                t.chunks_this_round = 0;
            }
        }
        // Fresh sizes first; this also catches truncation before reading past it.
        for &slot in &active {
            self.fresh_size(slot, events, false);
        }
        let mut next = Vec::new();
        while !active.is_empty() {
            self.requests.clear();
            for &slot in &active {
                let Some(t) = self.table.get(slot) else {
                    continue;
                };
                let Some(file) = t.file.as_ref() else {
                    continue;
                };
                if t.offset >= t.size {
                    continue;
                }
                if t.chunks_this_round >= CHUNKS_PER_ROUND {
                    // Its turn is over: back of the queue.
                    self.table.enqueue(slot);
                    continue;
                }
                let len = ((t.size - t.offset) as usize).min(self.options.read_buffer_bytes);
                self.requests.push(ReadRequest {
                    slot,
                    fd: file.as_raw_fd(),
                    offset: t.offset,
                    len,
                });
            }
            if self.requests.is_empty() {
                break;
            }
            self.completions.clear();
            self.reader
                .read_batch(&self.requests, &mut self.completions);
            next.clear();
            let completions = std::mem::take(&mut self.completions);
            for c in &completions {
                self.complete(c, events, &mut next);
            }
            self.completions = completions;
            std::mem::swap(&mut active, &mut next);
            self.maybe_tick(events);
        }
    }

    fn complete(
        &mut self,
        c: &ReadCompletion,
        events: &mut dyn SourceEvents,
        next: &mut Vec<usize>,
    ) {
        let Some(t) = self.table.get_mut(c.slot) else {
            return;
        };
        debug_assert_eq!(c.offset, t.offset, "one read in flight per file");
        match &c.result {
            Ok(chunk) if chunk.is_empty() => {
                // EOF before the fstat size: it shrank; the next fstat decides.
                t.size = t.offset;
            }
            Ok(chunk) => {
                let n = chunk.len() as u64;
                metrics::counter!("logtap_bytes_read_total", "source_kind" => t.info.kind.as_str())
                    .increment(n);
                t.offset += n;
                t.chunks_this_round += 1;
                t.last_growth = Instant::now();
                events.data(t.info.id, c.offset, chunk.clone());
                next.push(c.slot);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => next.push(c.slot),
            Err(e) => {
                let path = t.path.clone();
                // Retried on the next event or rescan.
                t.size = t.offset;
                self.warn_once(&path, error_reason(e), e);
            }
        }
    }
}

/// Entries of a directory looked at when searching a renamed file by identity: a
/// bound on the work one checkpoint can cause in a hostile or huge directory.
const MAX_IDENTITY_SEARCH: usize = 10_000;

/// The regular file (not a symlink) in `dir` with `identity`'s device and inode.
fn find_by_identity(dir: &Path, identity: &FileIdentity) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .take(MAX_IDENTITY_SEARCH)
        .filter_map(Result::ok)
        .find(|e| {
            // `DirEntry::metadata` does not follow symlinks.
            e.metadata()
                .is_ok_and(|m| m.is_file() && (m.dev(), m.ino()) == (identity.dev, identity.inode))
        })
        .map(|e| e.path())
}

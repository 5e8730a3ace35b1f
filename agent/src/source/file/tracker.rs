//! The tracker: the file source's state machine and its loop.
//!
//! It owns the set of tracked files and decides, from `stat`/`fstat` (inotify events
//! and rescans only say *where* to look), when a file is new, resumed, grown,
//! rotated away, deleted or truncated. Discovery ([`super::discover`]), identity
//! ([`super::identity`]), reads ([`super::read`]) and change notification
//! ([`super::watch`]) live in their own modules, as do the decisions on a file:
//! admission ([`super::admit`]), rotation and deletion ([`super::rotate`]) and
//! truncation ([`super::truncate`]). The tracked files and their indexes are a
//! [`FileTable`] ([`super::table`]), whose invariants are written there. This module
//! holds the loop and the reads, and sequences the rest.
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
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::source::claims::Claims;

use super::FileIdentity;
use super::container::{self, ContainerList};
use super::discover::{Found, Matcher};
use super::identity;
use super::open::Refused;
use super::read::{ReadCompletion, ReadRequest, Reader};
use super::resume::ResumeStore;
use super::rotate::Waiting;
use super::table::{FileTable, InodeKey, State};
use super::watch::{Change, Watcher};
use crate::config::{Format, SourceConfig};
use crate::pipeline::input::{EndReason, Input};
use crate::select::ContainerFactsSource;
use crate::source::{SourceId, SourceKind};

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

/// How long a one-shot run with nothing to read sleeps while logs wait for their
/// container's facts.
const ONESHOT_WAIT_STEP: Duration = Duration::from_millis(10);

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

/// A source that was drained and ended while its file still existed.
pub(super) struct Closed {
    pub(super) source: SourceId,
    pub(super) identity: FileIdentity,
    /// Where the bytes stopped: reopened from here if the file grows.
    pub(super) offset: u64,
    /// Where the file was when it was closed, to notice when it is gone.
    pub(super) path: Option<PathBuf>,
    /// For a file inside a container: the container's logical root. The entry is
    /// kept while such a container is known (its restart finds the file again at
    /// another `/proc/<pid>/root`), not only while `path` shows the file.
    pub(super) container: Option<String>,
}

/// The logical root (`container://ns/pod/name`) of a container file's logical path.
pub(super) fn container_of_logical(path: &Path) -> Option<String> {
    let (namespace, pod, name, _) = container::parse_logical(path)?;
    Some(format!("{}{namespace}/{pod}/{name}", container::SCHEME))
}

/// Reads every file matched by the `sources[]` configs; see the module docs of
/// [`super`] for what it guarantees.
pub struct FileSource {
    pub(super) configs: Vec<(Arc<str>, SourceKind)>,
    pub(super) matcher: Matcher,
    pub(super) options: FileSourceOptions,
    pub(super) store: Arc<dyn ResumeStore>,
    pub(super) reader: Reader,
    pub(super) watcher: Watcher,
    /// The tracked files and their indexes (by inode, path, real path, predecessor,
    /// read queue).
    pub(super) table: FileTable,
    /// Files that appeared at a path while its previous file was still being drained,
    /// oldest first; each starts once the one before it was read to EOF.
    pub(super) deferred: HashMap<PathBuf, VecDeque<Waiting>>,
    pub(super) closed: HashMap<InodeKey, Closed>,
    pub(super) last_detached_poll: Instant,
    pub(super) warned: HashSet<PathBuf>,
    pub(super) last_rescan: Instant,
    pub(super) last_poll: Instant,
    pub(super) last_tick: Instant,
    pub(super) requests: Vec<ReadRequest>,
    pub(super) completions: Vec<ReadCompletion>,
    /// Files that capture may still claim: asked again every tick.
    pub(super) undecided: HashSet<PathBuf>,
    /// Files held back until their container's facts are known, since when.
    pub(super) awaiting_facts: HashMap<PathBuf, Instant>,
    /// Last resolution of the containers of `container_paths` sources.
    pub(super) last_container_refresh: Option<Instant>,
}

fn source_kind(format: Format) -> SourceKind {
    match format {
        Format::Cri | Format::Docker => SourceKind::CriFile,
        Format::Raw | Format::Message => SourceKind::File,
    }
}

/// Reasons of `logtap_files_refused_total` (see [`super::open`]), which
/// [`error_reason`] gives for the errors carrying a [`Refused`].
const REFUSED_REASONS: [&str; 2] = [Refused::Symlink.reason(), Refused::NotRegular.reason()];

/// Bounded `reason` label of `logtap_file_open_errors_total` (or, for a file refused
/// on purpose, of `logtap_files_refused_total`).
pub(crate) fn error_reason(e: &io::Error) -> &'static str {
    if let Some(refused) = Refused::of(e) {
        return refused.reason();
    }
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
pub(super) fn current_path(file: &File) -> Option<PathBuf> {
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

    pub fn run(&mut self, events: &mut dyn Input, shutdown: &AtomicBool) -> anyhow::Result<()> {
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
        events: &mut dyn Input,
        stop: &dyn Fn() -> Option<StopMode>,
    ) -> anyhow::Result<()> {
        raise_nofile_limit();
        // Before the first scan: checkpoints of files it does not find are dropped, but
        // a checkpointed file renamed while the agent was stopped is found first.
        self.refresh_containers(events);
        self.recover_moved(events);
        self.rescan(events);
        // Files waiting behind one found by identity are found too: their
        // checkpoints must survive until they start, or they would start again from
        // offset 0 under a new id (and ship again what they had shipped).
        let found: HashSet<InodeKey> = self
            .table
            .inodes()
            .chain(self.closed.keys())
            .copied()
            .chain(self.waiting_keys())
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
                if self.awaiting_facts.is_empty() && self.undecided.is_empty() {
                    self.end_all(events, EndReason::Eof);
                    return Ok(());
                }
                // Logs waiting for their container's facts (at most `facts_wait`)
                // are decided on a later tick, then read: not ended unread.
                std::thread::sleep(ONESHOT_WAIT_STEP);
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
            // Renames first: a file created and renamed away inside one batch is
            // adopted at its old path before a later event there starts its successor,
            // which then follows it.
            changes.sort_by_key(|c| !matches!(c, Change::Moved { .. }));
            for change in changes.drain(..) {
                self.apply(change, events);
            }
            // Every step of the loop must leave the table consistent; the in-process
            // tests (unit and model-based) run this after each one.
            #[cfg(test)]
            self.table.assert_consistent();
        }
    }

    pub(super) fn maybe_tick(&mut self, events: &mut dyn Input) {
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
    pub(super) fn refresh_containers(&mut self, events: &mut dyn Input) {
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

    pub(super) fn apply(&mut self, change: Change, events: &mut dyn Input) {
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
            Change::Renamed(path) => self.renamed(&path, events),
            Change::Moved { from, to } => {
                self.follow_unseen_rename(&from, &to, events);
                self.renamed(&from, events);
                self.renamed(&to, events);
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

    /// A name appeared, vanished or changed hands.
    fn renamed(&mut self, path: &Path, events: &mut dyn Input) {
        self.check_path(path, events);
        // A rename of a tracked file's real path (behind a symlink).
        if let Some(slot) = self.table.at_real_path(path) {
            self.table.enqueue(slot);
        }
    }

    pub(super) fn warn_once(
        &mut self,
        path: &Path,
        reason: &'static str,
        e: &dyn std::fmt::Display,
    ) {
        if self.warned.len() >= MAX_WARNED_PATHS {
            self.warned.clear();
        }
        let first = self.warned.insert(path.to_path_buf());
        if REFUSED_REASONS.contains(&reason) {
            // Refused on purpose, again at every rescan: counted once per path, so
            // the counter says how many files were refused.
            if first {
                metrics::counter!("logtap_files_refused_total", "reason" => reason).increment(1);
                tracing::warn!(path = %path.display(), reason, error = %e, "refusing to read file");
            }
            return;
        }
        metrics::counter!("logtap_file_open_errors_total", "reason" => reason).increment(1);
        if first {
            tracing::warn!(path = %path.display(), reason, error = %e, "cannot read file");
        }
    }

    /// Full discovery plus a `stat` pass over everything tracked.
    pub(super) fn rescan(&mut self, events: &mut dyn Input) {
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
    pub(super) fn update_lag_gauge(&self) {
        let lag: u64 = self
            .table
            .iter()
            .map(|(_, t)| t.size.saturating_sub(t.offset))
            .sum();
        metrics::gauge!("logtap_read_lag_bytes").set(lag as f64);
    }

    pub(super) fn update_open_files_gauge(&self) {
        let open = self.table.iter().filter(|(_, t)| t.file.is_some()).count();
        metrics::gauge!("logtap_open_files").set(open as f64);
    }

    /// Files inotify does not cover: everything when watches failed, plus files whose
    /// fd was closed under fd pressure.
    pub(super) fn poll(&mut self, events: &mut dyn Input) {
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
    pub(super) fn rescan_new_files(&mut self, events: &mut dyn Input) {
        let (mut found, mut dirs) = (Vec::new(), Vec::new());
        self.matcher.scan(&mut found, &mut dirs);
        for f in found {
            if self.table.at_path(&f.path).is_none() {
                self.check_path(&f.path, events);
            }
        }
    }

    /// `fstat`s a tracked file: queues it if it grew, handles a shrink (copytruncate),
    /// grows its fingerprint. With `verify_prefix`, also re-reads the fingerprinted
    /// prefix to catch a truncation hidden by regrowth.
    pub(super) fn refresh(&mut self, slot: usize, events: &mut dyn Input, verify_prefix: bool) {
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
    pub(super) fn fresh_size(
        &mut self,
        slot: usize,
        events: &mut dyn Input,
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
        if size != t.size {
            self.store.observed_size(t.info.id, size);
        }
        t.size = size;
        Some(size)
    }

    pub(super) fn end_all(&mut self, events: &mut dyn Input, reason: EndReason) {
        for slot in self.table.slot_numbers() {
            if let Some(t) = self.table.remove(slot) {
                events.ended(t.info.id, reason);
            }
        }
        self.update_open_files_gauge();
    }

    /// Opens `path`, closing idle files once if the process ran out of fds.
    pub(super) fn open_file(&mut self, path: &Path) -> io::Result<File> {
        match self.matcher.open(path) {
            Err(e) if error_reason(&e) == "too_many_open_files" && self.close_idle() > 0 => {
                self.matcher.open(path)
            }
            other => other,
        }
    }

    /// Closes the fds of the idlest eighth of the attached, caught-up files.
    pub(super) fn close_idle(&mut self) -> usize {
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
    pub(super) fn reopen(&mut self, slot: usize, events: &mut dyn Input) {
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

    /// One round: every queued file gets up to [`CHUNKS_PER_ROUND`] reads, one read
    /// per file per batch.
    pub(super) fn read_round(&mut self, events: &mut dyn Input) {
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

    pub(super) fn complete(
        &mut self,
        c: &ReadCompletion,
        events: &mut dyn Input,
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
                events.data(t.info.id, c.offset, chunk.clone(), None);
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

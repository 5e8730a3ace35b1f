//! inotify on directories: tells the tracker which paths changed.
//!
//! Directories are watched, not files: one watch covers every file of a directory
//! (files come and go with rotation), and it reports creates and renames that a
//! per-file watch cannot. Events are hints only — the tracker always re-checks with
//! `stat`/`fstat` — so a lost event (queue overflow, watch limit) costs latency, never
//! data: overflow triggers a rescan, and without watches the tracker polls.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::metrics::catalogue::INOTIFY_WATCH_FAILURES_TOTAL;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// The content of the file at this path changed.
    Modified(PathBuf),
    /// A name appeared, vanished or was renamed in a watched directory, or its
    /// attributes changed: the path must be looked at again.
    Renamed(PathBuf),
    /// A file was renamed from `from` to `to`, both in watched directories (the
    /// kernel's `IN_MOVED_FROM`/`IN_MOVED_TO` pair, matched by cookie): both paths must
    /// be looked at again, and a file the tracker never saw at `from` is followed to
    /// `to`.
    Moved { from: PathBuf, to: PathBuf },
    /// A directory appeared inside a watched one.
    DirCreated(PathBuf),
    /// Events were lost: everything must be looked at again.
    Overflow,
}

pub(crate) struct Watcher {
    inotify: Option<Inotify>,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    watched: HashSet<PathBuf>,
    buf: Vec<u8>,
    /// Some directory has no watch: the tracker must poll.
    degraded: bool,
}

impl Watcher {
    pub fn new() -> Watcher {
        let inotify = match Inotify::init() {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable, polling files");
                metrics::counter!(INOTIFY_WATCH_FAILURES_TOTAL).increment(1);
                None
            }
        };
        Watcher {
            degraded: inotify.is_none(),
            inotify,
            dirs: HashMap::new(),
            watched: HashSet::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    /// Whether some directory could not be watched (the tracker then polls).
    pub fn degraded(&self) -> bool {
        self.degraded
    }

    pub fn watch_dir(&mut self, dir: &Path) {
        let Some(inotify) = &self.inotify else {
            return;
        };
        if self.watched.contains(dir) {
            return;
        }
        let mask = WatchMask::CREATE
            | WatchMask::MODIFY
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::DELETE
            | WatchMask::CLOSE_WRITE
            | WatchMask::ATTRIB
            | WatchMask::ONLYDIR;
        match inotify.watches().add(dir, mask) {
            Ok(wd) => {
                self.dirs.insert(wd, dir.to_path_buf());
                self.watched.insert(dir.to_path_buf());
            }
            // The directory went away between the walk and now: nothing to watch.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                if !self.degraded {
                    tracing::warn!(
                        error = %e, dir = %dir.display(),
                        "cannot add inotify watch (fs.inotify.max_user_watches?); \
                         relying on rescan and polling"
                    );
                }
                self.degraded = true;
                metrics::counter!(INOTIFY_WATCH_FAILURES_TOTAL).increment(1);
            }
        }
    }

    /// Drops the watches of `root` and every directory below it (a stopped
    /// container's: a volume's directories outlive it, and its pid may be reused).
    pub fn unwatch_under(&mut self, root: &Path) {
        let Some(inotify) = &self.inotify else {
            return;
        };
        let gone: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, dir)| dir.starts_with(root))
            .map(|(wd, _)| wd.clone())
            .collect();
        for wd in gone {
            if let Some(dir) = self.dirs.remove(&wd) {
                self.watched.remove(&dir);
            }
            // Fails when the kernel dropped it already (the directory is gone).
            let _ = inotify.watches().remove(wd);
        }
    }

    /// Waits up to `timeout` for events and appends what changed to `out`.
    pub fn wait(&mut self, timeout: Duration, out: &mut Vec<Change>) {
        let Some(inotify) = &mut self.inotify else {
            std::thread::sleep(timeout);
            return;
        };
        let mut pfd = libc::pollfd {
            fd: inotify.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, as the length says.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready <= 0 {
            return;
        }
        // A rename's `IN_MOVED_FROM`, until its `IN_MOVED_TO` (the next event when
        // both directories are watched) pairs with it by cookie.
        let mut moved_from: Option<(u32, PathBuf)> = None;
        loop {
            let events = match inotify.read_events(&mut self.buf) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Renamed out of the watched directories: only its old path changed.
                    out.extend(moved_from.take().map(|(_, from)| Change::Renamed(from)));
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading inotify events failed; rescanning");
                    out.push(Change::Overflow);
                    return;
                }
            };
            for event in events {
                let pairs = event.mask.contains(EventMask::MOVED_TO)
                    && !event.mask.contains(EventMask::ISDIR)
                    && moved_from.as_ref().is_some_and(|(c, _)| *c == event.cookie);
                if let Some((_, from)) = moved_from.take() {
                    if pairs && let (Some(dir), Some(name)) = (self.dirs.get(&event.wd), event.name)
                    {
                        out.push(Change::Moved {
                            from,
                            to: dir.join(name),
                        });
                        continue;
                    }
                    out.push(Change::Renamed(from));
                }
                if event.mask.contains(EventMask::MOVED_FROM)
                    && !event.mask.contains(EventMask::ISDIR)
                    && let (Some(dir), Some(name)) = (self.dirs.get(&event.wd), event.name)
                {
                    moved_from = Some((event.cookie, dir.join(name)));
                    continue;
                }
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    out.push(Change::Overflow);
                    continue;
                }
                if event.mask.contains(EventMask::IGNORED) {
                    // The directory was removed (or unmounted): its watch is gone.
                    if let Some(dir) = self.dirs.remove(&event.wd) {
                        self.watched.remove(&dir);
                    }
                    continue;
                }
                let (Some(dir), Some(name)) = (self.dirs.get(&event.wd), event.name) else {
                    continue;
                };
                let path = dir.join(name);
                if event.mask.contains(EventMask::ISDIR) {
                    if event
                        .mask
                        .intersects(EventMask::CREATE | EventMask::MOVED_TO)
                    {
                        out.push(Change::DirCreated(path));
                    } else {
                        // A directory where a tracked file was expected, or one going away.
                        out.push(Change::Renamed(path));
                    }
                } else if event
                    .mask
                    .intersects(EventMask::MODIFY | EventMask::CLOSE_WRITE)
                {
                    out.push(Change::Modified(path));
                } else {
                    out.push(Change::Renamed(path));
                }
            }
        }
    }
}

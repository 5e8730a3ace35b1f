//! End-to-end tests of the file source: real files in temp dirs, real renames,
//! truncations and unlinks, a recording [`Input`] that reassembles the bytes of
//! every source and checks their offsets, and an in-memory [`ResumeStore`].
//!
//! To act on files "between two reads" deterministically, a test parks the source
//! thread inside `tick` (see [`Harness::pause`]): the loop is stopped while the test
//! appends, copies, truncates or unlinks.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::checkpoint::FileCheckpoint;
use crate::config::{Format, ParserConfig, SourceConfig};
use crate::pipeline::{Content, EndReason, Input, Opening};
use crate::source::SourceId;

#[derive(Default)]
struct MemStore {
    entries: Mutex<HashMap<SourceId, FileCheckpoint>>,
    forgotten: Mutex<Vec<SourceId>>,
}

impl ResumeStore for MemStore {
    fn lookup(&self, dev: u64, inode: u64) -> Option<FileCheckpoint> {
        let entries = self.entries.lock().unwrap();
        entries
            .values()
            .find(|c| c.identity.dev == dev && c.identity.inode == inode)
            .cloned()
    }
    fn register(&self, source: SourceId, identity: FileIdentity, path: PathBuf, offset: u64) {
        self.entries.lock().unwrap().insert(
            source,
            FileCheckpoint {
                source_id: source,
                identity,
                path,
                offset,
                last_package_id: 0,
                closed: false,
                size: offset,
            },
        );
    }
    fn continue_on(&self, checkpoint: &FileCheckpoint, to: FileIdentity) {
        if let Some(c) = self.entries.lock().unwrap().get_mut(&checkpoint.source_id) {
            c.identity = to;
        }
    }
    fn observed_size(&self, source: SourceId, size: u64) {
        if let Some(c) = self.entries.lock().unwrap().get_mut(&source) {
            c.size = size;
        }
    }
    fn update_identity(&self, source: SourceId, identity: FileIdentity) {
        if let Some(c) = self.entries.lock().unwrap().get_mut(&source) {
            c.identity = identity;
        }
    }
    fn mark_closed(&self, source: SourceId) {
        if let Some(c) = self.entries.lock().unwrap().get_mut(&source) {
            c.closed = true;
        }
    }
    fn forget(&self, source: SourceId) {
        self.entries.lock().unwrap().remove(&source);
        self.forgotten.lock().unwrap().push(source);
    }
    fn resumable(&self) -> Vec<FileCheckpoint> {
        self.entries.lock().unwrap().values().cloned().collect()
    }
    fn retain_unclaimed(&self, found: &std::collections::HashSet<(u64, u64)>) {
        self.entries
            .lock()
            .unwrap()
            .retain(|_, c| found.contains(&(c.identity.dev, c.identity.inode)));
    }
}

#[derive(Debug)]
struct Rec {
    path: PathBuf,
    /// The inode the source was last opened on.
    inode: u64,
    config: usize,
    /// Every config reading it (`Opening::configs`), primary first.
    configs: Vec<usize>,
    start: u64,
    bytes: Vec<u8>,
    predecessor: Option<SourceId>,
    /// Bytes the predecessor had received when this source opened.
    predecessor_bytes_at_open: Option<usize>,
    ended: Option<EndReason>,
    opens: usize,
}

#[derive(Default)]
struct Recorded {
    sources: HashMap<SourceId, Rec>,
    order: Vec<SourceId>,
    /// Protocol violations: non-contiguous data, data after end, unknown source.
    errors: Vec<String>,
    ticks: usize,
    parked: bool,
    pause: bool,
    /// `data` calls allowed before the source thread parks in `data` (a reader held up
    /// by backpressure); `None`: no limit.
    data_budget: Option<usize>,
}

impl Recorded {
    fn at(&self, path: &Path) -> Vec<(SourceId, &Rec)> {
        self.order
            .iter()
            .filter_map(|id| self.sources.get(id).map(|r| (*id, r)))
            .filter(|(_, r)| r.path == path)
            .collect()
    }
    fn only(&self, path: &Path) -> Option<(SourceId, &Rec)> {
        let all = self.at(path);
        (all.len() == 1).then(|| all[0])
    }
}

struct Shared {
    rec: Mutex<Recorded>,
    resumed: Condvar,
}

struct Recorder(Arc<Shared>);

impl Input for Recorder {
    fn opened(&mut self, opening: Opening) {
        let Opening {
            info,
            configs,
            start_offset,
            predecessor,
            content,
        } = opening;
        let Content::File { identity } = content else {
            panic!("the file source opened a stream");
        };
        let mut r = self.0.rec.lock().unwrap();
        let predecessor_bytes_at_open =
            predecessor.and_then(|p| r.sources.get(&p).map(|s| s.bytes.len()));
        if let Some(existing) = r.sources.get_mut(&info.id) {
            // A closed source reopened because it grew: it continues where it stopped.
            let continues = existing.start + existing.bytes.len() as u64 == start_offset;
            existing.configs = configs;
            if continues {
                existing.ended = None;
                existing.opens += 1;
                existing.inode = identity.inode;
                // After a restart a source may resume behind a file found by
                // identity: what it follows now is what matters.
                if predecessor.is_some() {
                    existing.predecessor = predecessor;
                    existing.predecessor_bytes_at_open = predecessor_bytes_at_open;
                }
            } else {
                let msg = format!("{} reopened at {start_offset}", info.id);
                r.errors.push(msg);
            }
            return;
        }
        r.order.push(info.id);
        r.sources.insert(
            info.id,
            Rec {
                path: info.path.clone(),
                inode: identity.inode,
                config: configs[0],
                configs,
                start: start_offset,
                bytes: Vec::new(),
                predecessor,
                predecessor_bytes_at_open,
                ended: None,
                opens: 1,
            },
        );
    }
    fn data(&mut self, source: SourceId, offset: u64, chunk: Bytes, _written_ns: Option<i64>) {
        let mut r = self.0.rec.lock().unwrap();
        while r.data_budget == Some(0) {
            r.parked = true;
            r = self.0.resumed.wait(r).unwrap();
        }
        r.parked = false;
        if let Some(budget) = &mut r.data_budget {
            *budget -= 1;
        }
        let error = match r.sources.get_mut(&source) {
            None => Some(format!("data for unknown {source}")),
            Some(s) if s.ended.is_some() => Some(format!("data after end for {source}")),
            Some(s) if s.start + s.bytes.len() as u64 != offset => Some(format!(
                "{source}: chunk at {offset}, expected {}",
                s.start + s.bytes.len() as u64
            )),
            Some(s) => {
                s.bytes.extend_from_slice(&chunk);
                None
            }
        };
        r.errors.extend(error);
    }
    fn gap(&mut self, source: SourceId, offset: u64) {
        // Files have no holes: a gap is a protocol violation here.
        let msg = format!("gap in {source} at {offset}");
        self.0.rec.lock().unwrap().errors.push(msg);
    }
    fn ended(&mut self, source: SourceId, reason: EndReason) {
        let mut r = self.0.rec.lock().unwrap();
        match r.sources.get_mut(&source) {
            Some(s) if s.ended.is_none() => s.ended = Some(reason),
            _ => r.errors.push(format!("bad end of {source}")),
        }
    }
    fn tick(&mut self, _now: Instant) {
        let mut r = self.0.rec.lock().unwrap();
        r.ticks += 1;
        while r.pause {
            r.parked = true;
            r = self.0.resumed.wait(r).unwrap();
        }
        r.parked = false;
    }
}

fn config(name: &str, include: &[String], format: Format) -> SourceConfig {
    SourceConfig {
        name: Arc::from(name),
        include: include.to_vec(),
        exclude: vec!["*.gz".into()],
        format,
        max_line_bytes: 1 << 20,
        multiline: None,
        parser: ParserConfig::None,
        sink: Arc::from("null"),
        selector: None,
        stream: None,
        container_paths: Vec::new(),
        allowed_roots: Vec::new(),
        processors: Vec::new(),
        fields: Vec::new(),
        input: None,
    }
}

fn options(io_uring: bool) -> FileSourceOptions {
    FileSourceOptions {
        rescan_interval: Duration::from_secs(60),
        rotate_wait: Duration::from_millis(150),
        io_uring,
        read_buffer_bytes: 4096,
        oneshot: false,
        claims: None,
        ..FileSourceOptions::default()
    }
}

struct Harness {
    shared: Arc<Shared>,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<&'static str>>>,
    store: Arc<MemStore>,
}

impl Harness {
    fn start(
        sources: Vec<SourceConfig>,
        options: FileSourceOptions,
        store: Arc<MemStore>,
    ) -> Harness {
        let shared = Arc::new(Shared {
            rec: Mutex::new(Recorded::default()),
            resumed: Condvar::new(),
        });
        Harness::start_recording(sources, options, store, shared)
    }

    /// Like [`start`](Self::start), recording into `shared`: a source started again
    /// after [`stop_keeping`](Self::stop_keeping) continues its recording.
    fn start_recording(
        sources: Vec<SourceConfig>,
        options: FileSourceOptions,
        store: Arc<MemStore>,
        shared: Arc<Shared>,
    ) -> Harness {
        let shutdown = Arc::new(AtomicBool::new(false));
        let (sh, stop, st) = (shared.clone(), shutdown.clone(), store.clone());
        let thread = std::thread::spawn(move || {
            let mut source = FileSource::with_store(&sources, options, st)?;
            source.run(&mut Recorder(sh), &stop)?;
            Ok(source.backend())
        });
        Harness {
            shared,
            shutdown,
            thread: Some(thread),
            store,
        }
    }

    fn wait(&self, what: &str, cond: impl Fn(&Recorded) -> bool) {
        let deadline = Instant::now() + Duration::from_millis(2500);
        loop {
            // A source thread that ended early panicked (a broken table invariant,
            // say): its message is above; waiting longer would only time out.
            assert!(
                !self.thread.as_ref().is_some_and(JoinHandle::is_finished),
                "the source thread ended while waiting for {what}"
            );
            {
                let r = self.shared.rec.lock().unwrap();
                assert!(r.errors.is_empty(), "protocol errors: {:?}", r.errors);
                if cond(&r) {
                    return;
                }
                if Instant::now() > deadline {
                    let summary: Vec<_> = r
                        .order
                        .iter()
                        .map(|id| {
                            let s = &r.sources[id];
                            (
                                id,
                                s.path.clone(),
                                s.start,
                                s.bytes.len(),
                                s.ended,
                                s.predecessor,
                            )
                        })
                        .collect();
                    panic!("timed out waiting for {what}; sources: {summary:#?}");
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Parks the source thread in its next `tick`: nothing is read until `resume`.
    fn pause(&self) {
        self.shared.rec.lock().unwrap().pause = true;
        self.wait("source thread parked", |r| r.parked);
    }

    fn resume(&self) {
        self.shared.rec.lock().unwrap().pause = false;
        self.shared.resumed.notify_all();
    }

    /// Lets `n` more chunks through, then parks the source thread in `data` (as a
    /// blocked sink would); `None` lifts the limit.
    fn allow_data(&self, n: Option<usize>) {
        self.shared.rec.lock().unwrap().data_budget = n;
        self.shared.resumed.notify_all();
    }

    fn with<T>(&self, f: impl FnOnce(&Recorded) -> T) -> T {
        f(&self.shared.rec.lock().unwrap())
    }

    /// Stops the source; returns the backend it used.
    fn stop(mut self) -> &'static str {
        self.stop_keeping().0
    }

    /// Stops the source; returns the backend it used and its recording, to start
    /// again on (this harness is spent).
    fn stop_keeping(&mut self) -> (&'static str, Arc<Shared>) {
        self.allow_data(None);
        self.resume();
        self.shutdown.store(true, Ordering::Relaxed);
        let backend = self.thread.take().unwrap().join().unwrap().unwrap();
        let r = self.shared.rec.lock().unwrap();
        assert!(r.errors.is_empty(), "protocol errors: {:?}", r.errors);
        drop(r);
        (backend, self.shared.clone())
    }
}

impl Drop for Harness {
    /// A test that failed midway still stops its source thread: it would otherwise
    /// go on polling a deleted directory while the next cases run.
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if let Ok(mut r) = self.shared.rec.lock() {
                r.pause = false;
                r.data_budget = None;
            }
            self.shared.resumed.notify_all();
            self.shutdown.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

fn glob(dir: &Path, pattern: &str) -> Vec<String> {
    vec![format!("{}/{pattern}", dir.display())]
}

fn append(path: &Path, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(data).unwrap();
}

fn appended_bytes_arrive_exactly(io_uring: bool) -> &'static str {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    append(&path, b"first line\n");
    let h = Harness::start(
        vec![config("a", &glob(dir.path(), "*.log"), Format::Raw)],
        options(io_uring),
        Arc::new(MemStore::default()),
    );
    h.wait("first line", |r| {
        r.only(&path)
            .is_some_and(|(_, s)| s.bytes == b"first line\n")
    });
    // More than read_buffer_bytes in one go, then a partial line, then its end.
    let mut expected = b"first line\n".to_vec();
    let big: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for piece in [&big[..], b"partial", b" end\n"] {
        append(&path, piece);
        expected.extend_from_slice(piece);
        h.wait("appended bytes", |r| {
            r.only(&path).is_some_and(|(_, s)| s.bytes == expected)
        });
    }
    h.with(|r| {
        let (_, s) = r.only(&path).unwrap();
        assert_eq!(s.start, 0);
        assert_eq!(s.config, 0);
        assert_eq!(s.predecessor, None);
    });
    h.wait("ticks while idle", |r| r.ticks >= 2);
    h.stop()
}

#[test]
fn appended_bytes_arrive_exactly_with_pread() {
    assert_eq!(appended_bytes_arrive_exactly(false), "pread");
}

#[test]
fn appended_bytes_arrive_exactly_with_io_uring() {
    let backend = appended_bytes_arrive_exactly(true);
    // Under a seccomp policy that forbids io_uring, the fallback is what is tested.
    let expected = if io_uring::IoUring::new(4).is_ok() {
        "io_uring"
    } else {
        "pread"
    };
    assert_eq!(backend, expected);
}

#[test]
fn rename_rotation_while_appending_loses_and_duplicates_nothing() {
    for io_uring in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let rotated = dir.path().join("app.log.1");
        append(&path, b"");
        let h = Harness::start(
            vec![config("a", &glob(dir.path(), "*.log"), Format::Raw)],
            options(io_uring),
            Arc::new(MemStore::default()),
        );
        h.wait("opened", |r| r.only(&path).is_some());
        let mut writer = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        for i in 0..2000 {
            if i == 1000 {
                std::fs::rename(&path, &rotated).unwrap();
                // The writer still holds the old file for a few lines, as real ones do.
                for j in 0..50 {
                    writeln!(writer, "late line {j} to the rotated file").unwrap();
                }
                writer = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&path)
                    .unwrap();
            }
            writeln!(writer, "line {i} of the log with some padding text").unwrap();
        }
        drop(writer);
        let old_content = std::fs::read(&rotated).unwrap();
        let new_content = std::fs::read(&path).unwrap();
        h.wait("both generations read, old one ended", |r| {
            let all = r.at(&path);
            all.len() == 2
                && all[0].1.bytes == old_content
                && all[0].1.ended == Some(EndReason::Rotated)
                && all[1].1.bytes == new_content
        });
        h.with(|r| {
            let all = r.at(&path);
            let (old_id, _) = all[0];
            let new = all[1].1;
            assert_eq!(new.predecessor, Some(old_id));
            assert_eq!(new.start, 0);
            assert_eq!(
                new.predecessor_bytes_at_open,
                Some(old_content.len()),
                "predecessor drained first"
            );
        });
        let old_id = h.with(|r| r.at(&path)[0].0);
        assert!(h.store.entries.lock().unwrap()[&old_id].closed);
        h.stop();
    }
}

#[test]
fn copytruncate_recovers_bytes_from_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let copy = dir.path().join("app.log.1");
    append(&path, b"one\ntwo\n");
    let h = Harness::start(
        vec![config("a", &glob(dir.path(), "*.log"), Format::Raw)],
        options(true),
        Arc::new(MemStore::default()),
    );
    h.wait("first lines", |r| {
        r.only(&path).is_some_and(|(_, s)| s.bytes == b"one\ntwo\n")
    });
    h.pause();
    // Written after our last read, copied, then truncated away before we look again.
    append(&path, b"three\nfour\n");
    std::fs::copy(&path, &copy).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&path, b"new\n");
    h.resume();
    h.wait("old source ended, new one read", |r| {
        let all = r.at(&path);
        all.len() == 2 && all[1].1.bytes == b"new\n" && all[0].1.ended.is_some()
    });
    h.with(|r| {
        let all = r.at(&path);
        assert_eq!(all[0].1.bytes, b"one\ntwo\nthree\nfour\n");
        assert_eq!(all[0].1.ended, Some(EndReason::Truncated));
        assert_eq!(all[1].1.start, 0);
        assert_eq!(all[1].1.predecessor, None);
    });
    let old = h.with(|r| r.at(&path)[0].0);
    assert!(h.store.forgotten.lock().unwrap().contains(&old));
    h.stop();
}

#[test]
fn truncation_takes_no_bytes_from_a_followed_sibling_with_the_same_start() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let header = b"same header in both files\n".repeat(12);
    append(&a, &header);
    append(&b, &header);
    let h = Harness::start(
        vec![config("a", &glob(dir.path(), "*.log"), Format::Raw)],
        options(true),
        Arc::new(MemStore::default()),
    );
    h.wait("both read", |r| {
        [&a, &b]
            .iter()
            .all(|p| r.only(p).is_some_and(|(_, s)| s.bytes == header))
    });
    h.pause();
    append(&b, b"only in b\n");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&a, b"new a\n");
    h.resume();
    h.wait("a truncated, b grown", |r| {
        let all = r.at(&a);
        all.len() == 2
            && all[1].1.bytes == b"new a\n"
            && r.only(&b)
                .is_some_and(|(_, s)| s.bytes.ends_with(b"only in b\n"))
    });
    h.with(|r| assert_eq!(r.at(&a)[0].1.bytes, header, "b is not a's copy"));
    h.stop();
}

#[test]
fn truncation_without_a_copy_starts_a_new_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, b"0123456789\n");
    let h = Harness::start(
        vec![config("a", &glob(dir.path(), "*.log"), Format::Raw)],
        options(false),
        Arc::new(MemStore::default()),
    );
    h.wait("read", |r| {
        r.only(&path).is_some_and(|(_, s)| s.bytes.len() == 11)
    });
    std::fs::write(&path, b"x\n").unwrap();
    h.wait("new source", |r| {
        let all = r.at(&path);
        all.len() == 2 && all[1].1.bytes == b"x\n" && all[0].1.ended == Some(EndReason::Truncated)
    });
    h.stop();
}

#[test]
fn deleted_file_is_drained_then_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.log");
    append(&path, b"before\n");
    let h = Harness::start(
        vec![config("a", &glob(dir.path(), "*.log"), Format::Raw)],
        options(true),
        Arc::new(MemStore::default()),
    );
    h.wait("first", |r| {
        r.only(&path).is_some_and(|(_, s)| s.bytes == b"before\n")
    });
    h.pause();
    append(&path, b"written just before the unlink\n");
    std::fs::remove_file(&path).unwrap();
    h.resume();
    h.wait("drained and ended", |r| {
        r.only(&path)
            .is_some_and(|(_, s)| s.ended == Some(EndReason::Deleted))
    });
    h.with(|r| {
        let (_, s) = r.only(&path).unwrap();
        assert_eq!(s.bytes, b"before\nwritten just before the unlink\n");
    });
    let id = h.with(|r| r.only(&path).unwrap().0);
    assert!(!h.store.entries.lock().unwrap().contains_key(&id));
    h.stop();
}

fn checkpoint_for(path: &Path, offset: u64, fingerprint_of: &[u8]) -> FileCheckpoint {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    FileCheckpoint {
        source_id: SourceId(42),
        identity: FileIdentity {
            dev: m.dev(),
            inode: m.ino(),
            fingerprint_len: fingerprint_of.len() as u32,
            fingerprint: crc32fast::hash(fingerprint_of),
        },
        path: path.to_path_buf(),
        offset,
        last_package_id: 0,
        closed: false,
        size: m.len(),
    }
}

fn start_with_checkpoint(dir: &Path, cp: FileCheckpoint) -> Harness {
    let store = Arc::new(MemStore::default());
    store.entries.lock().unwrap().insert(cp.source_id, cp);
    Harness::start(
        vec![config("a", &glob(dir, "*.log"), Format::Cri)],
        options(false),
        store,
    )
}

#[test]
fn resumes_from_a_matching_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    append(&path, b"aaaa\nbbbb\n");
    let h = start_with_checkpoint(dir.path(), checkpoint_for(&path, 5, b"aaaa\n"));
    h.wait("resumed", |r| {
        r.only(&path).is_some_and(|(_, s)| s.bytes == b"bbbb\n")
    });
    h.with(|r| {
        let (id, s) = r.only(&path).unwrap();
        assert_eq!((id, s.start), (SourceId(42), 5));
    });
    // The fingerprint grows with the file and the registry hears of it.
    append(&path, b"cccc\n");
    h.wait("more", |r| {
        r.only(&path)
            .is_some_and(|(_, s)| s.bytes == b"bbbb\ncccc\n")
    });
    assert_eq!(
        h.store.entries.lock().unwrap()[&SourceId(42)]
            .identity
            .fingerprint_len,
        15
    );
    h.stop();
}

/// Issue 9: the agent stopped with a backlog, the file was renamed to a name the
/// glob does not match (`a.log.1`, like the kubelet's `0.log.<timestamp>`) and a new
/// `a.log` began. The checkpointed file is found again by identity in its directory,
/// read to its end from the checkpoint, and only then is the new file started.
#[test]
fn a_checkpointed_file_renamed_while_stopped_is_found_and_read_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    append(&path, b"aaaa\nbbbb\n");
    let cp = checkpoint_for(&path, 5, b"aaaa\n");
    let rotated = dir.path().join("a.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    append(&rotated, b"dddd\n");
    append(&path, b"cccc\n");
    let h = start_with_checkpoint(dir.path(), cp);
    h.wait("both files read", |r| {
        let all = r.at(&path);
        all.len() == 2 && all[0].1.bytes == b"bbbb\ndddd\n" && all[1].1.bytes == b"cccc\n"
    });
    h.with(|r| {
        let all = r.at(&path);
        assert_eq!((all[0].0, all[0].1.start), (SourceId(42), 5));
        assert_eq!(all[1].1.start, 0);
        assert_eq!(all[1].1.predecessor, Some(SourceId(42)));
    });
    assert!(!h.store.forgotten.lock().unwrap().contains(&SourceId(42)));
    h.stop();
}

/// logrotate's copytruncate while the agent was stopped: the file is at its path
/// still, shorter than its checkpoint. What it held past the checkpoint is read from
/// the copy, under the checkpoint's source (the copy continues it), and the truncated
/// file is read from 0 as a new source.
#[test]
fn a_file_copy_truncated_while_stopped_is_read_on_from_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    append(&path, b"aaaa\nbbbb\n");
    let cp = checkpoint_for(&path, 5, b"aaaa\n");
    append(&path, b"cccc\n");
    std::fs::copy(&path, dir.path().join("a.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&path, b"new\n");
    let h = start_with_checkpoint(dir.path(), cp);
    h.wait("the copy's unread bytes and the new generation", |r| {
        let all = r.at(&path);
        all.len() == 2 && all[0].1.bytes == b"bbbb\ncccc\n" && all[1].1.bytes == b"new\n"
    });
    h.with(|r| {
        let all = r.at(&path);
        assert_eq!((all[0].0, all[0].1.start), (SourceId(42), 5));
        assert_ne!(all[1].0, SourceId(42));
        assert_eq!(all[1].1.start, 0);
    });
    h.stop();
}

/// The file at the path was read before the stop too: it waits for the one found by
/// identity, and then resumes from its own checkpoint, not from 0 under a new id
/// (found by the model test: its checkpoint was dropped as "gone" while it waited).
#[test]
fn a_file_waiting_behind_one_found_by_identity_keeps_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    append(&path, b"aaaa\n");
    let old = checkpoint_for(&path, 5, b"aaaa\n");
    std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
    append(&dir.path().join("a.log.1"), b"late\n");
    append(&path, b"bbbb\ncccc\n");
    let mut new = checkpoint_for(&path, 5, b"bbbb\n");
    new.source_id = SourceId(43);
    let store = Arc::new(MemStore::default());
    let entries = [(old.source_id, old), (new.source_id, new)];
    store.entries.lock().unwrap().extend(entries);
    let h = Harness::start(
        vec![config("a", &glob(dir.path(), "*.log"), Format::Raw)],
        options(false),
        store,
    );
    h.wait("both read", |r| {
        let all = r.at(&path);
        all.len() == 2 && all[0].1.bytes == b"late\n" && all[1].1.bytes == b"cccc\n"
    });
    h.with(|r| {
        let all = r.at(&path);
        assert_eq!((all[0].0, all[1].0), (SourceId(42), SourceId(43)));
        assert_eq!(all[1].1.start, 5);
        assert_eq!(all[1].1.predecessor, Some(SourceId(42)));
    });
    h.stop();
}

/// Two checkpointed files of one path renamed while stopped (one was still being
/// read when the agent stopped, the other was rotated after it): both are read, the
/// older first, then the new file. (The second used to take the path from the first,
/// which stayed attached without being indexed by its path: never detached, never
/// ended, and not waited for.)
#[test]
fn two_files_of_one_path_renamed_while_stopped_are_read_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let (older, newer) = (dir.path().join("a.log.2"), dir.path().join("a.log.1"));
    append(&path, b"one\n");
    let first = checkpoint_for(&path, 4, b"one\n");
    std::fs::rename(&path, &older).unwrap();
    append(&older, b"one late\n");
    append(&path, b"two\n");
    let mut second = checkpoint_for(&path, 4, b"two\n");
    second.source_id = SourceId(43);
    std::fs::rename(&path, &newer).unwrap();
    append(&newer, b"two late\n");
    append(&path, b"three\n");
    let store = Arc::new(MemStore::default());
    let entries = [(first.source_id, first), (second.source_id, second)];
    store.entries.lock().unwrap().extend(entries);
    let h = Harness::start(
        vec![config("a", &glob(dir.path(), "*.log"), Format::Raw)],
        options(false),
        store,
    );
    h.wait("all three read", |r| {
        let all = r.at(&path);
        all.len() == 3
            && all[0].1.bytes == b"one late\n"
            && all[1].1.bytes == b"two late\n"
            && all[2].1.bytes == b"three\n"
    });
    h.with(|r| {
        let all = r.at(&path);
        assert_eq!((all[0].0, all[1].0), (SourceId(42), SourceId(43)));
        assert_eq!(all[1].1.predecessor, Some(SourceId(42)));
        assert_eq!(all[2].1.predecessor, Some(SourceId(43)));
        assert_eq!(
            all[2].1.predecessor_bytes_at_open,
            Some(b"two late\n".len())
        );
    });
    h.wait("both moved files ended", |r| {
        let all = r.at(&path);
        all[0].1.ended == Some(EndReason::Rotated) && all[1].1.ended == Some(EndReason::Rotated)
    });
    h.stop();
}

/// A checkpointed file that is truly gone is dropped; one whose inode now holds
/// another file (same directory, wrong fingerprint) is not taken for it.
#[test]
fn a_checkpointed_file_that_is_gone_is_not_confused_with_another() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    append(&path, b"aaaa\nbbbb\n");
    let cp = checkpoint_for(&path, 5, b"zzzz\n");
    std::fs::rename(&path, dir.path().join("other.txt")).unwrap();
    let h = start_with_checkpoint(dir.path(), cp);
    h.wait("the checkpoint dropped", |_| {
        h.store.entries.lock().unwrap().is_empty()
    });
    h.with(|r| assert!(r.at(&path).is_empty(), "nothing read"));
    h.stop();
}

#[test]
fn reused_inode_is_read_as_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    append(&path, b"a brand new file\n");
    let h = start_with_checkpoint(dir.path(), checkpoint_for(&path, 5, b"older"));
    h.wait("read from 0", |r| {
        r.only(&path)
            .is_some_and(|(_, s)| s.bytes == b"a brand new file\n")
    });
    h.with(|r| {
        let (id, s) = r.only(&path).unwrap();
        assert_ne!(id, SourceId(42));
        assert_eq!(s.start, 0);
    });
    assert!(h.store.forgotten.lock().unwrap().contains(&SourceId(42)));
    h.stop();
}

#[test]
fn checkpoint_past_eof_reads_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    append(&path, b"short\n");
    let h = start_with_checkpoint(dir.path(), checkpoint_for(&path, 100, b"short\n"));
    h.wait("read from 0", |r| {
        r.only(&path).is_some_and(|(_, s)| s.bytes == b"short\n")
    });
    h.with(|r| assert_ne!(r.only(&path).unwrap().0, SourceId(42)));
    h.stop();
}

#[test]
fn closed_checkpoint_is_not_reopened_until_it_grows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    append(&path, b"done\n");
    let mut cp = checkpoint_for(&path, 5, b"done\n");
    cp.closed = true;
    let mut opts = options(false);
    opts.rescan_interval = Duration::from_millis(50);
    let store = Arc::new(MemStore::default());
    store.entries.lock().unwrap().insert(cp.source_id, cp);
    let h = Harness::start(
        vec![config("a", &glob(dir.path(), "*.log"), Format::Raw)],
        opts,
        store,
    );
    h.wait("a few rescans", |r| r.ticks >= 3);
    h.with(|r| assert!(r.at(&path).is_empty(), "closed and unchanged: not reopened"));
    append(&path, b"more\n");
    h.wait("reopened", |r| {
        r.only(&path).is_some_and(|(_, s)| s.bytes == b"more\n")
    });
    h.with(|r| assert_eq!(r.only(&path).unwrap().0, SourceId(42)));
    h.stop();
}

#[test]
fn a_thousand_files() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..1000)
        .map(|i| dir.path().join(format!("sub{}/f{i}.log", i % 10)))
        .collect();
    for (i, p) in paths.iter().enumerate() {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        append(p, format!("file {i} first\n").as_bytes());
    }
    let h = Harness::start(
        vec![config("a", &glob(dir.path(), "**/*.log"), Format::Raw)],
        options(true),
        Arc::new(MemStore::default()),
    );
    h.wait("every file read", |r| {
        r.sources.len() == 1000 && r.sources.values().all(|s| s.bytes.ends_with(b"first\n"))
    });
    for p in &paths {
        append(p, b"second\n");
    }
    h.wait("every append read", |r| {
        r.sources.len() == 1000
            && r.sources
                .values()
                .all(|s| s.bytes.ends_with(b"first\nsecond\n"))
    });
    h.stop();
}

/// Runs a one-shot source on this thread until it ends by itself; its recording.
fn run_to_the_end(sources: &[SourceConfig], options: FileSourceOptions) -> Arc<Shared> {
    let shared = Arc::new(Shared {
        rec: Mutex::new(Recorded::default()),
        resumed: Condvar::new(),
    });
    let mut source =
        FileSource::with_store(sources, options, Arc::new(MemStore::default())).unwrap();
    source
        .run(&mut Recorder(shared.clone()), &AtomicBool::new(false))
        .unwrap();
    shared
}

#[test]
fn oneshot_reads_to_eof_and_ends_everything() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..5 {
        append(
            &dir.path().join(format!("{i}.log")),
            format!("file {i}\n").as_bytes(),
        );
    }
    append(&dir.path().join("skip.log.gz"), b"excluded\n");
    let mut opts = options(true);
    opts.oneshot = true;
    let shared = run_to_the_end(
        &[config("a", &glob(dir.path(), "*.log*"), Format::Raw)],
        opts,
    );
    let r = shared.rec.lock().unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.sources.len(), 5);
    for s in r.sources.values() {
        assert_eq!(s.ended, Some(EndReason::Eof));
        assert_eq!(s.bytes, std::fs::read(&s.path).unwrap());
    }
}

#[test]
fn directories_dangling_links_and_errors_do_not_stop_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.log");
    let becomes_dir = dir.path().join("flip.log");
    std::fs::create_dir(dir.path().join("already_a_dir.log")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("missing"), dir.path().join("dangling.log"))
        .unwrap();
    append(&good, b"ok\n");
    append(&becomes_dir, b"file for now\n");
    let h = Harness::start(
        vec![config("a", &glob(dir.path(), "*.log"), Format::Raw)],
        options(true),
        Arc::new(MemStore::default()),
    );
    h.wait("both files", |r| {
        r.only(&good).is_some_and(|(_, s)| s.bytes == b"ok\n")
            && r.only(&becomes_dir)
                .is_some_and(|(_, s)| s.bytes == b"file for now\n")
    });
    std::fs::remove_file(&becomes_dir).unwrap();
    std::fs::create_dir(&becomes_dir).unwrap();
    append(&good, b"still read\n");
    h.wait("flip ended, good still read", |r| {
        r.only(&becomes_dir)
            .is_some_and(|(_, s)| s.ended == Some(EndReason::Deleted))
            && r.only(&good)
                .is_some_and(|(_, s)| s.bytes == b"ok\nstill read\n")
    });
    h.with(|r| assert_eq!(r.sources.len(), 2));
    h.stop();
}

/// Tests run as root, where `chmod 000` denies nothing; the classification that the
/// open path uses for EACCES/EPERM (and the other bounded reasons) is checked here.
#[test]
fn open_errors_map_to_bounded_reasons() {
    use tracker::error_reason;
    let reason = |errno| error_reason(&std::io::Error::from_raw_os_error(errno));
    assert_eq!(reason(libc::EACCES), "permission_denied");
    assert_eq!(reason(libc::EPERM), "permission_denied");
    assert_eq!(reason(libc::ENOENT), "vanished");
    assert_eq!(reason(libc::EISDIR), "is_directory");
    assert_eq!(reason(libc::EMFILE), "too_many_open_files");
    assert_eq!(reason(libc::EIO), "io_error");
    assert_eq!(reason(libc::EINVAL), "other");
}

#[test]
fn first_matching_config_wins_and_symlinks_are_followed() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("pods");
    std::fs::create_dir(&real).unwrap();
    let links = dir.path().join("containers");
    std::fs::create_dir(&links).unwrap();
    append(&real.join("0.log"), b"cri\n");
    std::os::unix::fs::symlink(real.join("0.log"), links.join("c.log")).unwrap();
    let h = Harness::start(
        vec![
            config("links", &glob(&links, "*.log"), Format::Cri),
            config("all", &glob(dir.path(), "**/*.log"), Format::Raw),
        ],
        options(false),
        Arc::new(MemStore::default()),
    );
    h.wait("read once", |r| {
        r.sources.len() == 1 && r.sources.values().all(|s| s.bytes == b"cri\n")
    });
    append(&real.join("0.log"), b"more\n");
    h.wait("growth seen through the link", |r| {
        r.sources.values().all(|s| s.bytes == b"cri\nmore\n")
    });
    h.with(|r| {
        assert_eq!(r.sources.len(), 1, "one file, read once");
        let s = r.sources.values().next().unwrap();
        // Walk order decides which path is seen first; the config is the first that
        // matches that path.
        let expected = if s.path.starts_with(&links) { 0 } else { 1 };
        assert_eq!(s.config, expected);
    });
    h.stop();
}

#[test]
fn new_subdirectories_are_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(
        vec![config("a", &glob(dir.path(), "**/*.log"), Format::Raw)],
        options(true),
        Arc::new(MemStore::default()),
    );
    h.wait("running", |r| r.ticks >= 1);
    let pod = dir.path().join("ns_pod_uid/container");
    std::fs::create_dir_all(&pod).unwrap();
    append(&pod.join("0.log"), b"hello from a new pod\n");
    h.wait("new pod file", |r| {
        r.only(&pod.join("0.log"))
            .is_some_and(|(_, s)| s.bytes == b"hello from a new pod\n")
    });
    h.stop();
}

/// A small file (fingerprint under 256 bytes) rewritten in place with more than a
/// round's worth of new bytes: the rewrite is caught while the round refreshes sizes,
/// and the new source must be read exactly once from 0, never twice in one batch.
#[test]
fn small_file_rewritten_in_place_with_a_long_body_is_read_once() {
    for io_uring in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        append(&path, b"aaaa\n");
        let h = Harness::start(
            vec![config("a", &glob(dir.path(), "*.log"), Format::Raw)],
            options(io_uring),
            Arc::new(MemStore::default()),
        );
        h.wait("first", |r| {
            r.only(&path).is_some_and(|(_, s)| s.bytes == b"aaaa\n")
        });
        h.pause();
        // More than CHUNKS_PER_ROUND reads of 4096 bytes.
        let body: Vec<u8> = (0..40_000u32).map(|i| b'b' + (i % 20) as u8).collect();
        std::fs::write(&path, &body).unwrap();
        h.resume();
        // A writer keeps appending while the new source is read.
        let mut expected = body.clone();
        for i in 0..20 {
            let more = format!("more {i}\n");
            append(&path, more.as_bytes());
            expected.extend_from_slice(more.as_bytes());
            std::thread::sleep(Duration::from_millis(2));
        }
        h.wait("rewritten file read from 0", |r| {
            let all = r.at(&path);
            all.len() == 2 && all[1].1.bytes == expected
        });
        h.with(|r| {
            let all = r.at(&path);
            assert_eq!(all[0].1.ended, Some(EndReason::Truncated));
            assert_eq!(all[1].1.start, 0);
        });
        h.stop();
    }
}

/// A file rotated away while it still waits for its predecessor to be drained (a
/// reader held up by a slow sink, rotations coming fast): it was only known by its
/// path, so once renamed to a name the globs do not match, it was never read.
#[test]
fn file_rotated_twice_before_its_predecessor_is_drained_is_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, b"a first\n");
    let h = Harness::start(
        vec![config("a", &glob(dir.path(), "*.log"), Format::Raw)],
        options(false),
        Arc::new(MemStore::default()),
    );
    h.wait("first", |r| {
        r.only(&path).is_some_and(|(_, s)| s.bytes == b"a first\n")
    });
    // A backlog of many chunks in the first generation; the reader is held up.
    h.allow_data(Some(0));
    let backlog: Vec<u8> = (0..400_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    append(&path, &backlog);
    h.wait("reader held up", |r| r.parked);
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    append(&path, b"b only line\n");
    // Two rounds of reads: the second generation is seen (and must wait for the
    // first to be drained), then the reader is held up again.
    h.allow_data(Some(8));
    h.wait("reader held up again", |r| {
        r.parked && r.data_budget == Some(0)
    });
    std::fs::rename(&path, dir.path().join("app.log.2")).unwrap();
    append(&path, b"c only line\n");
    h.allow_data(None);
    h.wait("three generations read", |r| {
        let all = r.at(&path);
        all.len() == 3 && all[2].1.bytes == b"c only line\n"
    });
    h.with(|r| {
        let all = r.at(&path);
        let mut first = b"a first\n".to_vec();
        first.extend_from_slice(&backlog);
        assert_eq!(all[0].1.bytes, first);
        assert_eq!(all[1].1.bytes, b"b only line\n");
        assert_eq!(all[1].1.predecessor, Some(all[0].0));
        assert_eq!(all[2].1.predecessor, Some(all[1].0));
    });
    h.stop();
}

/// A file created and rotated away before the source looked at its path (a burst of
/// writes and a rotation inside one inotify batch): the directory's rename event pair
/// says where it went, and it is read there, before the file that took its path.
#[test]
fn a_file_renamed_away_before_it_was_opened_is_followed_by_its_rename() {
    for io_uring in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.log");
        let path = dir.path().join("app.log");
        append(&other, b"watched directory\n");
        let h = Harness::start(
            vec![config("a", &glob(dir.path(), "*.log"), Format::Raw)],
            options(io_uring),
            Arc::new(MemStore::default()),
        );
        h.wait("directory watched", |r| r.only(&other).is_some());
        h.pause();
        append(&path, b"born and rotated\n");
        std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
        append(&path, b"its successor\n");
        h.resume();
        h.wait("both generations read", |r| {
            let all = r.at(&path);
            all.len() == 2 && all[1].1.bytes == b"its successor\n"
        });
        h.with(|r| {
            let all = r.at(&path);
            assert_eq!(all[0].1.bytes, b"born and rotated\n");
            assert_eq!(all[1].1.predecessor, Some(all[0].0), "read in order");
            assert_eq!(all[1].1.predecessor_bytes_at_open, Some(17));
        });
        // Renamed to a name the glob matches, it is a file of its own there.
        let fresh = dir.path().join("fresh.log");
        h.pause();
        append(&fresh, b"fresh\n");
        std::fs::rename(&fresh, dir.path().join("moved.log")).unwrap();
        h.resume();
        h.wait("the renamed file read under its new name", |r| {
            r.only(&dir.path().join("moved.log"))
                .is_some_and(|(_, s)| s.bytes == b"fresh\n")
        });
        assert!(h.with(|r| r.at(&fresh).is_empty()));
        h.stop();
    }
}

/// Capture ships the containers it claims: their CRI logs (and rotations) are never
/// read here; a log born after capture started and not claimed is read once
/// `claim_wait` passed, from its first byte; older logs are read at once.
#[test]
fn claimed_cri_logs_are_left_to_capture_and_unclaimed_ones_are_read_after_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.log");
    append(&old, b"before capture\n");
    // Birth times are compared with the moment the claims were made.
    std::thread::sleep(Duration::from_millis(20));
    let claims = Arc::new(crate::source::claims::Claims::new(
        0,
        Duration::from_millis(400),
    ));
    let claimed = dir.path().join("claimed.log");
    claims.claim(&claimed);
    let mut opts = options(false);
    opts.claims = Some(claims.clone());
    let h = Harness::start(
        vec![config("pods", &glob(dir.path(), "*.log*"), Format::Cri)],
        opts,
        Arc::new(MemStore::default()),
    );
    h.wait("the pre-capture log read", |r| {
        r.only(&old)
            .is_some_and(|(_, s)| s.bytes == b"before capture\n")
    });
    append(&claimed, b"captured elsewhere\n");
    let unclaimed = dir.path().join("new.log");
    // No pause here: a file born within a tick of the claims carries a time from the
    // kernel's coarse clock, up to a tick before them (this test used to get here in
    // 5 ms and see the log read at once); `Claims::decide` allows for that.
    // Before the file is born: a test thread descheduled right after the append (a
    // loaded machine) must not shorten the measured wait.
    let started = Instant::now();
    append(&unclaimed, b"first line\n");
    h.wait("the unclaimed new log read after the wait", |r| {
        r.only(&unclaimed)
            .is_some_and(|(_, s)| s.bytes == b"first line\n")
    });
    let waited = started.elapsed();
    // Birth times exist on the file systems tests run on (ext4, tmpfs, overlayfs).
    assert!(
        waited >= Duration::from_millis(300),
        "read after {waited:?}: the claim wait was not honoured"
    );
    std::fs::rename(&claimed, dir.path().join("claimed.log.20261121")).unwrap();
    append(&claimed, b"reopened\n");
    std::thread::sleep(Duration::from_millis(600));
    h.with(|r| {
        assert!(r.at(&claimed).is_empty(), "a claimed log was read");
        assert!(
            r.at(&dir.path().join("claimed.log.20261121")).is_empty(),
            "a rotation of a claimed log was read"
        );
    });
    h.stop();
}

/// A claimed CRI log is capture's only for capture's own config: every other config
/// that reads it (a `LogCollection`'s stdout source) still reads it from the file,
/// rotations included, while capture's config never does. A log undecided for
/// capture waits for all of its configs.
#[test]
fn a_claimed_cri_log_is_still_read_for_the_other_configs_that_select_it() {
    let dir = tempfile::tempdir().unwrap();
    let claims = Arc::new(crate::source::claims::Claims::new(
        0,
        Duration::from_millis(400),
    ));
    let claimed = dir.path().join("claimed.log");
    claims.claim(&claimed);
    let mut opts = options(false);
    opts.claims = Some(claims.clone());
    let pattern = glob(dir.path(), "*.log*");
    let h = Harness::start(
        vec![
            config("pods", &pattern, Format::Cri),
            config("shop/web/out", &pattern, Format::Cri),
        ],
        opts,
        Arc::new(MemStore::default()),
    );
    append(&claimed, b"captured, and collected\n");
    h.wait("the claimed log read for the collection", |r| {
        r.only(&claimed)
            .is_some_and(|(_, s)| s.bytes == b"captured, and collected\n")
    });
    h.with(|r| {
        let (_, rec) = r.only(&claimed).unwrap();
        assert_eq!(rec.configs, [1], "only the collection reads a claimed log");
    });
    let rotated = dir.path().join("claimed.log.20261121");
    std::fs::rename(&claimed, &rotated).unwrap();
    append(&claimed, b"after the rotation\n");
    h.wait("the new log read for the collection", |r| {
        r.at(&claimed)
            .iter()
            .any(|(_, s)| s.bytes == b"after the rotation\n")
    });
    h.with(|r| {
        for (_, rec) in r.at(&claimed).iter().chain(r.at(&rotated).iter()) {
            assert_eq!(rec.configs, [1], "capture's config read a claimed log");
        }
    });
    h.stop();
}

/// Container facts by log path, settable while the source runs.
#[derive(Default)]
struct FactsMap(Mutex<HashMap<PathBuf, crate::select::ContainerFacts>>);

impl crate::select::ContainerFactsSource for FactsMap {
    fn facts(&self, path: &Path) -> crate::select::Facts {
        use crate::select::Facts;
        match self.0.lock().unwrap().get(path) {
            Some(f) => Facts::Known(f.clone()),
            None if crate::discovery::PodLogRef::from_path(path).is_some() => Facts::Pending,
            None => Facts::NotContainer,
        }
    }
}

fn selected(name: &str, dir: &Path, selector: &str) -> SourceConfig {
    let selector: crate::config::crd::Selector = yaml_serde::from_str(selector).unwrap();
    SourceConfig {
        selector: Some(Arc::new(selector.compile().unwrap())),
        ..config(name, &glob(dir, "*/*/*.log"), Format::Cri)
    }
}

/// A one-shot run with a selector source and no container facts yet (a runtime not
/// reachable): it waits for them up to `facts_wait`, then decides on the path, and
/// reads the log before it ends — it must not end with the log still undecided.
#[test]
fn a_oneshot_run_waits_for_undecided_container_logs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir
        .path()
        .join("shop_web_0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/app");
    std::fs::create_dir_all(&d).unwrap();
    let log = d.join("0.log");
    append(&log, b"2024-01-01T00:00:00Z stdout F only line\n");
    let mut opts = options(false);
    opts.oneshot = true;
    opts.facts = Some(Arc::new(FactsMap::default()));
    opts.facts_wait = Duration::from_millis(300);
    let started = Instant::now();
    let shared = run_to_the_end(
        &[selected(
            "pods",
            dir.path(),
            "{exclude_env: {'logtap_logs_*': ''}}",
        )],
        opts,
    );
    let r = shared.rec.lock().unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let (_, s) = r.only(&log).expect("the log was read");
    assert_eq!(s.bytes, std::fs::read(&log).unwrap());
    assert_eq!(s.ended, Some(EndReason::Eof));
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
}

/// Selector sources: a container goes to every config that selects it, an excluded
/// one to none, an unknown one waits for its facts (bounded), then is decided on
/// what its path tells.
#[test]
fn selectors_route_each_container_to_every_config_selecting_it() {
    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    let dir = tempfile::tempdir().unwrap();
    let log = |pod: &str| {
        let d = dir.path().join(format!("shop_{pod}_{UID}/app"));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("0.log");
        append(
            &p,
            format!("2024-01-01T00:00:00Z stdout F {pod}\n").as_bytes(),
        );
        p
    };
    let facts = Arc::new(FactsMap::default());
    let known = |path: &Path, env: &[(&str, &str)], labels: &[(&str, &str)]| {
        let mut f = crate::select::path_facts(path).unwrap();
        f.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        f.pod_labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        facts.0.lock().unwrap().insert(path.to_path_buf(), f);
    };
    let cart = log("cart");
    known(&cart, &[("LOG_FORMAT", "json")], &[]);
    let noisy = log("noisy");
    known(&noisy, &[("LOG_FORMAT", "json")], &[("team", "noisy")]);
    let late = log("late");
    let never = log("never");
    let h = Harness::start(
        vec![
            selected(
                "json",
                dir.path(),
                "{include_env: {LOG_FORMAT: json}, exclude_labels: {team: noisy}}",
            ),
            selected("all", dir.path(), "{exclude_labels: {team: noisy}}"),
        ],
        FileSourceOptions {
            facts: Some(facts.clone()),
            facts_wait: Duration::from_millis(300),
            ..options(false)
        },
        Arc::new(MemStore::default()),
    );
    h.wait("cart read by both configs", |r| {
        r.only(&cart)
            .is_some_and(|(_, s)| s.configs == [0, 1] && !s.bytes.is_empty())
    });
    std::thread::sleep(Duration::from_millis(100));
    h.with(|r| {
        assert!(r.only(&late).is_none(), "its container is not known yet");
        assert!(r.only(&never).is_none(), "its container is not known yet");
    });
    known(&late, &[("LOG_FORMAT", "text")], &[]);
    h.wait("late read once known", |r| {
        r.only(&late).is_some_and(|(_, s)| s.configs == [1])
    });
    // Never known: decided on the path after facts_wait, where no env matches.
    h.wait("never decided on its path", |r| {
        r.only(&never).is_some_and(|(_, s)| s.configs == [1])
    });
    std::thread::sleep(Duration::from_millis(150));
    h.with(|r| assert!(r.only(&noisy).is_none(), "excluded by every config"));
    h.stop();
}

/// The containers a test says run: a child process stands for each container (its
/// `/proc/<pid>/root` is this process's root, so paths inside it are plain paths).
#[derive(Default)]
struct FakeContainers(Mutex<Vec<container::ContainerView>>);

impl container::ContainerList for FakeContainers {
    fn containers(&self) -> Vec<container::ContainerView> {
        self.0.lock().unwrap().clone()
    }
}

fn container_view(pod: &str, name: &str, pid: u32) -> container::ContainerView {
    let log = crate::discovery::PodLogRef {
        namespace: "shop".into(),
        pod: pod.into(),
        pod_uid: format!("uid-{pod}"),
        container: name.into(),
        restart: 0,
    };
    container::ContainerView {
        id: format!("id-{pod}-{pid}"),
        pid: Some(pid),
        facts: crate::select::ContainerFacts {
            namespace: log.namespace.clone(),
            pod_name: log.pod.clone(),
            container_name: log.container.clone(),
            ..Default::default()
        },
        pod: log,
    }
}

fn sleeper() -> std::process::Child {
    std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep")
}

/// `container_paths`: only containers the selector selects are read, a container
/// that starts is picked up, one that stops is drained and ended, and its restart
/// (another pid, the same file) resumes the same source where it stopped, under the
/// same logical path.
#[test]
fn container_files_follow_their_containers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    append(&path, b"one\n");
    let logical = PathBuf::from(format!("container://shop/cart/app{}", path.display()));
    let other_logical = PathBuf::from(format!("container://shop/db/app{}", path.display()));
    let selector: crate::config::crd::Selector =
        yaml_serde::from_str("{pod_name: '^cart$'}").unwrap();
    let source = SourceConfig {
        container_paths: glob(dir.path(), "*.log"),
        selector: Some(Arc::new(selector.compile().unwrap())),
        ..config("files", &[], Format::Raw)
    };
    let mut db = sleeper();
    let list = Arc::new(FakeContainers::default());
    list.0
        .lock()
        .unwrap()
        .push(container_view("db", "app", db.id()));
    let h = Harness::start(
        vec![source],
        FileSourceOptions {
            containers: Some(list.clone()),
            ..options(false)
        },
        Arc::new(MemStore::default()),
    );
    std::thread::sleep(Duration::from_millis(300));
    h.with(|r| assert!(r.order.is_empty(), "db is not selected: {:?}", r.order));

    let mut cart = sleeper();
    list.0
        .lock()
        .unwrap()
        .push(container_view("cart", "app", cart.id()));
    h.wait("cart's file read under its logical path", |r| {
        r.only(&logical).is_some_and(|(_, s)| s.bytes == b"one\n")
    });
    let id = h.with(|r| r.only(&logical).unwrap().0);
    append(&path, b"two\n");
    h.wait("appended bytes", |r| {
        r.only(&logical)
            .is_some_and(|(_, s)| s.bytes == b"one\ntwo\n")
    });

    // The container stops: its process is gone, then the runtime says so.
    cart.kill().unwrap();
    cart.wait().unwrap();
    list.0.lock().unwrap().retain(|c| c.pod.pod != "cart");
    h.wait("cart's file ended once drained", |r| {
        r.only(&logical)
            .is_some_and(|(_, s)| s.ended == Some(EndReason::Rotated))
    });
    // Known but stopped (CRI lists exited containers): its file waits for it.
    let mut stopped = container_view("cart", "app", 0);
    stopped.pid = None;
    list.0.lock().unwrap().push(stopped);
    append(&path, b"three\n");

    // Restarted: another pid, the same file in the same volume.
    let mut restarted = sleeper();
    list.0
        .lock()
        .unwrap()
        .push(container_view("cart", "app", restarted.id()));
    h.wait("the restart resumes the same source", |r| {
        r.only(&logical).is_some_and(|(sid, s)| {
            sid == id && s.ended.is_none() && s.opens == 2 && s.bytes == b"one\ntwo\nthree\n"
        })
    });
    h.with(|r| assert!(r.at(&other_logical).is_empty()));
    h.stop();
    for child in [&mut db, &mut restarted] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

mod model;

//! The loader of the eBPF probes: load, attach, feed the watched cgroups, read the ring.
//!
//! # Threads
//!
//! Blocking: [`Probes::poll`] waits in `epoll_wait(2)` on the ring buffer's fd and on
//! aya-log's fd, then hands every available record to a callback that borrows it in place
//! (no copy, no allocation per record; the ring is read in bulk by `ring`). One thread
//! owns a `Probes`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, Map, MapData, MapError, MapType, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{FExit, RawTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use logtap_ebpf_common::{
    BASES_MAP, CONFIG_GLOBAL, DROP_CONCURRENT, DROP_FAULT, DROP_RING_FULL, DROP_TOO_LARGE,
    DataHeader, GROUP_DEAD_UNKNOWN, INO_FILTER_MAP, KIND_CGROUP_CREATED, KIND_CGROUP_REMOVED,
    KIND_DATA, KIND_EXEC, KIND_EXIT, KIND_STREAM_BOUND, LifecycleRecord, MAX_RECORDS_LIMIT,
    NUM_DROP_REASONS, NUM_STATS, ORIGIN_RUNNING, PATH_CAPACITY, PREFIX_CAPACITY, ProbeConfig,
    RING_MAP, STAT_BYTES, STAT_DROPPED_BYTES, STAT_DROPPED_RECORDS, STAT_LOST_EVENTS, STAT_RECORDS,
    STAT_SYSCALLS, STATS_MAP, STREAMS_MAP, StreamKey, StreamState, WATCHED_MAP, WatchedCgroup,
    ino_slot,
};

use super::ring::RingReader;
use super::stream_keys::StreamKeys;
use super::{btf, pin, tracefs};
use crate::config::CaptureHooks;
use crate::frame::Stream;
use crate::metrics::catalogue::{
    CAPTURE_HOOK_MODE, CAPTURE_KERNEL_BYTES_TOTAL, CAPTURE_KERNEL_RECORDS_TOTAL,
    CAPTURE_LOST_EVENTS_TOTAL, CAPTURE_PIN_STARTS_TOTAL, CAPTURE_PIN_WAIT_SECONDS,
    CAPTURE_PROBE_LOAD_SECONDS, CAPTURE_RING_DROPPED_BYTES_TOTAL,
    CAPTURE_RING_DROPPED_RECORDS_TOTAL,
};

/// The probes' object, built by `cargo xtask build-ebpf` and embedded by `build.rs`.
#[cfg(logtap_ebpf_obj)]
pub(super) static OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/logtap-probes.bpf.o"
)));
#[cfg(not(logtap_ebpf_obj))]
pub(super) static OBJECT: Option<&[u8]> = None;

/// The lifecycle programs and the tracepoints they attach to. These tracepoints fire
/// only at cgroup creation and removal, exec and exit: they cost the rest of the node
/// nothing.
const LIFECYCLE_PROGRAMS: [(&str, &str, &str); 4] = [
    ("cgroup_mkdir", "cgroup", "cgroup_mkdir"),
    ("cgroup_rmdir", "cgroup", "cgroup_rmdir"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
];

/// The write path on BPF trampolines: programs and the kernel functions whose exit they
/// hook (both in the kernel's BTF on 5.5+; `vfs_writev` is static, so a kernel may
/// inline it away, and then the tracepoints are used).
const TRAMPOLINE_PROGRAMS: [(&str, &str); 2] = [
    ("vfs_write_exit", "vfs_write"),
    ("vfs_writev_exit", "vfs_writev"),
];

/// The write path on the raw syscall exit tracepoint (program, tracepoint): at every
/// syscall's exit (its arguments are still in the task's saved registers).
const RAW_TRACEPOINT_PROGRAM: (&str, &str) = ("raw_sys_exit", "sys_exit");

/// The write path for kernels 5.8–5.14 on the same tracepoint (see [`HookMode::Compat`]).
const COMPAT_PROGRAM: (&str, &str) = ("compat_sys_exit", "sys_exit");

/// The programs the compat hooks load: everything that must load on a 5.8 kernel
/// (checked instruction by instruction in `kernel58`).
#[cfg(test)]
pub(crate) fn compat_programs() -> Vec<&'static str> {
    let mut programs: Vec<&str> = LIFECYCLE_PROGRAMS.iter().map(|(n, _, _)| *n).collect();
    programs.push(COMPAT_PROGRAM.0);
    programs
}

const BPF_NOEXIST: u64 = 1;
const EPOLL_RING: u64 = 0;
const EPOLL_LOG: u64 = 1;
/// Kernel counters are copied into metrics at most this often.
const STATS_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes of ring one poll reads at most (a quarter of the default 16 MiB ring). What
/// a poll reads is gathered in memory until the stage has handled the poll, so
/// without a bound writers refilling the ring as fast as it is read kept one poll
/// going with every record held (242 MiB of live heap at 200 writers × 500 kB/s,
/// `docs/benchmarks.md`). What is left waits in the ring for the next poll, which
/// reads at once; the stage drains the ring between its repair steps too, so the
/// ring is not starved by them (see `capture::schedule`).
pub(crate) const POLL_BYTES: usize = 4 << 20;

pub struct ProbeOptions {
    /// Which hooks the write path uses. Default: trampolines where the kernel has them.
    pub hooks: CaptureHooks,
    /// Ring buffer size in bytes (power of two, ≥ page size). Default 16 MiB.
    pub ring_bytes: u32,
    /// cgroup v2 path prefix (relative to the cgroup2 root, starting with '/') under which
    /// new cgroups are watched from creation, e.g. "/kubepods".
    pub cgroup_prefix: String,
    /// Records per write syscall (1..=16); bytes beyond records × 4 KiB are a counted gap.
    pub max_records_per_write: u32,
    /// Whether the probes outlive this process (pinned in bpffs). Default: not pinned,
    /// nothing looked at.
    pub pinning: Pinning,
    /// With [`Pinning::Keep`], how long to wait for a pin directory another agent
    /// holds. Default: not at all.
    pub pin_wait: PinWait,
}

/// How a load with [`Pinning::Keep`] waits for a pin directory another agent holds
/// (a rollout with `maxSurge`, a restart racing its predecessor's shutdown): it takes
/// the probes over once that agent stopped; after `limit`, it loads unpinned
/// probes beside them (`logtap_capture_pin_starts_total{result="locked"}`).
#[derive(Clone, Debug, Default)]
pub struct PinWait {
    pub limit: Duration,
    /// Set (SIGTERM): the wait ends, the load fails with [`ProbeError::Stopped`].
    pub stop: Option<Arc<AtomicBool>>,
    /// Called once when the wait begins.
    pub on_wait: Option<fn()>,
}

/// What the loader does with the pin directory (see `pin`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Pinning {
    /// Nothing pinned, the directory not looked at (benchmarks, probe tests).
    #[default]
    Off,
    /// Pins left in this directory by an earlier agent are removed, nothing is pinned
    /// (`capture.pin: false`).
    Remove(PathBuf),
    /// The probes are kept pinned in this directory, and reused from it when an
    /// earlier agent left them there with the same layout.
    Keep(PathBuf),
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            hooks: CaptureHooks::Auto,
            ring_bytes: 16 << 20,
            cgroup_prefix: "/kubepods".to_owned(),
            max_records_per_write: MAX_RECORDS_LIMIT,
            pinning: Pinning::Off,
            pin_wait: PinWait::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("eBPF object missing: run `cargo xtask build-ebpf`, then rebuild the agent")]
    ObjectMissing,
    #[error("invalid probe options: {0}")]
    Options(String),
    #[error("tracefs: {0}")]
    Tracefs(String),
    #[error("kernel BTF: {0}")]
    Btf(String),
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("stopped while waiting for another agent's pinned probes")]
    Stopped,
    #[error("pinning in {dir}: {detail}")]
    Pin { dir: PathBuf, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> ProbeError {
    move |source| ProbeError::Map {
        name,
        source: Box::new(source),
    }
}

/// The hooks the write path runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookMode {
    /// BPF trampolines (`fexit` on `vfs_write`, `vfs_writev`): a task pays only when it
    /// writes, a trampoline call and one array load unless the file is a stream.
    Fentry,
    /// The raw syscall exit tracepoint (`raw_syscalls:sys_exit`): every syscall of
    /// every task on the node takes the slow path while it is attached, and runs a
    /// few instructions of the program.
    Tracepoint,
    /// The same tracepoint with the program for kernels 5.8–5.14 (`compat_sys_exit`):
    /// no helper or instruction newer than 5.8, so a few more probe reads per write,
    /// and a write whose offset is not certain (another write to its stream returned
    /// at the same instant) is a hole repaired from the CRI log
    /// ([`DropReason::Concurrent`]).
    Compat,
}

impl HookMode {
    pub const ALL: [HookMode; 3] = [HookMode::Fentry, HookMode::Tracepoint, HookMode::Compat];

    pub fn as_str(self) -> &'static str {
        match self {
            HookMode::Fentry => "fentry",
            HookMode::Tracepoint => "tracepoint",
            HookMode::Compat => "compat",
        }
    }
}

/// Why stream bytes were not captured (the stream offset still advanced past them).
/// `as usize` is the probes' `DROP_*` index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The ring buffer had no room (userspace too slow, or the ring too small).
    RingFull,
    /// Beyond `max_records_per_write` × 4 KiB, or beyond 16 iovecs, of one syscall.
    TooLarge,
    /// The writer's buffer could not be read (not resident, bad pointer).
    Fault,
    /// On the compat hooks (kernels before 5.12), another write to the same stream
    /// returned at the same instant on another CPU, so the offset of these bytes was
    /// not certain: they are a hole, repaired from the CRI log.
    Concurrent,
}

const _: () = assert!(
    DropReason::RingFull as usize == DROP_RING_FULL
        && DropReason::TooLarge as usize == DROP_TOO_LARGE
        && DropReason::Fault as usize == DROP_FAULT
        && DropReason::Concurrent as usize == DROP_CONCURRENT
);

impl DropReason {
    pub const ALL: [DropReason; NUM_DROP_REASONS] = [
        DropReason::RingFull,
        DropReason::TooLarge,
        DropReason::Fault,
        DropReason::Concurrent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::RingFull => "ring_full",
            DropReason::TooLarge => "too_large",
            DropReason::Fault => "fault",
            DropReason::Concurrent => "concurrent",
        }
    }
}

/// Sums of the per-CPU kernel counters since the probes were loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Data records sent.
    pub records: u64,
    /// Payload bytes sent.
    pub bytes: u64,
    /// Indexed by `DropReason as usize`.
    pub dropped_records: [u64; NUM_DROP_REASONS],
    /// Indexed by `DropReason as usize`.
    pub dropped_bytes: [u64; NUM_DROP_REASONS],
    /// write/writev syscalls on registered streams.
    pub syscalls: u64,
    /// Lifecycle records (stream bound, cgroup created/removed, exec, exit) lost to a full
    /// ring. The periodic rescan is what recovers from those.
    pub lost_events: u64,
}

/// One record from the kernel, borrowed from the ring buffer.
#[derive(Debug)]
pub enum ProbeEvent<'a> {
    /// `bytes` are the stream bytes at `offset..offset+bytes.len()` of (cgroup_id, stream).
    Data {
        cgroup_id: u64,
        stream: Stream,
        offset: u64,
        bytes: &'a [u8],
        ktime_ns: u64,
        tgid: u32,
    },
    StreamBound {
        cgroup_id: u64,
        stream: Stream,
        inode: u64,
    },
    CgroupCreated {
        cgroup_id: u64,
        path: &'a [u8],
    },
    CgroupRemoved {
        cgroup_id: u64,
        path: &'a [u8],
    },
    Exec {
        cgroup_id: u64,
        tgid: u32,
        filename: &'a [u8],
    },
    Exit {
        cgroup_id: u64,
        tgid: u32,
        /// Whether the last thread of the process exited; `None` where the kernel's
        /// tracepoint does not say (5.10).
        group_dead: Option<bool>,
    },
}

/// The loaded and attached probes. Dropping it detaches them, unless they are pinned
/// (see `pin`): then they keep capturing into the pinned ring until the next agent
/// takes them over, or until their pins are removed.
pub struct Probes {
    ring: RingReader,
    /// The ring's map: its fd is polled, and keeps the map alive.
    _ring_map: MapData,
    watched: HashMap<MapData, u64, WatchedCgroup>,
    streams: HashMap<MapData, StreamKey, StreamState>,
    ino_filter: Array<MapData, u32>,
    stats: PerCpuArray<MapData, [u64; NUM_STATS]>,
    /// See `BASES_MAP`. Invariant: every key is a key of `streams` of origin
    /// `ORIGIN_RUNNING` (removed with it in [`Self::forget`]).
    bases: HashMap<MapData, StreamKey, u64>,
    /// `streams`' keys by cgroup, so that a cgroup's streams are looked up rather
    /// than found by walking the map (see `stream_keys`).
    keys: StreamKeys,
    hook_mode: HookMode,
    /// Taken over from pins an earlier agent left (nothing was loaded or attached).
    reused: bool,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    epoll: OwnedFd,
    stats_exported: Option<Instant>,
    // Last: the programs stay attached as long as the maps above are in use. Unpinned
    // links detach when dropped; pinned ones stay attached.
    _links: Vec<FdLink>,
    /// `None` when reused from pins.
    ebpf: Option<Ebpf>,
    /// The lock on the pin directory, held as long as the probes are in use (or
    /// longer: [`Self::take_pin_lock`]).
    pin_lock: Option<OwnedFd>,
}

/// The maps userspace reads, the links of the attached programs, and their hooks.
struct Loaded {
    ebpf: Option<Ebpf>,
    pin_lock: Option<OwnedFd>,
    maps: [MapData; 6],
    links: Vec<FdLink>,
    hook_mode: HookMode,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
}

impl Probes {
    /// Loads the probes and attaches them, or takes over those an earlier agent left
    /// pinned with the same layout (`options.pinning`); sets
    /// `logtap_capture_probe_load_seconds`.
    pub fn load(options: &ProbeOptions) -> Result<Probes, ProbeError> {
        let started = Instant::now();
        let object = OBJECT.ok_or(ProbeError::ObjectMissing)?;
        let config = probe_config(options)?;
        raise_memlock_limit();

        let loaded = match &options.pinning {
            Pinning::Off => load_fresh(object, &config, options, None)?,
            Pinning::Remove(dir) if dir.exists() => {
                match pin::lock(dir).and_then(|_lock| pin::remove_all(dir)) {
                    Ok(removed) if !removed.is_empty() => {
                        count_pin_start("removed");
                        tracing::info!(dir = %dir.display(), "capture.pin is off: the probes pinned by an earlier agent were removed");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "removing the probes pinned by an earlier agent (is another agent using them?): they may still capture beside these")
                    }
                }
                load_fresh(object, &config, options, None)?
            }
            Pinning::Remove(_) => load_fresh(object, &config, options, None)?,
            Pinning::Keep(dir) => load_pinned(object, &config, options, dir)?,
        };
        let reused = loaded.ebpf.is_none();
        let hook_mode = loaded.hook_mode;
        for mode in HookMode::ALL {
            metrics::gauge!(CAPTURE_HOOK_MODE, "mode" => mode.as_str()).set(if mode == hook_mode {
                1.0
            } else {
                0.0
            });
        }
        let [ring, watched, streams, ino_filter, stats, bases] = loaded.maps;
        let ring_map = ring;
        let ring = ring_reader(&ring_map)?;
        let watched = HashMap::try_from(Map::HashMap(watched)).map_err(map_error(WATCHED_MAP))?;
        let streams = HashMap::try_from(Map::HashMap(streams)).map_err(map_error(STREAMS_MAP))?;
        let ino_filter =
            Array::try_from(Map::Array(ino_filter)).map_err(map_error(INO_FILTER_MAP))?;
        let stats = PerCpuArray::try_from(Map::PerCpuArray(stats)).map_err(map_error(STATS_MAP))?;
        let bases = HashMap::try_from(Map::HashMap(bases)).map_err(map_error(BASES_MAP))?;

        let epoll = epoll_create()?;
        // Edge-triggered: a wait ends on the probes' wakeups (a quarter of the ring
        // waiting, a lifecycle record) or the timeout, not whenever one record is in
        // the ring. Level-triggered, a ring once woken stays ready while a writer keeps
        // adding to it, and every wait returned at once with the few records written
        // since the last drain: with a 256 KiB ring at 100 MB/s, 70 times as many
        // polls as with 16 MiB (105 000 against 1 500 in one run), each with its
        // context switch and per-poll work (`docs/capture.md`, the small ring's cost).
        epoll_add(
            &epoll,
            ring_map.fd().as_fd().as_raw_fd(),
            EPOLL_RING,
            libc::EPOLLIN | libc::EPOLLET,
        )?;
        if let Some(logger) = &loaded.logger {
            epoll_add(&epoll, logger.as_fd().as_raw_fd(), EPOLL_LOG, libc::EPOLLIN)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        metrics::gauge!(CAPTURE_PROBE_LOAD_SECONDS).set(seconds);
        tracing::info!(
            seconds,
            prefix = %options.cgroup_prefix,
            ring_bytes = options.ring_bytes,
            hooks = hook_mode.as_str(),
            reused,
            "eBPF capture probes attached"
        );
        Ok(Probes {
            ring,
            _ring_map: ring_map,
            watched,
            streams,
            ino_filter,
            stats,
            bases,
            keys: StreamKeys::default(),
            hook_mode,
            reused,
            logger: loaded.logger,
            epoll,
            stats_exported: None,
            _links: loaded.links,
            ebpf: loaded.ebpf,
            pin_lock: loaded.pin_lock,
        })
    }

    /// The lock on the pin directory (see `pin`), for a caller that holds it longer
    /// than the probes: the agent keeps it until its sinks are closed and its last
    /// checkpoints written, since the next agent waits for the lock before it reads
    /// them. `None` when unpinned, or taken already.
    pub fn take_pin_lock(&mut self) -> Option<OwnedFd> {
        self.pin_lock.take()
    }

    /// Whether these probes were taken over from an earlier agent's pins: their maps
    /// hold that agent's streams ([`Self::pinned_streams`]), and their ring what was
    /// written since it stopped reading.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// The streams the kernel has bound, with the offset of the next byte of each and,
    /// for a stream bound while its container ran, its base when it was found
    /// ([`Self::set_base`]).
    pub fn pinned_streams(&self) -> Result<Vec<(StreamKey, StreamState, Option<u64>)>, ProbeError> {
        let streams: Vec<(StreamKey, StreamState)> = self
            .streams
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_error(STREAMS_MAP))?;
        streams
            .into_iter()
            .map(|(key, state)| {
                let base = match self.bases.get(&key, 0) {
                    Ok(base) => Some(base),
                    Err(MapError::KeyNotFound) => None,
                    Err(e) => return Err(map_error(BASES_MAP)(e)),
                };
                Ok((key, state, base))
            })
            .collect()
    }

    /// Records where the kernel's offset 0 of a stream bound while its container ran
    /// is in the stream (its seam), so that an agent taking these probes over from
    /// their pins continues it there.
    pub fn set_base(
        &mut self,
        cgroup_id: u64,
        stream: Stream,
        base: u64,
    ) -> Result<(), ProbeError> {
        let fd = stream as u32;
        let key = self
            .streams_of(cgroup_id)?
            .into_iter()
            .find(|(_, state)| state.stream == fd)
            .map(|(key, _)| key);
        match key {
            Some(key) => self
                .bases
                .insert(key, base, 0)
                .map_err(map_error(BASES_MAP)),
            None => Ok(()),
        }
    }

    /// The cgroups the kernel watches.
    pub fn watched_cgroups(&self) -> Result<Vec<u64>, ProbeError> {
        self.watched
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_error(WATCHED_MAP))
    }

    /// The hooks the write path runs on.
    pub fn hook_mode(&self) -> HookMode {
        self.hook_mode
    }

    /// Each loaded program's runs and the time spent in it, as the kernel counts them
    /// while `kernel.bpf_stats_enabled` is 1 (off by default: it costs two clock reads
    /// per run). For benchmarks; empty for probes taken over from pins.
    pub fn program_runs(&self) -> Vec<(String, u64, Duration)> {
        let Some(ebpf) = &self.ebpf else {
            return Vec::new();
        };
        ebpf.programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some((name.to_owned(), info.run_count(), info.run_time()))
            })
            .collect()
    }

    /// Watch an existing cgroup (found by a scan at start-up) and bind its streams from
    /// the pipe inodes of /proc/<pid>/fd/1 and /fd/2 (pid = the container's first process).
    ///
    /// A stream that is not a pipe (a terminal, /dev/null) is not bound: only pipes are
    /// container log streams. A stream already bound keeps its offset.
    pub fn watch_existing(&mut self, cgroup_id: u64, pid: u32) -> Result<(), ProbeError> {
        for fd in [1u32, 2] {
            let path = format!("/proc/{pid}/fd/{fd}");
            let meta = std::fs::metadata(&path).map_err(|source| ProbeError::Io {
                context: format!("stat {path}"),
                source,
            })?;
            if !meta.file_type().is_fifo() {
                tracing::debug!(cgroup_id, pid, fd, "not a pipe: stream not bound");
                continue;
            }
            let key = StreamKey {
                ino: meta.ino(),
                dev: kernel_dev(meta.dev()),
            };
            let state = StreamState {
                cgroup_id,
                offset: 0,
                stream: fd,
                origin: ORIGIN_RUNNING,
            };
            // Before the stream exists: the write hooks look at the filter first.
            self.ino_filter
                .set(ino_slot(key.ino), 1, 0)
                .map_err(map_error(INO_FILTER_MAP))?;
            match self.streams.insert(key, state, BPF_NOEXIST) {
                Ok(()) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(map_error(STREAMS_MAP)(e)),
            }
            self.keys.bound(cgroup_id, key);
        }
        let watched = WatchedCgroup { bound: 1, _pad: 0 };
        self.watched
            .insert(cgroup_id, watched, 0)
            .map_err(map_error(WATCHED_MAP))
    }

    /// Forget a cgroup and its streams (after CgroupRemoved was handled). Returns the
    /// state each removed stream had when it was read, just before its removal: its
    /// `offset` is the stream's final one once no task is left in the cgroup (the
    /// kernel removes a cgroup only then, and a write's bytes are counted when it
    /// returns).
    pub fn forget(&mut self, cgroup_id: u64) -> Result<Vec<StreamState>, ProbeError> {
        match self.watched.remove(&cgroup_id) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(map_error(WATCHED_MAP)(e)),
        }
        self.remove_streams(cgroup_id, |_| true)
    }

    /// Forget one stream of a cgroup (one capture's source does not select): its writes
    /// then cost the kernel the stream lookup and are not copied into the ring. The
    /// cgroup stays watched, so its removal record still comes; a stream already
    /// forgotten is no error.
    pub fn forget_stream(&mut self, cgroup_id: u64, stream: Stream) -> Result<(), ProbeError> {
        let fd = stream as u32;
        self.remove_streams(cgroup_id, |state| state.stream == fd)
            .map(drop)
    }

    /// The streams the kernel's map holds for `cgroup_id`, with their states as read:
    /// looked up by the keys known for it, or found by a walk of the whole map when
    /// those may be incomplete (see `stream_keys`).
    fn streams_of(&mut self, cgroup_id: u64) -> Result<Vec<(StreamKey, StreamState)>, ProbeError> {
        // Read before the walk: a binding record lost during it counts as lost since.
        let lost_events = self.kernel_stats()?.lost_events;
        let known = self
            .keys
            .of(cgroup_id, lost_events)
            .map(<[StreamKey]>::to_vec);
        let Some(keys) = known else {
            let entries: Vec<(StreamKey, StreamState)> = self
                .streams
                .iter()
                .collect::<Result<_, _>>()
                .map_err(map_error(STREAMS_MAP))?;
            self.keys
                .walked(entries.iter().map(|(k, s)| (*k, s.cgroup_id)), lost_events);
            return Ok(entries
                .into_iter()
                .filter(|(_, state)| state.cgroup_id == cgroup_id)
                .collect());
        };
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            match self.streams.get(&key, 0) {
                Ok(state) if state.cgroup_id == cgroup_id => found.push((key, state)),
                // Gone, or its pipe's inode now another cgroup's stream.
                Ok(_) | Err(MapError::KeyNotFound) => self.keys.remove(cgroup_id, &key),
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
                {
                    self.keys.remove(cgroup_id, &key)
                }
                Err(e) => return Err(map_error(STREAMS_MAP)(e)),
            }
        }
        Ok(found)
    }

    /// Removes `cgroup_id`'s registered streams whose state `which` picks (their inode
    /// filter slots stay set: see `INO_FILTER_MAP`); returns their states as read.
    fn remove_streams(
        &mut self,
        cgroup_id: u64,
        which: impl Fn(&StreamState) -> bool,
    ) -> Result<Vec<StreamState>, ProbeError> {
        let mut picked = self.streams_of(cgroup_id)?;
        picked.retain(|(_, state)| which(state));
        for (key, _) in &picked {
            let key = *key;
            // The base first: a base is only ever of a stream in the map.
            match self.bases.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_error(BASES_MAP)(e)),
            }
            match self.streams.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_error(STREAMS_MAP)(e)),
            }
            self.keys.remove(cgroup_id, &key);
        }
        Ok(picked.into_iter().map(|(_, state)| state).collect())
    }

    /// Waits up to `timeout` for records, then hands the available ones to `on_event`,
    /// at most [`POLL_BYTES`] of ring. Returns how many records were handed over.
    pub fn poll(
        &mut self,
        timeout: Duration,
        on_event: &mut dyn FnMut(ProbeEvent<'_>),
    ) -> io::Result<usize> {
        let mut handed = self.drain(on_event);
        if handed == 0 {
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
            let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: a valid epoll fd and an array of the given length.
            let n =
                unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 2, millis) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            handed = self.drain(on_event);
        }
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
        self.export_stats();
        Ok(handed)
    }

    fn drain(&mut self, on_event: &mut dyn FnMut(ProbeEvent<'_>)) -> usize {
        let mut handed = 0;
        let keys = &mut self.keys;
        let drained = self.ring.drain(POLL_BYTES, |item| match parse(item) {
            Some(event) => {
                if let ProbeEvent::StreamBound { cgroup_id, .. } = event
                    && let Some(record) = read::<LifecycleRecord>(item)
                {
                    keys.bound(cgroup_id, record.key);
                }
                on_event(event);
                handed += 1;
            }
            None => tracing::warn!(len = item.len(), "malformed eBPF record skipped"),
        });
        if drained.malformed_bytes > 0 {
            // The kernel's layout broken: the streams' records in those bytes are
            // holes, repaired from the CRI logs like any other.
            tracing::warn!(
                bytes = drained.malformed_bytes,
                "eBPF ring buffer: a record header past the producer position; skipped"
            );
        }
        handed
    }

    /// Bytes of ring no poll has read yet (one load).
    pub fn backlog(&self) -> usize {
        self.ring.unread_bytes()
    }

    fn export_stats(&mut self) {
        if self
            .stats_exported
            .is_some_and(|t| t.elapsed() < STATS_INTERVAL)
        {
            return;
        }
        self.stats_exported = Some(Instant::now());
        let Ok(stats) = self.kernel_stats() else {
            return;
        };
        metrics::counter!(CAPTURE_KERNEL_RECORDS_TOTAL).absolute(stats.records);
        metrics::counter!(CAPTURE_KERNEL_BYTES_TOTAL).absolute(stats.bytes);
        metrics::counter!(CAPTURE_LOST_EVENTS_TOTAL).absolute(stats.lost_events);
        for reason in DropReason::ALL {
            let i = reason as usize;
            metrics::counter!(CAPTURE_RING_DROPPED_RECORDS_TOTAL, "reason" => reason.as_str())
                .absolute(stats.dropped_records[i]);
            metrics::counter!(CAPTURE_RING_DROPPED_BYTES_TOTAL, "reason" => reason.as_str())
                .absolute(stats.dropped_bytes[i]);
        }
    }

    /// Sums of the per-CPU kernel counters.
    pub fn kernel_stats(&self) -> Result<KernelStats, ProbeError> {
        let per_cpu = self.stats.get(&0, 0).map_err(map_error(STATS_MAP))?;
        let mut sum = [0u64; NUM_STATS];
        for cpu in per_cpu.iter() {
            for (s, v) in sum.iter_mut().zip(cpu) {
                *s += v;
            }
        }
        let reasons = |base: usize| std::array::from_fn(|i| sum[base + i]);
        Ok(KernelStats {
            records: sum[STAT_RECORDS],
            bytes: sum[STAT_BYTES],
            dropped_records: reasons(STAT_DROPPED_RECORDS),
            dropped_bytes: reasons(STAT_DROPPED_BYTES),
            syscalls: sum[STAT_SYSCALLS],
            lost_events: sum[STAT_LOST_EVENTS],
        })
    }

    /// The mount point of the cgroup v2 hierarchy (a cgroup's id is the inode of its
    /// directory below it). First `cgroup2` entry of `/proc/self/mountinfo`.
    pub fn cgroup2_root() -> io::Result<PathBuf> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        cgroup2_mount(&mountinfo).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "no cgroup2 file system is mounted")
        })
    }
}

/// The bulk reader of the ring map (see `ring`), after checking it is one.
fn ring_reader(map: &MapData) -> Result<RingReader, ProbeError> {
    let info = map.info().map_err(map_error(RING_MAP))?;
    if !matches!(info.map_type(), Ok(MapType::RingBuf)) {
        return Err(ProbeError::Options(format!(
            "the map {RING_MAP} is no ring buffer"
        )));
    }
    RingReader::new(map.fd().as_fd(), info.max_entries() as usize).map_err(|source| {
        ProbeError::Io {
            context: format!("mapping the ring buffer {RING_MAP}"),
            source,
        }
    })
}

fn program_error(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> ProbeError {
    move |source| ProbeError::Program {
        name,
        source: Box::new(source),
    }
}

/// Loads the object and attaches its programs; with `pin`, pins the maps and links in
/// that (stamp) directory, which must not exist yet.
fn load_fresh(
    object: &[u8],
    config: &ProbeConfig,
    options: &ProbeOptions,
    pin: Option<&Path>,
) -> Result<Loaded, ProbeError> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(RING_MAP, options.ring_bytes)
        .override_global(CONFIG_GLOBAL, config, true)
        .load(object)
        .map_err(|e| ProbeError::Load(Box::new(e)))?;
    let logger = forwarding(EbpfLogger::init(&mut ebpf));
    // The maps first: a directory that takes no pin is known before anything is
    // attached (a link whose pin fails is detached, see `pin_links`).
    if let Some(dir) = pin {
        pin_maps(&ebpf, dir)?;
    }
    let mut links = Vec::new();
    for (name, category, tracepoint) in LIFECYCLE_PROGRAMS {
        match (
            attach_tracepoint(&mut ebpf, name, category, tracepoint)?,
            pin,
        ) {
            (Some(link), _) => links.push((name, link)),
            (None, Some(dir)) => {
                return Err(ProbeError::Pin {
                    dir: dir.to_owned(),
                    detail: "tracepoints are attached without BPF links on this kernel \
                             (before 5.15): they cannot be pinned"
                        .to_owned(),
                });
            }
            (None, None) => {}
        }
    }
    let hook_mode = attach_write_path(&mut ebpf, options.hooks, &mut links)?;
    let links = match pin {
        Some(dir) => pin_links(links, dir)?,
        None => links.into_iter().map(|(_, link)| link).collect(),
    };
    let mut take = |name: &'static str| match ebpf.take_map(name) {
        Some(Map::RingBuf(m) | Map::HashMap(m) | Map::Array(m) | Map::PerCpuArray(m)) => Ok(m),
        _ => Err(ProbeError::Options(format!(
            "the object has no map {name} of the expected type"
        ))),
    };
    let maps = [
        take(RING_MAP)?,
        take(WATCHED_MAP)?,
        take(STREAMS_MAP)?,
        take(INO_FILTER_MAP)?,
        take(STATS_MAP)?,
        take(BASES_MAP)?,
    ];
    Ok(Loaded {
        ebpf: Some(ebpf),
        pin_lock: None,
        maps,
        links,
        hook_mode,
        logger,
    })
}

/// The reader of the probes' diagnostics (aya-log's `AYA_LOGS` map); `None`, logged,
/// when it cannot be had: capture does not depend on it.
fn forwarding(
    logger: Result<EbpfLogger<&'static dyn log::Log>, impl std::fmt::Display>,
) -> Option<EbpfLogger<&'static dyn log::Log>> {
    logger
        .inspect_err(|e| tracing::warn!(error = %e, "eBPF diagnostics will not be forwarded"))
        .ok()
}

/// One start on pins, by how it went (`logtap_capture_pin_starts_total{result}`).
fn count_pin_start(result: &'static str) {
    metrics::counter!(CAPTURE_PIN_STARTS_TOTAL, "result" => result).increment(1);
}

/// Takes over the probes pinned in `dir` with this layout, or loads and pins fresh
/// ones when there are none (any other layout there is removed first: see `pin`).
/// A directory that takes no pins (not bpffs, read-only) leaves the probes unpinned.
fn load_pinned(
    object: &[u8],
    config: &ProbeConfig,
    options: &ProbeOptions,
    dir: &Path,
) -> Result<Loaded, ProbeError> {
    let wait = &options.pin_wait;
    let stop = || {
        wait.stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    };
    let on_wait = || {
        tracing::info!(dir = %dir.display(), limit_seconds = wait.limit.as_secs_f64(), "another agent holds the pinned probes: waiting for it to stop, to take them over");
        if let Some(on_wait) = wait.on_wait {
            on_wait();
        }
    };
    let started = Instant::now();
    let locked = pin::lock_waiting(dir, wait.limit, &stop, on_wait);
    metrics::gauge!(CAPTURE_PIN_WAIT_SECONDS).set(started.elapsed().as_secs_f64());
    let lock = match locked {
        Ok((lock, waited)) => {
            if !waited.is_zero() {
                tracing::info!(dir = %dir.display(), waited_seconds = waited.as_secs_f64(), "the other agent stopped: the pin directory is this agent's");
            }
            lock
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(ProbeError::Stopped),
        Err(e) => {
            count_pin_start(if e.kind() == io::ErrorKind::WouldBlock {
                "locked"
            } else {
                "failed"
            });
            tracing::warn!(dir = %dir.display(), error = %e, "the pin directory cannot be locked (another agent still uses it after capture.pin_wait, or it cannot be made): capture runs unpinned beside it, its pins left alone");
            return load_fresh(object, config, options, None);
        }
    };
    let mut loaded = load_layout(object, config, options, dir)?;
    loaded.pin_lock = Some(lock);
    Ok(loaded)
}

/// [`load_pinned`] once the directory is locked.
fn load_layout(
    object: &[u8],
    config: &ProbeConfig,
    options: &ProbeOptions,
    dir: &Path,
) -> Result<Loaded, ProbeError> {
    let stamp = pin::layout_stamp(object, config, options.ring_bytes, options.hooks);
    let layout = dir.join(&stamp);
    let scan = pin::scan(dir, &stamp).map_err(|source| ProbeError::Io {
        context: format!("listing the pin directory {}", dir.display()),
        source,
    })?;
    for stale in &scan.stale {
        tracing::warn!(pins = %stale.display(), layout = %stamp, "probes pinned by an agent with another layout (other probes or capture settings): removed; capture starts afresh, running containers from their CRI logs");
        count_pin_start("layout_changed");
        if let Err(e) = pin::remove(stale) {
            tracing::warn!(pins = %stale.display(), error = %e, "removing stale pins: their probes may still capture beside these");
        }
    }
    if scan.current.is_some() {
        let lifecycle = LIFECYCLE_PROGRAMS.map(|(name, _, _)| name);
        let trampolines = TRAMPOLINE_PROGRAMS.map(|(name, _)| name);
        let write_paths: [(HookMode, &[&str]); 3] = [
            (HookMode::Fentry, &trampolines),
            (HookMode::Tracepoint, &[RAW_TRACEPOINT_PROGRAM.0]),
            (HookMode::Compat, &[COMPAT_PROGRAM.0]),
        ];
        let reused = pin::pinned_hooks(&layout, &lifecycle, &write_paths)
            .ok_or_else(|| "a pin is missing".to_owned())
            .and_then(|mode| open_pins(&layout, mode));
        match reused {
            Ok(loaded) => {
                count_pin_start("reused");
                tracing::info!(pins = %layout.display(), "taking over the probes an earlier agent left pinned");
                return Ok(loaded);
            }
            Err(detail) => {
                count_pin_start("incomplete");
                tracing::warn!(pins = %layout.display(), error = %detail, "pinned probes unusable: removed, capture starts afresh");
                if let Err(e) = pin::remove(&layout) {
                    return Err(ProbeError::Io {
                        context: format!("removing unusable pins in {}", layout.display()),
                        source: e,
                    });
                }
            }
        }
    }
    // Before 5.15 tracepoints are attached without BPF links, which cannot be pinned:
    // known before anything is loaded, so the probes are loaded once, unpinned (not
    // pinned maps first, removed again when the first tracepoint has no link).
    if !aya::features().bpf_perf_link() {
        count_pin_start("failed");
        tracing::warn!(dir = %dir.display(), "tracepoints are attached without BPF links on this kernel (before 5.15): the probes cannot be pinned; capture runs, but a restarted agent starts afresh");
        return load_fresh(object, config, options, None);
    }
    let created = std::fs::create_dir_all(&layout).map_err(|e| ProbeError::Pin {
        dir: layout.clone(),
        detail: e.to_string(),
    });
    match created.and_then(|()| load_fresh(object, config, options, Some(&layout))) {
        Ok(loaded) => {
            count_pin_start("created");
            Ok(loaded)
        }
        Err(ProbeError::Pin { dir, detail }) => {
            count_pin_start("failed");
            tracing::warn!(dir = %dir.display(), error = %detail, "the probes cannot be pinned (is a bpffs mounted there?): capture runs, but a restarted agent starts afresh");
            let _ = pin::remove(&layout);
            load_fresh(object, config, options, None)
        }
        Err(e) => {
            let _ = pin::remove(&layout);
            Err(e)
        }
    }
}

/// Opens the maps and links pinned in `dir`. The links are held open, as a fresh
/// load holds its own: pins removed while this agent runs (by hand, or by another
/// agent) detach nothing before it exits.
fn open_pins(dir: &Path, hook_mode: HookMode) -> Result<Loaded, String> {
    let mut programs: Vec<&str> = LIFECYCLE_PROGRAMS.iter().map(|(n, _, _)| *n).collect();
    match hook_mode {
        HookMode::Fentry => programs.extend(TRAMPOLINE_PROGRAMS.map(|(n, _)| n)),
        HookMode::Tracepoint => programs.push(RAW_TRACEPOINT_PROGRAM.0),
        HookMode::Compat => programs.push(COMPAT_PROGRAM.0),
    }
    let mut links = Vec::new();
    for program in programs {
        let path = pin::link_pin(dir, program);
        let link = PinnedLink::from_pin(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let link = FdLink::from(link);
        link.info()
            .map_err(|e| format!("{}: not a link: {e}", path.display()))?;
        links.push(link);
    }
    let open = |name: &str| MapData::from_pin(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let maps = [
        open(RING_MAP)?,
        open(WATCHED_MAP)?,
        open(STREAMS_MAP)?,
        open(INO_FILTER_MAP)?,
        open(STATS_MAP)?,
        open(BASES_MAP)?,
    ];
    // aya-log's buffer is not pinned: it is found through a pinned program, whose
    // maps the kernel lists (every program of the object shares the one buffer).
    // A link holds its program, so the id names the running one.
    let logger = forwarding(
        links
            .first()
            .ok_or_else(|| "no program is pinned".to_owned())
            .and_then(|link| link.info().map_err(|e| e.to_string()))
            .and_then(|info| {
                EbpfLogger::init_from_id(info.program_id()).map_err(|e| e.to_string())
            }),
    );
    Ok(Loaded {
        ebpf: None,
        pin_lock: None,
        maps,
        links,
        hook_mode,
        logger,
    })
}

fn pin_maps(ebpf: &Ebpf, dir: &Path) -> Result<(), ProbeError> {
    for name in pin::PINNED_MAPS {
        let map = ebpf
            .map(name)
            .ok_or_else(|| ProbeError::Options(format!("the object has no map {name}")))?;
        map.pin(dir.join(name)).map_err(|e| ProbeError::Pin {
            dir: dir.to_owned(),
            detail: format!("map {name}: {e}"),
        })?;
    }
    Ok(())
}

/// Pins every link in `dir`. A link whose pin fails is detached (aya drops it): the
/// error makes the caller load again, unpinned.
fn pin_links(links: Vec<(&'static str, FdLink)>, dir: &Path) -> Result<Vec<FdLink>, ProbeError> {
    links
        .into_iter()
        .map(|(name, link)| {
            link.pin(pin::link_pin(dir, name))
                .map(FdLink::from)
                .map_err(|e| ProbeError::Pin {
                    dir: dir.to_owned(),
                    detail: format!("link of {name}: {e}"),
                })
        })
        .collect()
}

/// Loads and attaches a lifecycle program; its link, unless the kernel attached it
/// without one (see below).
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    category: &str,
    tracepoint: &str,
) -> Result<Option<FdLink>, ProbeError> {
    let program: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| ProbeError::Options(format!("the object has no program {name}")))?
        .try_into()
        .map_err(program_error(name))?;
    program.load().map_err(program_error(name))?;
    let id = program
        .attach(category, tracepoint)
        .map_err(program_error(name))?;
    // A BPF link on 5.15+ (bpf_link_create for perf events), which pins need. Older
    // kernels attach with an ioctl: that attachment stays with the program in the
    // `Ebpf`, detached when it is dropped, and cannot be pinned.
    if !aya::features().bpf_perf_link() {
        return Ok(None);
    }
    let link = program.take_link(id).map_err(program_error(name))?;
    FdLink::try_from(link).map(Some).map_err(|e| {
        ProbeError::Options(format!(
            "{name}: the tracepoint is not attached through a BPF link: {e}"
        ))
    })
}

/// Attaches the write path `hooks` asks for. `auto` takes the cheapest the kernel
/// loads: the trampolines, else the raw tracepoint's program (5.15+), else the compat
/// program (5.8+); each refusal is logged with the kernel's error.
fn attach_write_path(
    ebpf: &mut Ebpf,
    hooks: CaptureHooks,
    links: &mut Vec<(&'static str, FdLink)>,
) -> Result<HookMode, ProbeError> {
    let (program, mode) = match hooks {
        CaptureHooks::Tracepoint => (RAW_TRACEPOINT_PROGRAM, HookMode::Tracepoint),
        CaptureHooks::Compat => (COMPAT_PROGRAM, HookMode::Compat),
        CaptureHooks::Auto => {
            match attach_trampolines(ebpf) {
                Ok(trampolines) => {
                    links.extend(trampolines);
                    return Ok(HookMode::Fentry);
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "no BPF trampolines on this kernel: capture's write path uses syscall \
                     tracepoints, which slow down every syscall of every task on the node"
                ),
            }
            match attach_raw_tracepoint(ebpf, RAW_TRACEPOINT_PROGRAM) {
                Ok(link) => {
                    links.push((RAW_TRACEPOINT_PROGRAM.0, link));
                    return Ok(HookMode::Tracepoint);
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "the syscall tracepoint program does not load on this kernel (before \
                     5.15?): capture uses the compat program for kernels 5.8-5.14, whose \
                     writes racing another write to the same stream are repaired from \
                     the CRI log (logtap_capture_ring_dropped_bytes_total, reason concurrent)"
                ),
            }
            (COMPAT_PROGRAM, HookMode::Compat)
        }
    };
    links.push((program.0, attach_raw_tracepoint(ebpf, program)?));
    Ok(mode)
}

fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    (name, tracepoint): (&'static str, &str),
) -> Result<FdLink, ProbeError> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| ProbeError::Options(format!("the object has no program {name}")))?
        .try_into()
        .map_err(program_error(name))?;
    program.load().map_err(program_error(name))?;
    let id = program.attach(tracepoint).map_err(program_error(name))?;
    Ok(program.take_link(id).map_err(program_error(name))?.into())
}

/// Loads and attaches the trampoline programs, all or none: on an error, those already
/// attached are detached again (the tracepoints then take over, and no write may be
/// captured twice).
fn attach_trampolines(ebpf: &mut Ebpf) -> Result<Vec<(&'static str, FdLink)>, ProbeError> {
    let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf(e.to_string()))?;
    let mut links = Vec::new();
    for (i, (name, function)) in TRAMPOLINE_PROGRAMS.into_iter().enumerate() {
        match attach_trampoline(ebpf, &btf, name, function) {
            Ok(link) => links.push((name, link)),
            Err(e) => {
                // Dropping a link detaches its program.
                drop(links);
                for (loaded, _) in &TRAMPOLINE_PROGRAMS[..=i] {
                    if let Some(Ok(program)) = ebpf.program_mut(loaded).map(<&mut FExit>::try_from)
                    {
                        // Fails only for a program that never loaded: nothing to undo.
                        let _ = program.unload();
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(links)
}

fn attach_trampoline(
    ebpf: &mut Ebpf,
    btf: &Btf,
    name: &'static str,
    function: &str,
) -> Result<FdLink, ProbeError> {
    let program: &mut FExit = ebpf
        .program_mut(name)
        .ok_or_else(|| ProbeError::Options(format!("the object has no program {name}")))?
        .try_into()
        .map_err(program_error(name))?;
    program.load(function, btf).map_err(program_error(name))?;
    let id = program.attach().map_err(program_error(name))?;
    Ok(program.take_link(id).map_err(program_error(name))?.into())
}

fn probe_config(options: &ProbeOptions) -> Result<ProbeConfig, ProbeError> {
    if !options.ring_bytes.is_power_of_two() || (options.ring_bytes as usize) < page_size() {
        return Err(ProbeError::Options(format!(
            "ring_bytes {} must be a power of two of at least the page size",
            options.ring_bytes
        )));
    }
    if !(1..=MAX_RECORDS_LIMIT).contains(&options.max_records_per_write) {
        return Err(ProbeError::Options(format!(
            "max_records_per_write {} must be in 1..={MAX_RECORDS_LIMIT}",
            options.max_records_per_write
        )));
    }
    let prefix = options.cgroup_prefix.trim_end_matches('/');
    if !options.cgroup_prefix.starts_with('/') || prefix.len() > PREFIX_CAPACITY {
        return Err(ProbeError::Options(format!(
            "cgroup_prefix {:?} must start with '/' and be at most {PREFIX_CAPACITY} bytes",
            options.cgroup_prefix
        )));
    }
    let root = tracefs::tracefs_root().map_err(ProbeError::Tracefs)?;
    let tp = tracefs::tracepoint_offsets(&root).map_err(ProbeError::Tracefs)?;
    let kernel = btf::Btf::from_file(btf::VMLINUX_BTF)
        .and_then(|b| b.kernel_offsets())
        .map_err(ProbeError::Btf)?;
    let mut config = ProbeConfig {
        tp,
        kernel,
        max_records: options.max_records_per_write,
        prefix_len: prefix.len() as u32,
        ..ProbeConfig::INERT
    };
    config.cgroup_prefix[..prefix.len()].copy_from_slice(prefix.as_bytes());
    Ok(config)
}

fn page_size() -> usize {
    // SAFETY: no arguments beyond the constant.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK. Raising it needs
/// CAP_SYS_RESOURCE; newer kernels do not need it, so a failure is only logged.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            error = %io::Error::last_os_error(),
            "RLIMIT_MEMLOCK not raised (only kernels before 5.11 need it)"
        );
    }
}

/// stat(2)'s `st_dev` as the kernel's internal `dev_t` (`MAJOR << 20 | MINOR`), which is
/// what the probes read from `super_block.s_dev`.
fn kernel_dev(st_dev: u64) -> u64 {
    let (major, minor) = (libc::major(st_dev) as u64, libc::minor(st_dev) as u64);
    (major << 20) | minor
}

fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // <id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> ...
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace()
            .nth(4)
            .map(|p| PathBuf::from(unescape_mountinfo(p)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = bytes
                .get(i + 1..i + 4)
                .and_then(|o| std::str::from_utf8(o).ok())
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is a #[repr(C)] integer-only contract type (any bits valid).
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring record, `None` when it is too short for its kind or of no kind known.
/// `pub` for the fuzz target `fuzz/fuzz_targets/ring_record.rs` only.
#[doc(hidden)]
pub fn parse(item: &[u8]) -> Option<ProbeEvent<'_>> {
    let kind: u32 = read(item)?;
    if kind == KIND_DATA {
        let h: DataHeader = read(item)?;
        let start = size_of::<DataHeader>();
        let bytes = item.get(start..start + h.len as usize)?;
        return Some(ProbeEvent::Data {
            cgroup_id: h.cgroup_id,
            stream: Stream::from_u8(h.stream as u8),
            offset: h.offset,
            bytes,
            ktime_ns: h.ktime_ns,
            tgid: h.tgid,
        });
    }
    let r: LifecycleRecord = read(item)?;
    let start = std::mem::offset_of!(LifecycleRecord, path);
    let path = item.get(start..start + (r.path_len as usize).min(PATH_CAPACITY))?;
    Some(match kind {
        KIND_STREAM_BOUND => ProbeEvent::StreamBound {
            cgroup_id: r.cgroup_id,
            stream: Stream::from_u8(r.stream as u8),
            inode: r.key.ino,
        },
        KIND_CGROUP_CREATED => ProbeEvent::CgroupCreated {
            cgroup_id: r.cgroup_id,
            path,
        },
        KIND_CGROUP_REMOVED => ProbeEvent::CgroupRemoved {
            cgroup_id: r.cgroup_id,
            path,
        },
        KIND_EXEC => ProbeEvent::Exec {
            cgroup_id: r.cgroup_id,
            tgid: r.tgid,
            filename: path,
        },
        KIND_EXIT => ProbeEvent::Exit {
            cgroup_id: r.cgroup_id,
            tgid: r.tgid,
            group_dead: match r.group_dead {
                GROUP_DEAD_UNKNOWN => None,
                dead => Some(dead != 0),
            },
        },
        _ => return None,
    })
}

fn epoll_create() -> Result<OwnedFd, ProbeError> {
    // SAFETY: plain syscall; the fd is owned right away.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(ProbeError::Io {
            context: "epoll_create1".to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn epoll_add(epoll: &OwnedFd, fd: i32, token: u64, events: i32) -> Result<(), ProbeError> {
    let mut event = libc::epoll_event {
        events: events as u32,
        u64: token,
    };
    // SAFETY: valid fds and event struct.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } != 0 {
        return Err(ProbeError::Io {
            context: "epoll_ctl".to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup2_mount_is_found_in_hybrid_mountinfo() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 30 0:35 / /sys/fs/cgroup/uni\\040fied rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/uni fied"))
        );
        assert_eq!(cgroup2_mount("garbage\n - \n"), None);
    }

    #[test]
    fn kernel_dev_matches_the_kernels_encoding() {
        // st_dev of an anonymous device (major 0, minor 14): the kernel's MKDEV(0, 14).
        assert_eq!(kernel_dev(libc::makedev(0, 14)), 14);
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 300)), (259 << 20) | 300);
    }

    #[test]
    fn records_decode_and_short_ones_are_refused() {
        let h = DataHeader {
            kind: KIND_DATA,
            stream: 2,
            cgroup_id: 7,
            offset: 100,
            ktime_ns: 1,
            tgid: 42,
            len: 3,
        };
        let mut rec = vec![0u8; size_of::<DataHeader>() + 8];
        // SAFETY: the buffer is large enough.
        unsafe { std::ptr::write_unaligned(rec.as_mut_ptr().cast(), h) };
        rec[size_of::<DataHeader>()..][..3].copy_from_slice(b"abc");
        match parse(&rec) {
            Some(ProbeEvent::Data {
                cgroup_id: 7,
                stream: Stream::Stderr,
                offset: 100,
                bytes: b"abc",
                tgid: 42,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(parse(&rec[..size_of::<DataHeader>() + 2]).is_none());
        assert!(parse(&rec[..3]).is_none());
        let mut unknown = vec![0u8; size_of::<LifecycleRecord>()];
        unknown[0] = 99;
        assert!(parse(&unknown).is_none());
    }

    #[test]
    fn options_are_checked_before_anything_is_loaded() {
        let bad = [
            ProbeOptions {
                ring_bytes: 3 << 20,
                ..ProbeOptions::default()
            },
            ProbeOptions {
                max_records_per_write: 17,
                ..ProbeOptions::default()
            },
            ProbeOptions {
                cgroup_prefix: "kubepods".to_owned(),
                ..ProbeOptions::default()
            },
        ];
        for options in bad {
            assert!(matches!(
                probe_config(&options),
                Err(ProbeError::Options(_))
            ));
        }
    }
}

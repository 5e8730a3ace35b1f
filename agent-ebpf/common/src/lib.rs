//! The contract between logtap's eBPF probes (`agent-ebpf/probes`) and the agent's loader
//! (`agent/src/capture`): `#[repr(C)]` types with fixed-width fields and explicit padding,
//! the names of maps and globals (≤ 15 bytes: the kernel truncates map names), indices of
//! the per-CPU counters, and record kinds. Both sides compile this one file, so a field
//! added on one side cannot be forgotten on the other.
//!
//! # Records in the ring buffer
//!
//! Every record starts with a `u32` kind (`KIND_*`):
//! - [`KIND_DATA`]: a [`DataHeader`] followed by `len` payload bytes, the stream bytes at
//!   `offset..offset + len` of the stream `(cgroup_id, stream)`.
//! - every other kind: one [`LifecycleRecord`].
#![no_std]

/// Ring buffer carrying data and lifecycle records.
pub const RING_MAP: &str = "LOGTAP_RING";
/// `u64` cgroup id → [`WatchedCgroup`]: the cgroups whose writes are looked at.
pub const WATCHED_MAP: &str = "LOGTAP_WATCHED";
/// [`StreamKey`] (the pipe's inode) → [`StreamState`]: the registered container streams.
pub const STREAMS_MAP: &str = "LOGTAP_STREAMS";
/// Per-CPU array with one [`Stats`] slot.
pub const STATS_MAP: &str = "LOGTAP_STATS";
/// Array of [`INO_FILTER_SLOTS`] `u32`, indexed by [`ino_slot`]: nonzero when a stream
/// whose inode falls in the slot was ever registered. The write hooks look here before
/// the stream map, so a write to any other file costs one inlined array load.
///
/// Invariant: the slot of every entry of [`STREAMS_MAP`] is nonzero. Slots are set
/// (to 1, by the kernel at bind or by the loader, always before the stream is
/// inserted) and never cleared while the maps live, so no writer can clear another's
/// mark; a slot of a forgotten stream only costs unrelated writes one hash lookup.
pub const INO_FILTER_MAP: &str = "LOGTAP_INOS";
/// Per-CPU array with one [`IovWalk`]: the writev hook's walk state (the verifier does
/// not track map memory, see [`IovWalk::walked`]). Used by the one writev program
/// loaded, which the kernel never runs twice at once on one CPU.
pub const IOV_SCRATCH_MAP: &str = "LOGTAP_IOVSCR";
/// [`StreamKey`] → `u64`: for a stream bound while its container ran
/// ([`ORIGIN_RUNNING`]), its base once userspace found it (the stream offset of the
/// kernel's offset 0, see the agent's `seam`). Written and read by userspace only; a
/// map so that it is pinned with the streams and outlives the agent with them: the
/// next agent continues such a stream without looking for its seam again.
pub const BASES_MAP: &str = "LOGTAP_BASES";
/// The read-only global holding the [`ProbeConfig`] (patched at load time).
pub const CONFIG_GLOBAL: &str = "LOGTAP_CONFIG";

/// Entries of [`WATCHED_MAP`]: more than the containers a node runs, pod cgroups included.
pub const MAX_WATCHED: u32 = 16384;
/// Entries of [`STREAMS_MAP`]: two per watched cgroup.
pub const MAX_STREAMS: u32 = 2 * MAX_WATCHED;

/// Slots of [`INO_FILTER_MAP`] (a power of two).
pub const INO_FILTER_SLOTS: u32 = 65536;

/// The slot of an inode number in [`INO_FILTER_MAP`]. Pipe inodes are numbered in
/// sequence, so their low bits spread evenly.
#[inline(always)]
pub const fn ino_slot(ino: u64) -> u32 {
    (ino & (INO_FILTER_SLOTS as u64 - 1)) as u32
}

/// Payload bytes of one data record at most.
pub const RECORD_PAYLOAD: usize = 4096;
/// Upper bound of [`ProbeConfig::max_records`]: 16 × 4 KiB = 64 KiB per syscall.
pub const MAX_RECORDS_LIMIT: u32 = 16;
/// iovecs of one writev walked at most; bytes in further iovecs are a `too_large` gap.
pub const MAX_IOVECS: u32 = 16;
/// Bytes of a cgroup path or exec filename carried by a lifecycle record.
pub const PATH_CAPACITY: usize = 256;
/// Bytes of [`ProbeConfig::cgroup_prefix`].
pub const PREFIX_CAPACITY: usize = 128;

pub const KIND_DATA: u32 = 1;
pub const KIND_STREAM_BOUND: u32 = 2;
pub const KIND_CGROUP_CREATED: u32 = 3;
pub const KIND_CGROUP_REMOVED: u32 = 4;
pub const KIND_EXEC: u32 = 5;
pub const KIND_EXIT: u32 = 6;

// Indices into [`Stats`].
/// write/writev calls that put bytes into a registered stream.
pub const STAT_SYSCALLS: usize = 0;
/// Data records submitted.
pub const STAT_RECORDS: usize = 1;
/// Payload bytes submitted.
pub const STAT_BYTES: usize = 2;
/// Data records not sent, by reason: `STAT_DROPPED_RECORDS + DROP_*`.
pub const STAT_DROPPED_RECORDS: usize = 3;
/// Stream bytes not sent (the offset advanced past them), by reason.
pub const STAT_DROPPED_BYTES: usize = 7;
/// Lifecycle records (bound, created, removed, exec, exit) lost to a full ring.
pub const STAT_LOST_EVENTS: usize = 11;
pub const NUM_STATS: usize = 12;

/// The ring buffer had no room.
pub const DROP_RING_FULL: usize = 0;
/// Beyond `max_records` × 4 KiB or [`MAX_IOVECS`] of one syscall.
pub const DROP_TOO_LARGE: usize = 1;
/// Reading the writer's memory failed (page not resident, bad pointer).
pub const DROP_FAULT: usize = 2;
/// The write path for kernels before 5.12 (no atomic fetch-add) could not be sure of
/// the write's offset: another write to the same stream returned at the same instant
/// on another CPU (see the probes' `sequence_exact`).
pub const DROP_CONCURRENT: usize = 3;
pub const NUM_DROP_REASONS: usize = 4;

// The per-reason counter ranges must not overlap each other or run past the array.
const _: () = assert!(STAT_DROPPED_BYTES == STAT_DROPPED_RECORDS + NUM_DROP_REASONS);
const _: () = assert!(STAT_LOST_EVENTS == STAT_DROPPED_BYTES + NUM_DROP_REASONS);
const _: () = assert!(STAT_LOST_EVENTS < NUM_STATS);

/// Per-CPU counters, summed by userspace. One array, so a probe does one map lookup.
pub type Stats = [u64; NUM_STATS];

/// Value of [`WATCHED_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchedCgroup {
    /// 1 once the streams of the cgroup were bound (at its first exec, or by userspace).
    pub bound: u32,
    pub _pad: u32,
}

/// Identity of a container stream: the inode of the pipe at fd 1 or 2 of the container's
/// first process. `dev` is the kernel's internal `dev_t` (`MAJOR << 20 | MINOR`) of the
/// inode's super block, not the `st_dev` encoding of stat(2).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub ino: u64,
    pub dev: u64,
}

/// Value of [`STREAMS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamState {
    pub cgroup_id: u64,
    /// Bytes accepted by the kernel on this stream so far, advanced with an atomic
    /// fetch-add when each write returns (an atomic add on kernels before 5.12): the
    /// stream offset of the next byte. Only ever increased, and only atomically.
    pub offset: u64,
    /// 1 = stdout, 2 = stderr (as `logtap::frame::Stream`).
    pub stream: u32,
    /// Who bound the stream, and so where `offset` 0 is in it: [`ORIGIN_FIRST_EXEC`]
    /// or [`ORIGIN_RUNNING`]. Written once, at the bind; read by an agent that finds
    /// the maps pinned by an earlier one.
    pub origin: u32,
}

/// [`StreamState::origin`]: bound by the probes at the container's first exec, before
/// it wrote anything: offset 0 is the stream's first byte.
pub const ORIGIN_FIRST_EXEC: u32 = 0;
/// [`StreamState::origin`]: bound by userspace while the container ran: offset 0 is
/// where the bind found the stream, an offset only the seam with its CRI log places.
pub const ORIGIN_RUNNING: u32 = 1;

/// The writev hooks' walk over the iovecs of one call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IovWalk {
    /// The user `iovec` array.
    pub vec: u64,
    /// Its length.
    pub vlen: u64,
    /// Accepted bytes walked so far. Kept in map memory rather than a register on
    /// purpose: the verifier does not track map memory, so the states of the iovec
    /// loop stay few enough to prune.
    pub walked: u64,
    /// Bytes of the current iovec walked so far (see `walked`).
    pub iov_walked: u64,
    /// Records left in the call's budget (see `walked`).
    pub budget: u32,
    /// The current iovec (see `walked`).
    pub iov_index: u32,
}

/// Header of a [`KIND_DATA`] record; `len` payload bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataHeader {
    pub kind: u32,
    /// 1 = stdout, 2 = stderr.
    pub stream: u32,
    pub cgroup_id: u64,
    /// Stream offset of the first payload byte.
    pub offset: u64,
    pub ktime_ns: u64,
    pub tgid: u32,
    pub len: u32,
}

/// Every record kind other than data. Fields a kind does not use are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LifecycleRecord {
    pub kind: u32,
    /// `KIND_STREAM_BOUND`: 1 = stdout, 2 = stderr.
    pub stream: u32,
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    /// `KIND_EXEC`, `KIND_EXIT`: the process.
    pub tgid: u32,
    /// `KIND_EXIT`: 1 when the last thread of the process exited, 0 when not,
    /// [`GROUP_DEAD_UNKNOWN`] when the kernel's tracepoint does not say.
    pub group_dead: u32,
    /// `KIND_STREAM_BOUND`: the stream's pipe inode.
    pub key: StreamKey,
    /// Bytes of `path` in use.
    pub path_len: u32,
    pub _pad: u32,
    /// `KIND_CGROUP_*`: the cgroup path below the cgroup2 root; `KIND_EXEC`: the file.
    pub path: [u8; PATH_CAPACITY],
}

/// `LifecycleRecord::group_dead` of a kernel whose `sched_process_exit` has no
/// `group_dead` field (5.10 has none; 6.18 has it).
pub const GROUP_DEAD_UNKNOWN: u32 = 2;

/// Byte offsets of tracepoint fields, from `events/<category>/<name>/format`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointOffsets {
    pub mkdir_root: u32,
    pub mkdir_id: u32,
    pub mkdir_path: u32,
    pub rmdir_root: u32,
    pub rmdir_id: u32,
    pub rmdir_path: u32,
    pub exec_filename: u32,
    /// 0 when the kernel's `sched_process_exit` has no `group_dead` field (offset 0 is
    /// `common_type`, never a field of the event's own).
    pub exit_group_dead: u32,
    /// Bytes of `cgroup_mkdir`'s and `cgroup_rmdir`'s `id`: 8 (`u64`), or 4 where the
    /// kernel keeps it an `int` (Ubuntu's 5.11), which holds the id's low 32 bits: the
    /// whole id until a node has made 2^32 cgroups.
    pub cgroup_id_size: u32,
}

/// Byte offsets of kernel struct members, from `/sys/kernel/btf/vmlinux`, for the walk
/// `task_struct → files → fdt → fd[n] → f_inode → (i_ino, i_mode, i_sb → s_dev)`, and
/// of the syscall number and first three arguments in the saved user registers
/// (`pt_regs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_inode: u32,
    pub inode_mode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    pub regs_arg0: u32,
    pub regs_arg1: u32,
    pub regs_arg2: u32,
    /// The syscall number (`orig_ax` on x86-64).
    pub regs_nr: u32,
    /// `task_struct.thread_info.status`, whose `TS_COMPAT` bit marks a 32-bit syscall
    /// (other numbers, other registers).
    pub task_ti_status: u32,
}

/// Everything the probes learn at load time, in one read-only global.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    pub tp: TracepointOffsets,
    pub kernel: KernelOffsets,
    /// Data records per syscall, 1..=[`MAX_RECORDS_LIMIT`].
    pub max_records: u32,
    /// Bytes of `cgroup_prefix` in use. A new cgroup is watched when its path is
    /// `cgroup_prefix` followed by `/` (no trailing `/` in the prefix; empty = all).
    pub prefix_len: u32,
    pub cgroup_prefix: [u8; PREFIX_CAPACITY],
}

impl ProbeConfig {
    /// Probes that see nothing: the value compiled into the object, replaced at load.
    pub const INERT: ProbeConfig = ProbeConfig {
        tp: TracepointOffsets {
            mkdir_root: 0,
            mkdir_id: 0,
            mkdir_path: 0,
            rmdir_root: 0,
            rmdir_id: 0,
            rmdir_path: 0,
            exec_filename: 0,
            exit_group_dead: 0,
            cgroup_id_size: 8,
        },
        kernel: KernelOffsets {
            task_files: 0,
            files_fdt: 0,
            fdtable_max_fds: 0,
            fdtable_fd: 0,
            file_inode: 0,
            inode_mode: 0,
            inode_ino: 0,
            inode_sb: 0,
            sb_dev: 0,
            regs_arg0: 0,
            regs_arg1: 0,
            regs_arg2: 0,
            regs_nr: 0,
            task_ti_status: 0,
        },
        max_records: 1,
        prefix_len: 0,
        cgroup_prefix: [0; PREFIX_CAPACITY],
    };
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are #[repr(C)], made of integers and integer arrays, with
    // explicit padding fields: every bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for super::WatchedCgroup {}
    unsafe impl aya::Pod for super::StreamKey {}
    unsafe impl aya::Pod for super::StreamState {}
    unsafe impl aya::Pod for super::IovWalk {}
    unsafe impl aya::Pod for super::DataHeader {}
    unsafe impl aya::Pod for super::LifecycleRecord {}
    unsafe impl aya::Pod for super::ProbeConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn records_have_no_implicit_padding() {
        // Any implicit padding would change these sums and leave bytes undefined.
        assert_eq!(size_of::<WatchedCgroup>(), 8);
        assert_eq!(size_of::<StreamKey>(), 16);
        assert_eq!(size_of::<StreamState>(), 8 + 8 + 4 + 4);
        assert_eq!(size_of::<IovWalk>(), 8 * 4 + 4 + 4);
        assert_eq!(size_of::<DataHeader>(), 4 + 4 + 8 + 8 + 8 + 4 + 4);
        assert_eq!(
            size_of::<LifecycleRecord>(),
            4 + 4 + 8 + 8 + 4 + 4 + 16 + 4 + 4 + PATH_CAPACITY
        );
        assert_eq!(size_of::<TracepointOffsets>(), 9 * 4);
        assert_eq!(size_of::<KernelOffsets>(), 14 * 4);
        assert_eq!(size_of::<ProbeConfig>(), 36 + 56 + 8 + PREFIX_CAPACITY);
    }

    #[test]
    fn map_names_fit_the_kernel() {
        for name in [
            RING_MAP,
            WATCHED_MAP,
            STREAMS_MAP,
            STATS_MAP,
            INO_FILTER_MAP,
            IOV_SCRATCH_MAP,
        ] {
            assert!(name.len() <= 15, "{name}");
        }
    }
}

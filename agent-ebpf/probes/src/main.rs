//! logtap's eBPF programs: exact capture of container stdout/stderr, and container
//! lifecycle. See `docs/capture.md` for the design; `logtap-ebpf-common` for the contract.
//!
//! - `cgroup_mkdir`: a new cgroup v2 directory under the configured prefix is watched from
//!   its creation (before any process runs in it); `cgroup_rmdir` forgets it.
//! - `sched_process_exec`: the first exec in a watched cgroup binds its streams: the pipes
//!   at fd 1 and fd 2 of that process (the container's real stdout/stderr) are registered
//!   by inode. Every exec and exit in a watched cgroup is reported.
//! - `vfs_write_exit`, `vfs_writev_exit` (BPF trampolines, `fexit`): the kernel accepted
//!   `ret` bytes into a file; when the file's inode is a registered stream, reserve them
//!   in the stream with an atomic fetch-add on its offset, then copy exactly those bytes
//!   into records of at most 4 KiB. Whatever cannot be copied is counted by reason; the
//!   offset still moved, so userspace sees the gap. A write to any other file costs the
//!   trampoline and one inlined array load ([`LOGTAP_INOS`]).
//! - `raw_sys_exit` (the `raw_syscalls:sys_exit` raw tracepoint): the same at the exit
//!   of every syscall, loaded only where trampolines are not available (it puts every
//!   task of the node on the slow syscall path): a write(v) of a watched cgroup whose
//!   file is a registered stream is copied, its arguments read from the task's saved
//!   registers.
//! - `compat_sys_exit` (the same raw tracepoint, for kernels 5.8–5.14): what
//!   `raw_sys_exit` does with only what 5.8 has — the arguments read through the
//!   tracepoint's own `pt_regs` pointer with probe reads (no `bpf_task_pt_regs`, 5.15;
//!   no `bpf_get_current_task_btf`, 5.11), and the offset taken without `BPF_FETCH`
//!   (5.12): see [`sequence_exact`]. `agent/src/capture/kernel58.rs` checks its
//!   instructions and helper calls against 5.8's.
//!
//! # Verifier
//!
//! Every loop is bounded by a constant and its trip count is computed before it starts
//! (a running budget inside the loop defeats state pruning). Sizes passed to helpers go
//! through [`clamp`], because LLVM drops bounds it believes redundant.
#![no_std]
#![no_main]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

use core::{
    ffi::c_void,
    ptr::{addr_of_mut, read_volatile},
};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
        BPF_RB_RING_SIZE,
    },
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_current_task_btf,
            bpf_ktime_get_ns, bpf_probe_read_kernel_str,
            bpf_probe_read_user as probe_read_user_raw, bpf_task_pt_regs,
        },
    },
    macros::{fexit, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{FExitContext, RawTracePointContext, TracePointContext},
};
use aya_log_ebpf::{debug, info};
use logtap_ebpf_common::{
    DROP_CONCURRENT, DROP_FAULT, DROP_RING_FULL, DROP_TOO_LARGE, DataHeader, GROUP_DEAD_UNKNOWN,
    INO_FILTER_SLOTS, IovWalk, KIND_CGROUP_CREATED, KIND_CGROUP_REMOVED, KIND_DATA, KIND_EXEC,
    KIND_EXIT, KIND_STREAM_BOUND, LifecycleRecord, MAX_IOVECS, MAX_RECORDS_LIMIT, MAX_STREAMS,
    MAX_WATCHED, ORIGIN_FIRST_EXEC, PATH_CAPACITY, PREFIX_CAPACITY, ProbeConfig, RECORD_PAYLOAD,
    STAT_BYTES, STAT_DROPPED_BYTES, STAT_DROPPED_RECORDS, STAT_LOST_EVENTS, STAT_RECORDS,
    STAT_SYSCALLS, Stats, StreamKey, StreamState, WatchedCgroup, ino_slot,
};

/// Patched by the loader (`EbpfLoader::override_global`); lives in `.rodata`, which the
/// kernel freezes, so the verifier treats every field as a known constant.
#[unsafe(no_mangle)]
static LOGTAP_CONFIG: ProbeConfig = ProbeConfig::INERT;

/// Reads one field of [`LOGTAP_CONFIG`]. Volatile, or LLVM folds the compiled-in value.
macro_rules! config {
    ($($field:tt)+) => {
        read_config(&raw const LOGTAP_CONFIG.$($field)+)
    };
}

#[inline(always)]
fn read_config<T: Copy>(field: *const T) -> T {
    // SAFETY: a field of a static, always initialised.
    unsafe { read_volatile(field) }
}

#[map]
static LOGTAP_RING: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

#[map]
static LOGTAP_WATCHED: HashMap<u64, WatchedCgroup> = HashMap::with_max_entries(MAX_WATCHED, 0);

#[map]
static LOGTAP_STREAMS: HashMap<StreamKey, StreamState> = HashMap::with_max_entries(MAX_STREAMS, 0);

#[map]
static LOGTAP_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);

#[map]
static LOGTAP_INOS: Array<u32> = Array::with_max_entries(INO_FILTER_SLOTS, 0);

#[map]
static LOGTAP_IOVSCR: PerCpuArray<IovWalk> = PerCpuArray::with_max_entries(1, 0);

/// Userspace's (see `BASES_MAP`); no program uses it. Not preallocated: few streams
/// are bound while their container runs.
#[map]
static LOGTAP_BASES: HashMap<StreamKey, u64> =
    HashMap::with_max_entries(MAX_STREAMS, BPF_F_NO_PREALLOC);

const S_IFMT: u16 = 0o170000;
const S_IFIFO: u16 = 0o010000;

#[inline(always)]
fn stats() -> Option<&'static mut Stats> {
    // SAFETY: a per-CPU slot, and a program is not preempted by itself on one CPU.
    LOGTAP_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// `n` bounded to `[0, N]` by a compare on the very register the helper receives.
#[inline(always)]
fn clamp<const N: usize>(n: u64) -> u64 {
    let mut n = n;
    // SAFETY: a compare and a move on one register.
    unsafe {
        core::arch::asm!(
            "if {n} <= {max} goto +1",
            "{n} = {max}",
            n = inout(reg) n,
            max = const N,
            options(pure, nomem, nostack),
        );
    }
    n
}

/// `*counter += n`, atomically, returning the previous value (BPF_ATOMIC | BPF_FETCH,
/// kernel 5.12+). core's `AtomicU64::fetch_add` does not exist for the BPF target.
///
/// # Safety
/// `counter` must point into a map value.
#[inline(always)]
unsafe fn fetch_add(counter: *mut u64, n: u64) -> u64 {
    let mut v = n;
    // SAFETY: per the caller.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
            p = in(reg) counter,
            v = inout(reg) v,
            options(nostack),
        );
    }
    v
}

/// `*counter += n`, atomically, returning nothing: the plain atomic add (`BPF_XADD`),
/// the only atomic kernels before 5.12 have.
///
/// # Safety
/// `counter` must point into a map value.
#[inline(always)]
unsafe fn xadd(counter: *mut u64, n: u64) {
    // SAFETY: per the caller.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) counter,
            v = in(reg) n,
            options(nostack),
        );
    }
}

#[inline(always)]
fn drop_bytes(st: &mut Stats, reason: usize, records: u64, bytes: u64) {
    st[STAT_DROPPED_RECORDS + reason] += records;
    st[STAT_DROPPED_BYTES + reason] += bytes;
}

/// The file at `fd` of the current task: its stream key and its `i_mode`.
#[inline(always)]
fn fd_file(fd: u64) -> Result<(StreamKey, u16), i32> {
    let k = config!(kernel);
    // SAFETY: bpf_probe_read_kernel checks every address; a bad offset reads garbage or
    // fails, it cannot fault.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let files: *const u8 = bpf_probe_read_kernel(task.add(k.task_files as usize).cast())?;
        let fdt: *const u8 = bpf_probe_read_kernel(files.add(k.files_fdt as usize).cast())?;
        let max_fds: u32 = bpf_probe_read_kernel(fdt.add(k.fdtable_max_fds as usize).cast())?;
        if fd >= max_fds as u64 {
            return Err(-1);
        }
        let fds: *const *const u8 = bpf_probe_read_kernel(fdt.add(k.fdtable_fd as usize).cast())?;
        let file: *const u8 = bpf_probe_read_kernel(fds.add(fd as usize))?;
        if file.is_null() {
            return Err(-1);
        }
        let inode: *const u8 = bpf_probe_read_kernel(file.add(k.file_inode as usize).cast())?;
        let mode: u16 = bpf_probe_read_kernel(inode.add(k.inode_mode as usize).cast())?;
        let ino: u64 = bpf_probe_read_kernel(inode.add(k.inode_ino as usize).cast())?;
        let sb: *const u8 = bpf_probe_read_kernel(inode.add(k.inode_sb as usize).cast())?;
        let dev: u32 = bpf_probe_read_kernel(sb.add(k.sb_dev as usize).cast())?;
        Ok((
            StreamKey {
                ino,
                dev: dev as u64,
            },
            mode,
        ))
    }
}

/// The stream key of the file at `fd` of the current task, by the shortest walk: plain
/// loads through the BTF-typed task down to the fd array (the verifier turns them into
/// fault-safe loads, no helper call), probe reads from there on (an element of the fd
/// array is no longer typed for the verifier). Every helper call counts: this runs in
/// every write of a watched container.
///
/// `PROBED`: for kernels without `bpf_get_current_task_btf` (before 5.11), the walk to
/// the fd array is probe reads too (4 more helper calls).
#[inline(always)]
fn fd_stream_key<const PROBED: bool>(fd: u64) -> Result<StreamKey, i32> {
    let k = config!(kernel);
    // SAFETY: BTF-typed loads are checked by the verifier against the struct layouts and
    // cannot fault; bpf_probe_read_kernel checks every other address.
    unsafe {
        let (fds, max_fds): (*const *const u8, u32) = if !PROBED {
            let task = bpf_get_current_task_btf() as *const u8;
            let files: *const u8 = read_volatile(task.add(k.task_files as usize).cast());
            let fdt: *const u8 = read_volatile(files.add(k.files_fdt as usize).cast());
            (
                read_volatile(fdt.add(k.fdtable_fd as usize).cast()),
                read_volatile(fdt.add(k.fdtable_max_fds as usize).cast()),
            )
        } else {
            let task = bpf_get_current_task() as *const u8;
            let files: *const u8 = bpf_probe_read_kernel(task.add(k.task_files as usize).cast())?;
            let fdt: *const u8 = bpf_probe_read_kernel(files.add(k.files_fdt as usize).cast())?;
            (
                bpf_probe_read_kernel(fdt.add(k.fdtable_fd as usize).cast())?,
                bpf_probe_read_kernel(fdt.add(k.fdtable_max_fds as usize).cast())?,
            )
        };
        if fd >= max_fds as u64 {
            return Err(-1);
        }
        let file: *const u8 = bpf_probe_read_kernel(fds.add(fd as usize))?;
        if file.is_null() {
            return Err(-1);
        }
        let inode: *const u8 = bpf_probe_read_kernel(file.add(k.file_inode as usize).cast())?;
        let ino: u64 = bpf_probe_read_kernel(inode.add(k.inode_ino as usize).cast())?;
        // A container's writes to its files and sockets stop here.
        match LOGTAP_INOS.get(ino_slot(ino)) {
            Some(&mark) if mark != 0 => {}
            _ => return Err(-1),
        }
        let sb: *const u8 = bpf_probe_read_kernel(inode.add(k.inode_sb as usize).cast())?;
        let dev: u32 = bpf_probe_read_kernel(sb.add(k.sb_dev as usize).cast())?;
        Ok(StreamKey {
            ino,
            dev: dev as u64,
        })
    }
}

/// x86-64 syscall numbers of write(2) and writev(2).
const NR_WRITE: u64 = 1;
const NR_WRITEV: u64 = 20;
/// `thread_info.status` bit of a task in a 32-bit syscall (x86-64).
const TS_COMPAT: u32 = 0x0002;

/// `raw_syscalls:sys_exit`, every syscall of every task: a raw tracepoint, not the
/// `syscalls:sys_exit_write` event, whose perf machinery (a trace buffer and a record
/// per call) cost a write 3–4 times more than this program's run on a syscall that is
/// not a write (see docs/capture.md, Cost).
///
/// At the syscall's exit only: its arguments are still in the task's saved user
/// registers, so no enter probe has to stash them (an enter tracepoint and a stash
/// insert and delete per write cost more than everything else together).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn raw_sys_exit(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long ret)
    let ret: i64 = ctx.arg(1);
    if ret <= 0 {
        return 0;
    }
    let k = config!(kernel);
    // SAFETY: the current task and its saved user registers, BTF-typed pointers the
    // kernel reads fault-safely; the offsets are their members' from BTF.
    let task = unsafe { bpf_get_current_task_btf() };
    let regs = unsafe { bpf_task_pt_regs(task) as *const u8 };
    let arg = |off: u32| unsafe { read_volatile(regs.add(off as usize).cast::<u64>()) };
    let nr = arg(k.regs_nr);
    if nr != NR_WRITE && nr != NR_WRITEV {
        return 0;
    }
    // A 32-bit syscall (ia32 task, or int 0x80) numbers and passes its arguments
    // otherwise: its 1 and 20 are exit and getpid.
    let status: u32 =
        unsafe { read_volatile((task as *const u8).add(k.task_ti_status as usize).cast()) };
    if status & TS_COMPAT != 0 {
        return 0;
    }
    let args = || Ok([arg(k.regs_arg0), arg(k.regs_arg1), arg(k.regs_arg2)]);
    if nr == NR_WRITE {
        let _ = try_sys_exit::<false, false>(ret, args);
    } else if nr == NR_WRITEV {
        let _ = try_sys_exit::<true, false>(ret, args);
    }
    0
}

/// `raw_syscalls:sys_exit` for kernels 5.8–5.14, where [`raw_sys_exit`] does not load
/// (`bpf_task_pt_regs` is 5.15, `bpf_get_current_task_btf` 5.11, the fetch-add 5.12):
/// the same checks and copies with 5.8's helpers and instructions only.
///
/// The registers come from the tracepoint's own first argument, the `struct pt_regs *`
/// the syscall exit passes (the task's saved user registers, the same ones
/// `bpf_task_pt_regs` returns), read with probe reads: an untyped pointer for the
/// verifier. The syscall's arguments are still there at its exit (x86-64 keeps them in
/// the saved registers; only `ax` receives the result), so no enter probe and no
/// stash are needed either. The offset is taken by [`sequence_exact`].
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn compat_sys_exit(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long ret)
    let ret: i64 = ctx.arg(1);
    if ret <= 0 {
        return 0;
    }
    let k = config!(kernel);
    let regs: u64 = ctx.arg(0);
    // SAFETY: bpf_probe_read_kernel checks the address.
    let arg = |off: u32| unsafe { bpf_probe_read_kernel((regs + off as u64) as *const u64) };
    let Ok(nr) = arg(k.regs_nr) else {
        return 0;
    };
    if nr != NR_WRITE && nr != NR_WRITEV {
        return 0;
    }
    let args = || {
        // A 32-bit syscall (ia32 task, or int 0x80) numbers and passes its arguments
        // otherwise: its 1 and 20 are exit and getpid. Read only for a watched
        // cgroup's writes (one probe read).
        // SAFETY: bpf_probe_read_kernel checks the address.
        let status: u32 = unsafe {
            let task = bpf_get_current_task() as *const u8;
            bpf_probe_read_kernel(task.add(k.task_ti_status as usize).cast())?
        };
        if status & TS_COMPAT != 0 {
            return Err(-1);
        }
        Ok([arg(k.regs_arg0)?, arg(k.regs_arg1)?, arg(k.regs_arg2)?])
    };
    if nr == NR_WRITE {
        let _ = try_sys_exit::<false, true>(ret, args);
    } else if nr == NR_WRITEV {
        let _ = try_sys_exit::<true, true>(ret, args);
    }
    0
}

/// A write or writev of `ret` > 0 bytes; `args` gives its fd, buffer and (writev)
/// iovec count, read only for a task of a watched cgroup. `COMPAT`: the 5.8 variant
/// (see [`compat_sys_exit`]).
#[inline(always)]
fn try_sys_exit<const WRITEV: bool, const COMPAT: bool>(
    ret: i64,
    args: impl FnOnce() -> Result<[u64; 3], i32>,
) -> Result<(), i32> {
    // SAFETY: no arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if LOGTAP_WATCHED.get_ptr(&cgroup_id).is_none() {
        return Ok(());
    }
    let [fd, buf, vlen] = args()?;
    // Any fd: `exec 3>&1` or nginx's `access_log /dev/stdout` write to the stream
    // through another descriptor of the same pipe.
    let key = fd_stream_key::<COMPAT>(fd)?;
    let Some(state) = LOGTAP_STREAMS.get_ptr_mut(&key) else {
        // Not the container's stdout/stderr: e.g. `head` in `head | cat`.
        return Ok(());
    };
    let accepted = ret as u64;
    let pid_tgid = bpf_get_current_pid_tgid();
    let sequenced = if COMPAT {
        sequence_exact(state, accepted, pid_tgid)
    } else {
        sequence(state, accepted, pid_tgid)
    };
    let Some((st, hdr)) = sequenced else {
        return Ok(());
    };
    // Each exit program carries only its own copy loop: the verifier walks every path.
    if WRITEV {
        let Some(stash) = LOGTAP_IOVSCR.get_ptr_mut(0) else {
            return Ok(());
        };
        // SAFETY: this CPU's scratch; a program does not run twice at once on one CPU.
        unsafe {
            (*stash).vec = buf;
            (*stash).vlen = vlen;
        }
        copy_iovecs(st, &hdr, stash, accepted);
    } else {
        copy_buffer(st, &hdr, buf, 0, accepted, record_budget());
    }
    Ok(())
}

/// Takes `accepted` bytes of the stream `state` (an atomic fetch-add on its offset, so
/// writers on other CPUs get the bytes after them) and returns the header of their
/// records.
#[inline(always)]
fn sequence(
    state: *mut StreamState,
    accepted: u64,
    pid_tgid: u64,
) -> Option<(&'static mut Stats, DataHeader)> {
    // SAFETY: a map value stays valid for the program's run; the offset is only ever
    // changed atomically (here and by concurrent writers on other CPUs).
    let offset = unsafe { fetch_add(addr_of_mut!((*state).offset), accepted) };
    let st = stats()?;
    st[STAT_SYSCALLS] += 1;
    Some((st, header(state, offset, pid_tgid)))
}

/// [`sequence`] without `BPF_FETCH` (kernels before 5.12 have only the plain atomic
/// add): the offset is read, `accepted` added atomically, the offset read again.
/// `None` when the offset of the bytes is not certain.
///
/// # Why the offset is exact or not given at all
///
/// Every change of the offset is an atomic add of a positive number (userspace only
/// ever inserts a stream, at 0). All accesses to one memory location are seen by
/// every CPU in one order that agrees with each CPU's program order (coherence, which
/// every architecture the kernel runs on gives, the Linux memory model's rule for a
/// single location). In that order the first read sees some value `b`, this add comes
/// after it and the second read sees a value `a` at or after this add. So `a − b` is
/// the sum of the adds between, this one included: it is exactly `accepted` only if no
/// other write's add came between, and then the bytes are `b .. b + accepted`. When
/// another writer's add came between (two writers to one pipe returning at the same
/// instant on two CPUs) the bytes are somewhere in `b .. a`, which is not enough:
/// they are not sent, counted as [`DROP_CONCURRENT`], and the offset has still moved
/// past them, so userspace sees a hole of exactly their length and repairs it from the
/// CRI log. The other writer's own window may not contain this add: then its offset is
/// certain and its bytes are sent.
#[inline(always)]
fn sequence_exact(
    state: *mut StreamState,
    accepted: u64,
    pid_tgid: u64,
) -> Option<(&'static mut Stats, DataHeader)> {
    // SAFETY: a map value stays valid for the program's run; the offset is only ever
    // changed atomically (here and by concurrent writers on other CPUs). Volatile: the
    // compiler keeps both reads, on either side of the add.
    let (before, after) = unsafe {
        let offset = addr_of_mut!((*state).offset);
        let before = read_volatile(offset);
        xadd(offset, accepted);
        (before, read_volatile(offset))
    };
    let st = stats()?;
    st[STAT_SYSCALLS] += 1;
    if after.wrapping_sub(before) != accepted {
        drop_bytes(
            st,
            DROP_CONCURRENT,
            accepted.div_ceil(RECORD_PAYLOAD as u64),
            accepted,
        );
        return None;
    }
    Some((st, header(state, before, pid_tgid)))
}

/// The header of the records of a write whose first byte is at `offset` of `state`.
#[inline(always)]
fn header(state: *const StreamState, offset: u64, pid_tgid: u64) -> DataHeader {
    // SAFETY: a map value stays valid for the program's run; these fields are written
    // once, at the bind.
    let (cgroup_id, stream) = unsafe { ((*state).cgroup_id, (*state).stream) };
    DataHeader {
        kind: KIND_DATA,
        stream,
        cgroup_id,
        offset,
        // SAFETY: no arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        tgid: (pid_tgid >> 32) as u32,
        len: 0,
    }
}

/// The registered stream a `struct file` writes to, if any.
///
/// Plain loads through the trampoline's typed `struct file *` argument: the verifier
/// knows the types from the kernel's BTF and turns them into fault-safe loads, no
/// helper call. The offsets are `.rodata` constants, so it checks each against the
/// struct's layout. The filter slot is looked at before anything else is read: that is
/// all a write to an unwatched file costs.
#[inline(always)]
fn file_stream(file: *const u8) -> Option<*mut StreamState> {
    let k = config!(kernel);
    // SAFETY: BTF-typed kernel pointers; the kernel catches a fault on any of them.
    unsafe {
        let inode: *const u8 = read_volatile(file.add(k.file_inode as usize).cast());
        let ino: u64 = read_volatile(inode.add(k.inode_ino as usize).cast());
        match LOGTAP_INOS.get(ino_slot(ino)) {
            Some(&mark) if mark != 0 => {}
            _ => return None,
        }
        let sb: *const u8 = read_volatile(inode.add(k.inode_sb as usize).cast());
        let dev: u32 = read_volatile(sb.add(k.sb_dev as usize).cast());
        LOGTAP_STREAMS.get_ptr_mut(&StreamKey {
            ino,
            dev: dev as u64,
        })
    }
}

/// `ssize_t vfs_write(struct file *, const char __user *buf, size_t, loff_t *)`: every
/// write(2) (and pwrite(2), which a pipe refuses before this point).
#[fexit(function = "vfs_write")]
pub fn vfs_write_exit(ctx: FExitContext) -> u32 {
    let _ = try_vfs_write_exit(&ctx);
    0
}

#[inline(always)]
fn try_vfs_write_exit(ctx: &FExitContext) -> Result<(), i32> {
    let ret: i64 = ctx.ret()?;
    if ret <= 0 {
        return Ok(());
    }
    let Some(state) = file_stream(ctx.arg(0)) else {
        return Ok(());
    };
    let accepted = ret as u64;
    let Some((st, hdr)) = sequence(state, accepted, bpf_get_current_pid_tgid()) else {
        return Ok(());
    };
    copy_buffer(st, &hdr, ctx.arg(1), 0, accepted, record_budget());
    Ok(())
}

/// `ssize_t vfs_writev(struct file *, const struct iovec __user *vec, unsigned long vlen,
/// loff_t *, rwf_t)`: writev(2) (and pwritev2(2) at the current position).
#[fexit(function = "vfs_writev")]
pub fn vfs_writev_exit(ctx: FExitContext) -> u32 {
    let _ = try_vfs_writev_exit(&ctx);
    0
}

#[inline(always)]
fn try_vfs_writev_exit(ctx: &FExitContext) -> Result<(), i32> {
    let ret: i64 = ctx.ret()?;
    if ret <= 0 {
        return Ok(());
    }
    let Some(state) = file_stream(ctx.arg(0)) else {
        return Ok(());
    };
    let Some(stash) = LOGTAP_IOVSCR.get_ptr_mut(0) else {
        return Ok(());
    };
    let accepted = ret as u64;
    let Some((st, hdr)) = sequence(state, accepted, bpf_get_current_pid_tgid()) else {
        return Ok(());
    };
    // SAFETY: this CPU's scratch; the kernel does not run this program twice at once on
    // one CPU.
    unsafe {
        (*stash).vec = ctx.arg(1);
        (*stash).vlen = ctx.arg(2);
    }
    copy_iovecs(st, &hdr, stash, accepted);
    Ok(())
}

#[inline(always)]
fn record_budget() -> u64 {
    let m = config!(max_records) as u64;
    if m == 0 {
        1
    } else if m > MAX_RECORDS_LIMIT as u64 {
        MAX_RECORDS_LIMIT as u64
    } else {
        m
    }
}

/// Copies `len` bytes at user address `src` — stream bytes `hdr.offset + at ..` — into
/// at most `budget` records; the rest is a `too_large` gap. Returns the records used.
#[inline(always)]
fn copy_buffer(st: &mut Stats, hdr: &DataHeader, src: u64, at: u64, len: u64, budget: u64) -> u64 {
    let chunk = RECORD_PAYLOAD as u64;
    let needed = len.div_ceil(chunk);
    let records = if needed > budget { budget } else { needed };
    for i in 0..MAX_RECORDS_LIMIT as u64 {
        if i >= records {
            break;
        }
        let off = i * chunk;
        let offset = hdr.offset + at + off;
        if i + 1 < records {
            emit::<RECORD_PAYLOAD>(st, hdr, src + off, offset, chunk);
        } else {
            emit_sized(st, hdr, src + off, offset, len - off);
        }
    }
    let covered = records * chunk;
    if len > covered {
        drop_bytes(st, DROP_TOO_LARGE, needed - records, len - covered);
    }
    records
}

/// writev: one record per step, walking the iovecs until the `accepted` bytes are
/// covered or the record budget is spent.
///
/// One flat loop whose whole state lives in an [`IovWalk`], i.e. in map memory, which the
/// verifier does not track: every path of a step reaches the next step's head in the
/// same verifier state, so it prunes them (nested iovec × record loops with the state in
/// registers exceeded the 1M instruction limit).
#[inline(always)]
fn copy_iovecs(st: &mut Stats, hdr: &DataHeader, walk: *mut IovWalk, accepted: u64) {
    // SAFETY (all derefs of `walk`): this CPU's map value for the whole program run.
    let (vec, vlen) = unsafe {
        (*walk).walked = 0;
        (*walk).iov_walked = 0;
        (*walk).iov_index = 0;
        (*walk).budget = record_budget() as u32;
        ((*walk).vec, (*walk).vlen)
    };
    // Each step emits a record or moves to the next iovec.
    for _ in 0..(MAX_RECORDS_LIMIT + MAX_IOVECS) {
        let (done, in_iov, index, budget) = unsafe {
            (
                read_volatile(&(*walk).walked),
                read_volatile(&(*walk).iov_walked),
                read_volatile(&(*walk).iov_index) as u64,
                read_volatile(&(*walk).budget),
            )
        };
        if done >= accepted || budget == 0 || index >= vlen || index >= MAX_IOVECS as u64 {
            break;
        }
        // struct iovec { void *iov_base; size_t iov_len; }
        let Ok(iov) = (unsafe { bpf_probe_read_user((vec + index * 16) as *const [u64; 2]) })
        else {
            let rest = accepted - done;
            drop_bytes(st, DROP_FAULT, rest.div_ceil(RECORD_PAYLOAD as u64), rest);
            unsafe { (*walk).walked = accepted };
            return;
        };
        if in_iov >= iov[1] {
            unsafe {
                (*walk).iov_index = index as u32 + 1;
                (*walk).iov_walked = 0;
            }
            continue;
        }
        let mut n = iov[1] - in_iov;
        if n > accepted - done {
            n = accepted - done;
        }
        if n > RECORD_PAYLOAD as u64 {
            n = RECORD_PAYLOAD as u64;
        }
        emit_sized(st, hdr, iov[0] + in_iov, hdr.offset + done, n);
        unsafe {
            (*walk).walked = done + n;
            (*walk).iov_walked = in_iov + n;
            (*walk).budget = budget - 1;
        }
    }
    let done = unsafe { read_volatile(&(*walk).walked) };
    if accepted > done {
        // Over the record budget, or more iovecs than MAX_IOVECS.
        let rest = accepted - done;
        drop_bytes(
            st,
            DROP_TOO_LARGE,
            rest.div_ceil(RECORD_PAYLOAD as u64),
            rest,
        );
    }
}

/// Record layout of a size class: header + `N` payload bytes (`len` of them valid).
#[repr(C)]
struct Record<const N: usize> {
    hdr: DataHeader,
    data: [u8; N],
}

/// Picks the smallest size class for `n` (≤ 4 KiB) bytes: `bpf_ringbuf_reserve` needs a
/// constant size, and small lines should not cost 4 KiB of ring each.
#[inline(always)]
fn emit_sized(st: &mut Stats, hdr: &DataHeader, src: u64, offset: u64, n: u64) {
    if n <= 128 {
        emit::<128>(st, hdr, src, offset, n)
    } else if n <= 512 {
        emit::<512>(st, hdr, src, offset, n)
    } else {
        emit::<RECORD_PAYLOAD>(st, hdr, src, offset, n)
    }
}

/// One data record of `n` (≤ N) bytes copied from user address `src`.
#[inline(always)]
fn emit<const N: usize>(st: &mut Stats, hdr: &DataHeader, src: u64, offset: u64, n: u64) {
    let Some(mut entry) = LOGTAP_RING.reserve::<Record<N>>(0) else {
        drop_bytes(st, DROP_RING_FULL, 1, n);
        return;
    };
    let rec = entry.as_mut_ptr();
    let n = clamp::<N>(n);
    // SAFETY: `n` ≤ N bytes into the reserved record; the source is probe-read.
    let ret = unsafe {
        probe_read_user_raw(
            addr_of_mut!((*rec).data).cast::<c_void>(),
            n as u32,
            src as *const c_void,
        )
    };
    if ret != 0 {
        entry.discard(0);
        drop_bytes(st, DROP_FAULT, 1, n);
        return;
    }
    let mut h = *hdr;
    h.offset = offset;
    h.len = n as u32;
    // SAFETY: within the reserved record.
    unsafe { addr_of_mut!((*rec).hdr).write(h) };
    entry.submit(data_wakeup());
    st[STAT_RECORDS] += 1;
    st[STAT_BYTES] += n;
}

/// Data records do not wake the agent one by one: with the agent caught up, the
/// default would wake it on every record, which costs every `write` of the container
/// an interrupt (a hypervisor exit in a VM) and the agent a context switch — the
/// writer ran 8× slower with 100-byte lines. The agent polls every 50 ms anyway; it is
/// woken early only once a quarter of the ring is waiting. Lifecycle records keep the
/// default wakeup: they are rare, and a container's end should be seen at once.
#[inline(always)]
fn data_wakeup() -> u64 {
    let waiting = LOGTAP_RING.query(BPF_RB_AVAIL_DATA as u64);
    let size = LOGTAP_RING.query(BPF_RB_RING_SIZE as u64);
    if waiting >= size / 4 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Reserves a lifecycle record with every field but `path` set; `None` (counted) when the
/// ring is full.
#[inline(always)]
fn lifecycle(
    kind: u32,
    cgroup_id: u64,
) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<LifecycleRecord>> {
    let Some(mut entry) = LOGTAP_RING.reserve::<LifecycleRecord>(0) else {
        if let Some(st) = stats() {
            st[STAT_LOST_EVENTS] += 1;
        }
        return None;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: field writes within the reserved record.
    unsafe {
        addr_of_mut!((*rec).kind).write(kind);
        addr_of_mut!((*rec).stream).write(0);
        addr_of_mut!((*rec).cgroup_id).write(cgroup_id);
        addr_of_mut!((*rec).ktime_ns).write(bpf_ktime_get_ns());
        addr_of_mut!((*rec).tgid).write((bpf_get_current_pid_tgid() >> 32) as u32);
        addr_of_mut!((*rec).group_dead).write(0);
        addr_of_mut!((*rec).key).write(StreamKey::default());
        addr_of_mut!((*rec).path_len).write(0);
        addr_of_mut!((*rec)._pad).write(0);
    }
    Some(entry)
}

/// Copies the `__data_loc char[]` string at tracepoint field `loc_off` into the record.
#[inline(always)]
fn fill_path(ctx: &TracePointContext, loc_off: u32, rec: *mut LifecycleRecord) {
    // __data_loc: low 16 bits = offset of the string from the start of the record.
    let loc: u32 = unsafe { ctx.read_at(loc_off as usize) }.unwrap_or(0);
    let src = unsafe { ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize) };
    // SAFETY: at most PATH_CAPACITY bytes into the record's path; the source is probe-read.
    let n = unsafe {
        bpf_probe_read_kernel_str(
            addr_of_mut!((*rec).path).cast::<c_void>(),
            PATH_CAPACITY as u32,
            src.cast::<c_void>(),
        )
    };
    // The helper counts the NUL it wrote.
    let len = if n > 0 { n as u32 - 1 } else { 0 };
    unsafe { addr_of_mut!((*rec).path_len).write(len) };
}

#[tracepoint]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    let _ = try_cgroup_mkdir(&ctx);
    0
}

#[inline(always)]
fn try_cgroup_mkdir(ctx: &TracePointContext) -> Result<(), i32> {
    // Hierarchy 0 is the cgroup v2 hierarchy; the others are v1 controllers.
    let root: i32 = unsafe { ctx.read_at(config!(tp.mkdir_root) as usize)? };
    if root != 0 {
        return Ok(());
    }
    let cgroup_id = read_cgroup_id(ctx, config!(tp.mkdir_id))?;
    if !under_prefix(ctx, config!(tp.mkdir_path)) {
        return Ok(());
    }
    let watched = WatchedCgroup { bound: 0, _pad: 0 };
    LOGTAP_WATCHED.insert(&cgroup_id, &watched, BPF_NOEXIST as u64)?;
    if let Some(mut entry) = lifecycle(KIND_CGROUP_CREATED, cgroup_id) {
        fill_path(ctx, config!(tp.mkdir_path), entry.as_mut_ptr());
        entry.submit(0);
    }
    debug!(ctx, "watching new cgroup {}", cgroup_id);
    Ok(())
}

/// The cgroup tracepoints' `id` at `offset`: a `u64`, or an `int` on kernels that
/// keep it one (`tp.cgroup_id_size`), where reading 8 bytes would take the next
/// field (`level`) as the id's upper half.
#[inline(always)]
fn read_cgroup_id(ctx: &TracePointContext, offset: u32) -> Result<u64, i32> {
    if config!(tp.cgroup_id_size) == 4 {
        let low: u32 = unsafe { ctx.read_at(offset as usize)? };
        Ok(u64::from(low))
    } else {
        unsafe { ctx.read_at(offset as usize) }
    }
}

/// Whether the `__data_loc` path at `loc_off` is strictly below the configured prefix.
#[inline(always)]
fn under_prefix(ctx: &TracePointContext, loc_off: u32) -> bool {
    let mut path = [0u8; PREFIX_CAPACITY + 2];
    let loc: u32 = match unsafe { ctx.read_at(loc_off as usize) } {
        Ok(loc) => loc,
        Err(_) => return false,
    };
    let src = unsafe { ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize) };
    // SAFETY: bounded by the buffer's length; the source is probe-read.
    let n = unsafe {
        bpf_probe_read_kernel_str(
            path.as_mut_ptr().cast::<c_void>(),
            path.len() as u32,
            src.cast::<c_void>(),
        )
    };
    if n <= 0 {
        return false;
    }
    let prefix_len = clamp::<PREFIX_CAPACITY>(config!(prefix_len) as u64) as usize;
    for i in 0..PREFIX_CAPACITY {
        if i >= prefix_len {
            break;
        }
        if path[i] != config!(cgroup_prefix[i]) {
            return false;
        }
    }
    // A component boundary: "/kubepods" does not match "/kubepods-other".
    path.get(prefix_len) == Some(&b'/')
}

#[tracepoint]
pub fn cgroup_rmdir(ctx: TracePointContext) -> u32 {
    let _ = try_cgroup_rmdir(&ctx);
    0
}

#[inline(always)]
fn try_cgroup_rmdir(ctx: &TracePointContext) -> Result<(), i32> {
    let root: i32 = unsafe { ctx.read_at(config!(tp.rmdir_root) as usize)? };
    if root != 0 {
        return Ok(());
    }
    let cgroup_id = read_cgroup_id(ctx, config!(tp.rmdir_id))?;
    if LOGTAP_WATCHED.remove(&cgroup_id).is_err() {
        return Ok(());
    }
    // The streams stay until userspace forgets the cgroup: their last records may still
    // be in flight, and the kernel cannot walk a map before 5.13.
    if let Some(mut entry) = lifecycle(KIND_CGROUP_REMOVED, cgroup_id) {
        fill_path(ctx, config!(tp.rmdir_path), entry.as_mut_ptr());
        entry.submit(0);
    }
    Ok(())
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let _ = try_sched_process_exec(&ctx);
    0
}

#[inline(always)]
fn try_sched_process_exec(ctx: &TracePointContext) -> Result<(), i32> {
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(watched) = LOGTAP_WATCHED.get_ptr_mut(&cgroup_id) else {
        return Ok(());
    };
    if let Some(mut entry) = lifecycle(KIND_EXEC, cgroup_id) {
        fill_path(ctx, config!(tp.exec_filename), entry.as_mut_ptr());
        entry.submit(0);
    }
    // SAFETY: a map value; a racing exec binding too is harmless (BPF_NOEXIST below).
    unsafe {
        if (*watched).bound != 0 {
            return Ok(());
        }
        (*watched).bound = 1;
    }
    // The container's first process: its fd 1 and fd 2 are the runtime's pipes.
    bind_stream(ctx, cgroup_id, 1);
    bind_stream(ctx, cgroup_id, 2);
    Ok(())
}

#[inline(always)]
fn bind_stream(ctx: &TracePointContext, cgroup_id: u64, fd: u64) {
    let Ok((key, mode)) = fd_file(fd) else {
        return;
    };
    // Only pipes: a terminal or /dev/null is not a container log stream (and /dev/null
    // would be shared by every container).
    if mode & S_IFMT != S_IFIFO {
        return;
    }
    let state = StreamState {
        cgroup_id,
        offset: 0,
        stream: fd as u32,
        origin: ORIGIN_FIRST_EXEC,
    };
    // Before the stream exists: the write hooks look at the filter first.
    if let Some(mark) = LOGTAP_INOS.get_ptr_mut(ino_slot(key.ino)) {
        // SAFETY: an array slot; every writer stores the same value.
        unsafe { *mark = 1 };
    }
    // NOEXIST: fd 2 may be the same pipe as fd 1 (2>&1); it stays stdout.
    if LOGTAP_STREAMS
        .insert(&key, &state, BPF_NOEXIST as u64)
        .is_err()
    {
        return;
    }
    if let Some(mut entry) = lifecycle(KIND_STREAM_BOUND, cgroup_id) {
        let rec = entry.as_mut_ptr();
        unsafe {
            addr_of_mut!((*rec).stream).write(fd as u32);
            addr_of_mut!((*rec).key).write(key);
        }
        entry.submit(0);
    }
    info!(
        ctx,
        "cgroup {} stream {} bound to pipe inode {}", cgroup_id, fd, key.ino
    );
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if LOGTAP_WATCHED.get_ptr(&cgroup_id).is_none() {
        return 0;
    }
    let offset = config!(tp.exit_group_dead);
    let group_dead = if offset == 0 {
        GROUP_DEAD_UNKNOWN
    } else {
        u32::from(unsafe { ctx.read_at::<u8>(offset as usize) }.unwrap_or(0))
    };
    if let Some(mut entry) = lifecycle(KIND_EXIT, cgroup_id) {
        unsafe { addr_of_mut!((*entry.as_mut_ptr()).group_dead).write(group_dead) };
        entry.submit(0);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

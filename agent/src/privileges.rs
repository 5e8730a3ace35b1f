//! Least privilege: what the agent gives away through its files, and what it keeps of
//! its capabilities once the eBPF probes are loaded. See `docs/security.md`.
//!
//! - [`private_files`]: everything the agent creates is private to its user (umask
//!   `077`: directories 0700, files 0600), and the data directory, stores and spools
//!   already there are tightened at start, with a warning. The store holds every line
//!   collected, from every pod of the node: readable by the agent's user only.
//! - [`drop_capabilities`]: after the probes are loaded, and before the sinks start
//!   (librdkafka's threads block every signal, so they must be born without), every
//!   capability but [`steady_state_capabilities`] is dropped from the effective,
//!   permitted, inheritable and bounding sets of **every thread**, and
//!   `PR_SET_NO_NEW_PRIVS` is set.
//!
//! # Threads
//!
//! Linux keeps capabilities per thread, and `capset(2)` changes only the caller's.
//! Threads started earlier (the metrics server's and the Kubernetes and CRI clients'
//! tokio workers) are each made to drop their own: a real-time signal whose handler
//! does the same syscalls, sent with `tgkill` to every thread of the process that does
//! not show the target sets in `/proc/self/task/<tid>/status` yet, until all do (what
//! libcap's `psx` does for C). Threads started later inherit the dropped sets.
//! io_uring's kernel workers (`iou-wrk-*`, `iou-sqp-*`) take no signals and are not
//! asked; they run each request with the credentials of the thread that submitted it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::{Config, SinkConfig};

/// `CAP_DAC_READ_SEARCH`: read any file and search any directory.
pub const CAP_DAC_READ_SEARCH: u32 = 2;
/// `CAP_SETPCAP`: needed to drop from the bounding set.
const CAP_SETPCAP: u32 = 8;
/// `CAP_SYS_PTRACE`: `/proc/<pid>/root` and `/proc/<pid>/fd` of other users' processes.
pub const CAP_SYS_PTRACE: u32 = 19;
/// `CAP_BPF` (Linux 5.8+).
pub const CAP_BPF: u32 = 39;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The signal whose handler drops a thread's capabilities (glibc keeps the first
/// real-time signals for itself; nothing else in the agent uses this one).
fn drop_signal() -> libc::c_int {
    libc::SIGRTMIN() + 5
}

/// Makes every file and directory the agent creates private to its user, and
/// tightens the data directory, stores and spools already there (each entry with
/// group or other bits loses them; a warning says how many and where).
pub fn private_files(config: &Config) {
    // SAFETY: umask(2) cannot fail.
    unsafe { libc::umask(0o077) };
    let mut trees: Vec<&Path> = vec![&config.data_dir];
    for sink in config.sinks.values() {
        match sink {
            SinkConfig::Store { path, .. } => trees.push(path),
            SinkConfig::Kafka(_) | SinkConfig::Otlp(_) => {
                if let Some((path, _)) = sink.exclusive_path() {
                    trees.push(path);
                }
            }
            _ => {}
        }
    }
    for tree in trees {
        let tightened = tighten(tree);
        if let Some(first) = tightened.changed.first() {
            tracing::warn!(
                dir = %tree.display(),
                entries = tightened.changed.len(),
                example = %first.display(),
                "the agent's files were readable by other users: made private (directories 0700, files 0600)"
            );
        }
        for (path, e) in &tightened.failed {
            tracing::warn!(path = %path.display(), error = %e, "cannot make this file private");
        }
    }
}

/// What [`tighten`] changed and could not change.
#[derive(Debug, Default)]
pub struct Tightened {
    pub changed: Vec<PathBuf>,
    pub failed: Vec<(PathBuf, io::Error)>,
}

/// Removes the group and other bits of every directory and regular file under `root`
/// (itself included). Symlinks are neither followed nor changed.
pub fn tighten(root: &Path) -> Tightened {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Tightened::default();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
    {
        let ft = entry.file_type();
        if !(ft.is_dir() || ft.is_file()) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 == 0 {
            continue;
        }
        let path = entry.into_path();
        match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o700)) {
            Ok(()) => out.changed.push(path),
            Err(e) => out.failed.push((path, e)),
        }
    }
    out
}

/// The capabilities the agent needs once running, as a bit set (bit `n` =
/// capability `n`); docs/security.md says why each is kept.
pub fn steady_state_capabilities(capture_running: bool) -> u64 {
    let mut keep = (1u64 << CAP_DAC_READ_SEARCH) | (1u64 << CAP_SYS_PTRACE);
    // Before Linux 6.5, every bpf(2) command (the capture's map lookups and updates
    // too) needs CAP_BPF when unprivileged BPF is disabled; since, only creating maps
    // and loading programs do.
    if capture_running && kernel_before(6, 5) {
        keep |= 1u64 << CAP_BPF;
    }
    keep
}

fn kernel_before(major: u32, minor: u32) -> bool {
    // SAFETY: uname(2) fills the zeroed struct.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return true;
    }
    // SAFETY: `release` is NUL-terminated by the kernel.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    let mut parts = release
        .to_str()
        .unwrap_or("")
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found < (major, minor)
}

/// The set each thread keeps (bits), read by the signal handler.
static KEEP: AtomicU64 = AtomicU64::new(u64::MAX);
/// The highest capability number of the running kernel.
static LAST_CAP: AtomicU64 = AtomicU64::new(40);

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops the calling thread's capabilities to `KEEP` (what it is permitted of them)
/// and sets `PR_SET_NO_NEW_PRIVS`. Only async-signal-safe syscalls: it runs in the
/// signal handler. Returns whether `capset` succeeded.
fn drop_in_this_thread() -> bool {
    let keep = KEEP.load(Ordering::SeqCst);
    let last = LAST_CAP.load(Ordering::SeqCst);
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: prctl(2) and capget/capset(2) with valid pointers to local structs of
    // the sizes version 3 expects.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
            return false;
        }
        let permitted = u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32);
        if permitted & (1u64 << CAP_SETPCAP) != 0 {
            // Bounding set first: it needs CAP_SETPCAP, which goes next.
            for cap in 0..=last {
                if keep & (1u64 << cap) == 0 {
                    libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
                }
            }
        }
        let kept = permitted & keep;
        for (i, word) in data.iter_mut().enumerate() {
            let bits = (kept >> (32 * i)) as u32;
            *word = CapData {
                effective: bits,
                permitted: bits,
                // Empty inheritable also clears the ambient set.
                inheritable: 0,
            };
        }
        header.pid = 0;
        libc::syscall(libc::SYS_capset, &header, data.as_ptr()) == 0
    }
}

extern "C" fn on_drop_signal(_: libc::c_int) {
    // SAFETY: errno of this thread, saved and restored around the handler's syscalls.
    let errno = unsafe { *libc::__errno_location() };
    drop_in_this_thread();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// A thread's capability sets, from `/proc/self/task/<tid>/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadCaps {
    pub effective: u64,
    pub permitted: u64,
    pub bounding: u64,
    pub no_new_privs: bool,
}

/// Parses the `CapEff`, `CapPrm`, `CapBnd` and `NoNewPrivs` lines of a `status` file.
pub fn parse_status(status: &str) -> Option<ThreadCaps> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let hex = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
    Some(ThreadCaps {
        effective: hex("CapEff")?,
        permitted: hex("CapPrm")?,
        bounding: hex("CapBnd")?,
        no_new_privs: field("NoNewPrivs")? == "1",
    })
}

fn thread_caps(tid: &str) -> Option<ThreadCaps> {
    parse_status(&std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?)
}

/// Drops, in every thread of the process, every capability not in `keep` (bit set),
/// and sets `PR_SET_NO_NEW_PRIVS` (see the module docs). Returns the sets every
/// thread has now; an error names the threads that did not drop within a few seconds.
pub fn drop_capabilities(keep: u64) -> io::Result<ThreadCaps> {
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        && let Ok(last) = text.trim().parse::<u64>()
    {
        LAST_CAP.store(last.min(63), Ordering::SeqCst);
    }
    KEEP.store(keep, Ordering::SeqCst);
    // SAFETY: a handler that only makes async-signal-safe syscalls; SA_RESTART so
    // the syscalls it interrupts resume.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_drop_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(drop_signal(), &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if !drop_in_this_thread() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: gettid(2) has no preconditions.
    let me = unsafe { libc::gettid() }.to_string();
    let target =
        thread_caps(&me).ok_or_else(|| io::Error::other("reading this thread's status"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let behind = threads_behind(&target);
        if behind.is_empty() {
            return Ok(target);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "threads kept their capabilities: {}",
                behind.join(", ")
            )));
        }
        for tid in &behind {
            if let Ok(tid) = tid.parse::<libc::pid_t>() {
                // SAFETY: tgkill(2) to a thread of this process.
                unsafe {
                    libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, drop_signal());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The threads of this process whose sets are not `target` yet (io_uring's kernel
/// workers aside).
fn threads_behind(target: &ThreadCaps) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| t.file_name().into_string().ok())
        .filter(|tid| {
            let comm =
                std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
            // A thread that ended meanwhile has no status: not behind.
            !comm.starts_with("iou-") && thread_caps(tid).is_some_and(|c| c != *target)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn status_lines_parse() {
        let status = "Name:\tlogtap\nCapInh:\t0000000000000000\nCapPrm:\t0000000000080004\n\
                      CapEff:\t0000000000080004\nCapBnd:\t0000000000080004\nNoNewPrivs:\t1\n";
        assert_eq!(
            parse_status(status),
            Some(ThreadCaps {
                effective: 0x80004,
                permitted: 0x80004,
                bounding: 0x80004,
                no_new_privs: true,
            })
        );
        assert_eq!(parse_status("CapEff:\tzz\n"), None);
    }

    #[test]
    fn tighten_removes_group_and_other_bits_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join("store/segments")).unwrap();
        std::fs::write(root.join("store/segments/1.seg"), "x").unwrap();
        std::fs::write(root.join("private"), "x").unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        set(&root, 0o755);
        set(&root.join("store"), 0o775);
        set(&root.join("store/segments/1.seg"), 0o644);
        set(&root.join("private"), 0o600);
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "x").unwrap();
        set(&outside, 0o644);
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();

        let t = tighten(&root);
        assert!(t.failed.is_empty(), "{:?}", t.failed);
        // data, store, store/segments (0755 from create_dir_all), 1.seg.
        assert_eq!(t.changed.len(), 4, "{:?}", t.changed);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("store")), 0o700);
        assert_eq!(mode(&root.join("store/segments/1.seg")), 0o600);
        assert_eq!(mode(&root.join("private")), 0o600);
        assert_eq!(mode(&outside), 0o644, "a link's target is not touched");
        assert!(tighten(&root).changed.is_empty(), "nothing left to do");
    }

    #[test]
    fn kept_capabilities_are_read_search_and_ptrace() {
        let keep = steady_state_capabilities(false);
        assert_eq!(keep, (1 << 2) | (1 << 19));
        assert!(
            !kernel_before(2, 6),
            "any kernel this runs on is newer than 2.6"
        );
    }
}

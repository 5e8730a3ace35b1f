//! The probes kept across agent restarts: their maps and links pinned in bpffs.
//!
//! A pinned link keeps its program attached after the agent's process is gone, and a
//! pinned map keeps its contents: the streams and their offsets, the watched cgroups,
//! and the ring buffer, where the bytes containers write while no agent runs wait (up
//! to its size; beyond it they are counted as `ring_full` and become holes repaired
//! from the CRI log). The next agent opens the same maps and reads on where the last
//! one stopped reading (the ring's consumer position is the kernel's, in the map).
//!
//! # Layout
//!
//! `<pin_dir>/<stamp>/` holds one pin per map userspace reads ([`PINNED_MAPS`], by
//! map name) and one per link (`link_<program>`). `stamp` is 16 hex digits, a hash of
//! everything that decides what the pinned objects are and how userspace must read
//! them: the probe object (programs, map definitions, the `#[repr(C)]` contract it was
//! built with), the load-time config (kernel offsets, cgroup prefix, records per
//! write), the ring size and the hooks asked for. An agent whose stamp differs (an
//! upgrade that changed the probes, a changed `ring_size`) cannot use them: it removes
//! them, which detaches their programs once nothing else holds them, and loads fresh.
//!
//! # Invariants
//!
//! - A stamp directory is complete or removed: it is filled by an agent that has
//!   attached everything, and a directory missing one of its pins (a crash while
//!   pinning) is removed, never reused.
//! - At most one stamp directory is in `pin_dir` once an agent has started: every
//!   other one is removed first, so no two sets of programs capture the same writes.
//! - One agent at a time uses `pin_dir`: it holds an exclusive `flock(2)` on the
//!   directory for its whole life (released by the kernel when its process ends, a
//!   crash included). Two agents reading one ring would each see half the records.
//!   An agent that finds it held (a rollout with `maxSurge`, a restart racing its
//!   predecessor's shutdown) waits for it a bounded time ([`lock_waiting`]).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use logtap_ebpf_common::{
    BASES_MAP, INO_FILTER_MAP, ProbeConfig, RING_MAP, STATS_MAP, STREAMS_MAP, WATCHED_MAP,
};

use super::probe::HookMode;
use crate::config::CaptureHooks;

/// The maps userspace reads or writes, pinned by their names. The others (per-call
/// scratch, aya-log's buffer) live as long as the pinned programs that use them.
pub const PINNED_MAPS: [&str; 6] = [
    RING_MAP,
    WATCHED_MAP,
    STREAMS_MAP,
    INO_FILTER_MAP,
    STATS_MAP,
    BASES_MAP,
];

/// The pin of a link: `link_<program>`.
pub fn link_pin(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("link_{program}"))
}

/// The hash of the layout (see the module docs): FNV-1a 64, fixed across builds and
/// Rust versions, unlike `std`'s hasher.
pub fn layout_stamp(
    object: &[u8],
    config: &ProbeConfig,
    ring_bytes: u32,
    hooks: CaptureHooks,
) -> String {
    // SAFETY: `ProbeConfig` is `#[repr(C)]` of fixed-width integers and byte arrays
    // with no padding (the contract's rule), so all of its bytes are initialised.
    let config = unsafe {
        std::slice::from_raw_parts(
            (config as *const ProbeConfig).cast::<u8>(),
            size_of::<ProbeConfig>(),
        )
    };
    let hooks: &[u8] = match hooks {
        CaptureHooks::Auto => b"auto",
        CaptureHooks::Tracepoint => b"tracepoint",
        CaptureHooks::Compat => b"compat",
    };
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in [object, config, &ring_bytes.to_le_bytes(), hooks] {
        // The length first, so that no two different sequences of parts hash alike.
        for byte in (part.len() as u64).to_le_bytes().iter().chain(part) {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Makes `pin_dir` if needed and locks it for this process (see the module docs).
/// `WouldBlock`: another agent holds it.
pub fn lock(pin_dir: &Path) -> io::Result<OwnedFd> {
    std::fs::create_dir_all(pin_dir)?;
    let dir = std::fs::File::open(pin_dir)?;
    // SAFETY: flock(2) on a file descriptor this function owns.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(dir.into())
}

/// How often a held pin directory is tried again: its holder's exit is noticed within
/// this, and the retries cost nothing that matters.
const LOCK_RETRY: Duration = Duration::from_millis(100);

/// [`lock`], waiting while another process holds the directory: until it is free,
/// `limit` passed (`WouldBlock`, the holder still there) or `stop` answers true
/// (`Interrupted`). `on_wait` is called once, when the wait begins. Returns the lock
/// and how long it waited.
pub fn lock_waiting(
    pin_dir: &Path,
    limit: Duration,
    stop: &dyn Fn() -> bool,
    on_wait: impl FnOnce(),
) -> io::Result<(OwnedFd, Duration)> {
    let started = Instant::now();
    let mut on_wait = Some(on_wait);
    loop {
        match lock(pin_dir) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other.map(|lock| (lock, started.elapsed())),
        }
        let waited = started.elapsed();
        if waited >= limit {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("held by another process for {:.1} s", waited.as_secs_f64()),
            ));
        }
        if stop() {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "stopped while waiting for the pin directory",
            ));
        }
        if let Some(on_wait) = on_wait.take() {
            on_wait();
        }
        std::thread::sleep(LOCK_RETRY.min(limit - waited));
    }
}

/// What `pin_dir` holds for an agent whose stamp is `stamp`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// `<pin_dir>/<stamp>`, when present.
    pub current: Option<PathBuf>,
    /// Every other layout: other probes' or other settings'.
    pub stale: Vec<PathBuf>,
}

/// Whether a name of `pin_dir` is a layout (16 hex digits, see [`layout_stamp`]).
/// Nothing else there is logtap's: a bpffs root holds the kernel's own
/// `maps.debug` and `progs.debug`, and an operator may keep other pins beside.
fn is_layout(name: &std::ffi::OsStr) -> bool {
    name.len() == 16
        && name
            .as_encoded_bytes()
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Lists the layouts in `pin_dir` (absent: nothing pinned).
pub fn scan(pin_dir: &Path, stamp: &str) -> io::Result<Scan> {
    let mut scan = Scan::default();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(scan),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if !is_layout(&entry.file_name()) {
            continue;
        }
        if entry.file_name() == stamp {
            scan.current = Some(entry.path());
        } else {
            scan.stale.push(entry.path());
        }
    }
    scan.stale.sort();
    Ok(scan)
}

/// The hooks a complete stamp directory's links run on; `None` when a pin is missing.
/// `write_paths`: the programs of each hook mode's write path, the first complete one
/// wins (one stamp directory only ever holds one).
pub fn pinned_hooks(
    dir: &Path,
    lifecycle: &[&str],
    write_paths: &[(HookMode, &[&str])],
) -> Option<HookMode> {
    let all = |names: &[&str]| names.iter().all(|n| link_pin(dir, n).exists());
    if !PINNED_MAPS.iter().all(|m| dir.join(m).exists()) || !all(lifecycle) {
        return None;
    }
    write_paths
        .iter()
        .find(|(_, programs)| all(programs))
        .map(|(mode, _)| *mode)
}

/// Removes a pinned layout (a stamp directory, or a stray pin): its programs are
/// detached once no process holds them any more.
pub fn remove(path: &Path) -> io::Result<()> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes every pin in `pin_dir` (`pin: false`, uninstall). The directory stays: it
/// may be a mount point (the DaemonSet mounts the node's `/sys/fs/bpf/logtap` there).
/// Returns the layouts removed.
pub fn remove_all(pin_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let layouts = scan(pin_dir, "")?.stale;
    for path in &layouts {
        remove(path)?;
    }
    Ok(layouts)
}

/// Removes every pinned layout in `pin_dir` for the operator (`logtap unpin`:
/// uninstalling, or capture turned off), which detaches their programs and frees the
/// ring. Takes the directory's lock first, waiting up to `wait` for an agent that
/// holds it (`WouldBlock` past it): an agent holds its links open, so removing its
/// pins under it would detach nothing until it exits and would make it load afresh
/// next time. A missing `pin_dir` has nothing pinned (it is not created). Returns the
/// layouts removed.
pub fn unpin(pin_dir: &Path, wait: Duration) -> io::Result<Vec<PathBuf>> {
    if !pin_dir.try_exists()? {
        return Ok(Vec::new());
    }
    let (_lock, _) = lock_waiting(pin_dir, wait, &|| false, || {})?;
    remove_all(pin_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn the_stamp_changes_with_every_part_of_the_layout() {
        let config = ProbeConfig::INERT;
        let base = layout_stamp(b"object", &config, 1 << 24, CaptureHooks::Auto);
        assert_eq!(base.len(), 16);
        assert_eq!(
            base,
            layout_stamp(b"object", &config, 1 << 24, CaptureHooks::Auto)
        );
        let mut prefixed = config;
        prefixed.prefix_len = 3;
        for other in [
            layout_stamp(b"objecu", &config, 1 << 24, CaptureHooks::Auto),
            layout_stamp(b"object", &prefixed, 1 << 24, CaptureHooks::Auto),
            layout_stamp(b"object", &config, 1 << 23, CaptureHooks::Auto),
            layout_stamp(b"object", &config, 1 << 24, CaptureHooks::Tracepoint),
            layout_stamp(b"object", &config, 1 << 24, CaptureHooks::Compat),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn a_scan_tells_the_current_layout_from_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        let pins = dir.path().join("logtap");
        let (ours, other) = ("00112233445566aa", "ffeeddccbbaa9988");
        assert_eq!(scan(&pins, ours).unwrap(), Scan::default());
        std::fs::create_dir_all(pins.join(ours)).unwrap();
        std::fs::create_dir_all(pins.join(other)).unwrap();
        // Not logtap's: the kernel's iterators on a bpffs root, someone else's pins.
        for name in [
            "maps.debug",
            "progs.debug",
            "00112233445566AA",
            "0011223344556677x",
        ] {
            touch(&pins.join(name));
        }
        let found = scan(&pins, ours).unwrap();
        assert_eq!(found.current, Some(pins.join(ours)));
        assert_eq!(found.stale, vec![pins.join(other)]);
        assert_eq!(
            remove_all(&pins).unwrap(),
            vec![pins.join(ours), pins.join(other)]
        );
        assert_eq!(
            std::fs::read_dir(&pins).unwrap().count(),
            4,
            "others' are left"
        );
        assert!(
            remove_all(&pins).unwrap().is_empty(),
            "nothing left to remove"
        );
    }

    #[test]
    fn one_process_at_a_time_holds_the_pin_directory() {
        let dir = tempfile::tempdir().unwrap();
        let pins = dir.path().join("logtap");
        let held = lock(&pins).unwrap();
        // flock(2) locks belong to the open file: a second open is a second holder,
        // as another agent's would be.
        let e = lock(&pins).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
        drop(held);
        lock(&pins).unwrap();
    }

    #[test]
    fn a_held_directory_is_waited_for_a_bounded_time() {
        let dir = tempfile::tempdir().unwrap();
        let pins = dir.path().join("logtap");
        let never = || false;
        // Free: taken at once, nobody told of a wait.
        let (held, waited) =
            lock_waiting(&pins, Duration::ZERO, &never, || panic!("no wait")).unwrap();
        assert!(waited < Duration::from_secs(1));
        // Held past the limit: given up, the holder untouched.
        let mut told = 0;
        let e = lock_waiting(&pins, Duration::from_millis(250), &never, || told += 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
        assert_eq!(told, 1);
        // Asked to stop while waiting.
        let e = lock_waiting(&pins, Duration::from_secs(30), &|| true, || {}).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted, "{e}");
        // Released by its holder during the wait: taken then.
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let (_lock, waited) = lock_waiting(&pins, Duration::from_secs(30), &never, || {}).unwrap();
        holder.join().unwrap();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
    }

    #[test]
    fn a_layout_missing_a_pin_is_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path();
        let lifecycle = ["a", "b"];
        let write_paths: [(HookMode, &[&str]); 3] = [
            (HookMode::Fentry, &["w", "v"]),
            (HookMode::Tracepoint, &["t"]),
            (HookMode::Compat, &["c"]),
        ];
        let hooks = || pinned_hooks(layout, &lifecycle, &write_paths);
        assert_eq!(hooks(), None);
        for map in PINNED_MAPS {
            touch(&layout.join(map));
        }
        for program in ["a", "b"] {
            touch(&link_pin(layout, program));
        }
        assert_eq!(hooks(), None, "no write path");
        touch(&link_pin(layout, "c"));
        assert_eq!(hooks(), Some(HookMode::Compat));
        std::fs::remove_file(link_pin(layout, "c")).unwrap();
        touch(&link_pin(layout, "t"));
        assert_eq!(hooks(), Some(HookMode::Tracepoint));
        touch(&link_pin(layout, "w"));
        assert_eq!(
            hooks(),
            Some(HookMode::Tracepoint),
            "one trampoline of two is no trampoline path"
        );
        touch(&link_pin(layout, "v"));
        assert_eq!(hooks(), Some(HookMode::Fentry));
        std::fs::remove_file(layout.join(STREAMS_MAP)).unwrap();
        assert_eq!(hooks(), None);
    }

    #[test]
    fn unpin_removes_every_layout_once_no_agent_holds_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let pins = dir.path().join("logtap");
        assert_eq!(unpin(&pins, Duration::ZERO).unwrap(), Vec::<PathBuf>::new());
        assert!(!pins.exists(), "a missing directory is not created");
        let (a, b) = ("00112233445566aa", "ffeeddccbbaa9988");
        for layout in [a, b] {
            std::fs::create_dir_all(pins.join(layout)).unwrap();
            touch(&link_pin(&pins.join(layout), "raw_sys_exit"));
        }
        touch(&pins.join("someone-elses-pin"));
        let agent = lock(&pins).unwrap();
        let e = unpin(&pins, Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
        assert_eq!(scan(&pins, "").unwrap().stale.len(), 2, "left to the agent");
        drop(agent);
        assert_eq!(
            unpin(&pins, Duration::ZERO).unwrap(),
            vec![pins.join(a), pins.join(b)]
        );
        assert!(scan(&pins, "").unwrap().stale.is_empty());
        assert!(pins.join("someone-elses-pin").exists(), "not logtap's");
    }
}

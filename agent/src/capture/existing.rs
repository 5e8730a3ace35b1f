//! Containers that were running when the agent started: found by walking `/proc`.
//!
//! The probes see a container begin (its cgroup made, its first exec) only when they
//! are loaded by then. For the others, each process whose cgroup lies strictly below
//! the capture prefix is looked at; per cgroup, the process that started first is the
//! container's init (runc's final execve, holding the runtime's stdio pipes at fd 1
//! and 2: what [`super::Probes::watch_existing`] registers). Later processes of the
//! cgroup may have other fd 1s (`seq | cat`: `seq`'s is an internal pipe), and a
//! `kubectl exec` process has the exec session's pipes.
//!
//! Paths are those `/proc/<pid>/cgroup` shows, relative to the agent's cgroup
//! namespace: the same the kernel's cgroup paths are when the agent runs in the host's.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// A container's cgroup and its first process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningContainer {
    /// The cgroup's id (the inode of its directory).
    pub cgroup_id: u64,
    /// Its path below the cgroup v2 root, as `/proc` shows it.
    pub cgroup_path: Vec<u8>,
    /// The process that started first in it (the container's init).
    pub pid: u32,
}

/// Every cgroup strictly below `prefix` with a process in it, read from `proc`
/// (`/proc`); `cgroup_root` is the cgroup v2 mount, where a cgroup's id is read.
/// Processes that vanish during the walk are skipped.
pub fn running_containers(proc: &Path, cgroup_root: &Path, prefix: &str) -> Vec<RunningContainer> {
    // cgroup path → (start time, pid) of its earliest process.
    let mut first: HashMap<Vec<u8>, (u64, u32)> = HashMap::new();
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let Ok(cgroup) = std::fs::read(dir.join("cgroup")) else {
            continue;
        };
        let Some(path) = unified_path(&cgroup) else {
            continue;
        };
        if !below(path, prefix.as_bytes()) {
            continue;
        }
        let Some(started) = std::fs::read(dir.join("stat"))
            .ok()
            .and_then(|s| start_time(&s))
        else {
            continue;
        };
        let slot = first.entry(path.to_vec()).or_insert((started, pid));
        if (started, pid) < *slot {
            *slot = (started, pid);
        }
    }
    let mut found: Vec<RunningContainer> = first
        .into_iter()
        .filter_map(|(path, (_, pid))| {
            let relative = path.strip_prefix(b"/").unwrap_or(&path);
            let dir = cgroup_root
                .join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(relative));
            let cgroup_id = std::fs::metadata(dir).ok()?.ino();
            Some(RunningContainer {
                cgroup_id,
                cgroup_path: path,
                pid,
            })
        })
        .collect();
    found.sort_by_key(|c| c.pid);
    found
}

/// The paths (below `cgroup_root`, as `/proc` shows them) of the cgroups in `ids`
/// that exist now strictly below `prefix`: the directory whose inode is the id. For
/// cgroups the kernel watched before this agent (pinned probes), whose creation it
/// did not see.
pub fn cgroup_paths(
    cgroup_root: &Path,
    prefix: &str,
    ids: &std::collections::HashSet<u64>,
) -> HashMap<u64, Vec<u8>> {
    let prefix = prefix.trim_end_matches('/');
    let top = cgroup_root.join(prefix.trim_start_matches('/'));
    walkdir::WalkDir::new(&top)
        .min_depth(1)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_dir())
        .filter_map(|e| {
            let id = e.metadata().ok()?.ino();
            if !ids.contains(&id) {
                return None;
            }
            let relative = e.path().strip_prefix(cgroup_root).ok()?;
            let mut path = b"/".to_vec();
            path.extend_from_slice(relative.as_os_str().as_encoded_bytes());
            Some((id, path))
        })
        .collect()
}

/// The most stream bytes that can have been written before a bind without being in
/// the CRI log yet (the seam's window, see `seam`): the pipe's capacity, and what
/// containerd's shim and CRI logger hold between it and the log file — the shim's
/// 32 KiB copy buffer, the 64 KiB fifo to containerd, and containerd's line buffer
/// (16 KiB lines) — with room to spare for the log's growth while the bind is made.
/// `pipe`: `/proc/<pid>/fd/<n>`; a pipe whose capacity cannot be read counts as the
/// largest an unprivileged writer can set (1 MiB).
pub fn seam_window(pipe: &Path) -> u64 {
    const RUNTIME_BUFFERS: u64 = 192 * 1024;
    pipe_capacity(pipe).unwrap_or(1 << 20) + RUNTIME_BUFFERS
}

fn pipe_capacity(pipe: &Path) -> Option<u64> {
    // The write end: opening a pipe for reading would make the agent one of its
    // readers. Non-blocking, so a pipe without a reader fails at once (ENXIO).
    let file = File::options()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(pipe)
        .ok()?;
    // SAFETY: fcntl on an fd this function owns; F_GETPIPE_SZ takes no argument.
    let size = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETPIPE_SZ) };
    (size > 0).then_some(size as u64)
}

/// The cgroup v2 path of a `/proc/<pid>/cgroup` (the `0::` line).
fn unified_path(cgroup: &[u8]) -> Option<&[u8]> {
    cgroup
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"0::"))
}

/// Whether `path` lies strictly below `prefix`, at a path component boundary.
fn below(path: &[u8], prefix: &[u8]) -> bool {
    let prefix = prefix.strip_suffix(b"/").unwrap_or(prefix);
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() > 1 && rest[0] == b'/')
}

/// Field 22 of `/proc/<pid>/stat` (start time, clock ticks after boot). The command
/// name (field 2) may hold spaces and parentheses: fields are counted after its last `)`.
fn start_time(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    // After the name: field 3 (state) is the first; start time is field 22.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_lines_and_the_prefix_boundary() {
        let cgroup = b"12:memory:/old\n0::/kubepods/pod1/abc\n";
        assert_eq!(unified_path(cgroup), Some(&b"/kubepods/pod1/abc"[..]));
        assert_eq!(unified_path(b"1:name=systemd:/\n"), None);
        assert!(below(b"/kubepods/pod1/abc", b"/kubepods"));
        assert!(below(b"/kubepods/pod1", b"/kubepods/"));
        assert!(!below(b"/kubepods", b"/kubepods"), "strictly below");
        assert!(
            !below(b"/kubepods-other/x", b"/kubepods"),
            "a component boundary"
        );
        assert!(!below(b"/system.slice", b"/kubepods"));
    }

    #[test]
    fn a_watched_cgroup_is_found_by_its_directory_inode_below_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for cg in ["kubepods/pod1/c1", "kubepods/pod1/c2", "system.slice/s"] {
            std::fs::create_dir_all(root.join(cg)).unwrap();
        }
        let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
        let ids = [ino("kubepods/pod1/c2"), ino("system.slice/s"), 1]
            .into_iter()
            .collect();
        let found = cgroup_paths(root, "/kubepods/", &ids);
        assert_eq!(
            found,
            HashMap::from([(ino("kubepods/pod1/c2"), b"/kubepods/pod1/c2".to_vec())]),
            "outside the prefix and gone are not found"
        );
    }

    #[test]
    fn start_time_survives_a_name_with_spaces_and_parentheses() {
        let stat = b"4242 (we ird) (name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1234 56";
        assert_eq!(start_time(stat), Some(987654));
        assert_eq!(start_time(b"4242 (short) S 1"), None);
        assert_eq!(start_time(b"garbage"), None);
    }

    #[test]
    fn the_first_process_of_each_cgroup_below_the_prefix_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (proc, root) = (dir.path().join("proc"), dir.path().join("cgroup"));
        for cg in ["kubepods/pod1/c1", "kubepods/pod1/c2", "system.slice"] {
            std::fs::create_dir_all(root.join(cg)).unwrap();
        }
        // pid, cgroup, start time: c1's init (7) started before its child (3).
        for (pid, cg, started) in [
            (7u32, "/kubepods/pod1/c1", 100u64),
            (3, "/kubepods/pod1/c1", 150),
            (9, "/kubepods/pod1/c2", 120),
            (1, "/system.slice", 1),
            (11, "/kubepods", 5),
        ] {
            let p = proc.join(pid.to_string());
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("cgroup"), format!("0::{cg}\n")).unwrap();
            let fields = "S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0";
            std::fs::write(
                p.join("stat"),
                format!("{pid} (sh) {fields} {started} 1 1\n"),
            )
            .unwrap();
        }
        // A process gone mid-walk, and what is no process.
        std::fs::create_dir_all(proc.join("13")).unwrap();
        std::fs::create_dir_all(proc.join("self")).unwrap();
        let found = running_containers(&proc, &root, "/kubepods");
        let ino = |cg: &str| std::fs::metadata(root.join(cg)).unwrap().ino();
        assert_eq!(
            found,
            vec![
                RunningContainer {
                    cgroup_id: ino("kubepods/pod1/c1"),
                    cgroup_path: b"/kubepods/pod1/c1".to_vec(),
                    pid: 7,
                },
                RunningContainer {
                    cgroup_id: ino("kubepods/pod1/c2"),
                    cgroup_path: b"/kubepods/pod1/c2".to_vec(),
                    pid: 9,
                },
            ]
        );
    }

    #[test]
    fn the_window_counts_the_pipes_capacity() {
        let (read, write) = std::io::pipe().unwrap();
        let path = format!("/proc/self/fd/{}", write.as_raw_fd());
        // SAFETY: a valid pipe fd this test owns.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, 128 * 1024) };
        assert_eq!(seam_window(Path::new(&path)), (128 + 192) * 1024);
        drop((read, write));
        // The capacity cannot be read: the largest is assumed.
        assert_eq!(seam_window(Path::new("/nonexistent")), (1024 + 192) * 1024);
    }
}

//! Hostile input and least privilege against the real binary (docs/security.md): what
//! a user who can write into a watched directory can make the agent read, and what
//! the agent keeps of its privileges and gives away through its files.

mod common;

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// Rescans every half second, so a test sees several within a second or two.
const FAST_RESCAN: &str = "files: {rescan_interval: 500ms}\n";

fn append_lines(path: &Path, tag: &str, range: std::ops::Range<u32>) {
    let mut f = open_append(path);
    for i in range {
        writeln!(f, "{tag} {i}").unwrap();
    }
}

fn bodies(store: &Path) -> Vec<String> {
    if !store.is_dir() {
        return Vec::new();
    }
    store_records(store)
        .iter()
        .map(|r| String::from_utf8_lossy(&body_bytes(r)).into_owned())
        .collect()
}

fn count_of(bodies: &[String], tag: &str) -> usize {
    bodies.iter().filter(|b| b.starts_with(tag)).count()
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// `x.log -> <a file outside every watched directory>` (as `-> /etc/shadow` would be):
/// refused, counted once, logged once, none of it stored; the link a source allows
/// with `follow_symlinks` + `allowed_roots` and the plain files are collected.
#[test]
fn symlinks_leading_out_of_the_source_directories_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, linked, secret_dir, allowed) = (
        dir.path().join("logs"),
        dir.path().join("linked"),
        dir.path().join("secret"),
        dir.path().join("allowed"),
    );
    for d in [&logs, &linked, &secret_dir, &allowed] {
        std::fs::create_dir_all(d).unwrap();
    }
    let secret = secret_dir.join("shadow");
    std::fs::write(&secret, "SECRET root:$6$hash\n").unwrap();
    append_lines(&logs.join("good.log"), "good", 0..5);
    symlink(&secret, logs.join("x.log")).unwrap();
    symlink("../secret/shadow", logs.join("up.log")).unwrap();
    append_lines(&allowed.join("real.txt"), "allowed", 0..5);
    symlink(allowed.join("real.txt"), linked.join("y.log")).unwrap();
    // The same secret through a source that allows links, but not into `secret/`.
    symlink(&secret, linked.join("z.log")).unwrap();

    let config = format!(
        "{FAST_RESCAN}sources:\n\
         \x20 - name: plain\n    include: [\"{logs}/*.log\"]\n\
         \x20 - name: links\n    include: [\"{linked}/*.log\"]\n    follow_symlinks: true\n    allowed_roots: [\"{allowed}\"]\n\
         sinks:\n  local: {{type: store}}\n",
        logs = logs.display(),
        linked = linked.display(),
        allowed = allowed.display(),
    );
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    agent.wait_ready();
    // A link planted while the agent runs is refused as well.
    symlink(&secret, logs.join("late.log")).unwrap();
    append_lines(&logs.join("good.log"), "good", 5..10);
    append_lines(&allowed.join("real.txt"), "allowed", 5..10);
    wait_for(WAIT, "the plain and the allowed files collected", || {
        let b = bodies(&agent.store_dir());
        count_of(&b, "good") == 10 && count_of(&b, "allowed") == 10
    });
    let refused = |agent: &Agent| {
        metric(
            &agent.metrics(),
            "logtap_files_refused_total",
            &[("reason", "symlink")],
        )
    };
    wait_for(WAIT, "four refused links counted", || {
        refused(&agent) == 4.0
    });
    // Several rescans later: still counted and logged once per path.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(refused(&agent), 4.0, "{}", agent.metrics());
    let log = agent.log();
    for name in ["x.log", "up.log", "late.log", "z.log"] {
        let warnings = log
            .lines()
            .filter(|l| l.contains("refusing to read file") && l.contains(name))
            .count();
        assert_eq!(warnings, 1, "{name} logged once:\n{log}");
    }
    assert!(agent.stop(), "clean stop");
    let b = bodies(&agent.store_dir());
    assert!(
        b.iter().all(|l| !l.contains("SECRET")),
        "nothing of the link's target is stored: {b:?}"
    );
    assert_eq!(b.len(), 20, "{b:?}");
}

/// A FIFO named `*.log` next to a normal file (there before the start and made while
/// the agent runs): skipped and counted, the normal file's lines all arrive.
#[test]
fn fifos_named_like_logs_are_skipped_and_never_block_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    mkfifo(&logs.join("early.log"));
    append_lines(&logs.join("good.log"), "good", 0..100);
    let config = format!(
        "{FAST_RESCAN}sources:\n  - name: plain\n    include: [\"{}/*.log\"]\nsinks:\n  local: {{type: store}}\n",
        logs.display()
    );
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    agent.wait_ready();
    mkfifo(&logs.join("late.log"));
    append_lines(&logs.join("good.log"), "good", 100..200);
    append_lines(&logs.join("second.log"), "second", 0..50);
    wait_for(WAIT, "every line of the normal files", || {
        let b = bodies(&agent.store_dir());
        count_of(&b, "good") == 200 && count_of(&b, "second") == 50
    });
    let refused = |agent: &Agent| {
        metric(
            &agent.metrics(),
            "logtap_files_refused_total",
            &[("reason", "not_regular")],
        )
    };
    wait_for(WAIT, "both FIFOs counted", || refused(&agent) == 2.0);
    // Rescans keep looking at the FIFOs: the reader still goes on.
    std::thread::sleep(Duration::from_secs(1));
    append_lines(&logs.join("good.log"), "good", 200..300);
    wait_for(WAIT, "lines written after the rescans", || {
        count_of(&bodies(&agent.store_dir()), "good") == 300
    });
    assert_eq!(refused(&agent), 2.0);
    assert_eq!(agent.health().0, 200, "healthy");
    assert!(agent.stop(), "clean stop");
}

const NOBODY: u32 = 65534;

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: chown(2) on a NUL-terminated path.
    assert_eq!(unsafe { libc::chown(c.as_ptr(), uid, uid) }, 0, "chown");
}

/// The data directory (made 0755 with a 0644 file before the start), store and
/// checkpoints end up 0700/0600; `logtap query` by a user who may not read the store
/// says why and what to do.
#[test]
fn the_agent_keeps_its_files_private_and_query_says_so() {
    if !is_root("the_agent_keeps_its_files_private_and_query_says_so") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Only the agent's own modes may stand between `nobody` and the store.
    chmod(dir.path(), 0o755);
    let (logs, data) = (dir.path().join("logs"), dir.path().join("data"));
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(data.join("store")).unwrap();
    chmod(&data, 0o755);
    chmod(&data.join("store"), 0o755);
    std::fs::write(data.join("left.txt"), "from an earlier version\n").unwrap();
    chmod(&data.join("left.txt"), 0o644);
    append_lines(&logs.join("a.log"), "line", 0..10);
    let config = format!(
        "checkpoint: {{interval: 200ms}}\nsources:\n  - name: plain\n    include: [\"{}/*.log\"]\nsinks:\n  local: {{type: store}}\n",
        logs.display()
    );
    let mut agent = Agent::start(&data, &config);
    wait_for(WAIT, "the lines stored", || {
        count_of(&bodies(&agent.store_dir()), "line") == 10
    });
    assert!(agent.stop(), "clean stop");
    assert!(
        agent.log().contains("made private"),
        "a warning for the tightened files:\n{}",
        agent.log()
    );
    let mut seen = (0, 0);
    for entry in walkdir::WalkDir::new(&data) {
        let entry = entry.unwrap();
        let (path, ft) = (entry.path(), entry.file_type());
        if ft.is_dir() {
            assert_eq!(mode(path), 0o700, "{}", path.display());
            seen.0 += 1;
        } else if ft.is_file() {
            assert_eq!(mode(path), 0o600, "{}", path.display());
            seen.1 += 1;
        }
    }
    assert!(
        data.join("checkpoints").is_dir() && seen.0 >= 4 && seen.1 >= 4,
        "{seen:?}"
    );

    let query_as = |uid: u32| {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(logtap_bin())
            .args(["query", "--store"])
            .arg(agent.store_dir())
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap()
    };
    let out = query_as(NOBODY);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("permission denied reading the store at")
            && stderr.contains("uid 65534")
            && stderr.contains("sudo logtap query"),
        "{stderr}"
    );
    let out = query_as(0);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Once running, every thread of the agent holds CAP_DAC_READ_SEARCH and
/// CAP_SYS_PTRACE only (effective, permitted and bounding sets), with no-new-privs;
/// and it still reads a file only its (other) owner may read.
#[test]
fn the_running_agent_keeps_only_the_capabilities_it_needs() {
    if !is_root("the_running_agent_keeps_only_the_capabilities_it_needs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let private = logs.join("private.log");
    append_lines(&private, "private", 0..5);
    chown(&private, NOBODY);
    chmod(&private, 0o600);
    let config = format!(
        "sources:\n  - name: plain\n    include: [\"{}/*.log\"]\nsinks:\n  local: {{type: store}}\n",
        logs.display()
    );
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    agent.wait_ready();
    let expected = (1u64 << 2) | (1u64 << 19);
    let tasks = Path::new("/proc")
        .join(agent.pid().to_string())
        .join("task");
    let mut threads = 0;
    for task in std::fs::read_dir(&tasks).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let Ok(status) = std::fs::read_to_string(task.join("status")) else {
            continue; // ended meanwhile
        };
        if comm.starts_with("iou-") {
            continue; // io_uring's kernel workers: see `privileges`
        }
        let caps = logtap::privileges::parse_status(&status).unwrap();
        assert_eq!(
            (
                caps.effective,
                caps.permitted,
                caps.bounding,
                caps.no_new_privs
            ),
            (expected, expected, expected, true),
            "thread {} ({})",
            task.display(),
            comm.trim()
        );
        threads += 1;
    }
    assert!(
        threads > 3,
        "the agent's threads were all looked at: {threads}"
    );
    append_lines(&private, "private", 5..10);
    append_lines(&logs.join("late.log"), "late", 0..5);
    wait_for(WAIT, "files read after the drop", || {
        let b = bodies(&agent.store_dir());
        count_of(&b, "private") == 10 && count_of(&b, "late") == 5
    });
    assert!(agent.stop(), "clean stop");
}

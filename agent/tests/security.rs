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

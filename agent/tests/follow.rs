//! Following a growing file: lines appended while the agent runs reach the store, and a
//! restart resumes from the checkpoint instead of starting over.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

#[test]
fn appended_lines_reach_the_store_and_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let file = logs.join("app.log");
    let config = format!(
        "sources:\n  - name: app\n    include: [\"{}/*.log\"]\n    sink: local\nsinks:\n  local: {{type: store}}\n",
        logs.display()
    );
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    let written = write_lines_at_rate(&file, 2_000, 20_000, |_, _| {});
    let store = agent.store_dir();
    wait_for(Duration::from_secs(20), "2000 lines in the store", || {
        store_records(&store).len() >= written as usize
    });
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());

    // Restart, append more: only the new lines are shipped again.
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    use std::io::Write;
    for n in written..written + 500 {
        writeln!(f, "line seq={n} after restart").unwrap();
    }
    wait_for(Duration::from_secs(20), "the 500 new lines", || {
        store_records(&store).len() >= written as usize + 500
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.stop());

    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for r in store_records(&store) {
        let seq = seq_of(&body_bytes(&r)).expect("every line has seq=");
        *seen.entry(seq).or_default() += 1;
    }
    assert_eq!(seen.len() as u64, written + 500, "every line present");
    let dups: usize = seen.values().map(|c| c - 1).sum();
    assert_eq!(dups, 0, "a clean restart re-ships nothing");
}

/// Issue 9: a container printed a last line without a newline and exited; containerd
/// wrote it as a CRI `P` record that no `F` follows. The agent ships it once
/// `files.partial_timeout` passed, flagged unterminated, and a restart does not ship
/// it again.
#[test]
fn a_dying_containers_last_partial_line_is_shipped_once() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let file = logs.join("0.log");
    std::fs::write(
        &file,
        "2026-12-06T10:00:00.000000001Z stdout F first line\n\
         2026-12-06T10:00:00.000000002Z stdout P goodbye, no newline\n",
    )
    .unwrap();
    let config = format!(
        "files: {{partial_timeout: 300ms}}\n\
         sources:\n  - name: pods\n    include: [\"{}/*.log\"]\n    format: cri\n    sink: local\n\
         sinks:\n  local: {{type: store}}\n",
        logs.display()
    );
    let data = dir.path().join("data");
    let mut agent = Agent::start(&data, &config);
    let store = agent.store_dir();
    wait_for(Duration::from_secs(20), "both records", || {
        store.exists() && store_records(&store).len() >= 2
    });
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
    let records = store_records(&store);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[1]["body"], "goodbye, no newline");
    assert_eq!(flags(&records[1]), vec!["unterminated".to_string()]);

    // The checkpoint is past it: a restart ships nothing again.
    let mut agent = Agent::start(&data, &config);
    wait_for(Duration::from_secs(10), "the restarted agent", || {
        metric(&agent.metrics(), "logtap_files_discovered_total", &[]) >= 0.0
    });
    std::thread::sleep(Duration::from_millis(800));
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
    assert_eq!(store_records(&store).len(), 2);
}

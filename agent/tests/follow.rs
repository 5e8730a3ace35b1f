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

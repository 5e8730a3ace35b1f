//! `logtap query --follow` against a store the real agent is writing: the last hits
//! first, then every matching record as it is stored, each once.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

#[test]
fn follow_prints_the_last_hits_then_new_matches_as_they_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let app = logs.join("app.log");
    let write = |range: std::ops::Range<u64>| {
        let mut f = open_append(&app);
        for seq in range {
            let level = if seq % 2 == 0 { "error" } else { "info" };
            writeln!(f, "{level} {}", rate_line(seq)).unwrap();
        }
    };
    write(0..100);
    let config = format!(
        "sources:\n  - name: app\n    include: [\"{}/*.log\"]\n    sink: local\n\
         sinks:\n  local: {{type: store}}\n\
         batch: {{timeout: 100ms}}\n",
        logs.display()
    );
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    let store = agent.store_dir();
    wait_for(Duration::from_secs(30), "the first lines stored", || {
        store_unique(&store) >= 100
    });

    let mut follower = Command::new(logtap_bin())
        .args(["query", "--follow", "--json", "--limit", "5", "--store"])
        .arg(&store)
        .arg("error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let record: serde_json::Value = serde_json::from_str(&line).unwrap();
            if lines.send(seq_of(&body_bytes(&record)).unwrap()).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        received
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no {what} from the follower"))
    };
    // The last 5 errors stored so far, oldest first.
    let first: Vec<u64> = (0..5).map(|_| next("first hit")).collect();
    assert_eq!(first, vec![90, 92, 94, 96, 98]);
    // Then what is written (and stored) afterwards, in two waves.
    write(100..200);
    let second: Vec<u64> = (0..50).map(|_| next("new hit")).collect();
    assert_eq!(second, (100..200).step_by(2).collect::<Vec<_>>());
    write(200..210);
    let third: Vec<u64> = (0..5).map(|_| next("new hit")).collect();
    assert_eq!(third, vec![200, 202, 204, 206, 208]);
    // Nothing else: no info line, no record twice.
    assert!(received.recv_timeout(Duration::from_secs(1)).is_err());
    follower.kill().unwrap();
    follower.wait().unwrap();
    assert!(agent.stop(), "clean exit\n{}", agent.log());
}

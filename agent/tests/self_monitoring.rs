//! Self-monitoring end to end, with the real binary: the agent's own warnings and its
//! statistics are records of `logtap://self` in the store, queryable by their fields.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

#[test]
fn the_agents_warnings_and_statistics_are_records_of_its_own_source() {
    const LINES: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut f = open_append(&logs.join("app.log"));
    for seq in 0..LINES {
        writeln!(f, "{}", rate_line(seq)).unwrap();
    }
    drop(f);
    // A container runtime the agent cannot reach: it warns while it starts, before
    // the sinks run.
    let config = format!(
        "sources:\n  - name: app\n    include: [\"{}/*.log\"]\n    sink: local\n\
         sinks:\n  local: {{type: store}}\n\
         batch: {{timeout: 100ms}}\n\
         cri: {{endpoint: \"unix://{}/no-such.sock\"}}\n\
         self_monitoring: {{enabled: true, sink: local, interval: 1s}}\n",
        logs.display(),
        dir.path().display()
    );
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    let store = agent.store_dir();
    let own = |filter: &str| {
        if !store.exists() {
            return Vec::new();
        }
        query_json(&store, &["--source", "logtap://self", "--field", filter])
    };
    // Parsed JSON fields are their text.
    let lines = LINES.to_string();
    wait_for(
        Duration::from_secs(30),
        "a statistics record with every line",
        || {
            own("config=app")
                .iter()
                .any(|r| r["fields"]["lines"] == lines.as_str())
        },
    );
    wait_for(Duration::from_secs(10), "the warning as a record", || {
        !own("kind=log").is_empty()
    });
    assert!(agent.stop(), "clean exit\n{}", agent.log());

    let warnings = own("kind=log");
    let unreachable = warnings
        .iter()
        .find(|r| {
            r["fields"]["endpoint"]
                .as_str()
                .is_some_and(|e| e.ends_with("no-such.sock"))
        })
        .unwrap_or_else(|| panic!("no warning about the runtime in {warnings:#?}"));
    assert_eq!(unreachable["fields"]["level"], "WARN");
    assert_eq!(
        unreachable["fields"]["target"],
        "logtap::discovery::registry"
    );
    assert!(
        unreachable["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("container runtime unreachable")),
        "{unreachable}"
    );
    let agent_stats = own("config=*");
    assert!(
        agent_stats
            .iter()
            .any(|r| r["fields"]["lines_read_total.file"] == lines.as_str()),
        "{agent_stats:#?}"
    );
    // Nothing else is mixed into the collected file's records.
    let app: Vec<_> = store_records(&store)
        .into_iter()
        .filter(|r| r["fields"].get("kind").is_none())
        .collect();
    let census = SeqCensus::of(&app);
    assert_eq!(census.missing(LINES), Vec::<u64>::new());
    assert_eq!(census.duplicates(), 0);
}

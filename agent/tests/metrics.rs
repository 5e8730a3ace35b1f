//! `/metrics` of a running agent after it ingested known data: the catalogue operators
//! alert on, with values checked against what was written.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

struct Input {
    dir: tempfile::TempDir,
    raw: PathBuf,
    cri: PathBuf,
    json: PathBuf,
}

const RAW_LINES: u64 = 300;
const CRI_LINES: u64 = 200;
const JSON_LINES: u64 = 100;
/// Every tenth JSON line is not JSON.
const JSON_BAD: u64 = JSON_LINES / 10;
const ALL_LINES: u64 = RAW_LINES + CRI_LINES + JSON_LINES;

impl Input {
    fn new() -> Input {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        Input {
            raw: logs.join("app.log"),
            cri: logs.join("pod.cri"),
            json: logs.join("app.json"),
            dir,
        }
    }

    fn config(&self, extra: &str) -> String {
        three_format_config(self.raw.parent().unwrap(), extra)
    }

    /// Writes lines `range` of every file (half before the agent starts, half while it
    /// follows them).
    fn write(&self, range: std::ops::Range<u64>) {
        let mut raw = open_append(&self.raw);
        let mut cri = open_append(&self.cri);
        let mut json = open_append(&self.json);
        for i in range {
            if i < RAW_LINES {
                writeln!(raw, "raw line seq={i}").unwrap();
            }
            if i < CRI_LINES {
                writeln!(cri, "{TS} stdout F cri line seq={i}").unwrap();
            }
            if i < JSON_LINES {
                if i % 10 == 9 {
                    writeln!(json, "not json seq={i}").unwrap();
                } else {
                    writeln!(json, r#"{{"msg":"json line seq={i}"}}"#).unwrap();
                }
            }
        }
    }

    fn size(path: &Path) -> f64 {
        std::fs::metadata(path).unwrap().len() as f64
    }
}

/// Runs an agent over the input until every line is acknowledged and checkpointed;
/// returns it (still running) with its `/metrics` text.
fn ingest(input: &Input, extra_config: &str) -> (Agent, String) {
    input.write(0..150);
    let agent = Agent::start(&input.dir.path().join("data"), &input.config(extra_config));
    input.write(150..RAW_LINES);
    let mut text = String::new();
    wait_for(
        Duration::from_secs(20),
        "every line acknowledged and checkpointed",
        || {
            text = agent.metrics();
            metric(&text, "logtap_sink_lines_total", &[]) >= ALL_LINES as f64
                && metric(&text, "logtap_checkpoint_writes_total", &[]) > 0.0
                && metric(&text, "logtap_packages_in_flight", &[]) == 0.0
        },
    );
    // The source thread's gauges follow the reads by up to a tick.
    std::thread::sleep(Duration::from_millis(300));
    let text = agent.metrics();
    (agent, text)
}

/// The value of a series that must be present (a missing series fails the test,
/// where `metric` would read 0).
fn present(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let has = text.lines().any(|l| {
        !l.starts_with('#')
            && (l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
            && labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
    });
    assert!(
        has,
        "series {name}{labels:?} missing from /metrics:\n{text}"
    );
    metric(text, name, labels)
}

#[test]
fn catalogue_matches_what_was_ingested() {
    let input = Input::new();
    let (mut agent, text) = ingest(&input, "");
    let store_lines = store_records(&agent.store_dir()).len() as f64;
    assert_eq!(
        store_lines, ALL_LINES as f64,
        "every line in the store once"
    );

    let check = |name: &str, labels: &[(&str, &str)], want: f64| {
        assert_eq!(
            present(&text, name, labels),
            want,
            "{name}{labels:?}\n{text}"
        );
    };
    check(
        "logtap_lines_read_total",
        &[("source_kind", "file")],
        (RAW_LINES + JSON_LINES) as f64,
    );
    check(
        "logtap_lines_read_total",
        &[("source_kind", "cri_file")],
        CRI_LINES as f64,
    );
    check(
        "logtap_bytes_read_total",
        &[("source_kind", "file")],
        Input::size(&input.raw) + Input::size(&input.json),
    );
    check(
        "logtap_bytes_read_total",
        &[("source_kind", "cri_file")],
        Input::size(&input.cri),
    );
    check("logtap_read_backend", &[("backend", "io_uring")], 1.0);
    assert_eq!(
        metric(&text, "logtap_read_backend", &[("backend", "pread")]),
        0.0
    );
    check("logtap_open_files", &[], 3.0);
    check("logtap_read_lag_bytes", &[], 0.0);
    check(
        "logtap_parse_failures_total",
        &[("parser", "json")],
        JSON_BAD as f64,
    );
    check("logtap_sink_lines_total", &[("sink", "store")], store_lines);
    check("logtap_packages_in_flight", &[], 0.0);
    for component in ["source", "checkpoint", "sink-local"] {
        check("logtap_component_up", &[("component", component)], 1.0);
    }
    assert!(present(&text, "logtap_sink_packages_total", &[("sink", "store")]) > 0.0);
    assert!(present(&text, "logtap_checkpoint_writes_total", &[]) > 0.0);
    let age = present(&text, "logtap_checkpoint_age_seconds", &[]);
    assert!(
        (0.0..3.0).contains(&age),
        "checkpoint age {age} s with a 1 s interval"
    );
    for zero in [
        "logtap_sink_errors_total",
        "logtap_dropped_lines_total",
        "logtap_checkpoint_errors_total",
        "logtap_file_open_errors_total",
        "logtap_lines_truncated_total",
        "logtap_lines_malformed_total",
    ] {
        assert_eq!(metric(&text, zero, &[]), 0.0, "{zero}\n{text}");
    }

    // Naming rules of the catalogue: prefix, `_total` on counters, help text, and no
    // unbounded label values (a path would show up as a `/`).
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(name.starts_with("logtap_"), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        } else if !line.starts_with('#')
            && let Some((_, labels)) = line.split_once('{')
        {
            assert!(!labels.contains('/'), "a path as a label value: {line}");
        }
    }
    for described in [
        "logtap_lines_read_total",
        "logtap_bytes_read_total",
        "logtap_open_files",
        "logtap_read_lag_bytes",
        "logtap_read_backend",
        "logtap_checkpoint_age_seconds",
        "logtap_checkpoint_writes_total",
        "logtap_sink_packages_total",
        "logtap_sink_lines_total",
        "logtap_component_up",
        "logtap_component_seconds_since_progress",
    ] {
        assert!(
            text.contains(&format!("# HELP {described} ")),
            "help text for {described}"
        );
    }
    assert!(agent.stop(), "clean exit:\n{}", agent.log());
}

#[test]
fn pread_backend_when_io_uring_is_off() {
    let input = Input::new();
    let (mut agent, text) = ingest(&input, "files: {io_uring: false}\n");
    assert_eq!(
        present(&text, "logtap_read_backend", &[("backend", "pread")]),
        1.0
    );
    assert_eq!(
        metric(&text, "logtap_read_backend", &[("backend", "io_uring")]),
        0.0
    );
    assert_eq!(
        present(&text, "logtap_lines_read_total", &[]),
        ALL_LINES as f64
    );
    assert!(agent.stop(), "clean exit:\n{}", agent.log());
}

//! Many files at once (a thousand in twenty directories; ten thousand in a hundred):
//! every line arrives once, under the path of the file it was written to, and appends
//! to all of them are followed.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn write_lines(path: &Path, tag: &str, seqs: std::ops::Range<u64>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut buf = Vec::new();
    for seq in seqs {
        writeln!(buf, "{tag} seq={seq} some payload to make it a log line").unwrap();
    }
    f.write_all(&buf).unwrap();
}

#[test]
fn a_thousand_files_at_once() {
    many_files(20, 50, 100, 10);
}

#[test]
fn ten_thousand_watched_files() {
    many_files(100, 100, 4, 2);
}

fn many_files(dirs: usize, files_per_dir: usize, first_lines: u64, appended_lines: u64) {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for d in 0..dirs {
        let sub = logs.join(format!("d{d:02}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..files_per_dir {
            let tag = format!("d{d:02}/f{f:03}");
            files.push((sub.join(format!("f{f:03}.log")), tag));
        }
    }
    for (path, tag) in &files {
        write_lines(path, tag, 0..first_lines);
    }
    let config = format!(
        "sources:\n  - name: app\n    include: [\"{}/**/*.log\"]\n    sink: local\n\
         sinks:\n  local: {{type: store}}\n",
        logs.display()
    );
    let started = Instant::now();
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    let store = agent.store_dir();

    // Half the appends race the agent's start-up discovery and first reads, half
    // come once everything was read and the files are only followed.
    let racing = first_lines + appended_lines / 2;
    for (path, tag) in &files {
        write_lines(path, tag, first_lines..racing);
    }
    let first = files.len() as u64 * racing;
    wait_for_every(
        Duration::from_secs(60),
        Duration::from_millis(300),
        "the first lines of every file",
        || store_unique(&store) >= first,
    );
    println!("{first} lines stored after {:?}", started.elapsed());
    let open = metric(&agent.metrics(), "logtap_open_files", &[]);
    assert!(open >= files.len() as f64, "logtap_open_files = {open}");

    let total = files.len() as u64 * (first_lines + appended_lines);
    for (path, tag) in &files {
        write_lines(path, tag, racing..first_lines + appended_lines);
    }
    wait_for_every(
        Duration::from_secs(60),
        Duration::from_millis(300),
        "the appended lines of every file",
        || store_unique(&store) >= total,
    );
    println!("{total} lines stored after {:?}", started.elapsed());
    let open = metric(&agent.metrics(), "logtap_open_files", &[]);
    assert!(open >= files.len() as f64, "logtap_open_files = {open}");
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());

    let records = store_records(&store);
    assert_eq!(records.len() as u64, total, "no duplicates, nothing extra");
    let path_of: HashMap<&str, &Path> = files
        .iter()
        .map(|(p, t)| (t.as_str(), p.as_path()))
        .collect();
    let mut seen: HashMap<(String, u64), u32> = HashMap::new();
    for r in &records {
        let body = String::from_utf8(body_bytes(r)).unwrap();
        let (tag, _) = body.split_once(' ').expect("tag first");
        let seq = seq_of(body.as_bytes()).expect("seq=");
        let expected = path_of
            .get(tag)
            .unwrap_or_else(|| panic!("unknown tag in {body:?}"));
        assert_eq!(
            r["path"].as_str(),
            expected.to_str(),
            "record {body:?} under the wrong path"
        );
        *seen.entry((tag.to_string(), seq)).or_default() += 1;
    }
    for (_, tag) in &files {
        for seq in 0..first_lines + appended_lines {
            assert_eq!(
                seen.get(&(tag.clone(), seq)).copied(),
                Some(1),
                "{tag} seq={seq} stored once"
            );
        }
    }
    assert_offsets_increase(&records);
}

//! Bad input against the real binary: every case ends in a clear error or a counted
//! flag, never a panic, and never costs another line. Each test puts good `seq=` lines
//! before and after the bad input, in the same file and in a second file, and checks
//! that every one of them reaches the store byte for byte.
//!
//! `unreadable_file_is_counted_and_the_others_are_collected` runs the agent as the
//! unprivileged user `nobody` (65534), which needs root to set up. Run as another user,
//! it fails, unless the environment variable `LOGTAP_TEST_ALLOW_NONROOT=1` is set: then
//! it prints a note and passes without checking anything.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

/// A test's directory: `logs/` holds what the agent watches, `data/` is its data dir.
struct Scene {
    dir: tempfile::TempDir,
    logs: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        Scene { dir, logs }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.logs.join(name)
    }

    /// `*.log` raw, `*.cri` CRI, `*.json` raw with the JSON parser; all into the store.
    fn config(&self, extra: &str) -> String {
        three_format_config(&self.logs, extra)
    }

    fn start(&self) -> Agent {
        Agent::start(&self.data_dir(), &self.config(""))
    }
}

fn append(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

/// Good lines `<tag> seq=<i> ok` for `i` in `range` (without their `\n`).
fn good_lines(tag: &str, range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    range
        .map(|i| format!("{tag} seq={i} ok").into_bytes())
        .collect()
}

fn joined(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

/// CRI full lines carrying `messages`.
fn cri_lines(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        out.extend_from_slice(format!("{TS} stdout F ").as_bytes());
        out.extend_from_slice(m);
        out.push(b'\n');
    }
    out
}

/// Binary garbage in `\n`-terminated stretches of 1 byte to 900 KiB (under the 1 MiB
/// line limit, so each stretch is exactly one record), with runs of NUL bytes and no
/// `\r` (which the framer strips before `\n`). Returns the stretches without their `\n`.
fn garbage(seed: u64, stretches: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    (0..stretches)
        .map(|i| {
            let len = match i % 4 {
                0 => 900 * 1024,
                1 => 1 + rng.below(64) as usize,
                _ => 1 + rng.below(200 * 1024) as usize,
            };
            let mut s: Vec<u8> = (0..len)
                .map(|_| match rng.next() as u8 {
                    b'\n' | b'\r' => 0,
                    b => b,
                })
                .collect();
            let nul_run = (len / 3).min(4096);
            let at = rng.below((len - nul_run + 1) as u64) as usize;
            s[at..at + nul_run].fill(0);
            s
        })
        .collect()
}

/// The records of `path`, in offset order; generations of the file (sources: a file
/// recreated at the path) in the order they were read.
fn records_at(records: &[Value], path: &Path) -> Vec<Value> {
    let path = path.to_str().unwrap();
    let mut out: Vec<Value> = records
        .iter()
        .filter(|r| r["path"].as_str() == Some(path))
        .cloned()
        .collect();
    let mut first_read: BTreeMap<String, u64> = BTreeMap::new();
    for r in &out {
        let at = first_read
            .entry(r["source_id"].to_string())
            .or_insert(u64::MAX);
        *at = (*at).min(r["timestamp_ns"].as_u64().unwrap_or(0));
    }
    out.sort_by_key(|r| {
        let source = r["source_id"].to_string();
        (first_read[&source], source, r["offset"].as_u64())
    });
    out
}

/// Waits (up to 20 s) until the store holds at least `expected[path].len()` records
/// of every path, then asserts each path's records have exactly those bodies, in
/// order. Returns all records.
fn assert_bodies(agent: &Agent, expected: &BTreeMap<PathBuf, Vec<Vec<u8>>>) -> Vec<Value> {
    let store = agent.store_dir();
    let mut records = Vec::new();
    let start = Instant::now();
    loop {
        if store.exists() {
            records = store_records(&store);
        }
        let complete = expected
            .iter()
            .all(|(path, lines)| records_at(&records, path).len() >= lines.len());
        if complete || start.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (path, lines) in expected {
        let got = records_at(&records, path);
        let bodies: Vec<Vec<u8>> = got.iter().map(body_bytes).collect();
        assert_eq!(
            bodies.len(),
            lines.len(),
            "{}: record count (expected bodies: {:?}…)\nagent log:\n{}",
            path.display(),
            lines
                .iter()
                .take(5)
                .map(|l| String::from_utf8_lossy(&l[..l.len().min(60)]).into_owned())
                .collect::<Vec<_>>(),
            agent.log()
        );
        for (i, (got, want)) in bodies.iter().zip(lines).enumerate() {
            assert!(
                got == want,
                "{}: record {i} differs: got {} bytes {:?}…, want {} bytes {:?}…",
                path.display(),
                got.len(),
                String::from_utf8_lossy(&got[..got.len().min(80)]),
                want.len(),
                String::from_utf8_lossy(&want[..want.len().min(80)]),
            );
        }
    }
    records
}

/// The agent is still running, logged no panic, and exits 0 on SIGTERM.
fn assert_survived(mut agent: Agent) {
    assert!(agent.is_running(), "agent died:\n{}", agent.log());
    assert!(agent.stop(), "agent did not exit 0:\n{}", agent.log());
    let log = agent.log();
    assert!(!log.contains("panicked"), "agent panicked:\n{log}");
}

fn wait_for_records(agent: &Agent, path: &Path, n: usize) {
    let store = agent.store_dir();
    wait_for(
        Duration::from_secs(20),
        &format!("{n} records of {}", path.display()),
        || store.exists() && records_at(&store_records(&store), path).len() >= n,
    );
}

#[test]
fn binary_garbage_in_raw_and_cri_files_loses_no_other_line() {
    let scene = Scene::new();
    let (raw, cri, other) = (
        scene.path("garbage.log"),
        scene.path("garbage.cri"),
        scene.path("other.log"),
    );
    let raw_before = good_lines("raw", 0..100);
    let cri_before = good_lines("cri", 0..100);
    let other_before = good_lines("other", 0..100);
    append(&raw, &joined(&raw_before));
    append(&cri, &cri_lines(&cri_before));
    append(&other, &joined(&other_before));
    let agent = scene.start();
    wait_for_records(&agent, &other, 100);

    // While the agent follows the files: garbage, then good lines again.
    let raw_garbage = garbage(0x9e37_79b9_7f4a_7c15, 12);
    let cri_garbage = garbage(0xdead_beef_cafe_f00d, 12);
    let (raw_after, cri_after, other_after) = (
        good_lines("raw", 100..200),
        good_lines("cri", 100..200),
        good_lines("other", 100..200),
    );
    append(&raw, &joined(&raw_garbage));
    append(&cri, &joined(&cri_garbage));
    append(&other, &joined(&other_after));
    append(&raw, &joined(&raw_after));
    append(&cri, &cri_lines(&cri_after));

    let expected = BTreeMap::from([
        (raw.clone(), [raw_before, raw_garbage, raw_after].concat()),
        (
            cri.clone(),
            [cri_before, cri_garbage.clone(), cri_after].concat(),
        ),
        (other.clone(), [other_before, other_after].concat()),
    ]);
    let records = assert_bodies(&agent, &expected);
    for r in &records_at(&records, &cri)[100..100 + cri_garbage.len()] {
        assert!(flags(r).contains(&"malformed".to_string()), "{r}");
    }
    let text = agent.metrics();
    assert_eq!(
        metric(
            &text,
            "logtap_lines_malformed_total",
            &[("source_kind", "cri_file")]
        ),
        cri_garbage.len() as f64,
        "every garbage CRI line counted as malformed"
    );
    assert_survived(agent);
}

#[test]
fn invalid_utf8_is_kept_byte_for_byte_and_flagged() {
    let scene = Scene::new();
    let (raw, cri, other) = (
        scene.path("utf8.log"),
        scene.path("utf8.cri"),
        scene.path("other.log"),
    );
    let invalid: Vec<Vec<u8>> = vec![
        b"bad \xff\xfe bytes".to_vec(),
        b"\xc3\x28 invalid continuation".to_vec(),
        b"overlong \xc0\xaf slash".to_vec(),
        b"surrogate \xed\xa0\x80 half".to_vec(),
        b"\x80 lone continuation first".to_vec(),
        b"nul \0 inside \xf8\x88\x80\x80\x80".to_vec(),
        b"cut multibyte at the end \xe2\x82".to_vec(),
    ];
    let valid: Vec<Vec<u8>> = vec![
        "a real replacement character \u{FFFD} is content".into(),
        "h\u{e9}llo w\u{f6}rld \u{65e5}\u{672c} \u{1f389}".into(),
    ];
    let lines = [
        good_lines("a", 0..10),
        invalid.clone(),
        valid.clone(),
        good_lines("a", 10..20),
    ]
    .concat();
    append(&raw, &joined(&lines));
    append(&cri, &cri_lines(&lines));
    append(&other, &joined(&good_lines("other", 0..10)));
    let agent = scene.start();
    append(&other, &joined(&good_lines("other", 10..20)));

    let expected = BTreeMap::from([
        (raw.clone(), lines.clone()),
        (cri.clone(), lines.clone()),
        (other.clone(), good_lines("other", 0..20)),
    ]);
    let records = assert_bodies(&agent, &expected);
    for path in [&raw, &cri] {
        for r in records_at(&records, path) {
            let body = body_bytes(&r);
            let bad = std::str::from_utf8(&body).is_err();
            assert_eq!(
                flags(&r).contains(&"invalid_utf8".to_string()),
                bad,
                "invalid_utf8 flag exactly on invalid lines: {r}"
            );
            if bad {
                // Rendered as base64 of the original bytes, never as lossy text.
                assert!(
                    r.get("body").is_none(),
                    "invalid body rendered as text: {r}"
                );
            }
        }
    }
    let text = agent.metrics();
    let counted = metric(&text, "logtap_lines_invalid_utf8_total", &[]);
    assert_eq!(counted, 2.0 * invalid.len() as f64, "{text}");
    assert_survived(agent);
}

#[test]
fn ten_megabyte_line_is_truncated_to_max_line_size() {
    let scene = Scene::new();
    let (raw, cri, cri_split, other) = (
        scene.path("long.log"),
        scene.path("long.cri"),
        scene.path("split.cri"),
        scene.path("other.log"),
    );
    let huge: Vec<u8> = b"huge seq=999 "
        .iter()
        .copied()
        .chain((0..10 * MIB).map(|i| b'a' + (i % 26) as u8))
        .collect();
    let (before, after) = (good_lines("x", 0..50), good_lines("x", 50..100));

    append(&raw, &joined(&before));
    append(&raw, &joined(std::slice::from_ref(&huge)));
    append(&raw, &joined(&after));

    append(&cri, &cri_lines(&before));
    append(&cri, &cri_lines(std::slice::from_ref(&huge)));
    append(&cri, &cri_lines(&after));

    // The way containerd writes it: 16 KiB `P` fragments closed by an `F` fragment.
    append(&cri_split, &cri_lines(&before));
    let mut fragments = Vec::new();
    let mut chunks = huge.chunks(16 * 1024).peekable();
    while let Some(chunk) = chunks.next() {
        let tag = if chunks.peek().is_some() { "P" } else { "F" };
        fragments.extend_from_slice(format!("{TS} stdout {tag} ").as_bytes());
        fragments.extend_from_slice(chunk);
        fragments.push(b'\n');
    }
    append(&cri_split, &fragments);
    append(&cri_split, &cri_lines(&after));

    append(&other, &joined(&before));
    let agent = scene.start();
    append(&other, &joined(&after));

    let cut = huge[..MIB].to_vec();
    let with_cut = [before.clone(), vec![cut], after.clone()].concat();
    let expected = BTreeMap::from([
        (raw.clone(), with_cut.clone()),
        (cri.clone(), with_cut.clone()),
        (cri_split.clone(), with_cut),
        (other.clone(), [before, after].concat()),
    ]);
    let records = assert_bodies(&agent, &expected);
    for path in [&raw, &cri, &cri_split] {
        let long = &records_at(&records, path)[50];
        assert!(
            flags(long).contains(&"truncated".to_string()),
            "{}: {:?}",
            path.display(),
            flags(long)
        );
    }
    let text = agent.metrics();
    assert_eq!(
        metric(
            &text,
            "logtap_lines_truncated_total",
            &[("source_kind", "file")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "logtap_lines_truncated_total",
            &[("source_kind", "cri_file")]
        ),
        2.0
    );
    assert_survived(agent);
}

#[test]
fn malformed_cri_lines_are_shipped_raw_and_counted() {
    let scene = Scene::new();
    let (cri, other) = (scene.path("pod.cri"), scene.path("other.log"));
    let malformed: Vec<Vec<u8>> = vec![
        b"2026-13-45T99:00:00.000000000Z stdout F impossible date".to_vec(),
        b"not-a-time stdout F no timestamp".to_vec(),
        b"2026-11-21T10:45:31 stdout F timestamp without zone".to_vec(),
        format!("{TS} stdout").into_bytes(),
        TS.as_bytes().to_vec(),
        format!("{TS} stdin F unknown stream").into_bytes(),
        format!("{TS} STDOUT F upper-case stream").into_bytes(),
        b"just some text without any envelope".to_vec(),
        Vec::new(),
    ];
    let mut content = cri_lines(&good_lines("pod", 0..10));
    for m in &malformed {
        content.extend_from_slice(m);
        content.push(b'\n');
    }
    content.extend_from_slice(&cri_lines(&good_lines("pod", 10..20)));
    append(&other, &joined(&good_lines("other", 0..10)));
    let agent = scene.start();
    // Written while followed: a malformed line between two fragments of one message
    // neither breaks the reassembly nor is swallowed by it.
    append(&cri, &content);
    append(
        &cri,
        format!("{TS} stdout P first half seq=20 \nbroken line between fragments\n{TS} stdout F second half\n").as_bytes(),
    );
    append(&cri, &cri_lines(&good_lines("pod", 21..30)));
    append(&other, &joined(&good_lines("other", 10..20)));

    let expected_cri = [
        good_lines("pod", 0..10),
        malformed.clone(),
        good_lines("pod", 10..20),
        vec![
            b"first half seq=20 second half".to_vec(),
            b"broken line between fragments".to_vec(),
        ],
        good_lines("pod", 21..30),
    ]
    .concat();
    let expected = BTreeMap::from([
        (cri.clone(), expected_cri),
        (other.clone(), good_lines("other", 0..20)),
    ]);
    let records = assert_bodies(&agent, &expected);
    let cri_records = records_at(&records, &cri);
    let is_malformed = |r: &Value| flags(r).contains(&"malformed".to_string());
    for r in &cri_records[10..10 + malformed.len()] {
        assert!(is_malformed(r), "{r}");
    }
    assert!(is_malformed(&cri_records[30]), "{}", cri_records[30]);
    assert_eq!(
        cri_records.iter().filter(|r| is_malformed(r)).count(),
        malformed.len() + 1,
        "only the malformed lines are flagged"
    );
    let text = agent.metrics();
    assert_eq!(
        metric(
            &text,
            "logtap_lines_malformed_total",
            &[("source_kind", "cri_file")]
        ),
        (malformed.len() + 1) as f64,
        "{text}"
    );
    assert_survived(agent);
}

#[test]
fn malformed_json_is_kept_raw_flagged_and_counted() {
    let scene = Scene::new();
    let (json, other) = (scene.path("app.json"), scene.path("other.log"));
    let good = |i: u64| format!(r#"{{"msg":"good seq={i}","n":{i}}}"#).into_bytes();
    let bad: Vec<Vec<u8>> = vec![
        br#"{"msg": "unterminated string"#.to_vec(),
        b"not json at all".to_vec(),
        br#"{"a":1} trailing"#.to_vec(),
        b"[1,2,3]".to_vec(),
        br#"{"a":}"#.to_vec(),
        b"{}{}".to_vec(),
        br#""just a string""#.to_vec(),
        br#"{"deep":"#.repeat(1000),
        b"{\"bad utf8\":\"\xff\"}".to_vec(),
        Vec::new(),
    ];
    let lines = [
        (0..10).map(good).collect::<Vec<_>>(),
        bad.clone(),
        (10..20).map(good).collect(),
    ]
    .concat();
    append(&json, &joined(&lines[..15]));
    append(&other, &joined(&good_lines("other", 0..10)));
    let agent = scene.start();
    append(&json, &joined(&lines[15..]));
    append(&other, &joined(&good_lines("other", 10..20)));

    let expected = BTreeMap::from([
        (json.clone(), lines.clone()),
        (other.clone(), good_lines("other", 0..20)),
    ]);
    let records = assert_bodies(&agent, &expected);
    for (i, r) in records_at(&records, &json).iter().enumerate() {
        let failed = flags(r).contains(&"parse_failed".to_string());
        let is_bad = (10..10 + bad.len()).contains(&i);
        assert_eq!(failed, is_bad, "parse_failed exactly on the bad lines: {r}");
        if is_bad {
            assert_eq!(
                r["fields"],
                serde_json::json!({}),
                "no half-parsed fields: {r}"
            );
        } else {
            assert_eq!(
                r["fields"]["msg"],
                format!("good seq={}", seq_of(&body_bytes(r)).unwrap())
            );
        }
    }
    let text = agent.metrics();
    assert_eq!(
        metric(&text, "logtap_parse_failures_total", &[("parser", "json")]),
        bad.len() as f64,
        "{text}"
    );
    assert_survived(agent);
}

/// Lines `trunc seq=<i> ...` whose bodies are all distinct.
fn numbered(range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    range
        .map(|i| format!("trunc seq={i} payload-{:016x}", i.wrapping_mul(0x9e37_79b9)).into_bytes())
        .collect()
}

#[test]
fn file_truncated_while_followed_goes_on_with_the_new_lines() {
    let scene = Scene::new();
    let (file, other) = (scene.path("trunc.log"), scene.path("other.log"));
    let first = numbered(0..5_000);
    let content = joined(&first);
    append(&file, &content);
    append(&other, &joined(&good_lines("other", 0..10)));
    let agent = scene.start();
    wait_for_records(&agent, &file, first.len());

    // Cut in the middle of a line, then the writer goes on (starting a new line).
    let half = content.len() / 2;
    assert_ne!(content[half - 1], b'\n', "the cut is inside a line");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(half as u64)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after = numbered(5_000..5_500);
    let mut appended = b"\n".to_vec();
    appended.extend_from_slice(&joined(&after));
    append(&file, &appended);
    append(&other, &joined(&good_lines("other", 10..20)));

    // The kept half is a new generation of the file, read again from offset 0: its
    // whole lines, the cut line (ended by the writer's `\n`), then the new lines.
    let kept = &content[..half];
    let cut_start = kept.iter().rposition(|&b| b == b'\n').unwrap() + 1;
    let kept_lines = kept[..cut_start]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty());
    let second_generation: Vec<Vec<u8>> = kept_lines
        .map(<[u8]>::to_vec)
        .chain([kept[cut_start..].to_vec()])
        .chain(after.iter().cloned())
        .collect();
    wait_for_records(&agent, &file, first.len() + second_generation.len());

    let generations = generations(&agent, &file);
    assert_eq!(generations.len(), 2, "two generations of the file");
    assert!(generations[0] == first, "the first generation, whole");
    assert_eq!(generations[1].len(), second_generation.len());
    assert!(
        generations[1] == second_generation,
        "the second generation, whole"
    );

    let text = agent.metrics();
    assert!(
        metric(&text, "logtap_file_truncations_total", &[]) >= 1.0,
        "{text}"
    );
    assert_bodies(
        &agent,
        &BTreeMap::from([(other.clone(), good_lines("other", 0..20))]),
    );
    assert_survived(agent);
}

/// The bodies of `path`'s records, one list per generation (source) of the file, in
/// the order they were read.
fn generations(agent: &Agent, path: &Path) -> Vec<Vec<Vec<u8>>> {
    let mut out: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for r in records_at(&store_records(&agent.store_dir()), path) {
        let source = r["source_id"].to_string();
        if out.last().map(|(s, _)| s) != Some(&source) {
            out.push((source, Vec::new()));
        }
        out.last_mut().unwrap().1.push(body_bytes(&r));
    }
    out.into_iter().map(|(_, bodies)| bodies).collect()
}

fn signal(agent: &Agent, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, sig) }, 0);
}

#[test]
fn file_truncated_while_the_agent_is_behind_goes_on_with_the_new_lines() {
    let scene = Scene::new();
    let (below, above, other) = (
        scene.path("below.log"),
        scene.path("above.log"),
        scene.path("other.log"),
    );
    let (first, unread, after) = (
        numbered(0..4000),
        numbered(4000..8000),
        numbered(8000..8100),
    );
    append(&below, &joined(&first));
    append(&above, &joined(&first));
    append(&other, &joined(&good_lines("other", 0..10)));
    let agent = scene.start();
    wait_for_records(&agent, &below, first.len());
    wait_for_records(&agent, &above, first.len());

    // The agent is stopped (as if busy) while the writers go on: more lines it has not
    // read, then a truncation, then a few new lines. `below.log` is cut under the
    // agent's read offset, `above.log` in the part it has not read yet. Both start
    // with the same bytes, so `above.log` also looks like a copytruncate copy of
    // `below.log`: it must not lend its lines to it.
    signal(&agent, libc::SIGSTOP);
    append(&below, &joined(&unread));
    append(&above, &joined(&unread));
    let cut_below = joined(&first[..2000]).len();
    let cut_above = joined(&first).len() + joined(&unread[..2000]).len();
    for (path, len) in [(&below, cut_below), (&above, cut_above)] {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_len(len as u64).unwrap();
    }
    append(&below, &joined(&after));
    append(&above, &joined(&after));
    append(&other, &joined(&good_lines("other", 10..20)));
    signal(&agent, libc::SIGCONT);

    // Under the offset: the file shrank, so what it holds now is a new generation, read
    // from its start. Above it: the agent just reads on.
    let below_second = [&first[..2000], &after[..]].concat();
    let above_all = [&first[..], &unread[..2000], &after[..]].concat();
    wait_for_records(&agent, &below, first.len() + below_second.len());
    wait_for_records(&agent, &above, above_all.len());
    let below_generations = generations(&agent, &below);
    let show = |g: &Vec<Vec<u8>>| {
        let first_seq = g.first().and_then(|b| seq_of(b));
        let last_seq = g.last().and_then(|b| seq_of(b));
        format!("{} records, seq {first_seq:?}..={last_seq:?}", g.len())
    };
    assert!(
        below_generations[0] == first,
        "below.log before the cut: {:?}",
        below_generations.iter().map(show).collect::<Vec<_>>()
    );
    assert!(
        below_generations[1] == below_second,
        "below.log after the cut"
    );
    assert!(
        generations(&agent, &above) == vec![above_all],
        "above.log, once, whole"
    );
    assert_bodies(
        &agent,
        &BTreeMap::from([(other.clone(), good_lines("other", 0..20))]),
    );
    assert_survived(agent);
}

#[test]
fn file_replaced_by_a_directory_does_not_stop_collection() {
    let scene = Scene::new();
    let (victim, other) = (scene.path("victim.log"), scene.path("other.log"));
    append(&victim, &joined(&good_lines("victim", 0..10)));
    append(&other, &joined(&good_lines("other", 0..10)));
    let agent = Agent::start(
        &scene.data_dir(),
        &scene.config("files: {rescan_interval: 500ms}\n"),
    );
    wait_for_records(&agent, &victim, 10);

    std::fs::remove_file(&victim).unwrap();
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("inside.log"), "not matched by logs/*.log\n").unwrap();
    append(&other, &joined(&good_lines("other", 10..20)));
    let fresh = scene.path("fresh.log");
    append(&fresh, &joined(&good_lines("fresh", 0..10)));
    // Past a rescan, which sees the directory at a path the include glob matches.
    std::thread::sleep(Duration::from_millis(1200));
    append(&other, &joined(&good_lines("other", 20..30)));

    // And back to a file.
    std::fs::remove_dir_all(&victim).unwrap();
    append(&victim, &joined(&good_lines("victim", 10..20)));

    let expected = BTreeMap::from([
        (victim.clone(), good_lines("victim", 0..20)),
        (other.clone(), good_lines("other", 0..30)),
        (fresh.clone(), good_lines("fresh", 0..10)),
    ]);
    let records = assert_bodies(&agent, &expected);
    // Once the file was deleted its path is no longer tracked, so the directory that
    // took its place is only a non-file the glob happens to match: skipped like any
    // other, not an open error.
    let inside = victim.join("inside.log");
    assert!(records_at(&records, &inside).is_empty());
    assert_survived(agent);
}

const NOBODY: u32 = 65534;

fn chown(path: &Path, uid: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: chown(2) on a NUL-terminated path we own.
    let rc = unsafe { libc::chown(c.as_ptr(), uid, uid) };
    assert_eq!(
        rc,
        0,
        "chown {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn unreadable_file_is_counted_and_the_others_are_collected() {
    // It runs the agent as user nobody.
    if !is_root("unreadable_file_is_counted_and_the_others_are_collected") {
        return;
    }
    let scene = Scene::new();
    chmod(scene.dir.path(), 0o755);
    chmod(&scene.logs, 0o755);
    let data = scene.data_dir();
    std::fs::create_dir_all(&data).unwrap();
    chown(&data, NOBODY);
    let (secret, readable, other) = (
        scene.path("secret.log"),
        scene.path("readable.log"),
        scene.path("other.cri"),
    );
    append(&secret, &joined(&good_lines("secret", 0..10)));
    chmod(&secret, 0o600);
    append(&readable, &joined(&good_lines("readable", 0..10)));
    chmod(&readable, 0o644);
    append(&other, &cri_lines(&good_lines("other", 0..10)));
    chmod(&other, 0o644);

    let agent = Agent::start_with(&data, &scene.config(""), &[], |cmd| {
        use std::os::unix::process::CommandExt;
        cmd.uid(NOBODY).gid(NOBODY);
    });
    append(&readable, &joined(&good_lines("readable", 10..20)));
    append(&other, &cri_lines(&good_lines("other", 10..20)));
    append(&secret, &joined(&good_lines("secret", 10..20)));

    let expected = BTreeMap::from([
        (readable.clone(), good_lines("readable", 0..20)),
        (other.clone(), good_lines("other", 0..20)),
        (secret.clone(), Vec::new()),
    ]);
    assert_bodies(&agent, &expected);
    let text = agent.metrics();
    assert!(
        metric(
            &text,
            "logtap_file_open_errors_total",
            &[("reason", "permission_denied")]
        ) >= 1.0,
        "the denied open is counted\n{text}"
    );
    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(secret.to_str().unwrap())),
        "a warning names the unreadable file:\n{log}"
    );
    assert_survived(agent);
}

fn logtap(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(logtap_bin())
        .args(args)
        .arg(config)
        .output()
        .expect("run logtap")
}

/// `check-config` exits 2 with `needles` in its message; `run` refuses to start with
/// the same message and creates nothing in its data dir.
fn assert_rejected(name: &str, yaml: &str, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join(name);
    let data = dir.path().join("data");
    std::fs::write(&config, format!("data_dir: {}\n{yaml}", data.display())).unwrap();

    let check = logtap(&["check-config"], &config);
    let message = String::from_utf8_lossy(&check.stderr).into_owned();
    assert_eq!(
        check.status.code(),
        Some(2),
        "check-config exit code: {message}"
    );
    for needle in needles {
        assert!(message.contains(needle), "{needle:?} in {message:?}");
    }

    let started = Instant::now();
    let run = logtap(&["run", "--metrics-listen", "off", "--config"], &config);
    let run_message = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(!run.status.success(), "run must fail: {run_message}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        run_message.contains(message.trim()),
        "run reports the same message {message:?}: {run_message:?}"
    );
    assert!(!data.exists(), "run started despite the bad config");
}

#[test]
fn config_typo_names_the_field_and_the_line() {
    assert_rejected(
        "typo.yaml",
        "sources:\n  - name: app\n    include: [\"/tmp/x/*.log\"]\n    fromat: cri\n    sink: local\nsinks:\n  local: {type: store}\n",
        &["typo.yaml", "fromat", "line 5"],
    );
}

#[test]
fn config_invalid_regex_names_the_field() {
    assert_rejected(
        "regex.yaml",
        "sources:\n  - name: app\n    include: [\"/tmp/x/*.log\"]\n    parser: {type: regex, pattern: '(?P<level>\\w+ (unclosed'}\n    sink: local\nsinks:\n  local: {type: store}\n",
        &["regex.yaml", "sources[0].parser.pattern", "unclosed"],
    );
    assert_rejected(
        "multiline.yaml",
        "sources:\n  - name: app\n    include: [\"/tmp/x/*.log\"]\n    multiline: {start: '[a-'}\n    sink: local\nsinks:\n  local: {type: store}\n",
        &["multiline.yaml", "sources[0].multiline.start"],
    );
}

#[test]
fn config_unknown_sink_names_the_field_and_the_sink() {
    assert_rejected(
        "sink.yaml",
        "sources:\n  - name: app\n    include: [\"/tmp/x/*.log\"]\n    sink: nosuch\nsinks:\n  local: {type: store}\n",
        &["sink.yaml", "sources[0].sink", "nosuch"],
    );
}

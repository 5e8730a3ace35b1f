//! Harness for end-to-end tests: the real `logtap` binary, real files, real signals.
//!
//! Each test gets its own temporary directory holding the watched logs, the agent's
//! data dir (checkpoints, store) and its config. The store is read back through the
//! real `logtap query --json` command, so the tests cover the query path too.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

pub mod bpffs;
pub mod cri;
pub mod fluent_bit;
pub mod node;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use serde_json::Value;

/// The timestamp of CRI lines the tests write.
pub const TS: &str = "2026-11-21T10:45:31.210111144Z";

pub fn logtap_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_logtap"))
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `done` every 50 ms until it holds; panics with `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running agent.
pub struct Agent {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub metrics_port: u16,
}

impl Agent {
    /// Writes `config_yaml` (which must not set `data_dir` or `metrics`) into
    /// `data_dir/agent.yaml` and starts `logtap run` on it, following files.
    pub fn start(data_dir: &Path, config_yaml: &str) -> Agent {
        Agent::start_with(data_dir, config_yaml, &[], |_| {})
    }

    /// Like `start`, with extra `run` arguments and a hook to adjust the command.
    pub fn start_with(
        data_dir: &Path,
        config_yaml: &str,
        extra_args: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Agent {
        std::fs::create_dir_all(data_dir).unwrap();
        let metrics_port = free_port();
        let config = data_dir.join("agent.yaml");
        std::fs::write(
            &config,
            format!(
                "data_dir: {}\nmetrics: {{listen: \"127.0.0.1:{metrics_port}\"}}\n{config_yaml}",
                data_dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("agent.log"))
            .unwrap();
        let mut cmd = Command::new(logtap_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .args(extra_args)
            .env("LOGTAP_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        adjust(&mut cmd);
        let child = cmd.spawn().expect("spawn logtap");
        Agent {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            config,
            metrics_port,
        }
    }

    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to flush or checkpoint.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (up to 30 s) for a clean exit; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.success();
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                let _ = c.wait();
                panic!("agent did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// The `/metrics` text, once the endpoint answers (waits up to 10 s).
    pub fn metrics(&self) -> String {
        let mut text = None;
        wait_for(Duration::from_secs(10), "the /metrics endpoint", || {
            text = http_get(self.metrics_port, "/metrics");
            text.is_some()
        });
        text.unwrap()
    }

    /// `/healthz`: its status code and JSON body, once the endpoint answers (waits up
    /// to 10 s).
    pub fn health(&self) -> (u16, Value) {
        let mut answer = None;
        wait_for(Duration::from_secs(10), "the /healthz endpoint", || {
            answer = http_get_status(self.metrics_port, "/healthz");
            answer.is_some()
        });
        let (status, body) = answer.unwrap();
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/healthz answered {status} {body:?}: {e}"));
        (status, json)
    }

    /// Waits (up to 20 s) until `/readyz` answers 200: the sinks are open and the
    /// file source is built, so a SIGTERM now is handled rather than fatal.
    pub fn wait_ready(&self) {
        wait_for(Duration::from_secs(20), "/readyz to answer 200", || {
            matches!(
                http_get_status(self.metrics_port, "/readyz"),
                Some((200, _))
            )
        });
    }

    /// Holds the agent to about `percent` % of the time (SIGSTOP / SIGCONT in 100 ms
    /// periods) until the returned guard is dropped: a backlog that lasts, without
    /// root or cgroups.
    pub fn throttle(&self, percent: u32) -> Throttle {
        let pid = self.pid() as i32;
        let run = Duration::from_millis(u64::from(percent.clamp(1, 100)));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(run);
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                std::thread::sleep(Duration::from_millis(100).saturating_sub(run));
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }
        });
        Throttle {
            stop,
            thread: Some(thread),
        }
    }

    /// The agent's own log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("agent.log")).unwrap_or_default()
    }
}

/// See [`Agent::throttle`]; dropping it lets the agent run freely again.
pub struct Throttle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let (status, body) = http_get_status(port, path)?;
    (status == 200).then_some(body)
}

/// The status code and body of `GET path`, or `None` when nothing answered.
pub fn http_get_status(port: u16, path: &str) -> Option<(u16, String)> {
    let (status, body) = http_request(port, "GET", path, None, b"", Duration::from_secs(5))?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One HTTP/1.1 request on its own connection to 127.0.0.1:`port` (`Connection:
/// close`, so the answer ends at EOF); the status and the answer's body, or `None`
/// when nothing answered. Tests speak raw HTTP to see exactly what the agent
/// answers, including to requests a well-behaved client would not send.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let content = match content_type {
        Some(kind) => format!("Content-Type: {kind}\r\nContent-Length: {}\r\n", body.len()),
        None => String::new(),
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{content}Connection: close\r\n\r\n"
    )
    .ok()?;
    // A server may answer (413) before it read the whole body.
    let _ = s.write_all(body);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..head_end]).ok()?;
    let status = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    Some((status, answer[head_end + 4..].to_vec()))
}

/// Tests that need root (to run the agent as `nobody`, to load probes, to see
/// capabilities dropped): `false` (with a note) when not root and
/// `LOGTAP_TEST_ALLOW_NONROOT=1` lets them skip; a panic when not root otherwise, so a
/// run that cannot check them never passes silently.
pub fn is_root(test: &str) -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("LOGTAP_TEST_ALLOW_NONROOT").as_deref() == Ok("1") {
        eprintln!("note: not root; skipping {test} (LOGTAP_TEST_ALLOW_NONROOT=1)");
        return false;
    }
    panic!("{test} must run as root; set LOGTAP_TEST_ALLOW_NONROOT=1 to skip it");
}

/// The value of a metric series (sum over series whose label set contains every
/// `labels` pair), or 0 when absent.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric_name == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Every record in the store, duplicates included (`query --json --raw --limit 0`).
pub fn store_records(store: &Path) -> Vec<Value> {
    // Before the agent created its store there is nothing in it (a loaded machine can
    // take a while to start the agent; waits poll this).
    if !store.is_dir() {
        return Vec::new();
    }
    query_json(store, &["--raw"])
}

/// Runs `logtap query --json --limit 0 --store STORE ARGS...` and parses its lines.
pub fn query_json(store: &Path, args: &[&str]) -> Vec<Value> {
    let out = Command::new(logtap_bin())
        .args(["query", "--json", "--limit", "0", "--store"])
        .arg(store)
        .args(args)
        .output()
        .expect("run logtap query");
    assert!(
        out.status.success(),
        "logtap query failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("query --json prints JSON lines"))
        .collect()
}

/// The body of a record as bytes (`body`, or `body_base64` for invalid UTF-8).
pub fn body_bytes(record: &Value) -> Vec<u8> {
    if let Some(b) = record.get("body").and_then(Value::as_str) {
        return b.as_bytes().to_vec();
    }
    let b64 = record["body_base64"].as_str().expect("body or body_base64");
    base64_decode(b64)
}

pub fn flags(record: &Value) -> Vec<String> {
    record["flags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .expect("base64 alphabet") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Sequence numbers found in record bodies of the form `... seq=<n> ...`.
pub fn seq_of(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let rest = &text[text.find("seq=")? + 4..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Appends `seq=<n>` lines to a file at roughly `lines_per_sec`, in small bursts, and
/// calls `between(n)` after every burst (where tests rotate or truncate). Returns the
/// number of lines written.
pub fn write_lines_at_rate(
    path: &Path,
    total: u64,
    lines_per_sec: u64,
    mut between: impl FnMut(u64, &Path),
) -> u64 {
    let burst = (lines_per_sec / 1000).max(1);
    let start = Instant::now();
    let mut file = open_append(path);
    let mut n = 0;
    let mut buf = Vec::with_capacity(burst as usize * 64);
    while n < total {
        buf.clear();
        for _ in 0..burst.min(total - n) {
            writeln!(
                buf,
                "line seq={n} payload-{:08x}",
                n.wrapping_mul(2654435761)
            )
            .unwrap();
            n += 1;
        }
        file.write_all(&buf).unwrap();
        let before = std::fs::metadata(path).map(|m| (m.len(), inode(&m))).ok();
        between(n, path);
        // The hook may have rotated the file away: reopen by path, like a writer
        // that follows its log file (logrotate `create` + SIGHUP, or copytruncate).
        let after = std::fs::metadata(path).map(|m| (m.len(), inode(&m))).ok();
        if before.map(|b| b.1) != after.map(|a| a.1) {
            file = open_append(path);
        }
        let due = start + Duration::from_secs_f64(n as f64 / lines_per_sec as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    n
}

fn inode(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.ino()
}

pub fn open_append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// Like [`wait_for`], polling every `poll` (for checks that are expensive themselves,
/// such as a query over a large store).
pub fn wait_for_every(timeout: Duration, poll: Duration, what: &str, done: impl FnMut() -> bool) {
    if !poll_until(timeout, poll, done) {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// Polls `done` every `poll` until it holds or `timeout` passed; returns whether it
/// held, for tests that report what is missing themselves rather than time out.
pub fn poll_until(timeout: Duration, poll: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(poll);
    }
    true
}

/// The store's own totals (`query --stats --json`): `records`, `unique`,
/// `duplicates`, and per-source counts under `sources`.
pub fn store_stats(store: &Path) -> Value {
    let out = Command::new(logtap_bin())
        .args(["query", "--stats", "--json", "--store"])
        .arg(store)
        .output()
        .expect("run logtap query --stats");
    assert!(
        out.status.success(),
        "logtap query --stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("query --stats --json prints one JSON object")
}

/// `unique` of [`store_stats`], or 0 before the store exists.
pub fn store_unique(store: &Path) -> u64 {
    if !store.exists() {
        return 0;
    }
    store_stats(store)["unique"].as_u64().unwrap_or(0)
}

/// The body that [`write_lines_at_rate`] writes for `seq` (without the newline), to
/// tell a whole line from a torn one.
pub fn rate_line(seq: u64) -> String {
    format!(
        "line seq={seq} payload-{:08x}",
        seq.wrapping_mul(2654435761)
    )
}

/// How often each `seq=` occurs in the store's records (duplicates included), and the
/// records whose body is not a whole line written by [`write_lines_at_rate`].
pub struct SeqCensus {
    pub counts: std::collections::BTreeMap<u64, u32>,
    pub malformed: Vec<Value>,
}

impl SeqCensus {
    pub fn of(records: &[Value]) -> SeqCensus {
        let mut counts = std::collections::BTreeMap::new();
        let mut malformed = Vec::new();
        for r in records {
            let body = body_bytes(r);
            match seq_of(&body) {
                Some(seq) if body == rate_line(seq).as_bytes() => {
                    *counts.entry(seq).or_insert(0) += 1
                }
                _ => malformed.push(r.clone()),
            }
        }
        SeqCensus { counts, malformed }
    }

    /// Copies beyond the first, over every seq.
    pub fn duplicates(&self) -> u64 {
        self.counts.values().map(|&c| u64::from(c) - 1).sum()
    }

    /// Seqs in `0..total` that are absent.
    pub fn missing(&self, total: u64) -> Vec<u64> {
        (0..total)
            .filter(|s| !self.counts.contains_key(s))
            .collect()
    }
}

/// Per source, the offsets of its records in store order; panics (naming the source)
/// unless they strictly increase.
pub fn assert_offsets_increase(records: &[Value]) {
    let mut last: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for r in records {
        let source = r["source_id"].as_str().expect("source_id").to_string();
        let offset = r["offset"].as_u64().expect("offset");
        if let Some(&prev) = last.get(&source) {
            assert!(
                offset > prev,
                "offsets of source {source} ({}) go from {prev} to {offset}",
                r["path"]
            );
        }
        last.insert(source, offset);
    }
}

/// The records `logtap query` shows by default: deduplicated by
/// `(source_id, offset)` (`query --json --limit 0`).
pub fn store_records_deduplicated(store: &Path) -> Vec<Value> {
    query_json(store, &[])
}

/// A config with three sources over `logs`, all into the store: `*.log` raw, `*.cri`
/// CRI, `*.json` raw with the JSON parser. `extra` goes first (top-level settings).
pub fn three_format_config(logs: &Path, extra: &str) -> String {
    let logs = logs.display();
    format!(
        "{extra}sources:\n\
         \x20 - name: raw\n    include: [\"{logs}/*.log\"]\n    sink: local\n\
         \x20 - name: cri\n    include: [\"{logs}/*.cri\"]\n    format: cri\n    sink: local\n\
         \x20 - name: json\n    include: [\"{logs}/*.json\"]\n    parser: {{type: json}}\n    sink: local\n\
         sinks:\n  local: {{type: store}}\n"
    )
}

/// The stored records whose body starts with `prefix` (none while the store does
/// not exist yet).
pub fn records_of(store: &Path, prefix: &str) -> Vec<Value> {
    if !store.exists() {
        return Vec::new();
    }
    store_records(store)
        .into_iter()
        .filter(|r| r["body"].as_str().is_some_and(|b| b.starts_with(prefix)))
        .collect()
}

/// Deterministic pseudo-random numbers (xorshift64*), reproducible from the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// In `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

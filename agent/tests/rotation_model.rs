//! Generated histories of a rotating log file and a restarting agent, with the real
//! binary, against an exact oracle.
//!
//! A history is a sequence of [`Op`]s: appends, kubelet-style rename rotations,
//! copytruncate, truncation, deletion of the oldest rotated file, a `LogCollection`
//! change (a live rebuild of the file source, through a fake API server speaking the
//! real list + watch protocol), and the agent killed (`kill -9`), stopped (SIGTERM)
//! and started again. Only `app.log` matches the
//! source's glob; rotated files (`app.log.<n>`) are read through the descriptor the
//! agent holds, or found again by identity when the agent was stopped meanwhile.
//!
//! # Oracle
//!
//! Every line written must end up in the store, except
//! - the lines of a file destroyed (truncated, copy-truncated or deleted) *while the
//!   agent was stopped* that were not stored at that moment: the agent never saw them
//!   whole, so they may be lost;
//! - the lines of a file the agent's durable state does not know, moved out of the
//!   glob's sight: a file whose identity is not in the checkpoint table the stopped
//!   agent left (read back here; the agent writes a new file's entry within 100 ms of
//!   opening it), renamed away while the agent is down, leaves the restarted agent
//!   nothing to find it by.
//!
//! While the agent runs, a destructive operation first waits until the file's lines
//! are stored — a file the agent could see is never allowed to lose a line. A
//! rotation does not wait for the agent to open the file (only, after a start, for
//! its first look at the directory): a file created and renamed away before the agent
//! opened it is followed by its rename. No record is
//! torn or foreign, and no line is stored more than once per `kill -9` it lived
//! through plus one per rebuild plus one (SIGTERM acknowledges and checkpoints
//! everything, so it duplicates nothing; a rebuild re-reads what its sinks did not
//! acknowledge in time).
//!
//! The case budget is fixed (`LOGTAP_MODEL_CASES`, default 12, split between two
//! tests that run side by side) and the generator's seeds too, so CI runs the same
//! histories every time; set `LOGTAP_MODEL_SEED` to explore others.

mod common;
#[path = "../src/discovery/watcher/fake_api.rs"]
#[allow(dead_code, reason = "the fake serves the watcher's unit tests too")]
mod fake_api;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

#[derive(Clone, Debug)]
enum Op {
    /// Append this many lines to `app.log` (creating it when a rotation moved it).
    Append(u32),
    /// `app.log` → `app.log.<n>`; the next append creates a new `app.log`.
    Rotate,
    /// Copy `app.log` to `app.log.<n>`, then truncate `app.log` in place.
    CopyTruncate,
    /// Truncate `app.log` to nothing (its lines are not kept anywhere).
    Truncate,
    /// Delete the oldest rotated file, as the kubelet does after two more rotations.
    DeleteOldest,
    /// Change the `LogCollection` (it selects no container here): the running agent
    /// rebuilds its pipeline, draining its file source for at most 2 s.
    Rebuild,
    Kill9,
    Term,
    Start,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u32..20_000).prop_map(Op::Append),
        2 => Just(Op::Rotate),
        1 => Just(Op::CopyTruncate),
        1 => Just(Op::Truncate),
        1 => Just(Op::DeleteOldest),
        1 => Just(Op::Rebuild),
        1 => Just(Op::Kill9),
        1 => Just(Op::Term),
        2 => Just(Op::Start),
    ]
}

/// A file on disk and the lines it holds.
struct File {
    path: PathBuf,
    seqs: Vec<u64>,
}

/// The world of one history: the files, the agent, and what the oracle allows.
struct World {
    logs: PathBuf,
    data: PathBuf,
    active: File,
    /// Rotated files, oldest first.
    rotated: Vec<File>,
    rotations: u32,
    agent: Option<Agent>,
    next_seq: u64,
    /// Lines that may be missing: unstored when their file was destroyed while the
    /// agent was stopped.
    may_lose: BTreeSet<u64>,
    /// Of `may_lose`, the lines of files the checkpoint table did not know.
    unknown_to_checkpoints: BTreeSet<u64>,
    /// Whether the active file was not in the checkpoint table when the agent last
    /// stopped: if it is rotated away before the next start, its lines may be lost.
    active_unknown: bool,
    /// Whether the running agent opened a file since its start: until then it may not
    /// watch the directory yet, and a rotation waits for it.
    agent_looked: bool,
    /// `kill -9`s so far: a line can be read again once per kill (its checkpoint
    /// not yet persisted), which bounds its copies.
    kills: u32,
    /// The API server the agent watches `LogCollection`s on.
    api: fake_api::FakeApi,
    /// Collection changes so far (each may re-read what was not acknowledged).
    rebuilds: u32,
    /// Empty: the collection's pod log directory (it selects nothing).
    pod_logs: PathBuf,
}

const CONFIG: &str = "checkpoint: {interval: 500ms}\nfiles: {rotate_wait: 1s}\n";

impl World {
    fn new(dir: &Path) -> World {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        World {
            active: File {
                path: logs.join("app.log"),
                seqs: Vec::new(),
            },
            logs,
            data: dir.join("data"),
            rotated: Vec::new(),
            rotations: 0,
            agent: None,
            next_seq: 0,
            may_lose: BTreeSet::new(),
            unknown_to_checkpoints: BTreeSet::new(),
            active_unknown: false,
            agent_looked: false,
            kills: 0,
            api: fake_api::FakeApi::start_new(),
            rebuilds: 0,
            pod_logs: {
                let pods = dir.join("pods");
                std::fs::create_dir_all(&pods).unwrap();
                pods
            },
        }
    }

    fn config(&self) -> String {
        format!(
            "{CONFIG}sources:\n  - name: app\n    include: [\"{}/*.log\"]\n    sink: local\n\
             sinks:\n  local: {{type: store}}\n\
             cri: {{enabled: false}}\n\
             kubernetes: {{api_url: \"{}\", node_name: model, metadata_wait: 1s}}\n\
             collections: {{pod_logs: \"{}\", admin_namespace: shop}}\n",
            self.logs.display(),
            self.api.url(),
            self.pod_logs.display(),
        )
    }

    /// A new version of the one `LogCollection`: it selects pods labelled with this
    /// version, of which there are none, so only the rebuild matters.
    fn collection_spec(&self) -> serde_json::Value {
        serde_json::json!({
            "selector": {"include_labels": {"version": self.rebuilds.to_string()}},
            "sources": [{"name": "out", "input": {"type": "container_stdout"}}],
            "sink": {"type": "store", "path": self.data.join("collection")},
        })
    }

    fn store(&self) -> PathBuf {
        self.data.join("store")
    }

    fn stored(&self) -> BTreeMap<u64, u32> {
        SeqCensus::of(&store_records(&self.store())).counts
    }

    /// Waits (up to a minute) until every line of `seqs` the oracle requires is
    /// stored; returns those still missing.
    fn wait_stored(&self, seqs: &[u64]) -> Vec<u64> {
        let wanted: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|s| !self.may_lose.contains(s))
            .collect();
        let mut missing = Vec::new();
        poll_until(Duration::from_secs(60), Duration::from_millis(200), || {
            let stored = self.stored();
            missing = wanted
                .iter()
                .copied()
                .filter(|s| !stored.contains_key(s))
                .collect();
            missing.is_empty()
        });
        missing
    }

    /// Before `file` is destroyed: with the agent running, wait until its lines are
    /// stored; with it stopped, the lines not stored now may be lost.
    fn before_destroying(&mut self, file: &File) {
        if self.agent.is_some() {
            let missing = self.wait_stored(&file.seqs);
            assert!(
                missing.is_empty(),
                "{} lines of {} not stored before it was destroyed: {}",
                missing.len(),
                file.path.display(),
                ranges(&missing)
            );
        } else {
            let stored = self.stored();
            self.may_lose
                .extend(file.seqs.iter().filter(|s| !stored.contains_key(s)));
        }
    }

    /// The files the stopped agent's checkpoint table does not know: rotated ones are
    /// out of the glob's sight already; the active one is if it is rotated before the
    /// next start. (A file the table knows and that is gone is dropped, and its lines
    /// counted in `before_destroying`.)
    fn after_stop(&mut self) {
        let table = logtap::checkpoint::Registry::open(&self.data.join("checkpoints"))
            .expect("the stopped agent's checkpoint table is readable");
        let stored = self.stored();
        // A file with a line stored is known: its entry is made durable before its
        // first package reaches the store.
        let unknown = |f: &File| {
            let Ok(meta) = std::fs::metadata(&f.path) else {
                return false;
            };
            !f.seqs.is_empty()
                && !f.seqs.iter().any(|s| stored.contains_key(s))
                && table.lookup(meta.dev(), meta.ino()).is_none()
        };
        for f in &self.rotated {
            if unknown(f) {
                self.may_lose.extend(&f.seqs);
                self.unknown_to_checkpoints.extend(&f.seqs);
            }
        }
        self.active_unknown = unknown(&self.active);
    }

    fn rotated_path(&mut self) -> PathBuf {
        self.rotations += 1;
        self.logs.join(format!("app.log.{}", self.rotations))
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Append(n) => {
                let mut f = open_append(&self.active.path);
                let mut buf = Vec::with_capacity(n as usize * 40);
                for _ in 0..n {
                    writeln!(buf, "{}", rate_line(self.next_seq)).unwrap();
                    self.active.seqs.push(self.next_seq);
                    self.next_seq += 1;
                }
                f.write_all(&buf).unwrap();
            }
            Op::Rotate => {
                if !self.active.path.exists() {
                    return;
                }
                if let Some(agent) = &self.agent
                    && !self.agent_looked
                {
                    wait_open(agent, &self.active.path);
                    self.agent_looked = true;
                }
                let to = self.rotated_path();
                std::fs::rename(&self.active.path, &to).unwrap();
                let seqs = std::mem::take(&mut self.active.seqs);
                if self.agent.is_none() && self.active_unknown {
                    self.may_lose.extend(&seqs);
                    self.unknown_to_checkpoints.extend(&seqs);
                }
                self.active_unknown = false;
                self.rotated.push(File { path: to, seqs });
            }
            Op::CopyTruncate | Op::Truncate => {
                if !self.active.path.exists() {
                    return;
                }
                let active = File {
                    path: self.active.path.clone(),
                    seqs: std::mem::take(&mut self.active.seqs),
                };
                self.before_destroying(&active);
                if matches!(op, Op::CopyTruncate) {
                    let to = self.rotated_path();
                    std::fs::copy(&active.path, &to).unwrap();
                    // The copy is not matched by the glob: its lines count as the
                    // truncated file's, not as a file of their own.
                    self.rotated.push(File {
                        path: to,
                        seqs: Vec::new(),
                    });
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&active.path)
                    .unwrap()
                    .set_len(0)
                    .unwrap();
            }
            Op::DeleteOldest => {
                if self.rotated.is_empty() {
                    return;
                }
                let oldest = self.rotated.remove(0);
                self.before_destroying(&oldest);
                std::fs::remove_file(&oldest.path).unwrap();
            }
            Op::Rebuild => {
                self.rebuilds += 1;
                self.api
                    .put_collection("shop", "model", self.collection_spec());
                if self.agent.is_some() {
                    // Its status for this generation: the running agent took the change
                    // (as a rebuild, or in the config it started with if it had not
                    // listed the collections yet).
                    wait_for(Duration::from_secs(30), "the collection applied", || {
                        self.api.collection("shop", "model").is_some_and(|o| {
                            o["status"]["observed_generation"] == o["metadata"]["generation"]
                        })
                    });
                }
            }
            Op::Kill9 => {
                if let Some(mut agent) = self.agent.take() {
                    agent.kill9();
                    self.kills += 1;
                    self.after_stop();
                }
            }
            Op::Term => {
                if let Some(mut agent) = self.agent.take() {
                    // SIGTERM before the agent installed its handler is fatal, as for
                    // any process; what that does is what `Kill9` tests.
                    agent.wait_ready();
                    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.log());
                    self.after_stop();
                }
            }
            Op::Start => {
                if self.agent.is_none() {
                    self.agent = Some(Agent::start(&self.data, &self.config()));
                    // It finds `app.log` by the glob.
                    self.active_unknown = false;
                    self.agent_looked = false;
                }
            }
        }
    }

    /// Starts the agent if needed, waits for every required line, stops it, and
    /// checks the store against the oracle.
    fn finish(mut self) -> Result<String, TestCaseError> {
        self.apply(&Op::Start);
        let all: Vec<u64> = (0..self.next_seq).collect();
        self.wait_stored(&all);
        let log = self.agent.as_ref().map(Agent::log).unwrap_or_default();
        self.apply(&Op::Term);
        let census = SeqCensus::of(&store_records(&self.store()));
        prop_assert!(
            census.malformed.is_empty(),
            "torn or foreign records: {:?}",
            census.malformed.first()
        );
        let missing: Vec<u64> = (0..self.next_seq)
            .filter(|s| !census.counts.contains_key(s) && !self.may_lose.contains(s))
            .collect();
        prop_assert!(
            missing.is_empty(),
            "{} lines missing: {}\n{log}",
            missing.len(),
            ranges(&missing)
        );
        let limit = 1 + self.kills + self.rebuilds;
        let over: Vec<(u64, u32)> = census
            .counts
            .iter()
            .filter(|&(_, &c)| c > limit)
            .map(|(&s, &c)| (s, c))
            .collect();
        prop_assert!(over.is_empty(), "stored more than {limit} times: {over:?}");
        let lost = self
            .may_lose
            .iter()
            .filter(|s| !census.counts.contains_key(s))
            .count();
        let lost_unknown = self
            .unknown_to_checkpoints
            .iter()
            .filter(|s| !census.counts.contains_key(s))
            .count();
        Ok(format!(
            "{} lines, {} stored, {} duplicates, {lost} lost of {} allowed \
             ({lost_unknown} of files unknown to the checkpoint table)",
            self.next_seq,
            census.counts.len(),
            census.duplicates(),
            self.may_lose.len()
        ))
    }
}

/// Waits (up to 20 s) until the agent holds `path` open.
fn wait_open(agent: &Agent, path: &Path) {
    let fds = PathBuf::from(format!("/proc/{}/fd", agent.pid()));
    wait_for(
        Duration::from_secs(20),
        "the agent to open the file",
        || {
            std::fs::read_dir(&fds).is_ok_and(|dir| {
                dir.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
            })
        },
    );
}

/// `a..=b, c..=d, …` of sorted numbers, for readable failures.
fn ranges(seqs: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let start = seqs[i];
        while i + 1 < seqs.len() && seqs[i + 1] == seqs[i] + 1 {
            i += 1;
        }
        out.push(format!("{start}..={}", seqs[i]));
        i += 1;
    }
    out.join(", ")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The histories of shard `shard` of [`SHARDS`]: `LOGTAP_MODEL_CASES` split between
/// the shards, each with its own seed, so the shards run side by side (each case is
/// seconds of an agent mostly waiting on the clock: one test of 12 cases was the
/// longest step of CI's test run, 144 s).
fn histories_of_shard(shard: u64) {
    let cases = env_u64("LOGTAP_MODEL_CASES", 12).div_ceil(SHARDS) as u32;
    let seed = env_u64("LOGTAP_MODEL_SEED", 0x6c6f_6774_6170) + shard;
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            // Each case runs the real agent for seconds: shrink a little only.
            max_shrink_iters: env_u64("LOGTAP_MODEL_SHRINK", 32) as u32,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let histories = proptest::collection::vec(op(), 4..16);
    let case = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&histories, |ops| {
        let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        println!("shard {shard} case {case}: {ops:?}");
        let dir = tempfile::tempdir().unwrap();
        let mut world = World::new(dir.path());
        // The agent runs from the start; the history may stop and restart it.
        world.apply(&Op::Start);
        for op in &ops {
            world.apply(op);
        }
        let summary = world.finish()?;
        println!("  {summary}");
        Ok(())
    });
    if let Err(e) = result {
        panic!("shard {shard} (seed {seed}): {e}");
    }
}

/// How many tests the generated histories are split between.
const SHARDS: u64 = 2;

#[test]
fn generated_rotation_and_restart_histories_lose_only_what_the_agent_never_saw() {
    histories_of_shard(0);
}

#[test]
fn generated_histories_second_shard() {
    histories_of_shard(1);
}

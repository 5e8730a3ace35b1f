//! logtap's throughput harness.
//!
//! Generates input files, runs the real `logtap` binary on them in one-shot mode (read
//! everything, ship, checkpoint, exit) and reports, per scenario:
//! - MB/s per core: input bytes ÷ CPU seconds (user + system) of the agent process,
//! - wall MB/s, CPU seconds per GB, peak RSS,
//! - for store scenarios, how much the input shrank on disk (input bytes ÷ store
//!   bytes): lz4's speed depends on how redundant the input is, so this says what kind
//!   of input a number was measured on,
//! - the same for a baseline tool over the same file in the same run (`wc -l`), and the
//!   ratio between the two — machines here are noisy, so ratios are what compare
//!   across runs,
//! - Fluent Bit (the peer in `../shared/peers/fluent-bit`, or `--fluent-bit`) over the
//!   same file in the same run, taking turns with logtap, in its nearest configuration
//!   ([`fluentbit`]): its CPU seconds, MB/s per core, peak RSS and logtap ÷ Fluent Bit,
//!   in a second table. It is skipped, and the tables say so, when there is no binary.
//!
//! # Inputs
//!
//! - plain lines of random words (100 and 500 bytes),
//! - CRI logs of real-looking container output ([`templated_message`]): a few dozen
//!   message templates as web servers, Go/Java/Python services, databases and
//!   Kubernetes controllers write them, with varying ids, durations, addresses and
//!   request ids — the headline CRI scenario,
//! - CRI logs whose messages are uniformly random words of a 25-word vocabulary: far
//!   less redundant than real logs (short lz4 matches only), kept as the hard case,
//! - JSON objects, and Java logs with stack traces for multiline grouping.
//!
//! Timing comes from `wait4`'s rusage of each child: the harness's own work (generating
//! data) is never counted. Usage: `cargo xtask bench [--size-mb N] [--runs N]
//! [--markdown FILE] [--only NAME]`. With `--markdown`, the results (machine, command
//! and table) replace the part of FILE between `<!-- bench:begin -->` and
//! `<!-- bench:end -->`, or are appended with the markers when it has none.
//!
//! `cargo xtask bench capture` is the eBPF capture benchmark instead ([`capture`]; needs
//! root): writer slowdown, capture throughput and loss after repair.
//!
//! `cargo xtask bench network` runs the CRI input into the Kafka and OTLP sinks and the
//! local store side by side, and checks that the destinations received every record
//! ([`network`]).
//!
//! `cargo xtask bench lz4` compresses the store's own payloads with `lz4_flex` and the
//! C liblz4 at several accelerations and block sizes ([`lz4`]).

mod capture;
mod fluentbit;
mod heap;
mod lz4;
mod network;

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    about = "logtap throughput harness",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    files: Args,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// The eBPF capture benchmark (needs root): writer slowdown, capture MB/s, loss.
    Capture(capture::CaptureArgs),
    /// Network sinks (Kafka, OTLP) against the local store, on the same CRI input,
    /// verified delivered: MB/s per core, CPU s per GB, peak RSS.
    Network(network::NetworkArgs),
    /// The store's lz4 (`lz4_flex`) against the C liblz4 and larger blocks, on the
    /// store's own payloads: CPU s per GB, compression ratio.
    Lz4(lz4::Lz4Args),
    /// The capture benchmark's writer (run by `capture`).
    #[command(hide = true)]
    CaptureWriter(capture::WriterArgs),
    /// The capture benchmark's CRI log writer (run by `capture`).
    #[command(hide = true)]
    CaptureShim(capture::ShimArgs),
}

#[derive(clap::Args, Debug)]
struct Args {
    /// Size of each generated input file, in MiB.
    #[arg(long, default_value_t = 512)]
    size_mb: u64,
    /// Runs per scenario; the best (least CPU) run is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The logtap binary (default: target/release/logtap next to this harness).
    #[arg(long)]
    logtap: Option<PathBuf>,
    /// Where inputs are generated (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the results as a markdown table into this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Only scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// The Fluent Bit binary to run beside logtap (default: $LOGTAP_FLUENT_BIT, then
    /// ../shared/peers/fluent-bit, /work/shared/peers/fluent-bit); skipped when absent.
    #[arg(long)]
    fluent_bit: Option<PathBuf>,
}

/// One measured child process.
#[derive(Clone, Copy, Debug)]
struct Usage {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: u64,
}

struct Scenario {
    name: &'static str,
    input: Input,
    /// The design target in MB/s per core, where there is one.
    target: Option<u32>,
    /// `sources[0]` settings, as YAML.
    source_yaml: &'static str,
    sink: Sink,
    /// Fluent Bit runs it too (it has no equivalent of every logtap setting).
    peer: bool,
}

impl Scenario {
    fn sink_yaml(&self) -> &'static str {
        match self.sink {
            Sink::Blackhole => BLACKHOLE,
            Sink::Store => STORE,
            Sink::StoreUncompressed => STORE_UNCOMPRESSED,
        }
    }

    /// Fluent Bit's nearest equivalent.
    fn fluent_bit(&self) -> fluentbit::Setup {
        fluentbit::Setup {
            input: self.input,
            durable: self.sink != Sink::Blackhole,
        }
    }
}

/// Where a scenario's records go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sink {
    Blackhole,
    /// The local store, lz4 (its default).
    Store,
    /// The local store with `compression: none`: its blocks as they are.
    StoreUncompressed,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Input {
    Plain100,
    Plain500,
    CriTemplated,
    CriWords,
    Json,
    JavaMultiline,
}

const BLACKHOLE: &str = "  out:\n    type: blackhole\n";
/// Retention off (`min_free: 0`): on a shared machine with a full disk the store would
/// delete its oldest segments while it writes (and measure deleting).
const STORE: &str = "  out:\n    type: store\n    max_size: 100GiB\n    min_free: \"0\"\n";
const STORE_UNCOMPRESSED: &str =
    "  out:\n    type: store\n    max_size: 100GiB\n    min_free: \"0\"\n    compression: none\n";

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "plain 100 B lines → blackhole",
            input: Input::Plain100,
            // Issue 15's bars: plain → null 3 GB/s per core, CRI → store 800.
            target: Some(3000),
            source_yaml: "    format: raw\n",
            sink: Sink::Blackhole,
            peer: true,
        },
        Scenario {
            name: "plain 500 B lines → blackhole",
            input: Input::Plain500,
            target: Some(3000),
            source_yaml: "    format: raw\n",
            sink: Sink::Blackhole,
            peer: true,
        },
        Scenario {
            name: "CRI → blackhole",
            input: Input::CriTemplated,
            target: None,
            source_yaml: "    format: cri\n",
            sink: Sink::Blackhole,
            peer: true,
        },
        Scenario {
            name: "CRI → local store (lz4, checkpoints)",
            input: Input::CriTemplated,
            target: Some(800),
            source_yaml: "    format: cri\n",
            sink: Sink::Store,
            peer: true,
        },
        Scenario {
            name: "CRI → local store, `compression: none` (checkpoints)",
            input: Input::CriTemplated,
            // Issue 15's bar is for lz4; this row is what the store path costs without it.
            target: None,
            source_yaml: "    format: cri\n",
            sink: Sink::StoreUncompressed,
            // Fluent Bit's filesystem buffering does not compress either: its row is the
            // lz4 one's.
            peer: false,
        },
        Scenario {
            name: "CRI → local store, two mask processors",
            input: Input::CriTemplated,
            target: None,
            // The templated input's client addresses and hex request/trace ids.
            source_yaml: "    format: cri\n    processors:\n      \
                - {type: mask, regex: '\\b\\d{1,3}(?:\\.\\d{1,3}){3}\\b', replacement: x.x.x.x}\n      \
                - {type: mask, regex: '\\b[0-9a-f]{16,}\\b', replacement: '<id>'}\n",
            sink: Sink::Store,
            peer: false,
        },
        Scenario {
            name: "CRI, low-redundancy words → local store",
            input: Input::CriWords,
            target: None,
            source_yaml: "    format: cri\n",
            sink: Sink::Store,
            peer: true,
        },
        Scenario {
            name: "JSON parse → blackhole",
            input: Input::Json,
            target: None,
            source_yaml: "    format: raw\n    parser: {type: json}\n",
            sink: Sink::Blackhole,
            peer: true,
        },
        Scenario {
            name: "Java multiline → blackhole",
            input: Input::JavaMultiline,
            target: None,
            source_yaml: "    format: raw\n    multiline: {start: '^\\d{4}-\\d{2}-\\d{2} '}\n",
            sink: Sink::Blackhole,
            peer: true,
        },
    ]
}

/// Counts live heap bytes when `capture --heap-stats` asks (see `heap`).
#[global_allocator]
static ALLOC: heap::CountingAlloc = heap::CountingAlloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.mode {
        Some(Mode::Capture(args)) => return capture::run(args),
        Some(Mode::CaptureWriter(args)) => return capture::writer(args),
        Some(Mode::CaptureShim(args)) => return capture::shim(args),
        Some(Mode::Network(args)) => return network::run(args),
        Some(Mode::Lz4(args)) => return lz4::run(args),
        None => {}
    }
    let args = cli.files;
    let logtap = logtap_binary(args.logtap.as_deref())?;
    // Fluent Bit runs beside logtap when it is there; without it, the tables say so.
    let fluent_bit = fluentbit::binary(args.fluent_bit.as_deref());
    if let Err(missing) = &fluent_bit {
        eprintln!("{missing}: Fluent Bit is skipped");
    }
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;

    let mut rows = Vec::new();
    for scenario in scenarios() {
        if args
            .only
            .as_deref()
            .is_some_and(|o| !scenario.name.contains(o))
        {
            continue;
        }
        let peer = fluent_bit.as_deref().ok().filter(|_| scenario.peer);
        let row = run_scenario(&scenario, &logtap, peer, &dir, &args)?;
        eprintln!("{}", row.text());
        rows.push(row);
    }

    let table = markdown(&rows, args.size_mb, args.runs);
    let peers = match &fluent_bit {
        Ok(bin) => markdown_fluent_bit(&rows, args.size_mb, args.runs, &fluentbit_version(bin)),
        Err(missing) => format!("Fluent Bit was not run: {missing}.\n"),
    };
    println!("{table}\n{peers}");
    if let Some(path) = &args.markdown {
        let results = format!(
            "{}\n{table}\n{peers}",
            machine_and_command(args.size_mb, args.runs)
        );
        write_results(path, &results, BEGIN_MARKER, END_MARKER)?;
    }
    Ok(())
}

/// `explicit`, else `logtap` next to this harness (target/release/logtap); an error
/// unless it exists.
fn logtap_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let logtap = match explicit {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()?
            .parent()
            .context("harness has no directory")?
            .join("logtap"),
    };
    if !logtap.exists() {
        bail!(
            "{} not found: build it first (`cargo build --release -p logtap`, or use `cargo xtask bench`)",
            logtap.display()
        );
    }
    Ok(logtap)
}

/// Generates the scenario's input (unless a large enough one is there), then runs `wc -l`,
/// logtap and Fluent Bit (when there is one) over it in turn, `args.runs` times; Fluent
/// Bit's configuration is first checked to emit every record of the input.
fn run_scenario(
    scenario: &Scenario,
    logtap: &Path,
    fluent_bit: Option<&Path>,
    dir: &Path,
    args: &Args,
) -> anyhow::Result<Row> {
    let size = args.size_mb << 20;
    let input = dir.join(format!("{:?}.log", scenario.input).to_lowercase());
    if std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0) < size {
        eprintln!("generating {} ({} MiB)", input.display(), args.size_mb);
        generate(scenario.input, &input, size)?;
    }
    let bytes = std::fs::metadata(&input)?.len();
    // Warm the page cache so every contender reads from memory.
    run_measured(Command::new("cat").arg(&input).stdout(Stdio::null()))?;

    let records = match fluent_bit {
        Some(bin) => {
            let expected = fluentbit::expected_records(scenario.input, &input)?;
            eprintln!(
                "{}: checking that Fluent Bit emits all {expected} records",
                scenario.name
            );
            Some(fluentbit::verify(
                bin,
                scenario.fluent_bit(),
                dir,
                &input,
                expected,
            )?)
        }
        None => None,
    };
    let mut best_agent: Option<Usage> = None;
    let mut best_base: Option<Usage> = None;
    let mut best_peer: Option<Usage> = None;
    let mut store_bytes = None;
    for _ in 0..args.runs {
        let base = run_measured(
            Command::new("wc")
                .arg("-l")
                .arg(&input)
                .stdout(Stdio::null()),
        )?;
        best_base = Some(pick_best(best_base, base));
        let (agent, stored) = run_agent(logtap, dir, &input, scenario)?;
        best_agent = Some(pick_best(best_agent, agent));
        store_bytes = stored;
        if let Some(bin) = fluent_bit {
            let peer = fluentbit::timed(
                bin,
                scenario.fluent_bit(),
                dir,
                &input,
                &fluentbit::Output::Null,
            )?;
            best_peer = Some(pick_best(best_peer, peer));
        }
    }
    Ok(Row {
        name: scenario.name,
        target: scenario.target,
        bytes,
        store_bytes,
        agent: best_agent.expect("runs >= 1"),
        base: best_base.expect("runs >= 1"),
        peer: best_peer.zip(records).map(|(usage, records)| Peer {
            setup: scenario.fluent_bit(),
            usage,
            records,
        }),
    })
}

/// `fluent-bit --version`'s first line, or what went wrong.
fn fluentbit_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "Fluent Bit (version unknown)".into())
}

const BEGIN_MARKER: &str = "<!-- bench:begin -->";
const END_MARKER: &str = "<!-- bench:end -->";

/// Replaces the results between the markers `begin` and `end` of `path` (keeping the
/// prose around them), or appends them with the markers when the file has none.
fn write_results(path: &Path, results: &str, begin: &str, end: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{begin}\n{results}{}", &old[..b], &old[e..])
        }
        _ if old.is_empty() => results.to_owned(),
        _ => format!("{old}\n{begin}\n{results}{end}\n"),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// Where and how the numbers were taken, for the results file.
fn machine_and_command(size_mb: u64, runs: usize) -> String {
    machine(&format!(
        "cargo xtask bench --size-mb {size_mb} --runs {runs} --markdown docs/benchmarks.md"
    ))
}

/// The date, the machine and `command`, as markdown list items.
fn machine(command: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "- date: {date}\n- machine: {cores} cores, {cpu}, Linux {}\n- command: `{command}`\n",
        kernel.trim()
    )
}

fn pick_best(best: Option<Usage>, new: Usage) -> Usage {
    match best {
        Some(b) if b.cpu <= new.cpu => b,
        _ => new,
    }
}

struct Row {
    name: &'static str,
    target: Option<u32>,
    bytes: u64,
    /// Size of the store after the last run (store scenarios).
    store_bytes: Option<u64>,
    agent: Usage,
    base: Usage,
    /// Fluent Bit over the same input, when it ran.
    peer: Option<Peer>,
}

/// Fluent Bit's best run of a scenario.
struct Peer {
    setup: fluentbit::Setup,
    usage: Usage,
    /// What its verification run counted.
    records: fluentbit::Checked,
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

impl Row {
    /// Input bytes ÷ bytes on disk, as text.
    fn shrink(&self) -> String {
        self.store_bytes.map_or("—".into(), |s| {
            format!("{:.1}×", self.bytes as f64 / s.max(1) as f64)
        })
    }

    /// The target and whether it was met, as text.
    fn target(&self) -> String {
        self.target.map_or("—".into(), |t| {
            let met = self.per_core() >= f64::from(t);
            format!("≥ {t} {}", if met { "(met)" } else { "(**missed**)" })
        })
    }

    /// logtap's MB/s per core: input bytes ÷ the agent's CPU seconds.
    fn per_core(&self) -> f64 {
        mb_per_s(self.bytes, self.agent.cpu)
    }

    fn wall(&self) -> f64 {
        mb_per_s(self.bytes, self.agent.wall)
    }

    fn cpu_s_per_gb(&self) -> f64 {
        self.agent.cpu.as_secs_f64() / (self.bytes as f64 / 1e9)
    }

    fn rss_mib(&self) -> u64 {
        self.agent.max_rss_kib / 1024
    }

    /// The baseline's MB/s per core over the same input.
    fn base_per_core(&self) -> f64 {
        mb_per_s(self.bytes, self.base.cpu)
    }

    /// Fluent Bit's MB/s per core over the same input.
    fn peer_per_core(&self) -> Option<f64> {
        self.peer
            .as_ref()
            .map(|p| mb_per_s(self.bytes, p.usage.cpu))
    }

    fn text(&self) -> String {
        let peer = self.peer.as_ref().map_or(String::new(), |p| {
            format!(
                "; Fluent Bit {:.2} CPU s, {:.0} MB/s per core, {} MiB peak RSS, {:.1} s wall, {} records; logtap ÷ Fluent Bit {:.1}×",
                p.usage.cpu.as_secs_f64(),
                mb_per_s(self.bytes, p.usage.cpu),
                p.usage.max_rss_kib / 1024,
                p.usage.wall.as_secs_f64(),
                p.records.describe(),
                self.per_core() / mb_per_s(self.bytes, p.usage.cpu),
            )
        });
        format!(
            "{}: {:.0} MB/s per core (target {}), {:.0} MB/s wall, {:.2} CPU s/GB, {} MiB peak RSS, input ÷ store {}; wc -l {:.0} MB/s per core; ratio {:.2}",
            self.name,
            self.per_core(),
            self.target(),
            self.wall(),
            self.cpu_s_per_gb(),
            self.rss_mib(),
            self.shrink(),
            self.base_per_core(),
            self.per_core() / self.base_per_core(),
        ) + &peer
    }
}

fn markdown(rows: &[Row], size_mb: u64, runs: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| scenario ({size_mb} MiB input, best of {runs}) | logtap MB/s per core | target MB/s per core | wall MB/s | CPU s per GB | peak RSS MiB | input ÷ store size | `wc -l` MB/s per core | logtap ÷ `wc -l` |"
    );
    let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {:.0} | {:.2} | {} | {} | {:.0} | {:.2} |",
            r.name,
            r.per_core(),
            r.target(),
            r.wall(),
            r.cpu_s_per_gb(),
            r.rss_mib(),
            r.shrink(),
            r.base_per_core(),
            r.per_core() / r.base_per_core(),
        );
    }
    s
}

/// The side-by-side table: logtap and Fluent Bit (`version`) over the same input, in the
/// same run. The ratio is of MB/s per core (Fluent Bit's CPU seconds ÷ logtap's).
fn markdown_fluent_bit(rows: &[Row], size_mb: u64, runs: usize, version: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| scenario ({size_mb} MiB input, best of {runs}), against {version} | Fluent Bit setup | records Fluent Bit emitted | logtap CPU s | Fluent Bit CPU s | logtap MB/s per core | Fluent Bit MB/s per core | **logtap ÷ Fluent Bit** | logtap peak RSS MiB | Fluent Bit peak RSS MiB |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let (Some(p), Some(peer_per_core)) = (&r.peer, r.peer_per_core()) else {
            continue;
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {:.2} | {:.0} | {:.0} | **{:.1}×** | {} | {} |",
            r.name,
            p.setup.describe(),
            p.records.describe(),
            r.agent.cpu.as_secs_f64(),
            p.usage.cpu.as_secs_f64(),
            r.per_core(),
            peer_per_core,
            r.per_core() / peer_per_core,
            r.rss_mib(),
            p.usage.max_rss_kib / 1024,
        );
    }
    s
}

/// Runs the agent over `input`; returns its usage and, for store scenarios, the size
/// of the store it wrote.
fn run_agent(
    logtap: &Path,
    dir: &Path,
    input: &Path,
    scenario: &Scenario,
) -> anyhow::Result<(Usage, Option<u64>)> {
    let data = dir.join("agent-data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let config = data.join("bench.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\nmetrics: {{listen: \"\"}}\nsources:\n  - name: bench\n    include: [\"{}\"]\n{}    sink: out\nsinks:\n{}",
            data.display(),
            input.display(),
            scenario.source_yaml,
            scenario.sink_yaml()
        ),
    )?;
    let usage = run_measured(
        Command::new(logtap)
            .args(["run", "--oneshot", "--config"])
            .arg(&config)
            .env("LOGTAP_LOG", "warn")
            .stdout(Stdio::null()),
    )?;
    let store = data.join("store");
    let stored = store.exists().then(|| dir_size(&store)).transpose()?;
    let _ = std::fs::remove_dir_all(&data);
    Ok((usage, stored))
}

/// Bytes of all files below `dir`.
fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Runs a command to completion and returns its wall time, CPU time and peak RSS.
fn run_measured(cmd: &mut Command) -> anyhow::Result<Usage> {
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    wait_measured(child.id() as libc::pid_t, start, None, &format!("{cmd:?}"))
}

/// Waits for the child `pid` (started at `start`) and returns its usage; an error
/// unless it exited with status 0. With a `deadline`, a child still running that long
/// after `start` is killed (and that is an error).
fn wait_measured(
    pid: libc::pid_t,
    start: Instant,
    deadline: Option<Duration>,
    what: &str,
) -> anyhow::Result<Usage> {
    let (usage, status) = wait_usage(pid, start, deadline)?;
    if let Some(d) = deadline
        && usage.wall >= d
    {
        bail!("{what} still ran after {d:?}: killed");
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{what} failed (status {status:#x})");
    }
    Ok(usage)
}

/// Waits for the child `pid` (started at `start`; killed `deadline` after it) and
/// returns its usage and wait status, however it ended.
///
/// Peak RSS is the child's own `VmHWM` (`/proc/PID/status`), sampled every 10 ms while
/// it runs: `wait4`'s `ru_maxrss` is no good for it, as the kernel carries the
/// harness's own peak RSS over into the child at `exec` (the harness holds a Kafka
/// consumer, an OTLP receiver, data generators). A child too short-lived to be
/// sampled reports `ru_maxrss`, an upper bound.
fn wait_usage(
    pid: libc::pid_t,
    start: Instant,
    deadline: Option<Duration>,
) -> anyhow::Result<(Usage, libc::c_int)> {
    let mut status = 0;
    // SAFETY: rusage is plain old data written by the kernel; zeroed is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut killed = false;
    let mut hwm_kib: Option<u64> = None;
    let mut polls = 0u64;
    loop {
        // SAFETY: pid is our child, status and ru are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        if r != 0 {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        if polls.is_multiple_of(5)
            && let Some(kib) = vm_hwm_kib(pid)
        {
            hwm_kib = Some(hwm_kib.map_or(kib, |h| h.max(kib)));
        }
        polls += 1;
        if !killed && deadline.is_some_and(|d| start.elapsed() >= d) {
            // SAFETY: pid is our child and not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let wall = start.elapsed();
    Ok((
        Usage {
            wall,
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            max_rss_kib: hwm_kib.unwrap_or(ru.ru_maxrss as u64),
        },
        status,
    ))
}

/// The peak resident set of a running process, in KiB.
fn vm_hwm_kib(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

fn tv(t: libc::timeval) -> Duration {
    Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000)
}

/// CPU time (user + system) of the harness process so far: what it spends itself
/// (a writer, a receiver) is measured apart from the agent's.
fn self_cpu() -> Duration {
    // SAFETY: rusage is plain old data written by the kernel; zeroed is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A small, fast deterministic generator (xorshift): varied but reproducible input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "request",
    "served",
    "user",
    "session",
    "cache",
    "miss",
    "hit",
    "upstream",
    "timeout",
    "retry",
    "order",
    "payment",
    "accepted",
    "queue",
    "worker",
    "latency",
    "ms",
    "ok",
    "GET",
    "POST",
    "/api/v1/items",
    "status=200",
    "status=500",
    "shard",
    "commit",
];

fn words(rng: &mut Rng, out: &mut String, target_len: usize) {
    while out.len() < target_len {
        out.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
        out.push(' ');
    }
    out.truncate(target_len);
}

fn generate(kind: Input, path: &Path, size: u64) -> anyhow::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut written = 0u64;
    let mut line = String::with_capacity(1024);
    let mut seq = 0u64;
    let mut logs = ContainerLogs::new(&mut rng);
    while written < size {
        line.clear();
        seq += 1;
        let ts = format!(
            "2026-11-21T10:{:02}:{:02}.{:09}Z",
            (seq / 60_000) % 60,
            (seq / 1000) % 60,
            seq % 1_000_000_000
        );
        match kind {
            Input::Plain100 | Input::Plain500 => {
                let len = if kind == Input::Plain100 { 99 } else { 499 };
                let _ = write!(line, "{} INFO seq={seq} ", &ts[..23]);
                words(&mut rng, &mut line, len);
                line.push('\n');
            }
            Input::CriTemplated => {
                logs.next_record(&mut rng, &mut line);
            }
            Input::CriWords => {
                let stream = if rng.below(10) == 0 {
                    "stderr"
                } else {
                    "stdout"
                };
                let _ = write!(line, "{ts} {stream} F level=info seq={seq} ");
                let target = line.len() + 60 + rng.below(140) as usize;
                words(&mut rng, &mut line, target);
                line.push('\n');
            }
            Input::Json => {
                let _ = write!(
                    line,
                    "{{\"ts\":\"{ts}\",\"level\":\"{}\",\"seq\":{seq},\"latency_ms\":{},\"msg\":\"",
                    ["info", "warn", "error"][rng.below(3) as usize],
                    rng.below(900)
                );
                let target = line.len() + 40 + rng.below(80) as usize;
                words(&mut rng, &mut line, target);
                line.push_str("\"}\n");
            }
            Input::JavaMultiline => {
                let _ = write!(
                    line,
                    "{} ERROR [worker-{}] seq={seq} ",
                    &ts[..23].replace('T', " "),
                    rng.below(16)
                );
                let target = line.len() + 40;
                words(&mut rng, &mut line, target);
                line.push('\n');
                if rng.below(4) == 0 {
                    line.push_str("java.lang.IllegalStateException: upstream timeout\n");
                    for f in 0..(3 + rng.below(12)) {
                        let _ = writeln!(
                            line,
                            "\tat com.shop.svc.Handler{f}.handle(Handler{f}.java:{})",
                            10 + f * 7
                        );
                    }
                    line.push_str("Caused by: java.net.SocketTimeoutException: Read timed out\n\t... 9 more\n");
                }
            }
        }
        w.write_all(line.as_bytes())?;
        written += line.len() as u64;
    }
    w.flush()?;
    Ok(())
}

/// Pick from `items` with the given weights.
fn weighted<'a, T>(rng: &mut Rng, items: &'a [(u32, T)]) -> &'a T {
    let total: u32 = items.iter().map(|(w, _)| w).sum();
    let mut pick = rng.below(u64::from(total)) as u32;
    for (w, item) in items {
        if pick < *w {
            return item;
        }
        pick -= w;
    }
    &items[items.len() - 1].1
}

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len() as u64) as usize]
}

/// Lower-case hex digits: request and trace ids, the high-entropy part of real logs.
fn hex(rng: &mut Rng, out: &mut String, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for _ in 0..digits {
        out.push(HEX[rng.below(16) as usize] as char);
    }
}

fn uuid(rng: &mut Rng, out: &mut String) {
    for (i, n) in [8, 4, 4, 4, 12].into_iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        hex(rng, out, n);
    }
}

/// A cluster-internal address (most traffic), sometimes an external client.
fn ip(rng: &mut Rng, out: &mut String) {
    if rng.below(5) == 0 {
        let _ = write!(out, "203.0.113.{}", 1 + rng.below(254));
    } else {
        let _ = write!(
            out,
            "10.{}.{}.{}",
            rng.below(4),
            rng.below(256),
            1 + rng.below(254)
        );
    }
}

/// Milliseconds with a long tail, as request latencies are.
fn millis(rng: &mut Rng) -> u64 {
    match rng.below(20) {
        0 => 200 + rng.below(3000),
        1..=4 => 20 + rng.below(200),
        _ => rng.below(20),
    }
}

const METHODS: &[(u32, &str)] = &[(70, "GET"), (20, "POST"), (6, "PUT"), (4, "DELETE")];
const STATUSES: &[(u32, u16)] = &[
    (78, 200),
    (6, 201),
    (3, 204),
    (4, 304),
    (3, 400),
    (1, 401),
    (3, 404),
    (2, 500),
];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "kube-probe/1.31",
    "Go-http-client/1.1",
    "okhttp/4.12.0",
    "curl/8.5.0",
    "python-requests/2.32.3",
];
const SERVICES: &[&str] = &["orders", "payments", "catalog", "cart", "users", "shipping"];
const NAMESPACES: &[&str] = &[
    "shop",
    "default",
    "monitoring",
    "kube-system",
    "ingress-nginx",
];
const TABLES: &[&str] = &[
    "orders",
    "order_items",
    "customers",
    "payments",
    "inventory",
];

fn path(rng: &mut Rng, out: &mut String) {
    match rng.below(10) {
        0 => out.push_str("/healthz"),
        1 => out.push_str("/metrics"),
        2 => {
            out.push_str("/static/js/app.");
            hex(rng, out, 8);
            out.push_str(".js");
        }
        3 => {
            let _ = write!(out, "/api/v1/users/{}/cart", rng.below(200_000));
        }
        4 => {
            let _ = write!(
                out,
                "/api/v1/search?q={}&page={}",
                pick(
                    rng,
                    &["shoes", "red+dress", "laptop", "usb-c+cable", "coffee"]
                ),
                1 + rng.below(5)
            );
        }
        _ => {
            let _ = write!(
                out,
                "/api/v1/{}/{}",
                pick(rng, SERVICES),
                rng.below(1_000_000)
            );
        }
    }
}

/// The container output of a node: a few dozen templates in the shapes web servers,
/// Go/Java/Python services, databases, caches and Kubernetes components write, with
/// varying ids, durations, addresses and request ids, and a realistic clock (about
/// 20 000 lines a second). Errors come with Java stack traces (one CRI line per frame).
struct ContainerLogs {
    /// Nanoseconds since 2026-11-21T00:00:00Z.
    clock_ns: u64,
    pods: Vec<String>,
    /// Stack frames still to write for the current error.
    pending_frames: u64,
}

impl ContainerLogs {
    fn new(rng: &mut Rng) -> ContainerLogs {
        let pods = (0..24)
            .map(|_| {
                let mut pod = format!("{}-", pick(rng, SERVICES));
                hex(rng, &mut pod, 10);
                pod.push('-');
                hex(rng, &mut pod, 5);
                pod
            })
            .collect();
        ContainerLogs {
            clock_ns: 10 * 3600 * 1_000_000_000,
            pods,
            pending_frames: 0,
        }
    }

    fn next_record(&mut self, rng: &mut Rng, line: &mut String) {
        self.clock_ns += rng.below(100_000);
        let ns = self.clock_ns;
        let (h, m, sec) = (
            ns / 3_600_000_000_000,
            ns / 60_000_000_000 % 60,
            ns / 1_000_000_000 % 60,
        );
        let (ms, us, frac) = (
            ns / 1_000_000 % 1000,
            ns / 1000 % 1_000_000,
            ns % 1_000_000_000,
        );
        let stderr = self.pending_frames > 0 || rng.below(8) == 0;
        let _ = write!(
            line,
            "2026-11-21T{h:02}:{m:02}:{sec:02}.{frac:09}Z {} F ",
            if stderr { "stderr" } else { "stdout" }
        );
        if self.pending_frames > 0 {
            self.pending_frames -= 1;
            match self.pending_frames {
                0 => line.push_str("\t... 42 more"),
                n => {
                    let class = pick(
                        rng,
                        &["OrderService", "PaymentClient", "JdbcTemplate", "Handler"],
                    );
                    let _ = write!(
                        line,
                        "\tat com.shop.{}.{class}.{}({class}.java:{})",
                        pick(rng, &["orders", "payments", "db", "http"]),
                        pick(rng, &["process", "execute", "handle", "lambda$run$0"]),
                        20 + n * 13 + rng.below(7)
                    );
                }
            }
            line.push('\n');
            return;
        }
        let status = *weighted(rng, STATUSES);
        let method = *weighted(rng, METHODS);
        match rng.below(100) {
            // nginx / ingress access log (combined format plus request time).
            0..=21 => {
                ip(rng, line);
                let _ = write!(
                    line,
                    " - - [21/Nov/2026:{h:02}:{m:02}:{sec:02} +0000] \"{method} "
                );
                path(rng, line);
                let _ = write!(
                    line,
                    " HTTP/1.1\" {status} {} \"-\" \"{}\" {}.{:03}",
                    120 + rng.below(40_000),
                    pick(rng, AGENTS),
                    millis(rng) / 1000,
                    rng.below(1000)
                );
            }
            // Go service, logfmt.
            22..=35 => {
                let _ = write!(
                    line,
                    "time=\"2026-11-21T{h:02}:{m:02}:{sec:02}Z\" level={} msg=\"request completed\" method={method} path=",
                    if status >= 500 { "error" } else { "info" }
                );
                path(rng, line);
                let _ = write!(
                    line,
                    " status={status} duration={}.{}ms bytes={} request_id=",
                    millis(rng),
                    rng.below(10),
                    rng.below(20_000)
                );
                hex(rng, line, 16);
            }
            // Go service, zap JSON.
            36..=49 => {
                let _ = write!(
                    line,
                    "{{\"level\":\"info\",\"ts\":{}.{:06},\"caller\":\"server/handler.go:{}\",\"msg\":\"handled request\",\"method\":\"{method}\",\"path\":\"",
                    1_795_219_200 + ns / 1_000_000_000,
                    us,
                    100 + rng.below(80)
                );
                path(rng, line);
                let _ = write!(
                    line,
                    "\",\"status\":{status},\"latency\":{}.{:04},\"trace_id\":\"",
                    millis(rng) / 1000,
                    rng.below(10_000)
                );
                hex(rng, line, 32);
                line.push_str("\"}");
            }
            // Kubernetes components, klog.
            50..=59 => {
                let pod = &self.pods[rng.below(self.pods.len() as u64) as usize];
                let ns_name = pick(rng, NAMESPACES);
                match rng.below(5) {
                    0 => {
                        let _ = write!(
                            line,
                            "I1121 {h:02}:{m:02}:{sec:02}.{us:06}       1 controller.go:{}] \"Successfully synced\" key=\"{ns_name}/{pod}\"",
                            100 + rng.below(300)
                        );
                    }
                    1 => {
                        let _ = write!(
                            line,
                            "I1121 {h:02}:{m:02}:{sec:02}.{us:06}       1 event.go:389] \"Event occurred\" object=\"{ns_name}/{pod}\" kind=\"Pod\" apiVersion=\"v1\" type=\"Normal\" reason=\"{}\"",
                            pick(
                                rng,
                                &["Scheduled", "Pulled", "Created", "Started", "Killing"]
                            )
                        );
                    }
                    2 => {
                        let _ = write!(
                            line,
                            "I1121 {h:02}:{m:02}:{sec:02}.{us:06}       1 leaderelection.go:{}] successfully renewed lease {ns_name}/{}-controller",
                            260 + rng.below(20),
                            pick(rng, SERVICES)
                        );
                    }
                    3 => {
                        let _ = write!(
                            line,
                            "W1121 {h:02}:{m:02}:{sec:02}.{us:06}       1 reflector.go:561] k8s.io/client-go/informers/factory.go:160: watch of *v1.{} ended with: an error on the server (\"unable to decode an event from the watch stream: http2: client connection lost\") has prevented the request from succeeding",
                            pick(rng, &["Pod", "Endpoints", "ConfigMap", "Node"])
                        );
                    }
                    _ => {
                        let _ = write!(
                            line,
                            "I1121 {h:02}:{m:02}:{sec:02}.{us:06}       1 reconciler.go:{}] \"Reconciling\" controller=\"deployment\" namespace=\"{ns_name}\" name=\"{}\" reconcileID=\"",
                            200 + rng.below(100),
                            pick(rng, SERVICES)
                        );
                        uuid(rng, line);
                        line.push('"');
                    }
                }
            }
            // Java (Spring Boot).
            60..=71 => {
                let (level, logger, message) = match rng.below(40) {
                    0..=7 => (
                        "INFO",
                        "c.s.orders.OrderController",
                        format!(
                            "Order {} created for customer {} in {} ms",
                            rng.below(10_000_000),
                            rng.below(500_000),
                            millis(rng)
                        ),
                    ),
                    8..=15 => (
                        "INFO",
                        "c.s.payments.PaymentService",
                        format!(
                            "Payment {} authorized: amount={}.{:02} EUR, provider=stripe",
                            rng.below(10_000_000),
                            rng.below(500),
                            rng.below(100)
                        ),
                    ),
                    16..=23 => (
                        "DEBUG",
                        "o.h.SQL",
                        format!(
                            "select o1_0.id,o1_0.status,o1_0.total from orders o1_0 where o1_0.customer_id=? limit ? [{}]",
                            rng.below(500_000)
                        ),
                    ),
                    24..=31 => (
                        "INFO",
                        "c.z.h.HikariPool",
                        format!(
                            "HikariPool-1 - Pool stats (total=10, active={}, idle={}, waiting=0)",
                            rng.below(10),
                            rng.below(10)
                        ),
                    ),
                    32..=38 => (
                        "WARN",
                        "c.s.cart.CartService",
                        format!(
                            "Cart {} for user {} has {} items out of stock",
                            rng.below(1_000_000),
                            rng.below(500_000),
                            1 + rng.below(3)
                        ),
                    ),
                    _ => {
                        self.pending_frames = 4 + rng.below(10);
                        (
                            "ERROR",
                            "c.s.orders.OrderService",
                            format!(
                                "Failed to process order {}: java.net.SocketTimeoutException: Read timed out",
                                rng.below(10_000_000)
                            ),
                        )
                    }
                };
                let _ = write!(
                    line,
                    "2026-11-21 {h:02}:{m:02}:{sec:02}.{ms:03}  {level:>5} 1 --- [nio-8080-exec-{}] {logger:<40} : {message}",
                    1 + rng.below(10)
                );
            }
            // PostgreSQL.
            72..=77 => {
                let _ = write!(
                    line,
                    "2026-11-21 {h:02}:{m:02}:{sec:02}.{ms:03} UTC [{}] LOG:  duration: {}.{:03} ms  statement: SELECT id, status, total FROM {} WHERE customer_id = {} ORDER BY created_at DESC LIMIT 20",
                    100 + rng.below(900),
                    millis(rng),
                    rng.below(1000),
                    pick(rng, TABLES),
                    rng.below(500_000)
                );
            }
            // Authentication service.
            78..=83 => {
                let user = rng.below(100_000);
                let _ = match rng.below(4) {
                    0 | 1 => write!(line, "user {user} logged in from "),
                    2 => write!(line, "failed login for user {user} from "),
                    _ => write!(line, "session expired for user {user}, client "),
                };
                ip(rng, line);
            }
            // Python worker (Celery).
            84..=89 => {
                let _ = write!(
                    line,
                    "[2026-11-21 {h:02}:{m:02}:{sec:02},{ms:03}: INFO/ForkPoolWorker-{}] Task {}[",
                    1 + rng.below(8),
                    pick(
                        rng,
                        &[
                            "tasks.send_email",
                            "tasks.resize_image",
                            "tasks.sync_inventory",
                            "tasks.generate_invoice"
                        ]
                    )
                );
                uuid(rng, line);
                let _ = write!(
                    line,
                    "] succeeded in {}.{:03}s: None",
                    millis(rng) / 100,
                    rng.below(1000)
                );
            }
            // Redis.
            90..=92 => {
                let _ = write!(
                    line,
                    "1:M 21 Nov 2026 {h:02}:{m:02}:{sec:02}.{ms:03} * {} changes in {} seconds. Saving...",
                    rng.below(10_000),
                    pick(rng, &["60", "300", "3600"])
                );
            }
            // Kafka consumer.
            93..=95 => {
                let _ = write!(
                    line,
                    "[Consumer clientId=checkout-{}, groupId=checkout] Committed offset {} for partition orders-{}",
                    rng.below(4),
                    rng.below(50_000_000),
                    rng.below(12)
                );
            }
            // Liveness and readiness probes.
            _ => {
                let _ = write!(
                    line,
                    "GET /{} {status} {}.{}ms",
                    pick(rng, &["healthz", "readyz", "livez"]),
                    rng.below(3),
                    rng.below(10)
                );
            }
        }
        line.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu_ms: u64, rss_mib: u64) -> Usage {
        Usage {
            wall: Duration::from_secs(1),
            cpu: Duration::from_millis(cpu_ms),
            max_rss_kib: rss_mib * 1024,
        }
    }

    /// The side-by-side table has a row per scenario Fluent Bit ran, with the ratio of
    /// MB/s per core (its CPU ÷ logtap's) and both peaks; a scenario without it has none.
    #[test]
    fn fluent_bit_table_rows_carry_the_ratio_and_skip_scenarios_it_did_not_run() {
        let row = |name, peer: Option<Peer>| Row {
            name,
            target: None,
            bytes: 1_000_000_000,
            store_bytes: None,
            agent: usage(500, 20),
            base: usage(100, 1),
            peer,
        };
        let rows = [
            row(
                "with",
                Some(Peer {
                    setup: fluentbit::Setup {
                        input: Input::CriTemplated,
                        durable: true,
                    },
                    usage: usage(4000, 90),
                    records: fluentbit::Checked {
                        expected: 10,
                        emitted: 10,
                    },
                }),
            ),
            row("without", None),
        ];
        let table = markdown_fluent_bit(&rows, 256, 3, "Fluent Bit v5.1.1");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].contains("against Fluent Bit v5.1.1"), "{table}");
        assert_eq!(
            lines[2],
            "| with | tail, `multiline.parser cri`, tail `DB`, `storage.type filesystem` → null | 10 (all) | 0.50 | 4.00 | 2000 | 250 | **8.0×** | 20 | 90 |"
        );
    }
}

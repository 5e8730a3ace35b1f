//! logtap's throughput harness.
//!
//! Generates input files, runs the real `logtap` binary on them in one-shot mode (read
//! everything, ship, checkpoint, exit) and reports, per scenario:
//! - MB/s per core: input bytes ÷ CPU seconds (user + system) of the agent process,
//! - wall MB/s, CPU seconds per GB, peak RSS,
//! - the same for a baseline tool over the same file in the same run (`wc -l`), and the
//!   ratio between the two — machines here are noisy, so ratios are what compare
//!   across runs.
//!
//! Timing comes from `wait4`'s rusage of each child: the harness's own work (generating
//! data) is never counted. Usage: `cargo xtask bench [--size-mb N] [--runs N] [--markdown FILE]`.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "logtap throughput harness")]
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
    /// `sources[0]` settings and the sink, as YAML.
    source_yaml: &'static str,
    sink_yaml: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Input {
    Plain100,
    Plain500,
    Cri,
    Json,
    JavaMultiline,
}

const BLACKHOLE: &str = "  out:\n    type: blackhole\n";
const STORE: &str = "  out:\n    type: store\n    max_size: 100GiB\n";

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "plain 100 B lines → blackhole",
            input: Input::Plain100,
            source_yaml: "    format: raw\n",
            sink_yaml: BLACKHOLE,
        },
        Scenario {
            name: "plain 500 B lines → blackhole",
            input: Input::Plain500,
            source_yaml: "    format: raw\n",
            sink_yaml: BLACKHOLE,
        },
        Scenario {
            name: "CRI → local store (lz4, checkpoints)",
            input: Input::Cri,
            source_yaml: "    format: cri\n",
            sink_yaml: STORE,
        },
        Scenario {
            name: "JSON parse → blackhole",
            input: Input::Json,
            source_yaml: "    format: raw\n    parser: {type: json}\n",
            sink_yaml: BLACKHOLE,
        },
        Scenario {
            name: "Java multiline → blackhole",
            input: Input::JavaMultiline,
            source_yaml: "    format: raw\n    multiline: {start: '^\\d{4}-\\d{2}-\\d{2} '}\n",
            sink_yaml: BLACKHOLE,
        },
    ]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let logtap = match &args.logtap {
        Some(p) => p.clone(),
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
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let size = args.size_mb << 20;

    let mut rows = Vec::new();
    for scenario in scenarios() {
        if args
            .only
            .as_deref()
            .is_some_and(|o| !scenario.name.contains(o))
        {
            continue;
        }
        let input = dir.join(format!("{:?}.log", scenario.input).to_lowercase());
        if std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0) < size {
            eprintln!("generating {} ({} MiB)", input.display(), args.size_mb);
            generate(scenario.input, &input, size)?;
        }
        let bytes = std::fs::metadata(&input)?.len();
        // Warm the page cache so every contender reads from memory.
        run_measured(Command::new("cat").arg(&input).stdout(Stdio::null()))?;

        let mut best_agent: Option<Usage> = None;
        let mut best_base: Option<Usage> = None;
        for _ in 0..args.runs {
            let base = run_measured(
                Command::new("wc")
                    .arg("-l")
                    .arg(&input)
                    .stdout(Stdio::null()),
            )?;
            let agent = run_agent(&logtap, &dir, &input, &scenario)?;
            best_agent = Some(pick_best(best_agent, agent));
            best_base = Some(pick_best(best_base, base));
        }
        let (agent, base) = (
            best_agent.expect("runs >= 1"),
            best_base.expect("runs >= 1"),
        );
        let row = Row {
            name: scenario.name,
            bytes,
            agent,
            base,
        };
        eprintln!("{}", row.text());
        rows.push(row);
    }

    let table = markdown(&rows, args.size_mb, args.runs);
    println!("{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn pick_best(best: Option<Usage>, new: Usage) -> Usage {
    match best {
        Some(b) if b.cpu <= new.cpu => b,
        _ => new,
    }
}

struct Row {
    name: &'static str,
    bytes: u64,
    agent: Usage,
    base: Usage,
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

impl Row {
    fn text(&self) -> String {
        format!(
            "{}: {:.0} MB/s per core, {:.0} MB/s wall, {:.2} CPU s/GB, {} MiB peak RSS; wc -l {:.0} MB/s per core; ratio {:.2}",
            self.name,
            mb_per_s(self.bytes, self.agent.cpu),
            mb_per_s(self.bytes, self.agent.wall),
            self.agent.cpu.as_secs_f64() / (self.bytes as f64 / 1e9),
            self.agent.max_rss_kib / 1024,
            mb_per_s(self.bytes, self.base.cpu),
            mb_per_s(self.bytes, self.agent.cpu) / mb_per_s(self.bytes, self.base.cpu),
        )
    }
}

fn markdown(rows: &[Row], size_mb: u64, runs: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| scenario ({size_mb} MiB input, best of {runs}) | logtap MB/s per core | wall MB/s | CPU s per GB | peak RSS MiB | `wc -l` MB/s per core | logtap ÷ `wc -l` |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.2} | {} | {:.0} | {:.2} |",
            r.name,
            mb_per_s(r.bytes, r.agent.cpu),
            mb_per_s(r.bytes, r.agent.wall),
            r.agent.cpu.as_secs_f64() / (r.bytes as f64 / 1e9),
            r.agent.max_rss_kib / 1024,
            mb_per_s(r.bytes, r.base.cpu),
            mb_per_s(r.bytes, r.agent.cpu) / mb_per_s(r.bytes, r.base.cpu),
        );
    }
    s
}

fn run_agent(
    logtap: &Path,
    dir: &Path,
    input: &Path,
    scenario: &Scenario,
) -> anyhow::Result<Usage> {
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
            scenario.sink_yaml
        ),
    )?;
    let usage = run_measured(
        Command::new(logtap)
            .args(["run", "--oneshot", "--config"])
            .arg(&config)
            .env("LOGTAP_LOG", "warn")
            .stdout(Stdio::null()),
    )?;
    let _ = std::fs::remove_dir_all(&data);
    Ok(usage)
}

/// Runs a command to completion and returns its wall time, CPU time and peak RSS.
fn run_measured(cmd: &mut Command) -> anyhow::Result<Usage> {
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain old data written by the kernel; zeroed is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, status and ru are valid for writes.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = start.elapsed();
    if r != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (status {status:#x})");
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Usage {
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss as u64,
    })
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
            Input::Cri => {
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

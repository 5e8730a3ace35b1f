//! Network sink scenarios: `cargo xtask bench network`.
//!
//! The same templated CRI input ([`Input::CriTemplated`]) goes, in the same run and
//! interleaved run by run, into
//! - the local store (the baseline: the file scenarios' `CRI → local store`),
//! - Kafka: a local `tansu` broker ([`kafka`]), `compression: lz4`: one message per
//!   record, `message_per: package` with each value form (`value: lines`, the
//!   default, and `value: package`), and those again with the spool's
//!   `compression: none`,
//! - OTLP/HTTP: a receiver in the harness process ([`otlp`]), gzip (the sink's
//!   default) and uncompressed.
//! - Fluent Bit's `kafka` output into the same kind of broker, as the peer's row: its
//!   `tail` input with `multiline.parser cri` ([`crate::fluentbit`]), lz4, `acks` all,
//!   idempotent; its CPU is Fluent Bit's own (skipped when there is no binary).
//! - Fluent Bit's `opentelemetry` output into the same receiver, the peer's OTLP rows:
//!   the same `tail` input, OTLP/HTTP protobuf, gzip and uncompressed as logtap's rows
//!   (skipped likewise).
//!
//! Each is `logtap run --oneshot` with the network sink's `drain_timeout: 10m`: a
//! oneshot agent closes its sinks at the end of the input, and the forwarder then
//! sends the whole spool and exits once it is empty. So the agent's CPU (user + system,
//! all threads, from `wait4`) and wall time are those of *delivering* everything, not
//! of spooling it. Afterwards the destination must hold exactly one record per input
//! line — Kafka: a consumer reads the topic back and counts the messages, their
//! distinct `logtap.offset` headers; OTLP: the receiver
//! counts the log records it decoded — or the benchmark fails with what it found.
//!
//! Reported per scenario: MB/s per core (input bytes ÷ the agent's CPU seconds), CPU s
//! per GB, peak RSS, wall MB/s, and the ratio of MB/s per core to the store baseline of
//! the same run (the machines are shared and noisy; the ratio compares across runs).
//! The destination's own CPU (the broker process, the receiver's threads) is shown
//! apart and never counted as logtap's.

mod kafka;
mod otlp;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{
    Input, Usage, generate, machine, mb_per_s, run_measured, wait_measured, write_results,
};

/// Results go between these markers of the `--markdown` file.
const BEGIN_MARKER: &str = "<!-- bench-network:begin -->";
const END_MARKER: &str = "<!-- bench-network:end -->";

/// How long a network sink keeps forwarding after the input ended: long enough that
/// the agent never exits with records undelivered (it would fail the check anyway).
const DRAIN_TIMEOUT: &str = "10m";
/// The harness kills an agent that runs longer than this.
const AGENT_DEADLINE: Duration = Duration::from_secs(15 * 60);

#[derive(clap::Args, Debug)]
pub struct NetworkArgs {
    /// Size of the generated CRI input, in MiB.
    #[arg(long, default_value_t = 256)]
    size_mb: u64,
    /// Runs; the scenarios run interleaved in each, the best (least CPU) is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The logtap binary (default: target/release/logtap next to this harness).
    #[arg(long)]
    logtap: Option<PathBuf>,
    /// The tansu binary (default: $LOGTAP_TANSU, ~/.cargo/bin/tansu, PATH).
    #[arg(long)]
    tansu: Option<PathBuf>,
    /// Where the input and the agent's data go (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the results as markdown into this file (between
    /// `<!-- bench-network:begin -->` and `<!-- bench-network:end -->`).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Only scenarios whose name contains this, or one of several separated by `|`
    /// (the store baseline always runs).
    #[arg(long)]
    only: Option<String>,
    /// The Fluent Bit binary for its Kafka and OTLP rows (default: $LOGTAP_FLUENT_BIT, then
    /// ../shared/peers/fluent-bit, /work/shared/peers/fluent-bit); skipped when absent.
    #[arg(long)]
    fluent_bit: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dest {
    Store,
    Kafka {
        /// `message_per: package` instead of one message per record.
        per_package: bool,
        /// The spool's `compression: none` instead of its default lz4.
        spool_uncompressed: bool,
        /// `value: package` (with `per_package`) instead of JSON lines.
        package_value: bool,
    },
    Otlp {
        gzip: bool,
    },
    /// Fluent Bit (not logtap) into the same broker: the peer's row.
    FluentBitKafka,
    /// Fluent Bit (not logtap) into the same OTLP receiver: the peer's rows.
    FluentBitOtlp {
        gzip: bool,
    },
}

impl Dest {
    fn is_fluent_bit(self) -> bool {
        matches!(self, Dest::FluentBitKafka | Dest::FluentBitOtlp { .. })
    }

    /// The logtap scenario a Fluent Bit row is configured like.
    fn logtap_counterpart(self) -> Option<Dest> {
        match self {
            Dest::FluentBitKafka => Some(Dest::Kafka {
                per_package: false,
                spool_uncompressed: false,
                package_value: false,
            }),
            Dest::FluentBitOtlp { gzip } => Some(Dest::Otlp { gzip }),
            _ => None,
        }
    }
}

struct Scenario {
    name: &'static str,
    dest: Dest,
    target: Option<u32>,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "CRI → local store (baseline)",
            dest: Dest::Store,
            target: Some(400),
        },
        Scenario {
            name: "CRI → kafka (tansu, lz4, acks all)",
            dest: Dest::Kafka {
                per_package: false,
                spool_uncompressed: false,
                package_value: false,
            },
            target: Some(300),
        },
        Scenario {
            name: "CRI → kafka, `message_per: package` (tansu, lz4, acks all)",
            dest: Dest::Kafka {
                per_package: true,
                spool_uncompressed: false,
                package_value: false,
            },
            target: Some(300),
        },
        Scenario {
            name: "CRI → kafka, `message_per: package`, spool `compression: none` (tansu, lz4, acks all)",
            dest: Dest::Kafka {
                per_package: true,
                spool_uncompressed: true,
                package_value: false,
            },
            target: Some(300),
        },
        Scenario {
            name: "CRI → kafka, `message_per: package`, `value: package` (tansu, lz4, acks all)",
            dest: Dest::Kafka {
                per_package: true,
                spool_uncompressed: false,
                package_value: true,
            },
            target: Some(300),
        },
        Scenario {
            name: "CRI → kafka, `message_per: package`, `value: package`, spool `compression: none` (tansu, lz4, acks all)",
            dest: Dest::Kafka {
                per_package: true,
                spool_uncompressed: true,
                package_value: true,
            },
            target: Some(300),
        },
        Scenario {
            name: "Fluent Bit: CRI → kafka (tansu; `multiline.parser cri`, kafka output lz4, acks all, idempotent)",
            dest: Dest::FluentBitKafka,
            target: None,
        },
        Scenario {
            name: "CRI → otlp/http (gzip)",
            dest: Dest::Otlp { gzip: true },
            target: None,
        },
        Scenario {
            name: "CRI → otlp/http (no compression)",
            dest: Dest::Otlp { gzip: false },
            target: None,
        },
        Scenario {
            name: "Fluent Bit: CRI → otlp/http (gzip; `multiline.parser cri`, opentelemetry output)",
            dest: Dest::FluentBitOtlp { gzip: true },
            target: None,
        },
        Scenario {
            name: "Fluent Bit: CRI → otlp/http (no compression; `multiline.parser cri`, opentelemetry output)",
            dest: Dest::FluentBitOtlp { gzip: false },
            target: None,
        },
    ]
}

/// One measured, verified run.
#[derive(Clone, Copy, Debug)]
struct Sample {
    agent: Usage,
    /// CPU of the destination (broker process, receiver threads) during the agent's run.
    dest_cpu: Option<Duration>,
    /// Records the destination holds (store: `None`, not counted).
    delivered: Option<u64>,
}

struct Row {
    name: &'static str,
    dest: Dest,
    target: Option<u32>,
    bytes: u64,
    samples: Vec<Sample>,
}

impl Row {
    fn best(&self) -> &Sample {
        self.samples
            .iter()
            .min_by_key(|s| s.agent.cpu)
            .expect("runs >= 1")
    }

    fn per_core(&self, s: &Sample) -> f64 {
        mb_per_s(self.bytes, s.agent.cpu)
    }

    fn range(&self) -> (f64, f64) {
        let v: Vec<f64> = self.samples.iter().map(|s| self.per_core(s)).collect();
        (
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        )
    }

    fn target(&self) -> String {
        self.target.map_or("—".into(), |t| {
            let met = self.per_core(self.best()) >= f64::from(t);
            format!("≥ {t} {}", if met { "(met)" } else { "(**missed**)" })
        })
    }

    fn cpu_s_per_gb(&self) -> f64 {
        self.best().agent.cpu.as_secs_f64() / (self.bytes as f64 / 1e9)
    }
}

pub fn run(args: &NetworkArgs) -> anyhow::Result<()> {
    let logtap = match &args.logtap {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("harness has no directory")?
            .join("logtap"),
    };
    if !logtap.exists() {
        bail!(
            "{} not found: build it first (`cargo build --release -p logtap`, or use `cargo xtask bench network`)",
            logtap.display()
        );
    }
    let fluent_bit = crate::fluentbit::binary(args.fluent_bit.as_deref());
    if let Err(missing) = &fluent_bit {
        eprintln!("{missing}: its Kafka and OTLP rows are skipped");
    }
    let selected: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| {
            s.dest == Dest::Store
                || args
                    .only
                    .as_deref()
                    .is_none_or(|o| o.split('|').any(|o| s.name.contains(o)))
        })
        .filter(|s| !s.dest.is_fluent_bit() || fluent_bit.is_ok())
        .collect();
    let wants = |f: fn(Dest) -> bool| selected.iter().any(|s| f(s.dest));
    let tansu = if wants(|d| matches!(d, Dest::Kafka { .. } | Dest::FluentBitKafka)) {
        Some(kafka::tansu_bin(args.tansu.as_deref()).context(
            "tansu not found (--tansu, LOGTAP_TANSU, $CARGO_HOME/bin, ~/.cargo/bin, PATH): \
             `cargo install tansu --locked --features dynostore`",
        )?)
    } else {
        None
    };
    let receiver = if wants(|d| matches!(d, Dest::Otlp { .. } | Dest::FluentBitOtlp { .. })) {
        Some(otlp::Receiver::start(2)?)
    } else {
        None
    };

    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let size = args.size_mb << 20;
    let input = dir.join(format!("{:?}.log", Input::CriTemplated).to_lowercase());
    if std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0) < size {
        eprintln!("generating {} ({} MiB)", input.display(), args.size_mb);
        generate(Input::CriTemplated, &input, size)?;
    }
    let bytes = std::fs::metadata(&input)?.len();
    let lines = count_lines(&input)?;
    eprintln!("input: {bytes} bytes, {lines} lines");

    let mut rows: Vec<Row> = selected
        .iter()
        .map(|s| Row {
            name: s.name,
            dest: s.dest,
            target: s.target,
            bytes,
            samples: Vec::new(),
        })
        .collect();
    for run in 1..=args.runs {
        for row in &mut rows {
            // Warm the page cache so every scenario reads from memory.
            run_measured(Command::new("cat").arg(&input).stdout(Stdio::null()))?;
            let sample = match row.dest {
                Dest::Store => run_store(&logtap, &dir, &input)?,
                Dest::Kafka {
                    per_package,
                    spool_uncompressed,
                    package_value,
                } => run_kafka(
                    &logtap,
                    &dir,
                    &input,
                    tansu.as_deref().expect("tansu"),
                    lines,
                    KafkaSetup {
                        per_package,
                        spool_uncompressed,
                        package_value,
                    },
                )?,
                Dest::FluentBitKafka => run_fluent_bit_kafka(
                    fluent_bit.as_deref().expect("selected only with a binary"),
                    &dir,
                    &input,
                    tansu.as_deref().expect("tansu"),
                    lines,
                )?,
                Dest::FluentBitOtlp { gzip } => run_fluent_bit_otlp(
                    fluent_bit.as_deref().expect("selected only with a binary"),
                    &dir,
                    &input,
                    receiver.as_ref().expect("receiver"),
                    gzip,
                    lines,
                )?,
                Dest::Otlp { gzip } => run_otlp(
                    &logtap,
                    &dir,
                    &input,
                    receiver.as_ref().expect("receiver"),
                    gzip,
                    lines,
                )?,
            };
            eprintln!(
                "run {run}/{}: {}: {:.0} MB/s per core, {:.0} MB/s wall, {:.2} CPU s/GB, {} MiB peak RSS{}{}",
                args.runs,
                row.name,
                row.per_core(&sample),
                mb_per_s(bytes, sample.agent.wall),
                sample.agent.cpu.as_secs_f64() / (bytes as f64 / 1e9),
                sample.agent.max_rss_kib / 1024,
                sample
                    .delivered
                    .map_or(String::new(), |d| format!(", {d} records delivered")),
                sample.dest_cpu.map_or(String::new(), |c| format!(
                    ", destination {:.2} CPU s",
                    c.as_secs_f64()
                )),
            );
            row.samples.push(sample);
        }
    }

    let mut table = markdown(&rows, args.size_mb, args.runs, lines);
    if let Err(missing) = &fluent_bit {
        table.push_str(&format!("\nFluent Bit was not run: {missing}.\n"));
    }
    println!("{table}");
    if let Some(path) = &args.markdown {
        let results = format!(
            "{}\n{table}",
            machine(&format!(
                "cargo xtask bench network --size-mb {} --runs {} --markdown docs/benchmarks.md",
                args.size_mb, args.runs
            ))
        );
        write_results(path, &results, BEGIN_MARKER, END_MARKER)?;
    }
    Ok(())
}

fn markdown(rows: &[Row], size_mb: u64, runs: usize, lines: u64) -> String {
    let base = rows
        .iter()
        .find(|r| r.dest == Dest::Store)
        .map(|r| r.per_core(r.best()));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| scenario ({size_mb} MiB CRI input, {lines} lines, best of {runs}) | MB/s per core (logtap's, or Fluent Bit's in its row) | target MB/s per core | MB/s per core, all runs | ÷ store, same run | wall MB/s | CPU s per GB | peak RSS MiB | records delivered | destination CPU s |"
    );
    let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let best = r.best();
        let (lo, hi) = r.range();
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {:.0}–{:.0} | {} | {:.0} | {:.2} | {} | {} | {} |",
            r.name,
            r.per_core(best),
            r.target(),
            lo,
            hi,
            base.map_or("—".into(), |b| format!("{:.2}", r.per_core(best) / b)),
            mb_per_s(r.bytes, best.agent.wall),
            r.cpu_s_per_gb(),
            best.agent.max_rss_kib / 1024,
            best.delivered
                .map_or("— (not counted)".into(), |d| format!("{d} (all)")),
            best.dest_cpu
                .map_or("—".into(), |c| format!("{:.2}", c.as_secs_f64())),
        );
    }
    // logtap against the peer configured alike, same input, same run.
    for peer in rows.iter().filter(|r| r.dest.is_fluent_bit()) {
        let Some(ours) = peer
            .dest
            .logtap_counterpart()
            .and_then(|d| rows.iter().find(|r| r.dest == d))
        else {
            continue;
        };
        let _ = writeln!(
            s,
            "\n{} ÷ {}: **{:.1}×** MB/s per core (best runs), {:.1}× peak RSS.",
            ours.name,
            peer.name,
            ours.per_core(ours.best()) / peer.per_core(peer.best()),
            ours.best().agent.max_rss_kib as f64 / peer.best().agent.max_rss_kib.max(1) as f64,
        );
    }
    s
}

/// Newlines in `path`: the CRI input has only full (`F`) lines, so one record each.
fn count_lines(path: &Path) -> anyhow::Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            return Ok(n);
        }
        n += memchr::memchr_iter(b'\n', &buf[..got]).count() as u64;
    }
}

/// A fresh data directory and a config for `sink_yaml`.
fn prepare(dir: &Path, input: &Path, sink_yaml: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let data = dir.join("agent-data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let config = data.join("bench.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\nmetrics: {{listen: \"\"}}\nsources:\n  - name: bench\n    include: [\"{}\"]\n    format: cri\n    sink: out\nsinks:\n  out:\n{sink_yaml}",
            data.display(),
            input.display(),
        ),
    )?;
    Ok((data, config))
}

/// Runs `logtap run --oneshot` and returns its usage; kills it after
/// [`AGENT_DEADLINE`].
fn run_agent(logtap: &Path, config: &Path) -> anyhow::Result<Usage> {
    let start = Instant::now();
    let child = Command::new(logtap)
        .args(["run", "--oneshot", "--config"])
        .arg(config)
        .env("LOGTAP_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning {}", logtap.display()))?;
    wait_measured(
        child.id() as libc::pid_t,
        start,
        Some(AGENT_DEADLINE),
        "logtap run --oneshot",
    )
}

fn run_store(logtap: &Path, dir: &Path, input: &Path) -> anyhow::Result<Sample> {
    let (data, config) = prepare(
        dir,
        input,
        "    type: store\n    max_size: 100GiB\n    min_free: \"0\"\n",
    )?;
    let agent = run_agent(logtap, &config)?;
    let _ = std::fs::remove_dir_all(&data);
    Ok(Sample {
        agent,
        dest_cpu: None,
        delivered: None,
    })
}

/// The sink settings a Kafka scenario varies.
struct KafkaSetup {
    per_package: bool,
    spool_uncompressed: bool,
    package_value: bool,
}

fn run_kafka(
    logtap: &Path,
    dir: &Path,
    input: &Path,
    tansu: &Path,
    lines: u64,
    setup: KafkaSetup,
) -> anyhow::Result<Sample> {
    let broker_dir = dir.join("tansu");
    let _ = std::fs::remove_dir_all(&broker_dir);
    std::fs::create_dir_all(&broker_dir)?;
    let broker = kafka::Broker::start(tansu, &broker_dir, 1)?;
    let (data, config) = prepare(
        dir,
        input,
        &format!(
            "    type: kafka\n    brokers: [\"{}\"]\n    topic: {}\n    compression: lz4\n    drain_timeout: {DRAIN_TIMEOUT}\n    message_per: {}\n{}{}",
            broker.bootstrap(),
            kafka::TOPIC,
            if setup.per_package {
                "package"
            } else {
                "record"
            },
            // Only when asked: builds before the field refuse it.
            if setup.package_value {
                "    value: package\n"
            } else {
                ""
            },
            if setup.spool_uncompressed {
                "    spool: {compression: none}\n"
            } else {
                ""
            },
        ),
    )?;
    let before = broker.cpu()?;
    let agent = run_agent(logtap, &config)?;
    let dest_cpu = broker.cpu()?.saturating_sub(before);
    let counted = broker.count(lines, Duration::from_secs(1), Duration::from_secs(600))?;
    broker.stop()?;
    let _ = std::fs::remove_dir_all(&data);
    if counted.messages != lines || counted.distinct != lines || counted.without_offset != 0 {
        bail!(
            "kafka: NOT DELIVERED as expected: {lines} input lines, but the topic holds {} messages ({} distinct logtap.offset headers, {} without one)",
            counted.messages,
            counted.distinct,
            counted.without_offset,
        );
    }
    Ok(Sample {
        agent,
        dest_cpu: Some(dest_cpu),
        delivered: Some(counted.messages),
    })
}

/// Fluent Bit's `tail` (CRI) into its `kafka` output, to a fresh broker; the topic
/// must then hold one message per input line (Fluent Bit's messages carry no offset
/// header, so duplicates would show only as more messages than lines).
fn run_fluent_bit_kafka(
    fluent_bit: &Path,
    dir: &Path,
    input: &Path,
    tansu: &Path,
    lines: u64,
) -> anyhow::Result<Sample> {
    let broker_dir = dir.join("tansu");
    let _ = std::fs::remove_dir_all(&broker_dir);
    std::fs::create_dir_all(&broker_dir)?;
    let broker = kafka::Broker::start(tansu, &broker_dir, 1)?;
    let output = crate::fluentbit::Output::Kafka {
        brokers: broker.bootstrap(),
        topic: kafka::TOPIC.into(),
    };
    let setup = crate::fluentbit::Setup {
        input: Input::CriTemplated,
        durable: false,
    };
    let before = broker.cpu()?;
    let peer = crate::fluentbit::timed(fluent_bit, setup, dir, input, &output)?;
    let dest_cpu = broker.cpu()?.saturating_sub(before);
    let counted = broker.count(lines, Duration::from_secs(1), Duration::from_secs(600))?;
    broker.stop()?;
    if counted.messages != lines {
        bail!(
            "fluent-bit → kafka: NOT DELIVERED as expected: {lines} input lines, but the topic holds {} messages",
            counted.messages,
        );
    }
    Ok(Sample {
        agent: peer,
        dest_cpu: Some(dest_cpu),
        delivered: Some(counted.messages),
    })
}

fn run_otlp(
    logtap: &Path,
    dir: &Path,
    input: &Path,
    receiver: &otlp::Receiver,
    gzip: bool,
    lines: u64,
) -> anyhow::Result<Sample> {
    let (data, config) = prepare(
        dir,
        input,
        &format!(
            "    type: otlp\n    endpoint: {}\n    compression: {}\n    drain_timeout: {DRAIN_TIMEOUT}\n",
            receiver.endpoint(),
            if gzip { "gzip" } else { "none" }
        ),
    )?;
    let _ = receiver.take();
    // The harness process does nothing else while the agent runs: its CPU is the
    // receiver's.
    let before = crate::self_cpu();
    let agent = run_agent(logtap, &config)?;
    let dest_cpu = crate::self_cpu().saturating_sub(before);
    let got = receiver.take();
    let _ = std::fs::remove_dir_all(&data);
    check_otlp_delivery("otlp", gzip, &got, lines)?;
    Ok(Sample {
        agent,
        dest_cpu: Some(dest_cpu),
        delivered: Some(got.records),
    })
}

/// What `who` delivered to the receiver, printed; an error unless the receiver decoded
/// exactly one log record per input line, refused none and saw no empty request.
fn check_otlp_delivery(
    who: &str,
    gzip: bool,
    got: &otlp::Received,
    lines: u64,
) -> anyhow::Result<()> {
    eprintln!(
        "{who} (gzip {gzip}): {} requests, {:.1} MiB on the wire",
        got.requests,
        got.wire_bytes as f64 / f64::from(1 << 20)
    );
    if got.records != lines || got.errors != 0 || got.empty != 0 {
        bail!(
            "{who}: NOT DELIVERED as expected: {lines} input lines, but the receiver decoded {} log records in {} requests ({} refused, {} empty)",
            got.records,
            got.requests,
            got.errors,
            got.empty
        );
    }
    Ok(())
}

/// Fluent Bit's `tail` (CRI) into its `opentelemetry` output, to the harness's
/// receiver; the receiver must then have decoded one log record per input line, as for
/// logtap's rows (Fluent Bit's records carry no offset, so duplicates would show only
/// as more records than lines).
fn run_fluent_bit_otlp(
    fluent_bit: &Path,
    dir: &Path,
    input: &Path,
    receiver: &otlp::Receiver,
    gzip: bool,
    lines: u64,
) -> anyhow::Result<Sample> {
    let output = crate::fluentbit::Output::Otlp {
        port: receiver.port(),
        gzip,
    };
    let setup = crate::fluentbit::Setup {
        input: Input::CriTemplated,
        durable: false,
    };
    let _ = receiver.take();
    let before = crate::self_cpu();
    let peer = crate::fluentbit::timed(fluent_bit, setup, dir, input, &output)?;
    let dest_cpu = crate::self_cpu().saturating_sub(before);
    let got = receiver.take();
    check_otlp_delivery("fluent-bit → otlp", gzip, &got, lines)?;
    Ok(Sample {
        agent: peer,
        dest_cpu: Some(dest_cpu),
        delivered: Some(got.records),
    })
}

//! `logtap`: the agent daemon and its command line. This file only wires the library's
//! stages together; see `lib.rs` for the data flow.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{CommandFactory, Parser, Subcommand};
use logtap::config::Config;
use logtap::pipeline::{self, RunOptions};

#[derive(Parser, Debug)]
#[command(name = "logtap", version, about = "Kubernetes node log collector")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Collect logs into the configured sinks (default: this node's pod and host logs
    /// into the local store).
    Run {
        /// Config file (YAML). Without it, the embedded default is used.
        #[arg(long, short, env = "LOGTAP_CONFIG")]
        config: Option<PathBuf>,
        /// Overrides `data_dir` (checkpoints, default store location).
        #[arg(long, env = "LOGTAP_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Overrides `metrics.listen`; `off` disables the endpoint.
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Also create `<data_dir>/demo` with sample pod and application logs, and collect
        /// it; where eBPF works (root, BTF, probes built), also run a demo workload in a
        /// cgroup of its own and capture its output from the kernel.
        #[arg(long)]
        demo: bool,
        /// Read every matched file to its end once, ship, checkpoint, and exit.
        #[arg(long)]
        oneshot: bool,
    },
    /// Search the local store: keywords, fields, time range, context lines.
    Query(logtap::sink::store::query::QueryArgs),
    /// A live view of a running agent from its metrics endpoint: rates, lag, errors,
    /// spool, capture, drops, health (one plain snapshot when stdout is not a terminal).
    Top(logtap::top::TopArgs),
    /// Remove the eBPF probes that `capture.pin` keeps attached in bpffs after the agent
    /// exits (uninstalling, or capture turned off): detaches them and frees their ring.
    /// Refuses while an agent holds them.
    Unpin {
        /// Config file (YAML) whose `capture.pin_dir` to clear; without it, the embedded
        /// default's.
        #[arg(long, short, env = "LOGTAP_CONFIG")]
        config: Option<PathBuf>,
        /// The pin directory, instead of the config's `capture.pin_dir`.
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// How long to wait for an agent that holds the pins to stop, e.g. `30s`.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Validate a config file; errors name the field and the line.
    CheckConfig { file: PathBuf },
    /// Print the embedded default config.
    DefaultConfig,
    /// Print the shell completion script for SHELL, e.g. `logtap completions bash >
    /// /etc/bash_completion.d/logtap`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page logtap(1); with `--dir`, write it and one page per subcommand
    /// (logtap-run(1), ...) into DIR.
    Man {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    use tracing_subscriber::prelude::*;
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOGTAP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    // Self-monitoring ships `info` at most, whatever LOGTAP_LOG says, so debug
    // events stay disabled at their call sites (free) unless LOGTAP_LOG asks for them.
    let self_monitoring =
        logtap::selfmon::layer().with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(output)
        .with(self_monitoring)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("logtap: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            config,
            data_dir,
            metrics_listen,
            demo,
            oneshot,
        } => run_agent(config, data_dir, metrics_listen, demo, oneshot),
        Command::Query(args) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            logtap::sink::store::query::run_query(&args, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Top(args) => {
            let stdout = std::io::stdout();
            let terminal = std::io::IsTerminal::is_terminal(&stdout);
            logtap::top::run(&args, terminal, &mut stdout.lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Unpin {
            config,
            pin_dir,
            wait,
        } => unpin(config, pin_dir, wait),
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} sources, {} sinks)",
                    file.display(),
                    c.sources.len(),
                    c.sinks.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::DefaultConfig => {
            print!("{}", logtap::config::DEFAULT_CONFIG_YAML);
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            // Generated into memory first: clap_complete panics when a write fails
            // (a closed pipe), this way the error is reported instead.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "logtap", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: None } => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The text of `--config` (or the embedded default) and the name errors give it.
fn config_text(path: Option<&std::path::Path>) -> anyhow::Result<(String, String)> {
    Ok(match path {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            path.display().to_string(),
        ),
        None => (
            logtap::config::DEFAULT_CONFIG_YAML.to_string(),
            "<embedded default>".to_string(),
        ),
    })
}

/// `logtap run`: the agent, until a signal (or the end of the files, `--oneshot`).
fn run_agent(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    metrics_listen: Option<String>,
    demo: bool,
    oneshot: bool,
) -> anyhow::Result<ExitCode> {
    let (text, name) = config_text(config.as_deref())?;
    let mut raw = Config::parse_raw(&text, &name)?;
    if let Some(dir) = data_dir {
        raw.data_dir = dir.display().to_string();
    }
    let mut config = Config::from_raw(raw, &name)?;
    match metrics_listen.as_deref() {
        None => {}
        Some("off") => config.metrics_listen = None,
        Some(addr) => {
            config.metrics_listen = Some(addr.parse().map_err(|e| {
                anyhow::anyhow!("--metrics-listen {addr:?}: {e} (expected HOST:PORT or off)")
            })?)
        }
    }
    let workload = match demo {
        true => logtap::demo::install(&mut config)?,
        false => None,
    };
    if config.capture.is_some() {
        // Before the run's threads start (see `memory`).
        logtap::memory::tune_for_capture();
    }
    logtap::privileges::private_files(&config);
    if let Some(listen) = config.metrics_listen {
        logtap::metrics::install(
            listen,
            config.metrics_bearer_token.clone(),
            config.metrics_tls.clone(),
        )?;
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, shutdown.clone())?;
    }
    let summary = pipeline::run(config, RunOptions { oneshot, workload }, shutdown)?;
    tracing::info!(
        lines = summary.lines,
        bytes = summary.bytes,
        packages = summary.packages,
        backend = summary.read_backend,
        "logtap stopped"
    );
    Ok(ExitCode::SUCCESS)
}

/// `logtap unpin`: removes the probes' pins from `pin_dir`, or the config's.
fn unpin(
    config: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    wait: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let pin_dir = match pin_dir {
        Some(dir) => dir,
        None => {
            let (text, name) = config_text(config.as_deref())?;
            // The raw config alone: the rest of it need not be valid to unpin.
            PathBuf::from(Config::parse_raw(&text, &name)?.capture.pin_dir)
        }
    };
    let removed = logtap::capture::unpin(&pin_dir, wait).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => anyhow::anyhow!(
            "{}: {e}: an agent still holds the pins; stop it first, or wait with --wait \
             (`fuser -v {}` names it)",
            pin_dir.display(),
            pin_dir.display()
        ),
        _ => anyhow::anyhow!("{}: {e}", pin_dir.display()),
    })?;
    match removed.len() {
        0 => println!("nothing pinned in {}", pin_dir.display()),
        n => println!(
            "removed {n} pinned probe layout(s) from {}: their programs are detached",
            pin_dir.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

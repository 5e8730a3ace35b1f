//! `cargo xtask fuzz [--seconds N] [TARGET...]`: builds the libFuzzer targets of
//! `fuzz/` (nightly, `cargo fuzz`, AddressSanitizer, debug assertions and overflow
//! checks) and runs each for N seconds (default 20), every target when none is named.
//! Installs the nightly toolchain and `cargo-fuzz` first when they are missing. A
//! crash fails the task; libFuzzer leaves the input under `fuzz/artifacts/<target>/`.
//!
//! Each run reads the committed seeds (`fuzz/seeds/<target>`, read only) and grows a
//! working corpus in `fuzz/corpus/<target>` (git-ignored), so runs by hand build on
//! each other.
//!
//! `cargo xtask fuzz seeds` rewrites the seeds from real examples: lines as the
//! runtime and the servers write them, and the binary formats (segment blocks,
//! checkpoint files, ring records) written by the agent's own encoders.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

mod seeds;

/// Every target in `fuzz/fuzz_targets`, in the order CI runs them.
pub const TARGETS: [&str; 8] = [
    "config",
    "frame",
    "parse",
    "store_segment",
    "store_block",
    "checkpoint",
    "cri_stream",
    "ring_record",
];

/// Same for `build` and `run`, or `run` would build again: many codegen units build
/// the agent's dependency tree about twice as fast, for somewhat slower fuzzing.
const BUILD_FLAGS: [&str; 2] = ["--codegen-units", "16"];

pub fn main(args: &[String]) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: fuzz: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ is inside the repository");
    let fuzz_dir = root.join("fuzz");
    if args.first().map(String::as_str) == Some("seeds") {
        return seeds::write(&fuzz_dir.join("seeds"));
    }
    let mut seconds = 20u64;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = args.next().ok_or("--seconds needs a value")?;
                seconds = value
                    .parse()
                    .map_err(|_| format!("--seconds {value}: not a whole number"))?;
            }
            t if TARGETS.contains(&t) => targets.push(t),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: cargo xtask fuzz [--seconds N] [{}] | seeds",
                    TARGETS.join(" | ")
                ));
            }
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    // `cargo fmt --all` of the main workspace does not reach this one.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    status(
        Command::new(&cargo)
            .args(["fmt", "--check"])
            .current_dir(&fuzz_dir),
    )?;
    ensure_tools()?;

    let started = Instant::now();
    cargo_fuzz(&fuzz_dir, &["build"])?;
    let built = started.elapsed();
    eprintln!("xtask: fuzz targets built in {:.0} s", built.as_secs_f64());
    for target in targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .map_err(|e| format!("creating {}: {e}", corpus.display()))?;
        let seeds = fuzz_dir.join("seeds").join(target);
        let corpora = [corpus.to_string_lossy(), seeds.to_string_lossy()];
        let libfuzzer = [
            format!("-max_total_time={seconds}"),
            // An input taking this long is a hang: a failure like a crash.
            "-timeout=10".to_owned(),
        ];
        let mut run = vec!["run", target, &corpora[0], &corpora[1]];
        run.push("--");
        run.extend(libfuzzer.iter().map(String::as_str));
        cargo_fuzz(&fuzz_dir, &run)?;
    }
    eprintln!(
        "xtask: fuzzing took {:.0} s ({:.0} s building)",
        started.elapsed().as_secs_f64(),
        built.as_secs_f64()
    );
    Ok(())
}

/// `cargo +nightly fuzz <args>` (through rustup, which the `cargo` running this task
/// may not be).
fn cargo_fuzz(fuzz_dir: &Path, args: &[&str]) -> Result<(), String> {
    let (sub, rest) = args.split_first().expect("a cargo fuzz subcommand");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz", sub]);
    // What `cargo run` set for this task (CARGO_PKG_NAME=xtask, CARGO_MANIFEST_DIR...):
    // build scripts that watch those variables (ring's) would rebuild, and with them
    // most of the agent's dependencies, whenever the task and a shell take turns.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "CARGO" || (name.starts_with("CARGO_") && name != "CARGO_HOME") {
            cmd.env_remove(&*name);
        }
    }
    cmd.args(BUILD_FLAGS).args(rest).current_dir(fuzz_dir);
    eprintln!("xtask: cargo +nightly fuzz {sub} {}", rest.join(" "));
    status(&mut cmd)
}

fn status(cmd: &mut Command) -> Result<(), String> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{cmd:?} failed ({s})")),
        Err(e) => Err(format!("cannot run {cmd:?}: {e}")),
    }
}

/// The nightly toolchain and `cargo-fuzz`, installed only when missing.
fn ensure_tools() -> Result<(), String> {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        eprintln!("xtask: installing the nightly toolchain (cargo fuzz needs it)");
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    if !cargo_home.join("bin/cargo-fuzz").exists() {
        eprintln!("xtask: installing cargo-fuzz into {}", cargo_home.display());
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        status(Command::new(cargo).args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

//! Developer tasks: `cargo xtask <task>`.
//!
//! - `ci`: formatting, lints and the whole test suite, exactly as CI runs them.
//! - `bench [ARGS]`: the throughput harness in release mode (see `bench/`); arguments
//!   are passed on, e.g. `cargo xtask bench --size-mb 512` (a leading `--` is
//!   accepted too). `cargo xtask bench capture` is the eBPF capture benchmark (root),
//!   which runs capture in process and so needs no `logtap` binary.
//!   `bench network` (Kafka, OTLP) and `bench lz4` (the store's compressor against the
//!   C liblz4) are the others; Fluent Bit runs beside logtap in the file scenarios
//!   when `../shared/peers/fluent-bit` (or `--fluent-bit`) is there.
//! - `build-ebpf`: builds the eBPF probes (`agent-ebpf/probes`) for `bpfel-unknown-none`
//!   into `target/bpf/logtap-probes.bpf.o`, which the agent's build script embeds.
//!   Installs what is missing first (rust-src, bpf-linker) or says exactly what is.
//! - `demo [--data-dir DIR]`: the README's first command: the probes (when the kernel
//!   allows), the agent, a one-shot demo run capturing a workload from the kernel
//!   beside the files, and a query of the store. See `demo.rs`.
//! - `fuzz [--seconds N] [TARGET...]`: builds and runs the libFuzzer targets of `fuzz/`
//!   for N seconds each (nightly and cargo-fuzz installed when missing); `fuzz seeds`
//!   rewrites their seeds. See `fuzz.rs`.
//! - `image [--debug] [--out DIR]`: the agent's OCI image archive without docker
//!   (`target/image/logtap-<version>.oci.tar`, probes embedded); see `image.rs`.
//! - `vm-test [--kernel 5.10|5.11|5.13] [--timeout SECS] [TEST...]`: the eBPF capture tests
//!   (`capture_probes`) in a virtual machine (KVM, else QEMU's emulation) on Debian's
//!   5.10 and Ubuntu's 5.11 and 5.13 kernels, where the probes must load the compat hooks; see
//!   `vm.rs`.
//! - `gen-crd`: writes `deploy/crd.yaml` from the `LogCollection` Rust type (a test in
//!   `agent/tests/deploy_manifests.rs` fails when the file and the type disagree).

mod build_ebpf;
mod demo;
mod fuzz;
mod image;
mod oci;
mod vm;

use std::path::Path;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let task = args.next();
    let rest: Vec<String> = args.collect();
    if task.as_deref() == Some("gen-crd") {
        return gen_crd();
    }
    if task.as_deref() == Some("fuzz") {
        return fuzz::main(&rest);
    }
    if task.as_deref() == Some("build-ebpf") {
        return match build_ebpf::run() {
            Ok(obj) => {
                eprintln!("xtask: eBPF object at {}", obj.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xtask: build-ebpf failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if task.as_deref() == Some("demo") {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        return match demo::run(&root, &rest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask: demo failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if task.as_deref() == Some("image") {
        return match image::run(&rest) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask: image failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if task.as_deref() == Some("vm-test") {
        return match vm::run(&rest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask: vm-test failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let steps: Vec<Vec<&str>> = match task.as_deref() {
        Some("ci") => vec![
            vec!["fmt", "--all", "--check"],
            vec![
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            vec!["test", "--workspace"],
        ],
        Some("bench") => {
            let mut run = vec!["run", "--release", "-p", "logtap-bench", "--"];
            // `cargo xtask bench -- --size-mb 512` passes the `--` on: drop it, or the
            // harness would take every option after it for a positional argument.
            let args = match rest.first().map(String::as_str) {
                Some("--") => &rest[1..],
                _ => &rest[..],
            };
            run.extend(args.iter().map(String::as_str));
            if args.first().map(String::as_str) == Some("capture") {
                vec![run]
            } else {
                vec![vec!["build", "--release", "-p", "logtap"], run]
            }
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | demo [--data-dir DIR] | build-ebpf | bench [ARGS] | fuzz [ARGS] | gen-crd | image [--debug] | vm-test [ARGS]>"
            );
            return ExitCode::from(2);
        }
    };
    for step in steps {
        eprintln!("xtask: cargo {}", step.join(" "));
        match nested_cargo().args(&step).status() {
            Ok(s) if s.success() => {}
            Ok(s) => {
                eprintln!("xtask: `cargo {}` failed ({s})", step.join(" "));
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("xtask: cannot run cargo: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn gen_crd() -> ExitCode {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crd.yaml");
    match std::fs::write(&path, logtap::config::crd::crd_yaml()) {
        Ok(()) => {
            eprintln!("xtask: wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask: cannot write {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// `cargo`, without the variables `cargo run` set for xtask itself: build scripts that
/// track them (ring's `rerun-if-env-changed=CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, ...)
/// would otherwise rerun, and rebuild ring, rustls and kube, whenever the same build
/// was last made by a plain `cargo build`.
pub(crate) fn nested_cargo() -> Command {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                &*name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "OUT_DIR"
            )
        {
            cargo.env_remove(&*name);
        }
    }
    cargo
}

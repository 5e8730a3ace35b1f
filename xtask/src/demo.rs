//! `cargo xtask demo [--data-dir DIR]`: the README's first command, from a fresh clone.
//!
//! 1. The eBPF probes, when this machine can load them (root, a kernel with BTF):
//!    `build-ebpf`, which installs rust-src and bpf-linker when they are missing.
//!    Otherwise, or when the build fails, one line says why and the demo goes on
//!    without them (the agent then collects files only).
//! 2. The agent, once, in the dev profile: the profile this task itself was built in,
//!    so the dependencies are compiled once for both, and the one `.ci/run` tests in.
//! 3. `logtap run --oneshot --demo`: the node's logs, the demo's sample logs and, with
//!    the probes, a workload in a cgroup of its own whose output capture takes from
//!    the kernel (`agent/src/demo.rs`); it ends by itself.
//! 4. `logtap query`: lines from the kernel (`[ebpf]`) beside lines from files.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let data_dir = match args {
        [] => None,
        [flag, dir] if flag == "--data-dir" => Some(PathBuf::from(dir)),
        _ => {
            return Err(format!(
                "usage: cargo xtask demo [--data-dir DIR] (got {args:?})"
            ));
        }
    };
    match ebpf_blocker() {
        Some(why) => eprintln!("xtask: demo without eBPF capture: {why}; it collects files only"),
        None => {
            if let Err(e) = crate::build_ebpf::run() {
                eprintln!(
                    "xtask: demo without eBPF capture: the probes did not build ({e}); it collects files only"
                );
            }
        }
    }
    eprintln!("xtask: cargo build -p logtap");
    let mut build = crate::nested_cargo();
    build.current_dir(root).args(["build", "-p", "logtap"]);
    status(&mut build)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let logtap = target.join("debug/logtap");

    let mut run = Command::new(&logtap);
    run.args(["run", "--oneshot", "--demo", "--metrics-listen", "off"]);
    if let Some(dir) = &data_dir {
        run.arg("--data-dir").arg(dir);
    }
    eprintln!("xtask: {run:?}");
    status(&mut run)?;

    let store = data_dir.map_or_else(
        || PathBuf::from("/var/lib/logtap/store"),
        |d| d.join("store"),
    );
    let mut query = Command::new(&logtap);
    query
        .args(["query", "--context", "1", "--limit", "8", "--store"])
        .arg(&store)
        .arg("timed out");
    eprintln!(
        "xtask: {query:?}\n       ([ebpf]: captured from the kernel; the others were read from files)"
    );
    status(&mut query)
}

/// Why the probes cannot load on this machine, when that is known before building them.
fn ebpf_blocker() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        return Some(
            "not root (loading the probes needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)".into(),
        );
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("this kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    None
}

fn status(cmd: &mut Command) -> Result<(), String> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{cmd:?} failed ({s})")),
        Err(e) => Err(format!("cannot run {cmd:?}: {e}")),
    }
}

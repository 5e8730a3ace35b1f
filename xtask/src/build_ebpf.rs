//! `cargo xtask build-ebpf`: the eBPF object, from a fresh machine.
//!
//! 1. The toolchain: the active rustup toolchain (or `LOGTAP_EBPF_TOOLCHAIN`). A stable
//!    one works with `RUSTC_BOOTSTRAP=1` (`-Z build-std=core`, and aya-ebpf's
//!    `asm_experimental_arch`); its `rust-src` component is added when missing.
//! 2. `bpf-linker` 0.13.0, linked against that toolchain's own libLLVM (Debian ships no
//!    LLVM of the version rustc uses): a persistent prefix (`$CARGO_HOME/bpf-llvm`, or
//!    `LOGTAP_BPF_LLVM_PREFIX`) gets `lib/libLLVM.so` symlinks to the toolchain's library,
//!    then `cargo install` builds the linker with `LLVM_PREFIX` pointing there (the
//!    linker keeps that prefix as its RUNPATH, hence not /tmp). Skipped when a
//!    `bpf-linker` already runs.
//! 3. `cargo build` of `agent-ebpf/probes` for `bpfel-unknown-none` in `target/ebpf`,
//!    then the object is copied (atomically) to `target/bpf/logtap-probes.bpf.o`, a
//!    directory of its own that the agent's build script watches.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "bpfel-unknown-none";
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("xtask has no parent directory")?
        .to_path_buf();
    let toolchain = toolchain()?;
    eprintln!("xtask: eBPF toolchain {toolchain}");
    ensure_rust_src(&toolchain)?;
    let linker_dir = ensure_bpf_linker(&toolchain)?;
    build(&root, &toolchain, &linker_dir)
}

fn toolchain() -> Result<String, String> {
    if let Ok(tc) = std::env::var("LOGTAP_EBPF_TOOLCHAIN")
        && !tc.is_empty()
    {
        return Ok(tc);
    }
    let out = output(Command::new("rustup").args(["show", "active-toolchain"]))
        .map_err(|e| format!("rustup is required to build the eBPF probes: {e}"))?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| {
            format!("cannot read the active toolchain from `rustup show active-toolchain`: {out:?}")
        })
}

fn rustup_run(toolchain: &str, program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain, program]);
    // The outer cargo's choices must not leak into the eBPF build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn sysroot(toolchain: &str) -> Result<PathBuf, String> {
    let out = output(rustup_run(toolchain, "rustc").args(["--print", "sysroot"]))?;
    Ok(PathBuf::from(out.trim()))
}

fn ensure_rust_src(toolchain: &str) -> Result<(), String> {
    let core = sysroot(toolchain)?.join("lib/rustlib/src/rust/library/core");
    if core.is_dir() {
        return Ok(());
    }
    eprintln!("xtask: adding rustup component rust-src to {toolchain}");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", toolchain]))
        .map_err(|e| {
            format!("missing rust-src for {toolchain} and `rustup component add rust-src --toolchain {toolchain}` failed: {e}")
        })
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

/// The directory holding a working `bpf-linker` (to put first in the build's PATH).
fn ensure_bpf_linker(toolchain: &str) -> Result<PathBuf, String> {
    let bin = cargo_home().join("bin");
    let runs = |dir: Option<&Path>| {
        let program = dir.map_or_else(|| PathBuf::from("bpf-linker"), |d| d.join("bpf-linker"));
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if runs(Some(&bin)) {
        return Ok(bin);
    }
    if runs(None) {
        return Ok(PathBuf::new());
    }
    let sysroot = sysroot(toolchain)?;
    let libllvm = std::fs::read_dir(sysroot.join("lib"))
        .map_err(|e| format!("cannot list {}/lib: {e}", sysroot.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .ok_or_else(|| {
            format!(
                "no libLLVM.so.* in {}/lib: bpf-linker needs the toolchain's LLVM (install a rustup toolchain, not a distribution rustc)",
                sysroot.display()
            )
        })?;
    let verbose = output(rustup_run(toolchain, "rustc").arg("-vV"))?;
    let llvm_major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .ok_or("cannot read the LLVM version from `rustc -vV`")?
        .to_owned();
    let prefix = std::env::var_os("LOGTAP_BPF_LLVM_PREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| cargo_home().join("bpf-llvm"));
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).map_err(|e| format!("cannot create {}: {e}", lib.display()))?;
    let versioned = libllvm.file_name().ok_or("libLLVM has no file name")?;
    for name in [OsString::from("libLLVM.so"), versioned.to_owned()] {
        let link = lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link).map_err(|e| {
            format!(
                "cannot link {} to {}: {e}",
                link.display(),
                libllvm.display()
            )
        })?;
    }
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against {} (LLVM {llvm_major}, about a minute)",
        libllvm.display()
    );
    status(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{llvm_major}")),
    )
    .map_err(|e| {
        format!(
            "bpf-linker is missing and `LLVM_PREFIX={} cargo install bpf-linker --version {BPF_LINKER_VERSION} --no-default-features --features llvm-{llvm_major}` failed: {e} (it needs crates.io and a C toolchain: apt-get install build-essential)",
            prefix.display()
        )
    })?;
    if runs(Some(&bin)) {
        Ok(bin)
    } else {
        Err(format!(
            "bpf-linker was installed into {} but does not run",
            bin.display()
        ))
    }
}

fn build(root: &Path, toolchain: &str, linker_dir: &Path) -> Result<PathBuf, String> {
    let target_dir = root.join("target/ebpf");
    // aya-ebpf's cfg for per-architecture pt_regs; BTF for the object needs debuginfo.
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f");
    let mut cmd = rustup_run(toolchain, "cargo");
    cmd.current_dir(root.join("agent-ebpf/probes"))
        .args(["build", "--release", "--locked", "--target", TARGET])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    if !toolchain.starts_with("nightly") {
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    if !linker_dir.as_os_str().is_empty() {
        let mut path = OsString::from(linker_dir);
        if let Some(old) = std::env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        cmd.env("PATH", path);
    }
    status(&mut cmd)?;
    let built = target_dir.join(TARGET).join("release/logtap-probes");
    let out_dir = root.join("target/bpf");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let obj = out_dir.join("logtap-probes.bpf.o");
    publish(&built, &obj)?;
    Ok(obj)
}

/// Puts the built object at `obj` (atomically), unless `obj` holds the same bytes
/// already: the agent's build script watches it, so rewriting it would recompile the
/// agent on every `build-ebpf` (`.ci/run`, `cargo xtask image`) for nothing.
fn publish(built: &Path, obj: &Path) -> Result<(), String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    if obj.exists() && read(obj)? == read(built)? {
        return Ok(());
    }
    let tmp = obj.with_file_name(".logtap-probes.bpf.o.tmp");
    std::fs::copy(built, &tmp).map_err(|e| format!("cannot copy {}: {e}", built.display()))?;
    std::fs::rename(&tmp, obj).map_err(|e| format!("cannot rename to {}: {e}", obj.display()))
}

fn status(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{shown} failed ({s})")),
        Err(e) => Err(format!("cannot run {shown}: {e}")),
    }
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "{shown} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run {shown}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's build script reruns (and the agent is compiled again, minutes in
    /// release) whenever the object's mtime moves: an unchanged build must not move it.
    #[test]
    fn an_unchanged_object_is_left_as_it_is() {
        let dir = std::env::temp_dir().join(format!("xtask-publish-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (built, obj) = (dir.join("built.o"), dir.join("logtap-probes.bpf.o"));
        std::fs::write(&built, b"object v1").unwrap();
        publish(&built, &obj).unwrap();
        let epoch = std::time::SystemTime::UNIX_EPOCH;
        std::fs::File::options()
            .write(true)
            .open(&obj)
            .unwrap()
            .set_modified(epoch)
            .unwrap();
        let mtime = || std::fs::metadata(&obj).unwrap().modified().unwrap();

        publish(&built, &obj).unwrap();
        assert_eq!(mtime(), epoch, "the same object was written again");

        std::fs::write(&built, b"object v2").unwrap();
        publish(&built, &obj).unwrap();
        assert_eq!(std::fs::read(&obj).unwrap(), b"object v2");
        assert_ne!(mtime(), epoch);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! `cargo xtask image [--debug] [--out DIR]`: the agent's container image without
//! docker, as an OCI archive `DIR/logtap-<version>.oci.tar` (default `target/image`)
//! tagged `ghcr.io/logtap/logtap:<version>`.
//!
//! 1. The eBPF probes (`build-ebpf`), so that the agent's build script embeds them.
//! 2. `cargo build --release -p logtap` (`--debug`: the dev profile, for a quick local
//!    image; never publish it).
//! 3. The root file system and the archive (`oci.rs`): the binary, the loader and
//!    libraries `ldd` names, the CA bundle.
//!
//! Then: `ctr -n k8s.io images import <archive>` on a node, `docker load -i <archive>`,
//! or `skopeo copy oci-archive:<archive> docker://<registry>/logtap:<version>`.

use std::path::{Path, PathBuf};

use crate::oci;

#[cfg(test)]
#[path = "oci_tests.rs"]
mod oci_tests;

pub fn run(args: &[String]) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("xtask has no parent directory")?
        .to_path_buf();
    let mut debug = false;
    let mut out = root.join("target/image");
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--debug" => debug = true,
            "--out" => out = PathBuf::from(args.next().ok_or("--out needs a directory")?),
            other => {
                return Err(format!(
                    "unknown argument {other:?} (usage: cargo xtask image [--debug] [--out DIR])"
                ));
            }
        }
    }
    build_ebpf_object()?;
    let mut build = crate::nested_cargo();
    build
        .current_dir(&root)
        .args(["build", "-p", "logtap", "--bin", "logtap"]);
    if !debug {
        build.arg("--release");
    }
    eprintln!("xtask: {build:?}");
    let status = build
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build failed ({status})"));
    }
    let binary = root
        .join("target")
        .join(if debug { "debug" } else { "release" })
        .join("logtap");
    let version = env!("CARGO_PKG_VERSION");
    let (archive, written) = oci::agent_image(&binary, &out, version)
        .map_err(|e| format!("image from {}: {e}", binary.display()))?;
    eprintln!(
        "xtask: image {}:{version} ({}, {:.1} MB) in {}",
        oci::AGENT_REPOSITORY,
        written.manifest_digest,
        written.size as f64 / 1e6,
        archive.display()
    );
    Ok(archive)
}

/// The image is the capturing agent: without the probes' object the build would
/// silently make one that cannot capture.
fn build_ebpf_object() -> Result<(), String> {
    let object = crate::build_ebpf::run().map_err(|e| format!("build-ebpf: {e}"))?;
    eprintln!("xtask: eBPF object {}", object.display());
    Ok(())
}

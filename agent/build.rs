//! Embeds the eBPF probes' object, built by `cargo xtask build-ebpf` (a separate step:
//! it needs bpf-linker and a `-Z build-std` build for another target, which `cargo
//! build` of the agent must not require). Without the object the agent still builds;
//! `Probes::load` then says how to get it.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(logtap_ebpf_obj)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=LOGTAP_EBPF_OBJ");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let (object, watch) = match std::env::var_os("LOGTAP_EBPF_OBJ") {
        // Cargo reruns a script on every build while a path it watches is missing:
        // until the named object exists, its directory is watched instead.
        Some(path) => {
            let object = PathBuf::from(path);
            let dir = match object.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (object, dir)
        }
        None => {
            // A directory holding only the object: watching it notices the object's
            // arrival without scanning the whole target directory.
            let dir = manifest_dir.join("../target/bpf");
            if !dir.exists() && std::fs::create_dir_all(&dir).is_ok() {
                // Cargo reruns this script when the watched directory is newer than
                // the script's last run, so a directory made during the run would
                // rebuild the agent on the next `cargo build` for nothing. Dated to
                // the epoch, it looks changed only when the object arrives in it.
                let _ = std::fs::File::open(&dir)
                    .and_then(|d| d.set_modified(std::time::SystemTime::UNIX_EPOCH));
            }
            (dir.join("logtap-probes.bpf.o"), dir)
        }
    };
    let watched = if object.exists() { &object } else { &watch };
    println!("cargo::rerun-if-changed={}", watched.display());
    let embedded = out_dir.join("logtap-probes.bpf.o");
    match std::fs::copy(&object, &embedded) {
        Ok(_) => println!("cargo::rustc-cfg=logtap_ebpf_obj"),
        Err(e) => {
            let _ = std::fs::remove_file(&embedded);
            println!(
                "cargo::warning=eBPF object missing: run `cargo xtask build-ebpf` ({}: {e}); the agent builds without eBPF capture",
                object.display()
            );
        }
    }
}

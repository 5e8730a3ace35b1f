//! `cargo xtask vm-test [--kernel 5.10|5.11|5.13] [--accel auto|kvm|tcg] [--timeout SECS] [TEST...]`:
//! the eBPF capture tests (`agent/tests/capture_probes.rs`), then the agent as a whole
//! (`agent/tests/demo.rs`), on other kernels than this machine's (each of [`KERNELS`],
//! or the one named), one QEMU virtual machine after the other, with
//! `LOGTAP_EXPECT_HOOKS` set to the hooks that kernel must get (`compat` on 5.10, 5.11
//! and 5.13: no trampolines' `bpf_get_func_ret`, no `bpf_task_pt_regs`). Test names
//! select tests of `capture_probes` and leave the agent's out.
//!
//! 1. The kernel: a distribution's package for it (Debian bullseye's 5.10 LTS, Ubuntu
//!    20.04's 5.11 and 5.13), fetched once with apt's own client (signatures or a
//!    pinned hash checked, see [`Archive`]), its `vmlinuz` kept in
//!    `target/vm/<kernel>/`, the package deleted.
//! 2. The test binaries: `cargo test -p logtap --test capture_probes --test demo
//!    --no-run` (the dev profile, the one CI builds), their paths and the agent's from
//!    cargo's JSON messages.
//! 3. An initramfs (`target/vm/initramfs.cpio`, uncompressed: the kernel unpacks it
//!    as it is): busybox-static as `/bin/sh` and every tool the tests run
//!    (`seq`, `head`, `cat`, `sleep`), the test binaries, the agent at the absolute
//!    path `demo` runs it from, the libraries `ldd` names for them, and an `/init` that
//!    mounts what the probes read (proc, sysfs, devtmpfs, tracefs, cgroup2, bpffs, a
//!    tmpfs for the tests' temporary directories), runs the tests and prints each
//!    binary's exit status on a line of its own.
//! 4. `qemu-system-x86_64` on KVM, or on QEMU's emulation (TCG) where `/dev/kvm` is
//!    missing or cannot boot a stock kernel (see [`Accel::resolve`]), 2 CPUs (the
//!    racing-writers test pins threads to both), 2 GiB, the serial console copied to
//!    `target/vm/console-<kernel>.log` and to stderr as it comes, killed after the
//!    timeout.
//! 5. The verdict from the console: the status lines `/init` printed, else a failure
//!    (the VM died, or timed out). Non-zero exit on anything but the tests' success.
//!
//! Run as root, as CI does (tried only so: apt's fetch, `/dev/kvm`). Needs
//! `qemu-system-x86_64` (Debian: `qemu-system-x86`), `busybox-static`,
//! `ca-certificates`, and the archives for the first run's fetches.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A kernel the VM can boot: a distribution's package of it, pinned to one version so
/// that a run is repeatable (and the cache never stale).
#[derive(Debug)]
struct Kernel {
    name: &'static str,
    archive: Archive,
    package: &'static str,
    version: &'static str,
    /// Its path in the package.
    vmlinuz: &'static str,
    /// What `auto` must get there (`LOGTAP_EXPECT_HOOKS`).
    expect_hooks: &'static str,
}

/// Where a kernel's package comes from, and how it is checked.
#[derive(Debug)]
enum Archive {
    /// Debian's: apt in a private directory, the suite's signatures checked against the
    /// host's Debian keyring.
    Debian { suite: &'static str },
    /// Ubuntu's (`https://archive.ubuntu.com/ubuntu/<path>`): the host has no Ubuntu
    /// keyring, so apt's downloader fetches the package alone over HTTPS and checks
    /// it against the SHA-256 pinned here, taken from the suite's `Packages.gz`, whose
    /// own hash was checked against its `InRelease` (both fetched over HTTPS).
    Ubuntu {
        path: &'static str,
        sha256: &'static str,
    },
}

const KERNELS: [Kernel; 3] = [
    Kernel {
        name: "5.10",
        archive: Archive::Debian { suite: "bullseye" },
        // The unsigned image: the same kernel as the signed one, without the EFI
        // signature (and without its dependency on the signing template).
        package: "linux-image-5.10.0-32-amd64-unsigned",
        version: "5.10.223-1",
        vmlinuz: "./boot/vmlinuz-5.10.0-32-amd64",
        expect_hooks: "compat",
    },
    // The oldest kernel with BTF (`CONFIG_DEBUG_INFO_BTF=y`, which capture needs) that
    // a package archive still serves: Ubuntu 20.04's hardware-enablement 5.11 (its
    // 5.8 is built without BTF; 20.10's, with it, is no longer served). Before 5.12's
    // atomic fetch-add and 5.15's `bpf_task_pt_regs`: the compat hooks' kernel.
    Kernel {
        name: "5.11",
        archive: Archive::Ubuntu {
            path: "pool/main/l/linux-hwe-5.11/linux-image-unsigned-5.11.0-46-generic_5.11.0-46.51~20.04.1_amd64.deb",
            sha256: "ec091b7781d6118cf15eb860b6c7c3f5a3953f1730501a02879461ac662968c6",
        },
        package: "linux-image-unsigned-5.11.0-46-generic",
        version: "5.11.0-46.51~20.04.1",
        vmlinuz: "./boot/vmlinuz-5.11.0-46-generic",
        expect_hooks: "compat",
    },
    // Past 5.12's atomic fetch-add, before 5.15's `bpf_task_pt_regs`: still the compat
    // hooks, on a newer verifier.
    Kernel {
        name: "5.13",
        archive: Archive::Ubuntu {
            path: "pool/main/l/linux-hwe-5.13/linux-image-unsigned-5.13.0-52-generic_5.13.0-52.59~20.04.1_amd64.deb",
            sha256: "27182e23c7587d1f60edc68a5277f13459acc663bb8539f677c7979cb525d0fa",
        },
        package: "linux-image-unsigned-5.13.0-52-generic",
        version: "5.13.0-52.59~20.04.1",
        vmlinuz: "./boot/vmlinuz-5.13.0-52-generic",
        expect_hooks: "compat",
    },
];

/// Where busybox-static puts its binary on Debian.
const BUSYBOX: &str = "/bin/busybox";
/// The line `/init` prints with the probes' tests' exit status.
const STATUS_LINE: &str = "logtap-vm-test: exit status ";
/// The line `/init` prints with the agent's test's exit status (the demo, end to end).
const AGENT_STATUS_LINE: &str = "logtap-vm-test: agent exit status ";

#[derive(Debug)]
struct Options {
    /// Every kernel of [`KERNELS`] unless `--kernel` names one.
    kernels: Vec<&'static Kernel>,
    timeout: Duration,
    accel: Accel,
    tests: Vec<String>,
}

/// How the VM's CPUs run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Accel {
    /// KVM where it can boot a stock kernel, else TCG (see [`Accel::resolve`]).
    Auto,
    Kvm,
    /// QEMU's own emulation: no /dev/kvm needed, several times slower.
    Tcg,
}

impl Accel {
    /// `Auto` made a choice, with the reason printed when it is TCG.
    fn resolve(self) -> Accel {
        if self != Accel::Auto {
            return self;
        }
        if !Path::new("/dev/kvm").exists() {
            eprintln!("xtask: no /dev/kvm: the VM runs on QEMU's emulation (TCG), slower");
            return Accel::Tcg;
        }
        // A PVM host (`kvm_pvm`, KVM without hardware virtualisation, as in a cloud
        // VM) runs only kernels built as PVM guests: a stock kernel hangs right after
        // its real-mode setup ("Probing EDD ... ok", then nothing).
        if Path::new("/sys/module/kvm_pvm").exists() {
            eprintln!(
                "xtask: /dev/kvm is PVM (module kvm_pvm), which boots only PVM guest kernels: \
                 the VM runs on QEMU's emulation (TCG), slower"
            );
            return Accel::Tcg;
        }
        Accel::Kvm
    }

    fn qemu_args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm | Accel::Auto => &["-accel", "kvm", "-cpu", "host"],
            // Several threads: both virtual CPUs really run at once (the racing
            // writers' test needs that).
            Accel::Tcg => &["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let usage = "usage: cargo xtask vm-test [--kernel 5.10] [--accel auto|kvm|tcg] [--timeout SECS] [TEST...]";
    let mut options = Options {
        kernels: KERNELS.iter().collect(),
        timeout: Duration::from_secs(900),
        accel: Accel::Auto,
        tests: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--kernel" => {
                let name = args.next().ok_or(usage)?;
                let kernel = KERNELS.iter().find(|k| k.name == name).ok_or_else(|| {
                    let known: Vec<_> = KERNELS.iter().map(|k| k.name).collect();
                    format!("no kernel {name:?} (known: {known:?})")
                })?;
                options.kernels = vec![kernel];
            }
            "--accel" => {
                options.accel = match args.next().map(String::as_str) {
                    Some("auto") => Accel::Auto,
                    Some("kvm") => Accel::Kvm,
                    Some("tcg") => Accel::Tcg,
                    _ => return Err(format!("--accel auto|kvm|tcg; {usage}")),
                }
            }
            "--timeout" => {
                let secs = args.next().and_then(|s| s.parse().ok()).ok_or(usage)?;
                options.timeout = Duration::from_secs(secs);
            }
            other if other.starts_with('-') => return Err(format!("{other}? {usage}")),
            test => options.tests.push(test.to_owned()),
        }
    }
    Ok(options)
}

pub fn run(args: &[String]) -> Result<(), String> {
    let options = parse_args(args)?;
    let accel = options.accel.resolve();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("xtask has no parent directory")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cache = target.join("vm");
    let tests = build_tests(root)?;
    let mut failed = Vec::new();
    for kernel in &options.kernels {
        eprintln!("xtask: vm-test on {}", kernel.name);
        if let Err(e) = run_on(kernel, &options, &tests, &cache, accel) {
            eprintln!("xtask: vm-test on {} failed: {e}", kernel.name);
            failed.push(format!("{}: {e}", kernel.name));
        }
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(failed.join("; ")),
    }
}

/// The tests on one kernel: its VM booted with the binaries `tests`.
fn run_on(
    kernel: &Kernel,
    options: &Options,
    tests: &Tests,
    cache: &Path,
    accel: Accel,
) -> Result<(), String> {
    let vmlinuz = fetch_kernel(kernel, &cache.join(kernel.name))?;
    let initramfs = cache.join("initramfs.cpio");
    let init = init_script(kernel.expect_hooks, &options.tests);
    write_initramfs(&initramfs, &tests.files(), &init)
        .map_err(|e| format!("initramfs {}: {e}", initramfs.display()))?;
    let console = cache.join(format!("console-{}.log", kernel.name));
    let log = boot(&vmlinuz, &initramfs, &console, accel, options.timeout);
    // The initramfs holds a copy of the test binary: not worth keeping.
    let _ = std::fs::remove_file(&initramfs);
    let log = log?;
    eprintln!("xtask: console log in {}", console.display());
    verdict(&log, options.tests.is_empty())
}

/// The kernel's `vmlinuz`, from `dir` or else fetched into it.
fn fetch_kernel(kernel: &Kernel, dir: &Path) -> Result<PathBuf, String> {
    let vmlinuz = dir.join(format!("vmlinuz-{}", kernel.version));
    if vmlinuz.exists() {
        return Ok(vmlinuz);
    }
    let apt = dir.join("apt");
    eprintln!("xtask: fetching {} {}", kernel.package, kernel.version);
    let deb = match kernel.archive {
        Archive::Debian { suite } => fetch_debian(kernel, suite, &apt)?,
        Archive::Ubuntu { path, sha256 } => fetch_checked(path, sha256, &apt)?,
    };
    extract(&deb, kernel.vmlinuz, &vmlinuz)?;
    // The package (10–55 MB) and the index: only the kernel is kept.
    std::fs::remove_dir_all(&apt).map_err(|e| format!("{}: {e}", apt.display()))?;
    Ok(vmlinuz)
}

/// Downloads `https://archive.ubuntu.com/ubuntu/<path>` into `dir` with apt's own
/// downloader, which refuses it unless its SHA-256 is `sha256`.
fn fetch_checked(path: &str, sha256: &str, dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = path.rsplit('/').next().unwrap_or(path);
    let deb = dir.join(name);
    let mut download = Command::new("/usr/lib/apt/apt-helper");
    download
        // The download lands in a directory that apt's sandbox user may not write.
        .args(["-o", "APT::Sandbox::User=root", "download-file"])
        .arg(format!("https://archive.ubuntu.com/ubuntu/{path}"))
        .arg(&deb)
        .arg(format!("SHA256:{sha256}"));
    status(&mut download)?;
    Ok(deb)
}

/// Downloads the package of `kernel` from Debian's `suite` with apt in a private
/// directory `apt`, its signatures checked against the host's keyring.
fn fetch_debian(kernel: &Kernel, suite: &str, apt: &Path) -> Result<PathBuf, String> {
    for sub in [
        "lists/partial",
        "cache/archives/partial",
        "etc/sources.list.d",
    ] {
        std::fs::create_dir_all(apt.join(sub)).map_err(|e| format!("{}: {e}", apt.display()))?;
    }
    let sources = apt.join("etc/sources.list");
    std::fs::write(
        &sources,
        format!("deb http://deb.debian.org/debian {suite} main\n"),
    )
    .map_err(|e| format!("{}: {e}", sources.display()))?;
    // apt with nothing of the host's but its keyring and configuration: its own source
    // list, index and cache, so that the host's apt state is not touched.
    let private = |command: &str| {
        let mut apt_get = Command::new(command);
        let dir = apt.display();
        for option in [
            format!("Dir::Etc::SourceList={dir}/etc/sources.list"),
            format!("Dir::Etc::SourceParts={dir}/etc/sources.list.d"),
            format!("Dir::State::Lists={dir}/lists"),
            format!("Dir::Cache={dir}/cache"),
            // Only the package indexes (not the host's DEP-11 or Contents files).
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false".to_owned(),
            // The download lands in a directory that apt's sandbox user may not write.
            "APT::Sandbox::User=root".to_owned(),
        ] {
            apt_get.arg("-o").arg(option);
        }
        apt_get.current_dir(apt);
        apt_get
    };
    let mut update = private("apt-get");
    update.args(["-q", "update"]);
    status(&mut update)?;
    let mut download = private("apt-get");
    download
        .args(["-q", "download"])
        .arg(format!("{}={}", kernel.package, kernel.version));
    status(&mut download)?;
    Ok(apt.join(format!(
        "{}_{}_amd64.deb",
        kernel.package,
        kernel.version.replace(':', "%3a")
    )))
}

/// Copies the file `member` of the package `deb` to `to` (through a temporary file, so
/// that an interrupted copy is never taken for the kernel).
fn extract(deb: &Path, member: &str, to: &Path) -> Result<(), String> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("dpkg-deb: {e}"))?;
    let stdout = dpkg.stdout.take().ok_or("dpkg-deb: no stdout")?;
    let mut archive = tar::Archive::new(stdout);
    let partial = to.with_extension("partial");
    let mut found = false;
    for entry in archive
        .entries()
        .map_err(|e| format!("{}: {e}", deb.display()))?
    {
        let mut entry = entry.map_err(|e| format!("{}: {e}", deb.display()))?;
        let path = entry.path().map_err(|e| e.to_string())?;
        if path.as_os_str() == member {
            let mut file = std::fs::File::create(&partial)
                .map_err(|e| format!("{}: {e}", partial.display()))?;
            std::io::copy(&mut entry, &mut file).map_err(|e| format!("{member}: {e}"))?;
            found = true;
            break;
        }
    }
    // Read to its end, so that dpkg-deb ends well and its status is the archive's.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink())
        .map_err(|e| format!("{}: {e}", deb.display()))?;
    let done = dpkg.wait().map_err(|e| format!("dpkg-deb: {e}"))?;
    if !done.success() {
        return Err(format!(
            "dpkg-deb --fsys-tarfile {} failed ({done})",
            deb.display()
        ));
    }
    if !found {
        return Err(format!("{} has no {member}", deb.display()));
    }
    std::fs::rename(&partial, to).map_err(|e| format!("{}: {e}", to.display()))
}

/// What the VM runs, built as CI builds it (the dev profile).
struct Tests {
    /// `agent/tests/capture_probes.rs`: the probes and the capture stage.
    capture_probes: PathBuf,
    /// `agent/tests/demo.rs`: the agent as a whole, the README's demo end to end.
    demo: PathBuf,
    /// The agent, which `demo` runs from the absolute path cargo built it at.
    logtap: PathBuf,
}

impl Tests {
    /// Each binary and where the initramfs holds it.
    fn files(&self) -> Vec<(String, PathBuf)> {
        let at_its_path = self
            .logtap
            .to_string_lossy()
            .trim_start_matches('/')
            .to_owned();
        vec![
            ("capture_probes".into(), self.capture_probes.clone()),
            ("demo".into(), self.demo.clone()),
            (at_its_path, self.logtap.clone()),
        ]
    }
}

/// Builds the test binaries (and the agent they run) and returns their paths.
fn build_tests(root: &Path) -> Result<Tests, String> {
    let mut cargo = crate::nested_cargo();
    cargo.current_dir(root).args([
        "test",
        "-p",
        "logtap",
        "--test",
        "capture_probes",
        "--test",
        "demo",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    eprintln!("xtask: {cargo:?}");
    let out = cargo
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("building the tests failed ({})", out.status));
    }
    let messages = String::from_utf8_lossy(&out.stdout);
    Ok(Tests {
        capture_probes: test_executable(&messages, "capture_probes")?,
        demo: test_executable(&messages, "demo")?,
        // The library target is named `logtap` too: it has no executable.
        logtap: test_executable(&messages, "logtap")?,
    })
}

/// The executable of the test target `name` in cargo's JSON messages.
fn test_executable(messages: &str, name: &str) -> Result<PathBuf, String> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("cargo named no executable for the test {name}"))
}

/// The VM's `/init`: mounts what the probes and tests read, runs the tests, prints
/// their status (the verdict) and powers off. `/bin/busybox --install` makes the
/// applets the tests run (`seq`, `head`, `cat`, `sleep`). With no test named, the
/// agent's test runs after the probes' (it needs the loopback up for the agent's
/// metrics endpoint).
fn init_script(expect_hooks: &str, tests: &[String]) -> String {
    let agent = match tests.is_empty() {
        true => format!(
            "ip link set lo up\nRUST_BACKTRACE=1 /demo --test-threads=1\necho \"{AGENT_STATUS_LINE}$?\"\n"
        ),
        false => String::new(),
    };
    let tests: Vec<String> = tests.iter().map(|t| shell_quote(t)).collect();
    format!(
        r#"#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# What udev would link: the tests write to /dev/stdout as nginx does.
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
echo "logtap-vm-test: kernel $(uname -r), $(nproc) CPUs, BTF: $(ls /sys/kernel/btf/vmlinux 2>&1), RLIMIT_MEMLOCK $(ulimit -l) KiB"
cd /tmp
RUST_BACKTRACE=1 LOGTAP_EXPECT_HOOKS={expect_hooks} /capture_probes {tests}
echo "{STATUS_LINE}$?"
{agent}poweroff -f
"#,
        tests = tests.join(" ")
    )
}

/// `s` as one word of `sh`, whatever it holds.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The initramfs: `/init`, busybox as `/bin/sh`, each binary of `binaries` (its name in
/// the image, its path here) and their libraries at the paths `ldd` names, with every
/// directory above them.
fn write_initramfs(path: &Path, binaries: &[(String, PathBuf)], init: &str) -> std::io::Result<()> {
    if !crate::oci::shared_libraries(Path::new(BUSYBOX))
        .map(|libs| libs.is_empty())
        .unwrap_or(false)
    {
        return Err(std::io::Error::other(format!(
            "{BUSYBOX} is missing or not static: apt-get install busybox-static"
        )));
    }
    let mut files: Vec<(String, PathBuf)> = vec![("bin/busybox".into(), BUSYBOX.into())];
    files.extend(binaries.iter().cloned());
    for (_, binary) in binaries {
        for lib in crate::oci::shared_libraries(binary)? {
            let name = lib.to_string_lossy().trim_start_matches('/').to_owned();
            if !files.iter().any(|(n, _)| *n == name) {
                files.push((name, lib));
            }
        }
    }
    let mut dirs: Vec<String> = ["proc", "sys", "dev", "tmp", "bin"]
        .map(String::from)
        .to_vec();
    for (name, _) in &files {
        let mut at = Path::new(name).parent();
        while let Some(dir) = at.filter(|d| !d.as_os_str().is_empty()) {
            dirs.push(dir.to_string_lossy().into_owned());
            at = dir.parent();
        }
    }
    // Parents before children.
    dirs.sort();
    dirs.dedup();

    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for dir in &dirs {
        out = cpio::NewcBuilder::new(dir)
            .mode(0o040755)
            .nlink(2)
            .write(out, 0)
            .finish()?;
    }
    let target = b"busybox";
    let mut link = cpio::NewcBuilder::new("bin/sh")
        .mode(0o120777)
        .write(out, target.len() as u32);
    link.write_all(target)?;
    out = link.finish()?;
    let mut entry = cpio::NewcBuilder::new("init")
        .mode(0o100755)
        .write(out, init.len() as u32);
    entry.write_all(init.as_bytes())?;
    out = entry.finish()?;
    for (name, source) in &files {
        let mut file = std::fs::File::open(source)?;
        let len = u32::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::other(format!("{} over 4 GiB", source.display())))?;
        let mut entry = cpio::NewcBuilder::new(name).mode(0o100755).write(out, len);
        std::io::copy(&mut file, &mut entry)?;
        out = entry.finish()?;
    }
    cpio::newc::trailer(out)?.flush()
}

/// Boots the VM and returns its console output, also copied to `console` and to
/// stderr line by line; kills it after `timeout`.
fn boot(
    vmlinuz: &Path,
    initramfs: &Path,
    console: &Path,
    accel: Accel,
    timeout: Duration,
) -> Result<String, String> {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(accel.qemu_args())
        .args(["-smp", "2", "-m", "2G"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        // `panic=-1` and `-no-reboot`: a VM whose init dies stops instead of booting again.
        .args(["-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    eprintln!("xtask: {qemu:?} (at most {} s)", timeout.as_secs());
    let mut child = qemu.spawn().map_err(|e| {
        format!("qemu-system-x86_64: {e} (Debian: apt-get install qemu-system-x86)")
    })?;
    let stdout = child.stdout.take().ok_or("qemu: no stdout")?;
    let mut file =
        std::fs::File::create(console).map_err(|e| format!("{}: {e}", console.display()))?;
    let copier = std::thread::spawn(move || {
        let mut log = String::new();
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        // Lines end in "\r\n" on a serial console; the bytes are kept as they came.
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            let _ = file.write_all(&line);
            let text = String::from_utf8_lossy(&line);
            eprint!("{text}");
            log.push_str(&text);
            line.clear();
        }
        log
    });
    let started = Instant::now();
    let timed_out = loop {
        match child.try_wait() {
            Ok(Some(_)) => break false,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break true;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => return Err(format!("qemu: {e}")),
        }
    };
    let log = copier.join().map_err(|_| "the console reader panicked")?;
    if timed_out {
        return Err(format!(
            "the VM did not finish within {} s (console: {})",
            timeout.as_secs(),
            console.display()
        ));
    }
    Ok(log)
}

/// The tests' verdict from the console: their status lines, which `/init` prints after
/// them (not lines the tests could print: they are the shell's `$?`); the agent's
/// only `with_agent` (no test named).
fn verdict(console: &str, with_agent: bool) -> Result<(), String> {
    let last = |prefix: &str| {
        console
            .lines()
            .rev()
            .find_map(|l| l.trim_end().strip_prefix(prefix))
    };
    let probes = last(STATUS_LINE);
    let agent = last(AGENT_STATUS_LINE);
    let summaries: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("test result:"))
        .map(str::trim_end)
        .collect();
    let summary = match summaries.is_empty() {
        true => "no test summary".to_owned(),
        false => summaries.join("; "),
    };
    match (probes, agent) {
        (None, _) => Err(format!(
            "the VM stopped before the probes' tests ended (no status line): {summary}"
        )),
        (Some(code), _) if code != "0" => Err(format!(
            "the probes' tests failed (exit status {code}): {summary}"
        )),
        (Some(_), None) if with_agent => Err(format!(
            "the VM stopped before the agent's test ended (no status line): {summary}"
        )),
        (Some(_), Some(code)) if code != "0" => Err(format!(
            "the agent's test failed (exit status {code}): {summary}"
        )),
        _ => {
            eprintln!("xtask: vm-test passed: {summary}");
            Ok(())
        }
    }
}

/// Runs `command`, failing on a non-zero exit.
fn status(command: &mut Command) -> Result<(), String> {
    let status = command.status().map_err(|e| format!("{command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed ({status})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_verdict_is_the_status_line_of_init() {
        let passed =
            "boot\r\ntest result: ok. 17 passed; 0 failed\r\nlogtap-vm-test: exit status 0\r\n";
        assert_eq!(verdict(passed, false), Ok(()));
        let failed =
            "test result: FAILED. 15 passed; 2 failed\r\nlogtap-vm-test: exit status 101\r\n";
        let e = verdict(failed, false).unwrap_err();
        assert!(e.contains("101") && e.contains("2 failed"), "{e}");
        // A kernel panic before the end: no status line, whatever was printed before.
        let died = "test result: ok. 17 passed; 0 failed\r\nKernel panic - not syncing\r\n";
        assert!(verdict(died, false).unwrap_err().contains("no status line"));
        // The agent's test after the probes': it must have ended, and well.
        assert!(
            verdict(passed, true)
                .unwrap_err()
                .contains("agent's test ended")
        );
        let both = format!(
            "{passed}test result: ok. 2 passed; 0 failed\r\nlogtap-vm-test: agent exit status 0\r\n"
        );
        assert_eq!(verdict(&both, true), Ok(()));
        let agent_failed = both.replace("agent exit status 0", "agent exit status 101");
        let e = verdict(&agent_failed, true).unwrap_err();
        assert!(e.contains("agent's test failed (exit status 101)"), "{e}");
        let probes_failed = both.replace("exit status 0\r\ntest", "exit status 101\r\ntest");
        let e = verdict(&probes_failed, true).unwrap_err();
        assert!(e.contains("probes' tests failed (exit status 101)"), "{e}");
    }

    #[test]
    fn arguments() {
        let args = |a: &[&str]| parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let o = args(&["--timeout", "60", "writev"]).unwrap();
        let names = |o: &Options| o.kernels.iter().map(|k| k.name).collect::<Vec<_>>();
        assert_eq!(
            (names(&o), o.timeout.as_secs()),
            (vec!["5.10", "5.11", "5.13"], 60)
        );
        assert_eq!(o.tests, ["writev"]);
        assert_eq!(names(&args(&["--kernel", "5.11"]).unwrap()), ["5.11"]);
        assert!(args(&["--kernel", "4.19"]).unwrap_err().contains("5.10"));
        assert!(args(&["--timeout"]).is_err());
        assert_eq!(args(&[]).unwrap().accel, Accel::Auto);
        assert_eq!(args(&["--accel", "tcg"]).unwrap().accel, Accel::Tcg);
        assert_eq!(Accel::Kvm.resolve(), Accel::Kvm, "forced");
        assert!(args(&["--accel", "hvf"]).is_err());
        assert!(args(&["--verbose"]).is_err());
    }

    #[test]
    fn the_init_script_quotes_test_names() {
        let init = init_script("compat", &["a b".into(), "it's".into()]);
        assert!(
            init.contains("LOGTAP_EXPECT_HOOKS=compat /capture_probes 'a b' 'it'\\''s'\n"),
            "{init}"
        );
        assert!(!init.contains("/demo"), "tests named: the probes' alone");
        let init = init_script("compat", &[]);
        assert!(
            init.contains(&format!(
                "/demo --test-threads=1\necho \"{AGENT_STATUS_LINE}$?\""
            )),
            "{init}"
        );
    }

    #[test]
    fn the_test_executable_is_found_in_cargo_s_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"logtap"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"capture_probes"},"executable":"/t/deps/capture_probes-1"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            test_executable(messages, "capture_probes"),
            Ok(PathBuf::from("/t/deps/capture_probes-1"))
        );
        assert!(test_executable(messages, "other").is_err());
    }

    /// The archive the kernel unpacks: every directory before what it holds, `/init`
    /// executable, the symlink's target as its contents.
    #[test]
    fn the_initramfs_holds_init_busybox_and_the_tests_with_their_directories() {
        if !Path::new(BUSYBOX).exists() {
            eprintln!("skipped: no {BUSYBOX} (apt-get install busybox-static)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("logtap-vm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("initramfs.cpio");
        // A small dynamic binary in the place of the tests.
        let tests = Path::new("/usr/bin/true");
        write_initramfs(
            &archive,
            &[("capture_probes".into(), tests.into())],
            "#!/bin/sh\n",
        )
        .unwrap();
        let mut reader = std::fs::File::open(&archive).unwrap();
        let mut entries = Vec::new();
        loop {
            let mut entry = cpio::NewcReader::new(reader).unwrap();
            if entry.entry().is_trailer() {
                break;
            }
            let (name, mode) = (entry.entry().name().to_owned(), entry.entry().mode());
            let mut contents = Vec::new();
            if name == "bin/sh" || name == "init" {
                entry.read_to_end(&mut contents).unwrap();
            }
            entries.push((name, mode, contents));
            reader = entry.finish().unwrap();
        }
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        for (i, name) in names.iter().enumerate() {
            if let Some(parent) = Path::new(name)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                let at = names.iter().position(|n| Path::new(n) == parent);
                assert!(at.is_some_and(|at| at < i), "{name} before its directory");
            }
        }
        let find = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(find("init").1, 0o100755);
        assert_eq!(find("init").2, b"#!/bin/sh\n");
        assert_eq!(find("bin/sh").2, b"busybox");
        assert_eq!(find("bin/busybox").1, 0o100755);
        assert!(names.contains(&"capture_probes"));
        // This binary is dynamic: its loader is in the archive at its own path.
        assert!(names.iter().any(|n| n.contains("ld-linux")), "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

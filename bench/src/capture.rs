//! The eBPF capture benchmark: `logtap-bench capture` (`cargo xtask bench capture`).
//!
//! Each scenario runs the same writer twice in the same run: once with nothing
//! loaded (the baseline) and once with the real probes loaded and a [`CaptureStage`]
//! running in this process. What the writer pays for being captured is the ratio of
//! its two wall times; what capture costs is this process's CPU while it ran.
//!
//! # What runs where
//!
//! - **writer**: this binary (`capture-writer`), in its own cgroup v2 directory below a
//!   bench-owned prefix, joined between fork and exec as runc does, so the kernel binds
//!   its stdout pipe at that first exec. It writes a deterministic stream of 100-byte
//!   lines ([`LineGen`]) to stdout: one `write(2)` per line, or the same bytes in 4 KiB
//!   writes; optionally held to a rate.
//! - **shim**: this binary (`capture-shim`), outside the watched prefix. It reads the
//!   writer's stdout pipe and writes it out as a CRI log file, as containerd-shim and
//!   containerd do (`<RFC3339Nano> stdout F <line>`; lines over 16 KiB as `P` records
//!   then `F`). The file is the repair source for holes in the captured stream.
//! - **capture** (this process): the probes, the stage on its own thread, a
//!   [`Pipeline`] and a real [`SinkWorker`] in front of a verifying sink, which checks
//!   that line offsets follow each other without a hole or an overlap and that the
//!   CRC-32 of everything handed on equals the CRC-32 of what the writer wrote.
//!
//! # What is measured
//!
//! - writer wall time and CPU time (`wait4`), with and without capture;
//! - capture MB/s: bytes handed on to the sink ÷ the time from the writer's start to
//!   the last of them reaching the sink (so it includes the stream's end: the cgroup's
//!   removal, the final look at the CRI log, the last package);
//! - capture CPU: this process's `getrusage` (all threads: stage, pipeline, sink
//!   worker with its CRC) from the writer's start until every byte reached the sink,
//!   and again until the stream ended (after the cgroup is gone the stage reads the
//!   CRI log to its end once, which catches holes at the very end of a stream); the
//!   per-run line also gives it until the stage handled the cgroup's removal (before
//!   that read, which in this bench covers the whole run: [`RemovalCpu`]). The
//!   writer's and the shim's CPU are theirs (child processes), not counted here. The
//!   kernel-side cost of the probes is paid inside the writer's syscalls, so it shows
//!   in the writer's times;
//! - peak RSS of this process over the scenario (`VmHWM`, reset before each run);
//! - the kernel's counters ([`KernelStats`]) and the stage's metrics (gaps, repaired,
//!   spilled, unrepairable bytes), read from an in-process Prometheus recorder.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use logtap::batch::Batch;
use logtap::capture::{
    CaptureStage, CapturedContainer, Claims, ContainerResolver, DropReason, EventFeed, HookMode,
    KernelStats, ProbeEvent, ProbeOptions, Probes,
};
use logtap::checkpoint::{Registry, SharedRegistry};
use logtap::config::{CaptureHooks, Config};
use logtap::frame::LineFlags;
use logtap::pipeline::Pipeline;
use logtap::route::Router;
use logtap::sink::worker::SinkWorker;
use logtap::sink::{Sink, SinkError};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::{Usage, mb_per_s, write_results};

#[path = "capture_scale.rs"]
mod scale;

/// Bytes of every line of the writer's stream, newline included.
const LINE: usize = 100;
/// The most content containerd puts into one CRI record; longer lines become `P`
/// records followed by an `F`.
const CRI_MAX_CONTENT: usize = 16 * 1024;
/// How long a stream may take to end after its writer exited before the run is
/// reported as stuck (the stage gives a hole up after `repair_wait`, 10 s).
const END_WAIT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug)]
pub struct CaptureArgs {
    /// Bytes written in each full-speed scenario, in MiB.
    #[arg(long, default_value_t = 256)]
    size_mb: u64,
    /// The rate of the rate-limited scenarios, in MB/s (10^6 bytes).
    #[arg(long, default_value_t = 100)]
    rate_mb: u64,
    /// How long the rate-limited scenarios write, in seconds.
    #[arg(long, default_value_t = 6)]
    rate_seconds: u64,
    /// The small ring of the last scenario, in KiB (a power of two).
    #[arg(long, default_value_t = 256)]
    small_ring_kib: u32,
    /// Runs per scenario, each with and without capture; the fastest writer of each
    /// kind is reported, loss and identity over all runs.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Where the CRI logs are written (default: a temporary directory in /dev/shm).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the results into this file, between `<!-- capture:begin -->` and
    /// `<!-- capture:end -->` (appended with the markers when it has none).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Only scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// The write hooks measured, each against the same baseline in the same run:
    /// `auto` (BPF trampolines where the kernel allows them), `tracepoint` and/or
    /// `compat` (the tracepoint program for kernels 5.8–5.14).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BenchHooks::Tracepoint, BenchHooks::Auto])]
    hooks: Vec<BenchHooks>,
    /// Also count each eBPF program's runs and run time (`kernel.bpf_stats_enabled`,
    /// which adds two clock reads per run: not for the timing tables).
    #[arg(long)]
    bpf_stats: bool,
    /// Run the scale scenario only (see `capture_scale`): `--scale-writers` writers
    /// at once, each held to `--scale-rate-kb` for `--rate-seconds`.
    #[arg(long)]
    scale: bool,
    /// Writers of the scale scenario, each in its own cgroup with its own CRI log.
    #[arg(long, default_value_t = 200)]
    scale_writers: usize,
    /// Each scale writer's rate, in kB/s (10^3 bytes).
    #[arg(long, default_value_t = 500)]
    scale_rate_kb: u64,
    /// The ring buffer of the scale scenario, in MiB.
    #[arg(long, default_value_t = 16)]
    scale_ring_mib: u32,
    /// `capture.max_buffered` of the scale scenario, in MiB (the agent's default
    /// when not given).
    #[arg(long)]
    scale_max_buffered_mib: Option<u32>,
    /// Count this process's live heap bytes during the scale scenario (a counting
    /// allocator: two atomic adds per allocation, so not for the CPU figures).
    #[arg(long)]
    heap_stats: bool,
    /// glibc's malloc settings for the run: what the agent sets when capture is on
    /// (`logtap::memory::tune_for_capture`), glibc's defaults, or one remedy alone.
    #[arg(long, value_enum, default_value_t = MallocSetting::Agent)]
    malloc: MallocSetting,
    /// With `--malloc agent` or `trim`: the trimmer's interval, in ms (the agent's,
    /// `logtap::memory::TRIM_INTERVAL`, when not given).
    #[arg(long)]
    trim_interval_ms: Option<u64>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MallocSetting {
    Agent,
    Glibc,
    Arenas,
    Trim,
}

impl MallocSetting {
    /// Applies the setting; before any thread starts (an arena, once made, stays).
    /// `trim_every`: the trimmer's interval instead of the agent's.
    fn apply(self, trim_every: Option<Duration>) {
        match (self, trim_every) {
            (MallocSetting::Agent | MallocSetting::Trim, Some(every)) => {
                logtap::memory::spawn_trimmer_every(every);
            }
            (MallocSetting::Agent, None) => logtap::memory::tune_for_capture(),
            (MallocSetting::Glibc, _) => {}
            (MallocSetting::Arenas, _) => {
                logtap::memory::limit_arenas();
            }
            (MallocSetting::Trim, None) => {
                logtap::memory::spawn_trimmer();
            }
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchHooks {
    Auto,
    Tracepoint,
    Compat,
}

impl BenchHooks {
    fn config(self) -> CaptureHooks {
        match self {
            BenchHooks::Auto => CaptureHooks::Auto,
            BenchHooks::Tracepoint => CaptureHooks::Tracepoint,
            BenchHooks::Compat => CaptureHooks::Compat,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            BenchHooks::Auto => "auto",
            BenchHooks::Tracepoint => "tracepoint",
            BenchHooks::Compat => "compat",
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// One write(2) per 100-byte line.
    Lines,
    /// The same stream in 4096-byte writes (lines cross writes).
    Blocks,
}

#[derive(clap::Args, Debug)]
pub struct WriterArgs {
    #[arg(long, value_enum)]
    pattern: Pattern,
    /// Stream bytes to write (a multiple of 100).
    #[arg(long)]
    bytes: u64,
    /// Bytes per second; 0: as fast as the pipe takes them.
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

#[derive(clap::Args, Debug)]
pub struct ShimArgs {
    /// The CRI log file to write.
    #[arg(long)]
    log: PathBuf,
}

/// The writer's stream: 100-byte lines `<16-digit line number> <82 letters>\n`, the
/// letters a window of the alphabet that shifts by one per line. Rendering a line is an
/// in-place increment and one copy, so the writer spends its time in `write(2)`.
struct LineGen {
    line: [u8; LINE],
    n: u64,
}

const LETTERS: &[u8; 26 * 5] =
    b"abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz";

impl LineGen {
    fn new() -> LineGen {
        let mut line = [b'0'; LINE];
        line[16] = b' ';
        line[LINE - 1] = b'\n';
        let mut g = LineGen { line, n: 0 };
        g.fill_letters();
        g
    }

    fn fill_letters(&mut self) {
        let shift = (self.n % 26) as usize;
        self.line[17..LINE - 1].copy_from_slice(&LETTERS[shift..shift + LINE - 18]);
    }

    fn line(&self) -> &[u8; LINE] {
        &self.line
    }

    fn advance(&mut self) {
        self.n += 1;
        for d in self.line[..16].iter_mut().rev() {
            if *d == b'9' {
                *d = b'0';
            } else {
                *d += 1;
                break;
            }
        }
        self.fill_letters();
    }
}

/// CRC-32 of the first `bytes` of the writer's stream: what the sink must have seen.
fn stream_crc(bytes: u64) -> u32 {
    let mut lines = LineGen::new();
    let mut crc = crc32fast::Hasher::new();
    let mut block = Vec::with_capacity(1 << 20);
    let mut left = bytes;
    while left > 0 {
        block.clear();
        while block.len() + LINE <= block.capacity() && left > 0 {
            let take = left.min(LINE as u64) as usize;
            block.extend_from_slice(&lines.line()[..take]);
            lines.advance();
            left -= take as u64;
        }
        crc.update(&block);
    }
    crc.finalize()
}

fn write_all(fd: i32, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: a valid buffer of the given length.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Holds a writer to `rate` bytes per second (0: no limit).
struct Pace {
    start: Instant,
    rate: u64,
}

impl Pace {
    fn wait(&self, written: u64) {
        if self.rate == 0 {
            return;
        }
        let due = self.start + Duration::from_secs_f64(written as f64 / self.rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

/// The writer process: `bytes` of the stream to stdout.
pub fn writer(args: &WriterArgs) -> anyhow::Result<()> {
    if !args.bytes.is_multiple_of(LINE as u64) {
        bail!("--bytes must be a multiple of {LINE}");
    }
    let pace = Pace {
        start: Instant::now(),
        rate: args.rate,
    };
    let mut lines = LineGen::new();
    match args.pattern {
        Pattern::Lines => {
            let count = args.bytes / LINE as u64;
            for i in 0..count {
                // Every 64 KiB: often enough for a smooth rate, rare enough to be free.
                if i.is_multiple_of(655) {
                    pace.wait(i * LINE as u64);
                }
                write_all(1, lines.line())?;
                lines.advance();
            }
        }
        Pattern::Blocks => {
            let mut block = [0u8; 4096];
            let mut in_line = 0;
            let mut written = 0u64;
            while written < args.bytes {
                if written % (64 * 1024) < 4096 {
                    pace.wait(written);
                }
                let len = (args.bytes - written).min(4096) as usize;
                let mut filled = 0;
                while filled < len {
                    let take = (LINE - in_line).min(len - filled);
                    block[filled..filled + take]
                        .copy_from_slice(&lines.line()[in_line..in_line + take]);
                    filled += take;
                    in_line += take;
                    if in_line == LINE {
                        in_line = 0;
                        lines.advance();
                    }
                }
                write_all(1, &block[..len])?;
                written += len as u64;
            }
        }
    }
    Ok(())
}

/// The shim process: stdin (the writer's stdout pipe) into a CRI log file, one
/// `write(2)` per pipe read.
pub fn shim(args: &ShimArgs) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .with_context(|| format!("opening {}", args.log.display()))?;
    let mut buf = vec![0u8; 64 * 1024];
    // The start of a line whose end has not been read yet.
    let mut carry: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::with_capacity(128 * 1024);
    loop {
        // SAFETY: a valid buffer of the given length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("reading the writer's pipe");
        }
        if n == 0 {
            break;
        }
        let ts = rfc3339_nano(SystemTime::now());
        let mut data = &buf[..n as usize];
        while let Some(end) = memchr::memchr(b'\n', data) {
            if carry.is_empty() {
                cri_line(&mut out, &ts, &data[..end], true);
            } else {
                carry.extend_from_slice(&data[..end]);
                cri_line(&mut out, &ts, &carry, true);
                carry.clear();
            }
            data = &data[end + 1..];
        }
        carry.extend_from_slice(data);
        // containerd's line buffer is 16 KiB: what fills it goes out as a partial.
        while carry.len() >= CRI_MAX_CONTENT {
            cri_line(&mut out, &ts, &carry[..CRI_MAX_CONTENT], false);
            carry.drain(..CRI_MAX_CONTENT);
        }
        file.write_all(&out).context("writing the CRI log")?;
        out.clear();
    }
    if !carry.is_empty() {
        let ts = rfc3339_nano(SystemTime::now());
        cri_line(&mut out, &ts, &carry, false);
        file.write_all(&out).context("writing the CRI log")?;
    }
    Ok(())
}

/// One line of content as CRI records: `P` records of 16 KiB, then `F` (or `P` when
/// the line has not ended).
fn cri_line(out: &mut Vec<u8>, ts: &[u8], mut content: &[u8], ended: bool) {
    loop {
        let (this, last) = if content.len() > CRI_MAX_CONTENT {
            (&content[..CRI_MAX_CONTENT], false)
        } else {
            (content, true)
        };
        out.extend_from_slice(ts);
        out.extend_from_slice(if last && ended {
            b" stdout F "
        } else {
            b" stdout P "
        });
        out.extend_from_slice(this);
        out.push(b'\n');
        if last {
            return;
        }
        content = &content[CRI_MAX_CONTENT..];
    }
}

/// `2026-11-21T10:45:31.210111144Z`.
fn rfc3339_nano(t: SystemTime) -> Vec<u8> {
    humantime::format_rfc3339_nanos(t).to_string().into_bytes()
}

/// The bench's cgroup v2 directory, the probes' prefix; each writer gets a child.
struct Scene {
    parent: PathBuf,
    prefix: String,
    /// A sibling of `parent`, outside the prefix: writers that are no container.
    outside: PathBuf,
}

impl Scene {
    fn new() -> anyhow::Result<Scene> {
        let root = Probes::cgroup2_root().context("finding the cgroup v2 mount")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("this process is not in the cgroup v2 hierarchy")?
            .trim_end_matches('/')
            .to_owned();
        let prefix = format!("{own}/logtap-bench-{}", std::process::id());
        let parent = root.join(prefix.trim_start_matches('/'));
        std::fs::create_dir(&parent).with_context(|| format!("mkdir {}", parent.display()))?;
        let outside = root.join(format!("{prefix}-outside").trim_start_matches('/'));
        std::fs::create_dir(&outside).with_context(|| format!("mkdir {}", outside.display()))?;
        Ok(Scene {
            parent,
            prefix,
            outside,
        })
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for dir in [&self.parent, &self.outside] {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

struct Scenario {
    name: String,
    pattern: Pattern,
    bytes: u64,
    rate: u64,
    ring_bytes: u32,
    /// The writer is in a cgroup outside the prefix: what capture costs the rest of the
    /// node (nothing is captured).
    outside: bool,
}

fn scenarios(args: &CaptureArgs) -> Vec<Scenario> {
    let full = (args.size_mb << 20) / LINE as u64 * LINE as u64;
    let rated = args.rate_mb * 1_000_000 * args.rate_seconds / LINE as u64 * LINE as u64;
    let rate = args.rate_mb * 1_000_000;
    let small = args.small_ring_kib * 1024;
    vec![
        Scenario {
            name: "100 B lines, full speed".into(),
            pattern: Pattern::Lines,
            bytes: full,
            rate: 0,
            ring_bytes: 16 << 20,
            outside: false,
        },
        Scenario {
            name: "100 B lines outside containers, full speed".into(),
            pattern: Pattern::Lines,
            bytes: full,
            rate: 0,
            ring_bytes: 16 << 20,
            outside: true,
        },
        Scenario {
            name: "4 KiB writes, full speed".into(),
            pattern: Pattern::Blocks,
            bytes: full,
            rate: 0,
            ring_bytes: 16 << 20,
            outside: false,
        },
        Scenario {
            name: format!(
                "100 B lines at {} MB/s for {} s, 16 MiB ring",
                args.rate_mb, args.rate_seconds
            ),
            pattern: Pattern::Lines,
            bytes: rated,
            rate,
            ring_bytes: 16 << 20,
            outside: false,
        },
        Scenario {
            name: format!(
                "100 B lines at {} MB/s for {} s, {} KiB ring",
                args.rate_mb, args.rate_seconds, args.small_ring_kib
            ),
            pattern: Pattern::Lines,
            bytes: rated,
            rate,
            ring_bytes: small,
            outside: false,
        },
        Scenario {
            name: format!(
                "4 KiB writes at {} MB/s for {} s, 16 MiB ring",
                args.rate_mb, args.rate_seconds
            ),
            pattern: Pattern::Blocks,
            bytes: rated,
            rate,
            ring_bytes: 16 << 20,
            outside: false,
        },
        Scenario {
            name: format!(
                "4 KiB writes at {} MB/s for {} s, {} KiB ring",
                args.rate_mb, args.rate_seconds, args.small_ring_kib
            ),
            pattern: Pattern::Blocks,
            bytes: rated,
            rate,
            ring_bytes: small,
            outside: false,
        },
    ]
}

/// One writer run: its usage and when it started.
struct WriterRun {
    usage: Usage,
    started: Instant,
}

/// Runs a writer (in the cgroup `<scene>/<name>`) and its shim (writing `log`) to
/// their ends, then removes the cgroup.
fn run_writer(
    scene: &Scene,
    name: &str,
    log: &Path,
    scenario: &Scenario,
) -> anyhow::Result<WriterRun> {
    let exe = std::env::current_exe()?;
    std::fs::create_dir_all(log.parent().context("log path has no directory")?)?;
    let cgroup = if scenario.outside {
        scene.outside.join(name)
    } else {
        scene.parent.join(name)
    };
    std::fs::create_dir(&cgroup).with_context(|| format!("mkdir {}", cgroup.display()))?;
    let mut shim = Command::new(&exe)
        .arg("capture-shim")
        .arg("--log")
        .arg(log)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("spawning the shim")?;
    let pipe = shim.stdin.take().context("the shim's stdin")?;
    let mut cmd = Command::new(&exe);
    cmd.arg("capture-writer")
        .arg("--pattern")
        .arg(match scenario.pattern {
            Pattern::Lines => "lines",
            Pattern::Blocks => "blocks",
        })
        .arg("--bytes")
        .arg(scenario.bytes.to_string())
        .arg("--rate")
        .arg(scenario.rate.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(pipe))
        // Not a pipe: the kernel binds no stderr stream.
        .stderr(Stdio::null());
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())?;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
    let started = Instant::now();
    let writer = cmd.spawn().context("spawning the writer")?;
    // The shim sees the end of its input only when no copy of the pipe is left here.
    drop(cmd);
    let pid = writer.id() as libc::pid_t;
    // A blocking `wait4`: sampling the writer's RSS every 2 ms (as the other benches
    // sample their child's) is harness work that the capture CPU figure would count as
    // capture's, and the writer's RSS is not reported.
    let usage = wait_blocking(pid, started)?;
    let status = shim.wait()?;
    if !status.success() {
        bail!("the shim failed ({status})");
    }
    std::fs::remove_dir(&cgroup).with_context(|| format!("rmdir {}", cgroup.display()))?;
    Ok(WriterRun { usage, started })
}

/// Waits for the writer `pid` to exit, in one blocking `wait4`.
fn wait_blocking(pid: libc::pid_t, started: Instant) -> anyhow::Result<Usage> {
    let mut status = 0;
    // SAFETY: rusage is plain old data written by the kernel; zeroed is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our child; status and ru are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            bail!("wait4: {e}");
        }
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("the writer failed (wait status {status})");
    }
    Ok(Usage {
        wall: started.elapsed(),
        cpu: crate::tv(ru.ru_utime) + crate::tv(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss as u64,
    })
}

/// The probes as the stage's feed, keeping their kernel counters when the stage drops
/// them (the stage owns its feed and does not hand it back).
struct MeasuredProbes {
    probes: Probes,
    last: Arc<Mutex<Option<KernelStats>>>,
    programs: Arc<Mutex<ProgramRuns>>,
}

/// Per eBPF program: name, runs, time in it (with `--bpf-stats`).
type ProgramRuns = Vec<(String, u64, Duration)>;

impl EventFeed for MeasuredProbes {
    fn poll(
        &mut self,
        timeout: Duration,
        on_event: &mut dyn FnMut(ProbeEvent<'_>),
    ) -> std::io::Result<usize> {
        EventFeed::poll(&mut self.probes, timeout, on_event)
    }

    fn backlog(&self) -> usize {
        EventFeed::backlog(&self.probes)
    }

    fn forget(&mut self, cgroup_id: u64) -> Vec<(logtap::frame::Stream, u64)> {
        EventFeed::forget(&mut self.probes, cgroup_id)
    }

    fn decline(&mut self, cgroup_id: u64, stream: logtap::frame::Stream) {
        EventFeed::decline(&mut self.probes, cgroup_id, stream);
    }

    fn watch_existing(&mut self, cgroup_id: u64, pid: u32) -> std::io::Result<()> {
        EventFeed::watch_existing(&mut self.probes, cgroup_id, pid)
    }
}

/// A feed that notes this process's CPU when the stage has handled its cgroup's
/// removal (`forget`): every record of the stream was read from the ring and handed
/// to the pipeline by then, and the end-of-stream read of the CRI log, when the stream
/// falls short of the kernel's final offset, has not begun (the stage does it on a
/// later tick).
struct RemovalCpu<F> {
    inner: F,
    at: Arc<Mutex<Option<Duration>>>,
}

impl<F: EventFeed> EventFeed for RemovalCpu<F> {
    fn poll(
        &mut self,
        timeout: Duration,
        on_event: &mut dyn FnMut(ProbeEvent<'_>),
    ) -> std::io::Result<usize> {
        self.inner.poll(timeout, on_event)
    }

    fn backlog(&self) -> usize {
        self.inner.backlog()
    }

    fn forget(&mut self, cgroup_id: u64) -> Vec<(logtap::frame::Stream, u64)> {
        self.at
            .lock()
            .expect("not poisoned")
            .get_or_insert_with(crate::self_cpu);
        self.inner.forget(cgroup_id)
    }

    fn decline(&mut self, cgroup_id: u64, stream: logtap::frame::Stream) {
        self.inner.decline(cgroup_id, stream);
    }

    fn watch_existing(&mut self, cgroup_id: u64, pid: u32) -> std::io::Result<()> {
        self.inner.watch_existing(cgroup_id, pid)
    }
}

impl Drop for MeasuredProbes {
    fn drop(&mut self) {
        if let Ok(stats) = self.probes.kernel_stats() {
            *self.last.lock().expect("not poisoned") = Some(stats);
        }
        *self.programs.lock().expect("not poisoned") = self.probes.program_runs();
    }
}

/// Writers' cgroups (by their last path component) and their CRI logs.
struct TableResolver(HashMap<Vec<u8>, PathBuf>);

impl ContainerResolver for TableResolver {
    fn resolve(&mut self, cgroup_path: &[u8]) -> Option<CapturedContainer> {
        let name = cgroup_path.rsplit(|&b| b == b'/').next()?;
        let log = self.0.get(name)?;
        Some(CapturedContainer {
            id: String::from_utf8_lossy(name).into_owned(),
            log_path: Some(log.clone()),
            selected: true,
        })
    }

    fn is_running(&mut self, _log_path: &Path) -> Option<bool> {
        None
    }
}

/// What the verifying sink saw.
#[derive(Default)]
struct Verify {
    /// Stream offset just past the last line seen.
    next_offset: u64,
    /// Stream bytes handed on: bodies plus their newlines.
    delivered: u64,
    /// Bytes skipped between one line and the next (a hole given up).
    holes: u64,
    /// Bytes handed on twice (a line starting before the previous one ended).
    overlaps: u64,
    crc: crc32fast::Hasher,
    /// When `delivered` reached `expected`, or the last package came.
    expected: u64,
    done_at: Option<Instant>,
    last_at: Option<Instant>,
}

impl Verify {
    /// Checks a package's lines against what came before.
    fn take(&mut self, batch: &Batch) {
        for line in &batch.lines {
            if line.offset > self.next_offset {
                self.holes += line.offset - self.next_offset;
            } else if line.offset < self.next_offset {
                self.overlaps += self.next_offset - line.offset;
            }
            self.crc.update(batch.body(line));
            let mut len = line.body.len() as u64;
            if !line.flags.contains(LineFlags::UNTERMINATED) {
                self.crc.update(b"\n");
                len += 1;
            }
            self.next_offset = line.offset + len;
            self.delivered += len;
        }
        let now = Instant::now();
        self.last_at = Some(now);
        if self.done_at.is_none() && self.delivered >= self.expected {
            self.done_at = Some(now);
        }
    }
}

struct VerifySink(Arc<Mutex<Verify>>);

impl Sink for VerifySink {
    fn kind(&self) -> &'static str {
        "null"
    }

    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.0.lock().expect("not poisoned").take(batch);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// The stage's counters (deltas over one run).
#[derive(Clone, Copy, Debug, Default)]
struct StageCounters {
    gaps: f64,
    repaired: f64,
    spilled: f64,
    unrepairable: f64,
}

impl StageCounters {
    fn read(metrics: &PrometheusHandle) -> StageCounters {
        let text = metrics.render();
        StageCounters {
            gaps: metric_sum(&text, "logtap_capture_gaps_total"),
            repaired: metric_sum(&text, "logtap_capture_repaired_bytes_total"),
            spilled: metric_sum(&text, "logtap_capture_spilled_bytes_total"),
            unrepairable: metric_sum(&text, "logtap_capture_unrepairable_bytes_total"),
        }
    }

    fn since(self, before: StageCounters) -> StageCounters {
        StageCounters {
            gaps: self.gaps - before.gaps,
            repaired: self.repaired - before.repaired,
            spilled: self.spilled - before.spilled,
            unrepairable: self.unrepairable - before.unrepairable,
        }
    }
}

/// The sum of every series of `name` in a Prometheus text exposition.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            rest.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// One run with capture.
struct CaptureRun {
    writer: Usage,
    /// From the writer's start to the last byte at the sink.
    wall: Duration,
    /// From the writer's end to the last byte at the sink.
    tail: Duration,
    /// This process's CPU until every byte reached the sink.
    streaming_cpu: Duration,
    /// ... until the stage had handled the cgroup's removal (see [`RemovalCpu`]):
    /// the stream without the end-of-stream read of its CRI log, which in this bench
    /// is the whole run.
    removal_cpu: Option<Duration>,
    /// ... until the stream ended: after the cgroup is gone, the stage reads the CRI
    /// log to its end once to catch holes at the very end of the stream.
    cpu: Duration,
    peak_rss_kib: u64,
    kernel: KernelStats,
    stage: StageCounters,
    delivered: u64,
    /// Written − handed on.
    loss: i64,
    identical: bool,
    /// Whether the stream ended (was closed by the stage) before `END_WAIT`.
    ended: bool,
    hook_mode: HookMode,
    programs: ProgramRuns,
}

/// One run of a writer outside the prefix while the probes are loaded.
struct OutsideRun {
    writer: Usage,
    hook_mode: HookMode,
    kernel: KernelStats,
    programs: ProgramRuns,
}

/// The probes as the agent loads them for `config`'s capture section, on `hooks`.
fn load_probes(config: &Config, hooks: BenchHooks) -> anyhow::Result<Probes> {
    let options = config.capture.as_ref().context("capture is enabled")?;
    Probes::load(&ProbeOptions {
        hooks: hooks.config(),
        ring_bytes: options.ring_bytes,
        cgroup_prefix: options.cgroup_prefix.clone(),
        max_records_per_write: options.max_records_per_write,
        ..ProbeOptions::default()
    })
    .context("loading the probes (built? `cargo xtask build-ebpf`)")
}

/// Runs the scenario's writer outside the probes' prefix with the probes loaded (no
/// stage: nothing is captured, which the kernel's counters confirm).
fn run_outside(
    scene: &Scene,
    dir: &Path,
    name: &str,
    scenario: &Scenario,
    hooks: BenchHooks,
) -> anyhow::Result<OutsideRun> {
    let mut probes = Probes::load(&ProbeOptions {
        hooks: hooks.config(),
        ring_bytes: scenario.ring_bytes,
        cgroup_prefix: scene.prefix.clone(),
        ..ProbeOptions::default()
    })
    .context("loading the probes (built? `cargo xtask build-ebpf`)")?;
    let log = dir.join(format!("outside/{name}.log"));
    let writer = run_writer(scene, name, &log, scenario)?.usage;
    let _ = std::fs::remove_file(&log);
    probes.poll(Duration::ZERO, &mut |_| {})?;
    Ok(OutsideRun {
        writer,
        hook_mode: probes.hook_mode(),
        kernel: probes.kernel_stats()?,
        programs: probes.program_runs(),
    })
}

/// Resets this process's peak RSS to its current RSS (Linux 4.0+).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The capture stage of one bench run and the sink worker behind it, each on its
/// thread: the stage reads `feed`, its pipeline (the config's sources) ships into
/// `sink`.
struct RunningCapture {
    stop: Arc<AtomicBool>,
    stage: std::thread::JoinHandle<std::io::Result<()>>,
    worker: std::thread::JoinHandle<Result<(), SinkError>>,
}

impl RunningCapture {
    /// `prepare` sees the stage before its thread starts (the agent's own settings a
    /// scenario needs).
    fn start<F: EventFeed + 'static>(
        config: &Config,
        feed: F,
        resolver: TableResolver,
        registry: &SharedRegistry,
        sink: Box<dyn Sink>,
        prepare: impl FnOnce(&mut CaptureStage<F, TableResolver>),
    ) -> anyhow::Result<RunningCapture> {
        let options = config.capture.clone().context("capture is enabled")?;
        let (tx, rx) = crossbeam_channel::bounded(8);
        let worker = SinkWorker {
            sink,
            queue: rx,
            registry: registry.clone(),
            flush_interval: Duration::from_millis(200),
            shutdown: Arc::new(AtomicBool::new(false)),
        }
        .spawn("verify")?;
        let queues = BTreeMap::from([(Arc::<str>::from("out"), tx)]);
        let pipeline = Pipeline::new(
            config,
            Router::new(&config.sources, &queues),
            registry.clone(),
        );
        // The pipeline holds the only sender: the worker ends once the stage is done.
        drop(queues);
        let claims = Arc::new(Claims::new(options.source, options.claim_wait));
        let mut stage =
            CaptureStage::new(options, feed, resolver, pipeline, registry.clone(), claims);
        prepare(&mut stage);
        let stop = Arc::new(AtomicBool::new(false));
        let stage_stop = stop.clone();
        let stage = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || stage.run(&stage_stop))?;
        Ok(RunningCapture {
            stop,
            stage,
            worker,
        })
    }

    /// Stops the stage (its pipeline ships what it holds) and waits for the worker to
    /// take the last package.
    fn finish(self) -> anyhow::Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.stage
            .join()
            .map_err(|_| anyhow::anyhow!("the capture thread panicked"))?
            .context("the capture stage")?;
        self.worker
            .join()
            .map_err(|_| anyhow::anyhow!("the sink worker panicked"))?
            .context("the sink worker")?;
        Ok(())
    }
}

fn run_with_capture(
    scene: &Scene,
    dir: &Path,
    name: &str,
    scenario: &Scenario,
    expected_crc: u32,
    metrics: &PrometheusHandle,
    hooks: BenchHooks,
) -> anyhow::Result<CaptureRun> {
    let log = dir.join(format!("pods/bench_{name}_uid/writer/0.log"));
    let data_dir = dir.join(format!("data-{name}"));
    let config = Config::parse(
        &format!(
            "data_dir: {}\nmetrics: {{listen: \"\"}}\nsources:\n  - name: pods\n    include: [\"{}/pods/**/*.log\"]\n    format: cri\n    sink: out\n\
             sinks:\n  out: {{type: blackhole}}\n\
             capture: {{enabled: true, source: pods, cgroup_prefix: \"{}\", ring_size: \"{}KiB\"}}\n",
            data_dir.display(),
            dir.display(),
            scene.prefix,
            scenario.ring_bytes / 1024,
        ),
        "capture bench",
    )
    .context("the capture bench's config")?;
    let probes = load_probes(&config, hooks)?;
    let hook_mode = probes.hook_mode();
    let kernel = Arc::new(Mutex::new(None));
    let programs = Arc::new(Mutex::new(Vec::new()));
    let removal_cpu = Arc::new(Mutex::new(None));
    let feed = RemovalCpu {
        inner: MeasuredProbes {
            probes,
            last: kernel.clone(),
            programs: programs.clone(),
        },
        at: removal_cpu.clone(),
    };
    let registry: SharedRegistry = Arc::new(Registry::open(&data_dir.join("checkpoints"))?);
    let verify = Arc::new(Mutex::new(Verify {
        expected: scenario.bytes,
        ..Verify::default()
    }));
    let resolver = TableResolver(HashMap::from([(name.as_bytes().to_vec(), log.clone())]));
    let running = RunningCapture::start(
        &config,
        feed,
        resolver,
        &registry,
        Box::new(VerifySink(verify.clone())),
        |_| {},
    )?;

    let counters_before = StageCounters::read(metrics);
    reset_peak_rss();
    let cpu_before = crate::self_cpu();
    let writer = run_writer(scene, name, &log, scenario)?;
    let writer_end = writer.started + writer.usage.wall;
    // The stream ends once its cgroup is gone and the CRI log has nothing more.
    let deadline = Instant::now() + END_WAIT;
    let mut streaming_cpu = None;
    let ended = loop {
        if streaming_cpu.is_none() && verify.lock().expect("not poisoned").done_at.is_some() {
            streaming_cpu = Some(crate::self_cpu() - cpu_before);
        }
        let streams = registry.snapshot();
        if !streams.is_empty() && streams.iter().all(|s| s.closed) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    running.finish()?;
    let cpu = crate::self_cpu() - cpu_before;
    let streaming_cpu = streaming_cpu.unwrap_or(cpu);
    let removal_cpu = removal_cpu
        .lock()
        .expect("not poisoned")
        .map(|at| at.saturating_sub(cpu_before));
    let peak_rss_kib = peak_rss_kib();
    let stage_counters = StageCounters::read(metrics).since(counters_before);
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_dir_all(&data_dir);

    let v = verify.lock().expect("not poisoned");
    let last = v.done_at.or(v.last_at).unwrap_or(writer_end);
    let identical = v.delivered == scenario.bytes
        && v.holes == 0
        && v.overlaps == 0
        && v.crc.clone().finalize() == expected_crc;
    let kernel = kernel.lock().expect("not poisoned").unwrap_or_default();
    Ok(CaptureRun {
        writer: writer.usage,
        wall: last.saturating_duration_since(writer.started),
        tail: last.saturating_duration_since(writer_end),
        streaming_cpu,
        removal_cpu,
        cpu,
        peak_rss_kib,
        kernel,
        stage: stage_counters,
        delivered: v.delivered,
        loss: scenario.bytes as i64 - v.delivered as i64,
        identical,
        ended,
        hook_mode,
        programs: std::mem::take(&mut *programs.lock().expect("not poisoned")),
    })
}

struct Row {
    name: String,
    bytes: u64,
    ring_bytes: u32,
    base: Usage,
    capture: CaptureRun,
    /// Over all runs.
    max_loss: i64,
    all_identical: bool,
    all_ended: bool,
}

impl Row {
    fn slowdown(&self) -> f64 {
        self.capture.writer.wall.as_secs_f64() / self.base.wall.as_secs_f64().max(1e-9)
    }

    fn cpu_slowdown(&self) -> f64 {
        self.capture.writer.cpu.as_secs_f64() / self.base.cpu.as_secs_f64().max(1e-9)
    }

    fn capture_mb_s(&self) -> f64 {
        mb_per_s(self.capture.delivered, self.capture.wall)
    }

    fn cpu_s_per_gb(&self) -> f64 {
        self.capture.streaming_cpu.as_secs_f64() / (self.bytes as f64 / 1e9)
    }

    fn removal_cpu_s_per_gb(&self) -> Option<f64> {
        let cpu = self.capture.removal_cpu?;
        Some(cpu.as_secs_f64() / (self.bytes as f64 / 1e9))
    }

    fn end_cpu_s_per_gb(&self) -> f64 {
        self.capture.cpu.as_secs_f64() / (self.bytes as f64 / 1e9)
    }

    fn ring_dropped(&self) -> u64 {
        self.capture.kernel.dropped_bytes[DropReason::RingFull as usize]
    }

    /// Every reason but `ring_full`: too large, fault, concurrent (compat hooks).
    fn other_dropped(&self) -> u64 {
        let all: u64 = self.capture.kernel.dropped_bytes.iter().sum();
        all - self.ring_dropped()
    }

    fn text(&self) -> String {
        let k = &self.capture.kernel;
        let s = &self.capture.stage;
        format!(
            "{}: writer {:.2} s → {:.2} s with capture (×{:.3}; CPU ×{:.3}); capture {:.0} MB/s, done {:.0} ms after the writer, {:.2} CPU s/GB ({} until the removal was handled, {:.2} with the stream's end), {} MiB peak RSS; \
             kernel {} records, ring drops {} B, other drops {} B; gaps {:.0}, repaired {:.0} B, spilled {:.0} B, unrepairable {:.0} B; loss {} B{}{}",
            self.name,
            self.base.wall.as_secs_f64(),
            self.capture.writer.wall.as_secs_f64(),
            self.slowdown(),
            self.cpu_slowdown(),
            self.capture_mb_s(),
            self.capture.tail.as_secs_f64() * 1e3,
            self.cpu_s_per_gb(),
            self.removal_cpu_s_per_gb()
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}")),
            self.end_cpu_s_per_gb(),
            self.capture.peak_rss_kib / 1024,
            k.records,
            self.ring_dropped(),
            self.other_dropped(),
            s.gaps,
            s.repaired,
            s.spilled,
            s.unrepairable,
            self.max_loss,
            if self.all_identical {
                ", byte-identical"
            } else {
                ", NOT byte-identical"
            },
            if self.all_ended {
                ""
            } else {
                ", stream did not end"
            },
        ) + &programs_text(&self.capture.programs)
    }
}

/// `name: N runs, M ns/run` for every program that ran.
fn programs_text(programs: &ProgramRuns) -> String {
    let mut s = String::new();
    for (name, runs, time) in programs.iter().filter(|p| p.1 > 0) {
        let _ = write!(
            s,
            "; {name}: {runs} runs, {:.0} ns/run",
            time.as_nanos() as f64 / *runs as f64
        );
    }
    s
}

/// The hooks asked for and the hooks the kernel gave.
fn hooks_label(asked: BenchHooks, got: HookMode) -> String {
    match (asked, got) {
        (BenchHooks::Auto, HookMode::Tracepoint) => "auto → tracepoint".to_owned(),
        (BenchHooks::Auto, HookMode::Compat) => "auto → compat".to_owned(),
        _ => got.as_str().to_owned(),
    }
}

struct OutsideRow {
    name: String,
    base: Usage,
    probes: OutsideRun,
}

impl OutsideRow {
    fn slowdown(&self) -> f64 {
        self.probes.writer.wall.as_secs_f64() / self.base.wall.as_secs_f64().max(1e-9)
    }

    fn cpu_slowdown(&self) -> f64 {
        self.probes.writer.cpu.as_secs_f64() / self.base.cpu.as_secs_f64().max(1e-9)
    }

    fn text(&self) -> String {
        format!(
            "{}: writer {:.2} s → {:.2} s with the probes loaded (×{:.3}; CPU ×{:.3}); kernel records {}{}",
            self.name,
            self.base.wall.as_secs_f64(),
            self.probes.writer.wall.as_secs_f64(),
            self.slowdown(),
            self.cpu_slowdown(),
            self.probes.kernel.records,
            programs_text(&self.probes.programs),
        )
    }
}

fn outside_markdown(rows: &[OutsideRow], runs: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| scenario (best of {runs}) | writer s, no probes | writer s, probes loaded | writer slowdown (wall) | writer CPU ratio | kernel records |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {:.3} | {:.3} | {} |",
            r.name,
            r.base.wall.as_secs_f64(),
            r.probes.writer.wall.as_secs_f64(),
            r.slowdown(),
            r.cpu_slowdown(),
            r.probes.kernel.records,
        );
    }
    s
}

fn ring_text(bytes: u32) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

fn markdown(rows: &[Row], runs: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| scenario (best of {runs}) | MB written | writer s, no capture | writer s, capture | writer slowdown (wall) | writer CPU ratio | capture MB/s | capture done after writer, ms | capture CPU s per GB | … with the stream's end | capture peak RSS MiB |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.2} | {:.2} | {:.3} | {:.3} | {:.0} | {:.0} | {:.2} | {:.2} | {} |",
            r.name,
            r.bytes as f64 / 1e6,
            r.base.wall.as_secs_f64(),
            r.capture.writer.wall.as_secs_f64(),
            r.slowdown(),
            r.cpu_slowdown(),
            r.capture_mb_s(),
            r.capture.tail.as_secs_f64() * 1e3,
            r.cpu_s_per_gb(),
            r.end_cpu_s_per_gb(),
            r.capture.peak_rss_kib / 1024,
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| scenario | ring | kernel records | ring-full drops, bytes | other drops, bytes | gaps | repaired bytes | spilled bytes | unrepairable bytes | **loss**, bytes (written − handed on) | byte-identical |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let st = &r.capture.stage;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | **{}** | {} |",
            r.name,
            ring_text(r.ring_bytes),
            r.capture.kernel.records,
            r.ring_dropped(),
            r.other_dropped(),
            st.gaps,
            st.repaired,
            st.spilled,
            st.unrepairable,
            r.max_loss,
            match (r.all_identical, r.all_ended) {
                (true, true) => "yes",
                (true, false) => "yes (stream end not seen)",
                (false, _) => "**no**",
            },
        );
    }
    s
}

pub fn run(args: &CaptureArgs) -> anyhow::Result<()> {
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the capture benchmark loads eBPF probes and creates cgroups: run it as root \
             (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)"
        );
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    args.malloc
        .apply(args.trim_interval_ms.map(Duration::from_millis));
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .init();
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let scene = Scene::new()?;
    let shm = Path::new("/dev/shm");
    let tmp = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile::tempdir_in(d)?
        }
        None if shm.is_dir() => tempfile::tempdir_in(shm)?,
        None => tempfile::tempdir()?,
    };
    let dir = tmp.path();
    let stats = args.bpf_stats.then(BpfStats::enable).transpose()?;
    if args.scale {
        return scale::run(args, &scene, dir, &metrics);
    }
    let mut bench = Bench {
        args,
        scene: &scene,
        dir,
        metrics: &metrics,
        seq: 0,
        rows: Vec::new(),
        outside_rows: Vec::new(),
    };
    for scenario in scenarios(args) {
        if args
            .only
            .as_deref()
            .is_some_and(|o| !scenario.name.contains(o))
        {
            continue;
        }
        bench.scenario(&scenario)?;
    }
    drop(stats);
    let Bench {
        rows, outside_rows, ..
    } = bench;
    let mut table = markdown(&rows, args.runs);
    if !outside_rows.is_empty() {
        table.push('\n');
        table.push_str(&outside_markdown(&outside_rows, args.runs));
    }
    println!("{table}");
    if let Some(path) = &args.markdown {
        let results = format!("{}\n{table}", machine_and_command(args));
        write_results(
            path,
            &results,
            "<!-- capture:begin -->",
            "<!-- capture:end -->",
        )?;
    }
    if rows.iter().any(|r| r.max_loss != 0 || !r.all_identical) {
        bail!("capture lost or changed bytes (see the table)");
    }
    if outside_rows.iter().any(|r| r.probes.kernel.records != 0) {
        bail!("a writer outside the prefix was captured (see the table)");
    }
    Ok(())
}

/// One run of the harness: where it runs, and the rows so far.
struct Bench<'a> {
    args: &'a CaptureArgs,
    scene: &'a Scene,
    dir: &'a Path,
    metrics: &'a PrometheusHandle,
    /// Numbers the writers' cgroups, unique over the run.
    seq: usize,
    rows: Vec<Row>,
    outside_rows: Vec<OutsideRow>,
}

impl Bench<'_> {
    /// `--runs` rounds of the scenario, each a baseline and then every kind of hooks
    /// asked for (alternating, so that load changes hit them alike); one row per hooks.
    fn scenario(&mut self, scenario: &Scenario) -> anyhow::Result<()> {
        let expected_crc = stream_crc(scenario.bytes);
        let mut best_base: Option<Usage> = None;
        let mut results: Vec<HooksResult> = self
            .args
            .hooks
            .iter()
            .map(|&h| HooksResult::new(h))
            .collect();
        for _ in 0..self.args.runs {
            self.seq += 1;
            let name = format!("w{}", self.seq);
            let log = self.dir.join(format!("pods/bench_{name}_uid/writer/0.log"));
            let base = run_writer(self.scene, &name, &log, scenario)?.usage;
            let _ = std::fs::remove_file(&log);
            eprintln!(
                "{}: without capture, writer {:.2} s",
                scenario.name,
                base.wall.as_secs_f64()
            );
            if best_base.is_none_or(|b| base.wall < b.wall) {
                best_base = Some(base);
            }
            // Every hooks variant right after the same baseline: alternating runs.
            for result in &mut results {
                self.seq += 1;
                let name = format!("w{}", self.seq);
                if scenario.outside {
                    let run = run_outside(self.scene, self.dir, &name, scenario, result.hooks)?;
                    eprintln!(
                        "{}: probes loaded ({}), writer {:.2} s (×{:.3} of this run's baseline)",
                        scenario.name,
                        hooks_label(result.hooks, run.hook_mode),
                        run.writer.wall.as_secs_f64(),
                        run.writer.wall.as_secs_f64() / base.wall.as_secs_f64().max(1e-9)
                    );
                    if result
                        .outside
                        .as_ref()
                        .is_none_or(|b| run.writer.wall < b.writer.wall)
                    {
                        result.outside = Some(run);
                    }
                    continue;
                }
                let run = run_with_capture(
                    self.scene,
                    self.dir,
                    &name,
                    scenario,
                    expected_crc,
                    self.metrics,
                    result.hooks,
                )?;
                eprintln!(
                    "{}: with capture ({}), writer {:.2} s (×{:.3} of this run's baseline), loss {} B, identical {}, ended {}; ring drops {} B, gaps {:.0}, repaired {:.0} B, spilled {:.0} B, unrepairable {:.0} B",
                    scenario.name,
                    hooks_label(result.hooks, run.hook_mode),
                    run.writer.wall.as_secs_f64(),
                    run.writer.wall.as_secs_f64() / base.wall.as_secs_f64().max(1e-9),
                    run.loss,
                    run.identical,
                    run.ended,
                    run.kernel.dropped_bytes[DropReason::RingFull as usize],
                    run.stage.gaps,
                    run.stage.repaired,
                    run.stage.spilled,
                    run.stage.unrepairable,
                );
                result.add(run);
            }
        }
        let base = best_base.expect("runs >= 1");
        for result in results {
            if let Some(run) = result.outside {
                let row = OutsideRow {
                    name: format!(
                        "{}, {}",
                        scenario.name,
                        hooks_label(result.hooks, run.hook_mode)
                    ),
                    base,
                    probes: run,
                };
                eprintln!("{}", row.text());
                self.outside_rows.push(row);
                continue;
            }
            let capture = result.best.expect("runs >= 1");
            let row = Row {
                name: format!(
                    "{}, {}",
                    scenario.name,
                    hooks_label(result.hooks, capture.hook_mode)
                ),
                bytes: scenario.bytes,
                ring_bytes: scenario.ring_bytes,
                base,
                capture,
                max_loss: result.max_loss,
                all_identical: result.all_identical,
                all_ended: result.all_ended,
            };
            eprintln!("{}", row.text());
            self.rows.push(row);
        }
        Ok(())
    }
}

/// The runs of one scenario on one kind of hooks.
struct HooksResult {
    hooks: BenchHooks,
    best: Option<CaptureRun>,
    outside: Option<OutsideRun>,
    max_loss: i64,
    all_identical: bool,
    all_ended: bool,
}

impl HooksResult {
    fn new(hooks: BenchHooks) -> HooksResult {
        HooksResult {
            hooks,
            best: None,
            outside: None,
            max_loss: 0,
            all_identical: true,
            all_ended: true,
        }
    }

    fn add(&mut self, run: CaptureRun) {
        if self.max_loss.abs() < run.loss.abs() {
            self.max_loss = run.loss;
        }
        self.all_identical &= run.identical;
        self.all_ended &= run.ended;
        if self
            .best
            .as_ref()
            .is_none_or(|b| run.writer.wall < b.writer.wall)
        {
            self.best = Some(run);
        }
    }
}

/// `kernel.bpf_stats_enabled` on for the run, back to what it was when dropped.
struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> anyhow::Result<BpfStats> {
        let before = std::fs::read_to_string(Self::PATH).context(Self::PATH)?;
        std::fs::write(Self::PATH, "1").context(Self::PATH)?;
        Ok(BpfStats(before.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

fn machine_and_command(args: &CaptureArgs) -> String {
    let mut command = format!(
        "cargo xtask bench capture --size-mb {} --rate-mb {} --rate-seconds {} --small-ring-kib {} --runs {}",
        args.size_mb, args.rate_mb, args.rate_seconds, args.small_ring_kib, args.runs
    );
    if let Some(o) = &args.only {
        let _ = write!(command, " --only '{o}'");
    }
    let hooks: Vec<&str> = args.hooks.iter().map(|h| h.as_str()).collect();
    let _ = write!(command, " --hooks {}", hooks.join(","));
    command.push_str(" --markdown docs/benchmarks.md");
    crate::machine(&command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn lines_are_100_bytes_numbered_and_shifted() {
        let mut lines = LineGen::new();
        assert_eq!(
            &lines.line()[..20],
            b"0000000000000000 abc",
            "line 0 starts at 'a'"
        );
        for _ in 0..1009 {
            lines.advance();
        }
        let line = lines.line();
        assert_eq!(line.len(), LINE);
        assert_eq!(&line[..17], b"0000000000001009 ");
        // 1009 % 26 = 21: the letters start at 'v'.
        assert_eq!(line[17], b'v');
        assert_eq!(line[LINE - 1], b'\n');
        assert_eq!(memchr::memchr(b'\n', line), Some(LINE - 1));
    }

    #[test]
    fn stream_crc_is_the_crc_of_the_concatenated_lines() {
        let mut lines = LineGen::new();
        let mut all = Vec::new();
        for _ in 0..25_000 {
            all.extend_from_slice(lines.line());
            lines.advance();
        }
        assert_eq!(stream_crc(all.len() as u64), crc32fast::hash(&all));
        assert_eq!(stream_crc(250), crc32fast::hash(&all[..250]));
    }

    #[test]
    fn cri_lines_split_at_16_kib_into_partials() {
        let ts = b"2026-11-21T10:45:31.210111144Z";
        let mut out = Vec::new();
        cri_line(&mut out, ts, b"hello", true);
        assert_eq!(out, b"2026-11-21T10:45:31.210111144Z stdout F hello\n");

        out.clear();
        let long = vec![b'x'; CRI_MAX_CONTENT * 2 + 5];
        cri_line(&mut out, ts, &long, true);
        let records: Vec<&[u8]> = out
            .split(|&b| b == b'\n')
            .filter(|r| !r.is_empty())
            .collect();
        let tags: Vec<u8> = records.iter().map(|r| r[38]).collect();
        assert_eq!(tags, b"PPF");
        let contents: Vec<usize> = records.iter().map(|r| r.len() - 40).collect();
        assert_eq!(contents, [CRI_MAX_CONTENT, CRI_MAX_CONTENT, 5]);

        out.clear();
        cri_line(&mut out, ts, b"cut", false);
        assert_eq!(out, b"2026-11-21T10:45:31.210111144Z stdout P cut\n");
    }

    #[test]
    fn timestamps_are_rfc3339_with_nanoseconds() {
        let t = UNIX_EPOCH + Duration::new(1_795_344_331, 210_111_144);
        assert_eq!(rfc3339_nano(t), b"2026-11-22T10:45:31.210111144Z");
        let leap = UNIX_EPOCH + Duration::new(951_782_400, 5);
        assert_eq!(rfc3339_nano(leap), b"2000-02-29T00:00:00.000000005Z");
    }

    #[test]
    fn metric_sums_add_up_the_series_of_one_name_only() {
        let text = "# TYPE logtap_capture_gaps_total counter\n\
                    logtap_capture_gaps_total 3\n\
                    logtap_capture_gaps_total_other 7\n\
                    logtap_capture_ring_dropped_bytes_total{reason=\"ring_full\"} 100\n\
                    logtap_capture_ring_dropped_bytes_total{reason=\"fault\"} 5\n";
        assert_eq!(metric_sum(text, "logtap_capture_gaps_total"), 3.0);
        assert_eq!(
            metric_sum(text, "logtap_capture_ring_dropped_bytes_total"),
            105.0
        );
        assert_eq!(metric_sum(text, "logtap_capture_spilled_bytes_total"), 0.0);
    }
}

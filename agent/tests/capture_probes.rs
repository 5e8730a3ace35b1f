//! The eBPF probes on the real kernel, with real processes in real cgroup v2 directories.
//!
//! Each test creates its own parent cgroup (below the cgroup this test runs in) and uses
//! it as the probes' `cgroup_prefix`; each "container" is a child cgroup that the workload
//! joins between fork and exec, exactly as runc does. The bytes captured for each
//! (cgroup, stream), assembled by offset, are compared byte for byte with what the test
//! read from the workload's pipes.
//!
//! Needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN) and fails without it, unless
//! `LOGTAP_SKIP_EBPF_TESTS=1` is set. Needs the eBPF object (`cargo xtask build-ebpf`).
//!
//! A custom harness (`harness = false`): the binary is also the workload (`--workload
//! ...`: writev, interleaved streams, huge writes), and the tests run one at a time (they
//! share the kernel and two CPU cores; a tiny-ring test must not see another's load).
//!
//! `LOGTAP_CAPTURE_HOOKS=tracepoint|compat` runs every test that does not choose its hooks
//! on those (default `auto`); `LOGTAP_EXPECT_HOOKS=fentry|tracepoint|compat` checks what
//! `auto` gets.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use logtap::capture::{DropReason, HookMode, Pinning, ProbeEvent, ProbeOptions, Probes};
use logtap::config::CaptureHooks;
use logtap::frame::Stream;

#[path = "common/bpffs.rs"]
mod bpffs;

/// The records the probes' diagnostics (aya-log) handed to the `log` facade, as
/// (target, message): the agent's log gets them the same way.
static PROBE_LOG: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

struct ProbeLog;

impl log::Log for ProbeLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let entry = (record.target().to_owned(), record.args().to_string());
        PROBE_LOG
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
    }

    fn flush(&self) {}
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--workload") {
        workload(&args[2..]);
        return;
    }
    log::set_logger(&ProbeLog).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let tests: [(&str, fn()); 18] = [
        ("small_lines_one_write_each", small_lines_one_write_each),
        ("writes_of_64_kib", writes_of_64_kib),
        ("writev_with_several_iovecs", writev_with_several_iovecs),
        (
            "stdout_and_stderr_interleaved",
            stdout_and_stderr_interleaved,
        ),
        (
            "pipeline_inside_the_container_is_captured_once",
            pipeline_inside_the_container_is_captured_once,
        ),
        (
            "pod_of_200_ms_is_captured_in_full",
            pod_of_200_ms_is_captured_in_full,
        ),
        (
            "existing_container_is_watched_from_its_pid",
            existing_container_is_watched_from_its_pid,
        ),
        (
            "tiny_ring_overflow_is_an_exact_gap",
            tiny_ring_overflow_is_an_exact_gap,
        ),
        (
            "write_over_64_kib_is_an_exact_too_large_gap",
            write_over_64_kib_is_an_exact_too_large_gap,
        ),
        ("forget_stops_capture", forget_stops_capture),
        (
            "forget_finds_streams_bound_before_and_after_the_first_walk",
            forget_finds_streams_bound_before_and_after_the_first_walk,
        ),
        (
            "a_forgotten_stream_is_not_copied_and_its_cgroup_still_ends",
            a_forgotten_stream_is_not_copied_and_its_cgroup_still_ends,
        ),
        (
            "writes_through_a_copy_of_stdout_are_captured",
            writes_through_a_copy_of_stdout_are_captured,
        ),
        (
            "forced_tracepoints_capture_byte_for_byte",
            forced_tracepoints_capture_byte_for_byte,
        ),
        (
            "a_32_bit_syscall_with_writevs_number_is_not_a_write",
            a_32_bit_syscall_with_writevs_number_is_not_a_write,
        ),
        (
            "forced_compat_hooks_capture_byte_for_byte",
            forced_compat_hooks_capture_byte_for_byte,
        ),
        (
            "concurrent_writers_to_one_pipe_get_exact_offsets_or_counted_holes",
            concurrent_writers_to_one_pipe_get_exact_offsets_or_counted_holes,
        ),
        (
            "probes_taken_over_from_their_pins_forward_their_diagnostics",
            probes_taken_over_from_their_pins_forward_their_diagnostics,
        ),
    ];
    let filter: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return;
    }
    let selected: Vec<_> = tests
        .iter()
        .filter(|(name, _)| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())))
        .collect();
    if std::env::var("LOGTAP_SKIP_EBPF_TESTS").as_deref() == Ok("1") {
        println!(
            "LOGTAP_SKIP_EBPF_TESTS=1: the {} eBPF capture tests are skipped",
            selected.len()
        );
        println!(
            "\ntest result: ok. 0 passed; 0 failed; {} ignored",
            selected.len()
        );
        return;
    }
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the eBPF capture tests need root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN); \
             set LOGTAP_SKIP_EBPF_TESTS=1 to skip them"
        );
        println!("\ntest result: FAILED. 0 passed; {} failed", selected.len());
        std::process::exit(101);
    }
    // Which hooks `auto` gets here (the kernel may refuse trampolines).
    match Probes::load(&ProbeOptions::default()) {
        Ok(probes) => println!("write hooks: {}", probes.hook_mode().as_str()),
        Err(e) => println!("the probes do not load: {e}"),
    }
    println!("tests run on hooks: {:?}", suite_hooks());
    let (mut passed, mut failed) = (0, Vec::new());
    for (name, test) in selected {
        let started = Instant::now();
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                passed += 1;
                println!(
                    "test {name} ... ok ({:.2} s)",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(_) => {
                failed.push(*name);
                println!("test {name} ... FAILED");
            }
        }
    }
    let status = if failed.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {status}. {passed} passed; {} failed",
        failed.len()
    );
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(101);
    }
}

fn line(i: u64) -> Vec<u8> {
    format!("line {i:08} the quick brown fox\n").into_bytes()
}

/// Line `i` of thread `t` of the `threads` workload: 100 bytes.
fn thread_line(t: usize, i: u64) -> Vec<u8> {
    let mut line = format!("{t} {i:08} ").into_bytes();
    line.resize(99, b'.');
    line.push(b'\n');
    line
}

fn write_all(fd: i32, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: a valid buffer.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        assert!(n > 0, "write: {}", std::io::Error::last_os_error());
        buf = &buf[n as usize..];
    }
}

/// The programs the "containers" run, each with its own write pattern.
fn workload(args: &[String]) {
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    match args[0].as_str() {
        // One write(2) per line.
        "lines" => (0..n).for_each(|i| write_all(1, &line(i))),
        "interleaved" => (0..n).for_each(|i| write_all(1 + (i % 2) as i32, &line(i))),
        // `n` writes of `size` bytes each, every byte telling where it is.
        "big" => {
            let size: usize = args[2].parse().unwrap();
            for w in 0..n as usize {
                let buf: Vec<u8> = (0..size).map(|i| ((w * 7 + i * 13) % 251) as u8).collect();
                write_all(1, &buf);
            }
        }
        // `n` writev(2) with 4 iovecs: a line, a line, a 6000-byte blob, a line.
        "writev" => {
            let blob: Vec<u8> = (0..6000).map(|i| b'a' + (i % 26) as u8).collect();
            for i in 0..n {
                let (a, b, c) = (line(3 * i), line(3 * i + 1), line(3 * i + 2));
                let iov = [&a[..], &b[..], &blob[..], &c[..]].map(|s| libc::iovec {
                    iov_base: s.as_ptr() as *mut _,
                    iov_len: s.len(),
                });
                let total: usize = iov.iter().map(|v| v.iov_len).sum();
                // SAFETY: valid iovecs.
                let r = unsafe { libc::writev(1, iov.as_ptr(), iov.len() as i32) };
                assert_eq!(r as usize, total, "short writev");
            }
        }
        // `n` 32-bit getpid(2) through `int 0x80` (number 20, writev's on x86-64) with the
        // registers of a 64-bit writev to stdout, each followed by a line.
        "compat" => {
            let line0 = line(0);
            let iov = libc::iovec {
                iov_base: line0.as_ptr() as *mut _,
                iov_len: line0.len(),
            };
            for i in 0..n {
                let pid: i64;
                // SAFETY: getpid touches no memory; int 0x80 clobbers only eax (the
                // result) and r8–r11 are preserved on this path, but marked anyway.
                unsafe {
                    std::arch::asm!(
                        "int 0x80",
                        inlateout("rax") 20i64 => pid,
                        in("rdi") 1u64,
                        in("rsi") &iov as *const libc::iovec,
                        in("rdx") 1u64,
                        lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _,
                        options(nostack),
                    );
                }
                assert!(pid > 0, "getpid through int 0x80: {pid}");
                write_all(1, &line(i));
            }
        }
        // `threads` threads each doing `n` writes of one 100-byte line to stdout, all at
        // once, spread over the CPUs (each pinned to one, so that their writes return
        // on different CPUs at the same instant): line `t`-`i` is "<t> <i>", padded
        // with dots.
        "threads" => {
            let threads: usize = args[2].parse().unwrap();
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    std::thread::spawn(move || {
                        // SAFETY: a zeroed cpu_set_t is a valid empty set; this thread's
                        // own affinity (pid 0). Failing leaves it unpinned, no harm.
                        unsafe {
                            let mut set: libc::cpu_set_t = std::mem::zeroed();
                            libc::CPU_SET(t % cpus, &mut set);
                            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
                        }
                        for i in 0..n {
                            write_all(1, &thread_line(t, i));
                        }
                    })
                })
                .collect();
            handles.into_iter().for_each(|h| h.join().unwrap());
        }
        other => panic!("unknown workload {other}"),
    }
}

/// What `auto` gets on this kernel (loaded once): `compat` before 5.15, where the
/// kernel refuses the tracepoint program (no `bpf_task_pt_regs`, no fetch-add).
fn auto_hook_mode() -> HookMode {
    static MODE: OnceLock<HookMode> = OnceLock::new();
    *MODE.get_or_init(|| {
        Probes::load(&ProbeOptions::default())
            .expect("the probes load")
            .hook_mode()
    })
}

/// The hooks this kernel loads: all three, or `auto` and `compat` where `auto` falls
/// back to the compat program (the tracepoint program is refused there: see
/// [`forced_tracepoints_capture_byte_for_byte`]).
fn hooks_on_this_kernel() -> Vec<CaptureHooks> {
    let mut hooks = vec![CaptureHooks::Auto];
    if auto_hook_mode() != HookMode::Compat {
        hooks.push(CaptureHooks::Tracepoint);
    }
    hooks.push(CaptureHooks::Compat);
    hooks
}

/// The hooks of every test that does not choose its own: `LOGTAP_CAPTURE_HOOKS`, by
/// default `auto`.
fn suite_hooks() -> CaptureHooks {
    match std::env::var("LOGTAP_CAPTURE_HOOKS").as_deref() {
        Err(_) | Ok("auto") => CaptureHooks::Auto,
        Ok("tracepoint") => CaptureHooks::Tracepoint,
        Ok("compat") => CaptureHooks::Compat,
        Ok(other) => panic!("LOGTAP_CAPTURE_HOOKS={other}: auto, tracepoint or compat"),
    }
}

/// One test's cgroup parent, used as the probes' prefix, and its "containers".
struct Scene {
    parent: PathBuf,
    prefix: String,
    children: Vec<PathBuf>,
}

impl Scene {
    fn new(name: &str) -> Scene {
        let root = Probes::cgroup2_root().expect("a cgroup2 mount");
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("this process in the cgroup v2 hierarchy")
            .trim_end_matches('/')
            .to_owned();
        let prefix = format!("{own}/logtap-test-{}-{name}", std::process::id());
        let parent = root.join(prefix.trim_start_matches('/'));
        let _ = std::fs::remove_dir(&parent);
        std::fs::create_dir(&parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
        Scene {
            parent,
            prefix,
            children: Vec::new(),
        }
    }

    fn options(&self) -> ProbeOptions {
        ProbeOptions {
            cgroup_prefix: self.prefix.clone(),
            hooks: suite_hooks(),
            ..ProbeOptions::default()
        }
    }

    /// A container's cgroup; returns its directory and id.
    fn container(&mut self, name: &str) -> (PathBuf, u64) {
        let dir = self.parent.join(name);
        std::fs::create_dir(&dir).unwrap();
        self.children.push(dir.clone());
        let id = std::fs::metadata(&dir).unwrap().ino();
        (dir, id)
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for child in self.children.iter().rev() {
            let _ = std::fs::remove_dir(child);
        }
        let _ = std::fs::remove_dir(&self.parent);
    }
}

/// Spawns `cmd` in the cgroup `dir` (joined before execve, as runc does), stdout and
/// stderr piped, read by threads.
fn spawn_in(dir: &Path, mut cmd: Command) -> Running {
    let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
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
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).unwrap();
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        err.read_to_end(&mut v).unwrap();
        v
    });
    Running { child, out, err }
}

fn self_workload(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg("--workload").args(args);
    cmd
}

fn shell(script: &str) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script);
    cmd
}

struct Running {
    child: Child,
    out: std::thread::JoinHandle<Vec<u8>>,
    err: std::thread::JoinHandle<Vec<u8>>,
}

/// What the probes reported about one cgroup.
#[derive(Default, Debug)]
struct Captured {
    /// By stream (1, 2): offset → bytes.
    data: [BTreeMap<u64, Vec<u8>>; 3],
    bound: Vec<(Stream, u64)>,
    created: Vec<Vec<u8>>,
    removed: Vec<Vec<u8>>,
    execs: Vec<(u32, Vec<u8>)>,
    /// (tgid, group_dead: `None` where the kernel does not say, 5.10).
    exits: Vec<(u32, Option<bool>)>,
}

impl Captured {
    fn take(&mut self, cgroup: u64, event: ProbeEvent<'_>) {
        match event {
            ProbeEvent::Data {
                cgroup_id,
                stream,
                offset,
                bytes,
                ..
            } if cgroup_id == cgroup => {
                let previous = self.data[stream as usize].insert(offset, bytes.to_vec());
                assert!(
                    previous.is_none(),
                    "offset {offset} of {stream:?} captured twice"
                );
            }
            ProbeEvent::StreamBound {
                cgroup_id,
                stream,
                inode,
            } if cgroup_id == cgroup => self.bound.push((stream, inode)),
            ProbeEvent::CgroupCreated { cgroup_id, path } if cgroup_id == cgroup => {
                self.created.push(path.to_vec())
            }
            ProbeEvent::CgroupRemoved { cgroup_id, path } if cgroup_id == cgroup => {
                self.removed.push(path.to_vec())
            }
            ProbeEvent::Exec {
                cgroup_id,
                tgid,
                filename,
            } if cgroup_id == cgroup => self.execs.push((tgid, filename.to_vec())),
            ProbeEvent::Exit {
                cgroup_id,
                tgid,
                group_dead,
            } if cgroup_id == cgroup => self.exits.push((tgid, group_dead)),
            _ => {}
        }
    }

    /// The stream assembled by offset, and its gaps as (offset, length).
    fn stream(&self, stream: Stream) -> (Vec<u8>, Vec<(u64, u64)>) {
        let (mut bytes, mut gaps) = (Vec::new(), Vec::new());
        for (&offset, chunk) in &self.data[stream as usize] {
            let at = bytes.len() as u64;
            assert!(
                offset >= at,
                "overlapping records at {offset} (assembled up to {at})"
            );
            if offset > at {
                gaps.push((at, offset - at));
                bytes.resize(offset as usize, 0);
            }
            bytes.extend_from_slice(chunk);
        }
        (bytes, gaps)
    }
}

/// Polls while `running` runs (unless `poll_while_running` is false: the ring then fills
/// up), then drains the ring.
fn capture(
    probes: &mut Probes,
    cgroup: u64,
    mut running: Running,
    poll_while_running: bool,
) -> (Captured, Vec<u8>, Vec<u8>) {
    let mut captured = Captured::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if running.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workload still running after 60 s"
        );
        if poll_while_running {
            probes
                .poll(Duration::from_millis(20), &mut |e| captured.take(cgroup, e))
                .unwrap();
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let status = running.child.wait().unwrap();
    assert!(status.success(), "workload failed: {status}");
    // Every record of the workload was committed before it exited.
    while probes
        .poll(Duration::from_millis(20), &mut |e| captured.take(cgroup, e))
        .unwrap()
        > 0
    {}
    let out = running.out.join().unwrap();
    let err = running.err.join().unwrap();
    (captured, out, err)
}

fn assert_identical(captured: &Captured, stream: Stream, truth: &[u8]) {
    let (bytes, gaps) = captured.stream(stream);
    assert!(gaps.is_empty(), "{stream:?} has gaps {gaps:?}");
    assert_eq!(
        bytes.len(),
        truth.len(),
        "{stream:?}: captured vs written bytes"
    );
    if let Some(at) = bytes.iter().zip(truth).position(|(a, b)| a != b) {
        panic!("{stream:?} differs first at byte {at}");
    }
}

fn assert_no_drops(probes: &Probes) {
    let stats = probes.kernel_stats().unwrap();
    assert_eq!(stats.dropped_bytes, [0; DropReason::ALL.len()], "{stats:?}");
    assert_eq!(stats.lost_events, 0, "{stats:?}");
}

/// Runs `cmd` in a new container of a new scene with default options; checks both streams
/// byte for byte and that nothing was dropped.
fn run_exact(name: &str, cmd: Command) -> Captured {
    run_exact_on(name, suite_hooks(), cmd)
}

/// [`run_exact`] on the given hooks. `Auto` gets the trampolines where the kernel
/// allows them, which `LOGTAP_EXPECT_HOOKS=fentry` (or `tracepoint`) makes a check.
fn run_exact_on(name: &str, hooks: CaptureHooks, cmd: Command) -> Captured {
    let mut scene = Scene::new(name);
    let options = ProbeOptions {
        hooks,
        ..scene.options()
    };
    let mut probes = Probes::load(&options).unwrap();
    match hooks {
        CaptureHooks::Auto => {
            if let Ok(expected) = std::env::var("LOGTAP_EXPECT_HOOKS") {
                assert_eq!(probes.hook_mode().as_str(), expected);
            }
        }
        CaptureHooks::Tracepoint => assert_eq!(probes.hook_mode(), HookMode::Tracepoint),
        CaptureHooks::Compat => assert_eq!(probes.hook_mode(), HookMode::Compat),
    }
    let (dir, id) = scene.container("c");
    let (captured, out, err) = capture(&mut probes, id, spawn_in(&dir, cmd), true);
    assert_identical(&captured, Stream::Stdout, &out);
    assert_identical(&captured, Stream::Stderr, &err);
    assert_no_drops(&probes);
    captured
}

fn small_lines_one_write_each() {
    let captured = run_exact("lines", self_workload(&["lines", "100000"]));
    assert_eq!(captured.data[1].len(), 100_000, "one record per write");
}

fn writes_of_64_kib() {
    let captured = run_exact("big", self_workload(&["big", "200", "65536"]));
    assert_eq!(
        captured.data[1].len(),
        200 * 16,
        "16 records of 4 KiB per write"
    );
}

fn writev_with_several_iovecs() {
    let captured = run_exact("writev", self_workload(&["writev", "3000"]));
    // a, b, the blob in 2 records, c.
    assert_eq!(captured.data[1].len(), 3000 * 5);
}

fn stdout_and_stderr_interleaved() {
    let captured = run_exact("interleaved", self_workload(&["interleaved", "20000"]));
    assert_eq!(captured.data[1].len(), 10_000);
    assert_eq!(captured.data[2].len(), 10_000);
}

fn pipeline_inside_the_container_is_captured_once() {
    let captured = run_exact(
        "pipeline",
        shell("seq 1 1000 | head -n 500 | cat; echo done >&2"),
    );
    let (stdout, _) = captured.stream(Stream::Stdout);
    let expected: String = (1..=500).map(|i| format!("{i}\n")).collect();
    assert_eq!(stdout, expected.as_bytes());
}

fn pod_of_200_ms_is_captured_in_full() {
    let mut scene = Scene::new("pod");
    let mut probes = Probes::load(&scene.options()).unwrap();
    // No userspace action between the cgroup's creation and the pod's first write: the
    // kernel watches the cgroup from mkdir and binds its streams at the first exec.
    let (dir, id) = scene.container("pod");
    let running = spawn_in(
        &dir,
        shell("echo one; sleep 0.1; echo two >&2; sleep 0.1; echo three"),
    );
    let (captured, out, err) = capture(&mut probes, id, running, true);
    assert_eq!(out, b"one\nthree\n");
    assert_eq!(err, b"two\n");
    assert_identical(&captured, Stream::Stdout, &out);
    assert_identical(&captured, Stream::Stderr, &err);
    let expected_path = format!("{}/pod", scene.prefix);
    assert_eq!(captured.created, vec![expected_path.as_bytes().to_vec()]);
    let mut bound: Vec<Stream> = captured.bound.iter().map(|b| b.0).collect();
    bound.sort_by_key(|s| *s as u8);
    assert_eq!(bound, [Stream::Stdout, Stream::Stderr]);
    assert!(
        captured.execs.iter().any(|(_, f)| f == b"/bin/sh"),
        "{:?}",
        captured.execs
    );
    assert!(
        captured.exits.iter().any(|&(_, dead)| dead != Some(false)),
        "{:?}",
        captured.exits
    );
    assert_no_drops(&probes);

    // rmdir: reported once, with the same path.
    std::fs::remove_dir(&dir).unwrap();
    scene.children.clear();
    let mut removed = Captured::default();
    probes
        .poll(Duration::from_millis(200), &mut |e| removed.take(id, e))
        .unwrap();
    assert_eq!(removed.removed, vec![expected_path.into_bytes()]);
    probes.forget(id).unwrap();
}

fn existing_container_is_watched_from_its_pid() {
    let mut scene = Scene::new("existing");
    // The container exists before the probes: only a scan at start-up can find it.
    let (dir, id) = scene.container("old");
    let mut cmd = shell("read go; echo hello; echo world >&2; echo again");
    cmd.stdin(Stdio::piped());
    let mut running = spawn_in(&dir, cmd);
    let mut probes = Probes::load(&scene.options()).unwrap();
    probes.watch_existing(id, running.child.id()).unwrap();
    running
        .child
        .stdin
        .take()
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let (captured, out, err) = capture(&mut probes, id, running, true);
    assert_eq!(out, b"hello\nagain\n");
    assert_identical(&captured, Stream::Stdout, &out);
    assert_identical(&captured, Stream::Stderr, &err);
}

/// Probes taken over from the pins an earlier load left forward the programs'
/// diagnostics (aya-log) as freshly loaded ones do: the exec probe's line for a stream
/// it binds after the take-over reaches the `log` facade. Before 5.15 (tracepoints
/// attached without BPF links) nothing can be pinned: both loads run unpinned, leave
/// no pins, and the second forwards the diagnostics of its own fresh probes.
fn probes_taken_over_from_their_pins_forward_their_diagnostics() {
    let pins = bpffs::PinFs::mount();
    let mut scene = Scene::new("pinlog");
    let options = ProbeOptions {
        pinning: Pinning::Keep(pins.pin_dir()),
        ..scene.options()
    };
    let pinnable = aya::features().bpf_perf_link();
    drop(Probes::load(&options).unwrap());
    assert_eq!(
        pins.layouts().len(),
        usize::from(pinnable),
        "the first load's probes stay pinned where the kernel has BPF links for tracepoints"
    );
    let mut probes = Probes::load(&options).unwrap();
    assert_eq!(probes.reused(), pinnable, "taken over from the pins");
    let (dir, id) = scene.container("c");
    let expected = format!("cgroup {id} stream 1 bound to pipe inode");
    let logged = || {
        PROBE_LOG
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(_, message)| message.starts_with(&expected))
            .cloned()
    };
    let (_captured, out, _) = capture(&mut probes, id, spawn_in(&dir, shell("echo hi")), true);
    assert_eq!(out, b"hi\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while logged().is_none() && Instant::now() < deadline {
        probes.poll(Duration::from_millis(50), &mut |_| {}).unwrap();
    }
    let (target, _) = logged().unwrap_or_else(|| {
        panic!(
            "no {expected:?} among the probes' diagnostics: {:?}",
            PROBE_LOG.lock().unwrap_or_else(|e| e.into_inner())
        )
    });
    assert_eq!(target, "logtap_probes");
    drop(probes);
    drop(scene);
}

fn tiny_ring_overflow_is_an_exact_gap() {
    let mut scene = Scene::new("tiny");
    let options = ProbeOptions {
        ring_bytes: 4 * 4096,
        ..scene.options()
    };
    let mut probes = Probes::load(&options).unwrap();
    let (dir, id) = scene.container("c");
    // Nobody reads the ring while the workload runs: most records cannot be reserved.
    let running = spawn_in(&dir, self_workload(&["lines", "5000"]));
    let (captured, out, _) = capture(&mut probes, id, running, false);
    let (bytes, gaps) = captured.stream(Stream::Stdout);
    let missing: u64 = gaps.iter().map(|g| g.1).sum::<u64>() + (out.len() - bytes.len()) as u64;
    let stats = probes.kernel_stats().unwrap();
    assert!(missing > 0, "the ring never overflowed: {stats:?}");
    assert_eq!(
        stats.dropped_bytes[DropReason::RingFull as usize],
        missing,
        "{stats:?}"
    );
    assert_eq!(stats.dropped_bytes[DropReason::TooLarge as usize], 0);
    // What was captured sits exactly at its offsets.
    for (&offset, chunk) in &captured.data[1] {
        assert_eq!(
            &out[offset as usize..][..chunk.len()],
            &chunk[..],
            "at {offset}"
        );
    }
}

fn write_over_64_kib_is_an_exact_too_large_gap() {
    let mut scene = Scene::new("huge");
    let mut probes = Probes::load(&scene.options()).unwrap();
    let (dir, id) = scene.container("c");
    let size = 200 * 1024;
    let running = spawn_in(&dir, self_workload(&["big", "3", &size.to_string()]));
    let (captured, out, _) = capture(&mut probes, id, running, true);
    let (bytes, gaps) = captured.stream(Stream::Stdout);
    let per_write = (size - 65536) as u64;
    // The third write's gap runs to the end of the stream: no record follows it.
    assert_eq!(bytes.len() as u64, 2 * size as u64 + 65536);
    assert_eq!(gaps, [(65536, per_write), (size as u64 + 65536, per_write)]);
    let stats = probes.kernel_stats().unwrap();
    assert_eq!(
        stats.dropped_bytes[DropReason::TooLarge as usize],
        3 * per_write,
        "{stats:?}"
    );
    assert_eq!(
        stats.dropped_records[DropReason::TooLarge as usize],
        3 * (50 - 16)
    );
    assert_eq!(stats.dropped_bytes[DropReason::RingFull as usize], 0);
    for (&offset, chunk) in &captured.data[1] {
        assert_eq!(
            &out[offset as usize..][..chunk.len()],
            &chunk[..],
            "at {offset}"
        );
    }
}

fn forget_stops_capture() {
    let mut scene = Scene::new("forget");
    let mut probes = Probes::load(&scene.options()).unwrap();
    let (dir, id) = scene.container("c");
    let mut cmd = shell("echo before; read go; echo after");
    cmd.stdin(Stdio::piped());
    let mut running = spawn_in(&dir, cmd);
    let mut stdin = running.child.stdin.take().unwrap();
    let mut first = Captured::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.data[1].is_empty() {
        assert!(Instant::now() < deadline, "nothing captured before forget");
        probes
            .poll(Duration::from_millis(20), &mut |e| first.take(id, e))
            .unwrap();
    }
    // What the kernel counted on the stream until now, as `forget` read it: the
    // stage's end of the stream once its cgroup is gone.
    let forgotten = probes.forget(id).unwrap();
    let stdout = forgotten.iter().find(|s| s.stream == 1).map(|s| s.offset);
    assert_eq!(stdout, Some(b"before\n".len() as u64), "{forgotten:?}");
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    let (after, out, _) = capture(&mut probes, id, running, true);
    assert_eq!(out, b"before\nafter\n");
    assert_identical(&first, Stream::Stdout, b"before\n");
    assert!(after.data[1].is_empty(), "{:?}", after.data[1]);
}

/// `forget` finds a cgroup's streams by their keys once the kernel's map was walked
/// (the first `forget` walks it): the final offsets it returns are the kernel's for a
/// cgroup bound before that walk (its keys from the walk) and for one bound after it
/// (its key from the binding record), and a cgroup forgotten already has none left.
fn forget_finds_streams_bound_before_and_after_the_first_walk() {
    let mut scene = Scene::new("forget-keys");
    let mut probes = Probes::load(&scene.options()).unwrap();
    let run = |scene: &mut Scene, probes: &mut Probes, name: &str, line: &str| {
        let (dir, id) = scene.container(name);
        let (captured, out, _) = capture(
            probes,
            id,
            spawn_in(&dir, shell(&format!("echo {line}"))),
            true,
        );
        assert_eq!(out, format!("{line}\n").as_bytes());
        assert_identical(&captured, Stream::Stdout, &out);
        id
    };
    let first = run(&mut scene, &mut probes, "a", "one");
    let second = run(&mut scene, &mut probes, "b", "second");
    let forgotten = probes.forget(first).unwrap();
    let end = forgotten.iter().find(|s| s.stream == 1).map(|s| s.offset);
    assert_eq!(end, Some(4), "walked: {forgotten:?}");
    let forgotten = probes.forget(second).unwrap();
    let end = forgotten.iter().find(|s| s.stream == 1).map(|s| s.offset);
    assert_eq!(end, Some(7), "by the walk's keys: {forgotten:?}");
    let third = run(&mut scene, &mut probes, "c", "third!");
    let forgotten = probes.forget(third).unwrap();
    let end = forgotten.iter().find(|s| s.stream == 1).map(|s| s.offset);
    assert_eq!(end, Some(7), "by the binding record's key: {forgotten:?}");
    assert_eq!(probes.forget(third).unwrap(), []);
    assert_eq!(probes.kernel_stats().unwrap().lost_events, 0);
}

/// A stream the agent declined (its source does not select the container) is forgotten
/// in the kernel: its later writes put no byte into the ring, the other stream of the
/// same cgroup is still captured in full, and the cgroup's removal still comes.
fn a_forgotten_stream_is_not_copied_and_its_cgroup_still_ends() {
    let mut scene = Scene::new("forget-stream");
    let mut probes = Probes::load(&scene.options()).unwrap();
    let (dir, id) = scene.container("c");
    let mut cmd = shell("echo before; echo e1 >&2; read go; echo after; echo e2 >&2");
    cmd.stdin(Stdio::piped());
    let mut running = spawn_in(&dir, cmd);
    let mut stdin = running.child.stdin.take().unwrap();
    let mut first = Captured::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.data[1].is_empty() || first.data[2].is_empty() {
        assert!(
            Instant::now() < deadline,
            "nothing captured before forgetting"
        );
        probes
            .poll(Duration::from_millis(20), &mut |e| first.take(id, e))
            .unwrap();
    }
    probes.forget_stream(id, Stream::Stdout).unwrap();
    let before = probes.kernel_stats().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    let (mut after, out, err) = capture(&mut probes, id, running, true);
    assert_eq!(out, b"before\nafter\n");
    assert!(after.data[1].is_empty(), "{:?}", after.data[1]);
    let copied = probes.kernel_stats().unwrap().bytes - before.bytes;
    assert_eq!(copied, 3, "only stderr's e2 went into the ring");
    first.data[2].append(&mut after.data[2]);
    assert_identical(&first, Stream::Stderr, &err);
    std::fs::remove_dir(&dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while after.removed.is_empty() {
        assert!(Instant::now() < deadline, "no removal record");
        probes
            .poll(Duration::from_millis(20), &mut |e| after.take(id, e))
            .unwrap();
    }
}

/// The stream is the pipe, not an fd number: a write through another descriptor of the
/// container's stdout pipe (a dup, or `/dev/stdout` opened anew as nginx does) reaches
/// the CRI log, so it is captured too, on either hooks.
fn writes_through_a_copy_of_stdout_are_captured() {
    for hooks in hooks_on_this_kernel() {
        let captured = run_exact_on(
            "dup",
            hooks,
            shell("echo one; exec 3>&1; echo two >&3; echo three; echo four >/dev/stdout"),
        );
        let (stdout, _) = captured.stream(Stream::Stdout);
        assert_eq!(stdout, b"one\ntwo\nthree\nfour\n", "{hooks:?}");
    }
}

/// The fallback for kernels without trampolines, forced: the same bytes, on syscall
/// tracepoints. Where the kernel refuses the program (before 5.15, `auto` then gets
/// the compat program), forcing it is an error, not a quiet fallback.
fn forced_tracepoints_capture_byte_for_byte() {
    if auto_hook_mode() == HookMode::Compat {
        let scene = Scene::new("tracepoints-refused");
        let forced = ProbeOptions {
            hooks: CaptureHooks::Tracepoint,
            ..scene.options()
        };
        let refused = Probes::load(&forced)
            .err()
            .expect("the tracepoint program loads where auto fell back to the compat one");
        let why = refused.to_string();
        println!(
            "  the tracepoint program is refused here: {}",
            why.lines().next().unwrap_or("")
        );
        return;
    }
    let captured = run_exact_on(
        "tracepoints",
        CaptureHooks::Tracepoint,
        self_workload(&["lines", "20000"]),
    );
    assert_eq!(captured.data[1].len(), 20_000, "one record per write");
    let captured = run_exact_on(
        "tracepoints-writev",
        CaptureHooks::Tracepoint,
        self_workload(&["writev", "500"]),
    );
    assert_eq!(captured.data[1].len(), 500 * 5);
}

/// The raw syscall exit hook sees every syscall: an ia32 getpid (number 20, writev's on
/// x86-64) whose registers look like a writev to stdout must not be taken for one (it
/// would move the stream offset by the pid and copy garbage).
fn a_32_bit_syscall_with_writevs_number_is_not_a_write() {
    for hooks in hooks_on_this_kernel() {
        let captured = run_exact_on("ia32", hooks, self_workload(&["compat", "200"]));
        assert_eq!(
            captured.data[1].len(),
            200,
            "{hooks:?}: one record per line"
        );
    }
}

/// The variant for kernels 5.8–5.14, forced on this kernel: the same bytes, with
/// 5.8's helpers and without the fetch-add. A single writer per stream never races
/// itself, so nothing is dropped.
fn forced_compat_hooks_capture_byte_for_byte() {
    let cases: [(&str, &[&str], usize, usize); 4] = [
        ("compat-lines", &["lines", "20000"], 20_000, 0),
        ("compat-writev", &["writev", "500"], 500 * 5, 0),
        ("compat-64k", &["big", "50", "65536"], 50 * 16, 0),
        ("compat-interleaved", &["interleaved", "4000"], 2000, 2000),
    ];
    for (name, workload, stdout_records, stderr_records) in cases {
        let captured = run_exact_on(name, CaptureHooks::Compat, self_workload(workload));
        assert_eq!(captured.data[1].len(), stdout_records, "{name}");
        assert_eq!(captured.data[2].len(), stderr_records, "{name}");
    }
}

/// Several threads writing into one pipe at once, on the compat hooks (no fetch-add)
/// and on `auto`'s: every byte the kernel accepted is either captured at an offset
/// that belongs to it alone (the records tile the stream with the holes, none
/// overlaps another, each holds one whole write) or counted as a `concurrent` drop
/// whose hole has exactly its length. The threads are pinned to different CPUs, so
/// that their writes return at the same instant: on the compat hooks that drops a few
/// writes per 100 000 here, and the test runs again (up to 4 times) until it has seen
/// some. Two writes returning at once may be numbered in the other order than the
/// pipe took them, on either hooks (docs/capture.md, Gaps): the output says how often,
/// and what a repair of each hole from the pipe's order would have done.
fn concurrent_writers_to_one_pipe_get_exact_offsets_or_counted_holes() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Where `auto` is the compat program (before 5.15), once is enough.
    let hooks = match auto_hook_mode() {
        HookMode::Compat => &[CaptureHooks::Compat][..],
        _ => &[CaptureHooks::Compat, CaptureHooks::Auto],
    };
    for &hooks in hooks {
        for round in 1.. {
            let dropped = racing_writers(hooks);
            if hooks == CaptureHooks::Auto {
                assert_eq!(dropped, 0, "the fetch-add drops nothing");
                break;
            }
            if dropped > 0 || cpus < 2 {
                break;
            }
            assert!(round < 4, "no write dropped as concurrent in 4 runs");
        }
    }
}

/// One run of [`concurrent_writers_to_one_pipe_get_exact_offsets_or_counted_holes`]:
/// its checks, and the writes dropped as concurrent.
fn racing_writers(hooks: CaptureHooks) -> u64 {
    let (threads, writes) = (4, 25_000u64);
    let mut scene = Scene::new("racing");
    let options = ProbeOptions {
        hooks,
        ..scene.options()
    };
    let mut probes = Probes::load(&options).unwrap();
    let (dir, id) = scene.container("c");
    let workload = self_workload(&["threads", &writes.to_string(), &threads.to_string()]);
    let (captured, out, _) = capture(&mut probes, id, spawn_in(&dir, workload), true);
    let stats = probes.kernel_stats().unwrap();
    let concurrent = DropReason::Concurrent as usize;
    assert_eq!(out.len() as u64, threads as u64 * writes * 100);

    let (bytes, mut gaps) = captured.stream(Stream::Stdout);
    if bytes.len() < out.len() {
        gaps.push((bytes.len() as u64, (out.len() - bytes.len()) as u64));
    }
    let missing: u64 = gaps.iter().map(|g| g.1).sum();
    assert_eq!(
        stats.dropped_bytes[concurrent], missing,
        "{hooks:?}: {stats:?}"
    );
    assert_eq!(
        stats.dropped_bytes.iter().sum::<u64>(),
        missing,
        "{hooks:?}: only races drop here: {stats:?}"
    );
    for &(at, len) in &gaps {
        assert!(
            at % 100 == 0 && len % 100 == 0,
            "{hooks:?}: hole ({at}, {len})"
        );
    }
    // Each record is one whole write at a write's boundary, and no write twice.
    let mut seen = std::collections::HashSet::new();
    let mut elsewhere = 0;
    for (&offset, chunk) in &captured.data[1] {
        assert!(
            offset % 100 == 0 && chunk.len() == 100,
            "{hooks:?}: at {offset}"
        );
        let (t, i) = std::str::from_utf8(&chunk[..chunk.len() - 1])
            .ok()
            .and_then(|l| {
                let mut words = l.trim_end_matches('.').split(' ');
                Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
            })
            .unwrap_or_else(|| panic!("{hooks:?}: not a line at {offset}: {chunk:?}"));
        assert_eq!(chunk[..], thread_line(t, i)[..], "{hooks:?}: at {offset}");
        assert!(seen.insert((t, i)), "{hooks:?}: {t} {i} captured twice");
        if out[offset as usize..][..100] != chunk[..] {
            elsewhere += 1;
        }
    }
    assert_eq!(
        seen.len() as u64 * 100 + missing,
        out.len() as u64,
        "{hooks:?}"
    );
    // What the stage's repair would do with each hole: fill it with the pipe's bytes
    // at its offset, unless the captured bytes right after it disagree with the pipe.
    let (mut right, mut refused, mut wrong) = (0, 0, 0);
    for &(at, len) in &gaps {
        let end = (at + len) as usize;
        let after = &bytes[end.min(bytes.len())..(end + 64).min(bytes.len())];
        if after != &out[end..end + after.len()] {
            refused += 1;
        } else if (at..at + len).step_by(100).all(|o| {
            let line = &out[o as usize..][..100];
            !captured.data[1].values().any(|c| c[..] == line[..])
        }) {
            right += 1;
        } else {
            wrong += 1;
        }
    }
    let dropped = stats.dropped_records[concurrent];
    println!(
        "  {hooks:?}: {} writes, {} captured, {dropped} dropped as concurrent ({} holes: a repair from the pipe's order fills {right} right, refuses {refused}, fills {wrong} with a write captured elsewhere); {elsewhere} captured at another offset than the pipe has them",
        threads as u64 * writes,
        seen.len(),
        gaps.len(),
    );
    dropped
}

//! `logtap run --demo`: a directory of realistic sample logs to collect on a machine
//! that has no Kubernetes pods of its own, so the first command of the README shows
//! the whole path (CRI decoding, parsing, multiline, the store, `logtap query`); and,
//! where the kernel allows eBPF, a workload whose stdout and stderr capture takes from
//! the kernel, as it takes a container's.
//!
//! The workload is a shell in a cgroup of its own below [`CGROUP_PREFIX`] (the demo's
//! capture prefix, so no container of the node is captured by the demo), joined before
//! its first exec as runc does, with pipes as stdout and stderr: the probes bind those
//! pipes at that exec. Its lines reach the store through capture alone (it has no CRI
//! log), so `logtap query` shows them as `[ebpf]`. It runs once capture is up and before
//! the files are read, writes its lines, exits; its cgroup is then removed.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::config::{CaptureConfig, Config, Format, MultilineConfig, ParserConfig, SourceConfig};
use crate::pipeline::Workload;

const NGINX_UID: &str = "0b5a3c1e-7d2f-4e43-9f1a-2b8c6d4e5f70";
const CHECKOUT_UID: &str = "6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";

/// The demo's capture prefix: its workload's cgroup is made below it.
pub const CGROUP_PREFIX: &str = "/logtap-demo";
/// The source config of the workload's captured lines (its `config_name`).
pub const WORKLOAD_SOURCE: &str = "demo-workload";
/// Lines the workload writes: this many on stdout (every seventh an error), one on
/// stderr.
pub const WORKLOAD_STDOUT_LINES: u32 = 21;
/// The workload's script: JSON lines, one `write(2)` each (`echo` is the shell's own).
const WORKLOAD_SCRIPT: &str = r#"i=1
while [ "$i" -le 21 ]; do
  if [ $((i % 7)) -eq 0 ]; then
    echo "{\"level\":\"error\",\"msg\":\"demo workload: inventory lookup timed out\",\"n\":$i}"
  else
    echo "{\"level\":\"info\",\"msg\":\"demo workload: request served\",\"n\":$i}"
  fi
  i=$((i + 1))
done
echo '{"level":"warn","msg":"demo workload: cache cold, written to stderr"}' >&2
"#;
/// How long the workload may run before it is killed (it needs milliseconds).
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long capture is given to read the workload's last records from the kernel's
/// ring after it exited: the stage polls every few milliseconds, and what it has not
/// read when a one-shot run stops is not in the store.
const CAPTURE_SETTLE: Duration = Duration::from_secs(1);

/// Writes the demo logs under `<data_dir>/demo` (once: a second run finds them
/// already collected by their checkpoints instead of shipping fresh copies) and adds
/// sources for them, ahead of the configured ones, into the config's first sink.
/// Where eBPF capture is possible, also turns capture on for the demo's cgroup prefix
/// and returns the workload to run once it is up; where not, says why in one line.
pub fn install(config: &mut Config) -> anyhow::Result<Option<Workload>> {
    let dir = config.data_dir.join("demo");
    if !dir.exists() {
        write_logs(&dir).with_context(|| format!("writing demo logs under {}", dir.display()))?;
    }
    let sink = config
        .sinks
        .keys()
        .find(|k| k.as_ref() == "local")
        .or_else(|| config.sinks.keys().next())
        .cloned()
        .context("the config has no sink to send demo logs to")?;
    let d = dir.display();
    let source = |name: &str, include: String, format, parser, multiline| SourceConfig {
        name: Arc::from(name),
        include: vec![include],
        exclude: Vec::new(),
        format,
        max_line_bytes: 1 << 20,
        multiline,
        parser,
        sink: sink.clone(),
        selector: None,
        stream: None,
        container_paths: Vec::new(),
        allowed_roots: Vec::new(),
        processors: Vec::new(),
        fields: Vec::new(),
        input: None,
    };
    let demo = [
        source(
            "demo-nginx",
            format!("{d}/pods/*/nginx/*.log"),
            Format::Cri,
            ParserConfig::Nginx,
            None,
        ),
        source(
            "demo-pods",
            format!("{d}/pods/**/*.log"),
            Format::Cri,
            ParserConfig::Json,
            None,
        ),
        source(
            "demo-java",
            format!("{d}/app/*.log"),
            Format::Raw,
            ParserConfig::None,
            Some(MultilineConfig {
                start: regex::bytes::Regex::new(r"^\d{4}-\d{2}-\d{2}")
                    .expect("valid regex")
                    .into(),
                flush_timeout: Duration::from_secs(1),
                max_lines: 500,
            }),
        ),
        // Capture's source config: its parser applies to the workload's lines. Its
        // CRI logs would be the repair path; the workload has none, so nothing
        // matches it.
        source(
            WORKLOAD_SOURCE,
            format!("{d}/workload/*.log"),
            Format::Cri,
            ParserConfig::Json,
            None,
        ),
    ];
    let workload_source = demo.len() - 1;
    config.sources.splice(0..0, demo);
    tracing::info!(dir = %dir.display(), "demo logs written; collecting them too");
    Ok(capture_workload(config, workload_source))
}

/// Turns capture on for the demo's workload when eBPF can work here, and returns the
/// workload; otherwise says why (one line) and returns `None`.
fn capture_workload(config: &mut Config, source: usize) -> Option<Workload> {
    let skip = |why: &str| {
        tracing::warn!("demo: no eBPF capture: {why}; the demo goes on with files only");
        None
    };
    if config.capture.is_some() {
        return skip("the config has capture on for its own cgroup prefix");
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return skip("not root (loading the probes needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)");
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return skip("this kernel has no BTF (/sys/kernel/btf/vmlinux)");
    }
    let root = match crate::capture::Probes::cgroup2_root() {
        Ok(root) => root,
        Err(e) => {
            return skip(&format!(
                "no cgroup v2 hierarchy to run the workload in ({e})"
            ));
        }
    };
    let mut capture = match default_capture() {
        Ok(c) => c,
        Err(e) => return skip(&format!("{e:#}")),
    };
    capture.source = source;
    capture.source_name = config.sources[source].name.clone();
    let cgroup = root
        .join(CGROUP_PREFIX.trim_start_matches('/'))
        .join(format!("workload-{}", std::process::id()));
    let workload = match Waiting::spawn(&cgroup) {
        Ok(w) => w,
        Err(e) => return skip(&format!("{e:#}")),
    };
    config.capture = Some(capture);
    Some(Box::new(move |running: bool| {
        if !running {
            tracing::warn!(
                "demo: no eBPF capture: the probes did not load (the error above says why); the demo goes on with files only"
            );
        }
        match workload.run(running) {
            Ok(()) if running => tracing::info!(
                cgroup = %format_args!("{CGROUP_PREFIX}/{}", cgroup.file_name().unwrap_or_default().to_string_lossy()),
                lines = WORKLOAD_STDOUT_LINES + 1,
                "demo: the workload ran and exited; its stdout and stderr were captured through eBPF"
            ),
            Ok(()) => {}
            Err(e) => tracing::error!(
                error = format_args!("{e:#}"),
                "demo: the workload failed; the demo goes on with files only"
            ),
        }
    }))
}

/// The embedded default's capture settings, on the demo's cgroup prefix.
fn default_capture() -> anyhow::Result<CaptureConfig> {
    let name = "<embedded default>";
    let mut raw = Config::parse_raw(crate::config::DEFAULT_CONFIG_YAML, name)?;
    raw.capture.enabled = true;
    raw.capture.cgroup_prefix = CGROUP_PREFIX.to_owned();
    Config::from_raw(raw, name)?
        .capture
        .context("the default config with capture enabled has no capture settings")
}

/// The workload, started before the agent drops its capabilities and waiting to be
/// told that capture is up.
///
/// Its outer shell keeps the privileges the agent had: making and removing a cgroup
/// directory below the cgroup v2 root needs `CAP_DAC_OVERRIDE` (the root is `r-x`),
/// which the running agent no longer has. On `go` it makes the cgroups (after the
/// probes attached, so the kernel watches the new one from its mkdir), runs the
/// workload in it and removes both directories when the workload exits; on end of
/// input it exits having done nothing.
struct Waiting {
    child: Child,
    cgroup: PathBuf,
}

/// `$1`: the parent cgroup, `$2`: the workload's cgroup, `$3`: the workload's script.
/// The inner shell joins the cgroup and then execs the workload there: that first
/// exec in the cgroup is where the probes bind its stdout and stderr pipes.
const OUTER_SCRIPT: &str = r#"read go || exit 0
mkdir -p "$1" && mkdir "$2" || exit 1
/bin/sh -c 'echo $$ > "$1/cgroup.procs" && exec /bin/sh -c "$2"' workload "$2" "$3"
status=$?
for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$2" 2>/dev/null && break; sleep 0.1; done
rmdir "$1" 2>/dev/null
exit $status
"#;

impl Waiting {
    fn spawn(cgroup: &Path) -> anyhow::Result<Waiting> {
        let parent = cgroup
            .parent()
            .context("the workload's cgroup has a parent")?;
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(OUTER_SCRIPT)
            .arg("logtap-demo")
            .arg(parent)
            .arg(cgroup)
            .arg(WORKLOAD_SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("starting /bin/sh for the demo workload")?;
        Ok(Waiting {
            child,
            cgroup: cgroup.to_path_buf(),
        })
    }

    /// Runs the workload (`go`) or lets it exit unrun, and waits for it; after a run,
    /// also for capture to read what it wrote.
    fn run(mut self, go: bool) -> anyhow::Result<()> {
        let mut stdin = self.child.stdin.take().context("the workload's stdin")?;
        if go {
            stdin
                .write_all(b"go\n")
                .context("starting the demo workload")?;
        }
        drop(stdin);
        let deadline = Instant::now() + WORKLOAD_TIMEOUT;
        // Its few lines fit in the pipes' buffers: it never waits for a reader.
        let status = loop {
            if let Some(status) = self
                .child
                .try_wait()
                .context("waiting for the demo workload")?
            {
                break status;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the demo workload did not end within {WORKLOAD_TIMEOUT:?}; killed"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        anyhow::ensure!(status.success(), "the demo workload failed ({status})");
        if go {
            std::thread::sleep(CAPTURE_SETTLE);
        }
        Ok(())
    }
}

impl Drop for Waiting {
    /// After a timeout or an error: the shells are killed (their process group) and
    /// the workload's cgroup removed; its parent needs the privileges the agent
    /// dropped, so a leftover is named.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: kill(2) of the process group this spawn made (its leader's pid).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        let parent = self
            .cgroup
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for _ in 0..50 {
            match std::fs::remove_dir(&self.cgroup) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => break,
            }
        }
        if std::fs::remove_dir(&parent).is_err() && parent.exists() {
            tracing::warn!(cgroup = %parent.display(), "demo: its cgroup is left behind (rmdir it as root)");
        }
    }
}

fn write_logs(dir: &Path) -> std::io::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ts = |i: u64| {
        rfc3339(
            now.as_secs().saturating_sub(600) + i,
            (i * 7919) % 1_000_000_000,
        )
    };

    let mut nginx = String::new();
    for i in 0..300u64 {
        let status = if i % 37 == 0 { 502 } else { 200 };
        let path = ["/", "/cart", "/api/items?page=2", "/checkout"][(i % 4) as usize];
        let _ = writeln!(
            nginx,
            "{} stdout F 10.0.{}.{} - - [21/Nov/2026:10:{:02}:{:02} +0000] \"GET {path} HTTP/1.1\" {status} {} \"-\" \"curl/8.5.0\"",
            ts(i),
            i % 4,
            i % 250,
            (i / 60) % 60,
            i % 60,
            512 + i * 3
        );
    }
    // A line longer than the runtime's 16 KiB limit arrives as P records, then F.
    let _ = writeln!(nginx, "{} stderr P {}", ts(300), "x".repeat(16384));
    let _ = writeln!(
        nginx,
        "{} stderr F [warn] upstream response buffered",
        ts(300)
    );
    write(
        &dir.join(format!("pods/demo_web-5f7c9_{NGINX_UID}/nginx/0.log")),
        &nginx,
    )?;

    let mut checkout = String::new();
    for i in 0..200u64 {
        let (level, msg) = match i % 50 {
            17 => ("error", "payment declined: card expired"),
            33 => ("warn", "retrying inventory lookup"),
            _ => ("info", "order placed"),
        };
        let _ = writeln!(
            checkout,
            "{} stdout F {{\"level\":\"{level}\",\"msg\":\"{msg}\",\"order_id\":{},\"latency_ms\":{}}}",
            ts(i),
            1000 + i,
            (i * 13) % 400
        );
    }
    write(
        &dir.join(format!("pods/demo_checkout-7b8d_{CHECKOUT_UID}/app/0.log")),
        &checkout,
    )?;

    let mut java = String::new();
    for i in 0..50u64 {
        let t = rfc3339(now.as_secs().saturating_sub(300) + i, 0);
        let _ = writeln!(
            java,
            "{} INFO  PaymentService - charge ok order={}",
            &t[..19],
            2000 + i
        );
        if i % 10 == 9 {
            let _ = writeln!(
                java,
                "{} ERROR PaymentService - charge failed order={}",
                &t[..19],
                2000 + i
            );
            java.push_str(
                "java.lang.IllegalStateException: gateway timeout\n\
                 \tat com.shop.pay.Gateway.charge(Gateway.java:88)\n\
                 \tat com.shop.pay.PaymentService.pay(PaymentService.java:41)\n\
                 Caused by: java.net.SocketTimeoutException: Read timed out\n\
                 \tat java.base/java.net.SocketInputStream.read(SocketInputStream.java:168)\n\
                 \t... 7 more\n",
            );
        }
    }
    write(&dir.join("app/payments.log"), &java)
}

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(path.parent().expect("demo paths have parents"))?;
    std::fs::write(path, text)
}

/// `secs`/`nanos` since the epoch as RFC 3339 UTC with nanoseconds, as runtimes write it.
fn rfc3339(secs: u64, nanos: u64) -> String {
    let mut out = Vec::with_capacity(30);
    crate::sink::store::render::write_rfc3339(&mut out, (secs * 1_000_000_000 + nanos) as i64);
    String::from_utf8(out).expect("RFC 3339 text is ASCII")
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            super::rfc3339(1_795_258_531, 210_111_144),
            "2026-11-21T10:55:31.210111144Z"
        );
        assert_eq!(
            super::rfc3339(951_782_400, 5),
            "2000-02-29T00:00:00.000000005Z"
        );
    }
}

//! The scale scenario of the capture bench (`logtap-bench capture --scale`): many
//! writers at once, as a busy node has (issue 11: 200 containers each writing 0.5 MB/s
//! of 100-byte lines), each in its own cgroup with its own shim and CRI log, held to
//! its rate, all captured by one stage in this process.
//!
//! Reported: the rate the writers reached together (they are held to theirs, so a
//! machine that cannot keep up shows a lower rate, not loss), every stream checked
//! byte for byte (offsets without holes or overlaps, CRC-32 of what was handed on),
//! the kernel's drops, the stage's repairs, this process's CPU per GB (stage,
//! pipeline, verifying sink, and the harness's own threads: split by thread, since
//! starting and waiting for 400 processes costs this process more than capture does)
//! and its peak RSS (`VmHWM`: the ring buffer's pages
//! included). No baseline run: what one writer pays is the other scenarios' measure.

use super::*;

/// What one scale run found.
struct ScaleRun {
    writers: usize,
    bytes_each: u64,
    /// From the first writer's start to the last writer's end.
    writers_wall: Duration,
    /// The writers' CPU, summed.
    writers_cpu: Duration,
    /// From the first writer's start to every stream ended.
    wall: Duration,
    cpu: Duration,
    /// Of `cpu`: the stage's thread (probes read, streams, repairs, the pipeline's
    /// framing and packages: the agent's capture) and the sink worker's (the harness's
    /// verifying sink); the rest is the harness (its 200 threads starting and waiting
    /// for the writers, its samplers).
    stage_cpu: Duration,
    sink_cpu: Duration,
    peak_rss_kib: u64,
    /// The RSS sample (every 50 ms) with the largest RSS, split.
    rss_at_peak: crate::heap::RssSplit,
    /// glibc's arenas and the anonymous RSS by kind of mapping at that sample
    /// (`--heap-stats`).
    arenas_at_peak: Option<(crate::heap::Arenas, crate::heap::AnonSplit)>,
    /// Resident KiB of the ring buffer's mapping at the end (data pages mapped twice).
    ring_rss_kib: u64,
    /// The most live heap bytes during the run, when counted (`--heap-stats`).
    heap_peak: Option<usize>,
    /// The most the stage held waiting behind holes (`logtap_capture_buffered_bytes`,
    /// sampled every 100 ms): what `capture.max_buffered` bounds.
    peak_buffered: u64,
    /// The most the open packages of all streams held (`logtap_open_package_bytes`,
    /// sampled every 100 ms): what the stage's node-wide package bound keeps.
    peak_open_packages: u64,
    kernel: KernelStats,
    stage: StageCounters,
    delivered: u64,
    /// Streams whose every byte reached the sink once, in order, unchanged.
    identical: usize,
    ended: bool,
    hook_mode: HookMode,
}

/// Per stream, what the sink saw.
struct MultiVerifySink(Arc<Mutex<HashMap<logtap::source::SourceId, Verify>>>);

impl Sink for MultiVerifySink {
    fn kind(&self) -> &'static str {
        "null"
    }

    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let mut streams = self.0.lock().expect("not poisoned");
        streams.entry(batch.source.id).or_default().take(batch);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Runs the scale scenario on each kind of hooks asked for and prints its table.
pub(super) fn run(
    args: &CaptureArgs,
    scene: &Scene,
    dir: &Path,
    metrics: &PrometheusHandle,
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for &hooks in &args.hooks {
        let run = run_scale(args, scene, dir, metrics, hooks)?;
        eprintln!(
            "scale ({}, malloc {:?}): {} of {} streams identical, {:.1} MB/s, peak RSS {} MiB, stage buffered at most {} KiB, open packages at most {} KiB; \
             {} lifecycle records lost, {} bytes spilled, {} unrepairable, {} of {} bytes handed on",
            hooks.as_str(),
            args.malloc,
            run.identical,
            run.writers,
            mb_per_s(run.delivered, run.writers_wall),
            run.peak_rss_kib / 1024,
            run.peak_buffered / 1024,
            run.peak_open_packages / 1024,
            run.kernel.lost_events,
            run.stage.spilled,
            run.stage.unrepairable,
            run.delivered,
            run.bytes_each * run.writers as u64,
        );
        let at = run.rss_at_peak;
        eprintln!(
            "scale ({}): RSS at its sampled peak {} MiB = {} anonymous (heap live {}) + {} file-backed; \
             ring mapping {} MiB resident; heap peak {}",
            hooks.as_str(),
            at.rss / 1024,
            at.anonymous / 1024,
            match run.heap_peak {
                Some(_) => format!("{} MiB", at.heap_live / 1024),
                None => "not counted".into(),
            },
            at.file / 1024,
            run.ring_rss_kib / 1024,
            match run.heap_peak {
                Some(p) => format!("{} MiB", p >> 20),
                None => "not counted (--heap-stats)".into(),
            },
        );
        if let Some((a, anon)) = &run.arenas_at_peak {
            let mut arenas: Vec<_> = a.arenas.iter().enumerate().collect();
            arenas.sort_by_key(|(_, a)| std::cmp::Reverse(a.from_system));
            let largest: Vec<String> = arenas
                .iter()
                .take(6)
                .map(|(nr, a)| format!("#{nr} {} ({} free)", a.from_system / 1024, a.free / 1024))
                .collect();
            eprintln!(
                "scale ({}): malloc at the RSS peak: {} arenas holding {} MiB ({} MiB of it free), \
                 {} MiB mapped on their own; largest arenas, MiB: {}",
                hooks.as_str(),
                a.arenas.len(),
                a.arenas.iter().map(|a| a.from_system).sum::<u64>() / 1024,
                a.arenas.iter().map(|a| a.free).sum::<u64>() / 1024,
                a.mmapped / 1024,
                largest.join(", "),
            );
            eprintln!(
                "scale ({}): anonymous at the RSS peak, MiB: main arena {:.1}, other arenas {:.1}, \
                 {} thread stacks {:.1}, other mappings (chunks mapped alone) {:.1}",
                hooks.as_str(),
                anon.main_arena as f64 / 1024.0,
                anon.arenas as f64 / 1024.0,
                anon.stack_count,
                anon.stacks as f64 / 1024.0,
                anon.other as f64 / 1024.0,
            );
        }
        rows.push((hooks, run));
    }
    let table = scale_markdown(args, &rows);
    println!("{table}");
    if let Some(path) = &args.markdown {
        let results = format!("{}\n{table}", machine_and_command(args));
        write_results(
            path,
            &results,
            "<!-- capture-scale:begin -->",
            "<!-- capture-scale:end -->",
        )?;
    }
    if rows
        .iter()
        .any(|(_, r)| r.identical != r.writers || !r.ended)
    {
        bail!("capture lost or changed bytes at scale (see the table)");
    }
    Ok(())
}

fn run_scale(
    args: &CaptureArgs,
    scene: &Scene,
    dir: &Path,
    metrics: &PrometheusHandle,
    hooks: BenchHooks,
) -> anyhow::Result<ScaleRun> {
    let writers = args.scale_writers;
    let rate = args.scale_rate_kb * 1000;
    let bytes_each = rate * args.rate_seconds / LINE as u64 * LINE as u64;
    let scenario = Scenario {
        name: "scale".into(),
        pattern: Pattern::Lines,
        bytes: bytes_each,
        rate,
        ring_bytes: args.scale_ring_mib << 20,
        outside: false,
    };
    let data_dir = dir.join(format!("data-scale-{}", hooks.as_str()));
    if args.heap_stats {
        crate::heap::start_counting();
    }
    let (config, probes) = load(args, scene, dir, &data_dir, hooks)?;
    let hook_mode = probes.hook_mode();
    let kernel = Arc::new(Mutex::new(None));
    let feed = MeasuredProbes {
        probes,
        last: kernel.clone(),
        programs: Arc::new(Mutex::new(Vec::new())),
    };
    let registry: SharedRegistry = Arc::new(Registry::open(&data_dir.join("checkpoints"))?);
    let verify = Arc::new(Mutex::new(HashMap::new()));
    let names: Vec<(String, PathBuf)> = (0..writers)
        .map(|i| {
            let name = format!("s{}-{i}", hooks.as_str());
            let log = dir.join(format!("pods/bench_{name}_uid/writer/0.log"));
            (name, log)
        })
        .collect();
    let resolver = TableResolver(
        names
            .iter()
            .map(|(n, l)| (n.as_bytes().to_vec(), l.clone()))
            .collect(),
    );
    let running = RunningCapture::start(
        &config,
        feed,
        resolver,
        &registry,
        Box::new(MultiVerifySink(verify.clone())),
        // As the agent does: a writer whose removal record a full ring lost still ends.
        |stage| stage.set_cgroup_root(Probes::cgroup2_root().ok()),
    )?;

    let counters_before = StageCounters::read(metrics);
    let buffered = PeakSampler::start(metrics.clone(), "logtap_capture_buffered_bytes");
    let open_packages = PeakSampler::start(metrics.clone(), "logtap_open_package_bytes");
    reset_peak_rss();
    crate::heap::reset_peak();
    let rss = crate::heap::RssSampler::start();
    let threads_before = threads_cpu();
    let cpu_before = crate::self_cpu();
    let started = Instant::now();
    let (writers_cpu, writers_end) = run_writers(scene, &names, &scenario)?;
    let ended = wait_ended(&registry, writers);
    let wall = started.elapsed();
    let peak_buffered = buffered.stop();
    let peak_open_packages = open_packages.stop();
    let (rss_at_peak, arenas_at_peak) = rss.stop();
    let ring_rss_kib = crate::heap::mapping_rss_kib("bpf-map");
    let heap_peak = crate::heap::counting().then(crate::heap::peak);
    let threads_after = threads_cpu();
    let spent = |thread: &str| {
        let of = |m: &HashMap<String, Duration>| m.get(thread).copied().unwrap_or_default();
        of(&threads_after).saturating_sub(of(&threads_before))
    };
    let (stage_cpu, sink_cpu) = (spent(STAGE_THREAD), spent(SINK_THREAD));
    running.finish()?;
    let cpu = crate::self_cpu() - cpu_before;
    let peak_rss_kib = peak_rss_kib();
    let stage_counters = StageCounters::read(metrics).since(counters_before);
    for (_, log) in &names {
        let _ = std::fs::remove_file(log);
    }
    let _ = std::fs::remove_dir_all(&data_dir);

    let expected_crc = stream_crc(bytes_each);
    let streams = verify.lock().expect("not poisoned");
    let identical = streams
        .values()
        .filter(|v| {
            v.delivered == bytes_each
                && v.holes == 0
                && v.overlaps == 0
                && v.crc.clone().finalize() == expected_crc
        })
        .count();
    let kernel = kernel.lock().expect("not poisoned").unwrap_or_default();
    Ok(ScaleRun {
        writers,
        bytes_each,
        writers_wall: writers_end.saturating_duration_since(started),
        writers_cpu,
        wall,
        cpu,
        stage_cpu,
        sink_cpu,
        peak_rss_kib,
        rss_at_peak,
        arenas_at_peak,
        ring_rss_kib,
        heap_peak,
        peak_buffered,
        peak_open_packages,
        kernel,
        stage: stage_counters,
        delivered: streams.values().map(|v| v.delivered).sum(),
        identical,
        ended,
        hook_mode,
    })
}

/// The scale run's config (a blackhole sink stands for the verifying one) and its
/// probes, loaded and attached.
fn load(
    args: &CaptureArgs,
    scene: &Scene,
    dir: &Path,
    data_dir: &Path,
    hooks: BenchHooks,
) -> anyhow::Result<(Config, Probes)> {
    let config = Config::parse(
        &format!(
            "data_dir: {}\nmetrics: {{listen: \"\"}}\nsources:\n  - name: pods\n    include: [\"{}/pods/**/*.log\"]\n    format: cri\n    sink: out\n\
             sinks:\n  out: {{type: blackhole}}\n\
             capture: {{enabled: true, source: pods, cgroup_prefix: \"{}\", ring_size: \"{}MiB\"{}}}\n",
            data_dir.display(),
            dir.display(),
            scene.prefix,
            args.scale_ring_mib,
            args.scale_max_buffered_mib
                .map(|m| format!(", max_buffered: {m}MiB"))
                .unwrap_or_default(),
        ),
        "capture scale bench",
    )
    .context("the scale bench's config")?;
    let probes = load_probes(&config, hooks)?;
    Ok((config, probes))
}

/// Runs every writer at once, each to its end; returns their CPU, summed, and when
/// the last one ended.
fn run_writers(
    scene: &Scene,
    names: &[(String, PathBuf)],
    scenario: &Scenario,
) -> anyhow::Result<(Duration, Instant)> {
    let runs: Vec<anyhow::Result<WriterRun>> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|(name, log)| s.spawn(|| run_writer(scene, name, log, scenario)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a writer thread panicked")))
            })
            .collect()
    });
    let mut cpu = Duration::ZERO;
    let mut end: Option<Instant> = None;
    for run in runs {
        let run = run?;
        cpu += run.usage.cpu;
        let ended = run.started + run.usage.wall;
        end = Some(end.map_or(ended, |e| e.max(ended)));
    }
    Ok((cpu, end.unwrap_or_else(Instant::now)))
}

/// The highest value a gauge took while it was sampled (every 100 ms, from the
/// rendered metrics, as a scrape would see it).
struct PeakSampler {
    sampling: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl PeakSampler {
    fn start(metrics: PrometheusHandle, gauge: &'static str) -> PeakSampler {
        let sampling = Arc::new(AtomicBool::new(true));
        let thread = {
            let sampling = sampling.clone();
            std::thread::spawn(move || {
                let mut peak = 0f64;
                while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(metric_sum(&metrics.render(), gauge));
                    std::thread::sleep(Duration::from_millis(100));
                }
                peak as u64
            })
        };
        PeakSampler { sampling, thread }
    }

    fn stop(self) -> u64 {
        self.sampling
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The capture stage's thread and the verifying sink's worker, by name.
const STAGE_THREAD: &str = "capture";
const SINK_THREAD: &str = "sink-verify";

/// The CPU time of this process's threads alive now, summed by thread name
/// (`/proc/self/task/*/comm`; `schedstat`'s first field, nanoseconds on a CPU).
fn threads_cpu() -> HashMap<String, Duration> {
    let mut by_name: HashMap<String, Duration> = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(comm), Ok(schedstat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue;
        };
        let Some(ns) = schedstat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        *by_name.entry(comm.trim_end().to_owned()).or_default() += Duration::from_nanos(ns);
    }
    by_name
}

/// Whether all `streams` ended (their sources closed) within [`END_WAIT`].
fn wait_ended(registry: &SharedRegistry, streams: usize) -> bool {
    let deadline = Instant::now() + END_WAIT;
    loop {
        let sources = registry.snapshot();
        if sources.len() >= streams && sources.iter().all(|s| s.closed) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scale_markdown(args: &CaptureArgs, rows: &[(BenchHooks, ScaleRun)]) -> String {
    let mut out = format!(
        "Scale: {} writers, each {} kB/s of 100 B lines for {} s (target together: {:.0} MB/s), {} MiB ring\n\n\
         | hooks | streams identical | MB/s reached | writers' CPU, s | capture CPU, s per GB | … stage thread / verifying sink / harness, s per GB | peak RSS, MiB | RSS at its peak: anon / file (ring), MiB | heap peak, MiB | stage buffered at most, MiB | kernel drops, bytes | gaps / repaired bytes | ended |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
        args.scale_writers,
        args.scale_rate_kb,
        args.rate_seconds,
        (args.scale_writers as u64 * args.scale_rate_kb) as f64 / 1000.0,
        args.scale_ring_mib,
    );
    for (hooks, r) in rows {
        let gb = (r.bytes_each * r.writers as u64) as f64 / 1e9;
        let drops: u64 = r.kernel.dropped_bytes.iter().sum();
        let _ = writeln!(
            out,
            "| {} | {} of {} | {:.1} | {:.1} | {:.2} | {:.2} / {:.2} / {:.2} | {} | {} / {} ({}) | {} | {:.1} | {} | {} / {} | {} ({:.1} s) |",
            hooks_label(*hooks, r.hook_mode),
            r.identical,
            r.writers,
            mb_per_s(r.delivered, r.writers_wall),
            r.writers_cpu.as_secs_f64(),
            r.cpu.as_secs_f64() / gb,
            r.stage_cpu.as_secs_f64() / gb,
            r.sink_cpu.as_secs_f64() / gb,
            r.cpu.saturating_sub(r.stage_cpu + r.sink_cpu).as_secs_f64() / gb,
            r.peak_rss_kib / 1024,
            r.rss_at_peak.anonymous / 1024,
            r.rss_at_peak.file / 1024,
            r.ring_rss_kib / 1024,
            r.heap_peak
                .map_or_else(|| "—".to_string(), |p| (p >> 20).to_string()),
            r.peak_buffered as f64 / (1 << 20) as f64,
            drops,
            r.stage.gaps,
            r.stage.repaired,
            if r.ended { "yes" } else { "NO" },
            r.wall.as_secs_f64(),
        );
    }
    out
}

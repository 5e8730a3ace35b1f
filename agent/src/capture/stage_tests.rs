//! The capture stage against scripted probe events, real CRI log files and a real
//! pipeline: ordering, repair of holes in the middle and at the end of a stream,
//! holes that cannot be repaired, and resuming a stream from its log after a restart.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;

use crossbeam_channel::Receiver;

use super::*;
use crate::batch::Batch;
use crate::checkpoint::Registry;
use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::route::Router;

const TS: &str = "2026-11-21T10:45:31.210111144Z";

/// Probe events owned by the script, lent out as `ProbeEvent`s on poll.
enum Scripted {
    Created(u64, &'static str),
    Bound(u64, Stream),
    Data(u64, Stream, u64, &'static [u8]),
    Removed(u64),
}

#[derive(Default)]
struct ScriptFeed {
    rounds: VecDeque<Vec<Scripted>>,
    forgotten: Vec<u64>,
    declined: Vec<(u64, Stream)>,
    /// The kernel's final offsets `forget` reports, by cgroup (none: unknown).
    finals: HashMap<u64, Vec<(Stream, u64)>>,
    /// Events that arrive while the stage repairs: a backlog as large as the ring,
    /// handed out only to a poll that does not wait (the stage's drain between two
    /// repair steps).
    while_repairing: Vec<Scripted>,
}

impl EventFeed for ScriptFeed {
    fn poll(
        &mut self,
        timeout: Duration,
        on_event: &mut dyn FnMut(ProbeEvent<'_>),
    ) -> io::Result<usize> {
        let round = if timeout.is_zero() && !self.while_repairing.is_empty() {
            Some(std::mem::take(&mut self.while_repairing))
        } else {
            self.rounds.pop_front()
        };
        let Some(round) = round else {
            std::thread::sleep(Duration::from_millis(5));
            return Ok(0);
        };
        let n = round.len();
        for e in &round {
            on_event(match *e {
                Scripted::Created(cgroup_id, path) => ProbeEvent::CgroupCreated {
                    cgroup_id,
                    path: path.as_bytes(),
                },
                Scripted::Bound(cgroup_id, stream) => ProbeEvent::StreamBound {
                    cgroup_id,
                    stream,
                    inode: 1,
                },
                Scripted::Data(cgroup_id, stream, offset, bytes) => ProbeEvent::Data {
                    cgroup_id,
                    stream,
                    offset,
                    bytes,
                    ktime_ns: 1,
                    tgid: 1,
                },
                Scripted::Removed(cgroup_id) => ProbeEvent::CgroupRemoved {
                    cgroup_id,
                    path: b"",
                },
            });
        }
        Ok(n)
    }

    fn backlog(&self) -> usize {
        if self.while_repairing.is_empty() {
            0
        } else {
            usize::MAX
        }
    }

    fn forget(&mut self, cgroup_id: u64) -> Vec<(Stream, u64)> {
        self.forgotten.push(cgroup_id);
        self.finals.remove(&cgroup_id).unwrap_or_default()
    }

    fn decline(&mut self, cgroup_id: u64, stream: Stream) {
        self.declined.push((cgroup_id, stream));
    }

    fn watch_existing(&mut self, _cgroup_id: u64, _pid: u32) -> io::Result<()> {
        Ok(())
    }
}

struct TableResolver {
    log_path: Option<PathBuf>,
    running: Option<bool>,
    selected: bool,
}

impl ContainerResolver for TableResolver {
    fn resolve(&mut self, cgroup_path: &[u8]) -> Option<CapturedContainer> {
        Some(CapturedContainer {
            id: String::from_utf8_lossy(cgroup_path)
                .rsplit('/')
                .next()?
                .to_string(),
            log_path: self.log_path.clone(),
            selected: self.selected,
        })
    }

    fn is_running(&mut self, _log_path: &Path) -> Option<bool> {
        self.running
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    data_dir: PathBuf,
    log: PathBuf,
    config: Config,
}

impl Fixture {
    /// The resolver of a running container that its source selects, logging to the
    /// fixture's CRI log: what most tests capture.
    fn running_container(&self) -> TableResolver {
        TableResolver {
            log_path: Some(self.log.clone()),
            running: Some(true),
            selected: true,
        }
    }

    /// The same container once it has exited (its removal is what the test plays).
    fn exited_container(&self) -> TableResolver {
        TableResolver {
            running: Some(false),
            ..self.running_container()
        }
    }

    fn new() -> Fixture {
        Fixture::with_capture("")
    }

    /// With more `capture` options (`, key: value` each).
    fn with_capture(options: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let log = dir.path().join("pods/ns_web_uid/app/0.log");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        let config = Config::parse(
            &format!(
                "data_dir: {}\nsources:\n  - name: pods\n    include: [\"{}/pods/**/*.log\"]\n    format: cri\n    sink: out\n\
                 batch: {{max_lines: 1}}\nsinks:\n  out: {{type: blackhole}}\n\
                 capture: {{enabled: true, reorder_grace: 0s, repair_wait: 300ms{options}}}\n",
                data_dir.display(),
                dir.path().display()
            ),
            "test",
        )
        .unwrap();
        Fixture {
            _dir: dir,
            data_dir,
            log,
            config,
        }
    }

    fn append_cri(&self, stream: &str, lines: &[&str]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        for l in lines {
            writeln!(f, "{TS} {stream} F {l}").unwrap();
        }
    }

    fn registry(&self) -> SharedRegistry {
        Arc::new(Registry::open(&self.data_dir.join("checkpoints")).unwrap())
    }

    fn stage(
        &self,
        feed: ScriptFeed,
        resolver: TableResolver,
        registry: SharedRegistry,
    ) -> (
        CaptureStage<ScriptFeed, TableResolver>,
        Receiver<Batch>,
        Arc<Claims>,
    ) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let queues = BTreeMap::from([(Arc::<str>::from("out"), tx)]);
        let pipeline = Pipeline::new(
            &self.config,
            Router::new(&self.config.sources, &queues),
            registry.clone(),
        );
        let options = self.config.capture.clone().unwrap();
        let claims = Arc::new(Claims::new(options.source, options.claim_wait));
        let stage = CaptureStage::new(options, feed, resolver, pipeline, registry, claims.clone());
        (stage, rx, claims)
    }
}

/// Polls until `rx` delivered `n` lines (or 3 s passed); returns (stream, offset, body).
fn lines(
    stage: &mut CaptureStage<ScriptFeed, TableResolver>,
    rx: &Receiver<Batch>,
    n: usize,
) -> Vec<(Stream, u64, String)> {
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < n && start.elapsed() < Duration::from_secs(3) {
        stage.poll_once(Duration::from_millis(5)).unwrap();
        for mut batch in rx.try_iter() {
            for l in &std::mem::take(&mut batch.lines) {
                got.push((
                    l.stream,
                    l.offset,
                    String::from_utf8_lossy(batch.body(l)).into_owned(),
                ));
            }
        }
    }
    got
}

fn bodies(lines: &[(Stream, u64, String)]) -> Vec<&str> {
    lines.iter().map(|(_, _, b)| b.as_str()).collect()
}

/// The stage repaired bytes from the log, no check around a hole refused the log, and
/// nothing was given up.
fn assert_repaired_cleanly(metrics: &str) {
    assert!(
        metrics.contains("logtap_capture_repaired_bytes_total"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("logtap_capture_repair_mismatches_total"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("logtap_capture_unrepairable_bytes_total"),
        "{metrics}"
    );
}

#[test]
fn a_hole_in_the_middle_is_repaired_from_the_cri_log() {
    let fx = Fixture::new();
    fx.append_cri("stdout", &["line1", "line2", "line3"]);
    fx.append_cri("stderr", &["oops"]);
    let feed = ScriptFeed {
        rounds: VecDeque::from([
            vec![
                Scripted::Created(7, "/kubepods/podu/c1"),
                Scripted::Bound(7, Stream::Stdout),
                Scripted::Bound(7, Stream::Stderr),
            ],
            vec![
                Scripted::Data(7, Stream::Stdout, 0, b"line1\n"),
                // line2 (offsets 6..12) never arrives: the ring was full.
                Scripted::Data(7, Stream::Stdout, 12, b"line3\n"),
                Scripted::Data(7, Stream::Stderr, 0, b"oops\n"),
            ],
        ]),
        ..Default::default()
    };
    let resolver = fx.running_container();
    let (mut stage, rx, claims) = fx.stage(feed, resolver, fx.registry());
    let got = lines(&mut stage, &rx, 4);
    let stdout: Vec<_> = got
        .iter()
        .filter(|l| l.0 == Stream::Stdout)
        .cloned()
        .collect();
    assert_eq!(bodies(&stdout), ["line1", "line2", "line3"]);
    assert_eq!(
        stdout.iter().map(|l| l.1).collect::<Vec<_>>(),
        [0, 6, 12],
        "lines keep their stream offsets"
    );
    let stderr: Vec<_> = got
        .iter()
        .filter(|l| l.0 == Stream::Stderr)
        .cloned()
        .collect();
    assert_eq!(bodies(&stderr), ["oops"]);
    assert_eq!(
        claims.decide(&fx.log, None, std::time::SystemTime::now()),
        crate::capture::Claim::Skip,
        "the file source must not ship this container's log a second time"
    );
}

#[test]
fn a_log_that_does_not_line_up_with_the_stream_is_not_used_to_repair() {
    let fx = Fixture::new();
    // The container also wrote "EXTRA" by a path the probes do not trace: the log's
    // numbering is 6 bytes ahead of the kernel's from there on.
    fx.append_cri("stdout", &["line1", "EXTRA", "line2", "line3"]);
    let feed = ScriptFeed {
        rounds: VecDeque::from([vec![
            Scripted::Created(5, "/kubepods/podu/c5"),
            Scripted::Bound(5, Stream::Stdout),
            Scripted::Data(5, Stream::Stdout, 0, b"line1\n"),
            Scripted::Data(5, Stream::Stdout, 12, b"line3\n"),
        ]]),
        ..Default::default()
    };
    let resolver = fx.running_container();
    let (mut stage, rx, _) = fx.stage(feed, resolver, fx.registry());
    let got = lines(&mut stage, &rx, 2);
    assert_eq!(
        bodies(&got),
        ["line1", "line3"],
        "the hole is given up, not filled with the log's misaligned bytes"
    );
}

/// Two unsynchronised writers: the pipe (so the log) has A, B, C, but the kernel
/// numbered B before A (offsets are taken when a write returns), and A was dropped.
/// The log holds B at A's range: filling the hole from it would ship B twice and lose
/// A silently. The log's bytes before the hole (A) differ from what was handed on (B):
/// the hole is given up and counted.
#[test]
fn a_hole_beside_swapped_writes_is_given_up_not_filled_with_the_other_write() {
    assert_a_swap_is_given_up(4, ["first writer", "other writer", "third writer"]);
}

/// The same swap with lines that differ only more than 64 bytes before their end (a
/// logger's padded or suffixed lines: the racing-writers test's end in 88 dots). The
/// check before the hole must still tell A from B.
#[test]
fn a_hole_beside_swapped_writes_with_a_common_long_tail_is_given_up() {
    let tail = ".".repeat(120);
    let [a, b, c] = ["first writer", "other writer", "third writer"].map(|w| format!("{w} {tail}"));
    assert_a_swap_is_given_up(5, [&a, &b, &c]);
}

/// Container `id` wrote the lines `[a, b, c]` (of one length) to its log in that
/// order; the kernel numbered `b` at `a`'s place and dropped `a`. Only `b` and `c` are
/// shipped, once each, and `a`'s bytes are counted as unrepairable.
fn assert_a_swap_is_given_up(id: u64, [a, b, c]: [&str; 3]) {
    let fx = Fixture::new();
    fx.append_cri("stdout", &[a, b, c]);
    let n = a.len() as u64 + 1;
    let line = |s: &str| -> &'static [u8] { format!("{s}\n").leak().as_bytes() };
    let cgroup: &'static str = format!("/kubepods/podu/c{id}").leak();
    let feed = ScriptFeed {
        rounds: VecDeque::from([
            vec![
                Scripted::Created(id, cgroup),
                Scripted::Bound(id, Stream::Stdout),
                // B numbered at A's place; A (at n..2n) dropped by the ring.
                Scripted::Data(id, Stream::Stdout, 0, line(b)),
                Scripted::Data(id, Stream::Stdout, 2 * n, line(c)),
            ],
            vec![Scripted::Removed(id)],
        ]),
        finals: HashMap::from([(id, vec![(Stream::Stdout, 3 * n)])]),
        ..Default::default()
    };
    let resolver = fx.running_container();
    let (mut stage, rx, _) = fx.stage(feed, resolver, fx.registry());
    let (got, metrics) = until_ended(&mut stage, &rx, 2);
    assert!(
        rx.try_iter().all(|b| b.lines.is_empty()),
        "nothing shipped after the stream's two lines"
    );
    assert_eq!(
        bodies(&got),
        [b, c],
        "nothing shipped twice, nothing put in A's place"
    );
    assert!(
        metrics.contains("logtap_capture_repair_mismatches_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("logtap_capture_unrepairable_bytes_total {n}")),
        "{metrics}"
    );
}

/// The check of the bytes before a hole passes where nothing was swapped, also when
/// what was handed on before the hole came in several in-order runs, one longer than
/// the bytes kept.
#[test]
fn an_ordinary_hole_is_repaired_exactly_with_both_sides_checked() {
    let fx = Fixture::new();
    let long = "a line longer than the sixty-four bytes a stream keeps of what it handed on";
    fx.append_cri("stdout", &[long, "short", "lost", "after"]);
    let long_nl: &'static [u8] = format!("{long}\n").leak().as_bytes();
    let n = long_nl.len() as u64;
    let feed = ScriptFeed {
        rounds: VecDeque::from([
            vec![
                Scripted::Created(6, "/kubepods/podu/c6"),
                Scripted::Bound(6, Stream::Stdout),
                Scripted::Data(6, Stream::Stdout, 0, long_nl),
                Scripted::Data(6, Stream::Stdout, n, b"short\n"),
                Scripted::Data(6, Stream::Stdout, n + 11, b"after\n"),
            ],
            vec![Scripted::Removed(6)],
        ]),
        finals: HashMap::from([(6, vec![(Stream::Stdout, n + 17)])]),
        ..Default::default()
    };
    let resolver = fx.running_container();
    let (mut stage, rx, _) = fx.stage(feed, resolver, fx.registry());
    let (got, metrics) = until_ended(&mut stage, &rx, 4);
    assert_eq!(bodies(&got), [long, "short", "lost", "after"]);
    assert_repaired_cleanly(&metrics);
}

/// The log reader only moves forward: after a first repair it stays at the line the
/// check after that hole read into, past where the next hole's check before would
/// start. Only the bytes it can still give are compared, and the second hole is
/// repaired exactly too.
#[test]
fn a_hole_the_reader_is_already_past_the_start_of_the_check_before_is_repaired() {
    let fx = Fixture::new();
    fx.append_cri("stdout", &["alpha", "bravo", "delta", "gamma"]);
    let feed = ScriptFeed {
        rounds: VecDeque::from([
            vec![
                Scripted::Created(8, "/kubepods/podu/c8"),
                Scripted::Bound(8, Stream::Stdout),
                Scripted::Data(8, Stream::Stdout, 0, b"alpha\n"),
                // "bravo" dropped, and the end of "delta": the check after the first hole
                // reads into "delta" only, so the reader stays at its start (12), past
                // where the second hole's check before starts (0). It compares the
                // bytes it can still give, "del".
                Scripted::Data(8, Stream::Stdout, 12, b"del"),
                Scripted::Data(8, Stream::Stdout, 18, b"gamma\n"),
            ],
            vec![Scripted::Removed(8)],
        ]),
        finals: HashMap::from([(8, vec![(Stream::Stdout, 24)])]),
        ..Default::default()
    };
    let resolver = fx.running_container();
    let (mut stage, rx, _) = fx.stage(feed, resolver, fx.registry());
    let (got, metrics) = until_ended(&mut stage, &rx, 4);
    assert_eq!(bodies(&got), ["alpha", "bravo", "delta", "gamma"]);
    assert_eq!(got.iter().map(|l| l.1).collect::<Vec<_>>(), [0, 6, 12, 18]);
    assert_repaired_cleanly(&metrics);
}

#[test]
fn a_hole_at_the_end_is_found_when_the_container_goes_away() {
    let fx = Fixture::new();
    fx.append_cri("stdout", &["first", "lost at the end"]);
    let feed = ScriptFeed {
        rounds: VecDeque::from([
            vec![
                Scripted::Created(3, "/kubepods/podu/c3"),
                Scripted::Bound(3, Stream::Stdout),
                Scripted::Data(3, Stream::Stdout, 0, b"first\n"),
            ],
            vec![Scripted::Removed(3)],
        ]),
        ..Default::default()
    };
    let resolver = fx.exited_container();
    let registry = fx.registry();
    let (mut stage, rx, _) = fx.stage(feed, resolver, registry.clone());
    let got = lines(&mut stage, &rx, 2);
    assert_eq!(bodies(&got), ["first", "lost at the end"]);
    // The stream ends once the log stopped growing; its checkpoint stays, closed.
    let start = Instant::now();
    while !stage.streams.is_empty() && start.elapsed() < Duration::from_secs(3) {
        stage.poll_once(Duration::from_millis(5)).unwrap();
    }
    assert!(
        stage.streams.is_empty(),
        "the stream of a removed cgroup ends"
    );
    assert_eq!(stage.feed.forgotten, [3]);
}

/// Polls until every stream ended (or 3 s passed); returns the lines shipped and the
/// metrics rendered.
fn until_ended(
    stage: &mut CaptureStage<ScriptFeed, TableResolver>,
    rx: &Receiver<Batch>,
    n: usize,
) -> (Vec<(Stream, u64, String)>, String) {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let got = metrics::with_local_recorder(&recorder, || {
        let got = lines(stage, rx, n);
        let start = Instant::now();
        while !stage.streams.is_empty() && start.elapsed() < Duration::from_secs(3) {
            stage.poll_once(Duration::from_millis(5)).unwrap();
        }
        got
    });
    assert!(
        stage.streams.is_empty(),
        "the streams of a removed cgroup end"
    );
    (got, handle.render())
}

#[test]
fn a_stream_that_reached_the_kernel_s_final_offset_ends_without_reading_its_log() {
    let fx = Fixture::new();
    // Unreadable as a log: any read of it fails, so a stream that ends cleanly did not
    // need it (a read would also have failed until `repair_wait`, then ended it as
    // `log_read`).
    std::fs::create_dir_all(&fx.log).unwrap();
    let feed = ScriptFeed {
        rounds: VecDeque::from([
            vec![
                Scripted::Created(3, "/kubepods/podu/c3"),
                Scripted::Bound(3, Stream::Stdout),
                Scripted::Bound(3, Stream::Stderr),
                Scripted::Data(3, Stream::Stdout, 0, b"first\n"),
                Scripted::Data(3, Stream::Stdout, 6, b"second\n"),
            ],
            vec![Scripted::Removed(3)],
        ]),
        // Stderr was never written to.
        finals: HashMap::from([(3, vec![(Stream::Stdout, 13), (Stream::Stderr, 0)])]),
        ..Default::default()
    };
    let resolver = fx.exited_container();
    let registry = fx.registry();
    let (mut stage, rx, _) = fx.stage(feed, resolver, registry.clone());
    let (got, metrics) = until_ended(&mut stage, &rx, 2);
    assert_eq!(bodies(&got), ["first", "second"]);
    assert!(
        metrics.contains(r#"logtap_capture_stream_ends_total{how="kernel_offset"} 2"#),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"how="log_read""#), "{metrics}");
    assert!(
        !metrics.contains("logtap_capture_unrepairable_bytes_total"),
        "{metrics}"
    );
    assert_eq!(stage.feed.forgotten, [3]);
}

#[test]
fn a_trailing_drop_short_of_the_kernel_s_final_offset_is_read_from_the_log() {
    let fx = Fixture::new();
    fx.append_cri("stdout", &["first", "second", "lost at the end"]);
    let feed = ScriptFeed {
        rounds: VecDeque::from([
            vec![
                Scripted::Created(3, "/kubepods/podu/c3"),
                Scripted::Bound(3, Stream::Stdout),
                Scripted::Bound(3, Stream::Stderr),
                Scripted::Data(3, Stream::Stdout, 0, b"first\n"),
                Scripted::Data(3, Stream::Stdout, 6, b"second\n"),
                // "lost at the end\n" (13..29) was dropped: the ring was full.
            ],
            vec![Scripted::Removed(3)],
        ]),
        finals: HashMap::from([(3, vec![(Stream::Stdout, 29), (Stream::Stderr, 0)])]),
        ..Default::default()
    };
    let resolver = fx.exited_container();
    let (mut stage, rx, _) = fx.stage(feed, resolver, fx.registry());
    let (got, metrics) = until_ended(&mut stage, &rx, 3);
    assert_eq!(bodies(&got), ["first", "second", "lost at the end"]);
    assert_eq!(got[2].1, 13, "at its stream offset");
    assert!(
        metrics.contains(r#"logtap_capture_stream_ends_total{how="log_read"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"logtap_capture_stream_ends_total{how="kernel_offset"} 1"#),
        "stderr, never written to, needs no read: {metrics}"
    );
    assert!(
        metrics.contains("logtap_capture_repaired_bytes_total 16"),
        "{metrics}"
    );
}

#[test]
fn a_trailing_drop_the_log_does_not_have_is_counted_as_lost() {
    let fx = Fixture::new();
    fx.append_cri("stdout", &["first", "second"]);
    let feed = ScriptFeed {
        rounds: VecDeque::from([
            vec![
                Scripted::Created(3, "/kubepods/podu/c3"),
                Scripted::Bound(3, Stream::Stdout),
                Scripted::Data(3, Stream::Stdout, 0, b"first\n"),
                Scripted::Data(3, Stream::Stdout, 6, b"second\n"),
            ],
            vec![Scripted::Removed(3)],
        ]),
        // 16 bytes after "second" were accepted by the kernel, dropped by the ring,
        // and never reach the log (a log lost or cut short).
        finals: HashMap::from([(3, vec![(Stream::Stdout, 29)])]),
        ..Default::default()
    };
    let resolver = fx.exited_container();
    let (mut stage, rx, _) = fx.stage(feed, resolver, fx.registry());
    let (got, metrics) = until_ended(&mut stage, &rx, 2);
    assert_eq!(bodies(&got), ["first", "second"]);
    assert!(
        metrics.contains("logtap_capture_unrepairable_bytes_total 16"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"logtap_capture_stream_ends_total{how="log_read"} 1"#),
        "{metrics}"
    );
}

#[test]
fn a_hole_the_log_cannot_fill_is_given_up_without_gluing_lines() {
    let fx = Fixture::new();
    let feed = ScriptFeed {
        rounds: VecDeque::from([vec![
            Scripted::Created(9, "/kubepods/podu/c9"),
            Scripted::Bound(9, Stream::Stdout),
            Scripted::Data(9, Stream::Stdout, 0, b"before the hole "),
            Scripted::Data(9, Stream::Stdout, 40, b"after\n"),
        ]]),
        ..Default::default()
    };
    // No CRI log known: nothing can repair the hole.
    let resolver = TableResolver {
        log_path: None,
        running: Some(true),
        selected: true,
    };
    let (mut stage, rx, _) = fx.stage(feed, resolver, fx.registry());
    let got = lines(&mut stage, &rx, 2);
    assert_eq!(bodies(&got), ["before the hole ", "after"]);
    assert_eq!(got[1].1, 40);
}

#[test]
fn a_stream_checkpointed_by_an_earlier_run_continues_from_its_log() {
    let fx = Fixture::new();
    fx.append_cri("stdout", &["shipped before", "written while down"]);
    // An earlier run shipped the first line (6 + 8 = 15 bytes) and checkpointed it.
    checkpoint_stdout(&fx, 15);
    let resolver = fx.running_container();
    let registry = fx.registry();
    let (mut stage, rx, claims) = fx.stage(ScriptFeed::default(), resolver, registry.clone());
    assert!(claims.is_claimed(&fx.log));
    let got = lines(&mut stage, &rx, 1);
    assert_eq!(bodies(&got), ["written while down"]);
    assert_eq!(got[0].1, 15);
    fx.append_cri("stdout", &["and after"]);
    let got = lines(&mut stage, &rx, 1);
    assert_eq!(bodies(&got), ["and after"]);
    // The run ends: the stream is read to the end of its log and closed.
    stage.resolver.running = Some(false);
    let start = Instant::now();
    while !stage.streams.is_empty() && start.elapsed() < Duration::from_secs(3) {
        stage.poll_once(Duration::from_millis(5)).unwrap();
    }
    assert!(stage.streams.is_empty());
}

/// The container's removal record was lost (a full ring buffer drops lifecycle
/// records too; here the script simply never delivers it): once its cgroup's
/// directory is gone, the stream ends as the record would have ended it — the tail
/// hole read back from the CRI log, the kernel's entries forgotten.
#[test]
fn a_lost_removal_record_is_inferred_from_the_cgroup_directory_gone() {
    let fx = Fixture::new();
    fx.append_cri("stdout", &["first", "lost at the end"]);
    let root = tempfile::tempdir().unwrap();
    let cgroup = root.path().join("kubepods/podu/c4");
    std::fs::create_dir_all(&cgroup).unwrap();
    let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cgroup).unwrap());
    let feed = ScriptFeed {
        rounds: VecDeque::from([vec![
            Scripted::Created(id, "/kubepods/podu/c4"),
            Scripted::Bound(id, Stream::Stdout),
            Scripted::Data(id, Stream::Stdout, 0, b"first\n"),
        ]]),
        ..Default::default()
    };
    let resolver = fx.exited_container();
    let (mut stage, rx, _) = fx.stage(feed, resolver, fx.registry());
    stage.set_cgroup_root(Some(root.path().to_path_buf()));
    assert_eq!(bodies(&lines(&mut stage, &rx, 1)), ["first"]);
    // Still there: a sweep leaves it alone.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        stage.poll_once(Duration::from_millis(5)).unwrap();
    }
    assert_eq!(stage.streams.len(), 1, "a live container's stream ended");
    std::fs::remove_dir(&cgroup).unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    while !stage.streams.is_empty() && start.elapsed() < Duration::from_secs(10) {
        got.extend(lines(&mut stage, &rx, 1));
    }
    assert_eq!(
        bodies(&got),
        ["lost at the end"],
        "the tail hole is repaired"
    );
    assert!(
        stage.streams.is_empty(),
        "the stream of a cgroup gone without its removal record never ends"
    );
    assert_eq!(
        stage.feed.forgotten,
        [id],
        "the kernel's entries are forgotten"
    );
    assert!(stage.cgroups.is_empty());
}

/// A container running before the agent: a fake `/proc` with its init process
/// (stdout: a real pipe of 4 KiB, so the seam's window is 4 + 192 KiB), its cgroup
/// directory, and its CRI log holding `before` stdout lines.
struct Running {
    _dir: tempfile::TempDir,
    proc: PathBuf,
    root: PathBuf,
    cgroup_id: u64,
    _pipe: (std::io::PipeReader, std::io::PipeWriter),
}

impl Running {
    fn new() -> Running {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (proc, root) = (dir.path().join("proc"), dir.path().join("cgroup"));
        let cgroup = root.join("kubepods/podu/c9");
        std::fs::create_dir_all(&cgroup).unwrap();
        let pid = proc.join("42");
        std::fs::create_dir_all(pid.join("fd")).unwrap();
        std::fs::write(pid.join("cgroup"), "0::/kubepods/podu/c9\n").unwrap();
        let fields = "S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 1 1";
        std::fs::write(pid.join("stat"), format!("42 (sh) {fields}\n")).unwrap();
        let pipe = std::io::pipe().unwrap();
        // SAFETY: a pipe fd this test owns.
        unsafe { libc::fcntl(pipe.1.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        for fd in ["1", "2"] {
            let target = format!("/proc/self/fd/{}", pipe.1.as_raw_fd());
            std::os::unix::fs::symlink(target, pid.join("fd").join(fd)).unwrap();
        }
        Running {
            cgroup_id: std::fs::metadata(&cgroup).unwrap().ino(),
            _dir: dir,
            proc,
            root,
            _pipe: pipe,
        }
    }
}

fn numbered_lines(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("line {i}")).collect()
}

/// `lines` as captured records of stream offsets from `k`, one write each.
fn captured(cgroup_id: u64, k: u64, lines: &[String]) -> Vec<Scripted> {
    let mut k = k;
    lines
        .iter()
        .map(|l| {
            let bytes: &'static [u8] = Box::leak(format!("{l}\n").into_bytes().into_boxed_slice());
            let record = Scripted::Data(cgroup_id, Stream::Stdout, k, bytes);
            k += bytes.len() as u64;
            record
        })
        .collect()
}

fn stream_len(lines: &[String]) -> u64 {
    lines.iter().map(|l| l.len() as u64 + 1).sum()
}

#[test]
fn the_end_read_after_a_repair_reads_the_log_from_the_kept_position_not_from_its_start() {
    let fx = Fixture::new();
    let all = numbered_lines(0..20_000);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    fx.append_cri("stdout", &refs);
    let file_len = std::fs::metadata(&fx.log).unwrap().len();
    // Line 5000 dropped in the kernel (repaired in the middle of the run), and the
    // last line too (read at the end, the stream short of the kernel's final offset).
    let mut round = vec![
        Scripted::Created(3, "/kubepods/podu/c3"),
        Scripted::Bound(3, Stream::Stdout),
    ];
    round.extend(captured(3, 0, &all[..5000]));
    round.extend(captured(3, stream_len(&all[..5001]), &all[5001..19_999]));
    let feed = ScriptFeed {
        rounds: VecDeque::from([round, vec![], vec![Scripted::Removed(3)]]),
        finals: HashMap::from([(3, vec![(Stream::Stdout, stream_len(&all))])]),
        ..Default::default()
    };
    let resolver = fx.exited_container();
    let (mut stage, rx, _) = fx.stage(feed, resolver, fx.registry());
    let (got, metrics) = until_ended(&mut stage, &rx, all.len());
    assert_eq!(bodies(&got), refs);
    assert_repaired_cleanly(&metrics);
    // The repair parsed the log up to line 5000 once; the end read went on from there.
    // Read from the log's start again, it would have read 5000 lines more.
    let read = stage.read_block.bytes_read();
    assert!(
        read < file_len + file_len / 10,
        "{read} bytes read for a {file_len}-byte log"
    );
}

#[test]
fn a_running_container_is_shipped_from_its_log_then_from_capture_at_the_seam() {
    let fx = Fixture::new();
    let running = Running::new();
    let all = numbered_lines(0..30_000);
    // 1000 lines logged at the bind, 100 more in flight; from line 1100 on the
    // kernel numbers the stream from 0. The log gets everything but the last 500
    // lines, which only capture can ship.
    fx.append_cri(
        "stdout",
        &all[..1000].iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let resolver = fx.running_container();
    let (mut stage, rx, claims) = fx.stage(ScriptFeed::default(), resolver, fx.registry());
    stage.set_cgroup_root(Some(running.root.clone()));
    stage.bind_running(&running.proc);
    assert!(
        claims.is_claimed(&fx.log),
        "the file source must leave the log alone"
    );
    fx.append_cri(
        "stdout",
        &all[1000..29_500]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    stage
        .feed
        .rounds
        .push_back(captured(running.cgroup_id, 0, &all[1100..]));
    let got = lines(&mut stage, &rx, all.len());
    assert_eq!(
        bodies(&got),
        all.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let mut offset = 0;
    for (line, (_, at, _)) in all.iter().zip(&got) {
        assert_eq!(*at, offset, "{line} at its stream offset");
        offset += line.len() as u64 + 1;
    }
    let entry = stage
        .streams
        .values()
        .find(|e| e.stream == Stream::Stdout)
        .unwrap();
    assert_eq!(entry.base, stream_len(&all[..1100]), "the seam is B₀");
    assert!(entry.seam.is_none() && !entry.log_only);
}

#[test]
fn a_running_container_repeating_itself_stays_on_its_log() {
    let fx = Fixture::new();
    let running = Running::new();
    // The same line over and over: the captured bytes fit anywhere in the window.
    let all: Vec<String> = vec!["ok".to_string(); 80_000];
    fx.append_cri(
        "stdout",
        &all[..1000].iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let resolver = fx.running_container();
    let (mut stage, rx, _) = fx.stage(ScriptFeed::default(), resolver, fx.registry());
    stage.set_cgroup_root(Some(running.root.clone()));
    stage.bind_running(&running.proc);
    fx.append_cri(
        "stdout",
        &all[1000..79_000]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    // Captured: more than the log holds; none of it may be shipped.
    stage
        .feed
        .rounds
        .push_back(captured(running.cgroup_id, 0, &all[1100..]));
    let got = lines(&mut stage, &rx, all.len());
    assert_eq!(
        got.len(),
        79_000,
        "the log's lines, each once, and nothing captured"
    );
    let entry = stage
        .streams
        .values()
        .find(|e| e.stream == Stream::Stdout)
        .unwrap();
    assert!(entry.log_only, "no exact seam: the stream stays on its log");
}

#[test]
fn a_stream_whose_binding_record_was_lost_is_bound_by_its_first_bytes() {
    let fx = Fixture::new();
    fx.append_cri("stdout", &["line1", "line2"]);
    // A full ring lost the binding record, and the first write's record with it.
    let feed = ScriptFeed {
        rounds: VecDeque::from([
            vec![Scripted::Created(8, "/kubepods/podu/c8")],
            vec![Scripted::Data(8, Stream::Stdout, 6, b"line2\n")],
        ]),
        ..Default::default()
    };
    let resolver = fx.running_container();
    let (mut stage, rx, claims) = fx.stage(feed, resolver, fx.registry());
    let got = lines(&mut stage, &rx, 2);
    assert_eq!(bodies(&got), ["line1", "line2"]);
    assert!(claims.is_claimed(&fx.log));
}

#[test]
fn a_container_capture_s_source_does_not_select_is_left_to_its_log() {
    let fx = Fixture::new();
    fx.append_cri("stdout", &["line1", "line2"]);
    let feed = ScriptFeed {
        rounds: VecDeque::from([
            vec![
                Scripted::Created(9, "/kubepods/podu/c9"),
                Scripted::Bound(9, Stream::Stdout),
            ],
            vec![
                Scripted::Data(9, Stream::Stdout, 0, b"line1\n"),
                Scripted::Data(9, Stream::Stdout, 6, b"line2\n"),
            ],
        ]),
        ..Default::default()
    };
    let resolver = TableResolver {
        log_path: Some(fx.log.clone()),
        running: Some(true),
        selected: false,
    };
    let (mut stage, rx, claims) = fx.stage(feed, resolver, fx.registry());
    let got = lines(&mut stage, &rx, 1);
    assert!(got.is_empty(), "nothing captured: {got:?}");
    assert!(stage.streams.is_empty() && stage.bound.is_empty());
    assert_eq!(
        stage.declined.len(),
        1,
        "declined once, not asked again per record"
    );
    assert_eq!(
        stage.feed.declined,
        [(9, Stream::Stdout)],
        "the kernel is told to stop copying the stream"
    );
    assert_ne!(
        claims.decide(&fx.log, None, std::time::SystemTime::now()),
        crate::capture::Claim::Skip,
        "the log is not claimed: the configs selecting the container read it"
    );
}

#[test]
fn over_the_node_wide_budget_the_stream_holding_most_spills_to_its_log() {
    // 12 bytes wait behind stdout's hole and 5 behind stderr's: 17 over a budget
    // of 10. Stdout, holding the most, spills; stderr keeps its 5.
    let fx = Fixture::with_capture(", max_buffered: 10B, max_pending: 1MiB");
    fx.append_cri("stdout", &["line1", "line2", "line3", "line4"]);
    fx.append_cri("stderr", &["errA", "errB"]);
    let feed = ScriptFeed {
        rounds: VecDeque::from([
            vec![
                Scripted::Created(7, "/kubepods/podu/c1"),
                Scripted::Bound(7, Stream::Stdout),
                Scripted::Bound(7, Stream::Stderr),
            ],
            vec![
                Scripted::Data(7, Stream::Stdout, 0, b"line1\n"),
                Scripted::Data(7, Stream::Stdout, 12, b"line3\nline4\n"),
                Scripted::Data(7, Stream::Stderr, 5, b"errB\n"),
            ],
        ]),
        ..Default::default()
    };
    let resolver = fx.running_container();
    let (mut stage, rx, _) = fx.stage(feed, resolver, fx.registry());
    stage.poll_once(Duration::from_millis(5)).unwrap();
    stage.poll_once(Duration::from_millis(5)).unwrap();
    let pending = |stage: &CaptureStage<ScriptFeed, TableResolver>, stream| {
        let entry = stage.streams.values().find(|e| e.stream == stream).unwrap();
        (
            entry.assembler.pending_bytes(),
            entry.follow_until.is_some(),
        )
    };
    assert_eq!(pending(&stage, Stream::Stdout), (0, true), "stdout spilled");
    assert_eq!(pending(&stage, Stream::Stderr), (5, false), "stderr kept");
    assert!(
        stage
            .streams
            .values()
            .map(StreamEntry::buffered)
            .sum::<usize>()
            <= 10
    );
    // The log supplies what was spilled: every line once, in order.
    let got = lines(&mut stage, &rx, 6);
    let of = |stream| {
        got.iter()
            .filter(|l| l.0 == stream)
            .map(|l| (l.1, l.2.as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(Stream::Stdout),
        [(0, "line1"), (6, "line2"), (12, "line3"), (18, "line4")]
    );
    assert_eq!(of(Stream::Stderr), [(0, "errA"), (5, "errB")]);
}

/// A stream whose log runs behind its ring records for longer than `repair_wait`
/// (300 ms here), every third line captured and the rest dropped (a ring that
/// overflows), so a hole stays open all along while the log, one line at a time,
/// moves its start on: none of it is given up. Found at 200 writers × 500 kB/s
/// with a smaller `max_buffered`: the hole was aged from when the first one opened,
/// so a stream that stayed behind its ring lost bytes its log was still delivering.
#[test]
fn a_hole_whose_start_the_log_keeps_moving_is_not_given_up_after_repair_wait() {
    let fx = Fixture::new();
    let all = numbered_lines(0..60);
    let at = |k: usize| stream_len(&all[..k]);
    let feed = ScriptFeed {
        rounds: VecDeque::from([vec![
            Scripted::Created(7, "/kubepods/podu/c1"),
            Scripted::Bound(7, Stream::Stdout),
        ]]),
        ..Default::default()
    };
    let resolver = fx.running_container();
    let (mut stage, rx, _) = fx.stage(feed, resolver, fx.registry());
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let started = Instant::now();
    let got = metrics::with_local_recorder(&recorder, || {
        stage.poll_once(Duration::from_millis(5)).unwrap();
        for i in 0..all.len() {
            // The ring is six lines ahead of the log, and keeps every third line.
            let ahead = i + 6;
            if ahead < all.len() && ahead % 3 == 0 {
                let round = captured(7, at(ahead), &all[ahead..=ahead]);
                stage.feed.rounds.push_back(round);
            }
            fx.append_cri("stdout", &[all[i].as_str()]);
            stage.poll_once(Duration::from_millis(5)).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        // The last line captured too: the hole before it is the stream's last.
        let last = all.len() - 1;
        let round = captured(7, at(last), &all[last..]);
        stage.feed.rounds.push_back(round);
        lines(&mut stage, &rx, all.len())
    });
    assert!(
        started.elapsed() > Duration::from_millis(600),
        "the log stayed behind for twice `repair_wait`"
    );
    assert_eq!(
        bodies(&got),
        all.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_repaired_cleanly(&handle.render());
}

/// A container whose creation and binding records a full ring lost: its records
/// name a cgroup the stage never heard of. The kernel copies only the writes of
/// cgroups it watches, below the prefix, so it is looked for there by its id (its
/// directory's inode): found, its stream is bound by its next records, and the
/// bytes dropped before (counted as unbound) are read back from its CRI log. Before,
/// its records were all dropped as unbound (at 200 writers × 500 kB/s on a loaded
/// machine, up to 93 of 200 writers were never captured).
#[test]
fn a_cgroup_whose_creation_record_was_lost_is_found_by_its_id_and_captured() {
    let fx = Fixture::new();
    let running = Running::new();
    let id = running.cgroup_id;
    let all = numbered_lines(0..20);
    fx.append_cri(
        "stdout",
        &all.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let feed = ScriptFeed {
        rounds: VecDeque::from([captured(id, 0, &all[..10])]),
        finals: HashMap::from([(id, vec![(Stream::Stdout, stream_len(&all))])]),
        ..Default::default()
    };
    let resolver = fx.running_container();
    let (mut stage, rx, _) = fx.stage(feed, resolver, fx.registry());
    stage.set_cgroup_root(Some(running.root.clone()));
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        stage.poll_once(Duration::from_millis(5)).unwrap();
        assert!(stage.streams.is_empty(), "nothing known of the cgroup yet");
        // The next tick looks it up.
        std::thread::sleep(Duration::from_millis(60));
        stage.poll_once(Duration::from_millis(5)).unwrap();
    });
    assert_eq!(
        stage.cgroups.get(&id).map(Vec::as_slice),
        Some(b"/kubepods/podu/c9".as_slice())
    );
    let more = captured(id, stream_len(&all[..10]), &all[10..]);
    stage.feed.rounds.push_back(more);
    stage.feed.rounds.push_back(vec![Scripted::Removed(id)]);
    let (got, metrics) = until_ended(&mut stage, &rx, all.len());
    assert_eq!(
        bodies(&got),
        all.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_repaired_cleanly(&metrics);
    assert!(
        handle
            .render()
            .contains("logtap_capture_unbound_records_total 10"),
        "{}",
        handle.render()
    );
}

/// The binding record of a container whose creation record was lost: the cgroup is
/// looked for at once, so the stream is bound to its container and its CRI log (its
/// holes repairable), not to a cgroup with no path. Seen at 200 writers × 500 kB/s:
/// two streams bound to no log, 3.3 MB given up.
#[test]
fn a_binding_record_without_its_creation_record_finds_the_cgroup_by_its_id() {
    let fx = Fixture::new();
    let running = Running::new();
    let id = running.cgroup_id;
    fx.append_cri("stdout", &["line1", "line2", "line3"]);
    let feed = ScriptFeed {
        rounds: VecDeque::from([
            vec![
                Scripted::Bound(id, Stream::Stdout),
                Scripted::Data(id, Stream::Stdout, 0, b"line1\n"),
                Scripted::Data(id, Stream::Stdout, 12, b"line3\n"),
            ],
            vec![Scripted::Removed(id)],
        ]),
        finals: HashMap::from([(id, vec![(Stream::Stdout, 18)])]),
        ..Default::default()
    };
    let (mut stage, rx, _) = fx.stage(feed, fx.running_container(), fx.registry());
    stage.set_cgroup_root(Some(running.root.clone()));
    stage.poll_once(Duration::from_millis(5)).unwrap();
    assert_eq!(
        stage.cgroups.get(&id).map(Vec::as_slice),
        Some(b"/kubepods/podu/c9".as_slice())
    );
    let (got, metrics) = until_ended(&mut stage, &rx, 3);
    assert_eq!(bodies(&got), ["line1", "line2", "line3"]);
    assert_repaired_cleanly(&metrics);
}

#[test]
fn over_the_node_wide_budget_a_stream_waiting_for_its_seam_drops_its_oldest_held_records() {
    let fx = Fixture::with_capture(", max_buffered: 64KiB");
    let running = Running::new();
    let all = numbered_lines(0..30_000);
    fx.append_cri(
        "stdout",
        &all[..1000].iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let resolver = fx.running_container();
    let (mut stage, rx, _) = fx.stage(ScriptFeed::default(), resolver, fx.registry());
    stage.set_cgroup_root(Some(running.root.clone()));
    stage.bind_running(&running.proc);
    // 300 KB captured while the log has not reached the seam's window yet: it waits
    // for the seam, within the node-wide bound.
    stage
        .feed
        .rounds
        .push_back(captured(running.cgroup_id, 0, &all[1100..]));
    stage.poll_once(Duration::from_millis(5)).unwrap();
    let entry = stage
        .streams
        .values()
        .find(|e| e.stream == Stream::Stdout)
        .unwrap();
    let held = entry.seam.as_ref().expect("the seam is not decided yet");
    assert!(
        held.held_bytes > 0 && held.held_bytes <= 64 << 10,
        "held {} bytes",
        held.held_bytes
    );
    assert!(
        stage
            .streams
            .values()
            .map(StreamEntry::buffered)
            .sum::<usize>()
            <= 64 << 10
    );
    // The newest are kept (only capture may have them); the oldest come from the log.
    fx.append_cri(
        "stdout",
        &all[1000..29_500]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let got = lines(&mut stage, &rx, all.len());
    assert_eq!(
        bodies(&got),
        all.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

/// The stage's pipeline, recording every chunk handed to it: source, offset, length.
struct Recording {
    inner: Pipeline,
    chunks: Arc<std::sync::Mutex<Vec<(SourceId, u64, usize)>>>,
}

impl Input for Recording {
    fn opened(&mut self, opening: Opening) {
        self.inner.opened(opening);
    }

    fn data(&mut self, source: SourceId, offset: u64, chunk: Bytes, written_ns: Option<i64>) {
        self.chunks
            .lock()
            .unwrap()
            .push((source, offset, chunk.len()));
        self.inner.data(source, offset, chunk, written_ns);
    }

    fn gap(&mut self, source: SourceId, offset: u64) {
        self.inner.gap(source, offset);
    }

    fn ended(&mut self, source: SourceId, reason: EndReason) {
        self.inner.ended(source, reason);
    }

    fn tick(&mut self, now: Instant) {
        self.inner.tick(now);
    }

    fn bound_open_packages(&mut self, bytes: usize) {
        self.inner.bound_open_packages(bytes);
    }
}

/// The stage bounds what its streams' open packages hold together, once, before any
/// stream opens (the bound itself: `pipeline::tests::open_packages_are_bounded_together_oldest_shipped_first`).
#[test]
fn the_stage_bounds_its_streams_open_packages_before_any_opens() {
    /// Remembers the bound asked for, and whether a source had opened before.
    #[derive(Default)]
    struct Bound(Arc<std::sync::Mutex<(Option<usize>, bool)>>);
    impl Input for Bound {
        fn opened(&mut self, _: Opening) {
            self.0.lock().unwrap().1 = true;
        }
        fn data(&mut self, _: SourceId, _: u64, _: Bytes, _: Option<i64>) {}
        fn gap(&mut self, _: SourceId, _: u64) {}
        fn ended(&mut self, _: SourceId, _: EndReason) {}
        fn tick(&mut self, _: Instant) {}
        fn bound_open_packages(&mut self, bytes: usize) {
            let mut seen = self.0.lock().unwrap();
            assert!(!seen.1, "asked after a source opened");
            seen.0 = Some(bytes);
        }
    }
    let fx = Fixture::new();
    let seen = Bound::default();
    let asked = seen.0.clone();
    let options = fx.config.capture.clone().unwrap();
    let claims = Arc::new(Claims::new(options.source, options.claim_wait));
    let _stage = CaptureStage::new(
        options,
        ScriptFeed::default(),
        fx.running_container(),
        seen,
        fx.registry(),
        claims,
    );
    assert_eq!(asked.lock().unwrap().0, Some(OPEN_PACKAGE_BYTES));
}

/// A stage whose pipeline records every chunk handed to it.
#[expect(clippy::type_complexity, reason = "a test fixture's tuple, used twice")]
fn recording_stage(
    fx: &Fixture,
    feed: ScriptFeed,
) -> (
    CaptureStage<ScriptFeed, TableResolver>,
    Receiver<Batch>,
    Arc<std::sync::Mutex<Vec<(SourceId, u64, usize)>>>,
) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let queues = BTreeMap::from([(Arc::<str>::from("out"), tx)]);
    let registry = fx.registry();
    let chunks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let pipeline = Recording {
        inner: Pipeline::new(
            &fx.config,
            Router::new(&fx.config.sources, &queues),
            registry.clone(),
        ),
        chunks: chunks.clone(),
    };
    let options = fx.config.capture.clone().unwrap();
    let claims = Arc::new(Claims::new(options.source, options.claim_wait));
    let stage = CaptureStage::new(
        options,
        feed,
        fx.running_container(),
        pipeline,
        registry,
        claims,
    );
    (stage, rx, chunks)
}

/// 8000 lines of 100 bytes in the container's CRI log, of which the ring brought only
/// the first and the last: a hole of about 800 KB, several repair steps, between them.
struct LargeHole {
    all: Vec<String>,
    first: &'static [u8],
    last: &'static [u8],
    /// The stream offset of the last line: where the hole ends.
    hole_end: u64,
}

impl LargeHole {
    fn logged(fx: &Fixture) -> Self {
        let all: Vec<String> = (0..8000).map(|i| format!("line {i:0>94}")).collect();
        fx.append_cri(
            "stdout",
            &all.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let leak = |line: &str| -> &'static [u8] {
            Box::leak(format!("{line}\n").into_bytes().into_boxed_slice())
        };
        LargeHole {
            first: leak(&all[0]),
            last: leak(&all[7999]),
            hole_end: stream_len(&all[..7999]),
            all,
        }
    }
}

#[test]
fn a_large_hole_is_read_back_in_bounded_steps_of_joined_lines() {
    let fx = Fixture::new();
    let LargeHole {
        all,
        first,
        last,
        hole_end,
    } = LargeHole::logged(&fx);
    let feed = ScriptFeed {
        rounds: VecDeque::from([vec![
            Scripted::Created(7, "/kubepods/podu/c1"),
            Scripted::Bound(7, Stream::Stdout),
            Scripted::Data(7, Stream::Stdout, 0, first),
            // 800 KB lost in between (a ring overflow): more than three steps.
            Scripted::Data(7, Stream::Stdout, hole_end, last),
        ]]),
        ..Default::default()
    };
    let (mut stage, rx, chunks) = recording_stage(&fx, feed);
    let got = lines(&mut stage, &rx, all.len());
    assert_eq!(
        bodies(&got),
        all.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let chunks: Vec<usize> = chunks.lock().unwrap().iter().map(|c| c.2).collect();
    assert!(
        chunks.iter().all(|&n| n as u64 <= REPAIR_STEP_BYTES),
        "every step is at most {REPAIR_STEP_BYTES} bytes: {chunks:?}"
    );
    assert!(
        chunks.len() < all.len() / 50,
        "the log's lines are joined, not handed on one by one: {} chunks",
        chunks.len()
    );
    assert_eq!(chunks.iter().sum::<usize>() as u64, stream_len(&all));
}

#[test]
fn the_ring_is_drained_between_two_repair_steps() {
    let fx = Fixture::new();
    let LargeHole {
        all,
        first,
        last,
        hole_end,
    } = LargeHole::logged(&fx);
    let feed = ScriptFeed {
        rounds: VecDeque::from([vec![
            Scripted::Created(7, "/kubepods/podu/c1"),
            Scripted::Bound(7, Stream::Stdout),
            Scripted::Bound(7, Stream::Stderr),
            Scripted::Data(7, Stream::Stdout, 0, first),
            // 800 KB lost: four steps.
            Scripted::Data(7, Stream::Stdout, hole_end, last),
        ]]),
        // The ring fills while the stage repairs.
        while_repairing: vec![Scripted::Data(7, Stream::Stderr, 0, b"meanwhile\n")],
        ..Default::default()
    };
    let (mut stage, rx, chunks) = recording_stage(&fx, feed);
    let got = lines(&mut stage, &rx, all.len() + 1);
    assert_eq!(got.len(), all.len() + 1);
    let chunks = chunks.lock().unwrap();
    let stdout = chunks[0].0;
    let stderr_at = chunks
        .iter()
        .position(|c| c.0 != stdout)
        .expect("the stderr line was handed on");
    let repaired: Vec<usize> = (0..chunks.len())
        .filter(|&i| chunks[i].0 == stdout && chunks[i].1 > 0)
        .collect();
    assert!(
        repaired[0] < stderr_at && stderr_at < *repaired.last().unwrap(),
        "the ring's records came between the hole's steps: {chunks:?}"
    );
}

/// Prometheus's recorder, counting the registrations made through it: each
/// `metrics::counter!` / `gauge!` call is one (a hashed lookup in its registry).
struct CountingRecorder {
    inner: metrics_exporter_prometheus::PrometheusRecorder,
    registrations: std::sync::atomic::AtomicUsize,
}

impl CountingRecorder {
    fn new() -> CountingRecorder {
        CountingRecorder {
            inner: metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder(),
            registrations: Default::default(),
        }
    }

    fn registrations(&self) -> usize {
        self.registrations.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.registrations.fetch_add(1, Ordering::Relaxed);
    }
}

impl metrics::Recorder for CountingRecorder {
    fn describe_counter(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        description: metrics::SharedString,
    ) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        description: metrics::SharedString,
    ) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        description: metrics::SharedString,
    ) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(
        &self,
        key: &metrics::Key,
        meta: &metrics::Metadata<'_>,
    ) -> metrics::Counter {
        self.count();
        self.inner.register_counter(key, meta)
    }

    fn register_gauge(&self, key: &metrics::Key, meta: &metrics::Metadata<'_>) -> metrics::Gauge {
        self.count();
        self.inner.register_gauge(key, meta)
    }

    fn register_histogram(
        &self,
        key: &metrics::Key,
        meta: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        self.count();
        self.inner.register_histogram(key, meta)
    }
}

/// With a small ring the stage polls tens of thousands of times a second: a poll
/// (and a tick) counts its records, bytes and gauges through handles registered at
/// their first use, and the pipeline its lines through its source's handles, not
/// through a registry lookup each time.
#[test]
fn polls_and_ticks_count_through_handles_registered_once() {
    let fx = Fixture::new();
    let all = numbered_lines(0..300);
    let mut rounds = VecDeque::from([vec![
        Scripted::Created(3, "/kubepods/podu/c3"),
        Scripted::Bound(3, Stream::Stdout),
    ]]);
    // One record per poll.
    rounds.extend(captured(3, 0, &all).into_iter().map(|r| vec![r]));
    let feed = ScriptFeed {
        rounds,
        ..Default::default()
    };
    let (mut stage, rx, _) = fx.stage(feed, fx.running_container(), fx.registry());
    let recorder = CountingRecorder::new();
    let (got, later) = metrics::with_local_recorder(&recorder, || {
        let mut got = lines(&mut stage, &rx, 20);
        stage.tick(Instant::now()).unwrap();
        let registered = recorder.registrations();
        assert!(
            registered > 0,
            "the first poll and tick register their metrics"
        );
        got.extend(lines(&mut stage, &rx, all.len() - got.len()));
        // Ticks too (every 50 ms).
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(200) {
            stage.poll_once(Duration::from_millis(5)).unwrap();
        }
        (got, recorder.registrations() - registered)
    });
    assert_eq!(got.len(), all.len());
    assert_eq!(later, 0, "{later} registry lookups after the first polls");
    let text = recorder.inner.handle().render();
    assert!(text.contains("logtap_capture_records_total 300"), "{text}");
    let bytes = stream_len(&all);
    assert!(
        text.contains(&format!("logtap_capture_bytes_total {bytes}")),
        "{text}"
    );
    assert!(
        text.contains(r#"logtap_lines_read_total{source_kind="capture"} 300"#),
        "{text}"
    );
    assert!(text.contains("logtap_capture_streams 1"), "{text}");
}

/// Registers, as an earlier run would have, a checkpoint of the fixture's stdout
/// stream at `offset`.
fn checkpoint_stdout(fx: &Fixture, offset: u64) {
    let registry = fx.registry();
    let path = stream_path(Some(&fx.log), b"", Stream::Stdout);
    let identity = stream_identity(&path);
    let id = SourceId::new_unique(CAPTURE_DEV, identity.inode);
    registry.register(id, identity, path, 0);
    registry.sent(id, 1, offset);
    registry.acked(id, 1);
    registry.persist().unwrap();
}

/// A running container checkpointed by an earlier run: the start-up read passes the
/// checkpoint on its way to the log's end, and the stream follows its log from a copy
/// of that reader taken there, instead of parsing the log up to it once more.
#[test]
fn a_running_container_resumed_from_a_checkpoint_follows_its_log_from_the_start_up_read() {
    let fx = Fixture::new();
    let running = Running::new();
    let all = numbered_lines(0..20_000);
    fx.append_cri(
        "stdout",
        &all.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let file_len = std::fs::metadata(&fx.log).unwrap().len();
    checkpoint_stdout(&fx, stream_len(&all[..19_000]));
    let (mut stage, rx, _) = fx.stage(ScriptFeed::default(), fx.running_container(), fx.registry());
    stage.set_cgroup_root(Some(running.root.clone()));
    stage.bind_running(&running.proc);
    let got = lines(&mut stage, &rx, 1000);
    assert_eq!(
        bodies(&got),
        all[19_000..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(got[0].1, stream_len(&all[..19_000]));
    // One start-up read to the log's end for both streams, then the follows from the
    // checkpoint on: stdout's, and stderr's (a new source, from its offset 0) forked
    // from stdout's reader there, no stderr line being before it. Before: a start-up
    // read and a follow from the run's first byte per stream, four times the log.
    let read = stage.read_block.bytes_read();
    assert!(
        read < file_len + file_len / 5,
        "{read} bytes read for a {file_len}-byte log"
    );
}

/// A stream whose log was never read (stderr, whose last line the ring dropped) has
/// its end read start where its sibling's reader stands (stdout's, after a repair
/// late in the log), not at the run's first byte.
#[test]
fn a_never_read_stream_s_end_read_starts_where_its_sibling_s_reader_stands() {
    let fx = Fixture::new();
    let mut out = Vec::new();
    let mut err = Vec::new();
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&fx.log)
            .unwrap();
        for i in 0..20_000 {
            let (stream, text) = match i % 4 {
                3 => ("stderr", &mut err),
                _ => ("stdout", &mut out),
            };
            let line = format!("{stream} {i}");
            writeln!(f, "{TS} {stream} F {line}").unwrap();
            text.push(line);
        }
    }
    let file_len = std::fs::metadata(&fx.log).unwrap().len();
    // Stdout's line 14 000 (the file's line 18 666) dropped: repaired from the log.
    let mut round = vec![
        Scripted::Created(3, "/kubepods/podu/c3"),
        Scripted::Bound(3, Stream::Stdout),
        Scripted::Bound(3, Stream::Stderr),
    ];
    round.extend(captured(3, 0, &out[..14_000]));
    round.extend(captured(3, stream_len(&out[..14_001]), &out[14_001..]));
    let mut stderr_records = captured(3, 0, &err[..err.len() - 1]);
    for r in &mut stderr_records {
        if let Scripted::Data(_, stream, _, _) = r {
            *stream = Stream::Stderr;
        }
    }
    let feed = ScriptFeed {
        rounds: VecDeque::from([round]),
        finals: HashMap::from([(
            3,
            vec![
                (Stream::Stdout, stream_len(&out)),
                (Stream::Stderr, stream_len(&err)),
            ],
        )]),
        ..Default::default()
    };
    let (mut stage, rx, _) = fx.stage(feed, fx.exited_container(), fx.registry());
    let mut got = lines(&mut stage, &rx, out.len());
    // Stderr's records, and the container's end, after stdout's repair: a stream's
    // first read forks from its sibling's reader only where that one stands (in one
    // tick, the order of the two reads is the streams' order in a map).
    let rounds = [stderr_records, vec![], vec![Scripted::Removed(3)]];
    stage.feed.rounds.extend(rounds);
    let (rest, metrics) = until_ended(&mut stage, &rx, err.len());
    got.extend(rest);
    let shipped = |stream| -> Vec<&str> {
        got.iter()
            .filter(|l| l.0 == stream)
            .map(|l| l.2.as_str())
            .collect()
    };
    assert_eq!(shipped(Stream::Stdout), out);
    assert_eq!(shipped(Stream::Stderr), err);
    assert_repaired_cleanly(&metrics);
    // Stdout's repair read 93% of the log; stderr's end read the rest. From the run's
    // first byte it would have read the whole log once more.
    let read = stage.read_block.bytes_read();
    assert!(
        read < file_len + file_len / 10,
        "{read} bytes read for a {file_len}-byte log"
    );
}

//! The processor driven through [`Input`] as an input would: framing across a stall,
//! packages held for their pod's metadata, one file read by two configs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::checkpoint::{Registry, SharedRegistry};
use crate::config::Config;
use crate::enrich::Enricher;
use crate::frame::LineFlags;
use crate::route::Router;
use crate::source::file::FileIdentity;

/// The identity of the test files (the pipeline does not look at it).
const IDENTITY: FileIdentity = FileIdentity {
    dev: 1,
    inode: 1,
    fingerprint_len: 0,
    fingerprint: 0,
};

/// A pipeline whose config routes to sinks `a` and `b`, with the file `/x/a.log`
/// (dev 1, inode 1) registered and opened for every config that includes it.
struct TwoSinks {
    registry: SharedRegistry,
    pipeline: Pipeline,
    file: crate::source::SourceId,
    rx_a: crossbeam_channel::Receiver<crate::batch::Batch>,
    rx_b: crossbeam_channel::Receiver<crate::batch::Batch>,
}

impl TwoSinks {
    fn open(config: &Config, dir: &std::path::Path) -> TwoSinks {
        let registry: SharedRegistry = Arc::new(Registry::open(dir).unwrap());
        let (tx_a, rx_a) = crossbeam_channel::bounded::<crate::batch::Batch>(64);
        let (tx_b, rx_b) = crossbeam_channel::bounded::<crate::batch::Batch>(64);
        let queues = BTreeMap::from([(Arc::<str>::from("a"), tx_a), (Arc::<str>::from("b"), tx_b)]);
        let mut pipeline = Pipeline::new(
            config,
            Router::new(&config.sources, &queues),
            registry.clone(),
        );
        let info = crate::checkpoint::registered_test_source(&registry, 1, "/x/a.log");
        let file = info.id;
        pipeline.opened(Opening::file(info, &[0, 1], IDENTITY, 0, None));
        TwoSinks {
            registry,
            pipeline,
            file,
            rx_a,
            rx_b,
        }
    }
}

/// A slow sink must not cut a multiline record in two: the time the source thread
/// spends blocked on a full queue is not "time without a new line".
#[test]
fn multiline_record_survives_a_stall_longer_than_its_flush_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(
        "sources:\n  - name: app\n    include: [\"/x/*.log\"]\n    multiline: {start: '^S', flush_timeout: 100ms}\n    sink: out\n\
         batch: {max_lines: 1}\nsinks:\n  out: {type: blackhole}\n",
        "test",
    )
    .unwrap();
    let registry: SharedRegistry = Arc::new(Registry::open(dir.path()).unwrap());
    // A rendezvous queue whose consumer first stalls for 300 ms: the first
    // package's send blocks three flush timeouts long.
    let (tx, rx) = crossbeam_channel::bounded::<crate::batch::Batch>(0);
    let consumer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        rx.iter()
            .flat_map(|mut b| {
                // Taken out, so the vector is not recycled into the spare pool that
                // `open_packages_are_bounded_together_oldest_shipped_first` measures.
                let lines = std::mem::take(&mut b.lines);
                lines.iter().map(|l| b.body_owned(l)).collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    });
    let queues = BTreeMap::from([(Arc::<str>::from("out"), tx)]);
    let mut pipeline = Pipeline::new(
        &config,
        Router::new(&config.sources, &queues),
        registry.clone(),
    );
    drop(queues);
    let info = crate::checkpoint::registered_test_source(&registry, 1, "/x/a.log");
    let source = info.id;
    assert!(registry.lookup(1, 1).is_some(), "registered");
    pipeline.opened(Opening::file(info, &[0], IDENTITY, 0, None));
    let first = Bytes::from_static(b"S one\nS two\n  two-a\n");
    let first_len = first.len() as u64;
    pipeline.data(source, 0, first, None); // ships "S one": blocks ~300 ms
    pipeline.tick(Instant::now());
    pipeline.data(
        source,
        first_len,
        Bytes::from_static(b"  two-b\nS three\n"),
        None,
    );
    pipeline.ended(source, EndReason::Eof);
    drop(pipeline);
    let bodies = consumer.join().unwrap();
    assert_eq!(
        bodies,
        vec![
            Bytes::from_static(b"S one"),
            Bytes::from_static(b"S two\n  two-a\n  two-b"),
            Bytes::from_static(b"S three"),
        ]
    );
}

/// A new container's package waits (without blocking the reader) until its pod is
/// known, then ships with every field; a host file's ships at once with the node.
#[test]
fn container_package_waits_for_its_pod_and_host_package_does_not() {
    use crate::discovery::PodCache;
    use k8s_openapi::api::core::v1::Pod;

    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(
        "sources:\n  - name: all\n    include: [\"/x/**\"]\n    sink: out\n\
         batch: {timeout: 0s}\nsinks:\n  out: {type: blackhole}\n",
        "test",
    )
    .unwrap();
    let registry: SharedRegistry = Arc::new(Registry::open(dir.path()).unwrap());
    let (tx, rx) = crossbeam_channel::bounded::<crate::batch::Batch>(16);
    let queues = BTreeMap::from([(Arc::<str>::from("out"), tx)]);
    let mut pipeline = Pipeline::new(
        &config,
        Router::new(&config.sources, &queues),
        registry.clone(),
    );
    drop(queues);
    let cache = PodCache::new(Vec::new(), Duration::from_secs(60));
    pipeline.set_enricher(Arc::new(Enricher::new(
        cache.clone(),
        "node-a",
        Duration::from_secs(30),
    )));

    let pod_path = format!("/var/log/pods/shop_cart_{UID}/app/0.log");
    let container = crate::checkpoint::registered_test_source(&registry, 1, &pod_path);
    let host = crate::checkpoint::registered_test_source(&registry, 2, "/x/syslog");
    for info in [container.clone(), host.clone()] {
        assert!(registry.lookup(1, info.id.0).is_some(), "registered");
        pipeline.opened(Opening::file(info, &[0], IDENTITY, 0, None));
    }
    pipeline.data(container.id, 0, Bytes::from_static(b"one\n"), None);
    pipeline.data(host.id, 0, Bytes::from_static(b"boot\n"), None);
    pipeline.tick(Instant::now());
    let host_batch = rx.try_recv().expect("the host package ships at once");
    assert_eq!(host_batch.source.id, host.id);
    assert_eq!(
        *host_batch.source_fields,
        vec![(
            Bytes::from_static(b"k8s.node"),
            Bytes::from_static(b"node-a")
        )]
    );
    assert!(rx.try_recv().is_err(), "the container's package is held");

    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "shop", "name": "cart", "uid": UID,
                     "labels": {"app": "cart"}},
        "spec": {"containers": [{"name": "app", "image": "shop/cart:2"}]},
    }))
    .unwrap();
    cache.apply_pod(&pod);
    pipeline.tick(Instant::now());
    let batch = rx.try_recv().expect("shipped once the pod is known");
    assert_eq!(batch.source.id, container.id);
    assert_eq!(batch.lines.len(), 1);
    let get = |key: &str| {
        batch
            .source_fields
            .iter()
            .find(|(k, _)| k[..] == *key.as_bytes())
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("container.image").as_deref(), Some(&b"shop/cart:2"[..]));
    assert_eq!(get("k8s.pod.label.app").as_deref(), Some(&b"cart"[..]));
}

/// One file, two configs with different framing and sinks: each sink gets every
/// record exactly once under its own source id, and the file's checkpoint only
/// moves past what both sinks acknowledged.
#[test]
fn a_file_read_by_two_configs_ships_to_both_and_checkpoints_the_slower() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(
        "sources:\n  - name: plain\n    include: [\"/x/*.log\"]\n    sink: a\n  \
         - name: grouped\n    include: [\"/x/*.log\"]\n    multiline: {start: '^S'}\n    sink: b\n\
         batch: {timeout: 0s}\nsinks:\n  a: {type: blackhole}\n  b: {type: blackhole}\n",
        "test",
    )
    .unwrap();
    let TwoSinks {
        registry,
        mut pipeline,
        file,
        rx_a,
        rx_b,
    } = TwoSinks::open(&config, dir.path());
    assert!(registry.lookup(1, 1).is_some(), "registered");
    let data = b"S one\n  more\nS two\n";
    pipeline.data(file, 0, Bytes::from_static(data), None);
    pipeline.tick(Instant::now());
    let drain =
        |rx: &crossbeam_channel::Receiver<crate::batch::Batch>| rx.try_iter().collect::<Vec<_>>();
    let a = drain(&rx_a);
    let b = drain(&rx_b);
    let bodies = |batches: &[crate::batch::Batch]| {
        batches
            .iter()
            .flat_map(|b| b.lines.iter().map(|l| b.body_owned(l)))
            .collect::<Vec<_>>()
    };
    assert_eq!(bodies(&a), [&b"S one"[..], b"  more", b"S two"]);
    assert_eq!(bodies(&b), [&b"S one\n  more"[..]], "S two is still open");
    assert_eq!(
        a[0].source.id, file,
        "the primary ships under the file's id"
    );
    let branch = branch_id(file, "grouped");
    assert_eq!(b[0].source.id, branch);
    assert_eq!(&*b[0].source.config_name, "grouped");
    for batch in &a {
        registry.acked(batch.source.id, batch.package_id);
    }
    assert_eq!(
        registry.lookup(1, 1).unwrap().offset,
        0,
        "a restart now re-reads for the branch, which acknowledged nothing"
    );
    for batch in &b {
        registry.acked(batch.source.id, batch.package_id);
    }
    assert_eq!(
        registry.lookup(1, 1).unwrap().offset,
        13,
        "both past `S one`"
    );
    // A rebuild quiesces: the open record ships, and both readers stand at the end.
    pipeline.quiesce();
    let b2 = drain(&rx_b);
    assert_eq!(bodies(&b2), [&b"S two"[..]]);
    for batch in &b2 {
        registry.acked(batch.source.id, batch.package_id);
    }
    assert_eq!(registry.lookup(1, 1).unwrap().offset, data.len() as u64);
    pipeline.ended(file, EndReason::Shutdown);
    assert_eq!(registry.in_flight(), 0);
}

/// A config's own fields (an environment-declared collection's name and tags) ride
/// on every package after the container's fields, with and without an enricher.
#[test]
fn a_configs_own_fields_follow_the_container_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::parse(
        "sources:\n  - name: tagged\n    include: [\"/x/*.log\"]\n    sink: out\n\
         batch: {timeout: 0s}\nsinks:\n  out: {type: blackhole}\n",
        "test",
    )
    .unwrap();
    let tag = (Bytes::from_static(b"tag.team"), Bytes::from_static(b"shop"));
    config.sources[0].fields = vec![tag.clone()];
    let registry: SharedRegistry = Arc::new(Registry::open(dir.path()).unwrap());
    let (tx, rx) = crossbeam_channel::bounded::<crate::batch::Batch>(16);
    let queues = BTreeMap::from([(Arc::<str>::from("out"), tx)]);
    let router = |config: &Config| Router::new(&config.sources, &queues);
    let mut bare = Pipeline::new(&config, router(&config), registry.clone());
    let mut enriched = Pipeline::new(&config, router(&config), registry.clone());
    drop(queues);
    enriched.set_enricher(Arc::new(Enricher::new(
        crate::discovery::PodCache::new(Vec::new(), Duration::from_secs(60)),
        "node-a",
        Duration::from_secs(30),
    )));
    let node = (
        Bytes::from_static(b"k8s.node"),
        Bytes::from_static(b"node-a"),
    );
    for (inode, pipeline, want) in [
        (1, &mut bare, vec![tag.clone()]),
        (2, &mut enriched, vec![node, tag.clone()]),
    ] {
        let info = crate::checkpoint::registered_test_source(&registry, inode, "/x/a.log");
        let id = info.id;
        pipeline.opened(Opening::file(info, &[0], IDENTITY, 0, None));
        pipeline.data(id, 0, Bytes::from_static(b"one\n"), None);
        pipeline.tick(Instant::now());
        let batch = rx.try_recv().expect("shipped");
        assert_eq!(*batch.source_fields, want);
        pipeline.ended(id, EndReason::Shutdown);
    }
}

/// Feeds `chunks` as one file's data, in order, then ends the file and drops the
/// pipeline (its open packages are sealed and sent).
fn feed_to_the_end(
    mut pipeline: Pipeline,
    file: crate::source::SourceId,
    chunks: &[&'static [u8]],
) {
    let mut offset = 0;
    for chunk in chunks {
        pipeline.data(file, offset, Bytes::from_static(chunk), Some(7));
        offset += chunk.len() as u64;
    }
    pipeline.ended(file, EndReason::Eof);
}

/// Records nothing parses or transforms go from the framer straight into the package
/// (no scratch vector); they must come out as those that take the per-record path:
/// same bodies, offsets, timestamps and flags (invalid UTF-8 inside the checked
/// chunk and in a line joined across chunks, truncation, an unterminated tail), same
/// packages and end offsets. The second config's mask never matches: it only sends
/// its records through the per-record path.
#[test]
fn records_straight_into_packages_match_the_per_record_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(
        "sources:\n  - name: direct\n    include: [\"/x/*.log\"]\n    max_line_size: 64B\n    sink: a\n  \
         - name: masked\n    include: [\"/x/*.log\"]\n    max_line_size: 64B\n    \
         processors: [{type: mask, regex: 'never in the input'}]\n    sink: b\n\
         batch: {max_lines: 3, timeout: 0s}\nsinks:\n  a: {type: blackhole}\n  b: {type: blackhole}\n",
        "test",
    )
    .unwrap();
    let TwoSinks {
        pipeline,
        file,
        rx_a,
        rx_b,
        ..
    } = TwoSinks::open(&config, dir.path());
    let chunks: [&[u8]; 4] = [
        b"one\r\ntw\xc3\xa9 \xff bad\nthis line is longer than sixty-four bytes: the framer keeps its first 64\nspl",
        b"it \xe2\x82",
        b"\xac\n\nlast",
        b" unterminated",
    ];
    feed_to_the_end(pipeline, file, &chunks);
    let packages = |rx: crossbeam_channel::Receiver<crate::batch::Batch>| {
        rx.try_iter()
            .map(|b| {
                b.check_spans();
                // Bodies resolved: one pipeline's are spans, the other's owned.
                let lines: Vec<crate::frame::Record> = b
                    .lines
                    .iter()
                    .map(|l| crate::frame::Record {
                        offset: l.offset,
                        timestamp_ns: l.timestamp_ns,
                        stream: l.stream,
                        flags: l.flags,
                        body: b.body_owned(l).into(),
                    })
                    .collect();
                (b.package_id, b.end_offset, lines, b.fields.clone())
            })
            .collect::<Vec<_>>()
    };
    let (direct, masked) = (packages(rx_a), packages(rx_b));
    assert_eq!(direct, masked);
    let flags: Vec<_> = direct
        .iter()
        .flat_map(|(_, _, lines, _)| {
            lines
                .iter()
                .map(|l| (l.body.to_bytes(crate::frame::NO_CHUNKS), l.flags))
        })
        .collect();
    let none = LineFlags::empty();
    assert_eq!(
        flags,
        [
            (Bytes::from_static(b"one"), none),
            (
                Bytes::from_static(b"tw\xc3\xa9 \xff bad"),
                LineFlags::INVALID_UTF8
            ),
            (
                Bytes::from_static(
                    &b"this line is longer than sixty-four bytes: the framer keeps its first 64"
                        [..64]
                ),
                LineFlags::TRUNCATED
            ),
            (Bytes::from_static(b"split \xe2\x82\xac"), none),
            (Bytes::new(), none),
            (
                Bytes::from_static(b"last unterminated"),
                LineFlags::UNTERMINATED
            ),
        ]
    );
    assert!(direct.len() > 1, "several packages: {}", direct.len());
}

/// Parsed JSON fields in packages of several chunks: values read in place are spans
/// of the package's chunks (one straddling line's are slices of its own copy), the
/// package's invariants hold, and a `mask` that rewrites a value makes just that
/// value bytes of its own, the other values staying spans.
#[test]
fn parsed_field_values_are_spans_of_the_package_s_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(
        "sources:\n  - name: direct\n    include: [\"/x/*.log\"]\n    parser: {type: json}\n    sink: a\n  \
         - name: masked\n    include: [\"/x/*.log\"]\n    parser: {type: json}\n    \
         processors: [{type: mask, regex: 'secret'}]\n    sink: b\n\
         batch: {max_lines: 100, timeout: 1h}\nsinks:\n  a: {type: blackhole}\n  b: {type: blackhole}\n",
        "test",
    )
    .unwrap();
    let TwoSinks {
        pipeline,
        file,
        rx_a,
        rx_b,
        ..
    } = TwoSinks::open(&config, dir.path());
    let chunks: [&[u8]; 3] = [
        b"{\"level\":\"info\",\"seq\":1}\n{\"msg\":\"a secret\",\"seq\":2}\n{\"level\":\"wa",
        b"rn\",\"seq\":3}\nnot json\n",
        b"{\"level\":\"error\",\"o\":{\"k\": 1}}\n",
    ];
    feed_to_the_end(pipeline, file, &chunks);
    let fields = |rx: crossbeam_channel::Receiver<crate::batch::Batch>| {
        let mut all = Vec::new();
        for b in rx.try_iter() {
            b.check_spans();
            for f in &b.fields {
                let chunk = match f.value {
                    crate::frame::Body::Span { chunk, .. } => Some(chunk),
                    crate::frame::Body::Owned(_) => None,
                };
                let text = |v: &[u8]| String::from_utf8(v.to_vec()).unwrap();
                all.push((f.line, text(&f.key), text(b.value(f)), chunk));
            }
        }
        all
    };
    let row = |line, key: &str, value: &str, chunk| (line, key.to_owned(), value.to_owned(), chunk);
    assert_eq!(
        fields(rx_a),
        [
            row(0, "level", "info", Some(0)),
            row(0, "seq", "1", Some(0)),
            row(1, "msg", "a secret", Some(0)),
            row(1, "seq", "2", Some(0)),
            // Straddles two chunks: the body is a copy, a chunk of its own in the
            // package (1), and its fields are spans of it.
            row(2, "level", "warn", Some(1)),
            row(2, "seq", "3", Some(1)),
            // The second read chunk is 2 (the `not json` line), the third 3.
            row(4, "level", "error", Some(3)),
            row(4, "o", "{\"k\":1}", None),
        ]
    );
    let masked = fields(rx_b);
    assert_eq!(masked[2], row(1, "msg", "a ****", None));
    assert_eq!(masked[3], row(1, "seq", "2", Some(0)));
    // Only the rewritten body is a new chunk (1), before the straddling line's copy
    // (2) and the second and third read chunks (3, 4): a body the mask leaves as it
    // was stays a span of its chunk.
    assert_eq!(masked[6], row(4, "level", "error", Some(4)));
}

/// Four sources with packages that neither their size nor their age would ship
/// (`batch` far above what they get), as capture's hundreds of slow streams are: with
/// a bound on what open packages hold together, the oldest ship early once the sum
/// passes it, the running count always equals the slots' sum, and every line still
/// arrives once, in order. Without a bound nothing ships before the sources end.
#[test]
fn open_packages_are_bounded_together_oldest_shipped_first() {
    const SOURCES: u64 = 4;
    let run = |bound: Option<usize>| {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(
            "sources:\n  - name: app\n    include: [\"/x/*.log\"]\n    sink: out\n\
             batch: {max_lines: 100000, max_size: 64MiB, timeout: 1h}\n\
             sinks:\n  out: {type: blackhole}\n",
            "test",
        )
        .unwrap();
        let registry: SharedRegistry = Arc::new(Registry::open(dir.path()).unwrap());
        let (tx, rx) = crossbeam_channel::bounded::<crate::batch::Batch>(64);
        let queues = BTreeMap::from([(Arc::<str>::from("out"), tx)]);
        let mut pipeline = Pipeline::new(
            &config,
            Router::new(&config.sources, &queues),
            registry.clone(),
        );
        if let Some(bytes) = bound {
            pipeline.bound_open_packages(bytes);
        }
        let ids: Vec<_> = (1..=SOURCES)
            .map(|n| {
                let info =
                    crate::checkpoint::registered_test_source(&registry, n, &format!("/x/{n}.log"));
                let id = info.id;
                let identity = FileIdentity {
                    inode: n,
                    ..IDENTITY
                };
                pipeline.opened(Opening::file(info, &[0], identity, 0, None));
                id
            })
            .collect();
        // 100 lines of 100 bytes per source, one source after the other: each open
        // package holds 10 kB of records and its vector (256 lines reserved).
        let chunk = Bytes::from("x".repeat(99) + "\n").repeat(100);
        let mut early = Vec::new();
        for &id in &ids {
            std::thread::sleep(Duration::from_millis(2)); // distinct opening times
            pipeline.data(id, 0, Bytes::from(chunk.clone()), None);
            if let Some(max) = bound {
                let held = pipeline.checked_open_bytes().unwrap();
                assert!(held <= max, "{held} held over the bound {max}");
            }
            early.extend(rx.try_iter());
        }
        // A tick counts every slot again: the same sum.
        pipeline.tick(Instant::now());
        let held = pipeline.checked_open_bytes();
        for &id in &ids {
            pipeline.ended(id, EndReason::Eof);
        }
        assert_eq!(pipeline.checked_open_bytes(), bound.map(|_| 0));
        let rest: Vec<_> = rx.try_iter().collect();
        let all = early.iter().chain(&rest);
        let mut sources: Vec<_> = all.clone().map(|b| b.source.id).collect();
        sources.sort();
        assert_eq!(sources, ids, "one package per source");
        assert!(
            all.into_iter()
                .all(|b| b.lines.len() == 100 && b.end_offset == 10_000),
            "every line once"
        );
        let early: Vec<_> = early.iter().map(|b| b.source.id).collect();
        (early, held, ids)
    };

    // Each open package holds 10,000 bytes of records and 256 × 32 of vector (18,192):
    // the fourth passes 64 KiB, and shipping the oldest two brings the sum a quarter
    // below it.
    let (early, held, ids) = run(Some(64 << 10));
    assert_eq!(early, [ids[0], ids[1]], "the oldest, in order");
    assert!(held.is_some_and(|h| h <= 48 << 10), "{held:?}");

    let (early, held, _) = run(None);
    assert!(early.is_empty(), "no bound: nothing ships early");
    assert_eq!(held, None);
}

//! Store and query tests on real files in temporary directories.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;

use super::query::{QueryArgs, run_query};
use super::segment::HEADER_LEN;
use super::*;
use crate::batch::Field;
use crate::frame::{LineFlags, Record, Stream};
use crate::source::{SourceInfo, SourceKind};

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: QueryArgs,
}

fn query(dir: &Path, extra: &[&str]) -> String {
    let mut argv = vec!["logtap-query", "--store", dir.to_str().unwrap()];
    argv.extend_from_slice(extra);
    let cli = Cli::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    run_query(&cli.args, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn query_json(dir: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    query(dir, &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn bodies(results: &[serde_json::Value]) -> Vec<String> {
    results
        .iter()
        .map(|v| v["body"].as_str().unwrap().to_owned())
        .collect()
}

fn source(id: u64, path: &str) -> Arc<SourceInfo> {
    Arc::new(SourceInfo {
        id: SourceId(id),
        kind: SourceKind::File,
        path: path.into(),
        config_name: Arc::from("test"),
    })
}

/// Base timestamp of test records: a fixed recent-looking instant.
const T0: i64 = 1_714_564_800_000_000_000;

/// Record `i` of a source sits at offset `i * 10` with body `"<prefix> <i>"`.
fn batch(
    src: &Arc<SourceInfo>,
    package_id: u64,
    records: std::ops::Range<u64>,
    prefix: &str,
) -> Batch {
    let lines = records
        .clone()
        .map(|i| Record {
            offset: i * 10,
            timestamp_ns: T0 + i as i64 * 1_000_000_000,
            stream: Stream::Stdout,
            flags: LineFlags::empty(),
            body: Bytes::from(format!("{prefix} {i}")).into(),
        })
        .collect();
    let (chunks, lines) = Batch::pack(lines);
    Batch {
        chunks,
        source: src.clone(),
        package_id,
        lines,
        fields: Vec::new(),
        source_fields: Default::default(),
        end_offset: records.end * 10,
    }
}

fn options() -> StoreOptions {
    StoreOptions {
        segment_bytes: 64 << 20,
        max_bytes: 1 << 40,
        max_age: None,
        min_free: MinFree::Off,
    }
}

fn write_all(store: &mut Store, batches: &[Batch]) {
    for b in batches {
        store.write(b).unwrap();
    }
    store.flush().unwrap();
}

#[test]
fn packages_round_trip_through_reopen_with_fields_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/var/log/a.log");
    let b = source(2, "/var/log/pods/ns_web_1/web/0.log");
    let mut with_fields = batch(&b, 0, 0..3, "req");
    with_fields.lines[1].stream = Stream::Stderr;
    with_fields.lines[1].flags = LineFlags::TRUNCATED;
    with_fields.fields = vec![
        Field {
            line: 0,
            key: Bytes::from_static(b"level"),
            value: Bytes::from_static(b"info").into(),
        },
        Field {
            line: 1,
            key: Bytes::from_static(b"level"),
            value: Bytes::from_static(b"error").into(),
        },
        Field {
            line: 1,
            key: Bytes::from_static(b"code"),
            value: Bytes::from_static(b"500").into(),
        },
    ];
    {
        let mut store = Store::open(dir.path(), options()).unwrap();
        write_all(
            &mut store,
            &[
                batch(&a, 0, 0..2, "alpha"),
                with_fields,
                batch(&a, 1, 2..4, "alpha"),
            ],
        );
    }
    let store = Store::open(dir.path(), options()).unwrap();
    assert_eq!(store.stats(), &StoreStats::default());
    assert_eq!(store.segment_count(), 1);
    assert_eq!(store.segments()[0].blocks.len(), 3);
    assert_eq!(
        store.source(SourceId(2)).unwrap().path,
        Path::new("/var/log/pods/ns_web_1/web/0.log")
    );
    drop(store);

    let all = query_json(dir.path(), &[]);
    assert_eq!(
        bodies(&all),
        [
            "alpha 0", "alpha 1", "req 0", "req 1", "req 2", "alpha 2", "alpha 3"
        ]
    );
    let req1 = &all[3];
    assert_eq!(req1["path"], "/var/log/pods/ns_web_1/web/0.log");
    assert_eq!(req1["source_id"], "0000000000000002");
    assert_eq!(req1["offset"], 10);
    assert_eq!(req1["package_id"], 0);
    assert_eq!(req1["stream"], "stderr");
    assert_eq!(req1["flags"], serde_json::json!(["truncated"]));
    assert_eq!(
        req1["fields"],
        serde_json::json!({"level": "error", "code": "500"})
    );
    assert_eq!(req1["timestamp_ns"], T0 + 1_000_000_000);
    assert_eq!(all[6]["package_id"], 1);

    let text = query(dir.path(), &["req 1"]);
    assert_eq!(
        text,
        "2024-05-01T12:00:01.000000000Z /var/log/pods/ns_web_1/web/0.log:10 [stderr] req 1\n"
    );
}

#[test]
fn keyword_field_time_source_limit_and_tail_filters() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/var/log/a.log");
    let b = source(2, "/var/log/pods/ns_web_1/web/0.log");
    let mut mixed = batch(&b, 0, 0..4, "GET /index");
    mixed.set_body(2, Bytes::from_static(b"POST /Login failed"));
    mixed.fields = vec![
        Field {
            line: 2,
            key: Bytes::from_static(b"status"),
            value: Bytes::from_static(b"401").into(),
        },
        Field {
            line: 3,
            key: Bytes::from_static(b"status"),
            value: Bytes::from_static(b"4011").into(),
        },
    ];
    let mut store = Store::open(dir.path(), options()).unwrap();
    write_all(&mut store, &[batch(&a, 0, 0..10, "tick"), mixed]);

    // All keywords must occur; case-sensitive unless -i.
    assert_eq!(
        bodies(&query_json(dir.path(), &["POST", "failed"])),
        ["POST /Login failed"]
    );
    assert!(query_json(dir.path(), &["POST", "missing"]).is_empty());
    assert!(query_json(dir.path(), &["login"]).is_empty());
    assert_eq!(
        bodies(&query_json(dir.path(), &["-i", "login", "FAILED"])),
        ["POST /Login failed"]
    );
    // Exact field value.
    assert_eq!(
        bodies(&query_json(dir.path(), &["--field", "status=401"])),
        ["POST /Login failed"]
    );
    assert!(query_json(dir.path(), &["--field", "status=40"]).is_empty());
    // Time range, both bounds inclusive (record i is at T0 + i s).
    let at = |secs: i64| {
        let mut v = Vec::new();
        render::write_rfc3339(&mut v, T0 + secs * 1_000_000_000);
        String::from_utf8(v).unwrap()
    };
    let (since, until) = (at(3), at(5));
    assert_eq!(
        bodies(&query_json(
            dir.path(),
            &["tick", "--since", &since, "--until", &until]
        )),
        ["tick 3", "tick 4", "tick 5"]
    );
    // Relative: everything is older than one minute ago, nothing newer.
    assert_eq!(query_json(dir.path(), &["--until", "1m"]).len(), 14);
    assert!(query_json(dir.path(), &["--since", "1m"]).is_empty());
    // Source glob.
    assert_eq!(
        query_json(dir.path(), &["--source", "/var/log/pods/**"]).len(),
        4
    );
    assert_eq!(
        query_json(dir.path(), &["--source", "/var/log/*.log"]).len(),
        10
    );
    // Limit: oldest first, or the last N with --tail.
    assert_eq!(
        bodies(&query_json(dir.path(), &["tick", "--limit", "2"])),
        ["tick 0", "tick 1"]
    );
    assert_eq!(
        bodies(&query_json(dir.path(), &["tick", "--limit", "2", "--tail"])),
        ["tick 8", "tick 9"]
    );
}

#[test]
fn replays_are_counted_stored_and_deduplicated_by_queries() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/a");
    {
        let mut store = Store::open(dir.path(), options()).unwrap();
        write_all(
            &mut store,
            &[batch(&a, 0, 0..3, "x"), batch(&a, 1, 3..6, "x")],
        );
        assert_eq!(store.stats().replayed_packages, 0);
    }
    // After a crash the pipeline resends from its checkpoint at offset 30, with
    // different package boundaries.
    let mut store = Store::open(dir.path(), options()).unwrap();
    write_all(
        &mut store,
        &[batch(&a, 1, 3..5, "x"), batch(&a, 2, 5..8, "x")],
    );
    assert_eq!(store.stats().replayed_packages, 2);

    let deduped = query_json(dir.path(), &[]);
    assert_eq!(
        bodies(&deduped),
        (0..8).map(|i| format!("x {i}")).collect::<Vec<_>>()
    );
    assert_eq!(query_json(dir.path(), &["--raw"]).len(), 11);

    let stats = query_json(dir.path(), &["--stats"]);
    assert_eq!(stats[0]["blocks"], 4);
    assert_eq!(stats[0]["records"], 11);
    assert_eq!(stats[0]["unique"], 8);
    assert_eq!(stats[0]["duplicates"], 3);
    assert_eq!(stats[0]["sources"][0]["path"], "/a");
    assert_eq!(stats[0]["sources"][0]["records"], 8);
    let text = query(dir.path(), &["--stats"]);
    assert!(text.contains("duplicates:     3"), "{text}");
}

#[test]
fn context_spans_blocks_ignores_copies_and_other_sources() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/a");
    let b = source(2, "/b");
    let mut store = Store::open(dir.path(), options()).unwrap();
    write_all(
        &mut store,
        &[
            batch(&a, 0, 0..3, "a"),
            batch(&b, 0, 0..5, "b"),
            batch(&a, 1, 3..6, "a"),
            batch(&a, 1, 3..6, "a"), // a replayed copy
            batch(&b, 1, 5..9, "b"),
            batch(&a, 2, 6..9, "a"),
            batch(&a, 3, 9..20, "a"),
        ],
    );
    let found = query(dir.path(), &["a 4", "-C", "2"]);
    let expected: Vec<String> = [(2, '-'), (3, '-'), (4, ':'), (5, '-'), (6, '-')]
        .iter()
        .map(|&(i, sep)| {
            let mut ts = Vec::new();
            render::write_rfc3339(&mut ts, T0 + i * 1_000_000_000);
            format!(
                "{} /a{sep}{} [stdout] a {i}\n",
                String::from_utf8(ts).unwrap(),
                i * 10
            )
        })
        .collect();
    assert_eq!(found, expected.concat());

    // Two hits far apart: two groups separated by `--`; hits near each other merge.
    let offsets = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| {
                if l == "--" {
                    return "--".to_owned();
                }
                l.split(' ').nth(1).unwrap().to_owned()
            })
            .collect()
    };
    let json = query_json(dir.path(), &["a 1", "-C", "1", "--source", "/a"]);
    // "a 1" also matches a 10..a 19: groups 0..20 and 90..190.
    assert_eq!(json.len(), 14);
    let text = query(dir.path(), &["a 1", "-C", "1", "--source", "/a"]);
    assert_eq!(
        offsets(&text),
        [
            "/a-0", "/a:10", "/a-20", "--", "/a-90", "/a:100", "/a:110", "/a:120", "/a:130",
            "/a:140", "/a:150", "/a:160", "/a:170", "/a:180", "/a:190"
        ]
    );
    let json_context: Vec<bool> = json.iter().map(|v| v.get("context").is_some()).collect();
    assert_eq!(json_context.iter().filter(|&&c| c).count(), 3);
    // At the start of a source there is less context before.
    let mut adj = query(dir.path(), &["a 0", "-C", "1"]);
    adj.push_str(&query(dir.path(), &["a 3", "-C", "1"]));
    assert_eq!(offsets(&adj), ["/a:0", "/a-10", "/a-20", "/a:30", "/a-40"]);
}

#[test]
fn context_groups_that_touch_are_merged() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/a");
    let mut store = Store::open(dir.path(), options()).unwrap();
    let mut p = batch(&a, 0, 0..12, "plain");
    for i in [2usize, 5, 10] {
        p.set_body(i, Bytes::from(format!("HIT {i}")));
    }
    write_all(&mut store, &[p]);
    let text = query(dir.path(), &["HIT", "-C", "1"]);
    let marks: Vec<&str> = text
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap_or(l))
        .collect();
    // 2 (1..3) and 5 (4..6) touch: merged; 10 (9..11) does not.
    assert_eq!(
        marks,
        [
            "/a-10", "/a:20", "/a-30", "/a-40", "/a:50", "/a-60", "--", "/a-90", "/a:100", "/a-110"
        ]
    );
}

#[test]
fn torn_tail_is_truncated_counted_and_earlier_blocks_kept() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/a");
    {
        let mut store = Store::open(dir.path(), options()).unwrap();
        write_all(
            &mut store,
            &[
                batch(&a, 0, 0..3, "x"),
                batch(&a, 1, 3..6, "x"),
                batch(&a, 2, 6..9, "x"),
            ],
        );
    }
    let seg = dir
        .path()
        .join("segments")
        .join(segment::segment_file_name(0));
    let len = std::fs::metadata(&seg).unwrap().len();
    // Cut the last block in the middle of its payload, then add garbage.
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 5).unwrap();
    f.write_all_at(b"\x00garbage\xff\xff", len - 5).unwrap();
    drop(f);
    // A reader tolerates it before the writer repairs it.
    assert_eq!(query_json(dir.path(), &[]).len(), 6);

    let mut store = Store::open(dir.path(), options()).unwrap();
    assert_eq!(store.stats().torn_blocks, 1);
    assert_eq!(store.segments()[0].blocks.len(), 2);
    let kept = store.total_bytes();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), kept);
    // The resent package lands right after the intact blocks.
    write_all(&mut store, &[batch(&a, 2, 6..9, "x")]);
    drop(store);
    let store = Store::open(dir.path(), options()).unwrap();
    assert_eq!(store.stats().torn_blocks, 0);
    assert_eq!(store.segments()[0].blocks.len(), 3);
    assert_eq!(query_json(dir.path(), &[]).len(), 9);

    // Garbage alone (a header's worth of zeros, then a partial header) after intact blocks.
    drop(store);
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[0u8; HEADER_LEN + 3]).unwrap();
    drop(f);
    let store = Store::open(dir.path(), options()).unwrap();
    assert_eq!(store.stats().torn_blocks, 1);
    assert_eq!(store.segments()[0].blocks.len(), 3);
}

/// Issue 9: a bad block in the middle of the active segment (a bit flip on disk,
/// not a torn write) held acknowledged data after it; opening cut it all away.
#[test]
fn damaged_block_in_the_middle_of_the_active_segment_keeps_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/a");
    let blocks = {
        let mut store = Store::open(dir.path(), options()).unwrap();
        write_all(
            &mut store,
            &(0..5)
                .map(|p| batch(&a, p, p * 3..p * 3 + 3, "x"))
                .collect::<Vec<_>>(),
        );
        store.segments()[0].blocks.clone()
    };
    let seg = dir
        .path()
        .join("segments")
        .join(segment::segment_file_name(0));
    let len = std::fs::metadata(&seg).unwrap().len();
    // A payload byte of block 1 and a header byte of block 3.
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(b"\xaa", blocks[1].position + HEADER_LEN as u64 + 2)
        .unwrap();
    f.write_all_at(b"\xaa\xbb", blocks[3].position + 30)
        .unwrap();
    drop(f);

    let mut store = Store::open(dir.path(), options()).unwrap();
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        len,
        "nothing cut away"
    );
    assert_eq!(store.stats().torn_blocks, 0);
    assert_eq!(store.stats().damaged_blocks, 2);
    // Block 1 (its header is intact) stays indexed so positions do not shift; its
    // payload fails its CRC when read. Block 3's header is gone.
    let positions: Vec<u64> = store.segments()[0]
        .blocks
        .iter()
        .map(|b| b.position)
        .collect();
    assert_eq!(
        positions,
        vec![
            blocks[0].position,
            blocks[1].position,
            blocks[2].position,
            blocks[4].position
        ]
    );
    let offsets: Vec<u64> = query_json(dir.path(), &[])
        .iter()
        .map(|v| v["offset"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (0..15)
        .filter(|i| !(3..6).contains(i) && !(9..12).contains(i))
        .map(|i| i * 10)
        .collect();
    assert_eq!(offsets, expected);
    // New blocks go after the intact tail.
    write_all(&mut store, &[batch(&a, 5, 15..18, "x")]);
    drop(store);
    assert_eq!(query_json(dir.path(), &[]).len(), expected.len() + 3);
}

#[test]
fn damaged_blocks_in_sealed_segments_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/a");
    // Room for three blocks per segment.
    let probe = tempfile::tempdir().unwrap();
    let block = {
        let mut s = Store::open(probe.path(), options()).unwrap();
        write_all(&mut s, &[batch(&a, 0, 0..3, "x")]);
        s.total_bytes()
    };
    // Bodies grow by a few bytes with the record number: allow for it, but not for a
    // fourth block.
    let opts = StoreOptions {
        segment_bytes: block * 3 + block / 2,
        ..options()
    };
    let mut store = Store::open(dir.path(), opts.clone()).unwrap();
    let batches: Vec<Batch> = (0..9)
        .map(|p| batch(&a, p, p * 3..p * 3 + 3, "x"))
        .collect();
    write_all(&mut store, &batches);
    assert_eq!(store.segment_count(), 3);
    let first = store.segments()[0].path.clone();
    let second = store.segments()[1].path.clone();
    let first_blocks = store.segments()[0].blocks.clone();
    let second_blocks = store.segments()[1].blocks.clone();
    drop(store);

    // Flip a payload byte of the middle block of segment 0 and a header byte of the
    // middle block of segment 1.
    let f = OpenOptions::new()
        .write(true)
        .read(true)
        .open(&first)
        .unwrap();
    f.write_all_at(b"\xaa", first_blocks[1].position + HEADER_LEN as u64 + 2)
        .unwrap();
    let f = OpenOptions::new()
        .write(true)
        .read(true)
        .open(&second)
        .unwrap();
    f.write_all_at(b"\xaa\xbb", second_blocks[1].position + 30)
        .unwrap();

    let results = query_json(dir.path(), &[]);
    let offsets: Vec<u64> = results
        .iter()
        .map(|v| v["offset"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (0..27)
        .filter(|i| !(3..6).contains(i) && !(12..15).contains(i))
        .map(|i| i * 10)
        .collect();
    assert_eq!(offsets, expected);
    let stats = query_json(dir.path(), &["--stats"]);
    assert_eq!(stats[0]["damaged_blocks"], 1);
    assert_eq!(stats[0]["blocks"], 7);

    // The writer opens it too: sealed segments are not repaired, only indexed.
    let store = Store::open(dir.path(), opts).unwrap();
    assert_eq!(store.stats().torn_blocks, 0);
    assert_eq!(store.segments()[1].blocks.len(), 2);
}

#[test]
fn segments_roll_and_retention_deletes_oldest_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/a");
    let opts = StoreOptions {
        segment_bytes: 1,
        max_bytes: u64::MAX,
        max_age: None,
        min_free: MinFree::Off,
    };
    let mut store = Store::open(dir.path(), opts.clone()).unwrap();
    // segment_bytes 1: every block gets its own segment.
    write_all(
        &mut store,
        &[batch(&a, 0, 0..3, "x"), batch(&a, 1, 3..6, "x")],
    );
    let one = store.segments()[0].len;
    drop(store);

    // Later bodies are a few bytes longer ("x 10" vs "x 1"): three fit, four do not.
    let opts = StoreOptions {
        max_bytes: one * 3 + one / 2,
        ..opts
    };
    let mut store = Store::open(dir.path(), opts.clone()).unwrap();
    for p in 2..10 {
        write_all(&mut store, &[batch(&a, p, p * 3..p * 3 + 3, "x")]);
        assert!(
            store.total_bytes() <= one * 3 + one / 2,
            "{}",
            store.total_bytes()
        );
    }
    assert_eq!(store.segment_count(), 3);
    assert_eq!(store.stats().retention_deleted_segments, 7);
    assert!(store.stats().retention_deleted_bytes >= 7 * one);
    let on_disk = segment::list_segments(&dir.path().join("segments")).unwrap();
    let names: Vec<u64> = on_disk.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(names, [7, 8, 9]);
    let offsets: Vec<u64> = query_json(dir.path(), &[])
        .iter()
        .map(|v| v["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (21..30).map(|i| i * 10).collect::<Vec<_>>());

    // The active segment is never deleted, even alone over the limit.
    drop(store);
    let opts = StoreOptions {
        max_bytes: 0,
        ..opts
    };
    let store = Store::open(dir.path(), opts).unwrap();
    assert_eq!(store.segment_count(), 1);
    assert_eq!(store.segments()[0].first_seq, 9);
}

#[test]
fn retention_deletes_sealed_segments_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/a");
    let opts = StoreOptions {
        segment_bytes: 1,
        max_bytes: u64::MAX,
        max_age: Some(Duration::from_secs(3600)),
        min_free: MinFree::Off,
    };
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let aged = |p: u64, age_secs: i64| {
        let mut b = batch(&a, p, p * 3..p * 3 + 3, "x");
        for l in &mut b.lines {
            l.timestamp_ns = now_ns - age_secs * 1_000_000_000;
        }
        b
    };
    let mut store = Store::open(dir.path(), opts).unwrap();
    // Retention runs on every write; the 2-hour-old segment goes once it is sealed.
    write_all(&mut store, &[aged(0, 7200), aged(1, 7200)]);
    assert_eq!(
        store.segment_count(),
        1,
        "the active segment stays however old"
    );
    write_all(&mut store, &[aged(2, 60), aged(3, 60)]);
    assert_eq!(store.segment_count(), 2);
    assert_eq!(store.stats().retention_deleted_segments, 2);
    // Later, the 1-minute-old segment ages out too (the active one stays).
    store.enforce_retention_at(SystemTime::now() + Duration::from_secs(3600));
    assert_eq!(store.segment_count(), 1);
    assert_eq!(store.stats().retention_deleted_segments, 3);
}

#[test]
fn idle_store_expires_an_old_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/a");
    let opts = StoreOptions {
        segment_bytes: 1 << 20,
        max_bytes: u64::MAX,
        max_age: Some(Duration::from_secs(3600)),
        min_free: MinFree::Off,
    };
    let two_hours_ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
        - 7200 * 1_000_000_000;
    let mut b = batch(&a, 0, 0..3, "x");
    for l in &mut b.lines {
        l.timestamp_ns = two_hours_ago;
    }
    let mut store = Store::open(dir.path(), opts).unwrap();
    write_all(&mut store, &[b]);
    assert_eq!(
        store.stats().retention_deleted_segments,
        0,
        "only segment, active"
    );
    // A quiet node: no more writes, only the worker's idle housekeeping.
    store.idle().unwrap();
    assert_eq!(store.stats().retention_deleted_segments, 1);
    assert!(
        query_json(dir.path(), &[]).is_empty(),
        "expired records are gone"
    );
    // The store stays writable after sealing its active segment.
    write_all(&mut store, &[batch(&a, 1, 3..6, "fresh")]);
    assert_eq!(query_json(dir.path(), &[]).len(), 3);
}

#[test]
fn invalid_utf8_round_trips_and_displays_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/a");
    let mut b = batch(&a, 0, 0..1, "x");
    let raw: &[u8] = b"caf\xc3\xa9 \xff\xfe\x00 end";
    b.set_body(0, Bytes::from_static(raw));
    b.lines[0].flags = LineFlags::INVALID_UTF8;
    let mut store = Store::open(dir.path(), options()).unwrap();
    write_all(&mut store, &[b]);

    let json = query_json(dir.path(), &["end"]);
    assert!(json[0].get("body").is_none());
    assert_eq!(
        b64::decode(json[0]["body_base64"].as_str().unwrap()).unwrap(),
        raw
    );
    assert_eq!(json[0]["flags"], serde_json::json!(["invalid_utf8"]));
    let text = query(dir.path(), &["end"]);
    assert!(
        text.ends_with(" /a:0 [stdout] café \\xff\\xfe\\x00 end\n"),
        "{text}"
    );
}

#[test]
fn ten_megabyte_body_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/a");
    // Poorly compressible bytes, so the block really is ~10 MB.
    let mut body = Vec::with_capacity(10 << 20);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while body.len() < 10 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body.extend_from_slice(&x.to_le_bytes());
    }
    body.extend_from_slice(b"NEEDLE");
    let mut b = batch(&a, 0, 0..2, "x");
    b.set_body(1, Bytes::from(body.clone()));
    b.end_offset = 10 + body.len() as u64 + 1;
    let mut store = Store::open(dir.path(), options()).unwrap();
    write_all(&mut store, &[b]);
    assert!(store.total_bytes() > 10 << 20);
    drop(store);
    let json = query_json(dir.path(), &["NEEDLE"]);
    assert_eq!(json.len(), 1);
    assert_eq!(
        b64::decode(json[0]["body_base64"].as_str().unwrap()).unwrap(),
        body
    );
}

#[test]
fn package_of_ten_thousand_lines_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/a");
    let mut b = batch(&a, 0, 0..10_000, "line");
    b.fields = (0..10_000u32)
        .filter(|i| i % 1000 == 0)
        .map(|i| Field {
            line: i,
            key: Bytes::from_static(b"k"),
            value: Bytes::from(i.to_string()).into(),
        })
        .collect();
    let mut store = Store::open(dir.path(), options()).unwrap();
    write_all(&mut store, &[b]);
    assert_eq!(store.segments()[0].blocks[0].header.line_count, 10_000);
    drop(store);
    let all = query_json(dir.path(), &["--limit", "0"]);
    assert_eq!(all.len(), 10_000);
    for (i, v) in all.iter().enumerate() {
        assert_eq!(v["offset"], i as u64 * 10);
        assert_eq!(v["body"], format!("line {i}"));
    }
    assert_eq!(all[3000]["fields"]["k"], "3000");
    assert_eq!(
        bodies(&query_json(dir.path(), &["--field", "k=9000"])),
        ["line 9000"]
    );
}

#[test]
fn reader_runs_while_writer_appends() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/a");
    let opts = StoreOptions {
        segment_bytes: 4096,
        ..options()
    };
    let path = dir.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        let mut store = Store::open(&path, opts).unwrap();
        for p in 0..300u64 {
            store.write(&batch(&a, p, p * 5..p * 5 + 5, "w")).unwrap();
            if p % 10 == 0 {
                store.flush().unwrap();
            }
        }
        store.flush().unwrap();
    });
    let mut last = 0u64;
    let mut rounds = 0;
    loop {
        let done = writer.is_finished();
        let stats = query_json(dir.path(), &["--stats"]);
        let records = stats[0]["records"].as_u64().unwrap();
        assert_eq!(stats[0]["duplicates"], 0);
        assert_eq!(records % 5, 0, "whole packages only");
        assert!(records >= last, "records went from {last} to {records}");
        last = records;
        rounds += 1;
        if done {
            break;
        }
    }
    writer.join().unwrap();
    assert_eq!(last, 1500);
    assert!(rounds >= 1);
    let tail = query_json(dir.path(), &["--tail", "--limit", "1"]);
    assert_eq!(tail[0]["body"], "w 1499");
}

#[test]
fn write_does_not_sync_and_flush_makes_state_consistent() {
    // Group commit: writes only mark the segment dirty; flush clears it.
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/a");
    let mut store = Store::open(dir.path(), options()).unwrap();
    store.write(&batch(&a, 0, 0..1, "x")).unwrap();
    store.write(&batch(&a, 1, 1..2, "x")).unwrap();
    assert!(store.active_dirty && store.dir_dirty);
    store.flush().unwrap();
    assert!(!store.active_dirty && !store.dir_dirty);
    // Empty packages are stored (they carry the end offset) but not replays.
    let mut empty = batch(&a, 2, 2..2, "x");
    empty.end_offset = 25;
    store.write(&empty).unwrap();
    store.write(&batch(&a, 3, 3..4, "x")).unwrap();
    assert_eq!(store.stats().replayed_packages, 0);
    assert_eq!(store.segments()[0].blocks[2].header.first_offset, 25);
}

#[test]
fn second_writer_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path(), options()).unwrap();
    assert!(matches!(
        Store::open(dir.path(), options()),
        Err(StoreError::Locked { .. })
    ));
    drop(first);
    Store::open(dir.path(), options()).unwrap();
}

#[test]
fn missing_store_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cli =
        Cli::try_parse_from(["q", "--store", dir.path().join("nope").to_str().unwrap()]).unwrap();
    let err = run_query(&cli.args, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("no store"), "{err}");
    assert!(Cli::try_parse_from(["q", "--since", "yesterday-ish"]).is_err());
    assert!(Cli::try_parse_from(["q", "--field", "novalue"]).is_err());
}

#[test]
fn appending_after_unflushed_garbage_keeps_blocks_parseable() {
    // Bytes after the last block (a crash mid-write) must not end up between blocks.
    let dir = tempfile::tempdir().unwrap();
    let a = source(1, "/a");
    let mut store = Store::open(dir.path(), options()).unwrap();
    write_all(&mut store, &[batch(&a, 0, 0..3, "x")]);
    let seg = store.segments()[0].path.clone();
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(b"junk").unwrap();
    drop(f);
    drop(store);
    let mut store = Store::open(dir.path(), options()).unwrap();
    write_all(&mut store, &[batch(&a, 1, 3..6, "x")]);
    let file = std::fs::File::open(&seg).unwrap();
    let len = file.metadata().unwrap().len();
    let scan = segment::scan_segment(&file, len, segment::ScanMode::VerifyPayloads).unwrap();
    assert_eq!(scan.blocks.len(), 2);
    assert_eq!(scan.tail, None);
}

/// A CRI package as the framer builds it when a stderr record made of `P` fragments
/// completes after stdout records that started later: `(offset, stream, body)` in
/// completion order.
fn cri_batch(
    src: &Arc<SourceInfo>,
    package_id: u64,
    records: &[(u64, Stream, &str)],
    end_offset: u64,
) -> Batch {
    Batch {
        chunks: Vec::new(),
        source: src.clone(),
        package_id,
        lines: Vec::new(),
        fields: Vec::new(),
        source_fields: Default::default(),
        end_offset,
    }
    .with_lines(
        records
            .iter()
            .map(|&(offset, stream, body)| Record {
                offset,
                timestamp_ns: T0 + offset as i64,
                stream,
                flags: LineFlags::empty(),
                body: Bytes::from(body.to_owned()).into(),
            })
            .collect(),
    )
}

/// The packages of one CRI file while a stderr record (started at 50 by a `P`
/// fragment) is pending: package 1 ends at 50 although it holds the stdout record at
/// 100; package 2 holds the stderr record at 50 *after* the stdout record at 150.
fn interleaved_cri_packages(src: &Arc<SourceInfo>) -> Vec<Batch> {
    use Stream::{Stderr, Stdout};
    vec![
        cri_batch(
            src,
            1,
            &[(0, Stdout, "out 0"), (100, Stdout, "out 100")],
            50,
        ),
        cri_batch(
            src,
            2,
            &[(150, Stdout, "out 150"), (50, Stderr, "err 50")],
            200,
        ),
        cri_batch(src, 3, &[(200, Stdout, "out 200")], 250),
    ]
}

#[test]
fn dedupe_handles_records_out_of_offset_order_within_a_package() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(1, "/var/log/pods/ns_p_1/c/0.log");
    let packages = interleaved_cri_packages(&src);
    let mut store = Store::open(dir.path(), options()).unwrap();
    // Stored, then the agent was killed before the checkpoint moved past 0: every
    // package is shipped again (same ids, same records).
    write_all(&mut store, &packages);
    write_all(&mut store, &packages);
    // Killed again with only the first package checkpointed (offset 50).
    write_all(&mut store, &packages[1..]);
    drop(store);

    let mut got = bodies(&query_json(dir.path(), &[]));
    got.sort();
    assert_eq!(
        got,
        ["err 50", "out 0", "out 100", "out 150", "out 200"],
        "each (source, offset) once"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&query(dir.path(), &["--stats", "--json"])).unwrap();
    assert_eq!(stats["unique"], 5, "{stats}");
    assert_eq!(stats["duplicates"], 8, "{stats}");
}

#[test]
fn context_follows_offsets_when_records_are_out_of_order_in_packages() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(1, "/var/log/pods/ns_p_1/c/0.log");
    let mut store = Store::open(dir.path(), options()).unwrap();
    write_all(&mut store, &interleaved_cri_packages(&src));
    drop(store);

    // Source order around the stderr record at 50: 0 | 50 | 100, 150, 200.
    let out = query_json(dir.path(), &["-C", "1", "err"]);
    let offsets: Vec<u64> = out.iter().map(|v| v["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [0, 50, 100], "{out:?}");
    // Around the stdout record at 100 (in a package ending at 50): 50 | 100 | 150.
    let out = query_json(dir.path(), &["-C", "1", "out 100"]);
    let offsets: Vec<u64> = out.iter().map(|v| v["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [50, 100, 150], "{out:?}");
    // Around 150 (first record of a package that also holds 50): 100 | 150 | 200.
    let out = query_json(dir.path(), &["-C", "1", "out 150"]);
    let offsets: Vec<u64> = out.iter().map(|v| v["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [100, 150, 200], "{out:?}");
}

#[test]
fn disk_full_mid_write_leaves_store_readable_and_writable() {
    let Some(fs) = crate::sink::test_fs::SmallFs::mount("256k") else {
        return;
    };
    let store_dir = fs.path().join("store");
    let mut store = Store::open(&store_dir, options()).unwrap();
    // A path longer than a page: its source-table line is torn by the full disk.
    let long = format!("/var/log/pods/{}/app.log", "p".repeat(6000));
    let src = source(1, &long);
    let filler = fs.fill_leaving(4096);
    let first = batch(&src, 1, 0..3, "first");
    assert!(store.write(&first).is_err(), "the disk is full");
    std::fs::remove_file(&filler).unwrap();
    // The worker retries the same package once space is back.
    write_all(&mut store, &[first]);

    // Full again, now in the middle of a block (incompressible body of 20 KiB).
    let filler = fs.fill_leaving(4096);
    let mut big = batch(&src, 2, 3..4, "big");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    big.set_body(0, Bytes::from(noise.clone()));
    assert!(store.write(&big).is_err(), "the disk is full");
    std::fs::remove_file(&filler).unwrap();
    write_all(&mut store, &[big, batch(&src, 3, 4..6, "after")]);
    drop(store);

    let store = Store::open(&store_dir, options()).unwrap();
    assert_eq!(store.stats().torn_blocks, 0);
    drop(store);
    let out = query_json(&store_dir, &["--limit", "0"]);
    assert_eq!(out.len(), 6, "{out:?}");
    for v in &out {
        assert!(
            v["path"] == long.as_str(),
            "source table entry lost: {}",
            v["offset"]
        );
    }
    assert_eq!(v_body_b64(&out[3]), noise);
}

fn v_body_b64(v: &serde_json::Value) -> Vec<u8> {
    match v.get("body") {
        Some(s) => s.as_str().unwrap().as_bytes().to_vec(),
        None => b64::decode(v["body_base64"].as_str().unwrap()).unwrap(),
    }
}

/// Source fields are stored with each package: `--field` filters on them as on parsed
/// fields, JSON shows them under `resource` (also in context), text names the pod, and
/// a later package of the same source may carry more of them.
#[test]
fn source_fields_are_stored_per_package_shown_and_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), options()).unwrap();
    let pod = source(1, "/var/log/pods/shop_web-1_uid/app/0.log");
    let other = source(2, "/var/log/syslog");
    let fields = |pairs: &[(&'static str, &'static str)]| {
        Arc::new(
            pairs
                .iter()
                .map(|&(k, v)| {
                    (
                        Bytes::from_static(k.as_bytes()),
                        Bytes::from_static(v.as_bytes()),
                    )
                })
                .collect::<Vec<_>>(),
        )
    };
    let path_only = fields(&[
        ("k8s.pod", "web-1"),
        ("k8s.namespace", "shop"),
        ("k8s.container", "app"),
    ]);
    let full = fields(&[
        ("k8s.pod", "web-1"),
        ("k8s.namespace", "shop"),
        ("k8s.container", "app"),
        ("k8s.pod.label.app", "demo"),
    ]);
    let mut first = batch(&pod, 0, 0..2, "web");
    first.source_fields = path_only;
    let mut second = batch(&pod, 1, 2..4, "web");
    second.source_fields = full;
    let mut host = batch(&other, 0, 0..2, "host");
    host.source_fields = fields(&[("k8s.node", "node-a")]);
    write_all(&mut store, &[first, host, second]);

    let pod_lines = query_json(dir.path(), &["--field", "k8s.pod=web-1"]);
    assert_eq!(bodies(&pod_lines), ["web 0", "web 1", "web 2", "web 3"]);
    assert_eq!(pod_lines[0]["resource"]["k8s.namespace"], "shop");
    assert!(pod_lines[0]["resource"].get("k8s.pod.label.app").is_none());
    assert_eq!(pod_lines[3]["resource"]["k8s.pod.label.app"], "demo");

    let labelled = query_json(dir.path(), &["--field", "k8s.pod.label.app=demo"]);
    assert_eq!(bodies(&labelled), ["web 2", "web 3"]);
    let host_lines = query_json(dir.path(), &["--field", "k8s.node=node-a"]);
    assert_eq!(bodies(&host_lines), ["host 0", "host 1"]);
    assert!(query_json(dir.path(), &["--field", "k8s.pod=web-2"]).is_empty());

    let with_context = query_json(
        dir.path(),
        &["--field", "k8s.pod.label.app=demo", "-C", "1", "-n", "1"],
    );
    assert_eq!(bodies(&with_context), ["web 1", "web 2", "web 3"]);
    assert_eq!(with_context[0]["context"], true);
    assert_eq!(with_context[0]["resource"]["k8s.pod"], "web-1");

    let text = query(dir.path(), &["--field", "k8s.pod=web-1", "-n", "1"]);
    assert!(
        text.ends_with(":0 [stdout] shop/web-1/app web 0\n"),
        "{text}"
    );
}

/// Issue 9: a disk that fills below `max_size` (other files grow, or `max_size` is
/// larger than the disk) stalled the store for good: retention ran by size only.
/// With `min_free` the oldest segments go first, and writes keep succeeding.
#[test]
fn retention_keeps_min_free_space_on_the_disk() {
    let Some(fs) = crate::sink::test_fs::SmallFs::mount("4m") else {
        return;
    };
    let store_dir = fs.path().join("store");
    let opts = StoreOptions {
        segment_bytes: 256 << 10,
        max_bytes: 1 << 40,
        max_age: None,
        min_free: MinFree::Bytes(1 << 20),
    };
    let mut store = Store::open(&store_dir, opts).unwrap();
    let src = source(1, "/a");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    // 12 MiB of incompressible packages through a 4 MiB disk.
    for p in 0..192u64 {
        let mut b = batch(&src, p, p..p + 1, "x");
        let noise: Vec<u8> = (0..64 << 10)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        b.set_body(0, Bytes::from(noise));
        store
            .write(&b)
            .unwrap_or_else(|e| panic!("package {p}: {e}"));
        store.flush().unwrap();
    }
    assert!(
        store.stats().retention_deleted_bytes > 8 << 20,
        "{:?}",
        store.stats()
    );
    let free = super::free_space(&store_dir).unwrap().0;
    assert!(free >= (1 << 20) - (256 << 10), "free {free}");
}

/// Issue 9: with container churn the source table and the replay index gained an
/// entry per source ever seen, forever. Retention prunes them with the segments.
#[test]
fn retention_prunes_the_source_table_of_sources_it_no_longer_holds() {
    let dir = tempfile::tempdir().unwrap();
    let probe = tempfile::tempdir().unwrap();
    let one = {
        let mut s = Store::open(probe.path(), options()).unwrap();
        write_all(&mut s, &[batch(&source(1, "/p/1.log"), 0, 0..3, "x")]);
        s.total_bytes()
    };
    let opts = StoreOptions {
        segment_bytes: 1,
        max_bytes: one * 20,
        ..options()
    };
    let mut store = Store::open(dir.path(), opts.clone()).unwrap();
    for id in 1..=1500u64 {
        let src = source(id, &format!("/var/log/pods/churn-{id}/0.log"));
        write_all(&mut store, &[batch(&src, 0, 0..3, "x")]);
    }
    let held: std::collections::HashSet<u64> = store
        .segments()
        .iter()
        .flat_map(|s| s.blocks.iter().map(|b| b.header.source_id))
        .collect();
    assert!(held.len() <= 25, "{}", held.len());
    assert!(
        store.stored_end_len() <= 2 * held.len() + 1024,
        "{}",
        store.stored_end_len()
    );
    drop(store);
    let table = std::fs::read_to_string(dir.path().join(sources::SOURCES_FILE)).unwrap();
    assert!(
        table.lines().count() <= 2 * held.len() + 1024,
        "{} lines",
        table.lines().count()
    );
    // Every source the store still holds is named, after a reopen too.
    let store = Store::open(dir.path(), opts).unwrap();
    for id in &held {
        assert!(
            store.source(SourceId(*id)).is_some(),
            "source {id:x} lost its name"
        );
    }
    let records = query_json(dir.path(), &[]);
    assert!(
        records
            .iter()
            .all(|r| r["path"].as_str().is_some_and(|p| p.contains("churn-")))
    );
}

/// Found by the `store_segment` fuzz target: a block whose header (CRCs intact) claims
/// a 4 GiB payload made `read_block` reserve 4 GiB before decompressing anything. A
/// claim lz4 cannot meet from the compressed length is refused up front.
#[test]
fn a_block_claiming_an_impossible_payload_size_is_refused_before_allocating() {
    let mut compressed = Vec::new();
    codec::compress(b"tiny payload", &mut compressed);
    let header = segment::BlockHeader {
        compressed_len: compressed.len() as u32,
        uncompressed_len: u32::MAX,
        line_count: 1,
        offset_span: 0,
        source_id: 1,
        package_id: 1,
        first_offset: 0,
        end_offset: 10,
        min_ts: T0,
        max_ts: T0,
        payload_crc: crc32fast::hash(&compressed),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000000000000000000.seg");
    std::fs::write(&path, [&header.encode()[..], &compressed].concat()).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let len = file.metadata().unwrap().len();
    let scan = segment::scan_segment(&file, len, segment::ScanMode::VerifyPayloads).unwrap();
    let block = &scan.blocks[0];
    let mut scratch = Vec::new();
    match segment::read_block(&file, block, &mut scratch) {
        Err(segment::BlockError::Implausible {
            claimed,
            compressed: c,
        }) => {
            assert_eq!((claimed, c as usize), (u32::MAX, compressed.len()));
        }
        other => panic!("{other:?}"),
    }
}

/// Copies the files of `from` (and its subdirectories) into `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A store the released agent wrote (`testdata/v3`, see its README: payload version 3,
/// one lz4 block) reads as that agent's own query read it, and a store opened on it
/// appends behind the old blocks: what a change of the block or payload format must
/// keep true.
#[test]
fn a_store_written_by_an_earlier_agent_still_reads_and_takes_new_blocks() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sink/store/testdata/v3");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture.join("store"), dir.path());
    let expected: Vec<serde_json::Value> = std::fs::read_to_string(fixture.join("expected.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(expected.len(), 3, "the fixture's records");
    assert_eq!(query_json(dir.path(), &[]), expected);

    let mut store = Store::open(dir.path(), options()).unwrap();
    let old_blocks = store
        .segments()
        .iter()
        .map(|s| s.blocks.len())
        .sum::<usize>();
    let src = source(9, "/var/log/new.log");
    write_all(&mut store, &[batch(&src, 0, 0..3, "new")]);
    drop(store);
    let all = query_json(dir.path(), &[]);
    assert_eq!(all[..3], expected, "the old records, unchanged");
    assert_eq!(bodies(&all[3..]), ["new 0", "new 1", "new 2"]);
    let store = Store::open(dir.path(), options()).unwrap();
    assert_eq!(
        store
            .segments()
            .iter()
            .map(|s| s.blocks.len())
            .sum::<usize>(),
        old_blocks + 1
    );
}

/// `compression: none` writes blocks in the same format, lz4 literals: they take the
/// payload's bytes on disk, lz4's a fraction of them, and both read back the same.
#[test]
fn uncompressed_blocks_read_back_as_compressed_ones_do() {
    let src = source(1, "/var/log/a.log");
    // Repetitive bodies: lz4 shrinks them many times over.
    let packages = [batch(&src, 0, 0..2000, "GET /api/v1/items 200 OK")];
    let mut sizes = Vec::new();
    let mut results = Vec::new();
    for compress in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), options()).unwrap();
        let mut store = if compress {
            store
        } else {
            store.without_compression()
        };
        write_all(&mut store, &packages);
        sizes.push(store.total_bytes);
        drop(store);
        results.push(query_json(dir.path(), &["GET", "--limit", "0"]));
    }
    let payload: usize = packages[0].lines.iter().map(|l| l.body.len()).sum();
    assert!(
        sizes[0] * 4 < payload as u64,
        "lz4: {sizes:?} for {payload}"
    );
    assert!(sizes[1] > payload as u64, "none: {sizes:?} for {payload}");
    assert_eq!(results[0].len(), 2000);
    assert_eq!(results[0], results[1]);
}

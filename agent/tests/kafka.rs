//! The Kafka destination against a real broker (tansu, see `common/kafka.rs`), read
//! back by a real consumer: every record once, in order per source, with its headers,
//! key and JSON body; topic templates; compression; outages with exact counts.

mod common;
#[path = "common/kafka.rs"]
mod kafka_fixture;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_fixture::{Broker, Msg};
use logtap::batch::codec::{Package, Record};
use logtap::config::network::{
    BlockCompression, ForwardConfig, KafkaCompression, KafkaConfig, KafkaValue, MessagePer,
    SpoolConfig, TemplatePart, WhenFull,
};
use logtap::frame::{LineFlags, Stream};
use logtap::sink::destination::{Destination, SpooledPackage};
use logtap::sink::kafka::KafkaDestination;
use logtap::source::{SourceId, SourceInfo, SourceKind};

const CONSUME: Duration = Duration::from_secs(60);

fn config(broker: &Broker, topic: Vec<TemplatePart>) -> KafkaConfig {
    KafkaConfig {
        brokers: vec![broker.bootstrap()],
        topic,
        key: None,
        compression: KafkaCompression::Lz4,
        acks: "all".into(),
        idempotent: true,
        tls: None,
        sasl: None,
        properties: BTreeMap::new(),
        message_timeout: Duration::from_secs(5),
        message_per: MessagePer::Record,
        value: KafkaValue::Lines,
        forward: ForwardConfig {
            spool: SpoolConfig {
                path: PathBuf::from("/nonexistent"),
                max_bytes: 1 << 30,
                segment_bytes: 1 << 26,
                when_full: WhenFull::Block,
                compression: BlockCompression::Lz4,
            },
            dead_letter: None,
            max_window_bytes: 8 << 20,
            max_window_packages: 1024,
            drain_timeout: Duration::from_secs(5),
        },
    }
}

fn fixed(topic: &str) -> Vec<TemplatePart> {
    vec![TemplatePart::Literal(topic.into())]
}

fn source(id: u64) -> Arc<SourceInfo> {
    Arc::new(SourceInfo {
        id: SourceId(id),
        kind: SourceKind::CriFile,
        path: format!("/var/log/pods/ns_pod{id}_uid/app/0.log").into(),
        config_name: Arc::from("pods"),
    })
}

/// Package `package_id` of `source` with `n` records at offsets
/// `package_id * 1_000_000 + i * 100`, bodies `src=<id> pkg=<p> i=<i>` padded.
fn package(
    seq: u64,
    source: &Arc<SourceInfo>,
    namespace: Option<&str>,
    package_id: u64,
    n: usize,
) -> SpooledPackage {
    let mut source_fields = vec![(
        Bytes::from_static(b"k8s.pod"),
        Bytes::from(format!("pod{}", source.id.0)),
    )];
    if let Some(ns) = namespace {
        source_fields.push((
            Bytes::from_static(b"k8s.namespace"),
            Bytes::from(ns.to_owned()),
        ));
    }
    let records = (0..n)
        .map(|i| Record {
            offset: package_id * 1_000_000 + i as u64 * 100,
            timestamp_ns: 1_700_000_000_000_000_000 + i as i64,
            stream: Stream::Stdout,
            flags: LineFlags::empty(),
            body: Bytes::from(format!(
                "src={} pkg={package_id} i={i} {}",
                source.id.0,
                "x".repeat(60)
            )),
            fields: if i.is_multiple_of(2) {
                vec![(Bytes::from_static(b"level"), Bytes::from_static(b"info"))]
            } else {
                Vec::new()
            },
        })
        .collect();
    SpooledPackage {
        seq,
        source: source.clone(),
        package_id,
        package: Package {
            source_fields,
            records,
        },
    }
}

/// Every message is one record of `window`, each record exactly once, with headers,
/// key and body matching; each source in one partition, in offset order.
fn assert_exactly(window: &[SpooledPackage], msgs: &[Msg]) {
    let expected: usize = window.iter().map(|p| p.package.records.len()).sum();
    let mut seen: HashMap<(String, u64), usize> = HashMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut last_offset: HashMap<String, (i32, i64, u64)> = HashMap::new();
    let mut sorted: Vec<&Msg> = msgs.iter().collect();
    sorted.sort_by_key(|m| (m.topic.clone(), m.partition, m.offset));
    for m in sorted {
        let source_id = m
            .header("logtap.source_id")
            .expect("source_id header")
            .to_owned();
        let offset: u64 = m.header("logtap.offset").unwrap().parse().unwrap();
        let package_id: u64 = m.header("logtap.package_id").unwrap().parse().unwrap();
        let json = m.json();
        assert_eq!(json["source_id"], source_id.as_str());
        assert_eq!(json["offset"], offset);
        assert_eq!(json["package_id"], package_id);
        assert_eq!(
            m.key.as_deref(),
            Some(source_id.as_bytes()),
            "key is the source id"
        );
        assert_eq!(offset / 1_000_000, package_id);
        let body = json["body"].as_str().unwrap();
        let id = u64::from_str_radix(&source_id, 16).unwrap();
        assert!(
            body.starts_with(&format!("src={id} pkg={package_id} i=")),
            "{body}"
        );
        assert_eq!(json["resource"]["k8s.pod"], format!("pod{id}"));
        let i = (offset % 1_000_000) / 100;
        if i.is_multiple_of(2) {
            assert_eq!(json["fields"]["level"], "info");
        }
        let p = *partition_of.entry(source_id.clone()).or_insert(m.partition);
        assert_eq!(p, m.partition, "source {source_id} stays in one partition");
        if let Some(&(_, _, prev)) = last_offset.get(&source_id) {
            assert!(
                offset > prev,
                "source {source_id}: offset {offset} after {prev}"
            );
        }
        last_offset.insert(source_id.clone(), (m.partition, m.offset, offset));
        *seen.entry((source_id, offset)).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|&(_, &n)| n > 1).collect();
    assert!(
        dups.is_empty(),
        "duplicates: {:?}",
        &dups[..dups.len().min(5)]
    );
    assert_eq!(seen.len(), expected, "every record once");
    assert_eq!(msgs.len(), expected);
}

#[test]
fn a_window_arrives_once_in_order_with_headers_key_and_body() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    broker.create_topic("logs", 3);
    let mut dest = KafkaDestination::new(&config(&broker, fixed("logs"))).unwrap();
    assert_eq!(dest.kind(), "kafka");
    let sources: Vec<_> = (1..=4).map(|i| source(0x1000 + i)).collect();
    let mut seq = 0;
    let mut all = Vec::new();
    for round in 0..2 {
        let mut window = Vec::new();
        for pkg in 0..5 {
            for s in &sources {
                seq += 1;
                window.push(package(seq, s, Some("shop"), round * 5 + pkg, 400));
            }
        }
        let t = Instant::now();
        let delivered = dest.send(&window).expect("send");
        eprintln!("window of {} records sent in {:?}", 20 * 400, t.elapsed());
        assert!(delivered.rejected.is_empty(), "{delivered:?}");
        assert_eq!(dest.last_skipped(), 0);
        all.extend(window);
    }
    let msgs = broker.consume("logs", 2 * 20 * 400, CONSUME);
    assert_exactly(&all, &msgs);
    let partitions: std::collections::HashSet<i32> = msgs.iter().map(|m| m.partition).collect();
    eprintln!("partitions used: {partitions:?}");
}

#[test]
fn a_topic_template_routes_namespaces_to_their_topics() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    for t in ["logs-shop", "logs-billing", "logs-unknown"] {
        broker.create_topic(t, 2);
    }
    let template = vec![
        TemplatePart::Literal("logs-".into()),
        TemplatePart::Field("k8s.namespace".into()),
    ];
    let mut dest = KafkaDestination::new(&config(&broker, template)).unwrap();
    let (a, b, c) = (source(1), source(2), source(3));
    let window = vec![
        package(1, &a, Some("shop"), 0, 100),
        package(2, &b, Some("billing"), 0, 50),
        package(3, &a, Some("shop"), 1, 100),
        package(4, &c, None, 0, 7),
    ];
    let delivered = dest.send(&window).expect("send");
    assert!(delivered.rejected.is_empty());
    let shop = broker.consume("logs-shop", 200, CONSUME);
    assert_exactly(&[window[0].clone(), window[2].clone()], &shop);
    let billing = broker.consume("logs-billing", 50, CONSUME);
    assert_exactly(&window[1..2], &billing);
    let unknown = broker.consume("logs-unknown", 7, CONSUME);
    assert_exactly(&window[3..4], &unknown);
}

#[test]
fn compressed_with_every_codec() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    for (i, codec) in [
        KafkaCompression::Lz4,
        KafkaCompression::Zstd,
        KafkaCompression::Gzip,
        KafkaCompression::Snappy,
        KafkaCompression::None,
    ]
    .into_iter()
    .enumerate()
    {
        let topic = format!("codec-{}", codec.as_str());
        broker.create_topic(&topic, 1);
        let mut cfg = config(&broker, fixed(&topic));
        cfg.compression = codec;
        let mut dest = KafkaDestination::new(&cfg).unwrap();
        let s = source(100 + i as u64);
        let window = vec![
            package(1, &s, Some("ns"), 0, 300),
            package(2, &s, Some("ns"), 1, 300),
        ];
        dest.send(&window).expect("send");
        let msgs = broker.consume(&topic, 600, CONSUME);
        assert_exactly(&window, &msgs);
    }
}

#[test]
fn a_stopped_broker_fails_the_window_in_time_and_the_retry_delivers_it() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    broker.create_topic("logs", 2);
    let mut cfg = config(&broker, fixed("logs"));
    cfg.message_timeout = Duration::from_secs(3);
    let mut dest = KafkaDestination::new(&cfg).unwrap();
    let s = source(7);
    let first = vec![package(1, &s, Some("ns"), 0, 500)];
    dest.send(&first).expect("send while up");
    assert_exactly(&first, &broker.consume("logs", 500, CONSUME));

    broker.kill();
    let second = vec![
        package(2, &s, Some("ns"), 1, 500),
        package(3, &s, Some("ns"), 2, 500),
    ];
    let t = Instant::now();
    let err = dest.send(&second).expect_err("the broker is down");
    let took = t.elapsed();
    eprintln!("send with the broker down: {err} after {took:?}");
    assert!(
        took < Duration::from_secs(3) + Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        took >= Duration::from_secs(2),
        "librdkafka tried until its timeout: {took:?}"
    );

    // Back (empty: memory storage), the same window again: everything, once.
    broker.restart();
    let delivered = dest.send(&second).expect("send after the broker is back");
    assert!(delivered.rejected.is_empty());
    assert_eq!(dest.last_skipped(), 0, "nothing of it was delivered before");
    assert_exactly(&second, &broker.consume("logs", 1000, CONSUME));
}

/// A window whose records partly fail: the retry sends only the failed ones. The
/// failure is deterministic: one topic of the window does not exist yet (the broker
/// does not create topics), so its records time out while the others are delivered.
#[test]
fn a_retry_skips_what_the_failed_attempt_delivered() {
    retry_skips_what_the_failed_attempt_delivered(MessagePer::Record);
}

#[test]
fn a_retry_of_package_runs_skips_what_the_failed_attempt_delivered() {
    retry_skips_what_the_failed_attempt_delivered(MessagePer::Package);
}

#[test]
fn a_retry_of_package_values_skips_what_the_failed_attempt_delivered() {
    retry_skips_what_the_failed_attempt_delivered_as(MessagePer::Package, KafkaValue::Package);
}

fn retry_skips_what_the_failed_attempt_delivered(message_per: MessagePer) {
    retry_skips_what_the_failed_attempt_delivered_as(message_per, KafkaValue::Lines);
}

fn retry_skips_what_the_failed_attempt_delivered_as(message_per: MessagePer, value: KafkaValue) {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    broker.create_topic("t-a", 2);
    let template = vec![
        TemplatePart::Literal("t-".into()),
        TemplatePart::Field("k8s.namespace".into()),
    ];
    let mut cfg = config(&broker, template);
    cfg.message_timeout = Duration::from_secs(3);
    cfg.message_per = message_per;
    cfg.value = value;
    let mut dest = KafkaDestination::new(&cfg).unwrap();
    let (a, b) = (source(0xa), source(0xb));
    let window = vec![
        package(10, &a, Some("a"), 0, 300),
        package(11, &b, Some("b"), 0, 200),
        package(12, &a, Some("a"), 1, 300),
        package(13, &b, Some("b"), 1, 200),
    ];
    let err = dest.send(&window).expect_err("topic t-b does not exist");
    eprintln!("first attempt: {err}");
    assert!(err.detail.starts_with("400 of 1000 records"), "{err}");

    broker.create_topic("t-b", 2);
    let delivered = dest.send(&window).expect("retry");
    assert!(delivered.rejected.is_empty());
    assert_eq!(
        dest.last_skipped(),
        600,
        "t-a's records were delivered by the first attempt"
    );
    let on_a = unbatched(&broker.consume_records("t-a", 600, CONSUME));
    assert_exactly(&[window[0].clone(), window[2].clone()], &on_a);
    let on_b = unbatched(&broker.consume_records("t-b", 400, CONSUME));
    assert_exactly(&[window[1].clone(), window[3].clone()], &on_b);

    // The next window starts afresh.
    let next = vec![package(14, &a, Some("a"), 2, 10)];
    dest.send(&next).expect("next window");
    assert_eq!(dest.last_skipped(), 0);
}

/// Messages as one record each: runs of `message_per: package` split into their lines
/// or, with `value: package`, their records.
fn unbatched(msgs: &[Msg]) -> Vec<Msg> {
    msgs.iter()
        .flat_map(
            |m| match (m.header("logtap.records"), m.header("logtap.value")) {
                (Some(_), Some("package")) => m.split_package(),
                (Some(_), _) => m.split_run(),
                (None, _) => vec![m.clone()],
            },
        )
        .collect()
}

/// `message_per: package`: a package's records travel as runs of JSON lines, each run
/// one message under the client's size limit with the headers of its first record and
/// its record count; a record larger than the limit is refused alone, counted, and
/// the runs around it delivered.
#[test]
fn package_runs_carry_every_record_once_as_json_lines() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    broker.create_topic("runs", 3);
    let mut cfg = config(&broker, fixed("runs"));
    cfg.message_per = MessagePer::Package;
    cfg.properties
        .insert("message.max.bytes".into(), "40000".into());
    let mut dest = KafkaDestination::new(&cfg).unwrap();
    let sources: Vec<_> = (1..=3).map(|i| source(0x2000 + i)).collect();
    let mut window = Vec::new();
    for pkg in 0..4 {
        for s in &sources {
            window.push(package(window.len() as u64 + 1, s, Some("shop"), pkg, 300));
        }
    }
    window[4].package.records[5].body = Bytes::from(vec![b'y'; 60_000]);
    let delivered = dest.send(&window).expect("send");
    assert_eq!(delivered.rejected.len(), 1, "{delivered:?}");
    let r = &delivered.rejected[0];
    assert_eq!(
        (r.package, r.records.as_deref(), r.reason),
        (4, Some(&[5][..]), "too_large")
    );

    let total = 12 * 300 - 1;
    let msgs = broker.consume_records("runs", total, CONSUME);
    assert!(
        msgs.iter().all(|m| m.value.len() <= 40_000 - 4096),
        "runs stay under the limit"
    );
    assert!(
        msgs.len() * 50 < total,
        "{} messages for {total} records",
        msgs.len()
    );
    let mut expected = window.clone();
    expected[4].package.records.remove(5);
    assert_exactly(&expected, &unbatched(&msgs));
}

/// `value: package`: a consumer decodes each message back to exactly the records sent
/// — bodies, paths, resource and fields byte for byte, also where they are not UTF-8;
/// streams, flags, offsets and times — with the headers of its first record. Runs are
/// cut under the client's size limit, and a record larger than it is refused alone.
#[test]
fn package_values_decode_to_exactly_the_records_sent() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    broker.create_topic("values", 2);
    let mut cfg = config(&broker, fixed("values"));
    cfg.message_per = MessagePer::Package;
    cfg.value = KafkaValue::Package;
    cfg.properties
        .insert("message.max.bytes".into(), "20000".into());
    let mut dest = KafkaDestination::new(&cfg).unwrap();
    let odd = Arc::new(SourceInfo {
        id: SourceId(0x0dd),
        kind: SourceKind::Capture,
        path: std::ffi::OsStr::from_bytes(b"cgroup:/pods/\xff\"q\"#stdout").into(),
        config_name: Arc::from("captured"),
    });
    let mut window = Vec::new();
    for (seq, s) in [source(0x3001), odd.clone(), source(0x3002)]
        .iter()
        .enumerate()
    {
        let mut p = package(seq as u64 + 1, s, Some("shop"), seq as u64, 250);
        p.package.source_fields.push((
            Bytes::from_static(b"k8s.pod.label.\xfe"),
            Bytes::from_static(b"\xff"),
        ));
        for (i, r) in p.package.records.iter_mut().enumerate() {
            r.stream = [Stream::Stdout, Stream::Stdout, Stream::Stderr, Stream::None][i % 4];
            r.timestamp_ns = 1_700_000_000_123_456_789 - i as i64 * 7_919;
            match i % 5 {
                0 => r.body = Bytes::from_static(b"invalid \xc3\x28 utf-8 \"quoted\"\n\t\x01"),
                1 => r.body = Bytes::new(),
                2 => r.flags = LineFlags::TRUNCATED | LineFlags::REASSEMBLED,
                3 => r.fields.push((
                    Bytes::from_static(b"bin\x80"),
                    Bytes::from_static(b"\x00\xff"),
                )),
                _ => r.body = Bytes::from("héllo 😀 {\"json\": [1, 2]}"),
            }
        }
        window.push(p);
    }
    window[1].package.records[100].body = Bytes::from(vec![b'y'; 30_000]);
    let delivered = dest.send(&window).expect("send");
    assert_eq!(delivered.rejected.len(), 1, "{delivered:?}");
    let r = &delivered.rejected[0];
    assert_eq!(
        (r.package, r.records.as_deref(), r.reason),
        (1, Some(&[100][..]), "too_large")
    );

    let total = 3 * 250 - 1;
    let msgs = broker.consume_records("values", total, CONSUME);
    assert!(
        msgs.iter().all(|m| m.value.len() <= 20_000 - 4096),
        "values stay under the limit"
    );
    assert!(msgs.len() >= 3 * 2, "packages cut into several values");
    // Per package, in partition order: the values' records back to back.
    let mut got: BTreeMap<(String, u64), (kafka_fixture::PackageValue, Vec<Record>)> =
        BTreeMap::new();
    let mut sorted: Vec<&Msg> = msgs.iter().collect();
    sorted.sort_by_key(|m| (m.partition, m.offset));
    for m in sorted {
        let v = m.package_value();
        assert_eq!(m.key.as_deref(), Some(v.source_id.as_bytes()));
        let entry = got
            .entry((v.source_id.clone(), v.package_id))
            .or_insert_with(|| (v.clone(), Vec::new()));
        assert_eq!(
            (&entry.0.path, &entry.0.resource, &entry.0.origin),
            (&v.path, &v.resource, &v.origin),
            "every value of a package says the same of it"
        );
        entry.1.extend(v.records);
    }
    assert_eq!(got.len(), 3, "{:?}", got.keys());
    let mut expected = window.clone();
    expected[1].package.records.remove(100);
    for sp in &expected {
        let (v, records) = &got[&(format!("{:016x}", sp.source.id.0), sp.package_id)];
        assert_eq!(v.path, sp.source.path.as_os_str().as_bytes());
        let mut resource: Vec<(Vec<u8>, Vec<u8>)> = sp
            .package
            .source_fields
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        resource.sort();
        assert_eq!(v.resource, resource);
        let captured = sp.source.kind == SourceKind::Capture;
        assert_eq!(v.origin.as_deref(), captured.then_some("ebpf"));
        let sent: Vec<Record> = sp
            .package
            .records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.fields.sort();
                r
            })
            .collect();
        assert_eq!(records.len(), sent.len());
        for (got, sent) in records.iter().zip(&sent) {
            assert_eq!(got, sent);
        }
    }
}

/// A record over the producer's size limit is refused for good, alone; the rest of its
/// package and window is delivered.
#[test]
fn a_record_too_large_is_rejected_alone() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    broker.create_topic("logs", 1);
    let mut cfg = config(&broker, fixed("logs"));
    cfg.properties
        .insert("message.max.bytes".into(), "4000".into());
    let mut dest = KafkaDestination::new(&cfg).unwrap();
    let s = source(5);
    let mut window = vec![
        package(1, &s, Some("ns"), 0, 10),
        package(2, &s, Some("ns"), 1, 10),
    ];
    window[1].package.records[3].body = Bytes::from(vec![b'y'; 10_000]);
    let delivered = dest.send(&window).expect("send");
    assert_eq!(delivered.rejected.len(), 1, "{delivered:?}");
    let r = &delivered.rejected[0];
    assert_eq!(
        (r.package, r.records.as_deref(), r.reason),
        (1, Some(&[3][..]), "too_large")
    );
    let msgs = broker.consume("logs", 19, CONSUME);
    assert_eq!(msgs.len(), 19);
    assert!(msgs.iter().all(|m| m.value.len() < 4000));
}

/// The network to the broker goes away in the middle of a large window for longer
/// than librdkafka's timeout and comes back: the retries deliver every record; the
/// only duplicates possible are messages the broker stored while their answer was
/// lost in the cut, bounded by what was in flight.
#[test]
fn a_network_cut_mid_window_loses_nothing() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    broker.create_topic("logs", 3);
    let mut cfg = config(&broker, fixed("logs"));
    cfg.message_timeout = Duration::from_secs(3);
    let mut dest = KafkaDestination::new(&cfg).unwrap();
    let sources: Vec<_> = (1..=3).map(|i| source(0x500 + i)).collect();
    let mut window = Vec::new();
    for pkg in 0..100u64 {
        for (i, s) in sources.iter().enumerate() {
            window.push(package(pkg * 3 + i as u64, s, Some("ns"), pkg, 1000));
        }
    }
    let total = 300 * 1000;
    let window = Arc::new(window);
    // Cut as soon as the broker has some of the window: the probe is connected before
    // the window is sent, so its start-up does not delay the cut past the window.
    let probe = broker.consumer();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset("logs", p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    rdkafka::consumer::Consumer::assign(&probe, &tpl).unwrap();
    // Nothing to read yet, but the poll connects and fetches the (empty) partitions.
    assert!(probe.poll(Duration::from_millis(500)).is_none());
    let sender = {
        let window = window.clone();
        std::thread::spawn(move || {
            let mut attempts = Vec::new();
            loop {
                let t = Instant::now();
                let r = dest.send(&window);
                eprintln!(
                    "attempt: {:?} after {:?}, skipped {}",
                    r.as_ref().err().map(|e| e.to_string()),
                    t.elapsed(),
                    dest.last_skipped()
                );
                attempts.push((r.is_ok(), dest.last_skipped()));
                if r.is_ok() {
                    return attempts;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let start = Instant::now();
    while !matches!(probe.poll(Duration::from_millis(10)), Some(Ok(_))) {
        assert!(start.elapsed() < Duration::from_secs(30), "nothing arrived");
    }
    drop(probe);
    broker.cut();
    std::thread::sleep(Duration::from_secs(5));
    broker.restore();
    let attempts = sender.join().unwrap();
    eprintln!("attempts (ok, skipped): {attempts:?}");
    let msgs = broker.consume("logs", total, CONSUME);
    let mut count: HashMap<(String, u64), usize> = HashMap::new();
    for m in &msgs {
        let key = (
            m.header("logtap.source_id").unwrap().to_owned(),
            m.header("logtap.offset").unwrap().parse().unwrap(),
        );
        *count.entry(key).or_default() += 1;
    }
    let dups = msgs.len() - count.len();
    eprintln!(
        "{} messages, {} distinct records, {dups} duplicates",
        msgs.len(),
        count.len()
    );
    assert_eq!(count.len(), total, "every record arrived");
    assert!(
        attempts.len() >= 2,
        "the cut failed an attempt: {attempts:?}"
    );
    assert!(
        attempts.last().unwrap().1 > 0,
        "the retry skipped what was delivered"
    );
    assert!(
        dups <= total / 10,
        "duplicates bounded by what was in flight: {dups}"
    );
}

// ---- End to end: the real agent, a rotated file, outages. ----------------------------

fn kafka_sink_config(broker: &Broker, logs: &std::path::Path) -> String {
    format!(
        "sources:\n  - name: app\n    include: [\"{}/*.log\"]\n    sink: hub\n\
         sinks:\n  hub:\n    type: kafka\n    brokers: [\"{}\"]\n    topic: logs\n\
         \x20   message_timeout: 3s\n",
        logs.display(),
        broker.bootstrap()
    )
}

/// Reads `topic` until it holds `lines` distinct `line <n>` records (panics after
/// `timeout`); returns (distinct, duplicates).
fn distinct_lines(broker: &Broker, topic: &str, lines: usize, timeout: Duration) -> (usize, usize) {
    let start = Instant::now();
    let mut expect = lines;
    loop {
        let left = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(1));
        let msgs = broker.consume(topic, expect, left);
        let mut seen = std::collections::HashSet::new();
        for m in &msgs {
            let body = m.json()["body"].as_str().unwrap().to_owned();
            let n: usize = body.split(' ').nth(1).unwrap().parse().unwrap();
            seen.insert(n);
        }
        if seen.len() >= lines {
            assert_eq!(seen.len(), lines, "only the lines written");
            return (seen.len(), msgs.len() - seen.len());
        }
        assert!(
            start.elapsed() < timeout,
            "{} of {lines} lines in kafka",
            seen.len()
        );
        expect = msgs.len() + (lines - seen.len());
    }
}

/// A writer appends 20k lines/s to a file that is rotated kubelet-style (rename, new
/// file, rotated files deleted after two more rotations) while the network to the
/// broker is gone for 6 s: every line reaches Kafka, duplicates bounded.
#[test]
fn the_agent_ships_a_rotated_file_through_a_broker_outage() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    broker.create_topic("logs", 3);
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let file = logs.join("app.log");
    std::fs::write(&file, "").unwrap();
    let mut agent =
        common::Agent::start(&dir.path().join("data"), &kafka_sink_config(&broker, &logs));

    let writer = {
        let logs = logs.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let file = logs.join("app.log");
            let mut out = std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap();
            let start = Instant::now();
            let mut n = 0usize;
            let mut rotations = 0;
            let mut buf = Vec::new();
            while start.elapsed() < Duration::from_secs(14) {
                // 200 lines every 10 ms: 20k lines/s.
                buf.clear();
                for _ in 0..200 {
                    writeln!(buf, "line {n} {}", "p".repeat(80)).unwrap();
                    n += 1;
                }
                out.write_all(&buf).unwrap();
                if start.elapsed() > Duration::from_secs(2 * (rotations + 1)) {
                    rotations += 1;
                    std::fs::rename(&file, logs.join(format!("app.log.{rotations}"))).unwrap();
                    out = std::fs::File::create(&file).unwrap();
                    if rotations > 2 {
                        let _ =
                            std::fs::remove_file(logs.join(format!("app.log.{}", rotations - 2)));
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            n
        })
    };
    std::thread::sleep(Duration::from_secs(4));
    broker.cut();
    std::thread::sleep(Duration::from_secs(6));
    broker.restore();
    let lines = writer.join().unwrap();
    let (distinct, dups) = distinct_lines(&broker, "logs", lines, Duration::from_secs(120));
    eprintln!("{lines} lines written, {distinct} in kafka, {dups} duplicates");
    assert!(dups <= lines / 10, "duplicates bounded: {dups}");
    assert!(agent.is_running(), "{}", agent.log());
    agent.stop();
}

/// kill -9 of the agent while the broker is unreachable and the spool holds what it
/// read; restarted, the agent forwards the spool once the broker is back.
#[test]
fn a_killed_agent_forwards_its_spool_after_the_restart() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    broker.create_topic("logs", 3);
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let file = logs.join("app.log");
    let write = |from: usize, to: usize| {
        use std::io::Write;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .unwrap();
        for n in from..to {
            writeln!(out, "line {n} q").unwrap();
        }
    };
    write(0, 5000);
    let data = dir.path().join("data");
    let config = kafka_sink_config(&broker, &logs);
    let mut agent = common::Agent::start(&data, &config);
    distinct_lines(&broker, "logs", 5000, Duration::from_secs(60));

    broker.cut();
    write(5000, 20_000);
    // Read and spooled (the file checkpoint moves once the spool has it).
    std::thread::sleep(Duration::from_secs(3));
    agent.kill9();
    let mut agent = common::Agent::start(&data, &config);
    std::thread::sleep(Duration::from_secs(2));
    broker.restore();
    let (distinct, dups) = distinct_lines(&broker, "logs", 20_000, Duration::from_secs(60));
    eprintln!("{distinct} lines in kafka, {dups} duplicates");
    assert!(dups <= 5000, "duplicates bounded: {dups}");
    assert!(agent.is_running(), "{}", agent.log());
    agent.stop();
}

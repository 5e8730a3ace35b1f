//! A real Kafka-protocol broker for the tests: `tansu` (installed by `.ci/run` with
//! `cargo install tansu --locked --features dynostore`), started on 127.0.0.1 with
//! in-memory storage, and a real consumer (librdkafka, through `rdkafka`) reading back
//! every message of a topic with its partition, key and headers.
//!
//! Clients reach the broker through a TCP relay owned by the fixture (the broker
//! advertises the relay's port), so a test has two kinds of outage:
//! - [`Broker::cut`] / [`Broker::restore`]: the network path goes away (connections
//!   reset, new ones refused) and comes back; the broker keeps what it stored.
//! - [`Broker::kill`] / [`Broker::restart`]: the broker process is killed (SIGKILL) and
//!   started again on the same port. Its storage is memory: a restarted broker is
//!   empty, topics included, so read what you need before killing it.
//!
//! The binary is `$LOGTAP_TANSU`, else `$CARGO_HOME/bin/tansu`, `~/.cargo/bin/tansu`,
//! or `tansu` on `PATH`. Without it the tests fail, unless `LOGTAP_SKIP_KAFKA_TESTS=1`
//! (then [`Broker::start`] returns `None` and the test returns).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use logtap::batch::codec::Record;
use logtap::frame::{LineFlags, Stream};
use logtap::sink::store::b64;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// One message read back.
#[derive(Clone, Debug)]
pub struct Msg {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub value: Vec<u8>,
}

impl Msg {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| std::str::from_utf8(v).expect("header is UTF-8"))
    }

    /// Records this message carries: its `logtap.records` header, else 1.
    pub fn records(&self) -> usize {
        self.header("logtap.records")
            .map_or(1, |n| n.parse().expect("logtap.records is a number"))
    }

    /// A message of `message_per: package` as the messages of one record each that
    /// `message_per: record` would have made: one per JSON line, its `logtap.offset`
    /// the line's. Checks that the value is NDJSON (each record's own message value,
    /// back to back), that the run's header names its first line's offset and counts
    /// its lines.
    pub fn split_run(&self) -> Vec<Msg> {
        let lines: Vec<&[u8]> = self
            .value
            .strip_suffix(b"\n")
            .expect("every line ends")
            .split(|&b| b == b'\n')
            .collect();
        assert!(
            lines.iter().all(|l| !l.is_empty()),
            "NDJSON: no blank line between the records"
        );
        assert_eq!(
            lines.len(),
            self.records(),
            "logtap.records counts the lines"
        );
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let json: serde_json::Value =
                    serde_json::from_slice(line).expect("each line is JSON");
                let offset = json["offset"].as_u64().expect("offset").to_string();
                if i == 0 {
                    assert_eq!(self.header("logtap.offset"), Some(offset.as_str()));
                }
                let mut headers: Vec<(String, Vec<u8>)> = self
                    .headers
                    .iter()
                    .filter(|(k, _)| k != "logtap.offset" && k != "logtap.records")
                    .cloned()
                    .collect();
                headers.push(("logtap.offset".into(), offset.into_bytes()));
                Msg {
                    headers,
                    value: line.to_vec(),
                    ..self.clone()
                }
            })
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).expect("message value is JSON")
    }

    /// A message of `value: package` (its `logtap.value` header says so) decoded as a
    /// consumer would: the package it came from and its records, bytes as they were
    /// sent (`…_base64` members decoded). Checks the headers against the value: the
    /// source and package ids, the first record's offset, the record count.
    pub fn package_value(&self) -> PackageValue {
        assert_eq!(self.header("logtap.value"), Some("package"));
        let v = self.json();
        let source_id = v["source_id"].as_str().expect("source_id").to_owned();
        assert_eq!(self.header("logtap.source_id"), Some(source_id.as_str()));
        let package_id = v["package_id"].as_u64().expect("package_id");
        assert_eq!(
            self.header("logtap.package_id"),
            Some(package_id.to_string().as_str())
        );
        let path = bytes_member(&v, "path").expect("path");
        let mut resource = pairs_member(&v, "resource");
        resource.sort();
        let stream = v.get("stream").map_or(Stream::None, stream_of);
        let records: Vec<Record> = v["records"]
            .as_array()
            .expect("records")
            .iter()
            .map(|r| {
                let mut fields = pairs_member(r, "fields");
                fields.sort();
                Record {
                    offset: r["offset"].as_u64().expect("offset"),
                    timestamp_ns: r["timestamp_ns"].as_i64().expect("timestamp_ns"),
                    stream: r.get("stream").map_or(stream, stream_of),
                    flags: r.get("flags").map_or(LineFlags::empty(), flags_of),
                    body: bytes_member(r, "body").expect("body").into(),
                    fields: fields
                        .into_iter()
                        .map(|(k, v)| (k.into(), v.into()))
                        .collect(),
                }
            })
            .collect();
        assert_eq!(records.len(), self.records(), "logtap.records counts them");
        assert_eq!(
            self.header("logtap.offset"),
            Some(records[0].offset.to_string().as_str()),
            "logtap.offset is the first record's"
        );
        PackageValue {
            source_id,
            path,
            package_id,
            resource,
            origin: v
                .get("origin")
                .map(|o| o.as_str().expect("origin").to_owned()),
            records,
        }
    }

    /// A message of `value: package` as the messages of one record each that
    /// `message_per: record` would have made, less their `ts`: each record's members
    /// with the message's shared ones (a record's `stream` wins, `null` meaning none;
    /// absent `flags` and `fields` are empty), its `logtap.offset` the record's.
    pub fn split_package(&self) -> Vec<Msg> {
        let mut shared = match self.json() {
            serde_json::Value::Object(m) => m,
            other => panic!("a package value is an object: {other}"),
        };
        let Some(serde_json::Value::Array(records)) = shared.remove("records") else {
            panic!("a package value has records");
        };
        assert_eq!(records.len(), self.records(), "logtap.records counts them");
        records
            .into_iter()
            .map(|r| {
                let mut full = shared.clone();
                full.insert("flags".into(), serde_json::json!([]));
                full.insert("fields".into(), serde_json::json!({}));
                full.extend(r.as_object().expect("a record is an object").clone());
                if full.get("stream") == Some(&serde_json::Value::Null) {
                    full.remove("stream");
                }
                let offset = full["offset"].as_u64().expect("offset").to_string();
                let mut headers: Vec<(String, Vec<u8>)> = self
                    .headers
                    .iter()
                    .filter(|(k, _)| {
                        !["logtap.offset", "logtap.records", "logtap.value"].contains(&k.as_str())
                    })
                    .cloned()
                    .collect();
                headers.push(("logtap.offset".into(), offset.into_bytes()));
                Msg {
                    headers,
                    value: serde_json::to_vec(&full).unwrap(),
                    ..self.clone()
                }
            })
            .collect()
    }
}

/// What a `value: package` message holds, decoded ([`Msg::package_value`]). Field
/// pairs are sorted: JSON objects keep no order, and pairs that are not UTF-8 sit in
/// a separate `…_base64` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageValue {
    pub source_id: String,
    pub path: Vec<u8>,
    pub package_id: u64,
    pub resource: Vec<(Vec<u8>, Vec<u8>)>,
    pub origin: Option<String>,
    pub records: Vec<Record>,
}

fn stream_of(v: &serde_json::Value) -> Stream {
    match v.as_str() {
        None if v.is_null() => Stream::None,
        Some("stdout") => Stream::Stdout,
        Some("stderr") => Stream::Stderr,
        _ => panic!("stream {v}"),
    }
}

fn flags_of(v: &serde_json::Value) -> LineFlags {
    let mut flags = LineFlags::empty();
    for name in v.as_array().expect("flags") {
        let name = name.as_str().expect("a flag is a string");
        let bit = (0..16)
            .map(|b| LineFlags(1 << b))
            .find(|f| f.names().next() == Some(name))
            .unwrap_or_else(|| panic!("flag {name}"));
        flags.insert(bit);
    }
    flags
}

/// `name` (UTF-8) or `name_base64` of `v`, as bytes.
fn bytes_member(v: &serde_json::Value, name: &str) -> Option<Vec<u8>> {
    if let Some(s) = v.get(name) {
        return Some(s.as_str().expect("a string").as_bytes().to_vec());
    }
    let b64 = v.get(format!("{name}_base64"))?.as_str().expect("base64");
    Some(b64::decode(b64).expect("valid base64"))
}

/// The pairs of object `name` (UTF-8) and `name_base64` (both sides base64) of `v`.
fn pairs_member(v: &serde_json::Value, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    if let Some(m) = v.get(name) {
        for (k, v) in m.as_object().expect("an object") {
            out.push((
                k.as_bytes().to_vec(),
                v.as_str().expect("a string").as_bytes().to_vec(),
            ));
        }
    }
    if let Some(m) = v.get(format!("{name}_base64")) {
        for (k, v) in m.as_object().expect("an object") {
            let v = v.as_str().expect("base64");
            out.push((
                b64::decode(k).expect("base64"),
                b64::decode(v).expect("base64"),
            ));
        }
    }
    out
}

/// Where the tansu binary is, if anywhere.
pub fn tansu_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOGTAP_TANSU") {
        return Some(p.into());
    }
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(home).join("bin/tansu"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/tansu"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("tansu")));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// A tansu broker on 127.0.0.1 behind the fixture's relay.
pub struct Broker {
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The broker's own listener (clients never use it).
    broker_port: u16,
    /// What clients connect to: the relay.
    port: u16,
    relay: Option<Relay>,
    /// Topics created, with their partitions, so `restart` can create them again.
    topics: Vec<(String, u32)>,
}

impl Broker {
    /// Starts a broker, or returns `None` when tansu is missing and
    /// `LOGTAP_SKIP_KAFKA_TESTS=1` says that is fine (panics otherwise).
    pub fn start() -> Option<Broker> {
        let Some(bin) = tansu_bin() else {
            if std::env::var_os("LOGTAP_SKIP_KAFKA_TESTS").is_some_and(|v| v == "1") {
                eprintln!("tansu not found; LOGTAP_SKIP_KAFKA_TESTS=1: skipping");
                return None;
            }
            panic!(
                "tansu not found (LOGTAP_TANSU, $CARGO_HOME/bin, ~/.cargo/bin, PATH): \
                 `cargo install tansu --locked --features dynostore` (as .ci/run does), \
                 or set LOGTAP_SKIP_KAFKA_TESTS=1"
            );
        };
        let mut broker = Broker {
            bin,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            broker_port: crate::common::free_port(),
            port: crate::common::free_port(),
            relay: None,
            topics: Vec::new(),
        };
        broker.spawn();
        broker.restore();
        Some(broker)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.broker_port))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--storage-engine")
            .arg("memory://tansu/")
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.broker_port);
        let start = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tansu exited ({status}): {}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "tansu did not listen on {addr}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The broker's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// Creates `topic` with `partitions` partitions (`tansu topic create`).
    pub fn create_topic(&mut self, topic: &str, partitions: u32) {
        self.create_topic_inner(topic, partitions);
        self.topics.push((topic.to_owned(), partitions));
    }

    fn create_topic_inner(&self, topic: &str, partitions: u32) {
        let out = Command::new(&self.bin)
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.broker_port))
            .arg("--partitions")
            .arg(partitions.to_string())
            .arg(topic)
            .output()
            .expect("tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {topic}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The network path to the broker goes away: open connections are reset, new ones
    /// refused. The broker keeps running with everything it stored.
    pub fn cut(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.stop();
        }
    }

    /// The network path comes back (on the same port).
    pub fn restore(&mut self) {
        if self.relay.is_none() {
            self.relay = Some(Relay::start(self.port, self.broker_port));
        }
    }

    /// Kills the broker process (SIGKILL) and cuts the path. Its data is gone.
    pub fn kill(&mut self) {
        self.cut();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again after [`Broker::kill`], empty, with the topics created
    /// before, and restores the path.
    pub fn restart(&mut self) {
        self.spawn();
        for (topic, partitions) in &self.topics {
            self.create_topic_inner(topic, *partitions);
        }
        self.restore();
    }

    /// A consumer of this broker (no group offsets are committed).
    pub fn consumer(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", "logtap-tests")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "100")
            .create()
            .expect("consumer")
    }

    /// Reads `topic` from the beginning of every partition until `expect` messages
    /// came (panics after `timeout`), then one more second for any extra ones (which
    /// are returned too, so a test can count duplicates).
    pub fn consume(&self, topic: &str, expect: usize, timeout: Duration) -> Vec<Msg> {
        self.consume_until(topic, &format!("{expect} messages"), timeout, |m| {
            m.len() >= expect
        })
    }

    /// Like [`Broker::consume`], until the messages carry `records` records: a message
    /// of `message_per: package` counts its `logtap.records` header, any other one 1.
    pub fn consume_records(&self, topic: &str, records: usize, timeout: Duration) -> Vec<Msg> {
        self.consume_until(topic, &format!("{records} records"), timeout, |m| {
            m.iter().map(Msg::records).sum::<usize>() >= records
        })
    }

    /// Reads `topic` from the beginning of every partition until `done` says the
    /// messages so far are enough (panics after `timeout`, naming `what` it waited
    /// for), then one more second for any extra ones.
    fn consume_until(
        &self,
        topic: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Msg]) -> bool,
    ) -> Vec<Msg> {
        let consumer = self.consumer();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions = metadata.topics()[0].partitions().len();
        assert!(partitions > 0, "topic {topic} has no partitions");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let start = Instant::now();
        let mut settle: Option<Instant> = None;
        loop {
            if settle.is_none() && done(&out) {
                settle = Some(Instant::now() + Duration::from_secs(1));
            }
            if settle.is_some_and(|s| Instant::now() >= s) {
                break;
            }
            if settle.is_none() && start.elapsed() > timeout {
                panic!(
                    "topic {topic}: {} messages, not yet {what}, after {timeout:?}",
                    out.len()
                );
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => out.push(Msg {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    value: m.payload().unwrap_or_default().to_vec(),
                }),
                Some(Err(e)) => eprintln!("consumer: {e}"),
                None => {}
            }
        }
        out
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP relay from `port` to the broker: one thread accepting, two per connection.
struct Relay {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: JoinHandle<()>,
}

impl Relay {
    fn start(port: u16, upstream: u16) -> Relay {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("relay bind");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let acceptor = {
            let stop = stop.clone();
            let conns = conns.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let client = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    client.set_nonblocking(false).unwrap();
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let mut list = conns.lock().unwrap();
                    list.push(client.try_clone().unwrap());
                    list.push(server.try_clone().unwrap());
                    drop(list);
                    pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                    pipe(server, client);
                }
            })
        };
        Relay {
            stop,
            conns,
            acceptor,
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.acceptor.join();
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

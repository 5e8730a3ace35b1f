//! A Kafka-protocol broker for the benchmark: `tansu` on 127.0.0.1 with in-memory
//! storage, started fresh for every run (so no run pays for the last one's data), and
//! a real consumer (librdkafka through `rdkafka`, the agent's client) that reads every
//! message back to check what was delivered.
//!
//! The binary is `--tansu`, else `$LOGTAP_TANSU`, `$CARGO_HOME/bin/tansu`,
//! `~/.cargo/bin/tansu`, or `tansu` on `PATH`.

use std::collections::HashSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::Usage;

/// The topic the agent produces to.
pub const TOPIC: &str = "logtap-bench";

/// Where the tansu binary is, if anywhere.
pub fn tansu_bin(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_owned());
    }
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

/// A free TCP port on 127.0.0.1 (bound and released: another process could take it
/// in between, which on a benchmark machine does not happen).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What the consumer found in the topic.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counted {
    /// Records read, duplicates included: a message each, or the records of a
    /// `message_per: package` run (a message with a `logtap.records` header): its
    /// lines, or the elements of its `records` with `value: package`.
    pub messages: u64,
    /// Distinct record offsets — `logtap.offset` headers, or each run record's `offset`
    /// (the input is one source, so one offset per record): `messages - distinct` are
    /// duplicates.
    pub distinct: u64,
    /// Messages without a `logtap.offset` header.
    pub without_offset: u64,
}

/// A tansu broker with one topic.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Broker {
    /// Starts tansu (logging into `dir/tansu.log`) and creates [`TOPIC`] with
    /// `partitions` partitions.
    pub fn start(bin: &Path, dir: &Path, partitions: u32) -> anyhow::Result<Broker> {
        let port = free_port()?;
        let log = dir.join("tansu.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--storage-engine")
            .arg("memory://tansu/")
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut broker = Broker {
            child: Some(child),
            port,
            log,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = broker.child.as_mut().expect("started").try_wait()? {
                bail!("tansu exited ({status}): {}", broker.log_text());
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("tansu did not listen on {port}: {}", broker.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = Command::new(bin)
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--partitions")
            .arg(partitions.to_string())
            .arg(TOPIC)
            .output()
            .context("tansu topic create")?;
        if !out.status.success() {
            bail!(
                "tansu topic create {TOPIC}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(broker)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn consumer(&self) -> anyhow::Result<BaseConsumer> {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", "logtap-bench")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "100")
            .set("fetch.max.bytes", "52428800")
            .set("max.partition.fetch.bytes", "16777216")
            .create()
            .context("kafka consumer")
    }

    /// Reads the whole topic back: every message and its `logtap.offset` header. (Not
    /// the partitions' watermarks: tansu 0.6 answers ListOffsets with far less than the
    /// log end after batched, compressed produce — 1 for 5002 messages in the test
    /// below — so only reading the messages counts them.) Reading stops once `expect` messages came and `settle` passed
    /// without another, or after `timeout` (then with what it has: the caller compares).
    pub fn count(
        &self,
        expect: u64,
        settle: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Counted> {
        let consumer = self.consumer()?;
        let metadata = consumer
            .fetch_metadata(Some(TOPIC), Duration::from_secs(10))
            .context("kafka metadata")?;
        let partitions = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        if partitions == 0 {
            bail!("topic {TOPIC} has no partitions");
        }
        let mut counted = Counted::default();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(TOPIC, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let mut offsets = HashSet::with_capacity(expect as usize);
        let start = Instant::now();
        let mut last = Instant::now();
        loop {
            if counted.messages >= expect && last.elapsed() >= settle {
                break;
            }
            if start.elapsed() > timeout {
                break;
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    last = Instant::now();
                    let headers: Vec<(&str, &[u8])> = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key, h.value.unwrap_or_default()))
                                .collect()
                        })
                        .unwrap_or_default();
                    count_message(
                        &headers,
                        m.payload().unwrap_or_default(),
                        &mut counted,
                        &mut offsets,
                    )?;
                }
                Some(Err(e)) => bail!("kafka consumer: {e}"),
                None => {}
            }
        }
        counted.distinct = offsets.len() as u64;

        Ok(counted)
    }

    /// CPU time (user + system, all threads) the broker used so far.
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        let pid = self.child.as_ref().context("broker stopped")?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which is in parentheses and may hold spaces):
        // state is field 3, utime and stime are fields 14 and 15.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("/proc/PID/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields
            .get(11..13)
            .context("/proc/PID/stat fields")?
            .iter()
            .map(|f| f.parse::<u64>())
            .sum::<Result<u64, _>>()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
    }

    /// Stops the broker (SIGKILL: its storage is memory, nothing to flush) and returns
    /// its usage over its whole life.
    pub fn stop(mut self) -> anyhow::Result<Option<Usage>> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<Option<Usage>> {
        let Some(child) = self.child.take() else {
            return Ok(None);
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: `pid` is our child, not yet waited for.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let (usage, _) = crate::wait_usage(pid, Instant::now(), None)?;
        Ok(Some(usage))
    }
}

/// Counts the records of one message and collects their offsets: a message of one
/// record (its `logtap.offset` header), a run of JSON lines (`logtap.records`, each
/// line's `offset`), or a `value: package` object (`logtap.value: package`, each
/// element of its `records`). A run whose records do not match its `logtap.records`
/// header is an error: the agent would have sent a wrong count.
fn count_message(
    headers: &[(&str, &[u8])],
    payload: &[u8],
    counted: &mut Counted,
    offsets: &mut HashSet<u64>,
) -> anyhow::Result<()> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    let mut add = |offset: Option<u64>| {
        counted.messages += 1;
        match offset {
            Some(o) => {
                offsets.insert(o);
            }
            None => counted.without_offset += 1,
        }
    };
    let Some(records) = header("logtap.records") else {
        add(header("logtap.offset").and_then(|o| o.parse().ok()));
        return Ok(());
    };
    let records: usize = records.parse().context("logtap.records is not a number")?;
    let found = if header("logtap.value") == Some("package") {
        let value: serde_json::Value =
            serde_json::from_slice(payload).context("a package value is not JSON")?;
        let list = value["records"]
            .as_array()
            .context("a package value without records")?;
        for r in list {
            add(r["offset"].as_u64());
        }
        list.len()
    } else {
        let mut n = 0;
        for line in payload.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let json: serde_json::Value =
                serde_json::from_slice(line).context("a run's line is not JSON")?;
            add(json["offset"].as_u64());
            n += 1;
        }
        n
    };
    if found != records {
        bail!("a message with logtap.records {records} holds {found} records");
    }
    Ok(())
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    /// Runs of both value forms count their records and offsets; a wrong
    /// `logtap.records` fails the count.
    #[test]
    fn runs_of_lines_and_package_values_count_each_record() {
        let (mut counted, mut offsets) = (Counted::default(), HashSet::new());
        let lines: &[(&str, &[u8])] = &[("logtap.offset", b"1"), ("logtap.records", b"2")];
        count_message(
            lines,
            b"{\"offset\":1}\n{\"offset\":2}\n",
            &mut counted,
            &mut offsets,
        )
        .unwrap();
        let package: &[(&str, &[u8])] = &[
            ("logtap.offset", b"2"),
            ("logtap.records", b"3"),
            ("logtap.value", b"package"),
        ];
        let value = br#"{"source_id":"01","records":[{"offset":2},{"offset":3},{"body":"x"}]}"#;
        count_message(package, value, &mut counted, &mut offsets).unwrap();
        count_message(
            &[("logtap.offset", b"4")],
            b"{}",
            &mut counted,
            &mut offsets,
        )
        .unwrap();
        assert_eq!(
            (counted.messages, offsets.len(), counted.without_offset),
            (6, 4, 1)
        );
        let wrong: &[(&str, &[u8])] = &[("logtap.records", b"2"), ("logtap.value", b"package")];
        let err = count_message(wrong, value, &mut counted, &mut offsets).unwrap_err();
        assert!(err.to_string().contains("holds 3 records"), "{err}");
    }

    /// The count the benchmark relies on: lz4 batches, headers, a duplicate, a message
    /// without the header; messages and distinct offsets as produced.
    #[test]
    fn counts_messages_and_offsets() {
        let Some(bin) = tansu_bin(None) else {
            if std::env::var_os("LOGTAP_SKIP_KAFKA_TESTS").is_some_and(|v| v == "1") {
                eprintln!("tansu not found; LOGTAP_SKIP_KAFKA_TESTS=1: skipping");
                return;
            }
            panic!("tansu not found (set LOGTAP_SKIP_KAFKA_TESTS=1 to skip)");
        };
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start(&bin, dir.path(), 2).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("compression.codec", "lz4")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        let n = 5000u64;
        for i in (0..n).chain([7]) {
            let offset = i.to_string();
            let headers = OwnedHeaders::new().insert(Header {
                key: "logtap.offset",
                value: Some(offset.as_bytes()),
            });
            let key = (i % 2).to_string();
            producer
                .send(
                    BaseRecord::to(TOPIC)
                        .key(&key)
                        .payload("{}")
                        .headers(headers),
                )
                .unwrap();
            producer.poll(Duration::ZERO);
        }
        producer
            .send(BaseRecord::<(), _>::to(TOPIC).payload("{}"))
            .unwrap();
        producer.flush(Duration::from_secs(30)).unwrap();
        let counted = broker
            .count(n + 2, Duration::from_millis(500), Duration::from_secs(60))
            .unwrap();
        assert_eq!(counted.messages, n + 2);
        assert_eq!(counted.distinct, n);
        assert_eq!(counted.without_offset, 1);
        // Readable (a busy machine may not have given it a whole clock tick yet).
        assert!(broker.cpu().is_ok());
        assert!(broker.stop().unwrap().is_some());
    }
}

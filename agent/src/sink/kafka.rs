//! The Kafka [`Destination`]: one message per record (or per run of a package's
//! records), through librdkafka.
//!
//! Each record of a window becomes one message: the value is the record as JSON, the
//! shape of the `file` sink ([`crate::sink::store::render::write_json_record`]); the headers
//! `logtap.source_id` (16 hex digits, as in the JSON), `logtap.package_id` and
//! `logtap.offset` (decimal) let a consumer deduplicate replays and find a line's
//! neighbours; the key is the source field named by `key:` (default: the source id, so
//! one source stays in one partition, in order); the topic is the `topic:` template
//! rendered over the package's source fields.
//!
//! With `message_per: package`, consecutive records of a package share one message:
//! the value is their JSON lines (NDJSON, each line what the record's own message
//! would hold), or with `value: package` one object that holds what they share once
//! ([`value`]), cut before `message.max.bytes`; `logtap.offset` is the run's first
//! record's and `logtap.records` counts its records (`logtap.value: package` marks the
//! second form). Each outcome then settles the run's records together
//! ([`Reports::settle_message`]), so everything below (retries, skipping what an
//! earlier attempt delivered, refusals) works per record either way.
//!
//! # Acknowledgement
//!
//! [`KafkaDestination::send`] produces the whole window without waiting, then polls
//! until every message has its delivery report. Only a window whose every record was
//! delivered, or refused for good (too large, invalid topic, a record the broker calls
//! invalid), is `Ok`; any other failure (timeout, broker down, unknown topic, missing
//! authorization) is a [`SendError`] and the forwarder sends the window again. The
//! records of that window that *were* delivered are remembered by the spool sequence
//! number of their package, so the retry does not produce them a second time: an
//! outage duplicates at most what the broker stored but could not acknowledge.
//!
//! # Order
//!
//! With `idempotent: true` librdkafka keeps up to 5 requests in flight per broker
//! and still keeps each partition in order (the broker checks sequence numbers); without
//! it, one request in flight at a time, so a retried request cannot overtake the next.
//! A record that fails while later records of its source succeed is sent again after
//! them: each record arrives once, but the order of that source is then broken. That
//! only happens when librdkafka gave a message up (its `message.timeout.ms`) while a
//! later one went through, which the idempotent producer does not do.
//!
//! # Client
//!
//! `rdkafka` with its bundled librdkafka (2.12, built with cmake), as Vector uses. It
//! was checked against the test broker (tansu 0.6): produce with headers, every
//! compression codec and the idempotent producer work. Debian 12's librdkafka (2.0.2,
//! what `kcat` links) cannot read tansu's ApiVersions v3 answer ("Read underflow"),
//! which is why the bundled build is used rather than `librdkafka-dev`.
//!
//! # Performance
//!
//! One render buffer is reused for every record, and what the records of a package
//! share (source id, path, package id, resource) is rendered once per package
//! ([`PackageJson`]); librdkafka copies the value, key and
//! headers (`RD_KAFKA_MSG_F_COPY`) and batches per partition (`linger.ms` 5,
//! `batch.size` 1 MB). The per-message allocations left are librdkafka's own and the
//! `rdkafka` crate's (the message, its header list, the topic name as a C string).
//! With `message_per: package` most of the CPU left is the JSON: rendering it and
//! librdkafka's compression of it. `value: package` writes what a run's records share
//! once, about half the bytes of the JSON lines for container logs (docs/benchmarks.md).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext, PurgeConfig};

use super::destination::{Delivered, Destination, Rejected, SendError, SpooledPackage};
use crate::batch::codec::Record;
use crate::config::network::{KafkaConfig, KafkaValue, MessagePer, TemplatePart};
use crate::sink::store::render::PackageJson;
use crate::source::SourceInfo;

mod value;

/// Kafka's longest legal topic name.
const MAX_TOPIC_LEN: usize = 249;
/// What a template field a source lacks renders as.
const UNKNOWN: &str = "unknown";
/// How long past `message.timeout.ms` `send` waits for delivery reports before it
/// purges what is left. librdkafka should report every message by its timeout, but
/// its idempotent producer holds messages back while the broker is gone (seen with
/// the broker killed: no report 5 s past a 3 s timeout), so `send` keeps the
/// timeout itself.
const REPORT_MARGIN: Duration = Duration::from_secs(1);
/// While producing, serve delivery reports every this many messages.
const POLL_EVERY: usize = 1024;
/// How long `send` sleeps when a poll served no delivery report. Not a poll timeout:
/// `BaseProducer::poll` returns only once its timeout is over, however many reports
/// came meanwhile (with 100 ms the forwarder idled up to 100 ms per window of ~4 MiB,
/// which held a sink near 30–40 MB/s of wall throughput), and it spins through the
/// last millisecond of any timeout (its waits are in whole milliseconds, rounded
/// down), so short timeouts burn a core. A non-blocking poll and a sleep do neither.
const REPORT_WAIT: Duration = Duration::from_millis(1);

/// What became of one message of the current attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Pending,
    /// Acknowledged now or in an earlier attempt of the same window.
    Delivered,
    /// Not produced: delivered in an earlier attempt.
    Skipped,
    /// Delivery failed (or `produce` refused the message) with this error.
    Failed(RDKafkaErrorCode),
}

/// Delivery reports of the current attempt, filled by librdkafka's callback (on the
/// thread that polls, i.e. the one in `send`).
#[derive(Default)]
struct Reports {
    /// Opaque of the attempt's first message: a report below it (or past the end) is
    /// from an earlier attempt that was purged, and ignored.
    base: usize,
    outcomes: Vec<Outcome>,
    /// With `message_per: package`: at the index of each message's first record, how
    /// many records the message carries (its report settles them all). Empty with
    /// `message_per: record`, where every message is one record.
    run_len: Vec<u32>,
    pending: usize,
}

/// The producer's context: routes delivery reports into [`Reports`].
struct Context {
    reports: Mutex<Reports>,
}

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let mut r = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = opaque.checked_sub(r.base) else {
            return;
        };
        let Some(slot) = r.outcomes.get_mut(i) else {
            return;
        };
        if *slot != Outcome::Pending {
            return;
        }
        let outcome = match result {
            Ok(_) => Outcome::Delivered,
            Err((e, _)) => Outcome::Failed(error_code(e)),
        };
        r.settle_message(i, outcome);
    }
}

impl Reports {
    /// Gives the message whose first record is at `i` its outcome, for every record
    /// it carries.
    fn settle_message(&mut self, i: usize, outcome: Outcome) {
        let n = self.run_len.get(i).map_or(1, |&n| n.max(1) as usize);
        let end = (i + n).min(self.outcomes.len());
        for slot in &mut self.outcomes[i..end] {
            *slot = outcome;
        }
        self.pending -= end - i;
    }
}

fn error_code(e: &KafkaError) -> RDKafkaErrorCode {
    e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)
}

/// How the destination treats an error of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Refused for good: counted under this reason, never sent again.
    Permanent(&'static str),
    /// Send the window again later; the reason labels the retry.
    Retriable(&'static str),
}

fn classify(code: RDKafkaErrorCode) -> Class {
    use RDKafkaErrorCode as E;
    match code {
        E::MessageSizeTooLarge | E::MessageBatchTooLarge => Class::Permanent("too_large"),
        E::InvalidTopic => Class::Permanent("invalid_topic"),
        E::InvalidRecord | E::InvalidMessage | E::InvalidMessageSize => {
            Class::Permanent("invalid_record")
        }
        E::InvalidTimestamp => Class::Permanent("invalid_timestamp"),
        E::UnsupportedForMessageFormat => Class::Permanent("unsupported"),
        E::MessageTimedOut | E::RequestTimedOut | E::PurgeQueue | E::PurgeInflight => {
            Class::Retriable("timeout")
        }
        E::UnknownTopic | E::UnknownTopicOrPartition | E::UnknownTopicId | E::UnknownPartition => {
            Class::Retriable("unknown_topic")
        }
        E::TopicAuthorizationFailed
        | E::ClusterAuthorizationFailed
        | E::TransactionalIdAuthorizationFailed
        | E::SaslAuthenticationFailed
        | E::Authentication => Class::Retriable("unauthorized"),
        E::AllBrokersDown
        | E::BrokerTransportFailure
        | E::BrokerNotAvailable
        | E::LeaderNotAvailable
        | E::NotLeaderForPartition
        | E::NetworkException
        | E::NotEnoughReplicas
        | E::NotEnoughReplicasAfterAppend
        | E::Resolve => Class::Retriable("unavailable"),
        _ => Class::Retriable("broker_error"),
    }
}

/// Sends windows of packages to Kafka. See the module docs.
pub struct KafkaDestination {
    client_config: ClientConfig,
    producer: BaseProducer<Context>,
    topic: Vec<TemplatePart>,
    key: Option<String>,
    message_timeout: Duration,
    message_per: MessagePer,
    /// With `message_per: package`: the runs' values as JSON lines or one object.
    value: KafkaValue,
    /// With `message_per: package`, the largest value a message gets (one record
    /// larger than that is a message of its own, and the client's limit decides).
    max_value_bytes: usize,
    /// Opaque of the next message produced (strictly increasing over the producer's
    /// life, so reports of a purged attempt cannot land in a later one).
    next_opaque: usize,
    /// Records delivered by a failed attempt, by the spool sequence number of their
    /// package: skipped when that package is sent again.
    delivered_before: HashMap<u64, Vec<bool>>,
    /// Records skipped by the last `send` because an earlier attempt delivered them.
    last_skipped: u64,
    /// Start the next attempt with a new producer. Set after every failed attempt:
    /// librdkafka's idempotent producer recovers from timed-out messages by bumping
    /// its epoch with the broker (KIP-360), which not every Kafka-protocol broker
    /// does right (tansu 0.6 answers `ProducerFenced` to every later request, and
    /// records were lost in the tests until the producer was renewed). A new producer
    /// gets a new producer id and starts its sequences afresh: correct on any broker,
    /// and it costs a reconnect once per failed window.
    renew: bool,
    /// Reused buffers: the record's JSON or the run's value (and its package's shared
    /// parts, in the form `value` asks for), its topic, key and header values.
    line: Vec<u8>,
    json: PackageJson,
    package_value: value::PackageValue,
    topic_buf: String,
    key_buf: Vec<u8>,
    source_id_buf: String,
    package_id_buf: String,
    offset_buf: String,
    records_buf: String,
    /// Where each package of the window starts in the attempt's outcomes.
    starts: Vec<usize>,
}

impl KafkaDestination {
    /// Builds the producer (librdkafka connects in the background: an unreachable
    /// broker shows as failed sends, not here). Fails on a setting librdkafka refuses
    /// or an unreadable SASL password file.
    pub fn new(config: &KafkaConfig) -> Result<KafkaDestination, String> {
        let client_config = client_config(config)?;
        let producer = create_producer(&client_config)?;
        Ok(KafkaDestination {
            client_config,
            producer,
            topic: config.topic.clone(),
            key: config.key.clone(),
            message_timeout: config.message_timeout,
            message_per: config.message_per,
            value: config.value,
            max_value_bytes: max_value_bytes(config),
            next_opaque: 0,
            delivered_before: HashMap::new(),
            last_skipped: 0,
            renew: false,
            line: Vec::with_capacity(4096),
            json: PackageJson::default(),
            package_value: value::PackageValue::default(),
            topic_buf: String::new(),
            key_buf: Vec::new(),
            source_id_buf: String::new(),
            package_id_buf: String::new(),
            offset_buf: String::new(),
            records_buf: String::new(),
            starts: Vec::new(),
        })
    }

    /// Records the last [`Destination::send`] did not produce because an earlier,
    /// failed attempt of the same window had delivered them.
    pub fn last_skipped(&self) -> u64 {
        self.last_skipped
    }

    /// Produces every record of `window` that is not yet delivered, recording local
    /// refusals in the outcomes. Returns when everything is handed to librdkafka.
    fn produce_window(&mut self, window: &[SpooledPackage]) {
        let base = self.reports().base;
        for (p, sp) in window.iter().enumerate() {
            render_topic(
                &self.topic,
                &sp.source,
                &sp.package.source_fields,
                &mut self.topic_buf,
            );
            render_key(
                self.key.as_deref(),
                &sp.source,
                &sp.package.source_fields,
                &mut self.key_buf,
            );
            self.source_id_buf.clear();
            let _ = write!(self.source_id_buf, "{:016x}", sp.source.id.0);
            self.package_id_buf.clear();
            let _ = write!(self.package_id_buf, "{}", sp.package_id);
            match self.value {
                KafkaValue::Lines => sp.reset_json(&mut self.json),
                KafkaValue::Package => self.package_value.reset(sp),
            }
            if self.message_per == MessagePer::Package {
                self.produce_runs(sp, self.starts[p], base);
                continue;
            }
            for (r, rec) in sp.package.records.iter().enumerate() {
                let index = self.starts[p] + r;
                // The lock only when this attempt skips anything (a retry): not per
                // record of every window.
                if self.last_skipped > 0 && self.reports().outcomes[index] == Outcome::Skipped {
                    continue;
                }
                self.line.clear();
                let fields = rec.fields.iter().map(|(k, v)| (&k[..], &v[..]));
                self.json
                    .write_record(&mut self.line, &sp.view(rec), fields, false);
                self.offset_buf.clear();
                let _ = write!(self.offset_buf, "{}", rec.offset);
                let outcome = self.produce_one(base + index, &self.line, false);
                if let Err(code) = outcome {
                    self.reports().settle_message(index, Outcome::Failed(code));
                }
                if index % POLL_EVERY == POLL_EVERY - 1 {
                    self.producer.poll(Duration::ZERO);
                }
            }
        }
    }

    /// `message_per: package`: produces the records of `sp` not yet delivered as runs
    /// of consecutive records, each run one message whose value is at most
    /// `max_value_bytes`. A run's `logtap.offset` is its first record's; a skipped
    /// record (delivered by an earlier attempt) ends the run before it.
    ///
    /// Records are rendered straight into `line`, the run's value. The one that does
    /// not fit is cut off, and rendered again as the first of the next run once the
    /// run before it is produced (once per message: the JSON is not copied per record).
    fn produce_runs(&mut self, sp: &SpooledPackage, start: usize, base: usize) {
        let retrying = self.last_skipped > 0;
        // (index of the run's first record, records in it); its value is in `line`.
        let mut run: Option<(usize, usize)> = None;
        let end = match self.value {
            KafkaValue::Lines => &b""[..],
            KafkaValue::Package => value::END,
        };
        self.line.clear();
        for (r, rec) in sp.package.records.iter().enumerate() {
            let index = start + r;
            if retrying && self.reports().outcomes[index] == Outcome::Skipped {
                if let Some((first, n)) = run.take() {
                    self.line.extend_from_slice(end);
                    self.produce_run(sp, start, first, n, base);
                    self.line.clear();
                }
                continue;
            }
            let mark = self.line.len();
            self.push_record(sp, rec, run.is_none());
            run = match run {
                Some((first, n)) if self.line.len() + end.len() > self.max_value_bytes => {
                    self.line.truncate(mark);
                    self.line.extend_from_slice(end);
                    self.produce_run(sp, start, first, n, base);
                    self.line.clear();
                    self.push_record(sp, rec, true);
                    Some((index, 1))
                }
                Some((first, n)) => Some((first, n + 1)),
                None => Some((index, 1)),
            };
        }
        if let Some((first, n)) = run {
            self.line.extend_from_slice(end);
            self.produce_run(sp, start, first, n, base);
        }
        self.line.clear();
    }

    /// Appends `rec` (of `sp`) to the run's value in `line`; `first`: it begins it.
    fn push_record(&mut self, sp: &SpooledPackage, rec: &Record, first: bool) {
        match self.value {
            KafkaValue::Lines => {
                let fields = rec.fields.iter().map(|(k, v)| (&k[..], &v[..]));
                // Each line ends in `\n`: exactly the record's own message value.
                self.json
                    .write_record(&mut self.line, &sp.view(rec), fields, false);
            }
            KafkaValue::Package => self.package_value.push(&mut self.line, rec, first),
        }
    }

    /// Produces the run in `line`: `n` records from index `first` of the attempt (the
    /// package's records start at `start`).
    fn produce_run(
        &mut self,
        sp: &SpooledPackage,
        start: usize,
        first: usize,
        n: usize,
        base: usize,
    ) {
        let first_record = &sp.package.records[first - start];
        self.offset_buf.clear();
        let _ = write!(self.offset_buf, "{}", first_record.offset);
        self.records_buf.clear();
        let _ = write!(self.records_buf, "{n}");
        self.reports().run_len[first] = n as u32;
        if let Err(code) = self.produce_one(base + first, &self.line, true) {
            self.reports().settle_message(first, Outcome::Failed(code));
        }
        self.producer.poll(Duration::ZERO);
    }

    /// Hands one message (`value`, the other buffers' contents) to librdkafka, waiting
    /// while its queue is full.
    /// With `with_count`, the message is a run and carries `logtap.records` (and
    /// `logtap.value: package` when its value is that object).
    fn produce_one(
        &self,
        opaque: usize,
        value: &[u8],
        with_count: bool,
    ) -> Result<(), RDKafkaErrorCode> {
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(5)
                .insert(Header {
                    key: "logtap.source_id",
                    value: Some(self.source_id_buf.as_str()),
                })
                .insert(Header {
                    key: "logtap.package_id",
                    value: Some(self.package_id_buf.as_str()),
                })
                .insert(Header {
                    key: "logtap.offset",
                    value: Some(self.offset_buf.as_str()),
                });
            if with_count {
                headers = headers.insert(Header {
                    key: "logtap.records",
                    value: Some(self.records_buf.as_str()),
                });
                if self.value == KafkaValue::Package {
                    headers = headers.insert(Header {
                        key: "logtap.value",
                        value: Some("package"),
                    });
                }
            }
            let record = BaseRecord::with_opaque_to(&self.topic_buf, opaque)
                .key(&self.key_buf[..])
                .payload(value)
                .headers(headers);
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e, _)) => {
                    let code = error_code(&e);
                    if code != RDKafkaErrorCode::QueueFull {
                        return Err(code);
                    }
                    // librdkafka's queue is full: serve delivery reports (which frees
                    // it) and try again.
                    self.producer.poll(Duration::from_millis(100));
                }
            }
        }
    }

    fn reports(&self) -> std::sync::MutexGuard<'_, Reports> {
        self.producer
            .context()
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Polls until every message of the attempt has its report or `deadline` passed;
    /// then purges what is left (its reports arrive as purge errors, which classify as
    /// timeouts).
    fn await_reports(&self, deadline: Instant) {
        loop {
            let pending = self.reports().pending;
            if pending == 0 {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            // Serves at most one event (one event may report many messages).
            self.producer.poll(Duration::ZERO);
            if self.reports().pending == pending {
                std::thread::sleep(REPORT_WAIT);
            }
        }
        tracing::warn!(
            pending = self.reports().pending,
            "kafka: delivery reports missing past message.timeout.ms; purging them"
        );
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        let drain_until = Instant::now() + Duration::from_secs(1);
        while self.reports().pending > 0 && Instant::now() < drain_until {
            self.producer.poll(Duration::from_millis(10));
        }
        // Reports that still did not come count as timeouts; should they come later,
        // their opaque is below the next attempt's base and they are ignored.
        let mut r = self.reports();
        for o in r.outcomes.iter_mut() {
            if *o == Outcome::Pending {
                *o = Outcome::Failed(RDKafkaErrorCode::MessageTimedOut);
            }
        }
        r.pending = 0;
    }
}

impl Destination for KafkaDestination {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn idle(&mut self) {
        // A run's value grows to about `max_value_bytes`; the outcomes to a record
        // per line of a window.
        self.line = Vec::new();
        let mut r = self.reports();
        r.outcomes = Vec::new();
        r.run_len = Vec::new();
    }

    fn send(&mut self, window: &[SpooledPackage]) -> Result<Delivered, SendError> {
        // A new producer after a failed attempt (see `renew`), or when librdkafka
        // says this one can no longer be used.
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            tracing::warn!(%code, %reason, "kafka: producer failed fatally; creating a new one");
            self.renew = true;
        }
        if self.renew {
            self.producer = create_producer(&self.client_config).map_err(|detail| SendError {
                reason: "client_error",
                detail,
                retry_after: None,
            })?;
            self.next_opaque = 0;
            self.renew = false;
        }

        // Lay out the attempt: one outcome per record, records an earlier attempt of
        // this window delivered marked skipped.
        self.starts.clear();
        let mut total = 0;
        for sp in window {
            self.starts.push(total);
            total += sp.package.records.len();
        }
        let mut skipped = 0;
        {
            let base = self.next_opaque;
            let mut guard = self
                .producer
                .context()
                .reports
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let r = &mut *guard;
            r.base = base;
            r.outcomes.clear();
            r.outcomes.resize(total, Outcome::Pending);
            r.run_len.clear();
            if self.message_per == MessagePer::Package {
                r.run_len.resize(total, 1);
            }
            for (p, sp) in window.iter().enumerate() {
                if let Some(done) = self.delivered_before.get(&sp.seq)
                    && done.len() == sp.package.records.len()
                {
                    for (i, &d) in done.iter().enumerate() {
                        if d {
                            r.outcomes[self.starts[p] + i] = Outcome::Skipped;
                            skipped += 1;
                        }
                    }
                }
            }
            r.pending = total - skipped;
        }
        self.next_opaque += total;
        self.last_skipped = skipped as u64;

        self.produce_window(window);
        self.await_reports(Instant::now() + self.message_timeout + REPORT_MARGIN);

        let outcomes = std::mem::take(&mut self.reports().outcomes);
        let result = settle(window, &self.starts, &outcomes);
        // Remember what this attempt delivered for the next one when it failed;
        // forget packages the forwarder is done with when it succeeded.
        match &result {
            Err(_) => {
                self.renew = true;
                for (p, sp) in window.iter().enumerate() {
                    let range = self.starts[p]..self.starts[p] + sp.package.records.len();
                    let done: Vec<bool> = outcomes[range]
                        .iter()
                        .map(|o| matches!(o, Outcome::Delivered | Outcome::Skipped))
                        .collect();
                    if done.iter().any(|&d| d) {
                        self.delivered_before.insert(sp.seq, done);
                    } else {
                        self.delivered_before.remove(&sp.seq);
                    }
                }
            }
            Ok(_) => {
                let last = window.last().map_or(0, |sp| sp.seq);
                self.delivered_before.retain(|&seq, _| seq > last);
            }
        }
        self.reports().outcomes = outcomes;
        result
    }
}

/// Turns the outcomes of an attempt into the answer of `send`.
fn settle(
    window: &[SpooledPackage],
    starts: &[usize],
    outcomes: &[Outcome],
) -> Result<Delivered, SendError> {
    let mut failed = 0usize;
    let mut first: Option<(RDKafkaErrorCode, &'static str)> = None;
    let mut rejected: Vec<Rejected> = Vec::new();
    for (p, sp) in window.iter().enumerate() {
        let n = sp.package.records.len();
        // (reason, detail, record indexes) of this package's permanent refusals.
        let mut refused: Vec<(&'static str, RDKafkaErrorCode, Vec<usize>)> = Vec::new();
        for (i, o) in outcomes[starts[p]..starts[p] + n].iter().enumerate() {
            let Outcome::Failed(code) = *o else { continue };
            match classify(code) {
                Class::Permanent(reason) => match refused.iter_mut().find(|r| r.0 == reason) {
                    Some(r) => r.2.push(i),
                    None => refused.push((reason, code, vec![i])),
                },
                Class::Retriable(reason) => {
                    failed += 1;
                    first.get_or_insert((code, reason));
                }
            }
        }
        for (reason, code, records) in refused {
            rejected.push(Rejected {
                package: p,
                records: if records.len() == n {
                    None
                } else {
                    Some(records)
                },
                reason,
                detail: code.to_string(),
            });
        }
    }
    if let Some((code, reason)) = first {
        let total = outcomes.len();
        return Err(SendError {
            reason,
            detail: format!("{failed} of {total} records not acknowledged: {code}"),
            retry_after: None,
        });
    }
    Ok(Delivered {
        rejected,
        rejected_unidentified: 0,
    })
}

/// What the client refuses a message over: librdkafka's `message.max.bytes`, from the
/// passthrough properties or its default.
const CLIENT_MESSAGE_MAX: usize = 1_000_000;
/// Room left in a run's message for its key, headers and record framing.
const MESSAGE_MARGIN: usize = 4096;

/// The largest value of a run (`message_per: package`).
fn max_value_bytes(config: &KafkaConfig) -> usize {
    let limit = config
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(CLIENT_MESSAGE_MAX);
    limit.saturating_sub(MESSAGE_MARGIN).max(1)
}

fn create_producer(config: &ClientConfig) -> Result<BaseProducer<Context>, String> {
    config
        .create_with_context(Context {
            reports: Mutex::new(Reports::default()),
        })
        .map_err(|e| format!("kafka producer: {e}"))
}

/// The librdkafka settings of `config`: ours first, `properties` last (they win).
fn client_config(config: &KafkaConfig) -> Result<ClientConfig, String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", config.brokers.join(","))
        .set("client.id", "logtap")
        .set("compression.codec", config.compression.as_str())
        .set("acks", &config.acks)
        .set("enable.idempotence", config.idempotent.to_string())
        .set(
            "message.timeout.ms",
            config.message_timeout.as_millis().max(1).to_string(),
        )
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576");
    // Order per partition: the idempotent producer keeps it with up to 5 requests in
    // flight; a plain producer only with one (a retried request would overtake).
    c.set(
        "max.in.flight.requests.per.connection",
        if config.idempotent { "5" } else { "1" },
    );
    let protocol = match (&config.tls, &config.sasl) {
        (None, None) => "plaintext",
        (Some(_), None) => "ssl",
        (None, Some(_)) => "sasl_plaintext",
        (Some(_), Some(_)) => "sasl_ssl",
    };
    c.set("security.protocol", protocol);
    if let Some(tls) = &config.tls {
        if let Some(ca) = &tls.ca_file {
            c.set("ssl.ca.location", ca.display().to_string());
        }
        if let Some(cert) = &tls.cert_file {
            c.set("ssl.certificate.location", cert.display().to_string());
        }
        if let Some(key) = &tls.key_file {
            c.set("ssl.key.location", key.display().to_string());
        }
    }
    if let Some(sasl) = &config.sasl {
        let password = std::fs::read_to_string(&sasl.password_file)
            .map_err(|e| format!("sasl.password_file {}: {e}", sasl.password_file.display()))?;
        c.set("sasl.mechanisms", &sasl.mechanism)
            .set("sasl.username", &sasl.username)
            .set("sasl.password", password.trim_end_matches(['\r', '\n']));
    }
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    Ok(c)
}

/// Value of a template or key field for a package: a source field, or the source's
/// own `source.kind` / `source.config`.
fn field_value<'a>(
    name: &str,
    source: &'a SourceInfo,
    fields: &'a [(bytes::Bytes, bytes::Bytes)],
) -> Option<&'a [u8]> {
    if let Some((_, v)) = fields.iter().find(|(k, _)| &k[..] == name.as_bytes()) {
        return Some(v);
    }
    match name {
        "source.kind" => Some(source.kind.as_str().as_bytes()),
        "source.config" => Some(source.config_name.as_bytes()),
        _ => None,
    }
}

/// Renders the topic of a package into `out`: literals as they are, fields from the
/// source (missing: `unknown`), every character outside Kafka's `[a-zA-Z0-9._-]`
/// replaced by `_`, at most 249 characters, never `.` or `..`.
fn render_topic(
    template: &[TemplatePart],
    source: &SourceInfo,
    fields: &[(bytes::Bytes, bytes::Bytes)],
    out: &mut String,
) {
    out.clear();
    let push = |bytes: &[u8], out: &mut String| {
        for &b in bytes {
            if out.len() >= MAX_TOPIC_LEN {
                return;
            }
            let legal = b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
            out.push(if legal { b as char } else { '_' });
        }
    };
    for part in template {
        match part {
            TemplatePart::Literal(s) => push(s.as_bytes(), out),
            TemplatePart::Field(name) => {
                let value = field_value(name, source, fields)
                    .filter(|v| !v.is_empty())
                    .unwrap_or(UNKNOWN.as_bytes());
                push(value, out);
            }
        }
    }
    if out.is_empty() {
        out.push_str(UNKNOWN);
    } else if out == "." || out == ".." {
        *out = out.replace('.', "_");
    }
}

/// Renders the message key of a package into `out`: the value of field `key`, or the
/// source id (16 hex digits) when there is no key field or the source lacks it.
fn render_key(
    key: Option<&str>,
    source: &SourceInfo,
    fields: &[(bytes::Bytes, bytes::Bytes)],
    out: &mut Vec<u8>,
) {
    out.clear();
    if let Some(v) = key.and_then(|k| field_value(k, source, fields)) {
        out.extend_from_slice(v);
    } else {
        let _ = std::io::Write::write_fmt(out, format_args!("{:016x}", source.id.0));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::batch::codec::{Package, Record};
    use crate::frame::{LineFlags, Stream};
    use crate::source::{SourceId, SourceKind};

    fn source() -> SourceInfo {
        SourceInfo {
            id: SourceId(0xab),
            kind: SourceKind::CriFile,
            path: "/var/log/pods/ns_pod_uid/app/0.log".into(),
            config_name: Arc::from("pods"),
        }
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(Bytes, Bytes)> {
        pairs
            .iter()
            .map(|(k, v)| (Bytes::from(k.to_string()), Bytes::from(v.to_string())))
            .collect()
    }

    fn topic(template: &[TemplatePart], f: &[(&str, &str)]) -> String {
        let mut out = String::new();
        render_topic(template, &source(), &fields(f), &mut out);
        out
    }

    fn lit(s: &str) -> TemplatePart {
        TemplatePart::Literal(s.into())
    }

    fn field(s: &str) -> TemplatePart {
        TemplatePart::Field(s.into())
    }

    #[test]
    fn topic_templates_render_fields_and_the_source_s_own() {
        let t = [lit("logs-"), field("k8s.namespace")];
        assert_eq!(topic(&t, &[("k8s.namespace", "shop")]), "logs-shop");
        assert_eq!(topic(&t, &[]), "logs-unknown");
        assert_eq!(topic(&t, &[("k8s.namespace", "")]), "logs-unknown");
        let t = [field("source.kind"), lit("."), field("source.config")];
        assert_eq!(topic(&t, &[]), "cri_file.pods");
        // A source field of that name wins over the source's own.
        assert_eq!(topic(&t, &[("source.kind", "x")]), "x.pods");
    }

    #[test]
    fn topics_are_sanitized_to_kafka_s_alphabet_and_length() {
        let t = [lit("logs-"), field("app")];
        assert_eq!(topic(&t, &[("app", "a/b c:ü")]), "logs-a_b_c___");
        let long = "x".repeat(400);
        assert_eq!(topic(&t, &[("app", &long)]).len(), MAX_TOPIC_LEN);
        assert_eq!(topic(&[field("app")], &[("app", ".")]), "_");
        assert_eq!(topic(&[field("app")], &[("app", "..")]), "__");
        assert_eq!(topic(&[], &[]), "unknown");
    }

    #[test]
    fn the_key_is_the_named_field_or_the_source_id() {
        let f = fields(&[("k8s.pod", "web-1")]);
        let mut key = Vec::new();
        render_key(None, &source(), &f, &mut key);
        assert_eq!(key, b"00000000000000ab");
        render_key(Some("k8s.pod"), &source(), &f, &mut key);
        assert_eq!(key, b"web-1");
        render_key(Some("k8s.container"), &source(), &f, &mut key);
        assert_eq!(key, b"00000000000000ab", "a missing field keys by source");
        render_key(Some("source.config"), &source(), &f, &mut key);
        assert_eq!(key, b"pods");
    }

    #[test]
    fn errors_are_permanent_only_for_what_a_retry_cannot_fix() {
        use RDKafkaErrorCode as E;
        assert_eq!(
            classify(E::MessageSizeTooLarge),
            Class::Permanent("too_large")
        );
        assert_eq!(classify(E::InvalidTopic), Class::Permanent("invalid_topic"));
        assert_eq!(
            classify(E::InvalidRecord),
            Class::Permanent("invalid_record")
        );
        assert_eq!(classify(E::MessageTimedOut), Class::Retriable("timeout"));
        assert_eq!(classify(E::PurgeQueue), Class::Retriable("timeout"));
        assert_eq!(
            classify(E::UnknownTopicOrPartition),
            Class::Retriable("unknown_topic")
        );
        assert_eq!(
            classify(E::TopicAuthorizationFailed),
            Class::Retriable("unauthorized")
        );
        assert_eq!(classify(E::AllBrokersDown), Class::Retriable("unavailable"));
        assert_eq!(
            classify(E::ProducerFenced),
            Class::Retriable("broker_error")
        );
    }

    fn spooled(seq: u64, n: usize) -> SpooledPackage {
        SpooledPackage {
            seq,
            source: Arc::new(source()),
            package_id: seq,
            package: Package {
                source_fields: Vec::new(),
                records: (0..n)
                    .map(|i| Record {
                        offset: i as u64,
                        timestamp_ns: 0,
                        stream: Stream::Stdout,
                        flags: LineFlags::empty(),
                        body: Bytes::from_static(b"x"),
                        fields: Vec::new(),
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn settle_groups_refusals_by_package_and_fails_on_any_retriable_error() {
        use Outcome::{Delivered as D, Failed as F, Skipped as S};
        let window = [spooled(1, 3), spooled(2, 2)];
        let starts = [0, 3];
        let too_large = F(RDKafkaErrorCode::MessageSizeTooLarge);
        let ok = settle(&window, &starts, &[D, too_large, S, too_large, too_large]).unwrap();
        assert_eq!(ok.rejected.len(), 2);
        assert_eq!(
            (
                ok.rejected[0].package,
                ok.rejected[0].records.clone(),
                ok.rejected[0].reason
            ),
            (0, Some(vec![1]), "too_large")
        );
        assert_eq!(
            (ok.rejected[1].package, ok.rejected[1].records.clone()),
            (1, None)
        );
        let timeout = F(RDKafkaErrorCode::MessageTimedOut);
        let err = settle(&window, &starts, &[D, too_large, timeout, D, timeout]).unwrap_err();
        assert_eq!(err.reason, "timeout");
        assert!(err.detail.starts_with("2 of 5 records"), "{}", err.detail);
    }

    #[test]
    fn settings_map_to_librdkafka_properties_and_passthrough_wins() {
        use crate::config::network::*;
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("pw");
        std::fs::write(&password, "s3cret\n").unwrap();
        let mut config = KafkaConfig {
            brokers: vec!["a:9092".into(), "b:9092".into()],
            topic: vec![lit("t")],
            key: None,
            compression: KafkaCompression::Zstd,
            acks: "all".into(),
            idempotent: false,
            tls: Some(KafkaTls {
                ca_file: Some("/ca.pem".into()),
                cert_file: None,
                key_file: None,
            }),
            sasl: Some(KafkaSasl {
                mechanism: "SCRAM-SHA-512".into(),
                username: "u".into(),
                password_file: password,
            }),
            properties: [("linger.ms".to_string(), "50".to_string())].into(),
            message_timeout: Duration::from_secs(30),
            message_per: crate::config::network::MessagePer::Record,
            value: KafkaValue::Lines,
            forward: ForwardConfig {
                spool: SpoolConfig {
                    path: "/x".into(),
                    max_bytes: 1,
                    segment_bytes: 1,
                    when_full: WhenFull::Block,
                    compression: BlockCompression::Lz4,
                },
                dead_letter: None,
                max_window_bytes: 1,
                max_window_packages: 1,
                drain_timeout: Duration::from_secs(1),
            },
        };
        let c = client_config(&config).unwrap();
        assert_eq!(c.get("bootstrap.servers"), Some("a:9092,b:9092"));
        assert_eq!(c.get("compression.codec"), Some("zstd"));
        assert_eq!(c.get("enable.idempotence"), Some("false"));
        assert_eq!(c.get("max.in.flight.requests.per.connection"), Some("1"));
        assert_eq!(c.get("message.timeout.ms"), Some("30000"));
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("ssl.ca.location"), Some("/ca.pem"));
        assert_eq!(c.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
        assert_eq!(c.get("linger.ms"), Some("50"));
        config.idempotent = true;
        config.sasl.as_mut().unwrap().password_file = dir.path().join("missing");
        assert!(
            client_config(&config)
                .unwrap_err()
                .contains("password_file")
        );
        config.sasl = None;
        let c = client_config(&config).unwrap();
        assert_eq!(c.get("max.in.flight.requests.per.connection"), Some("5"));
        assert_eq!(c.get("security.protocol"), Some("ssl"));
    }
}

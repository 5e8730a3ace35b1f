//! Network inputs: sources that are not files but listeners (`type: syslog`), and
//! the boundary up to which logtap answers for what a sender sent.
//!
//! ```text
//! listener threads (listen.rs): TCP accept + one thread per connection (framing.rs),
//!   UDP / Unix datagrams  ──Message──► bounded channel ──► ingest thread (here):
//!   one stream source per input and run, each message one record (Content::Messages)
//!   → its own Pipeline (parse: syslog) → the sinks of the file config
//! ```
//!
//! Each input is one source per run of the agent: a fresh [`SourceId`], offsets that
//! count the bytes of its messages from 0, path = the `listen` address. There is no
//! file to read again, so it has no checkpoint entry (like `logtap://self`).
//!
//! # What is guaranteed, and where the boundary is
//!
//! Syslog has no acknowledgement: a TCP sender's write succeeds once the *kernel*
//! took the bytes. logtap answers for a message from the moment a listener thread
//! **read it from the socket**: from there it is framed, queued (bounded: a full
//! queue stops the reading, so TCP's flow control slows the sender and nothing is
//! dropped), packaged and made durable by the sink like a file's lines, and on a
//! SIGTERM everything read is shipped before the agent exits (each connection first
//! reads what is already waiting in its socket, for at most 1 s). Not covered: what the
//! kernel had accepted and logtap had not read when the process died (`kill -9`, a
//! crash), and what was read but not yet durable then (at most the queue, the open
//! packages and the sink queue). UDP has no flow control: datagrams that find the
//! socket's receive buffer full are dropped by the kernel, counted from
//! `/proc/net/udp` (`logtap_input_kernel_drops_total`). A Unix datagram socket
//! blocks its senders instead.
//!
//! # Threads
//!
//! The ingest thread owns the pipeline, so listeners never touch it; it runs until
//! every listener thread has ended (the channel is then disconnected), which is how
//! a stop ships every message read.

mod framing;
mod http;
mod listen;
mod otlp;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::checkpoint::SharedRegistry;
use crate::config::{Config, Listen};
use crate::metrics::catalogue::{INPUT_BYTES_TOTAL, INPUT_RECORDS_TOTAL};
use crate::pipeline::{Content, EndReason, Input, Opening, Pipeline};
use crate::source::{SourceId, SourceInfo, SourceKind};

pub use framing::{StreamFramer, datagram};

/// Messages queued between the listeners and the ingest thread at most; a full
/// queue makes the listeners wait (see the module docs).
pub const QUEUE_MESSAGES: usize = 4096;

/// What a listener hands the ingest thread.
enum Message {
    /// One message a listener read, for input `input` (its index in the config's
    /// sources).
    One { input: usize, body: Bytes },
    /// The records of one HTTP request; `durable` is answered once every one of them
    /// is acknowledged by the sink (dropped unanswered if the agent stops first).
    Batch {
        input: usize,
        records: Vec<Record>,
        durable: tokio::sync::oneshot::Sender<()>,
    },
}

/// One record of a request: its body, the fields the input decoded (OTLP
/// attributes; none for NDJSON, whose parser finds them) and when it was written.
#[derive(Debug)]
struct Record {
    body: Bytes,
    fields: Vec<(Bytes, Bytes)>,
    time: Option<i64>,
}

/// The sockets of a config's network inputs, bound and not read yet.
pub struct BoundInputs {
    sockets: Vec<(listen::Spec, Listen, listen::Bound)>,
}

impl BoundInputs {
    /// Binds every network input of `config`: `None` when it has none. An address
    /// that cannot be bound is an error: the operator asked for it.
    pub fn bind(config: &Config) -> anyhow::Result<Option<BoundInputs>> {
        let mut sockets = Vec::new();
        for (i, source) in config.sources.iter().enumerate() {
            let Some(input) = &source.input else { continue };
            let bound = listen::bind(&input.listen).with_context(|| {
                format!(
                    "source {:?}: cannot listen on {}",
                    source.name, input.listen
                )
            })?;
            let spec = listen::Spec {
                index: i,
                name: source.name.clone(),
                max_message: source.max_line_bytes,
                max_connections: input.max_connections,
                protocol: input.protocol,
                max_body: input.max_body_bytes,
            };
            sockets.push((spec, input.listen.clone(), bound));
        }
        Ok((!sockets.is_empty()).then_some(BoundInputs { sockets }))
    }

    /// Starts reading, shipping what arrives through `pipeline` (built from the
    /// config the sockets were bound for, so the inputs' indexes are its config
    /// indexes).
    pub fn start(self, pipeline: Pipeline, registry: SharedRegistry) -> std::io::Result<NetInputs> {
        let stop = Arc::new(AtomicBool::new(false));
        let (send, received) = crossbeam_channel::bounded(QUEUE_MESSAGES);
        let mut inputs = NetInputs {
            stop: stop.clone(),
            listeners: Vec::new(),
            ingest: None,
        };
        let mut streams = Vec::new();
        for (spec, listen, bound) in self.sockets {
            tracing::info!(source = %spec.name, %listen, "network input listening");
            streams.push((spec.index, listen, spec.name.clone()));
            match listen::start(bound, spec, send.clone(), stop.clone()) {
                Ok(thread) => inputs.listeners.push(thread),
                Err(e) => {
                    inputs.stop_listeners();
                    return Err(e);
                }
            }
        }
        drop(send);
        inputs.ingest = Some(
            std::thread::Builder::new()
                .name("net-ingest".into())
                .spawn(move || ingest(pipeline, &registry, &streams, &received))?,
        );
        Ok(inputs)
    }
}

/// The network inputs of a config, running.
pub struct NetInputs {
    stop: Arc<AtomicBool>,
    listeners: Vec<JoinHandle<()>>,
    ingest: Option<JoinHandle<()>>,
}

impl NetInputs {
    /// Stops listening, ships every message read and seals the packages (before the
    /// sinks stop).
    pub fn stop(mut self) {
        self.stop_listeners();
        if let Some(t) = self.ingest.take() {
            let _ = t.join();
        }
    }

    fn stop_listeners(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.listeners.drain(..) {
            let _ = t.join();
        }
    }
}

/// One input's stream source in this run.
struct Stream {
    id: SourceId,
    offset: u64,
    name: Arc<str>,
}

impl Stream {
    fn feed(&mut self, pipeline: &mut Pipeline, record: Record) {
        let len = record.body.len() as u64;
        metrics::counter!(INPUT_RECORDS_TOTAL, "input" => self.name.clone()).increment(1);
        metrics::counter!(INPUT_BYTES_TOTAL, "input" => self.name.clone()).increment(len);
        if record.fields.is_empty() && record.time.is_none() {
            pipeline.data(self.id, self.offset, record.body, None);
        } else {
            let Record { body, fields, time } = record;
            pipeline.message_with_fields(self.id, self.offset, body, fields, time);
        }
        self.offset += len;
    }
}

/// A request waiting until its records, `id`'s bytes before `end`, are durable.
struct Waiting {
    id: SourceId,
    end: u64,
    durable: tokio::sync::oneshot::Sender<()>,
}

/// The ingest thread: messages into `pipeline` until every listener is gone.
fn ingest(
    mut pipeline: Pipeline,
    registry: &SharedRegistry,
    inputs: &[(usize, Listen, Arc<str>)],
    received: &Receiver<Message>,
) {
    // Its pipeline ticks every 100 ms (progress); a panic here fails /healthz.
    let beat = crate::metrics::health::global().register("net-ingest");
    let slots = inputs.iter().map(|(i, _, _)| i + 1).max().unwrap_or(0);
    let mut streams: Vec<Option<Stream>> = (0..slots).map(|_| None).collect();
    for (i, listen, name) in inputs {
        let name = name.clone();
        let info = Arc::new(SourceInfo {
            id: SourceId::new_unique(NET_DEV, *i as u64),
            kind: SourceKind::Network,
            path: listen.to_string().into(),
            config_name: name.clone(),
        });
        let id = info.id;
        // Followed, not persisted: a request is answered by its acknowledgements.
        registry.track(id);
        pipeline.opened(Opening {
            info,
            configs: vec![*i],
            start_offset: 0,
            predecessor: None,
            content: Content::Messages,
        });
        streams[*i] = Some(Stream {
            id,
            offset: 0,
            name,
        });
    }
    const TICK: Duration = Duration::from_millis(100);
    // While a request waits, its acknowledgement is looked for this often.
    const ACK_POLL: Duration = Duration::from_millis(5);
    let mut waiting: Vec<Waiting> = Vec::new();
    let mut next_tick = Instant::now() + TICK;
    loop {
        let mut wait = next_tick.saturating_duration_since(Instant::now());
        if !waiting.is_empty() {
            wait = wait.min(ACK_POLL);
        }
        match received.recv_timeout(wait) {
            Ok(Message::One { input, body }) => {
                if let Some(stream) = streams.get_mut(input).and_then(Option::as_mut) {
                    let record = Record {
                        body,
                        fields: Vec::new(),
                        time: None,
                    };
                    stream.feed(&mut pipeline, record);
                }
            }
            Ok(Message::Batch {
                input,
                records,
                durable,
            }) => {
                if let Some(stream) = streams.get_mut(input).and_then(Option::as_mut) {
                    for record in records {
                        stream.feed(&mut pipeline, record);
                    }
                    // A client waits for these: sealing now saves it `batch.timeout`
                    // (a package per request is the price, and fsyncs stay grouped
                    // by the sink).
                    pipeline.seal_all();
                    waiting.push(Waiting {
                        id: stream.id,
                        end: stream.offset,
                        durable,
                    });
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + TICK;
            pipeline.tick(now);
        }
        waiting = answer_durable(registry, waiting);
    }
    for stream in streams.into_iter().flatten() {
        pipeline.ended(stream.id, EndReason::Shutdown);
        registry.end_branch(stream.id);
    }
    pipeline.seal_all();
    beat.stop();
}

/// Answers the requests whose records are all acknowledged; returns the others.
fn answer_durable(registry: &SharedRegistry, waiting: Vec<Waiting>) -> Vec<Waiting> {
    if waiting.is_empty() {
        return waiting;
    }
    let mut still = Vec::with_capacity(waiting.len());
    for w in waiting {
        if registry
            .acked_offset(w.id)
            .is_some_and(|acked| acked >= w.end)
        {
            // The requester may have given up; nothing to do then.
            let _ = w.durable.send(());
        } else if !w.durable.is_closed() {
            still.push(w);
        }
    }
    still
}

/// `dev` mixed into a network input's source id: no block device has it.
const NET_DEV: u64 = u64::MAX - 1;

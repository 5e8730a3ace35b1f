//! The `http` and `otlp` inputs' server. `http`: NDJSON over `POST` (any path), each
//! non-empty line one record. `otlp`: OTLP/HTTP logs, `POST /v1/logs`, protobuf or
//! JSON (see [`super::otlp`]); the same answers, with an `ExportLogsServiceResponse`
//! (partial success naming the log records refused) as the `200`'s body. Either may
//! be gzip-compressed (`Content-Encoding: gzip`).
//!
//! | answer | when |
//! | --- | --- |
//! | `200` | every record of the request is durable (the sink acknowledged it) |
//! | `400` | some line is not a JSON object: nothing of the request is taken |
//! | `405` | not a `POST` |
//! | `413` | the body is over `max_body_size`, or a line over `max_line_size` |
//! | `503` | the input's queue is full (backpressure), or the records were not durable within 30 s, or the agent is stopping: retry |
//!
//! A request is all or nothing up to the queue: a `400` or `413` takes no record, a
//! `200` means all are durable. A `503` after the records were queued (not durable
//! in time, a stop) may be followed by their delivery: a retry then duplicates them
//! (at-least-once).
//!
//! The server is hyper (HTTP/1.1, keep-alive) on a one-thread tokio runtime of its
//! own; the handlers only validate and queue, the ingest thread does the rest.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use super::listen::Spec;
use super::{Message, Record, otlp};
use crate::config::NetProtocol;
use crate::metrics::catalogue::{INPUT_CONNECTIONS, INPUT_CONNECTIONS_TOTAL};

/// How long a request waits for its records to be durable before a `503`.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A request head must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// At a stop, how long requests in progress are given.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub(super) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

/// Serves `listener` until `stop`, then gives the requests in progress
/// [`STOP_GRACE`].
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    spec: Spec,
    send: Sender<Message>,
    stop: Arc<AtomicBool>,
) {
    let spec = Arc::new(spec);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let slots = Arc::new(Semaphore::new(spec.max_connections));
    let mut every = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::Relaxed) {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(input = %spec.name, error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = every.tick() => continue,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            spec.rejected("connection_limit", 1);
            continue;
        };
        metrics::counter!(INPUT_CONNECTIONS_TOTAL, "input" => spec.name.clone()).increment(1);
        let gauge = metrics::gauge!(INPUT_CONNECTIONS, "input" => spec.name.clone());
        gauge.increment(1.0);
        let (spec, send, http) = (spec.clone(), send.clone(), http.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let (spec, send) = (spec.clone(), send.clone());
                async move { Ok::<_, Infallible>(respond(request, &spec, &send).await) }
            });
            if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, "http input connection");
            }
            gauge.decrement(1.0);
        });
    }
    // Every slot back means every connection ended.
    let all = spec.max_connections as u32;
    let _ = tokio::time::timeout(STOP_GRACE, slots.acquire_many(all)).await;
}

/// The answer to one request.
async fn respond(
    request: Request<Incoming>,
    spec: &Spec,
    send: &Sender<Message>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    let otlp = match spec.protocol {
        NetProtocol::Otlp => match otlp_encoding(&request) {
            Ok(encoding) => Some(encoding),
            Err(refusal) => return refusal,
        },
        _ => None,
    };
    let gzip = request
        .headers()
        .get(CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let body = match Limited::new(request.into_body(), spec.max_body)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            spec.rejected("too_large", 1);
            return text(StatusCode::PAYLOAD_TOO_LARGE, "body over max_body_size\n");
        }
        Err(_) => return text(StatusCode::BAD_REQUEST, "the body could not be read\n"),
    };
    let body = if gzip {
        match gunzip(&body, spec.max_body) {
            Ok(body) => body,
            Err(status) => {
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    spec.rejected("too_large", 1);
                }
                return text(status, "gzip body not readable, or over max_body_size\n");
            }
        }
    } else {
        body
    };
    let (records, rejected) = match otlp {
        None => match ndjson(&body, spec.max_message) {
            Ok(records) => (records, 0),
            Err(Refused::TooLarge) => {
                spec.rejected("too_large", 1);
                return text(StatusCode::PAYLOAD_TOO_LARGE, "a line over max_line_size\n");
            }
            Err(Refused::NotJson(n)) => {
                spec.rejected("bad_line", n);
                return owned(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{n} line(s) are not JSON objects; no record of the request was taken\n"
                    ),
                );
            }
        },
        Some(encoding) => match otlp::decode(&body, encoding, spec.max_message) {
            Ok(decoded) => (decoded.records, decoded.rejected),
            Err(e) => {
                spec.rejected("bad_request", 1);
                return owned(
                    StatusCode::BAD_REQUEST,
                    format!("not an OTLP logs request: {e}\n"),
                );
            }
        },
    };
    spec.rejected("too_large", rejected);
    let accepted = || match otlp {
        None => text(StatusCode::OK, ""),
        Some(encoding) => {
            let mut response = Response::new(Full::new(otlp::response(encoding, rejected)));
            let content_type = match encoding {
                otlp::Encoding::Protobuf => "application/x-protobuf",
                otlp::Encoding::Json => "application/json",
            };
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
    };
    if records.is_empty() {
        return accepted();
    }
    let (durable, answered) = tokio::sync::oneshot::channel();
    let batch = Message::Batch {
        input: spec.index,
        records,
        durable,
    };
    match send.try_send(batch) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            spec.rejected("backpressure", 1);
            return text(StatusCode::SERVICE_UNAVAILABLE, "busy: retry\n");
        }
        Err(TrySendError::Disconnected(_)) => {
            return text(StatusCode::SERVICE_UNAVAILABLE, "stopping: retry\n");
        }
    }
    match tokio::time::timeout(DURABLE_TIMEOUT, answered).await {
        Ok(Ok(())) => accepted(),
        _ => {
            spec.rejected("not_durable", 1);
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not durable in time (they may still arrive): retry\n",
            )
        }
    }
}

/// An OTLP request's encoding, or the refusal of a request that is not one.
#[allow(
    clippy::result_large_err,
    reason = "the refusal is the response itself"
)]
fn otlp_encoding<B>(request: &Request<B>) -> Result<otlp::Encoding, Response<Full<Bytes>>> {
    if request.uri().path() != "/v1/logs" {
        return Err(text(StatusCode::NOT_FOUND, "OTLP logs go to /v1/logs\n"));
    }
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if content_type.starts_with(b"application/x-protobuf") {
        Ok(otlp::Encoding::Protobuf)
    } else if content_type.starts_with(b"application/json") {
        Ok(otlp::Encoding::Json)
    } else {
        Err(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/x-protobuf or application/json\n",
        ))
    }
}

/// A gzip body, at most `max` bytes once inflated.
fn gunzip(body: &[u8], max: usize) -> Result<Bytes, StatusCode> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut inflate = flate2::read::GzDecoder::new(body).take(max as u64 + 1);
    inflate
        .read_to_end(&mut out)
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    if out.len() > max {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    Ok(Bytes::from(out))
}

fn owned(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message)));
    *response.status_mut() = status;
    response
}

#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// A line over the limit.
    TooLarge,
    /// This many lines are not JSON objects.
    NotJson(u64),
}

/// The non-empty lines of `body` (without `\n` or `\r\n`), each a JSON object of at
/// most `max` bytes, as records (slices of it).
fn ndjson(body: &Bytes, max: usize) -> Result<Vec<Record>, Refused> {
    let mut out = Vec::new();
    let mut bad = 0u64;
    let mut start = 0;
    while start < body.len() {
        let end = memchr::memchr(b'\n', &body[start..]).map_or(body.len(), |n| start + n);
        let mut line_end = end;
        if line_end > start && body[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        let line = &body[start..line_end];
        if line.len() > max {
            return Err(Refused::TooLarge);
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            if json_object(line) {
                out.push(Record {
                    body: body.slice(start..line_end),
                    fields: Vec::new(),
                    time: None,
                });
            } else {
                bad += 1;
            }
        }
        start = end + 1;
    }
    match bad {
        0 => Ok(out),
        n => Err(Refused::NotJson(n)),
    }
}

/// Whether `line` is exactly one JSON object (validated without building it).
fn json_object(line: &[u8]) -> bool {
    let first = line.iter().find(|b| !b.is_ascii_whitespace());
    // Skipping a string does not check its UTF-8; JSON text is UTF-8 (RFC 8259 §8.1).
    first == Some(&b'{')
        && std::str::from_utf8(line)
            .is_ok_and(|text| serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok())
}

fn text(status: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(message.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_objects_or_the_request_is_refused() {
        let body = Bytes::from_static(b"{\"a\":1}\r\n\n  \n{\"b\":\"x\\ny\"}\n{\"c\":[1]}");
        let got = ndjson(&body, 100).unwrap();
        let got: Vec<&[u8]> = got.iter().map(|r| &r.body[..]).collect();
        assert_eq!(
            got,
            [&b"{\"a\":1}"[..], b"{\"b\":\"x\\ny\"}", b"{\"c\":[1]}"]
        );
        let bad =
            Bytes::from_static(b"{\"a\":1}\nnot json\n[1,2]\n{\"a\":\n\"str\"\n{\"ok\":true}\n");
        assert_eq!(ndjson(&bad, 100).map(|_| ()), Err(Refused::NotJson(4)));
        let long = Bytes::from(format!("{{\"a\":\"{}\"}}\n", "x".repeat(200)));
        assert_eq!(ndjson(&long, 100).map(|_| ()), Err(Refused::TooLarge));
        assert!(ndjson(&Bytes::new(), 100).unwrap().is_empty());
        let binary = Bytes::from_static(b"{\"a\":\"\xff\"}\n");
        assert_eq!(
            ndjson(&binary, 100).map(|_| ()),
            Err(Refused::NotJson(1)),
            "JSON is UTF-8"
        );
    }

    fn post(port: u16, body: &[u8]) -> u16 {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.split(' ').nth(1).unwrap().parse().unwrap()
    }

    /// The server against a queue of one that nobody reads: a request is queued and
    /// waits; the next finds the queue full (503); the first gets 503 once its
    /// records are dropped undelivered, and 200 when they are made durable.
    #[test]
    fn answers_follow_the_queue_and_the_acknowledgement() {
        let runtime = runtime().unwrap();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = std_listener.local_addr().unwrap().port();
        std_listener.set_nonblocking(true).unwrap();
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener).unwrap()
        };
        let (send, received) = crossbeam_channel::bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        let spec = Spec {
            index: 3,
            name: Arc::from("t"),
            max_message: 100,
            max_connections: 4,
            protocol: crate::config::NetProtocol::Http,
            max_body: 1000,
        };
        let server = std::thread::spawn({
            let stop = stop.clone();
            move || runtime.block_on(serve(listener, spec, send, stop))
        });
        let first = std::thread::spawn(move || post(port, b"{\"a\":1}\n{\"b\":2}\n"));
        while received.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(post(port, b"{\"c\":3}\n"), 503, "the queue is full");
        let Ok(Message::Batch {
            input,
            records,
            durable,
        }) = received.recv()
        else {
            panic!("a batch");
        };
        assert_eq!((input, records.len()), (3, 2));
        drop(durable);
        assert_eq!(first.join().unwrap(), 503, "dropped before it was durable");
        let answerer = std::thread::spawn(move || {
            let Ok(Message::Batch { durable, .. }) = received.recv() else {
                panic!("a batch");
            };
            durable.send(()).unwrap();
        });
        assert_eq!(post(port, b"{\"d\":4}\n"), 200);
        answerer.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
    }
}

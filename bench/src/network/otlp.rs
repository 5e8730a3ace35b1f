//! An OTLP/HTTP logs receiver for the benchmark: a hyper server on 127.0.0.1, on its
//! own tokio threads in the harness process (its CPU is not the agent's), that takes
//! `POST /v1/logs`, undoes gzip, decodes the `ExportLogsServiceRequest` with the
//! official protobuf types (`opentelemetry-proto`), counts the log records and answers
//! 200 with an empty `ExportLogsServiceResponse`. A body it cannot decode is answered
//! 400 and counted as an error, which fails the run.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use prost::Message;

/// What the receiver saw since the last [`Receiver::take`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    pub requests: u64,
    /// Log records decoded.
    pub records: u64,
    /// Request bytes as sent (compressed, when gzip).
    pub wire_bytes: u64,
    /// Requests refused: wrong path or method, bad gzip, bad protobuf.
    pub errors: u64,
    /// Requests with no log record in them (logtap must never send one).
    pub empty: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    records: AtomicU64,
    wire_bytes: AtomicU64,
    errors: AtomicU64,
    empty: AtomicU64,
}

/// A running receiver; stops with the harness.
pub struct Receiver {
    addr: SocketAddr,
    counters: Arc<Counters>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    /// Starts the receiver on `threads` tokio worker threads.
    pub fn start(threads: usize) -> anyhow::Result<Receiver> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("otlp-receiver")
            .enable_io()
            .build()?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding the OTLP receiver")?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let c = c.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, c.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Receiver {
            addr,
            counters,
            _runtime: runtime,
        })
    }

    /// `http://127.0.0.1:PORT`, the sink's `endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port on 127.0.0.1 (Fluent Bit's `opentelemetry` output takes host and port).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The counts so far, reset to zero.
    pub fn take(&self) -> Received {
        let c = &self.counters;
        Received {
            requests: c.requests.swap(0, Ordering::SeqCst),
            records: c.records.swap(0, Ordering::SeqCst),
            wire_bytes: c.wire_bytes.swap(0, Ordering::SeqCst),
            errors: c.errors.swap(0, Ordering::SeqCst),
            empty: c.empty.swap(0, Ordering::SeqCst),
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    counters: Arc<Counters>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let ok_path = req.method() == hyper::Method::POST && req.uri().path() == "/v1/logs";
    let gzip = req
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let body = req.into_body().collect().await?.to_bytes();
    counters.requests.fetch_add(1, Ordering::Relaxed);
    counters
        .wire_bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    if !ok_path {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        return Ok(answer(StatusCode::NOT_FOUND, Bytes::new()));
    }
    match decode(&body, gzip) {
        Ok(records) => {
            counters.records.fetch_add(records, Ordering::Relaxed);
            if records == 0 {
                counters.empty.fetch_add(1, Ordering::Relaxed);
            }
            let response = ExportLogsServiceResponse::default().encode_to_vec();
            Ok(answer(StatusCode::OK, response.into()))
        }
        Err(e) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            Ok(answer(StatusCode::BAD_REQUEST, e.to_string().into()))
        }
    }
}

fn answer(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-protobuf"),
    );
    r
}

/// Log records in one request body.
fn decode(body: &[u8], gzip: bool) -> anyhow::Result<u64> {
    let inflated;
    let raw = if gzip {
        let mut out = Vec::with_capacity(body.len() * 8);
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .context("gzip")?;
        inflated = out;
        &inflated[..]
    } else {
        body
    };
    let request = ExportLogsServiceRequest::decode(raw).context("protobuf")?;
    Ok(request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len() as u64)
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpStream;

    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    fn post(receiver: &Receiver, path: &str, body: &[u8], gzip: bool) -> String {
        let mut s = TcpStream::connect(receiver.addr).unwrap();
        let encoding = if gzip {
            "Content-Encoding: gzip\r\n"
        } else {
            ""
        };
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n{encoding}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn counts_records_of_plain_and_gzip_requests_and_refuses_garbage() {
        let receiver = Receiver::start(1).unwrap();
        let request = ExportLogsServiceRequest {
            resource_logs: vec![
                ResourceLogs {
                    scope_logs: vec![ScopeLogs {
                        log_records: vec![LogRecord::default(); 3],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                ResourceLogs {
                    scope_logs: vec![ScopeLogs {
                        log_records: vec![LogRecord::default(); 2],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        }
        .encode_to_vec();
        assert!(post(&receiver, "/v1/logs", &request, false).starts_with("HTTP/1.1 200"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&request).unwrap();
        let gz = gz.finish().unwrap();
        assert!(post(&receiver, "/v1/logs", &gz, true).starts_with("HTTP/1.1 200"));
        let empty = ExportLogsServiceRequest::default().encode_to_vec();
        assert!(post(&receiver, "/v1/logs", &empty, false).starts_with("HTTP/1.1 200"));
        assert!(post(&receiver, "/v1/logs", b"\xff\xff\xff", false).starts_with("HTTP/1.1 400"));
        assert!(post(&receiver, "/v1/traces", &request, false).starts_with("HTTP/1.1 404"));
        let got = receiver.take();
        assert_eq!(
            got,
            Received {
                requests: 5,
                records: 10,
                wire_bytes: (2 * request.len() + gz.len() + empty.len() + 3) as u64,
                errors: 2,
                empty: 1,
            }
        );
        assert_eq!(receiver.take(), Received::default());
    }

    /// The peer's rows as the benchmark runs them, on a small file: the real Fluent
    /// Bit's `tail` (CRI) into its `opentelemetry` output must hand this receiver every
    /// record, gzip or not, in requests it can decode (what makes its CPU seconds
    /// comparable to logtap's rows).
    #[test]
    fn fluent_bit_delivers_every_record_to_the_receiver() {
        let bin = crate::fluentbit::binary(None).unwrap_or_else(|e| {
            panic!("{e}: see shared/peers/README.md, or set LOGTAP_FLUENT_BIT")
        });
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("cri.log");
        crate::generate(crate::Input::CriTemplated, &input, 256 << 10).unwrap();
        let lines = crate::fluentbit::expected_records(crate::Input::CriTemplated, &input).unwrap();
        assert!(lines > 500, "only {lines} lines");
        let receiver = Receiver::start(1).unwrap();
        for gzip in [true, false] {
            let setup = crate::fluentbit::Setup {
                input: crate::Input::CriTemplated,
                durable: false,
            };
            let output = crate::fluentbit::Output::Otlp {
                port: receiver.port(),
                gzip,
            };
            crate::fluentbit::timed(&bin, setup, dir.path(), &input, &output)
                .unwrap_or_else(|e| panic!("gzip {gzip}: {e:#}"));
            let got = receiver.take();
            assert_eq!(
                (got.records, got.errors, got.empty),
                (lines, 0, 0),
                "gzip {gzip}: {got:?}"
            );
            assert!(got.requests > 0);
        }
    }
}

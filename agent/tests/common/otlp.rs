//! An OTLP/HTTP logs receiver of our own on 127.0.0.1, for the otlp destination's
//! tests: a real HTTP/1.1 server (hyper) that decodes every request with the official
//! protobuf definitions (`opentelemetry-proto`), keeps it, and answers what the test
//! scripted — 503 with `Retry-After`, 429, partial success, 400, 413, a dropped
//! connection, a slow answer — or a plain success once the script is used up.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the receiver"
)]

use std::collections::VecDeque;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with an empty `ExportLogsServiceResponse`.
    Ok,
    /// 200 with `partial_success { rejected_log_records: rejected }`.
    Partial { rejected: i64, message: String },
    /// This status, with `Retry-After` when given, and `body`.
    Status {
        code: u16,
        retry_after: Option<String>,
        body: String,
    },
    /// Close the connection without an answer.
    Drop,
    /// Wait, then answer 200.
    Delay(Duration),
}

impl Reply {
    pub fn status(code: u16) -> Reply {
        Reply::Status {
            code,
            retry_after: None,
            body: String::new(),
        }
    }

    pub fn retry_after(code: u16, retry_after: &str) -> Reply {
        Reply::Status {
            code,
            retry_after: Some(retry_after.into()),
            body: String::new(),
        }
    }
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as sent (compressed if it was).
    pub body_len: usize,
    /// The decoded request, or why it did not decode.
    pub request: Result<ExportLogsServiceRequest, String>,
    /// The status it was answered with (0: connection dropped).
    pub status: u16,
    /// Records refused by a partial-success answer.
    pub partial_rejected: i64,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn request(&self) -> &ExportLogsServiceRequest {
        self.request.as_ref().expect("the request decoded")
    }

    /// The request's records with their resource attributes, in request order.
    pub fn records(&self) -> Vec<(&[KeyValue], &LogRecord)> {
        records(self.request())
    }

    pub fn record_count(&self) -> usize {
        self.request.as_ref().map_or(0, |r| records(r).len())
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    /// Requests carrying more records than this are answered 413.
    max_records: Option<usize>,
    /// Requests whose (uncompressed) body is larger are answered 413.
    max_body_bytes: Option<usize>,
    received: Vec<Received>,
}

pub struct OtlpReceiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts listening on a free port of 127.0.0.1.
    pub fn start() -> OtlpReceiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (shutdown, mut stop) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        let thread = std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        let stream = tokio::select! {
                            _ = &mut stop => return,
                            accepted = listener.accept() => match accepted {
                                Ok((stream, _)) => stream,
                                Err(_) => continue,
                            },
                        };
                        let state = served.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |request| {
                                let state = state.clone();
                                async move { answer(&state, request).await }
                            });
                            // A dropped connection (`Reply::Drop`) ends here with an error.
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            })
            .unwrap();
        OtlpReceiver {
            addr,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`: the endpoint to configure (requests go to `/v1/logs`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers the next requests with `replies`, in order, then with success again.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Forgets the replies not used yet: success from now on (a destination back up).
    pub fn clear_script(&self) {
        self.state.lock().unwrap().script.clear();
    }

    /// Answers 413 to requests with more than `max` records.
    pub fn max_records(&self, max: Option<usize>) {
        self.state.lock().unwrap().max_records = max;
    }

    /// Answers 413 to requests whose protobuf body is longer than `max` bytes.
    pub fn max_body_bytes(&self, max: Option<usize>) {
        self.state.lock().unwrap().max_body_bytes = max;
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits until `done` holds for the requests received so far; panics after `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&[Received]) -> bool,
    ) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; received: {:#?}",
                    received
                        .iter()
                        .map(|r| (r.status, r.record_count()))
                        .collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Bodies of the records of every 2xx-answered request, in arrival order (records
    /// refused by a partial success included: the receiver does not say which).
    pub fn accepted_bodies(&self) -> Vec<Vec<u8>> {
        self.received()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(|r| {
                r.records()
                    .into_iter()
                    .map(|(_, l)| body_bytes(l))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn answer(
    state: &Mutex<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let gzip = headers
        .iter()
        .any(|(k, v)| k == "content-encoding" && v == "gzip");
    let body = request
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let raw = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .map(|_| out)
            .map_err(|e| format!("gzip: {e}"))
    } else {
        Ok(body.to_vec())
    };
    let decoded = raw.clone().and_then(|raw| {
        ExportLogsServiceRequest::decode(&raw[..]).map_err(|e| format!("protobuf: {e}"))
    });
    let mut received = Received {
        method,
        path,
        headers,
        body_len: body.len(),
        request: decoded,
        status: 0,
        partial_rejected: 0,
    };

    let reply = {
        let mut state = state.lock().unwrap();
        let records = received.record_count();
        let too_many = state.max_records.is_some_and(|max| records > max);
        let too_long = state
            .max_body_bytes
            .is_some_and(|max| raw.as_ref().map_or(0, Vec::len) > max);
        if too_many || too_long {
            Reply::status(413)
        } else {
            state.script.pop_front().unwrap_or(Reply::Ok)
        }
    };
    let protobuf = |response: ExportLogsServiceResponse| {
        Response::builder()
            .status(200)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(response.encode_to_vec())))
            .unwrap()
    };
    let response = match reply {
        Reply::Ok => protobuf(ExportLogsServiceResponse::default()),
        Reply::Delay(wait) => {
            tokio::time::sleep(wait).await;
            protobuf(ExportLogsServiceResponse::default())
        }
        Reply::Partial { rejected, message } => {
            received.partial_rejected = rejected;
            protobuf(ExportLogsServiceResponse {
                partial_success: Some(ExportLogsPartialSuccess {
                    rejected_log_records: rejected,
                    error_message: message,
                }),
            })
        }
        Reply::Status {
            code,
            retry_after,
            body,
        } => {
            let mut response = Response::builder().status(code);
            if let Some(retry_after) = retry_after {
                response = response.header("retry-after", retry_after);
            }
            response.body(Full::new(Bytes::from(body))).unwrap()
        }
        Reply::Drop => {
            state.lock().unwrap().received.push(received);
            return Err(std::io::Error::other("scripted: drop the connection"));
        }
    };
    received.status = response.status().as_u16();
    state.lock().unwrap().received.push(received);
    Ok(response)
}

/// Every record of `request` with its resource's attributes, in request order.
pub fn records(request: &ExportLogsServiceRequest) -> Vec<(&[KeyValue], &LogRecord)> {
    let mut out = Vec::new();
    for resource in &request.resource_logs {
        let attributes = resource
            .resource
            .as_ref()
            .map_or(&[][..], |r| &r.attributes[..]);
        for scope in &resource.scope_logs {
            for record in &scope.log_records {
                out.push((attributes, record));
            }
        }
    }
    out
}

/// The value of attribute `key`.
pub fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// The string value of attribute `key`.
pub fn str_attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attributes, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

/// The int value of attribute `key`.
pub fn int_attr(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key) {
        Some(Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

/// A record's body as bytes (string or bytes value).
pub fn body_bytes(record: &LogRecord) -> Vec<u8> {
    match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Value::StringValue(s)) => s.as_bytes().to_vec(),
        Some(Value::BytesValue(b)) => b.clone(),
        other => panic!("unexpected body {other:?}"),
    }
}

/// A string `AnyValue`, for comparisons.
pub fn string_value(s: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(Value::StringValue(s.into())),
    })
}

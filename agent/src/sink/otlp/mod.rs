//! The OTLP/HTTP destination: a window of packages posted as one protobuf
//! `ExportLogsServiceRequest` to `<endpoint>/v1/logs`.
//!
//! The messages are the official ones (`opentelemetry-proto`'s prost types); the
//! client is `ureq` (blocking, a connection pool, `HTTP(S)_PROXY`/`NO_PROXY` honoured):
//! the forwarder is a plain thread. One [`Destination::send`] makes one request
//! attempt; retrying is the forwarder's.
//!
//! # What a record becomes
//!
//! One `ResourceLogs` per source of the window (packages of the same source with the
//! same source fields share it), with one `ScopeLogs` (scope `logtap`, the agent's
//! version). Resource attributes:
//!
//! | logtap source field | OTLP resource attribute |
//! |---|---|
//! | `k8s.pod`, `k8s.namespace`, `k8s.container` | `k8s.pod.name`, `k8s.namespace.name`, `k8s.container.name` |
//! | `k8s.pod_uid`, `k8s.node` | `k8s.pod.uid`, `k8s.node.name` |
//! | `container.id` | `container.id` |
//! | `container.image` (`repo:tag`, `repo@sha256:…`) | `container.image.name` (without tag and digest), `container.image.tags` (`[tag]`), `container.image.repo_digests` (`[image]` when it names a digest) |
//! | `k8s.pod.label.<k>`, `k8s.pod.annotation.<k>`, `k8s.namespace.label.<k>`, any other | the same name |
//! | (source path, file and CRI-file sources) | `log.file.path` |
//! | (source id) | `logtap.source_id` (16 hex digits) |
//! | (source kind, config entry) | `logtap.source.kind` (`file`, `cri_file`, `capture`), `logtap.source.config` |
//!
//! Each record is one `LogRecord`:
//! - `time_unix_nano`: the record's timestamp; `observed_time_unix_nano`: when the
//!   request was built;
//! - `body`: a string value when the bytes are UTF-8, else a bytes value holding them
//!   exactly;
//! - `severity_text` / `severity_number`: from the first parsed field named `level`,
//!   `severity`, `lvl`, `loglevel`, `log.level`, `log_level` or `levelname`; the text as
//!   it is, the number from the usual names (`debug`, `info`, `warning`, `err`, syslog's
//!   `notice`/`crit`/`alert`/`emerg`, …, case-insensitive; unknown: unspecified);
//! - attributes: every parsed field (string value, or bytes when not UTF-8) under its
//!   own name, then `log.iostream` (`stdout`/`stderr`, container streams only),
//!   `logtap.offset` and `logtap.package_id` (ints: with `logtap.source_id` a consumer
//!   can deduplicate replays and find a line's neighbours), and `logtap.flags` (array
//!   of `truncated`, `unterminated`, `invalid_utf8`, … when any is set).
//!
//! # Answers
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx | delivered; a `partial_success.rejected_log_records` of n counts n records as rejected (`partial_success`, not retried) |
//! | 400 and other 4xx not below | every record of the request rejected, reason `bad_request` (never retried) |
//! | 413 | the request is split in halves, each sent on its own; a single record still too large is rejected, reason `too_large` |
//! | 401, 403 | [`SendError`] `unauthorized`: credentials are configuration, the spool keeps the data until they are fixed |
//! | 404 | [`SendError`] `not_found`: a wrong endpoint path is configuration too |
//! | 408 / 429 / 502, 503, 504 | [`SendError`] `timeout` / `throttled` / `unavailable`, with `Retry-After` (seconds or HTTP date) |
//! | other 5xx, 1xx, 3xx | [`SendError`] `server_error` / `unexpected_status` (redirects are not followed) |
//! | connection refused/reset, DNS | [`SendError`] `disconnected`; timeout of the request: `timeout`; TLS: `tls` |
//!
//! A window split after a 413 takes several requests; if one of them fails, the
//! records already delivered are remembered and skipped when the forwarder sends the
//! same window again (the destination contract allows it).
//!
//! # Performance
//!
//! See [`request`]: each record is filled into one reused `LogRecord` and encoded at
//! once into the request's reused buffer, its length computed once, the framing
//! written before it without a copy; gzip (the fastest level, flate2's `zlib-rs`
//! backend) by one compressor reset for every request, into a reused buffer. End to
//! end (docs/benchmarks.md, "OTLP"): 2.9 CPU s per GB of CRI input uncompressed, 4.7
//! with gzip, where building one `LogRecord` per record of the request and a fresh
//! `miniz_oxide` compressor per request took 5.6 and 9.2.

mod request;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::Message;
use ureq::http::{HeaderName, HeaderValue};

pub use crate::config::network::logs_url;
use crate::config::network::{OtlpCompression, OtlpConfig};
use crate::sink::destination::{Delivered, Destination, Rejected, SendError, SpooledPackage};
use request::{Part, RequestBuilder, record_count, skip_records, split_parts, window_parts};

/// Bytes of a response body read at most (an OTLP answer is a few bytes; an error
/// page is kept for the log).
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;
/// Bytes of an error answer kept in a [`Rejected::detail`] or [`SendError::detail`].
const MAX_DETAIL_BYTES: usize = 512;
/// A partial success is logged at most this often.
const PARTIAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

pub struct OtlpDestination {
    url: String,
    agent: ureq::Agent,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The gzip compressor when `compression: gzip`, reset for every request (its
    /// state, a few hundred KiB, allocated once).
    gzip: Option<flate2::Compress>,
    builder: RequestBuilder,
    /// Reused gzip output.
    compressed: Vec<u8>,
    /// Progress in a window whose sending stopped half-way (after a 413 split).
    resume: Option<Resume>,
    last_partial_log: Option<Instant>,
}

/// What was already done for a window that [`OtlpDestination::send`] left with an error.
struct Resume {
    window: WindowKey,
    /// Records of the window (in window order, empty packages aside) finished.
    done: usize,
    delivered: Delivered,
}

/// Identifies a window: the forwarder resends the very same packages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WindowKey {
    first_seq: u64,
    last_seq: u64,
    len: usize,
}

impl WindowKey {
    fn of(window: &[SpooledPackage]) -> WindowKey {
        WindowKey {
            first_seq: window.first().map_or(0, |p| p.seq),
            last_seq: window.last().map_or(0, |p| p.seq),
            len: window.len(),
        }
    }
}

/// What the receiver said about one request.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Accepted; this many records refused anyway (partial success).
    Accepted { rejected: u64, message: String },
    /// Refused for good.
    Rejected {
        reason: &'static str,
        detail: String,
    },
    /// 413.
    TooLarge { detail: String },
}

impl OtlpDestination {
    pub fn new(config: &OtlpConfig) -> Result<OtlpDestination, String> {
        let url = logs_url(&config.endpoint)?;
        let mut headers = Vec::with_capacity(config.headers.len());
        for (name, value) in &config.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("otlp header {name:?} is not a valid header name"))?;
            if header == ureq::http::header::CONTENT_TYPE
                || header == ureq::http::header::CONTENT_ENCODING
                || header == ureq::http::header::CONTENT_LENGTH
            {
                return Err(format!("otlp header {name:?} is set by logtap itself"));
            }
            let value = HeaderValue::from_str(value).map_err(|_| {
                format!("otlp header {name:?} has a value that is not valid in HTTP")
            })?;
            headers.push((header, value));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("logtap/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(OtlpDestination {
            url,
            agent,
            headers,
            gzip: (config.compression == OtlpCompression::Gzip)
                .then(|| flate2::Compress::new_gzip(flate2::Compression::fast(), 15)),
            builder: RequestBuilder::default(),
            compressed: Vec::new(),
            resume: None,
            last_partial_log: None,
        })
    }

    /// Where requests go: `<endpoint>/v1/logs`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Builds, posts and classifies one request carrying `parts`.
    fn post(&mut self, window: &[SpooledPackage], parts: &[Part]) -> Result<Answer, SendError> {
        let observed_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.builder.encode(window, parts, observed_ns);
        let body: &[u8] = match &mut self.gzip {
            Some(gzip) => {
                gzip_into(gzip, self.builder.body(), &mut self.compressed)?;
                &self.compressed
            }
            None => self.builder.body(),
        };
        let mut request = self
            .agent
            .post(&self.url)
            .header(ureq::http::header::CONTENT_TYPE, "application/x-protobuf");
        if self.gzip.is_some() {
            request = request.header(ureq::http::header::CONTENT_ENCODING, "gzip");
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let mut response = request.send(body).map_err(transport_error)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(ureq::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let json = response
            .headers()
            .get(ureq::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        // Read the answer whole so the connection can be reused; a body we cannot read
        // does not change what the status says.
        let answer_body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .unwrap_or_default();
        classify(status, retry_after, &answer_body, json)
    }

    fn log_partial(&mut self, rejected: u64, message: &str) {
        let now = Instant::now();
        if self
            .last_partial_log
            .is_none_or(|t| now.duration_since(t) >= PARTIAL_LOG_INTERVAL)
        {
            self.last_partial_log = Some(now);
            tracing::warn!(url = %self.url, rejected, message,
                "otlp: the receiver refused records of an accepted request (partial success)");
        }
    }
}

impl Destination for OtlpDestination {
    fn kind(&self) -> &'static str {
        "otlp"
    }

    fn send(&mut self, window: &[SpooledPackage]) -> Result<Delivered, SendError> {
        let key = WindowKey::of(window);
        let (mut done, mut delivered) = match self.resume.take() {
            Some(resume) if resume.window == key => (resume.done, resume.delivered),
            _ => (0, Delivered::default()),
        };
        let parts = skip_records(window_parts(window), done);
        if parts.is_empty() {
            // Never an empty request: a window without records is delivered as is.
            return Ok(delivered);
        }
        // Requests still to send, the next one last.
        let mut todo = vec![parts];
        while let Some(parts) = todo.pop() {
            let count = record_count(&parts);
            match self.post(window, &parts) {
                Ok(Answer::Accepted { rejected, message }) => {
                    if rejected > 0 {
                        let rejected = rejected.min(count as u64);
                        delivered.rejected_unidentified += rejected;
                        self.log_partial(rejected, &message);
                    }
                }
                Ok(Answer::Rejected { reason, detail }) => {
                    delivered
                        .rejected
                        .extend(rejections(window, &parts, reason, &detail));
                }
                Ok(Answer::TooLarge { detail }) => {
                    if count > 1 {
                        let (first, second) = split_parts(&parts);
                        todo.push(second);
                        todo.push(first);
                        continue;
                    }
                    delivered
                        .rejected
                        .extend(rejections(window, &parts, "too_large", &detail));
                }
                Err(e) => {
                    if done > 0 || delivered != Delivered::default() {
                        self.resume = Some(Resume {
                            window: key,
                            done,
                            delivered,
                        });
                    }
                    return Err(e);
                }
            }
            done += count;
        }
        Ok(delivered)
    }
}

/// Compresses `input` into `out` as one gzip member, with `gzip` reset first.
///
/// A failure cannot come from the data (deflate takes any bytes); it would be a broken
/// compressor, so it is a [`SendError`] (`compression`, retried) rather than a panic,
/// and the compressor is reset again before the next try.
fn gzip_into(
    gzip: &mut flate2::Compress,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), SendError> {
    use flate2::{FlushCompress, Status};
    gzip.reset();
    out.clear();
    // Deflate's worst case: stored blocks, 5 bytes per 16 KiB, and gzip's 18 bytes.
    out.reserve(input.len() + input.len() / 4096 + 64);
    loop {
        let consumed = usize::try_from(gzip.total_in())
            .unwrap_or(usize::MAX)
            .min(input.len());
        match gzip.compress_vec(&input[consumed..], out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => return Ok(()),
            Ok(Status::Ok | Status::BufError) => out.reserve(out.capacity().max(4096)),
            Err(e) => {
                return Err(SendError {
                    reason: "compression",
                    detail: format!("gzip: {e}"),
                    retry_after: None,
                });
            }
        }
    }
}

/// `Rejected` entries for `parts`: whole packages as `records: None`.
fn rejections(
    window: &[SpooledPackage],
    parts: &[Part],
    reason: &'static str,
    detail: &str,
) -> Vec<Rejected> {
    parts
        .iter()
        .map(|part| {
            let whole = part.records == (0..window[part.package].package.records.len());
            Rejected {
                package: part.package,
                records: (!whole).then(|| part.records.clone().collect()),
                reason,
                detail: detail.to_owned(),
            }
        })
        .collect()
}

/// What a status (and its body) means. See the module docs' table.
fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    json: bool,
) -> Result<Answer, SendError> {
    let error = |reason: &'static str| SendError {
        reason,
        detail: format!("HTTP {status}: {}", detail_of(body)),
        retry_after,
    };
    match status {
        200..=299 => {
            let (rejected, message) = if json {
                partial_success_json(body)
            } else {
                partial_success_protobuf(body)
            };
            Ok(Answer::Accepted { rejected, message })
        }
        413 => Ok(Answer::TooLarge {
            detail: format!("HTTP 413: {}", detail_of(body)),
        }),
        401 | 403 => Err(error("unauthorized")),
        404 => Err(error("not_found")),
        408 => Err(error("timeout")),
        429 => Err(error("throttled")),
        502..=504 => Err(error("unavailable")),
        400..=499 => Ok(Answer::Rejected {
            reason: "bad_request",
            detail: format!("HTTP {status}: {}", detail_of(body)),
        }),
        500..=599 => Err(error("server_error")),
        _ => Err(error("unexpected_status")),
    }
}

/// `partial_success` of a protobuf answer; an empty or undecodable body of a 2xx is a
/// full success (the receiver accepted the request).
fn partial_success_protobuf(body: &[u8]) -> (u64, String) {
    match ExportLogsServiceResponse::decode(body) {
        Ok(response) => response.partial_success.map_or((0, String::new()), |p| {
            (p.rejected_log_records.max(0) as u64, p.error_message)
        }),
        Err(e) => {
            tracing::debug!(error = %e, "otlp: 2xx answer is not an ExportLogsServiceResponse");
            (0, String::new())
        }
    }
}

/// `partialSuccess` of a JSON answer (some receivers answer JSON whatever was sent);
/// the int64 count may be a JSON string, as proto3's JSON mapping writes it.
fn partial_success_json(body: &[u8]) -> (u64, String) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (0, String::new());
    };
    let partial = &value["partialSuccess"];
    let rejected = match &partial["rejectedLogRecords"] {
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    };
    let message = partial["errorMessage"].as_str().unwrap_or("").to_owned();
    (rejected, message)
}

/// The start of an error answer, printable.
fn detail_of(body: &[u8]) -> String {
    let body = &body[..body.len().min(MAX_DETAIL_BYTES)];
    let text = String::from_utf8_lossy(body);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        "(empty answer)".to_owned()
    } else {
        text.to_owned()
    }
}

/// `Retry-After`: delay-seconds, or an HTTP date (a date in the past is no wait).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

fn transport_error(e: ureq::Error) -> SendError {
    use std::io::ErrorKind;
    let reason = match &e {
        ureq::Error::Timeout(_) => "timeout",
        ureq::Error::Io(io) if matches!(io.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            "timeout"
        }
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => "tls",
        ureq::Error::Protocol(_) | ureq::Error::LargeResponseHeader(..) => "protocol",
        _ => "disconnected",
    };
    SendError {
        reason,
        detail: e.to_string(),
        retry_after: None,
    }
}

//! The metrics listener: `/metrics` (Prometheus), `/healthz` (liveness) and
//! `/readyz` (readiness), HTTP/1.1 served by hyper, one request per connection.
//!
//! It runs on a current-thread tokio runtime in a thread of its own (`metrics-http`),
//! apart from the pipeline's threads, so a wedged pipeline is still *reported* (503
//! naming the component) rather than only timing out. The same runtime drains the
//! histograms every [`UPKEEP_INTERVAL`] when nobody scrapes.
//!
//! # Bounds
//!
//! A slow or silent client cannot hold the probes up for long: at most
//! [`MAX_CONNECTIONS`] connections are served at once (further ones wait in the
//! kernel's accept queue), the request head must arrive within [`HEADER_TIMEOUT`] and
//! be at most [`MAX_BUF`] bytes, and a connection is closed after
//! [`CONNECTION_TIMEOUT`] whatever it is doing (a client that does not read its
//! response included).
//!
//! # Authentication
//!
//! With `metrics.tls` the listener speaks HTTPS only, and with its `client_ca_file`
//! `/metrics` answers 403 to a client without a verified certificate (see
//! [`super::tls`]). With a [`BearerToken`], `/metrics` answers 401 unless the request
//! carries `Authorization: Bearer <token>`. `/healthz` and `/readyz` stay open: the kubelet's
//! HTTP probes cannot send a secret from a Kubernetes Secret, and they reveal only
//! component names and states, never a log line or a metric value.

use std::convert::Infallible;
use std::io;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::health::Health;

/// Connections served at once.
const MAX_CONNECTIONS: usize = 16;
/// The request head must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this, whatever it is doing.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// A request head larger than this is refused (431); we only serve bodiless GETs.
/// hyper's minimum is 8 KiB.
const MAX_BUF: usize = 16 * 1024;
/// How often histograms are drained when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The secret `/metrics` requires (`metrics.bearer_token_file`). Its `Debug` does not
/// show it.
#[derive(Clone)]
pub struct BearerToken(Arc<[u8]>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// Reads the token from `path`. Surrounding whitespace (a trailing newline) is
    /// dropped, as Prometheus does with `credentials_file`; what remains must be one
    /// non-empty word of visible ASCII, which is what a client can send in a header.
    pub fn from_file(path: &Path) -> Result<BearerToken, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        BearerToken::new(text.trim_ascii()).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn new(token: &[u8]) -> Result<BearerToken, String> {
        if token.is_empty() {
            return Err("the token is empty".into());
        }
        if !token.iter().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the token must be one word of visible ASCII (no spaces or control characters)"
                    .into(),
            );
        }
        Ok(BearerToken(token.into()))
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`. The token is
    /// compared in constant time (its length aside, which is not the secret).
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let Some(space) = value.iter().position(|&b| b == b' ') else {
            return false;
        };
        let (scheme, credentials) = value.split_at(space);
        // The scheme is case-insensitive (RFC 9110, 11.1).
        scheme.eq_ignore_ascii_case(b"bearer")
            && bool::from(credentials.trim_ascii().ct_eq(&self.0))
    }
}

/// What the listener serves.
pub struct Endpoint {
    pub prometheus: PrometheusHandle,
    pub health: Health,
    /// `Some`: `/metrics` requires it.
    pub token: Option<BearerToken>,
    /// `Some`: HTTPS only (see [`super::tls`]).
    pub tls: Option<super::MetricsTls>,
}

/// Serves `listener` on a thread of its own until the process ends.
pub fn serve(listener: TcpListener, endpoint: Endpoint) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    listener.set_nonblocking(true)?;
    let listener = {
        let _context = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let endpoint = Arc::new(endpoint);
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || runtime.block_on(run(listener, endpoint)))?;
    Ok(())
}

async fn run(listener: tokio::net::TcpListener, endpoint: Arc<Endpoint>) {
    let upkeep = endpoint.prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUF)
        .keep_alive(false);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A slot first: beyond the bound, connections wait in the accept queue.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // never closed
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: the next accept may succeed.
                tracing::debug!("metrics endpoint: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let endpoint = endpoint.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let served = async {
                let Some(tls) = &endpoint.tls else {
                    return serve_connection(&http, TokioIo::new(stream), &endpoint, false).await;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
                let stream = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return tracing::debug!("metrics endpoint: TLS handshake: {e}"),
                    Err(_) => return tracing::debug!("metrics endpoint: TLS handshake timed out"),
                };
                // Only a certificate the verifier accepted is kept by rustls.
                let verified = stream.get_ref().1.peer_certificates().is_some();
                serve_connection(&http, TokioIo::new(stream), &endpoint, verified).await
            };
            if tokio::time::timeout(CONNECTION_TIMEOUT, served)
                .await
                .is_err()
            {
                tracing::debug!("metrics endpoint: connection timed out");
            }
        });
    }
}

/// Serves one connection; `client_verified`: it presented a client certificate the
/// TLS verifier accepted.
async fn serve_connection<I>(
    http: &http1::Builder,
    io: I,
    endpoint: &Arc<Endpoint>,
    client_verified: bool,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let endpoint = endpoint.clone();
    let connection = http.serve_connection(
        io,
        service_fn(move |request| {
            let response = respond(&endpoint, &request, client_verified);
            async move { Ok::<_, Infallible>(response) }
        }),
    );
    if let Err(e) = connection.await {
        tracing::debug!("metrics endpoint: connection: {e}");
    }
}

/// The answer to one request (hyper leaves the body out for HEAD).
fn respond<B>(
    endpoint: &Endpoint,
    request: &Request<B>,
    client_verified: bool,
) -> Response<Full<Bytes>> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let health = &endpoint.health;
    match request.uri().path() {
        "/metrics" => {
            if endpoint.tls.as_ref().is_some_and(|t| t.client_auth) && !client_verified {
                return text(StatusCode::FORBIDDEN, "a client certificate is required\n");
            }
            if let Some(token) = &endpoint.token
                && !token.admits(request.headers())
            {
                let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"logtap\""),
                );
                return response;
            }
            super::publish_health(&health.report());
            body(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                endpoint.prometheus.render().into(),
            )
        }
        "/healthz" => {
            let report = health.report();
            let mut json = serde_json::to_vec(&report).unwrap_or_default();
            json.push(b'\n');
            let status = if report.healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            body(status, "application/json", json.into())
        }
        "/readyz" if health.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    body(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(message.as_bytes()),
    )
}

fn body(status: StatusCode, content_type: &'static str, bytes: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    /// A listener on an ephemeral port of 127.0.0.1; returns its port.
    fn start(token: Option<&str>, health: Health) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoint = Endpoint {
            // A recorder of its own: the test does not install the global one.
            prometheus: PrometheusBuilder::new().build_recorder().handle(),
            health,
            token: token.map(|t| BearerToken::new(t.as_bytes()).unwrap()),
            tls: None,
        };
        serve(listener, endpoint).unwrap();
        port
    }

    /// Sends `request` as is and reads the whole answer: (status, head, body).
    fn exchange(port: u16, request: &str) -> (u16, String, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").expect(&answer);
        let status = head["HTTP/1.1 ".len()..][..3].parse().unwrap();
        (status, head.to_string(), body.to_string())
    }

    fn get(port: u16, method: &str, path: &str, extra: &str) -> (u16, String, String) {
        exchange(
            port,
            &format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n"),
        )
    }

    #[test]
    fn serves_the_paths_over_tcp() {
        let health = Health::new(Duration::from_secs(60));
        let port = start(None, health.clone());

        let (status, head, _) = get(port, "GET", "/metrics", "");
        assert_eq!(status, 200, "{head}");
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );

        let (status, _, body) = get(port, "GET", "/healthz?verbose=1", "");
        assert_eq!(status, 200);
        assert_eq!(
            body,
            "{\"healthy\":true,\"failing\":[],\"components\":[]}\n"
        );

        // A component that died fails liveness, by name.
        let h = health.clone();
        std::thread::spawn(move || drop(h.register("sink-x")))
            .join()
            .unwrap();
        let (status, _, body) = get(port, "GET", "/healthz", "");
        assert_eq!(status, 503);
        assert!(body.contains("\"failing\":[\"sink-x\"]"), "{body}");

        assert_eq!(get(port, "GET", "/readyz", "").2, "starting\n");
        assert_eq!(get(port, "GET", "/readyz", "").0, 503);
        health.set_ready();
        assert_eq!(get(port, "GET", "/readyz", "").0, 200);

        let (status, _, body) = get(port, "GET", "/nowhere", "");
        assert_eq!((status, body.as_str()), (404, "not found\n"));

        let (status, head, body) = get(port, "POST", "/metrics", "Content-Length: 0\r\n");
        assert_eq!((status, body.as_str()), (405, "only GET\n"));
        assert!(head.contains("allow: GET, HEAD"), "{head}");

        // HEAD: the length of what GET would send, and no body.
        let (status, head, body) = get(port, "HEAD", "/readyz", "");
        assert_eq!(status, 200);
        assert!(head.contains("content-length: 6"), "{head}");
        assert_eq!(body, "");

        // hyper answers what does not parse, and a head over the bound.
        let (status, _, _) = exchange(port, "garbage\r\n\r\n");
        assert_eq!(status, 400);
        let big = format!("X-Big: {}\r\n", "a".repeat(MAX_BUF));
        assert_eq!(get(port, "GET", "/healthz", &big).0, 431);
    }

    #[test]
    fn a_silent_client_does_not_hold_the_listener() {
        let port = start(None, Health::new(Duration::from_secs(60)));
        // More silent connections than the bound: they time out, the next request is
        // answered.
        let silent: Vec<TcpStream> = (0..MAX_CONNECTIONS + 2)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        let started = std::time::Instant::now();
        assert_eq!(get(port, "GET", "/healthz", "").0, 200);
        assert!(
            started.elapsed() < HEADER_TIMEOUT * 3,
            "{:?}",
            started.elapsed()
        );
        drop(silent);
    }

    #[test]
    fn a_bearer_token_guards_metrics_only() {
        let port = start(Some("s3cret-token"), Health::new(Duration::from_secs(60)));

        let (status, head, _) = get(port, "GET", "/metrics", "");
        assert_eq!(status, 401);
        assert!(head.contains("www-authenticate: Bearer"), "{head}");
        for wrong in [
            "Authorization: Bearer s3cret-tokeN\r\n",
            "Authorization: Bearer s3cret\r\n",
            "Authorization: Bearer s3cret-token-and-more\r\n",
            "Authorization: Basic s3cret-token\r\n",
            "Authorization: s3cret-token\r\n",
            "Authorization: Bearer\r\n",
        ] {
            assert_eq!(get(port, "GET", "/metrics", wrong).0, 401, "{wrong}");
        }
        assert_eq!(
            get(port, "HEAD", "/metrics", "").0,
            401,
            "HEAD is guarded too"
        );

        let (status, head, _) = get(
            port,
            "GET",
            "/metrics",
            "Authorization: Bearer s3cret-token\r\n",
        );
        assert_eq!(status, 200, "{head}");
        // The scheme is case-insensitive.
        assert_eq!(
            get(
                port,
                "GET",
                "/metrics",
                "authorization: bearer s3cret-token\r\n"
            )
            .0,
            200
        );

        // The kubelet's probes carry no token.
        assert_eq!(get(port, "GET", "/healthz", "").0, 200);
        assert_eq!(get(port, "GET", "/readyz", "").0, 503);
    }

    #[test]
    fn tokens_are_read_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "abc.DEF-123\n").unwrap();
        let token = BearerToken::from_file(&file).unwrap();
        assert_eq!(&*token.0, b"abc.DEF-123");
        assert_eq!(format!("{token:?}"), "BearerToken(<redacted>)");

        std::fs::write(&file, " \n").unwrap();
        assert!(BearerToken::from_file(&file).unwrap_err().contains("empty"));
        std::fs::write(&file, "two words").unwrap();
        assert!(
            BearerToken::from_file(&file)
                .unwrap_err()
                .contains("one word")
        );
        let missing = dir.path().join("missing");
        assert!(
            BearerToken::from_file(&missing)
                .unwrap_err()
                .contains("missing")
        );
    }
}

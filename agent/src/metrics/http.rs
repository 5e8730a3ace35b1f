//! The metrics listener: `/metrics` (Prometheus), `/healthz` (liveness) and
//! `/readyz` (readiness), plain HTTP/1.1 with one request per connection.
//!
//! It runs on its own threads, apart from the pipeline's, so a wedged pipeline is
//! still *reported* (503 naming the component) rather than only timing out.
//! Each connection gets a short-lived thread (at most [`MAX_CONNECTIONS`] at once) and
//! read/write timeouts, so a slow or silent client cannot hold the probes up.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use super::health::Health;

const MAX_CONNECTIONS: usize = 16;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A request head larger than this is refused (we only serve bodiless GETs).
const MAX_HEAD: usize = 8 * 1024;
/// How often histograms are drained when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Serves the listener until the process ends.
pub fn serve(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    health: Health,
) -> io::Result<()> {
    let upkeep = prometheus.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        })?;
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else {
                    // EMFILE and the like: the next accept may succeed.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    open.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let (prometheus, health, done) = (prometheus.clone(), health.clone(), open.clone());
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        let _ = handle(stream, &prometheus, &health);
                        done.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    open.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!("metrics endpoint: could not start a connection thread");
                }
            }
        })?;
    Ok(())
}

fn handle(mut stream: TcpStream, prometheus: &PrometheusHandle, health: &Health) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = read_head(&mut stream)?;
    let response = match request_target(&head) {
        Some(("GET" | "HEAD", path)) => route(path, prometheus, health),
        Some(_) => Response::text(405, "Method Not Allowed", "only GET\n".into()),
        None => Response::text(400, "Bad Request", "bad request\n".into()),
    };
    let head_only = head.starts_with(b"HEAD ");
    response.write(&mut stream, head_only)
}

/// Reads up to the end of the request head (`\r\n\r\n`), at most [`MAX_HEAD`] bytes.
fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            break;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

/// The method and path (without query) of the request line.
fn request_target(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    parts.next()?.starts_with("HTTP/").then_some(())?;
    Some((method, target.split('?').next().unwrap_or(target)))
}

fn route(path: &str, prometheus: &PrometheusHandle, health: &Health) -> Response {
    match path {
        "/metrics" => {
            super::publish_health(&health.report());
            Response {
                status: 200,
                reason: "OK",
                content_type: "text/plain; version=0.0.4",
                body: prometheus.render().into_bytes(),
            }
        }
        "/healthz" => {
            let report = health.report();
            let body = serde_json::to_vec(&report).unwrap_or_default();
            let (status, reason) = if report.healthy {
                (200, "OK")
            } else {
                (503, "Service Unavailable")
            };
            Response {
                status,
                reason,
                content_type: "application/json",
                body: [body, b"\n".to_vec()].concat(),
            }
        }
        "/readyz" if health.is_ready() => Response::text(200, "OK", "ready\n".into()),
        "/readyz" => Response::text(503, "Service Unavailable", "starting\n".into()),
        _ => Response::text(404, "Not Found", "not found\n".into()),
    }
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: String) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.into_bytes(),
        }
    }

    fn write(&self, stream: &mut TcpStream, head_only: bool) -> io::Result<()> {
        let head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        stream.write_all(head.as_bytes())?;
        if !head_only {
            stream.write_all(&self.body)?;
        }
        stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_parsed_and_bad_ones_refused() {
        assert_eq!(
            request_target(b"GET /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/healthz"))
        );
        assert_eq!(
            request_target(b"GET /metrics HTTP/1.0\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(request_target(b"garbage\r\n\r\n"), None);
        assert_eq!(request_target(b"GET /x\r\n\r\n"), None);
        assert_eq!(request_target(&[0xff, b' ', b'/', b' ', b'H']), None);
    }
}

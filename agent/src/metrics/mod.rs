//! Metrics: the metrics listener (`/metrics`, and the `/healthz` / `/readyz` probes of
//! [`health`]) and the catalogue of what logtap reports.
//!
//! Stages record through the `metrics` facade macros, naming each metric by its
//! constant in [`catalogue`] (name, kind, unit, help text, naming rule); this module
//! installs the Prometheus recorder and describes every catalogued metric once, so
//! `/metrics` carries help text.

pub mod catalogue;
pub mod health;
mod http;
mod tls;

use std::net::SocketAddr;

pub use http::BearerToken;
pub use tls::{MetricsTls, TlsField};

use catalogue::{COMPONENT_SECONDS_SINCE_PROGRESS, COMPONENT_UP};
use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::PrometheusBuilder;

/// Installs the Prometheus recorder and serves `/metrics`, `/healthz` and `/readyz`
/// (of [`health::global`]) on `listen`, on a thread of its own: scraping and probes
/// stay independent of the pipeline's threads. With `token`, `/metrics` requires it
/// (`Authorization: Bearer`); the probes stay open.
pub fn install(
    listen: SocketAddr,
    token: Option<BearerToken>,
    tls: Option<MetricsTls>,
) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| anyhow::anyhow!("metrics endpoint on {listen}: {e}"))?;
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
    let _ = HANDLE.set(prometheus.clone());
    describe();
    let guarded = token.is_some();
    let scheme = match &tls {
        None => "http",
        Some(t) if t.client_auth => "https (client certificates for /metrics)",
        Some(_) => "https",
    };
    let endpoint = http::Endpoint {
        prometheus,
        health: health::global().clone(),
        token,
        tls,
    };
    http::serve(listener, endpoint)
        .map_err(|e| anyhow::anyhow!("metrics endpoint on {listen}: {e}"))?;
    tracing::info!(
        %listen,
        metrics_bearer_token = guarded,
        scheme,
        "serving /metrics, /healthz and /readyz"
    );
    Ok(())
}

/// The recorder installed by [`install`], for [`render`].
static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// What `/metrics` would answer now (the Prometheus text format), when the endpoint
/// is on; read by self-monitoring's statistics.
pub fn render() -> Option<String> {
    HANDLE.get().map(|h| h.render())
}

/// Sets the component gauges from a health report (at every scrape, so they are
/// current without a thread of their own).
fn publish_health(report: &health::Report) {
    for c in &report.components {
        metrics::gauge!(COMPONENT_UP, "component" => c.name.clone()).set(if c.failing() {
            0.0
        } else {
            1.0
        });
        metrics::gauge!(COMPONENT_SECONDS_SINCE_PROGRESS, "component" => c.name.clone())
            .set(c.seconds_since_progress);
    }
}

/// Help text of every metric in the [`catalogue`], registered with the recorder.
pub fn describe() {
    use catalogue::Kind;
    for m in catalogue::CATALOGUE {
        match (m.kind, m.unit) {
            (Kind::Counter, Some(unit)) => describe_counter!(m.name, unit, m.help),
            (Kind::Counter, None) => describe_counter!(m.name, m.help),
            (Kind::Gauge, Some(unit)) => describe_gauge!(m.name, unit, m.help),
            (Kind::Gauge, None) => describe_gauge!(m.name, m.help),
            (Kind::Histogram, Some(unit)) => describe_histogram!(m.name, unit, m.help),
            (Kind::Histogram, None) => describe_histogram!(m.name, m.help),
        }
    }
}

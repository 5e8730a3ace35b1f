//! `logtap run --demo`: a directory of realistic sample logs to collect on a machine
//! that has no Kubernetes pods of its own, so the first command of the README shows
//! the whole path (CRI decoding, parsing, multiline, the store, `logtap query`).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::config::{Config, Format, MultilineConfig, ParserConfig, SourceConfig};

const NGINX_UID: &str = "0b5a3c1e-7d2f-4e43-9f1a-2b8c6d4e5f70";
const CHECKOUT_UID: &str = "6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";

/// Writes the demo logs under `<data_dir>/demo` (once: a second run finds them
/// already collected by their checkpoints instead of shipping fresh copies) and adds
/// sources for them, ahead of the configured ones, into the config's first sink.
pub fn install(config: &mut Config) -> anyhow::Result<()> {
    let dir = config.data_dir.join("demo");
    if !dir.exists() {
        write_logs(&dir).with_context(|| format!("writing demo logs under {}", dir.display()))?;
    }
    let sink = config
        .sinks
        .keys()
        .find(|k| k.as_ref() == "local")
        .or_else(|| config.sinks.keys().next())
        .cloned()
        .context("the config has no sink to send demo logs to")?;
    let d = dir.display();
    let source = |name: &str, include: String, format, parser, multiline| SourceConfig {
        name: Arc::from(name),
        include: vec![include],
        exclude: Vec::new(),
        format,
        max_line_bytes: 1 << 20,
        multiline,
        parser,
        sink: sink.clone(),
        selector: None,
        stream: None,
        container_paths: Vec::new(),
        allowed_roots: Vec::new(),
        processors: Vec::new(),
        fields: Vec::new(),
        input: None,
    };
    let demo = [
        source(
            "demo-nginx",
            format!("{d}/pods/*/nginx/*.log"),
            Format::Cri,
            ParserConfig::Nginx,
            None,
        ),
        source(
            "demo-pods",
            format!("{d}/pods/**/*.log"),
            Format::Cri,
            ParserConfig::Json,
            None,
        ),
        source(
            "demo-java",
            format!("{d}/app/*.log"),
            Format::Raw,
            ParserConfig::None,
            Some(MultilineConfig {
                start: regex::bytes::Regex::new(r"^\d{4}-\d{2}-\d{2}").expect("valid regex"),
                flush_timeout: Duration::from_secs(1),
                max_lines: 500,
            }),
        ),
    ];
    config.sources.splice(0..0, demo);
    tracing::info!(dir = %dir.display(), "demo logs written; collecting them too");
    Ok(())
}

fn write_logs(dir: &Path) -> std::io::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ts = |i: u64| {
        rfc3339(
            now.as_secs().saturating_sub(600) + i,
            (i * 7919) % 1_000_000_000,
        )
    };

    let mut nginx = String::new();
    for i in 0..300u64 {
        let status = if i % 37 == 0 { 502 } else { 200 };
        let path = ["/", "/cart", "/api/items?page=2", "/checkout"][(i % 4) as usize];
        let _ = writeln!(
            nginx,
            "{} stdout F 10.0.{}.{} - - [21/Nov/2026:10:{:02}:{:02} +0000] \"GET {path} HTTP/1.1\" {status} {} \"-\" \"curl/8.5.0\"",
            ts(i),
            i % 4,
            i % 250,
            (i / 60) % 60,
            i % 60,
            512 + i * 3
        );
    }
    // A line longer than the runtime's 16 KiB limit arrives as P records, then F.
    let _ = writeln!(nginx, "{} stderr P {}", ts(300), "x".repeat(16384));
    let _ = writeln!(
        nginx,
        "{} stderr F [warn] upstream response buffered",
        ts(300)
    );
    write(
        &dir.join(format!("pods/demo_web-5f7c9_{NGINX_UID}/nginx/0.log")),
        &nginx,
    )?;

    let mut checkout = String::new();
    for i in 0..200u64 {
        let (level, msg) = match i % 50 {
            17 => ("error", "payment declined: card expired"),
            33 => ("warn", "retrying inventory lookup"),
            _ => ("info", "order placed"),
        };
        let _ = writeln!(
            checkout,
            "{} stdout F {{\"level\":\"{level}\",\"msg\":\"{msg}\",\"order_id\":{},\"latency_ms\":{}}}",
            ts(i),
            1000 + i,
            (i * 13) % 400
        );
    }
    write(
        &dir.join(format!("pods/demo_checkout-7b8d_{CHECKOUT_UID}/app/0.log")),
        &checkout,
    )?;

    let mut java = String::new();
    for i in 0..50u64 {
        let t = rfc3339(now.as_secs().saturating_sub(300) + i, 0);
        let _ = writeln!(
            java,
            "{} INFO  PaymentService - charge ok order={}",
            &t[..19],
            2000 + i
        );
        if i % 10 == 9 {
            let _ = writeln!(
                java,
                "{} ERROR PaymentService - charge failed order={}",
                &t[..19],
                2000 + i
            );
            java.push_str(
                "java.lang.IllegalStateException: gateway timeout\n\
                 \tat com.shop.pay.Gateway.charge(Gateway.java:88)\n\
                 \tat com.shop.pay.PaymentService.pay(PaymentService.java:41)\n\
                 Caused by: java.net.SocketTimeoutException: Read timed out\n\
                 \tat java.base/java.net.SocketInputStream.read(SocketInputStream.java:168)\n\
                 \t... 7 more\n",
            );
        }
    }
    write(&dir.join("app/payments.log"), &java)
}

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(path.parent().expect("demo paths have parents"))?;
    std::fs::write(path, text)
}

/// `secs`/`nanos` since the epoch as RFC 3339 UTC with nanoseconds, as runtimes write it.
fn rfc3339(secs: u64, nanos: u64) -> String {
    let mut out = Vec::with_capacity(30);
    crate::sink::store::render::write_rfc3339(&mut out, (secs * 1_000_000_000 + nanos) as i64);
    String::from_utf8(out).expect("RFC 3339 text is ASCII")
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            super::rfc3339(1_795_258_531, 210_111_144),
            "2026-11-21T10:55:31.210111144Z"
        );
        assert_eq!(
            super::rfc3339(951_782_400, 5),
            "2000-02-29T00:00:00.000000005Z"
        );
    }
}

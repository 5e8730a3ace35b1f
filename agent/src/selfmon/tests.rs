use std::sync::Arc;

use tracing_subscriber::prelude::*;

use super::*;

fn parsed(line: &Bytes) -> serde_json::Value {
    assert_eq!(line.last(), Some(&b'\n'), "one JSON line");
    serde_json::from_slice(line).unwrap()
}

const EXPOSITION: &str = "\
# HELP logtap_config_lines_total Records read, by source config
# TYPE logtap_config_lines_total counter
logtap_config_lines_total{config=\"app\"} 120
logtap_config_lines_total{config=\"shop/web/out\"} 7
logtap_lines_filtered_total{config=\"app\"} 20
logtap_lines_masked_total{config=\"app\"} 3
logtap_dropped_bytes_total{reason=\"truncated_unread\"} 4096
logtap_sink_errors_total{sink=\"local\",kind=\"retry\"} 2
logtap_read_lag_bytes 0.5
logtap_checkpoint_write_seconds_bucket{le=\"0.005\"} 3
";

#[test]
fn statistics_are_one_record_per_config_and_one_for_the_agent() {
    let configs: Vec<Arc<str>> = vec![Arc::from("app"), Arc::from("idle")];
    let records: Vec<_> = statistics(&configs, Some(EXPOSITION))
        .iter()
        .map(parsed)
        .collect();
    assert_eq!(records.len(), 3);
    assert_eq!(
        records[0],
        serde_json::json!({"kind": "stats", "config": "app", "lines": 120, "filtered": 20, "masked": 3})
    );
    assert_eq!(
        records[1],
        serde_json::json!({"kind": "stats", "config": "idle", "lines": 0, "filtered": 0, "masked": 0})
    );
    assert_eq!(
        records[2],
        serde_json::json!({
            "kind": "stats",
            "config": "*",
            "dropped_bytes_total.truncated_unread": 4096,
            "sink_errors_total.local.retry": 2,
            "read_lag_bytes": 0.5,
        })
    );
    let off = statistics(&configs, None);
    assert_eq!(
        parsed(&off[0]),
        serde_json::json!({"kind": "stats", "config": "*", "metrics": "off"})
    );
}

/// While a tap is set, events at or above its level become JSON records with their
/// fields; less severe ones and events with no tap set are not sent.
#[test]
fn the_layer_sends_events_at_or_above_the_level_with_their_fields() {
    let (events, received) = crossbeam_channel::bounded(4);
    let subscriber = tracing_subscriber::registry().with(layer());
    tracing::subscriber::with_default(subscriber, || {
        tracing::warn!("before the tap");
        *tap().lock().unwrap() = Some(Tap {
            events,
            level: tracing::Level::WARN,
        });
        TAPPED.store(true, Ordering::Relaxed);
        tracing::info!("too verbose");
        tracing::warn!(
            path = "/var/log/x.log",
            lost = 7u64,
            ok = false,
            "cannot read"
        );
        tracing::error!(error = ?std::io::ErrorKind::NotFound, "failed");
        // The queue holds 4: the rest is counted, not waited for.
        for i in 0..10 {
            tracing::error!(i, "flood");
        }
        TAPPED.store(false, Ordering::Relaxed);
        tap().lock().unwrap().take();
        tracing::error!("after the tap");
    });
    let got: Vec<serde_json::Value> = received.try_iter().map(|l| parsed(&l)).collect();
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[0],
        serde_json::json!({
            "kind": "log", "level": "WARN", "target": module_path!(),
            "message": "cannot read", "path": "/var/log/x.log", "lost": 7, "ok": false,
        })
    );
    assert_eq!(got[1]["level"], "ERROR");
    assert_eq!(got[1]["error"], "NotFound");
    assert_eq!(got[2]["message"], "flood");
}

#[test]
fn exposition_lines_parse_into_name_label_values_and_value() {
    assert_eq!(
        parse_series("logtap_sink_errors_total{sink=\"a\",kind=\"retry\"} 3"),
        Some((
            "logtap_sink_errors_total",
            vec![("sink", "a"), ("kind", "retry")],
            3.0
        ))
    );
    assert_eq!(
        parse_series("logtap_open_files 12"),
        Some(("logtap_open_files", vec![], 12.0))
    );
    assert_eq!(parse_series("# TYPE logtap_open_files gauge"), None);
    assert_eq!(parse_series("garbage"), None);
}

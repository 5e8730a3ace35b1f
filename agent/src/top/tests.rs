use super::render::{count, rate, size};
use super::*;

/// What an agent with a file source, a store and an OTLP sink, and capture, serves
/// (abridged), one second apart.
const BEFORE: &str = r#"# HELP logtap_lines_read_total Records framed from sources, by source_kind
# TYPE logtap_lines_read_total counter
logtap_lines_read_total{source_kind="file"} 1000
logtap_lines_read_total{source_kind="capture"} 10
logtap_bytes_read_total{source_kind="file"} 100000
logtap_config_lines_total{config="app"} 800
logtap_config_lines_total{config="nginx"} 200
logtap_sink_lines_total{sink="store"} 990
logtap_sink_errors_total{sink="otlp",kind="transient"} 1
logtap_forward_records_total{sink="central"} 500
logtap_capture_records_total 10
logtap_component_up{component="source"} 1
"#;

const NOW: &str = r#"# TYPE logtap_lines_read_total counter
logtap_lines_read_total{source_kind="file"} 1500
logtap_lines_read_total{source_kind="capture"} 30
logtap_bytes_read_total{source_kind="file"} 150000
logtap_config_lines_total{config="app"} 1200
logtap_config_lines_total{config="nginx"} 300
logtap_lines_filtered_total{config="nginx"} 7
logtap_parse_failures_total{parser="json"} 3
logtap_read_lag_bytes 2048
logtap_open_files 2
logtap_sink_lines_total{sink="store"} 1490
logtap_sink_packages_total{sink="store"} 12
logtap_sink_errors_total{sink="otlp",kind="transient"} 4
logtap_sink_errors_total{sink="otlp",kind="rejected"} 1
logtap_forward_records_total{sink="central"} 900
logtap_forward_acked_records_total{sink="central"} 880
logtap_forward_destination_up{sink="central"} 0
logtap_spool_bytes{sink="central"} 1048576
logtap_spool_oldest_unforwarded_seconds{sink="central"} 12
logtap_capture_up 1
logtap_capture_hook_mode{mode="fentry"} 1
logtap_capture_hook_mode{mode="tracepoint"} 0
logtap_capture_streams 4
logtap_capture_records_total 30
logtap_capture_gaps_total 2
logtap_capture_repaired_bytes_total 4096
logtap_dropped_lines_total{reason="spool_full"} 5
logtap_dropped_bytes_total{reason="truncated_unread"} 300
logtap_component_up{component="source"} 1
logtap_component_up{component="sink-central"} 0
logtap_component_seconds_since_progress{component="sink-central"} 95.5
logtap_checkpoint_write_seconds{quantile="0.5"} 0.009
logtap_checkpoint_write_seconds_sum 0.03
"#;

#[test]
fn exposition_is_parsed_into_series_by_label() {
    let now = Scrape::parse(NOW);
    assert_eq!(now.sum("logtap_lines_read_total"), 1530.0);
    assert_eq!(
        now.by("logtap_lines_read_total", "source_kind"),
        BTreeMap::from([("capture".to_string(), 30.0), ("file".to_string(), 1500.0)])
    );
    assert_eq!(
        now.by_pair("logtap_sink_errors_total", "sink", "kind")
            [&("otlp".into(), "rejected".into())],
        1.0
    );
    // A series without the label is summed under "".
    assert_eq!(now.by("logtap_read_lag_bytes", "x")[""], 2048.0);
    assert!(now.has("logtap_capture_up"));
    assert!(!now.has("logtap_kube_api_up"));
    assert_eq!(Scrape::parse("garbage\n# comment\n"), Scrape::default());
}

#[test]
fn rates_are_counter_deltas_over_the_interval() {
    let (before, now) = (Scrape::parse(BEFORE), Scrape::parse(NOW));
    let rates = Rates {
        before: &before,
        now: &now,
        seconds: 2.0,
    };
    let lines = rates.by("logtap_lines_read_total", "source_kind");
    assert_eq!(
        lines["file"],
        Counter {
            total: 1500.0,
            rate: 250.0
        }
    );
    assert_eq!(lines["capture"].rate, 10.0);
    // New in the second scrape: counted from 0.
    assert_eq!(rates.total("logtap_capture_gaps_total").rate, 1.0);
    // Went down: the agent restarted, counted from 0 again (never a negative rate).
    let reset = Rates {
        before: &now,
        now: &before,
        seconds: 1.0,
    };
    assert_eq!(reset.total("logtap_capture_records_total").rate, 10.0);
    let none = Rates {
        before: &now,
        now: &now,
        seconds: 0.0,
    };
    assert_eq!(none.total("logtap_lines_read_total").rate, 0.0);
}

#[test]
fn the_view_shows_every_section_with_rates_and_totals() {
    let (before, now) = (Scrape::parse(BEFORE), Scrape::parse(NOW));
    let rates = Rates {
        before: &before,
        now: &now,
        seconds: 1.0,
    };
    let text = render("HEAD", &rates);
    let line_of = |start: &str| {
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?} in\n{text}"))
    };
    assert!(text.starts_with("HEAD\n"), "{text}");
    assert_eq!(line_of("file"), "file 500.0 48.8 KiB/s 1500 146.5 KiB");
    assert_eq!(line_of("capture 20.0"), "capture 20.0 0 B/s 30 0 B");
    assert!(line_of("read lag").contains("read lag 2.0 KiB"), "{text}");
    assert!(
        line_of("read lag").contains("parse failures json 3"),
        "{text}"
    );
    assert_eq!(line_of("app"), "app 400.0 1200 0 0");
    assert_eq!(line_of("nginx"), "nginx 100.0 300 7 0");
    assert_eq!(line_of("store"), "store 500.0 1490 12 0");
    assert_eq!(line_of("otlp"), "otlp 0.0 0 0 rejected 1, transient 4");
    assert_eq!(
        line_of("central"),
        "central DOWN 400.0 0 B/s 880 0 0 1.0 MiB 12s"
    );
    assert!(
        line_of("up hooks").contains("hooks fentry streams 4"),
        "{text}"
    );
    assert_eq!(
        line_of("ring drops"),
        "ring drops: records 0, bytes 0 lost events 0 unbound records 0"
    );
    assert!(
        line_of("gaps").contains("gaps 2 repaired 4.0 KiB"),
        "{text}"
    );
    assert_eq!(line_of("lines spool_full"), "lines spool_full 5");
    assert_eq!(
        line_of("bytes truncated_unread"),
        "bytes truncated_unread 300 B"
    );
    assert_eq!(line_of("sink-central"), "sink-central DOWN 95.5s");
    // Every section, in order.
    let titles: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_uppercase()))
        .collect();
    assert_eq!(
        titles,
        [
            "HEAD",
            "SOURCES",
            "CONFIGS",
            "SINKS",
            "FORWARDING",
            "CAPTURE",
            "DROPPED",
            "COMPONENTS"
        ]
    );
}

#[test]
fn sections_of_absent_features_are_left_out() {
    let scrape = Scrape::parse("logtap_lines_read_total{source_kind=\"file\"} 3\n");
    let rates = Rates {
        before: &scrape,
        now: &scrape,
        seconds: 1.0,
    };
    let text = render("HEAD", &rates);
    assert!(!text.contains("CAPTURE"), "{text}");
    assert!(!text.contains("FORWARDING"), "{text}");
    assert!(text.contains("CONFIGS\n  (none)"), "{text}");
    assert!(text.contains("lines 0\n  bytes 0\n"), "{text}");
}

#[test]
fn numbers_are_formatted_for_reading() {
    assert_eq!(count(1500.0), "1500");
    assert_eq!(count(0.5), "0.5");
    assert_eq!(rate(12.34), "12.3");
    assert_eq!(rate(12_345.0), "12.3k");
    assert_eq!(rate(2_500_000.0), "2.5M");
    assert_eq!(size(512.0), "512 B");
    assert_eq!(size(1536.0), "1.5 KiB");
    assert_eq!(size(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
}

#[test]
fn intervals_are_checked() {
    assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
    assert!(parse_interval("1ms").unwrap_err().contains("between"));
    assert!(parse_interval("soon").is_err());
}

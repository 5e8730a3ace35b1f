//! The text of one view: sections of aligned tables, a section left out when the agent
//! reports none of its series (no capture, no network sinks).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::{Counter, Rates};
use crate::metrics::catalogue as m;

/// The view of `rates` under `heading`, ending in a newline.
pub fn render(heading: &str, rates: &Rates) -> String {
    let mut out = format!("{heading}\n");
    sources(&mut out, rates);
    configs(&mut out, rates);
    sinks(&mut out, rates);
    forwarding(&mut out, rates);
    capture(&mut out, rates);
    dropped(&mut out, rates);
    components(&mut out, rates);
    out
}

fn sources(out: &mut String, r: &Rates) {
    let lines = r.by(m::LINES_READ_TOTAL, "source_kind");
    let bytes = r.by(m::BYTES_READ_TOTAL, "source_kind");
    let kinds: BTreeSet<&String> = lines.keys().chain(bytes.keys()).collect();
    let rows = kinds
        .into_iter()
        .map(|kind| {
            let l = lines.get(kind).copied().unwrap_or_default();
            let b = bytes.get(kind).copied().unwrap_or_default();
            vec![
                kind.clone(),
                rate(l.rate),
                format!("{}/s", size(b.rate)),
                count(l.total),
                size(b.total),
            ]
        })
        .collect();
    section(
        out,
        "SOURCES",
        &["source kind", "lines/s", "bytes/s", "lines", "bytes"],
        rows,
    );
    let now = r.now;
    let _ = writeln!(
        out,
        "  read lag {}  open files {}  parse failures {}  truncated {}  malformed {}  invalid utf-8 {}",
        size(now.sum(m::READ_LAG_BYTES)),
        count(now.sum(m::OPEN_FILES)),
        labelled(&now.by(m::PARSE_FAILURES_TOTAL, "parser"), count),
        count(now.sum(m::LINES_TRUNCATED_TOTAL)),
        count(now.sum(m::LINES_MALFORMED_TOTAL)),
        count(now.sum(m::LINES_INVALID_UTF8_TOTAL)),
    );
}

fn configs(out: &mut String, r: &Rates) {
    let lines = r.by(m::CONFIG_LINES_TOTAL, "config");
    let filtered = r.now.by(m::LINES_FILTERED_TOTAL, "config");
    let masked = r.now.by(m::LINES_MASKED_TOTAL, "config");
    let names: BTreeSet<&String> = lines
        .keys()
        .chain(filtered.keys())
        .chain(masked.keys())
        .collect();
    let rows = names
        .into_iter()
        .map(|name| {
            let l = lines.get(name).copied().unwrap_or_default();
            vec![
                name.clone(),
                rate(l.rate),
                count(l.total),
                count(filtered.get(name).copied().unwrap_or(0.0)),
                count(masked.get(name).copied().unwrap_or(0.0)),
            ]
        })
        .collect();
    section(
        out,
        "CONFIGS",
        &["config", "lines/s", "lines", "filtered", "masked"],
        rows,
    );
}

/// The sink workers' counters, which are labelled by the sink's type.
fn sinks(out: &mut String, r: &Rates) {
    let lines = r.by(m::SINK_LINES_TOTAL, "sink");
    let packages = r.now.by(m::SINK_PACKAGES_TOTAL, "sink");
    let errors = r.now.by_pair(m::SINK_ERRORS_TOTAL, "sink", "kind");
    let types: BTreeSet<&String> = lines
        .keys()
        .chain(packages.keys())
        .chain(errors.keys().map(|(sink, _)| sink))
        .collect();
    let rows = types
        .into_iter()
        .map(|sink| {
            let l = lines.get(sink).copied().unwrap_or_default();
            let kinds: BTreeMap<String, f64> = errors
                .iter()
                .filter(|((s, _), _)| s == sink)
                .map(|((_, kind), v)| (kind.clone(), *v))
                .collect();
            vec![
                sink.clone(),
                rate(l.rate),
                count(l.total),
                count(packages.get(sink).copied().unwrap_or(0.0)),
                labelled(&kinds, count),
            ]
        })
        .collect();
    section(
        out,
        "SINKS",
        &["sink type", "lines/s", "lines", "packages", "errors"],
        rows,
    );
    let _ = writeln!(
        out,
        "  packages in flight {}",
        count(r.now.sum(m::PACKAGES_IN_FLIGHT))
    );
}

/// Network sinks (kafka, otlp): their spool and forwarding, by sink name.
fn forwarding(out: &mut String, r: &Rates) {
    if !r.now.has_prefix("logtap_forward_") && !r.now.has_prefix("logtap_spool_") {
        return;
    }
    let records = r.by(m::FORWARD_RECORDS_TOTAL, "sink");
    let bytes = r.by(m::FORWARD_BYTES_TOTAL, "sink");
    let acked = r.now.by(m::FORWARD_ACKED_RECORDS_TOTAL, "sink");
    let rejected = r.now.by(m::FORWARD_REJECTED_RECORDS_TOTAL, "sink");
    let retries = r.now.by(m::FORWARD_RETRIES_TOTAL, "sink");
    let up = r.now.by(m::FORWARD_DESTINATION_UP, "sink");
    let spool = r.now.by(m::SPOOL_BYTES, "sink");
    let oldest = r.now.by(m::SPOOL_OLDEST_UNFORWARDED_SECONDS, "sink");
    let names: BTreeSet<&String> = records
        .keys()
        .chain(up.keys())
        .chain(spool.keys())
        .chain(rejected.keys())
        .collect();
    let get = |map: &BTreeMap<String, f64>, name: &String| map.get(name).copied().unwrap_or(0.0);
    let rows = names
        .into_iter()
        .map(|name| {
            let rec = records.get(name).copied().unwrap_or_default();
            let b = bytes.get(name).copied().unwrap_or_default();
            vec![
                name.clone(),
                match up.get(name) {
                    Some(v) if *v >= 1.0 => "up".into(),
                    Some(_) => "DOWN".into(),
                    None => "-".into(),
                },
                rate(rec.rate),
                format!("{}/s", size(b.rate)),
                count(get(&acked, name)),
                count(get(&rejected, name)),
                count(get(&retries, name)),
                size(get(&spool, name)),
                format!("{:.0}s", get(&oldest, name)),
            ]
        })
        .collect();
    section(
        out,
        "FORWARDING",
        &[
            "sink",
            "dest",
            "records/s",
            "bytes/s",
            "acked",
            "rejected",
            "retries",
            "spool",
            "oldest",
        ],
        rows,
    );
}

fn capture(out: &mut String, r: &Rates) {
    if !r.now.has_prefix("logtap_capture_") {
        return;
    }
    let now = r.now;
    let hooks = now
        .by(m::CAPTURE_HOOK_MODE, "mode")
        .into_iter()
        .find(|(_, v)| *v >= 1.0)
        .map_or("-".to_string(), |(mode, _)| mode);
    let up = if !now.has(m::CAPTURE_UP) {
        "-"
    } else if now.sum(m::CAPTURE_UP) >= 1.0 {
        "up"
    } else {
        "DOWN"
    };
    let records: Counter = r.total(m::CAPTURE_RECORDS_TOTAL);
    let bytes: Counter = r.total(m::CAPTURE_BYTES_TOTAL);
    let _ = writeln!(out, "\nCAPTURE");
    let _ = writeln!(
        out,
        "  {up}  hooks {hooks}  streams {}  containers {}  records/s {}  bytes/s {}/s  records {}",
        count(now.sum(m::CAPTURE_STREAMS)),
        count(now.sum(m::CAPTURE_WATCHED_CONTAINERS)),
        rate(records.rate),
        size(bytes.rate),
        count(records.total),
    );
    let _ = writeln!(
        out,
        "  ring drops: records {}, bytes {}  lost events {}  unbound records {}",
        count(now.sum(m::CAPTURE_RING_DROPPED_RECORDS_TOTAL)),
        labelled(&now.by(m::CAPTURE_RING_DROPPED_BYTES_TOTAL, "reason"), size),
        count(now.sum(m::CAPTURE_LOST_EVENTS_TOTAL)),
        count(now.sum(m::CAPTURE_UNBOUND_RECORDS_TOTAL)),
    );
    let _ = writeln!(
        out,
        "  gaps {}  repaired {}  unrepairable {}  spilled {}  repair mismatches {}",
        count(now.sum(m::CAPTURE_GAPS_TOTAL)),
        size(now.sum(m::CAPTURE_REPAIRED_BYTES_TOTAL)),
        size(now.sum(m::CAPTURE_UNREPAIRABLE_BYTES_TOTAL)),
        size(now.sum(m::CAPTURE_SPILLED_BYTES_TOTAL)),
        count(now.sum(m::CAPTURE_REPAIR_MISMATCHES_TOTAL)),
    );
}

fn dropped(out: &mut String, r: &Rates) {
    let _ = writeln!(out, "\nDROPPED");
    let _ = writeln!(
        out,
        "  lines {}",
        labelled(&r.now.by(m::DROPPED_LINES_TOTAL, "reason"), count)
    );
    let _ = writeln!(
        out,
        "  bytes {}",
        labelled(&r.now.by(m::DROPPED_BYTES_TOTAL, "reason"), size)
    );
}

fn components(out: &mut String, r: &Rates) {
    let up = r.now.by(m::COMPONENT_UP, "component");
    let since = r.now.by(m::COMPONENT_SECONDS_SINCE_PROGRESS, "component");
    let rows = up
        .iter()
        .map(|(name, v)| {
            vec![
                name.clone(),
                if *v >= 1.0 { "up" } else { "DOWN" }.to_string(),
                since
                    .get(name)
                    .map_or("-".to_string(), |s| format!("{s:.1}s")),
            ]
        })
        .collect();
    section(
        out,
        "COMPONENTS",
        &["component", "state", "since progress"],
        rows,
    );
}

/// A titled table: the first column left-aligned, the others right-aligned; `(none)`
/// when there are no rows.
fn section(out: &mut String, title: &str, header: &[&str], rows: Vec<Vec<String>>) {
    let _ = writeln!(out, "\n{title}");
    if rows.is_empty() {
        let _ = writeln!(out, "  (none)");
        return;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::from(" ");
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(line, " {cell:<w$}");
            } else {
                let _ = write!(line, "  {cell:>w$}");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// `0`, or `a 1, b 2` with each value formatted by `f`.
fn labelled(values: &BTreeMap<String, f64>, f: fn(f64) -> String) -> String {
    let total: f64 = values.values().sum();
    if total == 0.0 {
        return "0".into();
    }
    values
        .iter()
        .filter(|(_, v)| **v != 0.0)
        .map(|(k, v)| format!("{k} {}", f(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A counter's value: whole numbers in full (what an operator compares with a count).
pub(super) fn count(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.1}")
    }
}

/// A rate per second, three significant figures or so.
pub(super) fn rate(v: f64) -> String {
    match v {
        v if v < 1_000.0 => format!("{v:.1}"),
        v if v < 1_000_000.0 => format!("{:.1}k", v / 1e3),
        v => format!("{:.1}M", v / 1e6),
    }
}

/// Bytes in binary units.
pub(super) fn size(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

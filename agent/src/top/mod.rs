//! `logtap top`: a live view of a running agent, read from its metrics endpoint (like
//! `vector top`). Two scrapes an interval apart give rates from counter deltas; the
//! view is rendered as plain text, redrawn in place with ANSI escapes on a terminal.
//!
//! Parsing ([`Scrape`]), rates ([`Rates`]) and rendering ([`render`]) are pure; only
//! [`run`] talks to the network and the terminal.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod render;

pub use render::render;

/// Arguments of `logtap top`.
#[derive(clap::Args, Debug, Clone)]
pub struct TopArgs {
    /// The agent's metrics endpoint.
    #[arg(long, default_value = "http://127.0.0.1:9464/metrics")]
    pub url: String,
    /// File holding the bearer token the endpoint requires (`metrics.bearer_token_file`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Time between two scrapes (rates are computed over it), e.g. `1s`, `500ms`.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Print one snapshot (two scrapes an interval apart) and exit; the default when
    /// stdout is not a terminal.
    #[arg(long)]
    pub once: bool,
    /// Plain text without screen control (implies `--once`).
    #[arg(long)]
    pub plain: bool,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("{text:?}: expected between 100ms and 1h"));
    }
    Ok(d)
}

/// One series of a scrape.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// The series of one scrape of `/metrics` (histogram and summary parts left out).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    /// Parses Prometheus exposition text; lines that are not a series are skipped.
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter_map(crate::selfmon::parse_series)
            .map(|(name, labels, value)| Sample {
                name: name.to_string(),
                labels: labels
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                value,
            })
            .collect();
        Scrape { samples }
    }

    /// Whether any series is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// Whether any series' name starts with `prefix`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.samples.iter().any(|s| s.name.starts_with(prefix))
    }

    /// The sum of the series named `name` (0 when there is none).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            // From +0: an empty `sum` of floats is -0, which would print as "-0".
            .fold(0.0, |a, b| a + b)
    }

    /// The series named `name` summed by the value of `label` (series without it
    /// under `""`).
    pub fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == name) {
            let key = s
                .labels
                .iter()
                .find(|(k, _)| k == label)
                .map_or("", |(_, v)| v.as_str());
            *out.entry(key.to_string()).or_insert(0.0) += s.value;
        }
        out
    }

    /// The series named `name` summed by the values of labels `a` and `b`.
    pub fn by_pair(&self, name: &str, a: &str, b: &str) -> BTreeMap<(String, String), f64> {
        let value = |s: &Sample, label: &str| {
            s.labels
                .iter()
                .find(|(k, _)| k == label)
                .map_or(String::new(), |(_, v)| v.clone())
        };
        let mut out = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == name) {
            *out.entry((value(s, a), value(s, b))).or_insert(0.0) += s.value;
        }
        out
    }
}

/// A counter between two scrapes: its value in the second and its rate per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counter {
    pub total: f64,
    pub rate: f64,
}

/// Rates of counters between two scrapes `seconds` apart.
pub struct Rates<'a> {
    pub before: &'a Scrape,
    pub now: &'a Scrape,
    pub seconds: f64,
}

impl Rates<'_> {
    /// The counter `name` summed by `label`. A series missing from the first scrape
    /// counts from 0 (counters appear at their first increment); one that went down
    /// was reset (the agent restarted), so it too counts from 0, as Prometheus' `rate`.
    pub fn by(&self, name: &str, label: &str) -> BTreeMap<String, Counter> {
        let before = self.before.by(name, label);
        self.now
            .by(name, label)
            .into_iter()
            .map(|(key, total)| {
                let rate = self.rate(before.get(&key).copied().unwrap_or(0.0), total);
                (key, Counter { total, rate })
            })
            .collect()
    }

    /// The counter `name` summed over all its series.
    pub fn total(&self, name: &str) -> Counter {
        let total = self.now.sum(name);
        Counter {
            total,
            rate: self.rate(self.before.sum(name), total),
        }
    }

    fn rate(&self, before: f64, now: f64) -> f64 {
        let increase = if now >= before { now - before } else { now };
        if self.seconds > 0.0 {
            increase / self.seconds
        } else {
            0.0
        }
    }
}

/// Fetches `/metrics`. Errors say what to do about them.
fn scrape(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Result<String, String> {
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().map_err(|e| match e {
        ureq::Error::Io(e) => {
            format!("{url}: {e} (is the agent running, with metrics.listen there?)")
        }
        e => format!("{url}: {e}"),
    })?;
    match response.status().as_u16() {
        200 => {}
        401 => {
            return Err(format!(
                "{url}: 401 Unauthorized: the agent requires a bearer token (--token-file)"
            ));
        }
        code => return Err(format!("{url}: HTTP {code}")),
    }
    response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| format!("{url}: reading the answer: {e}"))
}

/// Runs `logtap top`: one plain snapshot when `out` is not a terminal (or with
/// `--once`/`--plain`), else a view redrawn every interval until Ctrl-C.
pub fn run(args: &TopArgs, terminal: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let token = match &args.token_file {
        None => None,
        Some(path) => {
            let text =
                std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let token = text.trim_ascii();
            // The agent's own rule for the file (trimmed, one visible word), so a file
            // the agent accepts is one top accepts.
            crate::metrics::BearerToken::new(token)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Some(String::from_utf8_lossy(token).into_owned())
        }
    };
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .user_agent(concat!("logtap-top/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent();
    let get = || scrape(&agent, &args.url, token.as_deref());
    if !terminal || args.once || args.plain {
        snapshot(args, &get, out)
    } else {
        live(args, &get, out)
    }
}

fn heading(args: &TopArgs, seconds: f64) -> String {
    format!("logtap top  {}  rates over {seconds:.1}s", args.url)
}

/// Two scrapes an interval apart, one plain view; a failed scrape is the error.
fn snapshot(
    args: &TopArgs,
    get: &dyn Fn() -> Result<String, String>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let before = Scrape::parse(&get().map_err(anyhow::Error::msg)?);
    let started = Instant::now();
    std::thread::sleep(args.interval);
    let now = Scrape::parse(&get().map_err(anyhow::Error::msg)?);
    let seconds = started.elapsed().as_secs_f64();
    let rates = Rates {
        before: &before,
        now: &now,
        seconds,
    };
    write!(out, "{}", render(&heading(args, seconds), &rates))?;
    out.flush()?;
    Ok(())
}

/// The view redrawn in place every interval until SIGINT or SIGTERM; a failed scrape
/// is shown and retried (the agent may be restarting).
fn live(
    args: &TopArgs,
    get: &dyn Fn() -> Result<String, String>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let quit = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, quit.clone())?;
    }
    // The previous scrape and when it was taken; `None` after a failed one, so the
    // next rates never span an outage.
    let mut before: Option<(Scrape, Instant)> = None;
    while !quit.load(Ordering::Relaxed) {
        let screen = match get() {
            Ok(text) => {
                let (now, at) = (Scrape::parse(&text), Instant::now());
                let screen = match &before {
                    Some((scrape, then)) => {
                        let seconds = at.duration_since(*then).as_secs_f64();
                        let rates = Rates {
                            before: scrape,
                            now: &now,
                            seconds,
                        };
                        render(&heading(args, seconds), &rates)
                    }
                    None => format!("logtap top  {}  first scrape taken…\n", args.url),
                };
                before = Some((now, at));
                screen
            }
            Err(e) => {
                before = None;
                format!("logtap top: {e}\nretrying every {:?}…\n", args.interval)
            }
        };
        // Clear the screen and go home, then draw; the last view stays on the screen
        // after Ctrl-C.
        write!(out, "\x1b[H\x1b[2J{screen}")?;
        out.flush()?;
        let until = Instant::now() + args.interval;
        while Instant::now() < until && !quit.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

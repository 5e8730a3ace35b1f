//! Progress of long work on a terminal: one line on stderr, rewritten in place, for
//! work that may take seconds (a query over a large store, a benchmark run).
//!
//! Nothing is written when stderr is not a terminal (pipes, files, CI logs stay
//! clean), nor for work that ends within [`QUIET_FOR`] (a quick query shows no
//! flicker). While shown, the line is rewritten at most every [`EVERY`] and is erased
//! when the work ends, so what the command prints on stdout is never mixed with it
//! on a shared terminal.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Work shorter than this shows no progress at all.
pub const QUIET_FOR: Duration = Duration::from_secs(1);
/// The line is rewritten at most this often.
pub const EVERY: Duration = Duration::from_millis(200);

/// A progress line for one piece of work with a known number of steps.
pub struct Progress<W: Write> {
    /// `None` when progress is not shown (not a terminal).
    out: Option<W>,
    what: &'static str,
    total: u64,
    started: Instant,
    last_shown: Option<Instant>,
    /// Width of the line last written, to erase it.
    shown_width: usize,
}

impl Progress<std::io::Stderr> {
    /// Progress on stderr when it is a terminal; otherwise a no-op.
    pub fn stderr(what: &'static str, total: u64) -> Progress<std::io::Stderr> {
        let err = std::io::stderr();
        let out = err.is_terminal().then_some(err);
        Progress::new(out, what, total, Instant::now())
    }
}

impl<W: Write> Progress<W> {
    /// Progress written to `out` (`None`: not shown), for `total` steps of `what`
    /// (a plural noun: "blocks", "runs"), started at `started`.
    pub fn new(out: Option<W>, what: &'static str, total: u64, started: Instant) -> Progress<W> {
        Progress {
            out,
            what,
            total,
            started,
            last_shown: None,
            shown_width: 0,
        }
    }

    /// `done` of the steps are done at `now`; `detail` says more (e.g. "12 hits").
    /// Writes only past [`QUIET_FOR`] and then at most every [`EVERY`].
    pub fn update(&mut self, done: u64, detail: &str, now: Instant) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        if now.saturating_duration_since(self.started) < QUIET_FOR {
            return;
        }
        if self
            .last_shown
            .is_some_and(|t| now.saturating_duration_since(t) < EVERY)
        {
            return;
        }
        self.last_shown = Some(now);
        let percent = (done.min(self.total) * 100)
            .checked_div(self.total)
            .unwrap_or(100);
        let mut line = format!("{done}/{} {} ({percent}%)", self.total, self.what);
        if !detail.is_empty() {
            line.push_str(", ");
            line.push_str(detail);
        }
        let pad = self.shown_width.saturating_sub(line.len());
        // A terminal that went away is no reason to fail the work: progress is a
        // courtesy, so write errors end it quietly.
        if write!(out, "\r{line}{:pad$}", "")
            .and_then(|()| out.flush())
            .is_err()
        {
            self.out = None;
            return;
        }
        self.shown_width = line.len();
    }

    /// The work ended: erase the line if one was shown.
    pub fn finish(&mut self) {
        if let Some(out) = self.out.as_mut()
            && self.shown_width > 0
        {
            let _ = write!(out, "\r{:w$}\r", "", w = self.shown_width);
            let _ = out.flush();
        }
        self.shown_width = 0;
        self.out = None;
    }
}

impl<W: Write> Drop for Progress<W> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(p: &Progress<Vec<u8>>) -> String {
        String::from_utf8(p.out.clone().unwrap_or_default()).unwrap()
    }

    #[test]
    fn quiet_work_and_non_terminals_show_nothing() {
        let t0 = Instant::now();
        let mut quick = Progress::new(Some(Vec::new()), "blocks", 10, t0);
        quick.update(5, "", t0 + Duration::from_millis(900));
        assert_eq!(shown(&quick), "");

        let mut piped: Progress<Vec<u8>> = Progress::new(None, "blocks", 10, t0);
        piped.update(5, "", t0 + Duration::from_secs(5));
        piped.finish();
        assert!(piped.out.is_none());
    }

    #[test]
    fn the_line_is_rewritten_at_most_every_interval_and_erased_at_the_end() {
        let t0 = Instant::now();
        let mut p = Progress::new(Some(Vec::new()), "blocks", 200, t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        p.update(100, "1234 hits", at(1000));
        assert_eq!(shown(&p), "\r100/200 blocks (50%), 1234 hits");
        p.update(120, "", at(1100));
        assert_eq!(
            shown(&p).matches('\r').count(),
            1,
            "within EVERY: not rewritten"
        );
        p.update(200, "", at(1300));
        let text = shown(&p);
        // The shorter line is padded over the longer one it replaces.
        let last = text.rsplit('\r').next().unwrap();
        assert_eq!(last.trim_end(), "200/200 blocks (100%)");
        assert_eq!(last.len(), "100/200 blocks (50%), 1234 hits".len());
    }

    #[test]
    fn finish_erases_exactly_what_was_shown() {
        let t0 = Instant::now();
        let mut sink = Vec::new();
        {
            let mut p = Progress::new(Some(&mut sink), "runs", 3, t0);
            p.update(1, "", t0 + Duration::from_secs(2));
        }
        let text = String::from_utf8(sink).unwrap();
        let line = "1/3 runs (33%)";
        assert_eq!(text, format!("\r{line}\r{:w$}\r", "", w = line.len()));
    }
}

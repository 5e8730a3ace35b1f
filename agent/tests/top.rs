//! `logtap top` against a live agent reading a file: the plain snapshot names the source
//! kind, the config and the sink with their totals and a rate; on a terminal (tmux's
//! pseudo-terminal) the screen shows the view and Ctrl-C quits.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const LINES: u64 = 200;

/// An agent following `<dir>/logs/app.log` (config `app`, sink `local`, a store),
/// after it read `LINES` lines.
fn agent_with_lines(dir: &Path) -> Agent {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join("app.log");
    let config = format!(
        "sources:\n  - name: app\n    include: [\"{}/*.log\"]\n    sink: local\n\
         sinks:\n  local: {{type: store}}\n",
        logs.display()
    );
    let agent = Agent::start(&dir.join("data"), &config);
    agent.wait_ready();
    write_lines(&log, 0..LINES);
    wait_for(
        Duration::from_secs(20),
        "the agent to store the lines",
        || {
            metric(
                &agent.metrics(),
                "logtap_sink_lines_total",
                &[("sink", "store")],
            ) >= LINES as f64
        },
    );
    agent
}

fn write_lines(log: &Path, range: std::ops::Range<u64>) {
    let mut file = open_append(log);
    for i in range {
        writeln!(file, "top line seq={i}").unwrap();
    }
}

/// The words of the first line of `text` whose first word is `first`.
fn row<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|words| words.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first:?} in\n{text}"))
}

#[test]
fn a_snapshot_shows_sources_configs_and_sinks_with_totals_and_rates() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with_lines(dir.path());
    let log = dir.path().join("logs/app.log");
    let url = format!("http://127.0.0.1:{}/metrics", agent.metrics_port);

    // Lines written while top waits between its two scrapes make a rate; a slow start
    // of top could miss them, so it gets three tries.
    let mut written = LINES;
    let mut last = String::new();
    for _ in 0..3 {
        let writer = {
            let log = log.clone();
            let from = written;
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                for i in from..from + 100 {
                    write_lines(&log, i..i + 1);
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        };
        // stdout is a pipe: one plain snapshot, no screen control.
        let out = Command::new(logtap_bin())
            .args(["top", "--url", &url, "--interval", "1500ms"])
            .output()
            .unwrap();
        writer.join().unwrap();
        written += 100;
        assert!(out.status.success(), "{out:?}");
        last = String::from_utf8(out.stdout).unwrap();
        assert!(
            !last.contains('\x1b'),
            "screen control in a plain snapshot:\n{last}"
        );
        // file  <lines/s>  <bytes/s> B/s  <lines>  <bytes> B
        let file = row(&last, "file");
        let lines: u64 = file[4].parse().unwrap();
        assert!((LINES..=written).contains(&lines), "{last}");
        let store = row(&last, "store");
        let stored: u64 = store[2].parse().unwrap();
        assert!((LINES..=written).contains(&stored), "{last}");
        assert_eq!(row(&last, "app")[2], file[4], "{last}");
        assert_eq!(row(&last, "sink-local")[1], "up", "{last}");
        if file[1].parse::<f64>().unwrap() > 0.0 {
            return;
        }
    }
    panic!("no line rate in three snapshots; the last:\n{last}");
}

#[test]
fn an_unreachable_agent_is_a_clear_error() {
    let out = Command::new(logtap_bin())
        .args(["top", "--once", "--url"])
        .arg(format!("http://127.0.0.1:{}/metrics", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the agent running"), "{err}");
}

/// An agent whose `/metrics` requires a bearer token: top without `--token-file` says
/// that it needs one; with it, top shows the view.
#[test]
fn a_token_protected_endpoint_is_read_with_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let port = free_port();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\nmetrics: {{listen: \"127.0.0.1:{port}\", bearer_token_file: {}}}\n\
             sources:\n  - name: app\n    include: [\"{}/*.log\"]\n    sink: local\n\
             sinks:\n  local: {{type: blackhole}}\n",
            dir.path().join("data").display(),
            token.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let mut child = Command::new(logtap_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), "/readyz to answer 200", || {
        matches!(http_get_status(port, "/readyz"), Some((200, _)))
    });
    let url = format!("http://127.0.0.1:{port}/metrics");
    let top = |extra: &[&str]| {
        Command::new(logtap_bin())
            .args(["top", "--once", "--interval", "100ms", "--url", &url])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = top(&[]);
    let with_token = top(&["--token-file", token.to_str().unwrap()]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("401") && err.contains("--token-file"), "{err}");
    assert!(with_token.status.success(), "{with_token:?}");
    let shown = String::from_utf8_lossy(&with_token.stdout);
    assert_eq!(row(&shown, "sink-local")[1], "up", "{shown}");
}

/// tmux gives top a pseudo-terminal: the screen shows the live view, redrawn in place,
/// then the error while the agent is gone, and Ctrl-C ends it.
#[test]
fn on_a_terminal_the_view_is_redrawn_until_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent_with_lines(dir.path());
    let session = format!("logtap-top-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &session])
            .args(args)
            .output()
            .expect("tmux (apt-get install tmux)")
    };
    let command = format!(
        "{} top --url http://127.0.0.1:{}/metrics --interval 300ms",
        logtap_bin().display(),
        agent.metrics_port
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "50",
        &command,
    ]);
    let _server = TmuxServer(session.clone());
    assert!(started.status.success(), "{started:?}");
    let screen = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned()
    };
    wait_for_every(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "the view on the terminal",
        || {
            let s = screen();
            s.contains("SOURCES") && s.contains("COMPONENTS") && s.contains("sink-local")
        },
    );
    let shown = screen();
    // Redrawn in place: one view on the screen, not one after another.
    assert_eq!(shown.matches("SOURCES").count(), 1, "{shown}");
    assert_eq!(row(&shown, "file")[4], LINES.to_string(), "{shown}");
    // The agent gone, the screen says so and top keeps trying.
    assert!(agent.stop(), "the agent did not stop cleanly");
    wait_for(
        Duration::from_secs(5),
        "the scrape error on the screen",
        || {
            let s = screen();
            s.contains("is the agent running") && s.contains("retrying")
        },
    );
    tmux(&["send-keys", "-t", &session, "C-c"]);
    // The session ends with its only command.
    wait_for(Duration::from_secs(5), "top to quit on Ctrl-C", || {
        !tmux(&["has-session", "-t", &session]).status.success()
    });
}

/// Kills the test's own tmux server (socket `-L name`) when dropped, so a failed test
/// leaves no `top` running.
struct TmuxServer(String);

impl Drop for TmuxServer {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

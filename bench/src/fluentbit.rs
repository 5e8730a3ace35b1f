//! Fluent Bit as a contender: the same input file, in the same run, taking turns with
//! logtap's runs.
//!
//! The peer is Fluent Bit 5.1.1 built from source (`../shared/peers/fluent-bit`, see
//! `shared/peers/README.md`). Its `tail` input reads the whole file from the head and
//! stops the service at end of file (`Exit_On_Eof On`), with the buffer sizes of the
//! README's measurements, into its `null` output:
//! - plain lines: no parser (one `log` field per line),
//! - CRI: `multiline.parser cri` (its CRI envelope parser, which joins `P` lines),
//! - CRI into the store scenarios: the same plus its tail `DB` (file offsets in
//!   SQLite) and `storage.type filesystem` (chunks buffered on disk), the nearest it
//!   has to logtap's checkpoints and local store,
//! - JSON: a `json` parser,
//! - Java multiline: a regex multiline parser with logtap's start pattern.
//!
//! # Did it read everything?
//!
//! `Exit_On_Eof` stops the engine when the tail input reaches the end of the file; the
//! service then flushes what its inputs hold and stops once no task is pending (at
//! most `Grace`, 2 s, later). Timed runs use the `null` output; before them, one
//! verification run of the same configuration with the `counter` output (one JSON line
//! per flush with its record count) must count the records the input holds, or the
//! benchmark fails. The `counter` output is not used for the timed runs: counting costs
//! Fluent Bit about 13% more CPU.
//!
//! One exception, measured: the regex multiline parser keeps the file's last record
//! until its flush timeout, and the engine stops before that fires, so for the Java
//! input the count is one short: that record was read and parsed, and not yet emitted.
//! The check allows exactly that, and the table says so. The timeout is 4 s (Fluent
//! Bit's default): with 500 ms the last record came out in 11 runs of 12, but on a
//! loaded machine the timeout also fired in the middle of the file, between a record's
//! first line and the rest, and split records in two (two more records than the input
//! in 256 MiB).
//!
//! `File_Cache_Advise Off`: by default its `tail` drops every part of the file it read
//! from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`). Measured on the plain
//! 100 B input, that is a quarter of its CPU (0.69–0.71 CPU s against 0.52–0.53, all of
//! it system time), and it sends the next reader of the file (here `wc -l`) to the
//! disk. logtap does neither, so Fluent Bit is measured without it: at its fastest.
//!
//! Its wall time includes the start-up and the shutdown grace period, and its `tail`
//! input reads in steps of the event loop: only its CPU time (user + system, all
//! threads, from `wait4`) is compared.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{Input, Usage, wait_measured};

/// Fluent Bit is killed (and the benchmark fails) when it runs longer than this: it
/// did not see the end of the file.
const DEADLINE: Duration = Duration::from_secs(20 * 60);

/// Where the Fluent Bit binary is: `--fluent-bit`, else `$LOGTAP_FLUENT_BIT`, else the
/// project's peer next to the repository (`../shared/peers/fluent-bit`), else the
/// workplace's `/work/shared/peers/fluent-bit`. `Err` says where it looked.
pub fn binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_owned()],
        None => std::env::var_os("LOGTAP_FLUENT_BIT")
            .map(PathBuf::from)
            .into_iter()
            .chain([
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers/fluent-bit"),
                PathBuf::from("/work/shared/peers/fluent-bit"),
            ])
            .collect(),
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| format!("Fluent Bit not found (looked at {candidates:?})"))
}

/// What Fluent Bit does with an input, as the nearest equivalent of a logtap scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    pub input: Input,
    /// Tail `DB` and `storage.type filesystem`: the store scenarios' counterpart.
    pub durable: bool,
}

impl Setup {
    /// The configuration in a few words, for the results table.
    pub fn describe(self) -> String {
        let parse = match self.input {
            Input::Plain100 | Input::Plain500 => "tail",
            Input::CriTemplated | Input::CriWords => "tail, `multiline.parser cri`",
            Input::Json => "tail, `json` parser",
            Input::JavaMultiline => "tail, regex `multiline.parser`",
        };
        if self.durable {
            format!("{parse}, tail `DB`, `storage.type filesystem` → null")
        } else {
            format!("{parse} → null")
        }
    }

    /// The classic-format configuration reading `input`, with its state (tail DB,
    /// storage) in `data`, into `output`.
    fn config(self, input: &Path, data: &Path, output: &Output) -> String {
        let mut service = format!(
            "[SERVICE]\n    Flush 1\n    Grace {}\n    Log_Level warn\n    Parsers_File {}\n",
            output.grace_s(),
            data.join("parsers.conf").display()
        );
        let mut tail = format!(
            "[INPUT]\n    Name tail\n    Path {}\n    Read_from_Head On\n    Exit_On_Eof On\n    \
             Buffer_Chunk_Size 1M\n    Buffer_Max_Size 1M\n    File_Cache_Advise Off\n",
            input.display()
        );
        match self.input {
            Input::Plain100 | Input::Plain500 => {}
            Input::CriTemplated | Input::CriWords => tail.push_str("    multiline.parser cri\n"),
            Input::Json => tail.push_str("    Parser json\n"),
            Input::JavaMultiline => tail.push_str("    multiline.parser bench_start\n"),
        }
        if self.durable {
            service.push_str(&format!(
                "    storage.path {}\n",
                data.join("storage").display()
            ));
            tail.push_str(&format!(
                "    DB {}\n    storage.type filesystem\n",
                data.join("tail.db").display()
            ));
        }
        format!("{service}{tail}{}", output.section())
    }
}

/// Where Fluent Bit sends the records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Discarded: the timed runs of the file scenarios.
    Null,
    /// Counted (one JSON line per flush): the verification runs.
    Counter,
    /// Its `kafka` output (librdkafka), as the network bench configures logtap's: lz4,
    /// `acks: all`, idempotent producer.
    Kafka { brokers: String, topic: String },
    /// Its `opentelemetry` output (OTLP/HTTP, protobuf) to `127.0.0.1:port/v1/logs`,
    /// as the network bench configures logtap's `otlp` sink: gzip or no compression.
    /// The record's `log` (the CRI line's message) is the body and its other fields
    /// (`stream`, `_p`) are attributes, the nearest to logtap's records.
    Otlp { port: u16, gzip: bool },
}

impl Output {
    fn section(&self) -> String {
        match self {
            Output::Null => "[OUTPUT]\n    Name null\n    Match *\n".into(),
            Output::Counter => "[OUTPUT]\n    Name counter\n    Match *\n".into(),
            Output::Kafka { brokers, topic } => format!(
                "[OUTPUT]\n    Name kafka\n    Match *\n    Brokers {brokers}\n    Topics {topic}\n    \
                 rdkafka.compression.codec lz4\n    rdkafka.request.required.acks -1\n    \
                 rdkafka.enable.idempotence true\n"
            ),
            Output::Otlp { port, gzip } => format!(
                "[OUTPUT]\n    Name opentelemetry\n    Match *\n    Host 127.0.0.1\n    Port {port}\n    \
                 Logs_uri /v1/logs\n    Logs_body_key $log\n    Logs_body_key_attributes true\n{}",
                if *gzip { "    Compress gzip\n" } else { "" }
            ),
        }
    }

    /// The shutdown grace period: the engine stops once no task is pending, so this
    /// is only an upper bound. The network outputs get long enough to hand over what
    /// they hold (every record is counted at the destination afterwards).
    fn grace_s(&self) -> u32 {
        match self {
            Output::Null | Output::Counter => 2,
            Output::Kafka { .. } | Output::Otlp { .. } => 60,
        }
    }
}

/// The parsers file: logtap's JSON parser and multiline start pattern
/// (`^\d{4}-\d{2}-\d{2} `), in Fluent Bit's terms. A continuation line is any line
/// that is not a start line; the flush timeout emits the file's last record.
const PARSERS: &str = r#"[PARSER]
    Name   json
    Format json

[MULTILINE_PARSER]
    name          bench_start
    type          regex
    flush_timeout 4000
    rule          "start_state"  "/^\d{4}-\d{2}-\d{2} /"      "cont"
    rule          "cont"         "/^(?!\d{4}-\d{2}-\d{2} )/"  "cont"
"#;

/// A fresh state directory below `dir`, with the parsers file and a configuration for
/// `output`; returns the directory and the configuration's path.
fn prepare(
    setup: Setup,
    dir: &Path,
    input: &Path,
    output: &Output,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let data = dir.join("fluent-bit-data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("parsers.conf"), PARSERS)?;
    let config = data.join("fluent-bit.conf");
    std::fs::write(&config, setup.config(input, &data, output))?;
    Ok((data, config))
}

/// Runs Fluent Bit over `input` into `output`, its standard output into `stdout_to`;
/// returns its usage. Fails with the end of its log unless it exits 0 in time.
fn run(
    bin: &Path,
    setup: Setup,
    dir: &Path,
    input: &Path,
    output: &Output,
    stdout_to: Stdio,
) -> anyhow::Result<(PathBuf, Usage)> {
    let (data, config) = prepare(setup, dir, input, output)?;
    let log_path = data.join("fluent-bit.log");
    let log = std::fs::File::create(&log_path)?;
    let start = Instant::now();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(stdout_to)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    match wait_measured(
        child.id() as libc::pid_t,
        start,
        Some(DEADLINE),
        "fluent-bit",
    ) {
        Ok(usage) => Ok((data, usage)),
        Err(e) => {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{e}; the end of its log:\n{}", tail.join("\n"))
        }
    }
}

/// One timed run into `output` (the file scenarios: [`Output::Null`]).
pub fn timed(
    bin: &Path,
    setup: Setup,
    dir: &Path,
    input: &Path,
    output: &Output,
) -> anyhow::Result<Usage> {
    let (data, usage) = run(bin, setup, dir, input, output, Stdio::null())?;
    let _ = std::fs::remove_dir_all(&data);
    Ok(usage)
}

/// What a verification run counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    /// Records in the input.
    pub expected: u64,
    /// Records Fluent Bit emitted.
    pub emitted: u64,
}

impl Checked {
    /// For the results table.
    pub fn describe(self) -> String {
        if self.emitted == self.expected {
            format!("{} (all)", self.emitted)
        } else {
            format!(
                "{} of {} (the last one still in the multiline buffer at exit)",
                self.emitted, self.expected
            )
        }
    }
}

/// One run into the `counter` output: the records Fluent Bit emitted. An error
/// unless that is `expected` (or, for the Java multiline input only, one less: see the
/// module's documentation).
pub fn verify(
    bin: &Path,
    setup: Setup,
    dir: &Path,
    input: &Path,
    expected: u64,
) -> anyhow::Result<Checked> {
    let counts = dir.join("fluent-bit-counter.out");
    let out = std::fs::File::create(&counts)?;
    let (data, _) = run(bin, setup, dir, input, &Output::Counter, out.into())?;
    let _ = std::fs::remove_dir_all(&data);
    let text = std::fs::read_to_string(&counts)?;
    let _ = std::fs::remove_file(&counts);
    let emitted = counted_records(&text)?;
    let pending = u64::from(setup.input == Input::JavaMultiline);
    if emitted > expected {
        bail!(
            "fluent-bit emitted MORE records than {} holds: {emitted} counted, {expected} in the input ({setup:?}; a multiline flush timeout split records?)",
            input.display()
        );
    }
    if emitted + pending < expected {
        bail!(
            "fluent-bit did NOT emit every record of {}: {emitted} counted, {expected} in the input ({setup:?})",
            input.display()
        );
    }
    Ok(Checked { expected, emitted })
}

/// The sum of the `counter` output's `log_records` over its lines (one per flush,
/// `{"ts":…,"serialized_events":N,"log_records":N,"total":N}`).
fn counted_records(text: &str) -> anyhow::Result<u64> {
    const KEY: &str = "\"log_records\":";
    let mut total = 0u64;
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let at = line
            .find(KEY)
            .with_context(|| format!("unexpected counter output line {line:?}"))?;
        let digits: String = line[at + KEY.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        total += digits
            .parse::<u64>()
            .with_context(|| format!("no record count in counter output line {line:?}"))?;
        lines += 1;
    }
    if lines == 0 {
        bail!("the counter output printed nothing");
    }
    Ok(total)
}

/// The records of `input` (of kind `kind`) as both agents should emit them: one per
/// line, except for the Java input, one per line that starts with a date (the
/// multiline start pattern). The generated CRI inputs have only full (`F`) lines.
pub fn expected_records(kind: Input, input: &Path) -> anyhow::Result<u64> {
    let mut f = std::fs::File::open(input)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut carry = Vec::new();
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            break;
        }
        if kind != Input::JavaMultiline {
            n += memchr::memchr_iter(b'\n', &buf[..got]).count() as u64;
            continue;
        }
        carry.extend_from_slice(&buf[..got]);
        let complete = memchr::memrchr(b'\n', &carry).map_or(0, |i| i + 1);
        n += carry[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| starts_with_date(l))
            .count() as u64;
        carry.drain(..complete);
    }
    if kind == Input::JavaMultiline && starts_with_date(&carry) {
        n += 1;
    }
    Ok(n)
}

/// `^\d{4}-\d{2}-\d{2} `.
fn starts_with_date(line: &[u8]) -> bool {
    line.len() >= 11
        && line[..11].iter().enumerate().all(|(i, &b)| match i {
            4 | 7 => b == b'-',
            10 => b == b' ',
            _ => b.is_ascii_digit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_output_is_summed_and_garbage_is_an_error() {
        let out = "{\"ts\":1.5,\"serialized_events\":3,\"log_records\":3,\"total\":3}\n\
                   {\"ts\":2.5,\"serialized_events\":40,\"log_records\":40,\"total\":40}\n";
        assert_eq!(counted_records(out).unwrap(), 43);
        assert!(counted_records("").is_err());
        assert!(counted_records("[engine] something else\n").is_err());
        assert!(counted_records("{\"log_records\":x}\n").is_err());
    }

    /// A missing binary is an `Err` that says where it looked (the harness prints it
    /// and writes it in place of the table), not a panic.
    #[test]
    fn a_missing_binary_says_where_it_looked() {
        let err = binary(Some(Path::new("/nonexistent/fluent-bit"))).unwrap_err();
        assert!(err.contains("/nonexistent/fluent-bit"), "{err}");
    }

    #[test]
    fn java_records_are_the_lines_starting_with_a_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("java.log");
        std::fs::write(
            &path,
            "2026-11-21 10:00:00.000 ERROR one\njava.lang.X: y\n\tat a.b(C.java:1)\n\
             2026-11-21 10:00:00.001 INFO two\n2026-11-21x\n2026-11-21 10:00:00.002 last",
        )
        .unwrap();
        assert_eq!(expected_records(Input::JavaMultiline, &path).unwrap(), 3);
        assert_eq!(expected_records(Input::Json, &path).unwrap(), 5);
    }

    /// The real Fluent Bit, on a small generated file of every input: each
    /// configuration the benchmark times must emit the input's records (this is what
    /// makes its CPU seconds comparable; the Java input may be its last record short,
    /// see the module's documentation).
    #[test]
    fn fluent_bit_emits_every_record_of_every_input() {
        let bin = binary(None).unwrap_or_else(|e| {
            panic!("{e}: see shared/peers/README.md, or set LOGTAP_FLUENT_BIT")
        });
        let dir = tempfile::tempdir().unwrap();
        for (input, durable) in [
            (Input::Plain100, false),
            (Input::CriTemplated, false),
            (Input::CriWords, true),
            (Input::Json, false),
            (Input::JavaMultiline, false),
        ] {
            let path = dir.path().join(format!("{input:?}.log"));
            crate::generate(input, &path, 256 << 10).unwrap();
            let expected = expected_records(input, &path).unwrap();
            assert!(expected > 500, "{input:?}: only {expected} records");
            let setup = Setup { input, durable };
            let checked = verify(&bin, setup, dir.path(), &path, expected)
                .unwrap_or_else(|e| panic!("{setup:?}: {e:#}"));
            assert_eq!(checked.expected, expected);
        }
    }
}

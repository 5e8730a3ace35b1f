//! Shell completions and man pages, generated from the CLI definition: the real binary's
//! output, loaded into a real bash and read as a man page would be.

mod common;

use std::process::{Command, Output};

use common::logtap_bin;

fn logtap(args: &[&str]) -> Output {
    Command::new(logtap_bin())
        .args(args)
        .output()
        .expect("run logtap")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The subcommands as `logtap --help` lists them.
fn subcommands() -> Vec<String> {
    let help = stdout(&logtap(&["--help"]));
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect()
}

/// What bash completes for the words `line` with the script loaded, as it would on
/// <TAB> after them.
fn bash_complete(script: &std::path::Path, line: &str) -> Vec<String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
             _logtap logtap \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_their_options_from_the_generated_script() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("logtap.bash");
    std::fs::write(&script, stdout(&logtap(&["completions", "bash"]))).unwrap();

    let all = bash_complete(&script, "logtap ''");
    for sub in subcommands() {
        assert!(all.contains(&sub), "{sub} not offered: {all:?}");
    }
    assert_eq!(bash_complete(&script, "logtap qu"), ["query"]);
    let run = bash_complete(&script, "logtap run --con");
    assert_eq!(run, ["--config"]);
    let shells = bash_complete(&script, "logtap completions ''");
    assert!(
        shells.contains(&"zsh".to_owned()) && shells.contains(&"fish".to_owned()),
        "{shells:?}"
    );
    // Every other shell gets a script too.
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let text = stdout(&logtap(&["completions", shell]));
        assert!(text.contains("check-config"), "{shell}: {text}");
    }
}

#[test]
fn an_unknown_shell_is_refused_with_the_ones_there_are() {
    let out = logtap(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid value 'tcsh'") && err.contains("bash, elvish, fish"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn the_man_page_names_every_subcommand_and_man_dir_writes_one_page_each() {
    let page = stdout(&logtap(&["man"]));
    assert!(page.contains(".TH logtap 1"), "{page}");
    assert!(page.contains("logtap \\- Kubernetes node log collector"));
    let subs = subcommands();
    assert!(subs.len() >= 7, "{subs:?}");
    for sub in &subs {
        let reference = format!("logtap\\-{}(1)", sub.replace('-', "\\-"));
        assert!(
            page.contains(&reference),
            "{reference} missing from logtap(1)"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let man_dir = dir.path().join("man1");
    stdout(&logtap(&["man", "--dir", man_dir.to_str().unwrap()]));
    for sub in &subs {
        let file = man_dir.join(format!("logtap-{sub}.1"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            text.contains(&format!(".TH logtap-{sub} 1")),
            "{}",
            file.display()
        );
    }
    let run = std::fs::read_to_string(man_dir.join("logtap-run.1")).unwrap();
    assert!(run.contains("\\-\\-config"), "{run}");
    assert!(man_dir.join("logtap.1").is_file());
}

#[test]
fn man_into_a_directory_that_cannot_be_made_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let target = file.join("man1");
    let out = logtap(&["man", "--dir", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(target.to_str().unwrap()), "{err}");
}

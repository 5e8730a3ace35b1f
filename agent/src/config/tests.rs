use super::*;

#[test]
fn embedded_default_is_valid() {
    let c = Config::embedded_default();
    assert_eq!(c.sources.len(), 2);
    assert_eq!(c.sources[0].format, Format::Cri);
    assert_eq!(c.sources[0].max_line_bytes, 1 << 20);
    assert!(matches!(c.sinks["local"], SinkConfig::Store { .. }));
}

#[test]
fn typo_names_the_field_and_the_line() {
    let yaml = "sources:\n  - name: a\n    include: [\"/x/*.log\"]\n    fromat: cri\nsinks:\n  local: {type: stdout}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("unknown field `fromat`"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("sources[0]"), "{err}");
}

#[test]
fn invalid_regex_names_the_field() {
    let yaml = "sources:\n  - name: a\n    include: [\"/x/*.log\"]\n    parser: {type: regex, pattern: \"(?P<a>[\"}\nsinks:\n  local: {type: stdout}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("sources[0].parser.pattern"), "{err}");
}

#[test]
fn unknown_sink_reference_is_rejected() {
    let yaml = "sources:\n  - name: a\n    include: [\"/x/*.log\"]\n    sink: nowhere\nsinks:\n  local: {type: stdout}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("sources[0].sink"), "{err}");
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn bad_duration_and_size_name_the_field() {
    let yaml = "checkpoint: {interval: soon}\nsinks:\n  local: {type: blackhole}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("checkpoint.interval"), "{err}");
    let yaml = "sources:\n  - name: a\n    include: [\"/x/*.log\"]\n    max_line_size: 3 parsecs\nsinks:\n  local: {type: blackhole}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("sources[0].max_line_size"), "{err}");
}

#[test]
fn relative_include_is_rejected() {
    let yaml =
        "sources:\n  - name: a\n    include: [\"x/*.log\"]\nsinks:\n  local: {type: blackhole}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("sources[0].include[0]"), "{err}");
}

#[test]
fn sizes() {
    assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
    assert_eq!(parse_size("512").unwrap(), 512);
    assert_eq!(parse_size("10GB").unwrap(), 10_000_000_000);
    assert!(parse_size("ten").is_err());
    assert!(parse_size("99999999999TiB").is_err());
}

#[test]
fn shipped_example_configs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 2, "examples found in {}", dir.display());
}

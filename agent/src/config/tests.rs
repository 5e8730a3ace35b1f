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
            let text = std::fs::read_to_string(&path).unwrap();
            if text.lines().any(|l| l.starts_with("apiVersion:")) {
                // A Kubernetes manifest (the sidecar example): tests/deploy_manifests.rs
                // checks it and the config it carries.
                continue;
            }
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 2, "examples found in {}", dir.display());
}

#[test]
fn zero_intervals_are_rejected() {
    // 0s would spin: the checkpoint thread fsyncing the table in a loop, the source
    // rescanning every directory on every turn.
    for (yaml, field) in [
        ("checkpoint: {interval: 0s}\n", "checkpoint.interval"),
        ("files: {rescan_interval: 0s}\n", "files.rescan_interval"),
    ] {
        let yaml = format!("{yaml}sinks:\n  local: {{type: blackhole}}\n");
        let err = Config::parse(&yaml, "t.yaml").unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
        assert!(err.contains("greater than zero"), "{err}");
    }
    let yaml = "checkpoint: {interval: 10ms}\nfiles: {rescan_interval: 1s, rotate_wait: 0s}\nbatch: {timeout: 0s}\nsinks:\n  local: {type: blackhole}\n";
    Config::parse(yaml, "t.yaml").unwrap();
}

#[test]
fn two_sinks_writing_the_same_place_are_rejected() {
    // Two stores on one directory: the second cannot take the writer lock and the
    // agent would only fail at start; two file sinks would interleave their lines.
    let yaml = "data_dir: /d\nsinks:\n  a: {type: store}\n  b: {type: store, path: /d/store/}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("sinks.b.path"), "{err}");
    let yaml = "sinks:\n  a: {type: file, path: /out/x.ndjson}\n  b: {type: file, path: /out/./x.ndjson}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("sinks.b.path"), "{err}");
    let yaml = "sinks:\n  a: {type: store, path: /s1}\n  b: {type: store, path: /s2}\n  c: {type: file, path: /s1.ndjson}\n";
    Config::parse(yaml, "t.yaml").unwrap();
}

fn kubernetes(yaml: &str, env: &[(&str, &str)]) -> Result<KubernetesConfig, ConfigError> {
    let yaml = format!("sinks:\n  local: {{type: blackhole}}\n{yaml}");
    let raw = Config::parse_raw(&yaml, "t.yaml")?;
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    Config::from_raw_in(raw, "t.yaml", &lookup).map(|c| c.kubernetes)
}

#[test]
fn kubernetes_defaults_follow_the_environment() {
    let outside = kubernetes("", &[]).unwrap();
    assert!(!outside.enabled);
    assert_eq!(outside.metadata_wait, Duration::from_secs(2));
    assert!(outside.annotations.is_empty());
    assert!(!outside.node_name.is_empty(), "the hostname");

    let inside = kubernetes(
        "",
        &[
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("NODE_NAME", "node-a"),
        ],
    )
    .unwrap();
    assert!(inside.enabled);
    assert_eq!(inside.node_name, "node-a");
    assert_eq!(inside.api_url, None);

    let explicit = kubernetes(
        "kubernetes:\n  api_url: http://127.0.0.1:6443\n  node_name: n1\n  metadata_wait: 500ms\n  annotations: [team]\n",
        &[("NODE_NAME", "ignored")],
    )
    .unwrap();
    assert_eq!(
        explicit,
        KubernetesConfig {
            enabled: true,
            api_url: Some("http://127.0.0.1:6443".into()),
            node_name: "n1".into(),
            metadata_wait: Duration::from_millis(500),
            annotations: vec!["team".into()],
        }
    );
    let off = kubernetes(
        "kubernetes: {enabled: false}\n",
        &[("KUBERNETES_SERVICE_HOST", "10.0.0.1")],
    )
    .unwrap();
    assert!(!off.enabled);
}

#[test]
fn kubernetes_errors_name_the_field() {
    let err = kubernetes("kubernetes:\n  enabeld: true\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `enabeld`"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    for (yaml, field) in [
        (
            "kubernetes: {api_url: 'localhost:6443'}\n",
            "kubernetes.api_url",
        ),
        (
            "kubernetes: {metadata_wait: soon}\n",
            "kubernetes.metadata_wait",
        ),
        (
            "kubernetes: {metadata_wait: 10m}\n",
            "kubernetes.metadata_wait",
        ),
        ("kubernetes: {node_name: ''}\n", "kubernetes.node_name"),
        (
            "kubernetes: {annotations: ['']}\n",
            "kubernetes.annotations[0]",
        ),
    ] {
        let err = kubernetes(yaml, &[]).unwrap_err().to_string();
        assert!(err.contains(field), "{yaml}: {err}");
    }
}

#[test]
fn cri_section_defaults_and_overrides() {
    let c = Config::embedded_default();
    assert_eq!(
        c.cri,
        CriConfig {
            enabled: true,
            endpoint: "unix:///run/containerd/containerd.sock".into(),
            timeout: Duration::from_secs(2),
            rescan_interval: Duration::from_secs(30),
        }
    );
    let yaml = "cri:\n  enabled: false\n  endpoint: /run/crio/crio.sock\n  timeout: 500ms\n  rescan_interval: 1m\nsinks:\n  local: {type: blackhole}\n";
    let c = Config::parse(yaml, "t.yaml").unwrap();
    assert!(!c.cri.enabled);
    assert_eq!(c.cri.endpoint, "/run/crio/crio.sock");
    assert_eq!(c.cri.timeout, Duration::from_millis(500));
    assert_eq!(c.cri.rescan_interval, Duration::from_secs(60));
}

#[test]
fn cri_section_errors_name_the_field() {
    let yaml = "sinks:\n  local: {type: blackhole}\ncri:\n  endpont: unix:///x.sock\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("unknown field `endpont`"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    for (yaml, field) in [
        ("cri: {endpoint: \"tcp://10.0.0.1:1234\"}\n", "cri.endpoint"),
        ("cri: {timeout: 0s}\n", "cri.timeout"),
        ("cri: {rescan_interval: often}\n", "cri.rescan_interval"),
    ] {
        let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
        assert!(err.contains(field), "{yaml}: {err}");
    }
}

#[test]
fn selector_source_defaults_to_cri_logs_of_the_pod_log_dir() {
    let yaml = "collections: {pod_logs: /host/pods/}\nsources:\n  - name: json\n    selector: {include_env: {LOG_FORMAT: json}}\nsinks:\n  local: {type: blackhole}\n";
    let c = Config::parse(yaml, "t.yaml").unwrap();
    let s = &c.sources[0];
    assert_eq!(s.include, vec!["/host/pods/*/*/*.log".to_string()]);
    assert_eq!(s.format, Format::Cri);
    assert_eq!(s.selector.as_ref().unwrap().include_env.len(), 1);
    assert!(
        !c.collections.enabled,
        "no kubernetes section: no LogCollection watch"
    );
}

#[test]
fn selector_errors_name_the_field_and_unknown_fields_the_line() {
    let yaml = "sources:\n  - name: a\n    selector: {pod_name: '(unclosed'}\nsinks:\n  local: {type: blackhole}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("sources[0].selector.pod_name"), "{err}");
    let yaml = "sources:\n  - name: a\n    selector:\n      include_envs: {A: b}\nsinks:\n  local: {type: blackhole}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("unknown field `include_envs`"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    let yaml = "sources:\n  - name: a\n    format: raw\n    selector: {}\nsinks:\n  local: {type: blackhole}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("sources[0].format"), "{err}");
    let yaml = "sources:\n  - name: a\nsinks:\n  local: {type: blackhole}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("sources[0].include"), "{err}");
}

#[test]
fn container_paths_read_files_inside_the_selected_containers() {
    let yaml = "sources:\n  - name: app\n    selector: {pod_name: '^cart'}\n    container_paths: [/var/log/app/*.log]\nsinks:\n  local: {type: blackhole}\n";
    let c = Config::parse(yaml, "t.yaml").unwrap();
    let s = &c.sources[0];
    assert_eq!(s.container_paths, vec!["/var/log/app/*.log".to_string()]);
    assert!(s.include.is_empty(), "no node files");
    assert_eq!(s.format, Format::Raw, "an application's own file is raw");
    assert!(s.selector.is_some());

    let bad = |yaml: &str| Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    let e = bad(
        "sources:\n  - name: a\n    container_paths: [var/log/*.log]\nsinks:\n  local: {type: blackhole}\n",
    );
    assert!(e.contains("sources[0].container_paths[0]"), "{e}");
    let e = bad(
        "sources:\n  - name: a\n    container_paths: [/var/log/../../etc/*]\nsinks:\n  local: {type: blackhole}\n",
    );
    assert!(e.contains("`..`"), "{e}");
    let e = bad(
        "sources:\n  - name: a\n    include: [/var/log/*.log]\n    container_paths: [/x/*.log]\nsinks:\n  local: {type: blackhole}\n",
    );
    assert!(e.contains("sources[0].include"), "{e}");
}

#[test]
fn network_sinks_parse_with_their_defaults() {
    let yaml = "data_dir: /d\nsinks:\n  hub:\n    type: kafka\n    brokers: [\"127.0.0.1:9092\"]\n    topic: \"logs-{k8s.namespace}\"\n  otel:\n    type: otlp\n    endpoint: http://collector:4318/\n    headers: {authorization: Bearer x}\n    spool: {max_size: 10MiB, when_full: drop_oldest, compression: none}\n    dead_letter: /d/otel-rejected.ndjson\n";
    let c = Config::parse(yaml, "t.yaml").unwrap();
    let SinkConfig::Kafka(k) = &c.sinks["hub"] else {
        panic!("{:?}", c.sinks["hub"]);
    };
    use network::{KafkaCompression, OtlpCompression, TemplatePart, WhenFull};
    assert_eq!(
        k.topic,
        vec![
            TemplatePart::Literal("logs-".into()),
            TemplatePart::Field("k8s.namespace".into())
        ]
    );
    assert_eq!(k.compression, KafkaCompression::Lz4);
    assert_eq!(k.acks, "all");
    assert!(k.idempotent);
    assert_eq!(k.message_per, network::MessagePer::Record);
    assert_eq!(k.key, None);
    assert_eq!(k.forward.spool.path, PathBuf::from("/d/spool/hub"));
    assert_eq!(k.forward.spool.max_bytes, 1 << 30);
    assert_eq!(k.forward.spool.when_full, WhenFull::Block);
    assert_eq!(k.forward.spool.compression, network::BlockCompression::Lz4);
    assert_eq!(k.forward.dead_letter, None);
    let SinkConfig::Otlp(o) = &c.sinks["otel"] else {
        panic!("{:?}", c.sinks["otel"]);
    };
    assert_eq!(o.endpoint, "http://collector:4318");
    assert_eq!(o.compression, OtlpCompression::Gzip);
    assert_eq!(o.headers["authorization"], "Bearer x");
    assert_eq!(o.forward.spool.max_bytes, 10 << 20);
    assert_eq!(o.forward.spool.when_full, WhenFull::DropOldest);
    assert_eq!(o.forward.spool.compression, network::BlockCompression::None);
    assert_eq!(o.forward.spool.path, PathBuf::from("/d/spool/otel"));
}

#[test]
fn network_sink_errors_name_the_field() {
    let cases = [
        (
            "type: kafka\n    brokers: []\n    topic: t",
            "sinks.s.brokers",
        ),
        (
            "type: kafka\n    brokers: [\"nohost\"]\n    topic: t",
            "sinks.s.brokers[0]",
        ),
        (
            "type: kafka\n    brokers: [\"h:1\"]\n    topic: \"a-{b\"",
            "sinks.s.topic",
        ),
        (
            "type: kafka\n    brokers: [\"h:1\"]\n    topic: t\n    compression: brotli",
            "sinks.s.compression",
        ),
        (
            "type: kafka\n    brokers: [\"h:1\"]\n    topic: t\n    acks: \"0\"",
            "sinks.s.acks",
        ),
        (
            "type: kafka\n    brokers: [\"h:1\"]\n    topic: t\n    spool: {when_full: panic}",
            "sinks.s.spool.when_full",
        ),
        (
            "type: kafka\n    brokers: [\"h:1\"]\n    topic: t\n    spool: {compression: zstd}",
            "sinks.s.spool.compression",
        ),
        (
            "type: kafka\n    brokers: [\"h:1\"]\n    topic: t\n    spool: {max_size: 1KiB}",
            "sinks.s.spool.max_size",
        ),
        ("type: kafka\n    brokers: [\"h:1\"]\n    topci: t", "topci"),
        (
            "type: otlp\n    endpoint: collector:4318",
            "sinks.s.endpoint",
        ),
        (
            "type: otlp\n    endpoint: http://c:4318\n    compression: zstd",
            "sinks.s.compression",
        ),
        (
            "type: otlp\n    endpoint: http://c:4318\n    spool: {pth: /x}",
            "pth",
        ),
        ("type: store\n    compression: zstd", "sinks.s.compression"),
    ];
    for (sink, field) in cases {
        let yaml = format!("sinks:\n  s:\n    {sink}\n");
        let err = Config::parse(&yaml, "t.yaml").unwrap_err().to_string();
        assert!(err.contains(field), "{sink}: {err}");
    }
}

/// A store compresses with lz4 unless told `compression: none`.
#[test]
fn store_compression_defaults_to_lz4() {
    let yaml = "data_dir: /d\nsinks:\n  a: {type: store}\n  b: {type: store, path: /b, compression: none}\n";
    let c = Config::parse(yaml, "t.yaml").unwrap();
    let compression = |name: &str| match &c.sinks[name] {
        SinkConfig::Store { compression, .. } => *compression,
        other => panic!("{other:?}"),
    };
    assert_eq!(compression("a"), network::BlockCompression::Lz4);
    assert_eq!(compression("b"), network::BlockCompression::None);
}

#[test]
fn two_spools_on_one_directory_are_rejected() {
    let yaml = "data_dir: /d\nsinks:\n  a: {type: otlp, endpoint: \"http://c:1\"}\n  b: {type: otlp, endpoint: \"http://c:2\", spool: {path: /d/spool/a}}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("sinks.b.spool.path"), "{err}");
}

#[test]
fn topic_templates() {
    assert!(parse_template("").is_err());
    assert!(parse_template("a}").is_err());
    assert!(parse_template("{}").is_err());
    assert_eq!(
        parse_template("{k8s.namespace}.{k8s.pod.label.app}").unwrap(),
        vec![
            network::TemplatePart::Field("k8s.namespace".into()),
            network::TemplatePart::Literal(".".into()),
            network::TemplatePart::Field("k8s.pod.label.app".into()),
        ]
    );
}

#[test]
fn metrics_bearer_token_file_is_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "t0ken\n").unwrap();
    let yaml = |path: &std::path::Path| {
        format!(
            "metrics:\n  listen: 0.0.0.0:9464\n  bearer_token_file: {}\nsinks:\n  local: {{type: blackhole}}\n",
            path.display()
        )
    };
    let c = Config::parse(&yaml(&file), "t.yaml").unwrap();
    assert!(c.metrics_bearer_token.is_some());
    // The token never shows in the config's Debug (logs, check-config).
    assert!(!format!("{c:?}").contains("t0ken"));
    assert!(
        Config::embedded_default().metrics_bearer_token.is_none(),
        "off by default"
    );

    // A missing file, or one that holds no usable token, names the field.
    for (content, want) in [(None, "No such file"), (Some("\n"), "empty")] {
        let path = dir.path().join("other");
        let _ = std::fs::remove_file(&path);
        if let Some(content) = content {
            std::fs::write(&path, content).unwrap();
        }
        let err = Config::parse(&yaml(&path), "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics.bearer_token_file"), "{err}");
        assert!(err.contains(want), "{err}");
    }

    // A typo is an unknown field, named with its line.
    let yaml = "metrics:\n  listen: 127.0.0.1:9464\n  bearer_token_fil: /t\nsinks:\n  local: {type: blackhole}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("unknown field `bearer_token_fil`"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn follow_symlinks_needs_allowed_roots_and_host_files() {
    let source = |extra: &str| {
        format!("sources:\n  - name: a\n{extra}sinks:\n  local: {{type: blackhole}}\n")
    };
    let ok = Config::parse(
        &source("    include: [/var/log/a/*.log]\n    follow_symlinks: true\n    allowed_roots: [/srv/logs]\n"),
        "t.yaml",
    )
    .unwrap();
    assert_eq!(
        ok.sources[0].allowed_roots,
        vec![PathBuf::from("/srv/logs")]
    );
    let plain = Config::parse(&source("    include: [/var/log/a/*.log]\n"), "t.yaml").unwrap();
    assert!(
        plain.sources[0].allowed_roots.is_empty(),
        "links stay inside by default"
    );

    let bad = |extra: &str| {
        Config::parse(&source(extra), "t.yaml")
            .unwrap_err()
            .to_string()
    };
    for (extra, field, says) in [
        (
            "    include: [/a/*.log]\n    follow_symlinks: true\n",
            "sources[0].allowed_roots",
            "directories",
        ),
        (
            "    include: [/a/*.log]\n    allowed_roots: [/srv]\n",
            "sources[0].allowed_roots",
            "follow_symlinks: true",
        ),
        (
            "    include: [/a/*.log]\n    follow_symlinks: true\n    allowed_roots: [srv]\n",
            "sources[0].allowed_roots[0]",
            "absolute",
        ),
        (
            "    include: [/a/*.log]\n    follow_symlinks: true\n    allowed_roots: [/srv/../etc]\n",
            "sources[0].allowed_roots[0]",
            "`..`",
        ),
        (
            "    container_paths: [/a/*.log]\n    follow_symlinks: true\n    allowed_roots: [/srv]\n",
            "sources[0].follow_symlinks",
            "inside",
        ),
    ] {
        let e = bad(extra);
        assert!(e.contains(field) && e.contains(says), "{extra}: {e}");
    }
}

/// A duration `Instant + Duration` cannot represent (about 292 billion years) made
/// the checkpointer panic at run time; every duration is bounded at validation, with
/// an error naming the field.
#[test]
fn absurd_durations_are_rejected_by_validation() {
    let far = "500000000000y";
    assert!(
        std::time::Instant::now()
            .checked_add(humantime::parse_duration(far).unwrap())
            .is_none(),
        "{far} overflows an Instant"
    );
    let base = "sinks:\n  local: {type: blackhole}\n";
    for (yaml, field) in [
        (format!("checkpoint: {{interval: {far}}}\n{base}"), "checkpoint.interval"),
        (format!("files: {{rescan_interval: {far}}}\n{base}"), "files.rescan_interval"),
        (format!("files: {{rotate_wait: {far}}}\n{base}"), "files.rotate_wait"),
        (format!("batch: {{timeout: {far}}}\n{base}"), "batch.timeout"),
        (format!("health: {{stall_timeout: {far}}}\n{base}"), "health.stall_timeout"),
        (
            format!("sinks:\n  local: {{type: store, max_age: {far}}}\n"),
            "sinks.local.max_age",
        ),
        // librdkafka takes at most i32::MAX milliseconds.
        (
            "sinks:\n  hub: {type: kafka, brokers: [\"127.0.0.1:9092\"], topic: t, message_timeout: 30d}\n"
                .to_string(),
            "sinks.hub.message_timeout",
        ),
    ] {
        let e = Config::parse(&yaml, "t.yaml").unwrap_err().to_string();
        assert!(e.contains(field) && e.contains("at most"), "{yaml}: {e}");
    }
    // A long but sane duration stays valid; the bound itself too.
    Config::parse(&format!("checkpoint: {{interval: 30d}}\n{base}"), "t.yaml").unwrap();
    Config::parse(&format!("files: {{rotate_wait: 100y}}\n{base}"), "t.yaml").unwrap();
}

#[test]
fn metrics_tls_files_are_loaded_at_validation() {
    let e = Config::parse(
        "metrics: {listen: \"127.0.0.1:9464\", tls: {cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem}}\nsinks:\n  local: {type: blackhole}\n",
        "t.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("metrics.tls.cert_file") && e.contains("/nonexistent/c.pem"),
        "{e}"
    );
    assert!(Config::embedded_default().metrics_tls.is_none());
}

#[test]
fn env_configs_default_to_on_with_the_first_sources_sink() {
    let c = Config::embedded_default();
    assert!(c.env_configs.enabled);
    assert_eq!(c.env_configs.default_sink.as_deref(), Some("local"));
    assert_eq!(c.env_configs.allowed_sinks, vec![Arc::<str>::from("local")]);

    let two = "sinks:\n  a: {type: stdout}\n  b: {type: blackhole}\n";
    let c = Config::parse(two, "t.yaml").unwrap();
    assert_eq!(
        c.env_configs.default_sink, None,
        "no source and two sinks: no default to guess"
    );
    let c = Config::parse(
        &format!("{two}env_configs: {{default_sink: b, sinks: [a, b]}}\n"),
        "t.yaml",
    )
    .unwrap();
    assert_eq!(c.env_configs.default_sink.as_deref(), Some("b"));
    assert_eq!(
        c.env_configs.allowed_sinks,
        vec![Arc::<str>::from("b"), Arc::from("a")]
    );
    let off = Config::parse(&format!("{two}env_configs: {{enabled: false}}\n"), "t.yaml");
    assert!(!off.unwrap().env_configs.enabled);
}

#[test]
fn env_configs_name_only_existing_sinks() {
    let yaml = "sinks:\n  a: {type: stdout}\nenv_configs: {sinks: [a, kafka]}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("env_configs.sinks[1]"), "{err}");
    assert!(err.contains("kafka"), "{err}");
    let yaml = "sinks:\n  a: {type: stdout}\nenv_configs: {default_sink: b}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.contains("env_configs.default_sink"), "{err}");
}

fn sidecar(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: std::collections::HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let raw = Config::parse_raw(&format!("mode: sidecar\n{yaml}"), "t.yaml")?;
    Config::from_raw_in(raw, "t.yaml", &|k| env.get(k).cloned())
}

const SHARED: &str = "sources:\n  - name: app\n    include: [\"/shared/*.log\"]\n    sink: local\nsinks:\n  local: {type: store}\n";

#[test]
fn sidecar_mode_puts_the_pods_identity_on_every_source_and_needs_nothing_of_the_node() {
    let c = sidecar(
        SHARED,
        &[
            ("POD_NAMESPACE", "shop"),
            ("POD_NAME", "cart-7d4"),
            ("POD_UID", "uid-1"),
            ("NODE_NAME", "node-a"),
            // In a pod the API would otherwise be on by default.
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ],
    )
    .unwrap();
    let fields: Vec<(String, String)> = c.sources[0]
        .fields
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    let want = [
        ("k8s.namespace", "shop"),
        ("k8s.pod", "cart-7d4"),
        ("k8s.pod_uid", "uid-1"),
        ("k8s.node", "node-a"),
    ];
    assert_eq!(
        fields,
        want.map(|(k, v)| (k.to_string(), v.to_string())).to_vec()
    );
    assert!(!c.kubernetes.enabled && !c.cri.enabled && !c.collections.enabled);
    assert!(!c.env_configs.enabled && c.capture.is_none());
}

#[test]
fn sidecar_mode_names_what_it_cannot_do() {
    let pod = [("POD_NAMESPACE", "shop"), ("POD_NAME", "cart")];
    let err = |yaml: &str, env: &[(&str, &str)]| sidecar(yaml, env).unwrap_err().to_string();
    let e = err(SHARED, &[("POD_NAME", "cart")]);
    assert!(e.contains("POD_NAMESPACE is not set"), "{e}");
    let e = err(&format!("{SHARED}capture: {{enabled: true}}\n"), &pod);
    assert!(
        e.contains("capture.enabled") && e.contains("sidecar"),
        "{e}"
    );
    let e = err(
        &format!("{SHARED}kubernetes: {{api_url: \"http://127.0.0.1:1\"}}\n"),
        &pod,
    );
    assert!(e.contains("`kubernetes`"), "{e}");
    let selector = "sources:\n  - name: s\n    selector: {}\n    sink: local\nsinks:\n  local: {type: store}\n";
    let e = err(selector, &pod);
    assert!(e.contains("sources[0].selector"), "{e}");
    let e = Config::parse("mode: daemon\n", "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown variant `daemon`"), "{e}");
}

#[test]
fn capture_hooks_default_to_auto_and_take_tracepoint_compat_or_nothing_else() {
    let yaml = |hooks: &str| {
        format!(
            "sources:\n  - name: pods\n    include: [\"/x/*.log\"]\n    format: cri\nsinks:\n  local: {{type: stdout}}\ncapture:\n  enabled: true\n{hooks}"
        )
    };
    let hooks = |text: &str| Config::parse(&yaml(text), "t.yaml").map(|c| c.capture.unwrap().hooks);
    assert_eq!(hooks("").unwrap(), CaptureHooks::Auto);
    assert_eq!(hooks("  hooks: auto\n").unwrap(), CaptureHooks::Auto);
    assert_eq!(
        hooks("  hooks: tracepoint\n").unwrap(),
        CaptureHooks::Tracepoint
    );
    assert_eq!(hooks("  hooks: compat\n").unwrap(), CaptureHooks::Compat);
    let err = hooks("  hooks: kprobe\n").unwrap_err().to_string();
    assert!(err.contains("capture.hooks"), "{err}");
    assert!(err.contains("unknown variant `kprobe`"), "{err}");
}

#[test]
fn capture_pins_are_off_by_default_and_their_directory_must_be_absolute() {
    let yaml = |pin: &str| {
        format!(
            "sources:\n  - name: pods\n    include: [\"/x/*.log\"]\n    format: cri\nsinks:\n  local: {{type: stdout}}\ncapture:\n  enabled: true\n{pin}"
        )
    };
    let pins = |text: &str| {
        Config::parse(&yaml(text), "t.yaml").map(|c| {
            let c = c.capture.unwrap();
            (c.pin_dir, c.configured_pin_dir)
        })
    };
    let default = PathBuf::from("/sys/fs/bpf/logtap");
    assert_eq!(pins("").unwrap(), (None, default.clone()));
    assert_eq!(
        pins("  pin: true\n").unwrap(),
        (Some(default.clone()), default)
    );
    let elsewhere = PathBuf::from("/sys/fs/bpf");
    assert_eq!(
        pins("  pin: true\n  pin_dir: /sys/fs/bpf\n").unwrap(),
        (Some(elsewhere.clone()), elsewhere)
    );
    for bad in ["bpf/logtap", "/", "/sys/fs/bpf/../logtap", ""] {
        let err = pins(&format!("  pin: true\n  pin_dir: \"{bad}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("capture.pin_dir"), "{bad}: {err}");
        assert!(err.contains("bpffs"), "{bad}: {err}");
    }
}

#[test]
fn the_wait_for_pins_another_agent_holds_is_bounded_and_named_when_wrong() {
    let yaml = |wait: &str| {
        format!(
            "sources:\n  - name: pods\n    include: [\"/x/*.log\"]\n    format: cri\nsinks:\n  local: {{type: stdout}}\ncapture:\n  enabled: true\n  pin: true\n{wait}"
        )
    };
    let wait =
        |text: &str| Config::parse(&yaml(text), "t.yaml").map(|c| c.capture.unwrap().pin_wait);
    assert_eq!(wait("").unwrap(), Duration::from_secs(45));
    assert_eq!(wait("  pin_wait: 0s\n").unwrap(), Duration::ZERO);
    assert_eq!(wait("  pin_wait: 2m\n").unwrap(), Duration::from_secs(120));
    let err = wait("  pin_wait: soon\n").unwrap_err().to_string();
    assert!(err.contains("capture.pin_wait"), "{err}");
    let err = wait("  pin_wiat: 10s\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `pin_wiat`"), "{err}");
    assert!(err.contains("line 10"), "{err}");
}

#[test]
fn syslog_inputs_listen_on_tcp_udp_or_unix() {
    let yaml = "sources:\n\
        \x20 - {name: t, type: syslog, listen: \"tcp://127.0.0.1:5514\", max_line_size: 8KiB}\n\
        \x20 - {name: u, type: syslog, listen: \"udp://[::1]:5514\", max_connections: 3}\n\
        \x20 - {name: x, type: syslog, listen: \"unix:///run/logtap/log\"}\n\
        \x20 - {name: f, include: [\"/x/*.log\"]}\n\
        sinks:\n  local: {type: blackhole}\n";
    let c = Config::parse(yaml, "t.yaml").unwrap();
    let input = |i: usize| c.sources[i].input.clone().unwrap();
    assert_eq!(
        input(0).listen,
        Listen::Tcp("127.0.0.1:5514".parse().unwrap())
    );
    assert_eq!(input(0).max_connections, 256);
    assert_eq!(input(1).listen, Listen::Udp("[::1]:5514".parse().unwrap()));
    assert_eq!(input(1).max_connections, 3);
    assert_eq!(input(2).listen, Listen::Unix("/run/logtap/log".into()));
    assert_eq!(input(2).protocol, NetProtocol::Syslog);
    assert!(
        c.sources[0].include.is_empty(),
        "the file source never matches it"
    );
    assert_eq!(c.sources[0].format, Format::Message);
    assert!(matches!(c.sources[0].parser, ParserConfig::Syslog));
    assert_eq!(c.sources[0].max_line_bytes, 8 << 10);
    assert!(c.sources[3].input.is_none());
    let yaml = "sources:\n  - {name: h, type: http, listen: \"tcp://127.0.0.1:8080\"}\n\
        sinks:\n  local: {type: blackhole}\n";
    let c = Config::parse(yaml, "t.yaml").unwrap();
    let input = c.sources[0].input.clone().unwrap();
    assert_eq!(input.protocol, NetProtocol::Http);
    assert_eq!(input.max_body_bytes, 10 << 20);
    assert!(matches!(c.sources[0].parser, ParserConfig::Json));
    let yaml = "sources:\n  - {name: o, type: otlp, listen: \"tcp://127.0.0.1:4318\", max_body_size: 1MiB}\n\
        sinks:\n  local: {type: blackhole}\n";
    let c = Config::parse(yaml, "t.yaml").unwrap();
    let input = c.sources[0].input.clone().unwrap();
    assert_eq!(input.protocol, NetProtocol::Otlp);
    assert_eq!(input.max_body_bytes, 1 << 20);
    assert!(
        matches!(c.sources[0].parser, ParserConfig::None),
        "the input decodes the fields"
    );
    let yaml = "sources:\n  - {name: o, type: otlp, listen: \"unix:///x\"}\n\
        sinks:\n  local: {type: blackhole}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(
        err.contains("sources[0].listen") && err.contains("tcp://"),
        "{err}"
    );
}

#[test]
fn bad_syslog_inputs_name_the_field() {
    let cases = [
        ("type: syslog", "sources[0].listen", "required"),
        (
            "type: syslog, listen: \"127.0.0.1:514\"",
            "sources[0].listen",
            "tcp://",
        ),
        (
            "type: syslog, listen: \"tcp://localhost:514\"",
            "sources[0].listen",
            "IP address",
        ),
        (
            "type: syslog, listen: \"tcp://127.0.0.1\"",
            "sources[0].listen",
            "port",
        ),
        (
            "type: syslog, listen: \"http://127.0.0.1:1\"",
            "sources[0].listen",
            "scheme",
        ),
        (
            "type: syslog, listen: \"unix://relative\"",
            "sources[0].listen",
            "absolute",
        ),
        (
            "type: syslog, listen: \"udp://127.0.0.1:1\", include: [\"/x\"]",
            "sources[0].include",
            "network input",
        ),
        (
            "type: syslog, listen: \"udp://127.0.0.1:1\", parser: {type: json}",
            "sources[0].parser",
            "network input",
        ),
        (
            "type: syslog, listen: \"udp://127.0.0.1:1\", format: cri",
            "sources[0].format",
            "network input",
        ),
        (
            "type: syslog, listen: \"tcp://127.0.0.1:1\", max_connections: 0",
            "sources[0].max_connections",
            "at least 1",
        ),
        (
            "type: syslog, listen: \"udp://127.0.0.1:1\", sink: nowhere",
            "sources[0].sink",
            "nowhere",
        ),
        (
            "type: sysl0g, listen: \"udp://127.0.0.1:1\"",
            "sources[0]",
            "unknown variant",
        ),
        (
            "type: http, listen: \"udp://127.0.0.1:1\"",
            "sources[0].listen",
            "tcp://",
        ),
        (
            "type: syslog, listen: \"udp://127.0.0.1:1\", max_body_size: 1MiB",
            "sources[0].max_body_size",
            "only for type: http",
        ),
        (
            "type: http, listen: \"tcp://127.0.0.1:1\", max_body_size: lots",
            "sources[0].max_body_size",
            "lots",
        ),
    ];
    for (source, field, message) in cases {
        let yaml =
            format!("sources:\n  - {{name: a, {source}}}\nsinks:\n  local: {{type: blackhole}}\n");
        let err = Config::parse(&yaml, "t.yaml").unwrap_err().to_string();
        assert!(
            err.contains(field) && err.contains(message),
            "{source}: {err}"
        );
    }
    let yaml = "sources:\n\
        \x20 - {name: a, type: syslog, listen: \"udp://127.0.0.1:5514\"}\n\
        \x20 - {name: b, type: syslog, listen: \"udp://127.0.0.1:5514\"}\n\
        sinks:\n  local: {type: blackhole}\n";
    let err = Config::parse(yaml, "t.yaml").unwrap_err().to_string();
    assert!(
        err.contains("sources[1].listen") && err.contains("\"a\""),
        "{err}"
    );
}

#[test]
fn kafka_message_per_takes_record_or_package_and_names_a_typo() {
    let sink = |v: &str| {
        format!(
            "sinks:\n  hub: {{type: kafka, brokers: [\"127.0.0.1:9092\"], topic: t, message_per: {v}}}\n"
        )
    };
    let c = Config::parse(&sink("package"), "t.yaml").unwrap();
    let SinkConfig::Kafka(k) = &c.sinks["hub"] else {
        panic!("{:?}", c.sinks["hub"]);
    };
    assert_eq!(k.message_per, network::MessagePer::Package);
    let e = Config::parse(&sink("packages"), "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sinks.hub.message_per") && e.contains("expected record or package"),
        "{e}"
    );
}

#[test]
fn kafka_value_takes_lines_or_package_and_names_a_typo() {
    let sink = |extra: &str| {
        format!(
            "sinks:\n  hub:\n    type: kafka\n    brokers: [\"127.0.0.1:9092\"]\n    topic: t\n{extra}"
        )
    };
    let kafka = |yaml: &str| {
        let c = Config::parse(yaml, "t.yaml").unwrap();
        let SinkConfig::Kafka(k) = &c.sinks["hub"] else {
            panic!("{:?}", c.sinks["hub"]);
        };
        (k.message_per, k.value)
    };
    use network::{KafkaValue, MessagePer};
    assert_eq!(kafka(&sink("")), (MessagePer::Record, KafkaValue::Lines));
    assert_eq!(
        kafka(&sink("    message_per: package\n")),
        (MessagePer::Package, KafkaValue::Lines)
    );
    assert_eq!(
        kafka(&sink("    message_per: package\n    value: package\n")),
        (MessagePer::Package, KafkaValue::Package)
    );
    let err = |extra: &str| {
        Config::parse(&sink(extra), "t.yaml")
            .unwrap_err()
            .to_string()
    };
    let e = err("    message_per: package\n    value: packge\n");
    assert!(
        e.contains("sinks.hub.value") && e.contains("\"packge\": expected lines or package"),
        "{e}"
    );
    let e = err("    value: package\n");
    assert!(
        e.contains("sinks.hub.value") && e.contains("needs message_per: package"),
        "{e}"
    );
    // A typo in the field's name: the sink's line (serde reports a field of an
    // internally tagged enum at the enum's start).
    let e = err("    message_per: package\n    valeu: package\n");
    assert!(
        e.contains("unknown field `valeu`") && e.contains("line 2"),
        "{e}"
    );
}

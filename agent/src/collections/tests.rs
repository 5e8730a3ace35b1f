use super::*;
use crate::config::SinkConfig;
use std::time::UNIX_EPOCH;

fn file_config() -> Config {
    Config::parse(
        "data_dir: /var/lib/logtap\ncollections: {admin_namespace: shop}\nsources:\n  - name: host\n    include: [/var/log/*.log]\nsinks:\n  local: {type: store}\n",
        "t.yaml",
    )
    .unwrap()
}

fn spec(yaml: &str) -> Value {
    yaml_serde::from_str(yaml).unwrap()
}

#[test]
fn a_valid_collection_becomes_prefixed_sources_and_its_sink() {
    let mut config = file_config();
    let (names, warnings) = merge(
        &mut config,
        "shop/json",
        &spec(
            "selector: {include_env: {LOG_FORMAT: json}}\nsources:\n  - {name: out, input: {type: container_stdout, stream: stderr}, parser: {type: json}}\n  - {name: app, input: {type: container_file, path: /var/log/app.log}}\nsink: {type: store, path: /var/lib/logtap/shop}\n",
        ),
    )
    .unwrap();
    assert_eq!(
        names,
        vec![Arc::<str>::from("shop/json/out"), "shop/json/app".into()]
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    let s = &config.sources[1];
    assert_eq!(
        &*config.sources[0].name, "host",
        "the file's sources come first"
    );
    assert_eq!(s.include, vec!["/var/log/pods/*/*/*.log".to_string()]);
    assert_eq!(&*s.sink, "shop/json");
    assert_eq!(s.stream, Some(Stream::Stderr));
    assert!(s.selector.is_some());
    let files = &config.sources[2];
    assert_eq!(files.container_paths, vec!["/var/log/app.log".to_string()]);
    assert!(files.include.is_empty());
    assert_eq!(files.format, crate::config::Format::Raw);
    assert!(
        files.selector.is_some(),
        "the collection's selector picks the containers"
    );
    assert!(config.sinks.contains_key("shop/json"));
}

#[test]
fn invalid_collections_name_the_field() {
    let err = |yaml: &str| {
        merge(&mut file_config(), "shop/bad", &spec(yaml))
            .unwrap_err()
            .to_string()
    };
    let e = err(
        "selector: {pod_name: '(x'}\nsources: [{name: out, input: {type: container_stdout}}]\nsink: {type: store, path: /var/lib/logtap/x}\n",
    );
    assert!(e.contains("spec.selector.pod_name"), "{e}");
    let e = err(
        "sources: [{name: out, input: {type: container_stdout}, parser: {type: regex, pattern: '(?P<a>['}}]\nsink: {type: store, path: /var/lib/logtap/x}\n",
    );
    assert!(e.contains("spec.sources[0].parser.pattern"), "{e}");
    let e = err(
        "sources: [{name: out, input: {type: container_stdout}, colour: red}]\nsink: {type: store, path: /var/lib/logtap/x}\n",
    );
    assert!(e.contains("spec.sources[0]") && e.contains("colour"), "{e}");
    let e = err("sources: [{name: out, input: {type: container_stdout}}]\nsink: {type: store}\n");
    assert!(
        e.contains("spec.sink.path"),
        "the file config's store path: {e}"
    );
}

#[test]
fn a_collection_outside_the_admin_namespace_stays_in_its_namespace() {
    let err = |yaml: &str| {
        merge(&mut file_config(), "team-a/logs", &spec(yaml))
            .unwrap_err()
            .to_string()
    };
    let e = err(
        "selector: {namespaces: {include: [team-b]}}\nsources: [{name: out, input: {type: container_stdout}}]\nsink: {type: store}\n",
    );
    assert!(
        e.contains("spec.selector.namespaces.include") && e.contains("team-b"),
        "{e}"
    );
    let e = err(
        "sources: [{name: node, input: {type: host_file, include: [/etc/*]}}]\nsink: {type: store}\n",
    );
    assert!(
        e.contains("spec.sources[0].input") && e.contains("host_file"),
        "{e}"
    );
    let e = err(
        "sources: [{name: out, input: {type: container_stdout}}]\nsink: {type: file, path: /etc/cron.d/x}\n",
    );
    assert!(e.contains("spec.sink.type"), "{e}");
    let e = err(
        "sources: [{name: out, input: {type: container_stdout}}]\nsink: {type: store, path: /root/x}\n",
    );
    assert!(e.contains("spec.sink.path"), "{e}");

    // What it may do: its own containers, into a store of its own.
    let mut config = file_config();
    merge(
        &mut config,
        "team-a/logs",
        &spec("sources: [{name: out, input: {type: container_stdout}}]\nsink: {type: store}\n"),
    )
    .unwrap();
    let selector = config.sources[1].selector.as_ref().unwrap();
    let facts = |namespace: &str| crate::select::ContainerFacts {
        namespace: namespace.into(),
        ..Default::default()
    };
    assert!(selector.matches(&facts("team-a")));
    assert!(
        !selector.matches(&facts("team-b")),
        "another namespace's container"
    );
    match &config.sinks[&Arc::<str>::from("team-a/logs")] {
        SinkConfig::Store { path, .. } => {
            assert_eq!(path, Path::new("/var/lib/logtap/collections/team-a/logs"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn match_board_counts_distinct_containers() {
    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    let board = MatchBoard::default();
    let (a, b): (Arc<str>, Arc<str>) = (Arc::from("c/a"), Arc::from("c/b"));
    let p0 = format!("/var/log/pods/ns_p_{UID}/app/0.log");
    let p1 = format!("/var/log/pods/ns_p_{UID}/app/1.log");
    let side = format!("/var/log/pods/ns_p_{UID}/side/0.log");
    board.update(&a, Path::new(&p0), 1);
    board.update(&a, Path::new(&p1), 1);
    board.update(&b, Path::new(&side), 1);
    board.update(&b, Path::new("/var/log/syslog"), 1);
    assert_eq!(board.containers(std::slice::from_ref(&a)), 1);
    assert_eq!(board.containers(&[a.clone(), b.clone()]), 2);
    board.update(&a, Path::new(&p0), -1);
    assert_eq!(
        board.containers(std::slice::from_ref(&a)),
        1,
        "1.log is still open"
    );
    board.update(&a, Path::new(&p1), -1);
    assert_eq!(board.containers(&[a]), 0);
}

#[test]
fn rfc3339_of_known_instants() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_251_199)),
        "2024-02-29T23:59:59Z"
    );
}

#[test]
fn shipped_example_collection_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/collections/checkout-json.yaml");
    let object: Value = yaml_serde::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(object["kind"], "LogCollection");
    // As a tenant's object: the default admin namespace is logtap-system.
    let mut config = Config::parse(
        "data_dir: /var/lib/logtap\nsources:\n  - name: host\n    include: [/var/log/*.log]\nsinks:\n  local: {type: store}\n",
        "t.yaml",
    )
    .unwrap();
    let (names, warnings) =
        merge(&mut config, "shop/checkout-json", &object["spec"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names.len(), 1);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn a_status_patch_removes_what_the_status_no_longer_has() {
    let cleared = LogCollectionStatus {
        matched_containers: 1,
        ..LogCollectionStatus::default()
    };
    let patch = status_patch(&cleared);
    assert_eq!(patch["errors"], Value::Null);
    assert!(
        patch.as_object().unwrap().contains_key("errors"),
        "named, so a merge patch removes the old errors: {patch}"
    );
    assert_eq!(patch["matched_containers"], 1);
}

#[test]
fn a_tenant_may_ship_to_the_network_but_chooses_no_node_path_or_client_property() {
    let err = |sink: &str| {
        let yaml =
            format!("sources: [{{name: out, input: {{type: container_stdout}}}}]\nsink: {sink}\n");
        merge(&mut file_config(), "team-a/logs", &spec(&yaml))
            .unwrap_err()
            .to_string()
    };
    let kafka = "{type: kafka, brokers: [\"k:9092\"], topic: t";
    for (extra, field) in [
        (", spool: {path: /etc}", "spec.sink.spool.path"),
        (", dead_letter: /etc/passwd", "spec.sink.dead_letter"),
        (", tls: {ca_file: /etc/shadow}", "spec.sink.tls"),
        (
            ", sasl: {mechanism: PLAIN, username: u, password_file: /etc/shadow}",
            "spec.sink.sasl",
        ),
        (
            ", properties: {plugin.library.paths: /tmp/x.so}",
            "spec.sink.properties",
        ),
    ] {
        let e = err(&format!("{kafka}{extra}}}"));
        assert!(e.contains(field), "{extra}: {e}");
    }
    let e = err("{type: otlp, endpoint: \"http://c:4318\", dead_letter: /etc/x}");
    assert!(e.contains("spec.sink.dead_letter"), "{e}");

    // Allowed: its spool goes into its own collection directory.
    for (key, sink) in [
        ("team-a/k", format!("{kafka}}}")),
        (
            "team-a/o",
            "{type: otlp, endpoint: \"http://c:4318\"}".to_string(),
        ),
        // The admin namespace too gets a spool per object by default.
        (
            "shop/o",
            "{type: otlp, endpoint: \"http://c:4318\"}".to_string(),
        ),
    ] {
        let mut config = file_config();
        let yaml =
            format!("sources: [{{name: out, input: {{type: container_stdout}}}}]\nsink: {sink}\n");
        merge(&mut config, key, &spec(&yaml)).unwrap();
        let path = config.sinks[&Arc::<str>::from(key)]
            .exclusive_path()
            .unwrap()
            .0
            .to_path_buf();
        assert_eq!(
            path,
            Path::new(&format!("/var/lib/logtap/collections/{key}/spool")),
            "{key}"
        );
    }
}

/// What a namespace's users may cost a node is bounded (`tenant_caps`): line size,
/// store size and segments, objects per namespace; a stdout sink is refused (the
/// agent's stdout is its own pod's log, read back as the admin namespace's).
#[test]
fn a_tenant_collection_is_bounded_and_rejected_beyond_its_caps() {
    let out = "sources: [{name: out, input: {type: container_stdout}";
    let err = |yaml: &str| {
        merge(&mut file_config(), "team-a/logs", &spec(yaml))
            .unwrap_err()
            .to_string()
    };
    for (yaml, field) in [
        (
            format!("{out}, max_line_size: 2MiB}}]\nsink: {{type: store}}\n"),
            "spec.sources[0].max_line_size",
        ),
        (
            format!("{out}}}]\nsink: {{type: store, max_size: 3GiB}}\n"),
            "spec.sink.max_size",
        ),
        (
            format!("{out}}}]\nsink: {{type: store, max_size: 2GiB, segment_size: 1MiB}}\n"),
            "spec.sink.segment_size",
        ),
        (
            format!("{out}}}]\nsink: {{type: stdout}}\n"),
            "spec.sink.type",
        ),
    ] {
        let e = err(&yaml);
        assert!(
            e.contains(field) && e.contains("namespace \"shop\""),
            "{yaml}: {e}"
        );
    }

    // Within the caps; a store without max_size gets the cap, not the node's 10GiB.
    let mut config = file_config();
    let ok = format!("{out}, max_line_size: 1MiB}}]\nsink: {{type: store}}\n");
    merge(&mut config, "team-a/logs", &spec(&ok)).unwrap();
    match &config.sinks[&Arc::<str>::from("team-a/logs")] {
        SinkConfig::Store { max_bytes, .. } => {
            assert_eq!(*max_bytes, tenant_caps::MAX_STORE_BYTES)
        }
        other => panic!("{other:?}"),
    }
    // The admin namespace is not bounded.
    let big = format!(
        "{out}, max_line_size: 8MiB}}]\nsink: {{type: store, path: /var/lib/logtap/big, max_size: 50GiB}}\n"
    );
    merge(&mut file_config(), "shop/big", &spec(&big)).unwrap();

    // Objects per namespace, in name order: the one past the cap is refused, another
    // namespace is not affected.
    let mut config = file_config();
    let plain = format!("{out}}}]\nsink: {{type: blackhole}}\n");
    for i in 0..tenant_caps::MAX_COLLECTIONS {
        merge(&mut config, &format!("team-a/c{i:02}"), &spec(&plain)).unwrap();
    }
    let e = merge(&mut config, "team-a/extra", &spec(&plain))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("metadata.name") && e.contains("at most 16"),
        "{e}"
    );
    merge(&mut config, "team-b/one", &spec(&plain)).unwrap();
}

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::select::ContainerFacts;

const DATA_DIR: &str = "/var/lib/logtap";

fn facts() -> ContainerFacts {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    ContainerFacts {
        namespace: "shop".into(),
        pod_name: "checkout-7d9f-abcde".into(),
        container_name: "app".into(),
        pod_labels: map(&[("app", "checkout"), ("tier", "backend")]),
        container_labels: map(&[("io.kubernetes.container.name", "app")]),
        env: map(&[("LOG_FORMAT", "json"), ("JAVA_OPTS", "-Xmx1g")]),
    }
}

fn selector(yaml: &str) -> CompiledSelector {
    let s: Selector = yaml_serde::from_str(yaml).unwrap();
    s.compile().unwrap()
}

fn spec(yaml: &str) -> LogCollectionSpec {
    let value: serde_json::Value = yaml_serde::from_str(yaml).unwrap();
    LogCollectionSpec::from_json(&value, "t").unwrap()
}

fn validate_err(yaml: &str) -> String {
    spec(yaml)
        .validate(Path::new(DATA_DIR))
        .unwrap_err()
        .to_string()
}

const MINIMAL: &str =
    "sources:\n  - name: out\n    input: {type: container_stdout}\nsink: {type: store}\n";

#[test]
fn empty_selector_matches_every_container() {
    assert!(selector("{}").matches(&facts()));
    assert!(selector("{}").matches(&ContainerFacts::default()));
}

#[test]
fn namespaces_include_and_exclude() {
    let f = facts();
    assert!(selector("namespaces: {include: [shop, web]}").matches(&f));
    assert!(!selector("namespaces: {include: [web]}").matches(&f));
    assert!(selector("namespaces: {include: ['^sh.*$']}").matches(&f));
    assert!(!selector("namespaces: {exclude: [shop]}").matches(&f));
    // Exclude wins over a matching include.
    assert!(!selector("namespaces: {include: [shop], exclude: ['^s.*$']}").matches(&f));
    // A plain value is compared whole, not searched.
    assert!(!selector("namespaces: {include: [sho]}").matches(&f));
}

#[test]
fn pod_and_container_name_are_regexes() {
    let f = facts();
    assert!(selector("pod_name: checkout").matches(&f));
    assert!(selector("pod_name: '^checkout-[0-9a-f]+-'").matches(&f));
    assert!(!selector("pod_name: '^cart'").matches(&f));
    assert!(selector("container_name: '^app$'").matches(&f));
    assert!(!selector("container_name: '^sidecar$'").matches(&f));
    assert!(!selector("{pod_name: checkout, container_name: sidecar}").matches(&f));
}

#[test]
fn include_labels_all_must_match_on_pod_or_container_labels() {
    let f = facts();
    assert!(selector("include_labels: {app: checkout}").matches(&f));
    assert!(selector("include_labels: {app: checkout, tier: backend}").matches(&f));
    assert!(!selector("include_labels: {app: checkout, tier: frontend}").matches(&f));
    // A container (runtime) label counts too.
    assert!(selector("include_labels: {io.kubernetes.container.name: app}").matches(&f));
    // Empty value: the key only has to be present.
    assert!(selector("include_labels: {tier: ''}").matches(&f));
    assert!(!selector("include_labels: {team: ''}").matches(&f));
    // Regex value only when written ^...$; otherwise exact.
    assert!(selector("include_labels: {app: '^check.*$'}").matches(&f));
    assert!(!selector("include_labels: {app: 'check.*'}").matches(&f));
}

#[test]
fn exclude_labels_any_match_excludes_and_wins() {
    let f = facts();
    assert!(!selector("exclude_labels: {tier: backend}").matches(&f));
    assert!(!selector("exclude_labels: {tier: frontend, app: checkout}").matches(&f));
    assert!(selector("exclude_labels: {tier: frontend}").matches(&f));
    assert!(
        !selector("{include_labels: {app: checkout}, exclude_labels: {app: checkout}}").matches(&f)
    );
}

#[test]
fn env_include_and_exclude() {
    let f = facts();
    assert!(selector("include_env: {LOG_FORMAT: json}").matches(&f));
    assert!(!selector("include_env: {LOG_FORMAT: text}").matches(&f));
    assert!(!selector("include_env: {LOG_FORMAT: json, MISSING: ''}").matches(&f));
    assert!(selector("include_env: {JAVA_OPTS: '^.*Xmx.*$'}").matches(&f));
    assert!(!selector("exclude_env: {JAVA_OPTS: ''}").matches(&f));
    assert!(
        !selector("{include_env: {LOG_FORMAT: json}, exclude_env: {LOG_FORMAT: json}}").matches(&f)
    );
    // Env is not labels: a label key does not satisfy an env entry.
    assert!(!selector("include_env: {app: checkout}").matches(&f));
}

/// A key ending in `*` is a prefix: what a catch-all source uses to leave out the
/// containers that declare their own collections (`logtap_logs_*`).
#[test]
fn a_key_ending_in_a_star_matches_every_key_with_its_prefix() {
    let f = facts();
    assert!(selector("include_env: {'LOG_*': json}").matches(&f));
    assert!(!selector("include_env: {'LOG_*': text}").matches(&f));
    assert!(!selector("exclude_env: {'JAVA_*': ''}").matches(&f));
    assert!(selector("exclude_env: {'logtap_logs_*': ''}").matches(&f));
    assert!(selector("include_labels: {'ti*': backend}").matches(&f));
    assert!(selector("include_labels: {'io.kubernetes.*': app}").matches(&f));
    assert!(!selector("exclude_labels: {'io.*': ''}").matches(&f));
    for bad in [
        "include_env: {'LOG*FORMAT': ''}",
        "exclude_labels: {'a**': ''}",
    ] {
        let s: Selector = yaml_serde::from_str(bad).unwrap();
        let e = s.compile().unwrap_err().to_string();
        assert!(e.contains("`*` may only end a key"), "{bad}: {e}");
    }
}

#[test]
fn every_part_must_hold() {
    let f = facts();
    let all = "{namespaces: {include: [shop]}, pod_name: checkout, container_name: app, \
               include_labels: {app: checkout}, include_env: {LOG_FORMAT: json}}";
    assert!(selector(all).matches(&f));
    let mut other = f.clone();
    other.namespace = "web".into();
    assert!(!selector(all).matches(&other));
}

#[test]
fn bad_selector_regex_names_the_field() {
    let err = validate_err(&format!("selector: {{pod_name: '(unclosed'}}\n{MINIMAL}"));
    assert!(err.contains("spec.selector.pod_name"), "{err}");
    assert!(err.contains("regex parse error"), "{err}");
    let err = validate_err(&format!(
        "selector: {{include_env: {{A: '^(x$'}}}}\n{MINIMAL}"
    ));
    assert!(err.contains("spec.selector.include_env.A"), "{err}");
    let err = validate_err(&format!(
        "selector: {{namespaces: {{exclude: [ok, '^[$']}}}}\n{MINIMAL}"
    ));
    assert!(err.contains("spec.selector.namespaces.exclude[1]"), "{err}");
}

#[test]
fn minimal_spec_validates_with_defaults() {
    let v = spec(MINIMAL).validate(Path::new(DATA_DIR)).unwrap();
    assert_eq!(v.sources.len(), 1);
    assert_eq!(v.sources[0].format, Format::Cri);
    assert_eq!(v.sources[0].max_line_bytes, 1 << 20);
    assert_eq!(
        v.sources[0].input,
        SourceInput::ContainerStdout {
            stream: StreamSelection::All
        }
    );
    match &v.sink {
        SinkConfig::Store { path, .. } => assert_eq!(path, &Path::new(DATA_DIR).join("store")),
        other => panic!("expected the store, got {other:?}"),
    }
    assert!(v.selector.matches(&facts()));
}

#[test]
fn full_spec_validates() {
    let yaml = r#"
selector:
  namespaces: {include: [shop], exclude: [kube-system]}
  include_labels: {app: checkout}
sources:
  - name: out
    input: {type: container_stdout, stream: stderr}
    multiline: {start: '^\d{4}-'}
  - name: app-log
    input: {type: container_file, path: /var/log/app/*.log}
    parser: {type: regex, pattern: '^(?P<level>\w+) (?P<msg>.*)$'}
  - name: node
    input: {type: host_file, include: [/var/log/syslog], exclude: ['**/*.gz']}
    format: raw
    parser: {type: json}
sink: {type: file, path: /var/lib/logtap/out/shop.ndjson}
"#;
    let v = spec(yaml).validate(Path::new(DATA_DIR)).unwrap();
    assert_eq!(v.sources.len(), 3);
    assert!(v.sources[0].multiline.is_some());
    assert_eq!(v.sources[1].format, Format::Raw);
    assert!(matches!(v.sources[1].parser, ParserConfig::Regex(_)));
    assert!(matches!(v.sources[2].parser, ParserConfig::Json));
    assert!(matches!(v.sink, SinkConfig::File { .. }));
}

#[test]
fn source_errors_name_the_field() {
    let err = validate_err(
        "sources:\n  - name: a\n    input: {type: container_stdout}\n    parser: {type: regex, pattern: '(?P<a>['}\nsink: {type: stdout}\n",
    );
    assert!(err.contains("spec.sources[0].parser.pattern"), "{err}");
    let err = validate_err(
        "sources:\n  - name: a\n    input: {type: container_stdout}\n  - name: b\n    input: {type: container_file, path: relative/x.log}\nsink: {type: stdout}\n",
    );
    assert!(err.contains("spec.sources[1].input.path"), "{err}");
    let err = validate_err(
        "sources:\n  - name: a\n    input: {type: host_file, include: []}\nsink: {type: stdout}\n",
    );
    assert!(err.contains("spec.sources[0].input.include"), "{err}");
    let err = validate_err(
        "sources:\n  - name: a\n    input: {type: container_stdout}\n    format: raw\nsink: {type: stdout}\n",
    );
    assert!(err.contains("spec.sources[0].format"), "{err}");
    let err = validate_err(
        "sources:\n  - name: a\n    input: {type: container_stdout}\n  - name: a\n    input: {type: container_stdout}\nsink: {type: stdout}\n",
    );
    assert!(err.contains("spec.sources[1].name"), "{err}");
    let err = validate_err("sources: []\nsink: {type: stdout}\n");
    assert!(err.contains("spec.sources"), "{err}");
    let err = validate_err(
        "sources:\n  - name: a\n    input: {type: container_stdout}\n    multiline: {start: x, max_lines: 0}\nsink: {type: stdout}\n",
    );
    assert!(err.contains("spec.sources[0].multiline.max_lines"), "{err}");
}

#[test]
fn sink_paths_are_confined_to_the_data_dir() {
    for path in [
        "/etc/cron.d/evil",
        "/var/lib/logtap/../../etc/passwd",
        "/var/lib/logtapx/a",
    ] {
        let err = validate_err(&format!(
            "sources:\n  - name: a\n    input: {{type: container_stdout}}\nsink: {{type: file, path: '{path}'}}\n"
        ));
        assert!(err.contains("spec.sink.path"), "{path}: {err}");
    }
    let err = validate_err(
        "sources:\n  - name: a\n    input: {type: container_stdout}\nsink: {type: store, path: /tmp/store}\n",
    );
    assert!(err.contains("spec.sink.path"), "{err}");
    let err = validate_err(
        "sources:\n  - name: a\n    input: {type: container_stdout}\nsink: {type: store, max_size: lots}\n",
    );
    assert!(err.contains("spec.sink.max_size"), "{err}");
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let value: serde_json::Value = yaml_serde::from_str(
        "sources:\n  - name: a\n    input: {type: container_file, pth: /x.log}\nsink: {type: stdout}\n",
    )
    .unwrap();
    let err = LogCollectionSpec::from_json(&value, "LogCollection ns/a")
        .unwrap_err()
        .to_string();
    assert!(err.contains("LogCollection ns/a"), "{err}");
    // Inside a tagged enum serde buffers the object, so the path stops at it.
    assert!(
        err.contains("spec.sources[0].input: unknown field `pth`"),
        "{err}"
    );

    let value: serde_json::Value =
        yaml_serde::from_str(&format!("selector: {{pod_nam: x}}\n{MINIMAL}")).unwrap();
    let err = LogCollectionSpec::from_json(&value, "t")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.selector.pod_nam: unknown field `pod_nam`"),
        "{err}"
    );

    let value: serde_json::Value = yaml_serde::from_str(&format!("{MINIMAL}extra: 1\n")).unwrap();
    let err = LogCollectionSpec::from_json(&value, "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.extra: unknown field `extra`"), "{err}");

    let value: serde_json::Value = yaml_serde::from_str(
        "sources:\n  - name: a\n    input: {type: container_stdout}\n    parser: {type: regex, pattern: x, columns: [a]}\nsink: {type: stdout}\n",
    )
    .unwrap();
    let err = LogCollectionSpec::from_json(&value, "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.sources[0].parser"), "{err}");
    assert!(err.contains("columns"), "{err}");
}

#[test]
fn whole_object_validation_names_the_object() {
    let mut lc = LogCollection::new("web", spec(MINIMAL));
    lc.metadata.namespace = Some("shop".into());
    assert!(lc.validate(Path::new(DATA_DIR)).is_ok());
    lc.spec.selector.container_name = Some("(".into());
    let err = lc.validate(Path::new(DATA_DIR)).unwrap_err();
    let status = LogCollectionStatus::invalid(Some(3), &err, "2025-01-01T00:00:00Z");
    assert!(
        status.errors[0]
            .starts_with("LogCollection shop/web: field `spec.selector.container_name`")
    );
    assert_eq!(status.conditions[0].status, "False");
    assert_eq!(status.observed_generation, Some(3));
    // The status round-trips through JSON as the API server stores it.
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(
        serde_json::from_value::<LogCollectionStatus>(json).unwrap(),
        status
    );
}

#[test]
fn spec_round_trips_through_json() {
    let s = spec(MINIMAL);
    let json = serde_json::to_value(&s).unwrap();
    let again = LogCollectionSpec::from_json(&json, "t").unwrap();
    assert_eq!(serde_json::to_value(&again).unwrap(), json);
}

#[test]
fn generated_crd_is_structural() {
    let crd = LogCollection::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("logcollections.logtap.dev")
    );
    let version = &crd.spec.versions[0];
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    // A structural schema has no oneOf/anyOf carrying properties and no
    // additionalProperties next to properties.
    let schema = serde_json::to_value(version.schema.as_ref().unwrap()).unwrap();
    fn walk(v: &serde_json::Value, at: &str) {
        if let Some(o) = v.as_object() {
            assert!(!o.contains_key("oneOf") && !o.contains_key("anyOf"), "{at}");
            assert!(
                !(o.contains_key("properties") && o.contains_key("additionalProperties")),
                "{at}"
            );
            for (k, child) in o {
                walk(child, &format!("{at}.{k}"));
            }
        } else if let Some(a) = v.as_array() {
            for child in a {
                walk(child, at);
            }
        }
    }
    walk(&schema, "schema");
    assert!(crd_yaml().starts_with("# Generated by `cargo xtask gen-crd`"));
}

/// What the API server does to an object before the agent sees it: every property its
/// structural schema gives a default, and the object lacks, is set to that default
/// (recursively, into present objects and array items).
fn apply_schema_defaults(schema: &serde_json::Value, value: &mut serde_json::Value) {
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(|p| p.as_object()),
        value.as_object_mut(),
    ) {
        for (name, prop) in props {
            if !obj.contains_key(name)
                && let Some(default) = prop.get("default")
            {
                obj.insert(name.clone(), default.clone());
            }
            if let Some(v) = obj.get_mut(name) {
                apply_schema_defaults(prop, v);
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array_mut()) {
        for v in array {
            apply_schema_defaults(items, v);
        }
    }
}

/// Specs as a real API server stores them (defaults applied from the generated CRD)
/// are accepted: a default of one kind of a merged `type:` object (a Kafka sink's
/// `acks`, a mask step's replacement) must not land in another kind, whose fields
/// serde checks strictly.
#[test]
fn specs_defaulted_by_the_api_server_from_the_crd_still_validate() {
    let crd = serde_json::to_value(LogCollection::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert!(schema.is_object(), "the spec's schema is in the CRD");
    for yaml in [
        MINIMAL,
        "sources:\n  - name: out\n    input: {type: container_stdout}\n    \
         processors: [{type: keep, regex: x}, {type: mask, regex: y}, {type: remove_fields, names: [a]}]\n\
         sink: {type: store}\n",
        "sources:\n  - name: out\n    input: {type: container_stdout}\n\
         sink: {type: kafka, brokers: ['127.0.0.1:9092'], topic: logs}\n",
        "sources:\n  - name: out\n    input: {type: container_stdout}\n\
         sink: {type: otlp, endpoint: 'http://127.0.0.1:4318'}\n",
        "sources:\n  - name: app\n    input: {type: container_file, path: /var/log/app.log}\n\
         sink: {type: file, path: /var/lib/logtap/app.ndjson}\n",
    ] {
        let mut value: serde_json::Value = yaml_serde::from_str(yaml).unwrap();
        apply_schema_defaults(schema, &mut value);
        let spec = LogCollectionSpec::from_json(&value, "t")
            .unwrap_or_else(|e| panic!("{yaml}\ndefaulted to {value}\n{e}"));
        spec.validate(Path::new(DATA_DIR))
            .unwrap_or_else(|e| panic!("{yaml}\ndefaulted to {value}\n{e}"));
    }
}

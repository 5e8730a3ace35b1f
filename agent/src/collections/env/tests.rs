use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::discovery::{ContainerState, PodLogRef};
use crate::select::ContainerFacts;

fn settings() -> EnvConfigsConfig {
    EnvConfigsConfig {
        enabled: true,
        default_sink: Some(Arc::from("local")),
        allowed_sinks: vec![Arc::from("local"), Arc::from("kafka")],
    }
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn reasons(errors: &[EnvError]) -> Vec<(&str, &str)> {
    errors
        .iter()
        .map(|e| (e.variable.as_str(), e.reason))
        .collect()
}

#[test]
fn stdout_and_file_collections_with_their_options() {
    let (found, errors) = declarations(
        &env(&[
            ("PATH", "/bin"),
            ("logtap_logs_app", "stdout"),
            ("logtap_logs_app_format", "json"),
            ("logtap_logs_app_tags", "team=shop, tier=web"),
            ("logtap_logs_audit", "/var/log/app/*.log"),
            ("logtap_logs_audit_sink", "kafka"),
        ]),
        &settings(),
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(found.len(), 2);
    let app = &found[0];
    assert_eq!(app.name, "app");
    assert_eq!(app.input, EnvInput::Stdout);
    assert_eq!(app.format, EnvFormat::Json);
    assert_eq!(
        app.tags,
        vec![
            ("team".to_owned(), "shop".to_owned()),
            ("tier".to_owned(), "web".to_owned())
        ]
    );
    assert_eq!(app.sink.as_ref(), "local", "no _sink: the default sink");
    let audit = &found[1];
    assert_eq!(audit.input, EnvInput::Files("/var/log/app/*.log".into()));
    assert_eq!(audit.format, EnvFormat::Raw);
    assert_eq!(audit.sink.as_ref(), "kafka");
}

#[test]
fn every_wrong_variable_is_named_with_its_reason_and_the_rest_is_kept() {
    let (found, errors) = declarations(
        &env(&[
            ("logtap_logs_ok", "stdout"),
            ("logtap_logs_Bad", "stdout"),
            ("logtap_logs_climb", "/var/log/../../etc/shadow"),
            ("logtap_logs_rel", "var/log/a.log"),
            ("logtap_logs_fmt", "stdout"),
            ("logtap_logs_fmt_format", "xml"),
            ("logtap_logs_frame", "stdout"),
            ("logtap_logs_frame_format", "cri"),
            ("logtap_logs_tg", "stdout"),
            ("logtap_logs_tg_tags", "k8s.namespace"),
            ("logtap_logs_sk", "stdout"),
            ("logtap_logs_sk_sink", "secret-audit"),
            ("logtap_logs_ok_colour", "red"),
            ("logtap_logs_orphan_tags", "a=b"),
        ]),
        &settings(),
    );
    assert_eq!(
        found.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["ok"],
        "only the valid collection is declared"
    );
    let mut got = reasons(&errors);
    got.sort();
    assert_eq!(
        got,
        [
            ("logtap_logs_Bad", "invalid_name"),
            ("logtap_logs_climb", "invalid_path"),
            ("logtap_logs_fmt_format", "invalid_format"),
            ("logtap_logs_frame_format", "invalid_format"),
            ("logtap_logs_ok_colour", "unknown_option"),
            ("logtap_logs_orphan_tags", "option_without_collection"),
            ("logtap_logs_rel", "invalid_input"),
            ("logtap_logs_sk_sink", "sink_not_allowed"),
            ("logtap_logs_tg_tags", "invalid_tags"),
        ]
    );
    let climb = errors.iter().find(|e| e.reason == "invalid_path").unwrap();
    assert!(climb.message.contains("`..`"), "{}", climb.message);
}

#[test]
fn values_are_bounded() {
    let long_path = format!("/{}", "a".repeat(MAX_PATH));
    let many_tags = (0..=MAX_TAGS)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let long_value = format!("k={}", "v".repeat(MAX_TAG_VALUE + 1));
    let (_, errors) = declarations(
        &env(&[
            ("logtap_logs_long", &long_path),
            ("logtap_logs_many", "stdout"),
            ("logtap_logs_many_tags", &many_tags),
            ("logtap_logs_value", "stdout"),
            ("logtap_logs_value_tags", &long_value),
            ("logtap_logs_ctl", "stdout"),
            ("logtap_logs_ctl_tags", "k=a\u{1b}[2J"),
        ]),
        &settings(),
    );
    let mut got = reasons(&errors);
    got.sort();
    assert_eq!(
        got,
        [
            ("logtap_logs_ctl_tags", "invalid_tags"),
            ("logtap_logs_long", "invalid_path"),
            ("logtap_logs_many_tags", "invalid_tags"),
            ("logtap_logs_value_tags", "invalid_tags"),
        ]
    );

    let mut lots = BTreeMap::new();
    for i in 0..MAX_COLLECTIONS + 2 {
        lots.insert(format!("logtap_logs_c{i:02}"), "stdout".to_owned());
    }
    let (found, errors) = declarations(&lots, &settings());
    assert_eq!(found.len(), MAX_COLLECTIONS);
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().all(|e| e.reason == "too_many"));
}

#[test]
fn without_a_default_sink_only_collections_naming_an_allowed_sink_are_declared() {
    let settings = EnvConfigsConfig {
        default_sink: None,
        allowed_sinks: vec![Arc::from("kafka")],
        ..settings()
    };
    let (found, errors) = declarations(
        &env(&[
            ("logtap_logs_a", "stdout"),
            ("logtap_logs_b", "stdout"),
            ("logtap_logs_b_sink", "kafka"),
        ]),
        &settings,
    );
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].sink.as_ref(), "kafka");
    assert_eq!(reasons(&errors), [("logtap_logs_a", "no_default_sink")]);
}

fn facts(pairs: &[(&str, &str)]) -> ContainerFacts {
    ContainerFacts {
        env: env(pairs),
        ..Default::default()
    }
}

/// The selector of a declaration selects the containers declaring it exactly so:
/// the same variables with the same values, and none of its unset options.
#[test]
fn the_selector_matches_exactly_the_declaring_variables() {
    let vars = [
        ("logtap_logs_app", "stdout"),
        ("logtap_logs_app_tags", "team=a"),
    ];
    let (found, _) = declarations(&env(&vars), &settings());
    let selector = found[0].selector();
    assert!(selector.matches(&facts(&vars)));
    assert!(selector.matches(&facts(&[vars[0], vars[1], ("OTHER", "x")])));
    assert!(!selector.matches(&facts(&vars[..1])), "no tags");
    assert!(
        !selector.matches(&facts(&[vars[0], ("logtap_logs_app_tags", "team=b")])),
        "other tags"
    );
    assert!(
        !selector.matches(&facts(&[
            vars[0],
            vars[1],
            ("logtap_logs_app_sink", "local")
        ])),
        "an option it does not set"
    );
    // A value that looks like a selector regex is still compared as it is.
    let (found, _) = declarations(&env(&[("logtap_logs_re", "/^a$")]), &settings());
    let selector = found[0].selector();
    assert!(selector.matches(&facts(&[("logtap_logs_re", "/^a$")])));
    assert!(!selector.matches(&facts(&[("logtap_logs_re", "/a")])));
}

#[test]
fn a_declaration_becomes_a_source_like_a_collection_input() {
    let config = Config::embedded_default();
    let (found, _) = declarations(
        &env(&[
            ("logtap_logs_app", "stdout"),
            ("logtap_logs_app_format", "json"),
            ("logtap_logs_app_tags", "team=shop"),
            ("logtap_logs_files", "/var/log/app/*.log"),
            ("logtap_logs_files_format", "cri"),
        ]),
        &settings(),
    );
    let app = found[0].source(&config);
    assert!(app.name.starts_with("env/app/"), "{}", app.name);
    assert_eq!(app.include, vec![config.collections.pod_log_glob()]);
    assert!(app.container_paths.is_empty());
    assert_eq!(app.format, Format::Cri);
    assert!(matches!(app.parser, ParserConfig::Json));
    assert_eq!(app.sink.as_ref(), "local");
    let fields: Vec<(&[u8], &[u8])> = app
        .fields
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    assert_eq!(
        fields,
        [
            (&b"logtap.collection"[..], &b"app"[..]),
            (b"tag.team", b"shop")
        ]
    );
    let files = found[1].source(&config);
    assert!(files.include.is_empty());
    assert_eq!(files.container_paths, ["/var/log/app/*.log"]);
    assert_eq!(files.format, Format::Cri);
    assert!(matches!(files.parser, ParserConfig::None));
}

#[test]
fn source_names_are_stable_and_tell_declarations_apart() {
    let one = |value: &str| {
        declarations(&env(&[("logtap_logs_app", value)]), &settings()).0[0].source_name()
    };
    assert_eq!(one("stdout"), one("stdout"));
    assert_ne!(one("stdout"), one("/a.log"));
    let name = one("stdout");
    assert_eq!(name.len(), "env/app/".len() + 12, "{name}");
    // Pinned: a changed hash would re-read every env collection's files after an
    // upgrade (branch ids derive from the name).
    assert_eq!(name, "env/app/018615a34625");
}

fn container(id: &str, pod: &str, pairs: &[(&str, &str)]) -> ContainerInfo {
    ContainerInfo {
        id: id.into(),
        name: "app".into(),
        sandbox_id: format!("sb-{pod}"),
        pod: Some(PodLogRef {
            namespace: "shop".into(),
            pod: pod.into(),
            pod_uid: format!("uid-{pod}"),
            container: "app".into(),
            restart: 0,
        }),
        image: "busybox".into(),
        image_ref: String::new(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        env: env(pairs),
        log_path: Some(PathBuf::from(format!(
            "/var/log/pods/shop_{pod}_uid-{pod}/app/0.log"
        ))),
        pid: Some(1),
        cgroup_path: None,
        state: ContainerState::Running,
        restart_count: 0,
    }
}

/// The generation moves when a new declaration appears, not for one more replica
/// declaring the same, and the merged sources are the distinct declarations.
#[test]
fn the_generation_follows_distinct_declarations_of_the_registry() {
    let registry = ContainerRegistry::new(None, PathBuf::from("/nonexistent"));
    let configs = EnvConfigs::new(settings(), registry.clone());
    let start = configs.generation();
    registry.record(container("a1", "web-1", &[("logtap_logs_app", "stdout")]));
    let first = configs.generation();
    assert_ne!(first, start);
    registry.record(container("a2", "web-2", &[("logtap_logs_app", "stdout")]));
    assert_eq!(
        configs.generation(),
        first,
        "a replica declares nothing new"
    );
    registry.record(container(
        "a3",
        "web-3",
        &[
            ("logtap_logs_app", "stdout"),
            ("logtap_logs_app_sink", "nope"),
        ],
    ));
    assert_eq!(
        configs.generation(),
        first,
        "an invalid declaration neither"
    );
    registry.record(container("b1", "db-1", &[("logtap_logs_db", "/d/*.log")]));
    assert_ne!(configs.generation(), first);

    let mut config = Config::embedded_default();
    let before = config.sources.len();
    configs.merge_into(&mut config);
    let added: Vec<&str> = config.sources[before..]
        .iter()
        .map(|s| s.name.as_ref())
        .collect();
    assert_eq!(added.len(), 2, "{added:?}");
    assert!(added.iter().any(|n| n.starts_with("env/app/")));
    assert!(added.iter().any(|n| n.starts_with("env/db/")));
}

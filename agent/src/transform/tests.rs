use bytes::Bytes;

use super::{Outcome, Transform};
use crate::batch::Field;
use crate::config::{Config, ParserConfig};
use crate::frame::{Line, LineFlags, Span, Stream};
use crate::parse::Parser;

/// The parser and processors of a one-source config whose source has `processors`
/// (YAML flow sequence) and `parser`.
fn stages(parser: &str, processors: &str) -> (Parser, Transform) {
    let yaml = format!(
        "sources:\n  - name: a\n    include: [\"/x/*.log\"]\n    parser: {parser}\n    \
         processors: {processors}\nsinks:\n  local: {{type: blackhole}}\n"
    );
    let config = Config::parse(&yaml, "t.yaml").unwrap();
    let source = &config.sources[0];
    (
        Parser::new(&source.parser),
        Transform::new(&source.processors),
    )
}

fn config_error(processors: &str) -> String {
    let yaml = format!(
        "sources:\n  - name: a\n    include: [\"/x/*.log\"]\n    processors: {processors}\n\
         sinks:\n  local: {{type: blackhole}}\n"
    );
    Config::parse(&yaml, "t.yaml").unwrap_err().to_string()
}

/// A record after parse and processors, as (body, fields), or `None` when dropped.
/// Fields of an earlier record are in the vector first, as in a package.
fn run(stages: &(Parser, Transform), body: &str) -> Option<(String, Vec<(String, String)>)> {
    let (parser, transform) = stages;
    let earlier = Field {
        line: 0,
        key: Bytes::from_static(b"earlier"),
        value: Bytes::from_static(b"record").into(),
    };
    let mut fields = vec![earlier.clone()];
    let (mut line, mut chunks) = framed(body.as_bytes());
    parser.apply_with(&mut line, &chunks, 1, &mut fields, false);
    let outcome = transform.apply(&mut line, &mut chunks, 1, &mut fields, 1);
    assert_eq!(
        fields[0], earlier,
        "an earlier record's fields are untouched"
    );
    assert!(fields[1..].iter().all(|f| f.line == 1));
    if outcome.dropped {
        assert_eq!(fields.len(), 1, "a dropped record leaves no field");
        return None;
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Some((
        text(&line.body.to_bytes(&chunks)),
        fields[1..]
            .iter()
            .map(|f| (text(&f.key), text(f.value.get(&chunks))))
            .collect(),
    ))
}

/// A framed line whose body is all of the one chunk returned beside it.
fn framed(body: &[u8]) -> (Line, Vec<Bytes>) {
    let line = Line {
        offset: 0,
        timestamp_ns: 0,
        stream: Stream::Stdout,
        flags: LineFlags::empty(),
        body: Span {
            chunk: 0,
            start: 0,
            len: body.len() as u32,
        },
    };
    (line, vec![Bytes::copy_from_slice(body)])
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn keep_and_drop_filter_on_the_body_or_a_field() {
    let s = stages(
        "{type: json}",
        "[{type: drop, field: level, equals: debug}, {type: keep, regex: 'checkout|payment'}]",
    );
    assert!(run(&s, r#"{"level":"debug","msg":"checkout"}"#).is_none());
    assert!(run(&s, r#"{"level":"info","msg":"login"}"#).is_none());
    let kept = run(&s, r#"{"level":"info","msg":"payment ok"}"#).unwrap();
    assert_eq!(kept.1, pairs(&[("level", "info"), ("msg", "payment ok")]));
    // No such field: `drop` has nothing to match, the record stays.
    assert!(run(&s, r#"{"msg":"checkout"}"#).is_some());
    // A record the parser failed on is filtered on its body.
    assert!(run(&s, "not json, checkout").is_some());
}

#[test]
fn mask_replaces_in_the_body_and_every_field_the_parser_copied_it_into() {
    let s = stages(
        "{type: json}",
        r"[{type: mask, regex: '\d{4}-\d{4}-\d{4}-(\d{4})', replacement: '****-$1'}]",
    );
    let (body, fields) = run(&s, r#"{"card":"4111-1111-1111-1234","n":1}"#).unwrap();
    assert_eq!(body, r#"{"card":"****-1234","n":1}"#);
    assert_eq!(fields, pairs(&[("card", "****-1234"), ("n", "1")]));
    // Nothing to mask: the body is the very bytes read (no copy, no change).
    let (body, _) = run(&s, r#"{"card":"none"}"#).unwrap();
    assert_eq!(body, r#"{"card":"none"}"#);

    let one_field = stages("{type: json}", "[{type: mask, field: token, regex: '.+'}]");
    let (body, fields) = run(&one_field, r#"{"token":"s3cr3t","user":"s3cr3t"}"#).unwrap();
    assert_eq!(
        body, r#"{"token":"s3cr3t","user":"s3cr3t"}"#,
        "only the field"
    );
    assert_eq!(fields, pairs(&[("token", "****"), ("user", "s3cr3t")]));
}

#[test]
fn mask_keeps_invalid_utf8_around_its_matches() {
    let (parser, transform) = stages("{type: json}", "[{type: mask, regex: 'pin=\\d+'}]");
    let mut fields = Vec::new();
    let (mut line, mut chunks) = framed(b"\xff\xfe pin=1234 \xc3");
    parser.apply_with(&mut line, &chunks, 0, &mut fields, false);
    let outcome = transform.apply(&mut line, &mut chunks, 0, &mut fields, 0);
    assert_eq!(
        outcome,
        Outcome {
            dropped: false,
            masked: true
        }
    );
    assert_eq!(line.body.get(&chunks), b"\xff\xfe **** \xc3");
    assert!(line.flags.contains(LineFlags::INVALID_UTF8));
}

#[test]
fn fields_are_added_renamed_removed_and_extracted_in_order() {
    let s = stages(
        "{type: json}",
        "[{type: extract, field: msg, regex: 'user=(?P<user>\\w+) (?P<unused>x)?'}, \
         {type: rename_fields, fields: {msg: message, user: user_name}}, \
         {type: add_fields, fields: {env: prod}}, \
         {type: remove_fields, names: [n]}, \
         {type: keep, field: env, equals: prod}]",
    );
    let (body, fields) = run(&s, r#"{"msg":"login user=ada ok","n":3}"#).unwrap();
    assert_eq!(body, r#"{"msg":"login user=ada ok","n":3}"#);
    assert_eq!(
        fields,
        pairs(&[
            ("message", "login user=ada ok"),
            ("user_name", "ada"),
            ("env", "prod"),
        ])
    );
    // Extracting from the body: the values are spans of the body (no copy).
    let (parser, transform) = stages(
        "{type: json}",
        "[{type: extract, regex: 'id=(?P<id>\\d+)'}]",
    );
    let (mut line, mut chunks) = framed(b"plain id=42");
    let mut fields = Vec::new();
    parser.apply_with(&mut line, &chunks, 0, &mut fields, false);
    transform.apply(&mut line, &mut chunks, 0, &mut fields, 0);
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].value.get(&chunks), b"42");
    assert_eq!(
        fields[0].value.get(&chunks).as_ptr(),
        line.body.get(&chunks)[9..].as_ptr()
    );
}

#[test]
fn a_source_without_processors_has_an_empty_transform() {
    let yaml =
        "sources:\n  - name: a\n    include: [\"/x/*.log\"]\nsinks:\n  local: {type: blackhole}\n";
    let config = Config::parse(yaml, "t.yaml").unwrap();
    assert!(Transform::new(&config.sources[0].processors).is_empty());
    assert!(matches!(config.sources[0].parser, ParserConfig::None));
}

#[test]
fn invalid_steps_name_their_field() {
    for (processors, field, why) in [
        (
            "[{type: keep}]",
            "sources[0].processors[0].regex",
            "exactly one",
        ),
        (
            "[{type: drop, regex: a, equals: b}]",
            "sources[0].processors[0].regex",
            "exactly one",
        ),
        (
            "[{type: mask, regex: '(['}]",
            "sources[0].processors[0].regex",
            "",
        ),
        (
            "[{type: add_fields, fields: {a: b}}, {type: extract, regex: '\\d+'}]",
            "sources[0].processors[1].regex",
            "named capture",
        ),
        (
            "[{type: remove_fields, names: []}]",
            "sources[0].processors[0].names",
            "",
        ),
        (
            "[{type: rename_fields, fields: {}}]",
            "sources[0].processors[0].fields",
            "",
        ),
        (
            "[{type: keep, field: '', equals: x}]",
            "sources[0].processors[0].field",
            "",
        ),
        // Typos are serde's: the path, the field and the line.
        ("[{type: maks, regex: x}]", "sources[0].processors", "maks"),
        (
            "[{type: mask, regexp: x}]",
            "sources[0].processors",
            "line 4",
        ),
    ] {
        let err = config_error(processors);
        assert!(err.contains(field), "{processors}: {err}");
        assert!(err.contains(why), "{processors}: {err}");
    }
    let many = format!("[{}]", vec!["{type: keep, regex: x}"; 33].join(", "));
    assert!(config_error(&many).contains("sources[0].processors"));
}

//! A source's `processors` end to end, with the real binary: JSON lines filtered,
//! masked, reshaped and extracted on their way into the store, read back through
//! `logtap query`, and the filtering and masking counted in `/metrics`.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

const KEPT: usize = 300;

#[test]
fn records_are_filtered_masked_and_reshaped_before_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut text = String::new();
    for i in 0..KEPT {
        text.push_str(&format!(
            "{{\"level\":\"debug\",\"msg\":\"cache probe {i}\"}}\n\
             {{\"level\":\"info\",\"msg\":\"paid with card=4111-1111-1111-{:04} user=ada{i}\",\"n\":{i}}}\n",
            i % 10_000
        ));
    }
    open_append(&logs.join("app.log"))
        .write_all(text.as_bytes())
        .unwrap();
    let config = format!(
        "sources:\n  - name: app\n    include: [\"{}/*.log\"]\n    parser: {{type: json}}\n    \
         processors:\n      \
         - {{type: drop, field: level, equals: debug}}\n      \
         - {{type: mask, regex: '\\d{{4}}-\\d{{4}}-\\d{{4}}-(\\d{{4}})', replacement: '****-$1'}}\n      \
         - {{type: extract, field: msg, regex: 'user=(?P<user>\\w+)'}}\n      \
         - {{type: rename_fields, fields: {{msg: message}}}}\n      \
         - {{type: add_fields, fields: {{env: prod}}}}\n      \
         - {{type: remove_fields, names: [n]}}\n    \
         sink: local\n\
         sinks:\n  local: {{type: store}}\n",
        logs.display()
    );
    let mut agent = Agent::start(&dir.path().join("data"), &config);
    let store = agent.store_dir();
    wait_for(Duration::from_secs(30), "every kept record stored", || {
        store_records(&store).len() >= KEPT
    });
    let metrics = agent.metrics();
    assert!(agent.stop(), "clean exit\n{}", agent.log());

    let records = store_records(&store);
    assert_eq!(
        records.len(),
        KEPT,
        "the debug records were dropped, no other"
    );
    for (i, r) in records.iter().enumerate() {
        let body = String::from_utf8(body_bytes(r)).unwrap();
        let last4 = format!("{:04}", i % 10_000);
        assert_eq!(
            body,
            format!(
                "{{\"level\":\"info\",\"msg\":\"paid with card=****-{last4} user=ada{i}\",\"n\":{i}}}"
            ),
            "the body is masked"
        );
        let fields = &r["fields"];
        assert_eq!(fields["level"], "info");
        assert_eq!(
            fields["message"],
            format!("paid with card=****-{last4} user=ada{i}")
        );
        assert_eq!(fields["user"], format!("ada{i}"));
        assert_eq!(fields["env"], "prod");
        assert!(
            fields.get("msg").is_none() && fields.get("n").is_none(),
            "{r}"
        );
    }
    let all = serde_json::to_string(&records).unwrap();
    assert!(
        !all.contains("4111-1111"),
        "no card number left in the store"
    );
    let counted = |name| metric(&metrics, name, &[("config", "app")]) as usize;
    assert_eq!(counted("logtap_lines_filtered_total"), KEPT);
    assert_eq!(counted("logtap_lines_masked_total"), KEPT);
}

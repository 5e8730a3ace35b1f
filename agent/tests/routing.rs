//! Each source goes to the sink its config names: one source into the local store,
//! another into an NDJSON file and a third to stdout, in one run.

mod common;

use std::process::Command;

use common::*;

#[test]
fn each_source_reaches_its_own_sink() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("a.log"), "store seq=1\nstore seq=2\n").unwrap();
    std::fs::write(
        logs.join("b.log"),
        "{\"level\":\"warn\",\"msg\":\"file seq=3\"}\n",
    )
    .unwrap();
    std::fs::write(logs.join("c.log"), "stdout seq=4\n").unwrap();
    let data = dir.path().join("data");
    let ndjson = dir.path().join("out.ndjson");
    let config = dir.path().join("routing.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {data}\nmetrics: {{listen: \"\"}}\nsources:\n\
             \x20 - name: a\n    include: [\"{logs}/a.log\"]\n    sink: local\n\
             \x20 - name: b\n    include: [\"{logs}/b.log\"]\n    parser: {{type: json}}\n    sink: archive\n\
             \x20 - name: c\n    include: [\"{logs}/c.log\"]\n    sink: console\n\
             sinks:\n  local: {{type: store}}\n  archive: {{type: file, path: \"{ndjson}\"}}\n  console: {{type: stdout}}\n",
            data = data.display(),
            logs = logs.display(),
            ndjson = ndjson.display(),
        ),
    )
    .unwrap();
    let out = Command::new(logtap_bin())
        .args(["run", "--oneshot", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let stored: Vec<Vec<u8>> = store_records(&data.join("store"))
        .iter()
        .map(body_bytes)
        .collect();
    assert_eq!(
        stored,
        vec![b"store seq=1".to_vec(), b"store seq=2".to_vec()]
    );

    let archived: Vec<Value> = std::fs::read_to_string(&ndjson)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(archived.len(), 1);
    assert_eq!(
        archived[0]["fields"]["level"], "warn",
        "parsed fields reach the file sink"
    );
    assert!(archived[0]["path"].as_str().unwrap().ends_with("b.log"));

    let printed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed.len(), 1);
    assert_eq!(printed[0]["body"], "stdout seq=4");
}

//! Kubernetes events end to end: two real agents pointed at the fake API server
//! (list + watch of `events.k8s.io/v1` Events, GET/POST/PUT of a
//! `coordination.k8s.io/v1` Lease with `409 Conflict`s as the API server answers),
//! each with its own store. Exactly one ships; when it is killed the other takes the
//! Lease over and resumes from the point the first one wrote into it; cut off from
//! the API, it steps down before its Lease could expire, and leads again after; it
//! releases the Lease when it stops.

mod common;
#[path = "../src/discovery/watcher/fake_api.rs"]
#[allow(dead_code, reason = "the fake serves the watcher's unit tests too")]
mod fake_api;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use fake_api::FakeApi;
use serde_json::{Value, json};

const LEASE_NS: &str = "logtap-system";
const LEASE: &str = "logtap-events";
/// Short, to keep the handover quick: renewals every second.
const LEASE_SECONDS: u64 = 3;

fn config(api: &FakeApi, identity: &str) -> String {
    format!(
        "sinks:\n  local: {{type: store}}\n\
         batch: {{timeout: 100ms}}\n\
         cri: {{enabled: false}}\n\
         kubernetes: {{api_url: \"{}\", node_name: node-ev}}\n\
         kubernetes_events:\n  sink: local\n  identity: {identity}\n\
         \x20 lease: {{namespace: {LEASE_NS}, name: {LEASE}, duration: {LEASE_SECONDS}s}}\n",
        api.url()
    )
}

/// Event `seq`, last seen `base + seq` seconds after the epoch.
fn put_event(api: &FakeApi, base: i64, seq: u32) {
    let time = rfc3339(base + i64::from(seq));
    api.put_event(json!({
        "metadata": {
            "namespace": "shop", "name": format!("web-{seq}.17a"),
            "uid": format!("event-uid-{seq}"),
        },
        "eventTime": time,
        "note": format!("event {seq}"),
        "reason": "BackOff",
        "type": "Warning",
        "regarding": {"kind": "Pod", "namespace": "shop", "name": format!("web-{seq}"),
                      "uid": format!("pod-uid-{seq}")},
        "reportingController": "kubelet",
        "reportingInstance": "node-ev",
        "action": "Restarting",
        "series": {"count": seq + 1, "lastObservedTime": time},
    }));
}

/// RFC 3339 of `seconds` since the epoch, as the agent writes times.
fn rfc3339(seconds: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(seconds)
        .unwrap()
        .to_string()
}

/// The events' records in `store`, by their note's number.
fn shipped(store: &Path) -> BTreeMap<u32, Vec<Value>> {
    let mut by_seq: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
    if !store.is_dir() {
        return by_seq;
    }
    for r in query_json(store, &["--raw", "--source", "k8s://events"]) {
        let seq = r["fields"]["message"]
            .as_str()
            .and_then(|m| m.strip_prefix("event "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not an event record: {r}"));
        by_seq.entry(seq).or_default().push(r);
    }
    by_seq
}

fn leader(agent: &Agent) -> f64 {
    metric(&agent.metrics(), "logtap_events_leader", &[])
}

#[test]
fn one_agent_ships_the_events_and_the_other_takes_over_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start_new();
    let base = 1_800_000_000;
    for seq in 0..20 {
        put_event(&api, base, seq);
    }
    let mut a = Agent::start(&dir.path().join("a"), &config(&api, "agent-a"));
    wait_for(Duration::from_secs(20), "agent a to lead", || {
        leader(&a) == 1.0
    });
    let mut b = Agent::start(&dir.path().join("b"), &config(&api, "agent-b"));
    wait_for(Duration::from_secs(20), "agent b to run", || {
        metric(&b.metrics(), "logtap_events_lease_transitions_total", &[]) == 0.0
            && b.metrics().contains("logtap_events_leader")
    });
    for seq in 20..30 {
        put_event(&api, base, seq);
    }
    wait_for(Duration::from_secs(20), "agent a to ship 30 events", || {
        shipped(&a.store_dir()).len() == 30
    });
    // The resume point reaches the Lease at a renewal once the store acknowledged.
    let newest = rfc3339(base + 29);
    let mut point = String::new();
    wait_for(
        Duration::from_secs(10),
        "the resume point in the Lease",
        || {
            point = api.lease(LEASE_NS, LEASE).unwrap()["metadata"]["annotations"]
            ["logtap.dev/events-resume"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
            point == newest
        },
    );
    assert_eq!(leader(&b), 0.0, "one leader at a time");
    assert!(
        shipped(&b.store_dir()).is_empty(),
        "the standby ships nothing"
    );

    a.kill9();
    let killed = Instant::now();
    for seq in 30..40 {
        put_event(&api, base, seq);
    }
    wait_for(Duration::from_secs(15), "agent b to take over", || {
        leader(&b) == 1.0
    });
    let took = killed.elapsed();
    wait_for(
        Duration::from_secs(20),
        "agent b to ship the new events",
        || (30..40).all(|s| shipped(&b.store_dir()).contains_key(&s)),
    );
    // A leader that cannot reach the API stops shipping before its Lease could expire.
    api.stop();
    let cut = Instant::now();
    wait_for(Duration::from_secs(10), "agent b to step down", || {
        leader(&b) == 0.0
    });
    let stepped = cut.elapsed();
    api.start();
    wait_for(Duration::from_secs(15), "agent b to lead again", || {
        leader(&b) == 1.0
    });
    assert!(b.stop(), "clean exit\n{}", b.log());
    assert!(stepped < Duration::from_secs(LEASE_SECONDS), "{stepped:?}");

    // Within a lease duration plus a renew interval (and the time to see it).
    assert!(
        took < Duration::from_secs(LEASE_SECONDS * 2 + 2),
        "{took:?}"
    );
    // A clean exit gives the Lease up: the next agent need not wait for it to expire.
    let lease = api.lease(LEASE_NS, LEASE).unwrap();
    assert_eq!(lease["spec"].get("holderIdentity"), None, "{lease}");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    let (from_a, from_b) = (shipped(&a.store_dir()), shipped(&b.store_dir()));
    let repeated = (0..40u32)
        .filter(|s| from_a.contains_key(s) && from_b.contains_key(s))
        .count();
    eprintln!(
        "handover: b led {took:?} after the kill, stepped down {stepped:?} after the API \
         went away; {repeated} events shipped by both"
    );
    for seq in 0..40u32 {
        let copies: Vec<&Value> = from_a
            .get(&seq)
            .into_iter()
            .chain(from_b.get(&seq))
            .flatten()
            .collect();
        assert!(!copies.is_empty(), "event {seq} lost");
        // Repeats only at or after the point the old leader made durable.
        if copies.len() > 1 {
            assert!(
                seq >= 29,
                "event {seq} repeated before the resume point {point}"
            );
        }
        let f = &copies[0]["fields"];
        assert_eq!(f["reason"], "BackOff");
        assert_eq!(f["type"], "Warning");
        assert_eq!(f["regarding.kind"], "Pod");
        assert_eq!(f["regarding.namespace"], "shop");
        assert_eq!(f["regarding.name"], format!("web-{seq}").as_str());
        assert_eq!(f["regarding.uid"], format!("pod-uid-{seq}").as_str());
        assert_eq!(f["reporting_controller"], "kubelet");
        assert_eq!(f["series.count"], (seq + 1).to_string().as_str());
        assert_eq!(f["uid"], format!("event-uid-{seq}").as_str());
        assert_eq!(f["time"], rfc3339(base + i64::from(seq)).as_str());
    }
}

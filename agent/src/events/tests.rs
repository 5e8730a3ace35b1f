use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::api::events::v1::EventSeries;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

use super::lease::{Decision, decide};
use super::*;

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

fn held(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.into()),
        renew_time: Some(MicroTime(at(renewed))),
        lease_duration_seconds: Some(duration),
        ..LeaseSpec::default()
    }
}

#[test]
fn the_lease_is_created_renewed_taken_over_or_left_to_its_holder() {
    assert_eq!(decide(None, "a", at(0)), Decision::Create);
    assert_eq!(decide(Some(&held("a", 0, 15)), "a", at(5)), Decision::Renew);
    // Mine even when expired: no one else took it.
    assert_eq!(
        decide(Some(&held("a", 0, 15)), "a", at(60)),
        Decision::Renew
    );
    assert_eq!(
        decide(Some(&held("b", 0, 15)), "a", at(14)),
        Decision::StandBy { holder: "b".into() }
    );
    assert_eq!(
        decide(Some(&held("b", 0, 15)), "a", at(15)),
        Decision::TakeOver
    );
    assert_eq!(
        decide(Some(&held("b", 0, 15)), "a", at(16)),
        Decision::TakeOver
    );
    let released = LeaseSpec {
        holder_identity: Some(String::new()),
        ..held("b", 0, 15)
    };
    assert_eq!(decide(Some(&released), "a", at(1)), Decision::TakeOver);
    // Never renewed, never acquired: nothing says it is fresh.
    let unknown = LeaseSpec {
        renew_time: None,
        ..held("b", 0, 15)
    };
    assert_eq!(decide(Some(&unknown), "a", at(1)), Decision::TakeOver);
    // Acquired but not yet renewed: fresh from its acquisition.
    let acquired = LeaseSpec {
        renew_time: None,
        acquire_time: Some(MicroTime(at(0))),
        ..held("b", 0, 15)
    };
    assert!(matches!(
        decide(Some(&acquired), "a", at(1)),
        Decision::StandBy { .. }
    ));
}

#[test]
fn the_resume_point_never_passes_an_unacknowledged_event() {
    let mut t = ResumeTracker::default();
    assert_eq!(t.point(), None);
    t.shipped(10, Some(at(5)));
    t.shipped(20, Some(at(3)));
    t.shipped(30, None);
    t.shipped(40, Some(at(9)));
    assert_eq!(t.point(), None, "nothing acknowledged yet");
    t.acked(10);
    // at(5) is durable, at(3) is not: resuming from 5 would skip it.
    assert_eq!(t.point(), Some(at(3)));
    t.acked(25);
    assert_eq!(
        t.point(),
        Some(at(5)),
        "the newest durable time, 9 is pending"
    );
    t.acked(40);
    assert_eq!(t.point(), Some(at(9)));
    // A later event with an older time, pending, holds the point back.
    t.shipped(50, Some(at(1)));
    assert_eq!(t.point(), Some(at(1)));
}

fn event(name: &str, uid: &str, rv: &str, time: i64) -> KubeEvent {
    let mut e: KubeEvent = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": rv},
        "eventTime": at(time).to_string(),
        "note": "Back-off restarting failed container",
        "reason": "BackOff",
        "type": "Warning",
        "regarding": {"kind": "Pod", "namespace": "default", "name": "web-1", "uid": "pod-uid"},
        "reportingController": "kubelet",
        "reportingInstance": "node-1",
        "action": "Restarting",
    }))
    .unwrap();
    e.series = None;
    e
}

#[test]
fn an_event_renders_as_one_json_line_with_its_fields() {
    let mut e = event("web-1.abc", "e-uid", "7", 1);
    e.series = Some(EventSeries {
        count: 4,
        last_observed_time: MicroTime(at(8)),
    });
    let (line, time) = render(&e);
    assert_eq!(
        time,
        Some(at(8)),
        "a series is last seen at its last observation"
    );
    assert!(line.ends_with(b"\n"));
    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["message"], "Back-off restarting failed container");
    assert_eq!(v["reason"], "BackOff");
    assert_eq!(v["type"], "Warning");
    assert_eq!(v["regarding.kind"], "Pod");
    assert_eq!(v["regarding.namespace"], "default");
    assert_eq!(v["regarding.name"], "web-1");
    assert_eq!(v["regarding.uid"], "pod-uid");
    assert_eq!(v["reporting_controller"], "kubelet");
    assert_eq!(v["series.count"], 4);
    assert_eq!(v["uid"], "e-uid");
    assert_eq!(v["time"], at(8).to_string());
    // Absent parts are absent members.
    let bare: KubeEvent =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
    let (line, time) = render(&bare);
    assert_eq!(time, None);
    assert_eq!(&line[..], b"{\"name\":\"x\"}\n");
}

#[test]
fn a_new_term_skips_what_is_durable_and_a_relist_ships_only_changes() {
    let mut f = EventFilter::new(Some(at(5)));
    let shipped = |f: &mut EventFilter, events: Vec<Event<KubeEvent>>| -> Vec<String> {
        events
            .into_iter()
            .filter_map(|e| f.apply(e))
            .map(|(line, _)| {
                let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
                v["name"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let list = |items: Vec<KubeEvent>| {
        let mut events = vec![Event::Init];
        events.extend(items.into_iter().map(Event::InitApply));
        events.push(Event::InitDone);
        events
    };
    // Before the point: durable already. At the point: may repeat, never skipped.
    let first = shipped(
        &mut f,
        list(vec![
            event("old", "1", "1", 4),
            event("edge", "2", "2", 5),
            event("new", "3", "3", 6),
        ]),
    );
    assert_eq!(first, ["edge", "new"]);
    let watched = shipped(&mut f, vec![Event::Apply(event("later", "4", "4", 7))]);
    assert_eq!(watched, ["later"]);
    // History compacted: the re-list ships what changed only.
    let relisted = shipped(
        &mut f,
        list(vec![
            event("edge", "2", "2", 5),
            event("new", "3", "9", 8),
            event("later", "4", "4", 7),
            event("unseen", "5", "10", 9),
        ]),
    );
    assert_eq!(relisted, ["new", "unseen"]);
}

/// Against the fake API server, which answers as the real one: `409` on a create of
/// an existing Lease and on a replace from a stale resourceVersion.
#[test]
fn of_two_agents_one_leads_a_stale_write_stands_by_and_the_resume_point_travels() {
    use crate::discovery::watcher::fake_api::FakeApi;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::PostParams;
    use lease::{LeaseClient, Outcome, resume_of};

    let fake = FakeApi::start_new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = client(&WatcherConfig::new("", Some(fake.url())))
            .await
            .unwrap();
        let api: Api<Lease> = Api::namespaced(client, "logtap-system");
        let agent = |identity: &str| LeaseClient {
            api: api.clone(),
            name: "logtap-events".into(),
            identity: identity.into(),
            duration_seconds: 3,
        };
        let (a, b) = (agent("a"), agent("b"));
        let (first, second) = tokio::join!(a.attempt(None), b.attempt(None));
        let outcomes = [first.unwrap(), second.unwrap()];
        let leaders = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Leading { acquired: true, .. }))
            .count();
        assert_eq!(leaders, 1, "{outcomes:?}");
        let (leader, other) = match outcomes[0] {
            Outcome::Leading { .. } => (&a, &b),
            Outcome::StandBy => (&b, &a),
        };
        assert_eq!(other.attempt(None).await.unwrap(), Outcome::StandBy);
        // The leader renews with its resume point; a write from before is refused.
        let stale = api.get("logtap-events").await.unwrap();
        let point = Timestamp::from_second(1_800_000_042).unwrap();
        assert_eq!(
            leader.attempt(Some(point)).await.unwrap(),
            Outcome::Leading {
                acquired: false,
                resume: None
            }
        );
        let refused = api
            .replace("logtap-events", &PostParams::default(), &stale)
            .await;
        assert!(
            matches!(&refused, Err(kube::Error::Api(s)) if s.code == 409),
            "{refused:?}"
        );
        let now = api.get("logtap-events").await.unwrap();
        assert_eq!(resume_of(&now), Some(point));
        let spec = now.spec.unwrap();
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.lease_duration_seconds, Some(3));
        // Given up, it is taken over at once, with the point the leader left.
        assert!(!other.release(None).await.unwrap(), "not its Lease");
        assert!(leader.release(None).await.unwrap());
        assert_eq!(
            other.attempt(None).await.unwrap(),
            Outcome::Leading {
                acquired: true,
                resume: Some(point)
            }
        );
        let spec = api.get("logtap-events").await.unwrap().spec.unwrap();
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(
            spec.holder_identity.as_deref(),
            Some(other.identity.as_str())
        );
    });
    let lease = fake.lease("logtap-system", "logtap-events").unwrap();
    assert_eq!(
        lease["metadata"]["annotations"]["logtap.dev/events-resume"],
        "2027-01-15T08:00:42Z"
    );
}

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateTerminated, ContainerStatus, Namespace, Pod, PodSpec,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::fake_api::FakeApi;
use super::*;
use crate::discovery::ContainerMeta;

const NODE: &str = "node-a";
const UID_A: &str = "00000000-0000-0000-0000-00000000000a";
const UID_B: &str = "00000000-0000-0000-0000-00000000000b";
const UID_C: &str = "00000000-0000-0000-0000-00000000000c";
const UID_D: &str = "00000000-0000-0000-0000-00000000000d";
const GRACE: Duration = Duration::from_millis(300);

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A running pod with one container `app` (image `<name>:1`, id `containerd://id-<name>`).
fn pod(namespace: &str, name: &str, uid: &str, node: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            labels: Some(map(labels)),
            annotations: Some(map(&[("team", "payments"), ("ignored", "x")])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "app".into(),
                image: Some(format!("{name}:1")),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "app".into(),
                image: format!("docker.io/library/{name}:1"),
                container_id: Some(format!("containerd://id-{name}")),
                restart_count: 1,
                last_state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        container_id: Some(format!("containerd://old-{name}")),
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(map(labels)),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// A fake API with namespace `shop` (`env=prod`), pod `cart` (A) on this node and pod
/// `elsewhere` (B) on another node.
fn seeded_api() -> FakeApi {
    let api = FakeApi::start_new();
    api.put_namespace(namespace("shop", &[("env", "prod")]));
    api.put_pod(pod("shop", "cart", UID_A, NODE, &[("app", "cart")]));
    api.put_pod(pod("shop", "elsewhere", UID_B, "node-b", &[("app", "x")]));
    api
}

fn start(api: &FakeApi) -> (PodCache, PodWatcher) {
    let cache = PodCache::new(vec!["team".into()], GRACE);
    let config = WatcherConfig {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..WatcherConfig::new(NODE, Some(api.url()))
    };
    let watcher = PodWatcher::spawn(config, cache.clone()).unwrap();
    (cache, watcher)
}

/// Polls `condition` until it holds; panics after 3 s with `what`.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn label(cache: &PodCache, uid: &str, key: &str) -> Option<String> {
    cache.get(uid)?.labels.get(key).cloned()
}

fn namespace_label(cache: &PodCache, uid: &str, key: &str) -> Option<String> {
    cache.get(uid)?.namespace_labels.get(key).cloned()
}

#[test]
fn initial_list_fills_the_cache_with_this_nodes_pods() {
    let api = seeded_api();
    let (cache, _watcher) = start(&api);
    eventually("pod A with its namespace's labels", || {
        namespace_label(&cache, UID_A, "env").as_deref() == Some("prod")
    });
    eventually("api up", || cache.api_up());

    let a = cache.get(UID_A).unwrap();
    assert_eq!((a.namespace.as_str(), a.name.as_str()), ("shop", "cart"));
    assert_eq!(a.labels, map(&[("app", "cart")]));
    assert_eq!(
        a.annotations,
        map(&[("team", "payments")]),
        "only configured keys"
    );
    assert_eq!(a.node_name.as_deref(), Some(NODE));
    assert_eq!(
        a.containers,
        vec![ContainerMeta {
            name: "app".into(),
            image: "cart:1".into(),
            container_id: Some("id-cart".into()),
            restart_count: 1,
            last_container_id: Some("old-cart".into()),
        }]
    );
    assert!(
        cache.get(UID_B).is_none(),
        "a pod of another node is not watched"
    );
    assert_eq!(cache.len(), 1);
}

#[test]
fn a_large_list_is_read_in_pages() {
    let api = seeded_api();
    for i in 0..1100 {
        let uid = format!("00000000-0000-0000-0001-{i:012}");
        api.put_pod_silently(pod("shop", &format!("p{i}"), &uid, NODE, &[]));
    }
    let (cache, _watcher) = start(&api);
    eventually("all 1101 pods", || cache.len() == 1101 && cache.api_up());
    assert_eq!(api.pod_lists(), 3, "pages of 500");
    assert!(cache.get("00000000-0000-0000-0001-000000001099").is_some());
}

#[test]
fn watch_events_add_modify_and_delete() {
    let api = seeded_api();
    let (cache, _watcher) = start(&api);
    eventually("pod A", || cache.get(UID_A).is_some());

    api.put_pod(pod("shop", "other-node", UID_D, "node-b", &[]));
    api.put_pod(pod("shop", "orders", UID_C, NODE, &[("app", "orders")]));
    eventually("added pod C", || label(&cache, UID_C, "app").is_some());

    api.put_pod(pod(
        "shop",
        "cart",
        UID_A,
        NODE,
        &[("app", "cart"), ("v", "2")],
    ));
    eventually("modified pod A", || label(&cache, UID_A, "v").is_some());

    api.put_namespace(namespace("shop", &[("env", "staging")]));
    eventually("namespace labels of A and C follow", || {
        namespace_label(&cache, UID_A, "env").as_deref() == Some("staging")
            && namespace_label(&cache, UID_C, "env").as_deref() == Some("staging")
    });

    api.delete_pod("shop", "cart");
    // Deleted pods stay for the grace period, for the last lines of their containers.
    let deleted = Instant::now();
    std::thread::sleep(Duration::from_millis(100));
    assert!(cache.get(UID_A).is_some(), "kept during the grace period");
    eventually("deleted pod A forgotten after the grace period", || {
        cache.get(UID_A).is_none()
    });
    assert!(deleted.elapsed() >= GRACE);
    assert!(cache.get(UID_C).is_some());
    assert!(
        cache.get(UID_D).is_none(),
        "a pod of another node is not watched"
    );
}

#[test]
fn gone_410_makes_the_watcher_relist_and_recover() {
    let api = seeded_api();
    let (cache, _watcher) = start(&api);
    eventually("pod A", || cache.get(UID_A).is_some());
    let lists = api.pod_lists();

    // Changes no watch event reports: only a re-list can reveal them.
    api.put_pod_silently(pod("shop", "orders", UID_C, NODE, &[]));
    api.delete_pod_silently("shop", "cart");
    api.expire();

    eventually("pod C from the re-list", || cache.get(UID_C).is_some());
    assert!(api.pod_lists() > lists);
    eventually(
        "pod A, missing from the re-list, forgotten after its grace",
        || cache.get(UID_A).is_none(),
    );
    assert!(cache.api_up(), "a 410 is routine, not an outage");

    // And the new watch works.
    api.put_pod(pod("shop", "late", UID_D, NODE, &[]));
    eventually("pod D from the new watch", || cache.get(UID_D).is_some());
}

#[test]
fn api_server_restart_keeps_the_cache_and_recovers() {
    let api = seeded_api();
    let (cache, _watcher) = start(&api);
    eventually("api up with pod A", || {
        cache.api_up() && cache.get(UID_A).is_some()
    });

    api.stop();
    eventually("api down", || !cache.api_up());
    assert!(cache.get(UID_A).is_some(), "an outage keeps what is known");
    // Changes made while the server is away are seen once it is back.
    api.put_pod(pod("shop", "orders", UID_C, NODE, &[]));
    std::thread::sleep(Duration::from_millis(100));
    assert!(cache.get(UID_C).is_none());

    api.start();
    eventually("api up again", || cache.api_up());
    eventually("pod C after the restart", || cache.get(UID_C).is_some());
    assert!(cache.get(UID_A).is_some());

    // A restart during which nothing changed: the watches deliver no event, yet the
    // API is known to be back as soon as they are re-established.
    api.stop();
    eventually("api down again", || !cache.api_up());
    api.start();
    eventually("api up after a quiet restart", || cache.api_up());
}

#[test]
fn unreachable_api_server_is_reported_and_blocks_nothing() {
    let api = FakeApi::start_new();
    let url = api.url();
    api.stop();
    let cache = PodCache::new(Vec::new(), GRACE);
    let config = WatcherConfig {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..WatcherConfig::new(NODE, Some(url))
    };
    let started = Instant::now();
    let watcher = PodWatcher::spawn(config, cache.clone()).unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!cache.api_up());
    assert!(cache.get(UID_A).is_none());
    let stopping = Instant::now();
    watcher.stop();
    assert!(stopping.elapsed() < Duration::from_millis(500));
}

#[test]
fn wait_for_is_bounded() {
    let api = seeded_api();
    let (cache, _watcher) = start(&api);
    eventually("pod A", || cache.get(UID_A).is_some());
    let started = Instant::now();
    assert!(cache.wait_for(UID_A, Duration::from_secs(2)).is_some());
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "a known pod is immediate"
    );

    let started = Instant::now();
    let found = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            api.put_pod(pod("shop", "orders", UID_C, NODE, &[]));
        });
        cache.wait_for(UID_C, Duration::from_secs(2))
    });
    assert_eq!(found.map(|p| p.name.clone()).as_deref(), Some("orders"));
    assert!(started.elapsed() >= Duration::from_millis(190));

    let started = Instant::now();
    assert!(cache.wait_for(UID_D, Duration::from_millis(300)).is_none());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(1));
}

#[test]
fn backoff_doubles_with_jitter_up_to_its_max_and_resets() {
    let ms = Duration::from_millis;
    let mut backoff = Backoff::new(ms(100), ms(400));
    let windows = [100, 200, 400, 400, 400];
    for window in windows {
        let delay = backoff.next_delay();
        assert!(
            delay >= ms(window / 2) && delay <= ms(window),
            "{delay:?} for {window}"
        );
    }
    backoff.reset();
    assert!(backoff.next_delay() <= ms(100));
}

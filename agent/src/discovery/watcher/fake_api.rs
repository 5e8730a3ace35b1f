//! A fake Kubernetes API server for tests: just enough HTTP/1.1 to serve list and watch
//! of pods, namespaces and `logtap.dev` `LogCollection` objects the way the real one
//! does, and the `status` subresource of the latter.
//!
//! - `GET /api/v1/pods?fieldSelector=spec.nodeName%3D<node>&...` answers a `PodList`
//!   with `metadata.resourceVersion`; `...&watch=true&resourceVersion=N` a chunked
//!   stream of newline-delimited `{"type":"ADDED|MODIFIED|DELETED","object":{...}}`.
//! - [`FakeApi::expire`] compacts history: open watches get a `410 Gone` `ERROR` event
//!   and end, as do later watches from an older resource version.
//! - [`FakeApi::stop`] / [`FakeApi::start`] take the server away (dropping every open
//!   connection) and bring it back on the same port with the same objects.
//! - `*_silently` changes objects without a watch event, as if they happened during a
//!   window the client can only learn about by re-listing.
//! - `LogCollection` objects are untyped JSON (an invalid spec must be servable):
//!   [`FakeApi::put_collection`] bumps `metadata.generation` when the spec changes, and
//!   `PATCH …/logcollections/<name>/status` applies a JSON merge patch (RFC 7386) to the
//!   status, as the API server does, without moving the generation; both are watch
//!   events.
//! - Events (`events.k8s.io/v1`, untyped JSON): list and watch of all namespaces;
//!   [`FakeApi::put_event`] creates or replaces one.
//! - Leases (`coordination.k8s.io/v1`): `GET`, `POST` (create: `409 AlreadyExists`
//!   when there is one) and `PUT` (replace: `409 Conflict` when the body's
//!   `metadata.resourceVersion` is not the current one) of
//!   `/apis/coordination.k8s.io/v1/namespaces/<ns>/leases[/<name>]`, as the API server
//!   answers them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Pods,
    Namespaces,
    Collections,
    Events,
}

const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/events";
const LEASES_IN: &str = "/apis/coordination.k8s.io/v1/namespaces/";

const COLLECTIONS_PATH: &str = "/apis/logtap.dev/v1alpha1/logcollections";
const COLLECTIONS_IN: &str = "/apis/logtap.dev/v1alpha1/namespaces/";

struct Logged {
    rv: u64,
    kind: Kind,
    event: &'static str,
    object: Value,
    node: Option<String>,
}

#[derive(Default)]
struct World {
    rv: u64,
    /// By `namespace/name`.
    pods: BTreeMap<String, Pod>,
    namespaces: BTreeMap<String, Namespace>,
    /// `LogCollection` objects by `namespace/name`.
    collections: BTreeMap<String, Value>,
    /// `events.k8s.io/v1` Events by `namespace/name`.
    events: BTreeMap<String, Value>,
    /// `coordination.k8s.io/v1` Leases by `namespace/name`.
    leases: BTreeMap<String, Value>,
    /// Status patches received.
    status_patches: usize,
    history: Vec<Logged>,
    /// Watches from a resource version older than this get `410 Gone`.
    compacted: u64,
    pod_lists: usize,
}

pub struct FakeApi {
    addr: SocketAddr,
    world: Arc<Mutex<World>>,
    /// Bumped on every change, waking the open watches.
    changes: watch::Sender<u64>,
    /// `true` while serving; `false` closes the listener and every connection.
    serving: watch::Sender<bool>,
    runtime: tokio::runtime::Runtime,
}

impl FakeApi {
    pub fn start_new() -> FakeApi {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let api = FakeApi {
            addr: listener.local_addr().unwrap(),
            world: Arc::default(),
            changes: watch::channel(0).0,
            serving: watch::channel(false).0,
            runtime,
        };
        api.serve(listener);
        api
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Brings a stopped server back on the same port.
    pub fn start(&self) {
        let listener = self.runtime.block_on(TcpListener::bind(self.addr)).unwrap();
        self.serve(listener);
    }

    /// Closes the listener and drops every open connection.
    pub fn stop(&self) {
        self.serving.send_replace(false);
        // Let the accept loop and connections see it before the caller goes on.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    /// List requests (pages) of pods served.
    pub fn pod_lists(&self) -> usize {
        self.world.lock().unwrap().pod_lists
    }

    pub fn put_pod(&self, pod: Pod) {
        self.change(|w| {
            let key = pod_key(&pod);
            let event = if w.pods.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            let pod = w.stamp_pod(pod);
            w.log(Kind::Pods, event, &pod, pod_node(&pod));
            w.pods.insert(key, pod);
        });
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) {
        self.change(|w| {
            let pod = w.pods.remove(&format!("{namespace}/{name}")).unwrap();
            let pod = w.stamp_pod(pod);
            w.log(Kind::Pods, "DELETED", &pod, pod_node(&pod));
        });
    }

    pub fn put_pod_silently(&self, pod: Pod) {
        self.change(|w| {
            let pod = w.stamp_pod(pod);
            w.pods.insert(pod_key(&pod), pod);
        });
    }

    pub fn delete_pod_silently(&self, namespace: &str, name: &str) {
        self.change(|w| {
            w.pods.remove(&format!("{namespace}/{name}")).unwrap();
        });
    }

    pub fn put_namespace(&self, ns: Namespace) {
        self.change(|w| {
            let name = ns.metadata.name.clone().unwrap();
            let event = if w.namespaces.contains_key(&name) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            w.rv += 1;
            let mut ns = ns;
            ns.metadata.resource_version = Some(w.rv.to_string());
            w.log(Kind::Namespaces, event, &ns, None);
            w.namespaces.insert(name, ns);
        });
    }

    /// Creates or replaces the `LogCollection` `namespace/name` with `spec` (any JSON:
    /// the agent must report what is wrong with it). A new spec bumps the generation;
    /// the status is kept.
    pub fn put_collection(&self, namespace: &str, name: &str, spec: Value) {
        self.change(|w| {
            let key = format!("{namespace}/{name}");
            w.rv += 1;
            let rv = w.rv;
            let (event, object) = match w.collections.get_mut(&key) {
                Some(o) => {
                    if o["spec"] != spec {
                        let generation = o["metadata"]["generation"].as_i64().unwrap_or(1);
                        o["metadata"]["generation"] = json!(generation + 1);
                        o["spec"] = spec;
                    }
                    o["metadata"]["resourceVersion"] = json!(rv.to_string());
                    ("MODIFIED", o.clone())
                }
                None => {
                    let o = json!({
                        "apiVersion": "logtap.dev/v1alpha1",
                        "kind": "LogCollection",
                        "metadata": {
                            "namespace": namespace, "name": name, "generation": 1,
                            "uid": format!("uid-{namespace}-{name}"),
                            "resourceVersion": rv.to_string(),
                        },
                        "spec": spec,
                    });
                    w.collections.insert(key, o.clone());
                    ("ADDED", o)
                }
            };
            w.log(Kind::Collections, event, &object, None);
        });
    }

    pub fn delete_collection(&self, namespace: &str, name: &str) {
        self.change(|w| {
            let mut o = w
                .collections
                .remove(&format!("{namespace}/{name}"))
                .unwrap();
            w.rv += 1;
            o["metadata"]["resourceVersion"] = json!(w.rv.to_string());
            w.log(Kind::Collections, "DELETED", &o, None);
        });
    }

    /// Creates or replaces an `events.k8s.io/v1` Event (its `metadata.namespace` and
    /// `metadata.name` name it); stamps its resource version.
    pub fn put_event(&self, event: Value) {
        self.change(|w| {
            let key = format!(
                "{}/{}",
                event["metadata"]["namespace"].as_str().unwrap_or_default(),
                event["metadata"]["name"].as_str().unwrap()
            );
            w.rv += 1;
            let mut event = event;
            event["apiVersion"] = json!("events.k8s.io/v1");
            event["kind"] = json!("Event");
            event["metadata"]["resourceVersion"] = json!(w.rv.to_string());
            let kind = if w.events.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            w.log(Kind::Events, kind, &event, None);
            w.events.insert(key, event);
        });
    }

    /// The Lease `namespace/name` as a GET would return it.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        let world = self.world.lock().unwrap();
        world.leases.get(&format!("{namespace}/{name}")).cloned()
    }

    /// The object `namespace/name` as a GET would return it (status included).
    pub fn collection(&self, namespace: &str, name: &str) -> Option<Value> {
        let world = self.world.lock().unwrap();
        world
            .collections
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    /// How many status patches were received.
    pub fn status_patches(&self) -> usize {
        self.world.lock().unwrap().status_patches
    }

    /// Compacts history: every open watch and every watch from an older resource
    /// version gets `410 Gone`.
    pub fn expire(&self) {
        self.change(|w| {
            w.rv += 1;
            w.compacted = w.rv;
        });
    }

    fn change(&self, f: impl FnOnce(&mut World)) {
        let rv = {
            let mut world = self.world.lock().unwrap();
            f(&mut world);
            world.rv
        };
        self.changes.send_replace(rv);
    }

    fn serve(&self, listener: TcpListener) {
        self.serving.send_replace(true);
        let mut serving = self.serving.subscribe();
        let connections = self.serving.clone();
        let world = self.world.clone();
        let changes = self.changes.clone();
        self.runtime.spawn(async move {
            loop {
                tokio::select! {
                    _ = serving.wait_for(|s| !*s) => return,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { return };
                        let connection = handle(stream, world.clone(), changes.subscribe());
                        let mut serving = connections.subscribe();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = serving.wait_for(|s| !*s) => {}
                                _ = connection => {}
                            }
                        });
                    }
                }
            }
        });
    }
}

impl World {
    fn stamp_pod(&mut self, mut pod: Pod) -> Pod {
        self.rv += 1;
        pod.metadata.resource_version = Some(self.rv.to_string());
        pod
    }

    fn log(
        &mut self,
        kind: Kind,
        event: &'static str,
        object: &impl Serialize,
        node: Option<String>,
    ) {
        self.history.push(Logged {
            rv: self.rv,
            kind,
            event,
            object: serde_json::to_value(object).unwrap(),
            node,
        });
    }
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn pod_node(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.node_name.clone()
}

struct Request {
    kind: Kind,
    watch: bool,
    resource_version: u64,
    /// From `fieldSelector=spec.nodeName=<node>`, the only selector the fake knows.
    node: Option<String>,
    /// Page size of a list, and where the page starts (the fake's continue token is
    /// the offset).
    limit: Option<usize>,
    offset: usize,
}

fn parse_request(head: &str) -> Option<Request> {
    let target = head
        .lines()
        .next()?
        .strip_prefix("GET ")?
        .split(' ')
        .next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let kind = match path {
        "/api/v1/pods" => Kind::Pods,
        "/api/v1/namespaces" => Kind::Namespaces,
        COLLECTIONS_PATH => Kind::Collections,
        EVENTS_PATH => Kind::Events,
        _ => return None,
    };
    let mut request = Request {
        kind,
        watch: false,
        resource_version: 0,
        node: None,
        limit: None,
        offset: 0,
    };
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key {
            "watch" => request.watch = value == "true" || value == "1",
            "resourceVersion" => request.resource_version = value.parse().unwrap_or(0),
            "limit" => request.limit = value.parse().ok(),
            "continue" => request.offset = value.parse().unwrap_or(0),
            "fieldSelector" => {
                request.node = value.strip_prefix("spec.nodeName=").map(str::to_owned)
            }
            _ => {}
        }
    }
    Some(request)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

async fn handle(mut stream: TcpStream, world: Arc<Mutex<World>>, changes: watch::Receiver<u64>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut body = head.split_off(end);
    let head = String::from_utf8_lossy(&head);
    let method = head.split(' ').next().unwrap_or("");
    let target = head
        .lines()
        .next()
        .unwrap_or("")
        .split(' ')
        .nth(1)
        .unwrap_or("");
    let path = target.split('?').next().unwrap_or("").to_owned();
    let lease = path.starts_with(LEASES_IN) && path.contains("/leases");
    if head.starts_with("PATCH ") || matches!(method, "POST" | "PUT") || lease {
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while body.len() < length {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
        let (status, answer) = if lease {
            lease_request(method, &path, &body, &world)
        } else {
            patch_status(&head, &body, &world)
        };
        let _ = respond(&mut stream, status, &answer).await;
        return;
    }
    let Some(request) = parse_request(&head) else {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                          "reason": "NotFound", "code": 404, "message": "not found"});
        let _ = respond(&mut stream, "404 Not Found", &body).await;
        return;
    };
    if request.watch {
        let _ = stream_watch(&mut stream, &request, &world, changes).await;
    } else {
        let body = list(&request, &world);
        let _ = respond(&mut stream, "200 OK", &body).await;
    }
}

/// `PATCH /apis/logtap.dev/v1alpha1/namespaces/<ns>/logcollections/<name>/status`
/// with a merge patch: the object afterwards, or a `Status` error.
fn patch_status(head: &str, body: &[u8], world: &Mutex<World>) -> (&'static str, Value) {
    let not_found = || {
        (
            "404 Not Found",
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "NotFound", "code": 404, "message": "not found"}),
        )
    };
    let target = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("PATCH "))
        .and_then(|t| t.split(' ').next())
        .unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let Some((namespace, rest)) = path
        .strip_prefix(COLLECTIONS_IN)
        .and_then(|r| r.split_once("/logcollections/"))
    else {
        return not_found();
    };
    let Some(name) = rest.strip_suffix("/status") else {
        return not_found();
    };
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return (
            "400 Bad Request",
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "BadRequest", "code": 400, "message": "not JSON"}),
        );
    };
    let mut world = world.lock().unwrap();
    let key = format!("{namespace}/{name}");
    if !world.collections.contains_key(&key) {
        return not_found();
    }
    world.rv += 1;
    world.status_patches += 1;
    let rv = world.rv;
    let object = world.collections.get_mut(&key).unwrap();
    // The status subresource only ever changes the status.
    if let Some(status) = patch.get("status") {
        merge_patch(&mut object["status"], status);
    }
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    let object = object.clone();
    world.log(Kind::Collections, "MODIFIED", &object, None);
    drop(world);
    ("200 OK", object)
}

fn status(code: u16, reason: &str, message: String) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": reason, "code": code, "message": message})
}

/// `GET`/`PUT` of `…/namespaces/<ns>/leases/<name>` and `POST …/namespaces/<ns>/leases`.
fn lease_request(
    method: &str,
    path: &str,
    body: &[u8],
    world: &Mutex<World>,
) -> (&'static str, Value) {
    let Some((namespace, rest)) = path
        .strip_prefix(LEASES_IN)
        .and_then(|r| r.split_once("/leases"))
    else {
        return ("404 Not Found", status(404, "NotFound", "not found".into()));
    };
    let name = rest.trim_start_matches('/');
    let mut world = world.lock().unwrap();
    let parsed = || serde_json::from_slice::<Value>(body).ok();
    match (method, name) {
        ("GET", name) if !name.is_empty() => {
            match world.leases.get(&format!("{namespace}/{name}")) {
                Some(lease) => ("200 OK", lease.clone()),
                None => (
                    "404 Not Found",
                    status(404, "NotFound", format!("leases {name:?} not found")),
                ),
            }
        }
        ("POST", "") => {
            let Some(mut lease) = parsed() else {
                return (
                    "400 Bad Request",
                    status(400, "BadRequest", "not JSON".into()),
                );
            };
            let name = lease["metadata"]["name"].as_str().unwrap_or("").to_owned();
            let key = format!("{namespace}/{name}");
            if world.leases.contains_key(&key) {
                return (
                    "409 Conflict",
                    status(
                        409,
                        "AlreadyExists",
                        format!("leases {name:?} already exists"),
                    ),
                );
            }
            world.rv += 1;
            lease["metadata"]["namespace"] = json!(namespace);
            lease["metadata"]["resourceVersion"] = json!(world.rv.to_string());
            lease["metadata"]["uid"] = json!(format!("uid-lease-{namespace}-{name}"));
            world.leases.insert(key, lease.clone());
            ("201 Created", lease)
        }
        ("PUT", name) if !name.is_empty() => {
            let Some(mut lease) = parsed() else {
                return (
                    "400 Bad Request",
                    status(400, "BadRequest", "not JSON".into()),
                );
            };
            let key = format!("{namespace}/{name}");
            let rv = world.rv;
            let Some(current) = world.leases.get_mut(&key) else {
                return (
                    "404 Not Found",
                    status(404, "NotFound", format!("leases {name:?} not found")),
                );
            };
            // As the API server: no resourceVersion is an unconditional update.
            let expected = &lease["metadata"]["resourceVersion"];
            if !(expected.is_null() || *expected == current["metadata"]["resourceVersion"]) {
                return (
                    "409 Conflict",
                    status(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on leases.coordination.k8s.io \
                             {name:?}: the object has been modified; please apply your \
                             changes to the latest version and try again"
                        ),
                    ),
                );
            }
            lease["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
            lease["metadata"]["uid"] = current["metadata"]["uid"].clone();
            *current = lease.clone();
            world.rv += 1;
            ("200 OK", lease)
        }
        _ => (
            "405 Method Not Allowed",
            status(405, "MethodNotAllowed", format!("{method} {path}")),
        ),
    }
}

/// RFC 7386: objects merge member by member, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().unwrap();
    for (k, v) in members {
        if v.is_null() {
            object.remove(k);
        } else {
            merge_patch(object.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).unwrap();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}

fn list(request: &Request, world: &Mutex<World>) -> Value {
    let mut world = world.lock().unwrap();
    let (kind, mut items): (&str, Vec<Value>) = match request.kind {
        Kind::Pods => {
            world.pod_lists += 1;
            let items = world
                .pods
                .values()
                .filter(|p| request.node.is_none() || pod_node(p) == request.node)
                .map(|p| serde_json::to_value(p).unwrap())
                .collect();
            ("PodList", items)
        }
        Kind::Namespaces => {
            let items = world
                .namespaces
                .values()
                .map(|n| serde_json::to_value(n).unwrap())
                .collect();
            ("NamespaceList", items)
        }
        Kind::Collections => (
            "LogCollectionList",
            world.collections.values().cloned().collect(),
        ),
        Kind::Events => ("EventList", world.events.values().cloned().collect()),
    };
    let mut metadata = json!({"resourceVersion": world.rv.to_string()});
    items.drain(..request.offset.min(items.len()));
    if let Some(limit) = request.limit
        && items.len() > limit
    {
        items.truncate(limit);
        metadata["continue"] = json!((request.offset + limit).to_string());
    }
    let api_version = match request.kind {
        Kind::Collections => "logtap.dev/v1alpha1",
        Kind::Events => "events.k8s.io/v1",
        Kind::Pods | Kind::Namespaces => "v1",
    };
    json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": metadata,
        "items": items,
    })
}

async fn stream_watch(
    stream: &mut TcpStream,
    request: &Request,
    world: &Mutex<World>,
    mut changes: watch::Receiver<u64>,
) -> std::io::Result<()> {
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .await?;
    let mut from = request.resource_version;
    loop {
        changes.borrow_and_update();
        let (events, expired) = {
            let world = world.lock().unwrap();
            if from < world.compacted {
                (Vec::new(), true)
            } else {
                let events: Vec<(u64, Value)> = world
                    .history
                    .iter()
                    .filter(|e| e.rv > from && e.kind == request.kind)
                    .filter(|e| request.node.is_none() || e.node == request.node)
                    .map(|e| (e.rv, json!({"type": e.event, "object": e.object})))
                    .collect();
                (events, false)
            }
        };
        if expired {
            let gone = json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from}"),
                "reason": "Expired", "code": 410}});
            write_chunk(stream, &gone).await?;
            stream.write_all(b"0\r\n\r\n").await?;
            return stream.shutdown().await;
        }
        for (rv, event) in events {
            write_chunk(stream, &event).await?;
            from = rv;
        }
        if changes.changed().await.is_err() {
            return Ok(());
        }
    }
}

async fn write_chunk(stream: &mut TcpStream, value: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).unwrap();
    line.push(b'\n');
    stream
        .write_all(format!("{:x}\r\n", line.len()).as_bytes())
        .await?;
    stream.write_all(&line).await?;
    stream.write_all(b"\r\n").await?;
    stream.flush().await
}

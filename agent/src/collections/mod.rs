//! Live `LogCollection` objects: watched from the API, translated into source configs
//! and a sink, merged with the config file into the effective config, and reported
//! back in each object's `status`. Collections containers declare in their
//! environment ([`env`]) are merged after them, in the same form.
//!
//! - The watcher thread (its own current-thread tokio runtime, as the pod watcher)
//!   lists and watches `logtap.dev` `LogCollection` objects of every namespace, as
//!   untyped JSON: an object with an unknown field must still arrive, to be reported
//!   `Invalid` naming the field, not fail the whole list.
//! - [`Collections::effective`] validates every object and merges the valid ones into
//!   the file config: source `<ns>/<name>/<source>`, sink `<ns>/<name>`, appended after
//!   the file's own, so the file config's indexes and precedence never move.
//! - [`Collections::generation`] moves when a spec changes (not when only a status
//!   does): the pipeline then quiesces and rebuilds (see `pipeline::run`).
//! - Every second the watcher thread compares each object's status as it should be
//!   (validity, matched containers from the [`MatchBoard`]) with what it last wrote,
//!   and PATCHes the `status` subresource when they differ.
//!
//! # Failures
//!
//! An unreachable API server keeps the last known objects applied (nothing is
//! stopped because the API is away), sets `logtap_collections_api_up` to 0, and the
//! watch retries with the pod watcher's backoff.

pub mod env;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher::Event;
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::config::crd::{
    CollectionCondition, LogCollection, LogCollectionSpec, LogCollectionStatus, SourceInput,
    StreamSelection,
};
use crate::config::schema::RawSink;
use crate::config::{Config, ConfigError, SinkConfig, SourceConfig};
use crate::discovery::watcher::{Backoff, WatcherConfig, client, list_watch};
use crate::discovery::{PodLogRef, Resource};
use crate::frame::Stream;
use crate::metrics::catalogue::{COLLECTION_STATUS_WRITES_TOTAL, COLLECTIONS, COLLECTIONS_API_UP};

/// How often statuses are compared with what was last written.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// What one namespace's users may cost a node through `LogCollection` objects outside
/// the admin namespace (see [`bound_tenant`]); beyond them an object is `Valid=False`,
/// naming the field.
pub mod tenant_caps {
    /// A source's `max_line_size` (the buffer each of its files may hold).
    pub const MAX_LINE_BYTES: usize = 1 << 20;
    /// A store sink's `max_size`; also its default for such objects.
    pub const MAX_STORE_BYTES: u64 = 2 << 30;
    /// Text of [`MAX_STORE_BYTES`], the store default outside the admin namespace.
    pub const MAX_STORE_SIZE: &str = "2GiB";
    /// Segments a store may hold (`max_size / segment_size`): files and fds.
    pub const MAX_STORE_SEGMENTS: u64 = 256;
    /// Objects applied per namespace (in name order).
    pub const MAX_COLLECTIONS: usize = 16;
}

/// Which containers each source config reads now: written by the pipeline as it
/// opens and ends files, read for each collection's `matched_containers`.
#[derive(Default)]
pub struct MatchBoard {
    /// Source config name → container (`<pod uid>/<container>`) → open files.
    by_source: Mutex<HashMap<Arc<str>, HashMap<String, usize>>>,
}

impl MatchBoard {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, HashMap<String, usize>>> {
        self.by_source.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A file of config `source` opened (`delta` 1) or ended (-1).
    pub fn update(&self, source: &Arc<str>, path: &Path, delta: isize) {
        if let Some(log) = PodLogRef::from_path(path) {
            self.update_container(source, &log, delta);
        }
    }

    /// A source of config `source` reading container `log` opened (1) or ended (-1).
    pub fn update_container(&self, source: &Arc<str>, log: &PodLogRef, delta: isize) {
        let key = format!("{}/{}", log.pod_uid, log.container);
        let mut board = self.lock();
        let containers = board.entry(source.clone()).or_default();
        let count = containers.entry(key.clone()).or_default();
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            containers.remove(&key);
        }
    }

    /// Distinct containers read by any of `sources`.
    pub fn containers(&self, sources: &[Arc<str>]) -> usize {
        let board = self.lock();
        let mut all = HashSet::new();
        for s in sources {
            if let Some(c) = board.get(s) {
                all.extend(c.keys().cloned());
            }
        }
        all.len()
    }
}

/// One `LogCollection` as last seen, and what became of it.
struct Object {
    generation: Option<i64>,
    spec: Value,
    outcome: Outcome,
    /// The status last written (or found on the object).
    reported: Option<LogCollectionStatus>,
}

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// Not merged into an effective config yet.
    Pending,
    Applied {
        sources: Vec<Arc<str>>,
        warnings: Vec<String>,
    },
    Invalid(String),
}

#[derive(Default)]
struct State {
    /// By `<namespace>/<name>`.
    objects: BTreeMap<String, Object>,
}

struct Shared {
    state: Mutex<State>,
    generation: AtomicU64,
    listed: AtomicBool,
    board: Arc<MatchBoard>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running collections watcher; stop (or drop) it to end its thread.
pub struct Collections {
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Collections {
    /// Starts watching `LogCollection` objects. Never fails: without a client the
    /// error is logged and only the config file applies.
    pub fn start(config: &Config) -> Collections {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            generation: AtomicU64::new(0),
            listed: AtomicBool::new(false),
            board: Arc::new(MatchBoard::default()),
        });
        metrics::gauge!(COLLECTIONS_API_UP).set(0.0);
        let watcher = WatcherConfig::new(
            config.kubernetes.node_name.clone(),
            config.kubernetes.api_url.clone(),
        );
        let (shutdown, shutdown_rx) = oneshot::channel();
        let thread = spawn(watcher, shared.clone(), shutdown_rx)
            .map_err(|e| {
                tracing::error!(
                    error = format!("{e:#}"),
                    "LogCollection objects are not watched"
                );
            })
            .ok();
        Collections {
            shared,
            shutdown: Some(shutdown),
            thread,
        }
    }

    /// Moves whenever the set of specs changes.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    pub fn board(&self) -> Arc<MatchBoard> {
        self.shared.board.clone()
    }

    /// Waits up to `max` for the first list, so the first effective config already
    /// holds the existing objects (instead of a rebuild right after start).
    pub fn wait_listed(&self, max: Duration) {
        let deadline = std::time::Instant::now() + max;
        while self.thread.is_some()
            && !self.shared.listed.load(Ordering::Acquire)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The config file plus every valid collection. Records each object's outcome
    /// for its status.
    pub fn effective(&self, file: &Config) -> Config {
        let mut state = self.shared.lock();
        let mut config = file.clone();
        let (mut ready, mut invalid) = (0u64, 0u64);
        for (key, object) in state.objects.iter_mut() {
            object.outcome = match merge(&mut config, key, &object.spec) {
                Ok((sources, warnings)) => {
                    ready += 1;
                    Outcome::Applied { sources, warnings }
                }
                Err(e) => {
                    invalid += 1;
                    tracing::warn!(collection = %key, error = %e, "LogCollection not applied");
                    Outcome::Invalid(e.to_string())
                }
            };
        }
        metrics::gauge!(COLLECTIONS, "state" => "ready").set(ready as f64);
        metrics::gauge!(COLLECTIONS, "state" => "invalid").set(invalid as f64);
        config
    }

    /// Ends the watch and waits for its thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the LogCollection watcher thread panicked");
        }
    }
}

impl Drop for Collections {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Validates the collection `key` (`<ns>/<name>`) and appends its sources and sink
/// to `config`; the names of its sources, and warnings for what it asks that this
/// agent does not collect.
/// What a `LogCollection` outside the admin namespace may do: the agent runs as root
/// on every node, so a namespace's users must not reach through it. Such an object
/// selects only its own namespace's containers (an explicit other namespace is an
/// error, none means its own), reads no node files, and ships only to sinks that
/// write no path of its choosing (a store gets its own directory,
/// `<data_dir>/collections/<namespace>/<name>`).
fn confine_to_namespace(
    spec: &mut LogCollectionSpec,
    namespace: &str,
    name: &str,
    admin: &str,
    data_dir: &Path,
) -> Result<(), (String, String)> {
    let outside = |what: &str| format!("{what}: only LogCollections in namespace {admin:?} may");
    let namespaces = &mut spec.selector.namespaces;
    if let Some(other) = namespaces.include.iter().find(|n| n.as_str() != namespace) {
        return Err((
            "spec.selector.namespaces.include".into(),
            format!(
                "{other:?} is not this object's namespace ({namespace:?}); {}",
                outside("select other namespaces")
            ),
        ));
    }
    namespaces.include = vec![namespace.to_string()];
    for (i, source) in spec.sources.iter().enumerate() {
        if matches!(source.input, SourceInput::HostFile { .. }) {
            return Err((
                format!("spec.sources[{i}].input"),
                outside("read files of the node (host_file)"),
            ));
        }
    }
    match &mut spec.sink {
        RawSink::File { .. } => Err(("spec.sink.type".into(), outside("write to a file sink"))),
        RawSink::Store { path: Some(_), .. } => Err((
            "spec.sink.path".into(),
            outside("choose a store path (leave it out: the object gets its own store)"),
        )),
        RawSink::Store { path, .. } => {
            *path = Some(format!(
                "{}/{namespace}/{name}",
                data_dir.join("collections").display()
            ));
            Ok(())
        }
        // The agent's stdout is its own pod's log, which the agent collects: a
        // tenant's lines would come back as the admin namespace's.
        RawSink::Stdout {} => Err((
            "spec.sink.type".into(),
            outside(
                "write to the agent's stdout (its lines would come back as the agent pod's own logs)",
            ),
        )),
        RawSink::Blackhole {} => Ok(()),
        RawSink::Kafka(k) => {
            // Every path and client property would let a tenant make the agent (root)
            // read a node file and send it to a broker of the tenant's choosing.
            let chosen = [
                ("spool.path", k.spool.path.is_some()),
                ("dead_letter", k.dead_letter.is_some()),
                ("tls", k.tls.is_some()),
                ("sasl", k.sasl.is_some()),
                ("properties", !k.properties.is_empty()),
            ];
            if let Some((field, _)) = chosen.iter().find(|(_, set)| *set) {
                return Err((
                    format!("spec.sink.{field}"),
                    outside(&format!("set {field} of a kafka sink")),
                ));
            }
            k.spool.path = Some(tenant_spool(data_dir, namespace, name));
            Ok(())
        }
        RawSink::Otlp(o) => {
            let chosen = [
                ("spool.path", o.spool.path.is_some()),
                ("dead_letter", o.dead_letter.is_some()),
            ];
            if let Some((field, _)) = chosen.iter().find(|(_, set)| *set) {
                return Err((
                    format!("spec.sink.{field}"),
                    outside(&format!("set {field} of an otlp sink")),
                ));
            }
            o.spool.path = Some(tenant_spool(data_dir, namespace, name));
            Ok(())
        }
    }
}

/// The [`tenant_caps`] of a validated object outside the admin namespace.
fn bound_tenant(
    valid: &crate::config::crd::ValidatedCollection,
    admin: &str,
) -> Result<(), (String, String)> {
    let beyond = |what: String| format!("{what} outside namespace {admin:?}");
    for (i, s) in valid.sources.iter().enumerate() {
        if s.max_line_bytes > tenant_caps::MAX_LINE_BYTES {
            return Err((
                format!("spec.sources[{i}].max_line_size"),
                beyond(format!(
                    "at most {} bytes (1MiB)",
                    tenant_caps::MAX_LINE_BYTES
                )),
            ));
        }
    }
    if let SinkConfig::Store {
        max_bytes,
        segment_bytes,
        ..
    } = &valid.sink
    {
        if *max_bytes > tenant_caps::MAX_STORE_BYTES {
            return Err((
                "spec.sink.max_size".into(),
                beyond(format!("at most {}", tenant_caps::MAX_STORE_SIZE)),
            ));
        }
        let segments = max_bytes.div_ceil((*segment_bytes).max(1));
        if segments > tenant_caps::MAX_STORE_SEGMENTS {
            return Err((
                "spec.sink.segment_size".into(),
                beyond(format!(
                    "max_size / segment_size is {segments} segments: at most {}",
                    tenant_caps::MAX_STORE_SEGMENTS
                )),
            ));
        }
    }
    Ok(())
}

/// The spool directory of a tenant's network sink: inside its own collection directory.
fn tenant_spool(data_dir: &Path, namespace: &str, name: &str) -> String {
    format!(
        "{}/{namespace}/{name}/spool",
        data_dir.join("collections").display()
    )
}

fn merge(
    config: &mut Config,
    key: &str,
    raw_spec: &Value,
) -> Result<(Vec<Arc<str>>, Vec<String>), ConfigError> {
    let object = format!("LogCollection {key}");
    let mut spec = LogCollectionSpec::from_json(raw_spec, &object)?;
    let invalid = |field: &str, message: String| ConfigError::Invalid {
        file: object.clone(),
        field: field.to_string(),
        message,
    };
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    let tenant = namespace != config.collections.admin_namespace;
    if tenant {
        confine_to_namespace(
            &mut spec,
            namespace,
            name,
            &config.collections.admin_namespace,
            &config.data_dir,
        )
        .map_err(|(field, message)| invalid(&field, message))?;
        let applied = config
            .sinks
            .keys()
            .filter(|k| k.split_once('/').is_some_and(|(ns, _)| ns == namespace))
            .count();
        if applied >= tenant_caps::MAX_COLLECTIONS {
            return Err(invalid(
                "metadata.name",
                format!(
                    "namespace {namespace:?} has {applied} LogCollections applied already: at most {} outside namespace {:?}",
                    tenant_caps::MAX_COLLECTIONS,
                    config.collections.admin_namespace
                ),
            ));
        }
        if let RawSink::Store { max_size, .. } = &mut spec.sink
            && raw_spec["sink"].get("max_size").is_none()
        {
            *max_size = tenant_caps::MAX_STORE_SIZE.into();
        }
    }
    // A network sink's spool defaults to a directory of the object's own, not to the
    // one shared name `validate_as` would give every collection.
    let spool_path = match &mut spec.sink {
        RawSink::Kafka(k) => Some(&mut k.spool.path),
        RawSink::Otlp(o) => Some(&mut o.spool.path),
        _ => None,
    };
    if let Some(path) = spool_path
        && path.is_none()
    {
        *path = Some(tenant_spool(&config.data_dir, namespace, name));
    }
    let valid = spec.validate_as(&object, &config.data_dir)?;
    if tenant {
        bound_tenant(&valid, &config.collections.admin_namespace)
            .map_err(|(field, message)| invalid(&field, message))?;
    }
    let sink_name: Arc<str> = Arc::from(key);
    if config.sinks.contains_key(&sink_name) {
        return Err(invalid(
            "metadata.name",
            format!("sink {key:?} exists already"),
        ));
    }
    if let Some((path, field)) = valid.sink.exclusive_path() {
        let clash = config
            .sinks
            .iter()
            .find(|(_, s)| s.exclusive_path().is_some_and(|(p, _)| p == path));
        if let Some((other, _)) = clash {
            return Err(invalid(
                &format!("spec.sink.{field}"),
                format!("{} is also the path of sink {other:?}", path.display()),
            ));
        }
    }
    let selector = Arc::new(valid.selector);
    let mut sources = Vec::new();
    let warnings = Vec::new();
    for (i, s) in valid.sources.into_iter().enumerate() {
        let name: Arc<str> = Arc::from(format!("{key}/{}", s.name));
        let mut source = SourceConfig {
            format: s.format,
            max_line_bytes: s.max_line_bytes,
            multiline: s.multiline,
            parser: s.parser,
            processors: s.processors,
            ..SourceConfig::new(&name, Vec::new(), key)
        };
        match s.input {
            SourceInput::ContainerStdout { stream } => {
                source.include = vec![config.collections.pod_log_glob()];
                source.selector = Some(selector.clone());
                source.stream = match stream {
                    StreamSelection::All => None,
                    StreamSelection::Stdout => Some(Stream::Stdout),
                    StreamSelection::Stderr => Some(Stream::Stderr),
                };
            }
            SourceInput::HostFile { include, exclude } => {
                source.include = include;
                source.exclude = exclude;
            }
            SourceInput::ContainerFile { path } => {
                source.container_paths = vec![path];
                source.selector = Some(selector.clone());
            }
        }
        if config.sources.iter().any(|s| s.name == name) {
            return Err(invalid(
                &format!("spec.sources[{i}].name"),
                format!("source {name:?} exists already"),
            ));
        }
        sources.push(source);
    }
    let names: Vec<Arc<str>> = sources.iter().map(|s| s.name.clone()).collect();
    config.sources.extend(sources);
    config.sinks.insert(sink_name, valid.sink);
    Ok((names, warnings))
}

fn spawn(
    watcher: WatcherConfig,
    shared: Arc<Shared>,
    shutdown: oneshot::Receiver<()>,
) -> anyhow::Result<JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime for the LogCollection watcher")?;
    let client = runtime.block_on(client(&watcher))?;
    std::thread::Builder::new()
        .name("logtap-collections".into())
        .spawn(move || runtime.block_on(run(watcher, client, shared, shutdown)))
        .context("spawning the LogCollection watcher thread")
}

fn resource() -> ApiResource {
    ApiResource::erase::<LogCollection>(&())
}

async fn run(
    watcher: WatcherConfig,
    client: Client,
    shared: Arc<Shared>,
    shutdown: oneshot::Receiver<()>,
) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource());
    let watch = {
        let shared = shared.clone();
        let mut listed: Option<HashSet<String>> = None;
        list_watch(
            api,
            None,
            Backoff::new(watcher.initial_backoff, watcher.max_backoff),
            Resource::LogCollections,
            |up| metrics::gauge!(COLLECTIONS_API_UP).set(if up { 1.0 } else { 0.0 }),
            move |event| match event {
                Event::Init => listed = Some(HashSet::new()),
                Event::InitApply(o) => {
                    if let Some(key) = apply(&shared, &o)
                        && let Some(listed) = listed.as_mut()
                    {
                        listed.insert(key);
                    }
                }
                Event::InitDone => {
                    if let Some(listed) = listed.take() {
                        let mut state = shared.lock();
                        let before = state.objects.len();
                        state.objects.retain(|k, _| listed.contains(k));
                        if state.objects.len() != before {
                            shared.generation.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    shared.listed.store(true, Ordering::Release);
                }
                Event::Apply(o) => {
                    apply(&shared, &o);
                }
                Event::Delete(o) => {
                    let key = key_of(&o);
                    if shared.lock().objects.remove(&key).is_some() {
                        tracing::info!(collection = %key, "LogCollection deleted");
                        shared.generation.fetch_add(1, Ordering::AcqRel);
                    }
                }
            },
        )
    };
    let statuses = async {
        let mut tick = tokio::time::interval(STATUS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            report(&client, &shared).await;
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = async { tokio::join!(watch, statuses) } => {}
    }
}

fn key_of(o: &DynamicObject) -> String {
    format!(
        "{}/{}",
        o.metadata.namespace.as_deref().unwrap_or_default(),
        o.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Records an added or modified object; a changed spec moves the generation (a status
/// written by an agent comes back as a modification too, and must not).
fn apply(shared: &Shared, o: &DynamicObject) -> Option<String> {
    let key = key_of(o);
    let spec = o.data.get("spec").cloned().unwrap_or(Value::Null);
    let reported = o
        .data
        .get("status")
        .and_then(|s| serde_json::from_value::<LogCollectionStatus>(s.clone()).ok());
    let mut state = shared.lock();
    match state.objects.get_mut(&key) {
        Some(existing) if existing.spec == spec => {
            existing.generation = o.metadata.generation;
            return Some(key);
        }
        Some(existing) => {
            existing.spec = spec;
            existing.generation = o.metadata.generation;
            existing.outcome = Outcome::Pending;
        }
        None => {
            state.objects.insert(
                key.clone(),
                Object {
                    generation: o.metadata.generation,
                    spec,
                    outcome: Outcome::Pending,
                    reported,
                },
            );
        }
    }
    tracing::info!(collection = %key, "LogCollection changed; applying");
    shared.generation.fetch_add(1, Ordering::AcqRel);
    Some(key)
}

/// The status an object should have now; `None` while its outcome is pending.
fn desired(object: &Object, board: &MatchBoard, now: &str) -> Option<LogCollectionStatus> {
    let condition = |type_: &str, ok: bool, reason: &str, message: String| CollectionCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: Some(now.into()),
    };
    Some(match &object.outcome {
        Outcome::Pending => return None,
        Outcome::Invalid(message) => LogCollectionStatus {
            matched_containers: 0,
            errors: vec![message.clone()],
            observed_generation: object.generation,
            conditions: vec![
                condition("Valid", false, "InvalidSpec", message.clone()),
                condition("Ready", false, "Invalid", message.clone()),
            ],
        },
        Outcome::Applied { sources, warnings } => {
            let matched = board.containers(sources) as u32;
            LogCollectionStatus {
                matched_containers: matched,
                errors: warnings.clone(),
                observed_generation: object.generation,
                conditions: vec![
                    condition("Valid", true, "Valid", String::new()),
                    condition(
                        "Ready",
                        true,
                        "Collecting",
                        format!("{matched} containers matched on this node"),
                    ),
                ],
            }
        }
    })
}

/// Two statuses that differ only in transition times say the same.
fn same(a: &LogCollectionStatus, b: &LogCollectionStatus) -> bool {
    let strip = |s: &LogCollectionStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = None;
        }
        s
    };
    strip(a) == strip(b)
}

async fn report(client: &Client, shared: &Shared) {
    let now = rfc3339(SystemTime::now());
    let due: Vec<(String, LogCollectionStatus)> = {
        let state = shared.lock();
        state
            .objects
            .iter()
            .filter_map(|(key, o)| {
                let want = desired(o, &shared.board, &now)?;
                let changed = o.reported.as_ref().is_none_or(|r| !same(r, &want));
                changed.then(|| (key.clone(), want))
            })
            .collect()
    };
    for (key, status) in due {
        let Some((namespace, name)) = key.split_once('/') else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource());
        let patch = serde_json::json!({ "status": status_patch(&status) });
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                metrics::counter!(COLLECTION_STATUS_WRITES_TOTAL, "result" => "ok").increment(1);
                if let Some(o) = shared.lock().objects.get_mut(&key) {
                    o.reported = Some(status);
                }
            }
            Err(e) => {
                metrics::counter!(COLLECTION_STATUS_WRITES_TOTAL, "result" => "error").increment(1);
                tracing::debug!(collection = %key, error = %e, "status update failed; retrying");
            }
        }
    }
}

/// The status as a JSON merge patch. A merge patch keeps every member it does not
/// name, and the status type leaves empty members out: a list of errors that became
/// empty must be removed by name (`null`), or the old errors stay on the object.
fn status_patch(status: &LogCollectionStatus) -> Value {
    let mut patch = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Some(members) = patch.as_object_mut() {
        for key in ["errors", "observed_generation", "conditions"] {
            members.entry(key).or_insert(Value::Null);
        }
    }
    patch
}

/// `2024-05-01T12:00:00Z`.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests;

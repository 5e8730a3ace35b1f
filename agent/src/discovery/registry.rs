//! The node's containers by id, cgroup and log path, as the container runtime reports
//! them.
//!
//! [`ContainerRegistry`] is fed three ways:
//! - a periodic full rescan from CRI ([`ContainerRegistry::rescan`], run by
//!   [`ContainerRegistry::spawn_rescanner`]): the safety net that catches what the
//!   event-driven path missed and forgets containers the runtime removed;
//! - [`ContainerRegistry::refresh`] for one new container, as soon as a lifecycle event
//!   (an eBPF `cgroup_mkdir`) names it;
//! - [`ContainerRegistry::known_by_log_path`] for a new CRI log file the runtime has
//!   not reported yet: the file's pod and container are asked of CRI (by the kubelet's
//!   labels) on the rescanner thread, never on the caller's;
//! - while CRI is unreachable, a scan of the pod log directory (`/var/log/pods`), which
//!   gives namespace, pod, pod UID and container name from the paths, but no id, env
//!   or labels.
//!
//! # Failures
//!
//! An unreachable runtime never blocks a reader for long: lookups answer from memory;
//! log-path lookups of unknown files are queued for the rescanner thread;
//! [`refresh`](ContainerRegistry::refresh) calls CRI (bounded by the client's timeout)
//! only while the runtime is up, and at most once per [`RETRY_WHILE_DOWN`] while it is
//! down. The outage shows as `logtap_cri_up` 0 and a warning at most once per
//! [`WARN_EVERY`].
//!
//! # Performance
//!
//! Lookups take a read lock and clone one [`ContainerInfo`]: callers look a container
//! up once per source (a log file, a cgroup), not per line. No lock is held across a
//! CRI call.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::PodLogRef;
use super::cri::{
    ContainerInfo, ContainerState, CriClient, CriError, container_id_from_cgroup_path,
};
use crate::metrics::catalogue::{CRI_UP, REGISTRY_CONTAINERS};

/// While the runtime is down, on-demand refreshes try it at most this often.
pub const RETRY_WHILE_DOWN: Duration = Duration::from_secs(1);
/// An outage is logged at most this often.
pub const WARN_EVERY: Duration = Duration::from_secs(60);
/// A container the runtime no longer lists stays readable this long (its last lines
/// are often read after the kubelet removed it).
pub const DEFAULT_REMOVAL_GRACE: Duration = Duration::from_secs(60);
/// An id CRI did not know is not asked about again for this long.
const NOT_FOUND_TTL: Duration = Duration::from_secs(5);
/// Bound of the not-found memory (ids of non-Kubernetes cgroups).
const NOT_FOUND_MAX: usize = 4096;
/// A log path asked about is not queued again for this long (callers poll it).
const ASKED_TTL: Duration = Duration::from_secs(1);
/// Bound of the log-path lookup queue and of its memory of recent questions.
const WANTED_MAX: usize = 4096;

struct Entry {
    info: ContainerInfo,
    /// When a rescan first missed it.
    missing_since: Option<Instant>,
}

#[derive(Default)]
struct State {
    by_id: HashMap<String, Entry>,
    /// CRI log path → container id.
    by_log_path: HashMap<PathBuf, String>,
    /// What the last pod-log-directory scan found, by log path (no ids).
    scanned: HashMap<PathBuf, ContainerInfo>,
    not_found: HashMap<String, Instant>,
}

struct Shared {
    cri: Option<CriClient>,
    pods_dir: PathBuf,
    removal_grace: Duration,
    state: RwLock<State>,
    cri_up: AtomicBool,
    /// Last CRI attempt that failed, and last outage warning.
    down: Mutex<DownState>,
    /// Log paths waiting for a CRI lookup on the rescanner thread.
    wanted: Mutex<Wanted>,
    wake: Condvar,
    /// Moves whenever what CRI reports about a container changes.
    generation: AtomicU64,
}

#[derive(Default)]
struct Wanted {
    queue: Vec<PathBuf>,
    asked: HashMap<PathBuf, Instant>,
}

#[derive(Default)]
struct DownState {
    last_attempt: Option<Instant>,
    last_warning: Option<Instant>,
}

/// The node's containers; cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct ContainerRegistry {
    shared: Arc<Shared>,
}

impl ContainerRegistry {
    /// A registry asking `cri` (none: CRI disabled) and falling back to the pod log
    /// directory `pods_dir`. Empty until the first [`rescan`](Self::rescan).
    pub fn new(cri: Option<CriClient>, pods_dir: PathBuf) -> ContainerRegistry {
        ContainerRegistry::with_removal_grace(cri, pods_dir, DEFAULT_REMOVAL_GRACE)
    }

    /// Like [`new`](Self::new), keeping containers the runtime stopped listing for
    /// `removal_grace`.
    pub fn with_removal_grace(
        cri: Option<CriClient>,
        pods_dir: PathBuf,
        removal_grace: Duration,
    ) -> ContainerRegistry {
        metrics::gauge!(CRI_UP).set(0.0);
        ContainerRegistry {
            shared: Arc::new(Shared {
                cri,
                pods_dir,
                removal_grace,
                state: RwLock::new(State::default()),
                cri_up: AtomicBool::new(false),
                down: Mutex::new(DownState::default()),
                wanted: Mutex::new(Wanted::default()),
                wake: Condvar::new(),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// Whether the last CRI call succeeded.
    pub fn cri_up(&self) -> bool {
        self.shared.cri_up.load(Ordering::Relaxed)
    }

    /// Whether a runtime is configured at all (else only the pod log directory).
    pub fn has_cri(&self) -> bool {
        self.shared.cri.is_some()
    }

    /// Moves whenever a container's runtime facts were added or changed: callers that
    /// keep facts per source look again only then (one atomic load otherwise).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Lists every container from CRI and replaces what the registry holds; containers
    /// no longer listed are dropped after the removal grace. Returns how many CRI
    /// listed.
    ///
    /// When CRI is disabled or fails, scans the pod log directory instead (kept until
    /// CRI answers again) and returns the CRI error (`Ok` with the scanned count when
    /// CRI is disabled).
    pub fn rescan(&self) -> Result<usize, CriError> {
        let Some(cri) = &self.shared.cri else {
            return Ok(self.scan_pods_dir());
        };
        let listed = match cri.list_containers() {
            Ok(listed) => listed,
            Err(e) => {
                self.mark_down(&e);
                self.scan_pods_dir();
                return Err(e);
            }
        };
        self.mark_up();
        let count = listed.len();
        let now = Instant::now();
        let mut state = self.write();
        let seen: HashSet<String> = listed.iter().map(|c| c.id.clone()).collect();
        let mut changed = false;
        for info in listed {
            changed |= insert(&mut state, info);
        }
        let grace = self.shared.removal_grace;
        let mut gone = Vec::new();
        for (id, entry) in state.by_id.iter_mut() {
            if seen.contains(id) {
                continue;
            }
            let since = *entry.missing_since.get_or_insert(now);
            if now.duration_since(since) >= grace {
                gone.push(id.clone());
            }
        }
        for id in gone {
            remove(&mut state, &id);
        }
        state.scanned.clear();
        state.not_found.clear();
        self.publish_len(&state);
        if changed {
            self.shared.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(count)
    }

    /// Asks CRI about one container (a new one) and records the answer; `None` when
    /// CRI does not know it or cannot be asked (then what is known already, if any).
    pub fn refresh(&self, id: &str) -> Option<ContainerInfo> {
        let Some(cri) = &self.shared.cri else {
            return self.get(id);
        };
        if !self.should_try_cri() {
            return self.get(id);
        }
        match cri.container(id) {
            Ok(Some(info)) => {
                self.mark_up();
                let mut state = self.write();
                state.not_found.remove(id);
                if insert(&mut state, info.clone()) {
                    self.shared.generation.fetch_add(1, Ordering::AcqRel);
                }
                self.publish_len(&state);
                Some(info)
            }
            Ok(None) => {
                self.mark_up();
                let mut state = self.write();
                if state.not_found.len() >= NOT_FOUND_MAX {
                    state.not_found.clear();
                }
                state.not_found.insert(id.to_owned(), Instant::now());
                state.by_id.get(id).map(|e| e.info.clone())
            }
            Err(e) => {
                if e.is_unreachable() {
                    self.mark_down(&e);
                } else {
                    tracing::debug!(id, error = %e, "CRI container status");
                }
                self.get(id)
            }
        }
    }

    /// Asks CRI for the containers' ids and states only, and refreshes the
    /// containers that are new or whose state changed (started, stopped): how
    /// sources that follow running containers (`container_paths`) learn of them
    /// within a second instead of at the next full [`rescan`](Self::rescan).
    /// Returns how many were refreshed. Does nothing while CRI is down or disabled.
    pub fn refresh_changed(&self) -> Result<usize, CriError> {
        let Some(cri) = &self.shared.cri else {
            return Ok(0);
        };
        if !self.should_try_cri() {
            return Ok(0);
        }
        let listed = match cri.list_container_states() {
            Ok(listed) => listed,
            Err(e) => {
                if e.is_unreachable() {
                    self.mark_down(&e);
                }
                return Err(e);
            }
        };
        self.mark_up();
        let changed: Vec<String> = {
            let state = self.read();
            listed
                .into_iter()
                .filter(|(id, s)| state.by_id.get(id).is_none_or(|e| e.info.state != *s))
                .map(|(id, _)| id)
                .collect()
        };
        for id in &changed {
            self.refresh(id);
        }
        Ok(changed.len())
    }

    /// The container with this full id, if known.
    pub fn get(&self, id: &str) -> Option<ContainerInfo> {
        self.read().by_id.get(id).map(|e| e.info.clone())
    }

    /// The container whose cgroup this is (a path as `/proc/<pid>/cgroup` shows it, or
    /// the OCI spec's `cgroupsPath`): from memory, else asked of CRI. While CRI is
    /// down, a cgroup under `pod<uid>` of a pod with a single container in the pod log
    /// directory gives that container, with the id from the path.
    ///
    /// A container recorded while it was still `Created` (its cgroup appears while
    /// the runtime starts it, before it has a pid) is asked about again.
    pub fn by_cgroup_path(&self, path: &[u8]) -> Option<ContainerInfo> {
        let id = container_id_from_cgroup_path(path)?;
        if let Some(info) = self.get(id) {
            if info.state == ContainerState::Created {
                return Some(self.refresh(id).unwrap_or(info));
            }
            return Some(info);
        }
        if self.recently_not_found(id) {
            return None;
        }
        if let Some(info) = self.refresh(id) {
            return Some(info);
        }
        if self.cri_up() {
            return None;
        }
        let uid = pod_uid_from_cgroup_path(path)?;
        let state = self.read();
        let mut of_pod = state
            .scanned
            .values()
            .filter(|c| c.pod.as_ref().is_some_and(|p| p.pod_uid == uid));
        let first = of_pod.next()?;
        let single = of_pod.all(|c| c.name == first.name);
        single.then(|| {
            let latest = state
                .scanned
                .values()
                .filter(|c| c.pod.as_ref().is_some_and(|p| p.pod_uid == uid))
                .max_by_key(|c| c.restart_count)
                .unwrap_or(first);
            ContainerInfo {
                id: id.to_owned(),
                ..latest.clone()
            }
        })
    }

    /// The container writing this CRI log file (or that wrote it, for a rotated
    /// `<n>.log.<suffix>`): from CRI when known, else from the path alone (namespace,
    /// pod, UID, container name and restart).
    pub fn by_log_path(&self, path: &Path) -> Option<ContainerInfo> {
        {
            let state = self.read();
            let live = unrotated(path);
            if let Some(info) = [Some(path), live.as_deref()]
                .into_iter()
                .flatten()
                .find_map(|p| state.by_id.get(state.by_log_path.get(p)?))
            {
                return Some(info.info.clone());
            }
            if let Some(info) = state.scanned.get(path) {
                return Some(info.clone());
            }
        }
        PodLogRef::from_path(path).map(|pod| info_from_log_path(path, pod))
    }

    /// The container writing this CRI log file (or that wrote it, when rotated) as the
    /// runtime reported it; `None` while the runtime has not (then, with a runtime
    /// configured, the file's pod and container are queued for a CRI lookup on the
    /// rescanner thread: ask again later, [`generation`](Self::generation) moves when
    /// it is answered). Never calls CRI itself.
    pub fn known_by_log_path(&self, path: &Path) -> Option<ContainerInfo> {
        let log = PodLogRef::from_path(path)?;
        {
            let state = self.read();
            let live = unrotated(path);
            let exact = [Some(path), live.as_deref()]
                .into_iter()
                .flatten()
                .find_map(|p| state.by_id.get(state.by_log_path.get(p)?));
            // The kubelet's names, for a log directory mounted elsewhere (`/host/...`).
            let named = || {
                state.by_id.values().find(|e| {
                    e.info.pod.as_ref().is_some_and(|p| {
                        p.pod_uid == log.pod_uid
                            && p.container == log.container
                            && p.restart == log.restart
                    })
                })
            };
            if let Some(entry) = exact.or_else(named) {
                return Some(entry.info.clone());
            }
        }
        if self.shared.cri.is_some() {
            self.want(path);
        }
        None
    }

    fn want(&self, path: &Path) {
        let mut wanted = self.lock_wanted();
        let now = Instant::now();
        if wanted
            .asked
            .get(path)
            .is_some_and(|at| now.duration_since(*at) < ASKED_TTL)
        {
            return;
        }
        if wanted.asked.len() >= WANTED_MAX {
            wanted
                .asked
                .retain(|_, at| now.duration_since(*at) < ASKED_TTL);
        }
        if wanted.queue.len() >= WANTED_MAX || wanted.asked.len() >= WANTED_MAX {
            // The periodic rescan still finds it.
            return;
        }
        wanted.asked.insert(path.to_path_buf(), now);
        wanted.queue.push(path.to_path_buf());
        self.shared.wake.notify_one();
    }

    /// Waits up to `max` for queued log-path lookups and answers them from CRI.
    fn serve_wanted(&self, max: Duration) {
        let queue = {
            let wanted = self.lock_wanted();
            let (mut wanted, _) = self
                .shared
                .wake
                .wait_timeout_while(wanted, max, |w| w.queue.is_empty())
                .unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut wanted.queue)
        };
        for path in queue {
            self.lookup_log_path(&path);
        }
    }

    /// Asks CRI for the containers of the pod and container `path` belongs to.
    fn lookup_log_path(&self, path: &Path) {
        let (Some(cri), Some(log)) = (&self.shared.cri, PodLogRef::from_path(path)) else {
            return;
        };
        if !self.should_try_cri() {
            return;
        }
        match cri.containers_of(&log.pod_uid, &log.container) {
            Ok(found) => {
                self.mark_up();
                let mut state = self.write();
                let mut changed = false;
                for info in found {
                    state.not_found.remove(&info.id);
                    changed |= insert(&mut state, info);
                }
                self.publish_len(&state);
                if changed {
                    self.shared.generation.fetch_add(1, Ordering::AcqRel);
                }
            }
            Err(e) if e.is_unreachable() => self.mark_down(&e),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "CRI lookup of a log file")
            }
        }
    }

    /// Records `info` as if CRI had reported it (tests of what reads the registry).
    #[cfg(test)]
    pub(crate) fn record(&self, info: ContainerInfo) {
        let mut state = self.write();
        if insert(&mut state, info) {
            self.shared.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Log paths queued for a CRI lookup (tests).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> Vec<PathBuf> {
        self.lock_wanted().queue.clone()
    }

    /// Every container known: from CRI, or from the last pod log directory scan.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        let state = self.read();
        state
            .by_id
            .values()
            .map(|e| e.info.clone())
            .chain(state.scanned.values().cloned())
            .collect()
    }

    pub fn len(&self) -> usize {
        let state = self.read();
        state.by_id.len() + state.scanned.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rescans now and then every `interval` on a new thread, until `shutdown`.
    pub fn spawn_rescanner(
        &self,
        interval: Duration,
        shutdown: Arc<AtomicBool>,
    ) -> std::io::Result<JoinHandle<()>> {
        let registry = self.clone();
        std::thread::Builder::new()
            .name("logtap-cri".into())
            .spawn(move || {
                // Short naps so a shutdown is seen quickly whatever the interval; log
                // paths asked about meanwhile are answered at once.
                let nap = interval.min(Duration::from_millis(200));
                // CRI calls are bounded by `cri.timeout`: the loop always turns.
                let beat = crate::metrics::health::global().register("discovery-cri");
                beat.waiting(true);
                while !shutdown.load(Ordering::Relaxed) {
                    // Failures are already counted, logged and degraded in `rescan`.
                    let _ = registry.rescan();
                    let next = Instant::now() + interval;
                    while Instant::now() < next && !shutdown.load(Ordering::Relaxed) {
                        beat.progress();
                        registry.serve_wanted(nap);
                    }
                }
                beat.stop();
            })
    }

    /// Replaces the scanned set with what `pods_dir` holds: every `N.log` of every
    /// container directory.
    fn scan_pods_dir(&self) -> usize {
        let mut scanned = HashMap::new();
        let walk = walkdir::WalkDir::new(&self.shared.pods_dir)
            .min_depth(3)
            .max_depth(3)
            .follow_links(false);
        for entry in walk.into_iter().filter_map(Result::ok) {
            let path = entry.path();
            let Some(pod) = PodLogRef::from_path(path) else {
                continue;
            };
            // Rotated files (`0.log.<ts>`) belong to the same run as `0.log`.
            if path.extension().is_some_and(|e| e == "log") {
                scanned.insert(path.to_path_buf(), info_from_log_path(path, pod));
            }
        }
        let count = scanned.len();
        let mut state = self.write();
        state.scanned = scanned;
        self.publish_len(&state);
        count
    }

    fn recently_not_found(&self, id: &str) -> bool {
        self.read()
            .not_found
            .get(id)
            .is_some_and(|at| at.elapsed() < NOT_FOUND_TTL)
    }

    fn should_try_cri(&self) -> bool {
        if self.cri_up() {
            return true;
        }
        let mut down = self.lock_down();
        match down.last_attempt {
            Some(at) if at.elapsed() < RETRY_WHILE_DOWN => false,
            _ => {
                down.last_attempt = Some(Instant::now());
                true
            }
        }
    }

    fn mark_up(&self) {
        if !self.shared.cri_up.swap(true, Ordering::Relaxed) {
            metrics::gauge!(CRI_UP).set(1.0);
            let mut down = self.lock_down();
            if down.last_warning.is_some() {
                tracing::info!(
                    endpoint = self.endpoint(),
                    "container runtime reachable again"
                );
            }
            *down = DownState::default();
        }
    }

    fn mark_down(&self, error: &CriError) {
        self.shared.cri_up.store(false, Ordering::Relaxed);
        metrics::gauge!(CRI_UP).set(0.0);
        let mut down = self.lock_down();
        down.last_attempt = Some(Instant::now());
        if down
            .last_warning
            .is_none_or(|at| at.elapsed() >= WARN_EVERY)
        {
            down.last_warning = Some(Instant::now());
            tracing::warn!(
                endpoint = self.endpoint(),
                %error,
                "container runtime unreachable; container metadata comes from {} until it is back",
                self.shared.pods_dir.display()
            );
        }
    }

    fn endpoint(&self) -> &str {
        self.shared.cri.as_ref().map_or("", |c| c.endpoint())
    }

    fn publish_len(&self, state: &State) {
        metrics::gauge!(REGISTRY_CONTAINERS).set((state.by_id.len() + state.scanned.len()) as f64);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic under the lock leaves whole entries behind, never half-written ones.
        self.shared.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.shared.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_down(&self) -> std::sync::MutexGuard<'_, DownState> {
        self.shared.down.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_wanted(&self) -> std::sync::MutexGuard<'_, Wanted> {
        self.shared.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Records `info`; whether it is new or differs from what was recorded.
fn insert(state: &mut State, info: ContainerInfo) -> bool {
    if let Some(path) = &info.log_path {
        state.by_log_path.insert(path.clone(), info.id.clone());
    }
    let changed = state.by_id.get(&info.id).is_none_or(|e| e.info != info);
    state.by_id.insert(
        info.id.clone(),
        Entry {
            info,
            missing_since: None,
        },
    );
    changed
}

fn remove(state: &mut State, id: &str) {
    if let Some(entry) = state.by_id.remove(id)
        && let Some(path) = entry.info.log_path
        && state.by_log_path.get(&path).is_some_and(|i| i == id)
    {
        state.by_log_path.remove(&path);
    }
}

/// `.../0.log.20240101-120000` (or `.gz`) → `.../0.log`; `None` when not rotated.
fn unrotated(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let (live, _suffix) = name.split_once(".log.")?;
    Some(path.with_file_name(format!("{live}.log")))
}

/// What a CRI log path alone says about its container.
fn info_from_log_path(path: &Path, pod: PodLogRef) -> ContainerInfo {
    ContainerInfo {
        id: String::new(),
        name: pod.container.clone(),
        sandbox_id: String::new(),
        image: String::new(),
        image_ref: String::new(),
        labels: Default::default(),
        annotations: Default::default(),
        env: Default::default(),
        log_path: Some(path.to_path_buf()),
        pid: None,
        cgroup_path: None,
        state: ContainerState::Unknown,
        restart_count: pod.restart,
        pod: Some(pod),
    }
}

/// The pod UID in a container's cgroup path: the parent component `pod<uid>`
/// (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_from_cgroup_path(path: &[u8]) -> Option<String> {
    let path = std::str::from_utf8(path)
        .ok()?
        .trim_end_matches(['\n', '/']);
    let parent = path.rsplit('/').nth(1)?;
    let parent = parent.strip_suffix(".slice").unwrap_or(parent);
    let (_, uid) = parent.rsplit_once("pod")?;
    let uid = uid.replace('_', "-");
    (!uid.is_empty() && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

#[cfg(test)]
mod tests;

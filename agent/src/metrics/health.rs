//! Liveness of the pipeline's long-lived threads: a registry of components, each fed
//! by a [`Heartbeat`] its thread holds, read by `/healthz` and `/readyz`.
//!
//! A thread registers itself once it starts ([`Health::register`]) and keeps the
//! returned heartbeat for as long as it runs. It records *progress* whenever it did a
//! unit of its work (a package written, a loop turned) and whether it has *work
//! waiting* (a package in hand, a window to send). The registry judges:
//!
//! - **dead**: the heartbeat was dropped without [`Heartbeat::stop`] — the thread
//!   returned early (an error) or unwound from a panic. A dead component stays dead:
//!   nothing restarts a thread, so only a restart of the agent helps.
//! - **stalled**: work has been waiting and no progress was made for longer than the
//!   stall timeout. A thread with nothing to do is idle, not stalled, however long.
//! - **parked**: the thread waits on purpose on something another component or the
//!   outside world must do — a full sink queue (the sink worker is monitored itself),
//!   a full spool (the forwarder is), a destination that is down, a retry backoff. A
//!   parked thread is never stalled: a destination outage must not make Kubernetes
//!   restart the agent, which would not bring the destination back.
//! - a **note** (e.g. `destination_down`) is reported with the component and never
//!   fails liveness.
//!
//! # Invariants
//!
//! - A component is in the registry from `register` until its heartbeat is stopped
//!   (then removed: an orderly exit is not a failure) or forever once dead.
//! - `waiting_since` is 0 while no work waits; otherwise the time the work began
//!   waiting (+1, so 0 stays free). It is not moved while work keeps waiting, so a
//!   thread that keeps saying "I have work" without progress does stall.
//! - Stall time is measured from the later of the last progress and `waiting_since`:
//!   work that arrives after a long idle period gets the whole timeout.
//! - Ending a park counts as progress, so a thread released after a long wait is not
//!   reported stalled for the instant before its next unit of work.
//!
//! Code deep in a thread's call stack (the router's blocking send, the spool's wait for
//! room) reaches the thread's heartbeat through [`park`] / [`parked`] / [`progress`],
//! which act on the heartbeat registered on the current thread (a no-op on threads
//! without one, as in most unit tests): no handle is threaded through every sink.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Default of `health.stall_timeout`: far above any retry backoff (5 s sink, 10 s
/// forwarder) and a checkpoint write, well below what an operator would tolerate.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(90);

const RUNNING: u8 = 0;
const EXITED: u8 = 1;
const PANICKED: u8 = 2;
const STOPPED: u8 = 3;

/// The registry of pipeline components. Cheap to clone (shared).
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    epoch: Instant,
    stall_timeout_ms: AtomicU64,
    ready: AtomicBool,
    components: Mutex<Vec<Arc<Component>>>,
}

struct Component {
    name: String,
    state: AtomicU8,
    /// Milliseconds since `epoch` of the last progress.
    last_progress: AtomicU64,
    /// 0: no work waiting; else milliseconds since `epoch` + 1 when it began waiting.
    waiting_since: AtomicU64,
    parked: AtomicBool,
    note: Mutex<Option<&'static str>>,
}

/// A component's state; the last three fail liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Work waiting, progress within the stall timeout.
    Ok,
    /// Nothing to do.
    Idle,
    /// Waiting on purpose on another component or the outside world.
    Parked,
    Stalled,
    /// Ended without an orderly stop (an error).
    Exited,
    Panicked,
}

/// How a component is doing, as `/healthz` reports it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ComponentStatus {
    pub name: String,
    pub state: State,
    pub seconds_since_progress: f64,
    pub work_waiting: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

impl ComponentStatus {
    /// Whether this component fails liveness.
    pub fn failing(&self) -> bool {
        matches!(self.state, State::Stalled | State::Exited | State::Panicked)
    }
}

/// The verdict over every component.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub healthy: bool,
    /// The names of the failing components.
    pub failing: Vec<String>,
    pub components: Vec<ComponentStatus>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(DEFAULT_STALL_TIMEOUT)
    }
}

impl Health {
    pub fn new(stall_timeout: Duration) -> Health {
        Health {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                stall_timeout_ms: AtomicU64::new(millis(stall_timeout)),
                ready: AtomicBool::new(false),
                components: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn set_stall_timeout(&self, timeout: Duration) {
        self.inner
            .stall_timeout_ms
            .store(millis(timeout), Ordering::Relaxed);
    }

    /// The pipeline has started: `/readyz` answers 200 from now on.
    pub fn set_ready(&self) {
        self.inner.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// Adds a component and makes its heartbeat the current thread's (see [`park`]).
    /// Call it on the thread the heartbeat describes.
    pub fn register(&self, name: impl Into<String>) -> Heartbeat {
        let component = Arc::new(Component {
            name: name.into(),
            state: AtomicU8::new(RUNNING),
            last_progress: AtomicU64::new(self.now()),
            waiting_since: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            note: Mutex::new(None),
        });
        lock(&self.inner.components).push(component.clone());
        let handle = Handle {
            health: self.clone(),
            component,
        };
        let _ = CURRENT.try_with(|c| *c.borrow_mut() = Some(handle.clone()));
        Heartbeat { handle }
    }

    /// Every component's status and the verdict, at this instant.
    pub fn report(&self) -> Report {
        let now = self.now();
        let timeout = self.inner.stall_timeout_ms.load(Ordering::Relaxed);
        let components: Vec<ComponentStatus> = lock(&self.inner.components)
            .iter()
            .map(|c| c.status(now, timeout))
            .collect();
        let failing = components
            .iter()
            .filter(|c| c.failing())
            .map(|c| c.name.clone())
            .collect::<Vec<_>>();
        Report {
            healthy: failing.is_empty(),
            failing,
            components,
        }
    }

    fn now(&self) -> u64 {
        millis(self.inner.epoch.elapsed())
    }
}

impl Component {
    fn status(&self, now: u64, timeout: u64) -> ComponentStatus {
        let last = self.last_progress.load(Ordering::Relaxed);
        let since = self.waiting_since.load(Ordering::Relaxed);
        let parked = self.parked.load(Ordering::Relaxed);
        let waiting = since != 0;
        let state = match self.state.load(Ordering::Relaxed) {
            EXITED => State::Exited,
            PANICKED => State::Panicked,
            _ if parked => State::Parked,
            _ if !waiting => State::Idle,
            _ if now.saturating_sub(last.max(since - 1)) > timeout => State::Stalled,
            _ => State::Ok,
        };
        ComponentStatus {
            name: self.name.clone(),
            state,
            seconds_since_progress: now.saturating_sub(last) as f64 / 1000.0,
            work_waiting: waiting,
            note: *lock(&self.note),
        }
    }
}

/// A thread's handle on its component. Dropping it without [`stop`](Self::stop)
/// (an early return, a panic unwinding) marks the component dead.
pub struct Heartbeat {
    handle: Handle,
}

/// What records a component's progress; the thread-local copy is one too.
#[derive(Clone)]
pub struct Handle {
    health: Health,
    component: Arc<Component>,
}

impl Handle {
    /// A unit of work was done; also ends a park.
    pub fn progress(&self) {
        let c = &self.component;
        c.last_progress.store(self.health.now(), Ordering::Relaxed);
        c.parked.store(false, Ordering::Relaxed);
    }

    /// Whether work is waiting for this thread. Saying `true` again keeps the time
    /// the work began waiting.
    pub fn waiting(&self, waiting: bool) {
        let since = &self.component.waiting_since;
        if !waiting {
            since.store(0, Ordering::Relaxed);
        } else if since.load(Ordering::Relaxed) == 0 {
            since.store(self.health.now() + 1, Ordering::Relaxed);
        }
    }

    /// The thread waits on purpose until its next progress (see the module docs).
    pub fn park(&self) {
        self.component.parked.store(true, Ordering::Relaxed);
    }

    /// A remark shown with the component that never fails liveness; `None` clears it.
    pub fn note(&self, note: Option<&'static str>) {
        *lock(&self.component.note) = note;
    }
}

impl std::ops::Deref for Heartbeat {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl Heartbeat {
    /// An orderly end: the component leaves the registry.
    pub fn stop(self) {
        let h = &self.handle;
        lock(&h.health.inner.components).retain(|c| !Arc::ptr_eq(c, &h.component));
        h.component.state.store(STOPPED, Ordering::Relaxed);
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let c = &self.handle.component;
        // `try_with`: this may run while the thread's locals are being destroyed.
        let _ = CURRENT.try_with(|current| {
            if let Ok(mut current) = current.try_borrow_mut()
                && current
                    .as_ref()
                    .is_some_and(|h| Arc::ptr_eq(&h.component, c))
            {
                *current = None;
            }
        });
        let dead = if std::thread::panicking() {
            PANICKED
        } else {
            EXITED
        };
        // A stopped component stays stopped.
        if c.state
            .compare_exchange(RUNNING, dead, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let how = if dead == PANICKED {
                "panicked"
            } else {
                "ended"
            };
            tracing::error!(component = %c.name, "pipeline thread {how} without an orderly stop");
        }
    }
}

thread_local! {
    /// The heartbeat registered on this thread.
    static CURRENT: RefCell<Option<Handle>> = const { RefCell::new(None) };
}

fn with_current(f: impl FnOnce(&Handle)) {
    let _ = CURRENT.try_with(|c| {
        if let Ok(c) = c.try_borrow()
            && let Some(h) = c.as_ref()
        {
            f(h);
        }
    });
}

/// Records progress on the current thread's heartbeat, if it has one.
pub fn progress() {
    with_current(Handle::progress);
}

/// Says whether work waits for the current thread, if it has a heartbeat.
pub fn waiting(waiting: bool) {
    with_current(|h| h.waiting(waiting));
}

/// Sets or clears the current thread's note (see [`Handle::note`]).
pub fn note(note: Option<&'static str>) {
    with_current(|h| h.note(note));
}

/// Parks the current thread's component until its next progress.
pub fn park() {
    with_current(Handle::park);
}

/// Runs `f` parked (a blocking wait on another component or the outside world); its
/// end counts as progress.
pub fn parked<T>(f: impl FnOnce() -> T) -> T {
    park();
    let out = f();
    progress();
    out
}

/// The process's registry, which `/healthz` serves.
pub fn global() -> &'static Health {
    static GLOBAL: OnceLock<Health> = OnceLock::new();
    GLOBAL.get_or_init(Health::default)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A poisoned lock only means a panic elsewhere while it was held; the data (plain
/// values) is still consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_of(health: &Health, name: &str) -> Option<State> {
        health
            .report()
            .components
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.state)
    }

    #[test]
    fn a_thread_that_ends_without_stopping_is_dead_and_named() {
        let health = Health::new(Duration::from_secs(60));
        let h = health.clone();
        std::thread::spawn(move || {
            let _beat = h.register("sink-a");
            // An early return (an error) drops the heartbeat.
        })
        .join()
        .unwrap();
        let report = health.report();
        assert!(!report.healthy);
        assert_eq!(report.failing, vec!["sink-a".to_string()]);
        assert_eq!(state_of(&health, "sink-a"), Some(State::Exited));
    }

    #[test]
    fn a_panicking_thread_is_dead() {
        let health = Health::new(Duration::from_secs(60));
        let h = health.clone();
        let joined = std::thread::spawn(move || {
            let _beat = h.register("forward-b");
            panic!("boom");
        })
        .join();
        assert!(joined.is_err());
        assert_eq!(state_of(&health, "forward-b"), Some(State::Panicked));
        assert!(!health.report().healthy);
    }

    #[test]
    fn an_orderly_stop_leaves_the_registry() {
        let health = Health::new(Duration::from_secs(60));
        let h = health.clone();
        std::thread::spawn(move || h.register("checkpoint").stop())
            .join()
            .unwrap();
        let report = health.report();
        assert!(report.healthy);
        assert!(report.components.is_empty());
    }

    #[test]
    fn no_progress_with_work_waiting_is_a_stall_and_progress_ends_it() {
        let health = Health::new(Duration::from_millis(100));
        let beat = health.register("sink-c");
        beat.waiting(true);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(state_of(&health, "sink-c"), Some(State::Stalled));
        assert_eq!(health.report().failing, vec!["sink-c".to_string()]);
        health.set_stall_timeout(Duration::from_secs(60));
        beat.progress();
        assert_eq!(state_of(&health, "sink-c"), Some(State::Ok));
        assert!(health.report().healthy);
        beat.stop();
    }

    #[test]
    fn an_idle_thread_with_nothing_to_do_is_healthy() {
        let health = Health::new(Duration::from_millis(50));
        let beat = health.register("forward-d");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(state_of(&health, "forward-d"), Some(State::Idle));
        assert!(health.report().healthy);
        beat.stop();
    }

    #[test]
    fn work_arriving_after_a_long_idle_gets_the_whole_timeout() {
        let health = Health::new(Duration::from_secs(1));
        let beat = health.register("sink-e");
        std::thread::sleep(Duration::from_millis(1200));
        beat.waiting(true);
        // Measured from the last progress it would be stalled already.
        assert_eq!(state_of(&health, "sink-e"), Some(State::Ok));
        beat.stop();
    }

    #[test]
    fn a_parked_thread_and_a_note_do_not_fail_liveness() {
        let health = Health::new(Duration::from_millis(50));
        let h = health.clone();
        std::thread::spawn(move || {
            let beat = h.register("forward-f");
            beat.waiting(true);
            beat.note(Some("destination_down"));
            // Through the thread-local, as the spool and the router use it.
            parked(|| std::thread::sleep(Duration::from_millis(200)));
            park();
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(state_of(&h, "forward-f"), Some(State::Parked));
            let report = h.report();
            assert!(report.healthy, "{report:?}");
            assert_eq!(report.components[0].note, Some("destination_down"));
            // Progress ends the park: then the stall clock runs again.
            progress();
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(state_of(&h, "forward-f"), Some(State::Stalled));
            beat.stop();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_thread_local_helpers_are_no_ops_without_a_heartbeat() {
        progress();
        waiting(true);
        assert_eq!(parked(|| 7), 7);
    }
}

//! The agent's allocator settings for capture (glibc's malloc), chosen by
//! measurement (docs/benchmarks.md, "Scale: 200 writers at once").
//!
//! glibc gives each thread that allocates an arena of its own, up to eight per core,
//! and a freed chunk goes back to the arena it came from, where it stays: only the
//! top of an arena is ever returned to the system, and a chunk at or above the
//! (dynamic) mmap threshold, once one such chunk was freed, comes from the arena too.
//! Capture allocates its run blocks and staged chunks on its thread and the sink
//! worker frees them on another, in bursts: the RSS stays at the heap's earlier peak,
//! in several arenas at once.
//!
//! Two remedies, each measured against glibc's defaults at 200 writers: fewer arenas
//! ([`limit_arenas`], `M_ARENA_MAX`), and returning the free pages of every arena to
//! the system once a second ([`spawn_trimmer`], `malloc_trim`). An operator who sets
//! `GLIBC_TUNABLES` decides for themself: the agent then sets nothing.

use std::time::Duration;

/// Arenas for the whole process with [`limit_arenas`]: the capture thread's and the
/// rest's.
pub const ARENAS: i32 = 2;
/// How often [`spawn_trimmer`]'s thread returns free memory to the system.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// What the agent does when capture is enabled (before its threads start): the
/// trimmer only. Fewer arenas on top of it left the peak RSS where the trimmer alone
/// did (74 against 76 MiB at 200 writers × 500 kB/s, medians of three), and two of
/// its three runs at each rate fell behind where the trimmer's did not (likely the
/// harness's writer threads, capture and the sink worker queueing on two arenas'
/// locks); [`limit_arenas`] stays for the bench's comparison.
pub fn tune_for_capture() {
    spawn_trimmer();
}

/// Whether the operator tuned malloc (`GLIBC_TUNABLES` set): then the agent leaves it.
fn operator_tuned() -> bool {
    std::env::var_os("GLIBC_TUNABLES").is_some()
}

/// Limits glibc to [`ARENAS`] arenas (threads share them beyond), unless the
/// operator tuned malloc; returns whether it did. Call before threads start: an
/// arena, once made, stays.
pub fn limit_arenas() -> bool {
    if operator_tuned() {
        return false;
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a parameter of the allocator; any value is checked by it.
    return unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) } == 1;
    #[cfg(not(target_env = "gnu"))]
    return false;
}

/// Starts a thread that hands the free pages of every arena back to the system each
/// [`TRIM_INTERVAL`] (`malloc_trim(0)`: whole free pages anywhere in an arena, not
/// only its top), unless the operator tuned malloc; `None` when it did not start. It
/// runs until the process exits. Each call takes every arena's lock for as long as
/// it walks its free chunks.
pub fn spawn_trimmer() -> Option<std::thread::JoinHandle<()>> {
    spawn_trimmer_every(TRIM_INTERVAL)
}

/// [`spawn_trimmer`] at another interval (the bench's `--trim-interval-ms`).
pub fn spawn_trimmer_every(interval: Duration) -> Option<std::thread::JoinHandle<()>> {
    if operator_tuned() || !cfg!(target_env = "gnu") {
        return None;
    }
    std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                trim();
            }
        })
        .ok()
}

/// Returns the free pages of every arena to the system.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes the allocator's own locks; it frees nothing in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

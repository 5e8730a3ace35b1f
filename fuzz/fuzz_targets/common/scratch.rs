//! A scratch directory of the fuzz target's own process (in memory when /dev/shm
//! exists), reused by every input and removed at exit. Included by path by the
//! targets that write files.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static DIR: OnceLock<PathBuf> = OnceLock::new();

/// The directory, `logtap-fuzz-<target>-<pid>`; made by the caller.
pub fn dir(target: &str) -> &'static Path {
    DIR.get_or_init(|| {
        let base = match Path::new("/dev/shm").is_dir() {
            true => PathBuf::from("/dev/shm"),
            false => std::env::temp_dir(),
        };
        extern "C" fn remove() {
            if let Some(dir) = DIR.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // SAFETY: registers a plain function; libFuzzer ends runs with exit(3).
        unsafe { libc::atexit(remove) };
        base.join(format!("logtap-fuzz-{target}-{}", std::process::id()))
    })
}

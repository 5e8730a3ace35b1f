//! The process's glibc malloc settings, applied once at start-up (`logtap run`).
//!
//! Why: with glibc's defaults, every time a thread frees the top of its heap beyond
//! 128 KiB, glibc gives it back to the kernel (`M_TRIM_THRESHOLD`), and blocks of
//! 128 KiB and more come from `mmap` once the dynamic threshold is not raised yet
//! (`M_MMAP_THRESHOLD`). The Kafka forwarder allocates MB-sized buffers every window
//! (librdkafka's copy of each ~1 MB message, its LZ4 output), frees them at the
//! window's end, and so faulted the same pages in again every window: ~0.75 CPU s per
//! GB of input (docs/benchmarks.md, Kafka section). Keeping [`TRIM_THRESHOLD`] bytes
//! at a heap's top, and serving blocks up to [`MMAP_THRESHOLD`] from the heap, removes
//! most of that cost for a few MiB of RSS.
//!
//! An operator who sets `GLIBC_TUNABLES` (to anything, even empty) keeps glibc's own
//! handling: the agent then changes nothing, so the operator's values, or glibc's
//! defaults, win. See docs/operations.md.

/// Bytes a heap keeps free at its top before glibc trims it (glibc's default: 128 KiB).
pub const TRIM_THRESHOLD: usize = 16 << 20;
/// Blocks from this size up come from `mmap` (glibc's default: 128 KiB, raised
/// dynamically up to 32 MiB). Fixed above librdkafka's ~1 MB message copies so they
/// reuse heap memory instead of being mapped and unmapped each window.
pub const MMAP_THRESHOLD: usize = 4 << 20;

/// What [`tune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// Both thresholds were set.
    Applied,
    /// `GLIBC_TUNABLES` is set: the operator's settings (or glibc's defaults) stand.
    OperatorTunables,
    /// Not glibc (musl, other systems): nothing to set.
    Unsupported,
    /// glibc refused a value (`mallopt` returned 0): its defaults stand.
    Refused,
}

/// Whether the agent should set its thresholds, given the value of `GLIBC_TUNABLES`
/// (`None`: not set). Any value, even empty, is the operator's choice.
pub fn should_tune(glibc_tunables: Option<&std::ffi::OsStr>) -> bool {
    glibc_tunables.is_none()
}

/// Sets the thresholds unless the environment says the operator chose
/// ([`should_tune`]). Idempotent: calling it again sets the same values.
pub fn tune() -> Tuning {
    if !should_tune(std::env::var_os("GLIBC_TUNABLES").as_deref()) {
        return Tuning::OperatorTunables;
    }
    set_thresholds(TRIM_THRESHOLD, MMAP_THRESHOLD)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds(trim: usize, mmap: usize) -> Tuning {
    let (Ok(trim), Ok(mmap)) = (libc::c_int::try_from(trim), libc::c_int::try_from(mmap)) else {
        return Tuning::Refused;
    };
    // SAFETY: mallopt takes the malloc lock itself; these parameters only change when
    // glibc trims or maps, never memory already handed out.
    let ok = unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim) == 1
            && libc::mallopt(libc::M_MMAP_THRESHOLD, mmap) == 1
    };
    match ok {
        true => Tuning::Applied,
        false => Tuning::Refused,
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds(_trim: usize, _mmap: usize) -> Tuning {
    Tuning::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn an_operators_glibc_tunables_wins_even_empty() {
        assert!(should_tune(None));
        assert!(!should_tune(Some(OsStr::new(""))));
        assert!(!should_tune(Some(OsStr::new(
            "glibc.malloc.trim_threshold=131072"
        ))));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn setting_the_thresholds_twice_succeeds_twice() {
        assert_eq!(
            set_thresholds(TRIM_THRESHOLD, MMAP_THRESHOLD),
            Tuning::Applied
        );
        assert_eq!(
            set_thresholds(TRIM_THRESHOLD, MMAP_THRESHOLD),
            Tuning::Applied
        );
        // A value that does not fit mallopt's `int` is refused, not truncated.
        assert_eq!(set_thresholds(usize::MAX, MMAP_THRESHOLD), Tuning::Refused);
        assert_eq!(
            set_thresholds(TRIM_THRESHOLD, MMAP_THRESHOLD),
            Tuning::Applied
        );
    }
}

//! Claims: which CRI log files eBPF capture has taken over, so the file source does
//! not ship the same lines a second time. Capture makes the claims; the file source
//! asks before it opens a file of the capture source.
//!
//! A container captured from its first write is shipped by capture; its CRI log
//! (`…/<container>/<restart>.log` and its rotations) is then only the repair path.
//! The runtime creates that file a moment *before* the container's cgroup exists, so
//! when the file source finds a CRI log born after capture started, nobody can tell
//! yet whether capture will claim it: the file source holds it back
//! ([`Claim::Undecided`]) until capture claims it or `claim_wait` passes — a
//! container that capture does not take (outside the cgroup prefix) is then read
//! from its file as usual, its first lines delayed, never lost. Files that existed
//! before capture started belong to containers capture did not see begin; they are
//! read by the file source from the start.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

/// The file source's answer for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Read and ship it.
    Ship,
    /// Capture ships this container's stream: do not read the file.
    Skip,
    /// Ask again shortly.
    Undecided,
}

/// The gate the file source asks before opening a file of the capture source.
#[derive(Debug)]
pub struct Claims {
    /// Index in `Config::sources` of the source whose files capture may claim.
    source: usize,
    started: SystemTime,
    claim_wait: Duration,
    /// Live CRI log paths of claimed container runs (`…/<container>/<restart>.log`).
    claimed: RwLock<HashSet<PathBuf>>,
}

impl Claims {
    pub fn new(source: usize, claim_wait: Duration) -> Claims {
        Claims {
            source,
            started: SystemTime::now(),
            claim_wait,
            claimed: RwLock::new(HashSet::new()),
        }
    }

    /// Whether files of `config` (an index in `Config::sources`) pass this gate.
    pub fn applies_to(&self, config: usize) -> bool {
        config == self.source
    }

    /// Capture ships the run whose live CRI log is `log_path`.
    pub fn claim(&self, log_path: &Path) {
        self.claimed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(log_path.to_path_buf());
    }

    /// The run ended and its files were dealt with.
    pub fn release(&self, log_path: &Path) {
        self.claimed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(log_path);
    }

    pub fn is_claimed(&self, path: &Path) -> bool {
        let claimed = self.claimed.read().unwrap_or_else(|e| e.into_inner());
        if claimed.contains(path) {
            return true;
        }
        // A rotation of a claimed run: `<live>.<suffix>`.
        let name = path.file_name().map(OsStr::as_bytes).unwrap_or_default();
        let Some(dot) = name.iter().rposition(|&b| b == b'.') else {
            return false;
        };
        let mut live = name[..dot].to_vec();
        while !live.is_empty() {
            let candidate = path.with_file_name(OsStr::from_bytes(&live));
            if claimed.contains(&candidate) {
                return true;
            }
            match live.iter().rposition(|&b| b == b'.') {
                Some(d) => live.truncate(d),
                None => break,
            }
        }
        false
    }

    /// The decision for the file at `path`, born at `born` (`None` when the file
    /// system does not record birth times: such files are shipped, as before capture).
    pub fn decide(&self, path: &Path, born: Option<SystemTime>, now: SystemTime) -> Claim {
        if self.is_claimed(path) {
            return Claim::Skip;
        }
        match born {
            // File times come from the kernel's coarse clock, up to a tick behind
            // `SystemTime::now()`: a log born just after capture started can carry a
            // time just before it. Such a log waits for a decision too.
            Some(born) if born + COARSE_CLOCK_SLACK >= self.started => {
                if now.duration_since(born).unwrap_or_default() < self.claim_wait {
                    Claim::Undecided
                } else {
                    Claim::Ship
                }
            }
            _ => Claim::Ship,
        }
    }
}

/// How far a file's birth time may lag the moment it was really born (a few kernel
/// ticks of the coarse clock file times are taken from).
const COARSE_CLOCK_SLACK: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_runs_and_their_rotations_are_skipped() {
        let claims = Claims::new(0, Duration::from_secs(5));
        let live = Path::new("/var/log/pods/ns_web_u1/app/0.log");
        claims.claim(live);
        let now = SystemTime::now();
        assert_eq!(claims.decide(live, None, now), Claim::Skip);
        let rotated = Path::new("/var/log/pods/ns_web_u1/app/0.log.20261121-104531");
        assert_eq!(claims.decide(rotated, None, now), Claim::Skip);
        // The next run of the same container is another stream, not claimed yet.
        let next_run = Path::new("/var/log/pods/ns_web_u1/app/1.log");
        assert_eq!(claims.decide(next_run, None, now), Claim::Ship);
        claims.release(live);
        assert_eq!(claims.decide(rotated, None, now), Claim::Ship);
    }

    #[test]
    fn files_born_after_capture_started_wait_for_a_decision_then_ship() {
        let claims = Claims::new(0, Duration::from_secs(5));
        let path = Path::new("/var/log/pods/ns_web_u1/app/0.log");
        let born = claims.started + Duration::from_millis(10);
        assert_eq!(
            claims.decide(path, Some(born), born + Duration::from_secs(1)),
            Claim::Undecided
        );
        assert_eq!(
            claims.decide(path, Some(born), born + Duration::from_secs(6)),
            Claim::Ship
        );
        let before = claims.started - Duration::from_secs(60);
        assert_eq!(claims.decide(path, Some(before), born), Claim::Ship);
        // Born right after the start, stamped a coarse tick before it: still new.
        let stamped = claims.started - Duration::from_millis(4);
        assert_eq!(
            claims.decide(path, Some(stamped), stamped + Duration::from_secs(1)),
            Claim::Undecided
        );
        assert!(claims.applies_to(0));
        assert!(!claims.applies_to(1));
    }
}

//! Fluent Bit v5 as a real peer (`../shared/peers/fluent-bit`, see
//! shared/peers/README.md), run on a classic-format config and killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct FluentBit {
    child: Child,
    dir: tempfile::TempDir,
}

impl FluentBit {
    /// `$LOGTAP_FLUENT_BIT`, else the project's peer next to the repository, else the
    /// workplace's `/work/shared`.
    pub fn binary() -> PathBuf {
        let candidates: Vec<PathBuf> = std::env::var_os("LOGTAP_FLUENT_BIT")
            .map(PathBuf::from)
            .into_iter()
            .chain([
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers/fluent-bit"),
                PathBuf::from("/work/shared/peers/fluent-bit"),
            ])
            .collect();
        candidates
            .iter()
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "the Fluent Bit peer is missing (looked at {candidates:?}; see \
                     shared/peers/README.md, or set LOGTAP_FLUENT_BIT)"
                )
            })
            .clone()
    }

    /// Starts it on `sections` (`[INPUT]`, `[FILTER]`, `[OUTPUT]`...), after a
    /// `[SERVICE]` that flushes every 200 ms.
    pub fn start(sections: &str) -> FluentBit {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("fluent-bit.conf");
        std::fs::write(
            &conf,
            format!("[SERVICE]\n    Flush 0.2\n    Log_Level info\n{sections}"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("fluent-bit.log")).unwrap();
        let child = Command::new(Self::binary())
            .arg("-c")
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start fluent-bit");
        FluentBit { child, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fluent-bit.log")).unwrap_or_default()
    }
}

impl Drop for FluentBit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

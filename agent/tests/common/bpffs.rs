//! A bpffs of a test's own, for pinned probes: unmounting it drops every pin in it.
//! Shared by `capture_containers` and `daemonset_cri` (through `common`) and
//! `capture_probes` (its own harness, which includes this file alone).

/// A bpffs of the test's own for the agents' pins (`capture.pin_dir` below it):
/// unmounting it at the end drops every pin, detaching the probes an agent left
/// attached, even when the test fails.
pub struct PinFs {
    dir: tempfile::TempDir,
}

impl PinFs {
    pub fn mount() -> PinFs {
        let dir = tempfile::tempdir().unwrap();
        mount_bpffs(dir.path());
        PinFs { dir }
    }

    pub fn pin_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("logtap")
    }

    /// The layouts (stamp directories) pinned now.
    pub fn layouts(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.pin_dir())
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for PinFs {
    fn drop(&mut self) {
        unmount_bpffs(self.dir.path());
    }
}

/// Mounts a bpffs on the existing directory `path`.
pub fn mount_bpffs(path: &std::path::Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "mount bpffs: {}", std::io::Error::last_os_error());
}

/// Unmounts (lazily) the bpffs [`mount_bpffs`] mounted on `path`: its pins go with
/// it, detaching the probes an agent left attached.
pub fn unmount_bpffs(path: &std::path::Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path this test mounted.
    unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
}

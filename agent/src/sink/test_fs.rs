//! Test support: a tiny tmpfs to meet a full disk (ENOSPC) for real.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A tmpfs of `size` bytes mounted on a temporary directory, unmounted on drop: the
/// way to meet a full disk (ENOSPC) for real. Needs root; without it the test fails,
/// unless `LOGTAP_TEST_ALLOW_NONROOT=1` (then `None`: the caller skips).
pub(crate) struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    pub(crate) fn mount(size: &str) -> Option<SmallFs> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert_eq!(
                std::env::var("LOGTAP_TEST_ALLOW_NONROOT").as_deref(),
                Ok("1"),
                "this test mounts a tmpfs and needs root; \
                 set LOGTAP_TEST_ALLOW_NONROOT=1 to skip it"
            );
            eprintln!("note: not root; skipping a disk-full test (LOGTAP_TEST_ALLOW_NONROOT=1)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        let data = std::ffi::CString::new(format!("size={size}")).unwrap();
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        Some(SmallFs { dir })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with `filler`, then frees `free` bytes of it.
    pub(crate) fn fill_leaving(&self, free: u64) -> PathBuf {
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0x5a; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(free)).unwrap();
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let target =
            std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; MNT_DETACH also succeeds with open files.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

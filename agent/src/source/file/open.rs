//! Opening files other people control: the one place the file source turns a path
//! into an fd, for host files and container files alike.
//!
//! # Safety
//!
//! The agent runs privileged and reads directories that pods and node users can
//! write to. Two things a file there must not do:
//! - **lead the agent elsewhere**: a symlink `x.log -> /etc/shadow` must not make the
//!   agent read (and ship, and store) a file nobody configured. A host file is opened
//!   with `openat2(RESOLVE_BENEATH)` below a directory its source's globs can match
//!   ([`open_host`]), so the kernel refuses any route out of that directory at the
//!   moment of the open: a link swapped in after a check cannot escape. Absolute
//!   links (which `RESOLVE_BENEATH` refuses outright: Kubernetes' own
//!   `/var/log/containers` links are absolute) are resolved first and opened again
//!   beneath the allowed directory holding their target, if any;
//! - **block the reader**: a FIFO named `*.log` blocks `open(2)` until a writer comes,
//!   a device may block every read. Files are opened `O_NONBLOCK` and kept only when
//!   `fstat` says they are regular; `O_NONBLOCK` is then cleared, as it means nothing
//!   for a regular file except to io_uring, which may then fail reads with `EAGAIN`
//!   on file systems that cannot read without waiting.
//!
//! What is refused comes back as an [`io::Error`] carrying a [`Refused`], so callers
//! report it as they report any other open failure, under its own reason.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why a file was not opened although it is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// A symlink (or a path through one) leading outside the directories allowed.
    Symlink,
    /// A FIFO, socket, device or directory where a log file was expected.
    NotRegular,
}

impl Refused {
    /// The `reason` label of `logtap_files_refused_total`.
    pub const fn reason(self) -> &'static str {
        match self {
            Refused::Symlink => "symlink",
            Refused::NotRegular => "not_regular",
        }
    }

    /// The refusal `e` carries, if it is one.
    pub fn of(e: &io::Error) -> Option<Refused> {
        e.get_ref()?.downcast_ref::<Refused>().copied()
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::Symlink => {
                "a symlink leading outside the directories its source reads (set follow_symlinks and allowed_roots to read it)"
            }
            Refused::NotRegular => "not a regular file (FIFO, socket or device)",
        })
    }
}

impl std::error::Error for Refused {}

impl From<Refused> for io::Error {
    fn from(r: Refused) -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, r)
    }
}

/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Opens `relative` below the directory `dir` for reading, resolved with the
/// `openat2` flags `resolve`, without blocking on a FIFO; only a regular file is
/// returned (else [`Refused::NotRegular`]), with `O_NONBLOCK` cleared.
pub fn open_below(dir: &Path, relative: &Path, resolve: u64) -> io::Result<File> {
    let dir_c = c_path(dir)?;
    // SAFETY: a NUL-terminated path; the fd is owned below.
    let dir_fd = unsafe {
        libc::open(
            dir_c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir_fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dir_fd` is a fresh fd nothing else owns.
    let dir_fd = unsafe { OwnedFd::from_raw_fd(dir_fd) };
    let relative = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    let path = c_path(relative)?;
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64,
        mode: 0,
        resolve,
    };
    let file = loop {
        // SAFETY: openat2(2) with a valid dirfd, a NUL-terminated path and an
        // `open_how` of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir_fd.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh fd nothing else owns.
            break unsafe { File::from_raw_fd(fd as i32) };
        }
        let e = io::Error::last_os_error();
        // EAGAIN: RESOLVE_IN_ROOT / RESOLVE_BENEATH raced with a rename elsewhere in
        // the tree (the kernel asks to retry rather than risk a wrong answer).
        if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
            return Err(e);
        }
    };
    if !file.metadata()?.is_file() {
        return Err(Refused::NotRegular.into());
    }
    clear_nonblock(&file)?;
    Ok(file)
}

fn clear_nonblock(file: &File) -> io::Result<()> {
    // SAFETY: fcntl on an fd `file` owns.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the host file `path` for reading only if the file it names lies below one
/// of `roots` (the directories its source's globs can match, plus `allowed_roots`
/// when the source follows symlinks): see the module docs.
///
/// `path` itself is first opened beneath the root it was found under, which takes
/// regular files and relative links that stay inside it; a path the kernel finds
/// leaving it (an absolute link, `..` out of it) is resolved, and opened beneath the
/// root its target is in, if one is. Roots that do not exist are skipped.
pub fn open_host(path: &Path, roots: &[PathBuf]) -> io::Result<File> {
    let beneath = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    let found_under = roots
        .iter()
        .filter(|r| path.starts_with(r))
        .max_by_key(|r| r.as_os_str().len());
    if let Some(root) = found_under {
        let relative = path.strip_prefix(root).unwrap_or(path);
        match open_below(root, relative, beneath) {
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
            other => return other,
        }
    }
    // An absolute link, or a path the roots do not hold: where it leads decides.
    let target = std::fs::canonicalize(path)?;
    for root in roots {
        let Ok(root) = std::fs::canonicalize(root) else {
            continue;
        };
        if let Ok(relative) = target.strip_prefix(&root) {
            return match open_below(&root, relative, beneath) {
                // Changed under us to lead out after all.
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Err(Refused::Symlink.into()),
                other => other,
            };
        }
    }
    Err(Refused::Symlink.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    fn read(file: io::Result<File>) -> io::Result<String> {
        let mut text = String::new();
        file?.read_to_string(&mut text)?;
        Ok(text)
    }

    fn refusal(r: io::Result<File>) -> Option<Refused> {
        Refused::of(&r.err()?)
    }

    #[test]
    fn links_are_read_only_when_their_target_is_below_a_root() {
        let base = tempfile::tempdir().unwrap();
        let logs = base.path().join("logs");
        let pods = base.path().join("pods");
        let secret = base.path().join("secret");
        for d in [&logs, &pods, &secret] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(logs.join("plain.log"), "plain\n").unwrap();
        std::fs::write(pods.join("0.log"), "pod\n").unwrap();
        std::fs::write(secret.join("shadow"), "root:x\n").unwrap();
        symlink("plain.log", logs.join("relative.log")).unwrap();
        symlink(pods.join("0.log"), logs.join("pod.log")).unwrap();
        symlink(secret.join("shadow"), logs.join("x.log")).unwrap();
        symlink("../secret/shadow", logs.join("up.log")).unwrap();
        symlink(&secret, logs.join("dir")).unwrap();

        let only_logs = [logs.clone()];
        assert_eq!(
            read(open_host(&logs.join("plain.log"), &only_logs)).unwrap(),
            "plain\n"
        );
        assert_eq!(
            read(open_host(&logs.join("relative.log"), &only_logs)).unwrap(),
            "plain\n"
        );
        for escaping in ["pod.log", "x.log", "up.log", "dir/shadow"] {
            assert_eq!(
                refusal(open_host(&logs.join(escaping), &only_logs)),
                Some(Refused::Symlink),
                "{escaping}"
            );
        }
        // A second allowed root (another glob's directory, or `allowed_roots`).
        let both = [logs.clone(), pods.clone()];
        assert_eq!(
            read(open_host(&logs.join("pod.log"), &both)).unwrap(),
            "pod\n"
        );
        assert_eq!(
            refusal(open_host(&logs.join("x.log"), &both)),
            Some(Refused::Symlink)
        );
        // No root at all holds it.
        assert_eq!(
            refusal(open_host(&logs.join("plain.log"), &[])),
            Some(Refused::Symlink)
        );
        assert_eq!(
            open_host(&logs.join("missing.log"), &only_logs)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT)
        );
    }

    #[test]
    fn fifos_are_refused_without_blocking_and_files_are_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.log");
        let c = c_path(&fifo).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let roots = [dir.path().to_path_buf()];
        // Without O_NONBLOCK this open would wait for a writer forever.
        assert_eq!(refusal(open_host(&fifo, &roots)), Some(Refused::NotRegular));
        std::fs::create_dir(dir.path().join("d.log")).unwrap();
        assert_eq!(
            refusal(open_host(&dir.path().join("d.log"), &roots)),
            Some(Refused::NotRegular)
        );
        std::fs::write(dir.path().join("a.log"), "a\n").unwrap();
        let file = open_host(&dir.path().join("a.log"), &roots).unwrap();
        // SAFETY: fcntl on an open fd.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(
            flags & libc::O_NONBLOCK,
            0,
            "O_NONBLOCK cleared once regular"
        );
    }
}

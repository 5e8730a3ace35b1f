//! File identity: device + inode, confirmed by a CRC32 of the leading bytes.
//!
//! The inode alone is not an identity: a deleted file's inode is handed to the next
//! file created on the device, and resuming that file at the old offset would skip or
//! garble its first lines. The fingerprint catches that, and also catches a file that
//! was truncated and rewritten between two looks at it.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use super::{FINGERPRINT_BYTES, FileIdentity};

/// Reads the leading `len` bytes of `file` (fewer if the file is shorter).
fn read_prefix(file: &File, len: u32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// The identity of an open file whose size is `size`, fingerprinting up to
/// [`FINGERPRINT_BYTES`] leading bytes.
pub(crate) fn identify(file: &File, meta: &std::fs::Metadata) -> io::Result<FileIdentity> {
    let want = meta.len().min(FINGERPRINT_BYTES as u64) as u32;
    let prefix = read_prefix(file, want)?;
    Ok(FileIdentity {
        dev: meta.dev(),
        inode: meta.ino(),
        fingerprint_len: prefix.len() as u32,
        fingerprint: crc32fast::hash(&prefix),
    })
}

/// Whether the first `expected.fingerprint_len` bytes of `file` still hash to
/// `expected.fingerprint`. A file now shorter than that does not match.
pub(crate) fn prefix_matches(file: &File, expected: &FileIdentity) -> io::Result<bool> {
    let prefix = read_prefix(file, expected.fingerprint_len)?;
    Ok(prefix.len() == expected.fingerprint_len as usize
        && crc32fast::hash(&prefix) == expected.fingerprint)
}

/// Re-fingerprints a file that has grown past the bytes its identity covers. Returns
/// `Ok(None)` when the old prefix no longer matches (the file was rewritten), and
/// `Ok(Some(same))` when there was nothing more to cover.
pub(crate) fn grow(file: &File, size: u64, old: &FileIdentity) -> io::Result<Option<FileIdentity>> {
    let want = size.min(FINGERPRINT_BYTES as u64) as u32;
    if want <= old.fingerprint_len {
        return Ok(Some(*old));
    }
    let prefix = read_prefix(file, want)?;
    if prefix.len() < old.fingerprint_len as usize
        || crc32fast::hash(&prefix[..old.fingerprint_len as usize]) != old.fingerprint
    {
        return Ok(None);
    }
    Ok(Some(FileIdentity {
        fingerprint_len: prefix.len() as u32,
        fingerprint: crc32fast::hash(&prefix),
        ..*old
    }))
}

/// Opens `path` for reading only if it is a regular file reached without following a
/// symlink in its last component, and without blocking on a FIFO: a file found by
/// searching a directory may be anything a tenant put there.
pub(crate) fn open_regular_nofollow(path: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn fingerprint_grows_and_detects_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut w = File::create(&path).unwrap();
        w.write_all(b"hello\n").unwrap();
        let r = File::open(&path).unwrap();
        let id = identify(&r, &r.metadata().unwrap()).unwrap();
        assert_eq!(id.fingerprint_len, 6);
        assert_eq!(id.fingerprint, crc32fast::hash(b"hello\n"));
        assert!(prefix_matches(&r, &id).unwrap());

        w.write_all(&[b'x'; 400]).unwrap();
        let grown = grow(&r, 406, &id).unwrap().unwrap();
        assert_eq!(grown.fingerprint_len, FINGERPRINT_BYTES);
        assert!(prefix_matches(&r, &grown).unwrap());
        assert_eq!(grow(&r, 406, &grown).unwrap(), Some(grown));

        std::fs::write(&path, b"HELLO\nmore bytes").unwrap();
        assert!(!prefix_matches(&r, &id).unwrap());
        assert_eq!(grow(&r, 16, &id).unwrap(), None);
    }
}

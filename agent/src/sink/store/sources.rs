//! The source table: what a `source_id` in a block header stands for.
//!
//! `sources.ndjson` is append-only, one JSON object per source, written the first time
//! the store sees a source and before any block of it (so a concurrent reader that
//! sees a block can name its source). A torn last line (the agent killed mid-write) is
//! ignored by readers and cut away by the writer on open; duplicate ids keep the first
//! entry.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::source::{SourceId, SourceInfo, SourceKind};

use super::b64;

pub const SOURCES_FILE: &str = "sources.ndjson";

#[derive(serde::Serialize, serde::Deserialize)]
struct SourceLine {
    id: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    /// The path when it is not valid UTF-8 (kept exactly, never lossily).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path_base64: Option<String>,
    config_name: String,
}

fn to_line(info: &SourceInfo) -> Vec<u8> {
    let raw = info.path.as_os_str().as_bytes();
    let (path, path_base64) = match std::str::from_utf8(raw) {
        Ok(p) => (Some(p.to_owned()), None),
        Err(_) => (None, Some(b64::encode(raw))),
    };
    let line = SourceLine {
        id: format!("{:016x}", info.id.0),
        kind: info.kind.as_str().to_owned(),
        path,
        path_base64,
        config_name: info.config_name.to_string(),
    };
    let mut out = serde_json::to_vec(&line).unwrap_or_default();
    out.push(b'\n');
    out
}

fn from_line(line: &[u8]) -> Option<SourceInfo> {
    let parsed: SourceLine = serde_json::from_slice(line).ok()?;
    let id = u64::from_str_radix(&parsed.id, 16).ok()?;
    let kind = match parsed.kind.as_str() {
        "file" => SourceKind::File,
        "cri_file" => SourceKind::CriFile,
        "capture" => SourceKind::Capture,
        "self" => SourceKind::SelfMonitoring,
        "network" => SourceKind::Network,
        "k8s_events" => SourceKind::KubernetesEvents,
        _ => return None,
    };
    let path = match (parsed.path, parsed.path_base64) {
        (Some(p), _) => PathBuf::from(p),
        (None, Some(b)) => PathBuf::from(std::ffi::OsString::from_vec(b64::decode(&b)?)),
        (None, None) => return None,
    };
    Some(SourceInfo {
        id: SourceId(id),
        kind,
        path,
        config_name: Arc::from(parsed.config_name.as_str()),
    })
}

/// The parsed table, plus what the writer needs to repair the file.
#[derive(Default)]
pub struct LoadedSources {
    pub sources: HashMap<SourceId, Arc<SourceInfo>>,
    /// Length of the file up to and including its last complete line.
    pub complete_len: u64,
    /// Bytes after the last newline (a torn write).
    pub torn_bytes: u64,
}

/// Reads the source table of a store; a missing file is an empty table.
pub fn load(store_dir: &Path) -> io::Result<LoadedSources> {
    let data = match std::fs::read(store_dir.join(SOURCES_FILE)) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LoadedSources::default()),
        Err(e) => return Err(e),
    };
    let complete_len = memchr::memrchr(b'\n', &data).map_or(0, |i| i + 1);
    let mut sources = HashMap::new();
    for line in data[..complete_len].split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        match from_line(line) {
            Some(info) => {
                sources.entry(info.id).or_insert_with(|| Arc::new(info));
            }
            None => tracing::warn!(
                line = %String::from_utf8_lossy(line),
                "store: skipping unreadable entry of the source table"
            ),
        }
    }
    Ok(LoadedSources {
        sources,
        complete_len: complete_len as u64,
        torn_bytes: (data.len() - complete_len) as u64,
    })
}

/// The writer's handle on the source table.
pub struct SourceLog {
    file: File,
    known: HashMap<SourceId, Arc<SourceInfo>>,
    /// Length of the complete lines: where a failed append is cut back to.
    len: u64,
    /// Appended to since the last `sync`.
    dirty: bool,
}

impl SourceLog {
    /// Opens (creating) the table, cutting a torn last line away so the next append
    /// starts on a line of its own.
    pub fn open(store_dir: &Path) -> io::Result<SourceLog> {
        let loaded = load(store_dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(store_dir.join(SOURCES_FILE))?;
        if loaded.torn_bytes > 0 {
            tracing::warn!(
                bytes = loaded.torn_bytes,
                "store: truncating a torn last line of the source table"
            );
            file.set_len(loaded.complete_len)?;
            file.sync_all()?;
        }
        Ok(SourceLog {
            file,
            known: loaded.sources,
            len: loaded.complete_len,
            dirty: false,
        })
    }

    /// Records `info` unless its id is already known. Not durable until [`sync`].
    ///
    /// [`sync`]: SourceLog::sync
    pub fn ensure(&mut self, info: &SourceInfo) -> io::Result<()> {
        if self.known.contains_key(&info.id) {
            return Ok(());
        }
        // One write call per line: a concurrent reader sees whole lines or a torn tail.
        let line = to_line(info);
        if let Err(e) = self.file.write_all(&line) {
            // A short write (disk full) must not stay: the retry would append the
            // whole line to its torn start, and the joined line would be unreadable,
            // losing the source's path for every reader.
            if let Err(e2) = self.file.set_len(self.len) {
                tracing::error!(error = %e2, "store: could not cut a torn source-table line");
            }
            return Err(e);
        }
        self.len += line.len() as u64;
        self.known.insert(info.id, Arc::new(info.clone()));
        self.dirty = true;
        Ok(())
    }

    pub fn get(&self, id: SourceId) -> Option<&Arc<SourceInfo>> {
        self.known.get(&id)
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Rewrites the table with only the sources `keep` says are still needed
    /// (tmp → fsync → rename → fsync of the directory, so a reader or a crash sees
    /// the old table or the new one, whole).
    pub fn compact(&mut self, store_dir: &Path, keep: impl Fn(SourceId) -> bool) -> io::Result<()> {
        self.known.retain(|id, _| keep(*id));
        let mut lines: Vec<(&SourceId, &Arc<SourceInfo>)> = self.known.iter().collect();
        lines.sort_unstable_by_key(|(id, _)| **id);
        let mut out = Vec::new();
        for (_, info) in lines {
            out.extend_from_slice(&to_line(info));
        }
        let tmp = store_dir.join(format!("{SOURCES_FILE}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_data()?;
        std::fs::rename(&tmp, store_dir.join(SOURCES_FILE))?;
        File::open(store_dir)?.sync_all()?;
        self.file = OpenOptions::new()
            .append(true)
            .open(store_dir.join(SOURCES_FILE))?;
        self.len = out.len() as u64;
        self.dirty = false;
        Ok(())
    }

    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64, path: PathBuf) -> SourceInfo {
        SourceInfo {
            id: SourceId(id),
            kind: SourceKind::CriFile,
            path,
            config_name: Arc::from("pods"),
        }
    }

    #[test]
    fn persists_dedups_and_repairs_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let odd = PathBuf::from(std::ffi::OsString::from_vec(b"/var/log/\xff.log".to_vec()));
        {
            let mut log = SourceLog::open(dir.path()).unwrap();
            log.ensure(&info(1, "/var/log/a.log".into())).unwrap();
            log.ensure(&info(1, "/elsewhere".into())).unwrap();
            log.ensure(&info(2, odd.clone())).unwrap();
            log.sync().unwrap();
        }
        // A duplicate line (two writers racing is impossible, but a re-created table
        // could repeat ids) and a torn tail.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(SOURCES_FILE))
            .unwrap();
        f.write_all(&to_line(&info(1, "/dup".into()))).unwrap();
        f.write_all(b"{\"id\":\"00000").unwrap();
        drop(f);

        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.sources.len(), 2);
        assert_eq!(loaded.torn_bytes, 12);
        assert_eq!(
            loaded.sources[&SourceId(1)].path,
            PathBuf::from("/var/log/a.log")
        );
        assert_eq!(loaded.sources[&SourceId(2)].path, odd);
        assert_eq!(loaded.sources[&SourceId(2)].kind, SourceKind::CriFile);

        let mut log = SourceLog::open(dir.path()).unwrap();
        log.ensure(&info(3, "/c".into())).unwrap();
        log.sync().unwrap();
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.torn_bytes, 0);
        assert_eq!(loaded.sources.len(), 3);
    }
}

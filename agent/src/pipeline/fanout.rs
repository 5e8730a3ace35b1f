//! Fan-out: one file read by several configs becomes one reader per config.
//!
//! The file source reads a file once and hands the pipeline every config that
//! selects it. The first config in order is the *primary*: it ships under the file's
//! `SourceId` and owns the checkpoint entry. Every other config is a *branch*: it
//! ships under [`branch_id`]`(file, config name)` and is registered as a branch of
//! the file's checkpoint entry, so the file's persisted offset is the slowest
//! reader's (see docs/architecture.md, "Several configs, one file").

use std::collections::HashMap;
use std::sync::Arc;

use crate::checkpoint::Registry;
use crate::source::{SourceId, SourceInfo};

/// One reader of a source: the id it ships under, its config, and its predecessor
/// (the reader of the same config on the file this one replaces).
pub(super) struct Reader {
    pub info: Arc<SourceInfo>,
    pub config: usize,
    pub predecessor: Option<SourceId>,
}

/// The branches of every open file read by more than one config.
#[derive(Default)]
pub(super) struct Fanout {
    /// The file's source id → the ids its other configs ship under.
    branches: HashMap<SourceId, Vec<SourceId>>,
}

impl Fanout {
    /// The readers of `info` for `configs` (primary first, named by `name_of`); the
    /// branches are registered in `registry`.
    pub fn open(
        &mut self,
        info: &Arc<SourceInfo>,
        configs: &[usize],
        predecessor: Option<SourceId>,
        name_of: impl Fn(usize) -> Arc<str>,
        registry: &Registry,
    ) -> Vec<Reader> {
        let mut readers = Vec::with_capacity(configs.len());
        let mut branches = Vec::with_capacity(configs.len().saturating_sub(1));
        for (i, &config) in configs.iter().enumerate() {
            if i == 0 {
                readers.push(Reader {
                    info: info.clone(),
                    config,
                    predecessor,
                });
                continue;
            }
            // Derived from the file's id and the config's name: stable across
            // restarts and rebuilds.
            let name = name_of(config);
            let id = branch_id(info.id, &name);
            registry.register_branch(info.id, id);
            branches.push(id);
            readers.push(Reader {
                info: Arc::new(SourceInfo {
                    id,
                    config_name: name.clone(),
                    ..SourceInfo::clone(info)
                }),
                config,
                predecessor: predecessor.map(|p| branch_id(p, &name)),
            });
        }
        if branches.is_empty() {
            self.branches.remove(&info.id);
        } else {
            self.branches.insert(info.id, branches);
        }
        readers
    }

    /// The branches of `source` (empty for a source read by one config).
    pub fn branches(&self, source: SourceId) -> &[SourceId] {
        self.branches.get(&source).map_or(&[], |b| &b[..])
    }

    /// Forgets the branches of `source`, which ended; returns them.
    pub fn end(&mut self, source: SourceId) -> Vec<SourceId> {
        self.branches.remove(&source).unwrap_or_default()
    }
}

/// The id config `name` ships a file's lines under when it is not the file's primary
/// config: a fixed hash (FNV-1a, not the per-process `RandomState`) of the file's id
/// and the config name, so a restart or a rebuild ships under the same id again.
pub fn branch_id(file: SourceId, name: &str) -> SourceId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in file
        .0
        .to_le_bytes()
        .iter()
        .chain(b"\0")
        .chain(name.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    SourceId(h)
}

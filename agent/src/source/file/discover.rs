//! Discovery: which files on disk belong to which `sources[]` entry.
//!
//! Each include glob is split into its literal prefix directory (the root, walked) and
//! the rest (matched). Only roots are walked, to the depth the glob can reach (unbounded
//! with `**`), and symlinked directories are not followed, so a glob never wanders into
//! the whole file system. A symlink to a file is matched like a file (the
//! `/var/log/containers/*.log` links of Kubernetes).
//!
//! A file is read once, whatever the number of configs selecting it: [`Matcher::select`]
//! names every config that includes it (and whose selector, if any, selects its
//! container), in config order; the first is its primary (see
//! `docs/architecture.md`, "Several configs, one file").

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::config::SourceConfig;
use crate::config::crd::CompiledSelector;
use crate::route::select::Facts;

/// A directory under which a glob can match, and how deep below it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Root {
    dir: PathBuf,
    /// Depth of matchable files below `dir` (1 = direct children); `usize::MAX` for `**`.
    max_depth: usize,
}

struct Compiled {
    include: GlobSet,
    /// Excludes containing `/` match the whole path, the others the file name.
    exclude_path: GlobSet,
    exclude_name: GlobSet,
    roots: Vec<Root>,
    selector: Option<Arc<CompiledSelector>>,
}

/// Which configs read a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Selection {
    /// Every config that reads it, in config order (empty: none does).
    Configs(Vec<usize>),
    /// A config with a selector includes it, and its container is not known yet.
    Undecided,
}

/// A regular file (or symlink to one) matched by a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub path: PathBuf,
    pub config: usize,
}

/// The compiled include/exclude globs of every source config.
pub(crate) struct Matcher {
    configs: Vec<Compiled>,
}

impl Compiled {
    fn globs_match(&self, path: &Path) -> bool {
        let name = path.file_name().map(Path::new);
        self.include.is_match(path)
            && !self.exclude_path.is_match(path)
            && !name.is_some_and(|n| self.exclude_name.is_match(n))
    }
}

fn is_glob_meta(s: &str) -> bool {
    s.contains(['*', '?', '[', '{', '\\'])
}

/// Splits `/var/log/pods/**/*.log` into (`/var/log/pods`, unbounded) and
/// `/var/log/*.log` into (`/var/log`, 1).
fn root_of(glob: &str) -> Root {
    let path = Path::new(glob);
    let mut dir = PathBuf::new();
    let mut rest = Vec::new();
    for component in path.components() {
        let text = component.as_os_str().to_string_lossy();
        if rest.is_empty() && !is_glob_meta(&text) {
            dir.push(component);
        } else {
            rest.push(text.into_owned());
        }
    }
    if rest.is_empty() {
        // A literal path: its parent is walked to depth 1.
        let parent = dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| "/".into());
        return Root {
            dir: parent,
            max_depth: 1,
        };
    }
    let max_depth = if rest.iter().any(|c| c.contains("**")) {
        usize::MAX
    } else {
        rest.len()
    };
    Root { dir, max_depth }
}

fn build(globs: &[&String]) -> anyhow::Result<GlobSet> {
    let mut set = GlobSetBuilder::new();
    for g in globs {
        set.add(
            GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .with_context(|| format!("glob {g:?}"))?,
        );
    }
    Ok(set.build()?)
}

impl Matcher {
    pub fn new(sources: &[SourceConfig]) -> anyhow::Result<Matcher> {
        let mut configs = Vec::with_capacity(sources.len());
        for s in sources {
            let include: Vec<&String> = s.include.iter().collect();
            let (path_ex, name_ex): (Vec<&String>, Vec<&String>) =
                s.exclude.iter().partition(|g| g.contains('/'));
            let mut roots: Vec<Root> = Vec::new();
            for g in &s.include {
                let root = root_of(g);
                if !roots.contains(&root) {
                    roots.push(root);
                }
            }
            configs.push(Compiled {
                include: build(&include)
                    .with_context(|| format!("source {:?}: include", s.name))?,
                exclude_path: build(&path_ex)
                    .with_context(|| format!("source {:?}: exclude", s.name))?,
                exclude_name: build(&name_ex)
                    .with_context(|| format!("source {:?}: exclude", s.name))?,
                roots,
                selector: s.selector.clone(),
            });
        }
        Ok(Matcher { configs })
    }

    /// The first config whose globs include and do not exclude `path` (selectors
    /// are not asked: this says whether the path is a candidate at all).
    pub fn config_for(&self, path: &Path) -> Option<usize> {
        self.configs.iter().position(|c| c.globs_match(path))
    }

    /// Every config that reads `path`: its globs match and its selector, if it has
    /// one, selects the container. `facts` is called at most once, and only when a
    /// config with a selector includes the path.
    pub(crate) fn select(&self, path: &Path, facts: &mut dyn FnMut() -> Facts) -> Selection {
        let mut known: Option<Facts> = None;
        let mut configs = Vec::new();
        for (i, c) in self.configs.iter().enumerate() {
            if !c.globs_match(path) {
                continue;
            }
            let Some(selector) = &c.selector else {
                configs.push(i);
                continue;
            };
            match known.get_or_insert_with(&mut *facts) {
                Facts::Known(f) => {
                    if selector.matches(f) {
                        configs.push(i);
                    }
                }
                Facts::Pending => return Selection::Undecided,
                Facts::NotContainer => {}
            }
        }
        Selection::Configs(configs)
    }

    /// Walks every root. Matched files go to `found` (each path once); directories
    /// that can hold matches go to `dirs` (for inotify watches).
    pub fn scan(&self, found: &mut Vec<Found>, dirs: &mut Vec<PathBuf>) {
        let mut seen = HashSet::new();
        let mut seen_dirs = HashSet::new();
        for c in &self.configs {
            for root in &c.roots {
                self.walk(
                    &root.dir,
                    root.max_depth,
                    &mut seen,
                    &mut seen_dirs,
                    found,
                    dirs,
                );
            }
        }
    }

    /// Walks a directory that appeared under a root (a new pod's log directory), as
    /// deep as any root reaches below it.
    pub fn scan_dir(&self, dir: &Path, found: &mut Vec<Found>, dirs: &mut Vec<PathBuf>) {
        let mut seen = HashSet::new();
        let mut seen_dirs = HashSet::new();
        for c in &self.configs {
            for root in &c.roots {
                let Ok(rel) = dir.strip_prefix(&root.dir) else {
                    continue;
                };
                let depth = rel
                    .components()
                    .filter(|c| matches!(c, Component::Normal(_)))
                    .count();
                if depth < root.max_depth {
                    let left = root.max_depth.saturating_sub(depth);
                    self.walk(dir, left, &mut seen, &mut seen_dirs, found, dirs);
                }
            }
        }
    }

    fn walk(
        &self,
        dir: &Path,
        max_depth: usize,
        seen: &mut HashSet<PathBuf>,
        seen_dirs: &mut HashSet<PathBuf>,
        found: &mut Vec<Found>,
        dirs: &mut Vec<PathBuf>,
    ) {
        let walker = walkdir::WalkDir::new(dir)
            .follow_links(false)
            .max_depth(max_depth);
        for entry in walker.into_iter().filter_map(Result::ok) {
            let ft = entry.file_type();
            if ft.is_dir() {
                // Directories at the depth limit cannot hold matches.
                if entry.depth() < max_depth && seen_dirs.insert(entry.path().to_path_buf()) {
                    dirs.push(entry.path().to_path_buf());
                }
                continue;
            }
            let is_file = ft.is_file()
                || (ft.is_symlink() && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()));
            if !is_file {
                continue;
            }
            if let Some(config) = self.config_for(entry.path())
                && seen.insert(entry.path().to_path_buf())
            {
                found.push(Found {
                    path: entry.into_path(),
                    config,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_literal_prefixes() {
        assert_eq!(
            root_of("/var/log/pods/**/*.log"),
            Root {
                dir: "/var/log/pods".into(),
                max_depth: usize::MAX
            }
        );
        assert_eq!(
            root_of("/var/log/*/x/*.log"),
            Root {
                dir: "/var/log".into(),
                max_depth: 3
            }
        );
        assert_eq!(
            root_of("/var/log/syslog"),
            Root {
                dir: "/var/log".into(),
                max_depth: 1
            }
        );
    }
}

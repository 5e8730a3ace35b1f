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

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::config::SourceConfig;
use crate::select::CompiledSelector;
use crate::select::Facts;

use super::container::{self, ContainerView};
use super::open;

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
    /// A `container_paths` config: `include` and the excludes match paths inside
    /// the container, and `container_roots` are directories inside it.
    container: bool,
    container_roots: Vec<Root>,
    /// Directories outside `roots` a symlink may lead into (`allowed_roots`).
    allowed_roots: Vec<PathBuf>,
}

/// A running container some `container_paths` config reads, as resolved by
/// [`Matcher::resolve_containers`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ContainerRoot {
    pub pid: u32,
    /// `/proc/<pid>/root`.
    pub root: PathBuf,
    /// `container://<namespace>/<pod>/<container>`.
    pub logical: String,
    /// The configs that read this container, in config order.
    pub configs: Vec<usize>,
    /// Directories to walk: the glob's directory resolved inside the container.
    pub dirs: Vec<ContainerDir>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ContainerDir {
    /// Below `/proc/<pid>/root`, symlinks resolved inside the container.
    pub on_node: PathBuf,
    /// The directory as the glob names it (what the glob and the logical path see).
    pub inner: PathBuf,
    pub max_depth: usize,
}

/// What [`Matcher::set_containers`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ContainersChanged {
    /// Containers new (or read by other configs now): their directories must be walked.
    pub added: Vec<u32>,
    /// Containers no longer read: their `/proc/<pid>/root`.
    pub removed: Vec<PathBuf>,
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
    /// Running containers read by `container_paths` configs, by pid.
    containers: HashMap<u32, ContainerRoot>,
    /// Logical roots of every container known (running or not).
    known: HashSet<String>,
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
            let container = !s.container_paths.is_empty();
            let globs = if container {
                &s.container_paths
            } else {
                &s.include
            };
            let include: Vec<&String> = globs.iter().collect();
            let (path_ex, name_ex): (Vec<&String>, Vec<&String>) =
                s.exclude.iter().partition(|g| g.contains('/'));
            let mut roots: Vec<Root> = Vec::new();
            for g in globs {
                let root = root_of(g);
                if !roots.contains(&root) {
                    roots.push(root);
                }
            }
            let (roots, container_roots) = if container {
                (Vec::new(), roots)
            } else {
                (roots, Vec::new())
            };
            configs.push(Compiled {
                container,
                container_roots,
                include: build(&include)
                    .with_context(|| format!("source {:?}: include", s.name))?,
                exclude_path: build(&path_ex)
                    .with_context(|| format!("source {:?}: exclude", s.name))?,
                exclude_name: build(&name_ex)
                    .with_context(|| format!("source {:?}: exclude", s.name))?,
                roots,
                selector: s.selector.clone(),
                allowed_roots: s.allowed_roots.clone(),
            });
        }
        Ok(Matcher {
            configs,
            containers: HashMap::new(),
            known: HashSet::new(),
        })
    }

    /// Whether some config reads files inside containers.
    pub fn has_container_configs(&self) -> bool {
        self.configs.iter().any(|c| c.container)
    }

    /// The running container whose root `path` is below, and `path` as the globs
    /// inside the container see it.
    fn container_of(&self, path: &Path) -> Option<(&ContainerRoot, PathBuf)> {
        let (pid, below) = container::split_proc_root(path)?;
        let c = self.containers.get(&pid)?;
        let inner = c
            .dirs
            .iter()
            .filter_map(|d| Some((d, path.strip_prefix(&d.on_node).ok()?)))
            .max_by_key(|(d, _)| d.on_node.as_os_str().len())
            .map(|(d, rest)| d.inner.join(rest))
            .unwrap_or_else(|| Path::new("/").join(below));
        Some((c, inner))
    }

    /// Whether config `i` (with `c`) includes `path`.
    fn includes(&self, i: usize, c: &Compiled, path: &Path) -> bool {
        if !c.container {
            return c.globs_match(path);
        }
        self.container_of(path)
            .is_some_and(|(root, inner)| root.configs.contains(&i) && c.globs_match(&inner))
    }

    /// The first config whose globs include and do not exclude `path` (selectors
    /// are not asked: this says whether the path is a candidate at all).
    pub fn config_for(&self, path: &Path) -> Option<usize> {
        self.configs
            .iter()
            .enumerate()
            .position(|(i, c)| self.includes(i, c, path))
    }

    /// What records and checkpoints call a file found at `path`: its logical path
    /// (`container://…`) when it is inside a container, else `None` (its path).
    pub fn logical_path(&self, path: &Path) -> Option<PathBuf> {
        let (root, inner) = self.container_of(path)?;
        Some(container::logical_path(&root.logical, &inner))
    }

    /// Running containers whose files some config reads.
    pub fn container_count(&self) -> usize {
        self.containers.len()
    }

    /// Opens a file found at `path` for reading: inside the container's root for a
    /// container's file (see [`container::open_in_root`]), else below the
    /// directories of the configs including it (see [`open::open_host`]).
    pub fn open(&self, path: &Path) -> std::io::Result<std::fs::File> {
        match container::split_proc_root(path) {
            Some((pid, below)) => {
                container::open_in_root(&container::proc_root(pid), &Path::new("/").join(below))
            }
            None => open::open_host(path, &self.host_roots(path)),
        }
    }

    /// The directories a host file at `path` may be read from: the walk roots and
    /// `allowed_roots` of every config including it. A path no config includes (the
    /// copy logrotate left next to a truncated file) only from its own directory.
    fn host_roots(&self, path: &Path) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = Vec::new();
        for (i, c) in self.configs.iter().enumerate() {
            if c.container || !self.includes(i, c, path) {
                continue;
            }
            let dirs = c.roots.iter().map(|r| &r.dir).chain(&c.allowed_roots);
            for dir in dirs {
                if !roots.contains(dir) {
                    roots.push(dir.clone());
                }
            }
        }
        if roots.is_empty()
            && let Some(parent) = path.parent()
        {
            roots.push(parent.to_path_buf());
        }
        roots
    }

    /// Whether a container with this logical root (`container://ns/pod/name`) is
    /// known to the runtime, running or not.
    pub fn container_known(&self, logical_root: &str) -> bool {
        self.known.contains(logical_root)
    }

    /// The roots of every running container that a `container_paths` config's
    /// selector selects (every container when it has none).
    pub fn resolve_containers(&self, list: &[ContainerView]) -> Vec<ContainerRoot> {
        let mut out = Vec::new();
        for view in list {
            let Some(pid) = view.pid else { continue };
            let configs: Vec<usize> = self
                .configs
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.container && c.selector.as_ref().is_none_or(|s| s.matches(&view.facts))
                })
                .map(|(i, _)| i)
                .collect();
            if configs.is_empty() {
                continue;
            }
            let root = container::proc_root(pid);
            let mut dirs: Vec<ContainerDir> = Vec::new();
            for &i in &configs {
                for r in &self.configs[i].container_roots {
                    // A root that cannot be resolved now (the process just ended) is
                    // left out; the next refresh drops the container anyway.
                    let Ok(resolved) = container::resolve_in_root(&root, &r.dir) else {
                        continue;
                    };
                    let dir = ContainerDir {
                        on_node: container::join_root(&root, &resolved),
                        inner: r.dir.clone(),
                        max_depth: r.max_depth,
                    };
                    if !dirs.contains(&dir) {
                        dirs.push(dir);
                    }
                }
            }
            out.push(ContainerRoot {
                pid,
                root,
                logical: view.logical_root(),
                configs,
                dirs,
            });
        }
        out
    }

    /// Replaces the running containers read (and the set of containers known).
    pub fn set_containers(
        &mut self,
        roots: Vec<ContainerRoot>,
        known: HashSet<String>,
    ) -> ContainersChanged {
        let mut changed = ContainersChanged::default();
        let mut next = HashMap::with_capacity(roots.len());
        for root in roots {
            if self.containers.get(&root.pid) != Some(&root) {
                changed.added.push(root.pid);
            }
            next.insert(root.pid, root);
        }
        for (pid, old) in &self.containers {
            if next.get(pid).is_none_or(|new| new.logical != old.logical) {
                changed.removed.push(old.root.clone());
            }
        }
        changed.added.sort_unstable();
        self.containers = next;
        self.known = known;
        changed
    }

    /// Walks the directories of the running container `pid` (see [`Self::scan`]).
    pub fn scan_container(&self, pid: u32, found: &mut Vec<Found>, dirs: &mut Vec<PathBuf>) {
        let Some(c) = self.containers.get(&pid) else {
            return;
        };
        let mut seen = HashSet::new();
        let mut seen_dirs = HashSet::new();
        for d in &c.dirs {
            self.walk(
                &d.on_node,
                d.max_depth,
                &mut seen,
                &mut seen_dirs,
                found,
                dirs,
            );
        }
    }

    /// Every walk root: the configs' own and the running containers'.
    fn all_roots(&self) -> impl Iterator<Item = (&Path, usize)> {
        let own = self
            .configs
            .iter()
            .flat_map(|c| c.roots.iter().map(|r| (r.dir.as_path(), r.max_depth)));
        let containers = self
            .containers
            .values()
            .flat_map(|c| c.dirs.iter().map(|d| (d.on_node.as_path(), d.max_depth)));
        own.chain(containers)
    }

    /// Every config that reads `path`: its globs match and its selector, if it has
    /// one, selects the container. `facts` is called at most once, and only when a
    /// config with a selector includes the path.
    pub(crate) fn select(&self, path: &Path, facts: &mut dyn FnMut() -> Facts) -> Selection {
        let mut known: Option<Facts> = None;
        let mut configs = Vec::new();
        for (i, c) in self.configs.iter().enumerate() {
            if !self.includes(i, c, path) {
                continue;
            }
            // A container's configs were chosen by their selectors when it was
            // resolved (see `resolve_containers`).
            if c.container {
                configs.push(i);
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
        for (dir, max_depth) in self.all_roots() {
            self.walk(dir, max_depth, &mut seen, &mut seen_dirs, found, dirs);
        }
    }

    /// Walks a directory that appeared under a root (a new pod's log directory), as
    /// deep as any root reaches below it.
    pub fn scan_dir(&self, dir: &Path, found: &mut Vec<Found>, dirs: &mut Vec<PathBuf>) {
        let mut seen = HashSet::new();
        let mut seen_dirs = HashSet::new();
        for (root, max_depth) in self.all_roots() {
            let Ok(rel) = dir.strip_prefix(root) else {
                continue;
            };
            let depth = rel
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .count();
            if depth < max_depth {
                let left = max_depth.saturating_sub(depth);
                self.walk(dir, left, &mut seen, &mut seen_dirs, found, dirs);
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
            // Anything but a directory (or a link to one): a FIFO or device named like
            // a log is found too, so admission refuses and counts it.
            let candidate =
                !ft.is_symlink() || std::fs::metadata(entry.path()).is_ok_and(|m| !m.is_dir());
            if !candidate {
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

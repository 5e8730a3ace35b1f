//! Files inside containers: `container_paths` globs (`/var/log/app/*.log` in the
//! container's own file system) resolved, per running container, into directories
//! the file source walks and watches like any other.
//!
//! # Resolution
//!
//! With `hostPID`, a container's file system as the container sees it (root file
//! system and volumes, through its mount namespace) is reachable from the node as
//! `/proc/<pid>/root/…`, for as long as its process runs. For every running
//! container a source's selector selects, each glob's literal directory
//! (`/var/log/app`) becomes a walk root `/proc/<pid>/root/var/log/app`. The list is
//! taken again every half second (the tracker's refresh) from the
//! container registry, so containers that start are picked up and those that stop
//! are dropped without touching other sources.
//!
//! # Paths
//!
//! `/proc/<pid>/root` changes with every restart of the container, so it is only
//! where the tracker reads. Records, checkpoints and queries carry the *logical*
//! path `container://<namespace>/<pod>/<container>/var/log/app/a.log`, which stays
//! the same across restarts. The checkpoint identity stays device + inode +
//! fingerprint: a restarted container that finds its file again in the same volume
//! resumes it where its previous run stopped.
//!
//! # Safety
//!
//! The agent is privileged and the container is not trusted: a symlink inside it
//! must never make the agent read a file of the node. A path walk through
//! `/proc/<pid>/root` resolves absolute symlinks against the *agent's* root, so:
//! - files are opened with `openat2(RESOLVE_IN_ROOT)` below the container's root
//!   ([`open_in_root`]), where absolute symlinks and `..` stay inside it, and with
//!   `O_NONBLOCK` so a FIFO put in a file's place cannot hang the reader;
//! - a glob's directory is resolved component by component inside the container's
//!   root ([`resolve_in_root`]) before it is walked or watched.
//!
//! A stopped container's open files are still read to their end through their fds,
//! as deleted files are.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::discovery::{ContainerRegistry, ContainerState, PodCache, PodLogRef};
use crate::select::ContainerFacts;

/// Scheme of the logical path of a file inside a container.
pub const SCHEME: &str = "container://";

/// Symlinks followed while resolving one directory inside a container (the kernel's
/// own bound).
const MAX_SYMLINKS: usize = 40;

/// One container as the resolver sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerView {
    /// The runtime's container id.
    pub id: String,
    /// Its init process in the node's pid namespace; `Some` only while it runs.
    pub pid: Option<u32>,
    /// Namespace, pod, pod UID, container name, restart count.
    pub pod: PodLogRef,
    /// What selectors are matched against.
    pub facts: ContainerFacts,
}

impl ContainerView {
    /// `container://<namespace>/<pod>/<container>`: the logical prefix of its files.
    pub fn logical_root(&self) -> String {
        logical_root(&self.pod)
    }
}

/// Where the file source learns which containers exist.
pub trait ContainerList: Send + Sync {
    /// Every container known on this node (running or not) that belongs to a pod.
    fn containers(&self) -> Vec<ContainerView>;
}

impl std::fmt::Debug for dyn ContainerList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContainerList")
    }
}

/// The node's containers from the CRI container registry, pod labels from the
/// Kubernetes API when it is watched (as selectors see them for CRI logs).
#[derive(Clone)]
pub struct RegistryContainers {
    pub registry: ContainerRegistry,
    pub pods: Option<PodCache>,
}

impl ContainerList for RegistryContainers {
    fn containers(&self) -> Vec<ContainerView> {
        self.registry
            .containers()
            .into_iter()
            .filter_map(|c| {
                let pod = c.pod?;
                let running = c.state == ContainerState::Running;
                let mut facts = ContainerFacts {
                    namespace: pod.namespace.clone(),
                    pod_name: pod.pod.clone(),
                    container_name: pod.container.clone(),
                    pod_labels: c.labels,
                    container_labels: Default::default(),
                    env: c.env,
                };
                if let Some(meta) = self.pods.as_ref().and_then(|p| p.get(&pod.pod_uid)) {
                    facts.pod_labels = meta.labels.clone();
                }
                Some(ContainerView {
                    id: c.id,
                    pid: c.pid.filter(|_| running),
                    pod,
                    facts,
                })
            })
            .collect()
    }
}

/// `container://<namespace>/<pod>/<container>`.
pub fn logical_root(pod: &PodLogRef) -> String {
    format!("{SCHEME}{}/{}/{}", pod.namespace, pod.pod, pod.container)
}

/// The logical path of `inner` (absolute, inside the container) in `logical_root`.
pub fn logical_path(logical_root: &str, inner: &Path) -> PathBuf {
    let mut path = std::ffi::OsString::from(logical_root);
    path.push(inner.as_os_str());
    PathBuf::from(path)
}

/// Splits a logical path into namespace, pod, container and the path inside the
/// container; `None` when `path` is not one.
pub fn parse_logical(path: &Path) -> Option<(&str, &str, &str, &Path)> {
    let text = path.to_str()?;
    let rest = text.strip_prefix(SCHEME)?;
    let mut parts = rest.splitn(4, '/');
    let (namespace, pod, container) = (parts.next()?, parts.next()?, parts.next()?);
    let inner = parts.next()?;
    if namespace.is_empty() || pod.is_empty() || container.is_empty() || inner.is_empty() {
        return None;
    }
    // The inner path keeps its leading `/`.
    let at = text.len() - inner.len() - 1;
    Some((namespace, pod, container, Path::new(&text[at..])))
}

/// `/proc/<pid>/root`: the container's file system as its processes see it.
pub fn proc_root(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root"))
}

/// The pid of a path below `/proc/<pid>/root`, and the path below that root.
pub fn split_proc_root(path: &Path) -> Option<(u32, &Path)> {
    let rest = path.strip_prefix("/proc").ok()?;
    let mut components = rest.components();
    let Some(Component::Normal(pid)) = components.next() else {
        return None;
    };
    let pid: u32 = pid.to_str()?.parse().ok()?;
    if components.next() != Some(Component::Normal("root".as_ref())) {
        return None;
    }
    Some((pid, components.as_path()))
}

/// Resolves `inner` (an absolute path inside the container) against the container's
/// root `root` as the container would: symlinks, absolute or relative, and `..`
/// never leave `root`. Returns the resolved path inside the container (absolute).
/// Components that do not exist (yet) are kept as they are.
pub fn resolve_in_root(root: &Path, inner: &Path) -> io::Result<PathBuf> {
    let mut resolved = PathBuf::from("/");
    let mut pending: Vec<std::ffi::OsString> = inner
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&name);
        let on_node = join_root(root, &candidate);
        match std::fs::symlink_metadata(&on_node) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&on_node)?;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(resolved)
}

/// `root` + `inner` (absolute inside the container).
pub fn join_root(root: &Path, inner: &Path) -> PathBuf {
    root.join(inner.strip_prefix("/").unwrap_or(inner))
}

/// Opens `inner` (absolute, inside the container) below the container's root `root`
/// for reading: `openat2` with `RESOLVE_IN_ROOT`, so no symlink leads out of it, and
/// `O_NONBLOCK`, so a FIFO cannot block the reader (see [`super::open`]).
pub fn open_in_root(root: &Path, inner: &Path) -> io::Result<File> {
    let relative = inner.strip_prefix("/").unwrap_or(inner);
    super::open::open_below(
        root,
        relative,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// The container a logical path belongs to: the running one of that namespace, pod
/// and name, else its latest run.
pub fn container_of(containers: &[ContainerView], logical: &Path) -> Option<ContainerView> {
    let (namespace, pod, name, _) = parse_logical(logical)?;
    containers
        .iter()
        .filter(|c| c.pod.namespace == namespace && c.pod.pod == pod && c.pod.container == name)
        .max_by_key(|c| (c.pid.is_some(), c.pod.restart))
        .cloned()
}

/// The logical container roots of `containers`, for keeping closed files' state
/// while their container is known (a restart finds them again).
pub fn known_roots(containers: &[ContainerView]) -> HashSet<String> {
    containers.iter().map(ContainerView::logical_root).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    #[test]
    fn logical_paths_round_trip() {
        let pod = PodLogRef {
            namespace: "shop".into(),
            pod: "cart-7d4".into(),
            pod_uid: "u".into(),
            container: "app".into(),
            restart: 3,
        };
        let path = logical_path(&logical_root(&pod), Path::new("/var/log/app/a.log"));
        assert_eq!(
            path,
            Path::new("container://shop/cart-7d4/app/var/log/app/a.log")
        );
        assert_eq!(
            parse_logical(&path),
            Some(("shop", "cart-7d4", "app", Path::new("/var/log/app/a.log")))
        );
        assert_eq!(parse_logical(Path::new("/var/log/app/a.log")), None);
        assert_eq!(parse_logical(Path::new("container://shop/cart")), None);
    }

    #[test]
    fn proc_root_paths_split_into_pid_and_inner_path() {
        assert_eq!(
            split_proc_root(Path::new("/proc/42/root/var/log/a.log")),
            Some((42, Path::new("var/log/a.log")))
        );
        assert_eq!(split_proc_root(Path::new("/proc/42/cwd/a.log")), None);
        assert_eq!(split_proc_root(Path::new("/proc/self/root/a.log")), None);
        assert_eq!(split_proc_root(Path::new("/var/log/a.log")), None);
        assert_eq!(proc_root(7), Path::new("/proc/7/root"));
    }

    /// A container's absolute symlink points into the container, not the node.
    #[test]
    fn symlinks_resolve_inside_the_container_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("data/log/app")).unwrap();
        std::fs::create_dir_all(r.join("var")).unwrap();
        symlink("/data/log", r.join("var/log")).unwrap();
        symlink("../../../../../../etc", r.join("data/log/up")).unwrap();
        assert_eq!(
            resolve_in_root(r, Path::new("/var/log/app")).unwrap(),
            Path::new("/data/log/app")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/var/log/up")).unwrap(),
            Path::new("/etc"),
            "`..` stops at the container's root"
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/not/yet")).unwrap(),
            Path::new("/not/yet")
        );
        symlink("loop", r.join("loop")).unwrap();
        assert!(resolve_in_root(r, Path::new("/loop/x")).is_err());
    }

    #[test]
    fn open_in_root_never_leaves_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/hostname"), "inside\n").unwrap();
        std::fs::create_dir_all(r.join("logs")).unwrap();
        symlink("/etc/hostname", r.join("logs/a.log")).unwrap();
        let mut text = String::new();
        open_in_root(r, Path::new("/logs/a.log"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "inside\n", "the container's /etc, not the node's");
        symlink("/no/such", r.join("logs/b.log")).unwrap();
        assert!(open_in_root(r, Path::new("/logs/b.log")).is_err());
    }
}

//! What a CRI log path says about its container.
//!
//! The kubelet writes container logs to
//! `/var/log/pods/<namespace>_<pod>_<pod-uid>/<container>/<restart>.log` and rotates them
//! to `<restart>.log.<timestamp>` (and `.gz` once compressed). Namespace, pod and
//! container names are DNS names, which never contain `_` or `/`, so the directory
//! splits unambiguously on `_`. That makes the path enough to name a container's lines
//! before (or without) any answer from the Kubernetes API.
//!
//! Only the last three components are read, so the same parser works under a host
//! mount such as `/host/var/log/pods`.

use std::path::Path;

/// The pod and container a CRI log file belongs to, from its path alone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodLogRef {
    pub namespace: String,
    pub pod: String,
    /// The pod's UID; for a static pod, the kubelet's config hash (which the mirror
    /// pod in the API carries in its `kubernetes.io/config.mirror` annotation).
    pub pod_uid: String,
    pub container: String,
    /// The container's restart count the file was written for (`<restart>.log`).
    pub restart: u32,
}

impl PodLogRef {
    /// Parses a CRI log path; `None` when the path is not one (a host log file, a
    /// non-UTF-8 name, a malformed directory).
    pub fn from_path(path: &Path) -> Option<PodLogRef> {
        let mut components = path.iter().rev();
        let file = components.next()?.to_str()?;
        let container = components.next()?.to_str()?;
        let pod_dir = components.next()?.to_str()?;

        let restart = restart_of(file)?;
        if !is_dns_name(container) {
            return None;
        }
        let mut parts = pod_dir.split('_');
        let (namespace, pod, pod_uid) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !is_dns_name(namespace) || !is_dns_name(pod) {
            return None;
        }
        if !is_pod_uid(pod_uid) {
            return None;
        }
        Some(PodLogRef {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            pod_uid: pod_uid.to_owned(),
            container: container.to_owned(),
            restart,
        })
    }
}

/// `<n>.log`, or a rotated `<n>.log.<suffix>`.
fn restart_of(file: &str) -> Option<u32> {
    let (digits, rest) = file.split_once('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if rest != "log" && !rest.starts_with("log.") {
        return None;
    }
    digits.parse().ok()
}

/// DNS-1123 label or subdomain characters: what namespace, pod and container names may
/// hold. Lenient on case and placement (the API server already validated them); strict
/// on `_` and `/`, which would make the path ambiguous.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A UUID (`8-4-4-4-12` hex) or a static pod's 32-hex-digit config hash.
fn is_pod_uid(s: &str) -> bool {
    match s.len() {
        32 => s.bytes().all(|b| b.is_ascii_hexdigit()),
        36 => s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

    fn parse(path: &str) -> Option<PodLogRef> {
        PodLogRef::from_path(Path::new(path))
    }

    #[test]
    fn plain_cri_path() {
        let r = parse(&format!("/var/log/pods/default_web-0_{UID}/nginx/0.log")).unwrap();
        assert_eq!(
            r,
            PodLogRef {
                namespace: "default".into(),
                pod: "web-0".into(),
                pod_uid: UID.into(),
                container: "nginx".into(),
                restart: 0,
            }
        );
    }

    #[test]
    fn dashes_and_dots_in_names_and_rotated_files() {
        let dir = format!("/host/var/log/pods/team-a.prod_api.v2-7d9f-x2k_{UID}/side-car.1");
        for (file, restart) in [
            ("12.log", 12),
            ("3.log.20240102-150405", 3),
            ("3.log.20240102-150405.gz", 3),
        ] {
            let r = parse(&format!("{dir}/{file}")).unwrap();
            assert_eq!(r.namespace, "team-a.prod");
            assert_eq!(r.pod, "api.v2-7d9f-x2k");
            assert_eq!(r.container, "side-car.1");
            assert_eq!(r.restart, restart, "{file}");
        }
    }

    #[test]
    fn static_pod_config_hash_as_uid() {
        let r = parse(
            "/var/log/pods/kube-system_etcd-node-a_3f4a9b8c7d6e5f4a3b2c1d0e9f8a7b6c/etcd/0.log",
        )
        .unwrap();
        assert_eq!(r.pod_uid, "3f4a9b8c7d6e5f4a3b2c1d0e9f8a7b6c");
    }

    #[test]
    fn rejects_what_is_not_a_cri_log_path() {
        for path in [
            "/var/log/syslog",
            "/var/log/nginx/access.log",
            "0.log",
            &format!("/var/log/pods/default_web_0_{UID}/nginx/0.log"), // a '_' too many
            &format!("/var/log/pods/default_web-0/{UID}/nginx/0.log"),
            "/var/log/pods/default_web-0_not-a-uid/nginx/0.log",
            &format!("/var/log/pods/default_web-0_{UID}/nginx/current.log"),
            &format!("/var/log/pods/default_web-0_{UID}/nginx/0.txt"),
            &format!("/var/log/pods/default_web-0_{UID}/nginx/.log"),
            &format!("/var/log/pods/default_web-0_{UID}/nginx/99999999999.log"),
            &format!("/var/log/pods/_web-0_{UID}/nginx/0.log"),
            &format!("/var/log/pods/default_web-0_{UID}/ngi nx/0.log"),
            "",
        ] {
            assert_eq!(parse(path), None, "{path}");
        }
    }

    #[test]
    fn non_utf8_path_is_not_a_pod_path() {
        use std::os::unix::ffi::OsStrExt;
        let mut raw = format!("/var/log/pods/default_web-0_{UID}/").into_bytes();
        raw.extend_from_slice(b"ng\xffinx/0.log");
        let path = Path::new(std::ffi::OsStr::from_bytes(&raw));
        assert_eq!(PodLogRef::from_path(path), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = parse(&s);
        }
    }
}

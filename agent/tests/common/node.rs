//! A node's directories for tests of container logs: the kubelet's pod log directory
//! (CRI log files written as the runtime would), host logs, the agent's data dir; and
//! the pods a fake API serves for them.

use std::io::Write;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;

use super::{TS, open_append};

/// A temporary node: `pods/` (the pod log directory), `host/`, `data/`.
pub struct Node {
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn new() -> Node {
        let node = Node {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(node.host_dir()).unwrap();
        std::fs::create_dir_all(node.pods_dir()).unwrap();
        node
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.dir.path().join("pods")
    }

    pub fn host_dir(&self) -> PathBuf {
        self.dir.path().join("host")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Appends CRI lines `<prefix> <i>` to the `app` container log of pod `name` in
    /// namespace `shop`.
    pub fn write_pod(&self, name: &str, uid: &str, lines: std::ops::Range<u32>, prefix: &str) {
        let dir = self
            .pods_dir()
            .join(format!("shop_{name}_{uid}"))
            .join("app");
        std::fs::create_dir_all(&dir).unwrap();
        let mut file = open_append(&dir.join("0.log"));
        for i in lines {
            writeln!(file, "{TS} stdout F {prefix} {i}").unwrap();
        }
    }
}

/// Pod `shop/<name>` on `node`, labelled `app: <app>`, with one container `app`
/// running image `shop/<app>:1`.
pub fn pod(node: &str, name: &str, uid: &str, app: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "shop", "name": name, "uid": uid, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": format!("shop/{app}:1")}]},
    }))
    .unwrap()
}

//! OCI images without docker or a registry: a root file system packed as one layer into
//! an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) inside a tar
//! archive, which `ctr images import`, `docker load` (25+) and `skopeo copy
//! oci-archive:…` accept.
//!
//! Shared by `cargo xtask image` (the agent's image) and the tests' containerd harness
//! (`agent/tests/common/cri.rs` includes this file by path, as it builds its busybox and
//! pause images and, for `agent/tests/daemonset_cri.rs`, the agent's image from the test
//! build of the binary): one writer, so the image the tests run is assembled exactly as
//! the published one.
//!
//! The archive is reproducible: entries sorted by name, owner root, a fixed mtime, modes
//! 0755/0644 (`tar::HeaderMode::Deterministic`), no creation time in the config. The
//! layer is uncompressed (`application/vnd.oci.image.layer.v1.tar`): registries take it
//! as it is, and pushing tools may compress it.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use sha2::{Digest, Sha256};

/// The image's run-time defaults (the OCI config's `config` object).
pub struct ImageConfig<'a> {
    pub entrypoint: &'a [&'a str],
    pub cmd: &'a [&'a str],
    /// `KEY=value`; `PATH` is always set.
    pub env: &'a [&'a str],
    /// `org.opencontainers.image.*` and the like, on the config and the manifest.
    pub labels: &'a [(&'a str, &'a str)],
}

/// What [`write_archive`] wrote.
#[derive(Debug)]
pub struct Written {
    /// `sha256:…` of the manifest: the image's identity in a registry or containerd.
    pub manifest_digest: String,
    /// Bytes of the archive.
    pub size: u64,
}

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Packs `rootfs` as the one layer of image `name` (`registry/repo:tag`) into the
/// archive `archive` (replaced if present).
pub fn write_archive(
    archive: &Path,
    name: &str,
    rootfs: &Path,
    config: &ImageConfig,
) -> io::Result<Written> {
    let tag = name
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map(|(_, tag)| tag)
        .ok_or_else(|| invalid(format!("image name {name:?} has no :tag")))?;
    let dir = archive
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // The layer goes to a temporary file first: its digest names its entry.
    let layer_tmp = dir.join(format!(".layer-{}.tar.tmp", std::process::id()));
    let layer = write_layer(rootfs, &layer_tmp);
    let (layer_digest, layer_size) = match layer {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&layer_tmp);
            return Err(e);
        }
    };
    let labels: serde_json::Map<String, serde_json::Value> = config
        .labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let mut env = vec![PATH_ENV];
    env.extend(config.env.iter().filter(|e| !e.starts_with("PATH=")));
    let platform = json!({"architecture": oci_arch(), "os": "linux"});
    let image_config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": env,
            "Entrypoint": config.entrypoint,
            "Cmd": config.cmd,
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    })
    .to_string();
    let config_digest = sha256_hex(image_config.as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": image_config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_size,
        }],
        "annotations": labels,
    })
    .to_string();
    let manifest_digest = sha256_hex(manifest.as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "platform": platform,
            "annotations": {
                // containerd's import takes the full name from here; the OCI
                // annotation carries the tag only, as the layout spec says.
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    })
    .to_string();

    let result = (|| {
        let mut out = tar::Builder::new(BufWriter::new(File::create(archive)?));
        append_bytes(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        append_bytes(&mut out, "index.json", index.as_bytes())?;
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            out.append_data(&mut header, dir, io::empty())?;
        }
        let blob = |digest: &str| format!("blobs/sha256/{digest}");
        append_bytes(&mut out, &blob(&config_digest), image_config.as_bytes())?;
        append_bytes(&mut out, &blob(&manifest_digest), manifest.as_bytes())?;
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_size(layer_size);
        out.append_data(&mut header, blob(&layer_digest), File::open(&layer_tmp)?)?;
        out.into_inner()?.flush()
    })();
    let _ = std::fs::remove_file(&layer_tmp);
    result?;
    Ok(Written {
        manifest_digest: format!("sha256:{manifest_digest}"),
        size: std::fs::metadata(archive)?.len(),
    })
}

/// Tars the contents of `rootfs` (relative names) into `path`; returns the tar's sha256 (hex)
/// and size.
fn write_layer(rootfs: &Path, path: &Path) -> io::Result<(String, u64)> {
    let mut tar = tar::Builder::new(HashingWriter {
        inner: BufWriter::new(File::create(path)?),
        hasher: Sha256::new(),
        len: 0,
    });
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let mut entries = Vec::new();
    walk(rootfs, Path::new(""), &mut entries)?;
    for rel in entries {
        tar.append_path_with_name(rootfs.join(&rel), &rel)?;
    }
    let mut writer = tar.into_inner()?;
    writer.inner.flush()?;
    Ok((hex(&writer.hasher.finalize()), writer.len))
}

/// Every path below `dir` (relative to the walk's root), parents before children,
/// siblings by name: the layer's order does not depend on the file system's.
fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let path = rel.join(name);
        out.push(path.clone());
        if std::fs::symlink_metadata(root.join(&path))?.is_dir() {
            walk(root, &path, out)?;
        }
    }
    Ok(())
}

fn append_bytes<W: Write>(out: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_mode(0o644);
    header.set_size(bytes.len() as u64);
    out.append_data(&mut header, name, bytes)
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The OCI name of this machine's architecture (images are built for the host).
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// The agent's root file system in `rootfs` (which must not exist yet): `binary` at
/// `/usr/bin/logtap` without its debug sections, the loader and shared libraries
/// `ldd` names for it at the paths it names, the host's CA bundle, and the few files
/// glibc and the agent look for (`/etc/passwd`, `/etc/group`, `/etc/nsswitch.conf`).
/// The libraries come from the build machine, so the image runs what the binary was
/// linked against (glibc is backward compatible, not forward).
pub fn agent_rootfs(binary: &Path, rootfs: &Path) -> io::Result<()> {
    if rootfs.exists() {
        return Err(invalid(format!("{} exists already", rootfs.display())));
    }
    // Mount points of the DaemonSet (`deploy/daemonset.yaml`) exist in the image, so a
    // read-only root file system needs no runtime to create them.
    for dir in [
        "usr/bin",
        "etc/ssl/certs",
        "etc/logtap",
        "var/lib/logtap",
        "var/log",
        "run/containerd",
        "proc",
        "sys",
        "dev",
        "tmp",
    ] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    let bin = rootfs.join("usr/bin/logtap");
    let out = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&bin)
        .arg(binary)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("run strip (binutils): {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "strip --strip-debug {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    for lib in shared_libraries(binary)? {
        let to = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
        std::fs::create_dir_all(to.parent().unwrap_or(rootfs))?;
        // Copies the file a symlink (libc.so.6 → …) points to under the name the
        // binary asks for.
        std::fs::copy(&lib, &to)
            .map_err(|e| io::Error::new(e.kind(), format!("copy {}: {e}", lib.display())))?;
    }
    let bundle = "etc/ssl/certs/ca-certificates.crt";
    match std::fs::copy(Path::new("/").join(bundle), rootfs.join(bundle)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(io::Error::new(
                e.kind(),
                format!("/{bundle}: {e} (install ca-certificates)"),
            ));
        }
        Err(e) => return Err(e),
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/:/sbin/nologin\n",
    )?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
    std::fs::write(
        rootfs.join("etc/nsswitch.conf"),
        "hosts: files dns\npasswd: files\ngroup: files\n",
    )?;
    Ok(())
}

/// The absolute paths of the loader and libraries `ldd` resolves for `binary`.
pub fn shared_libraries(binary: &Path) -> io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("run ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // A static binary: `ldd` says so (glibc's on stderr) and fails.
    let said = |s: &str| text.contains(s) || String::from_utf8_lossy(&out.stderr).contains(s);
    if said("not a dynamic executable") || said("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_ldd(&text).map_err(invalid)
}

/// Lines of `ldd`: `libz.so.1 => /lib/…/libz.so.1 (0x…)`, `/lib64/ld-linux….so.2
/// (0x…)` (the loader), `linux-vdso.so.1 (0x…)` (in the kernel, no file).
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    return Err(format!("ldd: {} not found", name.trim()));
                }
                target
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else if !path.starts_with("linux-vdso") && !path.starts_with("linux-gate") {
            return Err(format!("ldd: cannot read {line:?}"));
        }
    }
    Ok(libs)
}

/// Where the agent's images are published; `deploy/daemonset.yaml` names
/// `<REPOSITORY>:<version>` (a test checks that they agree).
pub const AGENT_REPOSITORY: &str = "ghcr.io/logtap/logtap";

/// The agent's image `AGENT_REPOSITORY:<version>` from `binary`, as the archive
/// `<dir>/logtap-<version>.oci.tar`; the root file system is assembled in a directory
/// next to it and removed.
pub fn agent_image(binary: &Path, dir: &Path, version: &str) -> io::Result<(PathBuf, Written)> {
    let name = format!("{AGENT_REPOSITORY}:{version}");
    let rootfs = dir.join(format!("rootfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&rootfs);
    let archive = dir.join(format!("logtap-{version}.oci.tar"));
    let written = agent_rootfs(binary, &rootfs).and_then(|()| {
        write_archive(
            &archive,
            &name,
            &rootfs,
            &ImageConfig {
                // The DaemonSet gives `args` only: the entrypoint stays.
                entrypoint: &["/usr/bin/logtap"],
                cmd: &["run"],
                env: &["SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
                labels: &[
                    ("org.opencontainers.image.title", "logtap"),
                    ("org.opencontainers.image.version", version),
                    ("org.opencontainers.image.licenses", "Apache-2.0"),
                ],
            },
        )
    });
    let _ = std::fs::remove_dir_all(&rootfs);
    Ok((archive, written?))
}

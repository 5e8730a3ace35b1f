//! Tests of `oci.rs`, kept out of it: the containerd harness of `agent/tests` includes
//! that file, and these would run again in every test binary that does.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use serde_json::json;

use crate::oci::*;

#[test]
fn ldd_output_gives_the_loader_and_libraries_but_not_the_vdso() {
    let text = "\tlinux-vdso.so.1 (0x00007ffd5a1f2000)\n\
         \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f0d3ef71000)\n\
         \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0d3c53e000)\n\
         \t/lib64/ld-linux-x86-64.so.2 (0x00007f0d3efa3000)\n";
    assert_eq!(
        parse_ldd(text).unwrap(),
        [
            "/lib/x86_64-linux-gnu/libz.so.1",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2"
        ]
        .map(PathBuf::from)
    );
}

#[test]
fn a_library_ldd_cannot_find_is_an_error_naming_it() {
    let err = parse_ldd("\tlibfoo.so.3 => not found\n").unwrap_err();
    assert_eq!(err, "ldd: libfoo.so.3 not found");
}

#[test]
fn an_image_name_without_a_tag_is_an_error() {
    let dir = tempdir();
    let err = write_archive(
        &dir.join("x.tar"),
        "localhost:5000/logtap",
        &dir,
        &ImageConfig {
            entrypoint: &[],
            cmd: &[],
            env: &[],
            labels: &[],
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("has no :tag"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The layout's blobs are named by their digests and referenced with their sizes,
/// and the same root file system gives the same bytes twice.
#[test]
fn the_archive_is_a_consistent_reproducible_oci_layout() {
    let dir = tempdir();
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::write(rootfs.join("bin/hello"), "#!/bin/sh\necho hi\n").unwrap();
    std::os::unix::fs::symlink("hello", rootfs.join("bin/hi")).unwrap();
    let config = ImageConfig {
        entrypoint: &["/bin/hello"],
        cmd: &["run"],
        env: &["A=1"],
        labels: &[("org.opencontainers.image.version", "9.9.9")],
    };
    let a = write_archive(
        &dir.join("a.tar"),
        "example.org/x/y:9.9.9",
        &rootfs,
        &config,
    )
    .unwrap();
    let b = write_archive(
        &dir.join("b.tar"),
        "example.org/x/y:9.9.9",
        &rootfs,
        &config,
    )
    .unwrap();
    assert_eq!(a.manifest_digest, b.manifest_digest);
    assert_eq!(
        std::fs::read(dir.join("a.tar")).unwrap(),
        std::fs::read(dir.join("b.tar")).unwrap()
    );

    let mut files = std::collections::BTreeMap::new();
    let mut archive = tar::Archive::new(File::open(dir.join("a.tar")).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        files.insert(name, bytes);
    }
    let json = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&files[name]).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let blob = |descriptor: &serde_json::Value| -> &Vec<u8> {
        let digest = descriptor["digest"].as_str().unwrap();
        let bytes = &files[&format!("blobs/sha256/{}", &digest[7..])];
        assert_eq!(format!("sha256:{}", sha256_hex(bytes)), digest);
        assert_eq!(descriptor["size"].as_u64(), Some(bytes.len() as u64));
        bytes
    };
    let index = json("index.json");
    let descriptor = &index["manifests"][0];
    assert_eq!(
        descriptor["annotations"]["io.containerd.image.name"],
        "example.org/x/y:9.9.9"
    );
    assert_eq!(descriptor["digest"], a.manifest_digest.as_str());
    let manifest: serde_json::Value = serde_json::from_slice(blob(descriptor)).unwrap();
    let config: serde_json::Value = serde_json::from_slice(blob(&manifest["config"])).unwrap();
    assert_eq!(config["config"]["Entrypoint"], json!(["/bin/hello"]));
    assert_eq!(config["config"]["Env"][1], "A=1");
    let layer = blob(&manifest["layers"][0]);
    assert_eq!(
        config["rootfs"]["diff_ids"][0].as_str().unwrap(),
        format!("sha256:{}", sha256_hex(layer))
    );

    let mut layer = tar::Archive::new(&layer[..]);
    let entries: Vec<(String, tar::EntryType, u32, u64)> = layer
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().display().to_string(),
                h.entry_type(),
                h.mode().unwrap(),
                h.uid().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("bin".to_owned(), tar::EntryType::Directory, 0o755, 0),
            ("bin/hello".to_owned(), tar::EntryType::Regular, 0o644, 0),
            ("bin/hi".to_owned(), tar::EntryType::Symlink, 0o755, 0),
        ]
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "xtask-oci-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

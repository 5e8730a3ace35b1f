//! Tracepoint field offsets, read from tracefs at load time.
//!
//! The layout of a tracepoint's record (`events/<category>/<name>/format`) changes
//! between kernels; reading it here keeps the probes free of hard-coded offsets.

use std::path::{Path, PathBuf};

use logtap_ebpf_common::TracepointOffsets;

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs directory holding `events/`, mounting tracefs at `/sys/kernel/tracing`
/// when neither usual place has it (needs CAP_SYS_ADMIN, which loading probes needs too).
pub fn tracefs_root() -> Result<PathBuf, String> {
    if let Some(found) = CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
    {
        return Ok(found.to_path_buf());
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "no tracefs with events/ in {CANDIDATES:?}, and mounting tracefs on /sys/kernel/tracing failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    tracing::info!("mounted tracefs on /sys/kernel/tracing");
    Ok(PathBuf::from(CANDIDATES[0]))
}

/// Byte offset of `field` in a tracepoint `format` file's text.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    field_layout(format, field).map(|(offset, _)| offset)
}

/// Byte offset and size of `field` in a tracepoint `format` file's text.
fn field_layout(format: &str, field: &str) -> Option<(u32, u32)> {
    // "\tfield:const char * buf;\toffset:24;\tsize:8;\tsigned:0;"
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';');
        let decl = parts.next()?.trim().strip_prefix("field:")?;
        let name = decl.rsplit([' ', '*']).next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        let value = |key: &str| -> Option<u32> {
            parts
                .clone()
                .map(str::trim)
                .find_map(|p| p.strip_prefix(key))?
                .parse()
                .ok()
        };
        Some((value("offset:")?, value("size:")?))
    })
}

/// The size of the cgroup tracepoints' `id` field, which must be the same in both
/// formats and 4 or 8 bytes (see `TracepointOffsets::cgroup_id_size`).
fn cgroup_id_size(mkdir: &str, rmdir: &str) -> Result<u32, String> {
    let size = |format: &str| field_layout(format, "id").map(|(_, size)| size);
    match (size(mkdir), size(rmdir)) {
        (Some(a), Some(b)) if a == b && (a == 4 || a == 8) => Ok(a),
        other => Err(format!(
            "cgroup_mkdir/cgroup_rmdir: an `id` field of {other:?} bytes (the probes read 4 or 8, the same in both)"
        )),
    }
}

/// Reads the offsets of every field the probes use. `sched_process_exit`'s
/// `group_dead` may be absent (5.10 has no such field): its offset is then 0, and the
/// probe reports an exit's `group_dead` as unknown.
pub fn tracepoint_offsets(root: &Path) -> Result<TracepointOffsets, String> {
    // Each format file read once, named in errors by its path below `events/`.
    let format = |event: &str| -> Result<(String, String), String> {
        let path = root.join("events").join(event).join("format");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok((format!("events/{event}/format"), text))
    };
    let offset = |(name, text): &(String, String), field: &str| -> Result<u32, String> {
        field_offset(text, field).ok_or_else(|| format!("{name}: no field {field}"))
    };
    let mkdir = format("cgroup/cgroup_mkdir")?;
    let rmdir = format("cgroup/cgroup_rmdir")?;
    let exec = format("sched/sched_process_exec")?;
    let (_, exit) = format("sched/sched_process_exit")?;
    Ok(TracepointOffsets {
        mkdir_root: offset(&mkdir, "root")?,
        mkdir_id: offset(&mkdir, "id")?,
        mkdir_path: offset(&mkdir, "path")?,
        rmdir_root: offset(&rmdir, "root")?,
        rmdir_id: offset(&rmdir, "id")?,
        rmdir_path: offset(&rmdir, "path")?,
        exec_filename: offset(&exec, "filename")?,
        exit_group_dead: exit_group_dead_offset(&exit),
        cgroup_id_size: cgroup_id_size(&mkdir.1, &rmdir.1)?,
    })
}

/// `group_dead`'s offset in `sched_process_exit`'s format, 0 when it has none.
fn exit_group_dead_offset(format: &str) -> u32 {
    field_offset(format, "group_dead").unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITE: &str = "name: sys_enter_write
ID: 840
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:const char * buf;\toffset:24;\tsize:8;\tsigned:0;
\tfield:size_t count;\toffset:32;\tsize:8;\tsigned:0;
\tfield:char comm[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__data_loc char[] path;\toffset:56;\tsize:4;\tsigned:0;

print fmt: \"fd: 0x%08lx\", ((unsigned long)(REC->fd))
";

    #[test]
    fn offsets_of_plain_pointer_array_and_data_loc_fields() {
        assert_eq!(field_offset(WRITE, "fd"), Some(16));
        assert_eq!(field_offset(WRITE, "buf"), Some(24));
        assert_eq!(field_offset(WRITE, "count"), Some(32));
        assert_eq!(field_offset(WRITE, "comm"), Some(40));
        assert_eq!(field_offset(WRITE, "path"), Some(56));
        assert_eq!(field_offset(WRITE, "vlen"), None);
        assert_eq!(field_offset("garbage\n;;;\nfield:", "fd"), None);
    }

    /// `sched_process_exit`'s format on Debian bullseye's 5.10 (copied from its tracefs
    /// in `cargo xtask vm-test`), where the probes did not load while `group_dead` was
    /// required, and with 6.18's `group_dead` added.
    #[test]
    fn an_exit_tracepoint_without_group_dead_is_not_an_error() {
        const EXIT_5_10: &str = "name: sched_process_exit
ID: 312
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:1;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;

print fmt: \"comm=%s pid=%d prio=%d\", REC->comm, REC->pid, REC->prio
";
        assert_eq!(exit_group_dead_offset(EXIT_5_10), 0);
        let with = EXIT_5_10.replace(
            "\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;\n",
            "\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;\n\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n",
        );
        assert_eq!(exit_group_dead_offset(&with), 32);
    }

    /// `cgroup_mkdir`'s format on Ubuntu's 5.11 (copied from its tracefs in `cargo
    /// xtask vm-test --kernel 5.11`), whose `id` is an `int`: read as 8 bytes it took
    /// `level` as its upper half, and no cgroup was ever watched.
    #[test]
    fn a_cgroup_id_field_of_four_bytes_is_read_as_four() {
        const MKDIR_5_11: &str = "name: cgroup_mkdir
ID: 432
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int root;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int id;\toffset:12;\tsize:4;\tsigned:1;
\tfield:int level;\toffset:16;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] path;\toffset:20;\tsize:4;\tsigned:1;
";
        assert_eq!(field_layout(MKDIR_5_11, "id"), Some((12, 4)));
        assert_eq!(cgroup_id_size(MKDIR_5_11, MKDIR_5_11), Ok(4));
        let wide = MKDIR_5_11
            .replace("int id;\toffset:12;\tsize:4", "u64 id;\toffset:16;\tsize:8")
            .replace("int level;\toffset:16", "int level;\toffset:12");
        assert_eq!(field_layout(&wide, "id"), Some((16, 8)));
        assert_eq!(cgroup_id_size(&wide, &wide), Ok(8));
        let e = cgroup_id_size(MKDIR_5_11, &wide).unwrap_err();
        assert!(e.contains("the same in both"), "{e}");
        let odd = MKDIR_5_11.replace(
            "int id;\toffset:12;\tsize:4",
            "short id;\toffset:12;\tsize:2",
        );
        assert!(cgroup_id_size(&odd, &odd).is_err());
        assert!(cgroup_id_size("garbage", "garbage").is_err());
    }

    #[test]
    fn the_running_kernel_has_every_field_the_probes_read() {
        if std::env::var("LOGTAP_SKIP_EBPF_TESTS").as_deref() == Ok("1") {
            eprintln!("LOGTAP_SKIP_EBPF_TESTS=1: not reading the running kernel's facts");
            return;
        }
        let root = tracefs_root().unwrap();
        let tp = tracepoint_offsets(&root).unwrap();
        assert!(tp.exec_filename > 0, "{tp:?}");
        assert!(tp.mkdir_path > tp.mkdir_id, "{tp:?}");
        assert!(matches!(tp.cgroup_id_size, 4 | 8), "{tp:?}");
    }
}

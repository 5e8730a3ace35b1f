//! The contract between logtap's eBPF probes and the agent: `#[repr(C)]` types with
//! fixed-width fields and no implicit padding, and map names shared by both sides.
//!
//! Only the contract lives here for now; the probes themselves (write/writev capture at
//! syscall exit, cgroup and process lifecycle) arrive with the eBPF capture work and
//! will be built by `cargo xtask build-ebpf`. Keeping the contract `no_std` from the
//! start means the kernel side can depend on it unchanged.
#![no_std]

/// Ring buffer carrying capture and lifecycle records (≤ 15 bytes: the kernel truncates).
pub const RING_MAP: &str = "LOGTAP_RING";

/// Header of a captured stdout/stderr write; `len` payload bytes follow it.
///
/// `stream_offset` is the byte offset of the payload in its container stream — the
/// `(source_id, offset)` coordinate of the pipeline — so userspace sees every gap.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamRecordHeader {
    /// cgroup v2 id (inode of the container's cgroup directory).
    pub cgroup_id: u64,
    pub stream_offset: u64,
    pub ktime_ns: u64,
    pub tgid: u32,
    /// 1 = stdout, 2 = stderr (as `logtap::frame::Stream`).
    pub stream: u32,
    pub len: u32,
    pub flags: u32,
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_has_no_implicit_padding() {
        // 3 × u64 + 4 × u32: any padding would change the size and break the kernel side.
        assert_eq!(
            core::mem::size_of::<super::StreamRecordHeader>(),
            3 * 8 + 4 * 4
        );
    }
}

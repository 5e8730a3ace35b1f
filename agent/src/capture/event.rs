//! What the probes report (the contract of `probe`).

use crate::frame::Stream;

pub enum ProbeEvent<'a> {
    /// `bytes` are the stream bytes at `offset..offset+bytes.len()` of (cgroup_id, stream).
    Data {
        cgroup_id: u64,
        stream: Stream,
        offset: u64,
        bytes: &'a [u8],
        ktime_ns: u64,
        tgid: u32,
    },
    StreamBound {
        cgroup_id: u64,
        stream: Stream,
        inode: u64,
    },
    CgroupCreated {
        cgroup_id: u64,
        path: &'a [u8],
    },
    CgroupRemoved {
        cgroup_id: u64,
        path: &'a [u8],
    },
    Exec {
        cgroup_id: u64,
        tgid: u32,
        filename: &'a [u8],
    },
    Exit {
        cgroup_id: u64,
        tgid: u32,
        group_dead: bool,
    },
}

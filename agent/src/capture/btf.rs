//! Member offsets of kernel structs, from the kernel's own BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The probes walk `task_struct → files → fdt → fd[n] → f_inode → i_ino` with
//! `bpf_probe_read_kernel`, which needs the byte offset of each member in *this* kernel.
//! BTF has them. Only the little this needs is parsed: the header, the string section,
//! and struct/union members; every other kind is skipped by its documented size.
//! Members inside anonymous structs and unions (common in `struct file` and `struct
//! inode`) are found by descending into them, adding their offsets.

use logtap_ebpf_common::KernelOffsets;

/// Where the running kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;

/// The `pt_regs` members holding a syscall's first three arguments and its number on
/// x86-64, the one architecture the probes are built for.
const SYSCALL_ARG_REGS: [&str; 3] = ["di", "si", "dx"];
const SYSCALL_NR_REG: &str = "orig_ax";

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One parsed type: what member lookup needs, nothing more.
#[derive(Clone, Debug)]
struct Type {
    kind: u32,
    name: u32,
    /// Struct/union: its members (name offset, type id, bit offset).
    members: Vec<(u32, u32, u32)>,
    /// Typedef/const/volatile/restrict/type tag: the type it refers to.
    referee: u32,
}

/// The parsed type section of a BTF blob.
pub struct Btf {
    strings: Vec<u8>,
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, String> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

impl Btf {
    pub fn from_file(path: &str) -> Result<Btf, String> {
        let data = std::fs::read(path)
            .map_err(|e| format!("{path}: {e} (the kernel needs CONFIG_DEBUG_INFO_BTF)"))?;
        Btf::parse(&data).map_err(|e| format!("{path}: {e}"))
    }

    /// Parses a little-endian BTF blob (the only byte order of the BPF target we build).
    pub fn parse(data: &[u8]) -> Result<Btf, String> {
        let magic = data
            .get(0..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or("empty")?;
        if magic != BTF_MAGIC {
            return Err(format!("bad magic {magic:#x}"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or_else(|| "section out of bounds".to_owned())
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            members: Vec::new(),
            referee: 0,
        }];
        let mut at = 0;
        while at < type_data.len() {
            let name = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for m in 0..vlen {
                        let base = at + m * 12;
                        let offset = u32_at(type_data, base + 8)?;
                        // kind_flag: bitfield size in the top 8 bits, bit offset below.
                        let bits = if kind_flag {
                            offset & 0x00ff_ffff
                        } else {
                            offset
                        };
                        members.push((
                            u32_at(type_data, base)?,
                            u32_at(type_data, base + 4)?,
                            bits,
                        ));
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                _ => 0,
            };
            at += extra;
            let referee = match kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    size_or_type
                }
                _ => 0,
            };
            types.push(Type {
                kind,
                name,
                members,
                referee,
            });
        }
        Ok(Btf { strings, types })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            if t.referee == 0 {
                return Some(t);
            }
            id = t.referee;
        }
        None
    }

    /// Byte offset of `member` in `struct name`, looking into anonymous members.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, String> {
        let structure = self
            .types
            .iter()
            .find(|t| {
                t.kind == KIND_STRUCT
                    && self.name(t.name) == name.as_bytes()
                    && !t.members.is_empty()
            })
            .ok_or_else(|| format!("no struct {name} in the kernel's BTF"))?;
        let bits = self
            .find_member(structure, member.as_bytes(), 0)
            .ok_or_else(|| format!("no member {member} in struct {name}"))?;
        if bits % 8 != 0 {
            return Err(format!("{name}.{member} is a bit field"));
        }
        Ok(bits / 8)
    }

    fn find_member(&self, t: &Type, member: &[u8], depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for &(name, _, bits) in &t.members {
            if self.name(name) == member {
                return Some(bits);
            }
        }
        for &(name, ty, bits) in &t.members {
            if name != 0 && !self.name(name).is_empty() {
                continue;
            }
            let inner = self.resolve(ty)?;
            if (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                && let Some(found) = self.find_member(inner, member, depth + 1)
            {
                return Some(bits + found);
            }
        }
        None
    }

    /// The offsets of the probes' walk from the current task to its fd's inode.
    /// Everything the probes read from kernel structs.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, String> {
        Ok(KernelOffsets {
            task_files: self.member_offset("task_struct", "files")?,
            files_fdt: self.member_offset("files_struct", "fdt")?,
            fdtable_max_fds: self.member_offset("fdtable", "max_fds")?,
            fdtable_fd: self.member_offset("fdtable", "fd")?,
            file_inode: self.member_offset("file", "f_inode")?,
            inode_mode: self.member_offset("inode", "i_mode")?,
            inode_ino: self.member_offset("inode", "i_ino")?,
            inode_sb: self.member_offset("inode", "i_sb")?,
            sb_dev: self.member_offset("super_block", "s_dev")?,
            regs_arg0: self.member_offset("pt_regs", SYSCALL_ARG_REGS[0])?,
            regs_arg1: self.member_offset("pt_regs", SYSCALL_ARG_REGS[1])?,
            regs_arg2: self.member_offset("pt_regs", SYSCALL_ARG_REGS[2])?,
            regs_nr: self.member_offset("pt_regs", SYSCALL_NR_REG)?,
            task_ti_status: self.member_offset("task_struct", "thread_info")?
                + self.member_offset("thread_info", "status")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob built by hand: `struct outer { int a; union { int b; struct { int c; }; }; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0".to_vec();
        let (int, outer, a, b, c) = (1u32, 5u32, 11u32, 13u32, 15u32);
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (4 bytes)
        push(&[int, KIND_INT << 24, 4, 32]);
        // 2: anonymous struct { int c; } at bit 0
        push(&[0, KIND_STRUCT << 24 | 1, 4, c, 1, 0]);
        // 3: anonymous union { int b; struct {..}; }
        push(&[0, KIND_UNION << 24 | 2, 4, b, 1, 0, 0, 2, 0]);
        // 4: const of the union, to check qualifiers are followed
        push(&[0, KIND_CONST << 24, 3]);
        // 5: struct outer { int a; <anon union> at byte 8; }
        push(&[outer, KIND_STRUCT << 24 | 2, 12, a, 1, 0, 0, 4, 64]);
        let mut data = Vec::new();
        for w in [
            0x0001_eb9fu32,
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn members_of_anonymous_unions_and_structs_are_found() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 8);
        assert!(btf.member_offset("outer", "d").is_err());
        assert!(btf.member_offset("inner", "a").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(b"\x9f\xeb\x01\x00").is_err());
        let mut truncated = blob();
        truncated.truncate(40);
        assert!(Btf::parse(&truncated).is_err());
    }

    #[test]
    fn the_running_kernel_has_the_walk_of_the_probes() {
        if std::env::var("LOGTAP_SKIP_EBPF_TESTS").as_deref() == Ok("1") {
            eprintln!("LOGTAP_SKIP_EBPF_TESTS=1: not reading the running kernel's facts");
            return;
        }
        // Every kernel the probes support has BTF; a machine without it fails loudly here.
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        let k = btf.kernel_offsets().unwrap();
        assert!(k.task_files > 0 && k.inode_ino > 0 && k.sb_dev > 0, "{k:?}");
    }
}

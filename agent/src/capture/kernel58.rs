//! Proof that the compat hooks would load on a 5.8 kernel, without one: the programs
//! [`HookMode::Compat`](super::HookMode::Compat) loads are read from the embedded
//! object (with their subprograms linked in, as aya links them before loading) and
//! every instruction is checked against what 5.8's verifier accepts:
//!
//! - no atomic other than the plain add (`BPF_XADD`, `imm` 0): `BPF_FETCH` and the
//!   other `BPF_ATOMIC` operations are 5.12;
//! - every helper call's id at most [`MAX_HELPER_5_8`]: `bpf_get_current_task_btf`
//!   (158, 5.11), `bpf_task_pt_regs` (175, 5.15), `bpf_loop` (181, 5.17) are beyond;
//! - calls are helpers or bpf-to-bpf calls only (no kfuncs, 5.13), 64-bit immediates
//!   plain or map references (no `BPF_PSEUDO_BTF_ID`, 5.10, or function pointers, 5.13);
//! - the program types are tracepoints and raw tracepoints (no `BPF_PROG_TYPE_TRACING`:
//!   trampolines and BTF tracepoints need more than 5.8 offers for these hooks).
//!
//! What this does not prove: that 5.8's verifier, less able than today's, accepts the
//! programs' bounds and loops. The same programs pass this kernel's verifier in the
//! `capture_probes` tests, and 5.10's (`cargo xtask vm-test`); no 5.8 kernel has run
//! them (see docs/capture.md).

use aya_obj::generated::{BPF_ATOMIC, BPF_CALL, BPF_JMP, BPF_PSEUDO_CALL, BPF_STX, bpf_insn};
use aya_obj::{Object, ProgramSection};

/// The highest helper id of Linux 5.8: `BPF_FUNC_csum_level` (135), the last entry of
/// `__BPF_FUNC_MAPPER` in v5.8's `include/uapi/linux/bpf.h` (after the ring buffer's
/// 130–134, new in 5.8); 136 (`skc_to_tcp6_sock`) came in 5.9.
const MAX_HELPER_5_8: i32 = 135;

/// `BPF_LD | BPF_IMM | BPF_DW`: the two-slot 64-bit immediate load.
const LD_IMM64: u8 = 0x18;
/// `src_reg` of a 64-bit immediate that 5.8 knows: none (a constant), `BPF_PSEUDO_MAP_FD`,
/// `BPF_PSEUDO_MAP_VALUE` (5.5, globals). Unrelocated, as read here, map references are
/// still 0.
const LD_IMM64_SRC_5_8: [u8; 3] = [0, 1, 2];

/// Everything in `programs` of `object` that 5.8 would refuse, one line each.
fn refused_by_5_8(object: &[u8], programs: &[&str]) -> Result<Vec<String>, String> {
    let mut obj = Object::parse(object).map_err(|e| format!("parsing the object: {e}"))?;
    // As aya does before loading: every function's section is a text section, and each
    // program gets the subprograms it calls appended.
    let text_sections = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_calls(&text_sections)
        .map_err(|e| format!("linking calls: {e}"))?;
    let mut refused = Vec::new();
    for &name in programs {
        let program = obj
            .programs
            .get(name)
            .ok_or_else(|| format!("the object has no program {name}"))?;
        if !matches!(
            program.section,
            ProgramSection::TracePoint | ProgramSection::RawTracePoint
        ) {
            refused.push(format!("{name}: program type {:?}", program.section));
        }
        let function = &obj.functions[&program.function_key()];
        let mut insns = function.instructions.iter().enumerate();
        while let Some((at, insn)) = insns.next() {
            if let Some(why) = refused_instruction(insn) {
                refused.push(format!("{name}: instruction {at}: {why}"));
            }
            if insn.code == LD_IMM64 {
                // The second slot holds the immediate's upper half, no instruction.
                insns.next();
            }
        }
    }
    Ok(refused)
}

/// Why 5.8's verifier would refuse `insn`, if it would.
fn refused_instruction(insn: &bpf_insn) -> Option<String> {
    let (class, mode) = (u32::from(insn.code & 0x07), u32::from(insn.code & 0xe0));
    if class == BPF_STX && mode == BPF_ATOMIC && insn.imm != 0 {
        return Some(format!(
            "atomic operation {:#x} (only the plain add, BPF_XADD, is in 5.8)",
            insn.imm
        ));
    }
    if u32::from(insn.code) == BPF_JMP | BPF_CALL {
        return match u32::from(insn.src_reg()) {
            0 if insn.imm > MAX_HELPER_5_8 => Some(format!(
                "helper {} (5.8 has helpers up to {MAX_HELPER_5_8})",
                insn.imm
            )),
            0 | BPF_PSEUDO_CALL => None,
            other => Some(format!("call of kind {other} (a kfunc: 5.13)")),
        };
    }
    if insn.code == LD_IMM64 && !LD_IMM64_SRC_5_8.contains(&insn.src_reg()) {
        return Some(format!("64-bit immediate of kind {}", insn.src_reg()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::probe::{OBJECT, compat_programs};

    fn object() -> &'static [u8] {
        OBJECT.expect("the eBPF object is missing: run `cargo xtask build-ebpf`")
    }

    #[test]
    fn the_compat_programs_use_nothing_newer_than_5_8() {
        let programs = compat_programs();
        assert!(programs.contains(&"compat_sys_exit"), "{programs:?}");
        let refused = refused_by_5_8(object(), &programs).unwrap();
        assert!(refused.is_empty(), "{refused:#?}");
    }

    /// The check finds what it looks for: the 5.15 tracepoint program uses a newer
    /// helper (`bpf_task_pt_regs`, `bpf_get_current_task_btf`) and the fetch-add, the
    /// trampolines are another program type.
    #[test]
    fn the_other_write_programs_are_refused_for_what_5_8_lacks() {
        let refused = refused_by_5_8(object(), &["raw_sys_exit"]).unwrap();
        for expected in ["helper 158", "helper 175", "atomic operation 0x1"] {
            assert!(
                refused.iter().any(|r| r.contains(expected)),
                "{expected} not found in {refused:#?}"
            );
        }
        let refused = refused_by_5_8(object(), &["vfs_write_exit"]).unwrap();
        assert!(
            refused.iter().any(|r| r.contains("program type")),
            "{refused:#?}"
        );
        assert!(refused_by_5_8(object(), &["no_such_program"]).is_err());
    }

    /// One instruction from its encoding: code, `src_reg` (the upper nibble of the
    /// register byte), `imm`.
    fn insn(code: u32, src_reg: u32, imm: i32) -> bpf_insn {
        let mut bytes = vec![code as u8, (src_reg << 4) as u8, 0, 0];
        bytes.extend_from_slice(&imm.to_le_bytes());
        aya_obj::copy_instructions(&bytes).unwrap()[0]
    }

    #[test]
    fn refused_instructions() {
        let atomic_dw = BPF_STX | BPF_ATOMIC | 0x18;
        assert_eq!(refused_instruction(&insn(atomic_dw, 0, 0)), None, "xadd");
        // BPF_ADD | BPF_FETCH, BPF_XCHG, BPF_CMPXCHG
        for op in [0x01, 0xe1, 0xf1] {
            assert!(
                refused_instruction(&insn(atomic_dw, 0, op)).is_some(),
                "{op:#x}"
            );
        }
        let call = BPF_JMP | BPF_CALL;
        assert_eq!(refused_instruction(&insn(call, 0, 135)), None);
        assert!(refused_instruction(&insn(call, 0, 136)).is_some());
        assert_eq!(refused_instruction(&insn(call, 1, -20)), None, "bpf-to-bpf");
        assert!(refused_instruction(&insn(call, 2, 7)).is_some(), "kfunc");
        assert_eq!(refused_instruction(&insn(LD_IMM64.into(), 2, 0)), None);
        assert!(
            refused_instruction(&insn(LD_IMM64.into(), 3, 0)).is_some(),
            "BPF_PSEUDO_BTF_ID"
        );
    }
}

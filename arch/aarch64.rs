//! aarch64 (AAPCS64, Linux).
//!
//! Frame record (`stp x29, x30, [sp, #-16]!; mov x29, sp`, or placed at the top of the frame by
//! LLVM): `[x29]` = caller's x29, `[x29 + 8]` = x30, the return address. The record is not always
//! at the top of the frame (GCC puts it at the bottom), so sp cannot be derived from x29 and
//! frame pointers need only be 8-byte aligned. Leaf functions may have no record at all: their
//! caller is in x30 (`lr`).
//!
//! Return addresses may carry a pointer-authentication code in their upper bits; the walker
//! strips it with a mask (a core's `NT_ARM_PAC_MASK`, or the Linux 48-bit default) or, live,
//! with `xpaclri`.
//!
//! Signal frame (kernel `arch/arm64/kernel/signal.c`, `struct rt_sigframe { siginfo (128 bytes);
//! ucontext }`): the kernel sets x30 to the sigreturn trampoline (vDSO `__kernel_rt_sigreturn`:
//! `mov x8, #139; svc #0`) and x29 to a frame record `{x29, x30}` of the interrupted code that it
//! pushed right above the rt_sigframe and its extra context records. From the trampoline's sp:
//! the `ucontext` at +0x80, `uc_mcontext` (struct sigcontext) at +0x130, `regs[29]` at +0x220,
//! x30 at +0x228, sp at +0x230, pc at +0x238 (LLVM libunwind `UnwindCursor.hpp`, libgcc
//! `config/aarch64/linux-unwind.h`). qemu-user uses the same layout.

use super::{Arch, ArchKind, Regs};

/// The aarch64 backend (marker type).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aarch64;

/// Offset of `uc_mcontext` (struct sigcontext) in a `ucontext_t`: uc_flags, uc_link, uc_stack
/// (24), uc_sigmask (8), 120 bytes reserved for sigset growth, aligned to 16.
pub const UC_MCONTEXT: u64 = 0xb0;
/// Offset of `regs[0]` in a `ucontext_t` (sigcontext.fault_address comes first).
pub const UC_REGS: u64 = UC_MCONTEXT + 8;
/// Offset of x29 in a `ucontext_t`.
pub const UC_X29: u64 = UC_REGS + 29 * 8;
/// Offset of x30 in a `ucontext_t`.
pub const UC_X30: u64 = UC_REGS + 30 * 8;
/// Offset of sp in a `ucontext_t`.
pub const UC_SP: u64 = UC_REGS + 31 * 8;
/// Offset of pc in a `ucontext_t`.
pub const UC_PC: u64 = UC_REGS + 32 * 8;
/// `sizeof(struct rt_sigframe)`: siginfo 128 + ucontext up to mcontext 0xb0 + sigcontext
/// (fault_address, `regs[31]`, sp, pc, pstate, then `__reserved[4096]` aligned to 16).
pub const RT_SIGFRAME_SIZE: u64 = 128 + UC_MCONTEXT + 288 + 4096;
/// How far below the kernel's frame record the walker looks for the rt_sigframe when extra
/// context records (SVE, SME) made it larger than [`RT_SIGFRAME_SIZE`].
pub const SIGFRAME_SEARCH: u64 = 64 * 1024;

/// The vDSO's `__kernel_rt_sigreturn`: `mov x8, #139` (`d2801168`), `svc #0` (`d4000001`),
/// little-endian.
pub const SIGRETURN_CODE: [u8; 8] = [0x68, 0x11, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4];

/// Pointer-authentication bits for Linux user space with 48-bit virtual addresses: everything
/// above bit 47 (a core's `NT_ARM_PAC_MASK` gives the exact mask).
pub const DEFAULT_PAC_MASK: u64 = 0xffff_0000_0000_0000;

/// Register indices in the `pr_reg` of an `NT_PRSTATUS` note (`struct user_pt_regs`:
/// `regs[31]`, sp, pc, pstate).
pub mod user_regs {
    /// x29, the frame pointer
    pub const FP: usize = 29;
    /// x30, the link register
    pub const LR: usize = 30;
    /// sp
    pub const SP: usize = 31;
    /// pc
    pub const PC: usize = 32;
    /// Number of registers in `user_pt_regs`.
    pub const COUNT: usize = 34;
}

impl Arch for Aarch64 {
    const KIND: ArchKind = ArchKind::Aarch64;
    const FP_ALIGN: u64 = 8;
    // Go on arm64: `MOVD.W R30, -size(RSP); MOVD R29, -8(RSP); SUB $8, RSP, R29`.
    const RECORD_BELOW_SP: u64 = 8;
    const UC_FROM_SIGFRAME_SP: u64 = 128;
    const HAS_LINK_REGISTER: bool = true;

    #[inline(always)]
    fn caller_sp_after_record(_end_of_record: u64) -> u64 {
        0
    }

    fn lr_is_live(pc: u64, lr: u64, read_code: &mut dyn FnMut(u64, &mut [u8]) -> bool) -> bool {
        lr_is_live(pc, lr, read_code)
    }

    #[inline(always)]
    fn strip_ra(ra: u64, pac_mask: u64) -> u64 {
        let mask = if pac_mask == 0 {
            DEFAULT_PAC_MASK
        } else {
            pac_mask
        };
        ra & !mask
    }

    fn ucontext_regs(uc: u64, read: &mut dyn FnMut(u64) -> Option<u64>) -> Option<Regs> {
        Some(Regs {
            pc: read(uc.checked_add(UC_PC)?)?,
            sp: read(uc.checked_add(UC_SP)?)?,
            fp: read(uc.checked_add(UC_X29)?)?,
            lr: read(uc.checked_add(UC_X30)?)?,
        })
    }

    fn is_sigreturn(code: &[u8]) -> bool {
        code.starts_with(&SIGRETURN_CODE)
    }

    /// The kernel's frame record (`next_fp`) holds the interrupted x29/x30, and so does the
    /// sigcontext of the rt_sigframe below it. The rt_sigframe normally ends right at the record;
    /// when extra context records make it larger, look further down (16-byte steps, bounded by
    /// [`SIGFRAME_SEARCH`]) for the place where both saved words agree.
    fn sigframe_sp(
        _handler_fp: u64,
        next_fp: u64,
        read: &mut dyn FnMut(u64) -> Option<u64>,
    ) -> Option<u64> {
        let want_fp = read(next_fp)?;
        let want_lr = read(next_fp.checked_add(8)?)?;
        let mut back = RT_SIGFRAME_SIZE;
        while back <= SIGFRAME_SEARCH {
            let sp = next_fp.checked_sub(back)?;
            let uc = sp + Self::UC_FROM_SIGFRAME_SP;
            if read(uc + UC_X29) == Some(want_fp) && read(uc + UC_X30) == Some(want_lr) {
                return Some(sp);
            }
            back += 16;
        }
        None
    }
}

/// A64 instruction classes the leaf-`lr` rule needs.
pub mod insn {
    /// `BL imm26`: the target, given the instruction's address.
    pub fn bl_target(insn: u32, at: u64) -> Option<u64> {
        if insn & 0xfc00_0000 != 0x9400_0000 {
            return None;
        }
        // Sign-extend imm26 and scale by 4.
        let imm = (((insn & 0x03ff_ffff) << 6) as i32 >> 6) as i64 * 4;
        Some(at.wrapping_add(imm as u64))
    }

    /// `BLR Xn`, `BLRAA`/`BLRAB`/`BLRAAZ`/`BLRABZ`.
    pub fn is_blr(insn: u32) -> bool {
        insn & 0xffff_fc1f == 0xd63f_0000
            || insn & 0xffff_f800 == 0xd63f_0800
            || insn & 0xffff_f800 == 0xd73f_0800
    }

    /// `RET Xn`, `RETAA`, `RETAB`.
    pub fn is_ret(insn: u32) -> bool {
        insn & 0xffff_fc1f == 0xd65f_0000 || insn == 0xd65f_0bff || insn == 0xd65f_0fff
    }

    /// `STP X29, X30, [SP, #imm]` (signed offset) or `[SP, #imm]!` (pre-index): a frame record
    /// being pushed.
    pub fn is_record_push(insn: u32) -> bool {
        let base = insn & 0xffc0_7fff;
        base == 0xa900_7bfd || base == 0xa980_7bfd
    }
}

/// Is `lr` the return address of the function that `pc` is in (a leaf, or a function
/// interrupted before it pushed its frame record)?
/// - the instruction before `lr` must be a call (`BL`/`BLR`): otherwise `lr` is not a return
///   address at all (a leaf may use x30 as a scratch register only after saving it);
/// - for a direct `BL`, the callee's code from its entry up to `pc` must contain no frame
///   record push (then the record at `fp` is the function's own and already holds `lr`) and no
///   `RET` (then `pc` is past the callee's end, in another function: `lr` is stale, left by a
///   call the interrupted function made and returned from);
/// - for an indirect call the callee is unknown: `lr` is used only when it is far (4 KiB or
///   more) from `pc`, since a stale `lr` points into the interrupted function itself.
///
/// When the code cannot be read the distance rule decides alone.
pub fn lr_is_live(pc: u64, lr: u64, read_code: &mut dyn FnMut(u64, &mut [u8]) -> bool) -> bool {
    const SAME_FUNCTION: u64 = 4096;
    const MAX_SCAN: u64 = 4096;
    let far = lr.abs_diff(pc) >= SAME_FUNCTION;
    let call_at = lr.wrapping_sub(4);
    let mut b = [0u8; 4];
    if !read_code(call_at, &mut b) {
        return far;
    }
    let call = u32::from_le_bytes(b);
    if insn::is_blr(call) {
        return far;
    }
    let Some(entry) = insn::bl_target(call, call_at) else {
        return false;
    };
    if entry > pc || pc - entry > MAX_SCAN || entry % 4 != 0 {
        return false;
    }
    let mut chunk = [0u8; 256];
    let mut at = entry;
    while at < pc {
        let n = ((pc - at) as usize).min(chunk.len());
        if !read_code(at, &mut chunk[..n]) {
            return far;
        }
        for w in chunk[..n].chunks_exact(4) {
            let insn = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            if insn::is_ret(insn) || insn::is_record_push(insn) {
                return false;
            }
        }
        at += n as u64;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_llvm_libunwind() {
        // From the trampoline's sp: sigcontext at +0x130, regs[29] at +0x220, pc at +0x238.
        assert_eq!(128 + UC_MCONTEXT, 0x130);
        assert_eq!(128 + UC_X29, 0x220);
        assert_eq!(128 + UC_X30, 0x228);
        assert_eq!(128 + UC_SP, 0x230);
        assert_eq!(128 + UC_PC, 0x238);
        assert_eq!(RT_SIGFRAME_SIZE, 4688);
    }

    #[test]
    fn pac_strip() {
        let signed = 0x002f_0000_0040_1234u64 | (0x5a << 56);
        assert_eq!(Aarch64::strip_ra(signed, 0), 0x0000_0000_0040_1234);
        // A core's NT_ARM_PAC_MASK for 48-bit VA with TBI: bits 54..48 and 63..56.
        assert_eq!(
            Aarch64::strip_ra(signed, 0xff7f_0000_0000_0000),
            0x0000_0000_0040_1234
        );
        assert_eq!(Aarch64::strip_ra(0x40_1234, 0), 0x40_1234);
    }

    #[test]
    fn sigframe_found_by_matching_words() {
        // A fake stack: rt_sigframe at 0x10000, kernel frame record right after it.
        let base = 0x10000u64;
        let rec = base + RT_SIGFRAME_SIZE;
        let mut read = |a: u64| -> Option<u64> {
            if a == rec {
                Some(0x7000)
            } else if a == rec + 8 {
                Some(0x4000_1000)
            } else if a == base + 128 + UC_X29 {
                Some(0x7000)
            } else if a == base + 128 + UC_X30 {
                Some(0x4000_1000)
            } else if (0x1000..0x30000).contains(&a) {
                Some(0)
            } else {
                None
            }
        };
        assert_eq!(Aarch64::sigframe_sp(0, rec, &mut read), Some(base));
        // No agreeing words: bounded search, None.
        let mut read0 = |a: u64| if a < 0x30000 { Some(a) } else { None };
        assert_eq!(Aarch64::sigframe_sp(0, rec, &mut read0), None);
    }

    #[test]
    fn aarch64_instruction_classes() {
        use super::insn::*;
        assert_eq!(bl_target(0x97ff_fff7, 0xb78), Some(0xb54)); // from the chain fixture
        assert_eq!(bl_target(0x9400_0001, 0x1000), Some(0x1004));
        assert_eq!(bl_target(0xd503_201f, 0x1000), None);
        assert!(is_blr(0xd63f_0100));
        assert!(is_blr(0xd63f_081f)); // blraaz x0
        assert!(!is_blr(0xd61f_0100)); // br x8
        assert!(is_ret(0xd65f_03c0) && is_ret(0xd65f_0bff));
        assert!(!is_ret(0xd61f_0100));
        assert!(is_record_push(0xa9bf_7bfd) && is_record_push(0xa9017bfd));
        assert!(!is_record_push(0xa9bf_53f3)); // stp x19, x20, [sp, #-16]!
    }
}

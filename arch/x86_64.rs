//! x86_64 (System V, Linux).
//!
//! Frame record (pushed by `push rbp; mov rbp, rsp`):
//!
//! ```text
//!            │ caller's frame    │
//!  rbp + 16  ├───────────────────┤ ◄─ caller's rsp after return (CFA)
//!  rbp + 8   │ return address    │
//!  rbp       │ caller's rbp      │ ◄─ rbp
//!            │ locals ...        │
//! ```
//!
//! Signal frame (kernel `arch/x86/include/asm/sigframe.h`, `struct rt_sigframe`): at handler
//! entry `rsp` points at `pretcode` (the return address, glibc's `__restore_rt`), the `ucontext`
//! follows at +8. In the ucontext (glibc `sysdeps/unix/sysv/linux/x86_64/ucontext_i.sym`):
//! `uc_stack` at 0x10, `gregs` at 0x28; `REG_RBP` = `gregs[10]` at 0x78, `REG_RSP` = `gregs[15]` at
//! 0xa0, `REG_RIP` = `gregs[16]` at 0xa8.

use super::{Arch, ArchKind, Regs};

/// The x86_64 backend (marker type).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct X86_64;

/// Offset of saved rbp in a `ucontext_t` (`gregs[REG_RBP]`).
pub const UC_RBP: u64 = 0x78;
/// Offset of saved rsp in a `ucontext_t` (`gregs[REG_RSP]`).
pub const UC_RSP: u64 = 0xa0;
/// Offset of saved rip in a `ucontext_t` (`gregs[REG_RIP]`).
pub const UC_RIP: u64 = 0xa8;
/// Offset of saved r11 in a `ucontext_t` (`gregs[REG_R11]`): the CFA's base in LLVM's stack
/// probe loops ([`super::Regs::lr`]).
pub const UC_R11: u64 = 0x40;

/// glibc's `__restore_rt`: `mov $15, %rax; syscall` (rt_sigreturn is syscall 15). glibc's
/// `sysdeps/unix/sysv/linux/x86_64/libc_sigaction.c` notes that debuggers rely on this sequence.
pub const SIGRETURN_CODE: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// Register indices in the `pr_reg` of an `NT_PRSTATUS` note (`struct user_regs_struct`,
/// `sys/user.h`): r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi,
/// orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs.
pub mod user_regs {
    /// rbp
    pub const RBP: usize = 4;
    /// r11 (the CFA's base in LLVM's stack probe loops)
    pub const R11: usize = 6;
    /// rip
    pub const RIP: usize = 16;
    /// rsp
    pub const RSP: usize = 19;
    /// fs_base (thread pointer)
    pub const FS_BASE: usize = 21;
    /// Number of registers in `user_regs_struct`.
    pub const COUNT: usize = 27;
}

impl Arch for X86_64 {
    const KIND: ArchKind = ArchKind::X86_64;
    // rbp is 16-byte aligned in ABI-conforming code, but nothing requires it; 8 is what a word
    // read needs and what hand-written assembly guarantees.
    const FP_ALIGN: u64 = 8;
    const UC_FROM_SIGFRAME_SP: u64 = 0;

    #[inline(always)]
    fn caller_sp_after_record(end_of_record: u64) -> u64 {
        end_of_record
    }

    fn prologue_ra_slot(
        pc: u64,
        sp: u64,
        read_code: &mut dyn FnMut(u64, &mut [u8]) -> bool,
    ) -> Option<u64> {
        prologue_ra_slot(pc, sp, read_code)
    }

    #[inline(always)]
    fn strip_ra(ra: u64, _pac_mask: u64) -> u64 {
        ra
    }

    fn ucontext_regs(uc: u64, read: &mut dyn FnMut(u64) -> Option<u64>) -> Option<Regs> {
        Some(Regs {
            pc: read(uc.checked_add(UC_RIP)?)?,
            sp: read(uc.checked_add(UC_RSP)?)?,
            fp: read(uc.checked_add(UC_RBP)?)?,
            lr: read(uc.checked_add(UC_R11)?).unwrap_or(0),
        })
    }

    fn is_sigreturn(code: &[u8]) -> bool {
        code.starts_with(&SIGRETURN_CODE)
    }

    /// The handler's frame record sits right below `pretcode`, so the trampoline's sp (which is
    /// where the ucontext starts, `pretcode` having been popped) is `handler_fp + 16`.
    fn sigframe_sp(
        handler_fp: u64,
        _next_fp: u64,
        _read: &mut dyn FnMut(u64) -> Option<u64>,
    ) -> Option<u64> {
        handler_fp.checked_add(16)
    }
}

/// x86_64: when the interrupted pc is in a prologue, before the frame record is linked (rbp
/// still the caller's), where the return address is. Decodes the instruction at pc:
/// - `push %rbp` (`55`): at rsp;
/// - `mov %rsp,%rbp` (`48 89 e5`, after the push): at rsp + 8;
/// - Go's prologue `sub $n,%rsp; mov %rbp,d(%rsp); lea d(%rsp),%rbp`: at rsp when pc is on
///   the `sub` (followed by that `mov`), at rsp + d + 8 when on the `mov` or the `lea`.
/// - a `ret` (`c3`), or register tests and short conditional jumps that fall through to one
///   (glibc's `clone3` and `clone` after their `syscall`, which no FDE covers: `test
///   %rax,%rax; jl; je; ret`, where a thread creating a thread is stopped): at rsp, nothing
///   being on the stack above it on that path.
///
/// Anything else: `None` (the frame record decides).
pub fn prologue_ra_slot(
    pc: u64,
    sp: u64,
    read_code: &mut dyn FnMut(u64, &mut [u8]) -> bool,
) -> Option<u64> {
    let mut c = [0u8; 16];
    if !read_code(pc, &mut c) {
        // Near the end of a mapping: try a shorter read.
        c = [0; 16];
        if !read_code(pc, &mut c[..8]) {
            return None;
        }
    }
    // mov %rbp,d8(%rsp) / lea d8(%rsp),%rbp
    let mov_rbp = |b: &[u8]| b.len() >= 5 && b[..4] == [0x48, 0x89, 0x6c, 0x24];
    let lea_rbp = |b: &[u8]| b.len() >= 5 && b[..4] == [0x48, 0x8d, 0x6c, 0x24];
    // At most four instructions to a `ret`: `test r64,r64` (register form) and `jcc rel8`.
    let falls_to_ret = || {
        let mut i = 0;
        for _ in 0..4 {
            match c.get(i..) {
                Some([0xc3, ..]) => return true,
                Some([0x48, 0x85, m, ..]) if m & 0xc0 == 0xc0 => i += 3,
                Some([0x70..=0x7f, _, ..]) => i += 2,
                _ => return false,
            }
        }
        false
    };
    match c {
        [0x55, ..] => Some(sp),
        _ if falls_to_ret() => Some(sp),
        [0x48, 0x89, 0xe5, ..] => sp.checked_add(8),
        [0x48, 0x83, 0xec, _, ..] if mov_rbp(&c[4..]) => Some(sp),
        [0x48, 0x81, 0xec, _, _, _, _, ..] if mov_rbp(&c[7..]) => Some(sp),
        _ if (mov_rbp(&c) && lea_rbp(&c[5..])) || lea_rbp(&c) => {
            let d = c[4] as i8;
            if d < 0 {
                return None;
            }
            sp.checked_add(d as u64 + 8)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ucontext_offsets_match_libc() {
        // gregs start at 0x28 (uc_flags 8, uc_link 8, uc_stack 24).
        assert_eq!(UC_RBP, 0x28 + 8 * libc::REG_RBP as u64);
        assert_eq!(UC_RSP, 0x28 + 8 * libc::REG_RSP as u64);
        assert_eq!(UC_RIP, 0x28 + 8 * libc::REG_RIP as u64);
        assert_eq!(UC_R11, 0x28 + 8 * libc::REG_R11 as u64);
    }

    #[test]
    fn sigreturn_bytes() {
        assert!(X86_64::is_sigreturn(&SIGRETURN_CODE));
        assert!(!X86_64::is_sigreturn(&SIGRETURN_CODE[..8]));
        assert!(!X86_64::is_sigreturn(&[0x90; 9]));
    }

    #[test]
    fn ucontext_read_overflow_is_none() {
        let mut read = |_a: u64| Some(0u64);
        assert!(X86_64::ucontext_regs(u64::MAX - 8, &mut read).is_none());
    }
}

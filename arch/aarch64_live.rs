//! Live register capture and pointer-authentication stripping on aarch64 (inline asm).
//!
//! Dependency-free on purpose: besides being part of `unwind`, the aarch64 smoke test
//! (`tests/aarch64_smoke.rs`, built by Debian's rustc 1.63 and run under qemu-aarch64 in CI)
//! `#[path]`-includes this file, so keep it to `core` only.

/// Registers of the calling function at the point of the call: `(pc, sp, fp, lr)`.
///
/// Always inlined so that `fp` (x29) is the frame record of the function this is written in.
/// Async-signal-safe: register moves only.
#[inline(always)]
pub fn current_regs() -> (u64, u64, u64, u64) {
    let pc: u64;
    let sp: u64;
    let fp: u64;
    let lr: u64;
    // SAFETY: reads pc (adr), sp, x29 and x30 into registers; touches no memory and no flags.
    unsafe {
        core::arch::asm!(
            "adr {pc}, .",
            "mov {sp}, sp",
            "mov {fp}, x29",
            "mov {lr}, x30",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            lr = out(reg) lr,
            options(nomem, nostack, preserves_flags),
        );
    }
    (pc, sp, fp, lr)
}

/// Strips a pointer-authentication code from a return address with `xpaclri`.
///
/// `xpaclri` (encoded as `hint #7`) is in the NOP space: on cores without pointer authentication
/// it does nothing, so this is correct on every aarch64 CPU. Async-signal-safe.
#[inline(always)]
pub fn strip_pac_live(ra: u64) -> u64 {
    let out: u64;
    // SAFETY: xpaclri only rewrites x30, which we declare clobbered and read back; no memory.
    unsafe {
        core::arch::asm!(
            "mov x30, {ra}",
            "hint #7",
            "mov {out}, x30",
            ra = in(reg) ra,
            out = lateout(reg) out,
            out("x30") _,
            options(nomem, nostack, preserves_flags),
        );
    }
    out
}

//! Live register capture on x86_64 (inline asm).
//!
//! Dependency-free on purpose: besides being part of `unwind`, a smoke test can `#[path]`-include
//! this file into a tiny program built by any rustc that supports `asm!`.

/// Registers of the calling function at the point of the call: `(pc, sp, fp)`.
///
/// Always inlined so that `fp` is the frame pointer of the function this is written in (which
/// must have a frame record: build with `-C force-frame-pointers=yes`). Async-signal-safe: three
/// register moves, no memory access.
#[inline(always)]
pub fn current_regs() -> (u64, u64, u64) {
    let pc: u64;
    let sp: u64;
    let fp: u64;
    // SAFETY: reads rip, rsp and rbp into registers; touches no memory and no flags.
    unsafe {
        core::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {fp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            options(nomem, nostack, preserves_flags),
        );
    }
    (pc, sp, fp)
}

/// x86_64 has no pointer authentication: return addresses are used as they are.
#[inline(always)]
pub fn strip_pac_live(ra: u64) -> u64 {
    ra
}

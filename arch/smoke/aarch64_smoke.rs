//! aarch64 smoke test for the live register capture and pointer-authentication stripping.
//!
//! Built by Debian's rustc (1.63, which has an aarch64 std) for aarch64 and run under
//! qemu-aarch64 (`arch/smoke/run.sh`, called by `.ci/run`); the full crate needs a newer
//! toolchain than that rustc, so this includes only the dependency-free live module and walks
//! the x29 chain with a minimal loop.

#[path = "../aarch64_live.rs"]
mod live;

// The system-stack trampoline of `src/live/system_stack.rs`, the same file.
include!("../aarch64_switch.rs");

extern "C" {
    fn unwind_0_1_system_stack_switch(arg: *mut u8, f: unsafe extern "C" fn(*mut u8), top: u64);
    static unwind_0_1_system_stack_return: [u8; 0];
}

/// What the closure on the system stack saw.
#[derive(Default, Debug)]
struct OnSystem {
    sp: u64,
    /// (fp, return address, word at fp + 16) of each record followed from the closure's x29.
    records: Vec<(u64, u64, u64)>,
}

/// Runs on the system stack: walks the x29 chain from here, recording each record.
unsafe extern "C" fn on_system_stack(arg: *mut u8) {
    let out = &mut *(arg as *mut OnSystem);
    let (_, sp, fp, _) = live::current_regs();
    out.sp = sp;
    let mut fp = fp;
    while fp != 0 && fp % 8 == 0 && out.records.len() < 32 {
        // SAFETY: x29 chains through frame records on the system stack, then the trampoline's
        // record on this thread's stack; the loop stops at a null fp or 32 records.
        let (next, ra, w16) = (
            *(fp as *const u64),
            *((fp + 8) as *const u64),
            *((fp + 16) as *const u64),
        );
        out.records.push((fp, live::strip_pac_live(ra), w16));
        if ra == 0 {
            break;
        }
        fp = next;
    }
}

#[inline(never)]
fn caller_on_user_stack(top: u64, out: &mut OnSystem) -> u64 {
    let (_, user_sp, _, _) = live::current_regs();
    // SAFETY: `top` is the 16-byte-aligned top of a buffer nobody else uses.
    unsafe {
        unwind_0_1_system_stack_switch(out as *mut OnSystem as *mut u8, on_system_stack, top)
    };
    black_box(user_sp)
}

/// The trampoline switches stacks, calls the closure and comes back; from the closure the x29
/// chain reaches the return label, and the word at the saved frame pointer + 16 is the user sp
/// (the rule `SavedAt { base: SavedFp, pc: 8, sp: Some(16), fp: 0 }`).
fn system_stack_switch() {
    let stack = vec![0u128; 4096]; // 64 KiB, 16-byte aligned
    let lo = stack.as_ptr() as u64;
    let top = lo + 64 * 1024;
    let mut out = OnSystem::default();
    let user_sp = caller_on_user_stack(top, &mut out);
    // SAFETY: only the label's address is taken.
    let label = unsafe { std::ptr::addr_of!(unwind_0_1_system_stack_return) } as u64;
    assert!(
        out.sp > lo && out.sp < top,
        "closure sp {:#x} not on the system stack",
        out.sp
    );
    let at = out.records.iter().position(|&(_, ra, _)| ra == label);
    let at = at.unwrap_or_else(|| {
        panic!(
            "no record returns to the label {label:#x}: {:x?}",
            out.records
        )
    });
    // The record above the label's is the trampoline's own, on the user stack.
    let (tfp, user_pc, saved_sp) = out.records[at + 1];
    assert_eq!(
        saved_sp,
        tfp + 32,
        "the word at the record + 16 is the user sp"
    );
    assert!(
        tfp > user_sp.saturating_sub(4096) && tfp < user_sp + 4096,
        "record {tfp:#x} not near user sp {user_sp:#x}"
    );
    let start = caller_on_user_stack as usize as u64;
    assert!(
        user_pc > start && user_pc - start < 4096,
        "user pc {user_pc:#x} not in caller_on_user_stack {start:#x}"
    );
    println!("system stack: closure sp {:#x} on [{lo:#x}, {top:#x}); label {label:#x}; user record {tfp:#x}, user pc {user_pc:#x}", out.sp);
}

/// An optimisation barrier (std's black_box is unstable in rustc 1.63).
#[inline(never)]
fn black_box(x: u64) -> u64 {
    // SAFETY: a volatile read of a local.
    unsafe { std::ptr::read_volatile(&x) }
}

#[inline(never)]
fn level_c(out: &mut Vec<u64>) -> u64 {
    let (pc, sp, fp, lr) = live::current_regs();
    assert!(pc != 0 && sp != 0 && fp != 0 && lr != 0);
    assert!(fp >= sp, "x29 {fp:#x} below sp {sp:#x}");
    // Walk the chain: [x29] = caller x29, [x29 + 8] = x30.
    let mut fp = fp;
    let mut prev = 0u64;
    while fp != 0 && fp % 8 == 0 && fp > prev && out.len() < 64 {
        // SAFETY: x29 points at frame records on this thread's stack (frame pointers forced
        // on); the loop only follows strictly increasing, aligned records.
        let (next, ra) = unsafe { (*(fp as *const u64), *((fp + 8) as *const u64)) };
        if ra == 0 {
            break;
        }
        out.push(live::strip_pac_live(ra));
        prev = fp;
        fp = next;
    }
    black_box(out.len() as u64)
}

#[inline(never)]
fn level_b(out: &mut Vec<u64>) -> u64 {
    black_box(level_c(out)) + 1
}

#[inline(never)]
fn level_a(out: &mut Vec<u64>) -> u64 {
    black_box(level_b(out)) + 1
}

fn main() {
    // The functions' start addresses: a return address belongs to the nearest function start
    // at or below it (within 4 KiB).
    let mut starts = vec![
        (level_a as usize as u64, "level_a"),
        (level_b as usize as u64, "level_b"),
        (level_c as usize as u64, "level_c"),
        (main as usize as u64, "main"),
    ];
    starts.sort();
    let mut ras = Vec::new();
    level_a(&mut ras);
    let name = |ra: u64| -> &str {
        let pc = ra - 4; // inside the bl
        let mut best = "?";
        let mut best_start = 0;
        for &(s, n) in &starts {
            if s <= pc && s >= best_start && pc - s < 4096 {
                best = n;
                best_start = s;
            }
        }
        best
    };
    let names: Vec<&str> = ras.iter().take(3).map(|&r| name(r)).collect();
    println!("x29 chain: {:?}", names);
    assert_eq!(
        names,
        ["level_b", "level_a", "main"],
        "return addresses {ras:x?}"
    );

    // Pointer authentication: sign a code address with `paciasp` (hint #25, PAC with key A and
    // sp as modifier), then strip it with xpaclri. Under qemu's default `max` CPU PAC is on and
    // the signed value differs; on CPUs without PAC both are no-ops.
    let plain = level_c as usize as u64;
    let signed: u64;
    // SAFETY: only x30 is modified (declared clobbered) and read back; sp is not changed.
    unsafe {
        std::arch::asm!(
            "mov x30, {p}",
            "hint #25",
            "mov {s}, x30",
            p = in(reg) plain,
            s = lateout(reg) signed,
            out("x30") _,
        );
    }
    println!(
        "plain {plain:#x} signed {signed:#x} stripped {:#x}",
        live::strip_pac_live(signed)
    );
    assert_eq!(live::strip_pac_live(signed), plain);
    assert_eq!(live::strip_pac_live(plain), plain);
    system_stack_switch();
    println!("aarch64 smoke: 3 passed, 0 failed");
}

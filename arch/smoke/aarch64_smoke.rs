//! aarch64 smoke test for the live register capture and pointer-authentication stripping.
//!
//! Built by Debian's rustc (1.63, which has an aarch64 std) for aarch64 and run under
//! qemu-aarch64 (`arch/smoke/run.sh`, called by `.ci/run`); the full crate needs a newer
//! toolchain than that rustc, so this includes only the dependency-free live module and walks
//! the x29 chain with a minimal loop.

#[path = "../aarch64_live.rs"]
mod live;

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
    assert_eq!(names, ["level_b", "level_a", "main"], "return addresses {ras:x?}");

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
    println!("plain {plain:#x} signed {signed:#x} stripped {:#x}", live::strip_pac_live(signed));
    assert_eq!(live::strip_pac_live(signed), plain);
    assert_eq!(live::strip_pac_live(plain), plain);
    println!("aarch64 smoke: 2 passed, 0 failed");
}

//! A stack overflow on the main thread, in C code without frame records (fixtures/c/nofp-sys),
//! walked from its SIGSEGV handler on an alternate stack by the prepared CFI in Hybrid mode (a
//! build without frame pointers' `capture_with`, the CPU profiler's default) and in Dwarf
//! mode. The interrupted sp is below the main thread's `[stack]`, in the gap under
//! it, and the stack has grown to its limit since it was first seen: the walk crossing the
//! signal frame entered no stack at sp and went on from the frame pointer's: with none (zeroed
//! here) it stopped at the signal frame; in a Rust build without frame pointers (rbp pointing
//! into the small `[stack]` cached at `init`) it could not read the overflowed frames there,
//! guessed a frame from rbp and said `End` (found by outside use in the twenty-eighth round).
//! Now it enters the stack just above the gap.
//!
//! `harness = false`: the test's own main thread overflows, in a child process per mode (the
//! handler exits it).

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use unwind::{Frame, Mode, StopReason, Trace};

const CHILD: &str = "UNWIND_MAIN_OVERFLOW_CHILD";

/// The child's mode: Dwarf (else Hybrid). Set before the recursion.
static DWARF: AtomicBool = AtomicBool::new(false);

/// The handler's buffer (the process exits in the handler; nothing else touches it).
static mut FRAMES: [Frame; 256] = [Frame::EMPTY; 256];

extern "C" fn on_overflow(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    #[allow(static_mut_refs)]
    // SAFETY: this handler's buffer alone (see `FRAMES`).
    let buf = unsafe { &mut FRAMES };
    // What a build without frame pointers' `capture_with` walks by (Hybrid, the prepared CFI),
    // and CFI alone.
    let mode = if DWARF.load(Ordering::Relaxed) {
        Mode::Dwarf
    } else {
        Mode::Hybrid
    };
    let t = match unwind::modules::unwinder() {
        Some(u) => unwind::dwarf::capture(buf, u, mode),
        None => {
            // SAFETY: write and _exit are async-signal-safe.
            unsafe {
                libc::write(2, b"no CFI prepared\n".as_ptr().cast(), 16);
                libc::_exit(4);
            }
        }
    };
    let frames = &buf[..t.len];
    // The recursion's frames: one function, at one return address.
    let ret = frames.get(4).map_or(0, |f| f.pc);
    let repeated = frames.iter().filter(|f| f.pc == ret).count();
    let ok = t.stop == StopReason::BufferFull && repeated >= 200;
    exit_saying(
        ok,
        if ok {
            b"overflow: walked up the recursion\n"
        } else {
            b"overflow: the walk stopped short\n"
        },
        t,
        (b"repeated", repeated),
    )
}

/// Ends a child from its handler: writes `msg`, then the trace's length, `count` (its name and
/// value) and stop, for the parent's message; exits 0 when `ok`, else 3. No allocation.
fn exit_saying(ok: bool, msg: &[u8], t: Trace, count: (&[u8], usize)) -> ! {
    let mut line = [0u8; 64];
    let n = fmt_line(&mut line, t.len, count, t.stop as u8);
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::write(2, line.as_ptr().cast(), n);
        libc::_exit(if ok { 0 } else { 3 });
    }
}

/// `frames=N <name>=C stop=S\n` into `out`, without allocating.
fn fmt_line(out: &mut [u8; 64], frames: usize, (name, count): (&[u8], usize), stop: u8) -> usize {
    let mut n = 0;
    let mut put = |s: &[u8]| {
        for &b in s {
            out[n] = b;
            n += 1;
        }
    };
    let num = |mut v: usize, put: &mut dyn FnMut(&[u8])| {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        put(&digits[i..]);
    };
    put(b"frames=");
    num(frames, &mut put);
    put(b" ");
    put(name);
    put(b"=");
    num(count, &mut put);
    put(b" stop=");
    num(usize::from(stop), &mut put);
    put(b"\n");
    n
}

fn child(dwarf: bool) -> ! {
    DWARF.store(dwarf, Ordering::Relaxed);
    unwind::init();
    common::segv_on_alt_stack(on_overflow);
    // SAFETY: an 8 MiB stack limit (the main thread's stack grows until it reaches it), in
    // this child process only.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        assert_eq!(libc::getrlimit(libc::RLIMIT_STACK, &mut limit), 0);
        limit.rlim_cur = (8 << 20).min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_STACK, &limit), 0);
    }
    // C code that keeps no frame record and zeroes the frame pointer: only CFI walks it, as
    // in a build without frame pointers (where rbp holds whatever it held).
    // SAFETY: a C function that only recurses (until SIGSEGV, which the handler takes).
    black_box(unsafe { unwind_nofp_fixture::unwind_nofp_recurse(0) });
    unreachable!("the recursion ends in SIGSEGV");
}

fn main() {
    match std::env::var(CHILD).as_deref() {
        Ok("dwarf") => child(true),
        Ok("hybrid") => child(false),
        #[cfg(target_arch = "x86_64")]
        Ok("garbage-sp") => garbage_sp::child(),
        _ => {}
    }
    let modes: &[&str] = if cfg!(target_arch = "x86_64") {
        &["dwarf", "hybrid", "garbage-sp"]
    } else {
        &["dwarf", "hybrid"]
    };
    for &mode in modes {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env(CHILD, mode)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{mode}: {:?}\n{err}",
            out.status
        );
        assert!(err.contains(": walked up"), "{mode}: {err}");
        println!("test main_stack_overflow ({mode}) ... ok");
    }
}

/// The other side of the same rule: an sp below every stack that did not overflow one. A
/// function moves sp into a hole (as a leaf that reserves megabytes at once without probing
/// does) and faults there; just above the hole is an anonymous read-write mapping that is no
/// stack (a heap arena, a buffer). The walk must not enter that mapping (it did, for a day:
/// the next frame record, on the real stack, was then "off the stack", `NotMonotonic` after
/// 3 frames, found by outside use): it goes on from the frame pointer, to the caller.
#[cfg(target_arch = "x86_64")]
mod garbage_sp {
    use super::*;
    use std::sync::atomic::AtomicU64;

    // `unwind_test_sp_into(sp)`: a frame record, then sp = `sp`, a store there (the fault).
    std::arch::global_asm!(
        ".globl unwind_test_sp_into",
        ".type unwind_test_sp_into, @function",
        "unwind_test_sp_into:",
        ".cfi_startproc",
        "push rbp",
        ".cfi_def_cfa_offset 16",
        ".cfi_offset rbp, -16",
        "mov rbp, rsp",
        ".cfi_def_cfa_register rbp",
        "mov rsp, rdi",
        "mov qword ptr [rsp], 0",
        "mov rsp, rbp",
        "pop rbp",
        ".cfi_def_cfa rsp, 8",
        "ret",
        ".cfi_endproc",
        ".size unwind_test_sp_into, . - unwind_test_sp_into",
    );
    extern "C" {
        fn unwind_test_sp_into(sp: u64);
    }

    /// The address of [`caller`]: the walk must find a return address into it.
    static CALLER: AtomicU64 = AtomicU64::new(0);

    extern "C" fn on_fault(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
        #[allow(static_mut_refs)]
        // SAFETY: this handler's buffer alone (see `FRAMES`).
        let buf = unsafe { &mut FRAMES };
        let t = unwind::capture_with(buf, unwind::Options::default());
        let caller = CALLER.load(Ordering::Relaxed);
        // The return address after the call into the fault, in the caller's first bytes.
        let found = buf[..t.len]
            .iter()
            .any(|f| f.stack == 1 && f.pc > caller && f.pc < caller + 256);
        let ok = found && t.stop != StopReason::NotMonotonic;
        exit_saying(
            ok,
            if ok {
                b"garbage sp: walked up to the caller\n"
            } else {
                b"garbage sp: the walk stopped short\n"
            },
            t,
            (b"caller_found", usize::from(found)),
        )
    }

    #[inline(never)]
    extern "C" fn caller(sp: u64) {
        // SAFETY: faults at `sp` (a PROT_NONE page); the handler exits the process.
        unsafe { unwind_test_sp_into(sp) };
        black_box(sp);
    }

    pub fn child() -> ! {
        unwind::init();
        CALLER.store(
            caller as extern "C" fn(u64) as usize as u64,
            Ordering::Relaxed,
        );
        common::segv_on_alt_stack(on_fault);
        // SAFETY: a fresh 2 MiB mapping whose lower half is made inaccessible (the hole) under
        // its upper half (the read-write mapping just above it), in this child process only.
        let hole = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                2 << 20,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(libc::mprotect(p, 1 << 20, libc::PROT_NONE), 0);
            p as u64
        };
        // 64 KiB under the read-write half.
        caller(hole + (1 << 20) - (64 << 10));
        unreachable!("the store faults");
    }
}

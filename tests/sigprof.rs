//! `capture` and `capture_from_ucontext` from inside a real SIGPROF handler, many times, on
//! several threads. The handler only captures into a stack buffer and copies pcs into a static
//! lock-free table; symbolisation happens afterwards.

mod common;

use common::short_names;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use unwind::{Frame, Via};

const SLOTS: usize = 4096;
const DEPTH: usize = 32;

#[allow(clippy::declare_interior_mutable_const)]
const Z: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ROW: [AtomicU64; DEPTH + 1] = [Z; DEPTH + 1];
/// Row: [len, pc0, pc1, ...] from capture_from_ucontext.
static UC_SAMPLES: [[AtomicU64; DEPTH + 1]; SLOTS] = [ROW; SLOTS];
static UC_NEXT: AtomicUsize = AtomicUsize::new(0);
/// Samples from plain `capture()` in the handler: count and total frames.
static PLAIN: AtomicUsize = AtomicUsize::new(0);
static PLAIN_FRAMES: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigprof(_sig: libc::c_int, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let mut buf = [Frame::EMPTY; DEPTH];
    // SAFETY: uc is the ucontext the kernel passed to this SA_SIGINFO handler.
    let n = unsafe { unwind::capture_from_ucontext(uc, &mut buf) };
    let slot = UC_NEXT.fetch_add(1, Ordering::Relaxed);
    if let Some(row) = UC_SAMPLES.get(slot) {
        row[0].store(n as u64, Ordering::Relaxed);
        for (a, f) in row[1..].iter().zip(&buf[..n]) {
            a.store(f.pc, Ordering::Relaxed);
        }
    }
    let mut buf2 = [Frame::EMPTY; DEPTH];
    let m = unwind::capture(&mut buf2);
    PLAIN.fetch_add(1, Ordering::Relaxed);
    PLAIN_FRAMES.fetch_add(m, Ordering::Relaxed);
}

#[inline(never)]
fn spin_here_sigprof() -> u64 {
    let mut x = 0u64;
    while !STOP.load(Ordering::Relaxed) {
        for i in 0..1000u64 {
            x = black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    x
}

#[inline(never)]
fn spin_caller_sigprof() -> u64 {
    black_box(spin_here_sigprof()) + 1
}

#[test]
fn capture_in_sigprof_handler_on_several_threads() {
    // SAFETY: installs a SA_SIGINFO handler that only does async-signal-safe work.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigprof
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut()), 0);
    }
    let workers: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(|| {
                // Half the threads let the first capture find their stack from inside the
                // handler; the others register it up front.
                if black_box(true) {
                    unwind::init_thread();
                }
                spin_caller_sigprof()
            })
        })
        .collect();
    // 1 kHz of process CPU time.
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 1000,
    };
    let it = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: plain setitimer call with valid pointers.
    assert_eq!(
        unsafe { libc::setitimer(libc::ITIMER_PROF, &it, std::ptr::null_mut()) },
        0
    );
    let start = Instant::now();
    while UC_NEXT.load(Ordering::Relaxed) < 300 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let off = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
    };
    // SAFETY: as above.
    unsafe { libc::setitimer(libc::ITIMER_PROF, &off, std::ptr::null_mut()) };
    STOP.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }

    let total = UC_NEXT.load(Ordering::Relaxed).min(SLOTS);
    assert!(total >= 100, "only {total} samples");
    let mut in_spin = 0;
    for row in &UC_SAMPLES[..total] {
        let n = row[0].load(Ordering::Relaxed) as usize;
        let frames: Vec<Frame> = row[1..=n]
            .iter()
            .enumerate()
            .map(|(i, a)| Frame {
                pc: a.load(Ordering::Relaxed),
                flags: if i == 0 { Frame::EXACT } else { 0 },
                via: if i == 0 { Via::Regs } else { Via::FramePointer },
                ..Frame::EMPTY
            })
            .collect();
        let names = short_names(&frames);
        // In debug builds the interrupted pc is often in a helper the loop calls (black_box,
        // wrapping_mul), one frame below spin_here_sigprof.
        if let Some(i) = names.iter().take(3).position(|n| n == "spin_here_sigprof") {
            assert_eq!(
                names.get(i + 1).map(String::as_str),
                Some("spin_caller_sigprof"),
                "{names:?}"
            );
            in_spin += 1;
        }
    }
    // The workers burn nearly all CPU time in spin_here_sigprof.
    assert!(
        in_spin * 2 > total,
        "{in_spin} of {total} samples start in spin_here_sigprof"
    );
    let plain = PLAIN.load(Ordering::Relaxed);
    assert!(plain >= total);
    assert!(PLAIN_FRAMES.load(Ordering::Relaxed) >= plain * 2);
}

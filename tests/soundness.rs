//! Soundness of the live path (issue 13): what a caller, a signal or a stale mapping does must
//! not fault, hang or change state the interrupted code relies on.
//!
//! Tests that change process-wide state (resource limits) run in a child process: the test
//! re-executes this binary with `UNWIND_SOUNDNESS_CHILD` set to the test's name.

use std::process::Command;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use unwind::Frame;

/// Runs `name` in a child process (this binary, that one test) when not already the child;
/// returns true in the child, which then runs the test's body.
fn in_child(name: &str) -> bool {
    if std::env::var("UNWIND_SOUNDNESS_CHILD").as_deref() == Ok(name) {
        return true;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("UNWIND_SOUNDNESS_CHILD", name)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child {name} failed: {text}");
    assert!(
        text.contains("1 passed"),
        "child {name} did not run: {text}"
    );
    false
}

fn errno() -> i32 {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn set_errno(v: i32) {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() = v };
}

static HANDLER_ERRNO_AFTER: AtomicI32 = AtomicI32::new(-1);
static HANDLER_FRAMES: AtomicUsize = AtomicUsize::new(usize::MAX);

extern "C" fn errno_handler(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let mut buf = [Frame::EMPTY; 64];
    // SAFETY: `uc` is the handler's third argument.
    let n = unsafe { unwind::capture_from_ucontext(uc, &mut buf) };
    HANDLER_FRAMES.store(n, Ordering::SeqCst);
    HANDLER_ERRNO_AFTER.store(errno(), Ordering::SeqCst);
}

/// The first capture on a thread reads /proc/self/maps; with no file descriptor left, `open`
/// fails with EMFILE. Neither a plain capture nor one in a signal handler may leave that in
/// `errno`.
#[test]
fn first_capture_keeps_errno() {
    if !in_child("first_capture_keeps_errno") {
        return;
    }
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reads the current limit into `old`.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    let lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: old.rlim_max,
    };
    // SAFETY: sets this (child) process's soft file limit to 0; the pointer is read once.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);

    // A plain capture on a fresh thread.
    let e = std::thread::spawn(|| {
        set_errno(77);
        let mut buf = [Frame::EMPTY; 64];
        let _ = std::hint::black_box(unwind::capture(&mut buf));
        errno()
    })
    .join()
    .unwrap();
    assert_eq!(e, 77, "capture changed errno");

    // A capture in a signal handler, the handler's first on its thread.
    // SAFETY: a plain SA_SIGINFO handler for SIGUSR2, installed before any thread raises it.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = errno_handler
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
    let e = std::thread::spawn(|| {
        set_errno(78);
        // SAFETY: raises SIGUSR2 on this thread; the handler above runs and returns.
        unsafe { libc::raise(libc::SIGUSR2) };
        errno()
    })
    .join()
    .unwrap();
    assert_ne!(HANDLER_FRAMES.load(Ordering::SeqCst), usize::MAX);
    assert_eq!(
        HANDLER_ERRNO_AFTER.load(Ordering::SeqCst),
        78,
        "capture in a handler changed errno"
    );
    assert_eq!(e, 78);
}

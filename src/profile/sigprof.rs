//! Sharing SIGPROF: the CPU profiler installs its handler over whatever was there (another
//! profiler, a Go runtime embedded through cgo), passes on the signals that are not its own, and
//! puts the previous handler back when it stops.
//!
//! Which signals are ours: our timers' (per thread, or the process CPU-time timer of a
//! [`crate::cpu::TimerMode::Process`] profile) carry [`TIMER_TAG`] in `si_value` (set in the
//! `sigevent` at `timer_create`, delivered with `si_code == SI_TIMER`); `setitimer(ITIMER_PROF)`
//! sends `SI_KERNEL`, ours only while a process-timer profile runs on it (where no POSIX timer
//! could be made; there is one `ITIMER_PROF` per process: whoever set it last owns it).
//! Everything else (`kill`, `tgkill`, other timers, `ITIMER_PROF` otherwise) goes to the
//! previous handler.
//!
//! On stop the previous handler is restored, except that `SIG_DFL` becomes a handler that does
//! nothing ([`late_sigprof_address`]): SIGPROF's default action terminates the process, and a timer
//! signal already pending when the timers stopped would do exactly that (pprof-rs #288). Not
//! `SIG_IGN`: an ignored signal stays ignored across `execve`, so every program the process
//! started after a profile had SIGPROF ignored (found by outside use in the twenty-seventh
//! round), where a handler goes back to the default action. A handler someone installed after
//! ours is left alone.

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

/// The `sigev_value` our per-thread timers carry (an arbitrary, recognisable constant).
pub(super) const TIMER_TAG: usize = 0x756e_7769_6e64; // "unwind"

/// The handler SIGPROF had before ours (`sa_sigaction` and `sa_flags`), valid while
/// [`SAVED`] is set. Plain atomics: the signal handler reads them.
static PREV_ACTION: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PREV_FLAGS: AtomicI32 = AtomicI32::new(0);
static SAVED: AtomicBool = AtomicBool::new(false);
/// The C library's internal signals blocked while the handler runs (see [`install`]): glibc's
/// SIGCANCEL (32) and SIGSETXID (33); musl's SIGTIMER (32) and SIGCANCEL (33). Delayed by a
/// handler's few microseconds.
const LIBC_INTERNAL: [u32; 2] = [32, 33];
/// `ITIMER_PROF` signals are ours (a process-timer profiler runs).
pub(super) static PROCESS_TIMER: AtomicBool = AtomicBool::new(false);

/// Installs `ours` for SIGPROF with `flags`, remembering the previous handler unless it is ours
/// already. Not async-signal-safe. Returns errno on failure.
pub(super) fn install(ours: usize, flags: libc::c_int) -> Result<(), i32> {
    // SAFETY: sigaction is plain data; the handler `ours` is async-signal-safe (the caller's
    // `on_sigprof`); `old` receives the previous action; `sa_mask` is a `sigset_t` (128 bytes,
    // aligned for `unsigned long`), so its first 8 bytes are written as a u64.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = ours;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        // The C library's cancellation signal waits while the handler runs: a thread
        // cancelled in a cancellable call (`usleep`, `read`) that the handler interrupted was
        // unwound from inside the handler, through its `extern "C"` frame, which aborts the
        // process (found by outside use in the twenty-seventh round). After the handler it is
        // delivered where the call was, and the cancellation goes on as without the profiler.
        // glibc's `sigaddset` refuses that signal: its bit is set directly (bit n - 1 of the
        // first word for signal n, as the kernel reads the mask).
        let words = (&mut sa.sa_mask as *mut libc::sigset_t).cast::<u64>();
        for sig in LIBC_INTERNAL {
            *words |= 1 << (sig - 1);
        }
        let mut old: libc::sigaction = core::mem::zeroed();
        if libc::sigaction(libc::SIGPROF, &sa, &mut old) != 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        if old.sa_sigaction != ours {
            PREV_FLAGS.store(old.sa_flags, Ordering::SeqCst);
            PREV_ACTION.store(old.sa_sigaction, Ordering::SeqCst);
            SAVED.store(true, Ordering::SeqCst);
        }
    }
    Ok(())
}

/// SIGPROF's action after a profile where it had the default one (see the module docs): a
/// function that does nothing with its `int` and returns, so that a timer signal still
/// pending is dropped, while `execve` puts the default action back for the next program.
/// libc's `abs`: a handler of this crate's own was left installed in code that `dlclose`
/// unmapped when the crate was in a library that ran a profile (a `cdylib` plugin), and the
/// next SIGPROF jumped there (found by outside use in the twenty-seventh round); libc stays
/// loaded. (A `void (*)(int)` handler that returns an `int` is called the same way: the
/// return value is ignored.)
pub(super) fn late_sigprof_address() -> usize {
    libc::abs as unsafe extern "C" fn(libc::c_int) -> libc::c_int as usize
}

/// Puts back the handler [`install`] replaced ([`late_sigprof_address`] for `SIG_DFL`), if
/// ours is still the installed one. False when it is not (the program installed its own since). Not
/// async-signal-safe.
pub(super) fn restore(ours: usize) -> bool {
    // SAFETY: reads the current action, then installs the saved one (a handler the program had
    // installed, or SIG_IGN); sigaction structs are plain data.
    unsafe {
        let mut cur: libc::sigaction = core::mem::zeroed();
        if libc::sigaction(libc::SIGPROF, core::ptr::null(), &mut cur) != 0 {
            return true;
        }
        if cur.sa_sigaction != ours {
            return false;
        }
        if !SAVED.load(Ordering::SeqCst) {
            return true;
        }
        let mut sa: libc::sigaction = core::mem::zeroed();
        let prev = PREV_ACTION.load(Ordering::SeqCst);
        (sa.sa_sigaction, sa.sa_flags) = if prev == libc::SIG_DFL {
            (late_sigprof_address(), libc::SA_RESTART)
        } else {
            (prev, PREV_FLAGS.load(Ordering::SeqCst))
        };
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGPROF, &sa, core::ptr::null_mut()) == 0 {
            SAVED.store(false, Ordering::SeqCst);
        }
    }
    true
}

/// Is this SIGPROF one of ours? Our per-thread timers' signals always are (one that arrives
/// after stop is then dropped, not passed on); `ITIMER_PROF`'s while a process-timer profiler
/// runs. Async-signal-safe.
///
/// # Safety
/// `info` is null or the `siginfo_t` the kernel passed to an `SA_SIGINFO` handler.
#[inline]
pub(super) unsafe fn is_ours(info: *const libc::siginfo_t) -> bool {
    if info.is_null() {
        return false;
    }
    // SAFETY: the caller's promise: a valid siginfo_t.
    let info = unsafe { &*info };
    match info.si_code {
        libc::SI_TIMER => {
            // SAFETY: for SI_TIMER the kernel filled the timer fields, si_value among them.
            let v = unsafe { info.si_value() }.sival_ptr as usize;
            v == TIMER_TAG
        }
        libc::SI_KERNEL => PROCESS_TIMER.load(Ordering::Relaxed),
        _ => false,
    }
}

/// Passes a SIGPROF that is not ours to the previous handler: calls it (with `siginfo` and
/// `ucontext` if it asked for them), ignores it if it was `SIG_IGN` or `SIG_DFL` (never the
/// default action, which would kill the process). Async-signal-safe as far as that handler is.
///
/// # Safety
/// The arguments are those the kernel passed to our `SA_SIGINFO` handler.
pub(super) unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    if !SAVED.load(Ordering::Acquire) {
        return;
    }
    let prev = PREV_ACTION.load(Ordering::Acquire);
    if prev == libc::SIG_DFL || prev == libc::SIG_IGN || prev == late_sigprof_address() {
        return;
    }
    if PREV_FLAGS.load(Ordering::Acquire) & libc::SA_SIGINFO != 0 {
        // SAFETY: `prev` was installed as an SA_SIGINFO handler, so it has this signature and
        // expects exactly the arguments the kernel gave us.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { core::mem::transmute(prev) };
        f(sig, info, uc);
    } else {
        // SAFETY: `prev` was installed as a plain handler: `void (*)(int)`.
        let f: extern "C" fn(libc::c_int) = unsafe { core::mem::transmute(prev) };
        f(sig);
    }
}

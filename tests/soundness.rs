//! Soundness of the live path (issue 13): what a caller, a signal or a stale mapping does must
//! not fault, hang or change state the interrupted code relies on.
//!
//! Tests that change process-wide state (resource limits) run in a child process: the test
//! re-executes this binary with `UNWIND_SOUNDNESS_CHILD` set to the test's name.

mod common;

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use unwind::Frame;

/// Runs `name` in a child process (this binary, that one test) when not already the child;
/// returns true in the child, which then runs the test's body.
fn in_child(name: &str) -> bool {
    child_output(name).is_none()
}

/// [`in_child`], returning the child's standard output and error once it passed (`None` in
/// the child).
fn child_output(name: &str) -> Option<String> {
    common::tools::child_output("UNWIND_SOUNDNESS_CHILD", name, &[])
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

/// The permissions of the mapping holding `addr` (from /proc/self/maps) and its bounds.
fn mapping_of(addr: u64) -> Option<(u64, u64, String)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().find_map(|l| {
        let (range, rest) = l.split_once(' ')?;
        let (lo, hi) = range.split_once('-')?;
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).ok()?,
            u64::from_str_radix(hi, 16).ok()?,
        );
        (lo <= addr && addr < hi).then(|| (lo, hi, rest[..4].to_string()))
    })
}

/// `register_thread`'s alternate stack: a guard of exactly one real page (sysconf), below a
/// stack that is all readable and writable. (With a hard-coded 4 KiB guard on a 64 KiB-page
/// kernel the `mprotect` covered the whole stack; this host has 4 KiB pages, so here the test
/// checks the layout against the real page size rather than reproduce that kernel.)
#[test]
fn alt_stack_guard_is_one_real_page() {
    std::thread::spawn(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        let reg = unwind::cpu::try_register_thread().expect("register_thread");
        // SAFETY: stack_t is plain data; sigaltstack(NULL, &cur) only reads the current one.
        let mut cur: libc::stack_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sigaltstack(std::ptr::null(), &mut cur) }, 0);
        let lo = cur.ss_sp as u64;
        let hi = lo + cur.ss_size as u64;
        assert!(cur.ss_size >= unwind::cpu::ALT_STACK_SIZE);
        assert_eq!(lo % page, 0);
        let (glo, ghi, gperm) = mapping_of(lo - 1).unwrap();
        assert_eq!((ghi, ghi - glo, gperm.as_str()), (lo, page, "---p"));
        let (slo, shi, sperm) = mapping_of(lo).unwrap();
        assert!(slo <= lo && hi <= shi && sperm.starts_with("rw"), "{sperm}");
        drop(reg);
    })
    .join()
    .unwrap();
}

/// Walks from a frame pointer at `fp` (and the stack pointer of this function), through the
/// live memory a capture here would use. Returns the trace's stop reason and length.
#[inline(never)]
fn walk_from_fp(fp: u64) -> (unwind::StopReason, usize) {
    let local = 0u64;
    let sp = std::hint::black_box(&local) as *const u64 as u64;
    let mut mem = unwind::live::LiveMemory::for_sp(sp);
    assert_eq!(unwind::Memory::read_u64(&mut mem, fp), None);
    let mut w: unwind::Walker<unwind::arch::native::Native, _, _> =
        unwind::Walker::new(unwind::transition::NoTransitions);
    let mut buf = [Frame::EMPTY; 16];
    let start = unwind::Start::exact(unwind::Regs::new(
        walk_from_fp as *const () as usize as u64,
        sp,
        fp,
    ));
    let t = w.walk(start, &mut mem, &mut buf);
    (t.stop, t.len)
}

/// An address in the middle of `[lo, hi)`, 16-aligned.
fn middle(lo: u64, hi: u64) -> u64 {
    (lo + (hi - lo) / 2) & !15
}

/// Item 1: the first capture of a thread runs inside a coroutine (unregistered, like a
/// stacker segment). The coroutine and its stack are dropped; a frame pointer into the freed
/// range must stop the walk, not fault.
#[test]
fn first_capture_in_a_dropped_coroutine_is_not_trusted() {
    use corosensei::stack::{DefaultStack, Stack};
    std::thread::spawn(|| {
        let stack = DefaultStack::new(128 * 1024).unwrap();
        let (lo, hi) = (stack.limit().get() as u64, stack.base().get() as u64);
        let mut co =
            corosensei::Coroutine::with_stack(stack, |_y: &corosensei::Yielder<(), ()>, ()| {
                let mut buf = [Frame::EMPTY; 64];
                unwind::capture(&mut buf)
            });
        let n = match co.resume(()) {
            corosensei::CoroutineResult::Return(n) => n,
            corosensei::CoroutineResult::Yield(()) => unreachable!(),
        };
        assert!(n > 0);
        drop(co); // unmaps the coroutine's stack
        let (stop, len) = walk_from_fp(middle(lo, hi));
        assert_eq!(len, 1, "{stop:?}");
    })
    .join()
    .unwrap();
}

/// Item 1, segments: a capture on an unregistered `on_stack` segment once made its mapping a
/// cached "extra stack" for the thread's life. The segment is freed; a frame pointer into it
/// must stop the walk.
#[test]
fn a_freed_segment_is_not_trusted() {
    use corosensei::stack::{DefaultStack, Stack};
    std::thread::spawn(|| {
        unwind::init_thread();
        let mut seg = DefaultStack::new(128 * 1024).unwrap();
        let (lo, hi) = (seg.limit().get() as u64, seg.base().get() as u64);
        let n = corosensei::on_stack(&mut seg, || {
            let mut buf = [Frame::EMPTY; 64];
            unwind::capture(&mut buf)
        });
        assert!(n > 0);
        drop(seg);
        let (stop, len) = walk_from_fp(middle(lo, hi));
        assert_eq!(len, 1, "{stop:?}");
    })
    .join()
    .unwrap();
}

static ALT_CAPTURED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn capture_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let mut buf = [Frame::EMPTY; 64];
    ALT_CAPTURED.store(unwind::capture(&mut buf), Ordering::SeqCst);
}

/// Item 1, alternate stacks: the first capture of a thread is `capture()` in a real SIGUSR1
/// handler running on a `sigaltstack` (no `ucontext` to say so). The alternate stack is then
/// replaced and unmapped; a frame pointer into it must stop the walk.
#[test]
fn first_capture_on_a_replaced_alt_stack_is_not_trusted() {
    if !in_child("first_capture_on_a_replaced_alt_stack_is_not_trusted") {
        return;
    }
    // SAFETY: a plain SA_SIGINFO | SA_ONSTACK handler for SIGUSR1, in this child process only.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = capture_handler
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    std::thread::spawn(|| {
        let len = 256 * 1024;
        // SAFETY: a fresh anonymous mapping, checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let ss = libc::stack_t {
            ss_sp: p,
            ss_flags: 0,
            ss_size: len,
        };
        // SAFETY: installs our mapping as this thread's alternate stack.
        assert_eq!(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }, 0);
        // SAFETY: raises SIGUSR1 on this thread; the handler runs on the alternate stack.
        unsafe { libc::raise(libc::SIGUSR1) };
        assert!(ALT_CAPTURED.load(Ordering::SeqCst) > 0);
        let off = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: disables the alternate stack (we are not on it), then unmaps it.
        unsafe {
            assert_eq!(libc::sigaltstack(&off, std::ptr::null_mut()), 0);
            libc::munmap(p, len);
        }
        let (lo, hi) = (p as u64, p as u64 + len as u64);
        let (stop, n) = walk_from_fp(middle(lo, hi));
        assert_eq!(n, 1, "{stop:?}");
    })
    .join()
    .unwrap();
}

static PREV_SIGPROF: AtomicUsize = AtomicUsize::new(0);

extern "C" fn prev_sigprof(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    PREV_SIGPROF.fetch_add(1, Ordering::SeqCst);
}

/// Installs [`prev_sigprof`] (counting, `SA_SIGINFO`) as this process's SIGPROF handler and
/// returns its address (a child process of the test: see `in_child`).
fn install_prev_sigprof() -> usize {
    let prev = prev_sigprof as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
        as usize;
    // SAFETY: installs a counting SA_SIGINFO handler for SIGPROF; the sigaction struct is
    // plain data, zeroed then filled.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = prev;
        sa.sa_flags = libc::SA_SIGINFO;
        assert_eq!(libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut()), 0);
    }
    prev
}

fn sigprof_action() -> libc::sigaction {
    // SAFETY: reads the current SIGPROF action into a zeroed struct.
    unsafe {
        let mut cur: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(libc::SIGPROF, std::ptr::null(), &mut cur),
            0
        );
        cur
    }
}

/// Burns CPU time on this thread for `d` of wall time.
fn spin_for(d: std::time::Duration) -> u64 {
    let t0 = std::time::Instant::now();
    let mut x = 0u64;
    while t0.elapsed() < d {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
    x
}

/// Item 6: a SIGPROF handler installed before the CPU profiler (another profiler, Go through
/// cgo) still gets the SIGPROFs that are not the profiler's, does not get the profiler's timer
/// signals, and is back in place after stop.
#[test]
fn sigprof_is_chained_and_restored() {
    if !in_child("sigprof_is_chained_and_restored") {
        return;
    }
    let prev = install_prev_sigprof();
    let reg = unwind::cpu::register_thread();
    let p = unwind::cpu::CpuProfiler::start(unwind::cpu::Config {
        frequency_hz: 1000,
        ..Default::default()
    })
    .unwrap();
    assert_ne!(sigprof_action().sa_sigaction, prev, "profiler installed");
    // SAFETY: sends SIGPROF to this thread (si_code SI_TKILL: not a profiler timer).
    unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGPROF) };
    assert_eq!(PREV_SIGPROF.load(Ordering::SeqCst), 1, "not chained");
    spin_for(std::time::Duration::from_millis(300));
    let profile = p.stop();
    assert!(profile.stats.recorded > 0, "{:?}", profile.stats);
    assert_eq!(
        PREV_SIGPROF.load(Ordering::SeqCst),
        1,
        "the profiler's own signals reached the previous handler"
    );
    assert_eq!(sigprof_action().sa_sigaction, prev, "not restored");
    drop(reg);
}

/// A program that drives its own SIGPROF handler with `setitimer(ITIMER_PROF)` (as gperftools
/// does) and runs a process-timer profile in between keeps its timer: the profile's own timer
/// is a POSIX one (where `ITIMER_PROF` serves instead, it takes the program's over and gives
/// it back at stop), the program's timer is armed with its interval after the stop, and the
/// program's handler counts again.
#[test]
fn the_program_s_own_itimer_prof_is_given_back() {
    if !in_child("the_program_s_own_itimer_prof_is_given_back") {
        return;
    }
    let prev = install_prev_sigprof();
    let every_10ms = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 10_000,
        },
        it_value: libc::timeval {
            tv_sec: 0,
            tv_usec: 10_000,
        },
    };
    // SAFETY: arms ITIMER_PROF from a valid itimerval.
    unsafe {
        assert_eq!(
            libc::setitimer(libc::ITIMER_PROF, &every_10ms, std::ptr::null_mut()),
            0
        );
    }
    spin_for(std::time::Duration::from_millis(200));
    let before = PREV_SIGPROF.load(Ordering::SeqCst);
    assert!(before > 0, "the program's own timer did not fire");
    let p = unwind::cpu::CpuProfiler::start(unwind::cpu::Config {
        frequency_hz: 1000,
        timer: unwind::cpu::TimerMode::Process,
        ..Default::default()
    })
    .unwrap();
    spin_for(std::time::Duration::from_millis(300));
    let profile = p.stop();
    assert!(profile.stats.recorded > 0, "{:?}", profile.stats);
    // SAFETY: getitimer writes the itimerval it is given.
    let now = unsafe {
        let mut it: libc::itimerval = std::mem::zeroed();
        assert_eq!(libc::getitimer(libc::ITIMER_PROF, &mut it), 0);
        it
    };
    assert_eq!(
        (now.it_interval.tv_sec, now.it_interval.tv_usec),
        (0, 10_000),
        "the program's timer was not given back"
    );
    assert_eq!(sigprof_action().sa_sigaction, prev, "handler not restored");
    let after_stop = PREV_SIGPROF.load(Ordering::SeqCst);
    spin_for(std::time::Duration::from_millis(200));
    assert!(
        PREV_SIGPROF.load(Ordering::SeqCst) > after_stop,
        "the program's handler gets no signals after stop"
    );
}

/// Item 6, pprof-rs #288: when SIGPROF had its default action (terminate), stopping the
/// profiler leaves a handler that does nothing (not `SIG_IGN`, which `execve` would keep for
/// every program started after: `proc_and_timers.rs`), so a late timer signal cannot kill the
/// process.
#[test]
fn sigprof_default_is_not_restored() {
    if !in_child("sigprof_default_is_not_restored") {
        return;
    }
    assert_eq!(sigprof_action().sa_sigaction, libc::SIG_DFL);
    let reg = unwind::cpu::register_thread();
    let p = unwind::cpu::CpuProfiler::start(unwind::cpu::Config::default()).unwrap();
    spin_for(std::time::Duration::from_millis(50));
    drop(p.stop());
    let after = sigprof_action().sa_sigaction;
    assert!(
        after != libc::SIG_DFL && after != libc::SIG_IGN,
        "{after:#x}"
    );
    // In libc, which stays loaded: a handler in this crate's code was left behind in a
    // `cdylib` that `dlclose` unmapped, and the next SIGPROF crashed the host.
    // SAFETY: dladdr reads the loader's tables; `info` is written on success.
    let module = unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        assert_ne!(libc::dladdr(after as *const libc::c_void, &mut info), 0);
        std::ffi::CStr::from_ptr(info.dli_fname)
            .to_string_lossy()
            .into_owned()
    };
    assert!(
        module.contains("libc.so"),
        "the late handler is in {module}"
    );
    // SAFETY: a late SIGPROF; handled, the process lives on.
    unsafe { libc::raise(libc::SIGPROF) };
    drop(reg);
}

/// Item 2: `modules::refresh` must not read a module's CFI from memory after the loader let go
/// of it. A copy of libm is loaded from a file that is then deleted (so its CFI can only come
/// from memory) and closed by another thread while `refresh` runs. (Before: `refresh` read the
/// sections after `dl_iterate_phdr` returned, and faulted once the library was unmapped.)
#[test]
fn refresh_survives_a_concurrent_dlclose() {
    // The first refresh prepares everything else; the timed ones below mostly re-do that work.
    let _ = unwind::modules::refresh();
    for i in 0..8 {
        let path = std::env::temp_dir().join(format!("unwind-dl-{}-{i}.so", std::process::id()));
        // Closed below.
        let h = common::tools::dlopen_libm_copy(&path) as usize;
        let closer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(1 + i % 3));
            // SAFETY: closes the handle opened above, once; nothing of it is used.
            unsafe { libc::dlclose(h as *mut libc::c_void) };
        });
        let (u, _failed) = unwind::modules::refresh();
        closer.join().unwrap();
        assert!(!u.modules().is_empty());
    }
}

/// Safe code cannot make the live memory trust a range: `LiveMemory::for_sp` takes only a
/// stack pointer, and an address no stack holds reads as nothing (the alternate stack range a
/// signal handler's `ucontext` gives is for `unsafe` `for_sp_and`). Before, the safe
/// constructor took that range too, and reading inside it faulted.
#[test]
fn safe_live_memory_trusts_no_range() {
    let mut m = unwind::live::LiveMemory::for_sp(0x1008);
    assert_eq!(unwind::Memory::read_u64(&mut m, 0x1008), None);
    let local = 7u64;
    let sp = std::hint::black_box(&local) as *const u64 as u64;
    let mut m = unwind::live::LiveMemory::for_sp(sp);
    assert_eq!(unwind::Memory::read_u64(&mut m, sp), Some(7));
}

/// A program that starts the heap profiler without `heap::Sampling` as its global allocator
/// (this test binary has none) samples nothing: `heap::is_installed` says so, and `start` says
/// so once on standard error (it said nothing, and profiles were empty).
#[test]
fn heap_start_without_the_sampling_allocator_says_so() {
    if !in_child("heap_start_without_the_sampling_allocator_says_so") {
        return;
    }
    assert!(!unwind::heap::is_installed());
    let path = std::env::temp_dir().join(format!("unwind-heap-warn-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: duplicates standard error aside and points fd 2 at the file for the two calls
    // below, then puts it back; no other thread of this child writes to fd 2 meanwhile.
    let saved = unsafe { libc::dup(2) };
    assert!(saved >= 0);
    assert_eq!(unsafe { libc::dup2(file.as_raw_fd(), 2) }, 2);
    unwind::heap::start(unwind::heap::DEFAULT_RATE);
    unwind::heap::start(unwind::heap::DEFAULT_RATE);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::dup2(saved, 2) }, 2);
    unsafe { libc::close(saved) };
    unwind::heap::stop();
    let said = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        said.matches("is not the global allocator").count(),
        1,
        "{said:?}"
    );
    assert_eq!(unwind::heap::stats().samples, 0);
}

/// A stack one thread registers, unregisters (dropping the guard, as `register_stack`'s
/// contract asks) and unmaps, while another thread's live memory reads it: safe code (a
/// `LiveMemory` and `read_u64`) must not fault. The reader looks the registered stack up once
/// and reads it many times (as a walk does for the rest of its run); unregistering waits for
/// such readers before it returns. Before, the read faulted once the owner unmapped the stack
/// (the storm test's rare SIGSEGV).
#[test]
fn a_registered_stack_unmapped_after_unregistering_is_not_read() {
    if !in_child("a_registered_stack_unmapped_after_unregistering_is_not_read") {
        return;
    }
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    const LEN: usize = 64 * 1024;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    // Where the owner maps, registers, unregisters and unmaps, again and again: an address
    // found after the reader's thread (and its stack) exists.
    let at_shared = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let (stop, reads, at_shared) = (stop.clone(), reads.clone(), at_shared.clone());
        std::thread::spawn(move || {
            let local = 0u64;
            let sp = std::hint::black_box(&local) as *const u64 as u64;
            let at = loop {
                match at_shared.load(Ordering::Acquire) {
                    0 => std::thread::yield_now(),
                    at => break at,
                }
            };
            while !stop.load(Ordering::Relaxed) {
                let mut m = unwind::live::LiveMemory::for_sp(sp);
                if unwind::Memory::read_u64(&mut m, at).is_some() {
                    reads.fetch_add(1, Ordering::Relaxed);
                    for i in 0..(LEN / 8) as u64 {
                        std::hint::black_box(unwind::Memory::read_u64(&mut m, at + 8 * i));
                    }
                }
            }
        })
    };
    let at = map_anon(LEN);
    // SAFETY: unmaps the mapping made above (nothing else knows it yet).
    unsafe { libc::munmap(at as *mut libc::c_void, LEN) };
    at_shared.store(at, Ordering::Release);
    let t0 = std::time::Instant::now();
    let mut rounds = 0u64;
    while t0.elapsed() < std::time::Duration::from_secs(2) || reads.load(Ordering::Relaxed) < 50 {
        // SAFETY: a fresh private anonymous mapping at `at` (the hint; NOREPLACE never replaces
        // another mapping) or elsewhere.
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        let p = p as u64;
        // SAFETY: `[p, p + LEN)` stays mapped until the guard is dropped (below, before munmap).
        let reg = unsafe { unwind::coroutine::register_stack(p, p + LEN as u64) }.unwrap();
        std::thread::yield_now();
        drop(reg);
        // SAFETY: unmaps the mapping made above, after its registration was dropped.
        unsafe { libc::munmap(p as *mut libc::c_void, LEN) };
        rounds += 1;
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "no reads"
        );
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    eprintln!(
        "{rounds} rounds, {} reads of a registered stack",
        reads.load(Ordering::Relaxed)
    );
}

/// A fresh private anonymous read-write mapping of `len` bytes.
fn map_anon(len: usize) -> u64 {
    // SAFETY: a fresh private anonymous mapping at an address the kernel picks.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as u64
}

/// The same thread holds a live memory that read a registered stack, drops the stack's
/// registration (which must not wait for that memory: it would wait for itself) and unmaps
/// it: the memory's next read of the stack is refused, not a fault.
#[test]
fn own_thread_unregistering_a_stack_it_reads_neither_waits_nor_faults() {
    if !in_child("own_thread_unregistering_a_stack_it_reads_neither_waits_nor_faults") {
        return;
    }
    const LEN: usize = 64 * 1024;
    let p = map_anon(LEN);
    // SAFETY: the mapping stays until after the guard is dropped.
    let reg = unsafe { unwind::coroutine::register_stack(p, p + LEN as u64) }.unwrap();
    let local = 0u64;
    let sp = std::hint::black_box(&local) as *const u64 as u64;
    let mut m = unwind::live::LiveMemory::for_sp(sp);
    assert_eq!(unwind::Memory::read_u64(&mut m, p + 64), Some(0));
    drop(reg);
    // SAFETY: unmaps the mapping made above, after its registration was dropped.
    unsafe { libc::munmap(p as *mut libc::c_void, LEN) };
    assert_eq!(unwind::Memory::read_u64(&mut m, p + 64), None);
    assert_eq!(unwind::Memory::read_u64(&mut m, sp), Some(0));
}

/// A process forks while another thread holds a live memory that read a registered stack (an
/// open read section): in the child that thread is gone, and unregistering a stack there must
/// not wait for it.
#[test]
fn a_fork_child_does_not_wait_for_its_parent_s_readers() {
    if !in_child("a_fork_child_does_not_wait_for_its_parent_s_readers") {
        return;
    }
    const LEN: usize = 64 * 1024;
    let p = map_anon(LEN);
    // SAFETY: the mapping is never unmapped in this process.
    let reg = unsafe { unwind::coroutine::register_stack(p, p + LEN as u64) }.unwrap();
    let (holding_tx, holding_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let local = 0u64;
        let sp = std::hint::black_box(&local) as *const u64 as u64;
        let mut m = unwind::live::LiveMemory::for_sp(sp);
        assert!(unwind::Memory::read_u64(&mut m, p).is_some());
        holding_tx.send(()).unwrap();
        done_rx.recv().unwrap();
        drop(m);
    });
    holding_rx.recv().unwrap();
    // SAFETY: the child only unregisters a stack (the registry's lock is free: no other thread
    // registers) and exits with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // A watchdog: a child that waits for the parent's reader would hang.
        // SAFETY: alarm has no preconditions; SIGALRM's default action ends the child.
        unsafe { libc::alarm(10) };
        drop(reg);
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child did not exit cleanly (status {status:#x}: a signal is the watchdog's)"
    );
    done_tx.send(()).unwrap();
    holder.join().unwrap();
    drop(reg);
}

/// A live memory that found the mapping holding its stack pointer in `/proc/self/maps` (an
/// unregistered coroutine or segment) holds a snapshot: the mapping's owner may unmap it or
/// take its access away while the walk runs (another thread making its own stack turns a page
/// into a guard page). Reads there must then be refused, not fault. Before, the walk read the
/// snapshot's range directly: a CPU profile's signal handler faulted on a neighbouring stack's
/// new guard page (the storm test's rare SIGSEGV).
#[test]
fn a_scanned_mapping_that_changes_under_a_walk_is_not_read() {
    if !in_child("a_scanned_mapping_that_changes_under_a_walk_is_not_read") {
        return;
    }
    const LEN: usize = 64 * 1024;
    let p = map_anon(LEN);
    let sp = p + LEN as u64 - 256;
    // SAFETY: writes inside the mapping made above.
    unsafe { *((sp + 8) as *mut u64) = 0x1234 };
    let mut m = unwind::live::LiveMemory::for_sp(sp);
    assert_eq!(unwind::Memory::read_u64(&mut m, sp + 8), Some(0x1234));
    assert_eq!(unwind::Memory::read_pair(&mut m, sp + 8), Some((0x1234, 0)));
    // Its first page becomes a guard page.
    // SAFETY: changes the access of a page of the mapping made above, which nothing else uses.
    assert_eq!(
        unsafe { libc::mprotect(p as *mut libc::c_void, 4096, libc::PROT_NONE) },
        0
    );
    assert_eq!(unwind::Memory::read_u64(&mut m, p), None);
    assert_eq!(unwind::Memory::read_pair(&mut m, p), None);
    assert_eq!(unwind::Memory::read_u64(&mut m, sp + 8), Some(0x1234));
    // Then it is unmapped.
    // SAFETY: unmaps the mapping made above.
    unsafe { libc::munmap(p as *mut libc::c_void, LEN) };
    assert_eq!(unwind::Memory::read_u64(&mut m, sp + 8), None);
    assert_eq!(unwind::Memory::read_pair(&mut m, sp + 8), None);
}

const OWN_STACK: usize = 256 * 1024;

/// The body of the thread below: its stack is the low `OWN_STACK` bytes of the mapping at
/// `region`, which goes on above them. Returns 1 when its live memory reads its own stack and
/// refuses the rest of the mapping.
extern "C" fn reads_only_its_stack(region: *mut libc::c_void) -> *mut libc::c_void {
    let region = region as u64;
    let local = 5u64;
    let sp = std::hint::black_box(&local) as *const u64 as u64;
    let mut m = unwind::live::LiveMemory::for_sp(sp);
    let own = unwind::Memory::read_u64(&mut m, sp) == Some(5);
    let above = region + OWN_STACK as u64 + 4096;
    let beyond = unwind::Memory::read_u64(&mut m, above).is_none()
        && unwind::Memory::stack_range(&mut m, above).is_none();
    (own && beyond) as usize as *mut libc::c_void
}

/// A thread's stack mapping may be one with an anonymous mapping above it (the kernel merges
/// adjacent anonymous mappings; here the thread's stack is the low part of one mapping, as
/// `pthread_attr_setstack` allows). The part above the thread's control block (which the
/// thread library puts at the top of the thread's block) is not stack: another owner may free
/// it while the thread runs, so a walk must not read it. Before, the whole mapping was taken
/// for the thread's stack.
#[test]
fn a_thread_s_stack_ends_at_its_control_block() {
    const EXTRA: usize = 1024 * 1024;
    let region = map_anon(OWN_STACK + EXTRA);
    // SAFETY: plain pthread calls on a zeroed attribute object and a thread handle; the stack
    // given is the low part of a mapping nothing else uses, which outlives the thread (joined
    // below, then unmapped).
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_attr_init(&mut attr), 0);
        assert_eq!(
            libc::pthread_attr_setstack(&mut attr, region as *mut libc::c_void, OWN_STACK),
            0
        );
        let mut t: libc::pthread_t = std::mem::zeroed();
        assert_eq!(
            libc::pthread_create(&mut t, &attr, reads_only_its_stack, region as *mut _),
            0
        );
        let mut ret: *mut libc::c_void = std::ptr::null_mut();
        assert_eq!(libc::pthread_join(t, &mut ret), 0);
        libc::pthread_attr_destroy(&mut attr);
        libc::munmap(region as *mut libc::c_void, OWN_STACK + EXTRA);
        assert_eq!(
            ret as usize, 1,
            "the thread's live memory read past its stack"
        );
    }
}

/// Frame records in a mapping found in `/proc/self/maps` are walked (through the kernel's
/// checked reads, not the hot loop's direct ones) while it is mapped, and the same walk after
/// another owner unmapped it stops instead of faulting.
#[test]
fn a_walk_over_a_scanned_mapping_survives_its_unmapping() {
    if !in_child("a_walk_over_a_scanned_mapping_survives_its_unmapping") {
        return;
    }
    const LEN: usize = 64 * 1024;
    let p = map_anon(LEN);
    // A chain of 8 records from `p + 1024` up, 64 bytes apart, each with a return address
    // (values in this test's own code range: any non-zero value serves a frame-pointer walk).
    let ra = a_walk_over_a_scanned_mapping_survives_its_unmapping as *const () as usize as u64;
    for i in 0..8u64 {
        let at = p + 1024 + 64 * i;
        let next = if i == 7 { 0 } else { at + 64 };
        // SAFETY: writes inside the mapping made above.
        unsafe {
            *(at as *mut u64) = next;
            *((at + 8) as *mut u64) = ra + i;
        }
    }
    let walk = |mem: &mut unwind::live::LiveMemory| {
        let mut w: unwind::Walker<unwind::arch::native::Native, _, _> =
            unwind::Walker::new(unwind::transition::NoTransitions);
        let mut buf = [Frame::EMPTY; 16];
        let start = unwind::Start::exact(unwind::Regs::new(ra, p + 1000, p + 1024));
        let t = w.walk(start, mem, &mut buf);
        (t.len, t.stop)
    };
    let mut m = unwind::live::LiveMemory::for_sp(p + 1000);
    let (n, stop) = walk(&mut m);
    assert_eq!((n, stop), (9, unwind::StopReason::End));
    // SAFETY: unmaps the mapping made above.
    unsafe { libc::munmap(p as *mut libc::c_void, LEN) };
    let (n, _) = walk(&mut m);
    assert_eq!(n, 1, "frames read from an unmapped mapping");
}

/// Dropping a stack's registration waits for a walk on another thread that read it (here a
/// `LiveMemory` held for 2.5 s), and says so on standard error once the wait passes 2 s; the
/// memory may be unmapped once the drop returns.
#[test]
fn unregistering_waits_for_a_reader_on_another_thread() {
    if let Some(text) = child_output("unregistering_waits_for_a_reader_on_another_thread") {
        assert!(text.contains("has waited over 2 s"), "{text}");
        return;
    }
    const LEN: usize = 64 * 1024;
    let p = map_anon(LEN);
    // SAFETY: the mapping stays until after the guard is dropped.
    let reg = unsafe { unwind::coroutine::register_stack(p, p + LEN as u64) }.unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let local = 0u64;
        let sp = std::hint::black_box(&local) as *const u64 as u64;
        let mut m = unwind::live::LiveMemory::for_sp(sp);
        assert_eq!(unwind::Memory::read_u64(&mut m, p), Some(0));
        tx.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2500));
        // The owner is waiting in its drop (the stack is still mapped), and the stack is no
        // longer registered: it is not read any more.
        assert_eq!(unwind::Memory::read_u64(&mut m, p + 8), None);
        drop(m);
    });
    rx.recv().unwrap();
    let t0 = std::time::Instant::now();
    drop(reg);
    let waited = t0.elapsed();
    // SAFETY: unmaps the mapping made above, after its registration was dropped.
    unsafe { libc::munmap(p as *mut libc::c_void, LEN) };
    reader.join().unwrap();
    assert!(
        waited >= std::time::Duration::from_millis(2000),
        "the drop returned after {waited:?}, while the reader held the stack"
    );
}

/// A registered range whose lowest page is a guard page (corosensei's `Stack::limit()` is the
/// bottom of its mapping, guard page included, and `limit()..base()` is what its users, and
/// this crate's own examples, registered): the guard page is left out of the registration, so
/// a walk that reads there (a coroutine below it whose start trampoline's CFI reads just above
/// its own stack) is refused instead of faulting. This was the storm test's SIGSEGV.
#[test]
fn a_registered_range_s_guard_page_is_not_read() {
    if !in_child("a_registered_range_s_guard_page_is_not_read") {
        return;
    }
    use corosensei::stack::{DefaultStack, Stack};
    let stack = DefaultStack::new(64 * 1024).unwrap();
    let (lo, hi) = (stack.limit().get() as u64, stack.base().get() as u64);
    let page = 4096;
    let (_, _, perm) = mapping_of(lo).unwrap();
    assert_eq!(perm, "---p", "corosensei's limit() is its guard page");
    // SAFETY: `stack` outlives `reg` (dropped first, below); the guard page is left out.
    let reg = unsafe { unwind::coroutine::register_stack(lo, hi) }.unwrap();
    assert_eq!(
        unwind::transition::registered_stack(lo + page),
        Some(unwind::Range::new(lo + page, hi))
    );
    assert_eq!(unwind::transition::registered_stack(lo), None);
    let local = 0u64;
    let sp = std::hint::black_box(&local) as *const u64 as u64;
    let mut m = unwind::live::LiveMemory::for_sp(sp);
    assert_eq!(unwind::Memory::read_u64(&mut m, lo), None);
    assert_eq!(unwind::Memory::read_u64(&mut m, lo + page), Some(0));
    drop(m);
    drop(reg);
    drop(stack);
}

extern "C-unwind" {
    fn usleep(usec: libc::c_uint) -> libc::c_int;
}

/// The body of a thread that [`a_thread_cancelled_while_profiled`] cancels: a loop of
/// cancellation points (`usleep`), declared `C-unwind` so that the cancellation's forced
/// unwind may pass.
extern "C-unwind" fn sleep_until_cancelled(_: *mut libc::c_void) -> *mut libc::c_void {
    loop {
        // SAFETY: usleep has no memory preconditions.
        unsafe { usleep(1) };
    }
}

/// A thread cancelled (`pthread_cancel`) while the CPU profiler samples it, inside
/// `usleep`: the cancellation goes on as without the profiler. It was delivered inside the
/// SIGPROF handler that interrupted `usleep`, and its unwind through the handler's
/// `extern "C"` frame aborted the process, every time (found by outside use in the
/// twenty-seventh round).
#[test]
fn a_thread_cancelled_while_profiled() {
    if !in_child("a_thread_cancelled_while_profiled") {
        return;
    }
    let p = unwind::cpu::CpuProfiler::start(unwind::cpu::Config {
        frequency_hz: 2000,
        clock: unwind::cpu::Clock::Wall,
        ..Default::default()
    })
    .unwrap();
    // Eight such threads, cancelled together (aborted 10 runs in 10 before).
    let start: extern "C-unwind" fn(*mut libc::c_void) -> *mut libc::c_void = sleep_until_cancelled;
    // SAFETY: the same function pointer; the ABIs differ only in whether unwinding may pass.
    let start = unsafe {
        std::mem::transmute::<
            extern "C-unwind" fn(*mut libc::c_void) -> *mut libc::c_void,
            extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
        >(start)
    };
    let threads: Vec<libc::pthread_t> = (0..8)
        .map(|_| {
            // SAFETY: a thread running `sleep_until_cancelled`, cancelled and joined below.
            unsafe {
                let mut t: libc::pthread_t = std::mem::zeroed();
                assert_eq!(
                    libc::pthread_create(&mut t, std::ptr::null(), start, std::ptr::null_mut()),
                    0
                );
                t
            }
        })
        .collect();
    spin_for(std::time::Duration::from_millis(200));
    for &t in &threads {
        // SAFETY: a live thread created above, joined below.
        assert_eq!(unsafe { libc::pthread_cancel(t) }, 0);
    }
    for &t in &threads {
        let mut ret = std::ptr::null_mut();
        // SAFETY: joins a thread created above, once.
        assert_eq!(unsafe { libc::pthread_join(t, &mut ret) }, 0);
        // PTHREAD_CANCELED is ((void *) -1).
        assert_eq!(ret as isize, -1);
    }
    let profile = p.stop();
    assert!(profile.stats.recorded > 0, "{:?}", profile.stats);
}

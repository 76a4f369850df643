//! Captures in real SIGUSR1 handlers: on a `sigaltstack` and on the interrupted stack, through
//! `capture()` (which must cross the kernel's signal frame via `__restore_rt`) and
//! `capture_from_ucontext`; nested in the system stack and a coroutine; and while other threads
//! churn the registry.
//!
//! Signal dispositions are process-wide, so the tests here take a lock and run one at a time.
//! Handlers only capture into static buffers; all checking happens after they return.

mod common;

use common::Captured;
use std::cell::UnsafeCell;
use std::hint::black_box;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use unwind::{Frame, Options, StopReason, Trace, Via};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const DEPTH: usize = 128;
const EMPTY_TRACE: Trace = Trace {
    len: 0,
    stop: StopReason::End,
};

/// What one handler invocation captured: capture() and capture_from_ucontext(), each with and
/// without the transition table.
struct Shot {
    bufs: [[Frame; DEPTH]; 4],
    traces: [Trace; 4],
}

struct ShotCell(UnsafeCell<Shot>);
// SAFETY: written only by the signal handler while the test thread waits on DONE, read only by
// the test thread after DONE (release/acquire).
unsafe impl Sync for ShotCell {}

static SHOT: ShotCell = ShotCell(UnsafeCell::new(Shot {
    bufs: [[Frame::EMPTY; DEPTH]; 4],
    traces: [EMPTY_TRACE; 4],
}));
static DONE: AtomicU32 = AtomicU32::new(0);
static READY: AtomicBool = AtomicBool::new(false);

const CAPTURE: usize = 0;
const CAPTURE_NAIVE: usize = 1;
const UCONTEXT: usize = 2;
const UCONTEXT_NAIVE: usize = 3;

fn naive() -> Options {
    Options {
        naive: true,
        ..Default::default()
    }
}

#[inline(never)]
fn handler_captures(uc: *mut libc::c_void) {
    // SAFETY: see ShotCell; this handler is the only writer and the reader waits for DONE.
    let shot = unsafe { &mut *SHOT.0.get() };
    let [b0, b1, b2, b3] = &mut shot.bufs;
    shot.traces[CAPTURE] = unwind::capture_with(b0, Options::default());
    shot.traces[CAPTURE_NAIVE] = unwind::capture_with(b1, naive());
    // SAFETY: `uc` is the ucontext the kernel passed to this SA_SIGINFO handler.
    shot.traces[UCONTEXT] =
        unsafe { unwind::live::capture_from_ucontext_with(uc, b2, Options::default()) };
    // SAFETY: as above.
    shot.traces[UCONTEXT_NAIVE] =
        unsafe { unwind::live::capture_from_ucontext_with(uc, b3, naive()) };
    DONE.store(1, Ordering::Release);
}

extern "C" fn on_sigusr1(_sig: libc::c_int, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    handler_captures(uc);
    black_box(());
}

fn install(
    handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
    onstack: bool,
) {
    // SAFETY: a zeroed sigaction is valid; we fill handler, flags and an empty mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags =
            libc::SA_SIGINFO | libc::SA_RESTART | if onstack { libc::SA_ONSTACK } else { 0 };
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
}

/// `size` bytes of fresh anonymous read-write memory (panics if the mapping fails).
fn map_anon(size: usize) -> *mut libc::c_void {
    // SAFETY: a new private anonymous mapping: it aliases nothing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p
}

/// An alternate signal stack for the calling thread (replacing std's, which std disables at
/// thread exit). Returns its range; the caller unmaps it after the thread has exited.
fn set_altstack() -> (usize, usize) {
    let size = 256 * 1024;
    // SAFETY: an anonymous mapping, then sigaltstack on it for this thread.
    unsafe {
        let p = map_anon(size);
        let ss = libc::stack_t {
            ss_sp: p,
            ss_flags: 0,
            ss_size: size,
        };
        assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
        (p as usize, size)
    }
}

fn disable_altstack() {
    let ss = libc::stack_t {
        ss_sp: std::ptr::null_mut(),
        ss_flags: libc::SS_DISABLE,
        ss_size: 0,
    };
    // SAFETY: disables this thread's alternate signal stack; std's stays mapped and is freed by
    // std at thread exit.
    assert_eq!(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }, 0);
}

fn unmap((p, size): (usize, usize)) {
    // SAFETY: the mapping made by set_altstack, no longer used (its thread exited and std
    // disabled the alternate stack at exit).
    unsafe { libc::munmap(p as *mut libc::c_void, size) };
}

/// Reads `*p` and pauses: inline asm, so that even a debug build's spin loop calls no function.
/// Otherwise the signal may land in the prologue of an atomic-load helper, before its frame
/// record exists, and a frame-pointer walk then skips the helper's caller (the spinning
/// function this test looks for) — a real limit of frame-pointer unwinding, not what is tested.
#[inline(always)]
fn load_and_pause(p: *const u32) -> u32 {
    let v: u32;
    // SAFETY: `p` points to a live, aligned u32 (an atomic's storage); a plain load of it is
    // what a relaxed atomic load compiles to.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        core::arch::asm!("mov {v:e}, dword ptr [{p}]", "pause", p = in(reg) p, v = out(reg) v,
            options(nostack, readonly, preserves_flags));
        #[cfg(target_arch = "aarch64")]
        core::arch::asm!("ldr {v:w}, [{p}]", "yield", p = in(reg) p, v = out(reg) v,
            options(nostack, readonly, preserves_flags));
    }
    v
}

#[inline(never)]
fn spin_target() {
    READY.store(true, Ordering::Release);
    let done = DONE.as_ptr() as *const u32;
    while load_and_pause(done) == 0 {}
    std::sync::atomic::fence(Ordering::Acquire);
    black_box(());
}

#[inline(never)]
fn spinner_mid() {
    spin_target();
    black_box(());
}

#[inline(never)]
fn spinner_outer() {
    spinner_mid();
    black_box(());
}

#[inline(never)]
fn spin_on_system_stack() {
    unwind::system_stack::run(spinner_mid);
    black_box(());
}

#[inline(never)]
fn spin_in_coroutine_on_system_stack() {
    use corosensei::stack::{DefaultStack, Stack};
    let mut stack = DefaultStack::new(256 * 1024).unwrap();
    // SAFETY: `stack` outlives `reg`, which is dropped first.
    let reg = unsafe {
        unwind::coroutine::register_stack(stack.limit().get() as u64, stack.base().get() as u64)
    }
    .unwrap();
    spin_on_system_stack_in_a_coroutine(&mut stack);
    drop(reg);
    black_box(());
}

/// Runs [`spin_on_system_stack`] in a coroutine on `stack`, to its end.
fn spin_on_system_stack_in_a_coroutine(stack: &mut corosensei::stack::DefaultStack) {
    let mut co =
        corosensei::Coroutine::with_stack(stack, |_y: &corosensei::Yielder<(), ()>, ()| {
            spin_on_system_stack()
        });
    let r = co.resume(());
    assert!(matches!(r, corosensei::CoroutineResult::Return(())));
}

/// Runs `body` on a fresh thread (with an alternate signal stack if `alt`), signals it once it
/// spins, and returns the four captures.
fn signal_while(body: fn(), alt: bool) -> [Captured; 4] {
    unwind::init();
    let alt = signal_spinning_thread(move || {
        unwind::init_thread();
        unwind::system_stack::map_thread_stack();
        let alt = alt.then(set_altstack);
        body();
        alt
    });
    if let Some(a) = alt {
        unmap(a);
    }
    // SAFETY: the handler ran (the thread only returns after DONE) and nothing writes SHOT now.
    let shot = unsafe { &*SHOT.0.get() };
    [0, 1, 2, 3].map(|i| Captured::new(&shot.bufs[i], shot.traces[i]))
}

/// Runs `body` on a new thread, sends it SIGUSR1 once it spins (`READY`: `spin_target`, which
/// spins until the handler sets `DONE`), and returns what `body` returned.
fn signal_spinning_thread<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    DONE.store(0, Ordering::SeqCst);
    READY.store(false, Ordering::SeqCst);
    let t = std::thread::spawn(body);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !READY.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "spinner never started");
        std::thread::yield_now();
    }
    // SAFETY: the thread is alive (it spins until DONE) and SIGUSR1 has a handler.
    assert_eq!(
        unsafe { libc::pthread_kill(t.as_pthread_t(), libc::SIGUSR1) },
        0
    );
    t.join().unwrap()
}

fn is_signal_trampoline(pc: u64) -> bool {
    unwind::builtin::builtins()
        .unwrap()
        .named(unwind::builtin::SIGNAL_FRAME)
        .any(|b| b.range.contains(pc))
}

/// capture() from the handler: handler frames on stack 0, the signal trampoline, then the
/// interrupted pc (exact, found by the transition) and its callers on stack 1.
fn check_capture_crosses(c: &Captured, stack_after: u16, callers: &[&str]) -> usize {
    let at = c.expect_in_order(&["handler_captures", "on_sigusr1"]);
    let tramp = at[1] + 1;
    assert!(
        is_signal_trampoline(c.frames[tramp].pc),
        "trampoline expected at #{tramp}\n{c}"
    );
    let interrupted = c.frames[tramp + 1];
    assert_eq!(interrupted.via, Via::Transition, "{c}");
    assert!(interrupted.is_exact(), "{c}");
    assert_eq!(interrupted.stack, stack_after, "{c}");
    assert!(
        c.frames[..=tramp]
            .iter()
            .all(|f| f.stack == stack_after - 1),
        "{c}"
    );
    let mut names = vec!["spin_target"];
    names.extend_from_slice(callers);
    let at = c.expect_in_order(&names);
    assert_eq!(at[0], tramp + 1, "{c}");
    tramp + 1
}

#[test]
fn signal_on_altstack_capture_crosses_the_signal_frame() {
    let _g = serial();
    install(on_sigusr1, true);
    let [cap, cap_naive, uc, uc_naive] = signal_while(spinner_outer, true);
    check_capture_crosses(&cap, 1, &["spinner_mid", "spinner_outer"]);
    assert_eq!(cap.trace.stop, StopReason::End, "{cap}");
    // Without the table: the handler's record links to the interrupted stack; the walk refuses.
    assert!(cap_naive.find("spin_target").is_none(), "{cap_naive}");
    assert!(cap_naive.find("spinner_outer").is_none(), "{cap_naive}");
    assert_eq!(
        cap_naive.trace.stop,
        StopReason::NotMonotonic,
        "{cap_naive}"
    );

    // From the ucontext: the interrupted pc first, then its callers.
    for c in [&uc, &uc_naive] {
        assert!(
            common::frame_name(&c.frames[0]).contains("spin_target"),
            "{c}"
        );
        assert!(c.frames[0].is_exact());
        c.expect_in_order(&["spin_target", "spinner_mid", "spinner_outer"]);
        assert!(c.frames.iter().all(|f| f.stack == 0));
    }
}

#[test]
fn signal_on_same_stack_capture_crosses_the_signal_frame() {
    let _g = serial();
    install(on_sigusr1, false);
    let [cap, cap_naive, uc, _] = signal_while(spinner_outer, false);
    check_capture_crosses(&cap, 1, &["spinner_mid", "spinner_outer"]);
    // Without the table the walk goes on along the interrupted chain but loses the interrupted
    // pc itself: the table is what shows where the thread was.
    assert!(cap_naive.find("spin_target").is_none(), "{cap_naive}");
    cap_naive.expect_in_order(&["handler_captures", "spinner_mid", "spinner_outer"]);
    uc.expect_in_order(&["spin_target", "spinner_mid", "spinner_outer"]);
}

#[test]
fn signal_on_the_system_stack_crosses_both() {
    let _g = serial();
    install(on_sigusr1, true);
    let [cap, _, uc, uc_naive] = signal_while(spin_on_system_stack, true);
    let i = check_capture_crosses(
        &cap,
        1,
        &[
            "spinner_mid",
            "unwind_0_1_system_stack_switch",
            "spin_on_system_stack",
        ],
    );
    let sw = cap.expect("unwind_0_1_system_stack_switch");
    assert!(cap.frames[i..=sw].iter().all(|f| f.stack == 1), "{cap}");
    assert_eq!(cap.frames[sw + 1].via, Via::Transition, "{cap}");
    assert_eq!(
        Some(cap.frames[sw + 1].transition),
        unwind::system_stack::transition_id()
    );
    assert!(cap.frames[sw + 1..].iter().all(|f| f.stack == 2), "{cap}");

    uc.expect_in_order(&[
        "spin_target",
        "unwind_0_1_system_stack_switch",
        "spin_on_system_stack",
    ]);
    assert!(
        uc_naive.find("spin_on_system_stack").is_none(),
        "{uc_naive}"
    );
}

#[test]
fn signal_in_a_coroutine_on_the_system_stack_crosses_all_three() {
    signal_in_a_coroutine_on_the_system_stack(
        spin_in_coroutine_on_system_stack,
        "spin_in_coroutine_on_system_stack",
    );
}

/// A signal while `body` (named `outer`) spins on the system stack, called in a coroutine: the
/// handler's capture crosses the signal frame, the system stack's switch and the coroutine's,
/// each onto the next stack, down to `outer`; the ucontext's capture finds the same callers.
fn signal_in_a_coroutine_on_the_system_stack(body: fn(), outer: &str) {
    let _g = serial();
    install(on_sigusr1, true);
    let [cap, _, uc, _] = signal_while(body, true);
    check_capture_crosses(
        &cap,
        1,
        &[
            "unwind_0_1_system_stack_switch",
            "spin_on_system_stack",
            "stack_init_trampoline",
            outer,
        ],
    );
    let stacks: Vec<u16> = ["spin_target", "spin_on_system_stack", outer]
        .iter()
        .map(|n| cap.frames[cap.expect_fn(n)].stack)
        .collect();
    assert_eq!(stacks, vec![1, 2, 3], "{cap}");
    assert_eq!(cap.trace.stop, StopReason::End, "{cap}");
    uc.expect_in_order(&["spin_target", "spin_on_system_stack", outer]);
}

/// The same coroutine with its stack not registered: the walk from the handler (on the
/// alternate stack) crosses the signal frame onto the system stack, then back to the
/// coroutine's stack, which it finds through `/proc/self/maps` (it stopped there: `ReadFailed`
/// after `system_stack::run`).
#[inline(never)]
fn spin_in_unregistered_coroutine_on_system_stack() {
    let mut stack = corosensei::stack::DefaultStack::new(256 * 1024).unwrap();
    spin_on_system_stack_in_a_coroutine(&mut stack);
    black_box(());
}

#[test]
fn signal_in_an_unregistered_coroutine_on_the_system_stack_crosses_all_three() {
    signal_in_a_coroutine_on_the_system_stack(
        spin_in_unregistered_coroutine_on_system_stack,
        "spin_in_unregistered_coroutine_on_system_stack",
    );
}

/// Spins on a `stacker` segment (which nobody registers).
#[inline(never)]
fn spin_on_a_stacker_segment() {
    stacker::grow(128 * 1024, spinner_mid);
    black_box(());
}

/// A signal on the alternate stack while the thread runs on a stacker segment: the walk
/// crosses the signal frame onto the segment and the segment's switch back to the thread's
/// stack. (The frame-record walk stopped after the interrupted pc, `ReadFailed`; in a build
/// without frame pointers the walk skipped the whole segment without a word.)
#[test]
fn signal_on_a_stacker_segment_crosses_the_signal_frame_and_the_segment() {
    let _g = serial();
    install(on_sigusr1, true);
    let [cap, _, uc, _] = signal_while(spin_on_a_stacker_segment, true);
    check_capture_crosses(
        &cap,
        1,
        &[
            "spinner_mid",
            "rust_psm_on_stack",
            "spin_on_a_stacker_segment",
        ],
    );
    let stacks: Vec<u16> = ["spin_target", "spinner_mid", "spin_on_a_stacker_segment"]
        .iter()
        .map(|n| cap.frames[cap.expect_fn(n)].stack)
        .collect();
    assert_eq!(stacks, vec![1, 1, 2], "{cap}");
    assert_eq!(cap.trace.stop, StopReason::End, "{cap}");
    uc.expect_in_order(&["spin_target", "spinner_mid", "spin_on_a_stacker_segment"]);
}

// ---------------------------------------------------------------------------------------------
// Registry churn while other threads capture in signal handlers.

const SPINNERS: usize = 2;
const ROUNDS: u32 = 200;

struct Slot {
    buf: UnsafeCell<[Frame; 64]>,
    trace: UnsafeCell<Trace>,
    /// Round the spinner waits in; the handler sets `handled` to it.
    want: AtomicU32,
    handled: AtomicU32,
}
// SAFETY: each slot's cells are written by the handler running on its own spinner thread and
// read by that thread after `handled` changes (the handler has returned by then).
unsafe impl Sync for Slot {}

#[allow(clippy::declare_interior_mutable_const)]
const SLOT: Slot = Slot {
    buf: UnsafeCell::new([Frame::EMPTY; 64]),
    trace: UnsafeCell::new(EMPTY_TRACE),
    want: AtomicU32::new(0),
    handled: AtomicU32::new(0),
};
static SLOTS: [Slot; SPINNERS] = [SLOT; SPINNERS];

thread_local! {
    static MY_SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

#[inline(never)]
fn churn_handler_captures() {
    let i = MY_SLOT.with(|c| c.get());
    let Some(slot) = SLOTS.get(i) else { return };
    // SAFETY: see Slot.
    unsafe { *slot.trace.get() = unwind::capture_with(&mut *slot.buf.get(), Options::default()) };
    slot.handled
        .store(slot.want.load(Ordering::Relaxed), Ordering::Release);
}

extern "C" fn on_sigusr1_churn(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    churn_handler_captures();
    black_box(());
}

#[inline(never)]
fn churn_spin(slot: &Slot, round: u32) {
    slot.want.store(round, Ordering::Release);
    let handled = slot.handled.as_ptr() as *const u32;
    while load_and_pause(handled) != round {}
    std::sync::atomic::fence(Ordering::Acquire);
    black_box(());
}

/// One spinner of the churn test: waits for each round's signal in `churn_spin` and checks
/// the handler's capture (outside the handler). Returns the failures and its alternate stack.
#[inline(never)]
fn churn_spinner(s: usize) -> (Vec<String>, Option<(usize, usize)>) {
    unwind::init_thread();
    // Spinner 0 takes its signals on an alternate stack, spinner 1 on its own stack
    // (std's small default alternate stack is disabled: a debug build's capture
    // does not fit in it).
    let alt = (s == 0).then(set_altstack);
    if s != 0 {
        disable_altstack();
    }
    MY_SLOT.with(|c| c.set(s));
    let slot = &SLOTS[s];
    let mut bad = Vec::new();
    for round in 1..=ROUNDS {
        churn_spin(slot, round);
        // SAFETY: see Slot: the handler for this round has returned.
        let (buf, trace) = unsafe { (*slot.buf.get(), *slot.trace.get()) };
        let c = Captured::new(&buf, trace);
        let ok = c
            .find_fn("churn_spin")
            .is_some_and(|i| c.frames[i].via == Via::Transition && c.frames[i].is_exact())
            && c.find_fn("churn_spinner").is_some();
        if !ok {
            bad.push(c.to_string());
        }
    }
    MY_SLOT.with(|c| c.set(usize::MAX));
    (bad, alt)
}

#[test]
fn registry_churn_while_handlers_capture() {
    use unwind::transition::{self, Rule, Transitions};
    let _g = serial();
    unwind::init();
    install(on_sigusr1_churn, true);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let ops = std::sync::Arc::new(AtomicUsize::new(0));
    let churners: Vec<_> = (0..3u64)
        .map(|t| {
            let (stop, ops) = (stop.clone(), ops.clone());
            std::thread::spawn(move || {
                let base = 0x6100_0000_0000 + t * 0x1_0000_0000;
                // The stacks registered: pieces of one real mapping (a registration leaves
                // out what cannot be read), far from the spinners' stacks.
                // SAFETY: a fresh private anonymous mapping, never unmapped (the test's
                // process ends with it).
                let region = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        1000 * 0x100,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                } as u64;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let lo = base + (i % 1000) * 0x100;
                    let id = transition::register(
                        unwind::Range::new(lo, lo + 0x10),
                        Rule::ContinueChain,
                        "churn",
                    )
                    .unwrap();
                    assert_eq!(transition::Live.lookup(lo + 1).map(|t| t.id), Some(id));
                    let at = region + (i % 1000) * 0x100;
                    // SAFETY: inside a mapping that stays mapped and readable.
                    let sid =
                        unsafe { transition::register_stack(unwind::Range::new(at, at + 0x100)) }
                            .unwrap();
                    assert!(transition::registered_stack(at + 0x80).is_some());
                    transition::unregister(id).unwrap();
                    transition::unregister_stack(sid).unwrap();
                    assert!(transition::Live.lookup(lo + 1).is_none());
                    ops.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();

    let spinners: Vec<_> = (0..SPINNERS)
        .map(|s| std::thread::spawn(move || churn_spinner(s)))
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 1..=ROUNDS {
        for (s, t) in spinners.iter().enumerate() {
            while SLOTS[s].want.load(Ordering::Acquire) != round {
                assert!(
                    Instant::now() < deadline,
                    "spinner {s} stuck before round {round}"
                );
                std::thread::yield_now();
            }
            // SAFETY: the spinner thread is alive (it waits for this round's handler).
            assert_eq!(
                unsafe { libc::pthread_kill(t.as_pthread_t(), libc::SIGUSR1) },
                0
            );
        }
    }
    let mut failures = Vec::new();
    for t in spinners {
        let (bad, alt) = t.join().unwrap();
        failures.extend(bad);
        if let Some(a) = alt {
            unmap(a);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in churners {
        t.join().unwrap();
    }
    assert!(ops.load(Ordering::Relaxed) > 0);
    assert!(
        failures.is_empty(),
        "{} of {} captures lost their crossing; first:\n{}",
        failures.len(),
        ROUNDS as usize * SPINNERS,
        failures[0]
    );
    assert!(transition::registered().iter().all(|(_, n)| *n != "churn"));
}

/// Frames captured by [`on_overflow`], and how many.
static mut OVERFLOW_FRAMES: [Frame; 256] = [Frame::EMPTY; 256];

/// A SIGSEGV handler on an alternate stack, for a stack overflow: captures the overflowed
/// stack from the `ucontext` and exits the process (it cannot return: the fault would
/// repeat), 0 when the walk went up the overflowed stack through the recursion.
extern "C" fn on_overflow(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: `uc` is the handler's ucontext; the buffer is this handler's alone (the process
    // exits below, no other code touches it).
    let t = unsafe {
        #[allow(static_mut_refs)]
        unwind::capture_from_ucontext_with(uc, &mut OVERFLOW_FRAMES, Options::default())
    };
    // SAFETY: as above.
    #[allow(static_mut_refs)]
    let frames = unsafe { &OVERFLOW_FRAMES[..t.len] };
    let first = frames.first().map_or(0, |f| f.pc);
    // The recursion's frames are all in one function, near the interrupted pc.
    let near = frames
        .iter()
        .filter(|f| f.pc.abs_diff(first) < 0x400)
        .count();
    let ok = t.stop == StopReason::BufferFull && near >= 200;
    let msg: &[u8] = if ok {
        b"overflow: walked up the recursion\n"
    } else {
        b"overflow: the walk stopped short\n"
    };
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(if ok { 0 } else { 3 });
    }
}

#[inline(never)]
fn overflow_recurse(n: u64) -> u64 {
    let a = [n; 16];
    black_box(&a);
    if n == u64::MAX {
        0
    } else {
        overflow_recurse(n + 1) + a[3]
    }
}

/// A coroutine overflows its stack into the guard page below it; a SIGSEGV handler on an
/// alternate stack captures from its `ucontext`. The stack pointer is in the guard page, in
/// no stack: the walk starts in the stack just above it (before, it stopped at the
/// interrupted frame, unreadable). In a child process (the handler exits it).
#[test]
fn a_stack_overflow_is_walked_from_its_sigsegv_handler() {
    const CHILD: &str = "UNWIND_OVERFLOW_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "a_stack_overflow_is_walked_from_its_sigsegv_handler",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(err.contains("walked up the recursion"), "{err}");
        return;
    }
    unwind::init();
    common::segv_on_alt_stack(on_overflow);
    let stack = corosensei::stack::DefaultStack::new(256 * 1024).unwrap();
    let mut co = corosensei::Coroutine::with_stack(stack, |_: &corosensei::Yielder<(), ()>, ()| {
        black_box(overflow_recurse(0));
    });
    co.resume(());
    unreachable!("the recursion ends in SIGSEGV");
}

/// The guard page [`on_psm_guard`] expects a fault on (0: none), and what it captured there.
static PSM_GUARD: AtomicUsize = AtomicUsize::new(0);
static PSM_LEN: AtomicUsize = AtomicUsize::new(0);
struct FramesCell(UnsafeCell<[Frame; DEPTH]>);
// SAFETY: written only by the SIGSEGV handler while the faulting thread is stopped in it, read
// by that thread after the handler returned (PSM_LEN, release/acquire).
unsafe impl Sync for FramesCell {}
static PSM_FRAMES: FramesCell = FramesCell(UnsafeCell::new([Frame::EMPTY; DEPTH]));

/// SIGSEGV on the alternate stack: the `call` in psm's `rust_psm_on_stack` pushed its return
/// address onto the new stack's top page, made unreadable for the test. Captures the
/// interrupted stack as the CPU profiler does (Hybrid, with the prepared CFI), makes the page
/// writable and returns: the `call` runs again and goes on.
extern "C" fn on_psm_guard(_: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let page = PSM_GUARD.load(Ordering::Acquire);
    // SAFETY: the kernel's siginfo for a SIGSEGV.
    let addr = unsafe { (*info).si_addr() } as usize;
    if page == 0 || addr < page || addr >= page + 4096 {
        // Not the test's fault: die as the default action would.
        // SAFETY: plain libc call.
        unsafe { libc::abort() };
    }
    match unwind::modules::unwinder() {
        None => PSM_LEN.store(usize::MAX, Ordering::Release),
        Some(u) => {
            // SAFETY: `uc` is this SA_SIGINFO handler's third argument; the buffer is written only
            // here (see FramesCell).
            let t = unsafe {
                unwind::dwarf::capture_from_ucontext(
                    uc,
                    &mut *PSM_FRAMES.0.get(),
                    u,
                    unwind::Mode::Hybrid,
                )
            };
            PSM_LEN.store(t.len, Ordering::Release);
        }
    }
    // SAFETY: the page is the test's own mapping.
    unsafe {
        libc::mprotect(
            page as *mut libc::c_void,
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    PSM_GUARD.store(0, Ordering::Release);
}

/// Runs a closure on a fresh psm stack whose top page faults at the first push.
#[inline(never)]
fn on_a_fresh_psm_stack() -> usize {
    on_a_fresh_psm_stack_below(false)
}

/// [`on_a_fresh_psm_stack`], with another read-write mapping right above the new stack (as
/// stacker's segments and coroutine stacks lie next to each other) when `neighbour`.
#[inline(never)]
fn on_a_fresh_psm_stack_below(neighbour: bool) -> usize {
    let size = 64 * 1024;
    let total = if neighbour { 2 * size } else { size };
    // SAFETY: an anonymous mapping for the new stack, its top page made unreadable; unmapped
    // below after `on_stack` returned.
    let base = unsafe {
        let p = map_anon(total);
        let top = p as usize + size - 4096;
        assert_eq!(
            libc::mprotect(top as *mut libc::c_void, 4096, libc::PROT_NONE),
            0
        );
        PSM_GUARD.store(top, Ordering::Release);
        p as *mut u8
    };
    // SAFETY: `base..base + size` is a stack psm may run on (its top page becomes writable in
    // the handler before anything is pushed there).
    let r = unsafe { psm::on_stack(base, size, || black_box(7usize)) };
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(base as *mut libc::c_void, total) };
    black_box(r)
}

/// A thread interrupted in psm's `rust_psm_on_stack` at its `call`, sp already on the new
/// stack and the frame record on the old one (where the storm test's SIGPROF samples landed
/// thousands of times in some runs, each cut to one frame): the Hybrid capture from the
/// signal's registers crosses to the old stack and reaches the thread's entry. A real signal
/// at that exact instruction, made certain by an unreadable page.
#[test]
fn a_signal_in_the_middle_of_psm_s_switch_walks_back_to_the_old_stack() {
    // The new stack alone, and with another read-write mapping right above it (its top is
    // where psm puts sp: the next mapping starts there).
    for neighbour in [false, true] {
        psm_switch_signal(neighbour);
    }
}

fn psm_switch_signal(neighbour: bool) {
    let _g = serial();
    unwind::init();
    let _ = unwind::modules::unwinder_or_refresh();
    // SAFETY: a SIGSEGV handler on the alternate stack, restored below.
    let old = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_psm_guard as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGSEGV, &sa, &mut old), 0);
        old
    };
    PSM_LEN.store(0, Ordering::Release);
    let t = std::thread::spawn(move || {
        let alt = set_altstack();
        let r = if neighbour {
            on_a_fresh_psm_stack_below(true)
        } else {
            on_a_fresh_psm_stack()
        };
        disable_altstack();
        (r, alt)
    });
    let (r, alt) = t.join().unwrap();
    unmap(alt);
    // SAFETY: puts back the disposition saved above.
    unsafe { libc::sigaction(libc::SIGSEGV, &old, std::ptr::null_mut()) };
    assert_eq!(r, 7);
    let n = PSM_LEN.load(Ordering::Acquire);
    assert_ne!(n, usize::MAX, "no prepared CFI in the handler");
    assert_ne!(n, 0, "the handler did not run (neighbour: {neighbour})");
    // SAFETY: the handler finished writing before PSM_LEN (release/acquire), and ran once.
    let frames = unsafe { &(&*PSM_FRAMES.0.get())[..n] };
    let text = common::describe(frames);
    assert!(n >= 3, "{n} frames (neighbour: {neighbour}):\n{text}");
    assert!(
        common::frame_name(&frames[0]).contains("rust_psm_on_stack"),
        "{text}"
    );
    assert!(frames[0].is_exact(), "{text}");
    let mine = frames
        .iter()
        .position(|f| common::frame_name(f).contains("on_a_fresh_psm_stack"))
        .unwrap_or_else(|| panic!("the test's function is not in the capture:\n{text}"));
    assert!(frames[mine].stack >= 1, "{text}");
    assert_eq!(frames[1].stack, 1, "{text}");
    assert!(
        frames
            .iter()
            .any(|f| common::frame_name(f).contains("thread_start")),
        "{text}"
    );
}

/// What the small-stack handler captured, and where its stack was when it began.
static SMALL_FRAMES: FramesCell = FramesCell(UnsafeCell::new([Frame::EMPTY; DEPTH]));
static SMALL_LEN: AtomicUsize = AtomicUsize::new(0);
static SMALL_STOP: AtomicU32 = AtomicU32::new(0);
static SMALL_ENTRY_SP: AtomicUsize = AtomicUsize::new(0);
/// Does the small-stack handler capture from its `ucontext` (else with `capture_with`)?
static SMALL_FROM_UCONTEXT: AtomicBool = AtomicBool::new(false);

/// A user's handler as crash reporters write them: `capture()` alone, on whatever alternate
/// stack the thread has.
extern "C" fn on_sigusr1_capture_only(
    _sig: libc::c_int,
    _info: *mut libc::siginfo_t,
    uc: *mut libc::c_void,
) {
    let here = 0u8;
    SMALL_ENTRY_SP.store(black_box(&here) as *const u8 as usize, Ordering::Relaxed);
    // SAFETY: see FramesCell; this handler is the only writer, the reader waits for DONE.
    let buf = unsafe { &mut *SMALL_FRAMES.0.get() };
    let t = if SMALL_FROM_UCONTEXT.load(Ordering::Relaxed) {
        // SAFETY: `uc` is this SA_SIGINFO handler's third argument.
        unsafe { unwind::capture_from_ucontext_with(uc, buf, Options::default()) }
    } else {
        unwind::capture_with(buf, Options::default())
    };
    SMALL_LEN.store(t.len, Ordering::Relaxed);
    SMALL_STOP.store(u32::from(t.stop == StopReason::LowStack), Ordering::Relaxed);
    DONE.store(1, Ordering::Release);
}

/// Signals a fresh std thread (`init_thread` not called: its first capture looks its stack up
/// in `/proc/self/maps`) spinning in `spinner_outer`, with `on_sigusr1_capture_only`
/// installed with `SA_ONSTACK`; `setup` runs on the thread first. The frames captured.
fn capture_on_the_thread_s_alternate_stack(setup: fn() -> Option<(usize, usize)>) -> Captured {
    install(on_sigusr1_capture_only, true);
    let alt = signal_spinning_thread(move || {
        let alt = setup();
        spinner_outer();
        alt
    });
    if let Some(a) = alt {
        let used = alt_stack_used(a);
        let entry = a.0 + a.1 - SMALL_ENTRY_SP.load(Ordering::Relaxed);
        // The kernel's signal frame (~3 KiB with AVX state) and the handler's entry, then the
        // capture: it must leave std's 8 KiB alternate stacks room (unoptimised, it asks for
        // its own bound, unwind::live::DEBUG_WALK_STACK).
        let bound = if cfg!(debug_assertions) {
            unwind::live::DEBUG_WALK_STACK
        } else {
            3 * 1024
        };
        assert!(
            used - entry <= bound,
            "capture used {} bytes of the alternate stack ({entry} before it)",
            used - entry
        );
        unmap(a);
    }
    // SAFETY: the handler ran (the thread only returns after DONE) and nothing writes now.
    let frames = unsafe { &*SMALL_FRAMES.0.get() };
    let n = SMALL_LEN.load(Ordering::Relaxed);
    let stop = if SMALL_STOP.load(Ordering::Relaxed) == 1 {
        StopReason::LowStack
    } else {
        StopReason::End
    };
    Captured::new(frames, Trace { len: n, stop })
}

/// A 256 KiB alternate stack filled with a pattern, so that how much of it a handler used can
/// be read afterwards ([`alt_stack_used`]).
fn patterned_altstack() -> Option<(usize, usize)> {
    let size = 256 * 1024;
    let p = map_anon(size);
    // SAFETY: `p` is a fresh mapping of `size` bytes; then sigaltstack on it for this thread.
    unsafe {
        std::ptr::write_bytes(p.cast::<u8>(), 0xa5, size);
        let ss = libc::stack_t {
            ss_sp: p,
            ss_flags: 0,
            ss_size: size,
        };
        assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
    }
    Some((p as usize, size))
}

/// Bytes of a [`patterned_altstack`] written, from its top down to the lowest changed byte.
fn alt_stack_used((base, size): (usize, usize)) -> usize {
    // SAFETY: the mapping is alive (unmapped by the caller after this) and the thread that
    // used it has exited.
    let bytes = unsafe { std::slice::from_raw_parts(base as *const u8, size) };
    size - bytes.iter().position(|&b| b != 0xa5).unwrap_or(size)
}

/// A capture in a user's `SA_ONSTACK` handler on the alternate signal stack std gives every
/// thread it starts (8 KiB here, a guard page below it), on the thread's first capture: an
/// optimised build's capture fits and finds the interrupted frames; an unoptimised one, which
/// would need tens of KiB, writes nothing and says `LowStack`. Both ran into the guard page
/// (SIGSEGV: found by outside use; the `/proc/self/maps` scan alone kept a 4 KiB buffer on the
/// stack, and the kernel's signal frame takes ~3 KiB). On a large alternate stack whose use
/// is measured, an optimised capture takes at most 3 KiB.
#[test]
fn capture_fits_std_s_alternate_signal_stack() {
    let _g = serial();
    unwind::init();
    let c = capture_on_the_thread_s_alternate_stack(|| None);
    found_or_low_stack(
        &c,
        &["on_sigusr1_capture_only", "spin_target", "spinner_mid"],
    );
    let c = capture_on_the_thread_s_alternate_stack(patterned_altstack);
    c.expect_in_order(&["on_sigusr1_capture_only", "spin_target", "spinner_mid"]);
}

/// `capture_from_ucontext_with` in the same handler, on the same 8 KiB alternate stack: an
/// optimised build finds the interrupted frames from the ucontext; an unoptimised one says
/// `LowStack`. Its CFI walk reserved some 9 KiB in its prologue, before its room check, and
/// the thread died of SIGSEGV (found by outside use in the twenty-sixth round).
#[test]
fn capture_from_ucontext_fits_std_s_alternate_signal_stack() {
    let _g = serial();
    unwind::init();
    SMALL_FROM_UCONTEXT.store(true, Ordering::Relaxed);
    let c = capture_on_the_thread_s_alternate_stack(|| None);
    let big = capture_on_the_thread_s_alternate_stack(patterned_altstack);
    SMALL_FROM_UCONTEXT.store(false, Ordering::Relaxed);
    found_or_low_stack(&c, &["spin_target", "spinner_mid"]);
    big.expect_in_order(&["spin_target", "spinner_mid"]);
}

/// A capture on std's 8 KiB alternate stack: `frames` in order in an optimised build; nothing
/// and `LowStack` in an unoptimised one, whose walk needs more room.
fn found_or_low_stack(c: &Captured, frames: &[&str]) {
    if cfg!(debug_assertions) {
        assert_eq!(
            (c.trace.len, c.trace.stop),
            (0, StopReason::LowStack),
            "{c}"
        );
    } else {
        c.expect_in_order(frames);
    }
}

/// What [`on_usr1_from_ucontext`] captured.
struct UcBuf(UnsafeCell<([Frame; 64], Trace)>);
// SAFETY: written only by the handler, which runs synchronously inside `raise` on the thread
// that reads it afterwards.
unsafe impl Sync for UcBuf {}
static UC_BUF: UcBuf = UcBuf(UnsafeCell::new(([Frame::EMPTY; 64], EMPTY_TRACE)));

extern "C" fn on_usr1_from_ucontext(
    _: libc::c_int,
    _: *mut libc::siginfo_t,
    uc: *mut libc::c_void,
) {
    // SAFETY: see UcBuf.
    let b = unsafe { &mut *UC_BUF.0.get() };
    // SAFETY: `uc` is the ucontext the kernel passed to this SA_SIGINFO handler.
    b.1 = unsafe { unwind::capture_from_ucontext_with(uc, &mut b.0, Options::default()) };
}

#[inline(never)]
fn raising_b() {
    // SAFETY: raise has no preconditions; the handler is installed.
    unsafe { libc::raise(libc::SIGUSR1) };
    black_box(());
}

#[inline(never)]
fn raising_a() {
    raising_b();
    black_box(());
}

/// `capture_from_ucontext` where the CFI is prepared, in this build with frame pointers too:
/// the interrupted function (libc's `raise`, which keeps no frame record) keeps its caller.
/// A frame-record walk from its registers followed the record `rbp` still pointed at, the
/// caller's own, and skipped the caller (found by outside use in the twenty-third round; the
/// CPU profiler's Hybrid mode never did).
#[test]
fn a_signal_s_capture_keeps_the_caller_of_a_function_without_a_frame_record() {
    let _g = serial();
    unwind::init();
    unwind::modules::refresh();
    install(on_usr1_from_ucontext, false);
    raising_a();
    // SAFETY: the handler has returned; nothing else writes UC_BUF.
    let (frames, t) = unsafe { &*UC_BUF.0.get() };
    let names = common::short_names(&frames[..t.len]);
    let at = |f: &str| names.iter().position(|n| n == f);
    assert!(
        matches!((at("raising_b"), at("raising_a")), (Some(b), Some(a)) if b < a),
        "{names:?} {t:?}"
    );
}

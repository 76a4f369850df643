//! The storm (issue 13, item 7): four threads under SIGPROF at 10 kHz each (wall clock), each
//! making and dropping coroutines (registered and not), stacker segments and system-stack calls,
//! registering and unregistering stacks, capturing, and allocating with the heap profiler on.
//! No crash, no deadlock, and every sample either whole (it reaches the thread's entry) or
//! stopped with a reason (counted as truncated).
//!
//! `#[ignore]`d (it runs for half a minute); CI runs it in release (inlining, tail calls):
//! `cargo test --release --test storm -- --include-ignored`. Duration: `UNWIND_STORM_SECS`
//! (default 30). A watchdog aborts the process if the storm overruns by a minute (a deadlock).

mod common;

use common::frame_name;
use corosensei::stack::{DefaultStack, Stack};
use corosensei::{Coroutine, CoroutineResult, Yielder};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use unwind::heap::{self, Sampling};
use unwind::{Frame, Options, StopReason};

#[global_allocator]
static ALLOC: Sampling = Sampling::new(std::alloc::System);

const THREADS: usize = 4;

/// Direct captures made by the workers, and those that did not end at the thread's entry.
static CAPTURES: AtomicU64 = AtomicU64::new(0);
static CAPTURES_NOT_WHOLE: AtomicU64 = AtomicU64::new(0);
static ROUNDS: AtomicU64 = AtomicU64::new(0);

fn storm_secs() -> u64 {
    std::env::var("UNWIND_STORM_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

/// Some CPU work, an allocation (for the heap profiler) and a capture whose stop is checked.
#[inline(never)]
fn storm_work(salt: u64) -> u64 {
    let mut x = salt;
    for i in 0..20_000u64 {
        x = black_box(x.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i));
    }
    let v: Vec<u64> = vec![x; 16 + (salt % 64) as usize];
    let mut buf = [Frame::EMPTY; 128];
    let t = unwind::capture_with(&mut buf, Options::default());
    CAPTURES.fetch_add(1, Ordering::Relaxed);
    if t.stop != StopReason::End {
        CAPTURES_NOT_WHOLE.fetch_add(1, Ordering::Relaxed);
    }
    black_box(&v).iter().fold(0u64, |a, b| a.wrapping_add(*b)) ^ t.len as u64
}

#[inline(never)]
fn in_registered_coroutine(salt: u64) -> u64 {
    let mut stack = DefaultStack::new(128 * 1024).unwrap();
    // SAFETY: `stack` outlives `reg`, which is dropped before it (explicitly, below).
    let reg = unsafe {
        unwind::coroutine::register_stack(stack.limit().get() as u64, stack.base().get() as u64)
    };
    let r = {
        let mut co = Coroutine::with_stack(&mut stack, |y: &Yielder<u64, u64>, s: u64| {
            let a = storm_work(s);
            let b = y.suspend(a);
            storm_work(b)
        });
        let a = match co.resume(salt) {
            CoroutineResult::Yield(a) => a,
            CoroutineResult::Return(a) => a,
        };
        match co.resume(a) {
            CoroutineResult::Return(b) => b,
            CoroutineResult::Yield(b) => b,
        }
    };
    drop(reg);
    drop(stack);
    r
}

#[inline(never)]
fn in_unregistered_coroutine(salt: u64) -> u64 {
    let stack = DefaultStack::new(64 * 1024).unwrap();
    let mut co = Coroutine::with_stack(stack, |_y: &Yielder<u64, ()>, s: u64| storm_work(s));
    match co.resume(salt) {
        CoroutineResult::Return(r) => r,
        CoroutineResult::Yield(()) => 0,
    }
}

#[inline(never)]
fn in_stacker_segment(salt: u64) -> u64 {
    // `grow` always runs the closure on a fresh segment, freed when it returns.
    stacker::grow(64 * 1024, || storm_work(salt))
}

#[inline(never)]
fn on_system_stack(salt: u64) -> u64 {
    unwind::system_stack::run(|| storm_work(salt))
}

#[inline(never)]
fn storm_worker(stop: Arc<AtomicBool>, seed: u64) -> u64 {
    let reg = unwind::cpu::register_thread();
    let mut acc = 0u64;
    let mut i = seed;
    while !stop.load(Ordering::Relaxed) {
        acc ^= match i % 5 {
            0 => in_registered_coroutine(i),
            1 => in_unregistered_coroutine(i),
            2 => in_stacker_segment(i),
            3 => on_system_stack(i),
            _ => storm_work(i),
        };
        i += 1;
        ROUNDS.fetch_add(1, Ordering::Relaxed);
    }
    drop(reg);
    acc
}

#[test]
#[ignore = "long: cargo test --release --test storm -- --include-ignored (.ci/run does)"]
fn storm() {
    let secs = storm_secs();
    // The watchdog: a deadlock must fail the test, not hang CI.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs + 60));
        eprintln!("storm: still running {} s after its end: deadlock", 60);
        std::process::abort();
    });
    unwind::init();
    heap::start(4096);
    // A storm: 10 kHz per thread on the wall clock (a thread's CPU clock only fires at the
    // scheduler's tick). Higher rates starve the threads outright: at 1 MHz a handler's run
    // takes longer than the period and no worker makes progress, which tests nothing.
    let profiler = unwind::cpu::CpuProfiler::start(unwind::cpu::Config {
        frequency_hz: 10_000,
        clock: unwind::cpu::Clock::Wall,
        // The storm's workers register (the handler then runs on their 64 KiB alternate
        // stacks); with every thread sampled, threads the harness starts and ends are caught
        // in libc's clone and exit paths, where a stack legitimately ends short of an entry
        // this test can name (tests/cpu_profiler.rs covers `Threads::All`).
        threads: unwind::cpu::Threads::Registered,
        ..Default::default()
    })
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..THREADS as u64)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || storm_worker(stop, t * 1000))
        })
        .collect();
    // Meanwhile: register and unregister stacks (real mappings) and transitions.
    let t0 = Instant::now();
    let mut registrations = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        let stack = DefaultStack::new(16 * 1024).unwrap();
        // SAFETY: `stack` outlives `reg` (dropped first, at the end of this iteration).
        let reg = unsafe {
            unwind::coroutine::register_stack(stack.limit().get() as u64, stack.base().get() as u64)
        };
        std::thread::sleep(Duration::from_micros(200));
        drop(reg);
        drop(stack);
        registrations += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let prof = profiler.stop();
    for w in workers {
        black_box(w.join().unwrap());
    }
    heap::stop();
    let heap_samples = heap::snapshot_raw();
    let s = prof.stats;
    eprintln!(
        "storm: {secs} s, {} rounds, {registrations} registrations, {} captures ({} not whole), \
         cpu {s:?}, {} heap stacks",
        ROUNDS.load(Ordering::Relaxed),
        CAPTURES.load(Ordering::Relaxed),
        CAPTURES_NOT_WHOLE.load(Ordering::Relaxed),
        heap_samples.len()
    );
    // The profiler's accounting adds up: every signal recorded or dropped, every record
    // collected.
    assert_eq!(s.signals, s.recorded + s.dropped, "{s:?}");
    assert_eq!(s.collected, s.recorded, "{s:?}");
    // Each sample counts its missed timer periods too (`si_overrun`).
    assert_eq!(prof.total(), s.recorded + s.overruns, "{s:?}");
    assert!(s.recorded > 100 * secs, "too few samples: {s:?}");
    // Every sample is whole (reaches the thread's entry, std's `thread_start`) or was counted
    // as stopped early, except where a frame-pointer walk cannot see the caller: the leaf
    // interrupted in a prologue (before `push rbp; mov rbp, rsp` completed: the first 4 bytes
    // of the function) or at a `ret` (after `pop rbp`), where the walk skips the caller and may
    // end at a coroutine's root record without a reason to report. Those are counted apart.
    let whole = |frames: &[Frame]| {
        frames
            .iter()
            .any(|f| frame_name(f).contains("thread_start"))
    };
    let frame_blind = |frames: &[Frame]| {
        let pc = frames[0].pc;
        // SAFETY: `pc` is an interrupted pc in this binary's code (mapped, readable text).
        let at_ret = common::name_of(pc).is_some() && unsafe { *(pc as *const u8) } == 0xc3;
        at_ret || common::offset_in_function(pc).is_some_and(|o| o < 4)
    };
    let mut not_whole = 0u64;
    let mut blind = 0u64;
    for (frames, n) in &prof.stacks {
        assert!(!frames.is_empty(), "an empty sample");
        if !whole(frames) {
            not_whole += n;
            if frame_blind(frames) {
                blind += n;
            }
        }
    }
    eprintln!("storm: {not_whole} samples not whole, {blind} of them in a prologue or at a ret");
    if not_whole > s.truncated + blind {
        for (frames, n) in prof.stacks.iter().filter(|(f, _)| !whole(f)).take(40) {
            eprintln!("{n} x\n{}", common::describe(frames));
        }
    }
    assert!(
        not_whole <= s.truncated + blind,
        "{not_whole} samples do not reach the thread's entry: {} counted as truncated, {blind} \
         in a prologue or at a ret",
        s.truncated
    );
    // Samples stopped early stay rare: 0-25 in 0.3-1.2 million in the runs here since the
    // walker's mid-switch fix (a signal at psm's `rust_psm_on_stack` `call`, sp at the very top
    // of a fresh segment: up to 3% of the weight was cut there before, in slow phases of this
    // VM). Above 0.02% the most frequent are printed; above 0.2% the test fails.
    if s.truncated * 5000 > prof.total() {
        eprintln!(
            "storm: {} of {} samples' weight stopped early (more than 0.02%); the most frequent:",
            s.truncated,
            prof.total()
        );
        // What they are, for the log: the most frequent first.
        let mut cut: Vec<_> = prof.stacks.iter().filter(|(f, _)| !whole(f)).collect();
        cut.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        for (frames, n) in cut.iter().take(8) {
            eprintln!("{n} x\n{}", common::describe(frames));
        }
    }
    assert!(
        s.truncated * 500 <= prof.total(),
        "{} of {} samples' weight stopped early (more than 0.2%): {s:?}",
        s.truncated,
        prof.total()
    );
    // Direct captures: all end at the thread's entry.
    assert_eq!(CAPTURES_NOT_WHOLE.load(Ordering::Relaxed), 0);
    assert!(!heap_samples.is_empty());
}

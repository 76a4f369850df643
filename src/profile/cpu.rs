//! A sampling CPU profiler: SIGPROF, [`capture_from_ucontext`], a lock-free sample ring and a
//! collector thread.
//!
//! # How it works
//! - **Timers.** With [`TimerMode::PerThread`] (the default) every thread of the process
//!   ([`Threads::All`], the default; only those that called [`register_thread`] with
//!   [`Threads::Registered`]) gets its own POSIX timer on its CPU-time clock (`timer_create` on
//!   the thread's `CLOCK_THREAD_CPUTIME_ID`-style clock, `SIGEV_THREAD_ID` so SIGPROF goes to
//!   that thread). The collector finds threads created after start in `/proc/self/task` (it
//!   looks every [`crate::threads::SCAN_EVERY`] and reads the list when the number of threads
//!   changed, when the process used CPU time its samples do not account for, or every
//!   [`crate::threads::FULL_SCAN_EVERY`]) and deletes the timers of threads
//!   that ended. A
//!   registration made while the profiler runs starts that thread's timer at once. [`TimerMode::Process`] uses
//!   one process-wide CPU-time timer instead (`CLOCK_PROCESS_CPUTIME_ID`; `ITIMER_PROF` where no
//!   timer can be made), whose signal the kernel delivers to whichever thread is running,
//!   registered or not. [`Clock::Wall`] makes the
//!   per-thread timers count wall-clock time (`CLOCK_MONOTONIC`), which is not limited to the
//!   kernel's tick like CPU-time timers are (useful for high-rate stress tests).
//! - **The handler** runs, with [`Threads::Registered`], on the alternate signal stack that
//!   [`register_thread`] installs (64 KiB). With [`Threads::All`] and with
//!   [`TimerMode::Process`] it runs on the interrupted stack (no `SA_ONSTACK`): the signal may land on an unregistered thread, whose
//!   alternate stack, if any, is std's few KiB, too small for a capture. It
//!   claims a free slot of a fixed global ring with one compare-and-swap, captures straight into
//!   the slot (`dwarf::capture_from_ucontext` in the modes that walk by CFI, else the
//!   frame-record walk [`crate::capture_from_ucontext_with`] makes without prepared CFI), and
//!   publishes it. No allocation, no lock, no
//!   system call (once the thread's stack bounds are known; see [`crate::live`]). When no slot
//!   is free the sample is counted as dropped.
//! - **The collector** thread drains ready slots into a map from stack (the full [`Frame`]s,
//!   so that any [`crate::policy`] can be applied later) to sample count: every 10 to 100 ms,
//!   as often as the timers' highest rate needs for the ring to stay under an eighth full
//!   (100 ms at 99 Hz for up to ten threads; at most [`crate::threads::SCAN_EVERY`] apart with
//!   [`Threads::All`]). A drain reads only the slots claimed since the previous one (a count
//!   of published samples says when one was published late and the whole ring must be read).
//!
//! Counting: every signal the handler accepts while the profiler runs is either recorded or
//! dropped, so `signals == recorded + dropped` ([`Stats`]) once [`CpuProfiler::stop`] returned.
//!
//! With [`Threads::Registered`] the handler is installed with `SA_ONSTACK`; a SIGPROF sent by hand
//! (`kill -PROF`) to an unregistered thread then runs it on that thread's alternate stack, which
//! may be too small for a capture. Do not mix other SIGPROF sources with a running profiler.
//!
//! Only one profiler runs at a time (the SIGPROF disposition is process-wide). On `stop` the
//! handler installed before it is put back, `SIG_DFL` as a handler that does nothing (a
//! pending SIGPROF must not kill the process; `SIG_IGN` would outlive `execve`); SIGPROFs not from the profiler's timers go to that handler meanwhile
//! (see the `sigprof` module).
//!
//! ```no_run
//! unwind::init();
//! let _reg = unwind::cpu::register_thread();
//! let p = unwind::cpu::CpuProfiler::start(unwind::cpu::Config::default()).unwrap();
//! // ... work ...
//! let profile = p.stop();
//! println!("{} samples", profile.total());
//! ```
//!
//! [`capture_from_ucontext`]: crate::capture_from_ucontext

use crate::frame::Frame;
use crate::live::capture_from_ucontext_by_records;
use crate::live::Options;
use crate::policy::{Classifier, Policy};
use crate::profile::{Profile, Sample};
use crate::walk::Mode;
use core::cell::UnsafeCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most frames kept per sample; deeper stacks are cut (counted in [`Stats::truncated`]).
pub const MAX_DEPTH: usize = 128;
/// Slots in the global sample ring.
pub const RING_SLOTS: usize = 1024;
/// Size of the alternate signal stack [`register_thread`] installs.
pub const ALT_STACK_SIZE: usize = 64 * 1024;
/// Default sampling frequency (Hz): 99, not 100, so that sampling does not run in lockstep with
/// periodic work.
pub const DEFAULT_HZ: u32 = 99;

/// Which timer drives the samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimerMode {
    /// One timer per thread: every thread ([`Threads::All`]) or the registered ones
    /// ([`register_thread`], [`Threads::Registered`]).
    PerThread,
    /// One timer of process CPU time (`timer_create` on `CLOCK_PROCESS_CPUTIME_ID`), whose
    /// signals the kernel delivers to whichever thread runs. A program's own `ITIMER_PROF` is
    /// left alone, its signals passed to its handler; the timer does not outlive the process
    /// image (`execve` deletes it: a program the profiled process execs runs unprofiled, and is
    /// not killed by a SIGPROF it does not handle). Where no POSIX timer can be made
    /// (`RLIMIT_SIGPENDING` reached), `setitimer(ITIMER_PROF)` serves instead: there is one
    /// such timer per process, so a program's own is taken over while the profile runs (its
    /// handler gets none of that timer's signals then) and given back, with its interval, at
    /// stop; and `execve` keeps it armed (do not exec from a process profiled so).
    Process,
}

/// What the per-thread timers count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Clock {
    /// The thread's CPU time (a profile of where CPU goes). Kernels advance CPU-time timers at
    /// the scheduler tick, so rates above the kernel's `HZ` are capped at it.
    ThreadCpu,
    /// Wall-clock time (`CLOCK_MONOTONIC`, high resolution): samples running and waiting threads
    /// alike. A waiting thread is interrupted at every sample: the handler is installed with
    /// `SA_RESTART`, but calls that it does not restart (`poll`, `epoll_wait`, `nanosleep`,
    /// `select`, `sigtimedwait`) return `EINTR` that often.
    Wall,
}

/// Which threads per-thread timers sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Threads {
    /// Every thread of the process, registered or not (the default, as Go's profiler): the
    /// collector looks at `/proc/self/task` every [`crate::threads::SCAN_EVERY`] (and lists it
    /// when the number of threads changed, when the process used CPU time its samples do not
    /// account for, or every [`crate::threads::FULL_SCAN_EVERY`]),
    /// gives new threads a timer and deletes the timers of threads that ended. The handler then runs
    /// on the interrupted thread's own stack (no `SA_ONSTACK`): unregistered threads' alternate
    /// stacks (std's, a few KiB) are too small for a capture.
    All,
    /// Only threads that called [`register_thread`]; the handler runs on the 64 KiB
    /// alternate stack the registration installed.
    Registered,
}

/// Profiler settings.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Samples per second of (thread CPU) time per thread. Default [`DEFAULT_HZ`].
    pub frequency_hz: u32,
    /// Timer kind. Default [`TimerMode::PerThread`].
    pub timer: TimerMode,
    /// Clock of the per-thread timers. Default [`Clock::ThreadCpu`].
    pub clock: Clock,
    /// Which threads the per-thread timers sample. Default [`Threads::All`].
    pub threads: Threads,
    /// Walk without the transition table (to show what a naive walk reports; frame records
    /// only, whatever `mode` says).
    pub naive: bool,
    /// How the handler walks: [`Mode::Hybrid`] (the default) follows frame records where a
    /// function keeps them and the prepared CFI of the loaded modules elsewhere (libc, the
    /// precompiled std, code built without frame pointers); [`Mode::FramePointer`] only
    /// follows frame records (fastest, but a sample in a function without one loses its
    /// callers). The modules' CFI is prepared at start and again when libraries are loaded
    /// or unloaded ([`crate::module_watch`]), never in the handler.
    pub mode: Mode,
}

impl Config {
    /// Do samples walk by the prepared CFI where frame records are missing (every mode but
    /// [`Mode::FramePointer`], unless [`Config::naive`])? Only then does the profiler prepare
    /// and watch the modules' CFI.
    fn walks_by_cfi(&self) -> bool {
        self.mode != Mode::FramePointer && !self.naive
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            frequency_hz: DEFAULT_HZ,
            timer: TimerMode::PerThread,
            clock: Clock::ThreadCpu,
            threads: Threads::All,
            naive: false,
            mode: Mode::Hybrid,
        }
    }
}

/// Why the profiler could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Another [`CpuProfiler`] is running.
    AlreadyRunning,
    /// `frequency_hz` is 0 or above 1 MHz.
    BadFrequency,
    /// `sigaction` failed (errno).
    Sigaction(i32),
    /// `setitimer` or `timer_create`/`timer_settime` failed (errno): with
    /// [`TimerMode::PerThread`], no timer could be made for the calling thread, or for any
    /// thread (`EAGAIN`: `RLIMIT_SIGPENDING` reached; `EPERM`: a seccomp filter).
    Timer(i32),
    /// [`try_register_thread`] could not map, guard or install the thread's alternate signal
    /// stack (errno of the failing `mmap`, `mprotect` or `sigaltstack`).
    AltStack(i32),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::AlreadyRunning => f.write_str("a CPU profiler is already running"),
            Error::BadFrequency => f.write_str("frequency must be 1 Hz to 1 MHz"),
            Error::Sigaction(e) => write!(f, "sigaction(SIGPROF) failed: errno {e}"),
            Error::Timer(e) => write!(f, "timer setup failed: errno {e}"),
            Error::AltStack(e) => write!(f, "alternate signal stack setup failed: errno {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Sample accounting, since [`CpuProfiler::start`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Signals the handler accepted while the profiler ran.
    pub signals: u64,
    /// Samples written to the ring.
    pub recorded: u64,
    /// Samples lost because the ring had no free slot.
    pub dropped: u64,
    /// Samples the collector aggregated (equals `recorded` after `stop`).
    pub collected: u64,
    /// Timer periods that expired while the previous signal of the same timer was still
    /// pending (the kernel's `si_overrun`): each recorded sample counts `1 + overrun` periods,
    /// so a thread whose signals were coalesced is not under-counted. The profile's total is
    /// `recorded + overruns`.
    pub overruns: u64,
    /// Sample weight (periods, `1 + overrun` per sample, as the profile counts them) whose walk
    /// stopped early (buffer full, unreadable frame, ...).
    pub truncated: u64,
    /// Per-thread timers that could not be created (a thread that exited meanwhile, or
    /// [`Stats::timer_errno`]).
    pub timer_errors: u64,
    /// Why `timer_create` (or `timer_settime`) failed for a thread that was still alive, the
    /// last such errno: `EAGAIN` when `RLIMIT_SIGPENDING` is reached (each timer holds a queued
    /// signal), `EPERM` from a seccomp filter. Those threads' CPU time has no samples
    /// (said by [`CpuProfile::warnings`]). [`CpuProfiler::start`] fails with [`Error::Timer`]
    /// when not even the calling thread could have one.
    pub timer_errno: Option<i32>,
    /// `/proc/self` could not tell the profiler about the process when it started
    /// ([`crate::threads::proc_problem`]): threads other than the one that called
    /// [`CpuProfiler::start`] got no timer with [`Threads::All`] (they are found in
    /// `/proc/self/task`), stacks may stop early (a thread's stack bounds are read from
    /// `/proc/self/maps`) and threads have no names. Said by [`CpuProfile::warnings`].
    pub proc_problem: Option<crate::threads::ProcProblem>,
    /// Signals whose handler ran on the thread's alternate signal stack.
    pub on_alt_stack: u64,
    /// The program keeps no frame records (built without frame pointers): stacks came from
    /// CFI, which is slower per sample ([`crate::module_watch::program_keeps_frame_records`]),
    /// or, walked by frame records only ([`Stats::frame_records_only`]), end at their first
    /// frame.
    pub missing_frame_records: bool,
    /// The samples were walked by frame records only ([`Mode::FramePointer`] or
    /// [`Config::naive`]).
    pub frame_records_only: bool,
    /// In a `fork` child, a profiler started by the parent (its pid): it samples nothing
    /// here (timers and the collector thread are not inherited), and the samples it held are
    /// the parent's, which the parent's own profile has: its profile here is empty, and
    /// [`CpuProfile::to_profile`] warns. Start a profiler in the child to profile the child.
    pub inherited_from: Option<u32>,
    /// Shared objects unloaded (`dlclose`) since the start: samples in them are named after
    /// what is mapped at their addresses when the profile is written
    /// ([`crate::module_watch::warn_unloaded`], which [`CpuProfile::to_profile`] calls).
    pub unloaded: u32,
    /// CPU time the whole process used while the profiler ran (`getrusage`: every thread's,
    /// the profiler's own included; zero in a `fork` child), to compare with the samples'.
    pub process_cpu: Duration,
    /// Every thread's CPU time was sampled by a timer of its own ([`TimerMode::PerThread`],
    /// [`Clock::ThreadCpu`], [`Threads::All`]): threads that live shorter than the collector's
    /// scan get none (see [`CpuProfile::warnings`]).
    pub per_thread_cpu_timers: bool,
    /// At stop, SIGPROF's handler was no longer the profiler's: the program installed its own
    /// while the profiler ran, which then got the profiler's timer signals (the samples after
    /// that are missing). Said by [`CpuProfile::warnings`].
    pub handler_replaced: bool,
    /// Threads that blocked SIGPROF when the profiler gave them their timer (with
    /// [`Threads::All`]): their CPU time has no samples. Said by [`CpuProfile::warnings`].
    pub sigprof_blocked: u64,
}

/// CPU time the process has used (`getrusage(RUSAGE_SELF)`: user and system, every thread).
fn process_cpu_time() -> Duration {
    // SAFETY: an all-zero `rusage` is valid; getrusage writes it whole or fails.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid out-pointer for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

// ---------------------------------------------------------------------------------------------
// The ring: fixed global slots, written by the handler, drained by the collector.

const EMPTY: u32 = 0;
const WRITING: u32 = 1;
const READY: u32 = 2;

struct Slot {
    state: AtomicU32,
    len: AtomicU32,
    /// Timer periods this sample stands for (1 + the signal's overrun count).
    weight: AtomicU32,
    stop: AtomicU32,
    /// The sampled thread's id (`gettid`, async-signal-safe): the profile's thread label.
    tid: AtomicU32,
    frames: UnsafeCell<[Frame; MAX_DEPTH]>,
}

// SAFETY: `frames` is accessed only by the one party that owns the slot: the handler that moved
// `state` from EMPTY to WRITING (until it stores READY with Release), then the collector that saw
// READY with Acquire (until it stores EMPTY with Release). The state machine serialises them.
unsafe impl Sync for Slot {}

// Every field starts at zero, so the 2 MiB ring is in `.bss`, not in the binary: a weight of
// 1 here put it in `.data`, 2 MiB of every program that links the profilers. The handler
// stores the weight before READY, and the collector reads it with `max(1)`.
#[allow(clippy::declare_interior_mutable_const)]
const SLOT: Slot = Slot {
    state: AtomicU32::new(EMPTY),
    len: AtomicU32::new(0),
    weight: AtomicU32::new(0),
    stop: AtomicU32::new(0),
    tid: AtomicU32::new(0),
    frames: UnsafeCell::new([Frame::EMPTY; MAX_DEPTH]),
};

static RING: [Slot; RING_SLOTS] = [SLOT; RING_SLOTS];
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// In a `fork` child (its only thread is the one that forked, which was in no handler): the
/// parent's other threads' SIGPROF handlers that were running at the fork never finish here.
/// Their count is cleared (`halt`, a child profiler's `stop`, waited for it for good: found by
/// outside use in the twenty-third round, 1-2 children in 100 hung) and the slots they were
/// writing are free again.
pub(crate) fn forget_in_flight() {
    IN_FLIGHT.store(0, Ordering::SeqCst);
    for slot in &RING {
        let _ = slot
            .state
            .compare_exchange(WRITING, EMPTY, Ordering::AcqRel, Ordering::Relaxed);
    }
}
/// Is a profiler accepting samples?
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Handlers currently between their ENABLED check and their exit.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Walk naively (set by start, read by the handler).
static NAIVE: AtomicBool = AtomicBool::new(false);
/// The walk mode (0 frame pointers, 1 DWARF, 2 hybrid; set by start, read by the handler).
static MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);
static SIGNALS: AtomicU64 = AtomicU64::new(0);
static RECORDED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static TRUNCATED: AtomicU64 = AtomicU64::new(0);
static OVERRUNS: AtomicU64 = AtomicU64::new(0);
static TIMER_ERRORS: AtomicU64 = AtomicU64::new(0);
/// The last errno of a timer that could not be made for a live thread ([`Stats::timer_errno`];
/// 0: none).
static TIMER_ERRNO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
static ON_ALT_STACK: AtomicU64 = AtomicU64::new(0);
/// Threads that blocked SIGPROF when they got their timer ([`Stats::sigprof_blocked`]).
static SIGPROF_BLOCKED: AtomicU64 = AtomicU64::new(0);
/// How often the collector drains the ring at most: at 20 000 samples/s (four threads at 5 kHz)
/// that is 200 samples per drain, well under [`RING_SLOTS`].
const COLLECT_EVERY: Duration = Duration::from_millis(10);
/// How often it drains at least (see [`collect_every`]).
const COLLECT_EVERY_MAX: Duration = Duration::from_millis(100);

/// How long the collector may wait between drains: long enough that the ring gets at most an
/// eighth full at the highest rate the timers can deliver (`frequency_hz` per thread, for
/// `threads` threads), between [`COLLECT_EVERY`] and [`COLLECT_EVERY_MAX`]; the shortest after
/// a drain that took a quarter of the ring (a burst the estimate missed). At the default 99 Hz
/// a process of a few threads is drained every 100 ms: each wake-up costs the collector a few
/// microseconds of CPU however few samples it finds.
fn collect_every(frequency_hz: u32, threads: usize, last_drained: u64) -> Duration {
    if last_drained >= (RING_SLOTS / 4) as u64 {
        return COLLECT_EVERY;
    }
    let per_sec = f64::from(frequency_hz) * threads.max(1) as f64;
    Duration::from_secs_f64((RING_SLOTS / 8) as f64 / per_sec)
        .clamp(COLLECT_EVERY, COLLECT_EVERY_MAX)
}
/// How many slots a handler tries before dropping its sample.
const PROBES: usize = 16;

/// The SIGPROF handler. Async-signal-safe: atomics, a capture into a claimed static slot, and
/// errno saved and restored (the capture may read /proc/self/maps on a thread's first sample).
/// A SIGPROF that is not from our timers goes to the handler installed before ours
/// ([`super::sigprof`]).
extern "C" fn on_sigprof(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: `info` is the siginfo_t the kernel passed to this SA_SIGINFO handler.
    if !unsafe { super::sigprof::is_ours(info) } {
        // SAFETY: the kernel's arguments to this SA_SIGINFO handler, passed on unchanged.
        unsafe { super::sigprof::chain(sig, info, uc) };
        return;
    }
    // SAFETY: __errno_location returns this thread's errno slot; reading and writing it is
    // async-signal-safe.
    let errno = unsafe { *libc::__errno_location() };
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    if ENABLED.load(Ordering::SeqCst) {
        SIGNALS.fetch_add(1, Ordering::Relaxed);
        // Is this handler running on the thread's alternate stack? The kernel saved the
        // alternate stack's bounds in uc_stack; a local's address is (about) our sp.
        // SAFETY: `uc` is the ucontext_t the kernel passed to this SA_SIGINFO handler.
        let ss = unsafe { (*uc.cast::<libc::ucontext_t>()).uc_stack };
        let here = &errno as *const i32 as u64;
        let lo = ss.ss_sp as u64;
        if ss.ss_flags & libc::SS_DISABLE == 0 && here.wrapping_sub(lo) < ss.ss_size as u64 {
            ON_ALT_STACK.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `info` is the siginfo_t the kernel passed to this SA_SIGINFO handler.
        record(uc, unsafe { timer_overrun(info) });
    }
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// The overrun count of a POSIX-timer signal (`si_code == SI_TIMER`), else 0. Linux's
/// `siginfo_t` (include/uapi/asm-generic/siginfo.h): `si_signo`, `si_errno`, `si_code` (3 ints),
/// then on 64-bit targets the union at offset 16, whose timer member starts `int _tid; int
/// _overrun;`: the overrun is the int at byte 20. Async-signal-safe (two reads).
///
/// # Safety
/// `info` must be the siginfo_t the kernel passed to an `SA_SIGINFO` handler.
unsafe fn timer_overrun(info: *const libc::siginfo_t) -> u32 {
    if info.is_null() || cfg!(not(target_pointer_width = "64")) {
        return 0;
    }
    // SAFETY: the caller passes the kernel's siginfo_t (128 bytes); both reads are inside it
    // and 4-aligned.
    unsafe {
        if (*info).si_code != libc::SI_TIMER {
            return 0;
        }
        let overrun = core::ptr::read(info.cast::<u8>().add(20).cast::<i32>());
        overrun.clamp(0, 1 << 20) as u32
    }
}

/// Marks `frames`' outermost frame [`Frame::CUT_SHORT`] when a walk by CFI (`by_cfi`: Dwarf or
/// Hybrid) stopped short of the stack's root ([`StopReason::stopped_early`]): the profile then
/// shows [`TRUNCATED_FRAME`](super::TRUNCATED_FRAME) at that stack's root end. A frame-record
/// walk's early stops are not marked: a main thread's walk ends so below `main` in every
/// sample. Async-signal-safe.
pub(crate) fn mark_cut_short(frames: &mut [Frame], stop: crate::StopReason, by_cfi: bool) {
    if by_cfi && stop.stopped_early() {
        if let Some(f) = frames.last_mut() {
            f.flags |= Frame::CUT_SHORT;
        }
    }
}

#[inline(always)]
fn record(uc: *mut libc::c_void, overrun: u32) {
    let start = NEXT.fetch_add(1, Ordering::Relaxed);
    for i in 0..PROBES {
        let slot = &RING[(start + i) % RING_SLOTS];
        if slot
            .state
            .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        let opts = Options {
            naive: NAIVE.load(Ordering::Relaxed),
            max_depth: 0,
        };
        let mode = match MODE.load(Ordering::Relaxed) {
            1 => Mode::Dwarf,
            2 => Mode::Hybrid,
            _ => Mode::FramePointer,
        };
        // The prepared CFI: an atomic load of a table that is never freed (lock-free).
        let cfi = crate::modules::unwinder().filter(|_| mode != Mode::FramePointer && !opts.naive);
        // SAFETY: this handler owns the slot (EMPTY -> WRITING above) until it stores READY, so
        // no one else touches `frames`; `uc` is the ucontext the kernel passed to this
        // SA_SIGINFO handler.
        let trace = unsafe {
            match cfi {
                Some(u) => {
                    crate::dwarf::capture_from_ucontext(uc, &mut *slot.frames.get(), u, mode)
                }
                None => capture_from_ucontext_by_records(uc, &mut *slot.frames.get(), opts),
            }
        };
        if trace.stop.is_truncated() {
            // Weighted like the sample (its missed periods too), so that it compares with the
            // profile's counts.
            TRUNCATED.fetch_add(1 + u64::from(overrun), Ordering::Relaxed);
            // A CFI walk that stopped short: the profile marks the stack cut.
            // SAFETY: as above (this handler owns the slot's frames until READY).
            mark_cut_short(
                unsafe { &mut (&mut *slot.frames.get())[..trace.len] },
                trace.stop,
                cfi.is_some(),
            );
        }
        slot.len.store(trace.len as u32, Ordering::Relaxed);
        slot.weight.store(1 + overrun, Ordering::Relaxed);
        OVERRUNS.fetch_add(u64::from(overrun), Ordering::Relaxed);
        slot.stop.store(trace.stop as u32, Ordering::Relaxed);
        slot.tid.store(gettid() as u32, Ordering::Relaxed);
        RECORDED.fetch_add(1, Ordering::Relaxed);
        slot.state.store(READY, Ordering::Release);
        PUBLISHED.fetch_add(1, Ordering::Release);
        return;
    }
    DROPPED.fetch_add(1, Ordering::Relaxed);
}

/// Collected samples: per thread id, stacks and their counts; and the threads' names, read
/// (`/proc/self/task/TID/comm`) by the collector when it first sees a thread, while the thread
/// most likely still runs.
#[derive(Default)]
struct Stacks {
    by_tid: HashMap<u32, HashMap<Vec<Frame>, u64>>,
    names: HashMap<u32, String>,
}

/// A thread's name (`comm`), or "" when it has exited.
fn thread_name(tid: u32) -> String {
    let Some(dir) = crate::threads::task_dir(tid as libc::pid_t) else {
        return String::new();
    };
    std::fs::read_to_string(format!("/proc/self/task/{dir}/comm"))
        .map(|s| s.trim_end_matches('\n').to_string())
        .unwrap_or_default()
}

/// Samples published (slots set READY) since the process started: the handler adds one after
/// each READY store.
static PUBLISHED: AtomicU64 = AtomicU64::new(0);
/// Samples the drains took since the process started, and the value of [`NEXT`] where the last
/// drain's window ended. Only drains touch them, and drains are serialised (the profiler's
/// stacks mutex; at start, the registry lock with no profiler running).
static TAKEN: AtomicU64 = AtomicU64::new(0);
static DRAINED_TO: AtomicUsize = AtomicUsize::new(0);

/// Moves every ready slot into `into`. Returns how many it moved.
///
/// Scans only what may have changed: nothing when no sample was published since the last
/// drain; else the slots handlers claimed since then (from where the last drain's window
/// ended to [`NEXT`] plus the probe distance); and the whole ring only when that left some
/// published sample behind (one published late, by a handler that claimed its slot before the
/// last drain). A scan of the whole ring reads one line per slot, 1024 slots 4 KiB apart:
/// done every 10 ms it cost the collector about 0.8% of a core.
fn drain(into: &mut Stacks) -> u64 {
    let published = PUBLISHED.load(Ordering::Acquire);
    let taken = TAKEN.load(Ordering::Relaxed);
    if published <= taken {
        // (Below: a sample taken before its handler counted it; counted now or soon.)
        return 0;
    }
    let next = NEXT.load(Ordering::Relaxed);
    let from = DRAINED_TO.swap(next, Ordering::Relaxed);
    let window = next.wrapping_sub(from).saturating_add(PROBES);
    let mut n = 0;
    if window < RING_SLOTS {
        for i in 0..window {
            n += take(&RING[from.wrapping_add(i) % RING_SLOTS], into);
        }
    }
    if taken + n < published {
        n += RING.iter().map(|slot| take(slot, into)).sum::<u64>();
    }
    TAKEN.store(taken + n, Ordering::Relaxed);
    n
}

/// Moves `slot` into `into` if it is ready: 1 if it was.
fn take(slot: &Slot, into: &mut Stacks) -> u64 {
    if slot.state.load(Ordering::Acquire) != READY {
        return 0;
    }
    let len = (slot.len.load(Ordering::Relaxed) as usize).min(MAX_DEPTH);
    let weight = u64::from(slot.weight.load(Ordering::Relaxed).max(1));
    {
        // SAFETY: READY (seen with Acquire) hands the slot to the collector, the only
        // drainer (calls are serialised by the profiler's mutex), until EMPTY is stored.
        let frames = unsafe { &(&*slot.frames.get())[..len] };
        let tid = slot.tid.load(Ordering::Relaxed);
        into.names.entry(tid).or_insert_with(|| thread_name(tid));
        let into = into.by_tid.entry(tid).or_default();
        match into.get_mut(frames) {
            Some(c) => *c += weight,
            None => {
                into.insert(frames.to_vec(), weight);
            }
        }
    }
    slot.state.store(EMPTY, Ordering::Release);
    1
}

// ---------------------------------------------------------------------------------------------
// Registered threads and their timers.

struct ThreadEntry {
    tid: libc::pid_t,
    /// The running profiler's timer for this thread.
    timer: Option<libc::timer_t>,
}

// SAFETY: timer_t is an opaque kernel timer id (a pointer-sized integer in glibc); any thread of
// the process may pass it to timer_settime/timer_delete.
unsafe impl Send for ThreadEntry {}

pub(super) struct Registry {
    threads: Vec<ThreadEntry>,
    /// Timers of unregistered threads ([`Threads::All`]).
    others: crate::threads::Timers,
    /// The running profiler's settings (None while stopped).
    running: Option<Config>,
    /// The process that started the running profiler (a `fork` child inherits this state
    /// without its timers or collector thread: see [`forget_inherited`]).
    running_pid: u32,
    /// Threads that blocked SIGPROF when they got their timer, checked again at the next scan
    /// ([`scan_threads`]).
    sigprof_suspects: Vec<libc::pid_t>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    threads: Vec::new(),
    others: crate::threads::Timers::new(),
    running: None,
    running_pid: 0,
    sigprof_suspects: Vec::new(),
});

/// In a `fork` child: the parent's profiler state, copied with the memory, describes timers
/// the child does not have (POSIX and interval timers are not inherited), threads it does not
/// have, and a collector thread that does not run here. Forget it all (deleting nothing: the
/// ids are the parent's), so that the child can start a profiler of its own.
fn forget_inherited(reg: &mut Registry) {
    reg.sigprof_suspects.clear();
    reg.threads.clear();
    reg.others.clear(|_| {});
    reg.running = None;
    ENABLED.store(false, Ordering::SeqCst);
    super::sigprof::restore(handler_address());
    super::sigprof::PROCESS_TIMER.store(false, Ordering::SeqCst);
    PROCESS_POSIX_TIMER.store(0, Ordering::SeqCst);
}

/// The registry's lock (also taken around a `fork`: `profile::fork`).
pub(super) fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// In a forked child: is the registry's lock free, no SIGPROF handler in flight and no ring
/// slot being written?
#[cfg(test)]
pub(super) fn free_in_child_for_test() -> bool {
    REGISTRY.try_lock().is_ok()
        && IN_FLIGHT.load(Ordering::SeqCst) == 0
        && RING
            .iter()
            .all(|s| s.state.load(Ordering::SeqCst) != WRITING)
}

/// What a SIGPROF handler inside its sample does to the shared state (in flight, a slot being
/// written): for the fork test, on another thread.
#[cfg(test)]
pub(super) fn enter_handler_for_test() -> usize {
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    (0..RING_SLOTS)
        .find(|&i| {
            RING[i]
                .state
                .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })
        .expect("a free slot")
}

/// The end of [`enter_handler_for_test`]'s sample (the slot is left empty).
#[cfg(test)]
pub(super) fn leave_handler_for_test(slot: usize) {
    RING[slot].state.store(EMPTY, Ordering::Release);
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
}

/// `m`'s lock if it is free now (poisoned or not), without waiting: for the state a `fork`
/// child inherited, whose holder may be a parent thread that does not run here.
fn lock_now<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn period(cfg: &Config) -> Duration {
    Duration::from_nanos(1_000_000_000 / u64::from(cfg.frequency_hz.max(1)))
}

/// Linux's CPU-time clock id of thread `tid` (`MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)` in the
/// kernel's `include/linux/posix-timers.h`; glibc's `pthread_getcpuclockid` computes the same).
fn thread_cpu_clock(tid: libc::pid_t) -> libc::clockid_t {
    const CPUCLOCK_SCHED: libc::clockid_t = 2;
    const CPUCLOCK_PERTHREAD_MASK: libc::clockid_t = 4;
    ((!tid) << 3) | CPUCLOCK_SCHED | CPUCLOCK_PERTHREAD_MASK
}

/// A thread timer's first expiry: uniform in (0, `period`], not a whole period. A thread that
/// runs for less than a period between two of the collector's scans would otherwise never
/// reach its first sample, and every thread would lose part of a period at its start: a bias
/// away from short-lived and bursty threads (Go draws the first expiry the same way,
/// `runtime/os_linux.go`, `setThreadCPUProfiler`).
fn first_expiry(period: Duration, tid: u64) -> Duration {
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let ns = period.as_nanos().min(u128::from(u64::MAX)) as u64;
    if ns <= 1 {
        return period;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // splitmix64 of a counter, the thread id and the clock.
    let mut z = DRAWS
        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        .wrapping_add(tid.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(now);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    Duration::from_nanos(1 + z % ns)
}

/// Creates a timer that will send SIGPROF to thread `tid`, disarmed.
fn create_timer(tid: libc::pid_t, cfg: &Config) -> Result<libc::timer_t, i32> {
    let clock = match cfg.clock {
        Clock::ThreadCpu => thread_cpu_clock(tid),
        Clock::Wall => libc::CLOCK_MONOTONIC,
    };
    tagged_timer(clock, Some(tid))
}

/// A timer on `clock` whose SIGPROFs carry the profiler's tag (see `sigprof::is_ours`), sent to
/// thread `tid`, or to the process (`None`).
fn tagged_timer(clock: libc::clockid_t, tid: Option<libc::pid_t>) -> Result<libc::timer_t, i32> {
    // SAFETY: sigevent is plain data; zeroed is a valid starting value.
    let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
    sev.sigev_signo = libc::SIGPROF;
    match tid {
        Some(tid) => {
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_notify_thread_id = tid;
        }
        None => sev.sigev_notify = libc::SIGEV_SIGNAL,
    }
    sev.sigev_value.sival_ptr = super::sigprof::TIMER_TAG as *mut libc::c_void;
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: valid pointers to a filled sigevent and to the out timer id.
    if unsafe { libc::timer_create(clock, &mut sev, &mut timer) } != 0 {
        return Err(errno());
    }
    Ok(timer)
}

/// Arms `timer` to fire after `first`, then every `period`; deletes it if that fails.
fn arm_timer(timer: libc::timer_t, first: Duration, period: Duration) -> Result<(), i32> {
    let ts = |d: Duration| libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    let spec = libc::itimerspec {
        it_interval: ts(period),
        it_value: ts(first),
    };
    // SAFETY: `timer` came from timer_create and is not deleted yet; spec is a valid
    // itimerspec.
    if unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) } != 0 {
        let e = errno();
        delete_timer(timer);
        return Err(e);
    }
    Ok(())
}

/// Can a timer be made for the calling thread? One made and deleted at once: with
/// `RLIMIT_SIGPENDING` reached (`EAGAIN`) or `timer_create` denied by a seccomp filter
/// (`EPERM`), none can, and [`CpuProfiler::start`] says so instead of running without a sample.
fn probe_timer(cfg: &Config) -> Result<(), i32> {
    let t = create_timer(gettid(), cfg)?;
    delete_timer(t);
    Ok(())
}

/// Notes that thread `tid`'s timer could not be made (`e`): its errno is kept for
/// [`Stats::timer_errno`] unless the thread has ended meanwhile ([`ended_thread_s_errno`]).
fn timer_failed(tid: libc::pid_t, e: i32) {
    // SAFETY: tgkill with signal 0 sends nothing, it only checks that the thread exists.
    let gone = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, 0) } != 0
        && errno() == libc::ESRCH;
    if !ended_thread_s_errno(gone, e) {
        TIMER_ERRNO.store(e, Ordering::Relaxed);
    }
}

/// Is `e` what making a timer says for a thread that has ended (`gone`): `EINVAL` for a clock
/// or target thread that no longer exists, `ESRCH` for its CPU-time clock? That is no failure
/// of the profiler's, and the warning it gave blamed RLIMIT_SIGPENDING or seccomp for threads
/// that had simply ended (seen on a CI run of 80 threads of 10 ms each).
fn ended_thread_s_errno(gone: bool, e: i32) -> bool {
    gone && (e == libc::EINVAL || e == libc::ESRCH)
}

/// Creates and arms a timer sending SIGPROF to thread `tid`.
fn thread_timer(tid: libc::pid_t, cfg: &Config) -> Result<libc::timer_t, i32> {
    let timer = create_timer(tid, cfg).inspect_err(|&e| timer_failed(tid, e))?;
    let p = period(cfg);
    arm_timer(timer, first_expiry(p, tid as u64), p).inspect_err(|&e| timer_failed(tid, e))?;
    Ok(timer)
}

/// Does `cfg` give every thread a timer of its own?
fn all_threads(cfg: &Config) -> bool {
    cfg.timer == TimerMode::PerThread && cfg.threads == Threads::All
}

/// Does thread `tid` block SIGPROF (its `SigBlk`)? Its timer's signals then wait, and the
/// thread gets no samples (a library's helper threads block every signal; so does a thread
/// started from one that did). One read of its `status` when it gets its timer.
fn blocks_sigprof(tid: libc::pid_t) -> bool {
    let Some(dir) = crate::threads::task_dir(tid) else {
        return false;
    };
    let Ok(status) = std::fs::read_to_string(format!("/proc/self/task/{dir}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (libc::SIGPROF - 1)) != 0)
}

/// Gives every thread that has no timer one, and deletes the timers of threads that ended
/// ([`Threads::All`]). Not async-signal-safe (lists `/proc/self/task`). When the threads
/// cannot be listed (`/proc` not mounted, or another PID namespace's whose ids cannot be
/// translated), `starter` (the thread that starts the profiler, at the start) gets a timer and
/// the timers already made are kept.
fn scan_threads(reg: &mut Registry, cfg: &Config, starter: Option<libc::pid_t>) {
    // Threads that blocked SIGPROF when the last scan gave them their timer: counted if they
    // still do (glibc starts a thread with every signal blocked, for a moment).
    let mut suspects = std::mem::take(&mut reg.sigprof_suspects);
    for &tid in &suspects {
        if blocks_sigprof(tid) {
            SIGPROF_BLOCKED.fetch_add(1, Ordering::Relaxed);
        }
    }
    suspects.clear();
    let live = match (crate::threads::tasks(), starter) {
        (Ok(live), _) => live,
        (Err(_), Some(me)) => vec![me],
        (Err(_), None) => {
            reg.sigprof_suspects = suspects;
            return;
        }
    };
    let registered: Vec<libc::pid_t> = reg
        .threads
        .iter()
        .filter(|t| t.timer.is_some())
        .map(|t| t.tid)
        .collect();
    let cpu_clock = cfg.clock == Clock::ThreadCpu;
    let s = reg.others.sync(
        &live,
        // The profilers' own threads (this collector, the module watcher) are left out.
        |tid| registered.contains(&tid) || crate::threads::is_own(tid),
        |tid| {
            let t = thread_timer(tid, cfg)?;
            // Only a thread that got its timer: one whose timer fails is tried again at each
            // scan, and was counted again each time.
            if blocks_sigprof(tid) {
                suspects.push(tid);
            }
            Ok(t)
        },
        delete_timer,
        |t| cpu_clock && crate::threads::cpu_timer_disarmed(t),
    );
    TIMER_ERRORS.fetch_add(s.errors, Ordering::Relaxed);
    reg.sigprof_suspects = suspects;
}

fn delete_timer(t: libc::timer_t) {
    // SAFETY: `t` came from timer_create and is deleted once (the caller takes it out of its
    // entry first).
    unsafe { libc::timer_delete(t) };
}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

/// A thread's registration with the CPU profiler; unregisters (stopping its timer and removing
/// its alternate signal stack) when the last registration of the thread is dropped. Not `Send`:
/// drop it on the thread that made it. Leaking it (`mem::forget`) leaves the thread id
/// registered: a later profiler would arm a timer for it, and should the id be reused, sample
/// that unrelated thread on whatever alternate stack it has.
#[must_use = "the thread is unregistered when this is dropped"]
pub struct ThreadRegistration {
    _not_send: core::marker::PhantomData<*const ()>,
}

/// An alternate signal stack we mapped, and the one it replaced.
struct AltStack {
    base: *mut libc::c_void,
    len: usize,
    previous: libc::stack_t,
}

/// This thread's registration state: its id, how many [`ThreadRegistration`]s are alive, and
/// the alternate stack installed by the first.
struct Registered {
    tid: libc::pid_t,
    count: u32,
    alt: Option<AltStack>,
}

thread_local! {
    static THIS_THREAD: core::cell::RefCell<Option<Registered>> =
        const { core::cell::RefCell::new(None) };
}

/// Sends SIGPROF to the calling thread the way one of the profiler's per-thread timers does
/// (`si_code == SI_TIMER`, the profiler's tag in `si_value`, no overrun), so that a running
/// profiler's handler takes a sample of this thread at once; with none running the signal goes
/// to SIGPROF's previous handler, as a timer signal arriving after stop would. For measuring
/// what one sample costs (`benches/cpu_profiler.rs`); a program has no need of it. Returns
/// whether the kernel accepted the signal. Not for signal handlers.
pub fn sample_this_thread_now() -> bool {
    queue_to_self(libc::SIGPROF)
}

/// [`sample_this_thread_now`] with signal `sig` (0: only the system call, nothing delivered).
#[doc(hidden)]
pub fn queue_to_self(sig: libc::c_int) -> bool {
    // SAFETY: siginfo_t is plain data (128 bytes); zeroed is a valid value.
    let mut info: libc::siginfo_t = unsafe { core::mem::zeroed() };
    info.si_signo = sig;
    info.si_code = libc::SI_TIMER;
    if cfg!(target_pointer_width = "64") {
        // Linux's timer member of the union (see `timer_overrun`): `int _tid; int _overrun;
        // sigval_t _sigval;` from byte 16, so the value is the pointer at byte 24.
        // SAFETY: byte 24 + 8 is inside the 128-byte siginfo_t and 8-aligned (siginfo_t is).
        unsafe {
            core::ptr::write(
                (&mut info as *mut libc::siginfo_t)
                    .cast::<u8>()
                    .add(24)
                    .cast::<usize>(),
                super::sigprof::TIMER_TAG,
            )
        };
    }
    // SAFETY: getpid and gettid have no preconditions; rt_tgsigqueueinfo reads `info`, a valid
    // siginfo_t, and sends to this thread (a process may queue SI_TIMER to itself).
    unsafe {
        let pid = libc::getpid();
        let tid = libc::syscall(libc::SYS_gettid) as libc::pid_t;
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            pid,
            tid,
            sig,
            &info as *const libc::siginfo_t,
        ) == 0
    }
}

/// Registers the calling thread: records its stack bounds ([`crate::init_thread`]), installs a
/// [`ALT_STACK_SIZE`] alternate signal stack (guard page below it), and, if a profiler runs in
/// [`TimerMode::PerThread`], starts this thread's timer. Registering again on the same thread
/// only counts; the thread stays registered until its last registration is dropped. Not
/// async-signal-safe.
///
/// # Panics
/// When the alternate signal stack cannot be set up (see [`try_register_thread`], which returns
/// the error instead): a thread is never sampled without a usable stack for the handler.
pub fn register_thread() -> ThreadRegistration {
    match try_register_thread() {
        Ok(r) => r,
        Err(e) => panic!("unwind::cpu::register_thread: {e}"),
    }
}

/// [`register_thread`], returning [`Error::AltStack`] when the alternate signal stack cannot be
/// mapped, its guard page protected, or installed; the thread is then not registered and no
/// timer is armed for it.
pub fn try_register_thread() -> Result<ThreadRegistration, Error> {
    let guard = ThreadRegistration {
        _not_send: core::marker::PhantomData,
    };
    let again = THIS_THREAD.with(|t| match &mut *t.borrow_mut() {
        Some(r) => {
            r.count += 1;
            true
        }
        None => false,
    });
    if again {
        return Ok(guard);
    }
    crate::live::init_thread();
    let tid = gettid();
    let alt = Some(install_alt_stack()?);
    {
        let mut reg = registry();
        let adopted = reg.others.take(tid);
        let timer = match reg.running {
            _ if adopted.is_some() => adopted,
            // (A failure's errno is kept by `thread_timer`.)
            Some(cfg) if cfg.timer == TimerMode::PerThread => match thread_timer(tid, &cfg) {
                Ok(t) => Some(t),
                Err(_) => {
                    TIMER_ERRORS.fetch_add(1, Ordering::Relaxed);
                    None
                }
            },
            _ => None,
        };
        reg.threads.push(ThreadEntry { tid, timer });
    }
    THIS_THREAD.with(|t| *t.borrow_mut() = Some(Registered { tid, count: 1, alt }));
    Ok(guard)
}

impl Drop for ThreadRegistration {
    fn drop(&mut self) {
        let last = THIS_THREAD
            .try_with(|t| {
                let mut t = t.borrow_mut();
                let r = t.as_mut()?;
                r.count -= 1;
                if r.count == 0 {
                    t.take()
                } else {
                    None
                }
            })
            .ok()
            .flatten();
        let Some(r) = last else { return };
        {
            let mut reg = registry();
            if let Some(i) = reg.threads.iter().position(|t| t.tid == r.tid) {
                let e = reg.threads.swap_remove(i);
                if let Some(t) = e.timer {
                    if reg.running.as_ref().is_some_and(all_threads) {
                        // Still a thread of the process: it keeps its timer, unregistered.
                        reg.others.put(r.tid, t);
                    } else {
                        delete_timer(t);
                    }
                }
            }
        }
        if let Some(alt) = r.alt {
            remove_alt_stack(alt);
        }
    }
}

/// Puts back the alternate stack `alt` replaced and unmaps it.
fn remove_alt_stack(alt: AltStack) {
    // Block SIGPROF while the alternate stack goes away, and discard a SIGPROF the (deleted)
    // timer left pending for this thread: delivered later it would run on the previous,
    // smaller alternate stack.
    // SAFETY: sigset operations on local sets; pthread_sigmask, sigtimedwait (zero timeout)
    // and sigaltstack on this thread; `alt.base` is our own mapping of `alt.len` bytes.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPROF);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        while libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) == libc::SIGPROF {}
        // Restoring fails if we are running on our own alternate stack (a registration
        // dropped inside a signal handler); then keep the mapping rather than free a stack in
        // use.
        let restored = libc::sigaltstack(&alt.previous, std::ptr::null_mut()) == 0;
        if restored {
            libc::munmap(alt.base, alt.len);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}

/// Maps [`ALT_STACK_SIZE`] (rounded up to whole pages) plus a guard page of the system's real
/// page size below it, and installs it as this thread's alternate signal stack.
fn install_alt_stack() -> Result<AltStack, Error> {
    let page = crate::live::page_size();
    let size = ALT_STACK_SIZE.div_ceil(page) * page;
    let len = size + page;
    // SAFETY: anonymous private mapping; the result is checked.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(Error::AltStack(errno()));
    }
    // SAFETY: the first page of our own mapping (mmap returns page-aligned memory) becomes the
    // guard page; nothing refers to it yet.
    if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
        let e = errno();
        // SAFETY: unmaps the mapping made above, which nothing uses.
        unsafe { libc::munmap(base, len) };
        return Err(Error::AltStack(e));
    }
    let ss = libc::stack_t {
        // SAFETY: base + page is inside the mapping.
        ss_sp: unsafe { base.cast::<u8>().add(page) }.cast(),
        ss_flags: 0,
        ss_size: size,
    };
    // SAFETY: stack_t is plain data.
    let mut previous: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; the new stack is mapped and stays mapped until the registration
    // restores `previous`.
    if unsafe { libc::sigaltstack(&ss, &mut previous) } != 0 {
        let e = errno();
        // SAFETY: unmaps the mapping made above.
        unsafe { libc::munmap(base, len) };
        return Err(Error::AltStack(e));
    }
    Ok(AltStack {
        base,
        len,
        previous,
    })
}

/// Installs the SIGPROF handler, with `SA_ONSTACK` or without, remembering the handler it
/// replaces (restored on stop). Done at every start: another profiler (pprof-rs) may have
/// replaced it meanwhile.
fn install_handler(on_alt_stack: bool) -> Result<(), Error> {
    // SA_RESTART keeps interrupted system calls of the profiled program going; SA_ONSTACK runs
    // the handler on the thread's alternate stack. `on_sigprof` is async-signal-safe.
    let mut flags = libc::SA_SIGINFO | libc::SA_RESTART;
    if on_alt_stack {
        flags |= libc::SA_ONSTACK;
    }
    super::sigprof::install(handler_address(), flags).map_err(Error::Sigaction)
}

fn handler_address() -> usize {
    on_sigprof as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize
}

/// The program's own `ITIMER_PROF` when a process-timer profile took it over, given back at
/// stop (a program that profiles itself with `setitimer` keeps its timer).
static PREV_ITIMER: Mutex<Option<libc::itimerval>> = Mutex::new(None);

/// An `ITIMER_PROF` setting that fires every `p` (disarmed for zero).
fn every(p: Duration) -> libc::itimerval {
    let tv = libc::timeval {
        tv_sec: p.as_secs() as libc::time_t,
        tv_usec: p.subsec_micros() as libc::suseconds_t,
    };
    libc::itimerval {
        it_interval: tv,
        it_value: tv,
    }
}

/// Sets `ITIMER_PROF` to `it`; returns the timer it replaced.
fn set_itimer(it: libc::itimerval) -> Result<libc::itimerval, Error> {
    let mut old = every(Duration::ZERO);
    // SAFETY: valid pointers to itimervals.
    if unsafe { libc::setitimer(libc::ITIMER_PROF, &it, &mut old) } != 0 {
        return Err(Error::Timer(errno()));
    }
    Ok(old)
}

/// The process CPU-time timer of a [`TimerMode::Process`] profile (`timer_create` on
/// `CLOCK_PROCESS_CPUTIME_ID`, as a `timer_t` address), 0 when there is none (`ITIMER_PROF`
/// serves instead: see [`arm_process_timer`]).
static PROCESS_POSIX_TIMER: AtomicUsize = AtomicUsize::new(0);

/// Arms a process-timer profile's timer, firing every `p` of process CPU time: a POSIX timer
/// on `CLOCK_PROCESS_CPUTIME_ID`, whose signals carry the profiler's tag. `execve` deletes
/// such a timer, where it keeps `ITIMER_PROF` armed: a program that a profiled process
/// `exec`ed was killed by the next SIGPROF, its action back at the default (found by outside
/// use in the twenty-seventh round). Where no POSIX timer can be made (`RLIMIT_SIGPENDING`
/// reached: `timer_create` preallocates a queued signal), `ITIMER_PROF` as before
/// ([`take_itimer`]), which needs no queue.
fn arm_process_timer(p: Duration) -> Result<(), Error> {
    let armed = tagged_timer(libc::CLOCK_PROCESS_CPUTIME_ID, None)
        .and_then(|t| arm_timer(t, p, p).map(|()| t));
    if let Ok(timer) = armed {
        PROCESS_POSIX_TIMER.store(timer as usize, Ordering::SeqCst);
        super::sigprof::PROCESS_TIMER.store(false, Ordering::SeqCst);
        return Ok(());
    }
    super::sigprof::PROCESS_TIMER.store(true, Ordering::SeqCst);
    take_itimer(p)
}

/// Disarms a process-timer profile's timer at stop (see [`arm_process_timer`]).
fn disarm_process_timer(p: Duration) {
    match PROCESS_POSIX_TIMER.swap(0, Ordering::SeqCst) {
        0 => give_back_itimer(p),
        t => delete_timer(t as libc::timer_t),
    }
}

/// Arms the process timer for a profile, keeping the program's own (if it had one armed).
fn take_itimer(p: Duration) -> Result<(), Error> {
    let old = set_itimer(every(p))?;
    let armed = old.it_value.tv_sec != 0 || old.it_value.tv_usec != 0;
    *PREV_ITIMER.lock().unwrap_or_else(|e| e.into_inner()) = armed.then_some(old);
    Ok(())
}

/// Disarms the process timer at stop, or gives the program back the timer it had; unless
/// the program armed `ITIMER_PROF` itself since the start (its interval is no longer the
/// profile's `p`): then that one is left as it is (stop disarmed a timer the program set
/// after the start, found by outside use in the twenty-fifth round).
fn give_back_itimer(p: Duration) {
    let prev = PREV_ITIMER.lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut cur = every(Duration::ZERO);
    // SAFETY: a valid pointer to an itimerval.
    if unsafe { libc::getitimer(libc::ITIMER_PROF, &mut cur) } == 0 {
        let ours = every(p).it_interval;
        if (cur.it_interval.tv_sec, cur.it_interval.tv_usec) != (ours.tv_sec, ours.tv_usec) {
            return;
        }
    }
    let _ = set_itimer(prev.unwrap_or(every(Duration::ZERO)));
}

// ---------------------------------------------------------------------------------------------
// The profiler.

struct Shared {
    stacks: Mutex<Stacks>,
    collected: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn drain(&self) -> u64 {
        let mut s = self.stacks.lock().unwrap_or_else(|e| e.into_inner());
        let n = drain(&mut s);
        self.collected.fetch_add(n, Ordering::Relaxed);
        n
    }

    /// The stacks of a profiler copied into a `fork` child, without waiting: the parent's
    /// collector may have held their lock at the fork, and it does not run here (then none).
    fn inherited_stacks(&self) -> Option<MutexGuard<'_, Stacks>> {
        lock_now(&self.stacks)
    }
}

/// A running CPU profiler. [`CpuProfiler::stop`] (or dropping it) stops it.
pub struct CpuProfiler {
    config: Config,
    shared: Arc<Shared>,
    collector: Option<std::thread::JoinHandle<()>>,
    started: Instant,
    stopped: bool,
    /// The process that started it (in a `fork` child, this profiler is the parent's copy).
    pid: u32,
    /// [`crate::module_watch::unloads`] at the start.
    unloads_at_start: u32,
    /// The process's CPU time at the start ([`Stats::process_cpu`]).
    cpu_at_start: Duration,
    /// Found at stop: the program had replaced the SIGPROF handler ([`Stats::handler_replaced`]).
    handler_replaced: bool,
    /// What `/proc/self` could not do at the start ([`Stats::proc_problem`]).
    proc_problem: Option<crate::threads::ProcProblem>,
}

impl CpuProfiler {
    /// Starts profiling: calls [`crate::init`], installs the SIGPROF handler, starts the
    /// collector and arms the timers. Fails if a profiler already runs, and with
    /// [`Error::Timer`] when no timer can be armed (after undoing what it set up).
    pub fn start(config: Config) -> Result<CpuProfiler, Error> {
        // Its own allocations (the thread scan, the timers' table, the collector's buffers)
        // are not the program's: left out of a heap profile.
        crate::heap::unsampled(|| Self::start_unsampled(config))
    }

    fn start_unsampled(config: Config) -> Result<CpuProfiler, Error> {
        if config.frequency_hz == 0 || config.frequency_hz > 1_000_000 {
            return Err(Error::BadFrequency);
        }
        crate::init();
        super::fork::register();
        let unloads_at_start = crate::module_watch::unloads();
        let cpu_at_start = process_cpu_time();
        // Once, here: a profile without /proc said nothing of what it lost (found by outside
        // use).
        let proc_problem = crate::threads::proc_problem();
        let cfi = config.walks_by_cfi();
        if cfi {
            // Prepares every loaded module's CFI here, not in the handler, and keeps it
            // current (dlopen) until stop. Outside the registry's lock: it takes a while.
            crate::module_watch::acquire();
        }
        let mut reg = registry();
        if reg.running.is_some() && reg.running_pid != std::process::id() {
            // A profiler of the parent, inherited through `fork`: not running here.
            forget_inherited(&mut reg);
        }
        // A start refused before anything is set up gives back the module watch it took.
        let refuse = |e: Error| -> Result<CpuProfiler, Error> {
            if cfi {
                crate::module_watch::release();
            }
            Err(e)
        };
        if reg.running.is_some() {
            return refuse(Error::AlreadyRunning);
        }
        // No timer can be made at all (RLIMIT_SIGPENDING of 0: EAGAIN; a seccomp filter:
        // EPERM): said now, before anything is set up (it ran, and lost every sample, with a
        // warning that blamed short-lived threads: found by outside use).
        if config.timer == TimerMode::PerThread {
            if let Err(e) = probe_timer(&config) {
                return refuse(Error::Timer(e));
            }
        }
        // Per-thread timers signal only registered threads, which have our 64 KiB alternate
        // stack. ITIMER_PROF also lands on unregistered threads, whose alternate stack (std's,
        // a few KiB) is too small for a capture: run on the interrupted stack instead.
        if let Err(e) = install_handler(
            config.timer == TimerMode::PerThread && config.threads == Threads::Registered,
        ) {
            return refuse(e);
        }
        for c in [
            &SIGNALS,
            &RECORDED,
            &DROPPED,
            &TRUNCATED,
            &OVERRUNS,
            &TIMER_ERRORS,
            &ON_ALT_STACK,
            &SIGPROF_BLOCKED,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        TIMER_ERRNO.store(0, Ordering::Relaxed);
        NAIVE.store(config.naive, Ordering::Relaxed);
        MODE.store(
            match config.mode {
                Mode::FramePointer => 0,
                Mode::Dwarf => 1,
                Mode::Hybrid => 2,
            },
            Ordering::Relaxed,
        );
        let shared = Arc::new(Shared {
            stacks: Mutex::new(Stacks::default()),
            collected: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        // Leftovers cannot exist (stop drains after the last handler), but be sure.
        drain(&mut Stacks::default());
        let collector = {
            let shared = shared.clone();
            let scan = all_threads(&config);
            let cpus = if config.timer == TimerMode::Process {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                1
            };
            // Marked the profilers' own before the first scan of the threads below gives
            // every thread a timer.
            crate::module_watch::spawn_own("unwind-cpu-collector", move || {
                let mut last_scan = Instant::now();
                let mut last_full = last_scan;
                // Unknown: the first look reads the list.
                let mut seen_count = None;
                let mut drained = 0;
                // The process's CPU time and the samples collected at the last look.
                let sample_period = period(&config).max(Duration::from_millis(10));
                let (mut last_cpu, mut last_collected) = (process_cpu_time(), 0u64);
                // CPU time the process used since the last listing that no sample accounts
                // for (each timed thread keeps less than a period unsampled; a thread without
                // a timer makes it grow).
                let mut owed = Duration::ZERO;
                while !shared.stop.load(Ordering::Acquire) {
                    // The timers that may fire: one per timed thread; ITIMER_PROF fires
                    // for the process's CPU time, on as many CPUs as it runs on.
                    let threads = {
                        let reg = registry();
                        reg.threads.len() + reg.others.len()
                    }
                    .max(cpus);
                    let mut wait = collect_every(config.frequency_hz, threads, drained);
                    if scan {
                        wait = wait.min(crate::threads::SCAN_EVERY);
                    }
                    std::thread::park_timeout(wait);
                    drained = shared.drain();
                    if scan && last_scan.elapsed() >= crate::threads::SCAN_EVERY {
                        last_scan = Instant::now();
                        // The list only when the number of threads changed (or now and
                        // then: one may have ended and another begun meanwhile). The
                        // count is read before the list, so a thread born after it
                        // changes the next count.
                        let count = crate::threads::count_hint();
                        // And when the process used more than a period of CPU time that
                        // no sample accounts for since the last listing: a thread that
                        // began as another ended (the count the same) runs without a timer.
                        // A program that starts a thread per job kept the count steady, and
                        // most of its threads' CPU time went unsampled.
                        let cpu = process_cpu_time();
                        let collected = shared.collected.load(Ordering::Relaxed);
                        let sampled = sample_period.saturating_mul(
                            u32::try_from(collected.saturating_sub(last_collected))
                                .unwrap_or(u32::MAX),
                        );
                        owed = (owed + cpu.saturating_sub(last_cpu)).saturating_sub(sampled);
                        let unsampled = owed > sample_period;
                        (last_cpu, last_collected) = (cpu, collected);
                        if count.is_none()
                            || count != seen_count
                            || unsampled
                            || last_full.elapsed() >= crate::threads::FULL_SCAN_EVERY
                        {
                            seen_count = count;
                            last_full = last_scan;
                            owed = Duration::ZERO;
                            let mut reg = registry();
                            // Not after stop: halt clears `running` under this lock.
                            if let Some(cfg) = reg.running {
                                scan_threads(&mut reg, &cfg, None);
                            }
                        }
                    }
                }
            })
        };
        ENABLED.store(true, Ordering::SeqCst);
        super::sigprof::PROCESS_TIMER.store(false, Ordering::SeqCst);
        let armed = match config.timer {
            TimerMode::Process => arm_process_timer(period(&config)),
            TimerMode::PerThread => {
                for t in reg.threads.iter_mut() {
                    match thread_timer(t.tid, &config) {
                        Ok(id) => t.timer = Some(id),
                        Err(_) => {
                            TIMER_ERRORS.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if all_threads(&config) {
                    scan_threads(&mut reg, &config, Some(gettid()));
                }
                // Not one timer armed, and one failed: nothing would be sampled.
                let armed = reg.threads.iter().any(|t| t.timer.is_some()) || !reg.others.is_empty();
                match TIMER_ERRNO.load(Ordering::Relaxed) {
                    e if !armed && e != 0 => Err(Error::Timer(e)),
                    _ => Ok(()),
                }
            }
        };
        reg.running = Some(config);
        reg.running_pid = std::process::id();
        drop(reg);
        let mut p = CpuProfiler {
            config,
            shared,
            collector,
            started: Instant::now(),
            stopped: false,
            pid: std::process::id(),
            unloads_at_start,
            cpu_at_start,
            handler_replaced: false,
            proc_problem,
        };
        if let Err(e) = armed {
            p.halt();
            return Err(e);
        }
        Ok(p)
    }

    /// The settings it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sample accounting so far.
    pub fn stats(&self) -> Stats {
        let build = Stats {
            missing_frame_records: crate::module_watch::program_keeps_frame_records()
                == Some(false),
            frame_records_only: !self.config.walks_by_cfi(),
            per_thread_cpu_timers: self.config.timer == TimerMode::PerThread
                && self.config.clock == Clock::ThreadCpu
                && self.config.threads == Threads::All,
            ..Stats::default()
        };
        if self.pid != std::process::id() {
            return Stats {
                inherited_from: Some(self.pid),
                ..build
            };
        }
        Stats {
            signals: SIGNALS.load(Ordering::Relaxed),
            recorded: RECORDED.load(Ordering::Relaxed),
            dropped: DROPPED.load(Ordering::Relaxed),
            collected: self.shared.collected.load(Ordering::Relaxed),
            overruns: OVERRUNS.load(Ordering::Relaxed),
            truncated: TRUNCATED.load(Ordering::Relaxed),
            timer_errors: TIMER_ERRORS.load(Ordering::Relaxed),
            timer_errno: Some(TIMER_ERRNO.load(Ordering::Relaxed)).filter(|&e| e != 0),
            proc_problem: self.proc_problem,
            sigprof_blocked: SIGPROF_BLOCKED.load(Ordering::Relaxed),
            on_alt_stack: ON_ALT_STACK.load(Ordering::Relaxed),
            unloaded: crate::module_watch::unloads().wrapping_sub(self.unloads_at_start),
            process_cpu: process_cpu_time().saturating_sub(self.cpu_at_start),
            handler_replaced: self.handler_replaced,
            ..build
        }
    }

    /// Samples collected so far (the collector drains every 10 ms).
    pub fn samples(&self) -> u64 {
        self.shared.collected.load(Ordering::Relaxed)
    }

    /// Stops the timers, waits for running handlers, collects the rest and returns the profile.
    pub fn stop(self) -> CpuProfile {
        crate::heap::unsampled(move || self.stop_unsampled())
    }

    fn stop_unsampled(mut self) -> CpuProfile {
        self.halt();
        let inherited = self.pid != std::process::id();
        let collected = if inherited {
            // The parent's profiler, copied into a `fork` child: the samples it holds are the
            // parent's (in the parent's profile too), and none of the child's were taken.
            // Freed, if their lock is free (see `Shared::inherited_stacks`).
            drop(
                self.shared
                    .inherited_stacks()
                    .map(|mut g| std::mem::take(&mut *g)),
            );
            Stacks::default()
        } else {
            std::mem::take(&mut *self.shared.stacks.lock().unwrap_or_else(|e| e.into_inner()))
        };
        let order = |a: &(Vec<Frame>, u64), b: &(Vec<Frame>, u64)| {
            b.1.cmp(&a.1).then_with(|| a.0.len().cmp(&b.0.len()))
        };
        let mut merged: HashMap<Vec<Frame>, u64> = HashMap::new();
        let mut threads = Vec::new();
        for (tid, stacks) in collected.by_tid {
            let mut stacks: Vec<(Vec<Frame>, u64)> = stacks.into_iter().collect();
            stacks.sort_by(order);
            for (f, c) in &stacks {
                *merged.entry(f.clone()).or_insert(0) += c;
            }
            threads.push(ThreadSamples {
                tid,
                name: collected.names.get(&tid).cloned().unwrap_or_default(),
                stacks,
            });
        }
        threads.sort_by_key(|t| t.tid);
        let mut stacks: Vec<(Vec<Frame>, u64)> = merged.into_iter().collect();
        stacks.sort_by(order);
        CpuProfile {
            stacks,
            threads,
            period: period(&self.config),
            clock: self.config.clock,
            duration: if inherited {
                Duration::ZERO
            } else {
                self.started.elapsed()
            },
            stats: self.stats(),
        }
    }

    fn halt(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if self.pid != std::process::id() {
            // The parent's profiler, copied into a `fork` child: its collector thread and
            // timers are not here (joining the thread panicked). Clear the state it left
            // unless the child started a profiler of its own since.
            // The fork handlers (`profile::fork`) leave the lock free in the child; a try all
            // the same, so that a fork they did not see (a raw `clone`) cannot make this wait.
            let reg = lock_now(&REGISTRY);
            if let Some(mut reg) = reg {
                if reg.running.is_some() && reg.running_pid == self.pid {
                    forget_inherited(&mut reg);
                }
            }
            if let Some(c) = self.collector.take() {
                std::mem::forget(c);
            }
            if let Some(mut g) = self.shared.inherited_stacks() {
                let n = drain(&mut g);
                self.shared.collected.fetch_add(n, Ordering::Relaxed);
            }
            if self.config.walks_by_cfi() {
                crate::module_watch::release();
            }
            return;
        }
        {
            let mut reg = registry();
            for tid in std::mem::take(&mut reg.sigprof_suspects) {
                if blocks_sigprof(tid) {
                    SIGPROF_BLOCKED.fetch_add(1, Ordering::Relaxed);
                }
            }
            if self.config.timer == TimerMode::Process {
                disarm_process_timer(period(&self.config));
            }
            for t in reg.threads.iter_mut() {
                if let Some(id) = t.timer.take() {
                    delete_timer(id);
                }
            }
            reg.others.clear(delete_timer);
            ENABLED.store(false, Ordering::SeqCst);
            reg.running = None;
        }
        // A handler that saw ENABLED before the store may still be writing its slot.
        while IN_FLIGHT.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        // Give SIGPROF back to whoever had it (never to the default action: a timer signal
        // still pending would kill the process).
        self.handler_replaced = !super::sigprof::restore(handler_address());
        super::sigprof::PROCESS_TIMER.store(false, Ordering::SeqCst);
        self.shared.stop.store(true, Ordering::Release);
        if let Some(c) = self.collector.take() {
            c.thread().unpark();
            let _ = c.join();
        }
        self.shared.drain();
        if self.config.walks_by_cfi() {
            crate::module_watch::release();
        }
    }
}

impl Drop for CpuProfiler {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One thread's samples.
#[derive(Clone, Debug)]
pub struct ThreadSamples {
    /// Thread id.
    pub tid: u32,
    /// Its name (`/proc/self/task/TID/comm` when the collector first saw it; "" if it had
    /// exited).
    pub name: String,
    /// (stack, samples), most samples first.
    pub stacks: Vec<(Vec<Frame>, u64)>,
}

/// What a CPU profiler collected: full captured stacks (leaf first) and their sample counts.
#[derive(Clone, Debug)]
pub struct CpuProfile {
    /// (stack, samples), most samples first, all threads together.
    pub stacks: Vec<(Vec<Frame>, u64)>,
    /// The same samples per thread (the profile's `thread_id` and `thread_name` labels).
    pub threads: Vec<ThreadSamples>,
    /// Sampling period (of thread CPU time, or wall time with [`Clock::Wall`]).
    pub period: Duration,
    /// What the samples measure: CPU time, or wall time ([`Clock::Wall`]: the pprof's sample
    /// type is `wall`, not `cpu`).
    pub clock: Clock,
    /// How long the profiler ran.
    pub duration: Duration,
    /// Final accounting.
    pub stats: Stats,
}

impl CpuProfile {
    /// Total samples.
    pub fn total(&self) -> u64 {
        self.stacks.iter().map(|s| s.1).sum()
    }

    /// The profile under `policy`: each stack cut to what the policy keeps, as a pprof-style
    /// [`Profile`] with values `samples/count` and `cpu/nanoseconds` (`wall/nanoseconds` with
    /// [`Clock::Wall`]), each sample labelled
    /// `thread_id` and `thread_name` (pprof string labels: `go tool pprof -tagfocus
    /// thread_name=worker`). Stacks the policy empties are kept as empty samples (pprof accepts
    /// them) so totals stay true. Without per-thread samples ([`CpuProfile::threads`] empty),
    /// [`CpuProfile::stacks`] unlabelled.
    pub fn to_profile(&self, policy: &Policy, classifier: &Classifier) -> Profile {
        crate::heap::unsampled(|| self.to_profile_unsampled(policy, classifier))
    }

    /// What this profile's reader should know that it does not show, one line each (what
    /// [`CpuProfile::to_profile`] prints on standard error, beside the build's warnings): a
    /// `fork` child's inherited profiler, a `/proc/self` that could not be read
    /// ([`Stats::proc_problem`]), threads whose timer could not be made
    /// ([`Stats::timer_errno`]), threads that blocked SIGPROF, and, when none of those explains
    /// it, samples that hold less than three quarters of the CPU time the process used
    /// (threads that lived shorter than the collector's 20 ms look, or ran between two of its
    /// looks, got no per-thread timer: [`TimerMode::Process`] samples them).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(parent) = self.stats.inherited_from {
            w.push(format!(
                "this CPU profiler was started by process {parent}, before a fork: it samples \
                 nothing in the child (whose profile this is: empty); start a profiler in the \
                 child to profile it"
            ));
            return w;
        }
        if self.stats.handler_replaced {
            // Found by outside use in the twenty-fifth round: an empty profile, and a warning
            // that blamed short-lived threads.
            w.push(
                "the program installed its own SIGPROF handler while the profiler ran: the \
                 profiler's timer signals went to it from then on, and their samples are \
                 missing; install it before CpuProfiler::start (the profiler passes on the \
                 signals that are not its own)"
                    .to_string(),
            );
            return w;
        }
        // Each sample stands for one period and its overruns (the periods that expired between
        // two of the kernel's ticks, which a timer above its HZ fires at): the period was taken
        // as at least 10 ms, which put ten times the CPU the process used in a 1 kHz profile
        // (found by outside use in the twenty-seventh round).
        let period = self.period;
        let samples = self.stats.recorded + self.stats.overruns;
        let sampled = period.saturating_mul(u32::try_from(samples).unwrap_or(u32::MAX));
        let used = self.stats.process_cpu;
        // The CPU time in the profile against the process's, for a profile of CPU time (a
        // wall-clock profile's samples are not CPU time).
        let share = if self.clock == Clock::ThreadCpu {
            format!(
                " ({} ms of the {} ms the process used are in the profile)",
                sampled.as_millis(),
                used.as_millis()
            )
        } else {
            String::new()
        };
        // Under three quarters: a 40% loss passed without a word at a half (found by outside
        // use). CPU-time timers fire on each period of a thread's CPU time, overruns counted,
        // so a thread sampled throughout loses less than one period.
        if let Some(p) = self.stats.proc_problem {
            let (threads, fix) = match p {
                crate::threads::ProcProblem::Unreadable(_) => (
                    "threads are found in /proc/self/task",
                    "mount /proc, or use TimerMode::Process",
                ),
                crate::threads::ProcProblem::OtherNamespace { .. } => (
                    "the thread ids it lists are not this namespace's",
                    "mount this namespace's /proc (unshare --mount-proc), or use \
                     TimerMode::Process",
                ),
            };
            let timers = format!(
                "with Threads::All only the thread that started the profiler has a timer \
                 ({threads}), "
            );
            w.push(format!(
                "{p}: {timers}stacks may stop at their first frames (a thread's stack bounds \
                 are read from /proc/self/maps), threads have no names and \
                 Symbolizer::for_current_process names no function (it reads \
                 /proc/self/maps); {fix}"
            ));
        }
        if let Some(e) = self.stats.timer_errno {
            // Found by outside use: with RLIMIT_SIGPENDING at 0 every timer failed, and the
            // warning blamed short-lived threads.
            w.push(format!(
                "the profiler could not make a timer for some threads (timer_create: errno \
                 {e}, {}; {} failures): their time has no samples{share}; EAGAIN is \
                 RLIMIT_SIGPENDING reached (each timer holds a queued signal), EPERM a seccomp \
                 filter; TimerMode::Process needs no per-thread timer",
                std::io::Error::from_raw_os_error(e),
                self.stats.timer_errors,
            ));
        }
        if self.stats.sigprof_blocked > 0 {
            // Found by outside use in the twenty-fifth round: a thread that blocked every
            // signal was missing, and the warning blamed short-lived threads.
            w.push(format!(
                "{} threads blocked SIGPROF when the profiler found them (a library's helper \
                 threads block every signal; threads started from one inherit its mask): their \
                 time has no samples{share}",
                self.stats.sigprof_blocked,
            ));
        } else if w.is_empty()
            && self.stats.per_thread_cpu_timers
            && self.clock == Clock::ThreadCpu
            && used >= period * 20
            && sampled < used / 4 * 3
        {
            w.push(format!(
                "the profile holds {} ms of the {} ms of CPU time the process used while it \
                 ran: threads that lived shorter than the profiler's 20 ms look for threads got \
                 no timer; TimerMode::Process samples the whole process's CPU time",
                sampled.as_millis(),
                used.as_millis()
            ));
        }
        w
    }

    fn to_profile_unsampled(&self, policy: &Policy, classifier: &Classifier) -> Profile {
        for w in self.warnings() {
            eprintln!("unwind: warning: {w}");
        }
        if self.stats.inherited_from.is_none() && self.stats.missing_frame_records {
            crate::module_watch::warn_once_frame_records_missing(self.stats.frame_records_only);
        }
        crate::module_watch::warn_unloaded(self.stats.unloaded);
        let ns = self.period.as_nanos() as i64;
        // A wall-clock profile's time is wall time (found by outside use: labelled `cpu`,
        // `go tool pprof` printed "Total samples = 18.97s (566%)" for a 3.35 s run that used
        // 2.1 s of CPU).
        let kind = match self.clock {
            Clock::ThreadCpu => "cpu",
            Clock::Wall => "wall",
        };
        let mut p = Profile::new(
            vec![
                ("samples".into(), "count".into()),
                (kind.into(), "nanoseconds".into()),
            ],
            (kind.into(), "nanoseconds".into()),
            ns,
        );
        p.duration_nanos = self.duration.as_nanos() as i64;
        p.default_sample_type = Some(kind.into());
        let unlabelled = [ThreadSamples {
            tid: 0,
            name: String::new(),
            stacks: Vec::new(),
        }];
        let threads = if self.threads.is_empty() {
            &unlabelled[..]
        } else {
            &self.threads[..]
        };
        for t in threads {
            let (stacks, labels) = if self.threads.is_empty() {
                (&self.stacks, Vec::new())
            } else {
                (
                    &t.stacks,
                    vec![
                        ("thread_id".to_string(), t.tid.to_string()),
                        ("thread_name".to_string(), t.name.clone()),
                    ],
                )
            };
            for (frames, count) in stacks {
                let k = policy.apply(frames, classifier);
                let kept = k.slice(frames);
                p.samples.push(Sample {
                    pcs: kept.iter().map(|f| f.pc).collect(),
                    exact_leaf: kept.first().is_some_and(|f| f.is_exact()),
                    exact_frames: (1..kept.len())
                        .filter(|&i| kept[i].is_exact())
                        .map(|i| i as u32)
                        .collect(),
                    values: vec![*count as i64, *count as i64 * ns],
                    labels: labels.clone(),
                    // Cut by the policy's depth, or by the capture buffer (a full buffer's
                    // walk was cut; one that ended at exactly this depth is taken as cut), or
                    // the walk stopped short (`mark_cut_short`).
                    truncated: k.truncated
                        || frames.len() >= MAX_DEPTH
                        || frames
                            .last()
                            .is_some_and(|f| f.flags & Frame::CUT_SHORT != 0),
                });
            }
        }
        p.merge_identical();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that ended before its timer was made is no timer failure: its errno (EINVAL,
    /// ESRCH) is not kept; a live thread's is, and so is any other errno.
    #[test]
    fn an_ended_thread_s_timer_is_no_failure() {
        assert!(ended_thread_s_errno(true, libc::EINVAL));
        assert!(ended_thread_s_errno(true, libc::ESRCH));
        assert!(!ended_thread_s_errno(true, libc::EAGAIN));
        assert!(!ended_thread_s_errno(false, libc::ESRCH));
        assert!(!ended_thread_s_errno(false, libc::EINVAL));
    }

    #[test]
    fn a_timer_s_first_expiry_is_spread_over_the_period() {
        let p = Duration::from_millis(10);
        let draws: Vec<Duration> = (0..2000).map(|i| first_expiry(p, i % 7)).collect();
        assert!(draws.iter().all(|d| *d > Duration::ZERO && *d <= p));
        // Uniform: mean near half the period, and both ends of it reached.
        let mean = draws.iter().sum::<Duration>() / draws.len() as u32;
        assert!(mean > p * 4 / 10 && mean < p * 6 / 10, "{mean:?}");
        assert!(draws.iter().any(|d| *d < p / 10) && draws.iter().any(|d| *d > p * 9 / 10));
    }

    #[test]
    fn thread_cpu_clock_matches_glibc() {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: pthread_self is this live thread; valid out pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        assert_eq!(rc, 0);
        assert_eq!(thread_cpu_clock(gettid()), clock);
    }

    /// A CFI walk that stopped short of the root marks its outermost frame, and the profile
    /// shows that stack cut (`[truncated]` at its root end); a frame-record walk's early stop,
    /// a full buffer and a walk that reached its end are not marked.
    #[test]
    fn a_walk_that_stopped_short_is_a_cut_stack_in_the_profile() {
        use crate::StopReason;
        let frames = |n: u64| -> Vec<Frame> {
            (0..n)
                .map(|i| Frame {
                    pc: 0x40_0000 + i,
                    ..Frame::EMPTY
                })
                .collect()
        };
        let marked = |stop, by_cfi| {
            let mut f = frames(3);
            mark_cut_short(&mut f, stop, by_cfi);
            f[2].flags & Frame::CUT_SHORT != 0
        };
        assert!(marked(StopReason::NoUnwindInfo, true));
        assert!(marked(StopReason::ReadFailed, true));
        assert!(!marked(StopReason::NoUnwindInfo, false));
        assert!(!marked(StopReason::Misaligned, false));
        assert!(!marked(StopReason::End, true));
        assert!(!marked(StopReason::BufferFull, true));
        assert!(!marked(StopReason::MaxDepth, true));
        let mut cut = frames(3);
        mark_cut_short(&mut cut, StopReason::NoUnwindInfo, true);
        let whole = frames(3);
        let profile = CpuProfile {
            stacks: vec![(cut.clone(), 2), (whole.clone(), 1)],
            threads: Vec::new(),
            period: Duration::from_millis(10),
            clock: Clock::ThreadCpu,
            duration: Duration::from_secs(1),
            stats: Stats::default(),
        };
        let p = profile.to_profile(
            &crate::policy::ProfileKind::Cpu.policy(),
            &Classifier::new(),
        );
        let truncated: Vec<(bool, i64)> = p
            .samples
            .iter()
            .map(|s| (s.truncated, s.values[0]))
            .collect();
        assert!(
            truncated.contains(&(true, 2)) && truncated.contains(&(false, 1)),
            "{truncated:?}"
        );
    }

    fn lost_everything(stats: Stats) -> CpuProfile {
        CpuProfile {
            stacks: Vec::new(),
            threads: Vec::new(),
            period: Duration::from_millis(10),
            clock: Clock::ThreadCpu,
            duration: Duration::from_secs(1),
            stats: Stats {
                per_thread_cpu_timers: true,
                process_cpu: Duration::from_secs(1),
                ..stats
            },
        }
    }

    /// A profile that lost its samples to failed timers or to /proc says why, and does not
    /// blame short-lived threads; one that lost them otherwise does.
    #[test]
    fn lost_samples_are_put_down_to_their_cause() {
        let w = lost_everything(Stats {
            timer_errors: 3,
            timer_errno: Some(libc::EAGAIN),
            ..Stats::default()
        })
        .warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("errno 11") && w[0].contains("3 failures"),
            "{w:?}"
        );
        let w = lost_everything(Stats {
            proc_problem: Some(crate::threads::ProcProblem::Unreadable(libc::ENOENT)),
            ..Stats::default()
        })
        .warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("/proc/self is not readable"), "{w:?}");
        let w = lost_everything(Stats {
            proc_problem: Some(crate::threads::ProcProblem::OtherNamespace {
                proc_pid: 4000,
                pid: 1,
            }),
            ..Stats::default()
        })
        .warnings();
        assert!(w[0].contains("another PID namespace") && w[0].contains("--mount-proc"));
        let w = lost_everything(Stats::default()).warnings();
        assert!(w.len() == 1 && w[0].contains("lived shorter"), "{w:?}");
    }

    /// The CPU time a warning says is in the profile is the samples' periods, overruns
    /// included, at the profile's own period: a 1 kHz profile with 273 samples says 273 ms (it
    /// said ten times that), and a wall-clock profile compares no CPU time.
    #[test]
    fn warnings_count_the_profile_s_own_period() {
        let stats = Stats {
            sigprof_blocked: 2,
            recorded: 250,
            overruns: 23,
            ..Stats::default()
        };
        let mut p = lost_everything(stats);
        p.period = Duration::from_millis(1);
        let w = p.warnings();
        assert!(
            w.iter()
                .any(|w| w.contains("(273 ms of the 1000 ms the process used")),
            "{w:?}"
        );
        p.clock = Clock::Wall;
        let w = p.warnings();
        assert!(w.len() == 1 && !w[0].contains("ms of the"), "{w:?}");
    }

    #[test]
    fn period_of_frequency() {
        let cfg = |hz| Config {
            frequency_hz: hz,
            ..Config::default()
        };
        assert_eq!(period(&cfg(99)), Duration::from_nanos(10_101_010));
        assert_eq!(period(&cfg(1_000_000)), Duration::from_micros(1));
    }
}

//! Keeps the process's prepared CFI ([`crate::modules::unwinder`]) current while a profiler runs,
//! so that the profilers can capture in [`Mode::Hybrid`](crate::Mode::Hybrid) from a signal
//! handler or an allocator hook.
//!
//! # How
//! [`acquire`] prepares the tables of every loaded module (once; `dl_iterate_phdr` and file
//! parsing, so not in a handler) and starts a watcher thread (`unwind-modules`) that checks
//! every [`CHECK_EVERY`] whether the loader's `dlpi_adds`/`dlpi_subs` counters moved (a
//! `dlopen` or `dlclose`), and if so prepares the tables again ([`crate::modules::refresh`]).
//! The new tables are published through an atomic pointer: a handler reading the old ones keeps
//! reading them (they are never freed), the next one sees the new. [`release`] stops the watcher
//! when the last profiler stops.
//!
//! A profiler that runs code on the program's own threads anyway (the heap profiler, in the
//! allocator) keeps the tables current without a thread: [`acquire_polled`], then [`poll`] from
//! that code, which looks at the loader's counters at most every [`CHECK_EVERY`]. A thread of
//! our own would switch glibc's `malloc` to its multi-threaded paths for good (locked arena
//! operations, decided at the first `pthread_create`): a single-threaded program's
//! allocation-heavy code ran ~25% slower after the heap profiler's start only for that.
//!
//! # Frame pointers of the program itself
//! [`program_keeps_frame_records`] says whether this crate, as built into the program, keeps
//! frame records: `RUSTFLAGS` apply to every crate of a build, so when `unwind`'s own functions
//! have no frame record, neither has the code that depends on it, and the profilers' stacks
//! come from CFI (slower than frame records; the profilers say so once: see
//! [`warn_once_without_frame_records`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How often the watcher checks the loader's counters.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Profilers that need the tables (the watcher runs while this is non-zero).
static USERS: AtomicUsize = AtomicUsize::new(0);
/// The watcher thread, if one runs or is winding down.
static WATCHER: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);
/// `dlpi_adds << 32 | dlpi_subs` (truncated) when the tables were last prepared; `u64::MAX`
/// before the first.
static SEEN: AtomicU64 = AtomicU64::new(u64::MAX);
/// Refreshes done by the watcher (for tests and statistics).
static REFRESHES: AtomicU64 = AtomicU64::new(0);

/// The loader's `(dlpi_adds, dlpi_subs)` counters, packed. Takes the loader's lock (briefly):
/// not for signal handlers.
fn loader_generation() -> u64 {
    crate::live::loaded::generation()
}

/// Prepares the tables now if the loaded modules changed since they were last prepared (or
/// were never prepared). Returns whether it refreshed. Not async-signal-safe.
pub fn check() -> bool {
    refresh_if_changed(|| {
        crate::modules::refresh();
        true
    })
}

/// If the loaded modules changed since the tables were last prepared (or they never were),
/// prepares them with `refresh` (false: it did not, and nothing is recorded). Returns whether
/// it refreshed.
fn refresh_if_changed(refresh: impl FnOnce() -> bool) -> bool {
    let g = loader_generation();
    if SEEN.load(Ordering::Acquire) == g && crate::modules::unwinder().is_some() {
        return false;
    }
    if !refresh() {
        return false;
    }
    SEEN.store(g, Ordering::Release);
    REFRESHES.fetch_add(1, Ordering::Relaxed);
    true
}

/// How many times the tables were prepared through [`check`] in this process.
pub fn refreshes() -> u64 {
    REFRESHES.load(Ordering::Relaxed)
}

/// A profiler starts: prepares the tables (if the modules changed) and makes sure the watcher
/// runs. Pair with [`release`]. Not async-signal-safe.
pub fn acquire() {
    check();
    let mut w = WATCHER.lock().unwrap_or_else(|e| e.into_inner());
    USERS.fetch_add(1, Ordering::SeqCst);
    if w.is_some() {
        return; // it runs, and it only ends holding this lock with no user left
    }
    *w = spawn_own("unwind-modules", watch);
}

/// Starts one of the profilers' own threads, `name`, running `f` (the module watcher, the
/// CPU profiler's collector). With the profilers built in it marks itself theirs
/// ([`crate::heap::exclude_this_thread`]: neither profiler samples it) before this returns,
/// so that a CPU profiler's next look at the threads already leaves it out (else it would be
/// sampled until a later look). `None` when the thread could not be started.
///
/// The thread starts with every signal blocked (it inherits the mask this thread has while it
/// spawns it): a signal sent to the process is handled by one of the program's threads, never
/// by these. Else the kernel could pick them for a process-directed signal the program's
/// threads had blocked: a `SIGTERM` meant for a `sigwait`ing thread killed the process, and a
/// `SIGALRM` handler's CPU time ran on a thread the profiler leaves out (found by outside use
/// in the twenty-fifth round).
pub(crate) fn spawn_own(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Option<std::thread::JoinHandle<()>> {
    let (marked, is_marked) = std::sync::mpsc::sync_channel::<()>(1);
    // SAFETY: sigset_t is plain data (all zeroes is a valid value), filled before use.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; pthread_sigmask writes it.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sets; pthread_sigmask changes only this thread's mask, given back below
    // whatever the spawn did.
    let blocked = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) == 0
    };
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            #[cfg(feature = "profilers")]
            crate::heap::exclude_this_thread();
            let _ = marked.send(());
            drop(marked);
            f()
        })
        .ok();
    if blocked {
        // SAFETY: as above; `old` is the mask this thread had.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    }
    if spawned.is_some() {
        let _ = is_marked.recv();
    }
    spawned
}

/// The watcher's loop: checks the modules every [`CHECK_EVERY`] until no profiler uses them.
fn watch() {
    loop {
        std::thread::park_timeout(CHECK_EVERY);
        {
            let mut w = WATCHER.lock().unwrap_or_else(|e| e.into_inner());
            if USERS.load(Ordering::SeqCst) == 0 {
                *w = None; // detaches this thread, which ends now
                return;
            }
        }
        check();
    }
}

/// The watcher's lock held.
#[cfg(feature = "profilers")]
pub(crate) type WatcherGuard = std::sync::MutexGuard<'static, Option<std::thread::JoinHandle<()>>>;

/// The watcher's lock (the profilers' fork handlers take it around a `fork`).
#[cfg(feature = "profilers")]
pub(crate) fn watcher_lock() -> WatcherGuard {
    WATCHER.lock().unwrap_or_else(|e| e.into_inner())
}

/// After a `fork`, in the child, with the watcher's lock `held`: forgets the parent's watcher
/// thread (it does not run here: the next [`acquire`] starts one) and a [`poll`] that another
/// parent thread was in.
#[cfg(feature = "profilers")]
pub(crate) fn forget_parent_watcher(held: &mut WatcherGuard) {
    // Not dropped: its thread is not this process's, so there is nothing to detach or join.
    if let Some(handle) = held.take() {
        std::mem::forget(handle);
    }
    POLLING.store(false, Ordering::Release);
}

/// In a forked child: is the watcher's lock free?
#[cfg(all(test, feature = "profilers"))]
pub(crate) fn free_in_child_for_test() -> bool {
    WATCHER.try_lock().is_ok()
}

/// Profilers that keep the tables current through [`poll`] (no watcher thread).
static POLLERS: AtomicUsize = AtomicUsize::new(0);
/// When [`poll`] looks next (`CLOCK_MONOTONIC_COARSE`, nanoseconds).
static NEXT_POLL: AtomicU64 = AtomicU64::new(0);
/// A [`poll`] is looking (the others go on without waiting).
static POLLING: AtomicBool = AtomicBool::new(false);

/// A profiler starts that keeps the tables current through [`poll`], without a thread:
/// prepares the tables (if the modules changed). Pair with [`release_polled`]. Not
/// async-signal-safe.
pub fn acquire_polled() {
    check();
    POLLERS.fetch_add(1, Ordering::SeqCst);
}

/// A profiler that called [`acquire_polled`] stops.
pub fn release_polled() {
    let _ = POLLERS.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
}

fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given (a vDSO call: no lock, no
    // allocation).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// While a profiler holds [`acquire_polled`]: when [`CHECK_EVERY`] has passed since the last
/// look, looks at the loader's counters (`dl_iterate_phdr`, about a microsecond) and prepares
/// the tables again if a module was loaded or unloaded. Otherwise a load and a coarse clock
/// read (vDSO). Never waits for another thread's look or refresh: it skips instead. Returns
/// whether it refreshed.
///
/// Not async-signal-safe (`dl_iterate_phdr` takes the loader's lock; a refresh allocates):
/// call it from ordinary code, such as an allocator hook outside the inner allocator, never
/// from a signal handler. A refresh allocates through the global allocator: the caller keeps
/// its own hook from recursing (the heap profiler calls this inside its busy flag).
pub fn poll() -> bool {
    if POLLERS.load(Ordering::Relaxed) == 0 {
        return false;
    }
    let now = coarse_now_ns();
    if now < NEXT_POLL.load(Ordering::Relaxed) || POLLING.swap(true, Ordering::Acquire) {
        return false;
    }
    NEXT_POLL.store(
        now.saturating_add(CHECK_EVERY.as_nanos() as u64),
        Ordering::Relaxed,
    );
    let refreshed =
        refresh_if_changed(|| on_refresh_stack(|| crate::modules::try_refresh().is_some()));
    POLLING.store(false, Ordering::Release);
    refreshed
}

/// The size of the stack [`poll`]'s refreshes run on: 1 MiB of address space, of which a
/// refresh touches some tens of KiB (more in a debug build).
const REFRESH_STACK_SIZE: usize = 1 << 20;

/// The top of that stack: 0 until the first refresh maps it, `u64::MAX` when it could not be.
static REFRESH_STACK_TOP: AtomicU64 = AtomicU64::new(0);

/// Runs `refresh` on a stack of its own rather than the polling thread's: [`poll`] runs inside
/// whatever allocation a heap sample caught, on any thread, and preparing a module's CFI
/// (gimli's rows of 192 registers) takes tens of KiB of stack, which a thread of 32 KiB, or a
/// coroutine, does not have (a sampled allocation after a `dlopen` overflowed it). The stack
/// is mapped by the first refresh, registered, and kept; a capture on it crosses back to the
/// poller's stack by the system-stack transition. Only the thread holding `POLLING` gets
/// here, so the stack is its alone. Where it cannot be mapped, `refresh` runs in place.
fn on_refresh_stack(refresh: impl FnOnce() -> bool) -> bool {
    let mut top = REFRESH_STACK_TOP.load(Ordering::Acquire);
    let mut first = None;
    if top == 0 {
        top = match crate::system_stack::map_stack(REFRESH_STACK_SIZE) {
            Some(r) => {
                first = Some(r);
                r.hi
            }
            None => u64::MAX,
        };
        REFRESH_STACK_TOP.store(top, Ordering::Release);
    }
    if top == u64::MAX {
        return refresh();
    }
    let on_it = move || {
        if let Some(r) = first {
            // Registered from the stack itself: the registry's update takes more stack than
            // a small thread has (in a debug build). A capture meanwhile finds it through
            // /proc/self/maps, as it does when the registry is full.
            crate::system_stack::register_transition();
            // SAFETY: `r` is a mapping of this module's own, never unmapped.
            let _ = unsafe { crate::transition::register_stack(r) };
        }
        refresh()
    };
    // SAFETY: `top` is the page-aligned top of the mapped stack above, which only the thread
    // holding `POLLING` uses, and only inside this call.
    let out = unsafe { crate::system_stack::call_on(top, on_it) };
    out.unwrap_or_else(|payload| std::panic::resume_unwind(payload))
}

/// A profiler stops: the watcher ends when no profiler needs it any more (within
/// [`CHECK_EVERY`]; the thread is not waited for). The tables stay published.
pub fn release() {
    let prev = USERS.fetch_sub(1, Ordering::SeqCst);
    if prev == 1 {
        let w = WATCHER.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = w.as_ref() {
            h.thread().unpark();
        }
    } else if prev == 0 {
        USERS.store(0, Ordering::SeqCst); // unbalanced release: stay at zero
    }
}

/// Does `unwind`'s own code, as built into this program, keep frame records (built with
/// `-C force-frame-pointers=yes`)? Read from the prepared CFI of a function of this crate when
/// the tables are prepared (what the code does); before that (a frame-pointer-mode profiler
/// prepares none), from the flags the crate's build script saw (`None` only when the tables
/// do not cover this crate). Lock-free.
pub fn program_keeps_frame_records() -> Option<bool> {
    let Some(u) = crate::modules::unwinder() else {
        return Some(!cfg!(unwind_no_frame_pointers));
    };
    // A function of this crate that is never inlined (its address is taken) and makes calls,
    // so it has a frame record whenever frame pointers are on.
    let pc = crate::modules::refresh as fn() -> _ as usize as u64;
    let m = u.module(pc)?;
    m.rule(pc)?;
    Some(m.keeps_frame_record(pc))
}

/// Shared objects unloaded so far in this process (the loader's `dlpi_subs` counter,
/// truncated to 32 bits; `dl_iterate_phdr`, the loader's lock: not for signal handlers). A
/// profiler notes it at start and compares when it writes a profile: see
/// [`warn_unloaded`].
pub fn unloads() -> u32 {
    (crate::live::loaded::generation() & 0xffff_ffff) as u32
}

/// Prints a one-line warning to stderr when `n` shared objects were unloaded while a profile's
/// samples were taken: the profile is named with the modules loaded when it is written, so a
/// sample in an unloaded library is named after whatever is mapped at its address then
/// (nothing, or another library loaded there since). Returns whether it printed.
pub fn warn_unloaded(n: u32) -> bool {
    if n == 0 {
        return false;
    }
    eprintln!(
        "unwind: warning: {n} shared object(s) were unloaded (dlclose) while profiling: samples \
         in them are named after what is mapped at their addresses now (nothing, or a library \
         loaded there since)"
    );
    true
}

static WARNED: AtomicBool = AtomicBool::new(false);

/// Prints, once per process, a one-line warning to stderr if the program keeps no frame
/// records (see [`program_keeps_frame_records`]). The profilers call it when they turn their
/// samples into a profile. Returns whether it printed.
pub fn warn_once_without_frame_records() -> bool {
    warn_once_frame_records_missing(false)
}

/// [`warn_once_without_frame_records`] for samples walked by frame records only
/// (`frame_records_only`: [`crate::Mode::FramePointer`], a naive walk), whose stacks then end
/// at their first frame, or by CFI where records are missing (the other modes, slower).
pub fn warn_once_frame_records_missing(frame_records_only: bool) -> bool {
    if program_keeps_frame_records() != Some(false) || WARNED.swap(true, Ordering::Relaxed) {
        return false;
    }
    if frame_records_only {
        eprintln!(
            "unwind: warning: this program was built without frame pointers and its samples \
             were walked by frame records only (Mode::FramePointer): stacks end at their first \
             frame; use Mode::Hybrid (the default), or build with \
             RUSTFLAGS=\"-C force-frame-pointers=yes\""
        );
    } else {
        eprintln!(
            "unwind: warning: this program was built without frame pointers; stacks come from \
             DWARF CFI (slower per sample); build with \
             RUSTFLAGS=\"-C force-frame-pointers=yes\" for speed"
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepares_and_detects_this_build() {
        acquire();
        assert!(crate::modules::unwinder().is_some());
        // This crate's tests are built with the repository's .cargo/config.toml (frame
        // pointers on); a build without them (RUSTFLAGS overriding it) must say false.
        let fp = program_keeps_frame_records();
        assert!(fp.is_some());
        // A second check without loader changes does not refresh.
        let before = refreshes();
        assert!(!check());
        assert_eq!(refreshes(), before);
        release();
    }
}

//! The threads of this process and one CPU-profiler timer per thread, kept in step with them.
//!
//! The CPU profiler ([`crate::cpu`]) samples every thread by default, registered or not, as
//! Go's profiler does: its collector thread lists `/proc/self/task` every
//! [`SCAN_EVERY`] and gives each new thread its own timer, and deletes the timers of threads
//! that are gone, so exited threads leak nothing. [`Timers`] is that bookkeeping; creating and
//! deleting a timer is the caller's (closures), so it is testable without timers.
//!
//! Nothing here runs in a signal handler: listing a directory allocates.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// The profilers' own threads' ids (the CPU profiler's collector, the module watcher; 0: a
/// free slot), each cleared when its thread ends. The CPU profiler's per-thread timers leave
/// them out, as the heap profiler leaves out their allocations: with a wall clock their idle
/// waits were two thirds of a one-thread program's samples.
static OWN: [AtomicI32; 8] = [const { AtomicI32::new(0) }; 8];

/// Clears this thread's [`OWN`] slot when the thread ends (a thread id is reused).
struct OwnSlot(usize);

impl Drop for OwnSlot {
    fn drop(&mut self) {
        OWN[self.0].store(0, Ordering::Release);
    }
}

thread_local! {
    static OWN_SLOT: std::cell::RefCell<Option<OwnSlot>> = const { std::cell::RefCell::new(None) };
}

/// Marks the calling thread as one of the profilers' own ([`is_own`]) until it ends.
pub(crate) fn mark_own() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let _ = OWN_SLOT.try_with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_some() {
            return;
        }
        if let Some(i) = OWN.iter().position(|s| {
            s.compare_exchange(0, tid, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        }) {
            *slot = Some(OwnSlot(i));
        }
    });
}

/// Is thread `tid` one of the profilers' own ([`mark_own`])?
pub(crate) fn is_own(tid: libc::pid_t) -> bool {
    OWN.iter().any(|s| s.load(Ordering::Acquire) == tid)
}

/// How often the collector looks for new and exited threads. A thread that lives shorter than
/// this may never be sampled. The look is cheap ([`count_hint`] and the process's CPU time):
/// the thread list is read only when the number of threads changed, when the process used CPU
/// time its samples do not account for (a thread without a timer), or [`FULL_SCAN_EVERY`]
/// passed.
pub const SCAN_EVERY: Duration = Duration::from_millis(20);

/// How often the collector reads the thread list even though the number of threads did not
/// change (a thread ended and another began between two looks).
pub const FULL_SCAN_EVERY: Duration = Duration::from_millis(500);

/// A number that changes when the number of this process's threads changes: the link count of
/// `/proc/self/task` (2 + the threads). One `stat`, no allocation; a listing of the directory
/// costs several system calls and allocations (about 8 µs warm, 90 µs when the collector wakes
/// up cold, which every 50 ms was most of the collector's CPU time). `None` if it cannot be read.
pub fn count_hint() -> Option<u64> {
    // SAFETY: stat is plain data; the path is a NUL-terminated literal; `st` is written only.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::stat(c"/proc/self/task".as_ptr(), &mut st) } == 0).then_some(st.st_nlink)
}

/// Why `/proc/self` cannot tell the profilers about this process ([`proc_problem`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProcProblem {
    /// `/proc/self` cannot be read (errno of its `readlink`): `/proc` is not mounted (a mount
    /// namespace that unmounted it, a minimal container) or it is hidden from this process.
    Unreadable(i32),
    /// `/proc` is another PID namespace's (`unshare --pid --fork` without `--mount-proc`):
    /// `/proc/self` names this process by `proc_pid`, while `getpid` says `pid`, and its thread
    /// ids cannot be translated to this namespace's (no `NSpid:` line in
    /// `/proc/self/status`, a kernel before 4.1).
    OtherNamespace {
        /// This process's id in the namespace `/proc` belongs to.
        proc_pid: i32,
        /// This process's own id (`getpid`).
        pid: i32,
    },
}

impl std::fmt::Display for ProcProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ProcProblem::Unreadable(e) => write!(
                f,
                "/proc/self is not readable ({}; is /proc mounted?)",
                std::io::Error::from_raw_os_error(e)
            ),
            ProcProblem::OtherNamespace { proc_pid, pid } => write!(
                f,
                "/proc belongs to another PID namespace (/proc/self is process {proc_pid} \
                 there, this process is {pid} in its own) and this kernel cannot translate its \
                 thread ids (no NSpid line in /proc/self/status)"
            ),
        }
    }
}

/// How `/proc/self`'s ids relate to this process's own (`getpid`, `gettid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProcView {
    /// The same ids.
    Same,
    /// `/proc` is a parent PID namespace's: a thread's id there is not its `gettid`, which
    /// each task's `NSpid:` line gives (its last field: the id in the innermost namespace).
    Translated,
    /// Unusable.
    Problem(ProcProblem),
}

fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// The last field of a `status` file's `NSpid:` line: the id in the innermost PID namespace
/// (the one `getpid`/`gettid` and `timer_create` use). `None` without that line (kernels
/// before 4.1) or when it does not parse.
pub fn innermost_nspid(status: &str) -> Option<libc::pid_t> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// One `readlink("/proc/self")` (and, when it names another id than `getpid`, one read of
/// `/proc/self/status`).
fn proc_view() -> ProcView {
    let pid = getpid();
    let proc_pid = match crate::process::proc_self_pid() {
        Ok(p) => p,
        Err(e) => return ProcView::Problem(ProcProblem::Unreadable(e.raw_os_error().unwrap_or(0))),
    };
    if proc_pid == pid {
        return ProcView::Same;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if innermost_nspid(&status) == Some(pid) {
        ProcView::Translated
    } else {
        ProcView::Problem(ProcProblem::OtherNamespace { proc_pid, pid })
    }
}

/// Can the profilers read this process's threads and memory map in `/proc/self`? `None` when
/// they can (also when `/proc` is a parent PID namespace's whose ids they translate through
/// each task's `NSpid:` line). Cheap: one `readlink` (a profiler checks once, at its start).
pub fn proc_problem() -> Option<ProcProblem> {
    match proc_view() {
        ProcView::Problem(p) => Some(p),
        ProcView::Same | ProcView::Translated => None,
    }
}

/// A thread's id (`gettid`) and the name of its directory in `/proc/self/task` (the same,
/// unless `/proc` is a parent PID namespace's), kept by the last [`tasks`] that had to
/// translate them; empty when they are the same.
static TASK_DIRS: std::sync::Mutex<Vec<(libc::pid_t, libc::pid_t)>> =
    std::sync::Mutex::new(Vec::new());
/// Did the last [`tasks`] translate ids ([`TASK_DIRS`] holds them)?
static TRANSLATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The name of thread `tid`'s (its `gettid`) directory in `/proc/self/task`: `tid` itself
/// unless `/proc` is a parent PID namespace's; then as the last [`tasks`] found it (`None` for
/// a thread it did not see).
pub(crate) fn task_dir(tid: libc::pid_t) -> Option<libc::pid_t> {
    if !TRANSLATED.load(Ordering::Acquire) {
        return Some(tid);
    }
    let dirs = TASK_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    dirs.binary_search_by_key(&tid, |&(t, _)| t)
        .ok()
        .map(|i| dirs[i].1)
}

/// The ids (`gettid`'s, what `timer_create` takes) of this process's threads, from
/// `/proc/self/task` (sorted); translated through each task's `NSpid:` line when `/proc` is a
/// parent PID namespace's (its directory names are that namespace's ids). The error says why
/// the list cannot be had. Allocates.
pub fn tasks() -> Result<Vec<libc::pid_t>, ProcProblem> {
    let view = proc_view();
    if let ProcView::Problem(p) = view {
        return Err(p);
    }
    let dirs: Vec<libc::pid_t> = std::fs::read_dir("/proc/self/task")
        .map_err(|e| ProcProblem::Unreadable(e.raw_os_error().unwrap_or(0)))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut out = if view == ProcView::Translated {
        let mut pairs: Vec<(libc::pid_t, libc::pid_t)> = dirs
            .iter()
            .filter_map(|&d| {
                let status = std::fs::read_to_string(format!("/proc/self/task/{d}/status")).ok()?;
                Some((innermost_nspid(&status)?, d))
            })
            .collect();
        pairs.sort_unstable();
        let tids = pairs.iter().map(|p| p.0).collect();
        *TASK_DIRS.lock().unwrap_or_else(|e| e.into_inner()) = pairs;
        TRANSLATED.store(true, Ordering::Release);
        tids
    } else {
        TRANSLATED.store(false, Ordering::Release);
        dirs
    };
    out.sort_unstable();
    Ok(out)
}

/// [`tasks`], empty when they cannot be read.
pub fn list() -> Vec<libc::pid_t> {
    tasks().unwrap_or_default()
}

/// Timers of the threads that are not registered, by thread id.
#[derive(Debug, Default)]
pub struct Timers {
    timers: Vec<(libc::pid_t, libc::timer_t)>,
}

// SAFETY: timer_t is an opaque kernel timer id (a pointer-sized integer in glibc); any thread of
// the process may pass it to timer_settime/timer_gettime/timer_delete.
unsafe impl Send for Timers {}

/// What one [`Timers::sync`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Timers created for threads seen for the first time.
    pub created: u64,
    /// Timers deleted because their thread is gone (or died and its id was reused).
    pub deleted: u64,
    /// Timers that could not be created (the thread exited meanwhile, or `create` failed for
    /// another reason: the CPU profiler keeps its errno).
    pub errors: u64,
}

impl Timers {
    /// No timers.
    pub const fn new() -> Self {
        Timers { timers: Vec::new() }
    }

    /// Brings the timers in step with `live` (sorted thread ids): deletes those of threads no
    /// longer there or whose timer `dead` says is bound to a thread that ended (an id reused
    /// since), creates one for each live thread that has none and is not in `skip`.
    pub fn sync(
        &mut self,
        live: &[libc::pid_t],
        skip: impl Fn(libc::pid_t) -> bool,
        mut create: impl FnMut(libc::pid_t) -> Result<libc::timer_t, i32>,
        mut delete: impl FnMut(libc::timer_t),
        dead: impl Fn(libc::timer_t) -> bool,
    ) -> Synced {
        let mut done = Synced::default();
        self.timers.retain(|&(tid, t)| {
            let keep = live.binary_search(&tid).is_ok() && !skip(tid) && !dead(t);
            if !keep {
                delete(t);
                done.deleted += 1;
            }
            keep
        });
        for &tid in live {
            if skip(tid) || self.timers.iter().any(|&(t, _)| t == tid) {
                continue;
            }
            match create(tid) {
                Ok(t) => {
                    self.timers.push((tid, t));
                    done.created += 1;
                }
                Err(_) => done.errors += 1,
            }
        }
        done
    }

    /// Takes the timer of `tid` out (a thread that registers while it has one).
    pub fn take(&mut self, tid: libc::pid_t) -> Option<libc::timer_t> {
        let i = self.timers.iter().position(|&(t, _)| t == tid)?;
        Some(self.timers.swap_remove(i).1)
    }

    /// Adds a timer for `tid` (a thread that unregisters while the profiler runs).
    pub fn put(&mut self, tid: libc::pid_t, timer: libc::timer_t) {
        self.timers.push((tid, timer));
    }

    /// Deletes every timer.
    pub fn clear(&mut self, mut delete: impl FnMut(libc::timer_t)) {
        for (_, t) in self.timers.drain(..) {
            delete(t);
        }
    }

    /// How many threads have a timer here.
    pub fn len(&self) -> usize {
        self.timers.len()
    }

    /// No timer?
    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }
}

/// Is `timer`, a periodic CPU-time timer, disarmed? The kernel disarms a thread CPU-clock timer
/// when its thread ends (`posix_cpu_timer_get` reports a zero `it_value` once the task is gone),
/// so this tells a dead thread's timer from a live one even if the id was reused meanwhile.
pub(crate) fn cpu_timer_disarmed(timer: libc::timer_t) -> bool {
    // SAFETY: itimerspec is plain data.
    let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: `timer` is a live timer id of this process; valid out pointer.
    if unsafe { libc::timer_gettime(timer, &mut cur) } != 0 {
        return true;
    }
    cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_this_process_threads() {
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            // SAFETY: as above.
            tx.send(unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t)
                .unwrap();
            done_rx.recv().unwrap();
        });
        let other = rx.recv().unwrap();
        let l = list();
        assert!(l.contains(&me) && l.contains(&other), "{l:?}");
        done_tx.send(()).unwrap();
        h.join().unwrap();
        // The kernel removes the task soon after the join returns (the join wakes when the
        // thread's tid is cleared, before the task is released from /proc/self/task).
        let t0 = std::time::Instant::now();
        while list().contains(&other) {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(5),
                "thread {other} still listed 5 s after it was joined"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn the_innermost_namespace_s_id_is_the_last_nspid_field() {
        let status = "Name:\tx\nTgid:\t31729\nNSpid:\t31729\t3\nSigBlk:\t0\n";
        assert_eq!(innermost_nspid(status), Some(3));
        assert_eq!(innermost_nspid("NSpid:\t42\n"), Some(42));
        // Kernels before 4.1 have no such line; a garbled one is no id.
        assert_eq!(innermost_nspid("Name:\tx\nPid:\t7\n"), None);
        assert_eq!(innermost_nspid("NSpid:\t\n"), None);
        assert_eq!(innermost_nspid("NSpid:\t12\tx\n"), None);
    }

    #[test]
    fn this_process_s_proc_is_its_own() {
        assert_eq!(proc_problem(), None);
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
        assert!(tasks().unwrap().contains(&me));
        assert_eq!(task_dir(me), Some(me));
    }

    #[test]
    fn count_hint_counts_the_threads() {
        // Other tests start and end threads concurrently: only a lower bound is certain.
        assert!(count_hint().expect("stat /proc/self/task") >= 3);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let done_rx = std::sync::Arc::new(std::sync::Mutex::new(done_rx));
        let (up_tx, up_rx) = std::sync::mpsc::channel::<()>();
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let (rx, up) = (done_rx.clone(), up_tx.clone());
                std::thread::spawn(move || {
                    up.send(()).unwrap();
                    let _ = rx.lock().unwrap().recv();
                })
            })
            .collect();
        for _ in 0..8 {
            up_rx.recv().unwrap();
        }
        // 2 + this thread + the 8 (+ whatever else runs).
        let n = count_hint().unwrap();
        assert!(n >= 11, "{n}");
        for _ in 0..8 {
            done_tx.send(()).unwrap();
        }
        for h in hs {
            h.join().unwrap();
        }
    }

    #[test]
    fn sync_creates_deletes_and_skips() {
        let mut t = Timers::new();
        let fake = |n: usize| n as libc::timer_t;
        let mut deleted = Vec::new();
        let s = t.sync(
            &[1, 2, 3],
            |tid| tid == 2,
            |tid| Ok(fake(tid as usize * 10)),
            |_| {},
            |_| false,
        );
        assert_eq!((s.created, s.deleted, t.len()), (2, 0, 2));
        // 1 exits, 4 appears, 3's timer is dead (id reused): recreated.
        let s = t.sync(
            &[3, 4],
            |_| false,
            |tid| if tid == 4 { Err(3) } else { Ok(fake(99)) },
            |x| deleted.push(x as usize),
            |x| x == fake(30),
        );
        assert_eq!((s.created, s.deleted, s.errors), (1, 2, 1));
        deleted.sort_unstable();
        assert_eq!(deleted, [10, 30]);
        assert_eq!(t.take(3), Some(fake(99)));
        assert!(t.is_empty());
    }

    #[test]
    fn dead_thread_timer_is_disarmed() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t)
                .unwrap();
            done_rx.recv().unwrap();
        });
        let tid = rx.recv().unwrap();
        // A CPU-clock timer with no signal, on that thread (the clock id as in cpu.rs).
        let clock: libc::clockid_t = ((!tid) << 3) | 2 | 4;
        // SAFETY: sigevent is plain data.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_NONE;
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers.
        let rc = unsafe { libc::timer_create(clock, &mut sev, &mut timer) };
        assert_eq!(rc, 0);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            },
        };
        // SAFETY: live timer, valid spec.
        unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) };
        let alive_then = !cpu_timer_disarmed(timer);
        done_tx.send(()).unwrap();
        h.join().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(cpu_timer_disarmed(timer));
        assert!(alive_then);
        // SAFETY: deletes the timer made above, once.
        unsafe { libc::timer_delete(timer) };
    }
}

//! `fork` and the profilers' locks.
//!
//! The profilers keep a few process-wide locks: the CPU profiler's thread registry (its
//! collector takes it every 10 ms), the heap profiler's control lock (start, stop, reset,
//! snapshot) and the module watcher's (its thread takes it every 100 ms). A `fork` copies a
//! lock held by another thread as held, and no thread of the child would ever release it: a
//! child that then started a profiler of its own waited forever. The heap profiler's count of
//! allocator calls inside a table update has the same problem: a parent thread in the middle of
//! one left the child's [`crate::heap::reset`] waiting for a thread it does not have.
//!
//! So the first profiler start registers `pthread_atfork` handlers: before a fork the forking
//! thread takes the three locks, in a fixed order (no code of this crate holds one of them while
//! it waits for another, so the order cannot deadlock with them), and releases them after it, in
//! the parent and in the child. A fork therefore waits the few microseconds another thread holds
//! one of them. In the child, which has only the forking thread, the heap profiler's in-flight
//! count and the CPU profiler's count of SIGPROF handlers in flight (with the ring slots they
//! were writing) are reset to zero and the module watcher forgets the parent's watcher thread
//! (a profiler started in the child starts its own).
//!
//! Limits: a fork made from a signal handler that interrupted this same thread while it held
//! one of the locks (a profiler's start, stop, reset or snapshot) would wait for itself, as it
//! would for glibc's `malloc` locks; and a fork that interrupted this thread's own table update
//! from a signal handler leaves the child's in-flight count one too low.

use std::sync::{MutexGuard, Once};

static REGISTER: Once = Once::new();

/// The locks the forking thread holds across a fork, in the order they are taken.
struct Held {
    control: MutexGuard<'static, ()>,
    registry: MutexGuard<'static, super::cpu::Registry>,
    watcher: crate::module_watch::WatcherGuard,
}

thread_local! {
    /// [`Held`], from [`prepare`] to [`parent`] or [`child`] (the same thread runs them).
    static HELD: core::cell::RefCell<Option<Held>> = const { core::cell::RefCell::new(None) };
}

/// Registers the fork handlers (once per process). Called by each profiler's start; allocates
/// (glibc keeps the handlers in a list), so not from a signal handler or an allocator hook.
pub(crate) fn register() {
    REGISTER.call_once(|| {
        // SAFETY: the three handlers are `extern "C"` functions that live as long as the
        // process; they only lock and unlock this crate's mutexes and store to atomics.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    });
}

/// Before a fork, in the forking thread: take the locks (the heap profiler's control lock, the
/// CPU profiler's registry, the module watcher's), waiting for a thread that holds one.
extern "C" fn prepare() {
    let held = Held {
        control: super::heap::control(),
        registry: super::cpu::registry(),
        watcher: crate::module_watch::watcher_lock(),
    };
    let _ = HELD.try_with(|h| {
        if let Ok(mut h) = h.try_borrow_mut() {
            *h = Some(held);
        }
    });
}

/// After a fork, in the parent: release them.
extern "C" fn parent() {
    release(false);
}

/// After a fork, in the child: clear what the parent's other threads left, and release them.
extern "C" fn child() {
    release(true);
}

/// Releases the locks [`prepare`] took, in the reverse order; in the `child`, first forgets
/// the heap table updates, the SIGPROF handlers and the module watcher of the parent's other
/// threads.
fn release(child: bool) {
    let _ = HELD.try_with(|h| {
        if let Ok(mut h) = h.try_borrow_mut() {
            if let Some(mut held) = h.take() {
                if child {
                    crate::module_watch::forget_parent_watcher(&mut held.watcher);
                    super::heap::forget_in_flight();
                    super::cpu::forget_in_flight();
                    super::heap::reseed_after_fork();
                }
                drop(held.watcher);
                drop(held.registry);
                drop(held.control);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    /// Another thread holds each lock (and is inside a heap table update) when a fork begins,
    /// as the CPU profiler's collector, a snapshot or the module watcher may: the fork waits
    /// for the locks, and the child finds them all free and no table update in flight. Without
    /// the handlers, the child's locks stay held (its exit status then says which).
    #[test]
    fn a_fork_waits_for_the_profilers_locks_and_the_child_finds_them_free() {
        // Not beside a heap test: its `reset` would wait (holding the control lock this fork
        // waits for) for the table update the holder below keeps open until the fork is done.
        let _serial = super::super::heap::tests::LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        super::register();
        let (held, wait) = mpsc::channel();
        let (done, finish) = mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let a = super::super::heap::hold_for_test();
            let slot = super::super::cpu::enter_handler_for_test();
            let b = super::super::cpu::registry();
            let c = crate::module_watch::watcher_lock();
            held.send(()).unwrap();
            // Held while the main thread forks: its fork waits for this sleep to end.
            std::thread::sleep(Duration::from_millis(300));
            drop((a, b, c));
            // Still inside the table update after the locks are free: the child is forked
            // while this thread is in flight.
            let _ = finish.recv_timeout(Duration::from_secs(30));
            super::super::heap::leave_for_test();
            super::super::cpu::leave_handler_for_test(slot);
        });
        wait.recv().unwrap();
        // SAFETY: fork; the child only reads atomics, tries locks and leaves through _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = if !super::super::heap::free_in_child_for_test() {
                1
            } else if !super::super::cpu::free_in_child_for_test() {
                2
            } else if !crate::module_watch::free_in_child_for_test() {
                3
            } else {
                0
            };
            // SAFETY: ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        done.send(()).unwrap();
        holder.join().unwrap();
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child: status {status:#x} (1: heap control lock held or a table update in \
             flight, 2: CPU registry held, a SIGPROF handler in flight or a ring slot being \
             written, 3: module watcher held)"
        );
    }
}

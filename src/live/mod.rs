//! Live capture on the current thread (feature `live`: adds `libc`).
//!
//! [`capture`], [`capture_with`] and [`capture_from_ucontext`] walk this thread's stacks, bounded
//! by the stacks it is known to have; the [built-in switches](builtin), the
//! [system stack](system_stack) and [coroutine registration](coroutine) put the stack switches
//! this process makes into the transition table.

mod capture;
pub use capture::*;

pub mod builtin;
pub mod coroutine;
mod errno;
pub mod loaded;
pub mod system_stack;

/// The system's page size (`sysconf(_SC_PAGESIZE)`), cached after the first call; 4 KiB, 16 KiB
/// and 64 KiB pages all occur (aarch64 kernels choose). The crate's one source for it: guard
/// pages and stack sizes must be whole pages. Async-signal-safe (sysconf(_SC_PAGESIZE) reads a
/// value the kernel passed in the auxiliary vector).
pub(crate) fn page_size() -> usize {
    use core::sync::atomic::{AtomicUsize, Ordering};
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let p = PAGE.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let p = if p > 0 && (p as usize).is_power_of_two() {
        p as usize
    } else {
        4096
    };
    PAGE.store(p, Ordering::Relaxed);
    p
}

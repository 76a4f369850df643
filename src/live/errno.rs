//! Saving and restoring `errno` around the system calls the capture path makes.
//!
//! A capture may run inside a user's signal handler or inside `GlobalAlloc`, between a failing
//! call and the caller's read of `errno`; the few system calls capture makes (reading
//! `/proc/self/maps` once per thread) must not change what that caller sees.

/// The calling thread's `errno`, restored when dropped. Async-signal-safe.
pub(crate) struct Saved(libc::c_int);

impl Saved {
    #[inline]
    pub(crate) fn new() -> Self {
        // SAFETY: `errno_location` returns this thread's errno slot, always valid to read.
        Saved(unsafe { *errno_location() })
    }
}

impl Drop for Saved {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: as in `new`; this thread's errno slot is always valid to write.
        unsafe { *errno_location() = self.0 };
    }
}

#[cfg(any(target_os = "android", target_os = "openbsd", target_os = "netbsd"))]
unsafe fn errno_location() -> *mut libc::c_int {
    // SAFETY: no preconditions.
    unsafe { libc::__errno() }
}

#[cfg(not(any(target_os = "android", target_os = "openbsd", target_os = "netbsd")))]
unsafe fn errno_location() -> *mut libc::c_int {
    // SAFETY: no preconditions.
    unsafe { libc::__errno_location() }
}

//! A Go-style system stack for runtimes written in Rust.
//!
//! [`run`] switches the current thread to a dedicated per-thread stack, calls a closure there and
//! switches back, the way Go's `systemstack` runs scheduler and allocator work on `g0`. Work done
//! there (allocation, bookkeeping, profiling) cannot overflow the user's stack, and a capture taken
//! there still shows the user code that asked for it: the switch saves the user side's pc, sp and
//! fp where a [`Rule::SavedAt`] entry finds them, and registers that entry and the stack with the
//! [live registry](crate::transition).
//!
//! # The switch
//! On x86_64 the trampoline (`unwind_0_1_system_stack_switch`, `global_asm!`) pushes a frame
//! record on the user stack, writes three words at the top of the system stack and calls the
//! closure's shim with the stack pointer below them:
//!
//! ```text
//!  system stack top ─►┌──────────────┐
//!            cfa + 24 │ user fp      │  the caller's rbp
//!            cfa + 16 │ user pc      │  return address into the caller of the trampoline
//!            cfa + 8  │ user sp      │  the caller's rsp after that return
//!            cfa      │ 0            │ ◄─ rsp at the call = the callee's CFA
//!                     │ return addr  │  unwind_0_1_system_stack_return
//!                     │ saved rbp    │ ◄─ the callee's frame record; still links to the
//!                     │ ...          │    trampoline's record on the user stack
//! ```
//!
//! The entry is `SavedAt { base: Cfa, pc: 16, sp: Some(8), fp: 24 }` for the return address
//! `unwind_0_1_system_stack_return`. A naive frame-pointer walk follows rbp onto the user stack
//! and stops there with [`StopReason::NotMonotonic`](crate::StopReason::NotMonotonic); the table
//! turns that into a crossing.
//!
//! On aarch64 the callee's frame record need not sit right below its CFA (LLVM puts it below the
//! other callee-saved registers), so the saved words are found from the callee's saved frame
//! pointer instead: the trampoline's own record on the user stack holds `[fp]` = user fp,
//! `[fp + 8]` = user pc (x30) and `[fp + 16]` = user sp: `SavedAt { base: SavedFp, pc: 8,
//! sp: Some(16), fp: 0 }`.
//!
//! # Guarantees
//! - Nested calls (from code already on the system stack, or from a signal handler that
//!   interrupted it) run the closure in place, like Go's `noswitch`.
//! - A panic in the closure is caught on the system stack, carried across the switch and resumed
//!   on the user stack: unwinding never crosses the trampoline.
//! - The first [`run`] on a thread maps its stack (with a guard page below it) and registers it:
//!   that call allocates and takes a lock, so it must not happen in a signal handler (call
//!   [`map_thread_stack`] first on threads that might). Later calls make no system call and take no
//!   lock. A thread's stack is kept for its life and then reused by later threads, never
//!   unmapped, so a capture can never read a stack that went away.
//! - Overflowing the system stack hits the guard page (SIGSEGV), as overflowing any stack does.

use crate::memory::Range;
use crate::transition::{self, Id, Rule};
use core::cell::Cell;
use core::sync::atomic::{compiler_fence, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

/// The default size of a system stack: 256 KiB.
pub const DEFAULT_SIZE: usize = 256 * 1024;
/// The smallest size [`set_stack_size`] accepts: 16 KiB.
pub const MIN_SIZE: usize = 16 * 1024;

static SIZE: AtomicUsize = AtomicUsize::new(DEFAULT_SIZE);
static TRANSITION_ID: AtomicU16 = AtomicU16::new(0);
static REGISTER: Once = Once::new();
/// Stacks of threads that exited, kept mapped and registered for reuse.
static POOL: Mutex<Vec<Range>> = Mutex::new(Vec::new());

#[derive(Clone, Copy)]
struct State {
    /// Usable stack `[lo, hi)` (the guard page is below `lo`); empty until mapped.
    stack: Range,
    /// Is this thread running on its system stack now (a `run` between switch and return)?
    in_use: bool,
}

thread_local! {
    // Const-initialised and without Drop: reading it never allocates, so signal handlers may.
    static STATE: Cell<State> = const {
        Cell::new(State { stack: Range::new(0, 0), in_use: false })
    };
    // Returns the stack to the pool when the thread exits; touched only when the stack is mapped.
    static RETURN_ON_EXIT: ReturnOnExit = const { ReturnOnExit };
}

struct ReturnOnExit;

impl Drop for ReturnOnExit {
    fn drop(&mut self) {
        let st = STATE.with(|s| s.get());
        if !st.stack.is_empty() {
            STATE.with(|s| {
                s.set(State {
                    stack: Range::new(0, 0),
                    in_use: false,
                })
            });
            POOL.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(st.stack);
        }
    }
}

/// Sets the size of system stacks mapped from now on (rounded up to whole pages, at least
/// [`MIN_SIZE`]). Stacks already mapped keep their size.
pub fn set_stack_size(bytes: usize) {
    SIZE.store(bytes.max(MIN_SIZE), Ordering::Relaxed);
}

/// The size new system stacks get.
pub fn stack_size() -> usize {
    SIZE.load(Ordering::Relaxed)
}

/// Is the current thread running on its system stack? Async-signal-safe (a thread-local read
/// and a compare): inside a signal handler on an alternate stack this is `false`, even when the
/// handler interrupted code on the system stack.
#[inline]
pub fn is_on_system_stack() -> bool {
    let sp = crate::arch::native::current_regs().sp;
    STATE.with(|s| s.get().stack.contains(sp))
}

/// The current thread's system stack, once mapped. Async-signal-safe.
pub fn current_stack() -> Option<Range> {
    let r = STATE.with(|s| s.get().stack);
    (!r.is_empty()).then_some(r)
}

/// The id of the system-stack transition in the live registry, once registered (by the first
/// [`run`], [`map_thread_stack`] or [`crate::init`]). Frames found across the switch carry it.
pub fn transition_id() -> Option<Id> {
    match TRANSITION_ID.load(Ordering::Acquire) {
        0 => None,
        id => Some(id),
    }
}

/// Maps and registers the current thread's system stack now, so that a later [`run`] (from a
/// signal handler, say) needs no allocation. Not async-signal-safe. Panics if the stack cannot be
/// mapped (out of memory).
pub fn map_thread_stack() {
    register_transition();
    let _ = ensure_stack();
}

/// Registers the system-stack transition with the live registry (once per process).
pub(crate) fn register_transition() {
    REGISTER.call_once(|| {
        let ra = return_address();
        if let Ok(id) = transition::register(
            Range::new(ra, ra + 1),
            imp::RULE,
            crate::switches::SYSTEM_STACK.name,
        ) {
            TRANSITION_ID.store(id, Ordering::Release);
        }
    });
}

fn ensure_stack() -> Range {
    let st = STATE.with(|s| s.get());
    if !st.stack.is_empty() {
        return st.stack;
    }
    // The first system-stack use on this thread happens outside signal context (documented):
    // learn the thread's own stack now too, so captures from handlers need no system call.
    crate::live::init_thread();
    let size = round_to_pages(stack_size());
    let reused = {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let at = pool.iter().position(|r| r.hi - r.lo == size as u64);
        at.map(|i| pool.swap_remove(i))
    };
    let stack = match reused {
        Some(r) => r,
        None => {
            let r = map_stack(size).expect("unwind::system_stack: cannot map a system stack");
            // A full registry only means captures find this stack through /proc/self/maps.
            // SAFETY: `r` is our own mapping; system stacks are pooled, never unmapped.
            let _ = unsafe { transition::register_stack(r) };
            r
        }
    };
    STATE.with(|s| {
        s.set(State {
            stack,
            in_use: false,
        })
    });
    // During thread-local destruction this fails and the stack is simply not pooled again.
    let _ = RETURN_ON_EXIT.try_with(|_| {});
    stack
}

fn round_to_pages(n: usize) -> usize {
    let p = crate::live::page_size();
    n.div_ceil(p).saturating_mul(p)
}

/// Maps `size` bytes of stack plus a guard page below them; returns the usable range.
pub(crate) fn map_stack(size: usize) -> Option<Range> {
    let page = crate::live::page_size();
    let total = size.checked_add(page)?;
    // SAFETY: an anonymous private mapping at an address the kernel chooses; no existing memory
    // is affected.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: the first page of the mapping just created; nothing else refers to it.
    if unsafe { libc::mprotect(p, page, libc::PROT_NONE) } != 0 {
        // SAFETY: unmaps exactly the mapping created above, which nothing uses yet.
        unsafe { libc::munmap(p, total) };
        return None;
    }
    let lo = p as u64 + page as u64;
    Some(Range::new(lo, lo + size as u64))
}

struct Call<F, R> {
    f: Option<F>,
    out: Option<std::thread::Result<R>>,
}

/// The first function on the system stack: runs the closure and catches its panic.
///
/// # Safety
/// `p` must point to a live `Call<F, R>` (on the user stack) that nothing else accesses.
unsafe extern "C" fn on_system_stack<F: FnOnce() -> R, R>(p: *mut u8) {
    // SAFETY: the caller (`run`) passes a pointer to its own `Call<F, R>` and does not touch it
    // until the switch returns.
    let call = unsafe { &mut *p.cast::<Call<F, R>>() };
    let f = call.f.take();
    call.out = Some(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        move || match f {
            Some(f) => f(),
            None => unreachable!("system stack closure taken twice"),
        },
    )));
}

/// Runs `f` on the current thread's system stack and returns its result.
///
/// If the thread is already on its system stack (or a signal handler interrupted code there),
/// `f` runs in place. A panic in `f` propagates to the caller of `run` after the switch back.
///
/// The first call on a thread maps and registers the stack (allocation, a lock and system
/// calls, see the module docs; panics if the stack cannot be mapped); later calls do neither.
#[inline(never)]
pub fn run<R, F: FnOnce() -> R>(f: F) -> R {
    if STATE.with(|s| s.get().in_use) {
        return f();
    }
    register_transition();
    let stack = ensure_stack();
    STATE.with(|s| {
        s.set(State {
            stack,
            in_use: true,
        })
    });
    // A signal handler on this thread must see `in_use` before the switch and after the return.
    compiler_fence(Ordering::SeqCst);
    // SAFETY: `stack.hi` is the 16-byte-aligned top of this thread's mapped system stack, which
    // nothing else uses (`in_use` was false and this thread owns it).
    let out = unsafe { call_on(stack.hi, f) };
    compiler_fence(Ordering::SeqCst);
    STATE.with(|s| {
        s.set(State {
            stack,
            in_use: false,
        })
    });
    // A panic goes on only now, with the flag reset.
    out.unwrap_or_else(|payload| std::panic::resume_unwind(payload))
}

/// Calls `f` on the stack whose top is `top`, through the system-stack trampoline (so a capture
/// there crosses back to the caller's stack by the system-stack transition, which the caller
/// has registered, as it has the stack itself: [`register_transition`],
/// [`transition::register_stack`]), and returns its result, or the payload of its panic (caught
/// on that stack: unwinding never crosses the trampoline), for the caller to resume once its
/// own state is restored. No allocation, lock or system call of its own.
///
/// # Safety
/// `top` is the 16-byte-aligned top of a mapped, writable stack that nothing else uses until
/// this returns, with room for `f`.
pub(crate) unsafe fn call_on<R, F: FnOnce() -> R>(top: u64, f: F) -> std::thread::Result<R> {
    let mut call = Call::<F, R> {
        f: Some(f),
        out: None,
    };
    // SAFETY: `top` is as the caller guarantees. The shim gets a pointer to `call`, which lives
    // on this frame across the call, and never unwinds (it catches panics).
    unsafe {
        switch(
            (&mut call as *mut Call<F, R>).cast(),
            on_system_stack::<F, R>,
            top,
        )
    };
    match call.out {
        Some(out) => out,
        None => unreachable!("the system stack shim always stores a result"),
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use crate::transition::Rule;

    pub const RULE: Rule = crate::switches::SYSTEM_STACK_RULE_X86_64;

    // The trampolines live with their architectures (arch/*_switch.rs), dependency-free.
    include!("../../arch/x86_64_switch.rs");
}

#[cfg(target_arch = "aarch64")]
mod imp {
    use crate::transition::Rule;

    pub const RULE: Rule = crate::switches::SYSTEM_STACK_RULE_AARCH64;

    // The trampoline itself is dependency-free so the aarch64 smoke test (Debian's rustc 1.63
    // under qemu-aarch64) assembles and runs the very same code.
    include!("../../arch/aarch64_switch.rs");
}

// The trampoline (one `global_asm!` per architecture, in `imp`) and its return label.
extern "C" {
    fn unwind_0_1_system_stack_switch(arg: *mut u8, f: unsafe extern "C" fn(*mut u8), top: u64);
    static unwind_0_1_system_stack_return: [u8; 0];
}

/// The return address the system-stack transition is keyed on: the address right after the
/// trampoline's call.
pub fn return_address() -> u64 {
    // SAFETY: only the address of the label is taken; it is never read. (`unsafe` is
    // needed before Rust 1.82.)
    #[allow(unused_unsafe)]
    unsafe {
        core::ptr::addr_of!(unwind_0_1_system_stack_return) as u64
    }
}

/// # Safety
/// `top` must be the 16-byte-aligned top of a mapped stack nobody else uses; `f(arg)` must
/// not unwind.
#[inline(always)]
unsafe fn switch(arg: *mut u8, f: unsafe extern "C" fn(*mut u8), top: u64) {
    // SAFETY: forwarded from the caller.
    unsafe { unwind_0_1_system_stack_switch(arg, f, top) }
}

/// The transition rule this module registers (for offline tables and tests).
pub const RULE: Rule = imp::RULE;

#[cfg(test)]
mod tests {
    use super::*;

    /// The trampoline has a filter page of its own: it starts a 4 KiB page and its return
    /// label lies on it, and the crate's code around it is on other pages.
    #[test]
    fn trampoline_has_a_page_of_its_own() {
        let start = unwind_0_1_system_stack_switch as *const () as u64;
        let page = start & !0xfff;
        assert_eq!(start, page);
        assert_eq!(return_address() & !0xfff, page);
        for other in [
            run::<(), fn()> as *const () as u64,
            map_stack as *const () as u64,
            crate::capture as *const () as u64,
        ] {
            assert_ne!(other & !0xfff, page, "{other:#x}");
        }
    }

    #[test]
    fn runs_on_the_system_stack_and_back() {
        assert!(!is_on_system_stack());
        let (on, nested, stack) = run(|| {
            let on = is_on_system_stack();
            let nested = run(is_on_system_stack);
            (on, nested, current_stack())
        });
        assert!(on && nested);
        let stack = stack.unwrap();
        assert!(stack.hi - stack.lo >= MIN_SIZE as u64);
        assert_eq!(stack.hi % 16, 0);
        assert!(!is_on_system_stack());
        assert_eq!(transition::registered_stack(stack.lo), Some(stack));
        let t = transition::Transitions::lookup(&transition::Live, return_address()).unwrap();
        assert_eq!(Some(t.id), transition_id());
        assert_eq!(t.rule, RULE);
    }

    #[test]
    fn panics_cross_back() {
        let r = std::panic::catch_unwind(|| run(|| -> u32 { panic!("boom on the system stack") }));
        let msg = r.unwrap_err();
        assert_eq!(
            msg.downcast_ref::<&str>(),
            Some(&"boom on the system stack")
        );
        // The thread is usable afterwards, and the flag was reset.
        assert_eq!(run(|| 7 + 8), 15);
        assert!(!is_on_system_stack());
        assert!(!STATE.with(|s| s.get().in_use));
    }

    #[test]
    fn stacks_are_reused_after_threads_exit() {
        // Other tests run threads concurrently and may take a pooled stack first, so try a few
        // times: a thread that starts after another exited must at some point get its stack.
        let mut reused = false;
        for _ in 0..20 {
            let a = std::thread::spawn(|| run(current_stack))
                .join()
                .unwrap()
                .unwrap();
            let b = std::thread::spawn(|| run(current_stack))
                .join()
                .unwrap()
                .unwrap();
            // Pooled stacks stay registered (never unmapped).
            assert_eq!(transition::registered_stack(a.lo), Some(a));
            assert_eq!(transition::registered_stack(b.lo), Some(b));
            if a == b {
                reused = true;
                break;
            }
        }
        assert!(reused, "no thread ever got the stack of one that exited");
    }

    #[test]
    fn deep_recursion_fits() {
        fn depth(n: u32) -> u32 {
            let pad = [n as u8; 64];
            if n == 0 {
                std::hint::black_box(pad)[0] as u32
            } else {
                depth(n - 1) + std::hint::black_box(pad)[1] as u32 % 2
            }
        }
        assert_eq!(run(|| depth(500)), depth(500));
    }
}

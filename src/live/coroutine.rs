//! Registering coroutine stacks: live captures then know them without looking them up.
//!
//! A capture that starts on a coroutine stack, or crosses to one (a signal landing in a
//! coroutine, a coroutine that called `system_stack::run`, a coroutine's parent), finds an
//! unregistered stack in `/proc/self/maps` (raw reads, async-signal-safe), once per walk that
//! needs it. A registered stack is known at once, with no such read: register each stack while a
//! coroutine may run on it, and drop the registration before the stack is freed:
//!
//! ```
//! use corosensei::stack::{DefaultStack, Stack};
//! use corosensei::{Coroutine, CoroutineResult};
//!
//! // With feature `dwarf`, also the loaded modules' CFI, by which `capture` walks in a build
//! // without frame pointers (feature `live` alone needs frame pointers).
//! unwind::init();
//! let stack = DefaultStack::new(64 * 1024).unwrap();
//! // SAFETY: the stack, which the coroutine owns, outlives `reg`, which is dropped first.
//! let reg = unsafe {
//!     unwind::coroutine::register_stack(stack.limit().get() as u64, stack.base().get() as u64)
//! }
//! .unwrap();
//! let mut co = Coroutine::with_stack(stack, |_y: &corosensei::Yielder<(), ()>, ()| {
//!     let mut buf = [unwind::Frame::EMPTY; 64];
//!     unwind::capture(&mut buf)
//! });
//! let n = match co.resume(()) {
//!     CoroutineResult::Return(n) => n,
//!     CoroutineResult::Yield(()) => unreachable!(),
//! };
//! assert!(n > 0);
//! drop(reg);
//! drop(co); // frees the stack
//! ```
//!
//! (The stack is given to the coroutine by value, as corosensei 0.2 and 0.3 both take it; 0.3
//! no longer takes `&mut stack` for a coroutine that is not `'static`.)
//!
//! The crossing from a corosensei coroutine back to the code that resumed it is a built-in
//! transition that [`crate::init`] registers ([`crate::switches::COROSENSEI_RULE`]).

use crate::memory::Range;
use crate::transition::{self, Id, RegistryError};

/// A registered stack; unregistered when dropped. Drop it before freeing the stack's memory.
#[derive(Debug)]
#[must_use = "the stack is unregistered when this is dropped"]
pub struct RegisteredStack {
    id: Id,
    range: Range,
}

impl RegisteredStack {
    /// The registered range.
    pub fn range(&self) -> Range {
        self.range
    }

    /// The registry id.
    pub fn id(&self) -> Id {
        self.id
    }
}

impl Drop for RegisteredStack {
    fn drop(&mut self) {
        let _ = transition::unregister_stack(self.id);
    }
}

/// Registers the stack `[lo, hi)` (lowest usable address, stack base). Not async-signal-safe
/// (takes the registry's lock). Unreadable pages at the bottom of the range are left out (a
/// guard page: corosensei's `Stack::limit()` is the bottom of its mapping, guard page
/// included; up to 16 pages, one `process_vm_readv` probe each), so `limit()..base()` may be
/// passed as it is; [`RegisteredStack::range`] is what was registered.
///
/// # Safety
/// Live captures on any thread (also in signal handlers) read any word of `[lo, hi)` while it is
/// registered. The whole range must stay mapped and readable until the returned guard is
/// dropped, and the guard must be dropped (not leaked with `mem::forget`, not kept in a leaked
/// value) before the memory is unmapped or reused for something smaller. Dropping the guard
/// waits until captures on other threads that found the stack have finished their walks
/// ([`crate::transition::unregister_stack`]): the memory may be freed as soon as the drop
/// returns.
pub unsafe fn register_stack(lo: u64, hi: u64) -> Result<RegisteredStack, RegistryError> {
    // SAFETY: the caller keeps `[lo, hi)` mapped until the guard is dropped, and the guard's
    // drop unregisters it: the contract of `transition::register_stack`. (The range
    // registered is without a guard page at its bottom, see above.)
    let (id, range) = unsafe { transition::register_stack_range(Range::new(lo, hi)) }?;
    Ok(RegisteredStack { id, range })
}

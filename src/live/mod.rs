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
pub mod system_stack;

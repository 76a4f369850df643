//! The engine: frames, bounded memory, the walker, the transition table and rules, and the
//! policies that cut a trace for a profile kind.
//!
//! Builds with no cargo feature: `core`, `alloc`/`std` types only, plus `cfg-if`. Nothing here
//! makes a system call; the live, CFI and offline layers give the walker its [`Memory`]
//! (`memory::Memory`), its registers and, optionally, a CFI stepper.
//!
//! [`Memory`]: memory::Memory

pub mod frame;
pub mod memory;
pub mod policy;
pub mod runtime_names;
pub mod switches;
pub mod transition;
pub mod walk;

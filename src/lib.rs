//! `unwind`: frame-pointer stack capture that crosses stack switches.
//!
//! # What it does
//! [`capture`] walks the current thread's frame records (`[fp]` = caller fp, `[fp + 8]` =
//! return address) into a caller-provided buffer. Where a runtime switched stacks (a system
//! stack, a signal handler's alternate stack, a coroutine, a `psm` segment, Go's `systemstack`),
//! the [transition table](transition) says where the other side's registers are and the walk
//! continues there, so a sample taken on a system stack still shows the user code that caused it.
//! Every frame records which stack it was found on and how ([`Frame`]).
//!
//! # What you provide
//! For [`capture`]: code built with frame pointers (`-C force-frame-pointers=yes`; this crate's
//! `.cargo/config.toml` sets it, a dependent crate's build does not). Where a chain is missing the
//! walk stops cleanly and says why ([`StopReason`], from [`capture_with`]). The build script
//! notices a build without the flag (x86_64): there [`capture`] walks by CFI once [`init`] (with
//! the `dwarf` feature), `modules::refresh` or a profiler's start prepared it, and before that
//! returns nothing ([`StopReason::NoFramePointers`]) rather than frames that are not its
//! caller's. The profilers
//! ([`cpu`], [`heap`]) and `unwind stack` default to [`Mode::Hybrid`], which needs no frame
//! pointers: it follows the modules' CFI where there is no frame record ([`dwarf`],
//! [`module_watch`]).
//!
//! # What it guarantees
//! - The walk never panics, never allocates, takes no lock, and reads memory only through a
//!   [`Memory`] that checks every address: live, the thread's known stacks; offline, a core's
//!   segments. Every iteration writes a frame or stops, so it ends within the buffer's length.
//! - [`capture`], [`capture_with`] and [`capture_from_ucontext`] are async-signal-safe.
//!
//! # Example
//! ```
//! // Once, at start-up: the built-in switches (signal frames, ...) and the loaded modules' CFI
//! // (feature `dwarf`), which `capture` walks by in a build without frame pointers and a
//! // signal's capture where a frame keeps no record.
//! unwind::init();
//! let mut buf = [unwind::Frame::EMPTY; 64];
//! let n = unwind::capture(&mut buf);
//! assert!(n > 0);
//! for f in &buf[..n] {
//!     println!("{:#x} stack {} via {}", f.pc, f.stack, f.via);
//! }
//! ```
#![deny(missing_docs)]
#![warn(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[path = "../arch/mod.rs"]
pub mod arch;
pub mod engine;

#[cfg(feature = "dwarf")]
pub mod cfi;
#[cfg(feature = "live")]
pub mod live;
#[cfg(feature = "offline")]
pub mod offline;
#[cfg(feature = "profilers")]
pub mod profile;

// The layers' modules under the short paths users and the rest of the crate name them by.
#[cfg(feature = "dwarf")]
pub use cfi::{dwarf, module_watch, modules, safe_open};
pub use engine::{frame, memory, policy, runtime_names, switches, transition, walk};
#[cfg(feature = "live")]
pub use live::{builtin, coroutine, system_stack};
#[cfg(feature = "offline")]
pub use offline::{core_file, go_runtime, needed_modules, process, symbols, verify};
#[cfg(feature = "profilers")]
pub use profile::{cpu, heap, lines as pprof_lines, threads};

/// README.md's Rust snippets, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use arch::{Arch, ArchKind, Regs};
pub use frame::{Frame, FrameAddress, StopReason, Trace, Via};
pub use memory::{Image, Memory, Range, Region};
pub use walk::{Mode, Start, Walker};

#[cfg(feature = "live")]
pub use builtin::init;
#[cfg(feature = "live")]
pub use live::{
    capture, capture_from_ucontext, capture_from_ucontext_with, capture_with, init_thread, Options,
};

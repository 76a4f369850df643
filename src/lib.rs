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
//! For [`capture`]: code built with frame pointers (`-C force-frame-pointers=yes`; this
//! crate's `.cargo/config.toml` sets it, a dependent crate's build does not). Where a chain is
//! missing the walk stops cleanly and says why ([`StopReason`]). The profilers ([`cpu`],
//! [`heap`]) and `unwind stack` default to [`Mode::Hybrid`], which needs no frame pointers: it
//! follows the modules' CFI where there is no frame record ([`dwarf`], [`module_watch`]).
//!
//! # What it guarantees
//! - The walk never panics, never allocates, takes no lock, and reads memory only through a
//!   [`Memory`] that checks every address: live, the thread's known stacks; offline, a core's
//!   segments. Every iteration writes a frame or stops, so it ends within the buffer's length.
//! - [`capture`] and [`capture_from_ucontext`] are async-signal-safe.
//!
//! # Example
//! ```
//! let mut buf = [unwind::Frame::EMPTY; 64];
//! let n = unwind::capture(&mut buf);
//! assert!(n > 0);
//! for f in &buf[..n] {
//!     println!("{:#x} stack {} via {}", f.pc, f.stack, f.via);
//! }
//! ```
#![deny(missing_docs)]
#![warn(unsafe_op_in_unsafe_fn)]

#[path = "../arch/mod.rs"]
pub mod arch;
pub mod builtin;
pub mod core_file;
pub mod coroutine;
pub mod cpu;
pub mod demo;
pub mod dwarf;
pub mod frame;
pub mod heap;
pub mod live;
pub mod memory;
pub mod module_watch;
pub mod modules;
pub mod needed_modules;
pub mod offline;
pub mod policy;
pub mod profile;
pub mod symbols;
pub mod system_stack;
pub mod threads;
pub mod transition;
pub mod verify;
pub mod walk;

/// README.md's Rust snippets, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use arch::{Arch, ArchKind, Regs};
pub use builtin::init;
pub use frame::{Frame, StopReason, Trace, Via};
pub use live::{capture, capture_from_ucontext, capture_with, init_thread, Options};
pub use memory::{Image, Memory, Range, Region};
pub use walk::{Mode, Start, Walker};

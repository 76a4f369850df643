//! Post-mortem and out-of-process unwinding (feature `offline`): ELF core files, symbols, the
//! walk over every thread of a core (the engine behind `unwind stack`) and FP-vs-CFI
//! verification.

mod core_walk;
pub use core_walk::*;

pub mod core_file;
pub mod debug_files;
pub mod go_runtime;
mod memory_image;
pub mod needed_modules;
pub mod process;
pub mod symbols;
pub mod verify;

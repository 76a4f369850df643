//! Profilers (feature `profilers`): a SIGPROF CPU profiler, a sampling heap profiler, and the
//! profile writers (pprof, folded stacks, flame-graph SVG).

mod output;
pub use output::*;

pub mod cpu;
mod fork;
pub mod heap;
pub mod lines;
mod sigprof;
pub mod threads;

//! A small driver for instruction counting (`valgrind --tool=callgrind`) of the heap profiler's
//! unsampled path: the raw loop of `benches/heap.rs` (1000 allocations of mixed sizes, then
//! 1000 frees) straight through `System`, through the `Sampling` wrapper with the profiler
//! stopped, or sampling at the default rate (`HEAP_RATE=N`: another rate).
//!
//! `heap_driver <system|off|on> <iterations>`; compare callgrind's counts between the three
//! (`--toggle-collect='*heap_driver*raw*'`). `heap_driver paired <rounds>` times System against
//! the wrapper sampling in interleaved rounds (a quick timing, for a loaded machine).

use std::alloc::System;
use unwind::heap::{self, Sampling};

#[path = "../benches/common/raw_alloc.rs"]
mod raw_alloc;
use raw_alloc::raw;

#[global_allocator]
static ALLOC: Sampling = Sampling::new(System);

/// `HEAP_RATE` or the default rate (a huge one times the unsampled path alone; 1 the samples).
fn rate() -> u64 {
    std::env::var("HEAP_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(heap::DEFAULT_RATE)
}

/// Starts the profiler at [`rate`], in the capture mode `HEAP_MODE` names (`fp`, `dwarf`;
/// otherwise hybrid, as [`heap::start`]).
fn start() {
    let mode = match std::env::var("HEAP_MODE").as_deref() {
        Ok("fp") => unwind::Mode::FramePointer,
        Ok("dwarf") => unwind::Mode::Dwarf,
        _ => unwind::Mode::Hybrid,
    };
    heap::start_with_mode(rate(), mode);
}

/// Interleaved rounds of the loop on `System` and on the wrapper sampling at the default rate:
/// medians and the median ratio (a quick timing, not instruction counting). With `LIVE_MB=N`,
/// N MiB of 16 KiB blocks are allocated through the wrapper first and kept live meanwhile (a
/// large heap: its sampled blocks stay tracked, as a long-running program's do).
fn paired(rounds: usize, ptrs: &mut [*mut u8; 1000]) {
    start();
    let live_mb: usize = std::env::var("LIVE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let live: Vec<Vec<u8>> = (0..live_mb * 64)
        .map(|_| Vec::with_capacity(16 << 10))
        .collect();
    if live_mb > 0 {
        eprintln!(
            "live heap: {} blocks, {} of them tracked",
            live.len(),
            heap::stats().tracked
        );
    }
    let mut ratios: Vec<f64> = raw_alloc::interleaved(rounds, 50, &ALLOC, ptrs)
        .iter()
        .map(|(sys, on)| on / sys)
        .collect();
    drop(live);
    heap::stop();
    ratios.sort_by(|a, b| a.total_cmp(b));
    println!(
        "wrapper sampling / System: median {:+.2}% (quartiles {:+.2}% {:+.2}%), {} samples",
        (ratios[rounds / 2] - 1.0) * 100.0,
        (ratios[rounds / 4] - 1.0) * 100.0,
        (ratios[rounds * 3 / 4] - 1.0) * 100.0,
        heap::stats().samples
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).cloned().unwrap_or_else(|| "on".into());
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    // On a thread of its own: under valgrind the main stack is not labelled `[stack]`, and a
    // sample there would read `/proc/self/maps` each time; a thread's stack is found once.
    std::thread::spawn(move || run(&what, iters))
        .join()
        .unwrap();
}

fn run(what: &str, iters: usize) {
    let mut ptrs = [core::ptr::null_mut::<u8>(); 1000];
    if what == "paired" {
        paired(iters, &mut ptrs);
        return;
    }
    if what == "on" {
        start();
    }
    for _ in 0..iters {
        if what == "system" {
            raw(&System, &mut ptrs);
        } else {
            raw(&ALLOC, &mut ptrs);
        }
    }
    heap::stop();
    let st = heap::stats();
    eprintln!("{what}: {iters} x 1000 alloc+free, {} samples", st.samples);
}

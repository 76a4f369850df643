//! A small driver for instruction counting (`valgrind --tool=callgrind`) of the heap profiler's
//! unsampled path: the raw loop of `benches/heap.rs` (1000 allocations of mixed sizes, then
//! 1000 frees) straight through `System`, through the `Sampling` wrapper with the profiler
//! stopped, or sampling at the default rate (`HEAP_RATE=N`: another rate).
//!
//! `heap_driver <system|off|on> <iterations>`; compare callgrind's counts between the three
//! (`--toggle-collect='*heap_driver*raw*'`). `heap_driver paired <rounds>` times System against
//! the wrapper sampling in interleaved rounds (a quick timing, for a loaded machine).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use unwind::heap::{self, Sampling};

#[global_allocator]
static ALLOC: Sampling = Sampling::new(System);

/// 1000 allocations of mixed sizes, then 1000 frees, straight through `a`.
#[inline(never)]
fn raw<A: GlobalAlloc>(a: &A, ptrs: &mut [*mut u8; 1000]) {
    for (i, p) in ptrs.iter_mut().enumerate() {
        let size = 16 + (i * 37) % 4000;
        // SAFETY: a valid, non-zero-size layout.
        *p = unsafe { a.alloc(Layout::from_size_align(size, 8).unwrap()) };
    }
    for (i, p) in ptrs.iter().enumerate() {
        let size = 16 + (i * 37) % 4000;
        // SAFETY: `p` came from `a.alloc` with this layout just above and is freed once.
        unsafe { a.dealloc(*p, Layout::from_size_align(size, 8).unwrap()) };
    }
    black_box(ptrs);
}

/// `HEAP_RATE` or the default rate (a huge one times the unsampled path alone; 1 the samples).
fn rate() -> u64 {
    std::env::var("HEAP_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(heap::DEFAULT_RATE)
}

/// Interleaved rounds of the loop on `System` and on the wrapper sampling at the default rate:
/// medians and the median ratio (a quick timing, not instruction counting).
fn paired(rounds: usize, ptrs: &mut [*mut u8; 1000]) {
    heap::start(rate());
    let time = |wrapper: bool, ptrs: &mut [*mut u8; 1000]| {
        let t = std::time::Instant::now();
        for _ in 0..50 {
            if wrapper {
                raw(&ALLOC, ptrs);
            } else {
                raw(&System, ptrs);
            }
        }
        t.elapsed().as_nanos() as f64 / 50.0
    };
    let mut ratios = Vec::new();
    for r in 0..rounds {
        let (sys, on) = if r % 2 == 0 {
            let sys = time(false, ptrs);
            (sys, time(true, ptrs))
        } else {
            let on = time(true, ptrs);
            (time(false, ptrs), on)
        };
        ratios.push(on / sys);
    }
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
        heap::start(rate());
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

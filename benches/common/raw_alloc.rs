//! The heap bench's raw loop, shared with `examples/heap_driver.rs` (which counts its
//! instructions under callgrind), so both measure the same code.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

/// 1000 allocations of mixed sizes, then 1000 frees, straight through `a`. The callgrind
/// counts filter on this function's name (`--toggle-collect='*raw*'`).
#[inline(never)]
pub fn raw<A: GlobalAlloc>(a: &A, ptrs: &mut [*mut u8; 1000]) {
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

/// `rounds` interleaved rounds of `batch` loops of [`raw`] on `System` and on `wrapper`
/// (System first in even rounds, the wrapper first in odd ones): each round's ns per loop,
/// `(system, wrapper)`.
pub fn interleaved<A: GlobalAlloc>(
    rounds: usize,
    batch: usize,
    wrapper: &A,
    ptrs: &mut [*mut u8; 1000],
) -> Vec<(f64, f64)> {
    let mut time = |on_wrapper: bool| {
        let t = std::time::Instant::now();
        for _ in 0..batch {
            if on_wrapper {
                raw(wrapper, ptrs);
            } else {
                raw(&std::alloc::System, ptrs);
            }
        }
        t.elapsed().as_nanos() as f64 / batch as f64
    };
    (0..rounds)
        .map(|r| {
            if r % 2 == 0 {
                let sys = time(false);
                (sys, time(true))
            } else {
                let on = time(true);
                (time(false), on)
            }
        })
        .collect()
}

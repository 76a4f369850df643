//! The heap profiler on a thread with a small stack, after a `dlopen`: the sample that notices
//! the new module prepares the loaded modules' CFI again (`module_watch::poll`), inside the
//! sampled allocation. That took tens of KiB of the allocating thread's stack (gimli's rows),
//! and a 16 or 32 KiB thread died of a stack overflow (found by outside use); it runs on a stack of
//! the crate's own now. One test in this file: no other thread allocates or polls meanwhile.

use std::time::Duration;
use unwind::heap::{self, Sampling};

#[global_allocator]
static ALLOC: Sampling = Sampling::new(std::alloc::System);

/// Uses some of the thread's stack (`depth` frames of 64 bytes and more), then allocates 4 MB
/// in 400 blocks: several samples at the default rate.
#[inline(never)]
fn deep(depth: usize) -> usize {
    let a = [depth as u8; 64];
    std::hint::black_box(&a);
    if depth == 0 {
        (0..400)
            .map(|i| std::hint::black_box(vec![i as u8; 10_000 + i]).len())
            .sum()
    } else {
        deep(depth - 1) + a[1] as usize
    }
}

#[test]
fn a_sample_after_dlopen_on_a_small_stack_prepares_the_cfi_elsewhere() {
    heap::start(heap::DEFAULT_RATE);
    assert!(heap::is_installed());
    let before = unwind::module_watch::refreshes();
    // A library this test does not link: the next poll (at most every 100 ms, from a sample)
    // finds the loader's counters changed and refreshes.
    // SAFETY: dlopen of a system library with no constructors that matter here.
    let h = unsafe { libc::dlopen(c"libz.so.1".as_ptr(), libc::RTLD_NOW) };
    assert!(!h.is_null(), "dlopen(libz.so.1) failed");
    let worker = std::thread::Builder::new()
        // A thread std allows (16 KiB and up), with room for an optimised capture.
        .stack_size(if cfg!(debug_assertions) { 32 } else { 16 } * 1024)
        .spawn(|| {
            // Past the poll interval, so that this thread's first sample looks.
            std::thread::sleep(Duration::from_millis(300));
            let bytes = deep(if cfg!(debug_assertions) { 8 } else { 30 });
            (bytes, unwind::module_watch::refreshes())
        })
        .unwrap();
    let (bytes, after) = worker.join().expect("the small thread panicked");
    assert!(bytes >= 4_000_000);
    assert!(
        after > before,
        "no refresh on the small thread ({before} before, {after} after): the test tests nothing"
    );
    let snap = heap::snapshot();
    heap::stop();
    assert!(!snap.is_empty(), "nothing sampled");
    if cfg!(debug_assertions) {
        // An unoptimised capture wants more room than the thread has (`LowStack`, documented):
        // its samples have no frames to look at.
        return;
    }
    // The small thread's samples are there, with its frames.
    let sym = unwind::symbols::Symbolizer::for_current_process();
    let in_deep = snap.iter().any(|s| {
        s.pcs.iter().any(|&pc| {
            sym.lookup(pc - 1)
                .is_some_and(|f| f.name.contains("heap_small_stack::deep"))
        })
    });
    assert!(in_deep, "no sample in deep: {} stacks", snap.len());
}

//! The heap profiler in a single-threaded program (this test is a plain `main`, `harness =
//! false`: libtest would run it on a thread of its own):
//! - `heap::start` and its samples create no thread. One thread, ever, switches glibc's
//!   `malloc` to its multi-threaded paths for good (`__libc_single_threaded` drops to 0 at the
//!   first `pthread_create`): allocation-heavy code ran ~25% slower after `start` for that
//!   alone, when the profiler kept the modules' CFI current with a watcher thread.
//! - A library loaded after `start` still gets its CFI: a sample looks at the loader's counters
//!   at most every 100 ms (`module_watch::poll`) and prepares it.

mod common;

use std::hint::black_box;
use std::time::Duration;
use unwind::heap::{self, Sampling};

#[global_allocator]
static ALLOC: Sampling = Sampling::new(std::alloc::System);

extern "C" {
    /// glibc 2.32+: non-zero while the process has never created a thread.
    static __libc_single_threaded: libc::c_char;
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn single_threaded() -> bool {
    // SAFETY: a glibc variable, read once (only glibc writes it, at thread creation).
    unsafe { core::ptr::read_volatile(&raw const __libc_single_threaded) != 0 }
}

/// About `mb` MiB in 1000-byte blocks, freed as it goes: a few samples per MiB at the default
/// rate.
#[inline(never)]
fn allocate(mb: usize) -> usize {
    (0..mb * 1024)
        .map(|i| black_box(vec![i as u8; 1000]).len())
        .sum()
}

fn main() {
    assert_eq!(threads(), 1, "a test harness thread?");
    assert!(single_threaded());
    heap::start(heap::DEFAULT_RATE);
    black_box(allocate(16));
    let st = heap::stats();
    assert!(st.samples > 0, "{st:?}");
    assert_eq!(threads(), 1, "heap::start or a sample created a thread");
    assert!(single_threaded(), "glibc's malloc went multi-threaded");

    // A library loaded after start (a copy of libm, so that it is new to this process).
    let path = std::env::temp_dir().join(format!("unwind-single-{}.so", std::process::id()));
    let refreshes = unwind::module_watch::refreshes();
    // Never closed.
    common::tools::dlopen_libm_copy(&path);
    let has_lib = || {
        unwind::modules::unwinder().is_some_and(|u| {
            u.modules()
                .iter()
                .any(|m| m.name.contains("unwind-single-"))
        })
    };
    assert!(!has_lib());
    // The next sample 100 ms on looks.
    std::thread::sleep(Duration::from_millis(150));
    black_box(allocate(4));
    assert!(
        unwind::module_watch::refreshes() > refreshes,
        "no refresh after the dlopen"
    );
    assert!(has_lib(), "the new library's CFI is not prepared");
    assert_eq!(threads(), 1);
    assert!(single_threaded());
    // Hybrid walks the main thread down to `_start`; frame records alone stop in glibc's
    // start code, which keeps none: those samples are counted as stopped early.
    let st = heap::stats();
    assert_eq!(
        st.stopped_early, 0,
        "Hybrid reaches the thread's entry: {st:?}"
    );
    heap::set_mode(unwind::Mode::FramePointer);
    black_box(allocate(8));
    let fp = heap::stats();
    assert!(fp.samples > st.samples, "{fp:?}");
    if cfg!(target_arch = "x86_64") {
        assert!(
            fp.stopped_early > 0,
            "frame-record walks that end in glibc's start code: {fp:?}"
        );
    }
    heap::stop();
    println!("heap_single_thread: ok ({} samples)", heap::stats().samples);
}

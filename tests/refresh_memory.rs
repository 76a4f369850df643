//! `modules::refresh` in a long-running process: each refresh keeps the previous unwinder alive
//! (a signal handler may still read it), so it must not keep a fresh copy of every module's
//! tables each time. Refreshes reuse the tables of modules still loaded and prepare only new
//! ones. (Before: ~1 MB kept per refresh in this small test program, 7.6 ms each.)
//!
//! A counting global allocator measures what stays allocated; this file is its own test binary
//! and holds one test, so nothing else allocates meanwhile.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to System unchanged; only counts the bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded; `p` came from `alloc` with `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: forwarded; the caller upholds `realloc`'s contract.
        let q = unsafe { System.realloc(p, l, n) };
        if !q.is_null() {
            LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Bytes of CFI tables (rows and lookup pages) an unwinder's modules hold, roughly: the
/// memory one full re-preparation costs.
fn tables_of(u: &unwind::dwarf::Unwinder) -> usize {
    u.modules().iter().map(|m| m.len() * 16).sum()
}

#[test]
fn a_refresh_keeps_only_what_is_new() {
    let (first, failed) = unwind::modules::refresh();
    assert!(
        failed.is_empty() || first.modules().len() >= 2,
        "{failed:?}"
    );
    let n = first.modules().len();
    let full = tables_of(first);
    assert!(full > 64 << 10, "this program's tables: {full} bytes");

    let before = LIVE.load(Ordering::Relaxed);
    const REFRESHES: isize = 20;
    let mut last = first;
    for _ in 0..REFRESHES {
        last = unwind::modules::refresh().0;
    }
    let kept = (LIVE.load(Ordering::Relaxed) - before) / REFRESHES;
    // A few hundred bytes per module (the unwinder, its module list, names, the home bitmap's
    // copy), against the tables' size for a full re-preparation.
    assert!(
        (kept as usize) < full / 8 && kept < 32 << 10,
        "each refresh kept {kept} bytes; the tables are {full}"
    );
    assert_eq!(last.modules().len(), n);
    // Nothing loaded or unloaded since, every module prepared: the current unwinder stays,
    // and a refresh keeps nothing (each kept a new unwinder: ~1.6 KB per call in a program
    // that refreshed per request; twenty-third round).
    if failed.is_empty() {
        assert!(
            std::ptr::eq(last, first),
            "a new unwinder for the same modules"
        );
        assert!(kept < 512, "each refresh kept {kept} bytes");
    }

    // The newest unwinder still unwinds this thread: its frames match the first one's.
    let mut a = [unwind::Frame::EMPTY; 64];
    let mut b = [unwind::Frame::EMPTY; 64];
    let ta = unwind::dwarf::capture(&mut a, first, unwind::Mode::Dwarf);
    let tb = unwind::dwarf::capture(&mut b, last, unwind::Mode::Dwarf);
    assert!(ta.len > 3, "{ta:?}");
    // The two calls differ in their return address into this function only.
    let pcs = |f: &[unwind::Frame]| f.iter().skip(1).map(|f| f.pc).collect::<Vec<_>>();
    assert_eq!(pcs(&a[..ta.len]), pcs(&b[..tb.len]));

    // A library loaded since is prepared (and only it).
    let path = std::env::temp_dir().join(format!("unwind-refresh-{}.so", std::process::id()));
    // Never closed.
    common::tools::dlopen_libm_copy(&path);
    let (with_lib, _) = unwind::modules::refresh();
    assert_eq!(with_lib.modules().len(), n + 1);
    let name = path.to_string_lossy();
    let lib = with_lib
        .modules()
        .iter()
        .find(|m| m.name.contains(&*name) || m.name.contains("unwind-refresh"))
        .expect("the new library's table");
    assert!(!lib.is_empty());
    // The old unwinders are untouched (still alive, still without it).
    assert_eq!(first.modules().len(), n);
}

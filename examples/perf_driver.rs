//! A small driver for instruction counting (`valgrind --tool=callgrind`): runs one kind of
//! capture many times at the bottom of a recursion, so that per-call and per-frame costs can be
//! read from callgrind's inclusive counts. Not a benchmark (no timing).
//!
//! `perf_driver <what> <depth> <iterations>`, what: `capture`, `naive`, `transitions64`,
//! `hybrid`, `dwarf` (a buffer of `depth` frames, filled), `hybrid-whole` (a buffer of 256: the
//! whole stack, through the thread's root frames in libc, as a profiler's capture walks it).

use std::hint::black_box;
use unwind::{Frame, Range};

#[inline(never)]
fn recurse(n: usize, f: &mut dyn FnMut()) {
    if n == 0 {
        f();
    } else {
        recurse(n - 1, f);
        black_box(n);
    }
}

#[inline(never)]
fn capture_loop(buf: &mut [Frame], iters: usize) {
    for _ in 0..iters {
        black_box(unwind::capture(buf));
    }
}

#[inline(never)]
fn cfi_loop(buf: &mut [Frame], iters: usize, u: &unwind::dwarf::Unwinder, mode: unwind::Mode) {
    for _ in 0..iters {
        let t = unwind::dwarf::capture(buf, u, mode);
        // The recursion is deeper than the buffer: a short capture measures the wrong thing.
        assert_eq!(t.len, buf.len(), "{t:?}");
        black_box(t);
    }
}

#[inline(never)]
fn whole_loop(buf: &mut [Frame], iters: usize, u: &unwind::dwarf::Unwinder, depth: usize) {
    for _ in 0..iters {
        let t = unwind::dwarf::capture(buf, u, unwind::Mode::Hybrid);
        // The whole stack, to its end: deeper than the recursion, short of the buffer.
        assert!(t.len > depth && t.len < buf.len(), "{t:?}");
        black_box(t);
    }
}

#[inline(never)]
fn naive_loop(buf: &mut [Frame], iters: usize) {
    let opts = unwind::Options {
        naive: true,
        max_depth: 0,
    };
    for _ in 0..iters {
        black_box(unwind::capture_with(buf, opts));
    }
}

/// Under valgrind the main stack is not labelled `[stack]`: give the bounds of the mapping
/// holding sp directly (called at the bottom of the recursion, once the stack is as deep as it
/// gets).
fn set_stack() {
    let x = 0u64;
    let sp = &x as *const u64 as u64;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let (lo, rest) = line.split_once('-').unwrap();
        let hi = rest.split(' ').next().unwrap();
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).unwrap(),
            u64::from_str_radix(hi, 16).unwrap(),
        );
        if lo <= sp && sp < hi {
            // SAFETY: the mapping holding this thread's sp: its stack, mapped for its life.
            unsafe { unwind::live::set_thread_stack(Range::new(lo, hi)) };
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("capture");
    let depth: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let iters: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    unwind::init();
    let mut buf = vec![Frame::EMPTY; depth];
    let here = recurse as *const () as u64;
    if what == "transitions64" {
        for i in 0..64u64 {
            let off = (1 << 20) + (i / 2) * 0x3_7000 + 3;
            let a = if i % 2 == 0 { here - off } else { here + off };
            unwind::transition::register(
                Range::new(a, a + 1),
                unwind::transition::Rule::ContinueChain,
                "driver",
            )
            .unwrap();
        }
    }
    let empty = unwind::dwarf::Unwinder::new();
    if what == "hybrid-whole" {
        buf = vec![Frame::EMPTY; 256];
    }
    let u = if what.starts_with("hybrid") || what == "dwarf" {
        unwind::modules::refresh().0
    } else {
        &empty
    };
    recurse(depth + 8, &mut || {
        set_stack();
        match what {
            "naive" => naive_loop(&mut buf, iters),
            "hybrid" => cfi_loop(&mut buf, iters, u, unwind::Mode::Hybrid),
            "hybrid-whole" => whole_loop(&mut buf, iters, u, depth),
            "dwarf" => cfi_loop(&mut buf, iters, u, unwind::Mode::Dwarf),
            _ => capture_loop(&mut buf, iters),
        }
    });
}

//! What crossing stack switches costs, and what a registered-but-unmatched table costs.
//!
//! - "capture, 1 transition": on `unwind::system_stack` 16 frames deep, crossing to the caller.
//! - "capture, 3 transitions": the same inside `corosensei::on_stack` inside a corosensei
//!   coroutine (system stack → on_stack segment → coroutine → thread stack).
//! - "capture depth 32, 0 / 64 transitions": a plain capture 32 frames deep, first with an empty
//!   registry, then with 64 unmatched entries spread over this binary's code (so that every
//!   return address is inside the table's envelope: the worst case for the fast path), and then
//!   with only what `unwind::init()` registers.
//!
//! Prints the ratios at the end (medians from criterion's estimates).

mod common;

use corosensei::stack::{DefaultStack, Stack};
use criterion::{criterion_group, Criterion};
use std::hint::black_box;
use std::time::{Duration, Instant};
use unwind::transition::{self, Rule};
use unwind::{Frame, Range};

#[inline(never)]
fn recurse<R>(n: u32, f: &mut dyn FnMut() -> R) -> R {
    if n == 0 {
        f()
    } else {
        let r = recurse(n - 1, f);
        black_box(n);
        r
    }
}

fn capture_once(buf: &mut [Frame]) -> usize {
    black_box(unwind::capture(buf))
}

fn median_ns(group: &str, id: &str) -> Option<f64> {
    common::median_ns(&format!("{group}/{id}"))
}

fn plain(c: &mut Criterion) {
    let mut g = c.benchmark_group("plain");
    let mut buf = [Frame::EMPTY; 128];
    // Before anything is registered.
    g.bench_function("capture depth 32, 0 transitions", |b| {
        recurse(32, &mut || b.iter(|| capture_once(&mut buf)))
    });
    // 64 unmatched entries, 32 below and 32 above this code (1-8 MiB away): every frame's
    // return address is inside the envelope, so the page filter has to reject it.
    let here = recurse::<()> as *const () as u64;
    let ids: Vec<_> = (0..64u64)
        .map(|i| {
            let off = (1 << 20) + (i / 2) * 0x3_7000 + 3;
            let a = if i % 2 == 0 { here - off } else { here + off };
            transition::register(Range::new(a, a + 1), Rule::ContinueChain, "bench").unwrap()
        })
        .collect();
    g.bench_function("capture depth 32, 64 transitions", |b| {
        recurse(32, &mut || b.iter(|| capture_once(&mut buf)))
    });
    for id in ids {
        transition::unregister(id).unwrap();
    }
    unwind::init();
    g.bench_function("capture depth 32, init() builtins", |b| {
        recurse(32, &mut || b.iter(|| capture_once(&mut buf)))
    });
    g.finish();
}

fn crossings(c: &mut Criterion) {
    unwind::init();
    let mut g = c.benchmark_group("transitions");
    let mut buf = [Frame::EMPTY; 128];
    g.bench_function("capture, 1 transition", |b| {
        unwind::system_stack::run(|| recurse(16, &mut || b.iter(|| capture_once(&mut buf))))
    });
    // The coroutine's closure must be 'static: it owns its buffer and the on_stack segment, and
    // runs `iters` captures per resume, yielding the time they took.
    let mut co_stack = DefaultStack::new(1 << 20).unwrap();
    // SAFETY: `co_stack` outlives `_r1` (declared before it, dropped after).
    let _r1 = unsafe {
        unwind::coroutine::register_stack(
            co_stack.limit().get() as u64,
            co_stack.base().get() as u64,
        )
    }
    .unwrap();
    let mut seg = DefaultStack::new(1 << 20).unwrap();
    // SAFETY: `seg` outlives `_r2` (declared before it, dropped after).
    let _r2 = unsafe {
        unwind::coroutine::register_stack(seg.limit().get() as u64, seg.base().get() as u64)
    }
    .unwrap();
    let mut co = corosensei::Coroutine::with_stack(
        &mut co_stack,
        move |y: &corosensei::Yielder<u64, Duration>, mut iters: u64| {
            let mut buf = [Frame::EMPTY; 128];
            loop {
                let took = corosensei::on_stack(&mut seg, || {
                    unwind::system_stack::run(|| {
                        recurse(16, &mut || {
                            let t = Instant::now();
                            for _ in 0..iters {
                                capture_once(&mut buf);
                            }
                            t.elapsed()
                        })
                    })
                });
                iters = y.suspend(took);
            }
        },
    );
    // Check once that the captures really cross all three switches.
    {
        let probe_stack = DefaultStack::new(1 << 20).unwrap();
        // SAFETY: the stack moves into `probe`, which is declared after `_r` and so dropped
        // (freeing the stack) first: `_r` is dropped explicitly below, before `probe`.
        let _r = unsafe {
            unwind::coroutine::register_stack(
                probe_stack.limit().get() as u64,
                probe_stack.base().get() as u64,
            )
        };
        let mut probe = corosensei::Coroutine::with_stack(
            probe_stack,
            |_y: &corosensei::Yielder<(), ()>, ()| {
                let mut s2 = DefaultStack::new(1 << 20).unwrap();
                // SAFETY: `s2` outlives `_r` (declared before it, dropped after).
                let _r = unsafe {
                    unwind::coroutine::register_stack(
                        s2.limit().get() as u64,
                        s2.base().get() as u64,
                    )
                };
                corosensei::on_stack(&mut s2, || {
                    unwind::system_stack::run(|| {
                        let mut buf = [Frame::EMPTY; 128];
                        let n = unwind::capture(&mut buf);
                        buf[..n].iter().map(|f| f.stack).max().unwrap_or(0)
                    })
                })
            },
        );
        let r = match probe.resume(()) {
            corosensei::CoroutineResult::Return(r) => r,
            corosensei::CoroutineResult::Yield(()) => 0,
        };
        println!("probe: deepest stack index {r} (3 = crossed all three switches)");
        drop(_r);
        drop(probe);
    }
    g.bench_function("capture, 3 transitions", |b| {
        b.iter_custom(|iters| match co.resume(iters) {
            corosensei::CoroutineResult::Yield(d) => d,
            corosensei::CoroutineResult::Return(()) => unreachable!(),
        })
    });
    // A capture at depth 16 in a coroutine, its stack registered or not: an unregistered one is
    // found in /proc/self/maps by each capture and read through process_vm_readv.
    for registered in [true, false] {
        let mut stack = DefaultStack::new(1 << 20).unwrap();
        // SAFETY: `stack` outlives `_r` (the coroutine borrowing it is dropped first, below).
        let _r = registered.then(|| {
            unsafe {
                unwind::coroutine::register_stack(
                    stack.limit().get() as u64,
                    stack.base().get() as u64,
                )
            }
            .unwrap()
        });
        let mut co = corosensei::Coroutine::with_stack(
            &mut stack,
            move |y: &corosensei::Yielder<u64, Duration>, mut iters: u64| {
                let mut buf = [Frame::EMPTY; 128];
                loop {
                    let took = recurse(16, &mut || {
                        let t = Instant::now();
                        for _ in 0..iters {
                            capture_once(&mut buf);
                        }
                        t.elapsed()
                    });
                    iters = y.suspend(took);
                }
            },
        );
        let name = if registered {
            "capture depth 16 in a coroutine, registered"
        } else {
            "capture depth 16 in a coroutine, not registered"
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| match co.resume(iters) {
                corosensei::CoroutineResult::Yield(d) => d,
                corosensei::CoroutineResult::Return(()) => unreachable!(),
            })
        });
        drop(co);
    }
    g.finish();
}

fn report(c: &mut Criterion) {
    let _ = c;
    let get = median_ns;
    let none = get("plain", "capture depth 32, 0 transitions");
    let many = get("plain", "capture depth 32, 64 transitions");
    let init = get("plain", "capture depth 32, init() builtins");
    let one = get("transitions", "capture, 1 transition");
    let three = get("transitions", "capture, 3 transitions");
    println!("\nmedians (ns): depth32/none {none:?}  depth32/64 {many:?}  depth32/init {init:?}  1 transition {one:?}  3 transitions {three:?}");
    if let (Some(n), Some(m)) = (none, many) {
        println!("64 unmatched transitions / none: {:.3}", m / n);
    }
    if let (Some(n), Some(i)) = (none, init) {
        println!("init() builtins / none: {:.3}", i / n);
    }
    if let (Some(o), Some(t)) = (one, three) {
        println!("3 transitions / 1 transition: {:.3}", t / o);
    }
    let reg = get("transitions", "capture depth 16 in a coroutine, registered");
    let unreg = get(
        "transitions",
        "capture depth 16 in a coroutine, not registered",
    );
    println!("coroutine, depth 16 (ns): registered {reg:?}  not registered {unreg:?}");
    if let (Some(r), Some(u)) = (reg, unreg) {
        println!("not registered / registered: {:.1}", u / r);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = plain, crossings, report
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}

//! capture vs a naive frame-pointer loop vs framehop's frame-pointer path vs backtrace.
//!
//! Each measurement runs at the bottom of a real recursion of the given depth, so building the
//! recursion is not part of what is timed (it is built once per benchmark, not per iteration).
//! Every method walks exactly `depth` frames: the buffer (or the loop bound) has that size and
//! the recursion is deeper than that. Results: ns/frame per method and ratios, printed at the end.

mod common;

use criterion::{criterion_group, BenchmarkId, Criterion};
use std::hint::black_box;
use std::time::Duration;
use unwind::{Frame, Range};

const DEPTHS: [usize; 3] = [8, 32, 128];

/// Recurses `n` levels, then runs `f` at the bottom.
#[inline(never)]
fn recurse(n: usize, f: &mut dyn FnMut()) {
    if n == 0 {
        f();
    } else {
        recurse(n - 1, f);
        black_box(n);
    }
}

fn stack_bounds() -> Range {
    let x = 0u64;
    let addr = &x as *const u64 as u64;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let range = line.split(' ').next().unwrap();
        let (lo, hi) = range.split_once('-').unwrap();
        let lo = u64::from_str_radix(lo, 16).unwrap();
        let hi = u64::from_str_radix(hi, 16).unwrap();
        if lo <= addr && addr < hi {
            return Range::new(lo, hi);
        }
    }
    panic!("stack not found");
}

/// The practical limit: a bounded pointer-chasing loop with the same safety checks (bounds by
/// subtraction, alignment, strictly increasing fp) and nothing else.
#[inline(never)]
fn naive_walk(bounds: Range, out: &mut [u64]) -> usize {
    let mut fp = unwind::arch::native::current_regs().fp;
    let mut prev = 0u64;
    let mut n = 0;
    while n < out.len() {
        if !fp.is_multiple_of(8) || fp <= prev || fp < bounds.lo || bounds.hi - fp < 16 {
            break;
        }
        // SAFETY: fp lies inside this thread's stack mapping with 16 bytes to spare.
        let (next, ra) = unsafe {
            (
                core::ptr::read_volatile(fp as *const u64),
                core::ptr::read_volatile((fp + 8) as *const u64),
            )
        };
        if ra == 0 {
            break;
        }
        out[n] = ra;
        n += 1;
        prev = fp;
        fp = next;
    }
    n
}

#[cfg(target_arch = "x86_64")]
fn framehop_walk(
    bounds: Range,
    unwinder: &framehop::x86_64::UnwinderX86_64<Vec<u8>>,
    cache: &mut framehop::x86_64::CacheX86_64,
    out: &mut [u64],
) -> usize {
    use framehop::Unwinder;
    let r = unwind::arch::native::current_regs();
    let mut read = |addr: u64| -> Result<u64, ()> {
        if !addr.is_multiple_of(8) || addr < bounds.lo || bounds.hi - addr < 8 {
            return Err(());
        }
        // SAFETY: inside this thread's stack mapping.
        Ok(unsafe { core::ptr::read_volatile(addr as *const u64) })
    };
    let mut iter = unwinder.iter_frames(
        r.pc,
        framehop::x86_64::UnwindRegsX86_64::new(r.pc, r.sp, r.fp),
        cache,
        &mut read,
    );
    let mut n = 0;
    while n < out.len() {
        match iter.next() {
            Ok(Some(f)) => {
                out[n] = f.address();
                n += 1;
            }
            _ => break,
        }
    }
    n
}

fn backtrace_walk(out: &mut [u64]) -> usize {
    let mut n = 0;
    // SAFETY: no other thread is tracing concurrently in this benchmark.
    unsafe {
        backtrace::trace_unsynchronized(|f| {
            out[n] = f.ip() as u64;
            n += 1;
            n < out.len()
        })
    };
    n
}

fn bench(c: &mut Criterion) {
    let bounds = stack_bounds();
    // As a profiler would: the built-in transitions (signal frames, psm, corosensei, the system
    // stack) registered, the thread's stack known.
    unwind::init();
    unwind::init_thread();
    let mut g = c.benchmark_group("capture");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    for depth in DEPTHS {
        // Deeper than `depth` so every method walks exactly `depth` frames.
        let extra = depth + 8;
        g.bench_with_input(BenchmarkId::new("unwind", depth), &depth, |b, &d| {
            recurse(extra, &mut || {
                let mut buf = vec![Frame::EMPTY; d];
                b.iter(|| {
                    let n = unwind::capture(&mut buf);
                    assert_eq!(n, d);
                    black_box(n)
                })
            })
        });
        g.bench_with_input(BenchmarkId::new("naive", depth), &depth, |b, &d| {
            recurse(extra, &mut || {
                let mut buf = vec![0u64; d];
                b.iter(|| {
                    let n = naive_walk(bounds, &mut buf);
                    assert_eq!(n, d);
                    black_box(n)
                })
            })
        });
        #[cfg(target_arch = "x86_64")]
        g.bench_with_input(BenchmarkId::new("framehop_fp", depth), &depth, |b, &d| {
            let unwinder = framehop::x86_64::UnwinderX86_64::new();
            let mut cache = framehop::x86_64::CacheX86_64::new();
            recurse(extra, &mut || {
                let mut buf = vec![0u64; d];
                b.iter(|| {
                    let n = framehop_walk(bounds, &unwinder, &mut cache, &mut buf);
                    assert_eq!(n, d);
                    black_box(n)
                })
            })
        });
        g.bench_with_input(BenchmarkId::new("backtrace", depth), &depth, |b, &d| {
            recurse(extra, &mut || {
                let mut buf = vec![0u64; d];
                b.iter(|| {
                    let n = backtrace_walk(&mut buf);
                    assert_eq!(n, d);
                    black_box(n)
                })
            })
        });
    }
    g.finish();
}

/// Reads criterion's medians back and prints ns/frame and ratios.
fn summary() {
    let median =
        |method: &str, depth: usize| common::median_ns(&format!("capture/{method}/{depth}"));
    println!("\nsummary (median ns/frame; ratio = method / unwind):");
    println!(
        "{:>6} {:>10} {:>10} {:>12} {:>10}   {:>9} {:>12} {:>14}",
        "depth",
        "unwind",
        "naive",
        "framehop_fp",
        "backtrace",
        "unwind/naive",
        "framehop/unwind",
        "backtrace/unwind"
    );
    for d in DEPTHS {
        let per = |m: &str| median(m, d).map(|ns| ns / d as f64);
        let (u, n, f, b) = (
            per("unwind"),
            per("naive"),
            per("framehop_fp"),
            per("backtrace"),
        );
        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        println!(
            "{:>6} {:>10} {:>10} {:>12} {:>10}   {:>9} {:>12} {:>14}",
            d,
            fmt(u),
            fmt(n),
            fmt(f),
            fmt(b),
            ratio(u, n),
            ratio(f, u),
            ratio(b, u)
        );
    }
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    for (what, id) in [("wall", "capture32"), ("thread CPU", "capture32_cpu")] {
        let per = |t: usize| common::median_ns(&format!("threads/{id}/{t}"));
        if let (Some(one), Some(all)) = (per(1), per(n)) {
            println!(
                "threads, depth 32, {what} time: 1 thread {one:.1} ns/capture, {n} threads \
                 {all:.1} ns/capture each; each of {n} keeps {:.0}% of the one-thread rate",
                100.0 * one / all
            );
        }
    }
}

/// This thread's CPU time (CLOCK_THREAD_CPUTIME_ID): time it ran, whatever else ran.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Captures 32 frames deep on `threads` threads at once; returns the time of the slowest
/// thread for `iters` captures each (so the time per capture stays flat when threads scale):
/// wall time, or with `cpu` each thread's own CPU time (on a shared machine where the threads
/// do not always get a core each, wall time also counts waiting for one; CPU time still counts
/// what sharing costs, such as cache lines written by several threads).
fn concurrent(threads: usize, iters: u64, cpu: bool) -> Duration {
    let now = move || {
        if cpu {
            thread_cpu()
        } else {
            // Wall time since an arbitrary start, as a Duration.
            static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            START.get_or_init(std::time::Instant::now).elapsed()
        }
    };
    let barrier = std::sync::Barrier::new(threads);
    let times: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    unwind::init_thread();
                    let mut out = Duration::ZERO;
                    recurse(40, &mut || {
                        let mut buf = [Frame::EMPTY; 32];
                        barrier.wait();
                        let t = now();
                        for _ in 0..iters {
                            let n = unwind::capture(&mut buf);
                            assert_eq!(n, 32);
                            black_box(n);
                        }
                        out = now().saturating_sub(t);
                    });
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    times.into_iter().max().unwrap_or_default()
}

/// 1 thread vs N threads (N = cores) capturing at once, depth 32: the registry and every
/// other structure a capture reads are shared, so a capture that wrote shared memory would
/// slow down as threads are added.
fn threads(c: &mut Criterion) {
    unwind::init();
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut g = c.benchmark_group("threads");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    for t in [1, n] {
        g.bench_with_input(BenchmarkId::new("capture32", t), &t, |b, &t| {
            b.iter_custom(|iters| concurrent(t, iters, false))
        });
        g.bench_with_input(BenchmarkId::new("capture32_cpu", t), &t, |b, &t| {
            b.iter_custom(|iters| concurrent(t, iters, true))
        });
    }
    g.finish();
}

/// 1 thread against N threads in interleaved rounds (the order alternating), so that a
/// machine whose speed drifts between criterion's separate 1-thread and N-thread runs does
/// not move the ratio: per round, each of N threads' rate against the one thread's; the
/// median and quartiles of `rounds` rounds, by wall time and by thread CPU time.
fn paired_threads(rounds: usize, iters: u64) {
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    for (what, cpu) in [("wall", false), ("thread CPU", true)] {
        let mut kept: Vec<f64> = (0..rounds)
            .map(|r| {
                let (one, all) = if r % 2 == 0 {
                    let one = concurrent(1, iters, cpu);
                    (one, concurrent(n, iters, cpu))
                } else {
                    let all = concurrent(n, iters, cpu);
                    (concurrent(1, iters, cpu), all)
                };
                one.as_secs_f64() / all.as_secs_f64().max(1e-12)
            })
            .collect();
        kept.sort_by(|a, b| a.total_cmp(b));
        println!(
            "threads, depth 32, paired rounds ({what} time): each of {n} keeps {:.0}% of the \
             one-thread rate (median of {rounds} rounds; quartiles {:.0}% {:.0}%)",
            100.0 * kept[rounds / 2],
            100.0 * kept[rounds / 4],
            100.0 * kept[3 * rounds / 4]
        );
    }
}

criterion_group!(benches, bench, threads);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
    paired_depths();
    paired_threads(41, 200_000);
}

/// `capture` against the bare loop and framehop against `capture`, in interleaved rounds at
/// the bottom of the same recursion ([`common::paired_ratio`]).
fn paired_depths() {
    let bounds = stack_bounds();
    println!("\npaired rounds (41 rounds, ratio of time per capture):");
    for depth in DEPTHS {
        recurse(depth + 8, &mut || {
            let mut buf = vec![Frame::EMPTY; depth];
            // The other walkers' output at the same offset in its page as `buf`.
            let (mut words, at) = common::words_like(buf.as_ptr(), depth);
            let raw = &mut words[at..at + depth];
            let iters = 40_000 / depth as u64 * 8;
            let unwind = |buf: &mut [Frame]| assert_eq!(black_box(unwind::capture(buf)), depth);
            let bare = common::paired_ratio(
                41,
                iters,
                || unwind(&mut buf),
                || assert_eq!(black_box(naive_walk(bounds, raw)), depth),
            );
            #[cfg(target_arch = "x86_64")]
            let framehop = {
                let unwinder = framehop::x86_64::UnwinderX86_64::new();
                let mut cache = framehop::x86_64::CacheX86_64::new();
                common::paired_words(
                    buf.as_ptr(),
                    depth,
                    iters / 4,
                    |out| framehop_walk(bounds, &unwinder, &mut cache, out),
                    || unwind(&mut buf),
                )
            };
            #[cfg(not(target_arch = "x86_64"))]
            let framehop = (f64::NAN, f64::NAN, f64::NAN);
            println!(
                "depth {depth:>3}: unwind/naive {}; framehop/unwind {}",
                common::fmt_ratio(bare),
                common::fmt_ratio(framehop)
            );
        });
    }
}

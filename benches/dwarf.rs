//! DWARF and Hybrid capture vs frame pointers (`unwind::capture`) vs framehop with the
//! executable's CFI loaded vs `backtrace::trace_unsynchronized`, at depths 8/32/128.
//!
//! As in benches/capture.rs, each measurement runs at the bottom of a real recursion deeper
//! than the depth, built once per benchmark; every method walks exactly `depth` frames. The
//! stack is frame-pointer-complete (this crate and its dependencies are built with frame
//! pointers), so Hybrid follows frame records and FP vs Hybrid measures Hybrid's overhead.
//! Results: ns/frame and ratios, printed at the end of the same run.

mod common;

use criterion::{criterion_group, BenchmarkId, Criterion};
use std::hint::black_box;
use std::time::Duration;
use unwind::{Frame, Mode, Range};

const DEPTHS: [usize; 3] = [8, 32, 128];

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

#[cfg(target_arch = "x86_64")]
type Fh = framehop::x86_64::UnwinderX86_64<Vec<u8>>;

/// framehop with the executable's `.text`, `.eh_frame` and `.eh_frame_hdr` loaded (the
/// recursion and everything up to the benchmark harness is in the executable).
#[cfg(target_arch = "x86_64")]
fn framehop_with_exe() -> Fh {
    use framehop::Unwinder;
    use object::{Object, ObjectSection};
    let m = unwind::modules::loaded_modules();
    let exe = &m[0];
    let data = std::fs::read("/proc/self/exe").unwrap();
    let file = object::File::parse(&*data).unwrap();
    let sec = |n: &str| {
        let s = file.section_by_name(n).unwrap();
        (
            s.address()..s.address() + s.size(),
            s.data().unwrap().to_vec(),
        )
    };
    let (text_svma, text) = sec(".text");
    let (eh_svma, eh) = sec(".eh_frame");
    let (hdr_svma, hdr) = sec(".eh_frame_hdr");
    let info = framehop::ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: Some(text_svma.clone()),
        text: Some(text),
        eh_frame_svma: Some(eh_svma),
        eh_frame: Some(eh),
        eh_frame_hdr_svma: Some(hdr_svma),
        eh_frame_hdr: Some(hdr),
        ..Default::default()
    };
    let lo = exe.loads.iter().map(|l| l.0).min().unwrap();
    let hi = exe.loads.iter().map(|l| l.0 + l.1).max().unwrap();
    let module = framehop::Module::new("exe".into(), lo + exe.bias..hi + exe.bias, exe.bias, info);
    let mut u = Fh::new();
    u.add_module(module);
    u
}

#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn framehop_walk(
    bounds: Range,
    unwinder: &Fh,
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
    unwind::init();
    unwind::init_thread();
    let (u, failed) = unwind::modules::refresh();
    assert!(u.modules().len() >= 2, "{failed:?}");
    let mut g = c.benchmark_group("dwarf");
    g.warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(1));
    g.sample_size(30);
    for depth in DEPTHS {
        let extra = depth + 8;
        g.bench_with_input(BenchmarkId::new("fp", depth), &depth, |b, &d| {
            recurse(extra, &mut || {
                let mut buf = vec![Frame::EMPTY; d];
                b.iter(|| {
                    let n = unwind::capture(&mut buf);
                    assert_eq!(n, d);
                    black_box(n)
                })
            })
        });
        for (name, mode) in [("dwarf", Mode::Dwarf), ("hybrid", Mode::Hybrid)] {
            g.bench_with_input(BenchmarkId::new(name, depth), &depth, |b, &d| {
                recurse(extra, &mut || {
                    let mut buf = vec![Frame::EMPTY; d];
                    b.iter(|| {
                        let t = unwind::dwarf::capture(&mut buf, u, mode);
                        assert_eq!(t.len, d, "{name}: {:?}", t.stop);
                        black_box(t.len)
                    })
                })
            });
        }
        #[cfg(target_arch = "x86_64")]
        g.bench_with_input(BenchmarkId::new("framehop_cfi", depth), &depth, |b, &d| {
            let unwinder = framehop_with_exe();
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
    let median = |method: &str, depth: usize| common::median_ns(&format!("dwarf/{method}/{depth}"));
    println!("\nsummary (median ns/frame):");
    println!(
        "{:>6} {:>8} {:>8} {:>8} {:>12} {:>10} | {:>11} {:>14} {:>16}",
        "depth",
        "fp",
        "hybrid",
        "dwarf",
        "framehop_cfi",
        "backtrace",
        "hybrid/fp",
        "framehop/dwarf",
        "backtrace/dwarf"
    );
    for d in DEPTHS {
        let per = |m: &str| median(m, d).map(|ns| ns / d as f64);
        let (fp, hy, dw, fh, bt) = (
            per("fp"),
            per("hybrid"),
            per("dwarf"),
            per("framehop_cfi"),
            per("backtrace"),
        );
        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        println!(
            "{:>6} {:>8} {:>8} {:>8} {:>12} {:>10} | {:>11} {:>14} {:>16}",
            d,
            fmt(fp),
            fmt(hy),
            fmt(dw),
            fmt(fh),
            fmt(bt),
            ratio(hy, fp),
            ratio(fh, dw),
            ratio(bt, dw)
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
    paired_depths();
}

/// Hybrid against FP and framehop's CFI path against Dwarf, in interleaved rounds at the
/// bottom of the same recursion ([`common::paired_ratio`]).
fn paired_depths() {
    let bounds = stack_bounds();
    let (u, _) = unwind::modules::refresh();
    println!("\npaired rounds (41 rounds, ratio of time per capture):");
    for depth in DEPTHS {
        recurse(depth + 8, &mut || {
            let buf = vec![Frame::EMPTY; depth];
            let iters = 40_000 / depth as u64 * 8;
            let cfi = |buf: &mut [Frame], mode: Mode| {
                let t = unwind::dwarf::capture(buf, u, mode);
                assert_eq!(black_box(t.len), depth, "{mode:?}: {:?}", t.stop);
            };
            // One buffer for both sides: where it lies against the stack decides stalls
            // (a store to it and a load of a frame record 4 KiB apart look dependent), and
            // that must not differ between the two.
            let buf = std::cell::RefCell::new(buf);
            let hybrid = common::paired_ratio(
                41,
                iters,
                || cfi(&mut buf.borrow_mut(), Mode::Hybrid),
                || assert_eq!(black_box(unwind::capture(&mut buf.borrow_mut())), depth),
            );
            let mut buf = buf.into_inner();
            #[cfg(target_arch = "x86_64")]
            let framehop = {
                let unwinder = framehop_with_exe();
                let mut cache = framehop::x86_64::CacheX86_64::new();
                common::paired_words(
                    buf.as_ptr(),
                    depth,
                    iters / 4,
                    |out| framehop_walk(bounds, &unwinder, &mut cache, out),
                    || cfi(&mut buf, Mode::Dwarf),
                )
            };
            #[cfg(not(target_arch = "x86_64"))]
            let framehop = (f64::NAN, f64::NAN, f64::NAN);
            println!(
                "depth {depth:>3}: hybrid/fp {}; framehop/dwarf {}",
                common::fmt_ratio(hybrid),
                common::fmt_ratio(framehop)
            );
        });
    }
}

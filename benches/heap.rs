//! Heap profiler overhead: an allocation-heavy workload with the profiler stopped and with it
//! sampling at the default rate (512 KiB), both through the same `Sampling<System>` global
//! allocator; and raw `GlobalAlloc` calls on `System` itself, on the wrapper stopped and on the
//! wrapper sampling (the per-call worst case, with no work between allocations).
//!
//! The workload (`workload`): 2000 small strings formatted into a vector, a `BTreeMap` of 1000
//! byte vectors of 8..520 bytes, a vector grown by pushes to 20000 words (reallocations), all
//! dropped at the end: about 4000 allocations and 350 KiB per iteration, on a stack about
//! 25 frames deep (criterion's), so a sample costs a real walk.
//!
//! Prints the medians and the overhead at the end (from criterion's estimates), then measures
//! the same pairs again in interleaved rounds (off, on, on, off, ...), which is far less
//! sensitive to other load on a shared machine, and the cost of one sample.

mod common;

use criterion::{criterion_group, Criterion};
use std::alloc::System;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;
use unwind::heap::{self, Sampling};

#[path = "common/raw_alloc.rs"]
mod raw_alloc;
use raw_alloc::raw;

#[global_allocator]
static ALLOC: Sampling = Sampling::new(System);

#[inline(never)]
fn workload(seed: u64) -> usize {
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let strings: Vec<String> = (0..2000)
        .map(|i| format!("item-{i}-{}", rnd() % 1000))
        .collect();
    let mut map = BTreeMap::new();
    for i in 0..1000u64 {
        let n = 8 + (rnd() % 512) as usize;
        map.insert(rnd() ^ i, vec![i as u8; n]);
    }
    let mut grow = Vec::new();
    for i in 0..20_000u64 {
        grow.push(i);
    }
    strings.len() + map.len() + black_box(grow.len())
}

fn bench(c: &mut Criterion) {
    unwind::init();
    let mut g = c.benchmark_group("heap");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    heap::stop();
    let mut seed = 1u64;
    g.bench_function("workload/off", |b| {
        b.iter(|| {
            seed += 1;
            workload(seed)
        })
    });
    heap::reset();
    heap::start(heap::DEFAULT_RATE);
    g.bench_function("workload/on", |b| {
        b.iter(|| {
            seed += 1;
            workload(seed)
        })
    });
    heap::stop();
    let st = heap::stats();
    println!(
        "profiler on: {} samples, {} stacks, {} dropped",
        st.samples,
        st.stacks,
        st.dropped_stacks + st.untracked
    );

    let mut ptrs = [core::ptr::null_mut::<u8>(); 1000];
    g.bench_function("raw/system", |b| b.iter(|| raw(&System, &mut ptrs)));
    g.bench_function("raw/off", |b| b.iter(|| raw(&ALLOC, &mut ptrs)));
    heap::start(heap::DEFAULT_RATE);
    g.bench_function("raw/on", |b| b.iter(|| raw(&ALLOC, &mut ptrs)));
    heap::stop();
    g.finish();
}

/// Paired, interleaved rounds (off and on alternate, in alternating order), so that load from
/// other processes hits both sides alike: returns the medians of off, on (ns per call of `f`)
/// and of the per-round ratio on/off.
fn paired(rounds: usize, batch: usize, rate: u64, f: &mut dyn FnMut()) -> (f64, f64, f64) {
    let mut time = |on: bool| {
        if on {
            heap::start(rate);
        } else {
            heap::stop();
        }
        let t = std::time::Instant::now();
        for _ in 0..batch {
            f();
        }
        let ns = t.elapsed().as_nanos() as f64 / batch as f64;
        heap::stop();
        ns
    };
    let (mut offs, mut ons, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let (off, on) = if r % 2 == 0 {
            let off = time(false);
            (off, time(true))
        } else {
            let on = time(true);
            (time(false), on)
        };
        offs.push(off);
        ons.push(on);
        ratios.push(on / off);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    (med(&mut offs), med(&mut ons), med(&mut ratios))
}

/// As [`paired`], for the raw loop straight on `System` (no wrapper) against the wrapper with
/// the profiler sampling at the default rate: the full cost of installing it and sampling.
fn paired_system(rounds: usize, batch: usize, ptrs: &mut [*mut u8; 1000]) -> (f64, f64, f64) {
    heap::start(heap::DEFAULT_RATE);
    let rounds = raw_alloc::interleaved(rounds, batch, &ALLOC, ptrs);
    let mut syss: Vec<f64> = rounds.iter().map(|r| r.0).collect();
    let mut ons: Vec<f64> = rounds.iter().map(|r| r.1).collect();
    let mut ratios: Vec<f64> = rounds.iter().map(|r| r.1 / r.0).collect();
    heap::stop();
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    (med(&mut syss), med(&mut ons), med(&mut ratios))
}

fn paired_summary() {
    let mut seed = 7u64;
    let (off, on, r) = paired(41, 20, heap::DEFAULT_RATE, &mut || {
        seed += 1;
        black_box(workload(seed));
    });
    println!(
        "paired workload (41 rounds x 20): off {:.1} µs on {:.1} µs, median ratio on/off {:+.2}%",
        off / 1000.0,
        on / 1000.0,
        (r - 1.0) * 100.0
    );
    let mut ptrs = [core::ptr::null_mut::<u8>(); 1000];
    let (off, on, r) = paired(41, 50, heap::DEFAULT_RATE, &mut || raw(&ALLOC, &mut ptrs));
    println!(
        "paired raw 1000 alloc+free (41 x 50): off {:.1} µs on {:.1} µs, median ratio {:+.2}%",
        off / 1000.0,
        on / 1000.0,
        (r - 1.0) * 100.0
    );
    let (sys, on, r) = paired_system(41, 50, &mut ptrs);
    println!(
        "paired raw 1000 alloc+free (41 x 50): System {:.1} µs, wrapper sampling {:.1} µs, \
         median ratio {:+.2}%",
        sys / 1000.0,
        on / 1000.0,
        (r - 1.0) * 100.0
    );
    let (off, on, _) = paired(11, 20, 1, &mut || raw(&ALLOC, &mut ptrs));
    println!(
        "cost of one sample (rate 1, raw loop, criterion's stack depth): {:.0} ns",
        (on - off) / 1000.0
    );
}

fn median_ns(id: &str) -> Option<f64> {
    common::median_ns(&format!("heap/{}", id.replace('/', "_")))
}

fn summary() {
    let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:+.2}%", (a / b - 1.0) * 100.0),
        _ => "-".into(),
    };
    let fmt = |x: Option<f64>| x.map_or("-".into(), |v| format!("{:.1} µs", v / 1000.0));
    let (off, on) = (median_ns("workload/off"), median_ns("workload/on"));
    let (sys, roff, ron) = (
        median_ns("raw/system"),
        median_ns("raw/off"),
        median_ns("raw/on"),
    );
    println!("\nsummary (medians):");
    println!(
        "  workload: off {} on {}  overhead of sampling at 512 KiB: {}",
        fmt(off),
        fmt(on),
        pct(on, off)
    );
    println!(
        "  raw 1000 alloc+free: System {} wrapper off {} ({}) wrapper on {} ({} vs System)",
        fmt(sys),
        fmt(roff),
        pct(roff, sys),
        fmt(ron),
        pct(ron, sys)
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
    paired_summary();
}

//! CPU profiler overhead: a CPU-bound workload (a recursion 24 frames deep hashing at its
//! leaves, on the main thread) timed without a profiler, under `unwind`'s CPU profiler at 99 Hz
//! and under pprof-rs's (frame-pointer backend) at 99 Hz.
//!
//! A bench binary rather than criterion: on a shared machine the three variants are interleaved
//! round by round (A B C A B C ...) so that load changes hit all of them alike, and the medians
//! are compared. Each run is timed in wall time and in process CPU time (which includes signal
//! handling and the collector thread).
//!
//! `cargo bench --bench cpu_profiler [-- ROUNDS]` (default 15 rounds of ~0.3 s per variant).

use std::hint::black_box;
use std::time::{Duration, Instant};

#[inline(never)]
fn leaf(mut x: u64, n: u64) -> u64 {
    for i in 0..n {
        x = black_box(x.wrapping_mul(0x9e3779b97f4a7c15).rotate_left(7) ^ i);
    }
    x
}

#[inline(never)]
fn recurse(depth: u32, x: u64, n: u64) -> u64 {
    if depth == 0 {
        return leaf(x, n);
    }
    let a = recurse(depth - 1, x, n);
    black_box(a) ^ u64::from(depth)
}

/// The workload: 600 leaf calls under 24 frames.
#[inline(never)]
fn workload() -> u64 {
    let mut x = 1u64;
    for i in 0..600 {
        x ^= recurse(24, x ^ i, 200_000);
    }
    x
}

fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// (wall, process CPU) of one workload run.
fn timed() -> (Duration, Duration) {
    let (w0, c0) = (Instant::now(), process_cpu());
    black_box(workload());
    (w0.elapsed(), process_cpu() - c0)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[derive(Default)]
struct Runs {
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
    samples: u64,
}

impl Runs {
    fn push(&mut self, (w, c): (Duration, Duration)) {
        self.wall.push(w);
        self.cpu.push(c);
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15);
    unwind::init();
    let _reg = unwind::cpu::register_thread();
    // Warm up (page in, frequency scaling).
    black_box(workload());

    let mut base = Runs::default();
    let mut ours = Runs::default();
    let mut theirs = Runs::default();
    let mut pprof_error = None;
    for _ in 0..rounds {
        base.push(timed());

        let p = unwind::cpu::CpuProfiler::start(unwind::cpu::Config::default())
            .expect("start unwind profiler");
        ours.push(timed());
        ours.samples += p.stop().total();

        match pprof::ProfilerGuardBuilder::default()
            .frequency(99)
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
        {
            Ok(guard) => {
                theirs.push(timed());
                if let Ok(r) = guard.report().build() {
                    theirs.samples += r.data.values().map(|&v| v as u64).sum::<u64>();
                }
            }
            Err(e) => pprof_error = Some(e.to_string()),
        }
    }

    let bmin = *base.wall.iter().min().unwrap();
    let bw = median(&mut base.wall);
    let bc = median(&mut base.cpu);
    println!("cpu profiler overhead, {rounds} interleaved rounds, medians:");
    println!(
        "  {:31} wall {:8.2} ms            cpu {:8.2} ms            min wall {:8.2} ms",
        "no profiler",
        bw.as_secs_f64() * 1e3,
        bc.as_secs_f64() * 1e3,
        bmin.as_secs_f64() * 1e3
    );
    for (name, r) in [
        ("unwind cpu 99 Hz", &mut ours),
        ("pprof-rs (frame-pointer) 99 Hz", &mut theirs),
    ] {
        if r.wall.is_empty() {
            println!(
                "  {name:31} not run: {}",
                pprof_error.as_deref().unwrap_or("?")
            );
            continue;
        }
        let min = *r.wall.iter().min().unwrap();
        let w = median(&mut r.wall);
        let c = median(&mut r.cpu);
        let pct = |a: Duration, b: Duration| 100.0 * (a.as_secs_f64() / b.as_secs_f64() - 1.0);
        println!(
            "  {:31} wall {:8.2} ms ({:+6.2}%)  cpu {:8.2} ms ({:+6.2}%)  min wall {:8.2} ms ({:+6.2}%)  {} samples",
            name,
            w.as_secs_f64() * 1e3,
            pct(w, bw),
            c.as_secs_f64() * 1e3,
            pct(c, bc),
            min.as_secs_f64() * 1e3,
            pct(min, bmin),
            r.samples
        );
    }
}

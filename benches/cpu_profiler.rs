//! CPU profiler overhead: a CPU-bound workload (a recursion 24 frames deep hashing at its
//! leaves, on the main thread) timed without a profiler, under `unwind`'s CPU profiler at 99 Hz
//! and under pprof-rs's (frame-pointer backend) at 99 Hz.
//!
//! A bench binary rather than criterion: on a shared machine the three variants are interleaved
//! round by round (A B C A B C ...) so that load changes hit all of them alike, and the medians
//! are compared. Each run is timed in wall time and in process CPU time (which includes signal
//! handling and the collector thread).
//!
//! The difference of two noisy CPU totals cannot show a 1% overhead on a shared machine, so the
//! profiler's own cost is also measured directly, in the same run:
//! - **per sample**: this thread sends itself SIGPROF as the profiler's timers do
//!   ([`unwind::cpu::sample_this_thread_now`]) from the workload's stack depth, in batches,
//!   and its CPU time per signal is compared with the same signal caught by an empty handler
//!   and with the system call alone (signal 0): the handler's cost, the delivery's (frame
//!   setup, `sigreturn`), and their sum, the cost of one sample on the sampled thread (a timer
//!   signal needs no system call to send); the collector's CPU time per drained sample too;
//! - **background**: the CPU time of the profiler's threads (the collector, the module
//!   watcher) over each profiled round, from their thread CPU clocks;
//! - **samples** taken per round.
//!
//! Overhead = (samples x cost per sample + background CPU) / the workload's CPU time.
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

/// The CPU time of thread `tid` of this process (its kernel CPU clock), if it still runs.
fn thread_cpu(tid: libc::pid_t) -> Option<Duration> {
    // The kernel's per-thread CPU clock id: MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED).
    let clock = ((!(tid as libc::clockid_t)) << 3) | 6;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer; a stale clock id only makes the call fail.
    (unsafe { libc::clock_gettime(clock, &mut ts) } == 0)
        .then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

fn this_thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The profiler's own threads (the collector, the module watcher), by their names.
fn profiler_threads() -> Vec<libc::pid_t> {
    let mut out = Vec::new();
    for tid in unwind::threads::list() {
        let comm =
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
        if comm.starts_with("unwind-cpu-col") || comm.starts_with("unwind-modules") {
            out.push(tid);
        }
    }
    out
}

/// [`profiler_threads`] once both run (the collector names itself when it starts running).
fn profiler_threads_started() -> Vec<libc::pid_t> {
    let mut bg = profiler_threads();
    for _ in 0..100 {
        if bg.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
        bg = profiler_threads();
    }
    bg
}

fn background_cpu(tids: &[libc::pid_t]) -> Duration {
    tids.iter().filter_map(|&t| thread_cpu(t)).sum()
}

/// What is measured around one batch of self-sent signals.
#[derive(Clone, Copy, PartialEq)]
enum Send {
    /// The system call alone (signal 0: nothing delivered).
    Nothing,
    /// SIGPROF as a timer sends it, to whatever handler is installed.
    Sigprof,
}

/// Sends `n` signals from `depth` frames down; returns this thread's CPU time for them.
#[inline(never)]
fn send_at_depth(depth: u32, n: usize, what: Send) -> Duration {
    if depth > 0 {
        let d = send_at_depth(depth - 1, n, what);
        return black_box(d);
    }
    let t0 = this_thread_cpu();
    for _ in 0..n {
        let ok = match what {
            Send::Nothing => unwind::cpu::queue_to_self(0),
            Send::Sigprof => unwind::cpu::sample_this_thread_now(),
        };
        assert!(ok, "rt_tgsigqueueinfo failed");
    }
    this_thread_cpu() - t0
}

extern "C" fn empty_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Nanoseconds of this thread's CPU per signal, as the median over `batches` batches of `n`.
fn per_signal(batches: usize, n: usize, what: Send, mut between: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..batches)
        .map(|_| {
            let d = send_at_depth(24, n, what);
            between();
            d.as_nanos() as f64 / n as f64
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Evicts the caches (writes 16 MiB): a timer's sample lands on a thread that was running
/// other code for 10 ms, so the handler's code and tables may be cold.
fn evict(buf: &mut [u8]) {
    for i in (0..buf.len()).step_by(64) {
        buf[i] = buf[i].wrapping_add(1);
    }
    black_box(&buf);
}

/// The cost of one sample (ns): (handler, delivery, collector per sample), in batches (warm
/// caches) and one signal at a time after evicting the caches (cold).
struct Cost {
    handler: f64,
    delivery: f64,
    collector: f64,
    cold_handler: f64,
    cold_delivery: f64,
}

fn per_sample_cost() -> Cost {
    const BATCHES: usize = 41;
    const N: usize = 200;
    let mut buf = vec![0u8; 16 << 20];
    let none = per_signal(BATCHES, N, Send::Nothing, || {});
    let cold_none = per_signal(BATCHES, 1, Send::Nothing, || evict(&mut buf));
    // An empty SA_SIGINFO handler: delivery and return alone.
    // SAFETY: sigaction with plain data; the handler does nothing. The old action is put back.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = empty_handler
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGPROF, &sa, &mut old), 0);
    }
    let empty = per_signal(BATCHES, N, Send::Sigprof, || {});
    let cold_empty = per_signal(BATCHES, 1, Send::Sigprof, || evict(&mut buf));
    // SAFETY: puts back the action saved above.
    unsafe { libc::sigaction(libc::SIGPROF, &old, std::ptr::null_mut()) };
    // The profiler's handler, as in the rounds (defaults: Hybrid, every thread). Between
    // batches, wait for the collector to drain the ring, so that no sample is dropped.
    let p = unwind::cpu::CpuProfiler::start(unwind::cpu::Config::default()).expect("start");
    let bg = profiler_threads_started();
    let bg0 = background_cpu(&bg);
    let real = per_signal(BATCHES, N, Send::Sigprof, || {
        let st = p.stats();
        let t0 = Instant::now();
        while p.samples() < st.recorded && t0.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let bg1 = background_cpu(&bg);
    let cold_real = per_signal(BATCHES, 1, Send::Sigprof, || evict(&mut buf));
    let prof = p.stop();
    let st = prof.stats;
    assert_eq!(st.dropped, 0, "samples dropped while measuring: {st:?}");
    let collector = (bg1 - bg0).as_nanos() as f64 / st.recorded.max(1) as f64;
    Cost {
        handler: real - empty,
        delivery: empty - none,
        collector,
        cold_handler: cold_real - cold_empty,
        cold_delivery: cold_empty - cold_none,
    }
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
    /// CPU time of the profiler's own threads over the timed runs.
    background: Vec<Duration>,
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
        let bg = profiler_threads_started();
        let bg0 = background_cpu(&bg);
        ours.push(timed());
        ours.background
            .push(background_cpu(&bg).saturating_sub(bg0));
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

    let cost = per_sample_cost();

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
    // The direct accounting, for the unwind profiler at its defaults. A sample costs the
    // sampled thread the delivery and the handler (taken cold: after 10 ms of other work the
    // handler's code and tables may be out of the caches); the collector's work on it (the
    // drain) is in the profiler threads' CPU time.
    let warm = cost.handler + cost.delivery;
    let per_sample = (cost.cold_handler + cost.cold_delivery).max(warm);
    let samples_per_round = ours.samples as f64 / rounds as f64;
    let bgm = median(&mut ours.background).as_nanos() as f64;
    let cpu_ns = bc.as_nanos() as f64;
    let direct = samples_per_round * per_sample + bgm;
    println!(
        "unwind cpu 99 Hz, direct cost (same run): one sample on the sampled thread {:.2} µs \
         with cold caches (handler {:.2} + delivery {:.2}), {:.2} µs warm (handler {:.2} + \
         delivery {:.2}); the collector's share ({:.2} µs) is in its CPU time",
        per_sample / 1e3,
        cost.cold_handler / 1e3,
        cost.cold_delivery / 1e3,
        warm / 1e3,
        cost.handler / 1e3,
        cost.delivery / 1e3,
        cost.collector / 1e3,
    );
    println!(
        "  {:.1} samples per round; profiler threads (collector, module watcher) {:.3} ms CPU \
         per round (median)",
        samples_per_round,
        bgm / 1e6
    );
    println!(
        "  overhead = ({:.1} x {:.2} µs + {:.3} ms) / {:.2} ms workload CPU = {:.3}% \
         (samples {:.3}%, profiler threads {:.3}%): {} 1%",
        samples_per_round,
        per_sample / 1e3,
        bgm / 1e6,
        cpu_ns / 1e6,
        100.0 * direct / cpu_ns,
        100.0 * samples_per_round * per_sample / cpu_ns,
        100.0 * bgm / cpu_ns,
        if direct <= 0.01 * cpu_ns { "<=" } else { ">" }
    );
}

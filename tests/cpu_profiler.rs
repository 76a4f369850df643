//! The CPU profiler under real SIGPROF: profiles `go tool pprof` reads with the user frames
//! across a system-stack switch, a signal storm on four allocating threads, start/stop cycles,
//! threads that come and go while profiling, and the `unwind demo` binary.
//!
//! Needs `go` (Debian's `golang-go`) on PATH for the pprof checks.

mod common;

use common::short_names;
use common::tools::go_pprof;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use unwind::cpu::{Clock, Config, CpuProfile, CpuProfiler, Error, TimerMode};
use unwind::policy::{Classifier, ProfileKind};
use unwind::Frame;

/// One profiler at a time per process: tests take this lock.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Aborts the process if the test has not finished in `secs`: a deadlock fails loudly instead
/// of hanging CI. Drop the returned flag's owner to disarm.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn new(what: &'static str, secs: u64) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !d.load(Ordering::Relaxed) {
                if t0.elapsed() > Duration::from_secs(secs) {
                    eprintln!("watchdog: {what} did not finish in {secs} s (deadlock?)");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("unwind-cpu-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn assert_adds_up(p: &CpuProfile) {
    let s = p.stats;
    assert_eq!(s.signals, s.recorded + s.dropped, "{s:?}");
    assert_eq!(s.collected, s.recorded, "{s:?}");
    assert_eq!(p.total(), s.recorded + s.overruns, "{s:?}");
}

#[inline(always)]
fn spin(budget: Duration, salt: u64) -> u64 {
    let t0 = Instant::now();
    let mut x = salt;
    while t0.elapsed() < budget {
        for i in 0..5_000u64 {
            x = black_box(x.wrapping_mul(0x9e3779b97f4a7c15).wrapping_add(i ^ salt));
        }
    }
    x
}

/// The samples of `stacks` with a frame in function `name` (short name).
fn samples_in(stacks: &[(Vec<Frame>, u64)], name: &str) -> u64 {
    stacks
        .iter()
        .filter(|(f, _)| short_names(f).iter().any(|n| n == name))
        .map(|(_, n)| n)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// pprof output across a switch.

#[inline(never)]
fn cpu_test_system_leaf(budget: Duration) -> u64 {
    spin(budget, 0x51)
}

#[inline(never)]
fn cpu_test_calls_run(budget: Duration) -> u64 {
    let r = unwind::system_stack::run(|| black_box(cpu_test_system_leaf(budget)));
    black_box(r) + 1
}

#[inline(never)]
fn cpu_test_user_outer(budget: Duration) -> u64 {
    black_box(cpu_test_calls_run(budget)) + 2
}

#[test]
fn pprof_profile_parses_and_crosses_the_system_stack() {
    let _s = serial();
    let _w = Watchdog::new("pprof test", 120);
    unwind::init();
    let _reg = unwind::cpu::register_thread();
    let p = CpuProfiler::start(Config {
        frequency_hz: 250,
        ..Config::default()
    })
    .unwrap();
    let t0 = Instant::now();
    while p.samples() < 60 && t0.elapsed() < Duration::from_secs(30) {
        black_box(cpu_test_user_outer(Duration::from_millis(50)));
    }
    let prof = p.stop();
    assert_adds_up(&prof);
    assert!(prof.total() >= 30, "only {} samples", prof.total());

    // The walks themselves: samples in the leaf reach the user frame across the switch.
    let mut in_leaf = 0;
    let mut crossing = 0;
    for (frames, n) in &prof.stacks {
        let names = short_names(frames);
        if names.iter().take(6).any(|x| x == "cpu_test_system_leaf") {
            in_leaf += n;
            if names.iter().any(|x| x == "cpu_test_user_outer")
                && frames.iter().any(|f| f.via == unwind::Via::Transition)
            {
                crossing += n;
            }
        }
    }
    assert!(in_leaf >= 10, "{in_leaf} samples in the leaf");
    assert!(
        crossing * 10 >= in_leaf * 9,
        "{crossing} of {in_leaf} cross"
    );

    let sym = unwind::symbols::Symbolizer::for_current_process();
    let profile = prof.to_profile(&ProfileKind::Cpu.policy(), &Classifier::new());
    let dir = tmpdir("pprof");
    let files = unwind::profile::write_outputs(&dir, "cpu", &profile, &sym, 1).unwrap();
    let pb = &files[0];
    let top = go_pprof(&["-top"], pb);
    assert!(top.contains("Type: cpu"), "{top}");
    assert!(top.contains("cpu_test_system_leaf"), "{top}");
    let traces = go_pprof(&["-traces"], pb);
    // One trace shows the leaf on the system stack and the user frames beyond the switch.
    let crosses = traces.split("-----------+").any(|t| {
        let leaf = t.find("cpu_test_system_leaf");
        let run = t.find("unwind::live::system_stack::run");
        let outer = t.find("cpu_test_user_outer");
        matches!((leaf, run, outer), (Some(a), Some(b), Some(c)) if a < b && b < c)
    });
    assert!(crosses, "no trace crosses the switch:\n{traces}");
    let raw = go_pprof(&["-raw"], pb);
    assert!(raw.contains("samples/count cpu/nanoseconds"), "{raw}");
    // Sample totals survive the round trip.
    let total_line = top
        .lines()
        .find(|l| l.starts_with("Duration:"))
        .unwrap_or_default()
        .to_string();
    assert!(total_line.contains("Total samples"), "{top}");
    let folded = std::fs::read_to_string(&files[1]).unwrap();
    assert!(folded
        .lines()
        .any(|l| l.contains("cpu_test_user_outer") && l.contains("cpu_test_system_leaf")));
    let svg = std::fs::read_to_string(&files[2]).unwrap();
    assert!(svg.contains("<svg") && svg.contains("cpu_test_system_leaf"));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Signal storm.

#[inline(never)]
fn storm_worker(stop: &AtomicBool) -> usize {
    let _reg = unwind::cpu::register_thread();
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        // Allocation-heavy: boxes, vectors that grow, strings; frees out of order.
        let mut v: Vec<u64> = Vec::new();
        for k in 0..(i % 200) as u64 {
            v.push(k);
        }
        let s = format!("{i}-{}", v.len());
        total += s.len() + black_box(Box::new(v.len())).as_ref();
        kept.push(vec![i as u8; 16 + i % 4000]);
        if kept.len() > 64 {
            kept.swap_remove(i % 64);
        }
        i += 1;
    }
    total + kept.len()
}

#[test]
fn signal_storm_four_allocating_threads() {
    let _s = serial();
    let _w = Watchdog::new("signal storm", 120);
    unwind::init();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || storm_worker(&stop))
        })
        .collect();
    // 5 kHz per thread on the wall clock (CPU-time timers are capped at the kernel tick), on
    // the registered threads only: their handlers run on the 64 KiB alternate stack.
    let p = CpuProfiler::start(Config {
        frequency_hz: 5000,
        clock: Clock::Wall,
        threads: unwind::cpu::Threads::Registered,
        ..Config::default()
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let prof = p.stop();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        assert!(w.join().unwrap() > 0);
    }
    assert_adds_up(&prof);
    let s = prof.stats;
    eprintln!("storm: {s:?}, {} distinct stacks", prof.stacks.len());
    // Every handler ran on the 64 KiB alternate stack register_thread installed.
    assert_eq!(s.on_alt_stack, s.signals, "{s:?}");
    // 4 threads x 5 kHz x 2.5 s is 50 000; allow for a loaded machine and timer slack.
    assert!(s.signals >= 2000, "{s:?}");
    let in_worker: u64 = samples_in(&prof.stacks, "storm_worker");
    // Samples that land inside libc's allocator (built without frame pointers) lose their
    // callers; in release builds that is most of this workload. The rest must reach the worker.
    assert!(
        in_worker * 5 >= prof.total(),
        "{in_worker} of {}",
        prof.total()
    );
}

#[inline(never)]
fn process_timer_worker(stop: &AtomicBool) -> u64 {
    // Not registered: ITIMER_PROF samples it anyway, on the interrupted stack. (Not a tail
    // call, so this frame stays in release builds.)
    black_box(spin_until(stop, 0x77)) ^ 1
}

#[inline(never)]
fn spin_until(stop: &AtomicBool, salt: u64) -> u64 {
    let mut x = salt;
    while !stop.load(Ordering::Relaxed) {
        x = spin(Duration::from_millis(1), x);
    }
    x
}

#[test]
fn process_timer_samples_unregistered_threads() {
    let _s = serial();
    let _w = Watchdog::new("process timer", 120);
    unwind::init();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || process_timer_worker(&stop))
        })
        .collect();
    let p = CpuProfiler::start(Config {
        frequency_hz: 1000,
        timer: TimerMode::Process,
        ..Config::default()
    })
    .unwrap();
    let t0 = Instant::now();
    while p.samples() < 100 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let prof = p.stop();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_adds_up(&prof);
    // Without SA_ONSTACK the handler runs on the interrupted stack, not std's small one.
    assert_eq!(prof.stats.on_alt_stack, 0, "{:?}", prof.stats);
    let in_worker: u64 = samples_in(&prof.stacks, "process_timer_worker");
    assert!(in_worker >= 50, "{in_worker} of {}", prof.total());
}

// ---------------------------------------------------------------------------------------------
// Start/stop cycles, threads coming and going.

#[test]
fn start_stop_cycles() {
    let _s = serial();
    let _w = Watchdog::new("start/stop cycles", 120);
    unwind::init();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let _reg = unwind::cpu::register_thread();
                spin_until(&stop, 0x99)
            })
        })
        .collect();
    let mut total = 0;
    for cycle in 0..20 {
        let cfg = Config {
            frequency_hz: 2000,
            clock: Clock::Wall,
            timer: if cycle % 5 == 4 {
                TimerMode::Process
            } else {
                TimerMode::PerThread
            },
            ..Config::default()
        };
        let p = CpuProfiler::start(cfg).unwrap();
        assert_eq!(
            CpuProfiler::start(cfg).err(),
            Some(Error::AlreadyRunning),
            "cycle {cycle}"
        );
        std::thread::sleep(Duration::from_millis(40));
        let prof = if cycle % 2 == 0 {
            p.stop()
        } else {
            // Dropping stops too; the next start must work.
            drop(p);
            continue;
        };
        assert_adds_up(&prof);
        total += prof.total();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(total >= 50, "{total} samples over the cycles");
    assert_eq!(
        CpuProfiler::start(Config {
            frequency_hz: 0,
            ..Config::default()
        })
        .err(),
        Some(Error::BadFrequency)
    );
}

#[inline(never)]
fn sample_me_now(n: usize) -> usize {
    (0..n)
        .filter(|_| unwind::cpu::sample_this_thread_now())
        .count()
}

/// `sample_this_thread_now` (what the overhead bench measures a sample with) takes a sample of
/// this thread with the running profiler's handler, and every sample published in bursts is
/// drained: the collector's windowed scan loses none.
#[test]
fn self_sent_samples_are_recorded_and_drained() {
    let _s = serial();
    let _w = Watchdog::new("self-sent samples", 60);
    unwind::init();
    let _reg = unwind::cpu::register_thread();
    let p = CpuProfiler::start(Config::default()).unwrap();
    let mut sent = 0;
    for burst in 0..20 {
        sent += black_box(sample_me_now(100 + burst * 7));
        // Far faster than any timer: let the collector catch up (the ring holds 1024).
        let t0 = Instant::now();
        while p.samples() < p.stats().recorded && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1 + burst as u64 % 4));
        }
    }
    let prof = p.stop();
    assert_adds_up(&prof);
    assert_eq!(prof.stats.dropped, 0, "{:?}", prof.stats);
    let here: u64 = samples_in(&prof.stacks, "sample_me_now");
    assert!(
        here as usize >= sent && sent >= 2000,
        "{here} samples in sample_me_now, {sent} sent"
    );
    // With no profiler running, the signal goes to the previous disposition (ignored).
    assert!(unwind::cpu::sample_this_thread_now());
}

#[inline(never)]
fn short_lived_thread_work(budget: Duration) -> u64 {
    let _reg = unwind::cpu::register_thread();
    let mut v = Vec::new();
    let t0 = Instant::now();
    let mut x = 0u64;
    while t0.elapsed() < budget {
        x = spin(Duration::from_micros(500), x);
        v.push(x);
    }
    x ^ v.len() as u64
}

#[test]
fn threads_start_and_exit_while_profiling() {
    let _s = serial();
    let _w = Watchdog::new("thread churn", 120);
    unwind::init();
    let p = CpuProfiler::start(Config {
        frequency_hz: 2000,
        clock: Clock::Wall,
        ..Config::default()
    })
    .unwrap();
    let spawned = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..15 {
                    let h =
                        std::thread::spawn(|| short_lived_thread_work(Duration::from_millis(15)));
                    spawned.fetch_add(1, Ordering::Relaxed);
                    black_box(h.join().unwrap());
                }
            });
        }
    });
    let prof = p.stop();
    assert_eq!(spawned.load(Ordering::Relaxed), 60);
    assert_adds_up(&prof);
    let in_short: u64 = samples_in(&prof.stacks, "short_lived_thread_work");
    assert!(in_short >= 50, "{in_short} of {}", prof.total());
    // A thread registered after stop gets no timer and the next profiler starts cleanly.
    let _reg = unwind::cpu::register_thread();
    let p = CpuProfiler::start(Config::default()).unwrap();
    assert_adds_up(&p.stop());
}

#[inline(never)]
fn one_job_thread(budget: Duration, salt: u64) -> u64 {
    black_box(spin(budget, salt)) ^ 3
}

/// A thread per job, one after another (each starts as the last ends, so the number of
/// threads never changes between the collector's looks): each job's CPU time is in the
/// profile, most of it (at least 60%: each is found at the collector's next look after it used
/// a period of CPU time unsampled). The collector read the thread list only when that number
/// changed, or every 500 ms, and most jobs ran without a timer (4 of 12 threads of 130 ms
/// seen, a third of their CPU time: found by outside use; 3 of 10 here, 14%); it now reads it
/// too when the process used more CPU time than its samples account for.
#[test]
fn threads_started_one_after_another_are_all_sampled() {
    let _s = serial();
    let _w = Watchdog::new("thread per job", 120);
    unwind::init();
    let p = CpuProfiler::start(Config::default()).unwrap();
    let jobs = 10;
    let budget = Duration::from_millis(120);
    std::thread::sleep(Duration::from_millis(30));
    for i in 0..jobs {
        let h = std::thread::spawn(move || one_job_thread(budget, i));
        black_box(h.join().unwrap());
    }
    let prof = p.stop();
    assert_adds_up(&prof);
    // The CPU time the jobs used (the process's, of which the main thread's joins and the
    // profiler's collector are a sliver), in samples.
    let period = Duration::from_secs(1) / Config::default().frequency_hz;
    let expected = prof.stats.process_cpu.as_nanos() / period.as_nanos();
    let threads_seen = prof
        .threads
        .iter()
        .filter(|t| samples_in(&t.stacks, "one_job_thread") > 0)
        .count();
    let in_jobs: u64 = samples_in(&prof.stacks, "one_job_thread");
    assert!(
        u128::from(in_jobs) * 10 >= expected * 6 && threads_seen >= 9,
        "{in_jobs} samples of ~{expected} of CPU time, {threads_seen} of {jobs} threads seen: {:?}",
        prof.stats
    );
}

#[inline(never)]
fn late_unregistered_worker(stop: &AtomicBool) -> u64 {
    // Neither registered nor running when the profiler started: the collector finds it.
    black_box(spin_until(stop, 0x55)) ^ 1
}

/// POSIX timers of this process (`/proc/self/timers`: one `ID:` line each).
fn posix_timers() -> Option<usize> {
    let t = std::fs::read_to_string("/proc/self/timers").ok()?;
    Some(t.lines().filter(|l| l.starts_with("ID:")).count())
}

#[test]
fn default_samples_every_thread_and_frees_timers_of_exited_ones() {
    let _s = serial();
    let _w = Watchdog::new("all threads", 120);
    let timers_before = posix_timers();
    let p = CpuProfiler::start(Config::default()).unwrap();
    assert_eq!(p.config().threads, unwind::cpu::Threads::All);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || late_unregistered_worker(&stop))
        })
        .collect();
    // Threads that live long enough to be found (> SCAN_EVERY), then exit.
    for _ in 0..10 {
        std::thread::spawn(|| std::thread::sleep(Duration::from_millis(120)))
            .join()
            .unwrap();
    }
    // Two scans after the last exit: their timers are gone.
    std::thread::sleep(unwind::threads::SCAN_EVERY * 3);
    let live = unwind::threads::list().len();
    let timers = posix_timers();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let prof = p.stop();
    assert_adds_up(&prof);
    if let (Some(before), Some(during)) = (timers_before, timers) {
        // One timer per live thread at most (plus any from before), not one per thread ever
        // seen (10 more).
        assert!(during <= before + live, "{during} timers, {live} threads");
        assert_eq!(posix_timers(), Some(before), "timers left after stop");
    }
    let in_late: u64 = samples_in(&prof.stacks, "late_unregistered_worker");
    // The workers spun ~1.5 s of wall time each; at 99 Hz of their CPU time even a loaded
    // machine gives dozens of samples.
    assert!(in_late >= 20, "{in_late} of {}", prof.total());
}

// ---------------------------------------------------------------------------------------------
// The demo binary.

#[test]
fn demo_binary_writes_profiles_that_parse() {
    let _s = serial();
    let dir = tmpdir("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_unwind"))
        // One heap sample per 16 KiB on average (the default, 512 KiB, gives a handful of
        // samples in 2 s: too few for every place to have one).
        .args([
            "demo",
            "--seconds",
            "2",
            "--hz",
            "499",
            "--heap-rate",
            "16384",
            "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for place in ["user stack", "system stack", "coroutine", "stacker segment"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(place))
            .unwrap_or_else(|| panic!("no line for {place}:\n{stdout}"));
        let nums: Vec<u64> = line[place.len() + 2..]
            .split_whitespace()
            .take(2)
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(nums.len(), 2, "{line}");
        assert!(nums[0] > 0, "no samples for {place}:\n{stdout}");
        assert!(
            nums[1] * 10 >= nums[0] * 9,
            "{place} does not reach the root:\n{stdout}"
        );
    }
    assert!(stdout.contains("continued on the other stack"), "{stdout}");
    // stderr is a pipe here, not a terminal: progress as whole lines, no carriage returns.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains('\r'), "{stderr:?}");
    assert!(
        stderr
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["running", "2.0/2.0"])),
        "{stderr}"
    );
    for f in ["cpu.pb.gz", "cpu.folded", "cpu.svg"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let top = go_pprof(&["-top"], &dir.join("cpu.pb.gz"));
    assert!(
        top.contains("system_stack_leaf") && top.contains("demo_worker"),
        "{top}"
    );

    // The heap profile (the binary's global allocator is heap::Sampling): allocations made on
    // the system stack are charged to on_system_stack, the user function that called run (it
    // is a leaf of the profile: flat > 0), and every place's samples reach demo_worker.
    let heap_table = stdout
        .split("Heap samples:")
        .nth(1)
        .unwrap_or_else(|| panic!("no heap table:\n{stdout}"));
    for place in ["user stack", "system stack", "coroutine", "stacker segment"] {
        let line = heap_table
            .lines()
            .find(|l| l.trim_start().starts_with(place))
            .unwrap_or_else(|| panic!("no heap line for {place}:\n{stdout}"));
        let nums: Vec<i64> = line[place.len() + 2..]
            .split_whitespace()
            .take(2)
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(nums.len(), 2, "{line}");
        assert!(nums[0] > 0, "no heap samples for {place}:\n{stdout}");
        assert_eq!(
            nums[0], nums[1],
            "{place} heap samples do not all reach the root:\n{stdout}"
        );
    }
    for f in ["heap.pb.gz", "heap.folded", "heap.svg"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let top = go_pprof(
        &["-sample_index=alloc_space", "-top"],
        &dir.join("heap.pb.gz"),
    );
    // demo_worker's own allocations are setup (the thread's registration, the coroutine), which
    // a sample may catch once: the four places' allocations are not charged to it, so its flat
    // share stays small (one place charged to it is a quarter of the bytes). On a loaded
    // machine the demo makes fewer samples in its time, and one sample of the setup came to
    // 3% (an outside-use run of the twenty-seventh round): the bound is 10%.
    let flat_share_of = |name: &str| -> f64 {
        top.lines()
            .find(|l| l.trim_end().ends_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|w| w.trim_end_matches('%').parse().ok())
            .unwrap_or_else(|| panic!("no flat% for {name} in:\n{top}"))
    };
    assert!(
        flat_share_of("unwind::demo::demo_worker") < 10.0,
        "allocations charged to demo_worker:\n{top}"
    );
    assert!(
        flat_share_of("unwind::demo::on_system_stack") > 5.0,
        "{top}"
    );
    assert!(
        !top.contains("system_stack_leaf"),
        "heap policy kept system frames:\n{top}"
    );
    let raw = go_pprof(&["-raw"], &dir.join("heap.pb.gz"));
    assert!(
        raw.contains("alloc_objects/count") && raw.contains("inuse_space/bytes"),
        "{raw}"
    );

    // --naive: the switch samples stop at the trampoline.
    let out = Command::new(env!("CARGO_BIN_EXE_unwind"))
        .args(["demo", "--naive", "--seconds", "1", "--hz", "499", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("system stack"))
        .unwrap();
    assert!(line.contains("(  0.0%)"), "{stdout}");
    assert!(dir.join("cpu-naive.pb.gz").is_file());

    let bad = Command::new(env!("CARGO_BIN_EXE_unwind"))
        .args(["demo", "--seconds", "-1"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

fn alt_stack_size() -> usize {
    // SAFETY: queries this thread's alternate stack into a zeroed stack_t.
    unsafe {
        let mut ss: libc::stack_t = std::mem::zeroed();
        assert_eq!(libc::sigaltstack(std::ptr::null(), &mut ss), 0);
        if ss.ss_flags & libc::SS_DISABLE != 0 {
            0
        } else {
            ss.ss_size
        }
    }
}

#[test]
fn nested_registrations_dropped_out_of_order() {
    std::thread::spawn(|| {
        let before = alt_stack_size();
        let a = unwind::cpu::register_thread();
        assert_eq!(alt_stack_size(), unwind::cpu::ALT_STACK_SIZE);
        let b = unwind::cpu::register_thread();
        drop(a);
        // Still registered: the alternate stack stays.
        assert_eq!(alt_stack_size(), unwind::cpu::ALT_STACK_SIZE);
        drop(b);
        assert_eq!(alt_stack_size(), before);
    })
    .join()
    .unwrap();
}

/// A `fork` child of a process whose CPU profiler runs. Stopping the inherited profiler (or
/// dropping it) panicked, joining a collector thread the child does not have, and a profiler
/// of the child's own could not start (`AlreadyRunning`). Both work now, and the parent's
/// profiler goes on sampling. The inherited profiler's profile is empty and says whose it
/// was (`Stats::inherited_from`): it gave the parent's samples from before the fork, under the
/// parent's thread ids, as if they were the child's (found by outside use in the twentieth
/// round).
#[test]
fn a_fork_child_stops_the_inherited_profiler_and_starts_its_own() {
    let _s = serial();
    let _w = Watchdog::new("fork child", 60);
    let p = CpuProfiler::start(Config::default()).unwrap();
    spin(Duration::from_millis(100), 3);
    let parent = std::process::id();
    // SAFETY: fork; the child runs only the code below and leaves through _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            spin(Duration::from_millis(100), 5);
            let inherited = p.stop();
            if inherited.stats.inherited_from != Some(parent)
                || !inherited.stacks.is_empty()
                || !inherited.threads.is_empty()
                || inherited.stats.recorded != 0
                || inherited.duration != Duration::ZERO
            {
                return 4;
            }
            let q = CpuProfiler::start(Config::default()).expect("a profiler in the child");
            spin(Duration::from_millis(300), 7);
            if q.stop().stats.recorded == 0 {
                3
            } else {
                0
            }
        }))
        .unwrap_or(2);
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child: status {status:#x} (2: a panic, 3: no samples, 4: the inherited \
         profiler's profile was not empty or not marked)"
    );
    spin(Duration::from_millis(200), 9);
    let prof = p.stop();
    assert!(prof.stats.recorded > 0);
}

/// A library unloaded while the profiler runs: the profile is named with the modules loaded
/// when it is written, so its samples would be named after whatever is mapped there then
/// (another library loaded at the same address took them all, silently). `Stats::unloaded`
/// counts the unloads, and `to_profile` warns.
#[test]
fn a_library_unloaded_while_profiling_is_counted() {
    let _s = serial();
    let path = std::env::temp_dir().join(format!("unwind-unload-{}.so", std::process::id()));
    let h = common::tools::dlopen_libm_copy(&path);
    let p = CpuProfiler::start(Config::default()).unwrap();
    spin(Duration::from_millis(50), 11);
    // SAFETY: closes the handle opened above; nothing of the library is in use.
    assert_eq!(unsafe { libc::dlclose(h) }, 0);
    let prof = p.stop();
    assert!(prof.stats.unloaded >= 1, "{:?}", prof.stats);
    let q = CpuProfiler::start(Config::default()).unwrap();
    spin(Duration::from_millis(50), 12);
    let prof = q.stop();
    assert_eq!(prof.stats.unloaded, 0, "{:?}", prof.stats);
}

/// The profilers' own threads (the collector, the module watcher) are not sampled: with a wall
/// clock their idle waits were two thirds of a one-thread program's samples (found by outside
/// use in the twentieth round: `go tool pprof -tags` showed `unwind-cpu-coll` and
/// `unwind-modules` beside the program's thread, each with as many samples).
#[test]
fn the_profilers_own_threads_are_not_sampled() {
    let _s = serial();
    let _w = Watchdog::new("own threads", 120);
    unwind::init();
    let p = CpuProfiler::start(Config {
        frequency_hz: 200,
        clock: Clock::Wall,
        ..Config::default()
    })
    .unwrap();
    let mut x = 1;
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_millis(600) {
        x = spin(Duration::from_millis(1), x);
    }
    black_box(x);
    let prof = p.stop();
    // Wall time is labelled so (it said `cpu`: found by outside use in the twenty-fifth round).
    let pp = prof.to_profile(&ProfileKind::Cpu.policy(), &Classifier::new());
    let wall = ("wall".to_string(), "nanoseconds".to_string());
    assert_eq!(pp.sample_types[1], wall);
    assert_eq!(pp.period_type, wall);
    assert_eq!(pp.default_sample_type.as_deref(), Some("wall"));
    let names: Vec<(&str, u64)> = prof
        .threads
        .iter()
        .map(|t| (t.name.as_str(), t.stacks.iter().map(|(_, n)| n).sum()))
        .collect();
    assert!(
        names.iter().all(|(n, _)| !n.starts_with("unwind-")),
        "{names:?}"
    );
    // This test's thread was sampled all along (200 Hz for 0.6 s: ~120).
    let me = std::thread::current().name().unwrap_or("").to_string();
    let mine: u64 = names
        .iter()
        .filter(|(n, _)| me.starts_with(n) || n.is_empty())
        .map(|(_, c)| c)
        .sum();
    assert!(mine >= 40, "{me}: {names:?}");
}

/// An `ITIMER_PROF` the program arms while a process-timer profile runs is left armed at
/// stop: stop gave back the timer saved at the start (none), disarming the program's (found by
/// outside use in the twenty-fifth round).
#[test]
fn a_process_timer_the_program_arms_meanwhile_is_left_armed() {
    let _s = serial();
    let _w = Watchdog::new("own itimer", 120);
    unwind::init();
    let p = CpuProfiler::start(Config {
        timer: TimerMode::Process,
        ..Config::default()
    })
    .unwrap();
    spin(Duration::from_millis(30), 3);
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 7000,
    };
    let mine = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: valid itimervals.
    assert_eq!(
        unsafe { libc::setitimer(libc::ITIMER_PROF, &mine, std::ptr::null_mut()) },
        0
    );
    spin(Duration::from_millis(30), 4);
    let _ = p.stop();
    // SAFETY: itimerval is plain data; getitimer fills it.
    let mut now: libc::itimerval = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getitimer(libc::ITIMER_PROF, &mut now) };
    // SAFETY: all zeroes: a disarmed timer.
    let off: libc::itimerval = unsafe { std::mem::zeroed() };
    // SAFETY: disarms it again (SIGPROF is ignored after stop meanwhile).
    unsafe { libc::setitimer(libc::ITIMER_PROF, &off, std::ptr::null_mut()) };
    assert_eq!(
        (now.it_interval.tv_sec, now.it_interval.tv_usec),
        (0, 7000),
        "the program's timer was disarmed"
    );
}

static FOREIGN_TICKS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_sigprof(_: libc::c_int) {
    FOREIGN_TICKS.fetch_add(1, Ordering::Relaxed);
}

/// A SIGPROF handler the program installs after the start takes the profiler's signals: the
/// profile says why it is short (it was empty, and the warning blamed short-lived threads:
/// found by outside use in the twenty-fifth round).
#[test]
fn a_sigprof_handler_installed_after_the_start_is_said() {
    let _s = serial();
    let _w = Watchdog::new("own handler", 120);
    unwind::init();
    let p = CpuProfiler::start(Config::default()).unwrap();
    // SAFETY: a handler that only bumps an atomic (async-signal-safe); plain sigaction data.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count_sigprof as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut()), 0);
    }
    spin(Duration::from_millis(300), 5);
    let prof = p.stop();
    // SAFETY: SIG_IGN: a timer signal still pending is dropped.
    unsafe { libc::signal(libc::SIGPROF, libc::SIG_IGN) };
    assert!(FOREIGN_TICKS.load(Ordering::Relaxed) > 0);
    assert!(prof.stats.handler_replaced, "{:?}", prof.stats);
    let w = prof.warnings();
    assert!(
        w.len() == 1 && w[0].contains("installed its own SIGPROF handler"),
        "{w:?}"
    );
}

#[inline(never)]
fn blocked_worker(budget: Duration) -> u64 {
    spin(budget, 77)
}

/// A thread that blocks SIGPROF (as a library's helper threads block every signal) gets no
/// samples: the profile says so, not that threads lived too briefly (found by outside use in
/// the twenty-fifth round: it blamed short-lived threads and pointed at the process timer).
#[test]
fn a_thread_that_blocks_sigprof_is_said() {
    let _s = serial();
    let _w = Watchdog::new("blocked sigprof", 120);
    unwind::init();
    let p = CpuProfiler::start(Config::default()).unwrap();
    let h = std::thread::spawn(|| {
        // SAFETY: a full set, this new thread's own mask.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        }
        black_box(blocked_worker(Duration::from_millis(400)))
    });
    black_box(h.join().unwrap());
    let prof = p.stop();
    assert_eq!(prof.stats.sigprof_blocked, 1, "{:?}", prof.stats);
    assert_eq!(samples_in(&prof.stacks, "blocked_worker"), 0);
    let w = prof.warnings();
    assert!(
        w.len() == 1 && w[0].starts_with("1 threads blocked SIGPROF"),
        "{w:?}"
    );
}

/// The profilers' own threads block every signal: a signal sent to the process goes to one of
/// the program's threads. They blocked none (their mask was the starting thread's), so the
/// kernel could hand them a process-directed signal the program's threads had blocked: a
/// `SIGTERM` meant for a `sigwait`ing thread killed the process; a `SIGALRM` handler ran
/// there, its CPU time out of the profile (found by outside use in the twenty-fifth round).
/// The profiler is started from a thread that blocks nothing, as a program starts it before it
/// blocks its signals; each `unwind-` thread's `SigBlk` must hold them all.
#[test]
fn the_profilers_own_threads_take_no_signal_meant_for_the_program() {
    let _s = serial();
    let _w = Watchdog::new("own threads' signals", 120);
    unwind::init();
    let p = std::thread::spawn(|| {
        // SAFETY: an empty set, this (new) thread's mask: it blocks nothing.
        let mut none: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        }
        CpuProfiler::start(Config::default()).unwrap()
    })
    .join()
    .unwrap();
    let mut own = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("unwind-") {
            continue;
        }
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let blk = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        own.push((comm.trim().to_string(), blk));
    }
    let _ = p.stop();
    assert!(
        own.len() >= 2,
        "the collector and the module watcher: {own:x?}"
    );
    for (comm, blk) in &own {
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGALRM,
            libc::SIGPROF,
            libc::SIGUSR1,
            libc::SIGCHLD,
        ] {
            assert!(
                blk & (1 << (sig - 1)) != 0,
                "{comm}: signal {sig} not blocked ({blk:x})"
            );
        }
    }
}

/// Threads that live shorter than the collector's 50 ms scan, one after another (the number
/// of threads never changes, so only the 500 ms full listing finds them): most of their CPU
/// time is not in the profile, and the profile says so (it held 4% of it without a word:
/// found by outside use). A thread that runs throughout is sampled in full, no warning.
#[test]
fn a_profile_that_missed_most_of_the_cpu_time_says_so() {
    let _s = serial();
    let _w = Watchdog::new("missed cpu", 120);
    unwind::init();
    let p = CpuProfiler::start(Config::default()).unwrap();
    // 80 threads of 10 ms each (wall time: under load, less CPU time).
    for i in 0..80 {
        let h = std::thread::spawn(move || spin(Duration::from_millis(10), i));
        black_box(h.join().unwrap());
    }
    let prof = p.stop();
    assert!(prof.stats.per_thread_cpu_timers, "{:?}", prof.stats);
    assert!(
        prof.stats.process_cpu >= Duration::from_millis(300),
        "{:?}",
        prof.stats
    );
    let w = prof.warnings();
    assert!(
        w.iter().any(|l| l.contains("of CPU time the process used")),
        "{w:?} {:?} {}",
        prof.stats,
        prof.total()
    );

    let p = CpuProfiler::start(Config::default()).unwrap();
    black_box(spin(Duration::from_millis(400), 3));
    let prof = p.stop();
    assert!(
        prof.warnings().is_empty(),
        "{:?} {:?}",
        prof.warnings(),
        prof.stats
    );
}

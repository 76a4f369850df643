//! The CPU and heap profilers where their per-thread timers or `/proc` fail them (found by
//! outside use): no timer can be made (`RLIMIT_SIGPENDING` of 0 makes `timer_create` fail with
//! `EAGAIN`), some threads' timers fail later, a PID namespace whose `/proc` is the parent
//! namespace's (thread ids there are not `gettid`'s), no `/proc` at all. Each runs in a child
//! process (this test binary again, alone), since it changes a process-wide limit or needs
//! `unshare`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};
use unwind::cpu::{Config, CpuProfile, CpuProfiler, Error, Threads, TimerMode};

#[global_allocator]
static A: unwind::heap::Sampling = unwind::heap::Sampling::new(std::alloc::System);

const CHILD: &str = "UNWIND_PROC_TIMERS_CHILD";

/// In the child (this binary run again for test `name`)? Otherwise runs it, through `wrap`
/// (a command and its arguments before the test binary) and returns its output, after
/// checking that it passed (see `common::tools::child_output`).
fn child_output(name: &str, wrap: &[&str]) -> Option<String> {
    common::tools::child_output(CHILD, name, wrap)
}

/// Can `unshare` run `args` here (root, or user namespaces)? Else a skip (a failure under CI).
fn unshare_works(args: &[&str]) -> bool {
    let ok = Command::new("unshare")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        common::skip::skip(&format!("`unshare {}` does not run here", args.join(" ")));
    }
    ok
}

#[inline(never)]
fn burn(ms: u64) -> u64 {
    let (t0, mut x) = (Instant::now(), 1u64);
    while t0.elapsed() < Duration::from_millis(ms) {
        for i in 0..100_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
    x
}

fn no_sigpending() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit; lowering a limit needs no privilege.
    assert_eq!(
        unsafe { libc::setrlimit(libc::RLIMIT_SIGPENDING, &zero) },
        0
    );
}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

/// `timer_create` for this thread as the profiler makes it: its errno, or 0.
fn raw_timer_create_errno() -> i32 {
    // SAFETY: sigevent is plain data.
    let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
    sev.sigev_notify = libc::SIGEV_THREAD_ID;
    sev.sigev_signo = libc::SIGPROF;
    sev.sigev_notify_thread_id = gettid();
    let mut t: libc::timer_t = std::ptr::null_mut();
    // SAFETY: valid pointers.
    if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut t) } == 0 {
        // SAFETY: the timer made just now, deleted once.
        unsafe { libc::timer_delete(t) };
        return 0;
    }
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

fn sigprof_action() -> usize {
    // SAFETY: sigaction is plain data; only reads the current action.
    unsafe {
        let mut cur: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(libc::SIGPROF, std::ptr::null(), &mut cur),
            0
        );
        cur.sa_sigaction
    }
}

/// With `RLIMIT_SIGPENDING` at 0 no timer can be made: `start` says `Error::Timer(EAGAIN)`
/// (it returned Ok and lost every sample), in both thread modes, and leaves nothing set up:
/// SIGPROF's handler is untouched and a process-timer profile (no per-thread timer) runs.
#[test]
fn a_start_where_no_timer_can_be_made_fails_with_its_errno() {
    if child_output(
        "a_start_where_no_timer_can_be_made_fails_with_its_errno",
        &[],
    )
    .is_some()
    {
        return;
    }
    no_sigpending();
    assert_eq!(raw_timer_create_errno(), libc::EAGAIN, "the premise");
    let before = sigprof_action();
    let r = CpuProfiler::start(Config::default()).map(|_| ());
    assert_eq!(r, Err(Error::Timer(libc::EAGAIN)));
    let _reg = unwind::cpu::register_thread();
    let registered = Config {
        threads: Threads::Registered,
        ..Config::default()
    };
    let r = CpuProfiler::start(registered).map(|_| ());
    assert_eq!(r, Err(Error::Timer(libc::EAGAIN)));
    assert_eq!(sigprof_action(), before, "the handler was left installed");
    // Nothing left running: a process-timer profile starts (and ITIMER_PROF needs no queue).
    let p = CpuProfiler::start(Config {
        timer: TimerMode::Process,
        ..Config::default()
    })
    .expect("a process-timer profile");
    burn(300);
    let cpu = p.stop();
    assert!(cpu.stats.recorded > 0, "{:?}", cpu.stats);
}

fn says_timer_errno(cpu: &CpuProfile) {
    assert_eq!(cpu.stats.timer_errno, Some(libc::EAGAIN), "{:?}", cpu.stats);
    let w = cpu.warnings().join("\n");
    assert!(
        w.contains("timer_create: errno 11") && !w.contains("lived shorter"),
        "{w}"
    );
}

/// A thread begun after the limit fell to 0 gets no timer: the profile names the failure
/// and its errno instead of blaming short-lived threads, with every thread sampled and with
/// registered threads only.
#[test]
fn threads_whose_timer_fails_are_said_with_the_errno() {
    if child_output("threads_whose_timer_fails_are_said_with_the_errno", &[]).is_some() {
        return;
    }
    let p = CpuProfiler::start(Config::default()).expect("start");
    no_sigpending();
    let h = std::thread::spawn(|| burn(400));
    burn(100);
    h.join().unwrap();
    let cpu = p.stop();
    says_timer_errno(&cpu);
    assert!(cpu.stats.timer_errors > 0);

    let _reg = unwind::cpu::register_thread();
    let p = CpuProfiler::start(Config {
        threads: Threads::Registered,
        ..Config::default()
    })
    // The limit holds this thread's timer back too: no start at all.
    .map(|_| ());
    assert_eq!(p, Err(Error::Timer(libc::EAGAIN)));
}

/// The same in `Threads::Registered` mode: the limit falls after the start, and a thread that
/// registers then gets no timer.
#[test]
fn a_registered_thread_whose_timer_fails_is_said_with_the_errno() {
    if child_output(
        "a_registered_thread_whose_timer_fails_is_said_with_the_errno",
        &[],
    )
    .is_some()
    {
        return;
    }
    let _reg = unwind::cpu::register_thread();
    let p = CpuProfiler::start(Config {
        threads: Threads::Registered,
        ..Config::default()
    })
    .expect("start");
    no_sigpending();
    let h = std::thread::spawn(|| {
        let _reg = unwind::cpu::register_thread();
        burn(300)
    });
    burn(100);
    h.join().unwrap();
    let cpu = p.stop();
    says_timer_errno(&cpu);
}

/// `unshare --pid --fork` without `--mount-proc`: `/proc` is the parent namespace's, so its
/// thread ids are not `gettid`'s. Every timer failed (`EINVAL`, no sample) and the profilers'
/// own threads were taken for the program's threads that block SIGPROF; now the ids are
/// translated through each task's `NSpid:` line.
#[test]
fn a_pid_namespace_with_its_parent_s_proc_is_sampled() {
    const NAME: &str = "a_pid_namespace_with_its_parent_s_proc_is_sampled";
    if std::env::var(CHILD).as_deref() != Ok(NAME) {
        if unshare_works(&["--pid", "--fork", "true"]) {
            child_output(NAME, &["unshare", "--pid", "--fork"]);
        }
        return;
    }
    let link: i32 = std::fs::read_link("/proc/self")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    assert_ne!(link, pid, "the premise: /proc is another namespace's");
    assert_eq!(unwind::threads::proc_problem(), None);
    let p = CpuProfiler::start(Config::default()).expect("start");
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::Builder::new()
        .name("pidns-burner".into())
        .spawn(move || {
            tx.send(gettid()).unwrap();
            burn(400)
        })
        .unwrap();
    let burner = rx.recv().unwrap();
    burn(400);
    h.join().unwrap();
    let cpu = p.stop();
    let w = cpu.warnings();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(
        (cpu.stats.sigprof_blocked, cpu.stats.timer_errno),
        (0, None),
        "{:?}",
        cpu.stats
    );
    assert!(cpu.stats.recorded >= 20, "{:?}", cpu.stats);
    let b = cpu
        .threads
        .iter()
        .find(|t| t.tid == burner as u32)
        .unwrap_or_else(|| panic!("no sample of the burner {burner}: {:?}", cpu.threads));
    assert_eq!(b.name, "pidns-burner");
    assert!(cpu.threads.iter().any(|t| t.tid == gettid() as u32));
}

/// Without `/proc` (a mount namespace that unmounted it) both profilers say so: the CPU
/// profiler gave the starting thread a timer and its warnings name `/proc/self`; the heap
/// profiler's too. (Both said nothing: an empty CPU profile blamed short-lived threads.)
#[test]
fn without_proc_the_profilers_say_so() {
    const NAME: &str = "without_proc_the_profilers_say_so";
    if std::env::var(CHILD).as_deref() != Ok(NAME) {
        if unshare_works(&["-m", "sh", "-c", "umount -l /proc"]) {
            let exe = std::env::current_exe().unwrap();
            let script = format!(
                "umount -l /proc && exec {} {NAME} --exact --nocapture --test-threads=1",
                exe.display()
            );
            let out = Command::new("unshare")
                .args(["-m", "sh", "-c", &script])
                .env(CHILD, NAME)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success() && text.contains("1 passed"), "{text}");
        }
        return;
    }
    assert!(
        matches!(
            unwind::threads::proc_problem(),
            Some(unwind::threads::ProcProblem::Unreadable(_))
        ),
        "the premise: {:?}",
        unwind::threads::proc_problem()
    );
    let p = CpuProfiler::start(Config::default()).expect("start");
    burn(300);
    let cpu = p.stop();
    assert!(
        cpu.stats.recorded > 0,
        "the starting thread has a timer: {:?}",
        cpu.stats
    );
    let w = cpu.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("/proc/self is not readable") && w[0].contains("only the thread that"),
        "{w:?}"
    );
    unwind::heap::start(4096);
    let kept: Vec<Vec<u8>> = (0..500).map(|i| vec![0u8; 1000 + i]).collect();
    unwind::heap::stop();
    drop(kept);
    let w = unwind::heap::warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("/proc/self is not readable"), "{w:?}");
}

/// With `/proc` there, the heap profiler has nothing to say about it.
#[test]
fn with_proc_the_heap_profiler_says_nothing_of_it() {
    unwind::heap::start(1 << 20);
    unwind::heap::stop();
    assert!(unwind::heap::warnings().is_empty());
}

/// A program that a profiled process `exec`s, while the profile runs (a hot restart, an
/// exec-ing wrapper) or after it stopped: it must run to its end, with SIGPROF at its default
/// action. A process-timer profile's `ITIMER_PROF` outlived `execve`, and the new program,
/// SIGPROF back at the default action, was killed by it ("Profiling timer expired", 27.
/// round, outside use); after a stop, SIGPROF was left ignored, which `execve` keeps, so every
/// program started after a profile had it ignored.
#[test]
fn an_exec_d_program_is_not_killed_and_finds_sigprof_at_its_default() {
    const EXEC: &str = "UNWIND_EXEC_CHILD";
    // The program exec'd: one second of CPU in the shell (the timers would fire ~100 times),
    // then its own SIGPROF disposition (SigIgn bit 27 - 1).
    let script =
        "i=0; end=$(( $(date +%s) + 1 )); while [ $(date +%s) -lt $end ]; do i=$((i+1)); done; \
                  grep SigIgn /proc/self/status; echo survived";
    if let Ok(how) = std::env::var(EXEC) {
        let timer = if how.starts_with("process") {
            TimerMode::Process
        } else {
            TimerMode::PerThread
        };
        let p = CpuProfiler::start(Config {
            timer,
            frequency_hz: 1000,
            ..Config::default()
        })
        .expect("a profile");
        burn(100);
        let _profile = if how.ends_with("stopped") {
            Some(p.stop())
        } else {
            std::mem::forget(p);
            None
        };
        use std::os::unix::process::CommandExt;
        let e = Command::new("sh").args(["-c", script]).exec();
        panic!("exec: {e}");
    }
    for how in [
        "process running",
        "process stopped",
        "thread running",
        "thread stopped",
    ] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "an_exec_d_program_is_not_killed_and_finds_sigprof_at_its_default",
                "--exact",
                "--nocapture",
            ])
            .env(EXEC, how)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("survived"),
            "{how}: {} {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let ign = text
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap();
        assert_eq!(
            ign & 1 << (libc::SIGPROF - 1),
            0,
            "{how}: SIGPROF ignored: {ign:#x}"
        );
    }
}

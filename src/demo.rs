//! `unwind demo`: a workload that burns CPU and allocates on four kinds of stack, profiled, with
//! the report showing the user frames reached across each switch.
//!
//! Every worker thread runs, round after round, the same work in four places:
//! 1. on its own stack (`on_user_stack`),
//! 2. on a system stack ([`unwind::system_stack::run`], like Go's `systemstack`),
//! 3. inside a corosensei coroutine, resumed once per round,
//! 4. under `stacker::maybe_grow` with a red zone that forces a new `psm` stack segment.
//!
//! The CPU profiler samples it. The report counts, per place, how many samples reach
//! `demo_worker` (the thread's own frame, on the far side of every switch), prints the top
//! stacks with each crossing marked, shows one sample under every [`ProfileKind`]'s policy side
//! by side, and writes `cpu.pb.gz`, `cpu.folded` and `cpu.svg`. With `naive`, the walk ignores
//! the transition table: switch samples stop at the trampoline.
//!
//! The heap profiler samples the same run's allocations (when [`unwind::heap::Sampling`] is the
//! global allocator, as in the `unwind` binary) and the demo writes `heap.pb.gz`, `heap.folded`
//! and `heap.svg`: allocations made on the system stack are charged to the user function that
//! switched to it, as Go's heap profile would after proposal #66385.
//!
//! Output helpers ([`print_top`], `unwind::profile::write_outputs`) take any [`Profile`], so another sampler's
//! profile (a heap profile) is written and printed the same way.

use std::hint::black_box;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use unwind::cpu::{Config, CpuProfiler};
use unwind::policy::{Classifier, ProfileKind};
use unwind::profile::{write_outputs, Profile};
use unwind::runtime_names::{STACK_SWITCHERS, THREAD_START, UNWIND};
use unwind::symbols::Symbolizer;

/// Demo settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Walk without the transition table.
    pub naive: bool,
    /// Where the profiles go (created if missing).
    pub out: PathBuf,
    /// How long the workload runs.
    pub duration: Duration,
    /// Worker threads.
    pub threads: usize,
    /// Sampling frequency (Hz).
    pub frequency_hz: u32,
    /// Heap profiler mean sampling distance in bytes ([`DEMO_HEAP_RATE`]). The heap
    /// profile is only taken when [`unwind::heap::Sampling`] is the global allocator (the
    /// `unwind` binary's is).
    pub heap_rate: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            naive: false,
            out: PathBuf::from("profiles"),
            duration: Duration::from_secs(8),
            threads: 2,
            frequency_hz: unwind::cpu::DEFAULT_HZ,
            heap_rate: DEMO_HEAP_RATE,
        }
    }
}

/// The demo's heap sampling rate: one sample per 16 KiB allocated on average, so that an
/// 8-second run gives each place hundreds of samples (the profiler's default, 512 KiB like Go's
/// `MemProfileRate`, gives a few dozen). `--heap-rate` overrides it.
pub const DEMO_HEAP_RATE: u64 = 16 * 1024;

/// The four places the workload runs, and the leaf function that burns CPU in each.
pub const PLACES: [(&str, &str); 4] = [
    ("user stack", "user_stack_leaf"),
    ("system stack", "system_stack_leaf"),
    ("coroutine", "coroutine_leaf"),
    ("stacker segment", "stacker_leaf"),
];

/// The worker's own frame, reached across every switch by a complete walk.
pub const ROOT: &str = "demo_worker";

// ---------------------------------------------------------------------------------------------
// The workload. Each leaf has its own constants so that no two are merged into one function.

/// Size and number of the blocks each worker thread keeps alive (4 MiB per thread).
const RETAINED_BLOCK: usize = 64 * 1024;
const RETAINED_BLOCKS: usize = 64;

thread_local! {
    static RETAINED: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Burns CPU for about `budget` and allocates a little on the way; `salt` keeps the bodies
/// distinct.
#[inline(always)]
fn burn(budget: Duration, salt: u64) -> u64 {
    let start = Instant::now();
    let mut x = salt;
    let mut kept: Vec<Vec<u64>> = Vec::new();
    let mut round = 0u64;
    loop {
        round += 1;
        for i in 0..20_000u64 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i ^ salt));
        }
        // An allocation per round, some kept for a while (a heap profiler has something to see).
        let v: Vec<u64> = (0..64 + (x % 64)).map(|i| i ^ x).collect();
        x ^= v.iter().fold(0, |a, b| a ^ b);
        kept.push(v);
        if kept.len() > 32 {
            kept.clear();
        }
        // Now and then a bigger block that lives on in the thread's ring (replacing an older
        // one): what a heap profile's `inuse_space` shows at the end of the run.
        if round.is_multiple_of(64) {
            let block = vec![x as u8; RETAINED_BLOCK];
            RETAINED.with(|r| {
                let mut r = r.borrow_mut();
                if r.len() < RETAINED_BLOCKS {
                    r.push(block);
                } else {
                    r[(x >> 8) as usize % RETAINED_BLOCKS] = block;
                }
            });
        }
        if start.elapsed() >= budget {
            return x;
        }
    }
}

#[inline(never)]
fn user_stack_leaf(budget: Duration) -> u64 {
    burn(budget, 0x1111)
}

#[inline(never)]
fn on_user_stack(budget: Duration) -> u64 {
    black_box(user_stack_leaf(budget)) ^ 1
}

#[inline(never)]
fn system_stack_leaf(budget: Duration) -> u64 {
    burn(budget, 0x2222)
}

#[inline(never)]
fn on_system_stack(budget: Duration) -> u64 {
    let r = unwind::system_stack::run(|| black_box(system_stack_leaf(budget)));
    black_box(r) ^ 2
}

#[inline(never)]
fn coroutine_leaf(budget: Duration) -> u64 {
    burn(budget, 0x3333)
}

#[inline(never)]
fn in_coroutine(budget: Duration) -> u64 {
    black_box(coroutine_leaf(budget)) ^ 3
}

#[inline(never)]
fn stacker_leaf(budget: Duration) -> u64 {
    burn(budget, 0x4444)
}

#[inline(never)]
fn under_stacker(budget: Duration) -> u64 {
    // A red zone larger than what is left of this stack makes `maybe_grow` switch to a fresh
    // 256 KiB segment every time, as it would deep in a recursion.
    let red_zone = stacker::remaining_stack().unwrap_or(0) + 64 * 1024;
    let r = stacker::maybe_grow(red_zone, 256 * 1024, || black_box(stacker_leaf(budget)));
    black_box(r) ^ 4
}

type Co<'a> = corosensei::Coroutine<Duration, u64, u64, &'a mut corosensei::stack::DefaultStack>;

#[inline(never)]
fn resume_coroutine(co: &mut Co<'_>, budget: Duration) -> u64 {
    match co.resume(budget) {
        corosensei::CoroutineResult::Yield(v) | corosensei::CoroutineResult::Return(v) => {
            black_box(v)
        }
    }
}

/// One worker: the four places in turn until `stop`.
#[inline(never)]
fn demo_worker(stop: &AtomicBool, rounds: &AtomicU64, slice: Duration) -> u64 {
    use corosensei::stack::{DefaultStack, Stack};
    let _reg = unwind::cpu::register_thread();
    let mut acc = 0u64;
    let mut stack = DefaultStack::new(256 * 1024).expect("coroutine stack");
    // SAFETY: `stack` outlives the registration (dropped before it below).
    let registered = unsafe {
        unwind::coroutine::register_stack(stack.limit().get() as u64, stack.base().get() as u64)
    }
    .ok();
    {
        let mut co: Co<'_> = corosensei::Coroutine::with_stack(
            &mut stack,
            |y: &corosensei::Yielder<Duration, u64>, mut budget: Duration| loop {
                if budget.is_zero() {
                    return 0;
                }
                let v = in_coroutine(budget);
                budget = y.suspend(v);
            },
        );
        while !stop.load(Ordering::Relaxed) {
            acc ^= on_user_stack(slice);
            acc ^= on_system_stack(slice);
            acc ^= resume_coroutine(&mut co, slice);
            acc ^= under_stacker(slice);
            rounds.fetch_add(1, Ordering::Relaxed);
        }
        // Let the coroutine return so its stack unwinds cleanly.
        let _ = co.resume(Duration::ZERO);
    }
    drop(registered);
    acc
}

// ---------------------------------------------------------------------------------------------
// The report.

/// The classifier the demo applies policies with: `unwind`'s system-stack machinery, `stacker`,
/// `psm`, `corosensei` and the standard library's thread start are runtime; the system stack's
/// transition is the system switch.
pub fn classifier(sym: &Symbolizer) -> Classifier {
    let mut c = Classifier::new();
    for m in sym.modules() {
        for group in [UNWIND, STACK_SWITCHERS, THREAD_START] {
            c.add_symbol_prefixes(m.functions(), group);
        }
    }
    if let Some(id) = unwind::system_stack::transition_id() {
        c.add_system_switch(id);
    }
    c
}

/// The function that marks each place in a heap sample once the heap policy has cut the
/// runtime frames at the leaf end (on the system stack everything is runtime, so the sample
/// ends at the user function that called `system_stack::run`).
const HEAP_MARKERS: [&str; 4] = [
    "on_user_stack",
    "on_system_stack",
    "in_coroutine",
    "under_stacker",
];

/// The heap profiler's classifier for the demo: [`classifier`] plus the allocation internals
/// [`unwind::heap::is_runtime_name`] names.
fn heap_classifier(sym: &Symbolizer) -> Classifier {
    let mut c = classifier(sym);
    for m in sym.modules() {
        let funcs = m
            .functions()
            .filter(|(n, _, _)| unwind::heap::is_runtime_name(n));
        c.add_symbol_prefixes(funcs, &[""]);
    }
    c
}

/// The built-in transition whose return addresses contain `pc` (the frame where a walk
/// crossed to another stack).
fn switch_name(pc: u64) -> Option<&'static str> {
    let b = unwind::builtin::builtins()?;
    b.entries
        .iter()
        .find(|e| e.range.contains(pc))
        .map(|e| e.name)
        .or_else(|| {
            let r = unwind::system_stack::return_address();
            (pc == r).then_some("unwind system stack")
        })
}

/// Shortens `unwind::demo::on_system_stack::{{closure}}` to `on_system_stack::{{closure}}` and
/// drops hash suffixes.
fn short(name: &str) -> String {
    let n = name.strip_prefix("unwind::demo::").unwrap_or(name);
    match n.rfind("::h") {
        Some(i) if n.len() - i == 19 => n[..i].to_string(),
        _ => n.to_string(),
    }
}

/// Prints the `n` heaviest stacks of value `index` (samples with the same function names
/// merged), leaf first, marking each stack switch.
pub fn print_top(
    out: &mut dyn Write,
    title: &str,
    p: &Profile,
    sym: &Symbolizer,
    index: usize,
    n: usize,
) -> io::Result<()> {
    let total = p.total(index).max(1);
    // names -> (value, first sample with them)
    let mut groups: std::collections::HashMap<Vec<String>, (i64, usize)> = Default::default();
    for (i, s) in p.samples.iter().enumerate() {
        let v = s.values.get(index).copied().unwrap_or(0);
        groups.entry(p.names(s, sym)).or_insert((0, i)).0 += v;
    }
    let mut order: Vec<(Vec<String>, (i64, usize))> = groups.into_iter().collect();
    order.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
    let unit = p.sample_types.get(index).map_or("", |t| t.0.as_str());
    writeln!(out, "{title}")?;
    for (rank, (names, (v, first))) in order.iter().take(n).enumerate() {
        let s = &p.samples[*first];
        writeln!(
            out,
            "  #{} {:5.1}%  {v} {unit}",
            rank + 1,
            100.0 * *v as f64 / total as f64
        )?;
        for (k, (name, pc)) in names.iter().zip(&s.pcs).enumerate() {
            writeln!(out, "      {}", short(name))?;
            if k > 0 || !s.exact_leaf {
                if let Some(sw) = switch_name(*pc) {
                    if k + 1 == names.len() {
                        writeln!(
                            out,
                            "      ---- stack switch ({sw}): the walk ends here ----"
                        )?;
                    } else {
                        writeln!(
                            out,
                            "      ---- stack switch ({sw}): continued on the other stack ----"
                        )?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// One sample under every policy kind, side by side: a row per captured frame, a column per
/// kind, `x` where the kind keeps the frame.
fn print_policies(
    out: &mut dyn Write,
    frames: &[unwind::Frame],
    sym: &Symbolizer,
    c: &Classifier,
) -> io::Result<()> {
    let kept: Vec<std::ops::Range<usize>> = ProfileKind::ALL
        .iter()
        .map(|k| k.policy().apply(frames, c).frames)
        .collect();
    let names: Vec<String> = frames
        .iter()
        .map(|f| {
            let n = sym
                .lookup(f.lookup_pc())
                .map_or(format!("{:#x}", f.pc), |s| short(s.name));
            if f.via == unwind::Via::Transition {
                format!("[{}] {n}", f.stack)
            } else {
                n
            }
        })
        .collect();
    let w = names
        .iter()
        .map(|n| n.len().min(60))
        .max()
        .unwrap_or(10)
        .max(40);
    write!(out, "  {:w$}", "frame (leaf first; [n]: first on stack n)")?;
    for k in ProfileKind::ALL {
        write!(out, " {:>5}", k.name())?;
    }
    writeln!(out)?;
    for (i, n) in names.iter().enumerate() {
        let n: String = n.chars().take(60).collect();
        write!(out, "  {n:w$}")?;
        for r in &kept {
            write!(out, " {:>5}", if r.contains(&i) { "x" } else { "." })?;
        }
        writeln!(out)?;
    }
    Ok(())
}

fn names_of(frames: &[unwind::Frame], sym: &Symbolizer) -> Vec<String> {
    frames
        .iter()
        .map(|f| {
            sym.lookup(f.lookup_pc())
                .map_or(String::new(), |s| short(s.name))
        })
        .collect()
}

/// Runs the demo, printing the report to `out` and progress to stderr.
pub fn run(opts: &Options, out: &mut dyn Write) -> io::Result<()> {
    unwind::init();
    let cfg = Config {
        frequency_hz: opts.frequency_hz,
        naive: opts.naive,
        ..Config::default()
    };
    writeln!(
        out,
        "unwind demo: {} threads x 4 places (user stack, system stack, coroutine, stacker), {:.1} s, \
         CPU profiler at {} Hz per thread{}",
        opts.threads,
        opts.duration.as_secs_f64(),
        cfg.frequency_hz,
        if opts.naive { ", NAIVE walk (no transition table)" } else { "" }
    )?;
    // The heap profiler samples allocations wherever they happen (it always crosses switches);
    // it only sees them if `heap::Sampling` is the global allocator.
    let heap_on = !opts.naive;
    if heap_on {
        let sym = Symbolizer::for_current_process();
        unwind::heap::reset();
        unwind::heap::start_with_classifier(opts.heap_rate, heap_classifier(&sym));
    }
    let profiler = CpuProfiler::start(cfg).map_err(io::Error::other)?;
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let slice = Duration::from_millis(20);
    let workers: Vec<_> = (0..opts.threads.max(1))
        .map(|i| {
            let (stop, rounds) = (stop.clone(), rounds.clone());
            std::thread::Builder::new()
                .name(format!("demo-worker-{i}"))
                .spawn(move || demo_worker(&stop, &rounds, slice))
        })
        .collect::<io::Result<_>>()?;
    let t0 = Instant::now();
    let mut err = io::stderr();
    // On a terminal, one progress line rewritten in place; otherwise (a log, CI) a line a second.
    let tty = std::io::IsTerminal::is_terminal(&err);
    let mut printed = Duration::ZERO;
    while t0.elapsed() < opts.duration {
        std::thread::sleep(Duration::from_millis(250).min(opts.duration));
        let now = t0.elapsed();
        if !tty && now < opts.duration && now < printed + Duration::from_secs(1) {
            continue;
        }
        printed = now;
        let s = profiler.stats();
        let _ = write!(
            err,
            "{}  running {:4.1}/{:.1} s  rounds {:5}  cpu samples {:6}  dropped {}  heap samples {:5}{}",
            if tty { "\r" } else { "" },
            now.as_secs_f64(),
            opts.duration.as_secs_f64(),
            rounds.load(Ordering::Relaxed),
            s.recorded,
            s.dropped,
            unwind::heap::stats().samples,
            if tty { "" } else { "\n" }
        );
    }
    if tty {
        let _ = writeln!(err);
    }
    // The heap profile is taken while the workers still hold their retained blocks.
    let (heap_samples, hs) = if heap_on {
        unwind::heap::stop();
        let h = unwind::heap::snapshot();
        let st = unwind::heap::stats();
        (h, st)
    } else {
        (Vec::new(), unwind::heap::Stats::default())
    };
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let cpu = profiler.stop();
    if heap_on {
        unwind::heap::reset();
    }
    let sym = Symbolizer::for_current_process();
    let c = classifier(&sym);

    // Per place: samples whose leaf end is in its leaf function, and how many reach the root.
    let mut places = [(0u64, 0u64); 4];
    let mut example: [Option<&Vec<unwind::Frame>>; 4] = [None; 4];
    for (frames, count) in &cpu.stacks {
        let names = names_of(frames, &sym);
        for (i, (_, leaf)) in PLACES.iter().enumerate() {
            if names.iter().take(8).any(|n| n == leaf) {
                places[i].0 += count;
                if names.iter().any(|n| n == ROOT) {
                    places[i].1 += count;
                }
                if example[i].is_none() {
                    example[i] = Some(frames);
                }
            }
        }
    }
    let s = cpu.stats;
    writeln!(
        out,
        "\nCPU samples: {} (signals {} = recorded {} + dropped {}; walks cut short {})",
        cpu.total(),
        s.signals,
        s.recorded,
        s.dropped,
        s.truncated
    )?;
    writeln!(
        out,
        "  {:16} {:>8}  {:>20}",
        "place", "samples", "reach demo_worker"
    )?;
    for (i, (name, _)) in PLACES.iter().enumerate() {
        let (n, r) = places[i];
        writeln!(
            out,
            "  {name:16} {n:>8}  {r:>10} ({:5.1}%)",
            if n == 0 {
                0.0
            } else {
                100.0 * r as f64 / n as f64
            }
        )?;
    }
    let cpu_profile = cpu.to_profile(&ProfileKind::Cpu.policy(), &c);
    writeln!(out)?;
    // The top stack of each place, so that every kind of switch is shown.
    for (place, leaf) in PLACES {
        let mut sub = cpu_profile.clone();
        sub.samples.retain(|smp| {
            cpu_profile
                .names(smp, &sym)
                .iter()
                .take(8)
                .any(|n| short(n) == leaf)
        });
        if sub.samples.is_empty() {
            writeln!(out, "Top CPU stack in the {place}: no samples")?;
            continue;
        }
        print_top(
            out,
            &format!("Top CPU stack in the {place} (policy cpu, leaf first):"),
            &sub,
            &sym,
            0,
            1,
        )?;
    }
    if let Some(frames) = example[1] {
        writeln!(
            out,
            "\nOne system-stack sample under each profile kind's policy:"
        )?;
        print_policies(out, frames, &sym, &c)?;
    }
    writeln!(
        out,
        "\nAll samples under each kind's policy: the leaf each kind reports (top 5):"
    )?;
    for kind in ProfileKind::ALL {
        let p = cpu.to_profile(&kind.policy(), &c);
        let total = p.total(0).max(1);
        let mut leaves: std::collections::HashMap<String, i64> = Default::default();
        for smp in &p.samples {
            let leaf = p
                .names(smp, &sym)
                .first()
                .map_or("(nothing kept)".to_string(), |n| short(n));
            *leaves.entry(leaf).or_insert(0) += smp.values[0];
        }
        let mut leaves: Vec<(String, i64)> = leaves.into_iter().collect();
        leaves.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let line: Vec<String> = leaves
            .iter()
            .take(5)
            .map(|(n, v)| format!("{n} {:.0}%", 100.0 * *v as f64 / total as f64))
            .collect();
        writeln!(out, "  {:6} {}", kind.name(), line.join(", "))?;
    }
    let name = if opts.naive { "cpu-naive" } else { "cpu" };
    let mut files = write_outputs(&opts.out, name, &cpu_profile, &sym, 1)?;

    // The heap profile.
    let mut heap_places = [(0i64, 0i64); 4];
    if !heap_on {
        writeln!(
            out,
            "\nHeap profile: not taken with --naive (the heap profiler always crosses switches)."
        )?;
    } else if heap_samples.is_empty() {
        writeln!(
            out,
            "\nHeap profile: no samples (is unwind::heap::Sampling the global allocator?)"
        )?;
    } else {
        let hp = unwind::heap::to_profile(&heap_samples, opts.heap_rate);
        for smp in &hp.samples {
            let names: Vec<String> = hp.names(smp, &sym).iter().map(|n| short(n)).collect();
            for (i, m) in HEAP_MARKERS.iter().enumerate() {
                if names.iter().any(|n| n == m) {
                    heap_places[i].0 += smp.values[1];
                    if names.iter().any(|n| n == ROOT) {
                        heap_places[i].1 += smp.values[1];
                    }
                }
            }
        }
        writeln!(
            out,
            "\nHeap samples: {} (mean one per {} allocated; policy heap: runtime frames at \
             the leaf end dropped, the system stack counts as runtime)",
            hs.samples,
            if opts.heap_rate >= 1024 {
                format!("{} KiB", opts.heap_rate / 1024)
            } else {
                format!("{} bytes", opts.heap_rate)
            }
        )?;
        writeln!(
            out,
            "  {:16} {:>12}  {:>20}",
            "place", "alloc bytes", "reach demo_worker"
        )?;
        for (i, (name, _)) in PLACES.iter().enumerate() {
            let (n, r) = heap_places[i];
            writeln!(
                out,
                "  {name:16} {n:>12}  {r:>12} ({:5.1}%)",
                if n == 0 {
                    0.0
                } else {
                    100.0 * r as f64 / n as f64
                }
            )?;
        }
        writeln!(out)?;
        print_top(
            out,
            "Top heap stacks by alloc_space (policy heap, leaf first):",
            &hp,
            &sym,
            1,
            4,
        )?;
        files.extend(write_outputs(&opts.out, "heap", &hp, &sym, 1)?);
    }
    writeln!(out, "\nWrote:")?;
    for f in &files {
        writeln!(out, "  {}", f.display())?;
    }
    writeln!(out, "  (try: go tool pprof -top {})", files[0].display())?;
    Ok(())
}

//! The heap profiler as a program's global allocator: exact counts at rate 1, statistics at the
//! default rate, frees and reallocations, a sample taken on the system stack charged to the user
//! function that called `run`, concurrent threads, a SIGPROF storm, start/stop/reset cycles.
//!
//! The profiler is process-wide, so the tests take a lock and each one looks only at the
//! samples whose leaf (after the heap policy) is one of its own functions.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use unwind::heap::{self, HeapSample, Sampling};

#[global_allocator]
static ALLOC: Sampling = Sampling::new(std::alloc::System);

static LOCK: Mutex<()> = Mutex::new(());

/// Serialises the tests, resets the profiler, and aborts the process if a test hangs (a
/// deadlock must fail, not block CI).
fn setup() -> MutexGuard<'static, ()> {
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    heap::stop();
    heap::reset();
    watchdog();
    g
}

fn watchdog() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    LAST.store(now(), Ordering::Relaxed);
    if !STARTED.swap(true, Ordering::Relaxed) {
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            if now().saturating_sub(LAST.load(Ordering::Relaxed)) > 120 {
                eprintln!("heap_profiler: a test ran for 120 s: deadlock? aborting");
                std::process::abort();
            }
        });
    }
}

/// Demangled function name without hash of a return address.
fn name(pc: u64) -> String {
    common::name_of(pc.wrapping_sub(1))
        .map(|n| common::short(&rustc_demangle::demangle(n).to_string()))
        .unwrap_or_else(|| "?".into())
}

/// The samples whose leaf frame is the function `leaf`.
fn samples_at(profile: &[HeapSample], leaf: &str) -> Vec<HeapSample> {
    profile
        .iter()
        .filter(|s| s.pcs.first().is_some_and(|&pc| name(pc) == leaf))
        .cloned()
        .collect()
}

/// Sums of (alloc_objects, alloc_space, inuse_objects, inuse_space) at `leaf`.
fn totals(profile: &[HeapSample], leaf: &str) -> [i64; 4] {
    samples_at(profile, leaf).iter().fold([0; 4], |t, s| {
        [
            t[0] + s.alloc_objects,
            t[1] + s.alloc_space,
            t[2] + s.inuse_objects,
            t[3] + s.inuse_space,
        ]
    })
}

fn dump(profile: &[HeapSample]) -> String {
    let mut out = String::new();
    for s in profile.iter().take(15) {
        let names: Vec<String> = s.pcs.iter().take(6).map(|&pc| name(pc)).collect();
        out += &format!(
            "alloc {}/{} inuse {}/{}: {}\n",
            s.alloc_objects,
            s.alloc_space,
            s.inuse_objects,
            s.inuse_space,
            names.join(" <- ")
        );
    }
    out
}

#[inline(never)]
fn alloc_exact_counted(n: usize) -> usize {
    let mut total = 0;
    for i in 0..n {
        let v: Vec<u8> = Vec::with_capacity(black_box(100));
        total += black_box(&v).capacity() + i % 2;
    }
    total
}

#[test]
fn rate_one_counts_every_allocation_of_a_function() {
    let _g = setup();
    assert!(heap::is_installed());
    heap::start(1);
    black_box(alloc_exact_counted(1000));
    heap::stop();
    let p = heap::snapshot();
    assert_eq!(
        totals(&p, "alloc_exact_counted"),
        [1000, 100_000, 0, 0],
        "\n{}",
        dump(&p)
    );
    // The runtime frames at the leaf end (the wrapper, __rust_alloc, RawVec) are gone and the
    // caller is next.
    let s = &samples_at(&p, "alloc_exact_counted")[0];
    if cfg!(debug_assertions) {
        // (Release builds inline the test function into the harness's closure.)
        assert_eq!(
            name(s.pcs[1]),
            "rate_one_counts_every_allocation_of_a_function"
        );
    }
    let st = heap::stats();
    assert_eq!(
        st.dropped_stacks + st.untracked + st.dropped_reset,
        0,
        "{st:?}"
    );
    // `samples` counts what the stacks hold: every sample recorded, this function's 1000 and
    // whatever else the test thread allocated meanwhile.
    let raw: i64 = heap::snapshot_raw().iter().map(|s| s.alloc_objects).sum();
    assert_eq!(st.samples, raw as u64, "{st:?}");
    assert!(st.samples >= 1000, "{st:?}");
}

/// The program's own `Iterator` impl: its `next` allocates the strings it yields.
struct Words(usize);

impl Iterator for Words {
    type Item = String;
    #[inline(never)]
    fn next(&mut self) -> Option<String> {
        if self.0 == 0 {
            return None;
        }
        self.0 -= 1;
        let mut s = String::with_capacity(black_box(64));
        s.push('w');
        Some(s)
    }
}

#[inline(never)]
fn consume_words(n: usize) -> usize {
    Words(n).map(|w| black_box(w).capacity()).sum()
}

/// An allocation in the program's own trait impl of `Iterator` (or `FromIterator`,
/// `ToOwned`) is charged to the impl: `<Words as Iterator>::next` is the leaf, not its caller.
/// Every `<T as core::iter::..>` and `<T as alloc::..>` frame was taken for plumbing (found by
/// outside use in the twenty-fifth round: the impl was in no stack).
#[test]
fn an_allocation_in_the_program_s_own_trait_impl_is_charged_to_it() {
    let _g = setup();
    heap::start(1);
    black_box(consume_words(1000));
    heap::stop();
    let p = heap::snapshot();
    assert_eq!(totals(&p, "next")[..2], [1000, 64_000], "\n{}", dump(&p));
    let pc = samples_at(&p, "next")[0].pcs[0];
    let full = rustc_demangle::demangle(common::name_of(pc - 1).unwrap()).to_string();
    assert!(full.contains("Words as core::iter"), "{full}");
}

/// `depth` calls deep through `path_a`/`path_b` as the bits of `path` say, then one
/// allocation: `2^depth` distinct stacks.
#[inline(never)]
fn path_a(path: u32, depth: u32) -> usize {
    if depth == 0 {
        return black_box(Vec::<u8>::with_capacity(black_box(24))).capacity();
    }
    let n = if path & 1 == 0 {
        path_a(path >> 1, depth - 1)
    } else {
        path_b(path >> 1, depth - 1)
    };
    black_box(n) * 3 + 1
}

#[inline(never)]
fn path_b(path: u32, depth: u32) -> usize {
    if depth == 0 {
        return black_box(Vec::<u8>::with_capacity(black_box(24))).capacity();
    }
    let n = if path & 1 == 0 {
        path_a(path >> 1, depth - 1)
    } else {
        path_b(path >> 1, depth - 1)
    };
    black_box(n) * 5 + 2
}

#[test]
fn many_distinct_stacks_each_keep_their_samples() {
    let _g = setup();
    // 16384 distinct stacks, every allocation sampled: four times what the stack table held
    // before it grew by chunks (after 4096, every new stack's samples were dropped).
    const DEPTH: u32 = 14;
    heap::start(1);
    for p in 0..1u32 << DEPTH {
        black_box(path_a(p, DEPTH));
    }
    heap::stop();
    let st = heap::stats();
    assert_eq!(st.dropped_stacks, 0, "{st:?}");
    let p = heap::snapshot_raw();
    let leaves: Vec<&HeapSample> = p
        .iter()
        .filter(|s| {
            let n = name(s.pcs[0]);
            n.ends_with("path_a") || n.ends_with("path_b")
        })
        .collect();
    // Each path's allocation is its own stack, sampled once (a path's stack is its `DEPTH + 1`
    // frames of path_a/path_b, which differ in at least one).
    let sampled: i64 = leaves.iter().map(|s| s.alloc_objects).sum();
    assert_eq!(sampled, 1 << DEPTH, "{st:?}");
    assert_eq!(leaves.len(), 1 << DEPTH, "{st:?}");
    assert!(st.stacks >= 1 << DEPTH, "{st:?}");
}

#[test]
fn heap_profile_leaves_are_the_allocating_functions_not_inlined_plumbing() {
    let _g = setup();
    heap::start(1);
    black_box(alloc_exact_counted(100));
    heap::stop();
    let p = heap::to_profile(&heap::snapshot(), 1);
    let sym = unwind::symbols::Symbolizer::for_current_process();
    // With inlined frames (what `go tool pprof` shows): `Vec::with_capacity`, `RawVec` and
    // `__rust_alloc` are inlined into `alloc_exact_counted` in release builds; the profile's
    // leaf is still the allocating function, as the heap policy makes it for physical frames.
    let folded = p.folded_with_inlines(&sym, 1);
    let ours: Vec<&str> = folded
        .lines()
        .filter(|l| l.contains("alloc_exact_counted"))
        .collect();
    assert!(!ours.is_empty(), "{folded}");
    for l in ours {
        let stack = l.rsplit_once(' ').unwrap().0;
        let leaf = stack.rsplit(';').next().unwrap();
        assert!(
            leaf.ends_with("alloc_exact_counted"),
            "leaf {leaf:?} in {l}"
        );
        assert!(!heap::is_runtime_name(leaf), "{l}");
    }
}

#[inline(never)]
fn user_format(n: usize) -> usize {
    (0..n)
        .map(|i| black_box(format!("item number {i:>40}")).capacity())
        .sum()
}

#[inline(never)]
fn user_write(n: usize) -> usize {
    use std::fmt::Write;
    let mut s = String::new();
    for i in 0..n {
        write!(s, "{i:08x},").unwrap();
    }
    black_box(s).capacity()
}

/// Formatting allocates for its caller: `format!` and `write!` into a `String` (padded,
/// integers) are charged to the function that formats, not to `core::fmt`'s `padding`,
/// `pad_integral` or the `Option::map_or_else` `format!` is inlined through (found by outside
/// use in the twenty-sixth round: those were the flat owners of 79% of such a program's
/// bytes).
#[test]
fn formatting_allocations_are_charged_to_the_formatting_function() {
    let _g = setup();
    heap::start(1);
    black_box(user_format(2000));
    black_box(user_write(20_000));
    heap::stop();
    let p = heap::to_profile(&heap::snapshot(), 1);
    let sym = unwind::symbols::Symbolizer::for_current_process();
    let folded = p.folded_with_inlines(&sym, 1);
    let mut seen = [0, 0];
    for l in folded.lines() {
        let stack = l.rsplit_once(' ').unwrap().0;
        let leaf = stack.rsplit(';').next().unwrap();
        for (k, f) in ["user_format", "user_write"].iter().enumerate() {
            if stack.contains(f) {
                // The function or its closure (`format!` is in a closure of `map`).
                assert!(
                    leaf.starts_with(&format!("heap_profiler::{f}")),
                    "leaf {leaf:?} in {l}"
                );
                seen[k] += 1;
            }
        }
    }
    assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}\n{folded}");
}

/// Writing a profile (symbols, line tables, compression: tens of MB with debug info) is the
/// profiler's own work: the next heap profile does not charge it to the program (found by
/// outside use in the twentieth round: 71% of a second snapshot's `alloc_space` was the
/// first profile's writing).
#[test]
fn writing_a_profile_is_not_in_the_next_heap_profile() {
    let _g = setup();
    heap::start(1);
    black_box(alloc_exact_counted(100));
    // The CPU profiler's start, stop and profile, on this thread (its thread scan, timers,
    // buffers): not the program's either (found by outside use: 88% of a program's heap
    // profile that allocated nothing itself).
    let cpu = unwind::cpu::CpuProfiler::start(unwind::cpu::Config::default()).unwrap();
    let cpu = cpu.stop();
    let (policy, classifier) = (
        unwind::policy::ProfileKind::Cpu.policy(),
        unwind::heap::default_classifier(),
    );
    black_box(cpu.to_profile(&policy, &classifier));
    // Preparing the modules' CFI again, as a program does after `dlopen` (a plugin host that
    // did so saw 96% of its heap profile in it: found by outside use in the twenty-third round).
    black_box(unwind::modules::refresh());
    let mut p = heap::to_profile(&heap::snapshot(), 1);
    p.merge_identical();
    let sym = unwind::symbols::Symbolizer::for_current_process();
    let mut pb = Vec::new();
    p.write_pprof(&sym, &mut pb).unwrap();
    black_box(p.folded_with_inlines(&sym, 1));
    let mut svg = Vec::new();
    p.write_flamegraph(&sym, 1, "heap", &mut svg).unwrap();
    assert!(!pb.is_empty() && !svg.is_empty());
    heap::stop();
    let again = heap::to_profile(&heap::snapshot(), 1);
    let folded = again.folded(&sym, 1);
    assert!(folded.contains("alloc_exact_counted"), "{folded}");
    for writer in [
        "write_pprof",
        "to_pprof",
        "folded",
        "flamegraph",
        "LineTables",
        "inferno",
        "CpuProfiler",
        "to_profile",
        "merge_identical",
        "for_current_process",
        "modules::refresh",
    ] {
        assert!(
            !folded.lines().any(|l| l.contains(writer)),
            "{writer} in the heap profile:\n{folded}"
        );
    }
}

/// The profilers' own work on a thread (the CPU profiler's start and stop, a profile written)
/// leaves the thread's sampling as it was: what the program allocates right after is sampled
/// at the rate (it went unsampled for the next 4 MiB: none of these 2 MB, found by outside
/// use).
#[test]
fn the_profilers_own_work_leaves_the_thread_s_sampling_as_it_was() {
    let _g = setup();
    let rate = 4096;
    heap::start(rate);
    let before = totals(&heap::snapshot_raw(), "alloc_exact_counted")[0];
    // The CPU profiler started, then 1 MiB in 10 000 blocks of ~100 bytes (244 samples
    // expected at 4 KiB), then the CPU profiler stopped and its profile made, and a heap
    // profile written, then 1 MiB more.
    let cpu = unwind::cpu::CpuProfiler::start(Default::default()).unwrap();
    black_box(alloc_exact_counted(10_000));
    black_box(cpu.stop().to_profile(
        &unwind::policy::ProfileKind::Cpu.policy(),
        &heap::default_classifier(),
    ));
    let p = heap::to_profile(&heap::snapshot(), rate);
    let sym = unwind::symbols::Symbolizer::for_current_process();
    let mut pb = Vec::new();
    p.write_pprof(&sym, &mut pb).unwrap();
    black_box(pb);
    black_box(alloc_exact_counted(10_000));
    let after = totals(&heap::snapshot_raw(), "alloc_exact_counted")[0];
    heap::stop();
    let samples = after - before;
    assert!(
        (300..=700).contains(&samples),
        "{samples} samples of 2 MiB at a {rate}-byte rate (488 expected)"
    );
}

/// Separate heap blocks (the boxes are the point: one allocation each).
#[allow(clippy::vec_box)]
#[inline(never)]
fn keep_many(n: usize, out: &mut Vec<Box<[u8; 24]>>) {
    for i in 0..n {
        out.push(Box::new([i as u8; 24]));
    }
}

#[test]
fn rate_one_tracks_every_live_block_of_a_large_heap() {
    let _g = setup();
    // Every allocation sampled and 200 000 of them live at once: each must stay tracked
    // until its free (the live map held 65 536 and counted the rest as freed at once, so
    // `inuse_*` showed a third of the heap).
    const N: usize = 200_000;
    let mut kept = Vec::with_capacity(N);
    heap::start(1);
    keep_many(N, &mut kept);
    let live = heap::snapshot();
    drop(kept);
    heap::stop();
    let freed = heap::snapshot();
    let st = heap::stats();
    assert_eq!(st.untracked, 0, "{st:?}");
    assert_eq!(
        totals(&live, "keep_many"),
        [N as i64, 24 * N as i64, N as i64, 24 * N as i64],
        "{st:?}"
    );
    assert_eq!(
        totals(&freed, "keep_many"),
        [N as i64, 24 * N as i64, 0, 0],
        "{st:?}"
    );
}

const BIG: usize = 256 * 1024;

#[inline(never)]
fn alloc_here(n: usize) -> usize {
    let mut t = 0;
    for _ in 0..n {
        let v: Vec<u8> = Vec::with_capacity(black_box(BIG));
        t += black_box(&v).capacity() / 1024;
    }
    t
}

#[test]
fn default_rate_estimates_bytes_of_big_allocations() {
    let _g = setup();
    heap::start(heap::DEFAULT_RATE);
    assert_eq!(heap::rate(), 512 * 1024);
    let n = 4000;
    black_box(alloc_here(n));
    heap::stop();
    // Raw: every sample is one whole 256 KiB block; p(sampled) = 1 - exp(-1/2) = 0.393.
    let raw = totals(&heap::snapshot_raw(), "alloc_here");
    assert!(raw[0] > 0, "no samples");
    assert_eq!(raw[1], raw[0] * BIG as i64);
    let expected = n as f64 * (1.0 - (-0.5f64).exp());
    let sd = (n as f64 * 0.393 * 0.607).sqrt(); // about 31
    assert!(
        (raw[0] as f64 - expected).abs() < 6.0 * sd,
        "{} samples, expected {expected:.0} ± {sd:.0}",
        raw[0]
    );
    // Scaled: an estimate of the real total, 4000 blocks and 1000 MiB, within 15% (7 sigma).
    let p = heap::snapshot();
    let [objects, space, inuse_o, inuse_s] = totals(&p, "alloc_here");
    let real = (n * BIG) as f64;
    assert!(
        (space as f64 / real - 1.0).abs() < 0.15,
        "estimated {space} bytes, real {real}\n{}",
        dump(&p)
    );
    assert!((objects as f64 / n as f64 - 1.0).abs() < 0.15, "{objects}");
    assert_eq!((inuse_o, inuse_s), (0, 0));
}

#[inline(never)]
fn alloc_kept(n: usize, out: &mut Vec<Vec<u8>>) {
    for _ in 0..n {
        out.push(Vec::with_capacity(black_box(1000)));
    }
}

#[inline(never)]
fn realloc_here() -> Vec<u64> {
    let mut v: Vec<u64> = Vec::with_capacity(black_box(16));
    v.push(1);
    v.reserve_exact(black_box(1023));
    v
}

#[test]
fn inuse_goes_down_after_frees_and_follows_realloc() {
    let _g = setup();
    heap::start(1);
    let mut kept = Vec::with_capacity(100);
    alloc_kept(100, &mut kept);
    let grown = black_box(realloc_here());
    let p = heap::snapshot();
    assert_eq!(
        totals(&p, "alloc_kept"),
        [100, 100_000, 100, 100_000],
        "\n{}",
        dump(&p)
    );
    // realloc = free of the 16-word block, allocation of the 1024-word one, same function.
    assert_eq!(
        totals(&p, "realloc_here"),
        [2, 8 * (16 + 1024), 1, 8 * 1024],
        "\n{}",
        dump(&p)
    );
    kept.truncate(40);
    kept.shrink_to_fit();
    let p = heap::snapshot();
    assert_eq!(totals(&p, "alloc_kept"), [100, 100_000, 40, 40_000]);
    // Frees after stop are still seen.
    heap::stop();
    drop(kept);
    drop(grown);
    let p = heap::snapshot();
    assert_eq!(totals(&p, "alloc_kept"), [100, 100_000, 0, 0]);
    assert_eq!(totals(&p, "realloc_here"), [2, 8 * 1040, 0, 0]);
    assert_eq!(heap::stats().untracked, 0);
}

#[inline(never)]
fn alloc_two_kept(out: &mut Vec<Vec<u8>>) {
    // One call site: both blocks have the same stack.
    for _ in 0..2 {
        out.push(Vec::with_capacity(black_box(1000)));
    }
}

/// A block sampled at one rate and freed after `set_rate` is subtracted from the in-use
/// estimate at the weight it was added with (it was weighted at the new rate: a block sampled
/// at rate 1 and freed at 1 MiB took ~1049 objects off, and the estimate, kept at zero, lost
/// the other block too).
#[test]
fn a_free_after_set_rate_is_weighted_at_the_rate_its_block_was_sampled_at() {
    let _g = setup();
    heap::start(1);
    let mut kept = Vec::with_capacity(2);
    alloc_two_kept(&mut kept);
    heap::set_rate(1 << 20);
    assert_eq!(heap::rate(), 1 << 20);
    kept.truncate(1);
    let p = heap::snapshot();
    assert_eq!(
        totals(&p, "alloc_two_kept"),
        [2, 2000, 1, 1000],
        "\n{}",
        dump(&p)
    );
    // Eight more changes: the generations wrap, and the rate goes on being what was set.
    for r in [2, 3, 4, 5, 6, 7, 8, 1 << 20] {
        heap::set_rate(r);
        assert_eq!(heap::rate(), r);
    }
    heap::stop();
    drop(kept);
    let p = heap::snapshot();
    assert_eq!(totals(&p, "alloc_two_kept")[..2], [2, 2000]);
    heap::start(heap::DEFAULT_RATE);
    heap::stop();
}

#[inline(never)]
extern "C" fn alloc_under_a_trampoline() {
    black_box(Vec::<u8>::with_capacity(black_box(4096)));
}

/// A sample whose walk stops short of the root (here: above a call from code in no module,
/// with no CFI, that zeroed its frame pointer: a JIT's trampoline) is a cut stack in the
/// profile, as one cut at the depth limit is (`[truncated]` at its root end); before, it
/// looked complete.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_sample_whose_walk_stopped_short_is_marked_truncated() {
    let _g = setup();
    // push rbp; xor ebp, ebp; call rdi; pop rbp; ret
    let code: [u8; 8] = [0x55, 0x31, 0xed, 0xff, 0xd7, 0x5d, 0xc3, 0xcc];
    // SAFETY: a fresh anonymous page, written, then made executable (not writable) before it
    // runs; it is never unmapped (a sample may hold its address).
    let trampoline: extern "C" fn(extern "C" fn()) = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(code.as_ptr(), p.cast::<u8>(), code.len());
        assert_eq!(
            libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC),
            0
        );
        std::mem::transmute::<*mut libc::c_void, extern "C" fn(extern "C" fn())>(p)
    };
    heap::start(1);
    trampoline(alloc_under_a_trampoline);
    alloc_under_a_trampoline();
    heap::stop();
    let p = heap::snapshot();
    let at = samples_at(&p, "alloc_under_a_trampoline");
    let cut: Vec<bool> = at.iter().map(|s| s.truncated).collect();
    assert!(
        cut.contains(&true) && cut.contains(&false),
        "one cut stack (under the trampoline), one whole: {cut:?}\n{}",
        dump(&p)
    );
    let prof = heap::to_profile(&p, 1);
    assert!(prof.samples.iter().any(|s| s.truncated));
}

#[inline(never)]
fn alloc_on_system_stack(n: usize) -> usize {
    let mut t = 0;
    for _ in 0..n {
        let v: Vec<u8> = Vec::with_capacity(black_box(4321));
        t += black_box(&v).capacity();
    }
    t
}

#[inline(never)]
fn user_calls_run(n: usize) -> usize {
    let t = unwind::system_stack::run(|| alloc_on_system_stack(n));
    black_box(t) + 1
}

#[test]
fn allocation_on_the_system_stack_is_charged_to_the_caller_of_run() {
    let _g = setup();
    unwind::system_stack::map_thread_stack();
    heap::start(1);
    black_box(user_calls_run(10));
    heap::stop();
    let p = heap::snapshot();
    // The sample crossed the switch: it starts at the user function that called `run`; the
    // closure and `alloc_on_system_stack` (system side) are runtime and gone.
    let t = totals(&p, "user_calls_run");
    assert_eq!(t, [10, 43_210, 0, 0], "\n{}", dump(&p));
    for s in samples_at(&p, "user_calls_run") {
        let names: Vec<String> = s.pcs.iter().map(|&pc| name(pc)).collect();
        assert!(
            !names.iter().any(|n| n == "alloc_on_system_stack"),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n == "run"), "{names:?}");
        if cfg!(debug_assertions) {
            assert_eq!(
                names[1], "allocation_on_the_system_stack_is_charged_to_the_caller_of_run",
                "{names:?}"
            );
        }
    }
    assert!(samples_at(&p, "alloc_on_system_stack").is_empty());
}

#[inline(never)]
fn thread_worker_allocs(n: usize, size: usize) -> usize {
    // One allocation for `keep` itself (it never grows: cleared at 65 of 65).
    let mut keep = Vec::with_capacity(65);
    let mut t = 0;
    for i in 0..n {
        let v: Vec<u8> = Vec::with_capacity(black_box(size));
        t += v.capacity();
        // Keep some alive for a while, so the map holds blocks from every thread at once.
        if i % 4 == 0 {
            keep.push(v);
        }
        if keep.len() == 65 {
            keep.clear();
        }
    }
    black_box(keep);
    t
}

#[test]
fn threads_allocating_concurrently() {
    let _g = setup();
    heap::start(1);
    let n = 5000;
    let threads: Vec<_> = (0..4)
        .map(|i| std::thread::spawn(move || thread_worker_allocs(n, 100 * (i + 1))))
        .collect();
    let bytes: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    heap::stop();
    let p = heap::snapshot();
    // Each thread: n blocks plus its `keep` vector (65 x 24 bytes).
    let t = totals(&p, "thread_worker_allocs");
    assert_eq!(t[0], 4 * (n as i64 + 1), "{t:?}\n{}", dump(&p));
    assert_eq!(t[1], bytes as i64 + 4 * 65 * 24, "{t:?} vs {bytes}");
    assert_eq!((t[2], t[3]), (0, 0), "everything was freed");
    let st = heap::stats();
    assert_eq!(
        st.dropped_stacks + st.untracked + st.dropped_reset,
        0,
        "{st:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// SIGPROF storm.

static HANDLED: AtomicU64 = AtomicU64::new(0);
static HANDLER_FRAMES: AtomicU64 = AtomicU64::new(0);
static STORM_STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigprof(_sig: libc::c_int, _info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    let mut buf = [unwind::Frame::EMPTY; 64];
    let n = unwind::capture(&mut buf);
    HANDLED.fetch_add(1, Ordering::Relaxed);
    HANDLER_FRAMES.fetch_add(n as u64, Ordering::Relaxed);
}

#[inline(never)]
fn storm_alloc(size: usize) -> usize {
    let v: Vec<u8> = Vec::with_capacity(black_box(size));
    black_box(&v).capacity()
}

/// This thread's first `system_stack::run`, which registers its system stack (`unwind`'s
/// registry allocates for that): runtime work, charged to the caller of `run` as Go charges
/// `systemstack`'s allocations, so to this function rather than to `storm_worker`'s counts.
#[inline(never)]
fn warm_up_system_stack() {
    unwind::system_stack::run(|| black_box(()));
    black_box(());
}

#[inline(never)]
fn storm_worker(i: usize) -> (u64, u64) {
    warm_up_system_stack();
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut k = 0usize;
    while !STORM_STOP.load(Ordering::Relaxed) {
        let size = 64 + (k * 37 + i * 11) % 4000;
        let got = if k.is_multiple_of(8) {
            unwind::system_stack::run(|| storm_alloc(size))
        } else {
            storm_alloc(size)
        };
        assert_eq!(got, size);
        count += 1;
        bytes += size as u64;
        k += 1;
    }
    (count, bytes)
}

fn set_timer(usec: i64) {
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: usec as libc::suseconds_t,
    };
    let it = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: plain setitimer call with valid pointers.
    assert_eq!(
        unsafe { libc::setitimer(libc::ITIMER_PROF, &it, std::ptr::null_mut()) },
        0
    );
}

#[test]
fn sigprof_storm_with_heap_profiler_does_not_deadlock() {
    let _g = setup();
    // SAFETY: installs a SA_SIGINFO handler that only captures into a stack buffer and bumps
    // atomics (async-signal-safe).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigprof
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut()), 0);
    }
    // Every allocation sampled: the capture runs inside the allocator as often as possible,
    // and the counts must add up exactly.
    heap::start(1);
    HANDLED.store(0, Ordering::Relaxed);
    STORM_STOP.store(false, Ordering::Relaxed);
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                // SAFETY: pthread_self has no preconditions.
                tx.send(unsafe { libc::pthread_self() } as usize).unwrap();
                drop(tx);
                storm_worker(i)
            })
        })
        .collect();
    let tids: Vec<usize> = (0..4).map(|_| rx.recv().unwrap()).collect();
    // ITIMER_PROF at 5 kHz of process CPU time (the kernel delivers it at its tick rate,
    // typically a few hundred per second), plus a thread sending SIGPROF to each worker
    // every 200 µs: the real storm.
    set_timer(200);
    let sender_stop = std::sync::Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = sender_stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for &t in &tids {
                    // SAFETY: the workers are alive until the sender has stopped (joined
                    // below, before STORM_STOP), so each pthread_t is valid.
                    unsafe { libc::pthread_kill(t as libc::pthread_t, libc::SIGPROF) };
                    sent += 1;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            sent
        })
    };
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    sender_stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    set_timer(0);
    STORM_STOP.store(true, Ordering::Relaxed);
    let done: Vec<(u64, u64)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    heap::stop();
    assert!(t0.elapsed() < Duration::from_secs(60));
    let handled = HANDLED.load(Ordering::Relaxed);
    assert!(
        handled > sent / 10,
        "only {handled} SIGPROF handled, {sent} sent"
    );
    assert!(HANDLER_FRAMES.load(Ordering::Relaxed) > handled);
    let count: u64 = done.iter().map(|d| d.0).sum();
    let bytes: u64 = done.iter().map(|d| d.1).sum();
    let p = heap::snapshot();
    let t = totals(&p, "storm_alloc");
    let st = heap::stats();
    assert_eq!(
        st.dropped_stacks + st.untracked + st.dropped_reset,
        0,
        "{st:?}"
    );
    // On the system stack the sample is charged to `storm_alloc`'s caller's caller side:
    // `run` is runtime, so those land on `storm_worker`.
    let on_sys = totals(&p, "storm_worker");
    assert_eq!(
        (t[0] + on_sys[0]) as u64,
        count,
        "{handled} signals; storm_alloc {t:?}, storm_worker {on_sys:?}\n{}",
        dump(&p)
    );
    assert_eq!((t[1] + on_sys[1]) as u64, bytes);
    assert!(on_sys[0] > 0 && t[0] > 0);
    assert_eq!((t[2], t[3], on_sys[2], on_sys[3]), (0, 0, 0, 0));
    eprintln!(
        "storm: {count} allocations sampled, {handled} SIGPROF handled ({sent} sent) in {:?}",
        t0.elapsed()
    );
}

/// Boxes of 48 bytes each (the point is one allocation per element).
type Blocks = Vec<Box<[u8; 48]>>;

#[inline(never)]
#[allow(clippy::vec_box)]
fn cycle_alloc(n: usize, out: &mut Blocks) {
    for _ in 0..n {
        out.push(Box::new([black_box(7u8); 48]));
    }
}

#[inline(never)]
fn thread_born_while_profiling() -> usize {
    let v: Vec<u8> = Vec::with_capacity(black_box(777));
    black_box(&v).capacity()
}

#[test]
fn start_stop_reset_cycles() {
    let _g = setup();
    let mut held = Vec::new();
    for cycle in 1..=10i64 {
        heap::start(1);
        assert!(heap::is_running());
        let mut v = Vec::with_capacity(10);
        cycle_alloc(10, &mut v);
        held.push(v);
        // A thread that starts and exits while profiling.
        std::thread::spawn(|| black_box(thread_born_while_profiling()))
            .join()
            .unwrap();
        heap::stop();
        assert!(!heap::is_running());
        // Not counted: profiler stopped.
        let mut v = Vec::with_capacity(5);
        cycle_alloc(5, &mut v);
        held.push(v);
        let p = heap::snapshot();
        let t = totals(&p, "cycle_alloc");
        assert_eq!(t[0], 10 * cycle, "cycle {cycle}\n{}", dump(&p));
        assert_eq!(t[1], 480 * cycle);
        assert_eq!(t[2], 10 * cycle);
        assert_eq!(totals(&p, "thread_born_while_profiling")[0], cycle);
    }
    held.clear();
    let p = heap::snapshot();
    assert_eq!(totals(&p, "cycle_alloc"), [100, 4800, 0, 0]);
    heap::reset();
    assert!(samples_at(&heap::snapshot(), "cycle_alloc").is_empty());
    assert_eq!(heap::stats().tracked, 0);
    // After a reset with blocks alive, their frees are ignored (not negative).
    heap::start(1);
    let mut keep = Vec::with_capacity(3);
    cycle_alloc(3, &mut keep);
    heap::stop();
    heap::reset();
    drop(keep);
    assert!(samples_at(&heap::snapshot(), "cycle_alloc").is_empty());
    // Rate changes take effect at once on this thread.
    heap::start(heap::DEFAULT_RATE);
    heap::set_rate(1);
    let mut v = Vec::with_capacity(8);
    cycle_alloc(4, &mut v);
    heap::set_rate(0);
    cycle_alloc(4, &mut v);
    drop(v);
    heap::stop();
    assert_eq!(totals(&heap::snapshot(), "cycle_alloc")[0], 4);
}

#[inline(never)]
fn other_thread_allocs(n: usize) -> usize {
    let mut t = 0;
    for _ in 0..n {
        let v: Vec<u8> = Vec::with_capacity(black_box(1024));
        t += black_box(&v).capacity();
    }
    t
}

/// A thread that was already allocating before `start` picks the start up within 4 MiB of
/// its own allocations (its countdown looks at the profiler's state at least that often), and
/// a `stop` made on another thread holds at once for it.
#[test]
fn start_and_stop_reach_a_thread_that_already_runs() {
    let _g = setup();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<usize>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        // Allocations while the profiler is stopped: the thread's countdown is drawn now.
        black_box(other_thread_allocs(300));
        done_tx.send(()).unwrap();
        while let Ok(n) = go_rx.recv() {
            black_box(other_thread_allocs(n));
            done_tx.send(()).unwrap();
        }
    });
    done_rx.recv().unwrap();
    heap::start(1);
    // 8 MiB in 1 KiB blocks: at most the first 4 MiB go unsampled.
    go_tx.send(8192).unwrap();
    done_rx.recv().unwrap();
    let sampled = totals(&heap::snapshot_raw(), "other_thread_allocs")[0];
    assert!(
        (8192 - 4096 - 1..=8192).contains(&sampled),
        "{sampled} of 8192 sampled"
    );
    heap::stop();
    go_tx.send(1000).unwrap();
    done_rx.recv().unwrap();
    assert_eq!(
        totals(&heap::snapshot_raw(), "other_thread_allocs")[0],
        sampled,
        "allocations after stop were sampled"
    );
    drop(go_tx);
    worker.join().unwrap();
}

#[inline(never)]
fn alloc_in_coroutine(n: usize) -> usize {
    let mut t = 0;
    for _ in 0..n {
        let v: Vec<u8> = Vec::with_capacity(black_box(5555));
        t += black_box(&v).capacity();
    }
    t
}

#[inline(never)]
fn resumes_for_heap() -> usize {
    use corosensei::stack::{DefaultStack, Stack};
    use corosensei::{Coroutine, CoroutineResult};
    let mut stack = DefaultStack::new(128 * 1024).unwrap();
    // SAFETY: `stack` outlives `reg`, which is dropped first.
    let reg = unsafe {
        unwind::coroutine::register_stack(stack.limit().get() as u64, stack.base().get() as u64)
    }
    .unwrap();
    let mut co = Coroutine::with_stack(&mut stack, |_y, ()| alloc_in_coroutine(3));
    let r = match co.resume(()) {
        CoroutineResult::Return(r) => r,
        CoroutineResult::Yield(()) => unreachable!(),
    };
    drop(co);
    drop(reg);
    black_box(r)
}

#[test]
fn allocation_in_a_coroutine_reaches_the_resumer() {
    let _g = setup();
    heap::start(1);
    black_box(resumes_for_heap());
    heap::stop();
    let p = heap::snapshot();
    // A coroutine switch is not a system switch: the allocating function stays the leaf, and
    // the stack continues past the switch into the code that resumed the coroutine.
    assert_eq!(
        totals(&p, "alloc_in_coroutine"),
        [3, 3 * 5555, 0, 0],
        "\n{}",
        dump(&p)
    );
    for s in samples_at(&p, "alloc_in_coroutine") {
        let names: Vec<String> = s.pcs.iter().map(|&pc| name(pc)).collect();
        assert!(
            names.iter().any(|n| n == "resumes_for_heap"),
            "did not cross the coroutine switch: {names:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A signal handler that allocates while its thread is inside the sampling path. glibc's malloc
// is not async-signal-safe, so this uses a second wrapper around a lock-free bump allocator
// (which is): the wrapper feeds the same process-wide profiler.

struct Bump;

const ARENA: usize = 1 << 20;
static ARENA_MEM: [AtomicU64; ARENA / 8] = {
    #[allow(clippy::declare_interior_mutable_const)]
    const Z: AtomicU64 = AtomicU64::new(0);
    [Z; ARENA / 8]
};
static ARENA_NEXT: AtomicU64 = AtomicU64::new(0);

// SAFETY: hands out disjoint 64-byte-aligned chunks of a static arena (wrapping around; the
// tests below free every block right away, long before the arena wraps onto it); never fails
// for layouts up to 64 bytes and alignment 64, returns null otherwise.
unsafe impl std::alloc::GlobalAlloc for Bump {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        if l.size() > 64 || l.align() > 64 {
            return std::ptr::null_mut();
        }
        let chunk = ARENA_NEXT.fetch_add(1, Ordering::Relaxed) as usize % (ARENA / 64 - 1);
        let base = ARENA_MEM.as_ptr() as usize;
        let aligned = (base + 63) & !63;
        (aligned + chunk * 64) as *mut u8
    }
    unsafe fn dealloc(&self, _p: *mut u8, _l: std::alloc::Layout) {}
}

static BUMP: Sampling<Bump> = Sampling::new(Bump);
static IN_HANDLER_ALLOCS: AtomicU64 = AtomicU64::new(0);

#[inline(never)]
fn alloc_in_handler() {
    let l = std::alloc::Layout::from_size_align(24, 8).unwrap();
    // SAFETY: a valid layout; the block is freed right away with the same layout.
    unsafe {
        let p = std::alloc::GlobalAlloc::alloc(&BUMP, l);
        assert!(!p.is_null());
        std::alloc::GlobalAlloc::dealloc(&BUMP, p, l);
    }
}

extern "C" fn on_sigusr2(_sig: libc::c_int, _info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    alloc_in_handler();
    IN_HANDLER_ALLOCS.fetch_add(1, Ordering::Relaxed);
}

#[inline(never)]
fn bump_worker(stop: &AtomicBool) -> u64 {
    let l = std::alloc::Layout::from_size_align(40, 8).unwrap();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: as in `alloc_in_handler`.
        unsafe {
            let p = std::alloc::GlobalAlloc::alloc(&BUMP, l);
            assert!(!p.is_null());
            std::alloc::GlobalAlloc::dealloc(&BUMP, p, l);
        }
        n += 1;
    }
    n
}

#[test]
fn signal_handler_allocating_inside_the_sampling_path() {
    let _g = setup();
    // SAFETY: the handler only uses the bump-backed wrapper (lock-free) and atomics.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr2
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
    heap::start(1);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tx.send(unsafe { libc::pthread_self() } as usize).unwrap();
            bump_worker(&stop)
        })
    };
    let tid = rx.recv().unwrap();
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < Duration::from_secs(1) {
        // SAFETY: the worker runs until `stop` is set below.
        unsafe { libc::pthread_kill(tid as libc::pthread_t, libc::SIGUSR2) };
        sent += 1;
        std::thread::sleep(Duration::from_micros(100));
    }
    stop.store(true, Ordering::Relaxed);
    let worker_allocs = worker.join().unwrap();
    heap::stop();
    let handled = IN_HANDLER_ALLOCS.load(Ordering::Relaxed);
    let st = heap::stats();
    let p = heap::snapshot();
    let in_handler = totals(&p, "alloc_in_handler");
    let in_worker = totals(&p, "bump_worker");
    eprintln!(
        "{sent} signals sent, {handled} handled, {worker_allocs} worker allocations; \
         handler samples {in_handler:?}, reentrant {}",
        st.reentrant
    );
    assert!(handled > 100, "{handled}");
    // Every worker allocation was sampled (rate 1, no signal handler is ever inside it).
    assert_eq!(in_worker[0] as u64, worker_allocs, "\n{}", dump(&p));
    // Each handler allocation was either sampled or, when the handler interrupted a sample on
    // its thread, passed through unsampled; some of both happened.
    assert!(
        st.reentrant > 0,
        "no handler landed inside a sample: {st:?}"
    );
    assert!(in_handler[0] > 0);
    assert_eq!(in_handler[0] as u64 + st.reentrant, handled, "{st:?}");
    assert_eq!((in_handler[2], in_worker[2]), (0, 0));
}

/// A library unloaded after the samples began is counted (`Stats::unloaded`; `to_profile`
/// warns: see `cpu_profiler.rs`), from the last reset on.
#[test]
fn a_library_unloaded_after_the_samples_began_is_counted() {
    let _g = setup();
    heap::start(heap::DEFAULT_RATE);
    assert_eq!(heap::stats().unloaded, 0);
    let path = std::env::temp_dir().join(format!("unwind-heap-unload-{}.so", std::process::id()));
    let h = common::tools::dlopen_libm_copy(&path);
    // SAFETY: closes the handle opened above; nothing of the library is in use.
    assert_eq!(unsafe { libc::dlclose(h) }, 0);
    assert!(heap::stats().unloaded >= 1, "{:?}", heap::stats());
    heap::stop();
    heap::reset();
    assert_eq!(heap::stats().unloaded, 0);
}

#[test]
fn the_profilers_own_threads_are_not_sampled() {
    // Every allocation sampled, the CPU profiler running (its collector drains samples into
    // tables) and a library loaded (the module watcher prepares its CFI): none of the
    // samples is the profilers' own bookkeeping.
    let _g = setup();
    heap::start(1);
    let cpu = unwind::cpu::CpuProfiler::start(unwind::cpu::Config {
        frequency_hz: 250,
        ..unwind::cpu::Config::default()
    })
    .unwrap();
    let dir = std::env::temp_dir().join(format!("unwind-heap-own-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let h = common::tools::dlopen_libm_copy(&dir.join("libm-own.so"));
    // Work for the collector, and time for the watcher to see the new library.
    let t0 = Instant::now();
    let mut x = 1u64;
    while t0.elapsed() < Duration::from_millis(400) {
        for i in 0..10_000u64 {
            x = black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    let _ = cpu.stop();
    heap::stop();
    let p = heap::snapshot_raw();
    let own: Vec<String> = p
        .iter()
        .map(|s| {
            s.pcs
                .iter()
                .map(|&pc| name(pc))
                .collect::<Vec<_>>()
                .join(" < ")
        })
        // The collector's drain and thread scan, the watcher's check (names are short).
        .filter(|s| {
            s.contains("drain < drain")
                || s.contains("scan_threads < {{closure}}")
                || s.contains("refresh_if_changed < check")
        })
        .collect();
    assert!(own.is_empty(), "{own:#?}");
    // SAFETY: the handle dlopen returned, closed once.
    unsafe { libc::dlclose(h) };
    let _ = std::fs::remove_dir_all(dir);
}

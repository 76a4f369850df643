//! Profiles readable to the line: the CPU profiler's pprof output, read back by the real
//! `go tool pprof`, carries inlined frames with file:line (`-traces`, `-lines`, `-list`),
//! source files in `Function.filename`, each mapping's GNU build id (`-raw`), and thread
//! labels (`-tags`, `-tagfocus`); the folded output can show inlined frames.
//!
//! Needs `go` (golang-go) for `go tool pprof`: skipped with a message without it, a failure
//! when `CI` is set.

mod common;
use common::tools::go_pprof;

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use unwind::cpu::{Config, CpuProfiler};
use unwind::policy::{Classifier, ProfileKind};

/// Inlined into `lines_test_outer` (even in debug builds: LLVM's always-inliner runs at -O0).
#[inline(always)]
fn lines_test_inlined_leaf(budget: Duration) -> u64 {
    let t0 = Instant::now();
    let mut x = 7u64;
    while t0.elapsed() < budget {
        for i in 0..5_000u64 {
            x = black_box(x.wrapping_mul(0x9e3779b97f4a7c15).wrapping_add(i));
        }
    }
    x
}

/// Is `go` (for `go tool pprof`) here? Without it the tests skip, and fail when `CI` is set.
fn have_go() -> bool {
    let go = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !go {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: needs `go` (golang-go)"
        );
        eprintln!("skipping: needs `go` (golang-go) for go tool pprof");
    }
    go
}

/// One CPU profiler runs at a time in a process: the tests take turns.
static PROFILER: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[inline(never)]
fn lines_test_outer(budget: Duration) -> u64 {
    black_box(lines_test_inlined_leaf(budget)) + 1
}

#[test]
fn pprof_has_inlined_lines_build_ids_and_thread_labels() {
    if !have_go() {
        return;
    }
    let _turn = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    unwind::init();
    let p = CpuProfiler::start(Config {
        frequency_hz: 250,
        ..Config::default()
    })
    .unwrap();
    // A named thread burns CPU in an inlined function; the main thread waits.
    let worker = std::thread::Builder::new()
        .name("lines-worker".into())
        .spawn(move || {
            let _reg = unwind::cpu::register_thread();
            let t0 = Instant::now();
            let mut n = 0;
            while t0.elapsed() < Duration::from_secs(20) && n < 40 {
                black_box(lines_test_outer(Duration::from_millis(50)));
                n += 1;
            }
        })
        .unwrap();
    worker.join().unwrap();
    let prof = p.stop();
    assert!(prof.total() >= 20, "only {} samples", prof.total());
    let named: Vec<_> = prof
        .threads
        .iter()
        .filter(|t| t.name == "lines-worker")
        .collect();
    assert_eq!(
        named.len(),
        1,
        "{:?}",
        prof.threads
            .iter()
            .map(|t| (&t.name, t.tid))
            .collect::<Vec<_>>()
    );
    let tid = named[0].tid;

    let sym = unwind::symbols::Symbolizer::for_current_process();
    let profile = prof.to_profile(&ProfileKind::Cpu.policy(), &Classifier::new());
    let dir = std::env::temp_dir().join(format!("unwind-lines-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pb = dir.join("cpu.pb.gz");
    profile
        .write_pprof(&sym, std::fs::File::create(&pb).unwrap())
        .unwrap();

    // Line tables need the test binary's DWARF: `cargo test --release` builds without it
    // (CI runs both). Without it, locations carry names only, and the line checks are skipped.
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let has_dwarf = {
        use object::{Object, ObjectSection};
        let f = object::File::parse(&*exe).unwrap();
        f.section_by_name(".debug_line")
            .is_some_and(|s| s.size() > 0)
    };
    // One name per function in every output: each frame of the folded stacks (the symbol
    // tables' names) is a function of the pprof profile too, whose outermost functions came
    // from DWARF and named glibc's `__libc_start_main` `__libc_start_main_impl` where libc's
    // debug file is installed (found by outside use in the twentieth round; this test's
    // stacks do not reach it, and CI has no libc debug file: the check holds the invariant
    // for the functions they do reach).
    let traces = go_pprof(&["-traces"], &pb);
    for line in profile.folded(&sym, 0).lines() {
        let stack = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        for name in stack
            .split(';')
            .filter(|n| !n.starts_with("0x") && !n.contains('['))
        {
            assert!(
                traces.lines().any(|l| l.trim_end().ends_with(name)),
                "{name} (folded) is not a function of the pprof profile:\n{traces}"
            );
        }
    }
    if has_dwarf {
        check_lines(&pb);
    } else {
        eprintln!("no DWARF in this test binary (release profile): line checks skipped");
        let traces = go_pprof(&["-traces"], &pb);
        assert!(traces.contains("lines_test_outer"), "{traces}");
    }

    // -raw: the executable's mapping carries its GNU build id, as `file`/readelf sees it.
    let id = unwind::pprof_lines::build_id(&exe).map(|b| unwind::pprof_lines::hex(&b));
    let raw = go_pprof(&["-raw"], &pb);
    if let Some(id) = &id {
        assert!(raw.contains(id.as_str()), "build id {id} missing:\n{raw}");
    } else {
        eprintln!("this test binary has no build id (linker without --build-id)");
    }

    // The executable's mapping is its executable segment as the process maps it (start on the
    // segment's page, that page's file offset), so pprof's own symbolisation from the binary
    // (`-symbolize=force`, as for -disasm or a profile without names) finds the same
    // functions. (A mapping of the whole module at offset 0 sent every address past the first
    // segment to the wrong function.)
    let (_, _, text_off) = unwind::pprof_lines::exec_segments(&exe)[0];
    let exe_path = std::env::current_exe().unwrap();
    let mapping = raw
        .lines()
        .skip_while(|l| !l.starts_with("Mappings"))
        .find(|l| l.contains(&*exe_path.to_string_lossy()))
        .unwrap_or_else(|| panic!("no mapping of {exe_path:?}:\n{raw}"));
    let offset = mapping
        .split_whitespace()
        .nth(1)
        .and_then(|r| r.split('/').nth(2))
        .and_then(|o| u64::from_str_radix(o.trim_start_matches("0x"), 16).ok());
    assert_eq!(offset, Some(text_off), "{mapping}");
    // ... and its range is the one `/proc/self/maps` shows for it: page-aligned at both ends.
    let range: Vec<u64> = mapping
        .split_whitespace()
        .nth(1)
        .map(|r| {
            r.split('/')
                .take(2)
                .filter_map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(range.len(), 2, "{mapping}");
    assert!(range.iter().all(|r| r & 0xfff == 0), "{mapping}");
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        maps.lines().any(|l| l.contains(" r-xp ")
            && l.split(' ').next() == Some(&format!("{:x}-{:x}", range[0], range[1]))),
        "{mapping} is no r-xp line of:\n{maps}"
    );
    let symbolizer = ["addr2line", "llvm-symbolizer"].iter().any(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if symbolizer {
        let forced = go_pprof(&["-symbolize=force", "-traces"], &pb);
        assert!(forced.contains("lines_test_outer"), "{forced}");
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: needs addr2line (binutils) for go tool pprof -symbolize=force"
        );
        eprintln!("skipping -symbolize=force: no addr2line or llvm-symbolizer");
    }

    // Thread labels: -tags lists them; -tagfocus keeps the named thread's samples only.
    let tags = go_pprof(&["-tags"], &pb);
    assert!(
        tags.contains("thread_name") && tags.contains("lines-worker"),
        "{tags}"
    );
    assert!(tags.contains(&tid.to_string()), "{tags}");
    let focus = go_pprof(&["-tagfocus", "thread_name=lines-worker", "-top"], &pb);
    assert!(focus.contains("lines_test_outer"), "{focus}");
    let none = go_pprof(&["-tagfocus", "thread_name=no-such-thread", "-top"], &pb);
    assert!(!none.contains("lines_test_outer"), "{none}");

    if has_dwarf {
        // Folded with inlines: the inlined leaf has its own frame after its caller.
        let folded = profile.folded_with_inlines(&sym, 0);
        assert!(
            folded
                .lines()
                .any(|l| l.contains("lines_test_outer;") && l.contains("lines_test_inlined_leaf")),
            "{folded}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `-traces`, `-lines`, `-list`: inlined frames and file:line (needs the binary's DWARF).
fn check_lines(pb: &Path) {
    // -traces: the inlined leaf is its own frame, marked "(inline)", above its caller.
    let traces = go_pprof(&["-traces"], pb);
    if std::env::var_os("UNWIND_SHOW").is_some() {
        eprintln!("{traces}");
    }
    let inlined = traces.split("-----------+").any(|t| {
        let leaf = t
            .lines()
            .position(|l| l.contains("lines_test_inlined_leaf") && l.contains("(inline)"));
        let outer = t.lines().position(|l| l.contains("lines_test_outer"));
        matches!((leaf, outer), (Some(a), Some(b)) if a < b)
    });
    assert!(inlined, "no trace shows the inlined frame:\n{traces}");

    // -lines: file:line of this source file.
    let lines = go_pprof(&["-lines", "-top", "-nodecount=200"], pb);
    assert!(
        lines
            .lines()
            .any(|l| l.contains("lines_test_inlined_leaf") && l.contains("pprof_lines.rs:")),
        "{lines}"
    );

    // -list: the source of the inlined leaf, annotated (pprof finds this file by its name).
    let list = go_pprof(&["-list", "lines_test_inlined_leaf"], pb);
    assert!(list.contains("pprof_lines.rs"), "{list}");
    assert!(list.contains("wrapping_mul"), "the source lines: {list}");
}

/// A stack cut at the policy's maximum depth ends, in `go tool pprof`, in the truncation
/// marker frame where its root would be, and the folded stacks start with it (issue 5: "a max
/// depth with a truncation marker").
#[test]
fn a_stack_cut_at_the_maximum_depth_shows_the_truncation_marker() {
    if !have_go() {
        return;
    }
    let _turn = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    unwind::init();
    let p = CpuProfiler::start(Config {
        frequency_hz: 250,
        ..Config::default()
    })
    .unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) && p.stats().signals < 20 {
        black_box(lines_test_outer(Duration::from_millis(20)));
    }
    let prof = p.stop();
    assert!(prof.total() >= 5, "only {} samples", prof.total());
    let sym = unwind::symbols::Symbolizer::for_current_process();
    let cut = ProfileKind::Cpu.policy().max_depth(3);
    let profile = prof.to_profile(&cut, &Classifier::new());
    assert!(profile.samples.iter().all(|s| s.pcs.len() <= 3));
    assert!(profile.samples.iter().any(|s| s.truncated));
    let folded = profile.folded(&unwind::symbols::Symbolizer::new(), 0);
    assert!(
        folded.lines().all(|l| l.starts_with("[truncated];")),
        "{folded}"
    );
    let dir = std::env::temp_dir().join(format!("unwind-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pb = dir.join("cpu.pb.gz");
    profile
        .write_pprof(&sym, std::fs::File::create(&pb).unwrap())
        .unwrap();
    let traces = go_pprof(&["-traces"], &pb);
    // Each trace's frames, leaf first, end with the marker (Go prints one per line, then a
    // line of dashes between traces).
    let blocks: Vec<&str> = traces
        .split("-----------+")
        .skip(1)
        .filter(|b| b.contains("thread_id"))
        .collect();
    assert!(!blocks.is_empty(), "{traces}");
    for b in blocks {
        let last = b.lines().map(str::trim).rfind(|l| !l.is_empty());
        assert!(
            last.is_some_and(|l| l.ends_with(unwind::profile::TRUNCATED_FRAME)),
            "{traces}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

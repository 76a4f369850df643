//! The profilers in a user's own crate, with their defaults: fixtures/dependent is built the
//! way a dependent crate is (its own Cargo project, `unwind` as a path dependency, outside
//! this repository's `.cargo/config.toml`), once without frame pointers and once with them,
//! run for a few seconds, and its profiles are read with the real `go tool pprof`:
//! - at least 95% of CPU samples reach their thread's loop (`alloc_loop` on the main thread,
//!   `compute_loop` on two threads that never call `register_thread`);
//! - the unregistered threads' share of samples is within 5 points of their share of the CPU
//!   time the program measured over the same window;
//! - at least 99% of sampled heap bytes reach `alloc_loop`;
//! - `unwind::capture` three calls down starts at its caller and reaches `main`; without frame
//!   pointers it returns nothing (`StopReason::NoFramePointers`) until the CFI is prepared,
//!   and then walks by CFI; `capture_from_ucontext_with` in a real signal handler likewise
//!   (the interrupted pc alone, then every caller).
//!
//! Needs go (`go tool pprof`): with `CI` set its absence fails the test, otherwise it is
//! skipped with a message. Building the fixture takes a few minutes the first time (its own
//! target directories under target/).

mod common;
use common::tools::{go_pprof, need};

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the fixture with frame pointers on or off; returns its binary.
fn build(frame_pointers: bool) -> PathBuf {
    let target = repo().join("target").join(if frame_pointers {
        "dependent-fp"
    } else {
        "dependent-nofp"
    });
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--manifest-path"])
        .arg(repo().join("fixtures/dependent/Cargo.toml"))
        // Outside the repository: cargo reads .cargo/config.toml from the working directory's
        // ancestors, and this repository's turns frame pointers on.
        .current_dir(std::env::temp_dir())
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS");
    if frame_pointers {
        cmd.env("RUSTFLAGS", "-C force-frame-pointers=yes");
    }
    let out = cmd.output().expect("cargo build of fixtures/dependent");
    assert!(
        out.status.success(),
        "building fixtures/dependent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("release/dependent")
}

/// `go tool pprof -traces` output as (value, frames leaf first).
fn traces(text: &str) -> Vec<(u64, Vec<String>)> {
    let mut out = Vec::new();
    for block in text.split("-----------+").skip(1) {
        // Sample labels (`thread_id:  123`, `thread_name: main`) come before the value line.
        let mut lines = block.lines().skip(1).filter(|l| {
            let first = l.split_whitespace().next();
            first.is_some_and(|w| !w.ends_with(':'))
        });
        let Some(first) = lines.next() else { continue };
        let mut words = first.split_whitespace();
        let value: u64 = words
            .next()
            .unwrap()
            .trim_end_matches('B')
            .parse()
            .unwrap_or_else(|_| panic!("value in {first:?}"));
        let mut frames = vec![words.collect::<Vec<_>>().join(" ")];
        frames.extend(lines.map(|l| l.trim().to_string()));
        out.push((value, frames));
    }
    out
}

fn stat<'a>(stats: &'a str, key: &str) -> &'a str {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{key} in {stats}"))
}

/// A `describe_capture` line (`count;capture_with's count;stop;first four names`): the four
/// names are deep_c's, deep_b's, deep_a's and main's.
fn assert_deep_names(key: &str, v: &[&str]) {
    let names: Vec<&str> = v[3].split(',').collect();
    assert!(
        names.len() == 4
            && names[0].ends_with("deep_c")
            && names[1].ends_with("deep_b")
            && names[2].ends_with("deep_a")
            && names[3].ends_with("dependent::main"),
        "{key}: {v:?}"
    );
}

/// A `describe_signal` line (`count;stop;names`): every name of `want` is there (as the end
/// of a frame's name), in that order.
fn assert_in_order(key: &str, v: &[&str], want: &[&str]) {
    let names: Vec<&str> = v[2].split(',').collect();
    let at = |f: &str| names.iter().position(|n| n.ends_with(f));
    let found: Vec<Option<usize>> = want.iter().map(|f| at(f)).collect();
    assert!(
        found.iter().all(Option::is_some) && found.windows(2).all(|w| w[0] < w[1]),
        "{key}: {want:?} in order in {v:?}"
    );
}

/// The interrupted thread's frames a signal's capture from the ucontext keeps (raised from
/// sig_c): with frame pointers a frame-record walk from libc's registers may miss sig_c (libc
/// keeps no record), not its callers.
fn interrupted_frames(frame_pointers: bool) -> &'static [&'static str] {
    if frame_pointers {
        &["sig_b", "sig_a", "dependent::main"]
    } else {
        &["sig_c", "sig_b", "sig_a", "dependent::main"]
    }
}

fn check(frame_pointers: bool) {
    let bin = build(frame_pointers);
    let dir = std::env::temp_dir().join(format!(
        "unwind-dependent-{}-{frame_pointers}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    // 1.5 s of the main thread's CPU time (and about twice that on the workers): some 400
    // samples at 99 Hz.
    let out = Command::new(&bin).arg(&dir).arg("1.5").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let stats = std::fs::read_to_string(dir.join("stats.txt")).unwrap();
    eprintln!("frame pointers {frame_pointers}: {stats}{err}");

    // The build is what it claims: the fixture reads its own CFI.
    assert_eq!(
        stat(&stats, "keeps_frame_records"),
        format!("Some({frame_pointers})"),
        "{stats}"
    );
    assert_eq!(
        stat(&stats, "cpu_missing_frame_records"),
        (!frame_pointers).to_string()
    );
    assert_eq!(
        stat(&stats, "heap_missing_frame_records"),
        (!frame_pointers).to_string()
    );
    // The one-line warning, only without frame pointers.
    assert_eq!(
        err.matches("built without frame pointers").count(),
        usize::from(!frame_pointers),
        "{err}"
    );

    // A frame-pointer-mode profile of a build without frame pointers: its warning says the
    // stacks end at their first frame (it said they came from DWARF CFI, which that mode never
    // reads: found by outside use in the twentieth round).
    let out = Command::new(&bin).arg("fp-profile").output().unwrap();
    let fp_err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{fp_err}");
    assert_eq!(
        fp_err.matches("walked by frame records only").count(),
        usize::from(!frame_pointers),
        "{fp_err}"
    );
    assert!(!fp_err.contains("DWARF CFI"), "{fp_err}");
    // Its heap samples: none an empty stack that does not say it was cut.
    let fp_out = String::from_utf8_lossy(&out.stdout);
    assert!(fp_out.contains("heap_fp_empty=0"), "{fp_out}");
    assert!(!fp_out.contains("heap_fp_samples=0 "), "{fp_out}");

    // `unwind::init()` alone, as README's first lines do: whole stacks from `capture` and from
    // a signal handler's capture, with frame pointers or without (there `init` prepares the
    // CFI; before the twenty-third round it did not, and `capture` returned nothing until
    // `modules::refresh()`).
    let out = Command::new(&bin).arg("init-only").output().unwrap();
    let init_out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<&str> = stat(&init_out, "capture_init").split(';').collect();
    assert_deep_names("capture after init", &v);
    assert_eq!(v[0], v[1], "capture after init: {v:?}");
    // With frame pointers too: `init` prepares the CFI in every build (before the twenty-fourth
    // round only without them), so the capture finds `sig_c`, the caller of libc's `raise`,
    // which keeps no frame record (a frame-record walk skips it).
    let v: Vec<&str> = stat(&init_out, "signal_init").split(';').collect();
    assert_in_order("signal after init", &v, interrupted_frames(false));
    // Three nested `psm::on_stack` segments from one heap mapping: each crossed, to `main`
    // (found by outside use: without frame pointers a word on the inner segment was taken for
    // the outer one's frame record, and the walk wrote a garbage frame and stopped). The walk
    // ends where `capture_with` ends on the thread's own stack (by frame records, in libc's
    // start code).
    let plain_stop = stat(&init_out, "capture_init").split(';').nth(2).unwrap();
    for round in 0..3 {
        assert_eq!(
            stat(&init_out, &format!("psm_nested{round}")),
            format!("{plain_stop};true;3"),
            "{init_out}"
        );
    }

    // A signal's capture asked for two frames: cut by that depth, said so (without frame
    // pointers it said "buffer full").
    assert_eq!(stat(&stats, "signal_depth2"), "2;max depth", "{stats}");

    // `unwind::capture` from deep_c, three calls down: with frame pointers, by frame records;
    // without, nothing until the CFI is prepared (no frames that are not the caller's), then
    // by CFI. (`count;capture_with's count;stop;first four names`.)
    for key in ["capture_before", "capture_after"] {
        let v: Vec<&str> = stat(&stats, key).split(';').collect();
        let (n, n_with, stop, names) = (v[0], v[1], v[2], v[3]);
        if !frame_pointers && key == "capture_before" {
            assert_eq!(
                (n, n_with, stop, names),
                ("0", "0", "built without frame pointers", "")
            );
            continue;
        }
        assert_deep_names(key, &v);
        // By CFI the walk ends at the thread's entry; by frame records it stops in libc,
        // which keeps none (the main thread's `__libc_start_call_main`).
        if !frame_pointers {
            assert_eq!(stop, "end", "{key}: {v:?}");
        }
        assert_eq!(n, n_with, "{key}: {v:?}");
    }

    // `unwind::capture_from_ucontext_with` in a SIGUSR1 handler raised from sig_c, three calls
    // down (`count;stop;names`). Frame 0 is the interrupted pc, in libc. Without frame
    // pointers and before the CFI is prepared: that frame alone; once it is, by CFI, every
    // caller (`interrupted_frames`).
    for key in ["signal_before", "signal_after"] {
        let v: Vec<&str> = stat(&stats, key).split(';').collect();
        let (n, stop, names) = (v[0], v[1], v[2].split(',').collect::<Vec<_>>());
        if !frame_pointers && key == "signal_before" {
            assert_eq!(
                (n, stop),
                ("1", "built without frame pointers"),
                "{key}: {v:?}"
            );
            assert!(!names[0].contains("dependent::"), "{key}: {v:?}");
            continue;
        }
        assert_in_order(key, &v, interrupted_frames(frame_pointers));
    }

    // `unwind::capture_with` in the same handler, after `unwind::modules::refresh()` alone
    // (no profiler, no `init`): the walk goes from the handler through the signal frame to the
    // interrupted thread. Before `refresh` registered the built-in switches it did not know the
    // signal frame: in a build without frame pointers it went from `__restore_rt` to
    // `std::rt::lang_start` and said `end`.
    let v: Vec<&str> = stat(&stats, "signal_refreshed").split(';').collect();
    let want: &[&str] = if frame_pointers {
        &["on_usr1", "sig_b", "sig_a"]
    } else {
        &["on_usr1", "sig_c", "sig_b", "sig_a"]
    };
    assert_in_order("signal_refreshed", &v, want);

    // A callback from a library `dlopen`ed after the last refresh (zlib's allocator, called
    // in `deflateInit2_`). Without frame pointers the walk goes by CFI, which that library's
    // code has none of yet: it stops there and says so (it followed rbp as a frame pointer,
    // skipped callers and could end looking complete); after a refresh it reaches `main`.
    let zlib = |key: &str| -> (String, Vec<String>) {
        let v: Vec<&str> = stat(&stats, key).splitn(3, ';').collect();
        assert_eq!(v.len(), 3, "{key}: {v:?} (libz.so.1 must load)");
        (
            v[1].to_string(),
            v[2].split(',').map(String::from).collect(),
        )
    };
    let (stop, names) = zlib("zlib_after");
    assert_eq!(
        names.first().map(String::as_str),
        Some("dependent::zalloc"),
        "{names:?}"
    );
    if !frame_pointers {
        assert_eq!(stop, "end", "{names:?}");
        let at = |f: &str| names.iter().position(|n| n == f);
        let want = [
            "dependent::zalloc",
            "deflateInit2_",
            "dependent::zlib_caller",
            "main",
        ];
        let found: Vec<Option<usize>> = want.iter().map(|f| at(f)).collect();
        assert!(
            found.iter().all(Option::is_some) && found.windows(2).all(|w| w[0] < w[1]),
            "zlib_after: {want:?} in order in {names:?}"
        );
        let (stop, names) = zlib("zlib_before");
        assert_eq!(stop, "no unwind information", "{names:?}");
        assert!(
            names.len() >= 2 && names[1..].iter().all(|n| n.starts_with("deflate")),
            "zlib_before: frames past the library's: {names:?}"
        );
    }

    // A frame-pointer-mode profiler, before any CFI was prepared, says whether the program
    // keeps frame records (it said `false` always: the answer came from the CFI alone).
    assert_eq!(
        stat(&stats, "fp_mode_missing_frame_records"),
        if frame_pointers { "false" } else { "true" }
    );

    // `unwind::capture` in a corosensei coroutine: across the switch into the resuming
    // function and on to main. Without frame pointers the walk goes by CFI, which needs the
    // parent's stack pointer (past the registers corosensei pushed at the parent link); it
    // stopped at the switch ("unreadable transition"): the main thread's stack had been taken
    // for the coroutine's mapping, merged with the loader's TLS block that holds the main
    // thread's control block.
    let names: Vec<&str> = stat(&stats, "coroutine").split(',').collect();
    let at = |f: &str| names.iter().position(|n| n.ends_with(f));
    let want = ["coro_capture", "coro_resumer", "dependent::main"];
    let found: Vec<Option<usize>> = want.iter().map(|f| at(f)).collect();
    assert!(
        found.iter().all(Option::is_some) && found.windows(2).all(|w| w[0] < w[1]),
        "coroutine: {want:?} in order in {names:?}"
    );

    let cpu = traces(&go_pprof(
        &["-sample_index=samples", "-traces"],
        &dir.join("cpu.pb.gz"),
    ));
    let total: u64 = cpu.iter().map(|t| t.0).sum();
    let has = |frames: &[String], f: &str| frames.iter().any(|x| x == f);
    let in_alloc: u64 = cpu
        .iter()
        .filter(|t| has(&t.1, "dependent::alloc_loop"))
        .map(|t| t.0)
        .sum();
    let in_compute: u64 = cpu
        .iter()
        .filter(|t| has(&t.1, "dependent::compute_loop"))
        .map(|t| t.0)
        .sum();
    assert!(total >= 100, "{total} CPU samples");
    let lost: Vec<_> = cpu
        .iter()
        .filter(|t| !has(&t.1, "dependent::alloc_loop") && !has(&t.1, "dependent::compute_loop"))
        .collect();
    assert!(
        (in_alloc + in_compute) * 100 >= total * 95,
        "{in_alloc} + {in_compute} of {total} samples reach their loop; the others: {lost:?}"
    );
    let main_ns: f64 = stat(&stats, "main_cpu_ns").parse().unwrap();
    let workers_ns: f64 = stat(&stats, "worker_cpu_ns").parse().unwrap();
    let real = workers_ns / (main_ns + workers_ns);
    let sampled = in_compute as f64 / total as f64;
    assert!(
        (real - sampled).abs() <= 0.05,
        "unregistered threads: {:.1}% of samples, {:.1}% of CPU time",
        sampled * 100.0,
        real * 100.0
    );

    let heap = traces(&go_pprof(
        &["-sample_index=alloc_space", "-unit=B", "-traces"],
        &dir.join("heap.pb.gz"),
    ));
    let bytes: u64 = heap.iter().map(|t| t.0).sum();
    let in_loop: u64 = heap
        .iter()
        .filter(|t| has(&t.1, "dependent::alloc_loop"))
        .map(|t| t.0)
        .sum();
    assert!(bytes > 0);
    assert!(
        in_loop as f64 >= bytes as f64 * 0.99,
        "{in_loop} of {bytes} sampled bytes reach alloc_loop"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dependent_without_frame_pointers_gets_whole_stacks() {
    if need("go", "version") {
        check(false);
    }
}

#[test]
fn dependent_with_frame_pointers_gets_whole_stacks() {
    if need("go", "version") {
        check(true);
    }
}

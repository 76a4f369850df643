//! `unwind stack` on a kernel core of a Rust program (fixtures/rust/switches.rs, built as the
//! `switches` example) that aborts on `unwind::system_stack` while another thread spins on a
//! `stacker` segment and a third in a corosensei coroutine: the walk crosses all three
//! switches, `--policy heap` ends at the user function
//! that called `system_stack::run`, and hybrid mode (CFI through libc's `abort`) gives exactly
//! eu-stack's pcs.
//!
//! Needs core_pattern `core` (CI sets it); skipped with a message otherwise.

mod common;
use common::skip::skip;
use common::tools::{eu_stack, need_kernel_cores};

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_unwind");

/// The fixture executable: `target/<profile>/examples/switches`, (re)built here with this
/// test's profile (`cargo test --tests` does not build examples, and a stale one must not be
/// used; an up-to-date build is a no-op).
fn fixture_exe() -> PathBuf {
    let exe = Path::new(BIN).parent().unwrap().join("examples/switches");
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(["build", "--example", "switches"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if !cfg!(debug_assertions) {
        c.arg("--release");
    }
    let out = c.output().expect("cargo build --example switches");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    let out = Command::new(BIN).args(&a).output().unwrap();
    assert!(
        out.status.success(),
        "unwind {a:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

/// Function names without hashes or crate path noise (`switches::rust_leaf` → `rust_leaf`).
fn names(t: &Value) -> Vec<String> {
    t["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let s = f["symbol"].as_str().unwrap_or("?");
            s.strip_prefix("switches::").unwrap_or(s).to_string()
        })
        .collect()
}

fn position(names: &[String], name: &str) -> usize {
    names
        .iter()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("{name} missing from {names:?}"))
}

fn field(t: &Value, name: &str, key: &str) -> Value {
    let i = position(&names(t), name);
    t["frames"][i][key].clone()
}

/// `want` appears in `got` in order (other frames may sit between).
fn in_order(got: &[String], want: &[&str]) -> bool {
    let mut it = got.iter();
    want.iter().all(|w| it.any(|g| g == w))
}

#[test]
fn rust_core_crosses_system_stack_and_stacker_segment() {
    if !cfg!(target_arch = "x86_64") {
        skip("skipping: the kernel core of an x86_64 program needs an x86_64 host");
        return;
    }
    if !need_kernel_cores() {
        return;
    }
    let exe = fixture_exe();
    let dir = std::env::temp_dir().join(format!("unwind-cli-rust-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let st = Command::new(&exe).current_dir(&dir).status().unwrap();
    assert!(!st.success(), "the fixture must abort");
    let core = dir.join("core");
    assert!(core.is_file(), "no core written in {}", dir.display());
    let c = core.to_str().unwrap();

    for mode in ["fp", "hybrid"] {
        let v = json(&["stack", "--core", c, "--mode", mode]);
        let threads = v["threads"].as_array().unwrap();
        assert_eq!(threads.len(), 3, "{v}");
        let seg = threads
            .iter()
            .find(|t| names(t).iter().any(|n| n == "segment_spin"))
            .unwrap_or_else(|| panic!("{mode}: no thread shows segment_spin: {v}"));
        let co = threads
            .iter()
            .find(|t| names(t).iter().any(|n| n == "coroutine_spin"))
            .unwrap_or_else(|| panic!("{mode}: no thread shows coroutine_spin: {v}"));
        let main = threads
            .iter()
            .find(|t| t["tid"] != seg["tid"] && t["tid"] != co["tid"])
            .unwrap();
        let (m, s) = (names(main), names(seg));
        if mode == "fp" {
            // The main thread stopped in libc (pthread_kill via abort), built without frame
            // pointers: a frame-pointer walk cannot leave it, and says so.
            assert_eq!(main["truncated"], true, "{m:?}");
        } else {
            // libc's abort has no frame records: only CFI reaches rust_leaf from the leaf.
            assert!(
                in_order(
                    &m,
                    &[
                        "abort",
                        "rust_leaf",
                        "on_system_stack",
                        "unwind_0_1_system_stack_switch",
                        "rust_middle",
                        "rust_outer",
                        "main",
                    ]
                ),
                "{m:?}"
            );
            assert_eq!(main["truncated"], false, "{m:?}");
            // The switch: on_system_stack is on the system stack (0); the frame after the
            // trampoline (`system_stack::run`, or its caller where run was inlined) was found
            // through the transition, on the thread's stack (1).
            assert_eq!(field(main, "on_system_stack", "stack"), 0);
            let sw = position(&m, "unwind_0_1_system_stack_switch");
            assert_eq!(main["frames"][sw + 1]["via"], "transition", "{m:?}");
            assert_eq!(main["frames"][sw + 1]["stack"], 1, "{m:?}");
            assert_eq!(field(main, "rust_middle", "stack"), 1);
        }
        // psm::on_stack and stacker's functions may be inlined in release builds; the
        // assembly trampoline and the fixture's own functions are not.
        assert!(
            in_order(&s, &["segment_spin", "rust_psm_on_stack", "segment_worker"]),
            "{mode}: {s:?}"
        );
        assert_eq!(field(seg, "segment_spin", "stack"), 0);
        assert_eq!(field(seg, "segment_worker", "stack"), 1);
        let psm = position(&s, "rust_psm_on_stack");
        assert_eq!(seg["frames"][psm + 1]["via"], "transition", "{mode}: {s:?}");
        assert_eq!(seg["frames"][psm + 1]["stack"], 1, "{mode}: {s:?}");
        // The coroutine: its root frame returns to corosensei's `stack_init_trampoline_return`
        // label (symbolised inside `stack_init_trampoline`); the resumer's frames follow.
        let c = names(co);
        assert!(
            in_order(
                &c,
                &[
                    "coroutine_spin",
                    "stack_init_trampoline",
                    "coroutine_worker"
                ]
            ),
            "{mode}: {c:?}"
        );
        let root = position(&c, "stack_init_trampoline");
        assert_eq!(co["frames"][root]["stack"], 0, "{mode}: {c:?}");
        assert_eq!(co["frames"][root + 1]["via"], "transition", "{mode}: {c:?}");
        assert_eq!(field(co, "coroutine_worker", "stack"), 1, "{mode}: {c:?}");
    }

    // Heap policy: the system side (and the runtime frames at the leaf end) dropped; the
    // sample ends at the user function that called system_stack::run.
    let v = json(&["stack", "--core", c, "--mode", "hybrid", "--policy", "heap"]);
    let main = v["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| names(t).iter().any(|n| n == "rust_outer"))
        .unwrap();
    let m = names(main);
    assert_eq!(m[0], "rust_middle", "{m:?}");

    // eu-stack (elfutils) crosses too, through the trampolines' CFI: in hybrid mode we report
    // the same pcs for every thread.
    if let Some(eu) = eu_stack(&core, Some(&exe)) {
        let v = json(&["stack", "--core", c, "--mode", "hybrid"]);
        for t in v["threads"].as_array().unwrap() {
            let tid = t["tid"].as_u64().unwrap();
            let (_, theirs) = eu.iter().find(|(x, _)| *x == tid).unwrap();
            let mine: Vec<u64> = t["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    u64::from_str_radix(f["pc"].as_str().unwrap().trim_start_matches("0x"), 16)
                        .unwrap()
                })
                .collect();
            assert_eq!(&mine, theirs, "thread {tid}: ours vs eu-stack");
        }
    } else {
        skip("eu-stack not installed: comparison skipped");
    }
    // --lines, text: the functions inlined at a frame's pc come first, innermost first, each
    // on its own line marked `(inlined)` (the precompiled std's `lang_start_internal` inlines
    // `catch_unwind`), then the frame's own line with the physical function's file:line. It
    // used to print the physical function's name beside the innermost inlined one's line.
    let out = Command::new(BIN)
        .args(["stack", "--core", c, "--lines"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let inlined: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains(" (inlined)"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("catch_unwind") && l.contains(" (inlined) at ")),
        "{text}"
    );
    for i in inlined {
        let next = lines[i + 1..]
            .iter()
            .find(|l| !l.contains(" (inlined)"))
            .unwrap();
        assert!(next.trim_start().starts_with('#'), "{}\n{next}", lines[i]);
    }
    let lsi = lines
        .iter()
        .find(|l| l.trim_start().starts_with('#') && l.contains("lang_start_internal+"))
        .unwrap();
    assert!(lsi.contains("rt.rs:"), "{lsi}");
    let _ = std::fs::remove_dir_all(&dir);
}

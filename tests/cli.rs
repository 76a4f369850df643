//! The `unwind stack` command on real cores: the JSON contract, the fixtures' call chains (the
//! truth is fixtures/c/chain.c), eu-stack as a reference, and bad input.
//!
//! Committed cores (fixtures/cores/*.gz, made by fixtures/cores/make.sh) run everywhere; fresh
//! x86_64 kernel cores are made at test time when gcc is there and core_pattern is `core`.

mod common;
use common::skip::skip;
use common::tools::{eu_stack, has_run, need, need_kernel_cores};

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_unwind");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A fresh temporary directory for one test.
fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("unwind-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Unpacks committed core `name` (without `.gz`) into `dir`.
fn core(name: &str, dir: &Path) -> PathBuf {
    use std::io::Read;
    let gz = std::fs::File::open(fixtures().join("cores").join(format!("{name}.gz"))).unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut bytes)
        .unwrap();
    let out = dir.join(name);
    std::fs::write(&out, bytes).unwrap();
    out
}

fn exe(arch: &str) -> PathBuf {
    fixtures().join("cores").join(format!("chain-{arch}"))
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run unwind")
}

fn json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    let out = run(&a);
    assert!(
        out.status.success(),
        "unwind {a:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Checks the contract's shape exactly: issue 8's keys, types and value sets, and the keys it
/// was extended with (`warnings`; each thread's `name`, `signal`, `stop`).
fn check_shape(v: &Value, arch: &str) {
    let top = v.as_object().expect("object");
    assert_eq!(
        top.keys().collect::<Vec<_>>(),
        ["arch", "threads", "warnings"],
        "top-level keys"
    );
    assert_eq!(v["arch"], arch);
    assert!(v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .all(Value::is_string));
    let threads = v["threads"].as_array().expect("threads array");
    assert!(!threads.is_empty());
    for (i, t) in threads.iter().enumerate() {
        let o = t.as_object().unwrap();
        let mut keys: Vec<_> = o.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["frames", "name", "signal", "stop", "tid", "truncated"]
        );
        assert!(t["tid"].as_u64().is_some());
        assert!(t["truncated"].is_boolean());
        // A core's threads have no names; the first took the signal that dumped the core.
        assert!(t["name"].is_null());
        let stop = t["stop"].as_str().unwrap();
        assert_eq!(stop == "end", t["truncated"] == false, "{t}");
        if i > 0 {
            assert!(t["signal"].is_null(), "only the dumping thread: {t}");
        } else if !t["signal"].is_null() {
            let mut keys: Vec<_> = t["signal"].as_object().unwrap().keys().collect();
            keys.sort_unstable();
            assert_eq!(keys, ["address", "code", "name", "number"]);
            assert!(t["signal"]["name"].as_str().unwrap().starts_with("SIG"));
        }
        let frames = t["frames"].as_array().unwrap();
        let mut last_stack = 0;
        for (i, f) in frames.iter().enumerate() {
            let mut keys: Vec<_> = f.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["module", "pc", "stack", "symbol", "via"]);
            let pc = f["pc"].as_str().unwrap();
            assert!(pc.starts_with("0x"), "{pc}");
            assert!(u64::from_str_radix(&pc[2..], 16).is_ok(), "{pc}");
            assert!(f["symbol"].is_string() || f["symbol"].is_null());
            assert!(f["module"].is_string() || f["module"].is_null());
            let stack = f["stack"].as_u64().unwrap();
            assert!(stack >= last_stack, "stack index never decreases");
            if stack > last_stack {
                assert_eq!(
                    f["via"], "transition",
                    "a new stack starts with a transition"
                );
            }
            last_stack = stack;
            let via = f["via"].as_str().unwrap();
            assert!(
                ["regs", "fp", "dwarf", "transition"].contains(&via),
                "{via}"
            );
            if i == 0 {
                assert_eq!(via, "regs", "the leaf comes from the registers");
            }
        }
    }
}

fn symbols(t: &Value) -> Vec<String> {
    t["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["symbol"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn pcs(t: &Value) -> Vec<u64> {
    t["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| u64::from_str_radix(&f["pc"].as_str().unwrap()[2..], 16).unwrap())
        .collect()
}

// ---- the fixtures' truth ----

fn check_chain(v: &Value) {
    let t = &v["threads"][0];
    let s = symbols(t);
    assert!(
        has_run(&s, &["gamma_", "beta_", "alpha_", "main"]),
        "chain: {s:?}"
    );
    assert_eq!(s[0], "gamma_", "leaf first");
}

fn check_signal(v: &Value) {
    let t = &v["threads"][0];
    let s = symbols(t);
    assert_eq!(s[0], "on_alarm", "{s:?}");
    let frames = t["frames"].as_array().unwrap();
    assert_eq!(frames[0]["stack"], 0);
    // The interrupted function shows, on the next stack, found through the signal frame.
    let i = s
        .iter()
        .position(|n| n == "spin_here")
        .expect("spin_here shows");
    assert_eq!(frames[i]["via"], "transition");
    assert_eq!(frames[i]["stack"], 1);
    assert!(
        has_run(&s[i..], &["spin_here", "spin_caller", "main"]),
        "{s:?}"
    );
}

fn check_threads(v: &Value) {
    let threads = v["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 4, "main and three workers");
    let s = symbols(&threads[0]);
    assert!(has_run(&s, &["gamma_", "beta_", "alpha_", "main"]), "{s:?}");
    for t in &threads[1..] {
        let s = symbols(t);
        // The leaf is libc's pause, which keeps no frame record: worker_leaf's return address
        // is only at the stack pointer, so frame pointers go from pause to worker_mid
        // (eu-stack, with CFI, shows worker_leaf too).
        assert!(has_run(&s, &["worker_mid", "worker_top"]), "{s:?}");
        assert!(s[0].contains("pause"), "{s:?}");
    }
}

/// A fault inside the vDSO's `clock_gettime` (fixtures/c/chain.c `vdso`): no file holds the
/// vDSO, so its symbols and CFI come from the core's memory. Without them its frame was `?`
/// and the walk stopped there (the vDSO's code keeps no frame record at that point).
fn check_vdso(v: &Value) {
    let t = &v["threads"][0];
    let f0 = &t["frames"][0];
    assert_eq!(f0["module"], "[vdso]", "{t}");
    assert!(
        f0["symbol"]
            .as_str()
            .is_some_and(|s| s.contains("clock_gettime")),
        "{t}"
    );
    let s = symbols(t);
    assert!(has_run(&s, &["vdso_beta", "vdso_alpha", "main"]), "{s:?}");
}

/// `unwind verify --max-frames N` compares N frames of each walk (a 100k-frame stack was
/// compared to its 1024th frame only, the DWARF side `buffer full`: found by outside use in
/// the twenty-third round).
#[test]
fn verify_takes_max_frames() {
    let d = tmp("verify-max");
    let c = core("core-x86_64-chain", &d);
    let e = exe("x86_64");
    let text = |extra: &[&str]| {
        let mut a = vec!["verify", "--core", p(&c), "--exe", p(&e)];
        a.extend(extra);
        let out = run(&a);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let three = text(&["--max-frames", "3"]);
    assert!(
        three.contains("agree (3 of 3 fp frames agree with dwarf's 3; fp stop: buffer full"),
        "{three}"
    );
    let all = text(&[]);
    assert!(!all.contains("dwarf stop: buffer full"), "{all}");
    assert_bad(
        &["verify", "--core", p(&c), "--max-frames", "0"],
        "--max-frames",
    );
    let _ = std::fs::remove_dir_all(d);
}

/// `--max-frames` equal to a stack's depth: the walk filled its buffer on `_start`, the
/// stack's root, and is whole; one frame less is cut (it said `buffer full` for both: found by
/// outside use in the twenty-third round).
#[test]
fn a_stack_exactly_max_frames_deep_is_whole() {
    let d = tmp("exact");
    let c = core("core-x86_64-chain", &d);
    let e = exe("x86_64");
    let walk = |extra: &[&str]| {
        let mut a = vec!["stack", "--core", p(&c), "--exe", p(&e), "--format", "json"];
        a.extend(extra);
        let v = json(&a);
        v["threads"][0].clone()
    };
    let whole = walk(&[]);
    let n = whole["frames"].as_array().unwrap().len();
    assert_eq!(whole["truncated"], false, "{whole}");
    assert_eq!(whole["frames"][n - 1]["symbol"], "_start", "{whole}");
    let exact = walk(&["--max-frames", &n.to_string()]);
    assert_eq!(exact["truncated"], false, "{exact}");
    assert_eq!(exact["frames"], whole["frames"]);
    let short = walk(&["--max-frames", &(n - 1).to_string()]);
    assert_eq!(short["truncated"], true, "{short}");
    // A walk cut by its frames says how to see the rest; a whole one says nothing of it.
    let stderr = |max: usize| {
        let m = max.to_string();
        let out = run(&["stack", "--core", p(&c), "--exe", p(&e), "--max-frames", &m]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cut = stderr(n - 1);
    assert!(
        cut.contains(&format!("filled their {} frames", n - 1))
            && cut.contains("--max-frames N shows more"),
        "{cut}"
    );
    assert!(!stderr(n).contains("--max-frames N"));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn json_shape_and_chain_x86_64() {
    let d = tmp("chain");
    let c = core("core-x86_64-chain", &d);
    let v = json(&["stack", "--core", p(&c), "--exe", p(&exe("x86_64"))]);
    check_shape(&v, "x86_64");
    check_chain(&v);
    // Every frame is on stack 0 and found by the registers or frame pointers.
    for f in v["threads"][0]["frames"].as_array().unwrap() {
        assert_eq!(f["stack"], 0);
    }
    // The module of an executable frame is the executable.
    let m = v["threads"][0]["frames"][0]["module"].as_str().unwrap();
    assert!(m.ends_with("chain-x86_64"), "{m}");
    // Text output names the same functions.
    let out = run(&["stack", "--core", p(&c), "--exe", p(&exe("x86_64"))]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("arch x86_64\n"));
    assert!(text.contains("gamma_+") && text.contains("(regs)") && text.contains("(fp)"));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn signal_on_sigaltstack_x86_64() {
    let d = tmp("signal");
    let c = core("core-x86_64-signal", &d);
    let v = json(&["stack", "--core", p(&c), "--exe", p(&exe("x86_64"))]);
    check_shape(&v, "x86_64");
    check_signal(&v);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn every_thread_x86_64() {
    let d = tmp("threads");
    let c = core("core-x86_64-threads", &d);
    let v = json(&["stack", "--core", p(&c), "--exe", p(&exe("x86_64"))]);
    check_shape(&v, "x86_64");
    check_threads(&v);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn aarch64_qemu_core() {
    let d = tmp("aarch64");
    let c = core("core-aarch64-chain", &d);
    // With --exe: the leaf gamma_ is frameless (GCC omits leaf frame records on aarch64), so
    // beta_ is only in lr; the frame-record walk must still show it (Hybrid, the default,
    // finds it by the leaf's CFI instead).
    let v = json(&[
        "stack",
        "--core",
        p(&c),
        "--exe",
        p(&exe("aarch64")),
        "--mode",
        "fp",
    ]);
    check_shape(&v, "aarch64");
    check_chain(&v);
    let frames = v["threads"][0]["frames"].as_array().unwrap();
    assert_eq!(frames[1]["symbol"], "beta_");
    assert_eq!(frames[1]["via"], "regs", "beta_ comes from lr");
    // With the sysroot, the C library's frames are found through the link map.
    let sysroot = Path::new("/usr/aarch64-linux-gnu");
    if sysroot.join("lib/libc.so.6").exists() {
        let v = json(&[
            "stack",
            "--core",
            p(&c),
            "--exe",
            p(&exe("aarch64")),
            "--sysroot",
            p(sysroot),
        ]);
        let s = symbols(&v["threads"][0]);
        assert!(
            s.iter().any(|n| n == "__libc_start_main"),
            "libc frames symbolised through the link map: {s:?}"
        );
        let m: Vec<&str> = frames.iter().filter_map(|f| f["module"].as_str()).collect();
        assert!(!m.is_empty());
    } else {
        skip("skipping the libc part: no /usr/aarch64-linux-gnu/lib/libc.so.6");
    }
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn aarch64_qemu_signal_core() {
    let d = tmp("aarch64-signal");
    let c = core("core-aarch64-signal", &d);
    // The handler and the interrupted spin_here are both frameless leaves: the trampoline is
    // only in the handler's lr, spin_caller only in the interrupted lr (from the ucontext).
    let v = json(&["stack", "--core", p(&c), "--exe", p(&exe("aarch64"))]);
    check_shape(&v, "aarch64");
    check_signal(&v);
    // eu-stack, the reference, loses the interrupted function on this core (qemu's signal
    // frame): say what it shows.
    if let Some(eu) = eu_stack(&c, Some(&exe("aarch64"))) {
        let ours = pcs(&v["threads"][0]);
        for (tid, theirs) in eu {
            eprintln!(
                "thread {tid}: eu-stack shows {theirs:x?}; we show {ours:x?} (spin_here at {:x})",
                ours[2]
            );
        }
    }
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn policy_flags_are_accepted_and_cpu_keeps_everything() {
    let d = tmp("policy");
    let c = core("core-x86_64-signal", &d);
    let e = exe("x86_64");
    let all = json(&["stack", "--core", p(&c), "--exe", p(&e)]);
    for k in ["cpu", "heap", "block", "mutex", "lock", "trace"] {
        let v = json(&["stack", "--core", p(&c), "--exe", p(&e), "--policy", k]);
        check_shape(&v, "x86_64");
        // A C program has no system-stack switch and its leaf (the handler) is user code:
        // every policy keeps the whole trace (Go's policies: tests/cli_go.rs).
        assert_eq!(pcs(&v["threads"][0]), pcs(&all["threads"][0]), "{k}");
    }
    let out = run(&["stack", "--core", p(&c), "--policy", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(d);
}

// ---- eu-stack as a reference ----

/// Every pc we report (frame pointers only) is one eu-stack reports, in the same order, and
/// every fixture function eu-stack shows that keeps a frame record shows in ours.
fn compare_with_eu_stack(core: &Path, exe: &Path) {
    let Some(eu) = eu_stack(core, Some(exe)) else {
        skip("skipping the eu-stack comparison: eu-stack (elfutils) is not installed");
        return;
    };
    let v = json(&["stack", "--core", p(core), "--exe", p(exe)]);
    let ours = v["threads"].as_array().unwrap();
    assert_eq!(ours.len(), eu.len(), "same threads");
    for t in ours {
        let tid = t["tid"].as_u64().unwrap();
        let (_, theirs) = eu.iter().find(|(x, _)| *x == tid).expect("tid in eu-stack");
        let mine = pcs(t);
        let mut j = 0;
        for pc in &mine {
            match theirs[j..].iter().position(|x| x == pc) {
                Some(k) => j += k + 1,
                None => panic!(
                    "thread {tid}: our pc {pc:#x} is not in eu-stack's {theirs:x?} (ours {mine:x?})"
                ),
            }
        }
        // What eu-stack shows beyond us: libc frames without frame records (its CFI), and the
        // caller of a frameless libc leaf. Say so.
        let extra: Vec<_> = theirs.iter().filter(|x| !mine.contains(x)).collect();
        if !extra.is_empty() {
            eprintln!("thread {tid}: eu-stack also shows {extra:x?} (CFI-only frames)");
        }
    }
}

#[test]
fn matches_eu_stack_on_committed_cores() {
    let d = tmp("eu");
    for name in [
        "core-x86_64-chain",
        "core-x86_64-signal",
        "core-x86_64-threads",
    ] {
        let c = core(name, &d);
        compare_with_eu_stack(&c, &exe("x86_64"));
    }
    let _ = std::fs::remove_dir_all(d);
}

/// Can this host make fresh x86_64 kernel cores of fixtures/c/chain.c (an x86_64 host, gcc,
/// core_pattern `core`)? Says why not (a failure under CI, see `need`).
fn can_make_fresh_cores() -> bool {
    if !cfg!(target_arch = "x86_64") {
        skip("skipping: kernel cores of x86_64 programs need an x86_64 host");
        return false;
    }
    need_kernel_cores() && need("gcc", "--version")
}

/// A fresh x86_64 kernel core of fixtures/c/chain.c running `variant`, made in `d` by
/// fixtures/c/make-core.sh: (the core, the executable).
fn fresh_core(variant: &str, d: &Path) -> (PathBuf, PathBuf) {
    fresh_core_with(variant, d, "-fno-omit-frame-pointer")
}

/// [`fresh_core`] with `cflags` in place of the frame-pointer flag.
fn fresh_core_with(variant: &str, d: &Path, cflags: &str) -> (PathBuf, PathBuf) {
    fresh_core_for("x86_64", variant, d, cflags)
}

/// [`fresh_core_with`] for `arch` (`aarch64`: a qemu-aarch64 core).
fn fresh_core_for(arch: &str, variant: &str, d: &Path, cflags: &str) -> (PathBuf, PathBuf) {
    let out = Command::new("bash")
        .arg(fixtures().join("c/make-core.sh"))
        .args([arch, variant, p(d)])
        .env("CHAIN_CFLAGS", cflags)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make-core.sh {arch} {variant}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        d.join(format!("core-{arch}-{variant}")),
        d.join(format!("chain-{arch}")),
    )
}

/// Fresh kernel cores from fixtures/c/make-core.sh, checked against the source's truth and
/// eu-stack. Needs gcc and core_pattern `core` (CI sets it); skipped with a message otherwise.
#[test]
fn fresh_x86_64_kernel_cores() {
    if !can_make_fresh_cores() {
        return;
    }
    let d = tmp("fresh");
    for variant in ["chain", "signal", "threads", "vdso"] {
        let (c, e) = fresh_core(variant, &d);
        // NT_FILE names the executable where it was built: no --exe needed.
        let v = json(&["stack", "--core", p(&c)]);
        check_shape(&v, "x86_64");
        match variant {
            "chain" => check_chain(&v),
            "signal" => check_signal(&v),
            "vdso" => check_vdso(&v),
            _ => check_threads(&v),
        }
        compare_with_eu_stack(&c, &e);
    }
    let _ = std::fs::remove_dir_all(d);
}

/// The thread that took the signal that dumped the core shows it, as gdb's "Program terminated
/// with signal": its name, `si_code` and, for a fault the kernel raised, the faulting address
/// (`NT_SIGINFO`). The other threads show none (the kernel writes the signal in every
/// thread's `pr_cursig`; the dumping thread is the first).
#[test]
fn the_thread_that_took_the_signal_shows_it() {
    if !can_make_fresh_cores() {
        return;
    }
    let d = tmp("signal-info");
    // (variant, signal, si_code, address)
    let cases: [(&str, &str, i64, Option<&str>); 4] = [
        ("chain", "SIGSEGV", 1, Some("0x0")), // SEGV_MAPERR: a store through NULL
        ("badcall", "SIGSEGV", 1, Some("0xdeadbeef000")), // the call's target
        ("abort", "SIGABRT", -6, None),       // SI_TKILL: raise's tgkill
        ("threads", "SIGSEGV", 1, Some("0x0")),
    ];
    for (variant, sig, code, addr) in cases {
        let (c, _) = fresh_core(variant, &d);
        let v = json(&["stack", "--core", p(&c)]);
        check_shape(&v, "x86_64");
        let t = &v["threads"][0];
        assert_eq!(t["signal"]["name"], sig, "{variant}: {t}");
        assert_eq!(t["signal"]["code"], code, "{variant}: {t}");
        match addr {
            Some(a) => assert_eq!(t["signal"]["address"], a, "{variant}: {t}"),
            None => assert!(t["signal"]["address"].is_null(), "{variant}: {t}"),
        }
        let text = String::from_utf8(run(&["stack", "--core", p(&c)]).stdout).unwrap();
        let header = text.lines().find(|l| l.starts_with("thread ")).unwrap();
        let want = match addr {
            Some(a) => format!(", signal {sig} at {a}"),
            None => format!(", signal {sig}"),
        };
        assert!(header.contains(&want), "{variant}: {header}");
        if variant == "threads" {
            let threads = v["threads"].as_array().unwrap();
            assert_eq!(threads.len(), 4);
            assert!(threads[1..].iter().all(|t| t["signal"].is_null()), "{v}");
            let headers = text.lines().filter(|l| l.contains(", signal ")).count();
            assert_eq!(headers, 1, "{text}");
        }
    }
    let _ = std::fs::remove_dir_all(d);
}

/// `unwind verify` on a program built without frame pointers, stopped in a signal handler:
/// every frame DWARF found past the handler is missing from the FP walk, and each is named,
/// the sigreturn trampoline (whose pc is no return address) as `__restore_rt`, not `?`.
#[test]
fn verify_names_every_frame_fp_missed() {
    if !can_make_fresh_cores() {
        return;
    }
    let d = tmp("verify-nofp");
    let (c, e) = fresh_core_with("signal", &d, "-fomit-frame-pointer");
    let out = run(&["verify", "--core", p(&c), "--exe", p(&e)]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DIFFER"), "{text}");
    let missing: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("missing frame"))
        .filter_map(|l| l.rsplit_once(" (")?.1.strip_suffix(')'))
        .collect();
    for want in ["__restore_rt", "spin_here", "spin_caller", "main"] {
        assert!(
            missing.contains(&want),
            "{want} not in {missing:?}:\n{text}"
        );
    }
    assert!(!missing.contains(&"?"), "{text}");
    let _ = std::fs::remove_dir_all(d);
}

/// A frame-record walk that reads a zero frame pointer in a function that is no thread's entry
/// (fixtures/c/chain.c `zerofp`: an assembly leaf saves rbp, zeroes it and traps) ended short:
/// `--mode fp` gives the leaf and its caller (found on the stack, where it returns after a
/// direct call to the leaf: the frame pointer is no record) and says truncated; Hybrid and
/// Dwarf read the CFI there and walk on to `_start`, whole. A thread's usual end
/// (`start_thread`) stays whole in FP mode.
#[test]
fn a_zero_frame_pointer_outside_a_thread_entry_is_a_truncation() {
    if !can_make_fresh_cores() {
        return;
    }
    let d = tmp("zerofp");
    let (c, _) = fresh_core("zerofp", &d);
    let fp = json(&["stack", "--core", p(&c), "--mode", "fp"]);
    let t = &fp["threads"][0];
    assert_eq!(symbols(t), ["zero_fp_leaf", "zfp_caller"], "{fp}");
    assert_eq!(t["truncated"], true, "{fp}");
    for mode in ["hybrid", "dwarf"] {
        let v = json(&["stack", "--core", p(&c), "--mode", mode]);
        let t = &v["threads"][0];
        assert!(
            has_run(&symbols(t), &["zero_fp_leaf", "zfp_caller", "main"]),
            "{mode}: {v}"
        );
        assert_eq!(symbols(t).last().map(String::as_str), Some("_start"), "{v}");
        assert_eq!(t["truncated"], false, "{mode}: {v}");
    }
    let (c, _) = fresh_core("threads", &d);
    let fp = json(&["stack", "--core", p(&c), "--mode", "fp"]);
    let workers: Vec<&Value> = fp["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| symbols(t).last().map(String::as_str) == Some("start_thread"))
        .collect();
    assert_eq!(workers.len(), 3, "{fp}");
    assert!(workers.iter().all(|t| t["truncated"] == false), "{fp}");
    let _ = std::fs::remove_dir_all(d);
}

/// A call through a bad function pointer faults at its target, before anything ran there: the
/// caller is the return address the call left at sp, as for a null pointer (gdb walks it so).
/// Before, every caller was lost (the walk read the frame record at the fault and said
/// misaligned). fixtures/c/chain.c `badcall` (unmapped) and `badheap` (a heap block: mapped,
/// not executable); every mode, and built without frame pointers too.
#[test]
fn a_call_through_a_bad_function_pointer_keeps_its_callers() {
    if !can_make_fresh_cores() {
        return;
    }
    let d = tmp("badcall");
    for variant in ["badcall", "badheap"] {
        for flags in ["", "-O2 -fomit-frame-pointer"] {
            let (c, _) = fresh_core_with(variant, &d, flags);
            let modes: &[&str] = if flags.is_empty() {
                &["fp", "hybrid", "dwarf"]
            } else {
                &["hybrid", "dwarf"]
            };
            for mode in modes {
                let v = json(&["stack", "--core", p(&c), "--mode", mode]);
                let t = &v["threads"][0];
                let s = symbols(t);
                assert_eq!(
                    s.first().map(String::as_str),
                    Some("?"),
                    "{variant} {flags} {mode}: {v}"
                );
                assert!(
                    has_run(&s, &["?", "bad_caller", "main"]),
                    "{variant} {flags} {mode}: {v}"
                );
                if *mode != "fp" {
                    assert_eq!(s.last().map(String::as_str), Some("_start"), "{v}");
                    assert_eq!(t["truncated"], false, "{variant} {flags} {mode}: {v}");
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(d);
}

/// A frame record whose return address is a data word (code that uses the frame pointer as a
/// general register can leave one where a walk reads it): that frame is left out and the stack
/// reported truncated. Before, `--mode fp` showed a frame at 0x4141414141 and called the stack
/// whole; the CFI modes showed it too. fixtures/c/chain.c `fakerec`.
#[test]
fn a_return_address_in_no_code_ends_the_walk_truncated() {
    if !can_make_fresh_cores() {
        return;
    }
    for (mode, text) in cut_in_every_mode("fakerec", &["fake_record"], "return address not in code")
    {
        assert!(!text.contains("4141414141"), "{mode}: {text}");
    }
}

/// A fresh core of fixtures/c/chain.c `variant`, walked in every mode: its thread's frames are
/// exactly `frames`, cut, and the text says why (`(truncated: REASON)`). The text outputs, by
/// mode.
fn cut_in_every_mode(variant: &str, frames: &[&str], reason: &str) -> Vec<(&'static str, String)> {
    let d = tmp(variant);
    let (c, _) = fresh_core(variant, &d);
    let mut texts = Vec::new();
    for mode in ["fp", "hybrid", "dwarf"] {
        let v = json(&["stack", "--core", p(&c), "--mode", mode]);
        let t = &v["threads"][0];
        assert_eq!(symbols(t), frames, "{mode}: {v}");
        assert_eq!(t["truncated"], true, "{mode}: {v}");
        let text = run(&["stack", "--core", p(&c), "--mode", mode]);
        let text = String::from_utf8_lossy(&text.stdout).into_owned();
        assert!(
            text.contains(&format!("(truncated: {reason})")),
            "{mode}: {text}"
        );
        texts.push((mode, text));
    }
    let _ = std::fs::remove_dir_all(d);
    texts
}

/// A leaf with no CFI and no frame record (fixtures/c/chain.c `nocfi`, assembly that faults
/// with nothing after it): the frame pointer is still its caller's record, so a frame-record
/// step from the leaf lands in the caller's caller. Hybrid and FP modes find the caller's
/// return address on the stack instead, where it returns after a direct call to the leaf's
/// own function (they skipped `nocfi_caller` and called the stack whole: found by outside
/// use).
#[test]
fn a_leaf_without_cfi_or_frame_record_keeps_its_caller() {
    if !can_make_fresh_cores() {
        return;
    }
    let d = tmp("nocfi");
    let (c, _) = fresh_core("nocfi", &d);
    for mode in ["fp", "hybrid"] {
        let v = json(&["stack", "--core", p(&c), "--mode", mode]);
        let n = symbols(&v["threads"][0]);
        assert_eq!(
            n[..3],
            ["nocfi_leaf", "nocfi_caller", "main"],
            "{mode}: {v}"
        );
    }
    let _ = std::fs::remove_dir_all(d);
}

/// A return address overwritten with zero in the middle of a stack (fixtures/c/chain.c
/// `zerora`): every mode stops at the frame whose return address it is, and says the stack
/// ended short of its root. The CFI modes took the zero for the end of the stack and called
/// the two frames whole (a thread's entry ends a stack by an undefined return address in its
/// CFI, not by a zero on the stack); FP mode said so already.
#[test]
fn a_zeroed_return_address_is_no_stack_s_end() {
    if !can_make_fresh_cores() {
        return;
    }
    cut_in_every_mode(
        "zerora",
        &["zr_smash", "zr_mid"],
        "ended short of the stack's root",
    );
}

/// A thread stopped in a PLT stub (gdb's `break clock_gettime@plt`, then `gcore`) is named as
/// gdb names it, `clock_gettime@plt`, from the stub's jump through a GOT slot and the slot's
/// relocation, with and without IBT's `.plt.sec`: the symbol tables name no stub, and the
/// symbol before them (`_init`, in `.init`) took it (`_init+0x30`: found by outside use).
#[test]
fn a_pc_in_a_plt_stub_is_named_after_its_target() {
    if !cfg!(target_arch = "x86_64") || !need("gcc", "--version") || !need("gdb", "--version") {
        return;
    }
    let d = tmp("plt");
    let src = d.join("plt.c");
    std::fs::write(
        &src,
        "#include <time.h>\n\
         __attribute__((noinline)) void spin(void) {\n\
           struct timespec ts; for (;;) clock_gettime(CLOCK_MONOTONIC, &ts); }\n\
         int main(void) { spin(); }\n",
    )
    .unwrap();
    for (name, flags) in [
        ("plain", &[][..]),
        ("ibt", &["-fcf-protection=full", "-Wl,-z,ibtplt"][..]),
    ] {
        let exe = d.join(name);
        let ok = Command::new("gcc")
            .args(["-O2", "-g"])
            .args(flags)
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .status()
            .unwrap();
        assert!(ok.success(), "{name}");
        let core = d.join(format!("{name}.core"));
        let out = Command::new("gdb")
            .args([
                "-batch",
                "-nx",
                "-ex",
                "set pagination off",
                "-ex",
                "starti",
            ])
            .args(["-ex", "break clock_gettime@plt", "-ex", "continue"])
            .args(["-ex", &format!("gcore {}", core.display()), "-ex", "kill"])
            .arg(&exe)
            .output()
            .unwrap();
        assert!(
            core.exists(),
            "{name}: gdb wrote no core: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v = json(&["stack", "--core", p(&core), "--exe", p(&exe)]);
        let n = symbols(&v["threads"][0]);
        assert_eq!(n[..2], ["clock_gettime@plt", "spin"], "{name}: {v}");
    }
    let _ = std::fs::remove_dir_all(d);
}

/// A thread caught creating a thread, at `clone3`'s return in the parent (where `--pid`'s
/// stop lands it often: the syscall's exit): glibc's FDE ends before the `syscall`, so that pc
/// has no CFI, and the walk stopped at its first frame. The code there (`test; jl; je; ret`)
/// leaves the return address at sp, as gdb finds it. The core is gdb's, stopped at that
/// return by `catch syscall clone3`.
#[test]
fn a_thread_at_clone3_s_return_keeps_its_callers() {
    if !cfg!(target_arch = "x86_64") || !need("gcc", "--version") || !need("gdb", "--version") {
        return;
    }
    let d = tmp("clone3");
    let src = d.join("spawn.c");
    std::fs::write(
        &src,
        "#include <pthread.h>\n#include <unistd.h>\n\
         static void *worker(void *a) { (void)a; for (;;) pause(); }\n\
         int main(void) { pthread_t t; pthread_create(&t, 0, worker, 0); for (;;) pause(); }\n",
    )
    .unwrap();
    let exe = d.join("spawn");
    let ok = Command::new("gcc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap();
    assert!(ok.success());
    let core = d.join("clone3.core");
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "set pagination off"])
        .args([
            "-ex",
            "catch syscall clone3",
            "-ex",
            "run",
            "-ex",
            "continue",
        ])
        .args(["-ex", &format!("gcore {}", core.display()), "-ex", "kill"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        core.exists(),
        "gdb wrote no core: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for mode in ["hybrid", "fp"] {
        let v = json(&[
            "stack",
            "--core",
            p(&core),
            "--exe",
            p(&exe),
            "--mode",
            mode,
        ]);
        let parent = v["threads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| symbols(t).first().is_some_and(|s| s == "clone3"))
            .unwrap_or_else(|| panic!("{mode}: no thread at clone3: {v}"));
        let s = symbols(parent);
        if mode == "hybrid" {
            assert!(s.iter().any(|f| f == "pthread_create"), "{s:?}");
            assert!(s.iter().any(|f| f == "main"), "{s:?}");
        } else {
            // glibc keeps no frame records: its caller, found at sp, then the end.
            assert!(s.len() >= 2, "{mode}: {s:?}");
        }
    }
    let _ = std::fs::remove_dir_all(d);
}

// ---- bad input ----

/// Exit status 2, nothing on stdout, one line on stderr naming the problem.
/// Runs `unwind` as a user that file permissions apply to: this one, or `nobody` (through
/// `runuser`) when this is root, which reads every file.
fn as_unprivileged(args: &[&str]) -> Output {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return run(args);
    }
    // A copy nobody can run, wherever the build is (a home directory may be closed to it).
    let bin = std::env::temp_dir().join(format!("unwind-cli-{}-bin", std::process::id()));
    if !bin.exists() {
        std::fs::copy(BIN, &bin).unwrap();
    }
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&bin)
        .args(args)
        .output()
        .expect("runuser (util-linux) runs unwind as nobody");
    let _ = std::fs::remove_file(&bin);
    out
}

/// Makes `cmd` run with `resource` limited to `limit` (soft and hard), as `prlimit` does.
fn limited(cmd: &mut Command, resource: libc::__rlimit_resource_t, limit: libc::rlim_t) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; the child only lowers its own limit.
    unsafe {
        cmd.pre_exec(move || {
            let l = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(resource, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Under tight limits (`prlimit`): a 64 KiB main-thread stack with line tables (miniz_oxide
/// inflating compressed debug sections overflowed it: SIGSEGV), and 20 MiB of address space
/// (a file that could not be mapped was read into an allocation that aborted). Found by
/// outside use in the twenty-sixth round. The run must end by itself: 0, or 2 with a message.
#[test]
fn tight_limits_end_in_an_exit_status_not_a_signal() {
    let d = tmp("limits");
    let c = core("core-x86_64-chain", &d);
    for (what, resource, limit) in [
        ("stack", libc::RLIMIT_STACK, 64 << 10),
        ("address space", libc::RLIMIT_AS, 20 << 20),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "stack",
            "--core",
            p(&c),
            "--exe",
            p(&exe("x86_64")),
            "--lines",
        ]);
        limited(&mut cmd, resource, limit);
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(0 | 2)),
            "{what}: {:?}\n{err}",
            out.status
        );
    }
}

/// A compressed core (systemd-coredump's `.zst`, a `.gz` as here) says how to decompress it,
/// and a core too large to read that cannot be mapped (here: 20 MiB of address space for a
/// 200 MiB core) says why (it was "not a 64-bit little-endian ELF file" and "No such device
/// (os error 19)": found by outside use in the twenty-sixth round). Both exit 2.
#[test]
fn compressed_and_unmappable_cores_say_why() {
    let gz = fixtures().join("cores/core-x86_64-chain.gz");
    let out = run(&["stack", "--core", p(&gz)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("a gzip-compressed file, not a core: decompress it first (gzip -d FILE"),
        "{err}"
    );
    let d = tmp("unmappable");
    let c = core("core-x86_64-chain", &d);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&c)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["stack", "--core", p(&c)]);
    limited(&mut cmd, libc::RLIMIT_AS, 20 << 20);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("it cannot be mapped (Cannot allocate memory"),
        "{err}"
    );
}

/// A core written with a `coredump_filter` that leaves out ELF headers (bit 4) holds no first
/// page of the mapped files, so they cannot be checked against what ran: a warning names them
/// (a rebuilt program's frames were misnamed without a word, as by gdb and eu-stack: found by
/// outside use in the twenty-sixth round). The default filter's core draws none.
#[test]
fn a_core_without_elf_headers_says_its_files_are_unchecked() {
    if !can_make_fresh_cores() {
        return;
    }
    let d = tmp("no-elf-headers");
    let out = Command::new("bash")
        .arg(fixtures().join("c/make-core.sh"))
        .args(["x86_64", "abort", p(&d)])
        .env("COREDUMP_FILTER", "0x3")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (c, e) = (d.join("core-x86_64-abort"), d.join("chain-x86_64"));
    let run_on = |c: &Path| {
        let out = run(&["stack", "--core", p(c)]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run_on(&c);
    assert!(
        err.contains("the core holds no copy of the first page of"),
        "{err}"
    );
    assert!(err.contains(p(&e)), "{err}");
    let (c, e) = fresh_core("abort", &d);
    let err = run_on(&c);
    assert!(!err.contains("no copy of the first page"), "{err}");
    // The program deleted since: its warning says --exe gives it (found by outside use in the
    // twenty-sixth round: only a replaced program's said so).
    std::fs::remove_file(&e).unwrap();
    let err = run_on(&c);
    assert!(
        err.contains(&format!("module {} not available", p(&e)))
            && err.contains("; pass the program with --exe"),
        "{err}"
    );
}

/// `--core -` reads the core from standard input (`coredumpctl dump PID | unwind stack --core
/// -`, a decompressor's output), with the same output as from the file; a pipe given by its
/// path says so (found by outside use in the twenty-sixth round: "-" was a file name).
#[test]
fn a_core_on_standard_input() {
    use std::io::Write;
    use std::process::Stdio;
    let d = tmp("stdin");
    let c = core("core-x86_64-chain", &d);
    let bytes = std::fs::read(&c).unwrap();
    let piped = |args: &[&str]| {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = bytes.clone();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    };
    let exe = exe("x86_64");
    let from_stdin = piped(&["stack", "--core", "-", "--exe", p(&exe), "--format", "json"]);
    let from_file = run(&[
        "stack",
        "--core",
        p(&c),
        "--exe",
        p(&exe),
        "--format",
        "json",
    ]);
    assert!(
        from_stdin.status.success(),
        "{}",
        String::from_utf8_lossy(&from_stdin.stderr)
    );
    assert_eq!(from_stdin.stdout, from_file.stdout);
    let out = piped(&["stack", "--core", "/dev/stdin"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--core - reads a core from standard input"),
        "{err}"
    );
}

/// A module whose file is now not ELF (a program replaced by a text file, here under a
/// `--sysroot`): a warning says so where a frame ran in it (the warning was dropped as a data
/// file's, found by outside use in the twenty-sixth round).
#[test]
fn a_module_now_not_elf_is_warned_where_frames_ran() {
    let d = tmp("not-elf-module");
    let c = core("core-x86_64-chain", &d);
    let root = d.join("root");
    std::fs::create_dir_all(root.join("tmp/unwind-fixtures")).unwrap();
    std::fs::write(root.join("tmp/unwind-fixtures/chain-x86_64"), "hello\n").unwrap();
    let out = run(&["stack", "--core", p(&c), "--sysroot", p(&root)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("module /tmp/unwind-fixtures/chain-x86_64 not available (not an ELF file)"),
        "{err}"
    );
}

fn assert_bad(args: &[&str], what: &str) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("unwind: "), "{err}");
    assert!(err.contains(what), "{args:?}: expected {what:?} in {err}");
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let d = tmp("bad");
    let c = core("core-x86_64-chain", &d);
    let bytes = std::fs::read(&c).unwrap();

    assert_bad(&["stack", "--core", p(&d.join("nope"))], "No such file");
    assert_bad(&["stack", "--core", p(&exe("x86_64"))], "not a core");

    let garbage = d.join("garbage");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let g: Vec<u8> = (0..100_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    std::fs::write(&garbage, &g).unwrap();
    assert_bad(&["stack", "--core", p(&garbage)], "not a 64-bit");

    let empty = d.join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_bad(&["stack", "--core", p(&empty)], "empty file");

    // Cut inside the program headers, and inside the notes.
    for cut in [100, 2000] {
        let t = d.join(format!("truncated-{cut}"));
        std::fs::write(&t, &bytes[..cut]).unwrap();
        assert_bad(&["stack", "--core", p(&t)], "truncated");
    }

    // e_machine = EM_ARM (40).
    let mut w = bytes.clone();
    w[18] = 40;
    w[19] = 0;
    let wrong = d.join("wrong-arch");
    std::fs::write(&wrong, &w).unwrap();
    assert_bad(&["stack", "--core", p(&wrong)], "unsupported architecture");

    assert_bad(
        &["stack", "--core", p(&c), "--exe", p(&d.join("no-exe"))],
        "no such file",
    );
    // An object file (e_type ET_REL) or a separate debug file given as the program: refused
    // with what it is (they were taken silently, every frame `?`: outside use).
    let mut obj = std::fs::read(exe("x86_64")).unwrap();
    obj[16..18].copy_from_slice(&1u16.to_le_bytes());
    let obj_path = d.join("prog.o");
    std::fs::write(&obj_path, &obj).unwrap();
    assert_bad(
        &["stack", "--core", p(&c), "--exe", p(&obj_path)],
        "relocatable object file",
    );
    if need("objcopy", "--version") {
        let dbg = d.join("prog.debug");
        let ok = Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(exe("x86_64"))
            .arg(&dbg)
            .status()
            .unwrap();
        assert!(ok.success());
        assert_bad(
            &["stack", "--core", p(&c), "--exe", p(&dbg)],
            "separate debug file",
        );
    }
    assert_bad(
        &["stack", "--core", p(&c), "--exe", p(&d)],
        "not a regular file",
    );
    // An --exe of another architecture, or not ELF at all: its names would all be wrong.
    assert_bad(
        &["stack", "--core", p(&c), "--exe", p(&exe("aarch64"))],
        "built for aarch64, the core is x86_64: wrong architecture",
    );
    let text = d.join("not-elf");
    std::fs::write(&text, "#!/bin/sh\necho hello\n").unwrap();
    assert_bad(
        &["stack", "--core", p(&c), "--exe", p(&text)],
        "not an ELF file",
    );
    assert_bad(
        &["verify", "--core", p(&c), "--exe", p(&exe("aarch64"))],
        "wrong architecture",
    );
    // An --exe this user may not read, or in a directory it may not enter: exit 2 saying so
    // (it was skipped with a warning naming the core's path for it and exit 0, and the
    // directory's EACCES read "no such file": found by outside use, twenty-sixth round).
    use std::os::unix::fs::PermissionsExt;
    let locked = d.join("exe-000");
    std::fs::copy(exe("x86_64"), &locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let shut = d.join("dir-000");
    std::fs::create_dir(&shut).unwrap();
    std::fs::copy(exe("x86_64"), shut.join("chain")).unwrap();
    std::fs::set_permissions(&shut, std::fs::Permissions::from_mode(0o000)).unwrap();
    for (exe_arg, what) in [
        (
            locked.clone(),
            "--exe PATH: cannot read it: Permission denied",
        ),
        (shut.join("chain"), "--exe PATH: Permission denied"),
    ] {
        let out = as_unprivileged(&["stack", "--core", p(&c), "--exe", p(&exe_arg)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{exe_arg:?}: {err}");
        let want = what.replace("PATH", p(&exe_arg));
        assert_eq!(err.trim_end(), format!("unwind: {want}"));
    }
    std::fs::set_permissions(&shut, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A --sysroot that is not there was ignored: the host's libraries were read instead.
    assert_bad(
        &["stack", "--core", p(&c), "--sysroot", p(&d.join("no-root"))],
        "--sysroot",
    );
    assert_bad(
        &["stack", "--core", p(&c), "--sysroot", p(&text)],
        "not a directory",
    );
    // The core given without --core: the error says how to give it.
    assert_bad(&["stack", p(&c)], "--core CORE");
    assert_bad(&["verify", p(&c)], "--core CORE");
    assert_bad(
        &["stack", "--core", p(&c), "--max-frames", "0"],
        "--max-frames",
    );
    assert_bad(
        &["stack", "--core", p(&c), "--max-frames", "many"],
        "--max-frames",
    );
    // Over the limit of all threads' frames: walked, with a warning that says what was kept
    // (it was cut to the limit without a word).
    let over = run(&["stack", "--core", p(&c), "--max-frames", "400000"]);
    assert!(over.status.success());
    let err = String::from_utf8_lossy(&over.stderr);
    assert!(
        err.contains("--max-frames 400000 is over the limit of 262144 frames"),
        "{err}"
    );
    // The demo's output directory is checked before its run, and named.
    let file = d.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert_bad(&["demo", "--out", p(&file)], "a-file");
    assert_bad(&["demo", "--out", ""], "--out");
    // A directory no file can be made in: said at once (the demo ran its 8 s, then failed
    // with "demo: No such file or directory" and no path: found by outside use).
    assert_bad(&["demo", "--out", "/proc/self"], "--out /proc/self");
    assert_bad(
        &["demo", "--heap-rate", "18446744073709551615"],
        "--heap-rate",
    );
    assert_bad(&["stack"], "--core");
    assert_bad(&["stack", "--core", p(&c), "--format", "xml"], "--format");
    assert_bad(&["frobnicate"], "unknown command");
    assert_bad(&["stack", "--frobnicate"], "unwind --help");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn help_after_a_command_prints_the_usage() {
    for args in [
        &["--help"][..],
        &["stack", "--help"],
        &["stack", "--core", "x", "-h"],
        &["verify", "--help"],
        &["demo", "-h"],
    ] {
        let out = run(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(
            text.contains("usage: unwind stack --core CORE") && text.contains("--pid PID"),
            "{args:?}: {text}"
        );
        // Every option the usage names is explained on a line of its own.
        let (usage, help) = text
            .split_once("\nCommands:")
            .expect("the help after the usage");
        let mut options: Vec<&str> = usage
            .split(|c: char| c == '[' || c == ']' || c.is_whitespace())
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .collect();
        options.sort();
        options.dedup();
        assert!(options.len() >= 15, "{options:?}");
        for o in options {
            assert!(
                help.lines().any(|l| l.trim_start().starts_with(o)),
                "{args:?}: {o} is not explained:\n{help}"
            );
        }
    }
}

#[test]
fn version_prints_the_crate_s_version() {
    for arg in ["--version", "-V", "version"] {
        let out = run(&[arg]);
        assert!(out.status.success(), "{arg}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("unwind {}\n", env!("CARGO_PKG_VERSION")),
            "{arg}"
        );
    }
}

#[test]
fn truncated_anywhere_never_panics() {
    let d = tmp("cuts");
    let c = core("core-x86_64-signal", &d);
    let bytes = std::fs::read(&c).unwrap();
    let t = d.join("cut");
    // Cut at a spread of offsets: either a clean error (2) or a (shorter) result (0).
    let mut cut = 64;
    while cut < bytes.len() {
        std::fs::write(&t, &bytes[..cut]).unwrap();
        let out = run(&["stack", "--core", p(&t), "--format", "json"]);
        match out.status.code() {
            Some(0) => {
                let v: Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
                check_shape(&v, "x86_64");
            }
            Some(2) => assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1),
            other => panic!(
                "cut at {cut}: status {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
        cut = cut * 3 / 2;
    }
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn missing_module_warns_and_leaves_frames_unsymbolised() {
    let d = tmp("missing");
    let c = core("core-x86_64-chain", &d);
    let mut bytes = std::fs::read(&c).unwrap();
    // Rename the executable in NT_FILE (same length): the file it names does not exist.
    let from = b"/chain-x86_64\0";
    let at: Vec<usize> = bytes
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert!(!at.is_empty(), "NT_FILE names the executable");
    for i in at {
        bytes[i + from.len() - 2] = b'Z';
    }
    let m = d.join("core-missing");
    std::fs::write(&m, &bytes).unwrap();
    let out = run(&["stack", "--core", p(&m), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("chain-x86_6Z"),
        "{err}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    check_shape(&v, "x86_64");
    // Its frames stay unnamed (a kernel core holds the module's first page and its written
    // data: its few dynamic symbols, none of the program's functions), under the path the
    // core names.
    let f0 = &v["threads"][0]["frames"][0];
    assert!(f0["symbol"].is_null(), "{f0}");
    assert!(
        f0["module"].is_null() || f0["module"].as_str().unwrap().ends_with("chain-x86_6Z"),
        "{f0}"
    );
    assert!(v["threads"][0]["frames"].as_array().unwrap().len() >= 4);
    // --exe supplies it.
    let v = json(&["stack", "--core", p(&m), "--exe", p(&exe("x86_64"))]);
    check_chain(&v);
    let _ = std::fs::remove_dir_all(d);
}

/// `unwind stack ... | head -1`: the reader closes the pipe before the report is written; that
/// is no error (exit 0, nothing on stderr; it was exit 2, "writing output: Broken pipe").
#[test]
fn a_reader_that_closes_the_pipe_early_is_no_error() {
    let d = tmp("pipe");
    let c = core("core-x86_64-chain", &d);
    let e = exe("x86_64");
    for args in [
        &["stack", "--core", p(&c), "--exe", p(&e), "--lines"][..],
        &["--help"],
        &["stack", "--help"],
    ] {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Closed at once: the core is not read yet.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(d);
}

/// `unwind demo >&- 2>&-`: the binary's own entry skips std's start-up, which would open
/// `/dev/null` on closed standard fds; it does that itself, so a profile file it creates never
/// takes fd 1 or 2 and never receives the report or a warning. The demo runs, exits 0, and
/// its folded profiles hold only `stack count` lines.
#[test]
fn closed_standard_fds_do_not_leak_output_into_profiles() {
    use std::os::unix::process::CommandExt;
    let d = tmp("closed-fds");
    let mut c = Command::new(BIN);
    c.args(["demo", "--seconds", "0.3", "--threads", "1", "--out", p(&d)]);
    // SAFETY: the closure only calls `close`, async-signal-safe, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::close(1);
            libc::close(2);
            Ok(())
        });
    }
    let status = c.status().unwrap();
    assert_eq!(status.code(), Some(0));
    for f in ["cpu.folded", "heap.folded"] {
        let text = std::fs::read_to_string(d.join(f)).unwrap();
        assert!(!text.is_empty(), "{f} is empty");
        for line in text.lines() {
            let (stack, n) = line.rsplit_once(' ').unwrap_or(("", ""));
            assert!(
                !stack.is_empty() && n.parse::<u64>().is_ok(),
                "{f}: not a folded line: {line:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn lines_add_file_and_line() {
    let d = tmp("lines");
    let c = core("core-x86_64-chain", &d);
    let e = exe("x86_64");
    let out = run(&["stack", "--core", p(&c), "--exe", p(&e), "--lines"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let gamma = text.lines().find(|l| l.contains("gamma_+")).unwrap();
    assert!(gamma.contains("chain.c:"), "{gamma}");
    // JSON: the contract's keys plus "line", "symbol_line" and "inlined" (extensions, only
    // with --lines); chain.c has nothing inlined at its frames, so the two lines agree.
    let v = json(&["stack", "--core", p(&c), "--exe", p(&e), "--lines"]);
    let f0 = &v["threads"][0]["frames"][0];
    assert_eq!(f0.as_object().unwrap().len(), 8);
    assert!(f0["line"].as_str().unwrap().contains("chain.c:"), "{f0}");
    assert_eq!(f0["symbol_line"], f0["line"], "{f0}");
    assert_eq!(f0["inlined"].as_array().map(Vec::len), Some(0), "{f0}");
    let _ = std::fs::remove_dir_all(d);
}

/// The executable of a fresh kernel core (fixtures/c/make-core.sh `chain`) rebuilt in place
/// after the core was written, then deleted. The core's memory holds the build id of the file
/// that ran: a different file under its path is not used (its symbols named the wrong code:
/// `_init+0x65`, with no warning), `--exe` stands in for the executable's mapping (it was
/// ignored whenever the path existed), and a deleted executable that `--exe` supplies draws no
/// warning.
#[test]
fn a_replaced_executable_is_not_used_and_exe_stands_in_for_it() {
    if !can_make_fresh_cores() {
        return;
    }
    let d = tmp("replaced");
    let (c, e) = fresh_core("chain", &d);
    let kept = d.join("chain-kept");
    std::fs::copy(&e, &kept).unwrap();
    // Rebuilt with other flags: another build id, other code at the same addresses.
    let rebuilt = Command::new("gcc")
        .args(["-O2", "-g", "-pthread", "-o"])
        .arg(&e)
        .arg(fixtures().join("c/chain.c"))
        .output()
        .unwrap();
    assert!(rebuilt.status.success());

    let run_stderr = |args: &[&str]| {
        let o = run(args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        (v, String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (v, err) = run_stderr(&["stack", "--core", p(&c), "--format", "json"]);
    assert!(
        err.contains("build id") && err.contains("chain-x86_64"),
        "{err}"
    );
    // The executable's frames: nothing named from the rebuilt file (the module is made from
    // the core's memory, whose dynamic symbols name none of the program's functions).
    let t = &v["threads"][0];
    for f in t["frames"].as_array().unwrap() {
        assert!(
            f["module"] != p(&e) || f["symbol"].is_null(),
            "a frame named from the rebuilt file: {t}"
        );
    }
    // --exe: the file that ran, symbolised, nothing to warn about.
    let with_kept = [
        "stack",
        "--core",
        p(&c),
        "--exe",
        p(&kept),
        "--format",
        "json",
    ];
    let (v, err) = run_stderr(&with_kept);
    check_chain(&v);
    assert_eq!(err, "", "{err}");
    // --exe with the rebuilt file: used (the user chose it), with a warning.
    let (_, err) = run_stderr(&["stack", "--core", p(&c), "--exe", p(&e), "--format", "json"]);
    assert!(err.contains("--exe") && err.contains("build id"), "{err}");
    // Deleted: --exe supplies it, and no frame needs the missing path.
    std::fs::remove_file(&e).unwrap();
    let (v, err) = run_stderr(&with_kept);
    check_chain(&v);
    assert_eq!(err, "", "{err}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn paths_that_are_not_utf8() {
    // A path is whatever bytes the OS allows: no panic, the usual one-line errors.
    use std::os::unix::ffi::OsStrExt;
    let odd = std::ffi::OsStr::from_bytes(b"/nonexistent/core\xff");
    for flag in ["--core", "--exe", "--sysroot"] {
        let mut c = Command::new(BIN);
        c.arg("stack");
        if flag != "--core" {
            c.args(["--core", "/nonexistent/core"]);
        }
        let out = c.arg(flag).arg(odd).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert_eq!(err.lines().count(), 1, "{flag}: {err}");
        assert!(err.starts_with("unwind: "), "{flag}: {err}");
    }
    // A value that must be text says so.
    let out = Command::new(BIN)
        .args(["stack", "--mode"])
        .arg(std::ffi::OsStr::from_bytes(b"fp\xff"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not valid UTF-8"), "{err}");
}

/// A program run from a directory whose name is not UTF-8: the core's `NT_FILE` note names
/// the executable by those bytes, and the walk opens that file (it used to show the path with
/// U+FFFD, fail to open it and leave the program's frames unnamed).
#[test]
fn a_module_path_that_is_not_utf8_is_opened() {
    use std::os::unix::ffi::OsStrExt;
    if !can_make_fresh_cores() {
        return;
    }
    let d = tmp("not-utf8-module");
    let odd = d.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    std::fs::create_dir_all(&odd).unwrap();
    let exe = odd.join("chain");
    let built = Command::new("gcc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&exe)
        .arg(fixtures().join("c/chain.c"))
        .status()
        .unwrap();
    assert!(built.success());
    let crashed = Command::new("bash")
        .arg("-c")
        .arg("ulimit -c unlimited; exec \"$0\" chain")
        .arg(&exe)
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    let c = d.join("core");
    assert!(c.exists(), "no core in {}", d.display());
    let out = run(&["stack", "--core", p(&c), "--format", "json", "--lines"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err, "", "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    check_chain(&v);
    let module = v["threads"][0]["frames"][0]["module"].as_str().unwrap();
    assert!(module.ends_with("/caf\u{fffd}/chain"), "{module}");
    let _ = std::fs::remove_dir_all(d);
}

/// A statically linked threaded aarch64 program's qemu core (a dynamically linked one makes qemu
/// spin instead): every worker ends at glibc's `thread_start`, whole, in every mode. Hybrid
/// reached it by a frame record (sp unknown after one on aarch64) and its CFI (return address
/// undefined) failed for want of a CFA: `truncated: unreadable frame record`. FP mode said
/// `ended short` (`thread_start` was no known root).
#[test]
fn a_threaded_aarch64_core_s_workers_end_whole_at_thread_start() {
    if !need("qemu-aarch64", "--version") || !need("aarch64-linux-gnu-gcc", "--version") {
        return;
    }
    let d = tmp("a64-threads");
    let (core, _) = fresh_core_for("aarch64", "threads", &d, "-static -fno-omit-frame-pointer");
    for mode in ["hybrid", "fp", "dwarf"] {
        let v = json(&["stack", "--core", p(&core), "--mode", mode]);
        let threads = v["threads"].as_array().unwrap();
        assert_eq!(threads.len(), 4, "{mode}: {v}");
        check_chain(&v);
        let workers: Vec<&Value> = threads
            .iter()
            .filter(|t| symbols(t).iter().any(|s| s == "worker_top"))
            .collect();
        assert_eq!(workers.len(), 3, "{mode}: {v}");
        for t in workers {
            let s = symbols(t);
            assert!(
                has_run(&s, &["worker_top", "start_thread", "thread_start"]),
                "{mode}: {s:?}"
            );
            assert_eq!(s.last().map(String::as_str), Some("thread_start"), "{mode}");
            assert_eq!(t["truncated"], false, "{mode}: {t}");
        }
    }
    let _ = std::fs::remove_dir_all(d);
}

/// aarch64 code built with `-mbranch-protection=pac-ret` (Ubuntu's and Fedora's arm64 builds)
/// signs its return addresses and marks that in its CFI (`DW_CFA_AARCH64_negate_ra_state`),
/// which gimli reads only when told the CFI is aarch64's: every such FDE was refused ("no
/// usable CFI"), Dwarf stopped at the first signed function and Hybrid, guessing by frame
/// records in code without them, reported `abort_gamma` -> `__libc_start_main` whole,
/// without the three frames in between. Run signed (`QEMU_CPU=max`: PAC on).
#[test]
fn pac_signed_aarch64_functions_are_walked_by_their_cfi() {
    if !need("qemu-aarch64", "--version") || !need("aarch64-linux-gnu-gcc", "--version") {
        return;
    }
    let d = tmp("a64-pac");
    let out = Command::new("bash")
        .arg(fixtures().join("c/make-core.sh"))
        .args(["aarch64", "abort", p(&d)])
        .env(
            "CHAIN_CFLAGS",
            "-static -O1 -fomit-frame-pointer -fno-optimize-sibling-calls \
             -mbranch-protection=pac-ret",
        )
        .env("QEMU_CPU", "max")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let core = d.join("core-aarch64-abort");
    for mode in ["hybrid", "dwarf"] {
        let out = run(&[
            "stack",
            "--core",
            p(&core),
            "--mode",
            mode,
            "--format",
            "json",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("no usable CFI"), "{mode}: {err}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = &v["threads"][0];
        let s = symbols(t);
        assert!(
            has_run(&s, &["abort_gamma", "abort_beta", "abort_alpha", "main"]),
            "{mode}: {s:?}"
        );
        assert_eq!(
            s.last().map(String::as_str),
            Some("_start"),
            "{mode}: {s:?}"
        );
        assert_eq!(t["truncated"], false, "{mode}: {t}");
    }
    let _ = std::fs::remove_dir_all(d);
}

/// An aarch64 function whose CFI keeps the return address in the link register while it
/// calls on (a `noreturn` call its compiler left frameless: libstd's panic path, here
/// chain.c's `lost_ra_leaf` calling `abort`): the call overwrote it, so its caller is lost.
/// Hybrid read the frame record there instead, an older frame's, and reported
/// `lost_ra_leaf` -> `main` whole, without `lost_caller` (found by outside use on Rust
/// `panic=abort` cores); it now stops there, truncated, as Dwarf does.
#[test]
fn a_return_address_lost_in_the_link_register_ends_the_walk_truncated() {
    if !need("qemu-aarch64", "--version") || !need("aarch64-linux-gnu-gcc", "--version") {
        return;
    }
    let d = tmp("a64-lostra");
    let (core, _) = fresh_core_for("aarch64", "lostra", &d, "-static -fno-omit-frame-pointer");
    for mode in ["hybrid", "dwarf"] {
        let v = json(&["stack", "--core", p(&core), "--mode", mode]);
        let t = &v["threads"][0];
        let s = symbols(t);
        assert_eq!(
            s.last().map(String::as_str),
            Some("lost_ra_leaf"),
            "{mode}: {s:?}"
        );
        assert!(s.iter().any(|f| f == "abort"), "{mode}: {s:?}");
        assert_eq!(t["truncated"], true, "{mode}: {t}");
    }
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_qemu_core_naming_its_executable_by_a_relative_path() {
    // qemu-user cores list no mapped files; the executable is the auxv's AT_EXECFN, here
    // `./chain`, relative to a directory the core does not record: looked up from the current
    // directory, with a warning that says so.
    if !need("qemu-aarch64", "--version") || !need("aarch64-linux-gnu-gcc", "--version") {
        return;
    }
    let d = tmp("relative-execfn");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/c/chain.c");
    let ok = Command::new("aarch64-linux-gnu-gcc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(d.join("chain"))
        .arg(&src)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let _ = Command::new("sh")
        .current_dir(&d)
        .args([
            "-c",
            "ulimit -c unlimited; qemu-aarch64 -L /usr/aarch64-linux-gnu ./chain chain",
        ])
        .output()
        .unwrap();
    let core = std::fs::read_dir(&d)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "core"))
        .expect("qemu wrote no core");
    let out = Command::new(BIN)
        .current_dir(&d)
        .args(["stack", "--core"])
        .arg(&core)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("relative path (./chain), looked up from the current directory:"),
        "{err}"
    );
    // Looked up from here it is the right file: the chain is named.
    assert!(String::from_utf8_lossy(&out.stdout).contains("gamma_"));
    let _ = std::fs::remove_dir_all(d);
}

/// `--sysroot /proc/PID/root` (a running container's files, for a `gcore` core of one of its
/// processes) is read as any sysroot: every other path under /proc stays refused (found by
/// outside use: each file was "not available (under /proc or /sys: not read)"). Here the
/// tool's own root, which holds what the plain run reads.
#[test]
fn a_sysroot_under_proc_pid_root_is_read() {
    let d = tmp("procroot");
    let c = core("core-x86_64-signal", &d);
    let plain = run(&["stack", "--core", p(&c)]);
    let rooted = run(&["stack", "--core", p(&c), "--sysroot", "/proc/self/root"]);
    assert!(
        plain.status.success() && rooted.status.success(),
        "{rooted:?}"
    );
    let err = String::from_utf8_lossy(&rooted.stderr);
    assert!(!err.contains("under /proc"), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        String::from_utf8_lossy(&rooted.stdout)
    );
    let _ = std::fs::remove_dir_all(d);
}

//! `unwind stack` on a Go 1.19 core taken by gdb inside `runtime.malg` while a `go` statement
//! runs (fixtures/go). The core is ~700 MB (Go reserves its heap arenas): it is made in a
//! temporary directory and deleted at the end. Needs `go` and `gdb`; skipped with a message
//! when either is missing (CI installs both).
//!
//! The truth (fixtures/go/main.go): main.main -> main.spawner -> main.spawnOne -> `go worker()`
//! -> runtime.newproc -> runtime.systemstack -> (g0) runtime.newproc.func1 -> runtime.newproc1
//! -> runtime.malg. gdb's `bt` stops at runtime.systemstack (its frame above is garbage); we
//! cross into the goroutine's stack.

mod common;
use common::skip::skip;
use common::tools::{build_go_linked, fixture_go, go_build, have, kernel_cores, need, TempDir};

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_unwind");

fn unwind_json(core: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "stack",
        "--core",
        core.to_str().unwrap(),
        "--format",
        "json",
    ];
    args.extend(extra);
    let out = Command::new(BIN).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `unwind stack --core CORE --exe EXE --lines`, text (it must succeed).
fn unwind_text_lines(core: &Path, exe: &Path) -> String {
    let out = Command::new(BIN)
        .args(["stack", "--core"])
        .arg(core)
        .arg("--exe")
        .arg(exe)
        .arg("--lines")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn names(t: &Value) -> Vec<String> {
    t["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["symbol"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The thread of `v` (the CLI's JSON) with the tid of `t` (a thread of another run on the
/// same core).
fn same_thread<'a>(v: &'a Value, t: &Value) -> &'a Value {
    v["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["tid"] == t["tid"])
        .unwrap_or_else(|| panic!("no thread {} in {v}", t["tid"]))
}

/// The first thread of `v` (the CLI's JSON) with a frame in function `name`.
fn thread_in<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| names(t).iter().any(|n| n == name))
}

#[test]
fn go_statement_crosses_systemstack() {
    if !cfg!(target_arch = "x86_64") {
        skip("skipping: the Go fixture runs on x86_64 hosts (gdb cannot drive qemu-aarch64 here)");
        return;
    }
    if !have("go", "version") || !have("gdb", "--version") {
        skip("the Go core test needs `go` (golang-go) and `gdb`");
        return;
    }
    let dir = TempDir(std::env::temp_dir().join(format!("unwind-go-{}", std::process::id())));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/go/make-core.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&dir.0)
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("ptrace") || err.contains("Operation not permitted") {
            skip(&format!("skipping: gdb cannot trace here: {err}"));
            return;
        }
        panic!("make-core.sh failed: {err}");
    }
    let core = dir.0.join("core-go");
    let gdb_bt = std::fs::read_to_string(dir.0.join("gdb-bt.txt")).unwrap_or_default();

    // Dwarf and Hybrid (Go's compressed .debug_frame) cross systemstack as FP does.
    for mode in ["dwarf", "hybrid"] {
        let v = unwind_json(&core, &["--mode", mode]);
        let t = v["threads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| names(t).first().is_some_and(|n| n == "runtime.malg"))
            .unwrap_or_else(|| panic!("{mode}: a thread stopped in runtime.malg: {v}"));
        let n = names(t);
        let sys = n.iter().position(|x| x == "runtime.systemstack");
        let np = n.iter().position(|x| x == "runtime.newproc");
        let main = n.iter().position(|x| x == "main.spawnOne");
        assert!(
            matches!((sys, np, main), (Some(a), Some(b), Some(c)) if b == a + 1 && c > b),
            "{mode}: {n:?}"
        );
        assert_eq!(
            n.last().map(String::as_str),
            Some("runtime.goexit"),
            "{mode}"
        );
    }
    let v = unwind_json(&core, &[]);
    assert_eq!(v["arch"], "x86_64");
    let threads = v["threads"].as_array().unwrap();
    let t = threads
        .iter()
        .find(|t| names(t).first().is_some_and(|n| n == "runtime.malg"))
        .unwrap_or_else(|| panic!("a thread stopped in runtime.malg: {v}"));
    let n = names(t);
    let frames = t["frames"].as_array().unwrap();
    let expect = [
        "runtime.malg",
        // gdb's breakpoint is at malg's `sub $n,%rsp`, before its frame record: newproc1 comes
        // from the return address at rsp (prologue decoding), as gdb finds it with CFI.
        "runtime.newproc1",
        "runtime.newproc.func1",
        "runtime.systemstack",
        "runtime.newproc",
        "main.spawnOne",
        "main.spawner",
        "main.main",
    ];
    let at = |name: &str| {
        n.iter()
            .position(|x| x == name)
            .unwrap_or_else(|| panic!("{name} missing from {n:?}"))
    };
    let pos: Vec<usize> = expect.iter().map(|e| at(e)).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "order: {n:?}");
    // g0 frames on stack 0; the goroutine's from runtime.newproc on, on stack 1, entered by
    // the transition.
    let sys = at("runtime.systemstack");
    let np = at("runtime.newproc");
    assert_eq!(np, sys + 1, "{n:?}");
    assert_eq!(frames[sys]["stack"], 0);
    assert_eq!(frames[np]["stack"], 1);
    assert_eq!(frames[np]["via"], "transition");
    assert_eq!(frames[at("main.spawnOne")]["via"], "fp");
    // A goroutine's stack ends in runtime.goexit: a complete walk.
    assert_eq!(n.last().map(String::as_str), Some("runtime.goexit"));
    assert_eq!(t["truncated"], false);

    // gdb, the reference: it stops at runtime.systemstack.
    let bt: Vec<&str> = gdb_bt.lines().filter(|l| l.starts_with('#')).collect();
    eprintln!("gdb bt:\n{}", bt.join("\n"));
    if bt.iter().any(|l| l.contains("runtime.systemstack")) {
        assert!(
            !bt.iter().any(|l| l.contains("main.spawnOne")),
            "gdb now crosses systemstack too: update this test"
        );
        eprintln!("gdb stops at runtime.systemstack; unwind shows {n:?}");
    }

    // Heap policy: cross the switch, hide the runtime's leaf frames: the user function with
    // the `go` statement is the leaf.
    let h = unwind_json(&core, &["--policy", "heap"]);
    let ht = same_thread(&h, t);
    let hn = names(ht);
    assert_eq!(hn[0], "main.spawnOne", "{hn:?}");
    assert!(hn.iter().any(|x| x == "main.main"));
    // Trace policy: the user part only (from the switch on): no g0 frames.
    let tr = unwind_json(&core, &["--policy", "trace"]);
    let tt = same_thread(&tr, t);
    let tn = names(tt);
    assert!(!tn.iter().any(|x| x == "runtime.malg"), "{tn:?}");
    assert!(tn.iter().any(|x| x == "main.spawnOne"), "{tn:?}");
    // CPU: everything but Go's autogenerated wrappers, which Go's profiles leave out: here the
    // closures the compiler wraps a `go f(args)` statement in (`runtime.gcenable.func2` for
    // `go bgscavenge(c)`), right under `runtime.goexit`.
    let c = unwind_json(&core, &["--policy", "cpu"]);
    let (ct, vt) = (
        c["threads"].as_array().unwrap(),
        v["threads"].as_array().unwrap(),
    );
    assert_eq!(ct.len(), vt.len());
    for (a, b) in ct.iter().zip(vt) {
        assert_eq!(a["tid"], b["tid"]);
        let (fa, fb) = (
            a["frames"].as_array().unwrap(),
            b["frames"].as_array().unwrap(),
        );
        let mut i = 0;
        for (j, f) in fb.iter().enumerate() {
            if fa.get(i) == Some(f) {
                i += 1;
                continue;
            }
            let name = f["symbol"].as_str().unwrap();
            let go_wrapper = name
                .rsplit_once(".func")
                .is_some_and(|(_, n)| n.parse::<u32>().is_ok())
                && fb.get(j + 1).and_then(|x| x["symbol"].as_str()) == Some("runtime.goexit");
            assert!(
                go_wrapper,
                "--policy cpu left out {name}: {fa:?} against {fb:?}"
            );
        }
        assert_eq!(i, fa.len(), "{fa:?} against {fb:?}");
    }
}

/// Builds fixtures/go/NAME for ARCH and makes its crash core (fixtures/go/make-crash-core.sh);
/// `None` (with a message) when a tool or the core pattern is missing.
fn crash_core(name: &str, arch: &str, dir: &Path) -> Option<(PathBuf, PathBuf)> {
    crash_core_linked(name, arch, dir, "")
}

/// [`crash_core`] with `ldflags` for the Go linker (`-s -w`: stripped).
fn crash_core_linked(
    name: &str,
    arch: &str,
    dir: &Path,
    ldflags: &str,
) -> Option<(PathBuf, PathBuf)> {
    crash_core_built(name, arch, dir, ldflags, "", &[])
}

/// [`crash_core_linked`] with a `-buildmode` (`pie`) and `env` set for the program.
fn crash_core_built(
    name: &str,
    arch: &str,
    dir: &Path,
    ldflags: &str,
    buildmode: &str,
    env: &[(&str, &str)],
) -> Option<(PathBuf, PathBuf)> {
    if !have("go", "version") {
        skip("needs `go` (golang-go)");
        return None;
    }
    match arch {
        "arm64" if !have("qemu-aarch64", "--version") => {
            skip("needs qemu-aarch64");
            return None;
        }
        "amd64" if !cfg!(target_arch = "x86_64") || !kernel_cores() => {
            skip("needs an x86_64 host with core_pattern `core` (CI sets it)");
            return None;
        }
        _ => {}
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/go/make-crash-core.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args([name, arch])
        .arg(dir)
        .env("GO_LDFLAGS", ldflags)
        .env("GO_BUILDMODE", buildmode)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make-crash-core.sh {name} {arch} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some((
        dir.join(format!("core-go-{name}-{arch}")),
        dir.join(format!("{name}-{arch}")),
    ))
}

fn position(n: &[String], name: &str) -> usize {
    n.iter()
        .position(|x| x == name)
        .unwrap_or_else(|| panic!("{name} missing from {n:?}"))
}

/// arm64: a Go 1.19 program that throws on the system stack (fixtures/go/throw), under
/// qemu-aarch64. `runtime.systemstack` on arm64 loads g0's own frame pointer, so the chain on
/// g0 ends there; the walk continues from the goroutine's `g.sched.bp` (`g` is x28) into the
/// user code that caused the throw.
#[test]
fn go_arm64_throw_on_systemstack_crosses_to_the_goroutine() {
    let dir = TempDir(std::env::temp_dir().join(format!("unwind-go-throw-{}", std::process::id())));
    let Some((core, exe)) = crash_core("throw", "arm64", &dir.0) else {
        return;
    };
    let exe = exe.to_str().unwrap();
    // Dwarf and Hybrid cross as FP does.
    for mode in ["dwarf", "hybrid"] {
        let v = unwind_json(&core, &["--exe", exe, "--mode", mode]);
        let mut seen = 0;
        for t in v["threads"].as_array().unwrap() {
            let n = names(t);
            if !n.iter().any(|x| x == "runtime.fatalthrow.func1") {
                continue;
            }
            seen += 1;
            let sys = position(&n, "runtime.systemstack");
            assert_eq!(n[sys + 1], "runtime.fatalthrow", "{mode}: {n:?}");
            assert!(position(&n, "main.writer") > sys, "{mode}: {n:?}");
            assert_eq!(
                n.last().map(String::as_str),
                Some("runtime.goexit"),
                "{mode}"
            );
        }
        assert!(seen > 0, "{mode}: no thread in fatalthrow.func1: {v}");
    }
    let v = unwind_json(&core, &["--exe", exe]);
    assert_eq!(v["arch"], "aarch64");
    // Every thread that was running fatalthrow's system-stack half reaches main.writer.
    let on_g0: Vec<&Value> = v["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| names(t).iter().any(|n| n == "runtime.fatalthrow.func1"))
        .collect();
    assert!(!on_g0.is_empty(), "no thread in fatalthrow.func1: {v}");
    for t in &on_g0 {
        let n = names(t);
        let frames = t["frames"].as_array().unwrap();
        let sys = position(&n, "runtime.systemstack");
        let ft = position(&n, "runtime.fatalthrow");
        assert_eq!(ft, sys + 1, "{n:?}");
        assert_eq!(frames[ft]["via"], "transition");
        assert_eq!(
            frames[ft]["stack"].as_u64().unwrap(),
            frames[sys]["stack"].as_u64().unwrap() + 1
        );
        assert!(position(&n, "main.writer") > ft, "{n:?}");
        assert_eq!(
            n.last().map(String::as_str),
            Some("runtime.goexit"),
            "{n:?}"
        );
        assert_eq!(t["truncated"], false, "{n:?}");
    }
    // Heap policy: the runtime's frames at the leaf end (all of g0, the signal trampoline and
    // the throw path) go; the user function that wrote the map is the leaf.
    let h = unwind_json(&core, &["--exe", exe, "--policy", "heap"]);
    for t in &on_g0 {
        let ht = same_thread(&h, t);
        assert_eq!(names(ht)[0], "main.writer", "{ht}");
    }
}

/// Both architectures: a Go binary built with `-ldflags="-s -w"` (no ELF symbol table, no DWARF:
/// how Go programs are often shipped) is named from its `.gopclntab`, the table Go's own
/// tracebacks use, and the walk still crosses `runtime.systemstack` (found by that name) from
/// the throw on g0 back to the user code that caused it (fixtures/go/throw).
#[test]
fn stripped_go_binaries_are_named_from_gopclntab_and_crossed() {
    for arch in ["amd64", "arm64"] {
        let dir = TempDir(
            std::env::temp_dir().join(format!("unwind-go-stripped-{arch}-{}", std::process::id())),
        );
        let Some((core, exe)) = crash_core_linked("throw", arch, &dir.0, "-s -w") else {
            continue;
        };
        let syms = Command::new("readelf")
            .arg("-S")
            .arg(&exe)
            .output()
            .expect("readelf (binutils)");
        let sections = String::from_utf8_lossy(&syms.stdout);
        assert!(
            !sections.contains(".symtab") && sections.contains(".gopclntab"),
            "{arch}: not a stripped Go binary: {sections}"
        );
        let v = unwind_json(&core, &["--exe", exe.to_str().unwrap()]);
        let t = thread_in(&v, "runtime.fatalthrow.func1")
            .unwrap_or_else(|| panic!("{arch}: no thread in fatalthrow.func1: {v}"));
        let n = names(t);
        let frames = t["frames"].as_array().unwrap();
        let sys = position(&n, "runtime.systemstack");
        let ft = position(&n, "runtime.fatalthrow");
        assert_eq!(ft, sys + 1, "{arch}: {n:?}");
        assert_eq!(frames[ft]["via"], "transition", "{arch}: {n:?}");
        assert!(position(&n, "main.writer") > ft, "{arch}: {n:?}");
        assert_eq!(
            n.last().map(String::as_str),
            Some("runtime.goexit"),
            "{arch}: {n:?}"
        );
        // Every frame past the signal frame is named (on the handler's side, qemu's arm64
        // signal trampoline is in no module).
        for f in frames.iter().filter(|f| f["stack"].as_u64() != Some(0)) {
            assert!(f["symbol"].is_string(), "{arch}: {f}");
        }
        // CFI made from `.gopclntab`'s pcsp tables (the binary has no `.debug_frame`): a
        // thread parked in `runtime.futex`, an assembly leaf without a frame record, keeps its
        // caller (a frame-record walk goes from it straight to the caller's caller).
        let mut in_futex = 0;
        for t in v["threads"].as_array().unwrap() {
            let n = names(t);
            if n.first().map(String::as_str) == Some("runtime.futex") {
                in_futex += 1;
                assert!(
                    matches!(n[1].as_str(), "runtime.futexsleep" | "runtime.futexwakeup"),
                    "{arch}: {n:?}"
                );
            }
        }
        assert!(
            in_futex > 0 || arch == "arm64",
            "{arch}: no thread in futex: {v}"
        );
        assert!(
            frames.iter().any(|f| f["via"] == "dwarf"),
            "{arch}: no frame found by CFI: {n:?}"
        );
        // The heap policy knows the runtime by those names too.
        let h = unwind_json(&core, &["--exe", exe.to_str().unwrap(), "--policy", "heap"]);
        let ht = same_thread(&h, t);
        assert_eq!(names(ht)[0], "main.writer", "{arch}: {ht}");
    }
}

/// The block and trace policies keep the user part of a goroutine parked through `mcall`:
/// the scheduler's frames on g0 above the `g.sched` crossing go, as above `systemstack`'s
/// (they were kept: that crossing was not one of the policies' system switches).
#[test]
fn block_policy_drops_g0_above_an_mcall_crossing() {
    let dir = TempDir(std::env::temp_dir().join(format!("unwind-go-mcall-{}", std::process::id())));
    let Some((core, exe)) = crash_core("throw", "amd64", &dir.0) else {
        return;
    };
    let exe = exe.to_str().unwrap();
    for mode in ["fp", "hybrid", "dwarf"] {
        let all = unwind_json(&core, &["--exe", exe, "--mode", mode]);
        let parked: Vec<&Value> = all["threads"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| {
                let n = names(t);
                let f = t["frames"].as_array().unwrap();
                n.iter()
                    .position(|x| x == "runtime.mcall")
                    .is_some_and(|i| f.get(i + 1).is_some_and(|g| g["via"] == "transition"))
            })
            .collect();
        assert!(!parked.is_empty(), "{mode}: no thread crossed mcall: {all}");
        for policy in ["block", "trace", "mutex"] {
            let v = unwind_json(&core, &["--exe", exe, "--mode", mode, "--policy", policy]);
            for p in &parked {
                let t = same_thread(&v, p);
                let n = names(t);
                assert!(
                    !n.iter().any(|x| x.starts_with("runtime.mcall")
                        || x == "runtime.park_m"
                        || x == "runtime.schedule"),
                    "{mode} {policy}: {n:?}"
                );
                assert!(n.iter().any(|x| x == "runtime.goexit"));
            }
        }
    }
}

/// A stripped Go binary's `.gopclntab` with bytes changed (header fields, function table,
/// names) or cut short is read without a panic, every function it yields has a well-formed
/// range, and lookups over the text answer; the clean file names `main.writer`.
#[test]
fn a_corrupt_gopclntab_is_read_cleanly() {
    use object::{Object, ObjectSection};
    if !have("go", "version") {
        skip("needs `go` (golang-go)");
        return;
    }
    let dir =
        TempDir(std::env::temp_dir().join(format!("unwind-go-pclntab-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let exe = build_go_linked(&dir.0, "throw", "-s -w");
    let data = std::fs::read(&exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let (off, size) = file
        .section_by_name(".gopclntab")
        .and_then(|s| s.file_range())
        .expect(".gopclntab");
    let text = file.section_by_name(".text").unwrap();
    let (text_lo, text_hi) = (text.address(), text.address() + text.size());
    let (off, size) = (off as usize, size as usize);
    let clean = unwind::symbols::Module::load(&exe, "throw", None).unwrap();
    let writer = clean.function("main.writer").expect("main.writer");
    assert!(clean.functions().count() > 1000);
    let mut sym = unwind::symbols::Symbolizer::new();
    sym.push(clean);
    let mut lines = unwind::pprof_lines::LineTables::new(&sym);
    let at = lines.frames(writer.lo);
    assert!(
        at.len() == 1 && at[0].file.ends_with("throw/main.go") && at[0].function == "main.writer",
        "{at:?}"
    );
    let check = |bytes: &[u8], what: &str| {
        let p = dir.0.join("mutant");
        std::fs::write(&p, bytes).unwrap();
        if let Ok(m) = unwind::symbols::Module::load(&p, "mutant", None) {
            for (name, lo, hi) in m.functions() {
                assert!(lo <= hi, "{what}: {name} {lo:#x}..{hi:#x}");
            }
            for pc in (text_lo..text_hi).step_by(4099) {
                let _ = m.lookup(pc).map(|s| s.name.len());
            }
            // Source lines from the table's `pcfile`/`pcln` tables (`--lines`).
            let mut sym = unwind::symbols::Symbolizer::new();
            sym.push(m);
            let mut lines = unwind::pprof_lines::LineTables::new(&sym);
            for pc in (text_lo..text_hi).step_by(1031) {
                for f in lines.frames(pc) {
                    assert!(f.line > 0 && !f.file.is_empty(), "{what}: {f:?}");
                }
            }
        }
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Every header byte set to 0x00 and to 0xff.
    for at in 0..72 {
        for v in [0u8, 0xff] {
            let mut d = data.clone();
            d[off + at] = v;
            check(&d, &format!("header byte {at} = {v:#x}"));
        }
    }
    // Random bytes anywhere in the table.
    for _ in 0..150 {
        let mut d = data.clone();
        for _ in 0..8 {
            let at = off + (next() as usize) % size;
            d[at] = next() as u8;
        }
        check(&d, "random bytes");
    }
    // The file cut inside the table.
    for k in 0..8 {
        check(&data[..off + size * k / 8], &format!("cut at {k}/8"));
    }
}

/// The CFI made from `.gopclntab`'s `pcsp` tables for a binary without `.debug_frame` gives
/// the rule Go's linker wrote into `.debug_frame` at every pc of the Go text, on both
/// architectures: the same unstripped binary is read as it is and with its `.debug_frame`
/// renamed away.
#[test]
fn cfi_from_pcsp_matches_the_linker_s_debug_frame() {
    use object::{Object, ObjectSection};
    if !need("go", "version") {
        return;
    }
    let dir = TempDir::new("go-pcsp");
    for (goarch, arch) in [
        ("amd64", unwind::ArchKind::X86_64),
        ("arm64", unwind::ArchKind::Aarch64),
    ] {
        let exe = dir.0.join(format!("throw-{goarch}"));
        go_build(
            &dir.0,
            &fixture_go("throw"),
            &exe,
            &[],
            &[("GOARCH", goarch), ("CGO_ENABLED", "0")],
        );
        let data = std::fs::read(&exe).unwrap();
        let file = object::File::parse(&*data).unwrap();
        assert!(file.section_by_name(".debug_frame").is_some(), "{goarch}");
        let text = file.section_by_name(".text").unwrap();
        let (lo, hi) = (text.address(), text.address() + text.size());
        // Rename the section (its name in the section-name table) so nothing finds it.
        let mut renamed = data.clone();
        // ELF64: e_shoff at 0x28, e_shentsize at 0x3a, e_shstrndx at 0x3e; a section
        // header's sh_offset at +0x18, sh_size at +0x20.
        let u = |at: usize, n: usize| {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&data[at..at + n]);
            u64::from_le_bytes(b) as usize
        };
        let sh = u(0x28, 8) + u(0x3a, 2) * u(0x3e, 2);
        let shstr = u(sh + 0x18, 8)..u(sh + 0x18, 8) + u(sh + 0x20, 8);
        let name = b".debug_frame\0";
        let at = renamed[shstr.clone()]
            .windows(name.len())
            .position(|w| w == name)
            .expect(".debug_frame's name")
            + shstr.start;
        renamed[at + 1] = b'X';
        let linker = unwind::dwarf::parse_elf(arch, &data, 0, "linker").unwrap();
        let pcsp = unwind::dwarf::parse_elf(arch, &renamed, 0, "pcsp").unwrap();
        let (mut same, mut differ) = (0usize, Vec::new());
        for pc in lo..hi {
            let (a, b) = (linker.rule(pc), pcsp.rule(pc));
            if a == b {
                same += 1;
            } else if differ.len() < 10 {
                differ.push(format!("{pc:#x}: linker {a:?}, pcsp {b:?}"));
            }
        }
        assert!(
            differ.is_empty(),
            "{goarch}: {same} same, then:\n{}",
            differ.join("\n")
        );
        assert!(same > 100_000, "{goarch}: {same}");
    }
}

/// The file offset of virtual address `a` in an ELF64 core (its `PT_LOAD` segments).
fn core_offset(bytes: &[u8], a: u64) -> Option<usize> {
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    (0..phnum).find_map(|i| {
        let ph = phoff + i * phentsize;
        let (ty, off, vaddr, filesz) = (
            u32::from_le_bytes(bytes[ph..ph + 4].try_into().unwrap()),
            u64_at(ph + 8),
            u64_at(ph + 16),
            u64_at(ph + 32),
        );
        (ty == 1 && vaddr <= a && a < vaddr + filesz).then(|| (off + a - vaddr) as usize)
    })
}

/// A thread in `runtime.newstack` whose goroutine has left it (`newstack` preempted it:
/// `gopreempt_m` set `m.curg` to nil before `schedule`, as `--pid` on a busy Go program catches
/// now and then): Go's traceback ends at `runtime.morestack`, complete, and so does the walk.
/// (It was cut "truncated" with whichever reason the walk past morestack met: found by outside
/// use in the twenty-third round.) The grow fixture's core with that thread's `m.curg` zeroed.
#[test]
fn morestack_on_a_thread_without_a_goroutine_ends_complete() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("unwind-go-nocurg-{}", std::process::id())));
    let Some((core, exe)) = crash_core("grow", "amd64", &dir.0) else {
        return;
    };
    let exe = exe.to_str().unwrap();
    let v = unwind_json(&core, &["--exe", exe]);
    let t = thread_in(&v, "runtime.newstack").expect("a thread in runtime.newstack");
    let tid = t["tid"].as_u64().unwrap() as u32;
    assert!(names(t).len() > 100, "the grow core crosses morestack: {t}");
    // That thread's m.curg (Go 1.17-1.21 offsets: g.m at 48, m.curg at 192).
    let c = unwind::core_file::Core::open(&core).unwrap();
    let th = c.threads.iter().find(|x| x.tid == tid).unwrap();
    let mut mem = c.memory();
    let g = unwind::go_runtime::thread_g(&mut mem, c.arch, th.tls, th.x28).unwrap();
    let o = unwind::go_runtime::GoOffsets::GO_1_17;
    use unwind::Memory;
    let m = mem.read_u64(g + o.g_m).unwrap();
    let curg_at = m + o.m_curg;
    assert_ne!(mem.read_u64(curg_at), Some(0));
    drop(c);
    let mut bytes = std::fs::read(&core).unwrap();
    let off = core_offset(&bytes, curg_at).expect("m.curg in the core");
    bytes[off..off + 8].fill(0);
    let patched = dir.0.join("core.nocurg");
    std::fs::write(&patched, &bytes).unwrap();
    for mode in ["hybrid", "fp", "dwarf"] {
        let v = unwind_json(&patched, &["--exe", exe, "--mode", mode]);
        let t = v["threads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["tid"] == tid)
            .unwrap();
        let n = names(t);
        assert_eq!(
            n.last().map(String::as_str),
            Some("runtime.morestack"),
            "{mode}: {n:?}"
        );
        assert_eq!(t["truncated"], false, "{mode}: {t}");
    }
}

/// Both architectures: a stack overflow thrown in `runtime.newstack`, reached through
/// `runtime.morestack` from main.grow's prologue (fixtures/go/grow). The chain on g0 ends at
/// morestack; the walk continues from what morestack saved in the goroutine's `g.sched` into
/// main.grow's recursion.
#[test]
fn go_morestack_crosses_to_the_growing_function() {
    for arch in ["amd64", "arm64"] {
        let dir = TempDir(
            std::env::temp_dir().join(format!("unwind-go-grow-{arch}-{}", std::process::id())),
        );
        let Some((core, exe)) = crash_core("grow", arch, &dir.0) else {
            continue;
        };
        let exe = exe.to_str().unwrap();
        // Every mode crosses: Dwarf and Hybrid end the g0 walk at morestack as FP does.
        for mode in ["dwarf", "hybrid"] {
            let v = unwind_json(&core, &["--exe", exe, "--mode", mode]);
            let t = thread_in(&v, "runtime.newstack")
                .unwrap_or_else(|| panic!("{arch} {mode}: no thread in runtime.newstack: {v}"));
            let n = names(t);
            let ms = position(&n, "runtime.morestack");
            assert_eq!(n[ms + 1], "main.grow", "{arch} {mode}: {n:?}");
            assert_eq!(t["frames"][ms + 1]["via"], "transition", "{arch} {mode}");
            assert!(
                n[ms + 1..].iter().filter(|x| *x == "main.grow").count() > 100,
                "{arch} {mode}: {n:?}"
            );
        }
        let v = unwind_json(&core, &["--exe", exe]);
        let t = thread_in(&v, "runtime.newstack")
            .unwrap_or_else(|| panic!("{arch}: no thread in runtime.newstack: {v}"));
        let n = names(t);
        let frames = t["frames"].as_array().unwrap();
        let ms = position(&n, "runtime.morestack");
        assert_eq!(ms, position(&n, "runtime.newstack") + 1, "{arch}: {n:?}");
        assert_eq!(n[ms + 1], "main.grow", "{arch}: {n:?}");
        assert_eq!(frames[ms + 1]["via"], "transition", "{arch}");
        assert_eq!(
            frames[ms + 1]["stack"].as_u64().unwrap(),
            frames[ms]["stack"].as_u64().unwrap() + 1,
            "{arch}"
        );
        // The recursion fills the rest of the walk (1 MiB of main.grow frames).
        assert!(
            n[ms + 1..].iter().filter(|x| *x == "main.grow").count() > 100,
            "{arch}: {n:?}"
        );
        let h = unwind_json(&core, &["--exe", exe, "--policy", "heap"]);
        let ht = same_thread(&h, t);
        assert_eq!(names(ht)[0], "main.grow", "{arch}: {ht}");
        // 1024 frames by default, cut short (`truncated`); --max-frames lets the whole
        // overflowing stack through, down to the goroutine's root.
        assert_eq!(n.len(), 1024, "{arch}");
        assert_eq!(t["truncated"], true, "{arch}");
        let all = unwind_json(&core, &["--exe", exe, "--max-frames", "100000"]);
        let t = thread_in(&all, "runtime.newstack").unwrap();
        let n = names(t);
        assert!(n.len() > 1024, "{arch}: {}", n.len());
        // amd64 reaches the goroutine's root. arm64 (qemu) ends inside the recursion, after
        // ~1700 frames, where the chain's saved frame pointer is 0 (Go 1.19 does not adjust
        // saved frame pointers on arm64 when it copies a stack, runtime/stack.go's "TODO what
        // about arm64 frame pointer adjustment?"; its own traceback prints only 100 frames): a
        // walk that ends in Go code short of a Go stack's root says it is truncated (`ended
        // short of the stack's root`; it said `end`, complete).
        if arch == "amd64" {
            assert_eq!(
                n.last().map(String::as_str),
                Some("runtime.goexit"),
                "{arch}"
            );
            assert_eq!(t["truncated"], false, "{arch}");
        } else if n.last().map(String::as_str) != Some("runtime.goexit") {
            assert_eq!(t["truncated"], true, "{arch}: ends at {:?}", n.last());
        }
    }
}

/// Both architectures: a nil dereference at the first instruction of main.(*T).B
/// (fixtures/go/nilentry). Go's fault handler makes B seem to call `runtime.sigpanic` from the
/// faulting instruction, so sigpanic's caller pc is B+0 itself: looked up as a return address
/// (pc - 1), it fell in the padding before B, with no symbol and no CFI, and the walk stopped
/// there. Go's own traceback reads B, main.use, main.main, runtime.main, runtime.goexit.
#[test]
fn go_fault_at_a_function_entry_keeps_the_faulting_function_and_its_callers() {
    for arch in ["amd64", "arm64"] {
        let dir = TempDir(
            std::env::temp_dir().join(format!("unwind-go-nil-{arch}-{}", std::process::id())),
        );
        let Some((core, exe)) = crash_core("nilentry", arch, &dir.0) else {
            continue;
        };
        let exe = exe.to_str().unwrap();
        for mode in ["hybrid", "dwarf"] {
            let v = unwind_json(&core, &["--exe", exe, "--mode", mode]);
            let t = thread_in(&v, "runtime.sigpanic")
                .unwrap_or_else(|| panic!("{arch} {mode}: no thread in runtime.sigpanic: {v}"));
            let n = names(t);
            let sp = position(&n, "runtime.sigpanic");
            assert_eq!(
                n[sp + 1..sp + 4],
                ["main.(*T).B", "main.use", "main.main"],
                "{arch} {mode}: {n:?}"
            );
            assert_eq!(
                n.last().map(String::as_str),
                Some("runtime.goexit"),
                "{arch} {mode}: {n:?}"
            );
            assert_eq!(t["truncated"], false, "{arch} {mode}: {n:?}");
        }
        // Text output: the offsets are Go's own (its traceback counts from the return
        // address, not from the byte before it): `main.use+0x1c` where Go printed `+0x1c`.
        let go = std::fs::read_to_string(dir.0.join("nilentry.txt")).unwrap();
        let mut lines = go.lines().skip_while(|l| !l.starts_with("main.use("));
        lines
            .next()
            .unwrap_or_else(|| panic!("{arch}: no main.use in Go's traceback: {go}"));
        let at = lines.next().unwrap();
        let off = at
            .split_whitespace()
            .nth(1)
            .filter(|o| o.starts_with("+0x"));
        let off = off.unwrap_or_else(|| panic!("{arch}: no offset in {at:?}"));
        let out = Command::new(BIN)
            .args(["stack", "--core", core.to_str().unwrap(), "--exe", exe])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("main.use{off} ")),
            "{arch}: main.use{off}: {text}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("build id"),
            "{arch}: the right --exe draws no build-id warning: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The same program with another Go build id (Go's own linker writes no GNU one): a
        // rebuilt binary, named with a warning (it used to pass unnoticed, its names possibly
        // all wrong). A kernel core holds the executable's first page, with the note; qemu's
        // leaves out the pages of mapped ELF files, so there is nothing to compare.
        if arch != "amd64" {
            continue;
        }
        let other = dir.0.join("nilentry-rebuilt");
        std::fs::write(&other, with_other_go_build_id(&std::fs::read(exe).unwrap())).unwrap();
        let out = Command::new(BIN)
            .args(["stack", "--core", core.to_str().unwrap(), "--exe"])
            .arg(&other)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{arch}: {err}");
        assert!(
            err.contains("--exe") && err.contains("build id") && err.contains('/'),
            "{arch}: a warning naming Go's build ids: {err}"
        );
        // An unrelated program (this crate's CLI: a GNU build id, no Go one) as --exe: no
        // build id compares, the ELF headers do (it was taken without a word: found by outside
        // use in the twenty-third round).
        let out = Command::new(BIN)
            .args(["stack", "--core", core.to_str().unwrap(), "--exe", BIN])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{arch}: {err}");
        assert!(
            err.contains("--exe: its ELF headers") && err.contains("no build id to compare"),
            "{arch}: a warning that the headers differ: {err}"
        );
    }
}

/// `exe` (a Go binary) with the first character of its Go build id (the `Go` note, type 4)
/// changed.
fn with_other_go_build_id(exe: &[u8]) -> Vec<u8> {
    // The note: namesz 4, descsz, type 4, "Go\0\0", then the id.
    let four = 4u32.to_le_bytes();
    let at = (0..exe.len().saturating_sub(16))
        .find(|&i| {
            exe[i..i + 4] == four && exe[i + 8..i + 12] == four && &exe[i + 12..i + 16] == b"Go\0\0"
        })
        .expect("a Go build id note");
    let mut out = exe.to_vec();
    let id = at + 16;
    out[id] = if out[id] == b'x' { b'y' } else { b'x' };
    out
}

/// `--lines` on a Go binary without DWARF (`-ldflags=-s -w`): positions come from
/// `.gopclntab`'s `pcfile`/`pcln` tables and the functions inlined at a pc from its inline
/// tree, as Go's own traceback prints them (they were all missing). Every frame Go's crash
/// traceback printed with a pc (`+0x…`) that `unwind` also shows has the same `file:line` in
/// JSON's `"line"` (the innermost inlined function's, as Go's first line for that pc), the same
/// inlined functions and positions in JSON's `"inlined"` and `"symbol_line"`, and in text.
#[test]
fn stripped_go_lines_match_go_s_traceback() {
    for arch in ["amd64", "arm64"] {
        // Which threads Go's crash traceback catches in inlined code depends on the timing of
        // the crash: a core without one is made again (at most three).
        for attempt in 0..3 {
            let dir = TempDir(std::env::temp_dir().join(format!(
                "unwind-go-lines-{arch}-{attempt}-{}",
                std::process::id()
            )));
            let Some((core, exe)) = crash_core_linked("throw", arch, &dir.0, "-s -w") else {
                break;
            };
            // Go's traceback: "func(args)\n\tFILE:LINE +0xOFF fp=… sp=… pc=0xPC", each physical
            // frame after its inlined calls' "func(...)\n\tFILE:LINE", innermost first.
            let text = std::fs::read_to_string(dir.0.join("throw.txt")).unwrap();
            let mut go: std::collections::HashMap<u64, Vec<(String, String)>> = Default::default();
            let mut inlined = Vec::new();
            let mut function = String::new();
            let mut call_inlined = false;
            for l in text.lines() {
                let Some(rest) = l.strip_prefix('\t') else {
                    function = l.rfind('(').map_or("", |i| &l[..i]).to_string();
                    call_inlined = l.ends_with("(...)");
                    continue;
                };
                let pos = rest
                    .split(" +0x")
                    .next()
                    .unwrap()
                    .split(" fp=")
                    .next()
                    .unwrap();
                match rest.split(" pc=0x").nth(1) {
                    Some(pc) if rest.contains(" +0x") => {
                        let pc = u64::from_str_radix(pc.trim(), 16).unwrap();
                        inlined.push((function.clone(), pos.to_string()));
                        go.insert(pc, std::mem::take(&mut inlined));
                    }
                    Some(_) => inlined.clear(),
                    // An inlined call's position ("func(...)"); else not a frame ("created by").
                    None if call_inlined => inlined.push((function.clone(), pos.to_string())),
                    None => inlined.clear(),
                }
            }
            assert!(go.len() > 10, "{arch}: Go's traceback: {text}");
            let exe_arg = exe.to_str().unwrap();
            let v = unwind_json(&core, &["--exe", exe_arg, "--lines"]);
            let mut same = 0;
            let mut user = 0;
            for t in v["threads"].as_array().unwrap() {
                for f in t["frames"].as_array().unwrap() {
                    let pc =
                        u64::from_str_radix(f["pc"].as_str().unwrap().trim_start_matches("0x"), 16)
                            .unwrap();
                    let Some(chain) = go.get(&pc) else { continue };
                    assert_eq!(f["line"].as_str(), Some(chain[0].1.as_str()), "{arch}: {f}");
                    // "inlined" then "symbol"/"symbol_line": Go's chain for this pc, innermost
                    // first (the JSON paired "symbol" with the innermost line and left the
                    // inlined functions out).
                    let mut mine: Vec<(String, String)> = f["inlined"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| {
                            let line = i["line"].as_str().unwrap_or("").to_string();
                            (i["function"].as_str().unwrap().to_string(), line)
                        })
                        .collect();
                    let symbol = f["symbol"].as_str().unwrap_or("").to_string();
                    mine.push((symbol, f["symbol_line"].as_str().unwrap_or("").to_string()));
                    assert_eq!(&mine, chain, "{arch}: the functions at {pc:#x}: {f}");
                    same += 1;
                    user += usize::from(chain[0].1.contains("fixtures/go/throw/main.go"));
                }
            }
            assert!(
                same >= 4 && user >= 2,
                "{arch}: {same} frames compared: {v}"
            );
            // Text: "    NAME (inlined) at FILE:LINE" lines, then "  #N PC [stack S] NAME+OFF at
            // FILE:LINE".
            let text = unwind_text_lines(&core, &exe);
            let mut chains = 0;
            let mut ours = Vec::new();
            for l in text.lines() {
                let l = l.trim_start();
                if let Some((name, pos)) = l.split_once(" (inlined) at ") {
                    ours.push((name.to_string(), pos.to_string()));
                    continue;
                }
                let Some(rest) = l.strip_prefix('#') else {
                    continue;
                };
                let words: Vec<&str> = rest.split_whitespace().collect();
                let pc = u64::from_str_radix(words[1].trim_start_matches("0x"), 16).unwrap();
                let name = words[4].rsplit_once('+').map_or(words[4], |(n, _)| n);
                let pos = l
                    .split(" at ")
                    .nth(1)
                    .unwrap_or("")
                    .split("  (")
                    .next()
                    .unwrap();
                ours.push((name.to_string(), pos.to_string()));
                let mine = std::mem::take(&mut ours);
                if let Some(chain) = go.get(&pc).filter(|c| c.len() > 1) {
                    assert_eq!(&mine, chain, "{arch}: the functions at {pc:#x}");
                    chains += 1;
                }
            }
            // (Go's arm64 crash traceback under qemu prints no M's stack whose pc is in inlined
            // code: there the unstripped binary is the reference, below.)
            if chains == 0 && arch != "arm64" && attempt < 2 {
                continue;
            }
            let inlined_pcs: Vec<String> = go
                .iter()
                .filter(|(_, c)| c.len() > 1)
                .map(|(pc, c)| format!("{pc:#x} {c:?}"))
                .collect();
            assert!(
                chains > 0 || arch == "arm64",
                "{arch}: no pc in inlined code compared; Go's pcs in inlined code: \
             {inlined_pcs:?}\nours:\n{text}"
            );
            // The same core read with the unstripped build of the same source (its DWARF lines
            // and inline entries; Go lays the text out the same): the same text, inlined lines and
            // all.
            let full = dir.0.join(format!("throw-{arch}-dwarf"));
            go_build(
                &dir.0,
                &fixture_go("throw"),
                &full,
                &[],
                &[("GOARCH", arch)],
            );
            let with_dwarf = unwind_text_lines(&core, &full);
            assert!(text.contains(" (inlined) at "), "{arch}: {text}");
            assert_eq!(
                with_dwarf.replace(full.to_str().unwrap(), exe_arg),
                text,
                "{arch}: lines from .gopclntab and from DWARF differ"
            );
            break;
        }
    }
}

/// A stripped position-independent Go executable (`-buildmode=pie -ldflags=-s -w`): its table
/// is the section `.data.rel.ro.gopclntab`, and its module data is filled in by relocations.
/// It is named, crossed by CFI made from the table, and has lines with inlined calls, as the
/// non-PIE one (it had no name, no CFI and no line at all: every frame `?`).
#[test]
fn a_stripped_pie_go_binary_is_named_crossed_and_has_lines() {
    let dir = TempDir(std::env::temp_dir().join(format!("unwind-go-pie-{}", std::process::id())));
    let Some((core, exe)) = crash_core_built("throw", "amd64", &dir.0, "-s -w", "pie", &[]) else {
        return;
    };
    let exe_arg = exe.to_str().unwrap();
    let v = unwind_json(&core, &["--exe", exe_arg, "--lines"]);
    let t = thread_in(&v, "runtime.fatalthrow.func1").unwrap_or_else(|| panic!("{v}"));
    let n = names(t);
    assert!(
        position(&n, "main.writer") > position(&n, "runtime.fatalthrow"),
        "{n:?}"
    );
    assert_eq!(
        n.last().map(String::as_str),
        Some("runtime.goexit"),
        "{n:?}"
    );
    let frames = t["frames"].as_array().unwrap();
    let writer = &frames[position(&n, "main.writer")];
    assert!(
        writer["line"]
            .as_str()
            .is_some_and(|l| l.ends_with("fixtures/go/throw/main.go:15")),
        "{writer}"
    );
    assert!(frames.iter().any(|f| f["via"] == "dwarf"), "{n:?}");
    for t in v["threads"].as_array().unwrap() {
        for f in t["frames"].as_array().unwrap() {
            assert!(f["symbol"].is_string() && f["line"].is_string(), "{f}");
        }
    }
    let text = unwind_text_lines(&core, &exe);
    assert!(text.contains(" (inlined) at "), "{text}");
}

/// Go's autogenerated method wrappers (fixtures/go/wrapper: `main.sortish` calls `Less` through
/// an interface, so through `main.(*byLen).Less`): Go's crash traceback shows the wrapper, and
/// so does `unwind stack`; Go's `runtime.Callers`, which every Go profile records, leaves it
/// out, and so does every `--policy`: the program printed what `runtime.Callers` said in
/// `Less`, and each policy's frames from `Less` on are exactly those. A wrapper that called
/// `runtime.panicwrap` (a nil pointer behind the interface) is kept, by Go and by the policies.
/// The stripped build (named from `.gopclntab`) agrees.
#[test]
fn go_policies_leave_out_method_wrappers_as_go_s_profiles_do() {
    let dir = TempDir::new("unwind-go-wrapper");
    let Some((core, exe)) = crash_core("wrapper", "amd64", &dir.0) else {
        return;
    };
    let printed = std::fs::read_to_string(dir.0.join("wrapper.txt")).unwrap();
    let callers: Vec<&str> = printed
        .lines()
        .find_map(|l| l.strip_prefix("callers: "))
        .unwrap_or_else(|| panic!("no callers line in {printed}"))
        .split(' ')
        .collect();
    assert_eq!(callers[..2], ["main.byLen.Less", "main.sortish"]);
    const WRAPPER: &str = "main.(*byLen).Less";
    assert!(printed.contains(&format!("{WRAPPER}(")), "{printed}");
    let exe_s = exe.to_str().unwrap();
    let all = unwind_json(&core, &["--exe", exe_s]);
    let t = thread_in(&all, "main.byLen.Less").expect("a thread in Less");
    let n = names(t);
    let less = position(&n, "main.byLen.Less");
    assert_eq!(n[less + 1], WRAPPER, "{n:?}");
    assert_eq!(n[less + 2], "main.sortish", "{n:?}");
    for policy in ["cpu", "heap", "block", "mutex", "lock", "trace"] {
        let v = unwind_json(&core, &["--exe", exe_s, "--policy", policy]);
        let p = names(same_thread(&v, t));
        let at = position(&p, "main.byLen.Less");
        assert_eq!(p[at..], callers[..], "--policy {policy}");
        assert!(
            p[..at].iter().all(|x| x != WRAPPER),
            "--policy {policy}: {p:?}"
        );
    }
    // Stripped: the same answers from .gopclntab alone.
    let sdir = TempDir::new("unwind-go-wrapper-stripped");
    let (score, sexe) = crash_core_linked("wrapper", "amd64", &sdir.0, "-s -w").unwrap();
    let sexe_s = sexe.to_str().unwrap();
    let v = unwind_json(&score, &["--exe", sexe_s, "--policy", "cpu"]);
    let p = names(thread_in(&v, "main.byLen.Less").expect("a thread in Less"));
    assert_eq!(p[position(&p, "main.byLen.Less")..], callers[..]);
    let v = unwind_json(&score, &["--exe", sexe_s]);
    let p = names(thread_in(&v, "main.byLen.Less").expect("a thread in Less"));
    assert_eq!(p[position(&p, "main.byLen.Less") + 1], WRAPPER, "{p:?}");

    // A wrapper that called runtime.panicwrap stays, as Go keeps it.
    let ndir = TempDir::new("unwind-go-wrapper-nil");
    let (ncore, nexe) =
        crash_core_built("wrapper", "amd64", &ndir.0, "", "", &[("WRAPPER_NIL", "1")]).unwrap();
    let printed = std::fs::read_to_string(ndir.0.join("wrapper.txt")).unwrap();
    assert!(
        printed.contains("called using nil *byLen pointer"),
        "{printed}"
    );
    let nexe_s = nexe.to_str().unwrap();
    for policy in ["cpu", "heap", "trace"] {
        let v = unwind_json(&ncore, &["--exe", nexe_s, "--policy", policy]);
        let p = names(thread_in(&v, WRAPPER).expect("a thread in the wrapper"));
        let at = position(&p, WRAPPER);
        assert_eq!(p[at + 1], "main.sortish", "--policy {policy}: {p:?}");
        if policy != "heap" {
            assert_eq!(p[at - 1], "runtime.panicwrap", "--policy {policy}: {p:?}");
        }
    }
}

/// A crash in C called from a Go callback on a thread C created (fixtures/go/callback_crash):
/// the crashing thread's stack holds its g0 frames once (the `asmcgocall` crossing followed a
/// frame pointer the C code never saved, back onto g0's own frames: they were printed seven
/// times over), then the goroutine from `runtime.cgocall` to `runtime.cgocallback`, then, past
/// the callback (where Go's own traceback ends at `runtime.goexit`), the C frames that called
/// into Go, down to the thread's root.
#[test]
fn a_crash_under_a_go_callback_from_c_walks_every_stack_once() {
    let dir = TempDir(std::env::temp_dir().join(format!("unwind-go-cbc-{}", std::process::id())));
    let Some((core, exe)) = crash_core("callback_crash", "amd64", &dir.0) else {
        return;
    };
    let e = exe.to_str().unwrap();
    for mode in ["hybrid", "dwarf", "fp"] {
        let v = unwind_json(&core, &["--exe", e, "--mode", mode]);
        let t = thread_in(&v, "c_crash").unwrap_or_else(|| panic!("{mode}: no c_crash: {v}"));
        let n = names(t);
        let once = |f: &str| {
            let count = n.iter().filter(|x| *x == f).count();
            assert_eq!(count, 1, "{mode}: {f} {count} times: {n:?}");
            n.iter().position(|x| x == f).unwrap()
        };
        let mut order = vec![
            once("c_crash"),
            once("runtime.cgocall"),
            once("main._Cfunc_c_crash"),
            once("main.goInner"),
            once("runtime.cgocallback"),
            once("crosscall2"),
            once("goCallback"),
        ];
        let frames = t["frames"].as_array().unwrap();
        assert_eq!(
            frames[order[5]]["via"], "transition",
            "{mode}: crosscall2 is reached through the callback's g0 frame: {n:?}"
        );
        if mode == "fp" {
            // Past the C stub, -O2 C code without frame pointers: the chain ends, said so.
            assert_eq!(t["truncated"], true, "{mode}: {n:?}");
        } else {
            order.push(n.iter().position(|x| x.starts_with("call_back")).unwrap());
            order.extend(["thr", "start_thread"].map(once));
            assert_eq!(t["truncated"], false, "{mode}: {n:?}");
        }
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{mode}: {n:?}");
    }
}

/// `unwind verify` on a Go core reports each walk's stop as `unwind stack` does: `end` where
/// the walk reached its stack's root (`mstart`, `goexit`), not the last step's raw reason
/// (`no unwind information`, `frame not moving up the stack`), which made verify contradict
/// stack on every Go thread (found by outside use in the twenty-seventh round).
#[test]
fn verify_reports_go_stops_as_stack_does() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("unwind-go-verify-{}", std::process::id())));
    let Some((core, exe)) = crash_core("throw", "amd64", &dir.0) else {
        return;
    };
    let exe = exe.to_str().unwrap();
    let stops = |mode: &str| -> Vec<(u64, String)> {
        let v = unwind_json(&core, &["--exe", exe, "--mode", mode]);
        v["threads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["tid"].as_u64().unwrap(),
                    t["stop"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let (fp, dwarf) = (stops("fp"), stops("dwarf"));
    let out = Command::new(BIN)
        .args(["verify", "--core", core.to_str().unwrap(), "--exe", exe])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut seen = 0;
    for line in text.lines().filter(|l| l.starts_with("thread ")) {
        let tid: u64 = line[7..line.find(':').unwrap()].parse().unwrap();
        let find = |v: &[(u64, String)]| v.iter().find(|t| t.0 == tid).unwrap().1.clone();
        let want = format!("fp stop: {}, dwarf stop: {})", find(&fp), find(&dwarf));
        assert!(line.ends_with(&want), "{line}\nwant ...{want}");
        seen += 1;
    }
    assert_eq!(seen, fp.len(), "one verdict per thread: {text}");
}

//! `unwind stack` against Go's own traceback, frame for frame (fixtures/go/crossings,
//! fixtures/go/make-traceback-core.sh): a cgo call blocked in C (`asmcgocall`), parked
//! goroutines (`mcall`), a running goroutine, idle Ms on g0, and (crash cores) every thread
//! inside Go's SIGQUIT handler on its gsignal stack.
//!
//! Go prints, per goroutine (and with GOTRACEBACK=crash per M: `PC=… m=N` then the M's g0 or
//! goroutine stack), each frame's function and `pc=`. For every thread of the core and every
//! mode, `unwind`'s frames are split where they cross from one stack to another; each part
//! must equal the frames Go printed for that stack: the same functions in the same order, none
//! lost or added (Go's inlined frames, printed without a pc, are not physical frames), and the
//! same return addresses.
//!
//! Needs `go` (golang-go), and `gdb` for the gcore core and core_pattern `core` for the crash
//! core; without them the tests print that they skipped, and fail when `CI` is set.

mod common;
use common::skip::skip;
use common::tools::{build_go, have, kernel_cores, TempDir};

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_unwind");

/// One stack Go printed.
#[derive(Debug)]
struct Block {
    /// `PC=` of the `SIGQUIT` block this stack belongs to (crash mode: one per M).
    signal_pc: Option<u64>,
    /// `goroutine 0 [idle]:` (an M's g0) or `goroutine N [state]:`.
    header: String,
    /// (function, pc), leaf first; inlined frames (no pc) left out.
    frames: Vec<(String, u64)>,
}

fn parse_traceback(text: &str) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    let mut signal_pc = None;
    let mut func: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("PC=0x") {
            signal_pc = u64::from_str_radix(rest.split_whitespace().next().unwrap(), 16).ok();
        } else if (line.starts_with("goroutine ") && line.ends_with(':'))
            || line == "runtime stack:"
        {
            blocks.push(Block {
                signal_pc,
                header: line.to_string(),
                frames: Vec::new(),
            });
        } else if line.starts_with('\t') {
            if let (Some(f), Some(b)) = (func.take(), blocks.last_mut()) {
                if let Some(pc) = line.split(" pc=0x").nth(1) {
                    b.frames
                        .push((f, u64::from_str_radix(pc.trim(), 16).unwrap()));
                }
            }
        } else if line.is_empty() {
            func = None;
        } else if !line.starts_with("created by ") && line.ends_with(')') {
            let name = line[..line.rfind('(').unwrap()].to_string();
            func = Some(name);
        }
    }
    blocks.retain(|b| !b.frames.is_empty());
    blocks
}

/// Our frame: (function, as Go prints it: no `.abi0` suffix, pc, via).
type Ours = (String, u64, String);

fn ours(t: &Value) -> Vec<Ours> {
    t["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let s = f["symbol"].as_str().unwrap_or("?");
            (
                s.to_string(),
                u64::from_str_radix(f["pc"].as_str().unwrap().trim_start_matches("0x"), 16)
                    .unwrap(),
                f["via"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Splits a thread's frames at each crossing: a frame found through a transition starts a
/// new part. Returns (part, entered through a signal frame?).
fn parts(frames: &[Ours]) -> Vec<(Vec<Ours>, bool)> {
    let mut out: Vec<(Vec<Ours>, bool)> = vec![(Vec::new(), false)];
    for (i, f) in frames.iter().enumerate() {
        if f.2 == "transition" && i > 0 {
            let signal =
                frames[i - 1].0 == "__restore_rt" || frames[i - 1].0 == "runtime.sigreturn";
            out.push((Vec::new(), signal));
        }
        out.last_mut().unwrap().0.push(f.clone());
    }
    out
}

fn names<'a, I: IntoIterator<Item = &'a String>>(it: I) -> Vec<&'a str> {
    it.into_iter().map(String::as_str).collect()
}

/// Is `a` (ours) exactly `b` (Go's): the same functions, and the same pcs except at the leaf
/// (Go shows a goroutine in a syscall or cgo call at the pc it entered it, we at its return
/// address from `asmcgocall`)?
fn same(a: &[Ours], b: &Block) -> bool {
    a.len() == b.frames.len()
        && a.iter()
            .zip(&b.frames)
            .enumerate()
            .all(|(i, (x, y))| x.0 == y.0 && (i == 0 || x.1 == y.1))
}

/// FP mode cannot see the caller of a frameless function (Go's `runtime.futex`, or `main.spin`:
/// Go gives functions with no locals no frame record) where it was interrupted: where a walk
/// starts from exact registers (the thread's, a signal frame's) or where Go's asynchronous
/// preemption injected a call to `runtime.asyncPreempt`. `a` is `b` with at most one frame
/// missing after each such interrupted frame; everything else equal, pcs included.
fn same_but_interrupted_callers(a: &[Ours], b: &Block) -> bool {
    let interrupted = |j: usize| j == 0 || (j >= 1 && b.frames[j - 1].0 == "runtime.asyncPreempt");
    let (mut i, mut j) = (0, 0);
    let mut skipped_after = usize::MAX;
    while i < a.len() && j < b.frames.len() {
        let (x, y) = (&a[i], &b.frames[j]);
        if x.0 == y.0 && (j == 0 || x.1 == y.1) {
            i += 1;
            j += 1;
        } else if j >= 1 && interrupted(j - 1) && skipped_after != j - 1 {
            skipped_after = j - 1;
            j += 1;
        } else {
            return false;
        }
    }
    i == a.len() && j == b.frames.len()
}

/// Was goroutine part `g` preempted asynchronously when we looked, and is it running again in
/// Go's traceback (taken later)? Its frames after `runtime.asyncPreempt` are then Go's running
/// block's, pcs equal but the first (where it was interrupted; FP mode may also miss the
/// interrupted frameless function's caller, as `same_but_interrupted_callers` allows); or it
/// was preempted again by then (Go's block starts at `runtime.asyncPreempt`: CI saw it once).
fn resumed_since(g: &[Ours], goroutines: &[&Block]) -> bool {
    let Some(i) = g.iter().position(|f| f.0 == "runtime.asyncPreempt") else {
        return false;
    };
    let callers = &g[i + 1..];
    // Preempted again when Go printed its traceback: Go's block starts at
    // `runtime.asyncPreempt` (the signal's pc), then the callers, the interrupted one at
    // another pc.
    let preempted_again = |b: &Block| {
        b.frames
            .first()
            .is_some_and(|f| f.0 == "runtime.asyncPreempt")
            && callers.len() + 1 == b.frames.len()
            && callers
                .iter()
                .zip(&b.frames[1..])
                .enumerate()
                .all(|(k, (x, y))| x.0 == y.0 && (k == 0 || x.1 == y.1))
    };
    // Preempted again and parked again by then (`[runnable]`, Go's block starts at
    // `asyncPreempt2` under a new `asyncPreempt`): its callers from there, the interrupted one
    // at another pc.
    let parked_again = |b: &Block| {
        let Some(k) = b.frames.iter().position(|f| f.0 == "runtime.asyncPreempt") else {
            return false;
        };
        let tail = Block {
            signal_pc: b.signal_pc,
            header: b.header.clone(),
            frames: b.frames[k + 1..].to_vec(),
        };
        same(callers, &tail) || same_but_interrupted_callers(callers, &tail)
    };
    goroutines.iter().any(|b| {
        (b.header.contains("[running")
            && (same(callers, b) || same_but_interrupted_callers(callers, b) || preempted_again(b)))
            || (b.header.contains("[runnable") && parked_again(b))
    })
}

/// The signal found a goroutine inside a system call (main's `os.Stdout.Sync()` right after
/// "ready"): Go prints a `[syscall]` goroutine from the system call's caller (its saved
/// `syscallpc`), leaving out the frames of package `runtime/internal/syscall` that made it,
/// which the walk shows. The rest must be Go's frames, pcs included.
fn in_syscall(a: &[Ours], b: &Block) -> bool {
    let Some(k) = a.len().checked_sub(b.frames.len()) else {
        return false;
    };
    b.header.contains("[syscall")
        && k > 0
        && a[..k]
            .iter()
            .all(|f| f.0.starts_with("runtime/internal/syscall."))
        && a[k..]
            .iter()
            .zip(&b.frames)
            .all(|(x, y)| x.0 == y.0 && x.1 == y.1)
}

fn unwind_json(core: &Path, exe: &Path, mode: &str) -> Value {
    let out = Command::new(BIN)
        .args(["stack", "--core"])
        .arg(core)
        .arg("--exe")
        .arg(exe)
        .args(["--format", "json", "--mode", mode])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("no usable CFI"),
        "{mode}: Go's compressed .debug_frame must be read: {err}"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn make(mode: &str, dir: &Path) -> Option<(PathBuf, PathBuf, String)> {
    if !cfg!(target_arch = "x86_64") {
        eprintln!("skipping: the traceback fixture runs on x86_64 hosts");
        return None;
    }
    if !have("go", "version") {
        skip("needs `go` (golang-go)");
        return None;
    }
    if mode == "gcore" && !have("gdb", "--version") {
        skip("needs gdb (gcore)");
        return None;
    }
    if mode == "crash" && !kernel_cores() {
        skip("needs core_pattern `core` (CI sets it)");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/go/make-traceback-core.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(mode)
        .arg(dir)
        .env("UNWIND_BIN", BIN)
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if mode != "crash" && (err.contains("ptrace") || err.contains("not permitted")) {
            skip(&format!("gdb cannot trace here: {err}"));
            return None;
        }
        panic!("make-traceback-core.sh {mode} failed: {err}");
    }
    let tb = std::fs::read_to_string(dir.join(format!("traceback-{mode}.txt"))).unwrap();
    Some((dir.join(format!("core-{mode}")), dir.join("crossings"), tb))
}

/// What one thread's comparison found, for the summary.
#[derive(Default, Debug)]
struct Seen {
    cgo: bool,
    mcall: bool,
    signal: bool,
}

/// Compares every thread of `v` with Go's blocks; returns which crossings were checked.
fn compare(v: &Value, blocks: &[Block], mode: &str, crash: bool) -> Seen {
    let mut seen = Seen::default();
    let goroutines: Vec<&Block> = blocks
        .iter()
        .filter(|b| !b.header.starts_with("goroutine 0 "))
        .collect();
    for t in v["threads"].as_array().unwrap() {
        let frames = ours(t);
        let ps = parts(&frames);
        let ctx = || {
            format!(
                "{mode}, thread {}: {:#?}\nGo: {blocks:#?}",
                t["tid"],
                names(frames.iter().map(|f| &f.0))
            )
        };
        // The part the thread was running when stopped: in a crash core, the one Go's handler
        // interrupted (after the outermost signal frame); in a gcore core, the first.
        let start = if crash {
            ps.iter()
                .rposition(|p| p.1)
                .unwrap_or_else(|| panic!("no signal frame: {}", ctx()))
        } else {
            0
        };
        if crash {
            seen.signal = true;
        }
        let running = &ps[start].0;
        let rest = &ps[start + 1..];
        // Go's block for this thread: the M's g0 (goroutine 0) or its goroutine. Crash mode
        // ties a block to the thread by the interrupted pc.
        let mine: Vec<&Block> = blocks
            .iter()
            .filter(|b| {
                if crash {
                    b.signal_pc == Some(running[0].1)
                } else {
                    b.frames.first().map(|f| f.1) == Some(running[0].1)
                        || b.frames.first().map(|f| &f.0) == Some(&running[0].0)
                }
            })
            .collect();
        let g0_part = running.last().is_some_and(|f| {
            f.0 == "runtime.mstart" || f.0 == "runtime.mcall" || f.0 == "runtime.rt0_go"
        });
        if g0_part && crash {
            // Several Ms may have been interrupted at the same pc (futex): one must match.
            let ok = mine
                .iter()
                .filter(|b| b.header.starts_with("goroutine 0 "))
                .any(|b| {
                    if mode == "fp" {
                        same_but_interrupted_callers(running, b)
                    } else {
                        same(running, b)
                    }
                });
            assert!(ok, "g0 part differs from Go's g0 stacks: {}", ctx());
        }
        match rest {
            [] if !g0_part && !crash => {
                // A goroutine running Go code (the spinner) went on running between gcore and
                // SIGQUIT: not the same state, nothing to compare.
            }
            [] if !g0_part => {
                // A goroutine running Go code on its own stack (the spinner).
                let fp = mode == "fp";
                assert!(
                    goroutines.iter().any(|b| if fp {
                        same_but_interrupted_callers(running, b)
                    } else {
                        same(running, b)
                    }) || goroutines.iter().any(|b| in_syscall(running, b)),
                    "running goroutine not in Go's traceback: {}",
                    ctx()
                );
            }
            [] => {}
            [(g, false)] if !crash && resumed_since(g, &goroutines) => {
                // A goroutine preempted when we looked (asyncPreempt2 -> mcall), running again
                // by Go's traceback (the spinner): not the same state, nothing to compare.
            }
            [(g, false)] => {
                // Crossed from g0 (mcall) or C code on g0 (asmcgocall) to a goroutine.
                let b = goroutines
                    .iter()
                    .find(|b| {
                        if mode == "fp" {
                            same_but_interrupted_callers(g, b)
                        } else {
                            same(g, b)
                        }
                    })
                    .unwrap_or_else(|| {
                        panic!("goroutine part is not one of Go's goroutines: {}", ctx())
                    });
                if b.header.contains("[syscall]") {
                    // The cgo call: C frames on g0 (FP mode: only the interrupted one, libc
                    // has no frame records), then the goroutine from runtime.cgocall on.
                    assert_eq!(g[0].0, "runtime.cgocall", "{}", ctx());
                    if mode != "fp" {
                        assert_eq!(running.last().unwrap().0, "runtime.asmcgocall", "{}", ctx());
                    }
                    seen.cgo = true;
                }
                if running.last().is_some_and(|f| f.0 == "runtime.mcall") {
                    // Parked (gopark), or preempted and runnable (asyncPreempt2 -> mcall).
                    seen.mcall = true;
                }
            }
            _ => panic!("unexpected crossings: {}", ctx()),
        }
        // Every walk ends where Go's does.
        let last = &frames.last().unwrap().0;
        assert!(
            ["runtime.goexit", "runtime.mstart", "runtime.mcall"].contains(&last.as_str()),
            "{}",
            ctx()
        );
        assert_eq!(t["truncated"], false, "{}", ctx());
    }
    seen
}

fn run(mode: &str) {
    let dir =
        TempDir(std::env::temp_dir().join(format!("unwind-go-tb-{mode}-{}", std::process::id())));
    let Some((core, exe, tb)) = make(mode, &dir.0) else {
        return;
    };
    let blocks = parse_traceback(&tb);
    assert!(blocks.len() >= 5, "Go's traceback: {tb}");
    for m in ["fp", "dwarf", "hybrid"] {
        let v = if mode == "live" {
            // `unwind stack --pid` ran on the process in this mode before Go's traceback.
            let json = std::fs::read(dir.0.join(format!("live-{m}.json"))).unwrap();
            let err = std::fs::read_to_string(dir.0.join(format!("live-{m}.err"))).unwrap();
            assert!(
                !err.contains("no usable CFI"),
                "{m}: Go's compressed .debug_frame must be read: {err}"
            );
            serde_json::from_slice(&json).unwrap()
        } else {
            unwind_json(&core, &exe, m)
        };
        let seen = compare(&v, &blocks, m, mode == "crash");
        eprintln!("{mode} {m}: {seen:?}");
        // The cgo call is crossed in every mode (FP through g.sched, the others through the
        // C frames' CFI and asmcgocall); a thread parked in mcall exists in these cores
        // (an M that parked the main goroutine in time.Sleep).
        assert!(seen.cgo, "{mode} {m}: the cgo thread was not compared");
        assert!(seen.mcall, "{mode} {m}: no thread crossed mcall");
    }
}

#[test]
fn go_traceback_matches_in_gcore_core() {
    run("gcore");
}

/// The same comparison on the running process: `unwind stack --pid` in each mode, then Go's
/// SIGQUIT traceback of the same (blocked) state.
#[test]
fn go_traceback_matches_live() {
    run("live");
}

#[test]
fn go_traceback_matches_in_crash_core() {
    run("crash");
}

/// The offsets of `runtime.g`, `m` and `gobuf` read from a plain `go build` binary's
/// (compressed) `.debug_info` are the built-in Go 1.17-1.21 table's, for Debian's Go; and its
/// `.debug_frame` is compressed, so the CFI tests above read an inflated section.
#[test]
fn debug_info_offsets_agree_with_the_builtin_table() {
    if !have("go", "version") {
        skip("needs `go` (golang-go)");
        return;
    }
    let dir = TempDir(std::env::temp_dir().join(format!("unwind-go-off-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let exe = build_go(&dir.0, "crossings");
    let data = std::fs::read(&exe).unwrap();
    {
        use object::{Object, ObjectSection, SectionFlags};
        let file = object::File::parse(&*data).unwrap();
        for name in [".debug_frame", ".debug_info"] {
            let s = file.section_by_name(name).unwrap();
            let SectionFlags::Elf { sh_flags, .. } = s.flags() else {
                panic!("not ELF")
            };
            assert!(
                sh_flags.0 & object::elf::SHF_COMPRESSED.0 != 0,
                "{name} is not compressed: this test no longer covers compressed DWARF"
            );
        }
    }
    let from_dwarf =
        unwind::go_runtime::GoOffsets::from_elf(&data).expect("runtime.g/m/gobuf in .debug_info");
    assert_eq!(from_dwarf, unwind::go_runtime::GoOffsets::GO_1_17);
    // A binary without DWARF gives none (the table is then used).
    assert_eq!(
        unwind::go_runtime::GoOffsets::from_elf(b"not an ELF file"),
        None
    );
}

/// A crash core of the Go fixture `fixture` for `arch` (fixtures/go/make-crash-core.sh) in a
/// scratch directory (kept while the returned `TempDir` lives), its executable and Go's own
/// traceback of the crash; `None` (after a skip) where that architecture cannot run here.
fn crash_core_with_traceback(
    fixture: &str,
    arch: &str,
) -> Option<(TempDir, PathBuf, PathBuf, String)> {
    match arch {
        "arm64" if !have("qemu-aarch64", "--version") => {
            skip("needs qemu-aarch64 (qemu-user)");
            return None;
        }
        "amd64" if !cfg!(target_arch = "x86_64") || !kernel_cores() => {
            skip("needs an x86_64 host with core_pattern `core`");
            return None;
        }
        _ => {}
    }
    let dir = TempDir(std::env::temp_dir().join(format!(
        "unwind-go-tb-{fixture}-{arch}-{}",
        std::process::id()
    )));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/go/make-crash-core.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args([fixture, arch])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let core = dir.0.join(format!("core-go-{fixture}-{arch}"));
    let exe = dir.0.join(format!("{fixture}-{arch}"));
    let tb = std::fs::read_to_string(dir.0.join(format!("{fixture}.txt"))).unwrap();
    Some((dir, core, exe, tb))
}

/// `runtime.morestack` against Go's traceback of the same crash (fixtures/go/grow, both
/// architectures, all modes): the system-stack part ends with Go's `runtime stack:` (throw,
/// newstack, morestack) and the goroutine part begins with Go's `goroutine 1 [running]:`
/// frames (Go prints 100 of them, then elides the rest), pcs included.
#[test]
fn morestack_matches_go_traceback() {
    if !have("go", "version") {
        skip("needs `go` (golang-go)");
        return;
    }
    for arch in ["amd64", "arm64"] {
        let Some((_dir, core, exe, tb)) = crash_core_with_traceback("grow", arch) else {
            continue;
        };
        let blocks = parse_traceback(&tb);
        let sys = blocks
            .iter()
            .find(|b| b.header == "runtime stack:")
            .unwrap_or_else(|| panic!("{arch}: no runtime stack in {tb}"));
        let g1 = blocks
            .iter()
            .find(|b| b.header.starts_with("goroutine 1 "))
            .unwrap_or_else(|| panic!("{arch}: no goroutine 1 in {tb}"));
        assert!(g1.frames.len() >= 50, "{arch}: {g1:?}");
        for mode in ["fp", "dwarf", "hybrid"] {
            let v = unwind_json(&core, &exe, mode);
            let t = v["threads"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| ours(t).iter().any(|f| f.0 == "runtime.morestack"))
                .unwrap_or_else(|| panic!("{arch} {mode}: no thread in morestack"));
            let frames = ours(t);
            let ms = frames
                .iter()
                .position(|f| f.0 == "runtime.morestack")
                .unwrap();
            let (g0, g) = (&frames[..=ms], &frames[ms + 1..]);
            let n = sys.frames.len();
            assert!(
                g0.len() >= n
                    && g0[g0.len() - n..]
                        .iter()
                        .zip(&sys.frames)
                        .all(|(x, y)| x.0 == y.0 && x.1 == y.1),
                "{arch} {mode}: g0 part {:?} does not end with Go's {:?}",
                names(g0.iter().map(|f| &f.0)),
                sys.frames
            );
            assert_eq!(g[0].2, "transition", "{arch} {mode}");
            assert!(
                g.len() >= g1.frames.len()
                    && g.iter()
                        .zip(&g1.frames)
                        .all(|(x, y)| x.0 == y.0 && x.1 == y.1),
                "{arch} {mode}: goroutine part differs from Go's goroutine 1"
            );
        }
    }
}

/// `runtime.systemstack` against Go's traceback of the same crash (fixtures/go/throw:
/// concurrent map writes throw on the system stack; both architectures, all modes): the
/// goroutine part that follows `runtime.systemstack` is Go's `goroutine N [running]:` block,
/// pcs included. One documented difference: Go starts that block at the caller of
/// `runtime.fatalthrow` (it passes its caller's pc and sp to the printer), while the walk also
/// shows `runtime.fatalthrow` itself, the frame that called `systemstack`.
#[test]
fn systemstack_matches_go_traceback() {
    if !have("go", "version") {
        skip("needs `go` (golang-go)");
        return;
    }
    for arch in ["amd64", "arm64"] {
        let Some((_dir, core, exe, tb)) = crash_core_with_traceback("throw", arch) else {
            continue;
        };
        let blocks = parse_traceback(&tb);
        // The throwing goroutine: the first block, [running], through main.writer.
        let g = blocks
            .iter()
            .find(|b| {
                b.header.contains("[running]") && b.frames.iter().any(|f| f.0 == "main.writer")
            })
            .unwrap_or_else(|| panic!("{arch}: no running main.writer in {tb}"));
        for mode in ["fp", "dwarf", "hybrid"] {
            let v = unwind_json(&core, &exe, mode);
            let mut compared = 0;
            for t in v["threads"].as_array().unwrap() {
                let frames = ours(t);
                let Some(s) = frames.iter().position(|f| f.0 == "runtime.systemstack") else {
                    continue;
                };
                if !frames.iter().any(|f| f.0 == "main.writer") {
                    continue;
                }
                let part = &frames[s + 1..];
                assert_eq!(part[0].0, "runtime.fatalthrow", "{arch} {mode}: {part:?}");
                assert_eq!(part[0].2, "transition", "{arch} {mode}");
                let rest = &part[1..];
                assert!(
                    rest.len() == g.frames.len()
                        && rest
                            .iter()
                            .zip(&g.frames)
                            .all(|(x, y)| x.0 == y.0 && x.1 == y.1),
                    "{arch} {mode}: {:?}\nGo: {:?}",
                    names(rest.iter().map(|f| &f.0)),
                    g.frames
                );
                compared += 1;
            }
            assert!(
                compared > 0,
                "{arch} {mode}: no thread crossed systemstack to main.writer"
            );
        }
    }
}

/// A spinner preempted when `unwind` looked (a CI run's case) and running again in Go's later
/// traceback is recognised, and only that: not a goroutine that was not preempted, not another
/// running goroutine.
#[test]
fn a_goroutine_preempted_then_resumed_is_recognised() {
    let f = |n: &str, pc: u64| (n.to_string(), pc, String::new());
    let ours = vec![
        f("runtime.asyncPreempt2", 0x46a0b0),
        f("runtime.asyncPreempt", 0x46c0c0),
        f("main.spin", 4732800),
        f("main.spinner", 4732921),
        f("main.main.func3", 4733542),
        f("runtime.goexit", 4583201),
    ];
    let block = |header: &str, frames: &[(&str, u64)]| Block {
        signal_pc: None,
        header: header.to_string(),
        frames: frames.iter().map(|&(n, pc)| (n.to_string(), pc)).collect(),
    };
    let running = block(
        "goroutine 21 [running, locked to thread]:",
        &[
            ("main.spin", 4732843),
            ("main.spinner", 4732921),
            ("main.main.func3", 4733542),
            ("runtime.goexit", 4583201),
        ],
    );
    assert!(resumed_since(&ours, &[&running]));
    // Go's block is not running: it must match as it is, not be skipped.
    let parked = block(
        "goroutine 21 [runnable]:",
        &running
            .frames
            .iter()
            .map(|(n, pc)| (n.as_str(), *pc))
            .collect::<Vec<_>>(),
    );
    assert!(!resumed_since(&ours, &[&parked]));
    // A caller differs: another goroutine.
    let other = block(
        "goroutine 22 [running]:",
        &[
            ("main.spin", 4732843),
            ("main.spinner", 4732999),
            ("main.main.func3", 4733542),
            ("runtime.goexit", 4583201),
        ],
    );
    assert!(!resumed_since(&ours, &[&other]));
    // Not preempted: nothing to skip.
    assert!(!resumed_since(&ours[2..], &[&running]));
}

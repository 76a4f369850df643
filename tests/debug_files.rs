//! `unwind stack --core` with the separate debug files distributions ship: a stripped program
//! whose symbols, lines and CFI are in a debug file found by build id (under `--sysroot` too)
//! or by `.gnu_debuglink` (CRC-checked when there is no build id), DWARF that `dwz` split
//! into a supplementary file, and clang's `-gline-tables-only`. Each found by outside use (the
//! twenty-first round) and failing before its fix.
//!
//! Needs gcc, objcopy, strip and core_pattern `core`; `dwz` and `clang` for their tests: with
//! `CI` set a missing tool fails the test, otherwise it is skipped with a message.

mod common;
use common::tools::{need, need_kernel_cores, TempDir};

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_unwind");

/// The program: main -> level1 -> level2 -> level3, static functions (in `.symtab` only),
/// waiting in `pause` after printing "ready". `OTHER` changes level3's code (another build
/// of the same source).
const PROG: &str = r#"
#include <stdio.h>
#include <unistd.h>
volatile int sink;
__attribute__((noinline)) static void level3(void) {
#ifdef OTHER
    sink += 3; sink *= 7; sink ^= 11;
#endif
    printf("ready\n");
    fflush(stdout);
    for (;;) { pause(); sink++; }
}
__attribute__((noinline)) static void level2(void) { level3(); sink++; }
__attribute__((noinline)) static void level1(void) { level2(); sink++; }
int main(void) { level1(); sink++; return 0; }
"#;

fn tools(extra: &[&str]) -> bool {
    need_kernel_cores()
        && need("gcc", "--version")
        && need("objcopy", "--version")
        && extra.iter().all(|t| need(t, "--version"))
}

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Builds PROG with `cc` and `flags` into `dir/name`.
fn build(dir: &Path, cc: &str, name: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join("prog.c");
    std::fs::write(&src, PROG).unwrap();
    let exe = dir.join(name);
    run(Command::new(cc).args(flags).arg("-o").arg(&exe).arg(&src));
    exe
}

/// `objcopy --only-keep-debug exe exe.debug`, then `strip_args` on `exe`, then a debug link
/// to `exe.debug` (made from the directory, so the link names the bare file).
fn split_debug(exe: &Path, strip_args: &[&str]) -> PathBuf {
    let debug = exe.with_extension("debug");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(exe)
        .arg(&debug));
    run(Command::new("strip").args(strip_args).arg(exe));
    run(Command::new("objcopy")
        .current_dir(exe.parent().unwrap())
        .arg(format!(
            "--add-gnu-debuglink={}",
            debug.file_name().unwrap().to_string_lossy()
        ))
        .arg(exe));
    debug
}

/// A kernel core of `exe` waiting in level3 (SIGABRT once it printed "ready"), written in
/// `exe`'s directory; `before_abort` runs while it waits (deletes the file, say).
fn core_of(exe: &Path, before_abort: impl FnOnce()) -> PathBuf {
    let dir = exe.parent().unwrap();
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -c unlimited; exec '{}'", exe.display()))
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    // Out of `write` and into `pause`.
    std::thread::sleep(std::time::Duration::from_millis(200));
    before_abort();
    // SAFETY: kill has no memory preconditions; the pid is our live child.
    unsafe { libc::kill(child.id() as i32, libc::SIGABRT) };
    let _ = child.wait();
    let core = dir.join("core");
    assert!(core.exists(), "no core written in {}", dir.display());
    core
}

/// `exe`'s GNU build id, in hex (as `readelf -n` prints it).
fn build_id(exe: &Path) -> String {
    let notes = Command::new("readelf").arg("-n").arg(exe).output().unwrap();
    String::from_utf8_lossy(&notes.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("a build id")
        .to_string()
}

/// `unwind stack --core CORE ARGS --format json`: the first thread's frames as (symbol, line).
fn frames(core: &Path, args: &[&str]) -> Vec<(String, String)> {
    let out = Command::new(BIN)
        .args(["stack", "--format", "json", "--core"])
        .arg(core)
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["threads"][0]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["symbol"].as_str().unwrap_or("?").to_string(),
                f["line"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn names(f: &[(String, String)]) -> Vec<&str> {
    f.iter().map(|(n, _)| n.as_str()).collect()
}

/// level3, level2, level1 and main, in that order, each once.
fn has_chain(f: &[(String, String)]) -> bool {
    common::tools::has_run(
        &f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        &["level3", "level2", "level1", "main"],
    )
}

/// A program built without `.eh_frame` (`-fno-asynchronous-unwind-tables`, as kernels and
/// size-tuned C are) and stripped: its own functions' CFI is in `.debug_frame`, which `strip`
/// moved to the debug file. The walk reads it there (it stopped at the first frame, "no unwind
/// information", where gdb and eu-stack go on).
#[test]
fn debug_frame_in_the_debug_file_walks_the_stack() {
    if !tools(&["strip"]) {
        return;
    }
    let d = TempDir::new("debug-frame");
    let exe = build(
        d.path(),
        "gcc",
        "prog",
        &[
            "-O2",
            "-g",
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
        ],
    );
    split_debug(&exe, &["--strip-all"]);
    let core = core_of(&exe, || {});
    let f = frames(&core, &[]);
    assert!(has_chain(&f), "{:?}", names(&f));
    assert_eq!(f.last().map(|(n, _)| n.as_str()), Some("_start"), "{f:?}");
}

/// Without a build id the debug link's CRC is the only check that the debug file is this
/// build's (gdb refuses a mismatch): a stale one named the wrong functions. The right file is
/// taken, a stale one refused.
#[test]
fn a_stale_debug_link_file_is_refused_by_its_crc() {
    if !tools(&["strip"]) {
        return;
    }
    let d = TempDir::new("debuglink-crc");
    let exe = build(
        d.path(),
        "gcc",
        "prog",
        &["-O1", "-g", "-Wl,--build-id=none"],
    );
    let debug = split_debug(&exe, &["--strip-all"]);
    let core = core_of(&exe, || {});
    let good = frames(&core, &[]);
    assert!(has_chain(&good), "{:?}", names(&good));

    // Another build's debug file under the same name.
    let other_dir = d.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = build(
        &other_dir,
        "gcc",
        "prog",
        &["-O1", "-g", "-Wl,--build-id=none", "-DOTHER"],
    );
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&other)
        .arg(&debug));
    let stale = frames(&core, &[]);
    assert!(
        !stale.iter().any(|(n, _)| n.starts_with("level")),
        "the stale debug file was used: {:?}",
        names(&stale)
    );
}

/// A file stripped of all but a few symbols (`strip -K main`) keeps a `.symtab`: its debug
/// file's full one names the rest (was `?` with the right line).
#[test]
fn a_partial_symbol_table_is_completed_from_the_debug_file() {
    if !tools(&["strip"]) {
        return;
    }
    let d = TempDir::new("partial-symtab");
    let exe = build(d.path(), "gcc", "prog", &["-O1", "-g"]);
    split_debug(&exe, &["--strip-all", "-K", "main"]);
    let core = core_of(&exe, || {});
    let f = frames(&core, &["--lines"]);
    assert!(has_chain(&f), "{:?}", names(&f));
    let (_, line) = f.iter().find(|(n, _)| n == "level2").unwrap();
    assert!(line.ends_with("prog.c:13"), "{f:?}");
}

/// A core from another machine: its files and their debug files copied into a sysroot tree,
/// the debug file under `SYSROOT/usr/lib/debug/.build-id` (gdb's `set sysroot` looks there).
/// Also a program deleted before the core was written (read from the core's memory, as after
/// a package upgrade): its debug file is found by the build id in that memory.
#[test]
fn debug_files_are_found_under_the_sysroot_and_for_deleted_programs() {
    if !tools(&["strip", "readelf"]) {
        return;
    }
    let d = TempDir::new("sysroot-debug");
    // Frame pointers: a kernel core keeps only the first page of a deleted program's text, so
    // its CFI is not in the core; the frame records walk it.
    let exe = build(
        d.path(),
        "gcc",
        "prog",
        &["-O1", "-g", "-fno-omit-frame-pointer"],
    );
    let debug = exe.with_extension("debug");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&exe)
        .arg(&debug));
    run(Command::new("strip").arg("--strip-all").arg(&exe));
    let id = build_id(&exe);
    let sysroot = d.path().join("sysroot");
    let by_id = sysroot.join(format!("usr/lib/debug/.build-id/{}", &id[..2]));
    std::fs::create_dir_all(&by_id).unwrap();
    std::fs::rename(&debug, by_id.join(format!("{}.debug", &id[2..]))).unwrap();
    let sysroot_arg = sysroot.to_str().unwrap();

    let core = core_of(&exe, || {});
    let plain = frames(&core, &[]);
    assert!(
        !plain.iter().any(|(n, _)| n == "level2"),
        "named without the debug file? {:?}",
        names(&plain)
    );
    let f = frames(&core, &["--sysroot", sysroot_arg, "--lines"]);
    assert!(has_chain(&f), "{:?}", names(&f));
    let (_, line) = f.iter().find(|(n, _)| n == "level2").unwrap();
    assert!(line.ends_with("prog.c:13"), "{f:?}");

    std::fs::remove_file(&core).unwrap();
    let core = core_of(&exe, || std::fs::remove_file(&exe).unwrap());
    let f = frames(&core, &["--sysroot", sysroot_arg]);
    assert!(has_chain(&f), "deleted program: {:?}", names(&f));
}

/// `dwz -m` (Debian's and Fedora's debug packages) moves what files share into a
/// supplementary file named by `.gnu_debugaltlink`: `--lines` reads it (no line at all
/// before).
#[test]
fn dwz_supplementary_files_give_lines() {
    if !tools(&["dwz"]) {
        return;
    }
    let d = TempDir::new("dwz");
    let exe = build(d.path(), "gcc", "prog", &["-O1", "-g"]);
    let other = build(d.path(), "gcc", "prog2", &["-O1", "-g", "-DOTHER"]);
    let common = d.path().join("common.dwz");
    run(Command::new("dwz")
        .arg("-m")
        .arg(&common)
        .arg("-M")
        .arg(&common)
        .arg(&exe)
        .arg(&other));
    let link = Command::new("readelf")
        .args(["--string-dump=.gnu_debugaltlink"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("common.dwz"),
        "dwz wrote no alt link: {}",
        String::from_utf8_lossy(&link.stdout)
    );
    let core = core_of(&exe, || {});
    let f = frames(&core, &["--lines"]);
    assert!(has_chain(&f), "{:?}", names(&f));
    let (_, line) = f.iter().find(|(n, _)| n == "level2").unwrap();
    assert!(line.ends_with("prog.c:13"), "{f:?}");
}

/// clang's `-gline-tables-only` writes line tables but function entries only where code was
/// inlined: a frame in any other function keeps its line, named by the symbol table (it had
/// none).
#[test]
fn clang_line_tables_only_give_lines() {
    if !tools(&["clang"]) {
        return;
    }
    let d = TempDir::new("gmlt");
    let exe = build(d.path(), "clang", "prog", &["-O1", "-gline-tables-only"]);
    let core = core_of(&exe, || {});
    let f = frames(&core, &["--lines"]);
    assert!(has_chain(&f), "{:?}", names(&f));
    let (_, line) = f.iter().find(|(n, _)| n == "level2").unwrap();
    assert!(line.ends_with("prog.c:13"), "{f:?}");
}

/// Fedora's and RHEL's MiniDebugInfo: a stripped program carries, in `.gnu_debugdata`, an
/// xz-compressed ELF file whose symbol table names the functions `.dynsym` does not (made
/// here as Fedora's `find-debuginfo` makes it). Its static functions are named (they were `?`).
#[test]
fn mini_debuginfo_names_local_functions() {
    if !tools(&["strip", "nm", "xz"]) {
        return;
    }
    let d = TempDir::new("minidebuginfo");
    let exe = build(d.path(), "gcc", "prog", &["-O1", "-g"]);
    let nm = |args: &[&str]| {
        let o = Command::new("nm").args(args).arg(&exe).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let dynamic: Vec<String> = nm(&["-D", "--format=posix", "--defined-only"])
        .lines()
        .filter_map(|l| l.split(' ').next().map(str::to_string))
        .collect();
    let keep: String = nm(&["--format=posix", "--defined-only"])
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (name, kind) = (f.next()?, f.next()?);
            (matches!(kind, "T" | "t") && !dynamic.iter().any(|d| d == name))
                .then(|| format!("{name}\n"))
        })
        .collect();
    assert!(keep.contains("level2\n"), "{keep}");
    let keep_file = d.path().join("keep_symbols");
    std::fs::write(&keep_file, keep).unwrap();
    let mini = d.path().join("mini_debuginfo");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&exe)
        .arg(&mini));
    run(Command::new("objcopy")
        .args(["-S", "--remove-section", ".comment"])
        .arg(format!("--keep-symbols={}", keep_file.display()))
        .arg(&mini));
    run(Command::new("strip").args(["--strip-all"]).arg(&exe));
    run(Command::new("xz").arg(&mini));
    run(Command::new("objcopy")
        .arg(format!(
            "--add-section=.gnu_debugdata={}.xz",
            mini.display()
        ))
        .arg(&exe));
    let core = core_of(&exe, || {});
    let f = frames(&core, &[]);
    assert!(has_chain(&f), "{:?}", names(&f));
}

/// Runs `unwind stack --core CORE ARGS`; fails if it takes over 60 s (a hang).
fn finishes(core: &Path, args: &[&str]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(["stack", "--core"])
        .arg(core)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("unwind {args:?} hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Hostile neighbours of a program, for `--lines` (whose DWARF reader opens files of its own:
/// the program's `.dwp`, `.dwo` files, supplementary files): a FIFO named `prog.dwp` hung it
/// in `open` (found by an adversarial pass); it is refused as modules are (`safe_open`).
/// Another program's debug file in this one's build-id slot named the wrong functions: a
/// build-id file is taken only with that build id.
#[test]
fn hostile_debug_neighbours_are_refused() {
    if !tools(&["strip", "readelf", "mkfifo"]) {
        return;
    }
    let d = TempDir::new("hostile-debug");
    let exe = build(d.path(), "gcc", "prog", &["-O1", "-g"]);
    let core = core_of(&exe, || {});
    run(Command::new("mkfifo").arg(d.path().join("prog.dwp")));
    let out = finishes(&core, &["--lines"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("level2"));

    // Stripped, with another build's debug file in its build-id slot under a sysroot.
    let other_dir = d.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = build(&other_dir, "gcc", "prog", &["-O1", "-g", "-DOTHER"]);
    run(Command::new("strip").arg("--strip-all").arg(&exe));
    let id = build_id(&exe);
    let slot = d
        .path()
        .join(format!("sysroot/usr/lib/debug/.build-id/{}", &id[..2]));
    std::fs::create_dir_all(&slot).unwrap();
    std::fs::copy(&other, slot.join(format!("{}.debug", &id[2..]))).unwrap();
    std::fs::remove_file(&core).unwrap();
    let core = core_of(&exe, || {});
    let sysroot = d.path().join("sysroot");
    let f = frames(&core, &["--sysroot", sysroot.to_str().unwrap()]);
    assert!(
        !f.iter().any(|(n, _)| n.starts_with("level")),
        "another build's debug file was used: {:?}",
        names(&f)
    );
}

/// Split DWARF (`-gsplit-dwarf`): `--lines` reads the `.dwo` the skeleton unit names; that
/// file replaced by a FIFO is refused (it hung `--lines` in `open`), the walk unchanged.
#[test]
fn split_dwarf_lines_and_a_fifo_dwo() {
    if !tools(&["mkfifo"]) {
        return;
    }
    let d = TempDir::new("split-dwarf");
    let exe = build(d.path(), "gcc", "prog", &["-O1", "-g", "-gsplit-dwarf"]);
    let core = core_of(&exe, || {});
    let f = frames(&core, &["--lines"]);
    let (_, line) = f.iter().find(|(n, _)| n == "level2").unwrap();
    assert!(line.ends_with("prog.c:13"), "{f:?}");
    let dwo: Vec<PathBuf> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "dwo"))
        .collect();
    assert!(!dwo.is_empty(), "gcc wrote no .dwo");
    for p in &dwo {
        std::fs::remove_file(p).unwrap();
        run(Command::new("mkfifo").arg(p));
    }
    let out = finishes(&core, &["--lines", "--format", "json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["threads"][0]["frames"].as_array().unwrap().len() >= 4,
        "{v}"
    );
}

/// A program with DWARF but no symbol table (`objcopy --strip-all --keep-section='.debug_*'`):
/// with `--lines` its frames are named from DWARF, the function each pc is in. They were all
/// `?` while the functions inlined at them were named (found by outside use in the
/// twenty-seventh round).
#[test]
fn dwarf_names_frames_that_no_symbol_names() {
    if !tools(&[]) {
        return;
    }
    let d = TempDir::new("nosymtab");
    let exe = build(d.path(), "gcc", "prog", &["-O0", "-g"]);
    run(Command::new("objcopy")
        .args(["--strip-all", "--keep-section=.debug_*"])
        .arg(&exe));
    let core = core_of(&exe, || {});
    let without = frames(&core, &[]);
    assert!(
        !has_chain(&without),
        "the symbols are gone: {:?}",
        names(&without)
    );
    let f = frames(&core, &["--lines"]);
    assert!(has_chain(&f), "{:?}", names(&f));
    let (_, line) = f.iter().find(|(n, _)| n == "level2").unwrap();
    assert!(line.ends_with("prog.c:13"), "{f:?}");
}

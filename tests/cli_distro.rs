//! `unwind stack --core` with no `--mode` (Hybrid) on cores of distribution binaries, built
//! without frame pointers: Debian's coreutils `sleep` (C), `python3` in `time.sleep`, and Go's
//! `gofmt` (stripped). Checked against eu-stack: every pc it reports, in order, and the walk
//! reaches `_start` where it does. Data files mapped into the process (locale files) draw no
//! warning.
//!
//! Needs eu-stack, python3 at /usr/bin/python3, gofmt and core_pattern `core`: with `CI` set a
//! missing tool fails the test, otherwise it is skipped with a message.

mod common;
use common::skip::skip;
use common::tools::{eu_stack, need, need_kernel_cores};

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_unwind");
/// Debian's `gofmt` (package golang-go): `$(go env GOROOT)/bin/gofmt`.
fn gofmt() -> String {
    let root = Command::new("go")
        .args(["env", "GOROOT"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{root}/bin/gofmt")
}

fn tools_present(extra: &str) -> bool {
    if !need_kernel_cores() || !need("eu-stack", "--version") {
        return false;
    }
    if !Path::new(extra).exists() {
        skip(&format!("{extra} is missing"));
        return false;
    }
    true
}

/// Runs `cmd` (a shell command line) in a fresh directory with cores enabled, sends it
/// SIGABRT after `wait`, and returns the core's path.
fn make_core(name: &str, cmd: &str, wait: Duration) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("unwind-distro-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -c unlimited; exec {cmd}"))
        .current_dir(&dir)
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .env("GOTRACEBACK", "crash")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(wait);
    // SAFETY: kill has no memory preconditions; the pid is our live child.
    unsafe { libc::kill(child.id() as i32, libc::SIGABRT) };
    let _ = child.wait();
    drop(child.stdin.take());
    let core = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("core"))
        })
        .unwrap_or_else(|| panic!("{name}: no core written in {}", dir.display()));
    core
}

/// Runs `unwind stack --core CORE --format json` with no mode; returns its JSON and stderr.
fn unwind(core: &Path) -> (Value, String) {
    let out = Command::new(BIN)
        .args(["stack", "--format", "json", "--core"])
        .arg(core)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    (serde_json::from_slice(&out.stdout).unwrap(), err)
}

fn pcs(t: &Value) -> Vec<u64> {
    t["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            u64::from_str_radix(f["pc"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
        })
        .collect()
}

fn symbols(t: &Value) -> Vec<String> {
    t["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["symbol"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Every thread: eu-stack's pcs appear in ours, in order (we also show the interrupted pc
/// after a signal frame, which eu-stack does not); with `exact`, the lists are equal.
fn compare(core: &Path, v: &Value, exact: bool, is_code: impl Fn(u64) -> bool) {
    let eu = eu_stack(core, None).expect("eu-stack runs and prints frames");
    assert!(!eu.is_empty(), "eu-stack read no thread");
    for (tid, mut eu_pcs) in eu {
        eu_pcs.retain(|&pc| is_code(pc));
        let t = v["threads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tid"].as_u64() == Some(tid))
            .unwrap_or_else(|| panic!("thread {tid} missing"));
        let ours = pcs(t);
        // A Go thread's walk that ended whole at its root (`runtime.mstart`, `goexit`): what
        // eu-stack reads past that is what the stack above the root holds, stale (a sysmon
        // thread of gofmt's showed `runtime.execute` there in 1 core of 12).
        let root = symbols(t)
            .last()
            .is_some_and(|s| ["runtime.mstart", "runtime.goexit"].contains(&s.as_str()));
        if root && t["stop"] == "end" {
            if let Some(k) = ours.last().and_then(|l| eu_pcs.iter().position(|p| p == l)) {
                eu_pcs.truncate(k + 1);
            }
        }
        let mut it = ours.iter();
        let in_order = eu_pcs.iter().all(|pc| it.any(|o| o == pc));
        assert!(
            in_order && (!exact || ours == eu_pcs),
            "thread {tid}: ours {ours:x?}\neu-stack {eu_pcs:x?}"
        );
    }
}

/// A C-like program: one thread, walked exactly as eu-stack walks it, through
/// `__libc_start_main` (and to `_start` when the executable names it).
fn check_c_like(name: &str, cmd: &str, must_contain: &str, ends_at_start: bool) {
    let core = make_core(name, cmd, Duration::from_millis(800));
    let (v, err) = unwind(&core);
    assert!(
        !err.contains("warning"),
        "{name}: no warning expected (data mappings are not modules): {err}"
    );
    let main = &v["threads"][0];
    let syms = symbols(main);
    assert_eq!(main["truncated"], false, "{name}: {syms:?}");
    if ends_at_start {
        assert_eq!(syms.last().map(String::as_str), Some("_start"), "{syms:?}");
    }
    for want in ["__libc_start_main", must_contain] {
        assert!(syms.iter().any(|s| s == want), "{name}: {want} in {syms:?}");
    }
    compare(&core, &v, true, |_| true);
    let _ = std::fs::remove_dir_all(core.parent().unwrap());
}

#[test]
fn debian_sleep_core_reaches_start_by_default() {
    if !tools_present("/bin/sleep") {
        return;
    }
    // Stripped: main and _start have no name; eu-stack's pcs to the end are the reference.
    check_c_like("sleep", "/bin/sleep 100", "nanosleep", false);
}

#[test]
fn debian_python3_core_reaches_start_by_default() {
    if !tools_present("/usr/bin/python3") {
        return;
    }
    check_c_like(
        "python3",
        "/usr/bin/python3 -c 'import time; time.sleep(100)'",
        "Py_BytesMain",
        true,
    );
}

#[test]
fn debian_gofmt_core_goes_at_least_as_far_as_eu_stack() {
    let gofmt = gofmt();
    if !tools_present(&gofmt) {
        return;
    }
    // gofmt reads its stdin (kept open) until the abort.
    let core = make_core("gofmt", &gofmt, Duration::from_millis(800));
    let (v, err) = unwind(&core);
    // gofmt is stripped: no symbols, no CFI. The only warning allowed is about that module
    // (the walk needed it); none about data mappings.
    for line in err.lines() {
        assert!(line.contains(&gofmt), "unexpected warning: {line}");
    }
    // gofmt is static, linked at 0x400000: eu-stack's last "frame" after it lost the chain
    // (a stack address, 0x7ff…) is not code.
    compare(&core, &v, false, |pc| (0x40_0000..0x100_0000).contains(&pc));
    let _ = std::fs::remove_dir_all(core.parent().unwrap());
}

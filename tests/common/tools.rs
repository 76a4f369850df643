//! External tools the integration tests drive (go, gdb, eu-stack, gcc) and the scratch
//! directories they write into.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Does `tool arg` run and succeed? (A check only: see [`need`] to skip or fail.)
pub fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// [`have`], and when the tool is missing a [`super::skip::skip`] (a failure under CI, where
/// `.ci/run` installs every tool).
#[track_caller]
pub fn need(tool: &str, arg: &str) -> bool {
    let ok = have(tool, arg);
    if !ok {
        super::skip::skip(&format!("`{tool} {arg}` does not run"));
    }
    ok
}

/// A scratch directory, removed with everything in it when dropped (cores of Go programs are
/// hundreds of megabytes: never leave one behind).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh, empty `DIR/unwind-{name}-{pid}` under the system's temporary directory.
    pub fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("unwind-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `go tool pprof ARGS FILE`'s output (the real profile reader); panics when it fails.
pub fn go_pprof(args: &[&str], file: &Path) -> String {
    let out = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .arg(file)
        .env("PPROF_TMPDIR", std::env::temp_dir())
        .output()
        .expect("running `go tool pprof` (install golang-go)");
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `eu-stack --core CORE [-e EXE]` (elfutils, the reference unwinder), parsed: each thread's
/// tid and frame pcs in order. `None` when it cannot run or prints something unexpected.
pub fn eu_stack(core: &Path, exe: Option<&Path>) -> Option<Vec<(u64, Vec<u64>)>> {
    let mut cmd = Command::new("eu-stack");
    cmd.arg("--core").arg(core);
    if let Some(exe) = exe {
        cmd.arg("-e").arg(exe);
    }
    let out = cmd.output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut threads: Vec<(u64, Vec<u64>)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("TID ") {
            threads.push((rest.trim_end_matches(':').parse().ok()?, Vec::new()));
        } else if let Some(rest) = line.strip_prefix('#') {
            let addr = rest.split_whitespace().nth(1)?;
            let pc = u64::from_str_radix(addr.trim_start_matches("0x"), 16).ok()?;
            threads.last_mut()?.1.push(pc);
        }
    }
    Some(threads)
}

/// Does `got` (names, leaf first) hold `want` in order, consecutively?
pub fn has_run(got: &[String], want: &[&str]) -> bool {
    got.windows(want.len())
        .any(|w| w.iter().zip(want).all(|(a, b)| a == b))
}

/// Does the kernel write cores as `core` files in the crashing process's directory
/// (`/proc/sys/kernel/core_pattern` is `core`, as `.ci/run` sets it)? A check only.
pub fn kernel_cores() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/core_pattern").is_ok_and(|p| p.trim() == "core")
}

/// [`kernel_cores`], and a [`super::skip::skip`] when not (a failure under CI).
#[track_caller]
pub fn need_kernel_cores() -> bool {
    let ok = kernel_cores();
    if !ok {
        super::skip::skip(
            "core_pattern is not `core` (run `echo core > /proc/sys/kernel/core_pattern` as root)",
        );
    }
    ok
}

/// Builds the Go fixture `fixtures/go/NAME/main.go` into `DIR/NAME` (cgo on, GOPATH mode, the
/// build cache in `dir`) and returns the executable; panics with go's output when it fails.
pub fn build_go(dir: &Path, name: &str) -> PathBuf {
    build_go_linked(dir, name, "")
}

/// [`build_go`] with `ldflags` for Go's linker when not empty (`-s -w`: a stripped binary).
pub fn build_go_linked(dir: &Path, name: &str, ldflags: &str) -> PathBuf {
    build_go_mode(dir, name, ldflags, "")
}

/// [`build_go_linked`] with `-buildmode=MODE` when `buildmode` is not empty (`pie`).
pub fn build_go_mode(dir: &Path, name: &str, ldflags: &str, buildmode: &str) -> PathBuf {
    let exe = dir.join(name);
    let flags: Vec<String> = [
        (!ldflags.is_empty()).then(|| format!("-ldflags={ldflags}")),
        (!buildmode.is_empty()).then(|| format!("-buildmode={buildmode}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    go_build(
        dir,
        &fixture_go(name),
        &exe,
        &flags,
        &[("CGO_ENABLED", "1")],
    );
    exe
}

/// `fixtures/go/NAME/main.go`.
pub fn fixture_go(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/go/{name}/main.go"))
}

/// `go build FLAGS -o EXE SRC` in GOPATH mode, the build cache in `dir`, with `env` besides;
/// panics with go's output when it fails.
pub fn go_build(dir: &Path, src: &Path, exe: &Path, flags: &[String], env: &[(&str, &str)]) {
    let out = Command::new("go")
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(exe)
        .arg(src)
        .env("GOPATH", dir.join("gopath"))
        .env("GOCACHE", dir.join("gocache"))
        .env("GO111MODULE", "off")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go build {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs this test binary again for test `name` alone (`--exact`, one thread, output shown),
/// with `var=name` in its environment, through `wrap` (a command and its arguments before
/// the binary: `unshare --pid --fork`; none: directly). `None` in that child (`var` is `name`
/// there: the caller runs the test's body); else the child's standard output and error, once
/// it passed and ran the test.
#[allow(dead_code)]
pub fn child_output(var: &str, name: &str, wrap: &[&str]) -> Option<String> {
    if std::env::var(var).as_deref() == Ok(name) {
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = std::process::Command::new(first);
            c.args(rest).arg(&exe);
            c
        }
        None => std::process::Command::new(&exe),
    };
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(var, name);
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "child {name} failed ({}): {text}",
        out.status
    );
    assert!(
        text.contains("1 passed"),
        "child {name} did not run: {text}"
    );
    Some(text)
}

/// Where glibc's libm is; panics when it is not found.
#[allow(dead_code)]
pub fn libm_path() -> &'static str {
    [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
        "/usr/lib/libm.so.6",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libm.so.6 (glibc) not found")
}

/// Loads a copy of glibc's libm from `path` (a file name new to this process, so the loader
/// maps it afresh) and deletes the file (so its CFI can only come from memory). Returns the
/// `dlopen` handle; panics when libm is not found or does not load.
pub fn dlopen_libm_copy(path: &Path) -> *mut libc::c_void {
    std::fs::copy(libm_path(), path).unwrap();
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: loads a copy of libm (no constructors with effects); the caller closes it or not.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!h.is_null(), "dlopen {path:?}");
    std::fs::remove_file(path).unwrap();
    h
}

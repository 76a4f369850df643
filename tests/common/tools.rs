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

//! The statically linked command-line tool (`cargo static-cli`, see `.cargo/config.toml`):
//! it is built, has no program interpreter, and prints exactly what the ordinary binary prints
//! for every committed core, for a fresh kernel core when one can be made here, and for a
//! live process (`--pid`). And what the ordinary binary loads at start.

mod common;
use common::tools::{need, need_kernel_cores};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_unwind");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the static binary with the alias README documents; its path.
fn static_cli() -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .arg("static-cli")
        .current_dir(root())
        .env_remove("CARGO_TARGET_DIR")
        .stdout(Stdio::null())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo static-cli: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    root().join("target/static/release/unwind")
}

/// Does the 64-bit little-endian ELF file `bytes` have a `PT_INTERP` program header (does it
/// start through a dynamic loader)? Bounds-checked by hand: the test needs no ELF crate.
fn has_interpreter(bytes: &[u8]) -> bool {
    assert_eq!(&bytes[..5], b"\x7fELF\x02", "a 64-bit ELF file");
    let u = |at: usize, n: usize| {
        let mut w = [0u8; 8];
        w[..n].copy_from_slice(&bytes[at..at + n]);
        u64::from_le_bytes(w) as usize
    };
    let (off, size, count) = (u(0x20, 8), u(0x36, 2), u(0x38, 2));
    (0..count).any(|i| u(off + i * size, 4) == 3)
}

fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().expect("run unwind")
}

/// Both binaries, the same arguments: the same exit status, output and warnings.
fn same(stat: &Path, args: &[&str]) {
    let (a, b) = (run(Path::new(BIN), args), run(stat, args));
    assert_eq!(a.status.code(), b.status.code(), "{args:?}");
    assert!(
        !a.stdout.is_empty() || !a.stderr.is_empty(),
        "{args:?}: no output"
    );
    assert_eq!(
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout),
        "{args:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr),
        "{args:?}"
    );
}

#[test]
fn the_static_binary_prints_what_the_dynamic_one_prints() {
    let stat = static_cli();
    let bytes = std::fs::read(&stat).unwrap();
    assert!(
        !has_interpreter(&bytes),
        "{} needs a loader",
        stat.display()
    );
    assert!(has_interpreter(&std::fs::read(BIN).unwrap()));

    let dir = std::env::temp_dir().join(format!("unwind-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cores = root().join("fixtures/cores");
    let mut names: Vec<String> = std::fs::read_dir(&cores)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".gz"))
        .collect();
    names.sort();
    assert!(names.len() >= 5, "{names:?}");
    for name in &names {
        use std::io::Read;
        let mut core = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(cores.join(name)).unwrap())
            .read_to_end(&mut core)
            .unwrap();
        let path = dir.join(name.trim_end_matches(".gz"));
        std::fs::write(&path, core).unwrap();
        let arch = if name.contains("aarch64") {
            "aarch64"
        } else {
            "x86_64"
        };
        let exe = cores.join(format!("chain-{arch}"));
        let (c, e) = (path.to_str().unwrap(), exe.to_str().unwrap());
        same(&stat, &["stack", "--core", c, "--exe", e]);
        same(
            &stat,
            &["stack", "--core", c, "--exe", e, "--format", "json"],
        );
        same(&stat, &["stack", "--core", c, "--exe", e, "--mode", "fp"]);
    }
    // Bad input: the same one-line error and exit status 2.
    same(&stat, &["stack", "--core", "/nonexistent/core"]);
    let _ = std::fs::remove_dir_all(&dir);

    // A live process blocked in a system call: the same frames, both times.
    let mut child = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("start sleep");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = child.id().to_string();
    let args = ["stack", "--pid", &pid, "--format", "json"];
    // The same JSON but for how long the process was held (`paused_us`).
    let frames = |bin: &Path| {
        let out = run(bin, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["paused_us"].is_u64());
        v.as_object_mut().unwrap().remove("paused_us");
        v
    };
    let want = frames(Path::new(BIN));
    assert!(want["threads"][0]["frames"].as_array().unwrap().len() >= 3);
    assert_eq!(frames(&stat), want);
    let _ = child.kill();
    let _ = child.wait();
}

/// A fresh kernel core of a 65-thread C program (the `unwind stack` benchmark's core), when
/// gcc is here and core_pattern is `core`.
#[test]
fn the_static_binary_walks_a_fresh_threaded_core_alike() {
    if !need("gcc", "--version") || !need_kernel_cores() {
        return;
    }
    let stat = static_cli();
    let dir = std::env::temp_dir().join(format!("unwind-static-fresh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("bash")
        .arg(root().join("fixtures/c/make-core.sh"))
        .args(["x86_64", "threads64"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let core = String::from_utf8(out.stdout).unwrap();
    let core = core.lines().last().unwrap().trim();
    same(&stat, &["stack", "--core", core]);
    same(
        &stat,
        &["stack", "--core", core, "--format", "json", "--lines"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The ordinary binary needs no libm (its one use, `expm1` in the heap profiler's sample
/// weights, is computed in the crate: loading libm cost every run ~70 us) and no libgcc_s (the
/// unwinder std calls is linked in from libgcc_eh: loading libgcc_s cost ~150 us), only libc
/// and the loader.
#[test]
fn the_ordinary_binary_loads_only_libc() {
    if !need("readelf", "--version") {
        return;
    }
    let out = Command::new("readelf").args(["-d", BIN]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    assert!(
        needed.iter().any(|n| n.starts_with("libc.so")),
        "{needed:?}"
    );
    assert!(
        !needed.iter().any(|n| n.starts_with("libm.so")),
        "{needed:?}"
    );
    assert!(
        !needed.iter().any(|n| n.starts_with("libgcc_s.so")),
        "{needed:?}"
    );
}

/// The crate's large tables (the CPU profiler's 2 MiB ring, the heap profiler's maps) start as
/// zeros, so they take no room in a program that links them: `.data` (stored in the file) had
/// the ring, 2 MiB of every binary with the profilers, because one of its fields started at 1.
/// (The registry's two tables, 64 and 100 KiB, start with their filter's entry 0 set, and are
/// stored: under the 256 KiB this test allows.)
#[test]
fn the_crate_s_tables_are_not_stored_in_the_binary() {
    use object::{Object, ObjectSection, ObjectSymbol, SectionKind};
    let bytes = std::fs::read(BIN).unwrap();
    let file = object::File::parse(&*bytes).unwrap();
    let mut zeroed = 0;
    for sym in file.symbols() {
        let Some(section) = sym
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
        else {
            continue;
        };
        let name = sym.name().unwrap_or("");
        if !name.contains("unwind") || sym.size() < 256 * 1024 {
            continue;
        }
        match section.kind() {
            SectionKind::UninitializedData => zeroed += 1,
            SectionKind::Data => panic!(
                "{name}: {} bytes stored in {} (start it as zeros)",
                sym.size(),
                section.name().unwrap_or("?")
            ),
            _ => {}
        }
    }
    // The ring, the heap profiler's index and map at least.
    assert!(zeroed >= 3, "{zeroed} large zeroed tables found");
}

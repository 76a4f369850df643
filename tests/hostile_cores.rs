//! `unwind stack` on hostile cores: the committed cores (fixtures/cores/*.gz) with the paths they
//! name rewritten (`NT_FILE` rebuilt; `AT_EXECFN` and link-map strings overwritten in place) to
//! `/dev/zero`, a FIFO, `/proc` and `/sys` files, many spellings of one file, tens of thousands
//! of entries; `--exe` and `--core` naming the same; truncated cores; a hand-made core whose
//! stack sits at the top of the address space.
//!
//! Every run is bounded: killed after 5 s or above 256 MB resident (a hang or a runaway read
//! fails the test instead of hanging CI or the machine), and its peak memory (`wait4`'s `ru_maxrss`) must stay under 256 MB. `ru_maxrss` is an upper bound on
//! the child's own peak: at `exec` the kernel carries over the high-water mark of the memory the
//! child was spawned from (this test process, tens of MB), so the check can only over-report. Each must exit 0 (frames, and
//! warnings on stderr) or 2 (one line on stderr), and never panic. No external tool is needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_unwind");
const TIME_LIMIT: Duration = Duration::from_secs(5);
const MEMORY_LIMIT_KB: i64 = 256 * 1024;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A fresh, short-named temporary directory (paths written into cores must fit in place).
fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(format!("/tmp/uh{}{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The bytes of committed core `name` (without `.gz`).
fn core_bytes(name: &str) -> Vec<u8> {
    use std::io::Read;
    let gz = std::fs::File::open(fixtures().join("cores").join(format!("{name}.gz"))).unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

fn exe(arch: &str) -> PathBuf {
    fixtures().join("cores").join(format!("chain-{arch}"))
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

// ---- ELF core surgery ----

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// (offset of the program header, p_type, p_offset, p_filesz) for each program header.
fn phdrs(core: &[u8]) -> Vec<(usize, u32, u64, u64)> {
    let phoff = u64_at(core, 0x20) as usize;
    let (phentsize, phnum) = (u16_at(core, 0x36) as usize, u16_at(core, 0x38) as usize);
    (0..phnum)
        .map(|i| {
            let at = phoff + i * phentsize;
            (
                at,
                u32_at(core, at),
                u64_at(core, at + 8),
                u64_at(core, at + 32),
            )
        })
        .collect()
}

const PT_NOTE: u32 = 4;
const NT_FILE: u32 = 0x4649_4c45;

/// A note: (name, type, desc).
type Note = (Vec<u8>, u32, Vec<u8>);

fn notes(core: &[u8]) -> Vec<Note> {
    let (_, _, off, size) = *phdrs(core).iter().find(|p| p.1 == PT_NOTE).unwrap();
    let (mut at, end) = (off as usize, (off + size) as usize);
    let align = |x: usize| (x + 3) & !3;
    let mut out = Vec::new();
    while at + 12 <= end {
        let (namesz, descsz, ty) = (
            u32_at(core, at) as usize,
            u32_at(core, at + 4) as usize,
            u32_at(core, at + 8),
        );
        let name = core[at + 12..at + 12 + namesz].to_vec();
        let d = align(at + 12 + namesz);
        out.push((name, ty, core[d..d + descsz].to_vec()));
        at = align(d + descsz);
    }
    out
}

/// The core with its notes replaced: written at the end of the file, the `PT_NOTE` header
/// pointed there. Segments keep their offsets.
fn with_notes(core: &[u8], notes: &[Note]) -> Vec<u8> {
    let mut out = core.to_vec();
    out.resize(out.len().next_multiple_of(8), 0);
    let start = out.len();
    for (name, ty, desc) in notes {
        out.extend((name.len() as u32).to_le_bytes());
        out.extend((desc.len() as u32).to_le_bytes());
        out.extend(ty.to_le_bytes());
        out.extend(name);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend(desc);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    let size = (out.len() - start) as u64;
    let (at, ..) = *phdrs(core).iter().find(|p| p.1 == PT_NOTE).unwrap();
    out[at + 8..at + 16].copy_from_slice(&(start as u64).to_le_bytes());
    out[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
    out
}

/// `NT_FILE` entries: ((start, end, page offset), path).
type FileEntry = ((u64, u64, u64), String);

fn nt_file(core: &[u8]) -> Vec<FileEntry> {
    let n = notes(core);
    let (_, _, d) = n.iter().find(|n| n.1 == NT_FILE).expect("NT_FILE");
    let count = u64_at(d, 0) as usize;
    let mut names = d[16 + 24 * count..].split(|&b| b == 0);
    (0..count)
        .map(|i| {
            let at = 16 + 24 * i;
            let name = String::from_utf8(names.next().unwrap().to_vec()).unwrap();
            ((u64_at(d, at), u64_at(d, at + 8), u64_at(d, at + 16)), name)
        })
        .collect()
}

/// The core with its `NT_FILE` note replaced by `entries`.
fn with_nt_file(core: &[u8], entries: &[FileEntry]) -> Vec<u8> {
    let mut desc = Vec::new();
    desc.extend((entries.len() as u64).to_le_bytes());
    desc.extend(4096u64.to_le_bytes());
    for ((lo, hi, pg), _) in entries {
        for v in [lo, hi, pg] {
            desc.extend(v.to_le_bytes());
        }
    }
    for (_, p) in entries {
        desc.extend(p.as_bytes());
        desc.push(0);
    }
    let n: Vec<Note> = notes(core)
        .into_iter()
        .map(|(name, ty, d)| {
            if ty == NT_FILE {
                (name, ty, desc.clone())
            } else {
                (name, ty, d)
            }
        })
        .collect();
    with_notes(core, &n)
}

/// The core with every `NT_FILE` path replaced by `f(path)`.
fn rename_files(core: &[u8], f: impl Fn(&str) -> String) -> Vec<u8> {
    let e: Vec<FileEntry> = nt_file(core).into_iter().map(|(r, p)| (r, f(&p))).collect();
    with_nt_file(core, &e)
}

/// Overwrites, in place, every occurrence of `from` (followed by a NUL) with `to`, padded to
/// the same length with leading slashes (`//dev/zero` is `/dev/zero`). Returns how many.
fn overwrite_string(core: &mut [u8], from: &str, to: &str) -> usize {
    assert!(to.len() <= from.len(), "{to} is longer than {from}");
    let padded = format!("{}{to}", "/".repeat(from.len() - to.len()));
    let mut pat = from.as_bytes().to_vec();
    pat.push(0);
    let mut n = 0;
    let mut i = 0;
    while i + pat.len() <= core.len() {
        if core[i..i + pat.len()] == pat[..] {
            core[i..i + from.len()].copy_from_slice(padded.as_bytes());
            n += 1;
            i += pat.len();
        } else {
            i += 1;
        }
    }
    n
}

// ---- bounded runs ----

/// What one bounded run of `unwind` did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    max_rss_kb: i64,
}

/// `VmRSS` of a running process, in KB (0 when unknown).
fn resident_kb(pid: libc::pid_t) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `unwind ARGS`, killed after [`TIME_LIMIT`] or when its resident memory passes the
/// limit; checks peak memory, exit status and stderr (no panic; one line when it exits 2).
fn run(dir: &Path, args: &[&str]) -> Run {
    let out = dir.join("stdout");
    let err = dir.join("stderr");
    let t0 = Instant::now();
    // Reaped below by wait4 (for its rusage), not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("run unwind");
    let pid = child.id() as libc::pid_t;
    let (status, ru) = loop {
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 writes it and the status for our own child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pointers to live locals; `pid` is our child, not yet reaped.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break (status, ru);
        }
        assert_eq!(r, 0, "wait4: {}", std::io::Error::last_os_error());
        let rss = resident_kb(pid);
        if t0.elapsed() > TIME_LIMIT || rss > MEMORY_LIMIT_KB {
            // SAFETY: our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: as above; reap it.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            panic!(
                "unwind {args:?} killed after {:?} at {rss} KB resident (limits: \
                 {TIME_LIMIT:?}, {MEMORY_LIMIT_KB} KB); stderr: {}",
                t0.elapsed(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = t0.elapsed();
    let r = Run {
        code: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -libc::WTERMSIG(status)
        },
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
        elapsed,
        max_rss_kb: ru.ru_maxrss,
    };
    assert!(
        r.max_rss_kb <= MEMORY_LIMIT_KB,
        "unwind {args:?}: peak memory {} KB over {MEMORY_LIMIT_KB} KB",
        r.max_rss_kb
    );
    assert!(
        !r.stderr.contains("panicked"),
        "unwind {args:?} panicked: {}",
        r.stderr
    );
    // Each message is one line of ours, with no terminal escapes from a core's paths.
    assert!(
        r.stderr.lines().all(|l| l.starts_with("unwind: ")) && !r.stderr.contains('\x1b'),
        "{args:?}: {}",
        r.stderr
    );
    match r.code {
        0 => assert!(r.stdout.starts_with("arch "), "{args:?}: {r:?}"),
        2 => assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr),
        c => panic!("unwind {args:?} exited {c}: {}", r.stderr),
    }
    eprintln!(
        "unwind {:?}: exit {} in {:?}, peak {} KB",
        &args[..args.len().min(4)],
        r.code,
        r.elapsed,
        r.max_rss_kb
    );
    r
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The threads' leaf-first symbol lists in text output (`  #N 0x… name+off …`).
fn has_chain(stdout: &str) -> bool {
    ["gamma_", "beta_", "alpha_", "main"]
        .iter()
        .all(|f| stdout.contains(&format!(" {f}+")))
}

const MODES: [&str; 3] = ["fp", "dwarf", "hybrid"];

/// `unwind stack --core CORE --exe <the x86_64 fixture> --mode MODE`, run in `dir`.
fn stack_core(dir: &Path, core: &Path, mode: &str) -> Run {
    run(
        dir,
        &[
            "stack",
            "--core",
            s(core),
            "--exe",
            s(&exe("x86_64")),
            "--mode",
            mode,
        ],
    )
}

// ---- NT_FILE naming things that are not modules ----

/// Paths that must never be read as modules, each in several spellings.
fn hostile_paths(fifo: &Path) -> Vec<String> {
    vec![
        "/dev/zero".into(),
        "/dev/urandom".into(),
        "//dev/./zero".into(),
        s(fifo).into(),
        "/proc/self/pagemap".into(),
        "//proc/./self/../self/pagemap".into(),
        "/usr/../proc/kcore".into(),
        "/proc/self/mem".into(),
        "/proc/self/exe".into(),
        "/sys/kernel/notes".into(),
        "/sys/firmware/../kernel/notes".into(),
        // A name that would break a warning into lines and colour the terminal.
        "/no/such\nfake line\x1b[31m".into(),
    ]
}

#[test]
fn nt_file_naming_devices_fifos_and_proc_files() {
    let d = tmp("nt");
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let base = core_bytes("core-x86_64-chain");
    for bad in hostile_paths(&fifo) {
        // Every mapped file, the executable included, renamed to the hostile path.
        let c = write(&d, "core", &rename_files(&base, |_| bad.clone()));
        for mode in MODES {
            let r = run(&d, &["stack", "--core", s(&c), "--mode", mode]);
            assert_eq!(r.code, 0, "{bad} {mode}: {r:?}");
            assert!(r.stdout.contains("thread "), "{bad}: frames shown");
            assert!(
                r.stderr.contains("warning: module") && r.stderr.contains("not available"),
                "{bad} {mode}: a one-line warning: {}",
                r.stderr
            );
        }
        // With the executable given, the chain is symbolised despite the hostile note.
        let r = stack_core(&d, &c, "hybrid");
        assert!(has_chain(&r.stdout), "{bad}: {}", r.stdout);
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn exe_and_sysroot_naming_devices_fifos_and_proc_files() {
    let d = tmp("exe");
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let x86 = write(&d, "core-x86", &core_bytes("core-x86_64-chain"));
    let a64 = write(&d, "core-a64", &core_bytes("core-aarch64-chain"));
    for bad in hostile_paths(&fifo) {
        for core in [&x86, &a64] {
            for mode in MODES {
                let r = run(
                    &d,
                    &["stack", "--core", s(core), "--exe", &bad, "--mode", mode],
                );
                // Refused as a module (exit 0, a warning), or not there at all or not a
                // regular file (exit 2).
                match r.code {
                    0 => assert!(r.stderr.contains("not available"), "{bad}: {}", r.stderr),
                    _ => assert!(
                        r.stderr.contains("no such file")
                            || r.stderr.contains("not a regular file"),
                        "{bad}: {}",
                        r.stderr
                    ),
                }
            }
        }
    }
    // A sysroot whose files are a FIFO and a link to /proc/self/pagemap.
    let root = d.join("root");
    std::fs::create_dir_all(root.join("tmp/unwind-fixtures")).unwrap();
    std::fs::create_dir_all(root.join("lib/aarch64-linux-gnu")).unwrap();
    mkfifo(&root.join("tmp/unwind-fixtures/chain-aarch64"));
    std::os::unix::fs::symlink(
        "/proc/self/pagemap",
        root.join("lib/aarch64-linux-gnu/libc.so.6"),
    )
    .unwrap();
    for mode in MODES {
        let r = run(
            &d,
            &[
                "stack",
                "--core",
                s(&a64),
                "--sysroot",
                s(&root),
                "--mode",
                mode,
            ],
        );
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn core_naming_devices_fifos_and_proc_files() {
    let d = tmp("core");
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    for bad in hostile_paths(&fifo) {
        let r = run(&d, &["stack", "--core", &bad]);
        assert_eq!(r.code, 2, "--core {bad}: {r:?}");
    }
    let empty = write(&d, "empty", b"");
    assert_eq!(run(&d, &["stack", "--core", s(&empty)]).code, 2);
    let _ = std::fs::remove_dir_all(&d);
}

/// qemu-user cores name their files in memory: the auxv's `AT_EXECFN` string and the dynamic
/// linker's link map. Overwritten in place with hostile paths.
#[test]
fn execfn_and_link_map_naming_devices_fifos_and_proc_files() {
    let d = tmp("qemu");
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let base = core_bytes("core-aarch64-chain");
    let exe_name = "/tmp/unwind-fixtures/chain-aarch64";
    let libc_name = "/lib/aarch64-linux-gnu/libc.so.6";
    for bad in hostile_paths(&fifo) {
        if bad.len() > libc_name.len() {
            continue;
        }
        let mut c = base.clone();
        assert!(overwrite_string(&mut c, exe_name, &bad) >= 1);
        assert!(overwrite_string(&mut c, libc_name, &bad) >= 1);
        let c = write(&d, "core", &c);
        for mode in MODES {
            let r = run(&d, &["stack", "--core", s(&c), "--mode", mode]);
            assert_eq!(r.code, 0, "{bad} {mode}: {r:?}");
            assert!(r.stdout.contains("thread "), "{bad}: frames shown");
        }
    }
    // The real executable named in AT_EXECFN, a hostile link map: the chain is still symbolised.
    let real = exe("aarch64");
    let mut c = base.clone();
    assert!(overwrite_string(&mut c, libc_name, "/dev/zero") >= 1);
    let c = write(&d, "core2", &c);
    let r = run(
        &d,
        &["stack", "--core", s(&c), "--exe", s(&real), "--mode", "fp"],
    );
    assert!(has_chain(&r.stdout), "{}", r.stdout);
    let _ = std::fs::remove_dir_all(&d);
}

// ---- bounded work ----

/// `n` spellings of absolute path `real`: `//x`, `/./x`, `/tmp/../x` mixes.
fn spellings(real: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 3 {
            0 => format!("{}{real}", "/".repeat(i / 3 % 50 + 1)),
            1 => format!("{}{real}", "/.".repeat(i / 3 % 50 + 1)),
            _ => format!("/tmp/..{}{real}", "/.".repeat(i / 3 % 50)),
        })
        .collect()
}

/// One file under many names (by device and inode) is loaded once.
#[test]
fn many_spellings_of_one_file_load_it_once() {
    let test_exe = std::env::current_exe().unwrap();
    let mappings: Vec<unwind::core_file::Mapping> = spellings(s(&test_exe), 300)
        .into_iter()
        .map(|path| unwind::core_file::Mapping {
            range: unwind::Range::new(0x10_0000_0000, 0x10_0010_0000),
            offset: 0,
            path,
        })
        .collect();
    let sym = unwind::symbols::Symbolizer::from_mappings(&mappings, None);
    assert_eq!(sym.modules().len(), 1, "{:?}", sym.missing);
    assert!(sym.missing.is_empty(), "{:?}", sym.missing);

    // Through `unwind stack`: 2,000 spellings of the executable, and 1,000 of this (large)
    // test binary mapped elsewhere: each file is parsed once.
    let d = tmp("spell");
    let base = core_bytes("core-x86_64-chain");
    let real = std::fs::canonicalize(exe("x86_64")).unwrap();
    let exe_entries: Vec<FileEntry> = nt_file(&base)
        .into_iter()
        .filter(|(_, p)| p.ends_with("chain-x86_64"))
        .collect();
    assert!(!exe_entries.is_empty());
    let mut many = Vec::new();
    for spelled in spellings(s(&real), 2000) {
        for (r, _) in &exe_entries {
            many.push((*r, spelled.clone()));
        }
    }
    for spelled in spellings(s(&test_exe), 1000) {
        many.push(((0x10_0000_0000, 0x10_0010_0000, 0), spelled));
    }
    let c = write(&d, "core", &with_nt_file(&base, &many));
    for mode in MODES {
        let r = run(&d, &["stack", "--core", s(&c), "--mode", mode]);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(has_chain(&r.stdout), "{mode}: {}", r.stdout);
        assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// 50,000 distinct paths (nonexistent, and /proc files): bounded, one warning per file tried
/// up to the module limit, then one line for the rest.
#[test]
fn tens_of_thousands_of_nt_file_entries() {
    let d = tmp("many");
    let base = core_bytes("core-x86_64-chain");
    let mut entries = nt_file(&base);
    for i in 0..50_000u64 {
        let lo = 0x1_0000_0000 + i * 0x1000;
        let p = if i % 2 == 0 {
            format!("/nonexistent/lib{i}.so")
        } else {
            format!("/proc/{i}/pagemap")
        };
        entries.push(((lo, lo + 0x1000, 0), p));
    }
    let c = write(&d, "core", &with_nt_file(&base, &entries));
    for mode in MODES {
        let r = stack_core(&d, &c, mode);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(has_chain(&r.stdout), "{mode}: {}", r.stdout);
        let warnings = r.stderr.lines().count();
        assert!(
            warnings <= unwind::symbols::MAX_MODULES + 8,
            "{warnings} warning lines"
        );
        assert!(r.stderr.contains("over the limit of"), "{}", r.stderr);
    }
    let _ = std::fs::remove_dir_all(&d);
}

// ---- truncated cores ----

#[test]
fn truncated_core_says_so_and_shows_what_it_can() {
    let d = tmp("trunc");
    let base = core_bytes("core-x86_64-chain");
    let full = base.len();
    // Cut in the middle of the last segment's bytes (the stack is before it).
    let (_, _, off, size) = *phdrs(&base)
        .iter()
        .filter(|p| p.1 == 1 && p.3 > 0)
        .max_by_key(|p| p.2)
        .unwrap();
    assert_eq!(
        (off + size) as usize,
        full,
        "the last segment ends the file"
    );
    let cut = (off + size / 2) as usize;
    let c = write(&d, "core", &base[..cut]);
    for mode in MODES {
        let r = stack_core(&d, &c, mode);
        assert_eq!(r.code, 0, "{r:?}");
        let want = format!("core file is truncated: {cut} of {full} bytes");
        assert!(r.stderr.contains(&want), "{mode}: {}", r.stderr);
        assert!(has_chain(&r.stdout), "{mode}: {}", r.stdout);
    }
    // Cut inside the notes: nothing to unwind, one line that says why.
    let (_, _, noff, _) = *phdrs(&base).iter().find(|p| p.1 == PT_NOTE).unwrap();
    let cut = noff as usize + 100;
    let c = write(&d, "core2", &base[..cut]);
    let r = run(&d, &["stack", "--core", s(&c)]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "core file is truncated: {cut} of at least {full} bytes"
        )),
        "{}",
        r.stderr
    );
    // Every cut of the threads core (every 4 KiB) ends cleanly.
    let threads = core_bytes("core-x86_64-threads");
    for cut in (0..threads.len()).step_by(threads.len() / 24) {
        let c = write(&d, "core3", &threads[..cut]);
        run(&d, &["stack", "--core", s(&c), "--mode", "hybrid"]);
    }
    let _ = std::fs::remove_dir_all(&d);
}

// ---- a hand-made core: the stack at the top of the address space ----

/// A minimal x86_64 core: one thread (rip, rsp, rbp) and the given (vaddr, flags, bytes)
/// segments.
fn tiny_core(rip: u64, rsp: u64, rbp: u64, segments: &[(u64, u32, Vec<u8>)]) -> Vec<u8> {
    tiny_core_threads(rip, rsp, rbp, 1, segments)
}

/// [`tiny_core`] with `threads` threads, all with the same registers.
fn tiny_core_threads(
    rip: u64,
    rsp: u64,
    rbp: u64,
    threads: u32,
    segments: &[(u64, u32, Vec<u8>)],
) -> Vec<u8> {
    let phnum = 1 + segments.len();
    let mut note = Vec::new();
    for tid in 0..threads {
        let mut prstatus = vec![0u8; 336];
        prstatus[32..36].copy_from_slice(&(tid + 1).to_le_bytes()); // pr_pid
        for (i, v) in [(4, rbp), (16, rip), (19, rsp)] {
            let at = 0x70 + 8 * i;
            prstatus[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        note.extend(5u32.to_le_bytes());
        note.extend((prstatus.len() as u32).to_le_bytes());
        note.extend(1u32.to_le_bytes()); // NT_PRSTATUS
        note.extend(b"CORE\0\0\0\0");
        note.extend(&prstatus);
    }
    let note_off = 64 + 56 * phnum;
    let mut data_off = note_off + note.len();
    let mut out = vec![0u8; 64];
    out[..16].copy_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    out[16..18].copy_from_slice(&4u16.to_le_bytes()); // ET_CORE
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    out[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    out[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    out[0x38..0x3a].copy_from_slice(&(phnum as u16).to_le_bytes());
    let mut ph = |ty: u32, flags: u32, off: usize, vaddr: u64, size: usize| {
        for v in [ty, flags] {
            out.extend(v.to_le_bytes());
        }
        for v in [off as u64, vaddr, 0, size as u64, size as u64, 1] {
            out.extend(v.to_le_bytes());
        }
    };
    ph(PT_NOTE, 0, note_off, 0, note.len());
    for (vaddr, flags, bytes) in segments {
        ph(1, *flags, data_off, *vaddr, bytes.len());
        data_off += bytes.len();
    }
    out.extend(&note);
    for (_, _, bytes) in segments {
        out.extend(bytes);
    }
    out
}

/// A thread stopped on a `push %rbp` whose stack pointer is the last word of the address
/// space: the prologue step's caller sp (`rsp + 8`) does not exist.
#[test]
fn prologue_at_the_top_of_the_address_space() {
    let d = tmp("top");
    let mut code = vec![0x90u8; 64];
    code[0] = 0x55; // push %rbp
    let mut stack = vec![0u8; 0x1000];
    stack[0xff8..].copy_from_slice(&0x40_0010u64.to_le_bytes());
    let c = tiny_core(
        0x40_0000,
        u64::MAX - 7,
        0,
        &[(0x40_0000, 5, code), (u64::MAX - 0xfff, 6, stack)],
    );
    let c = write(&d, "core", &c);
    for mode in MODES {
        let r = run(&d, &["stack", "--core", s(&c), "--mode", mode]);
        assert_eq!(r.code, 0, "{mode}: {r:?}");
        assert!(r.stdout.contains("0x0000000000400000"), "{}", r.stdout);
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// `dwarf::parse_file` (the live modules' CFI from their files) neither blocks on a FIFO nor
/// reads a device.
#[test]
fn cfi_from_a_fifo_or_a_device_is_an_error() {
    let d = tmp("cfi");
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let (tx, rx) = std::sync::mpsc::channel();
    let f = fifo.clone();
    std::thread::spawn(move || {
        let r = unwind::dwarf::parse_file(unwind::ArchKind::X86_64, &f, 0);
        let _ = tx.send(r.is_err());
    });
    assert_eq!(rx.recv_timeout(TIME_LIMIT), Ok(true), "a FIFO blocked");
    for p in ["/dev/zero", "/dev/null"] {
        assert!(unwind::dwarf::parse_file(unwind::ArchKind::X86_64, Path::new(p), 0).is_err());
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// 20,000 threads sharing one stack of 1,000 frame records: the frames kept over all threads are
/// bounded (without a budget: 20 million frames, gigabytes of output).
#[test]
fn many_threads_on_one_deep_stack() {
    let d = tmp("deep");
    // Code that holds every return address (one outside executable memory ends a walk).
    let code = vec![0x90u8; 2048];
    let (base, depth) = (0x7000_0000u64, 1000u64);
    let mut stack = vec![0u8; (depth as usize + 1) * 16];
    for i in 0..depth {
        // Record i at base + 16 i: the caller's record, then a return address.
        let at = (16 * i) as usize;
        stack[at..at + 8].copy_from_slice(&(base + 16 * (i + 1)).to_le_bytes());
        stack[at + 8..at + 16].copy_from_slice(&(0x40_0001 + i).to_le_bytes());
    }
    let c = tiny_core_threads(
        0x40_0000,
        base,
        base,
        20_000,
        &[(0x40_0000, 5, code), (base, 6, stack)],
    );
    let c = write(&d, "core", &c);
    for mode in MODES {
        let r = run(&d, &["stack", "--core", s(&c), "--mode", mode]);
        assert_eq!(r.code, 0, "{mode}: {}", r.stderr);
        assert_eq!(r.stdout.matches("\nthread ").count(), 20_000);
        let frames = r.stdout.matches("  #").count();
        assert!(
            frames <= unwind::offline::MAX_TOTAL_FRAMES + 20_000 + 1024,
            "{frames} frames"
        );
        if mode != "dwarf" {
            // (Dwarf mode finds no CFI here: one frame per thread.)
            assert!(frames > 250_000, "the budget is used: {frames}");
            assert!(r.stderr.contains("cut short"), "{}", r.stderr);
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

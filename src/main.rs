//! The `unwind` command line.
//!
//! ```text
//! unwind stack --core CORE [--exe EXE] [--sysroot DIR] [--mode hybrid|fp|dwarf]
//!              [--policy cpu|heap|block|mutex|lock|trace] [--format text|json] [--lines]
//!              [--max-frames N]
//! unwind stack --pid PID [--tid TID ...] [--mode hybrid|fp|dwarf]
//!              [--policy cpu|heap|block|mutex|lock|trace] [--format text|json] [--lines]
//!              [--max-frames N]
//! unwind verify --core CORE [--exe EXE] [--sysroot DIR] [--max-frames N]
//! unwind demo [--naive] [--out DIR] [--seconds S] [--threads N] [--hz HZ] [--heap-rate BYTES]
//! ```
//!
//! Exit status 0 on success, 2 on bad input with a one-line error on stderr.

// On glibc the entry is the C `main` below, not std's start-up (see there); the unit tests
// keep the test harness's.
#![cfg_attr(all(not(test), target_os = "linux", target_env = "gnu"), no_main)]

mod demo;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use unwind::frame::FrameAddress::ReturnAddress;
use unwind::offline::{self, Options, Report};
use unwind::policy::ProfileKind;
use unwind::pprof_lines::LineTables;
use unwind::symbols::{Symbol, Symbolizer};
use unwind::Mode;

// The unwinder the standard library's panics and backtraces call (`_Unwind_*`) is linked in
// from libgcc's static part, whole, so that the ordinary dynamically linked binary does not
// load `libgcc_s.so.1`: std links `-lgcc_s` after this crate's own libraries, and with
// `--as-needed` (rustc's default) a library none of whose symbols are still undefined is left
// out. Loading it cost ~150 us per run here (its constructor runs CPUID, a VM exit each),
// against ~2 ms for a whole `unwind stack` (benches/HISTORY.md, "Nineteenth round"). A statically linked
// build (`cargo static-cli`) links libgcc_eh anyway.
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(target_feature = "crt-static")
))]
#[link(name = "gcc_eh", kind = "static", modifiers = "+whole-archive,-bundle")]
extern "C" {}

/// The heap profiler's sampling allocator: costs a thread-local countdown per allocation until
/// `unwind::heap::start` (only the demo starts it).
#[global_allocator]
static ALLOC: unwind::heap::Sampling = unwind::heap::Sampling::new(std::alloc::System);

const USAGE: &str = "usage: unwind stack --core CORE [--exe EXE] [--sysroot DIR] [--mode hybrid|fp|dwarf] [--policy cpu|heap|block|mutex|lock|trace] [--format text|json] [--lines] [--max-frames N]\n       unwind stack --pid PID [--tid TID ...] [--mode hybrid|fp|dwarf] [--policy cpu|heap|block|mutex|lock|trace] [--format text|json] [--lines] [--max-frames N]\n       unwind verify --core CORE [--exe EXE] [--sysroot DIR] [--max-frames N]\n       unwind demo [--naive] [--out DIR] [--seconds S] [--threads N] [--hz HZ] [--heap-rate BYTES]\n       unwind --version";

/// `unwind --help`: the usage, then what each command and option does.
const HELP: &str = "
Commands:
  stack     every thread's call stack, from a core dump (--core) or a live process (--pid),
            across stack switches (Go's system stack, signal frames, coroutines)
  verify    walk a core twice, by frame pointers and by DWARF CFI, and compare each thread
  demo      capture stacks across switches under the CPU and heap profilers; writes profiles
  --version  this program's version

Options of stack and verify:
  --core CORE        an ELF core file (x86_64 or aarch64; Linux, gdb's gcore, qemu-user);
                     - reads it from standard input (coredumpctl dump PID | unwind stack --core -)
  --exe EXE          the program that dumped the core, where its own path no longer holds it
  --sysroot DIR      read the core's files (its executable, libraries) under DIR
  --pid PID          a live process: its threads are stopped for the walk (ptrace) and resumed
  --tid TID          only this thread of --pid (may be given several times)
  --mode MODE        hybrid (default): frame records, DWARF CFI where a frame keeps none;
                     fp: frame records only; dwarf: CFI only
  --policy POLICY    which frames to show: cpu (default; all), heap, block, mutex, lock, trace
  --format FORMAT    text (default) or json (one object: threads, frames, whole or truncated)
  --lines            each frame's file:line, with the functions inlined there
  --max-frames N     at most N frames per thread (default 1024)

Options of demo:
  --naive            walk without crossing switches, to compare (files cpu-naive.*)
  --out DIR          where to write the profiles (default ./profiles)
  --seconds S        how long the workload runs (default 8)
  --threads N        worker threads (default 2)
  --hz HZ            CPU samples per second per thread (default 99)
  --heap-rate BYTES  one heap sample per BYTES allocated on average (default 16384)

Exit status: 0 when the command did its work (a truncated stack is reported, not an error);
2 on bad arguments or an unreadable input (one line on stderr); 101 on an internal error.
";

/// The process's entry, called by the C library's start code. std's own start-up
/// (`lang_start`) is left out: for the main thread it installs a stack-overflow handler on an
/// alternate signal stack whose guard page it locates by reading `/proc/self/maps`
/// (`pthread_getattr_np`), checks that fds 0-2 are open and names the thread, ~100 us per run
/// here (18 system calls) against ~2 ms for a whole `unwind stack` (benches/HISTORY.md,
/// "Nineteenth round"). What this tool needs of it is done here: SIGPIPE ignored (a reader that closes the
/// pipe early is a `BrokenPipe` error, handled in `write_out`), a panic caught (exit 101),
/// stdout flushed at the end. The
/// arguments come from `std::env::args_os`, which std reads at load time on glibc (so only
/// there). A stack overflow on the main thread is then a plain SIGSEGV, without std's message.
#[cfg(all(not(test), target_os = "linux", target_env = "gnu"))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: setting SIGPIPE's disposition to SIG_IGN before any other thread exists changes
    // only how a write to a closed pipe is reported (EPIPE instead of death), as std's own
    // start-up does.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    reopen_closed_stdio();
    // A panic (a bug; the message is printed by the panic hook) must not unwind out of a C
    // function, which would abort: exit 101, as std's start-up would.
    with_room(|| std::panic::catch_unwind(run).unwrap_or(101))
}

/// Opens `/dev/null` on whichever of fds 0-2 the parent left closed (`unwind ... >&-`), as
/// std's start-up does: otherwise the next file opened (a core, a profile the demo writes)
/// would take fd 1 and whatever is printed would go into it. One `poll` when all are open.
#[cfg(all(not(test), target_os = "linux", target_env = "gnu"))]
fn reopen_closed_stdio() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is a valid array of three `pollfd`s for the call's duration; a zero
    // timeout returns at once.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } < 0 {
        return;
    }
    for p in fds {
        if p.revents & libc::POLLNVAL != 0 {
            // SAFETY: a NUL-terminated path; the lowest free fd is this closed one, since
            // the lower ones are open (each is checked in order and reopened before the next).
            let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            if fd != p.fd && fd >= 0 {
                // Not where it belongs (cannot happen, see above): leave it closed.
                // SAFETY: `fd` was just opened here and is owned by nobody else.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// Elsewhere (and in the unit tests' build, whose entry is the test harness's), an ordinary
/// `main`.
#[cfg(not(all(not(test), target_os = "linux", target_env = "gnu")))]
fn main() {
    std::process::exit(with_room(run));
}

/// The stack `unwind`'s work asks for: symbolising with line tables inflates compressed debug
/// sections (miniz_oxide keeps its state on the stack), which overflowed a 64 KiB main thread
/// (`prlimit --stack=65536`: SIGSEGV, found by outside use in the twenty-sixth round).
const WORK_STACK: usize = 8 << 20;

/// Runs `f` on this thread when its stack limit (`RLIMIT_STACK`, the main thread's) leaves
/// [`WORK_STACK`], else on a thread of that size (here, when it can be made).
fn with_room(f: fn() -> libc::c_int) -> libc::c_int {
    // SAFETY: a zeroed rlimit is valid; getrlimit only writes it.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let small = unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut lim) } == 0
        && lim.rlim_cur != libc::RLIM_INFINITY
        && lim.rlim_cur < WORK_STACK as libc::rlim_t;
    if !small {
        return f();
    }
    match std::thread::Builder::new()
        .name("unwind".into())
        .stack_size(WORK_STACK)
        .spawn(f)
    {
        Ok(t) => t.join().unwrap_or(101),
        Err(_) => f(),
    }
}

/// The command line's work: 0 on success, 2 with a one-line error on stderr; stdout flushed
/// (neither entry leaves that to std).
fn run() -> libc::c_int {
    // As the OS gave them: a path need not be UTF-8.
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let help = |a: &OsString| a == "-h" || a == "--help";
    let first = args.first().map(|a| a.to_string_lossy().into_owned());
    let result = match first.as_deref() {
        // `unwind stack --help` and the like: the usage, whatever else was given.
        Some("stack" | "demo" | "verify") if args[1..].iter().any(help) => {
            write_out(format!("{USAGE}\n{HELP}").as_bytes())
        }
        Some("stack") => stack(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("verify") => verify(&args[1..]),
        Some("-h" | "--help" | "help") => write_out(format!("{USAGE}\n{HELP}").as_bytes()),
        Some("-V" | "--version" | "version") => {
            write_out(concat!("unwind ", env!("CARGO_PKG_VERSION"), "\n").as_bytes())
        }
        Some(other) => Err(format!(
            "unknown command '{other}' (try: unwind stack --core CORE)"
        )),
        None => Err("no command given (try: unwind stack --core CORE)".into()),
    };
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => 0,
        Err(e) => {
            let line = e.lines().next().unwrap_or("error").to_string();
            let _ = writeln!(std::io::stderr(), "unwind: {line}");
            2
        }
    }
}

#[derive(PartialEq)]
enum Format {
    Text,
    Json,
}

/// A flag's value as text (paths stay `OsString`s).
fn utf8(name: &str, v: OsString) -> Result<String, String> {
    v.into_string()
        .map_err(|v| format!("{name} {}: not valid UTF-8", v.to_string_lossy()))
}

fn stack(args: &[OsString]) -> Result<(), String> {
    let mut core = None;
    // Hybrid by default: frame records where a function keeps them, CFI elsewhere (libc and
    // distribution binaries are built without frame pointers).
    let mut opts = Options {
        mode: Mode::Hybrid,
        ..Options::default()
    };
    let mut format = Format::Text;
    let mut lines = false;
    let mut pid: Option<u32> = None;
    let mut tids: Vec<u32> = Vec::new();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let a = &*a.to_string_lossy();
        if a == "--tid" {
            // `--tid TID [TID ...]`, repeatable.
            let mut n = 0;
            while let Some(v) = it.next_if(|v| !v.to_string_lossy().starts_with("--")) {
                tids.push(parse_id("--tid", &v.to_string_lossy())?);
                n += 1;
            }
            if n == 0 {
                return Err("--tid needs a value".into());
            }
            continue;
        }
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        if core_option(a, &mut value, &mut core, &mut opts)? {
            continue;
        }
        match a {
            "--pid" => pid = Some(parse_id("--pid", &utf8("--pid", value("--pid")?)?)?),
            "--mode" => {
                let v = utf8("--mode", value("--mode")?)?;
                opts.mode =
                    Mode::parse(&v).ok_or(format!("--mode {v}: expected fp, dwarf or hybrid"))?;
            }
            "--policy" => {
                let v = utf8("--policy", value("--policy")?)?;
                let k = ProfileKind::parse(&v).ok_or(format!(
                    "--policy {v}: expected cpu, heap, block, mutex, lock or trace"
                ))?;
                opts.policy = Some(k.policy());
            }
            "--format" => {
                format = match utf8("--format", value("--format")?)?.as_str() {
                    "text" => Format::Text,
                    "json" => Format::Json,
                    v => return Err(format!("--format {v}: expected text or json")),
                }
            }
            "--lines" => lines = true,
            "--max-frames" => opts.max_frames = max_frames(value("--max-frames")?)?,
            other => return Err(unknown(other)),
        }
    }
    let report = match (pid, core) {
        (Some(_), Some(_)) => return Err("give --core CORE or --pid PID, not both".into()),
        (Some(pid), None) => {
            if opts.exe.is_some() || opts.sysroot.is_some() {
                return Err("--exe and --sysroot are for cores: a process names its files".into());
            }
            unwind::process::unwind_process(pid, &tids, &opts).map_err(|e| e.to_string())?
        }
        (None, core) => {
            if !tids.is_empty() {
                return Err("--tid is for --pid".into());
            }
            let core = open_core(core.ok_or("--core CORE or --pid PID is required")?, &opts)?;
            let report = offline::unwind_core(&core, &opts).map_err(|e| e.to_string());
            // The process exits right after the output: the kernel unmaps the core at exit,
            // faster than munmap and its TLB flush here.
            std::mem::forget(core);
            report?
        }
    };
    for w in &report.warnings {
        eprintln!("unwind: warning: {w}");
    }
    let out = match format {
        Format::Json => json(
            &report,
            lines.then(|| LineTables::new(&report.symbols)).as_mut(),
        ),
        Format::Text => text(
            &report,
            lines.then(|| LineTables::new(&report.symbols)).as_mut(),
        ),
    };
    write_out(out.as_bytes())?;
    // As the core: the modules' maps go with the process (one exit, not a munmap each).
    std::mem::forget(report);
    Ok(())
}

/// The options of every command that reads a core: `--core`, `--exe`, `--sysroot`. Returns
/// whether `a` was one of them.
/// `--max-frames N`'s value: a positive number.
fn max_frames(v: OsString) -> Result<usize, String> {
    let v = utf8("--max-frames", v)?;
    v.parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or(format!("--max-frames {v}: expected a positive number"))
}

fn core_option(
    a: &str,
    value: &mut dyn FnMut(&str) -> Result<OsString, String>,
    core: &mut Option<PathBuf>,
    opts: &mut Options,
) -> Result<bool, String> {
    match a {
        "--core" => *core = Some(PathBuf::from(value("--core")?)),
        "--exe" => opts.exe = Some(PathBuf::from(value("--exe")?)),
        "--sysroot" => {
            let dir = PathBuf::from(value("--sysroot")?);
            // A running container's files, as `/proc/PID/root` shows them: read under that
            // prefix, which is otherwise refused (each file must still be a regular file on a
            // real filesystem: no /proc file is). Found by outside use: a gcore core of a
            // process in another mount namespace could not be given its files.
            let c: Vec<_> = dir.components().collect();
            if c.len() >= 4
                && c[0] == std::path::Component::RootDir
                && c[1].as_os_str() == "proc"
                && c[3].as_os_str() == "root"
            {
                opts.allow_proc = Some(dir.clone());
            }
            opts.sysroot = Some(dir);
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Opens the core at `path`, after checking that `--sysroot`, if given, is a directory and
/// that `--exe`, if given, is a regular file; then that `--exe` is an ELF file of the core's
/// architecture (another's symbols would name every frame wrongly).
fn open_core(path: PathBuf, opts: &Options) -> Result<unwind::core_file::Core, String> {
    if let Some(dir) = &opts.sysroot {
        check_path("--sysroot", dir, true)?;
    }
    if let Some(exe) = &opts.exe {
        check_path("--exe", exe, false)?;
    }
    let core = if path.as_os_str() == "-" {
        // A core on standard input (`coredumpctl dump PID | unwind stack --core -`, a
        // decompressor's output), read whole into memory (found by outside use in the
        // twenty-sixth round: "-" was a file name, a pipe "not a regular file").
        use std::io::Read;
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut bytes)
            .map_err(|e| format!("--core -: cannot read standard input: {e}"))?;
        unwind::core_file::Core::from_bytes(bytes)
            .map_err(|e| format!("--core - (standard input): {e}"))?
    } else {
        unwind::core_file::Core::open(&path).map_err(|e| {
            let p = path.display().to_string();
            let pipe = std::fs::metadata(&path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_fifo() || m.file_type().is_socket()
            });
            let hint = if pipe {
                " (a pipe: --core - reads a core from standard input)"
            } else {
                ""
            };
            format!("{}: {e}{hint}", p.escape_debug())
        })?
    };
    if let Some(exe) = &opts.exe {
        unwind::offline::check_exe(exe, core.arch).map_err(|why| flag_error("--exe", exe, &why))?;
    }
    Ok(core)
}

/// Is `path`, given as `flag`, there and a directory (`dir`) or a regular file?
fn check_path(flag: &str, path: &std::path::Path, dir: bool) -> Result<(), String> {
    let why = match (std::fs::metadata(path), dir) {
        (Err(e), true) if e.kind() == std::io::ErrorKind::NotFound => "no such directory".into(),
        (Err(e), false) if e.kind() == std::io::ErrorKind::NotFound => "no such file".into(),
        // A directory on the way this user may not enter, say (it was "no such file").
        (Err(e), _) => unwind::offline::io_why(&e),
        (Ok(m), true) if !m.is_dir() => "not a directory".into(),
        (Ok(m), false) if !m.is_file() => "not a regular file".into(),
        (Ok(_), _) => return Ok(()),
    };
    Err(flag_error(flag, path, &why))
}

/// `FLAG PATH: why`, the path escaped (a name may hold a newline or a terminal escape).
fn flag_error(flag: &str, path: &std::path::Path, why: &str) -> String {
    format!(
        "{flag} {}: {why}",
        path.display().to_string().escape_debug()
    )
}

/// The error for an argument `stack` or `verify` does not know: a word that is not an option
/// is most likely the core, given without `--core`.
fn unknown(a: &str) -> String {
    if a.starts_with('-') {
        format!("unknown option '{a}' (unwind --help: usage)")
    } else {
        format!(
            "unexpected argument '{}': a core is given as --core CORE (unwind --help: usage)",
            a.escape_debug()
        )
    }
}

/// A pid or tid: a positive decimal number.
fn parse_id(name: &str, v: &str) -> Result<u32, String> {
    v.parse::<u32>()
        .ok()
        .filter(|&n| n > 0 && n <= i32::MAX as u32)
        .ok_or(format!("{name} {v}: expected a process or thread id"))
}

/// `unwind verify`: every thread unwound with frame records and with DWARF CFI, compared.
fn verify(args: &[OsString]) -> Result<(), String> {
    let mut core = None;
    let mut opts = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = &*a.to_string_lossy();
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        if a == "--max-frames" {
            opts.max_frames = max_frames(value("--max-frames")?)?;
        } else if !core_option(a, &mut value, &mut core, &mut opts)? {
            return Err(unknown(a));
        }
    }
    let core = open_core(core.ok_or("--core CORE is required")?, &opts)?;
    let (verdicts, report) =
        unwind::verify::verify_core(&core, &opts).map_err(|e| e.to_string())?;
    for w in &report.warnings {
        eprintln!("unwind: warning: {w}");
    }
    // A frame DWARF found is named at its own lookup address (a sigreturn trampoline's pc, or
    // an interrupted pc, is the instruction itself, not a return address); an FP-only frame
    // by its return address, or the address itself where nothing is named before it.
    let s = &report.symbols;
    let name_at = |addr: u64| {
        s.lookup(addr)
            .map_or_else(|| "?".into(), |s| s.name.to_string())
    };
    let name = |pc: u64| match s.lookup(ReturnAddress(pc).lookup_address()) {
        Some(s) => s.name.to_string(),
        None => name_at(pc),
    };
    let mut o = String::new();
    for t in &verdicts {
        let v = &t.verdict;
        o.push_str(&format!(
            "thread {}: {} ({} of {} fp frames agree with dwarf's {}; fp stop: {}, dwarf stop: {})\n",
            t.tid,
            if v.agrees() { "agree" } else { "DIFFER" },
            v.agreed,
            v.fp_len,
            v.dwarf_len,
            v.fp_stop,
            v.dwarf_stop
        ));
        let dwarf = report.threads.iter().find(|d| d.tid == t.tid);
        let dwarf_frame = |i: usize| dwarf.and_then(|d| d.frames.get(i));
        for d in &v.differences {
            let named = match *d {
                unwind::verify::Difference::Missing { index, pc }
                | unwind::verify::Difference::DifferentPc {
                    dwarf_index: index,
                    dwarf: pc,
                    ..
                } => match dwarf_frame(index).filter(|f| f.pc == pc) {
                    Some(f) => name_at(f.lookup_pc()),
                    None => name(pc),
                },
                unwind::verify::Difference::Extra { pc, .. } => name(pc),
                // A kind of difference this binary does not know (the enum is non-exhaustive):
                // its Display says what it is.
                _ => "?".into(),
            };
            o.push_str(&format!("  {d} ({named})\n"));
        }
    }
    write_out(o.as_bytes())
}

/// Writes the report to stdout. A reader that closed the pipe early (`| head`) took what it
/// wanted: that is no error (exit 0, nothing on stderr), as for other command-line tools.
fn write_out(bytes: &[u8]) -> Result<(), String> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("writing output: {e}")),
        _ => Ok(()),
    }
}

fn demo(args: &[OsString]) -> Result<(), String> {
    let mut opts = demo::Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = &*a.to_string_lossy();
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a {
            "--naive" => opts.naive = true,
            "--out" => {
                let v = value("--out")?;
                if v.is_empty() {
                    return Err("--out needs a directory".into());
                }
                opts.out = PathBuf::from(v);
            }
            "--seconds" => {
                let v = utf8("--seconds", value("--seconds")?)?;
                let s: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                    .ok_or(format!("--seconds {v}: expected a number in (0, 3600]"))?;
                opts.duration = std::time::Duration::from_secs_f64(s);
            }
            "--threads" => {
                let v = utf8("--threads", value("--threads")?)?;
                opts.threads = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or(format!("--threads {v}: expected 1 to 64"))?;
            }
            "--hz" => {
                let v = utf8("--hz", value("--hz")?)?;
                opts.frequency_hz = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or(format!("--hz {v}: expected 1 to 10000"))?;
            }
            "--heap-rate" => {
                let v = utf8("--heap-rate", value("--heap-rate")?)?;
                opts.heap_rate = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1 << 40).contains(n))
                    .ok_or(format!("--heap-rate {v}: expected 1 to 2^40 bytes"))?;
            }
            other => return Err(format!("demo: unknown argument '{other}'")),
        }
    }
    // The output directory before the run, not after it: a path that cannot be one fails at
    // once and says which.
    let bad_out = |e: std::io::Error| {
        let p = opts.out.display().to_string();
        format!("--out {}: {e}", p.escape_debug())
    };
    std::fs::create_dir_all(&opts.out).map_err(bad_out)?;
    if !opts.out.is_dir() {
        return Err(bad_out(std::io::Error::other("not a directory")));
    }
    // A directory files cannot be made in (`/proc/self`, read-only): said now, not after the run.
    let probe = opts
        .out
        .join(format!(".unwind-demo-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(bad_out)?;
    let _ = std::fs::remove_file(&probe);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    demo::run(&opts, &mut out)
        .map(|_| ())
        .map_err(|e| format!("demo: {e}"))
}

/// `file:line` of one function of an inline chain, when known.
fn file_line(f: &unwind::pprof_lines::InlineFrame) -> Option<String> {
    (!f.file.is_empty() && f.line > 0).then(|| format!("{}:{}", f.file, f.line))
}

fn json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The name DWARF gives the function a frame's pc is in (the last of its `--lines` chain, the
/// one the others were inlined into), for a frame no symbol names: a file with DWARF but no
/// symbol table (`objcopy --strip-all --keep-section='.debug_*'`) printed `?` for every frame
/// while its inlined functions were named (found by outside use in the twenty-seventh round).
fn outer_function(chain: &[unwind::pprof_lines::InlineFrame]) -> Option<&str> {
    chain
        .last()
        .map(|f| f.function.as_str())
        .filter(|n| !n.is_empty())
}

/// The JSON contract: `{"arch", "threads": [{"tid", "frames": [{"pc", "symbol", "module",
/// "stack", "via"}], "truncated"}]}` (issue 8), extended: a live process's `"paused_us"`;
/// each thread's `"name"` (a live process's, else null), `"signal"` (`{"name", "number",
/// "code", "address"}` for the core's thread that took the signal that dumped it, else null)
/// and `"stop"` (`"end"` for a whole walk, else why it was cut, as text's `truncated:`);
/// `"warnings"`, as printed on stderr. With `--lines` each frame also has `"line": "file:N"` or null (the innermost
/// inlined function's), `"symbol_line"` (the physical function's own) and `"inlined"`: the
/// functions inlined at the pc, innermost first, `[{"function", "line"}]`.
fn json(r: &Report, mut lines: Option<&mut LineTables<'_>>) -> String {
    let mut seen = Lookups::new(&r.symbols);
    let mut o = String::new();
    o.push_str("{\"arch\": ");
    json_str(r.arch.name(), &mut o);
    if let Some(p) = r.paused {
        o.push_str(&format!(", \"paused_us\": {}", p.as_micros()));
    }
    o.push_str(", \"threads\": [");
    for (ti, t) in r.threads.iter().enumerate() {
        if ti > 0 {
            o.push_str(", ");
        }
        o.push_str(&format!("{{\"tid\": {}, \"name\": ", t.tid));
        match &t.name {
            Some(n) => json_str(n, &mut o),
            None => o.push_str("null"),
        }
        o.push_str(", \"signal\": ");
        match &t.signal {
            Some(s) => {
                o.push_str("{\"name\": ");
                json_str(&s.name(), &mut o);
                o.push_str(&format!(", \"number\": {}, \"code\": ", s.number));
                match s.code {
                    Some(c) => o.push_str(&c.to_string()),
                    None => o.push_str("null"),
                }
                match s.addr {
                    Some(a) => o.push_str(&format!(", \"address\": \"{a:#x}\"}}")),
                    None => o.push_str(", \"address\": null}"),
                }
            }
            None => o.push_str("null"),
        }
        o.push_str(", \"frames\": [");
        for (fi, f) in t.frames.iter().enumerate() {
            if fi > 0 {
                o.push_str(", ");
            }
            let sym = seen.lookup(f.lookup_pc());
            // JIT code no module holds: the perf map that named it.
            let module = r
                .symbols
                .module_of(f.lookup_pc())
                .map(|m| m.path.as_str())
                .or(sym.as_ref().map(|s| s.module));
            // With --lines, the chain of functions at the pc (see below).
            let chain = lines
                .as_deref_mut()
                .map(|l| l.frames(f.lookup_pc()))
                .unwrap_or_default();
            o.push_str(&format!("{{\"pc\": \"{:#x}\", \"symbol\": ", f.pc));
            match (&sym, outer_function(&chain)) {
                (Some(s), _) => json_str(s.name, &mut o),
                (None, Some(name)) => json_str(name, &mut o),
                (None, None) => o.push_str("null"),
            }
            o.push_str(", \"module\": ");
            match module {
                Some(m) => json_str(m, &mut o),
                None => o.push_str("null"),
            }
            o.push_str(&format!(", \"stack\": {}, \"via\": ", f.stack));
            json_str(f.via.name(), &mut o);
            if lines.is_some() {
                // "line": the innermost function's (the pc's own source line); "inlined":
                // the functions inlined at this pc, innermost first, each with its line;
                // "symbol_line": the physical function's own line (where it calls the
                // outermost inlined one), as text's `at`.
                let json_line =
                    |x: Option<&unwind::pprof_lines::InlineFrame>, o: &mut String| match x
                        .and_then(file_line)
                    {
                        Some(s) => json_str(&s, o),
                        None => o.push_str("null"),
                    };
                o.push_str(", \"line\": ");
                json_line(chain.first(), &mut o);
                o.push_str(", \"symbol_line\": ");
                json_line(chain.last(), &mut o);
                o.push_str(", \"inlined\": [");
                for (k, inl) in chain.iter().take(chain.len().saturating_sub(1)).enumerate() {
                    if k > 0 {
                        o.push_str(", ");
                    }
                    o.push_str("{\"function\": ");
                    json_str(&inl.function, &mut o);
                    o.push_str(", \"line\": ");
                    json_line(Some(inl), &mut o);
                    o.push('}');
                }
                o.push(']');
            }
            o.push('}');
        }
        // Issue 8's keys, then why the walk stopped (`StopReason::name`).
        o.push_str(&format!("], \"truncated\": {}, \"stop\": ", t.truncated));
        // A whole walk's stop is "end" (a Go stack read whole to its top ends at a frame
        // record it cannot read, as Go's traceback does).
        json_str(t.reported_stop().name(), &mut o);
        o.push('}');
    }
    o.push_str("], \"warnings\": [");
    for (i, w) in r.warnings.iter().enumerate() {
        if i > 0 {
            o.push_str(", ");
        }
        json_str(w, &mut o);
    }
    o.push_str("]}\n");
    o
}

fn text(r: &Report, mut lines: Option<&mut LineTables<'_>>) -> String {
    use std::fmt::Write as _;
    // Written in place (writing to a String cannot fail): one line per frame, no temporaries,
    // the numbers by hand (`fmt`'s machinery was a fifth of `unwind stack`'s instructions).
    let frames: usize = r.threads.iter().map(|t| t.frames.len()).sum();
    let mut o = String::with_capacity(64 + 32 * r.threads.len() + 96 * frames);
    let mut seen = Lookups::new(&r.symbols);
    let _ = writeln!(o, "arch {}", r.arch);
    for t in &r.threads {
        o.push_str("\nthread ");
        push_dec(&mut o, u64::from(t.tid));
        if let Some(n) = &t.name {
            o.push_str(" \"");
            push_printable(&mut o, n);
            o.push('"');
        }
        if let Some(sig) = &t.signal {
            let _ = write!(o, ", signal {sig}");
        }
        if t.truncated {
            let _ = write!(o, " (truncated: {})", t.stop);
        }
        o.push('\n');
        for (i, f) in t.frames.iter().enumerate() {
            // With --lines: the functions inlined at this pc first, innermost first, as
            // `go tool pprof -traces` and gdb show them; the frame's own line then gives the
            // physical function's line (where it calls the outermost inlined one).
            let chain = match lines.as_deref_mut() {
                Some(l) => l.frames(f.lookup_pc()),
                None => Vec::new(),
            };
            for inl in chain.iter().take(chain.len().saturating_sub(1)) {
                o.push_str("                                      ");
                push_printable(&mut o, &inl.function);
                o.push_str(" (inlined)");
                if let Some(l) = file_line(inl) {
                    o.push_str(" at ");
                    push_printable(&mut o, &l);
                }
                o.push('\n');
            }
            // "  #{i:<3} {pc:#018x} [stack {stack}] "
            o.push_str("  #");
            let at = o.len();
            push_dec(&mut o, i as u64);
            while o.len() < at + 3 {
                o.push(' ');
            }
            o.push(' ');
            push_hex(&mut o, f.pc, 16);
            o.push_str(" [stack ");
            push_dec(&mut o, u64::from(f.stack));
            o.push_str("] ");
            match seen.lookup(f.lookup_pc()) {
                Some(s) => {
                    // The function is the one the lookup pc (pc - 1 for a return address)
                    // is in; the offset is the printed pc's, as Go's tracebacks and glibc's
                    // `backtrace_symbols` count it.
                    push_printable(&mut o, s.name);
                    o.push('+');
                    push_hex(&mut o, s.offset + (f.pc - f.lookup_pc()), 1);
                }
                // No symbol (a file without a symbol table): DWARF's name, with --lines.
                None => match outer_function(&chain) {
                    Some(name) => push_printable(&mut o, name),
                    None => o.push('?'),
                },
            }
            if let Some(outer) = chain.last().and_then(file_line) {
                o.push_str(" at ");
                push_printable(&mut o, &outer);
            }
            if f.via == unwind::Via::Transition {
                let n = r
                    .transitions
                    .iter()
                    .find(|(id, _)| *id == f.transition)
                    .map_or("transition", |(_, n)| n);
                o.push_str("  (transition: ");
                o.push_str(n);
                o.push_str(")\n");
            } else {
                o.push_str("  (");
                o.push_str(f.via.name());
                o.push_str(")\n");
            }
        }
    }
    if let Some(p) = r.paused {
        let n = r.threads.len();
        let _ = write!(
            o,
            "\n{n} thread{} stopped for {} us\n",
            if n == 1 { "" } else { "s" },
            p.as_micros()
        );
    }
    o
}

/// Appends `s` (a name or a path read from a binary) with its control characters escaped
/// (`\n`, `\u{1b}`): a symbol holding a newline or a terminal escape would otherwise forge
/// lines of the output, or drive the terminal. JSON escapes them itself.
fn push_printable(o: &mut String, s: &str) {
    // Control characters are bytes below 0x20, 0x7f, or U+0080-U+009F (0xc2 0x80-0x9f).
    if !s.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
        o.push_str(s);
        return;
    }
    for c in s.chars() {
        if c.is_control() {
            o.extend(c.escape_default());
        } else {
            o.push(c);
        }
    }
}

/// Symbol lookups for the output, each pc looked up once: the threads of a pool stop at the
/// same few pcs (65 threads, 390 frames, 10 pcs in the benchmark's core), and a lookup (module,
/// binary search, the name checked as UTF-8 and for mangling) costs ~600 instructions.
struct Lookups<'s> {
    symbols: &'s Symbolizer,
    seen: std::collections::HashMap<u64, Option<Symbol<'s>>, PcHash>,
}

/// A hash for pcs as map keys (std's SipHash costs more than the lookup it saves here; a
/// core's pcs are not chosen against the map, and a bad spread only slows the output).
#[derive(Default, Clone, Copy)]
struct PcHash(u64);

impl std::hash::Hasher for PcHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
}

impl std::hash::BuildHasher for PcHash {
    type Hasher = PcHash;
    fn build_hasher(&self) -> PcHash {
        PcHash(0)
    }
}

impl<'s> Lookups<'s> {
    fn new(symbols: &'s Symbolizer) -> Self {
        Lookups {
            symbols,
            seen: Default::default(),
        }
    }

    /// `symbols.lookup(pc)`, remembered.
    fn lookup(&mut self, pc: u64) -> Option<Symbol<'s>> {
        *self
            .seen
            .entry(pc)
            .or_insert_with(|| self.symbols.lookup(pc))
    }
}

/// Appends `n` in decimal (as `{}` does).
fn push_dec(o: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut k = digits.len();
    loop {
        k -= 1;
        digits[k] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    o.extend(digits[k..].iter().map(|&d| char::from(d)));
}

/// Appends `0x` and `n` in lower-case hex with at least `width` digits (as `{:#0w$x}` does
/// for `w` = `width` + 2, and `{:#x}` for a width of 1).
fn push_hex(o: &mut String, n: u64, width: usize) {
    let used = (64 - n.leading_zeros() as usize)
        .div_ceil(4)
        .max(width)
        .min(16);
    o.push_str("0x");
    o.extend((0..used).rev().map(|k| {
        let d = (n >> (4 * k)) as u8 & 0xf;
        char::from(if d < 10 { b'0' + d } else { b'a' + d - 10 })
    }));
}

#[cfg(test)]
mod tests {
    use super::{push_dec, push_hex, push_printable};

    #[test]
    fn names_from_binaries_cannot_forge_lines() {
        let cases = [
            ("main", "main"),
            ("std::vec::Vec<T>::push", "std::vec::Vec<T>::push"),
            ("caf\u{e9}_\u{b0}", "caf\u{e9}_\u{b0}"), // 0xc2/0xc3 lead bytes, printable
            (
                "evil\n  #1   0x0 [stack 0] main+0x1  (fp)",
                "evil\\n  #1   0x0 [stack 0] main+0x1  (fp)",
            ),
            ("\u{1b}[2Jwiped", "\\u{1b}[2Jwiped"),
            ("a\tb\rc\u{7f}\u{85}d", "a\\tb\\rc\\u{7f}\\u{85}d"),
        ];
        for (name, shown) in cases {
            let mut o = String::from(">");
            push_printable(&mut o, name);
            assert_eq!(o, format!(">{shown}"), "{name:?}");
            assert!(!o.contains('\n'));
        }
    }

    #[test]
    fn numbers_are_written_as_fmt_writes_them() {
        let mut values = vec![
            0, 1, 9, 10, 15, 16, 99, 100, 255, 256, 4095, 4096, 999, 1000,
        ];
        values.extend((0..64).flat_map(|b| [1u64 << b, (1u64 << b) - 1, (1u64 << b) + 1]));
        values.extend([
            u64::MAX,
            u64::MAX - 1,
            0x7fff_1234_5678_9abc,
            10_000_000_000,
        ]);
        for n in values {
            let mut o = String::new();
            push_dec(&mut o, n);
            assert_eq!(o, format!("{n}"));
            o.clear();
            push_hex(&mut o, n, 16);
            assert_eq!(o, format!("{n:#018x}"));
            o.clear();
            push_hex(&mut o, n, 1);
            assert_eq!(o, format!("{n:#x}"));
        }
    }
}

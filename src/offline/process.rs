//! Live processes: `unwind stack --pid`, the same walk as for a core, on a process stopped for as
//! short a time as possible and left as it was.
//!
//! A process is a [`Core`] whose memory is read from the process ([`Core::with_backing`]) and
//! whose threads' registers are read when the walk is ready ([`offline::Pause`]):
//!
//! 1. **Prepare, the process running**: check the target (exists, not a zombie, not a kernel
//!    thread, not traced already, readable), read `/proc/PID/maps`, load the modules' symbols,
//!    CFI and the transition table from their files, each opened by a path checked against the
//!    mapped inode: as named, under `/proc/PID/root` (another mount namespace: a container),
//!    else through `/proc/PID/map_files` (a deleted file: an upgraded binary).
//! 2. **Stop**: `PTRACE_SEIZE` + `PTRACE_INTERRUPT` every thread of `/proc/PID/task`, listed
//!    again until no new thread appears (never `SIGSTOP`: no stopped job, no signal lost); wait
//!    for each to stop; registers through `PTRACE_GETREGSET` (`NT_PRSTATUS`: x86_64
//!    `user_regs_struct` with `fs_base`, aarch64 `user_pt_regs` with x28, Go's `g`).
//! 3. **Walk**: memory through `process_vm_readv` (falling back to `/proc/PID/mem`), only inside
//!    the readable mappings of `/proc/PID/maps`, a page cache shared by the walks of one stop,
//!    the top pages of every thread's stack read ahead in one batched call.
//! 4. **Resume**: `PTRACE_DETACH` every thread (re-injecting a signal that arrived while it was
//!    stopped), then symbolise and print. Detaching also happens when the walk fails or panics
//!    ([`Drop`]); `SIGINT`, `SIGTERM`, `SIGHUP` and `SIGQUIT` are blocked while threads are
//!    stopped and act once they are detached; if `unwind` dies anyway (`SIGKILL`) the kernel
//!    detaches its tracees (`exit_ptrace`), and a seized thread never sees a `SIGSTOP`, so it
//!    runs on.
//!
//! Limits: a thread that does not stop within [`STOP_TIMEOUT`] (uninterruptible sleep) is left
//! out (it is detached when `unwind` exits); only a process of the host's own architecture can
//! be read (an aarch64 process under qemu-user is an x86_64 process: qemu does not let its
//! guests be traced).

use crate::arch::{aarch64, x86_64, ArchKind, Regs};
use crate::core_file::{Backing, Core, CoreError, Mapping, Thread};
use crate::memory::Range;
use crate::offline::{self, Options, Report};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long to wait for a thread to stop after `PTRACE_INTERRUPT`.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Page size of the memory cache (reads are in whole pages; 4 KiB on every Linux target we read).
const PAGE: u64 = 4096;
/// Pages read past a missing one, in one call (stacks are walked upwards).
const READ_AHEAD: u64 = 4;

// Kernel `include/uapi/linux/ptrace.h` and `include/uapi/linux/elf.h`.
const PTRACE_DETACH: libc::c_uint = 17;
const PTRACE_GETREGSET: libc::c_uint = 0x4204;
const PTRACE_SEIZE: libc::c_uint = 0x4206;
const PTRACE_INTERRUPT: libc::c_uint = 0x4207;
const PTRACE_EVENT_STOP: i32 = 128;
const NT_PRSTATUS: usize = 1;
/// `PF_KTHREAD` in `/proc/PID/stat`'s flags (kernel `include/linux/sched.h`).
const PF_KTHREAD: u64 = 0x0020_0000;

/// Why a process could not be unwound.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProcessError {
    /// No process with this pid.
    NoSuchProcess(u32),
    /// The process has exited and not been reaped.
    Zombie(u32),
    /// A kernel thread: it has no user stack.
    KernelThread(u32),
    /// `unwind` itself (a process cannot trace its own threads).
    Itself(u32),
    /// A `--tid` that is not a thread of the process.
    NoSuchThread(u32, u32),
    /// A thread id given as a pid: (tid, its process).
    NotAProcess(u32, u32),
    /// Another tracer (gdb, strace) is attached: (pid, tracer pid, tracer's name).
    AlreadyTraced(u32, u32, String),
    /// Not allowed to trace or read the process: (pid, why).
    PermissionDenied(u32, String),
    /// Every thread exited before it could be stopped.
    Exited(u32),
    /// Every thread was killed while held (a `SIGKILL` ends a ptrace stop): no walk finished.
    KilledWhileHeld(u32),
    /// No thread could be stopped: each one asked for stayed in an uninterruptible sleep (a
    /// `vfork` parent waiting for its child, a `D` state) for the whole timeout: (pid, their
    /// ids).
    NotStopped(u32, Vec<u32>),
    /// Another system error: (what, error).
    Io(String, std::io::Error),
    /// Reading a module failed in a way a core would report.
    Core(CoreError),
    /// Not a 64-bit program of this machine's architecture: (pid, what it is).
    WrongArch(u32, String),
    /// The process's code mappings changed between reading its modules and stopping it
    /// (`execve`, `dlopen`, `dlclose`), at every try ([`unwind_process`] tries
    /// [`CHANGE_TRIES`] times; past the last it walks anyway and says so in a warning, so this
    /// error reaches no caller of it).
    CodeChanged(u32),
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessError::NoSuchProcess(p) => write!(f, "no process {p}"),
            ProcessError::Zombie(p) => write!(f, "process {p} is a zombie (exited, not reaped)"),
            ProcessError::KernelThread(p) => {
                write!(f, "process {p} is a kernel thread (no user stack)")
            }
            ProcessError::Itself(p) => write!(f, "process {p} is unwind itself"),
            ProcessError::NoSuchThread(p, t) => write!(f, "process {p} has no thread {t}"),
            ProcessError::NotAProcess(t, p) => {
                write!(f, "{t} is a thread of process {p}: use --pid {p} --tid {t}")
            }
            ProcessError::AlreadyTraced(p, t, name) => {
                write!(
                    f,
                    "process {p} is already traced by {t} ({name}): detach it first"
                )
            }
            ProcessError::PermissionDenied(p, why) => {
                write!(f, "not permitted to trace process {p}: {why}")
            }
            ProcessError::Exited(p) => write!(f, "process {p} exited before it could be stopped"),
            ProcessError::KilledWhileHeld(p) => {
                write!(f, "process {p} was killed while it was being walked")
            }
            ProcessError::NotStopped(p, tids) => {
                let tids: Vec<String> = tids.iter().map(|t| t.to_string()).collect();
                write!(
                    f,
                    "no thread of process {p} stopped within {} s (thread {} in an \
                     uninterruptible sleep: a vfork parent, or a D state?)",
                    STOP_TIMEOUT.as_secs(),
                    tids.join(", ")
                )
            }
            ProcessError::Io(what, e) => write!(f, "{what}: {e}"),
            ProcessError::Core(e) => e.fmt(f),
            ProcessError::WrongArch(p, what) => write!(
                f,
                "process {p} is a {what} program: only 64-bit processes of this machine's \
                 architecture are walked"
            ),
            ProcessError::CodeChanged(p) => write!(
                f,
                "process {p} changed its code mappings (execve, dlopen or dlclose) while it \
                 was being stopped"
            ),
        }
    }
}

impl std::error::Error for ProcessError {}

impl From<CoreError> for ProcessError {
    fn from(e: CoreError) -> Self {
        ProcessError::Core(e)
    }
}

/// The architecture of processes this build can read (the host's).
pub const HOST_ARCH: ArchKind = if cfg!(target_arch = "aarch64") {
    ArchKind::Aarch64
} else {
    ArchKind::X86_64
};

/// Unwinds the threads of process `pid` (all of them, or those in `tids`) with `opts` (its
/// `exe` and `sysroot` are ignored: the process says where its files are). The report's
/// `paused` says how long the threads were stopped.
pub fn unwind_process(pid: u32, tids: &[u32], opts: &Options) -> Result<Report, ProcessError> {
    // The modules are read before the threads are stopped (so the stop is short); a process
    // that calls `execve`, `dlopen` or `dlclose` in between would be walked through the
    // modules of another image. Once stopped, its code mappings are compared with those read
    // before: where they differ the walk starts again from fresh maps.
    let mut leftover = Vec::new();
    let mut attempt = 1;
    loop {
        match unwind_once(pid, tids, opts, attempt < CHANGE_TRIES, &mut leftover) {
            Err(ProcessError::CodeChanged(_)) if attempt < CHANGE_TRIES => attempt += 1,
            r => return r,
        }
    }
}

/// How many times [`unwind_process`] stops a process whose code mappings keep changing
/// between reading them and stopping it; the last walk goes on with a warning.
pub const CHANGE_TRIES: u32 = 4;

/// One read of the process's modules and one stop. With `strict`, a change of its code
/// mappings found once stopped is [`ProcessError::CodeChanged`]; without, a warning.
/// `leftover`: threads a previous try could neither detach nor reap (reaped if they exit while
/// this try seizes), replaced by this try's.
fn unwind_once(
    pid: u32,
    tids: &[u32],
    opts: &Options,
    strict: bool,
    leftover: &mut Vec<u32>,
) -> Result<Report, ProcessError> {
    check_target(pid)?;
    // Past the check the process was there: gone now, it exited before it could be stopped.
    let exited = |e| match e {
        ProcessError::NoSuchProcess(p) => ProcessError::Exited(p),
        e => e,
    };
    let tasks = list_tasks(pid).map_err(exited)?;
    if let Some(&t) = tids.iter().find(|t| !tasks.contains(t)) {
        return Err(ProcessError::NoSuchThread(pid, t));
    }
    // The process's memory and files, as one of its threads sees them: the leader's, unless it
    // has exited (`pthread_exit` in `main`) while other threads run on; then its `maps`,
    // `mem`, `map_files` and `auxv` are empty, and a live thread's are the process's.
    let view = live_view(pid, &tasks);
    let vmas = read_maps(view).map_err(exited)?;
    let (mappings, opened_as, sysroot) = module_mappings(view, &vmas);
    let code = code_mappings(&vmas);
    let mem = Arc::new(ProcMemory::new(view, vmas));
    let vdso = mem.vdso();
    let auxv = read_auxv(view);
    let mut core = Core::with_backing(
        HOST_ARCH,
        mappings,
        auxv,
        vdso,
        Box::new(SharedMemory(mem.clone())),
    );
    for (path, file) in opened_as {
        core.set_mapping_file(path, file.into_bytes());
    }
    let mut opts = opts.clone();
    opts.exe = None;
    opts.sysroot = sysroot;
    opts.allow_proc = Some(format!("/proc/{view}").into());
    let mut stopper = Stopper {
        pid,
        only: tids.to_vec(),
        attached: Vec::new(),
        mem,
        started: None,
        paused: Duration::ZERO,
        old_mask: None,
        left_out: Vec::new(),
        seized: None,
        relist: false,
        code,
        strict,
        code_changed: false,
        leftover: std::mem::take(leftover),
    };
    let walked = offline::unwind_paused(&core, &opts, &mut stopper);
    *leftover = std::mem::take(&mut stopper.leftover);
    let mut report = walked?;
    report.paused = Some(stopper.paused);
    // Found by outside use in the twenty-sixth round: under a seccomp filter each thread
    // showed one frame and "unreadable frame record", which reads as a corrupt stack.
    if let Some(why) = stopper.mem.refusal() {
        report.warnings.insert(
            0,
            format!(
                "the process's memory could not be read ({why}): each thread shows the \
                 frame its registers give and stops there"
            ),
        );
    }
    add_perf_map(pid, view, &mut report);
    // A thread killed while held (`SIGKILL` ends a ptrace stop; so does another thread's
    // `execve`) was walked through memory that was going: its walk stopped early and the
    // thread is gone. Left out, as a thread that exits before the stop is.
    let before = report.threads.len();
    report
        .threads
        .retain(|t| !(t.stop.stopped_early() && thread_gone(pid, t.tid)));
    let killed = before - report.threads.len();
    for t in &mut report.threads {
        t.name = read_text(&format!("/proc/{pid}/task/{}/comm", t.tid))
            .ok()
            .map(|n| n.trim_end_matches('\n').to_string());
    }
    if killed > 0 && report.threads.is_empty() {
        return Err(ProcessError::KilledWhileHeld(pid));
    }
    if report.threads.is_empty() && !stopper.left_out.is_empty() {
        // Nothing walked: an error, not an empty report (found by outside use: a vfork
        // parent's `--pid` printed "0 threads" and exited 0).
        return Err(ProcessError::NotStopped(pid, stopper.left_out.clone()));
    }
    if killed > 0 {
        report.warnings.push(format!(
            "{killed} threads exited or were killed while held: left out"
        ));
    }
    for tid in &stopper.left_out {
        report.warnings.push(format!(
            "thread {tid} did not stop within {} s (uninterruptible sleep?): left out",
            STOP_TIMEOUT.as_secs()
        ));
    }
    if stopper.code_changed {
        report.warnings.push(format!(
            "{} ({CHANGE_TRIES} times): frames in code mapped since the modules were read \
             may be unnamed or cut short",
            ProcessError::CodeChanged(pid)
        ));
    }
    Ok(report)
}

/// A process's code as the walk knows it: each executable mapping of a file or of the vDSO
/// (address range, file offset, file identity). `execve` replaces all of them (at new
/// addresses where the layout is randomised, else the same files at the same places, which
/// read alike), `dlopen`/`dlclose` add or remove some; anonymous executable memory (a JIT's)
/// is no module and comes and goes without making the modules stale.
fn code_mappings(vmas: &[Vma]) -> Vec<(Range, u64, (u32, u32, u64))> {
    vmas.iter()
        .filter(|v| v.exec && (v.file_id.2 != 0 || v.path == "[vdso]"))
        .map(|v| (v.range, v.offset, v.file_id))
        .collect()
}

/// Has thread `tid` of process `pid` exited (no `/proc` entry, or a zombie)?
fn thread_gone(pid: u32, tid: u32) -> bool {
    /// `PF_EXITING` (`include/linux/sched.h`): set as the thread begins to exit, before it
    /// is a zombie. A thread killed while held is often still there, exiting, when this looks
    /// (its state `R` or `D`): it was kept, cut at its first frame (a flaky test).
    const PF_EXITING: u64 = 0x4;
    match read_text(&format!("/proc/{pid}/task/{tid}/stat")) {
        Err(_) => true,
        Ok(s) => parse_stat(&s)
            .is_none_or(|(state, flags)| matches!(state, 'Z' | 'X') || flags & PF_EXITING != 0),
    }
}

/// Whose `/proc` entries show the process's memory: `pid`, or a live thread of it when the
/// leader has exited (its `maps` is empty).
fn live_view(pid: u32, tasks: &[u32]) -> u32 {
    let has_maps = |t: u32| {
        std::fs::metadata(format!("/proc/{t}/maps")).is_ok()
            && read_text(&format!("/proc/{t}/maps")).is_ok_and(|m| !m.is_empty())
    };
    if has_maps(pid) {
        return pid;
    }
    tasks.iter().copied().find(|&t| has_maps(t)).unwrap_or(pid)
}

/// Does this error from a `/proc/PID/...` file mean the process is gone? `ENOENT` when the
/// entry went before the open; `ESRCH` when the process was reaped between the open and the
/// read (seen about once in 300 walks of a process that exits under them).
fn gone(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// The process id `/proc/self` names this process by (`readlink`): `getpid`'s where `/proc` is
/// this PID namespace's, another where it is a parent namespace's (`unshare --pid` without a
/// `/proc` of its own); an error where `/proc` is not mounted or hidden. The one reading of it
/// behind `--pid`'s refusals, [`own_symbols`] and the profilers' thread lists
/// (`threads::proc_problem`).
pub fn proc_self_pid() -> std::io::Result<i32> {
    let link = std::fs::read_link("/proc/self")?;
    link.to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))
}

/// A `/proc` text file, whatever bytes it holds: a command name or a mapped path need not be
/// UTF-8 (others are replaced by U+FFFD; files are opened through `map_files`, not by name).
fn read_text(path: &str) -> std::io::Result<String> {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The ELF class and machine of the process's executable (`/proc/PID/exe`), when it can be
/// read: `Some((is_64_bit, e_machine))`.
fn exe_kind(pid: u32) -> Option<(bool, u16)> {
    use std::io::Read;
    let mut h = [0u8; 20];
    std::fs::File::open(format!("/proc/{pid}/exe"))
        .ok()?
        .read_exact(&mut h)
        .ok()?;
    (h[..4] == *b"\x7fELF").then(|| (h[4] == 2, u16::from_le_bytes([h[18], h[19]])))
}

/// Refuses what cannot be traced, with the reason.
fn check_target(pid: u32) -> Result<(), ProcessError> {
    if pid == 0 || pid > i32::MAX as u32 {
        return Err(ProcessError::NoSuchProcess(pid));
    }
    if pid == std::process::id() {
        return Err(ProcessError::Itself(pid));
    }
    // Without a /proc, or with another PID namespace's, every pid below would be "no process"
    // or another process's (found by outside use in the twenty-sixth round).
    match proc_self_pid() {
        Err(e) => {
            let why = std::io::Error::new(
                e.kind(),
                "not mounted or not readable: --pid reads a process through /proc/PID",
            );
            return Err(ProcessError::Io("/proc".into(), why));
        }
        Ok(me) if me as u32 != std::process::id() => {
            let why = std::io::Error::other(
                "another PID namespace's (mount this namespace's: unshare --mount-proc, or \
                 mount -t proc proc /proc)",
            );
            return Err(ProcessError::Io("/proc".into(), why));
        }
        Ok(_) => {}
    }
    let stat = match read_text(&format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(e) if gone(&e) => return Err(ProcessError::NoSuchProcess(pid)),
        Err(e) => return Err(ProcessError::Io(format!("/proc/{pid}/stat"), e)),
    };
    // /proc/PID/task lists threads too: a thread id is not a process.
    let tgid = status_field(pid, "Tgid:").and_then(|v| v.parse::<u32>().ok());
    if let Some(leader) = tgid.filter(|&t| t != pid) {
        return Err(ProcessError::NotAProcess(pid, leader));
    }
    let (state, flags) = parse_stat(&stat).ok_or_else(|| {
        ProcessError::Io(
            format!("/proc/{pid}/stat"),
            std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected format"),
        )
    })?;
    if flags & PF_KTHREAD != 0 {
        return Err(ProcessError::KernelThread(pid));
    }
    if matches!(state, 'Z' | 'X' | 'x') {
        // The leader may have exited while other threads run on.
        let alive = list_tasks(pid)?.iter().any(|&t| {
            read_text(&format!("/proc/{pid}/task/{t}/stat"))
                .ok()
                .and_then(|s| parse_stat(&s))
                .is_some_and(|(st, _)| !matches!(st, 'Z' | 'X' | 'x'))
        });
        if !alive {
            return Err(ProcessError::Zombie(pid));
        }
    }
    // A 32-bit (or foreign) program: its registers and frames are not this machine's 64-bit
    // ones.
    let host = match HOST_ARCH {
        ArchKind::X86_64 => 62,
        ArchKind::Aarch64 => 183,
    };
    if let Some((wide, machine)) = exe_kind(pid) {
        if !wide || machine != host {
            return Err(ProcessError::WrongArch(
                pid,
                if wide {
                    format!("ELF machine {machine}")
                } else {
                    "32-bit".to_string()
                },
            ));
        }
    }
    // The leader only (cheap); another thread's tracer shows when seizing it fails.
    if let Some(t) = status_field(pid, "TracerPid:")
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&t| t != 0)
    {
        return Err(already_traced(pid, t));
    }
    Ok(())
}

/// The state letter and the flags of a `/proc/PID/stat` line (the command name may hold spaces
/// and parentheses: fields start after the last `)`).
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    // Fields after the state: ppid, pgrp, session, tty_nr, tpgid, flags.
    let flags = it.nth(5)?.parse().ok()?;
    Some((state, flags))
}

/// Names the process's JIT code from its perf map, as `perf` does: `/tmp/perf-PID.map` with
/// the pid as the process knows itself (`NSpid`: in a container, its own), under its root
/// (`/proc/PID/root`), owned by the process's user or root. Read after the threads run again;
/// a map that is there but refused is a warning.
fn add_perf_map(pid: u32, view: u32, report: &mut Report) {
    let Ok(status) = read_text(&format!("/proc/{pid}/status")) else {
        return;
    };
    let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key));
    let own_pid = field("NSpid:")
        .and_then(|v| v.split_whitespace().last()?.parse::<u32>().ok())
        .unwrap_or(pid);
    let Some(uid) = field("Uid:").and_then(|v| v.split_whitespace().nth(1)?.parse::<u32>().ok())
    else {
        return;
    };
    let path = std::path::PathBuf::from(format!("/proc/{view}/root/tmp/perf-{own_pid}.map"));
    if std::fs::symlink_metadata(&path).is_err() {
        return;
    }
    let display = format!("/tmp/perf-{own_pid}.map");
    if let Err(e) = report.symbols.add_perf_map(&path, &display, uid) {
        report
            .warnings
            .push(format!("perf map {display}: {e}: JIT frames stay unnamed"));
    }
}

fn status_field(pid: u32, key: &str) -> Option<String> {
    let s = read_text(&format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
}

/// The process (other than this one, which may hold some threads already) tracing `pid`'s
/// leader or any of its threads, if any.
fn tracer_of(pid: u32) -> Option<u32> {
    let me = std::process::id();
    std::iter::once(pid)
        .chain(list_tasks(pid).ok()?)
        .find_map(|t| {
            let s = read_text(&format!("/proc/{pid}/task/{t}/status")).ok()?;
            let tracer = s
                .lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))?
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|&t| t != 0)?;
            let process = status_field(tracer, "Tgid:")
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(tracer);
            (process != me).then_some(process)
        })
}

/// `TracerPid` names the tracing thread: report its process (and that process's name).
fn already_traced(pid: u32, tracer: u32) -> ProcessError {
    let tracer = status_field(tracer, "Tgid:")
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(tracer);
    let name = read_text(&format!("/proc/{tracer}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    ProcessError::AlreadyTraced(pid, tracer, name)
}

/// Why tracing was refused (`EPERM`), as precisely as the system says.
fn permission_reason(pid: u32) -> ProcessError {
    if let Some(t) = tracer_of(pid) {
        return already_traced(pid, t);
    }
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let why = match (euid, scope) {
        (_, Some(3)) => "ptrace is disabled (kernel.yama.ptrace_scope = 3)".to_string(),
        (0, _) if !has_cap_sys_ptrace() => {
            "ptrace refused: this process lacks CAP_SYS_PTRACE (dropped, as a container's \
             default set does)"
                .into()
        }
        (0, _) => "ptrace refused (a security module? a process of another user namespace?)".into(),
        (_, Some(s)) if s >= 1 => format!(
            "not root, and kernel.yama.ptrace_scope = {s} allows only tracing one's descendants"
        ),
        _ => "not root, and the process belongs to another user (or is not dumpable)".into(),
    };
    ProcessError::PermissionDenied(pid, why)
}

/// Does this process hold `CAP_SYS_PTRACE` (bit 19 of `CapEff` in `/proc/self/status`)? Yes
/// when it cannot tell.
fn has_cap_sys_ptrace() -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    status_field(std::process::id(), "CapEff:")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .is_none_or(|caps| caps & (1 << CAP_SYS_PTRACE) != 0)
}

/// Has thread `tid` exited (gone, or a zombie / dead in `/proc`)?
fn exiting(pid: u32, tid: u32) -> bool {
    match read_text(&format!("/proc/{pid}/task/{tid}/stat")) {
        Ok(s) => parse_stat(&s).is_none_or(|(st, _)| matches!(st, 'Z' | 'X' | 'x')),
        Err(_) => true,
    }
}

/// The thread ids in `/proc/PID/task`.
fn list_tasks(pid: u32) -> Result<Vec<u32>, ProcessError> {
    let dir = match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(d) => d,
        Err(e) if gone(&e) => return Err(ProcessError::NoSuchProcess(pid)),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(permission_reason(pid))
        }
        Err(e) => return Err(ProcessError::Io(format!("/proc/{pid}/task"), e)),
    };
    let mut tids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vma {
    /// Address range.
    pub range: Range,
    /// Readable (`r`)?
    pub read: bool,
    /// Executable (`x`)?
    pub exec: bool,
    /// Writable (`w`)?
    pub write: bool,
    /// File offset.
    pub offset: u64,
    /// The file's device (major, minor) and inode (0 for anonymous memory).
    pub file_id: (u32, u32, u64),
    /// The path (`[stack]`, `[vdso]`, empty for anonymous memory; a deleted file's path ends
    /// in ` (deleted)`).
    pub path: String,
}

/// Parses `/proc/PID/maps` text: `lo-hi perms offset dev inode [path]` per line.
pub fn parse_maps(text: &str) -> Vec<Vma> {
    let mut out = Vec::new();
    for line in text.lines() {
        // The first five fields are separated by single spaces; the path (which may hold
        // spaces) follows after padding.
        let mut it = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(off), Some(dev), Some(inode)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let path = it.next().unwrap_or("").trim_start();
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi), Ok(offset)) = (
            u64::from_str_radix(lo, 16),
            u64::from_str_radix(hi, 16),
            u64::from_str_radix(off, 16),
        ) else {
            continue;
        };
        if hi <= lo {
            continue;
        }
        let p = perms.as_bytes();
        let (major, minor) = dev.split_once(':').unwrap_or(("0", "0"));
        let file_id = (
            u32::from_str_radix(major, 16).unwrap_or(0),
            u32::from_str_radix(minor, 16).unwrap_or(0),
            inode.parse().unwrap_or(0),
        );
        out.push(Vma {
            range: Range::new(lo, hi),
            read: p.first() == Some(&b'r'),
            exec: p.get(2) == Some(&b'x'),
            write: p.get(1) == Some(&b'w'),
            offset,
            file_id,
            path: path.to_string(),
        });
    }
    out.sort_by_key(|v| v.range.lo);
    out
}

fn read_maps(pid: u32) -> Result<Vec<Vma>, ProcessError> {
    match read_text(&format!("/proc/{pid}/maps")) {
        Ok(s) => Ok(parse_maps(&s)),
        Err(e) if gone(&e) => Err(ProcessError::NoSuchProcess(pid)),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(permission_reason(pid)),
        Err(e) => Err(ProcessError::Io(format!("/proc/{pid}/maps"), e)),
    }
}

fn read_auxv(pid: u32) -> Vec<(u64, u64)> {
    let b = std::fs::read(format!("/proc/{pid}/auxv")).unwrap_or_default();
    b.chunks_exact(16)
        .map(|c| {
            let w = |i: usize| u64::from_le_bytes(c[i..i + 8].try_into().unwrap_or([0; 8]));
            (w(0), w(8))
        })
        .take_while(|(k, _)| *k != 0)
        .collect()
}

/// The mappings whose files hold code, as the core walker wants them, each path paired with
/// one that opens the very file mapped (same device and inode as `/proc/PID/maps` says):
/// `/proc/PID/maps` names files as seen from *our* root, or, for mounts we cannot see (another
/// mount namespace: a container), from the process's own, so the path is tried as it is and
/// under `/proc/PID/root`. A deleted file, or one found under neither, is opened through
/// `/proc/PID/map_files/LO-HI` (the mapping with the lowest offset). Each keeps the
/// process's path as its name; the paths that open them where they differ are returned
/// beside (for [`Core::set_mapping_file`]). No sysroot is needed after this.
fn module_mappings(
    pid: u32,
    vmas: &[Vma],
) -> (
    Vec<Mapping>,
    Vec<(String, String)>,
    Option<std::path::PathBuf>,
) {
    let code_paths: Vec<&str> = vmas
        .iter()
        .filter(|v| v.exec && v.path.starts_with('/'))
        .map(|v| v.path.as_str())
        .collect();
    // (the process's path, the path that opens its file) where they differ.
    let mut resolved: Vec<(String, String)> = Vec::new();
    let mut out = Vec::new();
    for v in vmas {
        if !code_paths.contains(&v.path.as_str()) {
            continue;
        }
        if !resolved.iter().any(|(p, _)| *p == v.path) {
            resolved.push((v.path.clone(), resolve_mapped(pid, vmas, v)));
        }
        // Named as the process names it (`/app/bin (deleted)`, a container's path), as
        // eu-stack and gdb name it: the `/proc/PID/map_files/LO-HI` or `/proc/PID/root/...`
        // path that opens it means nothing once the process is gone (found by outside use in
        // the twenty-fifth round).
        out.push(Mapping {
            range: v.range,
            offset: v.offset,
            path: v.path.clone(),
        });
    }
    resolved.retain(|(p, r)| p != r);
    (out, resolved, None)
}

/// This process's modules, named and checked as `unwind stack --pid` names another's: each
/// file opened through `/proc/self/map_files` where this process may (a file deleted or
/// replaced since it was mapped is still the one mapped), else by its path; a file whose
/// build id is not the one in this process's memory is not used (a library or program
/// replaced on disk since it was loaded named every frame in it after the new file's
/// functions, with its build id in the profile: found by outside use in the twenty-sixth
/// round), and a module without its file is read from memory (its exported symbols and CFI).
/// The vDSO is read from memory. `None` when `/proc/self/maps` cannot be read.
pub fn own_symbols() -> Option<crate::symbols::Symbolizer> {
    let pid = std::process::id();
    // `/proc/PID` is this process only where `/proc` is this PID namespace's (`unshare --pid`
    // without a /proc of its own: another process's).
    if proc_self_pid().ok()? as u32 != pid {
        return None;
    }
    let vmas = read_maps(pid).ok()?;
    let (mappings, opened_as, _) = module_mappings(pid, &vmas);
    let mem = Arc::new(ProcMemory::new(pid, vmas));
    let vdso = mem.vdso();
    // This process's own memory: its files' images do not change while they are mapped.
    mem.open(None);
    let mut core = Core::with_backing(
        HOST_ARCH,
        mappings,
        read_auxv(pid),
        vdso,
        Box::new(SharedMemory(mem)),
    );
    for (path, file) in opened_as {
        core.set_mapping_file(path, file.into_bytes());
    }
    let opts = Options {
        allow_proc: Some(format!("/proc/{pid}").into()),
        ..Options::default()
    };
    Some(offline::symbols_for(&core, &opts))
}

/// A path that opens the file mapped at `v` (see [`module_mappings`]).
fn resolve_mapped(pid: u32, vmas: &[Vma], v: &Vma) -> String {
    use std::os::unix::fs::MetadataExt;
    let first = vmas
        .iter()
        .filter(|x| x.path == v.path)
        .min_by_key(|x| x.offset)
        .unwrap_or(v);
    let map_files = format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        first.range.lo, first.range.hi
    );
    // The kernel's encoding of st_dev (glibc `sys/sysmacros.h`: gnu_dev_major/minor).
    let same_file = |p: &str| {
        std::fs::metadata(p).is_ok_and(|m| {
            let d = m.dev();
            let major = ((d >> 32) & 0xffff_f000) | ((d >> 8) & 0xfff);
            let minor = ((d >> 12) & 0xffff_ff00) | (d & 0xff);
            (major as u32, minor as u32, m.ino()) == v.file_id
        })
    };
    if v.path.ends_with(" (deleted)") {
        // `map_files` needs CAP_SYS_ADMIN; `/proc/PID/exe` opens the executable for any user
        // that may trace the process (found by outside use in the twenty-sixth round: a
        // non-root `--pid` of the same user's deleted program was left unnamed).
        let exe = format!("/proc/{pid}/exe");
        if std::fs::metadata(&map_files).is_err() && same_file(&exe) {
            return exe;
        }
        return map_files;
    }
    let in_root = format!("/proc/{pid}/root{}", v.path);
    if same_file(&v.path) {
        v.path.clone()
    } else if same_file(&in_root) {
        in_root
    } else if std::fs::metadata(&map_files).is_ok() {
        map_files
    } else {
        v.path.clone()
    }
}

/// `/proc/PID/mem`-style reads of a live process, bounded by its readable mappings, through a
/// page cache that lives as long as one stop.
pub struct ProcMemory {
    pid: u32,
    state: Mutex<MemState>,
}

struct MemState {
    vmas: Vec<Vma>,
    /// Pages read during this stop (`None`: unreadable).
    pages: HashMap<u64, Option<Box<[u8]>>>,
    /// Reads are allowed only while the threads are stopped: before and after, the memory
    /// would not match the registers (the vDSO, which does not change, is read ahead).
    open: bool,
    /// `/proc/PID/mem`, opened on the first `process_vm_readv` failure.
    mem_file: Option<std::fs::File>,
    /// Did `process_vm_readv` fail with `ENOSYS`/`EPERM` (then every read uses the file)?
    no_vm_readv: bool,
    /// Why `process_vm_readv` was given up (its errno) and why `/proc/PID/mem` could not be
    /// opened or read (the first error), when neither reads: said in a warning.
    refused: (Option<i32>, Option<std::io::Error>),
    /// System calls made to read memory (the tests check the cache with it).
    syscalls: u64,
}

impl ProcMemory {
    fn new(pid: u32, vmas: Vec<Vma>) -> Self {
        ProcMemory {
            pid,
            state: Mutex::new(MemState {
                vmas,
                pages: HashMap::new(),
                open: false,
                mem_file: None,
                no_vm_readv: false,
                refused: (None, None),
                syscalls: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why this process's memory could not be read, where neither `process_vm_readv` nor
    /// `/proc/PID/mem` was allowed (a seccomp filter, a security module): a warning's words.
    fn refusal(&self) -> Option<String> {
        let st = self.lock();
        let errno = st.refused.0?;
        let file = st.refused.1.as_ref()?;
        Some(format!(
            "process_vm_readv: {}; /proc/{}/mem: {}",
            crate::offline::io_why(&std::io::Error::from_raw_os_error(errno)),
            self.pid,
            crate::offline::io_why(file)
        ))
    }

    /// The vDSO's bytes (searched for signal trampolines like a core's executable segments).
    fn vdso(&self) -> Vec<(u64, Vec<u8>)> {
        let mut st = self.lock();
        let Some(v) = st.vmas.iter().find(|v| v.path == "[vdso]").cloned() else {
            return Vec::new();
        };
        let len = (v.range.hi - v.range.lo).min(64 * 1024) as usize;
        let mut buf = vec![0u8; len];
        let n = st.raw_read(self.pid, v.range.lo, &mut buf);
        buf.truncate(n);
        st.pages.clear();
        if buf.is_empty() {
            Vec::new()
        } else {
            vec![(v.range.lo, buf)]
        }
    }

    /// Starts a stop: fresh maps (threads may have mapped stacks since), an empty cache.
    fn open(&self, vmas: Option<Vec<Vma>>) {
        let mut st = self.lock();
        if let Some(v) = vmas {
            st.vmas = v;
        }
        st.pages.clear();
        st.open = true;
    }

    /// Ends a stop: no more reads.
    fn close(&self) {
        let mut st = self.lock();
        st.pages.clear();
        st.open = false;
    }

    /// Reads the pages at each address (and the next one, within its mapping) in one batched
    /// `process_vm_readv`: the tops of the threads' stacks.
    fn prefetch(&self, addrs: &[u64]) {
        let mut st = self.lock();
        let mut chunks: Vec<(u64, usize)> = Vec::new();
        for &a in addrs {
            let page = a & !(PAGE - 1);
            let Some(v) = st.readable(page, 1) else {
                continue;
            };
            let end = page.saturating_add(2 * PAGE).min(v.hi);
            if st.pages.contains_key(&page) || chunks.iter().any(|c| c.0 == page) {
                continue;
            }
            chunks.push((page, (end - page) as usize));
            if chunks.len() == 512 {
                break;
            }
        }
        if chunks.is_empty() || st.no_vm_readv {
            return;
        }
        let total: usize = chunks.iter().map(|c| c.1).sum();
        let mut buf = vec![0u8; total];
        let local = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: total,
        }];
        let remote: Vec<libc::iovec> = chunks
            .iter()
            .map(|&(a, len)| libc::iovec {
                iov_base: a as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        st.syscalls += 1;
        // SAFETY: `local` describes `buf` (total bytes, alive for the call); the remote iovecs
        // are addresses in the other process, which the kernel checks (EFAULT, or a short
        // count, for anything unmapped); nothing here is dereferenced.
        let n = unsafe {
            libc::process_vm_readv(
                self.pid as libc::pid_t,
                local.as_ptr(),
                1,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        let mut n = if n < 0 { 0 } else { n as usize };
        let mut at = 0usize;
        for &(a, len) in &chunks {
            let got = len.min(n);
            for p in 0..got / PAGE as usize {
                let lo = at + p * PAGE as usize;
                st.pages.insert(
                    a + (p as u64) * PAGE,
                    Some(buf[lo..lo + PAGE as usize].into()),
                );
            }
            if got < len {
                break;
            }
            n -= len;
            at += len;
        }
    }

    /// Syscalls made to read memory so far.
    pub fn syscalls(&self) -> u64 {
        self.lock().syscalls
    }
}

impl MemState {
    /// The index of the mapping that starts last at or below `addr` (which may end below it).
    fn vma_index(&self, addr: u64) -> Option<usize> {
        self.vmas
            .partition_point(|v| v.range.lo <= addr)
            .checked_sub(1)
    }

    /// The mapping at [`MemState::vma_index`].
    fn vma(&self, addr: u64) -> Option<&Vma> {
        self.vmas.get(self.vma_index(addr)?)
    }

    /// The readable mapping holding `len` bytes at `addr`.
    fn readable(&self, addr: u64, len: u64) -> Option<Range> {
        let v = self.vma(addr)?;
        (v.read && v.range.contains_span(addr, len)).then_some(v.range)
    }

    /// Reads up to `out.len()` bytes at `addr` from the process: `process_vm_readv`, else
    /// `/proc/PID/mem`. Returns how many bytes were read (a prefix).
    fn raw_read(&mut self, pid: u32, addr: u64, out: &mut [u8]) -> usize {
        if !self.no_vm_readv {
            let local = libc::iovec {
                iov_base: out.as_mut_ptr().cast(),
                iov_len: out.len(),
            };
            let remote = libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: out.len(),
            };
            self.syscalls += 1;
            // SAFETY: `local` describes `out`, writable for its length during the call; the
            // remote address is checked by the kernel (EFAULT or a short count).
            let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
            if n > 0 {
                return n as usize;
            }
            let err = std::io::Error::last_os_error().raw_os_error();
            if matches!(err, Some(libc::ENOSYS) | Some(libc::EPERM)) {
                self.no_vm_readv = true;
                self.refused.0 = err;
            } else {
                return 0;
            }
        }
        if self.mem_file.is_none() {
            match std::fs::File::open(format!("/proc/{pid}/mem")) {
                Ok(f) => self.mem_file = Some(f),
                Err(e) => {
                    self.refused.1.get_or_insert(e);
                    return 0;
                }
            }
        }
        let Some(f) = &self.mem_file else { return 0 };
        self.syscalls += 1;
        use std::os::unix::fs::FileExt;
        match f.read_at(out, addr) {
            Ok(n) => n,
            Err(e) => {
                // EIO is an unmapped or unreadable page: only a refusal is worth a word.
                if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                    self.refused.1.get_or_insert(e);
                }
                0
            }
        }
    }

    fn page(&mut self, pid: u32, page: u64) -> Option<&[u8]> {
        if !self.pages.contains_key(&page) {
            let r = self.readable(page, PAGE)?;
            let end = page.saturating_add(READ_AHEAD * PAGE).min(r.hi);
            let mut buf = vec![0u8; (end - page) as usize];
            let n = self.raw_read(pid, page, &mut buf) as u64;
            if n < PAGE {
                self.pages.insert(page, None);
            }
            for p in 0..n / PAGE {
                let lo = (p * PAGE) as usize;
                self.pages
                    .entry(page + p * PAGE)
                    .or_insert_with(|| Some(buf[lo..lo + PAGE as usize].into()));
            }
        }
        self.pages.get(&page)?.as_deref()
    }
}

impl Backing for ProcMemory {
    fn read(&self, addr: u64, out: &mut [u8]) -> bool {
        let mut st = self.lock();
        // Between stops only a file's read-only mappings: its image, which does not change
        // while mapped (a module read from memory where its file cannot be opened or was
        // replaced, before the threads are stopped: found by outside use in the twenty-sixth
        // round, a deleted executable under a non-root `--pid` was left unnamed).
        let fixed = st.vma(addr).is_some_and(|v| !v.write && v.file_id.2 != 0);
        if !(st.open || fixed) || st.readable(addr, out.len() as u64).is_none() {
            return false;
        }
        let mut done = 0usize;
        while done < out.len() {
            let a = addr + done as u64;
            let page = a & !(PAGE - 1);
            let off = (a - page) as usize;
            let Some(bytes) = st.page(self.pid, page) else {
                return false;
            };
            let n = (PAGE as usize - off).min(out.len() - done);
            out[done..done + n].copy_from_slice(&bytes[off..off + n]);
            done += n;
        }
        true
    }

    /// The mapping holding `addr`, with the anonymous read-write mappings that adjoin it (one
    /// stack can span two: see `core_file::adjoining`).
    fn mapping(&self, addr: u64) -> Option<Range> {
        let st = self.lock();
        let r = st.readable(addr, 1)?;
        let stack = |v: &Vma| v.read && v.write && !v.exec && v.file_id.2 == 0;
        let region = |j: usize| {
            let v = st.vmas.get(j)?;
            stack(v).then_some((v.range.lo, v.range.hi, true))
        };
        match st.vma_index(addr) {
            Some(i) if region(i).is_some() => {
                let (lo, hi) = crate::core_file::adjoining(i, st.vmas.len(), region)?;
                Some(Range::new(lo, hi))
            }
            _ => Some(r),
        }
    }

    fn is_code(&self, addr: u64) -> Option<bool> {
        let st = self.lock();
        if st.vmas.is_empty() {
            return None;
        }
        // The maps are in address order (as /proc lists them).
        let i = st.vmas.partition_point(|v| v.range.hi <= addr);
        Some(
            st.vmas
                .get(i)
                .is_some_and(|v| v.range.contains(addr) && v.exec),
        )
    }
}

/// The process memory shared by the core (reads) and the stopper (opening, closing, prefetch).
struct SharedMemory(Arc<ProcMemory>);

impl Backing for SharedMemory {
    fn read(&self, addr: u64, out: &mut [u8]) -> bool {
        self.0.read(addr, out)
    }
    fn mapping(&self, addr: u64) -> Option<Range> {
        self.0.mapping(addr)
    }
    fn is_code(&self, addr: u64) -> Option<bool> {
        self.0.is_code(addr)
    }
}

/// A thread we attached to.
struct Attached {
    tid: u32,
    /// Seen in a ptrace-stop (then `PTRACE_DETACH` works).
    stopped: bool,
    /// A signal that arrived while it was stopped, delivered again on detach.
    signal: i32,
}

/// Stops a process's threads for the walk and detaches them after it (or when dropped).
struct Stopper {
    pid: u32,
    only: Vec<u32>,
    attached: Vec<Attached>,
    mem: Arc<ProcMemory>,
    started: Option<Instant>,
    paused: Duration,
    old_mask: Option<libc::sigset_t>,
    /// Threads that did not stop in time (left out of the walk).
    left_out: Vec<u32>,
    /// While threads are being seized: the list the [`Reaper`] watches.
    seized: Option<Arc<Mutex<Vec<u32>>>>,
    /// A thread was forgotten while waiting for stops: list the threads again.
    relist: bool,
    /// The code mappings the modules were read from ([`code_mappings`]).
    code: Vec<(Range, u64, (u32, u32, u64))>,
    /// Fail the stop with [`ProcessError::CodeChanged`] where they differ once stopped.
    strict: bool,
    /// They differed and the walk went on (not `strict`).
    code_changed: bool,
    /// Threads still traced after the last detach (never stopped, not exited): the reaper of
    /// the next try watches them.
    leftover: Vec<u32>,
}

/// Reaps the threads already seized that exit while the others are being seized. A thread
/// that calls `execve` makes every other thread exit, and waits, holding the process's exec
/// lock, until each is released: a traced one only when its tracer reaps it. `PTRACE_SEIZE`
/// of any further thread waits for that same lock; without a second thread to reap, both
/// processes waited for each other for good (only SIGKILL ended `unwind`). Another thread of
/// this process may reap the tracer thread's tracees (`waitid` looks at every thread's); only
/// the seized thread ids are waited for, so no child of a program using this library is
/// reaped behind its back. The seizing thread then finds them gone (`ECHILD`).
struct Reaper {
    tids: Arc<Mutex<Vec<u32>>>,
    done: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reaper {
    fn start() -> Reaper {
        let tids: Arc<Mutex<Vec<u32>>> = Arc::default();
        let done: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (t, d) = (tids.clone(), done.clone());
        let thread = std::thread::Builder::new()
            .name("unwind-reaper".into())
            .spawn(move || {
                while !d.load(std::sync::atomic::Ordering::Acquire) {
                    let list = t.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    for tid in list {
                        // A tracee's stops are reported to any wait, WEXITED or not: look
                        // first (WNOWAIT), and take only an exit; stops stay for the seizer.
                        let wait = |flags: libc::c_int| {
                            // SAFETY: siginfo_t is plain data; waitid writes it, and does not
                            // block (WNOHANG).
                            unsafe {
                                let mut info: libc::siginfo_t = std::mem::zeroed();
                                let r = libc::waitid(
                                    libc::P_PID,
                                    tid as libc::id_t,
                                    &mut info,
                                    flags | libc::WEXITED | libc::WNOHANG | libc::__WALL,
                                );
                                (r == 0 && info.si_pid() != 0).then_some(info.si_code)
                            }
                        };
                        if matches!(
                            wait(libc::WNOWAIT),
                            Some(libc::CLD_EXITED | libc::CLD_KILLED | libc::CLD_DUMPED)
                        ) {
                            wait(0);
                        }
                    }
                    // Woken at once by `stop` (a plain sleep here held the threads up to 2
                    // ms longer: most of an idle process's pause, found by outside use in the
                    // twenty-fifth round).
                    std::thread::park_timeout(Duration::from_millis(2));
                }
            })
            .ok();
        Reaper { tids, done, thread }
    }

    fn stop(mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn ptrace(req: libc::c_uint, tid: u32, addr: usize, data: usize) -> Result<(), i32> {
    // SAFETY: the requests used here (SEIZE, INTERRUPT, DETACH, GETREGSET) take integers, or
    // for GETREGSET a pointer to an iovec the caller keeps alive and sized; a bad tid is an
    // error (ESRCH), not undefined behaviour.
    let r = unsafe {
        libc::ptrace(
            req,
            tid as libc::pid_t,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r == -1 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(())
    }
}

impl Stopper {
    /// Blocks the signals that would end `unwind` while threads are stopped (they act after
    /// the detach instead).
    fn block_signals(&mut self) {
        if self.old_mask.is_some() {
            return;
        }
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it; pthread_sigmask
        // only reads `set` and writes `old`, both valid for the call.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            // SIGCHLD too: a tracee's stop raises it, and `wait_stopped` waits for it.
            for s in [
                libc::SIGINT,
                libc::SIGTERM,
                libc::SIGHUP,
                libc::SIGQUIT,
                libc::SIGCHLD,
            ] {
                libc::sigaddset(&mut set, s);
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) == 0 {
                self.old_mask = Some(old);
            }
        }
    }

    fn restore_signals(&mut self) {
        if let Some(old) = self.old_mask.take() {
            // SAFETY: `old` is the mask pthread_sigmask returned; restoring it only reads it.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        }
    }

    /// Seizes and interrupts every thread not attached yet; `Ok(true)` if there was one.
    fn attach_new(&mut self) -> Result<bool, ProcessError> {
        let tasks = match list_tasks(self.pid) {
            Ok(t) => t,
            Err(ProcessError::NoSuchProcess(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut any = false;
        for tid in tasks {
            if (!self.only.is_empty() && !self.only.contains(&tid))
                || self.attached.iter().any(|a| a.tid == tid)
            {
                continue;
            }
            match ptrace(PTRACE_SEIZE, tid, 0, 0) {
                Ok(()) => {}
                Err(libc::ESRCH) => continue, // exited meanwhile
                // The kernel refuses a thread that is exiting with EPERM too.
                Err(libc::EPERM) if exiting(self.pid, tid) => continue,
                Err(libc::EPERM) => return Err(permission_reason(self.pid)),
                Err(e) => {
                    return Err(ProcessError::Io(
                        format!("PTRACE_SEIZE thread {tid}"),
                        std::io::Error::from_raw_os_error(e),
                    ))
                }
            }
            self.attached.push(Attached {
                tid,
                stopped: false,
                signal: 0,
            });
            if let Some(seized) = &self.seized {
                seized.lock().unwrap_or_else(|e| e.into_inner()).push(tid);
            }
            any = true;
            if ptrace(PTRACE_INTERRUPT, tid, 0, 0).is_err() {
                // Exited between the two calls: waiting says so.
            }
        }
        Ok(any)
    }

    /// Waits until every attached thread is in a ptrace-stop (or gone), at most `timeout`.
    fn wait_stopped(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_micros(5);
        let mut interrupted = Instant::now();
        loop {
            // An interrupt can be lost (sent while the thread was inside `execve`, which then
            // completed): ask again every 50 ms.
            // A thread id that is no longer our tracee (`ESRCH`: an `execve` in another thread
            // gave the leader's id to the thread that called it) is forgotten, to be seized
            // again by the next listing.
            if interrupted.elapsed() >= Duration::from_millis(50) {
                interrupted = Instant::now();
                let before = self.attached.len();
                self.attached.retain(|a| {
                    a.stopped || ptrace(PTRACE_INTERRUPT, a.tid, 0, 0) != Err(libc::ESRCH)
                });
                self.relist |= self.attached.len() != before;
            }
            let mut pending = false;
            let mut i = 0;
            while i < self.attached.len() {
                let a = &mut self.attached[i];
                if a.stopped {
                    i += 1;
                    continue;
                }
                let mut status = 0;
                // SAFETY: waitpid writes the status int it is given.
                let r = unsafe {
                    libc::waitpid(
                        a.tid as libc::pid_t,
                        &mut status,
                        libc::__WALL | libc::WNOHANG,
                    )
                };
                if r == 0 {
                    pending = true;
                    i += 1;
                    continue;
                }
                if r < 0 || libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                    // Gone (ECHILD: reaped or not ours any more).
                    self.attached.remove(i);
                    continue;
                }
                if libc::WIFSTOPPED(status) {
                    a.stopped = true;
                    if status >> 16 != PTRACE_EVENT_STOP {
                        // A signal-delivery-stop (the signal arrived before the interrupt):
                        // the signal is delivered when we detach. Group-stops and our
                        // interrupt are PTRACE_EVENT_STOP and carry nothing to deliver.
                        a.signal = libc::WSTOPSIG(status);
                    }
                }
                i += 1;
            }
            let now = Instant::now();
            if !pending || now >= deadline {
                return;
            }
            if self.old_mask.is_some() {
                // SIGCHLD is blocked: sleep until a tracee stops (the kernel raises SIGCHLD in
                // the tracer), at most 10 ms at a time (a stop we missed is polled again).
                let wait = (deadline - now).min(Duration::from_millis(10));
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: wait.as_nanos() as libc::c_long,
                };
                // SAFETY: sigset_t is plain data, initialised by sigemptyset/sigaddset;
                // sigtimedwait reads the set and the timeout and may write no info (null).
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGCHLD);
                    libc::sigtimedwait(&set, std::ptr::null_mut(), &ts);
                }
            } else {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(1));
            }
        }
    }

    /// Detaches every attached thread (stopping first one that is not in a stop yet).
    fn detach_all(&mut self) {
        // Every thread is detached, or reaped where it was killed meanwhile: an `execve` in
        // another thread kills the others and waits until their tracer reaps them, so one left
        // unreaped holds that exec, and every later seize of the process (`unwind_process`'s
        // next try, a library's next walk), for as long as this process lives. A thread not
        // stopped yet gets 20 ms more (`pause` waited STOP_TIMEOUT already); one killed after
        // it stopped (its detach fails) is waited for up to a second: it is exiting.
        let mut deadline = Instant::now() + Duration::from_millis(20);
        let mut extended = false;
        loop {
            let mut failed = false;
            self.attached.retain_mut(|a| {
                if !a.stopped {
                    return true;
                }
                if ptrace(PTRACE_DETACH, a.tid, 0, a.signal as usize).is_ok() {
                    return false;
                }
                // No longer in a ptrace-stop (SIGKILL ends one): its exit is reaped by
                // `wait_stopped`, which drops it then.
                a.stopped = false;
                failed = true;
                true
            });
            if failed && !extended {
                extended = true;
                deadline = Instant::now() + Duration::from_secs(1);
            }
            let now = Instant::now();
            if self.attached.is_empty() || now >= deadline {
                break;
            }
            self.wait_stopped(deadline - now);
        }
        // Still ours (in no stop, not exited): the kernel detaches them when this process
        // exits; `unwind_process`'s next try reaps them if they exit.
        self.leftover = self.attached.drain(..).map(|a| a.tid).collect();
        if let Some(t) = self.started.take() {
            self.paused += t.elapsed();
        }
        self.mem.close();
        self.restore_signals();
    }

    fn regs(&self, tid: u32) -> Option<Thread> {
        let mut words = [0u64; 64];
        let mut iov = libc::iovec {
            iov_base: words.as_mut_ptr().cast(),
            iov_len: std::mem::size_of_val(&words),
        };
        ptrace(
            PTRACE_GETREGSET,
            tid,
            NT_PRSTATUS,
            &mut iov as *mut libc::iovec as usize,
        )
        .ok()?;
        let n = (iov.iov_len / 8).min(words.len());
        thread_from_regset(HOST_ARCH, tid, &words[..n])
    }
}

impl offline::Pause for Stopper {
    type Error = ProcessError;

    fn pause(&mut self, _core: &Core) -> Result<Vec<Thread>, ProcessError> {
        self.block_signals();
        self.started = Some(Instant::now());
        let reaper = Reaper::start();
        // A previous try's threads that are still ours: an exit of theirs must be reaped too.
        reaper
            .tids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(&mut self.leftover);
        self.seized = Some(reaper.tids.clone());
        let attached = (|| {
            // Seize and interrupt every listed thread, wait for them to stop, list again: a
            // thread may have been created by one that was still running. Once a listing finds
            // nothing new, every thread is stopped and none can be created. A process that
            // creates threads without end is cut off after 16 rounds; the wait for stops is
            // bounded by STOP_TIMEOUT in all.
            let deadline = Instant::now() + STOP_TIMEOUT;
            for _ in 0..16 {
                self.relist = false;
                let new = self.attach_new()?;
                self.wait_stopped(deadline.saturating_duration_since(Instant::now()));
                if !new && !self.relist {
                    break;
                }
            }
            Ok(())
        })();
        self.seized = None;
        reaper.stop();
        if let Err(e) = attached {
            self.detach_all();
            return Err(e);
        }
        if self.attached.is_empty() {
            self.detach_all();
            return Err(if self.only.is_empty() {
                ProcessError::Exited(self.pid)
            } else {
                ProcessError::NoSuchThread(self.pid, self.only[0])
            });
        }
        self.left_out = self
            .attached
            .iter()
            .filter(|a| !a.stopped)
            .map(|a| a.tid)
            .collect();
        let vmas = read_maps(self.mem.pid).ok();
        if let Some(v) = &vmas {
            if code_mappings(v) != self.code {
                if self.strict {
                    self.detach_all();
                    return Err(ProcessError::CodeChanged(self.pid));
                }
                self.code_changed = true;
            }
        }
        self.mem.open(vmas);
        let threads: Vec<Thread> = self
            .attached
            .iter()
            .filter(|a| a.stopped)
            .filter_map(|a| self.regs(a.tid))
            .collect();
        self.mem
            .prefetch(&threads.iter().map(|t| t.regs.sp).collect::<Vec<_>>());
        Ok(threads)
    }

    fn resume(&mut self) {
        self.detach_all();
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// A thread's registers from a `PTRACE_GETREGSET` `NT_PRSTATUS` buffer, as 64-bit words:
/// x86_64 `struct user_regs_struct` (27 words, `fs_base` the 22nd), aarch64 `struct
/// user_pt_regs` (x0..x30, sp, pc, pstate). `None` if the buffer is too short.
pub fn thread_from_regset(arch: ArchKind, tid: u32, w: &[u64]) -> Option<Thread> {
    match arch {
        ArchKind::X86_64 => {
            use x86_64::user_regs as r;
            if w.len() <= r::FS_BASE {
                return None;
            }
            Some(Thread {
                tid,
                regs: Regs {
                    pc: w[r::RIP],
                    sp: w[r::RSP],
                    fp: w[r::RBP],
                    lr: w[r::R11],
                },
                tls: w[r::FS_BASE],
                x28: 0,
                signal: None,
            })
        }
        ArchKind::Aarch64 => {
            use aarch64::user_regs as r;
            if w.len() <= r::PC {
                return None;
            }
            Some(Thread {
                tid,
                regs: Regs {
                    pc: w[r::PC],
                    sp: w[r::SP],
                    fp: w[r::FP],
                    lr: w[r::LR],
                },
                tls: 0,
                x28: w[28],
                signal: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proc_file_of_a_reaped_process_means_gone() {
        use std::io::{Error, ErrorKind};
        assert!(gone(&Error::from_raw_os_error(libc::ESRCH)));
        assert!(gone(&Error::from(ErrorKind::NotFound)));
        assert!(!gone(&Error::from_raw_os_error(libc::EACCES)));
        assert!(!gone(&Error::from_raw_os_error(libc::EIO)));
    }

    #[test]
    fn x86_64_regset() {
        let mut w = [0u64; 27];
        for (i, v) in w.iter_mut().enumerate() {
            *v = 0x1000 + i as u64;
        }
        let t = thread_from_regset(ArchKind::X86_64, 7, &w).unwrap();
        assert_eq!(t.tid, 7);
        assert_eq!(t.regs.pc, 0x1000 + 16); // rip
        assert_eq!(t.regs.sp, 0x1000 + 19); // rsp
        assert_eq!(t.regs.fp, 0x1000 + 4); // rbp
        assert_eq!(t.tls, 0x1000 + 21); // fs_base
        assert!(thread_from_regset(ArchKind::X86_64, 7, &w[..21]).is_none());
    }

    #[test]
    fn aarch64_regset() {
        let mut w = [0u64; 34];
        for (i, v) in w.iter_mut().enumerate() {
            *v = 0x2000 + i as u64;
        }
        let t = thread_from_regset(ArchKind::Aarch64, 9, &w).unwrap();
        assert_eq!(t.regs.pc, 0x2000 + 32);
        assert_eq!(t.regs.sp, 0x2000 + 31);
        assert_eq!(t.regs.fp, 0x2000 + 29);
        assert_eq!(t.regs.lr, 0x2000 + 30);
        assert_eq!(t.x28, 0x2000 + 28);
        assert_eq!(t.tls, 0);
        assert!(thread_from_regset(ArchKind::Aarch64, 9, &w[..32]).is_none());
    }

    #[test]
    fn maps_lines() {
        let text = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 1234                       /usr/bin/my prog
55d0c0a02000-55d0c0a05000 r-xp 00002000 08:01 1234                       /usr/bin/my prog
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
7ffd1000-7ffd3000 r-xp 00000000 00:00 0                          [vdso]
7f1000000000-7f1000001000 ---p 00000000 00:00 0
7f2000000000-7f2000001000 r-xp 00001000 08:01 99 /tmp/x (deleted)
garbage
0-0 r--p 0 0 0
";
        let v = parse_maps(text);
        assert_eq!(v.len(), 6);
        assert_eq!(v[0].range, Range::new(0x7ffd1000, 0x7ffd3000));
        assert_eq!(v[0].path, "[vdso]");
        let exe: Vec<_> = v.iter().filter(|m| m.path == "/usr/bin/my prog").collect();
        assert_eq!(exe.len(), 2);
        assert!(exe[1].exec && exe[1].read && exe[1].offset == 0x2000);
        assert!(!exe[0].exec);
        let anon = v.iter().find(|m| m.range.lo == 0x7f0000000000).unwrap();
        assert_eq!(anon.path, "");
        assert!(
            !v.iter()
                .find(|m| m.range.lo == 0x7f1000000000)
                .unwrap()
                .read
        );
        assert_eq!(exe[1].file_id, (8, 1, 1234));
        let (maps, opened_as, _) = module_mappings(std::process::id(), &v);
        // Both mappings of the executable (the r-- one places it), the deleted file, named as
        // the process names it and opened through map_files; no anonymous memory, no vDSO.
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].path, "/usr/bin/my prog"); // found nowhere: kept as it is
        let deleted = &maps[2].path;
        assert!(deleted.ends_with(" (deleted)"), "{deleted}");
        let through = opened_as.iter().find(|(p, _)| p == deleted).unwrap();
        assert!(through.1.ends_with("/map_files/7f2000000000-7f2000001000"));
        // This process's own maps: every code file resolves to a path with its inode.
        let mine = read_maps(std::process::id()).unwrap();
        let (maps, opened_as, _) = module_mappings(std::process::id(), &mine);
        assert!(maps.iter().any(|m| m.path.contains("libc.so")));
        for m in &maps {
            let file = opened_as
                .iter()
                .find(|(p, _)| *p == m.path)
                .map_or(m.path.as_str(), |(_, f)| f.as_str());
            assert!(std::fs::metadata(file).is_ok(), "{}", m.path);
        }
    }

    #[test]
    fn code_mappings_are_the_modules_code_and_the_vdso() {
        let before = parse_maps(
            "\
55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 1234 /usr/bin/prog
55d0c0a02000-55d0c0a05000 r-xp 00002000 08:01 1234 /usr/bin/prog
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7f3000000000-7f3000001000 rwxp 00000000 00:00 0
7ffd1000-7ffd3000 r-xp 00000000 00:00 0 [vdso]
",
        );
        let code = code_mappings(&before);
        assert_eq!(
            code,
            vec![
                (Range::new(0x7ffd1000, 0x7ffd3000), 0, (0, 0, 0)),
                (
                    Range::new(0x55d0c0a02000, 0x55d0c0a05000),
                    0x2000,
                    (8, 1, 1234)
                ),
            ]
        );
        // A JIT's new anonymous code, more data, a stack: the modules still hold.
        let mut more = before.clone();
        more.extend(parse_maps(
            "7f4000000000-7f4000001000 r-xp 00000000 00:00 0\n\
             7f5000000000-7f5000001000 rw-p 00000000 08:01 77 /var/db/data\n",
        ));
        assert_eq!(code_mappings(&more), code);
        // The same program executed again at another address, or a library loaded: stale.
        let again = parse_maps(
            "5600c0a02000-5600c0a05000 r-xp 00002000 08:01 1234 /usr/bin/prog\n\
             7ffd1000-7ffd3000 r-xp 00000000 00:00 0 [vdso]\n",
        );
        assert_ne!(code_mappings(&again), code);
        let mut loaded = before.clone();
        loaded.extend(parse_maps(
            "7f6000000000-7f6000001000 r-xp 00000000 08:01 88 /usr/lib/libz.so\n",
        ));
        assert_ne!(code_mappings(&loaded), code);
    }

    #[test]
    fn a_signal_caught_while_traced_is_delivered_on_detach() {
        // A shell that exits 7 on SIGUSR1. Seized (not interrupted), it takes the signal into
        // a signal-delivery-stop; the detach must deliver it.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap 'exit 7' USR1; while :; do sleep 0.01; done"])
            .spawn()
            .unwrap();
        let pid = child.id();
        // Until the trap is set (SIGUSR1 caught, in /proc/PID/status's SigCgt mask).
        let caught = || {
            let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            st.lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                .is_some_and(|m| m & (1 << (libc::SIGUSR1 - 1)) != 0)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !caught() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(caught(), "the shell set no trap");
        ptrace(PTRACE_SEIZE, pid, 0, 0).unwrap();
        let mut s = Stopper {
            pid,
            only: vec![pid],
            attached: vec![Attached {
                tid: pid,
                stopped: false,
                signal: 0,
            }],
            mem: Arc::new(ProcMemory::new(pid, Vec::new())),
            started: None,
            paused: Duration::ZERO,
            old_mask: None,
            left_out: Vec::new(),
            seized: None,
            relist: false,
            code: Vec::new(),
            strict: false,
            code_changed: false,
            leftover: Vec::new(),
        };
        // SAFETY: kill takes integers.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
        // Until the signal has stopped the tracee (left to be collected: WNOWAIT). Else, on a
        // loaded machine, wait_stopped's interrupt after 50 ms can stop it first, the signal
        // still pending (also delivered on detach, but not the path this test is about).
        // SAFETY: siginfo_t is plain data that waitid writes.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes `info`; the flags ask for a stop left in place.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WSTOPPED | libc::WNOWAIT | libc::__WALL,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        s.wait_stopped(Duration::from_secs(5));
        assert!(s.attached[0].stopped);
        assert_eq!(s.attached[0].signal, libc::SIGUSR1);
        s.detach_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(7),
            "the signal was lost"
        );
    }

    #[test]
    fn stat_fields() {
        let s = "123 (a (weird) name) S 1 123 123 0 -1 4194560 100 0 0 0";
        assert_eq!(parse_stat(s), Some(('S', 4194560)));
        assert_eq!(parse_stat("1 (x) R"), None);
    }

    /// Where a seccomp filter refuses `process_vm_readv` and reading `/proc/PID/mem` (a
    /// sandbox), a read fails and [`ProcMemory::refusal`] says why (a `--pid` walk then warns:
    /// it showed one frame and "unreadable frame record", found by outside use in the
    /// twenty-sixth round). The filter is installed on a thread of its own (seccomp filters and
    /// no_new_privs are per thread without TSYNC), which reads this process's memory.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_refused_memory_read_says_why() {
        let data = [7u64; 512];
        let at = data.as_ptr() as u64;
        let vmas = read_maps(std::process::id()).unwrap();
        let (read, why) = std::thread::spawn(move || {
            const RET_ERRNO_EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
            const RET_ALLOW: u32 = 0x7fff_0000;
            let stmt = |code: u16, k: u32| libc::sock_filter {
                code,
                jt: 0,
                jf: 0,
                k,
            };
            let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
                code: 0x15, // BPF_JMP | BPF_JEQ | BPF_K
                jt,
                jf,
                k,
            };
            let mut prog = [
                stmt(0x20, 0), // BPF_LD | BPF_W | BPF_ABS: seccomp_data.nr
                jeq(libc::SYS_process_vm_readv as u32, 2, 0),
                jeq(libc::SYS_pread64 as u32, 1, 0),
                stmt(0x06, RET_ALLOW), // BPF_RET | BPF_K
                stmt(0x06, RET_ERRNO_EPERM),
            ];
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_mut_ptr(),
            };
            // SAFETY: prctl with these arguments only changes this thread's own syscall
            // filtering: no_new_privs, then a filter program valid for the call.
            unsafe {
                assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
                assert_eq!(
                    libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &fprog as *const libc::sock_fprog
                    ),
                    0
                );
            }
            let m = ProcMemory::new(std::process::id(), vmas);
            m.open(None);
            let mut b = [0u8; 8];
            (m.read(at, &mut b), m.refusal())
        })
        .join()
        .unwrap();
        assert!(!read);
        let why = why.expect("the refusal is said");
        assert!(
            why.starts_with("process_vm_readv: Operation not permitted; /proc/"),
            "{why}"
        );
        assert!(why.ends_with("/mem: Operation not permitted"), "{why}");
        // Unfiltered, nothing is refused.
        let m = ProcMemory::new(std::process::id(), read_maps(std::process::id()).unwrap());
        m.open(None);
        let mut b = [0u8; 8];
        assert!(m.read(at, &mut b));
        assert_eq!(m.refusal(), None);
        std::hint::black_box(data);
    }

    #[test]
    fn reads_this_process_memory() {
        // Our own memory, read as another process's would be (process_vm_readv on ourselves).
        let data: Vec<u64> = (0..2048u64).map(|i| i * 3).collect();
        let vmas = read_maps(std::process::id()).unwrap();
        let m = ProcMemory::new(std::process::id(), vmas);
        let at = data.as_ptr() as u64;
        let mut b = [0u8; 8];
        assert!(!m.read(at, &mut b), "closed until a stop opens it");
        m.open(None);
        assert!(m.read(at + 8 * 1000, &mut b));
        assert_eq!(u64::from_le_bytes(b), 3000);
        // The same page again: from the cache, no system call.
        let calls = m.syscalls();
        assert!(m.read(at + 8 * 1001, &mut b));
        assert_eq!(u64::from_le_bytes(b), 3003);
        assert_eq!(m.syscalls(), calls);
        // Across page boundaries.
        let mut big = vec![0u8; 8 * 2048];
        assert!(m.read(at, &mut big));
        assert_eq!(
            u64::from_le_bytes(big[8 * 2047..].try_into().unwrap()),
            2047 * 3
        );
        // Unmapped memory and closed memory are refused.
        assert!(!m.read(8, &mut b));
        assert!(m.mapping(at).is_some());
        m.close();
        assert!(!m.read(at, &mut b));
    }
}

//! Unwinding every thread of an ELF core: the engine behind `unwind stack`.
//!
//! Modules come from the core's `NT_FILE` notes (opened from disk, under `--sysroot` when
//! given) or, for qemu-user cores that have none, from the executable given with `--exe`
//! (placed with the auxiliary vector's `AT_PHDR`). The transition table is built from what the
//! modules and the core hold:
//! - signal frames: the sigreturn trampoline found by its instruction bytes, in the modules'
//!   code (glibc's `__restore_rt`) and in the core's executable segments (the vDSO's
//!   `__kernel_rt_sigreturn`, qemu's trampoline page);
//! - Go: `runtime.systemstack` and `runtime.asmcgocall` keep the frame pointer while they run a
//!   function on the g0 stack (`src/runtime/asm_amd64.s`, `asm_arm64.s`), so the chain on g0
//!   links back into the goroutine's stack: [`Rule::ContinueChain`]. `mcall` and `morestack`
//!   cut the chain (they clear or zero it on g0) and are not crossed.

use crate::arch::{Aarch64, Arch, ArchKind, X86_64};
use crate::core_file::{Core, CoreError, Thread};
use crate::frame::{Frame, StopReason, Trace};
use crate::memory::Range;
use crate::policy::{Classifier, Policy};
use crate::symbols::Symbolizer;
use crate::transition::{Id, Rule, Transition, TransitionTable, Transitions};
use crate::walk::{Mode, Start, Walker};
use std::path::{Path, PathBuf};

/// Most frames walked per thread.
pub const MAX_FRAMES: usize = 1024;

/// What to unwind and how.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The executable (needed for qemu-user cores, which list no mapped files).
    pub exe: Option<PathBuf>,
    /// Where to find the core's files (cross-architecture cores).
    pub sysroot: Option<PathBuf>,
    /// Unwinding mode.
    pub mode: Mode,
    /// A policy to apply to each thread's frames.
    pub policy: Option<Policy>,
}

/// One thread's result.
#[derive(Clone, Debug)]
pub struct ThreadStack {
    /// Thread id.
    pub tid: u32,
    /// Frames, leaf first (after the policy, if any).
    pub frames: Vec<Frame>,
    /// Did the walk (or the policy's max depth) stop early?
    pub truncated: bool,
    /// Why the walk stopped.
    pub stop: StopReason,
}

/// Everything `unwind stack` prints.
pub struct Report {
    /// The core's architecture.
    pub arch: ArchKind,
    /// Every thread.
    pub threads: Vec<ThreadStack>,
    /// The modules, for symbolising.
    pub symbols: Symbolizer,
    /// Transitions used: id → name.
    pub transitions: Vec<(Id, &'static str)>,
    /// Warnings (missing modules, unavailable modes).
    pub warnings: Vec<String>,
}

/// Builds modules for a core.
pub fn symbols_for(core: &Core, opts: &Options) -> Symbolizer {
    let mut s = Symbolizer::from_mappings(&core.mappings, opts.sysroot.as_deref());
    if let Some(exe) = &opts.exe {
        let display = exe.display().to_string();
        let already = s.modules().iter().any(|m| m.path == display);
        if !already {
            s.add(exe, &display, exe_placement(core, exe));
        }
    }
    s
}

/// Where the executable was loaded, from `AT_PHDR` (the runtime address of its program
/// headers) and the file's own `e_phoff`: the runtime address of file offset `e_phoff`.
fn exe_placement(core: &Core, exe: &Path) -> Option<(u64, u64)> {
    const AT_PHDR: u64 = 3;
    let phdr = core.aux(AT_PHDR)?;
    let data = std::fs::read(exe).ok()?;
    let phoff = u64::from_le_bytes(data.get(0x20..0x28)?.try_into().ok()?);
    Some((phdr, phoff))
}

/// The transition table for a core: signal trampolines and Go's stack switches.
pub fn transitions_for(
    core: &Core,
    symbols: &Symbolizer,
) -> (TransitionTable, Vec<(Id, &'static str)>, Vec<Id>) {
    let mut table = TransitionTable::new();
    let mut names = Vec::new();
    let mut go_switches = Vec::new();
    let pattern: &[u8] = match core.arch {
        ArchKind::X86_64 => &crate::arch::x86_64::SIGRETURN_CODE,
        ArchKind::Aarch64 => &crate::arch::aarch64::SIGRETURN_CODE,
    };
    let mut add = |table: &mut TransitionTable, range: Range, rule: Rule, name: &'static str| {
        let id = table.len() as Id + 1;
        table.insert(Transition { range, rule, id });
        names.push((id, name));
        id
    };
    let mut trampolines: Vec<u64> = symbols
        .modules()
        .iter()
        .flat_map(|m| m.find_code(pattern))
        .collect();
    for (addr, bytes) in core.code_segments() {
        for (i, w) in bytes.windows(pattern.len()).enumerate() {
            if w == pattern {
                trampolines.push(addr + i as u64);
            }
        }
    }
    trampolines.sort_unstable();
    trampolines.dedup();
    for t in trampolines.into_iter().take(16) {
        add(
            &mut table,
            Range::new(t, t + 1),
            Rule::SignalFrame,
            "signal frame",
        );
    }
    for m in symbols.modules() {
        for (raw, name) in [
            ("runtime.systemstack.abi0", "go runtime.systemstack"),
            ("runtime.systemstack", "go runtime.systemstack"),
            ("runtime.asmcgocall.abi0", "go runtime.asmcgocall"),
            ("runtime.asmcgocall", "go runtime.asmcgocall"),
        ] {
            if let Some(r) = m.function(raw) {
                if table.lookup(r.lo).is_none() {
                    let id = add(&mut table, r, Rule::ContinueChain, name);
                    go_switches.push(id);
                }
            }
        }
    }
    (table, names, go_switches)
}

/// Is this a Go program (its modules define `runtime.systemstack`)?
fn is_go(symbols: &Symbolizer) -> bool {
    symbols.modules().iter().any(|m| {
        m.function("runtime.systemstack.abi0").is_some()
            || m.function("runtime.systemstack").is_some()
    })
}

/// The classifier a core's policy uses: Go programs' runtime is package `runtime`; for Rust and
/// C programs, the standard libraries' and the C runtime's frames.
pub fn classifier_for(symbols: &Symbolizer, go_switches: &[Id]) -> Classifier {
    let mut c = Classifier::new();
    let prefixes: &[&str] = if is_go(symbols) {
        &["runtime."]
    } else {
        &[
            "std::", "core::", "alloc::", "__libc", "__GI_", "_start", "unwind::",
        ]
    };
    for m in symbols.modules() {
        c.add_symbol_prefixes(m.functions(), prefixes);
    }
    for &id in go_switches {
        c.add_system_switch(id);
    }
    c
}

/// Unwinds every thread of `core`.
pub fn unwind_core(core: &Core, opts: &Options) -> Result<Report, CoreError> {
    let symbols = symbols_for(core, opts);
    let mut warnings: Vec<String> = symbols
        .missing
        .iter()
        .map(|(p, e)| format!("module {p} not available ({e}): its frames stay unsymbolised"))
        .collect();
    if core.mappings.is_empty() && opts.exe.is_none() {
        warnings.push("the core lists no mapped files (a qemu-user core?): pass --exe".into());
    }
    let mode = opts.mode;
    let unwinder = if mode != Mode::FramePointer {
        let (u, failed) = cfi_for(core, &symbols, opts);
        for (p, e) in failed {
            warnings.push(format!("module {p}: no usable CFI ({e})"));
        }
        u
    } else {
        crate::dwarf::Unwinder::new()
    };
    let (table, transitions, go_switches) = transitions_for(core, &symbols);
    let classifier = opts.policy.map(|_| classifier_for(&symbols, &go_switches));
    let mut threads = Vec::new();
    for t in &core.threads {
        let mut buf = vec![Frame::EMPTY; MAX_FRAMES];
        let trace = walk_thread(core, t, &table, &unwinder, mode, &mut buf);
        buf.truncate(trace.len);
        let mut truncated = trace.truncated();
        if let (Some(p), Some(c)) = (&opts.policy, &classifier) {
            let kept = p.apply(&buf, c);
            truncated |= kept.truncated;
            buf = kept.slice(&buf).to_vec();
        }
        threads.push(ThreadStack {
            tid: t.tid,
            frames: buf,
            truncated,
            stop: trace.stop,
        });
    }
    Ok(Report {
        arch: core.arch,
        threads,
        symbols,
        transitions,
        warnings,
    })
}

/// The prepared CFI of a core's modules (opened from disk, at their biases).
pub fn cfi_for(
    core: &Core,
    symbols: &Symbolizer,
    opts: &Options,
) -> (
    crate::dwarf::Unwinder,
    Vec<(String, crate::dwarf::CfiError)>,
) {
    let modules: Vec<(String, u64)> = symbols
        .modules()
        .iter()
        .map(|m| (m.path.clone(), m.bias))
        .collect();
    crate::modules::for_modules(core.arch, &modules, opts.sysroot.as_deref())
}

fn walk_thread(
    core: &Core,
    t: &Thread,
    table: &TransitionTable,
    cfi: &crate::dwarf::Unwinder,
    mode: Mode,
    buf: &mut [Frame],
) -> Trace {
    let mut mem = core.memory();
    match core.arch {
        ArchKind::X86_64 => walk_arch::<X86_64>(t, &mut mem, table, cfi, mode, 0, buf),
        ArchKind::Aarch64 => {
            walk_arch::<Aarch64>(t, &mut mem, table, cfi, mode, core.pac_mask, buf)
        }
    }
}

fn walk_arch<A: Arch>(
    t: &Thread,
    mem: &mut crate::core_file::CoreMemory<'_>,
    table: &TransitionTable,
    cfi: &crate::dwarf::Unwinder,
    mode: Mode,
    pac_mask: u64,
    buf: &mut [Frame],
) -> Trace {
    let mut cache = Box::new(crate::dwarf::RuleCache::new());
    let mut w: Walker<A, _, _> =
        Walker::with_cfi(table, crate::dwarf::Stepper::new(cfi, &mut cache), mode);
    w.pac_mask = pac_mask;
    let mut regs = t.regs;
    regs.pc = A::strip_ra(regs.pc, pac_mask);
    w.walk(Start::exact(regs), mem, buf)
}

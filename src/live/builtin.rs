//! The built-in transitions: what [`init`] finds in the running process and registers.
//!
//! | switch | found by | rule |
//! |---|---|---|
//! | signal frame, x86_64 (glibc/musl `__restore_rt`) | symbol, and the bytes `mov $15,%rax; syscall` in libc's code | [`Rule::SignalFrame`] |
//! | signal frame, aarch64 (vDSO `__kernel_rt_sigreturn`, libc restorers) | vDSO `.dynsym`, and the bytes `mov x8,#139; svc #0` in libc's code | [`Rule::SignalFrame`] |
//! | [`crate::system_stack`] | its own label | `SavedAt` (see that module) |
//! | psm `rust_psm_on_stack` (`stacker::maybe_grow`, `psm::on_stack`) | symbol | [`Rule::ContinueChain`] |
//! | corosensei `stack_call_trampoline` (`corosensei::on_stack`) | symbol | [`Rule::ContinueChain`] |
//! | corosensei `stack_init_trampoline_return` (coroutines) | symbol | `SavedAt { base: LinkPlus(24), pc: 8, fp: 0 }` (aarch64: `LinkPlus(32)`) |
//!
//! Symbols are looked up in the symbol tables (`.symtab`, then `.dynsym`) of every loaded
//! object's file, so they are found whether or not this crate depends on psm or corosensei, in
//! whichever version the program links; a stripped program loses the psm and corosensei entries
//! (their walks then stop at the switch), not the signal frames, which are also found by their
//! instruction bytes.
//!
//! Coroutine and segment stacks must also be readable by live captures: psm/stacker segments are
//! found through `/proc/self/maps` when a capture starts on one, coroutine stacks should be
//! registered ([`crate::coroutine::register_stack`]).

mod elf;

use crate::memory::Range;
use crate::switches::{self, Covers, KnownSwitch};
use crate::transition::{self, Id, Rule};
use std::sync::OnceLock;

/// How a built-in transition was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FoundBy {
    /// A symbol in an object's symbol table.
    Symbol,
    /// The trampoline's instruction bytes, found by scanning an object's executable segments.
    Bytes,
    /// A symbol in the vDSO's dynamic symbol table.
    Vdso,
    /// The address of code in this crate.
    Own,
}

/// One registered built-in transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Builtin {
    /// What it is (also the name it was registered with).
    pub name: &'static str,
    /// The return addresses it covers.
    pub range: Range,
    /// How it was found.
    pub found_by: FoundBy,
    /// Its id in the live registry.
    pub id: Id,
}

/// What [`init`] registered.
#[derive(Clone, Debug, Default)]
pub struct Builtins {
    /// Every registered entry, in the order found.
    pub entries: Vec<Builtin>,
}

impl Builtins {
    /// The entries whose name starts with `prefix`.
    pub fn named<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Builtin> + 'a {
        self.entries
            .iter()
            .filter(move |b| b.name.starts_with(prefix))
    }
}

/// Name of the signal-frame entries.
pub const SIGNAL_FRAME: &str = "signal frame";
static BUILTINS: OnceLock<Builtins> = OnceLock::new();

/// Registers the built-in transitions (signal frames, the system stack, psm, corosensei) and
/// records this thread's stack bounds ([`crate::init_thread`]). Call it once, early, outside
/// signal context: the first call reads the loaded objects' symbol tables (file I/O, allocation,
/// the loader lock). Later calls return the same result at the cost of an atomic load (and
/// [`crate::init_thread`]'s thread-local check).
///
/// With the `dwarf` feature the first call also prepares the loaded modules' CFI
/// ([`crate::modules::refresh`]) unless something already did. In a build without frame
/// pointers (x86_64 without `-C force-frame-pointers=yes`, as a dependent crate's ordinary
/// build is) [`crate::capture`] walks by CFI and returned nothing until it was prepared; with
/// frame pointers a signal's capture ([`crate::capture_from_ucontext`]) walks Hybrid once it
/// is, and finds the caller of an interrupted function that keeps no frame record (libc's)
/// where a frame-record walk skipped it (found by outside use: before, only a build without
/// frame pointers prepared it here). Call [`crate::modules::refresh`] again after `dlopen`.
pub fn init() -> &'static Builtins {
    let b = init_switches();
    #[cfg(feature = "dwarf")]
    crate::modules::prepare_unless_prepared();
    b
}

/// [`init`] without preparing the CFI (what [`crate::modules::refresh`] runs before it prepares
/// it itself).
pub(crate) fn init_switches() -> &'static Builtins {
    crate::live::init_thread();
    crate::transition::forget_readers_after_fork();
    BUILTINS.get_or_init(discover)
}

/// What [`init`] registered, if it ran.
pub fn builtins() -> Option<&'static Builtins> {
    BUILTINS.get()
}

struct Object {
    /// Path of the file ("" for the vDSO and objects without one).
    path: String,
    is_main: bool,
    bias: u64,
    /// Executable PT_LOAD segments, as mapped.
    code: Vec<Range>,
}

fn objects() -> Vec<Object> {
    let mut out = Vec::new();
    crate::live::loaded::for_each(|o| {
        let code = o
            .phdrs
            .iter()
            .filter(|ph| ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0)
            .filter_map(|ph| {
                let lo = o.bias.wrapping_add(ph.p_vaddr);
                let hi = lo.checked_add(ph.p_filesz.min(ph.p_memsz))?;
                Some(Range::new(lo, hi))
            })
            .collect();
        out.push(Object {
            path: o.name.to_string_lossy().into_owned(),
            is_main: o.is_main,
            bias: o.bias,
            code,
        });
    });
    out
}

fn discover() -> Builtins {
    let mut found: Vec<(&'static str, Range, Rule, FoundBy)> = Vec::new();
    let objs = objects();

    // Symbols in every object's file: the signal trampoline and the switches known by symbol
    // (but our own system stack, which is registered by its label below).
    let switches: Vec<KnownSwitch> = switches::BY_SYMBOL
        .into_iter()
        .filter(|k| k.symbol != switches::SYSTEM_STACK_SYMBOL)
        .collect();
    let mut names = vec!["__restore_rt"];
    names.extend(switches.iter().map(|k| k.symbol));
    let arch = crate::ArchKind::native().unwrap_or(crate::ArchKind::X86_64);
    let mut libc_like = Vec::new();
    for o in &objs {
        let path = if o.is_main {
            "/proc/self/exe"
        } else {
            o.path.as_str()
        };
        if path.is_empty() {
            continue;
        }
        if o.path.contains("libc.") || o.path.contains("ld-musl") {
            libc_like.push(o);
        }
        let Ok(f) = std::fs::File::open(path) else {
            continue;
        };
        let mut out = vec![None; names.len()];
        elf::find_symbols(&f, &names, &mut out);
        let at = |s: elf::Sym, min: u64| {
            let lo = o.bias.wrapping_add(s.value);
            Range::new(lo, lo.saturating_add(s.size.max(min)))
        };
        if let Some(s) = out[0] {
            found.push((
                SIGNAL_FRAME,
                at(s, sigreturn_code().len() as u64),
                Rule::SignalFrame,
                FoundBy::Symbol,
            ));
        }
        for (k, s) in switches.iter().zip(&out[1..]) {
            let Some(s) = *s else { continue };
            let range = match k.covers {
                Covers::Function => at(s, 1),
                // A label: exactly the return address.
                Covers::Label => {
                    let lo = o.bias.wrapping_add(s.value);
                    Range::new(lo, lo + 1)
                }
            };
            found.push((k.name, range, k.rule(arch), FoundBy::Symbol));
        }
    }

    // The sigreturn bytes in libc's code (or, for a static program, the program's own).
    let scan: Vec<&Object> = if libc_like.is_empty() {
        objs.iter().filter(|o| o.is_main).collect()
    } else {
        libc_like
    };
    for o in scan {
        for seg in &o.code {
            // SAFETY: an executable PT_LOAD segment of a loaded object, as the loader reports it
            // (file-backed part only): mapped readable for as long as the object stays loaded,
            // and libc and the main program are never unloaded.
            let bytes = unsafe {
                core::slice::from_raw_parts(seg.lo as *const u8, (seg.hi - seg.lo) as usize)
            };
            for at in find_all(bytes, sigreturn_code()) {
                let lo = seg.lo + at as u64;
                found.push((
                    SIGNAL_FRAME,
                    Range::new(lo, lo + sigreturn_code().len() as u64),
                    Rule::SignalFrame,
                    FoundBy::Bytes,
                ));
            }
        }
    }

    #[cfg(target_arch = "aarch64")]
    if let Some(r) = vdso_sigreturn() {
        found.push((SIGNAL_FRAME, r, Rule::SignalFrame, FoundBy::Vdso));
    }

    let mut entries = Vec::new();
    for (name, range, rule, found_by) in found {
        // The same trampoline found twice (by symbol and by bytes): register it once.
        if entries
            .iter()
            .any(|b: &Builtin| b.name == name && b.range.lo == range.lo)
        {
            continue;
        }
        if let Ok(id) = transition::register(range, rule, name) {
            entries.push(Builtin {
                name,
                range,
                found_by,
                id,
            });
        }
    }
    crate::system_stack::register_transition();
    if let Some(id) = crate::system_stack::transition_id() {
        let ra = crate::system_stack::return_address();
        entries.push(Builtin {
            name: switches::SYSTEM_STACK.name,
            range: Range::new(ra, ra + 1),
            found_by: FoundBy::Own,
            id,
        });
    }
    Builtins { entries }
}

fn sigreturn_code() -> &'static [u8] {
    #[cfg(target_arch = "aarch64")]
    {
        &crate::arch::aarch64::SIGRETURN_CODE
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        &crate::arch::x86_64::SIGRETURN_CODE
    }
}

/// Offsets of every occurrence of `needle` in `hay` (instruction-aligned on aarch64).
fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    let step = if cfg!(target_arch = "aarch64") { 4 } else { 1 };
    (0..hay.len().saturating_sub(needle.len() - 1))
        .step_by(step)
        .filter(move |&i| hay[i] == needle[0] && hay[i..].starts_with(needle))
}

// The vDSO is only searched on aarch64 (x86_64's has no sigreturn); the unit tests read it everywhere.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
/// The mapping of the vDSO (`[vdso]` in /proc/self/maps) starting at `base`.
fn vdso_mapping(base: u64) -> Option<Range> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    for line in maps.lines() {
        let range = line.split_whitespace().next()?;
        let (lo, hi) = range.split_once('-')?;
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).ok()?,
            u64::from_str_radix(hi, 16).ok()?,
        );
        if lo == base && hi > lo {
            return Some(Range::new(lo, hi));
        }
    }
    None
}

#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
/// Looks `name` up in the in-memory vDSO's symbol tables; returns its runtime address and size.
pub(crate) fn vdso_symbol(name: &str) -> Option<(u64, u64)> {
    // SAFETY: getauxval has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    if base == 0 {
        return None;
    }
    let map = vdso_mapping(base)?;
    // SAFETY: the vDSO is mapped readable at `map` for the life of the process (the kernel maps
    // it before the program starts and never unmaps it).
    let image =
        unsafe { core::slice::from_raw_parts(map.lo as *const u8, (map.hi - map.lo) as usize) };
    let mut out = [None];
    elf::find_symbols(image, &[name], &mut out);
    let s = out[0]?;
    let link_base = elf::first_load_vaddr(image)?;
    Some((base.wrapping_add(s.value.wrapping_sub(link_base)), s.size))
}

#[cfg(target_arch = "aarch64")]
fn vdso_sigreturn() -> Option<Range> {
    let (lo, size) = vdso_symbol("__kernel_rt_sigreturn")?;
    let code = sigreturn_code();
    // SAFETY: `lo` lies in the vDSO's mapping (vdso_symbol read it from there) and the
    // trampoline is at least as long as its two instructions.
    let bytes = unsafe { core::slice::from_raw_parts(lo as *const u8, code.len()) };
    (bytes == code).then(|| Range::new(lo, lo + size.max(code.len() as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_all_occurrences() {
        let hay = [1u8, 2, 3, 1, 2, 3, 1, 2];
        assert_eq!(find_all(&hay, &[1, 2, 3]).collect::<Vec<_>>(), vec![0, 3]);
        assert_eq!(find_all(&hay[..2], &[1, 2, 3]).count(), 0);
    }

    #[test]
    fn reads_the_vdso() {
        // The x86_64 and aarch64 vDSOs both export clock_gettime.
        let name = if cfg!(target_arch = "aarch64") {
            "__kernel_clock_gettime"
        } else {
            "__vdso_clock_gettime"
        };
        let (addr, size) = vdso_symbol(name).expect("vDSO symbol");
        // SAFETY: getauxval has no preconditions.
        let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        let map = vdso_mapping(base).unwrap();
        assert!(map.contains(addr) && size > 0, "{addr:#x} in {map:?}");
        assert_eq!(vdso_symbol("no_such_symbol"), None);
    }

    #[test]
    fn init_registers_signal_frames_and_the_system_stack() {
        let b = init();
        assert!(std::ptr::eq(b, init()), "idempotent");
        let sig: Vec<_> = b.named(SIGNAL_FRAME).collect();
        assert!(!sig.is_empty(), "{b:?}");
        for s in &sig {
            // SAFETY: registered ranges point at code in a loaded object.
            let code = unsafe { core::slice::from_raw_parts(s.range.lo as *const u8, 8) };
            assert_eq!(&code[..8], &sigreturn_code()[..8]);
        }
        assert!(b.named("unwind::system_stack").count() == 1);
    }
}

//! Unwinding every thread of an ELF core: the engine behind `unwind stack`.
//!
//! Modules come from the core's `NT_FILE` notes (opened from disk, under `--sysroot` when
//! given). qemu-user cores have none: the executable is `--exe` or the auxv's `AT_EXECFN` path
//! (placed with `AT_PHDR`), the dynamic linker is the executable's `PT_INTERP` at `AT_BASE`, and
//! the shared libraries are read from the dynamic linker's link map (`DT_DEBUG` in the
//! executable's dynamic section, in the core's memory, points at `r_debug`). Code the core
//! lacks (kernel cores leave out unmodified text) is read from the modules' files.
//!
//! The transition table is built from what the modules and the core hold:
//! - signal frames: the sigreturn trampoline found by its instruction bytes, in the modules'
//!   code (glibc's `__restore_rt`) and in the core's executable segments (the vDSO's
//!   `__kernel_rt_sigreturn`, qemu's trampoline page);
//! - Go: `runtime.systemstack` and `runtime.asmcgocall` keep the frame pointer while they run a
//!   function on the g0 stack (`src/runtime/asm_amd64.s`, `asm_arm64.s`), so the chain on g0
//!   links back into the goroutine's stack: [`Rule::ContinueChain`]. On arm64 `systemstack`
//!   loads g0's own frame pointer, and `morestack` (both architectures) cuts the chain: there
//!   the walk continues from what the runtime saved in the goroutine's `g.sched` (see
//!   `GoRuntime`). `mcall` is not crossed (its callees detach the goroutine from the m). On amd64 the frame of
//!   the function that called `systemstack` (say `runtime.newproc`) is in no frame record;
//!   it is recovered from the goroutine's `g.sched` (see `GoRuntime`), cross-checked
//!   against the chain. A Go stack that ends in `runtime.goexit`, `runtime.mstart`,
//!   `runtime.rt0_go` or `runtime.mcall` is complete, not truncated.
//!
//! x86_64 threads stopped in a function prologue (`push %rbp`, or Go's `sub; mov %rbp; lea`
//! sequence, where debuggers put breakpoints) have their caller at the stack pointer: the
//! first step decodes the instruction at pc to find it.

use crate::arch::{Aarch64, Arch, ArchKind, X86_64};
use crate::core_file::{Core, CoreError, Thread};
use crate::frame::{Frame, StopReason, Trace};
use crate::memory::{Memory, Range};
use crate::policy::{Classifier, Policy};
use crate::symbols::Symbolizer;
use crate::transition::{Id, Rule, Transition, TransitionTable, Transitions};
use crate::walk::{Mode, Start, Walker};
use std::path::{Path, PathBuf};

/// Most frames walked per thread.
pub const MAX_FRAMES: usize = 1024;

/// Most frames walked over all threads of a core (16 bytes each, and a line of output): a
/// hostile core may hold any number of threads sharing one deep stack. Past it, each thread
/// shows its leaf frame only.
pub const MAX_TOTAL_FRAMES: usize = 1 << 18;

/// The Go runtime's functions the walks look up by name.
const GO_NAMES: [&str; 15] = [
    "runtime.systemstack.abi0",
    "runtime.systemstack",
    "runtime.asmcgocall.abi0",
    "runtime.asmcgocall",
    "runtime.mstart.abi0",
    "runtime.mstart",
    "runtime.goexit.abi0",
    "runtime.goexit",
    "runtime.rt0_go.abi0",
    "runtime.rt0_go",
    "runtime.mcall",
    "runtime.morestack.abi0",
    "runtime.morestack",
    "runtime.systemstack_switch.abi0",
    "runtime.systemstack_switch",
];

/// The transition id of every signal frame (see [`Trampolines`]).
const SIGNAL_FRAME_ID: Id = 1;

/// Most entries in a core's transition table (a hostile core can list any number of modules
/// defining switch symbols; ids are `u16`).
pub const MAX_TRANSITIONS: usize = 1024;

/// The id for the next transition when `len` are taken: `None` past [`MAX_TRANSITIONS`].
fn next_id(len: usize) -> Option<Id> {
    Id::try_from(len.checked_add(1)?)
        .ok()
        .filter(|&id| usize::from(id) <= MAX_TRANSITIONS)
}

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
    /// A `/proc/PID` prefix whose files may be opened (a live process's `map_files` and
    /// `root`); nothing under `/proc` is opened otherwise ([`crate::safe_open`]).
    pub allow_proc: Option<PathBuf>,
    /// Most frames per thread: 0 for [`MAX_FRAMES`]; at most [`MAX_TOTAL_FRAMES`] (a stack
    /// overflow's core holds tens of thousands of frames).
    pub max_frames: usize,
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
    /// How long a live process's threads were stopped (`None` for a core).
    pub paused: Option<std::time::Duration>,
}

/// When the threads' registers are read: a core's are there all along; a live process
/// (`crate::process`) is stopped only after everything else is prepared (modules, CFI,
/// transitions) and resumed as soon as every thread is walked, before anything is symbolised.
pub trait Pause {
    /// Why the threads could not be stopped.
    type Error: From<CoreError>;
    /// Stops the threads and returns their registers.
    fn pause(&mut self, core: &Core) -> Result<Vec<Thread>, Self::Error>;
    /// Lets them run again; the core's memory is not read after this.
    fn resume(&mut self);
}

/// A core's threads, never stopped.
struct AsIs;

impl Pause for AsIs {
    type Error = CoreError;
    fn pause(&mut self, core: &Core) -> Result<Vec<Thread>, CoreError> {
        Ok(core.threads.clone())
    }
    fn resume(&mut self) {}
}

/// Builds modules for a core: its `NT_FILE` mappings; else (qemu-user cores) the executable
/// (`--exe`, or the auxv's `AT_EXECFN` path under `--sysroot`) placed by `AT_PHDR`, the
/// dynamic linker placed by `AT_BASE`, and the shared libraries in the dynamic linker's link
/// map (`r_debug` through the executable's `DT_DEBUG`, read from the core's memory).
pub fn symbols_for(core: &Core, opts: &Options) -> Symbolizer {
    let sysroot = opts.sysroot.as_deref();
    let mut s = Symbolizer::new();
    if let Some(prefix) = &opts.allow_proc {
        s.open_policy = s.open_policy.clone().allowing_proc(prefix.clone());
    }
    // `--exe` stands in for the file of the executable's mapping (the one holding the entry
    // point), whatever file its path names now.
    const AT_ENTRY: u64 = 9;
    let exe_mapping = opts.exe.as_ref().and_then(|_| {
        let entry = core.aux(AT_ENTRY)?;
        let m = core.mappings.iter().find(|m| m.range.contains(entry))?;
        Some(m.path.clone())
    });
    s.add_mappings_with(&core.mappings, |path| match (&opts.exe, &exe_mapping) {
        (Some(exe), Some(p)) if p == path => exe.clone(),
        _ => crate::symbols::resolve(sysroot, path),
    });
    check_build_ids(core, &mut s, exe_mapping.as_deref());
    add_vdso(core, &mut s);
    let exe_path = opts
        .exe
        .clone()
        .filter(|_| exe_mapping.is_none())
        .or_else(|| {
            if !core.mappings.is_empty() {
                return None;
            }
            const AT_EXECFN: u64 = 31;
            let name = read_c_string(core, core.aux(AT_EXECFN)?)?;
            if !name.starts_with('/') {
                // The path the program was started by, relative to a directory the core
                // does not record: taken from this one, which may hold another file.
                s.warnings.push(format!(
                    "the core names its executable by a relative path ({}), looked up from                      the current directory: pass --exe if that is not the right file",
                    name.escape_debug()
                ));
            }
            Some(crate::symbols::resolve(sysroot, &name))
        });
    if let Some(exe) = &exe_path {
        let display = exe.display().to_string();
        let already = s.modules().iter().any(|m| m.path == display);
        if !already {
            let placement = exe_placement(core, exe, &s.open_policy);
            s.add(exe, &display, placement);
            // A qemu core names no files: `--exe`, placed by the auxv, is compared with the
            // image in the core's memory (file offset 0 at `AT_PHDR` less its offset), where
            // the core holds it (qemu leaves out the pages of mapped ELF files, whose headers
            // and notes then cannot be compared).
            let added = s.modules().iter().find(|m| m.path == display);
            let mismatch = placement.zip(added).and_then(|((phdr, phoff), m)| {
                build_id_mismatch(core, phdr.wrapping_sub(phoff), m.bytes())
            });
            if let (Some((ours, theirs)), Some(_)) = (mismatch, &opts.exe) {
                s.warnings.push(exe_build_id_warning(&ours, &theirs));
            }
        }
        if core.mappings.is_empty() {
            add_link_map(core, exe, sysroot, &mut s);
        }
    }
    s
}

/// Drops the modules whose file's build id (GNU, or Go's for Go's own linker's binaries) is
/// not the one the core's memory holds for that mapping (the file was rebuilt or replaced since the core was written): their symbols
/// and CFI would name and walk the wrong code. Each is reported as missing (a warning when a
/// frame needed it). The `forced` path (`--exe`'s stand-in) stays, with a warning: the user
/// chose that file.
fn check_build_ids(core: &Core, s: &mut Symbolizer, forced: Option<&str>) {
    let mut bad = Vec::new();
    for (i, m) in s.modules().iter().enumerate() {
        let lo = core
            .mappings
            .iter()
            .filter(|x| x.path == m.path && x.offset == 0)
            .map(|x| x.range.lo)
            .min();
        if let Some((ours, theirs)) = lo.and_then(|lo| build_id_mismatch(core, lo, m.bytes())) {
            bad.push((i, ours, theirs));
        }
    }
    for (i, ours, theirs) in bad.into_iter().rev() {
        let path = s.modules()[i].path.clone();
        if Some(path.as_str()) == forced {
            s.warnings.push(exe_build_id_warning(&ours, &theirs));
        } else {
            s.remove(i);
            s.missing.push((
                path,
                format!(
                    "its file's build id {ours} is not the core's {theirs}: replaced since the \
                     core was written? pass the right file with --exe or --sysroot"
                ),
            ));
        }
    }
}

/// The build ids of the ELF file `file` and of the object whose first byte is at `base` in the
/// core's memory, shown, when they differ: the GNU ones if both have one, else Go's (text).
/// `None` when they agree or either has none.
fn build_id_mismatch(core: &Core, base: u64, file: &[u8]) -> Option<(String, String)> {
    let theirs = build_ids_in_memory(core, base)?;
    let ours = build_ids_in_file(file);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    // Go's build id is text ("actionID/contentID"): shown as it is.
    let text = |b: &[u8]| String::from_utf8_lossy(b).escape_debug().to_string();
    match (&ours.gnu, &theirs.gnu, &ours.go, &theirs.go) {
        (Some(a), Some(b), _, _) => (a != b).then(|| (hex(a), hex(b))),
        (_, _, Some(a), Some(b)) => (a != b).then(|| (text(a), text(b))),
        _ => None,
    }
}

/// The warning for an `--exe` whose build id is not the core's executable's.
fn exe_build_id_warning(ours: &str, theirs: &str) -> String {
    format!(
        "--exe: its build id {ours} is not the core's executable's ({theirs}): frames may be \
         misnamed"
    )
}

/// The bytes of the ELF object whose first byte is at `base` in the core's memory, from its
/// header through its program headers (at most 64 KiB), if the core holds them: what
/// [`build_ids_in_memory`] and [`add_vdso`] parse, with `object`.
fn elf_head_in_memory(core: &Core, base: u64) -> Option<Vec<u8>> {
    use object::read::elf::FileHeader;
    let mem = core.memory();
    let mut h = [0u8; 64];
    if !mem.read_bytes(base, &mut h) {
        return None;
    }
    let hdr = ElfHeader::parse(&h[..]).ok()?;
    let e = hdr.endian().ok()?;
    let phdrs = u64::from(hdr.e_phnum(e)) * u64::from(hdr.e_phentsize(e));
    let end = hdr.e_phoff(e).checked_add(phdrs)?.max(64);
    if end > 1 << 16 {
        return None;
    }
    let mut head = vec![0u8; end as usize];
    mem.read_bytes(base, &mut head).then_some(head)
}

type ElfHeader = object::elf::FileHeader64<object::LittleEndian>;
type ElfProgramHeader = object::elf::ProgramHeader64<object::LittleEndian>;

/// `data`'s ELF64 header, its endianness and its program headers, parsed with `object`; `None`
/// when any of them does not parse.
fn elf_headers(data: &[u8]) -> Option<(&ElfHeader, object::LittleEndian, &[ElfProgramHeader])> {
    use object::read::elf::FileHeader;
    let hdr = ElfHeader::parse(data).ok()?;
    let e = hdr.endian().ok()?;
    Some((hdr, e, hdr.program_headers(e, data).ok()?))
}

/// An ELF object's build ids, from its notes.
#[derive(Default)]
struct BuildIds {
    /// `NT_GNU_BUILD_ID`.
    gnu: Option<Vec<u8>>,
    /// Go's (`.note.go.buildid`: owner `Go`, type 4), which Go's own linker writes instead.
    go: Option<Vec<u8>>,
}

impl BuildIds {
    /// Takes the build ids among the notes of one `PT_NOTE` segment's bytes.
    fn read_notes(&mut self, e: object::LittleEndian, align: u64, bytes: &[u8]) {
        use object::read::elf::NoteIterator;
        const NT_GO_BUILD_ID: object::elf::NoteType = object::elf::NoteType(4);
        let Ok(mut notes) = NoteIterator::<ElfHeader>::new(e, align, bytes) else {
            return;
        };
        while let Ok(Some(note)) = notes.next() {
            let t = note.n_type(e);
            if t == object::elf::NT_GNU_BUILD_ID && note.name() == b"GNU" {
                self.gnu.get_or_insert_with(|| note.desc().to_vec());
            } else if t == NT_GO_BUILD_ID && note.name() == b"Go" {
                self.go.get_or_insert_with(|| note.desc().to_vec());
            }
        }
    }
}

/// The build ids in the notes of the ELF file `data` (none when it does not parse).
fn build_ids_in_file(data: &[u8]) -> BuildIds {
    use object::read::elf::ProgramHeader;
    let mut ids = BuildIds::default();
    if let Some((_, e, phdrs)) = elf_headers(data) {
        for ph in phdrs
            .iter()
            .filter(|ph| ph.p_type(e) == object::elf::PT_NOTE)
        {
            let from = ph.p_offset(e);
            let bytes = usize::try_from(from)
                .ok()
                .zip(usize::try_from(ph.p_filesz(e)).ok())
                .and_then(|(from, len)| data.get(from..from.checked_add(len)?));
            if let Some(bytes) = bytes {
                ids.read_notes(e, ph.p_align(e), bytes);
            }
        }
    }
    ids
}

/// The build ids of the ELF object mapped at `base` in the core's memory (its header, at file
/// offset 0, and its notes, which the kernel dumps with the first page of every mapped ELF
/// file), if the core holds them.
fn build_ids_in_memory(core: &Core, base: u64) -> Option<BuildIds> {
    use object::read::elf::ProgramHeader;
    let head = elf_head_in_memory(core, base)?;
    let (_, e, phdrs) = elf_headers(&head)?;
    // Runtime address = link address + bias, from the segment that maps file offset 0.
    let load0 = phdrs
        .iter()
        .find(|ph| ph.p_type(e) == object::elf::PT_LOAD && ph.p_offset(e) == 0)?;
    let bias = base.wrapping_sub(load0.p_vaddr(e));
    let mem = core.memory();
    let mut ids = BuildIds::default();
    for ph in phdrs
        .iter()
        .filter(|ph| ph.p_type(e) == object::elf::PT_NOTE)
    {
        let mut n = vec![0u8; ph.p_filesz(e).min(4096) as usize];
        if !mem.read_bytes(bias.wrapping_add(ph.p_vaddr(e)), &mut n) {
            continue;
        }
        ids.read_notes(e, ph.p_align(e), &n);
    }
    (ids.gnu.is_some() || ids.go.is_some()).then_some(ids)
}

/// The vDSO (`AT_SYSINFO_EHDR`), read from the core's memory as a module of its own
/// (`[vdso]`): no file holds it, so `NT_FILE` and `/proc/PID/maps` name no path for it. Its
/// symbols name the frames of threads in `clock_gettime` and friends, and its CFI walks out of
/// them where the frame record is not set up yet (kernel and qemu cores, live processes).
fn add_vdso(core: &Core, s: &mut Symbolizer) {
    use object::read::elf::{FileHeader, ProgramHeader};
    const AT_SYSINFO_EHDR: u64 = 33;
    /// The x86_64 and aarch64 vDSOs are 8 KiB; this bounds what a hostile core can ask for.
    const MAX_VDSO: u64 = 1 << 20;
    let Some(base) = core.aux(AT_SYSINFO_EHDR).filter(|&b| b != 0) else {
        return;
    };
    if s.modules().iter().any(|m| m.range.contains(base)) {
        return;
    }
    let Some(head) = elf_head_in_memory(core, base) else {
        return;
    };
    let Some((hdr, e, phdrs)) = elf_headers(&head) else {
        return;
    };
    // The image's extent: its section headers (at the end of a linked file), its program
    // headers and their file ranges.
    let shdrs = u64::from(hdr.e_shnum(e)) * u64::from(hdr.e_shentsize(e));
    let mut size = hdr.e_shoff(e).saturating_add(shdrs).max(head.len() as u64);
    for ph in phdrs {
        size = size.max(ph.p_offset(e).saturating_add(ph.p_filesz(e)));
    }
    if !(64..=MAX_VDSO).contains(&size) {
        return;
    }
    let mut bytes = vec![0u8; size as usize];
    if core.memory().read_bytes(base, &mut bytes) {
        s.add_image(bytes, "[vdso]", base);
    }
}

/// A NUL-terminated string in the core's memory (at most 4 KiB).
fn read_c_string(core: &Core, addr: u64) -> Option<String> {
    let mem = core.memory();
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    for i in 0..4096u64 {
        if !mem.read_bytes(addr.checked_add(i)?, &mut b) {
            return None;
        }
        if b[0] == 0 {
            return String::from_utf8(out).ok();
        }
        out.push(b[0]);
    }
    None
}

/// The dynamic linker (`PT_INTERP`, at `AT_BASE`) and the link map's libraries.
fn add_link_map(core: &Core, exe: &Path, sysroot: Option<&Path>, s: &mut Symbolizer) {
    use object::read::elf::ProgramHeader;
    const AT_BASE: u64 = 7;
    const DT_DEBUG: u64 = 21;
    let Ok(data) = crate::safe_open::map(exe, &s.open_policy) else {
        return;
    };
    let Some((_, e, phdrs)) = elf_headers(&data) else {
        return;
    };
    let Some(exe_bias) = s
        .modules()
        .iter()
        .find(|m| m.path == exe.display().to_string())
        .map(|m| m.bias)
    else {
        return;
    };
    let mut interp = None;
    let mut dynamic = None;
    for ph in phdrs {
        match ph.p_type(e) {
            object::elf::PT_INTERP => {
                interp = ph.data(e, &*data).ok().and_then(|d| {
                    let d = d.split(|&b| b == 0).next()?;
                    String::from_utf8(d.to_vec()).ok()
                })
            }
            object::elf::PT_DYNAMIC => dynamic = Some(ph.p_vaddr(e).wrapping_add(exe_bias)),
            _ => {}
        }
    }
    let mut seen: Vec<String> = s.modules().iter().map(|m| m.path.clone()).collect();
    if let (Some(name), Some(base)) = (&interp, core.aux(AT_BASE)) {
        if base != 0 && !seen.contains(name) {
            s.add_biased(&crate::symbols::resolve(sysroot, name), name, base);
            seen.push(name.clone());
        }
    }
    let mut mem = core.memory();
    let Some(dynamic) = dynamic else { return };
    let mut r_debug = None;
    for i in 0..512u64 {
        let at = dynamic.wrapping_add(16 * i);
        let (Some(tag), Some(val)) = (mem.read_u64(at), mem.read_u64(at.wrapping_add(8))) else {
            break;
        };
        if tag == 0 {
            break;
        }
        if tag == DT_DEBUG {
            r_debug = Some(val);
        }
    }
    // struct r_debug { int r_version; struct link_map *r_map; ... }
    // struct link_map { l_addr, l_name, l_ld, l_next, l_prev }
    let Some(mut lm) = r_debug.and_then(|r| mem.read_u64(r.checked_add(8)?)) else {
        return;
    };
    for _ in 0..1024 {
        if lm == 0 {
            break;
        }
        let (Some(l_addr), Some(l_name), Some(l_next)) = (
            mem.read_u64(lm),
            mem.read_u64(lm.wrapping_add(8)),
            mem.read_u64(lm.wrapping_add(24)),
        ) else {
            break;
        };
        if let Some(name) = read_c_string(core, l_name) {
            if name.starts_with('/') && !seen.contains(&name) {
                s.add_biased(&crate::symbols::resolve(sysroot, &name), &name, l_addr);
                seen.push(name);
            }
        }
        lm = l_next;
    }
}

/// Where the executable was loaded, from `AT_PHDR` (the runtime address of its program
/// headers) and the file's own `e_phoff`: the runtime address of file offset `e_phoff`.
fn exe_placement(core: &Core, exe: &Path, policy: &crate::safe_open::Policy) -> Option<(u64, u64)> {
    const AT_PHDR: u64 = 3;
    let phdr = core.aux(AT_PHDR)?;
    let data = crate::safe_open::map(exe, policy).ok()?;
    let phoff = u64::from_le_bytes(data.get(0x20..0x28)?.try_into().ok()?);
    Some((phdr, phoff))
}

/// Sigreturn trampolines (signal frames), recognised by their instruction bytes at the return
/// addresses walks meet: in the modules' code as their files hold it (glibc's `__restore_rt`),
/// and in the core's executable segments (the vDSO's `__kernel_rt_sigreturn`, qemu's trampoline
/// page), which are searched ahead (kernel cores hold little code: the vDSO, anonymous code).
/// Checking the few return addresses a walk meets costs less than searching every module's
/// text ahead (a C library's 1.5 MB, mapped in and scanned, was a tenth of `unwind stack`).
pub struct Trampolines<'a> {
    symbols: &'a Symbolizer,
    pattern: &'static [u8],
    /// Trampolines in the core's executable segments, sorted.
    in_core: Vec<u64>,
    /// The transition id every signal frame gets.
    id: Id,
}

/// Where `pattern` (not empty) starts in `bytes`, in order. A plain scan, not `memchr`'s
/// `memmem`: the segments searched are a vDSO's or a trampoline page's few kilobytes, and a
/// `memmem` searcher's first build detects the CPU (CPUID, a VM exit each: 4% of
/// `unwind stack` on a 65-thread core).
fn starts_of<'b>(bytes: &'b [u8], pattern: &'b [u8]) -> impl Iterator<Item = usize> + 'b {
    // Found by its last byte (`syscall`'s `05`, `svc`'s `d4`: rarer in code than a REX
    // prefix), eight bytes at a time.
    let n = pattern.len();
    let last = pattern.last().copied().unwrap_or(0);
    let mut at = n.saturating_sub(1);
    std::iter::from_fn(move || {
        if n == 0 {
            return None;
        }
        loop {
            let end = at + crate::symbols::byte_at(bytes.get(at..)?, last)?;
            at = end + 1;
            let start = end + 1 - n;
            if bytes.get(start..=end) == Some(pattern) {
                return Some(start);
            }
        }
    })
}

impl<'a> Trampolines<'a> {
    /// The trampolines of `core`'s architecture, in its executable segments and in the code
    /// of `symbols`' modules, as transition `id`.
    pub fn new(core: &Core, symbols: &'a Symbolizer, id: Id) -> Self {
        let pattern: &[u8] = match core.arch {
            ArchKind::X86_64 => &crate::arch::x86_64::SIGRETURN_CODE,
            ArchKind::Aarch64 => &crate::arch::aarch64::SIGRETURN_CODE,
        };
        let mut in_core = Vec::new();
        for (addr, bytes) in core.code_segments() {
            for i in starts_of(bytes, pattern) {
                // A hostile core may place a segment at the very top of the address space.
                if let Some(a) = addr.checked_add(i as u64).filter(|a| *a < u64::MAX) {
                    in_core.push(a);
                }
            }
        }
        in_core.sort_unstable();
        in_core.dedup();
        Trampolines {
            symbols,
            pattern,
            in_core,
            id,
        }
    }

    /// Does a sigreturn trampoline start at `addr`?
    pub fn contains(&self, addr: u64) -> bool {
        addr < u64::MAX
            && (self.in_core.binary_search(&addr).is_ok()
                || self.symbols.code_is(addr, self.pattern))
    }

    /// The transition for a return address at a trampoline.
    fn transition(&self, ra: u64) -> Option<Transition> {
        self.contains(ra).then(|| Transition {
            range: Range::new(ra, ra + 1),
            rule: Rule::SignalFrame,
            id: self.id,
        })
    }
}

/// A core's transitions: its signal trampolines (see [`Trampolines`]) and the table of stack
/// switches found by symbol.
#[derive(Clone, Copy)]
struct CoreTransitions<'a> {
    table: &'a TransitionTable,
    trampolines: &'a Trampolines<'a>,
}

impl crate::transition::Transitions for CoreTransitions<'_> {
    #[inline]
    fn lookup(&self, ra: u64) -> Option<Transition> {
        // A trampoline's one-byte range starts at `ra`: no table entry starts later (a switch
        // function starting at a trampoline is left out of the table).
        self.trampolines
            .transition(ra)
            .or_else(|| self.table.lookup(ra))
    }
}

/// The transitions for a core: its signal trampolines (transition id 1, "signal frame") and
/// the table of Go's and Rust's stack switches.
pub fn transitions_for<'a>(
    core: &Core,
    symbols: &'a Symbolizer,
) -> (
    Trampolines<'a>,
    TransitionTable,
    Vec<(Id, &'static str)>,
    Vec<Id>,
) {
    let mut table = TransitionTable::new();
    let mut names = vec![(SIGNAL_FRAME_ID, "signal frame")];
    let mut system_switches = Vec::new();
    let trampolines = Trampolines::new(core, symbols, SIGNAL_FRAME_ID);
    let mut add = |table: &mut TransitionTable, range: Range, rule: Rule, name: &'static str| {
        let id = next_id(names.len())?;
        table.insert(Transition { range, rule, id });
        names.push((id, name));
        Some(id)
    };
    // Every name `function` is asked here and for Go's runtime, answered in one pass.
    let mut asked: Vec<&'static str> = GO_NAMES.to_vec();
    asked.extend(FAULT_CALLS);
    asked.extend(GO_VDSO_CALLS);
    asked.extend(crate::switches::BY_SYMBOL.iter().map(|k| k.symbol));
    for m in symbols.modules() {
        m.prepare_names(&asked);
    }
    // The switches known by symbol, in groups (each group in every module before the next:
    // the first entry for an address wins), as (symbol, rule, name, system switch?).
    // Go's `systemstack` and `asmcgocall` keep the frame pointer while they run a function on
    // g0 (see the module docs).
    let go_switches = [
        ("runtime.systemstack.abi0", "go runtime.systemstack"),
        ("runtime.systemstack", "go runtime.systemstack"),
        ("runtime.asmcgocall.abi0", "go runtime.asmcgocall"),
        ("runtime.asmcgocall", "go runtime.asmcgocall"),
    ]
    .map(|(raw, name)| (raw, Rule::ContinueChain, name, true));
    // Go's vDSO calls (amd64 `runtime.nanotime1`, `time.now`): on a goroutine they move sp to
    // g0's stack (`sys_linux_amd64.s`, `time_linux_amd64.s`), which their CFI does not say,
    // and keep their frame record: the chain from the vDSO's frames leads back to the
    // goroutine's stack, as from `systemstack`'s. (Go's own traceback uses `m.vdsoPC/SP`.)
    let vdso_calls = GO_VDSO_CALLS
        .map(|raw| (raw, Rule::ContinueChain, "go vdso call", false))
        .into_iter()
        .filter(|_| core.arch == ArchKind::X86_64);
    // Go's `sigpanic` and `asyncPreempt`: the signal handler makes the interrupted code seem
    // to call them (`preparePanic`, `pushCall`), so their caller's pc is the interrupted
    // instruction (exact), as Go's own traceback takes it (its "injected calls").
    let fault_calls = FAULT_CALLS.map(|raw| (raw, Rule::FaultCall, "go injected call", false));
    // Rust programs: this crate's system stack (a system switch, like Go's), psm/stacker
    // segments, corosensei's `on_stack` and its coroutines, by symbol as `builtin` finds them
    // live.
    let rust_switches = crate::switches::BY_SYMBOL
        .iter()
        .map(|k| (k.symbol, k.rule(core.arch), k.name, k.system));
    let groups: [Vec<(&str, Rule, &'static str, bool)>; 4] = [
        go_switches.to_vec(),
        vdso_calls.collect(),
        fault_calls.to_vec(),
        rust_switches.collect(),
    ];
    for group in &groups {
        for m in symbols.modules() {
            for &(raw, rule, name, system) in group {
                if let Some(r) = m.function(raw) {
                    if table.lookup(r.lo).is_none() && !trampolines.contains(r.lo) {
                        if let Some(id) = add(&mut table, r, rule, name) {
                            if system {
                                system_switches.push(id);
                            }
                        }
                    }
                }
            }
        }
    }
    (trampolines, table, names, system_switches)
}

/// Go's amd64 functions that call the vDSO on g0's stack, keeping their frame record.
const GO_VDSO_CALLS: [&str; 4] = [
    "runtime.nanotime1.abi0",
    "runtime.nanotime1",
    "time.now.abi0",
    "time.now",
];

/// Go functions its signal handler makes the interrupted code "call" ([`Rule::FaultCall`]).
const FAULT_CALLS: [&str; 4] = [
    "runtime.sigpanic",
    "runtime.sigpanic.abi0",
    "runtime.asyncPreempt",
    "runtime.asyncPreempt.abi0",
];

/// Is this a Go program (its modules define `runtime.systemstack`)?
fn is_go(symbols: &Symbolizer) -> bool {
    symbols.modules().iter().any(|m| {
        m.function("runtime.systemstack.abi0").is_some()
            || m.function("runtime.systemstack").is_some()
    })
}

/// The classifier a core's policy uses: Go programs' runtime is package `runtime`; for Rust and
/// C programs, the standard libraries' and the C runtime's frames.
pub fn classifier_for(symbols: &Symbolizer, system_switches: &[Id]) -> Classifier {
    let mut c = Classifier::new();
    use crate::runtime_names::{C_RUNTIME, GO, RUST_STD, UNWIND};
    let groups: &[&[&str]] = if is_go(symbols) {
        &[GO]
    } else {
        &[RUST_STD, C_RUNTIME, UNWIND]
    };
    for m in symbols.modules() {
        for group in groups {
            c.add_symbol_prefixes(m.functions(), group);
        }
    }
    for &id in system_switches {
        c.add_system_switch(id);
    }
    c
}

/// Unwinds every thread of `core`.
pub fn unwind_core(core: &Core, opts: &Options) -> Result<Report, CoreError> {
    unwind_paused(core, opts, &mut AsIs)
}

/// Unwinds every thread `pause` returns, between its `pause` and `resume` (see [`Pause`]).
pub fn unwind_paused<P: Pause>(
    core: &Core,
    opts: &Options,
    pause: &mut P,
) -> Result<Report, P::Error> {
    let symbols = symbols_for(core, opts);
    let mut warnings: Vec<String> = symbols.warnings.clone();
    // Module warnings wait for the walks: only modules a frame needed are worth one.
    let missing_warnings: Vec<(String, String)> = symbols
        .missing
        .iter()
        // A core's paths may hold newlines or terminal escapes: escaped, a warning is one line.
        .map(|(p, e)| {
            let w = format!(
                "module {} not available ({e}): its frames stay unsymbolised",
                p.escape_debug()
            );
            (p.clone(), w)
        })
        .collect();
    let mut module_warnings: Vec<(String, String)> = Vec::new();
    if let Some((have, want)) = core.truncation() {
        warnings.insert(
            0,
            format!(
                "core file is truncated: {have} of {want} bytes (the core size limit was \
                 reached?); memory past the cut is missing, stacks may be cut short"
            ),
        );
    }
    if core.mappings.is_empty() && symbols.modules().is_empty() {
        warnings.push(
            "the core lists no mapped files (a qemu-user core?): pass --exe (and --sysroot)".into(),
        );
    }
    let mode = opts.mode;
    let unwinder = if mode != Mode::FramePointer {
        let (u, failed) = cfi_for(core, &symbols, opts);
        for (p, e) in failed {
            let w = format!("module {}: no usable CFI ({e})", p.escape_debug());
            module_warnings.push((p, w));
        }
        u
    } else {
        crate::dwarf::OfflineCfi::new()
    };
    let (trampolines, table, mut transitions, system_switches) = transitions_for(core, &symbols);
    // Go's morestack is crossed through the goroutine's g.sched, not through the table: it
    // gets a name (for `via transition`) but no table entry.
    let morestack_id = next_id(transitions.len()).unwrap_or(0);
    if morestack_id != 0 {
        transitions.push((morestack_id, "go runtime.morestack"));
    }
    // Go's mcall, and the goroutine side of systemstack/asmcgocall when no frame record
    // reaches it, are crossed through g.sched too.
    let g_sched_id = next_id(transitions.len()).unwrap_or(0);
    if g_sched_id != 0 {
        transitions.push((g_sched_id, "go g.sched"));
    }
    // For the policies, the crossings through g.sched (mcall, morestack, and systemstack or
    // asmcgocall where no frame record reaches the goroutine) leave g0 as the table's Go
    // switches do: what is above them is the runtime's system stack in every mode.
    let policy_switches: Vec<Id> = system_switches
        .iter()
        .copied()
        .chain([morestack_id, g_sched_id].into_iter().filter(|&id| id != 0))
        .collect();
    let mut classifier = opts
        .policy
        .map(|_| classifier_for(&symbols, &policy_switches));
    let go = if is_go(&symbols) {
        GoRuntime::new(&symbols)
    } else {
        None
    };
    let mut threads = Vec::new();
    let mut budget = MAX_TOTAL_FRAMES;
    let mut cut_threads = 0usize;
    let mut pcs: Vec<u64> = Vec::new();
    let mut lookup_pcs: Vec<u64> = Vec::new();
    let max_frames = match opts.max_frames {
        0 => MAX_FRAMES,
        n => n.min(MAX_TOTAL_FRAMES),
    };
    let cx = Walks {
        max_frames,
        core,
        symbols: &symbols,
        table: &table,
        transitions: CoreTransitions {
            table: &table,
            trampolines: &trampolines,
        },
        cfi: &unwinder,
        mode,
    };
    let paused = pause.pause(core)?;
    // One buffer for every walk; each thread keeps a copy of its frames.
    let mut scratch = vec![Frame::EMPTY; max_frames];
    for t in &paused {
        // Past the budget a thread keeps its leaf frame only.
        let room = max_frames.min(budget).max(1);
        let trace = cx.thread(t, &mut scratch[..room]);
        if room < max_frames && trace.len >= room {
            cut_threads += 1;
        }
        let mut buf = scratch[..trace.len.min(room)].to_vec();
        budget = budget.saturating_sub(buf.len());
        let mut stop = trace.stop;
        if let Some(go) = &go {
            go.cut_at_stack_top(core.arch, &mut buf);
            if core.arch == ArchKind::X86_64 {
                go.recover_systemstack_caller(core, t, &system_switches, &mut buf, max_frames);
            } else if let Some(more) = go.cross_systemstack_arm64(&cx, t, &buf) {
                stop = more.1;
                buf.extend(more.0);
                buf.truncate(max_frames);
            }
            if let Some(more) = go.cross_morestack(&cx, t, &buf, morestack_id) {
                stop = more.1;
                buf.extend(more.0);
                buf.truncate(max_frames);
            }
        }
        if let Some(go) = &go {
            if let Some(more) = go.cross_g_sched(&cx, t, &buf, stop, g_sched_id) {
                stop = more.1;
                buf.extend(more.0);
                buf.truncate(max_frames);
            }
        }
        let mut truncated = stop.is_truncated();
        if let Some(go) = &go {
            if go.is_stack_bottom(&symbols, buf.last()) {
                truncated = false;
            } else if stop == StopReason::End && go.is_go_code(&symbols, buf.last()) {
                // A zero frame pointer in the middle of Go's frames: not a stack's root.
                stop = StopReason::EndedShort;
                truncated = true;
            }
        }
        pcs.extend(buf.iter().map(|f| f.pc));
        lookup_pcs.extend(buf.iter().map(|f| f.lookup_pc()));
        if let (Some(p), Some(c)) = (&opts.policy, &mut classifier) {
            // Sigreturn trampolines (libc's, the vDSO's, qemu's page, Go's) are runtime too,
            // named or not: a heap sample never ends at one.
            for f in &buf {
                let pc = f.lookup_pc();
                if trampolines.contains(pc) {
                    c.add_range(pc..pc + 1);
                }
            }
            let kept = p.apply(&buf, c);
            truncated |= kept.truncated;
            buf = kept.slice(&buf).to_vec();
        }
        threads.push(ThreadStack {
            tid: t.tid,
            frames: buf,
            truncated,
            stop,
        });
    }
    pause.resume();
    // Every frame is symbolised (the policy keeps some): answered ahead, each module in one
    // pass over its symbols.
    symbols.prepare(&lookup_pcs);
    // Lazy tables fail FDE by FDE, as the walks reach them.
    for (p, e) in unwinder.failures() {
        let w = format!("module {}: no usable CFI ({e})", p.escape_debug());
        module_warnings.push((p, w));
    }
    if cut_threads > 0 {
        warnings.push(format!(
            "{} threads: over the budget of {MAX_TOTAL_FRAMES} frames for all threads, {cut_threads} \
             of them are cut short",
            paused.len()
        ));
    }
    let needed = |w, pcs: &[u64]| {
        let (sysroot, policy) = (opts.sysroot.as_deref(), &symbols.open_policy);
        crate::needed_modules::needed(w, &core.mappings, sysroot, policy, pcs)
    };
    warnings.extend(needed(module_warnings, &pcs));
    // A file that could not be opened under its mapped path matters only for pcs no loaded
    // module covers (`--exe` may stand in for a deleted executable).
    let uncovered: Vec<u64> = pcs
        .iter()
        .copied()
        .filter(|&pc| !symbols.modules().iter().any(|m| m.range.contains(pc)))
        .collect();
    warnings.extend(needed(missing_warnings, &uncovered));
    Ok(Report {
        arch: core.arch,
        threads,
        symbols,
        transitions,
        warnings,
        paused: None,
    })
}

/// The CFI of a core's modules (opened from disk, at their biases): evaluated on demand where
/// their `.eh_frame_hdr` allows (a walk needs a few FDEs of each), else prepared.
pub fn cfi_for<'s>(
    core: &Core,
    symbols: &'s Symbolizer,
    opts: &Options,
) -> (
    crate::dwarf::OfflineCfi<'s>,
    Vec<(String, crate::dwarf::CfiError)>,
) {
    // The files the symbolizer already opened (safely, once per file) and mapped: parsing
    // their bytes, not reopening paths, keeps FIFOs, devices and /proc files out.
    let _ = opts;
    let mut u = crate::dwarf::OfflineCfi::new();
    let mut failed = Vec::new();
    for m in symbols.modules() {
        match crate::dwarf::parse_elf_lazy(core.arch, m.bytes(), m.bias, &m.path) {
            Ok(t) => u.add(t),
            Err(e) => failed.push((m.path.clone(), e)),
        }
    }
    (u, failed)
}

/// What the Go recovery needs from the binary's symbols.
struct GoRuntime {
    /// The path of the module that holds the runtime (the Go binary).
    module: String,
    /// `runtime.systemstack`'s code.
    systemstack: Range,
    /// `runtime.morestack`'s code.
    morestack: Option<Range>,
    /// Functions where a Go stack legitimately ends: a thread's g0 (`runtime.mstart`,
    /// `runtime.rt0_go`), a goroutine (`runtime.goexit`), a g0 stack reset by `runtime.mcall`.
    bottoms: Vec<Range>,
    /// `runtime.asmcgocall`'s code (a cgo call: like `systemstack`, its caller is in no record).
    asmcgocall: Option<Range>,
    /// `runtime.mcall`'s code.
    mcall: Option<Range>,
    /// `runtime.systemstack_switch`: the `g.sched.pc` of a goroutine that left through
    /// `systemstack` or `asmcgocall`.
    switch_marker: Option<Range>,
    /// Offsets of `runtime.g`, `m`, `gobuf`: the binary's `.debug_info`, else Go 1.17-1.21's.
    offsets: crate::go_runtime::GoOffsets,
}

impl GoRuntime {
    fn new(symbols: &Symbolizer) -> Option<GoRuntime> {
        let find = |names: &[&str]| {
            symbols
                .modules()
                .iter()
                .find_map(|m| names.iter().find_map(|n| m.function(n)))
        };
        let systemstack = find(&["runtime.systemstack.abi0", "runtime.systemstack"])?;
        let module = symbols
            .modules()
            .iter()
            .find(|m| {
                m.function("runtime.systemstack.abi0").is_some()
                    || m.function("runtime.systemstack").is_some()
            })?
            .path
            .clone();
        let bottoms = [
            &["runtime.mstart.abi0", "runtime.mstart"][..],
            &["runtime.goexit.abi0", "runtime.goexit"],
            &["runtime.rt0_go.abi0", "runtime.rt0_go"],
            &["runtime.mcall"],
        ]
        .iter()
        .filter_map(|n| find(n))
        .collect();
        let offsets = symbols
            .modules()
            .iter()
            .find(|m| m.function("runtime.systemstack.abi0").is_some())
            .and_then(|m| crate::go_runtime::GoOffsets::from_elf(m.data()))
            .unwrap_or(crate::go_runtime::GoOffsets::GO_1_17);
        Some(GoRuntime {
            module,
            systemstack,
            morestack: find(&["runtime.morestack.abi0", "runtime.morestack"]),
            bottoms,
            asmcgocall: find(&["runtime.asmcgocall.abi0", "runtime.asmcgocall"]),
            mcall: find(&["runtime.mcall"]),
            switch_marker: find(&[
                "runtime.systemstack_switch.abi0",
                "runtime.systemstack_switch",
            ]),
            offsets,
        })
    }

    /// Is `last` in the Go binary's own Go code (a function of the module that holds the
    /// runtime, named `package.function`), not in C code linked into it (cgo) or a library?
    fn is_go_code(&self, symbols: &Symbolizer, last: Option<&Frame>) -> bool {
        let Some(f) = last else { return false };
        let Some(s) = symbols.lookup(f.lookup_pc()) else {
            return false;
        };
        s.module == self.module
            && s.name.contains('.')
            && !s.name.starts_with('_')
            && !s.name.starts_with("x_cgo")
    }

    /// Does the walk end where a Go stack begins (not a truncation)?
    fn is_stack_bottom(&self, _symbols: &Symbolizer, last: Option<&Frame>) -> bool {
        last.is_some_and(|f| self.bottoms.iter().any(|r| r.contains(f.lookup_pc())))
    }

    /// amd64: `runtime.systemstack` has no frame of its own, so the frame-pointer chain that
    /// crosses it from g0 links the function on g0 straight to the frame record of the
    /// goroutine function that called `systemstack` (say `runtime.newproc`), and that
    /// function's own pc — the return address `CALL runtime.systemstack` pushed — is in no
    /// frame record. `systemstack` saved it: before switching it stores its own stack pointer
    /// (which points at that return address) and the frame pointer in the goroutine's
    /// `g.sched` (`gosave_systemstack_switch`, `src/runtime/asm_amd64.s`). The goroutine is
    /// `g0.m.curg`, and g0 is the thread's `g` (Go keeps it at `fs_base - 8` on linux/amd64).
    ///
    /// The frame is inserted only when everything agrees: the thread is on g0 (`g.m.g0 == g`),
    /// `curg.sched.sp` lies in `curg.stack`, and the frame the chain crossed to is the one
    /// `curg.sched.bp`'s record returns to.
    fn recover_systemstack_caller(
        &self,
        core: &Core,
        t: &Thread,
        system_switches: &[Id],
        frames: &mut Vec<Frame>,
        max_frames: usize,
    ) {
        let o = self.offsets;
        let Some(i) = frames.iter().position(|f| {
            f.via == crate::frame::Via::Transition && system_switches.contains(&f.transition)
        }) else {
            return;
        };
        let switched = |pc: u64| {
            self.systemstack.contains(pc) || self.asmcgocall.is_some_and(|r| r.contains(pc))
        };
        if i == 0 || !switched(frames[i - 1].lookup_pc()) {
            return;
        }
        let mut mem = core.memory();
        let mut rd = |a: u64| mem.read_u64(a);
        let found = (|| {
            let GoThread { g, m, curg } = go_thread(core, t, &o)?;
            // On g0, or on gsignal in a handler that interrupted g0 (a cgo call in C).
            let gsignal = rd(m.checked_add(o.m_gsignal)?)?;
            if rd(m.checked_add(o.m_g0)?)? != g && gsignal != g {
                return None;
            }
            if curg == g {
                return None;
            }
            let at = |off: u64| curg.checked_add(off);
            let sp = rd(at(o.g_sched + o.gobuf_sp)?)?;
            let bp = rd(at(o.g_sched + o.gobuf_bp)?)?;
            let (lo, hi) = (rd(at(o.g_stack)?)?, rd(at(o.g_stack + 8)?)?);
            if !(lo <= sp && sp < hi && sp < bp && bp < hi) {
                return None;
            }
            if rd(bp.checked_add(8)?)? != frames[i].pc {
                return None;
            }
            let ra = rd(sp)?;
            (ra != 0).then_some(ra)
        })();
        let Some(ra) = found else { return };
        let crossed = frames[i];
        frames[i].via = crate::frame::Via::FramePointer;
        frames[i].transition = 0;
        frames.insert(i, Frame { pc: ra, ..crossed });
        frames.truncate(max_frames);
    }

    /// arm64: `runtime.systemstack` loads g0's saved frame pointer when it switches
    /// (`MOVD (g_sched+gobuf_bp)(g), R29`, `src/runtime/asm_arm64.s`), so the chain on g0 does
    /// not link back and the walk ends in `systemstack`. Before switching,
    /// `gosave_systemstack_switch` stored the goroutine's state in its `g.sched`: `bp` is
    /// `systemstack`'s own frame record on the goroutine stack (`[bp]` = the caller's fp,
    /// `[bp + 8]` = the return address into the function that called `systemstack`). The
    /// goroutine is `g.m.curg`, `g` being the thread's x28 (g0, or gsignal in a handler).
    ///
    /// Returns the frames walked from that record (the first marked as found through the
    /// transition, on the next stack index) and whether that walk was cut short. Only when the
    /// walk ended in `systemstack` on a stack other than the goroutine's, and the record lies
    /// inside `curg.stack`.
    fn cross_systemstack_arm64(
        &self,
        cx: &Walks<'_>,
        t: &Thread,
        frames: &[Frame],
    ) -> Option<(Vec<Frame>, StopReason)> {
        let Walks { core, table, .. } = *cx;
        let o = self.offsets;
        let last = frames.last()?;
        if !self.systemstack.contains(last.lookup_pc()) || frames.len() >= cx.max_frames {
            return None;
        }
        let curg = go_thread(core, t, &o)?.curg;
        let mut mem = core.memory();
        let mut rd = |a: u64| mem.read_u64(a);
        let at = |off: u64| curg.checked_add(off);
        let bp = rd(at(o.g_sched + o.gobuf_bp)?)?;
        let (lo, hi) = (rd(at(o.g_stack)?)?, rd(at(o.g_stack + 8)?)?);
        if !(lo <= bp && bp.checked_add(16)? <= hi) || (lo..hi).contains(&last.pc) {
            return None;
        }
        let ra = rd(bp.checked_add(8)?)?;
        let fp = rd(bp)?;
        if ra == 0 {
            return None;
        }
        let regs = crate::arch::Regs {
            pc: ra,
            sp: bp.checked_add(16)?,
            fp,
            lr: 0,
        };
        let id = table.lookup(self.systemstack.lo).map_or(0, |t| t.id);
        // The goroutine's sp is not known (arm64 records sit at the bottom of frames): CFI
        // cannot start there; Go's arm64 code keeps frame records.
        Some(continue_from(
            &cx.with_mode(Mode::FramePointer),
            frames,
            regs,
            id,
            None,
        ))
    }

    /// Go's `morestack` (a function's prologue found its stack too small) saved the function's
    /// state in the goroutine's `g.sched` and called `newstack` on g0, where the walk ends
    /// (`src/runtime/asm_amd64.s`, `asm_arm64.s`):
    /// - amd64: `sched.pc` = the return address into the function `f` (after its `CALL
    ///   morestack`), `sched.sp` = `f`'s sp, pointing at `f`'s own return address, `sched.bp` =
    ///   the caller's frame pointer (`f` has not pushed its own).
    /// - arm64: `sched.pc` = the return address into `f` (its LR in morestack), `sched.lr` =
    ///   `f`'s return address, `sched.bp` = the caller's x29.
    ///
    /// The goroutine is `g.m.curg` (`g`: amd64 `fs_base - 8`, arm64 x28). Frames are added only
    /// when the walk ended in `morestack`, `sched.sp` lies in `curg.stack` and the saved pcs
    /// are non-zero; `f`'s frame is marked as found through the transition.
    fn cross_morestack(
        &self,
        cx: &Walks<'_>,
        t: &Thread,
        frames: &[Frame],
        id: Id,
    ) -> Option<(Vec<Frame>, StopReason)> {
        let Walks { core, mode, .. } = *cx;
        let o = self.offsets;
        let last = frames.last()?;
        if !self.morestack?.contains(last.lookup_pc()) || frames.len() + 1 >= cx.max_frames {
            return None;
        }
        let curg = go_thread(core, t, &o)?.curg;
        let mut mem = core.memory();
        let mut rd = |a: u64| mem.read_u64(a);
        let at = |off: u64| curg.checked_add(off);
        let sp = rd(at(o.g_sched + o.gobuf_sp)?)?;
        let pc = rd(at(o.g_sched + o.gobuf_pc)?)?;
        let bp = rd(at(o.g_sched + o.gobuf_bp)?)?;
        let (lo, hi) = (rd(at(o.g_stack)?)?, rd(at(o.g_stack + 8)?)?);
        if !(lo <= sp && sp < hi) || pc == 0 {
            return None;
        }
        let (caller, caller_sp) = match core.arch {
            ArchKind::X86_64 => (rd(sp)?, sp.checked_add(8)?),
            ArchKind::Aarch64 => (rd(at(o.g_sched + o.gobuf_lr)?)?, 0),
        };
        if caller == 0 {
            return None;
        }
        let f = Frame {
            pc,
            stack: last.stack.saturating_add(1),
            via: crate::frame::Via::Transition,
            flags: 0,
            transition: id,
        };
        let regs = crate::arch::Regs {
            pc: caller,
            sp: caller_sp,
            fp: bp,
            lr: 0,
        };
        let mut with_f = frames.to_vec();
        with_f.push(f);
        // arm64: the caller's sp is not known, CFI cannot start there (see above).
        let mode = match core.arch {
            ArchKind::X86_64 => mode,
            ArchKind::Aarch64 => Mode::FramePointer,
        };
        let (mut more, stop) = continue_from(&cx.with_mode(mode), &with_f, regs, 0, Some(f.stack));
        more.insert(0, f);
        Some((more, stop))
    }
}

impl GoRuntime {
    /// Ends a Go walk where Go's own traceback ends on this stack: `runtime.goexit`,
    /// `runtime.mstart`, `runtime.rt0_go`, `runtime.mcall`, `runtime.morestack` and, on arm64,
    /// `runtime.systemstack` (it loads g0's own frame pointer). CFI describes a caller there
    /// that is none (Dwarf and Hybrid modes walked on into garbage); the crossings through
    /// `g.sched` continue from these frames.
    fn cut_at_stack_top(&self, arch: ArchKind, frames: &mut Vec<Frame>) {
        let ends = |pc: u64| {
            self.bottoms.iter().any(|r| r.contains(pc))
                || self.morestack.is_some_and(|r| r.contains(pc))
                || (arch == ArchKind::Aarch64 && self.systemstack.contains(pc))
        };
        if let Some(i) = frames.iter().position(|f| ends(f.lookup_pc())) {
            frames.truncate(i + 1);
        }
    }

    /// Crosses through `g.sched` (`crate::go_runtime`, amd64):
    /// - a walk that ends in `runtime.mcall`: to the goroutine that called it, when still
    ///   parked there ([`crate::go_runtime::mcall_goroutine`]);
    /// - a walk cut short (code without frame pointers, a cgo call in C) on g0 or gsignal that
    ///   never reached the goroutine: to the goroutine that left through `systemstack` or
    ///   `asmcgocall` ([`crate::go_runtime::switched_goroutine`]).
    ///
    /// The first goroutine frame is marked as found through transition `id`.
    fn cross_g_sched(
        &self,
        cx: &Walks<'_>,
        t: &Thread,
        frames: &[Frame],
        stop: StopReason,
        id: Id,
    ) -> Option<(Vec<Frame>, StopReason)> {
        let Walks { core, table, .. } = *cx;
        if core.arch != ArchKind::X86_64 || frames.len() >= cx.max_frames {
            return None;
        }
        let last = *frames.last()?;
        let mut mem = core.memory();
        let g = crate::go_runtime::thread_g(&mut mem, core.arch, t.tls, t.x28)?;
        let regs = if self.mcall.is_some_and(|r| r.contains(last.lookup_pc())) {
            crate::go_runtime::mcall_goroutine(&mut mem, &self.offsets, g, last.pc)?
        } else {
            let bottom = self.bottoms.iter().any(|r| r.contains(last.lookup_pc()));
            let crossed = frames.iter().any(|f| {
                f.via == crate::frame::Via::Transition
                    && table
                        .entries()
                        .iter()
                        .any(|e| e.id == f.transition && matches!(e.rule, Rule::ContinueChain))
            });
            // A walk that ended (a zero frame pointer) outside Go's code may be a cgo call's C
            // frames, whose goroutine `g.sched` holds (FP mode: libc left a zero there).
            let ended_in_c = stop == StopReason::End && !self.is_go_code(cx.symbols, Some(&last));
            if bottom || crossed || !(stop.is_truncated() || ended_in_c) {
                return None;
            }
            crate::go_runtime::switched_goroutine(&mut mem, &self.offsets, g, self.switch_marker?)?
        };
        Some(continue_from(cx, frames, regs, id, None))
    }
}

/// A Go thread: its current g (amd64 `fs_base - 8`, arm64 x28: g0, or gsignal in a handler),
/// that g's m, and the goroutine the m is running (`m.curg`), all non-zero.
struct GoThread {
    g: u64,
    m: u64,
    curg: u64,
}

/// The g -> m -> curg read, in one place.
fn go_thread(core: &Core, t: &Thread, o: &crate::go_runtime::GoOffsets) -> Option<GoThread> {
    let mut mem = core.memory();
    let g = crate::go_runtime::thread_g(&mut mem, core.arch, t.tls, t.x28)?;
    let m = mem.read_u64(g.checked_add(o.g_m)?)?;
    if m == 0 {
        return None;
    }
    let curg = mem.read_u64(m.checked_add(o.m_curg)?)?;
    (curg != 0).then_some(GoThread { g, m, curg })
}

/// Walks on from `regs` (a return address and its frame pointer) after the walk of `frames`
/// ended: the new frames are on the next stack index (or on `stack`), the first marked as found
/// through transition `id` (unless `id` is 0, where it keeps its own `via`).
fn continue_from(
    cx: &Walks<'_>,
    frames: &[Frame],
    regs: crate::arch::Regs,
    id: Id,
    stack: Option<u16>,
) -> (Vec<Frame>, StopReason) {
    let base = stack.unwrap_or_else(|| frames.last().map_or(0, |f| f.stack.saturating_add(1)));
    let start = Start {
        regs,
        pc_is_return_address: true,
    };
    let mut more = vec![Frame::EMPTY; cx.max_frames.saturating_sub(frames.len())];
    let trace = cx.walk(start, &mut cx.memory(), &mut more);
    more.truncate(trace.len);
    for f in more.iter_mut() {
        f.stack = f.stack.saturating_add(base);
    }
    if id != 0 {
        if let Some(f) = more.first_mut() {
            f.via = crate::frame::Via::Transition;
            f.transition = id;
        }
    }
    (more, trace.stop)
}

/// A core's memory, with code the core lacks read from the modules' files (kernel cores leave
/// out unmodified file-backed text).
struct WithCode<'a> {
    core: crate::core_file::CoreMemory<'a>,
    symbols: &'a Symbolizer,
}

impl crate::memory::Memory for WithCode<'_> {
    #[inline]
    fn read_u64(&mut self, addr: u64) -> Option<u64> {
        self.core.read_u64(addr)
    }
    #[inline]
    fn stack_range(&mut self, addr: u64) -> Option<Range> {
        self.core.stack_range(addr)
    }
    fn read_code(&mut self, addr: u64, out: &mut [u8]) -> bool {
        self.core.read_code(addr, out) || self.symbols.read_code(addr, out)
    }
}

/// What every walk of one core shares: the core (memory, architecture, PAC mask), its
/// symbols (and their code), the transition table, the CFI and the mode. The walker is set up
/// in one place, [`Walks::walk_as`].
#[derive(Clone, Copy)]
struct Walks<'a> {
    core: &'a Core,
    symbols: &'a Symbolizer,
    table: &'a TransitionTable,
    transitions: CoreTransitions<'a>,
    cfi: &'a crate::dwarf::OfflineCfi<'a>,
    mode: Mode,
    /// Most frames per thread ([`Options::max_frames`]).
    max_frames: usize,
}

impl<'a> Walks<'a> {
    fn with_mode(self, mode: Mode) -> Self {
        Walks { mode, ..self }
    }

    fn memory(&self) -> WithCode<'a> {
        WithCode {
            core: self.core.memory(),
            symbols: self.symbols,
        }
    }

    /// One walk from `start` with the core's architecture.
    fn walk(&self, start: Start, mem: &mut WithCode<'_>, buf: &mut [Frame]) -> Trace {
        match self.core.arch {
            ArchKind::X86_64 => self.walk_as::<X86_64>(start, mem, buf),
            ArchKind::Aarch64 => self.walk_as::<Aarch64>(start, mem, buf),
        }
    }

    fn walk_as<A: Arch>(&self, start: Start, mem: &mut WithCode<'_>, buf: &mut [Frame]) -> Trace {
        let mut w: Walker<A, _, _> = Walker::with_cfi(self.transitions, self.cfi, self.mode);
        w.pac_mask = self.core.pac_mask;
        w.walk(start, mem, buf)
    }

    /// A thread's walk from its registers.
    fn thread(&self, t: &Thread, buf: &mut [Frame]) -> Trace {
        match self.core.arch {
            ArchKind::X86_64 => self.thread_as::<X86_64>(t, buf),
            ArchKind::Aarch64 => self.thread_as::<Aarch64>(t, buf),
        }
    }

    fn thread_as<A: Arch>(&self, t: &Thread, buf: &mut [Frame]) -> Trace {
        let mut mem = self.memory();
        let mut regs = t.regs;
        regs.pc = A::strip_ra(regs.pc, self.core.pac_mask);
        // Hybrid without CFI for the leaf (a module without usable CFI, Go's compressed
        // .debug_frame before it was read) walks the leaf as frame-pointer mode does.
        let leaf_without_cfi = || {
            self.cfi.rule(regs.pc).is_none_or(|r| {
                r.flags() & (crate::dwarf::CfiRow::GAP | crate::dwarf::CfiRow::UNSUPPORTED) != 0
            })
        };
        let fp_leaf =
            self.mode == Mode::FramePointer || (self.mode == Mode::Hybrid && leaf_without_cfi());
        if fp_leaf && buf.len() >= 2 {
            let slot = A::prologue_ra_slot(regs.pc, regs.sp, &mut |a, b| mem.read_code(a, b));
            let ra = slot.and_then(|at| Some((at, mem.read_u64(at).filter(|&ra| ra != 0)?)));
            if let Some((ra_at, ra)) = ra {
                // The leaf has not linked its frame record yet: its caller is the return
                // address at `ra_at`, and the frame pointer is still the caller's.
                buf[0] = Frame {
                    pc: regs.pc,
                    stack: 0,
                    via: crate::frame::Via::Regs,
                    flags: Frame::EXACT,
                    transition: 0,
                };
                let Some(sp) = ra_at.checked_add(8) else {
                    return self.walk_as::<A>(Start::exact(regs), &mut mem, buf);
                };
                let caller = crate::arch::Regs {
                    pc: ra,
                    sp,
                    fp: regs.fp,
                    lr: 0,
                };
                let start = Start {
                    regs: caller,
                    pc_is_return_address: true,
                };
                let mut trace = self.walk_as::<A>(start, &mut mem, &mut buf[1..]);
                buf[1].via = crate::frame::Via::Regs;
                trace.len += 1;
                return trace;
            }
        }
        self.walk_as::<A>(Start::exact(regs), &mut mem, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Image, Region};

    fn slot(code: &[u8], sp: u64) -> Option<u64> {
        let regions = [Region {
            base: 0x1000,
            bytes: code,
            is_stack: false,
        }];
        let mut mem = Image::new(&regions);
        crate::arch::x86_64::prologue_ra_slot(0x1000, sp, &mut |a, b| mem.read_code(a, b))
    }

    /// `starts_of` finds every start of the pattern (overlapping ones too: a sigreturn
    /// sequence cannot overlap itself, so `memmem`'s non-overlapping search found the same), in
    /// random bytes over a small alphabet (many near misses) and at both ends.
    #[test]
    fn starts_of_agrees_with_memmem() {
        let mut rng = crate::memory::Rng(0x5eed_1234);
        for round in 0..400 {
            let len = rng.below(300) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.below(3) as u8).collect();
            let n = 1 + rng.below(4) as usize;
            let pattern: Vec<u8> = (0..n).map(|_| rng.below(3) as u8).collect();
            let ours: Vec<usize> = starts_of(&bytes, &pattern).collect();
            let theirs: Vec<usize> = (0..(len + 1).saturating_sub(n))
                .filter(|&i| bytes[i..i + n] == pattern[..])
                .collect();
            assert_eq!(ours, theirs, "round {round}");
        }
        let code = crate::arch::x86_64::SIGRETURN_CODE;
        let mut page = code.to_vec();
        page.extend([0x90; 100]);
        page.extend(code);
        let found: Vec<usize> = starts_of(&page, &code).collect();
        assert_eq!(found, [0, 100 + code.len()]);
        assert_eq!(starts_of(&code[1..], &code).count(), 0);
        assert_eq!(starts_of(&[], &code).count(), 0);
    }

    #[test]
    fn transition_ids_are_checked() {
        assert_eq!(next_id(0), Some(1));
        assert_eq!(next_id(MAX_TRANSITIONS - 1), Some(MAX_TRANSITIONS as Id));
        assert_eq!(next_id(MAX_TRANSITIONS), None);
        assert_eq!(next_id(65_535), None, "would wrap to 0");
        assert_eq!(next_id(usize::MAX), None);
    }

    #[test]
    fn prologue_slots() {
        let pad = |b: &[u8]| {
            let mut v = b.to_vec();
            v.resize(16, 0x90);
            v
        };
        assert_eq!(slot(&pad(&[0x55, 0x48, 0x89, 0xe5]), 0x8000), Some(0x8000));
        assert_eq!(slot(&pad(&[0x48, 0x89, 0xe5]), 0x8000), Some(0x8008));
        // Go: sub $0x38,%rsp; mov %rbp,0x30(%rsp); lea 0x30(%rsp),%rbp (runtime.malg).
        let go = [
            0x48, 0x83, 0xec, 0x38, 0x48, 0x89, 0x6c, 0x24, 0x30, 0x48, 0x8d, 0x6c, 0x24, 0x30,
        ];
        assert_eq!(slot(&pad(&go), 0x8000), Some(0x8000));
        assert_eq!(slot(&pad(&go[4..]), 0x8000), Some(0x8038));
        assert_eq!(slot(&pad(&go[9..]), 0x8000), Some(0x8038));
        // A `sub` that is not a Go prologue, ordinary code, unreadable code.
        assert_eq!(slot(&pad(&[0x48, 0x83, 0xec, 0x38, 0x90]), 0x8000), None);
        assert_eq!(slot(&pad(&[0x90, 0x55]), 0x8000), None);
        assert_eq!(slot(&[0x55], 0x8000), None);
    }
}

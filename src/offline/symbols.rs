//! Symbols: function names for pcs, from ELF symbol tables (`.symtab` and `.dynsym`, read with
//! `object`, demangled with `rustc-demangle`).
//!
//! A [`Symbolizer`] holds modules (an ELF file and its load bias: runtime address is file
//! address plus bias). Modules come from a core's `NT_FILE` mappings, from an executable given by hand
//! (qemu-user cores have no `NT_FILE`), or from `/proc/self/maps` for the running process.
//! Building one allocates and reads files: do it outside signal handlers.

use crate::cfi::section_names::section_by_name;
use crate::core_file::Mapping;
use crate::memory::Range;
use crate::offline::debug_files::DebugDirs;
use crate::safe_open::{Mapped, Policy};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SectionKind, SymbolKind};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Most mapped files [`Symbolizer::from_mappings`] tries to open (loaded or not): a core may
/// list any number of paths (thousands of `NT_FILE` entries, many spellings of one file); real
/// processes map a few hundred.
pub const MAX_MODULES: usize = 4096;

/// A function symbol found for a pc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol<'a> {
    /// Demangled function name.
    pub name: &'a str,
    /// Path of the module that contains it.
    pub module: &'a str,
    /// Offset of the pc from the function's start.
    pub offset: u64,
}

/// One function symbol, its name left in the file's string table until it is asked for.
#[derive(Clone, Copy, Debug)]
struct Func {
    /// File address.
    addr: u64,
    size: u64,
    /// Where the name is: an offset in the file ([`NAME_IN_FILE`]), in the debug file
    /// ([`NAME_IN_DEBUG`]), or an index in `owned` ([`NAME_OWNED`]), in the top two bits.
    name: u64,
    /// The name's length in bytes.
    len: u32,
    /// The symbol's binding, ranked: 0 global (or GNU unique), 1 weak, 2 local (or other).
    bind: u8,
}

/// [`Func::bind`] from an ELF symbol's `st_info`.
fn bind_rank(st_info: u8) -> u8 {
    match st_info >> 4 {
        1 | 10 => 0,
        2 => 1,
        _ => 2,
    }
}

const NAME_IN_FILE: u64 = 0;
const NAME_IN_DEBUG: u64 = 1 << 62;
const NAME_OWNED: u64 = 2 << 62;
const NAME_WHERE: u64 = 3 << 62;

/// Name-length buckets of [`Module::function`]'s index.
const LEN_BUCKETS: usize = 256;

/// Rust names (legacy `_ZN…E`, v0 `_R…`) are demangled; C and Go names are shown as they are.
fn is_rust_name(raw: &str) -> bool {
    raw.starts_with("_ZN") || raw.starts_with("_R") || raw.starts_with("__ZN")
}

/// A function name as a reader wants it ([`demangled`], else as it is): for names from DWARF
/// (inlined functions' linkage names), which are mangled for C++ as for Rust.
#[cfg_attr(not(feature = "profilers"), allow(dead_code))]
pub(crate) fn readable(raw: &str) -> String {
    demangled(raw).unwrap_or_else(|| raw.to_string())
}

/// A mangled name as a reader wants it: Rust's (legacy or v0, without the hash), else C++'s
/// (Itanium ABI, with parameter types, as gdb and eu-stack print it); `None` when it is
/// neither (a C name, or a name that does not demangle).
fn demangled(raw: &str) -> Option<String> {
    if is_rust_name(raw) {
        if let Ok(d) = rustc_demangle::try_demangle(raw) {
            return Some(format!("{d:#}"));
        }
    }
    if raw.starts_with("_Z") {
        let sym = cpp_demangle::Symbol::new(raw).ok()?;
        return sym.demangle().ok();
    }
    None
}

#[cfg(test)]
thread_local! {
    /// How many symbol tables this thread listed or sorted ([`Module::funcs`], [`Module::order`]):
    /// tests check that a live walk does neither while the threads are stopped.
    pub(crate) static TABLES_READ: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One loaded module.
pub struct Module {
    /// The path it was loaded from (as the process saw it).
    pub path: String,
    /// The file read (under `--sysroot` for cross-architecture cores).
    pub file: PathBuf,
    /// Runtime address = file address + bias.
    pub bias: u64,
    /// Runtime address range of its segments.
    pub range: Range,
    /// Function symbols in order of appearance (symtab, dynsym, then the debug file's symtab):
    /// at one address the first sized symbol names the function; exact-name lookups answer
    /// the first match. At most `u32::MAX` (indexed by `u32`). Read from `tables` on first use:
    /// a one-shot walk answers its lookups through [`Module::prepare`] and
    /// [`Module::prepare_names`], which read the tables in place.
    funcs: std::sync::OnceLock<Vec<Func>>,
    /// The 64-bit ELF symbol tables `funcs` come from, in order (none for other files, whose
    /// `funcs` are read at once).
    tables: Vec<RawTable>,
    /// Indices in `funcs` sorted by (address, unsized, order of appearance); the first of a run
    /// at one address is the function there (symtab and dynsym list most functions twice).
    /// Sorted on the first lookup [`Module::prepare`] did not answer.
    order: std::sync::OnceLock<Vec<u32>>,
    /// Answers for the pcs given to [`Module::prepare`], sorted by file address.
    prepared: std::sync::OnceLock<Vec<Prepared>>,
    /// Demangled Rust names, by index in `funcs`, made when first asked for (allocated on the
    /// first).
    demangled: std::sync::OnceLock<Box<[std::sync::OnceLock<Box<str>>]>>,
    /// Names found outside the mapped files (none for ELF string tables).
    owned: Vec<String>,
    /// Indices in `funcs` grouped by name length (a counting sort, made on the first
    /// exact-name lookup): `(starts, indices)`, bucket `n` is
    /// `indices[starts[n]..starts[n + 1]]`; lengths from [`LEN_BUCKETS`] - 1 up share the last.
    by_len: std::sync::OnceLock<(Vec<u32>, Vec<u32>)>,
    /// [`Module::function`]'s answers for the names given to [`Module::prepare_names`].
    named: std::sync::OnceLock<Vec<(&'static str, Option<Range>)>>,
    /// The file, mapped read-only.
    data: Mapped,
    /// The separate debug file whose symbol table was read, mapped read-only.
    debug: Option<Mapped>,
    /// The separate debug file found for the file (its DWARF's), whether or not its symbol
    /// table was read.
    debug_path: Option<PathBuf>,
    /// That file, mapped, when its symbol table was not read (`debug` holds it otherwise).
    debug_unread: Option<Mapped>,
    /// Where debug files are looked for (the module's supplementary DWARF too).
    debug_dirs: DebugDirs,
    /// Executable sections: (file address, range of `data`), for finding code by its
    /// instructions.
    code: Vec<(u64, std::ops::Range<usize>)>,
    /// x86_64 PLT sections (`.plt`, `.plt.sec`, `.plt.got`): (file address range, entry size).
    plt: Vec<(Range, u64)>,
    /// Their stubs' names (`memcpy@plt`), by file address, made on the first lookup of a pc
    /// in one ([`plt_stubs`]).
    plt_names: std::sync::OnceLock<Vec<(u64, u64, String)>>,
    /// A Go binary (it has a `.gopclntab`): names are shown as Go prints them
    /// ([`go_name_for_print`]).
    go: bool,
    /// Stripped, with nothing found to name its local functions: no `.symtab`, no separate
    /// debug file or MiniDebugInfo, no Go function table (only `.dynsym`'s exports, if any).
    stripped: bool,
}

/// The PLT sections of an x86_64 ELF file: (file address range, entry size: 8 in `.plt.got`,
/// 16 elsewhere).
fn plt_sections(file: &object::File<'_>) -> Vec<(Range, u64)> {
    if file.architecture() != object::Architecture::X86_64 {
        return Vec::new();
    }
    [".plt", ".plt.sec", ".plt.got"]
        .iter()
        .filter_map(|n| {
            let s = section_by_name(file, n)?;
            let lo = s.address();
            let hi = lo.checked_add(s.size())?;
            (lo < hi).then(|| (Range::new(lo, hi), if n.ends_with("got") { 8 } else { 16 }))
        })
        .collect()
}

/// The names of an x86_64 file's PLT stubs, as gdb names them (`memcpy@plt`): each stub's
/// indirect jump (`jmp *disp(%rip)`, after an `endbr64` and a `bnd` prefix or not) goes
/// through a GOT slot that a dynamic relocation (`JUMP_SLOT`, `GLOB_DAT`) names.
/// `(file address, size, name)`, sorted. A stub without such a jump (the resolver's PLT0, a
/// lazy `.plt` entry beside `.plt.sec`) has none.
fn plt_stubs(data: &[u8], sections: &[(Range, u64)]) -> Vec<(u64, u64, String)> {
    use object::ObjectSymbolTable;
    let Ok(file) = object::File::parse(data) else {
        return Vec::new();
    };
    let Some(dynsyms) = file.dynamic_symbol_table() else {
        return Vec::new();
    };
    let slots: std::collections::HashMap<u64, String> = file
        .dynamic_relocations()
        .map(|it| {
            it.filter_map(|(slot, r)| match r.target() {
                object::RelocationTarget::Symbol(i) => {
                    let name = dynsyms.symbol_by_index(i).ok()?.name().ok()?;
                    (!name.is_empty()).then(|| (slot, name.to_string()))
                }
                _ => None,
            })
            .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for &(range, entry) in sections {
        let Some(bytes) = file
            .sections()
            .find(|s| s.address() == range.lo && s.size() == range.hi - range.lo)
            .and_then(|s| s.data().ok())
        else {
            continue;
        };
        for (k, stub) in bytes.chunks_exact(entry as usize).enumerate() {
            let at = range.lo + k as u64 * entry;
            // `ff 25 disp32` at 0, after `endbr64` (4), or after `endbr64; bnd` (5).
            let jump = [0usize, 4, 5]
                .into_iter()
                .find(|&i| stub.get(i..i + 2) == Some(&[0xff, 0x25]));
            let Some(i) = jump else { continue };
            let Some(disp) = stub.get(i + 2..i + 6) else {
                continue;
            };
            let disp = i32::from_le_bytes([disp[0], disp[1], disp[2], disp[3]]);
            let slot = at
                .wrapping_add((i + 6) as u64)
                .wrapping_add_signed(i64::from(disp));
            if let Some(name) = slots.get(&slot) {
                out.push((at, entry, format!("{name}@plt")));
            }
        }
    }
    out.sort_unstable_by_key(|e| e.0);
    out
}

/// May [`go_name_for_print`] change `raw` (a cheap test, no allocation)?
fn go_print_differs(raw: &str) -> bool {
    raw.ends_with(".abi0")
        || raw.ends_with(".abiinternal")
        || (raw.contains('[') && raw.contains(']') && !raw.contains("[...]"))
}

/// A Go function's name as Go's tracebacks and profiles print it (`runtime.funcNameForPrint`),
/// when that differs from the symbol's: without the ELF symbol's ABI suffix
/// (`runtime.goexit.abi0`), and a generic function's shape arguments as `[...]`
/// (`main.gen[go.shape.int_0]`). So a stripped binary (named from `.gopclntab`) and an
/// unstripped one name their functions alike, and as Go does.
pub(crate) fn go_name_for_print(raw: &str) -> Option<String> {
    if !go_print_differs(raw) {
        return None;
    }
    let base = raw
        .strip_suffix(".abi0")
        .or_else(|| raw.strip_suffix(".abiinternal"))
        .unwrap_or(raw);
    let shaped = match (base.find('['), base.rfind(']')) {
        (Some(i), Some(j)) if j > i && &base[i..=j] != "[...]" => {
            Some(format!("{}[...]{}", &base[..i], &base[j + 1..]))
        }
        _ => None,
    };
    match shaped {
        Some(n) => Some(n),
        None if base.len() != raw.len() => Some(base.to_string()),
        None => None,
    }
}

impl Module {
    /// Loads `path`'s symbols. `map` says where the file was mapped: a runtime address and the
    /// file offset mapped there (the lowest such pair is best); `None` means "at its link
    /// address" (bias 0).
    ///
    /// The file is opened through [`crate::safe_open`] with its default policy: only
    /// non-empty regular files, never blocking, nothing under `/proc` or `/sys` (a core's
    /// `NT_FILE` note may name `/dev/zero`, a FIFO or `/proc/self/pagemap`).
    pub fn load(path: &Path, display: &str, map: Option<(u64, u64)>) -> std::io::Result<Module> {
        let data = crate::safe_open::map_analysed(path, &Policy::default())?;
        let dirs = DebugDirs::default();
        Self::from_mapped(data, path, display, &dirs, |file| placement_bias(file, map))
    }

    /// Loads `path`'s symbols with a known load bias (a link map's `l_addr`).
    pub fn load_biased(path: &Path, display: &str, bias: u64) -> std::io::Result<Module> {
        let data = crate::safe_open::map_analysed(path, &Policy::default())?;
        Self::from_mapped(data, path, display, &DebugDirs::default(), |_| bias)
    }

    /// The module's file, as mapped (for its CFI: no second open).
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Is this a Go binary (it has a `.gopclntab`)?
    pub fn is_go(&self) -> bool {
        self.go
    }

    /// The separate debug file of the module's file when the file itself has no DWARF
    /// (`.debug_info`): `ROOT/.build-id/xx/yyyy.debug` for its GNU build id, else the file its
    /// `.gnu_debuglink` names, looked for as gdb does (build id or CRC checked), beside the
    /// file read or the path the process mapped (see [`crate::offline::debug_files`]; `ROOT`
    /// is `SYSROOT/usr/lib/debug`, then `/usr/lib/debug`). `None` when the file has DWARF or no
    /// such file exists. For source lines (`--lines`, pprof line tables); symbols use the same
    /// search.
    pub fn separate_debug_file(&self) -> Option<PathBuf> {
        let obj = object::File::parse(&*self.data).ok()?;
        if section_by_name(&obj, ".debug_info").is_some_and(|s| s.size() > 0) {
            return None;
        }
        self.debug_path.clone()
    }

    /// The supplementary DWARF file (`dwz -m`'s, named by `.gnu_debugaltlink`) of the file
    /// that holds this module's DWARF (`debug_file`, or the module's own), if found.
    pub fn supplementary_debug_file(&self, debug_file: Option<&Path>) -> Option<PathBuf> {
        match debug_file {
            Some(p) => {
                let m = crate::safe_open::map_analysed(p, &crate::offline::debug_files::policy())
                    .ok()?;
                let obj = object::File::parse(&*m).ok()?;
                self.debug_dirs.altlink(&obj, p)
            }
            None => {
                let obj = object::File::parse(&*self.data).ok()?;
                self.debug_dirs.altlink(&obj, &self.file)
            }
        }
    }

    /// Was this module made from an image in memory (the vDSO, a module a core holds that no
    /// file stood in for), with no file of its own to read?
    pub fn is_image(&self) -> bool {
        self.file.as_os_str().is_empty()
    }

    /// The separate debug file's bytes (see [`Module::separate_debug_file`]): for its
    /// `.debug_frame`, where the file was stripped of the CFI it had only there.
    pub fn debug_bytes(&self) -> Option<&[u8]> {
        self.debug.as_deref().or(self.debug_unread.as_deref())
    }

    fn from_mapped(
        data: Mapped,
        path: &Path,
        display: &str,
        dirs: &DebugDirs,
        bias_of: impl FnOnce(&object::File<'_>) -> u64,
    ) -> std::io::Result<Module> {
        let file = object::File::parse(&*data).map_err(|e| {
            let why = if data.starts_with(b"\x7fELF") {
                format!("a damaged ELF file: {e}")
            } else {
                // `object`'s words for it are "Could not read file magic".
                "not an ELF file".to_string()
            };
            std::io::Error::new(std::io::ErrorKind::InvalidData, why)
        })?;
        let bias = bias_of(&file);
        let mut lo = u64::MAX;
        let mut hi = 0;
        for s in file.segments() {
            lo = lo.min(s.address());
            hi = hi.max(s.address().saturating_add(s.size()));
        }
        let mut funcs: Vec<Func> = Vec::new();
        let mut owned = Vec::new();
        let mut debug = None;
        // Where a name lies: in `bytes` (the file or the debug file, tagged `tag`), else
        // copied into `owned`.
        fn locate(raw: &str, bytes: &[u8], tag: u64, owned: &mut Vec<String>) -> u64 {
            let (p, base) = (raw.as_ptr() as usize, bytes.as_ptr() as usize);
            match p.checked_sub(base) {
                Some(off) if off + raw.len() <= bytes.len() && (off as u64) < 1 << 62 => {
                    off as u64 | tag
                }
                _ => {
                    owned.push(raw.to_string());
                    (owned.len() as u64 - 1) | NAME_OWNED
                }
            }
        }
        // Other files, through `object`'s symbols.
        fn add(
            sym: object::Symbol<'_, '_>,
            bytes: &[u8],
            tag: u64,
            owned: &mut Vec<String>,
            funcs: &mut Vec<Func>,
        ) {
            if sym.kind() != SymbolKind::Text || sym.address() == 0 {
                return;
            }
            let Ok(raw) = sym.name() else { return };
            let (Ok(len), Ok(_)) = (u32::try_from(raw.len()), u32::try_from(funcs.len())) else {
                return;
            };
            funcs.push(Func {
                addr: sym.address(),
                size: sym.size(),
                name: locate(raw, bytes, tag, owned),
                len,
                bind: if sym.is_weak() {
                    1
                } else if sym.is_global() {
                    0
                } else {
                    2
                },
            });
        }
        // A stripped library's local functions (glibc's __restore_rt, start_thread) are in its
        // separate debug file, found by build id, when installed (Debian's *-dbg packages), or
        // by its `.gnu_debuglink`. A file with a symbol table but no DWARF may have been
        // stripped of most symbols (`strip -K`): its debug file is taken when its symbol table
        // is larger.
        let own_symtab = section_by_name(&file, ".symtab").map(|s| s.size());
        let mut debug_path = None;
        let mut debug_unread = None;
        if own_symtab.is_none()
            || section_by_name(&file, ".debug_info").is_none_or(|s| s.size() == 0)
        {
            let found = dirs
                .for_file(&file)
                .and_then(|p| {
                    let m =
                        crate::safe_open::map_analysed(&p, &crate::offline::debug_files::policy());
                    Some((p, m.ok()?))
                })
                .or_else(|| dirs.debuglink(&file, &[path, Path::new(display)]));
            if let Some((p, m)) = found {
                debug_path = Some(p);
                let larger = |m: &Mapped| {
                    let d = object::File::parse(&**m).ok();
                    let theirs = d.and_then(|d| section_by_name(&d, ".symtab").map(|s| s.size()));
                    theirs.unwrap_or(0) > own_symtab.unwrap_or(0)
                };
                if own_symtab.is_none() || larger(&m) {
                    debug = Some(m);
                } else {
                    debug_unread = Some(m);
                }
            }
        }
        // No debug file: Fedora's and RHEL's MiniDebugInfo names the local functions.
        if own_symtab.is_none() && debug.is_none() {
            debug = mini_debuginfo(&file).map(Mapped::Owned);
        }
        // 64-bit ELF (every core this crate reads): the symbol tables are read in place, when
        // first needed, names only delimited (their UTF-8 is checked when they are used);
        // other files through `object`, at once.
        let file_tables = elf_tables(&data, NAME_IN_FILE, true);
        let debug_file = debug
            .as_ref()
            .and_then(|d| Some((d, object::File::parse(&**d).ok()?)));
        let debug_tables = debug_file
            .as_ref()
            .map(|(d, _)| elf_tables(d, NAME_IN_DEBUG, false));
        let mut tables = Vec::new();
        match (file_tables, debug_tables) {
            (Some(f), None) => tables = f,
            (Some(f), Some(Some(d))) => tables = f.into_iter().chain(d).collect(),
            (file_tables, debug_tables) => {
                // Some part is not 64-bit ELF: every symbol read now, in order.
                match file_tables {
                    Some(f) => f.iter().for_each(|t| t.read(&data, &mut funcs)),
                    None => {
                        for sym in file.symbols().chain(file.dynamic_symbols()) {
                            add(sym, &data, NAME_IN_FILE, &mut owned, &mut funcs);
                        }
                    }
                }
                if let Some((d, dfile)) = &debug_file {
                    match debug_tables.flatten() {
                        Some(t) => t.iter().for_each(|t| t.read(d, &mut funcs)),
                        None => {
                            for sym in dfile.symbols() {
                                add(sym, d, NAME_IN_DEBUG, &mut owned, &mut funcs);
                            }
                        }
                    }
                }
            }
        }
        drop(debug_file);
        // A stripped Go binary (`-ldflags=-s -w`) keeps its function table for the runtime's
        // own tracebacks: `.gopclntab` names every function (the symbol tables, read now, come
        // first).
        if own_symtab.is_none() && debug.is_none() {
            let go = gopclntab_funcs(&file, &data);
            if !go.is_empty() {
                for t in tables.drain(..) {
                    t.read(&data, &mut funcs);
                }
                funcs.extend(go.into_iter().take(u32::MAX as usize - funcs.len()));
            }
        }
        let len = data.len();
        let code = file
            .sections()
            .filter(|s| s.kind() == SectionKind::Text)
            .filter_map(|s| {
                let (off, size) = s.file_range()?;
                let lo = usize::try_from(off).ok()?;
                let hi = lo.checked_add(usize::try_from(size).ok()?)?;
                (hi <= len).then_some((s.address(), lo..hi))
            })
            .collect();
        let go = crate::cfi::gopclntab::is_go(&file);
        let stripped = own_symtab.is_none() && debug.is_none() && !go;
        let plt = plt_sections(&file);
        drop(file);
        Ok(Module {
            go,
            stripped,
            plt,
            plt_names: std::sync::OnceLock::new(),
            path: display.to_string(),
            file: path.to_path_buf(),
            bias,
            range: if lo < hi {
                Range::new(lo.wrapping_add(bias), hi.wrapping_add(bias))
            } else {
                Range::default()
            },
            funcs: if tables.is_empty() {
                std::sync::OnceLock::from(funcs)
            } else {
                std::sync::OnceLock::new()
            },
            tables,
            order: std::sync::OnceLock::new(),
            prepared: std::sync::OnceLock::new(),
            demangled: std::sync::OnceLock::new(),
            owned,
            by_len: std::sync::OnceLock::new(),
            named: std::sync::OnceLock::new(),
            data,
            debug,
            debug_path,
            debug_unread,
            debug_dirs: dirs.clone(),
            code,
        })
    }

    /// The raw bytes of a symbol's name.
    fn raw_bytes(&self, f: &Func) -> &[u8] {
        let at = (f.name & !NAME_WHERE) as usize;
        let bytes: &[u8] = match f.name & NAME_WHERE {
            NAME_IN_FILE => &self.data,
            NAME_IN_DEBUG => self.debug.as_deref().unwrap_or_default(),
            _ => return self.owned.get(at).map_or(&[], |s| s.as_bytes()),
        };
        at.checked_add(f.len as usize)
            .and_then(|end| bytes.get(at..end))
            .unwrap_or_default()
    }

    /// The raw (mangled) name of a symbol; `None` when it is not UTF-8 (such a symbol does
    /// not exist for lookups, as `object` cannot name it).
    fn raw_name(&self, f: &Func) -> Option<&str> {
        std::str::from_utf8(self.raw_bytes(f)).ok()
    }

    /// Does `f` have a name to show (any bytes: one that is not UTF-8 is shown lossily, not
    /// skipped for a neighbour's)?
    fn has_name(&self, f: &Func) -> bool {
        !self.raw_bytes(f).is_empty()
    }

    /// The function symbols (read from the tables on first use).
    fn funcs(&self) -> &[Func] {
        self.funcs.get_or_init(|| {
            #[cfg(test)]
            TABLES_READ.with(|n| n.set(n.get() + 1));
            // Room for every entry at once (growing the vector copied it, page by page).
            let mut all = Vec::with_capacity(self.tables.iter().map(|t| t.syms.len() / 24).sum());
            for t in &self.tables {
                t.read(self.table_bytes(t), &mut all);
            }
            all
        })
    }

    /// The file a table is in.
    fn table_bytes(&self, t: &RawTable) -> &[u8] {
        if t.tag == NAME_IN_DEBUG {
            self.debug.as_deref().unwrap_or_default()
        } else {
            &self.data
        }
    }

    /// The name shown for `f`: demangled for Rust and C++ (kept in `cell`), else the raw
    /// name.
    fn shown<'s>(&'s self, f: &Func, cell: &'s std::sync::OnceLock<Box<str>>) -> &'s str {
        let Some(raw) = self.raw_name(f) else {
            // Not UTF-8: shown with U+FFFD for the bytes that are not.
            return cell.get_or_init(|| {
                String::from_utf8_lossy(self.raw_bytes(f))
                    .into_owned()
                    .into_boxed_str()
            });
        };
        if self.go && !is_rust_name(raw) {
            if let Some(n) = go_name_for_print(raw) {
                return cell.get_or_init(|| n.into_boxed_str());
            }
        }
        if !raw.starts_with("_Z") && !is_rust_name(raw) {
            return raw;
        }
        cell.get_or_init(|| {
            demangled(raw)
                .unwrap_or_else(|| raw.to_string())
                .into_boxed_str()
        })
    }

    /// The name shown for `funcs[i]`: demangled for Rust, else the raw name.
    fn name(&self, i: usize) -> &str {
        let funcs = self.funcs();
        let Some(f) = funcs.get(i) else {
            return "";
        };
        if let Some(raw) = self
            .raw_name(f)
            .filter(|r| !(is_rust_name(r) || self.go && go_print_differs(r)))
        {
            return raw;
        }
        let cells = self
            .demangled
            .get_or_init(|| vec![std::sync::OnceLock::new(); funcs.len()].into_boxed_slice());
        self.shown(f, &cells[i])
    }

    /// Indices in `funcs` by (address, unsized, order of appearance).
    fn order(&self) -> &[u32] {
        self.order.get_or_init(|| {
            #[cfg(test)]
            TABLES_READ.with(|n| n.set(n.get() + 1));
            let funcs = self.funcs();
            let mut order = sort_order(funcs);
            // At each address the preferred symbol first ([`Module::prefer`]).
            let mut k = 0;
            while k < order.len() {
                let addr = funcs[order[k] as usize].addr;
                let mut end = k + 1;
                let mut best = k;
                while end < order.len() && funcs[order[end] as usize].addr == addr {
                    if self.prefer(&funcs[order[end] as usize], &funcs[order[best] as usize]) {
                        best = end;
                    }
                    end += 1;
                }
                order[k..=best].rotate_right(1);
                k = end;
            }
            order
        })
    }

    /// Is `a` a better name than `b` for the function at their (equal) address? Sized before
    /// unsized, named before unnamed, exported (global or weak) before local, then fewer
    /// leading underscores, then global before weak: glibc's public names, `malloc` (not its
    /// aliases `__libc_malloc`, `__GI___libc_malloc`) and the weak `nanosleep` (not
    /// `__nanosleep`); else the first listed.
    fn prefer(&self, a: &Func, b: &Func) -> bool {
        if (a.size != 0) != (b.size != 0) {
            return a.size != 0;
        }
        let (na, nb) = (self.raw_bytes(a), self.raw_bytes(b));
        if na.is_empty() != nb.is_empty() {
            return !na.is_empty();
        }
        if (a.bind == 2) != (b.bind == 2) {
            return a.bind != 2;
        }
        let under = |n: &[u8]| n.iter().take_while(|&&c| c == b'_').count();
        let (ua, ub) = (under(na), under(nb));
        if ua != ub {
            return ua < ub;
        }
        a.bind < b.bind
    }

    /// The symbol at sorted position `k`.
    fn sorted(&self, k: usize) -> &Func {
        &self.funcs()[self.order()[k] as usize]
    }

    /// The symbol (its index in `funcs`) naming the function at the highest address among
    /// sorted positions `..hi`: the first with a name at that address (sized first, then in
    /// order of appearance); an address whose names are all empty leaves it to the one below.
    fn named_at_or_below(&self, mut hi: usize) -> Option<usize> {
        let funcs = self.funcs();
        while hi > 0 {
            let addr = self.sorted(hi - 1).addr;
            let lo = self
                .order()
                .partition_point(|&i| funcs[i as usize].addr < addr);
            if let Some(k) = (lo..hi).find(|&k| self.has_name(self.sorted(k))) {
                return Some(self.order()[k] as usize);
            }
            hi = lo;
        }
        None
    }

    /// The function containing runtime address `pc`.
    pub fn lookup(&self, pc: u64) -> Option<Symbol<'_>> {
        let a = pc.wrapping_sub(self.bias);
        // A PLT stub: the symbol tables name none (the symbol before it, `_init`, covered it).
        if self.plt.iter().any(|(r, _)| r.contains(a)) {
            let stubs = self
                .plt_names
                .get_or_init(|| plt_stubs(&self.data, &self.plt));
            let i = stubs.partition_point(|e| e.0 <= a);
            if let Some((at, size, name)) = i.checked_sub(1).map(|i| &stubs[i]) {
                if a < at + size {
                    return Some(Symbol {
                        name,
                        module: &self.path,
                        offset: a - at,
                    });
                }
            }
        }
        let prepared = self
            .prepared
            .get()
            .and_then(|p| Some(&p[p.binary_search_by_key(&a, |e| e.addr).ok()?]));
        if let Some(p) = prepared {
            let f = p.func.as_ref()?;
            return Some(Symbol {
                name: self.shown(f, &p.name),
                module: &self.path,
                offset: a - f.addr,
            });
        }
        let funcs = self.funcs();
        let hi = self
            .order()
            .partition_point(|&i| funcs[i as usize].addr <= a);
        let i = self.named_at_or_below(hi)?;
        covers(&funcs[i], a).then(|| Symbol {
            name: self.name(i),
            module: &self.path,
            offset: a - funcs[i].addr,
        })
    }

    /// Is the file stripped with nothing found to name its local functions (no `.symtab`, no
    /// separate debug file or MiniDebugInfo, not Go)? Its exported functions (`.dynsym`) still
    /// have names.
    pub fn is_stripped(&self) -> bool {
        self.stripped
    }

    /// Answers [`Module::lookup`] for `pcs` (runtime addresses) ahead, in one pass over the
    /// symbol tables as they lie in the file, without sorting or even listing the symbols: a
    /// one-shot walk looks up a few dozen pcs in a C library's ten thousand symbols, whose
    /// listing and sort were a third of `unwind stack`'s instructions. Lookups of other pcs
    /// list and sort the symbols as before. Only the first call counts.
    pub fn prepare(&self, pcs: &[u64]) {
        if self.prepared.get().is_some() {
            return;
        }
        let mut addrs: Vec<u64> = pcs
            .iter()
            .filter(|&&pc| self.range.contains(pc))
            .map(|pc| pc.wrapping_sub(self.bias))
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        let _ = self.prepared.set(self.answers(&addrs));
    }

    /// The file address of the function holding runtime address `pc`, as [`Module::lookup`]
    /// finds it, without listing or sorting the symbol tables when no lookup did yet (one pass
    /// over them, kept nowhere): for a walk that needs one function's start while a live
    /// process is stopped.
    pub fn function_start(&self, pc: u64) -> Option<u64> {
        let a = pc.wrapping_sub(self.bias);
        let known = self.order.get().is_some()
            || self
                .prepared
                .get()
                .is_some_and(|p| p.binary_search_by_key(&a, |e| e.addr).is_ok());
        if known || self.plt.iter().any(|(r, _)| r.contains(a)) {
            return self.lookup(pc).map(|s| a - s.offset);
        }
        if !self.range.contains(pc) {
            return None;
        }
        self.answers(&[a]).pop()?.func.map(|f| f.addr)
    }

    /// [`Module::prepare`]'s answers for file addresses `addrs` (sorted, distinct).
    fn answers(&self, addrs: &[u64]) -> Vec<Prepared> {
        // best[j]: the function at the highest address in (addrs[j - 1], addrs[j]] (sized
        // first, then in order of appearance), among symbols with a name.
        let mut best: Vec<Option<Func>> = vec![None; addrs.len()];
        if let Some(&top) = addrs.last() {
            // Is a function at `addr` of `size` bytes better than `best[j]`?
            // (A symbol at the same address may be better: `prefer`.)
            let better = |best: &Option<Func>, addr: u64| match best {
                None => true,
                Some(g) => addr >= g.addr,
            };
            let take = |best: &mut Option<Func>, f: Func| {
                let replace = match best {
                    Some(g) if g.addr == f.addr => self.prefer(&f, g),
                    _ => self.has_name(&f),
                };
                if replace {
                    *best = Some(f);
                }
            };
            match self.funcs.get() {
                Some(funcs) => {
                    for f in funcs.iter().filter(|f| f.addr <= top) {
                        let j = rank(addrs, f.addr);
                        if better(&best[j], f.addr) {
                            take(&mut best[j], *f);
                        }
                    }
                }
                None => {
                    for t in &self.tables {
                        let bytes = self.table_bytes(t);
                        let strtab = t.strtab(bytes);
                        for r in t.funcs_in(bytes) {
                            if r.addr > top {
                                continue;
                            }
                            let j = rank(addrs, r.addr);
                            if better(&best[j], r.addr) {
                                if let Some(f) = t.func(strtab, r) {
                                    take(&mut best[j], f);
                                }
                            }
                        }
                    }
                }
            }
        }
        // Each address's answer: the best of the highest interval at or below it.
        let mut below = None;
        addrs
            .iter()
            .zip(best)
            .map(|(&a, b)| {
                below = b.or(below);
                Prepared {
                    addr: a,
                    func: below.filter(|f| covers(f, a)),
                    name: std::sync::OnceLock::new(),
                }
            })
            .collect()
    }

    /// The module's file bytes (mapped read-only).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The runtime range of a function at file address `addr` of `size` bytes, as
    /// [`Module::function`] gives it.
    fn range_of(&self, addr: u64, size: u64) -> Range {
        let lo = addr.wrapping_add(self.bias);
        Range::new(lo, lo.saturating_add(size.max(1)))
    }

    /// Answers [`Module::function`] for `names` ahead, in one pass over the symbol tables as
    /// they lie in the file (a core's walk asks a dozen names of every module; the index other
    /// names go through lists the symbols and sorts them by length). Only the first call
    /// counts.
    pub fn prepare_names(&self, names: &[&'static str]) {
        if self.named.get().is_some() {
            return;
        }
        let mut found: Vec<(&'static str, Option<Range>)> =
            names.iter().map(|&n| (n, None)).collect();
        // A name's first eight bytes (fewer for shorter names) and which bytes those are:
        // names are grouped by them, and a symbol's first eight bytes are compared first.
        let head = |b: &[u8]| {
            let mut w = [0u8; 8];
            let n = b.len().min(8);
            w[..n].copy_from_slice(&b[..n]);
            let mask = if n == 8 {
                u64::MAX
            } else {
                (1u64 << (8 * n)) - 1
            };
            (u64::from_le_bytes(w), mask)
        };
        let mut groups: Vec<((u64, u64), Vec<usize>)> = Vec::new();
        // The heads in a 4 096-bit filter, a bit each, and the masks they have (one when every
        // name has eight bytes or more): a symbol's first eight bytes, masked, miss the filter
        // for nearly every symbol of a library that defines none of the names.
        let mut filter = [0u64; 64];
        let mut masks: Vec<u64> = Vec::new();
        let bit = |w: u64| (w.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize;
        for (k, n) in names.iter().enumerate() {
            let h = head(n.as_bytes());
            let b = bit(h.0);
            filter[b / 64] |= 1 << (b % 64);
            if !masks.contains(&h.1) {
                masks.push(h.1);
            }
            match groups.iter_mut().find(|(g, _)| *g == h) {
                Some((_, ks)) => ks.push(k),
                None => groups.push((h, vec![k])),
            }
        }
        let may_match = |w: u64| {
            masks.iter().any(|&m| {
                let b = bit(w & m);
                filter[b / 64] & (1 << (b % 64)) != 0
            })
        };
        match self.funcs.get() {
            Some(funcs) => {
                for f in funcs {
                    let raw = self.raw_bytes(f);
                    let (w, _) = head(raw);
                    if !may_match(w) {
                        continue;
                    }
                    for ((prefix, mask), ks) in &groups {
                        if w & mask != *prefix {
                            continue;
                        }
                        for &k in ks {
                            let (name, r) = &mut found[k];
                            // In order of appearance: the first match is the first symbol.
                            if r.is_none() && raw == name.as_bytes() {
                                *r = Some(self.range_of(f.addr, f.size));
                            }
                        }
                    }
                }
            }
            None => {
                for t in &self.tables {
                    let bytes = self.table_bytes(t);
                    let strtab = t.strtab(bytes);
                    for f in t.funcs_in(bytes) {
                        let w = RawTable::name_head(strtab, f);
                        if !may_match(w) {
                            continue;
                        }
                        for ((prefix, mask), ks) in &groups {
                            if w & mask != *prefix {
                                continue;
                            }
                            for &k in ks {
                                let (name, r) = &mut found[k];
                                if r.is_none() && t.name_is(strtab, f, name.as_bytes()) {
                                    *r = Some(self.range_of(f.addr, f.size));
                                }
                            }
                        }
                    }
                }
            }
        }
        let _ = self.named.set(found);
    }

    /// Runtime range of the function with exactly this raw (mangled) name (the first symbol
    /// of that name in the file's symtab, dynsym, then its debug file's symtab).
    pub fn function(&self, raw_name: &str) -> Option<Range> {
        if let Some((_, r)) = self
            .named
            .get()
            .and_then(|v| v.iter().find(|(n, _)| *n == raw_name))
        {
            return *r;
        }
        let (starts, indices) = self.by_len.get_or_init(|| {
            let bucket = |f: &Func| (f.len as usize).min(LEN_BUCKETS - 1);
            let mut starts = vec![0u32; LEN_BUCKETS + 1];
            let funcs = self.funcs();
            for f in funcs {
                starts[bucket(f) + 1] += 1;
            }
            for n in 1..starts.len() {
                starts[n] += starts[n - 1];
            }
            let mut next = starts.clone();
            let mut indices = vec![0u32; funcs.len()];
            for (i, f) in funcs.iter().enumerate() {
                let b = bucket(f);
                indices[next[b] as usize] = i as u32;
                next[b] += 1;
            }
            (starts, indices)
        });
        let b = raw_name.len().min(LEN_BUCKETS - 1);
        indices[starts[b] as usize..starts[b + 1] as usize]
            .iter()
            .map(|&i| &self.funcs()[i as usize])
            // In order of appearance within a bucket: the first match is the first symbol.
            .find(|f| f.len as usize == raw_name.len() && self.raw_bytes(f) == raw_name.as_bytes())
            .map(|f| self.range_of(f.addr, f.size))
    }

    /// Every function: (demangled name, runtime start, runtime end).
    pub fn functions(&self) -> impl Iterator<Item = (&str, u64, u64)> + '_ {
        // The first symbol with a UTF-8 name at each address.
        (0..self.order().len())
            .filter(move |&k| {
                let f = self.sorted(k);
                self.raw_name(f).is_some()
                    && (0..k)
                        .rev()
                        .map(|j| self.sorted(j))
                        .take_while(|g| g.addr == f.addr)
                        .all(|g| self.raw_name(g).is_none())
            })
            .map(move |k| {
                let f = self.sorted(k);
                let lo = f.addr.wrapping_add(self.bias);
                (
                    self.name(self.order()[k] as usize),
                    lo,
                    lo.wrapping_add(f.size),
                )
            })
    }

    /// Copies the module's code at runtime address `addr` (from its executable sections, as
    /// the file holds them) into `out`; false when the range is not all inside one section.
    pub fn read_code(&self, addr: u64, out: &mut [u8]) -> bool {
        let a = addr.wrapping_sub(self.bias);
        for (start, r) in &self.code {
            let bytes = &self.data[r.clone()];
            let Some(off) = a.checked_sub(*start) else {
                continue;
            };
            let Ok(off) = usize::try_from(off) else {
                continue;
            };
            if let Some(b) = off
                .checked_add(out.len())
                .and_then(|end| bytes.get(off..end))
            {
                out.copy_from_slice(b);
                return true;
            }
        }
        false
    }

    /// Runtime addresses where `pattern` starts in the module's executable sections.
    pub fn find_code(&self, pattern: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        for (addr, r) in &self.code {
            self.data.populate(r.start, r.len());
            let bytes = &self.data[r.clone()];
            if pattern.is_empty() || bytes.len() < pattern.len() {
                continue;
            }
            for i in memchr::memmem::find_iter(bytes, pattern) {
                out.push(addr.wrapping_add(i as u64).wrapping_add(self.bias));
            }
        }
        out
    }
}

/// The order of `funcs` by (address, unsized), order of appearance at equal keys: a stable
/// LSD radix sort of `(address - lowest) << 32 | index` words (12-bit digits, as many as the
/// span of addresses needs: two for a C library), each pass reading one array in order and
/// writing another. A comparison sort, or a radix sort gathering the entries' addresses,
/// showed in `unwind stack` profiles for a C library's ten thousand symbols. Addresses
/// spanning 4 GiB or more (no real module) take a comparison sort.
fn sort_order(funcs: &[Func]) -> Vec<u32> {
    const BITS: u32 = 12;
    const MASK: u64 = (1 << BITS) - 1;
    let lo = funcs.iter().map(|f| f.addr).min().unwrap_or(0);
    let span = funcs.iter().map(|f| f.addr - lo).max().unwrap_or(0);
    if span > u64::from(u32::MAX) {
        let mut order: Vec<u32> = (0..funcs.len() as u32).collect();
        order.sort_by_key(|&i| (funcs[i as usize].addr, funcs[i as usize].size == 0));
        return order;
    }
    let word = |(i, f): (usize, &Func)| (f.addr - lo) << 32 | i as u64;
    // The least significant key first: sized before unsized (a stable partition).
    let mut a: Vec<u64> = Vec::with_capacity(funcs.len());
    a.extend(
        funcs
            .iter()
            .enumerate()
            .filter(|(_, f)| f.size != 0)
            .map(word),
    );
    a.extend(
        funcs
            .iter()
            .enumerate()
            .filter(|(_, f)| f.size == 0)
            .map(word),
    );
    let mut b = vec![0u64; a.len()];
    let mut count = vec![0usize; 1 << BITS];
    let mut shift = 0u32;
    while shift < 32 && span >> shift != 0 {
        count.fill(0);
        for &w in &a {
            count[((w >> (32 + shift)) & MASK) as usize] += 1;
        }
        let mut sum = 0;
        for c in count.iter_mut() {
            let n = *c;
            *c = sum;
            sum += n;
        }
        for &w in &a {
            let d = ((w >> (32 + shift)) & MASK) as usize;
            b[count[d]] = w;
            count[d] += 1;
        }
        std::mem::swap(&mut a, &mut b);
        shift += BITS;
    }
    a.iter().map(|&w| w as u32).collect()
}

/// A 64-bit ELF symbol table, read in place: its entries and string table as ranges of the
/// file (or of the debug file, by `tag`).
#[derive(Clone, Debug)]
struct RawTable {
    /// Where names lie: [`NAME_IN_FILE`] or [`NAME_IN_DEBUG`].
    tag: u64,
    /// The entries (24 bytes each).
    syms: std::ops::Range<usize>,
    /// The string table.
    strs: std::ops::Range<usize>,
    /// Big-endian?
    big: bool,
}

/// A function symbol of a [`RawTable`], its name not yet delimited.
#[derive(Clone, Copy, Debug)]
struct RawFunc {
    addr: u64,
    size: u64,
    /// `st_info`.
    info: u8,
    /// The name's offset in the string table.
    at: usize,
}

impl RawTable {
    /// The function symbols, as `object`'s `symbols()` and `dynamic_symbols()` list them
    /// with kind [`SymbolKind::Text`] and a non-zero address (named or not: see
    /// [`RawTable::func`]), in order. `bytes` is the file the table is in. An iterator, so
    /// that a caller's loop body is compiled into the scan (a C library's debug file has ten
    /// thousand entries; a closure called per symbol was not inlined and cost a third of each
    /// pass).
    #[inline(always)]
    fn funcs_in<'b>(&self, bytes: &'b [u8]) -> RawFuncs<'b> {
        let syms = bytes.get(self.syms.clone()).unwrap_or_default();
        RawFuncs {
            entries: syms.chunks_exact(24),
            big: self.big,
        }
    }

    /// The string table (empty if it is not in `bytes`).
    fn strtab<'b>(&self, bytes: &'b [u8]) -> &'b [u8] {
        bytes.get(self.strs.clone()).unwrap_or_default()
    }

    /// `f` as a [`Func`], its name delimited: up to its NUL, inside the string table, else
    /// `None`: the symbol is unnamed (`object` fails to read it and skips the symbol).
    fn func(&self, strtab: &[u8], f: RawFunc) -> Option<Func> {
        let len = strtab.get(f.at..).and_then(nul_at)?;
        let off = self.strs.start + f.at;
        let len = u32::try_from(len).ok()?;
        if off as u64 >= 1 << 62 {
            return None;
        }
        Some(Func {
            addr: f.addr,
            size: f.size,
            name: off as u64 | self.tag,
            len,
            bind: bind_rank(f.info),
        })
    }

    /// Appends the table's named function symbols to `funcs` (at most `u32::MAX` in all).
    fn read(&self, bytes: &[u8], funcs: &mut Vec<Func>) {
        let strtab = self.strtab(bytes);
        for f in self.funcs_in(bytes) {
            if let (Some(f), Ok(_)) = (self.func(strtab, f), u32::try_from(funcs.len())) {
                funcs.push(f);
            }
        }
    }

    /// The first eight bytes at `f`'s name (fewer, zero-padded, at the string table's end).
    fn name_head(strtab: &[u8], f: RawFunc) -> u64 {
        match strtab.get(f.at..f.at.saturating_add(8)) {
            Some(w) => u64::from_le_bytes(w.try_into().unwrap_or_default()),
            None => {
                let rest = strtab.get(f.at..).unwrap_or_default();
                let mut w = [0u8; 8];
                let n = rest.len().min(8);
                w[..n].copy_from_slice(&rest[..n]);
                u64::from_le_bytes(w)
            }
        }
    }

    /// Is `f`'s name exactly `name` (a name without NUL)?
    fn name_is(&self, strtab: &[u8], f: RawFunc, name: &[u8]) -> bool {
        f.at.checked_add(name.len())
            .and_then(|end| Some((strtab.get(f.at..end)?, strtab.get(end)?)))
            .is_some_and(|(s, &nul)| s == name && nul == 0)
            && ((self.strs.start + f.at) as u64) < 1 << 62
    }
}

/// [`RawTable::funcs_in`]: the function symbols among a table's entries.
struct RawFuncs<'b> {
    /// The entries not yet read (24 bytes each).
    entries: std::slice::ChunksExact<'b, u8>,
    /// Big-endian?
    big: bool,
}

impl Iterator for RawFuncs<'_> {
    type Item = RawFunc;

    #[inline(always)]
    fn next(&mut self) -> Option<RawFunc> {
        let big = self.big;
        let u64_at = |b: [u8; 8]| {
            if big {
                u64::from_be_bytes(b)
            } else {
                u64::from_le_bytes(b)
            }
        };
        for e in self.entries.by_ref() {
            let Ok(e) = <&[u8; 24]>::try_from(e) else {
                continue;
            };
            // Elf64_Sym: st_name, st_info, st_other, st_shndx, st_value, st_size.
            let t = e[4] & 0xf;
            if t != object::elf::STT_FUNC.0 && t != object::elf::STT_GNU_IFUNC.0 {
                continue;
            }
            let [n0, n1, n2, n3, _, _, s0, s1, v0, v1, v2, v3, v4, v5, v6, v7, z0, z1, z2, z3, z4, z5, z6, z7] =
                *e;
            let shndx = if big {
                u16::from_be_bytes([s0, s1])
            } else {
                u16::from_le_bytes([s0, s1])
            };
            // Common symbols' value is an alignment (`object` gives address 0).
            let addr = u64_at([v0, v1, v2, v3, v4, v5, v6, v7]);
            if shndx == object::elf::SHN_COMMON.0 || addr == 0 {
                continue;
            }
            let at = if big {
                u32::from_be_bytes([n0, n1, n2, n3])
            } else {
                u32::from_le_bytes([n0, n1, n2, n3])
            };
            return Some(RawFunc {
                addr,
                info: e[4],
                size: u64_at([z0, z1, z2, z3, z4, z5, z6, z7]),
                at: at as usize,
            });
        }
        None
    }
}

/// The `.symtab` (and `.dynsym` when `dynamic`) of a 64-bit ELF file, as `object` reads them,
/// their entries and strings mapped in (every entry is read, and most names' first bytes);
/// `None` when `data` is not a 64-bit ELF file.
fn elf_tables(data: &Mapped, tag: u64, dynamic: bool) -> Option<Vec<RawTable>> {
    elf_tables_in::<object::LittleEndian>(data, tag, dynamic, false)
        .or_else(|| elf_tables_in::<object::BigEndian>(data, tag, dynamic, true))
}

/// [`elf_tables`] for a file in byte order `E` (`None` for the other).
fn elf_tables_in<E: object::Endian>(
    data: &Mapped,
    tag: u64,
    dynamic: bool,
    big: bool,
) -> Option<Vec<RawTable>> {
    let map = data;
    let data: &[u8] = data;
    use object::read::elf::{FileHeader, SectionHeader};
    let hdr = object::elf::FileHeader64::<E>::parse(data).ok()?;
    let e = hdr.endian().ok()?;
    let sections = hdr.sections(e, data).ok()?;
    let kinds: &[object::elf::SectionType] = if dynamic {
        &[object::elf::SHT_SYMTAB, object::elf::SHT_DYNSYM]
    } else {
        &[object::elf::SHT_SYMTAB]
    };
    let mut tables = Vec::new();
    for &kind in kinds {
        let Ok(table) = sections.symbols(e, data, kind) else {
            continue;
        };
        // The string table's place in the file (as `StringTable::get` reads it).
        let Some(strs) = sections
            .section(table.string_section())
            .ok()
            .and_then(|h| h.file_range(e))
            .and_then(|(o, l)| {
                let o = usize::try_from(o).ok()?;
                let end = o.checked_add(usize::try_from(l).ok()?)?;
                data.get(o..end).map(|_| o..end)
            })
        else {
            continue;
        };
        // The entries `object` reads: where its slice lies in the file.
        let entries = table.symbols();
        let Some(start) = (entries.as_ptr() as usize).checked_sub(data.as_ptr() as usize) else {
            continue;
        };
        let syms = start..start + std::mem::size_of_val(entries);
        if data.get(syms.clone()).is_none() || std::mem::size_of_val(entries) != entries.len() * 24
        {
            continue;
        }
        map.populate(syms.start, syms.len());
        map.populate(strs.start, strs.len());
        tables.push(RawTable {
            tag,
            syms,
            strs,
            big,
        });
    }
    Some(tables)
}

/// The position of the first NUL in `s`: eight bytes at a time (symbol names are short; a
/// `memchr` call per name showed in `unwind stack` profiles).
fn nul_at(s: &[u8]) -> Option<usize> {
    byte_at(s, 0)
}

/// The position of the first `b` in `s`, eight bytes at a time, without `memchr` (whose
/// first call detects the CPU).
pub(crate) fn byte_at(s: &[u8], b: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let splat = LO * u64::from(b);
    let mut words = s.chunks_exact(8);
    for (k, w) in words.by_ref().enumerate() {
        let w = u64::from_le_bytes(w.try_into().unwrap_or([0; 8])) ^ splat;
        // The lowest set high bit marks the first zero byte (borrows only run upwards).
        let zero = w.wrapping_sub(LO) & !w & HI;
        if zero != 0 {
            return Some(k * 8 + zero.trailing_zeros() as usize / 8);
        }
    }
    let rest = words.remainder();
    rest.iter()
        .position(|&c| c == b)
        .map(|p| s.len() - rest.len() + p)
}

/// How many of `sorted` (ascending) are below `x`: counted without a branch for the few
/// dozen pcs a walk asks of a module (a binary search's unpredictable branches cost more, once
/// per symbol of the module), searched for more.
#[inline(always)]
fn rank(sorted: &[u64], x: u64) -> usize {
    if sorted.len() <= 32 {
        sorted.iter().map(|&a| usize::from(a < x)).sum()
    } else {
        sorted.partition_point(|&a| a < x)
    }
}

/// Does `f` cover file address `a` (at or above its start)? Unsized symbols (assembly labels)
/// cover up to 4 KiB.
fn covers(f: &Func, a: u64) -> bool {
    let end = if f.size == 0 {
        f.addr.saturating_add(4096)
    } else {
        f.addr.saturating_add(f.size)
    };
    a < end
}

/// A lookup answered by [`Module::prepare`].
#[derive(Debug)]
struct Prepared {
    /// The file address looked up.
    addr: u64,
    /// The function there.
    func: Option<Func>,
    /// Its demangled name, made when first asked for.
    name: std::sync::OnceLock<Box<str>>,
}

/// Function symbols from a Go binary's `.gopclntab` (Go 1.18 and later: header magic
/// `0xfffffff0`, or `0xfffffff1` from Go 1.20, 64-bit), names located in `data` (the file): the
/// table the runtime's own tracebacks use, kept when the ELF symbol table is stripped. Each
/// function ends where the next begins (the table is sorted by address and ends with the end of
/// the text). Nothing for other files, other versions, or a table that does not check out
/// (every read is bounds-checked; entries must increase; names must end inside the table).
fn gopclntab_funcs(file: &object::File<'_>, data: &[u8]) -> Vec<Func> {
    let Some(t) = crate::cfi::gopclntab::Table::of_file(file, data) else {
        return Vec::new();
    };
    // Not sorted: not a table this reads.
    if !t.sorted() {
        return Vec::new();
    }
    let Some(name_tab) = t.tab.get(t.names..) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // Bytes the name searches may read in all: a real table's names are each read once, but
    // a corrupt one whose functions all name one unterminated string would be read to its
    // end once per function. Past the budget the listing stops.
    let mut budget = name_tab.len().saturating_mul(2).saturating_add(1 << 16);
    for f in t.funcs() {
        let Some(nameoff) = t.nameoff(&f).filter(|_| t.checked(&f)) else {
            continue;
        };
        let Some(name) = name_tab.get(nameoff as usize..) else {
            continue;
        };
        let found = memchr::memchr(0, name);
        let read = found.map_or(name.len(), |l| l + 1);
        let Some(left) = budget.checked_sub(read) else {
            break;
        };
        budget = left;
        let Some(len) = found.filter(|&l| l > 0) else {
            continue;
        };
        let (Ok(len), Ok(_)) = (u32::try_from(len), u32::try_from(out.len())) else {
            continue;
        };
        let name_at = (t.file_off + t.names + nameoff as usize) as u64;
        if name_at >= 1 << 62 {
            continue;
        }
        out.push(Func {
            addr: t.text.wrapping_add(u64::from(f.entry)),
            size: u64::from(f.end - f.entry),
            name: name_at | NAME_IN_FILE,
            len,
            bind: 0,
        });
    }
    out
}

/// The most a MiniDebugInfo section is inflated to: 256 MiB. It holds the symbol table of a
/// module's local functions (some MB, tens in the largest C++ libraries). A hostile section
/// can make each module cost up to that much (250 MiB: 9 s and 500 MB, README's "Known
/// limits"); a lower cap would drop the names of the largest real ones.
const MINI_DEBUGINFO_MAX: u64 = 256 << 20;

/// MiniDebugInfo (`.gnu_debugdata`, in Fedora's and RHEL's binaries and libraries): an
/// xz-compressed ELF file whose `.symtab` holds the functions `.dynsym` leaves out (the local
/// ones), as gdb, eu-stack and perf read it. Decompressed up to [`MINI_DEBUGINFO_MAX`]; `None` without one, or
/// where it does not decompress to an ELF file.
fn mini_debuginfo(file: &object::File<'_>) -> Option<Vec<u8>> {
    let data = section_by_name(file, ".gnu_debugdata")?.data().ok()?;
    if data.is_empty() || data.len() > 64 << 20 {
        return None;
    }
    /// A writer that refuses more than `MAX` bytes (a hostile section's xz stream can claim
    /// any size).
    struct Capped(Vec<u8>);
    impl std::io::Write for Capped {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.0.len() + b.len() > MINI_DEBUGINFO_MAX as usize {
                return Err(std::io::Error::other("MiniDebugInfo over its cap"));
            }
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // lzma-rs inflates each block whole before writing any of it: the sizes its chunks
    // claim are added up first.
    if xz_unpacked_size(data)? > MINI_DEBUGINFO_MAX {
        return None;
    }
    let mut out = Capped(Vec::new());
    lzma_rs::xz_decompress(&mut std::io::BufReader::new(data), &mut out).ok()?;
    object::File::parse(&*out.0).ok()?;
    Some(out.0)
}

/// The bytes an xz stream's first stream inflates to, from its blocks' LZMA2 chunk headers
/// (each says its unpacked size), without inflating anything; `None` where the stream is not
/// one this reads (an xz file's format: stream header, blocks of LZMA2 chunks, padding and
/// check, the index).
fn xz_unpacked_size(data: &[u8]) -> Option<u64> {
    let be16 = |at: usize| {
        Some(u64::from(u16::from_be_bytes([
            *data.get(at)?,
            *data.get(at + 1)?,
        ])))
    };
    if !data.starts_with(b"\xfd7zXZ\0") {
        return None;
    }
    // The check's size, by its id (the stream flags' low nibble).
    let check = match *data.get(7)? & 0x0f {
        0 => 0,
        1..=3 => 4,
        4..=6 => 8,
        7..=9 => 16,
        10..=12 => 32,
        _ => 64,
    };
    let mut pos = 12usize;
    let mut total = 0u64;
    loop {
        let b = *data.get(pos)?;
        if b == 0 {
            // The index: the stream's blocks are done.
            return Some(total);
        }
        let block = pos;
        // The block's one filter must be LZMA2, which the chunks below describe. lzma-rs also
        // runs a chain of up to four filters, each inflated whole in memory: two LZMA2 filters
        // hid a 5 GiB inner stream behind an outer one of 780 KB (an abort, found by outside
        // use in the twenty-eighth round). Anything else (a BCJ filter) it cannot decode.
        let flags = *data.get(block + 1)?;
        if flags & 0x3f != 0 {
            return None; // more than one filter, or reserved bits
        }
        let mut at = block + 2;
        let mut varint = || {
            let mut v = 0u64;
            for i in 0..9 {
                let byte = *data.get(at)?;
                at += 1;
                v |= u64::from(byte & 0x7f) << (7 * i);
                if byte & 0x80 == 0 {
                    return Some(v);
                }
            }
            None
        };
        if flags & 0x40 != 0 {
            varint()?; // compressed size
        }
        if flags & 0x80 != 0 {
            varint()?; // uncompressed size
        }
        if varint()? != 0x21 {
            return None;
        }
        pos = pos.checked_add((usize::from(b) + 1) * 4)?;
        loop {
            let c = *data.get(pos)?;
            match c {
                0 => {
                    pos += 1;
                    break;
                }
                1 | 2 => {
                    let n = be16(pos + 1)? + 1;
                    total = total.checked_add(n)?;
                    pos = pos.checked_add(3 + n as usize)?;
                }
                0x80..=0xff => {
                    let n = (u64::from(c & 0x1f) << 16) + be16(pos + 1)? + 1;
                    let packed = be16(pos + 3)? + 1;
                    total = total.checked_add(n)?;
                    let props = usize::from(c >= 0xc0);
                    pos = pos.checked_add(5 + props + packed as usize)?;
                }
                _ => return None,
            }
        }
        // Padding to four bytes from the block's start, then the check.
        pos = block + (pos - block).div_ceil(4) * 4 + check;
    }
}

/// The load bias that puts file offset `off` of `file` at runtime address `start` (`None`:
/// the file is at its link address).
fn placement_bias(file: &object::File<'_>, map: Option<(u64, u64)>) -> u64 {
    match map {
        None => 0,
        Some((start, off)) => {
            let svma = file.segments().find_map(|s| {
                let (fo, fsz) = s.file_range();
                (off >= fo && off - fo < fsz.max(1)).then(|| s.address().wrapping_add(off - fo))
            });
            start.wrapping_sub(svma.unwrap_or(0))
        }
    }
}

/// Each path's mappings that place the file, paths in order of appearance: those with the
/// lowest file offset that head a run of more than one mapping of the same file (each at a
/// higher offset, starting at or after the end of the one before and within `GAP` of it),
/// each an image of its own; else the first with the lowest offset. A loaded ELF file is such a run (`r--p`, `r-xp`, `r--p`, `rw-p`); a
/// copy of the same file that the process mapped as data (a symbolizer's map of libc,
/// `backtrace`'s of a debug file) is a run of one, wherever it lies, and must not place the
/// module.
fn placing_mappings(mappings: &[Mapping]) -> Vec<&Mapping> {
    const GAP: u64 = 1 << 30;
    struct Run<'a> {
        head: &'a Mapping,
        last: &'a Mapping,
        len: usize,
    }
    let mut runs: Vec<Vec<Run>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for m in mappings.iter().filter(|m| m.path.starts_with('/')) {
        let i = *index.entry(&m.path).or_insert_with(|| {
            runs.push(Vec::new());
            runs.len() - 1
        });
        let path_runs = &mut runs[i];
        // The run this mapping continues: the path's latest one, if it ends just before.
        let continues = path_runs.last_mut().filter(|r| {
            m.offset > r.last.offset
                && m.range.lo >= r.last.range.hi
                && m.range.lo - r.last.range.hi <= GAP
        });
        match continues {
            Some(r) => {
                r.last = m;
                r.len += 1;
            }
            None => path_runs.push(Run {
                head: m,
                last: m,
                len: 1,
            }),
        }
    }
    let mut out = Vec::new();
    for rs in &runs {
        // Every run of more than one mapping from the lowest offset: an image (one library
        // loaded twice, by `dlmopen` into another namespace or again after it was replaced on
        // disk, is two images at two places, each a module: the second was dropped, its
        // frames `?` and their walks cut, found by outside use). Else the first run from the
        // lowest offset.
        let Some(low) = rs.iter().map(|r| r.head.offset).min() else {
            continue;
        };
        let before = out.len();
        out.extend(
            rs.iter()
                .filter(|r| r.head.offset == low && r.len > 1)
                .map(|r| r.head),
        );
        if out.len() == before {
            out.extend(rs.iter().find(|r| r.head.offset == low).map(|r| r.head));
        }
    }
    out
}

/// Modules and lookups across them.
#[derive(Default)]
pub struct Symbolizer {
    modules: Vec<Module>,
    /// Files that could not be opened: (path, error).
    pub missing: Vec<(String, String)>,
    /// How files are opened (see [`crate::safe_open`]); a live process's source may allow its
    /// `/proc/PID` prefix here.
    pub open_policy: Policy,
    /// Files opened so far, by (device, inode) and where they were placed (the address of
    /// file offset 0): one file under many names loads once, one file loaded at two places
    /// (`dlmopen`) is two modules.
    seen: HashSet<((u64, u64), u64)>,
    /// Where the modules' separate debug files are looked for (set it before adding modules:
    /// `--sysroot`'s `usr/lib/debug` first).
    pub debug_dirs: DebugDirs,
    /// Other things worth a warning about the modules (a `--exe` whose build id is not the
    /// core's).
    pub warnings: Vec<String>,
    /// Modules whose file could not be checked against the core: it holds no copy of their
    /// first page (a `coredump_filter` without bit 4), so a file rebuilt since goes unnoticed.
    pub unchecked: Vec<String>,
    /// Names of code no module holds (a JIT's), from a perf map ([`Symbolizer::add_perf_map`]).
    perf_map: Option<PerfMap>,
}

/// A perf map (`/tmp/perf-PID.map`, which JITs write for `perf`: V8's `--perf-basic-prof`,
/// the JVM's perf-map-agent, .NET, LuaJIT): one `START SIZE NAME` line per piece of generated
/// code, hex numbers, later lines replacing earlier ones where they overlap (code moved or
/// replaced).
#[derive(Default)]
pub struct PerfMap {
    /// What [`Symbol::module`] says for its names (the file's path).
    path: String,
    /// `(start, end, line number, name)`, by start (then line).
    entries: Vec<(u64, u64, u32, Box<str>)>,
}

impl PerfMap {
    /// Most lines read (a JIT that ran for days writes millions).
    pub const MAX_ENTRIES: usize = 1 << 22;

    /// Parses a perf map's text; malformed lines are skipped.
    pub fn parse(path: &str, text: &[u8]) -> PerfMap {
        let mut entries = Vec::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            if entries.len() >= Self::MAX_ENTRIES {
                break;
            }
            let line = String::from_utf8_lossy(line);
            let mut f = line.trim_end_matches('\r').splitn(3, ' ');
            let hex = |s: Option<&str>| {
                let s = s?.trim();
                u64::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
            };
            let (Some(start), Some(size), Some(name)) = (hex(f.next()), hex(f.next()), f.next())
            else {
                continue;
            };
            let Some(end) = start.checked_add(size).filter(|_| size > 0) else {
                continue;
            };
            entries.push((start, end, i as u32, name.trim().into()));
        }
        entries.sort_by_key(|e| (e.0, e.2));
        PerfMap {
            path: path.to_string(),
            entries,
        }
    }

    /// How many pieces of code it names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Does it name nothing?
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The piece of code holding `pc`: of those that do, the one written last.
    pub fn lookup(&self, pc: u64) -> Option<Symbol<'_>> {
        // Pieces start at most this far below `pc` to hold it: looked at from the nearest
        // down (a JIT's pieces are small; a huge one written before is still found unless
        // this many later pieces start between it and `pc`).
        const LOOK_BACK: usize = 256;
        let i = self.entries.partition_point(|e| e.0 <= pc);
        let e = self.entries[i.saturating_sub(LOOK_BACK)..i]
            .iter()
            .filter(|e| pc < e.1)
            .max_by_key(|e| e.2)?;
        Some(Symbol {
            name: &e.3,
            module: &self.path,
            offset: pc - e.0,
        })
    }
}

impl Symbolizer {
    /// No modules.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a module (see [`Module::load`]); a file that cannot be read is recorded in
    /// [`Symbolizer::missing`].
    ///
    /// The file is opened with [`Symbolizer::open_policy`]; a file already loaded under another
    /// name (same device and inode) is skipped.
    pub fn add(&mut self, path: &Path, display: &str, map: Option<(u64, u64)>) {
        let at = map.map_or(0, |(start, off)| start.wrapping_sub(off));
        self.add_with(path, display, at, |file| placement_bias(file, map))
    }

    /// `at`: where the file is placed (with its identity, what makes it a module already
    /// loaded).
    fn add_with(
        &mut self,
        path: &Path,
        display: &str,
        at: u64,
        bias_of: impl FnOnce(&object::File<'_>) -> u64,
    ) {
        let loaded = crate::safe_open::open(path, &self.open_policy).and_then(|f| {
            if !self.seen.insert((f.id, at)) {
                return Ok(None);
            }
            Module::from_mapped(f.map_analysed()?, path, display, &self.debug_dirs, bias_of)
                .map(Some)
        });
        match loaded {
            Ok(Some(m)) => self.modules.push(m),
            Ok(None) => {}
            Err(e) => self.missing.push((display.to_string(), e.to_string())),
        }
    }

    /// Adds a module from an ELF image held in memory, not in a file: the vDSO, read from a
    /// core or a live process. `display` names it (`[vdso]`), `base` is the runtime address of
    /// its first byte (the image is mapped whole, file offset 0 at `base`). False when the
    /// bytes are not an ELF file `object` can parse.
    pub fn add_image(&mut self, bytes: Vec<u8>, display: &str, base: u64) -> bool {
        let m = Module::from_mapped(
            Mapped::Owned(bytes),
            Path::new(display),
            display,
            &self.debug_dirs,
            |file| placement_bias(file, Some((base, 0))),
        );
        match m {
            Ok(mut m) => {
                // No file: the path is the process's, which may now hold anything.
                m.file = PathBuf::new();
                self.modules.push(m);
                true
            }
            Err(_) => false,
        }
    }

    /// Adds a module at a known load bias (see [`Module::load_biased`]); a file that cannot be
    /// read is recorded in [`Symbolizer::missing`].
    pub fn add_biased(&mut self, path: &Path, display: &str, bias: u64) {
        self.add_with(path, display, bias, |_| bias)
    }

    /// Modules from a core's mapped files, each opened at `sysroot` + its path (at most
    /// [`MAX_MODULES`] distinct paths; one file under several names is loaded once).
    pub fn from_mappings(mappings: &[Mapping], sysroot: Option<&Path>) -> Self {
        let mut s = Self::new();
        s.add_mappings(mappings, sysroot);
        s
    }

    /// Adds the modules of `mappings` as [`Symbolizer::from_mappings`] does, opening files with
    /// this symbolizer's [`Symbolizer::open_policy`] (set it first to allow a `/proc/PID`
    /// prefix).
    pub fn add_mappings(&mut self, mappings: &[Mapping], sysroot: Option<&Path>) {
        self.add_mappings_with(mappings, |path| resolve(sysroot, path));
    }

    /// [`Symbolizer::add_mappings`], each path's file chosen by `file_of` (a `--exe` standing
    /// in for the executable's).
    pub fn add_mappings_with(&mut self, mappings: &[Mapping], file_of: impl Fn(&str) -> PathBuf) {
        let s = self;
        let mut order = placing_mappings(mappings);
        if order.len() > MAX_MODULES {
            s.missing.push((
                format!(
                    "{} and {} more",
                    order[MAX_MODULES].path,
                    order.len() - MAX_MODULES - 1
                ),
                format!("over the limit of {MAX_MODULES} mapped files: skipped"),
            ));
            order.truncate(MAX_MODULES);
        }
        for first in order {
            let file = file_of(&first.path);
            s.add(&file, &first.path, Some((first.range.lo, first.offset)));
        }
    }

    /// Modules of the running process, from `/proc/self/maps`, and the vDSO (`[vdso]`, copied
    /// from this process's memory: no file holds it). Not async-signal-safe.
    pub fn for_current_process() -> Self {
        // The profilers' own work: left out of a heap profile.
        #[cfg(feature = "profilers")]
        return crate::heap::unsampled(Self::for_current_process_unsampled);
        #[cfg(not(feature = "profilers"))]
        Self::for_current_process_unsampled()
    }

    fn for_current_process_unsampled() -> Self {
        // Named and checked as `unwind stack --pid` does (files through `map_files`, build ids
        // against memory); the plain reading of the maps where `/proc/self` is not this
        // process's own.
        if let Some(s) = crate::process::own_symbols() {
            return s;
        }
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let parsed = crate::process::parse_maps(&maps);
        let vdso = parsed.iter().find(|v| v.path == "[vdso]").map(|v| v.range);
        // Only files with code mapped are modules: a file mapped as data alone (a symbolizer's
        // own map of a library since unloaded, a `Module` kept past its `dlclose`) is not.
        let code: std::collections::HashSet<&str> = parsed
            .iter()
            .filter(|v| v.exec)
            .map(|v| v.path.as_str())
            .collect();
        let mappings: Vec<Mapping> = parsed
            .iter()
            .filter(|v| code.contains(v.path.as_str()))
            .cloned()
            .map(|v| Mapping {
                range: v.range,
                offset: v.offset,
                path: v.path,
            })
            .collect();
        let mut s = Self::from_mappings(&mappings, None);
        // SAFETY: getauxval has no preconditions.
        let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        if let Some(r) = vdso.filter(|r| r.lo == base && r.hi > r.lo && r.hi - r.lo <= 1 << 20) {
            // SAFETY: the vDSO mapping `/proc/self/maps` lists at the kernel's
            // `AT_SYSINFO_EHDR` is this process's own, readable (its ELF image and code), and
            // mapped for the life of the process; the length is the mapping's.
            let bytes =
                unsafe { core::slice::from_raw_parts(r.lo as *const u8, (r.hi - r.lo) as usize) };
            s.add_image(bytes.to_vec(), "[vdso]", r.lo);
        }
        s
    }

    /// The loaded modules.
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    /// Adds an already loaded module.
    pub fn push(&mut self, m: Module) {
        self.modules.push(m);
    }

    /// Removes and returns module `i` (its file stays counted as seen).
    pub fn remove(&mut self, i: usize) -> Option<Module> {
        (i < self.modules.len()).then(|| self.modules.remove(i))
    }

    /// The function containing `pc` (a runtime address; pass [`crate::Frame::lookup_pc`]): from
    /// the module holding it, else, for code no module holds, from the perf map
    /// ([`Symbolizer::add_perf_map`]).
    pub fn lookup(&self, pc: u64) -> Option<Symbol<'_>> {
        let mut held = self
            .modules
            .iter()
            .filter(|m| m.range.contains(pc))
            .peekable();
        if held.peek().is_none() {
            return self.perf_map.as_ref()?.lookup(pc);
        }
        held.find_map(|m| m.lookup(pc))
    }

    /// Names code no module holds (a JIT's) from the perf map at `path` (see [`PerfMap`]),
    /// opened as modules are ([`crate::safe_open`], at most 512 MiB, read, not mapped: its
    /// writer appends as it goes), and only when the file's owner is `owner` (the process
    /// whose map it is) or root, as `perf` asks: anyone may write a file under `/tmp`.
    /// Its names' [`Symbol::module`] is `display`. Returns how many pieces of code it names.
    pub fn add_perf_map(
        &mut self,
        path: &Path,
        display: &str,
        owner: u32,
    ) -> std::io::Result<usize> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let policy = Policy {
            max_size: 512 << 20,
            ..self.open_policy.clone()
        };
        let opened = crate::safe_open::open(path, &policy)?;
        let uid = opened.file.metadata()?.uid();
        if uid != owner && uid != 0 {
            return Err(std::io::Error::other(format!(
                "owned by uid {uid}, not the process's ({owner}) or root: not read"
            )));
        }
        let mut text = Vec::new();
        (&opened.file)
            .take(policy.max_size)
            .read_to_end(&mut text)?;
        let map = PerfMap::parse(display, &text);
        let n = map.len();
        self.perf_map = Some(map);
        Ok(n)
    }

    /// The runtime address of the function holding `pc` ([`Module::function_start`]: no symbol
    /// table listed or sorted for it).
    pub fn function_start(&self, pc: u64) -> Option<u64> {
        self.modules
            .iter()
            .filter(|m| m.range.contains(pc))
            .find_map(|m| Some(m.function_start(pc)?.wrapping_add(m.bias)))
    }

    /// Reads code at runtime address `addr` from the module containing it.
    pub fn read_code(&self, addr: u64, out: &mut [u8]) -> bool {
        self.modules
            .iter()
            .filter(|m| m.range.contains(addr))
            .any(|m| m.read_code(addr, out))
    }

    /// Does the code at runtime address `addr`, as a module's file holds it (see
    /// [`Module::read_code`]), start with `pattern` (at most 16 bytes)?
    pub fn code_is(&self, addr: u64, pattern: &[u8]) -> bool {
        let mut buf = [0u8; 16];
        let Some(out) = buf.get_mut(..pattern.len()) else {
            return false;
        };
        self.modules
            .iter()
            .filter(|m| m.range.contains(addr))
            .any(|m| m.read_code(addr, out) && *out == *pattern)
    }

    /// Answers lookups of `pcs` (runtime addresses: [`crate::Frame::lookup_pc`]) ahead, each
    /// module in one pass over its symbols (see [`Module::prepare`]).
    pub fn prepare(&self, pcs: &[u64]) {
        for m in &self.modules {
            m.prepare(pcs);
        }
    }

    /// The module containing `pc`.
    pub fn module_of(&self, pc: u64) -> Option<&Module> {
        self.modules.iter().find(|m| m.range.contains(pc))
    }
}

/// `sysroot` + `path` when a sysroot is given and has the file, else `path`.
pub fn resolve(sysroot: Option<&Path>, path: &str) -> PathBuf {
    resolve_os(sysroot, std::ffi::OsStr::new(path))
}

/// [`resolve`] for a path that need not be UTF-8.
///
/// A path the kernel marked ` (deleted)` (the file was removed or replaced while mapped) is
/// also looked for without that mark: a file put back, or the new version an upgrade put
/// there, which the build id check then accepts or refuses (a core's modules).
pub fn resolve_os(sysroot: Option<&Path>, path: &std::ffi::OsStr) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let unmarked = path
        .as_bytes()
        .strip_suffix(b" (deleted)")
        .filter(|p| !p.is_empty())
        .map(std::ffi::OsStr::from_bytes);
    let names = std::iter::once(path).chain(unmarked);
    if let Some(root) = sysroot {
        for name in names.clone() {
            if let Some(p) = within_root(root, name.as_bytes()) {
                return p;
            }
        }
    }
    if let Some(u) = unmarked {
        if !Path::new(path).exists() && Path::new(u).exists() {
            return PathBuf::from(u);
        }
    }
    PathBuf::from(path)
}

/// `path` as a process whose root is `root` sees it: each symbolic link on the way followed
/// inside `root` (an absolute target from `root`, `..` no higher than it), as the kernel
/// resolves it for a chrooted process; `None` when it names nothing there. A container's
/// exported root links `lib/x86_64-linux-gnu/libc.so.6` to `/usr/lib/...` (Debian's
/// `/lib64/ld-linux-x86-64.so.2` is such a link): joined to `root` and opened, the link led
/// to the host's file, which the build id check then refused (found by outside use in the
/// twenty-fifth round).
fn within_root(root: &Path, path: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    const MAX_LINKS: u32 = 40;
    let parts = |b: &[u8]| -> Vec<Vec<u8>> {
        b.split(|&c| c == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .map(<[u8]>::to_vec)
            .collect()
    };
    // Components still to walk, the next one last.
    let mut todo: Vec<Vec<u8>> = parts(path);
    todo.reverse();
    let mut at = root.to_path_buf();
    let mut depth = 0usize;
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == b".." {
            if depth > 0 {
                at.pop();
                depth -= 1;
            }
            continue;
        }
        let next = at.join(std::ffi::OsStr::from_bytes(&c));
        // The path as far as it resolved, then the rest as given: where the walk fails for
        // another reason than a missing name (a directory this user may not enter, a loop of
        // links), opening that says why, under the sysroot. (It fell back to the host's file,
        // with the host's "No such file or directory": found by outside use, twenty-sixth
        // round.)
        let unresolved = |next: &Path, todo: &[Vec<u8>]| {
            let mut p = next.to_path_buf();
            p.extend(todo.iter().rev().map(|c| std::ffi::OsStr::from_bytes(c)));
            Some(p)
        };
        let meta = match std::fs::symlink_metadata(&next) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(_) => return unresolved(&next, &todo),
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return unresolved(&next, &todo);
            }
            let Ok(target) = std::fs::read_link(&next) else {
                return unresolved(&next, &todo);
            };
            let target = target.as_os_str().as_bytes();
            if target.starts_with(b"/") {
                at = root.to_path_buf();
                depth = 0;
            }
            todo.extend(parts(target).into_iter().rev());
        } else {
            at = next;
            depth += 1;
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths under a sysroot follow its symbolic links inside it: an absolute link from the
    /// sysroot, a relative one from where it is, `..` no higher than the sysroot, and a link
    /// loop ends at the sysroot's path (not the host's).
    #[test]
    fn sysroot_links_are_followed_inside_the_sysroot() {
        use std::os::unix::fs::symlink;
        let root = std::env::temp_dir().join(format!("unwind-sysroot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("usr/lib/x86_64-linux-gnu")).unwrap();
        std::fs::write(root.join("usr/lib/x86_64-linux-gnu/libc.so.6"), b"inside").unwrap();
        // Debian's /lib -> usr/lib, and a library linked by an absolute path that exists on
        // this host too (the host's libc): the sysroot's must win.
        symlink("usr/lib", root.join("lib")).unwrap();
        std::fs::create_dir_all(root.join("lib64")).unwrap();
        symlink(
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            root.join("lib64/libc-abs.so"),
        )
        .unwrap();
        symlink(
            "../../../../../lib/x86_64-linux-gnu/libc.so.6",
            root.join("lib64/up.so"),
        )
        .unwrap();
        symlink("loop.so", root.join("lib64/loop.so")).unwrap();
        let inside = root.join("usr/lib/x86_64-linux-gnu/libc.so.6");
        for p in [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/libc-abs.so",
            "/lib64/up.so",
            "//usr/./lib/x86_64-linux-gnu/../x86_64-linux-gnu/libc.so.6",
        ] {
            let got = within_root(&root, p.as_bytes()).unwrap_or_default();
            assert_eq!(got, inside, "{p}");
            assert_eq!(std::fs::read(&got).unwrap(), b"inside", "{p}");
            assert_eq!(resolve(Some(&root), p), inside, "{p}");
        }
        // A loop is the sysroot's path, whose opening says so (not the host's file).
        let looped = within_root(&root, b"/lib64/loop.so/x").unwrap();
        assert_eq!(looped, root.join("lib64/loop.so/x"));
        let e = std::fs::File::open(&looped).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        assert_eq!(within_root(&root, b"/nothing/here"), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A perf map: hex with or without `0x`, names with spaces, malformed and empty lines
    /// skipped, the line written last winning where pieces overlap.
    #[test]
    fn perf_map_lines_and_overlaps() {
        let text = b"1000 10 first piece\n\
                     bogus line\n\
                     0x2000 0x20 LazyCompile:*fib /a.js:1\n\
                     3000 0 empty\n\
                     1008 4 replaced\r\n\
                     zz 10 bad\n\n";
        let m = PerfMap::parse("/tmp/perf-1.map", text);
        assert_eq!(m.len(), 3);
        let name = |pc| m.lookup(pc).map(|s| (s.name.to_string(), s.offset));
        assert_eq!(name(0x1000), Some(("first piece".into(), 0)));
        assert_eq!(name(0x1009), Some(("replaced".into(), 1)));
        assert_eq!(name(0x100c), Some(("first piece".into(), 0xc)));
        assert_eq!(
            name(0x2010),
            Some(("LazyCompile:*fib /a.js:1".into(), 0x10))
        );
        assert_eq!(name(0x1010), None);
        assert_eq!(name(0x3000), None);
        assert_eq!(name(0), None);
        assert_eq!(m.lookup(0x2000).map(|s| s.module), Some("/tmp/perf-1.map"));
        // Code a module holds is never named from the map.
        let mut sym = Symbolizer::new();
        sym.perf_map = Some(m);
        assert_eq!(
            sym.lookup(0x2000).map(|s| s.name),
            Some("LazyCompile:*fib /a.js:1")
        );
    }
    /// The size an xz stream inflates to, read from its chunk headers, is what it inflates to
    /// (lzma-rs's own streams, of stored chunks); cut anywhere, it reads as nothing or at most
    /// that; garbage reads as nothing.
    #[test]
    fn xz_sizes_are_read_without_inflating() {
        for len in [0usize, 1, 1000, 70_000, 300_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut xz = Vec::new();
            lzma_rs::xz_compress(&mut &data[..], &mut xz).unwrap();
            assert_eq!(super::xz_unpacked_size(&xz), Some(len as u64), "{len}");
            for cut in (0..xz.len()).step_by(97) {
                assert!(super::xz_unpacked_size(&xz[..cut]).is_none_or(|n| n <= len as u64));
            }
        }
        assert_eq!(super::xz_unpacked_size(b"not xz at all"), None);
    }

    /// A block of two filters (an LZMA2 stream inside an LZMA2 stream, which lzma-rs inflates
    /// whole in memory, layer by layer) is refused before anything is inflated: this 588-byte
    /// stream's outer layer is 780 KB, its inner one 5 GiB of zeros (`mini_debuginfo` aborted
    /// the process on it). A one-filter stream with its sizes in the block header still reads,
    /// and a filter other than LZMA2 does not.
    #[test]
    fn xz_blocks_of_more_than_one_filter_are_refused() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hostile");
        let bomb = std::fs::read(dir.join("xz-two-lzma2-filters.xz")).unwrap();
        assert_eq!(bomb[13] & 3, 1, "two filters");
        assert_eq!(super::xz_unpacked_size(&bomb), None);
        // The same header with one filter: read (the outer layer's size only).
        let one = with_block_header(&bomb, &[0x00, 0x21, 0x01, 0x18]);
        assert!(super::xz_unpacked_size(&one).is_some_and(|n| n < 1 << 20));
        // A size in the header (flags 0x80: the uncompressed size), one filter.
        let sized = with_block_header(&bomb, &[0x80, 0x80, 0x01, 0x21, 0x01, 0x18]);
        assert!(super::xz_unpacked_size(&sized).is_some());
        // x86 BCJ (0x04): not LZMA2.
        let bcj = with_block_header(&bomb, &[0x00, 0x04, 0x00]);
        assert_eq!(super::xz_unpacked_size(&bcj), None);
    }

    /// `xz` with its first block header's body (after the size byte, before padding and CRC)
    /// replaced by `body`: the header keeps its size in four-byte units.
    fn with_block_header(xz: &[u8], body: &[u8]) -> Vec<u8> {
        let size = (usize::from(xz[12]) + 1) * 4;
        let mut hdr = vec![xz[12]];
        hdr.extend_from_slice(body);
        assert!(hdr.len() <= size - 4, "the body fits the header");
        hdr.resize(size - 4, 0);
        let crc = crc32fast::hash(&hdr);
        hdr.extend_from_slice(&crc.to_le_bytes());
        let mut out = xz[..12].to_vec();
        out.extend_from_slice(&hdr);
        out.extend_from_slice(&xz[12 + size..]);
        out
    }

    #[inline(never)]
    fn a_function_with_a_name() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn symbolises_this_process() {
        let s = Symbolizer::for_current_process();
        let pc = a_function_with_a_name as *const () as u64;
        let sym = s.lookup(pc + 1).expect("symbol");
        assert!(sym.name.ends_with("a_function_with_a_name"), "{}", sym.name);
        assert_eq!(sym.offset, 1);
        assert!(s.lookup(8).is_none());
        assert_eq!(a_function_with_a_name(), 42);
    }

    /// A symbolizer of this process while another one lives: the first one's maps of the
    /// loaded files (libc whole, at offset 0, shared) are in `/proc/self/maps` too, and the
    /// second took such a copy (a run of one mapping) for libc's placement, so every libc pc
    /// missed (`getpid` unnamed, pprof frames left as bare addresses, `--pid` walks cut short).
    #[test]
    fn a_second_symbolizer_places_libc_where_it_is_loaded_not_where_the_first_mapped_it() {
        let first = Symbolizer::for_current_process();
        let getpid = libc::getpid as *const () as u64;
        let named = |s: &Symbolizer| s.lookup(getpid + 1).map(|x| x.name.to_string());
        let name = named(&first).expect("getpid named by the first symbolizer");
        assert!(name.ends_with("getpid"), "{name}");
        // The first symbolizer's copy of libc is mapped now (checked, so the test cannot pass
        // for want of one).
        let libc_path = first.module_of(getpid).expect("libc's module").path.clone();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let copies = crate::process::parse_maps(&maps)
            .into_iter()
            .filter(|v| v.path == libc_path && v.offset == 0)
            .count();
        assert!(
            copies >= 2,
            "libc mapped at offset 0 by ld.so and by the first: {maps}"
        );
        for _ in 0..2 {
            let second = Symbolizer::for_current_process();
            assert_eq!(named(&second).as_deref(), Some(name.as_str()));
            let m = second.module_of(getpid).expect("libc's module");
            assert_eq!(m.path, libc_path);
        }
        drop(first);
    }

    /// Of the names glibc gives one function (a global, weak aliases, local `__GI_` ones in its
    /// debug file), the public one: `malloc`, not `__libc_malloc` or `__GI___libc_malloc`
    /// (found by outside use: profiles named libc's functions by their aliases).
    #[test]
    fn libc_functions_have_their_public_names() {
        let s = Symbolizer::for_current_process();
        for (f, want) in [
            (libc::malloc as *const () as u64, "malloc"),
            (libc::free as *const () as u64, "free"),
            (libc::nanosleep as *const () as u64, "nanosleep"),
        ] {
            let m = s.module_of(f).expect("libc's module");
            assert!(m.path.contains("libc"), "{}", m.path);
            let got = s.lookup(f + 1).map(|x| x.name.to_string());
            assert_eq!(got.as_deref(), Some(want));
            // The same through a one-shot walk's prepared lookups.
            let p = Module::load(Path::new(&m.file), "libc", Some((m.range.lo, 0)))
                .expect("libc loads");
            p.prepare(&[f + 1]);
            assert_eq!(p.lookup(f + 1).map(|x| x.name), Some(want));
        }
    }

    #[test]
    fn go_names_are_shown_as_go_prints_them() {
        assert_eq!(
            go_name_for_print("runtime.goexit.abi0").as_deref(),
            Some("runtime.goexit")
        );
        assert_eq!(go_name_for_print("runtime.goexit"), None);
        assert_eq!(
            go_name_for_print("main.gen[go.shape.int_0]").as_deref(),
            Some("main.gen[...]")
        );
        assert_eq!(
            go_name_for_print("main.(*T[go.shape.int_0]).m").as_deref(),
            Some("main.(*T[...]).m")
        );
        assert_eq!(go_name_for_print("main.gen[...]"), None);
        assert_eq!(go_name_for_print("a]b[c"), None);
        assert_eq!(go_name_for_print("x.abiinternal").as_deref(), Some("x"));
    }

    /// A file mapped as data alone (here a `Module`'s own map of an executable this process
    /// did not load; after a `dlclose`, a symbolizer's map of the unloaded library) is not a
    /// module of the process: it was listed as one, at the map's address.
    #[test]
    fn a_file_mapped_only_as_data_is_not_a_module() {
        let path = std::env::current_exe().unwrap();
        let copy = std::env::temp_dir().join(format!("unwind-data-only-{}", std::process::id()));
        std::fs::copy(&path, &copy).unwrap();
        let held = Module::load(&copy, "copy", None).expect("loads");
        let p = copy.display().to_string();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let in_maps = maps.lines().any(|l| l.ends_with(&p));
        let listed = Symbolizer::for_current_process()
            .modules()
            .iter()
            .any(|m| m.path == p);
        drop(held);
        let _ = std::fs::remove_file(&copy);
        assert!(in_maps, "the copy is mapped: {maps}");
        assert!(!listed, "a data-only map listed as a module");
    }

    fn mapping(lo: u64, hi: u64, offset: u64, path: &str) -> Mapping {
        Mapping {
            range: Range::new(lo, hi),
            offset,
            path: path.into(),
        }
    }

    /// The mapping that places each file: the loaded image's first segment, not a copy of the
    /// file mapped as data at offset 0 before or after it; paths in order of appearance.
    #[test]
    fn the_loaded_image_places_a_file_not_a_data_copy_of_it() {
        let libc = "/lib/libc.so.6";
        let image = [
            mapping(0x7000_0000, 0x7002_8000, 0, libc),
            mapping(0x7002_8000, 0x701b_d000, 0x28000, libc),
            mapping(0x701b_d000, 0x7021_5000, 0x1bd000, libc),
            mapping(0x7021_9000, 0x7021_b000, 0x218000, libc),
        ];
        let copy = mapping(0x6f00_0000, 0x6f22_0000, 0, libc);
        let exe = mapping(0x40_0000, 0x40_1000, 0, "/bin/exe");
        let exe_text = mapping(0x40_1000, 0x40_9000, 0x1000, "/bin/exe");
        // The copy first (mapped below the libraries, as mmap places new maps), after, and
        // twice.
        let before: Vec<Mapping> = [exe.clone(), exe_text.clone(), copy.clone()]
            .into_iter()
            .chain(image.iter().cloned())
            .collect();
        let after: Vec<Mapping> = [exe.clone(), exe_text.clone()]
            .into_iter()
            .chain(image.iter().cloned())
            .chain([mapping(0x7100_0000, 0x7122_0000, 0, libc)])
            .collect();
        let twice: Vec<Mapping> = [
            copy.clone(),
            mapping(0x6f22_0000, 0x6f44_0000, 0, libc),
            exe.clone(),
        ]
        .into_iter()
        .chain(image.iter().cloned())
        .collect();
        for (what, maps) in [("before", &before), ("after", &after), ("twice", &twice)] {
            let placed: Vec<(&str, u64)> = placing_mappings(maps)
                .iter()
                .map(|m| (m.path.as_str(), m.range.lo))
                .collect();
            let want_exe = ("/bin/exe", 0x40_0000);
            let want_libc = (libc, 0x7000_0000);
            let want = if what == "twice" {
                vec![want_libc, want_exe]
            } else {
                vec![want_exe, want_libc]
            };
            assert_eq!(placed, want, "{what}");
        }
        // One library loaded twice (`dlmopen`, or again after it was replaced on disk): two
        // images, two modules; a data copy beside them still places nothing.
        let second: Vec<Mapping> = image
            .iter()
            .map(|m| {
                mapping(
                    m.range.lo + 0x100_0000,
                    m.range.hi + 0x100_0000,
                    m.offset,
                    libc,
                )
            })
            .collect();
        let both: Vec<Mapping> = [exe.clone(), exe_text.clone(), copy.clone()]
            .into_iter()
            .chain(image.iter().cloned())
            .chain(second)
            .collect();
        let placed: Vec<(&str, u64)> = placing_mappings(&both)
            .iter()
            .map(|m| (m.path.as_str(), m.range.lo))
            .collect();
        assert_eq!(
            placed,
            [
                ("/bin/exe", 0x40_0000),
                (libc, 0x7000_0000),
                (libc, 0x7100_0000)
            ]
        );
        // A file mapped only once (a one-segment image, or only its lowest offset mapped):
        // that mapping; and the lowest offset wins over a longer run further in.
        let single = [mapping(0x5000, 0x6000, 0x2000, "/x"), copy.clone()];
        let placed: Vec<u64> = placing_mappings(&single)
            .iter()
            .map(|m| m.range.lo)
            .collect();
        assert_eq!(placed, [0x5000, 0x6f00_0000]);
    }

    /// `code_is` (the check a core's walk makes at a return address for a sigreturn
    /// trampoline) agrees with `find_code` (the search it replaced) on this process's code.
    #[test]
    fn code_is_agrees_with_find_code() {
        let s = Symbolizer::for_current_process();
        let pc = a_function_with_a_name as *const () as u64;
        let mut pattern = [0u8; 9];
        assert!(s.read_code(pc, &mut pattern));
        let m = s.module_of(pc).unwrap();
        let found = m.find_code(&pattern);
        assert!(found.contains(&pc), "{found:x?}");
        for &a in &found {
            assert!(s.code_is(a, &pattern), "{a:#x}");
        }
        // Around the function, the bytes match exactly where the search found them.
        for a in pc.saturating_sub(64)..pc + 64 {
            assert_eq!(s.code_is(a, &pattern), found.contains(&a), "{a:#x}");
        }
        assert!(!s.code_is(8, &pattern));
        assert!(
            !s.code_is(pc, &[0u8; 17]),
            "patterns over 16 bytes match nothing"
        );
        // The x86_64 sigreturn trampoline, where this process's libc has one.
        let sigreturn = crate::arch::x86_64::SIGRETURN_CODE;
        for m in s.modules() {
            for a in m.find_code(&sigreturn) {
                assert!(s.code_is(a, &sigreturn), "{} {a:#x}", m.path);
            }
        }
    }

    /// The eager symbolizer this module had before names were left in the files, as an
    /// oracle: every symbol read through `object`, named, sorted (stable) and deduplicated.
    struct Oracle {
        funcs: Vec<(u64, u64, String)>,
        by_name: Vec<(String, u64, u64)>,
    }

    impl Oracle {
        fn new(path: &Path) -> Oracle {
            let data = std::fs::read(path).unwrap();
            let file = object::File::parse(&*data).unwrap();
            let (mut all, mut by_name) = (Vec::new(), Vec::new());
            let mut add = |sym: object::Symbol<'_, '_>| {
                if sym.kind() != SymbolKind::Text || sym.address() == 0 {
                    return;
                }
                let Ok(raw) = sym.name() else { return };
                let name = demangled(raw).unwrap_or_else(|| raw.to_string());
                by_name.push((raw.to_string(), sym.address(), sym.size()));
                // The preference at one address (`Module::prefer`): sized, exported, fewer
                // leading underscores, global before weak, then the first listed.
                let key = (
                    sym.size() == 0,
                    !(sym.is_global() || sym.is_weak()),
                    raw.bytes().take_while(|&c| c == b'_').count(),
                    sym.is_weak(),
                    all.len(),
                );
                all.push((sym.address(), key, sym.size(), name));
            };
            for sym in file.symbols().chain(file.dynamic_symbols()) {
                add(sym);
            }
            let debug = DebugDirs::default()
                .for_file(&file)
                .filter(|_| section_by_name(&file, ".symtab").is_none());
            if let Some(d) = debug.and_then(|d| std::fs::read(d).ok()) {
                for sym in object::File::parse(&*d).unwrap().symbols() {
                    add(sym);
                }
            }
            all.sort_by_key(|&(a, key, _, _)| (a, key));
            all.dedup_by_key(|f| f.0);
            let funcs = all.into_iter().map(|(a, _, s, n)| (a, s, n)).collect();
            Oracle { funcs, by_name }
        }

        fn lookup(&self, a: u64) -> Option<(&str, u64)> {
            let i = self.funcs.partition_point(|f| f.0 <= a);
            let (start, size, name) = self.funcs.get(i.checked_sub(1)?)?;
            let end = start.saturating_add(if *size == 0 { 4096 } else { *size });
            (a < end).then_some((name.as_str(), a - start))
        }
    }

    /// Lookups, exact-name lookups and the function list agree with the oracle at every
    /// function's start, middle, end and just past it.
    fn agrees_with_the_oracle(path: &Path) -> usize {
        let m = Module::load(path, "m", None).unwrap();
        let o = Oracle::new(path);
        let listed: Vec<(String, u64, u64)> = m
            .functions()
            .map(|(n, a, b)| (n.to_string(), a, b))
            .collect();
        let expected: Vec<(String, u64, u64)> = o
            .funcs
            .iter()
            .map(|(a, s, n)| (n.clone(), *a, a.wrapping_add(*s)))
            .collect();
        assert_eq!(listed, expected, "{}", path.display());
        for (a, s, _) in &o.funcs {
            for pc in [*a, a + s / 2, (a + s).saturating_sub(1), a + s, a + 4096] {
                let got = m.lookup(pc).map(|s| (s.name, s.offset));
                assert_eq!(got, o.lookup(pc), "{} at {pc:#x}", path.display());
            }
        }
        // Lookups answered ahead by `prepare` (a third of the pcs, the rest sorted as before).
        let p = Module::load(path, "m", None).unwrap();
        let pcs: Vec<u64> = o
            .funcs
            .iter()
            .flat_map(|&(a, s, _)| [a, a + s / 2, (a + s).saturating_sub(1), a + s, a + 4096])
            .chain([0, 1, u64::MAX])
            .collect();
        p.prepare(&pcs.iter().copied().step_by(3).collect::<Vec<_>>());
        assert!(p.prepared.get().is_some_and(|v| !v.is_empty()));
        for &pc in &pcs {
            let got = p.lookup(pc).map(|s| (s.name, s.offset));
            assert_eq!(got, o.lookup(pc), "{} at {pc:#x}, prepared", path.display());
        }
        // A function's start, one pass each, on a module that lists and sorts nothing; then
        // the same answers from one that did (`p`).
        let f = Module::load(path, "m", None).unwrap();
        for &pc in pcs.iter().step_by(13).take(300) {
            let want = o.lookup(pc).map(|(_, off)| pc - off);
            assert_eq!(f.function_start(pc), want, "{} at {pc:#x}", path.display());
            assert_eq!(p.function_start(pc), want, "{} at {pc:#x}", path.display());
        }
        assert!(f.funcs.get().is_none() && f.order.get().is_none());
        for (raw, _, _) in o.by_name.iter().step_by(7) {
            let want = o
                .by_name
                .iter()
                .find(|(n, _, _)| n == raw)
                .map(|&(_, a, s)| Range::new(a, a.saturating_add(s.max(1))));
            assert_eq!(m.function(raw), want, "{raw}");
        }
        assert_eq!(m.function("no such function, surely"), None);
        // Names answered ahead by `prepare_names`, the same way (every seventh name, from
        // strings that live forever, and one name no symbol has).
        let names: Vec<&'static str> = o
            .by_name
            .iter()
            .step_by(7)
            .map(|(n, _, _)| &*n.clone().leak())
            .chain(["no such function, surely"])
            .collect();
        // From the listed symbols (`p` listed them for the lookups `prepare` did not answer)
        // and from the tables in place (`q`).
        p.prepare_names(&names);
        let q = Module::load(path, "m", None).unwrap();
        q.prepare_names(&names);
        assert!(q.funcs.get().is_none(), "the symbols were listed");
        for raw in names {
            assert_eq!(p.function(raw), m.function(raw), "{raw}, prepared");
            assert_eq!(q.function(raw), m.function(raw), "{raw}, prepared in place");
        }
        o.funcs.len()
    }

    #[test]
    fn lazy_names_match_the_eager_symbols_of_libc_and_this_binary() {
        let exe = std::env::current_exe().unwrap();
        assert!(agrees_with_the_oracle(&exe) > 1000);
        let libc = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/aarch64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
        if let Some(libc) = libc {
            assert!(agrees_with_the_oracle(libc) > 1000);
        }
    }

    #[test]
    fn nul_at_finds_the_first_nul() {
        for len in 0..40 {
            let mut s = vec![b'a'; len];
            assert_eq!(nul_at(&s), None, "{len}");
            for z in 0..len {
                s[z] = 0;
                assert_eq!(nul_at(&s), Some(z), "{len} {z}");
                // Bytes with the high bit set (and 0x01, the subtraction's constant) after it.
                for (b, c) in s.iter_mut().enumerate().skip(z + 1) {
                    *c = if b % 2 == 0 { 0x80 } else { 0x01 };
                }
                assert_eq!(nul_at(&s), Some(z), "{len} {z}");
                s[z] = 0x81;
            }
        }
    }

    /// A symbol whose name is not UTF-8 names its function, with U+FFFD for the bad bytes
    /// (it was skipped, and the function below it, a size-0 label, took its frames: a
    /// neighbour's name for the wrong code).
    #[test]
    fn names_that_are_not_utf8_are_shown_lossily() {
        let exe = std::env::current_exe().unwrap();
        let mut data = std::fs::read(&exe).unwrap();
        let m = Module::load(&exe, "m", None).unwrap();
        // A sized function whose name is the only one at its address.
        let k = (1..m.order().len() - 1)
            .find(|&k| {
                let (p, f, n) = (m.sorted(k - 1), m.sorted(k), m.sorted(k + 1));
                f.size > 0
                    && f.name & NAME_WHERE == NAME_IN_FILE
                    && p.addr != f.addr
                    && n.addr != f.addr
                    && p.addr + p.size <= f.addr
            })
            .unwrap();
        let f = *m.sorted(k);
        let raw = m.raw_name(&f).unwrap().to_string();
        let off = (f.name & !NAME_WHERE) as usize;
        drop(m);
        // Every copy of the name in the string tables (symtab and dynsym may share it).
        data[off] = 0xff;
        let dir = std::env::temp_dir().join(format!("unwind-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("exe");
        std::fs::write(&path, &data).unwrap();
        let m = Module::load(&path, "m", None).unwrap();
        // Answered ahead (from the tables in place) as by the listed symbols.
        let p = Module::load(&path, "m", None).unwrap();
        p.prepare(&[f.addr]);
        let got = m.lookup(f.addr).map(|s| s.name.to_string());
        let inside = m
            .lookup(f.addr + f.size - 1)
            .map(|s| (s.name.to_string(), s.offset));
        let _ = std::fs::remove_dir_all(&dir);
        let lossy = format!("\u{fffd}{}", &raw[1..]);
        assert_eq!(got.as_deref(), Some(lossy.as_str()));
        assert_eq!(inside, Some((lossy, f.size - 1)));
        assert_eq!(p.lookup(f.addr).map(|s| s.name.to_string()), got);
        // Exact-name lookups know only UTF-8 names.
        assert!(m.functions().all(|(n, a, _)| a != f.addr || n != raw));
    }

    /// The radix sort orders as a stable sort by (address, unsized) does.
    #[test]
    fn radix_sort_is_a_stable_sort() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (n, bits) in [
            (0, 8),
            (1, 8),
            (5000, 12),
            (5000, 22),
            (3000, 48),
            (3000, 64),
        ] {
            let funcs: Vec<Func> = (0..n)
                .map(|_| Func {
                    bind: 0,
                    addr: if bits == 64 {
                        next()
                    } else {
                        next() % (1 << bits)
                    },
                    size: next() % 3,
                    name: 0,
                    len: 0,
                })
                .collect();
            let mut want: Vec<u32> = (0..n).collect();
            want.sort_by_key(|&i| (funcs[i as usize].addr, funcs[i as usize].size == 0));
            assert_eq!(
                sort_order(&funcs),
                want,
                "{n} symbols, {bits}-bit addresses"
            );
        }
    }

    /// The running process's vDSO is a module (`[vdso]`), read from memory: a profile's
    /// frames in `clock_gettime` were bare addresses with no mapping.
    #[test]
    fn the_current_process_has_its_vdso() {
        let s = Symbolizer::for_current_process();
        let v = s
            .modules()
            .iter()
            .find(|m| m.path == "[vdso]")
            .expect("a [vdso] module");
        let f = [
            "__vdso_clock_gettime",
            "__kernel_clock_gettime",
            "clock_gettime",
        ]
        .iter()
        .find_map(|n| v.function(n))
        .expect("the vDSO's clock_gettime");
        assert!(v.range.contains(f.lo), "{:x?} {:x?}", v.range, f);
        let name = s.lookup(f.lo + 1).expect("a symbol").name;
        assert!(name.contains("clock_gettime"), "{name}");
    }

    #[test]
    fn missing_file_is_recorded() {
        let mut s = Symbolizer::new();
        s.add(Path::new("/nonexistent/x.so"), "/nonexistent/x.so", None);
        assert_eq!(s.missing.len(), 1);
        s.add(Path::new("/proc/self/status"), "status", None);
        assert_eq!(s.missing.len(), 2);
    }
}

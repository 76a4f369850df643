//! Source lines for profiles: each address's inlined call chain with file:line (from the
//! modules' DWARF, through `addr2line`), and each module's GNU build id. Used by the profile
//! writers after collection, never while sampling.

use crate::symbols::Symbolizer;
use std::os::unix::ffi::OsStrExt;

/// One function of an address's inline chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InlineFrame {
    /// The function's name (demangled).
    pub function: String,
    /// Its source file ("" when unknown).
    pub file: String,
    /// The line in `file` (0 when unknown).
    pub line: u32,
}

/// Line tables of a [`Symbolizer`]'s modules, each loaded on first use: DWARF's, or, for a Go
/// binary without DWARF (built with `-ldflags=-w`, or stripped), its `.gopclntab`'s.
pub struct LineTables<'a> {
    sym: &'a Symbolizer,
    /// Per module (same index): not tried yet, or the loader (`None`: no DWARF).
    loaders: Vec<Option<Option<addr2line::Loader>>>,
    /// Per module: not tried yet, or its `.gopclntab` (`None`: none this reads).
    #[allow(clippy::type_complexity)]
    go: Vec<Option<Option<(crate::cfi::gopclntab::Table<'a>, Option<&'a [u8]>)>>>,
}

impl<'a> LineTables<'a> {
    /// Line tables for `sym`'s modules (nothing is read yet).
    pub fn new(sym: &'a Symbolizer) -> Self {
        LineTables {
            sym,
            loaders: (0..sym.modules().len()).map(|_| None).collect(),
            go: vec![None; sym.modules().len()],
        }
    }

    /// The functions at `pc` (an exact address: subtract 1 from a return address first),
    /// innermost first: the functions inlined there, then the one they were inlined into.
    /// Empty when the module has no line information for `pc`.
    pub fn frames(&mut self, pc: u64) -> Vec<InlineFrame> {
        let Some(i) = self.sym.modules().iter().position(|m| m.range.contains(pc)) else {
            return Vec::new();
        };
        let m = &self.sym.modules()[i];
        // An image read from memory (`[vdso]`) has no file to read lines from.
        if m.path.starts_with('[') {
            return Vec::new();
        }
        let slot = &mut self.loaders[i];
        if slot.is_none() {
            // A stripped file's lines are in its separate debug file (found by build id or
            // `.gnu_debuglink`), which keeps the file's addresses; DWARF that `dwz` processed
            // refers to a supplementary file (`.gnu_debugaltlink`) for what files share. A
            // module made from a core's memory (no file stood in) has only its debug file.
            let debug = m.separate_debug_file();
            let sup = m.supplementary_debug_file(debug.as_deref());
            let from = debug.or_else(|| (!m.is_image()).then(|| m.file.clone()));
            *slot = Some(from.and_then(|from| {
                // addr2line's loader opens files itself (the file, the supplementary file,
                // `FILE.dwp`, the `.dwo` files the DWARF names) and inflates compressed
                // sections whole: each is checked first as modules are opened
                // ([`crate::safe_open`]: no FIFO, device or /proc file, which would block or
                // never end) and for an inflated size within `section_bytes`' limits.
                // A live process's files are read under its `/proc/PID` (`root` in another
                // mount namespace, `map_files` for a deleted or memfd program), as its
                // symbols were: the symbolizer's policy allows that prefix.
                let policy = crate::safe_open::Policy {
                    allow_proc: self.sym.open_policy.allow_proc.clone(),
                    ..crate::offline::debug_files::policy()
                };
                let sup = sup.filter(|s| loadable(s, false, &policy));
                loadable(&from, true, &policy)
                    .then(|| addr2line::Loader::new_with_sup(&from, sup.as_deref()).ok())
                    .flatten()
            }));
        }
        let Some(Some(loader)) = slot.as_ref() else {
            return self.go_frames(i, pc);
        };
        let mut out = Vec::new();
        let Ok(mut it) = loader.find_frames(pc.wrapping_sub(m.bias)) else {
            return self.go_frames(i, pc);
        };
        // A chain deeper than this is not a real program's.
        while let Ok(Some(f)) = it.next() {
            if out.len() >= 256 {
                break;
            }
            // Demangled as symbols are (C++ too: addr2line's own demangling is Rust's only).
            let function = f
                .function
                .as_ref()
                .and_then(|n| n.raw_name().ok())
                .map(|raw| crate::symbols::readable(&raw))
                .unwrap_or_default();
            let (file, line) = match &f.location {
                Some(l) => (l.file.unwrap_or("").to_string(), l.line.unwrap_or(0)),
                None => (String::new(), 0),
            };
            out.push(InlineFrame {
                function,
                file,
                line,
            });
        }
        // No function names at all: a module with line tables but no DWARF functions. A Go
        // binary built so has its positions in `.gopclntab`; others (clang's
        // `-gline-tables-only`) keep the line, named by the symbol table.
        if out.iter().all(|f| f.function.is_empty()) {
            let go = self.go_frames(i, pc);
            let located = out.last().is_some_and(|f| !f.file.is_empty());
            if !go.is_empty() || !located {
                return go;
            }
            let Some(s) = self.sym.lookup(pc) else {
                return Vec::new();
            };
            out.truncate(1);
            out[0].function = s.name.to_string();
            return out;
        }
        // The function the others were inlined into is also in the symbol table, with its
        // path: DWARF from `debug = "line-tables-only"` names it without (`on_system_stack`).
        // (The symbol is looked up only for a name without a path.)
        if let Some(outer) = out.last_mut().filter(|f| lacks_path(&f.function)) {
            if let Some(s) = self.sym.lookup(pc) {
                if names_the_same_function(&outer.function, s.name) {
                    outer.function = s.name.to_string();
                }
            }
        }
        out
    }
}

/// May addr2line's loader open `path`: a file [`crate::safe_open`] accepts, whose compressed
/// DWARF sections inflate within [`crate::dwarf::section_bytes`]' limits (a hostile header
/// claims gigabytes)? With `split`, the split DWARF files the loader would open for it too
/// ([`split_dwarf_loadable`]).
fn loadable(path: &std::path::Path, split: bool, policy: &crate::safe_open::Policy) -> bool {
    use object::{Object, ObjectSection};
    let Ok(m) = crate::safe_open::map_analysed(path, policy) else {
        return false;
    };
    let Ok(file) = object::File::parse(&*m) else {
        return false;
    };
    let within = file.sections().all(|s| {
        let debug = s
            .name()
            .is_ok_and(|n| n.starts_with(".debug_") || n.starts_with(".zdebug_"));
        !debug
            || s.compressed_data()
                .is_ok_and(|c| crate::dwarf::inflates_within_limits(&c))
    });
    within && (!split || split_dwarf_loadable(path, &file, policy))
}

/// The most compile units [`split_dwarf_loadable`] looks at (a large C++ program has tens of
/// thousands).
const MAX_SPLIT_UNITS: usize = 1 << 20;

/// The split DWARF files addr2line's loader would open for `path` (parsed as `file`):
/// `FILE.dwp`, and each skeleton unit's `.dwo`: none there, or each [`loadable`]. Every unit
/// is looked at, up to [`MAX_SPLIT_UNITS`] (a file with more is not loaded): the loader opens
/// the `.dwo` of any unit a pc falls in, and one past the first 4096, which alone were
/// looked at, could be a FIFO that hung it (found by outside use in the twenty-seventh round).
fn split_dwarf_loadable(
    path: &std::path::Path,
    file: &object::File<'_>,
    policy: &crate::safe_open::Policy,
) -> bool {
    use object::Object;
    let there_and_bad =
        |p: &std::path::Path| p.symlink_metadata().is_ok() && !loadable(p, false, policy);
    // As the loader names it: `prog.dwp`, `lib.so.dwp`.
    let mut dwp = path.as_os_str().to_owned();
    dwp.push(".dwp");
    if there_and_bad(std::path::Path::new(&dwp)) {
        return false;
    }
    let endian = if file.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let load = |id: gimli::SectionId| -> Result<std::borrow::Cow<'_, [u8]>, gimli::Error> {
        Ok(crate::cfi::section_names::section_by_name(file, id.name())
            .and_then(|s| crate::dwarf::section_bytes(&s))
            .unwrap_or(std::borrow::Cow::Borrowed(&[])))
    };
    let Ok(sections) = gimli::DwarfSections::load(load) else {
        return true;
    };
    let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, endian));
    let mut units = dwarf.units();
    for n in 0.. {
        let Ok(Some(header)) = units.next() else {
            break;
        };
        if n == MAX_SPLIT_UNITS {
            return false;
        }
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let Ok(Some(name)) = unit.dwo_name() else {
            continue;
        };
        let Ok(name) = dwarf.attr_string(&unit, name) else {
            continue;
        };
        let mut p = std::path::PathBuf::new();
        if let Some(dir) = unit.comp_dir {
            p.push(std::ffi::OsStr::from_bytes(dir.slice()));
        }
        p.push(std::ffi::OsStr::from_bytes(name.slice()));
        if there_and_bad(&p) {
            return false;
        }
    }
    true
}

impl<'a> LineTables<'a> {
    /// [`LineTables::frames`] from module `i`'s `.gopclntab` (a Go binary without DWARF): the
    /// functions inlined at `pc`, innermost first, then the function itself, with the files and
    /// lines Go's own tracebacks print for them (the inline trees are found through the
    /// runtime's module data). Empty where the table gives no position, or the pc is in
    /// inlined code and the inline tree cannot be found.
    fn go_frames(&mut self, i: usize, pc: u64) -> Vec<InlineFrame> {
        let sym: &'a Symbolizer = self.sym;
        let m = &sym.modules()[i];
        let go = *self.go[i].get_or_insert_with(|| {
            let data: &'a [u8] = m.bytes();
            let file = object::File::parse(data).ok()?;
            let t = crate::cfi::gopclntab::Table::of_file(&file, data).filter(|t| t.sorted())?;
            Some((t, crate::cfi::gopclntab::gofunc(&file, &t)))
        });
        let Some((t, gofunc)) = go else {
            return Vec::new();
        };
        let off = pc.wrapping_sub(m.bias).wrapping_sub(t.text);
        let mut pos = Vec::new();
        if !u32::try_from(off).is_ok_and(|o| t.positions(o, gofunc, &mut pos)) {
            return Vec::new();
        }
        pos.iter()
            .map(|p| {
                let function = match p.name {
                    Some(n) => t
                        .name_at(n)
                        .map(|raw| {
                            crate::symbols::go_name_for_print(raw)
                                .unwrap_or_else(|| raw.to_string())
                        })
                        .unwrap_or_default(),
                    None => sym
                        .lookup(pc)
                        .map(|s| s.name.to_string())
                        .unwrap_or_default(),
                };
                InlineFrame {
                    function,
                    file: p.file.to_string(),
                    line: p.line,
                }
            })
            .collect()
    }
}

/// A function name without a path (`on_system_stack`), not empty.
fn lacks_path(name: &str) -> bool {
    !name.is_empty() && !name.contains("::")
}

/// Is `dwarf` (a DWARF function name) the last path segment of `symbol` (the symbol table's
/// demangled name of the same function), `symbol` the longer: `on_system_stack` and
/// `unwind::demo::on_system_stack`.
fn names_the_same_function(dwarf: &str, symbol: &str) -> bool {
    lacks_path(dwarf)
        && symbol
            .strip_suffix(dwarf)
            .is_some_and(|head| head.ends_with("::"))
}

/// The module's GNU build id (`NT_GNU_BUILD_ID`), if it has one.
pub fn build_id(data: &[u8]) -> Option<Vec<u8>> {
    use object::Object;
    let file = object::File::parse(data).ok()?;
    file.build_id().ok()?.map(<[u8]>::to_vec)
}

/// The module's executable `PT_LOAD` segments as a process maps them (what a `r-xp` line of
/// `/proc/self/maps` shows): `(address, end, file offset)` at file addresses (add the load bias),
/// the start and the offset rounded down to the page, the end up to it. pprof turns an address into a symbol
/// address as `addr - start + offset - p_offset + p_vaddr` of the segment holding that file
/// offset, which holds only for a mapping that starts at a segment's page: a mapping spanning
/// the whole module at offset 0 sent addresses past the first segment to the wrong function
/// whenever pprof symbolised them itself. Empty when `data` is not an ELF file with
/// executable segments.
pub fn exec_segments(data: &[u8]) -> Vec<(u64, u64, u64)> {
    use object::{Object, ObjectSegment, SegmentFlags};
    const PAGE: u64 = 0xfff;
    let Ok(file) = object::File::parse(data) else {
        return Vec::new();
    };
    if file.format() != object::BinaryFormat::Elf {
        return Vec::new();
    }
    // `segments()` of an ELF file are its PT_LOAD headers.
    file.segments()
        .filter(|s| {
            matches!(s.flags(), SegmentFlags::Elf { p_flags, .. }
                if p_flags & object::elf::PF_X == object::elf::PF_X)
        })
        .filter_map(|s| {
            let (vaddr, memsz) = (s.address(), s.size());
            let (off, _) = s.file_range();
            let end = vaddr.checked_add(memsz)?.checked_add(PAGE)? & !PAGE;
            let off = off.checked_sub(vaddr & PAGE)?;
            Some((vaddr & !PAGE, end, off))
        })
        .collect()
}

/// Lower-case hex, as pprof and debuginfod spell build ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_dwarf_name_takes_the_symbol_s_path() {
        let same = names_the_same_function;
        assert!(same("on_system_stack", "unwind::demo::on_system_stack"));
        assert!(!same("on_system_stack", "on_system_stack"));
        assert!(!same("stack", "unwind::demo::on_system_stack"));
        assert!(!same(
            "demo::on_system_stack",
            "unwind::demo::on_system_stack"
        ));
        assert!(!same(
            "{closure#0}",
            "unwind::demo::demo_worker::{{closure}}"
        ));
        assert!(!same("", "unwind::demo::x"));
    }

    #[test]
    fn this_test_binary_has_lines_and_a_build_id() {
        let sym = Symbolizer::for_current_process();
        let here = this_test_binary_has_lines_and_a_build_id as *const () as usize as u64;
        let mut t = LineTables::new(&sym);
        let frames = t.frames(here);
        assert!(!frames.is_empty(), "no line info for {here:#x}");
        let last = frames.last().unwrap();
        assert!(last.file.ends_with("profile/lines.rs"), "{frames:?}");
        assert!(last.line > 0);
        assert!(
            last.function
                .contains("this_test_binary_has_lines_and_a_build_id"),
            "{frames:?}"
        );
        // Outside every module: nothing.
        assert!(t.frames(8).is_empty());
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
        assert_eq!(build_id(b"not an ELF"), None);
    }
}

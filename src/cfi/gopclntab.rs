//! A Go binary's `.gopclntab` (Go 1.18 and later): its function table, and call-frame
//! information made from its `pcsp` tables for binaries without `.debug_frame`.
//!
//! Go's linker writes `.debug_frame` from the same `pcsp` tables (`cmd/link/internal/ld`,
//! `writeframes`): per function, the stack pointer's offset from its value at entry, per pc
//! range. A stripped binary (`-ldflags=-s -w`) keeps `.gopclntab` (Go's own tracebacks read it)
//! but has no `.debug_frame`, so [`debug_frame`] writes the section the linker would have
//! written, rule for rule, and the prepared-CFI path reads it as it reads an unstripped
//! binary's. Every read is bounds-checked; a corrupt table gives fewer functions or none.

use crate::arch::ArchKind;
use crate::cfi::section_names::section_by_name;

/// The header fields this reads (`runtime.pcHeader`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Table<'a> {
    /// The whole section.
    pub tab: &'a [u8],
    /// Its offset in the file ([`Table::of_file`]; 0 from [`Table::parse`]).
    pub file_off: usize,
    /// Go 1.20 and later (magic `0xfffffff1`): `_func` has `startLine` before `funcID`.
    go120: bool,
    /// Instruction size quantum (1 on x86, 4 on arm64).
    quantum: u8,
    /// Number of functions.
    pub nfunc: usize,
    /// The text start functions' entries are offsets from (link-time).
    pub text: u64,
    /// Offsets of the function-name, pc-value and function tables in `tab`.
    #[cfg_attr(not(feature = "offline"), allow(dead_code))]
    pub names: usize,
    pctab: usize,
    pcln: usize,
    /// Offsets of the compilation units' file index (`cutab`, u32s) and the file names.
    #[cfg_attr(not(feature = "profilers"), allow(dead_code))]
    cutab: usize,
    #[cfg_attr(not(feature = "profilers"), allow(dead_code))]
    filetab: usize,
}

/// One function of a pc's inline chain ([`Table::positions`]).
#[cfg_attr(not(feature = "profilers"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position<'a> {
    /// An inlined function's name (an offset into the name table, [`Table::name_at`]); `None`
    /// for the function the pc is in.
    pub name: Option<u32>,
    /// The position in it.
    pub file: &'a str,
    /// Its line.
    pub line: u32,
}

/// The bytes at `moduledata.gofunc` (`go:func.*`), which a function's funcdata offsets (its
/// inline tree among them) are relative to: found through the runtime's first module data
/// (in `.noptrdata`, its first word `.gopclntab`'s address, written there or, in a
/// position-independent binary, by a relative relocation), at the field's offset for the
/// table's version (Go 1.18-1.19, and 1.20 and later). `None` when that does not check out.
#[cfg_attr(not(feature = "profilers"), allow(dead_code))]
pub(crate) fn gofunc<'d>(file: &object::File<'d>, t: &Table<'_>) -> Option<&'d [u8]> {
    use object::{Object, ObjectSection};
    let pclntab = locate(file)?.2;
    let nd = section_by_name(file, ".noptrdata")?;
    let data = nd.data().ok()?;
    let base = nd.address();
    // Relocations with an addend (a PIE binary's module data is filled in at load by
    // relative relocations), by the address they write.
    let relocs: std::collections::HashMap<u64, u64> = file
        .dynamic_relocations()
        .map(|it| it.map(|(off, r)| (off, r.addend() as u64)).collect())
        .unwrap_or_default();
    let word = |at: u64| -> Option<u64> {
        let o = usize::try_from(at.checked_sub(base)?).ok()?;
        match u64_at(data, o)? {
            0 => relocs.get(&at).copied().filter(|&v| v != 0),
            v => Some(v),
        }
    };
    // The module data: its pcHeader is the table, its funcnametab the names.
    let md = (0..data.len() / 8)
        .map(|i| base + 8 * i as u64)
        .find(|&at| word(at) == Some(pclntab) && word(at + 8) == Some(pclntab + t.names as u64))?;
    let g = word(md + if t.go120 { 320 } else { 304 })?;
    let sec = file
        .sections()
        .find(|s| s.address() <= g && g < s.address().saturating_add(s.size()))?;
    let bytes = sec.data().ok()?;
    bytes.get(usize::try_from(g - sec.address()).ok()?..)
}

/// One function of the table: entry and end offsets from [`Table::text`], and where its
/// `_func` is in [`Table::tab`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Func {
    pub entry: u32,
    pub end: u32,
    pub func: usize,
}

fn u32_at(tab: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        tab.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(tab: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        tab.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Where a Go binary's function table lies in the file: (file offset, bytes to the end of
/// the section holding it, its link-time address). Its own section, `.gopclntab`, or `.data.rel.ro.gopclntab` in a
/// position-independent executable Go linked itself (the table holds relocated words); in one
/// the system linker made (cgo with `-buildmode=pie`, as distributions build Go programs) the
/// table has no section of its own: it lies in `.data.rel.ro`, found where a header reads as
/// one [`Table::parse`] accepts with sorted entries (at the `runtime.pclntab` symbol, which a
/// stripped binary no longer names). Only a file with Go's own sections (`.go.buildinfo`,
/// `.note.go.buildid`) is searched so.
pub(crate) fn locate(file: &object::File<'_>) -> Option<(usize, usize, u64)> {
    use object::ObjectSection;
    let range = |s: &object::Section<'_, '_>| {
        let (off, size) = s.file_range()?;
        Some((
            usize::try_from(off).ok()?,
            usize::try_from(size).ok()?,
            s.address(),
        ))
    };
    if let Some(s) = section_by_name(file, ".gopclntab")
        .or_else(|| section_by_name(file, ".data.rel.ro.gopclntab"))
    {
        return range(&s);
    }
    if section_by_name(file, ".go.buildinfo").is_none()
        && section_by_name(file, ".note.go.buildid").is_none()
    {
        return None;
    }
    let s = section_by_name(file, ".data.rel.ro")?;
    let (off, size, addr) = range(&s)?;
    let data = s.data().ok()?;
    // The table is pointer-aligned; its header starts with the magic, two zero bytes, the pc
    // quantum and the pointer size (8).
    let skew = (8 - (s.address() % 8) as usize) % 8;
    (skew..data.len().saturating_sub(8))
        .step_by(8)
        .filter(|&i| {
            matches!(
                data[i..i + 8],
                [0xf0 | 0xf1, 0xff, 0xff, 0xff, 0, 0, 1 | 2 | 4, 8]
            )
        })
        .find(|&i| Table::parse(&data[i..]).is_some_and(|t| t.nfunc > 0 && t.sorted()))
        .map(|i| (off + i, size.saturating_sub(i), addr + i as u64))
}

/// Does `file` hold a Go function table ([`locate`])?
pub(crate) fn is_go(file: &object::File<'_>) -> bool {
    locate(file).is_some()
}

impl<'a> Table<'a> {
    /// The `.gopclntab` of an ELF file, when it has one this reads (64-bit, Go 1.18+). A
    /// position-independent binary's `textStart` is 0 in the file (relocated at load): its
    /// `.text` then starts with the Go text (internal linking, which PIE Go uses unless it
    /// links C).
    pub fn of_file(file: &object::File<'_>, data: &'a [u8]) -> Option<Table<'a>> {
        use object::ObjectSection;
        let (off, size, addr) = locate(file)?;
        let tab = data.get(off..off.checked_add(size)?)?;
        let mut t = Table::parse(tab)?;
        t.file_off = off;
        if t.text == 0 {
            // Filled in at load by a relative relocation (its addend), or, where Go linked
            // the binary itself, the start of `.text`.
            use object::Object;
            let relocated = file.dynamic_relocations().and_then(|mut it| {
                it.find(|(at, _)| *at == addr + 24)
                    .map(|(_, r)| r.addend() as u64)
            });
            t.text = match relocated.filter(|&v| v != 0) {
                Some(v) => v,
                None => section_by_name(file, ".text")?.address(),
            };
        }
        Some(t)
    }

    /// Reads the header; `None` when it is not one this reads.
    pub fn parse(tab: &'a [u8]) -> Option<Table<'a>> {
        let magic = u32_at(tab, 0)?;
        if !matches!(magic, 0xffff_fff0 | 0xffff_fff1) || tab.get(7) != Some(&8) {
            return None;
        }
        let quantum = *tab.get(6)?;
        if !matches!(quantum, 1 | 2 | 4) {
            return None;
        }
        let at = |o| u64_at(tab, o).and_then(|v| usize::try_from(v).ok());
        let pcln = at(64)?;
        // nfunc + 1 (entry, func) pairs of u32 at pcln: more than the table holds is corrupt.
        let nfunc = at(8).filter(|&n| n <= tab.len().saturating_sub(pcln) / 8)?;
        Some(Table {
            tab,
            file_off: 0,
            go120: magic == 0xffff_fff1,
            quantum,
            nfunc,
            text: u64_at(tab, 24)?,
            names: at(32)?,
            pctab: at(56)?,
            pcln,
            cutab: at(40)?,
            filetab: at(48)?,
        })
    }

    /// The function whose code holds `off` (an offset from [`Table::text`]), by binary search
    /// of the entries (the caller checked that they are [`Table::sorted`]).
    #[cfg_attr(not(feature = "profilers"), allow(dead_code))]
    pub fn func_at(&self, off: u32) -> Option<Func> {
        let entry = |i: usize| u32_at(self.tab, self.pcln.checked_add(i.checked_mul(8)?)?);
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if entry(mid)? <= off {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let i = lo.checked_sub(1)?;
        let at = self.pcln.checked_add(8 * i)?;
        let (start, func, end) = (
            u32_at(self.tab, at)?,
            u32_at(self.tab, at + 4)?,
            u32_at(self.tab, at + 8)?,
        );
        (start <= off && off < end).then_some(Func {
            entry: start,
            end,
            func: self.pcln.checked_add(func as usize)?,
        })
    }

    /// The functions at `off` (an offset from [`Table::text`]), innermost first, as Go's
    /// traceback prints them: for each call inlined there (`gofunc`, the bytes at
    /// `moduledata.gofunc` [`gofunc`], holds the inline trees) the inlined function's name
    /// (an offset into the name table) and position, then the function itself (`None`) at the
    /// position of its outermost inlined call. Writes nothing and returns `false` where the
    /// table gives no position, or the pc is in inlined code and the tree is not at hand.
    #[cfg_attr(not(feature = "profilers"), allow(dead_code))]
    pub fn positions(
        &self,
        off: u32,
        gofunc: Option<&'a [u8]>,
        out: &mut Vec<Position<'a>>,
    ) -> bool {
        let start = out.len();
        let Some(f) = self.func_at(off).filter(|f| self.checked(f)) else {
            return false;
        };
        // FUNCDATA_InlTree (3): an offset from gofunc, after the pcdata offsets.
        let tree = gofunc.and_then(|g| {
            let npcdata = self.field(&f, 28)? as usize;
            let fixed = self.func_size();
            let nfuncdata = *self.tab.get(f.func.checked_add(fixed - 1)?)?;
            if nfuncdata <= 3 {
                return None;
            }
            let o = self.field(&f, fixed.checked_add(4 * npcdata)?.checked_add(4 * 3)?)?;
            (o != u32::MAX).then(|| g.get(o as usize..)).flatten()
        });
        let size = if self.go120 { 16 } else { 20 };
        let mut at = off - f.entry;
        // At most as many inlined calls as a real program nests.
        for _ in 0..64 {
            let Some(ix) = self.inline_index(&f, at) else {
                let Some((file, line)) = self.position(&f, at) else {
                    out.truncate(start);
                    return false;
                };
                out.push(Position {
                    name: None,
                    file,
                    line,
                });
                return true;
            };
            let rec = tree.and_then(|t| t.get(ix.checked_mul(size)?..)?.get(..size));
            let (Some(rec), Some((file, line))) = (rec, self.position(&f, at)) else {
                out.truncate(start);
                return false;
            };
            let (name, parent) = if self.go120 {
                (u32_at(rec, 4), u32_at(rec, 8))
            } else {
                (u32_at(rec, 12), u32_at(rec, 16))
            };
            let (Some(name), Some(parent)) = (name, parent) else {
                out.truncate(start);
                return false;
            };
            out.push(Position {
                name: Some(name),
                file,
                line,
            });
            // The call site: an instruction of the caller (the next function out).
            if parent >= f.end - f.entry {
                break;
            }
            at = parent;
        }
        out.truncate(start);
        false
    }

    /// The size of a `_func` record before its pcdata offsets (`nfuncdata` is its last byte):
    /// 40 bytes, 44 from Go 1.20 (`startLine`).
    #[cfg_attr(not(feature = "profilers"), allow(dead_code))]
    fn func_size(&self) -> usize {
        if self.go120 {
            44
        } else {
            40
        }
    }

    /// `f`'s `PCDATA_InlTreeIndex` (pcdata table 2) at `at`: the inline tree entry of the
    /// innermost call inlined there, or `None` (-1: none).
    #[cfg_attr(not(feature = "profilers"), allow(dead_code))]
    fn inline_index(&self, f: &Func, at: u32) -> Option<usize> {
        let npcdata = self.field(f, 28)? as usize;
        if npcdata <= 2 {
            return None;
        }
        let table = self.field(f, self.func_size() + 2 * 4)?;
        usize::try_from(self.value_at(f, table, at)?).ok()
    }

    /// `f`'s file and line at `at` (its `pcfile` and `pcln` tables, the file through its
    /// compilation unit's entries in `cutab`).
    #[cfg_attr(not(feature = "profilers"), allow(dead_code))]
    fn position(&self, f: &Func, at: u32) -> Option<(&'a str, u32)> {
        let fileno = self.value_at(f, self.field(f, 20)?, at)?;
        let line = self.value_at(f, self.field(f, 24)?, at)?;
        let cu = self.field(f, 32)?;
        let fileoff = u32_at(
            self.tab,
            self.cutab
                .checked_add((cu as usize).checked_add(usize::try_from(fileno).ok()?)? * 4)?,
        )?;
        if fileoff == u32::MAX {
            return None;
        }
        let name = self
            .tab
            .get(self.filetab.checked_add(fileoff as usize)?..)?;
        let name = &name[..name.iter().position(|&b| b == 0).filter(|&n| n > 0)?];
        Some((
            core::str::from_utf8(name).ok()?,
            u32::try_from(line).ok().filter(|&l| l > 0)?,
        ))
    }

    /// The name at `off` in the function-name table.
    #[cfg_attr(not(feature = "profilers"), allow(dead_code))]
    pub fn name_at(&self, off: u32) -> Option<&'a str> {
        let tab: &'a [u8] = self.tab;
        let name = tab.get(self.names.checked_add(off as usize)?..)?;
        let name = &name[..name.iter().position(|&b| b == 0).filter(|&n| n > 0)?];
        core::str::from_utf8(name).ok()
    }

    /// Is the name at `off` in the function-name table `name` (read no further than its end)?
    #[cfg_attr(not(feature = "offline"), allow(dead_code))]
    pub fn name_is(&self, off: u32, name: &str) -> bool {
        let at = self.names.checked_add(off as usize);
        let end = at.and_then(|a| a.checked_add(name.len()));
        match (at, end) {
            (Some(at), Some(end)) => {
                self.tab.get(at..end) == Some(name.as_bytes()) && self.tab.get(end) == Some(&0)
            }
            _ => false,
        }
    }

    /// The value at `at` (an offset from `f`'s entry) of the pc-value table at `table` (an
    /// offset into the pc-value tables; 0: no table).
    #[cfg_attr(not(feature = "profilers"), allow(dead_code))]
    fn value_at(&self, f: &Func, table: u32, at: u32) -> Option<i32> {
        if table == 0 {
            return None;
        }
        self.runs(f, Some(table))
            .find(|&(start, end, _)| start <= at && at < end)
            .map(|(_, _, v)| v)
    }

    /// The functions, by entry; stops (`None` at the end of what it gave) at an entry out of
    /// order, so an unsorted table yields nothing past that point.
    pub fn funcs(&self) -> impl Iterator<Item = Func> + '_ {
        let mut prev = 0u32;
        (0..self.nfunc).map_while(move |i| {
            let at = self.pcln.checked_add(8 * i)?;
            let entry = u32_at(self.tab, at)?;
            let func = u32_at(self.tab, at + 4)? as usize;
            let end = u32_at(self.tab, at + 8)?;
            if entry < prev || end < entry {
                return None;
            }
            prev = entry;
            Some(Func {
                entry,
                end,
                func: self.pcln.checked_add(func)?,
            })
        })
    }

    /// Whether the table's entries are sorted (a table that is not is not one this reads).
    #[cfg_attr(not(feature = "offline"), allow(dead_code))]
    pub fn sorted(&self) -> bool {
        self.funcs().count() == self.nfunc
    }

    /// A `_func` field (u32) at `off` bytes into `f`'s record.
    fn field(&self, f: &Func, off: usize) -> Option<u32> {
        u32_at(self.tab, f.func.checked_add(off)?)
    }

    /// `f`'s `_func` whose `entryoff` matches its table entry (else it is not the record).
    pub fn checked(&self, f: &Func) -> bool {
        self.field(f, 0) == Some(f.entry)
    }

    /// The name offset (into the name table) of `f`.
    #[cfg_attr(not(feature = "offline"), allow(dead_code))]
    pub fn nameoff(&self, f: &Func) -> Option<u32> {
        self.field(f, 4)
    }

    /// `f`'s `_func.funcID`: what the runtime treats specially (`runtime.funcID`; the numbering
    /// moves between Go versions, see [`Wrappers`]).
    #[cfg_attr(not(feature = "offline"), allow(dead_code))]
    pub fn func_id(&self, f: &Func) -> Option<u8> {
        let at = if self.go120 { 40 } else { 36 };
        f.func
            .checked_add(at)
            .and_then(|a| self.tab.get(a))
            .copied()
    }

    /// `_func.flag` has `TOPFRAME` (the outermost function of a stack: `goexit`, `mstart`,
    /// `rt0_go`).
    fn top_frame(&self, f: &Func) -> bool {
        let at = if self.go120 { 41 } else { 37 };
        f.func
            .checked_add(at)
            .and_then(|a| self.tab.get(a))
            .is_some_and(|flag| flag & 1 != 0)
    }

    /// `f`'s `pcsp` runs: `(start, end, sp offset from entry)`, offsets from its entry, in
    /// order, within the function. Decoded as `runtime.step` does; stops at the table's end
    /// marker, a run past the function's end, or a malformed varint.
    fn pcsp(&self, f: &Func) -> impl Iterator<Item = (u32, u32, i32)> + '_ {
        self.runs(f, self.field(f, 16))
    }

    /// The runs of `f`'s pc-value table at offset `table` in the pc-value tables: `(start, end,
    /// value)`, offsets from its entry, in order, within the function. Decoded as
    /// `runtime.step` does; stops at the table's end marker, a run past the function's end,
    /// or a malformed varint. Nothing for a `_func` that does not match its entry.
    fn runs(&self, f: &Func, table: Option<u32>) -> impl Iterator<Item = (u32, u32, i32)> + '_ {
        let start = table
            .and_then(|o| self.pctab.checked_add(o as usize))
            .filter(|_| self.checked(f));
        let len = f.end - f.entry;
        let mut p = start.and_then(|s| self.tab.get(s..)).unwrap_or(&[]);
        let (mut pc, mut val, mut first) = (0u32, -1i32, true);
        core::iter::from_fn(move || {
            if pc >= len {
                return None;
            }
            let (uv, n) = varint(p)?;
            if uv == 0 && !first {
                return None;
            }
            first = false;
            p = p.get(n..)?;
            val = val.wrapping_add((-((uv & 1) as i32)) ^ ((uv >> 1) as i32));
            let (pcd, n) = varint(p)?;
            p = p.get(n..)?;
            let next = pc.checked_add(pcd.checked_mul(u32::from(self.quantum))?)?;
            if next > len || next == pc {
                return None;
            }
            let run = (pc, next, val);
            pc = next;
            Some(run)
        })
    }
}

/// Go's `readvarint`: a little-endian base-128 u32 (at most 5 bytes), and its length.
/// Go's autogenerated functions (`funcID_wrapper`: a value method's wrapper for a pointer or
/// interface call, a method value's `-fm` closure, ...), which Go's `runtime.Callers`, and so
/// its CPU, heap, block and mutex profiles, leave out of a stack unless the wrapper itself
/// called `runtime.gopanic`, `sigpanic` or `panicwrap` (`gentraceback`'s
/// `elideWrapperCalling`). Go's crash tracebacks (`GOTRACEBACK=system`/`crash`) show them.
#[cfg_attr(not(feature = "offline"), allow(dead_code))]
pub(crate) struct Wrappers<'a> {
    t: Table<'a>,
    /// `funcID_wrapper` in this binary's numbering.
    wrapper: u8,
    /// `runtime.gopanic`, `sigpanic` and `panicwrap`: `(entry, end)` offsets from the text.
    panics: Vec<(u32, u32)>,
}

#[cfg_attr(not(feature = "offline"), allow(dead_code))]
impl<'a> Wrappers<'a> {
    /// Reads `t` (sorted, else `None`). The `funcID` enum gained members between Go versions
    /// (`corostart` in 1.23), but `wrapper` has always been the last, right after
    /// `systemstack_switch`: its number is read off `runtime.systemstack_switch`'s record.
    /// `None` where that function is missing or not special.
    pub fn new(t: Table<'a>) -> Option<Wrappers<'a>> {
        if !t.sorted() {
            return None;
        }
        let mut switch = None;
        let mut panics = Vec::new();
        // Each name compared in place, for as many bytes as the names asked for (a name with
        // no end in a corrupt table is not read to the table's end once per function).
        for f in t.funcs().filter(|f| t.checked(f)) {
            let Some(off) = t.nameoff(&f) else {
                continue;
            };
            if t.name_is(off, "runtime.systemstack_switch") {
                switch = t.func_id(&f);
            } else if ["runtime.gopanic", "runtime.sigpanic", "runtime.panicwrap"]
                .iter()
                .any(|n| t.name_is(off, n))
            {
                panics.push((f.entry, f.end));
            }
        }
        let wrapper = switch.filter(|&id| id != 0)?.checked_add(1)?;
        Some(Wrappers { t, wrapper, panics })
    }

    /// The table's text start (link-time): frames' offsets are from it.
    pub fn text(&self) -> u64 {
        self.t.text
    }

    /// Does Go leave out the frame whose lookup pc is at `off` (an offset from the text), given
    /// the lookup pc offset of the frame it called (`None`: the leaf, or a frame this table
    /// does not hold)? Only a wrapper's frame is left out, and not when it called a panic
    /// function; where code inlined into the wrapper is at `off`, Go's last function seen is
    /// the inlined one (never a panic function), so the wrapper is left out.
    pub fn elided(&self, off: u32, callee: Option<u32>) -> bool {
        let t = &self.t;
        let Some(f) = t.func_at(off).filter(|f| t.checked(f)) else {
            return false;
        };
        if t.func_id(&f) != Some(self.wrapper) {
            return false;
        }
        if t.inline_index(&f, off - f.entry).is_some() {
            return true;
        }
        !callee.is_some_and(|c| self.panics.iter().any(|&(lo, hi)| lo <= c && c < hi))
    }
}

fn varint(p: &[u8]) -> Option<(u32, usize)> {
    let mut v = 0u32;
    for (i, &b) in p.iter().enumerate().take(5) {
        v |= u32::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Largest section [`debug_frame`] writes (the CFI parse bounds rows and FDEs further).
const MAX_SECTION: usize = 256 << 20;

fn uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn sleb(out: &mut Vec<u8>, mut v: i64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if (v == 0 && b & 0x40 == 0) || (v == -1 && b & 0x40 != 0) {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

// DWARF call-frame instructions used here.
const DW_CFA_ADVANCE_LOC4: u8 = 0x04;
const DW_CFA_OFFSET_EXTENDED: u8 = 0x05;
const DW_CFA_UNDEFINED: u8 = 0x07;
const DW_CFA_SAME_VALUE: u8 = 0x08;
const DW_CFA_DEF_CFA: u8 = 0x0c;
const DW_CFA_DEF_CFA_OFFSET_SF: u8 = 0x13;
const DW_CFA_OFFSET_EXTENDED_SF: u8 = 0x11;
const DW_CFA_VAL_OFFSET: u8 = 0x14;

/// A `.debug_frame` (DWARF 3, 32-bit, address size 8, addresses link-time) with the rules Go's
/// linker writes from `pcsp`: on x86_64 `CFA = rsp + 8 + offset`, the return address at
/// `CFA - 8`; on aarch64 `CFA = sp + offset`, the link register saved at `CFA - offset` once a
/// frame is allocated (in `lr` before), undefined in `TOPFRAME` functions. Neither says where
/// the caller's frame pointer is (the linker's do not either). `None` when the table gives no
/// function, or the section would exceed 256 MiB.
pub(crate) fn debug_frame(t: &Table<'_>, arch: ArchKind) -> Option<Vec<u8>> {
    let (sp, ra, lr) = match arch {
        ArchKind::X86_64 => (7u64, 16u64, false),
        ArchKind::Aarch64 => (31, 30, true),
    };
    let mut out = Vec::new();
    // CIE: code alignment 1, data alignment -1 (offsets unfactored).
    let mut cie = vec![3u8, 0, 1];
    sleb(&mut cie, -1);
    uleb(&mut cie, ra);
    cie.push(DW_CFA_DEF_CFA);
    uleb(&mut cie, sp);
    if lr {
        uleb(&mut cie, 0);
        cie.push(DW_CFA_SAME_VALUE);
        uleb(&mut cie, ra);
        cie.push(DW_CFA_VAL_OFFSET);
        uleb(&mut cie, sp);
        uleb(&mut cie, 0);
    } else {
        uleb(&mut cie, 8);
        cie.push(DW_CFA_OFFSET_EXTENDED);
        uleb(&mut cie, ra);
        uleb(&mut cie, 8);
    }
    while !(cie.len() + 4).is_multiple_of(4) {
        cie.push(0);
    }
    out.extend_from_slice(&((cie.len() + 4) as u32).to_le_bytes());
    out.extend_from_slice(&u32::MAX.to_le_bytes());
    out.extend_from_slice(&cie);
    let mut ins = Vec::new();
    let mut fdes = 0usize;
    for f in t.funcs() {
        ins.clear();
        let top = lr && t.top_frame(&f);
        if top {
            ins.push(DW_CFA_UNDEFINED);
            uleb(&mut ins, ra);
        }
        let mut covered = 0u32;
        for (start, end, off) in t.pcsp(&f) {
            let off = i64::from(off);
            if lr && !top {
                if off > 0 {
                    ins.push(DW_CFA_OFFSET_EXTENDED_SF);
                    uleb(&mut ins, ra);
                    sleb(&mut ins, off);
                } else {
                    ins.push(DW_CFA_SAME_VALUE);
                    uleb(&mut ins, ra);
                }
            }
            // Factored by the data alignment (-1); negative offsets too, as the linker's.
            ins.push(DW_CFA_DEF_CFA_OFFSET_SF);
            sleb(&mut ins, -(if lr { off } else { off + 8 }));
            ins.push(DW_CFA_ADVANCE_LOC4);
            ins.extend_from_slice(&(end - start).to_le_bytes());
            covered = end;
        }
        if covered == 0 {
            continue;
        }
        while !(ins.len() + 20).is_multiple_of(4) {
            ins.push(0);
        }
        let len = 4 + 8 + 8 + ins.len();
        if out.len() + 4 + len > MAX_SECTION {
            return None;
        }
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // the CIE at offset 0
        out.extend_from_slice(&t.text.wrapping_add(u64::from(f.entry)).to_le_bytes());
        out.extend_from_slice(&u64::from(covered).to_le_bytes());
        out.extend_from_slice(&ins);
        fdes += 1;
    }
    (fdes > 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of `funcs` (entry offsets, the last one the end) whose `_func` records each
    /// point at one `pcsp` program.
    fn table(entries: &[u32], pcsp: &[&[u8]], flags: &[u8], go120: bool) -> Vec<u8> {
        let n = entries.len() - 1;
        let mut tab = vec![0u8; 72];
        tab[..4].copy_from_slice(&(if go120 { 0xffff_fff1u32 } else { 0xffff_fff0 }).to_le_bytes());
        tab[6] = 1;
        tab[7] = 8;
        let put = |tab: &mut Vec<u8>, at: usize, v: u64| {
            tab[at..at + 8].copy_from_slice(&v.to_le_bytes())
        };
        put(&mut tab, 8, n as u64);
        put(&mut tab, 24, 0x40_0000);
        let pctab = tab.len();
        let mut offs = Vec::new();
        for p in pcsp {
            offs.push(tab.len() - pctab);
            tab.extend_from_slice(p);
        }
        while !tab.len().is_multiple_of(8) {
            tab.push(0);
        }
        let pcln = tab.len();
        put(&mut tab, 56, pctab as u64);
        put(&mut tab, 64, pcln as u64);
        let ftab_len = 8 * (n + 1);
        for (i, &e) in entries.iter().enumerate() {
            let func = if i < n { ftab_len + 48 * i } else { 0 };
            tab.extend_from_slice(&e.to_le_bytes());
            tab.extend_from_slice(&(func as u32).to_le_bytes());
        }
        for i in 0..n {
            let mut rec = [0u8; 48];
            rec[..4].copy_from_slice(&entries[i].to_le_bytes());
            rec[16..20].copy_from_slice(&(offs[i] as u32).to_le_bytes());
            rec[if go120 { 41 } else { 37 }] = flags[i];
            tab.extend_from_slice(&rec);
        }
        tab
    }

    /// pcsp: value +8 (zigzag 16) for 4 bytes, then +24 (zigzag 48) for 10, then -24 to the end.
    const PROLOGUE: &[u8] = &[0x12, 4, 0x30, 10, 0x2f, 6, 0];

    #[test]
    fn pcsp_runs_are_decoded_as_the_runtime_does() {
        let tab = table(&[0, 20, 30], &[PROLOGUE, &[0x02, 10, 0]], &[0, 0], false);
        let t = Table::parse(&tab).unwrap();
        let f: Vec<Func> = t.funcs().collect();
        assert_eq!(f.len(), 2);
        let runs: Vec<_> = t.pcsp(&f[0]).collect();
        // val starts at -1: -1 + 9 = 8, + 24 = 32, - 24 = 8.
        assert_eq!(runs, [(0, 4, 8), (4, 14, 32), (14, 20, 8)]);
        assert_eq!(t.pcsp(&f[1]).collect::<Vec<_>>(), [(0, 10, 0)]);
    }

    #[test]
    fn positions_are_read_from_pcfile_and_pcln() {
        let mut tab = table(&[0, 20, 30], &[PROLOGUE, &[0x02, 10, 0]], &[0, 0], false);
        let pctab = 72;
        let pcln = u64_at(&tab, 64).unwrap() as usize;
        // Func 0's file program (file 0 over [0, 10)) and line program (the prologue's runs:
        // 8 over [0, 4), 32 over [4, 14), 8 over [14, 20)), the unit's file table and names.
        let files_prog = tab.len() - pctab;
        tab.extend_from_slice(&[0x02, 10, 0]);
        let lines_prog = tab.len() - pctab;
        tab.extend_from_slice(PROLOGUE);
        let cutab = tab.len();
        tab.extend_from_slice(&0u32.to_le_bytes());
        let filetab = tab.len();
        tab.extend_from_slice(b"a.go\0");
        tab[40..48].copy_from_slice(&(cutab as u64).to_le_bytes());
        tab[48..56].copy_from_slice(&(filetab as u64).to_le_bytes());
        let rec = pcln + 8 * 3;
        tab[rec + 20..rec + 24].copy_from_slice(&(files_prog as u32).to_le_bytes());
        tab[rec + 24..rec + 28].copy_from_slice(&(lines_prog as u32).to_le_bytes());
        let t = Table::parse(&tab).unwrap();
        assert_eq!(t.func_at(0).map(|f| f.entry), Some(0));
        assert_eq!(t.func_at(19).map(|f| f.entry), Some(0));
        assert_eq!(t.func_at(20).map(|f| f.entry), Some(20));
        assert_eq!(t.func_at(29).map(|f| f.entry), Some(20));
        assert!(t.func_at(30).is_none());
        let at = |off| {
            let mut v = Vec::new();
            t.positions(off, None, &mut v)
                .then(|| (v.len(), v[0].name, v[0].file, v[0].line))
        };
        assert_eq!(at(0), Some((1, None, "a.go", 8)));
        assert_eq!(at(5), Some((1, None, "a.go", 32)));
        // No file past the file program's run; func 1 has no tables.
        assert_eq!(at(12), None);
        assert_eq!(at(25), None);
    }

    #[test]
    fn the_debug_frame_gives_the_linker_s_rules() {
        use crate::dwarf::{PreparedCfi, Sections};
        for go120 in [false, true] {
            let tab = table(&[0, 20, 30], &[PROLOGUE, &[0x02, 10, 0]], &[0, 1], go120);
            let t = Table::parse(&tab).unwrap();
            for arch in [ArchKind::X86_64, ArchKind::Aarch64] {
                let df = debug_frame(&t, arch).unwrap();
                let s = Sections {
                    debug_frame: Some(&df),
                    ..Sections::default()
                };
                let mut u = crate::dwarf::Unwinder::new();
                u.add(PreparedCfi::parse(arch, &s, 0, "go").unwrap());
                // The stack: the word at 0x1000 + k is 0x9000 + k.
                let words: Vec<u8> = (0..64u64)
                    .flat_map(|k| (0x9000 + 8 * k).to_le_bytes())
                    .collect();
                let region = [crate::memory::Region {
                    base: 0x1000,
                    bytes: &words,
                    is_stack: true,
                }];
                let mut mem = crate::memory::Image::new(&region);
                let mut caller = |pc: u64| {
                    let r = crate::arch::Regs {
                        pc,
                        sp: 0x1000,
                        fp: 0x2000,
                        lr: 0x55,
                    };
                    match u.step_regs(&r, true, &mut mem) {
                        crate::walk::CfiStep::Caller(r) => Some((r.pc, r.sp)),
                        _ => None,
                    }
                };
                let base = 0x40_0000u64;
                if arch == ArchKind::X86_64 {
                    // sp offset 8 at entry+0: CFA = sp + 16, ra at [sp + 8].
                    assert_eq!(caller(base), Some((0x9008, 0x1010)));
                    assert_eq!(caller(base + 5), Some((0x9020, 0x1028)));
                    assert_eq!(caller(base + 19), Some((0x9008, 0x1010)));
                    assert_eq!(caller(base + 20), Some((0x9000, 0x1008)));
                } else {
                    // sp offset 8: CFA = sp + 8, lr saved at CFA - 8 = [sp].
                    assert_eq!(caller(base), Some((0x9000, 0x1008)));
                    assert_eq!(caller(base + 5), Some((0x9000, 0x1020)));
                    // A TOPFRAME function: the return address is undefined (the end).
                    assert_eq!(caller(base + 20), Some((0, 0x1000)));
                }
            }
        }
    }

    #[test]
    fn corrupt_tables_give_fewer_rules_or_none() {
        // An unsorted table, a pcsp offset past the end, a run past the function, a varint
        // that never ends, an empty program: no panic, and no rule outside the function.
        let cases: [&[&[u8]]; 4] = [
            &[&[0x12, 40, 0], &[0x02, 10, 0]],
            &[&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80], &[0x02, 10, 0]],
            &[&[], &[]],
            &[&[0x12, 0, 0], &[0x01, 3, 0]],
        ];
        for pcsp in cases {
            let tab = table(&[0, 20, 30], pcsp, &[0, 0], false);
            let t = Table::parse(&tab).unwrap();
            let _ = debug_frame(&t, ArchKind::X86_64);
            for cut in 0..tab.len() {
                if let Some(t) = Table::parse(&tab[..cut]) {
                    let _ = debug_frame(&t, ArchKind::Aarch64);
                }
            }
        }
        // The second function ends before it begins: the listing stops there.
        let tab = table(
            &[10, 20, 5, 30],
            &[PROLOGUE, PROLOGUE, PROLOGUE],
            &[0, 0, 0],
            false,
        );
        let t = Table::parse(&tab).unwrap();
        assert!(!t.sorted());
        assert_eq!(t.funcs().count(), 1);
    }

    /// A table of four functions named `names` with funcIDs `ids` (entries 0, 10, 20, 30).
    fn named(names: [&str; 4], ids: [u8; 4], go120: bool) -> Vec<u8> {
        let prog: &[u8] = &[0x02, 10, 0];
        let mut tab = table(&[0, 10, 20, 30, 40], &[prog; 4], &[0; 4], go120);
        let pcln = u64_at(&tab, 64).unwrap() as usize;
        let names_at = tab.len();
        tab[32..40].copy_from_slice(&(names_at as u64).to_le_bytes());
        for (i, name) in names.iter().enumerate() {
            let off = (tab.len() - names_at) as u32;
            tab.extend_from_slice(name.as_bytes());
            tab.push(0);
            let rec = pcln + 8 * 5 + 48 * i;
            tab[rec + 4..rec + 8].copy_from_slice(&off.to_le_bytes());
            tab[rec + if go120 { 40 } else { 36 }] = ids[i];
        }
        tab
    }

    #[test]
    fn wrappers_are_found_by_the_binary_s_own_numbering() {
        const NAMES: [&str; 4] = [
            "runtime.systemstack_switch",
            "runtime.panicwrap",
            "main.(*T).M",
            "main.f",
        ];
        // Go 1.19's numbering (switch 20, wrapper 21, panicwrap 14) and a later one with a
        // member added before them (1.23's corostart).
        for (go120, ids) in [(false, [20, 14, 21, 0]), (true, [21, 15, 22, 0])] {
            let tab = named(NAMES, ids, go120);
            let w = Wrappers::new(Table::parse(&tab).unwrap()).unwrap();
            assert_eq!(w.wrapper, ids[2]);
            // The wrapper's frame: left out as a leaf or over an ordinary function ...
            assert!(w.elided(25, None));
            assert!(w.elided(25, Some(35)));
            // ... kept over panicwrap, as Go keeps it.
            assert!(!w.elided(25, Some(15)));
            // Other functions, and pcs outside the table, are never left out.
            for off in [5, 15, 35, 40, 1000] {
                assert!(!w.elided(off, None), "{off}");
            }
        }
        // No systemstack_switch, or one that is not special: no wrapper number to trust.
        let tab = named(
            ["runtime.x", NAMES[1], NAMES[2], NAMES[3]],
            [20, 14, 21, 0],
            false,
        );
        assert!(Wrappers::new(Table::parse(&tab).unwrap()).is_none());
        let tab = named(NAMES, [0, 14, 21, 0], false);
        assert!(Wrappers::new(Table::parse(&tab).unwrap()).is_none());
        // A cut table: no panic, wherever it is cut.
        let tab = named(NAMES, [20, 14, 21, 0], false);
        for cut in 0..tab.len() {
            if let Some(w) = Table::parse(&tab[..cut]).and_then(Wrappers::new) {
                for off in [0, 5, 25, 39] {
                    let _ = w.elided(off, Some(15));
                }
            }
        }
    }
}

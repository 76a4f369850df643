//! CFI evaluated on demand, for one-shot walks (`unwind stack` on a core or a stopped process).
//!
//! A [`PreparedCfi`] evaluates every FDE of a module up front: right for a profiler's signal
//! handler, which may not parse anything, but a core's walk needs a few dozen pcs out of the
//! hundreds of thousands of rows of its C library. [`LazyCfi`] finds a pc's FDE through the
//! `.eh_frame_hdr` binary-search table, evaluates that FDE alone (with the same conversion as
//! the prepared table, so the rows are the same) and keeps it for the next lookup.
//!
//! It needs an `.eh_frame_hdr` with the usual encoding (what GNU ld, gold, lld and mold
//! write: `eh_frame_ptr` pcrel|sdata4, count udata4, table datarel|sdata4) and no
//! `.debug_frame` (Go binaries and cgo binaries, whose `.debug_frame` fills what `.eh_frame`
//! does not cover, keep the prepared table): [`parse_elf_lazy`] prepares the others eagerly.
//!
//! # Hybrid
//! [`LazyCfi::keeps_frame_record`] answers like the prepared table's bitmap: a 16-byte
//! granule (counted from the lowest FDE start) keeps a frame record unless an FDE that
//! overlaps it has no frame-record row. Only the FDEs around the granule are evaluated.
//!
//! # Bounds on bad input
//! The table is read with bounds checks (its count must fit the section, as for the prepared
//! table); a binary search takes at most 64 probes; each FDE at most [`MAX_ROWS_PER_FDE`] rows,
//! and a module at most [`MAX_ROWS`] rows in all (then its lookups answer "no information").
//! An FDE that does not parse is recorded ([`LazyCfi::error`]) and gives no information.

use super::*;
use crate::cfi::section_names::section_by_name;
use core::cell::{Cell, RefCell};
use std::collections::HashMap;

/// Hashes an FDE's table index with one multiply (odd: a bijection on the low bits the map
/// buckets by, the high bits mixed for its tags). SipHash showed in `unwind stack` profiles: a
/// hybrid step looks up several FDEs.
#[derive(Default)]
struct IndexHasher(u64);

impl std::hash::Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A cached [`LazyCfi::rule`] answer: (link-time address, rule).
type CachedRule = (u64, Option<CfiRow>);

/// Granules in [`LazyCfi`]'s cache of [`LazyCfi::keeps_frame_record`] answers (direct-mapped:
/// the threads of a process share most of their return addresses).
const KEEPS_CACHE: usize = 64;

/// One FDE, evaluated.
struct Evaluated {
    start: u64,
    end: u64,
    keeps: bool,
    /// Its rows, by address (gimli yields them in order, clipped to the FDE).
    rows: Vec<Raw>,
}

/// What lookups have evaluated so far.
struct State {
    ctx: Box<UnwindContext<usize>>,
    /// By table index; `None`: the FDE failed (or is empty).
    fdes: HashMap<usize, Option<Evaluated>, std::hash::BuildHasherDefault<IndexHasher>>,
    /// Rows evaluated so far (at most [`MAX_ROWS`]).
    rows: usize,
    /// The first failure.
    error: Option<CfiError>,
}

/// One module's `.eh_frame`, evaluated FDE by FDE as lookups need it: a pc's FDE is found
/// through the `.eh_frame_hdr` binary-search table and evaluated alone, with the prepared
/// table's conversion (the same rows), then kept. For one-shot walks (`unwind stack`); a
/// profiler's signal handler needs a [`PreparedCfi`], which parses nothing at lookup. Bounded on
/// bad input: at most 64 probes per search, [`MAX_ROWS_PER_FDE`] rows per FDE, [`MAX_ROWS`] per
/// module; an FDE that does not parse gives no information (and [`LazyCfi::error`]).
pub struct LazyCfi<'d> {
    /// Load bias: runtime address = link-time address + bias.
    pub bias: u64,
    /// A name for messages (the module's path).
    pub name: String,
    eh_frame: EhFrame<EndianSlice<'d, LittleEndian>>,
    eh_frame_addr: u64,
    bases: BaseAddresses,
    regs: RegNums,
    /// The binary-search table: `count` entries of 8 bytes.
    table: &'d [u8],
    hdr_addr: u64,
    count: usize,
    /// Rules of PLT sections no FDE covers (see `plt_rows`), sorted, link-time.
    plt: Vec<Raw>,
    /// Lowest FDE start (the first entry's), link-time.
    base: u64,
    /// Upper bound of what the FDEs cover, link-time (the last FDE's end).
    end: u64,
    state: RefCell<State>,
    /// [`LazyCfi::keeps_frame_record`]'s answers by granule (link-time start, answer);
    /// `u64::MAX` for none (no granule starts there: it lies below `end`).
    keeps: Box<[Cell<(u64, bool)>; KEEPS_CACHE]>,
    /// [`LazyCfi::rule`]'s answers by link-time address (direct-mapped, as `keeps`);
    /// `u64::MAX` for none.
    rules: Box<[Cell<CachedRule>; KEEPS_CACHE]>,
}

impl core::fmt::Debug for LazyCfi<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LazyCfi")
            .field("name", &self.name)
            .field("bias", &self.bias)
            .field("fdes", &self.count)
            .finish_non_exhaustive()
    }
}

impl<'d> LazyCfi<'d> {
    /// A lazy table over `sections`, or `None` when it cannot be one (no `.eh_frame_hdr` in
    /// the usual encoding, a `.debug_frame`, no FDE): then prepare the module with
    /// [`PreparedCfi::parse`], which also reports what is wrong with a malformed header.
    pub fn new(
        arch: ArchKind,
        sections: &Sections<'d>,
        bias: u64,
        name: &str,
    ) -> Option<LazyCfi<'d>> {
        if sections.debug_frame.is_some() {
            return None;
        }
        let (data, eh_frame_addr) = sections.eh_frame?;
        let (hdr, hdr_addr) = sections.eh_frame_hdr?;
        // version 1, eh_frame_ptr pcrel|sdata4, fde_count udata4, table datarel|sdata4.
        if hdr.len() < 12 || hdr[..4] != [1, 0x1b, 0x03, 0x3b] {
            return None;
        }
        let bases = BaseAddresses::default()
            .set_eh_frame(eh_frame_addr)
            .set_eh_frame_hdr(hdr_addr)
            .set_text(sections.text)
            .set_got(sections.got);
        check_hdr(hdr, &bases).ok()?;
        let count = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
        let table = hdr.get(12..12 + count.checked_mul(8)?)?;
        let mut eh_frame = EhFrame::new(data, LittleEndian);
        eh_frame.set_address_size(8);
        eh_frame.set_vendor(vendor(arch));
        let mut t = LazyCfi {
            bias,
            name: name.to_string(),
            eh_frame,
            eh_frame_addr,
            bases,
            regs: regnums(arch),
            table,
            hdr_addr,
            count,
            plt: Vec::new(),
            base: 0,
            end: 0,
            state: RefCell::new(State {
                ctx: Box::new(UnwindContext::new()),
                fdes: HashMap::default(),
                rows: 0,
                error: None,
            }),
            keeps: Box::new(std::array::from_fn(|_| Cell::new((u64::MAX, true)))),
            rules: Box::new(std::array::from_fn(|_| Cell::new((u64::MAX, None)))),
        };
        let (first, _) = t.entry(0)?;
        let (_, last) = t.entry(count - 1)?;
        // The last FDE's end, from its header alone (no evaluation).
        let (_, end) = t.fde_span(last?)?;
        // As for the prepared table: the range must not wrap at its load address.
        if end <= first || first.checked_add(bias).is_none() || end.checked_add(bias).is_none() {
            return None;
        }
        t.base = first;
        t.end = end;
        Some(t)
    }

    /// Adds rules for the x86_64 PLT sections in `plts` (`(link-time address, bytes)`) that no
    /// FDE covers, as [`parse_elf`] does for the prepared table (lld writes none for them).
    pub fn with_plts(mut self, arch: ArchKind, plts: &[(u64, &[u8])]) -> Self {
        if arch != ArchKind::X86_64 {
            return self;
        }
        for &(addr, bytes) in plts {
            let end = addr.saturating_add(bytes.len() as u64);
            if bytes.is_empty() || self.covered(addr, end) {
                continue;
            }
            self.plt.extend(plt_rows(addr, bytes));
        }
        self.plt.sort_by_key(|r| r.start);
        if let (Some(lo), Some(hi)) = (self.plt.first(), self.plt.iter().map(|r| r.end).max()) {
            let (base, end) = (self.base.min(lo.start), self.end.max(hi));
            if base.checked_add(self.bias).is_some() && end.checked_add(self.bias).is_some() {
                self.base = base;
                self.end = end;
            } else {
                self.plt.clear();
            }
        }
        self
    }

    /// Does an FDE cover part of `[lo, hi)` (from the FDE headers: nothing is evaluated)?
    fn covered(&self, lo: u64, hi: u64) -> bool {
        let Some(i) = self.find(hi.saturating_sub(1)) else {
            return false;
        };
        (i.saturating_sub(3)..=i).any(|j| {
            self.entry(j)
                .and_then(|(_, off)| self.fde_span(off?))
                .is_some_and(|(s, e)| s < hi && e > lo)
        })
    }

    /// The FDE at offset `off` of `.eh_frame`, its header parsed (nothing evaluated).
    fn fde_at(
        &self,
        off: usize,
    ) -> gimli::Result<gimli::FrameDescriptionEntry<EndianSlice<'d, LittleEndian>>> {
        self.eh_frame.fde_from_offset(
            &self.bases,
            gimli::EhFrameOffset(off),
            EhFrame::cie_from_offset,
        )
    }

    /// The link-time range `[start, end)` the FDE at offset `off` covers, from its header.
    fn fde_span(&self, off: usize) -> Option<(u64, u64)> {
        let fde = self.fde_at(off).ok()?;
        Some((
            fde.initial_address(),
            fde.initial_address().checked_add(fde.len())?,
        ))
    }

    /// The PLT rule at link-time address `a`, if a PLT row holds it.
    fn plt_rule(&self, a: u64) -> Option<CfiRow> {
        let k = self.plt.partition_point(|r| r.start <= a);
        let r = &self.plt[k.checked_sub(1)?];
        (a < r.end).then_some(r.rule)
    }

    /// Table entry `i`: (initial location, offset of the FDE in `.eh_frame` if it lies
    /// there).
    fn entry(&self, i: usize) -> Option<(u64, Option<usize>)> {
        let e = self.table.get(i.checked_mul(8)?..)?.get(..8)?;
        let loc = i32::from_le_bytes([e[0], e[1], e[2], e[3]]) as i64;
        let fde = i32::from_le_bytes([e[4], e[5], e[6], e[7]]) as i64;
        let loc = self.hdr_addr.wrapping_add_signed(loc);
        let fde = self.hdr_addr.wrapping_add_signed(fde);
        let off = fde
            .checked_sub(self.eh_frame_addr)
            .and_then(|o| usize::try_from(o).ok());
        Some((loc, off))
    }

    /// Index of the last entry whose initial location is at or below `svma`.
    fn find(&self, svma: u64) -> Option<usize> {
        let (mut lo, mut hi) = (0usize, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid)?.0 <= svma {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }

    /// Evaluates FDE `i` (once) and gives it to `f`; `None` when it failed.
    fn with_fde<T>(&self, i: usize, f: impl FnOnce(&Evaluated) -> T) -> Option<T> {
        let mut st = self.state.borrow_mut();
        if let Some(e) = st.fdes.get(&i) {
            return e.as_ref().map(f);
        }
        let e = match self.evaluate(i, &mut st) {
            Ok(e) => Some(e),
            Err(err) => {
                st.error.get_or_insert(err);
                None
            }
        };
        st.fdes.entry(i).or_insert(e).as_ref().map(f)
    }

    fn evaluate(&self, i: usize, st: &mut State) -> Result<Evaluated, CfiError> {
        let off = self.entry(i).and_then(|e| e.1).ok_or(CfiError::BadHeader)?;
        let fde = self.fde_at(off)?;
        let start = fde.initial_address();
        let end = start.checked_add(fde.len()).ok_or(CfiError::BadRange)?;
        let mut rows = Vec::new();
        if fde.len() == 0 {
            return Ok(Evaluated {
                start,
                end,
                keeps: false,
                rows,
            });
        }
        let limit = MAX_ROWS.saturating_sub(st.rows);
        let keeps = eval_fde(
            &self.eh_frame,
            &self.bases,
            self.regs,
            &mut st.ctx,
            &fde,
            limit,
            &mut rows,
        );
        // Failed or not, the work counts against the module's budget.
        st.rows = st.rows.saturating_add(rows.len() + 1);
        let keeps = keeps?;
        Ok(Evaluated {
            start,
            end,
            keeps,
            rows,
        })
    }

    /// The runtime address range covered, `[lo, hi)`.
    pub fn range(&self) -> crate::memory::Range {
        crate::memory::Range::new(
            self.base.wrapping_add(self.bias),
            self.end.wrapping_add(self.bias),
        )
    }

    /// The rule for runtime address `pc` (exact, already adjusted for return addresses), as
    /// the prepared table gives it: `None` outside the range, a `GAP` row between FDEs.
    pub fn rule(&self, pc: u64) -> Option<CfiRow> {
        let a = pc.wrapping_sub(self.bias);
        if a < self.base || a >= self.end {
            return None;
        }
        // The threads of a process share most of their pcs.
        let slot = &self.rules[(a ^ a >> 6) as usize % KEEPS_CACHE];
        match slot.get() {
            (b, rule) if b == a => rule,
            _ => {
                let rule = self.rule_at(a);
                slot.set((a, rule));
                rule
            }
        }
    }

    /// [`LazyCfi::rule`] for link-time address `a`, inside the table's range.
    fn rule_at(&self, a: u64) -> Option<CfiRow> {
        if let Some(r) = self.plt_rule(a) {
            return Some(r);
        }
        let Some(i) = self.find(a) else {
            return Some(CfiRow::GAP_RULE);
        };
        // A failed FDE: as a module whose CFI failed, no table at all.
        self.with_fde(i, |e| {
            if a >= e.end {
                return CfiRow::GAP_RULE;
            }
            let k = e.rows.partition_point(|r| r.start <= a);
            match k.checked_sub(1).map(|k| &e.rows[k]) {
                Some(r) if a < r.end => r.rule,
                _ => CfiRow::GAP_RULE,
            }
        })
    }

    /// Does the function at runtime address `pc` keep a frame record at its call sites (by
    /// 16-byte granule, as the prepared table's bitmap)? True where there is no CFI.
    pub fn keeps_frame_record(&self, pc: u64) -> bool {
        let a = pc.wrapping_sub(self.bias);
        if a < self.base || a >= self.end {
            return true;
        }
        let g0 = self.base + ((a - self.base) >> RECORD_SHIFT << RECORD_SHIFT);
        let slot = &self.keeps[(g0 >> RECORD_SHIFT) as usize % KEEPS_CACHE];
        match slot.get() {
            (g, keeps) if g == g0 => keeps,
            _ => {
                let keeps = self.granule_keeps_frame_record(g0);
                slot.set((g0, keeps));
                keeps
            }
        }
    }

    /// [`LazyCfi::keeps_frame_record`] for the granule at link-time address `g0`.
    fn granule_keeps_frame_record(&self, g0: u64) -> bool {
        let g1 = g0.saturating_add(1 << RECORD_SHIFT);
        // A PLT's rows keep no frame record (as its FDE range in the prepared table).
        let k = self.plt.partition_point(|r| r.start < g1);
        if self.plt[..k].iter().rev().take(2).any(|r| r.end > g0) {
            return false;
        }
        let Some(i) = self.find(g1 - 1) else {
            return true;
        };
        // FDEs do not overlap in real modules: the one starting last in the granule and the
        // few before it are all that can reach into it (as the prepared table's cgo merge).
        for j in (i.saturating_sub(3)..=i).rev() {
            let clears = self.with_fde(j, |e| {
                !e.keeps && e.end > e.start && e.end > g0 && e.start < g1
            });
            if clears == Some(true) {
                return false;
            }
        }
        true
    }

    /// The first FDE that failed to evaluate, if any did.
    pub fn error(&self) -> Option<CfiError> {
        self.state.borrow().error
    }

    /// FDEs in the table.
    pub fn fdes(&self) -> usize {
        self.count
    }
}

/// One module's CFI for a one-shot walk: evaluated on demand when its `.eh_frame_hdr` allows,
/// else prepared.
#[derive(Debug)]
// One per module of a walk: the lazy variant's size is no cost worth a box.
#[allow(clippy::large_enum_variant)]
pub enum ModuleCfi<'d> {
    /// Prepared up front (no usable `.eh_frame_hdr`, or a `.debug_frame`).
    Prepared(PreparedCfi),
    /// Evaluated FDE by FDE.
    Lazy(LazyCfi<'d>),
}

impl ModuleCfi<'_> {
    /// The runtime address range covered.
    pub fn range(&self) -> crate::memory::Range {
        match self {
            ModuleCfi::Prepared(t) => t.range(),
            ModuleCfi::Lazy(t) => t.range(),
        }
    }

    /// The rule for lookup address `pc`.
    pub fn rule(&self, pc: u64) -> Option<CfiRow> {
        match self {
            ModuleCfi::Prepared(t) => t.rule(pc),
            ModuleCfi::Lazy(t) => t.rule(pc),
        }
    }

    /// See [`PreparedCfi::keeps_frame_record`].
    pub fn keeps_frame_record(&self, pc: u64) -> bool {
        match self {
            ModuleCfi::Prepared(t) => t.keeps_frame_record(pc),
            ModuleCfi::Lazy(t) => t.keeps_frame_record(pc),
        }
    }

    /// The module's name.
    pub fn name(&self) -> &str {
        match self {
            ModuleCfi::Prepared(t) => &t.name,
            ModuleCfi::Lazy(t) => &t.name,
        }
    }

    /// Does it cover nothing (a prepared table without rows)?
    pub fn is_empty(&self) -> bool {
        match self {
            ModuleCfi::Prepared(t) => t.is_empty(),
            ModuleCfi::Lazy(_) => false,
        }
    }
}

/// Reads a module's CFI sections from an ELF file's bytes: lazily ([`LazyCfi`]) when it has an
/// `.eh_frame_hdr` with the usual encoding (GNU ld, gold, lld and mold's) and no `.debug_frame`,
/// else prepared as [`parse_elf`] does (Go and cgo binaries, whose `.debug_frame` fills what
/// `.eh_frame` does not cover).
pub fn parse_elf_lazy<'d>(
    arch: ArchKind,
    data: &'d [u8],
    bias: u64,
    name: &str,
) -> Result<ModuleCfi<'d>, CfiError> {
    use object::ObjectSection;
    let file = object::File::parse(data).map_err(|_| CfiError::Object)?;
    // Go binaries (`.debug_frame`, or `.gopclntab` to make one from) are prepared.
    if section_by_name(&file, ".debug_frame").is_none() && !crate::cfi::gopclntab::is_go(&file) {
        let sec =
            |n: &str| section_by_name(&file, n).and_then(|s| Some((s.data().ok()?, s.address())));
        let sections = Sections {
            eh_frame: sec(".eh_frame").filter(|(d, _)| !d.is_empty()),
            eh_frame_hdr: sec(".eh_frame_hdr").filter(|(d, _)| !d.is_empty()),
            debug_frame: None,
            text: sec(".text").map_or(0, |(_, a)| a),
            got: sec(".got").map_or(0, |(_, a)| a),
        };
        if let Some(t) = LazyCfi::new(arch, &sections, bias, name) {
            let plts = plt_sections(&file);
            return Ok(ModuleCfi::Lazy(t.with_plts(arch, &plts)));
        }
    }
    parse_elf(arch, data, bias, name).map(ModuleCfi::Prepared)
}

/// Many modules' CFI, lazy or prepared, sorted by address: a [`Cfi`] (through `&`) for
/// one-shot walks. Not for signal handlers (a lookup may evaluate and allocate).
#[derive(Debug, Default)]
pub struct OfflineCfi<'d> {
    modules: Vec<ModuleCfi<'d>>,
    ranges: Vec<(u64, u64)>,
}

impl<'d> OfflineCfi<'d> {
    /// No modules.
    pub fn new() -> Self {
        OfflineCfi {
            modules: Vec::new(),
            ranges: Vec::new(),
        }
    }

    /// Adds a module (kept sorted; empty tables are dropped).
    pub fn add(&mut self, m: ModuleCfi<'d>) {
        if m.is_empty() {
            return;
        }
        let r = m.range();
        let i = self.ranges.partition_point(|&(lo, _)| lo < r.lo);
        self.ranges.insert(i, (r.lo, r.hi));
        self.modules.insert(i, m);
    }

    /// The modules.
    pub fn modules(&self) -> &[ModuleCfi<'d>] {
        &self.modules
    }

    /// The module covering runtime address `pc`.
    pub fn module(&self, pc: u64) -> Option<&ModuleCfi<'d>> {
        let i = self.ranges.partition_point(|&(lo, _)| lo <= pc);
        let (_, hi) = *self.ranges.get(i.checked_sub(1)?)?;
        if pc < hi {
            self.modules.get(i - 1)
        } else {
            None
        }
    }

    /// The rule for `pc` (a lookup address: exact pc, or return address - 1).
    pub fn rule(&self, pc: u64) -> Option<CfiRow> {
        self.module(pc)?.rule(pc)
    }

    /// Lazy modules some FDE of which failed to evaluate: (name, first error).
    pub fn failures(&self) -> Vec<(String, CfiError)> {
        self.modules
            .iter()
            .filter_map(|m| match m {
                ModuleCfi::Lazy(t) => Some((t.name.clone(), t.error()?)),
                ModuleCfi::Prepared(_) => None,
            })
            .collect()
    }
}

impl Cfi for &OfflineCfi<'_> {
    #[inline]
    fn step<A: Arch, M: Memory>(&mut self, regs: &Regs, exact: bool, mem: &mut M) -> CfiStep {
        let lookup = FrameAddress::new(regs.pc, exact).lookup_address();
        match self.rule(lookup) {
            Some(r) => r.apply(regs, exact, mem),
            None => CfiStep::NoInfo,
        }
    }

    #[inline]
    fn keeps_frame_record(&mut self, ra: u64) -> bool {
        let pc = ra.wrapping_sub(1);
        match self.module(pc) {
            Some(m) => m.keeps_frame_record(pc),
            None => true,
        }
    }

    fn lacks_cfi(&mut self, ra: u64) -> bool {
        // No module's table, or a gap in one (between FDEs, a failed FDE).
        self.rule(ra.wrapping_sub(1))
            .is_none_or(|r| r == CfiRow::GAP_RULE)
    }
}

#[cfg(test)]
mod tests;

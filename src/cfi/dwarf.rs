//! DWARF call-frame information, prepared ahead of time for signal handlers.
//!
//! # Why a prepared table, not gimli at unwind time
//! gimli evaluates an FDE's instructions into an `UnwindContext` on demand. That is bounded and
//! can run without allocating (with array storage), but each step then re-parses the CIE and the
//! FDE's instructions: hundreds of nanoseconds per frame, and the `.eh_frame_hdr` search reads the
//! module's mapped sections, which a core's modules do not even have in memory. Instead,
//! [`PreparedCfi::parse`] runs gimli once per module, outside any signal handler, over every FDE,
//! and keeps only what the walker can use: for each row, the CFA as `sp + k` or `fp + k`, where
//! the return address and the caller's frame pointer are (`[CFA + k]`, in `lr`, undefined).
//! A step is then one page-index lookup and a short binary search in two flat arrays: no
//! allocation, no lock, no parsing, and it works the same live and offline.
//!
//! # Format
//! Per module, rows sorted by address: `starts: Vec<u32>` (offsets from the module's lowest
//! CFI address) and `rules: Vec<CfiRow>` (12 bytes each); row `i` covers
//! `[starts[i], starts[i + 1])`. Gaps between FDEs are rows with the `GAP` flag. A page index
//! (`pages[p]` = first row that may cover 128-byte granule `p`) bounds every binary search to
//! the few rows of one granule. Rows that need a DWARF expression, or a CFA in any register but sp and fp, are
//! kept with the `UNSUPPORTED` flag: [`Mode::Dwarf`] stops there,
//! [`Mode::Hybrid`] falls back to the frame record. FDEs of signal
//! trampolines (CIE augmentation `S`) have their rows flagged `SIGNAL`: the caller's pc is exact.
//!
//! # Hybrid
//! A bitmap per module says, per 16-byte granule, whether every function in it keeps a frame record (its
//! CFI has a row `CFA = fp + k, fp at CFA - k, ra at CFA - k + 8`). In hybrid mode the walker
//! follows frame records while return addresses land on such pages and asks the CFI elsewhere
//! (and always for an interrupted, exact pc: it may be in a prologue).
//!
//! # Bounds on bad input
//! Every section is read through gimli's bounds-checked readers. At most [`MAX_FDES`] FDEs,
//! [`MAX_ROWS_PER_FDE`] rows per FDE and [`MAX_ROWS`] rows per module are evaluated; more is an
//! error, not a truncated table. An `.eh_frame_hdr` whose FDE count cannot fit its section is
//! rejected. A module whose CFI spans more than [`MAX_SPAN`] (1 GiB) is rejected.

use crate::arch::{Arch, ArchKind, Regs};
use crate::cfi::section_names::section_by_name;
use crate::frame::{Frame, FrameAddress, Trace};
use crate::memory::Memory;
use crate::walk::{Cfi, CfiStep, Mode, PlainRule, Start, Walker};
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EhFrameHdr, EndianSlice, LittleEndian,
    Register, RegisterRule, UnwindContext, UnwindSection,
};
use std::sync::Arc;

/// Most FDEs evaluated per module.
pub const MAX_FDES: usize = 1 << 21;
/// Most rows one FDE may produce.
pub const MAX_ROWS_PER_FDE: usize = 1 << 16;
/// Most rows per module.
pub const MAX_ROWS: usize = 1 << 23;
/// Granule of the lookup index (128 bytes: a few rows each, so the binary search after the
/// index is one or two steps; the index costs 4 bytes per 128 bytes of code).
const PAGE_SHIFT: u32 = 7;
/// Granule of the hybrid bitmap: 16 bytes, the usual function alignment, so a function
/// without a frame record rarely shares a granule with one that has it (1 bit per 16 bytes of
/// code).
const RECORD_SHIFT: u32 = crate::walk::RecordMap::SHIFT;

/// Why a module's CFI could not be prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CfiError {
    /// The module has no `.eh_frame` and no `.debug_frame`.
    NoCfi,
    /// gimli could not parse the section (truncated, bad encoding, bad CIE pointer).
    Parse(gimli::Error),
    /// The `.eh_frame_hdr` is malformed (its FDE count does not fit the section, bad version).
    BadHeader,
    /// More than [`MAX_FDES`] FDEs.
    TooManyFdes,
    /// An FDE with more than [`MAX_ROWS_PER_FDE`] rows, or more than [`MAX_ROWS`] in total.
    TooManyRows,
    /// The CFI covers more than [`MAX_SPAN`], or an FDE's range overflows.
    BadRange,
    /// The object file could not be read or parsed.
    Object,
    /// The architecture is not supported.
    Arch,
    /// A compressed section (`SHF_COMPRESSED`) does not inflate, or claims more than
    /// [`section_bytes`] accepts.
    Decompress,
}

/// Largest address span one module's CFI may cover (1 GiB; the largest real executables' text
/// is a few hundred MB).
pub const MAX_SPAN: u64 = 1 << 30;

/// Largest inflated section accepted (256 MiB).
pub const MAX_INFLATED: u64 = 256 << 20;

/// The largest ratio of inflated to compressed size accepted: zlib's own limit is about 1032:1,
/// and real DWARF compresses 3-10:1; a zstd frame of a few bytes can claim gigabytes (RLE
/// blocks), which a fuzzer found as a timeout.
pub const MAX_INFLATE_RATIO: u64 = 1100;

/// A section's bytes, inflated when it is compressed (`SHF_COMPRESSED`, zlib or zstd, as Go and
/// `-gz` builds write DWARF). `None` when it does not inflate, or would inflate to more than
/// [`MAX_INFLATED`] bytes or [`MAX_INFLATE_RATIO`] times its compressed size: a hostile header
/// may claim any size.
pub fn section_bytes<'d>(s: &impl object::ObjectSection<'d>) -> Option<std::borrow::Cow<'d, [u8]>> {
    let c = s.compressed_data().ok()?;
    if !inflates_within_limits(&c) {
        return None;
    }
    c.decompress().ok()
}

/// Does a section's compressed data (if compressed) claim no more than [`MAX_INFLATED`] bytes
/// and [`MAX_INFLATE_RATIO`] times its compressed size (at least 64 KiB)?
pub fn inflates_within_limits(c: &object::CompressedData<'_>) -> bool {
    let limit = (c.data.len() as u64)
        .saturating_mul(MAX_INFLATE_RATIO)
        .clamp(64 << 10, MAX_INFLATED);
    c.format == object::CompressionFormat::None || c.uncompressed_size <= limit
}

impl core::fmt::Display for CfiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CfiError::NoCfi => f.write_str("no .eh_frame or .debug_frame"),
            CfiError::Parse(e) => write!(f, "malformed call-frame information: {e}"),
            CfiError::BadHeader => f.write_str("malformed .eh_frame_hdr"),
            CfiError::TooManyFdes => write!(f, "more than {MAX_FDES} FDEs"),
            CfiError::TooManyRows => f.write_str("too many CFI rows"),
            CfiError::BadRange => f.write_str("CFI address ranges overflow or exceed 1 GiB"),
            CfiError::Object => f.write_str("cannot read the object file"),
            CfiError::Arch => f.write_str("unsupported architecture"),
            CfiError::Decompress => f.write_str("a compressed CFI section does not inflate"),
        }
    }
}

impl std::error::Error for CfiError {}

impl From<gimli::Error> for CfiError {
    fn from(e: gimli::Error) -> Self {
        CfiError::Parse(e)
    }
}

/// How to find the CFA.
const CFA_SP: u8 = 0;
const CFA_FP: u8 = 1;
/// From x86_64's `r11`, known at an interrupted pc only ([`Regs::lr`]): LLVM's inline stack
/// probes move `rsp` a page at a time towards `r11`, the frame's final `rsp`, and base the CFA
/// on `r11` meanwhile.
const CFA_SCRATCH: u8 = 2;
/// Where the return address is.
const RA_AT: u8 = 0;
const RA_LR: u8 = 1;
const RA_UNDEF: u8 = 2;
/// Where the caller's frame pointer is.
const FP_SAME: u8 = 0;
const FP_AT: u8 = 1;
const FP_VAL: u8 = 2;
const FP_UNDEF: u8 = 3;

/// One prepared CFI row: a small `Copy` rule the walker applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct CfiRow {
    cfa_off: i32,
    ra_off: i16,
    fp_off: i16,
    cfa: u8,
    ra: u8,
    fp: u8,
    flags: u8,
}

impl CfiRow {
    /// No CFI covers this row.
    pub const GAP: u8 = 1;
    /// The row needs something the table cannot express (a DWARF expression, a CFA in
    /// another register).
    pub const UNSUPPORTED: u8 = 2;
    /// The row belongs to a signal trampoline's FDE (augmentation `S`).
    pub const SIGNAL: u8 = 4;
    /// The row is the frame-record rule (`CFA = fp + k`, fp at `CFA - k`, ra at `CFA - k + 8`).
    pub const FRAME_RECORD: u8 = 8;
    /// The return address and the caller's fp are both saved, side by side (fp at `CFA + k`,
    /// ra at `CFA + k + 8`): the step reads both at once. Computed when the row is
    /// built, so the per-frame test is one bit.
    pub const PAIR: u8 = 16;

    const GAP_RULE: CfiRow = CfiRow {
        cfa_off: 0,
        ra_off: 0,
        fp_off: 0,
        cfa: 0,
        ra: 0,
        fp: 0,
        flags: CfiRow::GAP,
    };

    /// The flags (`GAP`, `UNSUPPORTED`, `SIGNAL`, `FRAME_RECORD`, `PAIR`).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// The row as a [`PlainRule`]'s `kind` when it is one (0 when not): CFA from sp or fp, the
    /// return address saved, the caller's fp saved or unchanged, not a signal frame's. For a
    /// non-exact pc, [`CfiRow::apply`] of such a row and the walker's plain-rule loop read the
    /// same words and give the same caller.
    fn plain_kind(&self) -> u8 {
        if self.flags & (CfiRow::GAP | CfiRow::UNSUPPORTED | CfiRow::SIGNAL) != 0
            || self.ra != RA_AT
        {
            return 0;
        }
        let cfa = match self.cfa {
            CFA_FP => PlainRule::CFA_FP,
            CFA_SP => 0,
            _ => return 0,
        };
        let fp = match self.fp {
            FP_SAME => 0,
            // A pair below the CFA; from sp, also at or above sp (every real frame's is).
            FP_AT
                if self.flags & CfiRow::PAIR != 0
                    && self.fp_off <= -16
                    && (self.cfa == CFA_FP || self.cfa_off + self.fp_off as i32 >= 0) =>
            {
                PlainRule::FP_SAVED | PlainRule::PAIR
            }
            FP_AT => PlainRule::FP_SAVED,
            _ => return 0,
        };
        PlainRule::PLAIN | cfa | fp
    }

    /// Applies the rule to `regs`: the caller's registers, or why not.
    #[inline(always)]
    fn apply<M: Memory>(&self, regs: &Regs, exact: bool, mem: &mut M) -> CfiStep {
        if self.flags & (CfiRow::GAP | CfiRow::UNSUPPORTED) != 0 {
            return if self.flags & CfiRow::GAP != 0 {
                CfiStep::NoInfo
            } else {
                CfiStep::Failed
            };
        }
        let base = match self.cfa {
            CFA_SP => regs.sp,
            CFA_FP => regs.fp,
            // A caller's r11 is not known (it is no callee-saved register).
            _ if exact => regs.lr,
            _ => 0,
        };
        if base == 0 {
            // The outermost frame (an undefined return address) needs no CFA: a walk that
            // reached it by a frame record may not know sp (aarch64's records are not at the
            // CFA), as at glibc's `thread_start`, the root of every aarch64 thread.
            if self.ra == RA_UNDEF && self.flags & CfiRow::PAIR == 0 {
                return CfiStep::Caller(Regs::default());
            }
            return CfiStep::Failed;
        }
        let Some(cfa) = base.checked_add_signed(self.cfa_off as i64) else {
            return CfiStep::Failed;
        };
        // The common case: fp and return address saved side by side (a frame record or a
        // `push rbp` right below the return address): one checked read of both.
        if self.flags & CfiRow::PAIR != 0 {
            let Some((fp, pc)) = cfa
                .checked_add_signed(self.fp_off as i64)
                .and_then(|a| mem.read_pair(a))
            else {
                return CfiStep::Failed;
            };
            let caller = Regs {
                pc,
                sp: cfa,
                fp,
                lr: 0,
            };
            return if self.flags & CfiRow::SIGNAL != 0 {
                CfiStep::Signal(caller)
            } else {
                CfiStep::Caller(caller)
            };
        }
        let pc = match self.ra {
            RA_AT => match cfa
                .checked_add_signed(self.ra_off as i64)
                .and_then(|a| mem.read_u64(a))
            {
                Some(v) => v,
                None => return CfiStep::Failed,
            },
            RA_LR if exact && regs.lr != 0 => regs.lr,
            RA_LR if !exact => return CfiStep::ReturnAddressLost,
            RA_LR => return CfiStep::Failed,
            _ => 0, // undefined: the outermost frame
        };
        let fp = match self.fp {
            FP_SAME => regs.fp,
            FP_AT => match cfa
                .checked_add_signed(self.fp_off as i64)
                .and_then(|a| mem.read_u64(a))
            {
                Some(v) => v,
                None => return CfiStep::Failed,
            },
            FP_VAL => cfa.wrapping_add_signed(self.fp_off as i64),
            _ => 0,
        };
        let caller = Regs {
            pc,
            sp: cfa,
            fp,
            lr: 0,
        };
        if self.flags & CfiRow::SIGNAL != 0 {
            CfiStep::Signal(caller)
        } else {
            CfiStep::Caller(caller)
        }
    }
}

/// DWARF register numbers of the registers a rule may mention.
#[derive(Clone, Copy)]
struct RegNums {
    sp: Register,
    fp: Register,
    ra: Register,
    lr_is_ra: bool,
    /// A register the CFA may be based on at an interrupted pc only (x86_64's `r11`).
    cfa_scratch: Option<Register>,
}

fn regnums(arch: ArchKind) -> RegNums {
    match arch {
        ArchKind::X86_64 => RegNums {
            sp: gimli::X86_64::RSP,
            fp: gimli::X86_64::RBP,
            ra: gimli::X86_64::RA,
            lr_is_ra: false,
            cfa_scratch: Some(gimli::X86_64::R11),
        },
        ArchKind::Aarch64 => RegNums {
            sp: gimli::AArch64::SP,
            fp: gimli::AArch64::X29,
            ra: gimli::AArch64::X30,
            lr_is_ra: true,
            cfa_scratch: None,
        },
    }
}

/// gimli's vendor for `arch`'s CFI: on aarch64, `DW_CFA_AARCH64_negate_ra_state` (0x2d, in
/// every function built with `-mbranch-protection=pac-ret` or `standard`, as Ubuntu and Fedora
/// build arm64) is an instruction gimli reads only for [`gimli::Vendor::AArch64`]; for any
/// other vendor such an FDE does not parse. (The return addresses it marks as signed are
/// stripped of their PAC bits by the walk.)
pub(crate) fn vendor(arch: ArchKind) -> gimli::Vendor {
    match arch {
        ArchKind::Aarch64 => gimli::Vendor::AArch64,
        ArchKind::X86_64 => gimli::Vendor::Default,
    }
}

/// Where a module's CFI sections are, as slices with their link-time (SVMA) addresses.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sections<'a> {
    /// `.eh_frame` and its address.
    pub eh_frame: Option<(&'a [u8], u64)>,
    /// `.eh_frame_hdr` and its address.
    pub eh_frame_hdr: Option<(&'a [u8], u64)>,
    /// `.debug_frame` (used when there is no `.eh_frame`, as in Go binaries).
    pub debug_frame: Option<&'a [u8]>,
    /// `.text`'s address (for `DW_EH_PE_textrel`; 0 if unknown).
    pub text: u64,
    /// `.got`'s address (for `DW_EH_PE_datarel` in `.eh_frame`; 0 if unknown).
    pub got: u64,
}

/// One module's CFI, prepared: see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct PreparedCfi {
    /// Load bias: runtime address = link-time address + bias.
    pub bias: u64,
    /// Lowest link-time address covered.
    base: u64,
    /// One past the highest.
    end: u64,
    // The tables are shared, not copied, by clones (`Arc<[_]>`: indexing costs what a `Vec`'s
    // does): a live refresh reuses a module's tables when the module is still loaded.
    starts: Arc<[u32]>,
    rules: Arc<[CfiRow]>,
    /// `pages[p]`: index of the last row starting at or before page `p`'s start.
    pages: Arc<[u32]>,
    /// Bit set: every FDE on that page keeps a frame record (or there is no FDE there).
    record_pages: Arc<[u64]>,
    /// A name for messages (the module's path).
    pub name: String,
}

struct Raw {
    start: u64,
    end: u64,
    rule: CfiRow,
}

impl PreparedCfi {
    /// Evaluates every FDE of a module's CFI. `bias` is added to every address at lookup.
    /// `.eh_frame` is used when present (`.eh_frame_hdr` only to check it), else `.debug_frame`.
    pub fn parse(
        arch: ArchKind,
        sections: &Sections<'_>,
        bias: u64,
        name: &str,
    ) -> Result<PreparedCfi, CfiError> {
        Self::parse_with_plts(arch, sections, &[], bias, name)
    }

    /// [`PreparedCfi::parse`], plus rules for the x86_64 PLT sections in `plts` (`(address,
    /// bytes)`) that no FDE covers (see [`plt_rows`]).
    fn parse_with_plts(
        arch: ArchKind,
        sections: &Sections<'_>,
        plts: &[(u64, &[u8])],
        bias: u64,
        name: &str,
    ) -> Result<PreparedCfi, CfiError> {
        let regs = regnums(arch);
        let mut raw = Vec::new();
        let mut fdes = Vec::new();
        if let Some((data, addr)) = sections.eh_frame {
            let mut bases = BaseAddresses::default()
                .set_eh_frame(addr)
                .set_text(sections.text)
                .set_got(sections.got);
            if let Some((hdr, hdr_addr)) = sections.eh_frame_hdr {
                bases = bases.set_eh_frame_hdr(hdr_addr);
                check_hdr(hdr, &bases)?;
            }
            let mut s = EhFrame::new(data, LittleEndian);
            s.set_address_size(8);
            s.set_vendor(vendor(arch));
            collect(&s, &bases, regs, &mut raw, &mut fdes)?;
            // A cgo binary: `.eh_frame` comes from the C objects, Go's own functions are
            // only in `.debug_frame`. Add the FDEs `.eh_frame` does not cover.
            if let Some(data) = sections.debug_frame {
                let mut s = DebugFrame::new(data, LittleEndian);
                s.set_address_size(8);
                s.set_vendor(vendor(arch));
                let (mut more, mut more_fdes) = (Vec::new(), Vec::new());
                collect(
                    &s,
                    &BaseAddresses::default(),
                    regs,
                    &mut more,
                    &mut more_fdes,
                )?;
                let mut eh: Vec<(u64, u64)> = fdes.iter().map(|&(s, e, _)| (s, e)).collect();
                eh.sort_unstable();
                let covered = |lo: u64, hi: u64| {
                    // The last eh_frame FDE starting before `hi` is the only one that can
                    // overlap [lo, hi) if FDEs do not overlap each other; check a few back.
                    let i = eh.partition_point(|&(s, _)| s < hi);
                    eh[..i].iter().rev().take(4).any(|&(_, e)| e > lo)
                };
                more_fdes.retain(|&(s, e, _)| !covered(s, e));
                more.retain(|r| !covered(r.start, r.end));
                if raw.len() + more.len() > MAX_ROWS {
                    return Err(CfiError::TooManyRows);
                }
                raw.extend(more);
                fdes.extend(more_fdes);
            }
        } else if let Some(data) = sections.debug_frame {
            let mut s = DebugFrame::new(data, LittleEndian);
            s.set_address_size(8);
            s.set_vendor(vendor(arch));
            collect(&s, &BaseAddresses::default(), regs, &mut raw, &mut fdes)?;
        } else {
            return Err(CfiError::NoCfi);
        }
        if arch == ArchKind::X86_64 {
            for &(addr, bytes) in plts {
                let end = addr.saturating_add(bytes.len() as u64);
                if bytes.is_empty() || fdes.iter().any(|&(s, e, _)| s < end && e > addr) {
                    continue;
                }
                let rows = plt_rows(addr, bytes);
                if raw.len() + rows.len() > MAX_ROWS {
                    return Err(CfiError::TooManyRows);
                }
                if let (Some(lo), Some(hi)) = (rows.first(), rows.last()) {
                    fdes.push((lo.start, hi.end, false));
                }
                raw.extend(rows);
            }
        }
        let mut t = build(raw, &fdes)?;
        // At its load address the table must not wrap around the address space (a hostile
        // bias or FDE near u64::MAX): its range would not contain its own rows.
        if !t.is_empty()
            && (t.base.checked_add(bias).is_none() || t.end.checked_add(bias).is_none())
        {
            return Err(CfiError::BadRange);
        }
        t.bias = bias;
        t.name = name.to_string();
        Ok(t)
    }

    /// A Go binary's CFI made from its `.gopclntab` (Go 1.18 and later, 64-bit), for a binary
    /// without `.debug_frame` (stripped: `-ldflags=-s -w`): per function, the rules Go's linker
    /// writes into `.debug_frame` from the same `pcsp` tables ([`parse_elf`] does this by
    /// itself). `tab` is the section's bytes; `text` the link-time address function entries are
    /// relative to when the table's own `textStart` is 0 (a position-independent binary: its
    /// `.text` address). [`CfiError::NoCfi`] when the table is not one this reads or gives no
    /// function; every read is bounds-checked.
    pub fn from_gopclntab(
        arch: ArchKind,
        tab: &[u8],
        text: u64,
        bias: u64,
        name: &str,
    ) -> Result<PreparedCfi, CfiError> {
        let mut t = super::gopclntab::Table::parse(tab).ok_or(CfiError::NoCfi)?;
        if t.text == 0 {
            t.text = text;
        }
        let df = super::gopclntab::debug_frame(&t, arch).ok_or(CfiError::NoCfi)?;
        let sections = Sections {
            debug_frame: Some(&df),
            ..Sections::default()
        };
        PreparedCfi::parse(arch, &sections, bias, name)
    }

    /// The runtime address range covered, `[lo, hi)`.
    pub fn range(&self) -> crate::memory::Range {
        crate::memory::Range::new(
            self.base.wrapping_add(self.bias),
            self.end.wrapping_add(self.bias),
        )
    }

    /// Number of rows (including gaps).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Is the table empty?
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule for runtime address `pc` (exact, already adjusted for return addresses).
    #[inline(always)]
    pub fn rule(&self, pc: u64) -> Option<CfiRow> {
        let off = pc.wrapping_sub(self.bias).wrapping_sub(self.base);
        if off >= self.end - self.base {
            return None;
        }
        let off32 = off as u32;
        let page = (off >> PAGE_SHIFT) as usize;
        let lo = *self.pages.get(page)? as usize;
        let hi = match self.pages.get(page + 1) {
            Some(&h) => h as usize + 1,
            None => self.starts.len(),
        };
        let rows = self.starts.get(lo..hi)?;
        // Last row starting at or before off.
        let i = rows.partition_point(|&s| s <= off32);
        if i == 0 {
            return None;
        }
        self.rules.get(lo + i - 1).copied()
    }

    /// Does the function at runtime address `pc` keep a frame record at its call sites (by
    /// page: see the module docs)? True where there is no CFI.
    #[inline(always)]
    pub fn keeps_frame_record(&self, pc: u64) -> bool {
        let off = pc.wrapping_sub(self.bias).wrapping_sub(self.base);
        if off >= self.end - self.base {
            return true;
        }
        let page = (off >> RECORD_SHIFT) as usize;
        match self.record_pages.get(page / 64) {
            Some(w) => w & (1 << (page % 64)) != 0,
            None => true,
        }
    }
}

/// Rejects an `.eh_frame_hdr` whose FDE count cannot fit in it.
fn check_hdr(hdr: &[u8], bases: &BaseAddresses) -> Result<(), CfiError> {
    let parsed = EhFrameHdr::new(hdr, LittleEndian)
        .parse(bases, 8)
        .map_err(|_| CfiError::BadHeader)?;
    // The common encoding: eh_frame_ptr pcrel|sdata4, fde_count udata4, table datarel|sdata4
    // (8 bytes per entry) after a 12-byte header.
    if hdr.len() >= 12 && hdr[1] == 0x1b && hdr[2] == 0x03 && hdr[3] == 0x3b {
        let count = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as u64;
        if count > (hdr.len() as u64 - 12) / 8 {
            return Err(CfiError::BadHeader);
        }
        if count as usize > MAX_FDES {
            return Err(CfiError::TooManyFdes);
        }
    }
    let _ = parsed.eh_frame_ptr();
    Ok(())
}

/// Evaluates every FDE of `section` into raw rows; `fdes` gets (start, end, keeps a record).
fn collect<'a, S: UnwindSection<EndianSlice<'a, LittleEndian>>>(
    section: &S,
    bases: &BaseAddresses,
    regs: RegNums,
    raw: &mut Vec<Raw>,
    fdes: &mut Vec<(u64, u64, bool)>,
) -> Result<(), CfiError> {
    let mut ctx: Box<UnwindContext<usize>> = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    let mut n = 0usize;
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        n += 1;
        if n > MAX_FDES {
            return Err(CfiError::TooManyFdes);
        }
        let fde = partial.parse(S::cie_from_offset)?;
        let start = fde.initial_address();
        let end = start.checked_add(fde.len()).ok_or(CfiError::BadRange)?;
        if fde.len() == 0 {
            continue;
        }
        let keeps_record = eval_fde(section, bases, regs, &mut ctx, &fde, MAX_ROWS, raw)?;
        fdes.push((start, end, keeps_record));
    }
    Ok(())
}

/// Evaluates one FDE (covering `[fde.initial_address(), + len)`, len > 0) into `raw`: its
/// rows, clipped to the FDE, flagged `SIGNAL` for a signal trampoline. Whether a row keeps a
/// frame record is returned. At most [`MAX_ROWS_PER_FDE`] rows, and `raw` never grows past
/// `limit`: more is [`CfiError::TooManyRows`].
fn eval_fde<'a, S: UnwindSection<EndianSlice<'a, LittleEndian>>>(
    section: &S,
    bases: &BaseAddresses,
    regs: RegNums,
    ctx: &mut UnwindContext<usize>,
    fde: &gimli::FrameDescriptionEntry<EndianSlice<'a, LittleEndian>>,
    limit: usize,
    raw: &mut Vec<Raw>,
) -> Result<bool, CfiError> {
    let start = fde.initial_address();
    let end = start.checked_add(fde.len()).ok_or(CfiError::BadRange)?;
    let signal = fde.is_signal_trampoline();
    let mut table = fde.rows(section, bases, ctx)?;
    let mut rows = 0usize;
    let mut keeps_record = false;
    while let Some(row) = table.next_row()? {
        rows += 1;
        if rows > MAX_ROWS_PER_FDE || raw.len() >= limit {
            return Err(CfiError::TooManyRows);
        }
        let rs = row.start_address().max(start);
        let re = row.end_address().min(end);
        if rs >= re {
            continue;
        }
        // The x86_64 PLT's expression: one rule per part of each 16-byte entry.
        if let Some((k, t)) = plt_cfa(section, row, regs) {
            let pieces = (re - rs) / 16 * 2 + 4;
            if pieces <= MAX_ROWS_PER_FDE as u64 && raw.len() as u64 + pieces <= limit as u64 {
                let mut a = rs & !15;
                while a < re {
                    let (mid, next) = (a.saturating_add(t), a.saturating_add(16));
                    for (lo, hi, off) in [(a, mid, k), (mid, next, k + 8)] {
                        let (lo, hi) = (lo.max(rs), hi.min(re));
                        if lo < hi {
                            let rule = convert(row, regs, Some((CFA_SP, off)));
                            raw.push(Raw {
                                start: lo,
                                end: hi,
                                rule,
                            });
                        }
                    }
                    a = next;
                }
                continue;
            }
        }
        let mut rule = convert(row, regs, None);
        if signal {
            rule.flags |= CfiRow::SIGNAL;
        }
        keeps_record |= rule.flags & CfiRow::FRAME_RECORD != 0;
        raw.push(Raw {
            start: rs,
            end: re,
            rule,
        });
    }
    Ok(keeps_record)
}

/// Rules for an x86_64 PLT section at `addr` that no FDE describes (LLVM's lld, rustc's
/// default linker now, writes none for its `.plt`; GNU ld does): without them a walk from a pc
/// in a stub, which keeps no frame record, guessed by the frame pointer and skipped the
/// stub's caller, saying `End` (found by outside use in the twenty-sixth round: `__cxa_throw@plt`
/// over `cxx_thrower`'s caller, and in CPU profiles `longjmp@plt` one frame short). Each
/// 16-byte entry is recognised by its bytes: the lazy header (`push GOT+8; jmp *GOT+16`: CFA
/// `rsp + 8`, `rsp + 16` after the push), a lazy entry (`jmp *GOT; push $i; jmp .plt`: `rsp +
/// 8`, `rsp + 16` from the push's end, 11), a non-lazy one (`jmp *GOT`, with or without
/// `endbr64` and `bnd`: `rsp + 8` throughout). The return address is at `CFA - 8`. An entry of
/// any other shape gets no rule.
fn plt_rows(addr: u64, bytes: &[u8]) -> Vec<Raw> {
    let rule = |cfa_off: i32| CfiRow {
        cfa_off,
        ra_off: -8,
        fp_off: 0,
        cfa: CFA_SP,
        ra: RA_AT,
        fp: FP_SAME,
        flags: 0,
    };
    let mut out = Vec::new();
    let mut push = |start: u64, end: u64, off: i32| {
        if start < end {
            out.push(Raw {
                start,
                end,
                rule: rule(off),
            });
        }
    };
    for (i, e) in bytes.chunks_exact(16).enumerate() {
        let a = addr + 16 * i as u64;
        // Skip `endbr64` (f3 0f 1e fa) and a `bnd` prefix (f2).
        let mut at = 0;
        if e.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
            at = 4;
        }
        if e.get(at) == Some(&0xf2) {
            at += 1;
        }
        let op = &e[at..];
        if op.starts_with(&[0xff, 0x35]) && e.get(at + 6..at + 8) == Some(&[0xff, 0x25]) {
            // The lazy header: push GOT+8 (6 bytes), then jmp *GOT+16.
            push(a, a + at as u64 + 6, 8);
            push(a + at as u64 + 6, a + 16, 16);
        } else if op.starts_with(&[0xff, 0x25]) && e.get(at + 6) == Some(&0x68) {
            // A lazy entry: jmp *GOT (6 bytes), push $i (5), jmp .plt.
            push(a, a + at as u64 + 11, 8);
            push(a + at as u64 + 11, a + 16, 16);
        } else if op.starts_with(&[0xff, 0x25]) {
            // A non-lazy entry: jmp *GOT, then padding.
            push(a, a + 16, 8);
        }
    }
    out
}

/// The CFA of an x86_64 lazy-binding PLT (every `.plt` the GNU linker writes): `rsp + k + 8`
/// in the last bytes of each 16-byte entry, after its `push $index`, else `rsp + k`
/// (`DW_OP_breg7 k; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_litT; DW_OP_ge; DW_OP_lit3;
/// DW_OP_shl; DW_OP_plus`: T is 11, or 10 in the IBT layout). Returns `(k, T)` for a row whose
/// CFA is exactly that expression; no other expression is evaluated.
fn plt_cfa<'a, S, T, St>(
    section: &S,
    row: &gimli::UnwindTableRow<T, St>,
    regs: RegNums,
) -> Option<(i32, u64)>
where
    S: UnwindSection<EndianSlice<'a, LittleEndian>>,
    T: gimli::ReaderOffset,
    St: gimli::UnwindContextStorage<T>,
    EndianSlice<'a, LittleEndian>: gimli::Reader<Offset = T>,
{
    let CfaRule::Expression(e) = row.cfa() else {
        return None;
    };
    if regs.sp != gimli::X86_64::RSP || regs.ra != gimli::X86_64::RA {
        return None;
    }
    let bytes = e.get(section).ok()?.0.slice();
    // breg7 k (k a one-byte SLEB128 in 0..64), breg16 0, lit15, and, litT, ge, lit3, shl, plus.
    match *bytes {
        [0x77, k, 0x80, 0x00, 0x3f, 0x1a, lit, 0x2a, 0x33, 0x24, 0x22]
            if k < 0x40 && (0x30..0x40).contains(&lit) =>
        {
            Some((i32::from(k), u64::from(lit - 0x30)))
        }
        _ => None,
    }
}

/// One gimli row as a compact rule; `cfa`, when given, is the CFA (`CFA_SP` or `CFA_FP` and an
/// offset) evaluated for the row's address range (see [`plt_cfa`]).
fn convert<T: gimli::ReaderOffset, S: gimli::UnwindContextStorage<T>>(
    row: &gimli::UnwindTableRow<T, S>,
    regs: RegNums,
    cfa: Option<(u8, i32)>,
) -> CfiRow {
    let bad = CfiRow {
        flags: CfiRow::UNSUPPORTED,
        ..CfiRow::default()
    };
    let (cfa, cfa_off) = match (cfa, row.cfa()) {
        (Some(c), _) => c,
        (None, CfaRule::RegisterAndOffset { register, offset }) => {
            let which = if *register == regs.sp {
                CFA_SP
            } else if *register == regs.fp {
                CFA_FP
            } else if Some(*register) == regs.cfa_scratch {
                CFA_SCRATCH
            } else {
                return bad;
            };
            match i32::try_from(*offset) {
                Ok(o) => (which, o),
                Err(_) => return bad,
            }
        }
        (None, CfaRule::Expression(_)) => return bad,
    };
    let (ra, ra_off) = match row.register(regs.ra) {
        Some(RegisterRule::Offset(o)) => match i16::try_from(o) {
            Ok(o) => (RA_AT, o),
            Err(_) => return bad,
        },
        Some(RegisterRule::Undefined) => (RA_UNDEF, 0),
        None | Some(RegisterRule::SameValue) if regs.lr_is_ra => (RA_LR, 0),
        _ => return bad,
    };
    let (fp, fp_off) = match row.register(regs.fp) {
        None | Some(RegisterRule::SameValue) => (FP_SAME, 0),
        Some(RegisterRule::Offset(o)) => match i16::try_from(o) {
            Ok(o) => (FP_AT, o),
            Err(_) => return bad,
        },
        Some(RegisterRule::ValOffset(o)) => match i16::try_from(o) {
            Ok(o) => (FP_VAL, o),
            Err(_) => return bad,
        },
        Some(RegisterRule::Undefined) => (FP_UNDEF, 0),
        _ => return bad,
    };
    let mut flags = 0;
    if cfa == CFA_FP
        && ra == RA_AT
        && fp == FP_AT
        && fp_off as i32 == -cfa_off
        && ra_off as i32 == -cfa_off + 8
    {
        flags |= CfiRow::FRAME_RECORD;
    }
    if ra == RA_AT && fp == FP_AT && ra_off as i32 == fp_off as i32 + 8 {
        flags |= CfiRow::PAIR;
    }
    CfiRow {
        cfa_off,
        ra_off,
        fp_off,
        cfa,
        ra,
        fp,
        flags,
    }
}

/// Sorts raw rows into the flat table, filling gaps and merging equal neighbours.
fn build(mut raw: Vec<Raw>, fdes: &[(u64, u64, bool)]) -> Result<PreparedCfi, CfiError> {
    raw.sort_by_key(|r| r.start);
    let Some(first) = raw.first() else {
        return Ok(PreparedCfi::default());
    };
    let base = first.start;
    let end = raw.iter().map(|r| r.end).max().unwrap_or(base);
    // The tables are dense over the module's code (a page index and a bitmap per 16 bytes):
    // a span over 1 GiB is not a real module's text, and would cost tens of MB per table.
    if end - base > MAX_SPAN {
        return Err(CfiError::BadRange);
    }
    let mut starts: Vec<u32> = Vec::with_capacity(raw.len() + 16);
    let mut rules: Vec<CfiRow> = Vec::with_capacity(raw.len() + 16);
    let mut covered = base; // end of what the rows so far cover
    for r in &raw {
        // Overlapping FDEs: the later start wins from its start on.
        if r.start > covered && rules.last() != Some(&CfiRow::GAP_RULE) {
            starts.push((covered - base) as u32);
            rules.push(CfiRow::GAP_RULE);
        }
        let s = (r.start - base) as u32;
        if rules.last() == Some(&r.rule) && r.start <= covered {
            // Same rule continuing: extend.
        } else if starts.last() == Some(&s) {
            *rules.last_mut().expect("non-empty") = r.rule;
        } else {
            starts.push(s);
            rules.push(r.rule);
        }
        covered = covered.max(r.end);
    }
    if covered < end {
        starts.push((covered - base) as u32);
        rules.push(CfiRow::GAP_RULE);
    }
    let npages = ((end - base) >> PAGE_SHIFT) as usize + 1;
    let mut pages = Vec::with_capacity(npages);
    let mut i = 0usize;
    for p in 0..npages {
        let page_start = (p as u64) << PAGE_SHIFT;
        while i + 1 < starts.len() && starts[i + 1] as u64 <= page_start {
            i += 1;
        }
        pages.push(i as u32);
    }
    let ngranules = ((end - base) >> RECORD_SHIFT) as usize + 1;
    let mut record_pages = vec![u64::MAX; ngranules.div_ceil(64)];
    // The granules of functions without a frame record: their ranges merged first, then cleared
    // a word at a time, so the work is linear in the bitmap whatever the FDEs claim (a hostile
    // table of many FDEs spanning gigabytes took seconds granule by granule).
    let mut clear: Vec<(usize, usize)> = fdes
        .iter()
        .filter(|&&(s, e, keeps)| !keeps && e > s && e > base && s < end)
        .map(|&(s, e, _)| {
            let p0 = ((s.max(base) - base) >> RECORD_SHIFT) as usize;
            let p1 = ((e.min(end) - 1).saturating_sub(base) >> RECORD_SHIFT) as usize;
            (p0, p1.min(ngranules - 1))
        })
        .collect();
    clear.sort_unstable();
    let mut done = 0usize; // granules below this are cleared already
    for (p0, p1) in clear {
        let mut p = p0.max(done);
        while p <= p1 {
            if p % 64 == 0 && p + 63 <= p1 {
                record_pages[p / 64] = 0;
                p += 64;
            } else {
                record_pages[p / 64] &= !(1 << (p % 64));
                p += 1;
            }
        }
        done = done.max(p1 + 1);
    }
    Ok(PreparedCfi {
        bias: 0,
        base,
        end,
        starts: starts.into(),
        rules: rules.into(),
        pages: pages.into(),
        record_pages: record_pages.into(),
        name: String::new(),
    })
}

/// Reads a module's CFI sections from an ELF file's bytes and prepares them.
pub fn parse_elf(
    arch: ArchKind,
    data: &[u8],
    bias: u64,
    name: &str,
) -> Result<PreparedCfi, CfiError> {
    parse_elf_with_debug(arch, data, None, bias, name)
}

/// [`parse_elf`] for a file whose `.debug_frame` may be in its separate debug file
/// (`debug`): `strip` moves it there, and a file built without `.eh_frame`
/// (`-fno-asynchronous-unwind-tables`, as kernels and size-tuned C are) keeps no other CFI
/// for its own functions. The file's own `.debug_frame` comes first.
pub fn parse_elf_with_debug(
    arch: ArchKind,
    data: &[u8],
    debug: Option<&[u8]>,
    bias: u64,
    name: &str,
) -> Result<PreparedCfi, CfiError> {
    use object::ObjectSection;
    let file = object::File::parse(data).map_err(|_| CfiError::Object)?;
    let debug_file = debug.and_then(|d| object::File::parse(d).ok());
    let sec = |n: &str| section_by_name(&file, n).and_then(|s| Some((s.data().ok()?, s.address())));
    // Go links `.debug_frame` compressed (SHF_COMPRESSED, zlib) unless built with
    // `-ldflags=-compressdwarf=false`: inflate it (object's decompression; a section that does
    // not inflate is malformed CFI, not a crash).
    // A stripped Go binary (`-ldflags=-s -w`) has no `.debug_frame`: the one its linker would
    // have written is made from `.gopclntab`'s `pcsp` tables.
    let own = section_by_name(&file, ".debug_frame")
        .or_else(|| section_by_name(debug_file.as_ref()?, ".debug_frame"));
    let debug_frame = match own {
        Some(s) => Some(section_bytes(&s).ok_or(CfiError::Decompress)?),
        None => super::gopclntab::Table::of_file(&file, data)
            .and_then(|t| super::gopclntab::debug_frame(&t, arch))
            .map(std::borrow::Cow::Owned),
    };
    let sections = Sections {
        eh_frame: sec(".eh_frame").filter(|(d, _)| !d.is_empty()),
        eh_frame_hdr: sec(".eh_frame_hdr").filter(|(d, _)| !d.is_empty()),
        debug_frame: debug_frame.as_deref().filter(|d| !d.is_empty()),
        text: sec(".text").map_or(0, |(_, a)| a),
        got: sec(".got").map_or(0, |(_, a)| a),
    };
    let plts = plt_sections(&file);
    PreparedCfi::parse_with_plts(arch, &sections, &plts, bias, name)
}

/// A file's PLT sections, `(address, bytes)`, for [`plt_rows`].
fn plt_sections<'d>(file: &object::File<'d>) -> Vec<(u64, &'d [u8])> {
    use object::ObjectSection;
    [".plt", ".plt.sec", ".plt.got", ".iplt"]
        .into_iter()
        .filter_map(|n| {
            let s = section_by_name(file, n)?;
            Some((s.address(), s.data().ok()?))
        })
        .collect()
}

/// Maps an ELF file and prepares its CFI. The file is opened through [`crate::safe_open`] with
/// its default policy (a regular, non-empty file, never blocking, nothing under `/proc`).
pub fn parse_file(
    arch: ArchKind,
    path: &std::path::Path,
    bias: u64,
) -> Result<PreparedCfi, CfiError> {
    parse_file_with(arch, path, bias, &crate::safe_open::Policy::default())
}

/// [`parse_file`] with an open policy (a live process's modules allow its `/proc` prefix).
pub fn parse_file_with(
    arch: ArchKind,
    path: &std::path::Path,
    bias: u64,
    policy: &crate::safe_open::Policy,
) -> Result<PreparedCfi, CfiError> {
    let map = crate::safe_open::map_analysed(path, policy).map_err(|_| CfiError::Object)?;
    parse_elf(arch, &map, bias, &path.display().to_string())
}

/// Many modules' prepared CFI, sorted by address: a [`Cfi`] for the walker.
#[derive(Clone, Debug, Default)]
pub struct Unwinder {
    modules: Vec<PreparedCfi>,
    /// `modules[i].range()`, for the search.
    ranges: Vec<(u64, u64)>,
    /// Which rules a [`RuleCache`] may hold for this unwinder: a fresh number at every change,
    /// never reused (an address would be: a dropped unwinder's successor can live at the same
    /// place, and a cache would then answer with the old rules).
    generation: u64,
    /// The record map's `(lo, span)` of [`capture`]'s own module (the span cut to
    /// `home_bits`), when that module's table says `capture` keeps a frame record: the hybrid
    /// frame-pointer entry starts there.
    home: Option<(u64, u64)>,
    /// That module's record bitmap (a copy).
    home_bits: Vec<u64>,
    /// No frame-pointer guess where no CFI covers a pc ([`Unwinder::set_guesses`]).
    no_guesses: bool,
}

/// Source of [`Unwinder`] generations (0: an empty unwinder, which caches nothing).
static GENERATION: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

impl Unwinder {
    /// An empty unwinder.
    pub fn new() -> Self {
        Unwinder::default()
    }

    /// Whether a [`Mode::Hybrid`] walk with this unwinder follows the frame pointer, as a
    /// guess, at a pc no module's CFI covers (code with frame records but no CFI: JIT code, C
    /// built with `-fno-asynchronous-unwind-tables`). On by default. The loaded modules'
    /// unwinder ([`crate::modules::refresh`]) turns it off in a build without frame pointers:
    /// there the register is no frame record, and a guess (at a library `dlopen`ed since the
    /// last refresh) skipped callers and could end looking complete; the walk now stops there
    /// ([`crate::StopReason::NoUnwindInfo`]).
    pub fn set_guesses(&mut self, guesses: bool) {
        self.no_guesses = !guesses;
    }

    /// See [`Unwinder::set_guesses`].
    pub fn guesses(&self) -> bool {
        !self.no_guesses
    }

    /// Adds a module's table (kept sorted; empty tables are dropped).
    pub fn add(&mut self, m: PreparedCfi) {
        if m.is_empty() {
            return;
        }
        let r = m.range();
        let i = self.ranges.partition_point(|&(lo, _)| lo < r.lo);
        self.ranges.insert(i, (r.lo, r.hi));
        self.modules.insert(i, m);
        self.generation = GENERATION.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        // Where `capture` is: its entry's granule answers for the whole function (the bitmap
        // clears whole functions; a granule shared with a function without a record reads
        // "no", which only skips the entry).
        let here = capture as *const () as u64;
        // Only a module holding `capture` can change which one is first to hold it (a refresh
        // adds every loaded module: one copy of the bitmap, not one per module).
        if !(r.lo <= here && here < r.hi) {
            return;
        }
        let home = self
            .ranges
            .iter()
            .position(|&(lo, hi)| lo <= here && here < hi)
            .and_then(|i| {
                let m = &self.modules[i];
                let r = m.range();
                let span = r.hi.wrapping_sub(r.lo);
                let map = crate::walk::RecordMap::new(r.lo, span, &m.record_pages);
                map.keeps(here.wrapping_add(1))
                    .then(|| (map.lo(), map.span(), m.record_pages.to_vec()))
            });
        // Its own copy of the bitmap, and the span already cut to it: the entry then builds
        // the map from three fields.
        (self.home, self.home_bits) = match home {
            Some((lo, span, bits)) => (Some((lo, span)), bits),
            None => (None, Vec::new()),
        };
        // The entry's hot loop reads "every function on this page keeps a record" from the
        // live table's page filter: mark the other pages (before this unwinder can be used;
        // marks are never cleared, so marking again is harmless).
        if let Some(map) = self.home_map() {
            map.unrecorded_pages()
                .for_each(crate::transition::mark_unrecorded_page);
        }
    }

    /// The modules' tables.
    pub fn modules(&self) -> &[PreparedCfi] {
        &self.modules
    }

    /// The table covering runtime address `pc`.
    #[inline(always)]
    pub fn module(&self, pc: u64) -> Option<&PreparedCfi> {
        self.modules.get(self.module_index(pc)?)
    }

    /// The index in [`Unwinder::modules`] of the table covering runtime address `pc`.
    #[inline(always)]
    fn module_index(&self, pc: u64) -> Option<usize> {
        let i = self.ranges.partition_point(|&(lo, _)| lo <= pc);
        let (_, hi) = *self.ranges.get(i.checked_sub(1)?)?;
        (pc < hi).then_some(i - 1)
    }

    /// The rule for `pc` (a lookup address: exact pc, or return address - 1).
    #[inline(always)]
    pub fn rule(&self, pc: u64) -> Option<CfiRow> {
        self.module(pc)?.rule(pc)
    }

    /// The hybrid record map ([`crate::walk::RecordMap`]) of [`capture`]'s own module, when
    /// `capture` keeps a frame record (so its own record may be followed): the frame-pointer
    /// entry of a hybrid capture.
    #[inline(always)]
    fn home_map(&self) -> Option<crate::walk::RecordMap<'_>> {
        let (lo, span) = self.home?;
        // SAFETY: `add` sets `home` and `home_bits` together, the span as `RecordMap::new` cut
        // it to these bits, and nothing else writes them.
        Some(unsafe { crate::walk::RecordMap::new_unchecked(lo, span, &self.home_bits) })
    }

    /// Unwinds one frame by CFI (see [`Cfi::step`]).
    #[inline(always)]
    pub fn step_regs<M: Memory>(&self, regs: &Regs, exact: bool, mem: &mut M) -> CfiStep {
        let lookup = FrameAddress::new(regs.pc, exact).lookup_address();
        match self.rule(lookup) {
            Some(r) => r.apply(regs, exact, mem),
            None => CfiStep::NoInfo,
        }
    }
}

/// Entries in a [`RuleCache`].
const CACHE: usize = 256;

/// The [`RuleCache`] slot of key `key` (a lookup address + 1: for a return address, itself):
/// bits 2 to 9. Return addresses differ there (aarch64's are 4-aligned, two x86_64 calls are at
/// least 5 bytes apart), and the slot's byte offset is then `key & 0x3fc` scaled by 8: two
/// instructions in the hot loop.
#[inline(always)]
fn cache_slot(key: u64) -> usize {
    ((key >> 2) as usize) % CACHE
}

/// A direct-mapped cache of prepared rules by lookup address, kept across walks (like
/// framehop's cache): a profiler's samples revisit the same call sites, and a hit skips the
/// module and table search. 8 KiB, `const`-constructible, allocation-free. Tied to one
/// [`Unwinder`]: used with another, it clears itself.
#[derive(Clone, Debug)]
pub struct RuleCache {
    owner: u64,
    entries: [CacheEntry; CACHE],
    /// The modules of the last two module searches, most recent first: `(lo, hi, index)`
    /// (`lo == hi`: none). A thread's walks begin and end in the same few modules (its own
    /// code, libc's thread start), so a walk's first search in each is usually answered here.
    modules: [(u64, u64, usize); 2],
}

/// One [`RuleCache`] slot: the key beside its rule, so a lookup touches one cache line (32
/// bytes, aligned).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
struct CacheEntry {
    /// The lookup address + 1 (wrapping), so that a return address is its own key (0: empty;
    /// see [`CacheEntry::EMPTY`]).
    key: u64,
    rule: CfiRow,
    /// [`CfiRow::plain_kind`] of `rule`, computed when the entry is filled.
    plain: u8,
    /// `rule.cfa_off + rule.fp_off`: [`PlainRule::pair_off`].
    pair_off: i32,
}

impl CacheEntry {
    /// An empty slot, the key of lookup address `u64::MAX`, which never has a rule (a module's
    /// range is half-open, so it ends at or below it); its `GAP` rule is the right answer.
    const EMPTY: CacheEntry = CacheEntry {
        key: 0,
        rule: CfiRow::GAP_RULE,
        plain: 0,
        pair_off: 0,
    };
}

impl Default for RuleCache {
    fn default() -> Self {
        Self::new()
    }
}

impl RuleCache {
    /// An empty cache.
    pub const fn new() -> Self {
        RuleCache {
            owner: 0,
            entries: [CacheEntry::EMPTY; CACHE],
            modules: [(0, 0, 0); 2],
        }
    }

    #[inline(always)]
    fn claim(&mut self, u: &Unwinder) {
        let id = u.generation;
        if self.owner != id {
            self.clear(id);
        }
    }

    #[cold]
    #[inline(never)]
    fn clear(&mut self, owner: u64) {
        self.entries = [CacheEntry::EMPTY; CACHE];
        self.modules = [(0, 0, 0); 2];
        self.owner = owner;
    }
}

std::thread_local! {
    /// Each thread's rule cache for live captures (`const`-initialised: no lazy allocation,
    /// safe to touch first in a signal handler).
    static THREAD_CACHE: core::cell::RefCell<ThreadCache> =
        const { core::cell::RefCell::new(ThreadCache { rules: RuleCache::new(), memo: memo::Memo::EMPTY }) };
}

/// A [`Cfi`] over an [`Unwinder`] for one walk: remembers the module of the last lookup (a
/// walk through one module skips the module search) and looks rules up through a
/// [`RuleCache`]. Allocates nothing.
#[derive(Debug)]
pub struct Stepper<'a> {
    u: &'a Unwinder,
    last: Option<&'a PreparedCfi>,
    last_range: (u64, u64),
    /// The last module's hybrid bitmap, at hand for the hybrid hot loop.
    last_bits: &'a [u64],
    cache: &'a mut RuleCache,
}

impl<'a> Stepper<'a> {
    /// A stepper over `u`, caching rules in `cache`.
    #[inline(always)]
    pub fn new(u: &'a Unwinder, cache: &'a mut RuleCache) -> Self {
        cache.claim(u);
        Stepper {
            u,
            last: None,
            last_range: (0, 0),
            last_bits: &[],
            cache,
        }
    }

    /// The rule for lookup address `pc`, through the cache.
    #[inline(always)]
    fn rule(&mut self, pc: u64) -> Option<CfiRow> {
        let key = pc.wrapping_add(1);
        let e = &self.cache.entries[cache_slot(key)];
        if e.key == key {
            return Some(e.rule);
        }
        let r = self.module(pc)?.rule(pc)?;
        self.cache.entries[cache_slot(key)] = CacheEntry {
            key,
            rule: r,
            plain: r.plain_kind(),
            pair_off: r.cfa_off.wrapping_add(r.fp_off as i32),
        };
        Some(r)
    }

    #[inline(always)]
    fn module(&mut self, pc: u64) -> Option<&'a PreparedCfi> {
        if pc >= self.last_range.0 && pc < self.last_range.1 {
            return self.last;
        }
        let known = &mut self.cache.modules;
        let i = if known[0].0 <= pc && pc < known[0].1 {
            known[0].2
        } else if known[1].0 <= pc && pc < known[1].1 {
            known.swap(0, 1);
            known[0].2
        } else {
            let i = self.u.module_index(pc)?;
            let (lo, hi) = self.u.ranges[i];
            known[1] = known[0];
            known[0] = (lo, hi, i);
            i
        };
        let m = self.u.modules.get(i)?;
        let r = m.range();
        self.last = Some(m);
        self.last_range = (r.lo, r.hi);
        self.last_bits = &m.record_pages;
        Some(m)
    }
}

impl Cfi for Stepper<'_> {
    #[inline(always)]
    fn step<A: Arch, M: Memory>(&mut self, regs: &Regs, exact: bool, mem: &mut M) -> CfiStep {
        // FrameAddress::new(pc, exact).lookup_address(), branch-free.
        let lookup = regs.pc.wrapping_sub(!exact as u64);
        // A cache hit applies the cached row in place (no copy through an Option).
        let key = lookup.wrapping_add(1);
        let e = &self.cache.entries[cache_slot(key)];
        if e.key == key {
            return e.rule.apply(regs, exact, mem);
        }
        match self.rule(lookup) {
            Some(r) => r.apply(regs, exact, mem),
            None => CfiStep::NoInfo,
        }
    }

    #[inline(always)]
    fn keeps_frame_record(&mut self, ra: u64) -> bool {
        let pc = ra.wrapping_sub(1);
        // Fast path: the module of the last lookup, its bitmap cached here.
        let off = pc.wrapping_sub(self.last_range.0);
        if off < self.last_range.1.wrapping_sub(self.last_range.0) {
            let g = (off >> RECORD_SHIFT) as usize;
            return match self.last_bits.get(g / 64) {
                Some(w) => w & (1 << (g % 64)) != 0,
                None => true,
            };
        }
        match self.module(pc) {
            Some(m) => m.keeps_frame_record(pc),
            None => !self.u.no_guesses && crate::frame::could_be_code(ra),
        }
    }

    #[inline(always)]
    fn guesses(&mut self) -> bool {
        !self.u.no_guesses
    }

    /// A live walk (this is the live stepper): below 64 KiB or above user space.
    #[inline(always)]
    fn impossible_pc(&mut self, pc: u64) -> bool {
        !crate::frame::could_be_code(pc)
    }

    const PLAIN_RULES: bool = true;

    /// A cache hit, with the row's plain kind computed when the entry was filled (0 for a row
    /// that is not plain); a miss is [`Cfi::step`]'s.
    #[inline(always)]
    fn plain_rule(&mut self, ra: u64) -> Option<PlainRule> {
        let e = &self.cache.entries[cache_slot(ra)];
        if e.key != ra {
            return None;
        }
        Some(PlainRule {
            cfa_off: e.rule.cfa_off,
            pair_off: e.pair_off,
            ra_off: e.rule.ra_off,
            fp_off: e.rule.fp_off,
            kind: e.plain,
        })
    }

    /// Asked once per walk at most (a zero frame pointer or return address in Hybrid mode).
    #[inline(never)]
    fn lacks_cfi(&mut self, ra: u64) -> bool {
        self.rule(ra.wrapping_sub(1))
            .is_none_or(|r| r == CfiRow::GAP_RULE)
    }

    #[inline(always)]
    fn record_map(&mut self) -> Option<crate::walk::RecordMap<'_>> {
        self.last?;
        Some(crate::walk::RecordMap::new(
            self.last_range.0,
            self.last_range.1.wrapping_sub(self.last_range.0),
            self.last_bits,
        ))
    }
}

impl Cfi for &Unwinder {
    #[inline(always)]
    fn step<A: Arch, M: Memory>(&mut self, regs: &Regs, exact: bool, mem: &mut M) -> CfiStep {
        self.step_regs(regs, exact, mem)
    }

    #[inline(always)]
    fn keeps_frame_record(&mut self, ra: u64) -> bool {
        match self.module(ra.wrapping_sub(1)) {
            Some(m) => m.keeps_frame_record(ra.wrapping_sub(1)),
            None => !self.no_guesses && crate::frame::could_be_code(ra),
        }
    }

    #[inline(always)]
    fn guesses(&mut self) -> bool {
        !self.no_guesses
    }

    /// The loaded modules' unwinder walks live stacks: below 64 KiB or above user space.
    #[inline(always)]
    fn impossible_pc(&mut self, pc: u64) -> bool {
        !crate::frame::could_be_code(pc)
    }

    #[inline(never)]
    fn lacks_cfi(&mut self, ra: u64) -> bool {
        self.rule(ra.wrapping_sub(1))
            .is_none_or(|r| r == CfiRow::GAP_RULE)
    }
}

impl Cfi for Unwinder {
    #[inline(always)]
    fn step<A: Arch, M: Memory>(&mut self, regs: &Regs, exact: bool, mem: &mut M) -> CfiStep {
        self.step_regs(regs, exact, mem)
    }

    #[inline(always)]
    fn keeps_frame_record(&mut self, ra: u64) -> bool {
        (&*self).keeps_frame_record(ra)
    }

    fn lacks_cfi(&mut self, ra: u64) -> bool {
        (&*self).lacks_cfi(ra)
    }

    #[inline(always)]
    fn guesses(&mut self) -> bool {
        !self.no_guesses
    }

    #[inline(always)]
    fn impossible_pc(&mut self, pc: u64) -> bool {
        (&*self).impossible_pc(pc)
    }
}

/// Captures the current thread's stack with `unwinder` in `mode`, starting at the caller of
/// `capture` (like [`crate::capture`]). Async-signal-safe when `unwinder` was prepared
/// beforehand (it is only read).
///
/// In [`Mode::Dwarf`] and [`Mode::Hybrid`] the walk starts from this function's exact
/// registers and steps out of it by its CFI, so it needs no frame record anywhere (a program
/// built without frame pointers); the first frame is still the caller's return address. When
/// its CFI says it keeps a frame record, that record is the step (no rule lookup), and
/// Hybrid's common case runs the frame-record loop from there first (see `hybrid_entry`).
///
/// Where that loop stops (usually at the thread's root frames: libc's `start_thread` and
/// `clone3`, built without frame pointers), the rest of the walk goes through a per-thread memo:
/// the last such walk from the same place is replayed when every memory read it made still
/// reads the same (its frames are copied; some 900 instructions of CFI steps become a few
/// compares), and walked and recorded otherwise. The replay is exact: see the `memo` module.
#[inline(never)]
pub fn capture(buf: &mut [Frame], unwinder: &Unwinder, mode: Mode) -> Trace {
    if !crate::live::room_for_the_walk() {
        return crate::live::no_room();
    }
    // This function's own registers, read here: every path below starts from its frame (its
    // record, or its exact registers and its CFI), which stays live while they run. The paths
    // are functions of their own, so that this one, which every capture enters, is small.
    let r = crate::live::current_regs();
    if mode == Mode::FramePointer {
        if cfg!(unwind_no_frame_pointers) {
            // No frame records to follow in this build (see `crate::capture`).
            return Trace {
                len: 0,
                stop: crate::frame::StopReason::NoFramePointers,
            };
        }
        return frame_records_from(r, buf);
    }
    if mode == Mode::Hybrid {
        // The common case first, as in `crate::capture`: this function keeps a frame record
        // (its CFI says so), the thread's stack is known, and frame records lead up the stack
        // through functions whose CFI says they keep them.
        if let Some(t) = hybrid_entry(r, buf, unwinder) {
            return t;
        }
        // The mode spelled out: `mode` then need not stay live across the entry (it spilled).
        return capture_from(r, buf, unwinder, Mode::Hybrid).without_impossible_end(buf);
    }
    capture_from(r, buf, unwinder, mode).without_impossible_end(buf)
}

/// [`capture`] in [`Mode::FramePointer`]: frame records alone, the walk of `crate::capture`
/// with its fast entry, from the registers `r` that `capture` read in its own frame (out of
/// line, so that `capture`'s Hybrid entry keeps its registers).
#[inline(never)]
fn frame_records_from(r: crate::arch::Regs, buf: &mut [Frame]) -> Trace {
    crate::live::trace_from_here(r, buf)
}

/// [`capture`]'s general path, from the registers `r` that `capture` read in its own frame.
#[inline(never)]
fn capture_from(r: crate::arch::Regs, buf: &mut [Frame], unwinder: &Unwinder, mode: Mode) -> Trace {
    if mode != Mode::FramePointer {
        if unwinder.home.is_some() {
            // `capture` keeps a frame record (its CFI says so: see `Unwinder::home`), so its
            // CFI step is reading that record: the walk starts at the caller, as below, with
            // no rule to look up.
            // SAFETY: `r.sp` is this thread's stack pointer, read in `capture`.
            let mut mem = unsafe { crate::live::LiveMemory::for_own_sp(r.sp, None) };
            if let Some(start) = crate::live::start_here(r, &mut mem) {
                if start.regs.pc != 0 && start.regs.sp > r.sp {
                    #[cfg(test)]
                    DWARF_ENTRIES.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
                    return walk_live(start, &mut mem, buf, unwinder, mode, false).0;
                }
            }
        }
        let mut regs = r;
        regs.pc = crate::arch::native::strip_pac_live(regs.pc);
        // SAFETY: as above.
        let mut mem = unsafe { crate::live::LiveMemory::for_own_sp(regs.sp, None) };
        let (mut t, from_self) = walk_live(Start::exact(regs), &mut mem, buf, unwinder, mode, true);
        // Without CFI for `capture` the walk began at it: frame 0 is `capture` itself.
        if from_self && t.len > 0 {
            buf.copy_within(1..t.len, 0);
            t.len -= 1;
        }
        return t;
    }
    // SAFETY: `r.sp` is this thread's stack pointer, read in `capture`.
    let mut mem = unsafe { crate::live::LiveMemory::for_own_sp(r.sp, None) };
    match crate::live::start_here(r, &mut mem) {
        Some(start) => walk_live(start, &mut mem, buf, unwinder, mode, false).0,
        None => crate::live::empty(),
    }
}

/// Captures the stack a signal interrupted, from the handler's `ucontext`, with `unwinder` in
/// `mode` (like [`crate::capture_from_ucontext`]). Async-signal-safe.
///
/// # Safety
/// `ucontext` must be the third argument the kernel passed to a `SA_SIGINFO` handler.
pub unsafe fn capture_from_ucontext(
    ucontext: *const libc::c_void,
    buf: &mut [Frame],
    unwinder: &Unwinder,
    mode: Mode,
) -> Trace {
    if !crate::live::room_for_the_walk() {
        return crate::live::no_room();
    }
    // SAFETY: forwarded from the caller.
    unsafe { walk_from_ucontext(ucontext, buf, unwinder, mode) }
}

/// [`capture_from_ucontext`]'s walk, in a frame of its own: unoptimised, the walk's locals
/// take some 9 KiB, which this function's prologue reserved before the room check could run,
/// on std's 8 KiB alternate signal stack (SIGSEGV: found by outside use in the twenty-sixth
/// round).
///
/// # Safety
/// As [`capture_from_ucontext`].
#[inline(never)]
unsafe fn walk_from_ucontext(
    ucontext: *const libc::c_void,
    buf: &mut [Frame],
    unwinder: &Unwinder,
    mode: Mode,
) -> Trace {
    // SAFETY: forwarded from the caller.
    let (start, mut mem) = unsafe { crate::live::start_from_ucontext(ucontext) };
    walk_live(start, &mut mem, buf, unwinder, mode, false)
        .0
        .without_impossible_end(buf)
}

/// A hybrid [`capture`]'s frame-pointer entry, from the registers `r` that `capture` read in
/// its own frame: the walker's hot loop, inlined, with the home module's record map; a full
/// buffer or the chain's end returns at once, anything else (another module, a function
/// without a record, a transition) goes on in the general hybrid walker from there. `None`
/// when the entry cannot start (no home map, the thread's stack unknown, no first record):
/// the caller then walks from scratch. In a function of its own, returning only the trace (in
/// `capture`'s body the loop's dozen live values competed with the general path's for
/// registers and spilled; a returned run was copied around on every capture).
#[inline(always)]
fn hybrid_entry(r: crate::arch::Regs, buf: &mut [Frame], unwinder: &Unwinder) -> Option<Trace> {
    let map = unwinder.home_map()?;
    let run = crate::live::records_from_here(r, buf, crate::walk::HomeRecords(map))?;
    if run.done(buf) {
        let stop = if run.n == buf.len() {
            crate::frame::StopReason::BufferFull
        } else {
            crate::frame::StopReason::End
        };
        return Some(Trace { len: run.n, stop });
    }
    if run.n == 0 {
        return None;
    }
    // Made mutable here, on the cold path (as in `crate::capture`).
    let mut run = run;
    Some(resume_hybrid(&mut run, buf, unwinder))
}

/// How many captures stepped out of `capture` by its own frame record (tests: that this
/// path is taken).
#[cfg(test)]
static DWARF_ENTRIES: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// The rest of a hybrid [`capture`] whose frame-pointer entry stopped at something unusual:
/// the general hybrid walker goes on from there, with the same memory.
#[inline(never)]
fn resume_hybrid(
    run: &mut crate::live::RecordRun,
    buf: &mut [Frame],
    unwinder: &Unwinder,
) -> Trace {
    // This thread's cache and memo; when a signal interrupted a capture that holds them, the
    // unwinder itself, without a memo. The end as every live walk's
    // ([`Trace::without_impossible_end`]).
    let t = match thread_cache() {
        Some(mut cache) => {
            let c = &mut *cache;
            let at = memo::Resume::of(run);
            memo::resume(
                &mut c.memo,
                Stepper::new(unwinder, &mut c.rules),
                unwinder.generation,
                &mut run.mem,
                buf,
                at,
            )
        }
        None => {
            let at = memo::Resume::of(run);
            memo::walk(unwinder, &mut run.mem, buf, at)
        }
    };
    t.without_impossible_end(buf)
}

/// A thread's caches for live captures: CFI rules, and the memo of its captures' tails.
pub(crate) struct ThreadCache {
    rules: RuleCache,
    memo: memo::Memo,
}

/// This thread's rule cache, borrowed; `None` if a signal interrupted a capture that holds it,
/// or the thread is exiting (the caller then walks without a cache, with the unwinder itself:
/// a cache on the stack would take 8 KiB of a signal stack). The cell's address comes out of
/// `try_with`, so that the walk is not a closure's body (the closure's environment took some
/// 60 instructions of every capture to build and unpack). Async-signal-safe.
#[inline(always)]
fn thread_cache() -> Option<core::cell::RefMut<'static, ThreadCache>> {
    let cell = THREAD_CACHE.try_with(|c| c as *const core::cell::RefCell<ThreadCache>);
    // SAFETY: `THREAD_CACHE` is `const`-initialised and holds no type with a destructor, so it
    // registers no destructor and its storage stays valid as long as this thread runs; the
    // `RefMut` is not `Send`, so it stays on this thread, which it cannot outlive.
    let cell = cell.ok().map(|c| unsafe { &*c })?;
    cell.try_borrow_mut().ok()
}

#[inline(always)]
/// Walks the current thread from `start` with `unwinder` in `mode`. With `skip_start`, `start`
/// is the exact registers of the capture function itself, and the walk begins at its caller:
/// one CFI step out of it, so the caller's frame is frame 0 and the whole buffer holds callers.
/// Returns the trace and whether it still begins at `start` (no CFI step was possible).
fn walk_live(
    start: Start,
    mem: &mut crate::live::LiveMemory,
    buf: &mut [Frame],
    unwinder: &Unwinder,
    mode: Mode,
    skip_start: bool,
) -> (Trace, bool) {
    // This thread's cache; without it, the unwinder itself, out of line.
    match thread_cache() {
        Some(mut cache) => walk_with(
            Stepper::new(unwinder, &mut cache.rules),
            start,
            mem,
            buf,
            mode,
            skip_start,
        ),
        None => walk_uncached(start, mem, buf, unwinder, mode, skip_start),
    }
}

/// [`walk_live`] without a rule cache.
#[cold]
#[inline(never)]
fn walk_uncached(
    start: Start,
    mem: &mut crate::live::LiveMemory,
    buf: &mut [Frame],
    unwinder: &Unwinder,
    mode: Mode,
    skip_start: bool,
) -> (Trace, bool) {
    walk_with(unwinder, start, mem, buf, mode, skip_start)
}

/// [`walk_live`] with `cfi`.
#[inline(always)]
fn walk_with<C: Cfi>(
    mut cfi: C,
    start: Start,
    mem: &mut crate::live::LiveMemory,
    buf: &mut [Frame],
    mode: Mode,
    skip_start: bool,
) -> (Trace, bool) {
    use crate::arch::Arch;
    type Native = crate::arch::native::Native;
    let mut from = start;
    let mut from_start = true;
    if skip_start {
        // The capture function's own row is plain (a frame record, or a push below the
        // return address): applied at once, without the general rule's cases.
        let plain = if C::PLAIN_RULES {
            cfi.plain_rule(start.regs.pc.wrapping_add(1))
                .and_then(|rule| rule.apply(&start.regs, mem))
        } else {
            None
        };
        let step = match plain {
            Some(r) => CfiStep::Caller(r),
            None => cfi.step::<Native, _>(&start.regs, true, mem),
        };
        if let CfiStep::Caller(mut r) = step {
            r.pc = Native::strip_ra(r.pc, 0);
            if r.pc != 0 && r.sp > start.regs.sp {
                from = Start {
                    regs: r,
                    pc_is_return_address: true,
                };
                from_start = false;
            }
        }
    }
    let mut w: Walker<Native, _, _> = Walker::with_cfi(crate::transition::Pinned::new(), cfi, mode);
    if from.pc_is_return_address {
        (w.walk_from_return(from.regs, mem, buf), from_start)
    } else {
        (w.walk(from, mem, buf), from_start)
    }
}

mod lazy;
mod memo;
pub use lazy::{parse_elf_lazy, LazyCfi, ModuleCfi, OfflineCfi};

#[cfg(test)]
mod tests;

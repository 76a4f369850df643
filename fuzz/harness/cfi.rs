//! `cfi`: arbitrary `.eh_frame` / `.eh_frame_hdr` / `.debug_frame` sections (or a whole ELF
//! file) through the DWARF path: [`PreparedCfi::parse`], rule lookups, and walks in dwarf and
//! hybrid mode over a stack image.
//!
//! # Input format
//! ```text
//! flags u8        bit 0 aarch64, bit 1 with .eh_frame_hdr, bit 2 the section is .debug_frame,
//!                 bit 3 the rest of the input is an ELF file (parse_elf),
//!                 bit 4 the section is a Go `.gopclntab` (from_gopclntab, text = .text address)
//! eh_frame address u64, .eh_frame_hdr address u64, .text address u64, .got address u64
//! bias u64
//! len u32 (% 65536), section bytes; len u16, .eh_frame_hdr bytes
//! n u8 (% 16), pcs u64           looked up besides 64 pcs spread over the table's range
//! pc sp fp lr u64, stack base u64, stack bytes (the rest, at most 16 KiB)
//! ```
//!
//! # What it checks
//! No panic (the tables' bounds on bad input: at most `MAX_ROWS` rows); a rule is only found
//! inside the table's range; the [`Unwinder`] over the table answers like the table; walks in
//! dwarf and hybrid mode read only inside the stack image, stay within the buffer and a bounded
//! number of memory calls, write no zero pc, and are deterministic.
//! The lazy table `unwind stack` uses (`LazyCfi`, when the input has an `.eh_frame_hdr` it can
//! search) is built from the same input: no panic, rules only inside its range, the same answer
//! twice, bounded walks.

use super::walk::Checked;
use super::Bytes;
use unwind::arch::{Aarch64, Arch, ArchKind, Regs, X86_64};
use unwind::dwarf::{self, PreparedCfi, RuleCache, Sections, Stepper, Unwinder};
use unwind::memory::Region;
use unwind::transition::NoTransitions;
use unwind::walk::{Mode, Start, Walker};
use unwind::{Frame, StopReason};

/// Frames per walk.
const BUF: usize = 256;

/// The `cfi` harness.
pub fn cfi(data: &[u8]) {
    let mut b = Bytes::new(data);
    let flags = b.u8();
    let arch = if flags & 1 != 0 {
        ArchKind::Aarch64
    } else {
        ArchKind::X86_64
    };
    let (eh_addr, hdr_addr, text, got, bias) = (b.u64(), b.u64(), b.u64(), b.u64(), b.u64());
    let table = if flags & 8 != 0 {
        let elf = b.rest();
        if let Ok(lazy) = dwarf::parse_elf_lazy(arch, elf, bias, "fuzz") {
            lazy_lookups(arch, lazy);
        }
        dwarf::parse_elf(arch, elf, bias, "fuzz")
    } else {
        let len = (b.u32() % 65536) as usize;
        let section = b.take(len);
        let hdr_len = b.u16() as usize;
        let hdr = b.take(hdr_len);
        let sections = if flags & 4 != 0 {
            Sections {
                debug_frame: Some(section),
                ..Sections::default()
            }
        } else {
            Sections {
                eh_frame: Some((section, eh_addr)),
                eh_frame_hdr: (flags & 2 != 0).then_some((hdr, hdr_addr)),
                debug_frame: None,
                text,
                got,
            }
        };
        if flags & 16 != 0 {
            PreparedCfi::from_gopclntab(arch, section, text, bias, "fuzz")
        } else {
            if let Some(lazy) = dwarf::LazyCfi::new(arch, &sections, bias, "fuzz") {
                lazy_lookups(arch, dwarf::ModuleCfi::Lazy(lazy));
            }
            PreparedCfi::parse(arch, &sections, bias, "fuzz")
        }
    };
    let Ok(table) = table else { return };
    assert!(table.len() <= dwarf::MAX_ROWS);

    // Lookups: the input's pcs and 64 spread over the range.
    let range = table.range();
    let mut pcs: Vec<u64> = (0..b.u8() % 16).map(|_| b.u64()).collect();
    let given = pcs.len();
    let span = range.hi.wrapping_sub(range.lo);
    pcs.extend((0..64u64).map(|i| range.lo.wrapping_add(span / 64 * i)));
    pcs.extend([
        range.lo,
        range.hi,
        range.hi.wrapping_sub(1),
        range.lo.wrapping_sub(1),
    ]);
    let mut unwinder = Unwinder::new();
    unwinder.add(table.clone());
    for &pc in &pcs {
        let r = table.rule(pc);
        if r.is_some() {
            assert!(range.contains(pc), "a rule at {pc:#x} outside {range:?}");
        }
        if !table.is_empty() {
            assert_eq!(
                unwinder.rule(pc),
                r,
                "unwinder and table disagree at {pc:#x}"
            );
        }
        let _ = table.keeps_frame_record(pc);
    }

    // Walks over a stack image, starting at the input's registers, then at table pcs.
    let regs = Regs {
        pc: b.u64(),
        sp: b.u64(),
        fp: b.u64(),
        lr: b.u64(),
    };
    let base = b.u64();
    let stack = b.take(16 * 1024);
    let regions = [Region {
        base,
        bytes: stack,
        is_stack: true,
    }];
    let mut starts = vec![regs];
    for &pc in pcs[given..].iter().step_by(8) {
        starts.push(Regs { pc, ..regs });
    }
    // One rule cache kept across every walk, and across two unwinders (the second with the
    // table moved by a page): cached lookups must answer like the unwinder itself.
    let mut cache = RuleCache::new();
    for shift in [0u64, 0x1000] {
        let mut moved = table.clone();
        moved.bias = moved.bias.wrapping_add(shift);
        let mut unwinder = Unwinder::new();
        unwinder.add(moved);
        for &start in &starts {
            for mode in [Mode::Dwarf, Mode::Hybrid] {
                match arch {
                    ArchKind::X86_64 => {
                        walk::<X86_64>(&unwinder, &mut cache, &regions, start, mode)
                    }
                    ArchKind::Aarch64 => {
                        walk::<Aarch64>(&unwinder, &mut cache, &regions, start, mode)
                    }
                }
            }
        }
    }
}

/// The lazy table ([`dwarf::LazyCfi`], what `unwind stack` uses): lookups spread over its
/// range answer only inside it, the same twice, and walks over it stay bounded.
fn lazy_lookups(arch: ArchKind, m: dwarf::ModuleCfi<'_>) {
    let range = m.range();
    let span = range.hi.wrapping_sub(range.lo);
    let mut pcs: Vec<u64> = (0..64u64)
        .map(|i| range.lo.wrapping_add(span / 64 * i))
        .collect();
    pcs.extend([
        range.lo,
        range.hi,
        range.hi.wrapping_sub(1),
        range.lo.wrapping_sub(1),
    ]);
    let mut cfi = dwarf::OfflineCfi::new();
    cfi.add(m);
    for &pc in &pcs {
        let r = cfi.rule(pc);
        if r.is_some() {
            assert!(
                range.contains(pc),
                "a lazy rule at {pc:#x} outside {range:?}"
            );
        }
        assert_eq!(cfi.rule(pc), r, "a lazy rule changed at {pc:#x}");
        if let Some(m) = cfi.module(pc) {
            let _ = m.keeps_frame_record(pc);
        }
    }
    let regions: [Region<'_>; 0] = [];
    for &pc in pcs.iter().step_by(8) {
        let regs = Regs {
            pc,
            sp: 0x1000,
            fp: 0x2000,
            lr: 0,
        };
        for mode in [Mode::Dwarf, Mode::Hybrid] {
            let _ = match arch {
                ArchKind::X86_64 => walk_with::<X86_64, _>(&cfi, &regions, regs, mode),
                ArchKind::Aarch64 => walk_with::<Aarch64, _>(&cfi, &regions, regs, mode),
            };
        }
    }
}

type Walked = (Vec<Frame>, StopReason);

fn walk_with<A: Arch, C: unwind::walk::Cfi>(
    cfi: C,
    regions: &[Region<'_>],
    regs: Regs,
    mode: Mode,
) -> Walked {
    let mut w: Walker<A, _, _> = Walker::with_cfi(NoTransitions, cfi, mode);
    let mut mem = Checked::new(regions);
    let mut buf = [Frame::EMPTY; BUF];
    let t = w.walk(Start::exact(regs), &mut mem, &mut buf);
    assert!(t.len <= BUF);
    assert!(
        mem.calls <= 64 * (BUF as u64 + 2),
        "{} memory calls for {BUF} frames",
        mem.calls
    );
    if t.stop == StopReason::BufferFull {
        assert_eq!(t.len, BUF);
    }
    for (i, f) in buf[..t.len].iter().enumerate() {
        // Only an exact pc of 0 (a call through a null pointer) is a frame at 0.
        assert!(f.pc != 0 || f.is_exact(), "frame {i} has pc 0");
    }
    (buf[..t.len].to_vec(), t.stop)
}

fn walk<A: Arch>(
    unwinder: &Unwinder,
    cache: &mut RuleCache,
    regions: &[Region<'_>],
    regs: Regs,
    mode: Mode,
) {
    let first = walk_with::<A, _>(unwinder, regions, regs, mode);
    if std::env::var_os("UNWIND_FUZZ_DEBUG").is_some() {
        eprintln!("{mode:?} from {regs:#x?}: {first:#x?}");
    }
    assert_eq!(
        first,
        walk_with::<A, _>(unwinder, regions, regs, mode),
        "two walks differ"
    );
    let cached = walk_with::<A, _>(Stepper::new(unwinder, cache), regions, regs, mode);
    assert_eq!(first, cached, "the rule cache changed the walk");
}

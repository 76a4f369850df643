//! Prepared CFI on hand-built `.eh_frame` sections and synthetic stacks.

use super::*;
use crate::arch::X86_64;
use crate::frame::{StopReason, Via};
use crate::memory::{Image, Rng, StackBuilder};
use crate::transition::NoTransitions;

const LO: u64 = 0x10_0000;

fn pad(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0); // DW_CFA_nop
    }
}

/// A CIE (augmentation `zR` or `zRS`, absolute udata4 addresses, data alignment -8, return
/// address column 16) with `instrs`, followed by FDEs `(start, len, instrs)` and a terminator.
fn eh_frame(signal: bool, cie_instrs: &[u8], fdes: &[(u32, u32, &[u8])]) -> Vec<u8> {
    let mut body = vec![0, 0, 0, 0, 1];
    body.extend_from_slice(if signal { b"zRS\0" } else { b"zR\0" });
    body.extend_from_slice(&[1, 0x78, 16, 1, 0x03]);
    body.extend_from_slice(cie_instrs);
    while (body.len() + 4) % 4 != 0 {
        body.push(0);
    }
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend(body);
    for &(start, len, instrs) in fdes {
        let here = out.len() as u32;
        let mut f = Vec::new();
        f.extend_from_slice(&(here + 4).to_le_bytes()); // CIE pointer: back to offset 0
        f.extend_from_slice(&start.to_le_bytes());
        f.extend_from_slice(&len.to_le_bytes());
        f.push(0); // augmentation data length
        f.extend_from_slice(instrs);
        while (f.len() + 4) % 4 != 0 {
            f.push(0);
        }
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend(f);
    }
    pad(&mut out);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// CIE: CFA = rsp + 8, return address at CFA - 8 (the state at a function's first instruction).
const CIE: &[u8] = &[0x0c, 7, 8, 0x90, 1];
/// No frame pointer: after one byte (`push rbp`), CFA = rsp + 16 and rbp saved at CFA - 16.
const NOFP: &[u8] = &[0x41, 0x0e, 16, 0x86, 2];
/// Frame pointer: push rbp; mov rbp, rsp; then CFA = rbp + 16.
const FP: &[u8] = &[0x41, 0x0e, 16, 0x86, 2, 0x43, 0x0d, 6];
/// The outermost function: the return address is undefined.
const OUTER: &[u8] = &[0x07, 16];
/// CFA = rsp + 0: a CFA that does not move.
const STUCK: &[u8] = &[0x0e, 0];
/// CFA by a DWARF expression (DW_OP_breg7 8).
const EXPR: &[u8] = &[0x0f, 2, 0x77, 8];

fn unwinder(signal: bool, fdes: &[(u32, u32, &[u8])]) -> Unwinder {
    let eh = eh_frame(signal, CIE, fdes);
    let s = Sections {
        eh_frame: Some((&eh, 0x9000)),
        ..Sections::default()
    };
    let mut u = Unwinder::new();
    u.add(PreparedCfi::parse(ArchKind::X86_64, &s, 0, "synthetic").unwrap());
    u
}

fn standard() -> Unwinder {
    unwinder(
        false,
        &[
            (0x1000, 0x100, NOFP),
            (0x2000, 0x100, FP),
            (0x3000, 0x100, OUTER),
            (0x4000, 0x100, STUCK),
            (0x5000, 0x100, EXPR),
        ],
    )
}

/// Stack: leaf in the no-FP function at 0x1010 (rbp zeroed; saved rbp and ra on the stack),
/// called from the FP function (record at LO+0x200), called from the outermost function.
fn stack() -> StackBuilder {
    let mut s = StackBuilder::new(LO, 0x1000);
    s.put(LO + 0x100, LO + 0x200).put(LO + 0x108, 0x2005);
    s.record(LO + 0x200, 0, 0x3005);
    s
}

fn walk(u: &Unwinder, mode: Mode, start: Start, s: &StackBuilder) -> (Vec<Frame>, StopReason) {
    let regions = [s.region()];
    let mut mem = Image::new(&regions);
    let mut buf = vec![Frame::EMPTY; 16];
    let mut cache = RuleCache::new();
    let mut w: Walker<X86_64, _, _> =
        Walker::with_cfi(NoTransitions, Stepper::new(u, &mut cache), mode);
    let t = w.walk(start, &mut mem, &mut buf);
    buf.truncate(t.len);
    (buf, t.stop)
}

fn pcs(f: &[Frame]) -> Vec<u64> {
    f.iter().map(|f| f.pc).collect()
}

#[test]
fn rules_are_prepared() {
    let u = standard();
    let r = |pc| u.rule(pc).unwrap();
    assert_eq!(r(0x1000).flags(), 0);
    assert_eq!(r(0x2010).flags(), CfiRow::FRAME_RECORD | CfiRow::PAIR);
    assert_eq!(r(0x5010).flags(), CfiRow::UNSUPPORTED);
    assert_eq!(r(0x1100).flags(), CfiRow::GAP);
    assert!(u.rule(0x500).is_none() && u.rule(0x5100).is_none());
    let m = u.module(0x1000).unwrap();
    assert!(!m.keeps_frame_record(0x1010));
    assert!(m.keeps_frame_record(0x2010));
}

#[test]
fn dwarf_and_hybrid_unwind_through_a_function_without_frame_pointer() {
    let u = standard();
    let s = stack();
    let start = Start::exact(Regs::new(0x1010, LO + 0x100, 0));
    for mode in [Mode::Dwarf, Mode::Hybrid] {
        let (f, stop) = walk(&u, mode, start, &s);
        assert_eq!(pcs(&f), [0x1010, 0x2005, 0x3005], "{mode:?}");
        assert_eq!(stop, StopReason::End, "{mode:?}");
    }
    let (f, stop) = walk(&u, Mode::FramePointer, start, &s);
    assert_eq!((pcs(&f), stop), (vec![0x1010], StopReason::End));
    // Hybrid used the frame record in the FP function.
    let (f, _) = walk(&u, Mode::Hybrid, start, &s);
    assert_eq!(f[2].via, Via::FramePointer);
    assert_eq!(f[1].via, Via::Dwarf);
}

#[test]
fn a_cfa_that_does_not_move_stops() {
    let u = standard();
    let mut s = StackBuilder::new(LO, 0x1000);
    s.put(LO + 0xf8, 0x4005);
    let start = Start::exact(Regs::new(0x4000, LO + 0x100, 0));
    let (f, stop) = walk(&u, Mode::Dwarf, start, &s);
    assert_eq!(stop, StopReason::NotMonotonic);
    assert_eq!(pcs(&f), [0x4000]);
}

/// The x86_64 PLT's CFA expression (as the GNU linker writes it for `.plt`).
const PLT: &[u8] = &[
    0x0f, 11, 0x77, 8, 0x80, 0, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
];

/// A sample in a PLT stub (a call into a shared library, on its way through `jmp *GOT`, or
/// after the lazy path's `push $index`) finds the function that called through it: the PLT's
/// one CFA expression is evaluated per part of each 16-byte entry, where it was an
/// unsupported row (Dwarf mode stopped there; Hybrid followed the frame pointer, which is still
/// the caller's, and lost the caller).
#[test]
fn the_plt_expression_is_evaluated_per_entry() {
    let u = unwinder(false, &[(0x2000, 0x100, FP), (0x6000, 0x40, PLT)]);
    let off = |pc: u64| {
        let r = u.rule(pc).unwrap();
        assert_eq!(r.flags() & CfiRow::UNSUPPORTED, 0, "{pc:#x}");
        (r.cfa, r.cfa_off, r.ra, r.ra_off)
    };
    for e in [0x6000u64, 0x6010, 0x6030] {
        assert_eq!(off(e), (CFA_SP, 8, RA_AT, -8));
        assert_eq!(off(e + 10), (CFA_SP, 8, RA_AT, -8));
        assert_eq!(off(e + 11), (CFA_SP, 16, RA_AT, -8));
        assert_eq!(off(e + 15), (CFA_SP, 16, RA_AT, -8));
    }
    assert!(u.rule(0x6040).is_none());
    // The caller (0x2005, an FP function whose record is at LO + 0x200) stays in the trace.
    let mut s = StackBuilder::new(LO, 0x1000);
    s.put(LO + 0x100, 0x2005);
    s.record(LO + 0x200, 0, 0x3005);
    let mut pushed = StackBuilder::new(LO, 0x1000);
    pushed.put(LO + 0xf8, 7).put(LO + 0x100, 0x2005);
    pushed.record(LO + 0x200, 0, 0x3005);
    for mode in [Mode::Dwarf, Mode::Hybrid] {
        let start = Start::exact(Regs::new(0x6010, LO + 0x100, LO + 0x200));
        let (f, _) = walk(&u, mode, start, &s);
        assert_eq!(pcs(&f)[..3], [0x6010, 0x2005, 0x3005], "{mode:?}");
        let start = Start::exact(Regs::new(0x601b, LO + 0xf8, LO + 0x200));
        let (f, _) = walk(&u, mode, start, &pushed);
        assert_eq!(pcs(&f)[..3], [0x601b, 0x2005, 0x3005], "{mode:?}");
    }
}

/// `/bin/ls`'s `.plt` (linked by GNU ld, which describes its PLT with that expression; lld,
/// which links this test binary, gives its PLT no CFI): its rows are rules, not unsupported
/// ones.
#[test]
fn a_gnu_ld_plt_has_rules() {
    use object::{Object, ObjectSection};
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let exe = std::fs::read("/bin/ls").unwrap();
    let file = object::File::parse(&*exe).unwrap();
    let Some(plt) = file.section_by_name(".plt") else {
        return;
    };
    let table = parse_elf(ArchKind::X86_64, &exe, 0, "ls").unwrap();
    let (lo, hi) = (plt.address(), plt.address() + plt.size());
    let mut seen = 0;
    for pc in (lo + 16..hi).step_by(16) {
        if let Some(r) = table.rule(pc) {
            assert_eq!(r.flags() & CfiRow::UNSUPPORTED, 0, "{pc:#x}");
            assert_eq!((r.cfa, r.cfa_off), (CFA_SP, 8), "{pc:#x}");
            seen += 1;
        }
    }
    assert!(seen > 0, "no CFI rows in .plt {lo:#x}..{hi:#x}");
}

#[test]
fn expressions_are_unsupported() {
    let u = standard();
    let mut s = StackBuilder::new(LO, 0x1000);
    s.record(LO + 0x200, 0, 0x3005);
    let start = Start::exact(Regs::new(0x5010, LO + 0x100, LO + 0x200));
    let (f, stop) = walk(&u, Mode::Dwarf, start, &s);
    assert_eq!((pcs(&f), stop), (vec![0x5010], StopReason::NoUnwindInfo));
    // Hybrid falls back to the frame record.
    let (f, stop) = walk(&u, Mode::Hybrid, start, &s);
    assert_eq!((pcs(&f), stop), (vec![0x5010, 0x3005], StopReason::End));
}

/// LLVM's inline stack probe (a function with a frame over a page): `mov %rsp,%r11; sub
/// $SIZE,%r11`, then `sub $4096,%rsp` and a store until `rsp == r11`, the CFA based on r11
/// meanwhile (`DW_CFA_def_cfa r11, SIZE + 8`). At an interrupted pc in that loop r11 is known
/// (a signal's, a core's registers): the walk goes on from it. Without it, it stops there
/// (found by outside use: a stack overflow in a function with a large frame, which is where
/// such overflows fault, ended at its first frame; a debug build's walk skipped 150 frames).
#[test]
fn a_stack_probe_loop_s_cfa_comes_from_r11() {
    let u = unwinder(
        false,
        &[
            (0x6000, 0x100, &[0x0c, 11, 0x88, 0x20]),
            (0x3000, 0x100, OUTER),
        ],
    );
    let mut s = StackBuilder::new(LO, 0x2000);
    // The frame's final rsp (r11) at LO + 0x100, so the CFA at LO + 0x1108; rsp half way.
    s.put(LO + 0x1100, 0x3005);
    let regs = Regs {
        lr: LO + 0x100,
        ..Regs::new(0x6010, LO + 0x800, 0)
    };
    for mode in [Mode::Dwarf, Mode::Hybrid] {
        let (f, stop) = walk(&u, mode, Start::exact(regs), &s);
        assert_eq!(
            (pcs(&f), stop),
            (vec![0x6010, 0x3005], StopReason::End),
            "{mode:?}"
        );
        // r11 unknown: no CFA, and no guess.
        let unknown = Regs { lr: 0, ..regs };
        let (f, stop) = walk(&u, mode, Start::exact(unknown), &s);
        assert_eq!(pcs(&f), [0x6010], "{mode:?}");
        assert!(stop.is_truncated(), "{mode:?}: {stop:?}");
    }
}

#[test]
fn signal_frames_give_an_exact_caller() {
    let u = unwinder(true, &[(0x1000, 0x100, NOFP)]);
    assert_ne!(u.rule(0x1010).unwrap().flags() & CfiRow::SIGNAL, 0);
    let mut s = StackBuilder::new(LO, 0x1000);
    s.put(LO + 0x100, 0).put(LO + 0x108, 0x7777);
    let start = Start::exact(Regs::new(0x1010, LO + 0x100, 0));
    let (f, _) = walk(&u, Mode::Dwarf, start, &s);
    assert_eq!(f[1].pc, 0x7777);
    assert_ne!(f[1].flags & Frame::EXACT, 0);
}

#[test]
fn no_info_outside_and_between_fdes() {
    let u = standard();
    let s = stack();
    let (f, stop) = walk(
        &u,
        Mode::Dwarf,
        Start::exact(Regs::new(0x1180, LO + 0x100, 0)),
        &s,
    );
    assert_eq!((f.len(), stop), (1, StopReason::NoUnwindInfo));
}

#[test]
fn malformed_sections_error_cleanly() {
    let eh = eh_frame(false, CIE, &[(0x1000, 0x100, NOFP), (0x2000, 0x100, FP)]);
    for cut in 1..eh.len() - 4 {
        let s = Sections {
            eh_frame: Some((&eh[..cut], 0x9000)),
            ..Sections::default()
        };
        // Either an error or the entries before the cut; never a panic.
        if let Ok(t) = PreparedCfi::parse(ArchKind::X86_64, &s, 0, "cut") {
            assert!(t.len() <= 4, "cut {cut}");
        }
    }
    // An FDE whose range wraps around.
    let eh = eh_frame(false, CIE, &[(0xffff_fff0, 0x100, NOFP)]);
    let s = Sections {
        eh_frame: Some((&eh, 0x9000)),
        ..Sections::default()
    };
    assert!(PreparedCfi::parse(ArchKind::X86_64, &s, 0, "wrap").is_ok());
    // A CIE pointer to nowhere.
    let mut eh = eh_frame(false, CIE, &[(0x1000, 0x100, NOFP)]);
    let fde = u32::from_le_bytes(eh[0..4].try_into().unwrap()) as usize + 4;
    eh[fde + 4..fde + 8].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    let s = Sections {
        eh_frame: Some((&eh, 0x9000)),
        ..Sections::default()
    };
    assert!(matches!(
        PreparedCfi::parse(ArchKind::X86_64, &s, 0, "bad cie"),
        Err(CfiError::Parse(_))
    ));
}

/// The hybrid frame-pointer entry of [`capture`] against the general hybrid walk, on this
/// thread's real stack.
mod hybrid_entry {
    use super::*;
    use crate::walk::Start;
    use std::hint::black_box;

    type Pair = ((Vec<Frame>, Trace), (Vec<Frame>, Trace));

    /// A hybrid [`capture`] (through its frame-pointer entry) and the general hybrid walk from
    /// this function's own registers (stepping out of it by CFI first, as `capture` does
    /// without the entry). The first starts one frame earlier (the return address into this
    /// function), so with one slot more the second must equal the first from its frame 1.
    /// In [`Mode::Dwarf`] the same, through the start from `capture`'s own record.
    #[inline(never)]
    fn both_in(mode: Mode, len: usize) -> Pair {
        let u = crate::modules::unwinder_or_refresh();
        let mut a = vec![Frame::EMPTY; len + 1];
        let ta = capture(&mut a, u, mode);
        a.truncate(ta.len);
        let mut b = vec![Frame::EMPTY; len];
        let regs = crate::live::current_regs();
        let mut mem = crate::live::LiveMemory::for_sp(regs.sp);
        let (tb, _) = walk_live(Start::exact(regs), &mut mem, &mut b, u, mode, true);
        b.truncate(tb.len);
        black_box(((a, ta), (b, tb)))
    }

    #[inline(never)]
    fn at_depth_in(mode: Mode, depth: usize, len: usize) -> Pair {
        if depth == 0 {
            both_in(mode, len)
        } else {
            black_box(at_depth_in(mode, depth - 1, len))
        }
    }

    /// With a corrupt link in the record of `both_in`'s caller.
    #[inline(never)]
    fn with_corrupt_link_in(mode: Mode, bad: u64) -> Pair {
        let fp = crate::live::current_regs().fp;
        let slot = fp as *mut u64;
        // SAFETY: `fp` is this function's own frame record (the crate's tests are built with
        // frame pointers); the saved value is restored before returning, and nothing reads it
        // in between but the captures.
        let saved = unsafe { core::ptr::read_volatile(slot) };
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(slot, bad) };
        let r = both_in(mode, 64);
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(slot, saved) };
        black_box(r)
    }

    /// As `assert_same`, for Dwarf walks: the second's frame 0 is the first frame of a walk,
    /// which a walk from a return address tags `FramePointer`; the same frame is found by a CFI
    /// step in the first, one frame deeper.
    fn assert_same_dwarf(((a, ta), (b, tb)): &Pair, what: &str) {
        assert!(!a.is_empty() && !b.is_empty(), "{what}");
        let mut b = b.clone();
        b[0].via = a.get(1).map_or(b[0].via, |f| f.via);
        assert_eq!(&a[1..], &b[..], "{what}");
        assert_eq!(ta.stop, tb.stop, "{what}");
    }

    fn assert_same(((a, ta), (b, tb)): &Pair, what: &str) {
        assert!(!a.is_empty(), "{what}");
        assert_eq!(&a[1..], &b[..], "{what}");
        assert_eq!(ta.stop, tb.stop, "{what}");
    }

    #[test]
    fn entry_is_live_in_a_frame_pointer_build() {
        crate::live::init_thread();
        let u = crate::modules::unwinder_or_refresh();
        assert!(u.home.is_some(), "capture's own module or record not found");
        let map = u.home_map().expect("home map");
        // Frames of this crate's tests (frame pointers, CFI that says so) as far as the test
        // harness (the standard library is built without them: the entry stops there).
        #[inline(never)]
        fn run_at(depth: usize, map: crate::walk::RecordMap<'_>) -> usize {
            if depth > 0 {
                return black_box(run_at(depth - 1, map));
            }
            let mut buf = [Frame::EMPTY; 64];
            let run = crate::live::records_from_here(
                crate::live::current_regs(),
                &mut buf,
                crate::walk::HomeRecords(map),
            )
            .expect("the thread's stack is known");
            run.n
        }
        assert!(run_at(6, map) >= 7);
    }

    /// The unwinder that found the home module marked, in the live table's filter, every page
    /// where a return address's function keeps no record: the entry trusts a clear byte there.
    #[test]
    fn home_pages_without_records_are_marked_in_the_live_filter() {
        use crate::transition::Transitions;
        let u = crate::modules::unwinder_or_refresh();
        let map = u.home_map().expect("home map");
        let f = crate::transition::Live
            .page_filter()
            .expect("the live table has a filter");
        let pages: Vec<u64> = map.unrecorded_pages().collect();
        // The standard library is in this module, built without frame pointers.
        assert!(!pages.is_empty());
        for p in pages {
            assert_ne!(f.byte(p) & crate::transition::UNRECORDED_PAGE, 0, "{p:#x}");
        }
        // The entry starts at `capture`'s own record.
        assert!(map.keeps(capture as *const () as u64 + 1));
    }

    /// Adding a module that does not hold `capture` keeps the home as it was (the unwinder
    /// skips the search and the bitmap's copy then); the home is the same whatever the order.
    #[test]
    fn home_is_found_whatever_the_order_of_modules() {
        let live = crate::modules::unwinder_or_refresh();
        let home = live.home.expect("home");
        let mut u = live.clone();
        let eh = eh_frame(false, CIE, &[(0x100, 0x40, FP)]);
        let s = Sections {
            eh_frame: Some((&eh, 0x9000)),
            ..Sections::default()
        };
        u.add(PreparedCfi::parse(ArchKind::X86_64, &s, 0, "elsewhere").unwrap());
        assert_eq!(u.home, Some(home));
        assert_eq!(u.home_bits, live.home_bits);
        let mut reversed = Unwinder::new();
        for m in live.modules().iter().rev() {
            reversed.add(m.clone());
        }
        assert_eq!(reversed.home, Some(home));
        assert_eq!(reversed.home_bits, live.home_bits);
    }

    /// Captures in `mode` through its entry against the general walk (`same` compares them):
    /// the chain's end, full buffers, a buffer of one, a stack switch (the entry stops at the
    /// system stack's transition, the general walker crosses it), and corrupt records (both stop
    /// at the same place, for the same reason). `frames` checks each capture's frames.
    fn entry_matches_the_general_walk(mode: Mode, same: fn(&Pair, &str), frames: fn(&[Frame])) {
        crate::live::init_thread();
        for (depth, len) in [
            (0, 1024),
            (40, 1024),
            (40, 16),
            (3, 1),
            (200, 1024),
            (200, 100),
        ] {
            let p = at_depth_in(mode, depth, len);
            same(&p, &format!("{mode:?}, depth {depth}, buffer {len}"));
            let (a, ta) = &p.0;
            frames(a);
            if len == 1024 {
                assert!(a.len() > depth + 2, "{depth}: {}", a.len());
                assert_eq!(ta.stop, StopReason::End, "{a:?}");
            } else {
                assert_eq!(a.len(), len + 1);
                assert_eq!(ta.stop, StopReason::BufferFull);
            }
        }
        let p = crate::system_stack::run(|| at_depth_in(mode, 5, 1024));
        same(&p, &format!("{mode:?}, system stack"));
        assert!(
            p.0 .0.iter().any(|f| f.stack == 1),
            "not crossed: {:?}",
            p.0 .0
        );
        let here = crate::live::current_regs().sp;
        for bad in [0xdead_beef_0000_1230u64, 0x1, u64::MAX - 15, here - 4096, 0] {
            same(
                &with_corrupt_link_in(mode, bad),
                &format!("{mode:?}, corrupt link {bad:#x}"),
            );
        }
    }

    #[test]
    fn entry_matches_the_general_hybrid_walk() {
        entry_matches_the_general_walk(Mode::Hybrid, assert_same, |_| {});
    }

    /// Dwarf's start from `capture`'s own record (then the plain-rule loop at once) is taken
    /// and gives the general Dwarf walk's frames and stop reasons (the walk that steps out of
    /// `capture` by its CFI); every frame after the first is found by CFI (or a transition).
    #[test]
    fn dwarf_entry_matches_the_general_dwarf_walk() {
        crate::live::init_thread();
        let entries = || super::super::DWARF_ENTRIES.load(std::sync::atomic::Ordering::Relaxed);
        let before = entries();
        let _ = at_depth_in(Mode::Dwarf, 3, 64);
        assert!(
            entries() > before,
            "the start from capture's record was not taken"
        );
        entry_matches_the_general_walk(Mode::Dwarf, assert_same_dwarf, |a| {
            assert!(a[1..].iter().all(
                |f| f.via == crate::frame::Via::Dwarf || f.via == crate::frame::Via::Transition
            ))
        });
    }
}

// The walker's plain-rule loop (`Cfi::plain_rule`, taken by a `Stepper` on a cache hit) against
// the general step (`&Unwinder`, which has no plain rules): the same frames, the same stop.

/// A stack high enough for the plain-rule loop (it never runs on stacks below 2 GiB).
const HIGH: u64 = 0x7ff0_0000_0000;
/// CFA = rsp + 32, rbp at CFA - 24, ra at CFA - 8: saved apart, two reads.
const SPLIT: &[u8] = &[0x0e, 32, 0x86, 3];
/// CFA = rsp + 48, rbp at CFA - 16: a pair in a larger frame.
const BIG: &[u8] = &[0x0e, 48, 0x86, 2];
/// CFA = rsp + 20: the pair at rsp + 4, misaligned when rsp is aligned.
const ODD: &[u8] = &[0x0e, 20, 0x86, 2];
/// The CIE's row only: CFA = rsp + 8, rbp unchanged (a leaf, or a function's first instruction).
const LEAF: &[u8] = &[];
/// CFA = rbp + 8, rbp at CFA - 16: a pair below the base register (with rbp = 0 the pair's
/// address wraps below zero).
const LOW: &[u8] = &[0x0c, 6, 8, 0x86, 2];
/// CFA = rsp + 8, rbp at CFA - 16: a pair below sp, which the loop reads one by one.
const BELOW: &[u8] = &[0x0e, 8, 0x86, 2];

/// An [`Image`] whose unchecked pair reads must be aligned and inside a stack range (what
/// [`Memory::read_pair_unchecked`] promises live memory), else the test fails.
struct Strict<'a>(Image<'a>);

impl Memory for Strict<'_> {
    fn read_u64(&mut self, addr: u64) -> Option<u64> {
        self.0.read_u64(addr)
    }
    fn stack_range(&mut self, addr: u64) -> Option<crate::memory::Range> {
        self.0.stack_range(addr)
    }
    unsafe fn read_pair_unchecked(&mut self, addr: u64) -> Option<(u64, u64)> {
        let r = self.0.stack_range(addr);
        assert!(
            addr.is_multiple_of(8) && r.is_some_and(|r| r.contains_span(addr, 16)),
            "unchecked read at {addr:#x} outside the stack {r:?}"
        );
        self.0.read_pair(addr)
    }
}

/// Every kind of row: plain pairs from sp and fp, plain rows read one by one, rows that are not
/// plain (an undefined return address, a CFA that does not move, an expression), and a signal
/// trampoline's module.
fn assorted() -> Unwinder {
    let fdes: &[(u32, u32, &[u8])] = &[
        (0x1000, 0x100, NOFP),
        (0x2000, 0x100, FP),
        (0x3000, 0x100, OUTER),
        (0x4000, 0x100, STUCK),
        (0x5000, 0x100, EXPR),
        (0x6000, 0x100, SPLIT),
        (0x7000, 0x100, BIG),
        (0x8000, 0x100, ODD),
        (0xa000, 0x100, LEAF),
        (0xb000, 0x100, BELOW),
        (0xc000, 0x100, LOW),
    ];
    let mut u = unwinder(false, fdes);
    // Above the first module's range: the modules must not overlap (the stepper's
    // last-module shortcut and the unwinder's search disagree on overlapping ones).
    let eh = eh_frame(true, CIE, &[(0xd000, 0x100, NOFP)]);
    let s = Sections {
        eh_frame: Some((&eh, 0x9000)),
        ..Sections::default()
    };
    u.add(PreparedCfi::parse(ArchKind::X86_64, &s, 0, "signal").unwrap());
    u
}

const WORDS: u64 = 512;

/// A stack of well-formed frames through the functions of [`assorted`] (some corrupted
/// afterwards), and the registers of its innermost frame.
fn random_stack(rng: &mut Rng, base: u64) -> (StackBuilder, Start) {
    // (function, frame size for sp-based rows, offset of the saved rbp from the CFA).
    const KINDS: [(u64, u64, Option<i64>); 8] = [
        (0x1000, 16, Some(-16)),
        (0x2000, 0, Some(-16)),
        (0x6000, 32, Some(-24)),
        (0x7000, 48, Some(-16)),
        (0x8000, 20, Some(-16)),
        (0xa000, 8, None),
        (0xb000, 8, Some(-16)),
        (0xc000, 0, Some(-16)),
    ];
    let mut s = StackBuilder::new(base, (WORDS * 8) as usize);
    let depth = 1 + rng.below(24) as usize;
    let mut frames = Vec::new(); // (pc, sp, rbp, cfa, saved rbp offset)
    let mut sp = base + 8 * rng.below(16);
    for _ in 0..depth {
        let (f, size, saved) = KINDS[rng.below(KINDS.len() as u64) as usize];
        let pc = f + 0x10 + rng.below(0xe0);
        let (rbp, cfa) = if f == 0x2000 {
            let fp = sp + 8 * rng.below(6);
            (fp, fp + 16)
        } else if f == 0xc000 {
            // CFA = rbp + 8, the pair at rbp - 8.
            let fp = sp + 8 + 8 * rng.below(6);
            (fp, fp + 8)
        } else {
            (rng.next(), sp + size)
        };
        if cfa + 8 > base + WORDS * 8 {
            break;
        }
        frames.push((pc, sp, rbp, cfa, saved));
        sp = cfa;
    }
    // rbp as each frame sees it: its own (a frame-pointer function), junk (a function that
    // saved it), or its caller's (a leaf leaves it alone). From the outermost in.
    let mut caller_rbp = 0;
    for i in (0..frames.len()).rev() {
        let (_, _, rbp, _, saved) = frames[i];
        let rbp = if saved.is_none() { caller_rbp } else { rbp };
        frames[i].2 = rbp;
        caller_rbp = rbp;
    }
    for i in 0..frames.len() {
        let (_, _, _, cfa, saved) = frames[i];
        let (ra, rbp) = match frames.get(i + 1) {
            Some(&(pc, _, rbp, _, _)) => (pc, rbp),
            None => (if rng.below(2) == 0 { 0 } else { 0x3010 }, 0),
        };
        s.put(cfa - 8, ra);
        if let Some(off) = saved {
            // A pair below sp (`BELOW`) may fall below the stack's base.
            let at = cfa.wrapping_add_signed(off);
            if at >= base {
                s.put(at, rbp);
            }
        }
    }
    // Corruption: words that are stack addresses, code addresses, zero or anything.
    for _ in 0..rng.below(4) {
        let at = base + 8 * rng.below(WORDS) + if rng.below(8) == 0 { 4 } else { 0 };
        let v = match rng.below(6) {
            0 => base + 8 * rng.below(WORDS + 8) + rng.below(2) * 4,
            5 => rng.below(64).wrapping_sub(32),
            1 => {
                [
                    0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0xa000, 0xc000, 0xd000,
                ][rng.below(9) as usize]
                    + rng.below(0x100)
            }
            2 => 0,
            _ => rng.next(),
        };
        if at + 8 <= base + WORDS * 8 {
            s.put(at, v);
        }
    }
    let (pc, sp, mut rbp, _, _) = frames[0];
    if rng.below(16) == 0 {
        rbp = rng.below(64).wrapping_sub(32); // near zero, or near 2^64
    }
    let exact = rng.below(4) == 0;
    let start = Start {
        regs: Regs::new(pc, sp, rbp),
        pc_is_return_address: !exact,
    };
    (s, start)
}

fn walk_cfi<C: Cfi>(
    cfi: C,
    mode: Mode,
    start: Start,
    s: &StackBuilder,
) -> (Vec<Frame>, StopReason) {
    let regions = [s.region()];
    let mut mem = Strict(Image::new(&regions));
    let mut buf = vec![Frame::EMPTY; 32];
    let mut w: Walker<X86_64, _, _> = Walker::with_cfi(NoTransitions, cfi, mode);
    let t = w.walk(start, &mut mem, &mut buf);
    buf.truncate(t.len);
    (buf, t.stop)
}

#[test]
fn plain_rules_walk_exactly_as_the_general_step_on_random_stacks() {
    let u = assorted();
    let mut cache = RuleCache::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut deep = 0;
    for case in 0..20_000 {
        let (s, start) = random_stack(&mut rng, HIGH);
        for mode in [Mode::Dwarf, Mode::Hybrid] {
            let general = walk_cfi(&u, mode, start, &s);
            // Twice with the cache kept: the first walk fills it (misses take the general
            // step), the second finds every rule in it (the plain-rule loop).
            for pass in 0..2 {
                let fast = walk_cfi(Stepper::new(&u, &mut cache), mode, start, &s);
                assert_eq!(
                    fast, general,
                    "case {case}, {mode:?}, pass {pass}, {start:?}"
                );
            }
        }
        deep += (walk_cfi(&u, Mode::Dwarf, start, &s).0.len() > 8) as usize;
    }
    // The stacks are mostly well-formed: many walks go deep.
    assert!(deep > 2_000, "{deep}");
}

#[test]
fn plain_rules_are_the_plain_rows() {
    let u = assorted();
    let mut cache = RuleCache::new();
    let mut st = Stepper::new(&u, &mut cache);
    let kind = |st: &mut Stepper<'_>, ra: u64| {
        // Fill the cache through a step, then ask for the plain rule.
        let mut mem = Image::new(&[]);
        st.step::<X86_64, _>(&Regs::new(ra, HIGH, HIGH), false, &mut mem);
        st.plain_rule(ra)
            .map(|r| (r.kind, r.cfa_off, r.ra_off, r.fp_off))
    };
    let p = PlainRule::PLAIN;
    let pair = PlainRule::FP_SAVED | PlainRule::PAIR;
    assert_eq!(kind(&mut st, 0x1011), Some((p | pair, 16, -8, -16)));
    assert_eq!(
        kind(&mut st, 0x2011),
        Some((p | PlainRule::CFA_FP | pair, 16, -8, -16))
    );
    assert_eq!(
        kind(&mut st, 0x6011),
        Some((p | PlainRule::FP_SAVED, 32, -8, -24))
    );
    assert_eq!(kind(&mut st, 0xa011), Some((p, 8, -8, 0)));
    // A pair below sp: read one by one.
    assert_eq!(
        kind(&mut st, 0xb011),
        Some((p | PlainRule::FP_SAVED, 8, -8, -16))
    );
    // Not plain: an undefined return address, an expression, a gap, a signal frame.
    for ra in [0x3011, 0x5011, 0x1201, 0xd011] {
        let k = kind(&mut st, ra).map_or(0, |r| r.0);
        assert_eq!(k & PlainRule::PLAIN, 0, "{ra:#x}");
    }
    // Not in the cache: nothing.
    assert_eq!(st.plain_rule(0x7011), None);
}

#[test]
fn colliding_return_addresses_keep_their_own_rules() {
    // 0x1010 and 0x6010 + 0x400 * k share a slot (bits 2 to 9); walks alternating between them
    // must each get their own rule.
    assert_eq!(cache_slot(0x1011), cache_slot(0x1011 + 0x400));
    let u = unwinder(
        false,
        &[
            (0x1000, 0x100, NOFP),
            (0x1400, 0x100, SPLIT),
            (0x1800, 0x100, FP),
        ],
    );
    let mut cache = RuleCache::new();
    let mut s = StackBuilder::new(HIGH, 0x1000);
    // Frame of 0x1011 (pair at sp), then 0x1411 (ra at CFA - 8, rbp at CFA - 24), then the end.
    s.put(HIGH + 0x100, 0).put(HIGH + 0x108, 0x1411);
    s.put(HIGH + 0x130 - 8, 0x1811).put(HIGH + 0x130 - 24, 0);
    let start = Start {
        regs: Regs::new(0x1011, HIGH + 0x100, 0),
        pc_is_return_address: true,
    };
    let general = walk_cfi(&u, Mode::Dwarf, start, &s);
    assert_eq!(pcs(&general.0), [0x1011, 0x1411, 0x1811]);
    for _ in 0..4 {
        assert_eq!(
            walk_cfi(Stepper::new(&u, &mut cache), Mode::Dwarf, start, &s),
            general
        );
    }
}

#[test]
fn a_cache_kept_across_unwinders_answers_for_the_current_one() {
    // The same return address, a pair from sp in one unwinder and from fp in the next: the
    // cache must not answer with the first one's rule.
    let a = unwinder(false, &[(0x1000, 0x100, NOFP)]);
    let b = unwinder(false, &[(0x1000, 0x100, FP)]);
    let mut s = StackBuilder::new(HIGH, 0x1000);
    s.put(HIGH + 0x100, 0).put(HIGH + 0x108, 0x3011);
    s.put(HIGH + 0x200, 0).put(HIGH + 0x208, 0x3022);
    let start = Start {
        regs: Regs::new(0x1011, HIGH + 0x100, HIGH + 0x200),
        pc_is_return_address: true,
    };
    let mut cache = RuleCache::new();
    for _ in 0..3 {
        for (u, want) in [(&a, 0x3011), (&b, 0x3022)] {
            let got = walk_cfi(Stepper::new(u, &mut cache), Mode::Dwarf, start, &s);
            assert_eq!(got, walk_cfi(u, Mode::Dwarf, start, &s));
            assert_eq!(got.0.get(1).map(|f| f.pc), Some(want));
        }
    }
}

#[test]
fn the_plain_rule_loop_stops_where_the_general_step_reports() {
    // A CFA from a zero fp, one that wraps, one past the stack's end, a misaligned pair, a zero
    // return address: each stops the walk (or is walked) as the general step does.
    let u = assorted();
    let mut cache = RuleCache::new();
    let top = HIGH + 0x1000;
    /// pc, sp, fp, and the stack's words.
    type Case = (u64, u64, u64, &'static [(u64, u64)]);
    let cases: [Case; 10] = [
        // fp-based CFA with fp = 0.
        (0x2011, HIGH + 0x100, 0, &[]),
        // fp-based CFA that wraps past 2^64.
        (0x2011, HIGH + 0x100, u64::MAX - 8, &[]),
        // fp-based CFA past the stack's end.
        (0x2011, HIGH + 0x100, top - 8, &[]),
        // The pair at rsp + 4.
        (
            0x8011,
            HIGH + 0x100,
            0,
            &[(HIGH + 0x104, 0), (HIGH + 0x10c, 0x1011)],
        ),
        // A zero return address.
        (
            0x1011,
            HIGH + 0x100,
            0,
            &[(HIGH + 0x100, 0), (HIGH + 0x108, 0)],
        ),
        // A pair below sp (fp-based CFA just above sp): the general step reads it.
        (
            0x2011,
            HIGH + 0x100,
            HIGH + 0xf8,
            &[(HIGH + 0xf8, 0), (HIGH + 0x100, 0x3011)],
        ),
        // CFA = rbp + 8 with rbp = 0: the pair's address wraps to 2^64 - 8.
        (0xc011, HIGH + 0x100, 0, &[]),
        // CFA = rbp + 8 with rbp near 2^64: the CFA wraps to a small address.
        (0xc011, HIGH + 0x100, u64::MAX - 4, &[]),
        // A CFA from sp past the stack's end: the pair straddles it.
        (0x1011, top - 8, 0, &[]),
        // A CFA from sp at the stack's end: the general step takes it.
        (
            0x1011,
            HIGH + 0x1000 - 16,
            0,
            &[(HIGH + 0x1000 - 16, 0), (HIGH + 0x1000 - 8, 0x3011)],
        ),
    ];
    for (i, &(pc, sp, fp, words)) in cases.iter().enumerate() {
        let mut s = StackBuilder::new(HIGH, 0x1000);
        for &(at, v) in words {
            s.put(at, v);
        }
        let start = Start {
            regs: Regs::new(pc, sp, fp),
            pc_is_return_address: true,
        };
        let general = walk_cfi(&u, Mode::Dwarf, start, &s);
        for _ in 0..2 {
            let fast = walk_cfi(Stepper::new(&u, &mut cache), Mode::Dwarf, start, &s);
            assert_eq!(fast, general, "case {i}");
        }
    }
}

#[test]
fn a_plain_rule_applied_alone_gives_the_general_step() {
    // `PlainRule::apply` (the live capture's step out of itself) against `Cfi::step`, for exact
    // and return-address pcs, on random stacks and registers.
    let u = assorted();
    let mut cache = RuleCache::new();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut applied = 0;
    for _ in 0..5_000 {
        let (s, start) = random_stack(&mut rng, HIGH);
        let regions = [s.region()];
        let mut mem = Strict(Image::new(&regions));
        let exact = !start.pc_is_return_address;
        let mut st = Stepper::new(&u, &mut cache);
        let general = match st.step::<X86_64, _>(&start.regs, exact, &mut mem) {
            CfiStep::Caller(r) => Some(r),
            _ => None,
        };
        let key = start.regs.pc.wrapping_add(exact as u64);
        if let Some(rule) = st
            .plain_rule(key)
            .filter(|r| r.kind & PlainRule::PLAIN != 0)
        {
            assert_eq!(rule.apply(&start.regs, &mut mem), general, "{start:?}");
            applied += 1;
        }
    }
    assert!(applied > 2_000, "{applied}");
}

/// Captures here, with this thread's rule cache held (as a signal handler interrupting a capture
/// finds it) or not; one capture call site for both.
#[inline(never)]
fn capture_holding(hold: bool, buf: &mut [Frame], u: &Unwinder, mode: Mode) -> Trace {
    THREAD_CACHE.with(|c| {
        let held = hold.then(|| c.borrow_mut());
        let t = core::hint::black_box(capture(buf, u, mode));
        drop(held);
        t
    })
}

#[test]
fn a_capture_while_the_thread_cache_is_held_walks_without_it() {
    captures_with_and_without_the_thread_cache();
}

/// The test's body, in a function of its own: a test function may be inlined whole into the
/// harness's `FnOnce::call_once` (a release build did), and its frames would then be named
/// after that; this one keeps its name, which the body looks for.
#[inline(never)]
fn captures_with_and_without_the_thread_cache() {
    let u = crate::modules::refresh().0;
    let sym = crate::symbols::Symbolizer::for_current_process();
    for mode in [Mode::Dwarf, Mode::Hybrid] {
        let mut got = Vec::new();
        let version = crate::transition::registry_version();
        // Twice each: the second plain-rule walk finds its rules in the cache.
        for (i, hold) in [false, false, true, true].into_iter().enumerate() {
            let mut buf = vec![Frame::EMPTY; 64];
            let (resumes, hits) = (
                memo::RESUMES.with(|r| r.get()),
                memo::HITS.with(|h| h.get()),
            );
            let t = capture_holding(hold, &mut buf, u, mode);
            // The second hybrid capture from here that resumes (through the thread's root
            // frames, where libc keeps no frame records) replays the first one's memo.
            // (The memo keys on the transition registry's version: a test on another thread
            // that registered a transition since the first capture made it miss, rightly.)
            if i == 1 && crate::transition::registry_version() == version {
                let resumed = memo::RESUMES.with(|r| r.get()) - resumes;
                assert_eq!(memo::HITS.with(|h| h.get()) - hits, resumed, "{mode:?}");
            }
            buf.truncate(t.len);
            assert!(t.len > 3, "{mode:?}, held {hold}: {t:?}");
            // This loop's call sites (an unrolled loop repeats them; inlining decides how many
            // frames are in this function) are not compared.
            let before = buf.len();
            buf.retain(|f| {
                !sym.lookup(f.lookup_pc()).is_some_and(|s| {
                    s.name
                        .contains("captures_with_and_without_the_thread_cache")
                })
            });
            assert!(buf.len() < before, "no frame in this test: {buf:?}");
            got.push((buf, t.stop));
        }
        assert!(got.windows(2).all(|w| w[0] == w[1]), "{mode:?}: {got:?}");
    }
}

/// Logs the addresses a walk reads (to change one of them).
struct Reads<'a>(Strict<'a>, Vec<u64>);

impl Memory for Reads<'_> {
    fn read_u64(&mut self, addr: u64) -> Option<u64> {
        self.1.push(addr);
        self.0.read_u64(addr)
    }
    fn stack_range(&mut self, addr: u64) -> Option<crate::memory::Range> {
        self.0.stack_range(addr)
    }
    unsafe fn read_pair_unchecked(&mut self, addr: u64) -> Option<(u64, u64)> {
        self.1.extend([addr, addr.wrapping_add(8)]);
        // SAFETY: forwarded with the caller's guarantee (which `Strict` checks).
        unsafe { self.0.read_pair_unchecked(addr) }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_memo_replays_a_walk_exactly_and_never_a_stale_one() {
    use crate::memory::Range;
    let u = assorted();
    let mut rules = RuleCache::new();
    let mut m = memo::Memo::EMPTY;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let seg = Range::new(HIGH, HIGH + WORDS * 8);
    let (mut replays, mut changed) = (0, 0);
    for case in 0..5_000 {
        let (mut s, start) = random_stack(&mut rng, HIGH);
        // A resume after one frame whose record, at sp - 16, held rbp.
        let at = memo::Resume {
            n: 1,
            seg,
            fp: start.regs.fp,
            floor: start.regs.sp.wrapping_sub(16),
        };
        let first = Frame {
            pc: start.regs.pc,
            ..Frame::EMPTY
        };
        let len = 4 + rng.below(16) as usize;
        // The general walker alone, and the addresses it read.
        let plain = |s: &StackBuilder| {
            let regions = [s.region()];
            let mut mem = Reads(Strict(Image::new(&regions)), Vec::new());
            let mut buf = vec![first; len];
            let mut w: Walker<X86_64, _, _> =
                Walker::with_cfi(crate::transition::Pinned::new(), &u, Mode::Hybrid);
            let t = w.resume_after_records(&mut mem, &mut buf, 1, seg, at.fp, at.floor);
            buf.truncate(t.len);
            ((buf, t.stop), mem.1)
        };
        let mut memoised = |s: &StackBuilder| {
            let regions = [s.region()];
            let mut mem = Strict(Image::new(&regions));
            let mut buf = vec![first; len];
            let before = memo::HITS.with(|h| h.get());
            let t = memo::resume(
                &mut m,
                Stepper::new(&u, &mut rules),
                u.generation,
                &mut mem,
                &mut buf,
                at,
            );
            buf.truncate(t.len);
            ((buf, t.stop), memo::HITS.with(|h| h.get()) > before)
        };
        let (want, read) = plain(&s);
        let (first_walk, replayed) = memoised(&s);
        assert_eq!(first_walk, want, "case {case}");
        // A memo from an earlier stack never answers for this one unless it is the same walk.
        let _ = replayed;
        let (second, replayed) = memoised(&s);
        assert_eq!(second, want, "case {case}, second");
        replays += replayed as usize;
        // Change a word the walk read: the memo must not answer with the old walk.
        if let Some(&addr) = read.get(rng.below(read.len().max(1) as u64) as usize) {
            if seg.contains_span(addr & !7, 8) {
                let v = match rng.below(3) {
                    0 => 0,
                    1 => HIGH + 8 * rng.below(WORDS),
                    _ => 0x1000 * (1 + rng.below(12)) + 0x10 + rng.below(0xe0),
                };
                s.put(addr & !7, v);
                let (want, _) = plain(&s);
                let (got, _) = memoised(&s);
                assert_eq!(got, want, "case {case}, after {addr:#x} = {v:#x}");
                changed += (got != second) as usize;
            }
        }
    }
    // Most walks are kept and replayed; many changes change the walk.
    assert!(replays > 2_500, "{replays}");
    assert!(changed > 500, "{changed}");
}

/// An unwinder that does not guess ([`Unwinder::set_guesses`], the loaded modules' unwinder in
/// a build without frame pointers): a Hybrid walk stops at a pc no module covers, exact or a
/// return address, instead of following the frame pointer there; one that guesses (the
/// default) follows the records.
#[test]
fn an_unwinder_that_does_not_guess_stops_where_no_cfi_covers_the_pc() {
    let mut s = StackBuilder::new(LO, 0x1000);
    s.record(LO + 0x100, LO + 0x120, 0x40_0000)
        .record(LO + 0x120, 0, 0x40_0100);
    let regions = [s.region()];
    let walk = |u: &Unwinder, start: Start| {
        let mut mem = Image::new(&regions);
        let mut buf = [Frame::EMPTY; 16];
        let mut w: Walker<X86_64, _, _> = Walker::with_cfi(NoTransitions, u, Mode::Hybrid);
        let t = w.walk(start, &mut mem, &mut buf);
        (t.len, t.stop)
    };
    let exact = Start::exact(Regs::new(0x41_1234, LO + 0xf0, LO + 0x100));
    let mut u = Unwinder::new();
    assert!(u.guesses());
    // The chain's zero says nothing where no CFI covers the pc (`zero_ends`).
    assert_eq!(walk(&u, exact), (3, StopReason::NoUnwindInfo));
    u.set_guesses(false);
    assert!(!u.guesses());
    assert_eq!(walk(&u, exact), (1, StopReason::NoUnwindInfo));
    // From a return address (not asked for by default: frame records decide there).
    let ret = Start {
        regs: Regs::new(0x41_1234, LO + 0xf0, LO + 0x100),
        pc_is_return_address: true,
    };
    assert_eq!(walk(&u, ret), (1, StopReason::NoUnwindInfo));
    // Through a Stepper (the live walks' cached path) too.
    let mut cache = RuleCache::new();
    let mut mem = Image::new(&regions);
    let mut buf = [Frame::EMPTY; 16];
    let mut w: Walker<X86_64, _, _> =
        Walker::with_cfi(NoTransitions, Stepper::new(&u, &mut cache), Mode::Hybrid);
    let t = w.walk(exact, &mut mem, &mut buf);
    assert_eq!((t.len, t.stop), (1, StopReason::NoUnwindInfo));
}

/// A guessing unwinder (Hybrid) at a pc no code can be at (a data word a stale rule read as a
/// return address: `0x6`, or a kernel-half value) stops there, `NotCode`, and writes no frame
/// for it: it went on by the frame pointer and ended `End` (found by outside use in the
/// twenty-sixth round).
#[test]
fn a_guessing_unwinder_stops_at_an_impossible_return_address() {
    for bad in [0x6, 0xffff_ffff_ffff_cd00] {
        let mut s = StackBuilder::new(LO, 0x1000);
        s.record(LO + 0x100, LO + 0x120, bad)
            .record(LO + 0x120, LO + 0x140, 0x40_0100)
            .record(LO + 0x140, 0, 0x40_0200);
        let regions = [s.region()];
        let u = Unwinder::new();
        assert!(u.guesses());
        let mut cache = RuleCache::new();
        let mut mem = Image::new(&regions);
        let mut buf = [Frame::EMPTY; 16];
        let mut w: Walker<X86_64, _, _> =
            Walker::with_cfi(NoTransitions, Stepper::new(&u, &mut cache), Mode::Hybrid);
        let start = Start::exact(Regs::new(0x41_1234, LO + 0xf0, LO + 0x100));
        let t = w
            .walk(start, &mut mem, &mut buf)
            .without_impossible_end(&buf);
        assert_eq!(
            (t.len, t.stop),
            (1, StopReason::NotCode),
            "{bad:#x}: {:?}",
            &buf[..4]
        );
    }
}

/// A PLT that no FDE describes (lld's, which links this test binary where rustc's default
/// linker is lld) gets rules from its bytes: the lazy header (`rsp + 8`, `rsp + 16` after its
/// push), each entry (`rsp + 8`, `rsp + 16` after its push). A walk from a pc at an entry's
/// first byte finds the caller's return address at `[rsp]` (it guessed by the frame pointer
/// and skipped that caller: found by outside use in the twenty-sixth round). Where the linker
/// wrote FDEs for the PLT (GNU ld) they give the same CFA.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_pc_in_a_plt_entry_steps_to_the_return_address_at_sp() {
    use object::{Object, ObjectSection};
    let data = std::fs::read("/proc/self/exe").unwrap();
    let file = object::File::parse(&*data).unwrap();
    let Some(plt) = file.section_by_name(".plt").filter(|s| s.size() >= 32) else {
        // A binary linked with -z now and no lazy PLT: nothing to check here.
        return;
    };
    let (addr, bytes) = (plt.address(), plt.data().unwrap());
    // The test needs lld's lazy layout: the header's push, then an entry's jmp and push.
    if !bytes.starts_with(&[0xff, 0x35]) || bytes[16..18] != [0xff, 0x25] || bytes[22] != 0x68 {
        return;
    }
    let t = parse_elf(ArchKind::X86_64, &data, 0, "self").unwrap();
    let cfa = |pc: u64| {
        let r = t.rule(pc).unwrap_or_else(|| panic!("no rule at {pc:#x}"));
        assert_eq!(
            (r.cfa, r.ra, r.ra_off),
            (CFA_SP, RA_AT, -8),
            "{pc:#x}: {r:?}"
        );
        r.cfa_off
    };
    assert_eq!(
        [cfa(addr), cfa(addr + 5), cfa(addr + 6), cfa(addr + 15)],
        [8, 8, 16, 16]
    );
    let e = addr + 16;
    assert_eq!(
        [cfa(e), cfa(e + 10), cfa(e + 11), cfa(e + 15)],
        [8, 8, 16, 16]
    );
    // A walk: interrupted at the entry's first byte, `[rsp]` the caller's return address; the
    // frame pointer a frame record further up whose return address a guess would take.
    let caller_ra = 0x7777_0000;
    let mut s = StackBuilder::new(LO, 0x1000);
    s.put(LO + 0x100, caller_ra)
        .record(LO + 0x200, 0, 0x8888_0000);
    let regions = [s.region()];
    let mut u = Unwinder::new();
    u.add(t);
    let mut mem = Image::new(&regions);
    let mut buf = [Frame::EMPTY; 4];
    let mut w: Walker<X86_64, _, _> = Walker::with_cfi(NoTransitions, &u, Mode::Hybrid);
    let start = Start::exact(Regs::new(e, LO + 0x100, LO + 0x200));
    let n = w.walk(start, &mut mem, &mut buf).len;
    assert!(n >= 2, "{:?}", &buf[..n]);
    assert_eq!((buf[0].pc, buf[1].pc), (e, caller_ra), "{:?}", &buf[..n]);
}

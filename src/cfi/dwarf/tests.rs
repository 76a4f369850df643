//! Prepared CFI on hand-built `.eh_frame` sections and synthetic stacks.

use super::*;
use crate::arch::X86_64;
use crate::frame::{StopReason, Via};
use crate::memory::{Image, StackBuilder};
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
    #[inline(never)]
    fn both(len: usize) -> Pair {
        let u = crate::modules::unwinder_or_refresh();
        let mut a = vec![Frame::EMPTY; len + 1];
        let ta = capture(&mut a, u, Mode::Hybrid);
        a.truncate(ta.len);
        let mut b = vec![Frame::EMPTY; len];
        let regs = crate::live::current_regs();
        let mut mem = crate::live::LiveMemory::for_sp(regs.sp, None);
        let (tb, _) = walk_live(Start::exact(regs), &mut mem, &mut b, u, Mode::Hybrid, true);
        b.truncate(tb.len);
        black_box(((a, ta), (b, tb)))
    }

    #[inline(never)]
    fn at_depth(depth: usize, len: usize) -> Pair {
        if depth == 0 {
            both(len)
        } else {
            black_box(at_depth(depth - 1, len))
        }
    }

    /// With a corrupt link in the record of `both`'s caller.
    #[inline(never)]
    fn with_corrupt_link(bad: u64) -> Pair {
        let fp = crate::live::current_regs().fp;
        let slot = fp as *mut u64;
        // SAFETY: `fp` is this function's own frame record (the crate's tests are built with
        // frame pointers); the saved value is restored before returning, and nothing reads it
        // in between but the captures.
        let saved = unsafe { core::ptr::read_volatile(slot) };
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(slot, bad) };
        let r = both(64);
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(slot, saved) };
        black_box(r)
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
            let run = hybrid_records(crate::live::current_regs(), &mut buf, map)
                .expect("the thread's stack is known");
            run.n
        }
        assert!(run_at(6, map) >= 7);
    }

    #[test]
    fn entry_matches_the_general_hybrid_walk() {
        crate::live::init_thread();
        // The chain's end, full buffers, a buffer of one.
        for (depth, len) in [
            (0, 1024),
            (40, 1024),
            (40, 16),
            (3, 1),
            (200, 1024),
            (200, 100),
        ] {
            let p = at_depth(depth, len);
            assert_same(&p, &format!("depth {depth}, buffer {len}"));
            let (a, ta) = &p.0;
            if len == 1024 {
                assert!(a.len() > depth + 2, "{depth}: {}", a.len());
                assert_eq!(ta.stop, StopReason::End, "{a:?}");
            } else {
                assert_eq!(a.len(), len + 1);
                assert_eq!(ta.stop, StopReason::BufferFull);
            }
        }
        // A stack switch: the entry stops at the system stack's transition, the general walker
        // crosses it.
        let p = crate::system_stack::run(|| at_depth(5, 1024));
        assert_same(&p, "system stack");
        assert!(
            p.0 .0.iter().any(|f| f.stack == 1),
            "not crossed: {:?}",
            p.0 .0
        );
        // A corrupt record: both stop at the same place, for the same reason.
        let here = crate::live::current_regs().sp;
        for bad in [0xdead_beef_0000_1230u64, 0x1, u64::MAX - 15, here - 4096, 0] {
            assert_same(&with_corrupt_link(bad), &format!("corrupt link {bad:#x}"));
        }
    }
}

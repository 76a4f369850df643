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

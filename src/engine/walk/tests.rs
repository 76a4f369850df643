//! Walker tests on synthetic memory images.

use super::*;
use crate::arch::{Aarch64, X86_64};
use crate::memory::{Image, Region, StackBuilder};
use crate::transition::{Base, NoTransitions, Rule, Transition, TransitionTable};

const LO: u64 = 0x10_0000;
const LEN: usize = 0x1000;

fn walk_x86(
    regions: &[Region<'_>],
    table: &TransitionTable,
    start: Start,
    cap: usize,
) -> (Vec<Frame>, StopReason) {
    let mut buf = vec![Frame::EMPTY; cap];
    let mut mem = Image::new(regions);
    let mut w: Walker<X86_64, _, _> = Walker::new(table);
    let t = w.walk(start, &mut mem, &mut buf);
    buf.truncate(t.len);
    (buf, t.stop)
}

fn pcs(frames: &[Frame]) -> Vec<u64> {
    frames.iter().map(|f| f.pc).collect()
}

/// A chain of `n` frames: record i at LO + 0x100 + i*0x20, return address 0x400000 + i.
fn chain(n: u64) -> StackBuilder {
    let mut s = StackBuilder::new(LO, LEN);
    for i in 0..n {
        let fp = LO + 0x100 + i * 0x20;
        let next = if i + 1 == n { 0 } else { fp + 0x20 };
        s.record(fp, next, 0x40_0000 + i);
    }
    s
}

fn start_at(fp: u64) -> Start {
    Start::exact(Regs::new(0x1234, fp - 0x10, fp))
}

#[test]
fn follows_a_chain_to_the_end() {
    let s = chain(5);
    let (f, stop) = walk_x86(
        &[s.region()],
        &TransitionTable::new(),
        start_at(LO + 0x100),
        64,
    );
    assert_eq!(stop, StopReason::End);
    assert_eq!(
        pcs(&f),
        vec![0x1234, 0x40_0000, 0x40_0001, 0x40_0002, 0x40_0003, 0x40_0004]
    );
    assert_eq!(f[0].via, Via::Regs);
    assert!(f[0].is_exact());
    assert!(f[1..]
        .iter()
        .all(|f| f.via == Via::FramePointer && f.stack == 0));
}

#[test]
fn buffer_full_and_max_depth() {
    let s = chain(20);
    let (f, stop) = walk_x86(
        &[s.region()],
        &TransitionTable::new(),
        start_at(LO + 0x100),
        4,
    );
    assert_eq!((f.len(), stop), (4, StopReason::BufferFull));
    let mut buf = [Frame::EMPTY; 64];
    let regions = [s.region()];
    let mut mem = Image::new(&regions);
    let mut w: Walker<X86_64, _, _> = Walker::new(NoTransitions);
    w.max_depth = 7;
    let t = w.walk(start_at(LO + 0x100), &mut mem, &mut buf);
    assert_eq!((t.len, t.stop), (7, StopReason::MaxDepth));
    let t = w.walk(start_at(LO + 0x100), &mut mem, &mut []);
    assert_eq!((t.len, t.stop), (0, StopReason::BufferFull));
}

#[test]
fn loop_is_not_monotonic() {
    let mut s = StackBuilder::new(LO, LEN);
    s.record(LO + 0x100, LO + 0x120, 1)
        .record(LO + 0x120, LO + 0x100, 2);
    let (f, stop) = walk_x86(
        &[s.region()],
        &TransitionTable::new(),
        start_at(LO + 0x100),
        64,
    );
    assert_eq!(stop, StopReason::NotMonotonic);
    assert_eq!(pcs(&f), vec![0x1234, 1, 2]);
    // A record pointing at itself (a thread caught just after `clone3`: the frame pointer is
    // the parent's pointer to the new thread's control block, whose first word is its own
    // address): its second word is no return address, and no frame comes from it, whether
    // it is the walk's first record or a later one.
    for depth in [0, 2] {
        let mut s = StackBuilder::new(LO, LEN);
        let me = LO + 0x100 + depth * 0x20;
        for i in 0..depth {
            let fp = LO + 0x100 + i * 0x20;
            s.record(fp, fp + 0x20, 0x40_0000 + i);
        }
        s.record(me, me, 0xdead_beef);
        let want: Vec<u64> = [0x1234]
            .into_iter()
            .chain((0..depth).map(|i| 0x40_0000 + i))
            .collect();
        let (f, stop) = walk_x86(
            &[s.region()],
            &TransitionTable::new(),
            start_at(LO + 0x100),
            64,
        );
        assert_eq!(
            (pcs(&f), stop),
            (want.clone(), StopReason::NotMonotonic),
            "depth {depth}"
        );
        // Hybrid, where no CFI covers the pc (glibc's closes before `clone3`'s last
        // instructions): the record is followed the same way.
        let regions = [s.region()];
        let mut mem = Image::new(&regions);
        let mut buf = [Frame::EMPTY; 16];
        let mut w: Walker<X86_64, _, _> = Walker::with_cfi(NoTransitions, NoCfi, Mode::Hybrid);
        let t = w.walk(start_at(LO + 0x100), &mut mem, &mut buf);
        assert_eq!(
            (pcs(&buf[..t.len]), t.stop),
            (want, StopReason::NotMonotonic),
            "hybrid, depth {depth}"
        );
    }
}

#[test]
fn misaligned_and_unreadable() {
    let mut s = StackBuilder::new(LO, LEN);
    s.record(LO + 0x100, LO + 0x123, 1);
    let (f, stop) = walk_x86(
        &[s.region()],
        &TransitionTable::new(),
        start_at(LO + 0x100),
        64,
    );
    assert_eq!((f.len(), stop), (2, StopReason::Misaligned));
    let mut s = StackBuilder::new(LO, LEN);
    s.record(LO + 0x100, 0x9999_0000, 1);
    let (f, stop) = walk_x86(
        &[s.region()],
        &TransitionTable::new(),
        start_at(LO + 0x100),
        64,
    );
    assert_eq!((f.len(), stop), (2, StopReason::ReadFailed));
    // The record straddles the top of the stack.
    let mut s = StackBuilder::new(LO, LEN);
    s.record(LO + 0x100, LO + LEN as u64 - 8, 1);
    let (_, stop) = walk_x86(
        &[s.region()],
        &TransitionTable::new(),
        start_at(LO + 0x100),
        64,
    );
    assert_eq!(stop, StopReason::ReadFailed);
}

#[test]
fn fp_near_u64_max_does_not_wrap() {
    for bad in [u64::MAX - 7, u64::MAX - 15, !7, 0xffff_ffff_ffff_fff0] {
        let mut s = StackBuilder::new(LO, LEN);
        s.record(LO + 0x100, bad, 1);
        let (f, stop) = walk_x86(
            &[s.region()],
            &TransitionTable::new(),
            start_at(LO + 0x100),
            64,
        );
        assert!(stop.is_truncated(), "{bad:#x}");
        assert_eq!(f.len(), 2);
    }
    // A stack region right at the top of the address space.
    let bytes = [0u8; 32];
    let regions = [Region {
        base: u64::MAX - 31,
        bytes: &bytes,
        is_stack: true,
    }];
    for fp in [u64::MAX - 7, u64::MAX - 15, u64::MAX - 31] {
        let (_, stop) = walk_x86(
            &regions,
            &TransitionTable::new(),
            Start::exact(Regs::new(1, u64::MAX - 31, fp)),
            8,
        );
        // The zero record at the bottom of the region ends the chain.
        assert!(stop.is_truncated() || stop == StopReason::End, "fp {fp:#x}");
    }
}

/// A stack at address 0 whose first frame pointer is no record: the hot loop reads nothing and
/// its floor is 0, which must not be stepped below (the `cfi` fuzz target found the underflow).
#[test]
fn a_stack_at_address_zero_with_no_record_is_clean() {
    let bytes = [0u8; 0x100];
    let regions = [Region {
        base: 0,
        bytes: &bytes,
        is_stack: true,
    }];
    for fp in [0, 3, 0x1000] {
        let (f, stop) = walk_x86(
            &regions,
            &TransitionTable::new(),
            Start::exact(Regs::new(1, 0, fp)),
            8,
        );
        assert_eq!(pcs(&f), [1], "fp {fp:#x}");
        assert!(
            stop.is_truncated() || stop == StopReason::End,
            "fp {fp:#x}: {stop:?}"
        );
    }
}

#[test]
fn zero_pc_ends() {
    let mut s = StackBuilder::new(LO, LEN);
    s.record(LO + 0x100, LO + 0x120, 0);
    let (f, stop) = walk_x86(
        &[s.region()],
        &TransitionTable::new(),
        start_at(LO + 0x100),
        64,
    );
    assert_eq!((f.len(), stop), (1, StopReason::End));
    let (f, stop) = walk_x86(
        &[s.region()],
        &TransitionTable::new(),
        Start::exact(Regs::new(0, 0, LO + 0x100)),
        8,
    );
    // An exact pc of 0 is a call through a null pointer: its frame, then its caller at sp
    // (nothing readable there: cut short; see `a_call_through_a_null_pointer_keeps_its_caller`).
    assert_eq!((f.len(), stop), (1, StopReason::ReadFailed));
}

#[test]
fn depth_bomb_is_bounded_by_the_buffer() {
    // 0x1000-byte stack filled with a perfect upward chain of 16-byte records: 255 frames.
    let mut s = StackBuilder::new(LO, LEN);
    let mut fp = LO;
    while fp + 32 <= LO + LEN as u64 {
        s.record(fp, fp + 16, 0x40_0000);
        fp += 16;
    }
    let (f, stop) = walk_x86(
        &[s.region()],
        &TransitionTable::new(),
        start_at(LO + 0x10),
        100,
    );
    assert_eq!((f.len(), stop), (100, StopReason::BufferFull));
    // With room for all of it, the chain (254 records, then a zero record) ends normally.
    let (f, stop) = walk_x86(
        &[s.region()],
        &TransitionTable::new(),
        start_at(LO + 0x10),
        1000,
    );
    assert_eq!(stop, StopReason::End);
    assert_eq!(f.len(), 1 + 254);
}

/// Two stacks: "system" at SYS, "user" at LO. The system chain's last record links into the user
/// stack (ContinueChain), or the user registers are saved at the system stack's top (SavedAt).
const SYS: u64 = 0x50_0000;
const SWITCH_RA: u64 = 0x77_0010;

fn two_stacks(link: bool) -> (StackBuilder, StackBuilder) {
    let user = chain(3); // user records at LO+0x100.., ra 0x400000..
    let mut sys = StackBuilder::new(SYS, LEN);
    sys.record(SYS + 0x100, SYS + 0x120, 0x60_0000);
    // The first function on the system stack: its caller is the switch function.
    let user_fp = if link { LO + 0x100 } else { 0 };
    sys.record(SYS + 0x120, user_fp, SWITCH_RA);
    // SavedAt layout: CFA = SYS+0x130; [cfa+0]=pad, [cfa+8]=sp, [cfa+16]=pc, [cfa+24]=fp.
    sys.put(SYS + 0x138, LO + 0xf0)
        .put(SYS + 0x140, 0x50_5050)
        .put(SYS + 0x148, LO + 0x100);
    (sys, user)
}

#[test]
fn continue_chain_crosses_only_with_the_table() {
    let (sys, user) = two_stacks(true);
    let regions = [sys.region(), user.region()];
    let start = start_at(SYS + 0x100);
    let (f, stop) = walk_x86(&regions, &TransitionTable::new(), start, 64);
    assert_eq!(stop, StopReason::NotMonotonic);
    assert_eq!(pcs(&f), vec![0x1234, 0x60_0000, SWITCH_RA]);

    let table = TransitionTable::from_entries([Transition {
        range: Range::new(SWITCH_RA, SWITCH_RA + 1),
        rule: Rule::ContinueChain,
        id: 7,
    }]);
    let (f, stop) = walk_x86(&regions, &table, start, 64);
    assert_eq!(stop, StopReason::End);
    assert_eq!(
        pcs(&f),
        vec![0x1234, 0x60_0000, SWITCH_RA, 0x40_0000, 0x40_0001, 0x40_0002]
    );
    let stacks: Vec<u16> = f.iter().map(|f| f.stack).collect();
    assert_eq!(stacks, vec![0, 0, 0, 1, 1, 1]);
    assert_eq!(f[3].via, Via::Transition);
    assert_eq!(f[3].transition, 7);
    assert_eq!(f[4].via, Via::FramePointer);
}

#[test]
fn saved_at_reads_the_user_registers() {
    let (sys, user) = two_stacks(false);
    let regions = [sys.region(), user.region()];
    let start = start_at(SYS + 0x100);
    let (f, stop) = walk_x86(&regions, &TransitionTable::new(), start, 64);
    assert_eq!(
        stop,
        StopReason::End,
        "a cut chain looks complete without the table"
    );
    assert_eq!(pcs(&f), vec![0x1234, 0x60_0000, SWITCH_RA]);

    let table = TransitionTable::from_entries([Transition {
        range: Range::new(SWITCH_RA, SWITCH_RA + 1),
        rule: Rule::SavedAt {
            base: Base::Cfa,
            pc: 16,
            sp: Some(8),
            fp: 24,
        },
        id: 3,
    }]);
    let (f, stop) = walk_x86(&regions, &table, start, 64);
    assert_eq!(stop, StopReason::End);
    assert_eq!(
        pcs(&f),
        vec![0x1234, 0x60_0000, SWITCH_RA, 0x50_5050, 0x40_0000, 0x40_0001, 0x40_0002]
    );
    assert_eq!(f[3].via, Via::Transition);
    assert_eq!((f[3].stack, f[3].transition), (1, 3));
    assert_eq!(f[6].stack, 1);
}

#[test]
fn bad_transition_is_clean() {
    let (mut sys, user) = two_stacks(false);
    sys.put(SYS + 0x148, 0xdead_0000); // saved fp unreadable: still one frame, then stop
    let regions = [sys.region(), user.region()];
    let table = TransitionTable::from_entries([Transition {
        range: Range::new(SWITCH_RA, SWITCH_RA + 1),
        rule: Rule::SavedAt {
            base: Base::Cfa,
            pc: 10_000,
            sp: None,
            fp: 24,
        },
        id: 3,
    }]);
    let (f, stop) = walk_x86(&regions, &table, start_at(SYS + 0x100), 64);
    assert_eq!(stop, StopReason::BadTransition);
    assert_eq!(f.len(), 3);
}

#[test]
fn transition_loops_are_bounded() {
    // Two system-stack frames whose records link to each other across two "stacks", both
    // switch points: the walk crosses back and forth until the limit.
    let mut a = StackBuilder::new(LO, LEN);
    let mut b = StackBuilder::new(SYS, LEN);
    a.record(LO + 0x100, SYS + 0x100, SWITCH_RA);
    b.record(SYS + 0x100, LO + 0x100, SWITCH_RA);
    let regions = [a.region(), b.region()];
    let table = TransitionTable::from_entries([Transition {
        range: Range::new(SWITCH_RA, SWITCH_RA + 1),
        rule: Rule::ContinueChain,
        id: 1,
    }]);
    let (f, stop) = walk_x86(&regions, &table, start_at(LO + 0x100), 1000);
    assert_eq!(stop, StopReason::TooManyTransitions);
    assert!(f.len() <= MAX_CROSSINGS as usize + 2);
}

#[test]
fn x86_64_signal_frame() {
    // Handler record at H, pretcode at H+8 (= __restore_rt), ucontext at H+16.
    let h = LO + 0x200;
    let uc = h + 16;
    let restore = 0x7f00_0000_1000u64;
    let mut s = chain(2); // interrupted code's chain at LO+0x100
    s.record(LO + 0x180, h, 0x60_0000); // the capture's own frame, below the handler
    s.record(h, 0x1111, restore);
    s.put(uc + crate::arch::x86_64::UC_RIP, 0x40_9999)
        .put(uc + crate::arch::x86_64::UC_RSP, LO + 0xf0)
        .put(uc + crate::arch::x86_64::UC_RBP, LO + 0x100);
    // The handler is deeper than the interrupted code here only because this is a picture; put
    // the interrupted chain above it to keep the same-stack monotonic rule honest.
    let regions = [s.region()];
    let table = TransitionTable::from_entries([Transition {
        range: Range::new(restore, restore + 1),
        rule: Rule::SignalFrame,
        id: 9,
    }]);
    let (f, stop) = walk_x86(&regions, &table, start_at(LO + 0x180), 64);
    assert_eq!(stop, StopReason::End);
    assert_eq!(
        pcs(&f),
        vec![0x1234, 0x60_0000, restore, 0x40_9999, 0x40_0000, 0x40_0001]
    );
    assert!(f[3].is_exact());
    assert_eq!(
        (f[3].via, f[3].stack, f[3].transition),
        (Via::Transition, 1, 9)
    );
}

#[test]
fn aarch64_pac_is_stripped_and_leaf_lr_used() {
    let mut s = StackBuilder::new(LO, LEN);
    let pac = 0x0023_0000_0000_0000u64;
    s.record(LO + 0x100, LO + 0x120, pac | 0x40_0000)
        .record(LO + 0x120, 0, 0x40_0100);
    let regions = [s.region()];
    let mut mem = Image::new(&regions);
    let mut buf = [Frame::EMPTY; 16];
    let mut w: Walker<Aarch64, _, _> = Walker::new(NoTransitions);
    let t = w.walk(
        Start::exact(Regs::new(0x40_2000, LO + 0xf0, LO + 0x100)),
        &mut mem,
        &mut buf,
    );
    assert_eq!(t.stop, StopReason::End);
    assert_eq!(pcs(&buf[..t.len]), vec![0x40_2000, 0x40_0000, 0x40_0100]);
}

#[test]
fn dwarf_mode_without_cfi_stops() {
    let s = chain(3);
    let regions = [s.region()];
    let mut mem = Image::new(&regions);
    let mut buf = [Frame::EMPTY; 16];
    let mut w: Walker<X86_64, _, _> = Walker::with_cfi(NoTransitions, NoCfi, Mode::Dwarf);
    let t = w.walk(start_at(LO + 0x100), &mut mem, &mut buf);
    assert_eq!((t.len, t.stop), (1, StopReason::NoUnwindInfo));
    let mut w: Walker<X86_64, _, _> = Walker::with_cfi(NoTransitions, NoCfi, Mode::Hybrid);
    let t = w.walk(start_at(LO + 0x100), &mut mem, &mut buf);
    assert_eq!((t.len, t.stop), (4, StopReason::End));
}

/// Hybrid, at a pc no CFI covers: the frame pointer of code built without frame records may
/// point at data (a `struct timespec` on the stack), whose second word was taken as a return
/// address, a frame in no code. A record whose saved frame pointer leads down the stack is no
/// frame record: the walk stops before its "return address". (FP mode keeps its contract: the
/// record's return address, then a stop.)
#[test]
fn hybrid_does_not_take_data_for_a_frame_record_where_no_cfi_covers_the_pc() {
    let mut s = StackBuilder::new(LO, LEN);
    // { tv_sec: 0x3_0000, tv_nsec: 0x1905_e2cb }
    s.record(LO + 0x100, 0x3_0000, 0x1905_e2cb);
    let regions = [s.region()];
    let run = |mode| {
        let mut mem = Image::new(&regions);
        let mut buf = [Frame::EMPTY; 16];
        let mut w: Walker<X86_64, _, _> = Walker::with_cfi(NoTransitions, NoCfi, mode);
        let t = w.walk(start_at(LO + 0x100), &mut mem, &mut buf);
        (pcs(&buf[..t.len]), t.stop)
    };
    assert_eq!(run(Mode::Hybrid), (vec![0x1234], StopReason::NoUnwindInfo));
    assert_eq!(
        run(Mode::FramePointer),
        (vec![0x1234, 0x1905_e2cb], StopReason::ReadFailed)
    );
    // A real chain is still followed where no CFI covers the pcs.
    let s = chain(3);
    let regions = [s.region()];
    let mut mem = Image::new(&regions);
    let mut buf = [Frame::EMPTY; 16];
    let mut w: Walker<X86_64, _, _> = Walker::with_cfi(NoTransitions, NoCfi, Mode::Hybrid);
    let t = w.walk(start_at(LO + 0x100), &mut mem, &mut buf);
    assert_eq!((t.len, t.stop), (4, StopReason::End));
}

#[test]
fn aarch64_leaf_without_record_uses_lr() {
    // The interrupted function (pc 0x40_2000) is a leaf with no frame record: x29 still points
    // at its caller's record, whose return address is the caller's caller. The caller itself is
    // only in lr (0x48_0000, far from pc).
    let mut s = StackBuilder::new(LO, LEN);
    s.record(LO + 0x100, 0, 0x40_0100);
    let regions = [s.region()];
    let mut mem = Image::new(&regions);
    let mut buf = [Frame::EMPTY; 16];
    let mut w: Walker<Aarch64, _, _> = Walker::new(NoTransitions);
    let regs = Regs {
        pc: 0x40_2000,
        sp: LO + 0xf0,
        fp: LO + 0x100,
        lr: 0x48_0000,
    };
    let t = w.walk(Start::exact(regs), &mut mem, &mut buf);
    assert_eq!(t.stop, StopReason::End);
    assert_eq!(pcs(&buf[..t.len]), vec![0x40_2000, 0x48_0000, 0x40_0100]);
    assert_eq!(buf[1].via, Via::Regs);
    // A stale lr close to pc (a non-leaf that already returned from a call) is not used.
    let regs = Regs {
        lr: 0x40_2100,
        ..regs
    };
    let t = w.walk(Start::exact(regs), &mut mem, &mut buf);
    assert_eq!(pcs(&buf[..t.len]), vec![0x40_2000, 0x40_0100]);
    // lr equal to the record's return address is the same frame, not a new one.
    let regs = Regs {
        lr: 0x40_0100,
        ..regs
    };
    let t = w.walk(Start::exact(regs), &mut mem, &mut buf);
    assert_eq!(pcs(&buf[..t.len]), vec![0x40_2000, 0x40_0100]);
    // x86_64 has no lr: nothing changes.
    let mut w: Walker<X86_64, _, _> = Walker::new(NoTransitions);
    let t = w.walk(
        Start::exact(Regs {
            lr: 0x48_0000,
            ..regs
        }),
        &mut mem,
        &mut buf,
    );
    assert_eq!(pcs(&buf[..t.len]), vec![0x40_2000, 0x40_0100]);
}

#[test]
fn link_base_follows_a_parent_link() {
    // corosensei's layout: the coroutine's root frame (record at SYS + 0x100) returns to the
    // trampoline and its saved fp is the parent link at SYS + 0x200, which holds the parent's
    // stack pointer (LO + 0x80). The parent saved its fp and pc there: [LO + 0x80] = LO + 0x100,
    // [LO + 0x88] = the resume address. The word after the link is the initial function (a bogus
    // return address that a naive walk reports).
    let mut sys = StackBuilder::new(SYS, LEN);
    sys.record(SYS + 0x100, SYS + 0x200, SWITCH_RA);
    sys.record(SYS + 0x200, LO + 0x80, 0x77_0000);
    let mut user = chain(2);
    user.record(LO + 0x80, LO + 0x100, 0x50_5050);
    let regions = [sys.region(), user.region()];
    let start = start_at(SYS + 0x100);
    let (f, stop) = walk_x86(&regions, &TransitionTable::new(), start, 64);
    assert_eq!(stop, StopReason::NotMonotonic);
    assert_eq!(pcs(&f), vec![0x1234, SWITCH_RA, 0x77_0000]);

    let table = TransitionTable::from_entries([Transition {
        range: Range::new(SWITCH_RA, SWITCH_RA + 1),
        rule: Rule::SavedAt {
            base: Base::Link,
            pc: 8,
            sp: None,
            fp: 0,
        },
        id: 4,
    }]);
    let (f, stop) = walk_x86(&regions, &table, start, 64);
    assert_eq!(stop, StopReason::End);
    assert_eq!(
        pcs(&f),
        vec![0x1234, SWITCH_RA, 0x50_5050, 0x40_0000, 0x40_0001]
    );
    assert_eq!(
        (f[2].via, f[2].stack, f[2].transition),
        (Via::Transition, 1, 4)
    );
}

/// aarch64 code for the leaf-lr tests: `caller` at 0x40_0000 calls `leaf` at 0x40_1000 with a
/// BL at 0x40_0008 (so lr = 0x40_000c); `leaf` is frameless: three plain instructions, then
/// RET; `framed` at 0x40_2000 pushes a record first; `after` (0x40_1010) follows leaf's RET.
fn a64_code() -> Vec<u8> {
    const NOP: u32 = 0xd503_201f;
    const RET: u32 = 0xd65f_03c0;
    const STP_PRE: u32 = 0xa9bf_7bfd; // stp x29, x30, [sp, #-16]!
    let mut words = vec![NOP; 0x3000 / 4];
    let bl = |from: u64, to: u64| {
        0x9400_0000 | (((to.wrapping_sub(from) as i64 / 4) as u32) & 0x03ff_ffff)
    };
    words[2] = bl(0x40_0008, 0x40_1000);
    words[4] = bl(0x40_0010, 0x40_2000);
    words[6] = 0xd63f_0100; // blr x8
    words[0x1000 / 4 + 3] = RET;
    words[0x2000 / 4] = STP_PRE;
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn a64_walk(code: &[u8], pc: u64, lr: u64) -> Vec<u64> {
    let mut s = StackBuilder::new(LO, LEN);
    s.record(LO + 0x100, 0, 0x50_0000);
    let regions = [
        s.region(),
        Region {
            base: 0x40_0000,
            bytes: code,
            is_stack: false,
        },
    ];
    let mut mem = Image::new(&regions);
    let mut buf = [Frame::EMPTY; 16];
    let mut w: Walker<Aarch64, _, _> = Walker::new(NoTransitions);
    let regs = Regs {
        pc,
        sp: LO + 0xf0,
        fp: LO + 0x100,
        lr,
    };
    let t = w.walk(Start::exact(regs), &mut mem, &mut buf);
    pcs(&buf[..t.len])
}

#[test]
fn aarch64_leaf_lr_after_a_bl_into_the_leaf_is_used_even_when_near() {
    let code = a64_code();
    // pc inside the frameless leaf, 0xff4 bytes from lr: the old distance rule dropped it.
    assert_eq!(
        a64_walk(&code, 0x40_1008, 0x40_000c),
        vec![0x40_1008, 0x40_000c, 0x50_0000]
    );
    // At the leaf's entry too.
    assert_eq!(
        a64_walk(&code, 0x40_1000, 0x40_000c),
        vec![0x40_1000, 0x40_000c, 0x50_0000]
    );
}

#[test]
fn aarch64_stale_or_bogus_lr_is_not_used() {
    let code = a64_code();
    // pc past the callee's RET: in another function, lr is stale.
    assert_eq!(
        a64_walk(&code, 0x40_1010, 0x40_000c),
        vec![0x40_1010, 0x50_0000]
    );
    // The callee pushed its frame record before pc: the record decides.
    assert_eq!(
        a64_walk(&code, 0x40_2008, 0x40_0014),
        vec![0x40_2008, 0x50_0000]
    );
    // pc below the BL's target: not in the callee.
    assert_eq!(
        a64_walk(&code, 0x40_0ff0, 0x40_000c),
        vec![0x40_0ff0, 0x50_0000]
    );
    // The instruction before lr is no call: lr is not a return address.
    assert_eq!(
        a64_walk(&code, 0x40_1008, 0x40_0020),
        vec![0x40_1008, 0x50_0000]
    );
    // Misaligned lr.
    assert_eq!(
        a64_walk(&code, 0x40_1008, 0x40_000d),
        vec![0x40_1008, 0x50_0000]
    );
    // Indirect call: the distance rule (near: dropped).
    assert_eq!(
        a64_walk(&code, 0x40_1008, 0x40_001c),
        vec![0x40_1008, 0x50_0000]
    );
}

#[test]
fn aarch64_frameless_signal_handler_crosses_through_lr() {
    use crate::arch::aarch64::{RT_SIGFRAME_SIZE, UC_PC, UC_SP, UC_X29, UC_X30};
    let code = a64_code();
    // Main stack: the interrupted leaf (0x40_1008, called from 0x40_0008) has no record; x29
    // is its caller's record, returning to 0x50_0000.
    let mut main = StackBuilder::new(LO, LEN);
    main.record(LO + 0x100, 0, 0x50_0000);
    // Alternate stack: the rt_sigframe at S (ucontext at S + 128), the kernel's frame record
    // right above it; the frameless handler's x29 points at that record.
    const ALT: u64 = 0x80_0000;
    let s = ALT + 0x100;
    let next_fp = s + RT_SIGFRAME_SIZE;
    let mut alt = StackBuilder::new(ALT, 0x2000);
    let uc = s + 128;
    alt.put(uc + UC_X29, LO + 0x100)
        .put(uc + UC_X30, 0x40_000c)
        .put(uc + UC_SP, LO + 0xf0)
        .put(uc + UC_PC, 0x40_1008)
        .record(next_fp, LO + 0x100, 0x40_000c);
    let trampoline = 0x7f_0000u64;
    let table = TransitionTable::from_entries([Transition {
        range: Range::new(trampoline, trampoline + 1),
        rule: Rule::SignalFrame,
        id: 5,
    }]);
    let regions = [
        main.region(),
        alt.region(),
        Region {
            base: 0x40_0000,
            bytes: &code,
            is_stack: false,
        },
    ];
    let mut mem = Image::new(&regions);
    let mut buf = [Frame::EMPTY; 16];
    let mut w: Walker<Aarch64, _, _> = Walker::new(&table);
    let handler = Regs {
        pc: 0x40_0100,
        sp: next_fp - 0x10,
        fp: next_fp,
        lr: trampoline,
    };
    let t = w.walk(Start::exact(handler), &mut mem, &mut buf);
    let f = &buf[..t.len];
    assert_eq!(
        pcs(f),
        vec![0x40_0100, trampoline, 0x40_1008, 0x40_000c, 0x50_0000]
    );
    assert_eq!((f[1].via, f[1].stack), (Via::Regs, 0));
    assert_eq!(
        (f[2].via, f[2].stack, f[2].transition),
        (Via::Transition, 1, 5)
    );
    assert!(f[2].is_exact());
    assert_eq!((f[3].via, f[3].stack), (Via::Regs, 1));
    assert_eq!(t.stop, StopReason::End);
    // Without the table entry nothing crosses: the trampoline's code is unreadable, so the
    // distance rule keeps lr as a plain frame, and the walk goes on through the kernel's
    // record on the same stack numbering.
    let mut w: Walker<Aarch64, _, _> = Walker::new(NoTransitions);
    let t = w.walk(Start::exact(handler), &mut mem, &mut buf);
    assert_eq!(pcs(&buf[..t.len])[..3], [0x40_0100, trampoline, 0x40_000c]);
    assert!(buf[..t.len].iter().all(|f| f.stack == 0));
}

/// A table with no entries whose page filter is `bytes` (the hybrid entry's marks).
#[cfg(feature = "dwarf")]
struct FilterOnly(&'static [core::sync::atomic::AtomicU8; 4096]);

#[cfg(feature = "dwarf")]
impl Transitions for FilterOnly {
    fn lookup(&self, _: u64) -> Option<Transition> {
        None
    }
    fn envelope(&self) -> Range {
        Range::new(0, 0)
    }
    fn page_filter(&self) -> Option<crate::transition::PageFilter<'_>> {
        Some(crate::transition::PageFilter::from_bytes(self.0))
    }
}

/// The hybrid entry's test, [`HomeRecords`]: inside the home map a zero filter byte alone
/// lets a record be followed; on a page marked `UNRECORDED_PAGE` the map decides; a
/// transition page, or a return address outside the map, stops the run.
#[cfg(feature = "dwarf")]
#[test]
fn home_records_trust_a_clear_page_and_ask_the_map_on_a_marked_one() {
    use crate::transition::{TRANSITION_PAGE, UNRECORDED_PAGE};
    use core::sync::atomic::{AtomicU8, Ordering};
    // The home module: lookup addresses 0x40_0000 .. 0x41_0000; one granule (that of return
    // address `no`) without a record, on page 0x40_3000, which is marked.
    let (lo, span) = (0x40_0000u64, 0x1_0000u64);
    let no = 0x40_3011u64;
    let mut bits = vec![u64::MAX; (span >> (RecordMap::SHIFT + 6)) as usize];
    let g = ((no - 1 - lo) >> RecordMap::SHIFT) as usize;
    bits[g / 64] &= !(1 << (g % 64));
    let map = RecordMap::new(lo, span, &bits);
    let marked: Vec<u64> = map.unrecorded_pages().collect();
    assert_eq!(marked, vec![0x40_3000]);
    // Return addresses of a chain, caller after caller.
    let run = |filter: &'static [AtomicU8; 4096], ras: &[u64]| -> usize {
        let mut s = StackBuilder::new(LO, LEN);
        for (i, &ra) in ras.iter().enumerate() {
            let fp = LO + 0x100 + i as u64 * 0x20;
            s.record(fp, fp + 0x20, ra);
        }
        let regions = [s.region()];
        let mut mem = Image::new(&regions);
        let mut out = vec![Frame::EMPTY; 16];
        let seg = Range::new(LO, LO + LEN as u64);
        let (n, _, _) = follow_records::<X86_64, _, _>(
            &mut mem,
            &FilterOnly(filter),
            &mut out,
            seg,
            LO,
            LO + 0x100,
            0,
            0,
            HomeRecords(map),
        );
        n
    };
    let leak =
        || -> &'static [AtomicU8; 4096] { Box::leak(Box::new([const { AtomicU8::new(0) }; 4096])) };
    let f = leak();
    f[0].store(TRANSITION_PAGE, Ordering::Relaxed);
    for p in &marked {
        f[((p >> 12) % 4096) as usize].store(UNRECORDED_PAGE, Ordering::Relaxed);
    }
    // Clear pages, then a marked page whose granule keeps a record, then the one that does
    // not: the run stops there.
    assert_eq!(run(f, &[0x40_1005, 0x40_2000, 0x40_3005, no, 0x40_4000]), 3);
    // Outside the map (just past it: lookup address lo + span) the run stops too.
    assert_eq!(run(f, &[0x40_1005, lo + span + 1, 0x40_4000]), 1);
    assert_eq!(run(f, &[0x40_1005, lo, 0x40_4000]), 1);
    // A transition on a clear page stops it.
    f[0x402].fetch_or(TRANSITION_PAGE, Ordering::Relaxed);
    assert_eq!(run(f, &[0x40_1005, 0x40_2000, 0x40_4000]), 1);
    // With nothing marked, a clear byte is trusted inside the map: the mark is what keeps
    // the entry exact (the unwinder sets it before it can be used).
    let g = leak();
    g[0].store(TRANSITION_PAGE, Ordering::Relaxed);
    assert_eq!(run(g, &[0x40_1005, no, 0x40_4000]), 3);
    // An ordinary closure never trusts the byte: the map alone decides.
    let mut s = StackBuilder::new(LO, LEN);
    for (i, &ra) in [0x40_1005u64, no, 0x40_4000].iter().enumerate() {
        let fp = LO + 0x100 + i as u64 * 0x20;
        s.record(fp, fp + 0x20, ra);
    }
    let regions = [s.region()];
    let mut mem = Image::new(&regions);
    let mut out = vec![Frame::EMPTY; 16];
    let (n, _, _) = follow_records::<X86_64, _, _>(
        &mut mem,
        &FilterOnly(g),
        &mut out,
        Range::new(LO, LO + LEN as u64),
        LO,
        LO + 0x100,
        0,
        0,
        |ra| map.keeps(ra),
    );
    assert_eq!(n, 1);
}

/// `RecordMap::unrecorded_pages` lists exactly the pages holding a return address inside the
/// map that the map does not say keeps a record (granules straddling pages included).
#[cfg(feature = "dwarf")]
#[test]
fn unrecorded_pages_are_exactly_the_pages_with_a_return_address_without_a_record() {
    let lo = 0x7_0fe0u64;
    let span = 0x3000u64 - 0x7;
    let mut bits = vec![u64::MAX; 3];
    // Granules 1 (page 0x7_0000 .. 0x7_1000 boundary: lookups 0x7_0ff0..0x7_1000), 70, 130.
    for g in [1usize, 70, 130, 190] {
        bits[g / 64] &= !(1 << (g % 64));
    }
    let map = RecordMap::new(lo, span, &bits);
    let listed: Vec<u64> = map.unrecorded_pages().collect();
    let mut want = Vec::new();
    for ra in lo + 1..=lo + span + 1 {
        if map.covers(ra) && !map.keeps(ra) && want.last() != Some(&(ra & !0xfff)) {
            want.push(ra & !0xfff);
        }
    }
    assert_eq!(listed, want);
    assert!(want.contains(&0x7_1000) && want.contains(&0x7_0000));
}

/// CFI that covers every pc and can never be evaluated (its stack is not there).
struct FailingCfi;

impl Cfi for FailingCfi {
    fn step<A: Arch, M: Memory>(&mut self, _: &Regs, _: bool, _: &mut M) -> CfiStep {
        CfiStep::Failed
    }
    fn keeps_frame_record(&mut self, _ra: u64) -> bool {
        false
    }
}

#[test]
fn hybrid_reports_unreadable_cfi_not_the_frame_pointer_guess() {
    // A leaf built without frame pointers: rbp holds a misaligned value, and its CFI cannot be
    // evaluated (a truncated core: the stack it reads is missing).
    let s = chain(3);
    let start = Start::exact(Regs::new(0x1234, LO + 0x80, 0x1003));
    let table = TransitionTable::new();
    let regions = [s.region()];
    let run = |cfi_fails: bool| {
        let mut buf = vec![Frame::EMPTY; 8];
        let mut mem = Image::new(&regions);
        let t = if cfi_fails {
            Walker::<X86_64, _, _>::with_cfi(&table, FailingCfi, Mode::Hybrid)
                .walk(start, &mut mem, &mut buf)
        } else {
            Walker::<X86_64, _, _>::with_cfi(&table, NoCfi, Mode::Hybrid)
                .walk(start, &mut mem, &mut buf)
        };
        (t.len, t.stop)
    };
    assert_eq!(run(true), (1, StopReason::ReadFailed));
    // Without CFI for the pc the frame-pointer guess is all there is, and its failure stands.
    assert_eq!(run(false), (1, StopReason::Misaligned));
}

#[test]
fn a_call_through_a_null_pointer_keeps_its_caller() {
    // pc 0: the call pushed its return address at sp (x86_64); the caller's frame pointer is
    // untouched, and its record leads on up the chain.
    let mut s = chain(2);
    let sp = LO + 0x80;
    s.put(sp, 0x40_1234);
    let (f, stop) = walk_x86(
        &[s.region()],
        &TransitionTable::new(),
        Start::exact(Regs::new(0, sp, LO + 0x100)),
        64,
    );
    assert_eq!(stop, StopReason::End);
    assert_eq!(pcs(&f), vec![0, 0x40_1234, 0x40_0000, 0x40_0001]);
    assert!(f[0].is_exact() && !f[1].is_exact());
    // aarch64: the return address is in lr.
    let s = chain(2);
    let regions = [s.region()];
    let mut mem = Image::new(&regions);
    let mut buf = [Frame::EMPTY; 16];
    let mut w: Walker<Aarch64, _, _> = Walker::new(NoTransitions);
    let mut r = Regs::new(0, LO + 0x80, LO + 0x100);
    r.lr = 0x40_2000;
    let t = w.walk(Start::exact(r), &mut mem, &mut buf);
    assert_eq!(pcs(&buf[..t.len]), vec![0, 0x40_2000, 0x40_0000, 0x40_0001]);
    // Nothing readable at sp: the null frame alone, reported as cut short.
    let (f, stop) = walk_x86(
        &[chain(2).region()],
        &TransitionTable::new(),
        Start::exact(Regs::new(0, LO + 0x2000, LO + 0x100)),
        64,
    );
    assert_eq!((pcs(&f), stop), (vec![0], StopReason::ReadFailed));
}

/// Frame-record CFI with plain rules at hand for every return address but `entry`, where no
/// CFI covers the byte before and the return address is a function's first instruction (a
/// return address a runtime pushed itself). Records every [`Cfi::step`] asked.
struct RecordRules {
    entry: u64,
    steps: Vec<(u64, bool)>,
}

impl Cfi for RecordRules {
    fn step<A: Arch, M: Memory>(&mut self, regs: &Regs, exact: bool, mem: &mut M) -> CfiStep {
        self.steps.push((regs.pc, exact));
        if regs.pc == self.entry {
            if !exact {
                return CfiStep::NoInfo;
            }
            // At the entry: the return address at sp, fp untouched.
            return match mem.read_u64(regs.sp) {
                Some(pc) => CfiStep::Caller(Regs::new(pc, regs.sp + 8, regs.fp)),
                None => CfiStep::Failed,
            };
        }
        match mem.read_pair(regs.fp) {
            Some((fp, pc)) if regs.fp & 7 == 0 => CfiStep::Caller(Regs::new(pc, regs.fp + 16, fp)),
            _ => CfiStep::Failed,
        }
    }

    const PLAIN_RULES: bool = true;

    fn plain_rule(&mut self, ra: u64) -> Option<PlainRule> {
        (ra != self.entry).then_some(PlainRule {
            cfa_off: 16,
            pair_off: 0,
            ra_off: -8,
            fp_off: -16,
            kind: PlainRule::PLAIN | PlainRule::CFA_FP | PlainRule::FP_SAVED | PlainRule::PAIR,
        })
    }
}

#[test]
fn a_dwarf_walk_cut_with_a_plain_rule_at_hand_asks_no_step_for_its_last_frame() {
    let s = chain(5);
    let regions = [s.region()];
    let table = TransitionTable::new();
    let run = |entry: u64| {
        let mut cfi = RecordRules {
            entry,
            steps: Vec::new(),
        };
        let mut buf = vec![Frame::EMPTY; 3];
        let mut mem = Image::new(&regions);
        let t = Walker::<X86_64, _, _>::with_cfi(&table, &mut cfi, Mode::Dwarf).walk(
            start_at(LO + 0x100),
            &mut mem,
            &mut buf,
        );
        assert_eq!((t.len, t.stop), (3, StopReason::BufferFull));
        assert_eq!(pcs(&buf), vec![0x1234, 0x40_0000, 0x40_0001]);
        (buf[2].is_exact(), cfi.steps)
    };
    // The cut's last return address has a plain rule (a cache hit): CFI covers the byte
    // before, so no entry is looked for, and no step is asked for it.
    let (exact, steps) = run(0);
    assert!(!exact);
    assert!(!steps.contains(&(0x40_0001, false)), "{steps:x?}");
    // Without one, the cut asks as the next step would, and marks a pushed entry exact.
    let (exact, steps) = run(0x40_0001);
    assert!(exact, "{steps:x?}");
    assert!(steps.contains(&(0x40_0001, false)) && steps.contains(&(0x40_0001, true)));
}

/// CFI for [`an_interrupted_switch_function_is_crossed_by_its_cfi`]: at `switch_pc` (exact)
/// the caller is at the frame record `fp` points to (the switch function's own record, on the
/// stack it is leaving, as `push rbp; mov rbp, rsp; mov rsp, rcx` leaves it); elsewhere the
/// frame record rule, and a zero frame pointer is the outermost frame.
struct SwitchCfi {
    switch_pc: u64,
    /// Answer "the frame record's rule" at `switch_pc` (as the real CFI of
    /// `push rbp; mov rbp, rsp` code is summarised), not the caller itself.
    says_record: bool,
}

impl Cfi for SwitchCfi {
    fn step<A: Arch, M: Memory>(&mut self, regs: &Regs, exact: bool, mem: &mut M) -> CfiStep {
        if regs.pc == self.switch_pc && !exact {
            return CfiStep::NoInfo;
        }
        if regs.pc == self.switch_pc && self.says_record {
            return CfiStep::FramePointer;
        }
        if regs.fp == 0 {
            // The outermost frame (an undefined return address).
            return CfiStep::Caller(Regs::new(0, regs.sp + 8, 0));
        }
        match mem.read_pair(regs.fp) {
            Some((fp, pc)) if regs.fp & 7 == 0 => CfiStep::Caller(Regs::new(pc, regs.fp + 16, fp)),
            _ => CfiStep::Failed,
        }
    }
}

/// A thread interrupted inside psm's `rust_psm_on_stack` at its `call` (sp already on the
/// new stack, the frame record and the caller on the old one; the storm test's SIGPROF
/// samples there gave one frame), or in corosensei's coroutine back on its parent's stack
/// before its `pop rbp; ret` (not a registered function): the CFI's caller on the other stack
/// is a crossing, and the walk goes on to the thread's entry; marked with the switch's id when
/// the function is registered. A CFA on no stack the memory knows is still refused. In both
/// stack orders (the new stack above or below the old one), and in Hybrid and Dwarf modes.
#[test]
fn an_interrupted_switch_function_is_crossed_by_its_cfi() {
    const SWITCH: u64 = 0x77_0000;
    let switch_pc = SWITCH + 7;
    let table = TransitionTable::from_entries([Transition {
        range: Range::new(SWITCH, SWITCH + 0xe),
        rule: Rule::ContinueChain,
        id: 7,
    }]);
    let old = chain(3);
    for new_at in [SYS, LO - 0x4000] {
        let new = StackBuilder::new(new_at, LEN);
        let regions = [old.region(), new.region()];
        let start = Start::exact(Regs::new(switch_pc, new_at + 0x800, LO + 0x100));
        for (mode, says_record) in [
            (Mode::Hybrid, false),
            (Mode::Dwarf, false),
            (Mode::Hybrid, true),
            (Mode::Dwarf, true),
        ] {
            let run = |table: &TransitionTable| {
                let mut cfi = SwitchCfi {
                    switch_pc,
                    says_record,
                };
                let mut buf = vec![Frame::EMPTY; 16];
                let mut mem = Image::new(&regions);
                let t = Walker::<X86_64, _, _>::with_cfi(table, &mut cfi, mode)
                    .walk(start, &mut mem, &mut buf);
                (buf[..t.len].to_vec(), t.stop)
            };
            let (f, stop) = run(&table);
            let what = format!("{mode:?} at {new_at:#x}, record rule {says_record}");
            assert_eq!(stop, StopReason::End, "{what}");
            assert_eq!(pcs(&f), vec![switch_pc, 0x40_0000, 0x40_0001, 0x40_0002]);
            let stacks: Vec<u16> = f.iter().map(|f| f.stack).collect();
            assert_eq!(stacks, vec![0, 1, 1, 1], "{what}");
            assert_eq!((f[1].via, f[1].transition), (Via::Transition, 7), "{what}");
            assert!(f[0].is_exact());

            let (f, stop) = run(&TransitionTable::new());
            if says_record {
                // A frame record off the stack, not in a registered switch function: a frame
                // pointer gone astray as far as the walk can tell (as in frame-pointer mode).
                assert_eq!(stop, StopReason::NotMonotonic, "{what}, no table");
                assert_eq!(pcs(&f), vec![switch_pc]);
                continue;
            }
            assert_eq!(stop, StopReason::End, "{what}, no table");
            assert_eq!(pcs(&f), vec![switch_pc, 0x40_0000, 0x40_0001, 0x40_0002]);
            // Unmarked: the stack index stays (it rises only at a marked transition).
            let stacks: Vec<u16> = f.iter().map(|f| f.stack).collect();
            assert_eq!(stacks, vec![0, 0, 0, 0], "{what}, no table");
            assert_eq!(
                (f[1].via, f[1].transition),
                (Via::Dwarf, 0),
                "{what}, no table"
            );
        }
        // Frame-pointer mode (no CFI): the record off the stack is crossed to only in a
        // registered switch function; elsewhere it may be a frame pointer gone astray.
        let (f, stop) = walk_x86(&regions, &table, start, 16);
        assert_eq!(stop, StopReason::End);
        assert_eq!(pcs(&f), vec![switch_pc, 0x40_0000, 0x40_0001, 0x40_0002]);
        assert_eq!(
            (f[1].stack, f[1].via, f[1].transition),
            (1, Via::Transition, 7)
        );
        let (f, stop) = walk_x86(&regions, &TransitionTable::new(), start, 16);
        assert_eq!((pcs(&f), stop), (vec![switch_pc], StopReason::NotMonotonic));
    }
    // sp at the very top of the new stack (psm and stacker put it there: nothing pushed yet),
    // so on no stack, and the new stack above the old one: the walk starts on the frame's
    // stack, and sp, off it, bounds nothing there.
    let new = StackBuilder::new(SYS, LEN);
    let regions = [old.region(), new.region()];
    let start = Start::exact(Regs::new(switch_pc, SYS + LEN as u64, LO + 0x100));
    for says_record in [false, true] {
        let mut cfi = SwitchCfi {
            switch_pc,
            says_record,
        };
        let mut buf = vec![Frame::EMPTY; 16];
        let mut mem = Image::new(&regions);
        let t = Walker::<X86_64, _, _>::with_cfi(&table, &mut cfi, Mode::Hybrid)
            .walk(start, &mut mem, &mut buf);
        assert_eq!(t.stop, StopReason::End, "record rule {says_record}");
        assert_eq!(
            pcs(&buf[..t.len]),
            vec![switch_pc, 0x40_0000, 0x40_0001, 0x40_0002]
        );
    }
    // The frame record (and so the CFA) readable but on no stack the memory has: refused,
    // one frame, with the reason a frame pointer gone astray gets.
    let new = StackBuilder::new(SYS, LEN);
    let not_a_stack = Region {
        is_stack: false,
        ..old.region()
    };
    let regions = [new.region(), not_a_stack];
    let mut cfi = SwitchCfi {
        switch_pc,
        says_record: true,
    };
    let mut buf = vec![Frame::EMPTY; 16];
    let mut mem = Image::new(&regions);
    let start = Start::exact(Regs::new(switch_pc, SYS + 0x800, LO + 0x100));
    let t = Walker::<X86_64, _, _>::with_cfi(&table, &mut cfi, Mode::Hybrid)
        .walk(start, &mut mem, &mut buf);
    assert_eq!((t.len, t.stop), (1, StopReason::ReadFailed));
}

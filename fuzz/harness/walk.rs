//! `walk`: the walker over an arbitrary memory image, registers, transition table, CFI answers,
//! architecture and mode.
//!
//! # Input format (see [`Input::decode`])
//! ```text
//! flags u8        bit 0 aarch64, bit 1 start pc is a return address, bits 2-3 mode
//!                 (0 fp, 1 dwarf, 2 hybrid, 3 fp), bit 4 a PAC mask follows
//! max_depth u16   % 1024 (0: no limit)
//! buf_len u16     % 1024
//! [pac_mask u64]
//! pc sp fp lr     4 addresses
//! n u8 (% 9)      transitions: lo address, len u8, rule, id u16
//! n u8 (% 17)     CFI answers, used in turn by the fake CFI unwinder
//! n u8 (% 4 + 1)  regions: base, flags u8 (bit 0 stack), len u16 (% 16385), bytes
//! address         tag u8; tag < 0xc0: BASES[tag % 4] + u16, else a raw u64
//! rule            kind u8 % 4: ContinueChain | SavedAt{base u8, pc i16, [sp i16], fp i16} |
//!                 SignalFrame | Context{block address, pc u16, sp u16, fp u16}
//! ```
//!
//! # What it checks
//! - No panic, and every read goes through a [`Checked`] memory that asserts it stays inside
//!   the image (and that `read_pair_unchecked` is only used inside a stack range the memory
//!   handed out); the number of memory calls is bounded by the buffer length (termination).
//! - The trace: at most `buf_len` / `max_depth` frames, the first is the start pc, no zero pc,
//!   stack indices rise by at most one per frame and only at a transition, the stop reason
//!   agrees with the length.
//! - Determinism, and prefixes: the walk with a smaller `max_depth` is a prefix of the full one.
//! - On x86_64, the frame-pointer fast path agrees exactly with the general step and with the
//!   hybrid fast loop (the same walk in hybrid mode with a CFI that always says "use the frame
//!   pointer", trusting frame records or not).

use super::Bytes;
use unwind::arch::{Aarch64, Arch, ArchKind, Regs, X86_64};
use unwind::memory::{Image, Memory, Range, Region};
use unwind::transition::{Base, Rule, Transition, TransitionTable};
use unwind::walk::{Cfi, CfiStep, Mode, Start, Walker, MAX_CROSSINGS};
use unwind::{Frame, StopReason, Via};

/// Region bases an address tag picks from: small numbers, easy for a fuzzer to write into
/// stack words.
pub const BASES: [u64; 4] = [0x1_0000, 0x2_0000, 0x3_0000, 0x4_0000];

/// Largest region.
pub const MAX_REGION: usize = 16384;

fn addr(b: &mut Bytes<'_>) -> u64 {
    let tag = b.u8();
    if tag < 0xc0 {
        BASES[(tag % 4) as usize] + b.u16() as u64
    } else {
        b.u64()
    }
}

fn off(b: &mut Bytes<'_>) -> i32 {
    b.u16() as i16 as i32
}

/// What the fake CFI unwinder answers, in turn, at each step.
#[derive(Clone, Copy, Debug)]
pub enum CfiOp {
    /// No CFI for this pc.
    NoInfo,
    /// CFI that cannot be evaluated.
    Failed,
    /// "Use the frame pointer".
    FramePointer,
    /// A CFA rule: CFA = (sp or fp) + offset, return address at CFA - 8, fp at CFA - 16.
    Cfa {
        /// Offset from fp rather than sp.
        from_fp: bool,
        /// CFA offset.
        offset: i32,
    },
    /// These caller registers, whatever memory says.
    Raw(Regs),
    /// These caller registers, found through a signal trampoline's CFI (the pc is exact).
    Signal(Regs),
}

/// A decoded `walk` input.
#[derive(Clone, Debug)]
pub struct Input {
    /// Architecture.
    pub arch: ArchKind,
    /// Where the walk starts.
    pub start: Start,
    /// Unwinding mode.
    pub mode: Mode,
    /// Walker max depth.
    pub max_depth: usize,
    /// Frame buffer length.
    pub buf_len: usize,
    /// Pointer-authentication mask.
    pub pac_mask: u64,
    /// Transition table.
    pub table: TransitionTable,
    /// CFI answers.
    pub cfi: Vec<CfiOp>,
    /// Regions: base, stack?, bytes.
    pub regions: Vec<(u64, bool, Vec<u8>)>,
}

impl Input {
    /// Decodes any byte string.
    pub fn decode(data: &[u8]) -> Input {
        let mut b = Bytes::new(data);
        let flags = b.u8();
        let arch = if flags & 1 != 0 {
            ArchKind::Aarch64
        } else {
            ArchKind::X86_64
        };
        let mode = match (flags >> 2) & 3 {
            1 => Mode::Dwarf,
            2 => Mode::Hybrid,
            _ => Mode::FramePointer,
        };
        let max_depth = (b.u16() % 1024) as usize;
        let buf_len = (b.u16() % 1024) as usize;
        let pac_mask = if flags & 0x10 != 0 { b.u64() } else { 0 };
        let regs = Regs {
            pc: addr(&mut b),
            sp: addr(&mut b),
            fp: addr(&mut b),
            lr: addr(&mut b),
        };
        let start = Start {
            regs,
            pc_is_return_address: flags & 2 != 0,
        };
        let mut table = TransitionTable::new();
        for _ in 0..b.u8() % 9 {
            let lo = addr(&mut b);
            let hi = lo.saturating_add(b.u8() as u64);
            let rule = match b.u8() % 4 {
                0 => Rule::ContinueChain,
                1 => {
                    let base = match b.u8() % 4 {
                        0 => Base::Fp,
                        1 => Base::Cfa,
                        2 => Base::SavedFp,
                        _ => Base::Link,
                    };
                    let pc = off(&mut b);
                    let sp = if b.u8() & 1 != 0 {
                        Some(off(&mut b))
                    } else {
                        None
                    };
                    Rule::SavedAt {
                        base,
                        pc,
                        sp,
                        fp: off(&mut b),
                    }
                }
                2 => Rule::SignalFrame,
                _ => Rule::Context {
                    block: addr(&mut b),
                    pc: b.u16() as u32,
                    sp: b.u16() as u32,
                    fp: b.u16() as u32,
                },
            };
            let id = b.u16();
            table.insert(Transition {
                range: Range::new(lo, hi),
                rule,
                id,
            });
        }
        let mut cfi = Vec::new();
        for _ in 0..b.u8() % 17 {
            cfi.push(match b.u8() % 6 {
                0 => CfiOp::NoInfo,
                1 => CfiOp::Failed,
                2 => CfiOp::FramePointer,
                3 => CfiOp::Cfa {
                    from_fp: b.u8() & 1 != 0,
                    offset: off(&mut b),
                },
                4 => CfiOp::Raw(Regs::new(addr(&mut b), addr(&mut b), addr(&mut b))),
                _ => CfiOp::Signal(Regs::new(addr(&mut b), addr(&mut b), addr(&mut b))),
            });
        }
        let mut regions = Vec::new();
        for _ in 0..b.u8() % 4 + 1 {
            let tag = b.u8();
            let base = if tag < 0xc0 {
                BASES[(tag % 4) as usize]
            } else {
                b.u64()
            };
            let stack = b.u8() & 1 != 0;
            let len = b.u16() as usize % (MAX_REGION + 1);
            regions.push((base, stack, b.take(len).to_vec()));
        }
        Input {
            arch,
            start,
            mode,
            max_depth,
            buf_len,
            pac_mask,
            table,
            cfi,
            regions,
        }
    }
}

/// The fake CFI unwinder: answers from the script, in turn (cycling).
pub struct ScriptCfi<'a> {
    ops: &'a [CfiOp],
    next: usize,
    /// Number of calls.
    pub calls: usize,
}

impl<'a> ScriptCfi<'a> {
    /// Starts at the first answer.
    pub fn new(ops: &'a [CfiOp]) -> Self {
        ScriptCfi {
            ops,
            next: 0,
            calls: 0,
        }
    }
}

impl Cfi for ScriptCfi<'_> {
    fn step<A: Arch, M: Memory>(&mut self, regs: &Regs, _exact: bool, mem: &mut M) -> CfiStep {
        self.calls += 1;
        if self.ops.is_empty() {
            return CfiStep::NoInfo;
        }
        let op = self.ops[self.next % self.ops.len()];
        self.next += 1;
        match op {
            CfiOp::NoInfo => CfiStep::NoInfo,
            CfiOp::Failed => CfiStep::Failed,
            CfiOp::FramePointer => CfiStep::FramePointer,
            CfiOp::Cfa { from_fp, offset } => {
                let base = if from_fp { regs.fp } else { regs.sp };
                let Some(cfa) = base.checked_add_signed(offset as i64) else {
                    return CfiStep::Failed;
                };
                let (Some(ra_at), Some(fp_at)) = (cfa.checked_sub(8), cfa.checked_sub(16)) else {
                    return CfiStep::Failed;
                };
                match (mem.read_u64(ra_at), mem.read_u64(fp_at)) {
                    (Some(pc), Some(fp)) => CfiStep::Caller(Regs::new(pc, cfa, fp)),
                    _ => CfiStep::Failed,
                }
            }
            CfiOp::Raw(r) => CfiStep::Caller(r),
            CfiOp::Signal(r) => CfiStep::Signal(r),
        }
    }

    /// Hybrid mode's question: yes when the answer `step` would give next is not a CFI rule.
    fn keeps_frame_record(&mut self, _ra: u64) -> bool {
        match self.ops.get(self.next % self.ops.len().max(1)) {
            None => true,
            Some(op) => matches!(op, CfiOp::NoInfo | CfiOp::Failed | CfiOp::FramePointer),
        }
    }
}

/// A CFI unwinder that always says "use the frame pointer" (for the fast-path differential);
/// in hybrid mode it says the frame record can be trusted when `.0` (the hybrid fast loop), or
/// not (every frame through the general step).
pub struct AlwaysFramePointer(pub bool);

impl Cfi for AlwaysFramePointer {
    fn step<A: Arch, M: Memory>(&mut self, _: &Regs, _: bool, _: &mut M) -> CfiStep {
        CfiStep::FramePointer
    }
    fn keeps_frame_record(&mut self, _ra: u64) -> bool {
        self.0
    }
}

/// Does `[addr, addr + len)` lie inside `[lo, hi)`? Exact arithmetic.
fn within(addr: u64, len: u64, lo: u64, hi: u64) -> bool {
    let (a, e) = (addr as u128, addr as u128 + len as u128);
    a >= lo as u128 && e <= hi as u128
}

/// Memory that checks every answer of the [`Image`] it wraps against the regions themselves,
/// and the walker's use of `read_pair_unchecked` against the stack ranges it was given.
pub struct Checked<'a> {
    img: Image<'a>,
    regions: &'a [Region<'a>],
    granted: Vec<Range>,
    /// Memory calls so far.
    pub calls: u64,
}

impl<'a> Checked<'a> {
    /// Wraps an image over `regions`.
    pub fn new(regions: &'a [Region<'a>]) -> Self {
        Self::with_image(Image::new(regions), regions)
    }

    /// Wraps `img`, checking its answers against `regions` (tests of the checker itself).
    pub fn with_image(img: Image<'a>, regions: &'a [Region<'a>]) -> Self {
        Checked {
            img,
            regions,
            granted: Vec::new(),
            calls: 0,
        }
    }

    /// Is `[addr, addr + len)` inside one region (as the image addresses it: saturating at
    /// `u64::MAX`)?
    fn in_image(&self, addr: u64, len: u64) -> bool {
        self.regions
            .iter()
            .any(|r| within(addr, len, r.range().lo, r.range().hi))
    }
}

impl Memory for Checked<'_> {
    fn read_u64(&mut self, addr: u64) -> Option<u64> {
        self.calls += 1;
        let v = self.img.read_u64(addr);
        assert_eq!(
            v.is_some(),
            self.in_image(addr, 8),
            "image read at {addr:#x} disagrees with its regions"
        );
        v
    }

    fn stack_range(&mut self, addr: u64) -> Option<Range> {
        self.calls += 1;
        let r = self.img.stack_range(addr);
        if let Some(r) = r {
            assert!(r.contains(addr), "stack range {r:?} lacks {addr:#x}");
            assert!(
                self.regions.iter().any(|g| g.is_stack && g.range() == r),
                "stack range {r:?} is no stack region"
            );
            if !self.granted.contains(&r) {
                self.granted.push(r);
            }
        }
        r
    }

    unsafe fn read_pair_unchecked(&mut self, addr: u64) -> Option<(u64, u64)> {
        assert!(
            self.granted.iter().any(|r| within(addr, 16, r.lo, r.hi)),
            "unchecked pair read at {addr:#x} outside every stack range handed out ({:?})",
            self.granted
        );
        let p = self.read_pair(addr);
        assert!(p.is_some(), "unchecked pair read at {addr:#x} failed");
        p
    }

    fn read_code(&mut self, addr: u64, out: &mut [u8]) -> bool {
        self.calls += 1;
        let ok = self.img.read_code(addr, out);
        assert_eq!(ok, self.in_image(addr, out.len() as u64));
        ok
    }
}

/// Everything one walk produced.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Frame>,
    stop: StopReason,
}

/// Memory calls allowed per walk: a few per frame, plus the aarch64 signal-frame search (two
/// reads per 16 bytes of `SIGFRAME_SEARCH`) at each transition.
fn call_bound(frames: usize) -> u64 {
    let per_transition = 2 * unwind::arch::aarch64::SIGFRAME_SEARCH / 16 + 64;
    64 * (frames as u64 + 2) + (MAX_CROSSINGS as u64 + 1) * per_transition
}

fn walk_one<A: Arch, C: Cfi>(
    input: &Input,
    regions: &[Region<'_>],
    cfi: C,
    mode: Mode,
    max_depth: usize,
) -> Outcome {
    let mut w: Walker<A, _, C> = Walker::with_cfi(&input.table, cfi, mode);
    w.max_depth = max_depth;
    w.pac_mask = input.pac_mask;
    let mut mem = Checked::new(regions);
    let mut buf = vec![Frame::EMPTY; input.buf_len];
    let t = w.walk(input.start, &mut mem, &mut buf);
    assert!(
        t.len <= buf.len(),
        "{} frames in a buffer of {}",
        t.len,
        buf.len()
    );
    let limit = if max_depth == 0 {
        buf.len()
    } else {
        max_depth.min(buf.len())
    };
    assert!(
        mem.calls <= call_bound(limit),
        "{} memory calls for at most {limit} frames",
        mem.calls
    );
    buf.truncate(t.len);
    Outcome {
        frames: buf,
        stop: t.stop,
    }
}

fn check_trace(input: &Input, max_depth: usize, o: &Outcome) {
    let n = o.frames.len();
    let limit = if max_depth == 0 {
        input.buf_len
    } else {
        max_depth.min(input.buf_len)
    };
    assert!(n <= limit, "{n} frames, limit {limit}");
    match o.stop {
        StopReason::MaxDepth => assert!(max_depth != 0 && n == max_depth, "{o:?}"),
        StopReason::BufferFull => assert_eq!(n, input.buf_len, "{o:?}"),
        _ => {}
    }
    if input.start.regs.pc == 0 && input.start.pc_is_return_address {
        assert_eq!((n, o.stop), (0, StopReason::End));
        return;
    }
    if limit > 0 {
        assert!(n >= 1);
        assert_eq!(o.frames[0].pc, input.start.regs.pc);
    }
    let id0 = input.table.entries().iter().any(|e| e.id == 0);
    for (i, f) in o.frames.iter().enumerate() {
        // Only an exact pc of 0 (a call through a null pointer) is a frame at 0.
        assert!(f.pc != 0 || f.is_exact(), "frame {i} has pc 0: {o:?}");
        assert!(f.stack <= MAX_CROSSINGS, "{o:?}");
        if i > 0 {
            let prev = o.frames[i - 1].stack;
            assert!(
                f.stack == prev || f.stack == prev + 1,
                "stack index jumps at frame {i}: {o:?}"
            );
            if f.stack == prev + 1 {
                assert!(
                    f.via == Via::Transition || id0,
                    "stack changes without a transition at frame {i}: {o:?}"
                );
            }
        }
        if f.via == Via::Transition && f.transition != 0 {
            assert!(
                input.table.entries().iter().any(|e| e.id == f.transition),
                "unknown transition id in frame {i}: {o:?}"
            );
        }
    }
}

fn run<A: Arch>(input: &Input, regions: &[Region<'_>]) {
    let full = walk_one::<A, _>(
        input,
        regions,
        ScriptCfi::new(&input.cfi),
        input.mode,
        input.max_depth,
    );
    if std::env::var_os("UNWIND_FUZZ_DEBUG").is_some() {
        eprintln!("{input:#x?}\n{full:#x?}");
    }
    check_trace(input, input.max_depth, &full);

    // Deterministic.
    let again = walk_one::<A, _>(
        input,
        regions,
        ScriptCfi::new(&input.cfi),
        input.mode,
        input.max_depth,
    );
    assert_eq!(full, again, "two walks of the same input differ");

    // A shorter walk is a prefix of the longer one.
    let n = full.frames.len();
    if n >= 2 {
        let k = n / 2;
        let short = walk_one::<A, _>(input, regions, ScriptCfi::new(&input.cfi), input.mode, k);
        check_trace(input, k, &short);
        // The last frame's exactness is decided by the step after it (a pushed return address
        // at a function's entry): the cut walk asks the CFI for it at the cut, and this
        // scripted CFI answers in call order, not by address, so those answers can differ
        // from the ones the whole walk's next step got. Every other bit must match.
        let unflag = |f: &[Frame]| {
            let mut v = f.to_vec();
            if let Some(l) = v.last_mut() {
                l.flags &= !Frame::EXACT;
            }
            v
        };
        assert_eq!(
            unflag(&short.frames[..]),
            unflag(&full.frames[..k]),
            "max_depth {k} is not a prefix"
        );
        assert_eq!(short.stop, StopReason::MaxDepth);
    }

    // The frame-pointer fast path agrees with the general step (x86_64: no leaf-lr rule).
    if A::KIND == ArchKind::X86_64 && input.mode == Mode::FramePointer {
        for trust in [false, true] {
            let general = walk_one::<A, _>(
                input,
                regions,
                AlwaysFramePointer(trust),
                Mode::Hybrid,
                input.max_depth,
            );
            assert_eq!(
                full, general,
                "fast path and hybrid mode (frame records trusted: {trust}) disagree"
            );
        }
    }
}

/// The `walk` harness.
pub fn walk(data: &[u8]) {
    let input = Input::decode(data);
    let regions: Vec<Region<'_>> = input
        .regions
        .iter()
        .map(|(base, stack, bytes)| Region {
            base: *base,
            bytes,
            is_stack: *stack,
        })
        .collect();
    match input.arch {
        ArchKind::X86_64 => run::<X86_64>(&input, &regions),
        ArchKind::Aarch64 => run::<Aarch64>(&input, &regions),
    }
}

//! The walker: one loop, generic over an [`Arch`], a [`Memory`], a transition table and an
//! optional call-frame-information unwinder.
//!
//! ```text
//! regs ──► frame record at fp ──► (caller fp, return address) ──► ...
//!            │
//!            ├─ return address is a known switch? ──► transition rule ──► next stack
//!            └─ CFI mode and a rule for this pc?   ──► DWARF step
//! ```
//!
//! Guarantees, whatever the memory holds: no panic, no allocation, no lock; every read goes
//! through [`Memory::read_u64`]; every iteration writes one frame or stops, so the walk ends
//! within `buf.len()` iterations; frame pointers must move strictly up one stack, and may only
//! jump to another stack at a transition (at most [`MAX_CROSSINGS`] of them).

use crate::arch::{Arch, Regs};
use crate::frame::{Frame, StopReason, Trace, Via};
use crate::memory::{Memory, Range};
use crate::transition::{Hop, PageFilter, Transitions, TRANSITION_PAGE, UNRECORDED_PAGE};
use core::marker::PhantomData;

/// At most this many transitions are crossed in one walk.
pub const MAX_CROSSINGS: u16 = 64;

/// How frames are unwound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// Frame records only (the fast path).
    #[default]
    FramePointer,
    /// DWARF call-frame information for every frame.
    Dwarf,
    /// CFI where a function has no frame record (the CFI says so, or has no rule), frame records
    /// elsewhere.
    Hybrid,
}

impl Mode {
    /// Parses `fp`, `dwarf` or `hybrid`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "fp" => Some(Mode::FramePointer),
            "dwarf" => Some(Mode::Dwarf),
            "hybrid" => Some(Mode::Hybrid),
            _ => None,
        }
    }
}

/// What a CFI unwinder says about one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CfiStep {
    /// The caller's registers.
    Caller(Regs),
    /// The caller's registers, found through a signal trampoline's CFI (augmentation `S`): the
    /// caller's pc is exact (the interrupted instruction), not a return address.
    Signal(Regs),
    /// This frame follows the standard frame-record rule: use the frame pointer.
    FramePointer,
    /// No CFI covers this pc.
    NoInfo,
    /// CFI exists but could not be evaluated (unsupported expression, unreadable memory).
    Failed,
    /// The CFI says the return address is in the link register, at a frame that is not the
    /// interrupted one (aarch64): the function called on (a `noreturn` call: `abort`, a
    /// panic's) without saving it, so the call overwrote it and the caller is lost. A frame
    /// record read there would be an older frame's, skipping the caller: the walk stops.
    ReturnAddressLost,
}

/// Call-frame information, as the walker uses it. Implementations must be bounded and must not
/// allocate if they are used in a signal handler.
pub trait Cfi {
    /// Unwinds one frame. `regs.pc` is exact when `exact`, else a return address (look up
    /// `pc - 1`).
    fn step<A: Arch, M: Memory>(&mut self, regs: &Regs, exact: bool, mem: &mut M) -> CfiStep;

    /// In [`Mode::Hybrid`]: may the frame record be trusted for the function containing return
    /// address `ra` (it keeps one at its call sites), so that the walker need not ask
    /// [`Cfi::step`]? Must be cheap: the hybrid hot loop asks it for every frame. The default
    /// says yes (no information: frame records decide).
    #[inline(always)]
    fn keeps_frame_record(&mut self, _ra: u64) -> bool {
        true
    }

    /// In [`Mode::Hybrid`], once per run of the hot loop: [`Cfi::keeps_frame_record`] for the
    /// module of the last lookup, as a bitmap the loop tests without calling back (a return
    /// address outside that module ends the run, and the walker's general step asks
    /// [`Cfi::keeps_frame_record`]). `None` (the default): ask for every frame.
    #[inline(always)]
    fn record_map(&mut self) -> Option<RecordMap<'_>> {
        None
    }

    /// Is return address `ra` known to be in code no CFI covers (so that a zero frame
    /// pointer there says nothing about the stack's end)? Asked once per walk, where a
    /// [`Mode::Hybrid`] walk meets a zero frame pointer. The default: not known (`false`).
    #[inline(always)]
    fn lacks_cfi(&mut self, _ra: u64) -> bool {
        false
    }

    /// In [`Mode::Hybrid`], where no CFI covers a pc: may the walker follow the frame pointer
    /// there, as a guess (code built with frame records but without CFI: JIT code, C built
    /// with `-fno-asynchronous-unwind-tables`)? If not, the walk stops there
    /// ([`crate::StopReason::NoUnwindInfo`]), and [`Cfi::keeps_frame_record`] should say no
    /// for such pcs. The default: yes.
    #[inline(always)]
    fn guesses(&mut self) -> bool {
        true
    }

    /// Is `pc`, which no CFI covers, an address no code can be at (a live process's: below the
    /// lowest address Linux maps, above user space)? Then a [`Mode::Hybrid`] walk stops there
    /// with [`crate::StopReason::NotCode`] instead of guessing on by the frame pointer. The
    /// default: never (an offline walk judges by its memory's mappings instead).
    #[inline(always)]
    fn impossible_pc(&mut self, _pc: u64) -> bool {
        false
    }

    /// Does [`Cfi::plain_rule`] answer (so that [`Mode::Dwarf`]'s hot loop asks it, and leaves
    /// every other frame to [`Cfi::step`])? The default: no, the hot loop calls [`Cfi::step`]
    /// for every frame.
    const PLAIN_RULES: bool = false;

    /// In [`Mode::Dwarf`]'s hot loop, for return address `ra` (lookup address `ra - 1`): the
    /// rule when it is at hand (a cache hit, no search), which the loop applies itself when it
    /// is plain (its `kind` has [`PlainRule::PLAIN`]). A plain rule must give the caller
    /// [`Cfi::step`] would give for that non-exact pc: the same CFA and the same words read.
    /// `None`, or a rule that is not plain: the walker asks [`Cfi::step`]. Asked only when
    /// [`Cfi::PLAIN_RULES`]; must be cheap (it is asked for every frame).
    #[inline(always)]
    fn plain_rule(&mut self, _ra: u64) -> Option<PlainRule> {
        None
    }
}

/// A CFI rule simple enough for [`Mode::Dwarf`]'s hot loop to apply itself
/// ([`Cfi::plain_rule`]): CFA = sp (or fp, with [`PlainRule::CFA_FP`]) + `cfa_off`, the return
/// address at CFA + `ra_off`, and the caller's fp at CFA + `fp_off` ([`PlainRule::FP_SAVED`]) or
/// the callee's fp unchanged (not saved). Never a signal frame's rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlainRule {
    /// The CFA's offset from sp or fp.
    pub cfa_off: i32,
    /// With [`PlainRule::PAIR`]: the caller's fp's offset from sp or fp, `cfa_off + fp_off`
    /// (the hot loop then finds the pair without waiting for the CFA).
    pub pair_off: i32,
    /// Where the return address is, from the CFA.
    pub ra_off: i16,
    /// Where the caller's fp is, from the CFA (with [`PlainRule::FP_SAVED`]).
    pub fp_off: i16,
    /// [`PlainRule::PLAIN`], with [`PlainRule::CFA_FP`], [`PlainRule::FP_SAVED`],
    /// [`PlainRule::PAIR`]; without [`PlainRule::PLAIN`] (0, say), not a plain rule.
    pub kind: u8,
}

impl PlainRule {
    /// Set in every plain rule's `kind`.
    pub const PLAIN: u8 = 0x80;
    /// The CFA is fp + `cfa_off` (else sp + `cfa_off`).
    pub const CFA_FP: u8 = 1;
    /// The caller's fp is saved at CFA + `fp_off` (else the callee's fp is the caller's).
    pub const FP_SAVED: u8 = 2;
    /// [`PlainRule::FP_SAVED`] with the return address right above the caller's fp
    /// (`ra_off == fp_off + 8`), both below the CFA (`fp_off <= -16`), and for a CFA from sp at
    /// or above sp (`pair_off >= 0`): one read of both.
    pub const PAIR: u8 = 4;

    /// The caller of `regs` by this rule, with checked reads: what [`Cfi::step`] gives for it
    /// (`None` where that is not a caller: not a plain rule, a zero base, an overflow, a read
    /// that fails). For any pc, exact or not: a plain rule does not depend on it.
    #[inline(always)]
    pub fn apply<M: Memory>(&self, regs: &Regs, mem: &mut M) -> Option<Regs> {
        if self.kind & PlainRule::PLAIN == 0 {
            return None;
        }
        let base = if self.kind & PlainRule::CFA_FP != 0 {
            regs.fp
        } else {
            regs.sp
        };
        if base == 0 {
            return None;
        }
        let cfa = base.checked_add_signed(self.cfa_off as i64)?;
        let (pc, fp) = if self.kind & PlainRule::PAIR != 0 {
            let (fp, pc) = mem.read_pair(cfa.checked_add_signed(self.fp_off as i64)?)?;
            (pc, fp)
        } else {
            let pc = mem.read_u64(cfa.checked_add_signed(self.ra_off as i64)?)?;
            let fp = if self.kind & PlainRule::FP_SAVED != 0 {
                mem.read_u64(cfa.checked_add_signed(self.fp_off as i64)?)?
            } else {
                regs.fp
            };
            (pc, fp)
        };
        Some(Regs {
            pc,
            sp: cfa,
            fp,
            lr: 0,
        })
    }
}

/// A module's "keeps a frame record" bitmap, for the hybrid hot loop ([`Cfi::record_map`]):
/// bit `g` covers lookup addresses `lo + (g << RecordMap::SHIFT) ..`.
#[derive(Clone, Copy, Debug)]
pub struct RecordMap<'a> {
    /// The first lookup address (return address - 1) the bitmap covers.
    lo: u64,
    /// How many lookup addresses it covers from `lo` (never more than `bits` has bits for).
    span: u64,
    bits: &'a [u64],
}

impl<'a> RecordMap<'a> {
    /// log2 of the bytes one bit covers (a constant: a shift by a register costs the hot loop
    /// `rcx` on x86_64).
    pub const SHIFT: u32 = 4;

    /// A map of `span` lookup addresses from `lo`. The span is cut to what `bits` covers: a
    /// return address past the bitmap is "ask the CFI".
    #[inline(always)]
    pub fn new(lo: u64, span: u64, bits: &'a [u64]) -> Self {
        // A slice of u64s has fewer than 2^61 elements: 2^61 * 64 << 4 overflows, so saturate.
        let covered = (bits.len() as u64).saturating_mul(64 << Self::SHIFT);
        RecordMap {
            lo,
            span: span.min(covered),
            bits,
        }
    }

    /// The 4 KiB pages (as addresses in them, ascending, each once) holding a return address
    /// the map does not say keeps a record, whose lookup address is inside the map.
    #[cfg(feature = "dwarf")]
    pub(crate) fn unrecorded_pages(&self) -> impl Iterator<Item = u64> + '_ {
        let granules = self.span.div_ceil(1 << Self::SHIFT);
        let mut last = None;
        (0..granules)
            .filter(move |&g| {
                let w = self.bits.get((g / 64) as usize).copied().unwrap_or(0);
                w & (1 << (g % 64)) == 0
            })
            .flat_map(move |g| {
                // Lookup addresses `a .. a + 16`: return addresses `a + 1 ..= a + 16`.
                let a = self.lo.wrapping_add(g << Self::SHIFT);
                [
                    a.wrapping_add(1) >> 12,
                    a.wrapping_add(1 << Self::SHIFT) >> 12,
                ]
            })
            .filter(move |&p| last.replace(p) != Some(p))
            .map(|p| p << 12)
    }

    /// A map of `span` lookup addresses from `lo`, the span already within what `bits` covers
    /// (as [`RecordMap::new`] cuts it: then [`RecordMap::span`]).
    ///
    /// # Safety
    /// `span <= bits.len() * 64 << SHIFT` (mathematically: no overflow).
    #[cfg(feature = "dwarf")]
    #[inline(always)]
    pub(crate) unsafe fn new_unchecked(lo: u64, span: u64, bits: &'a [u64]) -> Self {
        debug_assert_eq!(RecordMap::new(lo, span, bits).span, span);
        RecordMap { lo, span, bits }
    }

    /// The first lookup address the map covers.
    pub fn lo(&self) -> u64 {
        self.lo
    }

    /// How many lookup addresses from [`RecordMap::lo`] the map covers.
    pub fn span(&self) -> u64 {
        self.span
    }

    /// Is return address `ra` inside the map?
    #[inline(always)]
    pub fn covers(&self, ra: u64) -> bool {
        ra.wrapping_sub(1).wrapping_sub(self.lo) < self.span
    }

    /// Does the function containing return address `ra` keep a frame record? `false` also when
    /// `ra` is outside the map (the caller then asks the CFI).
    #[inline(always)]
    pub fn keeps(&self, ra: u64) -> bool {
        let off = ra.wrapping_sub(1).wrapping_sub(self.lo);
        if off >= self.span {
            return false;
        }
        let g = (off >> Self::SHIFT) as usize;
        // SAFETY: `off < span <= bits.len() * 64 << SHIFT` (`new`; when that product saturates,
        // `off >> SHIFT < 2^60 <= bits.len() * 64` holds all the same), so `g < bits.len() * 64`
        // and `g / 64 < bits.len()`.
        let w = unsafe { *self.bits.get_unchecked(g / 64) };
        w & (1 << (g % 64)) != 0
    }
}

/// No call-frame information.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCfi;

impl Cfi for NoCfi {
    #[inline(always)]
    fn step<A: Arch, M: Memory>(&mut self, _: &Regs, _: bool, _: &mut M) -> CfiStep {
        CfiStep::NoInfo
    }
}

impl<C: Cfi + ?Sized> Cfi for &mut C {
    #[inline(always)]
    fn lacks_cfi(&mut self, ra: u64) -> bool {
        (**self).lacks_cfi(ra)
    }

    #[inline(always)]
    fn guesses(&mut self) -> bool {
        (**self).guesses()
    }

    #[inline(always)]
    fn impossible_pc(&mut self, pc: u64) -> bool {
        (**self).impossible_pc(pc)
    }

    #[inline(always)]
    fn step<A: Arch, M: Memory>(&mut self, regs: &Regs, exact: bool, mem: &mut M) -> CfiStep {
        (**self).step::<A, M>(regs, exact, mem)
    }
    #[inline(always)]
    fn keeps_frame_record(&mut self, ra: u64) -> bool {
        (**self).keeps_frame_record(ra)
    }
    #[inline(always)]
    fn record_map(&mut self) -> Option<RecordMap<'_>> {
        (**self).record_map()
    }
    const PLAIN_RULES: bool = C::PLAIN_RULES;
    #[inline(always)]
    fn plain_rule(&mut self, ra: u64) -> Option<PlainRule> {
        (**self).plain_rule(ra)
    }
}

/// Where a walk begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// The registers of the first frame.
    pub regs: Regs,
    /// Is `regs.pc` a return address (a frame record's), rather than an exact pc?
    pub pc_is_return_address: bool,
}

impl Start {
    /// Start from exact registers (an interrupted context, a core's thread).
    pub const fn exact(regs: Regs) -> Self {
        Start {
            regs,
            pc_is_return_address: false,
        }
    }
}

/// A configured walker. Cheap to build; holds no memory of its own.
#[derive(Clone, Debug)]
pub struct Walker<A: Arch, T: Transitions, C: Cfi> {
    /// The transition table consulted at every return address.
    pub transitions: T,
    /// The CFI unwinder used in [`Mode::Dwarf`] and [`Mode::Hybrid`].
    pub cfi: C,
    /// The unwinding mode.
    pub mode: Mode,
    /// Stop after this many frames (0: only the buffer's length limits).
    pub max_depth: usize,
    /// aarch64 pointer-authentication mask (0: Linux's default).
    pub pac_mask: u64,
    _arch: PhantomData<A>,
}

impl<A: Arch, T: Transitions> Walker<A, T, NoCfi> {
    /// A frame-pointer walker with this transition table.
    pub fn new(transitions: T) -> Self {
        Walker {
            transitions,
            cfi: NoCfi,
            mode: Mode::FramePointer,
            max_depth: 0,
            pac_mask: 0,
            _arch: PhantomData,
        }
    }
}

impl<A: Arch, T: Transitions, C: Cfi> Walker<A, T, C> {
    /// A walker with a CFI unwinder, in `mode`.
    pub fn with_cfi(transitions: T, cfi: C, mode: Mode) -> Self {
        Walker {
            transitions,
            cfi,
            mode,
            max_depth: 0,
            pac_mask: 0,
            _arch: PhantomData,
        }
    }

    /// How many frames a walk into a buffer of `len` may write.
    #[inline(always)]
    fn limit(&self, len: usize) -> usize {
        depth_limit(self.max_depth, len)
    }

    /// Why a walk that wrote `n` frames and has no room left stopped.
    #[inline(always)]
    fn full_stop(&self, n: usize) -> StopReason {
        if self.max_depth != 0 && n >= self.max_depth {
            StopReason::MaxDepth
        } else {
            StopReason::BufferFull
        }
    }

    /// Walks from `start`, writing frames (leaf first) into `buf`. Never panics, never
    /// allocates, reads only through `mem`.
    pub fn walk<M: Memory>(&mut self, start: Start, mem: &mut M, buf: &mut [Frame]) -> Trace {
        let limit = self.limit(buf.len());
        let mut st = State {
            regs: start.regs,
            exact: !start.pc_is_return_address,
            stack: 0,
            seg: None,
            prev_fp: None,
            pending: 0,
            fault_call: false,
            crossings: 0,
            n: 0,
            base_sp: start.regs.sp,
        };
        if st.regs.pc == 0 && !(st.exact && limit != 0) {
            return Trace {
                len: 0,
                stop: if st.exact {
                    self.full_stop(0)
                } else {
                    StopReason::End
                },
            };
        }
        if limit == 0 {
            return Trace {
                len: 0,
                stop: self.full_stop(0),
            };
        }
        buf[0] = Frame {
            pc: st.regs.pc,
            stack: 0,
            via: if st.exact {
                Via::Regs
            } else {
                Via::FramePointer
            },
            flags: if st.exact { Frame::EXACT } else { 0 },
            transition: 0,
        };
        st.n = 1;
        st.seg = stack_of(mem, &st.regs);
        if st.regs.pc == 0 {
            if let Err(stop) = self.null_caller(&mut st, mem, buf, limit) {
                return Trace { len: st.n, stop };
            }
        } else if st.exact {
            if let Err(stop) = self.bad_call_caller(&mut st, mem, buf, limit) {
                return Trace { len: st.n, stop };
            }
        }
        self.leaf_lr(&mut st, mem, buf, limit);
        self.run(st, mem, buf, limit)
    }

    /// [`Walker::walk`] from `regs` whose pc is a return address (a live capture's caller, found
    /// by one CFI step out of the capture function): the same trace. In [`Mode::Dwarf`] with
    /// [`Cfi::PLAIN_RULES`] it runs the plain-rule loop at once, without [`Walker::walk`]'s
    /// set-up, and the general machinery only if that loop stops before the buffer is full.
    #[cfg(feature = "dwarf")]
    #[inline(always)]
    pub(crate) fn walk_from_return<M: Memory>(
        &mut self,
        regs: Regs,
        mem: &mut M,
        buf: &mut [Frame],
    ) -> Trace {
        if !(C::PLAIN_RULES && self.mode == Mode::Dwarf) || regs.pc == 0 {
            let start = Start {
                regs,
                pc_is_return_address: true,
            };
            return self.walk(start, mem, buf);
        }
        let limit = self.limit(buf.len());
        let Some((first, rest)) = buf.get_mut(..limit).and_then(|b| b.split_first_mut()) else {
            return Trace {
                len: 0,
                stop: self.full_stop(0),
            };
        };
        // As `walk` writes the first frame of a return address.
        Frame::write_raw(first, regs.pc, Frame::meta(0, Via::FramePointer, 0, 0));
        let seg = stack_of(mem, &regs);
        let mut regs = regs;
        let mut n = 1;
        // `run`'s first round: the hot loop (`fast_run_dwarf`), then the full-buffer check.
        if let Some(seg) = seg {
            n += follow_cfi_inline::<A, M, T, C, false>(
                &mut self.cfi,
                mem,
                &self.transitions,
                rest,
                seg,
                &mut regs,
                0,
                self.pac_mask,
            );
        }
        // The walk's state there, built only where it is needed (not on the common path).
        let state = |regs: Regs| State {
            regs,
            exact: false,
            stack: 0,
            seg,
            prev_fp: None,
            pending: 0,
            fault_call: false,
            crossings: 0,
            n,
            base_sp: 0,
        };
        if n >= limit {
            // As `run` ends a full walk; the common case (a plain rule at hand for the last
            // return address, see `mark_entry_at_cut`) decided here, without the call.
            if !self.covered_at_cut(regs.pc) {
                self.mark_entry_at_cut(&state(regs), mem, buf);
            }
            return Trace {
                len: n,
                stop: self.full_stop(n),
            };
        }
        self.resume_with_step(state(regs), mem, buf, limit)
    }

    /// Does a plain rule at hand for return address `ra` (a rule-cache hit) say that CFI
    /// covers the byte before, so that a walk cut after `ra`'s frame marks nothing there
    /// ([`Walker::mark_entry_at_cut`]: its step would not look for an entry)?
    #[inline(always)]
    fn covered_at_cut(&mut self, ra: u64) -> bool {
        C::PLAIN_RULES
            && self
                .cfi
                .plain_rule(ra)
                .is_some_and(|r| r.kind & PlainRule::PLAIN != 0)
    }

    /// `run` from its general step on (after a hot loop that did not fill the buffer), out of
    /// line.
    #[cfg(feature = "dwarf")]
    #[inline(never)]
    fn resume_with_step<M: Memory>(
        &mut self,
        mut st: State,
        mem: &mut M,
        buf: &mut [Frame],
        limit: usize,
    ) -> Trace {
        match self.step(&mut st, mem, buf, limit) {
            Ok(()) => self.run(st, mem, buf, limit),
            Err(stop) => Trace { len: st.n, stop },
        }
    }

    /// Goes on with a walk whose caller ran [`follow_records`] itself from the start (the
    /// frame-pointer entry of a live capture): `n` frames, all from frame records on stack 0
    /// (`seg`), are in `buf`; the last record read ended at `floor` and pointed to the next one
    /// at `fp`. The result is the whole walk's, as if [`Walker::walk`] had made it.
    #[cfg(feature = "live")]
    #[inline(always)]
    pub(crate) fn resume_after_records<M: Memory>(
        &mut self,
        mem: &mut M,
        buf: &mut [Frame],
        n: usize,
        seg: Range,
        fp: u64,
        floor: u64,
    ) -> Trace {
        let limit = self.limit(buf.len());
        let Some(last) = n.checked_sub(1).and_then(|i| buf.get(i)) else {
            return Trace {
                len: 0,
                stop: StopReason::ReadFailed,
            };
        };
        let st = State {
            regs: Regs {
                pc: last.pc,
                sp: A::caller_sp_after_record(floor),
                fp,
                lr: 0,
            },
            exact: false,
            stack: 0,
            seg: Some(seg),
            prev_fp: Some(floor.wrapping_sub(A::RECORD_SIZE)),
            pending: 0,
            fault_call: false,
            crossings: 0,
            n: n.min(limit),
            base_sp: 0,
        };
        self.run(st, mem, buf, limit)
    }

    /// The walk's loop from `st` on: hot runs and general steps until a stop.
    #[inline(always)]
    fn run<M: Memory>(
        &mut self,
        mut st: State,
        mem: &mut M,
        buf: &mut [Frame],
        limit: usize,
    ) -> Trace {
        let stop = loop {
            match self.mode {
                Mode::FramePointer => self.fast_run::<M, false>(&mut st, mem, buf, limit),
                // Frame records while the functions keep them, CFI steps while they do not
                // (code built without frame pointers: libc's, the standard library's, and
                // a program's own in most builds), for as long as the CFI run ends at a
                // function that keeps a record again.
                Mode::Hybrid => loop {
                    self.fast_run::<M, true>(&mut st, mem, buf, limit);
                    if st.n >= limit || !self.fast_run_dwarf::<M, true>(&mut st, mem, buf, limit) {
                        break;
                    }
                },
                Mode::Dwarf => {
                    self.fast_run_dwarf::<M, false>(&mut st, mem, buf, limit);
                }
            }
            if st.n >= limit {
                self.mark_entry_at_cut(&st, mem, buf);
                break self.full_stop(st.n);
            }
            match self.step(&mut st, mem, buf, limit) {
                Ok(()) => {}
                Err(stop) => break stop,
            }
        };
        Trace { len: st.n, stop }
    }

    /// The walk is cut after its last frame: that frame is marked exact when the next step
    /// would have marked it ([`Walker::at_entry`]: a pushed return address at a function's
    /// entry), so that a walk cut at any depth is a prefix of the whole walk, flags and all.
    /// Asks the CFI only where that step would have asked it with the same answer.
    #[cold]
    #[inline(never)]
    fn mark_entry_at_cut<M: Memory>(&mut self, st: &State, mem: &mut M, buf: &mut [Frame]) {
        if self.mode == Mode::FramePointer || A::HAS_LINK_REGISTER || st.exact || st.fault_call {
            return;
        }
        let takes_entry = if self.asks_cfi(st) {
            // A plain rule at hand for the return address (a cache hit) is CFI covering the
            // byte before: the step would not look for an entry. This saves a whole CFI step
            // per capture that fills its buffer (the common case for a profiler's sample).
            !self.covered_at_cut(st.regs.pc)
        } else {
            // Hybrid: the step follows the record first, and looks for an entry only if
            // that fails.
            self.mode == Mode::Hybrid
                && matches!(self.record_step(st, mem, false, false), Err(e) if e != StopReason::End)
        };
        if takes_entry {
            // As the step: the byte before (no CFI) and the pc itself; marks the last frame.
            self.at_entry(st, mem, buf, true);
        }
    }

    /// The hot loop of frame-pointer mode (and, with `HYBRID`, of hybrid mode): follows frame
    /// records on the current stack while everything is ordinary (aligned, strictly increasing,
    /// inside the stack, readable, a non-zero return address outside the transition table's
    /// envelope; in hybrid mode also: the CFI says the function keeps a frame record,
    /// [`Cfi::keeps_frame_record`], and the pc is not exact, since an interrupted leaf may be in
    /// a prologue). At the first unusual record it returns with `st` unchanged at that record,
    /// and [`Walker::step`] handles it (and reports the precise stop reason).
    #[inline(always)]
    fn fast_run<M: Memory, const HYBRID: bool>(
        &mut self,
        st: &mut State,
        mem: &mut M,
        buf: &mut [Frame],
        limit: usize,
    ) {
        if HYBRID && (st.exact || !self.cfi.keeps_frame_record(st.regs.pc)) {
            return;
        }
        let Some(seg) = st.seg else { return };
        if st.pending != 0 || st.fault_call || seg.hi < A::RECORD_SIZE {
            return;
        }
        let Some(out) = buf.get_mut(st.n..limit) else {
            return;
        };
        let mut floor = seg.lo.max(st.regs.sp.saturating_sub(A::RECORD_BELOW_SP));
        if let Some(prev) = st.prev_fp {
            floor = floor.max(prev.saturating_add(1));
        }
        let cfi = &mut self.cfi;
        if HYBRID {
            if let Some(map) = cfi.record_map() {
                let (k, fp, floor) = follow_records::<A, M, T>(
                    mem,
                    &self.transitions,
                    out,
                    seg,
                    floor,
                    st.regs.fp,
                    st.stack,
                    self.pac_mask,
                    |ra| map.keeps(ra),
                );
                self.after_run(st, out, k, fp, floor);
                return;
            }
        }
        let (k, fp, floor) = follow_records::<A, M, T>(
            mem,
            &self.transitions,
            out,
            seg,
            floor,
            st.regs.fp,
            st.stack,
            self.pac_mask,
            |ra| !HYBRID || cfi.keeps_frame_record(ra),
        );
        self.after_run(st, out, k, fp, floor);
    }

    /// The hot loop of DWARF mode: CFI steps on the current stack while everything is
    /// ordinary (the CFI gives a caller whose CFA moves up inside the stack, with a non-zero
    /// return address that cannot be a transition). At anything else it returns with `st` at
    /// that frame and [`Walker::step`] handles it (and reports the precise stop reason).
    ///
    /// With `HYBRID` it also stops at a return address into a function that keeps a frame
    /// record (hybrid mode follows records there, [`Walker::fast_run`]), and returns whether
    /// it stopped for that alone after at least one step (else: `false`).
    #[inline(always)]
    fn fast_run_dwarf<M: Memory, const HYBRID: bool>(
        &mut self,
        st: &mut State,
        mem: &mut M,
        buf: &mut [Frame],
        limit: usize,
    ) -> bool {
        let Some(seg) = st.seg else { return false };
        if st.pending != 0 || st.fault_call {
            return false;
        }
        if C::PLAIN_RULES {
            // Plain rules at hand: the loop out of line, with only what it needs (the general
            // step beside it would take its registers); every other frame is the general
            // step's.
            if st.exact {
                return false;
            }
            let Some(out) = buf.get_mut(st.n..limit) else {
                return false;
            };
            let k = follow_cfi::<A, M, T, C, HYBRID>(
                &mut self.cfi,
                mem,
                &self.transitions,
                out,
                seg,
                &mut st.regs,
                st.stack,
                self.pac_mask,
            );
            st.n += k;
            // Hybrid: did it stop at a function that keeps a record (asked again: once per
            // run, not per frame)?
            return HYBRID && k != 0 && st.n < limit && self.cfi.keeps_frame_record(st.regs.pc);
        }
        // Registers and counters in locals (written back once), the envelope read once.
        let env = self.transitions.envelope();
        let (env_lo, env_span) = (env.lo, env.hi.saturating_sub(env.lo));
        let (mut regs, mut exact, mut n) = (st.regs, st.exact, st.n);
        let stack = st.stack;
        let mut at_record = false;
        while n < limit {
            if HYBRID && !exact && self.cfi.keeps_frame_record(regs.pc) {
                at_record = true;
                break;
            }
            let CfiStep::Caller(mut r) = self.cfi.step::<A, M>(&regs, exact, mem) else {
                break;
            };
            r.pc = A::strip_ra(r.pc, self.pac_mask);
            if r.pc == 0
                || r.sp <= regs.sp
                || !seg.contains(r.sp)
                || (r.pc.wrapping_sub(env_lo) < env_span && self.transitions.may_match_inside(r.pc))
            {
                break;
            }
            let Some(slot) = buf.get_mut(n) else {
                break;
            };
            *slot = Frame {
                pc: r.pc,
                stack,
                via: Via::Dwarf,
                flags: 0,
                transition: 0,
            };
            n += 1;
            regs = r;
            exact = false;
        }
        if n != st.n {
            st.n = n;
            st.regs = regs;
            st.exact = exact;
            return at_record;
        }
        false
    }

    #[inline(always)]
    fn after_run(&mut self, st: &mut State, out: &[Frame], mut k: usize, fp: u64, floor: u64) {
        // With k == 0 nothing was read and `floor` may be below one record (a stack at
        // address 0): `last` is then unused.
        let mut last = floor.wrapping_sub(A::RECORD_SIZE);
        if k != 0 && fp == last {
            // The last record pointed at itself: no frame record does (a thread caught just
            // after `clone3`, its frame pointer still the parent's pointer to the new thread's
            // control block, whose first word is its own address). Its "return address" is
            // not one: take the frame back, and [`Walker::step`] stops at that record.
            k -= 1;
            last = fp.saturating_sub(1);
        }
        if let Some(prev) = k.checked_sub(1).and_then(|i| out.get(i)) {
            st.n += k;
            st.prev_fp = Some(last);
            st.regs = Regs {
                pc: prev.pc,
                sp: A::caller_sp_after_record(floor),
                fp,
                lr: 0,
            };
            st.exact = false;
        }
    }

    /// The caller by the frame record at `st.regs.fp`: `(caller, via, record address)`, or why
    /// there is none (`cfi_failed`: CFI covered the pc but could not be evaluated, and a
    /// failure here is most likely the unreadable memory that made it fail).
    #[inline(always)]
    fn record_step<M: Memory>(
        &mut self,
        st: &State,
        mem: &mut M,
        cfi_failed: bool,
        no_cfi: bool,
    ) -> Result<(Regs, Via, Option<u64>), StopReason> {
        let fp = st.regs.fp;
        if fp == 0 {
            return Err(self.zero_ends(st, cfi_failed, no_cfi));
        }
        let guess = |why| {
            if cfi_failed {
                StopReason::ReadFailed
            } else {
                why
            }
        };
        if !fp.is_multiple_of(A::FP_ALIGN) {
            return Err(guess(StopReason::Misaligned));
        }
        match st.seg {
            Some(seg) if !seg.contains_span(fp, A::RECORD_SIZE) => {
                // Left this stack for another known one: only a transition may do that.
                return Err(if !seg.contains(fp) && mem.stack_range(fp).is_some() {
                    guess(StopReason::NotMonotonic)
                } else {
                    StopReason::ReadFailed
                });
            }
            _ => {}
        }
        if let Some(prev) = st.prev_fp {
            if fp <= prev {
                return Err(guess(StopReason::NotMonotonic));
            }
        }
        // A record below the stack pointer is in dead stack (when sp is on this stack:
        // [`State::sp_on_seg`]).
        if st.regs.sp != 0 && st.sp_on_seg() && fp < st.regs.sp.saturating_sub(A::RECORD_BELOW_SP) {
            return Err(guess(StopReason::NotMonotonic));
        }
        // Both architectures: [fp] = caller's fp, [fp + 8] = return address.
        let (saved_fp, ra) = mem.read_pair(fp).ok_or(StopReason::ReadFailed)?;
        // No frame record points at itself ([`Walker::after_run`]): what it holds is
        // no return address.
        if saved_fp == fp {
            return Err(guess(StopReason::NotMonotonic));
        }
        if no_cfi && self.data_for_a_record(fp, saved_fp, ra) {
            return Err(StopReason::NoUnwindInfo);
        }
        let caller = Regs {
            pc: A::strip_ra(ra, self.pac_mask),
            sp: A::caller_sp_after_record(fp + A::RECORD_SIZE),
            fp: saved_fp,
            lr: 0,
        };
        Ok((caller, Via::FramePointer, Some(fp)))
    }

    /// A guess (no CFI covers this pc, asked): code without frame records uses the register as
    /// any other, and a "record" at `fp` whose saved frame pointer leads down the stack is no
    /// frame record (the register points at data: a struct on the stack), so its "return
    /// address" `ra` is a data word too: the walk stops before it, not after. A known stack
    /// switch's return address is exempt (its chain goes on on another stack). Out of line:
    /// the frame-record step, inlined everywhere, stays as it was.
    #[cold]
    #[inline(never)]
    fn data_for_a_record(&mut self, fp: u64, saved_fp: u64, ra: u64) -> bool {
        saved_fp != 0
            && saved_fp <= fp
            && self
                .transitions
                .lookup(A::strip_ra(ra, self.pac_mask))
                .is_none()
    }

    /// Why a frame-record step that met a zero (frame pointer, or return address in the
    /// record) stops: the end of the chain, unless the CFI could not be used at this pc
    /// (`cfi_failed`: it failed; `no_cfi`: it was asked and covers nothing; in Hybrid mode,
    /// [`Cfi::lacks_cfi`]). Then the zero is no evidence: code without frame records uses the
    /// register as any other.
    fn zero_ends(&mut self, st: &State, cfi_failed: bool, no_cfi: bool) -> StopReason {
        if cfi_failed {
            StopReason::ReadFailed
        } else if no_cfi || (self.mode == Mode::Hybrid && self.cfi.lacks_cfi(st.regs.pc)) {
            StopReason::NoUnwindInfo
        } else {
            StopReason::End
        }
    }

    /// Does [`Walker::step`] ask the CFI for the caller of `st` (else it follows the frame
    /// record)?
    #[inline(always)]
    fn asks_cfi(&mut self, st: &State) -> bool {
        match self.mode {
            Mode::FramePointer => false,
            // Right after a `Continue` transition (the chain goes on on another stack: Go's
            // systemstack and asmcgocall, psm) sp is unknown and only the frame record links
            // the two stacks: Dwarf mode follows it there, as the other modes do.
            Mode::Dwarf => !(st.pending != 0 && st.regs.sp == 0),
            Mode::Hybrid => st.exact || !self.cfi.keeps_frame_record(st.regs.pc),
        }
    }

    /// A return address that no CFI covers the byte before, at the first instruction of a
    /// function that has CFI: a return address a runtime pushed itself, pointing at a
    /// function's entry (Go's `cgocallback` pushes the goroutine's `g.sched.pc`,
    /// `runtime.systemstack_switch`, under the frame it opens on the goroutine's stack). It
    /// is looked up at itself, as Go's own traceback does at a function's entry, and its frame
    /// is marked exact (so it is named after that function). Its caller's frame pointer is
    /// then the caller's own frame record, at its CFA - 16, when that record returns where the
    /// CFI says (the register itself still holds a frame pointer of the callee side). x86_64
    /// only: an aarch64 function's entry has its return address in `lr`. `None` when that is
    /// not the case. `ask`: look up the byte before first (the caller has not).
    #[cold]
    #[inline(never)]
    fn at_entry<M: Memory>(
        &mut self,
        st: &State,
        mem: &mut M,
        buf: &mut [Frame],
        ask: bool,
    ) -> Option<Regs> {
        if A::HAS_LINK_REGISTER
            || st.exact
            || (ask && self.cfi.step::<A, M>(&st.regs, false, mem) != CfiStep::NoInfo)
        {
            return None;
        }
        let CfiStep::Caller(mut r) = self.cfi.step::<A, M>(&st.regs, true, mem) else {
            return None;
        };
        if let Some(f) = st.n.checked_sub(1).and_then(|i| buf.get_mut(i)) {
            f.flags |= Frame::EXACT;
        }
        if let CfiStep::Caller(up) = self.cfi.step::<A, M>(&r, false, mem) {
            if let Some(rec) = up.sp.checked_sub(A::RECORD_SIZE) {
                if rec >= r.sp && mem.read_pair(rec).is_some_and(|(_, ra)| ra == up.pc) {
                    r.fp = rec;
                }
            }
        }
        Some(r)
    }

    /// One iteration: finds the caller of `st.regs`, writes at least one frame or stops.
    #[inline(always)]
    fn step<M: Memory>(
        &mut self,
        st: &mut State,
        mem: &mut M,
        buf: &mut [Frame],
        limit: usize,
    ) -> Result<(), StopReason> {
        // 1. Find the caller: by CFI when the mode asks for it, else by the frame record.
        let mut dwarf = None;
        // The caller of a fault call is the faulting instruction: exact, like an interrupted pc.
        let fault_callee = core::mem::take(&mut st.fault_call);
        let mut signal = fault_callee;
        // CFI covered this pc but could not be evaluated (most often: the stack it reads is
        // not there, as in a truncated core). The frame-pointer guess that follows may then
        // fail on whatever `fp` holds: that failure is reported as the unreadable memory it
        // most likely is, not as a misaligned or wandering frame pointer.
        let mut cfi_failed = false;
        // No CFI covers this pc (Hybrid and Dwarf: it was asked).
        let mut no_cfi = false;
        let ask_cfi = self.asks_cfi(st);
        if ask_cfi {
            let mut found = self.cfi.step::<A, M>(&st.regs, st.exact, mem);
            if found == CfiStep::NoInfo {
                if let Some(r) = self.at_entry(st, mem, buf, false) {
                    found = CfiStep::Caller(r);
                }
            }
            match found {
                CfiStep::Caller(r) => dwarf = Some(r),
                CfiStep::Signal(r) => {
                    dwarf = Some(r);
                    signal = true;
                }
                CfiStep::FramePointer => {}
                CfiStep::ReturnAddressLost => return Err(StopReason::NoUnwindInfo),
                CfiStep::NoInfo | CfiStep::Failed if self.mode == Mode::Dwarf => {
                    return Err(StopReason::NoUnwindInfo)
                }
                CfiStep::Failed => cfi_failed = true,
                CfiStep::NoInfo if !self.cfi.guesses() => return Err(StopReason::NoUnwindInfo),
                // A data word a stale or wrong rule read as a return address (found by outside
                // use in the twenty-sixth round: `0x6` from a dlclosed library's CFI, then a
                // guess by the frame pointer on to `main`, and `End`).
                CfiStep::NoInfo if self.cfi.impossible_pc(st.regs.pc) => {
                    return Err(StopReason::NotCode)
                }
                CfiStep::NoInfo => no_cfi = true,
            }
        }
        // CFI says "outermost frame" (an undefined return address). Go marks its arm64 signal
        // trampoline `runtime.sigtramp` so (TOPFRAME), yet the kernel's sigreturn trampoline
        // called it and its frame record, which Go's arm64 prologue stores at sp - 8, returns
        // there: go on through that record when it returns into a known transition.
        if A::KIND == crate::arch::ArchKind::Aarch64 && dwarf.is_some_and(|r| r.pc == 0) {
            if let Some(rec) = st.regs.sp.checked_sub(8).filter(|&r| r != 0) {
                if let Some((_, ra)) = mem.read_pair(rec) {
                    let ra = A::strip_ra(ra, self.pac_mask);
                    if ra != 0 && self.transitions.lookup(ra).is_some() {
                        dwarf = None;
                        signal = false;
                        st.regs.fp = rec;
                    }
                }
            }
        }
        let (caller, via, record_fp) = match dwarf {
            Some(mut r) => {
                // An undefined return address: the outermost frame.
                if r.pc == 0 {
                    return Err(StopReason::End);
                }
                // The CFA must move up the current stack. An interrupted aarch64 leaf may
                // not have touched sp (its return address is in lr): equal is allowed once.
                let leaf = A::HAS_LINK_REGISTER && st.exact;
                let off_stack = st.seg.is_some_and(|seg| !seg.holds_sp(r.sp));
                // sp on no known stack (an interrupted sp at the very top of a fresh one, where
                // psm and stacker put it: nothing pushed yet) left the walk on the frame's
                // stack: there it bounds nothing.
                let sp_here = st.sp_on_seg();
                if off_stack && st.exact {
                    // Interrupted in a stack switch, after it moved sp and before it returns
                    // or calls on (psm's `rust_psm_on_stack`: `mov rsp, rcx; call *rdx`;
                    // corosensei's coroutine, back on its parent's stack: `mov rsp, [rbx];
                    // pop rbp; ret`): the CFI finds the caller on the other stack. That is
                    // the switch itself: the walk follows it there, as a crossing.
                    let seg = enter_stack_at(mem, r.sp).ok_or(StopReason::NotMonotonic)?;
                    self.mid_switch(st, seg)?;
                } else if off_stack
                    || sp_here && (r.sp < st.regs.sp || (r.sp == st.regs.sp && !leaf))
                {
                    return Err(StopReason::NotMonotonic);
                }
                r.pc = A::strip_ra(r.pc, self.pac_mask);
                if fault_callee && A::HAS_LINK_REGISTER {
                    // Go's arm64 fault handler moved sp down 16 bytes and stored the faulting
                    // function's lr there before making it "call" sigpanic: take both back.
                    if let (Some(lr), Some(sp)) = (mem.read_u64(r.sp), r.sp.checked_add(16)) {
                        r.lr = A::strip_ra(lr, self.pac_mask);
                        r.sp = sp;
                    }
                }
                (r, Via::Dwarf, None)
            }
            None => {
                match self.record_step_at_a_switch(st, mem, cfi_failed, no_cfi) {
                    Ok(found) => found,
                    // Hybrid: the record leads nowhere, but the pc may be a pushed return address
                    // at a function's entry ([`Walker::at_entry`]; Go's `cgocallback` on a
                    // goroutine's stack, whose frame pointer is g0's).
                    Err(e) if self.mode == Mode::Hybrid && !ask_cfi && e != StopReason::End => {
                        match self.at_entry(st, mem, buf, true) {
                            Some(r) => (r, Via::Dwarf, None),
                            None => return Err(e),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if caller.pc == 0 {
            // A zero return address ends the chain; from a frame record, as a zero frame
            // pointer does (`zero_ends`).
            return Err(if via == Via::FramePointer {
                self.zero_ends(st, cfi_failed, no_cfi)
            } else {
                StopReason::End
            });
        }

        // 2. Record it.
        push(st, buf, caller.pc, via, signal);

        // 3. A stack switch?
        if let Some(t) = self.transitions.lookup(caller.pc) {
            if matches!(t.rule, crate::transition::Rule::FaultCall) {
                // Not a switch: go on from here, and take the next caller as exact.
                st.regs = caller;
                st.exact = signal;
                st.fault_call = true;
                if let Some(fp) = record_fp {
                    st.prev_fp = Some(fp);
                }
                return Ok(());
            }
            if st.crossings >= MAX_CROSSINGS {
                return Err(StopReason::TooManyTransitions);
            }
            st.crossings += 1;
            // The kernel "returns" into a sigreturn trampoline at its first instruction (it was
            // not called): that frame's pc is exact, not a return address, so symbolisation
            // must not look at the byte before it.
            if matches!(t.rule, crate::transition::Rule::SignalFrame) && caller.pc == t.range.lo {
                if let Some(f) = st.n.checked_sub(1).and_then(|i| buf.get_mut(i)) {
                    f.flags |= Frame::EXACT;
                }
            }
            // The rule reads relative to the frame record the return address came from; after
            // a DWARF step there is none, and the CFA stands in for record + 16.
            let fp = record_fp.unwrap_or_else(|| caller.sp.wrapping_sub(A::RECORD_SIZE));
            let hop = t
                .rule
                .apply::<A, M>(fp, caller.fp, self.pac_mask, mem)
                .ok_or(StopReason::BadTransition)?;
            st.stack = st.stack.saturating_add(1);
            st.prev_fp = None;
            match hop {
                Hop::Continue => {
                    // The chain continues on another stack; the old sp says nothing there.
                    let mut caller = caller;
                    if record_fp.is_none() && A::KIND == crate::arch::ArchKind::X86_64 {
                        // After a CFI step the caller's fp is the CFI's rule for it, and Go's
                        // CFI has none ("same value": a callee's rbp, still on this stack: a
                        // frame already unwound). A callee that keeps a frame record saved the
                        // chain's next fp at CFA - 16: take it when the CFI's fp is on this
                        // stack (it cannot lead across) and that is a readable record outside
                        // the frames already unwound.
                        let here = |a: u64| st.seg.is_some_and(|s| s.contains(a));
                        // Go's g0 and goroutine stacks may share a segment: "off this stack"
                        // is "not in the frames already unwound" (from where the walk came
                        // onto this stack, or at least the callee's, up to the caller's sp).
                        let low = if st.base_sp != 0 && st.base_sp <= st.regs.sp {
                            st.base_sp
                        } else {
                            st.regs.sp
                        };
                        let unwound = |a: u64| a >= low && a < caller.sp;
                        // Only a fp among those frames: one elsewhere on the same mapping is
                        // another stack that shares it (psm segments allocated from one heap
                        // mapping, nested: the CFI's fp is the outer segment's record, and the
                        // word at CFA - 16 of a callee without a record is no link).
                        if here(caller.fp) && unwound(caller.fp) {
                            if let Some(saved) = mem.read_u64(fp) {
                                if saved != 0
                                    && saved.is_multiple_of(A::FP_ALIGN)
                                    && !unwound(saved)
                                    && mem.stack_range(saved).is_some()
                                    && mem.read_pair(saved).is_some_and(|(_, ra)| ra != 0)
                                {
                                    caller.fp = saved;
                                }
                            }
                        }
                        // Still a frame already unwound (the callee kept no record, C code
                        // under `asmcgocall`): the chain would walk those frames again, one
                        // record further each time (a cgo crash in a c-archive printed its
                        // g0 frames seven times). The crossing fails; the offline walk then
                        // crosses through `g.sched`.
                        if unwound(caller.fp) {
                            return Err(StopReason::BadTransition);
                        }
                    }
                    st.regs = Regs { sp: 0, ..caller };
                    st.base_sp = 0;
                    st.exact = false;
                    st.pending = t.id;
                    st.seg = if caller.fp != 0 {
                        enter_stack_at(mem, caller.fp)
                    } else {
                        None
                    };
                }
                Hop::Regs { regs, exact } => {
                    if regs.pc == 0 && !exact {
                        return Err(StopReason::BadTransition);
                    }
                    st.regs = regs;
                    st.base_sp = regs.sp;
                    st.exact = exact;
                    st.seg = stack_entered(mem, &regs);
                    if st.n >= limit {
                        return Ok(());
                    }
                    st.pending = t.id;
                    push(st, buf, regs.pc, Via::Transition, exact);
                    if regs.pc == 0 {
                        // A signal (SIGSEGV) raised by a call through a null pointer.
                        return self.null_caller(st, mem, buf, limit);
                    }
                    if exact {
                        self.bad_call_caller(st, mem, buf, limit)?;
                    }
                    self.leaf_lr(st, mem, buf, limit);
                }
            }
            return Ok(());
        }

        st.regs = caller;
        st.exact = signal;
        if let Some(fp) = record_fp {
            st.prev_fp = Some(fp);
        }
        Ok(())
    }

    /// An exact (interrupted) pc whose frame (its CFI's CFA, or, in a registered switch
    /// function, its frame record) is on `seg`, a known stack other than the one sp is on: the
    /// code was interrupted in the middle of a stack switch (only a switch moves sp to another
    /// stack while its frame stays on the first; the CFI of code that does not switch keeps its
    /// CFA on sp's stack). Enters `seg`, bounded by [`MAX_CROSSINGS`]; when the pc is in a
    /// registered switch function, as a crossing: the stack index rises and the caller's frame
    /// is marked with its id (else the index stays: a rise is always a marked transition).
    #[cold]
    #[inline(never)]
    fn mid_switch(&mut self, st: &mut State, seg: Range) -> Result<(), StopReason> {
        if st.crossings >= MAX_CROSSINGS {
            return Err(StopReason::TooManyTransitions);
        }
        let id = self.switch_at(st.regs.pc).map_or(0, |t| t.id);
        st.crossings += 1;
        // A stack index rises only at a transition a frame is marked with: an unregistered
        // switch's frames keep the index (the segment changes under it).
        if id != 0 {
            st.stack = st.stack.saturating_add(1);
        }
        st.prev_fp = None;
        st.seg = Some(seg);
        st.pending = id;
        Ok(())
    }

    /// [`Walker::record_step`], after entering the stack the frame record is on when it lies
    /// off sp's stack at an interrupted pc in a registered switch function (a switch in
    /// progress: psm's `rust_psm_on_stack` at its `call`) and that stack is one the memory
    /// knows. Anything else there is left to `record_step` (a frame pointer gone astray, with
    /// its own stop reason). The same in every mode: a frame-pointer walk and a Hybrid walk
    /// whose CFI says "frame record" agree (the walk fuzz target checks it).
    fn record_step_at_a_switch<M: Memory>(
        &mut self,
        st: &mut State,
        mem: &mut M,
        cfi_failed: bool,
        no_cfi: bool,
    ) -> Result<(Regs, Via, Option<u64>), StopReason> {
        let fp = st.regs.fp;
        let off_stack = st.exact
            && fp != 0
            && fp.is_multiple_of(A::FP_ALIGN)
            && st
                .seg
                .is_some_and(|seg| !seg.contains_span(fp, A::RECORD_SIZE));
        if off_stack && self.in_a_switch(st.regs.pc) {
            if let Some(seg) = enter_stack_at(mem, fp) {
                self.mid_switch(st, seg)?;
                // sp is on the stack left: it bounds nothing on this one.
                st.regs.sp = 0;
            }
        }
        self.record_step(st, mem, cfi_failed, no_cfi)
    }

    /// The registered switch function `pc` is in (a transition entry that is neither a signal
    /// trampoline nor an injected call).
    fn switch_at(&self, pc: u64) -> Option<crate::transition::Transition> {
        use crate::transition::Rule;
        self.transitions
            .lookup(pc)
            .filter(|t| !matches!(t.rule, Rule::SignalFrame | Rule::FaultCall))
    }

    /// Is `pc` in a registered switch function ([`Walker::switch_at`])?
    #[cold]
    #[inline(never)]
    fn in_a_switch(&self, pc: u64) -> bool {
        self.switch_at(pc).is_some()
    }

    /// After an exact pc other than 0, already written: where the memory says it is in no
    /// executable memory, a call through a bad function pointer (unmapped, a small integer, a
    /// freed object's heap, the stack) faulted at its target before anything ran there, as a
    /// null one ([`Walker::null_caller`]), and its caller is the return address the call left.
    /// Taken only where that word is itself in executable memory: a return to a smashed
    /// address or a jump leaves something else there, and the walk goes on as before (the
    /// frame record or CFI at the pc). One question to the memory at most where the pc is
    /// code (a memory that cannot tell answers `None`: nothing changes).
    #[inline(never)]
    fn bad_call_caller<M: Memory>(
        &mut self,
        st: &mut State,
        mem: &mut M,
        buf: &mut [Frame],
        limit: usize,
    ) -> Result<(), StopReason> {
        if mem.is_code(st.regs.pc) != Some(false) {
            return Ok(());
        }
        match self.call_return_address(st, mem) {
            Some(ra) if mem.is_code(ra) == Some(true) => self.enter_call_caller(st, buf, limit, ra),
            _ => Ok(()),
        }
    }

    /// The return address a call just made left, where it left it (x86_64: at sp; aarch64:
    /// in `lr`), stripped of any PAC; `None` where it cannot be read or is 0.
    fn call_return_address<M: Memory>(&self, st: &State, mem: &mut M) -> Option<u64> {
        let ra = if A::HAS_LINK_REGISTER {
            Some(st.regs.lr)
        } else {
            st.seg
                .filter(|s| s.contains_span(st.regs.sp, 8))
                .and_then(|_| mem.read_u64(st.regs.sp))
        };
        ra.map(|r| A::strip_ra(r, self.pac_mask))
            .filter(|&r| r != 0)
    }

    /// After an exact pc of 0, already written: a call through a null function pointer, where
    /// nothing ran. Its caller is the call's return address, where the call left it (x86_64:
    /// at sp, popped; aarch64: in `lr`); the frame pointer is the caller's.
    fn null_caller<M: Memory>(
        &mut self,
        st: &mut State,
        mem: &mut M,
        buf: &mut [Frame],
        limit: usize,
    ) -> Result<(), StopReason> {
        let ra = self
            .call_return_address(st, mem)
            .ok_or(StopReason::ReadFailed)?;
        self.enter_call_caller(st, buf, limit, ra)
    }

    /// Writes `ra`, the return address of a call that never ran (see [`Walker::null_caller`]),
    /// as the next frame, and moves to that caller: the call's push undone on x86_64.
    fn enter_call_caller(
        &mut self,
        st: &mut State,
        buf: &mut [Frame],
        limit: usize,
        ra: u64,
    ) -> Result<(), StopReason> {
        if st.n >= limit {
            return Err(self.full_stop(st.n));
        }
        push(st, buf, ra, Via::Regs, false);
        st.regs.pc = ra;
        if !A::HAS_LINK_REGISTER {
            st.regs.sp = st.regs.sp.wrapping_add(8);
        }
        st.exact = false;
        Ok(())
    }

    /// aarch64, frame-pointer mode, after an interrupted pc: the interrupted function may be a
    /// leaf with no frame record, its caller only in `lr`. `lr` is used as the next frame only
    /// when it is a return address the record at `fp` does not already hold, and the
    /// interrupted function is the one it returns from ([`Arch::lr_is_live`]). With CFI, the CFI
    /// decides. Runs once per exact start (the walk's first frame, a signal frame), never in
    /// the record-following loop.
    fn leaf_lr<M: Memory>(&mut self, st: &mut State, mem: &mut M, buf: &mut [Frame], limit: usize) {
        if !A::HAS_LINK_REGISTER || self.mode != Mode::FramePointer || !st.exact || st.n >= limit {
            return;
        }
        let lr = A::strip_ra(st.regs.lr, self.pac_mask);
        if lr == 0 || lr % 4 != 0 {
            return;
        }
        if self.leaf_signal_frame(st, mem, buf, limit, lr) {
            return;
        }
        let record_ra = mem
            .read_u64(st.regs.fp.wrapping_add(A::RECORD_RA))
            .map(|ra| A::strip_ra(ra, self.pac_mask));
        let live = A::lr_is_live(st.regs.pc, lr, &mut |at, b| mem.read_code(at, b));
        if record_ra == Some(lr) || !live {
            return;
        }
        push(st, buf, lr, Via::Regs, false);
        st.regs.pc = lr;
        st.exact = false;
    }
}

impl<A: Arch, T: Transitions, C: Cfi> Walker<A, T, C> {
    /// aarch64: a signal handler interrupted before it pushed a frame record (a frameless
    /// leaf) has the sigreturn trampoline in `lr` and x29 still at the frame record the
    /// kernel put in the signal frame. The signal-frame rule reads the interrupted registers
    /// from there (the same record a framed handler's saved x29 would point at). Returns
    /// whether it crossed.
    fn leaf_signal_frame<M: Memory>(
        &mut self,
        st: &mut State,
        mem: &mut M,
        buf: &mut [Frame],
        limit: usize,
        lr: u64,
    ) -> bool {
        let Some(t) = self.transitions.lookup(lr) else {
            return false;
        };
        if !matches!(t.rule, crate::transition::Rule::SignalFrame) || st.crossings >= MAX_CROSSINGS
        {
            return false;
        }
        let next_fp = st.regs.fp;
        let Some(Hop::Regs { regs, exact }) = t.rule.apply::<A, M>(
            next_fp.wrapping_sub(A::RECORD_SIZE),
            next_fp,
            self.pac_mask,
            mem,
        ) else {
            return false;
        };
        if regs.pc == 0 || st.n + 2 > limit {
            return false;
        }
        push(st, buf, lr, Via::Regs, false);
        st.crossings += 1;
        st.stack = st.stack.saturating_add(1);
        st.prev_fp = None;
        st.regs = regs;
        st.exact = exact;
        st.seg = stack_entered(mem, &regs);
        st.pending = t.id;
        push(st, buf, regs.pc, Via::Transition, exact);
        // The interrupted function may itself be a frameless leaf.
        self.leaf_lr(st, mem, buf, limit);
        true
    }
}

/// Follows ordinary frame records on one stack into `out`. A record is ordinary when its
/// address is aligned, at least `floor` (above the previous record and the stack pointer), with
/// the whole record inside `seg`, its return address is non-zero and cannot be a transition
/// (the table's page filter, or `table.may_match`, says no), and `keeps_record` says the
/// function returned into keeps a record ([`RecordTest`]).
/// Returns how many frames were written, the next frame pointer and the next floor.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn follow_records<A: Arch, M: Memory, T: Transitions>(
    mem: &mut M,
    table: &T,
    out: &mut [Frame],
    seg: Range,
    floor: u64,
    fp: u64,
    stack: u16,
    pac_mask: u64,
    keeps_record: impl RecordTest,
) -> (usize, u64, u64) {
    // The hot loop reads records unchecked: not on a stack the memory reads only with checks
    // (the general step takes those frames).
    if !mem.reads_unchecked(seg) {
        return (0, fp, floor);
    }
    follow_records_inline::<A, M, T>(
        mem,
        table,
        out,
        seg,
        floor,
        fp,
        stack,
        pac_mask,
        keeps_record,
    )
}

/// [`follow_records`], inlined into its caller (the frame-pointer entry of a live capture,
/// whose whole work it is: a call would cost more than the set-up it saves).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn follow_records_inline<A: Arch, M: Memory, T: Transitions>(
    mem: &mut M,
    table: &T,
    out: &mut [Frame],
    seg: Range,
    mut floor: u64,
    mut fp: u64,
    stack: u16,
    pac_mask: u64,
    mut keeps_record: impl RecordTest,
) -> (usize, u64, u64) {
    let top = seg.hi.saturating_sub(A::RECORD_SIZE);
    // Opaque on purpose (`PageFilter::opaque`): the filter's address stays in a register.
    let filter = table.page_filter().map(PageFilter::opaque);
    // Without one, the table's envelope, once per run (a stale one only delays seeing a new
    // entry): a return address outside it costs one compare, one inside it the table's own
    // check.
    let env = match filter {
        Some(_) => Range::default(),
        None => table.envelope(),
    };
    let (env_lo, env_span) = (env.lo, env.hi.saturating_sub(env.lo));
    // The page's filter byte: with a page filter, one byte load, whether or not the return
    // address is inside the envelope (frames inside it, between a program's own trampolines
    // and libc's, are the common case; the filter is also always hit at 0, so it tests for
    // the chain's end too); else a zero test, the envelope compare and the table's own check,
    // and "ask `keeps_record`".
    let page = |ra: u64| match filter {
        Some(f) => f.byte(ra),
        None if ra == 0 || (ra.wrapping_sub(env_lo) < env_span && table.may_match_inside(ra)) => {
            TRANSITION_PAGE
        }
        None => UNRECORDED_PAGE,
    };
    let floor0 = floor.max(seg.lo);
    floor = floor0;
    let meta = Frame::meta(stack, Via::FramePointer, 0, 0);
    let mut k = 0;
    while let Some(slot) = out.get_mut(k) {
        if !fp.is_multiple_of(A::FP_ALIGN) || fp < floor || fp > top {
            break;
        }
        // SAFETY: seg.lo <= floor <= fp <= seg.hi - 16, so the record lies inside `seg`,
        // which the walker got from `mem.stack_range`.
        let Some((next, ra)) = (unsafe { mem.read_pair_unchecked(fp) }) else {
            break;
        };
        let ra = A::strip_ra(ra, pac_mask);
        let b = page(ra);
        // A zero byte on a page `keeps_record` covers: no transition, and the function keeps a
        // record. Else the exact tests.
        if !(b == 0 && keeps_record.covers(ra)) {
            // Rare: lay the common case out straight (no taken branch in it).
            cold();
            if b & TRANSITION_PAGE != 0 || !keeps_record.keeps(ra) {
                break;
            }
        }
        Frame::write_raw(slot, ra, meta);
        k += 1;
        floor = fp + A::RECORD_SIZE;
        fp = next;
    }
    (k, fp, if k == 0 { floor0 } else { floor })
}

/// Marks the path that calls it as rare (an empty `#[cold]` function: the branch leading to it
/// is laid out of the way; `core::hint::cold_path` is newer than this crate's minimum Rust).
#[cold]
#[inline]
fn cold() {}

/// Which records a frame-record run may follow ([`follow_records`]): only those of functions
/// that keep one, and which return addresses a zero [`PageFilter`](crate::transition::PageFilter)
/// byte answers for.
pub(crate) trait RecordTest {
    /// Does a zero filter byte on `ra`'s page mean [`RecordTest::keeps`] is true for `ra`? A
    /// cheap test, taken for every return address. The default: never (always ask `keeps`).
    #[inline(always)]
    fn covers(&self, _ra: u64) -> bool {
        false
    }

    /// Does the function containing return address `ra` keep a frame record (may the walk
    /// follow the record it saved)?
    fn keeps(&mut self, ra: u64) -> bool;
}

/// Every function keeps a frame record: the frame-pointer walk. A zero filter byte answers
/// everywhere.
#[cfg(feature = "live")]
pub(crate) struct AllRecords;

#[cfg(feature = "live")]
impl RecordTest for AllRecords {
    #[inline(always)]
    fn covers(&self, _ra: u64) -> bool {
        true
    }
    #[inline(always)]
    fn keeps(&mut self, _ra: u64) -> bool {
        true
    }
}

/// A closure answers [`RecordTest::keeps`], and the filter byte covers nothing.
impl<F: FnMut(u64) -> bool> RecordTest for F {
    #[inline(always)]
    fn keeps(&mut self, ra: u64) -> bool {
        self(ra)
    }
}

/// The record map of [`crate::dwarf::capture`]'s own module, whose pages with code that
/// keeps no record are marked in the live table's filter
/// ([`crate::transition::mark_unrecorded_page`], by the unwinder that found it): inside the
/// map a zero byte answers, and elsewhere nothing is followed.
#[cfg(feature = "dwarf")]
pub(crate) struct HomeRecords<'a>(pub(crate) RecordMap<'a>);

#[cfg(feature = "dwarf")]
impl RecordTest for HomeRecords<'_> {
    #[inline(always)]
    fn covers(&self, ra: u64) -> bool {
        self.0.covers(ra)
    }
    #[inline(always)]
    fn keeps(&mut self, ra: u64) -> bool {
        self.0.keeps(ra)
    }
}

/// Stacks the plain-rule loop runs on lie inside `[PLAIN_LO, PLAIN_HI)`: a CFA computed from
/// a zero base, or one whose `i32` offset overflowed, then lands outside the stack, and the
/// loop's bounds checks reject it without checking for either.
const PLAIN_LO: u64 = 1 << 31;
const PLAIN_HI: u64 = 0u64.wrapping_sub(1 << 31);

/// [`Mode::Dwarf`]'s hot loop with [`Cfi::plain_rule`]: from the (non-exact) registers `regs`,
/// applies plain rules on one stack `seg` into `out` while everything is ordinary (a rule at
/// hand, a CFA that moves up inside `seg`, aligned reads inside `seg`, a non-zero return
/// address that cannot be a transition). Each frame is exactly the one [`Walker::step`] would
/// write; at anything else it stops, and the general step handles that frame.
/// Returns how many frames it wrote; `regs` are then the last one's.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn follow_cfi<A: Arch, M: Memory, T: Transitions, C: Cfi, const HYBRID: bool>(
    cfi: &mut C,
    mem: &mut M,
    table: &T,
    out: &mut [Frame],
    seg: Range,
    regs: &mut Regs,
    stack: u16,
    pac_mask: u64,
) -> usize {
    follow_cfi_inline::<A, M, T, C, HYBRID>(cfi, mem, table, out, seg, regs, stack, pac_mask)
}

/// [`follow_cfi`], inlined (a live Dwarf capture's entry, [`Walker::walk_from_return`]: the
/// call's set-up was a tenth of a depth-8 capture).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn follow_cfi_inline<A: Arch, M: Memory, T: Transitions, C: Cfi, const HYBRID: bool>(
    cfi: &mut C,
    mem: &mut M,
    table: &T,
    out: &mut [Frame],
    seg: Range,
    regs: &mut Regs,
    stack: u16,
    pac_mask: u64,
) -> usize {
    // The stack must lie where a bad CFA cannot wrap into it (see `PLAIN_LO`) and hold sp: then
    // sp < CFA < seg.hi keeps every CFA, so every later sp, inside it. (One compare: sp in
    // `[max(lo, PLAIN_LO), min(hi, PLAIN_HI))` and hi <= PLAIN_HI.)
    let lo = seg.lo.max(PLAIN_LO);
    if seg.hi > PLAIN_HI || regs.sp.wrapping_sub(lo) >= seg.hi.wrapping_sub(lo) || seg.lo < PLAIN_LO
    {
        return 0;
    }
    // Reads are unchecked: not on a stack the memory reads only with checks.
    if !mem.reads_unchecked(seg) {
        return 0;
    }
    const META0: u64 = Frame::meta(0, Via::Dwarf, 0, 0);
    let meta = Frame::meta(stack, Via::Dwarf, 0, 0);
    let top = seg.hi;
    // Opaque, as in `follow_records_inline`: the filter's address stays in a register. One loop
    // per kind of transition check, so that the loop does not test which one it is, and on the
    // first stack (the common case) one whose frames' second word is a constant.
    match table.page_filter().map(PageFilter::opaque) {
        Some(f) if meta == META0 => {
            plain_steps::<A, M, C, HYBRID>(cfi, mem, out, top, regs, META0, pac_mask, |ra| {
                f.hit(ra)
            })
        }
        Some(f) => {
            plain_steps::<A, M, C, HYBRID>(cfi, mem, out, top, regs, meta, pac_mask, |ra| f.hit(ra))
        }
        None => {
            let env = table.envelope();
            let (env_lo, env_span) = (env.lo, env.hi.saturating_sub(env.lo));
            plain_steps::<A, M, C, HYBRID>(cfi, mem, out, top, regs, meta, pac_mask, |ra| {
                ra == 0 || (ra.wrapping_sub(env_lo) < env_span && table.may_match_inside(ra))
            })
        }
    }
}

/// [`follow_cfi`]'s loop, with one check `may_switch` that is true for every return address
/// that may be a transition and for zero (the page filter is always hit at 0); `top` is the
/// stack's end, and `regs.sp` is inside the stack.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn plain_steps<A: Arch, M: Memory, C: Cfi, const HYBRID: bool>(
    cfi: &mut C,
    mem: &mut M,
    out: &mut [Frame],
    top: u64,
    regs: &mut Regs,
    meta: u64,
    pac_mask: u64,
    may_switch: impl Fn(u64) -> bool,
) -> usize {
    let (mut pc, mut sp, mut fp) = (regs.pc, regs.sp, regs.fp);
    let total = out.len();
    let mut rest = out;
    // The frames written are the slots used: no counter beside the slot pointer.
    let left = loop {
        let [slot, tail @ ..] = rest else {
            break 0;
        };
        let left = tail.len() + 1;
        // The end of a round: the caller's return address `ra` (as read), CFA and fp. Each
        // path below ends with its own expansion, so that no path merges its registers into
        // another's.
        macro_rules! end_round {
            ($ra:expr, $cfa:expr, $next_fp:expr) => {{
                let ra = A::strip_ra($ra, pac_mask);
                if may_switch(ra) {
                    break left;
                }
                Frame::write_raw(slot, ra, meta);
                rest = tail;
                pc = ra;
                sp = $cfa;
                fp = $next_fp;
                continue;
            }};
        }
        // Hybrid mode follows the frame record of a function that keeps one.
        if HYBRID && cfi.keeps_frame_record(pc) {
            break left;
        }
        // Dwarf mode: the frame-record rule (CFA = fp + 16, the pair at fp: every function that
        // keeps a frame record) is the common row of code built with frame pointers. Its pair
        // is read now, while the rule is looked up, and used if the rule turns out to be that
        // one: the frame then waits for one load, not for the cache's load, an add and then the
        // pair's. (Hybrid mode follows such frames' records without asking the CFI, so this
        // loop only sees code without them, where the extra read would be wasted.)
        let spec = if !HYBRID && fp & 7 == 0 && fp >= sp && fp < top - 16 {
            // SAFETY: `fp` is 8-aligned and `sp <= fp`, `fp + 16 < top`: the 16 bytes lie
            // inside the stack (sp is inside it), which the walker got from `mem.stack_range`.
            unsafe { mem.read_pair_unchecked(fp) }
        } else {
            None
        };
        let Some(rule) = cfi.plain_rule(pc) else {
            break left;
        };
        if !HYBRID
            && rule.kind & (PlainRule::PAIR | PlainRule::CFA_FP)
                == PlainRule::PAIR | PlainRule::CFA_FP
            && rule.cfa_off == 16
            && rule.pair_off == 0
        {
            if let Some((next_fp, ra)) = spec {
                // Exactly the round below for this rule: cfa = fp + 16 lies above sp and below
                // the top, the pair at fp is aligned and at or above sp (checked above).
                end_round!(ra, fp + 16, next_fp);
            }
        }
        // Pairs, one copy of the round for each base register: the base is then a predicted
        // branch, not a select on the rule just loaded (the frame's latency is the cache's load,
        // two adds and the pair's load).
        if rule.kind & PlainRule::PAIR != 0 {
            let (cfa, at) = if rule.kind & PlainRule::CFA_FP != 0 {
                // `Cfi::step` fails on a zero fp or an overflow; here either gives a CFA outside
                // `[PLAIN_LO, PLAIN_HI)`, so outside the stack. A CFA above sp and below the top
                // is inside the stack (sp is), and then `at` does not wrap.
                let cfa = fp.wrapping_add_signed(rule.cfa_off as i64);
                let at = fp.wrapping_add_signed(rule.pair_off as i64);
                if cfa <= sp || cfa >= top || at < sp || at & 7 != 0 {
                    break left;
                }
                (cfa, at)
            } else {
                // From sp (inside the stack, below `PLAIN_HI`): `0 <= pair_off < cfa_off`, so
                // sp <= at < cfa, with no overflow.
                let cfa = sp.wrapping_add_signed(rule.cfa_off as i64);
                let at = sp.wrapping_add_signed(rule.pair_off as i64);
                if cfa >= top || at & 7 != 0 {
                    break left;
                }
                (cfa, at)
            };
            // SAFETY: `at` is 8-aligned and `sp <= at`, `at + 16 <= cfa < top` (the pair is
            // below the CFA: `fp_off <= -16`): the 16 bytes lie inside the stack, which the
            // walker got from `mem.stack_range`.
            let Some((next_fp, ra)) = (unsafe { mem.read_pair_unchecked(at) }) else {
                break left;
            };
            end_round!(ra, cfa, next_fp);
        }
        let base = if rule.kind & PlainRule::CFA_FP != 0 {
            fp
        } else {
            sp
        };
        // As above: a zero base or an overflow gives a CFA outside the stack.
        let cfa = base.wrapping_add_signed(rule.cfa_off as i64);
        if cfa <= sp || cfa >= top {
            break left;
        }
        if rule.kind & PlainRule::PLAIN == 0 {
            break left;
        }
        // (The rule's fields, not the rule: a struct argument would be stored every round.)
        let saved = rule.kind & PlainRule::FP_SAVED != 0;
        let (ra_at, fp_at) = (
            cfa.wrapping_add_signed(rule.ra_off as i64),
            cfa.wrapping_add_signed(rule.fp_off as i64),
        );
        // The common row of code built without frame pointers (the return address below the
        // CFA, fp not saved: the callee left it alone) reads one word inline; others out of
        // line.
        let got = if !saved && ra_at & 7 == 0 && ra_at >= sp && ra_at.wrapping_add(16) <= top {
            // SAFETY: `ra_at` is 8-aligned and `sp <= ra_at`, `ra_at + 16 <= top` (no wrap:
            // `sp >= PLAIN_LO`, and `ra_at` is within an i16 of a CFA below `top <= PLAIN_HI`):
            // the 16 bytes lie inside the stack, which the walker got from `mem.stack_range`.
            unsafe { mem.read_pair_unchecked(ra_at) }.map(|(ra, _)| (ra, fp))
        } else {
            read_one_by_one(&mut *mem, ra_at, saved.then_some(fp_at), fp)
        };
        let Some((ra, next_fp)) = got else {
            break left;
        };
        end_round!(ra, cfa, next_fp);
    };
    *regs = Regs { pc, sp, fp, lr: 0 };
    total - left
}

/// The return address at `ra_at` and the caller's fp at `fp_at` (or `fp`, not saved), for a
/// plain rule that is not a pair, read one by one: out of line, so that the pair loop does not
/// keep registers for it.
#[cold]
#[inline(never)]
fn read_one_by_one<M: Memory>(
    mem: &mut M,
    ra_at: u64,
    fp_at: Option<u64>,
    fp: u64,
) -> Option<(u64, u64)> {
    let ra = mem.read_u64(ra_at)?;
    let fp = match fp_at {
        Some(at) => mem.read_u64(at)?,
        None => fp,
    };
    Some((ra, fp))
}

struct State {
    regs: Regs,
    exact: bool,
    stack: u16,
    seg: Option<Range>,
    prev_fp: Option<u64>,
    /// Transition id to record on the next frame written.
    pending: u16,
    /// The current frame is a [`crate::transition::Rule::FaultCall`] function: its caller's
    /// pc is exact (the general step finds it, not the hot runs).
    fault_call: bool,
    crossings: u16,
    n: usize,
    /// The sp at which the walk came onto the stack it is on (its start, or a crossing that
    /// gave registers), 0 when unknown: the frames already unwound there lie between it and
    /// the current sp, so no caller's frame record is among them.
    base_sp: u64,
}

impl State {
    /// Is sp on the stack the walk is on (or is that unknown)? An interrupted sp at the very
    /// top of a fresh stack, where psm and stacker put it (nothing pushed yet), is on no known
    /// stack: the walk then starts on the frame's stack, and sp bounds nothing there.
    fn sp_on_seg(&self) -> bool {
        self.seg.is_none_or(|seg| seg.holds_sp(self.regs.sp))
    }
}

/// How many frames a walk into a buffer of `len` may write, at most `max_depth` (0: no limit
/// but the buffer's).
#[inline(always)]
pub(crate) const fn depth_limit(max_depth: usize, len: usize) -> usize {
    if max_depth == 0 {
        len
    } else if max_depth < len {
        max_depth
    } else {
        len
    }
}

#[inline(always)]
fn push(st: &mut State, buf: &mut [Frame], pc: u64, via: Via, exact: bool) {
    let (via, transition) = if st.pending != 0 {
        (Via::Transition, core::mem::take(&mut st.pending))
    } else {
        (via, 0)
    };
    if let Some(slot) = buf.get_mut(st.n) {
        *slot = Frame {
            pc,
            stack: st.stack,
            via,
            flags: if exact { Frame::EXACT } else { 0 },
            transition,
        };
        st.n += 1;
    }
}

/// [`Memory::enter_stack`], out of line (see [`stack_entered`]).
#[cold]
#[inline(never)]
fn enter_stack_at<M: Memory>(mem: &mut M, addr: u64) -> Option<Range> {
    mem.enter_stack(addr)
}

/// The stack holding `regs`' stack pointer, else their frame pointer.
#[inline]
fn stack_of<M: Memory>(mem: &mut M, regs: &Regs) -> Option<Range> {
    // As `first_stack`, written out: its closure was not inlined (a call per walk).
    if regs.sp != 0 {
        if let Some(r) = mem.stack_range(regs.sp) {
            return Some(r);
        }
    }
    if regs.fp != 0 {
        mem.stack_range(regs.fp)
    } else {
        None
    }
}

/// The stack a transition's recovered registers `regs` lead to ([`Memory::enter_stack`]): the
/// one holding their stack pointer, else their frame pointer. Out of line: transitions are
/// rare, and the walker's hot loop stays as small as it was.
#[cold]
#[inline(never)]
fn stack_entered<M: Memory>(mem: &mut M, regs: &Regs) -> Option<Range> {
    first_stack(regs, |a| mem.enter_stack(a))
}

/// `find` at `regs`' stack pointer, else at their frame pointer (each only when not 0).
#[inline(always)]
fn first_stack(regs: &Regs, mut find: impl FnMut(u64) -> Option<Range>) -> Option<Range> {
    if regs.sp != 0 {
        if let Some(r) = find(regs.sp) {
            return Some(r);
        }
    }
    if regs.fp != 0 {
        find(regs.fp)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;

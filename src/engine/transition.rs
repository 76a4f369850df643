//! The transition table: known stack-switch return addresses and how to find the other side.
//!
//! Runtimes switch stacks (Go's `systemstack`, signal handlers on an alternate stack, coroutines,
//! `psm` segments, `system_stack`). At a switch the frame chain either links to the
//! other stack (which a plain walk refuses: frame pointers must move up one stack) or is cut. A
//! [`Transition`] names the return addresses at which such a switch sits and a [`Rule`] that says
//! where the registers of the other side are. The walker consults the table for every return
//! address it finds; when none can match this costs one range compare.
//!
//! Two tables implement [`Transitions`]: [`TransitionTable`], a plain sorted vector (offline
//! unwinding, tests, fuzzing), and [`Live`], the process-wide registry that live captures use.
//! The registry is read lock-free from two fixed-size static buffers ("left-right": readers use
//! the active one while a writer fills the other, then flips): readers (signal handlers) never
//! block, never allocate, never touch freed memory and never write shared memory (no cache line
//! bounces between threads that capture at once), and always see a complete version (each
//! buffer carries a sequence number, odd while it is rewritten, that a reader checks before and
//! after reading a row), so an entry that stays registered is never missed. A reader retries
//! only if its buffer was rewritten while it read (two whole publishes), at most a bounded
//! number of times, after which it reports "no match" (truncating that one trace cleanly).
//! Writers ([`register`], [`unregister`], [`register_stack`]) take a mutex, never wait for
//! readers, and must not be called from signal handlers. [`unregister_stack`] alone waits, for
//! walks on other threads that may still read the stack it removes (their read sections: see
//! [`unregister_stack`]), so that the stack's memory may be freed when it returns.

use crate::arch::{Arch, Regs};
use crate::memory::{Memory, Range};
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Where the offsets of a [`Rule::SavedAt`] are measured from, at the frame whose return address
/// matched (the "callee": the first function that ran on the new stack).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Base {
    /// The callee's frame record (the address the matching return address was read from, - 8).
    Fp,
    /// The callee's canonical frame address: its frame record + 16, the stack pointer of the
    /// switch function at its call.
    Cfa,
    /// The saved frame pointer in the callee's record (the switch function's own frame pointer).
    SavedFp,
    /// The word stored at the saved frame pointer: a link to the top of the other stack, where
    /// the switch saved the other side's registers (corosensei: the coroutine's root frame
    /// pointer points at a "parent link" near the stack base, which holds the parent's stack
    /// pointer; the parent's fp and pc are saved there).
    Link,
    /// [`Base::Link`], and the other side's stack pointer, not saved, is the link plus this
    /// many bytes (the words the switch pushed there: corosensei's parent context, 24 bytes on
    /// x86_64, 32 on aarch64, as its CFI says). A walk that goes on by CFI needs it; with
    /// `Link` the stack pointer is unknown and only frame records lead on.
    LinkPlus(u8),
    /// [`Base::SavedFp`], and the other side's stack pointer, not saved, is the saved frame
    /// pointer plus this many bytes: the switch function's own CFA, where its frame record
    /// sits under the other side's return address (GCC's `-fsplit-stack` `__morestack`: its
    /// record and the split function's caller's return address stay on the old stack, 24
    /// bytes: saved rbp, the return into the split function's prologue, the caller's return
    /// address).
    SavedFpPlus(u8),
}

/// How to recover the registers of the other side of a stack switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// The frame chain already links to the other stack: accept the jump and start a new stack
    /// segment (Go `systemstack`, psm's `rust_psm_on_stack`).
    ContinueChain,
    /// The other side's pc, sp and fp were stored at offsets from [`Base`] (coroutine
    /// trampolines, `system_stack`). `sp: None` when it was not saved. `pc` is a return
    /// address.
    SavedAt {
        /// What the offsets are measured from.
        base: Base,
        /// Offset of the saved pc (a return address).
        pc: i32,
        /// Offset of the saved sp, if saved.
        sp: Option<i32>,
        /// Offset of the saved frame pointer.
        fp: i32,
    },
    /// The kernel's `rt_sigframe`: the matching return address is the sigreturn trampoline, the
    /// interrupted registers are in the `ucontext` (see [`crate::arch`] for the layouts). The
    /// interrupted pc becomes an exact frame.
    SignalFrame,
    /// A context block the runtime keeps current (Go's `g.sched`, wasmtime's exit fp/pc): the
    /// saved registers are read at offsets in the block at address `block`.
    Context {
        /// Address of the block.
        block: u64,
        /// Offset of the saved pc (a return address) in the block.
        pc: u32,
        /// Offset of the saved sp in the block.
        sp: u32,
        /// Offset of the saved frame pointer in the block.
        fp: u32,
    },
    /// Not a stack switch: a function a runtime's signal handler makes the faulting code seem
    /// to have called (Go's `runtime.sigpanic`: the handler pushes the faulting pc as a return
    /// address and resumes there). The walk steps through it as through any function, and
    /// its caller's pc, being the faulting instruction and not the one after a call, is
    /// exact ([`crate::Frame::EXACT`]): its CFI and symbol are looked up at the pc itself (a
    /// fault at a function's first instruction would otherwise be looked up in the function
    /// before it). On aarch64 the handler (Go's `preparePanic`) also moved sp down 16 bytes
    /// and stored the faulting function's lr there: a CFI step takes both back. The range
    /// covers the function's whole code.
    FaultCall,
}

/// Identifies a registered transition (or stack). 0 means "none".
pub type Id = u16;

/// One table entry: return addresses in `range` are a stack switch handled by `rule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transition {
    /// Return addresses this entry covers (a single address is `[ra, ra + 1)`).
    pub range: Range,
    /// How to find the other side.
    pub rule: Rule,
    /// The entry's id, recorded in the frame after the crossing.
    pub id: Id,
}

/// A table the walker can consult.
pub trait Transitions {
    /// The transition whose range contains the return address `ra`, if any.
    fn lookup(&self, ra: u64) -> Option<Transition>;

    /// A range that contains every entry (the walker reads it once per walk and only looks up
    /// return addresses inside it). The default covers everything.
    #[inline(always)]
    fn envelope(&self) -> Range {
        Range::new(0, u64::MAX)
    }

    /// A cheap pre-check the walker's hot loop runs on every return address: `false` means
    /// [`Transitions::lookup`] would certainly find nothing. The default checks the envelope.
    #[inline(always)]
    fn may_match(&self, ra: u64) -> bool {
        self.envelope().contains(ra)
    }

    /// [`Transitions::may_match`] for a return address the caller already found inside
    /// [`Transitions::envelope`] (read once per run of the hot loop). The default repeats the
    /// whole check.
    #[inline(always)]
    fn may_match_inside(&self, ra: u64) -> bool {
        self.may_match(ra)
    }

    /// The table's page filter, when [`Transitions::may_match_inside`] is exactly one test of
    /// it. The hot loop takes it once per run, so the filter's address stays in a register
    /// rather than being reloaded from a static for every return address. The default: none.
    #[inline(always)]
    fn page_filter(&self) -> Option<PageFilter<'_>> {
        None
    }
}

/// A transition table's page filter ([`Transitions::page_filter`]): one byte per 4 KiB page,
/// direct-mapped (pages 16 MiB apart share a byte), non-zero for every page an entry of any
/// version a reader may see touches. Exact enough to stand alone: an address on a page no entry
/// touches is never in the table, envelope or not.
#[derive(Clone, Copy, Debug)]
pub struct PageFilter<'a> {
    bytes: &'a [AtomicU8; FILTER_BITS],
}

impl<'a> PageFilter<'a> {
    /// Could an entry contain `addr`? One byte load (a byte, not a bit: the hot loop's test is
    /// then a shift, a mask and a load).
    ///
    /// Also true for every address of the pages that share entry 0 with address 0 (one in
    /// 4096), so `hit(0)` is always true: the hot loop's test for a zero return address (the
    /// chain's end) is this same byte, and a zero or a rare non-zero address there leaves the
    /// hot loop for the general step, which decides exactly.
    #[inline(always)]
    pub fn hit(&self, addr: u64) -> bool {
        self.byte(addr) & TRANSITION_PAGE != 0
    }

    /// The same filter, its address hidden from the optimiser: a hot loop then keeps it in a
    /// register (the live table's filter is a static, whose address the compiler would
    /// otherwise rematerialise, a GOT load and register moves, for every return address). An
    /// empty `asm!` on the two native architectures, so the address stays in a register and
    /// the caller still knows the filter is there; elsewhere `black_box`.
    #[inline(always)]
    pub(crate) fn opaque(self) -> Self {
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            let mut p = self.bytes as *const [AtomicU8; FILTER_BITS];
            // SAFETY: an empty asm block: it reads and writes no memory and leaves `p` as it
            // was (the pointer only passes through a register, hence the allowed lint).
            #[allow(clippy::pointers_in_nomem_asm_block)]
            unsafe {
                core::arch::asm!("/* {0} */", inout(reg) p, options(pure, nomem, nostack, preserves_flags))
            };
            // SAFETY: `p` is `self.bytes`, unchanged: a valid reference for `'a`.
            let bytes = unsafe { &*p };
            PageFilter { bytes }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        core::hint::black_box(self)
    }

    /// A filter over `bytes` (tests of the hot loop).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: &[AtomicU8; FILTER_BITS]) -> PageFilter<'_> {
        PageFilter { bytes }
    }

    /// The whole entry of `addr`'s page: [`TRANSITION_PAGE`] as [`PageFilter::hit`] reads
    /// it, and [`UNRECORDED_PAGE`] (see [`mark_unrecorded_page`]). A zero byte is both
    /// answers at once, for one load.
    #[inline(always)]
    pub(crate) fn byte(&self, addr: u64) -> u8 {
        self.bytes[filter_bit(addr)].load(Ordering::Relaxed)
    }
}

/// A [`PageFilter`] entry's bit: some transition entry may touch the page.
pub(crate) const TRANSITION_PAGE: u8 = 1;

/// A [`PageFilter`] entry's bit: on some page of this entry, in the module of
/// [`crate::dwarf::capture`], some code does not keep a frame record, or no CFI says it does
/// ([`mark_unrecorded_page`]). Never cleared.
pub(crate) const UNRECORDED_PAGE: u8 = 2;

/// Marks the page holding `addr` in the live table's filter as one where a function may not
/// keep a frame record (the hybrid frame-pointer entry then asks its record map; where neither
/// bit is set, one byte load answers for both). Set once per page by the unwinder that finds
/// the home module, before it is used; publishing transitions keeps it.
#[cfg(feature = "dwarf")]
pub(crate) fn mark_unrecorded_page(addr: u64) {
    TRANSITIONS.filter[filter_bit(addr)].fetch_or(UNRECORDED_PAGE, Ordering::Relaxed);
}

/// No transitions: the naive walk.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTransitions;

impl Transitions for NoTransitions {
    #[inline(always)]
    fn lookup(&self, _ra: u64) -> Option<Transition> {
        None
    }
    #[inline(always)]
    fn envelope(&self) -> Range {
        Range::new(0, 0)
    }
}

impl<T: Transitions + ?Sized> Transitions for &T {
    #[inline(always)]
    fn lookup(&self, ra: u64) -> Option<Transition> {
        (**self).lookup(ra)
    }
    #[inline(always)]
    fn envelope(&self) -> Range {
        (**self).envelope()
    }
    #[inline(always)]
    fn may_match(&self, ra: u64) -> bool {
        (**self).may_match(ra)
    }
    #[inline(always)]
    fn may_match_inside(&self, ra: u64) -> bool {
        (**self).may_match_inside(ra)
    }
    #[inline(always)]
    fn page_filter(&self) -> Option<PageFilter<'_>> {
        (**self).page_filter()
    }
}

/// What a rule yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hop {
    /// Keep following the frame chain; the next frame is on a new stack.
    Continue,
    /// Continue from these registers on a new stack; `exact` says whether `regs.pc` is an exact
    /// pc (an interrupted instruction) rather than a return address.
    Regs {
        /// The other side's registers.
        regs: Regs,
        /// Is `regs.pc` exact?
        exact: bool,
    },
}

/// [`Memory::enter_stack`] for the side a rule reads, out of line (rules apply at
/// transitions only; the walker's hot loop stays as small as it was).
#[cold]
#[inline(never)]
fn admit<M: Memory>(mem: &mut M, addr: u64) {
    let _ = mem.enter_stack(addr);
}

impl Rule {
    /// Applies the rule at a frame whose record is at `fp` and holds `saved_fp`. `None` when the
    /// saved registers cannot be read or make no sense.
    pub fn apply<A: Arch, M: Memory>(
        &self,
        fp: u64,
        saved_fp: u64,
        pac_mask: u64,
        mem: &mut M,
    ) -> Option<Hop> {
        match *self {
            Rule::ContinueChain => Some(Hop::Continue),
            Rule::SavedAt {
                base,
                pc,
                sp,
                fp: fpo,
            } => {
                let b = match base {
                    Base::Fp => fp,
                    Base::Cfa => fp.checked_add(A::RECORD_SIZE)?,
                    Base::SavedFp | Base::SavedFpPlus(_) => saved_fp,
                    Base::Link | Base::LinkPlus(_) => mem.read_u64(saved_fp)?,
                };
                if matches!(
                    base,
                    Base::SavedFp | Base::SavedFpPlus(_) | Base::Link | Base::LinkPlus(_)
                ) {
                    // The saved registers lie on the other side, maybe a stack this memory was
                    // not told of (a nested coroutine's parent): admitted, if it can find it.
                    // Not required: an offline image reads what it holds either way.
                    admit::<M>(mem, b);
                }
                let at = |o: i32| b.checked_add_signed(o as i64);
                let pc = A::strip_ra(mem.read_u64(at(pc)?)?, pac_mask);
                let sp = match (sp, base) {
                    (Some(o), _) => mem.read_u64(at(o)?)?,
                    (None, Base::LinkPlus(k) | Base::SavedFpPlus(k)) => {
                        b.checked_add(u64::from(k))?
                    }
                    (None, _) => 0,
                };
                let fp = mem.read_u64(at(fpo)?)?;
                Some(Hop::Regs {
                    regs: Regs::new(pc, sp, fp),
                    exact: false,
                })
            }
            Rule::SignalFrame => {
                let mut read = |a| mem.read_u64(a);
                let sp = A::sigframe_sp(fp, saved_fp, &mut read)?;
                let uc = sp.checked_add(A::UC_FROM_SIGFRAME_SP)?;
                let mut regs = A::ucontext_regs(uc, &mut read)?;
                regs.pc = A::strip_ra(regs.pc, pac_mask);
                regs.lr = A::strip_ra(regs.lr, pac_mask);
                Some(Hop::Regs { regs, exact: true })
            }
            // Handled by the walker before any hop: there is no other side.
            Rule::FaultCall => None,
            Rule::Context {
                block,
                pc,
                sp,
                fp: fpo,
            } => {
                let pc = A::strip_ra(mem.read_u64(block.checked_add(pc as u64)?)?, pac_mask);
                let sp = mem.read_u64(block.checked_add(sp as u64)?)?;
                let fp = mem.read_u64(block.checked_add(fpo as u64)?)?;
                Some(Hop::Regs {
                    regs: Regs::new(pc, sp, fp),
                    exact: false,
                })
            }
        }
    }

    // Encoding for the lock-free static table: four words.
    const K_CONTINUE: u64 = 1;
    const K_SAVED: u64 = 2;
    const K_SIGNAL: u64 = 3;
    const K_CONTEXT: u64 = 4;
    const K_FAULT_CALL: u64 = 5;
    const NO_OFFSET: i32 = i32::MIN;

    fn encode(&self) -> [u64; 3] {
        let pack = |a: i32, b: i32| (a as u32 as u64) | ((b as u32 as u64) << 32);
        match *self {
            Rule::ContinueChain => [Self::K_CONTINUE, 0, 0],
            Rule::SavedAt { base, pc, sp, fp } => {
                let b = match base {
                    Base::Fp => 0,
                    Base::Cfa => 1,
                    Base::SavedFp => 2,
                    Base::Link => 3,
                    Base::LinkPlus(k) => 4 | (u64::from(k) << 8),
                    Base::SavedFpPlus(k) => 5 | (u64::from(k) << 8),
                };
                [
                    Self::K_SAVED | (b << 8),
                    pack(pc, sp.unwrap_or(Self::NO_OFFSET)),
                    fp as u32 as u64,
                ]
            }
            Rule::SignalFrame => [Self::K_SIGNAL, 0, 0],
            Rule::FaultCall => [Self::K_FAULT_CALL, 0, 0],
            Rule::Context { block, pc, sp, fp } => [
                Self::K_CONTEXT | ((fp as u64) << 32),
                block,
                (pc as u64) | ((sp as u64) << 32),
            ],
        }
    }

    fn decode(w: [u64; 3]) -> Option<Rule> {
        let lo = |x: u64| x as u32 as i32;
        let hi = |x: u64| (x >> 32) as u32 as i32;
        Some(match w[0] & 0xff {
            Self::K_CONTINUE => Rule::ContinueChain,
            Self::K_SAVED => Rule::SavedAt {
                base: match (w[0] >> 8) & 0xff {
                    0 => Base::Fp,
                    1 => Base::Cfa,
                    2 => Base::SavedFp,
                    3 => Base::Link,
                    4 => Base::LinkPlus(((w[0] >> 16) & 0xff) as u8),
                    5 => Base::SavedFpPlus(((w[0] >> 16) & 0xff) as u8),
                    _ => return None,
                },
                pc: lo(w[1]),
                sp: match hi(w[1]) {
                    Self::NO_OFFSET => None,
                    o => Some(o),
                },
                fp: lo(w[2]),
            },
            Self::K_SIGNAL => Rule::SignalFrame,
            Self::K_FAULT_CALL => Rule::FaultCall,
            Self::K_CONTEXT => Rule::Context {
                block: w[1],
                pc: w[2] as u32,
                sp: (w[2] >> 32) as u32,
                fp: (w[0] >> 32) as u32,
            },
            _ => return None,
        })
    }
}

/// A plain sorted transition table (offline unwinding, tests, fuzzing).
#[derive(Clone, Debug, Default)]
pub struct TransitionTable {
    entries: Vec<Transition>,
    envelope: Range,
}

impl TransitionTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// A table holding `entries` (empty ranges are dropped; on overlap the lowest start wins).
    pub fn from_entries(entries: impl IntoIterator<Item = Transition>) -> Self {
        let mut t = Self::new();
        for e in entries {
            t.insert(e);
        }
        t
    }

    /// Adds an entry.
    pub fn insert(&mut self, t: Transition) {
        if t.range.is_empty() {
            return;
        }
        let at = self.entries.partition_point(|e| e.range.lo < t.range.lo);
        self.entries.insert(at, t);
        self.envelope = envelope(&self.entries);
    }

    /// Removes every entry with this id. Returns whether one was removed.
    pub fn remove(&mut self, id: Id) -> bool {
        let n = self.entries.len();
        self.entries.retain(|e| e.id != id);
        self.envelope = envelope(&self.entries);
        n != self.entries.len()
    }

    /// The entries, sorted by start address.
    pub fn entries(&self) -> &[Transition] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Is the table empty?
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn envelope(entries: &[Transition]) -> Range {
    let lo = entries.iter().map(|e| e.range.lo).min().unwrap_or(0);
    let hi = entries.iter().map(|e| e.range.hi).max().unwrap_or(0);
    Range::new(lo, hi)
}

/// Finds the entry containing `ra` in entries sorted by start. Entries may overlap: the one with
/// the greatest start not above `ra` is checked, then earlier ones while they could still cover.
fn search(entries: &[Transition], ra: u64) -> Option<Transition> {
    let at = entries.partition_point(|e| e.range.lo <= ra);
    entries[..at]
        .iter()
        .rev()
        .find(|e| e.range.contains(ra))
        .copied()
}

impl Transitions for TransitionTable {
    #[inline]
    fn lookup(&self, ra: u64) -> Option<Transition> {
        if !self.envelope.contains(ra) {
            return None;
        }
        search(&self.entries, ra)
    }
    #[inline(always)]
    fn envelope(&self) -> Range {
        self.envelope
    }
    #[inline(always)]
    fn may_match_inside(&self, _ra: u64) -> bool {
        // Inside the envelope: only the search can say.
        true
    }
}

// ---------------------------------------------------------------------------------------------
// The live, process-wide registry.

/// Maximum number of live transitions.
pub const MAX_TRANSITIONS: usize = 256;
/// Maximum number of registered live stacks.
pub const MAX_STACKS: usize = 1024;
/// How many times a reader retries when it races a writer before giving up on that lookup.
const READ_RETRIES: usize = 64;

/// Errors from registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// The static table is full ([`MAX_TRANSITIONS`] or [`MAX_STACKS`]).
    Full,
    /// The range is empty.
    EmptyRange,
    /// No entry with that id.
    UnknownId,
    /// Kept for compatibility; no longer returned: readers never hold a version a writer has to
    /// wait for (they validate what they read instead); [`unregister_stack`] waits for walks
    /// still reading the stack instead of failing.
    Busy,
}

impl core::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RegistryError::Full => "the transition registry is full",
            RegistryError::EmptyRange => "empty address range",
            RegistryError::UnknownId => "no registered entry with that id",
            RegistryError::Busy => "a reader is stuck in the registry; try again later",
        })
    }
}

impl std::error::Error for RegistryError {}

/// Entries (bytes) in a [`LeftRightTable`]'s page filter.
const FILTER_BITS: usize = 4096;

/// The filter entry of the 4 KiB page holding `addr`: the page number modulo [`FILTER_BITS`]
/// (direct-mapped: nearby code pages share a cache line of the filter; pages 16 MiB apart
/// share an entry).
#[inline(always)]
fn filter_bit(addr: u64) -> usize {
    ((addr >> 12) as usize) % FILTER_BITS
}

/// One published version of a table: `len` rows of `W` words (`[lo, hi, ...]`), sorted by `lo`,
/// and `gen`, a sequence number that is odd while a writer rewrites the buffer. Besides the
/// rows: the envelope of all rows and the running maximum of `hi`, which stops the backwards
/// scan over possibly overlapping rows early.
struct Buffer<const N: usize, const W: usize> {
    gen: AtomicU64,
    len: AtomicUsize,
    env_lo: AtomicU64,
    env_hi: AtomicU64,
    max_hi: [AtomicU64; N],
    slots: [[AtomicU64; W]; N],
}

impl<const N: usize, const W: usize> Buffer<N, W> {
    /// Finds the row containing `addr` (possibly torn: the caller validates `gen`).
    #[inline(never)]
    fn search(&self, addr: u64) -> Option<[u64; W]> {
        if addr < self.env_lo.load(Ordering::Relaxed) || addr >= self.env_hi.load(Ordering::Relaxed)
        {
            return None;
        }
        let n = self.len.load(Ordering::Relaxed).min(N);
        let slots = &self.slots[..n];
        let at = slots.partition_point(|s| s[0].load(Ordering::Relaxed) <= addr);
        for i in (0..at).rev() {
            // No row at or before i reaches addr: stop.
            if self.max_hi[i].load(Ordering::Relaxed) <= addr {
                break;
            }
            let s = &slots[i];
            let lo = s[0].load(Ordering::Relaxed);
            let hi = s[1].load(Ordering::Relaxed);
            if addr >= lo && addr < hi {
                let mut row = [0u64; W];
                for (r, a) in row.iter_mut().zip(s.iter()) {
                    *r = a.load(Ordering::Relaxed);
                }
                return Some(row);
            }
        }
        None
    }

    /// Writes a version (the caller made `gen` odd and is the only writer).
    fn fill(&self, rows: &[[u64; W]], env: Range) {
        let rows = &rows[..rows.len().min(N)];
        let mut max_hi = 0u64;
        for (i, row) in rows.iter().enumerate() {
            for (a, v) in self.slots[i].iter().zip(row) {
                a.store(*v, Ordering::Relaxed);
            }
            max_hi = max_hi.max(row[1]);
            self.max_hi[i].store(max_hi, Ordering::Relaxed);
        }
        self.env_lo.store(env.lo, Ordering::Relaxed);
        self.env_hi.store(env.hi, Ordering::Relaxed);
        self.len.store(rows.len(), Ordering::Relaxed);
    }
}

/// For each filter entry ([`filter_bit`]), the 64-byte lines of its pages that some row of
/// `rows` touches, a bit each (bit `(addr >> 6) & 63`): a finer filter, read where the page's
/// is hit, so that a return address beside a transition, on its page but on none of its
/// lines, costs no search. Pages sharing an entry share the mask.
fn line_masks<const W: usize>(rows: &[[u64; W]]) -> Box<[u64; FILTER_BITS]> {
    let mut masks = Box::new([0u64; FILTER_BITS]);
    for row in rows {
        let (lo, hi) = (row[0], row[1]);
        if hi <= lo {
            continue;
        }
        let (first, last) = (lo >> 12, (hi - 1) >> 12);
        if last - first >= FILTER_BITS as u64 {
            *masks = [u64::MAX; FILTER_BITS];
            return masks;
        }
        for page in first..=last {
            // The lines of this page inside [lo, hi).
            let a = if page == first { (lo >> 6) & 63 } else { 0 };
            let b = if page == last {
                ((hi - 1) >> 6) & 63
            } else {
                63
            };
            let bits = (u64::MAX >> (63 - b)) & (u64::MAX << a);
            masks[filter_bit(page << 12)] |= bits;
        }
    }
    masks
}

/// The page filter of rows whose [`line_masks`] are `lines`: a non-zero byte for each 4 KiB
/// page some row touches ([`filter_bit`]: some line of it), and for entry 0 always
/// ([`PageFilter::hit`] is true for address 0).
fn page_filter(lines: &[u64; FILTER_BITS]) -> [u8; FILTER_BITS] {
    let mut filter = [0u8; FILTER_BITS];
    for (f, &m) in filter.iter_mut().zip(lines.iter()) {
        if m != 0 {
            *f = TRANSITION_PAGE;
        }
    }
    filter[0] = TRANSITION_PAGE;
    filter
}

/// Two [`Buffer`]s, one readable ("active") while the other is rewritten ("left-right"): a writer
/// fills the inactive buffer, then flips `active`. Readers write nothing: a lookup reads
/// `active`, the buffer's `gen` (even: complete), the row, then `gen` again (a seqlock
/// check): a reader that raced a rewrite of its buffer (two publishes during one lookup) sees
/// `gen` change and retries, a bounded number of times. Writers never wait for readers.
///
/// The table-wide envelope `[env_lo, env_hi)` and page `filter` cover every entry of every
/// version a reader may still see (widened before a flip, narrowed after), so a return address
/// outside the envelope costs one range compare, and one inside it on a page no entry touches
/// one bit test; neither needs a buffer.
struct LeftRightTable<const N: usize, const W: usize> {
    active: AtomicUsize,
    env_lo: AtomicU64,
    env_hi: AtomicU64,
    filter: [AtomicU8; FILTER_BITS],
    /// [`line_masks`], kept as `filter` is (widened before a flip, narrowed after).
    lines: [AtomicU64; FILTER_BITS],
    bufs: [Buffer<N, W>; 2],
}

impl<const N: usize, const W: usize> LeftRightTable<N, W> {
    #[allow(clippy::declare_interior_mutable_const)]
    const ZERO: AtomicU64 = AtomicU64::new(0);
    #[allow(clippy::declare_interior_mutable_const)]
    const ZERO_BYTE: AtomicU8 = AtomicU8::new(0);
    #[allow(clippy::declare_interior_mutable_const)]
    const SLOT: [AtomicU64; W] = [Self::ZERO; W];
    #[allow(clippy::declare_interior_mutable_const)]
    const BUFFER: Buffer<N, W> = Buffer {
        gen: AtomicU64::new(0),
        len: AtomicUsize::new(0),
        env_lo: AtomicU64::new(0),
        env_hi: AtomicU64::new(0),
        max_hi: [Self::ZERO; N],
        slots: [Self::SLOT; N],
    };

    const fn new() -> Self {
        // Entry 0 is always set: see `PageFilter::hit`.
        let mut filter = [Self::ZERO_BYTE; FILTER_BITS];
        filter[0] = AtomicU8::new(TRANSITION_PAGE);
        LeftRightTable {
            active: AtomicUsize::new(0),
            env_lo: AtomicU64::new(0),
            env_hi: AtomicU64::new(0),
            filter,
            lines: [Self::ZERO; FILTER_BITS],
            bufs: [Self::BUFFER; 2],
        }
    }

    /// Publishes `rows` (sorted by word 0, at most N). Callers serialise writers (the registry's
    /// mutex). Never waits.
    fn publish(&self, rows: &[[u64; W]], env: Range) {
        let rows = &rows[..rows.len().min(N)];
        let next = 1 - self.active.load(Ordering::SeqCst);
        // Widen the envelope and the filter to cover the old and the new version while both
        // may be read.
        let (lo, hi) = (
            self.env_lo.load(Ordering::Relaxed),
            self.env_hi.load(Ordering::Relaxed),
        );
        let old = Range::new(lo, hi);
        let union = if old.is_empty() {
            env
        } else if env.is_empty() {
            old
        } else {
            Range::new(lo.min(env.lo), hi.max(env.hi))
        };
        let lines = line_masks(rows);
        let filter = page_filter(&lines);
        for (a, v) in self.filter.iter().zip(filter) {
            a.fetch_or(v, Ordering::SeqCst);
        }
        for (a, v) in self.lines.iter().zip(lines.iter()) {
            if *v != 0 {
                a.fetch_or(*v, Ordering::SeqCst);
            }
        }
        self.env_lo.store(union.lo, Ordering::SeqCst);
        self.env_hi.store(union.hi, Ordering::SeqCst);
        // Rewrite the inactive buffer under its sequence number (odd while writing). A reader
        // that loaded `active` before the last flip may still be reading it: it sees `gen`
        // change and retries.
        let b = &self.bufs[next];
        let g = b.gen.load(Ordering::Relaxed);
        b.gen.store(g.wrapping_add(1), Ordering::Relaxed);
        core::sync::atomic::fence(Ordering::Release);
        b.fill(rows, env);
        b.gen.store(g.wrapping_add(2), Ordering::Release);
        self.active.store(next, Ordering::SeqCst);
        // Narrow to the new version (keeping the other bits: `UNRECORDED_PAGE`).
        for (a, v) in self.filter.iter().zip(filter) {
            a.fetch_and(v | !TRANSITION_PAGE, Ordering::SeqCst);
        }
        for (a, v) in self.lines.iter().zip(lines.iter()) {
            if a.load(Ordering::Relaxed) != *v {
                a.store(*v, Ordering::SeqCst);
            }
        }
        self.env_lo.store(env.lo, Ordering::SeqCst);
        self.env_hi.store(env.hi, Ordering::SeqCst);
        REGISTRY_VERSION.fetch_add(1, Ordering::SeqCst);
    }

    /// Could a row contain `addr`, which the caller found inside the envelope? One bit test.
    #[inline(always)]
    fn filter_hit(&self, addr: u64) -> bool {
        PageFilter {
            bytes: &self.filter,
        }
        .hit(addr)
    }

    /// Could a row contain `addr`? Envelope compare and one filter bit.
    #[inline(always)]
    fn may_contain(&self, addr: u64) -> bool {
        if addr < self.env_lo.load(Ordering::Relaxed) || addr >= self.env_hi.load(Ordering::Relaxed)
        {
            return false;
        }
        self.filter_hit(addr)
    }

    /// The table-wide envelope (racy by design: a stale envelope only delays seeing a new
    /// entry).
    #[inline(always)]
    fn envelope(&self) -> Range {
        Range::new(
            self.env_lo.load(Ordering::Relaxed),
            self.env_hi.load(Ordering::Relaxed),
        )
    }

    /// Finds the row whose `[w0, w1)` contains `addr`. Lock-free, bounded, async-signal-safe,
    /// writes nothing.
    #[inline]
    fn find(&self, addr: u64) -> Option<[u64; W]> {
        if !self.may_contain(addr) || !self.line_hit(addr) {
            return None;
        }
        self.find_validated(addr)
    }

    /// Could a row contain `addr`, on a page the filter is hit for? One bit of [`line_masks`].
    #[inline(always)]
    fn line_hit(&self, addr: u64) -> bool {
        self.lines[filter_bit(addr)].load(Ordering::Relaxed) & (1 << ((addr >> 6) & 63)) != 0
    }

    /// The seqlock read: a row from a complete version, or `None` (no row, or a writer kept
    /// rewriting the buffer for [`READ_RETRIES`] attempts).
    #[inline(never)]
    fn find_validated(&self, addr: u64) -> Option<[u64; W]> {
        for _ in 0..READ_RETRIES {
            let b = &self.bufs[self.active.load(Ordering::Acquire) & 1];
            let g = b.gen.load(Ordering::Acquire);
            if g & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            let found = b.search(addr);
            core::sync::atomic::fence(Ordering::Acquire);
            if b.gen.load(Ordering::Relaxed) == g {
                return found;
            }
        }
        None
    }
}

/// Bumped after every publish of either table, once it is complete: see [`registry_version`].
static REGISTRY_VERSION: AtomicU64 = AtomicU64::new(0);

/// A number that changes after every change to the registry (its transitions or its stacks) is
/// complete. A result computed from the registry after reading version `v`
/// (Acquire) is still the registry's answer while the version reads `v` (the hybrid capture's
/// memo relies on this). One load; async-signal-safe.
#[cfg(feature = "dwarf")]
#[inline(always)]
pub(crate) fn registry_version() -> u64 {
    REGISTRY_VERSION.load(Ordering::Acquire)
}

/// Row: lo, hi, id, rule[3].
static TRANSITIONS: LeftRightTable<MAX_TRANSITIONS, 6> = LeftRightTable::new();
/// Row: lo, hi, id.
static STACKS: LeftRightTable<MAX_STACKS, 3> = LeftRightTable::new();

struct Writer {
    next_id: u32,
    transitions: Vec<(Transition, &'static str)>,
    stacks: Vec<(Range, Id)>,
}

static WRITER: Mutex<Writer> = Mutex::new(Writer {
    next_id: 1,
    transitions: Vec::new(),
    stacks: Vec::new(),
});

fn writer() -> std::sync::MutexGuard<'static, Writer> {
    WRITER.lock().unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    fn fresh_id(&mut self) -> Id {
        // Ids wrap after 65535 registrations; skip 0 and ids still in use.
        loop {
            let id = (self.next_id % 0x1_0000) as Id;
            self.next_id = self.next_id.wrapping_add(1);
            if id != 0
                && !self.transitions.iter().any(|(t, _)| t.id == id)
                && !self.stacks.iter().any(|(_, s)| *s == id)
            {
                return id;
            }
        }
    }

    fn publish_transitions(&mut self) -> Result<(), RegistryError> {
        self.transitions.sort_by_key(|(t, _)| t.range.lo);
        let rows: Vec<[u64; 6]> = self
            .transitions
            .iter()
            .map(|(t, _)| {
                let r = t.rule.encode();
                [t.range.lo, t.range.hi, t.id as u64, r[0], r[1], r[2]]
            })
            .collect();
        let entries: Vec<Transition> = self.transitions.iter().map(|(t, _)| *t).collect();
        TRANSITIONS.publish(&rows, envelope(&entries));
        Ok(())
    }

    fn publish_stacks(&mut self) -> Result<(), RegistryError> {
        self.stacks.sort_by_key(|(r, _)| r.lo);
        let rows: Vec<[u64; 3]> = self
            .stacks
            .iter()
            .map(|(r, id)| [r.lo, r.hi, *id as u64])
            .collect();
        let lo = self.stacks.iter().map(|(r, _)| r.lo).min().unwrap_or(0);
        let hi = self.stacks.iter().map(|(r, _)| r.hi).max().unwrap_or(0);
        STACKS.publish(&rows, Range::new(lo, hi));
        Ok(())
    }
}

/// Registers a live transition for return addresses in `range`, with a name for diagnostics.
/// Returns its id. Not async-signal-safe (takes a mutex); lookups are.
pub fn register(range: Range, rule: Rule, name: &'static str) -> Result<Id, RegistryError> {
    if range.is_empty() {
        return Err(RegistryError::EmptyRange);
    }
    let mut w = writer();
    if w.transitions.len() >= MAX_TRANSITIONS {
        return Err(RegistryError::Full);
    }
    let id = w.fresh_id();
    w.transitions.push((Transition { range, rule, id }, name));
    if let Err(e) = w.publish_transitions() {
        w.transitions.pop();
        return Err(e);
    }
    Ok(id)
}

/// Removes a live transition. Not async-signal-safe. Takes effect for every lookup that starts
/// after it returns.
pub fn unregister(id: Id) -> Result<(), RegistryError> {
    let mut w = writer();
    let n = w.transitions.len();
    w.transitions.retain(|(t, _)| t.id != id);
    if w.transitions.len() == n {
        return Err(RegistryError::UnknownId);
    }
    w.publish_transitions()
}

/// The name a transition was registered with.
pub fn name_of(id: Id) -> Option<&'static str> {
    writer()
        .transitions
        .iter()
        .find(|(t, _)| t.id == id)
        .map(|(_, n)| *n)
}

/// A snapshot of the registered transitions (for diagnostics and offline use of live tables).
pub fn registered() -> Vec<(Transition, &'static str)> {
    writer().transitions.clone()
}

/// Registers a stack (a system stack, a coroutine stack, a stack segment) whose memory live
/// captures may read and across which they may walk. Not async-signal-safe. Unreadable pages
/// at the bottom of `range` (a guard page) are left out (see
/// [`crate::coroutine::register_stack`]).
///
/// # Safety
/// Live captures (on any thread, also in signal handlers) read any 8-aligned word inside
/// `range` once it is registered. Every byte of `range` must stay mapped and readable from this
/// call until [`unregister_stack`] of the returned id has returned (it waits for captures on
/// other threads that found the stack to finish their walks; this thread's own captures
/// notice the change before their next read).
pub unsafe fn register_stack(range: Range) -> Result<Id, RegistryError> {
    // SAFETY: forwarded from the caller.
    unsafe { register_stack_range(range) }.map(|(id, _)| id)
}

/// [`register_stack`], also returning the range registered (without its unreadable bottom
/// pages).
///
/// # Safety
/// As [`register_stack`].
pub(crate) unsafe fn register_stack_range(range: Range) -> Result<(Id, Range), RegistryError> {
    if range.is_empty() {
        return Err(RegistryError::EmptyRange);
    }
    // Only live captures read registered stacks (and take read sections).
    #[cfg(feature = "live")]
    forget_readers_after_fork();
    // A guard page at the bottom of the range (corosensei's `limit()` includes its own) is left
    // out: walks read any word of a registered range directly.
    #[cfg(feature = "live")]
    let range = crate::live::without_guard_pages(range);
    if range.is_empty() {
        return Err(RegistryError::EmptyRange);
    }
    let mut w = writer();
    if w.stacks.len() >= MAX_STACKS {
        return Err(RegistryError::Full);
    }
    let id = w.fresh_id();
    w.stacks.push((range, id));
    if let Err(e) = w.publish_stacks() {
        w.stacks.retain(|(_, s)| *s != id);
        return Err(e);
    }
    Ok((id, range))
}

/// Removes a registered stack. Not async-signal-safe (takes the registry's lock, and may
/// wait).
///
/// When it returns, no capture reads the stack any more: it publishes the table without the
/// stack, then waits until every capture on another thread that may have found the stack
/// before has ended its walk (microseconds; a capture walks a bounded number of frames, and
/// those on the thread's own stack are not waited for). A capture on this thread (a
/// [`crate::live::LiveMemory`] still held here) is not waited for: it looks the stack up again
/// before its next read, and finds it gone. The memory may then be freed at once. Do not hold
/// a `LiveMemory` that read a registered stack while another thread unregisters one (leaked
/// with `mem::forget`, or kept across a wait for that thread): the unregistering waits for it.
pub fn unregister_stack(id: Id) -> Result<(), RegistryError> {
    let mut w = writer();
    let n = w.stacks.len();
    w.stacks.retain(|(_, s)| *s != id);
    if w.stacks.len() == n {
        return Err(RegistryError::UnknownId);
    }
    w.publish_stacks()?;
    STACK_REMOVALS.fetch_add(1, Ordering::SeqCst);
    wait_for_readers();
    Ok(())
}

/// The live registry as a [`Transitions`] table: lock-free, allocation-free and
/// async-signal-safe lookups that write no shared memory (each validates the version it read).
#[derive(Clone, Copy, Debug, Default)]
pub struct Live;

impl Transitions for Live {
    #[inline(always)]
    fn lookup(&self, ra: u64) -> Option<Transition> {
        let row = TRANSITIONS.find(ra)?;
        Some(Transition {
            range: Range::new(row[0], row[1]),
            id: row[2] as Id,
            rule: Rule::decode([row[3], row[4], row[5]])?,
        })
    }
    #[inline(always)]
    fn envelope(&self) -> Range {
        TRANSITIONS.envelope()
    }
    #[inline(always)]
    fn may_match(&self, ra: u64) -> bool {
        TRANSITIONS.may_contain(ra)
    }
    #[inline(always)]
    fn may_match_inside(&self, ra: u64) -> bool {
        TRANSITIONS.filter_hit(ra)
    }
    #[inline(always)]
    fn page_filter(&self) -> Option<PageFilter<'_>> {
        Some(PageFilter {
            bytes: &TRANSITIONS.filter,
        })
    }
}

/// The live registry for one walk, as live captures use it. Lookups write no shared memory:
/// each reads one complete version (a sequence-number check, retried a bounded number of
/// times when it races two whole publishes, after which it reports "no match" and the walk
/// stops cleanly at that switch, never reading a torn entry). An entry registered throughout
/// the walk is always in the envelope and the page filter the hot loop checks. Exists only
/// inside [`with_pinned`] outside the crate (the name is historical: nothing is pinned, and
/// writers never wait for walks). Async-signal-safe to create, use and drop.
pub struct Pinned {
    _private: (),
}

impl Pinned {
    /// A handle for one walk.
    #[inline]
    pub(crate) fn new() -> Self {
        Pinned { _private: () }
    }
}

/// Runs `f` with a [`Pinned`] handle on the live registry. Async-signal-safe when `f` is.
///
/// ```
/// use unwind::transition::{with_pinned, Transitions};
/// let none = with_pinned(|p| p.lookup(0x10));
/// assert!(none.is_none());
/// ```
#[inline]
pub fn with_pinned<R>(f: impl FnOnce(&Pinned) -> R) -> R {
    let p = Pinned::new();
    f(&p)
}

impl Transitions for Pinned {
    #[inline(always)]
    fn lookup(&self, ra: u64) -> Option<Transition> {
        Live.lookup(ra)
    }
    #[inline(always)]
    fn envelope(&self) -> Range {
        Live.envelope()
    }
    #[inline(always)]
    fn may_match(&self, ra: u64) -> bool {
        Live.may_match(ra)
    }
    #[inline(always)]
    fn may_match_inside(&self, ra: u64) -> bool {
        Live.may_match_inside(ra)
    }
    #[inline(always)]
    fn page_filter(&self) -> Option<PageFilter<'_>> {
        Live.page_filter()
    }
}

/// The registered stack containing `addr`, if any. Lock-free and async-signal-safe.
///
/// The answer says nothing about how long the range stays mapped: its owner may unregister
/// and free it at once. Live captures read registered stacks inside a read section
/// (a read section), which [`unregister_stack`] waits for.
#[inline]
pub fn registered_stack(addr: u64) -> Option<Range> {
    STACKS.find(addr).map(|r| Range::new(r[0], r[1]))
}

// ---------------------------------------------------------------------------------------------
// Read sections on the registered stacks.
//
// A capture that finds a stack in the registry reads it for the rest of its walk. The thread
// that registered it may drop its registration and unmap it meanwhile (what
// `coroutine::register_stack`'s guard allows): `unregister_stack` therefore waits, after
// publishing the table without the stack, until every read section that may have found it has
// ended. A section is a count in one of [`READ_STRIPES`] counters (the thread's, by a hash of
// the address of one of its thread-locals; each on its own cache line, so threads that capture
// at once rarely write the same line) of one of two epochs (so that a stream of new readers
// cannot starve the writer: it flips the epoch and waits for the old one to drain). Only walks
// that find a registered stack other than the one their thread runs on take a section: a
// capture on the thread's own stack, or on a registered coroutine whose parent is the thread's
// stack, writes nothing.

/// Counters per epoch.
const READ_STRIPES: usize = 64;

/// A counter on a cache line of its own (128 bytes: adjacent-line prefetch pairs lines).
#[repr(align(128))]
struct Stripe(AtomicUsize);

#[allow(clippy::declare_interior_mutable_const)]
const STRIPE_ZERO: Stripe = Stripe(AtomicUsize::new(0));
#[allow(clippy::declare_interior_mutable_const)]
const EPOCH_ZERO: [Stripe; READ_STRIPES] = [STRIPE_ZERO; READ_STRIPES];

/// Open read sections, per epoch and stripe.
static READERS: [[Stripe; READ_STRIPES]; 2] = [EPOCH_ZERO; 2];
/// The epoch new sections count in (its low bit).
static READ_EPOCH: AtomicUsize = AtomicUsize::new(0);
/// Bumped by every [`unregister_stack`] (after the table without the stack is published): a
/// section that cached a registered range checks it before trusting the range again, so that
/// its own thread's unregistering (which does not wait for that thread's own sections: they
/// cannot end while it waits) is seen at once.
static STACK_REMOVALS: AtomicU64 = AtomicU64::new(0);

/// [`STACK_REMOVALS`] now (Acquire: a stack looked up after this read and still registered
/// when the count reads the same again was not unregistered in between).
#[inline(always)]
#[cfg_attr(not(feature = "live"), allow(dead_code))]
pub(crate) fn stack_removals() -> u64 {
    STACK_REMOVALS.load(Ordering::Acquire)
}

std::thread_local! {
    /// This thread's open sections, per epoch (a `const`-initialised thread-local without a
    /// destructor: async-signal-safe to use).
    static OWN_READS: [core::cell::Cell<u32>; 2] =
        const { [core::cell::Cell::new(0), core::cell::Cell::new(0)] };
}

/// This thread's stripe: a hash of the address of its [`OWN_READS`] (each thread's own).
#[inline(always)]
fn own_stripe() -> usize {
    let t = OWN_READS.with(|c| c.as_ptr() as u64);
    (t.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % READ_STRIPES
}

/// An open read section on the registered stacks: while it is open, a stack this thread found
/// registered after opening it stays mapped (its [`unregister_stack`] waits for the section
/// to close, unless called on this same thread: see [`StackReads::removals`]).
/// Async-signal-safe to open and close; no allocation, no lock.
#[cfg_attr(not(feature = "live"), allow(dead_code))]
#[derive(Debug)]
pub(crate) struct StackReads {
    epoch: bool,
    stripe: u8,
    /// [`STACK_REMOVALS`] when the section opened.
    removals: u64,
}

#[cfg_attr(not(feature = "live"), allow(dead_code))]
impl StackReads {
    /// Opens a section. One atomic add on this thread's stripe, one fence.
    #[inline(never)]
    pub(crate) fn open() -> Self {
        let epoch = READ_EPOCH.load(Ordering::Relaxed) & 1;
        let stripe = own_stripe();
        OWN_READS.with(|c| c[epoch].set(c[epoch].get().wrapping_add(1)));
        READERS[epoch][stripe].0.fetch_add(1, Ordering::SeqCst);
        // Pairs with the fence in `wait_for_readers`: either the writer sees this count, or
        // this section's lookups see the table the writer published (without its stack).
        core::sync::atomic::fence(Ordering::SeqCst);
        StackReads {
            epoch: epoch == 1,
            stripe: stripe as u8,
            removals: STACK_REMOVALS.load(Ordering::Relaxed),
        }
    }

    /// Has a stack been unregistered since the section opened (or since the last call that
    /// said so)? A range looked up before must then be looked up again: its own thread may have
    /// unregistered it (and may unmap it) without waiting for this section.
    #[inline(always)]
    pub(crate) fn removals_since(&mut self) -> bool {
        let now = STACK_REMOVALS.load(Ordering::Acquire);
        if now == self.removals {
            return false;
        }
        self.removals = now;
        true
    }
}

impl Drop for StackReads {
    #[inline]
    fn drop(&mut self) {
        let (e, s) = (self.epoch as usize, self.stripe as usize);
        READERS[e][s].0.fetch_sub(1, Ordering::Release);
        OWN_READS.with(|c| c[e].set(c[e].get().wrapping_sub(1)));
    }
}

/// Waits until no read section that may have seen a stack removed by the last publish is open
/// (the caller has published the table without it and holds the writer's lock). This thread's
/// own sections are not waited for (they cannot close while it waits: a capture that holds a
/// [`crate::live::LiveMemory`] here); they see [`STACK_REMOVALS`] change instead.
fn wait_for_readers() {
    core::sync::atomic::fence(Ordering::SeqCst);
    let cur = READ_EPOCH.load(Ordering::Relaxed) & 1;
    // Sections still counted in the other epoch (opened before the last flip), then a flip so
    // that new sections stop counting in this one, then this one.
    drain(cur ^ 1);
    READ_EPOCH.store(cur ^ 1, Ordering::SeqCst);
    core::sync::atomic::fence(Ordering::SeqCst);
    drain(cur);
}

/// This thread's open sections counted in `stripe` of `epoch` (`mine`: this thread's stripe).
fn own_count(epoch: usize, stripe: usize, mine: usize) -> usize {
    if stripe == mine {
        OWN_READS.with(|c| c[epoch].get()) as usize
    } else {
        0
    }
}

/// Waits until the open sections of `epoch` are this thread's own. Says once on standard
/// error when that takes over two seconds (a `LiveMemory` leaked or held across a wait).
fn drain(epoch: usize) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let mine = own_stripe();
    let t0 = std::time::Instant::now();
    for (i, stripe) in READERS[epoch].iter().enumerate() {
        let mut spins = 0u32;
        loop {
            if stripe.0.load(Ordering::SeqCst) <= own_count(epoch, i, mine) {
                break;
            }
            // A section lasts one walk (microseconds, a `/proc/self/maps` scan at worst); a
            // reader preempted mid-walk needs the CPU back.
            spins += 1;
            if spins < 128 {
                core::hint::spin_loop();
            } else {
                std::thread::yield_now();
                if spins.is_multiple_of(1024) && t0.elapsed() > std::time::Duration::from_secs(2) {
                    WARNED.call_once(|| {
                        eprintln!(
                            "unwind: unregistering a stack has waited over 2 s for a capture \
                             on another thread that read registered stacks (a LiveMemory \
                             leaked or held?)"
                        )
                    });
                }
            }
        }
    }
}

/// Registers (once per process) the fork handler that makes a child forget the read sections
/// its parent's other threads had open. [`crate::init`] calls it, so that the first
/// [`register_stack`] does not: `pthread_atfork` waits for a fork in progress on another
/// thread, whose own handlers may wait for a lock the registering thread holds.
#[cfg(feature = "live")]
pub(crate) fn forget_readers_after_fork() {
    static AT_FORK: std::sync::Once = std::sync::Once::new();
    AT_FORK.call_once(|| {
        // SAFETY: registers a handler that only stores to atomics and reads a thread-local
        // (async-signal-safe, as a fork child's handler must be).
        unsafe { libc::pthread_atfork(None, None, Some(readers_after_fork)) };
    });
}

/// After `fork`, the child's only thread: sections other threads had open in the parent never
/// close in the child. Keep this thread's own counts only.
#[cfg(feature = "live")]
extern "C" fn readers_after_fork() {
    let mine = own_stripe();
    for (epoch, stripes) in READERS.iter().enumerate() {
        for (i, s) in stripes.iter().enumerate() {
            s.0.store(own_count(epoch, i, mine), Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_round_trip_through_encoding() {
        let rules = [
            Rule::ContinueChain,
            Rule::SignalFrame,
            Rule::FaultCall,
            Rule::SavedAt {
                base: Base::LinkPlus(32),
                pc: 8,
                sp: None,
                fp: 0,
            },
            Rule::SavedAt {
                base: Base::SavedFpPlus(24),
                pc: 16,
                sp: None,
                fp: 0,
            },
            Rule::SavedAt {
                base: Base::Cfa,
                pc: 16,
                sp: Some(8),
                fp: 24,
            },
            Rule::SavedAt {
                base: Base::SavedFp,
                pc: -8,
                sp: None,
                fp: -16,
            },
            Rule::SavedAt {
                base: Base::Link,
                pc: 8,
                sp: None,
                fp: 0,
            },
            Rule::Context {
                block: 0xdead_beef_0000,
                pc: 8,
                sp: 0,
                fp: 48,
            },
        ];
        for r in rules {
            assert_eq!(Rule::decode(r.encode()), Some(r));
        }
        assert_eq!(Rule::decode([99, 0, 0]), None);
    }

    #[test]
    fn table_lookup_with_overlap() {
        let t = TransitionTable::from_entries([
            Transition {
                range: Range::new(100, 200),
                rule: Rule::ContinueChain,
                id: 1,
            },
            Transition {
                range: Range::new(150, 160),
                rule: Rule::SignalFrame,
                id: 2,
            },
            Transition {
                range: Range::new(300, 300),
                rule: Rule::SignalFrame,
                id: 3,
            },
        ]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(99), None);
        assert_eq!(t.lookup(100).unwrap().id, 1);
        assert_eq!(t.lookup(155).unwrap().id, 2);
        assert_eq!(t.lookup(170).unwrap().id, 1);
        assert_eq!(t.lookup(200), None);
        let mut t = t;
        assert!(t.remove(2));
        assert_eq!(t.lookup(155).unwrap().id, 1);
        assert!(!t.remove(2));
    }

    #[test]
    fn live_registry_register_lookup_unregister() {
        let base = 0x7777_0000_0000u64;
        let id = register(Range::new(base, base + 0x10), Rule::ContinueChain, "test").unwrap();
        let t = Live.lookup(base + 4).unwrap();
        assert_eq!(t.id, id);
        assert_eq!(t.rule, Rule::ContinueChain);
        assert_eq!(name_of(id), Some("test"));
        assert!(Live.lookup(base + 0x10).is_none());
        unregister(id).unwrap();
        assert!(Live.lookup(base + 4).is_none());
        assert_eq!(unregister(id), Err(RegistryError::UnknownId));
        assert_eq!(
            register(Range::new(5, 5), Rule::ContinueChain, "x"),
            Err(RegistryError::EmptyRange)
        );
    }

    #[test]
    fn live_overlaps_filter_and_pinning() {
        // Overlapping rows (a big range containing a small one), and a range spanning more
        // pages than the filter has bits.
        let base = 0x7778_0000_0000u64;
        let big = register(
            Range::new(base, base + 0x10_0000),
            Rule::ContinueChain,
            "big",
        )
        .unwrap();
        let small = register(
            Range::new(base + 0x5000, base + 0x5010),
            Rule::SignalFrame,
            "small",
        )
        .unwrap();
        let huge_lo = base + 0x1_0000_0000;
        let huge = register(
            Range::new(huge_lo, huge_lo + 0x2000_0000),
            Rule::ContinueChain,
            "huge",
        )
        .unwrap();
        let pinned = Pinned::new();
        for t in [&pinned as &dyn Transitions, &Live] {
            assert_eq!(t.lookup(base + 0x5008).map(|t| t.id), Some(small));
            assert_eq!(t.lookup(base + 0x5010).map(|t| t.id), Some(big));
            assert_eq!(t.lookup(base + 0xf_ffff).map(|t| t.id), Some(big));
            assert_eq!(t.lookup(base + 0x10_0000), None);
            assert_eq!(t.lookup(huge_lo + 0x1234_5678).map(|t| t.id), Some(huge));
            assert_eq!(t.lookup(huge_lo - 1), None);
        }
        for id in [big, small, huge] {
            unregister(id).unwrap();
        }
        assert_eq!(Live.lookup(base + 0x5008), None);
    }

    /// The filter is hit at address 0 (the hot loop's test for the chain's end) in a table
    /// never published, after publishes, and after a publish of nothing; rows are still found
    /// and pages no row touches still missed.
    #[test]
    fn page_filter_always_hits_zero() {
        static T: LeftRightTable<8, 3> = LeftRightTable::new();
        let f = || PageFilter { bytes: &T.filter };
        assert!(f().hit(0) && f().hit(0xfff) && !f().hit(0x1000));
        T.publish(
            &[[0x20_0000, 0x20_0010, 1]],
            Range::new(0x20_0000, 0x20_0010),
        );
        assert!(f().hit(0) && f().hit(0x20_0008) && !f().hit(0x30_0000));
        assert_eq!(T.find(0x20_0008), Some([0x20_0000, 0x20_0010, 1]));
        T.publish(&[], Range::new(0, 0));
        assert!(f().hit(0) && !f().hit(0x20_0008));
        assert_eq!(T.find(0x20_0008), None);
        // An address on the pages sharing entry 0 is looked up and not found.
        assert_eq!(T.find(0x100_0000), None);
    }

    /// The line masks: exactly the 64-byte lines a row touches, on each of its pages; a row
    /// over more pages than the filter has entries sets every bit.
    #[test]
    fn line_masks_mark_the_lines_rows_touch() {
        let m = line_masks(&[[0x20_0040, 0x20_0041, 1]]);
        assert_eq!(m[filter_bit(0x20_0000)], 1 << 1);
        assert_eq!(m.iter().filter(|&&w| w != 0).count(), 1);
        // Across a page boundary: the last line of one page, the first two of the next.
        let m = line_masks(&[[0x1_0fc0, 0x1_1050, 1]]);
        assert_eq!(m[filter_bit(0x1_0000)], 1 << 63);
        assert_eq!(m[filter_bit(0x1_1000)], 0b11);
        // Whole pages between.
        let m = line_masks(&[[0x1_0800, 0x1_3010, 1]]);
        assert_eq!(m[filter_bit(0x1_0000)], u64::MAX << 32);
        assert_eq!(m[filter_bit(0x1_1000)], u64::MAX);
        assert_eq!(m[filter_bit(0x1_2000)], u64::MAX);
        assert_eq!(m[filter_bit(0x1_3000)], 1);
        // Empty rows touch nothing; a huge one everything.
        assert!(line_masks(&[[5, 5, 1]]).iter().all(|&w| w == 0));
        assert!(line_masks(&[[0, 1 << 40, 1]])
            .iter()
            .all(|&w| w == u64::MAX));
    }

    /// Lookups with the line masks find exactly what a search of the rows finds, at every
    /// address around random rows (beside them on their pages, inside, at their ends), through
    /// publishes that move them; an address on a hit page but another line needs no search.
    #[test]
    fn lookups_with_line_masks_match_the_rows() {
        static T: LeftRightTable<16, 3> = LeftRightTable::new();
        let mut rng = crate::memory::Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..20 {
            let mut rows: Vec<[u64; 3]> = (0..6)
                .map(|i| {
                    let lo = 0x40_0000 + rng.below(0x8000);
                    [lo, lo + 1 + rng.below(0x180), i]
                })
                .collect();
            rows.sort_by_key(|r| r[0]);
            let env = Range::new(rows[0][0], rows.iter().map(|r| r[1]).max().unwrap());
            T.publish(&rows, env);
            for addr in 0x3f_f000..0x41_0000u64 {
                let want = rows
                    .iter()
                    .rev()
                    .find(|r| r[0] <= addr && addr < r[1])
                    .copied();
                let got = T.find(addr);
                // Overlapping rows: any row containing the address is a right answer.
                match (want, got) {
                    (None, None) => {}
                    (Some(_), Some(g)) => assert!(g[0] <= addr && addr < g[1], "{addr:#x}"),
                    _ => panic!("{addr:#x}: {want:x?} vs {got:x?} in {rows:x?}"),
                }
            }
        }
        T.publish(
            &[[0x20_0040, 0x20_0041, 7]],
            Range::new(0x20_0040, 0x20_0041),
        );
        assert!(T.filter_hit(0x20_0008) && !T.line_hit(0x20_0008) && T.line_hit(0x20_0040));
        assert_eq!(T.find(0x20_0040), Some([0x20_0040, 0x20_0041, 7]));
        assert_eq!(T.find(0x20_0008), None);
    }

    /// A page marked as holding code without frame records (`UNRECORDED_PAGE`) stays marked
    /// through publishes that add and remove a transition on it, and the transition bit alone
    /// answers `hit`.
    #[test]
    fn unrecorded_marks_survive_publishes() {
        static T: LeftRightTable<8, 3> = LeftRightTable::new();
        let f = || PageFilter { bytes: &T.filter };
        T.filter[filter_bit(0x20_0000)].fetch_or(UNRECORDED_PAGE, Ordering::Relaxed);
        assert_eq!(f().byte(0x20_0008), UNRECORDED_PAGE);
        assert!(!f().hit(0x20_0008));
        T.publish(
            &[[0x20_0000, 0x20_0010, 1]],
            Range::new(0x20_0000, 0x20_0010),
        );
        assert_eq!(f().byte(0x20_0008), UNRECORDED_PAGE | TRANSITION_PAGE);
        assert!(f().hit(0x20_0008));
        T.publish(&[], Range::new(0, 0));
        assert_eq!(f().byte(0x20_0008), UNRECORDED_PAGE);
        assert!(!f().hit(0x20_0008) && f().hit(0));
        assert_eq!(f().byte(0x30_0000), 0);
    }

    /// Readers racing a writer that keeps republishing see only complete versions: every row
    /// found is one that some version held, whole (its words agree), and an entry present in
    /// every version is always found. Writers never wait for readers.
    #[test]
    fn readers_racing_writers_see_whole_rows() {
        use std::sync::atomic::AtomicBool;
        static T: LeftRightTable<8, 3> = LeftRightTable::new();
        static STOP: AtomicBool = AtomicBool::new(false);
        T.publish(&[[100, 200, 1]], Range::new(100, 200));
        let writer = std::thread::spawn(|| {
            let mut k = 0u64;
            while !STOP.load(Ordering::Relaxed) {
                k += 1;
                // Row 1 is always present; a second row moves and carries a checkable id.
                let lo = 1000 + (k % 7) * 100;
                T.publish(
                    &[[100, 200, 1], [lo, lo + 50, lo * 3]],
                    Range::new(100, lo + 50),
                );
            }
            k
        });
        let t0 = std::time::Instant::now();
        let mut seen = 0u64;
        while t0.elapsed() < std::time::Duration::from_millis(300) {
            assert_eq!(T.find(150), Some([100, 200, 1]));
            for lo in (1000..1700).step_by(100) {
                if let Some(r) = T.find(lo + 10) {
                    assert_eq!(r, [lo, lo + 50, lo * 3]);
                    seen += 1;
                }
            }
        }
        STOP.store(true, Ordering::Relaxed);
        let published = writer.join().unwrap();
        assert!(published > 0 && seen > 0, "{published} {seen}");
    }

    #[test]
    fn live_stacks() {
        // SAFETY: a fresh private anonymous mapping of two pages, unmapped below.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as u64;
        // SAFETY: mapped and readable until unregistered (below).
        let id = unsafe { register_stack(Range::new(base, base + 4096)) }.unwrap();
        assert_eq!(
            registered_stack(base + 100),
            Some(Range::new(base, base + 4096))
        );
        assert_eq!(registered_stack(base + 4096), None);
        unregister_stack(id).unwrap();
        assert_eq!(registered_stack(base + 100), None);
        // Unmapped, or its bottom page unreadable (a guard page): left out of a registration.
        // SAFETY: the first page of the mapping above, which nothing uses.
        let protected = unsafe { libc::mprotect(base as *mut libc::c_void, 4096, libc::PROT_NONE) };
        assert_eq!(protected, 0);
        // SAFETY: the readable part (the second page) stays mapped until unregistered.
        let id = unsafe { register_stack(Range::new(base, base + 8192)) }.unwrap();
        assert_eq!(
            registered_stack(base + 4096),
            Some(Range::new(base + 4096, base + 8192))
        );
        assert_eq!(registered_stack(base + 100), None);
        unregister_stack(id).unwrap();
        // SAFETY: unmaps the mapping above, no longer registered.
        unsafe { libc::munmap(base as *mut libc::c_void, 8192) };
    }
}

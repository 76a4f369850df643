//! A sampling heap profiler: a [`GlobalAlloc`] wrapper that records the call stacks of a sample
//! of allocations, the way Go's `MemProfileRate` does.
//!
//! ```no_run
//! use unwind::heap::{self, Sampling};
//!
//! #[global_allocator]
//! static ALLOC: Sampling = Sampling::new(std::alloc::System);
//!
//! heap::start(heap::DEFAULT_RATE);
//! // 16 MiB in 1 MiB blocks: each is sampled with probability 1 - e^-2 (86%) at 512 KiB.
//! for _ in 0..16 {
//!     let v: Vec<u8> = Vec::with_capacity(1 << 20);
//!     drop(v);
//! }
//! heap::stop();
//! for s in heap::snapshot() {
//!     println!("{} bytes in {} objects at {:x?}", s.alloc_space, s.alloc_objects, s.pcs);
//! }
//! ```
//!
//! # Sampling
//! Allocations are sampled as a Poisson process over allocated bytes: each thread counts down a
//! distance drawn from an exponential distribution with mean `rate` bytes (default
//! [`DEFAULT_RATE`] = 512 KiB, Go's `MemProfileRate`); the allocation that takes it below zero
//! is sampled and a new distance is drawn. An allocation of `s` bytes is therefore sampled with
//! probability `1 - exp(-s / rate)`, independently of how allocations are split. `rate = 1`
//! samples every allocation; `rate = 0` samples none. Sizes are the requested [`Layout::size`]
//! (Go records the size class, slightly larger).
//!
//! The countdown, the generator state and the reentrancy flag live in `const`-initialised
//! thread-locals without destructors: reading them never allocates, never registers a
//! destructor, and works during thread teardown. The unsampled path is one thread-local
//! subtraction and a branch on its sign on `alloc` (`sub %reg, %fs:COUNTDOWN; js` on x86_64; no
//! load of shared state: the profiler's state is looked at only when the countdown runs out, see
//! *Lifecycle*), and on `dealloc` one relaxed byte load from a 64 KiB filter of 4 KiB regions
//! (a free in a region with no tracked block stops there; one line covers 256 KiB of
//! addresses), and a second load from a 32 KiB filter in the regions that have one.
//!
//! # Values: scaled like Go
//! The tables hold raw sampled counts, and beside them the estimates [`snapshot`] returns:
//! each sampled block of `size` bytes counts for `1 / (1 - exp(-size / rate))` blocks (and
//! that many times its bytes), the probability Go's `runtime/pprof` divides by
//! (`scaleHeapSample`), at the rate in force when it was sampled (a free is weighted at the
//! rate in force then). Go applies it per stack and block size (its buckets are keyed by
//! both); applied to a stack's average size, as [`scale`] does, it undercounts a stack that
//! allocates both small and large blocks (`collect()` of boxes into a `Vec`: a million boxes
//! read as under a hundred). With `rate <= 1` every block counts once. The results estimate
//! the unsampled totals, which is what `go tool pprof` users expect. [`snapshot_raw`] returns
//! the raw sampled values.
//!
//! # Stacks
//! A sampled allocation is captured in the [`Mode`] of [`start_with_mode`] (Hybrid with [`start`];
//! FramePointer is [`crate::capture`]'s walk). Every mode crosses every registered transition
//! ([`crate::system_stack::run`], coroutines, signal frames). The frames are cut with the heap
//! [`Policy`]: runtime frames at the leaf end are dropped, so a sample starts at the first
//! non-runtime frame, the code that asked for memory. "Runtime" is the [`Classifier`]'s answer; the
//! default one ([`default_classifier`]) counts as runtime the functions named with
//! [`is_runtime_name`] (this wrapper, the allocator shims, `alloc::`/`std::alloc` internals,
//! collections' growth paths, `core::iter` glue such as `collect`, `unwind::system_stack`) and
//! every frame on the system side of a system-stack switch. So an allocation made inside
//! `system_stack::run(|| ...)` is charged to the function that called `run`, as Go charges
//! `systemstack` work to the goroutine's frame. A program without symbol tables (stripped) gets a
//! classifier that knows no runtime code: its samples keep the wrapper's own frames at the leaf end
//! (pass a classifier built from a separate symbol file to [`start_with_classifier`]). At most
//! [`MAX_FRAMES`] frames are kept (leaf-most); longer stacks are counted in [`Stats::truncated`].
//!
//! Each thread captures into two buffers of its own that swap roles after a sample (3 KiB of
//! thread-local storage; nothing is zeroed or copied per sample), so it keeps its last
//! sample's captured frames, with the classifier, the stack slot the policy's frames went to
//! and the [`reset`] epoch. A sample that captures the same frames under the same classifier,
//! with no reset since, takes that slot without running the policy or searching the stack
//! table: the policy's answer is a function of the frames and the classifier, and a slot keeps
//! its stack until a reset. (The capture itself replays the thread's root frames from a memo:
//! see [`crate::dwarf::capture`].)
//!
//! # Tables: preallocated or mapped, lock-free
//! Nothing is allocated from the inner allocator. The tables are static (zero-initialised, so
//! they live in `.bss` and cost memory only where touched), except the stack slots, which are
//! mapped (`mmap`) a chunk at a time as stacks arrive:
//! - **stacks**: up to [`STACK_SLOTS`] slots (131072), in chunks of 4096 (2.2 MiB each), and
//!   an index from stack hash to slot (open addressing, entries only added until a [`reset`],
//!   so a lookup ends at the first empty entry). A new stack takes the next slot id, is filled,
//!   marked `READY` (release), then published in the index with a compare-and-swap. Two threads
//!   that add the same new stack at once both fill a slot and one of them wins the index
//!   entry; the other slot stays empty. Each slot holds four counters (sampled allocations and
//!   bytes, sampled frees and bytes). When the table is full (or a chunk cannot be mapped), a
//!   new stack's sample is dropped ([`Stats::dropped_stacks`]). (A fixed table of 4096 slots
//!   dropped every sample of a new stack once a long-running program had sampled 4096.)
//! - **live blocks**: a map from a sampled block's address to its stack slot and size, in
//!   buckets of four entries on one cache line each, claimed with compare-and-swap: a first
//!   level of [`MAP_SLOTS`] entries (32 768, 512 KiB in `.bss`), then up to seven more, each twice
//!   the one before, mapped (`mmap`) when needed: 8.4 million in all (a profile at rate 1 of a program
//!   with millions of live allocations). A block goes in its home bucket, or (that one full) in
//!   one of the next 15, and the buckets it passed are marked as overflowed so lookups follow;
//!   when all 16 are full, in the next level, and its home bucket is marked as spilled. A freed
//!   entry is simply emptied, with no tombstone, so lookups stay one line long however many
//!   blocks came and went.
//!   A free removes its entry *before* the block goes back to the inner allocator, so the address
//!   cannot be reused (and sampled again) while its old entry is still there. When no level has
//!   room for a block, the allocation is counted as allocated and at once as freed
//!   (so `inuse_*` never carries a block whose free cannot be seen) and counted in
//!   [`Stats::untracked`]. Two *counting filters* (one byte a counter, saturating: a counter
//!   that reaches 255 stays there until [`reset`], so it can only err towards looking) say
//!   whether an address may be in the map, so nearly every free skips it: 65536 counters of
//!   tracked blocks per 4 KiB region, then 32768 per 16-byte granule (address bits, the higher
//!   ones folded in). At the default rate a 1 GiB live heap has ~2000 tracked blocks: they
//!   flag ~3% of its 4 KiB regions, so few frees beside it read the second filter. (A single
//!   8192-counter filter made a malloc/free loop beside such a heap 11.8% slower than
//!   `System`; 64 KiB regions, ~40% of them flagged, 4.4% to 5.5%; 4 KiB regions 3.0%.)
//!
//! `realloc` is a free of the old block followed by an allocation of the new size (as jemalloc
//! and tcmalloc profile it): the old block's entry is taken before the inner `realloc`, accounted
//! as freed if it succeeds and put back if it fails; the new block goes through the sampling
//! decision with its new size.
//!
//! # Reentrancy, signals, deadlock
//! - The sampling path's capture, policy and tables allocate nothing and take no lock (the
//!   first capture on a thread reads `/proc/self/maps` with raw `open`/`read`/`close`, which
//!   allocate nothing; a new 4096th stack maps a chunk with `mmap`). Besides, in a CFI mode, a
//!   sample reads a coarse clock and, at most every 100 ms on one thread at a time, looks at
//!   the loader's counters ([`crate::module_watch::poll`]: `dl_iterate_phdr`, the loader's
//!   lock, about a microsecond); after a `dlopen` or `dlclose` that sample prepares the
//!   modules' CFI again (a few milliseconds; files read, memory allocated, unsampled), unless
//!   a refresh is under way elsewhere. A per-thread flag guards the path: an allocation made
//!   while the same thread is inside it (a signal handler that interrupted it and allocates,
//!   or the refresh's own) is passed straight to the inner allocator, unsampled. There is no
//!   recursion into the profiler.
//! - Nothing in the allocator path waits for another thread, except the look at the loader's
//!   counters for the loader's lock (held only briefly, never while it allocates), so a signal
//!   handler that interrupts it (and captures, as a CPU profiler's does) cannot deadlock with
//!   it. A handler that allocates is as safe as the inner allocator is in a handler (glibc's
//!   `malloc` is not async-signal-safe), and its sample may look at the loader's counters.
//! - [`reset`] is the only operation that waits: it raises a flag, waits until no allocator call
//!   is inside a table update (each such section is a bounded, lock-free sequence), clears the
//!   tables, and lowers the flag. Sampled allocations and frees that arrive meanwhile skip the
//!   tables ([`Stats::dropped_reset`]). [`start`], [`stop`], [`reset`], [`set_rate`] and
//!   [`snapshot`] allocate and take a mutex: call them from ordinary code, not from signal
//!   handlers or from inside an allocator. A `fork` waits for a start, stop, reset or
//!   snapshot running on another thread, and the child forgets the table updates the parent's
//!   other threads were inside (their threads do not run there), so a forked child can use the
//!   profiler as the parent did.
//!
//! The profiler's state is process-wide: every `Sampling` value (a program has one global
//! allocator, but a wrapper may also be called directly) feeds the same tables.
//!
//! # Lifecycle
//! [`start`] (or [`start_with_classifier`]) turns sampling on; it also runs [`crate::init`] and
//! builds the default classifier the first time (symbol tables of the loaded objects: do it
//! early). [`stop`] stops sampling new allocations; frees of blocks already sampled are still
//! tracked, so `inuse_*` stays right. [`reset`] forgets every sample. Samples accumulate across
//! stop/start cycles until [`reset`]. Threads need no registration: each one draws its first
//! countdown at its first allocation after a start or a rate change.
//!
//! A thread's allocations do not read the profiler's state: each thread looks at it when its
//! countdown runs out, and at least once every 4 MiB it allocates (longer distances are
//! counted down in pieces). So [`stop`] holds at once everywhere (a countdown that runs out
//! after it samples nothing); the thread that calls [`start`] or [`set_rate`] sees it at its
//! next allocation, and every other thread within 4 MiB of its own allocations (threads
//! created afterwards, at once).

use crate::frame::Frame;
use crate::policy::{Classifier, Policy, ProfileKind};
use crate::runtime_names;
use crate::walk::Mode;
use core::alloc::{GlobalAlloc, Layout};
use core::cell::{Cell, RefCell};
use core::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::collections::HashMap;
use std::sync::Mutex;

/// The default mean distance between samples, in bytes: 512 KiB, as Go's `MemProfileRate`.
pub const DEFAULT_RATE: u64 = 512 * 1024;
/// At most this many frames (the leaf-most, after the policy) are kept per sample.
pub const MAX_FRAMES: usize = 64;
/// Frames captured before the policy cuts the runtime frames at the leaf end.
const CAPTURE_FRAMES: usize = 96;
/// Slots in the stack table (distinct sampled stacks), at most: 32 chunks of 4096 slots, each
/// mapped when the slots before it are taken.
pub const STACK_SLOTS: usize = STACK_CHUNK * STACK_CHUNKS;
const STACK_CHUNK: usize = 4096;
const STACK_CHUNKS: usize = 32;
/// Entries in the stack index (hash to slot): twice [`STACK_SLOTS`], so it is at most half
/// full.
const INDEX_BITS: u32 = 18;
const INDEX_LEN: usize = 1 << INDEX_BITS;
const INDEX_PROBES: usize = 128;
/// Entries in the live-block map's first level (sampled blocks not yet freed); the map grows
/// past it by levels mapped when needed, to 255 times this (8.4 million). Half a MiB: with 1 MiB
/// the raw loop's samples cost ~0.5% more (benches/HISTORY.md, "Eleventh round"); much smaller, and the
/// sticky overflow bits of a long-running program with ~2000 live sampled blocks (a 1 GiB heap)
/// make lookups longer (see `a_long_churn_of_blocks_keeps_lookups_one_bucket_long`: 1.13
/// buckets per look-up with 16 Ki entries, 16 with 4 Ki).
pub const MAP_SLOTS: usize = MAP_BUCKETS * MAP_BUCKET_ENTRIES;
/// The map's buckets: one cache line, four entries, each.
const MAP_BUCKETS: usize = 1 << MAP_BITS;
const MAP_BITS: u32 = 13;
const MAP_BUCKET_ENTRIES: usize = 4;
/// A block is placed at most this many buckets after its home bucket (64 entries).
const MAP_PROBE_BUCKETS: usize = 16;
const FILTER_BITS: u32 = 15;
const FILTER_SLOTS: usize = 1 << FILTER_BITS;
/// The region filter's regions are `1 << REGION_SHIFT` bytes (4 KiB, a page); it has `1 <<
/// REGION_BITS` counters (64 KiB), regions 256 MiB apart sharing one.
const REGION_SHIFT: u32 = 12;
const REGION_BITS: u32 = 16;
const REGION_SLOTS: usize = 1 << REGION_BITS;
/// A filter counter that reached this stays there (until [`reset`]): its addresses are always
/// looked up in the map.
const FILTER_STUCK: u8 = u8::MAX;

/// One stack's heap profile values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeapSample {
    /// Return addresses, leaf first, as captured ([`Frame::pc`]; every one is a return
    /// address: symbolise at `pc - 1`). After the heap policy: the first is the first
    /// non-runtime frame.
    pub pcs: Vec<u64>,
    /// Allocations (estimated, unless raw).
    pub alloc_objects: i64,
    /// Allocated bytes (estimated, unless raw).
    pub alloc_space: i64,
    /// Allocations not yet freed (estimated, unless raw).
    pub inuse_objects: i64,
    /// Bytes not yet freed (estimated, unless raw).
    pub inuse_space: i64,
    /// Was the stack cut at [`MAX_FRAMES`] (or by the capture buffer), or did a walk by CFI
    /// stop short of its root ([`crate::StopReason::stopped_early`])? Profiles show a
    /// [`TRUNCATED_FRAME`](crate::profile::TRUNCATED_FRAME) at its root end.
    pub truncated: bool,
}

/// Counters of what the profiler did and could not do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Allocations sampled (recorded in a stack slot).
    pub samples: u64,
    /// Sampled allocations dropped because no stack slot was free.
    pub dropped_stacks: u64,
    /// Sampled allocations dropped because a [`reset`] was in progress.
    pub dropped_reset: u64,
    /// Sampled allocations whose address could not be tracked (the map was full around it):
    /// counted as freed at once.
    pub untracked: u64,
    /// Samples whose stack was longer than [`MAX_FRAMES`] after the policy, or was cut by the
    /// capture buffer.
    pub truncated: u64,
    /// Samples whose walk stopped before its thread's entry, on something it could not read
    /// or step (an unreadable frame record or transition, a frame pointer leaving its stack,
    /// no unwind information): their stacks lack the outermost callers, as the CPU profiler's
    /// `truncated` counts its samples. In a frame-pointer build the main thread's walks end
    /// `misaligned` at glibc's start code, which keeps no frame record: counted here too.
    pub stopped_early: u64,
    /// Shared objects unloaded (`dlclose`) since the samples began (the first start, or the
    /// last [`reset`]): samples in them are named after what is mapped at their addresses when
    /// the profile is written ([`crate::module_watch::warn_unloaded`], which [`to_profile`]
    /// calls).
    pub unloaded: u32,
    /// Allocations not sampled because their thread was already inside the profiler: the
    /// profiler's own work (preparing the CFI of libraries loaded since the last look, which a
    /// sample does first; [`snapshot`]'s and a profile's writing), or a signal handler that
    /// interrupted a sample and allocated. A program that loads libraries often counts many
    /// (found by outside use in the twenty-sixth round: tens of thousands in a plugin host).
    pub reentrant: u64,
    /// The program keeps no frame records (built without frame pointers): stacks came from
    /// CFI, which is slower per sample ([`crate::module_watch::program_keeps_frame_records`]).
    pub missing_frame_records: bool,
    /// Stack slots in use.
    pub stacks: usize,
    /// Sampled blocks currently tracked (not yet freed).
    pub tracked: usize,
}

/// A [`GlobalAlloc`] that forwards to `A` and samples allocations for the heap profiler.
///
/// Costs almost nothing until [`start`]. Use it as the program's allocator:
/// `#[global_allocator] static A: Sampling = Sampling::new(std::alloc::System);`
#[derive(Debug, Default)]
pub struct Sampling<A: GlobalAlloc = std::alloc::System> {
    inner: A,
}

impl<A: GlobalAlloc> Sampling<A> {
    /// Wraps `inner`.
    pub const fn new(inner: A) -> Self {
        Sampling { inner }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

// SAFETY: every method forwards to the inner allocator with the same arguments and returns its
// result unchanged; the profiler only reads the returned address and size. Blocks are removed
// from the profiler's map before they are handed back to the inner allocator.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Sampling<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !runs_out(layout.size()) {
            // SAFETY: forwarded; the caller upholds `GlobalAlloc::alloc`'s contract.
            return unsafe { self.inner.alloc(layout) };
        }
        // SAFETY: as above.
        unsafe { self.alloc_slow(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !runs_out(layout.size()) {
            // SAFETY: forwarded; the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
            return unsafe { self.inner.alloc_zeroed(layout) };
        }
        // SAFETY: as above.
        unsafe { self.alloc_slow(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if may_be_tracked(ptr as u64) {
            untrack(ptr as u64);
        }
        // SAFETY: forwarded; the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let tracked = may_be_tracked(ptr as u64);
        if !tracked && !runs_out(new_size) {
            // SAFETY: forwarded; the caller upholds `GlobalAlloc::realloc`'s contract.
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        // SAFETY: as above; the old block's entry is handled around the call.
        unsafe { self.realloc_slow(ptr, layout, new_size, !tracked) }
    }
}

impl<A: GlobalAlloc> Sampling<A> {
    /// An allocation whose size the countdown ran out at ([`runs_out`]): make it, then sample
    /// it or look at the profiler's state ([`maybe_sample`]).
    ///
    /// # Safety
    /// As [`GlobalAlloc::alloc`] (`zeroed`: [`GlobalAlloc::alloc_zeroed`]).
    #[cold]
    #[inline(never)]
    unsafe fn alloc_slow(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        // A sample's constants (`SampleMath`), on their way while the inner allocator runs.
        prefetch(&SAMPLE_MATH.weight);
        prefetch(&SAMPLE_MATH.draw);
        uncharge(layout.size());
        // SAFETY: forwarded; the caller upholds the contract of the method it called.
        let p = unsafe {
            if zeroed {
                self.inner.alloc_zeroed(layout)
            } else {
                self.inner.alloc(layout)
            }
        };
        if !p.is_null() {
            maybe_sample(p as u64, layout.size() as u64);
        }
        p
    }

    /// `realloc` of a block that may be sampled, or (`ran_out`) whose new size the countdown
    /// ran out at: take the old block's entry, reallocate, then account the old block as freed
    /// (success) or put the entry back (failure: the old block lives on); then the new block's
    /// sampling decision (the countdown is charged here unless it `ran_out`).
    ///
    /// # Safety
    /// As [`GlobalAlloc::realloc`].
    #[cold]
    #[inline(never)]
    unsafe fn realloc_slow(
        &self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
        ran_out: bool,
    ) -> *mut u8 {
        // A block the filter passed (`ran_out`) has no entry: no guard, nothing to take.
        let entered = !ran_out && enter();
        let taken = if entered {
            map_remove(ptr as u64)
        } else {
            None
        };
        // SAFETY: forwarded; the caller upholds `GlobalAlloc::realloc`'s contract.
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if let Some(v) = taken {
            if p.is_null() {
                // The old block is still ours and still live: nobody else can have inserted it.
                if !map_insert(ptr as u64, v) {
                    account_free(v);
                    STATS_UNTRACKED.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                account_free(v);
            }
        }
        if entered {
            exit();
        }
        if ran_out || runs_out(new_size) {
            uncharge(new_size);
            if !p.is_null() {
                maybe_sample(p as u64, new_size as u64);
            }
        }
        p
    }
}

// ---------------------------------------------------------------------------------------------
// Global state.

/// What the allocator path reads of the profiler's settings, on one cache line of its own
/// (written only by start, stop and the setters): a countdown that runs out takes one miss for
/// all of it, and the lines the sampling path writes stay elsewhere.
#[repr(align(64))]
struct Shared {
    /// `epoch << 1 | enabled`. Every start, stop and rate change bumps the epoch, so each
    /// thread redraws its countdown when it next looks (see [`NOTICE`]).
    state: AtomicU64,
    /// `generation << RATE_GEN_SHIFT | rate` ([`rate_and_generation`]).
    rate: AtomicU64,
    /// The classifier the sampling path reads (leaked: allocator threads may hold it at any
    /// time).
    classifier: AtomicPtr<Classifier>,
    /// The capture mode (0 frame pointers, 1 DWARF, 2 hybrid): see [`start_with_mode`].
    mode: AtomicU8,
}

static SHARED: Shared = Shared {
    state: AtomicU64::new(0),
    rate: AtomicU64::new(DEFAULT_RATE),
    classifier: AtomicPtr::new(core::ptr::null_mut()),
    mode: AtomicU8::new(2),
};
/// Where [`Shared::rate`] keeps the rate's generation (3 bits): a tracked block records the
/// generation it was sampled at, so that its free is weighted at that rate.
const RATE_GEN_SHIFT: u32 = 61;
/// The rate part of [`Shared::rate`] (rates above it are kept at it: ~2.3e18 bytes).
const RATE_MASK: u64 = (1 << RATE_GEN_SHIFT) - 1;
/// The rate of each of the last eight generations ([`set_rate_locked`]), by generation.
static RATES: [AtomicU64; 8] = [const { AtomicU64::new(DEFAULT_RATE) }; 8];

/// The sampling rate and its generation (0-7).
#[inline(always)]
fn rate_and_generation() -> (u64, u64) {
    let v = SHARED.rate.load(Ordering::Relaxed);
    (v & RATE_MASK, v >> RATE_GEN_SHIFT)
}

/// Sets the rate (under the control lock): a new generation when it changes, its rate in
/// [`RATES`] before the generation is published.
fn set_rate_locked(rate: u64) {
    let rate = rate.min(RATE_MASK);
    let (now, generation) = rate_and_generation();
    if now == rate {
        return;
    }
    let next = (generation + 1) & 7;
    RATES[next as usize].store(rate, Ordering::Relaxed);
    SHARED
        .rate
        .store(next << RATE_GEN_SHIFT | rate, Ordering::Release);
}

/// Does this profiler hold a [`crate::module_watch`] reference (between start and stop)?
static WATCHING: AtomicBool = AtomicBool::new(false);
/// Allocator calls inside a table update; [`reset`] waits for zero.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static RESETTING: AtomicBool = AtomicBool::new(false);
/// Serialises start, stop, reset, set_rate.
static CONTROL: Mutex<()> = Mutex::new(());
static SEEDS: AtomicU64 = AtomicU64::new(0);

static STATS_DROPPED_STACKS: AtomicU64 = AtomicU64::new(0);
/// What the samples [`STATS_DROPPED_STACKS`] counts allocated: sampled objects and bytes, then
/// the estimates (as a stack slot's `alloc_*` and `est_alloc_*`). A snapshot shows them as one
/// sample without a stack, cut (`[truncated]`), so a profile's totals stay whole.
static DROPPED_ALLOCS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static STATS_DROPPED_RESET: AtomicU64 = AtomicU64::new(0);
static STATS_UNTRACKED: AtomicU64 = AtomicU64::new(0);
static STATS_TRUNCATED: AtomicU64 = AtomicU64::new(0);
static STATS_STOPPED_EARLY: AtomicU64 = AtomicU64::new(0);
/// [`crate::module_watch::unloads`] when the samples began (`u32::MAX`: not yet).
static UNLOADS_AT: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(u32::MAX);

/// Shared objects unloaded since the samples began.
fn unloaded() -> u32 {
    match UNLOADS_AT.load(Ordering::Relaxed) {
        u32::MAX => 0,
        at => crate::module_watch::unloads().wrapping_sub(at),
    }
}
static STATS_REENTRANT: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Const-initialised, no destructors: never allocates, usable during thread teardown.
    /// Bytes left until this thread's next slow path (a sample, or a look at [`Shared::state`]): at
    /// most [`NOTICE`].
    static COUNTDOWN: Cell<u64> = const { Cell::new(0) };
    /// The rest of the drawn distance beyond `COUNTDOWN` (distances longer than [`NOTICE`] are
    /// counted down in pieces, so that the thread looks at [`Shared::state`] at least every
    /// `NOTICE` bytes).
    static REMAINING: Cell<u64> = const { Cell::new(0) };
    /// The `Shared::state` the distance was drawn under.
    static EPOCH: Cell<u64> = const { Cell::new(0) };
    /// xorshift64* state (0: not seeded).
    static RNG: Cell<u64> = const { Cell::new(0) };
    /// Inside the sampling path (the reentrancy guard), or inside [`snapshot`].
    static BUSY: Cell<bool> = const { Cell::new(false) };
    /// One of the profilers' own threads (their bookkeeping is not the program's).
    static OWN_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// A thread looks at [`Shared::state`] (started, stopped, the rate) at least once every
/// `NOTICE` bytes it allocates: that is how a [`start`], [`stop`] or [`set_rate`] made on
/// another thread reaches it, without a load of `Shared::state` on every allocation. (The
/// thread that calls them sees the change at its next allocation.)
const NOTICE: u64 = 4 << 20;

/// The allocation hook's fast path, before the allocation is made (so the inner allocator's
/// call stays a tail call): counts `size` bytes down and says whether that ran the countdown
/// out, below zero. One thread-local subtraction and a branch on the sign of its result: on
/// x86_64, `sub %reg, %fs:COUNTDOWN; js`. A countdown in use is at most [`NOTICE`], so it is
/// negative exactly when it ran out, and stays so for allocations made before the slow path
/// takes the charge back ([`uncharge`]): a signal handler's, on this thread, in between, runs
/// out too.
#[inline(always)]
fn runs_out(size: usize) -> bool {
    COUNTDOWN.with(|c| {
        let left = c.get().wrapping_sub(size as u64);
        c.set(left);
        (left as i64) < 0
    })
}

/// Takes back the charge of a [`runs_out`] that ran out: the countdown is what it was before,
/// or zero when it is still below (a signal handler's allocation on this thread ran it out
/// further in between: those bytes count).
#[inline]
fn uncharge(size: usize) {
    COUNTDOWN.with(|c| {
        let v = c.get().wrapping_add(size as u64);
        c.set(if (v as i64) < 0 { 0 } else { v });
    });
}

/// Sets this thread's distance to the next sample (counted down in pieces of [`NOTICE`]).
#[inline]
fn set_distance(d: u64) {
    let now = d.min(NOTICE);
    COUNTDOWN.with(|c| c.set(now));
    REMAINING.with(|r| r.set(d - now));
}

/// Makes this thread's next allocation take the slow path (after a change of [`Shared::state`]).
fn renotice() {
    COUNTDOWN.with(|c| c.set(0));
    REMAINING.with(|r| r.set(0));
}

/// Has an allocation gone through [`Sampling`] (its countdown's slow path: every thread's
/// first allocation, then one per [`NOTICE`] bytes at most)?
static SEEN: AtomicBool = AtomicBool::new(false);

/// Is [`Sampling`] the program's global allocator (has an allocation gone through it)? Without
/// it (`#[global_allocator] static ALLOC: Sampling = Sampling::new(std::alloc::System);`) the
/// profiler samples nothing, and [`start`] says so once on standard error. Allocates one
/// block the first time it answers no (a probe of 4 MiB and one byte, enough to reach the
/// countdown's slow path wherever it stands).
pub fn is_installed() -> bool {
    if !SEEN.load(Ordering::Relaxed) {
        let probe: Vec<u8> = Vec::with_capacity(NOTICE as usize + 1);
        drop(core::hint::black_box(probe));
    }
    SEEN.load(Ordering::Relaxed)
}

/// The countdown ran out: sample, or look at [`Shared::state`] and go on counting.
#[cold]
#[inline(never)]
fn maybe_sample(addr: u64, size: u64) {
    if !SEEN.load(Ordering::Relaxed) {
        SEEN.store(true, Ordering::Relaxed);
    }
    let g = SHARED.state.load(Ordering::Relaxed);
    let (rate, _) = rate_and_generation();
    if g & 1 == 0 || rate == 0 {
        // Not sampling: look again after NOTICE bytes.
        set_distance(NOTICE);
        return;
    }
    if BUSY.with(|b| b.get()) {
        STATS_REENTRANT.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if OWN_THREAD.with(|o| o.get()) {
        set_distance(NOTICE);
        return;
    }
    // What is left of the distance drawn under this epoch; a fresh one at the first
    // allocation under a new epoch (the exponential distribution is memoryless, so letting this
    // allocation count against it is exact).
    let left = if EPOCH.with(|e| e.replace(g)) == g {
        COUNTDOWN
            .with(|c| c.get())
            .saturating_add(REMAINING.with(|r| r.get()))
    } else {
        draw(rate)
    };
    if left > size {
        set_distance(left - size);
        return;
    }
    set_distance(draw(rate));
    BUSY.with(|b| b.set(true));
    // A module loaded or unloaded since the last look (at most every 100 ms): prepare its CFI
    // before this capture needs it.
    crate::module_watch::poll();
    record(addr, size);
    BUSY.with(|b| b.set(false));
}

/// A distance to the next sample: exponential with mean `rate` bytes. 0 for `rate == 1`
/// (sample everything), `u64::MAX` for `rate == 0` (sample nothing).
fn draw(rate: u64) -> u64 {
    match rate {
        0 => u64::MAX,
        1 => 0,
        _ => {
            // u in (0, 1]: 53 random bits, plus one so that ln(u) is finite.
            // Signed conversions (the values fit): no constants from memory (`SampleMath`).
            let u = ((next_random() >> 11) + 1) as i64 as f64 * math().draw.ulp;
            let d = neg_ln(u) * rate as i64 as f64;
            // At most `u64::MAX >> 1` (the saturating conversion's `i64::MAX`).
            d as i64 as u64
        }
    }
}

/// `-ln(u)` for `u` in `[2^-53, 1]`, within 1e-10 of `-u.ln()`, from the bits of `u` and a
/// polynomial: no call into libm, whose tables are cache misses at one sample per 512 KiB of
/// allocation (glibc's `log` took about a tenth of a sample's time in `perf record`).
#[inline]
fn neg_ln(u: f64) -> f64 {
    let SampleMath { weight: w, draw: k } = math();
    // u = m * 2^e with m in [sqrt(2)/2, sqrt(2)); u is normal (at least 2^-53).
    let bits = u.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    if m > k.sqrt_2 {
        m *= w.half;
        e += 1;
    }
    // ln(m) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = (m - 1) / (m + 1), |s| < 0.172:
    // the first omitted term is below 2e-11.
    let s = (m - w.one) / (m + w.one);
    let s2 = s * s;
    let [i3, i5, i7, i9, i11] = k.inv_odd;
    let series = w.one + s2 * (i3 + s2 * (i5 + s2 * (i7 + s2 * (i9 + s2 * i11))));
    -(e as f64 * k.ln_2 + (s + s) * series)
}

fn next_random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        if x == 0 {
            // Seed: a process-wide counter, this thread's TLS address and the process id (a
            // fork's children inherit the counter and the address), mixed (splitmix64).
            // SAFETY: getpid has no preconditions; it is async-signal-safe.
            let pid = unsafe { libc::getpid() } as u64;
            let mut z = SEEDS
                .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
                .wrapping_add(r as *const Cell<u64> as u64)
                .wrapping_add(pid.wrapping_mul(0xd6e8_feb8_6659_fd93));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x = (z ^ (z >> 31)) | 1;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// Enters a table update, unless a reset is in progress.
#[inline]
fn enter() -> bool {
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    if RESETTING.load(Ordering::SeqCst) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    true
}

#[inline]
fn exit() {
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
}

/// A thread's last sample: under which classifier and reset epoch it was captured, and the
/// stack slot and truncation the policy gave its frames (held in [`Captures`]). A sample that
/// captures the same frames under the same classifier gets the same answer from the policy (a
/// function of the frames and the classifier) and so the same stack, whose slot is still its
/// own while no [`reset`] ran: the policy and the stack table's hash and compare are skipped
/// (about 500 instructions of a sample, when a loop allocates in one place).
struct Last {
    classifier: *const Classifier,
    epoch: u64,
    slot: usize,
    cut: bool,
    /// Frames held, `usize::MAX`: none.
    len: usize,
}

/// A thread's two capture buffers: one holds its [`Last`] sample's frames, the next sample is
/// captured into the other, and they swap roles when the next sample is remembered. Nothing is
/// zeroed or copied per sample, and a sample writes the same lines each time (a buffer on the
/// stack was 1.5 KiB of fresh lines to zero, each sample).
struct Captures {
    bufs: [[Frame; CAPTURE_FRAMES]; 2],
    /// Which of `bufs` holds the last sample's frames.
    held: usize,
    last: Last,
}

impl Captures {
    const EMPTY: Captures = Captures {
        bufs: [[Frame::EMPTY; CAPTURE_FRAMES]; 2],
        held: 0,
        last: Last {
            classifier: core::ptr::null(),
            epoch: 0,
            slot: 0,
            cut: false,
            len: usize::MAX,
        },
    };

    /// The buffer to capture into, the last sample's frames (if any) and its [`Last`].
    fn split(&mut self) -> (&mut [Frame; CAPTURE_FRAMES], Option<&[Frame]>, &mut Last) {
        let [a, b] = &mut self.bufs;
        let (scratch, held) = if self.held == 0 { (b, a) } else { (a, b) };
        let held = held.get(..self.last.len);
        (scratch, held, &mut self.last)
    }
}

thread_local! {
    /// This thread's [`Captures`] (`const`-initialised, no destructor: usable in the allocator,
    /// during thread teardown).
    static CAPTURES: RefCell<Captures> = const { RefCell::new(Captures::EMPTY) };
}

/// Bumped by every [`reset`] (inside it: no sample is in a table update then).
static RESETS: AtomicU64 = AtomicU64::new(0);

/// The heap policy, keeping at most [`MAX_FRAMES`].
const POLICY: Policy = ProfileKind::Heap.policy().max_depth(MAX_FRAMES);

/// Records one sampled allocation: capture, policy, stack slot, live-block entry.
#[inline(never)]
fn record(addr: u64, size: u64) {
    // A block's size is kept in its live-map entry in `SIZE_BITS` bits: a larger block (2 TiB
    // or more) is counted at that much when allocated, as its free will count it (it was
    // counted whole and freed clamped: in-use bytes stayed behind after its free, found by
    // outside use in the twenty-fifth round).
    let size = size.min(MAX_TRACKED_SIZE);
    // The lines the block's live-map entry and filter counters are on are likely cache misses
    // (a sample comes every ~512 KiB of allocation): start loading them all now, so that they
    // arrive, in parallel, while the stack is captured. (The home bucket alone: ~0.5% more
    // on the raw loop.)
    let home = map_home(addr);
    prefetch(&MAP[home]);
    prefetch(&OVERFLOW[home / 64]);
    prefetch(&SPILL[home / 64]);
    prefetch(&FILTER[filter_index(addr)]);
    prefetch(&REGIONS[region_index(addr)]);
    // This thread's capture buffers; a stack buffer if they are in use (they cannot be: the
    // sampling path does not nest on a thread) or gone.
    let cell = CAPTURES.try_with(|c| c as *const RefCell<Captures>).ok();
    // SAFETY: `CAPTURES` is `const`-initialised without a destructor, so its storage lives as
    // long as this thread; the borrow below stays on this thread, inside this call.
    let mut held = cell.and_then(|c| unsafe { &*c }.try_borrow_mut().ok());
    let mut spare;
    let (buf, previous, mut last) = match held.as_deref_mut() {
        Some(c) => {
            let (buf, previous, last) = c.split();
            (buf, previous, Some(last))
        }
        None => {
            spare = [Frame::EMPTY; CAPTURE_FRAMES];
            (&mut spare, None, None)
        }
    };
    let mode = match SHARED.mode.load(Ordering::Relaxed) {
        1 => Mode::Dwarf,
        2 => Mode::Hybrid,
        _ => Mode::FramePointer,
    };
    // The prepared CFI (an atomic load; the tables are never freed): see `start_with_mode`.
    let unwinder = crate::modules::unwinder().filter(|_| mode != Mode::FramePointer);
    let t = match unwinder {
        Some(u) => crate::dwarf::capture(buf, u, mode),
        None => crate::live::capture_trace(buf),
    };
    let frames = &buf[..t.len.min(CAPTURE_FRAMES)];
    let c = SHARED.classifier.load(Ordering::Acquire);
    let full = t.stop == crate::frame::StopReason::BufferFull;
    // A walk by CFI that stopped short of the root: the profile marks the stack cut, as a cut
    // one (see `cpu::mark_cut_short`). So does a frame-record walk that gave nothing (a build
    // without frame pointers: an empty stack, which folded output would drop, bytes and all).
    let short = t.stop.stopped_early() && (unwinder.is_some() || t.len == 0);
    // This thread's last sample, when it captured the same frames under the same classifier:
    // the policy's answer and the stack's slot are those of that sample (see `Last`).
    let known = last
        .as_ref()
        .filter(|l| l.classifier == c && previous == Some(frames))
        .map(|l| (l.slot, l.epoch, l.cut));
    // The tables only now. The capture touches none of them, and this is the sample's first
    // locked instruction, which waits for every store before it (the inner allocator's, just
    // made, some of them cache misses) to complete: after the capture, they have.
    if !enter() {
        STATS_DROPPED_RESET.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // Inside the guard, no reset runs: a slot found under this epoch is still this stack's.
    let epoch = RESETS.load(Ordering::SeqCst);
    let (slot, cut) = match known {
        Some((slot, e, cut)) if e == epoch => (Some(slot), cut),
        _ => {
            let (kept, cut) = if c.is_null() {
                let n = frames.len().min(MAX_FRAMES);
                (&frames[..n], frames.len() > n)
            } else {
                // SAFETY: a non-null classifier came from Box::leak in `install_classifier` and
                // is never freed, so it is valid for the rest of the program.
                let k = POLICY.apply(frames, unsafe { &*c });
                (k.slice(frames), k.truncated)
            };
            let slot = stack_slot(kept);
            if let Some(l) = last.as_mut() {
                // These frames are the last sample's from now on (none, without a slot).
                **l = Last {
                    classifier: c,
                    epoch,
                    slot: slot.unwrap_or(0),
                    cut,
                    len: if slot.is_some() {
                        frames.len()
                    } else {
                        usize::MAX
                    },
                };
            }
            if let Some(h) = held.as_mut() {
                h.held ^= 1;
            }
            (slot, cut)
        }
    };
    if cut || full {
        STATS_TRUNCATED.fetch_add(1, Ordering::Relaxed);
    }
    if t.stop.stopped_early() {
        STATS_STOPPED_EARLY.fetch_add(1, Ordering::Relaxed);
    }
    match slot {
        None => {
            let [ao, ab, eao, eab] = &DROPPED_ALLOCS;
            count_alloc([ao, ab, eao, eab], size, rate_and_generation().0);
            STATS_DROPPED_STACKS.fetch_add(1, Ordering::Relaxed);
        }
        Some(slot) => {
            let Some(s) = self::slot(slot) else {
                exit();
                return;
            };
            let (rate, generation) = rate_and_generation();
            if cut || full || short {
                s.cut.store(true, Ordering::Relaxed);
            }
            count_alloc(
                [
                    &s.alloc_objects,
                    &s.alloc_bytes,
                    &s.est_alloc_objects,
                    &s.est_alloc_bytes,
                ],
                size,
                rate,
            );
            let v = pack(slot, size, generation);
            if !map_insert(addr, v) {
                account_free(v);
                STATS_UNTRACKED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    exit();
}

// ---------------------------------------------------------------------------------------------
// The stack table.

const EMPTY: u32 = 0;
const READY: u32 = 2;

struct StackSlot {
    state: AtomicU32,
    len: AtomicU32,
    hash: AtomicU64,
    pcs: [AtomicU64; MAX_FRAMES],
    alloc_objects: AtomicU64,
    alloc_bytes: AtomicU64,
    free_objects: AtomicU64,
    free_bytes: AtomicU64,
    /// The estimates: each sample weighted by how many allocations of its size it stands for
    /// at the rate it was taken at ([`weight`]; objects in units of 2^-[`WEIGHT_SHIFT`]).
    est_alloc_objects: AtomicU64,
    est_alloc_bytes: AtomicU64,
    est_free_objects: AtomicU64,
    est_free_bytes: AtomicU64,
    /// Was a sample of this stack cut at a maximum depth (the policy's or the capture
    /// buffer's)?
    cut: AtomicBool,
}

/// Fraction bits of [`StackSlot`]'s estimated object counts.
const WEIGHT_SHIFT: u32 = 16;

/// How many allocations of `size` bytes one sample stands for when samples come every `rate`
/// bytes on average: 1 / P(sampled) = 1 / (1 - e^(-size/rate)), Go's scaling, applied to each
/// sample (Go applies it per stack and size; applied to a stack's average size it miscounts a
/// stack that allocates blocks of very different sizes). 1 when every allocation is sampled.
/// `expm1` keeps it exact for small blocks (about `rate / size + 1/2`).
fn weight(size: u64, rate: u64) -> f64 {
    let k = &math().weight;
    if rate <= 1 || size == 0 {
        return k.one;
    }
    // Both below 2^62 (sizes are clamped at MAX_TRACKED_SIZE, rates at RATE_MASK): the
    // signed conversion, which needs no constants.
    let x = size as i64 as f64 / rate as i64 as f64;
    if x < k.half {
        return small_weight(x);
    }
    k.one / one_minus_exp_neg(x)
}

/// The sampling path's floating-point constants, each group on a cache line of its own.
///
/// Written as literals, the compiler leaves them in `.rodata`'s constant pool, spread over a
/// dozen lines, and a sample comes every ~512 KiB of allocation, which evicts them: `perf
/// annotate` of the raw heap loop (twenty-sixth round) showed [`add_weighted`]'s time on its
/// constant loads, its largest share of a sample. Read through [`math`], they are one line
/// per use.
#[repr(C, align(64))]
struct SampleMath {
    weight: WeightMath,
    draw: DrawMath,
}

/// [`weight`]'s and [`small_weight`]'s constants (64 bytes).
#[repr(C)]
struct WeightMath {
    c1: f64,
    c3: f64,
    c5: f64,
    c7: f64,
    c9: f64,
    c11: f64,
    half: f64,
    one: f64,
}

/// [`draw`]'s and [`neg_ln`]'s constants (64 bytes).
#[repr(C)]
struct DrawMath {
    sqrt_2: f64,
    ln_2: f64,
    /// `1/3, 1/5, 1/7, 1/9, 1/11`.
    inv_odd: [f64; 5],
    /// `2^-53`.
    ulp: f64,
}

static SAMPLE_MATH: SampleMath = SampleMath {
    weight: WeightMath {
        c1: 1.0 / 12.0,
        c3: -1.0 / 720.0,
        c5: 1.0 / 30240.0,
        c7: -1.0 / 1209600.0,
        c9: 1.0 / 47900160.0,
        c11: -691.0 / 1307674368000.0,
        half: 0.5,
        one: 1.0,
    },
    draw: DrawMath {
        sqrt_2: core::f64::consts::SQRT_2,
        ln_2: core::f64::consts::LN_2,
        inv_odd: [1.0 / 3.0, 1.0 / 5.0, 1.0 / 7.0, 1.0 / 9.0, 1.0 / 11.0],
        ulp: 1.0 / (1u64 << 53) as f64,
    },
};

/// [`SAMPLE_MATH`], read from memory: `black_box` keeps the compiler from folding its fields
/// back into scattered constant-pool entries.
#[inline(always)]
fn math() -> &'static SampleMath {
    core::hint::black_box(&SAMPLE_MATH)
}

/// `1 / (1 - e^-x)` for `0 < x < 0.5` by its Bernoulli series, `1/x + 1/2 + x/12 - x^3/720 +
/// x^5/30240 - x^7/1209600 + x^9/47900160 - 691 x^11/1307674368000`: the next term is below
/// 2e-15 of the sum there. A sampled block is nearly always in this range (a block of 4 KiB at
/// the default rate is x = 1/128); one division and a few multiplications, where
/// [`one_minus_exp_neg`]'s 20-term chain cost ~50 ns on each sample and again on its free
/// (`perf record` of the heap loop, twenty-sixth round). No call into libm.
#[inline]
fn small_weight(x: f64) -> f64 {
    let k = &math().weight;
    let y = x * x;
    let odd = x * (k.c1 + y * (k.c3 + y * (k.c5 + y * (k.c7 + y * (k.c9 + y * k.c11)))));
    k.one / x + k.half + odd
}

/// `1 - e^-x` (`-expm1(-x)`) for `x >= 1/1024`, within 1e-14 relative, without libm: its
/// `expm1` was the one libm function `unwind` called, and a program that loads libm pays for
/// it at every start (~70 us here, 3-4% of an `unwind stack` run). Series for `x < 1` (the
/// terms shrink at once, no cancellation: the sum is at least `x / 2`); above, `e^-x` as
/// `e^-f` by its series times `e^-1` for each whole unit; 1 past 40 (`e^-40` is below half an
/// ulp of 1).
fn one_minus_exp_neg(x: f64) -> f64 {
    const E_NEG_1: f64 = 0.367_879_441_171_442_33;
    if x > 40.0 || x.is_nan() {
        return 1.0;
    }
    if x < 1.0 {
        return series(x);
    }
    let n = x as u32;
    let mut e = 1.0 - series(x - f64::from(n));
    for _ in 0..n {
        e *= E_NEG_1;
    }
    1.0 - e
}

/// `1 - e^-x` for `0 <= x < 1` by its series, `x - x^2/2! + x^3/3! - ...`, in nested form:
/// `x (1 - x/2 (1 - x/3 (1 - ...)))`, multiplied by constant reciprocals rather than divided
/// twenty times in a row. Terms to `x^21/21!`, below 1e-19.
fn series(x: f64) -> f64 {
    const INV: [f64; 20] = {
        let mut t = [0.0; 20];
        let mut k = 0;
        while k < 20 {
            t[k] = 1.0 / (k + 2) as f64;
            k += 1;
        }
        t
    };
    let mut acc = 1.0;
    let mut k = INV.len();
    while k > 0 {
        k -= 1;
        acc = 1.0 - x * INV[k] * acc;
    }
    x * acc
}

/// Counts one sampled allocation of `size` bytes at `rate` in `[objects, bytes, estimated
/// objects, estimated bytes]`: the bytes before the count, the count with release (a snapshot
/// that reads the count first, with acquire, sees at least the bytes of every allocation it
/// counts: see `collect`).
#[inline(always)]
fn count_alloc([ao, ab, eao, eab]: [&AtomicU64; 4], size: u64, rate: u64) {
    add_weighted(eao, eab, size, rate);
    ab.fetch_add(size, Ordering::Relaxed);
    ao.fetch_add(1, Ordering::Release);
}

/// Adds one sample of `size` bytes, weighted at `rate` ([`weight`]), to an estimate's pair of
/// counters.
fn add_weighted(objects: &AtomicU64, bytes: &AtomicU64, size: u64, rate: u64) {
    let w = weight(size, rate);
    // `w * size` is about `rate + size / 2`, below 2^63. The objects' fixed point is `w *
    // 2^WEIGHT_SHIFT`, made exactly by adding to `w`'s exponent (`w` is finite and at least
    // 1), saturating only where `w` passes 2^47 (a rate near 2^47 and 1-byte blocks; the
    // unsigned conversion saturated at twice that). Neither needs a constant from memory
    // (see `SampleMath`).
    bytes.fetch_add(to_count(w * size as i64 as f64), Ordering::Relaxed);
    let units = f64::from_bits(w.to_bits() + (u64::from(WEIGHT_SHIFT) << 52));
    objects.fetch_add(to_count(units), Ordering::Relaxed);
}

/// `v` truncated to an integer, for `0 <= v < 2^63`; `i64::MAX` for anything else (larger,
/// negative, NaN). The bound is checked on `v`'s bits (a positive float's bits order as its
/// value), where `as` would compare with a constant loaded from memory (see `SampleMath`).
#[inline(always)]
fn to_count(v: f64) -> u64 {
    /// The bits of 2^63.
    const LIMIT: u64 = 0x43e0_0000_0000_0000;
    if v.to_bits() >= LIMIT {
        return i64::MAX as u64;
    }
    // SAFETY: bits below 2^63's (sign bit clear, not NaN, not infinite) are a value in
    // [0, 2^63), whose truncation fits in i64.
    unsafe { v.to_int_unchecked::<i64>() as u64 }
}

#[allow(clippy::declare_interior_mutable_const)]
const Z64: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const Z8: AtomicU8 = AtomicU8::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ENTRY: [AtomicU64; 2] = [Z64; 2];
#[allow(clippy::declare_interior_mutable_const)]
const BUCKET: Bucket = Bucket([ENTRY; MAP_BUCKET_ENTRIES]);

/// Four live-block entries, `[address (0: free), packed (slot, size)]`, on one cache line.
#[repr(align(64))]
struct Bucket([[AtomicU64; 2]; MAP_BUCKET_ENTRIES]);

#[allow(clippy::declare_interior_mutable_const)]
const NO_CHUNK: AtomicPtr<StackSlot> = AtomicPtr::new(core::ptr::null_mut());
/// The stack table's chunks, each [`STACK_CHUNK`] slots mapped with `mmap` (zero-filled, which
/// is a valid empty slot) when the first slot in it is claimed; null before. Never unmapped.
static CHUNKS: [AtomicPtr<StackSlot>; STACK_CHUNKS] = [NO_CHUNK; STACK_CHUNKS];
/// Slots claimed so far (slot ids are handed out in order; [`reset`] starts again at 0).
static CLAIMED: AtomicUsize = AtomicUsize::new(0);
/// The stack index: open addressing by stack hash, linear probes, `hash << 32 | (slot + 1)`
/// (0: empty). Entries are only added, and only [`reset`] removes them (all at once), so a
/// lookup ends at the first empty entry.
static INDEX: [AtomicU64; INDEX_LEN] = [Z64; INDEX_LEN];
/// The live-block map: [`Bucket`]s, by address hash.
static MAP: [Bucket; MAP_BUCKETS] = [BUCKET; MAP_BUCKETS];
/// One bit per bucket of [`MAP`]: see [`Level::overflowed`].
static OVERFLOW: [AtomicU64; MAP_BUCKETS / 64] = [Z64; MAP_BUCKETS / 64];
/// One bit per bucket of [`MAP`]: see [`Level::spilled`].
static SPILL: [AtomicU64; MAP_BUCKETS / 64] = [Z64; MAP_BUCKETS / 64];
/// Per address hash: how many tracked blocks hash here (saturating at [`FILTER_STUCK`]). 32
/// KiB, indexed by address bits so that frees of nearby blocks read the same cache lines.
static FILTER: [AtomicU8; FILTER_SLOTS] = [Z8; FILTER_SLOTS];
/// Per 4 KiB region: how many tracked blocks start in it (saturating at [`FILTER_STUCK`]).
/// A free reads it before [`FILTER`]: a program's frees mostly fall in regions with no tracked
/// block, and one line of it covers 256 KiB of addresses, so frees near each other read the
/// same line. Small regions keep a large live heap's tracked blocks from flagging most of it
/// (64 KiB regions: ~40% of a 1 GiB heap's, at the default rate).
static REGIONS: [AtomicU8; REGION_SLOTS] = [Z8; REGION_SLOTS];

fn stack_hash(frames: &[Frame]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ frames.len() as u64;
    for f in frames {
        h = (h ^ f.pc).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h
}

impl StackSlot {
    fn matches(&self, h: u64, frames: &[Frame]) -> bool {
        self.hash.load(Ordering::Relaxed) == h
            && self.len.load(Ordering::Relaxed) as usize == frames.len()
            && self
                .pcs
                .iter()
                .zip(frames)
                .all(|(a, f)| a.load(Ordering::Relaxed) == f.pc)
    }
}

/// Stack slot `id`, if its chunk is mapped.
#[inline]
fn slot(id: usize) -> Option<&'static StackSlot> {
    let c = CHUNKS.get(id / STACK_CHUNK)?.load(Ordering::Acquire);
    if c.is_null() {
        return None;
    }
    // SAFETY: a non-null chunk pointer is a live mapping of `STACK_CHUNK` slots (zero-filled:
    // all-zero bits are valid atomics), published with release after it was mapped and never
    // unmapped; `id % STACK_CHUNK` is inside it. Slots are only accessed through atomics.
    Some(unsafe { &*c.add(id % STACK_CHUNK) })
}

/// The slots claimed so far, in id order (ids without a mapped chunk skipped).
fn slots() -> impl Iterator<Item = (usize, &'static StackSlot)> {
    let n = CLAIMED.load(Ordering::Acquire).min(STACK_SLOTS);
    (0..n).filter_map(|id| Some((id, slot(id)?)))
}

/// The mapping published in `slot`, making and publishing one of `len` bytes (anonymous,
/// zero-filled, never unmapped) if there is none yet; `None` when `mmap` fails. `mmap` and
/// `munmap` are system calls (async-signal-safe, no allocation); a thread that loses the race
/// to publish its mapping unmaps it and takes the winner's. Used for the stack table's chunks
/// and the live map's levels.
fn map_once<T>(slot: &AtomicPtr<T>, len: usize) -> Option<*mut T> {
    let p = slot.load(Ordering::Acquire);
    if !p.is_null() {
        return Some(p);
    }
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing: it touches
    // no existing memory.
    let m = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if m == libc::MAP_FAILED {
        return None;
    }
    match slot.compare_exchange(
        core::ptr::null_mut(),
        m.cast(),
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => Some(m.cast()),
        Err(other) => {
            // SAFETY: `m` is the mapping of `len` bytes made above, never published: nothing
            // else refers to it.
            unsafe { libc::munmap(m, len) };
            Some(other)
        }
    }
}

/// Maps chunk `i` if it is not yet (see [`map_once`]).
fn map_chunk(i: usize) -> bool {
    CHUNKS
        .get(i)
        .and_then(|c| map_once(c, STACK_CHUNK * core::mem::size_of::<StackSlot>()))
        .is_some()
}

/// A fresh slot holding `frames` (hash `h`), ready but not yet in the index; `None` when the
/// table is full or its next chunk cannot be mapped.
fn new_slot(h: u64, frames: &[Frame]) -> Option<usize> {
    if CLAIMED.load(Ordering::Relaxed) >= STACK_SLOTS {
        return None;
    }
    let id = CLAIMED.fetch_add(1, Ordering::AcqRel);
    if id >= STACK_SLOTS || !map_chunk(id / STACK_CHUNK) {
        return None;
    }
    let s = slot(id)?;
    s.hash.store(h, Ordering::Relaxed);
    s.len.store(frames.len() as u32, Ordering::Relaxed);
    for (a, f) in s.pcs.iter().zip(frames) {
        a.store(f.pc, Ordering::Relaxed);
    }
    s.state.store(READY, Ordering::Release);
    Some(id)
}

/// The slot of this stack, claiming one if it is new. Lock-free; never waits for another
/// thread. A lookup reads the stack's index entry (one cache line, nearly always) and its slot;
/// a new stack takes the next slot id, mapping a new chunk (`mmap`) every [`STACK_CHUNK`]
/// stacks. Two threads that add the same new stack at once both fill a slot: one publishes its
/// slot and the other's stays out of the index, empty.
fn stack_slot(frames: &[Frame]) -> Option<usize> {
    let frames = &frames[..frames.len().min(MAX_FRAMES)];
    let h = stack_hash(frames);
    let tag = h << 32;
    let home = (h >> (64 - INDEX_BITS)) as usize;
    let mut mine = None;
    let mut found = None;
    for i in 0..INDEX_PROBES {
        let e = &INDEX[(home + i) & (INDEX_LEN - 1)];
        let mut v = e.load(Ordering::Acquire);
        if v == 0 {
            let id = match mine {
                Some(id) => id,
                None => {
                    let Some(id) = new_slot(h, frames) else { break };
                    mine = Some(id);
                    id
                }
            };
            match e.compare_exchange(
                0,
                tag | (id as u64 + 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(id),
                // Another stack took this entry first: it may be this one.
                Err(now) => v = now,
            }
        }
        if v & !0xffff_ffff == tag {
            let id = (v & 0xffff_ffff) as usize - 1;
            if slot(id).is_some_and(|s| s.matches(h, frames)) {
                found = Some(id);
                break;
            }
        }
    }
    if let Some(id) = mine {
        // Filled but not published (the stack was found, or no entry was free): empty again.
        if let Some(s) = slot(id) {
            s.state.store(EMPTY, Ordering::Release);
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// The live-block map.

/// A tracked block's value: its stack slot (20 bits), the rate generation it was sampled at
/// (3 bits) and its size (41 bits: sizes from 2 TiB up are kept at that).
const SIZE_BITS: u32 = 41;
/// The largest size a sample records (2 TiB - 1): what fits in [`SIZE_BITS`].
const MAX_TRACKED_SIZE: u64 = (1 << SIZE_BITS) - 1;
const GEN_SHIFT: u32 = SIZE_BITS;
const SLOT_SHIFT: u32 = SIZE_BITS + 3;

fn pack(slot: usize, size: u64, generation: u64) -> u64 {
    ((slot as u64) << SLOT_SHIFT) | (generation & 7) << GEN_SHIFT | size.min((1 << SIZE_BITS) - 1)
}

// Every stack slot fits its bits.
const _: () = assert!(STACK_SLOTS <= 1 << (64 - SLOT_SHIFT));

/// `(slot, size, rate generation)`.
fn unpack(v: u64) -> (usize, u64, u64) {
    (
        (v >> SLOT_SHIFT) as usize,
        v & ((1 << SIZE_BITS) - 1),
        (v >> GEN_SHIFT) & 7,
    )
}

/// Asks the CPU to start loading the cache line of `p` (a hint: it changes no result and
/// cannot fault).
#[inline(always)]
fn prefetch<T>(p: &T) {
    let p = p as *const T;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` only hints the cache: it never faults (and `p` is a valid reference
    // besides) and changes no architectural state.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: `prfm` only hints the cache: it never faults and changes no register or memory.
    unsafe {
        core::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, preserves_flags, readonly))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}

/// `addr`'s home bucket in a map level of `1 << bits` buckets.
#[inline(always)]
fn home_bucket(addr: u64, bits: u32) -> usize {
    (addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)) as usize
}

/// `addr`'s home bucket in the live map's first level ([`MAP`]).
#[inline(always)]
fn map_home(addr: u64) -> usize {
    home_bucket(addr, MAP_BITS)
}

/// The filter counter of `addr`: 16-byte granules of a 512 KiB window (so a free reads the
/// line its neighbours' frees read), the next address bits folded in so that page-aligned
/// blocks (the inner allocator's `mmap`ed ones) spread over the counters.
#[inline(always)]
fn filter_index(addr: u64) -> usize {
    (((addr ^ (addr >> FILTER_BITS)) >> 4) as usize) & (FILTER_SLOTS - 1)
}

/// The region counter of `addr`.
#[inline(always)]
fn region_index(addr: u64) -> usize {
    ((addr >> REGION_SHIFT) as usize) & (REGION_SLOTS - 1)
}

/// Counts one more tracked block at `addr` in both filters (saturating: a stuck counter stays).
fn filter_add(addr: u64) {
    for c in [&REGIONS[region_index(addr)], &FILTER[filter_index(addr)]] {
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < FILTER_STUCK).then(|| n + 1)
        });
    }
}

/// Counts one tracked block less at `addr` in both filters (a stuck counter stays stuck).
fn filter_remove(addr: u64) {
    for c in [&REGIONS[region_index(addr)], &FILTER[filter_index(addr)]] {
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n > 0 && n < FILTER_STUCK).then(|| n - 1)
        });
    }
}

/// Could `addr` be a tracked block? A relaxed load of its region's counter and, when that is
/// not zero, of its filter counter. A tracked block has both counters above zero: a free can
/// only err towards looking in the map. Past the region counter, the home bucket's line is
/// prefetched, so that its miss overlaps the filter counter's.
#[inline(always)]
fn may_be_tracked(addr: u64) -> bool {
    if REGIONS[region_index(addr)].load(Ordering::Relaxed) == 0 {
        return false;
    }
    prefetch(&MAP[map_home(addr)]);
    FILTER[filter_index(addr)].load(Ordering::Relaxed) != 0
}

/// One level of the live-block map: its buckets and, per bucket, an overflow bit (see
/// [`Level::overflowed`]) and a spill bit (see [`Level::spilled`]).
#[derive(Clone, Copy)]
struct Level {
    buckets: &'static [Bucket],
    overflow: &'static [AtomicU64],
    spill: &'static [AtomicU64],
    /// `buckets.len() == 1 << bits`.
    bits: u32,
}

/// Levels of the live-block map beyond the static one, each twice the one before, mapped
/// (`mmap`) when the one before has no room left for an address: 32 Ki entries in `.bss`,
/// then 64 Ki, 128 Ki, ... 4 Mi, 8.4 M in all (a program profiled at rate 1 keeps every live
/// allocation tracked; a fixed map counted those beyond it as freed at once).
const MAP_LEVELS: usize = 8;

#[allow(clippy::declare_interior_mutable_const)]
const NO_LEVEL: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
/// The mapped levels 1.. (index 0 unused: level 0 is [`MAP`]); null until mapped. Never
/// unmapped.
static LEVELS: [AtomicPtr<u8>; MAP_LEVELS] = [NO_LEVEL; MAP_LEVELS];

impl Level {
    /// The bytes of level `k >= 1`: buckets, then overflow bits, then spill bits.
    fn size(k: usize) -> (usize, usize) {
        let n = MAP_BUCKETS << k;
        (n, n * core::mem::size_of::<Bucket>() + 2 * (n / 64) * 8)
    }

    /// Level `k`, if it exists (`map`: mapping it if not yet; `None` if that fails).
    fn get(k: usize, map: bool) -> Option<Level> {
        if k == 0 {
            return Some(Level {
                buckets: &MAP,
                overflow: &OVERFLOW,
                spill: &SPILL,
                bits: MAP_BITS,
            });
        }
        let slot = LEVELS.get(k)?;
        let (n, len) = Level::size(k);
        let p = if map {
            map_once(slot, len)?
        } else {
            Some(slot.load(Ordering::Acquire)).filter(|p| !p.is_null())?
        };
        // SAFETY: a non-null level pointer is a live, zero-filled, never unmapped mapping of
        // `len` bytes, published with release after it was made, laid out as `size` says:
        // `n` buckets (64-byte aligned: the mapping is page-aligned), then two bit arrays of
        // `n / 64` words. All-zero bits are valid atomics, and they are only accessed as such.
        unsafe {
            let buckets = core::slice::from_raw_parts(p.cast::<Bucket>(), n);
            let bits = p
                .add(n * core::mem::size_of::<Bucket>())
                .cast::<AtomicU64>();
            Some(Level {
                buckets,
                overflow: core::slice::from_raw_parts(bits, n / 64),
                spill: core::slice::from_raw_parts(bits.add(n / 64), n / 64),
                bits: MAP_BITS + k as u32,
            })
        }
    }

    /// The bucket `j` buckets after `addr`'s home bucket here.
    #[inline(always)]
    fn bucket(&self, addr: u64, j: usize) -> usize {
        (home_bucket(addr, self.bits) + j) & (self.buckets.len() - 1)
    }

    fn bit(words: &[AtomicU64], b: usize) -> bool {
        words[b / 64].load(Ordering::Acquire) & (1 << (b % 64)) != 0
    }

    fn set_bit(words: &[AtomicU64], b: usize) {
        if !Level::bit(words, b) {
            words[b / 64].fetch_or(1 << (b % 64), Ordering::AcqRel);
        }
    }

    /// Has an entry been placed beyond bucket `b` because `b` was full (so a lookup that misses
    /// in `b` goes on to the next bucket)? Set before that entry is placed; cleared only by
    /// [`reset`].
    #[inline(always)]
    fn overflowed(&self, b: usize) -> bool {
        Level::bit(self.overflow, b)
    }

    /// Has an address whose home bucket is `b` gone to the next level, this level's window
    /// for it being full? Set before that entry is placed; cleared only by [`reset`].
    #[inline(always)]
    fn spilled(&self, b: usize) -> bool {
        Level::bit(self.spill, b)
    }

    /// The entry holding `addr` on its path in this level, if any.
    fn find(&self, addr: u64) -> Option<&'static [AtomicU64; 2]> {
        for j in 0..MAP_PROBE_BUCKETS {
            let b = self.bucket(addr, j);
            if let Some(e) = self.buckets[b]
                .0
                .iter()
                .find(|e| e[0].load(Ordering::Acquire) == addr)
            {
                return Some(e);
            }
            if !self.overflowed(b) {
                return None;
            }
        }
        None
    }

    /// Places `addr` in a free entry of its window here; false when the window is full.
    fn place(&self, addr: u64, v: u64) -> bool {
        for _ in 0..4 {
            let mut free = None;
            for j in 0..MAP_PROBE_BUCKETS {
                let b = self.bucket(addr, j);
                free = self.buckets[b]
                    .0
                    .iter()
                    .find(|e| e[0].load(Ordering::Acquire) == 0);
                if free.is_some() {
                    break;
                }
                // Full: this entry goes further on, and lookups must follow it there.
                Level::set_bit(self.overflow, b);
            }
            let Some(e) = free else { return false };
            if e[0]
                .compare_exchange(0, addr, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                e[1].store(v, Ordering::Release);
                return true;
            }
            // Another thread took the entry: look again.
        }
        false
    }
}

/// The entry holding `addr`, searching the levels its path spilled into.
fn map_find(addr: u64) -> Option<&'static [AtomicU64; 2]> {
    for k in 0..MAP_LEVELS {
        let lv = Level::get(k, false)?;
        if let Some(e) = lv.find(addr) {
            return Some(e);
        }
        if !lv.spilled(lv.bucket(addr, 0)) {
            return None;
        }
    }
    None
}

/// Tracks `addr`. False when no level has room for it (more than 8.4 million tracked blocks, or
/// a level cannot be mapped).
///
/// One bucket (one cache line) in the common case: the home bucket of the first level, read
/// for a stale entry of `addr` and then for a free entry. Further buckets only where the home
/// bucket overflowed, further levels only where it spilled. A free entry is zero: there are no
/// tombstones, so lookups never get longer as blocks come and go (with tombstones, a
/// long-running program's inserts came to scan nearly the whole 64-entry window, 16 cache
/// lines each).
fn map_insert(addr: u64, v: u64) -> bool {
    if addr == 0 {
        return false;
    }
    if let Some(e) = map_find(addr) {
        // A stale entry for this address (a free we could not see): count it as freed and
        // take the entry over.
        let old = e[1].swap(v, Ordering::AcqRel);
        account_free(old);
        return true;
    }
    for k in 0..MAP_LEVELS {
        let Some(lv) = Level::get(k, true) else {
            return false;
        };
        if lv.place(addr, v) {
            filter_add(addr);
            return true;
        }
        // This level has no room on its path: the next one, and lookups must follow.
        Level::set_bit(lv.spill, lv.bucket(addr, 0));
    }
    false
}

/// Stops tracking `addr`; returns its packed value.
fn map_remove(addr: u64) -> Option<u64> {
    if addr == 0 {
        return None;
    }
    let e = map_find(addr)?;
    let v = e[1].load(Ordering::Acquire);
    if e[0]
        .compare_exchange(addr, 0, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        filter_remove(addr);
        return Some(v);
    }
    None
}

fn account_free(v: u64) {
    let (slot, size, generation) = unpack(v);
    if let Some(s) = self::slot(slot) {
        // Weighted at the rate it was sampled at (its generation's; after more than seven
        // rate changes since, a later one's: the in-use estimate is kept at zero or above).
        add_weighted(
            &s.est_free_objects,
            &s.est_free_bytes,
            size,
            RATES[generation as usize].load(Ordering::Relaxed),
        );
        // Bytes before the count, as for allocations in `record`.
        s.free_bytes.fetch_add(size, Ordering::Relaxed);
        s.free_objects.fetch_add(1, Ordering::Release);
    }
}

/// A free of a block the filter says may be tracked.
#[cold]
#[inline(never)]
fn untrack(addr: u64) {
    if !enter() {
        return;
    }
    if let Some(v) = map_remove(addr) {
        account_free(v);
    }
    exit();
}

// ---------------------------------------------------------------------------------------------
// Control.

/// The control lock (start, stop, reset, set_rate, snapshot; and `profile::fork`).
pub(super) fn control() -> std::sync::MutexGuard<'static, ()> {
    CONTROL.lock().unwrap_or_else(|e| e.into_inner())
}

/// After a `fork`, in the child: forgets the table updates that the parent's other threads
/// were inside (they do not run here, and [`reset`] would wait for them forever).
pub(super) fn forget_in_flight() {
    IN_FLIGHT.store(0, Ordering::SeqCst);
}

/// Marks the calling thread as one of the profilers' own (the CPU profiler's collector, the
/// module watcher): its allocations (the CFI tables prepared after a `dlopen`, the samples'
/// stacks) are not sampled. They are the profilers' bookkeeping, and the heap policy, which
/// drops the profiler's frames at the leaf end, charged them to whatever called back into
/// it (`dl_iterate_phdr`: 28% of a `dlopen`-heavy program's profile). The CPU profiler's
/// per-thread timers ([`crate::cpu::Threads::All`]) leave the thread out too, until it ends
/// (at most eight such threads at once).
pub fn exclude_this_thread() {
    let _ = OWN_THREAD.try_with(|o| o.set(true));
    crate::threads::mark_own();
}

/// Runs `f` with the calling thread's allocations left unsampled, as the profilers' own
/// threads' are: the profile writers' (symbolization, line tables: tens of MB of DWARF
/// parsing for a program with debug info), which the next heap profile charged to whatever
/// wrote the profile.
///
/// The thread's distance to its next sample is as it was before (what `f` allocated does not
/// count): a countdown that ran out inside `f` was set to [`NOTICE`] (4 MiB) there, and the
/// thread's own allocations after it went unsampled for that long (found by outside use: 55%
/// fewer samples after each periodic profile dump, none at all after `CpuProfiler::start` in
/// a small program). When `f` started, stopped or re-rated the profiler, the thread looks at
/// its state at its next allocation instead, as [`start`] arranges.
pub(crate) fn unsampled<R>(f: impl FnOnce() -> R) -> R {
    struct Restore {
        own: bool,
        countdown: u64,
        remaining: u64,
        state: u64,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = OWN_THREAD.try_with(|o| o.set(self.own));
            if self.own {
                return;
            }
            let (countdown, remaining) = if SHARED.state.load(Ordering::Relaxed) == self.state {
                (self.countdown, self.remaining)
            } else {
                (0, 0)
            };
            let _ = COUNTDOWN.try_with(|c| c.set(countdown));
            let _ = REMAINING.try_with(|r| r.set(remaining));
        }
    }
    let _restore = Restore {
        own: OWN_THREAD.try_with(|o| o.replace(true)).unwrap_or(false),
        countdown: COUNTDOWN.try_with(|c| c.get()).unwrap_or(0),
        remaining: REMAINING.try_with(|r| r.get()).unwrap_or(0),
        state: SHARED.state.load(Ordering::Relaxed),
    };
    f()
}

/// After a fork, in the child (on its one thread): a fresh random state, and a fresh distance
/// to the next sample at the next allocation. Without it every child of a process samples
/// the same allocations as its siblings and its parent (they inherit the forking thread's
/// generator and countdown), and profiles merged from many workers carry correlated errors.
pub(super) fn reseed_after_fork() {
    let _ = RNG.try_with(|r| r.set(0));
    // No `Shared::state` is `u64::MAX`: the next allocation draws afresh (see `maybe_sample`).
    let _ = EPOCH.try_with(|e| e.set(u64::MAX));
    let _ = COUNTDOWN.try_with(|c| c.set(0));
    let _ = REMAINING.try_with(|r| r.set(0));
}

/// Tests of `profile::fork`: holds the control lock, inside a table update (until
/// [`leave_for_test`]).
#[cfg(test)]
pub(super) fn hold_for_test() -> std::sync::MutexGuard<'static, ()> {
    let g = control();
    assert!(enter());
    g
}

#[cfg(test)]
pub(super) fn leave_for_test() {
    exit();
}

/// In a forked child: are the control lock free and no table update in flight?
#[cfg(test)]
pub(super) fn free_in_child_for_test() -> bool {
    CONTROL.try_lock().is_ok() && IN_FLIGHT.load(Ordering::SeqCst) == 0
}

/// Bumps the epoch, setting the enabled bit to `on`. The calling thread sees the change at its
/// next allocation; other threads within [`NOTICE`] bytes of theirs.
fn bump(on: bool) {
    let g = SHARED.state.load(Ordering::Relaxed);
    let next = ((g >> 1).wrapping_add(1) << 1) | on as u64;
    SHARED.state.store(next, Ordering::SeqCst);
    renotice();
}

fn install_classifier(c: Classifier) {
    let p = Box::into_raw(Box::new(c));
    // The previous classifier is leaked on purpose: an allocator call may still be using it.
    SHARED.classifier.store(p, Ordering::Release);
}

/// Starts sampling with a mean of `rate` bytes between samples ([`DEFAULT_RATE`] is Go's; 1
/// samples every allocation; 0 samples nothing). The first call runs [`crate::init`] and builds
/// [`default_classifier`] (reads the loaded objects' symbol tables). Samples accumulate with
/// earlier ones until [`reset`]. Not for signal handlers.
pub fn start(rate: u64) {
    start_with_mode(rate, Mode::Hybrid);
}

/// [`start`] with a capture mode. [`Mode::Hybrid`] (what [`start`] uses) follows frame records
/// where a function keeps them and the prepared CFI of the loaded modules elsewhere (libc, the
/// precompiled std, a program built without frame pointers, where a frame-record walk finds
/// nothing); [`Mode::FramePointer`] only follows frame records (fastest). The CFI is prepared
/// here, and again by a sample that finds, at most every 100 ms, that a library was loaded or
/// unloaded ([`crate::module_watch::poll`]: no watcher thread, so that starting the profiler
/// does not turn a single-threaded program's `malloc` multi-threaded). The capture itself only
/// loads the tables through an atomic pointer.
pub fn start_with_mode(rate: u64, mode: Mode) {
    set_mode(mode);
    start_inner(rate);
}

/// Sets the capture mode of sampled allocations (see [`start_with_mode`]).
pub fn set_mode(mode: Mode) {
    let _g = control();
    SHARED.mode.store(
        match mode {
            Mode::FramePointer => 0,
            Mode::Dwarf => 1,
            Mode::Hybrid => 2,
        },
        Ordering::Relaxed,
    );
    if is_running() {
        watch_modules();
    }
}

/// Makes sure the loaded modules' CFI is prepared and kept current while sampling in a CFI mode.
fn watch_modules() {
    if SHARED.mode.load(Ordering::Relaxed) != 0 && !WATCHING.swap(true, Ordering::SeqCst) {
        // Polled from the sampling path: no thread of its own (see `module_watch`).
        crate::module_watch::acquire_polled();
    }
}

/// Says once, on standard error, that nothing will be sampled when [`Sampling`] is not the
/// global allocator ([`is_installed`]).
fn warn_unless_installed() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !is_installed() && !WARNED.swap(true, Ordering::Relaxed) {
        eprintln!(
            "unwind: warning: heap::start: unwind::heap::Sampling is not the global allocator \
             (#[global_allocator]): no allocation will be sampled"
        );
    }
}

fn start_inner(rate: u64) {
    unsampled(|| start_unsampled(rate))
}

fn start_unsampled(rate: u64) {
    warn_unless_installed();
    check_proc();
    super::fork::register();
    let _g = control();
    if UNLOADS_AT.load(Ordering::Relaxed) == u32::MAX {
        UNLOADS_AT.store(crate::module_watch::unloads(), Ordering::Relaxed);
    }
    // The shared line's address escapes here, so the optimiser keeps `SHARED` whole (one line)
    // instead of splitting its fields into separate globals.
    core::hint::black_box(&SHARED);
    watch_modules();
    crate::init();
    crate::system_stack::register_transition();
    if SHARED.classifier.load(Ordering::Acquire).is_null() {
        install_classifier(default_classifier());
    }
    set_rate_locked(rate);
    bump(true);
}

/// [`start`] with a classifier of your own (runtime ranges, system switches): it replaces the
/// current one (the old one is leaked, as allocator calls may still read it).
pub fn start_with_classifier(rate: u64, classifier: Classifier) {
    unsampled(|| start_with_classifier_unsampled(rate, classifier))
}

fn start_with_classifier_unsampled(rate: u64, classifier: Classifier) {
    warn_unless_installed();
    check_proc();
    super::fork::register();
    let _g = control();
    if UNLOADS_AT.load(Ordering::Relaxed) == u32::MAX {
        UNLOADS_AT.store(crate::module_watch::unloads(), Ordering::Relaxed);
    }
    watch_modules();
    crate::init();
    crate::system_stack::register_transition();
    install_classifier(classifier);
    set_rate_locked(rate);
    bump(true);
}

/// Stops sampling new allocations. Frees of sampled blocks are still tracked.
pub fn stop() {
    let _g = control();
    bump(false);
    if WATCHING.swap(false, Ordering::SeqCst) {
        crate::module_watch::release_polled();
    }
}

/// Is sampling on?
pub fn is_running() -> bool {
    SHARED.state.load(Ordering::Relaxed) & 1 == 1
}

/// Changes the sampling rate (bytes; see [`start`]). The calling thread redraws its countdown
/// at its next allocation, every other thread within 4 MiB of its own allocations.
/// Samples already taken keep the weight of the rate they were taken at.
pub fn set_rate(rate: u64) {
    let _g = control();
    set_rate_locked(rate);
    bump(is_running());
}

/// The current sampling rate in bytes.
pub fn rate() -> u64 {
    rate_and_generation().0
}

/// Forgets every sample, every tracked block and the statistics. Waits (briefly) for allocator
/// calls inside a table update to leave it; sampled allocations and frees meanwhile are not
/// recorded. Frees of blocks sampled before the reset are not counted afterwards.
pub fn reset() {
    let _g = control();
    RESETTING.store(true, Ordering::SeqCst);
    let mut spins = 0u32;
    while IN_FLIGHT.load(Ordering::SeqCst) != 0 {
        spins += 1;
        if spins < 100 {
            core::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    for lv in (0..MAP_LEVELS).filter_map(|k| Level::get(k, false)) {
        for e in lv.buckets.iter().flat_map(|b| &b.0) {
            e[0].store(0, Ordering::Relaxed);
            e[1].store(0, Ordering::Relaxed);
        }
        for o in lv.overflow.iter().chain(lv.spill) {
            o.store(0, Ordering::Relaxed);
        }
    }
    for f in FILTER.iter().chain(REGIONS.iter()) {
        f.store(0, Ordering::Relaxed);
    }
    // Every slot claimed since the last reset (published or not), then the index: slot ids
    // start again at 0, in the chunks already mapped.
    for (_, s) in slots() {
        for a in [
            &s.alloc_objects,
            &s.alloc_bytes,
            &s.free_objects,
            &s.free_bytes,
            &s.est_alloc_objects,
            &s.est_alloc_bytes,
            &s.est_free_objects,
            &s.est_free_bytes,
            &s.hash,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        s.cut.store(false, Ordering::Relaxed);
        s.len.store(0, Ordering::Relaxed);
        s.state.store(EMPTY, Ordering::Relaxed);
    }
    CLAIMED.store(0, Ordering::Relaxed);
    for e in INDEX.iter() {
        e.store(0, Ordering::Relaxed);
    }
    for a in DROPPED_ALLOCS.iter().chain([
        &STATS_DROPPED_STACKS,
        &STATS_DROPPED_RESET,
        &STATS_UNTRACKED,
        &STATS_TRUNCATED,
        &STATS_STOPPED_EARLY,
        &STATS_REENTRANT,
    ]) {
        a.store(0, Ordering::Relaxed);
    }
    UNLOADS_AT.store(crate::module_watch::unloads(), Ordering::Relaxed);
    RESETS.fetch_add(1, Ordering::SeqCst);
    RESETTING.store(false, Ordering::SeqCst);
}

/// What the profiler did and dropped since the last [`reset`].
pub fn stats() -> Stats {
    Stats {
        // Each sample adds one to its slot's count: the sum is the count of samples (and
        // without a counter of its own, one locked instruction less per sample).
        samples: slots()
            .map(|(_, s)| s.alloc_objects.load(Ordering::Relaxed))
            .sum(),
        dropped_stacks: STATS_DROPPED_STACKS.load(Ordering::Relaxed),
        dropped_reset: STATS_DROPPED_RESET.load(Ordering::Relaxed),
        untracked: STATS_UNTRACKED.load(Ordering::Relaxed),
        truncated: STATS_TRUNCATED.load(Ordering::Relaxed),
        stopped_early: STATS_STOPPED_EARLY.load(Ordering::Relaxed),
        unloaded: unloaded(),
        reentrant: STATS_REENTRANT.load(Ordering::Relaxed),
        missing_frame_records: crate::module_watch::program_keeps_frame_records() == Some(false),
        stacks: slots()
            .filter(|(_, s)| s.state.load(Ordering::Relaxed) == READY)
            .count(),
        tracked: (0..MAP_LEVELS)
            .filter_map(|k| Level::get(k, false))
            .flat_map(|lv| lv.buckets.iter().flat_map(|b| &b.0))
            .filter(|e| e[0].load(Ordering::Relaxed) != 0)
            .count(),
    }
}

/// Go's `scaleHeapSample`: estimates unsampled totals from sampled `count` allocations of
/// `size` bytes in all, at `rate`, from their average size (exact when they all have that
/// size; [`snapshot`] weights each sample by its own size instead).
pub fn scale(count: i64, size: i64, rate: u64) -> (i64, i64) {
    if count <= 0 || size <= 0 {
        return (0, 0);
    }
    if rate <= 1 {
        return (count, size);
    }
    let avg = size as f64 / count as f64;
    let s = 1.0 / (1.0 - (-avg / rate as f64).exp());
    ((count as f64 * s) as i64, (size as f64 * s) as i64)
}

/// The profile: one entry per distinct stack with any allocation since the last [`reset`],
/// values scaled to estimates of the unsampled totals like Go's (see the module docs), sorted
/// by `alloc_space`, largest first. Allocates; not for signal handlers.
pub fn snapshot() -> Vec<HeapSample> {
    collect(true)
}

/// `samples` (from [`snapshot`] or [`snapshot_raw`]) as a [`Profile`](crate::profile::Profile) with Go's heap profile
/// value types (`alloc_objects/count`, `alloc_space/bytes`, `inuse_objects/count`,
/// `inuse_space/bytes`; `go tool pprof` shows the last by default) and period `rate` bytes of
/// type `space/bytes`. Every address is a return address (`exact_leaf` false). Allocates.
pub fn to_profile(samples: &[HeapSample], rate: u64) -> crate::profile::Profile {
    unsampled(|| to_profile_unsampled(samples, rate))
}

fn to_profile_unsampled(samples: &[HeapSample], rate: u64) -> crate::profile::Profile {
    crate::module_watch::warn_once_frame_records_missing(SHARED.mode.load(Ordering::Relaxed) == 0);
    let dropped = STATS_DROPPED_STACKS.load(Ordering::Relaxed);
    if dropped > 0 && !WARNED_DROPPED.swap(true, Ordering::Relaxed) {
        eprintln!(
            "unwind: warning: {dropped} heap samples' stacks did not fit the profiler's table \
             of {STACK_SLOTS} stacks: their allocations are counted under one stackless \
             [truncated] sample (heap::reset empties the table)"
        );
    }
    let untracked = STATS_UNTRACKED.load(Ordering::Relaxed);
    if untracked > 0 && !WARNED_UNTRACKED.swap(true, Ordering::Relaxed) {
        // Found by outside use in the twenty-fifth round: in-use bytes short by a sixth with
        // no word (10 million live blocks sampled at rate 1).
        eprintln!(
            "unwind: warning: {untracked} sampled blocks did not fit the profiler's table of \
             live blocks: each was counted as freed at once, so in-use objects and bytes are \
             low (a lower sampling rate, or heap::reset, makes room)"
        );
    }
    crate::module_watch::warn_unloaded(unloaded());
    let w = warnings();
    if !w.is_empty() && !WARNED_PROC.swap(true, Ordering::Relaxed) {
        for w in w {
            eprintln!("unwind: warning: {w}");
        }
    }
    let mut p = crate::profile::Profile::new(
        vec![
            ("alloc_objects".into(), "count".into()),
            ("alloc_space".into(), "bytes".into()),
            ("inuse_objects".into(), "count".into()),
            ("inuse_space".into(), "bytes".into()),
        ],
        ("space".into(), "bytes".into()),
        rate.min(i64::MAX as u64) as i64,
    );
    p.hidden_leaf_inlines = Some(is_runtime_inline);
    for s in samples {
        p.samples.push(crate::profile::Sample {
            pcs: s.pcs.clone(),
            exact_leaf: false,
            exact_frames: Vec::new(),
            values: vec![
                s.alloc_objects,
                s.alloc_space,
                s.inuse_objects,
                s.inuse_space,
            ],
            labels: Vec::new(),
            truncated: s.truncated,
        });
    }
    p.merge_identical();
    p
}

/// The errno of `/proc/self` found unreadable at the last start (0: it was readable), for
/// [`warnings`].
static PROC_UNREADABLE: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(0);

/// Looks, once per start (one `readlink`), whether `/proc/self` can be read.
fn check_proc() {
    let e = match crate::threads::proc_problem() {
        Some(crate::threads::ProcProblem::Unreadable(e)) => e.max(1),
        // Another PID namespace's /proc still shows this process's memory map.
        _ => 0,
    };
    PROC_UNREADABLE.store(e, Ordering::Relaxed);
}

/// What a heap profile's reader should know that it does not show, one line each (what
/// [`to_profile`] prints on standard error, once per process): `/proc/self` could not be read
/// when the profiler last started (`/proc` not mounted): samples' stacks may stop at their
/// first frames (a thread's stack bounds come from `/proc/self/maps`) and
/// [`crate::symbols::Symbolizer::for_current_process`] names no function.
pub fn warnings() -> Vec<String> {
    let mut w = Vec::new();
    let e = PROC_UNREADABLE.load(Ordering::Relaxed);
    if e != 0 {
        w.push(format!(
            "{}: heap samples' stacks may stop at their first frames (a thread's stack bounds \
             are read from /proc/self/maps) and Symbolizer::for_current_process names no \
             function (it reads /proc/self/maps); mount /proc",
            crate::threads::ProcProblem::Unreadable(e)
        ));
    }
    w
}

/// Has [`to_profile`] printed [`warnings`] (once per process)?
static WARNED_PROC: AtomicBool = AtomicBool::new(false);

/// Has [`to_profile`] said that stacks were dropped (once per process)?
static WARNED_DROPPED: AtomicBool = AtomicBool::new(false);
/// Has the untracked blocks' warning been printed?
static WARNED_UNTRACKED: AtomicBool = AtomicBool::new(false);

/// [`snapshot`] without scaling: the sampled counts and bytes themselves.
pub fn snapshot_raw() -> Vec<HeapSample> {
    collect(false)
}

fn collect(scaled: bool) -> Vec<HeapSample> {
    // The control lock, as the module docs promise: a `reset` cannot empty a slot between the
    // loads of its state, counts and frames below.
    let _g = control();
    // This thread's own allocations here are not sampled.
    let was = BUSY.with(|b| b.replace(true));
    let mut by_stack: HashMap<Vec<u64>, ([u64; 8], bool)> = HashMap::new();
    for (_, s) in slots() {
        if s.state.load(Ordering::Acquire) != READY {
            continue;
        }
        // Frees first: they only grow, so this never shows more freed than allocated. Each
        // count before its bytes: the writers add the bytes first and the count with release,
        // so the bytes read include those of every counted block (a slot whose first
        // allocation is under way reads a count of 0 and is left out below; read the other way
        // round, a snapshot taken between the two adds showed 1 allocation of 0 bytes).
        let fo = s.free_objects.load(Ordering::Acquire);
        let fb = s.free_bytes.load(Ordering::Acquire);
        let ao = s.alloc_objects.load(Ordering::Acquire);
        let ab = s.alloc_bytes.load(Ordering::Acquire);
        if ao == 0 && fo == 0 {
            continue;
        }
        let n = (s.len.load(Ordering::Relaxed) as usize).min(MAX_FRAMES);
        let pcs: Vec<u64> = s.pcs[..n]
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        let est = [
            &s.est_alloc_objects,
            &s.est_alloc_bytes,
            &s.est_free_objects,
            &s.est_free_bytes,
        ]
        .map(|a| a.load(Ordering::Acquire));
        let (e, cut) = by_stack.entry(pcs).or_default();
        for (a, b) in e.iter_mut().zip([ao, ab, fo, fb].into_iter().chain(est)) {
            *a += b;
        }
        *cut |= s.cut.load(Ordering::Relaxed);
    }
    // The samples whose stacks did not fit the table: one stackless sample, cut, with what
    // they allocated (their frees are not tracked: none in use). A profile's totals were short
    // of them, and nothing in it said so (found by outside use in the twenty-third round: 6.2
    // of 145 GB shown once the table was full).
    let [ao, ab, eao, eab] = &DROPPED_ALLOCS;
    let dropped = ao.load(Ordering::Acquire);
    if dropped > 0 {
        let (e, cut) = by_stack.entry(Vec::new()).or_default();
        for (a, b) in e.iter_mut().zip([
            dropped,
            ab.load(Ordering::Acquire),
            0,
            0,
            eao.load(Ordering::Acquire),
            eab.load(Ordering::Acquire),
            0,
            0,
        ]) {
            *a += b;
        }
        *cut = true;
    }
    let mut out: Vec<HeapSample> = by_stack
        .into_iter()
        .map(|(pcs, ([ao, ab, fo, fb, eao, eab, efo, efb], cut))| {
            let ((ao, ab), (io, ib)) = if scaled {
                // Each sample weighted by its own size (`weight`), rounded to whole objects.
                let count = |q: u64| ((q + (1 << (WEIGHT_SHIFT - 1))) >> WEIGHT_SHIFT) as i64;
                (
                    (count(eao), eab as i64),
                    (
                        count(eao.saturating_sub(efo)),
                        eab.saturating_sub(efb) as i64,
                    ),
                )
            } else {
                let (ao, ab) = (ao as i64, ab as i64);
                ((ao, ab), ((ao - fo as i64).max(0), (ab - fb as i64).max(0)))
            };
            HeapSample {
                pcs,
                alloc_objects: ao,
                alloc_space: ab,
                inuse_objects: io,
                inuse_space: ib,
                truncated: cut,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.alloc_space
            .cmp(&a.alloc_space)
            .then_with(|| a.pcs.cmp(&b.pcs))
    });
    BUSY.with(|b| b.set(was));
    out
}

/// Is a (demangled) function name runtime code for a heap profile: `unwind`'s own machinery
/// ([`runtime_names::UNWIND`]) or allocation plumbing ([`runtime_names::RUST_ALLOC`],
/// [`runtime_names::RUST_ALLOC_INFIXES`])?
///
/// A trait impl of those traits is plumbing when its type is the standard library's (`<u8 as
/// alloc::vec::spec_from_elem::SpecFromElem>`, `<&mut I as core::iter::..::Iterator>`, a
/// slice, a tuple, a generic parameter), not when it is another crate's: the program's own
/// `Iterator`, `FromIterator` or `ToOwned` impl allocates for itself (found by outside use in
/// the twenty-fifth round: `<Words as Iterator>::next`'s strings were charged to its caller,
/// the impl left out of every stack).
pub fn is_runtime_name(name: &str) -> bool {
    runtime_names::has_prefix_in(name, &[runtime_names::UNWIND, runtime_names::RUST_ALLOC])
        || (runtime_names::RUST_ALLOC_INFIXES
            .iter()
            .any(|p| name.contains(p))
            && impl_type_is_std(name))
}

/// In `<T as Trait>::f`, is `T` the standard library's: a path in `alloc`, `core`, `std` or
/// `hashbrown`, or no path at all (a primitive, a slice, a tuple, a reference or pointer to
/// one of those, a generic parameter)? True for a name that is no such impl.
fn impl_type_is_std(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('<') else {
        return true;
    };
    // `T` ends at the first " as " outside brackets.
    let mut depth = 0i32;
    let mut end = None;
    for (i, c) in rest.char_indices() {
        match c {
            '<' | '[' | '(' => depth += 1,
            '>' | ']' | ')' => depth -= 1,
            ' ' if depth == 0 && rest[i..].starts_with(" as ") => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let Some(end) = end else {
        return true;
    };
    let mut ty = rest[..end].trim();
    loop {
        let t = ty
            .trim_start_matches(['&', '*'])
            .trim_start_matches("mut ")
            .trim_start_matches("const ")
            .trim_start_matches("dyn ")
            .trim_start();
        if t == ty {
            break;
        }
        ty = t;
    }
    if ty.starts_with(['[', '(']) || !ty.contains("::") {
        return true;
    }
    let krate = ty.split("::").next().unwrap_or("");
    matches!(krate, "alloc" | "core" | "std" | "hashbrown")
}

/// Is a source file the Rust standard library's allocation plumbing (what
/// [`is_runtime_name`] names by path): `library/alloc/`, `core`'s and `std`'s `alloc` and
/// `core`'s `iter` modules, `std::collections`, hashbrown, and this crate's allocator wrapper?
/// For inlined functions that DWARF
/// names without their path (`debug = "line-tables-only"`: `push_mut<u8, Global>`), in files
/// such as `/rustc/HASH/library/alloc/src/vec/mod.rs`.
pub fn is_runtime_source(file: &str) -> bool {
    const DIRS: [&str; 12] = [
        "/library/alloc/",
        "/library/core/src/alloc/",
        "/library/core/src/iter/",
        "/library/std/src/alloc",
        "/library/std/src/collections/",
        // Paths and OS strings (`PathBuf::push`, `Path::join`, `OsStr::to_owned`): found by
        // outside use in the twenty-fifth round at the head of a path-heavy program's
        // profile, in place of the function that joined the paths.
        "/library/std/src/path.rs",
        "/library/std/src/ffi/",
        "/library/std/src/sys/os_str/",
        "/library/std/src/sys_common/wtf8",
        // Formatting and the combinators `format!` is inlined through (see
        // `runtime_names::RUST_ALLOC`).
        "/library/core/src/fmt/",
        "/library/core/src/option.rs",
        "/library/core/src/result.rs",
    ];
    // This file: the [`Sampling`] wrapper's methods, inlined into the allocator shims.
    const THIS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/profile/heap.rs");
    ((file.starts_with("/rustc/") || file.contains("/rust/"))
        && DIRS.iter().any(|d| file.contains(d)))
        || file.contains("/hashbrown-")
        || file == THIS_FILE
}

/// Is an inlined function (its name and source file, from DWARF) runtime code for a heap
/// profile: named so ([`is_runtime_name`]), or named without its path (`debug =
/// "line-tables-only"`: `push_mut<u8, ...>`) in the standard library's allocation code
/// ([`is_runtime_source`])? The rule the heap profile hides leaf inlines by
/// ([`crate::profile::Profile::hidden_leaf_inlines`]).
pub fn is_runtime_inline(name: &str, file: &str) -> bool {
    let head = name.split('<').next().unwrap_or(name);
    is_runtime_name(name) || (!head.contains("::") && is_runtime_source(file))
}

/// The classifier [`start`] uses: functions of every loaded object named as
/// [`is_runtime_name`] says, and the system-stack switch (frames on its system side count as
/// runtime). Reads symbol tables: slow, allocates.
pub fn default_classifier() -> Classifier {
    let syms = crate::symbols::Symbolizer::for_current_process();
    let mut c = Classifier::new();
    let funcs = syms
        .modules()
        .iter()
        .flat_map(|m| m.functions())
        .filter(|(n, _, _)| is_runtime_name(n));
    c.add_symbol_prefixes(funcs, &[""]);
    crate::system_stack::register_transition();
    if let Some(id) = crate::system_stack::transition_id() {
        c.add_system_switch(id);
    }
    c
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn pack_round_trips() {
        assert_eq!(unpack(pack(4095, 123_456, 5)), (4095, 123_456, 5));
        assert_eq!(unpack(pack(7, u64::MAX, 7)), (7, (1 << SIZE_BITS) - 1, 7));
        assert_eq!(unpack(pack(STACK_SLOTS - 1, 1, 0)).0, STACK_SLOTS - 1);
    }

    #[test]
    fn scale_like_go() {
        assert_eq!(scale(0, 10, DEFAULT_RATE), (0, 0));
        assert_eq!(scale(3, 30, 1), (3, 30));
        // One sampled 512 KiB block at 512 KiB: probability 1 - 1/e, scale 1.582.
        let (c, s) = scale(1, 512 * 1024, DEFAULT_RATE);
        assert_eq!(c, 1);
        assert!((s as f64 / (512.0 * 1024.0) - 1.582).abs() < 0.001, "{s}");
        // Small objects: scaled by about rate / size.
        let (c, _) = scale(1000, 16_000, DEFAULT_RATE);
        assert!((c - 1000 * 32768).abs() < 1000 * 32768 / 1000, "{c}");
    }

    #[test]
    fn neg_ln_is_ln() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Every binade of (0, 1], and its ends.
            let u = match i {
                0 => 1.0,
                1 => 1.0 / (1u64 << 53) as f64,
                2 => core::f64::consts::FRAC_1_SQRT_2,
                _ => ((x >> 11) + 1) as f64 / (1u64 << 53) as f64 / (1u64 << (i % 53)) as f64,
            };
            let u = u.max(1.0 / (1u64 << 53) as f64);
            let err = (neg_ln(u) + u.ln()).abs();
            assert!(err <= 1e-10, "{u:e}: {} against {}", neg_ln(u), -u.ln());
        }
    }

    /// The countdown as the fast path sees it: it runs out below zero (not at zero), a charge
    /// made while it is out (a signal handler's allocation before the slow path took the first
    /// charge back) runs out too, and taking the charges back never leaves it negative.
    #[test]
    fn the_countdown_runs_out_below_zero_and_stays_out_until_taken_back() {
        // A fresh thread: this thread-local state is its own.
        std::thread::spawn(|| {
            let left = || COUNTDOWN.with(|c| c.get());
            set_distance(100);
            assert!(!runs_out(60));
            assert!(!runs_out(40));
            assert_eq!(left(), 0);
            // The allocation that takes it below zero runs out; undone, it is as before.
            assert!(runs_out(1));
            uncharge(1);
            assert_eq!(left(), 0);
            set_distance(30);
            assert!(runs_out(40));
            // A handler's allocation in between runs out too (its own slow path)...
            assert!(runs_out(24));
            // ...and its take-back leaves zero, not the first charge's negative count: the
            // handler's bytes counted against the distance.
            uncharge(24);
            assert_eq!(left(), 0);
            uncharge(40);
            assert_eq!(left(), 40);
            // The same interleaving, the handler's slow path having drawn a new distance.
            set_distance(10);
            assert!(runs_out(40));
            assert!(runs_out(24));
            uncharge(24);
            set_distance(1000);
            uncharge(40);
            assert_eq!(left(), 1040);
            assert!(!runs_out(40));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn draw_has_the_right_mean() {
        let n = 200_000;
        let sum: f64 = (0..n).map(|_| draw(1000) as f64).sum();
        let mean = sum / n as f64;
        // Standard error of the mean: 1000 / sqrt(n) ~ 2.2.
        assert!((mean - 1000.0).abs() < 20.0, "{mean}");
        assert_eq!(draw(1), 0);
        assert_eq!(draw(0), u64::MAX);
    }

    /// Serialises the tests that use the heap profiler's global state (the fork test too:
    /// a `reset` waits for the table update that test holds).
    pub(crate) static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn map_buckets_overflow_and_stay_short_without_tombstones() {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        reset();
        // Addresses that all share one home bucket, found by search.
        let home = map_home(0x1000);
        let window = MAP_PROBE_BUCKETS * MAP_BUCKET_ENTRIES;
        let all: Vec<u64> = (0..)
            .map(|i| 0x1000 + i * 16)
            .filter(|&a| map_home(a) == home)
            .take(window + 1)
            .collect();
        assert_eq!(lookup_buckets(all[0]), 1);
        for (i, &a) in all[..window].iter().enumerate() {
            assert!(map_insert(a, pack(i, 10 + i as u64, 0)), "{i}");
            assert!(may_be_tracked(a));
        }
        let l0 = Level::get(0, false).unwrap();
        // Every bucket of the window but the last overflowed; a miss walks all of them.
        assert!((0..MAP_PROBE_BUCKETS - 1).all(|j| l0.overflowed(l0.bucket(all[0], j))));
        assert_eq!(lookup_buckets(all[window]), MAP_PROBE_BUCKETS);
        assert!(!l0.spilled(l0.bucket(all[0], 0)));
        // The window is full: the next colliding address goes to the next level, and its home
        // bucket says so.
        assert!(map_insert(all[window], pack(0, 1, 0)));
        assert!(l0.spilled(l0.bucket(all[0], 0)));
        assert!(l0.find(all[window]).is_none());
        assert!(Level::get(1, false).unwrap().find(all[window]).is_some());
        assert_eq!(stats().tracked, window + 1);
        assert_eq!(map_remove(all[window]), Some(pack(0, 1, 0)));
        // Remove entries in the home bucket and in the middle: the others are still found,
        // the emptied entries are reused, and a second removal finds nothing.
        assert_eq!(map_remove(all[1]), Some(pack(1, 11, 0)));
        assert_eq!(map_remove(all[1]), None);
        assert_eq!(map_remove(all[40]), Some(pack(40, 50, 0)));
        assert!(map_insert(all[window], pack(1, 2, 0)));
        assert!(l0.find(all[window]).is_some(), "a freed entry is reused");
        assert_eq!(map_remove(all[window]), Some(pack(1, 2, 0)));
        // A stale entry (a free not seen) is taken over, its old value accounted as freed.
        assert!(map_insert(all[50], pack(2, 3, 0)));
        assert_eq!(map_remove(all[50]), Some(pack(2, 3, 0)));
        for (i, &a) in all[..window].iter().enumerate() {
            if i != 1 && i != 40 && i != 50 {
                assert_eq!(map_remove(a), Some(pack(i, 10 + i as u64, 0)), "{i}");
            }
        }
        assert!(all.iter().all(|&a| !may_be_tracked(a)));
        assert_eq!(stats().tracked, 0);
        assert_eq!(map_remove(0), None);
        assert!(!map_insert(0, 0));
        // A reset clears the overflow and spill marks.
        reset();
        assert_eq!(lookup_buckets(all[window]), 1);
        assert!(!l0.spilled(l0.bucket(all[0], 0)));
    }

    /// How many buckets of the first level a lookup of `addr` reads.
    fn lookup_buckets(addr: u64) -> usize {
        let l0 = Level::get(0, false).unwrap();
        (0..MAP_PROBE_BUCKETS)
            .position(|j| !l0.overflowed(l0.bucket(addr, j)))
            .map_or(MAP_PROBE_BUCKETS, |j| j + 1)
    }

    #[test]
    fn the_live_map_grows_by_levels_past_its_first_table() {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        reset();
        // 300 000 blocks tracked at once, more than four times the first level (the map used
        // to hold 65 536 and count the rest as freed at once).
        let addrs: Vec<u64> = (0..300_000u64).map(|i| 0x6000_0000_0000 + i * 48).collect();
        for (i, &a) in addrs.iter().enumerate() {
            assert!(map_insert(a, pack(i % 7, i as u64 + 1, 0)), "{i}");
        }
        assert_eq!(stats().tracked, addrs.len());
        assert!(Level::get(1, false).is_some() && Level::get(2, false).is_some());
        // Every block is found wherever it went, once; a stale one in a deeper level is taken
        // over, not duplicated.
        let deep = *addrs
            .iter()
            .find(|&&a| Level::get(0, false).unwrap().find(a).is_none())
            .unwrap();
        assert!(map_insert(deep, pack(3, 5, 0)));
        assert_eq!(stats().tracked, addrs.len());
        for (i, &a) in addrs.iter().enumerate() {
            let want = if a == deep {
                pack(3, 5, 0)
            } else {
                pack(i % 7, i as u64 + 1, 0)
            };
            assert_eq!(map_remove(a), Some(want), "{i}");
            assert_eq!(map_remove(a), None, "{i}");
        }
        assert_eq!(stats().tracked, 0);
        // A reset empties every level (they stay mapped) and the marks.
        assert!(map_insert(addrs[0], pack(0, 1, 0)));
        reset();
        assert_eq!(stats().tracked, 0);
        assert_eq!(map_remove(addrs[0]), None);
    }

    #[test]
    fn a_long_churn_of_blocks_keeps_lookups_one_bucket_long() {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        reset();
        // A long-running program's sampled blocks: 400000 come and go at varied addresses,
        // 2000 live at a time (each map entry is used ~6 times over). With tombstones, lookups
        // came to read ~60 entries (16 lines) by the end.
        let mut x = 0x1234_5678u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            0x5500_0000_0000 + (x & 0xff_ffff_fff0)
        };
        let mut live = std::collections::VecDeque::new();
        for _ in 0..400_000 {
            let a = next();
            if map_insert(a, pack(0, 1, 0)) {
                live.push_back(a);
            }
            if live.len() > 2000 {
                let b = live.pop_front().unwrap();
                assert!(map_remove(b).is_some());
            }
        }
        assert_eq!(stats().tracked, live.len());
        let probes: Vec<usize> = (0..10_000).map(|_| lookup_buckets(next())).collect();
        let mean = probes.iter().sum::<usize>() as f64 / probes.len() as f64;
        assert!(mean < 1.05, "a lookup reads {mean} buckets on average");
        for b in live {
            assert!(map_remove(b).is_some());
        }
        assert_eq!(stats().tracked, 0);
        reset();
    }

    #[test]
    fn filter_counters_saturate_and_stay_sound() {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        reset();
        // 300 addresses on one counter (one 512 KiB window apart each): more than a counter
        // holds.
        let step = 1u64 << (FILTER_BITS + 4);
        let same: Vec<u64> = (1..)
            .map(|i| 0x7f00_0000_0010 + i * step)
            .filter(|&a| filter_index(a) == filter_index(0x7f00_0000_0010))
            .take(300)
            .collect();
        assert_eq!(same.len(), 300);
        for (i, &a) in same.iter().enumerate() {
            assert!(map_insert(a, pack(0, i as u64 + 1, 0)), "{i}");
        }
        assert_eq!(
            FILTER[filter_index(same[0])].load(Ordering::Relaxed),
            FILTER_STUCK
        );
        // Every free still finds its entry; the stuck counter stays (false positives only).
        for (i, &a) in same.iter().enumerate() {
            assert!(may_be_tracked(a));
            assert_eq!(map_remove(a), Some(pack(0, i as u64 + 1, 0)), "{i}");
        }
        assert_eq!(
            FILTER[filter_index(same[0])].load(Ordering::Relaxed),
            FILTER_STUCK
        );
        // These addresses are 2^34 apart: they share a region counter too, stuck as well.
        assert_eq!(
            REGIONS[region_index(same[0])].load(Ordering::Relaxed),
            FILTER_STUCK
        );
        assert!(may_be_tracked(same[0]));
        assert_eq!(map_remove(same[0]), None);
        // Neighbours in one window use different counters: a free there does not look.
        assert_ne!(filter_index(0x1000), filter_index(0x1010));
        reset();
        assert!(!may_be_tracked(same[0]));
    }

    #[test]
    fn region_filter_stops_frees_in_regions_without_tracked_blocks() {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        reset();
        let a = 0x5555_0000_1000u64;
        assert!(map_insert(a, pack(0, 8, 0)));
        assert!(may_be_tracked(a));
        // Same filter counter, another region: the region filter answers.
        let far = (1..)
            .map(|k| a + k * 16)
            .find(|&b| filter_index(b) == filter_index(a) && region_index(b) != region_index(a))
            .unwrap();
        assert!(!may_be_tracked(far));
        // Same region, another filter counter: the second filter answers.
        assert_eq!(region_index(a + 16), region_index(a));
        assert!(!may_be_tracked(a + 16));
        // 300 tracked blocks in one region: its counter sticks, every free still finds its
        // entry, and the region keeps sending frees on to the second filter.
        let d = 0x5555_0100_0000u64;
        let dense: Vec<u64> = (0..300).map(|i| d + 8 * i).collect();
        assert!(dense.iter().all(|&b| region_index(b) == region_index(d)));
        for (i, &b) in dense.iter().enumerate() {
            assert!(map_insert(b, pack(1, i as u64 + 1, 0)), "{i}");
        }
        assert_eq!(
            REGIONS[region_index(d)].load(Ordering::Relaxed),
            FILTER_STUCK
        );
        for (i, &b) in dense.iter().enumerate() {
            assert!(may_be_tracked(b));
            assert_eq!(map_remove(b), Some(pack(1, i as u64 + 1, 0)), "{i}");
        }
        assert_eq!(
            REGIONS[region_index(d)].load(Ordering::Relaxed),
            FILTER_STUCK
        );
        assert!(!may_be_tracked(d), "its filter counter is back to zero");
        assert_eq!(map_remove(a), Some(pack(0, 8, 0)));
        assert!(!may_be_tracked(a));
        reset();
        assert_eq!(REGIONS[region_index(d)].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_stack_table_grows_by_chunks_to_its_capacity() {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        reset();
        let f = |i: u64| -> Vec<Frame> {
            [0x40_1000 + i, 0x40_2000 + i / 7, 0x40_3000]
                .iter()
                .map(|&pc| Frame { pc, ..Frame::EMPTY })
                .collect()
        };
        // Every stack gets a slot of its own, far beyond one chunk (the table used to hold
        // 4096 stacks and dropped every sample of a new stack after that).
        let ids: Vec<usize> = (0..STACK_SLOTS as u64)
            .map(|i| stack_slot(&f(i)).expect("a slot"))
            .collect();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), STACK_SLOTS);
        assert!(CHUNKS.iter().all(|c| !c.load(Ordering::Relaxed).is_null()));
        // Full: a new stack has no slot; known stacks are still found, in any chunk.
        assert_eq!(stack_slot(&f(STACK_SLOTS as u64)), None);
        for i in [0, 1, 4095, 4096, 70_000, STACK_SLOTS as u64 - 1] {
            assert_eq!(stack_slot(&f(i)), Some(ids[i as usize]), "{i}");
        }
        assert_eq!(stats().stacks, STACK_SLOTS);
        account_free(pack(ids[100_000], 8, 0));
        assert_eq!(
            slot(ids[100_000])
                .unwrap()
                .free_bytes
                .load(Ordering::Relaxed),
            8
        );
        // A reset empties it, and ids start again in the chunks already mapped.
        reset();
        assert_eq!(stats().stacks, 0);
        assert_eq!(stack_slot(&f(5)), Some(0));
        assert_eq!(slot(0).unwrap().free_bytes.load(Ordering::Relaxed), 0);
        reset();
    }

    #[test]
    fn stack_slots_dedupe_and_account() {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        reset();
        let f = |pcs: &[u64]| -> Vec<Frame> {
            pcs.iter().map(|&pc| Frame { pc, ..Frame::EMPTY }).collect()
        };
        let a = stack_slot(&f(&[1, 2, 3])).unwrap();
        let b = stack_slot(&f(&[1, 2, 4])).unwrap();
        assert_ne!(a, b);
        assert_eq!(stack_slot(&f(&[1, 2, 3])), Some(a));
        let long: Vec<u64> = (0..200).collect();
        let c = stack_slot(&f(&long)).unwrap();
        assert_eq!(stack_slot(&f(&long[..MAX_FRAMES])), Some(c));
        slot(a)
            .unwrap()
            .alloc_objects
            .fetch_add(2, Ordering::Relaxed);
        slot(a)
            .unwrap()
            .alloc_bytes
            .fetch_add(300, Ordering::Relaxed);
        account_free(pack(a, 100, 0));
        let p = snapshot_raw();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].pcs.as_slice(), p[0].alloc_objects, p[0].alloc_space),
            (&[1u64, 2, 3][..], 2, 300)
        );
        assert_eq!((p[0].inuse_objects, p[0].inuse_space), (1, 200));
        assert_eq!(stats().stacks, 3);
        reset();
        assert!(snapshot_raw().is_empty());
        assert_eq!(stats().stacks, 0);
    }

    /// Records a sample of 100 bytes at `addr`.
    #[inline(never)]
    fn record_here(addr: u64) {
        record(addr, 100);
        core::hint::black_box(());
    }

    /// Records a sample of 10 bytes at `addr`, from another function.
    #[inline(never)]
    fn record_elsewhere(addr: u64) {
        record(addr, 10);
        core::hint::black_box(());
    }

    enum Op {
        Here(u64),
        Elsewhere(u64),
        Reset,
        Snapshot,
    }

    /// Runs `ops` with one call site for each kind of sample (so one stack each), and gives
    /// each snapshot's samples as `(alloc_objects, alloc_space, inuse_objects)`.
    #[inline(never)]
    fn drive(ops: &[Op]) -> Vec<Vec<(i64, i64, i64)>> {
        let mut out = Vec::new();
        for op in core::hint::black_box(ops) {
            match *op {
                Op::Here(a) => record_here(a),
                Op::Elsewhere(a) => record_elsewhere(a),
                Op::Reset => reset(),
                Op::Snapshot => {
                    let mut v: Vec<_> = snapshot_raw()
                        .iter()
                        .map(|s| (s.alloc_objects, s.alloc_space, s.inuse_objects))
                        .collect();
                    v.sort();
                    out.push(v);
                }
            }
        }
        out
    }

    /// [`one_minus_exp_neg`] against libm's `expm1` from 1/1024 to past 40, at random
    /// points and at the edges of its two methods.
    #[test]
    fn one_minus_exp_neg_is_libm_s_expm1() {
        let mut rng = crate::memory::Rng(0x0e_4d1f);
        let mut xs = vec![
            1.0 / 1024.0,
            0.5,
            1.0 - 1e-12,
            1.0,
            1.0 + 1e-12,
            2.0,
            39.999,
            40.0,
        ];
        xs.extend((0..20_000).map(|_| {
            // Spread over the exponents: 2^-10 .. 2^6.
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
            (2f64).powf(-10.0 + 16.0 * u)
        }));
        for x in xs {
            let want = -(-x).exp_m1();
            let got = one_minus_exp_neg(x);
            assert!((got - want).abs() <= want * 1e-14, "{x}: {got} vs {want}");
        }
        assert_eq!(one_minus_exp_neg(1e6), 1.0);
        assert_eq!(one_minus_exp_neg(f64::INFINITY), 1.0);
    }

    #[test]
    fn to_count_truncates_and_saturates() {
        assert_eq!(to_count(0.0), 0);
        assert_eq!(to_count(0.99), 0);
        assert_eq!(to_count(12345.7), 12345);
        let below = f64::from_bits((2f64).powi(63).to_bits() - 1);
        assert_eq!(to_count(below), below as u64);
        for v in [(2f64).powi(63), 1e300, f64::INFINITY, f64::NAN, -1.0, -0.0] {
            assert_eq!(to_count(v), i64::MAX as u64, "{v}");
        }
    }

    /// [`small_weight`] against libm's `expm1` over its whole range, at random points and at
    /// its edges.
    #[test]
    fn small_weight_is_libm_s() {
        let mut rng = crate::memory::Rng(0x5a_11);
        let mut xs = vec![
            1e-300,
            1e-18,
            1.0 / (1u64 << 40) as f64,
            1.0 / 1024.0,
            0.25,
            0.5 - 1e-12,
        ];
        xs.extend((0..20_000).map(|_| {
            // Spread over the exponents: 2^-40 .. 2^-1.
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
            (2f64).powf(-40.0 + 39.0 * u)
        }));
        for x in xs {
            let want = -1.0 / (-x).exp_m1();
            let got = small_weight(x);
            assert!((got - want).abs() <= want * 1e-14, "{x}: {got} vs {want}");
        }
    }

    #[test]
    fn weight_is_one_over_the_sampling_probability() {
        let r = DEFAULT_RATE;
        for size in (0..40)
            .map(|k| 1u64 << k)
            .chain([511, 512, 513, 4000, r - 1, r])
        {
            let x = size as f64 / r as f64;
            let want = -1.0 / (-x).exp_m1();
            let got = weight(size, r);
            assert!(
                (got - want).abs() <= want * 1e-12,
                "{size}: {got} vs {want}"
            );
        }
        assert_eq!(weight(100, 1), 1.0);
        assert_eq!(weight(0, r), 1.0);
    }

    /// Records a sample of `size` bytes at `addr`, always from this call site.
    #[inline(never)]
    fn record_sized(addr: u64, size: u64) {
        record(addr, size);
        core::hint::black_box(());
    }

    /// Two children of one fork reseed on their own: their next draws differ (and differ from
    /// the parent's).
    #[test]
    fn forked_children_draw_on_their_own() {
        let parent_first = next_random();
        let child = || {
            let mut fds = [0; 2];
            // SAFETY: a pipe for the child's answer; fork; the child writes and `_exit`s.
            unsafe {
                assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
                let pid = libc::fork();
                assert!(pid >= 0);
                if pid == 0 {
                    reseed_after_fork();
                    let v = next_random().to_le_bytes();
                    libc::write(fds[1], v.as_ptr().cast(), 8);
                    libc::_exit(0);
                }
                let mut v = [0u8; 8];
                assert_eq!(libc::read(fds[0], v.as_mut_ptr().cast(), 8), 8);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
                libc::close(fds[0]);
                libc::close(fds[1]);
                u64::from_le_bytes(v)
            }
        };
        let (a, b) = (child(), child());
        assert_ne!(a, b, "two children drew the same");
        assert_ne!(a, parent_first);
    }

    #[test]
    fn each_sample_is_weighted_by_its_own_size() {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        reset();
        let r = rate();
        assert_eq!(r, DEFAULT_RATE);
        // 1 / P(a block of `size` bytes is sampled), computed plainly.
        let w = |size: u64| 1.0 / (1.0 - (-(size as f64) / r as f64).exp());
        // One stack that allocates small and large blocks (a `collect()` of boxes and its
        // vector's buffer): 32 sampled 16-byte blocks and one 8 MiB block.
        let base = 0x7f00_beef_0000u64;
        let big = base + 0x10_0000;
        let blocks = (0..32).map(|i| (base + i * 64, 16)).chain([(big, 8 << 20)]);
        for (addr, size) in blocks {
            record_sized(addr, size);
        }
        let p = snapshot();
        assert_eq!(p.len(), 1, "one stack");
        let objects = 32.0 * w(16) + w(8 << 20);
        let bytes = 32.0 * w(16) * 16.0 + w(8 << 20) * (8 << 20) as f64;
        let near = |got: i64, want: f64| (got as f64 - want).abs() <= want * 1e-4 + 1.0;
        assert!(
            near(p[0].alloc_objects, objects),
            "{} vs {objects}",
            p[0].alloc_objects
        );
        assert!(
            near(p[0].alloc_space, bytes),
            "{} vs {bytes}",
            p[0].alloc_space
        );
        // The average size would have counted ~86 objects.
        assert!(p[0].alloc_objects > 1_000_000);
        // The raw values are the samples themselves.
        let raw = snapshot_raw();
        assert_eq!((raw[0].alloc_objects, raw[0].inuse_objects), (33, 33));
        // Freeing the large block leaves the small ones in use.
        untrack(big);
        let p = snapshot();
        assert!(
            near(p[0].inuse_objects, 32.0 * w(16)),
            "{}",
            p[0].inuse_objects
        );
        assert!(
            near(p[0].inuse_space, 32.0 * w(16) * 16.0),
            "{}",
            p[0].inuse_space
        );
        assert!(!p[0].truncated);
        reset();
    }

    /// Recurses `depth` frames, then records a sample.
    #[inline(never)]
    fn record_deep(depth: u32, addr: u64) {
        if depth == 0 {
            record(addr, 100);
        } else {
            record_deep(core::hint::black_box(depth - 1), addr);
        }
        core::hint::black_box(depth);
    }

    #[test]
    fn a_stack_cut_at_the_maximum_depth_is_marked() {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        reset();
        record_deep(2 * MAX_FRAMES as u32, 0x7f00_cafe_0000);
        let p = snapshot();
        assert_eq!(p.len(), 1);
        assert!(p[0].truncated);
        assert_eq!(p[0].pcs.len(), MAX_FRAMES);
        let prof = to_profile(&p, rate());
        assert!(prof.samples[0].truncated);
        reset();
    }

    /// A block of 2 TiB or more, allocated and freed, leaves nothing in use: it is counted at
    /// the largest size a live-map entry holds both ways (its free subtracted the clamped
    /// size from the whole one: found by outside use in the twenty-fifth round).
    #[test]
    fn a_block_too_large_to_track_exactly_leaves_nothing_in_use() {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        reset();
        let a = 0x7f00_b16b_0000u64;
        record(a, 4 << 40);
        let p = snapshot();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].alloc_space, MAX_TRACKED_SIZE as i64);
        assert_eq!(p[0].inuse_space, MAX_TRACKED_SIZE as i64);
        untrack(a);
        let p = snapshot();
        assert_eq!((p[0].inuse_objects, p[0].inuse_space), (0, 0), "{p:?}");
        reset();
    }

    #[test]
    fn the_last_sample_s_slot_is_reused_until_a_reset() {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        reset();
        let a = 0x7f00_dead_0000u64;
        use Op::*;
        let got = drive(&[
            // Twice from one place: one stack, counted twice (the second through the thread's
            // last sample, `Captures`).
            Here(a),
            Here(a + 64),
            Snapshot,
            // After a reset the slot is empty (and may become another stack's): the next
            // sample from here must find or claim its own, not count into the old one.
            Reset,
            Here(a + 1024),
            Snapshot,
            // A sample from elsewhere has its own stack; back here, the last one's again.
            Elsewhere(a + 2048),
            Here(a + 4096),
            Snapshot,
        ]);
        assert_eq!(
            got,
            [
                vec![(2, 200, 2)],
                vec![(1, 100, 1)],
                vec![(1, 10, 1), (2, 200, 2)]
            ]
        );
        for b in [a + 1024, a + 2048, a + 4096] {
            untrack(b);
        }
        assert_eq!(drive(&[Snapshot]), [vec![(1, 10, 0), (2, 200, 0)]],);
        reset();
    }

    #[test]
    fn names() {
        assert!(is_runtime_name("alloc::raw_vec::finish_grow"));
        assert!(is_runtime_name(
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem"
        ));
        assert!(is_runtime_name(
            "<unwind::profile::heap::Sampling<A> as core::alloc::global::GlobalAlloc>::alloc"
        ));
        assert!(!is_runtime_name("myapp::alloc_here"));
        // Paths and OS strings allocate for their caller.
        for std_path in [
            "<std::sys::os_str::bytes::Slice>::to_owned",
            "<std::sys::os_str::bytes::Buf>::push_slice",
            "std::path::Path::_join",
            "<std::path::PathBuf>::_push",
            "<std::ffi::os_str::OsString>::push",
        ] {
            assert!(is_runtime_name(std_path), "{std_path}");
        }
        assert!(is_runtime_source("/rustc/abc/library/std/src/path.rs"));
        assert!(is_runtime_source(
            "/rustc/abc/library/std/src/sys/os_str/bytes.rs"
        ));
        // Impls on the standard library's types, on primitives, slices, references and generic
        // parameters are plumbing; the program's own impls are not.
        for std_impl in [
            "<&mut I as core::iter::traits::iterator::Iterator>::next",
            "<[T] as alloc::slice::hack::ConvertVec>::to_vec",
            "<str as alloc::borrow::ToOwned>::to_owned",
            "<T as alloc::string::ToString>::to_string",
            "<(A, B) as core::iter::traits::collect::Extend<(A, B)>>::extend",
            "<alloc::vec::Vec<T> as core::iter::traits::collect::FromIterator<T>>::from_iter",
            "<hashbrown::map::HashMap<K,V,S,A> as core::iter::traits::collect::Extend<(K,V)>>::extend",
        ] {
            assert!(is_runtime_name(std_impl), "{std_impl}");
        }
        // The allocator shims are plumbing; the panic runtime, which allocates the panic's
        // exception, is not.
        assert!(is_runtime_name("__rustc::__rust_alloc"));
        assert!(is_runtime_name("__rustc::__rust_realloc"));
        assert!(is_runtime_name("__rustc::__rdl_alloc"));
        assert!(!is_runtime_name("__rustc::__rust_start_panic"));
        assert!(!is_runtime_name("__rustc::rust_panic"));
        // Formatting allocates for its caller; a program's own Display impl is its own.
        for fmt in [
            "<core::fmt::Formatter>::padding",
            "<core::fmt::Formatter>::pad_integral",
            "core::fmt::write",
            "core::option::Option<T>::map_or_else",
            "<u64 as core::fmt::Display>::fmt",
            "<&T as core::fmt::Display>::fmt",
            "<alloc::string::String as core::fmt::Write>::write_str",
        ] {
            assert!(is_runtime_name(fmt), "{fmt}");
        }
        assert!(is_runtime_source("/rustc/abc/library/core/src/fmt/mod.rs"));
        for own in [
            "<myapp::Point as core::fmt::Display>::fmt",
            "<myapp::Words as core::iter::traits::iterator::Iterator>::next",
            "<myapp::Bag as core::iter::traits::collect::FromIterator<u8>>::from_iter",
            "<myapp::BlobRef as alloc::borrow::ToOwned>::to_owned",
            "<&myapp::Bag<alloc::string::String> as core::iter::traits::collect::IntoIterator>::into_iter",
        ] {
            assert!(!is_runtime_name(own), "{own}");
        }
    }
}

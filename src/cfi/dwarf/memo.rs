//! A per-thread memo of the tail of a hybrid capture: the frames the general walker found after
//! the frame-pointer entry stopped, replayed when the next capture stops at the same place.
//!
//! A thread's captures mostly end in the same outermost frames: its entry code, usually libc's
//! `start_thread` and `clone3`, built without frame pointers, so every capture steps through
//! them by CFI (some 900 instructions for those two frames). The memo makes that a few memory
//! compares, and stays exact:
//!
//! - The walk from a [`RecordRun`]'s stop is a deterministic function of its start (the last
//!   frame's pc and flags, `fp`, `floor`, the stack segment), the unwinder's rules (its
//!   [`Unwinder`] generation), the transition registry (its
//!   [`crate::transition::registry_version`]), and the answers of its memory reads.
//! - The memo keys on all of the first three and logs every memory call the walk made, with
//!   its answer ([`Recorder`]). A later walk with the same key replays the calls in order on
//!   its own memory; when every answer is the same, the walk would make the same calls and
//!   write the same frames, so the memo's frames are copied instead. The first answer that
//!   differs ends the replay, and the walk runs (and is recorded) as usual.
//! - Only walks that leave at least two free slots in the buffer are kept, and replayed only
//!   into a buffer with as much room (the walker's buffer tests are then all answered the same
//!   way); a walk that read code bytes, made more calls or found more frames than the memo holds
//!   is not kept.
//!
//! Async-signal-safe: the memo lives in the thread's cache, which a signal handler that
//! interrupted a capture finds borrowed (it then walks without it); nothing allocates.

use super::{Cfi, Frame, Memory, Trace, Walker};
use crate::frame::StopReason;
use crate::live::RecordRun;
use crate::memory::Range;
use crate::walk::Mode;

#[cfg(test)]
std::thread_local! {
    /// Replays on this thread (tests: that the memo is used).
    pub(crate) static HITS: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
    /// Walks through the memo on this thread.
    pub(crate) static RESUMES: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

/// Memory calls a memo holds.
const CALLS: usize = 24;
/// Frames a memo holds.
const FRAMES: usize = 8;

/// One memory call of a recorded walk, with its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Word(u64, Option<u64>),
    Pair(u64, Option<(u64, u64)>),
    Range(u64, Option<Range>),
    Enter(u64, Option<Range>),
}

impl Call {
    const NONE: Call = Call::Word(0, None);

    /// Does `mem` give the same answer now? (Replays with the checked reads.)
    #[inline(always)]
    fn holds<M: Memory>(&self, mem: &mut M) -> bool {
        match *self {
            Call::Word(a, v) => mem.read_u64(a) == v,
            Call::Pair(a, v) => mem.read_pair(a) == v,
            Call::Range(a, v) => mem.stack_range(a) == v,
            Call::Enter(a, v) => mem.enter_stack(a) == v,
        }
    }
}

/// The last recorded tail of this thread's hybrid captures (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Memo {
    /// `[pc, flags, fp, floor, seg.lo, seg.hi, registry version, unwinder generation]` of the
    /// walk's start; generation 0 (never an unwinder's with rules): empty.
    key: [u64; 8],
    calls: [Call; CALLS],
    ncalls: usize,
    frames: [Frame; FRAMES],
    nframes: usize,
    /// The flags of the frame before the walk's first, after the walk (a transition step can
    /// mark it exact).
    prev_flags: u8,
    stop: StopReason,
}

impl Memo {
    /// An empty memo.
    pub(crate) const EMPTY: Memo = Memo {
        key: [0; 8],
        calls: [Call::NONE; CALLS],
        ncalls: 0,
        frames: [Frame::EMPTY; FRAMES],
        nframes: 0,
        prev_flags: 0,
        stop: StopReason::End,
    };
}

/// Forwards to `inner`, logging each call and its answer (up to [`CALLS`]; `n` counts on).
struct Recorder<'a, M> {
    inner: M,
    log: &'a mut [Call; CALLS],
    n: usize,
    read_code: bool,
}

impl<M> Recorder<'_, M> {
    #[inline(always)]
    fn push(&mut self, c: Call) {
        if let Some(slot) = self.log.get_mut(self.n) {
            *slot = c;
        }
        self.n += 1;
    }
}

impl<M: Memory> Memory for Recorder<'_, M> {
    #[inline(always)]
    fn read_u64(&mut self, addr: u64) -> Option<u64> {
        let v = self.inner.read_u64(addr);
        self.push(Call::Word(addr, v));
        v
    }

    #[inline(always)]
    fn stack_range(&mut self, addr: u64) -> Option<Range> {
        let v = self.inner.stack_range(addr);
        self.push(Call::Range(addr, v));
        v
    }

    #[inline(always)]
    fn enter_stack(&mut self, addr: u64) -> Option<Range> {
        let v = self.inner.enter_stack(addr);
        self.push(Call::Enter(addr, v));
        v
    }

    #[inline(always)]
    fn read_pair(&mut self, addr: u64) -> Option<(u64, u64)> {
        let v = self.inner.read_pair(addr);
        self.push(Call::Pair(addr, v));
        v
    }

    #[inline(always)]
    unsafe fn read_pair_unchecked(&mut self, addr: u64) -> Option<(u64, u64)> {
        // SAFETY: forwarded with the caller's guarantee: the ranges it relies on are the ones
        // `inner.stack_range` returned through this recorder.
        let v = unsafe { self.inner.read_pair_unchecked(addr) };
        self.push(Call::Pair(addr, v));
        v
    }

    #[inline(always)]
    fn reads_unchecked(&mut self, stack: Range) -> bool {
        self.inner.reads_unchecked(stack)
    }

    #[inline(always)]
    fn read_code(&mut self, addr: u64, out: &mut [u8]) -> bool {
        // Code is not logged: a walk that looks at it is not kept.
        self.read_code = true;
        self.inner.read_code(addr, out)
    }

    fn is_code(&mut self, addr: u64) -> Option<bool> {
        // Not logged either.
        self.read_code = true;
        self.inner.is_code(addr)
    }
}

/// Where a hybrid walk resumes after a [`RecordRun`]: `n` frames written, the last one's
/// record at `floor` held `fp`, on the stack segment `seg`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Resume {
    pub(crate) n: usize,
    pub(crate) seg: Range,
    pub(crate) fp: u64,
    pub(crate) floor: u64,
}

impl Resume {
    /// Where `run` stopped.
    #[inline(always)]
    pub(crate) fn of(run: &RecordRun) -> Self {
        Resume {
            n: run.n,
            seg: run.stack(),
            fp: run.fp,
            floor: run.floor,
        }
    }
}

/// The general hybrid walk from `at` with `cfi` (the rules of the unwinder of `generation`),
/// through `memo`: replayed when the memo holds this start and its calls still answer the same
/// on `mem`, else walked and recorded.
#[inline(always)]
pub(crate) fn resume<C: Cfi, M: Memory>(
    memo: &mut Memo,
    cfi: C,
    generation: u64,
    mem: &mut M,
    buf: &mut [Frame],
    at: Resume,
) -> Trace {
    let Resume { n, seg, fp, floor } = at;
    #[cfg(test)]
    RESUMES.with(|r| r.set(r.get() + 1));
    // No last frame (n == 0): the walker reports it; nothing is kept (generation 0).
    let last = n.checked_sub(1).and_then(|i| buf.get(i)).copied();
    let key = [
        last.map_or(0, |f| f.pc),
        last.map_or(0, |f| f.flags as u64),
        fp,
        floor,
        seg.lo,
        seg.hi,
        crate::transition::registry_version(),
        last.map_or(0, |_| generation),
    ];
    if key[7] != 0 && memo.key == key && n + memo.nframes + 2 <= buf.len() {
        let calls = &memo.calls[..memo.ncalls.min(CALLS)];
        if calls.iter().all(|c| c.holds(mem)) {
            let k = memo.nframes.min(FRAMES);
            if let Some(b) = buf.get_mut(n - 1..n + k) {
                b[0].flags = memo.prev_flags;
                b[1..].copy_from_slice(&memo.frames[..k]);
                #[cfg(test)]
                HITS.with(|h| h.set(h.get() + 1));
                return Trace {
                    len: n + k,
                    stop: memo.stop,
                };
            }
        }
    }
    let mut rec = Recorder {
        inner: mem,
        log: &mut memo.calls,
        n: 0,
        read_code: false,
    };
    let t = walk(cfi, &mut rec, buf, at);
    let (ncalls, read_code) = (rec.n, rec.read_code);
    let k = t.len.wrapping_sub(n);
    let kept = key[7] != 0
        && !read_code
        && ncalls <= CALLS
        && t.len >= n
        && k <= FRAMES
        && t.len + 2 <= buf.len()
        && t.stop != StopReason::BufferFull;
    memo.key = [0; 8];
    if kept {
        if let Some(b) = buf.get(n - 1..t.len) {
            memo.frames[..k].copy_from_slice(&b[1..]);
            memo.nframes = k;
            memo.ncalls = ncalls;
            memo.prev_flags = b[0].flags;
            memo.stop = t.stop;
            memo.key = key;
        }
    }
    t
}

/// The general hybrid walk from `at` with `cfi` on `mem` (no memo).
#[inline(always)]
pub(crate) fn walk<C: Cfi, M: Memory>(cfi: C, mem: &mut M, buf: &mut [Frame], at: Resume) -> Trace {
    type Native = crate::arch::native::Native;
    let mut w: Walker<Native, _, _> =
        Walker::with_cfi(crate::transition::Pinned::new(), cfi, Mode::Hybrid);
    w.resume_after_records(mem, buf, at.n, at.seg, at.fp, at.floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recorder answers for its memory whether a stack may be read unchecked: a mapping
    /// the live memory found in `/proc/self/maps` may not (the walker's hot loops would read it
    /// directly through the recorder's forwarded unchecked reads).
    #[test]
    fn the_recorder_forwards_which_stacks_are_read_unchecked() {
        const LEN: usize = 64 * 1024;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as u64;
        let sp = p + LEN as u64 - 256;
        let mut log = [Call::NONE; CALLS];
        let mut r = Recorder {
            inner: crate::live::LiveMemory::for_sp(sp),
            log: &mut log,
            n: 0,
            read_code: false,
        };
        let scanned = r.stack_range(sp).expect("the mapping at sp");
        assert!(!r.reads_unchecked(scanned));
        let local = 0u64;
        let own = r
            .stack_range(core::hint::black_box(&local) as *const u64 as u64)
            .expect("the thread's stack");
        assert!(r.reads_unchecked(own));
        drop(r);
        // SAFETY: unmaps the mapping made above; nothing reads it any more.
        unsafe { libc::munmap(p as *mut libc::c_void, LEN) };
    }
}

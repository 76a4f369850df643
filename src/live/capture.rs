//! Live capture on the current thread.
//!
//! Reads are bounded by the stacks this thread is known to have: its own stack (found once per
//! thread and cached in a `const`-initialised thread-local, which never allocates), the
//! alternate signal stack when a handler runs on it, and the stacks registered with
//! [`crate::transition::register_stack`] (system stacks, coroutines). A frame pointer outside
//! all of them ends the walk; nothing outside them is ever read.
//!
//! Finding a thread's stack the first time uses `/proc/self/maps`, read with `open`/`read`/
//! `close` into a stack buffer: async-signal-safe (POSIX lists those calls as such), no lock and
//! no allocation, so even a signal handler that lands on a fresh thread can do it. It costs a few
//! syscalls once per thread (or per unknown stack segment); call [`init_thread`] to pay it up
//! front. After that, capture makes no system call.

use crate::arch::native::{current_regs, Native};
use crate::arch::{Arch, Regs};
use crate::frame::{Frame, Trace};
use crate::memory::{Memory, Range};
use crate::transition::{registered_stack, Pinned};
use crate::walk::{Start, Walker};
use core::cell::Cell;

thread_local! {
    /// This thread's stack, `[lo, hi)`; `hi == 0` until found.
    static THREAD_STACK: Cell<Range> = const { Cell::new(Range::new(0, 0)) };
    /// The last extra stack segment found through /proc/self/maps (a stacker segment, an
    /// unregistered alternate stack).
    static EXTRA_STACK: Cell<Range> = const { Cell::new(Range::new(0, 0)) };
}

/// Records this thread's stack bounds now (outside any signal handler), so that later captures,
/// including those from signal handlers, need no system call. Optional: the first capture on a
/// thread does the same.
pub fn init_thread() {
    let (_, sp, _) = sp_now();
    let _ = thread_stack(sp);
}

/// Tells `unwind` this thread's stack bounds directly (for threads on stacks that
/// `/proc/self/maps` cannot describe, or to skip the lookup). Async-signal-safe.
///
/// # Safety
/// Every byte of `range` must stay mapped and readable for as long as this thread may capture
/// (its whole life, unless a later call replaces the range): captures read any address inside
/// it without further checks, also from signal handlers.
pub unsafe fn set_thread_stack(range: Range) {
    THREAD_STACK.with(|c| c.set(range));
}

#[inline(always)]
fn sp_now() -> (u64, u64, u64) {
    let r = current_regs();
    (r.pc, r.sp, r.fp)
}

/// The mapping of this thread's stack containing `sp`, cached.
fn thread_stack(sp: u64) -> Option<Range> {
    let cached = THREAD_STACK.with(|c| c.get());
    if cached.contains(sp) {
        return Some(cached);
    }
    if !cached.is_empty() {
        return None; // sp is on some other stack (alternate, coroutine, segment)
    }
    let found = maps::mapping_containing(sp)?;
    THREAD_STACK.with(|c| c.set(found));
    Some(found)
}

/// Memory of the current thread's stacks. Every read is checked against them.
#[derive(Clone, Copy, Debug)]
pub struct LiveMemory {
    /// Thread stack, the starting segment, the alternate stack, and the last registered stack
    /// found (so that walking a registered stack asks the registry once, not per read).
    stacks: [Range; 4],
}

impl LiveMemory {
    /// The memory a capture starting at stack pointer `sp` may read: the thread's stack, the
    /// stack `sp` is on (if different), and `extra` (an alternate signal stack). Finds unknown
    /// stacks through `/proc/self/maps` (async-signal-safe, see the module docs).
    #[inline(always)]
    pub fn for_sp(sp: u64, extra: Option<Range>) -> Self {
        // Fast path: the thread's stack is known and `sp` is on it.
        let t = THREAD_STACK.with(|c| c.get());
        if t.contains(sp) {
            return LiveMemory {
                stacks: [
                    t,
                    Range::default(),
                    extra.unwrap_or_default(),
                    Range::default(),
                ],
            };
        }
        Self::for_sp_slow(sp, extra)
    }

    #[inline(never)]
    fn for_sp_slow(sp: u64, extra: Option<Range>) -> Self {
        let mut stacks = [Range::default(); 4];
        if let Some(t) = thread_stack(sp) {
            stacks[0] = t;
        } else {
            stacks[0] = THREAD_STACK.with(|c| c.get());
            if registered_stack(sp).is_none() && !extra.is_some_and(|e| e.contains(sp)) {
                let seg = EXTRA_STACK.with(|c| c.get());
                stacks[1] = if seg.contains(sp) {
                    seg
                } else {
                    match maps::mapping_containing(sp) {
                        Some(r) => {
                            EXTRA_STACK.with(|c| c.set(r));
                            r
                        }
                        None => Range::default(),
                    }
                };
            }
        }
        if let Some(e) = extra {
            stacks[2] = e;
        }
        LiveMemory { stacks }
    }

    #[inline(always)]
    fn range_of(&mut self, addr: u64, len: u64) -> Option<Range> {
        // The thread's own stack first: nearly every read is there.
        if self.stacks[0].contains_span(addr, len) {
            return Some(self.stacks[0]);
        }
        self.range_of_slow(addr, len)
    }

    #[inline(never)]
    fn range_of_slow(&mut self, addr: u64, len: u64) -> Option<Range> {
        for r in &self.stacks[1..] {
            if r.contains_span(addr, len) {
                return Some(*r);
            }
        }
        let r = registered_stack(addr).filter(|r| r.contains_span(addr, len))?;
        self.stacks[3] = r;
        Some(r)
    }
}

impl Memory for LiveMemory {
    #[inline(always)]
    fn read_u64(&mut self, addr: u64) -> Option<u64> {
        if !addr.is_multiple_of(8) {
            return None;
        }
        self.range_of(addr, 8)?;
        // SAFETY: `addr` is 8-aligned and the 8 bytes at it lie inside a stack of this thread
        // (its own, found from /proc/self/maps or set by the caller), an alternate stack the
        // kernel reported, or a stack a runtime registered and keeps mapped while registered.
        // Stack memory is plain data that other code may write concurrently only through our
        // own thread, so a volatile read sees some valid u64.
        Some(unsafe { core::ptr::read_volatile(addr as *const u64) })
    }

    #[inline(always)]
    fn stack_range(&mut self, addr: u64) -> Option<Range> {
        self.range_of(addr, 1)
    }

    #[inline(always)]
    fn read_pair(&mut self, addr: u64) -> Option<(u64, u64)> {
        if !addr.is_multiple_of(8) {
            return None;
        }
        self.range_of(addr, 16)?;
        // SAFETY: as in `read_u64`, for the 16 bytes at `addr`, all inside one known stack.
        unsafe {
            Some((
                core::ptr::read_volatile(addr as *const u64),
                core::ptr::read_volatile((addr + 8) as *const u64),
            ))
        }
    }

    #[inline(always)]
    unsafe fn read_pair_unchecked(&mut self, addr: u64) -> Option<(u64, u64)> {
        // SAFETY: the caller guarantees the 16 bytes lie inside a range `stack_range` returned;
        // every such range is a whole stack of this thread (or a registered one), all readable.
        unsafe {
            Some((
                core::ptr::read_volatile(addr as *const u64),
                core::ptr::read_volatile((addr + 8) as *const u64),
            ))
        }
    }
}

/// Options for a live capture.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Ignore the transition table (a naive walk; for comparison).
    pub naive: bool,
    /// Stop after this many frames (0: the buffer's length).
    pub max_depth: usize,
}

/// Captures the current thread's call stack into `buf`, leaf first, starting with the caller of
/// `capture` (the return address into it). Returns the number of frames written.
///
/// Async-signal-safe: no allocation, no lock, no system call once the thread's stack is known
/// (see the module docs). Crosses every registered stack switch.
#[inline(never)]
pub fn capture(buf: &mut [Frame]) -> usize {
    capture_here(buf, Options::default()).len
}

/// [`capture`] with options, returning why the walk stopped too. Async-signal-safe.
#[inline(never)]
pub fn capture_with(buf: &mut [Frame], opts: Options) -> Trace {
    capture_here(buf, opts)
}

/// The body of [`capture`] and [`capture_with`], inlined into each so that the frame record it
/// starts from is theirs and the trace begins at their caller.
#[inline(always)]
fn capture_here(buf: &mut [Frame], opts: Options) -> Trace {
    match start_here() {
        Some((start, mut mem)) => walk_live(start, &mut mem, buf, opts),
        None => empty(),
    }
}

/// The start of a capture at the calling function's own frame record (its return address is
/// the first frame), and the memory to walk. Inlined into the public capture functions of this
/// crate so that "the calling function" is them.
#[inline(always)]
pub(crate) fn start_here() -> Option<(Start, LiveMemory)> {
    let r = current_regs();
    let mut mem = LiveMemory::for_sp(r.sp, None);
    let saved_fp = mem.read_u64(r.fp)?;
    let ra = mem.read_u64(r.fp.wrapping_add(8))?;
    let start = Start {
        regs: Regs::new(
            crate::arch::native::strip_pac_live(ra),
            r.fp.wrapping_add(16),
            saved_fp,
        ),
        pc_is_return_address: true,
    };
    Some((start, mem))
}

/// The start of a capture at the registers a signal handler's `ucontext` holds (the
/// interrupted pc is the first frame, exact), and the memory to walk (the interrupted stack and
/// the alternate signal stack, from `uc_stack`).
///
/// # Safety
/// `ucontext` must be the third argument the kernel passed to a `SA_SIGINFO` handler.
#[inline(always)]
pub(crate) unsafe fn start_from_ucontext(ucontext: *const libc::c_void) -> (Start, LiveMemory) {
    // SAFETY: forwarded from the caller.
    let (mut regs, alt) = unsafe { ucontext_regs(ucontext) };
    regs.pc = crate::arch::native::strip_pac_live(regs.pc);
    (Start::exact(regs), LiveMemory::for_sp(regs.sp, alt))
}

pub(crate) fn empty() -> Trace {
    Trace {
        len: 0,
        stop: crate::frame::StopReason::ReadFailed,
    }
}

#[inline(always)]
fn walk_live(start: Start, mem: &mut LiveMemory, buf: &mut [Frame], opts: Options) -> Trace {
    if opts.naive {
        let mut w: Walker<Native, _, _> = Walker::new(crate::transition::NoTransitions);
        w.max_depth = opts.max_depth;
        w.walk(start, mem, buf)
    } else {
        // One pinned registry version for the whole walk: no atomic RMW per frame.
        let mut w: Walker<Native, _, _> = Walker::new(Pinned::new());
        w.max_depth = opts.max_depth;
        w.walk(start, mem, buf)
    }
}

/// The registers and alternate-stack bounds saved in a signal handler's `ucontext`.
///
/// # Safety
/// `ucontext` must point to the `ucontext_t` the kernel passed to a `SA_SIGINFO` handler (its
/// third argument), valid for reads.
pub unsafe fn ucontext_regs(ucontext: *const libc::c_void) -> (Regs, Option<Range>) {
    let uc = ucontext as u64;
    let mut read = |a: u64| -> Option<u64> {
        // SAFETY: the caller guarantees the ucontext is readable; the arch backend only asks
        // for offsets inside ucontext_t (register slots and uc_stack), 8-aligned.
        Some(unsafe { core::ptr::read_volatile(a as *const u64) })
    };
    let regs = Native::ucontext_regs(uc, &mut read).unwrap_or_default();
    // uc_stack: ss_sp, ss_flags (int, padded), ss_size.
    let base = uc + Native::UC_STACK;
    let ss_sp = read(base).unwrap_or(0);
    let ss_flags = read(base + 8).unwrap_or(0) as u32 as i32;
    let ss_size = read(base + 16).unwrap_or(0);
    let alt = if ss_flags & libc::SS_DISABLE == 0 && ss_size != 0 {
        ss_sp.checked_add(ss_size).map(|hi| Range::new(ss_sp, hi))
    } else {
        None
    };
    (regs, alt)
}

/// Captures the stack interrupted by a signal, starting from the registers in the handler's
/// `ucontext` (so the interrupted pc is the first frame, as a naive frame-pointer walk from the
/// handler would not show it). Returns the number of frames written.
///
/// Async-signal-safe; meant for `SA_SIGINFO` handlers (a SIGPROF sampler). The alternate-stack
/// bounds are taken from `uc_stack`, which the kernel fills in.
///
/// # Safety
/// `ucontext` must be the third argument the kernel passed to a `SA_SIGINFO` handler.
pub unsafe fn capture_from_ucontext(ucontext: *const libc::c_void, buf: &mut [Frame]) -> usize {
    // SAFETY: forwarded from the caller.
    unsafe { capture_from_ucontext_with(ucontext, buf, Options::default()) }.len
}

/// [`capture_from_ucontext`] with options, returning why the walk stopped too.
///
/// # Safety
/// `ucontext` must be the third argument the kernel passed to a `SA_SIGINFO` handler.
pub unsafe fn capture_from_ucontext_with(
    ucontext: *const libc::c_void,
    buf: &mut [Frame],
    opts: Options,
) -> Trace {
    // SAFETY: forwarded from the caller.
    let (start, mut mem) = unsafe { start_from_ucontext(ucontext) };
    walk_live(start, &mut mem, buf, opts)
}

mod maps {
    //! `/proc/self/maps` parsing with raw open/read/close: async-signal-safe, no allocation.
    use crate::memory::Range;

    /// The mapping that contains `addr`. Leaves `errno` as it found it: this runs inside user
    /// signal handlers and inside `GlobalAlloc`, whose callers may be about to read `errno`.
    pub fn mapping_containing(addr: u64) -> Option<Range> {
        let errno = crate::live::errno::Saved::new();
        let found = scan(addr);
        drop(errno);
        found
    }

    fn scan(addr: u64) -> Option<Range> {
        const PATH: &[u8] = b"/proc/self/maps\0";
        // SAFETY: PATH is NUL-terminated; open has no other preconditions.
        let fd = unsafe { libc::open(PATH.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let mut buf = [0u8; 4096];
        let mut have = 0usize;
        let mut found = None;
        // Inside a line longer than the buffer (a long path): its range was checked, the rest
        // of it is skipped up to its newline.
        let mut skipping = false;
        'outer: loop {
            // SAFETY: writes at most buf.len() - have bytes into the unused tail of buf.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().add(have).cast(), buf.len() - have) };
            if n <= 0 {
                if have > 0 && !skipping {
                    found = parse_line(&buf[..have]).filter(|r| r.contains(addr));
                }
                break;
            }
            have += n as usize;
            let mut start = 0;
            if skipping {
                match buf[..have].iter().position(|&b| b == b'\n') {
                    Some(nl) => {
                        skipping = false;
                        start = nl + 1;
                    }
                    None => {
                        have = 0;
                        continue;
                    }
                }
            }
            while let Some(nl) = buf[start..have].iter().position(|&b| b == b'\n') {
                if let Some(r) = parse_line(&buf[start..start + nl]) {
                    if r.contains(addr) {
                        found = Some(r);
                        break 'outer;
                    }
                }
                start += nl + 1;
            }
            buf.copy_within(start..have, 0);
            have -= start;
            if have == buf.len() {
                // A line longer than the buffer: its range is at its start.
                if let Some(r) = parse_line(&buf[..have]).filter(|r| r.contains(addr)) {
                    found = Some(r);
                    break;
                }
                skipping = true;
                have = 0;
            }
        }
        // SAFETY: fd was opened above and is closed once.
        unsafe { libc::close(fd) };
        found
    }

    /// Parses `lo-hi ...` (hex) at the start of a maps line.
    pub fn parse_line(line: &[u8]) -> Option<Range> {
        let dash = line.iter().position(|&b| b == b'-')?;
        let sp = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
        if sp <= dash {
            return None;
        }
        let lo = hex(&line[..dash])?;
        let hi = hex(&line[dash + 1..sp])?;
        (lo < hi).then_some(Range::new(lo, hi))
    }

    fn hex(s: &[u8]) -> Option<u64> {
        if s.is_empty() || s.len() > 16 {
            return None;
        }
        let mut v = 0u64;
        for &c in s {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return None,
            };
            v = (v << 4) | d as u64;
        }
        Some(v)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_lines() {
            assert_eq!(
                parse_line(b"7ffd1000-7ffd3000 rw-p 00000000 00:00 0   [stack]"),
                Some(Range::new(0x7ffd1000, 0x7ffd3000))
            );
            assert_eq!(parse_line(b"garbage"), None);
            assert_eq!(parse_line(b"2000-1000 r"), None);
            assert_eq!(parse_line(b"12345678901234567-1 r"), None);
        }

        /// A maps line longer than the 4 KiB buffer (a mapped file with a ~4000-byte path) before
        /// the stack's line must not end the scan.
        #[test]
        fn long_line_does_not_end_the_scan() {
            use std::ffi::CString;
            let mut dir = std::env::temp_dir().join(format!("unwind-long-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let root = dir.clone();
            // Components of at most 250 bytes (NAME_MAX 255), the whole under PATH_MAX 4096.
            while dir.as_os_str().len() < 3800 {
                let n = (3800 - dir.as_os_str().len()).clamp(1, 250);
                dir.push("d".repeat(n));
            }
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("f".repeat(250));
            std::fs::write(&file, [7u8; 4096]).unwrap();
            assert!(file.as_os_str().len() > 4000);
            let c = CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a NUL-terminated path; the fd is closed below.
            let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
            assert!(fd >= 0);
            // Map it low, below the executable, so its line precedes the stack's.
            let hint = 0x1000_0000usize;
            // SAFETY: a fresh private read-only mapping at an address nothing else uses
            // (MAP_FIXED_NOREPLACE fails rather than replace a mapping); unmapped below.
            let p = unsafe {
                libc::mmap(
                    hint as *mut libc::c_void,
                    4096,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE,
                    fd,
                    0,
                )
            };
            assert_eq!(p as usize, hint, "mmap at the hint failed");
            let x = 5u64;
            let a = &x as *const u64 as u64;
            let stack = mapping_containing(a);
            let low = mapping_containing(hint as u64 + 8);
            // SAFETY: unmaps the mapping made above; closes the fd opened above.
            unsafe {
                libc::munmap(p, 4096);
                libc::close(fd);
            }
            let _ = std::fs::remove_dir_all(&root);
            assert!(stack.is_some_and(|r| r.contains(a)), "{stack:?}");
            assert_eq!(low, Some(Range::new(hint as u64, hint as u64 + 4096)));
        }

        #[test]
        fn finds_own_stack() {
            let x = 5u64;
            let a = &x as *const u64 as u64;
            let r = mapping_containing(a).unwrap();
            assert!(r.contains(a));
        }
    }
}

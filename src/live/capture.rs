//! Live capture on the current thread.
//!
//! Reads are bounded by the stacks this thread is known to have: its own stack (found once per
//! thread and cached in a `const`-initialised thread-local, which never allocates), the
//! alternate signal stack when a handler runs on it, and the stacks registered with
//! [`crate::transition::register_stack`] (system stacks, coroutines). A frame pointer outside
//! all of them ends the walk; nothing outside them is ever read.
//!
//! Only the thread's real stack is cached (the `[stack]` mapping on the main thread, the mapping
//! holding the thread's control block on others): a coroutine, a stacker segment or an
//! alternate stack can be unmapped while the thread lives on, so a capture that starts on an
//! unregistered one looks its mapping up afresh, for that walk only. Registered stacks and the
//! alternate stack the kernel reports are checked first and never cached.
//!
//! Finding a thread's stack the first time uses `/proc/self/maps`, read with `open`/`read`/
//! `close` into a stack buffer: async-signal-safe (POSIX lists those calls as such), no lock and
//! no allocation, and `errno` is restored, so even a signal handler that lands on a fresh thread
//! can do it. It costs a few syscalls once per thread (and per capture that starts on an
//! unregistered segment or coroutine: register those to avoid it); call [`init_thread`] to pay
//! it up front. After that, a capture on the thread's own or a registered stack makes no system
//! call.

pub(crate) use crate::arch::native::current_regs;
use crate::arch::native::Native;
use crate::arch::{Arch, Regs};
use crate::frame::{Frame, Trace};
use crate::memory::{Memory, Range};
use crate::transition::{registered_stack, Pinned, StackReads};
use crate::walk::{Start, Walker};
use core::cell::Cell;

thread_local! {
    /// This thread's own stack, `[lo, hi)`; `hi == 0` until found. Only ever the thread's real
    /// stack (mapped for the thread's whole life), never a coroutine, a segment or an alternate
    /// stack: those may be unmapped while the thread lives on (see [`find_thread_stack`]).
    static THREAD_STACK: Cell<Range> = const { Cell::new(Range::new(0, 0)) };
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

/// This thread's real stack, found once and cached; `sp` is where the caller is now (which may
/// be a coroutine, a segment or an alternate stack, not the thread's stack).
fn thread_stack(sp: u64) -> Option<Range> {
    let cached = THREAD_STACK.with(|c| c.get());
    if !cached.is_empty() {
        return Some(cached);
    }
    let on_other = registered_stack(sp).is_some();
    find_thread_stack(sp, on_other).thread
}

/// Is this the process's main thread (its tid is the pid)? Two system calls
/// (async-signal-safe; `errno` kept).
fn is_main_thread() -> bool {
    let _errno = crate::live::errno::Saved::new();
    // SAFETY: getpid and gettid have no preconditions.
    unsafe { libc::getpid() as libc::c_long == libc::syscall(libc::SYS_gettid) }
}

/// Is mapping `m` the stack of this thread (`main`: the main thread; `tcb`: its
/// `pthread_self()`)? The main thread's is labelled `[stack]`; another thread's holds its
/// control block. Not the main thread's by its control block: that lives in the loader's
/// static TLS block, an anonymous mapping the kernel may merge with an adjacent one (a
/// corosensei coroutine's stack was taken for the main thread's, and the walk could not read
/// the parent's frames on the real `[stack]`).
fn owns_stack(m: maps::Mapping, main: bool, tcb: u64) -> bool {
    m.main_stack || (!main && m.range.contains(tcb))
}

/// The part of mapping `m` (which [`owns_stack`]) that is the thread's stack: all of the main
/// thread's `[stack]`; below the control block on other threads. The thread library puts the
/// control block (and the static TLS, below it on x86_64, above it on aarch64) at the top of
/// the block it maps for a thread, the stack under them; the kernel may merge that mapping with
/// an adjacent anonymous one above it (an allocation another thread may free at any moment),
/// which a walk must not take for stack.
fn stack_part(m: maps::Mapping, tcb: u64) -> Range {
    if m.main_stack || !m.range.contains(tcb) {
        m.range
    } else {
        Range::new(m.range.lo, tcb & !15)
    }
}

/// What one `/proc/self/maps` scan found at the start of a capture.
struct Found {
    /// The thread's real stack (now cached).
    thread: Option<Range>,
    /// The readable, writable, anonymous mapping holding `sp`, when it is not the thread's stack
    /// (an unregistered coroutine or stacker segment, an alternate stack): valid for this walk
    /// only (the capture runs on it, so it cannot go away meanwhile), never cached.
    sp_mapping: Option<Range>,
}

/// Finds and caches the thread's real stack, with one scan of `/proc/self/maps`
/// (async-signal-safe, see the module docs). Which mapping is the thread's own stack:
/// - the main thread's is labelled `[stack]`;
/// - any other thread's holds its thread control block (`pthread_self()`): glibc and musl put
///   it at the top of the block they map (or the caller supplies) for the thread's stack.
///
/// Only that mapping is cached; the mapping holding `sp` when it differs (`sp` on a coroutine,
/// a stacker segment, an alternate stack) is returned for one walk. `sp_on_other` says that
/// `sp` is on a registered stack or the reported alternate stack, which are never the thread's
/// stack. When neither rule identifies the thread's stack (a thread whose control block is not
/// on its stack), the mapping holding `sp` is cached, as before, unless `sp` is on a registered
/// or alternate stack.
#[inline(never)]
fn find_thread_stack(sp: u64, sp_on_other: bool) -> Found {
    // SAFETY: pthread_self has no preconditions (it reads the thread pointer).
    let tcb = unsafe { libc::pthread_self() } as u64;
    let scan = maps::scan([sp, tcb], true);
    let [at_sp, at_tcb] = scan.found;
    let cache = |r: Range| {
        THREAD_STACK.with(|c| c.set(r));
        Some(r)
    };
    let sp_map = at_sp.filter(|m| m.anon_rw).map(|m| m.range);
    let main = is_main_thread();
    // `sp` on the thread's own stack: the common first capture.
    if let Some(m) = at_sp.filter(|m| m.anon_rw && !sp_on_other) {
        if owns_stack(m, main, tcb) {
            return Found {
                thread: cache(stack_part(m, tcb)),
                sp_mapping: None,
            };
        }
    }
    // `sp` is elsewhere: find the thread's stack by its own mark.
    let thread = if main {
        scan.main_stack
    } else {
        at_tcb.filter(|m| m.anon_rw).map(|m| stack_part(m, tcb))
    };
    if let Some(t) = thread {
        return Found {
            thread: cache(t),
            sp_mapping: sp_map.filter(|r| *r != t),
        };
    }
    // Unidentified: fall back to the mapping holding `sp`, unless it is known not to be the
    // thread's stack (registered, or the alternate stack).
    let on_alt = sp_map.is_some_and(|_| on_alt_stack(sp));
    match sp_map {
        Some(r) if !sp_on_other && !on_alt => Found {
            thread: cache(r),
            sp_mapping: None,
        },
        _ => Found {
            thread: None,
            sp_mapping: sp_map,
        },
    }
}

/// Is `sp` on this thread's current alternate signal stack? (`sigaltstack`: async-signal-safe.)
fn on_alt_stack(sp: u64) -> bool {
    let _errno = crate::live::errno::Saved::new();
    // SAFETY: stack_t is plain data; sigaltstack(NULL, &cur) only writes `cur`.
    let mut cur: libc::stack_t = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::sigaltstack(core::ptr::null(), &mut cur) } != 0 {
        return false;
    }
    cur.ss_flags & libc::SS_DISABLE == 0 && sp.wrapping_sub(cur.ss_sp as u64) < cur.ss_size as u64
}

/// How far below a stack an overflowed stack pointer may be: Linux's stack guard gap (256
/// pages) and some.
const GUARD_GAP: u64 = (1 << 20) + (64 << 10);

/// Memory of the current thread's stacks. Every read is checked against them.
///
/// Once it has looked a stack up in the registry (a coroutine's, a system stack, another
/// segment: [`crate::transition::register_stack`]), it holds a read section on the registered
/// stacks until dropped: a thread that unregisters a stack meanwhile waits for it before it
/// may free the memory ([`crate::transition::unregister_stack`]). Drop it when the walk is
/// done; do not leak it.
///
/// It stays on the thread that made it (neither `Send` nor `Sync`):
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// send(unwind::live::LiveMemory::for_sp(0));
/// ```
#[derive(Debug)]
pub struct LiveMemory {
    /// Thread stack, the starting segment (or, once a transition led off every known stack,
    /// the unregistered stack it led to: [`Memory::enter_stack`]; the walk has left the
    /// starting one for good by then), the alternate stack, and the last registered stack
    /// found (so that walking a registered stack asks the registry once, not per read).
    stacks: [Range; 4],
    /// How the registered stack in `stacks[3]` is held.
    held: Held,
    /// Neither `Send` nor `Sync`: the ranges are this thread's (its stack is read directly,
    /// valid only while the thread lives) and a read section is counted on this thread. Moved
    /// to another thread, it read the first one's stack after that thread had exited (a
    /// fault, or a race with the thread that got the stack next) and ended the section on the
    /// wrong thread (found by outside use in the twenty-eighth round).
    _this_thread: core::marker::PhantomData<*const ()>,
}

/// How a [`LiveMemory`] holds the registered stack it reads.
#[derive(Debug)]
enum Held {
    /// No registered stack looked up yet.
    Nothing,
    /// The registered stack the capture started on (this thread's own stack pointer is on
    /// it: the thread runs on it, so no other thread may free it), found when
    /// `STACK_REMOVALS` read this. Read without a section; once a stack was unregistered
    /// since (by this thread, the only one that may: it may have left the stack), looked up
    /// again, in a section.
    Start(u64),
    /// A read section, opened at the first lookup of any other registered stack (a frame
    /// pointer or a transition led there: a parent coroutine, a system stack, or a stray
    /// value): a stack found in it stays mapped until this memory is dropped.
    Section(StackReads),
}

impl LiveMemory {
    /// The memory a capture starting at stack pointer `sp` may read: the thread's stack and
    /// the stack `sp` is on (if different; a registered stack, or a private anonymous
    /// read-write mapping, as `/proc/self/maps` says). Async-signal-safe (see the module docs).
    #[inline(always)]
    pub fn for_sp(sp: u64) -> Self {
        Self::new(sp, None, false)
    }

    /// [`LiveMemory::for_sp`], also reading `extra` (the alternate signal stack a handler runs
    /// on, from its `ucontext`'s `uc_stack`). Async-signal-safe.
    ///
    /// # Safety
    /// `extra`, when given, must be readable memory for as long as this `LiveMemory` is used:
    /// its reads are checked against the range, not against what is mapped.
    #[inline(always)]
    pub unsafe fn for_sp_and(sp: u64, extra: Option<Range>) -> Self {
        Self::new(sp, extra, false)
    }

    /// [`LiveMemory::for_sp`] for this thread's own stack pointer now (a capture's, read by
    /// [`current_regs`]), or the one a signal interrupted on this thread (with the alternate
    /// stack the handler runs on, as [`LiveMemory::for_sp_and`]): a registered stack holding
    /// it is the one the thread runs on, read without a read section (see [`Held::Start`]).
    ///
    /// # Safety
    /// As [`LiveMemory::for_sp_and`] for `extra`; `sp` must be this thread's stack pointer (or
    /// the interrupted code's, from the handler's `ucontext`).
    #[inline(always)]
    pub(crate) unsafe fn for_own_sp(sp: u64, extra: Option<Range>) -> Self {
        Self::new(sp, extra, true)
    }

    #[inline(always)]
    fn new(sp: u64, extra: Option<Range>, own_sp: bool) -> Self {
        // The common case (a capture, not a signal handler): the thread's stack alone.
        if extra.is_none() {
            if let Some(m) = own_stack(sp) {
                return m;
            }
        }
        // One object, filled on both paths (a slow path that returned its own value made the
        // fast path copy what it had just written).
        let mut m = LiveMemory {
            stacks: [
                Range::default(),
                Range::default(),
                extra.unwrap_or_default(),
                Range::default(),
            ],
            held: Held::Nothing,
            _this_thread: core::marker::PhantomData,
        };
        // With an alternate stack: the thread's stack is known and `sp` is on it.
        let t = THREAD_STACK.with(|c| c.get());
        if t.contains(sp) {
            m.stacks[0] = t;
        } else {
            m.fill_slow(sp, extra, own_sp);
        }
        m
    }

    #[inline(never)]
    fn fill_slow(&mut self, sp: u64, extra: Option<Range>, own_sp: bool) {
        // Registered stacks and the alternate stack first: they are never the thread's own.
        // The stack the thread runs on needs no read section; any other is looked up in one
        // (see `Held`).
        let registered = if own_sp {
            let removals = crate::transition::stack_removals();
            let r = registered_stack(sp);
            if let Some(r) = r {
                self.stacks[3] = r;
                self.held = Held::Start(removals);
            }
            r
        } else {
            self.registered_stack(sp)
        };
        let stacks = &mut self.stacks;
        let on_other = registered.is_some() || extra.is_some_and(|e| e.contains(sp));
        let cached = THREAD_STACK.with(|c| c.get());
        if !cached.is_empty() {
            stacks[0] = cached;
            if !on_other {
                // An unregistered segment or coroutine, looked up afresh for this walk (it may
                // have been unmapped and its range reused since an earlier capture); or the
                // thread's own stack, grown since it was cached (the main thread's `[stack]`
                // grows down): then the cache is updated.
                // SAFETY: pthread_self has no preconditions (it reads the thread pointer).
                let tcb = unsafe { libc::pthread_self() } as u64;
                // Or, below every stack, the one just above: a stack overflow, its sp in the
                // guard page or gap under the stack it overflowed (a SIGSEGV handler on an
                // alternate stack walking it; the main thread's `[stack]` has grown since it
                // was cached). One scan for both.
                match maps::stack_at_or_above(sp, GUARD_GAP) {
                    Some((m, _)) if owns_stack(m, is_main_thread(), tcb) => {
                        let t = stack_part(m, tcb);
                        THREAD_STACK.with(|c| c.set(t));
                        stacks[0] = t;
                    }
                    Some((m, _)) => stacks[1] = m.range,
                    None => {}
                }
            }
        } else {
            let found = find_thread_stack(sp, on_other);
            stacks[0] = found.thread.unwrap_or_default();
            if !on_other {
                stacks[1] = found.sp_mapping.unwrap_or_default();
            }
        }
    }

    #[inline(always)]
    fn range_of(&mut self, addr: u64, len: u64) -> Option<Range> {
        // The thread's own stack first: nearly every read is there.
        if self.stacks[0].contains_span(addr, len) {
            return Some(self.stacks[0]);
        }
        self.range_of_slow(addr, len).map(|(r, _)| r)
    }

    /// The known stack holding the `len` bytes at `addr` other than the thread's own, and
    /// whether it may be read directly: the alternate stack and registered stacks may; a
    /// mapping `/proc/self/maps` showed ([`LiveMemory::stacks`]`[1]`) is only a snapshot (its
    /// owner, another thread, may unmap or protect it at any moment, or the kernel may have
    /// merged it with a neighbour that is not a stack), so it is read through the kernel
    /// ([`read_checked`]).
    #[inline(never)]
    fn range_of_slow(&mut self, addr: u64, len: u64) -> Option<(Range, bool)> {
        if self.stacks[2].contains_span(addr, len) {
            return Some((self.stacks[2], true));
        }
        if let Some(r) = self.registered_stack(addr) {
            if r.contains_span(addr, len) {
                return Some((r, true));
            }
        }
        let r = self.stacks[1];
        r.contains_span(addr, len).then_some((r, false))
    }

    /// The registered stack holding `addr`: the one found last, while no stack was
    /// unregistered since, or the registry's answer, looked up inside this memory's read
    /// section (opened now if it is not yet: a stack found in it stays mapped until this
    /// memory is dropped, or until this thread itself unregisters it, which the next call
    /// sees).
    #[inline(never)]
    fn registered_stack(&mut self, addr: u64) -> Option<Range> {
        if let Held::Start(removals) = self.held {
            if self.stacks[3].contains(addr) && crate::transition::stack_removals() == removals {
                return Some(self.stacks[3]);
            }
        }
        if !matches!(self.held, Held::Section(_)) {
            // No section yet: first a lookup that writes nothing (the common answer, "no
            // stack there", needs no section: nothing will be read); a stack found is looked
            // up again inside a section (see `StackReads`), whose answer is the one used.
            registered_stack(addr)?;
            // Another registered stack (or this thread unregistered its own since): a section.
            self.stacks[3] = Range::default();
            self.held = Held::Section(StackReads::open());
        }
        let Held::Section(reads) = &mut self.held else {
            return None;
        };
        if reads.removals_since() {
            self.stacks[3] = Range::default();
        }
        if self.stacks[3].contains(addr) {
            return Some(self.stacks[3]);
        }
        let r = registered_stack(addr)?;
        self.stacks[3] = r;
        Some(r)
    }

    /// `N` words at `addr` (8-aligned), outside the thread's own stack.
    #[inline(never)]
    fn read_slow<const N: usize>(&mut self, addr: u64) -> Option<[u64; N]> {
        let (_, direct) = self.range_of_slow(addr, 8 * N as u64)?;
        if !direct {
            return read_checked(addr);
        }
        // SAFETY: `addr` is 8-aligned and the `8 * N` bytes at it lie inside the alternate stack
        // the kernel reported for this handler (mapped while it runs) or a registered stack
        // found inside this memory's read section (mapped until the section ends, see
        // `StackReads`).
        Some(unsafe { read_words(addr) })
    }
}

/// `N` words at `addr`, read directly (volatile: stack memory that other code may write
/// concurrently, only through this thread, so any value is a valid u64).
///
/// # Safety
/// The `8 * N` bytes at `addr` must be mapped and readable, and `addr` 8-aligned.
#[inline(always)]
unsafe fn read_words<const N: usize>(addr: u64) -> [u64; N] {
    let mut out = [0u64; N];
    for (i, w) in out.iter_mut().enumerate() {
        // SAFETY: the caller's contract, for word `i` of the `N`.
        *w = unsafe { core::ptr::read_volatile((addr + 8 * i as u64) as *const u64) };
    }
    out
}

/// `N` words at `addr`, read through the kernel (`process_vm_readv` on this process): memory
/// that is unmapped or unreadable now, whatever an earlier `/proc/self/maps` scan said, gives
/// `None`, never a fault. One system call (about half a microsecond), so only for mappings
/// found by a scan (an unregistered coroutine or segment): register those to read them
/// directly. Where the call is refused (a seccomp filter), nothing is read.
/// Async-signal-safe; `errno` is kept.
#[inline(never)]
fn read_checked<const N: usize>(addr: u64) -> Option<[u64; N]> {
    let mut out = [0u64; N];
    // SAFETY: `[u64; N]` is plain data: any bytes the kernel writes are a valid value.
    let bytes = unsafe { core::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), 8 * N) };
    copy_checked(addr, bytes).ok()?;
    Some(out)
}

/// Whether the byte at `addr` can be read now: `Some(false)` when it is unmapped or
/// unreadable, `None` when the kernel refuses to say (`process_vm_readv` not allowed).
/// Async-signal-safe; `errno` is kept.
fn readable_now(addr: u64) -> Option<bool> {
    match copy_checked(addr, &mut [0u8]) {
        Ok(()) => Some(true),
        Err(libc::EFAULT) => Some(false),
        Err(_) => None,
    }
}

/// Copies `out.len()` bytes at `addr` into `out` through the kernel (`process_vm_readv` on
/// this process), or says why not (the call's `errno`; EFAULT where the memory cannot be read
/// now, all of it or a part). Never faults; async-signal-safe; this thread's `errno` is kept.
pub(crate) fn copy_checked(addr: u64, out: &mut [u8]) -> Result<(), i32> {
    let _errno = crate::live::errno::Saved::new();
    let local = libc::iovec {
        iov_base: out.as_mut_ptr().cast(),
        iov_len: out.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: out.len(),
    };
    // SAFETY: `local` describes `out`, writable for its length; the kernel checks `remote`
    // (a fault there is an error return, EFAULT, not a signal). getpid has no preconditions.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n == out.len() as isize {
        Ok(())
    } else if n >= 0 {
        // A partial read: the rest is unreadable (the kernel sets no errno for it; whatever
        // errno held was taken for a refusal, found by outside use in the twenty-seventh round).
        Err(libc::EFAULT)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// `r` without the unreadable pages at its bottom: a guard page that a registered range
/// includes (corosensei's `Stack::limit` is the bottom of its mapping, guard page included,
/// so `limit()..base()` holds a page no walk may read). At most 16 pages are left out; `r`
/// as it is where the kernel refuses to say. Not for signal handlers' hot paths (a system
/// call per page probed).
pub(crate) fn without_guard_pages(r: Range) -> Range {
    skip_unreadable_bottom(r, readable_now)
}

/// [`without_guard_pages`] with `probe` ([`readable_now`]); where the probe cannot say, the
/// mapping `/proc/self/maps` shows at the address says (and an unreadable one is skipped
/// whole).
fn skip_unreadable_bottom(r: Range, probe: impl Fn(u64) -> Option<bool>) -> Range {
    let page = crate::live::page_size() as u64;
    let next_page = |a: u64| (a & !(page - 1)).saturating_add(page);
    let mut lo = r.lo;
    for _ in 0..16 {
        if lo >= r.hi {
            break;
        }
        lo = match probe(lo) {
            Some(true) => break,
            Some(false) => next_page(lo),
            None => match maps::scan([lo, lo], false).found[0] {
                Some(m) if m.readable => break,
                Some(m) => m.range.hi.max(next_page(lo)),
                None => next_page(lo),
            },
        };
    }
    Range::new(lo.min(r.hi), r.hi)
}

impl Memory for LiveMemory {
    #[inline(always)]
    fn read_u64(&mut self, addr: u64) -> Option<u64> {
        if !addr.is_multiple_of(8) {
            return None;
        }
        if self.stacks[0].contains_span(addr, 8) {
            // SAFETY: `addr` is 8-aligned and the 8 bytes at it lie inside this thread's own
            // stack (found from /proc/self/maps and cached, or set by the caller), mapped for
            // the thread's life.
            return Some(unsafe { read_words::<1>(addr) }[0]);
        }
        self.read_slow::<1>(addr).map(|[w]| w)
    }

    #[inline(always)]
    fn stack_range(&mut self, addr: u64) -> Option<Range> {
        self.range_of(addr, 1)
    }

    /// A known stack, or else (a transition led off every known one: an unregistered
    /// coroutine's or `stacker` segment's stack, which a system-stack call, a nested
    /// coroutine's switch or a signal frame returns to) the mapping `/proc/self/maps` shows at
    /// `addr`, if it is private, anonymous and read-write, as every stack is (the rule a
    /// capture that starts on such a stack follows): kept for the rest of this walk only, never
    /// cached, and read through the kernel (`process_vm_readv`: it is a snapshot). A scan of
    /// `/proc/self/maps` (raw `open`/`read`, async-signal-safe) per such crossing;
    /// `coroutine::register_stack` avoids it.
    #[inline(never)]
    fn enter_stack(&mut self, addr: u64) -> Option<Range> {
        if let Some(r) = self.range_of(addr, 1) {
            return Some(r);
        }
        // Or, below every stack, the stack just above: a signal frame's interrupted sp after
        // a stack overflow, in the guard page or gap under the stack it overflowed (the main
        // thread's `[stack]` grown to its limit since it was cached: the walk went on from
        // the frame pointer, which in a build without frame records is not one, and said
        // `End` after a guessed frame; found by outside use in the twenty-eighth round).
        // Only this thread's own stack, though: a garbage sp (a leaf that moved it 4 MiB down
        // at once, into a hole) with some other mapping just above it entered that mapping,
        // and the walk stopped at the next frame record, on the real stack, which the frame
        // pointer leads to when no stack is entered here (found by outside use, same round).
        let (m, above) = maps::stack_at_or_above(addr, GUARD_GAP)?;
        let range = if above {
            // SAFETY: pthread_self has no preconditions (it reads the thread pointer).
            let tcb = unsafe { libc::pthread_self() } as u64;
            if !owns_stack(m, is_main_thread(), tcb) {
                return None;
            }
            stack_part(m, tcb)
        } else {
            m.range
        };
        self.stacks[1] = range;
        Some(range)
    }

    #[inline(always)]
    fn read_pair(&mut self, addr: u64) -> Option<(u64, u64)> {
        if !addr.is_multiple_of(8) {
            return None;
        }
        if self.stacks[0].contains_span(addr, 16) {
            // SAFETY: as in `read_u64`, for the 16 bytes at `addr`, inside the thread's stack.
            let [a, b] = unsafe { read_words::<2>(addr) };
            return Some((a, b));
        }
        self.read_slow::<2>(addr).map(|[a, b]| (a, b))
    }

    #[inline(always)]
    unsafe fn read_pair_unchecked(&mut self, addr: u64) -> Option<(u64, u64)> {
        // SAFETY: the caller guarantees the 16 bytes lie inside a range `stack_range` returned
        // for which `reads_unchecked` said yes, and 8-aligned: the thread's stack, the
        // alternate stack or a registered stack (held by the read section or run on by this
        // thread), all readable.
        let [a, b] = unsafe { read_words::<2>(addr) };
        Some((a, b))
    }

    /// Not a mapping found in `/proc/self/maps`: that one is read through the kernel (see
    /// `range_of_slow`).
    #[inline(always)]
    fn reads_unchecked(&mut self, stack: Range) -> bool {
        let scanned = self.stacks[1];
        scanned.is_empty() || stack.hi <= scanned.lo || scanned.hi <= stack.lo
    }
}

/// Options for a live capture.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Ignore the transition table (a naive walk; for comparison). A naive walk is a
    /// frame-record walk: in a build without frame pointers it returns nothing
    /// ([`StopReason::NoFramePointers`](crate::StopReason::NoFramePointers)), even once CFI is
    /// prepared (which only the non-naive [`capture_with`] walks by).
    pub naive: bool,
    /// Stop after this many frames (0: the buffer's length).
    pub max_depth: usize,
}

/// How much stack a debug build's live capture wants left below it when it runs on an
/// alternate signal stack, a thread's own stack other than the main thread's, or any other
/// stack (a coroutine's, a segment) (measured: up to ~50 KiB unoptimised in a build without frame
/// pointers, which walks by CFI, ~17 KiB by frame records; an optimised build ~2 KiB). Short
/// of it, a debug build's capture writes nothing and says
/// [`StopReason::LowStack`](crate::frame::StopReason::LowStack) rather than run into the
/// stack's guard page. Both fit the 64 KiB alternate stack `cpu::register_thread` installs.
pub const DEBUG_WALK_STACK: usize = if cfg!(unwind_no_frame_pointers) {
    56 * 1024
} else {
    32 * 1024
};

/// Is there room for this build's walk on the stack it runs on? Always in optimised builds
/// (no `debug_assertions`: the check compiles away). In debug builds, one `sigaltstack` query
/// and the thread's stack bounds (cached; a `/proc/self/maps` scan the first time): at least
/// [`DEBUG_WALK_STACK`] bytes left on the alternate signal stack or the thread's stack it runs
/// on (the main thread's grows on demand; a coroutine's or segment's is not checked).
/// Async-signal-safe; leaves `errno` as it was.
#[inline(always)]
pub(crate) fn room_for_the_walk() -> bool {
    !cfg!(debug_assertions) || debug_room()
}

#[inline(never)]
fn debug_room() -> bool {
    let _errno = crate::live::errno::Saved::new();
    // SAFETY: a zeroed stack_t is valid; sigaltstack with a null new stack only reads the
    // current one into `old`.
    let mut old: libc::stack_t = unsafe { core::mem::zeroed() };
    // SAFETY: as above; `old` is a valid, writable stack_t.
    let on_alt = unsafe { libc::sigaltstack(core::ptr::null(), &mut old) } == 0
        && old.ss_flags & libc::SS_ONSTACK != 0;
    let here = 0u8;
    let sp = core::hint::black_box(&here) as *const u8 as usize;
    if on_alt {
        return sp.saturating_sub(old.ss_sp as usize) >= DEBUG_WALK_STACK;
    }
    // On the thread's own stack: a small one (`thread::Builder::stack_size(64 << 10)`) has no
    // room for an unoptimised walk either (found by outside use: a debug build's heap profiler
    // overflowed a 64 KiB thread). The main thread's stack grows on demand: its mapping's
    // extent is no limit.
    match thread_stack(sp as u64) {
        Some(t) if t.contains(sp as u64) => {
            (sp as u64 - t.lo) >= DEBUG_WALK_STACK as u64 || is_main_thread()
        }
        // Another stack (a coroutine's, a segment, the system stack, the main thread's grown
        // past its cached range): the mapping it is on, from `/proc/self/maps` (a scan per
        // capture, in debug builds only). A coroutine's 64 KiB stack had no room for a CPU
        // sample nested in a heap sample, and the walk ran into its guard page (found by
        // outside use in the twenty-eighth round). The main thread's `[stack]` grows on demand.
        _ => match maps::stack_like_at(sp as u64) {
            Some(m) if !m.main_stack => (sp as u64 - m.range.lo) >= DEBUG_WALK_STACK as u64,
            _ => true,
        },
    }
}

/// What a capture that had no room writes: nothing ([`room_for_the_walk`]).
#[cold]
pub(crate) fn no_room() -> Trace {
    Trace {
        len: 0,
        stop: crate::frame::StopReason::LowStack,
    }
}

/// Captures the current thread's call stack into `buf`, leaf first, starting with the caller of
/// `capture` (the return address into it). Returns the number of frames written.
///
/// Async-signal-safe: no allocation, no lock, no system call once the thread's stack is known
/// (see the module docs) in an optimised build; an unoptimised one (`debug_assertions`) makes
/// one `sigaltstack` call per capture (and, off the thread's own stack, a scan of
/// `/proc/self/maps`), to check that its walk has room (see
/// [`StopReason::LowStack`](crate::frame::StopReason::LowStack)). Crosses every registered
/// stack switch.
///
/// # Builds without frame pointers
/// The walk follows frame records, which x86_64 code keeps only when built with
/// `-C force-frame-pointers=yes` (a dependent crate's build does not have it unless it asks:
/// `rustflags = ["-C", "force-frame-pointers=yes"]` under `[build]` in its
/// `.cargo/config.toml`, as the crate's README, "Using `unwind` from your crate", shows). The
/// crate's build script notices a build without it. There `capture` (and
/// [`capture_with`], [`capture_from_ucontext`]) walks by the loaded modules' CFI instead, in
/// [`Mode::Hybrid`](crate::walk::Mode::Hybrid), once it is prepared ([`crate::init`],
/// `modules::refresh` or a profiler's start, `dwarf` feature): the same frames, several times slower per frame, and at
/// most `buf.len() - 1` of them. Without prepared CFI it writes nothing (a signal's capture: the
/// interrupted pc alone) and [`capture_with`] says [`StopReason::NoFramePointers`]: whatever
/// `rbp` holds in such a build is not a frame record, and following it gave frames that were
/// not the caller's.
///
/// [`StopReason::NoFramePointers`]: crate::frame::StopReason::NoFramePointers
#[inline(never)]
pub fn capture(buf: &mut [Frame]) -> usize {
    if cfg!(unwind_no_frame_pointers) {
        // (`dwarf::capture` looks at the room for its walk itself.)
        return capture_by_cfi(buf, 0).len;
    }
    if !room_for_the_walk() {
        return 0;
    }
    trace_from_here(current_regs(), buf).len
}

/// What [`records_from_here`] did: `n` frames written from frame records on the thread's own
/// stack (`mem`'s first range); the last record read ended at `floor` and pointed on to `fp`.
pub(crate) struct RecordRun {
    pub(crate) mem: LiveMemory,
    pub(crate) n: usize,
    pub(crate) fp: u64,
    pub(crate) floor: u64,
}

impl RecordRun {
    /// Is the capture complete: `buf` full, or the chain's end (a zero frame pointer after at
    /// least one frame: the general walker's `End`)?
    #[inline(always)]
    pub(crate) fn done(&self, buf: &[Frame]) -> bool {
        self.n == buf.len() || (self.n != 0 && self.fp == 0)
    }

    /// The thread's stack, which the run walked.
    #[cfg(feature = "dwarf")]
    #[inline(always)]
    pub(crate) fn stack(&self) -> Range {
        self.mem.stacks[0]
    }
}

/// The frame-pointer entry of a live capture: from the frame record of the function that read
/// `r` ([`current_regs`], inlined into a public capture function that keeps a frame record),
/// follows ordinary records on the thread's own stack with the walker's hot loop, inlined
/// (`keeps`: which functions' records may be followed, [`crate::walk::RecordTest`]). `None` when the
/// thread's stack is not known yet or `sp` is not on it (the general walker finds its stacks).
/// Async-signal-safe: no allocation, no lock, no system call.
#[inline(always)]
pub(crate) fn records_from_here(
    r: Regs,
    buf: &mut [Frame],
    keeps: impl crate::walk::RecordTest,
) -> Option<RecordRun> {
    let mut mem = own_stack(r.sp)?;
    let t = mem.stacks[0];
    let (n, fp, floor) = crate::walk::follow_records_inline::<Native, _, _>(
        &mut mem,
        &Pinned::new(),
        buf,
        t,
        r.sp,
        r.fp,
        0,
        0,
        keeps,
    );
    Some(RecordRun { mem, n, fp, floor })
}

/// The memory of the thread's own stack alone, when it is known and holds `sp` (a live
/// capture's common case; else `None`, and [`LiveMemory::for_sp`] finds the stacks).
/// Async-signal-safe.
#[inline(always)]
pub(crate) fn own_stack(sp: u64) -> Option<LiveMemory> {
    let t = THREAD_STACK.with(|c| c.get());
    t.contains(sp).then_some(LiveMemory {
        stacks: [t, Range::default(), Range::default(), Range::default()],
        held: Held::Nothing,
        _this_thread: core::marker::PhantomData,
    })
}

/// The rest of a [`capture`] whose hot loop stopped at something unusual (a transition, a
/// record off the stack): the general walker goes on from there, with the same memory.
/// `None` when no frame was written at all (the caller walks from scratch).
#[inline(never)]
fn resume(mem: &mut LiveMemory, buf: &mut [Frame], n: usize, fp: u64, floor: u64) -> Option<Trace> {
    let stack = mem.stacks[0];
    let (n, fp, floor) = match beside_transitions(mem, buf, stack, n, fp, floor) {
        Ok(trace) => return Some(trace),
        Err(at) => at,
    };
    if n == 0 {
        return None;
    }
    let mut w: Walker<Native, _, _> = Walker::new(Pinned::new());
    Some(
        w.resume_after_records(mem, buf, n, stack, fp, floor)
            .without_impossible_end(buf),
    )
}

#[cfg(test)]
thread_local! {
    /// Frames [`beside_transitions`] wrote on this thread (tests: that the path is taken).
    static BESIDE: Cell<usize> = const { Cell::new(0) };
}

/// Where the hot loop stopped at an ordinary record whose return address is on a page a
/// registered transition touches (the filter is per page) but in no transition: writes that
/// frame, as the general step would, and runs the hot loop on; again while it stops so. `Ok`:
/// the walk is done (a full buffer, or the chain's end after a frame), as [`RecordRun::done`]
/// says; `Err((n, fp, floor))`: the general walker goes on from there (anything else: a
/// transition, a zero return address, a record out of order or off the stack). Frames beside
/// a registered switch function (this crate's system stack, a coroutine library's
/// trampolines) no longer cost the general walker's set-up each.
#[inline(always)]
fn beside_transitions(
    mem: &mut LiveMemory,
    buf: &mut [Frame],
    stack: Range,
    mut n: usize,
    mut fp: u64,
    mut floor: u64,
) -> Result<Trace, (usize, u64, u64)> {
    use crate::transition::Transitions;
    let top = stack.hi.saturating_sub(Native::RECORD_SIZE);
    let table = Pinned::new();
    // (The hot loop's own conditions for an ordinary record.)
    while let Some(slot) = buf.get_mut(n) {
        if !fp.is_multiple_of(Native::FP_ALIGN) || fp < floor.max(stack.lo) || fp > top {
            break;
        }
        let Some((next, ra)) = mem.read_pair(fp) else {
            break;
        };
        let ra = Native::strip_ra(ra, 0);
        if ra == 0 || table.lookup(ra).is_some() {
            break;
        }
        Frame::write_raw(
            slot,
            ra,
            Frame::meta(0, crate::frame::Via::FramePointer, 0, 0),
        );
        #[cfg(test)]
        BESIDE.with(|c| c.set(c.get() + 1));
        n += 1;
        floor = fp + Native::RECORD_SIZE;
        fp = next;
        let (k, next_fp, next_floor) = crate::walk::follow_records::<Native, _, _>(
            mem,
            &table,
            &mut buf[n..],
            stack,
            floor,
            fp,
            0,
            0,
            crate::walk::AllRecords,
        );
        if k > 0 {
            n += k;
            fp = next_fp;
            floor = next_floor;
        }
        if n == buf.len() || fp == 0 {
            let stop = if n == buf.len() {
                crate::frame::StopReason::BufferFull
            } else {
                crate::frame::StopReason::End
            };
            return Ok(Trace { len: n, stop });
        }
    }
    Err((n, fp, floor))
}

/// [`capture`]'s walk with default [`Options`], returning why it stopped (as
/// [`capture_with`] does, but through the frame-pointer entry): `r` are the registers
/// [`current_regs`] read in a public capture function (inline this into it), whose caller is
/// frame 0. Async-signal-safe, as [`capture`].
///
/// The common case first, without the general walker's set-up: the thread's stack is known,
/// `sp` is on it, and frame records lead from the public function's own record up the stack.
/// The hot loop is the walker's own (`follow_records`); wherever it stops for anything but a
/// full buffer or the chain's end, the general walker goes on from there.
#[inline(always)]
pub(crate) fn trace_from_here(r: Regs, buf: &mut [Frame]) -> Trace {
    if let Some(run) = records_from_here(r, buf, crate::walk::AllRecords) {
        if run.done(buf) {
            let stop = if run.n == buf.len() {
                crate::frame::StopReason::BufferFull
            } else {
                crate::frame::StopReason::End
            };
            return Trace { len: run.n, stop };
        }
        // Made mutable here, on the cold path: `if let Some(mut run)` (or lending `resume`
        // the whole run) cost every capture ~18 instructions more (callgrind).
        let mut run = run;
        if let Some(t) = resume(&mut run.mem, buf, run.n, run.fp, run.floor) {
            return t;
        }
    }
    capture_from(r, buf)
}

/// [`capture`] returning why the walk stopped: the same walk as [`capture_with`] with default
/// [`Options`], through [`capture`]'s fast frame-pointer entry. Async-signal-safe.
#[cfg_attr(not(feature = "profilers"), allow(dead_code))]
#[inline(never)]
pub(crate) fn capture_trace(buf: &mut [Frame]) -> Trace {
    if cfg!(unwind_no_frame_pointers) {
        return capture_by_cfi(buf, 0);
    }
    trace_from_here(current_regs(), buf)
}

/// A walk run in the first `limit` slots of a buffer of `len`: one that filled them was cut
/// by the depth asked for (`MaxDepth`), not by the buffer, when the buffer had more room.
#[cfg(feature = "dwarf")]
#[cfg_attr(not(unwind_no_frame_pointers), allow(dead_code))]
#[inline(always)]
fn cut_by_depth(mut t: Trace, limit: usize, len: usize) -> Trace {
    if t.len == limit && limit < len && t.stop == crate::frame::StopReason::BufferFull {
        t.stop = crate::frame::StopReason::MaxDepth;
    }
    t
}

/// The live capture of a build without frame pointers ([`capture`]'s "Builds without frame
/// pointers"), inlined into a public capture function, whose caller becomes frame 0: a Hybrid
/// walk by the prepared CFI, one frame longer than wanted (its first frame, the return into
/// the public function, is dropped), or nothing. `max_depth` as [`Options::max_depth`].
/// Async-signal-safe.
#[cfg_attr(not(unwind_no_frame_pointers), allow(dead_code))]
#[inline(always)]
fn capture_by_cfi(buf: &mut [Frame], max_depth: usize) -> Trace {
    let limit = crate::walk::depth_limit(max_depth, buf.len());
    #[cfg(feature = "dwarf")]
    if let Some(u) = crate::modules::unwinder() {
        let room = (limit + 1).min(buf.len());
        let mut t = crate::dwarf::capture(&mut buf[..room], u, crate::walk::Mode::Hybrid);
        if t.len > 0 {
            buf.copy_within(1..t.len, 0);
            t.len -= 1;
        }
        return cut_by_depth(t, limit, buf.len());
    }
    let _ = limit;
    Trace {
        len: 0,
        stop: crate::frame::StopReason::NoFramePointers,
    }
}

/// [`capture`]'s general path: `r` are the registers [`capture`] read in its own frame (still
/// live: this is called from it), so the walk starts from the same frame record.
#[inline(never)]
fn capture_from(r: Regs, buf: &mut [Frame]) -> Trace {
    walk_from_regs(r, buf, Options::default())
}

/// [`capture`] with options, returning why the walk stopped too. Async-signal-safe.
#[inline(never)]
pub fn capture_with(buf: &mut [Frame], opts: Options) -> Trace {
    if !room_for_the_walk() {
        return no_room();
    }
    if cfg!(unwind_no_frame_pointers) {
        // A naive walk is a frame-record walk by definition: there are none to follow.
        return if opts.naive {
            Trace {
                len: 0,
                stop: crate::frame::StopReason::NoFramePointers,
            }
        } else {
            capture_by_cfi(buf, opts.max_depth)
        };
    }
    // The registers of this function: the walk starts from its own frame record.
    walk_from_regs(current_regs(), buf, opts)
}

/// The general walk from registers [`current_regs`] read in a public capture function (its
/// frame record, still live, is the start).
#[inline(always)]
fn walk_from_regs(r: Regs, buf: &mut [Frame], opts: Options) -> Trace {
    // SAFETY: `r.sp` is this thread's stack pointer (`current_regs` in the public function).
    let mut mem = unsafe { LiveMemory::for_own_sp(r.sp, None) };
    match start_here(r, &mut mem) {
        Some(start) => walk_live(start, &mut mem, buf, opts),
        None => empty(),
    }
}

/// The start of a capture at the calling function's own frame record (its return address is
/// the first frame): `r` are the registers [`current_regs`] read in that function (inline
/// this into it, so that "the calling function" is the public capture function), `mem` the
/// memory for `r.sp` ([`LiveMemory::for_sp`]). The memory is built by the caller and lent
/// here, not returned with the start (moving it made every capture reload a range just
/// written as two 8-byte stores with one 16-byte load, a store-forwarding stall).
#[inline(always)]
pub(crate) fn start_here(r: Regs, mem: &mut LiveMemory) -> Option<Start> {
    // One checked read of the record (the function's own, in its own frame on one stack).
    let (saved_fp, ra) = mem.read_pair(r.fp)?;
    Some(Start {
        regs: Regs::new(
            crate::arch::native::strip_pac_live(ra),
            r.fp.wrapping_add(16),
            saved_fp,
        ),
        pc_is_return_address: true,
    })
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
    // SAFETY: `alt` is the `uc_stack` the kernel filled in: the alternate stack this handler
    // runs on, mapped while it runs (the caller's contract).
    let mem = unsafe { LiveMemory::for_own_sp(regs.sp, alt) };
    (Start::exact(regs), mem)
}

pub(crate) fn empty() -> Trace {
    Trace {
        len: 0,
        stop: crate::frame::StopReason::ReadFailed,
    }
}

/// The general walk of a live capture, ended as [`resume`]'s and `dwarf::capture`'s walks
/// are, without impossible return addresses ([`Trace::without_impossible_end`]): the
/// frame-record captures' walks all end in one of these two.
#[inline(always)]
fn walk_live(start: Start, mem: &mut LiveMemory, buf: &mut [Frame], opts: Options) -> Trace {
    let t = if opts.naive {
        let mut w: Walker<Native, _, _> = Walker::new(crate::transition::NoTransitions);
        w.max_depth = opts.max_depth;
        w.walk(start, mem, buf)
    } else {
        // The live registry: lookups write no shared memory.
        let mut w: Walker<Native, _, _> = Walker::new(Pinned::new());
        w.max_depth = opts.max_depth;
        w.walk(start, mem, buf)
    };
    t.without_impossible_end(buf)
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
/// Where the modules' CFI is prepared (`dwarf` feature: [`crate::init`] in a build without
/// frame pointers, `modules::refresh`, a profiler's start) the walk is
/// [`Mode::Hybrid`](crate::walk::Mode::Hybrid)'s, in every build: the interrupted function
/// (libc's `raise`, any leaf) often keeps no frame record, and a frame-record walk from its
/// registers skips its caller (the record `rbp` still points at is the caller's own); the CFI
/// finds it. Without prepared CFI, a frame-record walk (in a build without frame pointers: the
/// interrupted pc alone).
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
    // By CFI when it is prepared (see above; in a build without frame pointers, see `capture`),
    // else by frame records (without them: the interrupted pc alone). The CFI walk reads the
    // ucontext (and looks at the room for its walk) itself.
    #[cfg(feature = "dwarf")]
    {
        let limit = crate::walk::depth_limit(opts.max_depth, buf.len());
        if let (Some(u), false) = (crate::modules::unwinder(), opts.naive) {
            // SAFETY: forwarded from the caller.
            let t = unsafe {
                crate::dwarf::capture_from_ucontext(
                    ucontext,
                    &mut buf[..limit],
                    u,
                    crate::walk::Mode::Hybrid,
                )
            };
            return cut_by_depth(t, limit, buf.len());
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { capture_from_ucontext_by_records(ucontext, buf, opts) }
}

/// [`capture_from_ucontext_with`] by frame records only, CFI prepared or not (the CPU
/// profiler's frame-pointer mode). In a build without frame pointers: the interrupted pc alone.
///
/// # Safety
/// `ucontext` must be the third argument the kernel passed to a `SA_SIGINFO` handler.
pub(crate) unsafe fn capture_from_ucontext_by_records(
    ucontext: *const libc::c_void,
    buf: &mut [Frame],
    opts: Options,
) -> Trace {
    if !room_for_the_walk() {
        return no_room();
    }
    // SAFETY: forwarded from the caller.
    unsafe { records_from_ucontext(ucontext, buf, opts) }
}

/// [`capture_from_ucontext_by_records`]'s walk, in a frame of its own, so that an unoptimised
/// build's room check runs before the walk's locals are reserved (see
/// `dwarf::walk_from_ucontext`).
///
/// # Safety
/// As [`capture_from_ucontext_by_records`].
#[inline(never)]
unsafe fn records_from_ucontext(
    ucontext: *const libc::c_void,
    buf: &mut [Frame],
    opts: Options,
) -> Trace {
    let limit = crate::walk::depth_limit(opts.max_depth, buf.len());
    // SAFETY: forwarded from the caller.
    let (start, mut mem) = unsafe { start_from_ucontext(ucontext) };
    if cfg!(unwind_no_frame_pointers) {
        let Some(first) = buf.get_mut(..limit).and_then(|b| b.first_mut()) else {
            return Trace {
                len: 0,
                stop: crate::frame::StopReason::BufferFull,
            };
        };
        *first = Frame {
            pc: start.regs.pc,
            stack: 0,
            via: crate::frame::Via::Regs,
            flags: Frame::EXACT,
            transition: 0,
        };
        return Trace {
            len: 1,
            stop: crate::frame::StopReason::NoFramePointers,
        };
    }
    walk_live(start, &mut mem, buf, opts)
}

mod maps {
    //! `/proc/self/maps` parsing with raw open/read/close: async-signal-safe, no allocation.
    use crate::memory::Range;

    /// One mapping, as a maps line describes it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Mapping {
        /// Its bounds.
        pub range: Range,
        /// Readable, writable, private and anonymous (no file: inode 0): what every stack is,
        /// and what can be read anywhere without a fault (a file mapping past the file's end
        /// raises SIGBUS).
        pub anon_rw: bool,
        /// Labelled `[stack]`: the main thread's stack.
        pub main_stack: bool,
        /// Readable (not a guard page).
        pub readable: bool,
    }

    /// What [`scan`] found.
    pub struct Scan {
        /// The mappings holding each address asked for.
        pub found: [Option<Mapping>; 2],
        /// The `[stack]` mapping, if the scan got that far.
        pub main_stack: Option<Range>,
        /// The first mapping above the first address asked for, if the scan got that far.
        pub above: Option<Mapping>,
    }

    /// [`stack_like_at`], else (then `true`) the stack-like mapping that starts above `addr`
    /// by at most `gap` bytes, with nothing mapped in between but an inaccessible guard: where
    /// a stack pointer that overflowed its stack (into the guard page or gap below it) came
    /// from. One scan.
    pub fn stack_at_or_above(addr: u64, gap: u64) -> Option<(Mapping, bool)> {
        let s = scan([addr, addr], false);
        match s.found[0] {
            Some(m) if m.readable => Some((m, false)).filter(|(m, _)| m.anon_rw),
            _ => s
                .above
                .filter(|m| m.anon_rw && m.range.lo - addr <= gap)
                .map(|m| (m, true)),
        }
    }

    /// The mapping that contains `addr`, if it is private, anonymous and read-write, as every
    /// stack is (one scan).
    pub fn stack_like_at(addr: u64) -> Option<Mapping> {
        scan([addr, addr], false).found[0].filter(|m| m.anon_rw)
    }

    /// The mapping that contains `addr`.
    #[cfg(test)]
    pub fn mapping_containing(addr: u64) -> Option<Range> {
        scan([addr, addr], false).found[0].map(|m| m.range)
    }

    /// Scans `/proc/self/maps` for the mappings holding `addrs` (and the `[stack]` mapping),
    /// stopping once all are found. Leaves `errno` as it found it: this runs inside user
    /// signal handlers and inside `GlobalAlloc`, whose callers may be about to read `errno`.
    /// With `want_main`, goes on to the `[stack]` line (near the end) after both are found.
    pub fn scan(addrs: [u64; 2], want_main: bool) -> Scan {
        let errno = crate::live::errno::Saved::new();
        let mut out = Scan {
            found: [None, None],
            main_stack: None,
            above: None,
        };
        scan_into(addrs, want_main, &mut out);
        drop(errno);
        out
    }

    fn scan_into(addrs: [u64; 2], want_main: bool, out: &mut Scan) {
        const PATH: &[u8] = b"/proc/self/maps\0";
        // SAFETY: PATH is NUL-terminated; open has no other preconditions.
        let fd = unsafe { libc::open(PATH.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return;
        }
        let note = |line: &[u8], out: &mut Scan| -> bool {
            if let Some(m) = parse_line(line) {
                for (f, &a) in out.found.iter_mut().zip(&addrs) {
                    if m.range.contains(a) {
                        *f = Some(m);
                    }
                }
                if out.above.is_none() && m.range.lo > addrs[0] {
                    out.above = Some(m);
                }
                if m.main_stack {
                    out.main_stack = Some(m.range);
                }
            }
            // Done when both addresses are placed and the mapping after the first seen (and
            // [stack] seen, when wanted).
            out.found.iter().all(|f| f.is_some())
                && out.above.is_some()
                && (!want_main || out.main_stack.is_some())
        };
        // Small: this runs in signal handlers on alternate signal stacks, std's 8 KiB ones
        // among them (with the kernel's ~3 KiB signal frame on them, a 4 KiB buffer here
        // overflowed them). A maps line's fields (all this reads) come within its first 100
        // bytes; a longer line's rest (a long path) is skipped.
        let mut buf = [0u8; 512];
        let mut have = 0usize;
        // Inside a line longer than the buffer (a long path): its start was parsed, the rest
        // of it is skipped up to its newline.
        let mut skipping = false;
        'outer: loop {
            // SAFETY: writes at most buf.len() - have bytes into the unused tail of buf.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().add(have).cast(), buf.len() - have) };
            if n <= 0 {
                if have > 0 && !skipping {
                    note(&buf[..have], out);
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
                if note(&buf[start..start + nl], out) {
                    break 'outer;
                }
                start += nl + 1;
            }
            buf.copy_within(start..have, 0);
            have -= start;
            if have == buf.len() {
                // A line longer than the buffer: its range, permissions and inode are at its
                // start.
                if note(&buf[..have], out) {
                    break;
                }
                skipping = true;
                have = 0;
            }
        }
        // SAFETY: fd was opened above and is closed once.
        unsafe { libc::close(fd) };
    }

    /// Parses `lo-hi perms offset dev inode [path]` (hex range) at the start of a maps line.
    pub fn parse_line(line: &[u8]) -> Option<Mapping> {
        let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
        let range = fields.next()?;
        let dash = range.iter().position(|&b| b == b'-')?;
        let lo = hex(&range[..dash])?;
        let hi = hex(&range[dash + 1..])?;
        if lo >= hi {
            return None;
        }
        let perms = fields.next().unwrap_or(b"");
        let _offset = fields.next();
        let _dev = fields.next();
        let inode = fields.next().unwrap_or(b"");
        let path = fields.next().unwrap_or(b"");
        Some(Mapping {
            range: Range::new(lo, hi),
            anon_rw: perms.starts_with(b"rw") && perms.get(3) == Some(&b'p') && inode == b"0",
            readable: perms.starts_with(b"r"),
            main_stack: path == b"[stack]",
        })
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
                Some(Mapping {
                    range: Range::new(0x7ffd1000, 0x7ffd3000),
                    anon_rw: true,
                    main_stack: true,
                    readable: true,
                })
            );
            assert_eq!(
                parse_line(b"1000-2000 rw-p 00000000 00:00 0 ").map(|m| (m.anon_rw, m.main_stack)),
                Some((true, false))
            );
            // File-backed, shared or read-only mappings are not stacks.
            for l in [
                &b"1000-2000 rw-p 00001000 08:01 1234   /usr/lib/x.so"[..],
                b"1000-2000 rw-s 00000000 00:01 0",
                b"1000-2000 r--p 00000000 00:00 0",
                b"1000-2000 ---p 00000000 00:00 0",
            ] {
                assert_eq!(parse_line(l).map(|m| m.anon_rw), Some(false));
            }
            assert_eq!(parse_line(b"garbage"), None);
            assert_eq!(parse_line(b"2000-1000 r"), None);
            assert_eq!(parse_line(b"12345678901234567-1 r"), None);
        }

        /// A maps line longer than the 512-byte buffer (a mapped file with a ~4000-byte path) before
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
            let page = crate::live::page_size();
            std::fs::write(&file, vec![7u8; page]).unwrap();
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
                    page,
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
                libc::munmap(p, page);
                libc::close(fd);
            }
            let _ = std::fs::remove_dir_all(&root);
            assert!(stack.is_some_and(|r| r.contains(a)), "{stack:?}");
            assert_eq!(low, Some(Range::new(hint as u64, (hint + page) as u64)));
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

/// The capture of a build without frame pointers ([`capture_by_cfi`]), run here in this
/// build (which has them): the same function, inlined into a function of its own as it is
/// into the public captures. (`offline`: the test names frames with the symbolizer.)
#[cfg(all(test, feature = "offline"))]
mod by_cfi_tests {
    use super::*;
    use crate::frame::StopReason;

    #[inline(never)]
    fn by_cfi(buf: &mut [Frame], max_depth: usize) -> Trace {
        capture_by_cfi(buf, max_depth)
    }

    #[inline(never)]
    fn by_records(buf: &mut [Frame]) -> Trace {
        capture_with(buf, Options::default())
    }

    #[inline(never)]
    pub(super) fn nest(n: usize, f: &mut dyn FnMut()) {
        if n == 0 {
            f();
        } else {
            nest(n - 1, f);
            core::hint::black_box(n);
        }
    }

    #[test]
    fn starts_at_the_caller_and_keeps_the_limits() {
        crate::modules::refresh();
        nest(12, &mut || {
            let mut all = [Frame::EMPTY; 64];
            let t = by_cfi(&mut all, 0);
            let mut want = [Frame::EMPTY; 64];
            let w = by_records(&mut want);
            // `by_cfi` stands for a public capture function (its caller, this closure, is frame
            // 0); `by_records` calls one: frame 0 is the return into `by_records`, unless the
            // optimiser inlined `capture_with` there (release builds), and then it is this
            // closure. The same callers from the closure on.
            assert!(t.len > 12 && w.len > 13, "{t:?} {w:?}");
            let pcs = |f: &[Frame]| f.iter().map(|f| f.pc).collect::<Vec<_>>();
            let sym = crate::symbols::Symbolizer::for_current_process();
            let name = |f: &Frame| sym.lookup(f.lookup_pc()).map(|s| s.name.to_string());
            assert!(name(&all[0]).unwrap().contains("{{closure}}"));
            let k = want[..2]
                .iter()
                .position(|f| name(f) == name(&all[0]))
                .unwrap_or_else(|| panic!("no closure frame in {w:?}"));
            assert_eq!(pcs(&all[1..12]), pcs(&want[k + 1..k + 12]));
            assert!(all[..12]
                .iter()
                .all(|f| f.via == crate::frame::Via::Dwarf
                    || f.via == crate::frame::Via::FramePointer));
            // A limit: exactly that many frames, `MaxDepth`.
            let mut buf = [Frame::EMPTY; 64];
            let d = by_cfi(&mut buf, 5);
            assert_eq!((d.len, d.stop), (5, StopReason::MaxDepth));
            assert_eq!(pcs(&buf[1..5]), pcs(&all[1..5]));
            // A small buffer: one slot goes to the dropped first frame.
            let mut small = [Frame::EMPTY; 4];
            let s = by_cfi(&mut small, 0);
            assert_eq!((s.len, s.stop), (3, StopReason::BufferFull));
            assert_eq!(pcs(&small[1..3]), pcs(&all[1..3]));
            let mut none: [Frame; 0] = [];
            assert_eq!(by_cfi(&mut none, 0).len, 0);
        });
    }
}

/// Frames beside a registered transition, on its page but not in it: `capture`'s frame-record
/// entry stops there (the filter is per page) and goes on itself, with the frames the general
/// walker gives.
#[cfg(test)]
mod beside_tests {
    use super::by_cfi_tests::nest;
    use super::*;
    use crate::transition::{register, unregister, Rule};

    #[test]
    fn frames_beside_a_registered_transition_are_the_general_walk_s() {
        nest(12, &mut || {
            let mut before = [Frame::EMPTY; 128];
            let b = capture(&mut before);
            // The return address into `nest`, twelve times on the stack.
            let ra = before[..b]
                .iter()
                .map(|f| f.pc)
                .max_by_key(|&pc| before[..b].iter().filter(|f| f.pc == pc).count())
                .unwrap();
            assert!(before[..b].iter().filter(|f| f.pc == ra).count() >= 12);
            // One byte beside it, on its page: inside the call instruction before it, which
            // is no return address of any walk.
            let at = if ra & 0xfff == 0 { ra + 1 } else { ra - 1 };
            let id = register(Range::new(at, at + 1), Rule::ContinueChain, "beside").unwrap();
            let written = BESIDE.with(|c| c.get());
            let mut during = [Frame::EMPTY; 128];
            let d = capture(&mut during);
            let beside = BESIDE.with(|c| c.get()) - written;
            let mut general = [Frame::EMPTY; 128];
            let g = capture_with(&mut general, Options::default()).len;
            unregister(id).unwrap();
            assert!(
                beside >= 1,
                "the hot loop's stops beside the transition were not taken"
            );
            // The same frames as before the registration (frame 0 is each call's own return
            // address); the general walk's from `nest` on (its frame 0 may differ more:
            // `capture_with` may be inlined into this closure).
            assert_eq!((d, &during[1..d]), (b, &before[1..b]));
            let from = |f: &[Frame]| f.iter().position(|x| x.pc == ra).unwrap();
            assert_eq!(
                &during[from(&during[..d])..d],
                &general[from(&general[..g])..g]
            );
        });
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    /// A read that runs from a readable page into an unmapped one is EFAULT, whatever errno
    /// held before (a partial read sets none: the stale value was taken for a refusal, and the
    /// caller's fallback then read the unreadable page in place).
    #[test]
    fn a_partial_read_is_efault() {
        let page = crate::live::page_size();
        // SAFETY: a fresh private anonymous mapping of two pages; the second is unmapped.
        let p = unsafe {
            let p = libc::mmap(
                core::ptr::null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(libc::munmap(p.cast::<u8>().add(page).cast(), page), 0);
            p as u64
        };
        let mut out = [0u8; 64];
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() = libc::EAGAIN };
        assert_eq!(
            copy_checked(p + page as u64 - 32, &mut out),
            Err(libc::EFAULT)
        );
        assert_eq!(copy_checked(p, &mut out), Ok(()));
        // SAFETY: the first page, mapped above.
        unsafe { libc::munmap(p as *mut libc::c_void, page) };
    }

    /// A range whose bottom page is a guard page loses it, whether the kernel's checked read
    /// answers (the probe) or not (`/proc/self/maps` then says, as under a seccomp filter that
    /// refuses `process_vm_readv`); a readable range stays whole.
    #[test]
    fn unreadable_bottom_pages_are_left_out_with_or_without_the_probe() {
        let page = crate::live::page_size() as u64;
        // SAFETY: a fresh private anonymous mapping of four pages, unmapped below.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                4 * page as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as u64;
        let r = Range::new(p, p + 4 * page);
        assert_eq!(without_guard_pages(r), r);
        assert_eq!(skip_unreadable_bottom(r, |_| None), r);
        // SAFETY: the mapping's first page, which nothing uses.
        let protected = unsafe { libc::mprotect(p as *mut libc::c_void, page as usize, 0) };
        assert_eq!(protected, 0);
        let rest = Range::new(p + page, p + 4 * page);
        assert_eq!(without_guard_pages(r), rest);
        assert_eq!(skip_unreadable_bottom(r, |_| None), rest);
        // SAFETY: unmaps the mapping made above.
        unsafe { libc::munmap(p as *mut libc::c_void, 4 * page as usize) };
    }
}

//! What a capture produces: frames that say where they came from, and why the walk stopped.

use core::fmt;

/// How a frame's pc was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Via {
    /// The initial registers (the interrupted pc of a signal, a core's thread pc); in an
    /// offline walk, also the return addresses found on the stack by the call before them, where
    /// a leaf and its callers have neither CFI nor a frame record (`unwind stack`).
    Regs = 0,
    /// A return address read from a frame record.
    FramePointer = 1,
    /// Recovered by a transition rule (the first frame on a new stack).
    Transition = 2,
    /// Recovered with DWARF call-frame information.
    Dwarf = 3,
}

impl Via {
    /// The name used in JSON output: `regs`, `fp`, `transition` or `dwarf`.
    pub const fn name(self) -> &'static str {
        match self {
            Via::Regs => "regs",
            Via::FramePointer => "fp",
            Via::Transition => "transition",
            Via::Dwarf => "dwarf",
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A code address in a trace and what kind of address it is (framehop's `FrameAddress` is the
/// model): the exact address of an instruction, or a return address.
///
/// The difference matters for every lookup (symbols, CFI rows, line tables): a return address
/// is the instruction after a call, which may be the first instruction of the next function,
/// so it is looked up at `address - 1`, inside the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameAddress {
    /// The address of the instruction executing: a thread's pc, an interrupted pc.
    InstructionPointer(u64),
    /// A return address: the instruction after a call.
    ReturnAddress(u64),
}

impl FrameAddress {
    /// `pc`, exact (an instruction pointer) or not (a return address).
    #[inline(always)]
    pub const fn new(pc: u64, exact: bool) -> Self {
        if exact {
            FrameAddress::InstructionPointer(pc)
        } else {
            FrameAddress::ReturnAddress(pc)
        }
    }

    /// The address as captured.
    #[inline(always)]
    pub const fn address(self) -> u64 {
        match self {
            FrameAddress::InstructionPointer(a) | FrameAddress::ReturnAddress(a) => a,
        }
    }

    /// The address to look up (symbols, CFI, lines): `address - 1` for a return address (so the
    /// lookup lands inside the call instruction), the address itself for an instruction pointer.
    #[inline(always)]
    pub const fn lookup_address(self) -> u64 {
        match self {
            FrameAddress::InstructionPointer(a) => a,
            FrameAddress::ReturnAddress(a) => a.wrapping_sub(1),
        }
    }

    /// Is this the exact address of an instruction?
    #[inline(always)]
    pub const fn is_exact(self) -> bool {
        matches!(self, FrameAddress::InstructionPointer(_))
    }
}

/// One captured frame. 16 bytes, `Copy`, no heap: a buffer of these is what a signal handler
/// fills. `repr(C)`: the pc is the first 8 bytes, the other fields (and 2 bytes of padding) the
/// next 8, so the walker's hot loop writes a frame as two 8-byte stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Frame {
    /// The program counter: a return address, or an exact pc when [`Frame::is_exact`].
    pub pc: u64,
    /// Which stack the frame was found on: 0 where the capture began, +1 after each transition.
    pub stack: u16,
    /// How the pc was found.
    pub via: Via,
    /// Bit flags ([`Frame::EXACT`]).
    pub flags: u8,
    /// The id of the transition that led to this frame ([`Via::Transition`] frames), else 0.
    pub transition: u16,
}

impl Frame {
    /// `flags` bit: `pc` is exact (an interrupted or current pc), not a return address.
    pub const EXACT: u8 = 1;
    /// `flags` bit, set by the profilers on a sample's outermost frame: the walk stopped there
    /// short of the stack's root ([`StopReason::stopped_early`]), so the profile marks the
    /// stack cut.
    pub const CUT_SHORT: u8 = 2;

    /// An empty frame, for initialising buffers.
    pub const EMPTY: Frame = Frame {
        pc: 0,
        stack: 0,
        via: Via::Regs,
        flags: 0,
        transition: 0,
    };

    /// The 8 bytes after `pc` of a frame with these fields (what [`Frame::write_raw`] stores).
    #[inline(always)]
    pub(crate) const fn meta(stack: u16, via: Via, flags: u8, transition: u16) -> u64 {
        let s = stack.to_ne_bytes();
        let t = transition.to_ne_bytes();
        u64::from_ne_bytes([s[0], s[1], via as u8, flags, t[0], t[1], 0, 0])
    }

    /// Writes a frame as two 8-byte stores: `pc`, then `meta` from [`Frame::meta`] (the hot loop
    /// computes `meta` once per run; field by field the compiler stores it in two or three
    /// pieces).
    #[inline(always)]
    pub(crate) fn write_raw(slot: &mut Frame, pc: u64, meta: u64) {
        // SAFETY: `Frame` is `repr(C)`, 16 bytes, 8-aligned: `pc` at offset 0, then `stack`
        // (u16), `via` (u8), `flags` (u8), `transition` (u16) and 2 bytes of padding, which is
        // exactly the byte layout `meta` builds; `slot` is a unique reference to one `Frame`, so
        // writing two u64s through it stays in bounds and aligned. `meta` comes from
        // `Frame::meta`, whose third byte is a `Via` discriminant, so the frame written is a
        // valid `Frame`.
        unsafe { core::ptr::write(slot as *mut Frame as *mut [u64; 2], [pc, meta]) }
    }

    /// Is `pc` the exact address of an instruction (not a return address)?
    #[inline]
    pub const fn is_exact(&self) -> bool {
        self.flags & Self::EXACT != 0
    }

    /// The frame's pc as a [`FrameAddress`].
    #[inline]
    pub const fn address(&self) -> FrameAddress {
        FrameAddress::new(self.pc, self.is_exact())
    }

    /// The address to symbolise: [`FrameAddress::lookup_address`] of [`Frame::address`].
    #[inline]
    pub const fn lookup_pc(&self) -> u64 {
        self.address().lookup_address()
    }
}

impl Default for Frame {
    fn default() -> Self {
        Frame::EMPTY
    }
}

/// Why a walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The chain ended normally: a zero frame pointer or a zero return address (thread entry).
    End,
    /// The buffer was full.
    BufferFull,
    /// The configured maximum depth was reached.
    MaxDepth,
    /// A frame pointer was not aligned.
    Misaligned,
    /// A frame pointer pointed outside every readable stack, or the memory refused a read.
    ReadFailed,
    /// The caller's frame did not lie strictly above the callee's on the same stack (a frame
    /// pointer, or a CFI step's CFA), and no transition explained it. Named "frame not moving
    /// up the stack" (it said "frame pointer" in Dwarf mode too, where no frame pointer is
    /// read: found by outside use in the twenty-fifth round).
    NotMonotonic,
    /// A transition rule matched but its saved registers could not be read or made no sense.
    BadTransition,
    /// The DWARF unwinder could not unwind this frame (no CFI, or an unsupported rule).
    NoUnwindInfo,
    /// Too many transitions crossed (a loop of stacks).
    TooManyTransitions,
    /// A live frame-pointer walk in a build whose code keeps no frame records (x86_64 without
    /// `-C force-frame-pointers=yes`), with no prepared CFI to walk by instead
    /// (`init` or `modules::refresh`, `dwarf` feature): nothing past the first frame a signal's
    /// registers give could be trusted. See [`crate::capture`].
    NoFramePointers,
    /// The chain ended (a zero frame pointer or return address) short of where the program's
    /// stacks begin (offline walks): a Go walk that stops in Go code other than
    /// `runtime.goexit`, `mstart`, `rt0_go` or `mcall`, or a frame-record walk of a C or Rust
    /// program that stops in a named function other than a process's or thread's entry
    /// (`runtime_names::C_STACK_ROOTS`: a zero frame pointer in code that keeps none).
    EndedShort,
    /// A return address lay in no executable memory (offline walks, where the memory tells
    /// code from data: a core's segment flags, a process's maps; live walks, where no code can
    /// be: below 64 KiB or above user space): a data word read as a frame record, in code that
    /// uses the frame pointer as a general register. That frame and any after it were left
    /// out.
    NotCode,
    /// A debug build's live capture asked on an alternate signal stack, a small thread stack
    /// (not the main thread's) or another small stack (a coroutine's), with less than [`crate::live::DEBUG_WALK_STACK`] bytes (32 or
    /// 56 KiB) left below it: unoptimised, a walk takes tens of KiB of stack (release builds
    /// ~2 KiB, and never stop for this), which would overflow it (std gives every thread an
    /// 8 KiB alternate stack). Nothing was written.
    LowStack,
}

impl StopReason {
    /// Did the walk stop anywhere but at a marked end (a zero frame pointer or return address,
    /// a return address the CFI leaves undefined)? Such a stop may still be the stack's root:
    /// in a frame-pointer build a main thread's frame-record walk ends `Misaligned` or
    /// `NotMonotonic` below `main`, because glibc's `__libc_start_call_main` keeps no frame
    /// record (every frame from the leaf to `main` is in the trace); Hybrid and Dwarf walks
    /// read the CFI there and end `End`.
    #[inline]
    pub const fn is_truncated(self) -> bool {
        !matches!(self, StopReason::End)
    }

    /// Did the walk stop short of the stack's root for a reason other than the buffer or the
    /// depth asked for (which cut a stack too, but at a known place)? In
    /// [`Mode::FramePointer`](crate::walk::Mode::FramePointer) a main thread's usual end (see
    /// [`StopReason::is_truncated`]) is one of these; the CFI modes end there with `End`.
    #[inline]
    pub const fn stopped_early(self) -> bool {
        !matches!(
            self,
            StopReason::End | StopReason::BufferFull | StopReason::MaxDepth
        )
    }

    /// A short lowercase name, for JSON and logs.
    pub const fn name(self) -> &'static str {
        match self {
            StopReason::End => "end",
            StopReason::BufferFull => "buffer full",
            StopReason::MaxDepth => "max depth",
            StopReason::Misaligned => "misaligned frame pointer",
            StopReason::ReadFailed => "unreadable frame record",
            StopReason::NotMonotonic => "frame not moving up the stack",
            StopReason::BadTransition => "unreadable transition",
            StopReason::NoUnwindInfo => "no unwind information",
            StopReason::TooManyTransitions => "too many transitions",
            StopReason::NoFramePointers => "built without frame pointers",
            StopReason::EndedShort => "ended short of the stack's root",
            StopReason::NotCode => "return address not in code",
            StopReason::LowStack => "too little stack left for an unoptimised walk",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The result of a walk: how many frames were written and why it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trace {
    /// Number of frames written to the buffer.
    pub len: usize,
    /// Why the walk stopped.
    pub stop: StopReason,
}

impl Trace {
    /// Did the walk stop before the real end of the stack?
    #[inline]
    pub const fn truncated(&self) -> bool {
        self.stop.is_truncated()
    }

    /// A live walk's end: where it stopped early after writing frames whose return address no
    /// code can have (below the lowest address Linux maps by default, 64 KiB, or above user
    /// space), those frames are taken back and the stop is [`StopReason::NotCode`]. A broken
    /// chain's last record read a data word for a return address (found by outside use:
    /// `0x6b` after libc's `open64` in a frame-record walk, `0xb7d1b000b7acb` from CFI a
    /// `dlclose`d library left at an address another library took). The first frame (the
    /// interrupted or current pc) is kept whatever it is. No cost where the walk ended well.
    #[cfg_attr(not(feature = "live"), allow(dead_code))]
    #[inline(always)]
    pub(crate) fn without_impossible_end(self, buf: &[Frame]) -> Trace {
        if !self.stop.stopped_early() || self.len < 2 {
            return self;
        }
        self.take_back_impossible(buf)
    }

    #[cfg_attr(not(feature = "live"), allow(dead_code))]
    #[cold]
    #[inline(never)]
    fn take_back_impossible(mut self, buf: &[Frame]) -> Trace {
        while self.len >= 2 {
            match buf.get(self.len - 1) {
                Some(f) if !could_be_code(f.pc) => {
                    self.len -= 1;
                    self.stop = StopReason::NotCode;
                }
                _ => break,
            }
        }
        self
    }
}

/// Could a live process have code at `pc`? Not below 64 KiB (`vm.mmap_min_addr`'s default;
/// nothing is mapped there unless an administrator lowered it), nor above user space (47-bit
/// on x86_64, where the kernel maps higher only for a process that asks with an address hint;
/// 52-bit on aarch64).
#[cfg_attr(not(feature = "live"), allow(dead_code))]
#[inline]
pub(crate) const fn could_be_code(pc: u64) -> bool {
    const LOW: u64 = 0x1_0000;
    #[cfg(target_arch = "aarch64")]
    const TOP: u64 = 1 << 52;
    #[cfg(not(target_arch = "aarch64"))]
    const TOP: u64 = 1 << 47;
    pc >= LOW && pc < TOP
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_return_addresses_end_an_early_stop() {
        let f = |pc| Frame {
            pc,
            via: Via::FramePointer,
            ..Frame::EMPTY
        };
        let buf = [f(0x6b), f(0x40_1000), f(0x6b), f(0xb_7d1b_000b_7acb)];
        let t = |len, stop| Trace { len, stop };
        // Trailing impossible frames go; the first frame stays whatever it is.
        assert_eq!(
            t(4, StopReason::Misaligned).without_impossible_end(&buf),
            t(2, StopReason::NotCode)
        );
        assert_eq!(
            t(1, StopReason::Misaligned).without_impossible_end(&buf),
            t(1, StopReason::Misaligned)
        );
        // A walk that ended well is left as it is; so is a plausible last frame.
        assert_eq!(
            t(4, StopReason::End).without_impossible_end(&buf),
            t(4, StopReason::End)
        );
        assert_eq!(
            t(2, StopReason::NoUnwindInfo).without_impossible_end(&buf),
            t(2, StopReason::NoUnwindInfo)
        );
        assert!(could_be_code(0x5555_5555_4000) && could_be_code(0x7fff_f7dd_0000));
        assert!(!could_be_code(0xd078) && !could_be_code(u64::MAX));
    }

    #[test]
    fn frame_is_16_bytes() {
        assert_eq!(core::mem::size_of::<Frame>(), 16);
    }

    #[test]
    fn raw_write_is_a_field_write() {
        let want = Frame {
            pc: 0x1234_5678,
            stack: 0x0102,
            via: Via::Dwarf,
            flags: Frame::EXACT,
            transition: 0x0a0b,
        };
        let mut f = Frame::EMPTY;
        Frame::write_raw(
            &mut f,
            want.pc,
            Frame::meta(want.stack, want.via, want.flags, want.transition),
        );
        assert_eq!(f, want);
        for via in [Via::Regs, Via::FramePointer, Via::Transition, Via::Dwarf] {
            Frame::write_raw(&mut f, 7, Frame::meta(u16::MAX, via, 0, 0));
            assert_eq!(
                (f.pc, f.stack, f.via, f.flags, f.transition),
                (7, u16::MAX, via, 0, 0)
            );
        }
    }

    #[test]
    fn lookup_pc() {
        let mut f = Frame {
            pc: 0x1000,
            ..Frame::EMPTY
        };
        assert_eq!(f.lookup_pc(), 0xfff);
        f.flags = Frame::EXACT;
        assert_eq!(f.lookup_pc(), 0x1000);
        f.pc = 0;
        f.flags = 0;
        assert_eq!(f.lookup_pc(), u64::MAX);
    }

    #[test]
    fn only_end_is_complete() {
        assert!(!StopReason::End.is_truncated());
        assert!(StopReason::BufferFull.is_truncated());
        assert_eq!(
            StopReason::Misaligned.to_string(),
            "misaligned frame pointer"
        );
    }
}

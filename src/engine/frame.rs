//! What a capture produces: frames that say where they came from, and why the walk stopped.

use core::fmt;

/// How a frame's pc was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Via {
    /// The initial registers (the interrupted pc of a signal, a core's thread pc).
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
/// fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

    /// An empty frame, for initialising buffers.
    pub const EMPTY: Frame = Frame {
        pc: 0,
        stack: 0,
        via: Via::Regs,
        flags: 0,
        transition: 0,
    };

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
    /// A frame pointer did not move strictly up the same stack, and no transition explained it.
    NotMonotonic,
    /// A transition rule matched but its saved registers could not be read or made no sense.
    BadTransition,
    /// The DWARF unwinder could not unwind this frame (no CFI, or an unsupported rule).
    NoUnwindInfo,
    /// Too many transitions crossed (a loop of stacks).
    TooManyTransitions,
}

impl StopReason {
    /// Did the walk stop before the real end of the stack?
    #[inline]
    pub const fn is_truncated(self) -> bool {
        !matches!(self, StopReason::End)
    }

    /// A short lowercase name, for JSON and logs.
    pub const fn name(self) -> &'static str {
        match self {
            StopReason::End => "end",
            StopReason::BufferFull => "buffer full",
            StopReason::MaxDepth => "max depth",
            StopReason::Misaligned => "misaligned frame pointer",
            StopReason::ReadFailed => "unreadable frame record",
            StopReason::NotMonotonic => "frame pointer not moving up the stack",
            StopReason::BadTransition => "unreadable transition",
            StopReason::NoUnwindInfo => "no unwind information",
            StopReason::TooManyTransitions => "too many transitions",
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_16_bytes() {
        assert_eq!(core::mem::size_of::<Frame>(), 16);
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

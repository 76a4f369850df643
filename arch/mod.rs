//! Architecture backends.
//!
//! Each architecture is an empty marker type implementing [`Arch`]: the frame-record layout,
//! return-address fix-ups (pointer-authentication stripping), and the Linux signal-frame layout.
//! Every backend compiles on every host, so an x86_64 machine can unwind an aarch64 core; only
//! live register capture (inline asm) is selected for the build target, in [`native`].

pub mod aarch64;
pub mod x86_64;

pub use aarch64::Aarch64;
pub use x86_64::X86_64;

/// The registers a walk needs. `lr` is aarch64's link register (x30); on x86_64 it carries
/// `r11` at an interrupted pc (a signal's, a core's or a stopped thread's registers), the
/// register LLVM's inline stack probes compute the CFA from while they touch a large frame's
/// pages, and is 0 elsewhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// Program counter (instruction pointer).
    pub pc: u64,
    /// Stack pointer.
    pub sp: u64,
    /// Frame pointer (rbp on x86_64, x29 on aarch64).
    pub fp: u64,
    /// Link register (x30 on aarch64); on x86_64, `r11` at an interrupted pc, else 0.
    pub lr: u64,
}

impl Regs {
    /// Registers from pc, sp and fp (no link register).
    #[inline(always)]
    pub const fn new(pc: u64, sp: u64, fp: u64) -> Self {
        Regs { pc, sp, fp, lr: 0 }
    }
}

/// Which architecture a stack, a core or a trace belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArchKind {
    /// x86_64 (amd64).
    X86_64,
    /// aarch64 (arm64).
    Aarch64,
}

impl ArchKind {
    /// The architecture this crate was built for, if it is one we support.
    pub const fn native() -> Option<ArchKind> {
        if cfg!(target_arch = "x86_64") {
            Some(ArchKind::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(ArchKind::Aarch64)
        } else {
            None
        }
    }

    /// The name used in JSON output and on the command line: `x86_64` or `aarch64`.
    pub const fn name(self) -> &'static str {
        match self {
            ArchKind::X86_64 => "x86_64",
            ArchKind::Aarch64 => "aarch64",
        }
    }
}

impl core::fmt::Display for ArchKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the generic walker needs to know about an architecture.
///
/// Both supported architectures use a two-word frame record `[fp] = caller fp`,
/// `[fp + 8] = return address`; they differ in alignment, return-address encoding and in how the
/// kernel lays out a signal frame.
pub trait Arch: Copy + Default + core::fmt::Debug + Send + Sync + 'static {
    /// Which architecture this is.
    const KIND: ArchKind;
    /// A frame-record address must be a multiple of this.
    const FP_ALIGN: u64;
    /// Offset from a frame record of the saved caller frame pointer.
    const RECORD_FP: u64 = 0;
    /// Offset from a frame record of the saved return address.
    const RECORD_RA: u64 = 8;
    /// Size of a frame record in bytes.
    const RECORD_SIZE: u64 = 16;
    /// How far below the stack pointer a live frame record may sit (Go's arm64 frames keep
    /// theirs at `sp - 8`); records further below are dead stack.
    const RECORD_BELOW_SP: u64 = 0;
    /// Offset of the `ucontext` from the stack pointer at the sigreturn trampoline.
    const UC_FROM_SIGFRAME_SP: u64;
    /// Offset of `uc_stack` (the `stack_t` the kernel saved) in a `ucontext`.
    const UC_STACK: u64 = 0x10;

    /// Removes whatever the architecture adds to a return address (pointer authentication on
    /// aarch64, using `pac_mask`: the bits to clear; 0 = use the default for Linux user space).
    fn strip_ra(ra: u64, pac_mask: u64) -> u64;

    /// Reads pc/sp/fp/lr out of a `ucontext_t` at `uc`.
    fn ucontext_regs(uc: u64, read: &mut dyn FnMut(u64) -> Option<u64>) -> Option<Regs>;

    /// Does `code` (the bytes at a return address) start with the Linux sigreturn trampoline?
    fn is_sigreturn(code: &[u8]) -> bool;

    /// The stack pointer at the sigreturn trampoline, for a signal handler whose frame record is
    /// at `handler_fp` and whose saved caller frame pointer is `next_fp`. The rt_sigframe (and its
    /// `ucontext`, at [`Arch::UC_FROM_SIGFRAME_SP`]) starts there.
    fn sigframe_sp(
        handler_fp: u64,
        next_fp: u64,
        read: &mut dyn FnMut(u64) -> Option<u64>,
    ) -> Option<u64>;

    /// Does a call leave the return address in a register (aarch64's x30), so that an
    /// interrupted leaf may have its caller only there?
    const HAS_LINK_REGISTER: bool = false;

    /// The caller's stack pointer after a frame-record step, given the end of the record. On
    /// x86_64 the record (`push rbp` right below the return address) ends at the caller's sp at
    /// the call. On aarch64 the record sits at the bottom of the callee's frame and the caller's
    /// sp is not known: 0 ("unknown"), so that a CFI rule needing sp fails instead of using a
    /// wrong value.
    fn caller_sp_after_record(end_of_record: u64) -> u64;

    /// For an interrupted pc with a link register: is `lr` the return address of the function
    /// `pc` is in (a leaf, or a function interrupted before it pushed its frame record)?
    /// `read_code` reads instruction bytes. Architectures without a link register: false.
    fn lr_is_live(pc: u64, lr: u64, read_code: &mut dyn FnMut(u64, &mut [u8]) -> bool) -> bool {
        let _ = (pc, lr, read_code);
        false
    }

    /// For an interrupted pc in a function prologue, before the frame record is linked (the
    /// frame pointer is still the caller's): where the return address is, decoded from the
    /// instructions at `pc`. `None`: not in a recognised prologue (the frame record decides).
    fn prologue_ra_slot(
        pc: u64,
        sp: u64,
        read_code: &mut dyn FnMut(u64, &mut [u8]) -> bool,
    ) -> Option<u64> {
        let _ = (pc, sp, read_code);
        None
    }
}

cfg_if::cfg_if! {
    if #[cfg(target_arch = "x86_64")] {
        #[path = "x86_64_live.rs"]
        mod x86_64_live;
        /// Live support for the architecture this crate is built for.
        pub mod native {
            use super::x86_64_live as live;
            pub use super::X86_64 as Native;
            /// Registers of the calling function: pc, sp, fp, and lr (0 on x86_64).
            #[inline(always)]
            pub fn current_regs() -> super::Regs {
                let (pc, sp, fp) = live::current_regs();
                super::Regs { pc, sp, fp, lr: 0 }
            }
            pub use live::strip_pac_live;
        }
    } else if #[cfg(target_arch = "aarch64")] {
        #[path = "aarch64_live.rs"]
        mod aarch64_live;
        /// Live support for the architecture this crate is built for.
        pub mod native {
            use super::aarch64_live as live;
            pub use super::Aarch64 as Native;
            /// Registers of the calling function: pc, sp, fp (x29) and lr (x30).
            #[inline(always)]
            pub fn current_regs() -> super::Regs {
                let (pc, sp, fp, lr) = live::current_regs();
                super::Regs { pc, sp, fp, lr }
            }
            pub use live::strip_pac_live;
        }
    }
}

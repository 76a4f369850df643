//! Stack switches known by the symbol of their trampoline: one table for the live built-ins
//! ([`crate::builtin`], feature `live`) and for cores (`unwind stack`, feature `offline`), so
//! both find the same switches under the same names with the same rules.

use crate::arch::ArchKind;
use crate::transition::{Base, Rule};

/// What a table entry for a found symbol covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Covers {
    /// The whole function (its symbol's size): any return address inside it.
    Function,
    /// Exactly the symbol's address (a label that is itself the return address).
    Label,
}

/// A stack switch found by symbol.
#[derive(Clone, Copy, Debug)]
pub struct KnownSwitch {
    /// The trampoline's symbol.
    pub symbol: &'static str,
    /// The name its transition is registered under (shown in traces).
    pub name: &'static str,
    /// What the entry covers.
    pub covers: Covers,
    /// The rule on x86_64.
    pub rule_x86_64: Rule,
    /// The rule on aarch64.
    pub rule_aarch64: Rule,
    /// Is it a switch to a system stack (the boundary between a trace's system and user parts,
    /// like Go's `systemstack`)?
    pub system: bool,
}

impl KnownSwitch {
    /// The rule for `arch`.
    pub const fn rule(&self, arch: ArchKind) -> Rule {
        match arch {
            ArchKind::X86_64 => self.rule_x86_64,
            ArchKind::Aarch64 => self.rule_aarch64,
        }
    }
}

/// The symbol of `unwind`'s own system-stack trampoline (`unwind::system_stack::run`): the
/// only return address inside it is the switch's.
pub const SYSTEM_STACK_SYMBOL: &str = "unwind_0_1_system_stack_switch";

/// The system-stack trampoline's rule on x86_64: the three words (user sp, pc, fp) at the
/// callee's CFA (see `unwind::system_stack`'s docs).
pub const SYSTEM_STACK_RULE_X86_64: Rule = Rule::SavedAt {
    base: Base::Cfa,
    pc: 16,
    sp: Some(8),
    fp: 24,
};

/// The system-stack trampoline's rule on aarch64: its record on the user stack, found through
/// the callee's saved frame pointer.
pub const SYSTEM_STACK_RULE_AARCH64: Rule = Rule::SavedAt {
    base: Base::SavedFp,
    pc: 8,
    sp: Some(16),
    fp: 0,
};

/// corosensei's coroutine root: the saved fp of the frame returning to
/// `stack_init_trampoline_return` is the parent link, which holds the parent's sp; the parent's
/// fp and pc were pushed there (corosensei `src/arch/{x86_64,aarch64}.rs`, "Stack layout"),
/// and the parent's stack pointer is past them: 24 bytes on x86_64 (rbp, rip, rbx), the CFA
/// of corosensei's own CFI for its trampoline. Without it a walk by CFI (a build without frame
/// pointers) could not go on in the parent.
pub const COROSENSEI_RULE: Rule = Rule::SavedAt {
    base: Base::LinkPlus(24),
    pc: 8,
    sp: None,
    fp: 0,
};

/// [`COROSENSEI_RULE`] on aarch64: 32 bytes pushed (x29, lr, x19 and padding).
pub const COROSENSEI_RULE_AARCH64: Rule = Rule::SavedAt {
    base: Base::LinkPlus(32),
    pc: 8,
    sp: None,
    fp: 0,
};

/// `unwind`'s system stack.
pub const SYSTEM_STACK: KnownSwitch = KnownSwitch {
    symbol: SYSTEM_STACK_SYMBOL,
    name: "unwind::system_stack",
    covers: Covers::Function,
    rule_x86_64: SYSTEM_STACK_RULE_X86_64,
    rule_aarch64: SYSTEM_STACK_RULE_AARCH64,
    system: true,
};

/// psm's `rust_psm_on_stack` (`stacker::maybe_grow`, `psm::on_stack`): the frame chain
/// continues on the old stack.
pub const PSM_ON_STACK: KnownSwitch = KnownSwitch {
    symbol: "rust_psm_on_stack",
    name: "psm rust_psm_on_stack",
    covers: Covers::Function,
    rule_x86_64: Rule::ContinueChain,
    rule_aarch64: Rule::ContinueChain,
    system: false,
};

/// corosensei's `stack_call_trampoline` (`corosensei::on_stack`).
pub const COROSENSEI_ON_STACK: KnownSwitch = KnownSwitch {
    symbol: "stack_call_trampoline",
    name: "corosensei stack_call_trampoline",
    covers: Covers::Function,
    rule_x86_64: Rule::ContinueChain,
    rule_aarch64: Rule::ContinueChain,
    system: false,
};

/// corosensei's coroutine root (`stack_init_trampoline_return`, a label).
pub const COROSENSEI_COROUTINE: KnownSwitch = KnownSwitch {
    symbol: "stack_init_trampoline_return",
    name: "corosensei stack_init_trampoline_return",
    covers: Covers::Label,
    rule_x86_64: COROSENSEI_RULE,
    rule_aarch64: COROSENSEI_RULE_AARCH64,
    system: false,
};

/// GCC's segmented stacks (`-fsplit-stack`, gccgo): a function whose frame does not fit calls
/// libgcc's `__morestack` from its prologue, which allocates a new segment, moves sp there
/// and calls the rest of the function on it. Its frame record stays on the old stack, and
/// above it the return into the prologue and the function's caller's return address; its CFI
/// (CFA = rbp + 24, the return address at rbp + 16) skips the prologue's return, as gdb shows
/// the stack. The same from the frame record the function's body saved (or left in rbp):
/// the caller's pc at saved fp + 16, its fp at saved fp, its sp the CFA (libgcc
/// `config/i386/morestack.S`). Every return address inside `__morestack` is covered: the
/// rule holds wherever its record is set up, which is everywhere it calls out. GCC has no
/// split stacks on aarch64: there the entry would never match anything it could mean, so it
/// only continues the chain.
pub const GCC_MORESTACK: KnownSwitch = KnownSwitch {
    symbol: "__morestack",
    name: "gcc __morestack (split stack)",
    covers: Covers::Function,
    rule_x86_64: Rule::SavedAt {
        base: Base::SavedFpPlus(24),
        pc: 16,
        sp: None,
        fp: 0,
    },
    rule_aarch64: Rule::ContinueChain,
    system: false,
};

/// Every switch found by symbol.
pub const BY_SYMBOL: [KnownSwitch; 5] = [
    SYSTEM_STACK,
    PSM_ON_STACK,
    COROSENSEI_ON_STACK,
    COROSENSEI_COROUTINE,
    GCC_MORESTACK,
];

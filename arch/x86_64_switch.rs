// x86_64 system-stack trampoline: `unwind_0_1_system_stack_switch(arg, f, top)` stores the user
// sp, pc and fp in the three words below `top` (at the callee's CFA + 8, + 16, + 24), switches
// rsp to the system stack, calls `f(arg)` and switches back. `unwind_0_1_system_stack_return`
// labels the return address inside it. The rule that reads the saved words is
// `unwind::switches::SYSTEM_STACK_RULE_X86_64`.
//
// Dependency-free on purpose: `src/live/system_stack.rs` `include!`s it.

// extern "sysv64" fn(arg: rdi, f: rsi, top: rdx). Callee-saved registers other than rbp are not
// touched here and are preserved by `f`. The CFI describes the user-side frame so DWARF
// unwinders (panic backtraces) cross the switch too.
//
// The trampoline has a 4 KiB page of its own (its own section, page-aligned and padded to a
// page): the walker's hot loop tests return addresses against the transition table's page
// filter, one entry per 4 KiB page, and a caller's code sharing the trampoline's page would
// leave the hot loop at every frame there.
core::arch::global_asm!(
    ".pushsection .text.unwind_0_1_system_stack_switch,\"ax\",@progbits",
    ".p2align 12",
    ".globl unwind_0_1_system_stack_switch",
    ".hidden unwind_0_1_system_stack_switch",
    ".type unwind_0_1_system_stack_switch, @function",
    "unwind_0_1_system_stack_switch:",
    ".cfi_startproc",
    "push rbp",
    ".cfi_def_cfa_offset 16",
    ".cfi_offset rbp, -16",
    "mov rbp, rsp",
    ".cfi_def_cfa_register rbp",
    "lea rax, [rbp + 16]",
    "mov [rdx - 24], rax", // user sp   at cfa + 8
    "mov rax, [rbp + 8]",
    "mov [rdx - 16], rax", // user pc   at cfa + 16
    "mov rax, [rbp]",
    "mov [rdx - 8], rax", // user fp   at cfa + 24
    "mov qword ptr [rdx - 32], 0",
    "lea rsp, [rdx - 32]",
    "call rsi",
    ".globl unwind_0_1_system_stack_return",
    ".hidden unwind_0_1_system_stack_return",
    "unwind_0_1_system_stack_return:",
    "mov rsp, rbp",
    "pop rbp",
    ".cfi_def_cfa rsp, 8",
    "ret",
    ".cfi_endproc",
    ".size unwind_0_1_system_stack_switch, . - unwind_0_1_system_stack_switch",
    ".p2align 12",
    ".popsection",
);

// aarch64 system-stack trampoline: `unwind_0_1_system_stack_switch(arg, f, top)` pushes a
// 32-byte record {x29, x30, user sp} on the user stack, switches sp to `top`, calls `f(arg)` and
// switches back. `unwind_0_1_system_stack_return` labels the return address inside it.
//
// Dependency-free on purpose: `src/live/system_stack.rs` `include!`s it, and so does the aarch64
// smoke test (`arch/smoke/aarch64_smoke.rs`, Debian's rustc 1.63 + qemu-aarch64), which runs a
// closure through it and walks the x29 chain back across the switch.

// fn(arg: x0, f: x1, top: x2). The record {x29, x30} plus the user sp form a 32-byte frame
// on the user stack; x29 keeps pointing at it while on the system stack.
//
// The trampoline has a 4 KiB page of its own (its own section, page-aligned and padded to a
// page): the walker's hot loop tests return addresses against the transition table's page
// filter, one entry per 4 KiB page, and a caller's code sharing the trampoline's page would
// leave the hot loop at every frame there.
core::arch::global_asm!(
    ".pushsection .text.unwind_0_1_system_stack_switch,\"ax\",%progbits",
    ".p2align 12",
    ".globl unwind_0_1_system_stack_switch",
    ".hidden unwind_0_1_system_stack_switch",
    ".type unwind_0_1_system_stack_switch, %function",
    "unwind_0_1_system_stack_switch:",
    ".cfi_startproc",
    "stp x29, x30, [sp, #-32]!",
    ".cfi_def_cfa_offset 32",
    ".cfi_offset x29, -32",
    ".cfi_offset x30, -24",
    "mov x29, sp",
    ".cfi_def_cfa x29, 32",
    "add x9, sp, #32",
    "str x9, [sp, #16]", // user sp at fp + 16
    "mov sp, x2",
    "blr x1",
    ".globl unwind_0_1_system_stack_return",
    ".hidden unwind_0_1_system_stack_return",
    "unwind_0_1_system_stack_return:",
    "mov sp, x29",
    ".cfi_def_cfa sp, 32",
    "ldp x29, x30, [sp], #32",
    ".cfi_def_cfa_offset 0",
    ".cfi_restore x29",
    ".cfi_restore x30",
    "ret",
    ".cfi_endproc",
    ".size unwind_0_1_system_stack_switch, . - unwind_0_1_system_stack_switch",
    ".p2align 12",
    ".popsection",
);

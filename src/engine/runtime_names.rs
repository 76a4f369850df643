//! Names of runtime code: the function-name prefixes (demangled, without hashes) that the
//! built-in classifiers count as runtime: the heap profiler's, the demo's and a core's. One
//! list per group, so that every classifier draws on the same source; a classifier picks the
//! groups that are runtime for its profile.

/// `unwind`'s own machinery: live capture, the system stack and its switch, the transition
/// registry and the walker (`engine`: the first `system_stack::run` on a thread registers its
/// stack, which allocates), the prepared CFI (`cfi`), the heap profiler's allocator wrapper.
pub const UNWIND: &[&str] = &[
    "unwind::live::",
    "<unwind::live::",
    "unwind::engine::",
    "<unwind::engine::",
    "unwind::cfi::",
    "<unwind::cfi::",
    "unwind::profile::heap::",
    "<unwind::profile::heap::",
    "unwind_0_1_system_stack",
];

/// Rust's stack-switching crates (segments and coroutines).
pub const STACK_SWITCHERS: &[&str] = &["stacker::", "psm::", "rust_psm_", "corosensei::"];

/// The standard library's thread start and closure shims.
pub const THREAD_START: &[&str] = &["std::sys::", "core::ops::function::"];

/// The Rust standard libraries as a whole (for a core's classifier, where any std frame is
/// runtime).
pub const RUST_STD: &[&str] = &["std::", "core::", "alloc::"];

/// The C runtime.
pub const C_RUNTIME: &[&str] = &["__libc", "__GI_", "_start"];

/// The outermost frame of a C or Rust process's or thread's stack, nothing above it: the
/// program's entry and the clone child's entry (and a `makecontext` stack's). A walk whose
/// buffer filled exactly on one of these is whole.
pub const C_OUTERMOST: &[&str] = &[
    "_start",
    "clone",
    "__clone",
    "clone3",
    "__clone3",
    "thread_start",
    "__start_context",
];

/// Where a C or Rust program's stacks begin, by name: the process's entry (glibc's and musl's
/// start code, the dynamic loader's before it) and a thread's (glibc's `start_thread` and its clone functions, musl's `start`).
/// A frame-record walk that ends in any other named function ended short (offline walks).
pub const C_STACK_ROOTS: &[&str] = &[
    "_start",
    "_dl_start",
    "_dl_start_user",
    "__libc_start_main",
    "__libc_start_call_main",
    "__libc_start_main_impl",
    "start_thread",
    "clone",
    "__clone",
    "clone3",
    "__clone3",
    "__clone_internal",
    // glibc's aarch64 (and other ports') clone/clone3 child entry, a local label.
    "thread_start",
    "_start_c",
    "libc_start_main_stage2",
    "start",
    "start_c",
    // glibc's `makecontext` stacks (a `ucontext` coroutine's root).
    "__start_context",
];

/// Go's runtime package.
pub const GO: &[&str] = &["runtime."];

/// Allocation plumbing: the allocator shims and the `alloc`/`std` allocation and collection
/// internals that sit between user code and a `GlobalAlloc`.
pub const RUST_ALLOC: &[&str] = &[
    "__rust_alloc",
    "__rust_dealloc",
    "__rust_realloc",
    "__rust_alloc_zeroed",
    // The allocator shims under their `__rustc::` names; not the panic runtime's
    // (`__rustc::rust_panic`, `__rustc::__rust_start_panic` allocate the panic's exception:
    // found by outside use in the twenty-sixth round, charged to `panic_with_hook`, which
    // does not allocate).
    "__rustc::__rust_alloc",
    "__rustc::__rust_dealloc",
    "__rustc::__rust_realloc",
    "__rustc::__rg_",
    "__rustc::__rdl_",
    "__rg_",
    "__rdl_",
    "alloc::",
    "<alloc::",
    "core::alloc::",
    "<core::alloc::",
    "std::alloc::",
    "<std::alloc::",
    "core::iter::",
    "<core::iter::",
    "hashbrown::",
    "<hashbrown::",
    "std::collections::",
    "<std::collections::",
    "std::path::",
    "<std::path::",
    "std::ffi::",
    "<std::ffi::",
    "std::sys::os_str::",
    "<std::sys::os_str::",
    // Formatting (`format!`, `write!` into a String, padding) and the Option/Result
    // combinators `alloc::fmt::format` is inlined through: found by outside use in the
    // twenty-sixth round, `<core::fmt::Formatter>::padding` and `pad_integral` flat owners of
    // 79% of a formatting program's bytes in place of its functions. A program's own
    // `Display` impl is not plumbing (see `RUST_ALLOC_INFIXES`).
    "core::fmt::",
    "<core::fmt::",
    "core::option::",
    "<core::option::",
    "core::result::",
    "<core::result::",
];

/// Substrings that mark allocation plumbing in trait impls on other types
/// (`<u8 as alloc::vec::spec_from_elem::SpecFromElem>`).
pub const RUST_ALLOC_INFIXES: &[&str] = &[
    " as alloc::",
    " as core::alloc::",
    " as std::alloc::",
    " as core::iter::",
    " as core::fmt::",
];

/// Does `name` start with a prefix of one of `groups`?
pub fn has_prefix_in(name: &str, groups: &[&[&str]]) -> bool {
    groups.iter().any(|g| g.iter().any(|p| name.starts_with(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_match_by_prefix() {
        assert!(has_prefix_in("unwind::live::system_stack::run", &[UNWIND]));
        assert!(has_prefix_in(
            "unwind::engine::transition::register_stack",
            &[UNWIND]
        ));
        assert!(!has_prefix_in("unwind::demo::demo_worker", &[UNWIND]));
        assert!(has_prefix_in("runtime.mcall", &[RUST_STD, GO]));
        assert!(!has_prefix_in("main.main", &[RUST_STD, GO]));
    }
}

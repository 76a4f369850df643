//! Captures across real stack switches: `unwind::system_stack`, `stacker`/psm segments and
//! corosensei coroutines. Each test also shows that without the table (`naive`) the same capture
//! stops at the switch.

mod common;

use common::{capture, full, naive, Captured};
use std::hint::black_box;
use unwind::{StopReason, Via};

// ---------------------------------------------------------------------------------------------
// The system stack.

#[inline(never)]
fn sys_three_deep(naive_walk: bool) -> Captured {
    black_box(101u32);
    let c = capture(if naive_walk { naive() } else { full() });
    black_box(&c);
    c
}

#[inline(never)]
fn sys_two_deep(naive_walk: bool) -> Captured {
    black_box(102u32);
    let c = sys_three_deep(naive_walk);
    black_box(&c);
    c
}

#[inline(never)]
fn sys_one_deep(naive_walk: bool) -> Captured {
    black_box(103u32);
    let c = sys_two_deep(naive_walk);
    black_box(&c);
    c
}

#[inline(never)]
fn user_calls_run(naive_walk: bool) -> Captured {
    black_box(104u32);
    let c = unwind::system_stack::run(|| sys_one_deep(naive_walk));
    black_box(&c);
    c
}

#[inline(never)]
fn user_outer_frame(naive_walk: bool) -> Captured {
    black_box(105u32);
    let c = user_calls_run(naive_walk);
    black_box(&c);
    c
}

#[test]
fn system_stack_capture_reaches_the_user_frames() {
    unwind::init();
    let c = user_outer_frame(false);
    let at = c.expect_in_order(&[
        "sys_three_deep",
        "sys_two_deep",
        "sys_one_deep",
        "unwind_0_1_system_stack_switch",
        "user_calls_run",
        "user_outer_frame",
    ]);
    let switch = at[3];
    // Everything up to the trampoline's frame is on the system stack (stack 0)...
    assert!(c.frames[..=switch].iter().all(|f| f.stack == 0), "{c}");
    let stack = unwind::system_stack::current_stack().unwrap();
    // ...and the first frame after it was found by the transition, on stack 1.
    let first = c.frames[switch + 1];
    assert_eq!(first.via, Via::Transition, "{c}");
    assert_eq!(
        Some(first.transition),
        unwind::system_stack::transition_id(),
        "{c}"
    );
    assert!(c.frames[switch + 1..].iter().all(|f| f.stack == 1), "{c}");
    assert!(!stack.contains(first.pc));
    assert_eq!(c.trace.stop, StopReason::End, "{c}");
}

#[test]
fn system_stack_naive_capture_stops_at_the_switch() {
    unwind::init();
    let c = user_outer_frame(true);
    let at = c.expect_in_order(&["sys_three_deep", "unwind_0_1_system_stack_switch"]);
    assert_eq!(
        at[1],
        c.frames.len() - 1,
        "the switch is the last frame:\n{c}"
    );
    assert_eq!(c.trace.stop, StopReason::NotMonotonic, "{c}");
    assert!(c.find("user_outer_frame").is_none(), "{c}");
    assert!(c.frames.iter().all(|f| f.stack == 0));
}

#[test]
fn system_stack_nested_run_stays_in_place() {
    unwind::init();
    let c = nested_outer();
    // The inner `run` calls switch nothing: one crossing, from the outermost switch.
    let crossings = c.frames.iter().filter(|f| f.via == Via::Transition).count();
    assert_eq!(crossings, 1, "{c}");
    c.expect_in_order(&[
        "sys_three_deep",
        "user_calls_run",
        "unwind_0_1_system_stack_switch",
        "nested_outer",
    ]);
}

#[inline(never)]
fn nested_outer() -> Captured {
    let c = unwind::system_stack::run(|| unwind::system_stack::run(|| user_outer_frame(false)));
    black_box(&c);
    c
}

#[test]
fn system_stack_panic_is_carried_back() {
    let r = std::panic::catch_unwind(|| {
        unwind::system_stack::run(|| {
            let c = sys_one_deep(false);
            assert!(c.find("unwind_0_1_system_stack_switch").is_some());
            panic!("expected panic on the system stack")
        })
    });
    assert!(r.is_err());
    assert!(!unwind::system_stack::is_on_system_stack());
    // Still works afterwards.
    let c = user_outer_frame(false);
    c.expect("user_outer_frame");
}

// ---------------------------------------------------------------------------------------------
// stacker / psm segments.

#[inline(never)]
fn on_segment_leaf(naive_walk: bool) -> Captured {
    black_box(106u32);
    let c = capture(if naive_walk { naive() } else { full() });
    black_box(&c);
    c
}

#[inline(never)]
fn on_segment_mid(naive_walk: bool) -> Captured {
    black_box(107u32);
    let c = on_segment_leaf(naive_walk);
    black_box(&c);
    c
}

#[inline(never)]
fn grows_the_stack(naive_walk: bool) -> Captured {
    black_box(108u32);
    let c = stacker::grow(64 * 1024, || on_segment_mid(naive_walk));
    black_box(&c);
    c
}

#[test]
fn stacker_segment_capture_reaches_the_caller() {
    let b = unwind::init();
    assert_eq!(
        b.named(unwind::switches::PSM_ON_STACK.name).count(),
        1,
        "psm found: {b:?}"
    );
    let c = grows_the_stack(false);
    let at = c.expect_in_order(&[
        "on_segment_leaf",
        "on_segment_mid",
        "rust_psm_on_stack",
        "grows_the_stack",
    ]);
    let psm = at[2];
    assert_eq!(c.find_fn("grows_the_stack"), Some(at[3]), "{c}");
    assert!(c.frames[..=psm].iter().all(|f| f.stack == 0), "{c}");
    assert_eq!(c.frames[psm + 1].via, Via::Transition, "{c}");
    assert!(c.frames[psm + 1..].iter().all(|f| f.stack == 1), "{c}");

    let n = grows_the_stack(true);
    let at = n.expect_in_order(&["on_segment_leaf", "rust_psm_on_stack"]);
    assert_eq!(at[1], n.frames.len() - 1, "{n}");
    assert!(
        n.find("stacker_segment_capture_reaches_the_caller")
            .is_none(),
        "{n}"
    );
    assert_eq!(n.trace.stop, StopReason::NotMonotonic, "{n}");
}

// ---------------------------------------------------------------------------------------------
// corosensei.

use corosensei::stack::{DefaultStack, Stack};
use corosensei::{Coroutine, CoroutineResult};

#[inline(never)]
fn in_coroutine_leaf(naive_walk: bool) -> Captured {
    black_box(109u32);
    let c = capture(if naive_walk { naive() } else { full() });
    black_box(&c);
    c
}

#[inline(never)]
fn in_coroutine_body(naive_walk: bool) -> Captured {
    black_box(110u32);
    let c = in_coroutine_leaf(naive_walk);
    black_box(&c);
    c
}

#[inline(never)]
fn resumes_a_coroutine(naive_walk: bool) -> (Captured, Captured) {
    let mut stack = DefaultStack::new(128 * 1024).unwrap();
    // SAFETY: the stack outlives `reg`, which is dropped first.
    let reg = unsafe {
        unwind::coroutine::register_stack(stack.limit().get() as u64, stack.base().get() as u64)
    }
    .unwrap();
    let mut co = Coroutine::with_stack(&mut stack, move |y, ()| {
        // Capture on the first resume, and again after a suspend (the parent link is rewritten
        // on every resume).
        let first = in_coroutine_body(naive_walk);
        y.suspend(());
        let second = in_coroutine_body(naive_walk);
        (first, second)
    });
    assert!(matches!(co.resume(()), CoroutineResult::Yield(())));
    let r = match resume_again(&mut co) {
        CoroutineResult::Return(r) => r,
        CoroutineResult::Yield(()) => panic!("coroutine yielded twice"),
    };
    drop(co);
    drop(reg);
    black_box(&r);
    r
}

#[inline(never)]
fn resume_again<S: Stack>(
    co: &mut Coroutine<(), (), (Captured, Captured), S>,
) -> CoroutineResult<(), (Captured, Captured)> {
    let r = co.resume(());
    black_box(&r);
    r
}

#[test]
fn corosensei_coroutine_capture_reaches_the_resumer() {
    let b = unwind::init();
    assert_eq!(
        b.named(unwind::switches::COROSENSEI_COROUTINE.name).count(),
        1,
        "{b:?}"
    );
    let (first, second) = resumes_a_coroutine(false);
    for (c, resumer) in [(&first, "resumes_a_coroutine"), (&second, "resume_again")] {
        let at = c.expect_in_order(&[
            "in_coroutine_leaf",
            "in_coroutine_body",
            "stack_init_trampoline",
            resumer,
        ]);
        let tramp = at[2];
        assert!(c.frames[..=tramp].iter().all(|f| f.stack == 0), "{c}");
        assert_eq!(c.frames[tramp + 1].via, Via::Transition, "{c}");
        assert!(c.frames[tramp + 1..].iter().all(|f| f.stack == 1), "{c}");
        assert_eq!(c.trace.stop, StopReason::End, "{c}");
    }

    let (n, _) = resumes_a_coroutine(true);
    n.expect_in_order(&["in_coroutine_leaf", "stack_init_trampoline"]);
    assert!(n.find_fn("resumes_a_coroutine").is_none(), "{n}");
    assert_eq!(n.trace.stop, StopReason::NotMonotonic, "{n}");
}

#[inline(never)]
fn calls_corosensei_on_stack(naive_walk: bool) -> Captured {
    let mut stack = DefaultStack::new(64 * 1024).unwrap();
    // SAFETY: the stack outlives `reg`, which is dropped first.
    let reg = unsafe {
        unwind::coroutine::register_stack(stack.limit().get() as u64, stack.base().get() as u64)
    }
    .unwrap();
    let c = corosensei::on_stack(&mut stack, || in_coroutine_body(naive_walk));
    drop(reg);
    black_box(&c);
    c
}

#[test]
fn corosensei_on_stack_capture_reaches_the_caller() {
    unwind::init();
    let c = calls_corosensei_on_stack(false);
    let at = c.expect_in_order(&[
        "in_coroutine_leaf",
        "stack_call_trampoline",
        "calls_corosensei_on_stack",
    ]);
    assert_eq!(c.frames[at[1] + 1].via, Via::Transition, "{c}");
    assert_eq!(c.frames[at[1] + 1].stack, 1, "{c}");
    let n = calls_corosensei_on_stack(true);
    assert!(
        n.find("corosensei_on_stack_capture_reaches_the_caller")
            .is_none(),
        "{n}"
    );
}

// ---------------------------------------------------------------------------------------------
// The registry under concurrent writers, without signals (tests/signals.rs adds them).

#[test]
fn registry_survives_concurrent_writers() {
    use unwind::transition::{self, Rule, Transitions};
    unwind::init();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let base = 0x5000_0000_0000 + t * 0x1_0000_0000;
                for i in 0..300u64 {
                    let lo = base + i * 0x100;
                    let id = transition::register(
                        unwind::Range::new(lo, lo + 0x10),
                        Rule::ContinueChain,
                        "concurrent",
                    )
                    .unwrap();
                    // Our own entry is visible to lock-free lookups right away...
                    let found = transition::Live.lookup(lo + 8).map(|t| t.id);
                    assert_eq!(found, Some(id));
                    // ...and so is the system-stack entry registered long ago.
                    // (A user capture across the switch, under churn.)
                    let c = user_outer_frame(false);
                    c.expect("user_outer_frame");
                    transition::unregister(id).unwrap();
                    assert!(transition::Live.lookup(lo + 8).is_none());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(transition::registered()
        .iter()
        .all(|(_, name)| *name != "concurrent"));
}

// ---------------------------------------------------------------------------------------------
// Three switches in a row: coroutine → corosensei::on_stack segment → system stack.

#[inline(never)]
fn three_deep_inner() -> Captured {
    black_box(111u32);
    let c = unwind::system_stack::run(|| sys_one_deep(false));
    black_box(&c);
    c
}

#[inline(never)]
fn three_deep_segment() -> Captured {
    let mut seg = DefaultStack::new(128 * 1024).unwrap();
    // SAFETY: the stack outlives `reg`, which is dropped first.
    let reg = unsafe {
        unwind::coroutine::register_stack(seg.limit().get() as u64, seg.base().get() as u64)
    }
    .unwrap();
    let c = corosensei::on_stack(&mut seg, three_deep_inner);
    drop(reg);
    black_box(&c);
    c
}

#[inline(never)]
fn three_deep_outer() -> Captured {
    let mut stack = DefaultStack::new(128 * 1024).unwrap();
    // SAFETY: the stack outlives `reg`, which is dropped first.
    let reg = unsafe {
        unwind::coroutine::register_stack(stack.limit().get() as u64, stack.base().get() as u64)
    }
    .unwrap();
    let mut co = Coroutine::with_stack(&mut stack, |_y: &corosensei::Yielder<(), ()>, ()| {
        three_deep_segment()
    });
    let c = match co.resume(()) {
        CoroutineResult::Return(c) => c,
        CoroutineResult::Yield(()) => unreachable!(),
    };
    drop(co);
    drop(reg);
    black_box(&c);
    c
}

#[test]
fn three_switches_in_a_row() {
    unwind::init();
    let c = three_deep_outer();
    let at = c.expect_in_order(&[
        "sys_three_deep",
        "unwind_0_1_system_stack_switch",
        "three_deep_inner",
        "stack_call_trampoline",
        "three_deep_segment",
        "stack_init_trampoline",
        "three_deep_outer",
    ]);
    let stacks: Vec<u16> = at.iter().map(|&i| c.frames[i].stack).collect();
    assert_eq!(stacks, vec![0, 0, 1, 1, 2, 2, 3], "{c}");
    assert_eq!(c.trace.stop, StopReason::End, "{c}");
}

// ---------------------------------------------------------------------------------------------
// The same switches with no stack registered: a walk that starts on the system stack (or a
// segment) and crosses back to an unregistered coroutine or segment finds that stack through
// `/proc/self/maps` (`Memory::enter_stack`). It used to stop there (`ReadFailed` after
// `system_stack::run`, `BadTransition` at a nested coroutine's `stack_init_trampoline`), so a
// green thread's CPU samples and heap allocations on the system stack lost their callers.

/// How a test captures: frame records (`capture_with`) or Hybrid (`dwarf::capture`).
#[derive(Clone, Copy, Debug)]
enum How {
    Records,
    Hybrid,
}

#[inline(never)]
fn capture_how(how: How) -> Captured {
    black_box(121u32);
    match how {
        How::Records => capture(full()),
        How::Hybrid => {
            let u = unwind::modules::unwinder().expect("CFI prepared");
            let mut buf = [unwind::Frame::EMPTY; 128];
            let t = unwind::dwarf::capture(&mut buf, u, unwind::Mode::Hybrid);
            Captured::new(&buf, t)
        }
    }
}

#[inline(never)]
fn unreg_sys_leaf(how: How) -> Captured {
    black_box(122u32);
    let c = capture_how(how);
    black_box(&c);
    c
}

#[inline(never)]
fn unreg_calls_run(how: How) -> Captured {
    black_box(123u32);
    let c = unwind::system_stack::run(|| unreg_sys_leaf(how));
    black_box(&c);
    c
}

#[inline(never)]
fn unreg_inner_coroutine(how: How) -> Captured {
    let mut stack = DefaultStack::new(128 * 1024).unwrap();
    let mut co = Coroutine::with_stack(&mut stack, move |_y: &corosensei::Yielder<(), ()>, ()| {
        unreg_calls_run(how)
    });
    let c = match co.resume(()) {
        CoroutineResult::Return(c) => c,
        CoroutineResult::Yield(()) => unreachable!(),
    };
    black_box(&c);
    c
}

#[inline(never)]
fn unreg_outer_coroutine(how: How) -> Captured {
    let mut stack = DefaultStack::new(128 * 1024).unwrap();
    let mut co = Coroutine::with_stack(&mut stack, move |_y: &corosensei::Yielder<(), ()>, ()| {
        unreg_inner_coroutine(how)
    });
    let c = match co.resume(()) {
        CoroutineResult::Return(c) => c,
        CoroutineResult::Yield(()) => unreachable!(),
    };
    black_box(&c);
    c
}

/// System stack, called in a coroutine nested in a coroutine, neither stack registered.
#[test]
fn unregistered_coroutines_are_crossed_from_the_system_stack() {
    unwind::init();
    unwind::modules::refresh();
    for how in [How::Records, How::Hybrid] {
        let c = unreg_outer_coroutine(how);
        let at = c.expect_in_order(&[
            "unreg_sys_leaf",
            "unwind_0_1_system_stack_switch",
            "unreg_calls_run",
            "stack_init_trampoline",
            "unreg_inner_coroutine",
            "stack_init_trampoline",
            "unreg_outer_coroutine",
        ]);
        let stacks: Vec<u16> = at.iter().map(|&i| c.frames[i].stack).collect();
        assert_eq!(stacks, vec![0, 0, 1, 1, 2, 2, 3], "{how:?}: {c}");
        // And on to the test's caller (the test function itself may be inlined in release).
        assert!(c.frames.len() > at[6] + 2, "{how:?}: {c}");
        assert_ne!(c.trace.stop, StopReason::ReadFailed, "{how:?}: {c}");
        assert_ne!(c.trace.stop, StopReason::BadTransition, "{how:?}: {c}");
    }
}

#[inline(never)]
fn unreg_segment_leaf(how: How) -> Captured {
    black_box(124u32);
    let c = capture_how(how);
    black_box(&c);
    c
}

#[inline(never)]
fn unreg_segment_inner(how: How) -> Captured {
    black_box(125u32);
    let c = stacker::grow(64 * 1024, || unreg_segment_leaf(how));
    black_box(&c);
    c
}

#[inline(never)]
fn unreg_segment_outer(how: How) -> Captured {
    black_box(126u32);
    let c = stacker::grow(64 * 1024, || unreg_segment_inner(how));
    black_box(&c);
    c
}

/// A stacker segment grown on a stacker segment: the inner one's walk crosses the outer one,
/// which nobody can register (stacker maps its segments itself).
#[test]
fn nested_stacker_segments_are_crossed() {
    unwind::init();
    unwind::modules::refresh();
    for how in [How::Records, How::Hybrid] {
        let c = unreg_segment_outer(how);
        let at = c.expect_in_order(&[
            "unreg_segment_leaf",
            "rust_psm_on_stack",
            "unreg_segment_inner",
            "rust_psm_on_stack",
            "unreg_segment_outer",
        ]);
        let stacks: Vec<u16> = at.iter().map(|&i| c.frames[i].stack).collect();
        assert_eq!(stacks, vec![0, 0, 1, 1, 2], "{how:?}: {c}");
        assert!(c.frames.len() > at[4] + 2, "{how:?}: {c}");
        assert_ne!(c.trace.stop, StopReason::ReadFailed, "{how:?}: {c}");
    }
}

//! Live captures on real stacks: recursion through named functions, threads, a corrupted chain.

mod common;

use common::short_names;
use std::hint::black_box;
use unwind::{capture, capture_with, Frame, Options, StopReason, Via};

#[inline(never)]
fn leaf_capture(out: &mut Vec<Frame>) -> usize {
    let mut buf = [Frame::EMPTY; 1024];
    let t = capture_with(&mut buf, Options::default());
    out.extend_from_slice(&buf[..t.len]);
    black_box(t.len)
}

#[inline(never)]
fn recurse_beta(n: usize, out: &mut Vec<Frame>) -> usize {
    let r = if n == 0 {
        leaf_capture(out)
    } else {
        recurse_alpha(n - 1, out)
    };
    black_box(r) + 1
}

#[inline(never)]
fn recurse_alpha(n: usize, out: &mut Vec<Frame>) -> usize {
    let r = if n == 0 {
        leaf_capture(out)
    } else {
        recurse_beta(n - 1, out)
    };
    black_box(r) + 1
}

#[inline(never)]
fn outer_entry(depth: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    black_box(recurse_alpha(depth, &mut out));
    out
}

/// The frames, symbolised, must be: leaf_capture, then `depth + 1` alternating recursion frames
/// ending in recurse_alpha, then outer_entry, then the test's own callers.
fn check_chain(depth: usize) {
    let frames = outer_entry(depth);
    let names = short_names(&frames);
    assert_eq!(names[0], "leaf_capture", "{names:?}");
    // names[1 + k] is the recursion frame k levels above the leaf; the outermost one
    // (k = depth) is recurse_alpha(depth), and the names alternate from there.
    for k in 0..=depth {
        let expect = if (depth - k).is_multiple_of(2) {
            "recurse_alpha"
        } else {
            "recurse_beta"
        };
        assert_eq!(
            names[1 + k],
            expect,
            "frame {} of depth {depth}: {names:?}",
            1 + k
        );
    }
    assert_eq!(names[depth + 2], "outer_entry", "{names:?}");
    assert!(frames.iter().all(|f| f.stack == 0));
    assert!(frames.iter().all(|f| f.via == Via::FramePointer));
    // Strictly increasing frame records are implied; pcs are non-zero.
    assert!(frames.iter().all(|f| f.pc != 0));
}

#[test]
fn recursion_main_thread() {
    for depth in [0, 1, 2, 7, 31, 100, 250, 500] {
        check_chain(depth);
    }
}

#[test]
fn recursion_spawned_threads() {
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::Builder::new()
                .stack_size(8 << 20)
                .spawn(move || {
                    for depth in [1, 10 + t, 200, 499] {
                        check_chain(depth);
                    }
                })
                .unwrap()
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn buffer_bounds_the_capture() {
    #[inline(never)]
    fn small(depth: usize) -> (usize, StopReason) {
        if depth > 0 {
            let r = small(depth - 1);
            return black_box(r);
        }
        let mut buf = [Frame::EMPTY; 5];
        let t = capture_with(&mut buf, Options::default());
        (t.len, t.stop)
    }
    assert_eq!(small(50), (5, StopReason::BufferFull));
    let mut empty: [Frame; 0] = [];
    assert_eq!(capture(&mut empty), 0);
}

#[test]
fn spawned_thread_chain_reaches_thread_start() {
    // A spawned thread's stack has a definite end: the chain ends at glibc's clone (rbp = 0) or
    // at a frame without a record; either way the walk ends cleanly within the thread's stack.
    let t = std::thread::spawn(|| {
        let mut buf = [Frame::EMPTY; 256];
        let t = capture_with(&mut buf, Options::default());
        (t.len, t.stop)
    })
    .join()
    .unwrap();
    assert!(t.0 > 3 && t.0 < 256, "{t:?}");
}

/// Overwrites this function's saved frame-pointer slot with `bad`, captures, restores.
#[inline(never)]
fn capture_with_corrupt_link(bad: u64) -> (usize, StopReason) {
    let fp = unwind::arch::native::current_regs().fp;
    let slot = fp as *mut u64;
    // SAFETY: `fp` is this function's own frame record (built with frame pointers); we restore
    // the saved value before returning, and nothing reads it in between except the capture.
    let saved = unsafe { core::ptr::read_volatile(slot) };
    unsafe { core::ptr::write_volatile(slot, bad) };
    let mut buf = [Frame::EMPTY; 64];
    let t = capture_with(&mut buf, Options::default());
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(slot, saved) };
    black_box((t.len, t.stop))
}

#[test]
fn live_corrupted_chain_truncates_cleanly() {
    let here = unwind::arch::native::current_regs().sp;
    for bad in [
        0xdead_beef_0000_1230u64, // unmapped, aligned
        0x1,                      // misaligned
        u64::MAX,                 // wraps
        u64::MAX - 15,
        here - 4096, // below the current sp: dead stack
        8,
    ] {
        let (n, stop) = capture_with_corrupt_link(bad);
        // The caller of capture_with_corrupt_link's record was clobbered: the walk sees
        // capture_with_corrupt_link's pc, then its (corrupt) record.
        assert!(stop.is_truncated(), "{bad:#x}: {stop:?}");
        assert!((1..=3).contains(&n), "{bad:#x}: {n}");
    }
    // Zero is a normal chain end.
    let (n, stop) = capture_with_corrupt_link(0);
    assert_eq!(stop, StopReason::End);
    assert!(n >= 1);
}

#[test]
fn capture_starts_at_its_caller() {
    #[inline(never)]
    fn plain_capture_caller() -> Vec<Frame> {
        let mut buf = [Frame::EMPTY; 64];
        let n = capture(&mut buf);
        black_box(buf[..n].to_vec())
    }
    let frames = plain_capture_caller();
    assert_eq!(common::short_names(&frames)[0], "plain_capture_caller");
}

/// Captures twice at the same depth: with `capture` (its frame-pointer entry runs the hot loop
/// itself and hands anything unusual to the general walker) and with `capture_with` (the
/// general walker from the start). Only frame 0 (the call site) may differ.
#[inline(never)]
fn both_captures(buf_len: usize) -> (Vec<Frame>, Vec<Frame>) {
    let mut a = vec![Frame::EMPTY; buf_len];
    let n = capture(&mut a);
    a.truncate(n);
    let mut b = vec![Frame::EMPTY; buf_len];
    let t = capture_with(&mut b, Options::default());
    b.truncate(t.len);
    black_box((a, b))
}

#[inline(never)]
fn both_at_depth(depth: usize, buf_len: usize) -> (Vec<Frame>, Vec<Frame>) {
    if depth == 0 {
        both_captures(buf_len)
    } else {
        let r = both_at_depth(depth - 1, buf_len);
        black_box(r)
    }
}

fn assert_same(a: &[Frame], b: &[Frame], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    assert!(!a.is_empty(), "{what}");
    assert_eq!(a[1..], b[1..], "{what}");
    assert_eq!(common::short_names(&a[..1]), ["both_captures"], "{what}");
}

/// With a corrupt link in `both_captures`' caller's record: both walks stop at the same place.
#[inline(never)]
fn both_with_corrupt_link(bad: u64) -> (Vec<Frame>, Vec<Frame>) {
    let fp = unwind::arch::native::current_regs().fp;
    let slot = fp as *mut u64;
    // SAFETY: `fp` is this function's own frame record (built with frame pointers); the saved
    // value is restored before returning, and nothing reads it in between but the captures.
    let saved = unsafe { core::ptr::read_volatile(slot) };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(slot, bad) };
    let r = both_captures(64);
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(slot, saved) };
    black_box(r)
}

#[test]
fn capture_fast_entry_matches_the_general_walk() {
    // The chain's end (a zero frame pointer), a full buffer, a buffer of one.
    for (depth, len) in [
        (0, 1024),
        (40, 1024),
        (40, 16),
        (3, 1),
        (200, 1024),
        (200, 100),
    ] {
        let (a, b) = both_at_depth(depth, len);
        assert_same(&a, &b, &format!("depth {depth}, buffer {len}"));
        if len == 1024 {
            assert!(a.len() > depth + 2, "{depth}: {}", a.len());
        } else {
            assert_eq!(a.len(), len);
        }
    }
    // A stack switch: the hot loop stops at the system stack's transition and the general
    // walker crosses it.
    let (a, b) = unwind::system_stack::run(|| both_at_depth(5, 1024));
    assert_same(&a, &b, "system stack");
    assert!(a.iter().any(|f| f.stack == 1), "not crossed: {a:?}");
    // A corrupt record: the hot loop stops there and the general walker reports it.
    let here = unwind::arch::native::current_regs().sp;
    for bad in [0xdead_beef_0000_1230u64, 0x1, u64::MAX - 15, here - 4096, 0] {
        let (a, b) = both_with_corrupt_link(bad);
        assert_same(&a, &b, &format!("corrupt link {bad:#x}"));
    }
}

/// A capture on a small thread stack (`thread::Builder::stack_size`): optimised, the whole
/// stack; in a debug build, whose unoptimised walk needs tens of KiB, nothing and `LowStack`
/// when less than `live::DEBUG_WALK_STACK` is left (it ran into the guard page: found by outside
/// use in the twenty-third round, a debug build's heap profiler on a 64 KiB thread). The
/// thread's stack is found by the capture itself (no `init_thread` first).
#[test]
fn capture_on_a_small_thread_stack_fits_or_says_low_stack() {
    unwind::init();
    let (n, stop) = std::thread::Builder::new()
        .stack_size(24 << 10)
        .spawn(|| {
            let mut buf = [Frame::EMPTY; 64];
            let t = capture_with(&mut buf, Options::default());
            let n = black_box(capture(&mut buf));
            assert_eq!(n, t.len);
            (n, t.stop)
        })
        .unwrap()
        .join()
        .unwrap();
    if cfg!(debug_assertions) {
        assert_eq!((n, stop), (0, StopReason::LowStack));
    } else {
        assert!(n >= 3, "{n} {stop:?}");
        assert_eq!(stop, StopReason::End, "{n}");
    }
}

/// The same on a coroutine's small stack (not the thread's, not registered): a debug build's
/// capture there checked no room and ran into the stack's guard page (found by outside use in
/// the twenty-eighth round, a CPU sample nested in a heap sample on a 64 KiB coroutine).
#[test]
fn capture_on_a_small_coroutine_stack_fits_or_says_low_stack() {
    unwind::init();
    let stack = corosensei::stack::DefaultStack::new(24 << 10).unwrap();
    let mut co = corosensei::Coroutine::with_stack(stack, |_: &corosensei::Yielder<(), ()>, ()| {
        let mut buf = [Frame::EMPTY; 64];
        let t = capture_with(&mut buf, Options::default());
        (t.len, t.stop)
    });
    let (n, stop) = match co.resume(()) {
        corosensei::CoroutineResult::Return(r) => r,
        corosensei::CoroutineResult::Yield(()) => unreachable!(),
    };
    if cfg!(debug_assertions) {
        assert_eq!((n, stop), (0, StopReason::LowStack));
    } else {
        assert!(n >= 3, "{n} {stop:?}");
    }
}

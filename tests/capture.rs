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

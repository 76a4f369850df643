//! `heap::reset` racing allocations, frees and `heap::snapshot` (issue 13, item 6): a snapshot
//! sees whole stacks (never a slot that a reset emptied under it), counts never go negative,
//! and nothing deadlocks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use unwind::heap::{self, Sampling};

#[global_allocator]
static ALLOC: Sampling = Sampling::new(std::alloc::System);

#[inline(never)]
fn churn(i: usize) -> usize {
    let v: Vec<u8> = vec![i as u8; 64 + (i % 7) * 100];
    let b = Box::new([i; 8]);
    std::hint::black_box(&v).len() + std::hint::black_box(&b)[0]
}

#[test]
fn reset_during_allocation_and_snapshot() {
    heap::start(1); // sample every allocation
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(churn(i));
                    i += 1;
                }
            })
        })
        .collect();
    let resetter = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                heap::reset();
                n += 1;
            }
            n
        })
    };
    let t0 = Instant::now();
    let mut snapshots = 0u64;
    let mut bad = Vec::new();
    while t0.elapsed() < Duration::from_secs(3) {
        for s in heap::snapshot_raw() {
            // Raw counts of one stack: every allocation has at least one byte, in-use never
            // exceeds allocated, a recorded stack has frames.
            let torn = s.pcs.is_empty()
                || s.alloc_objects < s.inuse_objects
                || s.alloc_space < s.inuse_space
                || s.inuse_objects < 0
                || s.alloc_space < s.alloc_objects
                || (s.alloc_objects == 0) != (s.alloc_space == 0);
            if torn {
                bad.push((s.pcs.len(), s.alloc_objects, s.alloc_space, s.inuse_objects));
            }
        }
        snapshots += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let resets = resetter.join().unwrap();
    heap::stop();
    assert!(
        snapshots > 10 && resets > 10,
        "{snapshots} snapshots, {resets} resets"
    );
    assert!(
        bad.is_empty(),
        "{} torn samples in {snapshots} snapshots ({resets} resets): {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}

//! The policy table on a real stack switch: functions in a `runtime` module call
//! `system_stack::run`, and the leaf on the system stack records an event. For each profile
//! kind, the kept frames (by symbol) must match the table in `unwind::policy`:
//!
//! ```text
//! policy::user::main_ → policy::user::foo → runtime::bar → [system_stack::run] →
//!     runtime::bar_func1 → runtime::interesting_event → runtime::record_event   (leaf last)
//! ```

mod common;

use common::{all_functions, short_names};
use std::hint::black_box;
use unwind::policy::{Classifier, Keep, Policy, ProfileKind};
use unwind::{Frame, Via};

mod runtime {
    use super::*;

    #[inline(never)]
    pub fn record_event(out: &mut Vec<Frame>) {
        let mut buf = [Frame::EMPTY; 256];
        let n = unwind::capture(&mut buf);
        out.extend_from_slice(&buf[..n]);
        black_box(out.len());
    }

    #[inline(never)]
    pub fn interesting_event(out: &mut Vec<Frame>) {
        record_event(out);
        black_box(out.len() + 3);
    }

    #[inline(never)]
    pub fn bar_func1(out: &mut Vec<Frame>) {
        interesting_event(out);
        // Distinct bodies, so that release builds do not fold identical functions together.
        black_box(out.len() + 1);
    }

    #[inline(never)]
    pub fn bar(out: &mut Vec<Frame>) {
        unwind::system_stack::run(|| bar_func1(out));
        black_box(out.len());
    }

    /// No switch: runtime code calling runtime code on the user stack.
    #[inline(never)]
    pub fn bar_in_place(out: &mut Vec<Frame>) {
        interesting_event(out);
        black_box(out.len() + 2);
    }
}

mod user {
    use super::*;

    #[inline(never)]
    pub fn foo(out: &mut Vec<Frame>, switch: bool) {
        if switch {
            runtime::bar(out);
        } else {
            runtime::bar_in_place(out);
        }
        black_box(out.len());
    }

    #[inline(never)]
    pub fn main_(switch: bool) -> Vec<Frame> {
        let mut out = Vec::new();
        foo(&mut out, switch);
        black_box(out.len());
        out
    }
}

/// Runtime = this test's `runtime` module and `unwind`'s own system-stack machinery (the
/// equivalent of Go's `runtime.systemstack`); the system switch = the system stack's transition.
fn classifier() -> Classifier {
    let funcs = all_functions();
    let mut c = Classifier::new();
    c.add_symbol_prefixes(
        funcs.iter().map(|(n, lo, hi)| (n.as_str(), *lo, *hi)),
        &["policy::runtime::", "unwind::live::system_stack::"],
    );
    c.add_system_switch(unwind::system_stack::transition_id().expect("system stack registered"));
    c
}

fn kept(kind: ProfileKind, frames: &[Frame], c: &Classifier) -> Vec<String> {
    let k = kind.policy().apply(frames, c);
    short_names(k.slice(frames))
}

/// The names up to (and including) the test function, dropping the test harness's frames.
fn upto_main(names: Vec<String>) -> Vec<String> {
    let end = names
        .iter()
        .position(|n| n == "main_")
        .expect("main_ in trace");
    names[..=end].to_vec()
}

/// `unwind`'s internal frames between the user side and the closure (run's trampoline, the
/// closure shim) are implementation details: drop them from the comparison.
fn visible(names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| {
            [
                "record_event",
                "interesting_event",
                "bar_func1",
                "bar",
                "foo",
                "main_",
            ]
            .contains(&n.as_str())
        })
        .collect()
}

#[test]
fn each_kind_keeps_what_the_table_says() {
    unwind::init();
    let frames = user::main_(true);
    let c = classifier();
    let all = short_names(&frames);
    // The capture crossed the switch: system frames on stack 0, user frames on stack 1.
    let sw = frames
        .iter()
        .position(|f| f.via == Via::Transition)
        .unwrap_or_else(|| panic!("no transition in {all:?}"));
    assert!(frames[..sw].iter().all(|f| f.stack == 0));
    assert!(frames[sw..].iter().all(|f| f.stack >= 1));

    let everything = visible(upto_main(all.clone()));
    assert_eq!(
        everything,
        [
            "record_event",
            "interesting_event",
            "bar_func1",
            "bar",
            "foo",
            "main_"
        ]
    );
    for kind in [ProfileKind::Cpu, ProfileKind::RuntimeLock] {
        assert_eq!(
            upto_main(kept(kind, &frames, &c)),
            upto_main(all.clone()),
            "{kind}"
        );
    }
    // Heap: crosses the switch, drops runtime frames at the leaf end: starts at foo.
    assert_eq!(
        visible(upto_main(kept(ProfileKind::Heap, &frames, &c))),
        ["foo", "main_"]
    );
    assert_eq!(kept(ProfileKind::Heap, &frames, &c)[0], "foo");
    // Block, mutex, trace: the user part: runtime::bar (it called run) and its callers.
    for kind in [ProfileKind::Block, ProfileKind::Mutex, ProfileKind::Trace] {
        let k = kept(kind, &frames, &c);
        assert_eq!(
            visible(upto_main(k.clone())),
            ["bar", "foo", "main_"],
            "{kind}"
        );
        // The user part starts at the first frame past the switch.
        let kk = kind.policy().apply(&frames, &c);
        assert_eq!(kk.frames.start, sw, "{kind}");
    }
    // By hand: the system part only.
    let sys = Policy {
        keep: Keep::System,
        ..ProfileKind::Cpu.policy()
    };
    let k = sys.apply(&frames, &c);
    assert_eq!(k.frames, 0..sw);
    assert_eq!(
        visible(short_names(k.slice(&frames))),
        ["record_event", "interesting_event", "bar_func1"]
    );
}

#[test]
fn naive_capture_loses_the_user_part() {
    // Without the table the capture stops at the switch: no kind can show the user code.
    unwind::init();
    #[inline(never)]
    fn naive_leaf(out: &mut Vec<Frame>) {
        let mut buf = [Frame::EMPTY; 256];
        let t = unwind::capture_with(
            &mut buf,
            unwind::Options {
                naive: true,
                ..Default::default()
            },
        );
        out.extend_from_slice(&buf[..t.len]);
    }
    let mut out = Vec::new();
    unwind::system_stack::run(|| naive_leaf(&mut out));
    let names = short_names(&out);
    assert!(
        !names
            .iter()
            .any(|n| n == "naive_capture_loses_the_user_part"),
        "{names:?}"
    );
    assert!(out.iter().all(|f| f.stack == 0));
}

#[test]
fn edge_cases_on_real_traces() {
    unwind::init();
    let c = classifier();
    // No transition: Block keeps everything; Heap still drops the runtime leaf frames.
    let frames = user::main_(false);
    assert!(frames.iter().all(|f| f.via != Via::Transition));
    let all = upto_main(short_names(&frames));
    assert_eq!(upto_main(kept(ProfileKind::Block, &frames, &c)), all);
    assert_eq!(kept(ProfileKind::Heap, &frames, &c)[0], "foo");
    // All-runtime trace under Heap: kept whole (cut the trace at `bar_in_place`).
    let cut = frames
        .iter()
        .position(|f| short_names(std::slice::from_ref(f))[0] == "bar_in_place")
        .unwrap();
    let runtime_only = &frames[..=cut];
    let k = ProfileKind::Heap.policy().apply(runtime_only, &c);
    assert_eq!(k.frames, 0..runtime_only.len());
    // Skip larger than the trace.
    let k = ProfileKind::Cpu.policy().skip(10_000).apply(&frames, &c);
    assert!(k.slice(&frames).is_empty());
    // Max depth cutting the user part.
    let frames = user::main_(true);
    let k = ProfileKind::Block.policy().max_depth(2).apply(&frames, &c);
    assert!(k.truncated);
    assert_eq!(k.frames.len(), 2);
    assert_eq!(k.slice(&frames)[0].via, Via::Transition);
}

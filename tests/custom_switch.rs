//! A runtime's own stack switch, registered as README's "Registering your own switch" says: a
//! minimal hand-written coroutine (x86_64 inline assembly, an `mmap`ed stack), its switch
//! registered with `transition::register` and its stack with `coroutine::register_stack`. A
//! capture inside the coroutine crosses into the function that resumed it and reaches the test
//! itself; without the transition it stops at the coroutine's entry. This file is the worked
//! example README points to.
#![cfg(target_arch = "x86_64")]

use std::hint::black_box;
use unwind::transition::{self, Base, Rule};
use unwind::{Frame, Range, Via};

// `co_switch(save, to)`: pushes the callee-saved registers and the return address on the
// current stack, stores that sp at `*save`, loads `to` as sp and pops the same six registers
// and return address there. `co_start` is where a new coroutine "returns" to the first time:
// it calls the body (r12) with its argument (rbx); `co_start_ret` is the return address that
// call leaves, at the top of the coroutine's stack: the transition's key.
std::arch::global_asm!(
    ".text",
    ".global unwind_test_co_switch",
    "unwind_test_co_switch:",
    "    push rbp",
    "    push rbx",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov [rdi], rsp",
    "    mov rsp, rsi",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbx",
    "    pop rbp",
    "    ret",
    ".global unwind_test_co_start",
    ".type unwind_test_co_start, @function",
    "unwind_test_co_start:",
    "    mov rdi, rbx",
    "    call r12",
    ".global unwind_test_co_start_ret",
    "unwind_test_co_start_ret:",
    "    ud2",
    ".size unwind_test_co_start, . - unwind_test_co_start",
);

extern "C" {
    fn unwind_test_co_switch(save: *mut u64, to: u64);
    fn unwind_test_co_start();
    fn unwind_test_co_start_ret();
}

/// What a switch into the coroutine left on the resumer's stack, from the sp it saved at
/// `*link`: r15, r14, r13, r12, rbx, rbp (+40), the return address into `resume` (+48); the
/// resumer's sp after its `call` returns is +56. The coroutine's entry sets rbp to `link`, so
/// the body's first frame record holds `link` as its caller's fp and `co_start_ret` as its
/// return address: `Base::LinkPlus(56)` reads the word at that fp (the resumer's saved sp) and
/// takes pc, fp and sp from there.
fn register_switch() -> transition::Id {
    let ra = unwind_test_co_start_ret as *const () as u64;
    transition::register(
        Range::new(ra, ra + 1),
        Rule::SavedAt {
            base: Base::LinkPlus(56),
            pc: 48,
            sp: None,
            fp: 40,
        },
        "test coroutine",
    )
    .expect("room in the transition table")
}

/// What the coroutine runs.
type Body = Box<dyn FnOnce(&mut Co)>;

struct Co {
    /// The coroutine's saved sp while it is suspended.
    sp: u64,
    /// Near the stack's top: the resumer's saved sp while the coroutine runs.
    link: *mut u64,
    map: *mut libc::c_void,
    len: usize,
    body: Option<Body>,
    /// Dropped before the stack is unmapped (`Drop`).
    stack: Option<unwind::coroutine::RegisteredStack>,
}

extern "C" fn entry(co: *mut Co) {
    // SAFETY: `co` is the boxed coroutine `Co::new` put in rbx; it outlives its run.
    let co = unsafe { &mut *co };
    let body = co.body.take().unwrap();
    body(co);
    co.suspend();
    unreachable!("a finished coroutine was resumed");
}

impl Co {
    fn new(body: impl FnOnce(&mut Co) + 'static) -> Box<Co> {
        let len = 256 * 1024;
        // SAFETY: a fresh anonymous private mapping; checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let (lo, hi) = (map as u64, map as u64 + len as u64);
        let link = (hi - 16) as *mut u64;
        let init = hi - 32 - 56;
        let mut co = Box::new(Co {
            sp: init,
            link,
            map,
            len,
            body: Some(Box::new(body)),
            // Registered: a capture reads this stack as the thread's own (else it asks
            // /proc/self/maps for it, ~1000x slower per capture).
            // SAFETY: the mapping stays until `drop`, which drops this guard first.
            stack: Some(
                unsafe { unwind::coroutine::register_stack(lo, hi) }.expect("room for the stack"),
            ),
        });
        let regs = [
            0,
            0,
            0,
            entry as *const () as u64,
            &mut *co as *mut Co as u64,
            link as u64,
            unwind_test_co_start as *const () as u64,
        ];
        // SAFETY: `link` and the seven words at `init` lie inside the mapping, 8-aligned.
        unsafe {
            *link = 0;
            for (i, w) in regs.iter().enumerate() {
                *(init as *mut u64).add(i) = *w;
            }
        }
        co
    }

    #[inline(never)]
    fn resume(&mut self) {
        // SAFETY: `self.sp` is the coroutine's suspended sp; `link` receives ours.
        unsafe { unwind_test_co_switch(self.link, self.sp) };
        // Not a tail call: `resume` stays the frame the switch returns to.
        black_box(&mut *self);
    }

    #[inline(never)]
    fn suspend(&mut self) {
        // SAFETY: `*self.link` is the resumer's sp, saved by `resume`.
        unsafe { unwind_test_co_switch(&mut self.sp, *self.link) };
    }
}

impl Drop for Co {
    fn drop(&mut self) {
        // Unregistered first: captures must not find it once it is unmapped.
        self.stack.take();
        // SAFETY: the mapping made in `new`, no longer run on (the coroutine is suspended).
        unsafe { libc::munmap(self.map, self.len) };
    }
}

/// Captures inside a fresh coroutine; the frames' names and how each was found.
#[inline(never)]
fn capture_in_a_coroutine() -> (Vec<(String, Via)>, unwind::StopReason) {
    use std::sync::{Arc, Mutex};
    let got = Arc::new(Mutex::new((Vec::new(), unwind::StopReason::End)));
    let into = got.clone();
    let mut co = Co::new(move |_| {
        let mut buf = [Frame::EMPTY; 128];
        let t = unwind::capture_with(&mut buf, Default::default());
        *into.lock().unwrap() = (buf[..t.len].to_vec(), t.stop);
    });
    co.resume();
    black_box(&mut co);
    let (frames, stop) = got.lock().unwrap().clone();
    let sym = unwind::symbols::Symbolizer::for_current_process();
    let named = frames
        .iter()
        .map(|f| {
            let name = sym
                .lookup(f.lookup_pc())
                .map_or_else(|| format!("{:#x}", f.pc), |s| s.name.to_string());
            (name, f.via)
        })
        .collect();
    (named, stop)
}

#[test]
fn a_registered_switch_is_crossed_to_the_resumer() {
    unwind::init();
    // Not registered: the walk ends at the coroutine's entry, short of its resumer.
    let (frames, _) = capture_in_a_coroutine();
    let names: Vec<&str> = frames.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        !names.iter().any(|n| n.ends_with("capture_in_a_coroutine")),
        "{names:?}"
    );
    let id = register_switch();
    let (frames, stop) = capture_in_a_coroutine();
    transition::unregister(id).unwrap();
    let names: Vec<&str> = frames.iter().map(|(n, _)| n.as_str()).collect();
    // The body and the coroutine's entry, then (found by the transition) `resume`, its caller
    // and on to the test thread's root.
    let crossed = frames
        .iter()
        .position(|(_, via)| *via == Via::Transition)
        .unwrap_or_else(|| panic!("no transition in {names:?}"));
    assert!(
        names[..crossed].contains(&"custom_switch::entry"),
        "{names:?}"
    );
    assert_eq!(names[crossed], "custom_switch::Co::resume", "{names:?}");
    assert_eq!(
        names.get(crossed + 1),
        Some(&"custom_switch::capture_in_a_coroutine"),
        "{names:?}"
    );
    assert!(
        names
            .last()
            .is_some_and(|n| *n == "start_thread" || *n == "clone3"),
        "{names:?}"
    );
    assert!(!stop.stopped_early(), "{stop}: {names:?}");
}

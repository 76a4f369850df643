//! DWARF CFI on real stacks: FP and DWARF agree on frame-pointer code; through a C function
//! built without frame pointers FP truncates and Hybrid/Dwarf recover every frame above it, also
//! from a signal handler that interrupts it; malformed CFI fails cleanly; a kernel core unwinds
//! the same with `--mode dwarf` as with `--mode fp`.

mod common;
use common::skip::skip;

use common::{describe, name_of};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use unwind::dwarf::{self, CfiError, PreparedCfi, Sections, Unwinder};
use unwind::{ArchKind, Frame, Mode, Trace};

fn unwinder() -> &'static Unwinder {
    unwind::modules::unwinder_or_refresh()
}

fn names(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| name_of(f.lookup_pc()).unwrap_or("?").to_string())
        .collect()
}

fn has(frames: &[Frame], part: &str) -> bool {
    names(frames).iter().any(|n| n.contains(part))
}

/// Index of the first frame whose name contains `part`.
fn pos(frames: &[Frame], part: &str) -> Option<usize> {
    names(frames).iter().position(|n| n.contains(part))
}

// ---- recursion: FP == DWARF ------------------------------------------------------------

struct Three {
    /// `unwind::capture_with`, the frame-pointer API, for `fp` to match.
    plain: (Vec<Frame>, Trace),
    fp: (Vec<Frame>, Trace),
    dwarf: (Vec<Frame>, Trace),
    hybrid: (Vec<Frame>, Trace),
}

#[inline(never)]
fn capture3() -> Three {
    let u = unwinder();
    let mut a = vec![Frame::EMPTY; 256];
    let mut b = vec![Frame::EMPTY; 256];
    let mut c = vec![Frame::EMPTY; 256];
    let ta = dwarf::capture(&mut a, u, Mode::FramePointer);
    let tb = dwarf::capture(&mut b, u, Mode::Dwarf);
    let tc = dwarf::capture(&mut c, u, Mode::Hybrid);
    let mut d = vec![Frame::EMPTY; 256];
    let td = unwind::capture_with(&mut d, unwind::Options::default());
    d.truncate(td.len);
    a.truncate(ta.len);
    b.truncate(tb.len);
    c.truncate(tc.len);
    Three {
        plain: (d, td),
        fp: (a, ta),
        dwarf: (b, tb),
        hybrid: (c, tc),
    }
}

#[inline(never)]
fn recurse_dwarf_fixture(n: u32) -> Three {
    if n == 0 {
        black_box(capture3())
    } else {
        let r = recurse_dwarf_fixture(black_box(n - 1));
        black_box(n);
        r
    }
}

#[inline(never)]
fn recursion_outer_marker() -> Three {
    black_box(recurse_dwarf_fixture(black_box(12)))
}

#[inline(never)]
fn fill_small_buffers() -> Vec<(Mode, Vec<Frame>, Trace)> {
    let u = unwinder();
    let mut out = Vec::new();
    for mode in [Mode::FramePointer, Mode::Dwarf, Mode::Hybrid] {
        let mut buf = vec![Frame::EMPTY; 6];
        let t = dwarf::capture(&mut buf, u, mode);
        out.push((mode, buf, t));
    }
    black_box(out)
}

/// Every mode fills the whole buffer with callers (a capture function that walked from its own
/// registers used to spend a slot on itself and report "buffer full" one frame short), frame
/// 0 being the function that called `capture`.
#[test]
fn every_mode_fills_the_buffer_from_its_caller() {
    let got = black_box(recurse_small(10));
    for (mode, buf, t) in got {
        assert_eq!(
            t.len,
            buf.len(),
            "{mode:?}: {t:?}\n{}",
            describe(&buf[..t.len])
        );
        assert_eq!(t.stop, unwind::StopReason::BufferFull, "{mode:?}");
        let n = names(&buf);
        assert!(n[0].contains("fill_small_buffers"), "{mode:?}: {n:?}");
        assert!(
            n[1..].iter().all(|f| f.contains("recurse_small")),
            "{mode:?}: {n:?}"
        );
    }
}

#[inline(never)]
fn recurse_small(n: u32) -> Vec<(Mode, Vec<Frame>, Trace)> {
    if n == 0 {
        black_box(fill_small_buffers())
    } else {
        let r = recurse_small(black_box(n - 1));
        black_box(n);
        r
    }
}

#[test]
fn recursion_fp_and_dwarf_identical() {
    let t = recursion_outer_marker();
    let (fp, dw, hy) = (&t.fp.0, &t.dwarf.0, &t.hybrid.0);
    let end = pos(fp, "recursion_outer_marker").expect("marker in fp trace") + 1;
    assert!(end >= 14, "{}", describe(fp));
    let pcs = |f: &[Frame]| f.iter().map(|f| f.pc).collect::<Vec<_>>();
    // Each capture starts at its own call site in capture3: compare from frame 1 on.
    assert!(dw.len() >= end, "dwarf trace short:\n{}", describe(dw));
    assert_eq!(
        pcs(&fp[1..end]),
        pcs(&dw[1..end]),
        "fp:\n{}\ndwarf:\n{}",
        describe(fp),
        describe(dw)
    );
    assert_eq!(
        pcs(&fp[1..end]),
        pcs(&hy[1..end]),
        "hybrid:\n{}",
        describe(hy)
    );
    assert!(dw[1..end].iter().all(|f| f.via == unwind::Via::Dwarf));
    // Frame-pointer mode is the frame-pointer API's walk (its fast entry): the same frames and
    // the same reason to stop.
    let plain = &t.plain.0;
    assert_eq!(
        pcs(&fp[1..]),
        pcs(&plain[1..]),
        "capture_with:\n{}",
        describe(plain)
    );
    assert_eq!(t.fp.1.stop, t.plain.1.stop);
    // DWARF goes at least as far as frame records (it also crosses libc's start_thread).
    assert!(
        dw.len() >= fp.len(),
        "fp:\n{}\ndwarf:\n{}",
        describe(fp),
        describe(dw)
    );
    let v = unwind::verify::compare(&fp[1..], t.fp.1.stop, &dw[1..], t.dwarf.1.stop);
    assert!(v.agreed >= end - 1, "{v:?}");
}

#[test]
fn verify_here_agrees_on_frame_pointer_code() {
    #[inline(never)]
    fn verify_marker_fn() -> unwind::verify::Verdict {
        black_box(unwind::verify::verify_here(unwinder(), 256))
    }
    let v = verify_marker_fn();
    // Frame-pointer code agrees; differences, if any, only below the Rust test harness (libc).
    assert!(v.agreed >= 3, "{v:?}");
    for d in &v.differences {
        if let unwind::verify::Difference::DifferentPc { fp_index, .. } = d {
            assert!(*fp_index > 3, "{v:?}");
        }
    }
}

// ---- a C function without frame pointers in the middle ---------------------------------

mod nofp {
    use super::*;
    // Built by the dev-dependency fixtures/c/nofp-sys (a C compiler is needed to build the tests).
    use unwind_nofp_fixture::{
        unwind_nofp_call, unwind_nofp_spin, unwind_nofp_spinning, unwind_nofp_stop,
    };

    extern "C" fn nofp_callback(arg: *mut libc::c_void) {
        // SAFETY: arg is the &mut Option<Three> passed by nofp_mid.
        let out = unsafe { &mut *(arg as *mut Option<Three>) };
        *out = Some(capture3());
    }

    #[inline(never)]
    fn nofp_mid() -> Three {
        let mut out: Option<Three> = None;
        // SAFETY: the callback writes through the pointer only during this call.
        unsafe { unwind_nofp_call(nofp_callback, (&mut out as *mut Option<Three>).cast()) };
        black_box(out.expect("callback ran"))
    }

    #[inline(never)]
    fn nofp_outer_marker() -> Three {
        black_box(nofp_mid())
    }

    #[test]
    fn fp_truncates_hybrid_and_dwarf_recover() {
        let t = nofp_outer_marker();
        let (fp, dw, hy) = (&t.fp.0, &t.dwarf.0, &t.hybrid.0);
        for f in [fp, dw, hy] {
            assert!(has(f, "nofp_callback"), "{}", describe(f));
            assert!(has(f, "unwind_nofp_call"), "{}", describe(f));
        }
        assert!(
            !has(fp, "nofp_mid") && !has(fp, "nofp_outer_marker"),
            "fp went through a function without frame pointers?\n{}",
            describe(fp)
        );
        assert_eq!(t.fp.1.stop, unwind::StopReason::End, "{}", describe(fp));
        for (what, f) in [("dwarf", dw), ("hybrid", hy)] {
            let c = pos(f, "unwind_nofp_call").unwrap();
            let m = pos(f, "nofp_mid").unwrap_or_else(|| panic!("{what}:\n{}", describe(f)));
            let o = pos(f, "nofp_outer_marker").unwrap();
            let test = pos(f, "fp_truncates_hybrid_and_dwarf_recover").unwrap();
            assert!(
                c < m && m == c + 1 && m < o && o < test,
                "{what}:\n{}",
                describe(f)
            );
        }
        // Hybrid uses frame records above the C function again.
        let o = pos(hy, "nofp_outer_marker").unwrap();
        assert!(
            hy[o..].iter().any(|f| f.via == unwind::Via::FramePointer),
            "{}",
            describe(hy)
        );
    }

    const DEPTH: usize = 64;
    #[allow(clippy::declare_interior_mutable_const)]
    const Z: AtomicU64 = AtomicU64::new(0);
    /// [mode][0] = len, [mode][1..] = pcs. Modes: fp, hybrid, dwarf.
    static SAMPLES: [[AtomicU64; DEPTH + 1]; 3] = [[Z; DEPTH + 1], [Z; DEPTH + 1], [Z; DEPTH + 1]];
    static HANDLED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
        let Some(u) = unwind::modules::unwinder() else {
            return;
        };
        for (i, mode) in [Mode::FramePointer, Mode::Hybrid, Mode::Dwarf]
            .into_iter()
            .enumerate()
        {
            let mut buf = [Frame::EMPTY; DEPTH];
            // SAFETY: uc is the ucontext the kernel passed to this SA_SIGINFO handler.
            let t = unsafe { dwarf::capture_from_ucontext(uc, &mut buf, u, mode) };
            SAMPLES[i][0].store(t.len as u64, Ordering::Relaxed);
            for (a, f) in SAMPLES[i][1..].iter().zip(&buf[..t.len]) {
                a.store(f.pc, Ordering::Relaxed);
            }
        }
        HANDLED.store(true, Ordering::Release);
    }

    #[inline(never)]
    fn spin_mid() -> i64 {
        // SAFETY: a plain C function.
        black_box(unsafe { unwind_nofp_spin() }) as i64 + 1
    }

    #[inline(never)]
    fn spin_outer_marker() -> i64 {
        black_box(spin_mid()) + 1
    }

    #[test]
    fn signal_handler_hybrid_recovers_interrupted_nofp_leaf() {
        unwind::modules::refresh();
        // SAFETY: installs a SA_SIGINFO handler that only does async-signal-safe work.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal
                as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut()), 0);
        }
        let tid = std::sync::Arc::new(AtomicU64::new(0));
        let tid2 = tid.clone();
        let worker = std::thread::spawn(move || {
            unwind::init_thread();
            // SAFETY: pthread_self has no preconditions.
            tid2.store(unsafe { libc::pthread_self() } as u64, Ordering::Release);
            spin_outer_marker()
        });
        // SAFETY: reading a C int flag the fixture sets.
        while unsafe { core::ptr::read_volatile(core::ptr::addr_of!(unwind_nofp_spinning)) } == 0 {
            std::thread::yield_now();
        }
        let t = tid.load(Ordering::Acquire) as libc::pthread_t;
        while !HANDLED.load(Ordering::Acquire) {
            // SAFETY: the worker thread is alive (it spins until we set the stop flag).
            unsafe { libc::pthread_kill(t, libc::SIGPROF) };
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // SAFETY: a C int the fixture polls.
        unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!(unwind_nofp_stop), 1) };
        worker.join().unwrap();
        let get = |i: usize| -> Vec<Frame> {
            let n = SAMPLES[i][0].load(Ordering::Relaxed) as usize;
            SAMPLES[i][1..=n]
                .iter()
                .enumerate()
                .map(|(k, a)| Frame {
                    pc: a.load(Ordering::Relaxed),
                    stack: 0,
                    via: unwind::Via::FramePointer,
                    flags: if k == 0 { Frame::EXACT } else { 0 },
                    transition: 0,
                })
                .collect()
        };
        let (fp, hy, dw) = (get(0), get(1), get(2));
        assert!(has(&fp[..1], "unwind_nofp_spin"), "{}", describe(&fp));
        assert!(!has(&fp, "spin_mid"), "fp got through?\n{}", describe(&fp));
        for (what, f) in [("hybrid", &hy), ("dwarf", &dw)] {
            assert!(has(&f[..1], "unwind_nofp_spin"), "{what}\n{}", describe(f));
            assert_eq!(pos(f, "spin_mid"), Some(1), "{what}\n{}", describe(f));
            assert_eq!(
                pos(f, "spin_outer_marker"),
                Some(2),
                "{what}\n{}",
                describe(f)
            );
        }
    }
}

// ---- malformed CFI ----------------------------------------------------------------------

fn own_sections() -> (Vec<u8>, u64, Vec<u8>, u64) {
    use object::{Object, ObjectSection};
    let data = std::fs::read("/proc/self/exe").unwrap();
    let file = object::File::parse(&*data).unwrap();
    let s = |n| {
        let s = file.section_by_name(n).unwrap();
        (s.data().unwrap().to_vec(), s.address())
    };
    let (eh, eh_a) = s(".eh_frame");
    let (hdr, hdr_a) = s(".eh_frame_hdr");
    (eh, eh_a, hdr, hdr_a)
}

fn parse(eh: &[u8], eh_a: u64, hdr: Option<(&[u8], u64)>) -> Result<PreparedCfi, CfiError> {
    let s = Sections {
        eh_frame: Some((eh, eh_a)),
        eh_frame_hdr: hdr,
        ..Sections::default()
    };
    PreparedCfi::parse(ArchKind::native().unwrap(), &s, 0, "test")
}

#[test]
fn malformed_cfi_errors_cleanly() {
    let (eh, eh_a, hdr, hdr_a) = own_sections();
    let good = parse(&eh, eh_a, Some((&hdr, hdr_a))).expect("own CFI parses");
    assert!(good.len() > 1000);
    // Truncated inside an entry: a parse error, not a panic or a partial table.
    for cut in [7, eh.len() / 3, eh.len() / 2 + 5, eh.len() - 3] {
        match parse(&eh[..cut], eh_a, None) {
            Err(CfiError::Parse(_)) => {}
            Ok(t) => assert!(t.len() <= good.len()), // cut exactly at an entry boundary
            Err(e) => panic!("cut {cut}: {e}"),
        }
    }
    // A bogus FDE count in .eh_frame_hdr.
    let mut bad = hdr.clone();
    bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        parse(&eh, eh_a, Some((&bad, hdr_a))).unwrap_err(),
        CfiError::BadHeader
    );
    let mut bad = hdr.clone();
    bad[0] = 9;
    assert_eq!(
        parse(&eh, eh_a, Some((&bad, hdr_a))).unwrap_err(),
        CfiError::BadHeader
    );
    // Nothing at all.
    assert_eq!(
        PreparedCfi::parse(ArchKind::X86_64, &Sections::default(), 0, "x").unwrap_err(),
        CfiError::NoCfi
    );
    // Bit flips and garbage: bounded, no panic (the result may be an error or a table).
    let mut x = 0x9e3779b97f4a7c15u64;
    let n = AtomicUsize::new(0);
    for _ in 0..200 {
        let mut m = eh[..eh.len().min(4096)].to_vec();
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % m.len();
            m[i] ^= (x >> 32) as u8;
        }
        match parse(&m, eh_a, None) {
            Err(_) => {
                n.fetch_add(1, Ordering::Relaxed);
            }
            // A table from flipped bytes is bounded by its input: at most a row per byte.
            Ok(t) => assert!(
                t.len() <= m.len(),
                "{} rows from {} bytes",
                t.len(),
                m.len()
            ),
        }
    }
    // 1,600 flipped bytes in real CFI: some of them must break an entry.
    let n = n.into_inner();
    assert!(n > 0, "no flip made a parse error");
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    match parse(&garbage, 0, None) {
        Err(_) => {}
        Ok(t) => assert!(t.len() <= garbage.len(), "{} rows from garbage", t.len()),
    }
}

// ---- offline: a kernel core ------------------------------------------------------------

#[test]
fn kernel_core_dwarf_matches_fp() {
    let out = std::env::temp_dir().join(format!("unwind-dwarf-core-{}", std::process::id()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/c/make-core.sh");
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    if pattern.trim_start().starts_with('|') {
        skip(&format!("skipped: core_pattern pipes cores to {pattern}"));
        return;
    }
    let st = std::process::Command::new("bash")
        .arg(script)
        .args(["x86_64", "chain"])
        .arg(&out)
        .output()
        .expect("run make-core.sh");
    assert!(
        st.status.success(),
        "make-core.sh failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let core = unwind::core_file::Core::open(&out.join("core-x86_64-chain")).unwrap();
    let run = |mode| {
        let opts = unwind::offline::Options {
            mode,
            ..Default::default()
        };
        unwind::offline::unwind_core(&core, &opts).unwrap()
    };
    let (fp, dw, hy) = (run(Mode::FramePointer), run(Mode::Dwarf), run(Mode::Hybrid));
    assert!(dw.warnings.is_empty(), "{:?}", dw.warnings);
    let f = &fp.threads[0].frames;
    let d = &dw.threads[0].frames;
    let h = &hy.threads[0].frames;
    let sym = |r: &unwind::offline::Report, fr: &[Frame]| -> Vec<String> {
        fr.iter()
            .map(|x| {
                r.symbols
                    .lookup(x.lookup_pc())
                    .map_or("?".into(), |s| s.name.to_string())
            })
            .collect()
    };
    let fs = sym(&fp, f);
    assert_eq!(&fs[..4], ["gamma_", "beta_", "alpha_", "main"], "{fs:?}");
    // Every frame FP found, DWARF finds the same, in order; DWARF continues through libc.
    let pcs = |fr: &[Frame]| fr.iter().map(|x| x.pc).collect::<Vec<_>>();
    assert_eq!(pcs(&d[..f.len()]), pcs(f), "{:?}", sym(&dw, d));
    assert_eq!(pcs(&h[..f.len()]), pcs(f), "{:?}", sym(&hy, h));
    assert!(
        sym(&dw, d).iter().any(|s| s == "_start"),
        "{:?}",
        sym(&dw, d)
    );
    assert_eq!(dw.threads[0].stop, unwind::StopReason::End);
    // Verification names only frames FP missed (below main, in libc).
    let (v, _) = unwind::verify::verify_core(&core, &Default::default()).unwrap();
    assert_eq!(v[0].verdict.agreed, f.len());
    assert!(v[0]
        .verdict
        .differences
        .iter()
        .all(|d| matches!(d, unwind::verify::Difference::Missing { .. })));

    // abort(): the leaf frames are glibc's, without frame records. FP stops at once; Hybrid
    // and Dwarf get through libc to the program's frames.
    let st = std::process::Command::new("bash")
        .arg(script)
        .args(["x86_64", "abort"])
        .arg(&out)
        .output()
        .expect("run make-core.sh");
    assert!(st.status.success());
    let core = unwind::core_file::Core::open(&out.join("core-x86_64-abort")).unwrap();
    let run = |mode| {
        let opts = unwind::offline::Options {
            mode,
            ..Default::default()
        };
        let r = unwind::offline::unwind_core(&core, &opts).unwrap();
        sym(&r, &r.threads[0].frames)
    };
    let (fp, dw, hy) = (run(Mode::FramePointer), run(Mode::Dwarf), run(Mode::Hybrid));
    assert!(!fp.iter().any(|n| n == "abort_gamma"), "{fp:?}");
    for n in [&dw, &hy] {
        let i = n
            .iter()
            .position(|s| s == "abort_gamma")
            .expect("abort_gamma");
        assert_eq!(
            &n[i..i + 4],
            ["abort_gamma", "abort_beta", "abort_alpha", "main"]
        );
    }
    assert_eq!(dw, hy);
    let _ = std::fs::remove_dir_all(&out);
}

/// aarch64 (qemu-user core: only the executable's CFI, no libc): CFI recovers the leaf's caller
/// from lr; Hybrid must not use a wrong stack pointer after a frame-record step (the record is
/// at the bottom of an aarch64 frame) and follows frame records where CFI is missing.
#[test]
fn aarch64_qemu_core_dwarf_and_hybrid() {
    let have = |tool: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("qemu-aarch64") || !have("aarch64-linux-gnu-gcc") {
        skip("skipped: qemu-aarch64 or aarch64-linux-gnu-gcc missing (CI installs them)");
        return;
    }
    let out = std::env::temp_dir().join(format!("unwind-dwarf-a64-{}", std::process::id()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/c/make-core.sh");
    let st = std::process::Command::new("bash")
        .arg(script)
        .args(["aarch64", "chain"])
        .arg(&out)
        .output()
        .expect("run make-core.sh");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let core = unwind::core_file::Core::open(&out.join("core-aarch64-chain")).unwrap();
    let run = |mode| {
        let opts = unwind::offline::Options {
            mode,
            exe: Some(out.join("chain-aarch64")),
            ..Default::default()
        };
        let r = unwind::offline::unwind_core(&core, &opts).unwrap();
        let names: Vec<String> = r.threads[0]
            .frames
            .iter()
            .map(|x| {
                r.symbols
                    .lookup(x.lookup_pc())
                    .map_or("?".into(), |s| s.name.to_string())
            })
            .collect();
        names
    };
    let (fp, dw, hy) = (run(Mode::FramePointer), run(Mode::Dwarf), run(Mode::Hybrid));
    eprintln!("fp {fp:?}\nhybrid {hy:?}\ndwarf {dw:?}");
    // The leaf gamma_ has no frame record (aarch64 gcc omits leaf frames): its caller is in lr.
    // CFI says so; the frame-pointer walk gets it from lr because the instruction before lr
    // is a `bl` to the function holding the pc.
    let chain = ["gamma_", "beta_", "alpha_", "main"];
    assert_eq!(&hy[..4], chain, "{hy:?}");
    assert_eq!(&dw[..4], chain, "{dw:?}");
    assert_eq!(&fp[..4], chain, "{fp:?}");
    // Hybrid continues with frame records through libc (no CFI in a qemu core) like FP.
    assert_eq!(hy, fp);
    let _ = std::fs::remove_dir_all(&out);
}

/// `.debug_frame` (what Go binaries carry instead of `.eh_frame`): a C program built with its
/// CFI only in `.debug_frame` (eh_frame stripped) gives the same rules as with `.eh_frame`.
#[test]
fn debug_frame_only() {
    use object::{Object, ObjectSymbol};
    let dir = std::env::temp_dir().join(format!("unwind-debug-frame-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/c/chain.c");
    let eh = dir.join("eh");
    let dbg = dir.join("dbg");
    let ok = std::process::Command::new("gcc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&eh)
        .arg(src)
        .status()
        .expect("gcc");
    assert!(ok.success());
    // The same code with its CFI in .debug_frame, then the C runtime's .eh_frame removed.
    let tmp = dir.join("tmp");
    let ok = std::process::Command::new("gcc")
        .args([
            "-O0",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
            "-pthread",
            "-o",
        ])
        .arg(&tmp)
        .arg(src)
        .status()
        .expect("gcc");
    assert!(ok.success());
    let ok = std::process::Command::new("objcopy")
        .args([
            "--remove-section",
            ".eh_frame",
            "--remove-section",
            ".eh_frame_hdr",
        ])
        .arg(&tmp)
        .arg(&dbg)
        .status()
        .expect("objcopy");
    assert!(ok.success());
    let data = std::fs::read(&dbg).unwrap();
    let file = object::File::parse(&*data).unwrap();
    assert!(file.section_by_name(".eh_frame").is_none());
    assert!(file.section_by_name(".debug_frame").is_some());
    let arch = ArchKind::X86_64;
    let a = dwarf::parse_file(arch, &eh, 0).unwrap();
    let b = dwarf::parse_file(arch, &dbg, 0).unwrap();
    let mut checked = 0;
    for name in ["gamma_", "beta_", "alpha_", "main"] {
        let sym = file.symbols().find(|s| s.name() == Ok(name)).unwrap();
        for off in 0..sym.size() {
            let pc = sym.address() + off;
            let (ra, rb) = (a.rule(pc).unwrap(), b.rule(pc).unwrap());
            assert_eq!(ra, rb, "{name}+{off:#x}");
            checked += 1;
        }
    }
    assert!(checked > 20);
    let _ = std::fs::remove_dir_all(&dir);
}

//! `core_file`: arbitrary bytes as an ELF core, then the whole offline unwind (`unwind stack`).
//!
//! # Input format
//! The core file itself. Its last byte (when there is one) also picks a policy:
//! `byte % 7` = 0 none, else `ProfileKind::ALL[byte % 7 - 1]`. The byte before it picks the
//! mode (`b % 3`: frame pointers, DWARF, hybrid) and `--exe` (`b / 3 % 4`: none, the fixture
//! executable under `sysroot`, a hostile path from [`HOSTILE`], that executable spelled another
//! way).
//!
//! # Files
//! `unwind stack` opens the files a core names: `NT_FILE` paths, the auxv's `AT_EXECFN` and the
//! link map's names (qemu-user cores, read from the core's memory), `--exe`, under `--sysroot`;
//! all through `unwind::safe_open`. So that the fuzzer cannot make the harness read arbitrary
//! files of the machine it runs on, an `NT_FILE` path that is not a regular file under `sysroot`
//! becomes one of [`HOSTILE`] (devices, a FIFO, `/proc` and `/sys` files, other spellings of a
//! fixture: what the opener must refuse or deduplicate), picked by a hash of the path, or is made
//! relative (skipped). `AT_EXECFN` and link-map names go through as the core holds them.
//!
//! # What it checks
//! No panic, no hang, bounded memory (the fuzzer's limits); every warning one line; at most
//! [`unwind::symbols::MAX_MODULES`] mapped files plus `--exe` and the link map's 1024 entries
//! loaded; every thread is walked; at most [`MAX_FRAMES`] frames; a walk that did not stop
//! early (and no policy cut) begins at the thread's pc; the memory's word reads agree with its
//! byte reads; frames are symbolised and rendered.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use unwind::arch::{Aarch64, Arch, ArchKind, X86_64};
use unwind::core_file::Core;
use unwind::memory::Memory;
use unwind::offline::{unwind_core, Options, MAX_FRAMES};
use unwind::policy::ProfileKind;
use unwind::walk::Mode;

/// Paths a hostile core names instead of modules ("FIFO" is replaced by [`fifo`]).
pub const HOSTILE: [&str; 10] = [
    "/dev/zero",
    "/dev/urandom",
    "FIFO",
    "/proc/self/pagemap",
    "//proc/./self/../self/mem",
    "/proc/self/exe",
    "/sys/kernel/notes",
    "/tmp/../tmp/unwind-fixtures//chain-x86_64",
    "/tmp/unwind-fixtures/./chain-x86_64",
    "/tmp/unwind-fixtures/chain-aarch64",
];

/// A FIFO for the harness (made once, in the temporary directory).
pub fn fifo() -> &'static str {
    static FIFO: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FIFO.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("unwind-fuzz-fifo-{}", std::process::id()));
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call. An existing FIFO is fine.
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        p.to_str().unwrap().to_string()
    })
}

fn hostile(i: usize) -> String {
    match HOSTILE[i % HOSTILE.len()] {
        "FIFO" => fifo().to_string(),
        p => p.to_string(),
    }
}

/// Keeps mapping paths that are regular files under `sysroot`; the rest become hostile paths
/// (or relative ones, which are skipped), never other files of this machine.
fn sanitise(core: &mut Core, sysroot: &Path) {
    for m in &mut core.mappings {
        let safe = m.path.starts_with('/')
            && !m.path.split('/').any(|c| c == "..")
            && std::fs::symlink_metadata(sysroot.join(m.path.trim_start_matches('/')))
                .is_ok_and(|md| md.is_file());
        if !safe {
            let h = m.path.bytes().fold(0usize, |h, b| {
                h.wrapping_mul(31).wrapping_add(usize::from(b))
            });
            m.path = if h % 4 == 0 {
                m.path.trim_start_matches('/').to_string()
            } else {
                hostile(h / 4)
            };
        }
    }
}

/// The `core_file` harness. `sysroot` holds the only files it lets the unwinder open.
pub fn core_file(data: &[u8], sysroot: &Path) {
    let Ok(mut core) = Core::from_bytes(data.to_vec()) else {
        return;
    };
    assert!(!core.threads.is_empty(), "a parsed core has threads");
    sanitise(&mut core, sysroot);

    // Word reads agree with byte reads.
    {
        let mut mem = core.memory();
        for t in &core.threads {
            for a in [t.regs.sp, t.regs.fp, t.regs.pc, t.regs.sp.wrapping_sub(4)] {
                let mut b = [0u8; 8];
                let ok = mem.read_bytes(a, &mut b);
                assert_eq!(mem.read_u64(a), ok.then(|| u64::from_le_bytes(b)));
                if let Some(r) = mem.stack_range(a) {
                    assert!(r.contains(a));
                }
            }
        }
    }

    let policy = match data.last().map(|b| b % 7) {
        None | Some(0) => None,
        Some(k) => Some(ProfileKind::ALL[(k - 1) as usize].policy()),
    };
    let b = data.len().checked_sub(2).map_or(0, |i| data[i]);
    let mode = [Mode::FramePointer, Mode::Dwarf, Mode::Hybrid][usize::from(b % 3)];
    let exe = match b / 3 % 4 {
        0 => None,
        1 => Some(sysroot.join("tmp/unwind-fixtures/chain-x86_64")),
        2 => Some(PathBuf::from(hostile(usize::from(b)))),
        _ => Some(sysroot.join("tmp/./unwind-fixtures//chain-aarch64")),
    };
    // Options may gain fields (a process source, defaults): those keep their defaults.
    #[allow(clippy::needless_update)]
    let opts = Options {
        exe,
        sysroot: Some(sysroot.to_path_buf()),
        mode,
        policy,
        ..Default::default()
    };
    let Ok(report) = unwind_core(&core, &opts) else {
        return;
    };
    assert_eq!(report.threads.len(), core.threads.len());
    for w in &report.warnings {
        assert!(!w.contains('\n'), "a warning is one line: {w:?}");
    }
    assert!(report.symbols.modules().len() <= unwind::symbols::MAX_MODULES + 1026);
    let mut out = String::new();
    for (t, th) in report.threads.iter().zip(&core.threads) {
        assert_eq!(t.tid, th.tid);
        assert!(t.frames.len() <= MAX_FRAMES);
        let pc = match core.arch {
            ArchKind::X86_64 => X86_64::strip_ra(th.regs.pc, core.pac_mask),
            ArchKind::Aarch64 => Aarch64::strip_ra(th.regs.pc, core.pac_mask),
        };
        if policy.is_none() && pc != 0 {
            assert_eq!(t.frames.first().map(|f| f.pc), Some(pc));
        }
        let _ = writeln!(out, "thread {} ({})", t.tid, t.stop);
        for f in &t.frames {
            let sym = report.symbols.lookup(f.lookup_pc());
            match sym {
                Some(s) => {
                    let _ = writeln!(out, "  {:#x} {}+{:#x} {}", f.pc, s.name, s.offset, s.module);
                }
                None => {
                    let _ = writeln!(out, "  {:#x} ?? via {}", f.pc, f.via);
                }
            }
        }
    }
    for (id, name) in &report.transitions {
        let _ = writeln!(out, "transition {id}: {name}");
    }
    std::hint::black_box(out);
}

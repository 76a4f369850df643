//! `core_file`: arbitrary bytes as an ELF core, then the whole offline unwind (`unwind stack`).
//!
//! # Input format
//! The core file itself. Its last byte (when there is one) also picks a policy:
//! `byte % 7` = 0 none, else `ProfileKind::ALL[byte % 7 - 1]`.
//!
//! # Files
//! `unwind stack` opens the files a core's `NT_FILE` note lists. Fuzzed paths could name
//! anything (`/dev/zero`, a FIFO), so the harness only lets through paths that exist as regular
//! files under `sysroot` (the harness's own small tree of fixture binaries) and contain no `..`;
//! every other path is made relative, which the symbolizer skips. There is no `--exe`.
//!
//! # What it checks
//! No panic; every thread is walked; at most [`MAX_FRAMES`] frames; a walk that did not stop
//! early (and no policy cut) begins at the thread's pc; the memory's word reads agree with its
//! byte reads; frames are symbolised and rendered.

use std::fmt::Write;
use std::path::Path;
use unwind::arch::{Aarch64, Arch, ArchKind, X86_64};
use unwind::core_file::Core;
use unwind::memory::Memory;
use unwind::offline::{unwind_core, Options, MAX_FRAMES};
use unwind::policy::ProfileKind;

/// Keeps only mapping paths that are regular files under `sysroot`; makes the rest relative.
fn sanitise(core: &mut Core, sysroot: &Path) {
    for m in &mut core.mappings {
        let safe = m.path.starts_with('/')
            && !m.path.split('/').any(|c| c == "..")
            && std::fs::symlink_metadata(sysroot.join(m.path.trim_start_matches('/')))
                .is_ok_and(|md| md.is_file());
        if !safe {
            m.path = m.path.trim_start_matches('/').to_string();
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
    let opts = Options {
        exe: None,
        sysroot: Some(sysroot.to_path_buf()),
        mode: Default::default(),
        policy,
    };
    let Ok(report) = unwind_core(&core, &opts) else {
        return;
    };
    assert_eq!(report.threads.len(), core.threads.len());
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

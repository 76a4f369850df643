//! Lazy CFI against the prepared table, on real modules.

use super::*;

/// The prepared and the lazy table of the ELF file at `path` (`None` when the file is missing
/// or cannot be lazy).
fn both(path: &str) -> Option<(std::sync::Arc<Vec<u8>>, PreparedCfi)> {
    let data = std::fs::read(path).ok()?;
    let eager = parse_elf(ArchKind::X86_64, &data, 0x7f00_0000_0000, path).ok()?;
    Some((std::sync::Arc::new(data), eager))
}

/// Every lookup address of the module: the same rule and the same hybrid answer.
fn compare(path: &str) -> usize {
    let Some((data, eager)) = both(path) else {
        return 0;
    };
    let lazy = match parse_elf_lazy(ArchKind::X86_64, &data, 0x7f00_0000_0000, path).unwrap() {
        ModuleCfi::Lazy(t) => t,
        ModuleCfi::Prepared(_) => panic!("{path}: expected a lazy table"),
    };
    let r = eager.range();
    assert_eq!(lazy.range(), r, "{path}");
    let mut n = 0;
    for pc in r.lo.saturating_sub(64)..r.hi + 64 {
        assert_eq!(lazy.rule(pc), eager.rule(pc), "{path}: rule at {pc:#x}");
        assert_eq!(
            lazy.keeps_frame_record(pc),
            eager.keeps_frame_record(pc),
            "{path}: frame record at {pc:#x}"
        );
        n += 1;
    }
    assert_eq!(lazy.error(), None);
    n
}

#[test]
#[cfg(target_arch = "x86_64")]
fn lazy_rows_match_the_prepared_table_for_every_pc_of_libc() {
    let mut checked = 0;
    for p in [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
    ] {
        if std::path::Path::new(p).exists() {
            checked += compare(p);
            break;
        }
    }
    assert!(checked > 100_000, "no libc checked ({checked} pcs)");
}

#[test]
#[cfg(target_arch = "x86_64")]
fn lazy_rows_match_the_prepared_table_for_every_pc_of_this_test_binary() {
    let exe = std::env::current_exe().unwrap();
    let n = compare(exe.to_str().unwrap());
    assert!(n > 100_000, "{n}");
}

/// An `.eh_frame_hdr` whose count overruns it, or in another encoding, is not lazy: the
/// prepared table reports it.
#[test]
fn bad_headers_are_not_lazy() {
    let eh = [0u8; 16];
    let mut hdr = vec![1, 0x1b, 0x03, 0x3b, 0, 0, 0, 0];
    hdr.extend_from_slice(&1000u32.to_le_bytes());
    hdr.extend_from_slice(&[0; 8]);
    let s = Sections {
        eh_frame: Some((&eh, 0x1000)),
        eh_frame_hdr: Some((&hdr, 0x2000)),
        ..Sections::default()
    };
    assert!(LazyCfi::new(ArchKind::X86_64, &s, 0, "x").is_none());
    assert!(PreparedCfi::parse(ArchKind::X86_64, &s, 0, "x").is_err());
    // One entry pointing at garbage: not lazy (its end cannot be read) or no information.
    hdr[8..12].copy_from_slice(&1u32.to_le_bytes());
    hdr[1] = 0x1b;
    let s = Sections {
        eh_frame: Some((&eh, 0x1000)),
        eh_frame_hdr: Some((&hdr, 0x2000)),
        ..Sections::default()
    };
    if let Some(t) = LazyCfi::new(ArchKind::X86_64, &s, 0, "x") {
        for pc in [0, 0x1000, 0x2000, u64::MAX] {
            assert_eq!(t.rule(pc), None);
        }
    }
    // A .debug_frame (Go, cgo) keeps the prepared table.
    let s = Sections {
        eh_frame: Some((&eh, 0x1000)),
        eh_frame_hdr: Some((&hdr, 0x2000)),
        debug_frame: Some(&eh),
        ..Sections::default()
    };
    assert!(LazyCfi::new(ArchKind::X86_64, &s, 0, "x").is_none());
}

/// An FDE that does not parse gives no information and is recorded; the others still work.
#[test]
fn a_bad_fde_is_recorded() {
    let exe = std::env::current_exe().unwrap();
    let mut data = std::fs::read(&exe).unwrap();
    let hdr_off = {
        use object::{Object, ObjectSection};
        let f = object::File::parse(&*data).unwrap();
        let s = f.section_by_name(".eh_frame_hdr").unwrap();
        s.file_range().unwrap().0 as usize
    };
    let entries = |data: &[u8]| {
        let ModuleCfi::Lazy(t) = parse_elf_lazy(ArchKind::X86_64, data, 0, "x").unwrap() else {
            panic!("not lazy");
        };
        (t.entry(5).unwrap().0, t.entry(6).unwrap().0)
    };
    let (pc5, pc6) = entries(&data);
    assert!(pc5 < pc6);
    let lazy = |data: &[u8]| -> (Option<CfiRow>, Option<CfiRow>, Option<CfiError>) {
        let ModuleCfi::Lazy(t) = parse_elf_lazy(ArchKind::X86_64, data, 0, "x").unwrap() else {
            panic!("not lazy");
        };
        let (a, b) = (t.rule(pc5), t.rule(pc6));
        (a, b, t.error())
    };
    let (a, b, e) = lazy(&data);
    assert!(a.is_some_and(|r| r.flags() & CfiRow::GAP == 0), "{a:?}");
    assert!(b.is_some_and(|r| r.flags() & CfiRow::GAP == 0), "{b:?}");
    assert_eq!(e, None);
    // Entry 5's FDE pointer now points before .eh_frame (the binary search still reads its
    // address).
    let at = hdr_off + 12 + 8 * 5 + 4;
    data[at..at + 4].copy_from_slice(&[0xff; 4]);
    let (a2, b2, e2) = lazy(&data);
    assert_eq!(a2, None);
    assert_eq!(b2, b);
    assert!(e2.is_some());
}

//! Which missing modules deserve a warning when unwinding a core (or another process).
//!
//! A process maps more files than code: locale archives, `gconv-modules.cache`, fonts,
//! databases. They are not modules; failing to read them as ELF is not worth a word. And a
//! module that could not be opened only matters if the walk needed it: a frame's pc lies in
//! it (its frames stay unsymbolised, or the walk stopped there for want of its CFI).
//! [`needed`] keeps the warnings that matter.

use crate::core_file::Mapping;
use crate::memory::Range;
use crate::safe_open::Policy;
use std::collections::HashMap;
use std::path::Path;

/// Is the file at `path` something other than an ELF object (a data file)? False when it
/// cannot be read or is refused by `policy` ([`crate::safe_open`]: a FIFO, a device, a `/proc`
/// file is never opened): a file that cannot be read may well have been a module.
pub fn is_data_file(path: &Path, policy: &Policy) -> bool {
    use std::io::Read;
    let Ok(opened) = crate::safe_open::open(path, policy) else {
        return false;
    };
    let mut magic = [0u8; 4];
    match (&opened.file).read_exact(&mut magic) {
        Ok(()) => &magic != b"\x7fELF",
        Err(_) => true, // shorter than an ELF header
    }
}

/// Filters `(path, message)` warnings about modules: drops data files (see [`is_data_file`],
/// opened at `sysroot` + path with `policy`) and, when the core lists its mappings, modules in which no pc of
/// `pcs` lies (the walk did not need them). A data file in whose mapping a pc lies that
/// `is_code` says is executable memory keeps its warning: the file now there is not what was
/// mapped (a program replaced by a text file; it was dropped without a word, found by outside
/// use in the twenty-sixth round).
pub fn needed(
    warnings: Vec<(String, String)>,
    mappings: &[Mapping],
    sysroot: Option<&Path>,
    policy: &Policy,
    pcs: &[u64],
    mut is_code: impl FnMut(u64) -> Option<bool>,
) -> Vec<String> {
    // Linear in the mappings, the pcs and the warnings (a hostile core lists tens of
    // thousands of mappings): the ranges by path once, the pcs sorted once.
    let mut by_path: HashMap<&str, Vec<Range>> = HashMap::new();
    for m in mappings {
        by_path.entry(m.path.as_str()).or_default().push(m.range);
    }
    let mut pcs = pcs.to_vec();
    pcs.sort_unstable();
    let pcs_in = |r: Range| {
        let i = pcs.partition_point(|&pc| pc < r.lo);
        pcs[i..]
            .iter()
            .copied()
            .take_while(move |&pc| r.contains(pc))
    };
    warnings
        .into_iter()
        .filter(|(path, _)| {
            match by_path.get(path.as_str()) {
                // No mapping to judge by (a qemu core's link map): keep the warning.
                None => true,
                Some(ranges) => ranges.iter().any(|&r| pcs_in(r).next().is_some()),
            }
        })
        .filter(|(path, _)| {
            let ran_code = by_path.get(path.as_str()).is_some_and(|ranges| {
                ranges
                    .iter()
                    .any(|&r| pcs_in(r).any(|pc| is_code(pc) == Some(true)))
            });
            ran_code || !is_data_file(&crate::symbols::resolve(sysroot, path), policy)
        })
        .map(|(_, w)| w)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(path: &str, lo: u64, hi: u64) -> Mapping {
        Mapping {
            range: Range::new(lo, hi),
            offset: 0,
            path: path.into(),
        }
    }

    #[test]
    fn data_files_and_unneeded_modules_are_quiet() {
        let dir = std::env::temp_dir().join(format!("unwind-needed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("locale-archive");
        std::fs::write(&data, b"not an ELF file at all").unwrap();
        let data = data.display().to_string();
        let exe = std::env::current_exe().unwrap().display().to_string();
        let p = Policy::default();
        assert!(is_data_file(Path::new(&data), &p));
        assert!(!is_data_file(Path::new(&exe), &p));
        assert!(!is_data_file(Path::new("/nonexistent/libgone.so"), &p));
        // Never opened, so never a hang: a FIFO is not judged a data file.
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.display().to_string()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(!is_data_file(&fifo, &p));
        let maps = [
            mapping(&data, 0x1000, 0x2000),
            mapping("/nonexistent/libgone.so", 0x10000, 0x20000),
            mapping("/nonexistent/libunused.so", 0x30000, 0x40000),
        ];
        let w = |p: &str| (p.to_string(), format!("module {p} missing"));
        let kept = needed(
            vec![
                w(&data),
                w("/nonexistent/libgone.so"),
                w("/nonexistent/libunused.so"),
                w("/nonexistent/unmapped.so"),
            ],
            &maps,
            None,
            &p,
            &[0x1800, 0x10010],
            |_| None,
        );
        assert_eq!(
            kept,
            vec![
                "module /nonexistent/libgone.so missing".to_string(),
                "module /nonexistent/unmapped.so missing".to_string()
            ]
        );
        // A pc the core says is executable memory, in the data file's mapping: the file there
        // is not what ran, and its warning stays.
        let kept = needed(vec![w(&data)], &maps, None, &p, &[0x1800], |pc| {
            Some(pc == 0x1800)
        });
        assert_eq!(kept, vec![format!("module {data} missing")]);
        std::fs::remove_dir_all(&dir).ok();
    }
}

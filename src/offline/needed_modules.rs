//! Which missing modules deserve a warning when unwinding a core (or another process).
//!
//! A process maps more files than code: locale archives, `gconv-modules.cache`, fonts,
//! databases. They are not modules; failing to read them as ELF is not worth a word. And a
//! module that could not be opened only matters if the walk needed it: a frame's pc lies in
//! it (its frames stay unsymbolised, or the walk stopped there for want of its CFI).
//! [`needed`] keeps the warnings that matter.

use crate::core_file::Mapping;
use crate::memory::Range;
use std::path::Path;

/// Is the file at `path` something other than an ELF object (a data file)? False when it
/// cannot be read: a missing file may well have been a module.
pub fn is_data_file(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic) {
        Ok(()) => &magic != b"\x7fELF",
        Err(_) => true, // shorter than an ELF header
    }
}

/// Filters `(path, message)` warnings about modules: drops data files (see [`is_data_file`],
/// opened at `sysroot` + path) and, when the core lists its mappings, modules in which no pc of
/// `pcs` lies (the walk did not need them).
pub fn needed(
    warnings: Vec<(String, String)>,
    mappings: &[Mapping],
    sysroot: Option<&Path>,
    pcs: &[u64],
) -> Vec<String> {
    warnings
        .into_iter()
        .filter(|(path, _)| !is_data_file(&crate::symbols::resolve(sysroot, path)))
        .filter(|(path, _)| {
            let ranges: Vec<Range> = mappings
                .iter()
                .filter(|m| &m.path == path)
                .map(|m| m.range)
                .collect();
            // No mapping to judge by (a qemu core's link map): keep the warning.
            ranges.is_empty() || pcs.iter().any(|&pc| ranges.iter().any(|r| r.contains(pc)))
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
        assert!(is_data_file(Path::new(&data)));
        assert!(!is_data_file(Path::new(&exe)));
        assert!(!is_data_file(Path::new("/nonexistent/libgone.so")));
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
            &[0x1800, 0x10010],
        );
        assert_eq!(
            kept,
            vec![
                "module /nonexistent/libgone.so missing".to_string(),
                "module /nonexistent/unmapped.so missing".to_string()
            ]
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

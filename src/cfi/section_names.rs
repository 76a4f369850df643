//! Sections found by name without `object`'s name search.
//!
//! `object`'s `section_by_name` reads every section's name up to its NUL with `memchr` and,
//! for a `.debug_*` name it does not find, searches again for `.zdebug_*`: `unwind stack` asks
//! some forty names of a core's few modules (most of them absent, `.gopclntab` from a C
//! library), and those searches were 5% of its run, a third of it `memchr`'s first-call CPU
//! detection (CPUID exits the VM here). [`section_by_name`] compares each ELF section's name in
//! place with the name asked and its NUL; other formats go to `object`.

use object::read::elf::{FileHeader, SectionHeader};
use object::Object;

/// The first section named `name` (or, for a `.debug_*` name, `.zdebug_*`), as
/// `file.section_by_name(name)` finds it. Bounds-checked; a section table or name table that
/// does not parse finds nothing.
pub fn section_by_name<'d, 'f>(
    file: &'f object::File<'d>,
    name: &str,
) -> Option<object::Section<'d, 'f>> {
    let index = match file {
        object::File::Elf64(f) => elf_index(f.elf_header(), f.endian(), f.data(), name),
        object::File::Elf32(f) => elf_index(f.elf_header(), f.endian(), f.data(), name),
        _ => return file.section_by_name(name),
    }?;
    // (`object` does not hand out section 0, the null section, by index: it is named "".)
    file.section_by_index(object::SectionIndex(index))
        .ok()
        .or_else(|| file.section_by_name(name))
}

/// The index of the first section named `name`, else of the first named `.zdebug_*` for a
/// `.debug_*` name.
fn elf_index<H: FileHeader>(
    header: &H,
    endian: H::Endian,
    data: &[u8],
    name: &str,
) -> Option<usize> {
    let headers = header.section_headers(endian, data).ok()?;
    let index = header.shstrndx(endian, data).ok()?;
    let strings = headers.get(index as usize)?.data(endian, data).ok()?;
    let find = |want: &[u8], also: &[u8]| {
        headers.iter().position(|s| {
            let at = s.sh_name(endian) as usize;
            let end = want.len() + also.len();
            strings
                .get(at..)
                .and_then(|n| n.get(..end + 1))
                .is_some_and(|n| {
                    n[..want.len()] == *want && n[want.len()..end] == *also && n[end] == 0
                })
        })
    };
    find(name.as_bytes(), b"").or_else(|| {
        let rest = name.strip_prefix(".debug_")?;
        find(b".zdebug_", rest.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::ObjectSection;

    /// Every section of real files (this test binary, the C library, the loader) is found by
    /// its name as `object` finds it, and names no section has (or a prefix of one) find
    /// nothing.
    #[test]
    fn finds_the_sections_object_finds() {
        let mut files = vec![std::env::current_exe().unwrap()];
        for p in [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ] {
            files.push(p.into());
        }
        let mut seen = 0;
        for path in files.iter().filter(|p| p.exists()) {
            let data = std::fs::read(path).unwrap();
            let file = object::File::parse(&*data).unwrap();
            let mut names: Vec<String> = file
                .sections()
                .filter_map(|s| s.name().ok().map(str::to_string))
                .collect();
            names.extend(
                [
                    ".gopclntab",
                    ".debug_frame",
                    ".debug_nothing",
                    ".tex",
                    ".text.",
                    "",
                ]
                .map(String::from),
            );
            for n in &names {
                let ours = section_by_name(&file, n).map(|s| s.index());
                let theirs = file.section_by_name(n).map(|s| s.index());
                assert_eq!(ours, theirs, "{}: {n:?}", path.display());
                seen += usize::from(ours.is_some());
            }
        }
        assert!(seen > 20, "{seen} sections found");
    }

    /// A `.debug_*` name finds a `.zdebug_*` section (compressed, as old toolchains wrote
    /// them) as `object` does: this test binary with its `.debug_str` renamed `.zdebug_st`
    /// in the section-name table, asked for `.debug_st`. The same bytes cut at every length
    /// find what `object` finds, or nothing, and never panic.
    #[test]
    fn zdebug_names_and_cut_files() {
        let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let file = object::File::parse(&*bytes).unwrap();
        let Some(names) = file
            .section_by_name(".shstrtab")
            .and_then(|s| s.file_range())
        else {
            panic!("no .shstrtab");
        };
        let has_str = file.section_by_name(".debug_str").is_some();
        drop(file);
        assert!(
            has_str,
            "the test binary has no .debug_str (built without debug info?)"
        );
        let (lo, len) = (names.0 as usize, names.1 as usize);
        let at = bytes[lo..lo + len]
            .windows(12)
            .position(|w| w == b"\0.debug_str\0")
            .expect(".debug_str in .shstrtab");
        bytes[lo + at + 1..lo + at + 11].copy_from_slice(b".zdebug_st");
        let file = object::File::parse(&*bytes).unwrap();
        let ours = section_by_name(&file, ".debug_st").map(|s| s.index());
        assert!(ours.is_some());
        assert_eq!(ours, file.section_by_name(".debug_st").map(|s| s.index()));
        assert!(section_by_name(&file, ".debug_str").is_none());
        // Cut: every 97th length (the file is megabytes), and the lengths around the
        // section headers' start.
        let cuts = (0..bytes.len())
            .step_by(97)
            .chain(lo.saturating_sub(64)..lo + 64);
        for cut in cuts {
            if let Ok(file) = object::File::parse(&bytes[..cut]) {
                for n in [".text", ".debug_st", ".eh_frame"] {
                    let ours = section_by_name(&file, n).map(|s| s.index());
                    if ours.is_some() {
                        assert_eq!(ours, file.section_by_name(n).map(|s| s.index()), "{cut}");
                    }
                }
            }
        }
    }
}

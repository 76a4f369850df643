//! `Symbolizer::for_current_process` names this process's code from the files it mapped, not
//! from whatever now lies at their paths.

mod common;

use std::path::{Path, PathBuf};

/// A copy of libm loaded from a fresh directory (`unwind-own-WHAT-PID`), then replaced on disk
/// by another ELF file at its path (this test's own executable), as a rebuild or an upgrade
/// does; kept loaded. The directory, the library's path and the address of its `cos`.
fn loaded_then_replaced(what: &str) -> (PathBuf, PathBuf, u64) {
    let dir = std::env::temp_dir().join(format!("unwind-own-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("libm-{what}.so"));
    let h = common::tools::dlopen_libm_copy(&path);
    std::fs::copy(std::env::current_exe().unwrap(), &path).unwrap();
    let name = std::ffi::CString::new("cos").unwrap();
    // SAFETY: a symbol lookup in a library this test loaded and keeps loaded.
    let cos = unsafe { libc::dlsym(h, name.as_ptr()) } as u64;
    assert_ne!(cos, 0);
    (dir, path, cos)
}

/// A library replaced on disk after it was loaded (deleted, and another ELF file written at
/// its path, as a rebuild or an upgrade does): its functions keep their names. The new file's
/// symbols named them (found by outside use in the twenty-sixth round: a plugin's profile
/// said `qb_new_leaf` for `qa_old_leaf`, a program's `lang_start_internal` was named after a
/// function of the file renamed over it, with no warning).
#[test]
fn a_library_replaced_on_disk_keeps_its_names() {
    let (dir, path, cos) = loaded_then_replaced("symbols");
    let s = unwind::symbols::Symbolizer::for_current_process();
    let sym = s
        .lookup(cos)
        .map(|x| (x.name.to_string(), x.module.to_string()));
    std::fs::remove_dir_all(&dir).ok();
    let (name, module) = sym.expect("cos is named");
    assert!(name.contains("cos"), "{name} in {module}");
    assert!(
        Path::new(module.trim_end_matches(" (deleted)")) == path,
        "{module}"
    );
}

/// The same as a user that may not open `/proc/self/map_files` (only root may): the replaced
/// file's build id is not the one in memory, so the module is read from memory (its exported
/// symbols) instead. Run as `nobody` when this is root; otherwise the test above already ran
/// so.
#[test]
fn a_library_replaced_on_disk_keeps_its_names_without_map_files() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    // A copy nobody can run, wherever the build is.
    let copy = std::env::temp_dir().join(format!("unwind-own-symbols-bin-{}", std::process::id()));
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&copy)
        .args(["--exact", "a_library_replaced_on_disk_keeps_its_names"])
        .output()
        .expect("runuser (util-linux) runs the test as nobody");
    std::fs::remove_file(&copy).ok();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The loaded modules' CFI (`modules::refresh`) of a library replaced on disk after it was
/// loaded comes from its memory, not from the new file at its path: the new file's rules, at
/// the old library's bias, walked the old code (found by outside use in the twenty-sixth
/// round: a Hybrid capture through the old plugin gave `0xffffffffffffcd00` after its leaf).
#[test]
fn a_library_replaced_on_disk_keeps_its_cfi() {
    let (dir, path, cos) = loaded_then_replaced("cfi");
    let original = common::tools::libm_path();
    unwind::modules::refresh();
    let u = unwind::modules::unwinder().expect("prepared");
    let m = unwind::modules::loaded_modules()
        .into_iter()
        .find(|m| Path::new(&m.path) == path)
        .expect("the copy is loaded");
    let want = unwind::dwarf::parse_file(
        unwind::ArchKind::native().unwrap(),
        Path::new(original),
        m.bias,
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    // Inside `cos` (past its first instruction) and its return address.
    for pc in [cos + 1, cos + 8] {
        assert!(want.rule(pc).is_some(), "libm's own CFI covers cos");
        assert_eq!(u.rule(pc), want.rule(pc), "{pc:#x}");
    }
}

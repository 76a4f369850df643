//! `Symbolizer::for_current_process` names this process's code from the files it mapped, not
//! from whatever now lies at their paths.

mod common;

use std::path::Path;

/// A library replaced on disk after it was loaded (deleted, and another ELF file written at
/// its path, as a rebuild or an upgrade does): its functions keep their names. The new file's
/// symbols named them (found by outside use in the twenty-sixth round: a plugin's profile
/// said `qb_new_leaf` for `qa_old_leaf`, a program's `lang_start_internal` was named after a
/// function of the file renamed over it, with no warning).
#[test]
fn a_library_replaced_on_disk_keeps_its_names() {
    let dir = std::env::temp_dir().join(format!("unwind-own-symbols-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("libm-replaced.so");
    let h = common::tools::dlopen_libm_copy(&path);
    // Another ELF file where the library was: this test's own executable.
    std::fs::copy(std::env::current_exe().unwrap(), &path).unwrap();
    let cos = {
        let name = std::ffi::CString::new("cos").unwrap();
        // SAFETY: a symbol lookup in a library this test loaded and keeps loaded.
        unsafe { libc::dlsym(h, name.as_ptr()) as u64 }
    };
    assert_ne!(cos, 0);
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

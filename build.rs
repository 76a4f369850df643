//! Builds the test-only C fixture `fixtures/c/nofp.c` (a function without frame pointers) into a
//! static library in OUT_DIR. The library itself never links it: only tests/dwarf.rs and
//! benches/dwarf.rs name it with `#[link]`. Without a C compiler the crate still builds; the
//! fixture tests then fail loudly (`cfg(unwind_nofp)` is missing).
fn main() {
    println!("cargo:rerun-if-changed=fixtures/c/nofp.c");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-check-cfg=cfg(unwind_nofp)");
    let ok = cc::Build::new()
        .file("fixtures/c/nofp.c")
        .opt_level(1)
        .flag("-fomit-frame-pointer")
        .flag("-fasynchronous-unwind-tables")
        .cargo_metadata(false)
        .try_compile("unwind_nofp");
    match ok {
        Ok(()) => {
            let out = std::env::var("OUT_DIR").unwrap_or_default();
            println!("cargo:rustc-link-search=native={out}");
            println!("cargo:rustc-cfg=unwind_nofp");
        }
        Err(e) => println!("cargo:warning=fixtures/c/nofp.c not built (no C compiler?): {e}"),
    }
}

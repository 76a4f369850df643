//! The build script's reading of rustc's flags (`CARGO_ENCODED_RUSTFLAGS`: arguments joined
//! by 0x1f), which decides whether live captures may follow frame records.

#[allow(dead_code)]
#[path = "../build.rs"]
mod build_script;
use build_script::force_frame_pointers as fp;

#[test]
fn force_frame_pointers_in_every_spelling() {
    assert_eq!(fp(""), None);
    assert_eq!(fp("-C\x1fopt-level=3"), None);
    assert_eq!(fp("-C\x1fforce-frame-pointers=yes"), Some(true));
    assert_eq!(fp("-Cforce-frame-pointers=yes"), Some(true));
    assert_eq!(fp("--codegen=force-frame-pointers=on"), Some(true));
    assert_eq!(fp("--codegen\x1fforce-frame-pointers=always"), Some(true));
    assert_eq!(fp("-Cforce-frame-pointers"), Some(true));
    assert_eq!(fp("-Cforce-frame-pointers=non-leaf"), Some(true));
    assert_eq!(fp("-C\x1fforce-frame-pointers=no"), Some(false));
    assert_eq!(fp("-Cforce-frame-pointers=off"), Some(false));
    // The last setting wins, as with rustc.
    assert_eq!(
        fp("-Cforce-frame-pointers=yes\x1f-Cforce-frame-pointers=no"),
        Some(false)
    );
    assert_eq!(
        fp("-Cforce-frame-pointers=no\x1f-C\x1fforce-frame-pointers=y"),
        Some(true)
    );
    // Not a codegen option, or another option's value.
    assert_eq!(fp("--cfg\x1fforce-frame-pointers=yes"), None);
    assert_eq!(
        fp("-Ctarget-cpu=native\x1f-Zforce-frame-pointers=yes"),
        None
    );
}

/// This repository's own builds have frame pointers (`.cargo/config.toml`), so the tests see
/// frame-record walks; the flag reaches the build script as cargo passes it.
#[test]
fn this_build_has_frame_pointers() {
    assert!(!std::hint::black_box(cfg!(unwind_no_frame_pointers)));
}

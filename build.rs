//! Tells the crate whether its code keeps frame records, which [`capture`]'s frame-pointer
//! walk needs from its own frame on: x86_64 code keeps them only when built with
//! `-C force-frame-pointers=yes` (this repository's `.cargo/config.toml`; a dependent crate's
//! build, which does not read it, has none unless it asks), aarch64 Linux targets always do.
//! Without them `cfg(unwind_no_frame_pointers)` is set, and the live capture functions walk
//! by CFI when it is prepared, or return nothing and say why, instead of following whatever
//! `rbp` holds (which led a walk from a user's function straight into the C `main`).
//!
//! [`capture`]: https://docs.rs/unwind (src/live/capture.rs)

use std::env;

/// The last `force-frame-pointers` setting in rustc's codegen flags, if any.
pub fn force_frame_pointers(flags: &str) -> Option<bool> {
    let mut setting = None;
    let mut args = flags.split('\x1f').filter(|a| !a.is_empty());
    while let Some(a) = args.next() {
        let opt = match a {
            "-C" | "--codegen" => args.next().unwrap_or(""),
            _ => match a
                .strip_prefix("-C")
                .or_else(|| a.strip_prefix("--codegen="))
            {
                Some(rest) => rest,
                None => continue,
            },
        };
        let value = match opt.split_once('=') {
            Some(("force-frame-pointers", v)) => v,
            None if opt == "force-frame-pointers" => "yes",
            _ => continue,
        };
        setting = Some(matches!(
            value,
            "yes" | "y" | "on" | "true" | "always" | "non-leaf"
        ));
    }
    setting
}

pub fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    // aarch64 Linux targets keep a frame record in every non-leaf function whatever the flags
    // say (the target's minimum); elsewhere only the flag gives them.
    let keeps = arch == "aarch64" || force_frame_pointers(&flags) == Some(true);
    if !keeps {
        println!("cargo:rustc-cfg=unwind_no_frame_pointers");
    }
}

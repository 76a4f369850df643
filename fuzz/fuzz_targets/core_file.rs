#![no_main]
#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let sysroot = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sysroot"));
    harness::core_file::core_file(data, sysroot)
});

//! Fuzzing in the ordinary test suite: the cargo-fuzz harnesses (`fuzz/harness/`) replay
//! - every input the fuzzers ever crashed on (`fuzz/regressions/TARGET/`, each named after the
//!   bug it found; see fuzz/README.md), and
//! - the committed seed corpus (`fuzz/corpus/TARGET/`),
//!
//! so a fixed bug stays fixed without nightly Rust or cargo-fuzz. The harnesses assert the
//! crate's guarantees (no panic, reads inside the image, bounded walks, consistent traces and
//! policies); a broken one panics here as it would under the fuzzer.

#[path = "../fuzz/harness/mod.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `fuzz/<dir>/<target>`, sorted (none when the directory is missing).
fn inputs(dir: &str, target: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fuzz_dir().join(dir).join(target))
        .map(|rd| rd.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file());
    v.sort();
    v
}

fn replay(target: &str, f: &dyn Fn(&[u8])) -> usize {
    let mut n = 0;
    for dir in ["regressions", "corpus"] {
        for p in inputs(dir, target) {
            let data = std::fs::read(&p).unwrap();
            eprintln!("replaying {}", p.display());
            f(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn walk_inputs_replay() {
    let n = replay("walk", &harness::walk::walk);
    assert!(n >= 10, "the walk corpus is missing ({n} inputs)");
}

#[test]
fn policy_inputs_replay() {
    let n = replay("policy", &harness::policy::policy);
    assert!(n >= 10, "the policy corpus is missing ({n} inputs)");
}

#[test]
fn symbols_inputs_replay() {
    let n = replay("symbols", &harness::symbols::symbols);
    assert!(n >= 3, "the symbols corpus is missing ({n} inputs)");
}

#[test]
fn core_file_inputs_replay() {
    let sysroot = fuzz_dir().join("sysroot");
    let n = replay("core_file", &|d| harness::core_file::core_file(d, &sysroot));
    assert!(n >= 3, "the core_file corpus is missing ({n} inputs)");
}

/// The harnesses' checks can fail: a memory that lies about its regions is caught.
#[test]
#[should_panic(expected = "disagrees with its regions")]
fn walk_harness_catches_a_bad_read() {
    use unwind::memory::{Memory, Region};
    let bytes = [0u8; 16];
    let regions = [Region {
        base: 0x1000,
        bytes: &bytes,
        is_stack: true,
    }];
    let mut m = harness::walk::Checked::new(&regions);
    assert_eq!(m.read_u64(0x1000), Some(0));
    // Sanity of the reference itself: a read straddling the end is refused by both.
    assert_eq!(m.read_u64(0x1009), None);
    // Now lie: pretend the image returned nothing for a readable address by checking an
    // address the image can read against an empty region list.
    let empty: [Region<'_>; 0] = [];
    let mut lying = harness::walk::Checked::with_image(unwind::Image::new(&regions), &empty);
    lying.read_u64(0x1000);
}

/// `unwind stack` on a core whose `NT_FILE` note names `/dev/zero` (a read that never ends)
/// must not hang: only regular files are loaded as modules.
#[test]
fn nt_file_naming_a_device_is_not_read() {
    let mut s = unwind::symbols::Symbolizer::new();
    s.add(Path::new("/dev/zero"), "/dev/zero", None);
    assert_eq!(s.missing.len(), 1, "{:?}", s.missing);
    assert!(s.missing[0].1.contains("not a regular file"));
}

#[test]
fn cfi_inputs_replay() {
    let n = replay("cfi", &harness::cfi::cfi);
    assert!(n >= 4, "the cfi corpus is missing ({n} inputs)");
}

/// Found by the `cfi` target: a `RuleCache` kept across walks identified its unwinder by
/// address, so an unwinder built where a dropped one lived (the next iteration of a loop)
/// got the old unwinder's cached rules. Unwinders now carry a generation number.
#[test]
fn rule_cache_is_not_fooled_by_a_rebuilt_unwinder() {
    use unwind::arch::X86_64;
    use unwind::dwarf::{RuleCache, Stepper, Unwinder};
    use unwind::walk::{Cfi, CfiStep};
    use unwind::{Image, Regs};
    let exe = fuzz_dir().join("sysroot/tmp/unwind-fixtures/chain-x86_64");
    let data = std::fs::read(&exe).unwrap();
    let regions = [];
    let mut mem = Image::new(&regions);
    let mut cache = RuleCache::new();
    let mut answers = Vec::new();
    for bias in [0u64, 0x10_0000] {
        let table = unwind::dwarf::parse_elf(unwind::ArchKind::X86_64, &data, bias, "chain")
            .expect("the fixture has .eh_frame");
        let lo = table.range().lo;
        let mut u = Unwinder::new();
        u.add(table);
        // The same pc, a function start in the first table, outside the moved one.
        let pc = if bias == 0 { lo } else { lo - bias };
        let regs = Regs::new(pc, 0x1000, 0x2000);
        let plain = (&u).step::<X86_64, _>(&regs, true, &mut mem);
        let cached = Stepper::new(&u, &mut cache).step::<X86_64, _>(&regs, true, &mut mem);
        assert_eq!(plain, cached, "bias {bias:#x}");
        answers.push(plain);
    }
    assert_eq!(answers[1], CfiStep::NoInfo);
}

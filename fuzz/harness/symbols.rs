//! The symbolizer over an ELF image (`Symbolizer::add_image`: symbol tables, demangling,
//! MiniDebugInfo's xz, Go's pclntab, `.eh_frame` function starts), the ELF readers beside it
//! (`GoOffsets::from_elf`, `build_id`, `exec_segments`) and perf maps.
//!
//! Input: one flag byte, then the body. Flag bit 7: the body is a perf map's text
//! (`/tmp/perf-PID.map`); else an ELF image, placed at a fixed base.
//!
//! Guarantees checked: no panic, no unbounded allocation (libFuzzer's `-malloc_limit_mb`: a
//! MiniDebugInfo stream is inflated only up to its cap), every name found belongs to the one
//! module, and a function's start is never above the pc asked for.

use super::Bytes;
use unwind::symbols::{PerfMap, Symbolizer};

const BASE: u64 = 0x5555_0000_0000;

pub fn symbols(data: &[u8]) {
    let mut b = Bytes::new(data);
    let flags = b.u8();
    let body = b.rest();
    if flags & 0x80 != 0 {
        let map = PerfMap::parse("/tmp/perf-1.map", body);
        for i in 0..64u64 {
            if let Some(s) = map.lookup(i * 0x1000) {
                assert_eq!(s.module, "/tmp/perf-1.map");
            }
        }
        return;
    }
    let _ = unwind::go_runtime::GoOffsets::from_elf(body);
    let _ = unwind::pprof_lines::build_id(body);
    let _ = unwind::pprof_lines::exec_segments(body);
    let mut sym = Symbolizer::new();
    if !sym.add_image(body.to_vec(), "img", BASE) {
        return;
    }
    let mut pcs = Vec::new();
    for m in sym.modules() {
        for (name, lo, hi) in m.functions().take(2000) {
            let _ = name.len();
            pcs.push(lo);
            pcs.push(lo.wrapping_add(hi.wrapping_sub(lo) / 2));
        }
        let r = m.range;
        for i in 0..32u64 {
            pcs.push(r.lo.wrapping_add(r.hi.wrapping_sub(r.lo) / 32 * i));
        }
        let _ = m.function("main");
        let mut code = [0u8; 16];
        let _ = m.read_code(r.lo, &mut code);
    }
    pcs.truncate(5000);
    sym.prepare(&pcs);
    for &pc in &pcs {
        if let Some(s) = sym.lookup(pc) {
            assert_eq!(s.module, "img", "{pc:#x}");
        }
        if let Some(start) = sym.function_start(pc) {
            assert!(start <= pc, "{pc:#x}: function start {start:#x} above it");
        }
    }
}

//! Go's runtime structures, read from any source of registers and memory (a core, a stopped
//! process): where a thread's goroutine is, and the crossings that need the goroutine's
//! saved state (`g.sched`) rather than a frame record.
//!
//! Offsets of `runtime.g`, `runtime.m` and `runtime.gobuf` come from the binary's
//! `.debug_info` when it has one ([`GoOffsets::from_elf`]; Go compresses it by default), else
//! from the built-in table of Go 1.17-1.21 ([`GoOffsets::GO_1_17`]). Every value read
//! through them is cross-checked (stack bounds, the frame chain, the goroutine's status), so a
//! wrong layout loses a crossing, it never invents frames.
//!
//! Crossings here (amd64; each returns where the walk goes on, the caller walks):
//! - [`mcall_goroutine`]: a thread on g0 under `runtime.mcall` (`park_m`, `goexit0`, ...)
//!   back to the goroutine that called `mcall`, when it is still parked there.
//! - [`switched_goroutine`]: a thread on g0 (or in a signal handler on gsignal) whose
//!   goroutine left through `systemstack` or `asmcgocall` (a cgo call in C): the goroutine's
//!   side from `g.sched`, when the frame walk could not reach it (code without frame pointers).

use crate::arch::{ArchKind, Regs};
use crate::memory::{Memory, Range};

/// Byte offsets of the fields the crossings read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoOffsets {
    /// `g.stack.lo` (`g.stack.hi` is 8 bytes further: `runtime.stack` is {lo, hi}).
    pub g_stack: u64,
    /// `g.m`.
    pub g_m: u64,
    /// `g.sched` (a `runtime.gobuf`).
    pub g_sched: u64,
    /// `g.atomicstatus` (a uint32).
    pub g_atomicstatus: u64,
    /// `m.g0`.
    pub m_g0: u64,
    /// `m.gsignal`.
    pub m_gsignal: u64,
    /// `m.curg`.
    pub m_curg: u64,
    /// `gobuf.sp`.
    pub gobuf_sp: u64,
    /// `gobuf.pc`.
    pub gobuf_pc: u64,
    /// `gobuf.lr`.
    pub gobuf_lr: u64,
    /// `gobuf.bp`.
    pub gobuf_bp: u64,
}

/// `_Grunnable` (`src/runtime/runtime2.go`).
const G_RUNNABLE: u32 = 1;
/// `_Gwaiting`.
const G_WAITING: u32 = 4;
/// `_Gscan`, or-ed into a status while the GC scans the goroutine.
const G_SCAN: u32 = 0x1000;

impl GoOffsets {
    /// Go 1.17-1.21, 64-bit (`src/runtime/runtime2.go`): `g` = {stack{lo, hi}, stackguard0,
    /// stackguard1, _panic, _defer, m @48, sched @56, syscallsp, syscallpc, stktopsp, param,
    /// atomicstatus @144}; `m` = {g0 @0, morebuf, divmod, procid, gsignal @80, goSigStack,
    /// sigmask, `tls[6]`, mstartfn, curg @192}; `gobuf` = {sp, pc, g, ctxt, ret, lr @40, bp @48}.
    pub const GO_1_17: GoOffsets = GoOffsets {
        g_stack: 0,
        g_m: 48,
        g_sched: 56,
        g_atomicstatus: 144,
        m_g0: 0,
        m_gsignal: 80,
        m_curg: 192,
        gobuf_sp: 0,
        gobuf_pc: 8,
        gobuf_lr: 40,
        gobuf_bp: 48,
    };

    /// The offsets a Go ELF binary's `.debug_info` gives (compressed or not), or `None` when
    /// it has none or lacks one of the fields.
    pub fn from_elf(data: &[u8]) -> Option<GoOffsets> {
        let file = object::File::parse(data).ok()?;
        let section = |name: &str| {
            crate::dwarf::section_bytes(&crate::cfi::section_names::section_by_name(&file, name)?)
        };
        let info = section(".debug_info")?;
        let abbrev = section(".debug_abbrev")?;
        let strs = section(".debug_str").unwrap_or_default();
        Self::from_dwarf(&info, &abbrev, &strs)
    }

    /// The offsets from `.debug_info`, `.debug_abbrev` and `.debug_str` bytes.
    pub fn from_dwarf(info: &[u8], abbrev: &[u8], strs: &[u8]) -> Option<GoOffsets> {
        use gimli::{EndianSlice, LittleEndian};
        let e = LittleEndian;
        let dwarf = gimli::Dwarf {
            debug_info: gimli::DebugInfo::new(info, e),
            debug_abbrev: gimli::DebugAbbrev::new(abbrev, e),
            debug_str: gimli::DebugStr::new(strs, e),
            ..Default::default()
        };
        let wanted = ["runtime.g", "runtime.m", "runtime.gobuf"];
        let mut found: [Vec<(String, u64)>; 3] = Default::default();
        let mut units = dwarf.units();
        // Go emits one unit per package; `runtime` is near the start. Bounded either way.
        let mut budget = 1usize << 22;
        'units: while let Ok(Some(header)) = units.next() {
            // Not `dwarf.unit()`: that also parses the line program, which is not needed.
            let Ok(abbrevs) = dwarf.abbreviations(&header) else {
                continue;
            };
            let mut entries = header.entries(&abbrevs);
            let mut current: Option<usize> = None;
            let mut struct_depth = 0isize;
            while let Ok(Some(entry)) = entries.next_dfs() {
                budget = budget.checked_sub(1)?;
                let depth = entry.depth();
                if current.is_some() && depth <= struct_depth {
                    current = None;
                }
                let name = |entry: &gimli::DebuggingInformationEntry<EndianSlice<'_, _>>| {
                    let v = entry.attr_value(gimli::DW_AT_name)?;
                    let s = match v {
                        gimli::AttributeValue::String(s) => s,
                        gimli::AttributeValue::DebugStrRef(o) => dwarf.debug_str.get_str(o).ok()?,
                        _ => return None,
                    };
                    Some(String::from_utf8_lossy(s.slice()).into_owned())
                };
                match entry.tag() {
                    gimli::DW_TAG_structure_type => {
                        current = None;
                        if let Some(n) = name(entry) {
                            if let Some(i) = wanted.iter().position(|w| *w == n) {
                                if found[i].is_empty() {
                                    current = Some(i);
                                    struct_depth = depth;
                                }
                            }
                        }
                    }
                    gimli::DW_TAG_member => {
                        if let (Some(i), Some(n)) = (current, name(entry)) {
                            let off = match entry.attr_value(gimli::DW_AT_data_member_location) {
                                Some(gimli::AttributeValue::Udata(v)) => v,
                                Some(gimli::AttributeValue::Data1(v)) => v.into(),
                                Some(gimli::AttributeValue::Data2(v)) => v.into(),
                                Some(gimli::AttributeValue::Data4(v)) => v.into(),
                                Some(gimli::AttributeValue::Data8(v)) => v,
                                Some(gimli::AttributeValue::Sdata(v)) => u64::try_from(v).ok()?,
                                _ => continue,
                            };
                            found[i].push((n, off));
                        }
                    }
                    _ => {}
                }
                if found.iter().all(|f| !f.is_empty()) && current.is_none() {
                    break 'units;
                }
            }
        }
        let get = |i: usize, n: &str| found[i].iter().find(|(x, _)| x == n).map(|(_, o)| *o);
        Some(GoOffsets {
            g_stack: get(0, "stack")?,
            g_m: get(0, "m")?,
            g_sched: get(0, "sched")?,
            g_atomicstatus: get(0, "atomicstatus")?,
            m_g0: get(1, "g0")?,
            m_gsignal: get(1, "gsignal")?,
            m_curg: get(1, "curg")?,
            gobuf_sp: get(2, "sp")?,
            gobuf_pc: get(2, "pc")?,
            gobuf_lr: get(2, "lr")?,
            gobuf_bp: get(2, "bp")?,
        })
    }
}

/// A thread's current `g`: amd64 `[fs_base - 8]` (Go's TLS slot on linux/amd64), arm64 `x28`.
pub fn thread_g<M: Memory>(mem: &mut M, arch: ArchKind, tls: u64, x28: u64) -> Option<u64> {
    let g = match arch {
        ArchKind::X86_64 => mem.read_u64(tls.checked_sub(8)?)?,
        ArchKind::Aarch64 => x28,
    };
    (g != 0).then_some(g)
}

/// A goroutine's saved state, checked: `sched.sp` (and `sched.bp`, when non-zero) inside
/// `g.stack`, `sched.pc` non-zero.
fn sched<M: Memory>(mem: &mut M, o: &GoOffsets, gp: u64) -> Option<Regs> {
    let at = |off: u64| gp.checked_add(off);
    let lo = mem.read_u64(at(o.g_stack)?)?;
    let hi = mem.read_u64(at(o.g_stack.checked_add(8)?)?)?;
    let s = o.g_sched;
    let sp = mem.read_u64(at(s.checked_add(o.gobuf_sp)?)?)?;
    let pc = mem.read_u64(at(s.checked_add(o.gobuf_pc)?)?)?;
    let bp = mem.read_u64(at(s.checked_add(o.gobuf_bp)?)?)?;
    let lr = mem.read_u64(at(s.checked_add(o.gobuf_lr)?)?)?;
    let inside = |a: u64| lo <= a && a < hi;
    if pc == 0 || !inside(sp) || (bp != 0 && !inside(bp)) {
        return None;
    }
    Some(Regs { pc, sp, fp: bp, lr })
}

/// The status of goroutine `gp` without the `_Gscan` bit.
fn status<M: Memory>(mem: &mut M, o: &GoOffsets, gp: u64) -> Option<u32> {
    let a = gp.checked_add(o.g_atomicstatus)?;
    // Little-endian: the uint32 is the low half of the aligned word holding it.
    let word = mem.read_u64(a & !7)?;
    let v = (word >> ((a & 7) * 8)) as u32;
    Some(v & !G_SCAN)
}

/// amd64 `runtime.mcall(fn)` (`src/runtime/asm_amd64.s`): saves the goroutine's caller pc,
/// sp and bp in `g.sched`, resets sp to `g0.sched.sp`, pushes the goroutine pointer (fn's
/// argument slot) and calls `fn` (`park_m`, `goexit0`, `gosched_m`, ...). `fn` never returns,
/// so the thread's g0 stack ends in `mcall`, with:
///
/// ```text
///   g0.sched.sp - 8:   gp (the goroutine that called mcall)
///   g0.sched.sp - 16:  return address into mcall      <- the walk's last frame
///   g0.sched.sp - 24:  fn's saved frame pointer = gp's bp when mcall ran
/// ```
///
/// Returns the goroutine's registers (`pc` = the return address into the caller of `mcall`,
/// say `runtime.gopark`), when the thread's g is g0 or gsignal of its m, the return address
/// at `g0.sched.sp - 16` is `mcall_ret`, and `gp` is still there: not running (`g.m` = 0),
/// waiting or runnable, its `g.sched` inside its stack and its `sched.bp` the frame pointer
/// `fn` saved (so `gp` has not run and parked elsewhere since).
pub fn mcall_goroutine<M: Memory>(
    mem: &mut M,
    o: &GoOffsets,
    g: u64,
    mcall_ret: u64,
) -> Option<Regs> {
    let (_, g0, gsignal) = system_g(mem, o, g)?;
    let sp0 = mem.read_u64(g0.checked_add(o.g_sched.checked_add(o.gobuf_sp)?)?)?;
    if mem.read_u64(sp0.checked_sub(16)?)? != mcall_ret {
        return None;
    }
    let gp = mem.read_u64(sp0.checked_sub(8)?)?;
    if gp == 0 || gp == g0 || gp == gsignal {
        return None;
    }
    if mem.read_u64(gp.checked_add(o.g_m)?)? != 0 {
        return None;
    }
    let st = status(mem, o, gp)?;
    if st != G_WAITING && st != G_RUNNABLE {
        return None;
    }
    let regs = sched(mem, o, gp)?;
    if mem.read_u64(sp0.checked_sub(24)?)? != regs.fp {
        return None;
    }
    Some(Regs { lr: 0, ..regs })
}

/// When the thread's g is its m's g0 or gsignal (the thread runs on a system stack or in a
/// signal handler): `(m, g0, gsignal)`.
fn system_g<M: Memory>(mem: &mut M, o: &GoOffsets, g: u64) -> Option<(u64, u64, u64)> {
    let m = mem.read_u64(g.checked_add(o.g_m)?)?;
    if m == 0 {
        return None;
    }
    let g0 = mem.read_u64(m.checked_add(o.m_g0)?)?;
    let gsignal = mem.read_u64(m.checked_add(o.m_gsignal)?)?;
    (g == g0 || g == gsignal).then_some((m, g0, gsignal))
}

/// amd64: `runtime.systemstack` and `runtime.asmcgocall` leave the goroutine through
/// `gosave_systemstack_switch` (`src/runtime/asm_amd64.s`): `g.sched.pc` =
/// `runtime.systemstack_switch`, `g.sched.sp` = the switching function's sp (pointing at its
/// return address into its caller, `runtime.cgocall` for a cgo call), `g.sched.bp` = that
/// caller's frame pointer. While the thread runs on g0 (or, from a signal handler, gsignal),
/// `m.curg` is that goroutine.
///
/// Returns the caller's pc (a return address) with the frame pointer to walk on from, when
/// the thread's g is g0 or gsignal, `curg` is another goroutine, `curg.sched.pc` lies in
/// `switch_marker` (`runtime.systemstack_switch`) and the saved state is inside `curg.stack`.
pub fn switched_goroutine<M: Memory>(
    mem: &mut M,
    o: &GoOffsets,
    g: u64,
    switch_marker: Range,
) -> Option<Regs> {
    let (m, g0, gsignal) = system_g(mem, o, g)?;
    let curg = mem.read_u64(m.checked_add(o.m_curg)?)?;
    if curg == 0 || curg == g0 || curg == gsignal {
        return None;
    }
    let regs = sched(mem, o, curg)?;
    // gosave_systemstack_switch stores `systemstack_switch` itself (Go 1.19; later versions
    // store an address inside it).
    if !(switch_marker.contains(regs.pc) || regs.pc == switch_marker.lo) {
        return None;
    }
    let ra = mem.read_u64(regs.sp)?;
    if ra == 0 {
        return None;
    }
    Some(Regs {
        pc: ra,
        sp: regs.sp.checked_add(8)?,
        fp: regs.fp,
        lr: 0,
    })
}

/// amd64 `runtime.cgocallback` (`src/runtime/asm_amd64.s`, Go 1.17-1.21), a call from C into
/// Go: on the thread's C stack (g0's) it opens a 0x28-byte frame (`SUB $0x20, SP`, the caller's
/// frame pointer at `SP + 0x18`, its return address into `crosscall2` at `SP + 0x20`), saves
/// `g0.sched.sp` at `SP + 0` and sets `g0.sched.sp = SP`, then runs the callback on the
/// goroutine's stack. Go's traceback ends there (at `runtime.goexit` on a thread C created, or
/// on in the goroutine's earlier frames after a Go -> C -> Go call), so the C frames that
/// called into Go are in no traceback: this finds them.
///
/// Returns the C caller's registers (pc = the return address into `crosscall2`, sp, frame
/// pointer) of the `nth` callback in progress on the thread, innermost first (1: the one in
/// `g0.sched.sp`, then each saved `sched.sp` in turn), when the thread's g has an m, each
/// saved sp lies above the one before, and the return address is not zero; with the
/// `g0.sched.sp` that callback saved (the one the C code's own `asmcgocall` ran from).
pub fn cgocallback_caller<M: Memory>(
    mem: &mut M,
    o: &GoOffsets,
    g: u64,
    nth: usize,
) -> Option<(Regs, u64)> {
    const SAVED_FP: u64 = 0x18;
    const RETURN_ADDRESS: u64 = 0x20;
    const FRAME: u64 = 0x28;
    let m = mem.read_u64(g.checked_add(o.g_m)?)?;
    if m == 0 || nth == 0 {
        return None;
    }
    let g0 = mem.read_u64(m.checked_add(o.m_g0)?)?;
    let mut sp = mem.read_u64(g0.checked_add(o.g_sched.checked_add(o.gobuf_sp)?)?)?;
    for _ in 1..nth {
        let outer = mem.read_u64(sp)?;
        if outer <= sp {
            return None;
        }
        sp = outer;
    }
    if sp == 0 || !sp.is_multiple_of(8) {
        return None;
    }
    let pc = mem.read_u64(sp.checked_add(RETURN_ADDRESS)?)?;
    let fp = mem.read_u64(sp.checked_add(SAVED_FP)?)?;
    let saved = mem.read_u64(sp)?;
    (pc != 0).then_some((
        Regs {
            pc,
            sp: sp.checked_add(FRAME)?,
            fp,
            lr: 0,
        },
        saved,
    ))
}

/// amd64 `runtime.asmcgocall` (`src/runtime/asm_amd64.s`) from a goroutine: it switches to
/// g0's stack at `g0.sched.sp` (`g0_sp`), takes `(g0_sp - 64) & !15` as its sp and keeps
/// there the goroutine (`+48`) and the depth of its own sp below that goroutine's
/// `stack.hi` (`+40`: it restores sp from them). Its sp on the goroutine's stack points at
/// the return address into its caller (`runtime.cgocall`), which no frame record holds.
///
/// Returns that return address, when the goroutine's sp lies in its stack and the address
/// is not zero.
pub fn asmcgocall_caller<M: Memory>(mem: &mut M, o: &GoOffsets, g0_sp: u64) -> Option<u64> {
    let frame = g0_sp.checked_sub(64)? & !15;
    let gp = mem.read_u64(frame.checked_add(48)?)?;
    let depth = mem.read_u64(frame.checked_add(40)?)?;
    if gp == 0 {
        return None;
    }
    let lo = mem.read_u64(gp.checked_add(o.g_stack)?)?;
    let hi = mem.read_u64(gp.checked_add(o.g_stack.checked_add(8)?)?)?;
    let sp = hi.checked_sub(depth)?;
    if !(lo <= sp && sp < hi) {
        return None;
    }
    mem.read_u64(sp).filter(|&ra| ra != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Image, Region};

    /// A little memory: an m, g0, a goroutine and its stack, g0's stack.
    struct World {
        bytes: Vec<u8>,
    }

    const BASE: u64 = 0x10000;
    const M: u64 = BASE;
    const G0: u64 = BASE + 0x400;
    const GP: u64 = BASE + 0x800;
    const GSTACK_LO: u64 = BASE + 0x1000;
    const GSTACK_HI: u64 = BASE + 0x2000;
    const G0_SP: u64 = BASE + 0x3000;

    impl World {
        fn new() -> World {
            World {
                bytes: vec![0; 0x4000],
            }
        }
        fn put(&mut self, addr: u64, v: u64) {
            let i = (addr - BASE) as usize;
            self.bytes[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn parked(mcall_ret: u64) -> World {
            let o = GoOffsets::GO_1_17;
            let mut w = World::new();
            w.put(M + o.m_g0, G0);
            w.put(G0 + o.g_m, M);
            w.put(G0 + o.g_sched + o.gobuf_sp, G0_SP);
            w.put(G0_SP - 8, GP);
            w.put(G0_SP - 16, mcall_ret);
            w.put(G0_SP - 24, GSTACK_LO + 0x900);
            w.put(GP + o.g_stack, GSTACK_LO);
            w.put(GP + o.g_stack + 8, GSTACK_HI);
            w.put(GP + o.g_atomicstatus, G_WAITING as u64);
            w.put(GP + o.g_sched + o.gobuf_sp, GSTACK_LO + 0x800);
            w.put(GP + o.g_sched + o.gobuf_pc, 0x401234);
            w.put(GP + o.g_sched + o.gobuf_bp, GSTACK_LO + 0x900);
            w
        }
        fn run<R>(&self, f: impl FnOnce(&mut Image<'_>) -> R) -> R {
            let regions = [Region {
                base: BASE,
                bytes: &self.bytes,
                is_stack: false,
            }];
            let mut mem = Image::new(&regions);
            f(&mut mem)
        }
    }

    #[test]
    fn mcall_crosses_to_a_parked_goroutine_only_when_everything_agrees() {
        let o = GoOffsets::GO_1_17;
        let w = World::parked(0x45cc63);
        let r = w.run(|m| mcall_goroutine(m, &o, G0, 0x45cc63)).unwrap();
        assert_eq!(
            (r.pc, r.sp, r.fp),
            (0x401234, GSTACK_LO + 0x800, GSTACK_LO + 0x900)
        );
        // Another return address, a running goroutine, a different saved bp, a bad stack.
        assert!(w.run(|m| mcall_goroutine(m, &o, G0, 0x45cc64)).is_none());
        let mut w2 = World::parked(0x45cc63);
        w2.put(GP + o.g_m, M);
        assert!(w2.run(|m| mcall_goroutine(m, &o, G0, 0x45cc63)).is_none());
        let mut w3 = World::parked(0x45cc63);
        w3.put(G0_SP - 24, GSTACK_LO + 0x910);
        assert!(w3.run(|m| mcall_goroutine(m, &o, G0, 0x45cc63)).is_none());
        let mut w4 = World::parked(0x45cc63);
        w4.put(GP + o.g_sched + o.gobuf_sp, GSTACK_HI + 8);
        assert!(w4.run(|m| mcall_goroutine(m, &o, G0, 0x45cc63)).is_none());
        let mut w5 = World::parked(0x45cc63);
        w5.put(GP + o.g_atomicstatus, 2); // _Grunning
        assert!(w5.run(|m| mcall_goroutine(m, &o, G0, 0x45cc63)).is_none());
        // A g that is not its m's g0 or gsignal.
        assert!(w.run(|m| mcall_goroutine(m, &o, GP, 0x45cc63)).is_none());
    }

    #[test]
    fn switched_goroutine_reads_curg_sched() {
        let o = GoOffsets::GO_1_17;
        let marker = Range::new(0x45cc80, 0x45cc81);
        let mut w = World::parked(0);
        w.put(M + o.m_curg, GP);
        w.put(GP + o.g_sched + o.gobuf_pc, 0x45cc80);
        w.put(GSTACK_LO + 0x800, 0x404f3c);
        let r = w.run(|m| switched_goroutine(m, &o, G0, marker)).unwrap();
        assert_eq!(
            (r.pc, r.sp, r.fp),
            (0x404f3c, GSTACK_LO + 0x808, GSTACK_LO + 0x900)
        );
        w.put(GP + o.g_sched + o.gobuf_pc, 0x401234);
        assert!(w.run(|m| switched_goroutine(m, &o, G0, marker)).is_none());
    }

    /// Two callbacks in progress on g0's stack (C -> Go -> C -> Go): the inner one's frame at
    /// `g0.sched.sp`, the outer one's at the sp it saved; each gives its C caller, and the
    /// `g0.sched.sp` it saved, where the C code's own `asmcgocall` frame is.
    #[test]
    fn cgocallback_callers_are_read_from_the_frames_each_callback_opened() {
        let o = GoOffsets::GO_1_17;
        let mut w = World::new();
        let (inner, outer, top) = (G0_SP - 0x400, G0_SP - 0x200, G0_SP);
        w.put(GP + o.g_m, M);
        w.put(M + o.m_g0, G0);
        w.put(G0 + o.g_sched + o.gobuf_sp, inner);
        for (frame, saved, fp, ra) in [
            (inner, outer, inner + 0x60, 0x46457d),
            (outer, top, outer + 0x60, 0x46457e),
        ] {
            w.put(frame, saved);
            w.put(frame + 0x18, fp);
            w.put(frame + 0x20, ra);
        }
        let (r, saved) = w.run(|m| cgocallback_caller(m, &o, GP, 1)).unwrap();
        assert_eq!(
            (r.pc, r.sp, r.fp, saved),
            (0x46457d, inner + 0x28, inner + 0x60, outer)
        );
        let (r, saved) = w.run(|m| cgocallback_caller(m, &o, GP, 2)).unwrap();
        assert_eq!(
            (r.pc, r.sp, r.fp, saved),
            (0x46457e, outer + 0x28, outer + 0x60, top)
        );
        // The third: g0's sp saved before any callback, whose "frame" holds nothing.
        assert!(w.run(|m| cgocallback_caller(m, &o, GP, 3)).is_none());
        assert!(w.run(|m| cgocallback_caller(m, &o, GP, 0)).is_none());
        // A saved sp below the one before: no chain.
        w.put(inner, inner - 0x100);
        assert!(w.run(|m| cgocallback_caller(m, &o, GP, 2)).is_none());

        // asmcgocall from the goroutine at depth 0x200 below its stack.hi, on g0 at `outer`:
        // its frame at (outer - 64) & !15 holds the goroutine and the depth; the goroutine's
        // sp there holds the return address into runtime.cgocall.
        let frame = (outer - 64) & !15;
        w.put(frame + 48, GP);
        w.put(frame + 40, 0x200);
        w.put(GP + o.g_stack, GSTACK_LO);
        w.put(GP + o.g_stack + 8, GSTACK_HI);
        w.put(GSTACK_HI - 0x200, 0x404f25);
        assert_eq!(w.run(|m| asmcgocall_caller(m, &o, outer)), Some(0x404f25));
        // A depth past the goroutine's stack.
        w.put(frame + 40, 0x2000);
        assert_eq!(w.run(|m| asmcgocall_caller(m, &o, outer)), None);
    }

    #[test]
    fn hostile_pointers_give_none() {
        let o = GoOffsets::GO_1_17;
        let w = World::new();
        for g in [0, u64::MAX, u64::MAX - 7, G0] {
            assert!(w.run(|m| mcall_goroutine(m, &o, g, 1)).is_none());
            assert!(w
                .run(|m| switched_goroutine(m, &o, g, Range::new(1, 2)))
                .is_none());
            for nth in [1, 2, usize::MAX] {
                assert!(w.run(|m| cgocallback_caller(m, &o, g, nth)).is_none());
            }
        }
        for sp in [0, 8, u64::MAX, u64::MAX - 63, G0_SP] {
            assert!(w.run(|m| asmcgocall_caller(m, &o, sp)).is_none());
        }
    }
}

//! Just enough ELF64 (little-endian) to find a few symbols by name: the section headers, then
//! every `SHT_SYMTAB` / `SHT_DYNSYM` section and its string table. Used at [`crate::init`],
//! outside signal context, on the loaded objects' files and on the in-memory vDSO.
//!
//! Every offset and size comes from untrusted bytes: all arithmetic is checked, every read is
//! bounds-checked by the [`Source`], and allocations are capped by [`MAX_TABLE`].

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Largest symbol or string table read (bytes): a corrupt header cannot make us allocate more.
pub const MAX_TABLE: u64 = 512 << 20;

const SHT_SYMTAB: u32 = 2;
const SHT_DYNSYM: u32 = 11;
const SHN_UNDEF: u16 = 0;
const STT_NOTYPE: u8 = 0;
const STT_FUNC: u8 = 2;
const SYM_SIZE: u64 = 24;

/// Something ELF bytes can be read from.
pub trait Source {
    /// Fills `out` with the bytes at `off`, or returns `false`.
    fn read(&self, off: u64, out: &mut [u8]) -> bool;
}

impl Source for File {
    fn read(&self, off: u64, out: &mut [u8]) -> bool {
        self.read_exact_at(out, off).is_ok()
    }
}

impl Source for [u8] {
    fn read(&self, off: u64, out: &mut [u8]) -> bool {
        let Ok(off) = usize::try_from(off) else {
            return false;
        };
        match off
            .checked_add(out.len())
            .and_then(|end| self.get(off..end))
        {
            Some(b) => {
                out.copy_from_slice(b);
                true
            }
            None => false,
        }
    }
}

/// A defined function (or untyped code label) symbol: its link-time value and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sym {
    /// `st_value` (add the object's load bias).
    pub value: u64,
    /// `st_size` (0 for labels).
    pub size: u64,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(w)
}

fn read_vec<S: Source + ?Sized>(src: &S, off: u64, len: u64) -> Option<Vec<u8>> {
    if len > MAX_TABLE {
        return None;
    }
    let mut v = vec![0u8; len as usize];
    src.read(off, &mut v).then_some(v)
}

/// Looks up each of `names` in the symbol tables of the ELF image `src`. `out[i]` receives the
/// first defined function or untyped symbol called `names[i]` (`.symtab` is searched before
/// `.dynsym` only in the order the sections appear). Returns `false` if `src` is not an ELF64
/// little-endian image.
pub fn find_symbols<S: Source + ?Sized>(src: &S, names: &[&str], out: &mut [Option<Sym>]) -> bool {
    let mut eh = [0u8; 64];
    if !src.read(0, &mut eh) || eh[..4] != *b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return false;
    }
    let shoff = u64_at(&eh, 0x28);
    let shentsize = u16_at(&eh, 0x3a) as u64;
    let shnum = u16_at(&eh, 0x3c) as u64;
    if shentsize < 64 || shnum == 0 {
        return true; // no section headers: nothing to find
    }
    let Some(shdrs) = shentsize
        .checked_mul(shnum)
        .and_then(|len| read_vec(src, shoff, len))
    else {
        return true;
    };
    let sh = |i: u64| -> Option<&[u8]> {
        let o = usize::try_from(i.checked_mul(shentsize)?).ok()?;
        shdrs.get(o..o.checked_add(64)?)
    };
    for i in 0..shnum {
        let Some(h) = sh(i) else { break };
        let ty = u32_at(h, 4);
        if ty != SHT_SYMTAB && ty != SHT_DYNSYM {
            continue;
        }
        let (off, size, link) = (u64_at(h, 0x18), u64_at(h, 0x20), u32_at(h, 0x28) as u64);
        let Some(strh) = sh(link) else { continue };
        let (str_off, str_size) = (u64_at(strh, 0x18), u64_at(strh, 0x20));
        let (Some(syms), Some(strs)) = (read_vec(src, off, size), read_vec(src, str_off, str_size))
        else {
            continue;
        };
        for s in syms.chunks_exact(SYM_SIZE as usize) {
            let info = s[4];
            let shndx = u16_at(s, 6);
            if shndx == SHN_UNDEF || !matches!(info & 0xf, STT_FUNC | STT_NOTYPE) {
                continue;
            }
            let name_off = u32_at(s, 0) as usize;
            let Some(tail) = strs.get(name_off..) else {
                continue;
            };
            let name = match tail.iter().position(|&b| b == 0) {
                Some(n) => &tail[..n],
                None => continue,
            };
            for (want, slot) in names.iter().zip(out.iter_mut()) {
                if slot.is_none() && name == want.as_bytes() {
                    *slot = Some(Sym {
                        value: u64_at(s, 8),
                        size: u64_at(s, 16),
                    });
                }
            }
        }
    }
    true
}

#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
/// The lowest `p_vaddr` of the image's `PT_LOAD` segments (what `st_value`s are relative to when
/// the image is mapped at some base), or `None` if it has none.
pub fn first_load_vaddr<S: Source + ?Sized>(src: &S) -> Option<u64> {
    let mut eh = [0u8; 64];
    if !src.read(0, &mut eh) || eh[..4] != *b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let phoff = u64_at(&eh, 0x20);
    let phentsize = u16_at(&eh, 0x36) as u64;
    let phnum = u16_at(&eh, 0x38) as u64;
    if phentsize < 56 {
        return None;
    }
    let mut lowest = None;
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        let off = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))?;
        if !src.read(off, &mut ph) {
            return None;
        }
        if u32_at(&ph, 0) == 1 {
            let v = u64_at(&ph, 0x10) & !0xfff;
            lowest = Some(lowest.map_or(v, |l: u64| l.min(v)));
        }
    }
    lowest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_elf() {
        let mut out = [None];
        assert!(!find_symbols(&b"not an elf"[..], &["x"], &mut out));
        assert!(!find_symbols(&[0u8; 0][..], &["x"], &mut out));
        assert_eq!(first_load_vaddr(&b"\x7fELF"[..]), None);
    }

    #[test]
    fn huge_or_truncated_headers_are_safe() {
        // A header claiming 65535 section headers at an absurd offset, and a symtab whose
        // string-table link points past the end.
        let mut img = [0u8; 64 + 2 * 64];
        img[..6].copy_from_slice(b"\x7fELF\x02\x01");
        img[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        img[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        img[0x3c..0x3e].copy_from_slice(&u16::MAX.to_le_bytes());
        let mut out = [None];
        assert!(find_symbols(&img[..], &["x"], &mut out));
        assert_eq!(out, [None]);
        img[0x28..0x30].copy_from_slice(&64u64.to_le_bytes());
        img[0x3c..0x3e].copy_from_slice(&2u16.to_le_bytes());
        let sh = 64 + 64; // section 1: a symtab with link 99 and a huge size
        img[sh + 4..sh + 8].copy_from_slice(&SHT_SYMTAB.to_le_bytes());
        img[sh + 0x20..sh + 0x28].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        img[sh + 0x28..sh + 0x2c].copy_from_slice(&99u32.to_le_bytes());
        assert!(find_symbols(&img[..], &["x"], &mut out));
        assert_eq!(out, [None]);
    }

    #[test]
    fn finds_symbols_in_this_test_binary() {
        let f = File::open("/proc/self/exe").unwrap();
        let mut out = [None, None];
        assert!(find_symbols(
            &f,
            &["unwind_0_1_system_stack_switch", "no such symbol"],
            &mut out
        ));
        let s = out[0].expect("the trampoline is in .symtab");
        assert!(s.size > 8);
        assert_eq!(out[1], None);
    }
}

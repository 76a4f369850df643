//! Modules made from a core's own memory, where no file stands in for them (deleted or
//! replaced by another build since the process started, not on this machine): gdb's `gcore`
//! dumps a deleted file's mappings whole, so such a module's dynamic symbols and CFI are in the core, and
//! an ELF image holding them reads as any module (named by its exported functions, walked by
//! its `.eh_frame`), as eu-stack walks such cores. A kernel core keeps only a file mapping's
//! first page and its written data: as much as that holds.

use super::core_walk::{build_ids_in_memory, elf_head_in_memory, elf_headers};
use crate::core_file::{u32_at, u64_at, Core};
use crate::symbols::Symbolizer;

/// Modules no file stood in for (deleted or replaced by another build since the process
/// started, not on this machine: [`Symbolizer::missing`]) made from the core's own memory
/// where it holds them ([`image_from_memory`]), so that their frames are named by their
/// exported symbols and walked by their CFI, as eu-stack walks such cores. Each stays listed
/// as missing (its warning says what was used instead).
pub(crate) fn add_from_memory(core: &Core, s: &mut Symbolizer) {
    let missing: Vec<String> = s.missing.iter().map(|(p, _)| p.clone()).collect();
    // The images are copies: a hostile core's many large "modules" stop at this much.
    let mut budget: usize = 1 << 29;
    for path in missing.iter().take(256) {
        if s.modules().iter().any(|m| &m.path == path) {
            continue;
        }
        if let Some((image, base)) = image_from_memory(core, path) {
            let Some(left) = budget.checked_sub(image.len()) else {
                break;
            };
            budget = left;
            s.add_image(image, path, base);
        }
    }
}

/// An ELF image of the module mapped from `path`, made from the core's memory: gdb's `gcore`
/// dumps a deleted file's mappings whole, so the module's dynamic symbols (`.dynsym`, `.dynstr`, found
/// through `PT_DYNAMIC`) and its CFI (`.eh_frame_hdr` through `PT_GNU_EH_FRAME`, and
/// `.eh_frame`) are there, and a Go binary's `.gopclntab` (searched for in its read-only
/// segments); a kernel core keeps only a file mapping's first page (`None` then).
/// The image holds those sections at their link-time addresses, and the file's `PT_LOAD`
/// headers, which place it: it reads as any ELF file. With its runtime base address. `None`
/// also where the bytes do not read as a 64-bit little-endian ELF module's.
fn image_from_memory(core: &Core, path: &str) -> Option<(Vec<u8>, u64)> {
    use object::elf::{PT_DYNAMIC, PT_GNU_EH_FRAME, PT_LOAD, PT_NOTE};
    use object::read::elf::ProgramHeader;
    const DT_STRTAB: u64 = 5;
    const DT_SYMTAB: u64 = 6;
    const DT_STRSZ: u64 = 10;
    let first = core
        .mappings
        .iter()
        .filter(|m| m.path == path)
        .min_by_key(|m| m.offset)?;
    if first.offset != 0 {
        return None;
    }
    let base = first.range.lo;
    let head = elf_head_in_memory(core, base)?;
    let (_, e, phdrs) = elf_headers(&head)?;
    if phdrs.is_empty() || phdrs.len() > 128 {
        return None;
    }
    // The first program header of type `ty`: (vaddr, memory size).
    let of_type = |ty| {
        phdrs
            .iter()
            .find(|p| p.p_type(e) == ty)
            .map(|p| (p.p_vaddr(e), p.p_memsz(e)))
    };
    let loads = || phdrs.iter().filter(|p| p.p_type(e) == PT_LOAD);
    // The load bias: the segment at file offset 0 is mapped at `base`.
    let page = |a: u64| a & !0xfff;
    let vaddr0 = loads().find(|p| page(p.p_offset(e)) == 0)?.p_vaddr(e);
    let bias = base.wrapping_sub(page(vaddr0));
    // In place where the core file holds the bytes; read through the memory otherwise (a
    // live process's, `--pid` and `Symbolizer::for_current_process`: a module whose file
    // could not be opened, or was replaced, was left unnamed there).
    let mem = core.memory();
    let at = |vaddr: u64, len: u64| -> Option<std::borrow::Cow<'_, [u8]>> {
        let addr = vaddr.wrapping_add(bias);
        if let Some(b) = core.bytes_at(addr, len) {
            return Some(std::borrow::Cow::Borrowed(b));
        }
        if !core.has_backing() || len > 1 << 26 {
            return None;
        }
        let mut v = vec![0u8; len as usize];
        mem.read_bytes(addr, &mut v)
            .then_some(std::borrow::Cow::Owned(v))
    };
    // How far the segment holding link-time address `a` reaches past it.
    let room = |a: u64| {
        loads()
            .map(|p| (p.p_vaddr(e), p.p_memsz(e)))
            .find(|&(v, len)| a >= v && a - v < len)
            .map(|(v, len)| len - (a - v))
    };

    let cfi = (|| {
        let (hdr_vaddr, hdr_len) = of_type(PT_GNU_EH_FRAME)?;
        if !(12..=1 << 26).contains(&hdr_len) {
            return None;
        }
        let hdr = at(hdr_vaddr, hdr_len)?;
        // Version 1, eh_frame_ptr pc-relative signed 4 bytes (0x1b), as linkers write it.
        if hdr[0] != 1 || hdr[1] != 0x1b {
            return None;
        }
        let rel = i64::from(u32_at(&hdr, 4)? as i32);
        let eh_vaddr = hdr_vaddr.wrapping_add(4).wrapping_add_signed(rel);
        // `.eh_frame` runs at most to the end of its segment (its terminator ends it sooner).
        let eh = at(eh_vaddr, room(eh_vaddr)?.min(1 << 26))?;
        Some((hdr_vaddr, hdr, eh_vaddr, eh))
    })();

    let dynamic = (|| {
        let (dyn_vaddr, dyn_len) = of_type(PT_DYNAMIC)?;
        let entries = at(dyn_vaddr, dyn_len.min(1 << 16) & !15)?;
        let (mut symtab, mut strtab, mut strsz) = (None, None, None);
        for d in entries.chunks_exact(16) {
            match u64_at(d, 0)? {
                0 => break,
                DT_SYMTAB => symtab = u64_at(d, 8),
                DT_STRTAB => strtab = u64_at(d, 8),
                DT_STRSZ => strsz = u64_at(d, 8),
                _ => {}
            }
        }
        // The loader adds the load bias to these in place (glibc, where `.dynamic` is
        // writable): an address past the bias is taken as a run-time one.
        let link = |a: u64| {
            if bias != 0 && a >= bias {
                a - bias
            } else {
                a
            }
        };
        let (symtab, strtab, strsz) = (link(symtab?), link(strtab?), strsz?);
        // `.dynsym` ends where `.dynstr` begins, as linkers lay them out.
        let count = strtab.checked_sub(symtab)? / 24;
        if count == 0 || count > 1 << 20 || strsz > 1 << 26 {
            return None;
        }
        let syms = at(symtab, count * 24)?;
        let strs = at(strtab, strsz)?;
        Some((symtab, syms, strtab, strs))
    })();
    // A Go binary's `.gopclntab` (names, CFI and lines of every Go function: Go's own linker
    // writes no `.dynsym` or `.eh_frame` for a static binary): no program header finds it, so
    // the read-only segments are searched for its header (pointer-aligned: the magic, two
    // zero bytes, the pc quantum, the pointer size), the first that parses taken, to the
    // segment's end (found by outside use in the twenty-fifth round: a Go binary replaced on
    // disk since a gcore that held it whole had every frame unnamed).
    let gopclntab = (|| {
        build_ids_in_memory(core, base)?.go?;
        for p in loads().filter(|p| p.p_flags(e).0 & object::elf::PF_X.0 == 0) {
            let len = p.p_filesz(e).min(1 << 28);
            let Some(seg) = at(p.p_vaddr(e), len) else {
                continue;
            };
            let skew = ((8 - p.p_vaddr(e) % 8) % 8) as usize;
            let found = (skew..seg.len().saturating_sub(8)).step_by(8).find(|&i| {
                matches!(
                    seg[i..i + 8],
                    [0xf0 | 0xf1, 0xff, 0xff, 0xff, 0, 0, 1 | 2 | 4, 8]
                ) && crate::cfi::gopclntab::Table::parse(&seg[i..]).is_some()
            });
            if let Some(i) = found {
                let mut tab = seg[i..].to_vec();
                // `textStart` (at 24) holds the run-time address once loaded; the image is at
                // link-time addresses.
                if let Some(t) = u64_at(&tab, 24).filter(|&t| t != 0 && bias != 0) {
                    tab[24..32].copy_from_slice(&t.wrapping_sub(bias).to_le_bytes());
                }
                return Some((p.p_vaddr(e).wrapping_add(i as u64), tab));
            }
        }
        None
    })();
    if cfi.is_none() && dynamic.is_none() && gopclntab.is_none() {
        return None;
    }
    // The notes (in the first page, which every core keeps): the GNU build id finds the
    // module's separate debug file, whose full symbol table names its local functions too.
    let notes: Vec<(u64, std::borrow::Cow<'_, [u8]>, u64)> = phdrs
        .iter()
        .filter(|p| p.p_type(e) == PT_NOTE && matches!(p.p_align(e), 4 | 8))
        .filter_map(|p| {
            let len = p.p_memsz(e).min(1 << 12);
            Some((p.p_vaddr(e), at(p.p_vaddr(e), len)?, p.p_align(e)))
        })
        .take(8)
        .collect();

    // The image: header, the file's PT_LOAD headers, the sections' bytes, the section names,
    // the section headers.
    let load_headers: Vec<&[u8]> = phdrs
        .iter()
        .filter(|p| p.p_type(e) == PT_LOAD)
        .map(object::pod::bytes_of)
        .collect();
    let mut out = vec![0u8; 64];
    for p in &load_headers {
        out.extend_from_slice(p);
    }
    /// One section of the image: (name, type, address, offset, size, link, entry size), all
    /// allocated.
    struct Shdr<'n> {
        name: &'n str,
        ty: u32,
        addr: u64,
        off: u64,
        size: u64,
        link: u32,
        entsize: u64,
        align: u64,
    }
    let put = |out: &mut Vec<u8>, bytes: &[u8]| {
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let off = out.len() as u64;
        out.extend_from_slice(bytes);
        off
    };
    const SHT_PROGBITS: u32 = 1;
    const SHT_STRTAB: u32 = 3;
    const SHT_DYNSYM: u32 = 11;
    const SHF_ALLOC: u64 = 2;
    let mut sections: Vec<Shdr> = Vec::new();
    let mut add = |out: &mut Vec<u8>, name, ty, addr, bytes: &[u8], link, entsize, align| {
        let off = put(out, bytes);
        sections.push(Shdr {
            name,
            ty,
            addr,
            off,
            size: bytes.len() as u64,
            link,
            entsize,
            align,
        });
    };
    if let Some((symtab, syms, strtab, strs)) = dynamic {
        // `.dynstr` is the next section (index 2 with the null one first).
        add(&mut out, ".dynsym", SHT_DYNSYM, symtab, &syms, 2, 24, 8);
        add(&mut out, ".dynstr", SHT_STRTAB, strtab, &strs, 0, 0, 1);
    }
    if let Some((hdr_vaddr, hdr, eh_vaddr, eh)) = cfi {
        add(
            &mut out,
            ".eh_frame_hdr",
            SHT_PROGBITS,
            hdr_vaddr,
            &hdr,
            0,
            0,
            4,
        );
        add(&mut out, ".eh_frame", SHT_PROGBITS, eh_vaddr, &eh, 0, 0, 8);
    }
    if let Some((vaddr, tab)) = &gopclntab {
        add(&mut out, ".gopclntab", SHT_PROGBITS, *vaddr, tab, 0, 0, 8);
    }
    const SHT_NOTE: u32 = 7;
    for (vaddr, bytes, align) in notes {
        add(&mut out, ".note", SHT_NOTE, vaddr, &bytes, 0, 0, align);
    }
    let mut names = vec![0u8];
    let mut name_at = Vec::new();
    for s in &sections {
        name_at.push(names.len() as u32);
        names.extend_from_slice(s.name.as_bytes());
        names.push(0);
    }
    let shstr_name = names.len() as u32;
    names.extend_from_slice(b".shstrtab\0");
    let shstr_off = put(&mut out, &names);
    let shoff = put(&mut out, &[]);
    let sh = |out: &mut Vec<u8>, name: u32, s: &Shdr, flags: u64| {
        out.extend_from_slice(&name.to_le_bytes());
        out.extend_from_slice(&s.ty.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&s.addr.to_le_bytes());
        out.extend_from_slice(&s.off.to_le_bytes());
        out.extend_from_slice(&s.size.to_le_bytes());
        out.extend_from_slice(&s.link.to_le_bytes());
        out.extend_from_slice(&u32::from(s.ty == SHT_DYNSYM).to_le_bytes()); // sh_info
        out.extend_from_slice(&s.align.to_le_bytes());
        out.extend_from_slice(&s.entsize.to_le_bytes());
    };
    let null = Shdr {
        name: "",
        ty: 0,
        addr: 0,
        off: 0,
        size: 0,
        link: 0,
        entsize: 0,
        align: 1,
    };
    out.extend_from_slice(&[0u8; 64]);
    for (s, &name) in sections.iter().zip(&name_at) {
        sh(&mut out, name, s, SHF_ALLOC);
    }
    let shstrndx = sections.len() as u16 + 1;
    let shstr = Shdr {
        ty: SHT_STRTAB,
        off: shstr_off,
        size: names.len() as u64,
        ..null
    };
    sh(&mut out, shstr_name, &shstr, 0);
    // The ELF header: the file's identification, type and machine, our layout.
    out[..20].copy_from_slice(&head[..20]); // identification, e_type, e_machine
    out[20..24].copy_from_slice(&1u32.to_le_bytes()); // e_version
    out[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    out[40..48].copy_from_slice(&shoff.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(load_headers.len() as u16).to_le_bytes());
    out[58..60].copy_from_slice(&64u16.to_le_bytes());
    out[60..62].copy_from_slice(&(shstrndx + 1).to_le_bytes()); // e_shnum
    out[62..64].copy_from_slice(&shstrndx.to_le_bytes());
    Some((out, base))
}

#!/usr/bin/env python3
"""Writes the seed corpus in fuzz/corpus/<target>/ from real data.

usage: fuzz/make-seeds.py FIXTURES_DIR

FIXTURES_DIR holds what fixtures/c/make-core.sh made (chain-ARCH executables, core-ARCH-VARIANT
cores), built in /tmp/unwind-fixtures so that the cores' NT_FILE paths match fuzz/sysroot.
- core_file: the cores, minimised to < 1 MB (the stack around each thread's sp, the
  executable's and small code segments; everything else keeps its header but loses its bytes).
- walk: the stack window of each core thread as a region with its registers (frame-pointer
  mode, and hybrid with CFA answers), plus hand-made stacks for every transition rule.
- policy: traces shaped like the policy module's example, with each profile kind.
- cfi: .eh_frame/.eh_frame_hdr sections of the fixture executables (raw, for the cfi target),
  and small synthetic Go `.gopclntab` tables (bit 4).
The input formats are documented in fuzz/harness/*.rs.
"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- ELF core parsing -------------------------------------------------------------------------

def phdrs(data):
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    out = []
    for i in range(phnum):
        o = phoff + i * phentsize
        p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align = \
            struct.unpack_from("<IIQQQQQQ", data, o)
        out.append(dict(at=o, type=p_type, flags=p_flags, offset=p_offset, vaddr=p_vaddr,
                        filesz=p_filesz, memsz=p_memsz, align=p_align))
    return out


def notes(data, ph):
    o, end = ph["offset"], ph["offset"] + ph["filesz"]
    while o + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from("<III", data, o)
        name = data[o + 12:o + 12 + namesz].rstrip(b"\0")
        d = o + 12 + ((namesz + 3) & ~3)
        yield ntype, name, data[d:d + descsz]
        o = d + ((descsz + 3) & ~3)


def threads(data):
    machine, = struct.unpack_from("<H", data, 18)
    out = []
    for ph in phdrs(data):
        if ph["type"] != 4:
            continue
        for ntype, name, desc in notes(data, ph):
            if ntype == 1 and name == b"CORE":
                reg = lambda i: struct.unpack_from("<Q", desc, 0x70 + 8 * i)[0]
                if machine == 62:  # x86_64: rip 16, rsp 19, rbp 4
                    out.append(dict(pc=reg(16), sp=reg(19), fp=reg(4), lr=0, arch="x86_64"))
                else:  # aarch64: x29, x30, sp 31, pc 32
                    out.append(dict(pc=reg(32), sp=reg(31), fp=reg(29), lr=reg(30), arch="aarch64"))
    return out


def read_mem(data, addr, n):
    for ph in phdrs(data):
        if ph["type"] == 1 and ph["vaddr"] <= addr and addr + n <= ph["vaddr"] + ph["filesz"]:
            o = ph["offset"] + addr - ph["vaddr"]
            return data[o:o + n]
    return None


def minimise(data, keep_exe_below=64 * 1024, stack_below=4096, stack_above=60 * 1024):
    """Keeps notes, small segments, and a window of each segment holding a thread's sp."""
    sps = [t["sp"] for t in threads(data)]
    out = bytearray(data[:0x40])
    phs = phdrs(data)
    table_at = 0x40
    blob_at = table_at + 56 * len(phs)
    blob = bytearray()
    entries = []
    for ph in phs:
        off, vaddr, filesz, memsz = ph["offset"], ph["vaddr"], ph["filesz"], ph["memsz"]
        body = data[off:off + filesz]
        if ph["type"] == 1:
            hit = [sp for sp in sps if vaddr <= sp < vaddr + max(filesz, 1)]
            if hit:
                lo = max(vaddr, (min(hit) - stack_below) & ~0xf)
                hi = min(vaddr + filesz, max(hit) + stack_above)
                body = data[off + lo - vaddr:off + hi - vaddr]
                vaddr, memsz = lo, hi - lo
            elif filesz > keep_exe_below:
                body = b""
        new_off = blob_at + len(blob)
        blob += body
        while len(blob) % 8:
            blob += b"\0"
        entries.append(struct.pack("<IIQQQQQQ", ph["type"], ph["flags"], new_off, vaddr, vaddr,
                                   len(body), memsz if ph["type"] == 1 else len(body),
                                   ph["align"]))
    struct.pack_into("<Q", out, 0x20, table_at)
    struct.pack_into("<Q", out, 0x28, 0)  # no section headers
    struct.pack_into("<HHH", out, 0x3a, 0, 0, 0)
    return bytes(out) + b"".join(entries) + bytes(blob)


# ---- walk inputs (format: fuzz/harness/walk.rs) -----------------------------------------------

def raw_addr(a):
    return b"\xff" + struct.pack("<Q", a & 0xffffffffffffffff)


def base_addr(i, off):
    return bytes([i]) + struct.pack("<H", off)


def walk_input(aarch64=False, ret=False, mode=0, max_depth=0, buf_len=256, pac=None,
               regs=(b"",) * 4, transitions=(), cfi=(), regions=()):
    flags = (1 if aarch64 else 0) | (2 if ret else 0) | (mode << 2) | (0x10 if pac is not None else 0)
    b = bytes([flags]) + struct.pack("<HH", max_depth, buf_len)
    if pac is not None:
        b += struct.pack("<Q", pac)
    for r in regs:
        b += r
    b += bytes([len(transitions)])
    for lo, length, rule, tid in transitions:
        b += lo + bytes([length]) + rule + struct.pack("<H", tid)
    b += bytes([len(cfi)])
    for c in cfi:
        b += c
    b += bytes([len(regions) - 1])
    for base, stack, body in regions:
        b += base + bytes([1 if stack else 0]) + struct.pack("<H", len(body)) + body
    return b


def stack(words):
    """words: {offset: value} in a 0x1000-byte region."""
    body = bytearray(0x1000)
    for o, v in words.items():
        struct.pack_into("<Q", body, o, v)
    return bytes(body)


def walk_seeds():
    B = 0x10000  # BASES[0]
    C = 0x20000  # BASES[1]
    # A plain chain of 5 frames.
    w = {}
    for i in range(5):
        fp = 0x100 + i * 0x20
        w[fp] = B + fp + 0x20 if i < 4 else 0
        w[fp + 8] = 0x400000 + i * 0x10
    write("walk", "chain-x86", walk_input(regs=(base_addr(2, 0x1000), base_addr(0, 0xf0),
                                                base_addr(0, 0x100), base_addr(3, 0)),
                                          regions=[(b"\x00", True, stack(w))]))
    write("walk", "chain-aarch64-lr", walk_input(aarch64=True,
                                                  regs=(base_addr(2, 0x1000), base_addr(0, 0xf0),
                                                        base_addr(0, 0x100), raw_addr(0x7000_0000)),
                                                  regions=[(b"\x00", True, stack(w))]))
    # Two stacks; frame 2's record (at B+0x140) links to the other stack (C+0x200) and its
    # return address 0x400020 is the transition, with each rule kind finding the saved
    # registers {pc 0x600000, sp C+0x1f0, fp C+0x200} where it looks.
    u = {0x200: C + 0x220, 0x208: 0x500000, 0x220: 0, 0x228: 0x500010,
         0x300: 0x600000, 0x308: C + 0x1f0, 0x310: C + 0x200}
    w2 = dict(w)
    w2[0x140] = C + 0x200
    w2.update({0x400: 0x600000, 0x408: C + 0x1f0, 0x410: C + 0x200,
               0x150 + 0xa8: 0x600000, 0x150 + 0xa0: C + 0x1f0, 0x150 + 0x78: C + 0x200})

    def saved(base, pc):
        return b"\x01" + bytes([base]) + struct.pack("<h", pc) + b"\x01" + struct.pack("<hh", pc + 8, pc + 16)

    rules = {
        "continue": b"\x00",
        "saved-fp": saved(0, 0x2c0),
        "saved-cfa": saved(1, 0x2b0),
        "saved-savedfp": saved(2, 0x100),
        "saved-link": saved(3, 0xe0),
        "signal": b"\x02",
        "context": b"\x03" + base_addr(1, 0x300) + struct.pack("<HHH", 0, 8, 16),
    }
    for name, rule in rules.items():
        for arch in (False, True):
            write("walk", f"rule-{name}-{'aarch64' if arch else 'x86'}", walk_input(
                aarch64=arch,
                regs=(base_addr(2, 0x1000), base_addr(0, 0xf0), base_addr(0, 0x100), base_addr(3, 0)),
                transitions=[(raw_addr(0x400020), 1, rule, 7)],
                regions=[(b"\x00", True, stack(w2)), (b"\x01", True, stack(u))]))
    # Hybrid and dwarf modes with CFA answers.
    cfi = [b"\x03\x01" + struct.pack("<h", 16), b"\x02", b"\x00", b"\x01",
           b"\x04" + base_addr(2, 0x500) + base_addr(0, 0x400) + base_addr(0, 0x120)]
    for mode in (1, 2):
        write("walk", f"cfi-mode{mode}", walk_input(
            mode=mode, regs=(base_addr(2, 0x1000), base_addr(0, 0xf0), base_addr(0, 0x100), base_addr(3, 0)),
            cfi=cfi, regions=[(b"\x00", True, stack(w))]))


def walk_from_core(name, data):
    for i, t in enumerate(threads(data)[:2]):
        lo = (t["sp"] - 256) & ~0xf
        body = None
        for size in (8192, 4096, 2048):
            body = read_mem(data, lo, size)
            if body:
                break
        if not body:
            continue
        aarch64 = t["arch"] == "aarch64"
        regs = tuple(raw_addr(t[k]) for k in ("pc", "sp", "fp", "lr"))
        write("walk", f"core-{name}-t{i}", walk_input(aarch64=aarch64, regs=regs, buf_len=512,
                                                      regions=[(raw_addr(lo), True, body)]))


# ---- policy inputs (format: fuzz/harness/policy.rs) -------------------------------------------

def policy_seeds():
    # The module docs' example: runtime at 0x1000.., user at 0x9000.., switch id 5.
    pcs = [0x1010, 0x1110, 0x1210, 0x1310, 0x1410, 0x9010, 0x9110]
    names = [b"runtime.recordEvent", b"runtime.interestingEvent", b"runtime.bar.func1",
             b"runtime.systemstack", b"runtime.bar", b"main.foo", b"main.main"]
    for kind in range(6):
        for skip, md in ((0, 0), (2, 0), (0, 3)):
            b = bytes([0x10, kind]) + struct.pack("<HH", skip, md)
            b += bytes([1]) + struct.pack("<HH", 0x1500, 0x100)
            syms = list(zip(names, pcs))[:7]
            b += bytes([len(syms)])
            for n, pc in syms:
                n = n[:15]
                b += bytes([len(n)]) + n + struct.pack("<HH", pc - 0x10, 0x100)
            b += bytes([1, 7]) + b"runtime"
            b += bytes([1, 5])
            b += struct.pack("<H", len(pcs))
            for i, pc in enumerate(pcs):
                st = 1 if i >= 4 else 0
                via = 2 if i == 4 else 1
                b += struct.pack("<H", pc) + bytes([st, via, 0, 5 if i == 4 else 0])
            write("policy", f"example-kind{kind}-skip{skip}-max{md}", b)
    # Hand-made policies: keep system / user / both, with and without elision.
    for flags in (0, 1, 2, 4, 5, 6, 8 | 4):
        b = bytes([flags, 0]) + struct.pack("<HH", 0, 0) + bytes([2])
        b += struct.pack("<HH", 0x1000, 0x800) + struct.pack("<HH", 0x1700, 0x200)
        b += bytes([0, 0, 2, 5, 9]) + struct.pack("<H", 6)
        for pc, st, via, tr in ((0x1710, 0, 1, 0), (0x1010, 1, 2, 9), (0x1110, 1, 1, 0),
                                (0x1410, 2, 2, 5), (0x9010, 2, 1, 0), (0x9110, 2, 1, 0)):
            b += struct.pack("<H", pc) + bytes([st, via, 0, tr])
        write("policy", f"nested-flags{flags}", b)


# ---- cfi inputs: raw sections -----------------------------------------------------------------

def sections(path):
    data = open(path, "rb").read()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3a)
    sh = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    stro = sh[shstrndx][4]
    out = {}
    for name, typ, flags, addr, off, size, *_ in sh:
        n = data[stro + name:data.index(b"\0", stro + name)].decode()
        out[n] = (addr, data[off:off + size] if typ != 8 else b"")
    return out


def load_base(core, exe_name):
    """The address where the core's NT_FILE maps `exe_name` at file offset 0."""
    for ph in phdrs(core):
        if ph["type"] != 4:
            continue
        for ntype, name, desc in notes(core, ph):
            if ntype != 0x46494C45:
                continue
            count, = struct.unpack_from("<Q", desc, 0)
            names = desc[16 + 24 * count:].split(b"\0")
            for i in range(count):
                lo, hi, pg = struct.unpack_from("<QQQ", desc, 16 + 24 * i)
                if names[i].endswith(exe_name.encode()) and pg == 0:
                    return lo
    return None


def cfi_input(flags, eh, hdr, text, got, bias, pcs, regs, stack_base, stack_bytes):
    b = bytes([flags]) + struct.pack("<QQQQQ", eh[0], hdr[0], text, got, bias)
    b += struct.pack("<I", len(eh[1])) + eh[1] + struct.pack("<H", len(hdr[1])) + hdr[1]
    b += bytes([len(pcs)]) + b"".join(struct.pack("<Q", p) for p in pcs)
    b += struct.pack("<QQQQQ", *regs, stack_base) + stack_bytes
    return b


def cfi_seeds(fixtures):
    """cfi format: fuzz/harness/cfi.rs. Real sections, with a real stack where a core has one."""
    for arch, flag in (("x86_64", 0), ("aarch64", 1)):
        p = os.path.join(fixtures, f"chain-{arch}")
        if not os.path.exists(p):
            continue
        s = sections(p)
        eh, hdr = s.get(".eh_frame"), s.get(".eh_frame_hdr", (0, b""))
        text, got = s.get(".text", (0, b""))[0], s.get(".got", (0, b""))[0]
        if not eh:
            continue
        pcs = [text + i * 0x40 for i in range(8)]
        # A real stack: the chain core's crashing thread, with the executable's load bias.
        regs, base, body, bias = (0, 0, 0, 0), 0, b"", 0
        core_path = os.path.join(fixtures, f"core-{arch}-chain")
        if os.path.exists(core_path):
            core = open(core_path, "rb").read()
            t = threads(core)[0]
            lo = (t["sp"] - 256) & ~0xf
            body = next((m for n in (4096, 2048, 1024, 512) if (m := read_mem(core, lo, n))), b"")
            regs, base = (t["pc"], t["sp"], t["fp"], t["lr"]), lo
            bias = load_base(core, f"chain-{arch}") or (0x5500000000 if arch == "aarch64" else 0)
        write("cfi", f"{arch}-eh_frame-hdr-stack",
              cfi_input(flag | 2, eh, hdr, text, got, bias, pcs, regs, base, body))
        write("cfi", f"{arch}-eh_frame", cfi_input(flag, eh, hdr, text, got, 0, pcs, regs, 0, b""))
        if arch == "x86_64":
            elf = open(p, "rb").read()
            write("cfi", f"{arch}-elf", bytes([flag | 8]) + struct.pack("<QQQQQ", 0, 0, 0, 0, bias) + elf)


def gopclntab(entries, pcsp, flags, go120=False, quantum=1):
    """A Go 1.18+ `.gopclntab` (the shape of src/cfi/gopclntab.rs's unit tests): function
    `i` spans entries[i]..entries[i+1] (offsets from textStart 0x400000) with pcsp program
    pcsp[i] and `_func.flag` flags[i]."""
    n = len(entries) - 1
    tab = bytearray(72)
    tab[0:4] = struct.pack("<I", 0xFFFFFFF1 if go120 else 0xFFFFFFF0)
    tab[6], tab[7] = quantum, 8
    tab[8:16] = struct.pack("<Q", n)
    tab[24:32] = struct.pack("<Q", 0x400000)
    pctab, offs = len(tab), []
    for p in pcsp:
        offs.append(len(tab) - pctab)
        tab += p
    while len(tab) % 8:
        tab.append(0)
    pcln = len(tab)
    tab[56:64] = struct.pack("<Q", pctab)
    tab[64:72] = struct.pack("<Q", pcln)
    ftab = 8 * (n + 1)
    for i, e in enumerate(entries):
        tab += struct.pack("<II", e, ftab + 48 * i if i < n else 0)
    for i in range(n):
        rec = bytearray(48)
        rec[0:4] = struct.pack("<I", entries[i])
        rec[16:20] = struct.pack("<I", offs[i])
        rec[41 if go120 else 37] = flags[i]
        tab += rec
    return bytes(tab)


def gopclntab_seeds():
    """cfi inputs with bit 4: a `.gopclntab` whose pcsp tables become CFI, and a stack."""
    prologue = bytes([0x12, 4, 0x30, 10, 0x2F, 6, 0])
    for arch, flag, q in (("x86_64", 0, 1), ("aarch64", 1, 4)):
        for go120 in (False, True):
            tab = gopclntab([0, 20 * q, 40 * q, 42 * q], [prologue, prologue, bytes([0x02, 2, 0])],
                            [0, 0, 1], go120, q)
            pcs = [0x400000 + i for i in range(0, 42 * q, 4 * q)]
            words = b"".join(struct.pack("<Q", 0x400000 + 24 + 8 * i) for i in range(32))
            regs = (0x400005, 0x7000, 0x7100, 0x400030)
            name = f"{arch}-gopclntab-go1{20 if go120 else 18}"
            write("cfi", name, cfi_input(flag | 16, (0, tab), (0, b""), 0x400000, 0, 0, pcs,
                                         regs, 0x7000, words))


def main():
    fixtures = sys.argv[1] if len(sys.argv) > 1 else "/tmp/unwind-fixtures"
    walk_seeds()
    policy_seeds()
    for name in sorted(os.listdir(fixtures)):
        if not name.startswith("core-"):
            continue
        data = open(os.path.join(fixtures, name), "rb").read()
        small = minimise(data)
        if len(small) < 1024 * 1024:
            write("core_file", name, small)
        walk_from_core(name[5:], data)
    cfi_seeds(fixtures)
    gopclntab_seeds()


if __name__ == "__main__":
    main()

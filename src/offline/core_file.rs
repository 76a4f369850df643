//! ELF core files: threads' registers, memory, mapped files.
//!
//! A core is parsed with `object`'s ELF reader over a `memmap2` mapping. Memory is the file-backed
//! part of each `PT_LOAD` segment (read from the file with `pread` while a segment is read
//! sparsely, [`Core::open`]); one `NT_PRSTATUS` note per thread gives its registers
//! (`pr_pid` at offset 32, `pr_reg` at 0x70: `struct elf_prstatus` in the kernel's
//! `include/linux/elfcore.h`); `NT_FILE` lists mapped files (absent in qemu-user cores);
//! `NT_AUXV` the auxiliary vector; `NT_ARM_PAC_MASK` aarch64's pointer-authentication masks.
//! Every read is bounds-checked: a garbage or truncated core gives a [`CoreError`], never a
//! panic.

use crate::arch::{aarch64, x86_64, ArchKind, Regs};
use crate::memory::{Memory, Range};
use crate::safe_open::Mapped;
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::LittleEndian as LE;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why a core could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum CoreError {
    /// The file could not be opened or mapped.
    Io(PathBuf, std::io::Error),
    /// Not a 64-bit little-endian ELF file.
    NotElf,
    /// A compressed file (systemd-coredump stores cores zstd-compressed): the compression's
    /// name and the command that decompresses it.
    Compressed(&'static str, &'static str),
    /// An ELF file, but not a core (`e_type` is not `ET_CORE`).
    NotCore,
    /// A core for an architecture we do not unwind (the `e_machine` value).
    UnsupportedArch(u16),
    /// Headers or notes point outside the file.
    Truncated(&'static str),
    /// No thread (`NT_PRSTATUS`) in the core.
    NoThreads,
    /// The file is shorter than its headers say (the core size limit was reached while the
    /// kernel wrote it), and too little is left to unwind: (bytes present, bytes its readable
    /// program headers reach: the whole size when the table itself is present).
    TruncatedFile(u64, u64),
    /// The executable given to stand in for the core's ([`crate::offline::Options::exe`]) is
    /// not one for this core ([`crate::offline::check_exe`]: another architecture, an object
    /// file, a core, a separate debug file): its path and why.
    BadExe(PathBuf, String),
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Io(p, e) => {
                let p = p.display().to_string();
                write!(f, "cannot read {}: {e}", p.escape_debug())
            }
            CoreError::NotElf => f.write_str("not a 64-bit little-endian ELF file"),
            CoreError::Compressed(what, how) => write!(
                f,
                "a {what}-compressed file, not a core: decompress it first ({how}; \
                 `coredumpctl dump PID -o FILE` writes a systemd core out whole)"
            ),
            CoreError::NotCore => f.write_str("an ELF file, but not a core dump"),
            CoreError::UnsupportedArch(m) => {
                write!(
                    f,
                    "unsupported architecture (ELF machine {m}); x86_64 and aarch64 are"
                )
            }
            CoreError::Truncated(what) => write!(f, "truncated or corrupt core: {what}"),
            CoreError::NoThreads => f.write_str("no thread (NT_PRSTATUS) in the core"),
            CoreError::TruncatedFile(have, want) => write!(
                f,
                "core file is truncated: {have} of at least {want} bytes, too little left to unwind"
            ),
            CoreError::BadExe(p, why) => {
                let p = p.display().to_string();
                write!(f, "executable {}: {why}", p.escape_debug())
            }
        }
    }
}

impl std::error::Error for CoreError {}

/// One thread of a core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thread {
    /// Thread id (`pr_pid`).
    pub tid: u32,
    /// The registers the walk starts from.
    pub regs: Regs,
    /// The thread pointer (x86_64 `fs_base`; 0 elsewhere).
    pub tls: u64,
    /// aarch64 `x28` (Go keeps its current `g` there); 0 on x86_64.
    pub x28: u64,
    /// The signal that dumped the core, for the thread that took it (the first `NT_PRSTATUS`,
    /// as the kernel and gdb write it; its `pr_cursig`, which the kernel writes in every
    /// thread's note), with `NT_SIGINFO`'s details. `None` for the other threads and for a
    /// live process's.
    pub signal: Option<Signal>,
}

/// A signal a core's thread was taking (`pr_cursig`, `NT_SIGINFO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    /// The signal's number (`SIGSEGV` is 11).
    pub number: u32,
    /// `si_code` from `NT_SIGINFO` (`SEGV_MAPERR` is 1; a `kill`'s is 0, `tgkill`'s -6);
    /// `None` without the note.
    pub code: Option<i32>,
    /// The faulting address (`si_addr`) of a fault the kernel raised: `SIGSEGV`, `SIGBUS`,
    /// `SIGILL`, `SIGFPE` or `SIGTRAP` with a positive `si_code`. `None` otherwise (a signal
    /// sent by `kill`, `raise` or `abort` has no address).
    pub addr: Option<u64>,
}

impl Signal {
    /// The signal's name (`SIGSEGV`), or `signal N` for one Linux has no name for here.
    pub fn name(&self) -> std::borrow::Cow<'static, str> {
        const NAMES: [&str; 32] = [
            "",
            "SIGHUP",
            "SIGINT",
            "SIGQUIT",
            "SIGILL",
            "SIGTRAP",
            "SIGABRT",
            "SIGBUS",
            "SIGFPE",
            "SIGKILL",
            "SIGUSR1",
            "SIGSEGV",
            "SIGUSR2",
            "SIGPIPE",
            "SIGALRM",
            "SIGTERM",
            "SIGSTKFLT",
            "SIGCHLD",
            "SIGCONT",
            "SIGSTOP",
            "SIGTSTP",
            "SIGTTIN",
            "SIGTTOU",
            "SIGURG",
            "SIGXCPU",
            "SIGXFSZ",
            "SIGVTALRM",
            "SIGPROF",
            "SIGWINCH",
            "SIGIO",
            "SIGPWR",
            "SIGSYS",
        ];
        match NAMES.get(self.number as usize) {
            Some(n) if !n.is_empty() => (*n).into(),
            _ if (34..=64).contains(&self.number) => {
                format!("SIGRTMIN+{}", self.number - 34).into()
            }
            _ => format!("signal {}", self.number).into(),
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(a) = self.addr {
            write!(f, " at {a:#x}")?;
        }
        Ok(())
    }
}

/// A file mapped into the process (`NT_FILE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Address range.
    pub range: Range,
    /// Offset in the file, in bytes.
    pub offset: u64,
    /// The file's path as the process saw it.
    pub path: String,
}

/// A loadable segment of the core.
#[derive(Clone, Copy, Debug)]
struct Segment {
    vaddr: u64,
    /// File-backed bytes: `data[file_lo..file_hi]`.
    file_lo: usize,
    file_hi: usize,
    memsz: u64,
    flags: u32,
}

/// A parsed core file.
pub struct Core {
    /// The bytes of the core: mapped from a file or owned.
    data: Mapped,
    /// The architecture.
    pub arch: ArchKind,
    /// Threads, in note order (the first is the one that crashed).
    pub threads: Vec<Thread>,
    /// Mapped files (empty for qemu-user cores).
    pub mappings: Vec<Mapping>,
    /// The auxiliary vector: (type, value) pairs.
    pub auxv: Vec<(u64, u64)>,
    /// aarch64 instruction pointer-authentication mask (`NT_ARM_PAC_MASK`), or 0.
    pub pac_mask: u64,
    segments: Vec<Segment>,
    /// The file's length according to its headers (program headers, every segment's bytes).
    expected_len: u64,
    /// Memory the file does not hold, read elsewhere (a stopped process: `crate::process`).
    backing: Option<Box<dyn Backing>>,
    /// The core file itself, when it was opened from one: its segments' bytes are read from
    /// it a block at a time ([`FileReads`]), not through the mapping.
    file: Option<FileReads>,
    /// `NT_FILE` paths that are not UTF-8: the path as [`Mapping::path`] shows it -> the bytes
    /// (the first of those that show alike).
    raw_paths: RawPaths,
}

/// Reads of a core file's bytes with `pread`, a 4 KiB block at a time, the last
/// [`FileReads::SLOTS`] blocks kept. A walk reads a few words near the top of each thread's
/// stack, and each stack is its own part of the file: through the mapping, each such read
/// faulted in 16 pages (the kernel's fault-around, ~2.5 us here) that the process's exit then
/// unmapped again (~2 us more), for the one page it used; a `pread` of the page is ~0.5-0.9 us
/// and maps nothing. But a copy costs more than a mapping for memory read densely (a deep
/// stack walked whole: 16 `pread`s of 4 KiB for what one fault maps), so a segment that
/// needed [`FileReads::DENSE`] blocks is read through the mapping from then on. Reads of a
/// block or more go to the file directly. A file cut shorter since it was opened reads as
/// missing there (a mapping's read past the new end would fault).
struct FileReads {
    file: std::fs::File,
    blocks: std::sync::Mutex<Blocks>,
    /// Blocks read so far in each segment (by index), up to [`FileReads::DENSE`]: checked
    /// without the lock, so that a dense segment's reads take none.
    misses: Vec<std::sync::atomic::AtomicU32>,
}

/// [`FileReads`]' cached blocks: `tags[i]` is the block index + 1 in slot `i` (0: empty),
/// `lens[i]` how many of its bytes the file has (short at the end of the file).
struct Blocks {
    tags: [u64; FileReads::SLOTS],
    lens: [usize; FileReads::SLOTS],
    data: Vec<u8>,
    next: usize,
}

impl FileReads {
    const BLOCK: usize = 4096;
    const SLOTS: usize = 8;
    const DENSE: u32 = 4;

    fn new(file: std::fs::File, segments: usize) -> FileReads {
        FileReads {
            file,
            blocks: std::sync::Mutex::new(Blocks {
                tags: [0; FileReads::SLOTS],
                lens: [0; FileReads::SLOTS],
                data: Vec::new(),
                next: 0,
            }),
            misses: (0..segments).map(|_| Default::default()).collect(),
        }
    }

    /// Reads `out.len()` bytes at file offset `off`, in segment `seg`; `Some(false)` if the file
    /// does not have them all, `None` if the segment is read densely (read it mapped).
    fn read(&self, seg: usize, off: u64, out: &mut [u8]) -> Option<bool> {
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::Ordering::Relaxed;
        let misses = self.misses.get(seg)?;
        if misses.load(Relaxed) >= Self::DENSE {
            return None;
        }
        if out.len() >= Self::BLOCK {
            misses.fetch_add(1, Relaxed);
            return Some(self.file.read_exact_at(out, off).is_ok());
        }
        // A poisoned lock only means a panic elsewhere while it was held: the blocks are
        // whole (each is filled before its tag is set).
        let mut b = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let b = &mut *b;
        if b.data.is_empty() {
            b.data = vec![0; Self::BLOCK * Self::SLOTS];
        }
        let mut done = 0;
        while done < out.len() {
            let Some(at) = off.checked_add(done as u64) else {
                return Some(false);
            };
            let block = at / Self::BLOCK as u64;
            let within = (at % Self::BLOCK as u64) as usize;
            let slot = match b.tags.iter().position(|&t| t == block + 1) {
                Some(i) => i,
                None => {
                    // (Below `DENSE` when this read began: a read that needs more blocks
                    // finishes with them.)
                    misses.fetch_add(1, Relaxed);
                    let i = b.next;
                    b.next = (i + 1) % Self::SLOTS;
                    b.tags[i] = 0;
                    let buf = &mut b.data[i * Self::BLOCK..(i + 1) * Self::BLOCK];
                    let mut got = 0;
                    while got < Self::BLOCK {
                        match self
                            .file
                            .read_at(&mut buf[got..], block * Self::BLOCK as u64 + got as u64)
                        {
                            Ok(0) => break,
                            Ok(n) => got += n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    }
                    b.lens[i] = got;
                    b.tags[i] = block + 1;
                    i
                }
            };
            let have = b.lens[slot];
            if within >= have {
                return Some(false);
            }
            let n = (have - within).min(out.len() - done);
            let from = slot * Self::BLOCK + within;
            out[done..done + n].copy_from_slice(&b.data[from..from + n]);
            done += n;
        }
        Some(true)
    }
}

/// Memory read from somewhere other than a core file: a stopped process (`crate::process`).
/// A [`Core`] built with [`Core::with_backing`] reads what its own segments lack through it.
pub trait Backing: Send + Sync {
    /// Reads `out.len()` bytes at `addr`; `false` when any of them is not readable.
    fn read(&self, addr: u64, out: &mut [u8]) -> bool;
    /// The readable mapping containing `addr` (the bounds of the stack it may be on).
    fn mapping(&self, addr: u64) -> Option<Range>;
    /// Is `addr` in executable memory (`None`: cannot tell, the default)?
    fn is_code(&self, _addr: u64) -> Option<bool> {
        None
    }
}

/// `NT_FILE` ("FILE" in little-endian).
const NT_FILE: u32 = 0x4649_4c45;
const NT_PRSTATUS: u32 = elf::NT_PRSTATUS.0;
const NT_AUXV: u32 = elf::NT_AUXV.0;
/// `NT_ARM_PAC_MASK` (kernel `include/uapi/linux/elf.h`).
const NT_ARM_PAC_MASK: u32 = 0x406;
/// `NT_SIGINFO` ("SIGI"): the `siginfo_t` of the signal that dumped the core, after the
/// dumping thread's `NT_PRSTATUS`.
const NT_SIGINFO: u32 = 0x5349_4749;
/// Offset of `pr_cursig` (a `short`) in `struct elf_prstatus`.
const PR_CURSIG: usize = 12;
/// Offset of `pr_pid` in `struct elf_prstatus`.
const PR_PID: usize = 32;
/// Offset of `pr_reg` in `struct elf_prstatus`.
const PR_REG: usize = 0x70;

/// The little-endian u64 at `off` in `b`, if it lies inside.
pub(crate) fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The little-endian u32 at `off` in `b`, if it lies inside.
pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

impl Core {
    /// Opens and parses a core file.
    ///
    /// Opened through [`crate::safe_open`] (a regular, non-empty file, never blocking, not
    /// under `/proc` or `/sys`; no size limit) and mapped read-only. The file stays open while
    /// the `Core` lives: its segments' memory is read from it with `pread` (a block at a time;
    /// through the mapping once a segment is read densely), which maps nothing for the few
    /// words a walk reads at the top of each stack.
    pub fn open(path: &Path) -> Result<Core, CoreError> {
        let io = |e| CoreError::Io(path.into(), e);
        let opened = crate::safe_open::open(path, &crate::safe_open::Policy::core()).map_err(io)?;
        let file = opened.file.try_clone().ok();
        let data = opened.map_analysed().map_err(io)?;
        let mut core = Core::parse(data)?;
        // Segment reads from the file, when the file is mapped (a file read whole is in
        // memory already).
        if matches!(core.data, Mapped::Map(_)) {
            let segments = core.segments.len();
            core.file = file.map(|f| FileReads::new(f, segments));
        }
        Ok(core)
    }

    /// `Some((bytes present, bytes expected))` when the file is shorter than its program
    /// headers say: the core size limit (`ulimit -c`) was reached while the kernel wrote it.
    /// What is present is still unwound; memory past the cut reads as missing.
    pub fn truncation(&self) -> Option<(u64, u64)> {
        let have = self.data.len() as u64;
        (self.expected_len > have).then_some((have, self.expected_len))
    }

    /// Parses a core held in memory (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Core, CoreError> {
        Core::parse(Mapped::Owned(bytes))
    }

    fn parse(data: Mapped) -> Result<Core, CoreError> {
        let expected_len = expected_len(&data);
        let (arch, threads, (mappings, raw_paths), auxv, pac_mask, segments) =
            parse_bytes(&data).map_err(|e| match e {
                CoreError::Truncated(_) | CoreError::NoThreads
                    if expected_len > data.len() as u64 =>
                {
                    CoreError::TruncatedFile(data.len() as u64, expected_len)
                }
                e => e,
            })?;
        Ok(Core {
            expected_len,
            data,
            arch,
            threads,
            mappings,
            auxv,
            pac_mask,
            segments,
            backing: None,
            file: None,
            raw_paths,
        })
    }

    /// The file a mapping's [`Mapping::path`] names: the `NT_FILE` note's bytes exactly where
    /// they are not UTF-8 (the path shows them with U+FFFD, which names no file), else the path.
    pub fn mapping_file<'a>(&'a self, path: &'a str) -> &'a std::ffi::OsStr {
        use std::os::unix::ffi::OsStrExt;
        self.raw_paths
            .get(path)
            .map_or(std::ffi::OsStr::new(path), |b| {
                std::ffi::OsStr::from_bytes(b)
            })
    }

    /// Opens mapping `path`'s file through `file` ([`Core::mapping_file`]): a live process's
    /// deleted or replaced file, through `/proc/PID/map_files`, keeps the name the process
    /// gives it.
    pub fn set_mapping_file(&mut self, path: String, file: Vec<u8>) {
        self.raw_paths.insert(path, file);
    }

    /// A "core" whose memory is `backing` (a stopped process), plus `code`: (address, bytes)
    /// of executable memory copied ahead (the vDSO), searched for trampolines like a core's
    /// executable segments. No threads: the caller fills [`Core::threads`] or walks its own.
    pub fn with_backing(
        arch: ArchKind,
        mappings: Vec<Mapping>,
        auxv: Vec<(u64, u64)>,
        code: Vec<(u64, Vec<u8>)>,
        backing: Box<dyn Backing>,
    ) -> Core {
        let mut bytes = Vec::new();
        let mut segments = Vec::new();
        for (vaddr, b) in code {
            segments.push(Segment {
                vaddr,
                file_lo: bytes.len(),
                file_hi: bytes.len() + b.len(),
                memsz: b.len() as u64,
                flags: elf::PF_R.0 | elf::PF_X.0,
            });
            bytes.extend_from_slice(&b);
        }
        segments.sort_by_key(|s| s.vaddr);
        let expected_len = bytes.len() as u64;
        Core {
            expected_len,
            data: Mapped::Owned(bytes),
            arch,
            threads: Vec::new(),
            mappings,
            auxv,
            pac_mask: 0,
            segments,
            backing: Some(backing),
            file: None,
            raw_paths: RawPaths::new(),
        }
    }

    /// The core's memory.
    pub fn memory(&self) -> CoreMemory<'_> {
        CoreMemory { core: self }
    }

    /// The `len` bytes at `addr` as the core holds them, in place: `None` unless they all lie
    /// in one segment's bytes in the file (a kernel core keeps only a file mapping's first
    /// page; gdb's `gcore` keeps a deleted file's mappings whole; a live process's memory is read, not
    /// held).
    pub fn bytes_at(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let segs = &self.segments;
        let i = segs.partition_point(|s| s.vaddr <= addr).checked_sub(1)?;
        let s = segs.get(i)?;
        let off = addr - s.vaddr;
        let end = off.checked_add(len)?;
        if end > (s.file_hi - s.file_lo) as u64 {
            return None;
        }
        self.data
            .get(s.file_lo + off as usize..s.file_lo + end as usize)
    }

    /// Is its memory read from a live process ([`Core::with_backing`]) rather than held?
    pub fn has_backing(&self) -> bool {
        self.backing.is_some()
    }

    /// Was the memory at `addr` writable (its core segment's flags)? `None` for a live
    /// process's or memory in no segment.
    pub fn writable(&self, addr: u64) -> Option<bool> {
        if self.backing.is_some() {
            return None;
        }
        self.memory()
            .segment(addr)
            .map(|(_, s)| s.flags & elf::PF_W.0 != 0)
    }

    /// An auxiliary-vector entry (`AT_*`).
    pub fn aux(&self, key: u64) -> Option<u64> {
        self.auxv.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// Executable segments' contents, for finding trampolines by their instruction bytes:
    /// (address, bytes).
    pub fn code_segments(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.segments
            .iter()
            .filter(|s| s.flags & elf::PF_X.0 != 0 && s.file_hi > s.file_lo)
            .map(|s| (s.vaddr, &self.data[s.file_lo..s.file_hi]))
    }
}

/// `NT_FILE` paths that are not UTF-8, by the path shown: their bytes.
type RawPaths = std::collections::HashMap<String, Vec<u8>>;

/// `NT_FILE`'s mappings, and its paths that are not UTF-8.
type NtFile = (Vec<Mapping>, RawPaths);

type Parsed = (
    ArchKind,
    Vec<Thread>,
    NtFile,
    Vec<(u64, u64)>,
    u64,
    Vec<Segment>,
);

/// How long the file should be according to its ELF header and program headers (0 when they
/// cannot be read).
fn expected_len(data: &[u8]) -> u64 {
    let Ok(hdr) = elf::FileHeader64::<LE>::parse(data) else {
        return 0;
    };
    let Ok(e) = hdr.endian() else { return 0 };
    let mut want = hdr
        .e_phoff(e)
        .saturating_add(u64::from(hdr.e_phnum(e)).saturating_mul(u64::from(hdr.e_phentsize(e))));
    if let Ok(phdrs) = hdr.program_headers(e, data) {
        for ph in phdrs {
            want = want.max(ph.p_offset(e).saturating_add(ph.p_filesz(e)));
        }
    }
    want
}

/// Parses core bytes (the whole file).
fn parse_bytes(data: &[u8]) -> Result<Parsed, CoreError> {
    // A file cut inside the 64-byte ELF header that begins as a 64-bit little-endian ELF file
    // does: truncated, not "not ELF" (found by outside use).
    const ELF64_LE: [u8; 6] = [0x7f, b'E', b'L', b'F', 2, 1];
    let header = core::mem::size_of::<elf::FileHeader64<LE>>();
    if !data.is_empty()
        && data.len() < header
        && ELF64_LE.starts_with(&data[..data.len().min(ELF64_LE.len())])
    {
        return Err(CoreError::Truncated("ELF header"));
    }
    // Found by outside use in the twenty-sixth round: systemd-coredump's `.zst` cores read
    // "not a 64-bit little-endian ELF file".
    const COMPRESSED: [(&[u8], &str, &str); 5] = [
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd", "zstd -d FILE"),
        (&[0x04, 0x22, 0x4d, 0x18], "lz4", "lz4 -d FILE"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz", "xz -d FILE"),
        (&[0x1f, 0x8b], "gzip", "gzip -d FILE"),
        (b"BZh", "bzip2", "bzip2 -d FILE"),
    ];
    if let Some(&(_, what, how)) = COMPRESSED.iter().find(|(m, _, _)| data.starts_with(m)) {
        return Err(CoreError::Compressed(what, how));
    }
    let hdr = elf::FileHeader64::<LE>::parse(data).map_err(|_| CoreError::NotElf)?;
    let e = hdr.endian().map_err(|_| CoreError::NotElf)?;
    if hdr.e_type(e) != elf::ET_CORE {
        return Err(CoreError::NotCore);
    }
    let arch = match hdr.e_machine(e) {
        elf::EM_X86_64 => ArchKind::X86_64,
        elf::EM_AARCH64 => ArchKind::Aarch64,
        m => return Err(CoreError::UnsupportedArch(m.0)),
    };
    let phdrs = hdr
        .program_headers(e, data)
        .map_err(|_| CoreError::Truncated("program headers"))?;
    let mut threads = Vec::new();
    let mut mappings = (Vec::new(), RawPaths::new());
    let mut auxv = Vec::new();
    let mut pac_mask = 0;
    let mut segments = Vec::new();
    for ph in phdrs {
        match ph.p_type(e) {
            elf::PT_LOAD => {
                let off = ph.p_offset(e);
                let filesz = ph.p_filesz(e);
                let end = off.checked_add(filesz).filter(|&x| x <= data.len() as u64);
                // A segment whose bytes are cut off by truncation keeps what is there.
                let file_hi = end
                    .unwrap_or(data.len() as u64)
                    .max(off.min(data.len() as u64));
                let file_lo = off.min(data.len() as u64);
                segments.push(Segment {
                    vaddr: ph.p_vaddr(e),
                    file_lo: file_lo as usize,
                    file_hi: file_hi as usize,
                    memsz: ph.p_memsz(e),
                    flags: ph.p_flags(e).0,
                });
            }
            elf::PT_NOTE => {
                let Ok(Some(mut notes)) = ph.notes(e, data) else {
                    return Err(CoreError::Truncated("notes"));
                };
                loop {
                    let note = match notes.next() {
                        Ok(Some(n)) => n,
                        Ok(None) => break,
                        Err(_) => return Err(CoreError::Truncated("note")),
                    };
                    let desc = note.desc();
                    match note.n_type(e).0 {
                        NT_PRSTATUS if note.name() == b"CORE" => {
                            let mut t = thread(arch, desc)?;
                            // The kernel writes the signal in every thread's `pr_cursig`;
                            // the thread that took it is the first.
                            if !threads.is_empty() {
                                t.signal = None;
                            }
                            threads.push(t);
                        }
                        NT_SIGINFO => {
                            if let Some(t) = threads.last_mut() {
                                add_siginfo(t, desc);
                            }
                        }
                        NT_FILE => mappings = parse_nt_file(desc),
                        NT_AUXV => {
                            auxv = desc
                                .chunks_exact(16)
                                .map(|c| (u64_at(c, 0).unwrap_or(0), u64_at(c, 8).unwrap_or(0)))
                                .take_while(|(k, _)| *k != 0)
                                .collect()
                        }
                        NT_ARM_PAC_MASK => {
                            // struct user_pac_mask { data_mask, insn_mask }
                            pac_mask = u64_at(desc, 8).unwrap_or(0);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if threads.is_empty() {
        return Err(CoreError::NoThreads);
    }
    segments.sort_by_key(|s| s.vaddr);
    Ok((arch, threads, mappings, auxv, pac_mask, segments))
}

/// `NT_SIGINFO`'s `siginfo_t` (`si_signo`, `si_errno`, `si_code`, then at 16 the union whose
/// first field is a fault's `si_addr`) for the thread whose `NT_PRSTATUS` came just before.
fn add_siginfo(t: &mut Thread, desc: &[u8]) {
    let (Some(signo), Some(code)) = (u32_at(desc, 0), u32_at(desc, 8)) else {
        return;
    };
    let code = code as i32;
    let fault = matches!(signo, 4 | 5 | 7 | 8 | 11) && code > 0;
    // The dumping thread's only (gdb's `gcore` writes one after every thread's status).
    if let Some(sig) = t.signal.as_mut().filter(|s| s.number == signo) {
        sig.code = Some(code);
        sig.addr = if fault { u64_at(desc, 16) } else { None };
    }
}

fn thread(arch: ArchKind, desc: &[u8]) -> Result<Thread, CoreError> {
    let bad = CoreError::Truncated("NT_PRSTATUS");
    let tid = u32_at(desc, PR_PID).ok_or(CoreError::Truncated("NT_PRSTATUS"))?;
    let cursig = desc
        .get(PR_CURSIG..PR_CURSIG + 2)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    let signal = (cursig != 0).then_some(Signal {
        number: u32::from(cursig),
        code: None,
        addr: None,
    });
    let reg = |i: usize| u64_at(desc, PR_REG + 8 * i);
    let t = match arch {
        ArchKind::X86_64 => {
            use x86_64::user_regs as r;
            Thread {
                tid,
                regs: Regs {
                    pc: reg(r::RIP).ok_or(bad)?,
                    sp: reg(r::RSP).unwrap_or(0),
                    fp: reg(r::RBP).unwrap_or(0),
                    lr: reg(r::R11).unwrap_or(0),
                },
                tls: reg(r::FS_BASE).unwrap_or(0),
                x28: 0,
                signal,
            }
        }
        ArchKind::Aarch64 => {
            use aarch64::user_regs as r;
            Thread {
                tid,
                regs: Regs {
                    pc: reg(r::PC).ok_or(bad)?,
                    sp: reg(r::SP).unwrap_or(0),
                    fp: reg(r::FP).unwrap_or(0),
                    lr: reg(r::LR).unwrap_or(0),
                },
                tls: 0,
                x28: reg(28).unwrap_or(0),
                signal,
            }
        }
    };
    Ok(t)
}

/// `NT_FILE`: count, page size, count × (start, end, page offset), then NUL-separated paths.
/// Also the paths that are not UTF-8: (as shown, the bytes).
fn parse_nt_file(desc: &[u8]) -> NtFile {
    let (Some(count), Some(page)) = (u64_at(desc, 0), u64_at(desc, 8)) else {
        return (Vec::new(), RawPaths::new());
    };
    let mut raw = RawPaths::new();
    // Each entry takes 24 bytes: a count beyond what the note holds is corrupt.
    let count = count.min((desc.len() / 24) as u64) as usize;
    let names_at = 16 + 24 * count;
    let mut names = desc.get(names_at..).unwrap_or(&[]).split(|&b| b == 0);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = 16 + 24 * i;
        let (Some(lo), Some(hi), Some(pg)) = (
            u64_at(desc, at),
            u64_at(desc, at + 8),
            u64_at(desc, at + 16),
        ) else {
            break;
        };
        let Some(name) = names.next() else { break };
        let path = String::from_utf8_lossy(name).into_owned();
        if std::str::from_utf8(name).is_err() {
            raw.entry(path.clone()).or_insert_with(|| name.to_vec());
        }
        out.push(Mapping {
            range: Range::new(lo, hi),
            offset: pg.saturating_mul(page),
            path,
        });
    }
    (out, raw)
}

/// A core's memory: the file-backed bytes of its `PT_LOAD` segments.
#[derive(Clone, Copy)]
pub struct CoreMemory<'a> {
    core: &'a Core,
}

impl CoreMemory<'_> {
    /// The segment holding `addr`, and its index.
    fn segment(&self, addr: u64) -> Option<(usize, &Segment)> {
        let segs = &self.core.segments;
        let i = segs.partition_point(|s| s.vaddr <= addr).checked_sub(1)?;
        let s = segs.get(i)?;
        (addr - s.vaddr < s.memsz).then_some((i, s))
    }

    /// Reads `out.len()` bytes at `addr`, if the core holds them.
    pub fn read_bytes(&self, addr: u64, out: &mut [u8]) -> bool {
        let Some((seg, s)) = self.segment(addr) else {
            return self
                .core
                .backing
                .as_ref()
                .is_some_and(|b| b.read(addr, out));
        };
        let off = addr - s.vaddr;
        let avail = (s.file_hi - s.file_lo) as u64;
        if off > avail || avail - off < out.len() as u64 {
            return false;
        }
        let start = s.file_lo + off as usize;
        let Some(b) = self.core.data.get(start..start + out.len()) else {
            return false;
        };
        if let Some(read) = self
            .core
            .file
            .as_ref()
            .and_then(|f| f.read(seg, start as u64, out))
        {
            return read;
        }
        out.copy_from_slice(b);
        true
    }
}

/// How many neighbours [`adjoining`] joins at most on each side.
const ADJOINING_LIMIT: usize = 4096;

/// The readable range `lo..hi` of region `i` of `n` (in address order), joined with the
/// regions that adjoin it on either side, as long as `region(j)` gives them: `(lo, hi,
/// whole)`, `hi` the end of its readable part, `whole` when that is all of it (only then can
/// the region after it join); `None` for a region of another kind (`None` for region `i`
/// itself: no range). One stack can span two
/// mappings that the kernel left apart: Go's heap arena, where its goroutines' stacks live, is
/// often two adjacent read-write mappings, and a goroutine stack that crossed between them
/// looked like two stacks, its walk stopped at the boundary (found by outside use in the
/// twenty-seventh round; gdb walked on).
pub(crate) fn adjoining(
    i: usize,
    n: usize,
    mut region: impl FnMut(usize) -> Option<(u64, u64, bool)>,
) -> Option<(u64, u64)> {
    let (mut lo, mut hi, mut whole) = region(i)?;
    let mut j = i;
    while whole && j + 1 < n && j - i < ADJOINING_LIMIT {
        match region(j + 1) {
            Some((a, b, w)) if a == hi && b > a => (hi, whole, j) = (b, w, j + 1),
            _ => break,
        }
    }
    let mut j = i;
    while j > 0 && i - j < ADJOINING_LIMIT {
        match region(j - 1) {
            Some((a, b, true)) if b == lo && a < b => (lo, j) = (a, j - 1),
            _ => break,
        }
    }
    Some((lo, hi))
}

impl Memory for CoreMemory<'_> {
    fn read_u64(&mut self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read_bytes(addr, &mut b).then(|| u64::from_le_bytes(b))
    }

    /// The segment holding `addr`, with the writable segments that adjoin it (see
    /// `adjoining`).
    fn stack_range(&mut self, addr: u64) -> Option<Range> {
        let Some((i, s)) = self.segment(addr) else {
            return self.core.backing.as_ref()?.mapping(addr);
        };
        // Only the file-backed part is readable.
        let readable_end = |s: &Segment| s.vaddr.saturating_add((s.file_hi - s.file_lo) as u64);
        let hi = readable_end(s);
        if addr >= hi {
            return None;
        }
        let segs = &self.core.segments;
        let region = |j: usize| {
            let t = segs.get(j)?;
            let rw =
                t.flags & (elf::PF_R.0 | elf::PF_W.0 | elf::PF_X.0) == elf::PF_R.0 | elf::PF_W.0;
            let whole = (t.file_hi - t.file_lo) as u64 == t.memsz;
            rw.then_some((t.vaddr, readable_end(t), whole))
        };
        let (lo, hi) = adjoining(i, segs.len(), region).unwrap_or((s.vaddr, hi));
        Some(Range::new(lo, hi))
    }

    fn read_code(&mut self, addr: u64, out: &mut [u8]) -> bool {
        self.read_bytes(addr, out)
    }

    /// By the segment's flags (a kernel core lists every mapping, its text too, if only with
    /// its first page's bytes). An address in no segment is unmapped, unless a file was mapped
    /// there (`NT_FILE`): gdb's `gcore` leaves read-only file mappings out, text among them, and
    /// the core cannot tell (`None`). A live process's by its maps.
    fn is_code(&mut self, addr: u64) -> Option<bool> {
        if let Some(b) = &self.core.backing {
            return b.is_code(addr);
        }
        if self.core.segments.is_empty() {
            return None;
        }
        match self.segment(addr) {
            Some((_, s)) => Some(s.flags & elf::PF_X.0 != 0),
            None if self.core.mappings.iter().any(|m| m.range.contains(addr)) => None,
            None => Some(false),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Regions join while they adjoin, are of the kind (`Some`), and the lower one is whole.
    #[test]
    fn adjoining_regions_join() {
        // (lo, readable hi, whole), in address order.
        let r = [
            Some((0x1000, 0x2000, true)),
            Some((0x2000, 0x3000, true)),
            Some((0x3000, 0x3800, false)), // only partly readable: nothing joins above it
            Some((0x4000, 0x5000, true)),
            None, // another kind
            Some((0x6000, 0x7000, true)),
            Some((0x7000, 0x8000, true)),
        ];
        let get = |j: usize| r[j];
        let join = |i: usize| adjoining(i, r.len(), get).unwrap();
        assert_eq!(join(0), (0x1000, 0x3800));
        assert_eq!(join(1), (0x1000, 0x3800));
        assert_eq!(join(2), (0x1000, 0x3800));
        assert_eq!(join(3), (0x4000, 0x5000), "a gap below, another kind above");
        assert_eq!(join(5), (0x6000, 0x8000));
        assert_eq!(join(6), (0x6000, 0x8000));
        // A long run of adjoining regions stops at the limit on each side.
        let n = 3 * ADJOINING_LIMIT;
        let many = |j: usize| Some((j as u64 * 16, j as u64 * 16 + 16, true));
        let mid = n / 2;
        let (lo, hi) = adjoining(mid, n, many).unwrap();
        assert_eq!(lo, (mid - ADJOINING_LIMIT) as u64 * 16);
        assert_eq!(hi, (mid + ADJOINING_LIMIT + 1) as u64 * 16);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(parse_bytes(b""), Err(CoreError::NotElf)));
        // Cut inside the header of what begins as a 64-bit little-endian ELF file.
        let head = [0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0];
        for n in 1..=head.len() {
            assert!(
                matches!(
                    parse_bytes(&head[..n]),
                    Err(CoreError::Truncated("ELF header"))
                ),
                "{n}"
            );
        }
        assert!(matches!(
            parse_bytes(b"\x7fELF\x01"),
            Err(CoreError::NotElf)
        ));
        assert!(matches!(parse_bytes(&[0x7f; 100]), Err(CoreError::NotElf)));
        // Compressed cores say how to decompress them.
        for (magic, what) in [
            (&[0x28, 0xb5, 0x2f, 0xfd, 0][..], "zstd"),
            (&[0x04, 0x22, 0x4d, 0x18, 0][..], "lz4"),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0, 0][..], "xz"),
            (&[0x1f, 0x8b, 8, 0][..], "gzip"),
            (&b"BZh91AY"[..], "bzip2"),
        ] {
            let e = parse_bytes(magic).unwrap_err();
            assert!(matches!(e, CoreError::Compressed(w, _) if w == what), "{e}");
            assert!(e.to_string().contains(&format!("{what} -d FILE")), "{e}");
        }
        let mut x = vec![0u8; 64];
        x[..4].copy_from_slice(b"\x7fELF");
        assert!(parse_bytes(&x).is_err());
        // Pseudo-random bytes behind a valid-looking ident.
        let mut seed = 0x1234_5678u64;
        for _ in 0..200 {
            let mut b: Vec<u8> = (0..512)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 33) as u8
                })
                .collect();
            b[..16].copy_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
            b[16] = 4; // ET_CORE
            b[17] = 0;
            b[18] = 62; // x86_64
            b[19] = 0;
            // Random program headers point outside 512 bytes: an error, or a core whose every
            // segment and thread lies inside the bytes it came from.
            if let Ok((_, _, _, _, _, segments)) = parse_bytes(&b) {
                assert!(segments.iter().all(|s| s.file_hi <= b.len()));
                assert!(segments.iter().all(|s| s.file_lo <= s.file_hi));
            }
        }
    }

    #[test]
    fn nt_file_with_a_lying_count() {
        let mut d = Vec::new();
        d.extend_from_slice(&u64::MAX.to_le_bytes());
        d.extend_from_slice(&4096u64.to_le_bytes());
        for v in [0x1000u64, 0x2000, 1] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d.extend_from_slice(b"/bin/x\0");
        let (m, raw) = parse_nt_file(&d);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].path, "/bin/x");
        assert_eq!(m[0].offset, 4096);
        assert!(raw.is_empty());
        assert!(parse_nt_file(&[1, 2, 3]).0.is_empty());
    }

    #[test]
    fn nt_file_paths_that_are_not_utf8_keep_their_bytes() {
        let mut d = Vec::new();
        d.extend_from_slice(&2u64.to_le_bytes());
        d.extend_from_slice(&4096u64.to_le_bytes());
        for v in [0x1000u64, 0x2000, 0, 0x2000, 0x3000, 1] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d.extend_from_slice(b"/tmp/caf\xe9/x\0/bin/y\0");
        let (m, raw) = parse_nt_file(&d);
        assert_eq!(m[0].path, "/tmp/caf\u{fffd}/x");
        assert_eq!(m[1].path, "/bin/y");
        assert_eq!(raw.len(), 1);
        assert_eq!(raw[&m[0].path], b"/tmp/caf\xe9/x");
    }

    /// A committed core, written to a fresh file.
    pub(crate) fn committed_core(name: &str, dir: &str) -> (std::path::PathBuf, Vec<u8>) {
        use std::io::Read;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let gz =
            std::fs::File::open(root.join("fixtures/cores").join(format!("{name}.gz"))).unwrap();
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut bytes)
            .unwrap();
        let d = std::env::temp_dir().join(format!("unwind-{dir}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join(name);
        std::fs::write(&path, &bytes).unwrap();
        (path, bytes)
    }

    /// Segment reads from the file (`pread`, cached blocks, then the mapping once a segment is
    /// read densely) give exactly the bytes the mapping holds, whatever their size and place:
    /// inside a block, across two, a block or more, at a segment's file end.
    #[test]
    fn reads_from_the_core_file_equal_the_mapped_bytes() {
        let (path, bytes) = committed_core("core-x86_64-threads", "reads");
        let file = Core::open(&path).unwrap();
        assert!(
            file.file.is_some(),
            "a mapped core reads its segments from the file"
        );
        let owned = Core::from_bytes(bytes).unwrap();
        assert!(owned.file.is_none());
        let (mut a, mut b) = (file.memory(), owned.memory());
        let mut rng = crate::memory::Rng(0x9e37_79b9_7f4a_7c15);
        let mut compared = 0;
        for s in &file.segments {
            let len = (s.file_hi - s.file_lo) as u64;
            if len == 0 {
                continue;
            }
            for k in 0..64 {
                let size = match k % 4 {
                    0 => 8,
                    1 => 1 + rng.below(64),
                    2 => 1 + rng.below(6000),
                    _ => 4096,
                } as usize;
                // Mostly inside the file-backed part, some reads running past its end.
                let off = rng.below(len + 16);
                let (mut x, mut y) = (vec![0u8; size], vec![0u8; size]);
                let (rx, ry) = (
                    a.read_bytes(s.vaddr + off, &mut x),
                    b.read_bytes(s.vaddr + off, &mut y),
                );
                assert_eq!(rx, ry, "{:#x}+{off:#x}, {size} bytes", s.vaddr);
                assert_eq!(x, y, "{:#x}+{off:#x}, {size} bytes", s.vaddr);
                compared += rx as usize;
                if size == 8 {
                    assert_eq!(a.read_u64(s.vaddr + off), b.read_u64(s.vaddr + off));
                }
            }
        }
        assert!(compared > 100, "{compared}");
        // Every segment was read densely above: later reads come from the mapping.
        let reads = file.file.as_ref().unwrap();
        let dense = reads
            .misses
            .iter()
            .filter(|m| m.load(std::sync::atomic::Ordering::Relaxed) >= FileReads::DENSE);
        assert!(dense.count() > 0);
        let _ = std::fs::remove_file(&path);
    }

    /// A core file cut shorter while it is open: a read from the file of bytes it no longer
    /// has is a failed read (through the mapping it would raise SIGBUS).
    #[test]
    fn a_core_file_cut_while_open_reads_as_missing() {
        let (path, _) = committed_core("core-x86_64-chain", "cut");
        let core = Core::open(&path).unwrap();
        let s = core
            .segments
            .iter()
            .find(|s| s.file_hi - s.file_lo >= 8192)
            .expect("a segment of two pages or more");
        let (vaddr, lo, len) = (s.vaddr, s.file_lo as u64, (s.file_hi - s.file_lo) as u64);
        let mut m = core.memory();
        let before = m.read_u64(vaddr + 8);
        assert!(before.is_some());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(lo)
            .unwrap();
        // A block of the segment not read before: gone.
        assert_eq!(m.read_u64(vaddr + len - 8), None);
        // The block read before the cut is still the copy taken then.
        assert_eq!(m.read_u64(vaddr + 8), before);
        let _ = std::fs::remove_file(&path);
    }
}

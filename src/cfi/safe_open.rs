//! One way to open a file that a core (or a user) names.
//!
//! A core's `NT_FILE` note, its auxv (`AT_EXECFN`), the dynamic linker's link map, `--exe`,
//! `--sysroot` and build-id debug files all give paths we then open. A hostile or unlucky core
//! can name anything: a FIFO (an `open` or a `read` that never returns), `/dev/zero` (a read that
//! never ends), `/proc/self/pagemap` (a "regular" file of size 0 that reads gigabytes) or
//! `/proc/kcore`. [`open`] lets through only what can be read as a module:
//!
//! - a regular file: `stat` first (a device or FIFO is never opened), then `open` with
//!   `O_NONBLOCK | O_NOCTTY` (a file swapped for a FIFO after the `stat` does not block) and
//!   `fstat` on the descriptor (what was opened is what gets read);
//! - of size greater than 0 and at most [`Policy::max_size`];
//! - not on a kernel pseudo-filesystem (`fstatfs`: procfs, sysfs, debugfs, tracefs, securityfs;
//!   their sizes lie), whatever path or symlink led there;
//! - not spelled under `/proc` or `/sys` (after collapsing `.`, `..` and repeated `/`), except
//!   under the one `/proc` prefix a caller allows ([`Policy::allow_proc`]: a live process's
//!   `/proc/PID/map_files` or `/proc/PID/root`, which lead to files on real filesystems).
//!
//! A file that fails gives an [`std::io::Error`] whose message says which rule; callers skip the
//! module with a one-line warning.

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// The default size limit for a module file: 4 GiB (the largest shared libraries with debug
/// information are a few hundred MB; the file is mapped, not read, so only touched pages cost
/// memory).
pub const DEFAULT_MAX_SIZE: u64 = 4 << 30;

/// Files at most this large are read into memory when mapping them fails.
const MAX_READ: u64 = 64 << 20;

/// What [`open`] accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Largest accepted file, in bytes.
    pub max_size: u64,
    /// A path prefix under `/proc` that may be opened (say `/proc/1234`, for a live process's
    /// `map_files` and `root`). The file found there must still be a regular file on a real
    /// filesystem.
    pub allow_proc: Option<PathBuf>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_size: DEFAULT_MAX_SIZE,
            allow_proc: None,
        }
    }
}

impl Policy {
    /// The policy for a core file itself: no size limit where it can be mapped (a file that
    /// cannot be, on a filesystem without mmap, is read into memory up to 64 MiB), the other
    /// rules hold.
    pub fn core() -> Self {
        Policy {
            max_size: u64::MAX,
            allow_proc: None,
        }
    }

    /// This policy, also allowing paths under `prefix` (which must start with `/proc/`).
    pub fn allowing_proc(mut self, prefix: impl Into<PathBuf>) -> Self {
        self.allow_proc = Some(prefix.into());
        self
    }
}

/// A file [`open`] accepted.
#[derive(Debug)]
pub struct Opened {
    /// The open file (read-only, non-blocking).
    pub file: File,
    /// Its size in bytes (> 0, within the policy's limit).
    pub len: u64,
    /// Its identity: (device, inode). Two paths naming one file give the same identity.
    pub id: (u64, u64),
}

/// A file's bytes: mapped read-only, or (when mapping fails, for files up to 64 MiB) read.
pub enum Mapped {
    /// A read-only private mapping.
    Map(memmap2::Mmap),
    /// Bytes read into memory.
    Owned(Vec<u8>),
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mapped::Map(m) => m,
            Mapped::Owned(v) => v,
        }
    }
}

impl Mapped {
    /// Maps in the pages of bytes `offset..offset + len` with one system call
    /// (`MADV_POPULATE_READ`), ahead of a scan that reads them all: a page fault per page cost
    /// more (`unwind stack` reads a C library's whole symbol table and code). A hint: a range
    /// outside the file is clipped, and errors (kernels before 5.14) are ignored. Ranges of
    /// 64 KiB or less are left to the page faults: one maps up to 16 cached pages around it
    /// (the kernel's fault-around), as cheap as the system call.
    pub fn populate(&self, offset: usize, len: usize) {
        #[cfg(target_os = "linux")]
        if let Mapped::Map(m) = self {
            let len = len.min(m.len().saturating_sub(offset));
            if len > 64 << 10 {
                let _ = m.advise_range(memmap2::Advice::PopulateRead, offset, len);
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (offset, len);
    }
}

/// An I/O error's text without its `(os error N)` suffix: "Permission denied".
pub fn io_why(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

fn refuse(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

/// `path` made absolute (against the current directory) with `.`, `..` and repeated `/`
/// collapsed, without touching the filesystem.
pub fn normalise(path: &Path) -> PathBuf {
    let abs;
    let path = if path.is_absolute() {
        path
    } else {
        abs = std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path);
        &abs
    };
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Is `path` (normalised) under `/proc` or `/sys` and not under the allowed prefix?
fn forbidden_spelling(path: &Path, policy: &Policy) -> bool {
    let p = normalise(path);
    let under = |root: &str| p.starts_with(root);
    if !(under("/proc") || under("/sys")) {
        return false;
    }
    match &policy.allow_proc {
        Some(prefix) => {
            let prefix = normalise(prefix);
            !(prefix.starts_with("/proc") && prefix != Path::new("/proc") && p.starts_with(&prefix))
        }
        None => true,
    }
}

/// Filesystem magic numbers of kernel pseudo-filesystems (`include/uapi/linux/magic.h`).
const PSEUDO_FS: [(i64, &str); 5] = [
    (0x9fa0, "procfs"),          // PROC_SUPER_MAGIC
    (0x6265_6572, "sysfs"),      // SYSFS_MAGIC
    (0x6462_6720, "debugfs"),    // DEBUGFS_MAGIC
    (0x7472_6163, "tracefs"),    // TRACEFS_MAGIC
    (0x7363_6673, "securityfs"), // SECURITYFS_MAGIC
];

/// The pseudo-filesystem `file` lives on, if any.
fn pseudo_fs(file: &File) -> Option<&'static str> {
    use std::os::fd::AsRawFd;
    // SAFETY: `statfs` is plain data, valid when zeroed; `fstatfs` writes at most one `statfs`
    // into it and the descriptor is open for the duration of the call (borrowed from `file`).
    let f_type = unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        if libc::fstatfs(file.as_raw_fd(), &mut s) != 0 {
            return None;
        }
        s.f_type
    };
    // `f_type` is a `long` (`__fsword_t`) on 64-bit Linux; the magic numbers fit in 32 bits.
    #[allow(clippy::unnecessary_cast)]
    let t = f_type as i64;
    PSEUDO_FS.iter().find(|(m, _)| *m == t).map(|&(_, n)| n)
}

/// Opens `path` if it is a file we may read as a module (see the module documentation).
pub fn open(path: &Path, policy: &Policy) -> io::Result<Opened> {
    if forbidden_spelling(path, policy) {
        return Err(refuse("under /proc or /sys: not read".into()));
    }
    // stat first: a device or a FIFO is never opened.
    if !std::fs::metadata(path)?.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    // fstat: what we opened, not what the path named a moment ago.
    let md = file.metadata()?;
    if !md.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if let Some(fs) = pseudo_fs(&file) {
        return Err(refuse(format!("a file on {fs}: not read")));
    }
    let len = md.len();
    if len == 0 {
        return Err(refuse("empty file".into()));
    }
    if len > policy.max_size {
        return Err(refuse(format!(
            "{len} bytes, over the {}-byte limit",
            policy.max_size
        )));
    }
    Ok(Opened {
        file,
        len,
        id: (md.dev(), md.ino()),
    })
}

impl Opened {
    /// The file's bytes: mapped, or read when mapping fails and the file is at most 64 MiB.
    ///
    /// # Safety
    /// The file must not be truncated or written, by this process or another, while the
    /// returned bytes live: they are a private mapping of it, whose contents would change
    /// under the `&[u8]` it derefs to, and a read past a new end raises SIGBUS. (This crate's
    /// own readers of modules, cores and debug files make that assumption: see README's
    /// "Known limits".)
    pub unsafe fn map(self) -> io::Result<Mapped> {
        // SAFETY: a read-only private mapping of a regular file, which the caller keeps from
        // being truncated or written while it lives.
        match unsafe { memmap2::Mmap::map(&self.file) } {
            Ok(m) if m.len() as u64 == self.len => Ok(Mapped::Map(m)),
            _ if self.len <= MAX_READ => {
                use std::io::Read;
                // Where mapping failed for want of address space (`ulimit -v`), allocating
                // may fail too: an error, not an abort (found by outside use in the
                // twenty-sixth round).
                let mut v = Vec::new();
                v.try_reserve_exact(self.len as usize)
                    .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
                (&self.file).take(self.len).read_to_end(&mut v)?;
                Ok(Mapped::Owned(v))
            }
            Ok(_) => Err(refuse("the file changed size while mapped".into())),
            // Found by outside use in the twenty-sixth round: a 1 GiB core on a FUSE
            // filesystem mounted with direct_io read "No such device (os error 19)".
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!(
                    "it cannot be mapped ({}: a filesystem without mmap, such as FUSE with \
                     direct_io, or too little address space under ulimit -v), and at {} bytes it \
                     is over the {MAX_READ}-byte limit of a read into memory; copy it to a local \
                     filesystem or raise ulimit -v",
                    io_why(&e),
                    self.len
                ),
            )),
        }
    }
}

/// [`open`], then [`Opened::map`].
///
/// # Safety
/// As [`Opened::map`]: the file is not truncated or written while the bytes live.
pub unsafe fn map(path: &Path, policy: &Policy) -> io::Result<Mapped> {
    // SAFETY: the caller's contract.
    unsafe { open(path, policy)?.map() }
}

/// [`map`] for this crate's readers of modules, cores and debug files, which assume that the
/// files they analyse are not rewritten in place meanwhile (README's "Known limits": a file
/// truncated under the reader raises SIGBUS, as in eu-stack, gdb and every reader that maps).
pub(crate) fn map_analysed(path: &Path, policy: &Policy) -> io::Result<Mapped> {
    // SAFETY: the assumption above, documented for every public function that reads files.
    unsafe { map(path, policy) }
}

impl Opened {
    /// [`Opened::map`] under [`map_analysed`]'s assumption.
    #[cfg_attr(not(feature = "offline"), allow(dead_code))]
    pub(crate) fn map_analysed(self) -> io::Result<Mapped> {
        // SAFETY: as in `map_analysed`.
        unsafe { self.map() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(path: &str, policy: &Policy) -> String {
        match open(Path::new(path), policy) {
            Ok(_) => "opened".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn normalises_spellings() {
        assert_eq!(
            normalise(Path::new("//proc/./self/../self")),
            Path::new("/proc/self")
        );
        assert_eq!(normalise(Path::new("/usr/../../proc")), Path::new("/proc"));
        assert_eq!(normalise(Path::new("/a//b/")), Path::new("/a/b"));
    }

    #[test]
    fn refuses_what_is_not_a_module() {
        let p = Policy::default();
        assert!(why("/dev/zero", &p).contains("not a regular file"));
        assert!(why("/dev/null", &p).contains("not a regular file"));
        assert!(why("/proc/self/pagemap", &p).contains("/proc"));
        assert!(why("///usr/../proc/self/status", &p).contains("/proc"));
        assert!(why("/sys/kernel/notes", &p).contains("/sys"));
        assert!(why("/nonexistent/x.so", &p).contains("No such file"));
        let exe = std::env::current_exe().unwrap();
        assert_eq!(why(exe.to_str().unwrap(), &p), "opened");
        let small = Policy {
            max_size: 16,
            ..Policy::default()
        };
        assert!(why(exe.to_str().unwrap(), &small).contains("over the 16-byte limit"));
    }

    #[test]
    fn fifo_and_empty_file_do_not_block() {
        let d = std::env::temp_dir().join(format!("unwind-safe-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(why(fifo.to_str().unwrap(), &Policy::default()).contains("not a regular file"));
        let empty = d.join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(why(empty.to_str().unwrap(), &Policy::default()).contains("empty"));
        // A symlink to a /proc file is caught by the filesystem it leads to.
        let link = d.join("link");
        std::os::unix::fs::symlink("/proc/self/cmdline", &link).unwrap();
        let w = why(link.to_str().unwrap(), &Policy::default());
        assert!(w.contains("procfs") || w.contains("empty"), "{w}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_allowed_proc_prefix_opens_files_on_real_filesystems_only() {
        let me = format!("/proc/{}", std::process::id());
        let p = Policy::default().allowing_proc(&me);
        // /proc/PID/root leads to this executable on its real filesystem.
        let exe = std::env::current_exe().unwrap();
        let via_root = format!("{me}/root{}", exe.display());
        assert_eq!(why(&via_root, &p), "opened");
        assert!(why(&via_root, &Policy::default()).contains("/proc"));
        // Another process's prefix, /proc itself and procfs files stay refused.
        assert!(why("/proc/1/root/etc/hostname", &p).contains("/proc"));
        let all = Policy::default().allowing_proc("/proc");
        assert!(why("/proc/self/status", &all).contains("/proc"));
        assert!(why(&format!("{me}/status"), &p).contains("procfs"));
    }
}

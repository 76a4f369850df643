//! Modules and their prepared CFI: the live process's (through `dl_iterate_phdr`) and a core's.
//!
//! # Live
//! [`refresh`] enumerates the loaded objects with `dl_iterate_phdr` and prepares each one's CFI
//! ([`crate::dwarf::PreparedCfi`]): from the file it was loaded from (mapped with memmap2, parsed
//! with object), or, when there is no file (the vDSO), from its `PT_GNU_EH_FRAME` segment in
//! memory. `dl_iterate_phdr` takes the loader's lock and allocates: call [`refresh`] outside
//! signal handlers, at start-up and after `dlopen`/`dlclose`. The result is published through an
//! atomic pointer; [`unwinder`] reads it without a lock, so signal handlers may use it.
//!
//! Old versions are never freed (a signal handler may still be reading one): each
//! [`refresh`] keeps the previous unwinder alive for the rest of the process. Its modules'
//! tables are shared with the next one (a refresh prepares only the modules that are new since
//! the last, and reuses the others' tables), so what a refresh keeps is a few hundred bytes
//! per loaded module plus the tables of modules loaded since. Refresh on module changes, not
//! in a loop.
//!
//! # Offline
//! [`for_modules`] prepares the CFI of a list of `(path, bias)`, such as a core's mapped files.

use crate::arch::ArchKind;
use crate::dwarf::{CfiError, PreparedCfi, Sections, Unwinder};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// A loaded object, as `dl_iterate_phdr` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedModule {
    /// Its path (`/proc/self/exe` for the executable; the vDSO's soname for the vDSO).
    pub path: String,
    /// Load bias (runtime address = link-time address + bias).
    pub bias: u64,
    /// `PT_GNU_EH_FRAME`: link-time address and size of `.eh_frame_hdr`.
    pub eh_frame_hdr: Option<(u64, u64)>,
    /// `PT_LOAD` segments: link-time address and memory size.
    pub loads: Vec<(u64, u64)>,
}

/// Enumerates the loaded objects. Takes the loader's lock: not for signal handlers.
pub fn loaded_modules() -> Vec<LoadedModule> {
    enumerate_once(None, false)
        .0
        .into_iter()
        .map(|(m, _, _)| m)
        .collect()
}

/// A module's `.eh_frame_hdr` and `.eh_frame`, copied out of its mapping (see [`enumerate`]: so
/// that a `dlclose` racing [`refresh`] cannot unmap them under the parser).
struct CopiedCfi {
    /// The GNU build id in the module's memory (its `PT_NOTE`s), where it has one: the file
    /// at its path is used only if it has the same (see [`prepare_with`]).
    build_id: Option<Vec<u8>>,
    hdr: Vec<u8>,
    hdr_vaddr: u64,
    eh: Vec<u8>,
    eh_vaddr: u64,
}

/// Enumerates the loaded objects, reads each one's GNU build id in memory and copies its
/// in-memory CFI sections, unless `known` says that a module of its key (by its build id) is
/// prepared already.
///
/// The copies are made outside the loader's lock, through the kernel ([`copy_checked_from_memory`]):
/// a `fork` child of a process where another thread held that lock cannot take it again
/// (glibc leaves it held: the child's `dlopen` and `dl_iterate_phdr` wait forever), and each
/// refresh held it while it copied every module's `.eh_frame`, milliseconds for a large library
/// (found by outside use in the twenty-seventh round: a program that loads libraries and
/// forks, a few children in a hundred hung in `dlopen`). Copies read while an object was
/// unloaded (the loader's count of removals moved) are made again; after three tries, or
/// where the kernel refuses the reads, they are made under the lock, inside the callback, as
/// before.
fn enumerate(
    known: &mut dyn FnMut(&ModuleKey) -> bool,
) -> Vec<(LoadedModule, ModuleKey, Option<CopiedCfi>)> {
    for _ in 0..3 {
        let (mods, (_, subs)) = enumerate_once(Some(&mut *known), false);
        let mut out = Vec::with_capacity(mods.len());
        let mut refused = false;
        for (m, build_id, copy) in mods {
            let copied = match copy {
                Copy::Known | Copy::None => None,
                Copy::Done(c) => Some(c),
                Copy::Pending => match copy_checked_from_memory(&m) {
                    Ok(c) => Some(c),
                    Err(Some(_)) => None,
                    Err(None) => {
                        refused = true;
                        None
                    }
                },
            };
            out.push((m, build_id, copied));
        }
        if refused {
            break;
        }
        if crate::live::loaded::adds_subs().1 == subs {
            return keyed(out);
        }
    }
    let (mods, _) = enumerate_once(Some(known), true);
    keyed(
        mods.into_iter()
            .map(|(m, id, c)| match c {
                Copy::Done(c) => (m, id, Some(c)),
                _ => (m, id, None),
            })
            .collect(),
    )
}

/// What [`enumerate_once`] did about a module's CFI copy.
enum Copy {
    /// Not asked for.
    None,
    /// Its key is known: no copy needed.
    Known,
    /// To be made outside the loader's lock.
    Pending,
    /// Made under it.
    Done(CopiedCfi),
}

/// Each module's key (see [`ModuleKey::new`]), its copy given the build id read with it.
fn keyed(
    mods: Vec<(LoadedModule, Option<Vec<u8>>, Option<CopiedCfi>)>,
) -> Vec<(LoadedModule, ModuleKey, Option<CopiedCfi>)> {
    mods.into_iter()
        .map(|(m, build_id, mut copied)| {
            if let Some(c) = copied.as_mut() {
                c.build_id = build_id.clone();
            }
            let key = ModuleKey::new(&m, build_id.as_deref(), copied.as_ref());
            (m, key, copied)
        })
        .collect()
}

/// One `dl_iterate_phdr` pass: each module, its build id in memory (with `known`) and what to
/// do about its CFI copy (made in the callback with `copy_inside`); the loader's added and
/// removed counts.
#[allow(clippy::type_complexity)]
fn enumerate_once(
    mut known: Option<&mut dyn FnMut(&ModuleKey) -> bool>,
    copy_inside: bool,
) -> (Vec<(LoadedModule, Option<Vec<u8>>, Copy)>, (u64, u64)) {
    let mut mods = Vec::new();
    let mut counts = (0, 0);
    crate::live::loaded::for_each(|o| {
        counts = o.adds_subs;
        let mut m = LoadedModule {
            path: o.path(),
            bias: o.bias,
            eh_frame_hdr: None,
            loads: Vec::new(),
        };
        for p in o.phdrs {
            match p.p_type {
                libc::PT_LOAD => m.loads.push((p.p_vaddr, p.p_memsz)),
                libc::PT_GNU_EH_FRAME => m.eh_frame_hdr = Some((p.p_vaddr, p.p_memsz)),
                _ => {}
            }
        }
        if m.path.is_empty() && m.eh_frame_hdr.is_none() {
            return;
        }
        let Some(known) = known.as_mut() else {
            mods.push((m, None, Copy::None));
            return;
        };
        // SAFETY: `m` was just built from the loader's own program headers for this object,
        // which stays mapped while this callback runs (the loader's lock keeps `dlclose` out);
        // the notes read lie in its loaded segments.
        let build_id = unsafe { build_id_in_memory(&m, o.phdrs) };
        let copy = if build_id.is_some() && known(&ModuleKey::new(&m, build_id.as_deref(), None)) {
            Copy::Known
        } else if copy_inside {
            // SAFETY: as above.
            match unsafe { copy_from_memory(&m) } {
                Ok(c) => Copy::Done(c),
                Err(_) => Copy::None,
            }
        } else {
            Copy::Pending
        };
        mods.push((m, build_id, copy));
    });
    (mods, counts)
}

/// Prepares a loaded module's CFI: from its file, else from its mapped `.eh_frame_hdr`.
///
/// # Safety
/// When the file cannot be used this reads the module's memory: `m` must describe an object
/// that is loaded now (as [`loaded_modules`] reported it: its `bias`, `loads` and
/// `eh_frame_hdr` exactly as the loader's program headers give them) and that stays loaded
/// (no `dlclose`) until this returns. [`refresh`] needs no such promise: it copies the sections
/// through the kernel, or while the loader's lock is held.
pub unsafe fn prepare_loaded(arch: ArchKind, m: &LoadedModule) -> Result<PreparedCfi, CfiError> {
    prepare_with(arch, m, None, || {
        // SAFETY: forwarded from the caller.
        unsafe { copy_from_memory(m) }
    })
}

/// Prepares `m`'s CFI from its file, unless the file's GNU build id is not `in_memory` (the
/// loaded object's: the file was replaced since it was loaded, a rebuild or an upgrade; its
/// tables walked the old code with the new file's rules: found by outside use in the
/// twenty-sixth round), else from `copy`.
fn prepare_with(
    arch: ArchKind,
    m: &LoadedModule,
    in_memory: Option<&[u8]>,
    copy: impl FnOnce() -> Result<CopiedCfi, CfiError>,
) -> Result<PreparedCfi, CfiError> {
    let path = Path::new(&m.path);
    // This process's own files: the executable is opened as /proc/self/exe.
    let policy = crate::safe_open::Policy::default().allowing_proc("/proc/self");
    let replaced = |data: &[u8]| {
        in_memory.is_some_and(|want| {
            use object::Object;
            object::File::parse(data)
                .ok()
                .and_then(|f| f.build_id().ok().flatten())
                .is_some_and(|have| have != want)
        })
    };
    let from_file = if path.is_absolute() && path.exists() {
        // Mapped once: for the build id, then for the tables.
        match crate::safe_open::map_analysed(path, &policy) {
            Ok(data) if !replaced(&data) => {
                crate::dwarf::parse_elf(arch, &data, m.bias, &path.display().to_string())
            }
            _ => Err(CfiError::Object),
        }
    } else {
        Err(CfiError::Object)
    };
    let from_memory = || copy().and_then(|c| from_copy(arch, m, &c));
    match from_file {
        Ok(t) if !t.is_empty() => Ok(t),
        Ok(t) => from_memory().or(Ok(t)),
        Err(e) => from_memory().map_err(|_| e),
    }
}

/// Copies `.eh_frame_hdr` and `.eh_frame` from where the loader mapped them. `.eh_frame`'s
/// length is found by walking its length fields to the zero terminator (bounded by the
/// segment), so only the section is copied.
///
/// # Safety
/// `m` must describe an object loaded now, with its real bias and `PT_LOAD` segments, that stays
/// loaded until this returns.
unsafe fn copy_from_memory(m: &LoadedModule) -> Result<CopiedCfi, CfiError> {
    let (hdr_vaddr, hdr_size) = eh_frame_hdr_in_load(m)?;
    // SAFETY: [hdr_vaddr, +hdr_size) lies inside one of this module's PT_LOAD segments, which
    // the loader mapped readable at + bias and keeps mapped while the module is loaded (the
    // caller's promise).
    let hdr = unsafe {
        std::slice::from_raw_parts(
            hdr_vaddr.wrapping_add(m.bias) as *const u8,
            hdr_size as usize,
        )
    };
    let eh_vaddr = eh_frame_address(hdr, hdr_vaddr)?;
    let eh_room = room_in_load(m, eh_vaddr).ok_or(CfiError::BadHeader)?;
    // SAFETY: as above: [eh_vaddr, + eh_room) is the rest of a loaded segment. Only the
    // section's own bytes are read (its length fields, then the copy).
    let rest = unsafe {
        std::slice::from_raw_parts(eh_vaddr.wrapping_add(m.bias) as *const u8, eh_room as usize)
    };
    let eh_len = eh_frame_len(rest);
    Ok(CopiedCfi {
        build_id: None,
        hdr: hdr.to_vec(),
        hdr_vaddr,
        eh: rest[..eh_len].to_vec(),
        eh_vaddr,
    })
}

/// The link-time address of the `.eh_frame` an `.eh_frame_hdr` (at `hdr_vaddr`) points to.
fn eh_frame_address(hdr: &[u8], hdr_vaddr: u64) -> Result<u64, CfiError> {
    let bases = gimli::BaseAddresses::default().set_eh_frame_hdr(hdr_vaddr);
    let parsed = gimli::EhFrameHdr::new(hdr, gimli::LittleEndian)
        .parse(&bases, 8)
        .map_err(|_| CfiError::BadHeader)?;
    match parsed.eh_frame_ptr() {
        gimli::Pointer::Direct(a) => Ok(a),
        gimli::Pointer::Indirect(_) => Err(CfiError::BadHeader),
    }
}

/// [`copy_from_memory`] read through the kernel (`process_vm_readv`), which fails instead of
/// faulting where the object was unloaded meanwhile, or where its file was truncated under its
/// mapping (SIGBUS when read in place): usable outside the loader's lock. `Err(None)` where
/// the kernel refuses the reads (a seccomp filter).
fn copy_checked_from_memory(m: &LoadedModule) -> Result<CopiedCfi, Option<CfiError>> {
    let read = |addr: u64, len: u64| -> Result<Vec<u8>, Option<CfiError>> {
        let mut v = Vec::new();
        v.try_reserve_exact(len as usize)
            .map_err(|_| Some(CfiError::NoCfi))?;
        v.resize(len as usize, 0);
        match crate::live::copy_checked(addr, &mut v) {
            Ok(()) => Ok(v),
            Err(libc::EFAULT) => Err(Some(CfiError::NoCfi)),
            Err(_) => Err(None),
        }
    };
    let (hdr_vaddr, hdr_size) = eh_frame_hdr_in_load(m)?;
    let hdr = read(hdr_vaddr.wrapping_add(m.bias), hdr_size)?;
    let eh_vaddr = eh_frame_address(&hdr, hdr_vaddr)?;
    // The rest of the segment that holds `.eh_frame` (at most 1 GiB), then cut to the
    // section.
    let eh_room = room_in_load(m, eh_vaddr)
        .ok_or(CfiError::BadHeader)?
        .min(crate::dwarf::MAX_SPAN);
    let mut eh = read(eh_vaddr.wrapping_add(m.bias), eh_room)?;
    eh.truncate(eh_frame_len(&eh));
    eh.shrink_to_fit();
    Ok(CopiedCfi {
        build_id: None,
        hdr,
        hdr_vaddr,
        eh,
        eh_vaddr,
    })
}

/// `m`'s `.eh_frame_hdr` (link-time address and size), checked to lie inside a loaded
/// segment and to hold at least its 4-byte head.
fn eh_frame_hdr_in_load(m: &LoadedModule) -> Result<(u64, u64), CfiError> {
    let (hdr_vaddr, hdr_size) = m.eh_frame_hdr.ok_or(CfiError::NoCfi)?;
    let room = room_in_load(m, hdr_vaddr).ok_or(CfiError::BadHeader)?;
    if hdr_size > room || hdr_size < 4 {
        return Err(CfiError::BadHeader);
    }
    Ok((hdr_vaddr, hdr_size))
}

/// How far the `PT_LOAD` segment of `m` holding link-time address `addr` reaches past it.
fn room_in_load(m: &LoadedModule, addr: u64) -> Option<u64> {
    m.loads
        .iter()
        .find(|&&(a, sz)| addr >= a && addr - a < sz)
        .map(|&(a, sz)| a + sz - addr)
}

/// The GNU build id in a loaded object's `PT_NOTE` segments (`NT_GNU_BUILD_ID`), read in place
/// with `object`'s note reader.
///
/// # Safety
/// As [`copy_from_memory`]: `m` and `phdrs` describe an object loaded now that stays loaded
/// until this returns.
unsafe fn build_id_in_memory(m: &LoadedModule, phdrs: &[libc::Elf64_Phdr]) -> Option<Vec<u8>> {
    use object::read::elf::NoteIterator;
    type Elf = object::elf::FileHeader64<object::LittleEndian>;
    for p in phdrs.iter().filter(|p| p.p_type == libc::PT_NOTE) {
        // Inside a loaded segment, and small (notes are tens of bytes).
        let inside = room_in_load(m, p.p_vaddr).is_some_and(|room| p.p_memsz <= room);
        if !inside || p.p_memsz > 1 << 12 {
            continue;
        }
        // SAFETY: [p_vaddr, + p_memsz) lies inside one of this object's PT_LOAD segments,
        // mapped readable at + bias while it is loaded (the caller's promise).
        let notes = unsafe {
            std::slice::from_raw_parts(
                p.p_vaddr.wrapping_add(m.bias) as *const u8,
                p.p_memsz as usize,
            )
        };
        let e = object::LittleEndian;
        let Ok(mut it) = NoteIterator::<Elf>::new(e, p.p_align, notes) else {
            continue;
        };
        while let Ok(Some(note)) = it.next() {
            if note.n_type(e) == object::elf::NT_GNU_BUILD_ID && note.name() == b"GNU" {
                return Some(note.desc().to_vec());
            }
        }
    }
    None
}

/// The length of the `.eh_frame` at the start of `data`: entries up to and including the zero
/// terminator, or all of `data` when an entry runs past its end.
fn eh_frame_len(data: &[u8]) -> usize {
    let word = |at: usize, n: usize| -> Option<u64> {
        let b = data.get(at..at.checked_add(n)?)?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(b);
        Some(u64::from_le_bytes(v))
    };
    let mut at = 0usize;
    loop {
        let Some(len) = word(at, 4) else {
            return data.len();
        };
        if len == 0 {
            return at + 4;
        }
        let (len, head) = if len == 0xffff_ffff {
            match word(at + 4, 8) {
                Some(l) => (l, 12u64),
                None => return data.len(),
            }
        } else {
            (len, 4)
        };
        match (at as u64)
            .checked_add(head)
            .and_then(|x| x.checked_add(len))
            .filter(|&x| x <= data.len() as u64)
        {
            Some(next) => at = next as usize,
            None => return data.len(),
        }
    }
}

/// Prepares CFI from copied sections.
fn from_copy(arch: ArchKind, m: &LoadedModule, c: &CopiedCfi) -> Result<PreparedCfi, CfiError> {
    let sections = Sections {
        eh_frame: Some((&c.eh, c.eh_vaddr)),
        eh_frame_hdr: Some((&c.hdr, c.hdr_vaddr)),
        ..Sections::default()
    };
    PreparedCfi::parse(arch, &sections, m.bias, &m.path)
}

static CURRENT: AtomicPtr<Unwinder> = AtomicPtr::new(core::ptr::null_mut());

/// What identifies a loaded module's CFI: where and how it is loaded, and a hash of its GNU
/// build id in memory, or without one, of its in-memory `.eh_frame_hdr` and `.eh_frame` (so
/// another file loaded at the same path and bias is not taken for the old one).
#[derive(Clone, PartialEq, Eq)]
struct ModuleKey {
    path: String,
    bias: u64,
    eh_frame_hdr: Option<(u64, u64)>,
    loads: Vec<(u64, u64)>,
    content: Option<u64>,
}

impl ModuleKey {
    fn new(m: &LoadedModule, build_id: Option<&[u8]>, copied: Option<&CopiedCfi>) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match (build_id, copied) {
            (Some(id), _) => (0u8, id).hash(&mut h),
            (None, Some(c)) => (1u8, c.hdr_vaddr, c.eh_vaddr, &c.hdr, &c.eh).hash(&mut h),
            (None, None) => {}
        }
        let content = (build_id.is_some() || copied.is_some()).then(|| h.finish());
        ModuleKey {
            path: m.path.clone(),
            bias: m.bias,
            eh_frame_hdr: m.eh_frame_hdr,
            loads: m.loads.clone(),
            content,
        }
    }
}

/// Every module table [`refresh`] prepared, by [`ModuleKey`]: a later refresh reuses the
/// tables of modules still loaded (clones of a [`PreparedCfi`] share its arrays), so it costs
/// the memory of newly loaded modules only, not of every module again (about 1 MB a refresh
/// for a small program before). The old unwinders keep every table alive anyway (see the
/// module docs), so keeping them here costs nothing more.
static PREPARED: ForkLock<Vec<(ModuleKey, PreparedCfi)>> = ForkLock::new(Vec::new());
/// Serialises refreshes (never taken by readers), and holds the modules (with the failures)
/// the current unwinder was made of: a refresh that finds the same ones keeps it.
static REFRESH: ForkLock<Vec<ModuleKey>> = ForkLock::new(Vec::new());

/// A lock that a `fork` child finds free. A refresh holds [`REFRESH`] and [`PREPARED`] while it
/// prepares tables (tens of milliseconds to seconds for a large library, on the module
/// watcher's thread, a heap sample's or the program's), and a `fork` meanwhile copied them
/// held, with no thread in the child to release them: a child that then started a profiler or
/// refreshed waited forever (found by outside use in the twenty-seventh round: 70 of 201 children
/// of a profiled program that loads libraries hung). A `std` mutex cannot be released by
/// another thread, so these are a flag, waited on by sleeping (they are never contended on a
/// hot path), which the child handler ([`forget_parent_refresh`]) clears, with the data the
/// parent's thread held replaced (leaked: it may be half-written).
struct ForkLock<T> {
    held: AtomicBool,
    data: core::cell::UnsafeCell<T>,
}

// SAFETY: `data` is only reached through a `ForkGuard`, which one thread holds at a time (the
// `held` flag, taken with acquire and released with release), or by the fork child handler,
// which runs on the child's only thread.
unsafe impl<T: Send> Sync for ForkLock<T> {}

/// [`ForkLock`]'s guard.
struct ForkGuard<'a, T>(&'a ForkLock<T>);

impl<T> ForkLock<T> {
    const fn new(v: T) -> Self {
        ForkLock {
            held: AtomicBool::new(false),
            data: core::cell::UnsafeCell::new(v),
        }
    }

    fn try_lock(&self) -> Option<ForkGuard<'_, T>> {
        self.held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| ForkGuard(self))
    }

    /// Waits for the lock: a refresh holds it for milliseconds to seconds, so the wait sleeps
    /// (0.1 ms first, then up to 5 ms).
    fn lock(&self) -> ForkGuard<'_, T> {
        let mut nap = 100;
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            std::thread::sleep(std::time::Duration::from_micros(nap));
            nap = (nap * 2).min(5_000);
        }
    }

    /// In a `fork` child: frees the lock and puts `fresh` in place of the data, which the
    /// parent's thread that held the lock may have left half-written (it is leaked).
    ///
    /// # Safety
    /// Only in a fork child, before it starts a thread (no other thread can hold a guard).
    unsafe fn reset_in_child(&self, fresh: T) {
        // SAFETY: the caller guarantees the child's only thread runs this, so no guard is
        // alive; `write` does not drop the old value.
        unsafe { core::ptr::write(self.data.get(), fresh) };
        self.held.store(false, Ordering::Release);
    }
}

impl<T> core::ops::Deref for ForkGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock (see `ForkLock`'s `Sync`).
        unsafe { &*self.0.data.get() }
    }
}

impl<T> core::ops::DerefMut for ForkGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this guard holds the lock (see `ForkLock`'s `Sync`).
        unsafe { &mut *self.0.data.get() }
    }
}

impl<T> Drop for ForkGuard<'_, T> {
    fn drop(&mut self) {
        self.0.held.store(false, Ordering::Release);
    }
}

/// Registers [`forget_parent_refresh`] as a `fork` child handler, once (at the first refresh).
fn register_fork_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handler is an `extern "C"` function that lives as long as the process
        // and only stores to this module's statics.
        unsafe { libc::pthread_atfork(None, None, Some(forget_parent_refresh)) };
    });
}

/// After a `fork`, in the child: frees the refresh locks a parent's thread held (see
/// [`ForkLock`]); the tables prepared so far stay reachable through [`unwinder`].
extern "C" fn forget_parent_refresh() {
    // SAFETY: a pthread_atfork child handler runs in the child on its only thread.
    unsafe {
        if REFRESH.held.load(Ordering::Relaxed) {
            REFRESH.reset_in_child(Vec::new());
        }
        if PREPARED.held.load(Ordering::Relaxed) {
            PREPARED.reset_in_child(Vec::new());
        }
    }
}

/// The process's prepared CFI, if [`refresh`] ran. Lock-free and async-signal-safe.
#[inline(always)]
pub fn unwinder() -> Option<&'static Unwinder> {
    let p = CURRENT.load(Ordering::Acquire);
    // SAFETY: non-null pointers stored in CURRENT come from Box::leak in `refresh` and are
    // never freed.
    unsafe { p.as_ref() }
}

/// Enumerates the loaded modules and prepares their CFI, replacing the process-wide
/// [`unwinder`]. Not async-signal-safe; call at start-up and after `dlopen`/`dlclose`.
/// Returns the new unwinder and the modules that could not be prepared.
///
/// Also runs [`crate::init`] (once per process: the built-in switches, signal frames among
/// them), so that a program that prepares the CFI for `capture` in a build without frame
/// pointers crosses signal frames and the other built-in switches too.
pub fn refresh() -> (&'static Unwinder, Vec<(String, CfiError)>) {
    own_work(|| {
        crate::live::builtin::init_switches();
        refresh_locked(REFRESH.lock())
    })
}

/// `f`, whose allocations are this crate's own: with the heap profiler (feature `profilers`),
/// left out of the program's heap profile (a plugin host that refreshes after each `dlopen`
/// saw 96% of its profile in `refresh`: found by outside use in the twenty-third round).
fn own_work<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "profilers")]
    return crate::heap::unsampled(f);
    #[cfg(not(feature = "profilers"))]
    f()
}

/// [`refresh`], unless an unwinder was already prepared (by a refresh that ran or finished
/// meanwhile too): what [`crate::init`] runs in a build without frame pointers, where
/// `capture` needs the CFI.
pub(crate) fn prepare_unless_prepared() {
    if unwinder().is_some() {
        return;
    }
    own_work(|| {
        let guard = REFRESH.lock();
        if unwinder().is_none() {
            refresh_locked(guard);
        }
    });
}

fn refresh_locked(
    mut made_of: ForkGuard<'_, Vec<ModuleKey>>,
) -> (&'static Unwinder, Vec<(String, CfiError)>) {
    register_fork_handler();
    let Some(arch) = ArchKind::native() else {
        let u: &'static Unwinder = Box::leak(Box::new(Unwinder::new()));
        return (u, vec![(String::new(), CfiError::Arch)]);
    };
    let mut u = Unwinder::new();
    // In a build without frame pointers the register is no frame record: no guesses.
    u.set_guesses(!cfg!(unwind_no_frame_pointers));
    let mut failed = Vec::new();
    let mut keys = Vec::new();
    let mut prepared = PREPARED.lock();
    let mut known = |k: &ModuleKey| prepared.iter().any(|(p, _)| p == k);
    for (m, key, copied) in enumerate(&mut known) {
        keys.push(key.clone());
        if let Some((_, t)) = prepared.iter().find(|(k, _)| *k == key) {
            u.add(t.clone());
            continue;
        }
        let in_memory = copied.as_ref().and_then(|c| c.build_id.clone());
        let copy = || copied.ok_or(CfiError::NoCfi);
        match prepare_with(arch, &m, in_memory.as_deref(), copy) {
            Ok(t) => {
                prepared.push((key, t.clone()));
                u.add(t)
            }
            Err(e) => failed.push((m.path.clone(), e)),
        }
    }
    drop(prepared);
    // The same modules as the current unwinder's, all prepared: it stays (each unwinder is
    // kept for good, as a signal handler may be reading it; a program that refreshes in a
    // loop kept one per call).
    if let Some(current) = unwinder().filter(|_| failed.is_empty() && keys == *made_of) {
        return (current, failed);
    }
    *made_of = if failed.is_empty() { keys } else { Vec::new() };
    let u: &'static Unwinder = Box::leak(Box::new(u));
    CURRENT.store(u as *const Unwinder as *mut Unwinder, Ordering::Release);
    (u, failed)
}

/// [`refresh`], unless another one is under way (then `None` at once, without waiting): for
/// callers that must not block, such as an allocator hook.
pub fn try_refresh() -> Option<(&'static Unwinder, Vec<(String, CfiError)>)> {
    own_work(|| {
        let guard = REFRESH.try_lock()?;
        Some(refresh_locked(guard))
    })
}

/// The process-wide unwinder, preparing it on first use (not async-signal-safe the first time).
pub fn unwinder_or_refresh() -> &'static Unwinder {
    match unwinder() {
        Some(u) => u,
        None => refresh().0,
    }
}

/// Prepares the CFI of files at runtime biases (a core's modules), opening each at
/// `sysroot` + its path when a sysroot is given. Returns the unwinder and the failures.
#[cfg(feature = "offline")]
pub fn for_modules(
    arch: ArchKind,
    modules: &[(String, u64)],
    sysroot: Option<&Path>,
) -> (Unwinder, Vec<(String, CfiError)>) {
    let mut u = Unwinder::new();
    let mut failed = Vec::new();
    for (path, bias) in modules {
        let file: std::path::PathBuf = crate::symbols::resolve(sysroot, path);
        match crate::dwarf::parse_file(arch, &file, *bias) {
            Ok(mut t) => {
                t.name = path.clone();
                u.add(t)
            }
            Err(e) => failed.push((path.clone(), e)),
        }
    }
    (u, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another thread holds both refresh locks (as a long refresh does) when the process
    /// forks: the child finds them free; the parent's holder goes on. (The child does not
    /// refresh here: another test's thread may be inside `dl_iterate_phdr` at the fork, whose
    /// lock glibc leaves held in the child.)
    #[test]
    fn a_fork_child_finds_the_refresh_locks_free() {
        register_fork_handler();
        let (held, wait) = std::sync::mpsc::channel();
        let (done, finish) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let a = REFRESH.lock();
            let b = PREPARED.lock();
            held.send(()).unwrap();
            let _ = finish.recv();
            drop(b);
            drop(a);
        });
        wait.recv().unwrap();
        // SAFETY: the child only checks the locks, refreshes and exits with `_exit`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let free = REFRESH.try_lock().is_some() && PREPARED.try_lock().is_some();
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(if free { 0 } else { 1 }) };
        }
        assert!(pid > 0);
        assert!(
            REFRESH.try_lock().is_none(),
            "the parent's holder still holds it"
        );
        done.send(()).unwrap();
        holder.join().unwrap();
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status:#x} (exit 1: a lock the parent's thread held is held)"
        );
    }

    /// The copies made through the kernel, outside the loader's lock, are the copies made in
    /// place under it.
    #[test]
    fn checked_copies_are_the_copies_under_the_lock() {
        let mut all = |_: &ModuleKey| false;
        let (inside, _) = enumerate_once(Some(&mut all), true);
        let mut compared = 0;
        for (m, _, c) in inside {
            let Copy::Done(c) = c else { continue };
            let Ok(d) = copy_checked_from_memory(&m) else {
                panic!("{}: no checked copy", m.path)
            };
            assert_eq!(
                (c.hdr, c.hdr_vaddr, c.eh, c.eh_vaddr),
                (d.hdr, d.hdr_vaddr, d.eh, d.eh_vaddr),
                "{}",
                m.path
            );
            compared += 1;
        }
        assert!(compared >= 2, "the test binary and libc have CFI");
        // An object that is not loaded (a bias into unmapped memory): an error, no fault.
        let ghost = LoadedModule {
            path: "ghost".into(),
            bias: 0x10,
            eh_frame_hdr: Some((0x1000, 0x100)),
            loads: vec![(0, 0x10_0000)],
        };
        assert!(matches!(copy_checked_from_memory(&ghost), Err(Some(_))));
    }

    /// A refresh copies the CFI of modules not prepared before only: a module with a build id
    /// whose key is known is not copied again.
    #[test]
    fn known_modules_are_not_copied_again() {
        let mut all = |_: &ModuleKey| false;
        let fresh = enumerate(&mut all);
        let with_id = fresh
            .iter()
            .filter(|(_, _, c)| c.as_ref().is_some_and(|c| c.build_id.is_some()))
            .count();
        assert!(with_id >= 2, "the test binary and libc have build ids");
        let keys: Vec<ModuleKey> = fresh.iter().map(|(_, k, _)| k.clone()).collect();
        let mut known = |k: &ModuleKey| keys.contains(k);
        // (Another test may load a module meanwhile: only those of the first enumeration.)
        let again: Vec<_> = enumerate(&mut known)
            .into_iter()
            .filter(|(m, _, _)| {
                fresh
                    .iter()
                    .any(|(f, _, _)| (&f.path, f.bias) == (&m.path, m.bias))
            })
            .collect();
        let copied = again.iter().filter(|(_, _, c)| c.is_some()).count();
        // Only modules without a build id are copied again (their key is their content).
        assert!(
            copied <= fresh.len() - with_id,
            "{copied} copied again of {}",
            fresh.len()
        );
        // Same keys either way.
        for (_, k, _) in &again {
            assert!(keys.contains(k));
        }
    }

    #[test]
    fn enumerates_this_process() {
        let ms = loaded_modules();
        assert_eq!(ms[0].path, "/proc/self/exe");
        assert!(ms.iter().any(|m| m.path.contains("libc.so")));
        let (u, failed) = refresh();
        assert!(
            u.modules().len() >= 2,
            "{:?} failed: {failed:?}",
            u.modules().len()
        );
        // This function's own code is covered.
        let here = enumerates_this_process as *const () as usize as u64;
        assert!(u.rule(here + 1).is_some());
        assert!(unwinder().is_some());
    }

    #[test]
    fn vdso_from_memory() {
        let arch = ArchKind::native().unwrap();
        let Some(v) = loaded_modules()
            .into_iter()
            .find(|m| m.path.contains("vdso") && m.eh_frame_hdr.is_some())
        else {
            return; // no vDSO with CFI on this kernel
        };
        // SAFETY: `v` comes from loaded_modules() and the vDSO is never unloaded.
        let c = unsafe { copy_from_memory(&v) }.unwrap();
        let t = from_copy(arch, &v, &c).unwrap();
        assert!(!t.is_empty());
        // Only the section is copied, up to its zero terminator.
        assert_eq!(eh_frame_len(&c.eh), c.eh.len());
        assert_eq!(&c.eh[c.eh.len() - 4..], &[0, 0, 0, 0]);
    }
}

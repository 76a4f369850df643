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
//! [`refresh`] keeps the previous table alive for the rest of the process. Refresh on module
//! changes, not in a loop.
//!
//! # Offline
//! [`for_modules`] prepares the CFI of a list of `(path, bias)`, such as a core's mapped files.

use crate::arch::ArchKind;
use crate::dwarf::{parse_file, CfiError, PreparedCfi, Sections, Unwinder};
use std::path::Path;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

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
    unsafe extern "C" fn cb(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `&mut Vec` passed below, alive for the whole dl_iterate_phdr
        // call; `info` is valid for this callback, with `dlpi_phnum` headers at `dlpi_phdr`.
        let (out, info) = unsafe { (&mut *(data as *mut Vec<LoadedModule>), &*info) };
        let name = if info.dlpi_name.is_null() {
            String::new()
        } else {
            // SAFETY: a non-null dlpi_name is a NUL-terminated string owned by the loader.
            unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }
                .to_string_lossy()
                .into_owned()
        };
        let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
            &[]
        } else {
            // SAFETY: the loader guarantees dlpi_phnum headers at dlpi_phdr.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
        };
        let mut m = LoadedModule {
            path: if name.is_empty() && out.is_empty() {
                "/proc/self/exe".into()
            } else {
                name
            },
            bias: info.dlpi_addr,
            eh_frame_hdr: None,
            loads: Vec::new(),
        };
        for p in phdrs {
            match p.p_type {
                libc::PT_LOAD => m.loads.push((p.p_vaddr, p.p_memsz)),
                libc::PT_GNU_EH_FRAME => m.eh_frame_hdr = Some((p.p_vaddr, p.p_memsz)),
                _ => {}
            }
        }
        if !m.path.is_empty() || m.eh_frame_hdr.is_some() {
            out.push(m);
        }
        0
    }
    let mut out: Vec<LoadedModule> = Vec::new();
    // SAFETY: the callback only reads what the loader passes it and writes to `out`.
    unsafe { libc::dl_iterate_phdr(Some(cb), (&mut out as *mut Vec<LoadedModule>).cast()) };
    out
}

/// Prepares a loaded module's CFI: from its file, else from its mapped `.eh_frame_hdr`.
pub fn prepare_loaded(arch: ArchKind, m: &LoadedModule) -> Result<PreparedCfi, CfiError> {
    let path = Path::new(&m.path);
    let from_file = if path.is_absolute() && path.exists() {
        parse_file(arch, path, m.bias)
    } else {
        Err(CfiError::Object)
    };
    match from_file {
        Ok(t) if !t.is_empty() => Ok(t),
        Ok(t) => from_memory(arch, m).or(Ok(t)),
        Err(e) => from_memory(arch, m).map_err(|_| e),
    }
}

/// Reads `.eh_frame_hdr` and `.eh_frame` where the loader mapped them.
fn from_memory(arch: ArchKind, m: &LoadedModule) -> Result<PreparedCfi, CfiError> {
    let (hdr_vaddr, hdr_size) = m.eh_frame_hdr.ok_or(CfiError::NoCfi)?;
    let in_load = |addr: u64| {
        m.loads
            .iter()
            .find(|&&(a, sz)| addr >= a && addr - a < sz)
            .map(|&(a, sz)| a + sz - addr)
    };
    // The header must lie inside a loaded segment.
    let room = in_load(hdr_vaddr).ok_or(CfiError::BadHeader)?;
    if hdr_size > room || hdr_size < 4 {
        return Err(CfiError::BadHeader);
    }
    // SAFETY: [hdr_vaddr, +hdr_size) lies inside one of this module's PT_LOAD segments,
    // which the loader mapped readable at + bias and keeps mapped while the module is loaded
    // (the caller prepares loaded modules only, outside dlclose).
    let hdr = unsafe {
        std::slice::from_raw_parts(
            hdr_vaddr.wrapping_add(m.bias) as *const u8,
            hdr_size as usize,
        )
    };
    let bases = gimli::BaseAddresses::default().set_eh_frame_hdr(hdr_vaddr);
    let parsed = gimli::EhFrameHdr::new(hdr, gimli::LittleEndian)
        .parse(&bases, 8)
        .map_err(|_| CfiError::BadHeader)?;
    let eh_vaddr = match parsed.eh_frame_ptr() {
        gimli::Pointer::Direct(a) => a,
        gimli::Pointer::Indirect(_) => return Err(CfiError::BadHeader),
    };
    let eh_len = in_load(eh_vaddr).ok_or(CfiError::BadHeader)?;
    // SAFETY: as above: [eh_vaddr, + eh_len) is the rest of a loaded segment. gimli stops at
    // .eh_frame's zero terminator; data past it is never interpreted.
    let eh = unsafe {
        std::slice::from_raw_parts(eh_vaddr.wrapping_add(m.bias) as *const u8, eh_len as usize)
    };
    let sections = Sections {
        eh_frame: Some((eh, eh_vaddr)),
        eh_frame_hdr: Some((hdr, hdr_vaddr)),
        ..Sections::default()
    };
    PreparedCfi::parse(arch, &sections, m.bias, &m.path)
}

static CURRENT: AtomicPtr<Unwinder> = AtomicPtr::new(core::ptr::null_mut());
/// Serialises refreshes (never taken by readers).
static REFRESH: Mutex<()> = Mutex::new(());

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
pub fn refresh() -> (&'static Unwinder, Vec<(String, CfiError)>) {
    let _guard = REFRESH.lock().unwrap_or_else(|e| e.into_inner());
    let Some(arch) = ArchKind::native() else {
        let u: &'static Unwinder = Box::leak(Box::new(Unwinder::new()));
        return (u, vec![(String::new(), CfiError::Arch)]);
    };
    let mut u = Unwinder::new();
    let mut failed = Vec::new();
    for m in loaded_modules() {
        match prepare_loaded(arch, &m) {
            Ok(t) => u.add(t),
            Err(e) => failed.push((m.path.clone(), e)),
        }
    }
    let u: &'static Unwinder = Box::leak(Box::new(u));
    CURRENT.store(u as *const Unwinder as *mut Unwinder, Ordering::Release);
    (u, failed)
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
        match parse_file(arch, &file, *bias) {
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
        let t = from_memory(arch, &v).unwrap();
        assert!(!t.is_empty());
    }
}

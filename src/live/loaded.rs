//! The loaded objects of this process, through `dl_iterate_phdr`: the one enumeration the
//! built-in switches ([`crate::builtin`]) and the modules' CFI ([`crate::modules`], feature
//! `dwarf`) share.
//!
//! `dl_iterate_phdr` takes the loader's lock and may allocate: never call this from a signal
//! handler. While the callback runs, the loader keeps every reported object mapped (a
//! `dlclose` waits for the lock), so memory of an object may be read inside `f` and nowhere
//! else.

use std::ffi::CStr;

/// One loaded object, valid for the duration of the callback.
pub struct LoadedObject<'a> {
    /// Its path as the loader has it: "" for the executable and for objects without a file
    /// (the vDSO reports its soname).
    pub name: &'a CStr,
    /// Is this the first object reported (the executable)?
    pub is_main: bool,
    /// Load bias: runtime address = link-time address + bias.
    pub bias: u64,
    /// Its program headers.
    pub phdrs: &'a [libc::Elf64_Phdr],
    /// The loader's count of objects ever added and removed (`dlpi_adds`, `dlpi_subs`; the
    /// same in every entry of one enumeration).
    pub adds_subs: (u64, u64),
}

impl LoadedObject<'_> {
    /// The path to open the object's file at: `/proc/self/exe` for the executable, else its
    /// name ("" when it has none).
    pub fn path(&self) -> String {
        if self.is_main && self.name.is_empty() {
            "/proc/self/exe".into()
        } else {
            self.name.to_string_lossy().into_owned()
        }
    }
}

/// Calls `f` for every loaded object, the executable first. Takes the loader's lock: not for
/// signal handlers.
pub fn for_each(mut f: impl FnMut(&LoadedObject<'_>)) {
    struct State<'f> {
        f: &'f mut dyn FnMut(&LoadedObject<'_>),
        first: bool,
    }
    unsafe extern "C" fn cb(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `&mut State` passed below, alive for the whole dl_iterate_phdr
        // call; the loader passes a valid `info` for the duration of this callback.
        let (st, info) = unsafe { (&mut *data.cast::<State<'_>>(), &*info) };
        let name = if info.dlpi_name.is_null() {
            c""
        } else {
            // SAFETY: a non-null dlpi_name is a NUL-terminated string owned by the loader,
            // valid during the callback.
            unsafe { CStr::from_ptr(info.dlpi_name) }
        };
        let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
            &[]
        } else {
            // SAFETY: the loader guarantees dlpi_phnum headers at dlpi_phdr.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
        };
        let o = LoadedObject {
            name,
            is_main: st.first,
            bias: info.dlpi_addr,
            phdrs,
            adds_subs: (info.dlpi_adds, info.dlpi_subs),
        };
        st.first = false;
        (st.f)(&o);
        0
    }
    let mut st = State {
        f: &mut f,
        first: true,
    };
    // SAFETY: the callback matches dl_iterate_phdr's contract, reads only what the loader
    // passes it and calls `f` through `st`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(cb), (&mut st as *mut State<'_>).cast()) };
}

/// A number that changes whenever a `dlopen` or `dlclose` changed the set of loaded objects
/// (the loader's added and removed counts, packed). Takes the loader's lock: not for signal
/// handlers.
pub fn generation() -> u64 {
    let (adds, subs) = adds_subs();
    (adds << 32) | (subs & 0xffff_ffff)
}

/// The loader's counts of objects ever added and removed (`dlpi_adds`, `dlpi_subs`). Takes the
/// loader's lock, for its first object only: not for signal handlers.
pub fn adds_subs() -> (u64, u64) {
    let mut g = None;
    for_each(|o| {
        if g.is_none() {
            g = Some(o.adds_subs);
        }
    });
    g.unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_comes_first_with_its_code() {
        let mut seen = Vec::new();
        for_each(|o| {
            let code = o
                .phdrs
                .iter()
                .any(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_X != 0);
            seen.push((o.path(), o.is_main, code));
        });
        assert_eq!(seen[0], ("/proc/self/exe".to_string(), true, true));
        assert!(seen[1..].iter().all(|(_, main, _)| !main));
        assert!(seen.iter().any(|(p, _, _)| p.contains("libc.")), "{seen:?}");
    }
}

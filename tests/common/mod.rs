//! Test helpers: symbolise pcs of this test process through its own symbol table.
#![allow(dead_code)]

use object::{Object, ObjectSymbol, SymbolKind};
use std::sync::OnceLock;

/// Function symbols of the running executable, sorted by runtime address.
pub struct SelfSymbols {
    syms: Vec<(u64, u64, String)>,
}

fn load_bias() -> u64 {
    unsafe extern "C" fn cb(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info; data is the &mut u64 below.
        unsafe {
            *(data as *mut u64) = (*info).dlpi_addr;
        }
        1 // the first object is the main program
    }
    let mut bias = 0u64;
    // SAFETY: the callback matches the expected signature and only writes `bias`.
    unsafe { libc::dl_iterate_phdr(Some(cb), &mut bias as *mut u64 as *mut libc::c_void) };
    bias
}

impl SelfSymbols {
    /// Loads /proc/self/exe's symbol table once.
    pub fn get() -> &'static SelfSymbols {
        static S: OnceLock<SelfSymbols> = OnceLock::new();
        S.get_or_init(|| {
            let data = std::fs::read("/proc/self/exe").expect("read /proc/self/exe");
            let file = object::File::parse(&*data).expect("parse /proc/self/exe");
            let bias = load_bias();
            let mut syms: Vec<(u64, u64, String)> = file
                .symbols()
                .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
                .filter_map(|s| {
                    let name = s.name().ok()?;
                    Some((
                        s.address() + bias,
                        s.size(),
                        rustc_demangle::demangle(name).to_string(),
                    ))
                })
                .collect();
            syms.sort_by_key(|s| s.0);
            SelfSymbols { syms }
        })
    }

    /// The function containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let i = self.syms.partition_point(|s| s.0 <= addr);
        let (start, size, name) = self.syms.get(i.checked_sub(1)?)?;
        if size == &0 || addr < start + size {
            Some(name)
        } else {
            None
        }
    }

    /// Names for frames (`?` when unknown), using each frame's lookup pc.
    pub fn names(&self, frames: &[unwind::Frame]) -> Vec<String> {
        frames
            .iter()
            .map(|f| {
                self.lookup(f.lookup_pc())
                    .map(short)
                    .unwrap_or_else(|| "?".into())
            })
            .collect()
    }
}

/// `crate::module::function::h1234` -> `function` (the last path segment, without hash).
pub fn short(name: &str) -> String {
    let name = name.rsplit_once("::h").map_or(name, |(a, h)| {
        if h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()) {
            a
        } else {
            name
        }
    });
    name.rsplit("::").next().unwrap_or(name).to_string()
}

//! Shared helpers for integration tests on real stacks: symbolising captured pcs through the test
//! binary's own symbol table, and printing traces.
//!
//! The symbol table is read from `/proc/self/exe` with the `object` crate; the load bias is the
//! main program's `dlpi_addr` from `dl_iterate_phdr`. Names are the raw (mangled) symbol names:
//! Rust's legacy mangling keeps each path segment readable (`_ZN11transitions7sys_one17h..E`), so
//! tests match by substring on distinctive function names.
#![allow(dead_code)]

pub mod skip;
pub mod tools;

use object::{Object, ObjectSymbol, SymbolKind};
use std::sync::OnceLock;
use unwind::{Frame, Trace};

struct Sym {
    addr: u64,
    size: u64,
    name: String,
}

struct Symbols {
    bias: u64,
    syms: Vec<Sym>,
}

fn main_bias() -> u64 {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `&mut u64` below; `info` is valid during the callback.
        unsafe { *data.cast::<u64>() = (*info).dlpi_addr };
        1 // the first object is the main program: stop
    }
    let mut bias = 0u64;
    // SAFETY: the callback only writes the u64 passed as data.
    unsafe { libc::dl_iterate_phdr(Some(first), (&mut bias as *mut u64).cast()) };
    bias
}

fn symbols() -> &'static Symbols {
    static S: OnceLock<Symbols> = OnceLock::new();
    S.get_or_init(|| {
        let data = std::fs::read("/proc/self/exe").expect("read /proc/self/exe");
        let file = object::File::parse(&*data).expect("parse /proc/self/exe");
        let mut syms: Vec<Sym> = file
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
            .filter_map(|s| {
                Some(Sym {
                    addr: s.address(),
                    size: s.size(),
                    name: s.name().ok()?.to_string(),
                })
            })
            .collect();
        // Sized symbols first at equal addresses, so a label never shadows its function.
        syms.sort_by_key(|s| (s.addr, s.size == 0));
        Symbols {
            bias: main_bias(),
            syms,
        }
    })
}

/// The name of the function in the test binary containing `pc` (a runtime address).
pub fn name_of(pc: u64) -> Option<&'static str> {
    let s = symbols();
    let a = pc.checked_sub(s.bias)?;
    let at = s.syms.partition_point(|x| x.addr <= a);
    s.syms[..at]
        .iter()
        .rev()
        .take(8)
        .find(|x| x.size > 0 && a < x.addr + x.size)
        .map(|x| x.name.as_str())
}

/// How far `pc` (a runtime address) is into the test binary's function containing it.
pub fn offset_in_function(pc: u64) -> Option<u64> {
    let s = symbols();
    let a = pc.checked_sub(s.bias)?;
    let at = s.syms.partition_point(|x| x.addr <= a);
    s.syms[..at]
        .iter()
        .rev()
        .take(8)
        .find(|x| x.size > 0 && a < x.addr + x.size)
        .map(|x| a - x.addr)
}

/// The name of a frame's function (looked up at `pc - 1` for return addresses).
pub fn frame_name(f: &Frame) -> &'static str {
    name_of(f.lookup_pc()).unwrap_or("?")
}

/// One line per frame, for failure messages.
pub fn describe(frames: &[Frame]) -> String {
    let mut s = String::new();
    for (i, f) in frames.iter().enumerate() {
        s += &format!(
            "#{i:<2} {:#014x} stack {} via {:<10} t{} {}{}\n",
            f.pc,
            f.stack,
            f.via,
            f.transition,
            if f.is_exact() { "exact " } else { "" },
            frame_name(f)
        );
    }
    s
}

/// A captured trace, owned.
#[derive(Clone, Debug)]
pub struct Captured {
    pub frames: Vec<Frame>,
    pub trace: Trace,
}

impl Captured {
    pub fn new(buf: &[Frame], trace: Trace) -> Self {
        Captured {
            frames: buf[..trace.len].to_vec(),
            trace,
        }
    }

    /// Index of the first frame whose function name contains `needle`.
    pub fn find(&self, needle: &str) -> Option<usize> {
        self.frames
            .iter()
            .position(|f| frame_name(f).contains(needle))
    }

    /// Index of the first frame of the function `name` itself (not its closures), matched in
    /// its legacy-mangled form `<len><name>17h<hash>`.
    pub fn find_fn(&self, name: &str) -> Option<usize> {
        let mangled = format!("{}{}17h", name.len(), name);
        self.find(&mangled)
    }

    /// Like [`Captured::find_fn`], panicking with the whole trace when absent.
    pub fn expect_fn(&self, name: &str) -> usize {
        self.find_fn(name)
            .unwrap_or_else(|| panic!("no frame of fn {name} in\n{self}"))
    }

    /// Like [`Captured::find`], panicking with the whole trace when absent.
    pub fn expect(&self, needle: &str) -> usize {
        self.find(needle)
            .unwrap_or_else(|| panic!("no frame named *{needle}* in\n{self}"))
    }

    /// Asserts the named frames appear in this order (leaf first) and returns their indexes.
    pub fn expect_in_order(&self, needles: &[&str]) -> Vec<usize> {
        let mut at = Vec::new();
        let mut from = 0;
        for n in needles {
            let i = self.frames[from..]
                .iter()
                .position(|f| frame_name(f).contains(n))
                .map(|i| i + from)
                .unwrap_or_else(|| panic!("no frame named *{n}* at or after #{from} in\n{self}"));
            at.push(i);
            from = i + 1;
        }
        at
    }
}

impl std::fmt::Display for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "stop: {}", self.trace.stop)?;
        f.write_str(&describe(&self.frames))
    }
}

/// Captures here (starting at the caller of `capture_with`), with options.
#[inline(always)]
pub fn capture(opts: unwind::Options) -> Captured {
    let mut buf = [Frame::EMPTY; 128];
    let t = unwind::capture_with(&mut buf, opts);
    Captured::new(&buf, t)
}

/// Default options: with the table.
pub fn full() -> unwind::Options {
    unwind::Options::default()
}

/// Naive options: without the table.
pub fn naive() -> unwind::Options {
    unwind::Options {
        naive: true,
        ..Default::default()
    }
}

/// Short names for frames: the demangled function name's last path segment, without the hash
/// (`?` when unknown).
pub fn short_names(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match name_of(f.lookup_pc()) {
            Some(n) => short(&rustc_demangle::demangle(n).to_string()),
            None => "?".into(),
        })
        .collect()
}

/// `crate::module::function::h1234` -> `function`.
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

/// Every function symbol of the test binary: (demangled name, runtime start, runtime end).
pub fn all_functions() -> Vec<(String, u64, u64)> {
    let s = symbols();
    s.syms
        .iter()
        .filter(|x| x.size > 0)
        .map(|x| {
            (
                rustc_demangle::demangle(&x.name).to_string(),
                x.addr + s.bias,
                x.addr + s.bias + x.size,
            )
        })
        .collect()
}

/// A SIGSEGV handler.
pub type SegvHandler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Installs `handler` for SIGSEGV (`SA_SIGINFO | SA_ONSTACK`) on a fresh 1 MiB alternate stack
/// of this thread (more than std's: a debug build's walk wants it). For child processes that
/// fault on purpose: the mapping is never freed.
pub fn segv_on_alt_stack(handler: SegvHandler) {
    // SAFETY: a fresh anonymous mapping for the alternate stack, and a plain handler
    // registration; both affect only this process, which the caller made for the purpose.
    unsafe {
        let len = 1 << 20;
        let alt = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(alt, libc::MAP_FAILED);
        let ss = libc::stack_t {
            ss_sp: alt,
            ss_flags: 0,
            ss_size: len,
        };
        assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        assert_eq!(libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()), 0);
    }
}

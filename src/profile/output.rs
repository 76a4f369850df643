//! Profiles and their output formats: pprof protobuf (gzip), folded stacks and flame-graph SVG.
//!
//! A [`Profile`] is what any sampler produces once a [policy](crate::policy) has cut its stacks:
//! value types (`samples/count`, `cpu/nanoseconds`, `alloc_space/bytes`, ...), and samples, each a
//! list of addresses (leaf first) with one value per value type. The CPU profiler builds one with
//! [`crate::cpu::CpuProfile::to_profile`]; any other sampler (a heap profiler) fills the same
//! struct. Writers take a [`Symbolizer`] for function names.
//!
//! Addresses are as captured: return addresses, except a leaf that is an exact pc (the
//! interrupted instruction of a CPU sample, [`Sample::exact_leaf`]). Names are looked up at
//! `pc - 1` for return addresses so that a call at the very end of a function is attributed to
//! it, not to the next function.
//!
//! # pprof
//! [`Profile::to_pprof`] writes `profile.proto` (github.com/google/pprof, `proto/profile.proto`)
//! with a small hand-written protobuf encoder: one location per distinct address, with one `Line`
//! per function of its inline chain and file:line from the modules' DWARF
//! ([`crate::pprof_lines`]); one function per distinct name and source file; one mapping per
//! loaded module, with its GNU build id, all marked as symbolised so `go tool pprof` needs no
//! binaries (`-lines`, `-list`, `-traces` show the inlined frames and lines).

use crate::symbols::Symbolizer;
use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One sample: a stack and its values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Addresses, leaf first (return addresses, see [`Sample::exact_leaf`]).
    pub pcs: Vec<u64>,
    /// Is `pcs[0]` an exact pc (looked up as is) rather than a return address?
    pub exact_leaf: bool,
    /// Indices of the other exact pcs, past the leaf (a CPU sample taken in a signal handler:
    /// the sigreturn trampoline, entered at its first instruction, and the interrupted pc).
    /// Looked up at `pc - 1`, the trampoline was named after whatever came before it, or not
    /// at all (found by outside use in the twenty-fifth round). Usually empty.
    pub exact_frames: Vec<u32>,
    /// One value per [`Profile::sample_types`] entry.
    pub values: Vec<i64>,
    /// String labels (key, value).
    pub labels: Vec<(String, String)>,
    /// Was the stack cut at a maximum depth (the capture buffer's or the policy's), or did its
    /// walk stop short of the root (the profilers' CFI walks, [`crate::Frame::CUT_SHORT`])?
    /// Every output then shows [`TRUNCATED_FRAME`] as its outermost frame, where its root
    /// would be.
    pub truncated: bool,
}

impl Sample {
    /// Is `pcs[i]` an exact pc (not a return address)?
    #[inline]
    pub fn is_exact(&self, i: usize) -> bool {
        if i == 0 {
            self.exact_leaf
        } else {
            !self.exact_frames.is_empty() && self.exact_frames.contains(&(i as u32))
        }
    }
}

/// The frame every output puts at the root end of a [`Sample::truncated`] stack, in place of
/// the frames cut off (a pprof location without an address; a folded stack's first name).
pub const TRUNCATED_FRAME: &str = "[truncated]";

/// What makes two samples the same: stack, leaf exactness, labels, truncation.
type SampleKey = (Vec<u64>, bool, Vec<u32>, Vec<(String, String)>, bool);

/// A profile: what was measured and the samples.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// (type, unit) of each sample value, e.g. `("cpu", "nanoseconds")`.
    pub sample_types: Vec<(String, String)>,
    /// (type, unit) of the sampling period.
    pub period_type: (String, String),
    /// The sampling period, in `period_type` units.
    pub period: i64,
    /// When the profile started (ns since the Unix epoch).
    pub time_nanos: i64,
    /// How long it ran (ns).
    pub duration_nanos: i64,
    /// The value type `go tool pprof` shows by default (e.g. `"cpu"`), if not the last one.
    pub default_sample_type: Option<String>,
    /// Samples.
    pub samples: Vec<Sample>,
    /// Functions inlined into each sample's leaf frame that the outputs with inlined frames
    /// leave out, from the innermost on, while this says they are runtime code; the function
    /// they were inlined into always stays. The heap profile sets it: the frames the heap
    /// policy cuts at the leaf end are physical frames, and the allocation plumbing inlined
    /// into the allocating function (`Vec::with_capacity`, `RawVec`, `__rust_alloc`, the
    /// wrapper's `alloc`) would otherwise head every stack in `go tool pprof -top`. The rule is
    /// given each inlined function's name and source file ("" when unknown).
    pub hidden_leaf_inlines: Option<fn(&str, &str) -> bool>,
}

impl Profile {
    /// An empty profile with these value types and period; `time_nanos` is now.
    pub fn new(
        sample_types: Vec<(String, String)>,
        period_type: (String, String),
        period: i64,
    ) -> Profile {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        Profile {
            sample_types,
            period_type,
            period,
            time_nanos: now,
            duration_nanos: 0,
            default_sample_type: None,
            samples: Vec::new(),
            hidden_leaf_inlines: None,
        }
    }

    /// Merges samples with the same stack and labels (summing their values).
    pub fn merge_identical(&mut self) {
        crate::heap::unsampled(|| self.merge_identical_unsampled())
    }

    fn merge_identical_unsampled(&mut self) {
        let mut at: HashMap<SampleKey, usize> = HashMap::new();
        let mut out: Vec<Sample> = Vec::with_capacity(self.samples.len());
        for s in self.samples.drain(..) {
            let key = (
                s.pcs.clone(),
                s.exact_leaf,
                s.exact_frames.clone(),
                s.labels.clone(),
                s.truncated,
            );
            match at.get(&key) {
                Some(&i) => {
                    for (a, b) in out[i].values.iter_mut().zip(&s.values) {
                        *a += b;
                    }
                }
                None => {
                    at.insert(key, out.len());
                    out.push(s);
                }
            }
        }
        self.samples = out;
    }

    /// What a reader should know of the names: one line per stripped module ([`Module::is_stripped`])
    /// that holds frames of this profile no symbol names (they show as addresses). A stripped
    /// program's profile was all addresses, without a word (found by outside use in the
    /// twenty-third round: `strip = true` in a release profile).
    ///
    /// [`Module::is_stripped`]: crate::symbols::Module::is_stripped
    pub fn name_warnings(&self, sym: &Symbolizer) -> Vec<String> {
        crate::heap::unsampled(|| {
            let mut unnamed: Vec<(&str, usize)> = Vec::new();
            for s in &self.samples {
                for (i, &pc) in s.pcs.iter().enumerate() {
                    let pc = crate::frame::FrameAddress::new(pc, s.is_exact(i)).lookup_address();
                    let Some(m) = sym.module_of(pc).filter(|m| m.is_stripped()) else {
                        continue;
                    };
                    if m.lookup(pc).is_some() {
                        continue;
                    }
                    match unnamed.iter_mut().find(|(p, _)| *p == m.path) {
                        Some((_, n)) => *n += 1,
                        None => unnamed.push((&m.path, 1)),
                    }
                }
            }
            unnamed
                .into_iter()
                .map(|(path, n)| {
                    format!(
                        "{} is stripped (no symbol table, no debug file found): {n} frames of \
                         this profile in it are unnamed addresses; build it without stripping \
                         (Cargo: `strip = false`, the default) or install its debug file \
                         (/usr/lib/debug/.build-id/)",
                        path.escape_debug()
                    )
                })
                .collect()
        })
    }

    /// [`Profile::name_warnings`] on standard error, each module once per process.
    fn warn_unnamed(&self, sym: &Symbolizer) {
        static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        for w in self.name_warnings(sym) {
            let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
            if !said.contains(&w) {
                eprintln!("unwind: warning: {w}");
                said.push(w);
            }
        }
    }

    /// Index of the value type named `name`.
    pub fn value_index(&self, name: &str) -> Option<usize> {
        self.sample_types.iter().position(|(t, _)| t == name)
    }

    /// Sum of value `index` over all samples.
    pub fn total(&self, index: usize) -> i64 {
        self.samples
            .iter()
            .map(|s| s.values.get(index).copied().unwrap_or(0))
            .sum()
    }

    /// The function names of a sample, leaf first (`0x…` where no symbol is known), and
    /// [`TRUNCATED_FRAME`] last when the stack was cut.
    pub fn names(&self, s: &Sample, sym: &Symbolizer) -> Vec<String> {
        s.pcs
            .iter()
            .enumerate()
            .map(|(i, &pc)| function_name(sym, pc, s.is_exact(i)))
            .chain(s.truncated.then(|| TRUNCATED_FRAME.to_string()))
            .collect()
    }

    /// Encodes the profile as uncompressed `profile.proto` bytes.
    pub fn to_pprof(&self, sym: &Symbolizer) -> Vec<u8> {
        // The writers' allocations are the profiler's own: not in the next heap profile.
        self.warn_unnamed(sym);
        crate::heap::unsampled(|| PprofBuilder::new(sym).build(self))
    }

    /// Writes the gzip-compressed pprof profile (what `go tool pprof` reads).
    pub fn write_pprof<W: Write>(&self, sym: &Symbolizer, w: W) -> io::Result<()> {
        crate::heap::unsampled(|| {
            let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
            gz.write_all(&self.to_pprof(sym))?;
            // `finish` hands the writer back unflushed: a `BufWriter`'s last write would fail
            // in its drop, unseen (a truncated profile reported written).
            gz.finish()?.flush()
        })
    }

    /// The function names of a sample, leaf first, with each address's inlined functions
    /// (innermost first) where the modules' DWARF has them, and [`TRUNCATED_FRAME`] last when
    /// the stack was cut.
    pub fn names_with_inlines(
        &self,
        s: &Sample,
        sym: &Symbolizer,
        lines: &mut crate::pprof_lines::LineTables<'_>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (i, &pc) in s.pcs.iter().enumerate() {
            let exact = s.is_exact(i);
            let look = crate::frame::FrameAddress::new(pc, exact).lookup_address();
            let mut chain = lines.frames(look);
            if i == 0 {
                hide_leaf_inlines(
                    &mut chain,
                    |f| (&f.function, &f.file),
                    self.hidden_leaf_inlines,
                );
            }
            if chain.is_empty() {
                out.push(function_name(sym, pc, exact));
                continue;
            }
            let at = out.len() + chain.len() - 1;
            out.extend(chain.into_iter().map(|f| f.function));
            // The outermost function as the symbol table names it (see `location`).
            if let Some(s) = sym.lookup(look) {
                out[at] = s.name.to_string();
            }
        }
        if s.truncated {
            out.push(TRUNCATED_FRAME.to_string());
        }
        out
    }

    /// Folded stacks (`root;…;leaf value` per line, as `inferno` and `flamegraph.pl` read) of
    /// value `index`. Samples with a zero value or no frames are left out.
    pub fn folded(&self, sym: &Symbolizer, index: usize) -> String {
        self.folded_impl(sym, index, false)
    }

    /// [`Profile::folded`] with inlined functions as frames of their own.
    pub fn folded_with_inlines(&self, sym: &Symbolizer, index: usize) -> String {
        self.folded_impl(sym, index, true)
    }

    fn folded_impl(&self, sym: &Symbolizer, index: usize, inlines: bool) -> String {
        self.warn_unnamed(sym);
        crate::heap::unsampled(|| self.folded_unsampled(sym, index, inlines))
    }

    fn folded_unsampled(&self, sym: &Symbolizer, index: usize, inlines: bool) -> String {
        let mut tables = crate::pprof_lines::LineTables::new(sym);
        let mut lines: HashMap<String, i64> = HashMap::new();
        for s in &self.samples {
            let v = s.values.get(index).copied().unwrap_or(0);
            if v == 0 || s.pcs.is_empty() {
                continue;
            }
            let mut names = if inlines {
                self.names_with_inlines(s, sym, &mut tables)
            } else {
                self.names(s, sym)
            };
            names.reverse();
            let line = names
                .iter()
                .map(|n| n.replace(';', ":"))
                .collect::<Vec<_>>()
                .join(";");
            *lines.entry(line).or_insert(0) += v;
        }
        let mut lines: Vec<(String, i64)> = lines.into_iter().collect();
        lines.sort();
        let mut out = String::new();
        for (l, v) in lines {
            out.push_str(&l);
            out.push(' ');
            out.push_str(&v.to_string());
            out.push('\n');
        }
        out
    }

    /// A flame graph (SVG, via `inferno`) of value `index`.
    pub fn write_flamegraph<W: Write>(
        &self,
        sym: &Symbolizer,
        index: usize,
        title: &str,
        w: W,
    ) -> io::Result<()> {
        self.write_flamegraph_impl(sym, index, title, false, w)
    }

    /// [`Profile::write_flamegraph`] with inlined functions as frames of their own.
    pub fn write_flamegraph_with_inlines<W: Write>(
        &self,
        sym: &Symbolizer,
        index: usize,
        title: &str,
        w: W,
    ) -> io::Result<()> {
        self.write_flamegraph_impl(sym, index, title, true, w)
    }

    fn write_flamegraph_impl<W: Write>(
        &self,
        sym: &Symbolizer,
        index: usize,
        title: &str,
        inlines: bool,
        mut w: W,
    ) -> io::Result<()> {
        // All of it the profiler's own work (inferno's options too: they were sampled once the
        // heap profiler stopped charging the writers' allocations to the thread's next ones).
        crate::heap::unsampled(|| {
            let folded = self.folded_impl(sym, index, inlines);
            let mut opts = inferno::flamegraph::Options::default();
            opts.title = title.to_string();
            if let Some((_, unit)) = self.sample_types.get(index) {
                opts.count_name = unit.clone();
            }
            // inferno refuses empty input; draw a graph with one "no samples" bar.
            let drawn = if folded.is_empty() {
                inferno::flamegraph::from_lines(&mut opts, std::iter::once("no samples 1"), &mut w)
            } else {
                inferno::flamegraph::from_lines(&mut opts, folded.lines(), &mut w)
            };
            drawn?;
            // A `BufWriter`'s last write must fail here, not unseen in its drop.
            w.flush()
        })
    }
}

/// The function containing `pc` (looked up at `pc - 1` unless exact), or `pc` in hex.
fn function_name(sym: &Symbolizer, pc: u64, exact: bool) -> String {
    match sym.lookup(crate::frame::FrameAddress::new(pc, exact).lookup_address()) {
        Some(s) => s.name.to_string(),
        None => format!("{pc:#x}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal protobuf encoder: varints and length-delimited fields, as in
// https://protobuf.dev/programming-guides/encoding/.

#[derive(Default)]
struct Enc {
    buf: Vec<u8>,
}

impl Enc {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }

    /// An int64/uint64 field (wire type 0); zero is the default and is omitted.
    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v);
        }
    }

    fn int(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }

    fn bool(&mut self, field: u32, v: bool) {
        self.uint(field, u64::from(v));
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    fn message(&mut self, field: u32, f: impl FnOnce(&mut Enc)) {
        let mut inner = Enc::default();
        f(&mut inner);
        self.bytes(field, &inner.buf);
    }

    /// A packed repeated varint field.
    fn packed(&mut self, field: u32, vs: impl Iterator<Item = u64>) {
        let mut inner = Enc::default();
        for v in vs {
            inner.varint(v);
        }
        if !inner.buf.is_empty() {
            self.bytes(field, &inner.buf);
        }
    }
}

/// Drops the innermost frames of a leaf's inline `chain` (innermost first) while `hidden` says
/// they are runtime code, keeping the last (the function they were inlined into).
fn hide_leaf_inlines<T>(
    chain: &mut Vec<T>,
    name_and_file: impl Fn(&T) -> (&str, &str),
    hidden: Option<fn(&str, &str) -> bool>,
) {
    let Some(hidden) = hidden else { return };
    let n = chain
        .iter()
        .take(chain.len().saturating_sub(1))
        .take_while(|f| {
            let (name, file) = name_and_file(f);
            hidden(name, file)
        })
        .count();
    chain.drain(..n);
}

/// A pprof location: id, mapping id, address, lines (function id, line), innermost first.
type Loc = (u64, u64, u64, Vec<(u64, i64)>);

struct PprofBuilder<'a> {
    sym: &'a Symbolizer,
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    /// (address, exact, leaf inlines hidden) -> location id.
    locations: HashMap<(u64, bool, bool), u64>,
    location_list: Vec<Loc>,
    /// (name, source file) -> function id.
    functions: HashMap<(String, String), u64>,
    function_list: Vec<(u64, i64, i64)>, // id, name, filename
    /// Source lines and inlined functions (DWARF).
    lines: crate::pprof_lines::LineTables<'a>,
    /// Mapping ids whose locations got file:line from DWARF.
    mappings_with_lines: std::collections::HashSet<u64>,
    /// The mappings (id = index + 1): one per executable segment of each module, as
    /// `/proc/self/maps` shows them (see [`crate::pprof_lines::exec_segments`]), or the
    /// module's whole range for a module whose segments cannot be read. Sorted by address.
    mappings: Vec<PprofMapping>,
}

/// A pprof mapping: runtime `[lo, hi)`, file offset of `lo`, the module's index.
struct PprofMapping {
    lo: u64,
    hi: u64,
    offset: u64,
    module: usize,
}

/// The mappings of `sym`'s modules: see [`PprofBuilder::mappings`].
fn pprof_mappings(sym: &Symbolizer) -> Vec<PprofMapping> {
    let mut out = Vec::new();
    for (i, m) in sym.modules().iter().enumerate() {
        let segs = crate::pprof_lines::exec_segments(m.data());
        if segs.is_empty() {
            out.push(PprofMapping {
                lo: m.range.lo,
                hi: m.range.hi,
                offset: m.range.lo.wrapping_sub(m.bias),
                module: i,
            });
        }
        for (lo, hi, offset) in segs {
            out.push(PprofMapping {
                lo: lo.wrapping_add(m.bias),
                hi: hi.wrapping_add(m.bias),
                offset,
                module: i,
            });
        }
    }
    out.sort_by_key(|m| m.lo);
    out
}

impl<'a> PprofBuilder<'a> {
    fn new(sym: &'a Symbolizer) -> Self {
        let mut b = PprofBuilder {
            sym,
            strings: Vec::new(),
            string_ids: HashMap::new(),
            locations: HashMap::new(),
            location_list: Vec::new(),
            functions: HashMap::new(),
            function_list: Vec::new(),
            lines: crate::pprof_lines::LineTables::new(sym),
            mappings_with_lines: Default::default(),
            mappings: pprof_mappings(sym),
        };
        b.string(""); // string_table[0] must be ""
        b
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), i);
        i
    }

    fn mapping_id(&self, pc: u64) -> u64 {
        self.mappings
            .iter()
            .position(|m| m.lo <= pc && pc < m.hi)
            .map_or(0, |i| i as u64 + 1)
    }

    /// The location of `pc`; `hide`: leave out the runtime functions inlined at it (a leaf,
    /// see [`Profile::hidden_leaf_inlines`]).
    fn location(&mut self, pc: u64, exact: bool, hide: Option<fn(&str, &str) -> bool>) -> u64 {
        if let Some(&id) = self.locations.get(&(pc, exact, hide.is_some())) {
            return id;
        }
        let look = crate::frame::FrameAddress::new(pc, exact).lookup_address();
        let mapping = self.mapping_id(look);
        // The inline chain with file:line (DWARF), else the symbol table's name alone.
        let mut chain: Vec<(String, String, i64)> = self
            .lines
            .frames(look)
            .into_iter()
            .map(|f| (f.function, f.file, i64::from(f.line)))
            .collect();
        if !chain.is_empty() {
            self.mappings_with_lines.insert(mapping);
        }
        hide_leaf_inlines(&mut chain, |f| (&f.0, &f.1), hide);
        // The outermost function is named as the symbol table names it, as the folded stacks
        // and `unwind stack` name it (DWARF may lack its name, or name it otherwise: glibc's
        // `__libc_start_main_impl` is exported as `__libc_start_main`).
        let symbol = self.sym.lookup(look).map(|s| s.name.to_string());
        match (chain.last_mut(), symbol) {
            (Some(last), Some(name)) => last.0 = name,
            (None, Some(name)) => chain.push((name, String::new(), 0)),
            (None, None) => chain.push((format!("{pc:#x}"), String::new(), 0)),
            _ => {}
        }
        let mut lines = Vec::with_capacity(chain.len());
        for (name, file, line) in chain {
            let key = (name, file);
            let fid = match self.functions.get(&key) {
                Some(&f) => f,
                None => {
                    let f = self.function_list.len() as u64 + 1;
                    let n = self.string(&key.0);
                    let fl = self.string(&key.1);
                    self.function_list.push((f, n, fl));
                    self.functions.insert(key, f);
                    f
                }
            };
            lines.push((fid, line));
        }
        let id = self.location_list.len() as u64 + 1;
        self.location_list.push((id, mapping, pc, lines));
        self.locations.insert((pc, exact, hide.is_some()), id);
        id
    }

    /// The location standing for the frames a [`Sample::truncated`] stack lost: no address,
    /// no mapping, one line in a function named [`TRUNCATED_FRAME`].
    fn truncated_location(&mut self) -> u64 {
        // No real location has pc 0 with `hide` set (pc 0 is never captured).
        let key = (0, false, true);
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let name = (TRUNCATED_FRAME.to_string(), String::new());
        let fid = match self.functions.get(&name) {
            Some(&f) => f,
            None => {
                let f = self.function_list.len() as u64 + 1;
                let n = self.string(&name.0);
                let fl = self.string("");
                self.function_list.push((f, n, fl));
                self.functions.insert(name, f);
                f
            }
        };
        let id = self.location_list.len() as u64 + 1;
        self.location_list.push((id, 0, 0, vec![(fid, 0)]));
        self.locations.insert(key, id);
        id
    }

    fn build(mut self, p: &Profile) -> Vec<u8> {
        let mut out = Enc::default();
        for (t, u) in &p.sample_types {
            let (t, u) = (self.string(t), self.string(u));
            out.message(1, |m| {
                m.int(1, t);
                m.int(2, u);
            });
        }
        for s in &p.samples {
            let mut locs: Vec<u64> = s
                .pcs
                .iter()
                .enumerate()
                .map(|(i, &pc)| {
                    let hide = p.hidden_leaf_inlines.filter(|_| i == 0);
                    self.location(pc, s.is_exact(i), hide)
                })
                .collect();
            if s.truncated {
                locs.push(self.truncated_location());
            }
            let labels: Vec<(i64, i64)> = s
                .labels
                .iter()
                .map(|(k, v)| (self.string(k), self.string(v)))
                .collect();
            out.message(2, |m| {
                m.packed(1, locs.iter().copied());
                m.packed(2, s.values.iter().map(|&v| v as u64));
                for (k, v) in &labels {
                    m.message(3, |l| {
                        l.int(1, *k);
                        l.int(2, *v);
                    });
                }
            });
        }
        let modules: Vec<(u64, u64, u64, i64, i64)> = {
            // Each module's path and build id, once.
            let ids: Vec<(String, String)> = self
                .sym
                .modules()
                .iter()
                .map(|m| {
                    (
                        m.path.clone(),
                        crate::pprof_lines::build_id(m.data())
                            .map(|b| crate::pprof_lines::hex(&b))
                            .unwrap_or_default(),
                    )
                })
                .collect();
            let ms: Vec<(u64, u64, u64, usize)> = self
                .mappings
                .iter()
                .map(|m| (m.lo, m.hi, m.offset, m.module))
                .collect();
            ms.into_iter()
                .map(|(lo, hi, off, i)| {
                    let (path, id) = &ids[i];
                    (lo, hi, off, self.string(path), self.string(id))
                })
                .collect()
        };
        for (i, (lo, hi, off, path, build_id)) in modules.iter().enumerate() {
            let lines = self.mappings_with_lines.contains(&(i as u64 + 1));
            out.message(3, |m| {
                m.uint(1, i as u64 + 1);
                m.uint(2, *lo);
                m.uint(3, *hi);
                m.uint(4, *off);
                m.int(5, *path);
                m.int(6, *build_id);
                m.bool(7, true); // has_functions
                m.bool(8, lines); // has_filenames
                m.bool(9, lines); // has_line_numbers
                m.bool(10, lines); // has_inline_frames
            });
        }
        for (id, mapping, addr, lines) in &self.location_list {
            out.message(4, |m| {
                m.uint(1, *id);
                m.uint(2, *mapping);
                m.uint(3, *addr);
                for &(fid, line) in lines {
                    m.message(4, |l| {
                        l.uint(1, fid);
                        l.int(2, line);
                    });
                }
            });
        }
        for &(id, name, file) in &self.function_list {
            out.message(5, |m| {
                m.uint(1, id);
                m.int(2, name);
                // No system_name: `go tool pprof` takes a function whose system name equals
                // its name for not yet demangled and "simplifies" it, cutting everything in
                // angle brackets: `<alloc::vec::Vec<T> as Drop>::drop` became `::drop`. The
                // names here are demangled already (the mangled one is not known for inlined
                // frames).
                m.int(4, file);
            });
        }
        let period_type = (self.string(&p.period_type.0), self.string(&p.period_type.1));
        let default_type = p.default_sample_type.as_deref().map(|d| self.string(d));
        for s in &self.strings {
            out.bytes(6, s.as_bytes());
        }
        out.int(9, p.time_nanos);
        out.int(10, p.duration_nanos);
        out.message(11, |m| {
            m.int(1, period_type.0);
            m.int(2, period_type.1);
        });
        out.int(12, p.period);
        if let Some(d) = default_type {
            out.int(14, d);
        }
        out.buf
    }
}

/// Writes `<dir>/<name>.pb.gz`, `<name>.folded` and `<name>.svg` for value `index`; returns
/// the paths.
pub fn write_outputs(
    dir: &Path,
    name: &str,
    p: &Profile,
    sym: &Symbolizer,
    index: usize,
) -> io::Result<Vec<PathBuf>> {
    // Errors name the file.
    let at = |path: &Path| {
        let path = path.display().to_string();
        move |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.escape_debug()))
    };
    std::fs::create_dir_all(dir).map_err(at(dir))?;
    let pb = dir.join(format!("{name}.pb.gz"));
    let file = std::fs::File::create(&pb).map_err(at(&pb))?;
    p.write_pprof(sym, io::BufWriter::new(file))
        .map_err(at(&pb))?;
    let folded = dir.join(format!("{name}.folded"));
    std::fs::write(&folded, p.folded(sym, index)).map_err(at(&folded))?;
    let svg = dir.join(format!("{name}.svg"));
    let title = format!("{name}: {}", p.sample_types.get(index).map_or("", |t| &t.0));
    let file = std::fs::File::create(&svg).map_err(at(&svg))?;
    p.write_flamegraph(sym, index, &title, io::BufWriter::new(file))
        .map_err(at(&svg))?;
    Ok(vec![pb, folded, svg])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stripped module's unnamed frames draw one line naming it; the same file unstripped,
    /// or a pc no module holds, none.
    #[test]
    fn a_stripped_module_s_unnamed_frames_are_said() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cores");
        let full = root.join("chain-x86_64");
        let dir = std::env::temp_dir().join(format!("unwind-stripped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stripped = dir.join("chain-stripped");
        let ok = std::process::Command::new("strip")
            .arg("-o")
            .arg(&stripped)
            .arg(&full)
            .status()
            .expect("strip (binutils)");
        assert!(ok.success());
        let profile_at = |path: &std::path::Path| {
            let mut sym = Symbolizer::new();
            sym.add(path, "chain", None);
            let main = crate::symbols::Module::load(&full, "full", None)
                .unwrap()
                .function("main")
                .unwrap();
            let m = &sym.modules()[0];
            let pc = main.lo + 4;
            assert!(m.range.contains(pc), "{pc:#x} in {:?}", m.range);
            let mut p = Profile::new(
                vec![("samples".into(), "count".into())],
                Default::default(),
                1,
            );
            for pcs in [vec![pc, pc + 1], vec![u64::MAX - 0x100]] {
                p.samples.push(Sample {
                    pcs,
                    exact_leaf: true,
                    exact_frames: Vec::new(),
                    values: vec![1],
                    labels: Vec::new(),
                    truncated: false,
                });
            }
            p.name_warnings(&sym)
        };
        let w = profile_at(&stripped);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("chain is stripped") && w[0].contains(": 2 frames"),
            "{w:?}"
        );
        assert_eq!(profile_at(&full), Vec::<String>::new());
    }

    /// An exact pc past the leaf (a sigreturn trampoline, entered at its first instruction)
    /// is named at itself, not at `pc - 1` (the function before it, or nothing: found by
    /// outside use in the twenty-fifth round); return addresses still at `pc - 1`.
    #[test]
    fn exact_frames_past_the_leaf_are_named_at_their_pc() {
        let full =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cores/chain-x86_64");
        let mut sym = Symbolizer::new();
        sym.add(&full, "chain", None);
        let m = &sym.modules()[0];
        let gamma = m.function("gamma_").unwrap();
        let beta = m.function("beta_").unwrap();
        // gamma_ ends where beta_ begins: beta_'s first byte looked up as a return address is
        // gamma_'s.
        assert_eq!(gamma.hi, beta.lo);
        let p = Profile::default();
        let mut s = Sample {
            pcs: vec![gamma.lo + 4, beta.lo, beta.lo],
            exact_leaf: true,
            exact_frames: vec![1],
            values: vec![1],
            labels: Vec::new(),
            truncated: false,
        };
        assert_eq!(p.names(&s, &sym), ["gamma_", "beta_", "gamma_"]);
        s.exact_frames.clear();
        assert_eq!(p.names(&s, &sym), ["gamma_", "gamma_", "gamma_"]);
    }

    /// A profile that cannot be written says which file.
    #[test]
    fn a_file_that_cannot_be_written_is_named() {
        let dir = std::env::temp_dir().join(format!("unwind-outputs-{}", std::process::id()));
        // A directory where the profile file would go.
        std::fs::create_dir_all(dir.join("cpu.folded")).unwrap();
        let p = Profile::default();
        let sym = Symbolizer::default();
        let e = write_outputs(&dir, "cpu", &p, &sym, 0).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(e.to_string().contains("cpu.folded: "), "{e}");
    }

    /// A profile whose last write fails (a full disk, here `/dev/full`) is an error also
    /// through a `BufWriter`, whose final flush used to fail unseen in its drop (`write_pprof`
    /// returned `Ok` and left a truncated `.pb.gz`).
    #[test]
    fn a_buffered_write_that_fails_at_its_flush_is_an_error() {
        let mut p = cpu_counts();
        p.samples.push(sample(&[0x1000, 0x2000], 1));
        let sym = Symbolizer::default();
        let full = || io::BufWriter::new(std::fs::File::create("/dev/full").unwrap());
        let e = p.write_pprof(&sym, full()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        let e = p.write_flamegraph(&sym, 0, "t", full()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        // And unbuffered, as before.
        let e = p
            .write_pprof(&sym, std::fs::File::create("/dev/full").unwrap())
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    }

    #[test]
    fn leaf_inlines_are_hidden_from_the_innermost_up_to_user_code() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let hidden = Some(crate::heap::is_runtime_inline as fn(&str, &str) -> bool);
        let mut chain = names(&[
            "__rustc::__rust_alloc",
            "alloc::raw_vec::RawVecInner::with_capacity_in",
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "app::burn",
            "app::leaf",
        ]);
        hide_leaf_inlines(&mut chain, |s| (s, ""), hidden);
        assert_eq!(chain, names(&["app::burn", "app::leaf"]));
        // The function the others were inlined into stays, even if it is runtime code.
        let mut all = names(&["alloc::alloc::alloc", "alloc::vec::from_elem"]);
        hide_leaf_inlines(&mut all, |s| (s, ""), hidden);
        assert_eq!(all, names(&["alloc::vec::from_elem"]));
        // Names without their path (`debug = "line-tables-only"`) by their source files.
        let mut short = vec![
            (
                "realloc<std::alloc::System>",
                "/rustc/0123/library/std/src/alloc.rs",
            ),
            (
                "push_mut<u8, alloc::alloc::Global>",
                "/rustc/0123/library/alloc/src/vec/mod.rs",
            ),
            ("grow", "src/bin/inuse.rs"),
            ("main", "src/bin/inuse.rs"),
        ];
        hide_leaf_inlines(&mut short, |&(n, f)| (n, f), hidden);
        assert_eq!(
            short.iter().map(|s| s.0).collect::<Vec<_>>(),
            ["grow", "main"]
        );
        // A user function without a path in a file of the user's is kept.
        let mut mine = vec![("push_mut", "src/vec.rs"), ("main", "src/main.rs")];
        hide_leaf_inlines(&mut mine, |&(n, f)| (n, f), hidden);
        assert_eq!(mine.len(), 2);
        // Without a rule nothing is hidden.
        let mut kept = names(&["alloc::alloc::alloc", "app::leaf"]);
        hide_leaf_inlines(&mut kept, |s| (s, ""), None);
        assert_eq!(kept.len(), 2);
    }

    #[test]
    fn varints() {
        let mut e = Enc::default();
        e.varint(0);
        e.varint(1);
        e.varint(300);
        e.varint(u64::MAX);
        assert_eq!(
            e.buf,
            [0, 1, 0xac, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    /// An empty profile of sample counts, 10 ns apart.
    fn cpu_counts() -> Profile {
        Profile::new(
            vec![("samples".into(), "count".into())],
            ("cpu".into(), "nanoseconds".into()),
            10,
        )
    }

    fn sample(pcs: &[u64], v: i64) -> Sample {
        Sample {
            pcs: pcs.to_vec(),
            exact_leaf: true,
            exact_frames: Vec::new(),
            values: vec![v],
            labels: vec![],
            truncated: false,
        }
    }

    #[test]
    fn a_cut_stack_ends_in_the_truncation_marker() {
        let mut p = cpu_counts();
        p.samples.push(sample(&[0x10, 0x20], 1));
        p.samples.push(Sample {
            truncated: true,
            ..sample(&[0x10, 0x20], 2)
        });
        p.merge_identical();
        assert_eq!(p.samples.len(), 2, "a cut stack is not the whole one");
        let sym = Symbolizer::new();
        assert_eq!(p.folded(&sym, 0), "0x20;0x10 1\n[truncated];0x20;0x10 2\n");
        assert_eq!(
            p.names(&p.samples[1], &sym).last().unwrap(),
            TRUNCATED_FRAME
        );
        // pprof: the marker is a function of its own, in one location shared by every cut
        // stack (the string table holds its name once).
        let bytes = p.to_pprof(&sym);
        let hits = bytes
            .windows(TRUNCATED_FRAME.len())
            .filter(|w| *w == TRUNCATED_FRAME.as_bytes())
            .count();
        assert_eq!(hits, 1);
    }

    #[test]
    fn merges_and_folds_unknown_addresses() {
        let mut p = cpu_counts();
        p.samples.push(sample(&[0x10, 0x20], 1));
        p.samples.push(sample(&[0x10, 0x20], 2));
        p.samples.push(sample(&[0x30], 4));
        p.samples.push(sample(&[], 8));
        p.merge_identical();
        assert_eq!(p.samples.len(), 3);
        assert_eq!(p.total(0), 15);
        let sym = Symbolizer::new();
        // Root first; unknown addresses are shown as captured.
        assert_eq!(p.folded(&sym, 0), "0x20;0x10 3\n0x30 4\n");
        let bytes = p.to_pprof(&sym);
        assert!(!bytes.is_empty());
        // The string table starts with "".
        let mut svg = Vec::new();
        p.write_flamegraph(&sym, 0, "t", &mut svg).unwrap();
        assert!(String::from_utf8_lossy(&svg).contains("<svg"));
        let empty = Profile::default();
        let mut svg = Vec::new();
        empty.write_flamegraph(&sym, 0, "t", &mut svg).unwrap();
        assert!(String::from_utf8_lossy(&svg).contains("no samples"));
    }
}

//! Fuzz harnesses, shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and the ordinary
//! test suite (`tests/fuzz_regressions.rs`), so that any input the fuzzer finds replays as a
//! plain `cargo test`.
//!
//! Each harness decodes its input with [`Bytes`] (little-endian integers, zeros once the input
//! runs out: every byte string is a valid input), runs the crate on it and asserts the crate's
//! guarantees; a broken guarantee panics, which libFuzzer reports as a crash. The input formats
//! are described at each harness; `fuzz/seeds.rs` writes seed inputs in them.

#![allow(dead_code)]

pub mod cfi;
pub mod core_file;
pub mod policy;
pub mod symbols;
pub mod walk;

/// A cursor over fuzz input: little-endian integers, zero-filled past the end.
pub struct Bytes<'a> {
    d: &'a [u8],
}

impl<'a> Bytes<'a> {
    /// A cursor at the start of `d`.
    pub fn new(d: &'a [u8]) -> Self {
        Bytes { d }
    }

    /// The next byte, or 0.
    pub fn u8(&mut self) -> u8 {
        match self.d.split_first() {
            Some((&b, rest)) => {
                self.d = rest;
                b
            }
            None => 0,
        }
    }

    fn le<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.d.len());
        out[..n].copy_from_slice(&self.d[..n]);
        self.d = &self.d[n..];
        out
    }

    /// The next little-endian u16, zero-filled.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.le())
    }

    /// The next little-endian u32, zero-filled.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.le())
    }

    /// The next little-endian u64, zero-filled.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.le())
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.d.len());
        let (a, b) = self.d.split_at(n);
        self.d = b;
        a
    }

    /// What is left.
    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.d)
    }
}

/// Writes inputs in the [`Bytes`] format (seed corpus, regression tests).
#[derive(Default)]
pub struct Out(pub Vec<u8>);

impl Out {
    /// Appends a byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    /// Appends a little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
}

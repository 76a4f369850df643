//! The one narrow door to memory: "read a word at addr, or no".
//!
//! The walker never dereferences anything itself. Live captures read through
//! [`crate::live::LiveMemory`] (bounded by the thread's known stacks), offline unwinding reads a
//! core's `PT_LOAD` segments, tests and fuzzers read byte images ([`Image`]). A refused read ends
//! the walk cleanly.

/// A half-open address range `[lo, hi)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Range {
    /// Lowest address in the range.
    pub lo: u64,
    /// One past the highest address.
    pub hi: u64,
}

impl Range {
    /// The range `[lo, hi)`.
    #[inline(always)]
    pub const fn new(lo: u64, hi: u64) -> Self {
        Range { lo, hi }
    }

    /// Is `addr` in the range?
    #[inline(always)]
    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.lo && addr < self.hi
    }

    /// Do `len` bytes starting at `addr` lie inside the range? Compares by subtraction, so an
    /// address near `u64::MAX` cannot wrap around.
    #[inline(always)]
    pub const fn contains_span(&self, addr: u64, len: u64) -> bool {
        addr >= self.lo && addr <= self.hi && self.hi - addr >= len
    }

    /// Is `sp` a stack pointer on this stack: inside it, or at its end (an empty stack's sp,
    /// nothing pushed yet)?
    #[inline(always)]
    pub const fn holds_sp(&self, sp: u64) -> bool {
        self.contains(sp) || sp == self.hi
    }

    /// Is the range empty?
    #[inline(always)]
    pub const fn is_empty(&self) -> bool {
        self.hi <= self.lo
    }
}

/// Readable memory for the walker.
///
/// Implementations must check every address they are given: the walker passes values read from
/// untrusted stacks straight through.
pub trait Memory {
    /// Reads the little-endian 64-bit word at `addr`, or `None` if that memory is not readable.
    fn read_u64(&mut self, addr: u64) -> Option<u64>;

    /// The bounds of the stack containing `addr`, if known. The walker requires frame pointers
    /// to move strictly upwards inside one such range; leaving it is only allowed at a known
    /// transition. `None` means "unknown": then only reads bound the walk.
    fn stack_range(&mut self, addr: u64) -> Option<Range>;

    /// The bounds of the stack that a known transition just led to (`addr` is the stack
    /// pointer or frame pointer its rule recovered). The default is [`Memory::stack_range`]; a
    /// memory that can find stacks it was not told of (the live one, through
    /// `/proc/self/maps`: an unregistered coroutine or `stacker` segment that a system-stack
    /// call or a signal frame leads back to) may admit one here, for the rest of the walk. The
    /// walker asks only at transitions, never for an ordinary frame pointer, so a frame pointer
    /// still cannot wander off its stack.
    #[inline(always)]
    fn enter_stack(&mut self, addr: u64) -> Option<Range> {
        self.stack_range(addr)
    }

    /// Reads a frame record: the two words at `addr` and `addr + 8`. The default reads them
    /// one at a time; implementations may check the 16 bytes once.
    #[inline(always)]
    fn read_pair(&mut self, addr: u64) -> Option<(u64, u64)> {
        Some((self.read_u64(addr)?, self.read_u64(addr.checked_add(8)?)?))
    }

    /// Reads a frame record that the caller has already bounds-checked.
    ///
    /// The default is the checked [`Memory::read_pair`]; an implementation whose stack ranges
    /// are entirely readable may read directly.
    ///
    /// # Safety
    /// The 16 bytes at `addr` must lie inside a range this memory returned from
    /// [`Memory::stack_range`] or [`Memory::enter_stack`] (and that range must still be valid)
    /// for which [`Memory::reads_unchecked`] said yes.
    #[inline(always)]
    unsafe fn read_pair_unchecked(&mut self, addr: u64) -> Option<(u64, u64)> {
        self.read_pair(addr)
    }

    /// May records inside `stack` (a range [`Memory::stack_range`] or [`Memory::enter_stack`]
    /// returned) be read with [`Memory::read_pair_unchecked`]? The walker asks once per run of
    /// its hot loops; where the answer is no, its general step reads them with the checked
    /// reads. The default: yes. (The live memory says no for a mapping it found in
    /// `/proc/self/maps`, which it reads through the kernel.) A memory that wraps another and
    /// forwards [`Memory::read_pair_unchecked`] to it must forward this too.
    #[inline(always)]
    fn reads_unchecked(&mut self, _stack: Range) -> bool {
        true
    }

    /// Reads `out.len()` bytes of code at `addr` (to recognise trampolines by their
    /// instructions). Returns `false` when those bytes are not available; the default does not
    /// read code at all.
    fn read_code(&mut self, _addr: u64, _out: &mut [u8]) -> bool {
        false
    }

    /// Is `addr` in executable memory? `None` when this memory cannot tell (the default).
    /// The walker asks only at an interrupted pc and of the word a call there would have left
    /// (a call through a bad function pointer faults at its target: [`crate::Walker`] takes
    /// the caller from the return address, as for a null one).
    fn is_code(&mut self, _addr: u64) -> Option<bool> {
        None
    }
}

impl<M: Memory + ?Sized> Memory for &mut M {
    #[inline(always)]
    fn read_u64(&mut self, addr: u64) -> Option<u64> {
        (**self).read_u64(addr)
    }
    #[inline(always)]
    fn stack_range(&mut self, addr: u64) -> Option<Range> {
        (**self).stack_range(addr)
    }
    #[inline(always)]
    fn enter_stack(&mut self, addr: u64) -> Option<Range> {
        (**self).enter_stack(addr)
    }
    #[inline(always)]
    fn read_pair(&mut self, addr: u64) -> Option<(u64, u64)> {
        (**self).read_pair(addr)
    }
    #[inline(always)]
    unsafe fn read_pair_unchecked(&mut self, addr: u64) -> Option<(u64, u64)> {
        // SAFETY: forwarded from the caller.
        unsafe { (**self).read_pair_unchecked(addr) }
    }
    fn read_code(&mut self, addr: u64, out: &mut [u8]) -> bool {
        (**self).read_code(addr, out)
    }
    fn is_code(&mut self, addr: u64) -> Option<bool> {
        (**self).is_code(addr)
    }
    #[inline(always)]
    fn reads_unchecked(&mut self, stack: Range) -> bool {
        (**self).reads_unchecked(stack)
    }
}

/// One region of an [`Image`]: bytes that appear at `base`, and whether they are a stack.
#[derive(Clone, Copy, Debug)]
pub struct Region<'a> {
    /// Address of `bytes[0]`.
    pub base: u64,
    /// The contents.
    pub bytes: &'a [u8],
    /// Is this region a stack (used for [`Memory::stack_range`])? Code regions are not.
    pub is_stack: bool,
}

impl<'a> Region<'a> {
    /// The address range the region covers (saturating at `u64::MAX`).
    #[inline]
    pub fn range(&self) -> Range {
        Range::new(self.base, self.base.saturating_add(self.bytes.len() as u64))
    }
}

/// A memory image made of byte regions: synthetic stacks in tests, fuzz inputs, snapshots.
/// Reads outside the regions are refused.
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    regions: &'a [Region<'a>],
}

impl<'a> Image<'a> {
    /// An image over `regions` (looked up in order; overlapping regions shadow later ones).
    pub const fn new(regions: &'a [Region<'a>]) -> Self {
        Image { regions }
    }

    fn find(&self, addr: u64, len: u64) -> Option<(&Region<'a>, usize)> {
        self.regions.iter().find_map(|r| {
            if r.range().contains_span(addr, len) {
                Some((r, (addr - r.base) as usize))
            } else {
                None
            }
        })
    }
}

impl Memory for Image<'_> {
    fn read_u64(&mut self, addr: u64) -> Option<u64> {
        let (r, off) = self.find(addr, 8)?;
        let b = r.bytes.get(off..off + 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    fn stack_range(&mut self, addr: u64) -> Option<Range> {
        self.regions
            .iter()
            .find(|r| r.is_stack && r.range().contains(addr))
            .map(|r| r.range())
    }

    fn read_code(&mut self, addr: u64, out: &mut [u8]) -> bool {
        match self.find(addr, out.len() as u64) {
            Some((r, off)) => match r.bytes.get(off..off + out.len()) {
                Some(b) => {
                    out.copy_from_slice(b);
                    true
                }
                None => false,
            },
            None => false,
        }
    }
}

/// A little xorshift for tests: deterministic cases without a dependency. Test-only.
#[cfg(test)]
pub(crate) struct Rng(pub(crate) u64);

#[cfg(test)]
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A little builder for synthetic stacks in tests: words at addresses. Test-only (not API).
#[cfg(test)]
#[derive(Clone, Debug, Default)]
pub(crate) struct StackBuilder {
    base: u64,
    bytes: Vec<u8>,
}

#[cfg(test)]
impl StackBuilder {
    /// A zero-filled stack of `len` bytes at `base`.
    pub fn new(base: u64, len: usize) -> Self {
        StackBuilder {
            base,
            bytes: vec![0; len],
        }
    }

    /// Writes `value` at `addr` (which must be inside the stack; panics otherwise: test helper).
    pub fn put(&mut self, addr: u64, value: u64) -> &mut Self {
        let off = (addr - self.base) as usize;
        self.bytes[off..off + 8].copy_from_slice(&value.to_le_bytes());
        self
    }

    /// Writes a frame record `{caller_fp, ra}` at `fp`.
    pub fn record(&mut self, fp: u64, caller_fp: u64, ra: u64) -> &mut Self {
        self.put(fp, caller_fp).put(fp + 8, ra)
    }

    /// The stack as a region.
    pub fn region(&self) -> Region<'_> {
        Region {
            base: self.base,
            bytes: &self.bytes,
            is_stack: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_checks_do_not_wrap() {
        let r = Range::new(0x1000, u64::MAX);
        assert!(r.contains_span(0x1000, 16));
        assert!(!r.contains_span(u64::MAX - 8, 16));
        assert!(r.contains_span(u64::MAX - 16, 16));
        assert!(!r.contains_span(0xfff, 8));
        let e = Range::new(10, 5);
        assert!(e.is_empty());
        assert!(!e.contains_span(10, 0) || e.hi >= 10);
    }

    #[test]
    fn image_reads_are_bounded() {
        let mut s = StackBuilder::new(0x1000, 64);
        s.put(0x1000, 0x1122334455667788).put(0x1038, 7);
        let regions = [s.region()];
        let mut m = Image::new(&regions);
        assert_eq!(m.read_u64(0x1000), Some(0x1122334455667788));
        assert_eq!(m.read_u64(0x1038), Some(7));
        assert_eq!(m.read_u64(0x1039), None);
        assert_eq!(m.read_u64(0xff8), None);
        assert_eq!(m.read_u64(u64::MAX - 3), None);
        assert_eq!(m.stack_range(0x1010), Some(Range::new(0x1000, 0x1040)));
        assert_eq!(m.stack_range(0x1040), None);
        let mut b = [0u8; 4];
        assert!(m.read_code(0x1000, &mut b));
        assert_eq!(b, [0x88, 0x77, 0x66, 0x55]);
        assert!(!m.read_code(0x103e, &mut b));
    }

    #[test]
    fn region_at_top_of_address_space() {
        let bytes = [0xffu8; 16];
        let regions = [Region {
            base: u64::MAX - 15,
            bytes: &bytes,
            is_stack: true,
        }];
        let mut m = Image::new(&regions);
        // The range saturates: the last byte is not addressable, reads near the end are refused.
        assert_eq!(m.read_u64(u64::MAX - 7), None);
        assert_eq!(m.read_u64(u64::MAX - 15), Some(u64::MAX));
    }
}

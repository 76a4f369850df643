//! Policies: which frames of a captured trace each profile kind keeps.
//!
//! Capture records everything it can; a [`Policy`] then keeps the part a profile's users need.
//! Given this call sequence, where `[systemstack_switch]` is a switch to the system stack
//! (Go's `systemstack`, or `system_stack` in Rust):
//!
//! ```text
//! main.main → main.foo → runtime.bar → [systemstack_switch] → runtime.systemstack →
//!     runtime.bar.func1 → runtime.interestingEvent → runtime.recordEvent      (leaf last)
//! ```
//!
//! | kind | keeps | here (leaf first) |
//! |---|---|---|
//! | [`ProfileKind::Cpu`] | system and user parts, all frames | every frame |
//! | [`ProfileKind::RuntimeLock`] | system and user parts | every frame |
//! | [`ProfileKind::Heap`] | crosses the switch; drops runtime frames at the leaf end, so the sample ends at the first non-runtime frame, and keeps runtime frames above it; if every frame is runtime, keeps them all | `main.foo, main.main` |
//! | [`ProfileKind::Block`], [`ProfileKind::Mutex`] | user part only | `runtime.bar, main.foo, main.main` |
//! | [`ProfileKind::Trace`] | user part only | `runtime.bar, main.foo, main.main` |
//!
//! The *system part* is the frames before the first crossing of a transition the
//! [`Classifier`] calls a system switch; the *user part* is that crossing's frame and everything
//! above it. A trace with no system switch is all user part. Whether a frame is *runtime* is the
//! classifier's answer: by address ranges prepared ahead (modules, symbol prefixes such as
//! `runtime.`, explicit ranges), or by being on the system side of a switch.
//!
//! Applying a policy allocates nothing, takes no lock and is bounded by the trace length: it can
//! run in a signal handler or an allocator hook right after the capture.

use crate::frame::{Frame, Via};
use core::fmt;
use core::ops::Range as Span;
use core::sync::atomic::{AtomicU64, Ordering};

/// The kinds of profile, each with its default [`Policy`].
///
/// | kind | keeps |
/// |---|---|
/// | `Cpu` | system and user parts, all frames |
/// | `RuntimeLock` | system and user parts |
/// | `Heap` | crosses the switch; drops runtime frames at the leaf end (the sample ends at the first non-runtime frame), keeps runtime frames above it; an all-runtime trace is kept whole |
/// | `Block`, `Mutex` | user part only |
/// | `Trace` | user part only |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProfileKind {
    /// CPU samples: everything.
    Cpu,
    /// Allocation samples: cross the switch, hide runtime frames at the leaf end.
    Heap,
    /// Blocking events: the user part.
    Block,
    /// Mutex contention: the user part.
    Mutex,
    /// Runtime-internal lock contention: system and user parts.
    RuntimeLock,
    /// Execution-trace events: the user part.
    Trace,
}

impl ProfileKind {
    /// All kinds, in display order.
    pub const ALL: [ProfileKind; 6] = [
        ProfileKind::Cpu,
        ProfileKind::Heap,
        ProfileKind::Block,
        ProfileKind::Mutex,
        ProfileKind::RuntimeLock,
        ProfileKind::Trace,
    ];

    /// Parses the command-line name: `cpu`, `heap`, `block`, `mutex`, `lock`, `trace`.
    pub fn parse(s: &str) -> Option<ProfileKind> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The command-line name.
    pub const fn name(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "cpu",
            ProfileKind::Heap => "heap",
            ProfileKind::Block => "block",
            ProfileKind::Mutex => "mutex",
            ProfileKind::RuntimeLock => "lock",
            ProfileKind::Trace => "trace",
        }
    }

    /// The default policy for this kind.
    pub const fn policy(self) -> Policy {
        let base = Policy {
            keep: Keep::Both,
            elide_runtime_leaf: false,
            skip: 0,
            max_depth: 0,
        };
        match self {
            ProfileKind::Cpu | ProfileKind::RuntimeLock => base,
            ProfileKind::Heap => Policy {
                elide_runtime_leaf: true,
                ..base
            },
            ProfileKind::Block | ProfileKind::Mutex | ProfileKind::Trace => Policy {
                keep: Keep::User,
                ..base
            },
        }
    }
}

impl fmt::Display for ProfileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which parts of a trace to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Keep {
    /// Only the frames before the first system switch (empty when there is none).
    System,
    /// Only the frames from the first system switch on (all of them when there is none).
    User,
    /// Everything.
    Both,
}

/// Which frames a profile keeps. Build one from a [`ProfileKind`] or by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Which parts to keep.
    pub keep: Keep,
    /// Drop runtime frames at the leaf end of what is kept (unless every kept frame is runtime).
    pub elide_runtime_leaf: bool,
    /// Drop this many frames at the leaf end first (the profiler's own frames).
    pub skip: usize,
    /// Keep at most this many frames (the leaf-most ones); 0 = no limit. Cutting sets
    /// [`Kept::truncated`].
    pub max_depth: usize,
}

impl Policy {
    /// The default policy of `kind`.
    pub const fn for_kind(kind: ProfileKind) -> Policy {
        kind.policy()
    }

    /// Sets the skip count.
    pub const fn skip(mut self, n: usize) -> Policy {
        self.skip = n;
        self
    }

    /// Sets the maximum depth.
    pub const fn max_depth(mut self, n: usize) -> Policy {
        self.max_depth = n;
        self
    }

    /// Decides which frames of `frames` (leaf first, as captured) to keep. The result is a
    /// contiguous slice. No allocation; O(n) classifier lookups at most.
    pub fn apply(&self, frames: &[Frame], c: &Classifier) -> Kept {
        let n = frames.len();
        let start = self.skip.min(n);
        // The first frame reached through a system switch, after the skipped ones.
        let switch = frames[start..]
            .iter()
            .position(|f| f.via == Via::Transition && c.is_system_switch(f.transition))
            .map(|i| start + i);
        let (mut lo, hi) = match (self.keep, switch) {
            (Keep::Both, _) => (start, n),
            (Keep::User, Some(s)) => (s, n),
            (Keep::User, None) => (start, n),
            (Keep::System, Some(s)) => (start, s),
            (Keep::System, None) => (start, start),
        };
        if self.elide_runtime_leaf {
            let is_runtime = |i: usize| {
                c.is_runtime(&frames[i])
                    || switch.is_some_and(|s| i < s && c.system_side_is_runtime)
            };
            let first_user = (lo..hi).find(|&i| !is_runtime(i));
            if let Some(i) = first_user {
                lo = i;
            }
        }
        let mut kept = lo..hi;
        let mut truncated = false;
        if self.max_depth != 0 && kept.len() > self.max_depth {
            kept.end = kept.start + self.max_depth;
            truncated = true;
        }
        Kept {
            frames: kept,
            truncated,
        }
    }
}

/// The result of applying a policy: which frames to keep, and whether the policy cut the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// Indices of the kept frames (leaf first).
    pub frames: Span<usize>,
    /// Did `max_depth` cut frames (a profile should add a truncation marker)?
    pub truncated: bool,
}

impl Kept {
    /// The kept frames of `frames`.
    pub fn slice<'a>(&self, frames: &'a [Frame]) -> &'a [Frame] {
        frames.get(self.frames.clone()).unwrap_or(&[])
    }
}

/// Says whether a frame is "runtime" and which transitions are system switches.
///
/// Built outside signal context (it allocates); [`Classifier::is_runtime`] and
/// [`Classifier::is_system_switch`] are lookups in prepared tables: no allocation, no lock.
#[derive(Debug)]
pub struct Classifier {
    /// Sorted, merged runtime address ranges.
    ranges: Vec<Span<u64>>,
    /// Bit set over transition ids.
    system_switches: Box<[u64; 1024]>,
    /// Count frames on the system side of a switch as runtime.
    pub system_side_is_runtime: bool,
    /// Answers of [`Classifier::is_runtime`] by lookup pc, direct-mapped: `pc << 1 | runtime`
    /// (0: empty). A profiler's samples ask about the same few leaf frames again and again (a
    /// heap sample's first frames are the allocator's), and a hit skips the binary search over
    /// what can be thousands of ranges. Relaxed atomics: lock-free, async-signal-safe, and a
    /// racing writer only replaces one whole entry with another correct one.
    memo: Box<[AtomicU64; MEMO]>,
}

/// Entries in a [`Classifier`]'s memo.
const MEMO: usize = 256;

impl Clone for Classifier {
    fn clone(&self) -> Self {
        Classifier {
            ranges: self.ranges.clone(),
            system_switches: self.system_switches.clone(),
            system_side_is_runtime: self.system_side_is_runtime,
            memo: empty_memo(),
        }
    }
}

fn empty_memo() -> Box<[AtomicU64; MEMO]> {
    Box::new([const { AtomicU64::new(0) }; MEMO])
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Classifier {
    /// A classifier that knows no runtime code and no system switches. Frames on the system
    /// side of a system switch count as runtime (everything a runtime runs on its system stack
    /// is the runtime's, including glue such as closures and panic catching); turn that off
    /// with [`Classifier::system_side_runtime`].
    pub fn new() -> Self {
        Classifier {
            ranges: Vec::new(),
            system_switches: Box::new([0; 1024]),
            system_side_is_runtime: true,
            memo: empty_memo(),
        }
    }

    /// Marks code in `range` (a module, a function) as runtime.
    pub fn add_range(&mut self, range: Span<u64>) -> &mut Self {
        if range.start < range.end {
            let at = self.ranges.partition_point(|r| r.start < range.start);
            self.ranges.insert(at, range);
            self.merge();
        }
        self
    }

    /// Marks every function whose name starts with one of `prefixes` as runtime. `symbols`
    /// yields `(name, start, end)` runtime addresses (from a symbol table).
    pub fn add_symbol_prefixes<'a, I>(&mut self, symbols: I, prefixes: &[&str]) -> &mut Self
    where
        I: IntoIterator<Item = (&'a str, u64, u64)>,
    {
        for (name, lo, hi) in symbols {
            if lo < hi && prefixes.iter().any(|p| name.starts_with(p)) {
                self.ranges.push(lo..hi);
            }
        }
        self.ranges.sort_by_key(|r| r.start);
        self.merge();
        self
    }

    /// Marks transition `id` as a switch to a system stack (the boundary between the system
    /// and user parts).
    pub fn add_system_switch(&mut self, id: u16) -> &mut Self {
        self.system_switches[(id / 64) as usize] |= 1 << (id % 64);
        self
    }

    /// Whether frames found before a system switch count as runtime (the default: yes).
    pub fn system_side_runtime(&mut self, yes: bool) -> &mut Self {
        self.system_side_is_runtime = yes;
        self
    }

    fn merge(&mut self) {
        // The ranges change: forget every answer.
        for e in self.memo.iter() {
            e.store(0, Ordering::Relaxed);
        }
        let mut out: Vec<Span<u64>> = Vec::with_capacity(self.ranges.len());
        for r in self.ranges.drain(..) {
            match out.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        self.ranges = out;
    }

    /// Is this frame's code runtime code? A binary search over the prepared ranges, its answers
    /// remembered by pc (a direct-mapped memo, lock-free: safe in a signal handler).
    #[inline]
    pub fn is_runtime(&self, f: &Frame) -> bool {
        let pc = f.lookup_pc();
        // pc << 1 must not lose a bit (user addresses do not use the top one).
        if pc >> 63 != 0 || pc == 0 {
            return self.search(pc);
        }
        let slot = &self.memo[((pc ^ (pc >> 9)) as usize) % MEMO];
        let e = slot.load(Ordering::Relaxed);
        if e >> 1 == pc {
            return e & 1 != 0;
        }
        let yes = self.search(pc);
        slot.store(pc << 1 | yes as u64, Ordering::Relaxed);
        yes
    }

    /// [`Classifier::is_runtime`] without the memo: the binary search.
    #[inline]
    fn search(&self, pc: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.start <= pc);
        i > 0 && pc < self.ranges[i - 1].end
    }

    /// Is transition `id` a system switch?
    #[inline]
    pub fn is_system_switch(&self, id: u16) -> bool {
        id != 0 && self.system_switches[(id / 64) as usize] & (1 << (id % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module docs' example, leaf first. Runtime functions live at 0x1000.., user ones at
    /// 0x9000..; transition 5 is the system switch.
    fn example() -> (Vec<Frame>, Classifier, Vec<&'static str>) {
        let names = vec![
            "runtime.recordEvent",
            "runtime.interestingEvent",
            "runtime.bar.func1",
            "runtime.systemstack",
            "runtime.bar",
            "main.foo",
            "main.main",
        ];
        let pcs = [0x1010, 0x1110, 0x1210, 0x1310, 0x1410, 0x9010, 0x9110];
        let mut frames: Vec<Frame> = pcs
            .iter()
            .map(|&pc| Frame {
                pc,
                via: Via::FramePointer,
                ..Frame::EMPTY
            })
            .collect();
        for f in &mut frames[4..] {
            f.stack = 1;
        }
        frames[4].via = Via::Transition;
        frames[4].transition = 5;
        let mut c = Classifier::new();
        let syms = names
            .iter()
            .zip(pcs)
            .map(|(n, pc)| (*n, pc - 0x10, pc + 0xf0));
        c.add_symbol_prefixes(syms, &["runtime."]);
        c.add_system_switch(5);
        (frames, c, names)
    }

    fn kept(kind: ProfileKind, p: Option<Policy>) -> Vec<&'static str> {
        let (frames, c, names) = example();
        let k = p.unwrap_or(kind.policy()).apply(&frames, &c);
        names[k.frames].to_vec()
    }

    #[test]
    fn the_table() {
        let all = example().2;
        assert_eq!(kept(ProfileKind::Cpu, None), all);
        assert_eq!(kept(ProfileKind::RuntimeLock, None), all);
        assert_eq!(kept(ProfileKind::Heap, None), vec!["main.foo", "main.main"]);
        let user = vec!["runtime.bar", "main.foo", "main.main"];
        assert_eq!(kept(ProfileKind::Block, None), user);
        assert_eq!(kept(ProfileKind::Mutex, None), user);
        assert_eq!(kept(ProfileKind::Trace, None), user);
        let system = Policy {
            keep: Keep::System,
            ..ProfileKind::Cpu.policy()
        };
        assert_eq!(kept(ProfileKind::Cpu, Some(system)), all[..4].to_vec());
    }

    #[test]
    fn heap_keeps_runtime_frames_above_the_first_user_frame() {
        let (mut frames, mut c, _) = example();
        // main.main -> runtime.start (root end) is runtime too: kept.
        frames.push(Frame {
            pc: 0x1510,
            stack: 1,
            ..Frame::EMPTY
        });
        c.add_range(0x1500..0x1600);
        let k = ProfileKind::Heap.policy().apply(&frames, &c);
        assert_eq!(k.frames, 5..8);
    }

    #[test]
    fn all_runtime_heap_trace_is_kept_whole() {
        let (frames, c, _) = example();
        let k = ProfileKind::Heap.policy().apply(&frames[..5], &c);
        assert_eq!(k.frames, 0..5);
    }

    #[test]
    fn no_transition() {
        let (mut frames, c, _) = example();
        frames[4].via = Via::FramePointer;
        frames[4].transition = 0;
        assert_eq!(ProfileKind::Block.policy().apply(&frames, &c).frames, 0..7);
        assert_eq!(ProfileKind::Heap.policy().apply(&frames, &c).frames, 5..7);
        let sys = Policy {
            keep: Keep::System,
            ..ProfileKind::Cpu.policy()
        };
        assert!(sys.apply(&frames, &c).frames.is_empty());
    }

    #[test]
    fn a_transition_that_is_not_a_system_switch_does_not_split() {
        let (mut frames, c, _) = example();
        frames[4].transition = 6; // e.g. a signal frame
        assert_eq!(ProfileKind::Block.policy().apply(&frames, &c).frames, 0..7);
    }

    #[test]
    fn two_nested_transitions() {
        // A signal handler's frames (stack 0), a signal transition (id 9) onto the system stack
        // (stack 1), then the system switch (id 5) onto the user stack (stack 2).
        let (mut frames, c, _) = example();
        let mut handler = vec![
            Frame {
                pc: 0x1710,
                via: Via::FramePointer,
                ..Frame::EMPTY
            };
            2
        ];
        for f in &mut frames {
            f.stack += 1;
        }
        frames[0].via = Via::Transition;
        frames[0].transition = 9;
        handler.extend(frames);
        let k = ProfileKind::Block.policy().apply(&handler, &c);
        assert_eq!(k.frames, 6..9);
        let k = ProfileKind::Heap.policy().apply(&handler, &c);
        // Everything before the system switch is the system side, hence runtime, and so is
        // runtime.bar: the heap sample ends at main.foo.
        assert_eq!(k.frames, 7..9);
        let mut c = c;
        c.system_side_runtime(false);
        // Judged by symbols alone, the handler frames at 0x1710 are not runtime.
        let k = ProfileKind::Heap.policy().apply(&handler, &c);
        assert_eq!(k.frames, 0..9);
    }

    #[test]
    fn skip_and_max_depth() {
        let (frames, c, _) = example();
        let p = ProfileKind::Cpu.policy().skip(2);
        assert_eq!(p.apply(&frames, &c).frames, 2..7);
        let p = ProfileKind::Cpu.policy().skip(100);
        assert_eq!(p.apply(&frames, &c).frames, 7..7);
        assert!(p.apply(&frames, &c).slice(&frames).is_empty());
        // Skipping past the switch: no system part left, the user part is what remains.
        let p = ProfileKind::Block.policy().skip(5);
        assert_eq!(p.apply(&frames, &c).frames, 5..7);
        // Max depth cuts the user part at the root end and says so.
        let p = ProfileKind::Block.policy().max_depth(2);
        let k = p.apply(&frames, &c);
        assert_eq!((k.frames, k.truncated), (4..6, true));
        let p = ProfileKind::Block.policy().max_depth(3);
        assert!(!p.apply(&frames, &c).truncated);
        assert!(ProfileKind::Cpu.policy().apply(&[], &c).frames.is_empty());
    }

    #[test]
    fn classifier_ranges_merge() {
        let mut c = Classifier::new();
        c.add_range(10..20)
            .add_range(15..30)
            .add_range(40..50)
            .add_range(5..5);
        let f = |pc: u64| Frame {
            pc: pc + 1,
            ..Frame::EMPTY
        };
        assert!(!c.is_runtime(&f(9)));
        assert!(c.is_runtime(&f(10)));
        assert!(c.is_runtime(&f(29)));
        assert!(!c.is_runtime(&f(30)));
        assert!(c.is_runtime(&f(45)));
        assert!(!c.is_system_switch(0));
        c.add_system_switch(65535);
        assert!(c.is_system_switch(65535));
        assert!(!c.is_system_switch(65534));
    }

    #[test]
    fn kinds_parse() {
        for k in ProfileKind::ALL {
            assert_eq!(ProfileKind::parse(k.name()), Some(k));
        }
        assert_eq!(ProfileKind::parse("lock"), Some(ProfileKind::RuntimeLock));
        assert_eq!(ProfileKind::parse("nope"), None);
    }

    /// The memo answers as the search does: across collisions (pcs sharing slots), after the
    /// ranges change (it forgets), in a clone, and for pcs it cannot hold.
    #[test]
    fn is_runtime_memo_agrees_with_the_search() {
        let frame = |pc: u64| Frame {
            pc,
            stack: 0,
            via: Via::Regs,
            flags: Frame::EXACT,
            transition: 0,
        };
        let mut c = Classifier::new();
        c.add_range(0x1000..0x2000).add_range(0x5000..0x5800);
        let pcs: Vec<u64> = (0..4096u64)
            .map(|i| i * 0x7 + 0xf00)
            .chain([0, 1 << 63, u64::MAX, 0x1fff, 0x2000])
            .collect();
        for round in 0..3 {
            for &pc in &pcs {
                let f = frame(pc);
                assert_eq!(c.is_runtime(&f), c.search(pc), "{pc:#x} round {round}");
            }
            if round == 0 {
                // Every answer about 0x2000..0x3000 changes.
                c.add_range(0x2000..0x3000);
                assert!(c.is_runtime(&frame(0x2800)));
            } else if round == 1 {
                c = c.clone();
            }
        }
        assert!(c.is_runtime(&frame(0x1fff)) && !c.is_runtime(&frame(0x3000)));
    }
}

//! `policy`: arbitrary traces through an arbitrary [`Policy`] and [`Classifier`].
//!
//! # Input format
//! ```text
//! flags u8        bits 0-1 keep (0 system, 1 user, else both), bit 2 elide runtime leaf,
//!                 bit 3 system side is NOT runtime, bit 4 use ProfileKind::ALL[kind % 6]
//! kind u8
//! skip u16, max_depth u16
//! n u8 (% 16)     runtime ranges: lo u16, len u16 (bit 15 of len: raw u64 lo and hi instead)
//! n u8 (% 8)      symbols: name (len u8 % 16, bytes), lo u16, len u16
//! n u8 (% 4)      prefixes: len u8 % 8, bytes
//! n u8 (% 8)      system switch ids: u8
//! n u16 (% 512)   frames: pc u16, stack u8, via u8 % 4, flags u8, transition u8
//! ```
//!
//! # What it checks
//! No panic; [`Classifier::is_runtime`] and [`Classifier::is_system_switch`] agree with a
//! linear scan of what was added; the kept frames are a slice of the trace that honours skip,
//! the system/user split, the runtime-leaf elision and max depth as the module docs say.

use super::Bytes;
use unwind::policy::{Classifier, Keep, Policy, ProfileKind};
use unwind::{Frame, Via};

struct Reference {
    ranges: Vec<(u64, u64)>,
    switches: Vec<u16>,
    system_side_is_runtime: bool,
}

impl Reference {
    fn is_runtime(&self, f: &Frame) -> bool {
        let pc = f.lookup_pc();
        self.ranges.iter().any(|&(lo, hi)| lo <= pc && pc < hi)
    }
    fn is_switch(&self, f: &Frame) -> bool {
        f.via == Via::Transition && f.transition != 0 && self.switches.contains(&f.transition)
    }
}

fn string(b: &mut Bytes<'_>, max: u8) -> String {
    let n = b.u8() % max;
    String::from_utf8_lossy(b.take(n as usize)).into_owned()
}

/// The `policy` harness.
pub fn policy(data: &[u8]) {
    let mut b = Bytes::new(data);
    let flags = b.u8();
    let kind = ProfileKind::ALL[(b.u8() % 6) as usize];
    let mut p = if flags & 0x10 != 0 {
        kind.policy()
    } else {
        Policy {
            keep: match flags & 3 {
                0 => Keep::System,
                1 => Keep::User,
                _ => Keep::Both,
            },
            elide_runtime_leaf: flags & 4 != 0,
            skip: 0,
            max_depth: 0,
        }
    };
    p = p.skip(b.u16() as usize).max_depth(b.u16() as usize);

    let mut c = Classifier::new();
    let mut reference = Reference {
        ranges: Vec::new(),
        switches: Vec::new(),
        system_side_is_runtime: flags & 8 == 0,
    };
    c.system_side_runtime(reference.system_side_is_runtime);
    for _ in 0..b.u8() % 16 {
        let (lo, len) = (b.u16() as u64, b.u16() as u64);
        let (lo, hi) = if len & 0x8000 != 0 {
            (b.u64(), b.u64())
        } else {
            (lo, lo + len)
        };
        c.add_range(lo..hi);
        if lo < hi {
            reference.ranges.push((lo, hi));
        }
    }
    let mut symbols = Vec::new();
    for _ in 0..b.u8() % 8 {
        let name = string(&mut b, 16);
        let lo = b.u16() as u64;
        symbols.push((name, lo, lo + b.u16() as u64));
    }
    let prefixes: Vec<String> = (0..b.u8() % 4).map(|_| string(&mut b, 8)).collect();
    let prefix_refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    c.add_symbol_prefixes(
        symbols.iter().map(|(n, lo, hi)| (n.as_str(), *lo, *hi)),
        &prefix_refs,
    );
    for (n, lo, hi) in &symbols {
        if lo < hi && prefixes.iter().any(|p| n.starts_with(p.as_str())) {
            reference.ranges.push((*lo, *hi));
        }
    }
    for _ in 0..b.u8() % 8 {
        let id = b.u8() as u16;
        c.add_system_switch(id);
        reference.switches.push(id);
    }
    let n = (b.u16() % 512) as usize;
    let frames: Vec<Frame> = (0..n)
        .map(|_| Frame {
            pc: b.u16() as u64,
            stack: b.u8() as u16,
            via: match b.u8() % 4 {
                0 => Via::Regs,
                1 => Via::FramePointer,
                2 => Via::Transition,
                _ => Via::Dwarf,
            },
            flags: b.u8(),
            transition: b.u8() as u16,
        })
        .collect();

    // The classifier agrees with a linear scan.
    for f in &frames {
        assert_eq!(
            c.is_runtime(f),
            reference.is_runtime(f),
            "is_runtime({f:?})"
        );
        assert_eq!(
            c.is_system_switch(f.transition),
            f.transition != 0 && reference.switches.contains(&f.transition)
        );
    }

    check(&p, &frames, &c, &reference);
    for k in ProfileKind::ALL {
        check(&k.policy(), &frames, &c, &reference);
    }
}

fn check(p: &Policy, frames: &[Frame], c: &Classifier, r: &Reference) {
    let kept = p.apply(frames, c);
    let n = frames.len();
    let (lo, hi) = (kept.frames.start, kept.frames.end);
    assert!(lo <= hi && hi <= n, "{kept:?} of {n}");
    assert_eq!(kept.slice(frames), &frames[lo..hi]);

    let start = p.skip.min(n);
    let switch = (start..n).find(|&i| r.is_switch(&frames[i]));
    let (part_lo, part_hi) = match (p.keep, switch) {
        (Keep::Both, _) => (start, n),
        (Keep::User, Some(s)) => (s, n),
        (Keep::User, None) => (start, n),
        (Keep::System, Some(s)) => (start, s),
        (Keep::System, None) => (start, start),
    };
    let runtime = |i: usize| {
        r.is_runtime(&frames[i]) || (r.system_side_is_runtime && switch.is_some_and(|s| i < s))
    };
    // Elision: everything dropped at the leaf end is runtime, and the first kept frame is not
    // (unless the whole part is runtime, which is then kept whole).
    assert!(
        lo >= part_lo,
        "{kept:?} starts before the part {part_lo}..{part_hi}"
    );
    if !p.elide_runtime_leaf || part_lo == part_hi {
        assert_eq!(lo, part_lo, "{p:?} {kept:?}");
    } else {
        assert!(
            (part_lo..lo).all(runtime),
            "a non-runtime frame elided: {kept:?}"
        );
        if lo == part_lo {
            assert!(
                !runtime(lo) || (part_lo..part_hi).all(runtime),
                "a runtime leaf frame kept: {kept:?}"
            );
        } else {
            assert!(lo < part_hi && !runtime(lo), "{kept:?}");
        }
    }
    // Max depth cuts at the root end.
    let uncut = part_hi - lo;
    if p.max_depth != 0 && uncut > p.max_depth {
        assert_eq!((hi - lo, kept.truncated), (p.max_depth, true), "{kept:?}");
    } else {
        assert_eq!((hi, kept.truncated), (part_hi, false), "{kept:?}");
    }
}

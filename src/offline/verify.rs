//! Verification: the same stack unwound with frame records and with DWARF CFI, compared frame
//! by frame.
//!
//! The CFI is the ground truth a compiler emits; frame records are what a fast profiler uses.
//! [`compare`] names every difference, so a user can tell whether their frame-pointer stacks can
//! be trusted: a frame only DWARF found is [`Difference::Missing`] (FP skipped or truncated), a
//! frame only FP found is [`Difference::Extra`], and a different return address at the same
//! depth is [`Difference::DifferentPc`].

use crate::frame::{Frame, StopReason, Trace};

/// One named difference between an FP trace and a DWARF trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Difference {
    /// DWARF found this frame (at `index` in the DWARF trace); FP did not.
    Missing {
        /// Index in the DWARF trace.
        index: usize,
        /// The frame's pc.
        pc: u64,
    },
    /// FP found this frame (at `index` in the FP trace); DWARF did not.
    Extra {
        /// Index in the FP trace.
        index: usize,
        /// The frame's pc.
        pc: u64,
    },
    /// Both have a frame at this position, with different pcs.
    DifferentPc {
        /// Index in the FP trace.
        fp_index: usize,
        /// Index in the DWARF trace.
        dwarf_index: usize,
        /// FP's pc.
        fp: u64,
        /// DWARF's pc.
        dwarf: u64,
    },
}

impl core::fmt::Display for Difference {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Difference::Missing { index, pc } => {
                write!(f, "missing frame: dwarf #{index} {pc:#x} not found by fp")
            }
            Difference::Extra { index, pc } => {
                write!(f, "extra frame: fp #{index} {pc:#x} not found by dwarf")
            }
            Difference::DifferentPc {
                fp_index,
                dwarf_index,
                fp,
                dwarf,
            } => write!(
                f,
                "different pc: fp #{fp_index} {fp:#x} vs dwarf #{dwarf_index} {dwarf:#x}"
            ),
        }
    }
}

/// The comparison of two traces of one stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Frames in the FP trace.
    pub fp_len: usize,
    /// Frames in the DWARF trace.
    pub dwarf_len: usize,
    /// Frames both agree on.
    pub agreed: usize,
    /// Why each walk stopped.
    pub fp_stop: StopReason,
    /// Why the DWARF walk stopped.
    pub dwarf_stop: StopReason,
    /// The differences, leaf first.
    pub differences: Vec<Difference>,
}

impl Verdict {
    /// Do the traces agree on every frame?
    pub fn agrees(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Compares an FP trace with a DWARF trace of the same stack (leaf first), aligning them with a
/// longest-common-subsequence over pcs, so one skipped frame shows as one
/// [`Difference::Missing`] rather than a cascade of different pcs. Quadratic in the trace
/// lengths (bounded by the buffers, at most a few thousand frames).
pub fn compare(
    fp: &[Frame],
    fp_stop: StopReason,
    dwarf: &[Frame],
    dwarf_stop: StopReason,
) -> Verdict {
    let (n, m) = (fp.len(), dwarf.len());
    // lcs[i][j]: LCS length of fp[i..] and dwarf[j..].
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if fp[i].pc == dwarf[j].pc {
                lcs[at(i + 1, j + 1)] + 1
            } else {
                lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut differences = Vec::new();
    let mut agreed = 0;
    while i < n || j < m {
        if i < n && j < m && fp[i].pc == dwarf[j].pc {
            agreed += 1;
            i += 1;
            j += 1;
        } else if i < n && j < m && lcs[at(i + 1, j + 1)] == lcs[at(i, j)] {
            // Neither frame is part of the alignment here: same position, different pc.
            differences.push(Difference::DifferentPc {
                fp_index: i,
                dwarf_index: j,
                fp: fp[i].pc,
                dwarf: dwarf[j].pc,
            });
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[at(i, j + 1)] >= lcs[at(i + 1, j)]) {
            differences.push(Difference::Missing {
                index: j,
                pc: dwarf[j].pc,
            });
            j += 1;
        } else {
            differences.push(Difference::Extra {
                index: i,
                pc: fp[i].pc,
            });
            i += 1;
        }
    }
    Verdict {
        fp_len: n,
        dwarf_len: m,
        agreed,
        fp_stop,
        dwarf_stop,
        differences,
    }
}

/// Captures the current stack with frame records and with `unwinder`'s CFI, and compares.
/// Both captures start at the caller of `verify_here`. Allocates (not for signal handlers).
#[inline(never)]
pub fn verify_here(unwinder: &crate::dwarf::Unwinder, max_frames: usize) -> Verdict {
    let mut a = vec![Frame::EMPTY; max_frames];
    let mut b = vec![Frame::EMPTY; max_frames];
    let ta: Trace = crate::dwarf::capture(&mut a, unwinder, crate::Mode::FramePointer);
    let tb: Trace = crate::dwarf::capture(&mut b, unwinder, crate::Mode::Dwarf);
    // Frame 0 of each is its own call site inside this function: start at our caller.
    compare(
        a.get(1..ta.len).unwrap_or(&[]),
        ta.stop,
        b.get(1..tb.len).unwrap_or(&[]),
        tb.stop,
    )
}

/// One thread of a core, verified.
#[derive(Clone, Debug)]
pub struct ThreadVerdict {
    /// Thread id.
    pub tid: u32,
    /// FP vs DWARF.
    pub verdict: Verdict,
}

/// Unwinds every thread of `core` with frame records and with DWARF CFI (policy ignored) and
/// compares them. Returns the verdicts and the DWARF report (its symbols name the pcs).
pub fn verify_core(
    core: &crate::core_file::Core,
    opts: &crate::offline::Options,
) -> Result<(Vec<ThreadVerdict>, crate::offline::Report), crate::core_file::CoreError> {
    let mut o = opts.clone();
    o.policy = None;
    o.mode = crate::Mode::FramePointer;
    let fp = crate::offline::unwind_core(core, &o)?;
    o.mode = crate::Mode::Dwarf;
    let dw = crate::offline::unwind_core(core, &o)?;
    // Each walk's stop as `unwind stack` reports it. (The raw reasons, `no unwind information`
    // where `stack` said `end`, made verify contradict it on every Go core: found by outside
    // use in the twenty-seventh round.)
    let verdicts = fp
        .threads
        .iter()
        .zip(&dw.threads)
        .map(|(a, b)| ThreadVerdict {
            tid: a.tid,
            verdict: compare(&a.frames, a.reported_stop(), &b.frames, b.reported_stop()),
        })
        .collect();
    Ok((verdicts, dw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Via;

    fn fr(pcs: &[u64]) -> Vec<Frame> {
        pcs.iter()
            .map(|&pc| Frame {
                pc,
                stack: 0,
                via: Via::FramePointer,
                flags: 0,
                transition: 0,
            })
            .collect()
    }

    #[test]
    fn names_differences() {
        let e = StopReason::End;
        let v = compare(&fr(&[1, 2, 3]), e, &fr(&[1, 2, 3]), e);
        assert!(v.agrees());
        assert_eq!(v.agreed, 3);
        let v = compare(&fr(&[1, 3, 4]), e, &fr(&[1, 2, 3, 4]), e);
        assert_eq!(v.differences, vec![Difference::Missing { index: 1, pc: 2 }]);
        let v = compare(&fr(&[1, 2, 9, 3]), e, &fr(&[1, 2, 3]), e);
        assert_eq!(v.differences, vec![Difference::Extra { index: 2, pc: 9 }]);
        let v = compare(&fr(&[1, 7, 3]), e, &fr(&[1, 8, 3]), e);
        assert_eq!(
            v.differences,
            vec![Difference::DifferentPc {
                fp_index: 1,
                dwarf_index: 1,
                fp: 7,
                dwarf: 8
            }]
        );
        // FP truncated: the rest is missing.
        let v = compare(&fr(&[1]), e, &fr(&[1, 2, 3]), e);
        assert_eq!(v.differences.len(), 2);
        assert!(v.to_string_all().contains("missing frame"));
    }

    impl Verdict {
        fn to_string_all(&self) -> String {
            self.differences.iter().map(|d| d.to_string()).collect()
        }
    }
}

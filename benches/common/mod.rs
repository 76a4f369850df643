//! What the benches share: reading criterion's results back for their summary tables.

use std::path::Path;

/// The median (ns) criterion estimated for benchmark `id`, its path under `target/criterion`
/// (`"capture/unwind/32"`), from the last run's `new/estimates.json`; `None` when the bench
/// did not run (filtered out) or the file is not as expected.
pub fn median_ns(id: &str) -> Option<f64> {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()?
        .join("criterion")
        .join(id)
        .join("new")
        .join("estimates.json");
    let s = std::fs::read_to_string(p).ok()?;
    let rest = &s[s.find("\"median\"")?..];
    let at = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let end = rest[at..].find([',', '}'])?;
    rest[at..at + end].trim().parse().ok()
}

/// Interleaved rounds of `a` and `b` at the same place (the order alternating; each side runs
/// `iters` calls per round): the median, first and third quartile of the per-round ratio
/// time(a) / time(b). Criterion times each function for seconds apart, and on a shared
/// machine whose speed drifts between them a ratio of its medians can be off by tens of
/// percent; rounds a few milliseconds long see the same machine.
#[allow(dead_code)]
pub fn paired_ratio(
    rounds: usize,
    iters: u64,
    mut a: impl FnMut(),
    mut b: impl FnMut(),
) -> (f64, f64, f64) {
    let time = |f: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        for _ in 0..iters {
            f();
        }
        t.elapsed().as_secs_f64()
    };
    let mut r: Vec<f64> = (0..rounds)
        .map(|i| {
            let (ta, tb) = if i % 2 == 0 {
                let ta = time(&mut a);
                (ta, time(&mut b))
            } else {
                let tb = time(&mut b);
                (time(&mut a), tb)
            };
            ta / tb.max(1e-12)
        })
        .collect();
    r.sort_by(|x, y| x.total_cmp(y));
    (r[rounds / 2], r[rounds / 4], r[3 * rounds / 4])
}

/// `paired_ratio`'s result as "1.23x (quartiles 1.20x 1.27x)".
#[allow(dead_code)]
pub fn fmt_ratio((m, q1, q3): (f64, f64, f64)) -> String {
    format!("{m:.2}x (quartiles {q1:.2}x {q3:.2}x)")
}

/// A `len`-word buffer whose address has the same offset in its 4 KiB page as `like`: a bench
/// comparing two walkers gives each its output at the same place against the stack (a store to
/// the output and a load of a frame record 4 KiB apart look dependent to the CPU, and stall it;
/// two buffers at different offsets made one side pay that and not the other). Returns the
/// storage and the index where the buffer starts.
#[allow(dead_code)]
pub fn words_like<T>(like: *const T, len: usize) -> (Vec<u64>, usize) {
    let v = vec![0u64; len + 512];
    let want = like as usize % 4096;
    let have = v.as_ptr() as usize % 4096;
    (v, (want + 4096 - have) % 4096 / 8)
}

/// [`paired_ratio`] of a walker that writes words (`walk`, into a `depth`-word buffer at the
/// same offset in its page as `like`: see [`words_like`]; it must walk `depth` frames) against
/// `other`: time(walk) / time(other).
#[allow(dead_code)]
pub fn paired_words<T>(
    like: *const T,
    depth: usize,
    iters: u64,
    mut walk: impl FnMut(&mut [u64]) -> usize,
    other: impl FnMut(),
) -> (f64, f64, f64) {
    let (mut words, at) = words_like(like, depth);
    let out = &mut words[at..at + depth];
    paired_ratio(
        41,
        iters,
        || assert_eq!(std::hint::black_box(walk(out)), depth),
        other,
    )
}

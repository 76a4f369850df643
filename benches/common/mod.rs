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

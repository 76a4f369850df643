#!/usr/bin/env bash
# fuzz/run.sh SECONDS [TARGET...]: runs each cargo-fuzz target (default: all) for SECONDS, one
# after another, in one process each (the machine is shared: no parallel jobs), starting from the
# committed seed corpus fuzz/corpus/TARGET. New inputs go to a scratch corpus
# ($FUZZ_WORK/TARGET, default fuzz/target/work), so the committed corpus only changes by hand
# (see fuzz/README.md). Crashes are written to fuzz/artifacts/TARGET/.
#
# Bounded: -max_total_time=SECONDS, -rss_limit_mb=2048 (OOM), -timeout=10 (a hang is a crash),
# -malloc_limit_mb=1024. Needs nightly Rust and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# Prints one summary line per target (executions, new inputs, peak RSS) and exits 1 if any
# target found a crash, hang or OOM.
set -uo pipefail
secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
work="${FUZZ_WORK:-$here/target/work}"
logs="$work/logs"
mkdir -p "$logs"
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "$here/corpus/$t"
  log="$logs/$t.log"
  echo "== fuzz $t for ${secs}s (log: $log)"
  cargo +nightly fuzz run "$t" "$work/$t" "$here/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  new=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  echo "$t: rc=$rc execs=${execs:-?} exec/s=${rate:-?} new_units=${new:-?} peak_rss_mb=${rss:-?} ${cov}"
  if [ $rc -ne 0 ]; then
    failed+=("$t")
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written|deadly signal|timeout|out-of-memory' "$log" | head -20
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failures in: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "fuzz: no crash, hang or OOM in ${targets[*]}"

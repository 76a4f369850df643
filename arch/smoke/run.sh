#!/usr/bin/env bash
# Builds arch/smoke/aarch64_smoke.rs with Debian's rustc for aarch64 and runs it under
# qemu-aarch64. Needs: rustc libstd-rust-dev:arm64 gcc-aarch64-linux-gnu qemu-user (see .ci/run).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${TMPDIR:-/tmp}/unwind-aarch64-smoke"
mkdir -p "$out"
/usr/bin/rustc --edition 2021 --target aarch64-unknown-linux-gnu -C linker=aarch64-linux-gnu-gcc \
  -C force-frame-pointers=yes -C opt-level=1 -o "$out/smoke" "$here/aarch64_smoke.rs"
qemu-aarch64 -L /usr/aarch64-linux-gnu "$out/smoke"

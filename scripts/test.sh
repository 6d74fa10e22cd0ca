#!/usr/bin/env bash
# Runs the whole test suite, as root (the integration tests start real
# containers: namespaces, cgroups, overlayfs, bridges, nftables).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla-target}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Build every binary first: the end-to-end tests package the demo program
# into a test image.
cargo build --workspace --all-targets
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast -- --test-threads="${FLOTILLA_TEST_THREADS:-2}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo prints one per test binary).
passed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^passed/) p += $i } END { print p + 0 }' "$log")
failed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^failed/) f += $i } END { print f + 0 }' "$log")
echo
echo "summary: ${passed:-0} passed, ${failed:-0} failed"
exit "$status"

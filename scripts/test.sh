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
cargo test --workspace --no-fail-fast -- --test-threads="${FLOTILLA_TEST_THREADS:-2}"

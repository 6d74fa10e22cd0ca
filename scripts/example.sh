#!/usr/bin/env bash
# Brings up the example stack (examples/hello) on this machine, as root:
# installs system packages, builds flotilla and the demo image offline,
# imports the image, and runs `flotilla up -d`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla-target}"

cargo build --release -p flotilla
install -m 0755 "$CARGO_TARGET_DIR/release/flotilla" /usr/local/bin/flotilla
install -m 0755 "$CARGO_TARGET_DIR/release/flotilla-shim-monitor" /usr/local/bin/flotilla-shim-monitor

tarball=$(mktemp --suffix=.tar)
trap 'rm -f "$tarball"' EXIT
bash examples/build-demo-image.sh "$tarball"
flotilla image import --change 'CMD ["/demo", "help"]' "$tarball" flotilla-demo:latest

cd examples/hello
flotilla up -d
flotilla ps
echo
echo "The stack runs. Try: cd examples/hello && flotilla logs -f   (and flotilla down to remove it)"

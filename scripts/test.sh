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
retry_log=$(mktemp)
trap 'rm -f "$log" "$retry_log"' EXIT
set +e
cargo test --workspace --no-fail-fast -- --test-threads="${FLOTILLA_TEST_THREADS:-2}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
count() { # count LOG WORD: the sum of "N WORD" over the "test result:" lines
  awk -v w="$2" '/^test result:/ { for (i = 1; i < NF; i++) if ($(i+1) ~ "^" w) n += $i } END { print n + 0 }' "$1"
}
passed=$(count "$log" passed)
failed=$(count "$log" failed)
# The integration tests start real containers, daemons and namespaces on a
# shared 2-core machine; a test that failed is run once more, alone, and
# reported by name either way. It counts as failed only if it fails again.
flaky=""
if [ "$status" -ne 0 ]; then
  mapfile -t names < <(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$log" | sort -u)
  if [ "${#names[@]}" -gt 0 ] && [ "${#names[@]}" -le 10 ]; then
    echo
    echo "re-running the ${#names[@]} failed test(s) once: ${names[*]}"
    set +e
    cargo test --workspace --no-fail-fast -- --test-threads=1 --exact "${names[@]}" 2>&1 | tee "$retry_log"
    retry_status=${PIPESTATUS[0]}
    set -e
    again=$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$retry_log" | sort -u)
    compiled_ok=$(grep -c '^test result:' "$retry_log" || true)
    if [ "$retry_status" -eq 0 ] && [ "$compiled_ok" -gt 0 ]; then
      flaky="${names[*]}"
      passed=$((passed + ${#names[@]}))
      failed=0
      status=0
    else
      failed=$(printf '%s\n' "$again" | grep -c . || true)
    fi
  fi
fi
echo
if [ -n "$flaky" ]; then
  echo "FLAKY (failed, then passed when run again alone): $flaky"
fi
echo "summary: ${passed:-0} passed, ${failed:-0} failed"
exit "$status"

#!/bin/sh
# Builds the static `demo` binary and packs a minimal root filesystem tarball
# for `flotilla image import`:
#
#   /demo            the binary (static, stripped)
#   /etc/passwd      root and nobody
#   /etc/group       root and nogroup
#   /tmp             mode 1777
#
# Usage: examples/build-demo-image.sh [OUTPUT.tar]   (default /tmp/flotilla-demo-rootfs.tar)
#
# The tarball is reproducible: fixed owners, modes, order and timestamps, so
# the same binary always gives the same image digest.
set -eu

out=${1:-/tmp/flotilla-demo-rootfs.tar}
repo=$(cd "$(dirname "$0")/.." && pwd)
target=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-$repo/target}

# glibc with +crt-static gives a static-pie binary. `--target` keeps the flag
# away from build scripts and proc macros, which must stay dynamic.
RUSTFLAGS='-C target-feature=+crt-static' \
CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked -p flotilla-demo --target "$target" \
    --manifest-path "$repo/Cargo.toml"

bin=$target_dir/$target/release/flotilla-demo
[ -x "$bin" ] || { echo "build-demo-image: no binary at $bin (is CARGO_TARGET_DIR set the same as for the build?)" >&2; exit 1; }
if ldd "$bin" >/dev/null 2>&1 && ! ldd "$bin" 2>&1 | grep -q 'statically linked'; then
    echo "build-demo-image: $bin is dynamically linked:" >&2
    ldd "$bin" >&2
    exit 1
fi

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT INT TERM
mkdir -p "$staging/etc" "$staging/tmp"
install -m 0755 "$bin" "$staging/demo"
printf 'root:x:0:0:root:/:/demo\nnobody:x:65534:65534:nobody:/nonexistent:/demo\n' >"$staging/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$staging/etc/group"
chmod 0644 "$staging/etc/passwd" "$staging/etc/group"
chmod 0755 "$staging/etc"
chmod 1777 "$staging/tmp"

mkdir -p "$(dirname "$out")"
tar --create --file "$out" --directory "$staging" \
    --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu \
    demo etc tmp
echo "wrote $out ($(wc -c <"$out") bytes; /demo is $(wc -c <"$bin") bytes)"

#!/usr/bin/env bash
# Installs the system packages Flotilla needs to build and run (Debian 12,
# as root). Safe to run again: installs only what is missing.
set -euo pipefail

pkgs=(
  build-essential pkg-config   # C toolchain for -sys crates
  libseccomp-dev               # youki's libcontainer (seccomp filters)
  nftables                     # Flotilla's firewall and NAT rules
  iproute2 util-linux procps   # ip, nsenter (tests), ps
  busybox-static               # offline test images
  ca-certificates git openssl
  docker-registry apache2-utils skopeo   # registry pull/push tests
  runc                         # baseline for the runtime benchmark
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "installing the Rust toolchain with rustup (rust-toolchain.toml pins the version)" >&2
    apt-get install -y -qq curl
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

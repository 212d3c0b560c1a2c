#!/usr/bin/env bash
# The README's test command: installs what is missing, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh "$@")"

cargo test --workspace --locked

# The shared crate and the device's protocol core must build for a
# bare-metal target without an allocator.
target=thumbv7em-none-eabihf
if rustup target list --installed 2>/dev/null | grep -qx "$target" \
  || timeout 300 rustup target add "$target" >/dev/null 2>&1; then
  cargo build --locked -p gaussedge-shared --no-default-features --target "$target"
  cargo build --locked -p gaussedge-firmware --target "$target"
  echo "no_std builds (shared; firmware: protocol server and persistence) for $target: ok"
else
  echo "no_std build for $target: skipped (rustup could not add the target here)"
fi

# ARM edge devices (Raspberry Pi, Jetson): the crates a device runs, built
# for aarch64 and tested under qemu-user (.cargo/config.toml names the
# linker and the runner). On ARM a one-thread load runs tract's own
# kernels and a split load the project's portable ones; the backbone's
# tests hold both to tract's features.
arm=aarch64-unknown-linux-gnu
arm_packages=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
arm_missing=()
for p in "${arm_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || arm_missing+=("$p")
done
if [ "${#arm_missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${arm_missing[@]}"; } >/dev/null 2>&1 || true
fi
if command -v qemu-aarch64 >/dev/null 2>&1 && command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 \
  && { rustup target list --installed 2>/dev/null | grep -qx "$arm" || timeout 300 rustup target add "$arm" >/dev/null 2>&1; }; then
  cargo test --locked --target "$arm" -p gaussedge-shared -p gaussedge-bundle -p gaussedge-firmware -p gaussedge-data \
    -p gaussedge-backbone -p gaussedge-device
  echo "aarch64 tests under qemu-user: ok"
else
  echo "aarch64 tests: skipped (no cross linker, qemu-user or rustup target here)"
fi

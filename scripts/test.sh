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
  cargo build --locked -p gaussedge-device --no-default-features --target "$target"
  echo "no_std builds (shared; device protocol server and persistence) for $target: ok"
else
  echo "no_std build for $target: skipped (rustup could not add the target here)"
fi

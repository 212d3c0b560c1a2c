#!/usr/bin/env bash
# The device firmware as a device ships it: `[profile.firmware]` (no debug
# info, stripped, fat LTO in one codegen unit, abort on panic, opt-level 3)
# plus a code-generation flag a profile cannot carry on stable Rust,
# `-C relocation-model=static`: a fixed-address executable, with no dynamic
# relocation table (.rela.dyn) for every pointer in tract's operator tables.
# Its own target folder, so the flag never invalidates the workspace's
# builds; always an explicit `--target` (this machine's by default), so the
# flag reaches the firmware and not the build scripts and proc macros, which
# the compiler loads as shared objects. Prints the binary's path and size.
#   scripts/firmware.sh [--target aarch64-unknown-linux-gnu]
set -euo pipefail
cd "$(dirname "$0")/.."
triple=$(rustc -vV | sed -n 's/^host: //p')
while [ $# -gt 0 ]; do
  case "$1" in
    --target) triple=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
dir=target/shipped
export RUSTFLAGS="-C relocation-model=static"
cargo build --locked --profile firmware -p gaussedge-device --target-dir "$dir" --target "$triple" >&2
bin="$dir/$triple/firmware/gaussedge-device"
echo "$bin $(stat -c %s "$bin") bytes"

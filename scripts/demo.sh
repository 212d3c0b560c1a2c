#!/usr/bin/env bash
# The README's main command: installs what is missing, builds, and runs the
# end-to-end demo (a device simulator on a pseudo-terminal learns
# Fashion-MNIST classes 5-9 from its own camera; the host evaluates it after
# each class). Extra arguments go to `gaussedge demo` (see --help), e.g.
#   scripts/demo.sh --dataset cifar10 --data ../shared/data/cifar-10-dev
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
cargo build --release --locked -p gaussedge-host -p gaussedge-device
bin=target/release/gaussedge

dataset=fashion-mnist
data=""
prev=""
for a in "$@"; do
  case "$prev" in
    --dataset) dataset="$a" ;;
    --data) data="$a" ;;
  esac
  prev="$a"
done
bundle="models/$dataset-b0-base5"
if [ ! -f "$bundle/manifest.json" ]; then
  echo "[demo] no base bundle at $bundle: training one (hours on CPU; checkpoints resume)" >&2
  args=(train --dataset "$dataset" --classes 0-4 --out "$bundle" --resume)
  [ -n "$data" ] && args+=(--data "$data")
  [ "$dataset" = fashion-mnist ] && args+=(--size 32 --epochs 12 --lr 1e-3)
  [ "$dataset" = cifar10 ] && args+=(--size 64 --epochs 30 --lr 1e-3)
  "$bin" "${args[@]}"
fi
exec "$bin" demo "$@"

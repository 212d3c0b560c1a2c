#!/usr/bin/env bash
# A few EfficientNet-b0 training steps on CUDA with the host binary, on a
# machine that has only this script, the binary (built here with
# `cargo build --release -p gaussedge-host --features cuda`) and PyTorch's
# libtorch (the CUDA machines carry PyTorch 2.11.0+cu130 in /opt/torch/.venv).
#   scripts/gpu-check.sh [BINARY] [CIFAR_DIR]
# Prints the device tch picked and images/s for training and forward passes;
# with CIFAR_DIR also trains one short epoch on real images.
set -euo pipefail
bin=${1:-target/release/gaussedge}
data=${2:-}
# The CIFAR-10 development split, where the machine carries it.
if [ -z "$data" ] && [ -d ../shared/data/cifar-10-dev ]; then data=../shared/data/cifar-10-dev; fi
torch_lib=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/torch/lib 2>/dev/null | head -n1)
nvidia=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH="${torch_lib}:${nvidia}${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for batch in 64 256; do
  "$bin" bench-train --cuda --size 64 --batch "$batch" --steps 20 --threads 4
done
if [ -n "$data" ]; then
  out=${OUT:-$(mktemp -d)}
  "$bin" train --dataset cifar10 --data "$data" --classes 0-4 --size 64 --epochs 1 --batch 128 \
    --limit-per-class 2000 --threads 4 --out "$out/gpu-bundle" --checkpoint-dir "$out/ckpt"
  # The trained bundle's figures (base-class FC accuracy, head, timings).
  cat "$out/gpu-bundle/metrics.json"
else
  echo "no CIFAR-10 folder given or found: the training run was skipped" >&2
fi

#!/usr/bin/env bash
# The Python peers of the benchmarks (PyTorch eager with torchvision, and
# onnxruntime), in their own venv in the cache. Not needed by the product or
# the tests: the full CUDA torch wheel set is about 5 GB.
set -euo pipefail
CACHE="${GAUSSEDGE_CACHE:-$HOME/.cache/gaussedge}"
VENV="$CACHE/bench-venv"
# The marker names the package set; a new set reinstalls over the old venv.
if [ ! -f "$VENV/.complete-2" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.11.0 torchvision==0.26.0 onnxruntime onnx numpy
  touch "$VENV/.complete-2"
fi
echo "$VENV/bin/python"

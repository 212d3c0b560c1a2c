#!/usr/bin/env bash
# EfficientNet-b0 training and forward throughput: gaussedge's tch trainer
# against PyTorch eager (torchvision) on the same batch size, input size and
# thread count, each in both memory layouts (NCHW, and channels-last, the
# trainer's CPU default), interleaved in one run. Prints a markdown table:
# medians over rounds, and per-round ratios to PyTorch eager as it runs by
# default (NCHW), median and range.
#   bench/train-throughput.sh [--size 64] [--batch 64] [--steps 10] [--threads 1] [--rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
size=64 batch=64 steps=10 threads=1 rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2 ;; --batch) batch=$2 ;; --steps) steps=$2 ;; --threads) threads=$2 ;; --rounds) rounds=$2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift 2
done
eval "$(scripts/setup.sh)"
cargo build --release --locked -p gaussedge-host >&2
py=$(bench/setup-python.sh)
args=(--size "$size" --batch "$batch" --steps "$steps" --threads "$threads")
out=$(mktemp)
for r in $(seq "$rounds"); do
  target/release/gaussedge bench-train "${args[@]}" --memory-format channels-last >> "$out"
  target/release/gaussedge bench-train "${args[@]}" --memory-format contiguous >> "$out"
  "$py" bench/torch_throughput.py "${args[@]}" >> "$out"
  "$py" bench/torch_throughput.py "${args[@]}" --channels-last >> "$out"
done
"$py" - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
key = lambda r: r["impl"] + ("-cl" if r.get("memory_format") == "channels-last" else "")
runs = {}
for r in rows:
    runs.setdefault(key(r), []).append(r)
peer = runs["pytorch"]
r0 = rows[0]
print(f"EfficientNet-b0, {r0['size']}x{r0['size']}, batch {r0['batch']}, {r0['threads']} thread(s), {len(peer)} interleaved rounds; ratio: per round, to PyTorch eager in NCHW (median, range)\n")
print("| images/s | train step | ratio | forward (eval) | ratio |")
print("| --- | --- | --- | --- | --- |")
names = [("tch-cl", "gaussedge (tch), channels-last (the trainer's CPU default)"), ("tch", "gaussedge (tch), NCHW"),
         ("pytorch", "PyTorch eager, NCHW"), ("pytorch-cl", "PyTorch eager, channels-last")]
def ratio(rs, k):
    v = sorted(a[k] / b[k] for a, b in zip(rs, peer))
    return f"{statistics.median(v):.2f} ({v[0]:.2f}-{v[-1]:.2f})"
for k, name in names:
    rs = runs.get(k, [])
    if rs:
        med = lambda f: statistics.median(r[f] for r in rs)
        print(f"| {name} | {med('train_img_s'):.1f} | {ratio(rs, 'train_img_s')} | {med('forward_img_s'):.1f} | {ratio(rs, 'forward_img_s')} |")
PY

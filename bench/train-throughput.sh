#!/usr/bin/env bash
# EfficientNet-b0 training and forward throughput: gaussedge's tch trainer
# against PyTorch eager (torchvision) on the same batch size, input size and
# thread count, interleaved in one run. Prints a markdown table.
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
  target/release/gaussedge bench-train "${args[@]}" >> "$out"
  "$py" bench/torch_throughput.py "${args[@]}" >> "$out"
done
"$py" - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(impl, key):
    return statistics.median(r[key] for r in rows if r["impl"] == impl)
r0 = rows[0]
print(f"EfficientNet-b0, {r0['size']}x{r0['size']}, batch {r0['batch']}, {r0['threads']} thread(s), median of {len(rows)//2} interleaved rounds\n")
print("| images/s | gaussedge (tch) | PyTorch eager | ratio tch / PyTorch |")
print("| --- | --- | --- | --- |")
for key, name in [("train_img_s", "train step"), ("forward_img_s", "forward (eval)")]:
    a, b = med("tch", key), med("pytorch", key)
    print(f"| {name} | {a:.1f} | {b:.1f} | {a/b:.2f} |")
PY

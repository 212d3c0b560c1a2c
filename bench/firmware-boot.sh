#!/usr/bin/env bash
# Boot and frame cost of firmware builds, interleaved in one run: for each
# round and each binary, the time from process start to serving a PTY
# (`--ready-file`) on a fresh state folder (a bundle's first boot) and again
# on the state that boot left (every later boot: the compiled backbone,
# where the build keeps one), then the wall time of `gaussedge learn
# --capture N` from the simulated camera (each frame: camera, preprocess,
# backbone, head).
# Prints one table: medians over rounds, ranges, and each build's ratio to
# the first one given (per round, then the median).
#   bench/firmware-boot.sh [--rounds 5] [--frames 300] [--bundle DIR] BIN...
# Builds to compare: scripts/firmware.sh prints the shipped binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=5 frames=300 bundle=models/cifar10-b0-base5 bins=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --frames) frames=$2; shift 2 ;;
    --bundle) bundle=$2; shift 2 ;;
    *) bins+=("$(realpath "$1")"); shift ;;
  esac
done
[ ${#bins[@]} -gt 0 ] || { echo "usage: $0 [--rounds N] [--frames N] [--bundle DIR] BIN..." >&2; exit 2; }
data=${CIFAR10_DIR:-../shared/data/cifar-10-dev}
[ -d "$data" ] || { echo "CIFAR-10 not found at $data (set CIFAR10_DIR)" >&2; exit 2; }
eval "$(scripts/setup.sh)"
cargo build --locked --release -q -p gaussedge-host >&2
host=target/release/gaussedge
out=$(mktemp)
trap 'rm -f "$out"' EXIT
boot() { # BIN STATE LOG: sets $ms (start to ready) and $pid (the running device)
  local t0 t1
  rm -f "$2/ready"
  t0=$(date +%s%N)
  "$1" --bundle "$bundle" --state "$2/state" --pty --ready-file "$2/ready" --camera "cifar10:$data" >"$3" 2>&1 &
  pid=$!
  until [ -s "$2/ready" ]; do
    kill -0 "$pid" 2>/dev/null || { cat "$3" >&2; exit 1; }
    sleep 0.002
  done
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 ))
}
one() { # BIN -> "first_boot_ms later_boot_ms capture_ms"
  local st first later t1 t2 port
  st=$(mktemp -d)
  boot "$1" "$st" "$st/log1"; first=$ms
  kill "$pid"; wait "$pid" 2>/dev/null || true
  boot "$1" "$st" "$st/log2"; later=$ms
  t1=$(date +%s%N)
  port=$(cat "$st/ready")
  "$host" learn --port "$port" --label probe --capture "$frames" --source-class 5 >/dev/null
  t2=$(date +%s%N)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$st"
  echo "$first $later $(( (t2 - t1) / 1000000 ))"
}
for r in $(seq "$rounds"); do
  for i in "${!bins[@]}"; do echo "$r $i $(one "${bins[$i]}")" >> "$out"; done
done
python3 - "$out" "$frames" "${bins[@]}" <<'PY'
import statistics, sys, os
rows = [l.split() for l in open(sys.argv[1])]
frames, bins = int(sys.argv[2]), sys.argv[3:]
by = {}
for r, i, first, later, cap in rows:
    by.setdefault(int(i), {})[int(r)] = (int(first), int(later), int(cap))
def cell(vals):
    return f"{statistics.median(vals):.0f} ({min(vals):.0f}-{max(vals):.0f})"
def ratio(i, k):
    rs = sorted(by[i][r][k] / by[0][r][k] for r in by[0])
    return f"{statistics.median(rs):.2f} ({rs[0]:.2f}-{rs[-1]:.2f})"
print(f"{len(by[0])} interleaved rounds; capture = {frames} frames learned from the simulated camera; ratios to the first build\n")
print("| build | bytes | first boot, ms | ratio | later boot, ms | ratio | capture, ms per frame | ratio |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for i, b in enumerate(bins):
    first = [v[0] for v in by[i].values()]
    later = [v[1] for v in by[i].values()]
    cap = [v[2] / frames for v in by[i].values()]
    print(f"| {b} | {os.path.getsize(b):,} | {cell(first)} | {ratio(i, 0)} | {cell(later)} | {ratio(i, 1)} | {statistics.median(cap):.2f} ({min(cap):.2f}-{max(cap):.2f}) | {ratio(i, 2)} |")
PY

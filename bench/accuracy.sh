#!/usr/bin/env bash
# Every row of bench/accuracy.md: the seed's protocol (base classes 0-4, then
# 5..9 added one at a time) with each head lever alone and combined, few-shot
# draws and novelty, on both committed bundles. Reports land in
# bench/results/, the curves in bench/accuracy.png.
#   bench/accuracy.sh [cifar10|fashion-mnist|all]   (CIFAR data: $CIFAR10_DIR, default ../shared/data/cifar-10-dev;
#   the CIFAR-10 oracle bundle: $CIFAR10_ORACLE, default models/cifar10-b0-oracle)
# Features are cached per backbone and layers under ~/.cache/gaussedge, so a
# second run takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
cargo build --release --locked -p gaussedge-host >&2
g=target/release/gaussedge
out=bench/results
mkdir -p "$out"
which=${1:-all}

run() { # NAME BUNDLE DATASET DATA [eval flags...]
  local name=$1 bundle=$2 dataset=$3 data=$4
  shift 4
  echo "== $name: gaussedge eval --bundle $bundle --dataset $dataset $*" >&2
  # A head that cannot be fitted (say, too little shrinkage for these
  # features) is a result too: its row says so, and the suite goes on.
  rm -f "$out/$name.json" "$out/$name.error"
  if ! "$g" eval --bundle "$bundle" --dataset "$dataset" --data "$data" --json "$out/$name.json" "$@" 2>"$out/$name.error" | tail -1; then
    echo "== $name failed: $(grep -m1 '^Error' "$out/$name.error")" >&2
    return 0
  fi
  rm -f "$out/$name.error"
}

suite() { # PREFIX BUNDLE DATASET DATA
  local p=$1 b=$2 d=$3 data=$4
  run "$p-seed" "$b" "$d" "$data" --layers features --estimator seed
  run "$p-last-pooled" "$b" "$d" "$data" --layers features --estimator pooled
  run "$p-last-shrink1e-6" "$b" "$d" "$data" --layers features --estimator pooled --shrinkage 1e-6
  run "$p-last-oas" "$b" "$d" "$data" --layers features --estimator pooled --oas
  run "$p-last-cl2n" "$b" "$d" "$data" --layers features --estimator pooled --shrinkage 1e-6 --transform cl2n
  run "$p-last-tukey" "$b" "$d" "$data" --layers features --estimator pooled --shrinkage 1e-6 --transform tukey
  run "$p-blocks-plain" "$b" "$d" "$data" --transform none --shrinkage 1e-6
  run "$p-blocks-shrink1e-4" "$b" "$d" "$data" --shrinkage 1e-4
  run "$p-blocks-shrink1e-6" "$b" "$d" "$data" --shrinkage 1e-6
  run "$p-blocks-tukey-cl2n" "$b" "$d" "$data" --transform tukey-cl2n --shrinkage 1e-6
  run "$p-default" "$b" "$d" "$data"
  run "$p-default-logcount" "$b" "$d" "$data" --prior log-count
  for k in 5 20 100; do
    run "$p-shots$k" "$b" "$d" "$data" --shots "$k" --draws 5
  done
  for k in 5 20 100; do
    run "$p-shots$k-logcount" "$b" "$d" "$data" --shots "$k" --draws 5 --prior log-count
  done
  run "$p-default-nodebias" "$b" "$d" "$data" --debias off
  for k in 5 20 100; do
    run "$p-shots$k-nodebias" "$b" "$d" "$data" --shots "$k" --draws 5 --debias off
  done
}

if [ "$which" = all ] || [ "$which" = cifar10 ]; then
  suite cifar10 models/cifar10-b0-base5 cifar10 "${CIFAR10_DIR:-../shared/data/cifar-10-dev}"
fi
if [ "$which" = all ] || [ "$which" = fashion-mnist ]; then
  suite fashion models/fashion-mnist-b0-base5 fashion-mnist /usr/share/datasets/fashion-mnist
fi
# The oracle's features (all ten classes trained) under the same protocol.
oracle=${CIFAR10_ORACLE:-models/cifar10-b0-oracle}
if { [ "$which" = all ] || [ "$which" = cifar10 ]; } && [ -f "$oracle/manifest.json" ]; then
  run cifar10-oracle-protocol "$oracle" cifar10 "${CIFAR10_DIR:-../shared/data/cifar-10-dev}"
fi
if [ -f "$out/cifar10-default.json" ] && [ -f "$out/fashion-default.json" ]; then
  "$g" plot --title "classes added one at a time (base 0-4)" --out bench/accuracy.png \
    "CIFAR-10 seed estimator=$out/cifar10-seed.json" \
    "CIFAR-10 last layer, pooled=$out/cifar10-last-pooled.json" \
    "CIFAR-10 gaussedge=$out/cifar10-default.json" \
    "CIFAR-10 gaussedge, 20 shots=$out/cifar10-shots20.json" \
    "Fashion seed estimator=$out/fashion-seed.json" \
    "Fashion gaussedge=$out/fashion-default.json" \
    "Fashion gaussedge, 20 shots=$out/fashion-shots20.json"
fi

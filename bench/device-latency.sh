#!/usr/bin/env bash
# Per-image device latency on a bundle: tract (gaussedge-device) against
# onnxruntime (Python, one thread) on the same ONNX graph and input
# (pruned to the feature layers for onnxruntime, as tract prunes it),
# interleaved in one run. Prints a markdown table.
#   bench/device-latency.sh [BUNDLE] [--rounds 5] [--runs 200]
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=$(realpath "${1:-models/fashion-mnist-b0-base5}")
rounds=5 runs=200
shift || true
while [ $# -gt 0 ]; do
  case "$1" in --rounds) rounds=$2 ;; --runs) runs=$2 ;; *) echo "unknown argument $1" >&2; exit 2 ;; esac
  shift 2
done
eval "$(scripts/setup.sh)"
py=$(bench/setup-python.sh)
cargo bench --locked -p gaussedge-device --bench latency --no-run >&2
input=$(mktemp --suffix .f32)
out=$(mktemp)
shape=$(python3 -c "import json;p=json.load(open('$bundle/manifest.json'))['preprocess'];print(f\"{p['channels']},{p['height']},{p['width']}\")")
layers=$(python3 -c "import json;print(','.join(json.load(open('$bundle/manifest.json')).get('layers',['features'])))")
# onnxruntime gets the graph pruned to the feature layers, as tract prunes it.
onnx=$(mktemp --suffix .onnx)
compiled=$(mktemp --suffix .compiled)
trap 'rm -f "$input" "$out" "$onnx" "$compiled"' EXIT
# The compiled backbone a device boots from after its first load of the
# bundle (none on a CPU the project's kernels do not serve).
compiled_arg=()
if cargo bench --locked -q -p gaussedge-device --bench latency -- --bundle "$bundle" --compile "$compiled" >&2; then
  compiled_arg=(--compiled "$compiled")
fi
"$py" bench/prune_onnx.py "$bundle/backbone.onnx" "$onnx" "$layers"
for r in $(seq "$rounds"); do
  cargo bench --locked -q -p gaussedge-device --bench latency -- --bundle "$bundle" --runs "$runs" --input "$input" "${compiled_arg[@]}" >> "$out"
  "$py" bench/ort_latency.py --onnx "$onnx" --input "$input" --shape "$shape" --runs "$runs" --outputs "$layers" >> "$out"
  # tract's default channel-first layout, to show what the channel-last rewrite buys.
  GAUSSEDGE_TRACT_NCHW=1 cargo bench --locked -q -p gaussedge-device --bench latency -- --bundle "$bundle" --runs "$runs" --input "$input" | sed 's/"impl":"tract"/"impl":"tract-nchw"/' >> "$out"
  # tract's matrix product for the squeeze-excitation, to show what MatVec buys.
  GAUSSEDGE_TRACT_MATVEC=1 cargo bench --locked -q -p gaussedge-device --bench latency -- --bundle "$bundle" --runs "$runs" --input "$input" | sed 's/"impl":"tract"/"impl":"tract-mv"/' >> "$out"
  # tract's matrix product for the dense convolutions (1x1 and the stem), to show what Pointwise and Im2colConv buy.
  GAUSSEDGE_TRACT_DENSE=1 cargo bench --locked -q -p gaussedge-device --bench latency -- --bundle "$bundle" --runs "$runs" --input "$input" | sed 's/"impl":"tract"/"impl":"tract-dense"/' >> "$out"
  # tract's own depthwise kernel (a generic loop on x86-64), to show what DepthwiseNhwc buys.
  GAUSSEDGE_TRACT_DEPTHWISE=1 cargo bench --locked -q -p gaussedge-device --bench latency -- --bundle "$bundle" --runs "$runs" --input "$input" | sed 's/"impl":"tract"/"impl":"tract-dw"/' >> "$out"
  cargo bench --locked -q -p gaussedge-device --bench latency -- --bundle "$bundle" --runs "$runs" --input "$input" --batch 8 >> "$out"
  cargo bench --locked -q -p gaussedge-device --bench latency -- --bundle "$bundle" --runs "$runs" --input "$input" --threads 2 >> "$out"
  "$py" bench/ort_latency.py --onnx "$onnx" --input "$input" --shape "$shape" --runs "$runs" --outputs "$layers" --threads 2 >> "$out"
  "$py" bench/ort_latency.py --onnx "$onnx" --input "$input" --shape "$shape" --runs "$runs" --outputs "$layers" --batch 8 >> "$out"
done
"$py" - "$out" "$bundle" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
one = lambda r: r.get("threads", 1) == 1
t = [r for r in rows if r["impl"] == "tract" and r["batch"] == 1 and one(r)]
o = [r for r in rows if r["impl"] == "onnxruntime" and r["batch"] == 1 and one(r)]
t2 = [r for r in rows if r["impl"] == "tract" and r.get("threads", 1) == 2]
o2 = [r for r in rows if r["impl"] == "onnxruntime" and r.get("threads", 1) == 2]
tn = [r for r in rows if r["impl"] == "tract-nchw" and r["batch"] == 1]
td = [r for r in rows if r["impl"] == "tract-dw" and r["batch"] == 1]
tm = [r for r in rows if r["impl"] == "tract-mv" and r["batch"] == 1]
tp = [r for r in rows if r["impl"] == "tract-dense" and r["batch"] == 1]
t8 = [r for r in rows if r["impl"] == "tract" and r["batch"] == 8]
o8 = [r for r in rows if r["impl"] == "onnxruntime" and r["batch"] == 8]
m = lambda rs, k: statistics.median(r[k] for r in rs)


def ratio(ts, os, k="backbone_us"):
    """Median over rounds of each round's ratio (the two ran back to back,
    so a slow spell of a shared machine hits both), and the range."""
    rs = sorted(a[k] / b[k] for a, b in zip(ts, os))
    if len(rs) == 1:
        return f"{rs[0]:.2f}"
    return f"{statistics.median(rs):.2f} ({rs[0]:.2f}-{rs[-1]:.2f})"


c, h, w = t[0]["input"]
print(f"{sys.argv[2]}: input {c}x{h}x{w}, batch 1, one thread, median of {len(t)} interleaved rounds x {t[0]['runs']} images; ratios: median of the rounds' ratios (range)\n")
print("| stage | gaussedge (tract) | onnxruntime | ratio tract / ort |")
print("| --- | --- | --- | --- |")
print(f"| preprocess (u8 frame -> f32) | {m(t,'preprocess_us'):.1f} µs | | |")
print(f"| backbone | {m(t,'backbone_us')/1e3:.2f} ms | {m(o,'backbone_us')/1e3:.2f} ms | {ratio(t, o)} |")
print(f"| backbone, in the device loop (after each head update) | {m(t,'backbone_in_loop_us')/1e3:.2f} ms | | |")
print(f"| backbone, tract's matrix product for the dense convolutions | {m(tp,'backbone_us')/1e3:.2f} ms | {m(o,'backbone_us')/1e3:.2f} ms | {ratio(tp, o)} |")
print(f"| backbone, tract's matrix product for the SE | {m(tm,'backbone_us')/1e3:.2f} ms | {m(o,'backbone_us')/1e3:.2f} ms | {ratio(tm, o)} |")
print(f"| backbone, tract's depthwise kernel | {m(td,'backbone_us')/1e3:.2f} ms | {m(o,'backbone_us')/1e3:.2f} ms | {ratio(td, o)} |")
print(f"| backbone, tract's channel-first layout | {m(tn,'backbone_us')/1e3:.2f} ms | {m(o,'backbone_us')/1e3:.2f} ms | {ratio(tn, o)} |")
print(f"| backbone, batch of 8 (per image) | {m(t8,'backbone_us')/1e3:.2f} ms | {m(o8,'backbone_us')/1e3:.2f} ms | {ratio(t8, o8)} |")
print(f"| backbone, 2 threads each | {m(t2,'backbone_us')/1e3:.2f} ms | {m(o2,'backbone_us')/1e3:.2f} ms | {ratio(t2, o2)} |")
# What a second thread buys each runtime: one thread's time over two's,
# per round (both ran in the same round).
speedup = lambda one, two: ratio(one, two)
print(f"| speed-up, 2 threads over 1 (higher is better) | {speedup(t, t2)} | {speedup(o, o2)} | |")
frame = lambda k: ratio([{"x": a[k]} for a in t], [{"x": a["backbone_us"]} for a in t], "x")
learn_max = f", the flushing one {m(t,'head_learn_max_us'):.0f} µs" if "head_learn_max_us" in t[0] else ""
print(f"| head learn (K = 64), mean per sample{learn_max} | {m(t,'head_learn_us'):.1f} µs | the backbone | {frame('head_learn_us')} of a frame |")
print(f"| head predict + novelty (K = 64) | {m(t,'head_predict_us'):.1f} µs | the backbone | {frame('head_predict_us')} of a frame |")
print(f"| model load, from the ONNX (a bundle's first boot) | {m(t,'load_ms'):.0f} ms | {m(o,'load_ms'):.0f} ms | {ratio(t, o, 'load_ms')} |")
if t[0].get("load_compiled_ms") is not None:
    print(f"| model load, from the compiled graph (every later boot) | {m(t,'load_compiled_ms'):.1f} ms | {m(o,'load_ms'):.0f} ms | {ratio([{'x': r['load_compiled_ms']} for r in t], [{'x': r['load_ms']} for r in o], 'x')} |")
print(f"| peak RSS (process, head K = 64 included for tract) | {m(t,'peak_rss_mib'):.0f} MiB | {m(o,'peak_rss_mib'):.0f} MiB | {m(t,'peak_rss_mib')/m(o,'peak_rss_mib'):.2f} |")
stages = t[0].get("load_stages_ms", {})
if stages:
    parts = ", ".join(f"{k} {statistics.median(r['load_stages_ms'][k] for r in t):.0f}" for k in stages)
    print(f"\nmodel load by stage (ms, medians): {parts}")
cstages = t[0].get("load_compiled_stages_ms") or {}
if cstages:
    parts = ", ".join(f"{k} {statistics.median(r['load_compiled_stages_ms'][k] for r in t):.1f}" for k in cstages)
    print(f"model load from the compiled graph by stage (ms, medians): {parts}")
print(f"\nhead fixed footprint at K = 64: {t[0]['head_bytes']/2**20:.2f} MiB")
PY

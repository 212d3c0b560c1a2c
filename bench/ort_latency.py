"""onnxruntime peer of the device latency bench: the same ONNX file and
the same preprocessed input, one thread, batch 1. Prints one JSON line."""
import argparse, json, resource, time
import numpy as np
import onnxruntime as ort

p = argparse.ArgumentParser()
p.add_argument("--onnx", required=True)
p.add_argument("--input", required=True)
p.add_argument("--shape", required=True, help="C,H,W")
p.add_argument("--runs", type=int, default=200)
a = p.parse_args()
c, h, w = map(int, a.shape.split(","))
x = np.fromfile(a.input, dtype="<f4").reshape(1, c, h, w)
o = ort.SessionOptions()
o.intra_op_num_threads = 1
o.inter_op_num_threads = 1
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
t = time.perf_counter()
s = ort.InferenceSession(a.onnx, o, providers=["CPUExecutionProvider"])
load_ms = (time.perf_counter() - t) * 1e3
s.run(None, {"input": x})
times = []
for _ in range(a.runs):
    t = time.perf_counter()
    s.run(["features"], {"input": x})
    times.append(time.perf_counter() - t)
times.sort()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"impl": "onnxruntime", "backbone_us": times[len(times) // 2] * 1e6, "load_ms": load_ms, "peak_rss_mib": rss}))

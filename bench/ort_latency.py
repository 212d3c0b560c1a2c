"""onnxruntime peer of the device latency bench: the same ONNX file, the
same preprocessed input and the same outputs (the manifest's layers), one
thread (or --threads N), batch 1 or a batch of copies. Prints one JSON line; backbone_us is
per image."""
import argparse, json, resource, time
import numpy as np
import onnxruntime as ort

p = argparse.ArgumentParser()
p.add_argument("--onnx", required=True)
p.add_argument("--input", required=True)
p.add_argument("--shape", required=True, help="C,H,W")
p.add_argument("--runs", type=int, default=200)
p.add_argument("--outputs", default="features", help="comma-separated output names")
p.add_argument("--batch", type=int, default=1)
p.add_argument("--threads", type=int, default=1)
a = p.parse_args()
c, h, w = map(int, a.shape.split(","))
x = np.repeat(np.fromfile(a.input, dtype="<f4").reshape(1, c, h, w), a.batch, axis=0)
outputs = a.outputs.split(",")
o = ort.SessionOptions()
o.intra_op_num_threads = a.threads
o.inter_op_num_threads = 1
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
t = time.perf_counter()
s = ort.InferenceSession(a.onnx, o, providers=["CPUExecutionProvider"])
load_ms = (time.perf_counter() - t) * 1e3
s.run(outputs, {"input": x})
times = []
for _ in range(a.runs):
    t = time.perf_counter()
    s.run(outputs, {"input": x})
    times.append(time.perf_counter() - t)
times.sort()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"impl": "onnxruntime", "batch": a.batch, "threads": a.threads, "backbone_us": times[len(times) // 2] * 1e6 / a.batch, "load_ms": load_ms, "peak_rss_mib": rss}))

"""Writes the part of an ONNX graph that the named outputs depend on.

onnxruntime runs every node of the graph it is given, requested or not,
where tract prunes to the requested outputs: on b0 the unused classifier
and last convolution would cost onnxruntime about 0.2 ms a frame and 7 MB
more weights through the caches. The latency bench gives onnxruntime the
graph this script writes, so that both run the same nodes. Run apart from
the timed process, so that loading `onnx` does not count in its RSS.

    prune_onnx.py IN.onnx OUT.onnx OUTPUT[,OUTPUT...]"""
import sys

import onnx

src, dst, outputs = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
m = onnx.load(src)
g = m.graph
need, keep = set(outputs), []
for n in reversed(g.node):
    if any(o in need for o in n.output):
        keep.append(n)
        need.update(n.input)
keep.reverse()
known = {o.name: o for o in g.output}
missing = [o for o in outputs if o not in known]
if missing:
    sys.exit(f"{src}: not graph outputs: {missing}")
kept_outputs = [known[o] for o in outputs]
kept_inits = [i for i in g.initializer if i.name in need]
print(f"{src}: kept {len(keep)} of {len(g.node)} nodes, {len(kept_inits)} of {len(g.initializer)} weights", file=sys.stderr)
del g.node[:]
g.node.extend(keep)
del g.output[:]
g.output.extend(kept_outputs)
del g.initializer[:]
g.initializer.extend(kept_inits)
onnx.save(m, dst)

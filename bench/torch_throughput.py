"""PyTorch eager peer of `gaussedge bench-train`: torchvision's
efficientnet_b0 (5 classes), Adam, cross-entropy, the same batch, input
size and thread count. Prints one JSON line."""
import argparse, json, time
import torch, torchvision

p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=64)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--channels-last", action="store_true", help="the network and the batch in torch.channels_last (a training-speed lever of issue 16)")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
net = torchvision.models.efficientnet_b0(num_classes=5)
assert sum(p.numel() for p in net.parameters()) == 4_013_953
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
xs = torch.randn(a.batch, 3, a.size, a.size)
ys = torch.randint(0, 5, (a.batch,))
if a.channels_last:
    net = net.to(memory_format=torch.channels_last)
    xs = xs.contiguous(memory_format=torch.channels_last)
loss_fn = torch.nn.CrossEntropyLoss()

def step():
    opt.zero_grad()
    loss = loss_fn(net(xs), ys)
    loss.backward()
    opt.step()

net.train()
step()
t = time.perf_counter()
for _ in range(a.steps):
    step()
train = a.steps * a.batch / (time.perf_counter() - t)
net.eval()
with torch.no_grad():
    net(xs)
    t = time.perf_counter()
    for _ in range(a.steps):
        net(xs)
    forward = a.steps * a.batch / (time.perf_counter() - t)
print(json.dumps({"impl": "pytorch-cl" if a.channels_last else "pytorch", "train_img_s": train, "forward_img_s": forward, "size": a.size, "batch": a.batch, "threads": a.threads}))

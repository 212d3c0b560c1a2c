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
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
net = torchvision.models.efficientnet_b0(num_classes=5)
assert sum(p.numel() for p in net.parameters()) == 4_013_953
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
xs = torch.randn(a.batch, 3, a.size, a.size)
ys = torch.randint(0, 5, (a.batch,))
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
print(json.dumps({"impl": "pytorch", "train_img_s": train, "forward_img_s": forward, "size": a.size, "batch": a.batch, "threads": a.threads}))

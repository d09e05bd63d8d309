"""PyTorch eager beside `kiln bench` on issue 23's workloads (benches/mlp_wide.kiln's
mlp_256, mlp_wide and mlp_2048; benches/cnn_cifar.kiln): the same layers, loss,
optimizer (SGD, lr 0.01, momentum 0.9) and batch, synthetic data in a pool of 8
batches as `kiln bench` uses. Train samples/s and inference samples/s at the batch,
each the median of three timed windows of `--seconds`, after a warm-up.

    python benches/peers/torch_scale.py --threads 1 [--seconds 1] [--workload mlp_wide]

Prints one JSON object per workload. Needs torch (docs/PERFORMANCE.md says which).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

POOL = 8


def mlp(width):
    return nn.Sequential(
        nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )


class CnnCifar(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 64, 3, padding=1)
        self.c2 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc = nn.Linear(128 * 8 * 8, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc(torch.flatten(x, 1))


WORKLOADS = {
    "mlp_256": (lambda: mlp(256), (784,), 128),
    "mlp_wide": (lambda: mlp(1024), (784,), 128),
    "mlp_2048": (lambda: mlp(2048), (784,), 128),
    "cnn_cifar": (CnnCifar, (3, 32, 32), 64),
}


def windows(call, samples, seconds):
    """Median samples/s of three windows of at least `seconds`, after a warm-up window."""
    rates = []
    for i in range(4):
        start, calls = time.perf_counter(), 0
        while True:
            call(calls)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= (seconds / 4 if i == 0 else seconds):
                break
        if i > 0:
            rates.append(calls * samples / elapsed)
    return statistics.median(rates)


def bench(name, seconds):
    make, shape, batch = WORKLOADS[name]
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xs = [torch.randn(batch, *shape) for _ in range(POOL)]
    ys = [torch.randint(0, 10, (batch,)) for _ in range(POOL)]

    def step(i):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xs[i % POOL]), ys[i % POOL])
        loss.backward()
        opt.step()

    def infer(i):
        with torch.no_grad():
            model(xs[i % POOL])

    model.train()
    train = windows(step, batch, seconds)
    model.eval()
    inference = windows(infer, batch, seconds)
    return {
        "workload": name,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "train_samples_per_s": round(train, 1),
        "inference_samples_per_s": round(inference, 1),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), action="append")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for name in a.workload or list(WORKLOADS):
        print(json.dumps(bench(name, a.seconds)), flush=True)


if __name__ == "__main__":
    main()

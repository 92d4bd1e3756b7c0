"""A stack's batches: K members' batches gathered, converted and normalized at once (what
zeroinit.stacked.module.StackedBatches does) vs each member's batch made alone and the K
stacked afterwards (what it did before), side by side in one process.

    python benchmarks/stacked_data_bench.py                  # 15 members, MNIST-sized, CPU
    python benchmarks/stacked_data_bench.py --members 4 --repeats 3 --device cuda

Random uint8 images of MNIST's size (60,000 of 1x28x28), batch 128, one epoch of batches
(469 steps); the variants take turns, each figure is the median of the repeats.
"""

import argparse
import statistics
import time

import torch

from zeroinit.data import DeviceBatches
from zeroinit.stacked.module import StackedBatches


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=15)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (60_000, 1, 28, 28), generator=g, dtype=torch.uint8).to(device)
    y = torch.randint(0, 10, (60_000,), generator=g).to(device)
    members = [
        DeviceBatches(x, y, 128, lambda: 0, seed=s, shuffle=True) for s in range(args.members)
    ]

    def one_by_one():
        for batches in zip(*members):
            torch.stack([a for a, _ in batches]), torch.stack([b for _, b in batches])

    def at_once():
        for _ in StackedBatches(members):
            pass

    times = {"each member alone, then torch.stack (before)": [], "one gather (now)": []}
    for _ in range(args.repeats):
        for name, fn in zip(times, (one_by_one, at_once)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    for name, t in times.items():
        print(
            f"{name}: {statistics.median(t):.3f} s per epoch of {args.members} members' "
            f"batches ({len(members[0])} steps), median of {args.repeats}"
        )


if __name__ == "__main__":
    main()

"""A stack's convolutions, per layer shape of the paper's conv nets: the grouped convolution
`launcher=stacked` runs now against the alternatives, side by side, forward + backward.

    python benchmarks/stacked_conv_bench.py                          # cifar_cnn, mnist_cnn, K=15
    python benchmarks/stacked_conv_bench.py --models resnet50 --members 3
    python benchmarks/stacked_conv_bench.py --tiny                   # a dry run in seconds

Issue 18: 15 cifar_cnn runs stacked took 1.75x the time of 15 bare loops on an H200, and
the grouped convolution is the suspect. For every Conv2d of the model (its input shape at the
paper's batch size, read by a forward hook on the real network) this times K members' forward
and backward (input, weight and bias gradients) by

  grouped        one F.conv2d over (B, K*C, H, W) with groups=K (zeroinit.stacked.layers)
  grouped_nhwc   the same in channels_last memory format
  loop           K plain F.conv2d calls, one per member, in turn
  vmap           torch.func.vmap over F.conv2d (PyTorch's batching rule decides the kernel)
  streams        (CUDA only) the K plain convolutions, each on its own CUDA stream

and checks that each gives the grouped convolution's outputs and gradients (float64, within
1e-9 of their scale). Median of --repeats timings after a warm-up, milliseconds; the fastest
per shape is marked. No change to training follows from this by itself: it says which kernel
a stacked Conv2d should call per shape on this device.
"""

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import timing  # compose_cfg, machine, sync
from zeroinit.config import build_model

METHODS = ("grouped", "grouped_nhwc", "loop", "vmap", "streams")


def conv_shapes(model: str, batch: int) -> list[tuple]:
    """[(input shape (B, C, H, W), conv)] of every distinct Conv2d of `model` at `batch`."""
    cfg = timing.compose_cfg(model, "cpu", "/tmp/stacked_conv_bench")
    net = build_model(cfg, tuple(cfg.dataset.input_shape), 10)
    found, hooks = {}, []

    def record(mod, inp, out):  # (returns None: the output stays the layer's)
        key = (
            tuple(inp[0].shape[1:]),
            mod.out_channels,
            mod.kernel_size,
            mod.stride,
            mod.padding,
            mod.bias is not None,
        )
        found.setdefault(key, mod)

    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(record))
    with torch.no_grad():
        net.eval()(torch.zeros(2, *cfg.dataset.input_shape))
    for h in hooks:
        h.remove()
    return [((batch, *key[0]), conv) for key, conv in found.items()]


def make_inputs(shape, conv, k, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    x = torch.randn(k, b, c, h, w, generator=g, dtype=dtype)
    wt = torch.randn(k, conv.out_channels, c, *conv.kernel_size, generator=g, dtype=dtype)
    bias = (
        torch.randn(k, conv.out_channels, generator=g, dtype=dtype)
        if conv.bias is not None
        else None
    )
    return [t.to(device).requires_grad_() if t is not None else None for t in (x, wt, bias)]


def forward(method, x, w, b, conv):
    """K members' outputs (K, B, out, H', W') by `method`."""
    k, bsz = x.shape[:2]
    args = (conv.stride, conv.padding, conv.dilation)
    if method in ("grouped", "grouped_nhwc"):
        xi = x.transpose(0, 1).reshape(bsz, -1, *x.shape[3:])
        wi = w.flatten(0, 1)
        if method == "grouped_nhwc":
            xi = xi.contiguous(memory_format=torch.channels_last)
            wi = wi.contiguous(memory_format=torch.channels_last)
        y = F.conv2d(xi, wi, None if b is None else b.flatten(), *args, k)
        return y.view(bsz, k, -1, *y.shape[2:]).transpose(0, 1)
    if method == "loop":
        return torch.stack(
            [F.conv2d(x[i], w[i], None if b is None else b[i], *args) for i in range(k)]
        )
    if method == "vmap":
        fn = lambda xi, wi, bi: F.conv2d(xi, wi, bi, *args)  # noqa: E731
        return (
            torch.func.vmap(fn)(x, w, b)
            if b is not None
            else torch.func.vmap(lambda xi, wi: F.conv2d(xi, wi, None, *args))(x, w)
        )
    if method == "streams":
        main = torch.cuda.current_stream()
        outs = [None] * k
        streams = [torch.cuda.Stream() for _ in range(k)]
        for i, s in enumerate(streams):
            s.wait_stream(main)
            with torch.cuda.stream(s):
                outs[i] = F.conv2d(x[i], w[i], None if b is None else b[i], *args)
        for s in streams:
            main.wait_stream(s)
        return torch.stack(outs)
    raise ValueError(method)


def run_once(method, x, w, b, conv, grad):
    y = forward(method, x, w, b, conv)
    y.backward(grad)


def check(methods, shape, conv, k, device) -> dict[str, float]:
    """Largest relative difference of each method's output and gradients from grouped's,
    in float64."""
    ref = None
    out = {}
    for method in methods:
        x, w, b = make_inputs(shape, conv, k, device, torch.float64)
        y = forward(method, x, w, b, conv)
        g = torch.ones_like(y)
        y.backward(g)
        got = [y.detach(), x.grad, w.grad] + ([b.grad] if b is not None else [])
        if ref is None:
            ref = got
        out[method] = max(
            float((a - r).abs().max() / r.abs().max().clamp_min(1e-30)) for a, r in zip(got, ref)
        )
    return out


def time_method(method, shape, conv, k, device, repeats) -> float:
    x, w, b = make_inputs(shape, conv, k, device, torch.float32)
    y = forward(method, x, w, b, conv)
    grad = torch.ones_like(y)
    for _ in range(2):  # warm-up: cuDNN's choice, first allocations
        run_once(method, x, w, b, conv, grad)
    times = []
    for _ in range(repeats):
        timing.sync(device)
        start = time.perf_counter()
        run_once(method, x, w, b, conv, grad)
        timing.sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cifar_cnn,mnist_cnn")
    p.add_argument("--members", type=int, default=15)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="batch 4, 2 members, 1 repeat")
    args = p.parse_args(argv)
    if args.tiny:
        args.batch, args.members, args.repeats = 4, 2, 1
    device = torch.device(args.device)
    methods = [m for m in METHODS if m != "streams" or device.type == "cuda"]
    print(f"# {timing.machine()}".replace("\n", "; "))
    print(
        f"# {args.members} members, batch {args.batch}, forward + backward, ms (median of "
        f"{args.repeats}); * = fastest; max relative difference from grouped in float64\n"
    )
    print(
        "| model | input (B, C, H, W) -> out, kernel, stride | "
        + " | ".join(methods)
        + " | fastest | max diff |"
    )
    print("|---|---|" + "---|" * (len(methods) + 2))
    rows = []
    for model in args.models.split(","):
        for shape, conv in conv_shapes(model, args.batch):
            ms = {
                m: time_method(m, shape, conv, args.members, device, args.repeats) for m in methods
            }
            diff = check(methods, (2, *shape[1:]), conv, 2, device)
            best = min(ms, key=ms.get)
            cells = " | ".join(f"{ms[m]:.2f}" + ("*" if m == best else "") for m in methods)
            print(
                f"| {model} | {shape} -> {conv.out_channels}, {conv.kernel_size}, {conv.stride} "
                f"| {cells} | {best} | {max(diff.values()):.1e} |",
                flush=True,
            )
            rows.append({"model": model, "shape": shape, "ms": ms, "best": best, "diff": diff})
    bad = [r for r in rows if max(r["diff"].values()) > 1e-9]
    if bad:
        print(f"DIFFERENT RESULTS: {[(r['model'], r['shape'], r['diff']) for r in bad]}")
    return {"rows": rows, "device": str(device), "bad": bad}


if __name__ == "__main__":
    sys.exit(1 if main()["bad"] else 0)

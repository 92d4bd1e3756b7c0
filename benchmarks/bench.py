"""Seconds per training epoch, side by side in one process: this project's path, a bare PyTorch
loop, the conventional Dataset + DataLoader + Lightning pipeline, and the arithmetic bound.

    make bench                                        # = python benchmarks/bench.py --sweep --floor
    python benchmarks/bench.py --models mnist_fnn --repeats 7
    python benchmarks/bench.py --n-train 1024 --repeats 1 --models mnist_fnn   # smoke test

One epoch = training on the train split (batch 128, Adam lr 1e-3, as the paper) plus the
evaluation of the whole test split, which every run of this project does after every epoch.
The images are uniform random uint8 of the real shapes (MNIST: 60,000 + 10,000 of 1x28x28;
CIFAR-10: 50,000 + 10,000 of 3x32x32); random pixels cost the same arithmetic as real ones.

  project       src/train.py's own objects: `zeroinit.run.build_run(cfg)` builds the
                ImageDataModule (DeviceBatches), the Classifier (loss/accuracy sums on the
                device), the callbacks (results.json, checkpoint, the default extra
                callbacks), the TensorBoard logger and the Trainer from conf/ exactly as
                `python src/train.py` does; timed: `trainer.fit` of one epoch (fit start-up,
                checkpoint and results.json included).
  bare          the same net, init and optimizer in a plain loop over the same device-resident
                tensors with DeviceBatches' batch ops, computing the same four figures
                (train/test loss and accuracy): what Lightning and the project's callbacks
                cost on top.
  conventional  what most people write: a torchvision-style Dataset that makes a PIL image per
                sample and converts it with ToTensor, a DataLoader (num_workers=--workers,
                default 0 = its default), a LightningModule logging loss and torchmetrics
                Accuracy with self.log, and a default-configured `L.Trainer(max_epochs=1)`.
  bound         the epoch's forward+backward FLOPs (counted by torch.utils.flop_counter on the
                real model: matmuls and convolutions only) / the fp32 matmul throughput measured
                in the same run. No real epoch can beat it.

The variants are interleaved (their order rotates every repeat) and each time is the median
of the repeats (at each size, where two are timed), because a shared machine's speed drifts.
Ratios: project / each other variant (1/2 below 1.0 means faster than the bare loop; 1/4 is
how far from the arithmetic bound).
`--images MODEL=N` (on a CPU by default for the conv nets, see CPU_IMAGES) and `--n-train N`
(every model) time part of an epoch, the test split shrunk in proportion, at N and at N/2
train images (both in the interleaving), fit seconds = fixed + per image x images and report
fixed + per image x the full split: multiplying by full/N would multiply what a fit pays once
(start-up, the end-of-epoch checkpoint, results.json) too. The fixed seconds are printed under
the table. The diagnostics' symmetry measurements are neither: their number grows with a
short run's steps and is capped for a long one, so where N and N/2 get different numbers the
fit counts the difference as per-image cost and overstates them. Where the time does not grow
from N/2 to N (or the line would cross below zero), the noise is larger than the difference,
and the row falls back to the plain scaling, as its note says. A full epoch is timed at its
one size, unscaled.
"""

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from timing import (  # the harness and the variants (benchmarks/timing.py)
    CPU_IMAGES,
    DEFAULT_SWEEP,
    MODELS,
    VARIANTS,
    Case,
    Fit,
    describe_fits,
    epoch_flops,
    loop_floor,
    machine,
    matmul_flops_per_s,
    profile,
    sizes,
    time_bare,
    time_conventional,
    time_import,
    time_project,
    time_sizes,
    time_sweep,
)


def bench_model(model, args, work_dir, flops_per_s, log=print) -> dict:
    n_train = args.n_train or args.images.get(model)
    case = Case(model, args.device, n_train, Path(work_dir) / model, args.override)
    runners = {
        "project": lambda n: time_project(case, n),  # seconds of an epoch of n images
        "bare": lambda n: time_bare(case, n),
        "conventional": lambda n: time_conventional(case, n, workers=args.workers[0]),
    }
    for w in args.workers[1:]:  # the conventional pipeline with other DataLoader workers
        runners[f"conventional workers={w}"] = lambda n, w=w: time_conventional(case, n, workers=w)
    for extra in args.also:  # the project path with other settings, e.g. speed=fast
        runners[f"project {extra}"] = lambda n, extra=extra: time_project(
            case, n, shlex.split(extra)
        )
    variants = [
        v
        for v in runners
        if v in args.variants
        or v.startswith("project ")
        or (v.startswith("conventional ") and "conventional" in args.variants)
    ]
    # Warm-up: first calls build kernels, caches and lazy imports; not timed.
    warm = min(case.n_train, 4 * case.cfg.batch_size)
    time_bare(case, warm)
    for v in variants:
        if v.startswith("project"):
            time_project(case, warm, extra=shlex.split(v[len("project") :]))
    if "conventional" in variants:
        for w in args.workers:
            time_conventional(case, warm, workers=w)
    images = sizes(case.n_train, case.full_train)
    times, fits = time_sizes(
        lambda v, n: runners[v](n),
        variants,
        images,
        args.repeats,
        case.full_train,
        f"{model} ",
        log,
    )
    row = {
        "model": model,
        "n_train": case.n_train,
        "n_test": case.n_test,
        "sizes": images,
        "scaled": case.n_train != case.full_train,
        "repeats": args.repeats,
        "times": times,
        "fits": {v: f._asdict() for v, f in fits.items()},
    }
    row.update({v: f.estimate for v, f in fits.items()})  # seconds of a full epoch
    row["flops"] = epoch_flops(case)
    row["bound"] = row["flops"] / flops_per_s
    return row


def seconds(x):
    return "-" if x is None else f"{x:.2f}"


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "-"


def table(rows, flops_per_s) -> str:
    lines = [
        "| model | images (train+test) | 1 project s | 2 bare s | 3 conventional s | "
        "4 bound s | 1/2 | 1/3 | 1/4 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = f"{r['n_train']:,}+{r['n_test']:,}" + (
            " (extrapolated to a full epoch)" if r["scaled"] else ""
        )
        lines.append(
            f"| {r['model']} | {n} | {seconds(r.get('project'))} | {seconds(r.get('bare'))} | "
            f"{seconds(r.get('conventional'))} | {seconds(r['bound'])} | "
            f"{ratio(r.get('project'), r.get('bare'))} | "
            f"{ratio(r.get('project'), r.get('conventional'))} | "
            f"{ratio(r.get('project'), r['bound'])} |"
        )
    fitted = [
        f"{r['model']}, timed on {' and '.join(f'{n:,}' for n in r['sizes'])} train "
        f"images: {describe_fits({v: Fit(**f) for v, f in r['fits'].items()})}"
        for r in rows
        if r["scaled"]
    ]
    if fitted:  # what each extrapolated figure carries once, whatever the epoch's size
        lines += ["", "seconds = fixed + per image x images, fit to the part-epochs timed:"]
        lines += [f"- {line}" for line in fitted]
    extra = [(r, k) for r in rows for k in r["times"] if " " in k]
    if extra:
        lines += ["", "| model | variant | s | project / it | vs bare |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['model']} | {k.split(' ', 1)[0]} `{k.split(' ', 1)[1]}` | {r[k]:.2f} | "
            f"{ratio(r.get('project'), r[k])} | {ratio(r[k], r.get('bare'))} |"
            for r, k in extra
        ]
    lines.append(
        f"\nbound: forward+backward FLOPs of a full epoch / {flops_per_s / 1e9:.0f} "
        "GFLOP/s (best fp32 matmul measured in this run)"
    )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--models",
        default="mnist_fnn,mnist_cnn,cifar_fnn",
        help=f"comma-separated, of {', '.join(MODELS)}; '' for none",
    )
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per variant (median)")
    p.add_argument(
        "--n-train",
        type=int,
        default=None,
        help="train images per epoch (default: the full split); fewer are timed at "
        "N and N/2 and extrapolated to a full epoch",
    )
    p.add_argument(
        "--images",
        action="append",
        default=[],
        metavar="MODEL=N",
        help="train images of one model's epoch (repeatable; fewer than a full "
        "epoch are timed at N and N/2 and extrapolated to a full one). "
        "Default on a CPU: " + ", ".join(f"{k}={v}" for k, v in CPU_IMAGES.items()),
    )
    p.add_argument(
        "--workers",
        default="0",
        help="DataLoader num_workers of the conventional pipeline (default 0); a "
        "comma-separated list times each, the first in the main table",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--sweep",
        nargs="?",
        const=DEFAULT_SWEEP,
        default=None,
        metavar="OVERRIDES",
        help=f"also time `python src/train.py -m OVERRIDES` (default: {DEFAULT_SWEEP})",
    )
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help="also time the project path with these overrides (repeatable), "
        "e.g. --also callbacks.diagnostics=null",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="also time the training loop alone (bare vs Lightning, no-op model)",
    )
    p.add_argument(
        "--profile",
        metavar="MODEL",
        help="also print torch.profiler tables of one bare and one project epoch of MODEL",
    )
    p.add_argument("--json", help="write every measurement to this file")
    p.add_argument(
        "override", nargs="*", help="config overrides for the project path, e.g. speed=fast"
    )
    args = p.parse_args(argv)
    images = dict(CPU_IMAGES) if args.device == "cpu" else {}
    for item in args.images:
        model, _, n = item.partition("=")
        if model not in MODELS or not n.isdigit() or int(n) <= 0:
            p.error(f"--images {item}: expected MODEL=N with MODEL one of {', '.join(MODELS)}")
        images[model] = int(n)
    args.images = images
    args.workers = [int(w) for w in str(args.workers).split(",")]
    args.models = [m for m in args.models.split(",") if m]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [m for m in args.models + [args.profile or "mnist_fnn"] if m not in MODELS] + [
        v for v in args.variants if v not in VARIANTS
    ]
    if unknown:
        p.error(f"unknown: {', '.join(unknown)}")
    return args


def main(argv=None, command=None) -> dict:
    args = parse_args(argv)
    command = command or "python benchmarks/bench.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    print(f"# {command}\n# {machine()}", flush=True)
    out = {"command": command, "machine": machine(), "models": []}
    with tempfile.TemporaryDirectory(prefix="zeroinit-bench-") as work_dir:
        if args.models:
            device = torch.device(args.device)
            flops_per_s = matmul_flops_per_s(device)
            out["matmul_flops_per_s"] = flops_per_s
            for model in args.models:
                out["models"].append(bench_model(model, args, work_dir, flops_per_s))
            flops_per_s = max(flops_per_s, matmul_flops_per_s(device))  # again, after the runs
            for row in out["models"]:
                row["bound"] = row["flops"] / flops_per_s
            out["table"] = table(out["models"], flops_per_s)
            print("\nseconds per epoch (median of %d)\n%s" % (args.repeats, out["table"]))
        if args.floor:
            out["floor_us_per_step"] = f = loop_floor()
            print(
                f"\nthe loop alone (no-op model, 469 steps, CPU): bare {f['bare']:.0f} us/step, "
                f"Lightning Trainer {f['lightning']:.0f} us/step "
                f"(+{f['lightning'] - f['bare']:.0f}), stepping itself as the project's module "
                f"{f['lightning_manual']:.0f} us/step (+{f['lightning_manual'] - f['bare']:.0f})",
                flush=True,
            )
        if args.profile:
            case = Case(
                args.profile,
                args.device,
                args.n_train or args.images.get(args.profile),
                Path(work_dir) / "profile",
                args.override,
            )
            out["profile"] = profile(case)
            print(out["profile"], flush=True)
        if args.sweep:
            out["import_s"] = time_import()
            out["sweep"] = s = time_sweep(args.sweep, work_dir)
            print(
                f"\nsweep: {s['command']}\n  {s['runs']} runs ({', '.join(s['statuses'])}) in "
                f"{s['wall_s']:.1f}s wall = {s['runs_per_min']:.1f} runs/min; runs "
                f"{min(s['run_s'])}-{max(s['run_s'])}s, median {s['median_run_s']:.2f}s; "
                f"outside the runs (imports, Hydra, start-up, paid "
                f"once) {s['outside_runs_s']:.1f}s; a fresh `import train` costs "
                f"{out['import_s']:.1f}s",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()

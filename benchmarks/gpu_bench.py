"""One command, a few minutes on one GPU: seconds per epoch of every paper model through this
project's path (with and without the diagnostics callback, and with `speed=bf16`), a bare
loop and the conventional pipeline (benchmarks/bench.py, same code), then the GPU time of the
whole paper estimated from them.

    python benchmarks/gpu_bench.py                         # on the GPU machine (a few minutes)
    python benchmarks/gpu_bench.py --json gpu_bench.json   # also keep every measurement
    python benchmarks/gpu_bench.py --tiny                  # dry run on any machine, CPU too

The estimate multiplies each model's median seconds per epoch by the epochs of every run of
the paper's sweeps, read from the presets themselves (conf/experiment/fig*.yaml: their
hydra.sweeper.params and trainer.max_epochs), so it follows the presets when they change.
The project's path is timed with its default callbacks and without the diagnostics callback:
the diagnostics measure at steps spread log-spaced over the run, so a first epoch (what is
timed) carries more of them than later ones, and the default column is an upper bound, the
one without diagnostics a lower bound of what a default run costs per epoch.
Run start-up (a second or two per run, paid once per process for imports) is not included.
ResNet-50 is timed on part of an epoch (25,000 and 12,500 images, extrapolated to a full one
as benchmarks/bench.py does), every other model on a full one.
The conventional pipeline here uses DataLoader(num_workers=4, pin_memory=True), as people do
on a GPU machine (--workers to change).
"""

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser

import bench
import timing  # benchmarks/timing.py
from zeroinit.run import compose

PAPER_MODELS = [
    "mnist_fnn",
    "mnist_cnn",
    "cifar_fnn",
    "cifar_cnn",
    "resnet50",
    "logreg_mnist",
    "logreg_cifar",
]
NO_DIAGNOSTICS = "callbacks.diagnostics=null"
FAST = "speed=bf16 callbacks.diagnostics=null"


def paper_runs():
    """[(figure, model, dataset, epochs)] for every run of every conf/experiment/fig*.yaml."""
    parser = OverridesParser.create()
    runs = []
    for path in sorted((timing.ROOT / "conf" / "experiment").glob("fig*.yaml")):
        cfg = compose(f"experiment={path.stem}", return_hydra_config=True)
        params = dict(cfg.hydra.sweeper.params or {})
        sweeps = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
        axes = {
            o.key_or_group: (list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()])
            for o in sweeps
        }
        for values in itertools.product(*axes.values()):
            choice = dict(zip(axes, values))
            model = str(choice.get("model", cfg.model.name))
            dataset = str(choice.get("dataset", cfg.dataset.name))
            epochs = int(choice.get("trainer.max_epochs", cfg.trainer.max_epochs))
            runs.append((path.stem, model, dataset, epochs))
    return runs


def bench_key(model, dataset):
    if model == "logreg":
        return "logreg_mnist" if dataset.startswith("mnist") else "logreg_cifar"
    return model


def estimate(runs, seconds):
    """{figure: (runs, epochs, hours)} and the total, from {bench key: s/epoch}."""
    out = {}
    for fig, model, dataset, epochs in runs:
        n, e, s = out.get(fig, (0, 0, 0.0))
        out[fig] = (n + 1, e + epochs, s + epochs * seconds[bench_key(model, dataset)])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tiny",
        action="store_true",
        help="a dry run in seconds: 32 images, batch 16, 1 repeat (figures meaningless)",
    )
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=4, help="conventional DataLoader num_workers")
    p.add_argument("--models", default=",".join(PAPER_MODELS))
    p.add_argument("--no-fast", action="store_true", help=f"skip the `{FAST}` variant")
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help="time the project path with these overrides too (repeatable), e.g. "
        "--also callbacks.diagnostics=null",
    )
    p.add_argument("--json", help="write every measurement to this file")
    args = p.parse_args(argv)

    bench_args = [
        "--models",
        args.models,
        "--repeats",
        str(1 if args.tiny else args.repeats),
        "--workers",
        str(args.workers),
        "--images",
        "resnet50=25000",
    ]
    variants = [NO_DIAGNOSTICS] + ([] if args.no_fast else [FAST]) + args.also
    for extra in variants:
        bench_args += ["--also", extra]
    if args.tiny:
        print("# --tiny: a dry run of the code paths; its figures mean nothing", flush=True)
        bench_args += ["--n-train", "32", "batch_size=16"]
    runs = paper_runs()
    out = bench.main(
        bench_args,
        command="python benchmarks/gpu_bench.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
    )
    rows = {r["model"]: r for r in out["models"]}
    missing = sorted({bench_key(m, d) for _, m, d, _ in runs} - set(rows))

    where = "GPU" if torch.cuda.is_available() else "CPU (no GPU here)"
    lines = [f"\n## {where} time of the paper ({len(runs)} runs in conf/experiment/fig*.yaml)"]
    if missing:
        lines.append(f"(not estimated: no timing for {', '.join(missing)})")
    else:
        columns = (
            [("project", "project")]
            + [(f"project {v}", f"project {v}") for v in variants]
            + [("conventional", "conventional")]
        )
        lines += [
            "| figure | runs | epochs | " + " | ".join(f"{c} h" for c, _ in columns) + " |",
            "|---|---|---|" + "---|" * len(columns),
        ]
        totals = {}
        for _, key in columns:
            totals[key] = estimate(runs, {m: r[key] for m, r in rows.items()})
        for fig in totals["project"]:
            n, e, _ = totals["project"][fig]
            lines.append(
                f"| {fig} | {n} | {e} | "
                + " | ".join(f"{totals[k][fig][2] / 3600:.2f}" for _, k in columns)
                + " |"
            )
        lines.append(
            f"| all | {len(runs)} | {sum(r[3] for r in runs)} | "
            + " | ".join(f"{sum(v[2] for v in totals[k].values()) / 3600:.2f}" for _, k in columns)
            + " |"
        )
        out["paper_hours"] = {k: sum(v[2] for v in t.values()) / 3600 for k, t in totals.items()}
    print("\n".join(lines), flush=True)
    out["paper_runs"] = runs
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()

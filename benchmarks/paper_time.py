"""`make paper` on this machine, per speed setting: hours estimated from seconds measured now.

    python benchmarks/paper_time.py                    # on a GPU: ~4 min on an H200 (estimated)
    python benchmarks/paper_time.py --tiny --models logreg_mnist,resnet50   # a dry run, any CPU

What `make paper` runs: the figures of the Makefile's MNIST_FIGS and CIFAR_FIGS
stacked, -m's default (stacks of the size its probe chooses) and RESNET_FIGS one run at a time,
each figure's runs read from its conf/experiment/fig*.yaml (gpu_bench.paper_runs). For each
of the paper's models and each speed setting (SPEEDS: strict fp32, the default;
`speed=tf32`; `speed=bf16`) this times one epoch through the launcher's own code:
15 runs of the README's sweep trained by `train_group` (stacked_bench's `stacked` variant)
or one run by `zeroinit.run.run` (its `sequential` variant), on random images of the real
size, diagnostics and every writer on (a user's default run). Part of an epoch, timed at N
and N/2 train images and extrapolated to a full one (timing.extrapolate); divided by the runs
timed, that is the seconds of one run-epoch. The estimate multiplies it by the epochs of the
paper's runs and sums per figure. Each run-epoch carries the fit's fixed seconds (start-up,
checkpoint), which a run of many epochs pays only partly every epoch: the hours are an upper
bound by that much (printed: the fixed share).
"""

import argparse
import json
import re
import tempfile
from pathlib import Path

import torch

import gpu_bench  # paper_runs, bench_key
import stacked_bench  # time_variant: the launchers' own code on random data
import timing  # sizes, time_sizes, extrapolate, machine

SPEEDS = {"fp32": (), "tf32": ("speed=tf32",), "bf16": ("speed=bf16",)}
STACK_RUNS = 15  # the README's sweep: one figure's runs of one model


def paper_figures(makefile=timing.ROOT / "Makefile") -> dict[str, str]:
    """{figure: launcher variant} as `make paper` runs them, read from the Makefile: its
    MNIST_FIGS and CIFAR_FIGS stacked (-m's default), RESNET_FIGS one at a time."""
    text = Path(makefile).read_text()

    def figures(name):
        found = re.search(rf"^{name}\s*:=\s*(.*)$", text, re.M)
        return found.group(1).split() if found else []

    stacked = figures("MNIST_FIGS") + figures("CIFAR_FIGS")
    return {
        **{f: "stacked" for f in stacked},
        **{f: "sequential" for f in figures("RESNET_FIGS")},
    }


FIGURES = paper_figures()


def launcher_of(figure: str) -> str:
    return FIGURES[figure]


def paper_runs() -> list:
    """gpu_bench.paper_runs() of the figures `make paper` runs (not fig12: report-only)."""
    return [r for r in gpu_bench.paper_runs() if r[0] in FIGURES]


def needed(runs) -> list[tuple[str, str]]:
    """(bench model, launcher variant) pairs the paper's runs need, in order."""
    out = []
    for fig, model, dataset, _ in runs:
        key = (gpu_bench.bench_key(model, dataset), launcher_of(fig))
        if key not in out:
            out.append(key)
    return out


def estimate(runs, per_run_epoch: dict) -> dict:
    """{figure: (runs, run-epochs, seconds)} from {(model, variant): seconds per run-epoch};
    None seconds where a model was not timed."""
    out = {}
    for fig, model, dataset, epochs in runs:
        n, e, s = out.get(fig, (0, 0, 0.0))
        t = per_run_epoch.get((gpu_bench.bench_key(model, dataset), launcher_of(fig)))
        out[fig] = (n + 1, e + epochs, None if t is None or s is None else s + epochs * t)
    return out


def measure(pairs, device, images, speeds, repeats, log=print) -> dict:
    """{(model, variant, speed): timing.Fit of a full epoch of the runs timed}."""
    fits = {}
    with tempfile.TemporaryDirectory() as work:
        for model, variant in pairs:
            full = timing.MODELS[model][1]
            n = min(images.get(model, full), full)
            members = STACK_RUNS if variant == "stacked" else 1

            def run(speed, n_images):
                # one run alone: one of the paper's inits (the README sweep's first is zero)
                extra = list(SPEEDS[speed]) + ([] if members > 1 else ["init=bias_normal"])
                return stacked_bench.time_variant(
                    variant, model, device, work, n_images, extra, members
                )

            for speed in speeds:  # warm-up: the probe of this precision, cuDNN, first calls
                run(speed, min(n, 1024))
            _, by_speed = timing.time_sizes(
                run, speeds, timing.sizes(n, full), repeats, full, f"{model} {variant} ", log
            )
            fits.update({(model, variant, s): f for s, f in by_speed.items()})
    return fits


def table(runs, fits, speeds) -> tuple[str, dict]:
    """The Markdown table (per figure, hours per speed) and {speed: total hours}."""
    per = {
        s: {
            (m, v): f.estimate / (STACK_RUNS if v == "stacked" else 1)
            for (m, v, sp), f in fits.items()
            if sp == s
        }
        for s in speeds
    }
    est = {s: estimate(runs, per[s]) for s in speeds}

    def hours(x):
        return "-" if x is None else f"{x / 3600:.2f}"

    lines = [
        "| figure | launcher | runs | run-epochs | " + " | ".join(f"{s} h" for s in speeds) + " |",
        "|---|---|---|---|" + "---|" * len(speeds),
    ]
    for fig in est[speeds[0]]:
        n, e, _ = est[speeds[0]][fig]
        cells = " | ".join(hours(est[s][fig][2]) for s in speeds)
        lines.append(f"| {fig} | {launcher_of(fig)} | {n} | {e} | {cells} |")
    totals = {}
    for s in speeds:
        secs = [v[2] for v in est[s].values()]
        totals[s] = None if None in secs else sum(secs) / 3600
    lines.append(
        f"| all | | {len(runs)} | {sum(r[3] for r in runs)} | "
        + " | ".join("-" if totals[s] is None else f"**{totals[s]:.2f}**" for s in speeds)
        + " |"
    )
    return "\n".join(lines), totals


def main(argv=None, fits=None) -> dict:
    """`fits`: {(model, variant, speed): Fit} measured already in the same call (gpu_check
    passes its stacked fp32 sweeps), not timed again."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a dry run: 32 images, figures meaningless")
    p.add_argument("--models", help="only these (a dry run; the total needs every model)")
    p.add_argument("--speeds", default=",".join(SPEEDS))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--images", action="append", default=[], metavar="MODEL=N")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json")
    args = p.parse_args(argv)
    speeds = args.speeds.split(",")
    unknown = sorted(set(speeds) - set(SPEEDS))
    if unknown:
        p.error(f"--speeds: {', '.join(unknown)} not in {', '.join(SPEEDS)}")
    images = dict(timing.GPU_IMAGES)
    images.update({m: int(n) for m, n in (x.split("=") for x in args.images)})
    if args.tiny:
        images = {m: 32 for m in timing.MODELS}
    runs = paper_runs()
    pairs = needed(runs)
    if args.models:
        pairs = [(m, v) for m, v in pairs if m in args.models.split(",")]
    fits = dict(fits or {})
    todo = [pair for pair in pairs if any((*pair, s) not in fits for s in speeds)]
    print(f"# {timing.machine()}".replace("\n", "; "), flush=True)
    fits.update(measure(todo, args.device, images, speeds, args.repeats))
    text, totals = table(runs, fits, speeds)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "this CPU"
    print(f"\n`make paper` on {where} ({len(runs)} runs; hours per speed setting):\n\n{text}")
    if all(v is not None for v in totals.values()):
        print(
            f"\n`make paper` on {where}: "
            + ", ".join(f"{s} {totals[s]:.2f} h" for s in speeds)
            + " (the fp32 default: strict, no TF32)"
        )
    lines = []
    for (m, v, s), f in sorted(fits.items()):
        runs_timed = STACK_RUNS if v == "stacked" else 1
        share = "" if f.fixed is None else f", fixed {100 * f.fixed / f.estimate:.0f}%"
        lines.append(
            f"- {m} {v} {s}: {f.estimate / runs_timed:.3f} s per run-epoch{share}"
            + (f" ({f.fallback})" if f.fallback else "")
        )
    print(
        "\nseconds per run-epoch (a full epoch of the runs timed / runs; fixed: the fit's "
        "once-per-fit share, counted every epoch):\n" + "\n".join(lines),
        flush=True,
    )
    out = {
        "machine": timing.machine(),
        "hours": totals,
        "per_run_epoch": {
            f"{m} {v} {s}": f.estimate / (STACK_RUNS if v == "stacked" else 1)
            for (m, v, s), f in fits.items()
        },
        "table": text,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

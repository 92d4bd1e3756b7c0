"""A seed x init sweep trained stacked vs one run at a time vs a bare loop, side by side.

    python benchmarks/stacked_bench.py                       # mnist_fnn, 15 runs, full MNIST size
    python benchmarks/stacked_bench.py --models mnist_fnn,cifar_fnn --repeats 3
    python benchmarks/stacked_bench.py --n-train 2048 --repeats 1    # a dry run in seconds

The sweep is the everyday one, `-m init=zero,pytorch,bias_normal seed=0,1,2,3,4` (15 runs),
on random uint8 images of the real sizes (MNIST 60,000 + 10,000, CIFAR-10 50,000 + 10,000),
one epoch per run (training + evaluation of the whole test split), default config
(diagnostics on, results.json, TensorBoard, checkpoints: what a user's run writes):

  stacked     zeroinit.stacked.group.train_group(15 jobs): what `launcher=stacked` calls, in
              stacks of the size its probe chose (zeroinit.stacked.size; the probe itself runs
              in the warm-up, so its seconds are in no variant's figure)
  stacked_all the same in one stack of 15 (hydra.launcher.stack_size=15): what it did before
              the probe
  compiled    stacked_all with speed.compile=true (on a GPU speed.compile_mode=reduce-overhead:
              CUDA graphs). Each fit compiles afresh (speed.prepare resets Dynamo), from
              torch's on-disk compile cache after the first, as a user's later runs do; that
              time is in the fit's. Not in the default variants (minutes of compiling on a CPU)
  sequential  zeroinit.run.run(cfg) for each job in turn: what the basic launcher's jobs call
  bare        15 x the bare loop of benchmarks/timing.py: the same nets, inits, optimizer and batch
              ops in a plain PyTorch loop, nothing written

The data are read through the project's own loader path (a `random` source registered in
zeroinit.data.DATASETS), once per process as a sweep does. Variants are interleaved, their
order rotating every repeat; each time is the median over repeats. `--images MODEL=N` or
`--n-train N` below a full epoch times each variant at N and at N/2 train images and
extrapolates seconds = fixed + per image x images to a full epoch (timing.extrapolate): the
one-at-a-time variant pays 15 fit start-ups, checkpoints and results files, which scaling by
full/N would multiply too and so overstate what stacking saves. `--cli` also times the
default sweep on the embedded digits through the command line (imports and Hydra included),
one at a time (launcher=basic) and stacked (the default).
"""

import argparse
import functools
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

import timing  # benchmarks/bench.py
from zeroinit import data as zdata
from zeroinit.run import compose, run
from zeroinit.stacked import size
from zeroinit.stacked.group import train_group

INITS, SEEDS = ("zero", "pytorch", "bias_normal"), range(5)
VARIANTS = ("stacked", "stacked_all", "sequential", "bare")  # the default; also: compiled


@functools.cache
def random_loader(shape, n_train, n_test):
    """A loader of images made once per size, as a sweep reads its real dataset once: every
    variant's time is training, not making random images (MNIST's 70,000: 0.28 s on the
    2-core CPU, which the stacked and one-at-a-time variants paid and the bare loop not)."""
    images = zdata.random_images(shape, n_train, n_test)
    return lambda data_dir=None, download=False: images


def jobs(model, device, out_dir, n_train, extra=(), members=15):
    dataset, full_train, full_test, overrides = timing.MODELS[model]
    n_test = max(1, round(full_test * n_train / full_train))
    zdata.DATASETS["random"] = zdata.Dataset(
        random_loader(tuple(compose(f"dataset={dataset}").dataset.input_shape), n_train, n_test)
    )
    return [
        (
            compose(
                *overrides,
                f"dataset={dataset}",
                "dataset.source=random",
                f"dataset.name=random_{dataset}",
                "trainer.max_epochs=1",
                f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
                f"init={init}",
                f"seed={seed}",
                f"paths.log_dir={out_dir}",
                f"paths.output_dir={out_dir / f'{init}-s{seed}'}",
                *extra,
            ),
            [f"init={init}", f"seed={seed}"],
        )
        for init in INITS
        for seed in SEEDS
    ][:members]


def time_variant(variant, model, device, work_dir, n_train, extra, members=15) -> float:
    out = Path(tempfile.mkdtemp(dir=work_dir))
    if variant == "compiled":
        mode = "reduce-overhead" if torch.device(device).type == "cuda" else "default"
        extra = [*extra, "speed.compile=true", f"speed.compile_mode={mode}"]
    todo = jobs(model, device, out, n_train, extra, members)
    with timing.silenced():
        timing.sync(torch.device(device))
        start = time.perf_counter()
        if variant in ("stacked", "stacked_all", "compiled"):
            outcomes = train_group(todo, "auto" if variant == "stacked" else len(todo))
            statuses = {o for o, _, _ in outcomes}
        elif variant == "sequential":
            statuses = {run(cfg, overrides)["status"] for cfg, overrides in todo}
        else:
            case = timing.Case(model, device, n_train, out)
            start = time.perf_counter()  # (the Case's random tensors are not part of it)
            for cfg, _ in todo:
                case.cfg = cfg  # this run's init scheme and seed (zero init costs more on a
                timing.time_bare(case)  # CPU: its tiny Adam moments are denormal floats)
            statuses = {"completed"}
        timing.sync(torch.device(device))
        elapsed = time.perf_counter() - start
    assert statuses <= {"completed", "diverged"}, (variant, statuses)
    shutil.rmtree(out, ignore_errors=True)
    return elapsed


def probe_choice(model, device, work_dir, extra, members) -> str:
    """The stack size launcher=stacked takes for this model here, e.g. '(4 per stack, 1.3x)'
    (measured here, or read from the probe's cache)."""
    cfg = jobs(model, device, Path(work_dir), 1024, extra, members)[0][0]
    choice = size.probe(cfg, size.largest(cfg, members))
    return f"({choice['size']} per stack, {choice['gain']:.2f}x)"


def profile_stacked(model, device, work_dir, n_train, extra, members, top=15) -> str:
    """torch.profiler's table of one epoch of `members` runs trained stacked (the `stacked`
    variant, warm): where a stacked step's time goes, by op; on a GPU sorted by kernel time,
    with the wall time beside, so that launch and host overhead show as the difference."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    time_variant("stacked", model, device, work_dir, n_train, extra, members)  # warm
    with profile(activities=activities) as prof:
        seconds = time_variant("stacked", model, device, work_dir, n_train, extra, members)
    events = prof.key_averages()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    kernels = sum(getattr(e, "self_device_time_total", 0) for e in events) / 1e6 if cuda else None
    head = f"\n{model}, {members} runs stacked, {n_train:,} train images: {seconds:.2f}s wall"
    if kernels is not None:
        head += f", {kernels:.2f}s in CUDA kernels"
    return f"{head} (profiled)\n" + events.table(sort_by=sort, row_limit=top)


def time_cli(work_dir) -> dict:
    out = {}
    for name, extra in (
        ("sequential", " launcher=basic"),
        ("stacked", ""),
    ):  # stacked: -m's default
        sweep = timing.time_sweep(timing.DEFAULT_SWEEP + extra, Path(work_dir) / name)
        out[name] = sweep
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mnist_fnn")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--n-train",
        type=int,
        default=None,
        help="train images (default: full size; fewer: extrapolated as --images)",
    )
    p.add_argument(
        "--images",
        action="append",
        default=[],
        metavar="MODEL=N",
        help="train images for one model (a part of an epoch, timed at N and N/2 "
        "and extrapolated to a full one)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--members", type=int, default=15, help="the first N runs of the sweep")
    p.add_argument("--cli", action="store_true", help="also the default mnist5k sweep via the CLI")
    p.add_argument(
        "--profile",
        default="",
        metavar="MODELS",
        help="also a torch.profiler table of the stacked variant of these models",
    )
    p.add_argument("--json")
    p.add_argument("override", nargs="*", help="config overrides for the project variants")
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    print(
        f"# {timing.machine()}; {args.members} runs "
        f"x 1 epoch; {args.repeats} repeats, interleaved; "
        f"overrides: {' '.join(args.override) or '-'}",
        flush=True,
    )
    rows = []
    images = dict(x.split("=") for x in args.images)
    with tempfile.TemporaryDirectory() as work:
        for model in args.models.split(","):
            full = timing.MODELS[model][1]
            n = min(int(images.get(model, 0)) or args.n_train or full, full)
            # the stack size probe (cached for the stacked variant) and a warm-up (first-call
            # costs, cuDNN/CUDA initialization): in no variant's figure
            choice = probe_choice(model, args.device, work, args.override, args.members)
            time_variant(
                variants[0], model, args.device, work, min(n, 1024), args.override, args.members
            )
            times, fits = timing.time_sizes(
                lambda v, n_images: time_variant(
                    v, model, args.device, work, n_images, args.override, args.members
                ),
                variants,
                timing.sizes(n, full),
                args.repeats,
                full,
                f"{model} ",
            )
            rows.append(
                {
                    "model": model,
                    "n_train": n,
                    "sizes": timing.sizes(n, full),
                    "probe": choice,
                    **{v: f.estimate for v, f in fits.items()},  # seconds of a full epoch
                    "fits": fits,
                    "all": times,
                }
            )
        cli = time_cli(work) if args.cli else None
        profiles = [
            profile_stacked(
                m,
                args.device,
                Path(work),
                min(int(images.get(m, 0)) or args.n_train or timing.MODELS[m][1], 12_800),
                args.override,
                args.members,
            )
            for m in args.profile.split(",")
            if m
        ]
    k = args.members
    print(
        f"\n| model | {k} runs stacked (probe's size) | {k} runs in one stack | {k} runs "
        f"sequential | {k} x bare loop | sequential / stacked | stacked / bare |"
        + (" one stack, compiled | compiled / bare |\n" if "compiled" in variants else "\n")
        + "|---|---|---|---|---|---|---|"
        + ("---|---|" if "compiled" in variants else "")
    )

    def cell(x, unit):  # a variant not run: "-"
        return "-" if x != x else f"{x:.{1 if unit == 's' else 2}f}{unit}"

    for r in rows:
        get = lambda v: r.get(v, float("nan"))  # noqa: E731
        print(
            f"| {r['model']} | {cell(get('stacked'), 's')} {r.get('probe', '')} | "
            f"{cell(get('stacked_all'), 's')} | {cell(get('sequential'), 's')} | "
            f"{cell(get('bare'), 's')} | {cell(get('sequential') / get('stacked'), 'x')} | "
            f"{cell(get('stacked') / get('bare'), 'x')} |"
            + (
                f" {cell(get('compiled'), 's')} | {cell(get('compiled') / get('bare'), 'x')} |"
                if "compiled" in variants
                else ""
            )
        )
    fitted = [r for r in rows if r["n_train"] < timing.MODELS[r["model"]][1]]
    if fitted:  # the fixed part: 1 fit's start-up, checkpoint, results stacked, k of each not
        print(
            f"(seconds extrapolated to a full epoch: seconds = fixed + per image x images, fit "
            f"to the times at N and N/2 train images; fixed = what the {k} runs pay whatever "
            f"the epoch's size)"
        )
        for r in fitted:
            print(
                f"- {r['model']}, timed on {' and '.join(f'{s:,}' for s in r['sizes'])} train "
                f"images: {timing.describe_fits(r['fits'], label=f'fixed per {k} runs')}"
            )
    if cli:
        print(
            "\n| `python src/train.py -m " + timing.DEFAULT_SWEEP + " ...` (mnist5k, 10 epochs) "
            "| wall, imports included | runs/min |\n|---|---|---|"
        )
        for name, s in cli.items():
            print(f"| {name} | {s['wall_s']:.1f}s | {s['runs_per_min']:.1f} |")
    for table in profiles:
        print(table, flush=True)
    out = {
        "machine": timing.machine(),
        "cli": cli,
        "rows": [{**r, "fits": {v: f._asdict() for v, f in r["fits"].items()}} for r in rows],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()

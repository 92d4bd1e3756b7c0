"""Everything we want to know GPU-side, in one script sized for about 8 minutes of one H200:

    make gpu-check                         # = python benchmarks/gpu_check.py -o gpu-check.md
    python benchmarks/gpu_check.py --tiny  # a dry run of every code path (2-core CPU: minutes)

1. stacked sweeps: the 15-run sweep `init=zero,pytorch,bias_normal seed=0..4` of mnist_fnn,
   cifar_fnn, mnist_cnn, cifar_cnn trained stacked (in stacks of the size the probe chooses
   on this GPU, printed beside the time) vs one run at a time vs 15 bare loops
   (benchmarks/stacked_bench.py), torch.profiler's table of a stacked epoch of mnist_fnn and
   cifar_cnn, and ResNet-50 with 3 members, to decide whether stacking pays there;
2. a single run through the project path vs the bare loop: mnist_fnn and ResNet-50
   (benchmarks/bench.py);
   a stack's convolutions per layer shape of cifar_cnn, mnist_cnn (15 members) and
   ResNet-50 (3): the grouped convolution vs its alternatives (benchmarks/stacked_conv_bench.py);
3. last, `make paper`'s hours on this GPU per speed setting (strict fp32, tf32, bf16), from
   full-epoch seconds per run-epoch through the launcher `make paper` uses for each figure
   (benchmarks/paper_time.py; section 1's stacked fp32 sweeps are reused, not timed again).
`--more` adds the README's sweep through the command line (stacked vs one at a time), a
`launcher=parallel runs_per_gpu=2` sweep, two stacks sharing the GPU (about 3 min more) and
a compiled stack (CUDA graphs) of mnist_fnn and cifar_cnn vs the eager one (minutes more:
compiling).
Every part of an epoch is timed at N and N/2 train images and extrapolated to a full one
(fixed + per image x images, timing.extrapolate). Every table goes to stdout and to the
Markdown file given with -o, with the machine line.
"""

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import bench
import paper_time
import stacked_bench
import stacked_conv_bench
import timing
from timing import GPU_IMAGES as IMAGES

STACKED_MODELS = "mnist_fnn,cifar_fnn,mnist_cnn,cifar_cnn"
PARALLEL = "init=zero,pytorch seed=0,1 trainer.max_epochs=3"


class Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
            st.flush()
        return len(s)


def section(title, fn, log):
    print(f"\n## {title}", flush=True)
    start = time.perf_counter()
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - one failing part must not lose the others
        print(f"FAILED: {type(e).__name__}: {e}", flush=True)
    print(f"({time.perf_counter() - start:.0f}s)", flush=True)
    log.flush()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", default="gpu-check.md")
    p.add_argument(
        "--tiny", action="store_true", help="a dry run: tiny epochs, figures meaningless"
    )
    p.add_argument(
        "--more",
        action="store_true",
        help="also the command-line sweeps and a compiled stack (~6 min)",
    )
    args = p.parse_args(argv)
    # --tiny: 32 images, timed at 32 and 16: on a CPU ResNet-50 costs ~0.6 s an image, so the
    # two sizes take about what one size of 64 did
    images = {m: 32 for m in IMAGES} if args.tiny else IMAGES
    img_args = [a for m, n in images.items() for a in ("--images", f"{m}={n}")]
    members = ["--members", "2"] if args.tiny else []
    tiny = ["--tiny"] if args.tiny else []
    with open(args.output, "w") as log, contextlib.redirect_stdout(Tee(sys.stdout, log)):
        print("# gpu-check" + (" (--tiny: a dry run, figures meaningless)" if args.tiny else ""))
        print(f"`python benchmarks/gpu_check.py {' '.join(argv or sys.argv[1:])}`\n")
        print(timing.machine().replace("\n", "; "))
        stacked = {}
        section(
            "Stacked vs one at a time: 15 runs, 1 epoch each (default config)",
            lambda: stacked.update(
                stacked_bench.main(
                    [
                        "--models",
                        STACKED_MODELS,
                        "--repeats",
                        "1",
                        "--variants",
                        "stacked,sequential,bare",
                        "--profile",
                        "mnist_fnn,cifar_cnn",  # where a stacked step's time goes
                        *members,
                        *img_args,
                    ]
                )
            ),
            log,
        )
        section(
            "ResNet-50: 3 runs stacked vs one at a time (decides whether it stacks)",
            lambda: stacked_bench.main(
                [
                    "--models",
                    "resnet50",
                    "--repeats",
                    "1",
                    "--variants",
                    "stacked,sequential",
                    "--members",
                    "2" if args.tiny else "3",
                    *img_args,
                    "callbacks.diagnostics=null",
                ]
            ),
            log,
        )
        section(
            "One run, project path vs bare loop, seconds per epoch",
            lambda: bench.main(
                [
                    "--models",
                    "mnist_fnn,resnet50",
                    "--repeats",
                    "1",
                    "--variants",
                    "project,bare",
                    *img_args,
                ]
            ),
            log,
        )
        section(
            "A stack's convolutions per layer shape: grouped vs channels_last vs a loop vs "
            "vmap vs CUDA streams (forward + backward, ms)",
            lambda: (
                stacked_conv_bench.main(["--models", "cifar_cnn,mnist_cnn"] + tiny),
                stacked_conv_bench.main(["--models", "resnet50", "--members", "3"] + tiny),
            ),
            log,
        )
        if args.more:
            section(
                "The README's sweep through the command line, stacked vs one at a time "
                "(mnist5k, 15 runs x 10 epochs)",
                lambda: cli(args.tiny),
                log,
            )
            section(
                "launcher=parallel runs_per_gpu=2 vs one by one (mnist5k, command line)",
                lambda: parallel(args.tiny),
                log,
            )
            section(
                "Two stacks sharing the GPU (2 workers, runs_per_gpu=2) vs one after another "
                "(mnist5k, command line)",
                lambda: two_places(args.tiny),
                log,
            )
            section(
                "One stack of 15 compiled (speed.compile=true, compile_mode=reduce-overhead: "
                "CUDA graphs; compiling included) vs eager vs 15 bare loops",
                lambda: stacked_bench.main(
                    [
                        "--models",
                        "mnist_fnn,cifar_cnn",
                        "--repeats",
                        "1",
                        "--variants",
                        "stacked_all,compiled,bare",
                        *members,
                        *img_args,
                    ]
                ),
                log,
            )
        section(
            "`make paper` on this GPU, per speed setting",
            lambda: paper_time.main(
                [*img_args, *(["--tiny"] if args.tiny else [])],
                fits=reusable(stacked, args.tiny),
            ),
            log,
        )


def reusable(stacked: dict, tiny: bool) -> dict:
    """Section 1's stacked fp32 sweeps as paper_time's measurements: the same variant,
    sweep and config (15 runs; not --tiny's 2)."""
    if tiny or not stacked:
        return {}
    return {
        (r["model"], "stacked", "fp32"): timing.Fit(**r["fits"]["stacked"])
        for r in stacked["rows"]
        if "stacked" in r["fits"]
    }


def cli(tiny):
    """`python src/train.py -m init=zero,pytorch,bias_normal seed=0,1,2,3,4` as the user types
    it (stacked: -m's default), and with launcher=basic (imports and Hydra included)."""
    import tempfile

    sweep = timing.DEFAULT_SWEEP + (" trainer.max_epochs=1" if tiny else "")
    with tempfile.TemporaryDirectory() as work:
        rows = [
            (name, timing.time_sweep(sweep + extra, Path(work) / name))
            for name, extra in (("one at a time", " launcher=basic"), ("stacked", ""))
        ]
    print(f"| `-m {sweep}` | runs | statuses | wall | runs/min |\n|---|---|---|---|---|")
    for name, s in rows:
        print(
            f"| {name} | {s['runs']} | {', '.join(s['statuses'])} | {s['wall_s']:.1f}s | "
            f"{s['runs_per_min']:.1f} |"
        )


def two_places(tiny):
    """The README's 15-run sweep in 2 stacks (8 + 7), with 2 workers sharing one GPU vs 1
    worker training them one after another: whether two stacks on one card pay."""
    import tempfile

    sweep = (
        timing.DEFAULT_SWEEP
        + " hydra.launcher.stack_size=8"
        + (" trainer.max_epochs=1" if tiny else "")
    )
    with tempfile.TemporaryDirectory() as work:
        rows = [
            (name, timing.time_sweep(sweep + extra, Path(work) / f"sweep{i}"))
            for i, (name, extra) in enumerate(
                (
                    ("1 worker", " hydra.launcher.workers=1"),
                    ("2 workers, one GPU", " hydra.launcher.workers=2 runs_per_gpu=2"),
                )
            )
        ]
    print(f"| `-m {sweep}` | runs | statuses | wall | runs/min |\n|---|---|---|---|---|")
    for name, s in rows:
        print(
            f"| {name} | {s['runs']} | {', '.join(s['statuses'])} | {s['wall_s']:.1f}s | "
            f"{s['runs_per_min']:.1f} |"
        )


def parallel(tiny):
    import tempfile

    sweep = PARALLEL.replace("max_epochs=3", "max_epochs=1") if tiny else PARALLEL
    with tempfile.TemporaryDirectory() as work:
        rows = []
        for name, extra in (
            ("one by one", " launcher=basic"),
            ("parallel, 2 per GPU", " launcher=parallel hydra.launcher.n_jobs=2 runs_per_gpu=2"),
        ):
            # (a folder name without commas: Hydra would read one as a sweep over paths)
            s = timing.time_sweep(sweep + extra, Path(work) / f"sweep{len(rows)}")
            rows.append((name, s))
    print(f"| `-m {sweep}` | runs | statuses | wall | runs/min |\n|---|---|---|---|---|")
    for name, s in rows:
        print(
            f"| {name} | {s['runs']} | {', '.join(s['statuses'])} | {s['wall_s']:.1f}s | "
            f"{s['runs_per_min']:.1f} |"
        )


if __name__ == "__main__":
    main()

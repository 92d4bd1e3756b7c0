"""What the diagnostics callback costs: the same run with it at its defaults and without it
(callbacks.diagnostics=null), interleaved (on/off, then off/on, ...), timed around train.run.

    python benchmarks/diagnostics_overhead.py --threads 1                # default run, 10 epochs
    python benchmarks/diagnostics_overhead.py --threads 1 --random 60000 # 60k random images
    python benchmarks/diagnostics_overhead.py --repeats 5 model=mnist_cnn    # any overrides

Prints each pair, the medians of wall time and of process CPU time, the overhead of the
medians and the median of the per-pair overheads, and the callback's own time (results.json
diagnostics.time_s). On a shared machine CPU time with --threads 1 is the steadier measure:
wall time then swings with other people's load, and with 2+ threads so does CPU time (OpenMP
threads spin while they wait for a descheduled partner).

Measured (2-core Intel Xeon VM shared with other jobs, torch 2.14.1 CPU, 1 thread, mnist_fnn),
with the old schedule (symmetry at steps 0, 1, 2, 4, ..., 256 and every epoch end):
  mnist5k, 10 epochs (32 steps each), 5 pairs: CPU 3.30 s vs 2.98 s: +10.8% (pairs +11.9%)
  60,000 random images, 10 epochs (469 steps each), 3 pairs: CPU 19.51 s vs 19.27 s: +1.2%
With the schedule spread over the run (0, 1, 18, 320 for mnist5k; 2-core AMD EPYC, 5 pairs):
idle machine: CPU 4.65 s vs 4.41 s: +5.4% (pairs +8.0%; own time 0.31 s);
load average 3.4 from other jobs: CPU 3.91 s vs 3.64 s: +7.4% (pairs +2.9%).
A symmetry measurement of mnist_fnn costs ~20 ms on a quiet core (mostly the float64 Gram
matrix and eigenvalues of the 500x784 weight), about ten training steps.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from zeroinit import data
from zeroinit.results import cpu_model
from zeroinit.run import compose, run


def random_loader(n_train, n_test=10_000):
    """A loader (see zeroinit.data.DATASETS) of uniform random MNIST-shaped images and labels."""
    return lambda data_dir=None, download=False: data.random_images((1, 28, 28), n_train, n_test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--random",
        type=int,
        default=0,
        metavar="N",
        help="train on N random 28x28 images (10,000 test) instead of mnist5k",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's own choice)",
    )
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [f"trainer.max_epochs={args.epochs}", *args.overrides]
    if args.random:
        data.DATASETS["random"] = data.Dataset(random_loader(args.random))
        overrides += ["dataset.source=random", f"dataset.name=random{args.random}"]

    def one(diagnostics: bool, out: Path) -> tuple[float, float, float]:
        cfg = compose(
            f"paths.output_dir={out}",
            f"paths.log_dir={out}",
            *overrides,
            *([] if diagnostics else ["callbacks.diagnostics=null"]),
        )
        wall, cpu = time.perf_counter(), time.process_time()
        results = run(cfg)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return wall, cpu, (results.get("diagnostics") or {}).get("time_s", 0.0)

    runs = {True: [], False: []}  # diagnostics on/off -> [(wall, cpu, own)]
    with tempfile.TemporaryDirectory() as tmp:
        one(False, Path(tmp) / "warm-up")  # imports, first-call costs: in neither side
        for i in range(args.repeats):
            for flag in (True, False) if i % 2 == 0 else (False, True):
                runs[flag].append(one(flag, Path(tmp) / f"{i}-{flag}"))
            (w1, c1, own), (w0, c0, _) = runs[True][-1], runs[False][-1]
            print(
                f"pair {i + 1}: with {w1:.2f}s wall {c1:.2f}s cpu (own {own:.2f}s)  "
                f"without {w0:.2f}s wall {c0:.2f}s cpu",
                flush=True,
            )
    print(
        f"\n{' '.join(overrides)}  on {cpu_model()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {args.repeats} pairs, interleaved"
    )
    for k, what in ((0, "wall"), (1, "cpu ")):
        on = [r[k] for r in runs[True]]
        off = [r[k] for r in runs[False]]
        pairs = statistics.median(a / b - 1 for a, b in zip(on, off))
        print(
            f"{what}: median with {statistics.median(on):.2f}s, without "
            f"{statistics.median(off):.2f}s -> overhead "
            f"{100 * (statistics.median(on) / statistics.median(off) - 1):+.1f}% "
            f"(median of pairs {100 * pairs:+.1f}%)"
        )
    own = statistics.median(r[2] for r in runs[True])
    print(f"callback's own time: median {own:.2f}s")


if __name__ == "__main__":
    main()

"""Time to first result: the README's commands as a user types them, wall time from the
command to its exit, split into training (the epochs' own seconds, from the lines the command
prints) and everything else (imports, composing, building, writing).

    make bench-startup                                     # = python benchmarks/startup_bench.py
    python benchmarks/startup_bench.py --compare HEAD~5   # the same commands from an older
                                                          # commit, interleaved, side by side

  --help         python src/train.py --help
  one epoch      python src/train.py trainer.max_epochs=1          (the main job, one epoch)
  stacked sweep  python src/train.py -m init=zero,pytorch,bias_normal seed=0,1,2,3,4
                 launcher=stacked                                  (the README's sweep)
  dataset load   zeroinit.data.load_mnist5k(): with an empty cache folder, then from the cache

Each command runs in a fresh process with its own output folder, `--repeats` times; the
variants (this tree, and the `--compare` commit checked out in a temporary git worktree) take
turns, and each figure is the median. Nothing here is extrapolated.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EPOCH_SECONDS = re.compile(r"^epoch +\d+/\d+ .*\((\d+\.\d+)s\)$", re.M)
COMMANDS = {
    "--help": ["--help"],
    "one epoch": ["trainer.max_epochs=1"],
    "stacked sweep": ["-m", "init=zero,pytorch,bias_normal", "seed=0,1,2,3,4", "launcher=stacked"],
}
LOAD = (
    "import time; from zeroinit.data import load_mnist5k; t = time.perf_counter(); "
    "load_mnist5k(); print(f'LOAD {time.perf_counter() - t:.4f}')"
)  # the imports apart


def run_command(tree: Path, args: list[str], out_dir: Path) -> dict:
    """One command in a fresh process: wall seconds, the epochs' seconds, the rest."""
    logs = [] if args == ["--help"] else [f"paths.log_dir={out_dir}"]
    cmd = [sys.executable, str(tree / "src" / "train.py"), *args, *logs]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=out_dir.parent, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    training = sum(float(s) for s in EPOCH_SECONDS.findall(proc.stdout))
    return {"wall": wall, "training": training, "rest": wall - training}


def load_times(tree: Path, cache: Path) -> dict:
    """load_mnist5k() in a fresh process: first with `cache` empty, then again."""
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "ZEROINIT_CACHE": str(cache), "PYTHONPATH": str(tree / "src")}
    out = {}
    for label in ("first use", "after"):
        proc = subprocess.run(
            [sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, check=True
        )
        out[label] = float(proc.stdout.split("LOAD")[-1])
    return out


def worktree(ref: str, parent: Path) -> Path:
    path = parent / ("tree-" + re.sub(r"[^\w.-]", "_", ref))
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), ref],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return path


def machine() -> str:
    from zeroinit.results import cpu_model

    load = os.getloadavg()[0]
    return f"{cpu_model()}, {os.cpu_count()} cores, load {load:.1f} at the start"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compare", metavar="REF", help="also time this git commit (a worktree)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--only",
        nargs="*",
        choices=[*COMMANDS, "dataset load"],
        help="a subset of the rows (default: all)",
    )
    args = p.parse_args(argv)
    rows = args.only or [*COMMANDS, "dataset load"]
    work = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    trees = {"this tree": ROOT}
    try:
        if args.compare:
            trees[args.compare] = worktree(args.compare, work)
        print(f"machine: {machine()}\n", flush=True)
        times: dict = {(v, r): [] for v in trees for r in rows}
        for rep in range(args.repeats):
            order = list(trees.items())
            order = order[rep % len(order) :] + order[: rep % len(order)]  # take turns
            for row in rows:
                for name, tree in order:
                    out = work / f"run-{len(os.listdir(work))}" / "outputs"
                    out.parent.mkdir()
                    if row == "dataset load":
                        times[(name, row)].append(load_times(tree, out.parent / "cache"))
                    else:
                        times[(name, row)].append(run_command(tree, COMMANDS[row], out))
                    shutil.rmtree(out.parent, ignore_errors=True)
                    print(
                        f"  repeat {rep + 1}/{args.repeats}  {row:<13} {name}: "
                        f"{times[(name, row)][-1]}",
                        flush=True,
                    )
        table = format_table(times, trees, rows, args.repeats)
        print("\n" + table)
        return {"times": times, "table": table}
    finally:
        for name, tree in trees.items():
            if tree != ROOT:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(tree)],
                    cwd=ROOT,
                    capture_output=True,
                )
        shutil.rmtree(work, ignore_errors=True)


def format_table(times, trees, rows, repeats) -> str:
    def med(samples, key):
        return statistics.median(s[key] for s in samples)

    lines = [f"| command | {' | '.join(trees)} |", "|---|" + "---|" * len(trees)]
    for row in rows:
        cells = []
        for name in trees:
            samples = times[(name, row)]
            if row == "dataset load":
                cells.append(
                    f"{med(samples, 'first use'):.2f} s first use, "
                    f"{med(samples, 'after'):.3f} s after"
                )
            elif row == "--help":
                cells.append(f"{med(samples, 'wall'):.2f} s")
            else:
                cells.append(
                    f"{med(samples, 'wall'):.1f} s wall = "
                    f"{med(samples, 'training'):.1f} s epochs + "
                    f"{med(samples, 'rest'):.1f} s rest"
                )
        lines.append(f"| {row} | {' | '.join(cells)} |")
    lines.append(
        f"\nmedians of {repeats} repeats; `rest` = wall - the epochs' own seconds "
        "(imports, composing, building, writing)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

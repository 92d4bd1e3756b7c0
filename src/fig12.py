"""Figure 12 from finished runs: per-layer weight-gradient distributions over the first steps,
one column per init scheme (pytorch first), read from each run's results.json "diagnostics".

    python src/train.py -m experiment=fig12_gradient_flow dataset=mnist5k
    python src/fig12.py outputs/sweeps/fig12_gradient_flow -o fig12.png

Arguments are run directories, results.json files, or folders searched for them. With several
runs of one init (seeds), the lowest seed is drawn. Also prints each run's wake-up steps.
"""
import argparse
import sys
from pathlib import Path

from zeroinit.diagnostics import plot_gradient_flow
from zeroinit.results import FILENAME, read_results


def find_runs(paths) -> list[Path]:
    runs = []
    for p in map(Path, paths):
        if p.is_file():
            runs.append(p.parent)
        elif (p / FILENAME).exists():
            runs.append(p)
        else:
            runs += sorted(f.parent for f in p.rglob(FILENAME))
    return runs


def by_init(run_dirs) -> dict[str, tuple[Path, dict]]:
    """init name -> (run dir, results) of its lowest-seed run with diagnostics; pytorch first."""
    chosen = {}
    for run in run_dirs:
        results = read_results(run)
        if not (results.get("diagnostics") or {}).get("first_steps"):
            print(f"skipped (no diagnostics): {run}", file=sys.stderr)
            continue
        init = results["config"]["init"]["name"]
        scale = results["config"]["init"].get("bias_scale")
        if init.startswith("bias_") and scale not in (None, 1, 1.0):
            init = f"{init} x{scale:g}"
        seed = results["config"].get("seed", 0)
        if init not in chosen or seed < chosen[init][1]["config"].get("seed", 0):
            chosen[init] = (run, results)
    return dict(sorted(chosen.items(), key=lambda kv: (kv[0] != "pytorch", kv[0])))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories, results.json files or folders")
    parser.add_argument("-o", "--output", default="fig12.png", help="PNG to write")
    parser.add_argument("--steps", type=int, default=None, help="draw only the first N steps")
    args = parser.parse_args(argv)
    chosen = by_init(find_runs(args.runs))
    if not chosen:
        print("error: no results.json with diagnostics under " + " ".join(args.runs),
              file=sys.stderr)
        return 2
    for init, (run, results) in chosen.items():
        wake = results["diagnostics"]["wakeup_step"]
        print(f"{init:<16} wake-up steps {list(wake.values())} (layers {list(wake)})  {run}")
    plot_gradient_flow({init: results for init, (_, results) in chosen.items()}, args.output,
                       max_steps=args.steps)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Aggregate runs into the paper's figures and a table with 95% confidence intervals.

    python src/report.py outputs/sweeps/fig03_mnist_fnn            # one sweep
    python src/report.py outputs -o outputs/report                 # every run under outputs/

Writes, into the output folder (default: <first path>/report): one PNG per figure (a sweep
on one dataset), results.md and results.csv (final mean test accuracy ± 95% CI per
configuration, n, diverged/failed/running counts, mean epoch time, the paper's number,
diagnostics columns), report.md tying them together, and tensorboard/ (per configuration
the mean test accuracy per epoch with its 95% band, a Custom Scalars margin chart). For
experiment=fig12_gradient_flow it also draws Figure 12 (per-layer gradient distributions over
the first steps) and lists each init's wake-up order. Runs that are not `completed` are
listed, never averaged.
"""

import argparse
import sys
from pathlib import Path

from zeroinit import rank_accuracy
from zeroinit.report import (
    gradient_flow,
    group_runs,
    not_averaged,
    plot_figure,
    table_rows,
    write_tables,
    write_tensorboard,
)
from zeroinit.results import load


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run or sweep directories (searched recursively)")
    parser.add_argument("-o", "--out", help="output folder (default: <first path>/report)")
    parser.add_argument(
        "--rank-vs-accuracy",
        action="store_true",
        help="also: first layer's effective rank vs final accuracy, Spearman's rho with a "
        "95%% bootstrap interval, and its scatter plot (docs/findings.md)",
    )
    args = parser.parse_args(argv)

    runs = load(*args.paths)  # one row per run and epoch (zeroinit.results.load)
    if runs.empty:
        print(f"error: no runs (results.json files) under {', '.join(args.paths)}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    figures = group_runs(runs)
    pngs = [plot_figure(name, groups, out / f"{name}.png") for name, groups in figures.items()]
    wakeup = []
    for name, groups in figures.items():  # Figure 12: gradient flow of the first steps
        # the preset says so (report.gradient_flow); runs from before that key: by sweep name
        wanted = any(g.config.get("report.gradient_flow", name.startswith("fig12")) for g in groups)
        drawn = wanted and gradient_flow(name, groups, out / f"{name}-gradient_flow.png")
        if drawn:
            pngs.append(drawn[0])
            wakeup += [f"{name}:", *drawn[1]]
    rows = table_rows(figures)
    csv_path, md_path = write_tables(rows, out)
    board = write_tensorboard(figures, out)
    skipped = not_averaged(runs)
    report = [
        f"# Report: {runs['run'].nunique()} runs from {', '.join(args.paths)}",
        "",
        "Final test accuracy: mean over completed runs ± half-width of the 95% Student-t "
        "confidence interval (n-1 degrees of freedom); n = completed runs.",
        "",
        md_path.read_text(),
        *[f"![{p.stem}]({p.name})" for p in pngs],
    ]
    if wakeup:
        report += ["", "## Wake-up order (Figure 12)", *wakeup]
        print("\n".join(wakeup))
    if args.rank_vs_accuracy:
        section = rank_accuracy.report(runs, out)
        report += ["", section or "## Rank and accuracy\n\nNo completed run with diagnostics."]
        if section:
            print(section)
    if skipped:
        report += ["", "## Not averaged", *skipped]
    (out / "report.md").write_text("\n".join(report) + "\n")
    print(md_path.read_text())
    if skipped:
        print("not averaged:\n" + "\n".join(skipped))
    print(f"wrote {out / 'report.md'}, {csv_path.name}, {len(pngs)} figure(s) in {out}")
    if board:
        print(f"TensorBoard, mean and 95% CI per configuration: tensorboard --logdir {board}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

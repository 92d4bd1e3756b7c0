"""Aggregate runs into the paper's figures and tables: every run's outcome, how often a line's
runs never learned, and means with 95% intervals.

    python src/report.py outputs/sweeps/fig03_mnist_fnn            # one sweep
    python src/report.py outputs -o outputs/report                 # every run under outputs/

Writes, into the output folder (default: <first path>/report): one PNG per figure (a sweep
on one dataset: the curves, every run's final accuracy, time to learn), results.md and
results.csv (per configuration: never learned k/n by its horizon with an exact interval, the
final mean test accuracy with an interval inside [0, 100], the mean over runs that learned,
median steps to learn, diverged/failed/running counts, mean epoch time, the paper's number,
diagnostics columns), runs.csv (one row per run), comparisons.csv (pairs of lines that differ
in one config group: rate difference, Fisher, log-rank, paired by seed), report.md tying them
together, and tensorboard/ (per configuration the mean test accuracy per epoch with its 95%
band, the share not learned yet, a Custom Scalars margin chart). Rules and methods:
docs/report.md. For experiment=fig12_gradient_flow it also draws Figure 12 (per-layer
gradient distributions over the first steps) and lists each init's wake-up order. Runs that
are not `completed` are listed, never averaged.
"""

import argparse
import sys
from pathlib import Path

from zeroinit import outcomes, rank_accuracy
from zeroinit.report import (
    comparisons,
    comparisons_markdown,
    gradient_flow,
    group_runs,
    not_averaged,
    plot_figure,
    run_rows,
    runs_markdown,
    table_rows,
    terminal_table,
    write_csv,
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
    parser.add_argument(
        "--margin",
        type=float,
        default=100 * outcomes.MARGIN,
        help="a run has learned once its test accuracy reaches chance + MARGIN points "
        "(default %(default)g; chance = 100/classes)",
    )
    parser.add_argument(
        "--horizon",
        type=int,
        help="judge every run at this optimizer step: its epochs that end later are left out "
        "(never learned by an earlier step; runs without a step record are kept whole)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.margin < 100:
        parser.error(f"--margin: {args.margin:g} is not allowed; allowed: points in (0, 100)")
    if args.horizon is not None and args.horizon < 1:
        parser.error(f"--horizon: {args.horizon} is not allowed; allowed: a step >= 1")

    runs = load(*args.paths)  # one row per run and epoch (zeroinit.results.load)
    if args.horizon is not None and "step" in runs.columns:
        runs = runs[~(runs["step"] > args.horizon)]  # NaN (no record) stays
    if runs.empty:
        print(f"error: no runs (results.json files) under {', '.join(args.paths)}", file=sys.stderr)
        return 2
    if runs["status"].eq("unreadable").all():  # nothing to report: not an empty table
        first = runs.iloc[0]
        print(
            f"error: no readable results.json under {', '.join(args.paths)}: "
            f"{runs['run'].nunique()} unreadable (first: {first['run']}: {first['error']})",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out) if args.out else Path(args.paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    figures = group_runs(runs, margin=args.margin / 100)
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
    per_run = run_rows(figures)
    write_csv(per_run, out / "runs.csv")
    pairs = comparisons(figures)
    write_csv(pairs, out / "comparisons.csv")
    board = write_tensorboard(figures, out)
    skipped = not_averaged(runs)
    report = [
        f"# Report: {runs['run'].nunique()} runs from {', '.join(args.paths)}",
        "",
        *(
            [f"**Judged at step {args.horizon}**: epochs ending later are left out.", ""]
            if args.horizon is not None
            else []
        ),
        f"A completed run has **learned** once its test accuracy (measured after every epoch) "
        f"reaches chance + {args.margin:g} points (chance = 100/classes); one that has not by "
        "its last step T **never learned** (by T). Never learned: k/n with its exact "
        "(Clopper-Pearson) 95% interval. Final test accuracy: the mean over completed runs "
        f"[95% interval: bca = seeded BCa bootstrap (n >= {outcomes.BOOTSTRAP_MIN_N}), t = "
        "Student t within [0, 100]]; with runs that never learned the mean describes no run: "
        "read it beside k/n and each run's value (below). Median steps to learn: "
        "Kaplan-Meier, runs that never learned censored at their last step (>= T: fewer "
        "than half learned). One class: runs that predict one class for every test image at "
        "their last epoch. Rules and methods: docs/report.md.",
        "",
        md_path.read_text(),
        *[f"![{p.stem}]({p.name})" for p in pngs],
    ]
    if pairs:
        report += [
            "",
            "## Comparisons",
            "",
            "Pairs of lines whose configs differ in one config group. Rate difference: "
            "Newcombe's hybrid score interval; Fisher's exact test; log-rank test on time to "
            "learn; paired by seed: the same seed gives both lines the same batch order, "
            "a - b per seed (interval as for a mean, within [-100, 100]), and the sign test "
            "on the seeds each side wins (comparisons.csv: every column).",
            "",
            comparisons_markdown(pairs),
        ]
    report += [
        "",
        "## Every run",
        "",
        "Final test accuracy (%) of each completed run, ascending; * never learned, (1) one "
        "class for every test image (runs.csv: seed, steps to learn, ...).",
        "",
        *runs_markdown(per_run),
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
    print(terminal_table(rows))
    if skipped:
        print("not averaged:\n" + "\n".join(skipped))
    print(
        f"wrote {out / 'report.md'} (every table, every run), {csv_path.name} (every column: "
        f"docs/report.md), {len(pngs)} figure(s) in {out}"
    )
    if board:
        print(f"TensorBoard, mean and 95% CI per configuration: tensorboard --logdir {board}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

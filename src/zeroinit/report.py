"""results.json files -> per-epoch means with 95% confidence intervals, figures and tables.

Runs are grouped by everything in their config but the seed (and settings that do not change
the experiment: paths, device, logging); a figure is one sweep (its `sweep_name`) on one
dataset. Only `completed` runs enter a mean; `diverged`, `failed` and `running` runs are
counted and listed, never averaged in silently (`interrupted` ones count as running: a rerun
resumes both).
"""

import csv
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from zeroinit.paper import paper_accuracy
from zeroinit.report_diagnostics import plot_gradient_flow, summary_columns
from zeroinit.results import EPOCH_COLUMNS, RUN_COLUMNS, read_results


@dataclass
class Group:
    """One line of a figure: its runs' rows of the results frame (zeroinit.results.load)."""

    key: str
    rows: "pandas.DataFrame"  # noqa: F821 - pandas is imported where the frame is made
    label: str = ""

    @property
    def config(self) -> dict:
        """The line's config (dotted keys), as its first run has it."""
        first = self.rows.iloc[0]
        diagnostics = set(summary_columns({}))
        return {
            k: v
            for k, v in first.items()
            if k not in RUN_COLUMNS
            and k not in EPOCH_COLUMNS
            and k not in diagnostics
            and not (isinstance(v, float) and math.isnan(v))
        }

    def runs(self, status: str | None = None) -> list[str]:
        """The line's run folders (with `status`), in the frame's order."""
        rows = self.rows if status is None else self.rows[self.rows["status"] == status]
        return list(dict.fromkeys(rows["run"]))

    def count(self, status: str) -> int:
        return len(self.runs(status))

    def completed_epochs(self):
        """The rows of the line's completed runs that are epochs (what is averaged)."""
        return self.rows[self.rows["status"] == "completed"].dropna(subset=["epoch"])

    def curve(self, metric: str = "test_acc"):
        """(epochs, mean, ci half-width, n) over completed runs; epochs common to all."""
        done = self.completed_epochs()
        per_run = [g.sort_values("epoch")[metric].to_numpy(float) for _, g in done.groupby("run")]
        if not per_run:
            return np.array([]), np.array([]), np.array([]), 0
        length = min(len(v) for v in per_run)
        mean, half = mean_ci(np.array([v[:length] for v in per_run]))
        return np.arange(1, length + 1), mean, half, len(per_run)

    def epochs_to(self, acc: float = 0.5) -> tuple[float, float, int, int]:
        """When the completed runs first reach test accuracy `acc`: (mean epoch, its 95%
        half-width, runs that reached it, completed runs). How late a scheme learns."""
        done = self.completed_epochs()
        firsts = [g.loc[g["test_acc"] >= acc, "epoch"].min() for _, g in done.groupby("run")]
        reached = np.array([[e] for e in firsts if not math.isnan(e)], dtype=float)
        if not len(reached):
            return math.nan, math.nan, 0, len(firsts)
        mean, half = mean_ci(reached)
        return float(mean[0]), float(half[0]), len(reached), len(firsts)

    def mean_epoch_time(self) -> float:
        times = self.rows["epoch_time_s"].dropna()
        return float(times.mean()) if len(times) else math.nan

    def diagnostic_columns(self) -> dict:
        """Mean of the diagnostics summary over the line's completed runs that have one."""
        rows = self.rows
        done = rows[rows["status"].eq("completed") & rows["has_diagnostics"].eq(True)]
        per_run = done.drop_duplicates("run")
        if per_run.empty:
            return {}
        return {k: float(np.mean(per_run[k].to_numpy(float))) for k in summary_columns({})}


def mean_ci(values: np.ndarray, level: float = 0.95):
    """Mean over axis 0 and the half-width of its Student-t confidence interval (n-1 degrees
    of freedom). With one run the interval is undefined: NaN."""
    n = values.shape[0]
    mean = values.mean(axis=0)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    sem = values.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, stats.t.ppf(0.5 + level / 2, n - 1) * sem


def group_runs(frame) -> dict[str, list[Group]]:
    """figure -> its lines, from zeroinit.results.load's frame (unreadable runs left out)."""
    readable = frame[frame["status"] != "unreadable"] if len(frame) else frame
    out = {}
    for fig in sorted(set(readable["figure"])) if len(readable) else []:
        rows = readable[readable["figure"] == fig]
        groups = [
            Group(key, lines, label=lines["configuration"].iloc[0])
            for key, lines in rows.groupby("line", sort=False)
        ]
        out[fig] = sorted(groups, key=lambda g: (g.config.get("model.name") == "logreg", g.label))
    return out


def table_rows(figures: dict[str, list[Group]]) -> list[dict]:
    rows = []
    for fig, groups in figures.items():
        for g in groups:
            epochs, mean, half, n = g.curve()
            epochs_to = g.epochs_to(0.5)
            c = g.config
            row = {
                "figure": fig,
                "configuration": g.label,
                "dataset": c.get("dataset.name"),
                "model": c.get("model.name"),
                "init": c.get("init.name"),
                "bias_scale": c.get("init.bias_scale"),
                "epochs": int(epochs[-1]) if n else 0,
                "n": n,
                "final_test_acc_%": 100 * mean[-1] if n else math.nan,
                "ci95_%": 100 * half[-1] if n else math.nan,
                "diverged": g.count("diverged"),
                "failed": g.count("failed"),
                "running": g.count("running") + g.count("interrupted"),
                "epochs_to_50%": epochs_to[0],
                "epochs_to_50%_ci95": epochs_to[1],
                "reached_50%": f"{epochs_to[2]}/{epochs_to[3]}",
                "mean_epoch_time_s": g.mean_epoch_time(),
                "paper_%": paper_accuracy(
                    c.get("dataset.name"),
                    c.get("model.name"),
                    c.get("init.name"),
                    c.get("init.bias_scale", 1.0),
                ),
            }
            row.update(g.diagnostic_columns())
            rows.append(row)
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.2f}"
    return "" if v is None else str(v)


def write_tables(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    csv_path, md_path = out_dir / "results.csv", out_dir / "results.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    shown = [
        c
        for c in columns
        if c not in ("dataset", "model", "init", "bias_scale", "ci95_%", "final_test_acc_%")
    ]
    header = ["figure", "configuration", "final test acc % (mean ± 95% CI)"] + [
        c for c in shown if c not in ("figure", "configuration")
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        acc = (
            ""
            if not r["n"]
            else (
                f"{r['final_test_acc_%']:.2f} ± {r['ci95_%']:.2f}"
                if not math.isnan(r["ci95_%"])
                else f"{r['final_test_acc_%']:.2f} (n=1, no CI)"
            )
        )
        cells = [r["figure"], r["configuration"], acc] + [_fmt(r.get(c)) for c in header[3:]]
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def write_tensorboard(figures: dict[str, list[Group]], out_dir: Path) -> Path | None:
    """Each figure's lines as TensorBoard runs (<out>/tensorboard/<figure>/<configuration>):
    the mean test accuracy per epoch over the line's completed runs and its 95% interval
    (tags test_mean_over_seeds/<figure>/acc, acc_ci95_low, acc_ci95_high), and a Custom
    Scalars margin chart per figure drawing each line with its band. Under the sweep's folder
    by default, so `tensorboard --logdir outputs` shows them beside the runs. Rewritten from
    the runs every time."""
    from torch.utils.tensorboard import SummaryWriter

    root = out_dir / "tensorboard"
    shutil.rmtree(root, ignore_errors=True)
    layout, written = {}, False
    for fig, groups in figures.items():
        tag = f"test_mean_over_seeds/{fig}/acc"
        for g in groups:
            epochs, mean, half, n = g.curve()
            if not n:
                continue
            folder = root / fig / g.label.replace("/", "_").replace(" ", "_")
            with SummaryWriter(str(folder)) as w:
                for epoch, m, h in zip(epochs, mean, half):
                    h = 0.0 if math.isnan(h) else h  # one run: no interval, a zero-width band
                    w.add_scalar(tag, 100 * m, int(epoch))
                    w.add_scalar(f"{tag}_ci95_low", 100 * (m - h), int(epoch))
                    w.add_scalar(f"{tag}_ci95_high", 100 * (m + h), int(epoch))
            written = True
        chart = f"test accuracy (%): mean and 95% CI over seeds, {fig}"
        layout[fig] = {chart: ["Margin", [tag, f"{tag}_ci95_low", f"{tag}_ci95_high"]]}
    if not written:
        return None
    with SummaryWriter(str(root)) as w:  # the layout, read from any run of the log folder
        w.add_custom_scalars(layout)
    return root


def plot_figure(name: str, groups: list[Group], path: Path) -> Path:
    """Test accuracy vs epoch, one line per configuration, 95% CI as error bars; the logistic
    baseline dashed, as in the paper's figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ns = set()
    for g in groups:
        epochs, mean, half, n = g.curve()
        if not n:
            continue
        ns.add(n)
        baseline = g.config.get("model.name") == "logreg"
        ax.errorbar(
            epochs,
            100 * mean,
            yerr=None if n < 2 else 100 * half,
            capsize=3,
            marker="o",
            markersize=3,
            linestyle="--" if baseline else "-",
            label=f"{g.label} (logistic baseline)"
            if baseline and "logreg" not in g.label
            else g.label,
        )
    c = groups[0].config
    models = sorted({g.config.get("model.name") for g in groups})
    n_text = f"n={min(ns)}" if len(ns) == 1 else f"n={min(ns)}-{max(ns)}" if ns else "n=0"
    ax.set_title(
        f"{c.get('sweep_name', name)}: {c.get('dataset.name')}, {' + '.join(models)}\n"
        f"{n_text} runs per line, mean ± 95% CI",
        fontsize=10,
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylim(max(0, ax.get_ylim()[0]), min(100, ax.get_ylim()[1]))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def gradient_flow(name: str, groups: list[Group], path: Path) -> tuple[Path, list[str]] | None:
    """Figure 12 for a figure whose runs carry the first steps' gradient histograms (the
    diagnostics callback's): one column per line of the figure, its lowest-seed completed run.
    Returns the PNG and one line per column with its layers' wake-up steps."""
    chosen = {}
    for g in groups:
        runs = [read_results(r) for r in g.runs("completed")]
        runs = [r for r in runs if (r.get("diagnostics") or {}).get("first_steps")]
        if runs:
            chosen[g.label] = min(runs, key=lambda r: r["config"].get("seed", 0))
    if not chosen:
        return None
    chosen = dict(sorted(chosen.items(), key=lambda kv: "pytorch" not in kv[0]))  # as the paper
    plot_gradient_flow(chosen, path)
    wake = [
        f"- {label}: wake-up step per layer, input to output: "
        f"{list(r['diagnostics']['wakeup_step'].values())}"
        for label, r in chosen.items()
    ]
    return path, wake


def not_averaged(frame) -> list[str]:
    """One line per run that is not averaged: its folder, status and error."""
    runs = frame[frame["status"] != "completed"].drop_duplicates("run")
    return [
        f"- {r.run}: {r.status}" + (f" ({r.error})" if isinstance(r.error, str) else "")
        for r in runs.itertuples()
    ]
